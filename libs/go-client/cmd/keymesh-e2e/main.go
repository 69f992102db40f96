// Command keymesh-e2e is the Go client's end-to-end driver: `keymesh-e2e basic` exercises the wrapper against
// a running mesh (client credentials, CreateKey, an Encrypt/Decrypt round trip, decrypting a ciphertext the
// Rust SDK made, a NOT_FOUND and an UNAUTHENTICATED refusal) and prints one JSON object as its last line.
//
// It reads KEYMESH_KEY_SERVICE, KEYMESH_CRYPTO_SERVICE, KEYMESH_TOKEN_SERVICE, KEYMESH_AUDIT_SERVICE,
// KEYMESH_CA_CERT, KEYMESH_CLIENT_CERT, KEYMESH_CLIENT_KEY, KEYMESH_CLIENT_ID, KEYMESH_CLIENT_SECRET,
// KEYMESH_TEST_KEY, KEYMESH_TEST_RUST_CIPHERTEXT_B64 and KEYMESH_TEST_RUST_AAD_B64.
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"

	keymeshv1 "github.com/keymesh/keymesh/libs/go-client/gen/keymesh/v1"
	"github.com/keymesh/keymesh/libs/go-client/keymesh"
	"google.golang.org/grpc/codes"
)

type refusal struct {
	Code       string `json:"code"`
	CodeNumber uint32 `json:"code_number"`
	Message    string `json:"message"`
}

type report struct {
	Language         string  `json:"language"`
	KeyID            string  `json:"key_id"`
	KeyName          string  `json:"key_name"`
	Roundtrip        bool    `json:"roundtrip"`
	CiphertextB64    string  `json:"ciphertext_b64"`
	PlaintextB64     string  `json:"plaintext_b64"`
	AADB64           string  `json:"aad_b64"`
	RustPlaintextB64 string  `json:"rust_plaintext_b64"`
	Refused          refusal `json:"refused"`
	Unauthenticated  refusal `json:"unauthenticated"`
}

func main() {
	if len(os.Args) != 2 || os.Args[1] != "basic" {
		fmt.Fprintln(os.Stderr, "usage: keymesh-e2e basic")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := basic(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "keymesh-e2e: "+strings.ReplaceAll(err.Error(), "\n", " "))
		os.Exit(1)
	}
	line, err := json.Marshal(r)
	if err != nil {
		fmt.Fprintln(os.Stderr, "keymesh-e2e: "+err.Error())
		os.Exit(1)
	}
	fmt.Println(string(line))
}

func env(name string) (string, error) {
	v := os.Getenv(name)
	if v == "" {
		return "", fmt.Errorf("%s is not set", name)
	}
	return v, nil
}

func config() (keymesh.Config, error) {
	var missing []string
	get := func(name string) string {
		v, err := env(name)
		if err != nil {
			missing = append(missing, name)
		}
		return v
	}
	cfg := keymesh.Config{
		Endpoints: keymesh.Endpoints{
			KeyService:    get("KEYMESH_KEY_SERVICE"),
			CryptoService: get("KEYMESH_CRYPTO_SERVICE"),
			TokenService:  get("KEYMESH_TOKEN_SERVICE"),
			AuditService:  get("KEYMESH_AUDIT_SERVICE"),
		},
		CACert:      get("KEYMESH_CA_CERT"),
		ClientCert:  get("KEYMESH_CLIENT_CERT"),
		ClientKey:   get("KEYMESH_CLIENT_KEY"),
		Credentials: keymesh.ClientCredentials(get("KEYMESH_CLIENT_ID"), get("KEYMESH_CLIENT_SECRET")),
	}
	if len(missing) > 0 {
		return cfg, fmt.Errorf("not set: %s", strings.Join(missing, ", "))
	}
	return cfg, nil
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	if _, err := rand.Read(b); err != nil {
		panic(err)
	}
	return b
}

// expectRefusal checks that err is an *keymesh.Error with the wanted code.
func expectRefusal(step string, err error, want codes.Code) (refusal, error) {
	var e *keymesh.Error
	if !errors.As(err, &e) {
		return refusal{}, fmt.Errorf("%s: want %s, got %v", step, keymesh.CodeName(want), err)
	}
	if e.Code != want {
		return refusal{}, fmt.Errorf("%s: want %s, got %v", step, keymesh.CodeName(want), e)
	}
	return refusal{Code: e.CodeName(), CodeNumber: uint32(e.Code), Message: e.Message}, nil
}

func basic(ctx context.Context) (*report, error) {
	cfg, err := config()
	if err != nil {
		return nil, err
	}
	keyName := os.Getenv("KEYMESH_TEST_KEY")
	if keyName == "" {
		keyName = "go-e2e-" + hex.EncodeToString(randomBytes(6))
	}
	rustCiphertextB64, err := env("KEYMESH_TEST_RUST_CIPHERTEXT_B64")
	if err != nil {
		return nil, err
	}
	rustCiphertext, err := base64.StdEncoding.DecodeString(rustCiphertextB64)
	if err != nil {
		return nil, fmt.Errorf("KEYMESH_TEST_RUST_CIPHERTEXT_B64: %v", err)
	}
	rustAAD, err := base64.StdEncoding.DecodeString(os.Getenv("KEYMESH_TEST_RUST_AAD_B64"))
	if err != nil {
		return nil, fmt.Errorf("KEYMESH_TEST_RUST_AAD_B64: %v", err)
	}

	client, err := keymesh.Dial(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer client.Close()
	if err := client.Authenticate(ctx); err != nil {
		return nil, fmt.Errorf("client credentials: %w", err)
	}

	created, err := client.KeyService().CreateKey(ctx, &keymeshv1.CreateKeyRequest{
		Name:      keyName,
		Purpose:   keymeshv1.KeyPurpose_KEY_PURPOSE_ENCRYPT,
		Algorithm: keymeshv1.Algorithm_ALGORITHM_AES_256_GCM,
	})
	if err != nil {
		return nil, fmt.Errorf("CreateKey: %w", err)
	}
	if created.GetKey().GetKeyId() == "" {
		return nil, errors.New("CreateKey returned no key id")
	}

	size := 1 + int(binary.LittleEndian.Uint16(randomBytes(2))%4096)
	plaintext := randomBytes(size)
	aad := []byte("keymesh-e2e/go/" + keyName)
	encrypted, err := client.CryptoService().Encrypt(ctx, &keymeshv1.EncryptRequest{Key: keyName, Plaintext: plaintext, Aad: aad})
	if err != nil {
		return nil, fmt.Errorf("Encrypt: %w", err)
	}
	decrypted, err := client.CryptoService().Decrypt(ctx, &keymeshv1.DecryptRequest{Ciphertext: encrypted.GetCiphertext(), Aad: aad})
	if err != nil {
		return nil, fmt.Errorf("Decrypt: %w", err)
	}
	if !bytes.Equal(decrypted.GetPlaintext(), plaintext) {
		return nil, errors.New("Decrypt returned a different plaintext")
	}

	rust, err := client.CryptoService().Decrypt(ctx, &keymeshv1.DecryptRequest{Ciphertext: rustCiphertext, Aad: rustAAD})
	if err != nil {
		return nil, fmt.Errorf("Decrypt of the Rust ciphertext: %w", err)
	}

	_, err = client.KeyService().GetKey(ctx, &keymeshv1.GetKeyRequest{Key: "missing-" + hex.EncodeToString(randomBytes(8))})
	notFound, err := expectRefusal("GetKey of a missing key", err, codes.NotFound)
	if err != nil {
		return nil, err
	}

	wrong := cfg
	wrong.Credentials = keymesh.ClientCredentials(cfg.Credentials.ClientID, "wrong-"+hex.EncodeToString(randomBytes(16)))
	impostor, err := keymesh.Dial(ctx, wrong)
	if err != nil {
		return nil, err
	}
	defer impostor.Close()
	unauthenticated, err := expectRefusal("IssueToken with a wrong secret", impostor.Authenticate(ctx), codes.Unauthenticated)
	if err != nil {
		return nil, err
	}

	return &report{
		Language:         "go",
		KeyID:            created.GetKey().GetKeyId(),
		KeyName:          keyName,
		Roundtrip:        true,
		CiphertextB64:    base64.StdEncoding.EncodeToString(encrypted.GetCiphertext()),
		PlaintextB64:     base64.StdEncoding.EncodeToString(plaintext),
		AADB64:           base64.StdEncoding.EncodeToString(aad),
		RustPlaintextB64: base64.StdEncoding.EncodeToString(rust.GetPlaintext()),
		Refused:          notFound,
		Unauthenticated:  unauthenticated,
	}, nil
}

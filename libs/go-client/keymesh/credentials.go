package keymesh

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
)

// SubjectTokenTypeJWT is the subject_token_type of a token exchange.
const SubjectTokenTypeJWT = "urn:ietf:params:oauth:token-type:jwt"

// Credentials say how the client obtains its access token: an application's client id and secret (the
// client-credentials grant), or a token its platform mints (a projected Kubernetes service-account token, an
// OIDC ID token) read afresh from SubjectTokenFile at each renewal and exchanged for an access token, so that
// the workload stores no secret.
//
// Credentials never print their secret: every fmt verb and JSON encoding shows the client id only.
type Credentials struct {
	// ClientID is the application's client id (empty with SubjectTokenFile).
	ClientID string
	// ClientSecret is the application's client secret (empty with SubjectTokenFile).
	ClientSecret string
	// SubjectTokenFile is the platform token's file, e.g. /var/run/secrets/tokens/keymesh.
	SubjectTokenFile string
}

// ClientCredentials returns credentials for the client-credentials grant.
func ClientCredentials(clientID, clientSecret string) Credentials {
	return Credentials{ClientID: clientID, ClientSecret: clientSecret}
}

// TokenExchange returns credentials that exchange the platform token in path (read again at each renewal).
func TokenExchange(path string) Credentials {
	return Credentials{SubjectTokenFile: path}
}

// LoadCredentials reads a credentials JSON file with client_id and client_secret (or subject_token_file),
// such as the mesh's bootstrap-credentials.json.
func LoadCredentials(path string) (Credentials, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return Credentials{}, fmt.Errorf("keymesh: reading credentials: %w", err)
	}
	var file struct {
		ClientID         string `json:"client_id"`
		ClientSecret     string `json:"client_secret"`
		SubjectTokenFile string `json:"subject_token_file"`
	}
	if err := json.Unmarshal(data, &file); err != nil {
		// The decoder's message can quote the file's content: say no more than where.
		return Credentials{}, fmt.Errorf("keymesh: %s is not a credentials JSON file", path)
	}
	creds := Credentials{ClientID: file.ClientID, ClientSecret: file.ClientSecret, SubjectTokenFile: file.SubjectTokenFile}
	return creds, creds.validate()
}

func (c Credentials) validate() error {
	switch {
	case c.SubjectTokenFile != "" && (c.ClientID != "" || c.ClientSecret != ""):
		return errors.New("keymesh: credentials need either a subject token file or a client id and secret, not both")
	case c.SubjectTokenFile != "":
		return nil
	case c.ClientID == "" || c.ClientSecret == "":
		return errors.New("keymesh: credentials need a client id and a client secret, or a subject token file")
	}
	return nil
}

// String describes the credentials without their secret.
func (c Credentials) String() string {
	if c.SubjectTokenFile != "" {
		return fmt.Sprintf("keymesh.Credentials{SubjectTokenFile: %q}", c.SubjectTokenFile)
	}
	return fmt.Sprintf("keymesh.Credentials{ClientID: %q, ClientSecret: <redacted>}", c.ClientID)
}

// GoString is String, for %#v.
func (c Credentials) GoString() string { return c.String() }

// Format prints String for every verb, so that no verb (%x, %d, %+v…) reaches the secret field.
func (c Credentials) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, c.String()) }

// MarshalJSON encodes the credentials without their secret.
func (c Credentials) MarshalJSON() ([]byte, error) {
	return json.Marshal(struct {
		ClientID         string `json:"client_id,omitempty"`
		SubjectTokenFile string `json:"subject_token_file,omitempty"`
	}{c.ClientID, c.SubjectTokenFile})
}

package keymesh

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	keymeshv1 "github.com/keymesh/keymesh/libs/go-client/gen/keymesh/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	testClientID     = "app-test"
	testClientSecret = "s3cr3t-never-printed"
)

// testPKI is a throwaway CA with a client certificate written to files, which issues server certificates.
type testPKI struct {
	ca                        *x509.Certificate
	caKey                     *ecdsa.PrivateKey
	caPath, certPath, keyPath string
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	dir := t.TempDir()
	caKey := newKey(t)
	caTemplate := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "test mesh CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTemplate, caTemplate, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{ca: ca, caKey: caKey, caPath: filepath.Join(dir, "ca.pem"),
		certPath: filepath.Join(dir, "client.pem"), keyPath: filepath.Join(dir, "client-key.pem")}
	writePEM(t, p.caPath, "CERTIFICATE", caDER)
	clientDER, clientKey := p.issue(t, "spiffe://keymesh/app/test", x509.ExtKeyUsageClientAuth)
	writePEM(t, p.certPath, "CERTIFICATE", clientDER)
	keyDER, err := x509.MarshalPKCS8PrivateKey(clientKey)
	if err != nil {
		t.Fatal(err)
	}
	writePEM(t, p.keyPath, "PRIVATE KEY", keyDER)
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func writePEM(t *testing.T, path, kind string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: kind, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

var serial int64 = 1

func (p *testPKI) issue(t *testing.T, spiffeID string, usage x509.ExtKeyUsage) ([]byte, *ecdsa.PrivateKey) {
	t.Helper()
	key := newKey(t)
	uri, err := url.Parse(spiffeID)
	if err != nil {
		t.Fatal(err)
	}
	template := &x509.Certificate{
		SerialNumber: big.NewInt(atomic.AddInt64(&serial, 1)),
		Subject:      pkix.Name{CommonName: "test"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{usage},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		URIs:         []*url.URL{uri},
	}
	der, err := x509.CreateCertificate(rand.Reader, template, p.ca, &key.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	return der, key
}

// serve starts a TLS gRPC server that requires a client certificate from the CA and presents the SPIFFE id
// of `service`; it returns its address.
func (p *testPKI) serve(t *testing.T, service string, register func(*grpc.Server)) string {
	t.Helper()
	der, key := p.issue(t, "spiffe://keymesh/"+service, x509.ExtKeyUsageServerAuth)
	pool := x509.NewCertPool()
	pool.AddCert(p.ca)
	creds := credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    pool,
		MinVersion:   tls.VersionTLS12,
	})
	server := grpc.NewServer(grpc.Creds(creds))
	register(server)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = server.Serve(lis) }()
	t.Cleanup(server.Stop)
	return lis.Addr().String()
}

// fakeTokens is a TokenService issuing tok-1, tok-2, … after `delay`, valid for expiresIn seconds.
type fakeTokens struct {
	keymeshv1.UnimplementedTokenServiceServer
	delay     time.Duration
	expiresIn uint32
	issued    int64 // atomic
	mu        sync.Mutex
	subjects  []string // subject tokens of token exchanges
}

func (f *fakeTokens) IssueToken(ctx context.Context, req *keymeshv1.IssueTokenRequest) (*keymeshv1.IssueTokenResponse, error) {
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("authorization")) > 0 {
		return nil, status.Error(codes.InvalidArgument, "IssueToken must carry no authorization")
	}
	switch req.GetGrantType() {
	case keymeshv1.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS:
		if req.GetClientId() != testClientID || req.GetClientSecret() != testClientSecret {
			return nil, status.Error(codes.Unauthenticated, "invalid client credentials")
		}
	case keymeshv1.GrantType_GRANT_TYPE_TOKEN_EXCHANGE:
		if req.GetSubjectTokenType() != SubjectTokenTypeJWT || req.GetClientSecret() != "" {
			return nil, status.Error(codes.InvalidArgument, "bad token exchange")
		}
		f.mu.Lock()
		f.subjects = append(f.subjects, req.GetSubjectToken())
		f.mu.Unlock()
	default:
		return nil, status.Error(codes.InvalidArgument, "unsupported grant")
	}
	n := atomic.AddInt64(&f.issued, 1)
	time.Sleep(f.delay)
	expires := f.expiresIn
	if expires == 0 {
		expires = 3600
	}
	return &keymeshv1.IssueTokenResponse{AccessToken: tokenName(n), TokenType: "Bearer", ExpiresInSeconds: expires}, nil
}

func tokenName(n int64) string { return "tok-" + strconv.FormatInt(n, 10) }

// fakeKeys is a KeyService whose GetKey answers with getKey, recording each call's authorization.
type fakeKeys struct {
	keymeshv1.UnimplementedKeyServiceServer
	getKey func(ctx context.Context, attempt int) (*keymeshv1.GetKeyResponse, error)
	mu     sync.Mutex
	auth   []string
}

func (f *fakeKeys) GetKey(ctx context.Context, req *keymeshv1.GetKeyRequest) (*keymeshv1.GetKeyResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.auth = append(f.auth, md.Get("authorization")...)
	attempt := len(f.auth)
	f.mu.Unlock()
	if len(md.Get("authorization")) != 1 {
		return nil, status.Error(codes.Unauthenticated, "missing access token")
	}
	if f.getKey == nil {
		return &keymeshv1.GetKeyResponse{Key: &keymeshv1.Key{Name: req.GetKey()}}, nil
	}
	return f.getKey(ctx, attempt)
}

func (f *fakeKeys) authorizations() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.auth...)
}

// fakeAudit is an AuditService whose Query streams two records to a caller with the token.
type fakeAudit struct {
	keymeshv1.UnimplementedAuditServiceServer
}

func (fakeAudit) Query(req *keymeshv1.QueryRequest, stream keymeshv1.AuditService_QueryServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	if auth := md.Get("authorization"); len(auth) != 1 || auth[0] != "Bearer tok-1" {
		return status.Error(codes.Unauthenticated, "missing access token")
	}
	if _, ok := stream.Context().Deadline(); !ok {
		return status.Error(codes.InvalidArgument, "the stream has no deadline")
	}
	for i := uint64(1); i <= 2; i++ {
		if err := stream.Send(&keymeshv1.QueryResponse{Record: &keymeshv1.AuditRecord{Sequence: i}}); err != nil {
			return err
		}
	}
	return nil
}

// mesh is a fake mesh: real TLS servers for token-, key- and audit-service (crypto-service's endpoint is
// key-service's, unused).
type mesh struct {
	pki    *testPKI
	tokens *fakeTokens
	keys   *fakeKeys
	cfg    Config
}

func newMesh(t *testing.T, tokens *fakeTokens, keys *fakeKeys) *mesh {
	t.Helper()
	pki := newTestPKI(t)
	tokenAddr := pki.serve(t, "token-service", func(s *grpc.Server) { keymeshv1.RegisterTokenServiceServer(s, tokens) })
	keyAddr := pki.serve(t, "key-service", func(s *grpc.Server) { keymeshv1.RegisterKeyServiceServer(s, keys) })
	auditAddr := pki.serve(t, "audit-service", func(s *grpc.Server) { keymeshv1.RegisterAuditServiceServer(s, fakeAudit{}) })
	return &mesh{pki: pki, tokens: tokens, keys: keys, cfg: Config{
		Endpoints:   Endpoints{KeyService: keyAddr, CryptoService: keyAddr, TokenService: tokenAddr, AuditService: auditAddr},
		CACert:      pki.caPath,
		ClientCert:  pki.certPath,
		ClientKey:   pki.keyPath,
		Credentials: ClientCredentials(testClientID, testClientSecret),
	}}
}

func (m *mesh) dial(t *testing.T, cfg Config) *Client {
	t.Helper()
	c, err := Dial(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

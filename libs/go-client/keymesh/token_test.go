package keymesh

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	keymeshv1 "github.com/keymesh/keymesh/libs/go-client/gen/keymesh/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// clock is a settable clock for the token cache.
type clock struct {
	mu     sync.Mutex
	offset time.Duration
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return time.Now().Add(c.offset)
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.offset += d
}

func withClock(c *Client) *clock {
	clk := &clock{}
	c.policy.tokens.now = clk.now
	return clk
}

func TestOneRefreshForManyGoroutinesNearExpiry(t *testing.T) {
	tokens := &fakeTokens{delay: 300 * time.Millisecond, expiresIn: 3600}
	keys := &fakeKeys{}
	m := newMesh(t, tokens, keys)
	c := m.dial(t, m.cfg)
	clk := withClock(c)
	if _, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"}); err != nil {
		t.Fatal(err)
	}
	// 4 minutes before expiry: within the 5-minute renewal margin.
	clk.advance(56 * time.Minute)
	const callers = 32
	var wg sync.WaitGroup
	errs := make(chan error, callers)
	start := make(chan struct{})
	for i := 0; i < callers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"})
			errs <- err
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := atomic.LoadInt64(&tokens.issued); n != 2 {
		t.Fatalf("IssueToken called %d times, want 2 (the first token and ONE renewal)", n)
	}
	auth := keys.authorizations()
	if len(auth) != 1+callers {
		t.Fatalf("%d calls reached key-service, want %d", len(auth), 1+callers)
	}
	for _, a := range auth[1:] {
		if a != "Bearer tok-2" {
			t.Fatalf("a call after the renewal carried %q, want Bearer tok-2", a)
		}
	}
}

func TestRenewalMargin(t *testing.T) {
	// A 10-second token is renewed after 8 s (a fifth of its life before expiry); an hour's 5 minutes before.
	for _, tc := range []struct {
		expiresIn     uint32
		before, after time.Duration
	}{{10, 7900 * time.Millisecond, 8100 * time.Millisecond}, {3600, 54*time.Minute + 59*time.Second, 55*time.Minute + time.Second}} {
		tokens := &fakeTokens{expiresIn: tc.expiresIn}
		m := newMesh(t, tokens, &fakeKeys{})
		c := m.dial(t, m.cfg)
		clk := withClock(c)
		if err := c.Authenticate(context.Background()); err != nil {
			t.Fatal(err)
		}
		clk.advance(tc.before)
		if err := c.Authenticate(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := atomic.LoadInt64(&tokens.issued); n != 1 {
			t.Fatalf("%ds token renewed after %v", tc.expiresIn, tc.before)
		}
		clk.advance(tc.after - tc.before)
		if err := c.Authenticate(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := atomic.LoadInt64(&tokens.issued); n != 2 {
			t.Fatalf("%ds token not renewed after %v", tc.expiresIn, tc.after)
		}
	}
}

func TestTokenExchangeReadsTheFileAtEachRenewal(t *testing.T) {
	tokens := &fakeTokens{}
	m := newMesh(t, tokens, &fakeKeys{})
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("jwt-A\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg := m.cfg
	cfg.Credentials = TokenExchange(file)
	c := m.dial(t, cfg)
	clk := withClock(c)
	if _, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"}); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(file, []byte("jwt-B"), 0o600); err != nil {
		t.Fatal(err)
	}
	clk.advance(time.Hour)
	if _, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"}); err != nil {
		t.Fatal(err)
	}
	tokens.mu.Lock()
	defer tokens.mu.Unlock()
	if got := strings.Join(tokens.subjects, ","); got != "jwt-A,jwt-B" {
		t.Fatalf("exchanged %q, want jwt-A,jwt-B", got)
	}
}

func TestWrongSecretIsUnauthenticated(t *testing.T) {
	m := newMesh(t, &fakeTokens{}, &fakeKeys{})
	cfg := m.cfg
	cfg.Credentials = ClientCredentials(testClientID, "wrong-secret")
	c := m.dial(t, cfg)
	err := c.Authenticate(context.Background())
	e, ok := err.(*Error)
	if !ok || e.Code != codes.Unauthenticated || e.Message != "invalid client credentials" {
		t.Fatalf("got %#v, want UNAUTHENTICATED", err)
	}
	if e.CodeName() != "UNAUTHENTICATED" || e.Error() != "keymesh: UNAUTHENTICATED: invalid client credentials" {
		t.Fatalf("error text %q", e.Error())
	}
	// A call fails the same way, without reaching key-service.
	_, err = c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"})
	if Code(err) != codes.Unauthenticated {
		t.Fatalf("got %v", err)
	}
}

func TestRefusedTokenIsRenewedAtTheNextCall(t *testing.T) {
	keys := &fakeKeys{}
	keys.getKey = func(ctx context.Context, attempt int) (*keymeshv1.GetKeyResponse, error) {
		if attempt == 1 {
			return nil, status.Error(codes.Unauthenticated, "token revoked")
		}
		return &keymeshv1.GetKeyResponse{}, nil
	}
	tokens := &fakeTokens{}
	m := newMesh(t, tokens, keys)
	c := m.dial(t, m.cfg)
	if _, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"}); Code(err) != codes.Unauthenticated {
		t.Fatalf("got %v", err)
	}
	if _, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"}); err != nil {
		t.Fatal(err)
	}
	if got := keys.authorizations(); len(got) != 2 || got[1] != "Bearer tok-2" {
		t.Fatalf("authorizations %q", got)
	}
}

func TestStreamsCarryTheTokenAndADeadline(t *testing.T) {
	m := newMesh(t, &fakeTokens{}, &fakeKeys{})
	c := m.dial(t, m.cfg)
	stream, err := c.AuditService().Query(context.Background(), &keymeshv1.QueryRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	for {
		resp, err := stream.Recv()
		if err != nil {
			if err.Error() != "EOF" {
				t.Fatal(err)
			}
			break
		}
		got = append(got, resp.GetRecord().GetSequence())
	}
	if len(got) != 2 {
		t.Fatalf("records %v", got)
	}
}

func TestServerIdentityIsChecked(t *testing.T) {
	m := newMesh(t, &fakeTokens{}, &fakeKeys{})
	cfg := m.cfg
	cfg.MaxAttempts = 1
	cfg.Endpoints.KeyService = cfg.Endpoints.TokenService // token-service's certificate where key-service should be
	c := m.dial(t, cfg)
	_, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"})
	if Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "not the expected spiffe://keymesh/key-service") {
		t.Fatalf("got %v, want the handshake refused for the wrong identity", err)
	}
}

func TestSecretsArePrintedNowhere(t *testing.T) {
	cfg := Config{CACert: "ca.pem", Credentials: ClientCredentials(testClientID, testClientSecret)}
	var out []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%X", "%d"} {
		out = append(out, fmt.Sprintf(verb, cfg), fmt.Sprintf(verb, &cfg), fmt.Sprintf(verb, cfg.Credentials))
	}
	text, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	out = append(out, string(text), cfg.Credentials.String(), cfg.Credentials.GoString())
	for _, s := range out {
		if strings.Contains(s, testClientSecret) || strings.Contains(strings.ToLower(s), fmt.Sprintf("%x", testClientSecret)) {
			t.Fatalf("secret printed: %s", s)
		}
	}
	if !strings.Contains(fmt.Sprint(cfg), testClientID) {
		t.Fatalf("client id missing from %v", cfg)
	}
	// Dial's errors name files, never their content.
	_, err = Dial(context.Background(), Config{CACert: "/nonexistent/ca.pem", ClientCert: "c", ClientKey: "k",
		Credentials: ClientCredentials(testClientID, testClientSecret)})
	if err == nil || strings.Contains(err.Error(), testClientSecret) {
		t.Fatalf("Dial: %v", err)
	}
}

package keymesh

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	keymeshv1 "github.com/keymesh/keymesh/libs/go-client/gen/keymesh/v1"
	"google.golang.org/grpc"
)

// renewMargin is how long before expiry a token is renewed (or a fifth of its lifetime, when shorter).
const renewMargin = 5 * time.Minute

type issueFunc func(ctx context.Context, in *keymeshv1.IssueTokenRequest, opts ...grpc.CallOption) (*keymeshv1.IssueTokenResponse, error)

// tokenSource caches the access token and renews it, one renewal in flight however many goroutines ask.
type tokenSource struct {
	creds Credentials
	issue issueFunc
	now   func() time.Time

	// renewing is a one-slot lock held by the goroutine renewing the token; a channel rather than a
	// sync.Mutex so that waiters give up when their context ends.
	renewing chan struct{}

	mu      sync.Mutex // guards token and renewAt
	token   string
	renewAt time.Time
}

func newTokenSource(creds Credentials, issue issueFunc) *tokenSource {
	return &tokenSource{creds: creds, issue: issue, now: time.Now, renewing: make(chan struct{}, 1)}
}

// cached returns the current token while it needs no renewal.
func (s *tokenSource) cached() (string, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.token != "" && s.now().Before(s.renewAt) {
		return s.token, true
	}
	return "", false
}

// Token returns a valid access token, issuing or renewing it when it is due.
func (s *tokenSource) Token(ctx context.Context) (string, error) {
	if token, ok := s.cached(); ok {
		return token, nil
	}
	select {
	case s.renewing <- struct{}{}:
	case <-ctx.Done():
		return "", contextError(ctx, nil, "waiting for an access token")
	}
	defer func() { <-s.renewing }()
	// Another goroutine may have renewed the token while this one waited for the lock.
	if token, ok := s.cached(); ok {
		return token, nil
	}
	request, err := s.request()
	if err != nil {
		return "", err
	}
	response, err := s.issue(ctx, request)
	if err != nil {
		return "", err
	}
	if response.GetAccessToken() == "" {
		return "", errors.New("keymesh: IssueToken returned no access token")
	}
	lifetime := time.Duration(response.GetExpiresInSeconds()) * time.Second
	margin := lifetime / 5
	if margin > renewMargin {
		margin = renewMargin
	}
	s.mu.Lock()
	s.token = response.GetAccessToken()
	s.renewAt = s.now().Add(lifetime - margin)
	s.mu.Unlock()
	return response.GetAccessToken(), nil
}

// invalidate drops token if it is still the cached one (the server refused it), so the next call renews.
func (s *tokenSource) invalidate(token string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.token == token {
		s.token = ""
	}
}

func (s *tokenSource) request() (*keymeshv1.IssueTokenRequest, error) {
	if s.creds.SubjectTokenFile == "" {
		return &keymeshv1.IssueTokenRequest{
			GrantType:    keymeshv1.GrantType_GRANT_TYPE_CLIENT_CREDENTIALS,
			ClientId:     s.creds.ClientID,
			ClientSecret: s.creds.ClientSecret,
		}, nil
	}
	// Read at every renewal: the platform rotates the file's token.
	data, err := os.ReadFile(s.creds.SubjectTokenFile)
	if err != nil {
		return nil, fmt.Errorf("keymesh: reading the subject token: %w", err)
	}
	subject := strings.TrimSpace(string(data))
	if subject == "" {
		return nil, fmt.Errorf("keymesh: the subject token file %s is empty", s.creds.SubjectTokenFile)
	}
	return &keymeshv1.IssueTokenRequest{
		GrantType:        keymeshv1.GrantType_GRANT_TYPE_TOKEN_EXCHANGE,
		SubjectToken:     subject,
		SubjectTokenType: SubjectTokenTypeJWT,
	}, nil
}

package keymesh

import (
	"context"
	"strings"
	"testing"
	"time"

	keymeshv1 "github.com/keymesh/keymesh/libs/go-client/gen/keymesh/v1"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
)

// withRetryInfo is the status keymesh's services answer when overloaded: a google.rpc.RetryInfo detail.
func withRetryInfo(t *testing.T, code codes.Code, delay time.Duration) error {
	st, err := status.New(code, "the service is at capacity; retry later").
		WithDetails(&errdetails.RetryInfo{RetryDelay: durationpb.New(delay)})
	if err != nil {
		t.Fatal(err)
	}
	return st.Err()
}

func TestRetryHonoursRetryInfo(t *testing.T) {
	keys := &fakeKeys{}
	keys.getKey = func(ctx context.Context, attempt int) (*keymeshv1.GetKeyResponse, error) {
		if attempt == 1 {
			return nil, withRetryInfo(t, codes.Unavailable, 300*time.Millisecond)
		}
		return &keymeshv1.GetKeyResponse{Key: &keymeshv1.Key{KeyId: "k_1"}}, nil
	}
	m := newMesh(t, &fakeTokens{}, keys)
	c := m.dial(t, m.cfg)
	if err := c.Authenticate(context.Background()); err != nil { // the token is not part of the timing
		t.Fatal(err)
	}
	start := time.Now()
	resp, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatalf("GetKey: %v", err)
	}
	if resp.GetKey().GetKeyId() != "k_1" {
		t.Fatalf("response %v", resp)
	}
	if elapsed < 300*time.Millisecond {
		t.Fatalf("retried after %v, before the server's RetryInfo delay of 300ms", elapsed)
	}
	if elapsed > 2*time.Second {
		t.Fatalf("retry took %v", elapsed)
	}
	if got := keys.authorizations(); len(got) != 2 || got[0] != "Bearer tok-1" || got[1] != "Bearer tok-1" {
		t.Fatalf("attempts carried %q, want two with Bearer tok-1", got)
	}
}

func TestRetryGivesUpPromptlyWithinTheDeadline(t *testing.T) {
	keys := &fakeKeys{getKey: func(ctx context.Context, attempt int) (*keymeshv1.GetKeyResponse, error) {
		return nil, withRetryInfo(t, codes.Unavailable, 300*time.Millisecond)
	}}
	m := newMesh(t, &fakeTokens{}, keys)
	c := m.dial(t, m.cfg)
	if err := c.Authenticate(context.Background()); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.KeyService().GetKey(ctx, &keymeshv1.GetKeyRequest{Key: "k"})
	elapsed := time.Since(start)
	if Code(err) != codes.DeadlineExceeded || status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DEADLINE_EXCEEDED", err)
	}
	if elapsed >= 150*time.Millisecond {
		t.Fatalf("gave up after %v: it should not sleep into a deadline the retry cannot meet", elapsed)
	}
	e, ok := err.(*Error)
	if !ok || e.RetryDelay != 300*time.Millisecond || e.Attempts != 1 || !strings.Contains(e.Message, "UNAVAILABLE") {
		t.Fatalf("error %#v", err)
	}
	if n := len(keys.authorizations()); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
}

func TestRetryAfterHeaderWhenNoRetryInfo(t *testing.T) {
	keys := &fakeKeys{}
	keys.getKey = func(ctx context.Context, attempt int) (*keymeshv1.GetKeyResponse, error) {
		if attempt == 1 {
			_ = grpc.SetHeader(ctx, metadata.Pairs("retry-after", "1"))
			return nil, status.Error(codes.Unavailable, "retry later")
		}
		return &keymeshv1.GetKeyResponse{}, nil
	}
	m := newMesh(t, &fakeTokens{}, keys)
	c := m.dial(t, m.cfg)
	if err := c.Authenticate(context.Background()); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"}); err != nil {
		t.Fatal(err)
	}
	if elapsed := time.Since(start); elapsed < time.Second {
		t.Fatalf("retried after %v, before the retry-after of 1 s", elapsed)
	}
}

func TestWhichFailuresAreRetried(t *testing.T) {
	cases := []struct {
		name     string
		fail     func(t *testing.T) error
		attempts int
		code     codes.Code
	}{
		{"not found is final", func(*testing.T) error { return status.Error(codes.NotFound, "key not found") }, 1, codes.NotFound},
		{"resource exhausted without RetryInfo is final",
			func(*testing.T) error { return status.Error(codes.ResourceExhausted, "quota") }, 1, codes.ResourceExhausted},
		{"resource exhausted with RetryInfo is retried",
			func(t *testing.T) error { return withRetryInfo(t, codes.ResourceExhausted, 10*time.Millisecond) }, 3, codes.ResourceExhausted},
		{"unavailable is retried up to MaxAttempts",
			func(*testing.T) error { return status.Error(codes.Unavailable, "down") }, 3, codes.Unavailable},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			keys := &fakeKeys{getKey: func(context.Context, int) (*keymeshv1.GetKeyResponse, error) { return nil, tc.fail(t) }}
			m := newMesh(t, &fakeTokens{}, keys)
			cfg := m.cfg
			cfg.MaxAttempts = 3
			c := m.dial(t, cfg)
			_, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"})
			e, ok := err.(*Error)
			if !ok || e.Code != tc.code || e.Attempts != tc.attempts {
				t.Fatalf("got %#v, want an *Error %s after %d attempts", err, CodeName(tc.code), tc.attempts)
			}
			if want := tc.fail(t).(interface{ GRPCStatus() *status.Status }).GRPCStatus().Message(); e.Message != want {
				t.Fatalf("message %q, want the server's %q", e.Message, want)
			}
			if n := len(keys.authorizations()); n != tc.attempts {
				t.Fatalf("server saw %d attempts, want %d", n, tc.attempts)
			}
		})
	}
}

func TestDefaultDeadline(t *testing.T) {
	keys := &fakeKeys{getKey: func(ctx context.Context, _ int) (*keymeshv1.GetKeyResponse, error) {
		deadline, ok := ctx.Deadline()
		if !ok {
			return nil, status.Error(codes.InvalidArgument, "no deadline")
		}
		if left := time.Until(deadline); left > 2*time.Second {
			return nil, status.Errorf(codes.InvalidArgument, "deadline in %v, want within 2s", left)
		}
		return &keymeshv1.GetKeyResponse{}, nil
	}}
	m := newMesh(t, &fakeTokens{}, keys)
	cfg := m.cfg
	cfg.Timeout = 2 * time.Second
	c := m.dial(t, cfg)
	if _, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"}); err != nil {
		t.Fatal(err)
	}
	// A call that outlives the default deadline fails with DEADLINE_EXCEEDED.
	keys.getKey = func(ctx context.Context, _ int) (*keymeshv1.GetKeyResponse, error) {
		<-ctx.Done()
		time.Sleep(200 * time.Millisecond) // answer only after the client has given up
		return &keymeshv1.GetKeyResponse{}, nil
	}
	cfg.Timeout = 100 * time.Millisecond
	c = m.dial(t, cfg)
	start := time.Now()
	_, err := c.KeyService().GetKey(context.Background(), &keymeshv1.GetKeyRequest{Key: "k"})
	if Code(err) != codes.DeadlineExceeded || time.Since(start) > time.Second {
		t.Fatalf("got %v after %v, want DEADLINE_EXCEEDED after 100ms", err, time.Since(start))
	}
}

func TestBackoffGrowsWithJitterAndHonoursTheServer(t *testing.T) {
	for attempt := 1; attempt <= 10; attempt++ {
		b := initialBackoff << uint(attempt-1)
		if attempt >= 8 || b > maxBackoff {
			b = maxBackoff
		}
		seen := map[time.Duration]bool{}
		for i := 0; i < 50; i++ {
			d := backoff(attempt, 0)
			if d < b/2 || d > b {
				t.Fatalf("attempt %d: %v outside [%v, %v]", attempt, d, b/2, b)
			}
			seen[d] = true
		}
		if len(seen) < 10 {
			t.Fatalf("attempt %d: no jitter (%d distinct waits)", attempt, len(seen))
		}
	}
	for i := 0; i < 50; i++ {
		if d := backoff(1, 2*time.Second); d < 2*time.Second || d > 2200*time.Millisecond {
			t.Fatalf("server delay 2s gave %v", d)
		}
	}
}

package keymesh

import (
	"context"
	crand "crypto/rand"
	"encoding/binary"
	"io"
	"math/rand"
	"strconv"
	"strings"
	"sync"
	"time"

	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

const (
	// initialBackoff is the backoff before the first retry when the server named no delay; it doubles per
	// retry up to maxBackoff, and each wait is drawn between half of it and all of it.
	initialBackoff = 100 * time.Millisecond
	maxBackoff     = 5 * time.Second
)

// tokenFree are the methods that need no access token (possession of the token is RevokeToken's proof).
var tokenFree = map[string]bool{
	"/keymesh.v1.TokenService/IssueToken":  true,
	"/keymesh.v1.TokenService/RevokeToken": true,
	"/keymesh.v1.TokenService/GetJwks":     true,
}

// callPolicy is the interceptors' state: the default deadline, the retry bound and the token source.
type callPolicy struct {
	timeout     time.Duration
	maxAttempts int
	tokens      *tokenSource
}

// withDeadline gives ctx the default deadline when it has none.
func (p *callPolicy) withDeadline(ctx context.Context) (context.Context, context.CancelFunc) {
	if _, ok := ctx.Deadline(); ok || p.timeout <= 0 {
		return context.WithCancel(ctx)
	}
	return context.WithTimeout(ctx, p.timeout)
}

// authorize adds `authorization: Bearer <token>` to ctx's outgoing metadata, unless the method needs no token
// or the caller set its own authorization. It returns the token it added.
func (p *callPolicy) authorize(ctx context.Context, method string) (context.Context, string, error) {
	if tokenFree[method] {
		return ctx, "", nil
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get("authorization")) > 0 {
		return ctx, "", nil
	}
	token, err := p.tokens.Token(ctx)
	if err != nil {
		return nil, "", err
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token), token, nil
}

// unary authenticates, bounds and retries a unary call.
func (p *callPolicy) unary(ctx context.Context, method string, req, reply interface{}, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	ctx, cancel := p.withDeadline(ctx)
	defer cancel()
	for attempt := 1; ; attempt++ {
		callCtx, token, err := p.authorize(ctx, method)
		if err != nil {
			return err
		}
		var header, trailer metadata.MD
		callOpts := make([]grpc.CallOption, 0, len(opts)+2)
		callOpts = append(callOpts, opts...)
		callOpts = append(callOpts, grpc.Header(&header), grpc.Trailer(&trailer))
		err = invoker(callCtx, method, req, reply, cc, callOpts...)
		if err == nil {
			return nil
		}
		st, ok := status.FromError(err)
		if !ok {
			return err
		}
		if st.Code() == codes.Unauthenticated && token != "" {
			p.tokens.invalidate(token)
		}
		delay, fromRetryInfo := serverDelay(st, header, trailer)
		last := &Error{Code: st.Code(), Message: st.Message(), RetryDelay: delay, Attempts: attempt, status: st}
		retryable := st.Code() == codes.Unavailable || (st.Code() == codes.ResourceExhausted && fromRetryInfo)
		if !retryable || attempt >= p.maxAttempts {
			return last
		}
		wait := backoff(attempt, delay)
		if deadline, ok := ctx.Deadline(); ok && time.Until(deadline) <= wait {
			// Fail now rather than sleep into the deadline: the retry could not be made in time.
			return &Error{
				Code: codes.DeadlineExceeded,
				Message: "the call's deadline ends before its retry is due in " + wait.Round(time.Millisecond).String() +
					" (last attempt: " + CodeName(last.Code) + ": " + last.Message + ")",
				RetryDelay: delay,
				Attempts:   attempt,
			}
		}
		timer := time.NewTimer(wait)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			return contextError(ctx, last, "waiting to retry")
		}
	}
}

// stream authenticates a streaming call and bounds it by the default deadline, released when the stream
// ends. Streams are not retried: their messages cannot be replayed.
func (p *callPolicy) stream(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string,
	streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	ctx, cancel := p.withDeadline(ctx)
	callCtx, token, err := p.authorize(ctx, method)
	if err != nil {
		cancel()
		return nil, err
	}
	s, err := streamer(callCtx, desc, cc, method, opts...)
	if err != nil {
		cancel()
		if status.Code(err) == codes.Unauthenticated && token != "" {
			p.tokens.invalidate(token)
		}
		return nil, asError(err, 1)
	}
	return &clientStream{ClientStream: s, cancel: cancel, tokens: p.tokens, token: token}, nil
}

// clientStream turns a stream's status errors into *Error and releases its deadline when it ends.
type clientStream struct {
	grpc.ClientStream
	cancel context.CancelFunc
	tokens *tokenSource
	token  string
	once   sync.Once
}

func (s *clientStream) SendMsg(m interface{}) error {
	err := s.ClientStream.SendMsg(m)
	if err == nil || err == io.EOF { // io.EOF: the stream ended; RecvMsg returns its status
		return err
	}
	return s.fail(err)
}

func (s *clientStream) RecvMsg(m interface{}) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil {
		return nil
	}
	s.once.Do(s.cancel)
	if err == io.EOF {
		return err
	}
	return s.fail(err)
}

func (s *clientStream) fail(err error) error {
	if status.Code(err) == codes.Unauthenticated && s.token != "" {
		s.tokens.invalidate(s.token)
	}
	return asError(err, 1)
}

// serverDelay is the delay the server asked for: its google.rpc.RetryInfo (fromRetryInfo), else its
// retry-after header or trailer in whole seconds, else zero.
func serverDelay(st *status.Status, mds ...metadata.MD) (delay time.Duration, fromRetryInfo bool) {
	for _, detail := range st.Details() {
		if info, ok := detail.(*errdetails.RetryInfo); ok && info.GetRetryDelay() != nil {
			if d := info.GetRetryDelay().AsDuration(); d >= 0 {
				return d, true
			}
		}
	}
	for _, md := range mds {
		for _, value := range md.Get("retry-after") {
			if seconds, err := strconv.Atoi(strings.TrimSpace(value)); err == nil && seconds >= 0 {
				return time.Duration(seconds) * time.Second, false
			}
		}
	}
	return 0, false
}

// backoff is the wait before retry number `attempt`: exponential with jitter, and at least the server's
// delay (plus up to a tenth of it, so that refused callers do not all come back at once).
func backoff(attempt int, server time.Duration) time.Duration {
	b := maxBackoff
	if attempt < 8 {
		if exp := initialBackoff << uint(attempt-1); exp < maxBackoff {
			b = exp
		}
	}
	wait := b/2 + jitter(b/2)
	if server > 0 {
		if s := server + jitter(server/10); s > wait {
			wait = s
		}
	}
	return wait
}

// jitterRand is seeded per process (Go 1.19's global math/rand source starts from the same seed in every
// process, which would bring every client back at the same moments).
var (
	jitterMu   sync.Mutex
	jitterRand = rand.New(rand.NewSource(seed()))
)

func seed() int64 {
	var b [8]byte
	if _, err := crand.Read(b[:]); err != nil {
		return time.Now().UnixNano()
	}
	return int64(binary.LittleEndian.Uint64(b[:]))
}

// jitter is uniform in [0, max].
func jitter(max time.Duration) time.Duration {
	if max <= 0 {
		return 0
	}
	jitterMu.Lock()
	defer jitterMu.Unlock()
	return time.Duration(jitterRand.Int63n(int64(max) + 1))
}

package keymesh

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	keymeshv1 "github.com/keymesh/keymesh/libs/go-client/gen/keymesh/v1"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
)

const (
	// DefaultTimeout is the deadline of a call whose context has none.
	DefaultTimeout = 30 * time.Second
	// DefaultMaxAttempts bounds how many times a unary call is sent (the first attempt and its retries).
	DefaultMaxAttempts = 5
	// maxCryptoMessage is the largest message exchanged with crypto-service: the largest unary limit the
	// service can be configured with (64 MiB) twice over, with room for the rest of the message, like the
	// Rust SDK. The service enforces its own.
	maxCryptoMessage = 2*64*1024*1024 + 64*1024
)

// Endpoints are the services' addresses, host:port each. The host is also the name the server's certificate
// must carry (a DNS name or an IP address).
type Endpoints struct {
	KeyService    string
	CryptoService string
	TokenService  string
	AuditService  string
}

// Config says where the services are and how to authenticate to them.
type Config struct {
	Endpoints Endpoints
	// CACert is the mesh CA's certificate (PEM file), which the services' certificates must chain to.
	CACert string
	// ClientCert and ClientKey are the client certificate (PEM, from the mesh CA) and its private key. They are
	// read again at each TLS handshake, so a renewed certificate is picked up by new connections.
	ClientCert string
	ClientKey  string
	// Credentials get the access token every call carries.
	Credentials Credentials
	// Timeout is the deadline of a call whose context has none: 0 means DefaultTimeout, a negative value
	// none. For a stream it bounds the whole stream.
	Timeout time.Duration
	// MaxAttempts bounds how many times a unary call is sent; 0 means DefaultMaxAttempts, 1 no retries.
	MaxAttempts int
	// DialOptions are added to every connection's (after the client's own).
	DialOptions []grpc.DialOption
}

// Client is a connection to the four services. It is safe for concurrent use; Close releases it.
type Client struct {
	conns  []*grpc.ClientConn
	keys   keymeshv1.KeyServiceClient
	crypto keymeshv1.CryptoServiceClient
	tokens keymeshv1.TokenServiceClient
	audit  keymeshv1.AuditServiceClient
	policy *callPolicy
}

// Dial checks the configuration, reads the TLS material and connects to the services. Connections are made
// lazily, at the first call: Dial does not wait for the services to answer, and no token is requested before
// the first call (or Authenticate).
func Dial(ctx context.Context, cfg Config) (*Client, error) {
	if err := cfg.Credentials.validate(); err != nil {
		return nil, err
	}
	material, err := loadTLS(cfg.CACert, cfg.ClientCert, cfg.ClientKey)
	if err != nil {
		return nil, err
	}
	policy := &callPolicy{timeout: cfg.Timeout, maxAttempts: cfg.MaxAttempts}
	if policy.timeout == 0 {
		policy.timeout = DefaultTimeout
	}
	if policy.maxAttempts <= 0 {
		policy.maxAttempts = DefaultMaxAttempts
	}
	c := &Client{policy: policy}
	dial := func(service, endpoint string, extra ...grpc.DialOption) (*grpc.ClientConn, error) {
		endpoint = strings.TrimPrefix(strings.TrimPrefix(endpoint, "https://"), "http://")
		if endpoint == "" {
			return nil, fmt.Errorf("keymesh: no endpoint for %s", service)
		}
		opts := []grpc.DialOption{
			grpc.WithTransportCredentials(credentials.NewTLS(material.config(service))),
			grpc.WithChainUnaryInterceptor(policy.unary),
			grpc.WithChainStreamInterceptor(policy.stream),
		}
		opts = append(opts, extra...)
		opts = append(opts, cfg.DialOptions...)
		conn, err := grpc.DialContext(ctx, endpoint, opts...)
		if err != nil {
			return nil, fmt.Errorf("keymesh: %s at %s: %w", service, endpoint, err)
		}
		c.conns = append(c.conns, conn)
		return conn, nil
	}
	fail := func(err error) (*Client, error) {
		_ = c.Close()
		return nil, err
	}
	key, err := dial("key-service", cfg.Endpoints.KeyService)
	if err != nil {
		return fail(err)
	}
	crypto, err := dial("crypto-service", cfg.Endpoints.CryptoService, grpc.WithDefaultCallOptions(
		grpc.MaxCallRecvMsgSize(maxCryptoMessage), grpc.MaxCallSendMsgSize(maxCryptoMessage)))
	if err != nil {
		return fail(err)
	}
	token, err := dial("token-service", cfg.Endpoints.TokenService)
	if err != nil {
		return fail(err)
	}
	audit, err := dial("audit-service", cfg.Endpoints.AuditService)
	if err != nil {
		return fail(err)
	}
	c.keys = keymeshv1.NewKeyServiceClient(key)
	c.crypto = keymeshv1.NewCryptoServiceClient(crypto)
	c.tokens = keymeshv1.NewTokenServiceClient(token)
	c.audit = keymeshv1.NewAuditServiceClient(audit)
	policy.tokens = newTokenSource(cfg.Credentials, c.tokens.IssueToken)
	return c, nil
}

// KeyService is the control plane's generated client; its calls carry the access token.
func (c *Client) KeyService() keymeshv1.KeyServiceClient { return c.keys }

// CryptoService is the data plane's generated client; its calls carry the access token.
func (c *Client) CryptoService() keymeshv1.CryptoServiceClient { return c.crypto }

// TokenService is token-service's generated client; its calls carry the access token, except IssueToken,
// RevokeToken and GetJwks, which need none.
func (c *Client) TokenService() keymeshv1.TokenServiceClient { return c.tokens }

// AuditService is audit-service's generated client; its calls carry the access token.
func (c *Client) AuditService() keymeshv1.AuditServiceClient { return c.audit }

// Authenticate makes sure the client holds a valid access token, issuing one now if needed, so that wrong
// credentials show at start-up rather than at the first call. A refusal is an *Error (UNAUTHENTICATED for
// wrong credentials).
func (c *Client) Authenticate(ctx context.Context) error {
	ctx, cancel := c.policy.withDeadline(ctx)
	defer cancel()
	_, err := c.policy.tokens.Token(ctx)
	return err
}

// Close closes the connections; calls in flight fail.
func (c *Client) Close() error {
	var errs []string
	for _, conn := range c.conns {
		if err := conn.Close(); err != nil {
			errs = append(errs, err.Error())
		}
	}
	c.conns = nil
	if len(errs) > 0 {
		return errors.New("keymesh: closing: " + strings.Join(errs, "; "))
	}
	return nil
}

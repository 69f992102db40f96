// Package keymesh is a thin client for the keymesh key-management mesh.
//
// Dial connects to the four services (key-, crypto-, token- and audit-service) over mutual TLS with a client
// certificate from the mesh CA and returns a Client whose generated gRPC clients (KeyService, CryptoService,
// TokenService, AuditService) authenticate every call with a bearer token. The token comes from
// token-service's IssueToken, by client credentials or by token exchange of a platform token read afresh from
// a file at each renewal, and is renewed 5 minutes before it expires (or a fifth of its lifetime, when that is
// shorter), one renewal at a time however many goroutines call.
//
// Unary calls get a deadline of Config.Timeout (30 s by default) when their context has none, and are retried
// with exponential backoff and jitter on UNAVAILABLE, and on RESOURCE_EXHAUSTED when the server attached a
// google.rpc.RetryInfo, waiting at least as long as the server asked (RetryInfo, else the retry-after header),
// for at most Config.MaxAttempts attempts and never past the call's deadline. Streaming calls carry the token
// and the default deadline but are not retried. A call the server refuses fails with an *Error carrying the
// gRPC code and the server's message.
//
//	client, err := keymesh.Dial(ctx, keymesh.Config{
//		Endpoints: keymesh.Endpoints{
//			KeyService:    "localhost:50051",
//			CryptoService: "localhost:50052",
//			TokenService:  "localhost:50053",
//			AuditService:  "localhost:50054",
//		},
//		CACert:      "ca.pem",
//		ClientCert:  "client.pem",
//		ClientKey:   "client-key.pem",
//		Credentials: keymesh.ClientCredentials(clientID, clientSecret),
//	})
//	if err != nil {
//		return err
//	}
//	defer client.Close()
//	out, err := client.CryptoService().Encrypt(ctx, &keymeshv1.EncryptRequest{Key: "user-pii", Plaintext: data})
//	if keymesh.Code(err) == codes.NotFound {
//		// no such key
//	}
package keymesh

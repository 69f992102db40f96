package keymesh

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"os"
	"sync"
)

// TrustDomain is the mesh's SPIFFE trust domain: a service's certificate carries the one URI SAN
// spiffe://keymesh/<service>, e.g. spiffe://keymesh/crypto-service.
const TrustDomain = "keymesh"

// tlsMaterial is the CA pool (read once, at Dial) and the client certificate's files (read again at each
// handshake, so that new connections present a renewed certificate).
type tlsMaterial struct {
	roots             *x509.CertPool
	certPath, keyPath string
	mu                sync.Mutex
	last              *tls.Certificate
}

func loadTLS(caPath, certPath, keyPath string) (*tlsMaterial, error) {
	if caPath == "" || certPath == "" || keyPath == "" {
		return nil, errors.New("keymesh: CACert, ClientCert and ClientKey are all required")
	}
	caPEM, err := os.ReadFile(caPath)
	if err != nil {
		return nil, fmt.Errorf("keymesh: reading the CA certificate: %w", err)
	}
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("keymesh: %s holds no PEM certificate", caPath)
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return nil, fmt.Errorf("keymesh: loading the client certificate %s and key %s: %w", certPath, keyPath, err)
	}
	return &tlsMaterial{roots: roots, certPath: certPath, keyPath: keyPath, last: &cert}, nil
}

// clientCertificate reads the key pair again; while the files cannot be read (say, half-written during a
// renewal) it keeps presenting the last good one.
func (m *tlsMaterial) clientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	cert, err := tls.LoadX509KeyPair(m.certPath, m.keyPath)
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		m.last = &cert
	}
	return m.last, nil
}

// config is the TLS configuration for one service: the chain must verify against the CA and the host name,
// and the leaf must name exactly the expected SPIFFE identity.
func (m *tlsMaterial) config(service string) *tls.Config {
	expected := "spiffe://" + TrustDomain + "/" + service
	return &tls.Config{
		MinVersion:           tls.VersionTLS12,
		RootCAs:              m.roots,
		GetClientCertificate: m.clientCertificate,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("keymesh: the server sent no certificate")
			}
			uris := cs.PeerCertificates[0].URIs
			switch {
			case len(uris) != 1:
				return fmt.Errorf("keymesh: the server's certificate has %d URI SANs, not the one %s", len(uris), expected)
			case uris[0].String() != expected:
				return fmt.Errorf("keymesh: the server is %s, not the expected %s", uris[0], expected)
			}
			return nil
		},
	}
}

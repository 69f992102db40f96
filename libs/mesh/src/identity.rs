//! Who is calling, from the client certificate's SPIFFE URI SAN (`spiffe://keymesh/<name>`). Mesh services
//! authorize each other by this identity alone; applications additionally present an access token.

use std::fmt;

pub use keymesh_mtls::{ServiceName, SvidError, TRUST_DOMAIN, app_spiffe_id, spiffe_id_from_der};
use tonic::{Request, Status};

/// The verified identity of the peer of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerIdentity(String);

impl PeerIdentity {
    /// Reads the identity from the client certificate rustls verified. A connection without one never
    /// reaches a handler (the server requires client certificates), so a missing identity is an error.
    pub fn from_request<T>(request: &Request<T>) -> Result<Self, Status> {
        let certs = request
            .peer_certs()
            .ok_or_else(|| Status::unauthenticated("no client certificate on this connection; connect with mTLS"))?;
        let leaf = certs.first().ok_or_else(|| Status::unauthenticated("empty client certificate chain"))?;
        // The handshake already refused anything but an X.509-SVID of the trust domain; this repeats the
        // check so that no handler ever reads an identity from a certificate that says more than one thing.
        spiffe_id_from_der(leaf.as_ref())
            .map(Self)
            .map_err(|e| Status::unauthenticated(format!("{e}; issue the client certificate from the mesh CA")))
    }

    /// The SPIFFE URI.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether this is the given mesh service.
    pub fn is(&self, service: ServiceName) -> bool {
        self.0 == service.spiffe_id()
    }

    /// Whether this is any mesh service.
    pub fn mesh_service(&self) -> Option<ServiceName> {
        ServiceName::ALL.into_iter().find(|s| self.is(*s))
    }

    /// Refuses the call unless the peer is `service`.
    pub fn require(&self, service: ServiceName, method: &str) -> Result<(), Status> {
        if self.is(service) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{method} is only for {}; this connection's certificate is {}",
                service.spiffe_id(),
                self.0
            )))
        }
    }
}

impl fmt::Display for PeerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

//! Who is calling, from the client certificate's SPIFFE URI SAN (`spiffe://keymesh/<name>`). Mesh services
//! authorize each other by this identity alone; applications additionally present an access token.

use std::fmt;

use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// The SPIFFE trust domain of the mesh.
pub const TRUST_DOMAIN: &str = "keymesh";

/// The four services of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceName {
    /// Control plane.
    KeyService,
    /// Data plane.
    CryptoService,
    /// Identity.
    TokenService,
    /// Audit trail.
    AuditService,
}

impl ServiceName {
    /// All services.
    pub const ALL: [ServiceName; 4] = [Self::KeyService, Self::CryptoService, Self::TokenService, Self::AuditService];

    /// e.g. "key-service".
    pub fn as_str(self) -> &'static str {
        match self {
            Self::KeyService => "key-service",
            Self::CryptoService => "crypto-service",
            Self::TokenService => "token-service",
            Self::AuditService => "audit-service",
        }
    }

    /// The config field holding its endpoint.
    pub fn endpoint_field(self) -> &'static str {
        match self {
            Self::KeyService => "endpoints.key_service",
            Self::CryptoService => "endpoints.crypto_service",
            Self::TokenService => "endpoints.token_service",
            Self::AuditService => "endpoints.audit_service",
        }
    }

    /// Its SPIFFE identity.
    pub fn spiffe_id(self) -> String {
        format!("spiffe://{TRUST_DOMAIN}/{}", self.as_str())
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The SPIFFE id of an application's (or tool's) client certificate: `spiffe://keymesh/app/<name>`.
pub fn app_spiffe_id(name: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/app/{name}")
}

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
        spiffe_id_from_der(leaf.as_ref()).map(Self).ok_or_else(|| {
            Status::unauthenticated(format!(
                "the client certificate carries no spiffe://{TRUST_DOMAIN}/ URI SAN; issue it from the mesh CA"
            ))
        })
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

/// The first `spiffe://<trust domain>/…` URI SAN of a DER certificate.
pub fn spiffe_id_from_der(der: &[u8]) -> Option<String> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let prefix = format!("spiffe://{TRUST_DOMAIN}/");
    san.value.general_names.iter().find_map(|name| match name {
        GeneralName::URI(uri) if uri.starts_with(&prefix) => Some((*uri).to_owned()),
        _ => None,
    })
}

//! The names of the four services and their SPIFFE identities (`spiffe://keymesh/<name>`), read from and
//! written into certificates' URI SANs.

use std::fmt;

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

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

/// Why a certificate is not an X.509-SVID of the mesh's trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SvidError {
    /// Not a parsable X.509 certificate, or its SAN extension is malformed.
    #[error("the certificate cannot be parsed")]
    Unparsable,
    /// No URI SAN at all.
    #[error("the certificate carries no URI SAN; an X.509-SVID carries exactly one spiffe://{TRUST_DOMAIN}/ URI")]
    NoUri,
    /// Several URI SANs: which one is the identity would be the verifier's guess.
    #[error("the certificate carries {0} URI SANs; an X.509-SVID carries exactly one")]
    SeveralUris(usize),
    /// The one URI is not a SPIFFE id of the mesh's trust domain.
    #[error("the certificate's URI SAN {0:?} is not a SPIFFE id of the trust domain {TRUST_DOMAIN:?}")]
    ForeignUri(String),
}

/// The SPIFFE id of a DER certificate read as an X.509-SVID: its one and only URI SAN, which must be
/// `spiffe://<trust domain>/<path>` with a non-empty path of printable ASCII. A certificate with several URIs
/// is refused rather than read by its first: whoever issued it could otherwise pick which identity a
/// verifier sees.
pub fn spiffe_id_from_der(der: &[u8]) -> Result<String, SvidError> {
    let (_, cert) = X509Certificate::from_der(der).map_err(|_| SvidError::Unparsable)?;
    let san = cert.subject_alternative_name().map_err(|_| SvidError::Unparsable)?;
    let uris: Vec<&str> = san
        .iter()
        .flat_map(|san| san.value.general_names.iter())
        .filter_map(|name| match name {
            GeneralName::URI(uri) => Some(*uri),
            _ => None,
        })
        .collect();
    let uri = match uris.as_slice() {
        [] => return Err(SvidError::NoUri),
        [uri] => *uri,
        several => return Err(SvidError::SeveralUris(several.len())),
    };
    let prefix = format!("spiffe://{TRUST_DOMAIN}/");
    let path = uri.strip_prefix(&prefix).unwrap_or_default();
    let printable = |c: char| c.is_ascii_graphic() && !matches!(c, '?' | '#');
    if path.is_empty() || uri.len() > 2048 || !path.chars().all(printable) || path.split('/').any(str::is_empty) {
        return Err(SvidError::ForeignUri(uri.chars().filter(|c| !c.is_control()).take(200).collect()));
    }
    Ok(uri.to_owned())
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, KeyPair, SanType};

    use super::*;

    fn cert_with(sans: &[&str]) -> Vec<u8> {
        let mut params = CertificateParams::default();
        for san in sans {
            params.subject_alt_names.push(if san.contains(':') {
                SanType::URI((*san).try_into().unwrap())
            } else {
                SanType::DnsName((*san).try_into().unwrap())
            });
        }
        params.self_signed(&KeyPair::generate().unwrap()).unwrap().der().to_vec()
    }

    #[test]
    fn exactly_one_spiffe_uri_of_the_trust_domain() {
        let ok = cert_with(&["spiffe://keymesh/crypto-service", "localhost"]);
        assert_eq!(spiffe_id_from_der(&ok).unwrap(), "spiffe://keymesh/crypto-service");
        assert_eq!(spiffe_id_from_der(&cert_with(&["localhost"])), Err(SvidError::NoUri));
        assert_eq!(
            spiffe_id_from_der(&cert_with(&["spiffe://keymesh/crypto-service", "spiffe://keymesh/app/x"])),
            Err(SvidError::SeveralUris(2))
        );
        assert_eq!(
            spiffe_id_from_der(&cert_with(&["spiffe://keymesh/app/x", "https://example.com/"])),
            Err(SvidError::SeveralUris(2))
        );
        for foreign in [
            "spiffe://other/crypto-service",
            "spiffe://keymesh/",
            "spiffe://keymesh//x",
            "spiffe://keymeshx/crypto-service",
            "https://keymesh/crypto-service",
            "spiffe://keymesh/a?b",
        ] {
            assert!(matches!(spiffe_id_from_der(&cert_with(&[foreign])), Err(SvidError::ForeignUri(_))), "{foreign}");
        }
        assert_eq!(spiffe_id_from_der(b"not a certificate"), Err(SvidError::Unparsable));
    }
}

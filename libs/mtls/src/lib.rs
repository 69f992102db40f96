//! Who is who on keymesh's wire, and nothing more: the four service names and their SPIFFE identities, an
//! identity's PEM material, where the services are, a lazily connecting mTLS channel that checks the
//! server's SPIFFE identity as well as the CA, and the servers' TLS configuration that admits only
//! X.509-SVIDs of the trust domain.
//!
//! It is its own crate so that the application SDK can speak to the mesh exactly as the services speak to
//! each other without compiling the services' floor (configuration, telemetry exporters, the development
//! CA, token verification).

mod acceptor;
mod channel;
mod identity;

use std::path::Path;

use zeroize::Zeroizing;

pub use acceptor::{check_identity, server_config};
pub use channel::{HTTP2_CONNECTION_WINDOW, HTTP2_STREAM_WINDOW, LiveClientIdentity, mtls_channel};
pub use identity::{ServiceName, SvidError, TRUST_DOMAIN, app_spiffe_id, spiffe_id_from_der};

/// Certificates or keys that could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The material is unusable (a bad CA certificate, a bad endpoint).
    #[error("TLS: {0}")]
    Invalid(String),
    /// tonic refused the TLS configuration.
    #[error(transparent)]
    Transport(#[from] tonic::transport::Error),
}

/// PEM material of one identity: the CA to trust, its certificate chain and its private key.
#[derive(Clone)]
pub struct TlsMaterial {
    /// CA certificate(s) to trust.
    pub ca_pem: String,
    /// Certificate chain.
    pub cert_pem: String,
    /// Private key (PKCS#8 PEM).
    pub key_pem: Zeroizing<String>,
    /// The files it was read from, when it was: a server watches them and takes renewed material.
    pub files: Option<TlsFiles>,
    /// What this material's channels present and trust now, shared by its clones: a renewal the server takes
    /// reaches the process's clients through it ([`TlsMaterial::renew_channels`]). Private, so material is made
    /// by the constructors, each with an identity of its own; change a clone's PEM fields and its channels
    /// would still present the original's.
    client_identity: LiveClientIdentity,
}

/// Where an identity's PEM files are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA bundle.
    pub ca_cert: std::path::PathBuf,
    /// The certificate chain.
    pub cert: std::path::PathBuf,
    /// The private key.
    pub key: std::path::PathBuf,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial").field("key_pem", &"<redacted>").finish_non_exhaustive()
    }
}

impl TlsMaterial {
    /// Material from PEM text: the CA bundle, the certificate chain and the private key.
    pub fn from_pem(ca_pem: String, cert_pem: String, key_pem: Zeroizing<String>, files: Option<TlsFiles>) -> Self {
        Self { ca_pem, cert_pem, key_pem, files, client_identity: LiveClientIdentity::default() }
    }

    /// From now on, the channels made from this material (and from its clones) present `renewed`'s certificate
    /// and trust its CA bundle at their next handshake. The caller has checked that `renewed` is this identity.
    pub fn renew_channels(&self, renewed: &TlsMaterial) -> Result<(), TlsError> {
        self.client_identity.replace(renewed)
    }

    /// The identity channels made from this material share.
    pub(crate) fn client_identity(&self) -> &LiveClientIdentity {
        &self.client_identity
    }

    /// Reads PEM files: the CA bundle, the certificate chain and the private key.
    pub fn from_files(ca_cert: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| {
            std::fs::read_to_string(p).map_err(|source| TlsError::Read { path: p.display().to_string(), source })
        };
        Ok(Self::from_pem(
            read(ca_cert)?,
            read(cert)?,
            Zeroizing::new(read(key)?),
            Some(TlsFiles { ca_cert: ca_cert.to_owned(), cert: cert.to_owned(), key: key.to_owned() }),
        ))
    }

    /// Reads the files again.
    pub fn reread(files: &TlsFiles) -> Result<Self, TlsError> {
        Self::from_files(&files.ca_cert, &files.cert, &files.key)
    }

    /// The SPIFFE id of the leaf certificate.
    pub fn spiffe_id(&self) -> Result<String, TlsError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes())
            .map_err(|e| TlsError::Invalid(format!("certificate PEM: {e}")))?;
        spiffe_id_from_der(&pem.contents).map_err(|e| TlsError::Invalid(e.to_string()))
    }

    /// The leaf certificate's serial number, in hex (what a peer sees).
    pub fn serial(&self) -> Result<String, TlsError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes())
            .map_err(|e| TlsError::Invalid(format!("certificate PEM: {e}")))?;
        let cert = pem.parse_x509().map_err(|e| TlsError::Invalid(format!("certificate: {e}")))?;
        Ok(cert.raw_serial_as_string())
    }

    /// When the leaf certificate (the first of the chain) expires, in seconds since the Unix epoch.
    pub fn not_after(&self) -> Result<i64, TlsError> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes())
            .map_err(|e| TlsError::Invalid(format!("certificate PEM: {e}")))?;
        let cert = pem.parse_x509().map_err(|e| TlsError::Invalid(format!("certificate: {e}")))?;
        Ok(cert.validity().not_after.timestamp())
    }
}

/// host:port of every service.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// key-service.
    pub key_service: String,
    /// crypto-service.
    pub crypto_service: String,
    /// token-service.
    pub token_service: String,
    /// audit-service.
    pub audit_service: String,
}

impl Endpoints {
    /// The endpoint of `service`.
    pub fn of(&self, service: ServiceName) -> &str {
        match service {
            ServiceName::KeyService => &self.key_service,
            ServiceName::CryptoService => &self.crypto_service,
            ServiceName::TokenService => &self.token_service,
            ServiceName::AuditService => &self.audit_service,
        }
    }
}

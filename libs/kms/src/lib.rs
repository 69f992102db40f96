//! Key-encryption-key (KEK) backends. A DEK is only ever stored wrapped by a KEK that lives in a backend
//! (the embedded local backend here; cloud KMSs and Vault Transit behind the same trait), and every wrap is
//! bound to the DEK's tenant, key, version and algorithm through the backend's own AAD mechanism, so a
//! wrapped blob cannot be moved to another key.

pub mod aws;
pub mod azure;
pub mod config;
pub mod conformance;
mod error;
pub mod gcp;
pub mod health_watch;
pub mod keyring;
pub mod local;
pub mod resilient;
pub mod vault;

pub use aws::{AwsKms, AwsKmsConfig};
pub use azure::{AzureKms, AzureKmsConfig};
pub use config::KmsConfig;
pub use error::KmsError;
pub use gcp::{GcpKms, GcpKmsConfig};
pub use health_watch::HealthWatch;
pub use keyring::{Keyring, Keyrings, WrapSet};
pub use local::{LocalKms, LocalKmsConfig, MasterKeySource};
pub use resilient::{ResiliencePolicy, Resilient};
pub use vault::{VaultAuth, VaultKms, VaultKmsConfig};

use keymesh_crypto::SecretKey;

/// A DEK wrapped by a backend's KEK, as stored in the database.
#[derive(Clone, PartialEq, Eq)]
pub struct WrappedKey {
    /// The keyring member that wrapped it: its configured name (e.g. "local", "vault-eu").
    pub backend: String,
    /// Which KEK (and KEK version) of that backend.
    pub kek_id: String,
    /// The backend's opaque wrapped bytes.
    pub ciphertext: Vec<u8>,
}

impl std::fmt::Debug for WrappedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Wrapped material is not secret, but it is noise in logs.
        f.debug_struct("WrappedKey")
            .field("backend", &self.backend)
            .field("kek_id", &self.kek_id)
            .field("len", &self.ciphertext.len())
            .finish()
    }
}

/// What a DEK is bound to. Encoded into the backend's AAD / encryption context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrapContext {
    /// Tenant that owns the key.
    pub tenant_id: String,
    /// Key id.
    pub key_id: String,
    /// Key version.
    pub version: u32,
    /// Algorithm name of the version.
    pub algorithm: String,
}

impl WrapContext {
    /// Canonical byte encoding for AAD-based backends: unambiguous because every field is length-prefixed.
    pub fn to_aad(&self) -> Vec<u8> {
        let mut out = b"keymesh-dek-v1".to_vec();
        for field in [self.tenant_id.as_bytes(), self.key_id.as_bytes(), self.algorithm.as_bytes()] {
            out.extend_from_slice(&(field.len() as u32).to_be_bytes());
            out.extend_from_slice(field);
        }
        out.extend_from_slice(&self.version.to_be_bytes());
        out
    }
}

/// A description of a backend for health output and `keymesh kms check`. Never holds secrets.
#[derive(Debug, Clone)]
pub struct BackendDescription {
    /// Backend name.
    pub backend: String,
    /// The KEK in use.
    pub kek_id: String,
    /// Human-readable detail, e.g. the KDF.
    pub detail: String,
}

/// A KEK backend. The KEK never leaves it: callers hand DEKs in to be wrapped and get DEKs back.
#[async_trait::async_trait]
pub trait KeyEncryptionBackend: Send + Sync {
    /// Wraps a DEK, bound to `context`.
    async fn wrap(&self, dek: &SecretKey, context: &WrapContext) -> Result<WrappedKey, KmsError>;
    /// Unwraps a DEK; fails if `context` differs from the one used to wrap.
    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext) -> Result<SecretKey, KmsError>;
    /// The backend's type (`local`, `vault`, `aws`, `gcp`, `azure`): a bounded label for metrics and spans,
    /// where `describe` names the configured member.
    fn kind(&self) -> &'static str;
    /// Describes the backend.
    fn describe(&self) -> BackendDescription;
    /// Whether `wrapped` is under the backend's current KEK (version), so a re-wrap can leave it alone.
    fn is_current(&self, wrapped: &WrappedKey) -> bool {
        wrapped.kek_id == self.describe().kek_id
    }
    /// Checks that the backend can serve (a wrap/unwrap probe for remote backends).
    async fn health(&self) -> Result<(), KmsError>;
}

/// The health check of a remote backend: wraps a fixed probe key and unwraps it again, which exercises the
/// network path, the credentials and the key's permissions in one go.
pub(crate) async fn probe(backend: &dyn KeyEncryptionBackend) -> Result<(), KmsError> {
    let probe = SecretKey::from_bytes(vec![0x5a; 32]);
    let context = WrapContext {
        tenant_id: "keymesh-health".into(),
        key_id: "probe".into(),
        version: 1,
        algorithm: "AES-256-GCM".into(),
    };
    let wrapped = backend.wrap(&probe, &context).await?;
    let back = backend.unwrap(&wrapped, &context).await?;
    if back.expose_secret() != probe.expose_secret() {
        return Err(KmsError::Unavailable {
            backend: backend.describe().backend,
            reason: "the health probe unwrapped to different bytes".into(),
        });
    }
    Ok(())
}

/// An error and its causes on one line: the SDKs' top-level messages alone rarely say what failed.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        out.push_str(": ");
        out.push_str(&cause.to_string());
        source = cause.source();
    }
    out
}

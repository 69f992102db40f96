/// Failures of a KEK backend.
#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    /// The wrapped blob does not open under this KEK and context: tampered, moved to another key, or
    /// wrapped by another KEK.
    #[error("the wrapped key does not unwrap under backend {backend} (wrong KEK or context)")]
    UnwrapFailed {
        /// Backend name.
        backend: String,
    },
    /// The blob names a backend or KEK this instance does not hold.
    #[error("wrapped key belongs to backend {backend} KEK {kek_id}, which is not configured")]
    UnknownKek {
        /// Backend the blob names.
        backend: String,
        /// KEK the blob names.
        kek_id: String,
    },
    /// The master secret is malformed or does not match the data directory.
    #[error("master key: {0}")]
    MasterKey(String),
    /// The backend cannot be reached or refused to serve.
    #[error("KMS backend {backend} is unavailable: {reason}")]
    Unavailable {
        /// Backend name.
        backend: String,
        /// What went wrong, without secrets.
        reason: String,
    },
    /// The backend answered but will not use the KEK: it is disabled, scheduled for deletion or deleted, or
    /// the credentials may not use it. Retrying does not help; an operator must act at the provider.
    #[error("KMS backend {backend} refuses to use its key: {reason}")]
    KeyUnusable {
        /// Backend name.
        backend: String,
        /// The provider's reason, without secrets, and what to check.
        reason: String,
    },
    /// A local file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The KMS configuration is inconsistent.
    #[error("KMS configuration: {reason}")]
    Config {
        /// What is wrong.
        reason: String,
    },
    /// A primitive failed.
    #[error(transparent)]
    Crypto(#[from] keymesh_crypto::CryptoError),
}

impl KmsError {
    /// How much an operator learns from this error: when several backends fail, the keyring reports the
    /// highest-ranked failure (an outage or a refusal says what to fix; a wrap that does not open says less).
    pub fn rank(&self) -> u8 {
        match self {
            Self::UnknownKek { .. } => 0,
            Self::UnwrapFailed { .. } | Self::Crypto(_) => 1,
            Self::MasterKey(_) | Self::Io { .. } | Self::Config { .. } => 2,
            Self::Unavailable { .. } | Self::KeyUnusable { .. } => 3,
        }
    }
}

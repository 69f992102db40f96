/// Errors of the primitives. Decryption failures are deliberately opaque: one variant, no detail, so a
/// caller cannot learn which check failed (padding-oracle and key-probing defences).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CryptoError {
    /// Authentication, commitment or format check failed while opening a ciphertext.
    #[error("decryption failed")]
    DecryptionFailed,
    /// The ciphertext was made under a different key than the request names (the one documented,
    /// non-opaque decrypt error: it helps developers and reveals nothing secret).
    #[error("context mismatch: the ciphertext was made under key {actual:?}, the request names {expected:?}")]
    ContextMismatch {
        /// What the request named.
        expected: String,
        /// What the ciphertext header names.
        actual: String,
    },
    /// Key material of the wrong size for the algorithm.
    #[error("{algorithm} needs a {expected}-byte key, got {actual} bytes")]
    InvalidKeyLength {
        /// The algorithm's name.
        algorithm: &'static str,
        /// Required length.
        expected: usize,
        /// Given length.
        actual: usize,
    },
    /// Input too large for the algorithm or the format.
    #[error("{what} is too large: {size} bytes, the limit is {limit}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A parameter outside the range the format allows.
    #[error("{what} {value} is outside {min}..={max}")]
    OutOfRange {
        /// The parameter.
        what: &'static str,
        /// Its value.
        value: usize,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
    },
    /// Key material that does not fit the algorithm (wrong key type, curve or size); says what was found,
    /// never the material.
    #[error("key material does not fit {algorithm}: {reason}")]
    InvalidKey {
        /// The algorithm's name.
        algorithm: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A request the algorithm cannot serve as asked (e.g. a digest for Ed25519, or a digest of the wrong
    /// length).
    #[error("{0}")]
    InvalidInput(String),
    /// The algorithm is known but not available in this build or mode.
    #[error("algorithm {0} is not supported here")]
    Unsupported(String),
    /// The underlying library failed in a way that is not the caller's fault.
    #[error("cryptographic library failure")]
    Library,
}

impl From<openssl::error::ErrorStack> for CryptoError {
    fn from(_: openssl::error::ErrorStack) -> Self {
        // OpenSSL's error text can describe internal state; never pass it on.
        CryptoError::Library
    }
}

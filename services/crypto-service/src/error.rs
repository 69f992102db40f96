//! crypto-service's errors and their one mapping to gRPC status. Every decrypt failure is the same opaque
//! "decryption failed", except the documented context mismatch.

use tonic::Status;

/// When a caller refused for key-service's absence may try again (a restart or a failover takes about this).
const KEY_SERVICE_RETRY_AFTER: std::time::Duration = std::time::Duration::from_secs(1);

/// What can go wrong in crypto-service.
#[derive(Debug, thiserror::Error)]
pub enum CryptoServiceError {
    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Opaque: malformed, tampered, wrong key, wrong AAD, unknown key.
    #[error("decryption failed")]
    DecryptionFailed,
    /// The ciphertext was made under another key than the request names.
    #[error("{0}")]
    ContextMismatch(String),
    /// The key does not exist in the caller's tenant.
    #[error("key {0:?} not found")]
    KeyNotFound(String),
    /// key-service refused the caller (a policy's denial).
    #[error("{0}")]
    Denied(String),
    /// key-service refused for a reason the caller can act on (disabled key, retired version, …).
    #[error("{0}")]
    FailedPrecondition(String),
    /// key-service could not be reached.
    #[error("key-service is unavailable: {0}")]
    KeyServiceUnavailable(String),
    /// FIPS mode or a policy refused.
    #[error(transparent)]
    Policy(#[from] keymesh_policy::PolicyError),
    /// Anything that is not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<keymesh_proto::identifiers::InvalidIdentifier> for CryptoServiceError {
    fn from(e: keymesh_proto::identifiers::InvalidIdentifier) -> Self {
        Self::InvalidArgument { field: e.field, reason: e.rule.to_owned() }
    }
}

impl From<CryptoServiceError> for Status {
    fn from(e: CryptoServiceError) -> Self {
        match &e {
            CryptoServiceError::InvalidArgument { .. }
            | CryptoServiceError::DecryptionFailed
            | CryptoServiceError::ContextMismatch(_) => Status::invalid_argument(e.to_string()),
            CryptoServiceError::KeyNotFound(_) => Status::not_found(e.to_string()),
            CryptoServiceError::Denied(_) => Status::permission_denied(e.to_string()),
            CryptoServiceError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            // With retry advice, as the rate limits give theirs: key-service restarts within seconds.
            CryptoServiceError::KeyServiceUnavailable(_) => {
                keymesh_mesh::retry_status(tonic::Code::Unavailable, e.to_string(), KEY_SERVICE_RETRY_AFTER)
            }
            CryptoServiceError::Policy(keymesh_policy::PolicyError::Denied { .. }) => {
                Status::permission_denied(e.to_string())
            }
            CryptoServiceError::Policy(_) => Status::failed_precondition(e.to_string()),
            CryptoServiceError::Internal(_) => {
                tracing::error!(error = %e, "internal failure");
                Status::internal("internal error; see crypto-service logs")
            }
        }
    }
}

//! token-service's errors and their one mapping to gRPC status.

use tonic::Status;

/// What can go wrong in token-service.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Unknown client, wrong secret or disabled application: one message for all, so a caller cannot tell
    /// which.
    #[error("invalid client credentials")]
    InvalidClient,
    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The method or grant exists in the API but is not available yet.
    #[error("{0} is not implemented yet")]
    Unimplemented(&'static str),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] keymesh_store::StoreError),
    /// The KEK backend failed.
    #[error(transparent)]
    Kms(#[from] keymesh_kms::KmsError),
    /// Anything else that is not the caller's fault.
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Self {
        match &e {
            TokenError::InvalidClient => Status::unauthenticated(e.to_string()),
            TokenError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            TokenError::Unimplemented(_) => Status::unimplemented(e.to_string()),
            TokenError::Kms(keymesh_kms::KmsError::Unavailable { backend, .. }) => {
                tracing::error!(error = %e, "KMS backend unavailable");
                Status::unavailable(format!("KMS backend {backend} is unavailable; retry later"))
            }
            TokenError::Kms(keymesh_kms::KmsError::KeyUnusable { .. }) => {
                tracing::error!(error = %e, "KMS key unusable");
                Status::failed_precondition(e.to_string())
            }
            TokenError::Store(_) | TokenError::Kms(_) | TokenError::Internal(_) => {
                // Details go to the log, not to the caller.
                tracing::error!(error = %e, "internal failure");
                Status::internal("internal error; see token-service logs")
            }
        }
    }
}

//! key-service's errors and their one mapping to gRPC status.

use tonic::Status;

/// What can go wrong in key-service.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// No such key in the caller's tenant.
    #[error("key {0:?} not found")]
    KeyNotFound(String),
    /// A key id of another tenant. The caller is told exactly what an unknown id tells it (NOT_FOUND, the
    /// same words), so ids cannot be probed across tenants; the owner's audit trail records the attempt.
    #[error("key {key:?} not found")]
    OtherTenant {
        /// The id the caller gave.
        key: String,
        /// The tenant that owns it.
        owner: String,
    },
    /// No such version.
    #[error("key {key:?} has no version {version}")]
    VersionNotFound {
        /// The key.
        key: String,
        /// The version.
        version: u32,
    },
    /// The name is taken in this tenant.
    #[error("a key named {0:?} already exists in your tenant")]
    AlreadyExists(String),
    /// The key or version is in a state that does not allow the operation.
    #[error("{0}")]
    FailedPrecondition(String),
    /// The method, purpose or algorithm is part of the API but not available yet.
    #[error("{0} is not implemented yet")]
    Unimplemented(String),
    /// Storage failed.
    #[error(transparent)]
    Store(keymesh_store::StoreError),
    /// The KEK backend failed.
    #[error(transparent)]
    Kms(#[from] keymesh_kms::KmsError),
    /// A primitive failed.
    #[error(transparent)]
    Crypto(#[from] keymesh_crypto::CryptoError),
    /// FIPS mode or a policy refused.
    #[error(transparent)]
    Policy(#[from] keymesh_policy::PolicyError),
}

impl From<keymesh_proto::identifiers::InvalidIdentifier> for KeyError {
    fn from(e: keymesh_proto::identifiers::InvalidIdentifier) -> Self {
        Self::InvalidArgument { field: e.field, reason: e.rule.to_owned() }
    }
}

impl From<keymesh_store::StoreError> for KeyError {
    fn from(e: keymesh_store::StoreError) -> Self {
        Self::Store(e)
    }
}

impl From<KeyError> for Status {
    fn from(e: KeyError) -> Self {
        match &e {
            KeyError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            KeyError::KeyNotFound(_) | KeyError::OtherTenant { .. } | KeyError::VersionNotFound { .. } => {
                Status::not_found(e.to_string())
            }
            KeyError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            KeyError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            KeyError::Unimplemented(_) => Status::unimplemented(e.to_string()),
            KeyError::Policy(keymesh_policy::PolicyError::Denied { .. }) => Status::permission_denied(e.to_string()),
            KeyError::Policy(keymesh_policy::PolicyError::AlgorithmRefused(_)) => {
                Status::failed_precondition(e.to_string())
            }
            KeyError::Policy(keymesh_policy::PolicyError::Invalid(_)) => {
                Status::invalid_argument(format!("policy: {e}"))
            }
            KeyError::Kms(keymesh_kms::KmsError::Unavailable { backend, .. }) => {
                tracing::error!(error = %e, "KMS backend unavailable");
                Status::unavailable(format!("KMS backend {backend} is unavailable; retry later"))
            }
            KeyError::Kms(keymesh_kms::KmsError::KeyUnusable { .. }) => {
                tracing::error!(error = %e, "KMS key unusable");
                // The provider's reason says what to fix (a disabled key, a missing grant); it holds no secret.
                Status::failed_precondition(e.to_string())
            }
            KeyError::Store(keymesh_store::StoreError::Unavailable(_)) => {
                tracing::warn!(error = %e, "database unavailable");
                Status::unavailable("the database is unavailable; retry later")
            }
            KeyError::Store(_) | KeyError::Kms(_) | KeyError::Crypto(_) => {
                tracing::error!(error = %e, "internal failure");
                Status::internal("internal error; see key-service logs")
            }
        }
    }
}

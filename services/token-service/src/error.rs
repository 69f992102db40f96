//! token-service's errors and their one mapping to gRPC status.

use keymesh_mesh::auth::AuthError;
use tonic::Status;

/// What can go wrong in token-service.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// Unknown client, wrong secret or disabled application: one message for all, so a caller cannot tell
    /// which.
    #[error("invalid client credentials")]
    InvalidClient,
    /// A refresh token that is unknown, expired, revoked or already spent; one message for the first three.
    #[error("{0}")]
    InvalidGrant(&'static str),
    /// A token exchange failed.
    #[error(transparent)]
    Exchange(#[from] crate::exchange::ExchangeError),
    /// The caller's access token was refused.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The caller is authenticated but may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// A request field is missing or malformed.
    #[error("{field}: {reason}")]
    InvalidArgument {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// No such tenant or application.
    #[error("{0}")]
    NotFound(String),
    /// An application of a tenant the caller may not act in. Answered exactly as an unknown client id, so ids
    /// cannot be probed across tenants; the owner's audit trail records the attempt.
    #[error("no application {client_id:?}")]
    ForeignApplication {
        /// The id the caller gave.
        client_id: String,
        /// The tenant that owns it.
        owner: String,
    },
    /// What the caller would create exists already and is not the caller's to take.
    #[error("{0}")]
    AlreadyExists(String),
    /// A rate limit refused the call.
    #[error(transparent)]
    Limited(#[from] keymesh_limits::Exceeded),
    /// A concurrent change won; the caller may retry.
    #[error("{0}")]
    Aborted(String),
    /// The request is valid but the state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
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

impl From<keymesh_proto::identifiers::InvalidIdentifier> for TokenError {
    fn from(e: keymesh_proto::identifiers::InvalidIdentifier) -> Self {
        Self::InvalidArgument { field: e.field, reason: e.rule.to_owned() }
    }
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Self {
        let e = match e {
            TokenError::Auth(auth) => return auth.into(),
            e => e,
        };
        match &e {
            TokenError::InvalidClient | TokenError::InvalidGrant(_) => Status::unauthenticated(e.to_string()),
            TokenError::Exchange(crate::exchange::ExchangeError::Refused(_)) => Status::unauthenticated(e.to_string()),
            TokenError::Exchange(crate::exchange::ExchangeError::NotConfigured) => {
                Status::failed_precondition(e.to_string())
            }
            TokenError::Exchange(crate::exchange::ExchangeError::Unavailable { .. }) => {
                tracing::warn!(error = %e, "token exchange issuer unreachable");
                Status::unavailable(e.to_string())
            }
            TokenError::Auth(_) => Status::unauthenticated(e.to_string()),
            TokenError::PermissionDenied(_) => Status::permission_denied(e.to_string()),
            TokenError::InvalidArgument { .. } => Status::invalid_argument(e.to_string()),
            TokenError::NotFound(_) | TokenError::ForeignApplication { .. } => Status::not_found(e.to_string()),
            TokenError::FailedPrecondition(_) => Status::failed_precondition(e.to_string()),
            TokenError::Aborted(_) => Status::aborted(e.to_string()),
            TokenError::AlreadyExists(_) => Status::already_exists(e.to_string()),
            TokenError::Limited(exceeded) => exceeded.clone().into(),
            TokenError::Store(keymesh_store::StoreError::AlreadyExists { .. }) => Status::already_exists(e.to_string()),
            TokenError::Kms(keymesh_kms::KmsError::Unavailable { backend, .. }) => {
                tracing::error!(error = %e, "KMS backend unavailable");
                Status::unavailable(format!("KMS backend {backend} is unavailable; retry later"))
            }
            TokenError::Kms(keymesh_kms::KmsError::KeyUnusable { .. }) => {
                tracing::error!(error = %e, "KMS key unusable");
                Status::failed_precondition(e.to_string())
            }
            TokenError::Store(keymesh_store::StoreError::Unavailable(_)) => {
                tracing::warn!(error = %e, "database unavailable");
                Status::unavailable("the database is unavailable; retry later")
            }
            TokenError::Store(_) | TokenError::Kms(_) | TokenError::Internal(_) => {
                // Details go to the log, not to the caller.
                tracing::error!(error = %e, "internal failure");
                Status::internal("internal error; see token-service logs")
            }
        }
    }
}

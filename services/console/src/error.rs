//! What a page can fail with, and the one place a failure becomes an HTTP response. A refusal by the mesh keeps its
//! meaning (NOT_FOUND is 404, PERMISSION_DENIED 403, a bad field 422 with the service's message); an expired or
//! revoked token sends the browser to sign in again; anything else is a 502 that says the mesh failed, never the
//! details of a secret.

use axum::{
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};

use crate::views;

/// Marks a response whose session the mesh no longer accepts, for the guard to end it.
#[derive(Clone, Copy, Debug)]
pub struct SignInAgain;

/// A page's failure.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Not there, or not this tenant's (the two are not told apart).
    #[error("not found")]
    NotFound,
    /// The signed-in person's roles do not allow it.
    #[error("{0}")]
    Forbidden(String),
    /// A request the console refuses before calling the mesh (a missing or malformed field).
    #[error("{0}")]
    Invalid(String),
    /// The session's keymesh token is no longer accepted: sign in again.
    #[error("sign in again")]
    SignInAgain,
    /// The mesh refused or failed.
    #[error("{}: {}", .0.code(), .0.message())]
    Mesh(#[from] tonic::Status),
    /// The console itself failed.
    #[error("{0}")]
    Internal(String),
}

impl From<keymesh_client::ClientError> for PageError {
    fn from(e: keymesh_client::ClientError) -> Self {
        match e {
            keymesh_client::ClientError::Status(status) => Self::Mesh(status),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl PageError {
    /// The HTTP status and the message shown; `None` for a failure that redirects instead.
    pub fn status_and_message(&self) -> Option<(StatusCode, String)> {
        use tonic::Code;
        Some(match self {
            Self::NotFound => (StatusCode::NOT_FOUND, "Not found.".into()),
            Self::Forbidden(m) => (StatusCode::FORBIDDEN, m.clone()),
            Self::Invalid(m) => (StatusCode::UNPROCESSABLE_ENTITY, m.clone()),
            Self::SignInAgain => return None,
            Self::Mesh(status) => match status.code() {
                Code::Unauthenticated => return None,
                Code::NotFound => (StatusCode::NOT_FOUND, "Not found.".into()),
                Code::PermissionDenied => (StatusCode::FORBIDDEN, status.message().to_owned()),
                Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                    (StatusCode::UNPROCESSABLE_ENTITY, status.message().to_owned())
                }
                Code::AlreadyExists | Code::Aborted => (StatusCode::CONFLICT, status.message().to_owned()),
                Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, status.message().to_owned()),
                code => (StatusCode::BAD_GATEWAY, format!("the mesh did not answer ({code:?}); try again")),
            },
            Self::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "The console failed; see its log.".into()),
        })
    }
}

impl IntoResponse for PageError {
    fn into_response(self) -> Response {
        if let Self::Internal(reason) = &self {
            tracing::error!(%reason, "console failure");
        }
        match self.status_and_message() {
            Some((status, message)) => (status, views::error_page(status, &message)).into_response(),
            None => {
                let mut response = Redirect::to("/login?expired=1").into_response();
                response.extensions_mut().insert(SignInAgain);
                response
            }
        }
    }
}

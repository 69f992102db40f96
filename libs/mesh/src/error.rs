use std::net::SocketAddr;

/// Failures while starting or running the shared machinery.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    /// Configuration is invalid; the message names the field.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The listen address could not be bound (taken port, no permission, bad interface).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Certificates or keys could not be read, generated or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// Telemetry could not be set up.
    #[error("telemetry: {0}")]
    Telemetry(String),
}

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> MeshError + '_ {
    move |source| MeshError::Io { path: path.display().to_string(), source }
}

impl From<keymesh_mtls::TlsError> for MeshError {
    fn from(e: keymesh_mtls::TlsError) -> Self {
        match e {
            keymesh_mtls::TlsError::Read { path, source } => Self::Io { path, source },
            keymesh_mtls::TlsError::Invalid(reason) => Self::Tls(reason),
            keymesh_mtls::TlsError::Transport(e) => Self::Serve(e),
        }
    }
}

/// A status that says when to retry: a `google.rpc.RetryInfo` detail, and a `retry-after` header (whole
/// seconds, at least 1) for clients without google.rpc details support.
pub fn retry_status(code: tonic::Code, message: String, retry_after: std::time::Duration) -> tonic::Status {
    use tonic_types::{ErrorDetails, StatusExt};
    let details = ErrorDetails::with_retry_info(Some(retry_after));
    let mut status = tonic::Status::with_error_details(code, message, details);
    let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
    if let Ok(value) = seconds.max(1).to_string().parse() {
        status.metadata_mut().insert("retry-after", value);
    }
    status
}

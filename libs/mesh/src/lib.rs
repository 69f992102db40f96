//! What every keymesh service shares, so that a service binary is only wiring: configuration from a file
//! and `KEYMESH_*` variables, the development PKI, rustls mTLS for servers and clients, the caller's SPIFFE
//! identity, access-token verification, telemetry with W3C trace-context propagation, and graceful
//! shutdown.

pub mod auth;
pub mod client;
pub mod config;
mod error;
pub mod identity;
pub mod pki;
pub mod readiness;
pub mod request_id;
pub mod rpc_telemetry;
pub mod run;
pub mod server;
pub mod shedding;
pub mod telemetry;

pub use error::{MeshError, retry_status};

/// Every service (and the CLI) allocates with jemalloc, configured in `.cargo/config.toml` to give memory back
/// once a burst is over: glibc's malloc (and mimalloc) kept the 25 MiB a storm of 1,000 connections took after
/// they closed (the chaos suite's connection drill).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
pub use identity::{PeerIdentity, ServiceName};

/// Installs the process-wide rustls crypto provider: aws-lc-rs, whose default key exchange prefers the hybrid
/// X25519MLKEM768 (X25519 with ML-KEM-768, the group browsers and Cloudflare use) and falls back to X25519, so
/// every mesh hop between keymesh services resists harvest-now-decrypt-later while classical clients still
/// connect. Every binary and test calls this first: with more than one provider compiled in, rustls refuses
/// to guess.
pub fn install_crypto_provider() {
    // Err means one is installed already, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

//! key-service's pieces as a library, so the binary (`main.rs`) only wires them together and benchmarks
//! can measure them directly.

pub mod change_poll;
pub mod changes;
pub mod config;
pub mod convert;
pub mod error;
pub mod key_store;
pub mod lifecycle;
pub mod maintenance;
pub mod metrics;
pub mod record_cache;
pub mod rewrap;
pub mod rpc;

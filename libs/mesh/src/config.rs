//! Configuration in two stages: a raw serde struct read from a TOML file and overlaid with `KEYMESH_*`
//! environment variables, then validated into typed parameters with errors that name the field.
//!
//! One file can configure the whole mesh (each service reads the sections it needs), which is how the
//! embedded default works. Environment variables map onto fields with `__` between levels:
//! `KEYMESH_DATA_DIR`, `KEYMESH_ENDPOINTS__KEY_SERVICE`, `KEYMESH_DATABASE__URL`, …
//! Secrets are never config values: `KEYMESH_MASTER_KEY` is read by the KMS backend directly.
//!
//! This module is the floor of that format: it reads the file and the variables into a [`ConfigSource`],
//! deserializes any one section of it with errors that name the field, and owns the transport settings
//! (addresses, certificates, telemetry, shutdown, token verification). Every other section belongs to the
//! crate that uses it (KMS to keymesh-kms, audit to keymesh-audit, the DEK cache to crypto-service, …);
//! keymesh-config composes them into the one file.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, de::DeserializeOwned};

use crate::ServiceName;

/// Default Prometheus endpoints of the embedded mesh: beside each service's port, 7401 → 9401.
pub const DEFAULT_METRICS_ADDRS: [(ServiceName, &str); 4] = [
    (ServiceName::KeyService, "127.0.0.1:9401"),
    (ServiceName::CryptoService, "127.0.0.1:9402"),
    (ServiceName::TokenService, "127.0.0.1:9403"),
    (ServiceName::AuditService, "127.0.0.1:9404"),
];

/// Environment variables with the prefix that are not config fields (`KEYMESH_HOME`: the SDKs' and the CLI's
/// `~/.keymesh`).
const RESERVED_ENV: &[&str] = &["KEYMESH_CONFIG", "KEYMESH_MASTER_KEY", "KEYMESH_LOG", "KEYMESH_HOME"];

/// Default loopback endpoints of the embedded mesh.
pub const DEFAULT_ENDPOINTS: [(ServiceName, &str); 4] = [
    (ServiceName::KeyService, "127.0.0.1:7401"),
    (ServiceName::CryptoService, "127.0.0.1:7402"),
    (ServiceName::TokenService, "127.0.0.1:7403"),
    (ServiceName::AuditService, "127.0.0.1:7404"),
];

/// A configuration problem, always naming the field (or file) at fault. One line, no secrets.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {reason}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The file is not valid TOML.
    #[error("config file {path} is not valid TOML (line {line}): {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// 1-based line.
        line: usize,
        /// Parser message.
        reason: String,
    },
    /// A field has the wrong type or is unknown.
    #[error("config field `{field}`: {reason}")]
    Field {
        /// Dotted path of the field.
        field: String,
        /// What is wrong.
        reason: String,
    },
    /// A field is well-typed but its value is not acceptable.
    #[error("config field `{field}` is invalid: {reason}")]
    Invalid {
        /// Dotted path of the field.
        field: &'static str,
        /// What is wrong and what would be right.
        reason: String,
    },
}

/// The file and the `KEYMESH_*` variables, merged (variables win), before any section is read.
#[derive(Default)]
pub struct ConfigSource {
    table: toml::Table,
}

impl ConfigSource {
    /// Reads the file (if any) and overlays the `KEYMESH_*` variables in `env`.
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| ConfigError::Read { path: path.display().to_string(), reason: e.to_string() })?;
                text.parse::<toml::Table>().map_err(|e| ConfigError::Syntax {
                    path: path.display().to_string(),
                    line: e.span().map(|s| text[..s.start.min(text.len())].lines().count().max(1)).unwrap_or(1),
                    reason: e.message().to_owned(),
                })?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("KEYMESH_") else { continue };
            // `KEYMESH_MASTER_KEY_*` hold master secrets of further local KMS backends (`master_key_env`).
            if RESERVED_ENV.contains(&name.as_str()) || rest.starts_with("TEST_") || rest.starts_with("MASTER_KEY_") {
                continue;
            }
            let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
            insert_path(&mut table, &path, env_value(value))
                .map_err(|reason| ConfigError::Field { field: path.join("."), reason })?;
        }
        Ok(Self { table })
    }

    /// The top-level keys present.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.table.keys().map(String::as_str)
    }

    /// The section `key` (its default when absent), with errors naming `key.<field>`.
    pub fn section<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, ConfigError> {
        match self.table.get(key) {
            None => Ok(T::default()),
            Some(value) => deserialize_value(value.clone(), key),
        }
    }

    /// The part of the file under the top-level `keys` only (what one owner reads).
    pub fn only(&self, keys: &[&str]) -> ConfigSource {
        let table = self
            .table
            .iter()
            .filter(|(k, _)| keys.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        ConfigSource { table }
    }

    /// The top-level fields `keys` as one struct (fields a section's owner keeps at the top of the file).
    pub fn top_level<T: DeserializeOwned>(&self, keys: &[&str]) -> Result<T, ConfigError> {
        deserialize_value(toml::Value::Table(self.only(keys).table), "")
    }
}

/// Deserializes a raw part of the file (a section, or what an owner kept of one) with errors naming the
/// field under `prefix`.
pub fn deserialize_value<T: DeserializeOwned>(value: toml::Value, prefix: &str) -> Result<T, ConfigError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let field = match (prefix, path.as_str()) {
            ("", ".") => "(top level)".to_owned(),
            ("", path) => path.to_owned(),
            (prefix, ".") => prefix.to_owned(),
            (prefix, path) => format!("{prefix}.{path}"),
        };
        ConfigError::Field { field, reason: e.inner().to_string() }
    })
}

/// A number within `range`, or `default` when unset; otherwise an error naming `field`.
pub fn bounded(
    field: &'static str,
    value: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConfigError> {
    let value = value.unwrap_or(default);
    if range.contains(&value) {
        Ok(value)
    } else {
        Err(ConfigError::Invalid { field, reason: format!("{value} is outside {}..={}", range.start(), range.end()) })
    }
}

/// [`bounded`] as a number of seconds.
pub fn bounded_seconds(
    field: &'static str,
    value: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    bounded(field, value, default, range).map(Duration::from_secs)
}

/// [`bounded`] as a number of milliseconds.
pub fn bounded_millis(
    field: &'static str,
    value: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<Duration, ConfigError> {
    bounded(field, value, default, range).map(Duration::from_millis)
}

/// The transport settings at the top of the file, as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTransport {
    /// Where SQLite files, generated certificates, the master key and bootstrap credentials live.
    pub data_dir: Option<PathBuf>,
    /// Address this service binds; defaults to its own entry in `endpoints`.
    pub listen_addr: Option<String>,
    /// Where each service is reached (host:port).
    #[serde(default)]
    pub endpoints: RawEndpoints,
    /// Certificates; when absent a development CA and certificates are generated under `data_dir/pki`.
    pub tls: Option<RawTls>,
    /// Logging and tracing.
    #[serde(default)]
    pub telemetry: RawTelemetry,
    /// Seconds to let in-flight requests finish after SIGTERM.
    pub shutdown_grace_seconds: Option<u64>,
    /// What the gRPC server takes on at once.
    #[serde(default)]
    pub server: RawServer,
}

impl RawTransport {
    /// The top-level keys it owns.
    pub const KEYS: &[&str] =
        &["data_dir", "listen_addr", "endpoints", "tls", "telemetry", "shutdown_grace_seconds", "server"];
}

/// `[server]`: connection and call limits of this service's gRPC port.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawServer {
    /// Open connections, TLS handshakes included (default 4096); more are closed as soon as accepted.
    pub max_connections: Option<u64>,
    /// Seconds a client has to complete its TLS handshake (default 10); a connection still silent then is closed.
    pub handshake_timeout_seconds: Option<u64>,
    /// Seconds a connection may pass without a byte either way before it is closed (default 300). Mesh
    /// clients ping every 30 s, so only connections their client forgot are closed.
    pub idle_timeout_seconds: Option<u64>,
    /// Seconds after which a connection is asked to go away (GOAWAY) so the client reconnects, possibly to
    /// another replica; 0 (default) never.
    pub max_connection_age_seconds: Option<u64>,
    /// Calls handled at once (default 512).
    pub max_in_flight: Option<u64>,
    /// Calls waiting for a slot (default 512); more are refused at once with UNAVAILABLE and RetryInfo.
    pub max_queued: Option<u64>,
    /// Milliseconds a call may wait for a slot before it is refused (default 200).
    pub queue_timeout_ms: Option<u64>,
}

/// `[endpoints]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEndpoints {
    /// key-service.
    pub key_service: Option<String>,
    /// crypto-service.
    pub crypto_service: Option<String>,
    /// token-service.
    pub token_service: Option<String>,
    /// audit-service.
    pub audit_service: Option<String>,
}

/// `[tls]`: PEM files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    /// CA that signs every mesh and client certificate.
    pub ca_cert: PathBuf,
    /// This service's certificate chain.
    pub cert: PathBuf,
    /// This service's private key.
    pub key: PathBuf,
}

/// `[telemetry]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTelemetry {
    /// OTLP/gRPC collector, e.g. `http://127.0.0.1:4317`; unset disables export.
    pub otlp_endpoint: Option<String>,
    /// `text` (default) or `json`.
    pub log_format: Option<String>,
    /// tracing filter directive, e.g. `info` or `keymesh=debug`.
    pub log_level: Option<String>,
    /// `IP:port` of the plain-HTTP Prometheus endpoint (`/metrics`), or `off`.
    pub metrics_addr: Option<String>,
}

/// `[tokens]`: what every verifier of access tokens reads. token-service, which issues them, owns the rest
/// of the section (`issuance`), and reads it strictly.
#[derive(Debug, Default, Deserialize)]
pub struct RawTokens {
    /// `iss` of access tokens.
    pub issuer: Option<String>,
    /// `aud` of access tokens.
    pub audience: Option<String>,
    /// Clock skew tolerated when checking `exp`/`nbf`, in seconds (0..=300; default 30).
    pub clock_skew_seconds: Option<u64>,
    /// Longest a revoked token can still be accepted anywhere in the mesh, in seconds (2..=3600; default
    /// 30). Verifiers poll revocations three times per bound and refuse every token when they have not
    /// heard from token-service for a whole bound.
    pub revocation_bound_seconds: Option<u64>,
    /// The section's other fields: token-service's.
    #[serde(flatten)]
    pub issuance: toml::Table,
}

impl RawTokens {
    /// The fields verifiers read.
    pub const VERIFY_FIELDS: &[&str] = &["issuer", "audience", "clock_skew_seconds", "revocation_bound_seconds"];
}

/// Numbers and booleans in the environment are typed like TOML literals; everything else is a string.
fn env_value(value: &str) -> toml::Value {
    // Lists are written as TOML arrays: KEYMESH_KMS__SECONDARY='["aws-eu", "vault"]'.
    if value.trim_start().starts_with('[')
        && let Ok(mut table) = toml::from_str::<toml::Table>(&format!("v = {value}"))
        && let Some(list) = table.remove("v")
    {
        return list;
    }
    if let Ok(i) = value.parse::<i64>() {
        toml::Value::Integer(i)
    } else if let Ok(b) = value.parse::<bool>() {
        toml::Value::Boolean(b)
    } else {
        toml::Value::String(value.to_owned())
    }
}

fn insert_path(table: &mut toml::Table, path: &[String], value: toml::Value) -> Result<(), String> {
    match path {
        [] => Err("empty variable name".into()),
        [leaf] => {
            table.insert(leaf.clone(), value);
            Ok(())
        }
        [head, rest @ ..] => {
            let entry = table.entry(head.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(inner) => insert_path(inner, rest, value),
                _ => Err(format!("`{head}` is not a section")),
            }
        }
    }
}

/// Validated settings every service uses.
#[derive(Debug, Clone)]
pub struct MeshParams {
    /// Which service this process is.
    pub service: ServiceName,
    /// Data directory.
    pub data_dir: PathBuf,
    /// Address to bind.
    pub listen_addr: SocketAddr,
    /// host:port of every service.
    pub endpoints: Endpoints,
    /// Configured certificate files, or `None` for the generated development PKI.
    pub tls_files: Option<TlsFiles>,
    /// OTLP collector.
    pub otlp_endpoint: Option<String>,
    /// JSON logs instead of text.
    pub json_logs: bool,
    /// Log filter.
    pub log_level: String,
    /// Where `/metrics` is served (plain HTTP, loopback by default); None: not served.
    pub metrics_addr: Option<SocketAddr>,
    /// The gRPC server's limits and drain period.
    pub server: ServerSettings,
}

/// Validated `[server]` and `shutdown_grace_seconds`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerSettings {
    /// Drain period after a shutdown signal.
    pub shutdown_grace: Duration,
    /// Open connections, handshakes included.
    pub max_connections: usize,
    /// A connection that has not completed its TLS handshake after this long is closed.
    pub handshake_timeout: Duration,
    /// A connection without a byte either way for this long is closed.
    pub idle_timeout: Duration,
    /// Connections are asked to go away after this long; none: never.
    pub max_connection_age: Option<Duration>,
    /// Calls handled at once, waiting, and how long they may wait.
    pub capacity: crate::shedding::Capacity,
}

impl ServerSettings {
    /// What a service serves with when `[server]` sets nothing.
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_raw(&RawTransport::default())
    }

    fn from_raw(raw: &RawTransport) -> Result<Self, ConfigError> {
        let s = &raw.server;
        let age = bounded_seconds("server.max_connection_age_seconds", s.max_connection_age_seconds, 0, 0..=604_800)?;
        Ok(Self {
            shutdown_grace: Duration::from_secs(raw.shutdown_grace_seconds.unwrap_or(20)),
            max_connections: bounded("server.max_connections", s.max_connections, 4096, 1..=1_000_000)? as usize,
            handshake_timeout: bounded_seconds(
                "server.handshake_timeout_seconds",
                s.handshake_timeout_seconds,
                10,
                1..=300,
            )?,
            idle_timeout: bounded_seconds("server.idle_timeout_seconds", s.idle_timeout_seconds, 300, 1..=86_400)?,
            max_connection_age: (!age.is_zero()).then_some(age),
            capacity: crate::shedding::Capacity {
                max_in_flight: bounded("server.max_in_flight", s.max_in_flight, 512, 1..=100_000)? as usize,
                max_queued: bounded("server.max_queued", s.max_queued, 512, 0..=1_000_000)? as usize,
                queue_timeout: bounded_millis("server.queue_timeout_ms", s.queue_timeout_ms, 200, 1..=60_000)?,
            },
        })
    }
}

pub use keymesh_mtls::Endpoints;

/// Certificate files.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// CA bundle.
    pub ca_cert: PathBuf,
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// The default data directory when none is configured.
pub const DEFAULT_DATA_DIR: &str = ".keymesh";

/// What a client of the mesh (the CLI, the admin console) reads from the shared settings: where the services are,
/// the data directory, and how to log. Unlike [`MeshParams`] it needs no address to listen on, so endpoints that
/// are host names (a Kubernetes Service) are fine.
#[derive(Debug, Clone)]
pub struct ClientParams {
    /// Where state lives (the development PKI, the bootstrap credentials).
    pub data_dir: PathBuf,
    /// Where the services are.
    pub endpoints: Endpoints,
    /// Logs as JSON lines.
    pub json_logs: bool,
    /// The `EnvFilter` directive.
    pub log_level: String,
}

impl ClientParams {
    /// Validates the part of `raw` a client reads.
    pub fn from_raw(raw: &RawTransport) -> Result<Self, ConfigError> {
        let default_of = |s: ServiceName| {
            DEFAULT_ENDPOINTS.iter().find(|(n, _)| *n == s).map(|(_, e)| (*e).to_owned()).unwrap_or_default()
        };
        let endpoint = |field: &'static str, value: &Option<String>, s: ServiceName| -> Result<String, ConfigError> {
            let value = value.clone().unwrap_or_else(|| default_of(s));
            match value.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => Ok(value),
                _ => Err(ConfigError::Invalid { field, reason: format!("{value:?} is not host:port") }),
            }
        };
        let endpoints = Endpoints {
            key_service: endpoint("endpoints.key_service", &raw.endpoints.key_service, ServiceName::KeyService)?,
            crypto_service: endpoint(
                "endpoints.crypto_service",
                &raw.endpoints.crypto_service,
                ServiceName::CryptoService,
            )?,
            token_service: endpoint(
                "endpoints.token_service",
                &raw.endpoints.token_service,
                ServiceName::TokenService,
            )?,
            audit_service: endpoint(
                "endpoints.audit_service",
                &raw.endpoints.audit_service,
                ServiceName::AuditService,
            )?,
        };
        let data_dir = raw.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR));
        if data_dir.as_os_str().is_empty() {
            return Err(ConfigError::Invalid { field: "data_dir", reason: "must not be empty".into() });
        }
        let json_logs = match raw.telemetry.log_format.as_deref() {
            None | Some("text") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    field: "telemetry.log_format",
                    reason: format!("{other:?} is neither \"text\" nor \"json\""),
                });
            }
        };
        Ok(Self {
            data_dir,
            endpoints,
            json_logs,
            log_level: raw.telemetry.log_level.clone().unwrap_or_else(|| "info".into()),
        })
    }
}

impl MeshParams {
    /// Validates the shared part of `raw` for `service`.
    pub fn from_raw(service: ServiceName, raw: &RawTransport) -> Result<Self, ConfigError> {
        let ClientParams { data_dir, endpoints, json_logs, log_level } = ClientParams::from_raw(raw)?;
        let listen = raw.listen_addr.clone().unwrap_or_else(|| endpoints.of(service).to_owned());
        let listen_field = if raw.listen_addr.is_some() { "listen_addr" } else { service.endpoint_field() };
        let listen_addr: SocketAddr = listen.parse().map_err(|_| ConfigError::Invalid {
            field: listen_field,
            reason: format!("{listen:?} is not an IP:port to listen on (e.g. 0.0.0.0:7401)"),
        })?;
        if let Some(otlp) = &raw.telemetry.otlp_endpoint
            && !(otlp.starts_with("http://") || otlp.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                field: "telemetry.otlp_endpoint",
                reason: format!("{otlp:?} must be an http:// or https:// URL"),
            });
        }
        let metrics_addr = match raw.telemetry.metrics_addr.as_deref() {
            Some("off") => None,
            Some(addr) => Some(addr.parse::<SocketAddr>().map_err(|_| ConfigError::Invalid {
                field: "telemetry.metrics_addr",
                reason: format!("{addr:?} is neither an IP:port to listen on (e.g. 127.0.0.1:9401) nor \"off\""),
            })?),
            None => DEFAULT_METRICS_ADDRS.iter().find(|(s, _)| *s == service).and_then(|(_, a)| a.parse().ok()),
        };
        let server = ServerSettings::from_raw(raw)?;
        Ok(Self {
            service,
            data_dir,
            listen_addr,
            endpoints,
            tls_files: raw.tls.as_ref().map(|t| TlsFiles {
                ca_cert: t.ca_cert.clone(),
                cert: t.cert.clone(),
                key: t.key.clone(),
            }),
            otlp_endpoint: raw.telemetry.otlp_endpoint.clone(),
            metrics_addr,
            json_logs,
            log_level,
            server,
        })
    }
}

/// Validated `[tokens]` as verifiers use it.
#[derive(Debug, Clone)]
pub struct TokenParams {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// Tolerated clock skew.
    pub clock_skew: Duration,
    /// Longest a revoked token stays accepted.
    pub revocation_bound: Duration,
}

impl TokenParams {
    /// Validates the verifiers' part of `[tokens]`.
    pub fn from_raw(raw: &RawTokens) -> Result<Self, ConfigError> {
        let skew = raw.clock_skew_seconds.unwrap_or(30);
        if skew > 300 {
            return Err(ConfigError::Invalid {
                field: "tokens.clock_skew_seconds",
                reason: format!("{skew} is over 300"),
            });
        }
        Ok(Self {
            issuer: raw.issuer.clone().unwrap_or_else(|| "keymesh".into()),
            audience: raw.audience.clone().unwrap_or_else(|| "keymesh".into()),
            clock_skew: Duration::from_secs(skew),
            revocation_bound: bounded_seconds(
                "tokens.revocation_bound_seconds",
                raw.revocation_bound_seconds,
                30,
                2..=3600,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn transport(source: &ConfigSource) -> RawTransport {
        source.top_level(RawTransport::KEYS).unwrap()
    }

    #[test]
    fn a_client_needs_no_address_to_listen_on() {
        // Endpoints as a cluster names them: a client reads them as they are; a service could not listen there.
        let source = ConfigSource::load(
            None,
            &env(&[
                ("KEYMESH_ENDPOINTS__CRYPTO_SERVICE", "keymesh-crypto-service:7402"),
                ("KEYMESH_ENDPOINTS__KEY_SERVICE", "keymesh-key-service:7401"),
            ]),
        )
        .unwrap();
        let client = ClientParams::from_raw(&transport(&source)).unwrap();
        assert_eq!(client.endpoints.crypto_service, "keymesh-crypto-service:7402");
        let err = MeshParams::from_raw(ServiceName::CryptoService, &transport(&source)).unwrap_err().to_string();
        assert!(err.contains("endpoints.crypto_service"), "{err}");
    }

    #[test]
    fn metrics_are_served_beside_each_service_unless_off() {
        let source = ConfigSource::load(None, &BTreeMap::new()).unwrap();
        let key = MeshParams::from_raw(ServiceName::KeyService, &transport(&source)).unwrap();
        let audit = MeshParams::from_raw(ServiceName::AuditService, &transport(&source)).unwrap();
        assert_eq!(key.metrics_addr.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9401"));
        assert_eq!(audit.metrics_addr.map(|a| a.to_string()).as_deref(), Some("127.0.0.1:9404"));
        let off = ConfigSource::load(None, &env(&[("KEYMESH_TELEMETRY__METRICS_ADDR", "off")])).unwrap();
        assert_eq!(MeshParams::from_raw(ServiceName::KeyService, &transport(&off)).unwrap().metrics_addr, None);
        let bad = ConfigSource::load(None, &env(&[("KEYMESH_TELEMETRY__METRICS_ADDR", "metrics:9401")])).unwrap();
        let error = MeshParams::from_raw(ServiceName::KeyService, &transport(&bad)).unwrap_err().to_string();
        assert!(error.contains("telemetry.metrics_addr"), "{error}");
    }

    #[test]
    fn defaults_serve_the_embedded_mesh() {
        let source = ConfigSource::load(None, &BTreeMap::new()).unwrap();
        let p = MeshParams::from_raw(ServiceName::CryptoService, &transport(&source)).unwrap();
        assert_eq!(p.listen_addr.to_string(), "127.0.0.1:7402");
        assert_eq!(p.endpoints.key_service, "127.0.0.1:7401");
        assert_eq!(p.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        let tokens = TokenParams::from_raw(&source.section("tokens").unwrap()).unwrap();
        assert_eq!((tokens.issuer.as_str(), tokens.revocation_bound), ("keymesh", Duration::from_secs(30)));
        let server = ServerSettings::defaults().unwrap();
        assert_eq!(server, p.server);
        assert_eq!(
            (server.max_connections, server.capacity.max_in_flight, server.capacity.max_queued),
            (4096, 512, 512)
        );
    }

    #[test]
    fn env_overrides_file_and_names_nested_fields() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keymesh.toml");
        std::fs::write(&file, "data_dir = \"/srv/a\"\n[endpoints]\nkey_service = \"keys:7401\"\n").unwrap();
        let source = ConfigSource::load(
            Some(&file),
            &env(&[
                ("KEYMESH_DATA_DIR", "/srv/b"),
                ("KEYMESH_ENDPOINTS__TOKEN_SERVICE", "tokens:7403"),
                ("KEYMESH_MASTER_KEY", "not a config field"),
                ("KEYMESH_DEK_CACHE__TTL_SECONDS", "60"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        let p = MeshParams::from_raw(ServiceName::CryptoService, &transport(&source)).unwrap();
        assert_eq!(p.data_dir, PathBuf::from("/srv/b"));
        assert_eq!(p.endpoints.key_service, "keys:7401");
        assert_eq!(p.endpoints.token_service, "tokens:7403");
        let dek_cache: toml::Table = source.section("dek_cache").unwrap();
        assert_eq!(dek_cache.get("ttl_seconds"), Some(&toml::Value::Integer(60)));
        // keys:7401 is fine to reach but not to bind: key-service's error names the field to fix.
        let err = MeshParams::from_raw(ServiceName::KeyService, &transport(&source)).unwrap_err().to_string();
        assert!(err.contains("`endpoints.key_service`"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[telemetry]\nlog_formt = \"json\"\n").unwrap();
        let source = ConfigSource::load(Some(&file), &BTreeMap::new()).unwrap();
        let err = source.top_level::<RawTransport>(RawTransport::KEYS).unwrap_err().to_string();
        assert!(err.contains("log_formt"), "{err}");

        std::fs::write(&file, "[tokens]\nclock_skew_seconds = \"soon\"\n").unwrap();
        let source = ConfigSource::load(Some(&file), &BTreeMap::new()).unwrap();
        let err = source.section::<RawTokens>("tokens").unwrap_err().to_string();
        assert!(err.contains("tokens.clock_skew_seconds"), "{err}");

        std::fs::write(&file, "data_dir = [unclosed\n").unwrap();
        let err = ConfigSource::load(Some(&file), &BTreeMap::new()).err().unwrap().to_string();
        assert!(err.contains("not valid TOML") && !err.contains('\n'), "{err}");

        let source = ConfigSource::load(None, &env(&[("KEYMESH_LISTEN_ADDR", "everywhere")])).unwrap();
        let err = MeshParams::from_raw(ServiceName::KeyService, &transport(&source)).unwrap_err().to_string();
        assert!(err.contains("`listen_addr`"), "{err}");

        let source = ConfigSource::load(None, &env(&[("KEYMESH_TOKENS__REVOCATION_BOUND_SECONDS", "1")])).unwrap();
        let err = TokenParams::from_raw(&source.section("tokens").unwrap()).unwrap_err().to_string();
        assert!(err.contains("tokens.revocation_bound_seconds"), "{err}");

        // Master secrets of further local backends are not configuration fields.
        let source = ConfigSource::load(None, &env(&[("KEYMESH_MASTER_KEY_2027", "s3cret")])).unwrap();
        assert_eq!(source.keys().count(), 0);
        // A variable cannot make a section of a value.
        let err = ConfigSource::load(None, &env(&[("KEYMESH_DATA_DIR", "x"), ("KEYMESH_DATA_DIR__SUB", "y")]))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("data_dir"), "{err}");
    }

    #[test]
    fn lists_in_variables_are_toml_arrays() {
        let source = ConfigSource::load(None, &env(&[("KEYMESH_KMS__RETIRED", r#"["old"]"#)])).unwrap();
        let kms: toml::Table = source.section("kms").unwrap();
        assert_eq!(kms.get("retired"), Some(&toml::Value::Array(vec![toml::Value::String("old".into())])));
    }
}

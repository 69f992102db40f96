//! Configuration in two stages: a raw serde struct read from a TOML file and overlaid with `KEYMESH_*`
//! environment variables, then validated into typed parameters with errors that name the field.
//!
//! One file can configure the whole mesh (each service reads the sections it needs), which is how the
//! embedded default works. Environment variables map onto fields with `__` between levels:
//! `KEYMESH_DATA_DIR`, `KEYMESH_ENDPOINTS__KEY_SERVICE`, `KEYMESH_DATABASE__URL`, …
//! Secrets are never config values: `KEYMESH_MASTER_KEY` is read by the KMS backend directly.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Deserialize;

use crate::ServiceName;

/// Environment variables with the prefix that are not config fields.
const RESERVED_ENV: &[&str] = &["KEYMESH_CONFIG", "KEYMESH_MASTER_KEY", "KEYMESH_LOG"];

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

/// The raw configuration of the mesh, as written in the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
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
    /// The service's database.
    #[serde(default)]
    pub database: RawDatabase,
    /// The KEK backend (key-service, token-service).
    #[serde(default)]
    pub kms: keymesh_kms::KmsConfig,
    /// Access tokens (token-service issues them, the others verify them).
    #[serde(default)]
    pub tokens: RawTokens,
    /// crypto-service's cache of unwrapped DEKs.
    #[serde(default)]
    pub dek_cache: RawDekCache,
    /// key-service's caches, maintenance and usage limits.
    #[serde(default)]
    pub key_service: RawKeyService,
    /// crypto-service's request limits.
    #[serde(default)]
    pub crypto_service: RawCryptoService,
    /// FIPS mode and tenants' default policies (key-service and crypto-service).
    #[serde(default)]
    pub policy: keymesh_policy::PolicyConfig,
    /// Rate limits and quotas (crypto-service and key-service).
    #[serde(default)]
    pub limits: keymesh_limits::LimitsConfig,
    /// The audit spool of every emitting service, and audit-service's retention and checkpoints.
    #[serde(default)]
    pub audit: RawAudit,
    /// Seconds to let in-flight requests finish after SIGTERM.
    pub shutdown_grace_seconds: Option<u64>,
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
}

/// `[database]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// `postgres://…` or `sqlite://…`; default a SQLite file per service in `data_dir`.
    pub url: Option<String>,
}

impl std::fmt::Debug for RawDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Database URLs carry passwords: say only whether one is set.
        f.debug_struct("RawDatabase").field("url", &self.url.as_ref().map(|_| "<redacted>")).finish()
    }
}

/// `[tokens]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTokens {
    /// `iss` of access tokens.
    pub issuer: Option<String>,
    /// `aud` of access tokens.
    pub audience: Option<String>,
    /// Lifetime of access tokens in seconds (1..=86400; default 3600).
    pub access_token_ttl_seconds: Option<u64>,
    /// Clock skew tolerated when checking `exp`/`nbf`, in seconds (0..=300; default 30).
    pub clock_skew_seconds: Option<u64>,
    /// Longest a revoked token can still be accepted anywhere in the mesh, in seconds (2..=3600; default
    /// 30). Verifiers poll revocations three times per bound and refuse every token when they have not
    /// heard from token-service for a whole bound.
    pub revocation_bound_seconds: Option<u64>,
    /// Lifetime of a refresh-token family from its grant, in seconds (60..=7776000; default 2592000, 30 days):
    /// rotation renews the token, not the grant.
    pub refresh_token_ttl_seconds: Option<u64>,
    /// How long a rotated client secret keeps working when RotateClientSecret names no grace period, in
    /// seconds (0..=2592000; default 86400).
    pub secret_grace_seconds: Option<u64>,
    /// Days a token signing key signs before the next one takes over (1..=365; default 30).
    pub signing_key_rotation_days: Option<u64>,
    /// External identities token-service exchanges for access tokens (token-service).
    #[serde(default)]
    pub exchange: RawExchange,
}

/// `[tokens.exchange]`: the issuers whose tokens IssueToken accepts as GRANT_TYPE_TOKEN_EXCHANGE subjects,
/// and the rules mapping their subjects to applications. Empty: token exchange is off.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchange {
    /// Trusted issuers.
    #[serde(default)]
    pub issuers: Vec<RawExchangeIssuer>,
    /// Mapping rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RawExchangeRule>,
}

/// `[[tokens.exchange.issuers]]`: a Kubernetes cluster's service-account issuer or an OIDC provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchangeIssuer {
    /// Name rules refer to, e.g. `prod-cluster`.
    pub name: String,
    /// The `iss` its tokens carry, e.g. `https://kubernetes.default.svc.cluster.local`.
    pub issuer: String,
    /// The `aud` a token must carry to be exchanged here (e.g. `keymesh`): a token minted for another
    /// audience is refused.
    pub audience: String,
    /// Where the signing keys are; default: `jwks_uri` from `<issuer>/.well-known/openid-configuration`.
    pub jwks_url: Option<String>,
    /// PEM bundle to trust for the JWKS (e.g. the cluster CA), beside the system roots.
    pub ca_file: Option<PathBuf>,
    /// Longest lifetime (`exp - iat`) of a token accepted, in seconds (default 86400): long-lived tokens
    /// (legacy service-account secrets) are refused.
    pub max_token_lifetime_seconds: Option<u64>,
}

/// `[[tokens.exchange.rules]]`: subjects of one issuer that become one application.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchangeRule {
    /// The issuer's `name`.
    pub issuer: String,
    /// Pattern on `sub` (`*` matches any run), e.g. `system:serviceaccount:loaders:*`.
    pub subject: String,
    /// Further claims that must equal these strings (top-level claims, e.g. `email_verified = "true"`).
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// The application the token is issued for.
    pub client_id: String,
}

/// `[dek_cache]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDekCache {
    /// Most DEKs held at once (default 10000).
    pub max_entries: Option<u64>,
    /// Seconds a DEK stays cached (1..=3600; default 300).
    pub ttl_seconds: Option<u64>,
}

/// `[crypto_service]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCryptoService {
    /// Largest plaintext or ciphertext of one unary call, batch items summed (65536..=67108864; default
    /// 4194304). Larger data goes through EncryptStream/DecryptStream.
    pub unary_limit_bytes: Option<u64>,
}

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `strict` (default: a call whose event cannot be spooled fails), `best_effort` (the call is answered
    /// and the loss logged) or `off` (no events; for benchmarks and throwaway setups).
    pub mode: Option<String>,
    /// The emitting service's spool directory; default `data_dir/audit-spool/<service>`. One per process.
    pub spool_dir: Option<PathBuf>,
    /// MiB of events not yet acknowledged by audit-service before calls wait (1..=65536; default 256).
    pub spool_max_mib: Option<u64>,
    /// Milliseconds a call waits for space in a full spool before it fails (0..=60000; default 2000).
    pub spool_full_wait_ms: Option<u64>,
    /// audit-service: days a record is kept (1..=36500; default 90).
    pub retention_days: Option<u64>,
    /// audit-service: seconds between signed checkpoints of the chain (1..=86400; default 60).
    pub checkpoint_interval_seconds: Option<u64>,
}

/// What an emitting service does with its audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditMode {
    /// Every event is spooled durably before its call is answered; a call whose event cannot be is failed.
    Strict,
    /// Events are spooled before the answer, but a call is answered even when its event could not be.
    BestEffort,
    /// No events at all.
    Off,
}

/// Validated `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditParams {
    /// Strict, best effort or off.
    pub mode: AuditMode,
    /// The spool directory.
    pub spool_dir: PathBuf,
    /// Unacknowledged bytes before back-pressure.
    pub spool_max_bytes: u64,
    /// How long a call waits for space.
    pub spool_full_wait: Duration,
    /// How long audit-service keeps records.
    pub retention: Duration,
    /// How often audit-service signs a checkpoint.
    pub checkpoint_interval: Duration,
}

impl AuditParams {
    /// Validates `[audit]` for the service `params` describes.
    pub fn from_raw(raw: &RawConfig, params: &MeshParams) -> Result<Self, ConfigError> {
        let a = &raw.audit;
        let mode = match a.mode.as_deref() {
            None | Some("strict") => AuditMode::Strict,
            Some("best_effort") => AuditMode::BestEffort,
            Some("off") => AuditMode::Off,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    field: "audit.mode",
                    reason: format!("{other:?} is not one of \"strict\", \"best_effort\", \"off\""),
                });
            }
        };
        let spool_dir = match &a.spool_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(ConfigError::Invalid { field: "audit.spool_dir", reason: "must not be empty".into() });
            }
            Some(dir) => dir.clone(),
            None => params.data_dir.join("audit-spool").join(params.service.as_str()),
        };
        let mib = bounded("audit.spool_max_mib", a.spool_max_mib, 256, 1..=65536)?;
        let wait = bounded("audit.spool_full_wait_ms", a.spool_full_wait_ms, 2000, 0..=60_000)?;
        let days = bounded("audit.retention_days", a.retention_days, 90, 1..=36_500)?;
        let checkpoint = bounded("audit.checkpoint_interval_seconds", a.checkpoint_interval_seconds, 60, 1..=86_400)?;
        Ok(Self {
            mode,
            spool_dir,
            spool_max_bytes: mib * 1024 * 1024,
            spool_full_wait: Duration::from_millis(wait),
            retention: Duration::from_secs(days * 86_400),
            checkpoint_interval: Duration::from_secs(checkpoint),
        })
    }
}

/// `[key_service]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKeyService {
    /// `redis://…` or `rediss://…` shared by replicas for wrapped DEKs; unset keeps them in process memory.
    pub redis_url: Option<String>,
    /// Milliseconds a Redis command may take before the database answers instead (1..=5000; default 50).
    pub redis_timeout_ms: Option<u64>,
    /// Seconds a key record stays in Redis or in the in-process cache (1..=86400; default 300).
    pub record_cache_ttl_seconds: Option<u64>,
    /// Seconds between looks for keys due for scheduled rotation, retirement or destruction (1..=3600; default 60).
    pub maintenance_interval_seconds: Option<u64>,
    /// Milliseconds between polls for keys changed by other replicas (100..=60000; default 1000).
    pub change_poll_ms: Option<u64>,
    /// Encryptions crypto-service may make per DEK fetch (1..=2^32; default 2^20).
    pub encryption_block: Option<u64>,
    /// Encryptions granted with one version after which the key rotates by itself (default 2^31, below
    /// AES-GCM's 2^32 bound for random nonces).
    pub rotate_after_encryptions: Option<u64>,
}

impl std::fmt::Debug for RawKeyService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Redis URLs may carry passwords: say only whether one is set.
        f.debug_struct("RawKeyService")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<redacted>"))
            .field("redis_timeout_ms", &self.redis_timeout_ms)
            .field("record_cache_ttl_seconds", &self.record_cache_ttl_seconds)
            .field("maintenance_interval_seconds", &self.maintenance_interval_seconds)
            .field("change_poll_ms", &self.change_poll_ms)
            .field("encryption_block", &self.encryption_block)
            .field("rotate_after_encryptions", &self.rotate_after_encryptions)
            .finish()
    }
}

/// Reads the file (if any) and overlays the `KEYMESH_*` variables in `env`.
pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<RawConfig, ConfigError> {
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
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let field = e.path().to_string();
        ConfigError::Field {
            field: if field == "." { "(top level)".into() } else { field },
            reason: e.inner().to_string(),
        }
    })
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
    /// Drain period after a shutdown signal.
    pub shutdown_grace: Duration,
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

impl MeshParams {
    /// Validates the shared part of `raw` for `service`.
    pub fn from_raw(service: ServiceName, raw: &RawConfig) -> Result<Self, ConfigError> {
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
        let listen = raw.listen_addr.clone().unwrap_or_else(|| endpoints.of(service).to_owned());
        let listen_field = if raw.listen_addr.is_some() { "listen_addr" } else { service.endpoint_field() };
        let listen_addr: SocketAddr = listen.parse().map_err(|_| ConfigError::Invalid {
            field: listen_field,
            reason: format!("{listen:?} is not an IP:port to listen on (e.g. 0.0.0.0:7401)"),
        })?;
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
        if let Some(otlp) = &raw.telemetry.otlp_endpoint
            && !(otlp.starts_with("http://") || otlp.starts_with("https://"))
        {
            return Err(ConfigError::Invalid {
                field: "telemetry.otlp_endpoint",
                reason: format!("{otlp:?} must be an http:// or https:// URL"),
            });
        }
        let shutdown_grace = Duration::from_secs(raw.shutdown_grace_seconds.unwrap_or(20));
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
            json_logs,
            log_level: raw.telemetry.log_level.clone().unwrap_or_else(|| "info".into()),
            shutdown_grace,
        })
    }

    /// The database URL: configured, or a SQLite file per service in the data directory.
    pub fn database_url(&self, raw: &RawConfig) -> String {
        raw.database.url.clone().unwrap_or_else(|| {
            format!("sqlite://{}?mode=rwc", self.data_dir.join(format!("{}.db", self.service.as_str())).display())
        })
    }
}

/// Validated token settings.
#[derive(Debug, Clone)]
pub struct TokenParams {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// Access token lifetime.
    pub access_token_ttl: Duration,
    /// Tolerated clock skew.
    pub clock_skew: Duration,
    /// Longest a revoked token stays accepted.
    pub revocation_bound: Duration,
    /// Refresh token lifetime.
    pub refresh_token_ttl: Duration,
    /// Default grace period of a rotated client secret.
    pub secret_grace: Duration,
    /// How long a signing key signs before the next takes over.
    pub signing_key_rotation: Duration,
}

impl TokenParams {
    /// Validates `[tokens]`.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        let ttl = raw.tokens.access_token_ttl_seconds.unwrap_or(3600);
        if !(1..=86_400).contains(&ttl) {
            return Err(ConfigError::Invalid {
                field: "tokens.access_token_ttl_seconds",
                reason: format!("{ttl} is outside 1..=86400"),
            });
        }
        let skew = raw.tokens.clock_skew_seconds.unwrap_or(30);
        if skew > 300 {
            return Err(ConfigError::Invalid {
                field: "tokens.clock_skew_seconds",
                reason: format!("{skew} is over 300"),
            });
        }
        let ranged = |field: &'static str, value: Option<u64>, default: u64, range: std::ops::RangeInclusive<u64>| {
            let value = value.unwrap_or(default);
            if range.contains(&value) {
                Ok(Duration::from_secs(value))
            } else {
                Err(ConfigError::Invalid {
                    field,
                    reason: format!("{value} is outside {}..={}", range.start(), range.end()),
                })
            }
        };
        let t = &raw.tokens;
        Ok(Self {
            issuer: t.issuer.clone().unwrap_or_else(|| "keymesh".into()),
            audience: t.audience.clone().unwrap_or_else(|| "keymesh".into()),
            access_token_ttl: Duration::from_secs(ttl),
            clock_skew: Duration::from_secs(skew),
            revocation_bound: ranged("tokens.revocation_bound_seconds", t.revocation_bound_seconds, 30, 2..=3600)?,
            refresh_token_ttl: ranged(
                "tokens.refresh_token_ttl_seconds",
                t.refresh_token_ttl_seconds,
                30 * 86_400,
                60..=90 * 86_400,
            )?,
            secret_grace: ranged("tokens.secret_grace_seconds", t.secret_grace_seconds, 86_400, 0..=30 * 86_400)?,
            signing_key_rotation: ranged(
                "tokens.signing_key_rotation_days",
                t.signing_key_rotation_days.map(|d| d.saturating_mul(86_400)),
                30 * 86_400,
                86_400..=365 * 86_400,
            )?,
        })
    }
}

/// Validated DEK cache settings.
#[derive(Debug, Clone, Copy)]
pub struct DekCacheParams {
    /// Capacity.
    pub max_entries: u64,
    /// Time to live.
    pub ttl: Duration,
}

impl DekCacheParams {
    /// Validates `[dek_cache]`.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        let ttl = raw.dek_cache.ttl_seconds.unwrap_or(300);
        if !(1..=3600).contains(&ttl) {
            return Err(ConfigError::Invalid {
                field: "dek_cache.ttl_seconds",
                reason: format!("{ttl} is outside 1..=3600"),
            });
        }
        let max_entries = raw.dek_cache.max_entries.unwrap_or(10_000);
        if max_entries == 0 {
            return Err(ConfigError::Invalid { field: "dek_cache.max_entries", reason: "must be at least 1".into() });
        }
        Ok(Self { max_entries, ttl: Duration::from_secs(ttl) })
    }
}

/// Validated `[crypto_service]`.
#[derive(Debug, Clone, Copy)]
pub struct CryptoServiceParams {
    /// Largest plaintext or ciphertext of one unary call.
    pub unary_limit: usize,
}

impl CryptoServiceParams {
    /// gRPC framing, headers, AAD and encryption context a unary message may carry beyond its data.
    pub const MESSAGE_OVERHEAD: usize = 64 * 1024;

    /// Validates `[crypto_service]`.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        let limit = bounded(
            "crypto_service.unary_limit_bytes",
            raw.crypto_service.unary_limit_bytes,
            4 * 1024 * 1024,
            64 * 1024..=64 * 1024 * 1024,
        )?;
        Ok(Self { unary_limit: usize::try_from(limit).unwrap_or(usize::MAX) })
    }

    /// The largest gRPC message crypto-service accepts or sends: room for twice the unary limit, so that a
    /// plaintext somewhat over it meets the error that points to streaming rather than a bare message-size
    /// refusal, and never less than gRPC's usual 4 MiB, which stream segments (up to 2 MiB) and the SDK's
    /// stream chunks rely on whatever the unary limit.
    pub fn max_message_size(&self) -> usize {
        (2 * self.unary_limit).max(4 * 1024 * 1024) + Self::MESSAGE_OVERHEAD
    }
}

/// Validated `[kms]`: the default keyring and every tenant's name defined backends without clashes.
#[derive(Debug, Clone)]
pub struct KmsParams {
    /// The configuration, checked.
    pub config: keymesh_kms::KmsConfig,
}

impl KmsParams {
    /// Validates `[kms]`, tenant keyrings included, so that a mistake stops the service at start with the
    /// field named.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        raw.kms.keyrings().map_err(|p| ConfigError::Field { field: p.field, reason: p.reason })?;
        let fips_kdf = raw.policy.fips_mode == keymesh_policy::FipsMode::Enabled;
        Ok(Self { config: keymesh_kms::KmsConfig { fips_kdf, ..raw.kms.clone() } })
    }

    /// Opens every backend of the default keyring; `data_dir` is the service's.
    pub async fn open_keyring(&self, data_dir: &Path) -> Result<keymesh_kms::Keyring, keymesh_kms::KmsError> {
        let keyring = self.config.open(data_dir).await?;
        tracing::info!(keyring = %keyring.summary(), "KMS keyring ready");
        Ok(keyring)
    }

    /// Opens the default keyring and every tenant's.
    pub async fn open_keyrings(&self, data_dir: &Path) -> Result<keymesh_kms::Keyrings, keymesh_kms::KmsError> {
        let keyrings = self.config.open_all(data_dir).await?;
        tracing::info!(keyrings = %keyrings.summary(), "KMS keyrings ready");
        Ok(keyrings)
    }
}

/// Validated `[key_service]`.
#[derive(Clone)]
pub struct KeyServiceParams {
    /// Shared cache of wrapped DEKs, if configured.
    pub redis_url: Option<String>,
    /// Deadline of one Redis command.
    pub redis_timeout: Duration,
    /// Lifetime of cached key records.
    pub record_cache_ttl: Duration,
    /// Period of the maintenance sweep.
    pub maintenance_interval: Duration,
    /// Period of the change poll.
    pub change_poll: Duration,
    /// Encryptions granted per DEK fetch.
    pub encryption_block: u64,
    /// Automatic rotation threshold.
    pub rotate_after_encryptions: u64,
}

impl std::fmt::Debug for KeyServiceParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyServiceParams")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<redacted>"))
            .field("encryption_block", &self.encryption_block)
            .field("rotate_after_encryptions", &self.rotate_after_encryptions)
            .finish_non_exhaustive()
    }
}

fn bounded(
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

impl KeyServiceParams {
    /// Validates `[key_service]`.
    pub fn from_raw(raw: &RawConfig) -> Result<Self, ConfigError> {
        let k = &raw.key_service;
        if let Some(url) = &k.redis_url
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            return Err(ConfigError::Invalid {
                field: "key_service.redis_url",
                reason: "must start with redis:// or rediss://".into(),
            });
        }
        let encryption_block = bounded("key_service.encryption_block", k.encryption_block, 1 << 20, 1..=1 << 32)?;
        let rotate_after_encryptions =
            bounded("key_service.rotate_after_encryptions", k.rotate_after_encryptions, 1 << 31, 1..=1 << 32)?;
        if rotate_after_encryptions < encryption_block {
            return Err(ConfigError::Invalid {
                field: "key_service.rotate_after_encryptions",
                reason: "must be at least key_service.encryption_block".into(),
            });
        }
        Ok(Self {
            redis_url: k.redis_url.clone().filter(|u| !u.is_empty()),
            redis_timeout: Duration::from_millis(bounded(
                "key_service.redis_timeout_ms",
                k.redis_timeout_ms,
                50,
                1..=5000,
            )?),
            record_cache_ttl: Duration::from_secs(bounded(
                "key_service.record_cache_ttl_seconds",
                k.record_cache_ttl_seconds,
                300,
                1..=86_400,
            )?),
            maintenance_interval: Duration::from_secs(bounded(
                "key_service.maintenance_interval_seconds",
                k.maintenance_interval_seconds,
                60,
                1..=3600,
            )?),
            change_poll: Duration::from_millis(bounded(
                "key_service.change_poll_ms",
                k.change_poll_ms,
                1000,
                100..=60_000,
            )?),
            encryption_block,
            rotate_after_encryptions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_serve_the_embedded_mesh() {
        let raw = load(None, &BTreeMap::new()).unwrap();
        let p = MeshParams::from_raw(ServiceName::CryptoService, &raw).unwrap();
        assert_eq!(p.listen_addr.to_string(), "127.0.0.1:7402");
        assert_eq!(p.endpoints.key_service, "127.0.0.1:7401");
        assert_eq!(p.database_url(&raw), "sqlite://.keymesh/crypto-service.db?mode=rwc");
    }

    #[test]
    fn env_overrides_file_and_names_nested_fields() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("keymesh.toml");
        std::fs::write(&file, "data_dir = \"/srv/a\"\n[endpoints]\nkey_service = \"keys:7401\"\n").unwrap();
        let raw = load(
            Some(&file),
            &env(&[
                ("KEYMESH_DATA_DIR", "/srv/b"),
                ("KEYMESH_ENDPOINTS__TOKEN_SERVICE", "tokens:7403"),
                ("KEYMESH_MASTER_KEY", "not a config field"),
                ("KEYMESH_DEK_CACHE__TTL_SECONDS", "60"),
                ("KEYMESH_CRYPTO_SERVICE__UNARY_LIMIT_BYTES", "1048576"),
                ("OTHER", "ignored"),
            ]),
        )
        .unwrap();
        let p = MeshParams::from_raw(ServiceName::CryptoService, &raw).unwrap();
        assert_eq!(p.data_dir, PathBuf::from("/srv/b"));
        assert_eq!(p.endpoints.key_service, "keys:7401");
        assert_eq!(p.endpoints.token_service, "tokens:7403");
        assert_eq!(DekCacheParams::from_raw(&raw).unwrap().ttl, Duration::from_secs(60));
        let limits = CryptoServiceParams::from_raw(&raw).unwrap();
        assert_eq!(limits.unary_limit, 1 << 20);
        assert_eq!(limits.max_message_size(), (4 << 20) + CryptoServiceParams::MESSAGE_OVERHEAD);
        let small = load(None, &env(&[("KEYMESH_CRYPTO_SERVICE__UNARY_LIMIT_BYTES", "10")])).unwrap();
        let err = CryptoServiceParams::from_raw(&small).unwrap_err().to_string();
        assert!(err.contains("crypto_service.unary_limit_bytes"), "{err}");
        // keys:7401 is fine to reach but not to bind: key-service's error names the field to fix.
        let err = MeshParams::from_raw(ServiceName::KeyService, &raw).unwrap_err().to_string();
        assert!(err.contains("`endpoints.key_service`"), "{err}");
    }

    #[test]
    fn errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[telemetry]\nlog_formt = \"json\"\n").unwrap();
        let err = load(Some(&file), &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("log_formt"), "{err}");

        std::fs::write(&file, "[tokens]\naccess_token_ttl_seconds = \"soon\"\n").unwrap();
        let err = load(Some(&file), &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("tokens.access_token_ttl_seconds"), "{err}");

        std::fs::write(&file, "data_dir = [unclosed\n").unwrap();
        let err = load(Some(&file), &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("not valid TOML") && !err.contains('\n'), "{err}");

        let raw = load(None, &env(&[("KEYMESH_LISTEN_ADDR", "everywhere")])).unwrap();
        let err = MeshParams::from_raw(ServiceName::KeyService, &raw).unwrap_err().to_string();
        assert!(err.contains("`listen_addr`"), "{err}");

        let raw = load(None, &env(&[("KEYMESH_KMS__PRIMARY", "hsm")])).unwrap();
        assert!(KmsParams::from_raw(&raw).unwrap_err().to_string().contains("kms.primary"));
        let raw =
            load(None, &env(&[("KEYMESH_KMS__RETIRED", r#"["old"]"#), ("KEYMESH_KMS__PRIMARY", "local")])).unwrap();
        assert_eq!(raw.kms.retired, ["old"]);
        // Master secrets of further local backends are not configuration fields.
        assert!(load(None, &env(&[("KEYMESH_MASTER_KEY_2027", "s3cret")])).is_ok());

        let raw = load(None, &env(&[("KEYMESH_KEY_SERVICE__REDIS_URL", "memcached://x")])).unwrap();
        assert!(KeyServiceParams::from_raw(&raw).unwrap_err().to_string().contains("key_service.redis_url"));
        let raw = load(
            None,
            &env(&[
                ("KEYMESH_KEY_SERVICE__ENCRYPTION_BLOCK", "100"),
                ("KEYMESH_KEY_SERVICE__ROTATE_AFTER_ENCRYPTIONS", "10"),
            ]),
        )
        .unwrap();
        assert!(KeyServiceParams::from_raw(&raw).unwrap_err().to_string().contains("rotate_after_encryptions"));
    }

    #[test]
    fn database_password_never_prints() {
        let raw = load(None, &env(&[("KEYMESH_DATABASE__URL", "postgres://app:hunter2@db/keymesh")])).unwrap();
        assert!(!format!("{raw:?}").contains("hunter2"));
    }
}

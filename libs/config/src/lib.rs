//! The one configuration file of the mesh (TOML, overlaid by `KEYMESH_*` variables), composed from the
//! sections their owners define and validate: transport and token verification in keymesh-mesh, `[kms]` in
//! keymesh-kms, `[policy]` in keymesh-policy, `[limits]` in keymesh-limits, `[audit]` in keymesh-audit,
//! `[database]` in keymesh-store, and each service's own sections in the service.
//!
//! It sits above those crates so that none of them reads another's settings; what it adds is the file as a
//! whole: every top-level key must belong to an owner (a typo stops every service at start), and the few
//! settings that combine two sections (FIPS mode choosing the local KMS's KDF) are joined here.

use std::{collections::BTreeMap, path::Path};

use keymesh_audit::{AuditParams, RawAudit};
use keymesh_kms::KmsConfig;
use keymesh_limits::LimitsConfig;
use keymesh_mesh::{
    config::{ConfigError, ConfigSource, MeshParams, RawTokens, RawTransport, bounded_millis},
    run::ServiceConfig,
};
use keymesh_policy::{FipsMode, PolicyConfig};
use keymesh_store::config::RawDatabase;
use serde::de::DeserializeOwned;

/// Sections owned by one service each, read (strictly) by that service alone: `[dek_cache]` and
/// `[crypto_service]` by crypto-service, `[key_service]` by key-service.
const SERVICE_SECTIONS: &[&str] = &["dek_cache", "crypto_service", "key_service", "console"];

/// Sections owned by the library crates, read here.
const LIBRARY_SECTIONS: &[&str] = &["tokens", "database", "kms", "policy", "limits", "audit"];

/// The issuing half of `[tokens]`, read (strictly) by token-service alone; every service refuses any other
/// name there, so a misspelt verifier field cannot fall back to its default unnoticed.
const ISSUANCE_FIELDS: &[&str] = &[
    "access_token_ttl_seconds",
    "refresh_token_ttl_seconds",
    "secret_grace_seconds",
    "signing_key_rotation_days",
    "exchange",
];

/// "unknown field `x`, expected one of `a`, `b`", as serde words it for the other fields.
fn unknown_field(field: String, name: &str, expected: &[&str]) -> ConfigError {
    let expected: Vec<String> = expected.iter().map(|k| format!("`{k}`")).collect();
    ConfigError::Field { field, reason: format!("unknown field `{name}`, expected one of {}", expected.join(", ")) }
}

/// The whole file, each section as its owner defines it.
#[derive(Default)]
pub struct KeymeshConfig {
    /// Addresses, certificates, telemetry and shutdown (keymesh-mesh).
    pub transport: RawTransport,
    /// `[tokens]`: verification (keymesh-mesh); the issuing part is token-service's.
    pub tokens: RawTokens,
    /// `[database]` (keymesh-store).
    pub database: RawDatabase,
    /// `[kms]` (keymesh-kms), as written; services open [`KeymeshConfig::kms_checked`].
    pub kms: KmsConfig,
    /// `[policy]` (keymesh-policy).
    pub policy: PolicyConfig,
    /// `[limits]` (keymesh-limits).
    pub limits: LimitsConfig,
    /// `[audit]` (keymesh-audit), as written; services use [`KeymeshConfig::audit_params`].
    pub audit: RawAudit,
    /// The services' own sections, unread.
    services: ConfigSource,
}

impl std::fmt::Debug for KeymeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The services' sections are unread here and may hold credentials (a Redis URL): names only.
        f.debug_struct("KeymeshConfig")
            .field("transport", &self.transport)
            .field("database", &self.database)
            .field("kms", &self.kms)
            .field("policy", &self.policy)
            .field("limits", &self.limits)
            .field("audit", &self.audit)
            .field("services", &self.services.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl ServiceConfig for KeymeshConfig {
    fn from_source(source: &ConfigSource) -> Result<Self, ConfigError> {
        let known = || RawTransport::KEYS.iter().chain(LIBRARY_SECTIONS).chain(SERVICE_SECTIONS);
        if let Some(unknown) = source.keys().find(|k| !known().any(|known| known == k)) {
            return Err(unknown_field(unknown.to_owned(), unknown, &known().copied().collect::<Vec<_>>()));
        }
        let tokens: RawTokens = source.section("tokens")?;
        if let Some(unknown) = tokens.issuance.keys().find(|k| !ISSUANCE_FIELDS.contains(&k.as_str())) {
            let expected: Vec<&str> = RawTokens::VERIFY_FIELDS.iter().chain(ISSUANCE_FIELDS).copied().collect();
            return Err(unknown_field(format!("tokens.{unknown}"), unknown, &expected));
        }
        Ok(Self {
            transport: source.top_level(RawTransport::KEYS)?,
            tokens,
            database: source.section("database")?,
            kms: source.section("kms")?,
            policy: source.section("policy")?,
            limits: source.section("limits")?,
            audit: source.section("audit")?,
            services: source.only(SERVICE_SECTIONS),
        })
    }

    fn transport(&self) -> &RawTransport {
        &self.transport
    }
}

impl KeymeshConfig {
    /// Reads the file (if any) and the `KEYMESH_*` variables of `env`.
    pub fn load(file: Option<&Path>, env: &BTreeMap<String, String>) -> Result<Self, ConfigError> {
        Self::from_source(&ConfigSource::load(file, env)?)
    }

    /// No file, and these `KEYMESH_*` variables (for tests and tools that set a few fields).
    pub fn from_variables(pairs: &[(&str, &str)]) -> Result<Self, ConfigError> {
        Self::load(None, &pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect())
    }

    /// A service's own section (its default when absent), read strictly with errors naming `key.<field>`.
    pub fn service_section<T: DeserializeOwned + Default>(&self, key: &str) -> Result<T, ConfigError> {
        self.services.section(key)
    }

    /// `[kms]` checked (the default keyring and every tenant's, so a mistake stops the service at start
    /// with the field named), with FIPS mode choosing the local backend's KDF.
    pub fn kms_checked(&self) -> Result<KmsConfig, ConfigError> {
        self.kms.keyrings().map_err(|p| ConfigError::Field { field: p.field, reason: p.reason })?;
        Ok(KmsConfig { fips_kdf: self.policy.fips_mode == FipsMode::Enabled, ..self.kms.clone() })
    }

    /// The database settings of the service `params` describes: its URL (configured, or a SQLite file of its
    /// own) and the acquire and statement deadlines, each checked against its range.
    pub fn database(&self, params: &MeshParams) -> Result<keymesh_store::config::DatabaseSettings, ConfigError> {
        let raw = &self.database;
        let default = keymesh_store::config::DEFAULT_TIMEOUT.as_millis() as u64;
        Ok(keymesh_store::config::DatabaseSettings {
            url: raw.url_or_sqlite(&params.data_dir, params.service.as_str()),
            acquire_timeout: bounded_millis(
                "database.acquire_timeout_ms",
                raw.acquire_timeout_ms,
                default,
                100..=60_000,
            )?,
            statement_timeout: bounded_millis(
                "database.statement_timeout_ms",
                raw.statement_timeout_ms,
                default,
                100..=600_000,
            )?,
        })
    }

    /// `[audit]` validated for the service `params` describes.
    pub fn audit_params(&self, params: &MeshParams) -> Result<AuditParams, ConfigError> {
        AuditParams::from_raw(&self.audit, params)
    }
}

/// Opens every backend of the default keyring of `kms` (checked by [`KeymeshConfig::kms_checked`]).
pub async fn open_keyring(kms: &KmsConfig, data_dir: &Path) -> Result<keymesh_kms::Keyring, keymesh_kms::KmsError> {
    let keyring = kms.open(data_dir).await?;
    tracing::info!(keyring = %keyring.summary(), "KMS keyring ready");
    Ok(keyring)
}

/// Opens the default keyring and every tenant's.
pub async fn open_keyrings(kms: &KmsConfig, data_dir: &Path) -> Result<keymesh_kms::Keyrings, keymesh_kms::KmsError> {
    let keyrings = kms.open_all(data_dir).await?;
    tracing::info!(keyrings = %keyrings.summary(), "KMS keyrings ready");
    Ok(keyrings)
}

#[cfg(test)]
mod tests {
    use keymesh_mesh::ServiceName;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_embedded_default_composes() {
        let config = KeymeshConfig::load(None, &BTreeMap::new()).unwrap();
        let params = MeshParams::from_raw(ServiceName::CryptoService, config.transport()).unwrap();
        let database = config.database(&params).unwrap();
        assert_eq!(database.url, "sqlite://.keymesh/crypto-service.db?mode=rwc");
        assert_eq!(database.acquire_timeout, std::time::Duration::from_secs(2));
        assert_eq!(database.statement_timeout, std::time::Duration::from_secs(2));
        // A deadline of 0 would fail every call (acquire) or remove the deadline (statement): refused, named.
        for field in ["ACQUIRE_TIMEOUT_MS", "STATEMENT_TIMEOUT_MS"] {
            let config = KeymeshConfig::from_variables(&[(&format!("KEYMESH_DATABASE__{field}"), "0")]).unwrap();
            let error = config.database(&params).unwrap_err().to_string();
            assert!(error.contains(&format!("database.{}", field.to_lowercase())), "{error}");
        }
        assert!(!config.kms_checked().unwrap().fips_kdf);
        assert!(config.audit_params(&params).is_ok());
    }

    #[test]
    fn every_section_has_an_owner_and_errors_name_the_field() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "[dek_cahce]\nttl_seconds = 5\n").unwrap();
        let err = KeymeshConfig::load(Some(&file), &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("dek_cahce") && err.contains("dek_cache"), "{err}");
        std::fs::write(&file, "[telemetry]\nlog_formt = \"json\"\n").unwrap();
        let err = KeymeshConfig::load(Some(&file), &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("log_formt"), "{err}");
        std::fs::write(&file, "[limits]\napplication_per_second = \"many\"\n").unwrap();
        let err = KeymeshConfig::load(Some(&file), &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("limits.application_per_second"), "{err}");

        let config = KeymeshConfig::load(None, &env(&[("KEYMESH_KMS__PRIMARY", "hsm")])).unwrap();
        assert!(config.kms_checked().unwrap_err().to_string().contains("kms.primary"));
        let config = KeymeshConfig::load(
            None,
            &env(&[("KEYMESH_KMS__RETIRED", r#"["old"]"#), ("KEYMESH_KMS__PRIMARY", "local")]),
        )
        .unwrap();
        assert_eq!(config.kms.retired, ["old"]);
        // Master secrets of further local backends are not configuration fields.
        assert!(KeymeshConfig::load(None, &env(&[("KEYMESH_MASTER_KEY_2027", "s3cret")])).is_ok());
    }

    #[test]
    fn every_field_of_tokens_has_an_owner() {
        let config = KeymeshConfig::from_variables(&[
            ("KEYMESH_TOKENS__ISSUER", "keymesh-prod"),
            ("KEYMESH_TOKENS__ACCESS_TOKEN_TTL_SECONDS", "600"),
        ])
        .unwrap();
        assert_eq!(config.tokens.issuer.as_deref(), Some("keymesh-prod"));
        let err = KeymeshConfig::from_variables(&[("KEYMESH_TOKENS__REVOCATION_BOUND_SECOND", "10")]).unwrap_err();
        let err = err.to_string();
        assert!(err.contains("tokens.revocation_bound_second") && err.contains("`revocation_bound_seconds`"), "{err}");
    }

    #[test]
    fn fips_mode_picks_the_local_kdf() {
        let config = KeymeshConfig::load(None, &env(&[("KEYMESH_POLICY__FIPS_MODE", "enabled")])).unwrap();
        assert!(config.kms_checked().unwrap().fips_kdf);
    }

    #[test]
    fn a_service_section_is_read_by_its_owner_with_the_field_named() {
        #[derive(Debug, Default, serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct DekCache {
            ttl_seconds: Option<u64>,
        }
        let config = KeymeshConfig::load(None, &env(&[("KEYMESH_DEK_CACHE__TTL_SECONDS", "60")])).unwrap();
        assert_eq!(config.service_section::<DekCache>("dek_cache").unwrap().ttl_seconds, Some(60));
        assert!(config.service_section::<DekCache>("key_service").unwrap().ttl_seconds.is_none());
        let config = KeymeshConfig::load(None, &env(&[("KEYMESH_DEK_CACHE__TTL_SECONDZ", "60")])).unwrap();
        let err = config.service_section::<DekCache>("dek_cache").unwrap_err().to_string();
        assert!(err.contains("dek_cache") && err.contains("ttl_secondz"), "{err}");
    }

    #[test]
    fn database_password_never_prints() {
        let config =
            KeymeshConfig::load(None, &env(&[("KEYMESH_DATABASE__URL", "postgres://app:hunter2@db/keymesh")])).unwrap();
        assert!(!format!("{config:?}").contains("hunter2"));
    }
}

//! key-service's own section of the configuration file, `[key_service]`, and everything it reads from the
//! file, validated before anything binds.

use std::time::Duration;

use keymesh_config::KeymeshConfig;
use keymesh_kms::KmsConfig;
use keymesh_mesh::config::{ConfigError, TokenParams, bounded, bounded_millis, bounded_seconds};
use serde::Deserialize;

/// Everything key-service reads from the file, validated.
pub struct KeyConfig {
    /// Token verification.
    pub tokens: TokenParams,
    /// The KMS keyrings.
    pub kms: KmsConfig,
    /// Caches, maintenance and usage limits.
    pub key_service: KeyServiceParams,
}

impl KeyConfig {
    /// Validates key-service's sections.
    pub fn from_file(config: &KeymeshConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            tokens: TokenParams::from_raw(&config.tokens)?,
            kms: config.kms_checked()?,
            key_service: KeyServiceParams::from_raw(&config.service_section("key_service")?)?,
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

impl KeyServiceParams {
    /// Validates `[key_service]`.
    pub fn from_raw(k: &RawKeyService) -> Result<Self, ConfigError> {
        if let Some(url) = &k.redis_url {
            keymesh_redis::check_url(url)
                .map_err(|reason| ConfigError::Invalid { field: "key_service.redis_url", reason: reason.into() })?;
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
            redis_timeout: bounded_millis("key_service.redis_timeout_ms", k.redis_timeout_ms, 50, 1..=5000)?,
            record_cache_ttl: bounded_seconds(
                "key_service.record_cache_ttl_seconds",
                k.record_cache_ttl_seconds,
                300,
                1..=86_400,
            )?,
            maintenance_interval: bounded_seconds(
                "key_service.maintenance_interval_seconds",
                k.maintenance_interval_seconds,
                60,
                1..=3600,
            )?,
            change_poll: bounded_millis("key_service.change_poll_ms", k.change_poll_ms, 1000, 100..=60_000)?,
            encryption_block,
            rotate_after_encryptions,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<KeyConfig, ConfigError> {
        KeyConfig::from_file(&KeymeshConfig::from_variables(pairs)?)
    }

    #[test]
    fn errors_name_the_field() {
        let err = config(&[("KEYMESH_KEY_SERVICE__REDIS_URL", "memcached://x")]).err().unwrap().to_string();
        assert!(err.contains("key_service.redis_url"), "{err}");
        let err = config(&[
            ("KEYMESH_KEY_SERVICE__ENCRYPTION_BLOCK", "100"),
            ("KEYMESH_KEY_SERVICE__ROTATE_AFTER_ENCRYPTIONS", "10"),
        ])
        .err()
        .unwrap()
        .to_string();
        assert!(err.contains("rotate_after_encryptions"), "{err}");
        let err = config(&[("KEYMESH_KMS__PRIMARY", "hsm")]).err().unwrap().to_string();
        assert!(err.contains("kms.primary"), "{err}");
    }

    #[test]
    fn the_redis_password_never_prints() {
        let c = config(&[("KEYMESH_KEY_SERVICE__REDIS_URL", "redis://:hunter2@cache:6379")]).unwrap();
        assert!(!format!("{:?}", c.key_service).contains("hunter2"));
        let raw: RawKeyService = KeymeshConfig::load(
            None,
            &[("KEYMESH_KEY_SERVICE__REDIS_URL".to_owned(), "redis://:hunter2@c".to_owned())].into(),
        )
        .unwrap()
        .service_section("key_service")
        .unwrap();
        assert!(!format!("{raw:?}").contains("hunter2"));
    }
}

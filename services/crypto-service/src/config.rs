//! crypto-service's own sections of the configuration file, `[dek_cache]` and `[crypto_service]`, and
//! everything it reads from the file, validated before anything binds.

use keymesh_config::KeymeshConfig;
use keymesh_mesh::config::{ConfigError, TokenParams, bounded, bounded_seconds};
use serde::Deserialize;
use std::time::Duration;

/// Everything crypto-service reads from the file, validated.
pub struct CryptoConfig {
    /// Token verification.
    pub tokens: TokenParams,
    /// The DEK cache.
    pub dek_cache: DekCacheParams,
    /// Request limits.
    pub limits: CryptoServiceParams,
}

impl CryptoConfig {
    /// Validates crypto-service's sections.
    pub fn from_file(config: &KeymeshConfig) -> Result<Self, ConfigError> {
        Ok(Self {
            tokens: TokenParams::from_raw(&config.tokens)?,
            dek_cache: DekCacheParams::from_raw(&config.service_section("dek_cache")?)?,
            limits: CryptoServiceParams::from_raw(&config.service_section("crypto_service")?)?,
        })
    }
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
    pub fn from_raw(raw: &RawDekCache) -> Result<Self, ConfigError> {
        let ttl = bounded_seconds("dek_cache.ttl_seconds", raw.ttl_seconds, 300, 1..=3600)?;
        let max_entries = raw.max_entries.unwrap_or(10_000);
        if max_entries == 0 {
            return Err(ConfigError::Invalid { field: "dek_cache.max_entries", reason: "must be at least 1".into() });
        }
        Ok(Self { max_entries, ttl })
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
    pub fn from_raw(raw: &RawCryptoService) -> Result<Self, ConfigError> {
        let limit = bounded(
            "crypto_service.unary_limit_bytes",
            raw.unary_limit_bytes,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config(pairs: &[(&str, &str)]) -> Result<CryptoConfig, ConfigError> {
        CryptoConfig::from_file(&KeymeshConfig::from_variables(pairs)?)
    }

    #[test]
    fn sections_validate_and_name_the_field() {
        let c = config(&[
            ("KEYMESH_DEK_CACHE__TTL_SECONDS", "60"),
            ("KEYMESH_CRYPTO_SERVICE__UNARY_LIMIT_BYTES", "1048576"),
        ])
        .unwrap();
        assert_eq!(c.dek_cache.ttl, Duration::from_secs(60));
        assert_eq!(c.limits.unary_limit, 1 << 20);
        assert_eq!(c.limits.max_message_size(), (4 << 20) + CryptoServiceParams::MESSAGE_OVERHEAD);
        let err = config(&[("KEYMESH_CRYPTO_SERVICE__UNARY_LIMIT_BYTES", "10")]).err().unwrap().to_string();
        assert!(err.contains("crypto_service.unary_limit_bytes"), "{err}");
        let err = config(&[("KEYMESH_DEK_CACHE__TTL_SECONDS", "0")]).err().unwrap().to_string();
        assert!(err.contains("dek_cache.ttl_seconds"), "{err}");
        let err = config(&[("KEYMESH_DEK_CACHE__TTL", "5")]).err().unwrap().to_string();
        assert!(err.contains("dek_cache") && err.contains("ttl"), "{err}");
    }
}

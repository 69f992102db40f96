//! Unwrapped DEKs in memory: bounded, expiring, zeroized when evicted (the last reference to a
//! `SecretKey` zeroizes it on drop). Concurrent misses for one key share a single key-service call.

use std::{sync::Arc, time::Duration};

use keymesh_crypto::{SecretKey, SymmetricAlgorithm};
use keymesh_mesh::{client::MeshChannel, config::DekCacheParams};
use keymesh_proto::v1::{self as pb, key_service_client::KeyServiceClient};
use moka::future::Cache;

use crate::error::CryptoServiceError;

/// A DEK with what crypto-service needs to know about it.
pub struct CachedDek {
    /// Key id.
    pub key_id: String,
    /// Key name (the ciphertext's "ctx" and what permissions match).
    pub key_name: String,
    /// Version.
    pub version: u32,
    /// Algorithm.
    pub algorithm: SymmetricAlgorithm,
    /// The material.
    pub material: SecretKey,
    /// How long it may stay cached: key-service's word, capped by the configured TTL.
    ttl: Duration,
}

/// Each entry lives as long as its own `ttl`.
struct PerEntryTtl;

impl moka::Expiry<CacheKey, Arc<CachedDek>> for PerEntryTtl {
    fn expire_after_create(
        &self,
        _key: &CacheKey,
        value: &Arc<CachedDek>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(value.ttl)
    }
}

/// What a cached entry is looked up by: the caller's tenant, the key as named, the version (0: primary)
/// and the operation (which version states key-service accepted).
#[derive(Clone, PartialEq, Eq, Hash)]
struct CacheKey {
    tenant_id: String,
    key: String,
    version: u32,
    operation: i32,
}

/// The cache.
pub struct DekCache {
    keys: KeyServiceClient<MeshChannel>,
    cache: Cache<CacheKey, Arc<CachedDek>>,
    max_ttl: Duration,
}

/// What a lookup is for.
pub struct DekRequest<'a> {
    /// Caller's tenant.
    pub tenant_id: &'a str,
    /// Key name or id.
    pub key: &'a str,
    /// Version, 0 for the primary.
    pub version: u32,
    /// Operation.
    pub operation: pb::Operation,
    /// Application the call is for (audited by key-service).
    pub on_behalf_of: &'a str,
}

impl DekCache {
    /// An empty cache in front of key-service.
    pub fn new(keys: KeyServiceClient<MeshChannel>, params: DekCacheParams) -> Self {
        Self {
            keys,
            cache: Cache::builder().max_capacity(params.max_entries).expire_after(PerEntryTtl).build(),
            max_ttl: params.ttl,
        }
    }

    /// The DEK, from memory or key-service.
    pub async fn get(&self, request: DekRequest<'_>) -> Result<Arc<CachedDek>, CryptoServiceError> {
        let cache_key = CacheKey {
            tenant_id: request.tenant_id.to_owned(),
            key: request.key.to_owned(),
            version: request.version,
            operation: request.operation as i32,
        };
        self.cache.try_get_with(cache_key, self.fetch(&request)).await.map_err(|e: Arc<CryptoServiceError>| {
            match e.as_ref() {
                CryptoServiceError::KeyNotFound(k) => CryptoServiceError::KeyNotFound(k.clone()),
                CryptoServiceError::FailedPrecondition(m) => CryptoServiceError::FailedPrecondition(m.clone()),
                CryptoServiceError::KeyServiceUnavailable(m) => CryptoServiceError::KeyServiceUnavailable(m.clone()),
                other => CryptoServiceError::Internal(other.to_string()),
            }
        })
    }

    async fn fetch(&self, request: &DekRequest<'_>) -> Result<Arc<CachedDek>, CryptoServiceError> {
        let mut keys = self.keys.clone();
        let mut response = keys
            .get_data_key(pb::GetDataKeyRequest {
                tenant_id: request.tenant_id.to_owned(),
                key: request.key.to_owned(),
                version: request.version,
                operation: request.operation as i32,
                on_behalf_of: request.on_behalf_of.to_owned(),
            })
            .await
            .map_err(|status| match status.code() {
                tonic::Code::NotFound => CryptoServiceError::KeyNotFound(request.key.to_owned()),
                tonic::Code::FailedPrecondition => CryptoServiceError::FailedPrecondition(status.message().to_owned()),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => {
                    CryptoServiceError::KeyServiceUnavailable(status.message().to_owned())
                }
                code => CryptoServiceError::Internal(format!("key-service answered {code:?}: {}", status.message())),
            })?
            .into_inner();
        // Move the material out of the message so only the zeroizing copy remains.
        let material = SecretKey::from_bytes(std::mem::take(&mut response.key_material));
        let algorithm = pb::Algorithm::try_from(response.algorithm)
            .ok()
            .and_then(SymmetricAlgorithm::from_proto)
            .ok_or_else(|| {
                CryptoServiceError::FailedPrecondition(format!("key {:?} is not an encryption key", response.key_name))
            })?;
        if material.len() != algorithm.key_len() {
            return Err(CryptoServiceError::Internal("key-service returned material of the wrong length".into()));
        }
        Ok(Arc::new(CachedDek {
            key_id: response.key_id,
            key_name: response.key_name,
            version: response.version,
            algorithm,
            material,
            ttl: self.max_ttl.min(Duration::from_secs(u64::from(response.cache_ttl_seconds))),
        }))
    }
}

//! Unwrapped DEKs in memory: bounded, expiring, zeroized when evicted (the last reference to a
//! `SecretKey` zeroizes it on drop). Concurrent misses for one key share a single key-service call.
//!
//! Entries leave early in two cases: key-service reports the key changed (`WatchKeyChanges`: disabled,
//! rotated, destroyed…), and an encryption entry has used up the block of encryptions key-service granted
//! with it, which is how key-service counts a version's use towards its safe bound without hearing of
//! every encryption.
//!
//! When the change stream breaks (key-service restarting, a failover), what is cached keeps serving until its
//! TTL and within its block, so Encrypt and Decrypt of warm keys ride out the outage; a notice that arrived
//! before the break was applied already. Changes made while the stream was down were missed, so the cache is
//! emptied when the stream comes back, before any new notice.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use keymesh_crypto::{
    KeyAlgorithm, SecretKey,
    ciphertext::{KeyRef, PreparedKey},
    keypair::{PrivateKey, PublicKey},
};
use keymesh_mesh::client::MeshChannel;
use keymesh_proto::algorithm::FromProto;
use opentelemetry::KeyValue;

use crate::config::DekCacheParams;
use keymesh_policy::CompiledPolicy;
use keymesh_proto::v1::{self as pb, key_service_client::KeyServiceClient};
use moka::future::Cache;

use crate::error::CryptoServiceError;

/// `keymesh.dek_cache.lookups` by `result` (hit or miss): how often a data key came from memory rather than
/// from key-service.
static LOOKUPS: std::sync::LazyLock<opentelemetry::metrics::Counter<u64>> = std::sync::LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .u64_counter("keymesh.dek_cache.lookups")
        .with_description("Data-key lookups in crypto-service's cache, by result (hit or miss)")
        .build()
});

/// `keymesh.dek_cache.evictions` by `cause`: `expired` (TTL), `size` (the cache was full), `invalidated` (a key
/// change, a used-up encryption block, a lost change stream) and `replaced`.
static EVICTIONS: std::sync::LazyLock<opentelemetry::metrics::Counter<u64>> = std::sync::LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .u64_counter("keymesh.dek_cache.evictions")
        .with_description("Data keys that left crypto-service's cache, by cause")
        .build()
});

/// Whether crypto-service follows key-service's change stream now: `keymesh.dek_cache.change_stream.connected`
/// (1 or 0). While 0, cached keys serve until their TTL without hearing of changes.
static STREAM_CONNECTED: AtomicBool = AtomicBool::new(false);

fn register_stream_gauge() {
    static REGISTERED: std::sync::Once = std::sync::Once::new();
    REGISTERED.call_once(|| {
        opentelemetry::global::meter("keymesh")
            .u64_observable_gauge("keymesh.dek_cache.change_stream.connected")
            .with_description(
                "1 while crypto-service follows key-service's key changes; 0 while cached keys serve until their TTL",
            )
            .with_callback(|observer| observer.observe(u64::from(STREAM_CONNECTED.load(Ordering::Relaxed)), &[]))
            .build();
    });
}

fn count_eviction(cause: moka::notification::RemovalCause) {
    use moka::notification::RemovalCause;
    let cause = match cause {
        RemovalCause::Expired => "expired",
        RemovalCause::Size => "size",
        RemovalCause::Explicit => "invalidated",
        RemovalCause::Replaced => "replaced",
    };
    EVICTIONS.add(1, &[KeyValue::new("cause", cause)]);
}

/// A DEK with what crypto-service needs to know about it.
pub struct CachedDek {
    /// Key id.
    pub key_id: String,
    /// Key name (the ciphertext's "ctx" and what permissions match).
    pub key_name: String,
    /// Version.
    pub version: u32,
    /// Algorithm.
    pub algorithm: KeyAlgorithm,
    /// The material: a raw key, or a private key as PKCS#8 DER.
    pub material: SecretKey,
    /// The key's labels (policy rules see them).
    pub labels: std::collections::HashMap<String, String>,
    /// The key's policy, its rules compiled once.
    pub policy: Option<CompiledPolicy>,
    /// For asymmetric algorithms, the material parsed once (private key, public key) so that no request
    /// pays for parsing.
    pub key_pair: Option<(PrivateKey, PublicKey)>,
    /// For symmetric algorithms, what sealing and opening under this version need, prepared once (the header
    /// around the nonce, the key commitment, keyed AES-GCM contexts).
    pub prepared: Option<PreparedKey>,
    /// How long it may stay cached: key-service's word, capped by the configured TTL.
    ttl: Duration,
    /// Encryptions left in the block key-service granted (0 for material fetched to decrypt).
    encryptions_left: AtomicU64,
}

impl CachedDek {
    /// Takes one encryption from the granted block; false once it is used up.
    fn take_encryption(&self) -> bool {
        self.encryptions_left.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| left.checked_sub(1)).is_ok()
    }
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
#[derive(Clone, Copy)]
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
        for cause in ["expired", "size", "invalidated", "replaced"] {
            EVICTIONS.add(0, &[KeyValue::new("cause", cause)]);
        }
        Self {
            keys,
            cache: Cache::builder()
                .max_capacity(params.max_entries)
                .expire_after(PerEntryTtl)
                .support_invalidation_closures()
                .eviction_listener(|_, _, cause| count_eviction(cause))
                .build(),
            max_ttl: params.ttl,
        }
    }

    /// The DEK for one encryption, counted against the block key-service granted; a used-up entry is
    /// dropped and the next block fetched.
    pub async fn get_for_encryption(&self, request: DekRequest<'_>) -> Result<Arc<CachedDek>, CryptoServiceError> {
        for _ in 0..3 {
            let dek = self.get(request).await?;
            if dek.take_encryption() {
                return Ok(dek);
            }
            let used_up = dek.clone();
            let _ = self.cache.invalidate_entries_if(move |_, entry| Arc::ptr_eq(entry, &used_up));
        }
        Err(CryptoServiceError::KeyServiceUnavailable("no encryption block granted; retry".into()))
    }

    /// Drops every entry of these keys.
    pub async fn forget_keys(&self, key_ids: Vec<String>) {
        // Only fails when the cache was built without closure support, which `new` always enables.
        let _ = self.cache.invalidate_entries_if(move |_, entry| key_ids.contains(&entry.key_id));
        self.release_forgotten().await;
    }

    /// Drops everything.
    pub async fn forget_all(&self) {
        self.cache.invalidate_all();
        self.release_forgotten().await;
    }

    /// Invalidated entries are unreachable at once, but moka frees them (and so zeroizes the material) only
    /// in its housekeeping, which a quiet cache may not run for a long time: run it now.
    async fn release_forgotten(&self) {
        self.cache.run_pending_tasks().await;
    }

    /// Follows key-service's change stream until the process ends, reconnecting with backoff. While it is
    /// down, cached keys keep serving until their TTL; whenever it (re)starts, everything cached is dropped
    /// first: changes made while it was down were missed.
    pub fn spawn_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        register_stream_gauge();
        let cache = Arc::clone(self);
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(200);
            let mut logged = false;
            loop {
                let mut keys = cache.keys.clone();
                match keys.watch_key_changes(pb::WatchKeyChangesRequest {}).await {
                    Ok(stream) => {
                        let mut stream = stream.into_inner();
                        // Whatever was cached before this stream began may have changed unheard.
                        cache.forget_all().await;
                        STREAM_CONNECTED.store(true, Ordering::Relaxed);
                        if logged {
                            tracing::info!("following key changes again; the cache starts afresh");
                        }
                        backoff = Duration::from_millis(200);
                        while let Ok(Some(message)) = stream.message().await {
                            if message.reset {
                                cache.forget_all().await;
                            }
                            if !message.key_ids.is_empty() {
                                cache.forget_keys(message.key_ids).await;
                            }
                        }
                        STREAM_CONNECTED.store(false, Ordering::Relaxed);
                        tracing::warn!("lost key-service's change stream; cached keys serve until their TTL");
                        logged = true;
                    }
                    Err(status) => {
                        STREAM_CONNECTED.store(false, Ordering::Relaxed);
                        if !logged {
                            tracing::warn!(code = ?status.code(), "cannot follow key changes; cached keys serve until their TTL");
                            logged = true;
                        }
                    }
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }

    /// The DEK, from memory or key-service.
    pub async fn get(&self, request: DekRequest<'_>) -> Result<Arc<CachedDek>, CryptoServiceError> {
        let cache_key = CacheKey {
            tenant_id: request.tenant_id.to_owned(),
            key: request.key.to_owned(),
            version: request.version,
            operation: request.operation as i32,
        };
        // A lookup that runs the fetch is a miss; one served from memory, or by a concurrent lookup's fetch,
        // is a hit.
        let fetched = std::sync::atomic::AtomicBool::new(false);
        let fetch = async {
            fetched.store(true, std::sync::atomic::Ordering::Relaxed);
            self.fetch(&request).await
        };
        let result = self.cache.try_get_with(cache_key, fetch).await;
        let outcome = if fetched.load(std::sync::atomic::Ordering::Relaxed) { "miss" } else { "hit" };
        LOOKUPS.add(1, &[KeyValue::new("result", outcome)]);
        result.map_err(|e: Arc<CryptoServiceError>| match e.as_ref() {
            CryptoServiceError::KeyNotFound(k) => CryptoServiceError::KeyNotFound(k.clone()),
            CryptoServiceError::Denied(m) => CryptoServiceError::Denied(m.clone()),
            CryptoServiceError::InvalidArgument { field, reason } => {
                CryptoServiceError::InvalidArgument { field, reason: reason.clone() }
            }
            CryptoServiceError::FailedPrecondition(m) => CryptoServiceError::FailedPrecondition(m.clone()),
            CryptoServiceError::KeyServiceUnavailable(m) => CryptoServiceError::KeyServiceUnavailable(m.clone()),
            other => CryptoServiceError::Internal(other.to_string()),
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
                tonic::Code::PermissionDenied => CryptoServiceError::Denied(status.message().to_owned()),
                // key_use checks every reference first, so this is a rule of key-service's that this one does
                // not know yet: the caller's mistake all the same, never an internal error.
                tonic::Code::InvalidArgument => CryptoServiceError::InvalidArgument {
                    field: "key",
                    reason: format!("key-service refused the key reference: {}", status.message()),
                },
                tonic::Code::FailedPrecondition => CryptoServiceError::FailedPrecondition(status.message().to_owned()),
                // A call cut off with its connection (key-service restarting mid-call) is a status made here, with
                // the transport error as its source, whatever its code: the peer went away, which the caller should
                // retry. What key-service itself answered keeps its meaning.
                code if matches!(
                    code,
                    tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                ) || std::error::Error::source(&status).is_some() =>
                {
                    CryptoServiceError::KeyServiceUnavailable(status.message().to_owned())
                }
                code => CryptoServiceError::Internal(format!("key-service answered {code:?}: {}", status.message())),
            })?
            .into_inner();
        // Move the material out of the message so only the zeroizing copy remains.
        let material = SecretKey::from_bytes(std::mem::take(&mut response.key_material));
        let algorithm = KeyAlgorithm::from_i32(response.algorithm).ok_or_else(|| {
            CryptoServiceError::FailedPrecondition(format!(
                "key {:?} uses an algorithm this crypto-service lacks; upgrade it",
                response.key_name
            ))
        })?;
        let wrong = |e: keymesh_crypto::CryptoError| {
            CryptoServiceError::Internal(format!("key-service returned material that does not fit: {e}"))
        };
        // A stored policy was checked when it was set; one this build cannot compile fails closed.
        let policy = match response.policy.as_ref() {
            Some(policy) => Some(CompiledPolicy::compile("key", policy).map_err(|e| {
                CryptoServiceError::FailedPrecondition(format!(
                    "the policy of key {:?} cannot be evaluated here ({e}); update the key's policy",
                    response.key_name
                ))
            })?),
            None => None,
        };
        let (key_pair, prepared) = match algorithm {
            KeyAlgorithm::Symmetric(symmetric) => {
                algorithm.check_material(&material).map_err(wrong)?;
                let key_ref = KeyRef { key_id: response.key_id.clone(), version: response.version };
                (None, Some(PreparedKey::new(&material, &response.key_name, &key_ref, symmetric).map_err(wrong)?))
            }
            _ if algorithm.is_asymmetric() => {
                let private = algorithm.private_key(&material).map_err(wrong)?;
                let public = private.public_key().map_err(wrong)?;
                (Some((private, public)), None)
            }
            _ => {
                algorithm.check_material(&material).map_err(wrong)?;
                (None, None)
            }
        };
        Ok(Arc::new(CachedDek {
            key_id: response.key_id,
            key_name: response.key_name,
            version: response.version,
            algorithm,
            material,
            key_pair,
            prepared,
            labels: std::mem::take(&mut response.labels),
            policy,
            ttl: self.max_ttl.min(Duration::from_secs(u64::from(response.cache_ttl_seconds))),
            encryptions_left: AtomicU64::new(response.encryption_budget),
        }))
    }
}

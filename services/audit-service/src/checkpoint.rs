//! Signed checkpoints and retention.
//!
//! The hash chain shows that no record was edited, removed or moved within the chain, but whoever can
//! rewrite the table can rewrite the whole chain from the point of a change. A checkpoint is a statement,
//! signed with a key the KMS holds, that record N had hash H at time T: a rewritten chain no longer matches
//! the checkpoints, and forging new ones needs the KMS. The public keys are published by ListCheckpoints, so
//! anyone with an export can check them.
//!
//! Checkpoints are also what retention prunes to: records older than the retention period are deleted up to
//! the newest checkpoint among them, which stays as the anchor the rest of the chain is verified from.

use std::{collections::HashMap, sync::Arc, time::Duration};

use keymesh_kms::{Keyring, WrapContext, WrapSet, WrappedKey};
use keymesh_store::{
    StoreError,
    audit::AuditRepository,
    entity::{audit_checkpoint, audit_checkpoint_key},
    now_millis,
};
use openssl::{
    pkey::{Id, PKey, Private, Public},
    sign::{Signer, Verifier},
};

use crate::metrics::ChainMetrics;

const ALGORITHM: &str = "Ed25519";
/// How often retention runs.
const PRUNE_PERIOD: Duration = Duration::from_secs(3600);

/// Why the checkpoint key could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The KMS refused to wrap or unwrap the key.
    #[error("checkpoint key: {0}")]
    Kms(#[from] keymesh_kms::KmsError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// OpenSSL failed, or a stored key is malformed.
    #[error("checkpoint key: {0}")]
    Key(String),
}

fn key_error(e: impl std::fmt::Display) -> CheckpointError {
    CheckpointError::Key(e.to_string())
}

/// The exact bytes a checkpoint signs.
pub fn statement(sequence: i64, hash: &str, signed_at: i64) -> Vec<u8> {
    format!("keymesh-audit-checkpoint/v1\n{sequence}\n{hash}\n{signed_at}\n").into_bytes()
}

fn wrap_context(kid: &str) -> WrapContext {
    WrapContext { tenant_id: "_system".into(), key_id: kid.into(), version: 1, algorithm: ALGORITHM.into() }
}

/// The published checkpoint keys, parsed once for a whole verification.
pub struct VerifyingKeys(HashMap<String, PKey<Public>>);

impl VerifyingKeys {
    /// Parses the stored public keys; one that does not parse verifies nothing.
    pub fn new(keys: &[audit_checkpoint_key::Model]) -> Self {
        Self(
            keys.iter()
                .filter_map(|k| {
                    PKey::public_key_from_raw_bytes(&k.public_key, Id::ED25519).ok().map(|p| (k.kid.clone(), p))
                })
                .collect(),
        )
    }

    /// Whether `checkpoint` is signed by one of the keys.
    pub fn signed(&self, checkpoint: &audit_checkpoint::Model) -> bool {
        let Some(public) = self.0.get(&checkpoint.kid) else {
            return false;
        };
        let message = statement(checkpoint.sequence, &checkpoint.hash, checkpoint.signed_at);
        Verifier::new_without_digest(public)
            .and_then(|mut verifier| verifier.verify_oneshot(&checkpoint.signature, &message))
            .unwrap_or(false)
    }
}

/// Signs checkpoints of the chain with this replica's key.
pub struct Checkpointer {
    repo: AuditRepository,
    kid: String,
    key: PKey<Private>,
    metrics: Arc<ChainMetrics>,
}

impl Checkpointer {
    /// Uses the newest checkpoint key, creating (and wrapping) one on a fresh database.
    pub async fn load_or_create(
        repo: AuditRepository,
        kms: &Keyring,
        metrics: Arc<ChainMetrics>,
    ) -> Result<Self, CheckpointError> {
        let newest = match repo.checkpoint_keys().await?.pop() {
            Some(key) => key,
            None => {
                let key = create_key(kms).await?;
                repo.insert_checkpoint_key(key.clone()).await?;
                tracing::info!(kid = %key.kid, "created the audit checkpoint key");
                key
            }
        };
        let first = WrappedKey {
            backend: newest.kek_backend.clone(),
            kek_id: newest.kek_id.clone(),
            ciphertext: newest.wrapped_private_key.clone(),
        };
        let wraps = WrapSet::from_columns(first, newest.extra_wraps.as_deref()).map_err(key_error)?;
        let pkcs8 = kms.unwrap(&wraps, &wrap_context(&newest.kid)).await?;
        let key = PKey::private_key_from_pkcs8(pkcs8.expose_secret()).map_err(key_error)?;
        Ok(Self { repo, kid: newest.kid, key, metrics })
    }

    /// Signs the head of the chain when it moved since the last checkpoint; returns the new checkpoint.
    pub async fn checkpoint(&self) -> Result<Option<audit_checkpoint::Model>, CheckpointError> {
        let Some((sequence, hash)) = self.repo.head().await? else {
            return Ok(None);
        };
        self.metrics.observed_head(sequence);
        let latest = self.repo.latest_checkpoint().await?;
        if let Some(latest) = &latest {
            self.metrics.observed_checkpoint(latest.sequence, latest.signed_at);
        }
        if latest.is_some_and(|c| c.sequence >= sequence) {
            return Ok(None);
        }
        let signed_at = now_millis();
        let signature = Signer::new_without_digest(&self.key)
            .and_then(|mut signer| signer.sign_oneshot_to_vec(&statement(sequence, &hash, signed_at)))
            .map_err(key_error)?;
        let checkpoint = audit_checkpoint::Model { sequence, hash, signed_at, kid: self.kid.clone(), signature };
        self.repo.insert_checkpoint(checkpoint.clone()).await?;
        self.metrics.observed_checkpoint(sequence, signed_at);
        Ok(Some(checkpoint))
    }

    /// Checkpoints every `interval`, and prunes records older than `retention` at start and every hour.
    pub fn spawn(self: Arc<Self>, interval: Duration, retention: Duration) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut next_prune = tokio::time::Instant::now();
            loop {
                ticker.tick().await;
                if let Err(e) = self.checkpoint().await {
                    tracing::warn!(error = %e, "cannot sign an audit checkpoint; retrying next period");
                }
                if tokio::time::Instant::now() >= next_prune {
                    next_prune += PRUNE_PERIOD;
                    self.prune(retention).await;
                }
            }
        })
    }

    async fn prune(&self, retention: Duration) {
        let cutoff = now_millis().saturating_sub(i64::try_from(retention.as_millis()).unwrap_or(i64::MAX));
        match self.repo.prune(cutoff).await {
            Ok(Some((anchor, deleted))) if deleted > 0 => {
                tracing::info!(
                    deleted,
                    anchor,
                    "pruned audit records past retention; the chain now starts after the anchor checkpoint"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "audit retention failed; retrying in an hour"),
        }
    }
}

async fn create_key(kms: &Keyring) -> Result<audit_checkpoint_key::Model, CheckpointError> {
    let (kid, public, private) = keymesh_crypto::keypair::service_signing_key("audit-ed25519").map_err(key_error)?;
    let (first, extra_wraps) = kms.wrap(&private, &wrap_context(&kid)).await?.to_columns();
    Ok(audit_checkpoint_key::Model {
        kid,
        algorithm: ALGORITHM.into(),
        public_key: public,
        wrapped_private_key: first.ciphertext,
        kek_backend: first.backend,
        kek_id: first.kek_id,
        extra_wraps,
        created_at: now_millis(),
    })
}

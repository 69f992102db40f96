//! The background sweep: destroys keys and versions whose deletion time has come (crypto-shredding: the
//! wrapped material is erased from the database, then from every cache), rotates keys whose rotation
//! period has passed, and retires versions older than the policy's `max_decryption_age`. Each key is
//! handled under its row lock and re-checked there, so replicas sweeping together act once.

use std::time::Duration;

use keymesh_proto::v1 as pb;
use keymesh_store::{
    keys::{KeyLookup, PendingDeletion},
    now_millis,
};

use crate::{
    error::KeyError,
    key_store::KeyStore,
    lifecycle,
    metrics::{self, KeysByState},
};

/// Keys handled per sweep; the next sweep takes the rest.
const BATCH: u64 = 500;

/// Sweeps until the process ends, and counts the keys by state after each sweep for `keymesh.keys`.
pub fn spawn(store: KeyStore, period: Duration) -> tokio::task::JoinHandle<()> {
    metrics::rotations_started();
    let keys_by_state = KeysByState::default();
    keys_by_state.register_gauge();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = sweep(&store).await {
                tracing::error!(%error, "maintenance sweep failed; retrying next period");
            }
            match store.repo().count_by_state().await {
                Ok(counts) => keys_by_state.set(counts),
                Err(error) => tracing::warn!(%error, "cannot count keys by state"),
            }
        }
    })
}

/// One sweep over every key with something due.
pub async fn sweep(store: &KeyStore) -> Result<usize, KeyError> {
    let now = now_millis();
    let pending = PendingDeletion {
        key_state: pb::KeyState::PendingDeletion as i32,
        version_state: pb::KeyVersionState::PendingDeletion as i32,
    };
    let due = store.repo().due(now, BATCH, pending).await?;
    let mut handled = 0;
    for key_id in due {
        match maintain(store, &key_id, now).await {
            Ok(()) => handled += 1,
            Err(error) => tracing::error!(%key_id, %error, "maintenance of key failed"),
        }
    }
    Ok(handled)
}

async fn maintain(store: &KeyStore, key_id: &str, now: i64) -> Result<(), KeyError> {
    let mut locked = store.lock(KeyLookup::ById(key_id)).await?;
    let destroyed = lifecycle::destroy_due(&mut locked.record, now);
    let due = lifecycle::maintenance_due(&locked.record, now);
    if let Some(min) = due.min_decryption_version {
        lifecycle::raise_min_decryption_version(&mut locked.record, min)?;
    }
    if due.rotate {
        let next = locked.record.next_version();
        let version = store.generate_version(&locked.record, next).await?;
        lifecycle::rotate(&mut locked.record, version, now)?;
    }
    let rotated = due.rotate;
    lifecycle::refresh_maintenance(&mut locked.record, now);
    let record = store.commit(locked).await?;
    if rotated {
        metrics::rotated(metrics::RotationReason::Scheduled);
    }
    if !destroyed.is_empty() {
        tracing::info!(%key_id, versions = ?destroyed, "destroyed key material");
    }
    if due.rotate {
        tracing::info!(%key_id, version = record.key.primary_version, "rotated key on schedule");
    }
    if let Some(min) = due.min_decryption_version {
        tracing::info!(%key_id, min, "retired versions older than max_decryption_age");
    }
    Ok(())
}

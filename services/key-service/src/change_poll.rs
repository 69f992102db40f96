//! The poll that brings other replicas' changes to this one: every replica reads the database for keys whose
//! `updated_at` moved, and for each one drops its cached record (in Redis or memory) and its DEKs and
//! publishes the change on its feed (`changes`).
//!
//! The poll re-reads a window of a few seconds behind its cursor, so a record cached by a reader that read
//! the database just before a change is dropped again, and its cursor does not move while Redis cannot be
//! told, so changes made during a Redis outage are invalidated once Redis is back.

use std::time::Duration;

use crate::{changes::OVERLAP_MS, error::KeyError, key_store::KeyStore};

/// Most changes read per poll.
const POLL_LIMIT: u64 = 1_000;

/// Polls for changes until the process ends.
pub fn spawn_poller(store: KeyStore, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut cursor = keymesh_store::now_millis();
        let mut failing = false;
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match poll_once(&store, cursor).await {
                Ok(next) => {
                    if failing {
                        tracing::info!("change poll recovered");
                        failing = false;
                    }
                    cursor = next;
                }
                Err(error) => {
                    if !failing {
                        tracing::error!(%error, "change poll failed; retrying every poll period");
                        failing = true;
                    }
                }
            }
        }
    })
}

/// One poll: invalidates and publishes what changed since `cursor - OVERLAP_MS`; returns the next cursor.
pub async fn poll_once(store: &KeyStore, cursor: i64) -> Result<i64, KeyError> {
    let changes = store.repo().changed_since(cursor - OVERLAP_MS, POLL_LIMIT).await?;
    if changes.is_empty() {
        return Ok(cursor);
    }
    let ids: Vec<String> = changes.iter().map(|c| c.key_id.clone()).collect();
    for change in &changes {
        store.feed().publish(&change.key_id, &change.tenant_id, change.revision);
    }
    if !store.forget(&ids).await {
        // Redis did not hear it: keep the cursor so the next poll tells it again.
        return Ok(cursor);
    }
    Ok(changes.iter().map(|c| c.updated_at).max().unwrap_or(cursor).max(cursor))
}

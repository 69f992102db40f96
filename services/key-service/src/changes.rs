//! How a change to a key reaches every cache. The replica that commits a change publishes it at once; every
//! replica also polls the database for keys whose `updated_at` moved, and for each one drops its cached
//! record (in Redis or memory) and its DEKs and tells the crypto-services watching it
//! (`KeyService.WatchKeyChanges`), so a key disabled or destroyed through one replica stops working
//! through all of them within one poll period.
//!
//! The poll re-reads a window of a few seconds behind its cursor, so a record cached by a reader that read
//! the database just before a change is dropped again, and its cursor does not move while Redis cannot be
//! told, so changes made during a Redis outage are invalidated once Redis is back.

use std::{sync::Arc, time::Duration};

use tokio::sync::broadcast;

use crate::key_store::KeyStore;

/// How far behind its cursor the poll looks again.
const OVERLAP_MS: i64 = 5_000;
/// Most changes read per poll.
const POLL_LIMIT: u64 = 1_000;

/// One key that changed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyChanged {
    /// Key id.
    pub key_id: String,
    /// Its tenant.
    pub tenant_id: String,
    /// Its revision after the change.
    pub revision: i64,
}

/// Fan-out of key changes to watchers in this process.
#[derive(Clone)]
pub struct ChangeFeed {
    sender: broadcast::Sender<Arc<KeyChanged>>,
    /// Last revision published per key, so the poll does not repeat what was already sent.
    published: moka::sync::Cache<String, i64>,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        Self::new()
    }
}

impl ChangeFeed {
    /// A feed with no watchers.
    pub fn new() -> Self {
        let (sender, _) = broadcast::channel(4096);
        Self {
            sender,
            published: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(Duration::from_millis(4 * OVERLAP_MS as u64))
                .build(),
        }
    }

    /// Publishes a change unless this revision (or a later one) was already published.
    pub fn publish(&self, key_id: &str, tenant_id: &str, revision: i64) {
        if self.published.get(key_id).is_some_and(|seen| seen >= revision) {
            return;
        }
        self.published.insert(key_id.to_owned(), revision);
        // No receivers is fine: nobody is watching.
        let _ = self.sender.send(Arc::new(KeyChanged {
            key_id: key_id.to_owned(),
            tenant_id: tenant_id.to_owned(),
            revision,
        }));
    }

    /// A new watcher. A watcher that falls behind gets `Lagged` and must drop everything it cached.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<KeyChanged>> {
        self.sender.subscribe()
    }
}

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
pub async fn poll_once(store: &KeyStore, cursor: i64) -> Result<i64, crate::error::KeyError> {
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

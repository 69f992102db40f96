//! How a change to a key reaches every cache. The replica that commits a change publishes it at once on this
//! feed, which tells the crypto-services watching it (`KeyService.WatchKeyChanges`); every replica also
//! polls the database for what other replicas changed (`change_poll`), so a key disabled or destroyed
//! through one replica stops working through all of them within one poll period.

use std::{sync::Arc, time::Duration};

use tokio::sync::broadcast;

/// How far behind its cursor the poll (`change_poll`) looks again.
pub const OVERLAP_MS: i64 = 5_000;

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

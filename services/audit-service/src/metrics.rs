//! audit-service's metrics: records appended, the chain's head sequence and how long records have waited for a
//! signed checkpoint. The head moves with every append here and with the checkpointer's read of the database
//! (which also sees other replicas' appends).

use std::{
    sync::{
        Arc, LazyLock,
        atomic::{AtomicI64, Ordering},
    },
    time::Instant,
};

use keymesh_store::now_millis;
use opentelemetry::metrics::Counter;

/// `keymesh.audit.records.appended`: events newly stored in the chain (re-sent duplicates are not counted).
static APPENDED: LazyLock<Counter<u64>> = LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .u64_counter("keymesh.audit.records.appended")
        .with_description("Audit events appended to the hash chain (duplicates not counted)")
        .build()
});

/// What the chain's gauges read; -1 until known.
pub struct ChainMetrics {
    head: AtomicI64,
    /// The sequence the newest checkpoint signs, and when it was signed (ms since the epoch).
    checkpointed: AtomicI64,
    checkpoint_signed_at_ms: AtomicI64,
    started: Instant,
}

impl ChainMetrics {
    /// Nothing known yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            head: AtomicI64::new(-1),
            checkpointed: AtomicI64::new(-1),
            checkpoint_signed_at_ms: AtomicI64::new(-1),
            started: Instant::now(),
        })
    }

    /// `accepted` events were appended, the last at `head`.
    pub fn appended(&self, accepted: u32, head: Option<i64>) {
        APPENDED.add(u64::from(accepted), &[]);
        if let Some(head) = head {
            self.head.fetch_max(head, Ordering::Relaxed);
        }
    }

    /// The head as the database has it.
    pub fn observed_head(&self, head: i64) {
        self.head.fetch_max(head, Ordering::Relaxed);
    }

    /// The newest checkpoint: the sequence it signs and when it was signed.
    pub fn observed_checkpoint(&self, sequence: i64, signed_at_ms: i64) {
        self.checkpointed.fetch_max(sequence, Ordering::Relaxed);
        self.checkpoint_signed_at_ms.fetch_max(signed_at_ms, Ordering::Relaxed);
    }

    /// How long records beyond the newest checkpoint have waited for one: 0 when every record is signed (a
    /// quiet chain needs no new checkpoint), else the age of the newest checkpoint, or the time since start
    /// when none was signed yet. `None` before the head is known.
    fn unsigned_for_seconds(&self) -> Option<f64> {
        let head = self.head.load(Ordering::Relaxed);
        if head < 0 {
            return None;
        }
        if self.checkpointed.load(Ordering::Relaxed) >= head {
            return Some(0.0);
        }
        let signed_at = self.checkpoint_signed_at_ms.load(Ordering::Relaxed);
        Some(if signed_at >= 0 {
            (now_millis() - signed_at).max(0) as f64 / 1000.0
        } else {
            self.started.elapsed().as_secs_f64()
        })
    }

    /// Registers `keymesh.audit.chain.head` (sequence) and `keymesh.audit.checkpoint.age` (seconds; see
    /// [`ChainMetrics::unsigned_for_seconds`]) for the life of the process.
    pub fn register_gauges(self: &Arc<Self>) {
        let meter = opentelemetry::global::meter("keymesh");
        let (head, age) = (self.clone(), self.clone());
        meter
            .u64_observable_gauge("keymesh.audit.chain.head")
            .with_description("Sequence number of the newest record of the audit hash chain")
            .with_callback(move |observer| {
                let head = head.head.load(Ordering::Relaxed);
                if head >= 0 {
                    observer.observe(head as u64, &[]);
                }
            })
            .build();
        meter
            .f64_observable_gauge("keymesh.audit.checkpoint.age")
            .with_unit("s")
            .with_description("How long audit records have waited for a signed checkpoint (0 when all are signed)")
            .with_callback(move |observer| {
                if let Some(seconds) = age.unsigned_for_seconds() {
                    observer.observe(seconds, &[]);
                }
            })
            .build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_checkpoint_age_counts_only_while_records_wait() {
        let metrics = ChainMetrics::new();
        assert_eq!(metrics.unsigned_for_seconds(), None, "nothing known");
        metrics.observed_head(10);
        assert!(metrics.unsigned_for_seconds().is_some_and(|s| s >= 0.0), "waiting since start");
        metrics.observed_checkpoint(10, now_millis() - 5_000);
        assert_eq!(metrics.unsigned_for_seconds(), Some(0.0), "all signed: a quiet chain is not stale");
        metrics.appended(2, Some(12));
        let age = metrics.unsigned_for_seconds().unwrap();
        assert!((5.0..6.0).contains(&age), "the new records wait since the last checkpoint: {age}");
    }
}

//! audit-service's metrics: records appended, the chain's head sequence and the age of the newest signed
//! checkpoint. The head moves with every append here and with the checkpointer's read of the database (which
//! also sees other replicas' appends); a checkpoint older than a few intervals means the chain is not being
//! signed.

use std::sync::{
    Arc, LazyLock,
    atomic::{AtomicI64, Ordering},
};

use keymesh_store::now_millis;
use opentelemetry::metrics::{Counter, ObservableGauge};

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
    checkpoint_signed_at_ms: AtomicI64,
}

/// The gauges, reported while they are held.
pub struct ChainGauges {
    _head: ObservableGauge<u64>,
    _checkpoint_age: ObservableGauge<f64>,
}

impl ChainMetrics {
    /// Nothing known yet.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { head: AtomicI64::new(-1), checkpoint_signed_at_ms: AtomicI64::new(-1) })
    }

    /// `accepted` events were appended, the last at `head`.
    pub fn appended(&self, accepted: u32, head: Option<i64>) {
        APPENDED.add(u64::from(accepted), &[]);
        if let Some(head) = head {
            self.head.fetch_max(head, Ordering::Relaxed);
        }
    }

    /// The head and the newest checkpoint as the database has them.
    pub fn observed(&self, head: Option<i64>, checkpoint_signed_at_ms: Option<i64>) {
        if let Some(head) = head {
            self.head.fetch_max(head, Ordering::Relaxed);
        }
        if let Some(signed_at) = checkpoint_signed_at_ms {
            self.checkpoint_signed_at_ms.fetch_max(signed_at, Ordering::Relaxed);
        }
    }

    /// `keymesh.audit.chain.head` (sequence) and `keymesh.audit.checkpoint.age` (seconds).
    pub fn gauges(self: &Arc<Self>) -> ChainGauges {
        let meter = opentelemetry::global::meter("keymesh");
        let (head, age) = (self.clone(), self.clone());
        ChainGauges {
            _head: meter
                .u64_observable_gauge("keymesh.audit.chain.head")
                .with_description("Sequence number of the newest record of the audit hash chain")
                .with_callback(move |observer| {
                    let head = head.head.load(Ordering::Relaxed);
                    if head >= 0 {
                        observer.observe(head as u64, &[]);
                    }
                })
                .build(),
            _checkpoint_age: meter
                .f64_observable_gauge("keymesh.audit.checkpoint.age")
                .with_unit("s")
                .with_description("Age of the newest signed checkpoint of the audit hash chain")
                .with_callback(move |observer| {
                    let signed_at = age.checkpoint_signed_at_ms.load(Ordering::Relaxed);
                    if signed_at >= 0 {
                        observer.observe((now_millis() - signed_at).max(0) as f64 / 1000.0, &[]);
                    }
                })
                .build(),
        }
    }
}

//! key-service's own metrics: where key records come from and how fast, rotations and the keys
//! by state. Labels come from closed lists (a tier, a reason, a state); no key name or id is ever a label.

use std::sync::{Arc, LazyLock, Mutex};

use keymesh_proto::v1 as pb;
use opentelemetry::{
    KeyValue,
    metrics::{Counter, Histogram},
};

use crate::{key_store::Source, record_cache::Tier};

/// `keymesh.key_records.lookup.duration` by `tier` (memory, redis, database): its count is the hits of each tier.
static RECORD_LOOKUPS: LazyLock<Histogram<f64>> = LazyLock::new(|| {
    keymesh_mesh::rpc_telemetry::seconds_histogram(
        "keymesh.key_records.lookup.duration",
        "Key-record lookups, by the tier that answered (memory, redis or database)",
    )
});

/// `keymesh.keys.rotations` by `reason`: `manual` (RotateKey), `scheduled` (rotation period), `usage` (the
/// version's encryption bound).
static ROTATIONS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .u64_counter("keymesh.keys.rotations")
        .with_description("Key rotations, by reason (manual, scheduled or usage)")
        .build()
});

/// Records one record lookup.
pub fn record_lookup(source: Source, seconds: f64) {
    let tier = match source {
        Source::Cache(Tier::Memory) => "memory",
        Source::Cache(Tier::Redis) => "redis",
        Source::Database => "database",
    };
    RECORD_LOOKUPS.record(seconds, &[KeyValue::new("tier", tier)]);
}

/// Why a key rotated.
#[derive(Clone, Copy)]
pub enum RotationReason {
    /// RotateKey.
    Manual,
    /// The key's rotation period passed.
    Scheduled,
    /// The version reached its encryption bound.
    Usage,
}

/// Puts every rotation reason on the endpoint at zero.
pub fn rotations_started() {
    for reason in [RotationReason::Manual, RotationReason::Scheduled, RotationReason::Usage] {
        ROTATIONS.add(0, &[KeyValue::new("reason", rotation_label(reason))]);
    }
}

fn rotation_label(reason: RotationReason) -> &'static str {
    match reason {
        RotationReason::Manual => "manual",
        RotationReason::Scheduled => "scheduled",
        RotationReason::Usage => "usage",
    }
}

/// Records one rotation.
pub fn rotated(reason: RotationReason) {
    ROTATIONS.add(1, &[KeyValue::new("reason", rotation_label(reason))]);
}

/// The latest count of keys by state, which the maintenance loop refreshes and `keymesh.keys` reports. Every
/// replica reports the whole database's count: aggregate with `max`, not `sum`.
#[derive(Clone, Default)]
pub struct KeysByState(Arc<Mutex<Option<StateCounts>>>);

/// (`KeyState` number, keys in it), as the database counted them.
type StateCounts = Vec<(i32, i64)>;

impl KeysByState {
    /// Stores a fresh count.
    pub fn set(&self, counts: Vec<(i32, i64)>) {
        if let Ok(mut held) = self.0.lock() {
            *held = Some(counts);
        }
    }

    /// Registers `keymesh.keys` by `state`, every state reported (0 when none) once a count exists.
    pub fn register_gauge(&self) {
        let held = self.0.clone();
        opentelemetry::global::meter("keymesh")
            .u64_observable_gauge("keymesh.keys")
            .with_description("Keys in the database, by state (every replica reports the same count)")
            .with_callback(move |observer| {
                let Ok(held) = held.lock() else { return };
                let Some(counts) = held.as_ref() else { return };
                for state in STATES {
                    let keys = counts.iter().filter(|(s, _)| *s == state as i32).map(|(_, n)| *n).sum::<i64>();
                    observer.observe(keys.max(0) as u64, &[KeyValue::new("state", state_label(state))]);
                }
            })
            .build();
    }
}

const STATES: [pb::KeyState; 5] = [
    pb::KeyState::Enabled,
    pb::KeyState::Disabled,
    pb::KeyState::PendingDeletion,
    pb::KeyState::Destroyed,
    pb::KeyState::PendingImport,
];

fn state_label(state: pb::KeyState) -> &'static str {
    match state {
        pb::KeyState::Enabled => "enabled",
        pb::KeyState::Disabled => "disabled",
        pb::KeyState::PendingDeletion => "pending_deletion",
        pb::KeyState::Destroyed => "destroyed",
        pb::KeyState::PendingImport => "pending_import",
        pb::KeyState::Unspecified => "unspecified",
    }
}

//! The writer of the audit trail: assigns sequence numbers, links each record to the previous one by
//! SHA-256, drops events already stored (same event id), and commits each batch atomically before it is
//! acknowledged. Replicas on one Postgres take turns under an advisory lock, so the chain stays one chain.

use crate::metrics::ChainMetrics;
use keymesh_proto::v1 as pb;
use keymesh_store::{StoreError, audit::AuditRepository, entity::audit_record, now_millis};
use prost::Message;
use sha2::{Digest, Sha256};
use std::sync::Arc;

/// Milliseconds since the epoch of a timestamp, or `None` when it does not fit.
pub fn timestamp_millis(t: &prost_types::Timestamp) -> Option<i64> {
    t.seconds.checked_mul(1000).and_then(|ms| ms.checked_add(i64::from(t.nanos) / 1_000_000))
}

/// The hash of a record: SHA-256 over the previous hash, the sequence and the encoded event.
pub fn record_hash(previous_hash: &str, sequence: i64, event: &[u8]) -> String {
    let mut hasher = Sha256::new();
    hasher.update(previous_hash.as_bytes());
    hasher.update(sequence.to_be_bytes());
    hasher.update(event);
    hex::encode(hasher.finalize())
}

/// Appends to the chain. Replicas may share one database: each batch is linked to the head read under the
/// database's append lock, never to a head remembered in memory.
pub struct ChainWriter {
    repo: AuditRepository,
    metrics: Arc<ChainMetrics>,
}

/// One event of an `Append` batch: decoded, and the bytes it arrived as.
pub struct ReceivedEvent {
    /// The decoded event (its columns, its checks).
    pub event: pb::AuditEvent,
    /// Its encoding as sent.
    pub bytes: prost::bytes::Bytes,
}

impl ReceivedEvent {
    /// The bytes to hash and store: those sent, when they are the event's own encoding (what every keymesh
    /// service sends), so that nothing is encoded twice; else the event encoded afresh, so that fields this
    /// version does not know never reach the trail unseen.
    fn stored_bytes(&self) -> Vec<u8> {
        if self.event.encoded_len() == self.bytes.len() { self.bytes.to_vec() } else { self.event.encode_to_vec() }
    }
}

/// The result of appending a batch.
pub struct Appended {
    /// Newly stored.
    pub accepted: u32,
    /// Already stored before.
    pub duplicates: u32,
}

impl ChainWriter {
    /// Appends to the chain stored in `repo`.
    pub fn new(repo: AuditRepository, metrics: Arc<ChainMetrics>) -> Self {
        Self { repo, metrics }
    }

    /// The repository, for reads.
    pub fn repo(&self) -> &AuditRepository {
        &self.repo
    }

    /// Stores the events not stored yet, in order, all or none.
    pub async fn append(&self, events: Vec<ReceivedEvent>) -> Result<Appended, StoreError> {
        let ids: Vec<String> = events.iter().map(|e| e.event.event_id.clone()).collect();
        let total = events.len() as u32;
        let received_at = now_millis();
        let mut last_sequence = None;
        let accepted = self
            .repo
            .append_chain(&ids, |head, existing| {
                let (mut sequence, mut previous) = head.unwrap_or((0, String::new()));
                let mut seen = std::collections::HashSet::with_capacity(events.len());
                let mut records = Vec::with_capacity(events.len());
                for received in &events {
                    let event = &received.event;
                    if existing.contains(&event.event_id) || !seen.insert(event.event_id.as_str()) {
                        continue;
                    }
                    sequence += 1;
                    let bytes = received.stored_bytes();
                    let hash = record_hash(&previous, sequence, &bytes);
                    let time = event.time.as_ref().and_then(timestamp_millis).unwrap_or(received_at);
                    records.push(audit_record::Model {
                        sequence,
                        event_id: event.event_id.clone(),
                        tenant_id: event.tenant_id.clone(),
                        time,
                        service: event.service.clone(),
                        identity: event.identity.clone(),
                        operation: event.operation.clone(),
                        resource: event.resource.clone(),
                        outcome: event.outcome,
                        event: bytes,
                        received_at,
                        previous_hash: std::mem::replace(&mut previous, hash.clone()),
                        hash,
                    });
                }
                last_sequence = records.last().map(|record| record.sequence);
                records
            })
            .await? as u32;
        self.metrics.appended(accepted, last_sequence);
        Ok(Appended { accepted, duplicates: total - accepted })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bytes_sent_are_stored_unless_they_carry_fields_this_version_does_not_know() {
        let event = pb::AuditEvent { event_id: "e1".into(), operation: "Encrypt".into(), ..Default::default() };
        let sent = event.encode_to_vec();
        let as_sent = ReceivedEvent { event: event.clone(), bytes: sent.clone().into() };
        assert_eq!(as_sent.stored_bytes(), sent);
        // Field 1023 (a varint), which AuditEvent does not have: decoding drops it, and so does the trail.
        let mut extended = sent.clone();
        extended.extend_from_slice(&[0xF8, 0x3F, 0x01]);
        let decoded = pb::AuditEvent::decode(extended.as_slice()).unwrap();
        let with_unknown = ReceivedEvent { event: decoded, bytes: extended.into() };
        assert_eq!(with_unknown.stored_bytes(), sent);
    }
}

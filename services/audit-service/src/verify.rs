//! VerifyChain: walks the stored chain and reports the first record that does not hold. A record holds when
//! its sequence follows the previous one (a deleted record leaves a gap), its `previous_hash` is the previous
//! record's hash (a record moved or replaced breaks the link), its hash is recomputed from the previous hash,
//! the sequence and the stored event (an edited event changes it), and the columns queries filter on say
//! what the hashed event says (an edited tenant column would move a record into another tenant's view).

use keymesh_proto::v1 as pb;
use keymesh_store::{StoreError, audit::AuditRepository, entity::audit_record};
use prost::Message;
use subtle::ConstantTimeEq;

use crate::chain::{record_hash, timestamp_millis};

/// Records read per page.
const PAGE: u64 = 1000;

/// The outcome of a verification.
#[derive(Debug, PartialEq, Eq)]
pub struct Verdict {
    /// Records that held, from the first verified.
    pub verified: u64,
    /// The first record that did not, and why.
    pub broken: Option<(i64, String)>,
}

/// Checks one record against the previous one (`expected` is its sequence, `previous_hash` the previous
/// record's hash); returns its hash.
pub fn check_record(expected: i64, previous_hash: &str, row: &audit_record::Model) -> Result<String, String> {
    if row.sequence != expected {
        return Err(format!("record {expected} is missing (deleted?); the next stored is {}", row.sequence));
    }
    if !bool::from(row.previous_hash.as_bytes().ct_eq(previous_hash.as_bytes())) {
        return Err(format!("record {expected} does not link to record {} (moved or replaced?)", expected - 1));
    }
    let hash = record_hash(previous_hash, row.sequence, &row.event);
    if !bool::from(hash.as_bytes().ct_eq(row.hash.as_bytes())) {
        return Err(format!("record {expected}: its content does not match its hash (edited?)"));
    }
    let event = pb::AuditEvent::decode(row.event.as_slice())
        .map_err(|_| format!("record {expected}: the stored event does not decode"))?;
    let time = event.time.as_ref().and_then(timestamp_millis).unwrap_or(row.received_at);
    let columns = [
        ("event_id", row.event_id == event.event_id),
        ("tenant_id", row.tenant_id == event.tenant_id),
        ("service", row.service == event.service),
        ("identity", row.identity == event.identity),
        ("operation", row.operation == event.operation),
        ("resource", row.resource == event.resource),
        ("outcome", row.outcome == event.outcome),
        ("time", row.time == time),
    ];
    if let Some((column, _)) = columns.iter().find(|(_, same)| !same) {
        return Err(format!("record {expected}: column {column} differs from the hashed event (edited?)"));
    }
    Ok(hash)
}

/// Verifies records `from..=to` (`to` none: up to the newest). A range that starts after the first record
/// is anchored on the stored hash of the record before it.
pub async fn verify(repo: &AuditRepository, from: i64, to: Option<i64>) -> Result<Verdict, StoreError> {
    let from = from.max(1);
    let mut previous_hash = if from == 1 {
        String::new()
    } else {
        match repo.record(from - 1).await? {
            Some(anchor) => anchor.hash,
            None => {
                return Ok(Verdict {
                    verified: 0,
                    broken: Some((from - 1, format!("record {} (the anchor of the range) is missing", from - 1))),
                });
            }
        }
    };
    let mut expected = from;
    let mut verified = 0;
    loop {
        let rows = repo.chain_after(expected - 1, PAGE).await?;
        let done = (rows.len() as u64) < PAGE;
        for row in &rows {
            if to.is_some_and(|to| row.sequence > to) {
                return Ok(Verdict { verified, broken: None });
            }
            match check_record(expected, &previous_hash, row) {
                Ok(hash) => previous_hash = hash,
                Err(reason) => return Ok(Verdict { verified, broken: Some((expected, reason)) }),
            }
            expected += 1;
            verified += 1;
        }
        if done {
            // The range asked for more than is stored: the missing tail is a deletion.
            if let Some(to) = to.filter(|to| *to >= expected) {
                return Ok(Verdict {
                    verified,
                    broken: Some((expected, format!("record {expected} is missing; the chain ends before {to}"))),
                });
            }
            return Ok(Verdict { verified, broken: None });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain(n: i64) -> Vec<audit_record::Model> {
        let mut previous = String::new();
        (1..=n)
            .map(|sequence| {
                let event = pb::AuditEvent {
                    event_id: format!("e{sequence}"),
                    tenant_id: "t".into(),
                    service: "crypto-service".into(),
                    operation: "Encrypt".into(),
                    time: Some(prost_types::Timestamp { seconds: sequence, nanos: 0 }),
                    ..Default::default()
                };
                let bytes = event.encode_to_vec();
                let hash = record_hash(&previous, sequence, &bytes);
                let row = audit_record::Model {
                    sequence,
                    event_id: event.event_id,
                    tenant_id: "t".into(),
                    time: sequence * 1000,
                    service: event.service,
                    identity: String::new(),
                    operation: event.operation,
                    resource: String::new(),
                    outcome: 0,
                    event: bytes,
                    received_at: 0,
                    previous_hash: previous.clone(),
                    hash: hash.clone(),
                };
                previous = hash;
                row
            })
            .collect()
    }

    fn first_broken(rows: &[audit_record::Model]) -> Option<(i64, String)> {
        let mut previous = String::new();
        for (i, row) in rows.iter().enumerate() {
            match check_record(i as i64 + 1, &previous, row) {
                Ok(hash) => previous = hash,
                Err(reason) => return Some((i as i64 + 1, reason)),
            }
        }
        None
    }

    #[test]
    fn every_kind_of_tampering_is_found_at_its_record() {
        assert_eq!(first_broken(&chain(5)), None);
        let mut edited = chain(5);
        edited[2].event[3] ^= 1;
        assert!(first_broken(&edited).is_some_and(|(at, why)| at == 3 && why.contains("edited")));
        let mut deleted = chain(5);
        deleted.remove(1);
        assert!(first_broken(&deleted).is_some_and(|(at, why)| at == 2 && why.contains("missing")));
        let mut moved = chain(5);
        moved.swap(1, 2);
        (moved[1].sequence, moved[2].sequence) = (2, 3);
        assert!(first_broken(&moved).is_some_and(|(at, why)| at == 2 && why.contains("link")));
        let mut retenanted = chain(5);
        retenanted[3].tenant_id = "other".into();
        assert!(first_broken(&retenanted).is_some_and(|(at, why)| at == 4 && why.contains("tenant_id")));
    }
}

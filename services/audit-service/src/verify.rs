//! VerifyChain: walks the stored chain and reports the first record that does not hold. A record holds when
//! its sequence follows the previous one (a deleted record leaves a gap), its `previous_hash` is the previous
//! record's hash (a record moved or replaced breaks the link), its hash is recomputed from the previous hash,
//! the sequence and the stored event (an edited event changes it), and the columns queries filter on say
//! what the hashed event says (an edited tenant column would move a record into another tenant's view).

use keymesh_proto::v1 as pb;
use keymesh_store::{
    StoreError,
    audit::AuditRepository,
    entity::{audit_checkpoint, audit_record},
};
use prost::Message;
use subtle::ConstantTimeEq;

use crate::{
    chain::{record_hash, timestamp_millis},
    checkpoint,
};

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

/// Verifies records `from..=to` (`to` none: up to the newest), and every signed checkpoint among them. A
/// range that starts after the first record is anchored on the stored hash of the record before it; a chain
/// whose oldest records were pruned is anchored on the signed checkpoint pruning kept.
pub async fn verify(repo: &AuditRepository, from: i64, to: Option<i64>) -> Result<Verdict, StoreError> {
    let keys = checkpoint::VerifyingKeys::new(&repo.checkpoint_keys().await?);
    let Some(oldest) = repo.chain_after(0, 1).await?.into_iter().next() else {
        return Ok(Verdict {
            verified: 0,
            broken: to.map(|to| (from.max(1), format!("the chain is empty; record {to} is missing"))),
        });
    };
    let from = from.max(1).max(oldest.sequence);
    let anchor = match from - 1 {
        0 => Ok(String::new()),
        at if at >= oldest.sequence => match repo.record(at).await? {
            Some(record) => Ok(record.hash),
            None => Err((at, format!("record {at} (the anchor of the range) is missing"))),
        },
        // Pruning deletes records up to a checkpoint and every checkpoint before it: the chain must start
        // right after the oldest checkpoint kept, and that one must be signed.
        at => match repo.checkpoints_after(0, 1).await?.pop() {
            Some(oldest) if oldest.sequence == at && keys.signed(&oldest) => Ok(oldest.hash),
            Some(oldest) if oldest.sequence == at => Err((
                at,
                format!("the checkpoint at {at}, which the pruned chain starts from, has an invalid signature"),
            )),
            _ => Err((
                at,
                format!(
                    "record {at} is missing: records before {from} are gone and no signed checkpoint shows they were \
                     pruned (deleted?)"
                ),
            )),
        },
    };
    let mut previous_hash = match anchor {
        Ok(hash) => hash,
        Err(broken) => return Ok(Verdict { verified: 0, broken: Some(broken) }),
    };
    let mut expected = from;
    let mut verified = 0;
    loop {
        let rows = repo.chain_after(expected - 1, PAGE).await?;
        let done = (rows.len() as u64) < PAGE;
        let mut checkpoints = match (rows.first(), rows.last()) {
            (Some(first), Some(last)) => repo.checkpoints_between(first.sequence, last.sequence).await?,
            _ => Vec::new(),
        }
        .into_iter()
        .peekable();
        for row in &rows {
            if to.is_some_and(|to| row.sequence > to) {
                return Ok(Verdict { verified, broken: None });
            }
            match check_record(expected, &previous_hash, row) {
                Ok(hash) => previous_hash = hash,
                Err(reason) => return Ok(Verdict { verified, broken: Some((expected, reason)) }),
            }
            while let Some(checkpoint) = checkpoints.next_if(|c| c.sequence <= row.sequence) {
                if let Err(reason) = check_checkpoint(&checkpoint, row, &keys) {
                    return Ok(Verdict { verified, broken: Some((checkpoint.sequence, reason)) });
                }
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
            // So is a chain that ends before a checkpoint signed at a later record.
            if to.is_none()
                && let Some(signed) = repo.latest_checkpoint().await?.filter(|c| c.sequence >= expected)
            {
                return Ok(Verdict {
                    verified,
                    broken: Some((
                        expected,
                        format!("record {expected} is missing; a checkpoint was signed at record {}", signed.sequence),
                    )),
                });
            }
            return Ok(Verdict { verified, broken: None });
        }
    }
}

/// A checkpoint holds when it is signed by a published key and names the hash of the record it is at.
fn check_checkpoint(
    checkpoint: &audit_checkpoint::Model,
    row: &audit_record::Model,
    keys: &checkpoint::VerifyingKeys,
) -> Result<(), String> {
    let at = checkpoint.sequence;
    if !keys.signed(checkpoint) {
        return Err(format!("the checkpoint at {at} has an invalid signature or an unknown key (forged?)"));
    }
    if row.sequence != at || !bool::from(checkpoint.hash.as_bytes().ct_eq(row.hash.as_bytes())) {
        return Err(format!("record {at} differs from the hash its signed checkpoint holds (chain rewritten?)"));
    }
    Ok(())
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

//! Export as JSON Lines: one self-contained JSON object per record, with every event field by name, the
//! record's place in the chain, and the encoded event its hash covers, so that a copy can be checked outside
//! keymesh: `hash = SHA-256(previous_hash (hex text) ‖ sequence (8 bytes, big-endian) ‖ event)`.

use base64::{Engine, engine::general_purpose::STANDARD};
use keymesh_proto::v1 as pb;
use keymesh_store::entity::audit_record;
use prost::Message;
use serde_json::json;

fn rfc3339(millis: i64) -> serde_json::Value {
    chrono::DateTime::from_timestamp_millis(millis)
        .map_or(serde_json::Value::Null, |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true).into())
}

fn enum_name<E: TryFrom<i32>>(value: i32, name: impl Fn(&E) -> &'static str) -> serde_json::Value {
    E::try_from(value).map_or_else(|_| value.into(), |e| name(&e).into())
}

/// One record as one line of JSON (without the newline).
pub fn json_line(row: &audit_record::Model) -> String {
    let event = pb::AuditEvent::decode(row.event.as_slice()).unwrap_or_default();
    json!({
        "sequence": row.sequence,
        "event_id": event.event_id,
        "time": rfc3339(row.time),
        "received_at": rfc3339(row.received_at),
        "tenant_id": event.tenant_id,
        "service": event.service,
        "identity": event.identity,
        "on_behalf_of": event.on_behalf_of,
        "operation": event.operation,
        "resource": event.resource,
        "key_version": event.key_version,
        "algorithm": enum_name(event.algorithm, pb::Algorithm::as_str_name),
        "outcome": enum_name(event.outcome, pb::Outcome::as_str_name),
        "status_code": event.status_code,
        "reason": event.reason,
        "latency_micros": event.latency_micros,
        "trace_id": event.trace_id,
        "request_id": event.request_id,
        "fips_mode": enum_name(event.fips_mode, pb::FipsMode::as_str_name),
        "policy_warnings": event.policy_warnings,
        "count": event.count,
        "previous_hash": row.previous_hash,
        "hash": row.hash,
        "event_protobuf": STANDARD.encode(&row.event),
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chain::record_hash;

    #[test]
    fn a_line_carries_the_fields_and_what_its_hash_covers() {
        let event = pb::AuditEvent {
            event_id: "e1".into(),
            tenant_id: "t_1".into(),
            operation: "Encrypt".into(),
            outcome: pb::Outcome::Denied as i32,
            reason: "line\nbreak \"quoted\"".into(),
            count: 42,
            ..Default::default()
        };
        let bytes = event.encode_to_vec();
        let row = audit_record::Model {
            sequence: 3,
            event_id: "e1".into(),
            tenant_id: "t_1".into(),
            time: 1_700_000_000_123,
            service: String::new(),
            identity: String::new(),
            operation: "Encrypt".into(),
            resource: String::new(),
            outcome: event.outcome,
            hash: record_hash("ab", 3, &bytes),
            event: bytes,
            received_at: 1_700_000_000_456,
            previous_hash: "ab".into(),
        };
        let line = json_line(&row);
        assert!(!line.contains('\n'), "one line per record");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["outcome"], "OUTCOME_DENIED");
        assert_eq!(value["time"], "2023-11-14T22:13:20.123Z");
        assert_eq!(value["reason"], "line\nbreak \"quoted\"");
        assert_eq!(value["count"], 42, "refusals counted into one event say how many");
        let covered = STANDARD.decode(value["event_protobuf"].as_str().unwrap()).unwrap();
        assert_eq!(record_hash(value["previous_hash"].as_str().unwrap(), 3, &covered), value["hash"].as_str().unwrap());
    }
}

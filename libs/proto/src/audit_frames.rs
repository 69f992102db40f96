//! `AppendRequest` as keymesh builds and reads it: each audit event kept as the protobuf bytes it was encoded
//! to. On the wire `repeated bytes events = 2` is exactly the API's `repeated AuditEvent events = 2` (one
//! length-delimited field either way), so clients in other languages see `AuditEvent`, while an emitter ships
//! the frames of its spool as they are (no decoding, no re-encoding, no deep copy of a batch it may have to
//! resend) and audit-service hashes and stores the bytes it received.

/// A batch of encoded `AuditEvent`s (see the module documentation).
#[derive(Clone, PartialEq, prost::Message)]
pub struct AppendRequest {
    /// Echoed in the acknowledgement; chosen by the sender.
    #[prost(uint64, tag = "1")]
    pub batch_id: u64,
    /// Each an encoded `AuditEvent`.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub events: Vec<prost::bytes::Bytes>,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;
    use crate::v1 as pb;

    #[test]
    fn the_frames_are_the_api_message_on_the_wire() {
        let events = [
            pb::AuditEvent { event_id: "e1".into(), operation: "Encrypt".into(), ..Default::default() },
            pb::AuditEvent { event_id: "e2".into(), tenant_id: "t".into(), ..Default::default() },
        ];
        let framed = AppendRequest { batch_id: 7, events: events.iter().map(|e| e.encode_to_vec().into()).collect() };
        // What a client built from the .proto sends, field for field.
        #[derive(Clone, PartialEq, prost::Message)]
        struct ApiAppendRequest {
            #[prost(uint64, tag = "1")]
            batch_id: u64,
            #[prost(message, repeated, tag = "2")]
            events: Vec<pb::AuditEvent>,
        }
        let api = ApiAppendRequest { batch_id: 7, events: events.to_vec() };
        assert_eq!(framed.encode_to_vec(), api.encode_to_vec());
        assert_eq!(AppendRequest::decode(api.encode_to_vec().as_slice()).unwrap(), framed);
    }
}

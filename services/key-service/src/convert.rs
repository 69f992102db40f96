//! Stored rows to API messages. Never copies key material.

use keymesh_proto::v1 as pb;
use keymesh_store::{
    entity::{key, key_version},
    keys::KeyRecord,
};
use prost::Message;

/// Unix milliseconds as a protobuf timestamp.
pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

/// A key record as the API shows it.
pub fn record_to_proto(record: &KeyRecord) -> pb::Key {
    key_to_proto(&record.key, &record.versions)
}

/// A key with its versions as the API shows it.
pub fn key_to_proto(key: &key::Model, versions: &[key_version::Model]) -> pb::Key {
    pb::Key {
        key_id: key.id.clone(),
        tenant_id: key.tenant_id.clone(),
        name: key.name.clone(),
        description: key.description.clone(),
        purpose: key.purpose,
        algorithm: key.algorithm,
        state: key.state,
        primary_version: key.primary_version as u32,
        min_decryption_version: key.min_decryption_version as u32,
        labels: serde_json::from_str(&key.labels).unwrap_or_default(),
        policy: pb::KeyPolicy::decode(key.policy.as_slice()).ok(),
        create_time: Some(timestamp(key.created_at)),
        deletion_time: key.deletion_time.map(timestamp),
        versions: versions.iter().map(version_to_proto).collect(),
    }
}

fn version_to_proto(v: &key_version::Model) -> pb::KeyVersion {
    pb::KeyVersion {
        version: v.version as u32,
        state: v.state,
        algorithm: v.algorithm,
        origin: v.origin,
        create_time: Some(timestamp(v.created_at)),
        destroy_time: v.destroyed_at.map(timestamp),
        kms_backend: v.kek_backend.clone(),
    }
}

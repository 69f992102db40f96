//! The rules of a key's life, as pure functions over a [`KeyRecord`]: which state changes are allowed, what
//! rotation does to the versions, when deletion destroys material, when scheduled rotation and version
//! retirement are due, and which version may serve an operation. The RPC handlers lock the record, call
//! these, and commit; keeping the rules free of I/O lets them be tested exhaustively here.

use keymesh_crypto::KeyAlgorithm;
use keymesh_policy::CompiledPolicy;
use keymesh_proto::algorithm::FromProto;
use keymesh_proto::v1 as pb;
use keymesh_store::{entity::key_version, keys::KeyRecord};
use prost::Message;

use crate::error::KeyError;

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// Shortest and longest waiting period before deletion, in days, and the default.
pub const DELETION_WINDOW_DAYS: std::ops::RangeInclusive<u32> = 7..=30;
/// The waiting period when the request leaves it at 0.
pub const DEFAULT_DELETION_WINDOW_DAYS: u32 = 30;
/// Shortest rotation period accepted in a policy (Vault Transit's minimum).
pub const MIN_ROTATION_PERIOD_MS: i64 = 60 * 60 * 1000;

fn key_state(record: &KeyRecord) -> pb::KeyState {
    pb::KeyState::try_from(record.key.state).unwrap_or(pb::KeyState::Unspecified)
}

fn version_state(version: &key_version::Model) -> pb::KeyVersionState {
    pb::KeyVersionState::try_from(version.state).unwrap_or(pb::KeyVersionState::Unspecified)
}

fn precondition(message: String) -> KeyError {
    KeyError::FailedPrecondition(message)
}

fn find_version(record: &KeyRecord, version: u32) -> Result<&key_version::Model, KeyError> {
    record.version(version).ok_or(KeyError::VersionNotFound { key: record.key.name.clone(), version })
}

/// The key's stored policy.
pub fn policy(record: &KeyRecord) -> pb::KeyPolicy {
    pb::KeyPolicy::decode(record.key.policy.as_slice()).unwrap_or_default()
}

/// The key's labels for enforcement (policy rules see them): unreadable ones refuse rather than read as none.
pub fn enforced_labels(record: &KeyRecord) -> Result<std::collections::HashMap<String, String>, KeyError> {
    serde_json::from_str(&record.key.labels)
        .map_err(|_| precondition(format!("the stored labels of key {:?} cannot be read", record.key.name)))
}

/// The key's stored policy for enforcement: a policy that cannot be read refuses rather than reading as
/// "no rules" (fail closed).
pub fn enforced_policy(record: &KeyRecord) -> Result<pb::KeyPolicy, KeyError> {
    pb::KeyPolicy::decode(record.key.policy.as_slice()).map_err(|_| {
        precondition(format!("the stored policy of key {:?} cannot be read; set it again", record.key.name))
    })
}

fn duration_ms(duration: Option<&prost_types::Duration>) -> Option<i64> {
    duration.map(|d| d.seconds.saturating_mul(1000).saturating_add(i64::from(d.nanos) / 1_000_000))
}

/// Makes `new_version` (already carrying its wrapped material) the ACTIVE primary; the previous primary, if
/// it was ACTIVE, only decrypts from now on.
pub fn rotate(record: &mut KeyRecord, new_version: key_version::Model, now: i64) -> Result<(), KeyError> {
    if key_state(record) != pb::KeyState::Enabled {
        return Err(precondition(format!(
            "key {:?} is {}; only an enabled key rotates",
            record.key.name,
            key_state(record).as_str_name()
        )));
    }
    let previous = record.key.primary_version as u32;
    if let Some(old) = record.version_mut(previous)
        && old.state == pb::KeyVersionState::Active as i32
    {
        old.state = pb::KeyVersionState::DecryptOnly as i32;
    }
    record.key.primary_version = new_version.version;
    record.versions.push(new_version);
    refresh_maintenance(record, now);
    Ok(())
}

/// Whether the key's material comes from the customer (created with origin EXTERNAL).
pub fn is_external(record: &KeyRecord) -> bool {
    key_state(record) == pb::KeyState::PendingImport
        || record.version(record.key.primary_version as u32).is_some_and(|v| v.origin == pb::KeyOrigin::External as i32)
}

/// Makes imported material (already wrapped by the KEK) the new ACTIVE primary version; a key waiting for
/// its first import becomes ENABLED.
pub fn import_version(record: &mut KeyRecord, new_version: key_version::Model, now: i64) -> Result<(), KeyError> {
    if !is_external(record) {
        return Err(precondition(format!(
            "key {:?} was created with generated material; create a key with origin KEY_ORIGIN_EXTERNAL to import",
            record.key.name
        )));
    }
    match key_state(record) {
        pb::KeyState::PendingImport => record.key.state = pb::KeyState::Enabled as i32,
        pb::KeyState::Enabled => {}
        state => {
            return Err(precondition(format!(
                "key {:?} is {}; enable it to import",
                record.key.name,
                state.as_str_name()
            )));
        }
    }
    rotate(record, new_version, now)
}

/// Refuses an operation the key's purpose does not serve (a MAC with a signing key, a signature with an
/// encryption key...), naming the purpose the operation needs.
pub fn check_purpose(record: &KeyRecord, operation: pb::Operation) -> Result<(), KeyError> {
    let purpose = pb::KeyPurpose::try_from(record.key.purpose).unwrap_or(pb::KeyPurpose::Unspecified);
    let asymmetric = KeyAlgorithm::from_i32(record.key.algorithm).is_some_and(KeyAlgorithm::is_asymmetric);
    let (needed, fits) = match operation {
        pb::Operation::Encrypt | pb::Operation::Decrypt | pb::Operation::Reencrypt | pb::Operation::GenerateDataKey => {
            ("an ENCRYPT key", purpose == pb::KeyPurpose::Encrypt)
        }
        pb::Operation::Sign | pb::Operation::Verify => ("a SIGN key", purpose == pb::KeyPurpose::Sign),
        pb::Operation::GenerateMac | pb::Operation::VerifyMac => ("a MAC key", purpose == pb::KeyPurpose::Mac),
        pb::Operation::Decapsulate | pb::Operation::Encapsulate => ("a KEM key", purpose == pb::KeyPurpose::Kem),
        pb::Operation::GetPublicKey => (
            "a SIGN or KEM key, or an HPKE/RSA-OAEP ENCRYPT key (symmetric and MAC keys have no public key)",
            asymmetric,
        ),
        _ => return Ok(()),
    };
    if fits {
        return Ok(());
    }
    let algorithm = pb::Algorithm::try_from(record.key.algorithm).map(|a| a.as_str_name()).unwrap_or("UNKNOWN");
    Err(precondition(format!(
        "key {:?} has purpose {} ({algorithm}); {} needs {needed}",
        record.key.name,
        purpose.as_str_name().trim_start_matches("KEY_PURPOSE_"),
        operation.as_str_name().trim_start_matches("OPERATION_"),
    )))
}

/// Refuses rotation of keys whose material comes from the customer.
pub fn check_rotatable(record: &KeyRecord) -> Result<(), KeyError> {
    if is_external(record) {
        return Err(precondition(format!(
            "key {:?} holds imported material; rotate it by importing a new version (GetWrappingKey, ImportKeyVersion)",
            record.key.name
        )));
    }
    if key_state(record) != pb::KeyState::Enabled {
        return Err(precondition(format!(
            "key {:?} is {}; only an enabled key rotates",
            record.key.name,
            key_state(record).as_str_name()
        )));
    }
    Ok(())
}

/// EnableKey / DisableKey on the whole key (`version` 0) or one version. Repeating a change is a no-op.
pub fn set_enabled(record: &mut KeyRecord, version: u32, enabled: bool) -> Result<(), KeyError> {
    let name = record.key.name.clone();
    if version == 0 {
        let target = if enabled { pb::KeyState::Enabled } else { pb::KeyState::Disabled };
        return match key_state(record) {
            pb::KeyState::Enabled | pb::KeyState::Disabled => {
                record.key.state = target as i32;
                Ok(())
            }
            pb::KeyState::PendingDeletion => {
                Err(precondition(format!("key {name:?} is pending deletion; cancel the deletion first")))
            }
            other => Err(precondition(format!("key {name:?} is {}", other.as_str_name()))),
        };
    }
    let primary = record.key.primary_version as u32;
    find_version(record, version)?;
    let Some(v) = record.version_mut(version) else {
        return Err(KeyError::VersionNotFound { key: name, version });
    };
    match (version_state(v), enabled) {
        (pb::KeyVersionState::Active | pb::KeyVersionState::DecryptOnly, false) => {
            v.state = pb::KeyVersionState::Disabled as i32;
        }
        (pb::KeyVersionState::Disabled, true) => {
            v.state =
                if version == primary { pb::KeyVersionState::Active } else { pb::KeyVersionState::DecryptOnly } as i32;
        }
        (pb::KeyVersionState::Disabled, false)
        | (pb::KeyVersionState::Active | pb::KeyVersionState::DecryptOnly, true) => {}
        (pb::KeyVersionState::PendingDeletion, _) => {
            return Err(precondition(format!(
                "version {version} of key {name:?} is pending deletion; cancel the deletion first"
            )));
        }
        (state, _) => {
            return Err(precondition(format!("version {version} of key {name:?} is {}", state.as_str_name())));
        }
    }
    Ok(())
}

/// ScheduleKeyDeletion: the key (`version` 0) or one version becomes PENDING_DELETION until the returned time.
pub fn schedule_deletion(record: &mut KeyRecord, version: u32, window_days: u32, now: i64) -> Result<i64, KeyError> {
    let days = if window_days == 0 { DEFAULT_DELETION_WINDOW_DAYS } else { window_days };
    if !DELETION_WINDOW_DAYS.contains(&days) {
        return Err(KeyError::InvalidArgument {
            field: "pending_window_days",
            reason: format!(
                "must be {} to {} days (0 means {DEFAULT_DELETION_WINDOW_DAYS})",
                DELETION_WINDOW_DAYS.start(),
                DELETION_WINDOW_DAYS.end()
            ),
        });
    }
    let deletion_time = now + i64::from(days) * DAY_MS;
    let name = record.key.name.clone();
    if version == 0 {
        return match key_state(record) {
            pb::KeyState::Enabled | pb::KeyState::Disabled | pb::KeyState::PendingImport => {
                record.key.state = pb::KeyState::PendingDeletion as i32;
                record.key.deletion_time = Some(deletion_time);
                Ok(deletion_time)
            }
            pb::KeyState::PendingDeletion => Err(precondition(format!(
                "key {name:?} is already pending deletion; cancel it first to change the date"
            ))),
            other => Err(precondition(format!("key {name:?} is {}", other.as_str_name()))),
        };
    }
    let primary = record.key.primary_version as u32;
    let v = find_version(record, version)?;
    match version_state(v) {
        pb::KeyVersionState::Active if version == primary => Err(precondition(format!(
            "version {version} is the primary version of key {name:?}; rotate the key first, or schedule the whole key"
        ))),
        pb::KeyVersionState::Active | pb::KeyVersionState::DecryptOnly | pb::KeyVersionState::Disabled => {
            if let Some(v) = record.version_mut(version) {
                v.state = pb::KeyVersionState::PendingDeletion as i32;
                v.deletion_time = Some(deletion_time);
            }
            Ok(deletion_time)
        }
        state => Err(precondition(format!("version {version} of key {name:?} is {}", state.as_str_name()))),
    }
}

/// CancelKeyDeletion: the key or version comes back DISABLED (as in AWS KMS), for a deliberate re-enable.
pub fn cancel_deletion(record: &mut KeyRecord, version: u32) -> Result<(), KeyError> {
    let name = record.key.name.clone();
    if version == 0 {
        if key_state(record) != pb::KeyState::PendingDeletion {
            return Err(precondition(format!("key {name:?} is not pending deletion")));
        }
        record.key.state = pb::KeyState::Disabled as i32;
        record.key.deletion_time = None;
        return Ok(());
    }
    find_version(record, version)?;
    match record.version_mut(version) {
        Some(v) if v.state == pb::KeyVersionState::PendingDeletion as i32 => {
            v.state = pb::KeyVersionState::Disabled as i32;
            v.deletion_time = None;
            Ok(())
        }
        _ => Err(precondition(format!("version {version} of key {name:?} is not pending deletion"))),
    }
}

fn destroy(version: &mut key_version::Model, now: i64) {
    version.state = pb::KeyVersionState::Destroyed as i32;
    // Every wrap goes: a secondary backend's copy would otherwise outlive the version.
    version.wrapped_material = None;
    version.extra_wraps = None;
    version.destroyed_at = Some(now);
    version.deletion_time = None;
}

/// Destroys what is due at `now`: the whole key once its deletion time has come, else each version whose
/// deletion time has come. Returns the versions destroyed.
pub fn destroy_due(record: &mut KeyRecord, now: i64) -> Vec<u32> {
    let mut destroyed = Vec::new();
    if key_state(record) == pb::KeyState::PendingDeletion && record.key.deletion_time.is_some_and(|t| t <= now) {
        record.key.state = pb::KeyState::Destroyed as i32;
        record.key.deletion_time = None;
        record.key.next_maintenance_at = None;
        for v in &mut record.versions {
            if v.state != pb::KeyVersionState::Destroyed as i32 {
                destroy(v, now);
                destroyed.push(v.version as u32);
            }
        }
        return destroyed;
    }
    for v in &mut record.versions {
        if v.state == pb::KeyVersionState::PendingDeletion as i32 && v.deletion_time.is_some_and(|t| t <= now) {
            destroy(v, now);
            destroyed.push(v.version as u32);
        }
    }
    destroyed
}

/// What scheduled maintenance should do to a key now.
#[derive(Debug, PartialEq, Eq)]
pub struct Maintenance {
    /// The rotation period has passed since the primary version was created.
    pub rotate: bool,
    /// The oldest version that may still decrypt under `max_decryption_age`, if that raises it.
    pub min_decryption_version: Option<u32>,
}

/// What is due at `now`. A version's ciphertexts are at most as old as its successor's creation, so a
/// version stops decrypting `max_decryption_age` after its successor was created: "nothing older than N
/// days decrypts".
pub fn maintenance_due(record: &KeyRecord, now: i64) -> Maintenance {
    let policy = policy(record);
    let enabled = key_state(record) == pb::KeyState::Enabled;
    let primary = record.version(record.key.primary_version as u32);
    let rotate = enabled
        && check_rotatable(record).is_ok()
        && match (duration_ms(policy.rotation_period.as_ref()), primary) {
            (Some(period), Some(primary)) if period > 0 => primary.created_at + period <= now,
            _ => false,
        };
    let mut min = record.key.min_decryption_version as u32;
    if let Some(age) = duration_ms(policy.max_decryption_age.as_ref()).filter(|a| *a > 0) {
        for pair in record.versions.windows(2) {
            if pair[1].created_at + age <= now {
                min = min.max(pair[0].version as u32 + 1);
            }
        }
        min = min.min(record.key.primary_version as u32);
    }
    let raise = (min > record.key.min_decryption_version as u32).then_some(min);
    Maintenance { rotate, min_decryption_version: raise }
}

/// Recomputes when scheduled maintenance next needs to look at the key.
pub fn refresh_maintenance(record: &mut KeyRecord, now: i64) {
    let policy = policy(record);
    let mut next: Option<i64> = None;
    let mut consider = |t: i64| next = Some(next.map_or(t, |n| n.min(t)));
    // Only an enabled key is maintained: a disabled one would otherwise be found due on every sweep. It is
    // rescheduled when it is enabled again.
    if key_state(record) == pb::KeyState::Enabled {
        if let (Some(period), Some(primary)) =
            (duration_ms(policy.rotation_period.as_ref()), record.version(record.key.primary_version as u32))
            && period > 0
            && check_rotatable(record).is_ok()
        {
            consider((primary.created_at + period).max(now));
        }
        if let Some(age) = duration_ms(policy.max_decryption_age.as_ref()).filter(|a| *a > 0) {
            let min = record.key.min_decryption_version;
            for pair in record.versions.windows(2) {
                if pair[0].version >= min {
                    consider((pair[1].created_at + age).max(now));
                }
            }
        }
    }
    record.key.next_maintenance_at = next;
}

/// Checks a policy before it is stored.
pub fn validate_policy(record: &KeyRecord, policy: &pb::KeyPolicy) -> Result<(), KeyError> {
    let invalid = |reason: String| KeyError::InvalidArgument { field: "policy", reason };
    let period = duration_ms(policy.rotation_period.as_ref());
    let age = duration_ms(policy.max_decryption_age.as_ref());
    if let Some(period) = period {
        if period < MIN_ROTATION_PERIOD_MS {
            return Err(invalid("rotation_period must be at least one hour".into()));
        }
        if check_rotatable(record).is_err() && key_state(record) != pb::KeyState::Disabled {
            return Err(invalid(format!(
                "key {:?} cannot rotate on a schedule (imported material, or not enabled)",
                record.key.name
            )));
        }
    }
    if let Some(age) = age {
        if age <= 0 {
            return Err(invalid("max_decryption_age must be positive".into()));
        }
        match period {
            Some(period) if age >= period => {}
            Some(_) => return Err(invalid("max_decryption_age must be at least rotation_period".into())),
            None => return Err(invalid("max_decryption_age needs a rotation_period".into())),
        }
    }
    // Rules compile (or are refused with the compiler's message), and an enforced policy must admit the key's
    // own algorithm: one that never could would leave the key unusable. A WARN policy may (that is how a
    // migration off an algorithm is announced).
    let compiled = CompiledPolicy::compile("key", policy).map_err(|e| invalid(e.to_string()))?;
    if let Some(algorithm) = KeyAlgorithm::from_i32(record.key.algorithm) {
        compiled.check_algorithm(algorithm, &mut Vec::new()).map_err(|e| {
            invalid(format!("{e}, the key's own algorithm; set enforcement WARN to announce a migration"))
        })?;
    }
    Ok(())
}

/// Raises `min_decryption_version`; it never goes down and never past the primary version.
pub fn raise_min_decryption_version(record: &mut KeyRecord, min: u32) -> Result<(), KeyError> {
    let current = record.key.min_decryption_version as u32;
    let primary = record.key.primary_version as u32;
    if min < current {
        return Err(KeyError::InvalidArgument {
            field: "min_decryption_version",
            reason: format!("is {current}; it can only be raised"),
        });
    }
    if min > primary {
        return Err(KeyError::InvalidArgument {
            field: "min_decryption_version",
            reason: format!("cannot exceed the primary version {primary}"),
        });
    }
    record.key.min_decryption_version = min as i32;
    Ok(())
}

/// The version an operation may use, or why not. `version` 0 means the primary.
pub fn usable_version(
    record: &KeyRecord,
    version: u32,
    operation: pb::Operation,
) -> Result<&key_version::Model, KeyError> {
    let name = &record.key.name;
    match key_state(record) {
        pb::KeyState::Enabled => {}
        pb::KeyState::PendingImport => {
            return Err(precondition(format!("key {name:?} is waiting for ImportKeyVersion")));
        }
        state => return Err(precondition(format!("key {name:?} is {}; enable it to use it", state.as_str_name()))),
    }
    check_purpose(record, operation)?;
    let number = if version == 0 { record.key.primary_version as u32 } else { version };
    let v = find_version(record, number)?;
    let state = version_state(v);
    let usable = match operation {
        // Making something new: only the primary, ACTIVE version.
        pb::Operation::Encrypt
        | pb::Operation::GenerateDataKey
        | pb::Operation::Sign
        | pb::Operation::GenerateMac
        | pb::Operation::Encapsulate => {
            state == pb::KeyVersionState::Active && number == record.key.primary_version as u32
        }
        // Checking or opening something made earlier: any version still in service.
        pb::Operation::Decrypt
        | pb::Operation::Reencrypt
        | pb::Operation::Verify
        | pb::Operation::VerifyMac
        | pb::Operation::Decapsulate
        | pb::Operation::GetPublicKey => {
            if v.version < record.key.min_decryption_version {
                return Err(precondition(format!(
                    "version {number} of key {name:?} is below min_decryption_version {}",
                    record.key.min_decryption_version
                )));
            }
            matches!(state, pb::KeyVersionState::Active | pb::KeyVersionState::DecryptOnly)
        }
        _ => {
            return Err(KeyError::InvalidArgument {
                field: "operation",
                reason: "GetDataKey serves ENCRYPT, GENERATE_DATA_KEY, DECRYPT, REENCRYPT, SIGN, VERIFY, \
                         GENERATE_MAC, VERIFY_MAC, DECAPSULATE, ENCAPSULATE and GET_PUBLIC_KEY"
                    .into(),
            });
        }
    };
    if !usable {
        return Err(precondition(format!("version {number} of key {name:?} is {}", state.as_str_name())));
    }
    if v.wrapped_material.is_none() {
        return Err(precondition(format!("version {number} of key {name:?} is destroyed")));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use keymesh_store::entity::key;

    const HOUR: i64 = 60 * 60 * 1000;

    fn version(v: i32, state: pb::KeyVersionState, created_at: i64) -> key_version::Model {
        key_version::Model {
            key_id: "k_1".into(),
            version: v,
            state: state as i32,
            algorithm: pb::Algorithm::Aes256Gcm as i32,
            origin: pb::KeyOrigin::Generated as i32,
            wrapped_material: Some(vec![7; 60]),
            kek_backend: "local".into(),
            kek_id: "local/1".into(),
            created_at,
            destroyed_at: None,
            deletion_time: None,
            encryptions_granted: 0,
            extra_wraps: Some(r#"[{"backend":"b","kek_id":"b/1","ciphertext":"AAAA"}]"#.into()),
        }
    }

    fn record() -> KeyRecord {
        KeyRecord {
            key: key::Model::new(
                "k_1",
                "t",
                "pii",
                pb::KeyPurpose::Encrypt as i32,
                pb::Algorithm::Aes256Gcm as i32,
                pb::KeyState::Enabled as i32,
                0,
            ),
            versions: vec![version(1, pb::KeyVersionState::Active, 0)],
        }
    }

    fn states(record: &KeyRecord) -> Vec<i32> {
        record.versions.iter().map(|v| v.state).collect()
    }

    #[test]
    fn rotation_demotes_the_primary() {
        let mut r = record();
        rotate(&mut r, version(2, pb::KeyVersionState::Active, 10), 10).unwrap();
        assert_eq!(r.key.primary_version, 2);
        assert_eq!(states(&r), [2, 1]);
        assert_eq!(r.next_version(), 3);
        assert!(usable_version(&r, 0, pb::Operation::Encrypt).is_ok_and(|v| v.version == 2));
        assert!(usable_version(&r, 1, pb::Operation::Decrypt).is_ok());
        assert!(usable_version(&r, 1, pb::Operation::Encrypt).is_err());
        // A disabled primary stays disabled after rotation.
        set_enabled(&mut r, 2, false).unwrap();
        rotate(&mut r, version(3, pb::KeyVersionState::Active, 20), 20).unwrap();
        assert_eq!(states(&r), [2, 3, 1]);
        set_enabled(&mut r, 2, true).unwrap();
        assert_eq!(states(&r), [2, 2, 1]);
    }

    #[test]
    fn disabled_and_pending_keys_refuse_use() {
        let mut r = record();
        set_enabled(&mut r, 0, false).unwrap();
        set_enabled(&mut r, 0, false).unwrap();
        assert!(matches!(usable_version(&r, 0, pb::Operation::Encrypt), Err(KeyError::FailedPrecondition(_))));
        assert!(rotate(&mut r, version(2, pb::KeyVersionState::Active, 1), 1).is_err());
        set_enabled(&mut r, 0, true).unwrap();
        let when = schedule_deletion(&mut r, 0, 0, 1000).unwrap();
        assert_eq!(when, 1000 + 30 * DAY_MS);
        assert!(matches!(usable_version(&r, 0, pb::Operation::Decrypt), Err(KeyError::FailedPrecondition(_))));
        assert!(set_enabled(&mut r, 0, true).is_err(), "cancel first");
        assert!(schedule_deletion(&mut r, 0, 7, 1000).is_err(), "already pending");
        cancel_deletion(&mut r, 0).unwrap();
        assert_eq!(r.key.state, pb::KeyState::Disabled as i32);
        assert_eq!(r.key.deletion_time, None);
        assert!(cancel_deletion(&mut r, 0).is_err());
    }

    #[test]
    fn deletion_windows_are_bounded() {
        for days in [1, 6, 31, 365] {
            assert!(matches!(
                schedule_deletion(&mut record(), 0, days, 0),
                Err(KeyError::InvalidArgument { field: "pending_window_days", .. })
            ));
        }
        assert!(schedule_deletion(&mut record(), 0, 7, 0).is_ok());
    }

    #[test]
    fn destruction_erases_material() {
        let mut r = record();
        rotate(&mut r, version(2, pb::KeyVersionState::Active, 10), 10).unwrap();
        assert!(schedule_deletion(&mut r, 2, 7, 0).is_err(), "primary version");
        let when = schedule_deletion(&mut r, 1, 7, 0).unwrap();
        assert!(destroy_due(&mut r, when - 1).is_empty());
        assert_eq!(destroy_due(&mut r, when), [1]);
        assert_eq!(r.versions[0].wrapped_material, None);
        assert_eq!(r.versions[0].extra_wraps, None);
        assert_eq!(r.versions[0].state, pb::KeyVersionState::Destroyed as i32);
        assert!(usable_version(&r, 1, pb::Operation::Decrypt).is_err());
        assert!(cancel_deletion(&mut r, 1).is_err());
        assert!(set_enabled(&mut r, 1, true).is_err());
        // The whole key.
        let when = schedule_deletion(&mut r, 0, 30, 100).unwrap();
        assert_eq!(destroy_due(&mut r, when), [2]);
        assert_eq!(r.key.state, pb::KeyState::Destroyed as i32);
        assert!(r.versions.iter().all(|v| v.wrapped_material.is_none()));
        assert!(set_enabled(&mut r, 0, true).is_err());
        assert!(schedule_deletion(&mut r, 0, 7, 0).is_err());
    }

    #[test]
    fn min_decryption_version_only_rises() {
        let mut r = record();
        rotate(&mut r, version(2, pb::KeyVersionState::Active, 10), 10).unwrap();
        raise_min_decryption_version(&mut r, 2).unwrap();
        assert!(
            matches!(usable_version(&r, 1, pb::Operation::Decrypt), Err(KeyError::FailedPrecondition(m)) if m.contains("min_decryption_version"))
        );
        assert!(raise_min_decryption_version(&mut r, 1).is_err());
        assert!(raise_min_decryption_version(&mut r, 3).is_err());
    }

    fn with_policy(r: &mut KeyRecord, period_h: i64, age_h: Option<i64>) {
        let policy = pb::KeyPolicy {
            rotation_period: Some(prost_types::Duration { seconds: period_h * 3600, nanos: 0 }),
            max_decryption_age: age_h.map(|h| prost_types::Duration { seconds: h * 3600, nanos: 0 }),
            ..Default::default()
        };
        validate_policy(r, &policy).unwrap();
        r.key.policy = policy.encode_to_vec();
        refresh_maintenance(r, 0);
    }

    #[test]
    fn scheduled_rotation_and_retirement() {
        let mut r = record();
        with_policy(&mut r, 24, Some(48));
        assert_eq!(r.key.next_maintenance_at, Some(24 * HOUR));
        assert_eq!(maintenance_due(&r, 24 * HOUR - 1), Maintenance { rotate: false, min_decryption_version: None });
        assert!(maintenance_due(&r, 24 * HOUR).rotate);
        rotate(&mut r, version(2, pb::KeyVersionState::Active, 24 * HOUR), 24 * HOUR).unwrap();
        // Next: rotation at 48h; version 1 retires 48h after version 2 was created.
        assert_eq!(r.key.next_maintenance_at, Some(48 * HOUR));
        rotate(&mut r, version(3, pb::KeyVersionState::Active, 48 * HOUR), 48 * HOUR).unwrap();
        let due = maintenance_due(&r, 72 * HOUR);
        assert_eq!(due, Maintenance { rotate: true, min_decryption_version: Some(2) });
        assert_eq!(maintenance_due(&r, 96 * HOUR).min_decryption_version, Some(3));
    }

    #[test]
    fn imports_go_to_external_keys_only() {
        let mut generated = record();
        assert!(import_version(&mut generated, version(2, pb::KeyVersionState::Active, 1), 1).is_err());
        let mut external = record();
        external.key.state = pb::KeyState::PendingImport as i32;
        external.key.primary_version = 0;
        external.versions.clear();
        assert!(usable_version(&external, 0, pb::Operation::Encrypt).is_err());
        let mut imported = version(1, pb::KeyVersionState::Active, 1);
        imported.origin = pb::KeyOrigin::External as i32;
        import_version(&mut external, imported.clone(), 1).unwrap();
        assert_eq!((external.key.state, external.key.primary_version), (pb::KeyState::Enabled as i32, 1));
        assert!(check_rotatable(&external).is_err(), "imported keys rotate by importing");
        imported.version = 2;
        import_version(&mut external, imported, 2).unwrap();
        assert_eq!(states(&external), [2, 1]);
    }

    #[test]
    fn policies_are_checked() {
        let r = record();
        let hours = |h: i64| Some(prost_types::Duration { seconds: h * 3600, nanos: 0 });
        let bad = [
            pb::KeyPolicy {
                rotation_period: Some(prost_types::Duration { seconds: 60, nanos: 0 }),
                ..Default::default()
            },
            pb::KeyPolicy { max_decryption_age: hours(10), ..Default::default() },
            pb::KeyPolicy { rotation_period: hours(24), max_decryption_age: hours(1), ..Default::default() },
            pb::KeyPolicy { allowed_algorithms: vec![pb::Algorithm::Aes128Gcm as i32], ..Default::default() },
            pb::KeyPolicy { enforcement: 99, ..Default::default() },
        ];
        for policy in bad {
            assert!(validate_policy(&r, &policy).is_err(), "{policy:?}");
        }
        let mut imported = record();
        imported.versions[0].origin = pb::KeyOrigin::External as i32;
        assert!(
            validate_policy(&imported, &pb::KeyPolicy { rotation_period: hours(24), ..Default::default() }).is_err()
        );
        assert!(check_rotatable(&imported).is_err());
    }
}

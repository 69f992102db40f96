//! What the API's identifiers may hold, checked once at the edge of every service that receives one: a key
//! name, a key id, a reference to a key by either, a tenant id and a client id. One validator per kind, so a
//! service never forwards a value its peer will refuse and never answers a malformed one with anything but
//! INVALID_ARGUMENT naming the field (or, for a value found inside a ciphertext, "decryption failed").

use std::fmt;

/// How key ids begin; key names never do.
pub const KEY_ID_PREFIX: &str = "k_";
/// Longest key name, in bytes.
pub const MAX_KEY_NAME: usize = 128;
/// Longest key id, in bytes (`k_` and a 32-digit UUID today; room for other schemes).
pub const MAX_KEY_ID: usize = 66;
/// Longest tenant or client id, in bytes.
pub const MAX_OPAQUE_ID: usize = 64;

/// A malformed identifier: which field, and what it may hold. Never echoes the value, which may be
/// anything a caller sent (control characters, a megabyte).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidIdentifier {
    /// The request field.
    pub field: &'static str,
    /// What the field may hold.
    pub rule: &'static str,
}

impl fmt::Display for InvalidIdentifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.rule)
    }
}

impl std::error::Error for InvalidIdentifier {}

/// A key, as a request or a ciphertext's header names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyReference<'a> {
    /// By its name in the caller's tenant.
    Name(&'a str),
    /// By its global id.
    Id(&'a str),
}

const KEY_NAME_RULE: &str =
    "a key name is 1 to 128 of [A-Za-z0-9._-] starting with a letter or digit, and never starts with \"k_\"";
const KEY_ID_RULE: &str = "a key id is \"k_\" followed by 1 to 64 letters or digits";
const KEY_REFERENCE_RULE: &str = "name a key by its name (1 to 128 of [A-Za-z0-9._-], starting with a letter or \
                                  digit) or its id (\"k_\" followed by letters or digits)";
const OPAQUE_ID_RULE: &str = "1 to 64 of [A-Za-z0-9_-]";

fn name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

fn is_key_name(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= MAX_KEY_NAME
        && value.starts_with(|c: char| c.is_ascii_alphanumeric())
        && value.chars().all(name_char)
        && !value.starts_with(KEY_ID_PREFIX)
}

fn is_key_id(value: &str) -> bool {
    value.strip_prefix(KEY_ID_PREFIX).is_some_and(|rest| {
        !rest.is_empty()
            && rest.len() <= MAX_KEY_ID - KEY_ID_PREFIX.len()
            && rest.chars().all(|c| c.is_ascii_alphanumeric())
    })
}

/// A key name, as CreateKey and ImportKey take it.
pub fn key_name(field: &'static str, value: &str) -> Result<(), InvalidIdentifier> {
    if is_key_name(value) { Ok(()) } else { Err(InvalidIdentifier { field, rule: KEY_NAME_RULE }) }
}

/// A key id.
pub fn key_id(field: &'static str, value: &str) -> Result<(), InvalidIdentifier> {
    if is_key_id(value) { Ok(()) } else { Err(InvalidIdentifier { field, rule: KEY_ID_RULE }) }
}

/// A key by name or id: which of the two it is.
pub fn key_reference<'a>(field: &'static str, value: &'a str) -> Result<KeyReference<'a>, InvalidIdentifier> {
    if value.starts_with(KEY_ID_PREFIX) {
        if is_key_id(value) {
            return Ok(KeyReference::Id(value));
        }
    } else if is_key_name(value) {
        return Ok(KeyReference::Name(value));
    }
    Err(InvalidIdentifier { field, rule: KEY_REFERENCE_RULE })
}

/// A tenant id or a client id (`t_…`, `app_…` today; opaque to callers).
pub fn opaque_id(field: &'static str, value: &str) -> Result<(), InvalidIdentifier> {
    let valid = !value.is_empty()
        && value.len() <= MAX_OPAQUE_ID
        && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'));
    if valid { Ok(()) } else { Err(InvalidIdentifier { field, rule: OPAQUE_ID_RULE }) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_references_are_names_or_ids() {
        assert_eq!(key_reference("key", "user-pii"), Ok(KeyReference::Name("user-pii")));
        assert_eq!(key_reference("key", "a.b_c-1"), Ok(KeyReference::Name("a.b_c-1")));
        let id = format!("k_{}", "0123456789abcdef".repeat(2));
        assert_eq!(key_reference("key", &id), Ok(KeyReference::Id(&id)));
        let long_name = "a".repeat(MAX_KEY_NAME);
        assert!(key_reference("key", &long_name).is_ok());
        for bad in [
            String::new(),
            "a".repeat(MAX_KEY_NAME + 1),
            "a".repeat(200),
            "bad\u{7}name".into(),
            "bad\nname".into(),
            "-leading".into(),
            "sp ace".into(),
            "k_".into(),
            format!("k_{}", "a".repeat(65)),
            "k_abc:v1".into(),
            "k_ab\u{0}".into(),
            "ключ".into(),
        ] {
            let refused = key_reference("key", &bad).unwrap_err();
            // The message is the field and the rule, nothing the caller sent.
            assert_eq!(refused.to_string(), format!("key: {}", refused.rule), "{bad:?}");
        }
    }

    #[test]
    fn names_never_look_like_ids() {
        assert!(key_name("name", "k_abc").is_err());
        assert!(key_name("name", "kms-key").is_ok());
        assert!(key_id("key_id", "k_abc").is_ok());
        assert!(key_id("key_id", "abc").is_err());
    }

    #[test]
    fn opaque_ids() {
        assert!(opaque_id("client_id", "app_0123456789abcdef0123456789abcdef").is_ok());
        assert!(opaque_id("tenant_id", "t_second").is_ok());
        for bad in ["", "a b", "x\u{1}", &"a".repeat(65)] {
            assert!(opaque_id("client_id", bad).is_err(), "{bad:?}");
        }
    }
}

//! The console's pages, one module per area. Each handler checks the person's role before it calls the mesh
//! (a hidden button is not a permission), calls the mesh with the person's own token (so the mesh checks the
//! same and audits the call under their identity), and renders a template.

pub mod applications;
pub mod audit;
pub mod keys;
pub mod overview;
pub mod tenants;

use keymesh_client::bearer;
use serde::Deserialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tonic::Request;

use crate::{app::Who, error::PageError};

/// A request to the mesh carrying the person's token.
pub fn call<T>(who: &Who, message: T) -> Result<Request<T>, PageError> {
    Ok(bearer(who.token(), message)?)
}

/// A mesh refusal of a form's content (a bad field, a name taken): its status and message, to show on the form
/// again; anything else fails the page.
pub fn form_refusal(error: PageError) -> Result<(axum::http::StatusCode, String), PageError> {
    use axum::http::StatusCode;
    match error.status_and_message() {
        Some((status, message)) if status == StatusCode::UNPROCESSABLE_ENTITY || status == StatusCode::CONFLICT => {
            Ok((status, message))
        }
        _ => Err(error),
    }
}

/// Refuses unless the person may read the audit trail (audit-service's rule for Query and Export).
pub fn require_audit_reader(who: &Who) -> Result<(), PageError> {
    if who.has_role(&["auditor", "admin", "owner"]) {
        Ok(())
    } else {
        Err(PageError::Forbidden("The audit trail needs the auditor, admin or owner role.".into()))
    }
}

/// A protobuf time as `2026-12-07T10:00:00Z`; empty for none.
pub fn timestamp(t: Option<&prost_types::Timestamp>) -> String {
    t.and_then(|t| OffsetDateTime::from_unix_timestamp(t.seconds).ok())
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_default()
}

/// An enum value's name without its type prefix (`KEY_STATE_ENABLED` → `ENABLED`).
pub fn short(name: &str, prefix: &str) -> String {
    name.strip_prefix(prefix).unwrap_or(name).to_owned()
}

/// A form's lower-case name (`aes-256-gcm`) as the enum's wire name (`ALGORITHM_AES_256_GCM`).
pub fn wire_name(prefix: &str, value: &str) -> String {
    format!("{prefix}{}", value.trim().to_ascii_uppercase().replace('-', "_"))
}

/// An enum's wire name as a form value (`ALGORITHM_AES_256_GCM` → `aes-256-gcm`).
pub fn form_name(name: &str, prefix: &str) -> String {
    short(name, prefix).to_ascii_lowercase().replace('_', "-")
}

/// `?done=…` on the page a mutation redirects to: which fixed message to show (the text is the console's own,
/// so a crafted link cannot put words on the page).
#[derive(Deserialize, Default)]
pub struct Done {
    #[serde(default)]
    done: Option<String>,
}

impl Done {
    /// The message for the code, if it is one of ours.
    pub fn notice(&self) -> Option<String> {
        let text = match self.done.as_deref()? {
            "created" => "Created.",
            "rotated" => "Rotated: a new version is now primary.",
            "enabled" => "Enabled.",
            "disabled" => "Disabled.",
            "deletion-scheduled" => "Deletion scheduled. Cancel it any time before the date shown.",
            "deletion-cancelled" => "Deletion cancelled; the key is disabled until you enable it.",
            "policy" => "Policy saved.",
            _ => return None,
        };
        Some(text.to_owned())
    }
}

/// Percent-encodes one path segment (a key name in a redirect).
pub fn segment(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enum_names_round_trip_between_forms_and_the_wire() {
        assert_eq!(wire_name("ALGORITHM_", "aes-256-gcm"), "ALGORITHM_AES_256_GCM");
        assert_eq!(form_name("ALGORITHM_ML_KEM_768", "ALGORITHM_"), "ml-kem-768");
        assert_eq!(short("KEY_STATE_PENDING_DELETION", "KEY_STATE_"), "PENDING_DELETION");
    }

    #[test]
    fn notices_are_the_consoles_own_words() {
        let done = Done { done: Some("rotated".into()) };
        assert!(done.notice().unwrap().starts_with("Rotated"));
        let crafted = Done { done: Some("Your account is locked; call +1 555".into()) };
        assert_eq!(crafted.notice(), None);
    }

    #[test]
    fn times_are_rfc_3339_utc() {
        let t = prost_types::Timestamp { seconds: 1_800_000_000, nanos: 0 };
        assert_eq!(timestamp(Some(&t)), "2027-01-15T08:00:00Z");
        assert_eq!(timestamp(None), "");
    }
}

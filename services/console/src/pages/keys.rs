//! Keys: the list with filters, creation for every purpose and algorithm, a key's page with its versions and
//! lifecycle actions (rotate, enable/disable, deletion scheduled behind a typed confirmation and cancelled), and
//! the policy editor (rules compiled by key-service; a warning before enforcement becomes ENFORCE).

use askama::Template;
use axum::{
    Extension, Form,
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Redirect, Response},
};
use keymesh_proto::v1 as pb;
use serde::Deserialize;

use super::{Done, call, form_name, form_refusal, segment, short, timestamp, wire_name};
use crate::{
    app::{Shared, Who},
    error::PageError,
    views::{Layout, render},
};

/// The algorithms the create form offers, by purpose (the form's value, as the CLI spells it).
pub const ALGORITHMS: &[(&str, &[&str])] = &[
    (
        "encrypt",
        &[
            "aes-256-gcm",
            "aes-128-gcm",
            "chacha20-poly1305",
            "xchacha20-poly1305",
            "aes-256-gcm-siv",
            "aes-256-cbc-hmac-sha256",
            "aes-256-ctr-hmac-sha256",
            "aes-256-ccm",
            "ml-kem-768-aes-256-gcm",
            "hpke-x25519-sha256-aes-256-gcm",
            "hpke-xwing-sha256-aes-256-gcm",
            "rsa-oaep-2048-sha256",
            "rsa-oaep-3072-sha256",
            "rsa-oaep-4096-sha256",
        ],
    ),
    (
        "sign",
        &[
            "ed25519",
            "ecdsa-p256-sha256",
            "ecdsa-p384-sha384",
            "rsa-pss-2048-sha256",
            "rsa-pss-3072-sha256",
            "rsa-pss-4096-sha256",
            "ml-dsa-44",
            "ml-dsa-65",
            "ml-dsa-87",
        ],
    ),
    ("mac", &["hmac-sha256", "hmac-sha512"]),
    ("kem", &["ml-kem-512", "ml-kem-768", "ml-kem-1024"]),
];

/// One row of the key list.
pub struct KeyRow {
    /// Name.
    pub name: String,
    /// Id.
    pub id: String,
    /// Purpose, e.g. `ENCRYPT`.
    pub purpose: String,
    /// Algorithm, e.g. `aes-256-gcm`.
    pub algorithm: String,
    /// State, e.g. `ENABLED`.
    pub state: String,
    /// Primary version.
    pub primary_version: u32,
    /// Created.
    pub created: String,
}

impl KeyRow {
    fn of(key: &pb::Key) -> Self {
        Self {
            name: key.name.clone(),
            id: key.key_id.clone(),
            purpose: short(key.purpose().as_str_name(), "KEY_PURPOSE_"),
            algorithm: form_name(key.algorithm().as_str_name(), "ALGORITHM_"),
            state: short(key.state().as_str_name(), "KEY_STATE_"),
            primary_version: key.primary_version,
            created: timestamp(key.create_time.as_ref()),
        }
    }
}

#[derive(Template)]
#[template(path = "keys.html")]
struct KeysPage {
    layout: Layout,
    rows: Vec<KeyRow>,
    q: String,
    purpose: String,
    state: String,
}

/// `GET /keys`'s filters.
#[derive(Deserialize, Default)]
pub struct KeyFilter {
    #[serde(default)]
    q: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    state: String,
}

/// Every key of the tenant matching the service-side filters (at most 5,000).
pub async fn all_keys(console: &Shared, who: &Who, purpose: i32, state: i32) -> Result<Vec<pb::Key>, PageError> {
    let mut keys = Vec::new();
    let mut page_token = String::new();
    for _ in 0..50 {
        let request = pb::ListKeysRequest { page_size: 100, page_token, purpose, state, ..Default::default() };
        let page = console.mesh.key_service().list_keys(call(who, request)?).await?.into_inner();
        keys.extend(page.keys);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(keys)
}

fn enum_filter(prefix: &str, value: &str, from: fn(&str) -> Option<i32>, field: &str) -> Result<i32, PageError> {
    if value.is_empty() {
        return Ok(0);
    }
    from(&wire_name(prefix, value)).ok_or_else(|| PageError::Invalid(format!("{field}: unknown value {value:?}")))
}

/// `GET /keys`.
pub async fn list(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Query(filter): Query<KeyFilter>,
) -> Result<Response, PageError> {
    let purpose = enum_filter(
        "KEY_PURPOSE_",
        &filter.purpose,
        |n| pb::KeyPurpose::from_str_name(n).map(|v| v as i32),
        "purpose",
    )?;
    let state =
        enum_filter("KEY_STATE_", &filter.state, |n| pb::KeyState::from_str_name(n).map(|v| v as i32), "state")?;
    let needle = filter.q.trim().to_lowercase();
    let rows = all_keys(&console, &who, purpose, state)
        .await?
        .iter()
        .filter(|k| needle.is_empty() || k.name.to_lowercase().contains(&needle) || k.key_id.contains(&needle))
        .map(KeyRow::of)
        .collect();
    Ok(render(&KeysPage {
        layout: Layout::of(&who, None),
        rows,
        q: filter.q,
        purpose: filter.purpose,
        state: filter.state,
    }))
}

#[derive(Template)]
#[template(path = "key_new.html")]
struct NewKeyPage {
    layout: Layout,
    error: Option<String>,
    form: NewKey,
    algorithms: &'static [(&'static str, &'static [&'static str])],
}

/// The create form's fields.
#[derive(Deserialize, Default)]
pub struct NewKey {
    #[serde(default)]
    name: String,
    #[serde(default)]
    purpose: String,
    #[serde(default)]
    algorithm: String,
    #[serde(default)]
    description: String,
}

/// `GET /keys/new`.
pub async fn new_form(Extension(who): Extension<Who>) -> Result<Response, PageError> {
    who.require_manage("Creating a key")?;
    let form = NewKey { purpose: "encrypt".into(), ..Default::default() };
    Ok(render(&NewKeyPage { layout: Layout::of(&who, None), error: None, form, algorithms: ALGORITHMS }))
}

/// `POST /keys`.
pub async fn create(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Form(form): Form<NewKey>,
) -> Result<Response, PageError> {
    who.require_manage("Creating a key")?;
    let outcome = async {
        let purpose = enum_filter(
            "KEY_PURPOSE_",
            &form.purpose,
            |n| pb::KeyPurpose::from_str_name(n).map(|v| v as i32),
            "purpose",
        )?;
        let algorithm = enum_filter(
            "ALGORITHM_",
            &form.algorithm,
            |n| pb::Algorithm::from_str_name(n).map(|v| v as i32),
            "algorithm",
        )?;
        let request = pb::CreateKeyRequest {
            name: form.name.trim().to_owned(),
            description: form.description.trim().to_owned(),
            purpose,
            algorithm,
            ..Default::default()
        };
        console.mesh.key_service().create_key(call(&who, request)?).await.map_err(PageError::from)
    }
    .await;
    match outcome {
        Ok(created) => {
            let name = created.into_inner().key.map(|k| k.name).unwrap_or_default();
            Ok(Redirect::to(&format!("/keys/{}?done=created", segment(&name))).into_response())
        }
        Err(error) => {
            let (status, message) = form_refusal(error)?;
            let page =
                NewKeyPage { layout: Layout::of(&who, None), error: Some(message), form, algorithms: ALGORITHMS };
            Ok((status, render(&page)).into_response())
        }
    }
}

/// One row of a key's versions.
pub struct VersionRow {
    /// Number.
    pub version: u32,
    /// State, e.g. `ACTIVE`.
    pub state: String,
    /// Algorithm.
    pub algorithm: String,
    /// Created.
    pub created: String,
    /// KMS backend that wraps it.
    pub backend: String,
}

#[derive(Template)]
#[template(path = "key.html")]
struct KeyPage {
    layout: Layout,
    key: KeyRow,
    description: String,
    deletion: String,
    versions: Vec<VersionRow>,
    pending_deletion: bool,
    disabled: bool,
    enforcement: String,
    rules: Vec<String>,
}

async fn get_key(console: &Shared, who: &Who, key: &str) -> Result<pb::Key, PageError> {
    let request = pb::GetKeyRequest { key: key.to_owned() };
    console.mesh.key_service().get_key(call(who, request)?).await?.into_inner().key.ok_or(PageError::NotFound)
}

/// `GET /keys/{key}`.
pub async fn show(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Path(key): Path<String>,
    Query(done): Query<Done>,
) -> Result<Response, PageError> {
    let key = get_key(&console, &who, &key).await?;
    let versions = key
        .versions
        .iter()
        .rev()
        .map(|v| VersionRow {
            version: v.version,
            state: short(v.state().as_str_name(), "KEY_VERSION_STATE_"),
            algorithm: form_name(v.algorithm().as_str_name(), "ALGORITHM_"),
            created: timestamp(v.create_time.as_ref()),
            backend: v.kms_backend.clone(),
        })
        .collect();
    let policy = key.policy.clone().unwrap_or_default();
    Ok(render(&KeyPage {
        layout: Layout::of(&who, done.notice()),
        description: key.description.clone(),
        deletion: timestamp(key.deletion_time.as_ref()),
        pending_deletion: key.state() == pb::KeyState::PendingDeletion,
        disabled: key.state() == pb::KeyState::Disabled,
        enforcement: enforcement_form_value(policy.enforcement()).to_owned(),
        rules: policy.rules.iter().map(describe_rule).collect(),
        key: KeyRow::of(&key),
        versions,
    }))
}

/// A rule as the key's page shows it: its name, the operations it applies to, its expression.
fn describe_rule(rule: &pb::PolicyRule) -> String {
    let operations = if rule.operations.is_empty() {
        "every operation".to_owned()
    } else {
        rule.operations
            .iter()
            .map(|op| {
                pb::Operation::try_from(*op)
                    .map_or_else(|_| op.to_string(), |o| form_name(o.as_str_name(), "OPERATION_"))
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!("{} ({operations}): {}", rule.name, rule.expression)
}

fn back_to(key: &pb::Key, done: &str) -> Response {
    Redirect::to(&format!("/keys/{}?done={done}", segment(&key.name))).into_response()
}

/// `POST /keys/{key}/rotate`.
pub async fn rotate(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Path(key): Path<String>,
) -> Result<Response, PageError> {
    who.require_manage("Rotating a key")?;
    let answer = console.mesh.key_service().rotate_key(call(&who, pb::RotateKeyRequest { key })?).await?.into_inner();
    Ok(back_to(&answer.key.unwrap_or_default(), "rotated"))
}

/// `POST /keys/{key}/enable`.
pub async fn enable(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Path(key): Path<String>,
) -> Result<Response, PageError> {
    who.require_manage("Enabling a key")?;
    let request = pb::EnableKeyRequest { key, version: 0 };
    let answer = console.mesh.key_service().enable_key(call(&who, request)?).await?.into_inner();
    Ok(back_to(&answer.key.unwrap_or_default(), "enabled"))
}

/// `POST /keys/{key}/disable`.
pub async fn disable(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Path(key): Path<String>,
) -> Result<Response, PageError> {
    who.require_manage("Disabling a key")?;
    let request = pb::DisableKeyRequest { key, version: 0 };
    let answer = console.mesh.key_service().disable_key(call(&who, request)?).await?.into_inner();
    Ok(back_to(&answer.key.unwrap_or_default(), "disabled"))
}

/// The deletion form: the key's name typed out, and the waiting period.
#[derive(Deserialize)]
pub struct ScheduleDeletion {
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    pending_days: Option<u32>,
}

/// `POST /keys/{key}/schedule-deletion`: refused unless the key's name was typed (checked here, not only by the
/// page's script).
pub async fn schedule_deletion(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Path(key): Path<String>,
    Form(form): Form<ScheduleDeletion>,
) -> Result<Response, PageError> {
    who.require_manage("Scheduling a key's deletion")?;
    let current = get_key(&console, &who, &key).await?;
    if form.confirm.trim() != current.name {
        return Err(PageError::Invalid(format!(
            "confirm: type the key's name, {:?}, to schedule its deletion",
            current.name
        )));
    }
    let request = pb::ScheduleKeyDeletionRequest {
        key: current.key_id.clone(),
        version: 0,
        pending_window_days: form.pending_days.unwrap_or(30),
    };
    let answer = console.mesh.key_service().schedule_key_deletion(call(&who, request)?).await?.into_inner();
    Ok(back_to(&answer.key.unwrap_or(current), "deletion-scheduled"))
}

/// `POST /keys/{key}/cancel-deletion`.
pub async fn cancel_deletion(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Path(key): Path<String>,
) -> Result<Response, PageError> {
    who.require_manage("Cancelling a key's deletion")?;
    let request = pb::CancelKeyDeletionRequest { key, version: 0 };
    let answer = console.mesh.key_service().cancel_key_deletion(call(&who, request)?).await?.into_inner();
    Ok(back_to(&answer.key.unwrap_or_default(), "deletion-cancelled"))
}

#[derive(Template)]
#[template(path = "policy.html")]
struct PolicyPage {
    layout: Layout,
    key: String,
    rules: String,
    enforcement: String,
    error: Option<String>,
    /// Set when the enforcement is about to change to or from ENFORCE and the person must acknowledge it.
    warning: Option<EnforcementChange>,
}

/// A change of enforcement that needs acknowledging.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EnforcementChange {
    /// To ENFORCE: calls the rules do not allow are refused at once.
    Tightening,
    /// From ENFORCE: the policy stops being enforced.
    Loosening,
}

impl EnforcementChange {
    /// For the template.
    fn is_tightening(self) -> bool {
        self == Self::Tightening
    }
}

/// The policy form.
#[derive(Deserialize)]
pub struct PolicyForm {
    #[serde(default)]
    rules: String,
    #[serde(default)]
    enforcement: String,
    #[serde(default)]
    confirm_enforce: Option<String>,
}

/// The enforcement as key-service applies it: UNSPECIFIED is enforced (the proto's definition).
fn effective(e: pb::PolicyEnforcement) -> pb::PolicyEnforcement {
    match e {
        pb::PolicyEnforcement::Unspecified => pb::PolicyEnforcement::Enforce,
        other => other,
    }
}

fn enforcement_form_value(e: pb::PolicyEnforcement) -> &'static str {
    match effective(e) {
        pb::PolicyEnforcement::Warn => "warn",
        pb::PolicyEnforcement::None => "disabled",
        pb::PolicyEnforcement::Enforce | pb::PolicyEnforcement::Unspecified => "enforce",
    }
}

fn enforcement_of(value: &str) -> Result<pb::PolicyEnforcement, PageError> {
    match value {
        "disabled" => Ok(pb::PolicyEnforcement::None),
        "warn" => Ok(pb::PolicyEnforcement::Warn),
        "enforce" => Ok(pb::PolicyEnforcement::Enforce),
        other => Err(PageError::Invalid(format!("enforcement: unknown value {other:?}"))),
    }
}

/// The change from `current` to `next` that needs acknowledging, if any.
fn enforcement_change(current: pb::PolicyEnforcement, next: pb::PolicyEnforcement) -> Option<EnforcementChange> {
    let (was, will) = (effective(current) == pb::PolicyEnforcement::Enforce, next == pb::PolicyEnforcement::Enforce);
    match (was, will) {
        (false, true) => Some(EnforcementChange::Tightening),
        (true, false) => Some(EnforcementChange::Loosening),
        _ => None,
    }
}

/// The rules of the editor's text, one CEL expression a line. A line that is an existing rule's expression keeps
/// that rule (its name and the operations it applies to); a new line becomes a rule for every operation.
fn edited_rules(text: &str, existing: &[pb::PolicyRule]) -> Vec<pb::PolicyRule> {
    let mut rules: Vec<pb::PolicyRule> = Vec::new();
    for expression in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let kept = existing.iter().find(|r| r.expression == expression && !rules.iter().any(|k| k.name == r.name));
        let rule = match kept {
            Some(rule) => rule.clone(),
            None => {
                let name = (1..)
                    .map(|n| format!("rule-{n}"))
                    .find(|n| !existing.iter().chain(&rules).any(|r| &r.name == n))
                    .unwrap_or_default();
                pb::PolicyRule { name, expression: expression.to_owned(), operations: Vec::new() }
            }
        };
        rules.push(rule);
    }
    rules
}

/// `GET /keys/{key}/policy`.
pub async fn policy_form(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Path(key): Path<String>,
) -> Result<Response, PageError> {
    who.require_manage("Editing a key's policy")?;
    let key = get_key(&console, &who, &key).await?;
    let policy = key.policy.unwrap_or_default();
    Ok(render(&PolicyPage {
        layout: Layout::of(&who, None),
        key: key.name,
        rules: policy.rules.iter().map(|r| r.expression.as_str()).collect::<Vec<_>>().join("\n"),
        enforcement: enforcement_form_value(policy.enforcement()).into(),
        error: None,
        warning: None,
    }))
}

/// `POST /keys/{key}/policy`: the rules (one CEL expression per line) and the enforcement replace the key's;
/// its other policy settings stay. Switching to or from ENFORCE needs the warning acknowledged.
pub async fn update_policy(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Path(key): Path<String>,
    Form(form): Form<PolicyForm>,
) -> Result<Response, PageError> {
    who.require_manage("Editing a key's policy")?;
    let current = get_key(&console, &who, &key).await?;
    let mut policy = current.policy.clone().unwrap_or_default();
    let page = |status: StatusCode, error: Option<String>, warning: Option<EnforcementChange>| {
        let page = PolicyPage {
            layout: Layout::of(&who, None),
            key: current.name.clone(),
            rules: form.rules.clone(),
            enforcement: form.enforcement.clone(),
            error,
            warning,
        };
        (status, render(&page)).into_response()
    };
    let enforcement = match enforcement_of(&form.enforcement) {
        Ok(e) => e,
        Err(e) => return Ok(page(StatusCode::UNPROCESSABLE_ENTITY, Some(e.to_string()), None)),
    };
    if let Some(change) = enforcement_change(policy.enforcement(), enforcement)
        && form.confirm_enforce.is_none()
    {
        return Ok(page(StatusCode::CONFLICT, None, Some(change)));
    }
    policy.rules = edited_rules(&form.rules, &policy.rules);
    policy.set_enforcement(enforcement);
    let request = pb::UpdateKeyPolicyRequest {
        key: current.key_id.clone(),
        policy: Some(policy),
        update_paths: vec!["policy".into()],
        ..Default::default()
    };
    match console.mesh.key_service().update_key_policy(call(&who, request)?).await {
        Ok(answer) => Ok(back_to(&answer.into_inner().key.unwrap_or_else(|| current.clone()), "policy")),
        Err(status) => {
            let (code, message) = form_refusal(PageError::Mesh(status))?;
            Ok(page(code, Some(message), None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(name: &str, expression: &str, operations: &[pb::Operation]) -> pb::PolicyRule {
        pb::PolicyRule {
            name: name.into(),
            expression: expression.into(),
            operations: operations.iter().map(|o| *o as i32).collect(),
        }
    }

    #[test]
    fn unchanged_rules_keep_their_names_and_operations() {
        let existing = [rule("decrypt-office-hours", "request.time.getHours() < 18", &[pb::Operation::Decrypt])];
        let edited = edited_rules("request.time.getHours() < 18\n\n  key.version > 0  \n", &existing);
        assert_eq!(edited[0], existing[0], "kept whole, operations included");
        assert_eq!(edited[1], rule("rule-1", "key.version > 0", &[]), "a new line applies to every operation");
        assert!(edited_rules("", &existing).is_empty());
    }

    #[test]
    fn changes_to_and_from_enforce_need_acknowledging_and_unspecified_is_enforced() {
        use pb::PolicyEnforcement::*;
        assert_eq!(enforcement_change(Unspecified, Warn), Some(EnforcementChange::Loosening));
        assert_eq!(enforcement_change(Enforce, None), Some(EnforcementChange::Loosening));
        assert_eq!(enforcement_change(Warn, Enforce), Some(EnforcementChange::Tightening));
        assert_eq!(enforcement_change(Unspecified, Enforce), Option::None);
        assert_eq!(enforcement_change(Warn, None), Option::None);
        assert_eq!(enforcement_form_value(Unspecified), "enforce");
        assert!(enforcement_of("").is_err(), "no default that turns enforcement off");
    }
}

//! Applications: the tenant's list, creation, a new client secret (with the old one kept for a grace period),
//! and disabling behind a typed confirmation. A new secret is shown once, in the response to the POST that made
//! it: it is never in a URL, a redirect, a log line or the session.

use askama::Template;
use axum::{
    Extension, Form,
    extract::{Path, State},
    response::{IntoResponse, Redirect, Response},
};
use keymesh_proto::v1 as pb;
use serde::Deserialize;
use zeroize::Zeroizing;

use super::{call, form_refusal, short, timestamp, wire_name};
use crate::{
    app::{Shared, Who},
    error::PageError,
    views::{Layout, render},
};

/// One row of the list.
pub struct ApplicationRow {
    /// Client id.
    pub client_id: String,
    /// Name.
    pub name: String,
    /// Roles, comma-separated.
    pub roles: String,
    /// Key permissions, as `pattern: op, op`.
    pub permissions: Vec<String>,
    /// Whether it is disabled.
    pub disabled: bool,
    /// Created.
    pub created: String,
}

#[derive(Template)]
#[template(path = "applications.html")]
struct ApplicationsPage {
    layout: Layout,
    rows: Vec<ApplicationRow>,
    /// Whether the person may read the tenant's applications (a developer may not: they register their own).
    can_list: bool,
    /// Whether the person may register applications of their own.
    can_register: bool,
}

/// Roles token-service lets list the tenant's applications.
const LISTERS: &[&str] = &["viewer", "admin", "owner", "auditor"];
/// Roles token-service lets register applications (a developer's own, with at most the developer's key rights).
const REGISTRARS: &[&str] = &["developer", "admin", "owner"];

fn operation_names(ops: &[i32]) -> String {
    ops.iter()
        .map(|op| {
            pb::Operation::try_from(*op)
                .map_or_else(|_| op.to_string(), |o| short(o.as_str_name(), "OPERATION_").to_lowercase())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// `GET /applications`.
pub async fn list(State(console): State<Shared>, Extension(who): Extension<Who>) -> Result<Response, PageError> {
    let mut rows = Vec::new();
    let mut page_token = String::new();
    let can_list = who.has_role(LISTERS);
    for _ in 0..if can_list { 50 } else { 0 } {
        let request = pb::ListApplicationsRequest { page_size: 100, page_token, tenant_id: String::new() };
        let page = console.mesh.token_service().list_applications(call(&who, request)?).await?.into_inner();
        rows.extend(
            page.applications.iter().map(|a| ApplicationRow {
                client_id: a.client_id.clone(),
                name: a.name.clone(),
                roles: a.roles().map(|r| short(r.as_str_name(), "ROLE_").to_lowercase()).collect::<Vec<_>>().join(", "),
                permissions: a
                    .permissions
                    .iter()
                    .map(|p| format!("{}: {}", p.key_pattern, operation_names(&p.operations)))
                    .collect(),
                disabled: a.disabled,
                created: timestamp(a.create_time.as_ref()),
            }),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    Ok(render(&ApplicationsPage {
        layout: Layout::of(&who, None),
        rows,
        can_list,
        can_register: who.has_role(REGISTRARS),
    }))
}

#[derive(Template)]
#[template(path = "application_new.html")]
struct NewApplicationPage {
    layout: Layout,
    error: Option<String>,
    form: NewApplication,
}

/// The create form.
#[derive(Deserialize, Default)]
pub struct NewApplication {
    #[serde(default)]
    name: String,
    #[serde(default)]
    role: String,
    #[serde(default)]
    key_pattern: String,
    #[serde(default)]
    operations: String,
}

/// `GET /applications/new`.
pub async fn new_form(Extension(who): Extension<Who>) -> Result<Response, PageError> {
    who.require_manage("Creating an application")?;
    let form = NewApplication { role: "developer".into(), ..Default::default() };
    Ok(render(&NewApplicationPage { layout: Layout::of(&who, None), error: None, form }))
}

#[derive(Template)]
#[template(path = "application_register.html")]
struct RegisterPage {
    layout: Layout,
    error: Option<String>,
    form: Registration,
}

/// The registration form: an application of the person's own, `<name>.<environment>`.
#[derive(Deserialize, Default)]
pub struct Registration {
    #[serde(default)]
    name: String,
    #[serde(default)]
    environment: String,
    #[serde(default)]
    team: String,
    #[serde(default)]
    keys: String,
}

fn require_registrar(who: &Who) -> Result<(), PageError> {
    if who.has_role(REGISTRARS) {
        Ok(())
    } else {
        Err(PageError::Forbidden("Registering an application needs the developer, admin or owner role.".into()))
    }
}

/// `GET /applications/register`.
pub async fn register_form(Extension(who): Extension<Who>) -> Result<Response, PageError> {
    require_registrar(&who)?;
    let form = Registration { environment: "development".into(), ..Default::default() };
    Ok(render(&RegisterPage { layout: Layout::of(&who, None), error: None, form }))
}

/// `POST /applications/register`: registers (or finds again) the person's own application, with fresh
/// credentials shown once. token-service bounds its key rights by the person's own.
pub async fn register(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Form(form): Form<Registration>,
) -> Result<Response, PageError> {
    require_registrar(&who)?;
    let request = pb::RegisterApplicationRequest {
        name: form.name.trim().to_owned(),
        team: form.team.trim().to_owned(),
        environment: form.environment.trim().to_owned(),
        keys: form.keys.split(',').map(str::trim).filter(|k| !k.is_empty()).map(str::to_owned).collect(),
    };
    match console.mesh.token_service().register_application(call(&who, request)?).await {
        Ok(answer) => {
            let registered = answer.into_inner();
            let app = registered.application.unwrap_or_default();
            let notice = if registered.created {
                format!("Application {} registered.", app.name)
            } else {
                format!("Application {} was registered already: here are fresh credentials.", app.name)
            };
            let page = SecretPage {
                layout: Layout::of(&who, Some(notice)),
                title: format!("Application {}", app.name),
                client_id: app.client_id,
                secret: Zeroizing::new(registered.client_secret),
                previous_expires: String::new(),
            };
            Ok(render(&page))
        }
        Err(status) => {
            let (code, message) = form_refusal(PageError::Mesh(status))?;
            let page = RegisterPage { layout: Layout::of(&who, None), error: Some(message), form };
            Ok((code, render(&page)).into_response())
        }
    }
}

#[derive(Template)]
#[template(path = "secret.html")]
struct SecretPage {
    layout: Layout,
    title: String,
    client_id: String,
    secret: Zeroizing<String>,
    previous_expires: String,
}

fn create_request(form: &NewApplication) -> Result<pb::CreateApplicationRequest, PageError> {
    let role = pb::Role::from_str_name(&wire_name("ROLE_", &form.role))
        .filter(|r| *r != pb::Role::Unspecified)
        .ok_or_else(|| PageError::Invalid(format!("role: unknown role {:?}", form.role)))?;
    let operations = form
        .operations
        .split(',')
        .map(str::trim)
        .filter(|o| !o.is_empty())
        .map(|o| {
            pb::Operation::from_str_name(&wire_name("OPERATION_", o))
                .filter(|op| *op != pb::Operation::Unspecified)
                .map(|op| op as i32)
                .ok_or_else(|| PageError::Invalid(format!("operations: unknown operation {o:?}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let permissions = match (form.key_pattern.trim(), operations.is_empty()) {
        ("", true) => Vec::new(),
        ("", false) => return Err(PageError::Invalid("key_pattern: name the keys the operations apply to".into())),
        (_, true) => {
            return Err(PageError::Invalid("operations: name at least one operation for the key pattern".into()));
        }
        (pattern, false) => vec![pb::KeyPermission { key_pattern: pattern.to_owned(), operations }],
    };
    Ok(pb::CreateApplicationRequest {
        name: form.name.trim().to_owned(),
        tenant_id: String::new(),
        roles: vec![role as i32],
        permissions,
    })
}

/// `POST /applications`: the new client secret is in this response and nowhere else.
pub async fn create(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Form(form): Form<NewApplication>,
) -> Result<Response, PageError> {
    who.require_manage("Creating an application")?;
    let outcome = async {
        let request = create_request(&form)?;
        Ok::<_, PageError>(console.mesh.token_service().create_application(call(&who, request)?).await?.into_inner())
    }
    .await;
    match outcome {
        Ok(created) => {
            let app = created.application.unwrap_or_default();
            let page = SecretPage {
                layout: Layout::of(&who, Some(format!("Application {} created.", app.name))),
                title: format!("Application {}", app.name),
                client_id: app.client_id,
                secret: Zeroizing::new(created.client_secret),
                previous_expires: String::new(),
            };
            Ok(render(&page))
        }
        Err(error) => {
            let (status, message) = form_refusal(error)?;
            let page = NewApplicationPage { layout: Layout::of(&who, None), error: Some(message), form };
            Ok((status, render(&page)).into_response())
        }
    }
}

/// The rotate form.
#[derive(Deserialize)]
pub struct RotateSecret {
    #[serde(default)]
    grace_hours: Option<u32>,
}

/// `POST /applications/{client_id}/rotate-secret`: a new secret, shown once; the old one keeps working for the
/// grace period chosen (0: it stops now).
pub async fn rotate_secret(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Path(client_id): Path<String>,
    Form(form): Form<RotateSecret>,
) -> Result<Response, PageError> {
    who.require_manage("Rotating a client secret")?;
    let hours = form.grace_hours.unwrap_or(24);
    if hours > 720 {
        return Err(PageError::Invalid("grace_hours: at most 720 (30 days)".into()));
    }
    let request = pb::RotateClientSecretRequest {
        client_id: client_id.clone(),
        // 0: the old secret stops now (token-service takes no grace period with that).
        grace_period: (hours > 0).then(|| prost_types::Duration { seconds: i64::from(hours) * 3600, nanos: 0 }),
        expire_previous_now: hours == 0,
    };
    let rotated = console.mesh.token_service().rotate_client_secret(call(&who, request)?).await?.into_inner();
    let page = SecretPage {
        layout: Layout::of(&who, Some("New client secret issued.".into())),
        title: format!("New secret for {client_id}"),
        client_id,
        secret: Zeroizing::new(rotated.client_secret),
        previous_expires: timestamp(rotated.previous_secret_expire_time.as_ref()),
    };
    Ok(render(&page))
}

/// The disable form: the application's name typed out.
#[derive(Deserialize)]
pub struct DisableApplication {
    #[serde(default)]
    confirm: String,
    #[serde(default)]
    name: String,
}

/// `POST /applications/{client_id}/disable`.
pub async fn disable(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Path(client_id): Path<String>,
    Form(form): Form<DisableApplication>,
) -> Result<Response, PageError> {
    who.require_manage("Disabling an application")?;
    if form.name.is_empty() || form.confirm.trim() != form.name {
        return Err(PageError::Invalid("confirm: type the application's name to disable it".into()));
    }
    let request = pb::DisableApplicationRequest { client_id };
    console.mesh.token_service().disable_application(call(&who, request)?).await?;
    Ok(Redirect::to("/applications").into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(role: &str, pattern: &str, ops: &str) -> NewApplication {
        NewApplication { name: " svc ".into(), role: role.into(), key_pattern: pattern.into(), operations: ops.into() }
    }

    #[test]
    fn the_create_form_becomes_one_role_and_one_permission() {
        let r = create_request(&form("developer", "orders-*", "encrypt, decrypt")).unwrap();
        assert_eq!(r.name, "svc");
        assert_eq!(r.roles, [pb::Role::Developer as i32]);
        assert_eq!(r.permissions[0].key_pattern, "orders-*");
        assert_eq!(r.permissions[0].operations, [pb::Operation::Encrypt as i32, pb::Operation::Decrypt as i32]);
        assert!(create_request(&form("viewer", "", "")).unwrap().permissions.is_empty());
    }

    #[test]
    fn bad_fields_are_named() {
        for (f, field) in [
            (form("emperor", "", ""), "role"),
            (form("unspecified", "", ""), "role"),
            (form("developer", "orders-*", "encrypt, teleport"), "operations"),
            (form("developer", "", "encrypt"), "key_pattern"),
            (form("developer", "orders-*", ""), "operations"),
        ] {
            let err = create_request(&f).err().unwrap().to_string();
            assert!(err.starts_with(&format!("{field}:")), "{err}");
        }
    }
}

//! Tenants (owners only): creating a tenant below the owner's own. The mesh has no call that lists tenants, so
//! the page shows the one just created; its admins are then created by applications in it.

use askama::Template;
use axum::{
    Extension, Form,
    extract::State,
    response::{IntoResponse, Response},
};
use keymesh_proto::v1 as pb;
use serde::Deserialize;

use super::{call, form_refusal, timestamp};
use crate::{
    app::{Shared, Who},
    error::PageError,
    views::{Layout, render},
};

#[derive(Template)]
#[template(path = "tenants.html")]
struct TenantsPage {
    layout: Layout,
    error: Option<String>,
    created: Option<(String, String, String)>,
}

fn require_owner(who: &Who) -> Result<(), PageError> {
    if who.has_role(&["owner"]) { Ok(()) } else { Err(PageError::Forbidden("Tenants are the owner's.".into())) }
}

/// `GET /tenants`.
pub async fn show(Extension(who): Extension<Who>) -> Result<Response, PageError> {
    require_owner(&who)?;
    Ok(render(&TenantsPage { layout: Layout::of(&who, None), error: None, created: None }))
}

/// The create form.
#[derive(Deserialize)]
pub struct NewTenant {
    #[serde(default)]
    name: String,
}

/// `POST /tenants`.
pub async fn create(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Form(form): Form<NewTenant>,
) -> Result<Response, PageError> {
    require_owner(&who)?;
    let request = pb::CreateTenantRequest { name: form.name.trim().to_owned() };
    match console.mesh.token_service().create_tenant(call(&who, request)?).await {
        Ok(answer) => {
            let t = answer.into_inner().tenant.unwrap_or_default();
            let created = Some((t.tenant_id, t.name, timestamp(t.create_time.as_ref())));
            Ok(render(&TenantsPage { layout: Layout::of(&who, Some("Tenant created.".into())), error: None, created }))
        }
        Err(status) => {
            let (code, message) = form_refusal(PageError::Mesh(status))?;
            let page = TenantsPage { layout: Layout::of(&who, None), error: Some(message), created: None };
            Ok((code, render(&page)).into_response())
        }
    }
}

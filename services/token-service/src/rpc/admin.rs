//! Tenants and applications: creation, listing, secret rotation and disabling. Every method acts in the
//! caller's tenant, or as an owner in a tenant below it; nothing crosses into another tenant.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use keymesh_audit::AuditScope;
use keymesh_mesh::auth::{AccessClaims, Role};
use keymesh_proto::identifiers;
use keymesh_proto::v1 as pb;
use keymesh_store::{
    entity::{application, tenant},
    now_millis,
};

use super::{MANAGERS, READERS, TokenRpc};
use crate::{
    applications::{self, permissions_from_proto, roles_from_proto, timestamp},
    error::TokenError,
    revocations::{self, ACCESS_TOKEN_REVOCATION_LIFETIME_MS},
    secrets,
};

const DEFAULT_PAGE: u32 = 50;
const MAX_PAGE: u32 = 500;
/// Longest grace period of a rotated secret.
const MAX_GRACE_SECONDS: i64 = 30 * 86_400;

impl TokenRpc {
    pub(super) async fn hash_secret(&self, secret: &zeroize::Zeroizing<String>) -> Result<String, TokenError> {
        let (secret, fips) = (secret.clone(), self.fips);
        tokio::task::spawn_blocking(move || secrets::hash_secret(&secret, fips))
            .await
            .map_err(|e| TokenError::Internal(e.to_string()))?
    }

    /// An application the caller may manage: in its tenant (or, as an owner, below it), and holding no role
    /// above the caller's: an admin may not take over an owner's application by rotating its secret.
    async fn managed_application(
        &self,
        claims: &AccessClaims,
        client_id: &str,
        method: &str,
    ) -> Result<application::Model, TokenError> {
        identifiers::opaque_id("client_id", client_id)?;
        let app = self
            .repo
            .application(client_id)
            .await?
            .ok_or_else(|| TokenError::NotFound(format!("no application {client_id:?}")))?;
        match self.acting_tenant(claims, &app.tenant_id, MANAGERS, method).await {
            // In its own tenant the caller may know the application exists; elsewhere it is told what an
            // unknown id tells it.
            Err(TokenError::PermissionDenied(_)) if app.tenant_id != claims.tenant => {
                return Err(TokenError::ForeignApplication { client_id: app.client_id, owner: app.tenant_id });
            }
            other => other?,
        };
        if applications::stored_roles(&app)?.contains(&Role::Owner) && !claims.has_any_role(&[Role::Owner]) {
            return Err(TokenError::PermissionDenied(format!(
                "{method}: application {} holds ROLE_OWNER; only an owner manages it",
                app.client_id
            )));
        }
        Ok(app)
    }

    /// Disables an application and revokes its tokens, "as of" the revocation's own expiry: every token of the
    /// application matches, including one issued in a race with this call (its check of `disabled` read the row
    /// before the commit).
    async fn disable_for_good(&self, client_id: &str) -> Result<(), TokenError> {
        let until = now_millis() + ACCESS_TOKEN_REVOCATION_LIFETIME_MS;
        let revocation = revocations::revocation(pb::RevocationScope::Application, client_id, until, until);
        Ok(self.repo.disable_application(client_id, revocation).await?)
    }

    pub(super) async fn create_tenant(
        &self,
        claims: &AccessClaims,
        request: pb::CreateTenantRequest,
    ) -> Result<pb::CreateTenantResponse, TokenError> {
        if !claims.has_any_role(&[Role::Owner]) {
            return Err(TokenError::PermissionDenied(format!(
                "CreateTenant needs ROLE_OWNER; application {} has {:?}",
                claims.sub, claims.roles
            )));
        }
        applications::validate_name(
            "name",
            &request.name,
            |c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-',
            "1 to 64 of [a-z0-9-]",
        )?;
        // Owners act up to MAX_TENANT_DEPTH levels down: a deeper tenant would have nobody above it.
        let mut depth = 1;
        let mut current = self.repo.tenant(&claims.tenant).await?;
        while let Some(parent) = current.and_then(|t| t.parent_id) {
            depth += 1;
            if depth >= super::MAX_TENANT_DEPTH {
                return Err(TokenError::FailedPrecondition(format!(
                    "tenants nest at most {} levels deep",
                    super::MAX_TENANT_DEPTH
                )));
            }
            current = self.repo.tenant(&parent).await?;
        }
        let row = tenant::Model {
            id: format!("t_{}", uuid::Uuid::new_v4().simple()),
            name: request.name,
            created_at: now_millis(),
            parent_id: Some(claims.tenant.clone()),
        };
        self.repo.create_tenant(row.clone()).await?;
        tracing::info!(tenant = %row.id, name = %row.name, parent = %claims.tenant, "created a tenant");
        Ok(pb::CreateTenantResponse {
            tenant: Some(pb::Tenant {
                tenant_id: row.id,
                name: row.name,
                create_time: Some(timestamp(row.created_at)),
                parent_tenant_id: claims.tenant.clone(),
            }),
        })
    }

    pub(super) async fn create_application(
        &self,
        claims: &AccessClaims,
        request: pb::CreateApplicationRequest,
        audit: &mut AuditScope,
    ) -> Result<pb::CreateApplicationResponse, TokenError> {
        let tenant_id = self.acting_tenant(claims, &request.tenant_id, MANAGERS, "CreateApplication").await?;
        applications::validate_application_name(&request.name)?;
        let roles = roles_from_proto(&request.roles)?;
        if roles.contains(&Role::Owner) && !claims.has_any_role(&[Role::Owner]) {
            return Err(TokenError::PermissionDenied("only an owner can grant ROLE_OWNER".into()));
        }
        let permissions = permissions_from_proto(&request.permissions)?;
        let secret = secrets::generate_secret()?;
        let serialize = |v: Result<String, serde_json::Error>| v.map_err(|e| TokenError::Internal(e.to_string()));
        let row = application::Model {
            client_id: format!("app_{}", uuid::Uuid::new_v4().simple()),
            tenant_id,
            name: request.name,
            roles: serialize(serde_json::to_string(&roles))?,
            permissions: serialize(serde_json::to_string(&permissions))?,
            secret_hash: self.hash_secret(&secret).await?,
            previous_secret_hash: None,
            previous_secret_expires_at: None,
            disabled: false,
            created_at: now_millis(),
        };
        audit.resource(&row.client_id, 0, 0);
        self.repo.create_application(row.clone()).await?;
        tracing::info!(client_id = %row.client_id, tenant = %row.tenant_id, "created an application");
        Ok(pb::CreateApplicationResponse {
            application: Some(applications::to_proto(&row)?),
            client_secret: secret.to_string(),
        })
    }

    pub(super) async fn list_applications(
        &self,
        claims: &AccessClaims,
        request: pb::ListApplicationsRequest,
    ) -> Result<pb::ListApplicationsResponse, TokenError> {
        let tenant_id = self.acting_tenant(claims, &request.tenant_id, READERS, "ListApplications").await?;
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE,
            n if n <= MAX_PAGE => n,
            n => {
                return Err(TokenError::InvalidArgument {
                    field: "page_size",
                    reason: format!("{n} is over {MAX_PAGE}"),
                });
            }
        };
        let after = if request.page_token.is_empty() {
            None
        } else {
            let bad = || TokenError::InvalidArgument {
                field: "page_token",
                reason: "not a page token ListApplications returned".into(),
            };
            let bytes = URL_SAFE_NO_PAD.decode(&request.page_token).map_err(|_| bad())?;
            let client_id = String::from_utf8(bytes).map_err(|_| bad())?;
            identifiers::opaque_id("page_token", &client_id).map_err(|_| bad())?;
            Some(client_id)
        };
        // One more than asked: whether it exists says if there is a next page.
        let mut rows = self.repo.list_applications(&tenant_id, after.as_deref(), u64::from(page_size) + 1).await?;
        let next_page_token = if rows.len() > page_size as usize {
            rows.truncate(page_size as usize);
            rows.last().map(|r| URL_SAFE_NO_PAD.encode(&r.client_id)).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(pb::ListApplicationsResponse {
            applications: rows.iter().map(applications::to_proto).collect::<Result<_, _>>()?,
            next_page_token,
        })
    }

    pub(super) async fn rotate_client_secret(
        &self,
        claims: &AccessClaims,
        request: pb::RotateClientSecretRequest,
        audit: &mut AuditScope,
    ) -> Result<pb::RotateClientSecretResponse, TokenError> {
        let grace_ms = match request.grace_period {
            Some(_) if request.expire_previous_now => {
                return Err(TokenError::InvalidArgument {
                    field: "grace_period",
                    reason: "leave it unset with expire_previous_now".into(),
                });
            }
            None if request.expire_previous_now => 0,
            None => self.signer.params.secret_grace.as_millis() as i64,
            Some(d) if d.seconds == 0 && d.nanos == 0 => self.signer.params.secret_grace.as_millis() as i64,
            Some(d) if d.seconds < 0 || !(0..1_000_000_000).contains(&d.nanos) || d.seconds > MAX_GRACE_SECONDS => {
                return Err(TokenError::InvalidArgument {
                    field: "grace_period",
                    reason: format!("must be between 0 and {MAX_GRACE_SECONDS} seconds (0: the configured default)"),
                });
            }
            Some(d) => d.seconds * 1000 + i64::from(d.nanos) / 1_000_000,
        };
        let app = self.managed_application(claims, &request.client_id, "RotateClientSecret").await?;
        audit.resource(&app.client_id, 0, 0);
        // Whatever its roles: a token (stolen, or exchanged from a platform identity) must not turn into a
        // lasting secret, nor lock the holder of the current secret out. Another admin or owner rotates it.
        if app.client_id == claims.sub {
            return Err(TokenError::PermissionDenied(format!(
                "RotateClientSecret: application {} cannot rotate its own secret; another admin or owner of the \
                 tenant (or an owner above it) rotates it",
                app.client_id
            )));
        }
        if app.disabled {
            return Err(TokenError::FailedPrecondition(format!(
                "application {} is disabled; it gets no new secret",
                app.client_id
            )));
        }
        let secret = secrets::generate_secret()?;
        let now = now_millis();
        let previous_expires_at = now + grace_ms;
        // A leaked secret: what was obtained with it goes too (refresh families, access tokens issued so far).
        // Tokens carry whole seconds (`iat`), so the revocation covers those issued before the current second:
        // tokens the new secret gets a moment later must live, at the price of at most one second of tokens
        // issued just before the cut.
        let cut_off = request.expire_previous_now.then(|| {
            let before_this_second = (now.div_euclid(1000) - 1) * 1000;
            revocations::revocation(
                pb::RevocationScope::Application,
                &app.client_id,
                before_this_second,
                now + ACCESS_TOKEN_REVOCATION_LIFETIME_MS,
            )
        });
        let rotated = self
            .repo
            .rotate_secret(
                &app.client_id,
                self.hash_secret(&secret).await?,
                &app.secret_hash,
                previous_expires_at,
                cut_off,
            )
            .await?;
        if !rotated {
            return Err(TokenError::Aborted(format!(
                "the secret of {} was rotated concurrently; retry if a new one is still needed",
                app.client_id
            )));
        }
        audit.detail(&if request.expire_previous_now {
            "previous secret, refresh tokens and access tokens revoked now".to_owned()
        } else {
            format!("previous secret valid for {} s more", grace_ms / 1000)
        });
        tracing::info!(client_id = %app.client_id, grace_ms, "rotated a client secret");
        Ok(pb::RotateClientSecretResponse {
            client_secret: secret.to_string(),
            previous_secret_expire_time: Some(timestamp(previous_expires_at)),
        })
    }

    pub(super) async fn disable_application(
        &self,
        claims: &AccessClaims,
        request: pb::DisableApplicationRequest,
        audit: &mut AuditScope,
    ) -> Result<pb::DisableApplicationResponse, TokenError> {
        let mut app = self.managed_application(claims, &request.client_id, "DisableApplication").await?;
        audit.resource(&app.client_id, 0, 0);
        if app.client_id == claims.sub {
            return Err(TokenError::FailedPrecondition(
                "an application cannot disable itself; ask another admin of the tenant".into(),
            ));
        }
        if !app.disabled {
            self.disable_for_good(&app.client_id).await?;
            app.disabled = true;
            audit.detail("disabled; its access and refresh tokens are revoked");
            tracing::info!(client_id = %app.client_id, "disabled an application");
        }
        // What it registered goes with it (also when asked again after a failure part-way): an application
        // registered from a session must not outlive the identity behind it.
        for registered in self.repo.registrations_in(&app.tenant_id).await? {
            if !super::registration::registered_by(&registered.registrant, &app.client_id) {
                continue;
            }
            let Some(child) = self.repo.application(&registered.client_id).await?.filter(|c| !c.disabled) else {
                continue;
            };
            self.disable_for_good(&child.client_id).await?;
            tracing::info!(client_id = %child.client_id, registrant = %app.client_id, "disabled with its registrant");
        }
        Ok(pb::DisableApplicationResponse { application: Some(applications::to_proto(&app)?) })
    }
}

//! The TokenService gRPC methods: identity administration in `admin`, the token grants in `grants`, and
//! revocation here. Every call is audited: tokens issued, refused, refreshed and revoked, and every change to
//! tenants and applications.

mod admin;
mod grants;
mod registration;

use std::sync::Arc;

use keymesh_audit::{AuditScope, AuditSink};
use keymesh_gate::{Admitted, Gate};
use keymesh_mesh::{
    auth::{AccessClaims, Role},
    identity::PeerIdentity,
};
use keymesh_proto::v1::{self as pb, token_service_server::TokenService};
use keymesh_store::{now_millis, tokens::TokenRepository};
use opentelemetry::KeyValue;
use tonic::{Request, Response, Status};

use crate::{
    error::TokenError,
    exchange::Exchanger,
    revocations::{self, ACCESS_TOKEN_REVOCATION_LIFETIME_MS},
    signing::Signer,
};

const SERVICE: &str = "token-service";

/// `keymesh.tokens.requests` by `grant` and `outcome` (issued or refused).
static ISSUANCE: std::sync::LazyLock<opentelemetry::metrics::Counter<u64>> = std::sync::LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .u64_counter("keymesh.tokens.requests")
        .with_description("IssueToken requests, by grant and outcome (issued or refused)")
        .build()
});

/// The label of a grant: one of four words, whatever number a caller sent.
fn grant_label(grant: pb::GrantType) -> &'static str {
    match grant {
        pb::GrantType::ClientCredentials => "client_credentials",
        pb::GrantType::RefreshToken => "refresh_token",
        pb::GrantType::TokenExchange => "token_exchange",
        pb::GrantType::Unspecified => "unspecified",
    }
}

/// Roles that manage a tenant's applications.
const MANAGERS: &[Role] = &[Role::Admin, Role::Owner];
/// Roles that read a tenant's applications.
const READERS: &[Role] = &[Role::Viewer, Role::Admin, Role::Owner, Role::Auditor];
/// Tenants nest at most this deep; a longer parent chain is corrupt data, not a deeper tenant.
const MAX_TENANT_DEPTH: usize = 16;
/// Prefix of refresh tokens: tells them from access tokens at a glance (and to secret scanners).
const REFRESH_TOKEN_PREFIX: &str = "kmrt_";

/// The TokenService implementation.
pub struct TokenRpc {
    repo: TokenRepository,
    signer: Arc<Signer>,
    gate: Gate,
    audit: AuditSink,
    exchanger: Exchanger,
    limits: Arc<keymesh_limits::Limiter>,
    /// FIPS mode: new secrets are hashed with PBKDF2, and the decoy hash takes that form.
    fips: bool,
}

impl TokenRpc {
    /// Wires the service.
    pub fn new(
        repo: TokenRepository,
        signer: Arc<Signer>,
        gate: Gate,
        audit: AuditSink,
        exchanger: Exchanger,
        limits: Arc<keymesh_limits::Limiter>,
        fips: bool,
    ) -> Self {
        Self { repo, signer, gate, audit, exchanger, limits, fips }
    }

    /// An administration call: through the gate (token, rate limits; a refused authentication is counted
    /// there), then `run`, and the call's audit event recorded whatever the outcome.
    async fn admin_call<Req, Resp>(
        &self,
        request: Request<Req>,
        operation: &str,
        run: impl AsyncFnOnce(&AccessClaims, Req, &mut AuditScope) -> Result<Resp, TokenError>,
    ) -> Result<Response<Resp>, Status> {
        let Admitted { claims, mut audit } = self.gate.admit(&request, operation).await?;
        let result = run(&claims, request.into_inner(), &mut audit).await;
        if let Err(TokenError::ForeignApplication { client_id, owner }) = &result {
            audit.cross_tenant_attempt(&self.audit, owner, client_id).await;
        }
        audit.finish(&self.audit, result.map(Response::new).map_err(Status::from)).await
    }

    /// Admits an unauthenticated call under the rate limit of its client certificate's identity.
    async fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        let peer = PeerIdentity::from_request(request)?;
        Ok(self.limits.admit_token_request(peer.as_str()).await?)
    }

    /// The tenant a call acts on (`requested`, or the caller's when empty), once the caller may act there: in
    /// its own tenant with one of `roles`, in a tenant below its own as an owner. Any other tenant, existing
    /// or not, is refused alike.
    async fn acting_tenant(
        &self,
        claims: &AccessClaims,
        requested: &str,
        roles: &[Role],
        method: &str,
    ) -> Result<String, TokenError> {
        let denied = |why: String| TokenError::PermissionDenied(format!("{method}: {why}"));
        if !requested.is_empty() {
            keymesh_proto::identifiers::opaque_id("tenant_id", requested)?;
        }
        if requested.is_empty() || requested == claims.tenant {
            if !claims.has_any_role(roles) {
                return Err(denied(format!(
                    "needs one of the roles {roles:?}; application {} has {:?}",
                    claims.sub, claims.roles
                )));
            }
            return Ok(claims.tenant.clone());
        }
        let foreign = || denied(format!("tenant {requested} is neither the caller's nor below it"));
        if !claims.has_any_role(&[Role::Owner]) {
            return Err(foreign());
        }
        let mut current = self.repo.tenant(requested).await?.ok_or_else(foreign)?;
        for _ in 0..MAX_TENANT_DEPTH {
            match current.parent_id {
                Some(parent) if parent == claims.tenant => return Ok(requested.to_owned()),
                Some(parent) => current = self.repo.tenant(&parent).await?.ok_or_else(foreign)?,
                None => break,
            }
        }
        Err(foreign())
    }

    /// The revocation of a refresh-token family: it outlives the family's refresh tokens (a successor stored
    /// in a race with it is refused at first use) and every access token issued from them.
    fn session_revocation(&self, family: &str, now: i64) -> keymesh_store::entity::revocation::Model {
        let refresh_ms = self.signer.params.refresh_token_ttl.as_millis() as i64;
        revocations::revocation(
            pb::RevocationScope::Session,
            family,
            now,
            now + refresh_ms + ACCESS_TOKEN_REVOCATION_LIFETIME_MS,
        )
    }

    /// RFC 7009: revokes what the token is, and says nothing about tokens that are not ours.
    async fn revoke(&self, token: &str, audit: &mut AuditScope) -> Result<(), TokenError> {
        let now = now_millis();
        if let Some(rest) = token.strip_prefix(REFRESH_TOKEN_PREFIX) {
            let hash = grants::refresh_token_hash(REFRESH_TOKEN_PREFIX, rest);
            let session = |family: &str| {
                revocations::revocation(
                    pb::RevocationScope::Session,
                    family,
                    now,
                    now + ACCESS_TOKEN_REVOCATION_LIFETIME_MS,
                )
            };
            match self.repo.revoke_refresh_family(&hash, session).await? {
                Some(token) => {
                    audit.caller(&token.tenant_id, &token.client_id);
                    audit.resource(&token.family_id, 0, 0);
                    audit.detail("refresh token family revoked, with the access tokens issued from it");
                    tracing::info!(client_id = %token.client_id, family = %token.family_id, "revoked a refresh token family");
                }
                None => audit.detail("not a refresh token of this issuer; nothing revoked"),
            }
            return Ok(());
        }
        let Some(claims) = self.signer.claims_of_own_token(token) else {
            audit.detail("not an access token of this issuer; nothing revoked");
            return Ok(());
        };
        audit.caller(&claims.tenant, &claims.sub);
        audit.resource(&claims.jti, 0, 0);
        let skew_ms = self.signer.params.verify.clock_skew.as_millis() as i64;
        let expires_at = (claims.exp as i64).saturating_mul(1000).saturating_add(skew_ms);
        if expires_at <= now {
            audit.detail("access token already expired; nothing to revoke");
            return Ok(());
        }
        self.repo.revoke(revocations::revocation(pb::RevocationScope::Token, &claims.jti, now, expires_at)).await?;
        audit.detail("access token revoked");
        tracing::info!(client_id = %claims.sub, jti = %claims.jti, "revoked an access token");
        Ok(())
    }
}

#[tonic::async_trait]
impl TokenService for TokenRpc {
    async fn create_tenant(
        &self,
        request: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        self.admin_call(request, "CreateTenant", async |claims, request, _| self.create_tenant(claims, request).await)
            .await
    }

    async fn create_application(
        &self,
        request: Request<pb::CreateApplicationRequest>,
    ) -> Result<Response<pb::CreateApplicationResponse>, Status> {
        self.admin_call(request, "CreateApplication", async |claims, request, audit| {
            self.create_application(claims, request, audit).await
        })
        .await
    }

    async fn list_applications(
        &self,
        request: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        self.admin_call(request, "ListApplications", async |claims, request, _| {
            self.list_applications(claims, request).await
        })
        .await
    }

    async fn rotate_client_secret(
        &self,
        request: Request<pb::RotateClientSecretRequest>,
    ) -> Result<Response<pb::RotateClientSecretResponse>, Status> {
        self.admin_call(request, "RotateClientSecret", async |claims, request, audit| {
            self.rotate_client_secret(claims, request, audit).await
        })
        .await
    }

    async fn disable_application(
        &self,
        request: Request<pb::DisableApplicationRequest>,
    ) -> Result<Response<pb::DisableApplicationResponse>, Status> {
        self.admin_call(request, "DisableApplication", async |claims, request, audit| {
            self.disable_application(claims, request, audit).await
        })
        .await
    }

    async fn register_application(
        &self,
        request: Request<pb::RegisterApplicationRequest>,
    ) -> Result<Response<pb::RegisterApplicationResponse>, Status> {
        self.admin_call(request, "RegisterApplication", async |claims, request, audit| {
            self.register_application(claims, request, audit).await
        })
        .await
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        self.admit(&request).await?;
        let request = request.into_inner();
        let grant = pb::GrantType::try_from(request.grant_type).unwrap_or(pb::GrantType::Unspecified);
        let mut audit = AuditScope::start(SERVICE, grants::operation(grant));
        let result = match grant {
            pb::GrantType::ClientCredentials => {
                self.client_credentials(&request.client_id, request.client_secret, &mut audit).await
            }
            pb::GrantType::RefreshToken => self.refresh(&request.refresh_token, &mut audit).await,
            pb::GrantType::TokenExchange => {
                self.token_exchange(&request.subject_token, &request.subject_token_type, &mut audit).await
            }
            pb::GrantType::Unspecified => Err(TokenError::InvalidArgument {
                field: "grant_type",
                reason: "set GRANT_TYPE_CLIENT_CREDENTIALS, GRANT_TYPE_REFRESH_TOKEN or GRANT_TYPE_TOKEN_EXCHANGE"
                    .into(),
            }),
        };
        let outcome = if result.is_ok() { "issued" } else { "refused" };
        ISSUANCE.add(1, &[KeyValue::new("grant", grant_label(grant)), KeyValue::new("outcome", outcome)]);
        audit.finish(&self.audit, result.map(Response::new).map_err(Status::from)).await
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        self.admit(&request).await?;
        let token = request.into_inner().token;
        let mut audit = AuditScope::start(SERVICE, "RevokeToken");
        let result = if token.trim().is_empty() {
            Err(TokenError::InvalidArgument {
                field: "token",
                reason: "give the access or refresh token to revoke".into(),
            })
        } else {
            self.revoke(token.trim(), &mut audit).await
        };
        audit
            .finish(&self.audit, result.map(|()| Response::new(pb::RevokeTokenResponse {})).map_err(Status::from))
            .await
    }

    async fn get_jwks(&self, _: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: self.signer.jwks(),
            issuer: self.signer.params.verify.issuer.clone(),
            audience: self.signer.params.verify.audience.clone(),
        }))
    }

    async fn list_revocations(
        &self,
        request: Request<pb::ListRevocationsRequest>,
    ) -> Result<Response<pb::ListRevocationsResponse>, Status> {
        let peer = PeerIdentity::from_request(&request)?;
        if peer.mesh_service().is_none() {
            return Err(Status::permission_denied(format!(
                "ListRevocations is only for mesh services; this connection's certificate is {peer}"
            )));
        }
        let rows = self.repo.revocations_in_force(now_millis()).await.map_err(TokenError::from)?;
        Ok(Response::new(pb::ListRevocationsResponse {
            revocations: rows.into_iter().map(revocations::to_proto).collect(),
        }))
    }
}

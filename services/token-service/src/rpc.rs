//! The TokenService gRPC methods. IssueToken (client credentials) and GetJwks are served; the rest of the
//! surface answers UNIMPLEMENTED naming the method until it lands.

use std::sync::Arc;

use keymesh_mesh::auth::{AccessClaims, KeyPermissionClaim, Role, unix_now};
use keymesh_proto::v1::{self as pb, token_service_server::TokenService};
use keymesh_store::tokens::TokenRepository;
use tonic::{Request, Response, Status};

use crate::{error::TokenError, secrets, signing::Signer};

/// The TokenService implementation.
pub struct TokenRpc {
    repo: TokenRepository,
    signer: Arc<Signer>,
    /// FIPS mode: the decoy hash takes the form new secrets get.
    fips: bool,
}

impl TokenRpc {
    /// Wires the service.
    pub fn new(repo: TokenRepository, signer: Signer, fips: bool) -> Self {
        Self { repo, signer: Arc::new(signer), fips }
    }

    async fn client_credentials(&self, client_id: &str, secret: String) -> Result<pb::IssueTokenResponse, TokenError> {
        if client_id.is_empty() || secret.is_empty() {
            return Err(TokenError::InvalidArgument {
                field: "client_id/client_secret",
                reason: "both are required for GRANT_TYPE_CLIENT_CREDENTIALS".into(),
            });
        }
        let app = self.repo.application(client_id).await?;
        let now_ms = keymesh_store::now_millis();
        let app_for_check = app.clone();
        // Argon2id and PBKDF2 take tens of milliseconds of CPU: keep them off the async workers.
        let fips = self.fips;
        let valid = tokio::task::spawn_blocking(move || match &app_for_check {
            Some(app) => {
                secrets::verify_secret(&secret, &app.secret_hash)
                    || (app.previous_secret_expires_at.is_some_and(|t| t > now_ms)
                        && app.previous_secret_hash.as_deref().is_some_and(|h| secrets::verify_secret(&secret, h)))
            }
            None => {
                let _ = secrets::verify_secret(&secret, secrets::decoy_hash(fips));
                false
            }
        })
        .await
        .map_err(|e| TokenError::Internal(e.to_string()))?;
        let app = match app {
            Some(app) if valid && !app.disabled => app,
            _ => return Err(TokenError::InvalidClient),
        };
        let roles: Vec<Role> = serde_json::from_str(&app.roles)
            .map_err(|e| TokenError::Internal(format!("stored roles of {}: {e}", app.client_id)))?;
        let perms: Vec<KeyPermissionClaim> = serde_json::from_str(&app.permissions)
            .map_err(|e| TokenError::Internal(format!("stored permissions of {}: {e}", app.client_id)))?;
        let now = unix_now();
        let ttl = self.signer.params.access_token_ttl.as_secs();
        let claims = AccessClaims {
            iss: self.signer.params.issuer.clone(),
            sub: app.client_id.clone(),
            aud: self.signer.params.audience.clone(),
            exp: now + ttl,
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            tenant: app.tenant_id.clone(),
            roles,
            perms,
        };
        let token = self.signer.sign(&claims)?;
        tracing::info!(client_id = %app.client_id, tenant = %app.tenant_id, jti = %claims.jti, "issued access token");
        Ok(pb::IssueTokenResponse {
            access_token: token,
            token_type: "Bearer".into(),
            expires_in_seconds: ttl as u32,
            refresh_token: String::new(),
            expire_time: Some(prost_types::Timestamp { seconds: claims.exp as i64, nanos: 0 }),
        })
    }
}

fn unimplemented<T>(method: &'static str) -> Result<Response<T>, Status> {
    Err(TokenError::Unimplemented(method).into())
}

#[tonic::async_trait]
impl TokenService for TokenRpc {
    async fn create_tenant(
        &self,
        _: Request<pb::CreateTenantRequest>,
    ) -> Result<Response<pb::CreateTenantResponse>, Status> {
        unimplemented("TokenService.CreateTenant")
    }

    async fn create_application(
        &self,
        _: Request<pb::CreateApplicationRequest>,
    ) -> Result<Response<pb::CreateApplicationResponse>, Status> {
        unimplemented("TokenService.CreateApplication")
    }

    async fn list_applications(
        &self,
        _: Request<pb::ListApplicationsRequest>,
    ) -> Result<Response<pb::ListApplicationsResponse>, Status> {
        unimplemented("TokenService.ListApplications")
    }

    async fn rotate_client_secret(
        &self,
        _: Request<pb::RotateClientSecretRequest>,
    ) -> Result<Response<pb::RotateClientSecretResponse>, Status> {
        unimplemented("TokenService.RotateClientSecret")
    }

    async fn disable_application(
        &self,
        _: Request<pb::DisableApplicationRequest>,
    ) -> Result<Response<pb::DisableApplicationResponse>, Status> {
        unimplemented("TokenService.DisableApplication")
    }

    async fn issue_token(
        &self,
        request: Request<pb::IssueTokenRequest>,
    ) -> Result<Response<pb::IssueTokenResponse>, Status> {
        let request = request.into_inner();
        let grant = pb::GrantType::try_from(request.grant_type).unwrap_or(pb::GrantType::Unspecified);
        let result = match grant {
            pb::GrantType::ClientCredentials => {
                self.client_credentials(&request.client_id, request.client_secret).await
            }
            pb::GrantType::RefreshToken => {
                Err(TokenError::Unimplemented("TokenService.IssueToken with GRANT_TYPE_REFRESH_TOKEN"))
            }
            pb::GrantType::TokenExchange => {
                Err(TokenError::Unimplemented("TokenService.IssueToken with GRANT_TYPE_TOKEN_EXCHANGE"))
            }
            pb::GrantType::Unspecified => Err(TokenError::InvalidArgument {
                field: "grant_type",
                reason: "set GRANT_TYPE_CLIENT_CREDENTIALS (or another grant)".into(),
            }),
        };
        Ok(Response::new(result?))
    }

    async fn revoke_token(
        &self,
        _: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        unimplemented("TokenService.RevokeToken")
    }

    async fn get_jwks(&self, _: Request<pb::GetJwksRequest>) -> Result<Response<pb::GetJwksResponse>, Status> {
        Ok(Response::new(pb::GetJwksResponse {
            keys: self.signer.jwks().to_vec(),
            issuer: self.signer.params.issuer.clone(),
            audience: self.signer.params.audience.clone(),
        }))
    }
}

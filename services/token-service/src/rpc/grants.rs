//! IssueToken's grants. Client credentials start a refresh-token family; a refresh token continues it
//! (spent on use, its successor issued); a spent token presented again ends it, with every access token it
//! produced.

use keymesh_audit::AuditScope;
use keymesh_mesh::auth::{AccessClaims, ExternalSubject, unix_now};
use keymesh_proto::identifiers;
use keymesh_proto::v1 as pb;
use keymesh_store::{
    entity::{application, refresh_token},
    now_millis,
    tokens::RefreshOutcome,
};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{REFRESH_TOKEN_PREFIX, TokenRpc};
use crate::{
    applications::{stored_permissions, stored_roles},
    error::TokenError,
    secrets,
};

/// The audit operation of a grant.
pub fn operation(grant: pb::GrantType) -> &'static str {
    match grant {
        pb::GrantType::ClientCredentials => "IssueToken.client_credentials",
        pb::GrantType::RefreshToken => "IssueToken.refresh_token",
        pb::GrantType::TokenExchange => "IssueToken.token_exchange",
        pb::GrantType::Unspecified => "IssueToken",
    }
}

/// The stored form of a refresh token: hex SHA-256 of the whole token.
pub fn refresh_token_hash(prefix: &str, rest: &str) -> String {
    let mut hasher = Sha256::new();
    hasher.update(prefix.as_bytes());
    hasher.update(rest.as_bytes());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// A new refresh token (256 random bits) and its row; `family_id` empty means the store fills it in.
fn new_refresh_token(
    app: Option<&application::Model>,
    family_id: &str,
    ttl_ms: i64,
) -> Result<(Zeroizing<String>, refresh_token::Model), TokenError> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let bytes = keymesh_crypto::random::random_bytes(32).map_err(|e| TokenError::Internal(e.to_string()))?;
    let rest = Zeroizing::new(URL_SAFE_NO_PAD.encode(&*bytes));
    let now = now_millis();
    let row = refresh_token::Model {
        token_hash: refresh_token_hash(REFRESH_TOKEN_PREFIX, &rest),
        family_id: family_id.to_owned(),
        client_id: app.map(|a| a.client_id.clone()).unwrap_or_default(),
        tenant_id: app.map(|a| a.tenant_id.clone()).unwrap_or_default(),
        created_at: now,
        expires_at: now + ttl_ms,
        spent_at: None,
        revoked_at: None,
    };
    Ok((Zeroizing::new(format!("{REFRESH_TOKEN_PREFIX}{}", rest.as_str())), row))
}

impl TokenRpc {
    /// An access token for `app`, from its current roles and permissions.
    fn access_token(
        &self,
        app: &application::Model,
        sid: Option<String>,
    ) -> Result<(String, AccessClaims), TokenError> {
        self.access_token_until(app, sid, None, u64::MAX)
    }

    /// An access token for `app` expiring after the configured lifetime or at `not_after`, whichever is
    /// first.
    pub(super) fn access_token_until(
        &self,
        app: &application::Model,
        sid: Option<String>,
        ext: Option<ExternalSubject>,
        not_after: u64,
    ) -> Result<(String, AccessClaims), TokenError> {
        let now = unix_now();
        let ttl = self.signer.params.access_token_ttl.as_secs();
        let claims = AccessClaims {
            iss: self.signer.params.verify.issuer.clone(),
            sub: app.client_id.clone(),
            aud: self.signer.params.verify.audience.clone(),
            exp: (now + ttl).min(not_after),
            iat: now,
            nbf: now,
            jti: uuid::Uuid::new_v4().to_string(),
            tenant: app.tenant_id.clone(),
            roles: stored_roles(app)?,
            perms: stored_permissions(app)?,
            sid,
            ext,
        };
        Ok((self.signer.sign(&claims)?, claims))
    }

    fn response(
        &self,
        access_token: String,
        claims: &AccessClaims,
        refresh_token: Option<Zeroizing<String>>,
    ) -> pb::IssueTokenResponse {
        pb::IssueTokenResponse {
            access_token,
            token_type: "Bearer".into(),
            expires_in_seconds: claims.exp.saturating_sub(claims.iat) as u32,
            refresh_token: refresh_token.map(|t| t.to_string()).unwrap_or_default(),
            expire_time: Some(prost_types::Timestamp { seconds: claims.exp as i64, nanos: 0 }),
        }
    }

    fn refresh_ttl_ms(&self) -> i64 {
        self.signer.params.refresh_token_ttl.as_millis() as i64
    }

    /// Client id and secret: an access token and the first refresh token of a new family.
    pub(super) async fn client_credentials(
        &self,
        client_id: &str,
        secret: String,
        audit: &mut AuditScope,
    ) -> Result<pb::IssueTokenResponse, TokenError> {
        if client_id.is_empty() || secret.is_empty() {
            return Err(TokenError::InvalidArgument {
                field: "client_id/client_secret",
                reason: "both are required for GRANT_TYPE_CLIENT_CREDENTIALS".into(),
            });
        }
        // A malformed id is no client: refused before it reaches the database.
        identifiers::opaque_id("client_id", client_id)?;
        audit.caller("", client_id);
        let app = self.repo.application(client_id).await?;
        let now_ms = now_millis();
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
        // A refusal for an existing application is its tenant's event: its admins see the failed attempts.
        if let Some(app) = &app {
            audit.caller(&app.tenant_id, &app.client_id);
        }
        let app = match app {
            Some(app) if valid && !app.disabled => app,
            _ => return Err(TokenError::InvalidClient),
        };
        let family = format!("rf_{}", uuid::Uuid::new_v4().simple());
        let (refresh, row) = new_refresh_token(Some(&app), &family, self.refresh_ttl_ms())?;
        self.repo.insert_refresh_token(row).await?;
        let (token, claims) = self.access_token(&app, Some(family.clone()))?;
        audit.resource(&claims.jti, 0, 0);
        audit.detail(&format!("access token issued; refresh family {family} started"));
        tracing::info!(client_id = %app.client_id, tenant = %app.tenant_id, jti = %claims.jti, "issued access token");
        Ok(self.response(token, &claims, Some(refresh)))
    }

    /// A refresh token: spent, and its successor issued with a new access token. A spent or revoked one
    /// revokes its family.
    pub(super) async fn refresh(
        &self,
        token: &str,
        audit: &mut AuditScope,
    ) -> Result<pb::IssueTokenResponse, TokenError> {
        let Some(rest) = token.strip_prefix(REFRESH_TOKEN_PREFIX) else {
            return Err(TokenError::InvalidArgument {
                field: "refresh_token",
                reason: format!("give the {REFRESH_TOKEN_PREFIX}… token the last IssueToken returned"),
            });
        };
        let hash = refresh_token_hash(REFRESH_TOKEN_PREFIX, rest);
        let (successor_token, successor) = new_refresh_token(None, "", self.refresh_ttl_ms())?;
        let now = successor.created_at;
        let row = match self.repo.use_refresh_token(&hash, successor, |f| self.session_revocation(f, now)).await? {
            RefreshOutcome::Rotated(row) => row,
            RefreshOutcome::Unknown => return Err(TokenError::InvalidGrant("unknown refresh token")),
            RefreshOutcome::Expired => {
                return Err(TokenError::InvalidGrant(
                    "refresh token expired; authenticate with the client credentials",
                ));
            }
            RefreshOutcome::Replayed { family_id, client_id, tenant_id } => {
                audit.caller(&tenant_id, &client_id);
                audit.resource(&family_id, 0, 0);
                tracing::warn!(%client_id, family = %family_id, "refresh token replayed; family revoked");
                return Err(TokenError::InvalidGrant(
                    "refresh token already used or revoked: its whole family is revoked now, with the access tokens \
                     issued from it; authenticate with the client credentials",
                ));
            }
        };
        audit.caller(&row.tenant_id, &row.client_id);
        let app = match self.repo.application(&row.client_id).await? {
            Some(app) if !app.disabled => app,
            _ => return Err(TokenError::InvalidClient),
        };
        let (token, claims) = self.access_token(&app, Some(row.family_id.clone()))?;
        audit.resource(&claims.jti, 0, 0);
        audit.detail(&format!("refreshed; refresh family {}", row.family_id));
        Ok(self.response(token, &claims, Some(successor_token)))
    }
}

/// Subject token types accepted (RFC 8693); empty means a JWT.
const SUBJECT_TOKEN_TYPES: &[&str] = &[
    "",
    "urn:ietf:params:oauth:token-type:jwt",
    "urn:ietf:params:oauth:token-type:id_token",
    crate::exchange::ACCESS_TOKEN_TYPE,
];

impl TokenRpc {
    /// A platform's token for the application a rule maps it to; no refresh token (the platform renews the
    /// subject token, and the access token never outlives it).
    pub(super) async fn token_exchange(
        &self,
        subject_token: &str,
        subject_token_type: &str,
        audit: &mut AuditScope,
    ) -> Result<pb::IssueTokenResponse, TokenError> {
        if !SUBJECT_TOKEN_TYPES.contains(&subject_token_type) {
            return Err(TokenError::InvalidArgument {
                field: "subject_token_type",
                reason: format!(
                    "{subject_token_type:?}: use {} or {} (a JWT), or {} (a GitHub access token)",
                    SUBJECT_TOKEN_TYPES[1], SUBJECT_TOKEN_TYPES[2], SUBJECT_TOKEN_TYPES[3]
                ),
            });
        }
        if subject_token.is_empty() {
            return Err(TokenError::InvalidArgument {
                field: "subject_token",
                reason: "give the service-account or ID token to exchange".into(),
            });
        }
        let mapped = self.exchanger.exchange(subject_token, subject_token_type).await?;
        audit.caller("", &mapped.client_id);
        let app = self.repo.application(&mapped.client_id).await?.ok_or_else(|| {
            TokenError::FailedPrecondition(format!(
                "the token-exchange rule for {} maps to application {}, which does not exist",
                mapped.subject.sub, mapped.client_id
            ))
        })?;
        audit.caller(&app.tenant_id, &app.client_id);
        if app.disabled {
            return Err(TokenError::InvalidClient);
        }
        let detail = format!("exchanged {} subject {}", mapped.subject.iss, mapped.subject.sub);
        let (token, claims) = self.access_token_until(&app, None, Some(mapped.subject), mapped.expires_at)?;
        audit.resource(&claims.jti, 0, 0);
        audit.detail(&detail);
        tracing::info!(client_id = %app.client_id, jti = %claims.jti, %detail, "issued access token by exchange");
        Ok(self.response(token, &claims, None))
    }
}

//! Access tokens: the claims token-service signs, and the verifier every other service runs on each call.
//!
//! Verification is on the hot path, so it touches the network only when it must: a token is verified once
//! (EdDSA signature, `exp`, `nbf`, `aud`, `iss`) and then cached under its SHA-256 until it expires; the JWKS is
//! cached and refetched only when a token names an unknown `kid` (at most once per few seconds, so garbage
//! tokens cannot hammer token-service).

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use keymesh_proto::v1 as pb;
use moka::{Expiry, sync::Cache};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, RwLock};
use tonic::{Request, Status, metadata::MetadataMap};

/// Roles an application can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads keys and applications.
    Viewer,
    /// Uses the keys its permissions name.
    Developer,
    /// Manages the tenant's keys and applications.
    Admin,
    /// Everything an admin can.
    Owner,
    /// Reads the audit trail.
    Auditor,
}

/// Operations on keys a permission grants, by name (`encrypt`, `decrypt`, … or `*`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyPermissionClaim {
    /// Key name pattern; `*` matches any run of characters.
    pub key: String,
    /// Operation names, or `*`.
    pub ops: Vec<String>,
}

/// The claims of a keymesh access token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// The application's client id.
    pub sub: String,
    /// Audience.
    pub aud: String,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Not before.
    pub nbf: u64,
    /// Unique token id.
    pub jti: String,
    /// The application's tenant.
    pub tenant: String,
    /// Roles.
    pub roles: Vec<Role>,
    /// Key permissions.
    pub perms: Vec<KeyPermissionClaim>,
}

/// An operation name as used in permissions and audit events.
pub fn operation_name(op: pb::Operation) -> &'static str {
    match op {
        pb::Operation::Encrypt => "encrypt",
        pb::Operation::Decrypt => "decrypt",
        pb::Operation::Reencrypt => "reencrypt",
        pb::Operation::GenerateDataKey => "generate_data_key",
        pb::Operation::Sign => "sign",
        pb::Operation::Verify => "verify",
        pb::Operation::GenerateMac => "generate_mac",
        pb::Operation::VerifyMac => "verify_mac",
        pb::Operation::Describe => "describe",
        pb::Operation::Manage => "manage",
        pb::Operation::GetPublicKey => "get_public_key",
        pb::Operation::Unspecified => "unspecified",
    }
}

impl AccessClaims {
    /// The roles' names as tokens and policy rules write them (`"admin"`, `"developer"`, …).
    pub fn role_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| format!("{r:?}").to_ascii_lowercase()).collect()
    }

    /// Whether the token holds any of `roles`.
    pub fn has_any_role(&self, roles: &[Role]) -> bool {
        self.roles.iter().any(|r| roles.contains(r))
    }

    /// Refuses unless the token holds one of `roles`.
    pub fn require_role(&self, roles: &[Role], method: &str) -> Result<(), Status> {
        if self.has_any_role(roles) {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "{method} needs one of the roles {roles:?}; application {} has {:?}",
                self.sub, self.roles
            )))
        }
    }

    /// Refuses unless a permission of the token allows `op` on the key named `key_name`.
    pub fn require_key_operation(&self, key_name: &str, op: pb::Operation) -> Result<(), Status> {
        let op_name = operation_name(op);
        let allowed = self
            .perms
            .iter()
            .any(|p| glob_match(&p.key, key_name) && p.ops.iter().any(|o| o == "*" || o.eq_ignore_ascii_case(op_name)));
        if allowed {
            Ok(())
        } else {
            Err(Status::permission_denied(format!(
                "application {} has no permission to {op_name} with key {key_name:?}",
                self.sub
            )))
        }
    }
}

/// `*` matches any run of characters (including none); everything else literally.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) || text.len() < first.len() + last.len() {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// A public signing key in JWK form.
#[derive(Debug, Clone)]
pub struct PublicJwk {
    /// Key id.
    pub kid: String,
    /// base64url raw Ed25519 public key.
    pub x: String,
}

/// Where the verifier gets the JWKS from: token-service over mTLS, or token-service's own store.
#[async_trait::async_trait]
pub trait JwksSource: Send + Sync {
    /// The current public keys.
    async fn fetch(&self) -> Result<Vec<PublicJwk>, String>;
}

/// Why a token was refused. Shown to the caller as UNAUTHENTICATED.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// No `authorization: Bearer …` metadata.
    #[error("missing access token: send `authorization: Bearer <token>` (get one from TokenService.IssueToken)")]
    Missing,
    /// Not a well-formed JWT, unknown key, bad signature, wrong audience or issuer.
    #[error("invalid access token")]
    Invalid,
    /// Expired.
    #[error("access token expired; request a new one")]
    Expired,
    /// The JWKS could not be fetched.
    #[error("cannot verify access tokens right now: token-service is unreachable")]
    JwksUnavailable,
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::JwksUnavailable => Status::unavailable(e.to_string()),
            _ => Status::unauthenticated(e.to_string()),
        }
    }
}

struct UntilExpiry;

impl Expiry<[u8; 32], Arc<AccessClaims>> for UntilExpiry {
    fn expire_after_create(&self, _key: &[u8; 32], claims: &Arc<AccessClaims>, _now: Instant) -> Option<Duration> {
        Some(Duration::from_secs(claims.exp.saturating_sub(unix_now())))
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or_default()
}

const JWKS_REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Verifies access tokens with a cached JWKS and a cache of verified tokens.
pub struct TokenVerifier {
    source: Arc<dyn JwksSource>,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_refresh: Mutex<Option<Instant>>,
    verified: Cache<[u8; 32], Arc<AccessClaims>>,
    validation: Validation,
}

impl TokenVerifier {
    /// A verifier for tokens of the configured issuer and audience.
    pub fn new(source: Arc<dyn JwksSource>, params: &crate::config::TokenParams) -> Self {
        let (issuer, audience) = (params.issuer.as_str(), params.audience.as_str());
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub", "nbf"]);
        validation.validate_nbf = true;
        validation.leeway = params.clock_skew.as_secs();
        Self {
            source,
            keys: RwLock::new(HashMap::new()),
            last_refresh: Mutex::new(None),
            verified: Cache::builder().max_capacity(100_000).expire_after(UntilExpiry).build(),
            validation,
        }
    }

    /// Verifies the bearer token in a request's metadata.
    pub async fn verify_request<T>(&self, request: &Request<T>) -> Result<Arc<AccessClaims>, AuthError> {
        let token = bearer_token(request.metadata()).ok_or(AuthError::Missing)?;
        self.verify(token).await
    }

    /// Verifies a token.
    pub async fn verify(&self, token: &str) -> Result<Arc<AccessClaims>, AuthError> {
        // Cached by digest: the map compares digests, so lookups reveal nothing about the token's bytes.
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(claims) = self.verified.get(&digest) {
            if claims.exp + self.validation.leeway > unix_now() {
                return Ok(claims);
            }
            return Err(AuthError::Expired);
        }
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Invalid)?;
        let kid = header.kid.ok_or(AuthError::Invalid)?;
        let key = match self.key(&kid).await {
            Some(key) => key,
            None => {
                self.refresh().await?;
                self.key(&kid).await.ok_or(AuthError::Invalid)?
            }
        };
        let data = jsonwebtoken::decode::<AccessClaims>(token, &key, &self.validation).map_err(|e| match e.kind() {
            jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
            _ => AuthError::Invalid,
        })?;
        let claims = Arc::new(data.claims);
        self.verified.insert(digest, claims.clone());
        Ok(claims)
    }

    async fn key(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().await.get(kid).cloned()
    }

    /// Refetches the JWKS, at most once per [`JWKS_REFRESH_MIN_INTERVAL`].
    async fn refresh(&self) -> Result<(), AuthError> {
        let mut last = self.last_refresh.lock().await;
        if last.is_some_and(|t| t.elapsed() < JWKS_REFRESH_MIN_INTERVAL) {
            return Ok(());
        }
        // Counted as an attempt whether or not it succeeds: an unreachable token-service must not be asked
        // again for every token with an unknown kid.
        *last = Some(Instant::now());
        let jwks = self.source.fetch().await.map_err(|reason| {
            tracing::warn!(%reason, "cannot fetch the JWKS");
            AuthError::JwksUnavailable
        })?;
        let mut keys = HashMap::new();
        for jwk in jwks {
            if let Ok(key) = DecodingKey::from_ed_components(&jwk.x) {
                keys.insert(jwk.kid, key);
            }
        }
        *self.keys.write().await = keys;
        Ok(())
    }
}

/// The token of an `authorization: Bearer …` header.
pub fn bearer_token(metadata: &MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    (scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty()).then(|| token.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("pii-*", "pii-users"));
        assert!(!glob_match("pii-*", "payments"));
        assert!(glob_match("*-prod", "db-prod"));
        assert!(glob_match("a*b*c", "a-x-b-y-c"));
        assert!(!glob_match("a*b*c", "a-x-c"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exactly"));
        assert!(!glob_match("ab*ba", "aba"));
    }

    #[test]
    fn permissions_check_pattern_and_operation() {
        let claims = AccessClaims {
            iss: "keymesh".into(),
            sub: "app_1".into(),
            aud: "keymesh".into(),
            exp: 0,
            iat: 0,
            nbf: 0,
            jti: "j".into(),
            tenant: "t".into(),
            roles: vec![Role::Developer],
            perms: vec![KeyPermissionClaim { key: "pii-*".into(), ops: vec!["encrypt".into()] }],
        };
        assert!(claims.require_key_operation("pii-users", pb::Operation::Encrypt).is_ok());
        assert!(claims.require_key_operation("pii-users", pb::Operation::Decrypt).is_err());
        assert!(claims.require_key_operation("billing", pb::Operation::Encrypt).is_err());
        assert!(claims.require_role(&[Role::Admin], "CreateKey").is_err());
    }
}

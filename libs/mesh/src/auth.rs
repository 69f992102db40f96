//! Access tokens: the claims token-service signs, and the verifier every other service runs on each call.
//!
//! Verification is on the hot path, so it touches the network only when it must: a token is verified once
//! (EdDSA signature, `exp`, `nbf`, `aud`, `iss`) and then cached under its SHA-256 until it expires; the JWKS is
//! cached and refetched only when a token names an unknown `kid` (at most once per few seconds, so garbage
//! tokens cannot hammer token-service).
//!
//! Revocation is polled, not pushed: every verifier asks token-service for the revocations in force three
//! times per configured bound, and refuses every token once its last successful poll began a whole bound
//! ago. That makes the bound a guarantee rather than a typical delay (a revocation committed at R is in every
//! poll begun after R, and no token is accepted at R + bound on a poll begun before R), with no subscriber
//! state in token-service, nothing to replay after a reconnect, and replicas of token-service
//! interchangeable. A push stream would shave the typical delay but still need this poll to bound it.

use std::{
    collections::{HashMap, HashSet},
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
    /// Everything an admin can, plus tenants below its own.
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
    /// The refresh-token family (session) the token was issued from, if any: revoking the family revokes
    /// it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    /// For a token issued by exchange: the external identity it was exchanged for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ext: Option<ExternalSubject>,
}

/// An identity from a trusted external issuer (a Kubernetes service account, an OIDC subject).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExternalSubject {
    /// The issuer's configured name.
    pub iss: String,
    /// Its `sub`, e.g. `system:serviceaccount:loaders:machine-1`.
    pub sub: String,
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
        pb::Operation::Decapsulate => "decapsulate",
        pb::Operation::Encapsulate => "encapsulate",
        pb::Operation::Unspecified => "unspecified",
    }
}

impl AccessClaims {
    /// The roles' names as tokens and policy rules write them (`"admin"`, `"developer"`, …).
    pub fn role_names(&self) -> Vec<String> {
        self.roles.iter().map(|r| format!("{r:?}").to_ascii_lowercase()).collect()
    }

    /// The external issuer and subject a token exchange vouched for; empty strings for other tokens.
    pub fn external(&self) -> (&str, &str) {
        self.ext.as_ref().map_or(("", ""), |e| (e.iss.as_str(), e.sub.as_str()))
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

/// What a verifier asks of the issuer: token-service over mTLS, or token-service's own store.
#[async_trait::async_trait]
pub trait TokenAuthority: Send + Sync {
    /// The current public keys.
    async fn jwks(&self) -> Result<Vec<PublicJwk>, String>;
    /// The revocations in force.
    async fn revocations(&self) -> Result<Vec<pb::Revocation>, String>;
}

/// The revocations in force, indexed for the checks every call makes.
#[derive(Debug, Default)]
pub struct RevocationSet {
    tokens: HashSet<String>,
    /// Client id → tokens issued at or before this second are revoked.
    applications: HashMap<String, u64>,
    sessions: HashSet<String>,
}

impl RevocationSet {
    /// Indexes a list from token-service.
    pub fn from_list(list: Vec<pb::Revocation>) -> Self {
        let mut set = Self::default();
        for r in list {
            match pb::RevocationScope::try_from(r.scope) {
                Ok(pb::RevocationScope::Token) => {
                    set.tokens.insert(r.value);
                }
                Ok(pb::RevocationScope::Application) => {
                    let at = r.revoke_time.map(|t| t.seconds.max(0) as u64).unwrap_or(u64::MAX);
                    let entry = set.applications.entry(r.value).or_insert(at);
                    *entry = (*entry).max(at);
                }
                Ok(pb::RevocationScope::Session) => {
                    set.sessions.insert(r.value);
                }
                // A scope this build does not know: token-service is newer. Refusing every token over it
                // would be an outage; the scopes that exist are all enforced.
                _ => tracing::warn!(scope = r.scope, "ignoring a revocation of an unknown scope"),
            }
        }
        set
    }

    /// Whether `claims` is revoked.
    pub fn revokes(&self, claims: &AccessClaims) -> bool {
        self.tokens.contains(&claims.jti)
            || self.applications.get(&claims.sub).is_some_and(|at| claims.iat <= *at)
            || claims.sid.as_ref().is_some_and(|sid| self.sessions.contains(sid))
    }
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
    /// `nbf` is in the future (beyond the tolerated clock skew).
    #[error("access token not yet valid (nbf is in the future): check the clocks of the issuer and this host")]
    NotYetValid,
    /// Revoked, or its application disabled, or its refresh-token family revoked.
    #[error("access token revoked; request a new one")]
    Revoked,
    /// The JWKS could not be fetched.
    #[error("cannot verify access tokens right now: token-service is unreachable")]
    JwksUnavailable,
    /// Revocations could not be polled for a whole bound: no token is accepted until they can.
    #[error("cannot confirm that access tokens are not revoked: token-service unreachable for {0} s")]
    RevocationsStale(u64),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::JwksUnavailable | AuthError::RevocationsStale(_) => Status::unavailable(e.to_string()),
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
const JWKS_FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// A call that finds the revocations stale polls at once unless an attempt ended this recently: short enough
/// that a token-service back from a restart is noticed by the next call, long enough that a burst of calls
/// during an outage makes a few polls, not one each.
const INLINE_POLL_MIN_INTERVAL: Duration = Duration::from_millis(100);

/// The revocations a verifier holds, and when the poll that fetched them began.
struct HeldRevocations {
    set: Arc<RevocationSet>,
    polled_at: Option<Instant>,
}

/// Verifies access tokens with a cached JWKS, a cache of verified tokens and the polled revocations.
pub struct TokenVerifier {
    source: Arc<dyn TokenAuthority>,
    keys: RwLock<HashMap<String, DecodingKey>>,
    last_refresh: Mutex<Option<Instant>>,
    verified: Cache<[u8; 32], Arc<AccessClaims>>,
    validation: Validation,
    revocations: std::sync::RwLock<HeldRevocations>,
    /// Serializes polls, and holds when the last attempt began.
    last_poll: Mutex<Option<Instant>>,
    revocation_bound: Duration,
    created_at: Instant,
}

/// Registers `keymesh.tokens.revocation_poll.age` (seconds: polls succeed every third of the bound, so it stays
/// under that; past the bound every token is refused) and `keymesh.tokens.revocation_bound` (seconds), so that
/// an alert can compare the two whatever bound is configured.
fn register_revocation_age_gauge(verifier: std::sync::Weak<TokenVerifier>) {
    let meter = opentelemetry::global::meter("keymesh");
    let bound = verifier.upgrade().map(|v| v.revocation_bound.as_secs_f64());
    meter
        .f64_observable_gauge("keymesh.tokens.revocation_poll.age")
        .with_unit("s")
        .with_description("Age of the token revocations this service holds")
        .with_callback(move |observer| {
            if let Some(verifier) = verifier.upgrade() {
                observer.observe(verifier.revocations_age().as_secs_f64(), &[]);
            }
        })
        .build();
    if let Some(bound) = bound {
        meter
            .f64_observable_gauge("keymesh.tokens.revocation_bound")
            .with_unit("s")
            .with_description("Longest a revoked token may still be accepted; older revocations refuse every token")
            .with_callback(move |observer| observer.observe(bound, &[]))
            .build();
    }
}

/// `keymesh.token_cache.lookups` by `result`: a `hit` skips the signature check of a token seen before.
static TOKEN_CACHE_LOOKUPS: std::sync::LazyLock<opentelemetry::metrics::Counter<u64>> =
    std::sync::LazyLock::new(|| {
        opentelemetry::global::meter("keymesh")
            .u64_counter("keymesh.token_cache.lookups")
            .with_description("Access-token verifications, by whether the verified-token cache answered")
            .build()
    });

impl TokenVerifier {
    /// A verifier for tokens of the configured issuer and audience.
    pub fn new(source: Arc<dyn TokenAuthority>, params: &crate::config::TokenParams) -> Self {
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
            revocations: std::sync::RwLock::new(HeldRevocations { set: Arc::default(), polled_at: None }),
            last_poll: Mutex::new(None),
            revocation_bound: params.revocation_bound,
            created_at: Instant::now(),
        }
    }

    /// Polls revocations three times per bound for as long as the verifier lives, and reports the age of the
    /// revocations held as `keymesh.tokens.revocation_poll.age` (and the bound beside it) while it lives.
    pub fn start_revocation_poll(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let verifier = Arc::downgrade(self);
        let period = self.revocation_bound / 3;
        register_revocation_age_gauge(Arc::downgrade(self));
        tokio::spawn(async move {
            loop {
                let Some(this) = verifier.upgrade() else { return };
                // After a failure, try again within a second: token-service may only have been restarting.
                let wait = match this.poll_revocations(Duration::ZERO).await {
                    Ok(()) => period,
                    Err(reason) => {
                        tracing::warn!(%reason, "cannot poll token revocations");
                        period.min(Duration::from_secs(1))
                    }
                };
                drop(this);
                tokio::time::sleep(wait).await;
            }
        })
    }

    /// How old the revocations held are: since the last successful poll began, or since the verifier was made
    /// when no poll has succeeded yet.
    fn revocations_age(&self) -> Duration {
        let polled_at = self.revocations.read().ok().and_then(|held| held.polled_at);
        polled_at.unwrap_or(self.created_at).elapsed()
    }

    /// Whether tokens can be accepted now (for `/readyz`): not once the revocations held are a whole bound old,
    /// when every token is refused until token-service answers again.
    pub fn revocations_fresh(&self) -> Result<(), String> {
        let age = self.revocations_age();
        if age < self.revocation_bound {
            return Ok(());
        }
        Err(format!(
            "token revocations are {} s old, past the {} s bound: every token is refused until token-service answers",
            age.as_secs(),
            self.revocation_bound.as_secs()
        ))
    }

    /// Fetches the revocations unless another poll began less than `min_interval` ago.
    async fn poll_revocations(&self, min_interval: Duration) -> Result<(), String> {
        let mut last = self.last_poll.lock().await;
        if last.is_some_and(|t| t.elapsed() < min_interval) {
            return Ok(());
        }
        let began = Instant::now();
        // A token-service that hangs must not hold callers for the channel's whole timeout: a poll gets a
        // third of the bound, like the period between polls.
        let list = tokio::time::timeout(self.revocation_bound / 3, self.source.revocations()).await;
        // When the attempt ended, not began: callers queued behind a slow attempt take its outcome instead of
        // each starting another.
        *last = Some(Instant::now());
        let list = list.map_err(|_| format!("no answer within {:?}", self.revocation_bound / 3))??;
        let set = Arc::new(RevocationSet::from_list(list));
        if let Ok(mut held) = self.revocations.write() {
            *held = HeldRevocations { set, polled_at: Some(began) };
        }
        Ok(())
    }

    /// Refuses revoked tokens, and every token when revocations are a whole bound old.
    async fn check_revocation(&self, claims: &AccessClaims) -> Result<(), AuthError> {
        let fresh = |verifier: &Self| -> Option<Arc<RevocationSet>> {
            let held = verifier.revocations.read().ok()?;
            held.polled_at.filter(|t| t.elapsed() < verifier.revocation_bound).map(|_| held.set.clone())
        };
        let set = match fresh(self) {
            Some(set) => set,
            None => {
                // Stale (or never polled: a fresh start). One caller polls; the others wait on the lock and
                // then find the result.
                if let Err(reason) = self.poll_revocations(INLINE_POLL_MIN_INTERVAL).await {
                    tracing::warn!(%reason, "cannot poll token revocations");
                }
                match fresh(self) {
                    Some(set) => set,
                    None => {
                        let age = self.revocations.read().ok().and_then(|h| h.polled_at).map(|t| t.elapsed());
                        return Err(AuthError::RevocationsStale(age.unwrap_or_default().as_secs()));
                    }
                }
            }
        };
        if set.revokes(claims) { Err(AuthError::Revoked) } else { Ok(()) }
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
        let cached = self.verified.get(&digest);
        TOKEN_CACHE_LOOKUPS
            .add(1, &[opentelemetry::KeyValue::new("result", if cached.is_some() { "hit" } else { "miss" })]);
        if let Some(claims) = cached {
            if claims.exp + self.validation.leeway <= unix_now() {
                return Err(AuthError::Expired);
            }
            self.check_revocation(&claims).await?;
            return Ok(claims);
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
            jsonwebtoken::errors::ErrorKind::ImmatureSignature => AuthError::NotYetValid,
            _ => AuthError::Invalid,
        })?;
        let claims = Arc::new(data.claims);
        self.check_revocation(&claims).await?;
        // Cached only once valid now: a token refused as not yet valid is looked at afresh next time.
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
        // Counted as an attempt whether or not it succeeds, from when it ended: an unreachable token-service
        // must not be asked again for every token with an unknown kid, nor by every caller queued behind it.
        let jwks = tokio::time::timeout(JWKS_FETCH_TIMEOUT, self.source.jwks()).await;
        *last = Some(Instant::now());
        let jwks = jwks.map_err(|_| "no answer in time".to_owned()).and_then(|r| r).map_err(|reason| {
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
            sid: None,
            ext: None,
        };
        assert!(claims.require_key_operation("pii-users", pb::Operation::Encrypt).is_ok());
        assert!(claims.require_key_operation("pii-users", pb::Operation::Decrypt).is_err());
        assert!(claims.require_key_operation("billing", pb::Operation::Encrypt).is_err());
        assert!(claims.require_role(&[Role::Admin], "CreateKey").is_err());
    }

    #[test]
    fn revocations_match_token_application_and_session() {
        let claims = |jti: &str, sub: &str, iat: u64, sid: Option<&str>| AccessClaims {
            iss: "keymesh".into(),
            sub: sub.into(),
            aud: "keymesh".into(),
            exp: iat + 3600,
            iat,
            nbf: iat,
            jti: jti.into(),
            tenant: "t".into(),
            roles: vec![],
            perms: vec![],
            sid: sid.map(Into::into),
            ext: None,
        };
        let revocation = |scope: pb::RevocationScope, value: &str, at: i64| pb::Revocation {
            scope: scope as i32,
            value: value.into(),
            revoke_time: Some(prost_types::Timestamp { seconds: at, nanos: 0 }),
            expire_time: None,
        };
        let set = RevocationSet::from_list(vec![
            revocation(pb::RevocationScope::Token, "j1", 100),
            revocation(pb::RevocationScope::Application, "app_a", 100),
            revocation(pb::RevocationScope::Session, "s1", 100),
            revocation(pb::RevocationScope::Unspecified, "j2", 100),
        ]);
        assert!(set.revokes(&claims("j1", "app_b", 50, None)));
        assert!(!set.revokes(&claims("j2", "app_b", 50, None)), "unknown scopes match nothing");
        assert!(set.revokes(&claims("j3", "app_a", 100, None)), "issued in the second of the revocation");
        assert!(!set.revokes(&claims("j3", "app_a", 101, None)), "issued after it");
        assert!(set.revokes(&claims("j3", "app_b", 200, Some("s1"))));
        assert!(!set.revokes(&claims("j3", "app_b", 200, Some("s2"))));
    }
}

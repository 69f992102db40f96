//! Token exchange (RFC 8693): a workload presents a token its platform minted (a Kubernetes projected
//! service-account token, an OIDC ID token) and gets a keymesh access token for the application a configured
//! rule maps it to. The workload stores no secret; the platform rotates its token.
//!
//! The subject token is verified like any JWT keymesh accepts: a signature by a key of the issuer's JWKS
//! (fetched over HTTPS, cached, refetched on an unknown `kid` at most every few seconds), an asymmetric
//! algorithm only, the configured `iss` and `aud`, `exp`/`nbf` with the clock skew, and a lifetime no longer
//! than the configured maximum, which refuses long-lived legacy service-account secrets. No long-lived
//! reviewer credential is involved: the issuer's public keys are all keymesh needs.
//!
//! GitHub issues no ID tokens: its OAuth access tokens are opaque. An issuer of kind `github` checks one with
//! GitHub's own check (`POST /applications/{client_id}/token`, authenticated as the OAuth app), which answers
//! only for tokens issued to that app and names the user. `GET /user` would accept a token of any app the user
//! ever authorized, so any such app could replay its users' tokens here; the check is the audience test.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, jwk::JwkSet};
use keymesh_mesh::auth::{ExternalSubject, glob_match, unix_now};
use tokio::sync::{Mutex, RwLock};

use zeroize::Zeroizing;

use crate::config::{ExchangeIssuerKind, RawExchange, RawExchangeRule};

/// The subject token type of a GitHub OAuth access token (RFC 8693 §3).
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Why a subject token was refused; the caller sees it (nothing here is secret).
#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    /// Not configured at all.
    #[error("token exchange is not configured: add [[tokens.exchange.issuers]] and [[tokens.exchange.rules]]")]
    NotConfigured,
    /// The token is refused; the reason says why.
    #[error("subject token refused: {0}")]
    Refused(String),
    /// The issuer's keys could not be fetched.
    #[error("cannot fetch the signing keys of issuer {issuer}: {reason}")]
    Unavailable {
        /// The issuer's name.
        issuer: String,
        /// What failed.
        reason: String,
    },
}

/// A bad `[tokens.exchange]`.
#[derive(Debug, thiserror::Error)]
#[error("config field `tokens.exchange.{field}`: {reason}")]
pub struct ExchangeConfigError {
    field: String,
    reason: String,
}

/// Asymmetric algorithms only: an HMAC "signature" would be keyed with whatever the attacker chose.
const ALGORITHMS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];
const REFETCH_MIN_INTERVAL: Duration = Duration::from_secs(5);
const KEYS_MAX_AGE: Duration = Duration::from_secs(600);
/// Largest JWKS or discovery document read.
const MAX_DOCUMENT: usize = 256 * 1024;

struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    fetched: Option<Instant>,
}

struct Issuer {
    name: String,
    issuer: String,
    audience: String,
    /// For a `github` issuer: the API and the OAuth app's secret.
    github: Option<GithubApp>,
    jwks_url: Option<String>,
    max_lifetime: u64,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    last_attempt: Mutex<Option<Instant>>,
}

/// What an exchange came to: the application, and the external identity for the token's `ext` claim.
#[derive(Debug)]
pub struct Mapped {
    /// The application the rule names.
    pub client_id: String,
    /// Who the platform vouched for.
    pub subject: ExternalSubject,
    /// The subject token's expiry: the access token does not outlive it.
    pub expires_at: u64,
}

/// Where a `github` issuer checks tokens, and the secret it authenticates with. No Debug output of the secret.
struct GithubApp {
    api_url: String,
    client_secret: Zeroizing<String>,
}

/// The configured issuers and rules.
pub struct Exchanger {
    issuers: Vec<Issuer>,
    rules: Vec<RawExchangeRule>,
    leeway: u64,
}

/// `http://` is for loopback test issuers only; anything else must be `https://`.
fn check_url(field: String, url: &str) -> Result<(), ExchangeConfigError> {
    let loopback = ["http://127.0.0.1", "http://localhost", "http://[::1]"];
    let ok = url.starts_with("https://")
        || loopback
            .iter()
            .any(|p| url.strip_prefix(p).is_some_and(|rest| rest.is_empty() || rest.starts_with([':', '/'])));
    if ok {
        Ok(())
    } else {
        Err(ExchangeConfigError { field, reason: format!("{url:?} must be https:// (http:// only on loopback)") })
    }
}

impl Exchanger {
    /// Validates `[tokens.exchange]`; `leeway` is the tolerated clock skew.
    pub fn from_config(raw: &RawExchange, leeway: Duration) -> Result<Self, ExchangeConfigError> {
        let mut issuers = Vec::new();
        for (i, c) in raw.issuers.iter().enumerate() {
            let field = |f: &str| format!("issuers[{i}].{f}");
            if c.name.is_empty() || issuers.iter().any(|x: &Issuer| x.name == c.name) {
                return Err(ExchangeConfigError { field: field("name"), reason: "empty or repeated".into() });
            }
            if c.audience.is_empty() {
                return Err(ExchangeConfigError {
                    field: field("audience"),
                    reason: "set the audience tokens must be minted for (e.g. \"keymesh\")".into(),
                });
            }
            check_url(field("issuer"), &c.issuer)?;
            if let Some(url) = &c.jwks_url {
                check_url(field("jwks_url"), url)?;
            }
            let mut http = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .timeout(Duration::from_secs(10))
                .redirect(reqwest::redirect::Policy::none());
            if let Some(path) = &c.ca_file {
                let pem = std::fs::read(path).map_err(|e| ExchangeConfigError {
                    field: field("ca_file"),
                    reason: format!("{}: {e}", path.display()),
                })?;
                let certs = reqwest::Certificate::from_pem_bundle(&pem)
                    .map_err(|e| ExchangeConfigError { field: field("ca_file"), reason: e.to_string() })?;
                http = http.tls_certs_merge(certs);
            }
            let http =
                http.build().map_err(|e| ExchangeConfigError { field: field("ca_file"), reason: e.to_string() })?;
            let github = match c.kind {
                ExchangeIssuerKind::Oidc => {
                    if c.api_url.is_some() || c.client_secret_file.is_some() {
                        return Err(ExchangeConfigError {
                            field: field("kind"),
                            reason: "api_url and client_secret_file are for kind = \"github\"".into(),
                        });
                    }
                    None
                }
                ExchangeIssuerKind::Github => {
                    if c.jwks_url.is_some() {
                        return Err(ExchangeConfigError {
                            field: field("jwks_url"),
                            reason: "GitHub's tokens are checked with its API, not a JWKS".into(),
                        });
                    }
                    let api_url = c.api_url.clone().unwrap_or_else(|| "https://api.github.com".into());
                    check_url(field("api_url"), &api_url)?;
                    let path = c.client_secret_file.as_ref().ok_or_else(|| ExchangeConfigError {
                        field: field("client_secret_file"),
                        reason: "GitHub checks tokens only for the OAuth app that asks: give its client secret".into(),
                    })?;
                    let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| ExchangeConfigError {
                        field: field("client_secret_file"),
                        reason: format!("{}: {e}", path.display()),
                    })?);
                    let client_secret = Zeroizing::new(text.trim().to_owned());
                    if client_secret.is_empty() {
                        return Err(ExchangeConfigError {
                            field: field("client_secret_file"),
                            reason: format!("{} is empty", path.display()),
                        });
                    }
                    Some(GithubApp { api_url: api_url.trim_end_matches('/').to_owned(), client_secret })
                }
            };
            issuers.push(Issuer {
                name: c.name.clone(),
                issuer: c.issuer.clone(),
                audience: c.audience.clone(),
                github,
                jwks_url: c.jwks_url.clone(),
                max_lifetime: c.max_token_lifetime_seconds.unwrap_or(86_400),
                http,
                keys: RwLock::new(Keys { by_kid: HashMap::new(), fetched: None }),
                last_attempt: Mutex::new(None),
            });
        }
        for (i, rule) in raw.rules.iter().enumerate() {
            if !issuers.iter().any(|x| x.name == rule.issuer) {
                return Err(ExchangeConfigError {
                    field: format!("rules[{i}].issuer"),
                    reason: format!("no issuer is named {:?}", rule.issuer),
                });
            }
            if rule.subject.is_empty() || rule.client_id.is_empty() {
                return Err(ExchangeConfigError {
                    field: format!("rules[{i}]"),
                    reason: "subject and client_id are required".into(),
                });
            }
        }
        Ok(Self { issuers, rules: raw.rules.clone(), leeway: leeway.as_secs() })
    }

    /// Verifies `token` (of `token_type`: a JWT, or a GitHub access token with [`ACCESS_TOKEN_TYPE`]) and maps it
    /// to an application.
    pub async fn exchange(&self, token: &str, token_type: &str) -> Result<Mapped, ExchangeError> {
        if self.issuers.is_empty() {
            return Err(ExchangeError::NotConfigured);
        }
        if token_type == ACCESS_TOKEN_TYPE {
            return self.exchange_github(token).await;
        }
        let refused = |why: &str| ExchangeError::Refused(why.to_owned());
        let header = jsonwebtoken::decode_header(token).map_err(|_| refused("not a JWT"))?;
        if !ALGORITHMS.contains(&header.alg) {
            return Err(refused(&format!(
                "algorithm {:?} is not accepted; the issuer must sign asymmetrically",
                header.alg
            )));
        }
        // The issuer is read before verification only to choose whose keys verify the token.
        let iss = unverified_issuer(token).ok_or_else(|| refused("no iss claim"))?;
        let issuer = self
            .issuers
            .iter()
            .find(|i| i.github.is_none() && i.issuer == iss)
            .ok_or_else(|| ExchangeError::Refused(format!("issuer {iss:?} is not trusted for token exchange")))?;
        let kid = header.kid.ok_or_else(|| refused("no kid in the header"))?;
        let key = issuer.key(&kid).await?;
        let mut validation = Validation::new(header.alg);
        validation.set_issuer(&[&issuer.issuer]);
        validation.set_audience(&[&issuer.audience]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        validation.leeway = self.leeway;
        let claims = jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(token, &key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind;
                ExchangeError::Refused(
                    match e.kind() {
                        ErrorKind::ExpiredSignature => "expired",
                        ErrorKind::ImmatureSignature => "not yet valid",
                        ErrorKind::InvalidAudience => "minted for another audience",
                        ErrorKind::InvalidIssuer => "wrong issuer",
                        ErrorKind::InvalidSignature => "bad signature",
                        ErrorKind::MissingRequiredClaim(_) => "exp, iss, aud and sub are required",
                        _ => "malformed",
                    }
                    .to_owned(),
                )
            })?
            .claims;
        let number = |name: &str| claims.get(name).and_then(serde_json::Value::as_u64);
        let exp = number("exp").ok_or_else(|| refused("exp is not a number"))?;
        // The lifetime is exp - iat, so iat is required and may not lie in the future (beyond the skew); and
        // what is left must fit the maximum too, whatever iat says.
        let issued = number("iat").ok_or_else(|| refused("iat is required (and a number)"))?;
        let now = unix_now();
        if issued > now + self.leeway {
            return Err(refused("iat is in the future"));
        }
        if exp.saturating_sub(issued) > issuer.max_lifetime || exp.saturating_sub(now) > issuer.max_lifetime {
            return Err(ExchangeError::Refused(format!(
                "lives {} s, over the {} s this issuer is allowed; use a short-lived (projected) token",
                exp.saturating_sub(issued),
                issuer.max_lifetime
            )));
        }
        let sub =
            claims.get("sub").and_then(serde_json::Value::as_str).ok_or_else(|| refused("sub is not a string"))?;
        self.map(issuer, sub, &claims, exp)
    }

    /// The application the first matching rule names for `sub` of `issuer`.
    fn map(
        &self,
        issuer: &Issuer,
        sub: &str,
        claims: &serde_json::Map<String, serde_json::Value>,
        expires_at: u64,
    ) -> Result<Mapped, ExchangeError> {
        let rule = self
            .rules
            .iter()
            .find(|r| {
                r.issuer == issuer.name
                    && glob_match(&r.subject, sub)
                    && r.claims.iter().all(|(name, want)| claim_equals(claims.get(name), want))
            })
            .ok_or_else(|| ExchangeError::Refused(format!("no rule maps subject {sub:?} of issuer {}", issuer.name)))?;
        Ok(Mapped {
            client_id: rule.client_id.clone(),
            subject: ExternalSubject { iss: issuer.name.clone(), sub: sub.to_owned() },
            expires_at,
        })
    }

    /// A GitHub access token: the first `github` issuer whose OAuth app GitHub says the token belongs to.
    async fn exchange_github(&self, token: &str) -> Result<Mapped, ExchangeError> {
        if token.is_empty() || token.len() > 255 || !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ExchangeError::Refused("not a GitHub access token".into()));
        }
        if self.issuers.iter().all(|i| i.github.is_none()) {
            return Err(ExchangeError::Refused(format!(
                "{ACCESS_TOKEN_TYPE} is exchanged only at an issuer of kind = \"github\", and none is configured"
            )));
        }
        for issuer in &self.issuers {
            let Some(app) = &issuer.github else { continue };
            let Some(user) = issuer.check_github_token(app, token).await? else { continue };
            let id = user.get("id").and_then(serde_json::Value::as_u64);
            let login = user.get("login").and_then(serde_json::Value::as_str);
            let (Some(id), Some(login)) = (id, login) else {
                return Err(ExchangeError::Unavailable {
                    issuer: issuer.name.clone(),
                    reason: "GitHub's token check named no user id and login".into(),
                });
            };
            let mut claims = serde_json::Map::new();
            claims.insert("login".into(), login.into());
            claims.insert("id".into(), id.into());
            if let Some(email) = user.get("email").filter(|e| e.is_string()) {
                claims.insert("email".into(), email.clone());
            }
            let now = unix_now();
            let expires_at = user
                .get("expires_at")
                .and_then(serde_json::Value::as_u64)
                .map_or(now + issuer.max_lifetime, |exp| exp.min(now + issuer.max_lifetime));
            if expires_at <= now {
                return Err(ExchangeError::Refused("expired".into()));
            }
            return self.map(issuer, &id.to_string(), &claims, expires_at);
        }
        Err(ExchangeError::Refused("GitHub knows this token for none of the configured OAuth apps".into()))
    }
}

/// A claim equals a configured string: strings as they are, booleans and numbers as written.
fn claim_equals(value: Option<&serde_json::Value>, want: &str) -> bool {
    match value {
        Some(serde_json::Value::String(s)) => s == want,
        Some(serde_json::Value::Bool(b)) => want == if *b { "true" } else { "false" },
        Some(serde_json::Value::Number(n)) => n.as_f64().is_some_and(|n| want.parse::<f64>().is_ok_and(|w| w == n)),
        _ => false,
    }
}

fn unverified_issuer(token: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    value.get("iss")?.as_str().map(str::to_owned)
}

impl Issuer {
    async fn key(&self, kid: &str) -> Result<DecodingKey, ExchangeError> {
        {
            let keys = self.keys.read().await;
            let fresh = keys.fetched.is_some_and(|t| t.elapsed() < KEYS_MAX_AGE);
            if let Some(key) = keys.by_kid.get(kid).filter(|_| fresh) {
                return Ok(key.clone());
            }
        }
        self.refresh().await?;
        self.keys
            .read()
            .await
            .by_kid
            .get(kid)
            .cloned()
            .ok_or_else(|| ExchangeError::Refused(format!("issuer {} has no signing key {kid:?}", self.name)))
    }

    /// Refetches the JWKS, at most once per [`REFETCH_MIN_INTERVAL`] (garbage tokens with made-up `kid`s
    /// must not turn keymesh into a load generator against the issuer).
    async fn refresh(&self) -> Result<(), ExchangeError> {
        let mut last = self.last_attempt.lock().await;
        if last.is_some_and(|t| t.elapsed() < REFETCH_MIN_INTERVAL) {
            return Ok(());
        }
        let fetched = self.fetch_keys().await;
        // When the attempt ended: requests queued behind a slow issuer take this outcome, not a fetch each.
        *last = Some(Instant::now());
        let by_kid = fetched?;
        tracing::info!(issuer = %self.name, keys = by_kid.len(), "fetched the signing keys of a token-exchange issuer");
        *self.keys.write().await = Keys { by_kid, fetched: Some(Instant::now()) };
        Ok(())
    }

    async fn fetch_keys(&self) -> Result<HashMap<String, DecodingKey>, ExchangeError> {
        let unavailable = |reason: String| ExchangeError::Unavailable { issuer: self.name.clone(), reason };
        let url = match &self.jwks_url {
            Some(url) => url.clone(),
            None => {
                let discovery = format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'));
                let document: serde_json::Value = self.get_json(&discovery).await.map_err(unavailable)?;
                let url = document
                    .get("jwks_uri")
                    .and_then(serde_json::Value::as_str)
                    .ok_or_else(|| unavailable(format!("{discovery} names no jwks_uri")))?
                    .to_owned();
                check_url("jwks_uri".into(), &url).map_err(|e| unavailable(e.to_string()))?;
                url
            }
        };
        let set: JwkSet = self.get_json(&url).await.map_err(unavailable)?;
        Ok(set
            .keys
            .iter()
            .filter_map(|jwk| Some((jwk.common.key_id.clone()?, DecodingKey::from_jwk(jwk).ok()?)))
            .collect())
    }

    /// GitHub's check of `token` as one of `app`'s (its user, with `expires_at` as Unix seconds when GitHub
    /// gives one); `None` when GitHub does not know the token for this app.
    async fn check_github_token(
        &self,
        app: &GithubApp,
        token: &str,
    ) -> Result<Option<serde_json::Map<String, serde_json::Value>>, ExchangeError> {
        let unavailable = |reason: String| ExchangeError::Unavailable { issuer: self.name.clone(), reason };
        let client_id: String = url::form_urlencoded::byte_serialize(self.audience.as_bytes()).collect();
        let url = format!("{}/applications/{client_id}/token", app.api_url);
        let body = Zeroizing::new(serde_json::json!({ "access_token": token }).to_string());
        let response = self
            .http
            .post(&url)
            .basic_auth(&self.audience, Some(app.client_secret.as_str()))
            .header("accept", "application/vnd.github+json")
            .header("x-github-api-version", "2022-11-28")
            .header("user-agent", "keymesh-token-service")
            .header("content-type", "application/json")
            .body(body.as_str().to_owned())
            .send()
            .await
            .map_err(|e| unavailable(format!("{url}: {e}")))?;
        // 404: not a token of this app (or revoked); 422: not a token at all.
        if matches!(response.status().as_u16(), 404 | 422) {
            return Ok(None);
        }
        let answer: serde_json::Value = Self::read_json(&url, response).await.map_err(unavailable)?;
        let of_this_app = answer.pointer("/app/client_id").and_then(serde_json::Value::as_str) == Some(&self.audience);
        if !of_this_app {
            return Ok(None);
        }
        let mut user = answer.get("user").and_then(serde_json::Value::as_object).cloned().unwrap_or_default();
        if let Some(expires) = answer.get("expires_at").and_then(serde_json::Value::as_str) {
            let at = chrono::DateTime::parse_from_rfc3339(expires)
                .map_err(|e| unavailable(format!("{url}: expires_at {expires:?}: {e}")))?;
            user.insert("expires_at".into(), (at.timestamp().max(0) as u64).into());
        }
        Ok(Some(user))
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, String> {
        let response = self.http.get(url).send().await.map_err(|e| format!("{url}: {e}"))?;
        Self::read_json(url, response).await
    }

    async fn read_json<T: serde::de::DeserializeOwned>(url: &str, response: reqwest::Response) -> Result<T, String> {
        if !response.status().is_success() {
            return Err(format!("{url}: HTTP {}", response.status()));
        }
        // Read chunk by chunk and stop past the cap: a misbehaving issuer cannot make token-service buffer
        // an unbounded body.
        let too_large = || format!("{url}: document over {MAX_DOCUMENT} bytes");
        if response.content_length().is_some_and(|n| n > MAX_DOCUMENT as u64) {
            return Err(too_large());
        }
        let mut response = response;
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| format!("{url}: {e}"))? {
            if body.len() + chunk.len() > MAX_DOCUMENT {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|e| format!("{url}: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use crate::config::RawExchangeIssuer;

    use super::*;

    fn issuer(url: &str) -> RawExchangeIssuer {
        RawExchangeIssuer {
            name: "k8s".into(),
            kind: ExchangeIssuerKind::Oidc,
            api_url: None,
            client_secret_file: None,
            issuer: url.into(),
            audience: "keymesh".into(),
            jwks_url: None,
            ca_file: None,
            max_token_lifetime_seconds: None,
        }
    }

    #[tokio::test]
    async fn an_access_token_without_a_github_issuer_is_refused_saying_so() {
        let exchanger = Exchanger::from_config(
            &RawExchange { issuers: vec![issuer("https://k8s.example")], rules: vec![] },
            Duration::ZERO,
        )
        .unwrap();
        for (token, reason) in [("gho_0123456789", "kind = \"github\""), ("two words", "not a GitHub access token")] {
            match exchanger.exchange(token, ACCESS_TOKEN_TYPE).await {
                Err(ExchangeError::Refused(why)) => assert!(why.contains(reason), "{why}"),
                other => panic!("{token:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn configuration_is_checked() {
        let ok = RawExchange { issuers: vec![issuer("https://k8s.example")], rules: vec![] };
        assert!(Exchanger::from_config(&ok, Duration::ZERO).is_ok());
        for url in ["http://k8s.example", "http://127.0.0.1.evil.example", "ftp://x"] {
            let bad = RawExchange { issuers: vec![issuer(url)], rules: vec![] };
            let err = Exchanger::from_config(&bad, Duration::ZERO).err().unwrap();
            assert!(err.to_string().contains("issuers[0].issuer"), "{url}: {err}");
        }
        assert!(check_url("x".into(), "http://127.0.0.1:8080/jwks").is_ok());
        let rule = RawExchangeRule {
            issuer: "other".into(),
            subject: "*".into(),
            claims: Default::default(),
            client_id: "app_1".into(),
        };
        let bad = RawExchange { issuers: vec![issuer("https://k8s.example")], rules: vec![rule] };
        let err = Exchanger::from_config(&bad, Duration::ZERO).err().unwrap();
        assert!(err.to_string().contains("rules[0].issuer"), "{err}");
        // A GitHub issuer needs its app's secret, and takes no JWKS; an OIDC one takes no GitHub settings.
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let github = |edit: &dyn Fn(&mut RawExchangeIssuer)| {
            let mut raw = RawExchangeIssuer {
                name: "github".into(),
                kind: ExchangeIssuerKind::Github,
                client_secret_file: Some(secret.clone()),
                ..issuer("https://github.com")
            };
            edit(&mut raw);
            Exchanger::from_config(&RawExchange { issuers: vec![raw], rules: vec![] }, Duration::ZERO)
        };
        assert!(github(&|_| {}).is_ok());
        for (edit, field) in [
            (
                &(|r: &mut RawExchangeIssuer| r.client_secret_file = None) as &dyn Fn(&mut RawExchangeIssuer),
                "client_secret_file",
            ),
            (&|r: &mut RawExchangeIssuer| r.jwks_url = Some("https://github.com/jwks".into()), "jwks_url"),
            (&|r: &mut RawExchangeIssuer| r.api_url = Some("http://api.github.example".into()), "api_url"),
            (&|r: &mut RawExchangeIssuer| r.kind = ExchangeIssuerKind::Oidc, "kind"),
        ] {
            let err = github(edit).err().unwrap().to_string();
            assert!(err.contains(&format!("issuers[0].{field}")), "{err}");
        }
        assert!(claim_equals(Some(&serde_json::json!(true)), "true"));
        assert!(!claim_equals(Some(&serde_json::json!("yes")), "true"));
        assert!(!claim_equals(None, "true"));
        assert!(claim_equals(Some(&serde_json::json!(42)), "42"));
        assert!(!claim_equals(Some(&serde_json::json!(42)), "43"));
    }
}

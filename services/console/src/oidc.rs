//! The browser half of an OpenID Connect sign-in (authorization code flow with PKCE, RFC 7636 S256): the values a
//! sign-in starts with, the authorization URL that carries them, and the one-time record that ties the callback
//! to the browser that started it. `state` stops a forged callback, `nonce` binds the ID token to this sign-in
//! (replay), and the PKCE verifier means a stolen authorization code is useless without it. None of the three ties
//! the callback to a *browser*, though: an attacker could start a sign-in, sign in at the provider as themselves,
//! and send the victim the callback URL, signing the victim in to the attacker's account (login CSRF). So each
//! sign-in also sets a random binding in a short-lived cookie of the browser that starts it, and the callback is
//! refused unless that browser brings it back (kept as its SHA-256, compared in constant time). Each pending
//! sign-in is used once, by the provider that started it, and expires after [`PENDING_LIFETIME`]; at most
//! [`MAX_PENDING`] wait at once. The code is redeemed with the verifier ([`token_request_form`]) and the ID token
//! must carry the sign-in's nonce ([`nonce_matches`]).

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

/// How long a browser has to come back from the identity provider.
pub const PENDING_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Sign-ins waiting for their callback, at most: a flood of unauthenticated starts cannot grow the console's
/// memory without bound.
pub const MAX_PENDING: usize = 10_000;

/// Who a sign-in was started with: a callback of the other provider is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// The OpenID Connect provider.
    Oidc,
    /// GitHub.
    Github,
}

/// Why a sign-in could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The system's random source failed.
    #[error("{0}")]
    Random(#[from] keymesh_crypto::CryptoError),
    /// Too many sign-ins are waiting.
    #[error("too many sign-ins are under way; try again in a minute")]
    Busy,
}

fn binding_hash(binding: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(binding.as_bytes()).into()
}

/// The S256 code challenge of a verifier: BASE64URL(SHA-256(verifier)).
pub fn code_challenge(verifier: &str) -> String {
    use sha2::Digest;
    URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

/// What one sign-in starts with. No Debug output of the verifier.
#[derive(Clone)]
pub struct Pending {
    /// Sent to the provider and checked on the callback.
    pub state: String,
    /// Sent to the provider; the ID token must carry it.
    pub nonce: String,
    /// Kept here; sent only with the code, to the token endpoint.
    pub verifier: Zeroizing<String>,
    /// Where to go after sign-in (a path of the console, checked by [`local_path`]).
    pub return_to: String,
    /// The provider it was started with.
    pub via: Via,
    /// SHA-256 of the browser binding the callback must bring back.
    binding: [u8; 32],
    started: Instant,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending").field("return_to", &self.return_to).finish_non_exhaustive()
    }
}

/// `path` when it is a path of this console (`/keys?x=1`), else `/`: a sign-in never redirects off-site
/// (`//evil.example`, `https://…`, `/\evil`).
pub fn local_path(path: &str) -> String {
    let local = path.starts_with('/') && !path.starts_with("//") && !path.chars().any(|c| c.is_control() || c == '\\');
    if local { path.to_owned() } else { "/".to_owned() }
}

/// Where the provider's endpoints and this console's client are.
#[derive(Clone, Debug)]
pub struct Client {
    /// The provider's authorization endpoint (from discovery).
    pub authorization_endpoint: url::Url,
    /// The console's client id at the provider.
    pub client_id: String,
    /// The console's callback URL, as registered at the provider.
    pub redirect_uri: String,
    /// Scopes asked for; `openid` always comes first.
    pub scopes: Vec<String>,
}

impl Client {
    /// The URL the browser is sent to.
    pub fn authorization_url(&self, pending: &Pending) -> url::Url {
        let mut url = self.authorization_endpoint.clone();
        let mut scopes = vec!["openid".to_owned()];
        scopes.extend(self.scopes.iter().filter(|s| *s != "openid").cloned());
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &scopes.join(" "))
            .append_pair("state", &pending.state)
            .append_pair("nonce", &pending.nonce)
            .append_pair("code_challenge", &code_challenge(&pending.verifier))
            .append_pair("code_challenge_method", "S256");
        url
    }
}

/// The form the console posts to the provider's token endpoint to redeem `code`: the PKCE verifier proves it is
/// the browser's own sign-in. The client secret (confidential clients) goes in the Authorization header, not here.
pub fn token_request_form(client: &Client, code: &str, pending: &Pending) -> Zeroizing<String> {
    Zeroizing::new(
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", "authorization_code")
            .append_pair("code", code)
            .append_pair("redirect_uri", &client.redirect_uri)
            .append_pair("client_id", &client.client_id)
            .append_pair("code_verifier", &pending.verifier)
            .finish(),
    )
}

/// Whether the ID token the provider returned was minted for this sign-in: its `nonce` claim is the one the
/// sign-in sent (compared in constant time). Read without verifying the signature: token-service verifies the same
/// token (issuer, audience, signature, lifetime) when the console exchanges it, and refuses it otherwise; the nonce
/// is the one thing only the console knows.
pub fn nonce_matches(id_token: &str, pending: &Pending) -> bool {
    use subtle::ConstantTimeEq;
    let Some(payload) = id_token.split('.').nth(1) else { return false };
    let Ok(bytes) = URL_SAFE_NO_PAD.decode(payload) else { return false };
    let Ok(claims) = serde_json::from_slice::<serde_json::Value>(&bytes) else { return false };
    match claims.get("nonce").and_then(serde_json::Value::as_str) {
        Some(nonce) => bool::from(nonce.as_bytes().ct_eq(pending.nonce.as_bytes())),
        None => false,
    }
}

/// The sign-ins under way in this console process.
#[derive(Default)]
pub struct PendingSignIns {
    by_state: Mutex<HashMap<String, Pending>>,
}

impl PendingSignIns {
    /// Starts a sign-in with `via` that returns to `return_to`. Returns it and the binding for the browser's
    /// cookie.
    pub fn start(&self, via: Via, return_to: &str, now: Instant) -> Result<(Pending, Zeroizing<String>), StartError> {
        let binding = Zeroizing::new(crate::csrf::new_token()?);
        let pending = Pending {
            state: crate::csrf::new_token()?,
            nonce: crate::csrf::new_token()?,
            verifier: Zeroizing::new(crate::csrf::new_token()?),
            return_to: local_path(return_to),
            via,
            binding: binding_hash(&binding),
            started: now,
        };
        let mut map = self.by_state.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_PENDING {
            map.retain(|_, p| now.saturating_duration_since(p.started) < PENDING_LIFETIME);
            if map.len() >= MAX_PENDING {
                return Err(StartError::Busy);
            }
        }
        map.insert(pending.state.clone(), pending.clone());
        Ok((pending, binding))
    }

    /// The sign-in a callback's `state` names, once, if it was started with `via`, in time, by the browser that
    /// brings back its `binding`. The state is used up whatever the outcome: a callback is good once.
    pub fn finish(&self, state: &str, via: Via, binding: Option<&str>, now: Instant) -> Option<Pending> {
        use subtle::ConstantTimeEq;
        let pending = self.by_state.lock().unwrap_or_else(|p| p.into_inner()).remove(state)?;
        let same_browser = binding.is_some_and(|b| bool::from(binding_hash(b).ct_eq(&pending.binding)));
        let in_time = now.saturating_duration_since(pending.started) < PENDING_LIFETIME;
        (same_browser && in_time && pending.via == via).then_some(pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_is_rfc_7636_s256() {
        // RFC 7636, Appendix B.
        assert_eq!(
            code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn the_authorization_url_carries_state_nonce_and_the_s256_challenge() {
        let pending_sign_ins = PendingSignIns::default();
        let (pending, _) = pending_sign_ins.start(Via::Oidc, "/keys", Instant::now()).unwrap();
        assert!((43..=128).contains(&pending.verifier.len()), "RFC 7636 verifier length");
        let client = Client {
            authorization_endpoint: url::Url::parse("https://idp.example/authorize?tenant=x").unwrap(),
            client_id: "console".into(),
            redirect_uri: "https://console.example/auth/callback".into(),
            scopes: vec!["email".into(), "openid".into()],
        };
        let url = client.authorization_url(&pending);
        let pairs: HashMap<String, String> = url.query_pairs().into_owned().collect();
        assert_eq!(pairs["tenant"], "x", "the endpoint's own query stays");
        assert_eq!(pairs["response_type"], "code");
        assert_eq!(pairs["scope"], "openid email");
        assert_eq!(pairs["state"], pending.state);
        assert_eq!(pairs["nonce"], pending.nonce);
        assert_eq!(pairs["code_challenge"], code_challenge(&pending.verifier));
        assert_eq!(pairs["code_challenge_method"], "S256");
        assert!(!url.as_str().contains(pending.verifier.as_str()), "the verifier never leaves the console");
        assert!(!format!("{pending:?}").contains(pending.verifier.as_str()));
    }

    #[test]
    fn a_callback_is_accepted_once_in_time_by_the_browser_and_provider_that_started_it() {
        let pending_sign_ins = PendingSignIns::default();
        let t0 = Instant::now();
        let (pending, binding) = pending_sign_ins.start(Via::Oidc, "/", t0).unwrap();
        assert!(pending_sign_ins.finish("forged", Via::Oidc, Some(&binding), t0).is_none());
        let finished = pending_sign_ins.finish(&pending.state, Via::Oidc, Some(&binding), t0 + Duration::from_secs(5));
        assert_eq!(finished.unwrap().nonce, pending.nonce);
        assert!(pending_sign_ins.finish(&pending.state, Via::Oidc, Some(&binding), t0).is_none(), "used once");
        let (late, binding) = pending_sign_ins.start(Via::Oidc, "/", t0).unwrap();
        assert!(pending_sign_ins.finish(&late.state, Via::Oidc, Some(&binding), t0 + PENDING_LIFETIME).is_none());
        // Login CSRF: the attacker's callback URL opened in another browser (no binding, or its own) is refused.
        let (attackers, _) = pending_sign_ins.start(Via::Oidc, "/", t0).unwrap();
        assert!(pending_sign_ins.finish(&attackers.state, Via::Oidc, None, t0).is_none());
        let (attackers, _) = pending_sign_ins.start(Via::Oidc, "/", t0).unwrap();
        let (_, victims_own) = pending_sign_ins.start(Via::Oidc, "/", t0).unwrap();
        assert!(pending_sign_ins.finish(&attackers.state, Via::Oidc, Some(&victims_own), t0).is_none());
        // A sign-in started with GitHub does not finish at the OIDC callback.
        let (github, binding) = pending_sign_ins.start(Via::Github, "/", t0).unwrap();
        assert!(pending_sign_ins.finish(&github.state, Via::Oidc, Some(&binding), t0).is_none());
    }

    #[test]
    fn a_flood_of_sign_ins_is_bounded() {
        let pending_sign_ins = PendingSignIns::default();
        let t0 = Instant::now();
        for _ in 0..MAX_PENDING {
            pending_sign_ins.start(Via::Oidc, "/", t0).unwrap();
        }
        assert!(matches!(pending_sign_ins.start(Via::Oidc, "/", t0), Err(StartError::Busy)));
        // Once they have expired, sign-ins start again.
        assert!(pending_sign_ins.start(Via::Oidc, "/", t0 + PENDING_LIFETIME).is_ok());
    }

    #[test]
    fn the_code_is_redeemed_with_the_verifier_and_the_id_token_must_carry_the_nonce() {
        let (pending, _) = PendingSignIns::default().start(Via::Oidc, "/", Instant::now()).unwrap();
        let client = Client {
            authorization_endpoint: url::Url::parse("https://idp.example/authorize").unwrap(),
            client_id: "console".into(),
            redirect_uri: "https://console.example/auth/callback".into(),
            scopes: vec![],
        };
        let form = token_request_form(&client, "code&1", &pending);
        let pairs: HashMap<String, String> = url::form_urlencoded::parse(form.as_bytes()).into_owned().collect();
        assert_eq!(pairs["grant_type"], "authorization_code");
        assert_eq!(pairs["code"], "code&1", "encoded, so a code cannot add fields");
        assert_eq!(pairs["code_verifier"], *pending.verifier);
        let token = |claims: serde_json::Value| format!("h.{}.s", URL_SAFE_NO_PAD.encode(claims.to_string()));
        assert!(nonce_matches(&token(serde_json::json!({"nonce": pending.nonce, "sub": "alice"})), &pending));
        assert!(!nonce_matches(&token(serde_json::json!({"nonce": "replayed", "sub": "alice"})), &pending));
        assert!(!nonce_matches(&token(serde_json::json!({"sub": "alice"})), &pending), "a nonce is required");
        assert!(!nonce_matches("not-a-jwt", &pending));
    }

    #[test]
    fn sign_ins_only_return_to_the_console() {
        assert_eq!(local_path("/keys?purpose=kem"), "/keys?purpose=kem");
        for off_site in ["//evil.example/x", "https://evil.example", "/\\evil.example", "keys", "", "/a\r\nb"] {
            assert_eq!(local_path(off_site), "/", "{off_site:?}");
        }
    }
}

//! Server-side sessions. The browser holds only an opaque random id in a cookie (`HttpOnly`, `SameSite=Lax`, and
//! `Secure` with the `__Host-` prefix whenever there is TLS); what the session knows (who signed in, their keymesh
//! tokens, the CSRF token) stays on the server, so a stolen cookie stops working the moment the session ends and
//! no token is ever in the browser. A session ends when it has been idle too long, when it is too old whatever
//! its use, or at sign-out; a sign-in always starts a new session (a new id), so an id planted before sign-in
//! (session fixation) is worth nothing after it. Ids are kept by their SHA-256, never as given.

use std::{
    collections::HashMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use axum::http::{HeaderMap, header};
use zeroize::Zeroizing;

use crate::csrf;

/// The cookie's name over TLS: `__Host-` makes the browser refuse it unless Secure, from this host, for `/`.
pub const COOKIE_TLS: &str = "__Host-keymesh-console";
/// The cookie's name on loopback without TLS (development), where `__Host-` cannot be used.
pub const COOKIE_PLAIN: &str = "keymesh-console";
/// The cookie that ties a sign-in's callback to the browser that started it, over TLS.
pub const SIGNIN_COOKIE_TLS: &str = "__Host-keymesh-signin";
/// The same on loopback without TLS.
pub const SIGNIN_COOKIE_PLAIN: &str = "keymesh-signin";

/// The person signed in, as the mesh knows them. No Debug output of the token.
pub struct SignedIn {
    /// The identity for the audit trail (the external subject, e.g. an e-mail, or the application).
    pub subject: String,
    /// The tenant the session acts in.
    pub tenant: String,
    /// The roles the access token carries (`viewer`, `developer`, `admin`, `owner`, `auditor`).
    pub roles: Vec<String>,
    /// The application the keymesh token was issued for (the exchange rule's, or the development login's).
    pub application: String,
    /// The keymesh access token calls are made with.
    pub access_token: Zeroizing<String>,
    /// The refresh token of a development login (revoked at sign-out with the access token).
    pub refresh_token: Option<Zeroizing<String>>,
    /// When the access token expires: the session cannot act after it.
    pub expires_at: std::time::SystemTime,
}

impl SignedIn {
    /// Whether the access token has expired at `now`.
    pub fn expired(&self, now: std::time::SystemTime) -> bool {
        now >= self.expires_at
    }
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("subject", &self.subject)
            .field("tenant", &self.tenant)
            .field("roles", &self.roles)
            .field("application", &self.application)
            .finish_non_exhaustive()
    }
}

/// How long sessions live.
#[derive(Clone, Copy, Debug)]
pub struct Lifetimes {
    /// Ended after this long without a request.
    pub idle: Duration,
    /// Ended this long after sign-in, however busy.
    pub absolute: Duration,
}

impl Lifetimes {
    /// Whether a session is within both lifetimes at `now`.
    fn alive(&self, entry: &Entry, now: Instant) -> bool {
        now.saturating_duration_since(entry.last_seen) < self.idle
            && now.saturating_duration_since(entry.started) < self.absolute
    }
}

impl Default for Lifetimes {
    fn default() -> Self {
        Self { idle: Duration::from_secs(30 * 60), absolute: Duration::from_secs(8 * 3600) }
    }
}

struct Entry {
    user: std::sync::Arc<SignedIn>,
    csrf: String,
    started: Instant,
    last_seen: Instant,
}

/// What a request's session gives a handler. No Debug output of the CSRF token.
#[derive(Clone)]
pub struct Current {
    /// Who.
    pub user: std::sync::Arc<SignedIn>,
    /// The CSRF token the session's forms carry.
    pub csrf: String,
}

impl std::fmt::Debug for Current {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Current").field("user", &self.user).finish_non_exhaustive()
    }
}

/// The sessions of one console process.
pub struct Sessions {
    lifetimes: Lifetimes,
    /// Cookies without `Secure`: the console is reached over plain HTTP on a loopback host (`public_url`).
    plain_http: bool,
    by_id_hash: Mutex<HashMap<[u8; 32], Entry>>,
}

/// Starting a session failed (the system's random source).
#[derive(Debug, thiserror::Error)]
#[error("cannot start a session: {0}")]
pub struct SessionError(#[from] keymesh_crypto::CryptoError);

/// The key a session is kept under (infallible: a fallback value here would make ids collide).
fn id_hash(id: &str) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(id.as_bytes()).into()
}

impl Sessions {
    /// A store with these lifetimes; `plain_http` only when browsers reach the console over http:// on loopback.
    pub fn new(lifetimes: Lifetimes, plain_http: bool) -> Self {
        Self { lifetimes, plain_http, by_id_hash: Mutex::new(HashMap::new()) }
    }

    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        self.by_id_hash.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Signs `user` in: a new session (ending `previous`, the one the browser came with, if any). Returns the id
    /// for the cookie.
    pub fn start(
        &self,
        user: SignedIn,
        previous: Option<&str>,
        now: Instant,
    ) -> Result<Zeroizing<String>, SessionError> {
        let id = Zeroizing::new(csrf::new_token()?);
        let entry = Entry { user: std::sync::Arc::new(user), csrf: csrf::new_token()?, started: now, last_seen: now };
        let mut entries = self.entries();
        if let Some(previous) = previous {
            entries.remove(&id_hash(previous));
        }
        entries.insert(id_hash(&id), entry);
        Ok(id)
    }

    /// The session `id` names, if it is still alive at `now` (which then counts as activity). An expired one is
    /// dropped.
    pub fn current(&self, id: &str, now: Instant) -> Option<Current> {
        let mut entries = self.entries();
        let key = id_hash(id);
        let entry = entries.get_mut(&key)?;
        if !self.lifetimes.alive(entry, now) {
            entries.remove(&key);
            return None;
        }
        entry.last_seen = now;
        Some(Current { user: entry.user.clone(), csrf: entry.csrf.clone() })
    }

    /// Signs out: ends the session and hands back who it was, so their tokens can be revoked.
    pub fn end(&self, id: &str) -> Option<std::sync::Arc<SignedIn>> {
        self.entries().remove(&id_hash(id)).map(|e| e.user)
    }

    /// Drops every session past its lifetimes (a sweep, so that sessions nobody comes back to do not pile up).
    pub fn sweep(&self, now: Instant) -> usize {
        let mut entries = self.entries();
        let before = entries.len();
        entries.retain(|_, e| self.lifetimes.alive(e, now));
        before - entries.len()
    }

    fn cookie_name(&self) -> &'static str {
        if self.plain_http { COOKIE_PLAIN } else { COOKIE_TLS }
    }

    fn signin_cookie_name(&self) -> &'static str {
        if self.plain_http { SIGNIN_COOKIE_PLAIN } else { SIGNIN_COOKIE_TLS }
    }

    /// A `Set-Cookie` value: `name=value` for this host and `/`, HttpOnly, SameSite=Lax, Secure over TLS.
    fn set_cookie(&self, name: &str, value: &str, max_age: Option<u64>) -> String {
        let secure = if self.plain_http { "" } else { "; Secure" };
        let max_age = max_age.map(|s| format!("; Max-Age={s}")).unwrap_or_default();
        format!("{name}={value}; Path=/; HttpOnly; SameSite=Lax{max_age}{secure}")
    }

    /// The `Set-Cookie` value that gives the browser the session `id` (a session cookie: gone with the browser).
    pub fn cookie(&self, id: &str) -> String {
        self.set_cookie(self.cookie_name(), id, None)
    }

    /// The `Set-Cookie` value that removes it.
    pub fn removal_cookie(&self) -> String {
        self.set_cookie(self.cookie_name(), "", Some(0))
    }

    /// The `Set-Cookie` value of a sign-in's browser binding (see [`crate::oidc`]), for as long as a sign-in waits.
    pub fn signin_cookie(&self, binding: &str) -> String {
        self.set_cookie(self.signin_cookie_name(), binding, Some(crate::oidc::PENDING_LIFETIME.as_secs()))
    }

    /// The `Set-Cookie` value that removes the binding once the sign-in is over.
    pub fn signin_removal_cookie(&self) -> String {
        self.set_cookie(self.signin_cookie_name(), "", Some(0))
    }

    /// The session id a request's `Cookie` headers carry, if any.
    pub fn id_from(&self, headers: &HeaderMap) -> Option<String> {
        cookie_value(headers, self.cookie_name())
    }

    /// The sign-in binding a request's `Cookie` headers carry, if any.
    pub fn signin_binding_from(&self, headers: &HeaderMap) -> Option<String> {
        cookie_value(headers, self.signin_cookie_name())
    }
}

/// The value of cookie `name` in a request's `Cookie` headers (none when empty).
fn cookie_value(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn alice() -> SignedIn {
        SignedIn {
            subject: "alice@example.com".into(),
            tenant: "t_1".into(),
            roles: vec!["admin".into()],
            application: "app_console_admins".into(),
            access_token: Zeroizing::new("eyJ.secret.token".into()),
            refresh_token: Some(Zeroizing::new("rt.secret.refresh".into())),
            expires_at: std::time::SystemTime::now() + Duration::from_secs(3600),
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    #[test]
    fn sessions_end_when_idle_too_long_or_too_old_and_at_sign_out() {
        let sessions = Sessions::new(Lifetimes { idle: 10 * MINUTE, absolute: 60 * MINUTE }, false);
        let t0 = Instant::now();
        let id = sessions.start(alice(), None, t0).unwrap();
        assert_eq!(sessions.current(&id, t0 + 9 * MINUTE).unwrap().user.subject, "alice@example.com");
        // Busy enough never to idle out, still ended at the absolute limit.
        for minute in (18..60).step_by(9) {
            assert!(sessions.current(&id, t0 + minute * MINUTE).is_some(), "alive at {minute} min");
        }
        assert!(sessions.current(&id, t0 + 60 * MINUTE).is_none(), "absolute lifetime");
        let id = sessions.start(alice(), None, t0).unwrap();
        assert!(sessions.current(&id, t0 + 10 * MINUTE).is_none(), "idle lifetime");
        let id = sessions.start(alice(), None, t0).unwrap();
        assert_eq!(sessions.end(&id).unwrap().subject, "alice@example.com");
        assert!(sessions.current(&id, t0).is_none(), "a stolen cookie is worthless after sign-out");
        assert!(sessions.current("made-up", t0).is_none());
    }

    #[test]
    fn a_sign_in_replaces_the_session_the_browser_came_with() {
        let sessions = Sessions::new(Lifetimes::default(), false);
        let now = Instant::now();
        let planted = sessions.start(alice(), None, now).unwrap();
        let planted_csrf = sessions.current(&planted, now).unwrap().csrf;
        let fresh = sessions.start(alice(), Some(&planted), now).unwrap();
        assert_ne!(planted, fresh);
        assert!(sessions.current(&planted, now).is_none(), "the old id ends (no fixation)");
        let current = sessions.current(&fresh, now).unwrap();
        assert_eq!(current.csrf.len(), 43);
        assert_ne!(current.csrf, planted_csrf, "each session has its own CSRF token");
    }

    #[test]
    fn cookies_are_http_only_lax_and_secure_with_the_host_prefix_over_tls() {
        let tls = Sessions::new(Lifetimes::default(), false);
        assert_eq!(tls.cookie("abc"), "__Host-keymesh-console=abc; Path=/; HttpOnly; SameSite=Lax; Secure");
        assert!(tls.removal_cookie().contains("Max-Age=0"));
        let plain = Sessions::new(Lifetimes::default(), true);
        assert_eq!(plain.cookie("abc"), "keymesh-console=abc; Path=/; HttpOnly; SameSite=Lax");
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("theme=dark; __Host-keymesh-console=abc"));
        assert_eq!(tls.id_from(&headers).as_deref(), Some("abc"));
        assert_eq!(plain.id_from(&headers), None, "each store reads only its own cookie name");
    }

    #[test]
    fn the_sweep_drops_dead_sessions_and_debug_shows_no_token() {
        let sessions = Sessions::new(Lifetimes { idle: MINUTE, absolute: 60 * MINUTE }, false);
        let t0 = Instant::now();
        sessions.start(alice(), None, t0).unwrap();
        let live = sessions.start(alice(), None, t0 + 2 * MINUTE).unwrap();
        assert_eq!(sessions.sweep(t0 + 2 * MINUTE), 1);
        let shown = format!("{:?}", sessions.current(&live, t0 + 2 * MINUTE).unwrap());
        assert!(shown.contains("alice@example.com") && !shown.contains("secret"), "{shown}");
        let csrf = sessions.current(&live, t0 + 2 * MINUTE).unwrap().csrf;
        assert!(!shown.contains(&csrf), "no CSRF token in Debug: {shown}");
    }
}

//! The console's HTTP application: its shared state, the routes, and the guard every request passes. The guard
//! is where the security rules hold for every endpoint at once rather than per handler: a page needs a live
//! session (else the browser is sent to sign in), a POST needs the session's CSRF token and, from a browser, this
//! console's own `Origin`; what a person may do is then checked by the handler against the roles their keymesh
//! token carries, and again by the mesh itself.

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    body::{Body, to_bytes},
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use keymesh_client::KeymeshClient;

use crate::{
    config::ConsoleConfig,
    csrf, headers,
    oidc::PendingSignIns,
    pages,
    session::{Current, Sessions},
    signin, views,
};

/// Largest form the console accepts (a policy with many rules fits easily).
const MAX_FORM_BYTES: usize = 256 * 1024;

/// Everything the handlers share.
pub struct Console {
    /// `[console]`.
    pub config: ConsoleConfig,
    /// Signed-in sessions.
    pub sessions: Sessions,
    /// Sign-ins waiting for the provider's callback.
    pub pending: PendingSignIns,
    /// The mesh, called with each person's own token (the client holds no credentials of its own).
    pub mesh: KeymeshClient,
    /// The OIDC provider, when configured.
    pub provider: Option<signin::Provider>,
    /// GitHub, when configured.
    pub github: Option<signin::GithubProvider>,
}

/// The shared state as handlers receive it.
pub type Shared = Arc<Console>;

/// The signed-in person of a request, as the guard found them. No Debug output of the session id (a working
/// cookie value).
#[derive(Clone)]
pub struct Who {
    /// The session.
    pub session: Current,
    /// Its id (for sign-out).
    pub id: String,
}

impl std::fmt::Debug for Who {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Who").field("session", &self.session).finish_non_exhaustive()
    }
}

impl Who {
    /// Whether the person holds any of these roles (`admin`, `owner`, …).
    pub fn has_role(&self, roles: &[&str]) -> bool {
        self.session.user.roles.iter().any(|r| roles.contains(&r.as_str()))
    }

    /// Admins and owners manage the tenant's keys and applications.
    pub fn can_manage(&self) -> bool {
        self.has_role(&["admin", "owner"])
    }

    /// Refuses unless the person may manage.
    pub fn require_manage(&self, what: &str) -> Result<(), crate::error::PageError> {
        if self.can_manage() {
            Ok(())
        } else {
            Err(crate::error::PageError::Forbidden(format!("{what} needs the admin or owner role")))
        }
    }

    /// The access token calls are made with.
    pub fn token(&self) -> &str {
        self.session.user.access_token.as_str()
    }
}

/// The routes.
pub fn router(console: Shared) -> Router {
    let over_tls = headers::OverTls(console.config.over_tls());
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/static/console.css", get(views::stylesheet))
        .route("/static/console.js", get(views::script))
        .route("/static/favicon.svg", get(views::icon))
        .route("/favicon.ico", get(views::icon))
        .route("/login", get(signin::login_page))
        .route("/login/oidc", get(signin::start_oidc))
        .route("/oidc/callback", get(signin::oidc_callback))
        .route("/login/github", get(signin::start_github))
        .route("/github/callback", get(signin::github_callback))
        .route("/login/dev", post(signin::dev_login))
        .route("/logout", post(signin::logout))
        .route("/", get(pages::overview::show))
        .route("/keys", get(pages::keys::list).post(pages::keys::create))
        .route("/keys/new", get(pages::keys::new_form))
        .route("/keys/{key}", get(pages::keys::show))
        .route("/keys/{key}/rotate", post(pages::keys::rotate))
        .route("/keys/{key}/enable", post(pages::keys::enable))
        .route("/keys/{key}/disable", post(pages::keys::disable))
        .route("/keys/{key}/schedule-deletion", post(pages::keys::schedule_deletion))
        .route("/keys/{key}/cancel-deletion", post(pages::keys::cancel_deletion))
        .route("/keys/{key}/policy", get(pages::keys::policy_form).post(pages::keys::update_policy))
        .route("/applications", get(pages::applications::list).post(pages::applications::create))
        .route("/applications/new", get(pages::applications::new_form))
        .route("/applications/register", get(pages::applications::register_form).post(pages::applications::register))
        .route("/applications/{client_id}/rotate-secret", post(pages::applications::rotate_secret))
        .route("/applications/{client_id}/disable", post(pages::applications::disable))
        .route("/audit", get(pages::audit::show))
        .route("/audit/export", get(pages::audit::export))
        .route("/tenants", get(pages::tenants::show).post(pages::tenants::create))
        .layer(middleware::from_fn_with_state(console.clone(), guard))
        .layer(middleware::from_fn_with_state(over_tls, headers::secure_headers))
        .with_state(console)
}

/// Paths anyone may reach: signing in, the static files, the health check.
fn is_public(path: &str) -> bool {
    const PUBLIC: &[&str] = &[
        "/healthz",
        "/favicon.ico",
        "/login",
        "/login/oidc",
        "/oidc/callback",
        "/login/github",
        "/github/callback",
        "/login/dev",
    ];
    PUBLIC.contains(&path) || path.starts_with("/static/")
}

fn refuse(status: StatusCode, message: &str) -> Response {
    (status, views::error_page(status, message)).into_response()
}

/// Whether a browser's request came from this console: a POST from a browser always carries `Origin`, and a
/// cross-site one carries the other site's. (A request without it is not from a browser page, so it cannot ride on
/// a victim's cookies; it still needs the CSRF token below.)
fn same_origin(headers: &HeaderMap, origin: &str) -> bool {
    match headers.get(header::ORIGIN) {
        None => true,
        Some(value) => value.to_str().is_ok_and(|v| v == origin),
    }
}

/// The guard of every request (see the module's documentation).
async fn guard(State(console): State<Shared>, request: Request, next: Next) -> Response {
    let path = request.uri().path().to_owned();
    let unsafe_method = csrf::needs_token(request.method());
    if unsafe_method && !same_origin(request.headers(), &console.config.origin()) {
        return refuse(StatusCode::FORBIDDEN, "This request came from another site.");
    }
    if is_public(&path) {
        return next.run(request).await;
    }
    let now = Instant::now();
    let id = console.sessions.id_from(request.headers());
    let current = id.as_deref().and_then(|id| console.sessions.current(id, now));
    let (Some(id), Some(session)) = (id, current) else {
        if unsafe_method {
            return refuse(StatusCode::FORBIDDEN, "Your session has ended; sign in again.");
        }
        let return_to = request.uri().path_and_query().map_or("/", |p| p.as_str());
        let query = url::form_urlencoded::Serializer::new(String::new()).append_pair("return_to", return_to).finish();
        return Redirect::to(&format!("/login?{query}")).into_response();
    };
    if session.user.expired(std::time::SystemTime::now()) {
        // The keymesh token the session holds has expired: the session cannot act any more.
        console.sessions.end(&id);
        return Redirect::to("/login?expired=1").into_response();
    }
    let who = Who { session, id };
    let request = if unsafe_method {
        match checked_form(request, &who.session.csrf).await {
            Ok(request) => request,
            Err(response) => return response,
        }
    } else {
        request
    };
    let id = who.id.clone();
    let mut request = request;
    request.extensions_mut().insert(who);
    let response = next.run(request).await;
    if response.extensions().get::<crate::error::SignInAgain>().is_some() {
        // The mesh no longer accepts the session's token (revoked elsewhere, the application disabled): the
        // session is over here too.
        console.sessions.end(&id);
    }
    response
}

/// The request with its form read, if the form carries the session's CSRF token; else the 403.
async fn checked_form(request: Request, expected: &str) -> Result<Request, Response> {
    let (parts, body) = request.into_parts();
    let bytes = to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| refuse(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large."))?;
    let submitted = url::form_urlencoded::parse(&bytes)
        .find(|(k, _)| k == csrf::FORM_FIELD)
        .map(|(_, v)| v.into_owned())
        .or_else(|| parts.headers.get(csrf::HEADER).and_then(|v| v.to_str().ok()).map(str::to_owned));
    if !csrf::matches(expected, submitted.as_deref()) {
        return Err(refuse(StatusCode::FORBIDDEN, "The form's CSRF token is missing or wrong; reload the page."));
    }
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

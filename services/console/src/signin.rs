//! Signing in and out. The console never decides who someone is or what they may do: an OIDC sign-in ends with
//! the provider's ID token exchanged at token-service (RFC 8693), which verifies it (signature, issuer, audience,
//! lifetime) and maps the person to an application of a tenant by its configured rules; the development login
//! is the client-credentials grant of an application (the bootstrap admin's, from the data directory). Either way
//! the session holds the keymesh token token-service issued, and every page calls the mesh with it; sign-out
//! revokes it there.

use std::time::{Duration, Instant, UNIX_EPOCH};

use axum::{
    Form,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use keymesh_proto::v1 as pb;
use serde::Deserialize;
use tokio::sync::OnceCell;
use zeroize::Zeroizing;

use crate::{
    app::{Shared, Who},
    config::{GithubSettings, OidcSettings, secure_or_loopback},
    error::PageError,
    oidc::{self, Pending, StartError, Via},
    session::SignedIn,
    views,
};

/// The provider's endpoints, found by discovery on first use (the provider need not be up when the console
/// starts), and the HTTP client that reaches them.
pub struct Provider {
    settings: OidcSettings,
    redirect_uri: String,
    http: reqwest::Client,
    endpoints: OnceCell<Endpoints>,
}

struct Endpoints {
    client: oidc::Client,
    token_endpoint: url::Url,
}

/// What a sign-in failed with, as shown to the person (never a token or a secret).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SignInError(String);

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
}

impl Provider {
    /// The provider of `settings`; `redirect_uri` is the console's callback.
    pub fn new(settings: OidcSettings, redirect_uri: String) -> Result<Self, SignInError> {
        let http = http_client(settings.ca_file.as_deref())?;
        Ok(Self { settings, redirect_uri, http, endpoints: OnceCell::new() })
    }

    /// The sign-in button's label.
    pub fn display_name(&self) -> &str {
        &self.settings.display_name
    }

    async fn endpoints(&self) -> Result<&Endpoints, SignInError> {
        self.endpoints.get_or_try_init(|| self.discover()).await
    }

    async fn discover(&self) -> Result<Endpoints, SignInError> {
        let issuer = self.settings.issuer.as_str().trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let unreachable = |e: reqwest::Error| SignInError(format!("the identity provider is unreachable: {e}"));
        let response = self.http.get(&url).send().await.map_err(unreachable)?;
        if !response.status().is_success() {
            return Err(SignInError(format!("{url} answered {}", response.status())));
        }
        let body = read_capped(response).await?;
        let found: Discovery = serde_json::from_slice(&body)
            .map_err(|e| SignInError(format!("{url} is not a discovery document: {e}")))?;
        // OIDC Discovery §4.3: the document must be the configured issuer's own.
        if found.issuer.trim_end_matches('/') != issuer {
            return Err(SignInError(format!("{url} names the issuer {:?}, not {issuer:?}", found.issuer)));
        }
        let endpoint = |name: &str, text: &str| -> Result<url::Url, SignInError> {
            let parsed = url::Url::parse(text).map_err(|e| SignInError(format!("{name} {text:?}: {e}")))?;
            if secure_or_loopback(&parsed) {
                Ok(parsed)
            } else {
                Err(SignInError(format!("{name} {text:?} must be https://")))
            }
        };
        Ok(Endpoints {
            client: oidc::Client {
                authorization_endpoint: endpoint("authorization_endpoint", &found.authorization_endpoint)?,
                client_id: self.settings.client_id.clone(),
                redirect_uri: self.redirect_uri.clone(),
                scopes: self.settings.scopes.clone(),
            },
            token_endpoint: endpoint("token_endpoint", &found.token_endpoint)?,
        })
    }

    /// Redeems the authorization `code` (with the sign-in's PKCE verifier) for the provider's ID token.
    async fn redeem(&self, code: &str, pending: &Pending) -> Result<Zeroizing<String>, SignInError> {
        let endpoints = self.endpoints().await?;
        let form = oidc::token_request_form(&endpoints.client, code, pending);
        let mut request = self
            .http
            .post(endpoints.token_endpoint.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(form.as_str().to_owned());
        if let Some(secret) = &self.settings.client_secret {
            // client_secret_basic (RFC 6749 §2.3.1): both parts form-encoded before base64.
            let encode = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
            let pair = Zeroizing::new(format!("{}:{}", encode(&self.settings.client_id), encode(secret)));
            let value =
                Zeroizing::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair.as_bytes())));
            request = request.header(header::AUTHORIZATION, value.as_str());
        }
        let response = request
            .send()
            .await
            .map_err(|e| SignInError(format!("the identity provider's token endpoint is unreachable: {e}")))?;
        let status = response.status();
        let body = read_capped(response).await?;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if !status.is_success() {
            // RFC 6749 §5.2: `error` and `error_description` say why; nothing else of the body is shown.
            let error = json.get("error").and_then(|v| v.as_str()).unwrap_or("unknown error");
            let description = json.get("error_description").and_then(|v| v.as_str()).unwrap_or("");
            return Err(SignInError(format!(
                "the identity provider refused the code ({status}): {error} {description}"
            )));
        }
        json.get("id_token")
            .and_then(|v| v.as_str())
            .map(|t| Zeroizing::new(t.to_owned()))
            .ok_or_else(|| SignInError("the identity provider returned no id_token (is `openid` allowed?)".into()))
    }
}

/// The HTTP client that reaches an identity provider: short timeouts, no redirects followed, and `ca_file`
/// trusted beside the system roots.
fn http_client(ca_file: Option<&std::path::Path>) -> Result<reqwest::Client, SignInError> {
    let mut builder =
        reqwest::Client::builder().timeout(Duration::from_secs(10)).redirect(reqwest::redirect::Policy::none());
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|e| SignInError(format!("{}: {e}", path.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| SignInError(e.to_string()))? {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| SignInError(e.to_string()))
}

/// Largest answer read from a provider (a discovery document, a token response).
const MAX_PROVIDER_ANSWER: usize = 256 * 1024;

/// A provider's answer, read chunk by chunk and refused past [`MAX_PROVIDER_ANSWER`]: a misbehaving provider
/// cannot make the console buffer an unbounded body.
async fn read_capped(mut response: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, SignInError> {
    let mut body = Zeroizing::new(Vec::new());
    while let Some(chunk) = response.chunk().await.map_err(|e| SignInError(format!("reading the answer: {e}")))? {
        if body.len() + chunk.len() > MAX_PROVIDER_ANSWER {
            return Err(SignInError(format!("the provider's answer is over {MAX_PROVIDER_ANSWER} bytes")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// GitHub's OAuth 2.0 sign-in (an OAuth app; GitHub has no OpenID Connect for people). The code is redeemed
/// with the PKCE verifier and the app's secret; the access token GitHub returns is exchanged at token-service,
/// which asks GitHub whether it is a token of this very app, and then dropped: the console keeps only the
/// keymesh token.
pub struct GithubProvider {
    settings: GithubSettings,
    redirect_uri: String,
    http: reqwest::Client,
}

impl GithubProvider {
    /// The provider of `settings`; `redirect_uri` is the console's GitHub callback.
    pub fn new(settings: GithubSettings, redirect_uri: String) -> Result<Self, SignInError> {
        let http = http_client(settings.ca_file.as_deref())?;
        Ok(Self { settings, redirect_uri, http })
    }

    /// The URL the browser is sent to.
    fn authorization_url(&self, pending: &Pending) -> Result<url::Url, SignInError> {
        let mut url = self.settings.web_url.join("login/oauth/authorize").map_err(|e| SignInError(e.to_string()))?;
        url.query_pairs_mut()
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", &self.redirect_uri)
            .append_pair("scope", &self.settings.scopes.join(" "))
            .append_pair("state", &pending.state)
            .append_pair("code_challenge", &oidc::code_challenge(&pending.verifier))
            .append_pair("code_challenge_method", "S256")
            .append_pair("allow_signup", "false");
        Ok(url)
    }

    /// Redeems `code` for GitHub's access token.
    async fn redeem(&self, code: &str, pending: &Pending) -> Result<Zeroizing<String>, SignInError> {
        let url = self.settings.web_url.join("login/oauth/access_token").map_err(|e| SignInError(e.to_string()))?;
        let form = Zeroizing::new(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("client_id", &self.settings.client_id)
                .append_pair("client_secret", &self.settings.client_secret)
                .append_pair("code", code)
                .append_pair("redirect_uri", &self.redirect_uri)
                .append_pair("code_verifier", &pending.verifier)
                .finish(),
        );
        let response = self
            .http
            .post(url)
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(form.as_str().to_owned())
            .send()
            .await
            .map_err(|e| SignInError(format!("GitHub is unreachable: {e}")))?;
        let body = read_capped(response).await?;
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        // GitHub answers a refused code with 200 and an `error` field.
        if let Some(error) = json.get("error").and_then(|v| v.as_str()) {
            let description = json.get("error_description").and_then(|v| v.as_str()).unwrap_or("");
            return Err(SignInError(format!("GitHub refused the code: {error} {description}")));
        }
        json.get("access_token")
            .and_then(|v| v.as_str())
            .map(|t| Zeroizing::new(t.to_owned()))
            .ok_or_else(|| SignInError("GitHub returned no access token".into()))
    }
}

/// The claims of a keymesh access token the console needs: who, which tenant, which roles, until when. Read
/// without verifying: the token came straight from token-service over mTLS, and every service it is sent to
/// verifies it.
#[derive(Deserialize)]
struct AccessView {
    sub: String,
    tenant: String,
    #[serde(default)]
    roles: Vec<String>,
    exp: u64,
    #[serde(default)]
    ext: Option<ExternalView>,
}

#[derive(Deserialize)]
struct ExternalView {
    iss: String,
    sub: String,
}

fn jwt_payload<T: serde::de::DeserializeOwned>(token: &str) -> Option<T> {
    let payload = token.split('.').nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).ok()?).ok()
}

/// The session of an IssueToken answer; `person` is who signed in, for the page header.
fn signed_in(issued: pb::IssueTokenResponse, person: Option<String>) -> Result<SignedIn, PageError> {
    let view: AccessView = jwt_payload(&issued.access_token)
        .ok_or_else(|| PageError::Internal("token-service returned an access token the console cannot read".into()))?;
    let subject = match (&view.ext, person) {
        (Some(ext), Some(person)) => format!("{person} ({}:{})", ext.iss, ext.sub),
        (Some(ext), None) => format!("{}:{}", ext.iss, ext.sub),
        (None, _) => view.sub.clone(),
    };
    Ok(SignedIn {
        subject,
        tenant: view.tenant,
        roles: view.roles,
        application: view.sub,
        access_token: Zeroizing::new(issued.access_token),
        refresh_token: Some(Zeroizing::new(issued.refresh_token)).filter(|t| !t.is_empty()),
        expires_at: UNIX_EPOCH + Duration::from_secs(view.exp),
    })
}

/// Starts the session of `user`, replacing the one the browser came with, and sends the browser to `return_to`.
fn start_session(
    console: &Shared,
    headers: &HeaderMap,
    user: SignedIn,
    return_to: &str,
) -> Result<Response, PageError> {
    let previous = console.sessions.id_from(headers);
    tracing::info!(person = ?user.subject, tenant = ?user.tenant, "signed in to the console");
    let id = console
        .sessions
        .start(user, previous.as_deref(), Instant::now())
        .map_err(|e| PageError::Internal(e.to_string()))?;
    let mut response = Redirect::to(&oidc::local_path(return_to)).into_response();
    let cookie = console.sessions.cookie(&id);
    response.headers_mut().insert(
        header::SET_COOKIE,
        cookie.parse().map_err(|_| PageError::Internal("the session cookie is not a header value".into()))?,
    );
    Ok(response)
}

/// `GET /login`'s query.
#[derive(Deserialize, Default)]
pub struct LoginQuery {
    #[serde(default)]
    return_to: Option<String>,
    #[serde(default)]
    expired: Option<String>,
    #[serde(default)]
    signed_out: Option<String>,
}

/// `GET /login`: the sign-in page.
pub async fn login_page(State(console): State<Shared>, Query(query): Query<LoginQuery>) -> Response {
    let return_to = oidc::local_path(query.return_to.as_deref().unwrap_or("/"));
    let notice = if query.signed_out.is_some() {
        Some("You have signed out.")
    } else if query.expired.is_some() {
        Some("Your session has ended; sign in again.")
    } else {
        None
    };
    login_view(&console, return_to, notice.map(str::to_owned), None)
}

/// The sign-in page with the ways to sign in this console offers.
fn login_view(console: &Shared, return_to: String, notice: Option<String>, error: Option<String>) -> Response {
    views::login(views::LoginPage {
        layout: views::Layout::anonymous(),
        provider: console.provider.as_ref().map(|p| p.display_name().to_owned()),
        github: console.github.is_some(),
        dev_login: console.config.dev_login,
        return_to,
        notice,
        error,
    })
}

fn login_error(console: &Shared, status: StatusCode, message: String) -> Response {
    tracing::warn!(reason = ?message, "console sign-in failed");
    (status, login_view(console, "/".into(), None, Some(message))).into_response()
}

/// Starts a sign-in `via` a provider (its state, nonce, PKCE verifier and browser binding) that returns to the
/// query's `return_to`, and the `Set-Cookie` value of the binding.
fn start_pending(console: &Shared, query: &LoginQuery, via: Via) -> Result<(Pending, String), Box<Response>> {
    match console.pending.start(via, query.return_to.as_deref().unwrap_or("/"), Instant::now()) {
        Ok((pending, binding)) => Ok((pending, console.sessions.signin_cookie(&binding))),
        Err(StartError::Busy) => {
            Err(Box::new(login_error(console, StatusCode::SERVICE_UNAVAILABLE, StartError::Busy.to_string())))
        }
        Err(e) => Err(Box::new(PageError::Internal(e.to_string()).into_response())),
    }
}

/// A redirect to `url` that also sets `cookie`.
fn redirect_with_cookie(url: &str, cookie: &str) -> Response {
    let mut response = Redirect::to(url).into_response();
    if let Ok(value) = cookie.parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// An OAuth error code as a provider sends it (RFC 6749 §4.1.2.1: a short token), or a generic word: the query
/// string is anyone's to write, so nothing else of it reaches the page.
fn error_code(code: &str) -> &str {
    let plain = !code.is_empty() && code.len() <= 64 && code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_');
    if plain { code } else { "an error" }
}

/// The sign-in a provider's callback finishes, and its code; else the sign-in page saying why. It must come back
/// to the browser that started it (its binding cookie), for the provider that started it; the state is used up
/// whatever follows: a callback is good once.
fn finish_pending(
    console: &Shared,
    headers: &HeaderMap,
    query: CallbackQuery,
    via: Via,
) -> Result<(Pending, String), Box<Response>> {
    let provider = match via {
        Via::Oidc => "The identity provider",
        Via::Github => "GitHub",
    };
    let refuse = |status, message| Box::new(login_error(console, status, message));
    let binding = console.sessions.signin_binding_from(headers);
    let pending =
        query.state.as_deref().and_then(|state| console.pending.finish(state, via, binding.as_deref(), Instant::now()));
    let Some(pending) = pending else {
        let message = "This sign-in is unknown, expired, or was started in another browser; start again.";
        return Err(refuse(StatusCode::BAD_REQUEST, message.into()));
    };
    if let Some(error) = query.error {
        tracing::warn!(?error, description = ?query.error_description, "the provider refused a sign-in");
        return Err(refuse(
            StatusCode::UNAUTHORIZED,
            format!("{provider} refused the sign-in ({}).", error_code(&error)),
        ));
    }
    match query.code {
        Some(code) => Ok((pending, code)),
        None => Err(refuse(StatusCode::BAD_REQUEST, format!("{provider} sent no code."))),
    }
}

/// A callback's response, with the sign-in's binding cookie removed (the sign-in is over either way).
fn ending_sign_in(console: &Shared, mut response: Response) -> Response {
    if let Ok(value) = console.sessions.signin_removal_cookie().parse() {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

/// `GET /login/oidc`: starts an OIDC sign-in and sends the browser to the provider.
pub async fn start_oidc(State(console): State<Shared>, Query(query): Query<LoginQuery>) -> Response {
    let Some(provider) = &console.provider else {
        return login_error(&console, StatusCode::NOT_FOUND, "No identity provider is configured.".into());
    };
    let endpoints = match provider.endpoints().await {
        Ok(e) => e,
        Err(e) => return login_error(&console, StatusCode::BAD_GATEWAY, e.to_string()),
    };
    match start_pending(&console, &query, Via::Oidc) {
        Ok((pending, cookie)) => redirect_with_cookie(endpoints.client.authorization_url(&pending).as_str(), &cookie),
        Err(response) => *response,
    }
}

/// `GET /oidc/callback`'s query.
#[derive(Deserialize)]
pub struct CallbackQuery {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    error_description: Option<String>,
}

/// `GET /oidc/callback`: the provider sends the browser back with a code (or an error).
pub async fn oidc_callback(
    State(console): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let response = finish_oidc(&console, &headers, query).await;
    ending_sign_in(&console, response)
}

async fn finish_oidc(console: &Shared, headers: &HeaderMap, query: CallbackQuery) -> Response {
    let Some(provider) = &console.provider else {
        return login_error(console, StatusCode::NOT_FOUND, "No identity provider is configured.".into());
    };
    let (pending, code) = match finish_pending(console, headers, query, Via::Oidc) {
        Ok(finished) => finished,
        Err(response) => return *response,
    };
    let id_token = match provider.redeem(&code, &pending).await {
        Ok(t) => t,
        Err(e) => return login_error(console, StatusCode::BAD_GATEWAY, e.to_string()),
    };
    if !oidc::nonce_matches(&id_token, &pending) {
        return login_error(console, StatusCode::UNAUTHORIZED, "The ID token was not minted for this sign-in.".into());
    }
    let person = jwt_payload::<serde_json::Value>(&id_token).and_then(|claims| {
        ["email", "preferred_username", "name"]
            .iter()
            .find_map(|c| claims.get(*c).and_then(|v| v.as_str()).map(str::to_owned))
    });
    exchange_and_start(console, headers, &id_token, ID_TOKEN_TYPE, person, &pending.return_to).await
}

const ID_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:id_token";
const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";

/// Exchanges the provider's token at token-service (which verifies it and maps the person to an application)
/// and signs the person in with the keymesh token it issues.
async fn exchange_and_start(
    console: &Shared,
    headers: &HeaderMap,
    subject_token: &str,
    subject_token_type: &str,
    person: Option<String>,
    return_to: &str,
) -> Response {
    let request = pb::IssueTokenRequest {
        grant_type: pb::GrantType::TokenExchange as i32,
        subject_token: subject_token.to_owned(),
        subject_token_type: subject_token_type.into(),
        ..Default::default()
    };
    let issued = match console.mesh.token_service().issue_token(request).await {
        Ok(r) => r.into_inner(),
        // A refusal's reason is written for the person (expired, no rule maps this subject); any other failure's
        // details are the operators', in the log.
        Err(status) if matches!(status.code(), tonic::Code::Unauthenticated | tonic::Code::PermissionDenied) => {
            let message = format!("keymesh did not accept this identity: {}", status.message());
            return login_error(console, StatusCode::FORBIDDEN, message);
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), reason = ?status.message(), "a token exchange failed");
            let message = "keymesh could not sign you in; try again, or ask an administrator.".to_owned();
            return login_error(console, StatusCode::BAD_GATEWAY, message);
        }
    };
    match signed_in(issued, person).and_then(|user| start_session(console, headers, user, return_to)) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// `GET /login/github`: starts a GitHub sign-in.
pub async fn start_github(State(console): State<Shared>, Query(query): Query<LoginQuery>) -> Response {
    let Some(github) = &console.github else {
        return login_error(&console, StatusCode::NOT_FOUND, "GitHub sign-in is not configured.".into());
    };
    let (pending, cookie) = match start_pending(&console, &query, Via::Github) {
        Ok(started) => started,
        Err(response) => return *response,
    };
    match github.authorization_url(&pending) {
        Ok(url) => redirect_with_cookie(url.as_str(), &cookie),
        Err(e) => login_error(&console, StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// `GET /github/callback`: GitHub sends the browser back with a code.
pub async fn github_callback(
    State(console): State<Shared>,
    headers: HeaderMap,
    Query(query): Query<CallbackQuery>,
) -> Response {
    let response = finish_github(&console, &headers, query).await;
    ending_sign_in(&console, response)
}

async fn finish_github(console: &Shared, headers: &HeaderMap, query: CallbackQuery) -> Response {
    let Some(github) = &console.github else {
        return login_error(console, StatusCode::NOT_FOUND, "GitHub sign-in is not configured.".into());
    };
    let (pending, code) = match finish_pending(console, headers, query, Via::Github) {
        Ok(finished) => finished,
        Err(response) => return *response,
    };
    let token = match github.redeem(&code, &pending).await {
        Ok(t) => t,
        Err(e) => return login_error(console, StatusCode::BAD_GATEWAY, e.to_string()),
    };
    exchange_and_start(console, headers, &token, ACCESS_TOKEN_TYPE, None, &pending.return_to).await
}

/// The development login's form.
#[derive(Deserialize)]
pub struct DevLoginForm {
    username: String,
    password: Zeroizing<String>,
    #[serde(default)]
    return_to: Option<String>,
}

/// `POST /login/dev`: the development login (loopback only; see the configuration): an application's client id
/// and secret, checked by token-service's client-credentials grant.
pub async fn dev_login(State(console): State<Shared>, headers: HeaderMap, Form(form): Form<DevLoginForm>) -> Response {
    if !console.config.dev_login {
        return login_error(&console, StatusCode::NOT_FOUND, "The development login is off.".into());
    }
    let request = pb::IssueTokenRequest {
        grant_type: pb::GrantType::ClientCredentials as i32,
        client_id: form.username.trim().to_owned(),
        client_secret: form.password.as_str().to_owned(),
        ..Default::default()
    };
    let issued = match console.mesh.token_service().issue_token(request).await {
        Ok(r) => r.into_inner(),
        Err(status)
            if status.code() == tonic::Code::Unauthenticated || status.code() == tonic::Code::InvalidArgument =>
        {
            return login_error(&console, StatusCode::UNAUTHORIZED, "Wrong username or password.".into());
        }
        Err(status) => return PageError::Mesh(status).into_response(),
    };
    let return_to = form.return_to.unwrap_or_else(|| "/".into());
    match signed_in(issued, None).and_then(|user| start_session(&console, &headers, user, &return_to)) {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

/// `POST /logout`: ends the session here and revokes its keymesh tokens at token-service, so neither the
/// cookie nor a token copied out of memory works afterwards.
pub async fn logout(State(console): State<Shared>, axum::Extension(who): axum::Extension<Who>) -> Response {
    if let Some(user) = console.sessions.end(&who.id) {
        let mut tokens = vec![user.access_token.clone()];
        tokens.extend(user.refresh_token.clone());
        for token in tokens {
            let request = pb::RevokeTokenRequest { token: token.as_str().to_owned() };
            if let Err(status) = console.mesh.token_service().revoke_token(request).await {
                // The session is gone either way; the token dies at its expiry at the latest.
                tracing::warn!(code = ?status.code(), "revoking a signed-out person's token failed");
            }
        }
        tracing::info!(person = ?user.subject, "signed out of the console");
    }
    let mut response = Redirect::to("/login?signed_out=1").into_response();
    if let Ok(value) = console.sessions.removal_cookie().parse() {
        response.headers_mut().insert(header::SET_COOKIE, value);
    }
    response
}

/// Seconds since the Unix epoch, for expiry checks in tests.
#[cfg(test)]
fn now_seconds() -> u64 {
    std::time::SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token_with(claims: serde_json::Value) -> String {
        format!("eyJhbGciOiJFZERTQSJ9.{}.c2ln", URL_SAFE_NO_PAD.encode(claims.to_string()))
    }

    #[test]
    fn a_session_takes_tenant_roles_and_expiry_from_the_issued_token() {
        let exp = now_seconds() + 600;
        let token = token_with(serde_json::json!({
            "sub": "app_1", "tenant": "t_1", "roles": ["admin", "auditor"], "exp": exp,
            "ext": {"iss": "corp", "sub": "alice-123"}
        }));
        let issued = pb::IssueTokenResponse { access_token: token, ..Default::default() };
        let user = signed_in(issued, Some("alice@example.com".into())).unwrap();
        assert_eq!(user.subject, "alice@example.com (corp:alice-123)");
        assert_eq!((user.tenant.as_str(), user.application.as_str()), ("t_1", "app_1"));
        assert_eq!(user.roles, ["admin", "auditor"]);
        assert!(user.refresh_token.is_none());
        assert!(!user.expired(std::time::SystemTime::now()));
        assert!(user.expired(UNIX_EPOCH + Duration::from_secs(exp)));
    }

    #[test]
    fn an_unreadable_token_is_an_internal_error_not_a_session() {
        let issued = pb::IssueTokenResponse { access_token: "not-a-jwt".into(), ..Default::default() };
        assert!(matches!(signed_in(issued, None), Err(PageError::Internal(_))));
    }
}

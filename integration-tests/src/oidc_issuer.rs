//! A test OIDC issuer: the two documents a Kubernetes API server (or any OIDC provider) publishes for token
//! verification, `/.well-known/openid-configuration` and the JWKS it names, served over HTTP from real RSA
//! keys, and tokens signed with them as a cluster signs projected service-account tokens.
//!
//! It is also an identity provider a browser signs in at (the authorization code flow the console uses):
//! `/authorize` sends the browser straight back with a one-time code for the person chosen beforehand (by
//! [`TestIssuer::sign_in_as`] or `POST /test/sign-in-as {"sub": …}`), and `/token` redeems the code only with
//! the PKCE verifier whose S256 challenge `/authorize` was given, the registered client's secret and the same
//! redirect URI, answering with an ID token that carries the sign-in's nonce. Refusals are counted.
//!
//! And it plays GitHub for a GitHub OAuth app: `/login/oauth/authorize` and `/login/oauth/access_token` (the same
//! PKCE and secret checks, answering with an opaque access token), and GitHub's token check
//! `POST /applications/{client_id}/token` (HTTP Basic as the app), which knows a token only for the app it was
//! issued to.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, atomic::AtomicUsize, atomic::Ordering},
};

use axum::{Json, Router, extract::State, routing::get};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use serde_json::{Value, json};

struct Key {
    kid: String,
    private_der: Vec<u8>,
    n: String,
    e: String,
}

fn new_key(n: usize) -> Key {
    let rsa = openssl::rsa::Rsa::generate(2048).unwrap();
    Key {
        kid: format!("test-key-{n}"),
        private_der: rsa.private_key_to_der().unwrap(),
        n: URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
        e: URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
    }
}

struct Shared {
    url: String,
    keys: Mutex<Vec<Key>>,
    jwks_fetches: AtomicUsize,
    client: Mutex<Option<RegisteredClient>>,
    next_person: Mutex<String>,
    codes: Mutex<std::collections::HashMap<String, CodeGrant>>,
    refused_redemptions: AtomicUsize,
    redeemed: AtomicUsize,
    github_client: Mutex<Option<RegisteredClient>>,
    /// GitHub access tokens issued: token → (the app's client id, the user's login).
    github_tokens: Mutex<std::collections::HashMap<String, (String, String)>>,
}

/// The one client the provider knows (a console).
#[derive(Clone)]
struct RegisteredClient {
    id: String,
    secret: String,
    redirect_uri: String,
}

/// What a code stands for until it is redeemed.
struct CodeGrant {
    sub: String,
    nonce: String,
    challenge: String,
    redirect_uri: String,
}

/// The running issuer.
pub struct TestIssuer {
    /// `http://127.0.0.1:port`: its `iss`.
    pub url: String,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl TestIssuer {
    /// Starts on a free loopback port with one signing key.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared {
            url: url.clone(),
            keys: Mutex::new(vec![new_key(1)]),
            jwks_fetches: AtomicUsize::new(0),
            client: Mutex::new(None),
            next_person: Mutex::new("alice".into()),
            codes: Mutex::new(Default::default()),
            refused_redemptions: AtomicUsize::new(0),
            redeemed: AtomicUsize::new(0),
            github_client: Mutex::new(None),
            github_tokens: Mutex::new(Default::default()),
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/openid/v1/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", axum::routing::post(token))
            .route("/test/sign-in-as", axum::routing::post(sign_in_as_request))
            .route("/login/oauth/authorize", get(github_authorize))
            .route("/login/oauth/access_token", axum::routing::post(github_access_token))
            .route("/applications/{client_id}/token", axum::routing::post(github_check_token))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, shared, server }
    }

    /// Signs `claims` (RS256) with the newest key.
    pub fn sign(&self, claims: &Value) -> String {
        sign_claims(&self.shared, claims)
    }

    /// A projected service-account token as a cluster mints it: `sub`
    /// `system:serviceaccount:<namespace>:<name>`, the given audience, valid for `lifetime` seconds from now.
    pub fn service_account_token(&self, namespace: &str, name: &str, audience: &str, lifetime: u64) -> String {
        let now = keymesh_mesh::auth::unix_now();
        self.sign(&json!({
            "iss": self.url,
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": [audience],
            "iat": now, "nbf": now, "exp": now + lifetime,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": {"name": name, "uid": uuid::Uuid::new_v4().to_string()},
            },
        }))
    }

    /// Adds a key and signs with it from now on (the old one stays published, as during a rotation).
    pub fn rotate(&self) {
        let mut keys = self.shared.keys.lock().unwrap();
        let next = keys.len() + 1;
        keys.push(new_key(next));
    }

    /// Registers the client browsers sign in to (its id, secret and callback URL).
    pub fn register_client(&self, id: &str, secret: &str, redirect_uri: &str) {
        *self.shared.client.lock().unwrap() =
            Some(RegisteredClient { id: id.into(), secret: secret.into(), redirect_uri: redirect_uri.into() });
    }

    /// Registers the GitHub OAuth app browsers sign in to.
    pub fn register_github_app(&self, id: &str, secret: &str, redirect_uri: &str) {
        *self.shared.github_client.lock().unwrap() =
            Some(RegisteredClient { id: id.into(), secret: secret.into(), redirect_uri: redirect_uri.into() });
    }

    /// A GitHub access token for `login`, issued to the OAuth app `client_id` (as any app the user authorized
    /// could hold one).
    pub fn github_token_for(&self, client_id: &str, login: &str) -> String {
        let token = format!("gho_{}", uuid::Uuid::new_v4().simple());
        self.shared.github_tokens.lock().unwrap().insert(token.clone(), (client_id.into(), login.into()));
        token
    }

    /// The person the next `/authorize` signs in.
    pub fn sign_in_as(&self, sub: &str) {
        *self.shared.next_person.lock().unwrap() = sub.into();
    }

    /// Codes redeemed, and redemptions refused (a wrong verifier, client, secret or redirect URI; a reused code).
    pub fn redemptions(&self) -> (usize, usize) {
        (self.shared.redeemed.load(Ordering::Relaxed), self.shared.refused_redemptions.load(Ordering::Relaxed))
    }

    /// How often the JWKS was fetched.
    pub fn jwks_fetches(&self) -> usize {
        self.shared.jwks_fetches.load(Ordering::Relaxed)
    }
}

impl Drop for TestIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn discovery(State(shared): State<Arc<Shared>>) -> Json<Value> {
    Json(json!({
        "issuer": shared.url,
        "jwks_uri": format!("{}/openid/v1/jwks", shared.url),
        "authorization_endpoint": format!("{}/authorize", shared.url),
        "token_endpoint": format!("{}/token", shared.url),
        "code_challenge_methods_supported": ["S256"],
        "response_types_supported": ["code", "id_token"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
    }))
}

async fn jwks(State(shared): State<Arc<Shared>>) -> Json<Value> {
    shared.jwks_fetches.fetch_add(1, Ordering::Relaxed);
    let keys = shared.keys.lock().unwrap();
    let keys: Vec<Value> = keys
        .iter()
        .map(|k| json!({"kty": "RSA", "alg": "RS256", "use": "sig", "kid": k.kid, "n": k.n, "e": k.e}))
        .collect();
    Json(json!({ "keys": keys }))
}

fn sign_claims(shared: &Shared, claims: &Value) -> String {
    let keys = shared.keys.lock().unwrap();
    let key = keys.last().unwrap();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_rsa_der(&key.private_der)).unwrap()
}

fn bad_request(text: &str) -> axum::response::Response {
    use axum::response::IntoResponse;
    (axum::http::StatusCode::BAD_REQUEST, text.to_owned()).into_response()
}

async fn authorize(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    let Some(client) = shared.client.lock().unwrap().clone() else { return bad_request("no client registered") };
    let get = |k: &str| query.get(k).cloned().unwrap_or_default();
    if get("response_type") != "code" || get("client_id") != client.id || get("redirect_uri") != client.redirect_uri {
        return bad_request("unknown client, redirect_uri or response_type");
    }
    if get("code_challenge_method") != "S256" || get("code_challenge").len() != 43 {
        return bad_request("PKCE with S256 is required");
    }
    if !get("scope").split(' ').any(|s| s == "openid") || get("state").is_empty() || get("nonce").is_empty() {
        return bad_request("scope openid, state and nonce are required");
    }
    redirect_with_code(&shared, &client, get("code_challenge"), get("nonce"), &get("state"))
}

/// Gives the person chosen a one-time code and sends the browser back to the client with it and `state`.
fn redirect_with_code(
    shared: &Shared,
    client: &RegisteredClient,
    challenge: String,
    nonce: String,
    state: &str,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let code = uuid::Uuid::new_v4().simple().to_string();
    let sub = shared.next_person.lock().unwrap().clone();
    let grant = CodeGrant { sub, nonce, challenge, redirect_uri: client.redirect_uri.clone() };
    shared.codes.lock().unwrap().insert(code.clone(), grant);
    let location = format!("{}?code={code}&state={}", client.redirect_uri, url_encode(state));
    axum::response::Redirect::to(&location).into_response()
}

/// The grant `code` stood for, used up whatever follows, if redeemed with the same redirect URI and the PKCE
/// verifier of its S256 challenge.
fn redeem_code(shared: &Shared, code: &str, redirect_uri: &str, verifier: &str) -> Result<CodeGrant, &'static str> {
    let grant = shared.codes.lock().unwrap().remove(code).ok_or("unknown or used code")?;
    if redirect_uri != grant.redirect_uri {
        return Err("redirect_uri differs from the authorization request's");
    }
    let challenge = URL_SAFE_NO_PAD.encode(openssl::sha::sha256(verifier.as_bytes()));
    if verifier.len() < 43 || challenge != grant.challenge {
        return Err("PKCE verification failed");
    }
    shared.redeemed.fetch_add(1, Ordering::Relaxed);
    Ok(grant)
}

/// `value` percent-encoded for a URL query or a form (RFC 3986 unreserved characters as they are).
pub fn url_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn token(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let refuse = |why: &str| {
        shared.refused_redemptions.fetch_add(1, Ordering::Relaxed);
        (axum::http::StatusCode::BAD_REQUEST, Json(json!({"error": "invalid_grant", "error_description": why})))
            .into_response()
    };
    let Some(client) = shared.client.lock().unwrap().clone() else { return refuse("no client registered") };
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", client.id, client.secret))
    );
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(basic.as_str()) {
        return refuse("client authentication failed");
    }
    if get("grant_type") != "authorization_code" || get("client_id") != client.id {
        return refuse("wrong grant_type or client_id");
    }
    let grant = match redeem_code(&shared, &get("code"), &get("redirect_uri"), &get("code_verifier")) {
        Ok(grant) => grant,
        Err(why) => return refuse(why),
    };
    let now = keymesh_mesh::auth::unix_now();
    let claims = json!({
        "iss": shared.url, "sub": grant.sub, "aud": client.id, "iat": now, "nbf": now, "exp": now + 600,
        "nonce": grant.nonce, "email": format!("{}@example.com", grant.sub), "email_verified": true,
    });
    let id_token = sign_claims(&shared, &claims);
    Json(json!({"access_token": uuid::Uuid::new_v4().to_string(), "token_type": "Bearer", "expires_in": 600, "id_token": id_token}))
        .into_response()
}

async fn sign_in_as_request(State(shared): State<Arc<Shared>>, Json(body): Json<Value>) -> axum::http::StatusCode {
    match body.get("sub").and_then(Value::as_str) {
        Some(sub) if !sub.is_empty() => {
            *shared.next_person.lock().unwrap() = sub.to_owned();
            axum::http::StatusCode::NO_CONTENT
        }
        _ => axum::http::StatusCode::BAD_REQUEST,
    }
}

/// The numeric id the fake GitHub gives `login` (stable: rules name people by it).
pub fn github_id(login: &str) -> u64 {
    login.bytes().fold(7_000_000, |id, b| id * 31 % 1_000_000_007 + u64::from(b))
}

async fn github_authorize(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(query): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> axum::response::Response {
    let Some(client) = shared.github_client.lock().unwrap().clone() else { return bad_request("no app registered") };
    let get = |k: &str| query.get(k).cloned().unwrap_or_default();
    if get("client_id") != client.id || get("redirect_uri") != client.redirect_uri {
        return bad_request("unknown client_id or redirect_uri");
    }
    if get("code_challenge_method") != "S256" || get("code_challenge").len() != 43 || get("state").is_empty() {
        return bad_request("PKCE with S256 and a state are required");
    }
    redirect_with_code(&shared, &client, get("code_challenge"), String::new(), &get("state"))
}

async fn github_access_token(
    State(shared): State<Arc<Shared>>,
    axum::Form(form): axum::Form<std::collections::HashMap<String, String>>,
) -> Json<Value> {
    // GitHub answers errors with 200 and an `error` field.
    let refuse = |why: &str| {
        shared.refused_redemptions.fetch_add(1, Ordering::Relaxed);
        Json(json!({"error": "bad_verification_code", "error_description": why}))
    };
    let Some(client) = shared.github_client.lock().unwrap().clone() else { return refuse("no app registered") };
    let get = |k: &str| form.get(k).cloned().unwrap_or_default();
    if get("client_id") != client.id || get("client_secret") != client.secret {
        return refuse("client authentication failed");
    }
    let grant = match redeem_code(&shared, &get("code"), &get("redirect_uri"), &get("code_verifier")) {
        Ok(grant) => grant,
        Err(why) => return refuse(why),
    };
    let token = format!("gho_{}", uuid::Uuid::new_v4().simple());
    shared.github_tokens.lock().unwrap().insert(token.clone(), (client.id.clone(), grant.sub));
    Json(json!({"access_token": token, "token_type": "bearer", "scope": ""}))
}

async fn github_check_token(
    State(shared): State<Arc<Shared>>,
    axum::extract::Path(client_id): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    Json(body): Json<Value>,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let not_found = || (axum::http::StatusCode::NOT_FOUND, Json(json!({"message": "Not Found"}))).into_response();
    let Some(client) = shared.github_client.lock().unwrap().clone() else { return not_found() };
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{}:{}", client.id, client.secret))
    );
    if client_id != client.id || headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(basic.as_str()) {
        return (axum::http::StatusCode::UNAUTHORIZED, Json(json!({"message": "Bad credentials"}))).into_response();
    }
    let token = body.get("access_token").and_then(Value::as_str).unwrap_or_default();
    let Some((app, login)) = shared.github_tokens.lock().unwrap().get(token).cloned() else { return not_found() };
    if app != client_id {
        return not_found();
    }
    Json(json!({
        "id": 1, "token": token, "expires_at": null, "scopes": [],
        "app": {"client_id": app, "name": "keymesh console", "url": "https://keymesh.example"},
        "user": {"login": login, "id": github_id(&login), "email": format!("{login}@users.example")},
    }))
    .into_response()
}

//! A test OIDC issuer: the two documents a Kubernetes API server (or any OIDC provider) publishes for token
//! verification, `/.well-known/openid-configuration` and the JWKS it names, served over HTTP from real RSA
//! keys, and tokens signed with them as a cluster signs projected service-account tokens.

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
        });
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/openid/v1/jwks", get(jwks))
            .with_state(shared.clone());
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { url, shared, server }
    }

    /// Signs `claims` (RS256) with the newest key.
    pub fn sign(&self, claims: &Value) -> String {
        let keys = self.shared.keys.lock().unwrap();
        let key = keys.last().unwrap();
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = Some(key.kid.clone());
        jsonwebtoken::encode(&header, claims, &jsonwebtoken::EncodingKey::from_rsa_der(&key.private_der)).unwrap()
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
        "response_types_supported": ["id_token"],
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

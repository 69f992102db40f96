//! A stand-in for the one Kubernetes API that Vault's Kubernetes auth method calls: TokenReview
//! (`POST /apis/authentication.k8s.io/v1/tokenreviews`). It vouches for the service-account tokens it issued
//! and for nothing else, so Vault's Kubernetes login can be tested without a cluster.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{Json, Router, extract::State, routing::post};
use serde_json::{Value, json};

/// A service account and the token it was issued.
struct Issued {
    token: String,
    namespace: String,
    name: String,
    uid: String,
}

/// The running stand-in.
pub struct TokenReviewApi {
    /// `http://127.0.0.1:port`, for Vault's `kubernetes_host`.
    pub url: String,
    /// A cluster CA certificate for Vault's `kubernetes_ca_cert`, which it insists on; the stand-in speaks
    /// plain HTTP, so it is never used.
    pub ca_pem: String,
    issued: Arc<Mutex<Vec<Issued>>>,
    server: tokio::task::JoinHandle<()>,
}

impl TokenReviewApi {
    /// Starts it on a free port.
    pub async fn start() -> TokenReviewApi {
        let issued: Arc<Mutex<Vec<Issued>>> = Arc::default();
        let app =
            Router::new().route("/apis/authentication.k8s.io/v1/tokenreviews", post(review)).with_state(issued.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address: SocketAddr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca_pem = ca.self_signed(&ca_key).expect("ca").pem();
        TokenReviewApi { url: format!("http://{address}"), ca_pem, issued, server }
    }

    /// Issues a service-account token for `namespace/name`: a signed JWT with the claims of a projected
    /// token, which Vault reads before asking for the review.
    pub fn issue(&self, namespace: &str, name: &str) -> String {
        let uid = uuid::Uuid::new_v4().to_string();
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs();
        let claims = json!({
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "aud": ["https://kubernetes.default.svc.cluster.local"],
            "iat": now,
            "nbf": now,
            "exp": now + 3600,
            "kubernetes.io": {
                "namespace": namespace,
                "serviceaccount": { "name": name, "uid": uid },
            },
        });
        let rsa = openssl::rsa::Rsa::generate(2048).expect("rsa");
        // PKCS#1 DER, which jsonwebtoken takes without its PEM feature.
        let key = jsonwebtoken::EncodingKey::from_rsa_der(&rsa.private_key_to_der().expect("der"));
        let token = jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), &claims, &key)
            .expect("jwt");
        self.issued.lock().expect("lock").push(Issued {
            token: token.clone(),
            namespace: namespace.into(),
            name: name.into(),
            uid,
        });
        token
    }
}

impl Drop for TokenReviewApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn review(State(issued): State<Arc<Mutex<Vec<Issued>>>>, Json(request): Json<Value>) -> Json<Value> {
    let token = request.pointer("/spec/token").and_then(Value::as_str).unwrap_or_default();
    let audiences = request.pointer("/spec/audiences").cloned().unwrap_or(json!([]));
    let issued = issued.lock().expect("lock");
    let status = match issued.iter().find(|i| i.token == token) {
        Some(account) => json!({
            "authenticated": true,
            "user": {
                "username": format!("system:serviceaccount:{}:{}", account.namespace, account.name),
                "uid": account.uid,
                "groups": ["system:serviceaccounts", format!("system:serviceaccounts:{}", account.namespace)],
            },
            "audiences": audiences,
        }),
        None => json!({ "authenticated": false, "error": "invalid bearer token" }),
    };
    Json(json!({ "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status }))
}

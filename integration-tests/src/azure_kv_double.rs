//! A stand-in for Azure Key Vault that speaks the protocol `azure_security_keyvault_keys` uses, over TLS as
//! the SDK insists: the bearer-challenge handshake (an unauthenticated first request is answered 401 with
//! `WWW-Authenticate: Bearer authorization=..., resource="https://vault.azure.net"`, then the token is
//! checked on every request), `GET /keys/{name}/{version}`, `POST /keys/{name}/{version}/wrapkey` and
//! `/unwrapkey` with `{"alg":"RSA-OAEP-256","value":<base64url>}`, and Key Vault's error shape
//! (`{"error":{"code","message","innererror":{"code"}}}`: 403 KeyDisabled, 404 KeyNotFound, 400
//! BadParameter). The cryptography is real: each key version is an RSA-2048 key held here, and wrapping is
//! RSA-OAEP with SHA-256.
//!
//! Tests drive it directly: create and rotate keys, disable them, freeze the server.

use std::{
    collections::{BTreeMap, HashMap},
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, Method, StatusCode},
    response::{IntoResponse, Response},
    routing::any,
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD as B64URL};
use openssl::{
    encrypt::{Decrypter, Encrypter},
    hash::MessageDigest,
    pkey::{PKey, Private},
    rsa::{Padding, Rsa},
};
use serde_json::{Value, json};

/// The host name the double's certificate is issued for; tests point the client's resolver at the double.
pub const VAULT_HOST: &str = "keymesh-test.vault.azure.net";

struct KeyVersion {
    rsa: PKey<Private>,
}

#[derive(Default)]
struct Key {
    versions: BTreeMap<u64, (String, KeyVersion)>,
    enabled: bool,
}

#[derive(Clone)]
struct Shared {
    keys: Arc<Mutex<HashMap<String, Key>>>,
    token: String,
    frozen: tokio::sync::watch::Sender<bool>,
    port: u16,
}

/// The running double.
pub struct AzureKeyVaultDouble {
    /// `https://keymesh-test.vault.azure.net:<port>/`.
    pub vault_url: String,
    /// Where to connect for [`VAULT_HOST`].
    pub address: SocketAddr,
    /// PEM of the CA that issued the double's certificate.
    pub ca_pem: String,
    /// The bearer token it accepts.
    pub token: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl AzureKeyVaultDouble {
    /// Starts it on a free port with a fresh CA and certificate for [`VAULT_HOST`].
    pub async fn start() -> AzureKeyVaultDouble {
        let (ca_pem, cert_pem, key_pem) = certificates();
        let certs = rustls_pki_types::pem::PemObject::pem_slice_iter(cert_pem.as_bytes())
            .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
            .expect("certificate");
        let key = rustls_pki_types::pem::PemObject::from_pem_slice(key_pem.as_bytes()).expect("key");
        let tls = rustls::ServerConfig::builder().with_no_client_auth().with_single_cert(certs, key).expect("tls");
        let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = tcp.local_addr().expect("addr");
        let token = format!("test-token-{}", uuid::Uuid::new_v4());
        let shared = Shared {
            keys: Arc::default(),
            token: token.clone(),
            frozen: tokio::sync::watch::channel(false).0,
            port: address.port(),
        };
        let app = Router::new().route("/keys/{*path}", any(handle)).with_state(shared.clone());
        let listener = TlsListener { tcp, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(tls)) };
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        AzureKeyVaultDouble {
            vault_url: format!("https://{VAULT_HOST}:{}/", address.port()),
            address,
            ca_pem,
            token,
            shared,
            server,
        }
    }

    /// Creates an enabled RSA key with one version.
    pub fn create_key(&self, name: &str) {
        let mut keys = self.shared.keys.lock().expect("lock");
        let key = keys.entry(name.to_owned()).or_default();
        key.enabled = true;
        add_version(key);
    }

    /// Adds a version, which becomes current.
    pub fn rotate(&self, name: &str) {
        add_version(self.shared.keys.lock().expect("lock").get_mut(name).expect("known key"));
    }

    /// Disables or enables the key (every version).
    pub fn set_enabled(&self, name: &str, enabled: bool) {
        self.shared.keys.lock().expect("lock").get_mut(name).expect("known key").enabled = enabled;
    }

    /// Freezes (every request hangs) or thaws the server.
    pub fn freeze(&self, frozen: bool) {
        self.shared.frozen.send_replace(frozen);
    }
}

impl Drop for AzureKeyVaultDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn add_version(key: &mut Key) {
    let rsa = PKey::from_rsa(Rsa::generate(2048).expect("rsa")).expect("pkey");
    let number = key.versions.keys().max().copied().unwrap_or(0) + 1;
    let mut id = [0u8; 16];
    openssl::rand::rand_bytes(&mut id).expect("random");
    let version = id.iter().map(|b| format!("{b:02x}")).collect::<String>();
    key.versions.insert(number, (version, KeyVersion { rsa }));
}

/// A CA and a server certificate for [`VAULT_HOST`] issued by it: PEMs of the CA, the chain, the key.
fn certificates() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("key");
    let leaf = CertificateParams::new(vec![VAULT_HOST.to_owned()]).expect("params");
    let cert = leaf.signed_by(&key, &issuer).expect("leaf");
    (ca_cert.pem(), cert.pem(), key.serialize_pem())
}

/// Accepts TCP connections and completes the TLS handshake before handing them to axum.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, peer)) = self.tcp.accept().await else { continue };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, peer);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

fn error(status: StatusCode, code: &str, inner: Option<&str>, message: String) -> Response {
    let mut body = json!({ "error": { "code": code, "message": message } });
    if let Some(inner) = inner {
        body["error"]["innererror"] = json!({ "code": inner });
    }
    (status, Json(body)).into_response()
}

async fn handle(
    State(shared): State<Shared>,
    method: Method,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mut frozen = shared.frozen.subscribe();
    let _ = frozen.wait_for(|f| !*f).await;
    let expected = format!("Bearer {}", shared.token);
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        let mut response = error(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            None,
            "AKV10000: Request is missing a Bearer or PoP token.".into(),
        );
        let challenge = "Bearer authorization=\"https://login.microsoftonline.com/00000000-0000-0000-0000-000000000000\", resource=\"https://vault.azure.net\"";
        response.headers_mut().insert("www-authenticate", challenge.parse().expect("header"));
        return response;
    }
    // keys/{name}/{version}[/{operation}]; an empty version means the current one.
    let parts: Vec<&str> = path.split('/').collect();
    let (name, version, operation) = match parts.as_slice() {
        [name] => (*name, "", None),
        [name, version] => (*name, *version, None),
        [name, version, operation] => (*name, *version, Some(*operation)),
        _ => return error(StatusCode::BAD_REQUEST, "BadParameter", None, format!("bad path {path}")),
    };
    let keys = shared.keys.lock().expect("lock");
    let not_found = || {
        error(
            StatusCode::NOT_FOUND,
            "KeyNotFound",
            None,
            format!("A key with (name/id) {name}/{version} was not found in this key vault."),
        )
    };
    let Some(key) = keys.get(name) else { return not_found() };
    let found = if version.is_empty() {
        key.versions.values().last()
    } else {
        key.versions.values().find(|(id, _)| id == version)
    };
    let Some((version_id, key_version)) = found else { return not_found() };
    let kid = format!("https://{VAULT_HOST}:{}/keys/{name}/{version_id}", shared.port);
    match (method, operation) {
        (Method::GET, None) => {
            let rsa = key_version.rsa.rsa().expect("rsa");
            Json(json!({
                "key": {
                    "kid": kid,
                    "kty": "RSA",
                    "key_ops": ["wrapKey", "unwrapKey"],
                    "n": B64URL.encode(rsa.n().to_vec()),
                    "e": B64URL.encode(rsa.e().to_vec()),
                },
                "attributes": { "enabled": key.enabled, "created": 1_700_000_000, "updated": 1_700_000_000 },
            }))
            .into_response()
        }
        (Method::POST, Some(operation @ ("wrapkey" | "unwrapkey"))) => {
            if !key.enabled {
                let op = if operation == "wrapkey" { "wrapKey" } else { "unwrapKey" };
                return error(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    Some("KeyDisabled"),
                    format!("Operation {op} is not allowed on a disabled key."),
                );
            }
            let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            if request.get("alg").and_then(Value::as_str) != Some("RSA-OAEP-256") {
                return error(StatusCode::BAD_REQUEST, "BadParameter", None, "alg must be RSA-OAEP-256 here".into());
            }
            let Some(value) = request.get("value").and_then(Value::as_str).and_then(|v| B64URL.decode(v).ok()) else {
                return error(StatusCode::BAD_REQUEST, "BadParameter", None, "value is not base64url".into());
            };
            let result = if operation == "wrapkey" {
                oaep(&key_version.rsa, &value, true)
            } else {
                oaep(&key_version.rsa, &value, false)
            };
            match result {
                Some(out) => Json(json!({ "kid": kid, "value": B64URL.encode(out) })).into_response(),
                None => error(StatusCode::BAD_REQUEST, "BadParameter", None, "The parameter is incorrect.".into()),
            }
        }
        _ => error(StatusCode::METHOD_NOT_ALLOWED, "BadParameter", None, "unsupported operation".into()),
    }
}

/// RSA-OAEP with SHA-256 (and MGF1-SHA-256), as RSA-OAEP-256 is defined.
fn oaep(key: &PKey<Private>, input: &[u8], encrypt: bool) -> Option<Vec<u8>> {
    if encrypt {
        let mut encrypter = Encrypter::new(key).ok()?;
        encrypter.set_rsa_padding(Padding::PKCS1_OAEP).ok()?;
        encrypter.set_rsa_oaep_md(MessageDigest::sha256()).ok()?;
        encrypter.set_rsa_mgf1_md(MessageDigest::sha256()).ok()?;
        let mut out = vec![0; encrypter.encrypt_len(input).ok()?];
        let n = encrypter.encrypt(input, &mut out).ok()?;
        out.truncate(n);
        Some(out)
    } else {
        let mut decrypter = Decrypter::new(key).ok()?;
        decrypter.set_rsa_padding(Padding::PKCS1_OAEP).ok()?;
        decrypter.set_rsa_oaep_md(MessageDigest::sha256()).ok()?;
        decrypter.set_rsa_mgf1_md(MessageDigest::sha256()).ok()?;
        let mut out = vec![0; decrypter.decrypt_len(input).ok()?];
        let n = decrypter.decrypt(input, &mut out).ok()?;
        out.truncate(n);
        Some(out)
    }
}

//! A stand-in for Google Cloud KMS that speaks the wire protocol `google-cloud-kms-v1` uses (REST/JSON:
//! `POST /v1/{name}:encrypt` and `:decrypt`, camelCase fields, bytes in padded base64, int64 checksums as
//! strings, errors as `{"error": {"code", "message", "status"}}`), implements the documented request and
//! response shapes including the CRC32C integrity fields, and does real cryptography: each CryptoKeyVersion
//! is an AES-256-GCM key held here (never sent), and the AAD is authenticated.
//!
//! Tests drive it directly: create keys, rotate the primary version, disable versions, and freeze it (every
//! request then hangs until thawed, as against a server that stopped answering).

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
};

use axum::{
    Json, Router,
    extract::{Path, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use serde_json::{Value, json};

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn crc32c(bytes: &[u8]) -> String {
    CASTAGNOLI.checksum(bytes).to_string()
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum VersionState {
    Enabled,
    Disabled,
}

struct Version {
    key: [u8; 32],
    state: VersionState,
}

#[derive(Default)]
struct CryptoKey {
    primary: u32,
    versions: BTreeMap<u32, Version>,
}

#[derive(Default)]
struct Keys {
    keys: HashMap<String, CryptoKey>,
}

#[derive(Clone)]
struct Shared {
    keys: Arc<Mutex<Keys>>,
    frozen: tokio::sync::watch::Sender<bool>,
}

/// The running double.
pub struct GcpKmsDouble {
    /// `http://127.0.0.1:port`, for the client's endpoint override.
    pub endpoint: String,
    shared: Shared,
    server: tokio::task::JoinHandle<()>,
}

impl GcpKmsDouble {
    /// Starts it on a free port.
    pub async fn start() -> GcpKmsDouble {
        let shared = Shared { keys: Arc::default(), frozen: tokio::sync::watch::channel(false).0 };
        let app = Router::new().route("/v1/{*call}", post(handle)).with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let endpoint = format!("http://{}", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GcpKmsDouble { endpoint, shared, server }
    }

    /// Creates a CryptoKey with one enabled version and returns its resource name.
    pub fn create_key(&self, project: &str, key: &str) -> String {
        let name = format!("projects/{project}/locations/global/keyRings/keymesh/cryptoKeys/{key}");
        let mut keys = self.shared.keys.lock().expect("lock");
        let crypto_key = keys.keys.entry(name.clone()).or_default();
        add_version(crypto_key);
        name
    }

    /// Adds a version and makes it primary, like `gcloud kms keys versions create --primary`.
    pub fn rotate(&self, name: &str) {
        let mut keys = self.shared.keys.lock().expect("lock");
        add_version(keys.keys.get_mut(name).expect("known key"));
    }

    /// Disables (or enables) every version of the key.
    pub fn set_enabled(&self, name: &str, enabled: bool) {
        let mut keys = self.shared.keys.lock().expect("lock");
        let state = if enabled { VersionState::Enabled } else { VersionState::Disabled };
        for version in keys.keys.get_mut(name).expect("known key").versions.values_mut() {
            version.state = state;
        }
    }

    /// Freezes (every request hangs) or thaws the server.
    pub fn freeze(&self, frozen: bool) {
        self.shared.frozen.send_replace(frozen);
    }
}

impl Drop for GcpKmsDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

fn add_version(crypto_key: &mut CryptoKey) {
    let mut key = [0u8; 32];
    openssl::rand::rand_bytes(&mut key).expect("random");
    let number = crypto_key.versions.keys().max().copied().unwrap_or(0) + 1;
    crypto_key.versions.insert(number, Version { key, state: VersionState::Enabled });
    crypto_key.primary = number;
}

/// A google.rpc.Status error as Cloud KMS's REST endpoint sends it.
struct RpcError {
    http: StatusCode,
    status: &'static str,
    message: String,
}

impl IntoResponse for RpcError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.http.as_u16(), "message": self.message, "status": self.status } });
        (self.http, Json(body)).into_response()
    }
}

fn rpc_error(http: StatusCode, status: &'static str, message: String) -> RpcError {
    RpcError { http, status, message }
}

fn invalid(message: impl Into<String>) -> RpcError {
    rpc_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message.into())
}

/// A bytes field (padded base64) and its optional checksum field (an int64 as a string), verified.
fn bytes_field(body: &Value, field: &str, checksum_field: &str) -> Result<(Vec<u8>, bool), RpcError> {
    let bytes = match body.get(field).and_then(Value::as_str) {
        Some(text) => B64.decode(text).map_err(|_| invalid(format!("Invalid value at '{field}' (TYPE_BYTES)")))?,
        None => Vec::new(),
    };
    match body.get(checksum_field).and_then(Value::as_str) {
        Some(sent) if sent != crc32c(&bytes) => Err(invalid(format!(
            "The checksum in field {} did not match the data in field {}.",
            snake(checksum_field),
            snake(field)
        ))),
        Some(_) => Ok((bytes, true)),
        None => Ok((bytes, false)),
    }
}

fn snake(camel: &str) -> String {
    camel
        .chars()
        .flat_map(|c| if c.is_ascii_uppercase() { vec!['_', c.to_ascii_lowercase()] } else { vec![c] })
        .collect()
}

fn not_enabled(version_name: &str, state: VersionState) -> RpcError {
    rpc_error(
        StatusCode::BAD_REQUEST,
        "FAILED_PRECONDITION",
        format!("{version_name} is not enabled, current state is: {}.", format!("{state:?}").to_uppercase()),
    )
}

async fn handle(State(shared): State<Shared>, Path(call): Path<String>, Json(body): Json<Value>) -> Response {
    let mut frozen = shared.frozen.subscribe();
    let _ = frozen.wait_for(|f| !*f).await;
    let Some((name, method)) = call.rsplit_once(':') else {
        return rpc_error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("unknown method {call}")).into_response();
    };
    match method {
        "encrypt" => encrypt(&shared, name, &body),
        "decrypt" => decrypt(&shared, name, &body),
        _ => Err(rpc_error(StatusCode::NOT_IMPLEMENTED, "UNIMPLEMENTED", format!("{method} is not implemented here"))),
    }
    .unwrap_or_else(IntoResponse::into_response)
}

/// Encrypt accepts a CryptoKey (its primary version encrypts) or a CryptoKeyVersion.
fn encrypt(shared: &Shared, name: &str, body: &Value) -> Result<Response, RpcError> {
    let (plaintext, plaintext_checked) = bytes_field(body, "plaintext", "plaintextCrc32c")?;
    let (aad, aad_checked) = bytes_field(body, "additionalAuthenticatedData", "additionalAuthenticatedDataCrc32c")?;
    if plaintext.is_empty() || plaintext.len() > 64 * 1024 {
        return Err(invalid("plaintext must be between 1 byte and 64 KiB"));
    }
    let keys = shared.keys.lock().expect("lock");
    let (key_name, requested) = match name.split_once("/cryptoKeyVersions/") {
        Some((key, version)) => (key, version.parse::<u32>().ok()),
        None => (name, None),
    };
    let crypto_key = keys
        .keys
        .get(key_name)
        .ok_or_else(|| rpc_error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("{name} not found.")))?;
    let number = requested.unwrap_or(crypto_key.primary);
    let version_name = format!("{key_name}/cryptoKeyVersions/{number}");
    let version = crypto_key
        .versions
        .get(&number)
        .ok_or_else(|| rpc_error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("{version_name} not found.")))?;
    if version.state != VersionState::Enabled {
        return Err(not_enabled(&version_name, version.state));
    }
    let mut nonce = [0u8; 12];
    openssl::rand::rand_bytes(&mut nonce).expect("random");
    let mut tag = [0u8; 16];
    let sealed =
        encrypt_aead(Cipher::aes_256_gcm(), &version.key, Some(&nonce), &aad, &plaintext, &mut tag).expect("AES-GCM");
    // Opaque to clients: the version, the nonce, the ciphertext and the tag.
    let mut ciphertext = number.to_be_bytes().to_vec();
    ciphertext.extend_from_slice(&nonce);
    ciphertext.extend_from_slice(&sealed);
    ciphertext.extend_from_slice(&tag);
    Ok(Json(json!({
        "name": version_name,
        "ciphertext": B64.encode(&ciphertext),
        "ciphertextCrc32c": crc32c(&ciphertext),
        "verifiedPlaintextCrc32c": plaintext_checked,
        "verifiedAdditionalAuthenticatedDataCrc32c": aad_checked,
        "protectionLevel": 1,
    }))
    .into_response())
}

/// Decrypt takes the CryptoKey; the version comes from the ciphertext.
fn decrypt(shared: &Shared, name: &str, body: &Value) -> Result<Response, RpcError> {
    let (ciphertext, _) = bytes_field(body, "ciphertext", "ciphertextCrc32c")?;
    let (aad, _) = bytes_field(body, "additionalAuthenticatedData", "additionalAuthenticatedDataCrc32c")?;
    if name.contains("/cryptoKeyVersions/") {
        return Err(invalid("Decrypt takes a CryptoKey name, not a CryptoKeyVersion"));
    }
    let keys = shared.keys.lock().expect("lock");
    let crypto_key = keys
        .keys
        .get(name)
        .ok_or_else(|| rpc_error(StatusCode::NOT_FOUND, "NOT_FOUND", format!("{name} not found.")))?;
    let invalid_ciphertext = || invalid("Decryption failed: the ciphertext is invalid.");
    if ciphertext.len() < 4 + 12 + 16 {
        return Err(invalid_ciphertext());
    }
    let number = u32::from_be_bytes([ciphertext[0], ciphertext[1], ciphertext[2], ciphertext[3]]);
    let version = crypto_key.versions.get(&number).ok_or_else(invalid_ciphertext)?;
    if version.state != VersionState::Enabled {
        return Err(not_enabled(&format!("{name}/cryptoKeyVersions/{number}"), version.state));
    }
    let (nonce, rest) = ciphertext[4..].split_at(12);
    let (sealed, tag) = rest.split_at(rest.len() - 16);
    let plaintext = decrypt_aead(Cipher::aes_256_gcm(), &version.key, Some(nonce), &aad, sealed, tag)
        .map_err(|_| invalid_ciphertext())?;
    Ok(Json(json!({
        "plaintext": B64.encode(&plaintext),
        "plaintextCrc32c": crc32c(&plaintext),
        "usedPrimary": number == crypto_key.primary,
        "protectionLevel": 1,
    }))
    .into_response())
}

//! The keymesh SDK: connects to the mesh over mTLS, exchanges client credentials for an access token (and
//! renews it before it expires, one renewal in flight however many tasks call), and calls the services with it.
//! [`envelope`] encrypts locally with data keys; [`streaming`] moves readers, writers and files of any size
//! through the stream format; [`local`] hashes and MACs without calling the mesh; [`home`] is the developer's
//! `~/.keymesh`: `keymesh login`'s session and auto-registered applications.

pub mod envelope;
pub mod home;
pub mod local;
pub mod streaming;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use keymesh_mtls::mtls_channel;
pub use keymesh_mtls::{Endpoints, ServiceName, TlsMaterial};
use keymesh_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient, key_service_client::KeyServiceClient,
    token_service_client::TokenServiceClient,
};
use serde::Deserialize;
use tokio::sync::Mutex;
use tonic::{Request, transport::Channel};
use zeroize::Zeroizing;

/// Failures of the SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A call failed; the status says why.
    #[error("{}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// Local set-up failed (files, certificates, endpoints).
    #[error("{0}")]
    Setup(String),
    /// Reading or writing local data failed.
    #[error("{0}")]
    Io(String),
    /// Local encryption or decryption failed (a decryption failure says no more than the service would).
    #[error("{0}")]
    Crypto(#[from] keymesh_crypto::CryptoError),
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e.to_string())
    }
}

/// Largest gRPC message the SDK sends or accepts from crypto-service: the largest unary limit the service
/// can be configured with (64 MiB), with room for the rest of the message. The service enforces its own.
const MAX_CRYPTO_MESSAGE: usize = 2 * 64 * 1024 * 1024 + 64 * 1024;

/// How an application authenticates: its client id and secret, or a token its platform mints (a projected
/// Kubernetes service-account token, an OIDC ID token) read afresh from a file at each renewal and exchanged
/// for an access token, so the workload stores no secret.
#[derive(Deserialize)]
pub struct Credentials {
    /// Client id (empty with `subject_token_file`).
    #[serde(default)]
    pub client_id: String,
    /// Client secret (empty with `subject_token_file`).
    #[serde(default)]
    pub client_secret: Zeroizing<String>,
    /// The platform token's file, e.g. `/var/run/secrets/tokens/keymesh`.
    #[serde(default)]
    pub subject_token_file: Option<PathBuf>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("client_id", &self.client_id).finish_non_exhaustive()
    }
}

impl Credentials {
    /// No credentials: for a client that only makes calls needing no access token (IssueToken, RevokeToken,
    /// GetJwks), or sends its own.
    pub fn none() -> Self {
        Self { client_id: String::new(), client_secret: Zeroizing::default(), subject_token_file: None }
    }

    /// Token exchange with the platform token in `path`.
    pub fn token_exchange(path: impl Into<PathBuf>) -> Self {
        Self { client_id: String::new(), client_secret: Zeroizing::default(), subject_token_file: Some(path.into()) }
    }

    /// Reads a credentials JSON file (`client_id`, `client_secret`), e.g. the bootstrap credentials.
    pub fn from_file(path: &Path) -> Result<Self, ClientError> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))?,
        );
        serde_json::from_str(&text).map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))
    }
}

struct CachedToken {
    token: Zeroizing<String>,
    renew_at: Instant,
}

/// A connected client.
pub struct KeymeshClient {
    credentials: Credentials,
    tokens: TokenServiceClient<Channel>,
    keys: KeyServiceClient<Channel>,
    crypto: CryptoServiceClient<Channel>,
    audit_channel: Channel,
    token: Mutex<Option<CachedToken>>,
}

impl KeymeshClient {
    /// Connects (lazily) to every service with the given client certificate.
    pub fn new(endpoints: &Endpoints, tls: &TlsMaterial, credentials: Credentials) -> Result<Self, ClientError> {
        let channel =
            |s: ServiceName| mtls_channel(endpoints.of(s), tls, s).map_err(|e| ClientError::Setup(e.to_string()));
        Ok(Self {
            credentials,
            tokens: TokenServiceClient::new(channel(ServiceName::TokenService)?),
            keys: KeyServiceClient::new(channel(ServiceName::KeyService)?),
            crypto: CryptoServiceClient::new(channel(ServiceName::CryptoService)?)
                .max_decoding_message_size(MAX_CRYPTO_MESSAGE)
                .max_encoding_message_size(MAX_CRYPTO_MESSAGE),
            audit_channel: channel(ServiceName::AuditService)?,
            token: Mutex::new(None),
        })
    }

    /// A valid access token, issued or renewed when fewer than 5 minutes (or a fifth of its life) remain.
    pub async fn access_token(&self) -> Result<Zeroizing<String>, ClientError> {
        let mut cached = self.token.lock().await;
        if let Some(token) = cached.as_ref().filter(|t| Instant::now() < t.renew_at) {
            return Ok(token.token.clone());
        }
        let request = match &self.credentials.subject_token_file {
            // Read at every renewal: the platform rotates the file's token.
            Some(path) => token_exchange_request(path).await?,
            None => pb::IssueTokenRequest {
                grant_type: pb::GrantType::ClientCredentials as i32,
                client_id: self.credentials.client_id.clone(),
                client_secret: self.credentials.client_secret.to_string(),
                ..Default::default()
            },
        };
        let response = self.tokens.clone().issue_token(request).await?.into_inner();
        let lifetime = Duration::from_secs(u64::from(response.expires_in_seconds));
        let margin = Duration::from_secs(300).min(lifetime / 5);
        let token = Zeroizing::new(response.access_token);
        *cached = Some(CachedToken { token: token.clone(), renew_at: Instant::now() + lifetime - margin });
        Ok(token)
    }

    /// Wraps a message with the bearer token, and the caller's trace context when it has one: the application's
    /// current OpenTelemetry context, written by the propagator it installed globally (W3C `traceparent` with
    /// the SDK's `TraceContextPropagator`), so keymesh's spans join the application's trace. An application
    /// without OpenTelemetry sends nothing extra.
    pub async fn authorized<T>(&self, message: T) -> Result<Request<T>, ClientError> {
        bearer(&self.access_token().await?, message)
    }

    /// The generated KeyService client, for methods without a helper here (send `authorized` requests).
    pub fn key_service(&self) -> KeyServiceClient<Channel> {
        self.keys.clone()
    }

    /// The generated CryptoService client, for methods without a helper here (send `authorized` requests).
    pub fn crypto_service(&self) -> CryptoServiceClient<Channel> {
        self.crypto.clone()
    }

    /// The generated TokenService client, for methods without a helper here (send `authorized` requests; IssueToken,
    /// RevokeToken and GetJwks need none).
    pub fn token_service(&self) -> TokenServiceClient<Channel> {
        self.tokens.clone()
    }

    /// The generated AuditService client (send `authorized` requests).
    pub fn audit_service(&self) -> keymesh_proto::v1::audit_service_client::AuditServiceClient<Channel> {
        keymesh_proto::v1::audit_service_client::AuditServiceClient::new(self.audit_channel.clone())
    }

    /// Creates an AES-256-GCM encryption key.
    pub async fn create_key(&self, name: &str) -> Result<pb::Key, ClientError> {
        let request = self
            .authorized(pb::CreateKeyRequest {
                name: name.to_owned(),
                purpose: pb::KeyPurpose::Encrypt as i32,
                algorithm: pb::Algorithm::Aes256Gcm as i32,
                ..Default::default()
            })
            .await?;
        let response = self.keys.clone().create_key(request).await?.into_inner();
        response.key.ok_or_else(|| ClientError::Setup("CreateKey returned no key".into()))
    }

    /// A key's metadata.
    pub async fn get_key(&self, key: &str) -> Result<pb::Key, ClientError> {
        let request = self.authorized(pb::GetKeyRequest { key: key.to_owned() }).await?;
        let response = self.keys.clone().get_key(request).await?.into_inner();
        response.key.ok_or_else(|| ClientError::Setup("GetKey returned no key".into()))
    }

    /// Encrypts under `key`, binding `aad`.
    pub async fn encrypt(&self, key: &str, plaintext: Vec<u8>, aad: Vec<u8>) -> Result<Vec<u8>, ClientError> {
        let request =
            self.authorized(pb::EncryptRequest { key: key.to_owned(), plaintext, aad, ..Default::default() }).await?;
        Ok(self.crypto.clone().encrypt(request).await?.into_inner().ciphertext)
    }

    /// Decrypts a keymesh ciphertext, presenting `aad` again.
    pub async fn decrypt(&self, ciphertext: Vec<u8>, aad: Vec<u8>) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let request = self.authorized(pb::DecryptRequest { ciphertext, aad, ..Default::default() }).await?;
        Ok(Zeroizing::new(self.crypto.clone().decrypt(request).await?.into_inner().plaintext))
    }

    /// The caller's tenant's audit records, newest last.
    pub async fn audit_query(&self, query: pb::QueryRequest) -> Result<Vec<pb::AuditRecord>, ClientError> {
        let request = self.authorized(query).await?;
        let mut stream = self.audit_service().query(request).await?.into_inner();
        let mut records = Vec::new();
        while let Some(item) = stream.message().await? {
            records.extend(item.record);
        }
        Ok(records)
    }
}

/// `message` with `token` as its bearer token, and the caller's trace context (see [`KeymeshClient::authorized`]).
pub fn bearer<T>(token: &str, message: T) -> Result<Request<T>, ClientError> {
    let mut request = Request::new(message);
    let value = format!("Bearer {token}")
        .parse()
        .map_err(|_| ClientError::Setup("access token is not valid metadata".into()))?;
    request.metadata_mut().insert("authorization", value);
    let context = opentelemetry::Context::current();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MetadataInjector(request.metadata_mut()));
    });
    Ok(request)
}

/// An IssueToken request exchanging the platform token in the file `path` (RFC 8693, a JWT), read now: the
/// platform rotates the file's token, so every exchange reads it afresh.
pub async fn token_exchange_request(path: &Path) -> Result<pb::IssueTokenRequest, ClientError> {
    let subject = Zeroizing::new(
        tokio::fs::read_to_string(path).await.map_err(|e| ClientError::Setup(format!("{}: {e}", path.display())))?,
    );
    Ok(pb::IssueTokenRequest {
        grant_type: pb::GrantType::TokenExchange as i32,
        subject_token: subject.trim().to_owned(),
        subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
        ..Default::default()
    })
}

/// The default path of the bootstrap credentials in a data directory.
pub fn bootstrap_credentials_path(data_dir: &Path) -> PathBuf {
    data_dir.join("bootstrap-credentials.json")
}

/// Writes trace-context fields into gRPC metadata (a value that is not valid metadata is left out).
struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl opentelemetry::propagation::Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(&value))
        {
            self.0.insert(key, value);
        }
    }
}

//! HashiCorp Vault (and OpenBao) Transit as a KEK backend, through `vaultrs`. The KEK is a Transit key
//! that never leaves Vault: DEKs go to `transit/encrypt/<key>` and come back from `transit/decrypt/<key>`,
//! bound to their tenant, key, version and algorithm through Transit's `associated_data` (AES-GCM AAD), so a
//! ciphertext moved to another key does not decrypt.
//!
//! Authentication is a token, AppRole or Kubernetes service-account login. Tokens from a login expire:
//! they are renewed by logging in again shortly before their lease ends, and once more when Vault answers
//! 403 (a token revoked early), so a long-running service never stops on an expired token.
//!
//! The KEK id of a wrap is `<mount>/<key>:v<N>`, N being the Transit key version that wrapped it (the
//! `vault:vN:` prefix of the ciphertext), so rotating the Transit key makes older wraps non-current and a
//! re-wrap moves them forward.

use std::{
    path::PathBuf,
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use keymesh_crypto::SecretKey;
use vaultrs::{
    api::transit::requests::{DecryptDataRequest, EncryptDataRequest},
    client::{VaultClient, VaultClientSettingsBuilder},
    error::ClientError,
};
use zeroize::{Zeroize, Zeroizing};

use crate::{BackendDescription, KeyEncryptionBackend, KmsError, WrapContext, WrappedKey};

/// How the backend authenticates to Vault.
pub enum VaultAuth {
    /// A token handed over as is (from the environment or a file kept fresh by Vault Agent).
    Token(Zeroizing<String>),
    /// AppRole login.
    AppRole {
        /// Mount of the AppRole auth method, e.g. `approle`.
        mount: String,
        /// The role id.
        role_id: String,
        /// The secret id.
        secret_id: Zeroizing<String>,
    },
    /// Kubernetes login with the pod's service-account token, read anew at every login because projected
    /// tokens rotate.
    Kubernetes {
        /// Mount of the Kubernetes auth method, e.g. `kubernetes`.
        mount: String,
        /// The Vault role.
        role: String,
        /// The service-account token file.
        jwt_file: PathBuf,
    },
}

impl std::fmt::Debug for VaultAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(redacted)"),
            Self::AppRole { mount, role_id, .. } => {
                f.debug_struct("AppRole").field("mount", mount).field("role_id", role_id).finish_non_exhaustive()
            }
            Self::Kubernetes { mount, role, jwt_file } => f
                .debug_struct("Kubernetes")
                .field("mount", mount)
                .field("role", role)
                .field("jwt_file", jwt_file)
                .finish(),
        }
    }
}

/// Settings of the Vault backend.
#[derive(Debug)]
pub struct VaultKmsConfig {
    /// Vault's address, e.g. `https://vault.internal:8200`.
    pub address: String,
    /// Mount of the Transit engine.
    pub mount: String,
    /// Name of the Transit key.
    pub key: String,
    /// Vault Enterprise / OpenBao namespace.
    pub namespace: Option<String>,
    /// PEM bundle of the CA that signed Vault's certificate (the system roots otherwise).
    pub ca_cert: Option<PathBuf>,
    /// How to authenticate.
    pub auth: VaultAuth,
    /// Deadline of one HTTP request.
    pub request_timeout: Duration,
}

/// A login token and when to get a new one.
struct Session {
    client: Arc<VaultClient>,
    renew_at: Option<Instant>,
}

/// The Vault Transit backend.
pub struct VaultKms {
    name: String,
    config: VaultKmsConfig,
    session: RwLock<Arc<Session>>,
    /// Serialises logins so that a burst of requests with an expired token logs in once.
    login: tokio::sync::Mutex<()>,
    /// Highest Transit key version seen in a wrap, which is the current one (Transit encrypts with its
    /// latest version).
    latest_version: AtomicU64,
}

impl VaultKms {
    /// Connects and logs in, and checks that the Transit key exists and can encrypt and decrypt, so a wrong
    /// address, credential, mount or key name fails at start-up with Vault's own words.
    pub async fn connect(name: &str, config: VaultKmsConfig) -> Result<Self, KmsError> {
        let placeholder = Arc::new(Session { client: Arc::new(build_client(name, &config, "")?), renew_at: None });
        let backend = Self {
            name: name.to_owned(),
            config,
            session: RwLock::new(placeholder),
            login: tokio::sync::Mutex::new(()),
            latest_version: AtomicU64::new(0),
        };
        // An unreachable Vault or a refused login must not keep the service down: calls log in again and
        // report the backend unavailable until it answers. A wrong key type is a configuration error.
        if let Err(e) = backend.log_in(None).await {
            tracing::warn!(backend = name, error = %e, "Vault login failed; will retry on first use");
            return Ok(backend);
        }
        let this = &backend;
        let key =
            this.call(|client| async move {
                vaultrs::transit::key::read(&*client, &this.config.mount, &this.config.key).await
            })
            .await;
        match key {
            Ok(key) if !key.supports_encryption || !key.supports_decryption || key.derived => {
                return Err(KmsError::Config {
                    reason: format!(
                        "kms.backends.{name}: Transit key {} cannot serve keymesh: create it as a non-derived \
                         aes256-gcm96 key",
                        this.key_path()
                    ),
                });
            }
            Ok(key) => this.latest_version.store(latest_version_of(&key.keys), Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(backend = name, error = %e, "cannot read the Transit key; will retry on first use")
            }
        }
        Ok(backend)
    }

    fn key_path(&self) -> String {
        format!("{}/{}", self.config.mount, self.config.key)
    }

    fn unusable(&self, reason: String) -> KmsError {
        KmsError::KeyUnusable { backend: self.name.clone(), reason }
    }

    fn unavailable(&self, reason: String) -> KmsError {
        KmsError::Unavailable { backend: self.name.clone(), reason }
    }

    fn current_session(&self) -> Arc<Session> {
        self.session.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Logs in unless another task already did since `stale` was current (`None`: log in regardless).
    async fn log_in(&self, stale: Option<&Arc<Session>>) -> Result<(), KmsError> {
        let _guard = self.login.lock().await;
        if let Some(stale) = stale
            && !Arc::ptr_eq(stale, &self.current_session())
        {
            return Ok(());
        }
        let (token, lease) = match &self.config.auth {
            VaultAuth::Token(token) => (token.clone(), None),
            VaultAuth::AppRole { mount, role_id, secret_id } => {
                let anonymous = build_client(&self.name, &self.config, "")?;
                let auth = vaultrs::auth::approle::login(&anonymous, mount, role_id, secret_id)
                    .await
                    .map_err(|e| self.login_error("AppRole", e))?;
                (Zeroizing::new(auth.client_token), Some(auth.lease_duration))
            }
            VaultAuth::Kubernetes { mount, role, jwt_file } => {
                let jwt = Zeroizing::new(
                    tokio::fs::read_to_string(jwt_file)
                        .await
                        .map_err(|source| KmsError::Io { path: jwt_file.display().to_string(), source })?,
                );
                let anonymous = build_client(&self.name, &self.config, "")?;
                let auth = vaultrs::auth::kubernetes::login(&anonymous, mount, role, jwt.trim())
                    .await
                    .map_err(|e| self.login_error("Kubernetes", e))?;
                (Zeroizing::new(auth.client_token), Some(auth.lease_duration))
            }
        };
        // Renew at two thirds of the lease, the habit of Vault Agent; a lease of 0 never expires.
        let renew_at = lease.filter(|s| *s > 0).map(|s| Instant::now() + Duration::from_secs(s) * 2 / 3);
        let client = Arc::new(build_client(&self.name, &self.config, &token)?);
        *self.session.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(Session { client, renew_at });
        Ok(())
    }

    /// Vault treats an encrypt to a missing key as creating it, which a least-privilege token may not do:
    /// a deleted key then looks like "permission denied". Reading the key tells the two apart.
    async fn explain_refusal(&self, refusal: KmsError) -> KmsError {
        let client = self.current_session().client.clone();
        match vaultrs::transit::key::read(&*client, &self.config.mount, &self.config.key).await {
            Err(ClientError::APIError { code: 404, .. }) => self.unusable(format!(
                "Transit key {} does not exist (deleted, or a wrong mount or key name)",
                self.key_path()
            )),
            _ => refusal,
        }
    }

    fn login_error(&self, method: &str, e: ClientError) -> KmsError {
        match self.classify(e) {
            KmsError::KeyUnusable { reason, .. } => self.unusable(format!("{method} login refused: {reason}")),
            other => other,
        }
    }

    /// Runs one Vault request with a fresh-enough token; on 403 with a login method, logs in again and
    /// retries once (the token may have been revoked before its lease ended).
    async fn call<T, F, Fut>(&self, request: F) -> Result<T, KmsError>
    where
        F: Fn(Arc<VaultClient>) -> Fut,
        Fut: Future<Output = Result<T, ClientError>>,
    {
        let mut session = self.current_session();
        if session.renew_at.is_some_and(|at| Instant::now() >= at) {
            self.log_in(Some(&session)).await?;
            session = self.current_session();
        }
        match request(session.client.clone()).await {
            Err(ClientError::APIError { code: 403, .. }) if !matches!(self.config.auth, VaultAuth::Token(_)) => {
                self.log_in(Some(&session)).await?;
                request(self.current_session().client.clone()).await.map_err(|e| self.classify(e))
            }
            other => other.map_err(|e| self.classify(e)),
        }
    }

    /// Sorts Vault's answers into what a caller can do about them.
    fn classify(&self, e: ClientError) -> KmsError {
        let key = self.key_path();
        match e {
            ClientError::APIError { code, errors } => {
                // Vault wraps messages in "1 error occurred:\n\t* ..." lists; one line reads better in logs.
                let said = errors
                    .iter()
                    .map(|e| e.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect::<Vec<_>>()
                    .join("; ");
                match code {
                    400 if said.contains("message authentication failed") || said.contains("invalid ciphertext") => {
                        KmsError::UnwrapFailed { backend: self.name.clone() }
                    }
                    400 if said.contains("key not found") => self.unusable(format!(
                        "Transit key {key} does not exist (deleted, or a wrong mount or key name): {said}"
                    )),
                    400 if said.contains("disallowed by policy") => self.unusable(format!(
                        "the Transit key version of this wrap is below min_decryption_version of {key}: {said}"
                    )),
                    403 => self.unusable(format!(
                        "permission denied: the token's policy must allow update on {key_enc} and {key_dec} \
                         ({said})",
                        key_enc = format_args!("{}/encrypt/{}", self.config.mount, self.config.key),
                        key_dec = format_args!("{}/decrypt/{}", self.config.mount, self.config.key),
                    )),
                    // Rate limited, sealed, standby without forwarding, or a server error: try again later.
                    412 | 429 | 500.. => self.unavailable(format!("Vault answered {code}: {said}")),
                    _ => self.unusable(format!("Vault answered {code}: {said}")),
                }
            }
            ClientError::RestClientError { source } => {
                self.unavailable(format!("request failed: {}", crate::error_chain(&source)))
            }
            ClientError::ResponseEmptyError
            | ClientError::ResponseDataEmptyError
            | ClientError::JsonParseError { .. } => self.unavailable(format!("unexpected answer from Vault: {e}")),
            other => KmsError::Config { reason: format!("{}: {}", self.name, crate::error_chain(&other)) },
        }
    }
}

fn build_client(name: &str, config: &VaultKmsConfig, token: &str) -> Result<VaultClient, KmsError> {
    let invalid = |reason: String| KmsError::Config { reason: format!("kms.backends.{name}: {reason}") };
    let mut settings = VaultClientSettingsBuilder::default();
    settings.address(&config.address).token(token).timeout(Some(config.request_timeout));
    // Empty lists keep vaultrs from reading VAULT_CACERT behind the configuration's back.
    settings.ca_certs(config.ca_cert.iter().map(|p| p.display().to_string()).collect::<Vec<_>>());
    settings.verify(true);
    if let Some(namespace) = &config.namespace {
        settings.set_namespace(namespace.clone());
    }
    let settings = settings.build().map_err(|e| invalid(format!("address {:?}: {e}", config.address)))?;
    VaultClient::new(settings).map_err(|e| invalid(crate::error_chain(&e)))
}

/// The highest version in a Transit key's version map.
fn latest_version_of(keys: &vaultrs::api::transit::responses::ReadKeyData) -> u64 {
    match keys {
        vaultrs::api::transit::responses::ReadKeyData::Symmetric(versions) => {
            versions.keys().filter_map(|v| v.parse().ok()).max().unwrap_or(0)
        }
        vaultrs::api::transit::responses::ReadKeyData::Asymmetric(versions) => {
            versions.keys().filter_map(|v| v.parse().ok()).max().unwrap_or(0)
        }
    }
}

/// The Transit key version of a ciphertext (`vault:v3:...` is 3).
fn ciphertext_version(ciphertext: &str) -> Option<u64> {
    let rest = ciphertext.strip_prefix("vault:v")?;
    rest.split_once(':')?.0.parse().ok()
}

#[async_trait::async_trait]
impl KeyEncryptionBackend for VaultKms {
    async fn wrap(&self, dek: &SecretKey, context: &WrapContext) -> Result<WrappedKey, KmsError> {
        let plaintext = Zeroizing::new(B64.encode(dek.expose_secret()));
        let aad = B64.encode(context.to_aad());
        let encrypted = self
            .call(|client| {
                let (plaintext, aad) = (plaintext.clone(), aad.clone());
                async move {
                    vaultrs::transit::data::encrypt(
                        &*client,
                        &self.config.mount,
                        &self.config.key,
                        &plaintext,
                        Some(EncryptDataRequest::builder().associated_data(aad)),
                    )
                    .await
                }
            })
            .await;
        let response = match encrypted {
            Ok(response) => response,
            Err(e @ KmsError::KeyUnusable { .. }) => return Err(self.explain_refusal(e).await),
            Err(e) => return Err(e),
        };
        let version = ciphertext_version(&response.ciphertext)
            .ok_or_else(|| self.unavailable("Vault returned a ciphertext without a vault:vN: prefix".into()))?;
        self.latest_version.fetch_max(version, Ordering::Relaxed);
        Ok(WrappedKey {
            backend: self.name.clone(),
            kek_id: format!("{}:v{version}", self.key_path()),
            ciphertext: response.ciphertext.into_bytes(),
        })
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext) -> Result<SecretKey, KmsError> {
        let (path, _) = wrapped.kek_id.rsplit_once(":v").unwrap_or((&wrapped.kek_id, ""));
        if path != self.key_path() {
            return Err(KmsError::UnknownKek { backend: wrapped.backend.clone(), kek_id: wrapped.kek_id.clone() });
        }
        let ciphertext = std::str::from_utf8(&wrapped.ciphertext)
            .map_err(|_| KmsError::UnwrapFailed { backend: self.name.clone() })?;
        let aad = B64.encode(context.to_aad());
        let mut response = self
            .call(|client| {
                let aad = aad.clone();
                async move {
                    vaultrs::transit::data::decrypt(
                        &*client,
                        &self.config.mount,
                        &self.config.key,
                        ciphertext,
                        Some(DecryptDataRequest::builder().associated_data(aad)),
                    )
                    .await
                }
            })
            .await?;
        let dek = B64.decode(response.plaintext.as_bytes()).map(SecretKey::from_bytes);
        response.plaintext.zeroize();
        dek.map_err(|_| self.unavailable("Vault returned plaintext that is not base64".into()))
    }

    fn kind(&self) -> &'static str {
        "vault"
    }

    fn describe(&self) -> BackendDescription {
        let version = self.latest_version.load(Ordering::Relaxed);
        BackendDescription {
            backend: self.name.clone(),
            kek_id: format!("{}:v{version}", self.key_path()),
            detail: format!("Vault Transit {} at {}", self.key_path(), self.config.address),
        }
    }

    fn is_current(&self, wrapped: &WrappedKey) -> bool {
        // A wrap at the latest version seen is current; so is one above it (another replica saw a rotation
        // this one has not yet).
        let latest = self.latest_version.load(Ordering::Relaxed);
        match wrapped.kek_id.rsplit_once(":v") {
            Some((path, version)) => path == self.key_path() && version.parse::<u64>().is_ok_and(|v| v >= latest),
            None => false,
        }
    }

    async fn health(&self) -> Result<(), KmsError> {
        crate::probe(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ciphertext_versions() {
        assert_eq!(ciphertext_version("vault:v1:abc"), Some(1));
        assert_eq!(ciphertext_version("vault:v12:abc"), Some(12));
        assert_eq!(ciphertext_version("vault:1:abc"), None);
        assert_eq!(ciphertext_version("nonsense"), None);
    }

    #[test]
    fn auth_debug_hides_secrets() {
        let auth = VaultAuth::AppRole {
            mount: "approle".into(),
            role_id: "role".into(),
            secret_id: Zeroizing::new("s3cret-id".into()),
        };
        assert!(!format!("{auth:?}").contains("s3cret"));
        assert!(!format!("{:?}", VaultAuth::Token(Zeroizing::new("hvs.s3cret".into()))).contains("s3cret"));
    }
}

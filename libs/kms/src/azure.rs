//! Azure Key Vault (or Managed HSM) as a KEK backend, through Azure's official
//! `azure_security_keyvault_keys` client with `azure_identity` credentials. The KEK is an RSA key that
//! never leaves Key Vault: DEKs go through `wrapKey` and come back through `unwrapKey` with RSA-OAEP-256.
//!
//! RSA-OAEP has no associated data, so the binding to the DEK's tenant, key, version and algorithm is
//! carried inside the wrap: Key Vault wraps `DEK || SHA-256(context)`, and an unwrap whose tail does not
//! match the caller's context (compared in constant time) is refused like a wrong AAD elsewhere. A wrapped
//! blob moved to another key in the database therefore does not unwrap.
//!
//! The HTTP client is keymesh's own reqwest client: the SDK's has no overall deadline, and a private
//! endpoint may need an extra CA or a fixed address. The SDK's retries are off; [`crate::Resilient`] owns
//! deadlines and retries.
//!
//! The KEK id of a wrap is the key identifier Key Vault reports (`https://<vault>/keys/<name>/<version>`), so
//! a new key version makes older wraps non-current for a re-wrap; pinning `key_version` keeps wrapping under
//! one version.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, sync::RwLock, time::Duration};

use azure_core::{
    credentials::TokenCredential,
    error::ErrorKind,
    http::{ClientOptions, RetryOptions, Transport},
};
use azure_security_keyvault_keys::{
    KeyClient, KeyClientOptions,
    models::{EncryptionAlgorithm, KeyClientWrapKeyOptions, KeyOperationParameters},
};
use keymesh_crypto::SecretKey;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{BackendDescription, KeyEncryptionBackend, KmsError, WrapContext, WrappedKey};

const BINDING_LEN: usize = 32;

/// Settings of the Azure backend.
pub struct AzureKmsConfig {
    /// `https://<vault>.vault.azure.net/` or `https://<hsm>.managedhsm.azure.net/`.
    pub vault_url: String,
    /// Name of the RSA key.
    pub key_name: String,
    /// Wrap under this version only; the key's current version otherwise.
    pub key_version: Option<String>,
    /// The identity keymesh runs as.
    pub credential: Arc<dyn TokenCredential>,
    /// Extra CA (PEM) trusted for the vault's certificate, besides the system roots.
    pub ca_cert: Option<PathBuf>,
    /// Connect here instead of resolving the vault's host name (a private endpoint without DNS, tests).
    pub connect_to: Option<SocketAddr>,
    /// Deadline of one request.
    pub request_timeout: Duration,
}

impl std::fmt::Debug for AzureKmsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureKmsConfig")
            .field("vault_url", &self.vault_url)
            .field("key_name", &self.key_name)
            .field("key_version", &self.key_version)
            .field("ca_cert", &self.ca_cert)
            .field("connect_to", &self.connect_to)
            .finish_non_exhaustive()
    }
}

/// The Azure Key Vault backend.
pub struct AzureKms {
    name: String,
    vault_url: String,
    key_name: String,
    pinned_version: Option<String>,
    client: KeyClient,
    /// The key identifier of the last wrap: the version wraps go under.
    current_kid: RwLock<String>,
}

impl AzureKms {
    /// Builds the client and reads the key (best effort: an unreachable vault is logged, not fatal).
    pub async fn connect(name: &str, config: AzureKmsConfig) -> Result<Self, KmsError> {
        let invalid = |reason: String| KmsError::Config { reason: format!("kms.backends.{name}: {reason}") };
        let url = url_host(&config.vault_url)
            .ok_or_else(|| invalid(format!("vault_url {:?} is not an https:// URL", config.vault_url)))?;
        let mut http = reqwest::Client::builder()
            .connect_timeout(config.request_timeout)
            .timeout(config.request_timeout)
            .redirect(reqwest::redirect::Policy::none());
        if let Some(path) = &config.ca_cert {
            let pem =
                std::fs::read(path).map_err(|source| KmsError::Io { path: path.display().to_string(), source })?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .map_err(|e| invalid(format!("ca_cert {}: {e}", path.display())))?;
            http = http.tls_certs_merge(certs);
        }
        if let Some(address) = config.connect_to {
            http = http.resolve(&url, address);
        }
        let http = http.build().map_err(|e| invalid(format!("cannot build the HTTP client: {e}")))?;
        let options = KeyClientOptions {
            client_options: ClientOptions {
                retry: RetryOptions::none(),
                transport: Some(Transport::new(Arc::new(http))),
                ..Default::default()
            },
            ..Default::default()
        };
        let client = KeyClient::new(&config.vault_url, config.credential, Some(options))
            .map_err(|e| invalid(format!("vault_url {:?}: {e}", config.vault_url)))?;
        let backend = Self {
            name: name.to_owned(),
            vault_url: config.vault_url.trim_end_matches('/').to_owned(),
            key_name: config.key_name,
            pinned_version: config.key_version,
            client,
            current_kid: RwLock::new(String::new()),
        };
        // Reading the key warms the token (a managed identity's first token can take seconds) and puts a
        // wrong name, a disabled key or a missing permission in the start-up log.
        let options = azure_security_keyvault_keys::models::KeyClientGetKeyOptions {
            key_version: backend.pinned_version.clone(),
            ..Default::default()
        };
        match backend.client.get_key(&backend.key_name, Some(options)).await.and_then(|r| r.into_model()) {
            Ok(key) => {
                if let Some(kid) = key.key.as_ref().and_then(|k| k.kid.clone()) {
                    backend.set_current(&kid);
                }
                if key.attributes.as_ref().and_then(|a| a.enabled) == Some(false) {
                    tracing::warn!(backend = name, key = %backend.key_name, "the Key Vault key is disabled");
                }
            }
            Err(e) => {
                let e = backend.classify(e);
                tracing::warn!(backend = name, error = %e, "cannot read the Key Vault key; will retry on first use");
            }
        }
        Ok(backend)
    }

    fn set_current(&self, kid: &str) {
        let mut current = self.current_kid.write().unwrap_or_else(|p| p.into_inner());
        if *current != kid {
            *current = kid.to_owned();
        }
    }

    fn key_prefix(&self) -> String {
        format!("{}/keys/{}/", self.vault_url, self.key_name)
    }

    /// Sorts the client's failures into what a caller can do about them.
    fn classify(&self, e: azure_core::Error) -> KmsError {
        let key = format!("{}/keys/{}", self.vault_url, self.key_name);
        let unusable = |reason: String| KmsError::KeyUnusable { backend: self.name.clone(), reason };
        let unavailable = |reason: String| KmsError::Unavailable { backend: self.name.clone(), reason };
        match e.kind() {
            ErrorKind::HttpResponse { status, error_code, raw_response } => {
                let detail = raw_response
                    .as_ref()
                    .and_then(|raw| serde_json::from_slice::<serde_json::Value>(raw.body().as_ref()).ok());
                let field = |path: &[&str]| {
                    let mut value = detail.as_ref()?;
                    for step in path {
                        value = value.get(step)?;
                    }
                    value.as_str().map(str::to_owned)
                };
                let message = field(&["error", "message"]).unwrap_or_default();
                let inner = field(&["error", "innererror", "code"]).unwrap_or_default();
                let code = error_code.clone().unwrap_or_default();
                match u16::from(*status) {
                    403 if inner == "KeyDisabled" => {
                        unusable(format!("Key Vault key {key} is disabled: enable it to read data ({message})"))
                    }
                    403 => unusable(format!(
                        "Key Vault refused ({code} {inner}): grant wrapKey and unwrapKey on {key} \
                         (role Key Vault Crypto Service Encryption User): {message}"
                    )),
                    404 => unusable(format!("Key Vault key {key} does not exist: {message}")),
                    401 => unusable(format!("Key Vault rejected keymesh's token: {message}")),
                    400 => KmsError::UnwrapFailed { backend: self.name.clone() },
                    status => unavailable(format!("Key Vault answered {status} {code}: {message}")),
                }
            }
            ErrorKind::Credential => unavailable(format!("cannot get a token for Key Vault: {e}")),
            ErrorKind::Connection | ErrorKind::Io => unavailable(format!("request failed: {}", crate::error_chain(&e))),
            _ => KmsError::Config { reason: format!("{}: {}", self.name, crate::error_chain(&e)) },
        }
    }
}

fn url_host(url: &str) -> Option<String> {
    let rest = url.strip_prefix("https://")?;
    let host = rest.split(['/', ':']).next()?;
    (!host.is_empty()).then(|| host.to_owned())
}

/// The binding carried inside the wrap.
fn binding(context: &WrapContext) -> [u8; BINDING_LEN] {
    Sha256::digest(context.to_aad()).into()
}

#[async_trait::async_trait]
impl KeyEncryptionBackend for AzureKms {
    async fn wrap(&self, dek: &SecretKey, context: &WrapContext) -> Result<WrappedKey, KmsError> {
        let mut value = Zeroizing::new(dek.expose_secret().to_vec());
        value.extend_from_slice(&binding(context));
        let parameters = KeyOperationParameters {
            algorithm: Some(EncryptionAlgorithm::RsaOaep256),
            value: Some(value.to_vec()),
            ..Default::default()
        };
        let options = KeyClientWrapKeyOptions { key_version: self.pinned_version.clone(), ..Default::default() };
        let body = parameters.try_into().map_err(|e| self.classify(e))?;
        let result = self
            .client
            .wrap_key(&self.key_name, body, Some(options))
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| self.classify(e))?;
        let (Some(kid), Some(wrapped)) = (result.kid, result.result) else {
            return Err(KmsError::Unavailable {
                backend: self.name.clone(),
                reason: "Key Vault answered wrapKey without a key id or value".into(),
            });
        };
        if !kid.starts_with(&self.key_prefix()) {
            return Err(KmsError::Unavailable {
                backend: self.name.clone(),
                reason: format!("Key Vault wrapped with an unexpected key {kid:?}"),
            });
        }
        self.set_current(&kid);
        Ok(WrappedKey { backend: self.name.clone(), kek_id: kid, ciphertext: wrapped })
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext) -> Result<SecretKey, KmsError> {
        let Some(version) = wrapped.kek_id.strip_prefix(&self.key_prefix()).filter(|v| !v.contains('/')) else {
            return Err(KmsError::UnknownKek { backend: wrapped.backend.clone(), kek_id: wrapped.kek_id.clone() });
        };
        let parameters = KeyOperationParameters {
            algorithm: Some(EncryptionAlgorithm::RsaOaep256),
            value: Some(wrapped.ciphertext.clone()),
            ..Default::default()
        };
        let body = parameters.try_into().map_err(|e| self.classify(e))?;
        let result = self
            .client
            .unwrap_key(&self.key_name, version, body, None)
            .await
            .and_then(|r| r.into_model())
            .map_err(|e| self.classify(e))?;
        let value = Zeroizing::new(result.result.unwrap_or_default());
        let refused = || KmsError::UnwrapFailed { backend: self.name.clone() };
        let split = value.len().checked_sub(BINDING_LEN).filter(|n| *n > 0).ok_or_else(refused)?;
        let (dek, tail) = value.split_at(split);
        if !bool::from(tail.ct_eq(&binding(context))) {
            return Err(refused());
        }
        Ok(SecretKey::from_bytes(dek.to_vec()))
    }

    fn kind(&self) -> &'static str {
        "azure"
    }

    fn describe(&self) -> BackendDescription {
        let kid = self.current_kid.read().unwrap_or_else(|p| p.into_inner()).clone();
        BackendDescription {
            backend: self.name.clone(),
            detail: format!("Azure Key Vault {}/keys/{}", self.vault_url, self.key_name),
            kek_id: if kid.is_empty() { format!("{}/keys/{}", self.vault_url, self.key_name) } else { kid },
        }
    }

    fn is_current(&self, wrapped: &WrappedKey) -> bool {
        let kid = self.current_kid.read().unwrap_or_else(|p| p.into_inner()).clone();
        if kid.is_empty() {
            return wrapped.kek_id.starts_with(&self.key_prefix());
        }
        wrapped.kek_id == kid
    }

    async fn health(&self) -> Result<(), KmsError> {
        crate::probe(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_hosts() {
        assert_eq!(url_host("https://v.vault.azure.net/").as_deref(), Some("v.vault.azure.net"));
        assert_eq!(url_host("https://v.vault.azure.net:8443").as_deref(), Some("v.vault.azure.net"));
        assert_eq!(url_host("http://v.vault.azure.net/"), None);
    }

    #[test]
    fn the_binding_depends_on_every_field() {
        let context = WrapContext { tenant_id: "t".into(), key_id: "k".into(), version: 1, algorithm: "A".into() };
        let other = WrapContext { version: 2, ..context.clone() };
        assert_ne!(binding(&context), binding(&other));
    }
}

//! Google Cloud KMS as a KEK backend, through Google's official `google-cloud-kms-v1` client (REST/JSON).
//! The KEK is a symmetric CryptoKey that never leaves Cloud KMS: DEKs go through `Encrypt` and come back
//! through `Decrypt`, bound to their tenant, key, version and algorithm through Cloud KMS's additional
//! authenticated data.
//!
//! Every request and answer carries CRC32C checksums, as Google's data-integrity guide asks: the client
//! library verifies none, so a bit flipped on the way is caught here and reported as a transient failure
//! (the outer [`crate::Resilient`] retries it) instead of a DEK silently wrong.
//!
//! Credentials are Application Default Credentials (a service-account file, workload identity, or the
//! metadata server). The client's own retries are off; [`crate::Resilient`] owns deadlines and retries.
//!
//! The KEK id of a wrap is the CryptoKeyVersion that made it, so rotating the CryptoKey's primary version
//! makes older wraps non-current for a re-wrap; Cloud KMS still decrypts them while their version is
//! enabled.

use std::{sync::RwLock, time::Duration};

use google_cloud_gax::{
    error::{Error as GaxError, rpc::Code},
    retry_policy::NeverRetry,
};
use google_cloud_kms_v1::client::KeyManagementService;
use keymesh_crypto::SecretKey;

use crate::{BackendDescription, KeyEncryptionBackend, KmsError, WrapContext, WrappedKey};

const CASTAGNOLI: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

fn crc32c(bytes: &[u8]) -> i64 {
    i64::from(CASTAGNOLI.checksum(bytes))
}

/// Settings of the GCP backend.
#[derive(Debug, Clone)]
pub struct GcpKmsConfig {
    /// `projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>`.
    pub crypto_key: String,
    /// Endpoint override (a regional or private endpoint, a test server); `https://cloudkms.googleapis.com`
    /// otherwise.
    pub endpoint: Option<String>,
    /// Deadline of one request.
    pub request_timeout: Duration,
    /// Send no credentials: for a local test server only.
    pub anonymous: bool,
}

/// The Google Cloud KMS backend.
pub struct GcpKms {
    name: String,
    config: GcpKmsConfig,
    client: KeyManagementService,
    /// The CryptoKeyVersion of the last wrap: the key's primary as far as this process knows.
    primary_version: RwLock<String>,
}

impl GcpKms {
    /// Builds the client (resolving Application Default Credentials unless anonymous).
    pub async fn connect(name: &str, config: GcpKmsConfig) -> Result<Self, KmsError> {
        let invalid = |reason: String| KmsError::Config { reason: format!("kms.backends.{name}: {reason}") };
        let parts: Vec<&str> = config.crypto_key.split('/').collect();
        if parts.len() != 8
            || parts[0] != "projects"
            || parts[2] != "locations"
            || parts[4] != "keyRings"
            || parts[6] != "cryptoKeys"
            || parts.iter().any(|p| p.is_empty())
        {
            return Err(invalid(format!(
                "crypto_key {:?} is not projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>",
                config.crypto_key
            )));
        }
        let mut builder =
            KeyManagementService::builder().with_retry_policy(NeverRetry).with_attempt_timeout(config.request_timeout);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if config.anonymous {
            builder = builder.with_credentials(google_cloud_auth::credentials::anonymous::Builder::new().build());
        }
        let client = builder.build().await.map_err(|e| invalid(format!("cannot build the Cloud KMS client: {e}")))?;
        let backend = Self { name: name.to_owned(), primary_version: RwLock::new(String::new()), config, client };
        // A probe learns the primary version (reading the CryptoKey needs a role keymesh does not otherwise
        // need) and shows a wrong key name or grant in the start-up log. An outage is not fatal.
        if let Err(e) = crate::probe(&backend).await {
            tracing::warn!(backend = name, error = %e, "Cloud KMS probe failed; will retry on first use");
        }
        Ok(backend)
    }

    fn unavailable(&self, reason: String) -> KmsError {
        KmsError::Unavailable { backend: self.name.clone(), reason }
    }

    fn unusable(&self, reason: String) -> KmsError {
        KmsError::KeyUnusable { backend: self.name.clone(), reason }
    }

    /// Sorts the client's failures into what a caller can do about them. Codes decide; messages only tell
    /// INVALID_ARGUMENT cases apart.
    fn classify(&self, e: GaxError) -> KmsError {
        let key = &self.config.crypto_key;
        if let Some(status) = e.status() {
            let message = &status.message;
            return match status.code {
                Code::InvalidArgument if message.starts_with("Decryption failed") => {
                    KmsError::UnwrapFailed { backend: self.name.clone() }
                }
                // Corrupted on the way: Google's guidance is a bounded retry.
                Code::InvalidArgument if message.contains("checksum") => {
                    self.unavailable(format!("Cloud KMS saw a checksum mismatch: {message}"))
                }
                Code::FailedPrecondition => {
                    self.unusable(format!("a version of {key} is not usable (disabled or destroyed?): {message}"))
                }
                Code::NotFound => self.unusable(format!("CryptoKey {key} does not exist: {message}")),
                Code::PermissionDenied | Code::Unauthenticated => self.unusable(format!(
                    "the credentials may not use {key} (grant roles/cloudkms.cryptoKeyEncrypterDecrypter): {message}"
                )),
                Code::InvalidArgument => self.unusable(format!("Cloud KMS refused the request: {message}")),
                code => self.unavailable(format!("Cloud KMS answered {}: {message}", code.name())),
            };
        }
        if e.is_timeout() {
            return self.unavailable("the request timed out".into());
        }
        if let Some(code) = e.http_status_code() {
            // A proxy or load balancer answered without a Status body.
            return if code == 429 || code >= 500 {
                self.unavailable(format!("HTTP {code}"))
            } else {
                self.unusable(format!("HTTP {code}: {e}"))
            };
        }
        // Connection refused or reset, credentials not obtainable, an unreadable answer.
        self.unavailable(format!("request failed: {e}"))
    }

    fn corrupted(&self, what: &str) -> KmsError {
        self.unavailable(format!("{what} failed its CRC32C check on the way back; retry"))
    }
}

#[async_trait::async_trait]
impl KeyEncryptionBackend for GcpKms {
    async fn wrap(&self, dek: &SecretKey, context: &WrapContext) -> Result<WrappedKey, KmsError> {
        let aad = context.to_aad();
        let plaintext = dek.expose_secret();
        let response = self
            .client
            .encrypt()
            .set_name(self.config.crypto_key.clone())
            .set_plaintext(plaintext.to_vec())
            .set_plaintext_crc32c(crc32c(plaintext))
            .set_additional_authenticated_data(aad.clone())
            .set_additional_authenticated_data_crc32c(crc32c(&aad))
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        if !response.verified_plaintext_crc32c || !response.verified_additional_authenticated_data_crc32c {
            return Err(self.corrupted("the request"));
        }
        if response.ciphertext.is_empty() || response.ciphertext_crc32c != Some(crc32c(&response.ciphertext)) {
            return Err(self.corrupted("the ciphertext"));
        }
        let version_prefix = format!("{}/cryptoKeyVersions/", self.config.crypto_key);
        if !response.name.starts_with(&version_prefix) {
            return Err(self.unavailable(format!("Cloud KMS encrypted with an unexpected key {:?}", response.name)));
        }
        *self.primary_version.write().unwrap_or_else(|p| p.into_inner()) = response.name.clone();
        Ok(WrappedKey { backend: self.name.clone(), kek_id: response.name, ciphertext: response.ciphertext.to_vec() })
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext) -> Result<SecretKey, KmsError> {
        if !wrapped.kek_id.starts_with(&format!("{}/cryptoKeyVersions/", self.config.crypto_key)) {
            return Err(KmsError::UnknownKek { backend: wrapped.backend.clone(), kek_id: wrapped.kek_id.clone() });
        }
        let aad = context.to_aad();
        let response = self
            .client
            .decrypt()
            .set_name(self.config.crypto_key.clone())
            .set_ciphertext(wrapped.ciphertext.clone())
            .set_ciphertext_crc32c(crc32c(&wrapped.ciphertext))
            .set_additional_authenticated_data(aad.clone())
            .set_additional_authenticated_data_crc32c(crc32c(&aad))
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        if response.plaintext_crc32c != Some(crc32c(&response.plaintext)) {
            return Err(self.corrupted("the plaintext"));
        }
        Ok(SecretKey::from_bytes(response.plaintext.to_vec()))
    }

    fn kind(&self) -> &'static str {
        "gcp"
    }

    fn describe(&self) -> BackendDescription {
        let version = self.primary_version.read().unwrap_or_else(|p| p.into_inner()).clone();
        BackendDescription {
            backend: self.name.clone(),
            detail: format!("Cloud KMS {}", self.config.crypto_key),
            kek_id: if version.is_empty() { self.config.crypto_key.clone() } else { version },
        }
    }

    fn is_current(&self, wrapped: &WrappedKey) -> bool {
        let version = self.primary_version.read().unwrap_or_else(|p| p.into_inner()).clone();
        // Before this process has wrapped anything it does not know the primary version: any wrap of the
        // configured key is taken as current rather than re-wrapped on a guess.
        if version.is_empty() {
            return wrapped.kek_id.starts_with(&format!("{}/cryptoKeyVersions/", self.config.crypto_key));
        }
        wrapped.kek_id == version
    }

    async fn health(&self) -> Result<(), KmsError> {
        crate::probe(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_castagnoli() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}

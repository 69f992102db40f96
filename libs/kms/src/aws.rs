//! AWS KMS as a KEK backend, through `aws-sdk-kms`. The KEK is a symmetric KMS key that never leaves KMS:
//! DEKs go through `Encrypt` and come back through `Decrypt`, bound to their tenant, key, version and
//! algorithm through KMS's EncryptionContext, which KMS logs in CloudTrail and refuses to decrypt without.
//!
//! Credentials come from the SDK's standard chain (environment, profile, web identity / IRSA, ECS and EC2
//! metadata). The SDK's own retries are off: the keyring wraps every remote backend in
//! [`crate::Resilient`], which owns deadlines, retries and the circuit breaker, so that attempts are not
//! multiplied by two retry loops.
//!
//! The KEK id of a wrap is the key ARN KMS reports, so a key given by alias is recorded as the key it
//! resolved to, and pointing the alias at a new key makes older wraps non-current for a re-wrap. KMS's own
//! yearly rotation keeps the ARN; KMS decrypts older ciphertexts itself.

use std::{collections::HashMap, sync::RwLock, time::Duration};

use aws_config::{BehaviorVersion, Region, retry::RetryConfig, timeout::TimeoutConfig};
use aws_sdk_kms::{
    error::{ProvideErrorMetadata, SdkError},
    primitives::Blob,
};
use keymesh_crypto::SecretKey;

use crate::{BackendDescription, KeyEncryptionBackend, KmsError, WrapContext, WrappedKey};

/// Settings of the AWS KMS backend.
#[derive(Debug, Clone)]
pub struct AwsKmsConfig {
    /// Key id, key ARN, alias name (`alias/...`) or alias ARN.
    pub key_id: String,
    /// Region; the SDK's chain (AWS_REGION, profile) when unset.
    pub region: Option<String>,
    /// Endpoint override: a VPC endpoint, a FIPS endpoint, or a local test server.
    pub endpoint: Option<String>,
    /// Deadline of one HTTP request.
    pub request_timeout: Duration,
    /// Credentials to use instead of the standard chain: for embedding and tests, not the configuration
    /// file (which never holds secrets).
    pub credentials: Option<aws_sdk_kms::config::Credentials>,
}

/// The AWS KMS backend.
pub struct AwsKms {
    name: String,
    config: AwsKmsConfig,
    client: aws_sdk_kms::Client,
    /// The ARN KMS last reported for the configured key id.
    key_arn: RwLock<String>,
}

impl AwsKms {
    /// Builds the client and resolves the key. A key that cannot be described (KMS unreachable, not yet
    /// allowed) is logged, not fatal: calls report it until it answers. A key that cannot encrypt is a
    /// configuration error.
    pub async fn connect(name: &str, config: AwsKmsConfig) -> Result<Self, KmsError> {
        let mut loader =
            aws_config::defaults(BehaviorVersion::latest()).retry_config(RetryConfig::disabled()).timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.request_timeout)
                    .operation_attempt_timeout(config.request_timeout)
                    .build(),
            );
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(endpoint) = &config.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(credentials) = &config.credentials {
            loader = loader.credentials_provider(credentials.clone());
        }
        let shared = loader.load().await;
        if shared.region().is_none() {
            return Err(KmsError::Config {
                reason: format!("kms.backends.{name}: no region: set `region` or AWS_REGION"),
            });
        }
        let backend = Self {
            name: name.to_owned(),
            key_arn: RwLock::new(config.key_id.clone()),
            client: aws_sdk_kms::Client::new(&shared),
            config,
        };
        match backend.client.describe_key().key_id(&backend.config.key_id).send().await {
            Ok(described) => {
                if let Some(meta) = described.key_metadata() {
                    if meta.key_usage().is_some_and(|u| u.as_str() != "ENCRYPT_DECRYPT")
                        || meta.key_spec().is_some_and(|s| s.as_str() != "SYMMETRIC_DEFAULT")
                    {
                        return Err(KmsError::Config {
                            reason: format!(
                                "kms.backends.{name}: KMS key {} is not a symmetric ENCRYPT_DECRYPT key",
                                backend.config.key_id
                            ),
                        });
                    }
                    if let Some(arn) = meta.arn() {
                        backend.set_arn(arn);
                    }
                    if !meta.enabled() {
                        tracing::warn!(backend = name, key = %backend.config.key_id, "the KMS key is disabled");
                    }
                }
            }
            Err(e) => {
                let e = backend.classify(e);
                tracing::warn!(backend = name, error = %e, "cannot describe the KMS key; will retry on first use");
            }
        }
        Ok(backend)
    }

    fn arn(&self) -> String {
        self.key_arn.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_arn(&self, arn: &str) {
        let mut current = self.key_arn.write().unwrap_or_else(|p| p.into_inner());
        if *current != arn {
            *current = arn.to_owned();
        }
    }

    /// The context as KMS's encryption context: plain key-value pairs, visible in CloudTrail.
    fn encryption_context(context: &WrapContext) -> HashMap<String, String> {
        HashMap::from([
            ("keymesh:tenant".to_owned(), context.tenant_id.clone()),
            ("keymesh:key".to_owned(), context.key_id.clone()),
            ("keymesh:version".to_owned(), context.version.to_string()),
            ("keymesh:algorithm".to_owned(), context.algorithm.clone()),
        ])
    }

    /// Sorts the SDK's failures into what a caller can do about them.
    fn classify<E, R>(&self, e: SdkError<E, R>) -> KmsError
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        let key = &self.config.key_id;
        let unusable = |reason: String| KmsError::KeyUnusable { backend: self.name.clone(), reason };
        let unavailable = |reason: String| KmsError::Unavailable { backend: self.name.clone(), reason };
        match &e {
            SdkError::ServiceError(service) => {
                let err = service.err();
                let code = err.code().unwrap_or("unknown");
                let message = err.message().unwrap_or("");
                match code {
                    "InvalidCiphertextException" | "IncorrectKeyException" => {
                        KmsError::UnwrapFailed { backend: self.name.clone() }
                    }
                    "DisabledException" => unusable(format!("KMS key {key} is disabled: enable it to read data")),
                    "KMSInvalidStateException" => unusable(format!(
                        "KMS key {key} is not usable in its state (pending deletion or import): {message}"
                    )),
                    "NotFoundException" => unusable(format!("KMS key {key} does not exist: {message}")),
                    "AccessDeniedException"
                    | "UnrecognizedClientException"
                    | "InvalidSignatureException"
                    | "ExpiredTokenException"
                    | "IncompleteSignature"
                    | "MissingAuthenticationToken" => unusable(format!(
                        "KMS refused the credentials ({code}): allow kms:Encrypt and kms:Decrypt on {key}: {message}"
                    )),
                    "InvalidKeyUsageException" => unusable(format!("KMS key {key} cannot encrypt: {message}")),
                    // Throttling, KMS or its dependencies failing, a custom key store offline: transient.
                    _ => unavailable(format!("KMS answered {code}: {message}")),
                }
            }
            SdkError::TimeoutError(_) => unavailable("the request timed out".into()),
            SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
                unavailable(format!("request failed: {}", crate::error_chain(&e)))
            }
            _ => KmsError::Config { reason: format!("{}: {}", self.name, crate::error_chain(&e)) },
        }
    }
}

#[async_trait::async_trait]
impl KeyEncryptionBackend for AwsKms {
    async fn wrap(&self, dek: &SecretKey, context: &WrapContext) -> Result<WrappedKey, KmsError> {
        let output = self
            .client
            .encrypt()
            .key_id(&self.config.key_id)
            .plaintext(Blob::new(dek.expose_secret().to_vec()))
            .set_encryption_context(Some(Self::encryption_context(context)))
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        let (Some(arn), Some(blob)) = (output.key_id(), output.ciphertext_blob()) else {
            return Err(KmsError::Unavailable {
                backend: self.name.clone(),
                reason: "KMS answered Encrypt without a key id or ciphertext".into(),
            });
        };
        self.set_arn(arn);
        Ok(WrappedKey { backend: self.name.clone(), kek_id: arn.to_owned(), ciphertext: blob.as_ref().to_vec() })
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext) -> Result<SecretKey, KmsError> {
        let mut output = self
            .client
            .decrypt()
            // Naming the key makes KMS refuse a ciphertext of another key instead of decrypting with it.
            .key_id(&wrapped.kek_id)
            .ciphertext_blob(Blob::new(wrapped.ciphertext.clone()))
            .set_encryption_context(Some(Self::encryption_context(context)))
            .send()
            .await
            .map_err(|e| self.classify(e))?;
        match output.plaintext.take() {
            Some(plaintext) => Ok(SecretKey::from_bytes(plaintext.into_inner())),
            None => Err(KmsError::Unavailable {
                backend: self.name.clone(),
                reason: "KMS answered Decrypt without plaintext".into(),
            }),
        }
    }

    fn kind(&self) -> &'static str {
        "aws"
    }

    fn describe(&self) -> BackendDescription {
        let arn = self.arn();
        let region = self.client.config().region().map(|r| r.to_string()).unwrap_or_default();
        BackendDescription { backend: self.name.clone(), detail: format!("AWS KMS {arn} in {region}"), kek_id: arn }
    }

    async fn health(&self) -> Result<(), KmsError> {
        crate::probe(self).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_encryption_context_names_every_binding() {
        let context = WrapContext { tenant_id: "t".into(), key_id: "k".into(), version: 3, algorithm: "A".into() };
        let map = AwsKms::encryption_context(&context);
        assert_eq!(map.len(), 4);
        assert_eq!(map.get("keymesh:version").map(String::as_str), Some("3"));
    }
}

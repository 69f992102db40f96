//! Bring your own key: GetWrappingKey hands out a fresh RSA public key and an import token; the customer
//! wraps key material with it (RSA-OAEP-SHA-256, or RSA_AES_KEY_WRAP_SHA_256) outside keymesh — AES and HMAC keys
//! as raw bytes, private keys (signing, HPKE, RSA-OAEP) as PKCS#8 DER; and
//! ImportKeyVersion unwraps it and stores it, like any version, wrapped by the KEK.
//!
//! The import token is stateless, so any replica can finish an import another began: it carries the RSA
//! private key wrapped by the KEK, bound (as AAD) to the tenant, the key, the wrapping scheme and the
//! expiry, so a token cannot be replayed against another key or past its time.

use base64::{Engine, engine::general_purpose::STANDARD};
use keymesh_crypto::{
    KeyAlgorithm,
    key_import::{self, ImportWrapping},
};
use keymesh_kms::{WrapContext, WrapSet, WrappedKey};
use keymesh_proto::algorithm::FromProto;
use keymesh_proto::v1 as pb;
use keymesh_store::{keys::KeyLookup, now_millis};
use serde::{Deserialize, Serialize};
use tonic::{Request, Response, Status};

use super::{KeyRpc, MANAGERS, require_key};
use crate::{convert, error::KeyError, lifecycle};

/// How long an import token stays valid (as in AWS KMS).
const TOKEN_LIFETIME_MS: i64 = 24 * 60 * 60 * 1000;

/// What the opaque import token holds.
#[derive(Serialize, Deserialize)]
struct ImportToken {
    v: u8,
    tenant_id: String,
    key_id: String,
    wrapping: i32,
    expires_at: i64,
    kek_backend: String,
    kek_id: String,
    /// Base64 of the RSA private key (PKCS#8 DER) wrapped by the KEK.
    wrapped_private_key: String,
}

fn token_context(tenant_id: &str, key_id: &str, wrapping: i32, expires_at: i64) -> WrapContext {
    WrapContext {
        tenant_id: tenant_id.to_owned(),
        key_id: key_id.to_owned(),
        version: 0,
        algorithm: format!("import-wrapping-key/{wrapping}/{expires_at}"),
    }
}

fn wrapping_of(value: i32) -> Result<ImportWrapping, KeyError> {
    match pb::WrappingAlgorithm::try_from(value) {
        Ok(pb::WrappingAlgorithm::RsaOaepSha256) => Ok(ImportWrapping::RsaOaepSha256),
        Ok(pb::WrappingAlgorithm::RsaAesKeyWrapSha256) => Ok(ImportWrapping::RsaAesKeyWrapSha256),
        _ => Err(KeyError::InvalidArgument {
            field: "wrapping_algorithm",
            reason: "use WRAPPING_ALGORITHM_RSA_OAEP_SHA256 or WRAPPING_ALGORITHM_RSA_AES_KEY_WRAP_SHA256".into(),
        }),
    }
}

fn invalid_token(reason: &str) -> KeyError {
    KeyError::InvalidArgument { field: "import_token", reason: format!("{reason}; call GetWrappingKey for a new one") }
}

/// Largest wrapped material accepted.
const MAX_WRAPPED_LEN: usize = 8192;

impl KeyRpc {
    pub(super) async fn handle_get_wrapping_key(
        &self,
        request: Request<pb::GetWrappingKeyRequest>,
    ) -> Result<Response<pb::GetWrappingKeyResponse>, Status> {
        let (claims, mut audit) = self.authorize(&request, "GetWrappingKey", MANAGERS).await?;
        let request = request.into_inner();
        let result = async {
            require_key(&request.key)?;
            wrapping_of(request.wrapping_algorithm)?;
            let bits = match pb::WrappingKeySpec::try_from(request.wrapping_key_spec) {
                Ok(pb::WrappingKeySpec::Rsa2048) => 2048,
                Ok(pb::WrappingKeySpec::Rsa3072 | pb::WrappingKeySpec::Unspecified) => 3072,
                Ok(pb::WrappingKeySpec::Rsa4096) => 4096,
                Err(_) => {
                    return Err(KeyError::InvalidArgument {
                        field: "wrapping_key_spec",
                        reason: format!("unknown value {}", request.wrapping_key_spec),
                    });
                }
            };
            let Some(record) = self
                .store
                .repo()
                .load(KeyLookup::InTenant { tenant_id: &claims.tenant, name_or_id: &request.key })
                .await?
            else {
                return Err(self.store.not_in_tenant(&request.key).await);
            };
            audit.resource(&record.key.id, 0, record.key.algorithm);
            if !lifecycle::is_external(&record) {
                return Err(KeyError::FailedPrecondition(format!(
                    "key {:?} holds generated material; create a key with origin KEY_ORIGIN_EXTERNAL to import",
                    record.key.name
                )));
            }
            // RSA key generation takes a while (4096 bits: up to a second): keep it off the async workers.
            let pair = tokio::task::spawn_blocking(move || key_import::generate_wrapping_key(bits))
                .await
                .map_err(|_| KeyError::FailedPrecondition("wrapping key generation was interrupted".into()))??;
            let expires_at = now_millis() + TOKEN_LIFETIME_MS;
            let context = token_context(&claims.tenant, &record.key.id, request.wrapping_algorithm, expires_at);
            let wrapped = self.store.kms().for_tenant(&claims.tenant).wrap_primary(&pair.private_der, &context).await?;
            let token = ImportToken {
                v: 1,
                tenant_id: claims.tenant.clone(),
                key_id: record.key.id.clone(),
                wrapping: request.wrapping_algorithm,
                expires_at,
                kek_backend: wrapped.backend,
                kek_id: wrapped.kek_id,
                wrapped_private_key: STANDARD.encode(&wrapped.ciphertext),
            };
            Ok(pb::GetWrappingKeyResponse {
                import_token: serde_json::to_vec(&token).map_err(|_| invalid_token("cannot encode"))?,
                public_key_pem: pair.public_pem,
                expire_time: Some(convert::timestamp(expires_at)),
            })
        }
        .await;
        audit.finish(&self.audit, result).await
    }

    pub(super) async fn handle_import_key_version(
        &self,
        request: Request<pb::ImportKeyVersionRequest>,
    ) -> Result<Response<pb::ImportKeyVersionResponse>, Status> {
        let (claims, mut audit) = self.authorize(&request, "ImportKeyVersion", MANAGERS).await?;
        let request = request.into_inner();
        let result = async {
            require_key(&request.key)?;
            let wrapping = wrapping_of(request.wrapping_algorithm)?;
            // An RSA-4096 private key as PKCS#8 is about 2.4 KB, plus the RSA-wrapped AES key.
            if request.wrapped_key_material.is_empty() || request.wrapped_key_material.len() > MAX_WRAPPED_LEN {
                return Err(KeyError::InvalidArgument {
                    field: "wrapped_key_material",
                    reason: format!(
                        "give the material (at most {MAX_WRAPPED_LEN} bytes once wrapped) wrapped with the public key \
                         from GetWrappingKey"
                    ),
                });
            }
            let token: ImportToken =
                serde_json::from_slice(&request.import_token).map_err(|_| invalid_token("not an import token"))?;
            if token.v != 1 || token.tenant_id != claims.tenant {
                return Err(invalid_token("not an import token of your tenant"));
            }
            if token.wrapping != request.wrapping_algorithm {
                return Err(invalid_token("issued for another wrapping_algorithm"));
            }
            if token.expires_at <= now_millis() {
                return Err(invalid_token("expired"));
            }
            let mut locked =
                self.store.lock(KeyLookup::InTenant { tenant_id: &claims.tenant, name_or_id: &request.key }).await?;
            audit.resource(&locked.record.key.id, locked.record.next_version(), locked.record.key.algorithm);
            if token.key_id != locked.record.key.id {
                return Err(invalid_token("issued for another key"));
            }
            let wrapped_private = WrappedKey {
                backend: token.kek_backend,
                kek_id: token.kek_id,
                ciphertext: STANDARD.decode(&token.wrapped_private_key).map_err(|_| invalid_token("corrupt"))?,
            };
            let context = token_context(&token.tenant_id, &token.key_id, token.wrapping, token.expires_at);
            let keyring = self.store.kms().for_tenant(&token.tenant_id);
            let private_der = match keyring.unwrap(&WrapSet::single(wrapped_private), &context).await {
                Ok(der) => der,
                // An outage or a refusing KMS is not the caller's fault: say so rather than blame the token.
                Err(e @ (keymesh_kms::KmsError::Unavailable { .. } | keymesh_kms::KmsError::KeyUnusable { .. })) => {
                    return Err(e.into());
                }
                Err(_) => return Err(invalid_token("not valid")),
            };
            let material =
                key_import::unwrap_imported(&private_der, wrapping, &request.wrapped_key_material).map_err(|_| {
                    KeyError::InvalidArgument {
                        field: "wrapped_key_material",
                        reason: "cannot be unwrapped with this import token's key and wrapping_algorithm".into(),
                    }
                })?;
            let algorithm = KeyAlgorithm::from_i32(locked.record.key.algorithm).ok_or_else(|| {
                KeyError::FailedPrecondition(format!(
                    "key {:?} has an algorithm this build lacks",
                    locked.record.key.name
                ))
            })?;
            // Symmetric and MAC keys are raw bytes; private keys are PKCS#8 DER, stored in OpenSSL's canonical
            // encoding once they parse as the exact kind of key the algorithm needs.
            let invalid = |e: keymesh_crypto::CryptoError| KeyError::InvalidArgument {
                field: "wrapped_key_material",
                reason: e.to_string(),
            };
            let material = if algorithm.is_asymmetric() {
                algorithm.private_key(&material).and_then(|key| key.to_pkcs8()).map_err(invalid)?
            } else {
                algorithm.check_material(&material).map_err(invalid)?;
                material
            };
            let warnings = self.admit_new_material(&locked.record)?;
            audit.policy_warnings(&warnings);
            let number = locked.record.next_version();
            let version =
                self.store.wrap_version(&locked.record, number, algorithm, &material, pb::KeyOrigin::External).await?;
            drop(material);
            lifecycle::import_version(&mut locked.record, version, now_millis())?;
            lifecycle::refresh_maintenance(&mut locked.record, now_millis());
            let record = self.store.commit(locked).await?;
            tracing::info!(key_id = %record.key.id, version = number, "imported key material");
            Ok(pb::ImportKeyVersionResponse { key: Some(convert::record_to_proto(&record)), version: number })
        }
        .await;
        audit.finish(&self.audit, result).await
    }
}

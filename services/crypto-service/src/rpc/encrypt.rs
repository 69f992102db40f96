//! Encrypt: seals a plaintext under the key's ACTIVE version in the v3 ciphertext format, with key
//! commitment and the caller's AAD and encryption context bound.

use keymesh_crypto::{
    CryptoError,
    ciphertext::{self, Binding, KeyRef, SealRequest},
};
use keymesh_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Audited, CryptoRpc, UNARY_LIMIT, context_of};
use crate::{dek_cache::DekRequest, error::CryptoServiceError};

impl CryptoRpc {
    pub(super) async fn handle_encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let claims = self.caller(&request).await?;
        let mut audit = Audited::start("Encrypt", &claims);
        let request = request.into_inner();
        let result = async {
            if !request.batch.is_empty() {
                return Err(CryptoServiceError::Unimplemented("batch Encrypt".into()).into());
            }
            if request.key.is_empty() {
                return Err(CryptoServiceError::InvalidArgument {
                    field: "key",
                    reason: "name the key to encrypt with".into(),
                }
                .into());
            }
            if request.plaintext.len() > UNARY_LIMIT {
                return Err(CryptoServiceError::InvalidArgument {
                    field: "plaintext",
                    reason: format!(
                        "{} bytes is over the unary limit of {UNARY_LIMIT} bytes; use EncryptStream for large data",
                        request.plaintext.len()
                    ),
                }
                .into());
            }
            // Authorize before any key material moves (by name here; by the stored name below when the
            // request gave a key id).
            if !request.key.starts_with("k_") {
                claims.require_key_operation(&request.key, pb::Operation::Encrypt)?;
            }
            let dek = self
                .deks
                .get_for_encryption(DekRequest {
                    tenant_id: &claims.tenant,
                    key: &request.key,
                    version: 0,
                    operation: pb::Operation::Encrypt,
                    on_behalf_of: &claims.sub,
                })
                .await?;
            audit.resource(&dek.key_id, dek.version, dek.algorithm.to_proto() as i32);
            claims.require_key_operation(&dek.key_name, pb::Operation::Encrypt)?;
            let context = context_of(request.encryption_context);
            let key_ref = KeyRef { key_id: dek.key_id.clone(), version: dek.version };
            let seal = SealRequest {
                key_name: &dek.key_name,
                key_ref: &key_ref,
                algorithm: dek.algorithm,
                binding: Binding { aad: &request.aad, context: Some(&context) },
            };
            let ciphertext = ciphertext::seal(&dek.material, &seal, &request.plaintext).map_err(|e| match e {
                CryptoError::TooLarge { size, limit, .. } => CryptoServiceError::InvalidArgument {
                    field: "plaintext",
                    reason: format!(
                        "{size} bytes is over the {limit}-byte limit of {} (key {:?}); use a key of another \
                         algorithm, such as AES-256-GCM, for larger data",
                        dek.algorithm.name(),
                        dek.key_name
                    ),
                },
                other => CryptoServiceError::Internal(other.to_string()),
            })?;
            Ok(pb::EncryptResponse {
                ciphertext,
                key_id: dek.key_id.clone(),
                key_version: dek.version,
                algorithm: dek.algorithm.to_proto() as i32,
                warnings: vec![],
                batch: vec![],
            })
        }
        .await;
        audit.finish(&self.audit, result)
    }
}

//! Decrypt: reads the ciphertext header, fetches the version it names (refused below
//! min_decryption_version or when retired), checks the key commitment and opens it. Every failure is the
//! same "decryption failed", except the documented context mismatch.

use keymesh_crypto::{
    CryptoError,
    ciphertext::{self, Binding},
};
use keymesh_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Audited, CryptoRpc, context_of};
use crate::{dek_cache::DekRequest, error::CryptoServiceError};

impl CryptoRpc {
    pub(super) async fn handle_decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let claims = self.caller(&request).await?;
        let mut audit = Audited::start("Decrypt", &claims);
        let request = request.into_inner();
        let result = async {
            if !request.batch.is_empty() {
                return Err(CryptoServiceError::Unimplemented("batch Decrypt".into()).into());
            }
            let parsed = ciphertext::parse(&request.ciphertext).map_err(|_| CryptoServiceError::DecryptionFailed)?;
            parsed.expect_key(&request.key).map_err(|e| match e {
                CryptoError::ContextMismatch { .. } => CryptoServiceError::ContextMismatch(e.to_string()),
                _ => CryptoServiceError::DecryptionFailed,
            })?;
            // Authorize on the name the header claims before any key material moves; the stored name is
            // checked again below (the header is authenticated only once the ciphertext opens).
            claims.require_key_operation(&parsed.key_name, pb::Operation::Decrypt)?;
            let dek = self
                .deks
                .get(DekRequest {
                    tenant_id: &claims.tenant,
                    key: &parsed.key_ref.key_id,
                    version: parsed.key_ref.version,
                    operation: pb::Operation::Decrypt,
                    on_behalf_of: &claims.sub,
                })
                .await
                .map_err(|e| match e {
                    // Unknown key ids (tampered, or another tenant's) look like any other bad ciphertext.
                    CryptoServiceError::KeyNotFound(_) => CryptoServiceError::DecryptionFailed,
                    other => other,
                })?;
            audit.resource(&dek.key_id, dek.version, dek.algorithm.to_proto() as i32);
            claims.require_key_operation(&dek.key_name, pb::Operation::Decrypt)?;
            if dek.algorithm != parsed.algorithm {
                return Err(CryptoServiceError::DecryptionFailed.into());
            }
            let context = context_of(request.encryption_context);
            let plaintext = parsed
                .open(&dek.material, Binding { aad: &request.aad, context: Some(&context) })
                .map_err(|_| CryptoServiceError::DecryptionFailed)?;
            Ok(pb::DecryptResponse {
                plaintext: plaintext.to_vec(),
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

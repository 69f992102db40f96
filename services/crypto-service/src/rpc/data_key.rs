//! GenerateDataKey and GenerateDataKeyWithoutPlaintext: a fresh random data key for client-side (envelope)
//! encryption, returned sealed under the named key, so Decrypt opens it later with the same AAD (and, under a
//! symmetric key, encryption context). Under a symmetric key the seal is a keymesh ciphertext; under a key
//! for encryption to a public key (HPKE, X-Wing HPKE, the document's ML-KEM hybrid, RSA-OAEP) it is the data
//! key encrypted to the public key, as a sender anywhere would make it: with X-Wing or the ML-KEM hybrid,
//! envelope encryption is post-quantum end to end. The caller needs the GENERATE_DATA_KEY permission; the
//! data key counts as one encryption under the key's usage limits.

use std::collections::HashMap;

use keymesh_mesh::auth::AccessClaims;
use keymesh_proto::v1 as pb;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::{
    Audited, CryptoRpc,
    encrypt::{Sealed, Sealing},
};
use crate::error::CryptoServiceError;

impl CryptoRpc {
    pub(super) async fn handle_generate_data_key(
        &self,
        request: Request<pb::GenerateDataKeyRequest>,
    ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
        let (claims, mut audit) = self.admit(&request, "GenerateDataKey").await?;
        let request = request.into_inner();
        let result = self
            .data_key(&claims, &mut audit, &request.key, request.key_spec, &request.aad, &request.encryption_context)
            .await
            .map(|(plaintext, sealed)| pb::GenerateDataKeyResponse {
                plaintext: plaintext.to_vec(),
                ciphertext: sealed.ciphertext,
                key_id: sealed.key_id,
                key_version: sealed.version,
            });
        audit.finish(&self.audit, result).await
    }

    pub(super) async fn handle_generate_data_key_without_plaintext(
        &self,
        request: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
    ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
        let (claims, mut audit) = self.admit(&request, "GenerateDataKeyWithoutPlaintext").await?;
        let request = request.into_inner();
        let result = self
            .data_key(&claims, &mut audit, &request.key, request.key_spec, &request.aad, &request.encryption_context)
            .await
            .map(|(_, sealed)| pb::GenerateDataKeyWithoutPlaintextResponse {
                ciphertext: sealed.ciphertext,
                key_id: sealed.key_id,
                key_version: sealed.version,
            });
        audit.finish(&self.audit, result).await
    }

    async fn data_key(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        key: &str,
        spec: i32,
        aad: &[u8],
        context: &HashMap<String, String>,
    ) -> Result<(Zeroizing<Vec<u8>>, Sealed), Status> {
        let len = match pb::DataKeySpec::try_from(spec) {
            Ok(pb::DataKeySpec::Aes256 | pb::DataKeySpec::Unspecified) => 32,
            Ok(pb::DataKeySpec::Aes128) => 16,
            Err(_) => {
                return Err(CryptoServiceError::InvalidArgument {
                    field: "key_spec",
                    reason: format!("unknown key spec {spec}; use DATA_KEY_SPEC_AES_256 or DATA_KEY_SPEC_AES_128"),
                }
                .into());
            }
        };
        let plaintext =
            keymesh_crypto::random::random_bytes(len).map_err(|e| CryptoServiceError::Internal(e.to_string()))?;
        let sealing = Sealing {
            permission: pb::Operation::GenerateDataKey,
            key,
            field: "key",
            plaintext: &plaintext,
            aad,
            context,
            to_public_key: true,
        };
        let sealed = self.seal_one(claims, audit, sealing).await?;
        Ok((plaintext, sealed))
    }
}

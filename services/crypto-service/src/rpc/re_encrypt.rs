//! ReEncrypt: opens a ciphertext and seals its plaintext again, under the source key's newest version or
//! another key, without the plaintext leaving the service. Unlike Vault's rewrap, the AAD and encryption
//! context are carried over (or replaced when asked), so the new ciphertext is bound as the old one was.
//! The caller needs the REENCRYPT operation on both keys, not DECRYPT: a rotation job can move ciphertexts
//! forward without being able to read them.

use keymesh_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{CryptoRpc, decrypt::Opening, encrypt::Sealing};

impl CryptoRpc {
    pub(super) async fn handle_re_encrypt(
        &self,
        request: Request<pb::ReEncryptRequest>,
    ) -> Result<Response<pb::ReEncryptResponse>, Status> {
        let (claims, mut source_audit) = self.admit(&request, "ReEncrypt").await?;
        let request = request.into_inner();
        // Two events, so the trail names both keys: the source opened, the destination sealed.
        // No size check here: the gRPC message limit bounds the ciphertext, and sealing checks the plaintext
        // against the unary limit with a message that points to streaming.
        let opening = Opening {
            permission: pb::Operation::Reencrypt,
            ciphertext: &request.ciphertext,
            key: "",
            aad: &request.source_aad,
            context: &request.source_encryption_context,
            public_key_version: None,
        };
        let opened = self.open_one(&claims, &mut source_audit, opening).await;
        let opened = match source_audit.finish(&self.audit, opened).await {
            Ok(opened) => opened.into_inner(),
            Err(status) => return Err(status),
        };
        let (aad, context) = if request.replace_aad {
            (&request.destination_aad, &request.destination_encryption_context)
        } else {
            (&request.source_aad, &request.source_encryption_context)
        };
        let mut destination_audit = self.audited("ReEncrypt", &claims);
        let sealing = Sealing {
            permission: pb::Operation::Reencrypt,
            // By id when no destination is named: the same key, whatever its name, at its ACTIVE version.
            key: if request.destination_key.is_empty() { &opened.key_id } else { &request.destination_key },
            field: "destination_key",
            plaintext: &opened.plaintext,
            aad,
            context,
            to_public_key: false,
        };
        let result =
            self.seal_one(&claims, &mut destination_audit, sealing).await.map(|sealed| pb::ReEncryptResponse {
                ciphertext: sealed.ciphertext,
                source_key_id: opened.key_id.clone(),
                source_key_version: opened.version,
                key_id: sealed.key_id,
                key_version: sealed.version,
            });
        destination_audit.finish(&self.audit, result).await
    }
}

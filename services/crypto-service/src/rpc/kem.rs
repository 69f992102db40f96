//! Decapsulate and Encapsulate with KEM keys (ML-KEM, FIPS 203), Google Cloud KMS's model: a caller
//! encapsulates to the key's exported public key with any ML-KEM implementation and keymesh decapsulates;
//! a caller without a post-quantum library asks keymesh to encapsulate. Either way a 32-byte shared secret
//! leaves the mesh, so both are audited and counted by the plaintext quotas like Decrypt.

use keymesh_crypto::{
    CryptoError, KeyAlgorithm,
    pq::{MlKem, MlKemPrivateKey, MlKemPublicKey},
};
use keymesh_mesh::auth::AccessClaims;
use keymesh_proto::algorithm::ToProto;
use keymesh_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Audited, CryptoRpc, KeyUse, NO_CONTEXT};
use crate::{dek_cache::CachedDek, error::CryptoServiceError};

impl CryptoRpc {
    pub(super) async fn handle_decapsulate(
        &self,
        request: Request<pb::DecapsulateRequest>,
    ) -> Result<Response<pb::DecapsulateResponse>, Status> {
        let (claims, mut audit) = self.admit(&request, "Decapsulate").await?;
        let request = request.into_inner();
        let result = self.decapsulate(&claims, &mut audit, &request).await;
        audit.finish(&self.audit, result).await
    }

    async fn decapsulate(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        request: &pb::DecapsulateRequest,
    ) -> Result<pb::DecapsulateResponse, Status> {
        // Refused before the key is used, so a malformed request spends none of the caller's quota.
        if !MlKem::ALL.iter().any(|params| params.ciphertext_len() == request.ciphertext.len()) {
            return Err(CryptoServiceError::InvalidArgument {
                field: "ciphertext",
                reason: format!(
                    "an ML-KEM ciphertext is 768, 1088 or 1568 bytes (ML-KEM-512, -768, -1024), got {}",
                    request.ciphertext.len()
                ),
            }
            .into());
        }
        let key = KeyUse::named(&request.key, request.key_version, pb::Operation::Decapsulate, &NO_CONTEXT);
        let (dek, warnings) = self.key_use(claims, audit, key).await?;
        let (private, _) = kem_key(&dek)?;
        let shared_secret = private.decapsulate(&request.ciphertext).map_err(|e| match e {
            CryptoError::InvalidInput(reason) => CryptoServiceError::InvalidArgument { field: "ciphertext", reason },
            other => CryptoServiceError::Internal(other.to_string()),
        })?;
        Ok(pb::DecapsulateResponse {
            shared_secret: shared_secret.to_vec(),
            key_id: dek.key_id.clone(),
            key_version: dek.version,
            algorithm: dek.algorithm.to_proto() as i32,
            warnings,
        })
    }

    pub(super) async fn handle_encapsulate(
        &self,
        request: Request<pb::EncapsulateRequest>,
    ) -> Result<Response<pb::EncapsulateResponse>, Status> {
        let (claims, mut audit) = self.admit(&request, "Encapsulate").await?;
        let request = request.into_inner();
        let result = self.encapsulate(&claims, &mut audit, &request).await;
        audit.finish(&self.audit, result).await
    }

    async fn encapsulate(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        request: &pb::EncapsulateRequest,
    ) -> Result<pb::EncapsulateResponse, Status> {
        let key = KeyUse::named(&request.key, 0, pb::Operation::Encapsulate, &NO_CONTEXT);
        let (dek, warnings) = self.key_use(claims, audit, key).await?;
        let (_, public) = kem_key(&dek)?;
        let (ciphertext, shared_secret) =
            public.encapsulate().map_err(|e| CryptoServiceError::Internal(e.to_string()))?;
        Ok(pb::EncapsulateResponse {
            ciphertext,
            // The response owns its copy (prost messages are plain Vecs, as Decrypt's plaintext is).
            shared_secret: shared_secret.to_vec(),
            key_id: dek.key_id.clone(),
            key_version: dek.version,
            algorithm: dek.algorithm.to_proto() as i32,
            warnings,
        })
    }
}

/// The ML-KEM key pair of a KEM key (key-service serves Decapsulate/Encapsulate material only for KEM keys).
fn kem_key(dek: &CachedDek) -> Result<(&MlKemPrivateKey, &MlKemPublicKey), CryptoServiceError> {
    match (dek.algorithm, dek.key_pair.as_ref()) {
        (KeyAlgorithm::Kem(_), Some((private, public))) => match (private.ml_kem(), public.ml_kem()) {
            (Some(private), Some(public)) => Ok((private, public)),
            _ => Err(CryptoServiceError::Internal("a KEM key's material is not an ML-KEM key".into())),
        },
        (KeyAlgorithm::Kem(_), None) => {
            Err(CryptoServiceError::Internal("a KEM key's cache entry has no key pair".into()))
        }
        (other, _) => Err(CryptoServiceError::FailedPrecondition(format!(
            "key {:?} uses {}; Decapsulate and Encapsulate need a KEM key",
            dek.key_name,
            other.name()
        ))),
    }
}

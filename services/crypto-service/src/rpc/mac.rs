//! GenerateMac and VerifyMac with MAC keys (HMAC-SHA256/512). Tags are full length and compared in constant
//! time; verifying uses the version asked for (the primary by default) as long as it is in service, so tags
//! made before a rotation still verify.

use keymesh_crypto::{KeyAlgorithm, mac::MacAlgorithm};
use keymesh_mesh::auth::AccessClaims;
use keymesh_proto::algorithm::ToProto;
use keymesh_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Audited, CryptoRpc, KeyUse, NO_CONTEXT};
use crate::{dek_cache::CachedDek, error::CryptoServiceError};

impl CryptoRpc {
    pub(super) async fn handle_generate_mac(
        &self,
        request: Request<pb::GenerateMacRequest>,
    ) -> Result<Response<pb::GenerateMacResponse>, Status> {
        let (claims, mut audit) = self.admit(&request, "GenerateMac").await?;
        let request = request.into_inner();
        let result = self.generate_mac(&claims, &mut audit, &request).await;
        audit.finish(&self.audit, result).await
    }

    async fn generate_mac(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        request: &pb::GenerateMacRequest,
    ) -> Result<pb::GenerateMacResponse, Status> {
        self.check_mac_message(&request.message)?;
        let op = pb::Operation::GenerateMac;
        let (dek, warnings) = self.key_use(claims, audit, KeyUse::named(&request.key, 0, op, &NO_CONTEXT)).await?;
        let mac = mac_algorithm(&dek)?
            .compute(&dek.material, &request.message)
            .map_err(|e| CryptoServiceError::Internal(e.to_string()))?;
        Ok(pb::GenerateMacResponse {
            mac,
            key_id: dek.key_id.clone(),
            key_version: dek.version,
            algorithm: dek.algorithm.to_proto() as i32,
            warnings,
        })
    }

    pub(super) async fn handle_verify_mac(
        &self,
        request: Request<pb::VerifyMacRequest>,
    ) -> Result<Response<pb::VerifyMacResponse>, Status> {
        let (claims, mut audit) = self.admit(&request, "VerifyMac").await?;
        let request = request.into_inner();
        let result = self.verify_mac(&claims, &mut audit, &request).await;
        audit.finish(&self.audit, result).await
    }

    async fn verify_mac(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        request: &pb::VerifyMacRequest,
    ) -> Result<pb::VerifyMacResponse, Status> {
        self.check_mac_message(&request.message)?;
        let op = pb::Operation::VerifyMac;
        let key = KeyUse::named(&request.key, request.key_version, op, &NO_CONTEXT);
        let (dek, warnings) = self.key_use(claims, audit, key).await?;
        let valid = mac_algorithm(&dek)?
            .verify(&dek.material, &request.message, &request.mac)
            .map_err(|e| CryptoServiceError::Internal(e.to_string()))?;
        Ok(pb::VerifyMacResponse { valid, key_id: dek.key_id.clone(), key_version: dek.version, warnings })
    }

    fn check_mac_message(&self, message: &[u8]) -> Result<(), CryptoServiceError> {
        if message.len() > self.unary_limit {
            return Err(CryptoServiceError::InvalidArgument {
                field: "message",
                reason: format!("{} bytes is over the unary limit of {} bytes", message.len(), self.unary_limit),
            });
        }
        Ok(())
    }
}

/// The MAC algorithm of a MAC key (key-service serves MAC material only for MAC keys).
fn mac_algorithm(dek: &CachedDek) -> Result<MacAlgorithm, CryptoServiceError> {
    match dek.algorithm {
        KeyAlgorithm::Mac(algorithm) => Ok(algorithm),
        other => Err(CryptoServiceError::FailedPrecondition(format!(
            "key {:?} uses {}; GenerateMac and VerifyMac need a MAC key",
            dek.key_name,
            other.name()
        ))),
    }
}

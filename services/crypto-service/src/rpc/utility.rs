//! Hash and GenerateRandom: keyless utilities, so no key permission is checked, but the caller must hold a
//! valid token and each call is audited like the others.

use keymesh_crypto::primitives::{self, DigestAlgorithm};
use keymesh_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::CryptoRpc;
use crate::error::CryptoServiceError;

/// Most random bytes one GenerateRandom call returns.
const MAX_RANDOM: u32 = 1024;

impl CryptoRpc {
    pub(super) async fn handle_hash(
        &self,
        request: Request<pb::HashRequest>,
    ) -> Result<Response<pb::HashResponse>, Status> {
        let (_, mut audit) = self.admit(&request, "Hash").await?;
        let request = request.into_inner();
        let result = (|| {
            let algorithm = match pb::HashAlgorithm::try_from(request.algorithm) {
                Ok(pb::HashAlgorithm::Sha256) => DigestAlgorithm::Sha256,
                Ok(pb::HashAlgorithm::Sha384) => DigestAlgorithm::Sha384,
                Ok(pb::HashAlgorithm::Sha512) => DigestAlgorithm::Sha512,
                Ok(pb::HashAlgorithm::Sha3256) => DigestAlgorithm::Sha3_256,
                Ok(pb::HashAlgorithm::Blake2b512) => DigestAlgorithm::Blake2b512,
                Ok(pb::HashAlgorithm::Unspecified) | Err(_) => {
                    return Err(CryptoServiceError::InvalidArgument {
                        field: "algorithm",
                        reason: "choose HASH_ALGORITHM_SHA256, _SHA384, _SHA512, _SHA3_256 or _BLAKE2B_512".into(),
                    }
                    .into());
                }
            };
            // BLAKE2b is the one hash here FIPS does not approve.
            let mut warnings = Vec::new();
            self.policy
                .fips_mode()
                .check("BLAKE2b-512", algorithm != DigestAlgorithm::Blake2b512, &mut warnings)
                .map_err(CryptoServiceError::from)?;
            audit.0.policy_warnings(&warnings);
            if request.data.len() > self.unary_limit {
                return Err(CryptoServiceError::InvalidArgument {
                    field: "data",
                    reason: format!(
                        "{} bytes is over the unary limit of {} bytes",
                        request.data.len(),
                        self.unary_limit
                    ),
                }
                .into());
            }
            let digest = primitives::digest(algorithm, &request.data)
                .map_err(|e| CryptoServiceError::Internal(e.to_string()))?;
            Ok(pb::HashResponse { digest })
        })();
        audit.finish(&self.audit, result).await
    }

    pub(super) async fn handle_generate_random(
        &self,
        request: Request<pb::GenerateRandomRequest>,
    ) -> Result<Response<pb::GenerateRandomResponse>, Status> {
        let (_, audit) = self.admit(&request, "GenerateRandom").await?;
        let wanted = request.into_inner().num_bytes;
        let result = if (1..=MAX_RANDOM).contains(&wanted) {
            keymesh_crypto::random::random_bytes(wanted as usize)
                .map(|bytes| pb::GenerateRandomResponse { random: bytes.to_vec() })
                .map_err(|e| CryptoServiceError::Internal(e.to_string()).into())
        } else {
            Err(CryptoServiceError::InvalidArgument {
                field: "num_bytes",
                reason: format!("ask for 1 to {MAX_RANDOM} bytes (got {wanted})"),
            }
            .into())
        };
        audit.finish(&self.audit, result).await
    }
}

//! Sign and Verify with SIGN keys: Ed25519, ECDSA P-256/P-384 and RSA-PSS, over a message or a digest the
//! caller made with the algorithm's hash; ML-DSA over a message or an external μ, hedged or deterministic. Signing uses the ACTIVE version; verifying uses the version asked
//! for (the primary by default) as long as it is in service. The signatures verify with any standard
//! library given the key's exported public key (GetPublicKey).

use keymesh_crypto::{
    CryptoError, KeyAlgorithm,
    keypair::PrivateKey,
    pq::ML_DSA_MAX_CONTEXT_LEN,
    signature::{Randomness, SignInput, SignatureAlgorithm},
};
use keymesh_mesh::auth::AccessClaims;
use keymesh_proto::algorithm::ToProto;
use keymesh_proto::v1::{self as pb, sign_request, verify_request};
use tonic::{Request, Response, Status};

use super::{Audited, CryptoRpc, KeyUse, NO_CONTEXT};
use crate::{dek_cache::CachedDek, error::CryptoServiceError};

impl CryptoRpc {
    pub(super) async fn handle_sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let (claims, mut audit) = self.admit(&request, "Sign").await?;
        let request = request.into_inner();
        let result = self.sign(&claims, &mut audit, &request).await;
        audit.finish(&self.audit, result).await
    }

    async fn sign(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        request: &pb::SignRequest,
    ) -> Result<pb::SignResponse, Status> {
        let input = self.sign_input(request.input.as_ref().map(|input| match input {
            sign_request::Input::Message(m) => SignInput::Message(m),
            sign_request::Input::Digest(d) => SignInput::Digest(d),
            sign_request::Input::Mu(mu) => SignInput::Mu(mu),
        }))?;
        let randomness = match pb::SignatureRandomness::try_from(request.randomness) {
            Ok(pb::SignatureRandomness::Unspecified) => Randomness::AlgorithmDefault,
            Ok(pb::SignatureRandomness::Hedged) => Randomness::Hedged,
            Ok(pb::SignatureRandomness::Deterministic) => Randomness::Deterministic,
            Err(_) => {
                return Err(CryptoServiceError::InvalidArgument {
                    field: "randomness",
                    reason: format!("unknown signature randomness {}", request.randomness),
                }
                .into());
            }
        };
        let key = KeyUse::named(&request.key, 0, pb::Operation::Sign, &NO_CONTEXT);
        let (dek, warnings) = self.key_use(claims, audit, key).await?;
        let (algorithm, private) = signing_key(&dek)?;
        if !algorithm.offers(randomness) {
            return Err(CryptoServiceError::InvalidArgument {
                field: "randomness",
                reason: format!(
                    "{} offers no choice of randomness: HEDGED and DETERMINISTIC are for ML-DSA keys (and \
                     DETERMINISTIC for Ed25519, which always is)",
                    algorithm.name()
                ),
            }
            .into());
        }
        check_context(algorithm, &request.context)?;
        let signature =
            algorithm.sign_with(private, input, randomness, &request.context).map_err(|e| refused(e, input))?;
        Ok(pb::SignResponse {
            signature,
            key_id: dek.key_id.clone(),
            key_version: dek.version,
            algorithm: dek.algorithm.to_proto() as i32,
            warnings,
        })
    }

    pub(super) async fn handle_verify(
        &self,
        request: Request<pb::VerifyRequest>,
    ) -> Result<Response<pb::VerifyResponse>, Status> {
        let (claims, mut audit) = self.admit(&request, "Verify").await?;
        let request = request.into_inner();
        let result = self.verify(&claims, &mut audit, &request).await;
        audit.finish(&self.audit, result).await
    }

    async fn verify(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        request: &pb::VerifyRequest,
    ) -> Result<pb::VerifyResponse, Status> {
        let input = self.sign_input(request.input.as_ref().map(|input| match input {
            verify_request::Input::Message(m) => SignInput::Message(m),
            verify_request::Input::Digest(d) => SignInput::Digest(d),
            verify_request::Input::Mu(mu) => SignInput::Mu(mu),
        }))?;
        let key = KeyUse::named(&request.key, request.key_version, pb::Operation::Verify, &NO_CONTEXT);
        let (dek, warnings) = self.key_use(claims, audit, key).await?;
        let (algorithm, private) = signing_key(&dek)?;
        check_context(algorithm, &request.context)?;
        let valid = algorithm
            .verify_with_private(private, input, &request.context, &request.signature)
            .map_err(|e| refused(e, input))?;
        Ok(pb::VerifyResponse { valid, key_id: dek.key_id.clone(), key_version: dek.version, warnings })
    }

    /// The oneof, required, with a message no larger than the unary limit.
    fn sign_input<'a>(&self, input: Option<SignInput<'a>>) -> Result<SignInput<'a>, CryptoServiceError> {
        match input {
            None => Err(CryptoServiceError::InvalidArgument {
                field: "input",
                reason: "set message, or digest (made with the key's hash)".into(),
            }),
            Some(SignInput::Message(m)) if m.len() > self.unary_limit => Err(CryptoServiceError::InvalidArgument {
                field: "message",
                reason: format!(
                    "{} bytes is over the unary limit of {} bytes; hash it and send the digest instead",
                    m.len(),
                    self.unary_limit
                ),
            }),
            Some(input) => Ok(input),
        }
    }
}

/// The signature algorithm and private key of a SIGN key (key-service serves Sign/Verify material only
/// for SIGN keys).
fn signing_key(dek: &CachedDek) -> Result<(SignatureAlgorithm, &PrivateKey), CryptoServiceError> {
    match (dek.algorithm, dek.key_pair.as_ref()) {
        (KeyAlgorithm::Signature(algorithm), Some((private, _))) => Ok((algorithm, private)),
        (other, _) => Err(CryptoServiceError::FailedPrecondition(format!(
            "key {:?} uses {}; Sign and Verify need a SIGN key",
            dek.key_name,
            other.name()
        ))),
    }
}

/// A context string is ML-DSA's, at most 255 bytes (FIPS 204), and never with a mu.
fn check_context(algorithm: SignatureAlgorithm, context: &[u8]) -> Result<(), CryptoServiceError> {
    let reason = match algorithm {
        _ if context.is_empty() => return Ok(()),
        SignatureAlgorithm::MlDsa(_) if context.len() <= ML_DSA_MAX_CONTEXT_LEN => return Ok(()),
        SignatureAlgorithm::MlDsa(_) => {
            format!("an ML-DSA context is at most {ML_DSA_MAX_CONTEXT_LEN} bytes, got {}", context.len())
        }
        other => format!("a context string is for ML-DSA keys; {} signs without one", other.name()),
    };
    Err(CryptoServiceError::InvalidArgument { field: "context", reason })
}

/// A request the algorithm cannot serve as asked (a digest for Ed25519 or ML-DSA, a mu for another algorithm,
/// either of the wrong length) is the caller's to fix, and names the input it sent; anything else is ours.
fn refused(e: CryptoError, input: SignInput<'_>) -> CryptoServiceError {
    let field = match input {
        SignInput::Message(_) => "message",
        SignInput::Digest(_) => "digest",
        SignInput::Mu(_) => "mu",
    };
    match e {
        CryptoError::InvalidInput(reason) => CryptoServiceError::InvalidArgument { field, reason },
        other => CryptoServiceError::Internal(other.to_string()),
    }
}

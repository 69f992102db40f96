//! Encrypt: seals a plaintext (or each item of a batch) under the key's ACTIVE version in the v3 ciphertext
//! format, with key commitment and the caller's AAD and encryption context bound; or, with a key for
//! encryption to a public key (HPKE, X-Wing HPKE, the document's ML-KEM hybrid, RSA-OAEP), encrypts to its
//! public key exactly as a sender holding the exported public key would.

use std::collections::HashMap;

use keymesh_crypto::{
    CryptoError, KeyAlgorithm,
    asymmetric::AsymmetricEncryption,
    ciphertext::{Binding, KeyRef},
};
use keymesh_mesh::auth::AccessClaims;
use keymesh_proto::algorithm::ToProto;
use keymesh_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Audited, CryptoRpc, KeyUse, check_batch, context_of, item_error};
use crate::{dek_cache::CachedDek, error::CryptoServiceError};

/// One plaintext to seal.
pub(super) struct Sealing<'a> {
    /// The operation the caller must be allowed on the key (Encrypt, or ReEncrypt).
    pub permission: pb::Operation,
    pub key: &'a str,
    /// The request field naming the key.
    pub field: &'static str,
    pub plaintext: &'a [u8],
    pub aad: &'a [u8],
    pub context: &'a HashMap<String, String>,
    /// Whether a key for encryption to a public key (HPKE, X-Wing HPKE, the ML-KEM hybrid, RSA-OAEP) may serve:
    /// Encrypt and data keys; streams and ReEncrypt need a keymesh ciphertext.
    pub to_public_key: bool,
}

/// What sealing produced.
pub(super) struct Sealed {
    pub ciphertext: Vec<u8>,
    pub key_id: String,
    pub version: u32,
    pub algorithm: KeyAlgorithm,
    /// Policy warnings.
    pub warnings: Vec<String>,
}

impl CryptoRpc {
    pub(super) async fn handle_encrypt(
        &self,
        request: Request<pb::EncryptRequest>,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let (claims, mut audit) = self.admit(&request, "Encrypt").await?;
        let request = request.into_inner();
        if !request.batch.is_empty() {
            // Boxed: the batch path's state would otherwise swell every single call's future, which is moved whole.
            return Box::pin(self.encrypt_batch(&claims, request)).await;
        }
        let sealing = Sealing {
            permission: pb::Operation::Encrypt,
            key: &request.key,
            field: "key",
            plaintext: &request.plaintext,
            aad: &request.aad,
            context: &request.encryption_context,
            to_public_key: true,
        };
        let result = self.seal_one(&claims, &mut audit, sealing).await.map(|sealed| pb::EncryptResponse {
            ciphertext: sealed.ciphertext,
            key_id: sealed.key_id,
            key_version: sealed.version,
            algorithm: sealed.algorithm.to_proto() as i32,
            warnings: sealed.warnings,
            batch: vec![],
        });
        audit.finish(&self.audit, result).await
    }

    /// Many items in one call: each is sealed (concurrently) and audited on its own, and gets a ciphertext
    /// or an error, in the order given. Only a batch that is malformed as a whole fails the call.
    async fn encrypt_batch(
        &self,
        claims: &AccessClaims,
        request: pb::EncryptRequest,
    ) -> Result<Response<pb::EncryptResponse>, Status> {
        let total: usize = request.batch.iter().map(|item| item.plaintext.len()).sum();
        if let Err(e) =
            check_batch(request.batch.len(), total, !request.plaintext.is_empty(), "plaintext", self.unary_limit)
        {
            let audit = self.audited("Encrypt", claims);
            return audit.finish(&self.audit, Err(e.into())).await;
        }
        let items = request.batch.iter().map(|item| async {
            let mut audit = self.audited("Encrypt", claims);
            let sealing = Sealing {
                permission: pb::Operation::Encrypt,
                key: if item.key.is_empty() { &request.key } else { &item.key },
                field: "key",
                plaintext: &item.plaintext,
                aad: &item.aad,
                context: &item.encryption_context,
                to_public_key: true,
            };
            let outcome = self.seal_one(claims, &mut audit, sealing).await;
            match audit.finish(&self.audit, outcome).await.map(Response::into_inner) {
                Ok(sealed) => pb::EncryptItemResult {
                    result: Some(pb::encrypt_item_result::Result::Ciphertext(sealed.ciphertext)),
                    key_id: sealed.key_id,
                    key_version: sealed.version,
                },
                Err(status) => pb::EncryptItemResult {
                    result: Some(pb::encrypt_item_result::Result::Error(item_error(&status))),
                    ..Default::default()
                },
            }
        });
        let batch = futures_util::future::join_all(items).await;
        Ok(Response::new(pb::EncryptResponse { batch, ..Default::default() }))
    }

    pub(super) async fn seal_one(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        item: Sealing<'_>,
    ) -> Result<Sealed, Status> {
        if item.plaintext.len() > self.unary_limit {
            return Err(CryptoServiceError::InvalidArgument {
                field: "plaintext",
                reason: format!(
                    "{} bytes is over the unary limit of {} bytes; use EncryptStream for large data",
                    item.plaintext.len(),
                    self.unary_limit
                ),
            }
            .into());
        }
        let key = KeyUse {
            fetch: pb::Operation::Encrypt,
            field: item.field,
            ..KeyUse::named(item.key, 0, item.permission, item.context)
        };
        let (dek, warnings) = self.key_use(claims, audit, key).await?;
        let algorithm = match dek.algorithm {
            KeyAlgorithm::Symmetric(algorithm) => algorithm,
            KeyAlgorithm::Asymmetric(algorithm) if item.to_public_key => {
                let ciphertext = encrypt_to_public_key(&dek, algorithm, &item)?;
                return Ok(Sealed {
                    ciphertext,
                    key_id: dek.key_id.clone(),
                    version: dek.version,
                    algorithm: dek.algorithm,
                    warnings,
                });
            }
            other => {
                return Err(CryptoServiceError::FailedPrecondition(format!(
                    "key {:?} uses {}; this operation needs a symmetric ENCRYPT key",
                    dek.key_name,
                    other.name()
                ))
                .into());
            }
        };
        let context = context_of(item.context);
        let binding = Binding { aad: item.aad, context: Some(&context) };
        // Every symmetric key's cache entry holds its prepared key (dek_cache.rs).
        let prepared = dek.prepared.as_ref().ok_or_else(|| CryptoServiceError::Internal("no prepared key".into()))?;
        let ciphertext = prepared.seal(&dek.material, binding, item.plaintext).map_err(|e| match e {
            CryptoError::TooLarge { size, limit, .. } => CryptoServiceError::InvalidArgument {
                field: "plaintext",
                reason: format!(
                    "{size} bytes is over the {limit}-byte limit of {} (key {:?}); use a key of another \
                     algorithm, such as AES-256-GCM, for larger data",
                    algorithm.name(),
                    dek.key_name
                ),
            },
            other => CryptoServiceError::Internal(other.to_string()),
        })?;
        Ok(Sealed { ciphertext, key_id: dek.key_id.clone(), version: dek.version, algorithm: dek.algorithm, warnings })
    }
}

/// The refusal for an encryption context on an HPKE or RSA-OAEP key, whose ciphertexts (made anywhere with
/// the public key) have no place for one.
pub(super) fn no_context_for_public_key(algorithm: &str) -> CryptoServiceError {
    CryptoServiceError::InvalidArgument {
        field: "encryption_context",
        reason: format!("{algorithm} ciphertexts bind only aad; pass the context's bytes as aad instead"),
    }
}

fn encrypt_to_public_key(
    dek: &CachedDek,
    algorithm: AsymmetricEncryption,
    item: &Sealing<'_>,
) -> Result<Vec<u8>, CryptoServiceError> {
    if !item.context.is_empty() {
        return Err(no_context_for_public_key(algorithm.name()));
    }
    let (_, public) = dek.key_pair.as_ref().ok_or_else(|| CryptoServiceError::Internal("no key pair".into()))?;
    let kid = KeyRef { key_id: dek.key_id.clone(), version: dek.version }.to_kid();
    algorithm.encrypt(public, &kid, item.aad, item.plaintext).map_err(|e| match e {
        CryptoError::TooLarge { size, limit, .. } => CryptoServiceError::InvalidArgument {
            field: "plaintext",
            reason: format!(
                "{size} bytes is over the {limit}-byte limit of {} (key {:?}); encrypt a data key with it instead",
                algorithm.name(),
                dek.key_name
            ),
        },
        other => CryptoServiceError::Internal(other.to_string()),
    })
}

//! Decrypt: reads the ciphertext header, fetches the version it names (refused below
//! min_decryption_version or when retired), checks the key commitment and opens it. Every failure is the
//! same "decryption failed", except the documented context mismatch. A ciphertext that is not in keymesh's
//! format, addressed to an HPKE or RSA-OAEP key the request names, is opened with that key's private half.

use std::collections::HashMap;

use keymesh_crypto::{
    CryptoError, KeyAlgorithm,
    ciphertext::{self, Binding, KeyRef},
    pq_hybrid,
};
use keymesh_mesh::auth::AccessClaims;
use keymesh_proto::algorithm::ToProto;
use keymesh_proto::v1 as pb;
use tonic::{Request, Response, Status};
use zeroize::Zeroizing;

use super::{
    Audited, CryptoRpc, KeyUse, NO_CONTEXT, check_batch, context_of, encrypt::no_context_for_public_key, item_error,
};
use crate::error::CryptoServiceError;

/// One ciphertext to open.
pub(super) struct Opening<'a> {
    /// The operation the caller must be allowed on the key (Decrypt, or ReEncrypt).
    pub permission: pb::Operation,
    pub ciphertext: &'a [u8],
    pub key: &'a str,
    pub aad: &'a [u8],
    pub context: &'a HashMap<String, String>,
    /// When set, a ciphertext made with a public key is accepted too, for this version of the named key (0:
    /// the primary). Decrypt only: streams and ReEncrypt need a keymesh ciphertext.
    pub public_key_version: Option<u32>,
}

/// What opening produced.
pub(super) struct Opened {
    pub plaintext: Zeroizing<Vec<u8>>,
    pub key_id: String,
    pub version: u32,
    pub algorithm: KeyAlgorithm,
    /// Policy warnings.
    pub warnings: Vec<String>,
}

impl CryptoRpc {
    pub(super) async fn handle_decrypt(
        &self,
        request: Request<pb::DecryptRequest>,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let (claims, mut audit) = self.admit(&request, "Decrypt").await?;
        let request = request.into_inner();
        if !request.batch.is_empty() {
            // Boxed: the batch path's state would otherwise swell every single call's future, which is moved whole.
            return Box::pin(self.decrypt_batch(&claims, request)).await;
        }
        let opening = Opening {
            permission: pb::Operation::Decrypt,
            ciphertext: &request.ciphertext,
            key: &request.key,
            aad: &request.aad,
            context: &request.encryption_context,
            public_key_version: Some(request.key_version),
        };
        let result = self.open_one(&claims, &mut audit, opening).await.map(|opened| pb::DecryptResponse {
            plaintext: opened.plaintext.to_vec(),
            key_id: opened.key_id,
            key_version: opened.version,
            algorithm: opened.algorithm.to_proto() as i32,
            warnings: opened.warnings,
            batch: vec![],
        });
        audit.finish(&self.audit, result).await
    }

    /// Many ciphertexts in one call, each opened (concurrently) and audited on its own, with a plaintext or an
    /// error per item in the order given.
    async fn decrypt_batch(
        &self,
        claims: &AccessClaims,
        request: pb::DecryptRequest,
    ) -> Result<Response<pb::DecryptResponse>, Status> {
        let total: usize = request.batch.iter().map(|item| item.ciphertext.len()).sum();
        if let Err(e) =
            check_batch(request.batch.len(), total, !request.ciphertext.is_empty(), "ciphertext", self.unary_limit)
        {
            let audit = self.audited("Decrypt", claims);
            return audit.finish(&self.audit, Err(e.into())).await;
        }
        let items = request.batch.iter().map(|item| async {
            let mut audit = self.audited("Decrypt", claims);
            let opening = Opening {
                permission: pb::Operation::Decrypt,
                ciphertext: &item.ciphertext,
                key: if item.key.is_empty() { &request.key } else { &item.key },
                aad: &item.aad,
                context: &item.encryption_context,
                public_key_version: Some(item.key_version),
            };
            let outcome = self.open_one(claims, &mut audit, opening).await;
            match audit.finish(&self.audit, outcome).await.map(Response::into_inner) {
                Ok(opened) => pb::DecryptItemResult {
                    result: Some(pb::decrypt_item_result::Result::Plaintext(opened.plaintext.to_vec())),
                    key_id: opened.key_id,
                    key_version: opened.version,
                },
                Err(status) => pb::DecryptItemResult {
                    result: Some(pb::decrypt_item_result::Result::Error(item_error(&status))),
                    ..Default::default()
                },
            }
        });
        let batch = futures_util::future::join_all(items).await;
        Ok(Response::new(pb::DecryptResponse { batch, ..Default::default() }))
    }

    pub(super) async fn open_one(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        item: Opening<'_>,
    ) -> Result<Opened, Status> {
        let parsed = match (ciphertext::parse(item.ciphertext), item.public_key_version) {
            (Ok(parsed), _) => parsed,
            (Err(_), Some(version)) if !item.key.is_empty() => {
                return self.open_from_public_key(claims, audit, &item, version).await;
            }
            (Err(_), _) => return Err(CryptoServiceError::DecryptionFailed.into()),
        };
        let mismatch = |e: CryptoError| match e {
            CryptoError::ContextMismatch { .. } => CryptoServiceError::ContextMismatch(e.to_string()),
            _ => CryptoServiceError::DecryptionFailed,
        };
        // A v1 header that names no key is pinned once its key id has found the key (below).
        let names_no_key = parsed.version == 1 && parsed.key_name.is_empty();
        if !names_no_key {
            parsed.expect_key(item.key).map_err(mismatch)?;
        }
        // The header's claims (key name and id) are authenticated only once the ciphertext opens: the name it
        // claims is authorized before any material moves, the stored name once the key is found.
        let key = KeyUse {
            key: &parsed.key_ref.key_id,
            field: "ciphertext",
            // A v1 header may name no key (its key id alone says which); the stored name is authorized then.
            claimed_name: (!parsed.key_name.is_empty()).then_some(parsed.key_name.as_str()),
            version: parsed.key_ref.version,
            fetch: pb::Operation::Decrypt,
            permission: item.permission,
            context: item.context,
            from_ciphertext: true,
        };
        let (dek, warnings) = self.key_use(claims, audit, key).await?;
        // keymesh writes the sealing key's own name into the header (v2, v3), and key names never change:
        // a header naming another key than the one its key id opens was written by someone else, who knew
        // this key's material (an imported key, say) and wants the ciphertext taken for the other key's.
        // Once the header names the opening key, the pin checked against the header above holds against
        // the key that opens the ciphertext, by its name or its id.
        let names_opening_key = parsed.key_name == dek.key_name || names_no_key;
        if !names_opening_key || dek.algorithm != KeyAlgorithm::Symmetric(parsed.algorithm) {
            return Err(CryptoServiceError::DecryptionFailed.into());
        }
        if names_no_key && !item.key.is_empty() && item.key != dek.key_name && item.key != dek.key_id {
            return Err(mismatch(CryptoError::ContextMismatch {
                expected: item.key.to_owned(),
                actual: dek.key_name.clone(),
            })
            .into());
        }
        let context = context_of(item.context);
        let binding = Binding { aad: item.aad, context: Some(&context) };
        let opened = match &dek.prepared {
            Some(prepared) => parsed.open_prepared(prepared, &dek.material, binding),
            None => parsed.open(&dek.material, binding),
        };
        let plaintext = opened.map_err(|_| CryptoServiceError::DecryptionFailed)?;
        Ok(Opened { plaintext, key_id: dek.key_id.clone(), version: dek.version, algorithm: dek.algorithm, warnings })
    }

    /// Opens what a sender made with the public key of the named HPKE, RSA-OAEP or hybrid ML-KEM key. The
    /// version is the one the request names; with none (0), a hybrid ciphertext's header says which.
    async fn open_from_public_key(
        &self,
        claims: &AccessClaims,
        audit: &mut Audited,
        item: &Opening<'_>,
        version: u32,
    ) -> Result<Opened, Status> {
        let from_header = match (version, pq_hybrid::kid_of(item.ciphertext).as_deref().and_then(KeyRef::parse)) {
            (0, Some(named)) => Some(named.version),
            _ => None,
        };
        let key = KeyUse {
            fetch: pb::Operation::Decrypt,
            ..KeyUse::named(item.key, from_header.unwrap_or(version), item.permission, &NO_CONTEXT)
        };
        let (dek, warnings) = match self.key_use(claims, audit, key).await {
            // The header is authenticated only once the ciphertext opens: a version it names that does not exist
            // is any other bad ciphertext. (key-service answers an unknown key and an unknown version alike, so
            // a misspelt key name with a hybrid ciphertext and no key_version is "decryption failed" too.)
            Err(status) if from_header.is_some() && status.code() == tonic::Code::NotFound => {
                return Err(CryptoServiceError::DecryptionFailed.into());
            }
            other => other?,
        };
        let (KeyAlgorithm::Asymmetric(algorithm), Some((private, _))) = (dek.algorithm, dek.key_pair.as_ref()) else {
            // A symmetric key named with a ciphertext that is not keymesh's: just a bad ciphertext.
            return Err(CryptoServiceError::DecryptionFailed.into());
        };
        if !item.context.is_empty() {
            return Err(no_context_for_public_key(algorithm.name()).into());
        }
        let kid = KeyRef { key_id: dek.key_id.clone(), version: dek.version }.to_kid();
        let plaintext = algorithm
            .decrypt(private, &kid, item.aad, item.ciphertext)
            .map_err(|_| CryptoServiceError::DecryptionFailed)?;
        Ok(Opened { plaintext, key_id: dek.key_id.clone(), version: dek.version, algorithm: dek.algorithm, warnings })
    }
}

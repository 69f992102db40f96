//! GetDataKey (internal): hands an unwrapped DEK to crypto-service — and only to it, by the SPIFFE identity of
//! its client certificate — after checking the key's and the version's state for the intended operation.

use keymesh_crypto::KeyAlgorithm;
use keymesh_mesh::{PeerIdentity, ServiceName};
use keymesh_proto::algorithm::{FromProto, ToProto};
use keymesh_proto::identifiers;
use keymesh_proto::v1 as pb;
use keymesh_store::keys::KeyLookup;
use tonic::{Request, Response, Status};

use super::{Audited, KeyRpc};
use crate::{error::KeyError, key_store, lifecycle, metrics::RotationReason};

/// How long crypto-service may keep the material.
const CACHE_TTL_SECONDS: u32 = 300;

impl KeyRpc {
    pub(super) async fn handle_get_data_key(
        &self,
        request: Request<pb::GetDataKeyRequest>,
    ) -> Result<Response<pb::GetDataKeyResponse>, Status> {
        let peer = PeerIdentity::from_request(&request)?;
        let mut audit = Audited::start("GetDataKey");
        // Refused callers are recorded by their certificate only: nothing they sent reaches the trail.
        if let Err(denied) = peer.require(ServiceName::CryptoService, "KeyService.GetDataKey") {
            audit.caller("", peer.as_str());
            return Err(audit.deny(&self.audit, denied).await);
        }
        let request = request.into_inner();
        let checked = identifiers::opaque_id("tenant_id", &request.tenant_id)
            .and_then(|()| identifiers::key_reference("key", &request.key).map(drop))
            .map_err(KeyError::from)
            .and_then(|()| {
                if request.on_behalf_of.len() > 128 || request.on_behalf_of.chars().any(char::is_control) {
                    return Err(KeyError::InvalidArgument {
                        field: "on_behalf_of",
                        reason: "at most 128 printable characters".into(),
                    });
                }
                Ok(())
            });
        if let Err(invalid) = checked {
            return audit.finish(&self.audit, Err::<pb::GetDataKeyResponse, _>(invalid)).await;
        }
        let identity = if request.on_behalf_of.is_empty() {
            peer.to_string()
        } else {
            format!("{} (via {peer})", request.on_behalf_of)
        };
        audit.caller(&request.tenant_id, &identity);
        let result = self.get_data_key(request, &mut audit).await;
        audit.finish(&self.audit, result).await
    }

    async fn get_data_key(
        &self,
        request: pb::GetDataKeyRequest,
        audit: &mut Audited,
    ) -> Result<pb::GetDataKeyResponse, KeyError> {
        let operation = pb::Operation::try_from(request.operation).unwrap_or(pb::Operation::Unspecified);
        let (mut record, _) = self.store.record(&request.tenant_id, &request.key).await?;
        let encrypting = matches!(operation, pb::Operation::Encrypt | pb::Operation::GenerateDataKey);
        // Only symmetric keys have a safe bound on encryptions (nonce collisions); encrypting to a public
        // key uses no nonce of this key and is never counted.
        let kind = KeyAlgorithm::from_i32(record.key.algorithm);
        let counted = encrypting && matches!(kind, Some(KeyAlgorithm::Symmetric(_)));
        let uncounted = encrypting && matches!(kind, Some(KeyAlgorithm::Asymmetric(_)));
        // Encryptions are granted in blocks and counted per version; the fetch whose block crosses the
        // threshold rotates the key first (once, whichever replica gets there) and is served by the new version.
        let mut budget = if uncounted { u64::MAX } else { 0 };
        if counted && request.version == 0 {
            for _ in 0..2 {
                let version = lifecycle::usable_version(&record, 0, operation)?;
                let granted = self
                    .store
                    .repo()
                    .add_encryptions_granted(
                        &record.key.id,
                        version.version as u32,
                        self.limits.encryption_block as i64,
                    )
                    .await?;
                if (granted as u64) <= self.limits.rotate_after_encryptions {
                    budget = self.limits.encryption_block;
                    break;
                }
                let primary = version.version;
                let rotated = self
                    .store
                    .rotate_if(KeyLookup::ById(&record.key.id), RotationReason::Usage, |current| {
                        current.key.primary_version == primary
                    })
                    .await?;
                if rotated.is_some() {
                    tracing::info!(key_id = %record.key.id, "rotated key: encryption count reached its bound");
                }
                record = self.store.record(&request.tenant_id, &record.key.id).await?.0;
            }
            if budget == 0 {
                return Err(KeyError::FailedPrecondition(format!(
                    "key {:?} reached its encryption bound and could not rotate; rotate it",
                    record.key.name
                )));
            }
        }
        let version = lifecycle::usable_version(&record, request.version, operation)?;
        audit.resource(&record.key.id, version.version as u32, version.algorithm);
        let algorithm = key_store::algorithm(&record, version)?;
        // Policies see the labels: unreadable ones refuse rather than read as none.
        let policy = lifecycle::enforced_policy(&record)?;
        let labels = lifecycle::enforced_labels(&record)?;
        let (dek, _) = self.store.material(&record, version).await?;
        Ok(pb::GetDataKeyResponse {
            key_id: record.key.id.clone(),
            key_name: record.key.name.clone(),
            version: version.version as u32,
            algorithm: algorithm.to_proto() as i32,
            purpose: record.key.purpose,
            key_material: dek.expose_secret().to_vec(),
            min_decryption_version: record.key.min_decryption_version as u32,
            cache_ttl_seconds: CACHE_TTL_SECONDS,
            labels,
            encryption_budget: budget,
            policy: Some(policy),
        })
    }
}

//! GetDataKey (internal): hands an unwrapped DEK to crypto-service — and only to it, by the SPIFFE identity of
//! its client certificate — after checking the key's and the version's state for the intended operation.

use keymesh_crypto::SymmetricAlgorithm;
use keymesh_kms::{WrapContext, WrappedKey};
use keymesh_mesh::{PeerIdentity, ServiceName};
use keymesh_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Audited, KeyRpc};
use crate::error::KeyError;

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
            return Err(audit.deny(&self.audit, denied));
        }
        let request = request.into_inner();
        for (field, value) in
            [("tenant_id", &request.tenant_id), ("key", &request.key), ("on_behalf_of", &request.on_behalf_of)]
        {
            if value.len() > 128 || value.chars().any(char::is_control) {
                let result: Result<pb::GetDataKeyResponse, KeyError> = Err(KeyError::InvalidArgument {
                    field: "tenant_id/key/on_behalf_of",
                    reason: format!("{field} must be at most 128 printable characters"),
                });
                return audit.finish(&self.audit, result);
            }
        }
        let identity = if request.on_behalf_of.is_empty() {
            peer.to_string()
        } else {
            format!("{} (via {peer})", request.on_behalf_of)
        };
        audit.caller(&request.tenant_id, &identity);
        let result = self.get_data_key(request, &mut audit).await;
        audit.finish(&self.audit, result)
    }

    async fn get_data_key(
        &self,
        request: pb::GetDataKeyRequest,
        audit: &mut Audited,
    ) -> Result<pb::GetDataKeyResponse, KeyError> {
        if request.tenant_id.is_empty() || request.key.is_empty() {
            return Err(KeyError::InvalidArgument { field: "tenant_id/key", reason: "both are required".into() });
        }
        let operation = pb::Operation::try_from(request.operation).unwrap_or(pb::Operation::Unspecified);
        let key = self
            .repo
            .find(&request.tenant_id, &request.key)
            .await?
            .ok_or_else(|| KeyError::KeyNotFound(request.key.clone()))?;
        if key.state != pb::KeyState::Enabled as i32 {
            let state = pb::KeyState::try_from(key.state).map(|s| s.as_str_name()).unwrap_or("UNKNOWN");
            return Err(KeyError::FailedPrecondition(format!("key {:?} is {state}; enable it to use it", key.name)));
        }
        let version_number = if request.version == 0 { key.primary_version as u32 } else { request.version };
        audit.resource(&key.id, version_number, key.algorithm);
        let version = self
            .repo
            .version(&key.id, version_number)
            .await?
            .ok_or(KeyError::VersionNotFound { key: key.name.clone(), version: version_number })?;
        let state = pb::KeyVersionState::try_from(version.state).unwrap_or(pb::KeyVersionState::Unspecified);
        let usable = match operation {
            pb::Operation::Encrypt | pb::Operation::GenerateDataKey => {
                state == pb::KeyVersionState::Active && version.version == key.primary_version
            }
            pb::Operation::Decrypt | pb::Operation::Reencrypt => {
                matches!(state, pb::KeyVersionState::Active | pb::KeyVersionState::DecryptOnly)
                    && version.version >= key.min_decryption_version
            }
            _ => {
                return Err(KeyError::InvalidArgument {
                    field: "operation",
                    reason: "GetDataKey serves ENCRYPT, GENERATE_DATA_KEY, DECRYPT and REENCRYPT".into(),
                });
            }
        };
        if !usable {
            let reason = if version.version < key.min_decryption_version {
                format!(
                    "version {} of key {:?} is below min_decryption_version {}",
                    version.version, key.name, key.min_decryption_version
                )
            } else {
                format!("version {} of key {:?} is {}", version.version, key.name, state.as_str_name())
            };
            return Err(KeyError::FailedPrecondition(reason));
        }
        let algorithm =
            pb::Algorithm::try_from(version.algorithm).ok().and_then(SymmetricAlgorithm::from_proto).ok_or_else(
                || KeyError::FailedPrecondition(format!("key {:?} is not a symmetric encryption key", key.name)),
            )?;
        let wrapped = WrappedKey {
            backend: version.kek_backend.clone(),
            kek_id: version.kek_id.clone(),
            ciphertext: version.wrapped_material.clone().ok_or_else(|| {
                KeyError::FailedPrecondition(format!("version {} of key {:?} is destroyed", version.version, key.name))
            })?,
        };
        let context = WrapContext {
            tenant_id: key.tenant_id.clone(),
            key_id: key.id.clone(),
            version: version.version as u32,
            algorithm: algorithm.name().to_owned(),
        };
        let dek = self.kms.unwrap(&wrapped, &context).await?;
        Ok(pb::GetDataKeyResponse {
            key_id: key.id.clone(),
            key_name: key.name.clone(),
            version: version.version as u32,
            algorithm: algorithm.to_proto() as i32,
            purpose: key.purpose,
            key_material: dek.expose_secret().to_vec(),
            min_decryption_version: key.min_decryption_version as u32,
            cache_ttl_seconds: CACHE_TTL_SECONDS,
            labels: serde_json::from_str(&key.labels).unwrap_or_default(),
        })
    }
}

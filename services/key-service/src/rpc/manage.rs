//! The management methods: ListKeys, RotateKey, UpdateKeyPolicy, EnableKey/DisableKey,
//! ScheduleKeyDeletion/CancelKeyDeletion and GetPublicKey. Each locks the key, applies one rule from
//! `lifecycle.rs` and commits; the key store then invalidates every cache.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use keymesh_proto::algorithm::ToProto;
use keymesh_proto::identifiers;
use keymesh_proto::v1 as pb;
use keymesh_store::keys::{KeyFilter, KeyLookup};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{KeyRpc, MANAGERS, READERS, require_key};
use keymesh_policy::CompiledPolicy;

use crate::{convert, error::KeyError, key_store, lifecycle, metrics::RotationReason};

const MAX_PAGE_SIZE: u32 = 1000;
const DEFAULT_PAGE_SIZE: u32 = 100;

fn page_after(token: &str) -> Result<Option<String>, KeyError> {
    if token.is_empty() {
        return Ok(None);
    }
    let invalid = || KeyError::InvalidArgument {
        field: "page_token",
        reason: "not a token from a previous ListKeys response; start again with an empty token".into(),
    };
    let bytes = URL_SAFE_NO_PAD.decode(token).map_err(|_| invalid())?;
    let id = String::from_utf8(bytes).map_err(|_| invalid())?;
    identifiers::key_id("page_token", &id).map_err(|_| invalid())?;
    Ok(Some(id))
}

fn known_enum<T: TryFrom<i32>>(field: &'static str, value: i32) -> Result<Option<i32>, KeyError> {
    match value {
        0 => Ok(None),
        v if T::try_from(v).is_ok() => Ok(Some(v)),
        v => Err(KeyError::InvalidArgument { field, reason: format!("unknown value {v}") }),
    }
}

impl KeyRpc {
    pub(super) async fn handle_list_keys(
        &self,
        request: Request<pb::ListKeysRequest>,
    ) -> Result<Response<pb::ListKeysResponse>, Status> {
        let (claims, audit) = self.authorize(&request, "ListKeys", READERS).await?;
        let request = request.into_inner();
        let result = async {
            if request.page_size > MAX_PAGE_SIZE {
                return Err(KeyError::InvalidArgument {
                    field: "page_size",
                    reason: format!("at most {MAX_PAGE_SIZE} (0 means {DEFAULT_PAGE_SIZE})"),
                });
            }
            let page_size = if request.page_size == 0 { DEFAULT_PAGE_SIZE } else { request.page_size };
            let filter = KeyFilter {
                purpose: known_enum::<pb::KeyPurpose>("purpose", request.purpose)?,
                state: known_enum::<pb::KeyState>("state", request.state)?,
                labels: request.labels,
            };
            let after = page_after(&request.page_token)?;
            let (records, next) =
                self.store.repo().list(&claims.tenant, &filter, u64::from(page_size), after.as_deref()).await?;
            Ok(pb::ListKeysResponse {
                keys: records.iter().map(convert::record_to_proto).collect(),
                next_page_token: next.map(|id| URL_SAFE_NO_PAD.encode(id)).unwrap_or_default(),
            })
        }
        .await;
        audit.finish(&self.audit, result).await
    }

    pub(super) async fn handle_rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        let (claims, mut audit) = self.authorize(&request, "RotateKey", MANAGERS).await?;
        let key = request.into_inner().key;
        let result = async {
            require_key(&key)?;
            let (current, _) = self.store.record(&claims.tenant, &key).await?;
            let warnings = self.admit_new_material(&current)?;
            audit.policy_warnings(&warnings);
            let record = self
                .store
                .rotate_if(
                    KeyLookup::InTenant { tenant_id: &claims.tenant, name_or_id: &key },
                    RotationReason::Manual,
                    |_| true,
                )
                .await?
                .ok_or_else(|| KeyError::KeyNotFound(key.clone()))?;
            audit.resource(&record.key.id, record.key.primary_version as u32, record.key.algorithm);
            Ok(pb::RotateKeyResponse {
                new_version: record.key.primary_version as u32,
                key: Some(convert::record_to_proto(&record)),
            })
        }
        .await;
        audit.finish(&self.audit, result).await
    }

    pub(super) async fn handle_update_key_policy(
        &self,
        request: Request<pb::UpdateKeyPolicyRequest>,
    ) -> Result<Response<pb::UpdateKeyPolicyResponse>, Status> {
        let (claims, mut audit) = self.authorize(&request, "UpdateKeyPolicy", MANAGERS).await?;
        let request = request.into_inner();
        let result = async {
            let paths: Vec<&str> = if request.update_paths.is_empty() {
                vec!["policy"]
            } else {
                request.update_paths.iter().map(String::as_str).collect()
            };
            for path in &paths {
                if !matches!(*path, "policy" | "min_decryption_version" | "description" | "labels") {
                    return Err(KeyError::InvalidArgument {
                        field: "update_paths",
                        reason: format!(
                            "unknown path {path:?} (use policy, min_decryption_version, description, labels)"
                        ),
                    });
                }
            }
            if paths.contains(&"labels") {
                super::create_key::validate_labels(&request.labels)?;
            }
            if paths.contains(&"description") {
                super::create_key::validate_description(&request.description)?;
            }
            let policy = request.policy.clone().unwrap_or_default();
            let (record, ()) = self
                .edit(&claims.tenant, &request.key, &mut audit, |record| {
                    if paths.contains(&"policy") {
                        lifecycle::validate_policy(record, &policy)?;
                        record.key.policy = policy.encode_to_vec();
                    }
                    if paths.contains(&"min_decryption_version") {
                        if request.min_decryption_version == 0 {
                            return Err(KeyError::InvalidArgument {
                                field: "min_decryption_version",
                                reason: "give the version to raise it to (at least 1)".into(),
                            });
                        }
                        lifecycle::raise_min_decryption_version(record, request.min_decryption_version)?;
                    }
                    if paths.contains(&"description") {
                        record.key.description = request.description.clone();
                    }
                    if paths.contains(&"labels") {
                        record.key.labels = serde_json::to_string(&request.labels).unwrap_or_else(|_| "{}".into());
                    }
                    Ok(())
                })
                .await?;
            Ok(pb::UpdateKeyPolicyResponse { key: Some(convert::record_to_proto(&record)) })
        }
        .await;
        audit.finish(&self.audit, result).await
    }

    /// EnableKey and DisableKey, which differ only in direction.
    pub(super) async fn handle_set_enabled(
        &self,
        request: Request<(String, u32)>,
        enabled: bool,
    ) -> Result<Response<pb::Key>, Status> {
        let operation = if enabled { "EnableKey" } else { "DisableKey" };
        let (claims, mut audit) = self.authorize(&request, operation, MANAGERS).await?;
        let (key, version) = request.into_inner();
        let result = self
            .edit(&claims.tenant, &key, &mut audit, |record| lifecycle::set_enabled(record, version, enabled))
            .await
            .map(|(record, ())| convert::record_to_proto(&record));
        audit.finish(&self.audit, result).await
    }

    pub(super) async fn handle_schedule_key_deletion(
        &self,
        request: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<pb::ScheduleKeyDeletionResponse>, Status> {
        let (claims, mut audit) = self.authorize(&request, "ScheduleKeyDeletion", MANAGERS).await?;
        let request = request.into_inner();
        let now = keymesh_store::now_millis();
        let result = self
            .edit(&claims.tenant, &request.key, &mut audit, |record| {
                lifecycle::schedule_deletion(record, request.version, request.pending_window_days, now)
            })
            .await
            .map(|(record, deletion_time)| pb::ScheduleKeyDeletionResponse {
                key: Some(convert::record_to_proto(&record)),
                deletion_time: Some(convert::timestamp(deletion_time)),
            });
        audit.finish(&self.audit, result).await
    }

    pub(super) async fn handle_cancel_key_deletion(
        &self,
        request: Request<pb::CancelKeyDeletionRequest>,
    ) -> Result<Response<pb::CancelKeyDeletionResponse>, Status> {
        let (claims, mut audit) = self.authorize(&request, "CancelKeyDeletion", MANAGERS).await?;
        let request = request.into_inner();
        let result = self
            .edit(&claims.tenant, &request.key, &mut audit, |record| {
                lifecycle::cancel_deletion(record, request.version)
            })
            .await
            .map(|(record, ())| pb::CancelKeyDeletionResponse { key: Some(convert::record_to_proto(&record)) });
        audit.finish(&self.audit, result).await
    }

    pub(super) async fn handle_get_public_key(
        &self,
        request: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        let (claims, mut audit) = self.authorize(&request, "GetPublicKey", READERS).await?;
        let request = request.into_inner();
        let result = async {
            require_key(&request.key)?;
            let (record, _) = self.store.record(&claims.tenant, &request.key).await?;
            let version = lifecycle::usable_version(&record, request.version, pb::Operation::GetPublicKey)?;
            audit.resource(&record.key.id, version.version as u32, version.algorithm);
            let algorithm = key_store::algorithm(&record, version)?;
            // Handing out a public key is a use of the key: FIPS mode (an HPKE key's public half would only
            // collect ciphertexts nobody may open) and the key's rules decide, as in crypto-service.
            let labels = lifecycle::enforced_labels(&record)?;
            let (external_issuer, external_subject) = claims.external();
            let no_context = std::collections::HashMap::new();
            let attributes = keymesh_policy::Attributes {
                identity: &claims.sub,
                tenant: &claims.tenant,
                roles: claims.role_names(),
                external_issuer,
                external_subject,
                context: &no_context,
                operation: pb::Operation::GetPublicKey,
                key_id: &record.key.id,
                key_name: &record.key.name,
                labels: &labels,
                algorithm,
                version: version.version as u32,
                time: chrono::Utc::now(),
            };
            let policy = CompiledPolicy::compile("key", &lifecycle::enforced_policy(&record)?)?;
            let warnings = self.policy.check_use(Some(&policy), &attributes)?;
            audit.policy_warnings(&warnings);
            let (material, _) = self.store.material(&record, version).await?;
            let public = algorithm.public_key(&material)?;
            Ok(pb::GetPublicKeyResponse {
                key_id: record.key.id.clone(),
                version: version.version as u32,
                algorithm: algorithm.to_proto() as i32,
                public_key_pem: public.to_pem()?,
                public_key_der: public.to_der()?,
            })
        }
        .await;
        audit.finish(&self.audit, result).await
    }
}

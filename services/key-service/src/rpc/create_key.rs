//! CreateKey: a new tenant-scoped key with a first version whose DEK comes from the OS CSPRNG and is
//! stored only wrapped by the KEK, bound to tenant/key/version/algorithm.

use keymesh_crypto::KeyAlgorithm;
use keymesh_proto::algorithm::{FromProto, ToProto, purpose_from_proto};
use keymesh_proto::identifiers;
use keymesh_proto::v1 as pb;
use keymesh_store::{
    StoreError,
    entity::key,
    keys::{KEY_ID_PREFIX, KeyRecord},
    now_millis,
};
use prost::Message;
use tonic::{Request, Response, Status};

use super::{Audited, KeyRpc, MANAGERS};
use crate::{convert::record_to_proto, error::KeyError, lifecycle};

const MAX_LABELS: usize = 64;

pub(super) fn validate_labels(labels: &std::collections::HashMap<String, String>) -> Result<(), KeyError> {
    if labels.len() > MAX_LABELS {
        return Err(KeyError::InvalidArgument { field: "labels", reason: format!("at most {MAX_LABELS} labels") });
    }
    for (k, v) in labels {
        if k.is_empty() || k.len() > 63 || v.len() > 256 {
            return Err(KeyError::InvalidArgument {
                field: "labels",
                reason: format!("label {k:?}: keys are 1-63 characters, values at most 256"),
            });
        }
    }
    Ok(())
}

pub(super) fn validate_description(description: &str) -> Result<(), KeyError> {
    if description.len() > 1024 {
        return Err(KeyError::InvalidArgument { field: "description", reason: "at most 1024 characters".into() });
    }
    Ok(())
}

/// The algorithm a new key gets: the one requested, which must serve the purpose (an unspecified purpose
/// is the algorithm's own), or the purpose's default.
pub(super) fn choose_algorithm(purpose: pb::KeyPurpose, requested: i32) -> Result<KeyAlgorithm, KeyError> {
    let requested = pb::Algorithm::try_from(requested).map_err(|_| KeyError::InvalidArgument {
        field: "algorithm",
        reason: format!("unknown algorithm {requested}"),
    })?;
    let serving = |purpose: pb::KeyPurpose| -> String {
        let names: Vec<&str> = KeyAlgorithm::all()
            .filter(|a| pb::KeyPurpose::from(a.purpose()) == purpose)
            .map(|a| a.to_proto().as_str_name())
            .collect();
        names.join(", ")
    };
    if requested == pb::Algorithm::Unspecified {
        return Ok(KeyAlgorithm::default_for(purpose_from_proto(purpose)));
    }
    let Some(algorithm) = KeyAlgorithm::from_proto(requested) else {
        return Err(KeyError::Unimplemented(format!("CreateKey with algorithm {}", requested.as_str_name())));
    };
    if purpose != pb::KeyPurpose::Unspecified && pb::KeyPurpose::from(algorithm.purpose()) != purpose {
        return Err(KeyError::InvalidArgument {
            field: "algorithm",
            reason: format!(
                "{} does not serve purpose {} (it serves {}); for {} choose one of: {}",
                requested.as_str_name(),
                purpose.as_str_name(),
                pb::KeyPurpose::from(algorithm.purpose()).as_str_name(),
                purpose.as_str_name(),
                serving(purpose)
            ),
        });
    }
    Ok(algorithm)
}

impl KeyRpc {
    pub(super) async fn handle_create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        let (claims, mut audit) = self.authorize(&request, "CreateKey", MANAGERS).await?;
        let request = request.into_inner();
        let outcome = self.create_key(&claims.tenant, request, &mut audit).await;
        audit.finish(&self.audit, outcome).await
    }

    async fn create_key(
        &self,
        tenant_id: &str,
        request: pb::CreateKeyRequest,
        audit: &mut Audited,
    ) -> Result<pb::CreateKeyResponse, KeyError> {
        identifiers::key_name("name", &request.name)?;
        validate_labels(&request.labels)?;
        validate_description(&request.description)?;
        let purpose = pb::KeyPurpose::try_from(request.purpose).map_err(|_| KeyError::InvalidArgument {
            field: "purpose",
            reason: format!("unknown purpose {}", request.purpose),
        })?;
        let external = match pb::KeyOrigin::try_from(request.origin) {
            Ok(pb::KeyOrigin::External) => true,
            Ok(pb::KeyOrigin::Generated | pb::KeyOrigin::Unspecified) => false,
            Err(_) => {
                return Err(KeyError::InvalidArgument {
                    field: "origin",
                    reason: format!("unknown origin {}", request.origin),
                });
            }
        };
        let algorithm = choose_algorithm(purpose, request.algorithm)?;
        let key_id = format!("{KEY_ID_PREFIX}{}", uuid::Uuid::now_v7().simple());
        let now = now_millis();
        let mut record = KeyRecord {
            key: key::Model {
                description: request.description,
                labels: serde_json::to_string(&request.labels).unwrap_or_else(|_| "{}".into()),
                ..key::Model::new(
                    &key_id,
                    tenant_id,
                    &request.name,
                    pb::KeyPurpose::from(algorithm.purpose()) as i32,
                    algorithm.to_proto() as i32,
                    pb::KeyState::Enabled as i32,
                    now,
                )
            },
            versions: Vec::new(),
        };
        let policy = request.policy.unwrap_or_default();
        if external {
            // No material until ImportKeyVersion brings it.
            record.key.state = pb::KeyState::PendingImport as i32;
            record.key.primary_version = 0;
        }
        lifecycle::validate_policy(&record, &policy)?;
        record.key.policy = policy.encode_to_vec();
        // FIPS mode and the tenant's (and the key's own) algorithm policy decide whether the key may exist,
        // before any material is made.
        let warnings = self.admit_new_material(&record)?;
        audit.policy_warnings(&warnings);
        if !external {
            let first = self.store.generate_version(&record, 1).await?;
            record.versions.push(first);
        }
        lifecycle::refresh_maintenance(&mut record, now);
        audit.resource(&key_id, record.key.primary_version as u32, algorithm.to_proto() as i32);
        match self.store.repo().create(&record).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => return Err(KeyError::AlreadyExists(request.name)),
            Err(e) => return Err(e.into()),
        }
        let key = &record.key;
        tracing::info!(%key_id, name = %key.name, tenant = %tenant_id, "created key");
        Ok(pb::CreateKeyResponse { key: Some(record_to_proto(&record)), warnings })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithm_choice() {
        use pb::{Algorithm as A, KeyPurpose as P};
        let pick = |p: P, a: A| choose_algorithm(p, a as i32);
        assert_eq!(pick(P::Unspecified, A::Unspecified).unwrap().to_proto(), A::Aes256Gcm);
        assert_eq!(pick(P::Sign, A::Unspecified).unwrap().to_proto(), A::EcdsaP256Sha256);
        assert_eq!(pick(P::Mac, A::Unspecified).unwrap().to_proto(), A::HmacSha256);
        assert_eq!(P::from(pick(P::Unspecified, A::Ed25519).unwrap().purpose()), P::Sign);
        assert_eq!(pick(P::Encrypt, A::RsaOaep3072Sha256).unwrap().to_proto(), A::RsaOaep3072Sha256);
        let err = pick(P::Sign, A::Aes256Gcm).unwrap_err().to_string();
        assert!(err.contains("ALGORITHM_ED25519") && err.contains("does not serve purpose KEY_PURPOSE_SIGN"), "{err}");
        assert_eq!(pick(P::Kem, A::Unspecified).unwrap().to_proto(), A::MlKem768);
        assert_eq!(pick(P::Sign, A::MlDsa65).unwrap().to_proto(), A::MlDsa65);
        assert_eq!(pick(P::Kem, A::MlKem1024).unwrap().to_proto(), A::MlKem1024);
        // The document's hybrid mode encrypts: an ENCRYPT key, refused for KEM with the algorithms KEM has.
        assert_eq!(pick(P::Encrypt, A::MlKem768Aes256Gcm).unwrap().to_proto(), A::MlKem768Aes256Gcm);
        let err = pick(P::Kem, A::MlKem768Aes256Gcm).unwrap_err().to_string();
        assert!(err.contains("ALGORITHM_ML_KEM_768,"), "{err}");
        assert!(matches!(choose_algorithm(P::Sign, 999), Err(KeyError::InvalidArgument { .. })));
    }

    #[test]
    fn the_ids_create_key_makes_pass_the_shared_validator() {
        assert_eq!(KEY_ID_PREFIX, identifiers::KEY_ID_PREFIX, "the store and the API tell ids from names alike");
        let id = format!("{KEY_ID_PREFIX}{}", uuid::Uuid::now_v7().simple());
        assert_eq!(identifiers::key_reference("key", &id), Ok(identifiers::KeyReference::Id(&id)));
    }
}

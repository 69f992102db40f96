//! The KeyService gRPC methods, one module per implemented RPC. Methods not implemented yet answer
//! UNIMPLEMENTED naming the method.

mod create_key;
mod get_data_key;
mod get_key;
mod import;
mod manage;
mod rewrap;
mod watch;

use std::sync::Arc;

use keymesh_audit::{AuditScope, AuditSink};
use keymesh_crypto::KeyAlgorithm;
use keymesh_gate::Gate;
use keymesh_mesh::auth::{AccessClaims, Role};
use keymesh_policy::{CompiledPolicy, PolicyEngine};
use keymesh_proto::algorithm::FromProto;
use keymesh_proto::identifiers;
use keymesh_proto::v1::{self as pb, key_service_server::KeyService};
use keymesh_store::keys::{KeyLookup, KeyRecord};
use tonic::{Request, Response, Status};

use crate::{error::KeyError, key_store::KeyStore, lifecycle};

const SERVICE: &str = "key-service";

/// Roles that change keys.
const MANAGERS: &[Role] = &[Role::Admin, Role::Owner];
/// Roles that read key metadata.
const READERS: &[Role] = &[Role::Viewer, Role::Developer, Role::Admin, Role::Owner, Role::Auditor];

/// Limits on what key-service grants crypto-service.
#[derive(Clone, Copy, Debug)]
pub struct UsageLimits {
    /// Encryptions granted per DEK fetch.
    pub encryption_block: u64,
    /// Encryptions granted with one version before the key rotates by itself.
    pub rotate_after_encryptions: u64,
}

/// The KeyService implementation.
pub struct KeyRpc {
    store: KeyStore,
    gate: Gate,
    audit: AuditSink,
    limits: UsageLimits,
    policy: Arc<PolicyEngine>,
}

impl KeyRpc {
    /// Wires the service: `gate` admits callers, `audit` is the sink it records into.
    pub fn new(store: KeyStore, gate: Gate, audit: AuditSink, limits: UsageLimits, policy: Arc<PolicyEngine>) -> Self {
        Self { store, gate, audit, limits, policy }
    }

    /// FIPS mode and the tenant's and the key's algorithm policies on new material for `record` (a new key,
    /// a rotation, an import): the warnings to report, or the refusal.
    fn admit_new_material(&self, record: &KeyRecord) -> Result<Vec<String>, KeyError> {
        let algorithm = KeyAlgorithm::from_i32(record.key.algorithm).ok_or_else(|| {
            KeyError::FailedPrecondition(format!("key {:?} has an algorithm this build lacks", record.key.name))
        })?;
        let policy = CompiledPolicy::compile("key", &lifecycle::enforced_policy(record)?)?;
        Ok(self.policy.check_new_key(&record.key.tenant_id, Some(&policy), algorithm)?)
    }

    /// The gate, for a method that needs one of `roles`: the caller authenticated and admitted under its rate
    /// limits, a caller without the role refused (and audited), and the call's audit event.
    async fn authorize<T>(
        &self,
        request: &Request<T>,
        operation: &str,
        roles: &[Role],
    ) -> Result<(Arc<AccessClaims>, Audited), Status> {
        let admitted = self.gate.admit_with_role(request, operation, roles).await?;
        Ok((admitted.claims, Audited(admitted.audit)))
    }

    /// Locks the tenant's key, applies `change`, reschedules its maintenance and commits.
    async fn edit<T>(
        &self,
        tenant_id: &str,
        key: &str,
        audit: &mut Audited,
        change: impl FnOnce(&mut KeyRecord) -> Result<T, KeyError> + Send,
    ) -> Result<(KeyRecord, T), KeyError> {
        require_key(key)?;
        let mut locked = self.store.lock(KeyLookup::InTenant { tenant_id, name_or_id: key }).await?;
        audit.resource(&locked.record.key.id, locked.record.key.primary_version as u32, locked.record.key.algorithm);
        let outcome = change(&mut locked.record)?;
        lifecycle::refresh_maintenance(&mut locked.record, keymesh_store::now_millis());
        let record = self.store.commit(locked).await?;
        Ok((record, outcome))
    }
}

/// Refuses a `key` field that is neither a key name nor a key id.
fn require_key(key: &str) -> Result<(), KeyError> {
    identifiers::key_reference("key", key)?;
    Ok(())
}

/// The audit event of one call.
struct Audited(AuditScope);

impl Audited {
    fn start(operation: &str) -> Self {
        Self(AuditScope::start(SERVICE, operation))
    }

    fn caller(&mut self, tenant: &str, identity: &str) {
        self.0.caller(tenant, identity);
    }

    fn resource(&mut self, key_id: &str, version: u32, algorithm: i32) {
        self.0.resource(key_id, version, algorithm);
    }

    fn policy_warnings(&mut self, warnings: &[String]) {
        self.0.policy_warnings(warnings);
    }

    async fn finish<T>(self, sink: &AuditSink, result: Result<T, KeyError>) -> Result<Response<T>, Status> {
        if let Err(KeyError::OtherTenant { key, owner }) = &result {
            self.0.cross_tenant_attempt(sink, owner, key).await;
        }
        self.0.finish(sink, result.map_err(Status::from)).await.map(Response::new)
    }

    async fn deny(self, sink: &AuditSink, status: Status) -> Status {
        self.0.deny(sink, status).await
    }
}

#[tonic::async_trait]
impl KeyService for KeyRpc {
    async fn create_key(
        &self,
        request: Request<pb::CreateKeyRequest>,
    ) -> Result<Response<pb::CreateKeyResponse>, Status> {
        self.handle_create_key(request).await
    }

    async fn get_key(&self, request: Request<pb::GetKeyRequest>) -> Result<Response<pb::GetKeyResponse>, Status> {
        self.handle_get_key(request).await
    }

    async fn list_keys(&self, request: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        self.handle_list_keys(request).await
    }

    async fn rotate_key(
        &self,
        request: Request<pb::RotateKeyRequest>,
    ) -> Result<Response<pb::RotateKeyResponse>, Status> {
        self.handle_rotate_key(request).await
    }

    async fn update_key_policy(
        &self,
        request: Request<pb::UpdateKeyPolicyRequest>,
    ) -> Result<Response<pb::UpdateKeyPolicyResponse>, Status> {
        self.handle_update_key_policy(request).await
    }

    async fn enable_key(
        &self,
        request: Request<pb::EnableKeyRequest>,
    ) -> Result<Response<pb::EnableKeyResponse>, Status> {
        self.handle_set_enabled(request.map(|r| (r.key, r.version)), true)
            .await
            .map(|r| r.map(|key| pb::EnableKeyResponse { key: Some(key) }))
    }

    async fn disable_key(
        &self,
        request: Request<pb::DisableKeyRequest>,
    ) -> Result<Response<pb::DisableKeyResponse>, Status> {
        self.handle_set_enabled(request.map(|r| (r.key, r.version)), false)
            .await
            .map(|r| r.map(|key| pb::DisableKeyResponse { key: Some(key) }))
    }

    async fn schedule_key_deletion(
        &self,
        request: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<pb::ScheduleKeyDeletionResponse>, Status> {
        self.handle_schedule_key_deletion(request).await
    }

    async fn cancel_key_deletion(
        &self,
        request: Request<pb::CancelKeyDeletionRequest>,
    ) -> Result<Response<pb::CancelKeyDeletionResponse>, Status> {
        self.handle_cancel_key_deletion(request).await
    }

    async fn get_public_key(
        &self,
        request: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        self.handle_get_public_key(request).await
    }

    async fn get_wrapping_key(
        &self,
        request: Request<pb::GetWrappingKeyRequest>,
    ) -> Result<Response<pb::GetWrappingKeyResponse>, Status> {
        self.handle_get_wrapping_key(request).await
    }

    async fn import_key_version(
        &self,
        request: Request<pb::ImportKeyVersionRequest>,
    ) -> Result<Response<pb::ImportKeyVersionResponse>, Status> {
        self.handle_import_key_version(request).await
    }

    async fn get_data_key(
        &self,
        request: Request<pb::GetDataKeyRequest>,
    ) -> Result<Response<pb::GetDataKeyResponse>, Status> {
        self.handle_get_data_key(request).await
    }

    type WatchKeyChangesStream = watch::ChangeStream;

    async fn watch_key_changes(
        &self,
        request: Request<pb::WatchKeyChangesRequest>,
    ) -> Result<Response<Self::WatchKeyChangesStream>, Status> {
        self.handle_watch_key_changes(request)
    }

    type RewrapKeysStream = rewrap::ProgressStream;

    async fn rewrap_keys(
        &self,
        request: Request<pb::RewrapKeysRequest>,
    ) -> Result<Response<Self::RewrapKeysStream>, Status> {
        self.handle_rewrap_keys(request).await
    }
}

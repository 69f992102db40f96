//! The KeyService gRPC methods, one module per implemented RPC. Methods not implemented yet answer
//! UNIMPLEMENTED naming the method.

mod create_key;
mod get_data_key;
mod get_key;

use std::sync::Arc;

use keymesh_audit::{AuditScope, AuditSink};
use keymesh_kms::KeyEncryptionBackend;
use keymesh_mesh::auth::{AccessClaims, TokenVerifier};
use keymesh_proto::v1::{self as pb, key_service_server::KeyService};
use keymesh_store::keys::KeyRepository;
use tonic::{Request, Response, Status};

use crate::error::KeyError;

const SERVICE: &str = "key-service";

/// The KeyService implementation.
pub struct KeyRpc {
    repo: KeyRepository,
    kms: Arc<dyn KeyEncryptionBackend>,
    verifier: Arc<TokenVerifier>,
    audit: AuditSink,
}

impl KeyRpc {
    /// Wires the service.
    pub fn new(
        repo: KeyRepository,
        kms: Arc<dyn KeyEncryptionBackend>,
        verifier: Arc<TokenVerifier>,
        audit: AuditSink,
    ) -> Self {
        Self { repo, kms, verifier, audit }
    }

    /// Verifies the caller's access token.
    async fn caller<T>(&self, request: &Request<T>) -> Result<Arc<AccessClaims>, Status> {
        Ok(self.verifier.verify_request(request).await?)
    }
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

    fn finish<T>(self, sink: &AuditSink, result: Result<T, KeyError>) -> Result<Response<T>, Status> {
        self.0.finish(sink, result.map_err(Status::from)).map(Response::new)
    }

    fn deny(self, sink: &AuditSink, status: Status) -> Status {
        self.0.deny(sink, status)
    }
}

fn unimplemented<T>(method: &str) -> Result<Response<T>, Status> {
    Err(KeyError::Unimplemented(format!("KeyService.{method}")).into())
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

    async fn list_keys(&self, _: Request<pb::ListKeysRequest>) -> Result<Response<pb::ListKeysResponse>, Status> {
        unimplemented("ListKeys")
    }

    async fn rotate_key(&self, _: Request<pb::RotateKeyRequest>) -> Result<Response<pb::RotateKeyResponse>, Status> {
        unimplemented("RotateKey")
    }

    async fn update_key_policy(
        &self,
        _: Request<pb::UpdateKeyPolicyRequest>,
    ) -> Result<Response<pb::UpdateKeyPolicyResponse>, Status> {
        unimplemented("UpdateKeyPolicy")
    }

    async fn enable_key(&self, _: Request<pb::EnableKeyRequest>) -> Result<Response<pb::EnableKeyResponse>, Status> {
        unimplemented("EnableKey")
    }

    async fn disable_key(&self, _: Request<pb::DisableKeyRequest>) -> Result<Response<pb::DisableKeyResponse>, Status> {
        unimplemented("DisableKey")
    }

    async fn schedule_key_deletion(
        &self,
        _: Request<pb::ScheduleKeyDeletionRequest>,
    ) -> Result<Response<pb::ScheduleKeyDeletionResponse>, Status> {
        unimplemented("ScheduleKeyDeletion")
    }

    async fn cancel_key_deletion(
        &self,
        _: Request<pb::CancelKeyDeletionRequest>,
    ) -> Result<Response<pb::CancelKeyDeletionResponse>, Status> {
        unimplemented("CancelKeyDeletion")
    }

    async fn get_public_key(
        &self,
        _: Request<pb::GetPublicKeyRequest>,
    ) -> Result<Response<pb::GetPublicKeyResponse>, Status> {
        unimplemented("GetPublicKey")
    }

    async fn get_wrapping_key(
        &self,
        _: Request<pb::GetWrappingKeyRequest>,
    ) -> Result<Response<pb::GetWrappingKeyResponse>, Status> {
        unimplemented("GetWrappingKey")
    }

    async fn import_key_version(
        &self,
        _: Request<pb::ImportKeyVersionRequest>,
    ) -> Result<Response<pb::ImportKeyVersionResponse>, Status> {
        unimplemented("ImportKeyVersion")
    }

    async fn get_data_key(
        &self,
        request: Request<pb::GetDataKeyRequest>,
    ) -> Result<Response<pb::GetDataKeyResponse>, Status> {
        self.handle_get_data_key(request).await
    }
}

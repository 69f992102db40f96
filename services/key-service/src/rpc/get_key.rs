//! GetKey: a key's metadata and versions, never its material. Read from the database, not the cache: the
//! caller may be checking the effect of a change it just made.

use keymesh_proto::v1 as pb;
use keymesh_store::keys::KeyLookup;
use tonic::{Request, Response, Status};

use super::{KeyRpc, READERS, require_key};
use crate::convert::record_to_proto;

impl KeyRpc {
    pub(super) async fn handle_get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        let (claims, mut audit) = self.authorize(&request, "GetKey", READERS).await?;
        let name = request.into_inner().key;
        let result = async {
            require_key(&name)?;
            let Some(record) =
                self.store.repo().load(KeyLookup::InTenant { tenant_id: &claims.tenant, name_or_id: &name }).await?
            else {
                return Err(self.store.not_in_tenant(&name).await);
            };
            audit.resource(&record.key.id, record.key.primary_version as u32, record.key.algorithm);
            Ok(pb::GetKeyResponse { key: Some(record_to_proto(&record)) })
        }
        .await;
        audit.finish(&self.audit, result).await
    }
}

//! GetKey: a key's metadata and versions, never its material.

use keymesh_mesh::auth::Role;
use keymesh_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{Audited, KeyRpc};
use crate::{convert::key_to_proto, error::KeyError};

impl KeyRpc {
    pub(super) async fn handle_get_key(
        &self,
        request: Request<pb::GetKeyRequest>,
    ) -> Result<Response<pb::GetKeyResponse>, Status> {
        let claims = self.caller(&request).await?;
        let mut audit = Audited::start("GetKey");
        audit.caller(&claims.tenant, &claims.sub);
        if let Err(denied) =
            claims.require_role(&[Role::Viewer, Role::Developer, Role::Admin, Role::Owner, Role::Auditor], "GetKey")
        {
            return Err(audit.deny(&self.audit, denied));
        }
        let name = request.into_inner().key;
        let result = async {
            if name.is_empty() {
                return Err(KeyError::InvalidArgument { field: "key", reason: "give a key name or id".into() });
            }
            let key =
                self.repo.find(&claims.tenant, &name).await?.ok_or_else(|| KeyError::KeyNotFound(name.clone()))?;
            let versions = self.repo.versions(&key.id).await?;
            audit.resource(&key.id, key.primary_version as u32, key.algorithm);
            Ok(pb::GetKeyResponse { key: Some(key_to_proto(&key, &versions)) })
        }
        .await;
        audit.finish(&self.audit, result)
    }
}

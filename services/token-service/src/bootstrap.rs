//! First start on an empty database: create the root tenant and a bootstrap admin application, and
//! write its credentials once to a 0600 file in the data directory.
//!
//! Crash safety: the credentials are written to a temporary file first, then the tenant and application
//! are committed in one transaction, then the file is renamed into place. A crash after the commit leaves
//! the temporary file, which the next start renames; a crash before leaves an empty database.

use std::{fs, path::Path};

use keymesh_mesh::auth::{KeyPermissionClaim, Role};
use keymesh_store::{
    entity::{application, tenant},
    now_millis,
    tokens::TokenRepository,
};
use serde::{Deserialize, Serialize};

use crate::{error::TokenError, secrets};

/// Name of the credentials file in the data directory.
pub const CREDENTIALS_FILE: &str = "bootstrap-credentials.json";
/// Name of the root tenant.
pub const ROOT_TENANT: &str = "root";

/// The bootstrap credentials as written to disk.
#[derive(Serialize, Deserialize)]
pub struct BootstrapCredentials {
    /// Root tenant id.
    pub tenant_id: String,
    /// Client id of the bootstrap admin.
    pub client_id: String,
    /// Its secret.
    pub client_secret: String,
    /// Where to exchange them for a token.
    pub token_endpoint: String,
}

/// Creates the root tenant and bootstrap admin when the database is empty.
pub async fn ensure_root_tenant(
    repo: &TokenRepository,
    data_dir: &Path,
    endpoint: &str,
    fips: bool,
) -> Result<(), TokenError> {
    let final_path = data_dir.join(CREDENTIALS_FILE);
    let tmp_path = data_dir.join(format!("{CREDENTIALS_FILE}.tmp"));
    if repo.tenant_count().await? > 0 {
        if tmp_path.exists() && !final_path.exists() {
            fs::rename(&tmp_path, &final_path)
                .map_err(|e| TokenError::Internal(format!("{}: {e}", final_path.display())))?;
        }
        return Ok(());
    }
    let tenant_id = format!("t_{}", uuid::Uuid::new_v4().simple());
    let client_id = format!("app_{}", uuid::Uuid::new_v4().simple());
    let secret = secrets::generate_secret()?;
    let secret_hash = tokio::task::block_in_place(|| secrets::hash_secret(&secret, fips))?;
    let credentials = BootstrapCredentials {
        tenant_id: tenant_id.clone(),
        client_id: client_id.clone(),
        client_secret: secret.to_string(),
        token_endpoint: endpoint.to_owned(),
    };
    let json = zeroize::Zeroizing::new(
        serde_json::to_vec_pretty(&credentials).map_err(|e| TokenError::Internal(e.to_string()))?,
    );
    keymesh_mesh::pki::write_file(&tmp_path, &json, 0o600).map_err(|e| TokenError::Internal(e.to_string()))?;

    let now = now_millis();
    let roles = serde_json::to_string(&[Role::Owner, Role::Admin, Role::Auditor]).unwrap_or_default();
    let permissions =
        serde_json::to_string(&[KeyPermissionClaim { key: "*".into(), ops: vec!["*".into()] }]).unwrap_or_default();
    repo.create_tenant_with_application(
        tenant::Model { id: tenant_id.clone(), name: ROOT_TENANT.into(), created_at: now, parent_id: None },
        application::Model {
            client_id: client_id.clone(),
            tenant_id,
            name: "bootstrap-admin".into(),
            roles,
            permissions,
            secret_hash,
            previous_secret_hash: None,
            previous_secret_expires_at: None,
            disabled: false,
            created_at: now,
        },
    )
    .await?;
    fs::rename(&tmp_path, &final_path).map_err(|e| TokenError::Internal(format!("{}: {e}", final_path.display())))?;
    tracing::info!(%client_id, path = %final_path.display(), "created the root tenant and bootstrap admin; credentials written (mode 0600)");
    Ok(())
}

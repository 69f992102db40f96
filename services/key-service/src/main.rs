//! key-service: the control plane for keys and their versions, owner of the KEK backend. This file only
//! wires the pieces together.

mod convert;
mod error;
mod rpc;

use std::{process::ExitCode, sync::Arc};

use keymesh_audit::AuditSink;
use keymesh_kms::{LocalKms, LocalKmsConfig};
use keymesh_mesh::{
    ServiceName,
    client::{token_verifier, traced_channel},
    config::{KmsParams, TokenParams},
    run::{self, BoxError, Startup},
    server,
};
use keymesh_proto::v1::key_service_server::KeyServiceServer;
use keymesh_store::keys::KeyRepository;
use tonic::service::Routes;

fn main() -> ExitCode {
    run::main(ServiceName::KeyService, serve)
}

async fn serve(startup: Startup) -> Result<(), BoxError> {
    let Startup { params, raw, tls } = startup;
    let token_params = TokenParams::from_raw(&raw)?;
    let kms_params = KmsParams::from_raw(&raw)?;
    let listener = server::bind(params.listen_addr).await?;

    let kms_config = LocalKmsConfig::resolve(
        params.data_dir.clone(),
        std::env::var("KEYMESH_MASTER_KEY").ok(),
        kms_params.master_key_file.clone(),
    );
    let kms = LocalKms::open_off_runtime(kms_config).await?;
    tracing::info!(kek = %keymesh_kms::KeyEncryptionBackend::describe(&kms).detail, "KMS backend ready");
    let db = keymesh_store::connect_and_migrate(&params.database_url(&raw)).await?;

    let verifier = token_verifier(&params, &tls, &token_params)?;
    let audit = AuditSink::start(traced_channel(&params.endpoints.audit_service, &tls, ServiceName::AuditService)?);
    let service = rpc::KeyRpc::new(KeyRepository::new(db), Arc::new(kms), Arc::new(verifier), audit.clone());
    let routes = Routes::new(KeyServiceServer::new(service));
    server::serve_until_signal(listener, &tls, routes, "keymesh.v1.KeyService", params.shutdown_grace).await?;
    // The server and its clones of the sink are gone: ship what the last requests recorded.
    audit.flush(std::time::Duration::from_secs(5)).await;
    Ok(())
}

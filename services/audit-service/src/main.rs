//! audit-service: the append-only, hash-chained audit trail. Mesh services append (by certificate
//! identity); auditors query their tenant's records. This file only wires the pieces together.

mod chain;
mod checkpoint;
mod export;
mod metrics;
mod rpc;
mod verify;

use std::{process::ExitCode, sync::Arc};

use keymesh_config::KeymeshConfig;
use keymesh_mesh::{
    ServiceName,
    client::token_verifier,
    config::TokenParams,
    run::{self, BoxError, Startup},
    server,
};
use keymesh_proto::v1::audit_service_server::AuditServiceServer;
use keymesh_store::audit::AuditRepository;
use tonic::service::Routes;

fn main() -> ExitCode {
    run::main(ServiceName::AuditService, serve)
}

async fn serve(startup: Startup<KeymeshConfig>) -> Result<(), BoxError> {
    let Startup { params, config: file, tls, readiness } = startup;
    let token_params = TokenParams::from_raw(&file.tokens)?;
    let audit_params = file.audit_params(&params)?;
    let kms = file.kms_checked()?;
    let listener = server::bind(params.listen_addr).await?;
    let db = keymesh_store::connect_and_migrate_with(&file.database(&params)?).await?;
    let pinged = db.clone();
    let repo = AuditRepository::new(db);
    // The checkpoint key is held by the KMS: audit-service needs the keyring only to unwrap it at start.
    let kms = keymesh_config::open_keyring(&kms, &params.data_dir).await?;
    let chain_metrics = metrics::ChainMetrics::new();
    chain_metrics.register_gauges();
    let checkpointer =
        Arc::new(checkpoint::Checkpointer::load_or_create(repo.clone(), &kms, chain_metrics.clone()).await?);
    let checkpoints = checkpointer.spawn(audit_params.checkpoint_interval, audit_params.retention);
    let verifier = token_verifier(&params, &tls, &token_params)?;
    readiness.watch_token_verifier(&verifier);
    // audit-service is the trail: its gate authenticates and authorizes, and records nothing.
    let gate = keymesh_gate::Gate::new(params.service.as_str(), verifier, None, None);
    let service = rpc::AuditRpc::new(chain::ChainWriter::new(repo, chain_metrics), gate);
    let routes = Routes::new(AuditServiceServer::new(service));
    readiness.add("database", keymesh_store::readiness_check(pinged));
    readiness.serving();
    server::serve_until_signal(listener, &tls, routes, &["keymesh.v1.AuditService"], &params.server).await?;
    checkpoints.abort();
    Ok(())
}

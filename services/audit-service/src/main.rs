//! audit-service: the append-only, hash-chained audit trail. Mesh services append (by certificate
//! identity); auditors query their tenant's records. This file only wires the pieces together.

mod chain;
mod rpc;

use std::{process::ExitCode, sync::Arc};

use keymesh_mesh::{
    ServiceName,
    auth::TokenVerifier,
    client::{RemoteJwks, traced_channel},
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

async fn serve(startup: Startup) -> Result<(), BoxError> {
    let Startup { params, raw, tls } = startup;
    let token_params = TokenParams::from_raw(&raw)?;
    let listener = server::bind(params.listen_addr).await?;
    let db = keymesh_store::connect_and_migrate(&params.database_url(&raw)).await?;
    let verifier = TokenVerifier::new(
        Arc::new(RemoteJwks::new(traced_channel(&params.endpoints.token_service, &tls, ServiceName::TokenService)?)),
        &token_params,
    );
    let writer = chain::ChainWriter::open(AuditRepository::new(db)).await?;
    let service = rpc::AuditRpc::new(writer, Arc::new(verifier));
    let routes = Routes::new(AuditServiceServer::new(service));
    tracing::info!(addr = %params.listen_addr, "audit-service listening (mTLS)");
    server::serve(
        listener,
        &tls,
        routes,
        &["keymesh.v1.AuditService"],
        server::shutdown_signal(),
        params.shutdown_grace,
    )
    .await?;
    Ok(())
}

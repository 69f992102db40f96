//! audit-service: the append-only, hash-chained audit trail. Mesh services append (by certificate
//! identity); auditors query their tenant's records. This file only wires the pieces together.

mod chain;
mod rpc;
mod verify;

use std::process::ExitCode;

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

async fn serve(startup: Startup) -> Result<(), BoxError> {
    let Startup { params, raw, tls } = startup;
    let token_params = TokenParams::from_raw(&raw)?;
    let listener = server::bind(params.listen_addr).await?;
    let db = keymesh_store::connect_and_migrate(&params.database_url(&raw)).await?;
    let verifier = token_verifier(&params, &tls, &token_params)?;
    let writer = chain::ChainWriter::new(AuditRepository::new(db));
    let service = rpc::AuditRpc::new(writer, verifier);
    let routes = Routes::new(AuditServiceServer::new(service));
    server::serve_until_signal(listener, &tls, routes, &["keymesh.v1.AuditService"], params.shutdown_grace).await?;
    Ok(())
}

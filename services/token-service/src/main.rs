//! token-service: tenants, applications and their credentials, and the EdDSA access tokens every other
//! service verifies. This file only wires the pieces together.

mod bootstrap;
mod error;
mod rpc;
mod secrets;
mod signing;

use std::process::ExitCode;

use keymesh_mesh::{
    ServiceName,
    config::{KmsParams, TokenParams},
    run::{self, BoxError, Startup},
    server,
};
use keymesh_proto::v1::token_service_server::TokenServiceServer;
use keymesh_store::tokens::TokenRepository;
use tonic::service::Routes;

fn main() -> ExitCode {
    run::main(ServiceName::TokenService, serve)
}

async fn serve(startup: Startup) -> Result<(), BoxError> {
    let Startup { params, raw, tls } = startup;
    let token_params = TokenParams::from_raw(&raw)?;
    let kms_params = KmsParams::from_raw(&raw)?;
    let listener = server::bind(params.listen_addr).await?;

    let kms = kms_params.open_keyring(&params.data_dir).await?;
    let db = keymesh_store::connect_and_migrate(&params.database_url(&raw)).await?;
    let repo = TokenRepository::new(db);
    let endpoint = params.endpoints.token_service.clone();
    // FIPS mode (enabled) hashes client secrets with PBKDF2 instead of Argon2id.
    let fips = raw.policy.fips_mode == keymesh_policy::FipsMode::Enabled;
    bootstrap::ensure_root_tenant(&repo, &params.data_dir, &endpoint, fips).await?;
    let signer = signing::Signer::load_or_create(&repo, &kms, token_params).await?;

    let service = rpc::TokenRpc::new(repo, signer, fips);
    let routes = Routes::new(TokenServiceServer::new(service));
    server::serve_until_signal(listener, &tls, routes, &["keymesh.v1.TokenService"], params.shutdown_grace).await?;
    Ok(())
}

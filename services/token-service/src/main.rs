//! token-service: tenants, applications and their credentials, and the EdDSA access tokens every other
//! service verifies. This file only wires the pieces together.

mod applications;
mod bootstrap;
mod config;
mod error;
mod exchange;
mod revocations;
mod rpc;
mod secrets;
mod signing;

use std::{process::ExitCode, sync::Arc, time::Duration};

use keymesh_audit::AuditSink;
use keymesh_config::KeymeshConfig;
use keymesh_mesh::{
    ServiceName,
    auth::TokenVerifier,
    client::traced_channel,
    run::{self, BoxError, Startup},
    server,
};
use keymesh_proto::v1::token_service_server::TokenServiceServer;
use keymesh_store::tokens::TokenRepository;
use tonic::service::Routes;

fn main() -> ExitCode {
    run::main(ServiceName::TokenService, serve)
}

async fn serve(startup: Startup<KeymeshConfig>) -> Result<(), BoxError> {
    let Startup { params, config: file, tls, readiness } = startup;
    let config::TokenConfig { tokens: token_params, exchange, kms } = config::TokenConfig::from_file(&file)?;
    let audit_params = file.audit_params(&params)?;
    let exchanger = exchange::Exchanger::from_config(&exchange, token_params.verify.clock_skew)?;
    let limits = Arc::new(keymesh_limits::Limiter::from_config(&file.limits, params.service.as_str())?);
    let listener = server::bind(params.listen_addr).await?;

    let kms = Arc::new(keymesh_config::open_keyring(&kms, &params.data_dir).await?);
    let db = keymesh_store::connect_and_migrate_with(&file.database(&params)?).await?;
    let pinged = db.clone();
    let repo = TokenRepository::new(db);
    let endpoint = params.endpoints.token_service.clone();
    // FIPS mode (enabled) hashes client secrets with PBKDF2 instead of Argon2id.
    let fips_mode = file.policy.fips_mode;
    let fips = fips_mode == keymesh_policy::FipsMode::Enabled;
    // Replicas starting together on an empty database: one creates the root tenant and the first signing key,
    // the others wait and find them.
    let startup_lock = repo.startup_lock().await?;
    bootstrap::ensure_root_tenant(&repo, &params.data_dir, &endpoint, fips).await?;
    let signer = Arc::new(signing::Signer::load_or_create(&repo, &kms, token_params.clone()).await?);
    if let Err(error) = startup_lock.release().await {
        tracing::warn!(%error, "the start-up lock's transaction had already ended; the lock went with it");
    }

    // token-service verifies its admin callers like every other service, from its own store.
    let authority = revocations::LocalAuthority { repo: repo.clone(), signer: signer.clone() };
    let verifier = Arc::new(TokenVerifier::new(Arc::new(authority), &token_params.verify));
    readiness.watch_token_verifier(&verifier);
    let poll = verifier.start_revocation_poll();
    let pruner = revocations::spawn_pruner(repo.clone(), Duration::from_secs(600));
    let rotation = signer.spawn_maintenance(repo.clone(), kms.clone(), signing::MAINTENANCE_PERIOD);
    let audit = AuditSink::start(
        traced_channel(&params.endpoints.audit_service, &tls, ServiceName::AuditService)?,
        fips_mode.to_proto(),
        &audit_params,
    )?;

    let forgetter = keymesh_limits::Limiter::spawn_forgetter(&limits);
    let gate = keymesh_gate::Gate::new(params.service.as_str(), verifier, Some(limits.clone()), Some(audit.clone()));
    let service = rpc::TokenRpc::new(repo, signer, gate, audit.clone(), exchanger, limits, fips);
    let routes = Routes::new(TokenServiceServer::new(service));
    readiness.add("database", keymesh_store::readiness_check(pinged));
    audit.report_readiness(&readiness);
    readiness.serving();
    server::serve_until_signal(listener, &tls, routes, &["keymesh.v1.TokenService"], &params.server).await?;
    poll.abort();
    pruner.abort();
    rotation.abort();
    forgetter.abort();
    audit.flush(Duration::from_secs(5)).await;
    Ok(())
}

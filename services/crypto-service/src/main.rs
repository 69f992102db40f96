//! crypto-service: the data plane. Encrypt and Decrypt run against DEKs cached in memory, so the steady
//! state touches neither the network nor the KMS. This file only wires the pieces together.

mod config;
mod dek_cache;
mod error;
mod rpc;

use std::{process::ExitCode, sync::Arc};

use keymesh_audit::AuditSink;
use keymesh_config::KeymeshConfig;
use keymesh_mesh::{
    ServiceName,
    client::{token_verifier, traced_channel},
    run::{self, BoxError, Startup},
    server,
};
use keymesh_policy::PolicyEngine;
use keymesh_proto::v1::{crypto_service_server::CryptoServiceServer, key_service_client::KeyServiceClient};
use tonic::service::Routes;

fn main() -> ExitCode {
    run::main(ServiceName::CryptoService, serve)
}

async fn serve(startup: Startup<KeymeshConfig>) -> Result<(), BoxError> {
    let Startup { params, config: file, tls, readiness } = startup;
    let config::CryptoConfig { tokens: token_params, dek_cache: cache_params, limits } =
        config::CryptoConfig::from_file(&file)?;
    let audit_params = file.audit_params(&params)?;
    let policy = Arc::new(PolicyEngine::from_config(&file.policy)?);
    tracing::info!(fips_mode = policy.fips_mode().name(), "policy engine ready");
    let listener = server::bind(params.listen_addr).await?;

    let verifier = token_verifier(&params, &tls, &token_params)?;
    readiness.watch_token_verifier(&verifier);
    let keys = KeyServiceClient::new(traced_channel(&params.endpoints.key_service, &tls, ServiceName::KeyService)?);
    let deks = Arc::new(dek_cache::DekCache::new(keys, cache_params));
    let watcher = deks.spawn_watcher();
    let fips = policy.fips_mode();
    let audit = AuditSink::start(
        traced_channel(&params.endpoints.audit_service, &tls, ServiceName::AuditService)?,
        fips.to_proto(),
        &audit_params,
    )?;
    let rate_limits = Arc::new(keymesh_limits::Limiter::from_config(&file.limits, params.service.as_str())?);
    let forgetter = keymesh_limits::Limiter::spawn_forgetter(&rate_limits);
    let gate =
        keymesh_gate::Gate::new(params.service.as_str(), verifier, Some(rate_limits.clone()), Some(audit.clone()));
    let service = rpc::CryptoRpc::new(gate, deks, audit.clone(), limits.unary_limit, policy, rate_limits);
    let max_message = limits.max_message_size();
    let server =
        CryptoServiceServer::new(service).max_decoding_message_size(max_message).max_encoding_message_size(max_message);
    let routes = Routes::new(server);
    let health = ["keymesh.v1.CryptoService", fips.health_name()];
    audit.report_readiness(&readiness);
    readiness.serving();
    server::serve_until_signal(listener, &tls, routes, &health, &params.server).await?;
    watcher.abort();
    forgetter.abort();
    // The server and its clones of the sink are gone: ship what the last requests recorded.
    audit.flush(std::time::Duration::from_secs(5)).await;
    Ok(())
}

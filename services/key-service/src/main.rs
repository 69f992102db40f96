//! key-service: the control plane for keys and their versions, owner of the KEK backends. This file only
//! wires the pieces together.
//!
//! `key-service [--config FILE]` serves; `key-service rewrap [--config FILE]` re-wraps the stored material
//! of every tenant's keys under the configured KMS keyring, with progress, and exits (non-zero when a
//! version could not be re-wrapped or the run stopped early; running it again resumes).

use key_service::{change_poll, changes, config::KeyConfig, key_store, maintenance, record_cache, rewrap, rpc};

use std::{process::ExitCode, sync::Arc};

use keymesh_audit::AuditSink;
use keymesh_config::KeymeshConfig;
use keymesh_mesh::{
    ServiceName,
    client::{token_verifier, traced_channel},
    config::MeshParams,
    run::{self, BoxError, Startup},
    server,
};
use keymesh_policy::PolicyEngine;
use keymesh_proto::v1::key_service_server::KeyServiceServer;
use keymesh_store::keys::KeyRepository;
use tonic::service::Routes;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("rewrap") {
        args.next();
        return run::command_with_args(ServiceName::KeyService, args, rewrap_all);
    }
    run::main_with_args(ServiceName::KeyService, args, serve)
}

/// The key store as configured: database, record cache and KMS keyring.
/// How often the KMS keyring's primary is probed for `/readyz`: a readiness probe reads the last outcome, so a
/// cloud KMS sees one wrap and one unwrap per period per replica, whatever the kubelet's probe period.
const KMS_PROBE_PERIOD: std::time::Duration = std::time::Duration::from_secs(2);

async fn open_store(
    params: &MeshParams,
    file: &KeymeshConfig,
    config: &KeyConfig,
) -> Result<key_store::KeyStore, BoxError> {
    let key_params = &config.key_service;
    let keyring = keymesh_config::open_keyrings(&config.kms, &params.data_dir).await?;
    let db = keymesh_store::connect_and_migrate_with(&file.database(params)?).await?;
    let records = match &key_params.redis_url {
        Some(url) => {
            let cache = record_cache::RecordCache::redis(url, key_params.redis_timeout, key_params.record_cache_ttl)
                .map_err(|e| format!("config field `key_service.redis_url` is invalid: {:?}", e.kind()))?;
            tracing::info!("key records are cached in Redis");
            cache
        }
        None => record_cache::RecordCache::in_memory(key_params.record_cache_ttl),
    };
    Ok(key_store::KeyStore::new(KeyRepository::new(db), records, keyring, changes::ChangeFeed::new()))
}

/// `key-service rewrap`: every tenant's keys, with a progress bar on a terminal and log lines otherwise.
async fn rewrap_all(startup: Startup<KeymeshConfig>) -> Result<(), BoxError> {
    let config = KeyConfig::from_file(&startup.config)?;
    let store = open_store(&startup.params, &startup.config, &config).await?;
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("re-wrap {bar:40} {pos}/{len} keys ({eta} left) {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let progress = rewrap::run(&store, None, |p| {
        bar.set_length(p.keys_total);
        bar.set_position(p.keys_done);
        bar.set_message(format!("{} re-wrapped, {} failed", p.versions_rewrapped, p.versions_failed));
        if bar.is_hidden() {
            tracing::info!(
                done = p.keys_done,
                total = p.keys_total,
                rewrapped = p.versions_rewrapped,
                "re-wrap progress"
            );
        }
    })
    .await?;
    bar.finish();
    tracing::info!(
        target = %progress.target,
        keys = progress.keys_done,
        rewrapped = progress.versions_rewrapped,
        current = progress.versions_current,
        failed = progress.versions_failed,
        "re-wrap complete"
    );
    if progress.versions_failed > 0 {
        return Err(format!(
            "{} version(s) could not be re-wrapped; last error: {}",
            progress.versions_failed,
            progress.last_error.unwrap_or_default()
        )
        .into());
    }
    Ok(())
}

async fn serve(startup: Startup<KeymeshConfig>) -> Result<(), BoxError> {
    let Startup { params, config: file, tls, readiness } = startup;
    let config = KeyConfig::from_file(&file)?;
    let policy = Arc::new(PolicyEngine::from_config(&file.policy)?);
    let audit_params = file.audit_params(&params)?;
    let rate_limits = Arc::new(keymesh_limits::Limiter::from_config(&file.limits, params.service.as_str())?);
    tracing::info!(fips_mode = policy.fips_mode().name(), "policy engine ready");
    let listener = server::bind(params.listen_addr).await?;
    let store = open_store(&params, &file, &config).await?;
    let (kms_health, kms_prober) =
        keymesh_kms::HealthWatch::spawn(store.kms().default_keyring().clone(), KMS_PROBE_PERIOD);
    let (token_params, key_params) = (&config.tokens, &config.key_service);
    let poller = change_poll::spawn_poller(store.clone(), key_params.change_poll);
    let sweeper = maintenance::spawn(store.clone(), key_params.maintenance_interval);

    let verifier = token_verifier(&params, &tls, token_params)?;
    readiness.watch_token_verifier(&verifier);
    let fips = policy.fips_mode();
    let audit = AuditSink::start(
        traced_channel(&params.endpoints.audit_service, &tls, ServiceName::AuditService)?,
        fips.to_proto(),
        &audit_params,
    )?;
    let limits = rpc::UsageLimits {
        encryption_block: key_params.encryption_block,
        rotate_after_encryptions: key_params.rotate_after_encryptions,
    };
    let forgetter = keymesh_limits::Limiter::spawn_forgetter(&rate_limits);
    let gate = keymesh_gate::Gate::new(params.service.as_str(), verifier, Some(rate_limits), Some(audit.clone()));
    let store_connection = store.repo().connection().clone();
    let service = rpc::KeyRpc::new(store, gate, audit.clone(), limits, policy);
    let routes = Routes::new(KeyServiceServer::new(service));
    let health = ["keymesh.v1.KeyService", fips.health_name()];
    readiness.add("database", keymesh_store::readiness_check(store_connection));
    readiness.add("kms", move || {
        let outcome = kms_health.current();
        async move { outcome }
    });
    audit.report_readiness(&readiness);
    readiness.serving();
    server::serve_until_signal(listener, &tls, routes, &health, &params.server).await?;
    poller.abort();
    sweeper.abort();
    kms_prober.abort();
    forgetter.abort();
    // The server and its clones of the sink are gone: ship what the last requests recorded.
    audit.flush(std::time::Duration::from_secs(5)).await;
    Ok(())
}

//! key-service: the control plane for keys and their versions, owner of the KEK backend. This file only
//! wires the pieces together.

use key_service::{changes, key_store, maintenance, record_cache, rpc};

use std::{process::ExitCode, sync::Arc};

use keymesh_audit::AuditSink;
use keymesh_kms::{LocalKms, LocalKmsConfig};
use keymesh_mesh::{
    ServiceName,
    client::{token_verifier, traced_channel},
    config::{KeyServiceParams, KmsParams, TokenParams},
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
    let key_params = KeyServiceParams::from_raw(&raw)?;
    let listener = server::bind(params.listen_addr).await?;

    let kms_config = LocalKmsConfig::resolve(
        params.data_dir.clone(),
        std::env::var("KEYMESH_MASTER_KEY").ok(),
        kms_params.master_key_file.clone(),
    );
    let kms = LocalKms::open_off_runtime(kms_config).await?;
    tracing::info!(kek = %keymesh_kms::KeyEncryptionBackend::describe(&kms).detail, "KMS backend ready");
    let db = keymesh_store::connect_and_migrate(&params.database_url(&raw)).await?;

    let records = match &key_params.redis_url {
        Some(url) => {
            let cache = record_cache::RecordCache::redis(url, key_params.redis_timeout, key_params.record_cache_ttl)
                .map_err(|e| format!("config field `key_service.redis_url` is invalid: {:?}", e.kind()))?;
            tracing::info!("key records are cached in Redis");
            cache
        }
        None => record_cache::RecordCache::in_memory(key_params.record_cache_ttl),
    };
    let store = key_store::KeyStore::new(KeyRepository::new(db), records, Arc::new(kms), changes::ChangeFeed::new());
    let poller = changes::spawn_poller(store.clone(), key_params.change_poll);
    let sweeper = maintenance::spawn(store.clone(), key_params.maintenance_interval);

    let verifier = token_verifier(&params, &tls, &token_params)?;
    let audit = AuditSink::start(traced_channel(&params.endpoints.audit_service, &tls, ServiceName::AuditService)?);
    let limits = rpc::UsageLimits {
        encryption_block: key_params.encryption_block,
        rotate_after_encryptions: key_params.rotate_after_encryptions,
    };
    let service = rpc::KeyRpc::new(store, Arc::new(verifier), audit.clone(), limits);
    let routes = Routes::new(KeyServiceServer::new(service));
    server::serve_until_signal(listener, &tls, routes, "keymesh.v1.KeyService", params.shutdown_grace).await?;
    poller.abort();
    sweeper.abort();
    // The server and its clones of the sink are gone: ship what the last requests recorded.
    audit.flush(std::time::Duration::from_secs(5)).await;
    Ok(())
}

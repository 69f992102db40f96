//! The mesh on a Vault Transit KEK (a real OpenBao dev server), end to end over mTLS with real Postgres and
//! Redis:
//! - migrating from the embedded local KEK to Vault re-wraps every DEK, and every old ciphertext still
//!   decrypts once the local KEK is gone;
//! - with Vault frozen mid-workload, DEKs already cached keep serving, calls that need Vault fail with
//!   UNAVAILABLE naming the backend within the deadline, and everything works again when Vault returns;
//! - a keyring whose primary (Vault) is down decrypts through its secondary, and token-service starts and
//!   signs through it too;
//! - the Transit key deleted gives FAILED_PRECONDITION saying so.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use integration_tests::{Mesh, RedisServer, count, decrypt_all, fresh_postgres_database, kms_servers::OpenBao, rewrap};
use keymesh_client::ClientError;
use keymesh_mesh::ServiceName;
use sea_orm::Database;

const KEYS: usize = 40;

/// The keyring environment: Vault as primary, with short deadlines, and the given other members.
fn vault_keyring(bao: &OpenBao, token: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = [
        ("KEYMESH_KMS__PRIMARY", "vault"),
        ("KEYMESH_KMS__BACKENDS__VAULT__TYPE", "vault"),
        ("KEYMESH_KMS__BACKENDS__VAULT__ADDRESS", bao.address.as_str()),
        ("KEYMESH_KMS__BACKENDS__VAULT__KEY", "keymesh"),
        ("KEYMESH_KMS__BACKENDS__VAULT__RESILIENCE__ATTEMPT_TIMEOUT_MS", "400"),
        ("KEYMESH_KMS__BACKENDS__VAULT__RESILIENCE__MAX_ATTEMPTS", "2"),
        ("KEYMESH_KMS__BACKENDS__VAULT__RESILIENCE__OPEN_FOR_MS", "1000"),
        ("VAULT_TOKEN", token),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    env.dedup_by(|a, b| a.0 == b.0);
    env
}

fn pairs(env: &[(String, String)]) -> Vec<(&str, &str)> {
    env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

fn status(result: Result<impl std::fmt::Debug, ClientError>) -> tonic::Status {
    match result {
        Err(ClientError::Status(status)) => status,
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_on_vault_transit_migrates_survives_outages_and_reports_a_deleted_key() {
    let bao = OpenBao::start();
    bao.create_transit_key("keymesh");
    let token = bao.keymesh_token("keymesh");
    let url = fresh_postgres_database().await;
    let redis = RedisServer::start();
    let mut mesh = Mesh::start(
        &[],
        &[
            (ServiceName::KeyService, "KEYMESH_DATABASE__URL", &url),
            (ServiceName::KeyService, "KEYMESH_KEY_SERVICE__REDIS_URL", &redis.url),
        ],
    )
    .await;
    let db = Database::connect(url.as_str()).await.unwrap();
    let admin = mesh.admin_client();

    // Keys under the embedded local KEK, with ciphertexts.
    let mut ciphertexts = Vec::new();
    for i in 0..KEYS {
        admin.create_key(&format!("k-{i:02}")).await.unwrap();
        let plaintext = format!("secret {i}").into_bytes();
        ciphertexts
            .push((admin.encrypt(&format!("k-{i:02}"), plaintext.clone(), Vec::new()).await.unwrap(), plaintext));
    }

    // Migration: Vault becomes primary, local only unwraps; RewrapKeys moves everything to Vault.
    let migrating = vault_keyring(&bao, &token, &[("KEYMESH_KMS__RETIRED", r#"["local"]"#)]);
    mesh.restart(ServiceName::KeyService, &pairs(&migrating)).await;
    mesh.restart(ServiceName::TokenService, &pairs(&migrating)).await;
    let admin = mesh.admin_client();
    let progress = rewrap(&admin, |_| false).await;
    let last = progress.last().unwrap();
    assert!(last.done && last.versions_failed == 0 && last.target.starts_with("vault=transit/keymesh:v1"), "{last:?}");
    let under_vault = "SELECT count(*) FROM key_versions WHERE wrapped_material IS NOT NULL AND kek_backend = 'vault' \
                       AND kek_id = 'transit/keymesh:v1'";
    let all = "SELECT count(*) FROM key_versions WHERE wrapped_material IS NOT NULL";
    assert_eq!(count(&db, under_vault).await, count(&db, all).await);

    // The local KEK goes: every old ciphertext decrypts through Vault alone (caches forgotten by restarts).
    let vault_only = vault_keyring(&bao, &token, &[]);
    for service in [ServiceName::KeyService, ServiceName::TokenService, ServiceName::CryptoService] {
        mesh.restart(service, &pairs(&vault_only)).await;
    }
    let admin = mesh.admin_client();
    decrypt_all(&admin, &ciphertexts, "through Vault alone").await;

    // `keymesh kms check` probes the backend end to end, and says in plain words what is wrong.
    let output = mesh.cli().args(["kms", "check"]).envs(pairs(&vault_only)).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && stdout.starts_with("ok    vault"), "{output:?}");
    let wrong_token = vault_keyring(&bao, "not-a-vault-token", &[]);
    let output = mesh.cli().args(["kms", "check"]).envs(pairs(&wrong_token)).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success(), "{output:?}");
    assert!(stdout.starts_with("FAIL  vault") && stdout.contains("permission denied"), "{stdout}");
    assert!(!stdout.contains("not-a-vault-token"), "no token in the output: {stdout}");
    for i in 0..5 {
        admin.encrypt(&format!("k-{i:02}"), b"warming the cache".to_vec(), Vec::new()).await.unwrap();
    }

    // Vault frozen mid-workload: the DEKs crypto-service holds keep serving; a new key needs Vault and
    // fails fast with UNAVAILABLE naming it; after Vault returns, it works.
    bao.pause(true);
    for i in 0..5 {
        admin.encrypt(&format!("k-{i:02}"), b"during the outage".to_vec(), Vec::new()).await.unwrap();
    }
    decrypt_all(&admin, &ciphertexts[..5], "cached DEKs while Vault is down").await;
    let started = Instant::now();
    let unavailable = status(admin.create_key("during-outage").await);
    assert_eq!(unavailable.code(), tonic::Code::Unavailable, "{unavailable:?}");
    assert!(unavailable.message().contains("vault"), "{unavailable:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
    bao.pause(false);
    let deadline = Instant::now() + Duration::from_secs(10);
    while admin.create_key("after-outage").await.is_err() {
        assert!(Instant::now() < deadline, "key creation did not recover after Vault returned");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // A keyring with the local KEK back as secondary: the CLI adds its wraps; then, with Vault down and
    // every cache cold, everything decrypts through the secondary.
    let with_secondary = vault_keyring(&bao, &token, &[("KEYMESH_KMS__SECONDARY", r#"["local"]"#)]);
    let status_code = mesh.command(ServiceName::KeyService).arg("rewrap").envs(pairs(&with_secondary)).status().await;
    assert!(status_code.unwrap().success(), "key-service rewrap to add the secondary");
    // token-service wraps its signing key under the secondary too when it starts with this keyring.
    mesh.restart(ServiceName::TokenService, &pairs(&with_secondary)).await;
    bao.pause(true);
    redis.cli(&["FLUSHALL"]);
    for service in [ServiceName::KeyService, ServiceName::TokenService] {
        mesh.restart(service, &pairs(&with_secondary)).await;
    }
    mesh.restart(ServiceName::CryptoService, &[]).await;
    // A fresh token, signed by a token-service that started with its primary KMS down.
    let admin = mesh.admin_client();
    decrypt_all(&admin, &ciphertexts, "through the secondary while the primary is down").await;
    bao.pause(false);

    // The Transit key deleted at the provider: keymesh says so, as FAILED_PRECONDITION.
    // (The breaker opened by the outage above lets a probe through after a second.)
    bao.delete_transit_key("keymesh");
    let deadline = Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let refused = status(admin.create_key("after-delete").await);
        if refused.code() != tonic::Code::Unavailable || Instant::now() > deadline {
            break refused;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("vault") && refused.message().contains("transit/keymesh"), "{refused:?}");
    assert!(!refused.message().contains(&token), "no token in errors");
}

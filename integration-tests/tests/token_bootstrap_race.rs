//! Two token-service replicas starting at the same moment on one empty Postgres (the chart's default of two
//! replicas on a first install) create one root tenant, one bootstrap admin and one signing key between them:
//! the start-up lock lets one bootstrap while the other waits and finds what it made. Each replica has its own
//! data directory, as pods have their own emptyDir, with the same master key and KDF state (the chart mounts
//! them from one Secret); exactly one of them holds the bootstrap credentials, and they are the stored admin's.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use integration_tests::{bin_dir, free_port, fresh_postgres_database};
use keymesh_mesh::{ServiceName, client::mtls_channel, run::dev_client_tls};
use sea_orm::{ConnectionTrait, Database, Statement};
use tokio::process::Command;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

async fn count(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    let row = db.query_one_raw(Statement::from_string(db.get_database_backend(), sql.to_owned())).await.unwrap();
    row.unwrap().try_get_by_index::<i64>(0).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_bootstrap_once() {
    keymesh_mesh::install_crypto_provider();
    let url = fresh_postgres_database().await;
    // One master key, KDF state and development CA, copied to each replica's own directory.
    let seed = tempfile::tempdir().unwrap();
    dev_client_tls(seed.path(), "race-probe").unwrap();
    let made = std::process::Command::new(bin_dir().join("keymesh"))
        .args(["kms", "check"])
        .env("KEYMESH_DATA_DIR", seed.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "keymesh kms check: {}", String::from_utf8_lossy(&made.stderr));
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    for dir in &dirs {
        copy_dir(seed.path(), dir.path());
    }

    let audit = format!("127.0.0.1:{}", free_port());
    let endpoints: Vec<String> = dirs.iter().map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut replicas = Vec::new();
    for (dir, endpoint) in dirs.iter().zip(&endpoints) {
        let mut command = Command::new(bin_dir().join("token-service"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap())
            .env("KEYMESH_DATA_DIR", dir.path())
            .env("KEYMESH_DATABASE__URL", &url)
            .env("KEYMESH_LISTEN_ADDR", endpoint)
            .env("KEYMESH_ENDPOINTS__TOKEN_SERVICE", endpoint)
            .env("KEYMESH_ENDPOINTS__AUDIT_SERVICE", &audit)
            .env("KEYMESH_TELEMETRY__METRICS_ADDR", "off")
            .env("KEYMESH_LOG", "warn")
            .stdout(Stdio::null())
            .kill_on_drop(true);
        replicas.push(command.spawn().unwrap());
    }

    let tls = dev_client_tls(seed.path(), "race-probe").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    for (endpoint, replica) in endpoints.iter().zip(replicas.iter_mut()) {
        loop {
            assert!(replica.try_wait().unwrap().is_none(), "the token-service at {endpoint} exited");
            let channel = mtls_channel(endpoint, &tls, ServiceName::TokenService).unwrap();
            let health = HealthClient::new(channel)
                .check(HealthCheckRequest { service: "keymesh.v1.TokenService".into() })
                .await
                .map(|r| r.into_inner().status);
            if matches!(health, Ok(status) if status == ServingStatus::Serving as i32) {
                break;
            }
            assert!(Instant::now() < deadline, "the token-service at {endpoint} does not serve: {health:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    let db = Database::connect(&url).await.unwrap();
    assert_eq!(count(&db, "SELECT count(*) FROM tenants").await, 1, "one root tenant");
    assert_eq!(count(&db, "SELECT count(*) FROM applications").await, 1, "one bootstrap admin");
    assert_eq!(count(&db, "SELECT count(*) FROM signing_keys WHERE retired_at IS NULL").await, 1, "one signing key");
    let holders: Vec<&Path> =
        dirs.iter().map(|d| d.path()).filter(|d| d.join("bootstrap-credentials.json").exists()).collect();
    assert_eq!(holders.len(), 1, "exactly one replica holds the bootstrap credentials");
    for dir in &dirs {
        assert!(!dir.path().join("bootstrap-credentials.json.tmp").exists());
    }
    let credentials: serde_json::Value =
        serde_json::from_slice(&std::fs::read(holders[0].join("bootstrap-credentials.json")).unwrap()).unwrap();
    let client_id = credentials["client_id"].as_str().unwrap();
    let sql = format!("SELECT count(*) FROM applications WHERE client_id = '{client_id}'");
    assert_eq!(count(&db, &sql).await, 1, "the credentials are the stored admin's");
}

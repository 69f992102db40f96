//! KEK re-wrap end to end on a real Postgres and Redis: moving every stored DEK from one KEK to another
//! (here: from the embedded local backend to a second local backend with its own master key, the shape of
//! a master-key rotation or of a move to another KMS), online, through the RewrapKeys RPC and through the
//! `key-service rewrap` command; a crash in the middle resumes; old ciphertexts keep decrypting throughout
//! and after the old KEK is gone; the RPC stays in the caller's tenant; a keyring that cannot unwrap the
//! material makes the command fail loudly and changes nothing.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::process::Stdio;

use futures_util::{StreamExt, stream};
use integration_tests::{Mesh, RedisServer, count, decrypt_all, fresh_postgres_database, rewrap, second_tenant};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1 as pb;
use sea_orm::Database;

const KEYS: usize = 300;

/// A keyring with a local backend named `next` (its own directory and master key) as primary, and the
/// given other members.
fn next_keyring(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut env = vec![
        ("KEYMESH_KMS__PRIMARY", "next"),
        ("KEYMESH_KMS__BACKENDS__NEXT__TYPE", "local"),
        ("KEYMESH_KMS__BACKENDS__NEXT__DATA_DIR", "kek-next"),
        ("KEYMESH_KMS__BACKENDS__NEXT__MASTER_KEY_ENV", "KEYMESH_MASTER_KEY_NEXT"),
        ("KEYMESH_MASTER_KEY_NEXT", "a different master secret for the next KEK"),
    ];
    env.extend_from_slice(extra);
    env
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewrap_moves_every_dek_to_a_new_kek_online_and_resumes_after_a_crash() {
    let url = fresh_postgres_database().await;
    let redis = RedisServer::start();
    // key-service's metrics port is fixed, so `key-service rewrap` (same configuration) would fail to start if
    // it tried to serve metrics too while the service runs.
    let metrics_addr = format!("127.0.0.1:{}", integration_tests::free_port());
    let mut mesh = Mesh::start(
        &[],
        &[
            (ServiceName::KeyService, "KEYMESH_TELEMETRY__METRICS_ADDR", &metrics_addr),
            (ServiceName::KeyService, "KEYMESH_DATABASE__URL", &url),
            (ServiceName::KeyService, "KEYMESH_KEY_SERVICE__REDIS_URL", &redis.url),
            (ServiceName::KeyService, "KEYMESH_KEY_SERVICE__CHANGE_POLL_MS", "200"),
        ],
    )
    .await;
    let db = Database::connect(url.as_str()).await.unwrap();
    let admin = mesh.admin_client();
    let (other_id, other_secret) = second_tenant(&mesh).await;
    let other = mesh.client_with(&other_id, &other_secret);
    other.create_key("other-tenant-key").await.unwrap();

    // Keys under the embedded local KEK, one of them rotated, with ciphertexts under every version.
    stream::iter(0..KEYS)
        .for_each_concurrent(16, |i| {
            let admin = &admin;
            async move {
                admin.create_key(&format!("k-{i:03}")).await.unwrap();
            }
        })
        .await;
    let mut ciphertexts = Vec::new();
    for round in 0..3 {
        for i in 0..5 {
            let plaintext = format!("round {round} key {i}").into_bytes();
            ciphertexts
                .push((admin.encrypt(&format!("k-{i:03}"), plaintext.clone(), Vec::new()).await.unwrap(), plaintext));
        }
        let request = admin.authorized(pb::RotateKeyRequest { key: "k-000".into() }).await.unwrap();
        admin.key_service().rotate_key(request).await.unwrap();
    }
    let material = "SELECT count(*) FROM key_versions WHERE wrapped_material IS NOT NULL";
    let versions = count(&db, material).await;
    assert_eq!(versions, KEYS as i64 + 3 + 1);

    // New keyring: `next` wraps, the old local KEK only unwraps. Everything still decrypts, and new keys
    // are wrapped under `next` alone.
    let retiring = next_keyring(&[("KEYMESH_KMS__RETIRED", r#"["local"]"#)]);
    mesh.restart(ServiceName::KeyService, &retiring).await;
    // token-service moves its signing key to the new primary when it starts with the new keyring.
    mesh.restart(ServiceName::TokenService, &retiring).await;
    decrypt_all(&admin, &ciphertexts, "old ciphertexts through the retired KEK").await;
    let fresh = admin.create_key("after-switch").await.unwrap();
    let fresh_row = format!(
        "SELECT count(*) FROM key_versions WHERE key_id = '{}' AND kek_backend = 'next' AND extra_wraps IS NULL",
        fresh.key_id
    );
    assert_eq!(count(&db, &fresh_row).await, 1);

    // Re-wrap through the RPC while Redis is frozen (invalidations time out; the run goes on), and crash
    // key-service right after the first saved progress (every 50 keys).
    redis.pause(true);
    let partial = rewrap(&admin, |m| m.keys_done > 0 && !m.done).await;
    let first = &partial[0];
    assert!(!first.resumed && first.keys_done == 0 && first.keys_total == KEYS as u64 + 1, "{first:?}");
    assert!(first.target.starts_with("next=local/"), "{first:?}");
    mesh.restart(ServiceName::KeyService, &next_keyring(&[("KEYMESH_KMS__RETIRED", r#"["local"]"#)])).await;
    redis.pause(false);
    let job = count(&db, "SELECT keys_done FROM rewrap_jobs WHERE finished_at IS NULL").await;
    assert!(job > 0 && job < KEYS as i64, "the crash left a partial job ({job} keys done)");
    decrypt_all(&admin, &ciphertexts, "during the re-wrap").await;

    let messages = rewrap(&admin, |_| false).await;
    let (start, last) = (messages.first().unwrap(), messages.last().unwrap());
    assert!(start.resumed && start.keys_done >= job as u64, "resumed from the saved cursor: {start:?}");
    assert!(last.done && last.versions_failed == 0 && last.last_error.is_empty(), "{last:?}");
    assert_eq!(last.keys_done, last.keys_total);
    assert!(last.versions_current >= 1, "after-switch was already current: {last:?}");
    // The caller's versions: all but the other tenant's one, plus after-switch. Versions done between the last
    // saved cursor and the crash count again, as current, in the resumed run.
    assert!(last.versions_rewrapped + last.versions_current >= versions as u64, "{last:?}");
    let stale = "SELECT count(*) FROM key_versions WHERE wrapped_material IS NOT NULL AND (kek_backend <> 'next' OR \
                 extra_wraps IS NOT NULL)";
    // Only the other tenant's key is left: the RPC re-wraps the caller's tenant alone.
    assert_eq!(count(&db, stale).await, 1);

    // The old KEK can go: with `next` alone, every old ciphertext still decrypts (after both services forget
    // what they cached), and a second run finds nothing to do.
    mesh.restart(ServiceName::KeyService, &next_keyring(&[])).await;
    mesh.restart(ServiceName::TokenService, &next_keyring(&[])).await;
    mesh.restart(ServiceName::CryptoService, &[]).await;
    let admin = mesh.admin_client();
    decrypt_all(&admin, &ciphertexts, "with the old KEK removed (and a token signed under the new one)").await;
    let again = rewrap(&admin, |_| false).await;
    let again = again.last().unwrap();
    assert!(!again.resumed && again.done && again.versions_rewrapped == 0, "{again:?}");
    assert_eq!(again.versions_current as i64, versions, "{again:?}");

    // The CLI follows the same RPC, and checks a keyring end to end before anyone relies on it.
    let output = mesh.cli().args(["keys", "rewrap"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success() && stdout.contains("re-wrapped to next=local/"), "{output:?}");
    let output = mesh
        .cli()
        .args(["kms", "check"])
        .envs(next_keyring(&[("KEYMESH_KMS__RETIRED", r#"["local"]"#)]))
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    assert_eq!(stdout.lines().filter(|l| l.starts_with("ok ")).count(), 2, "{stdout}");
    let wrong_secret = next_keyring(&[("KEYMESH_MASTER_KEY_NEXT", "not the secret kek-next was made with")]);
    let output = mesh.cli().args(["kms", "check"]).envs(wrong_secret).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success() && stderr.contains("does not match"), "{output:?}");
    assert!(!stderr.contains("not the secret"), "the secret must not be echoed: {stderr}");

    // The command covers every tenant; here it also adds the old local KEK back as a secondary, so every
    // version ends up wrapped under both.
    let status = mesh
        .command(ServiceName::KeyService)
        .arg("rewrap")
        .envs(next_keyring(&[("KEYMESH_KMS__SECONDARY", r#"["local"]"#)]))
        .status()
        .await
        .unwrap();
    assert!(status.success(), "key-service rewrap failed: {status}");
    let both = "SELECT count(*) FROM key_versions WHERE wrapped_material IS NOT NULL AND kek_backend = 'next' AND \
                extra_wraps LIKE '%\"backend\":\"local\"%'";
    assert_eq!(count(&db, both).await, versions + 1, "every version of every tenant has both wraps");

    // So the embedded default keyring (local alone) reads everything again.
    mesh.restart(ServiceName::KeyService, &[]).await;
    mesh.restart(ServiceName::CryptoService, &[]).await;
    decrypt_all(&admin, &ciphertexts, "through the secondary wraps").await;
    other.encrypt("other-tenant-key", b"still mine".to_vec(), Vec::new()).await.unwrap();

    // A keyring that holds none of the KEKs cannot re-wrap: the command fails, says why, and changes nothing.
    let before = count(&db, both).await;
    let output = mesh
        .command(ServiceName::KeyService)
        .arg("rewrap")
        .envs([
            ("KEYMESH_KMS__PRIMARY", "elsewhere"),
            ("KEYMESH_KMS__BACKENDS__ELSEWHERE__TYPE", "local"),
            ("KEYMESH_KMS__BACKENDS__ELSEWHERE__DATA_DIR", "kek-elsewhere"),
        ])
        .stderr(Stdio::piped())
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("could not be re-wrapped"), "{stderr}");
    assert!(!stderr.contains("master secret"), "no secret in the output: {stderr}");
    assert_eq!(count(&db, both).await, before);
}

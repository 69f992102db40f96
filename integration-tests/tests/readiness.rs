//! The admin port's probes (issue 22): `/readyz` turns 503, naming the database, within 5 s of key-service's
//! Postgres becoming unreachable, and 200 again once it is back; `/livez` stays 200 throughout. The database is
//! a real Postgres reached through a TCP relay in this test, which the test cuts (every connection dropped,
//! new ones refused) and restores: Postgres itself is shared with the other tests and keeps running. Then
//! token-service stops: once crypto-service's revocations pass their bound, its `/readyz` names the token
//! verifier, until token-service is back. And key-service's KMS (a real OpenBao Transit as the keyring's
//! primary) freezes: a key-service whose keyring has nothing else names the KMS in `/readyz` within 5 s, one with
//! a local secondary stays ready, and both are 200 once it answers.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use integration_tests::{Mesh, free_port, fresh_postgres_database, http_get, kms_servers::OpenBao, relayed_postgres};
use keymesh_mesh::ServiceName;

/// Polls `path` until its status line starts with `status`; returns the body and how long it took.
async fn wait_for(addr: &str, path: &str, status: &str, within: Duration) -> (String, Duration) {
    let started = Instant::now();
    loop {
        let (head, body) = http_get(addr, path).await;
        if head.starts_with(&format!("HTTP/1.1 {status}")) {
            return (body, started.elapsed());
        }
        assert!(started.elapsed() < within, "{path} is still {head:?} after {within:?}: {body}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_database_and_the_token_verifier_and_livez_does_not() {
    let url = fresh_postgres_database().await;
    let (relay, relayed) = relayed_postgres(&url).await;
    let admin = format!("127.0.0.1:{}", free_port());
    let crypto_admin = format!("127.0.0.1:{}", free_port());
    let key_service = ServiceName::KeyService;
    let mut mesh = Mesh::start(
        &[("KEYMESH_TOKENS__REVOCATION_BOUND_SECONDS", "2")],
        &[
            (key_service, "KEYMESH_DATABASE__URL", relayed.as_str()),
            (key_service, "KEYMESH_TELEMETRY__METRICS_ADDR", admin.as_str()),
            (ServiceName::CryptoService, "KEYMESH_TELEMETRY__METRICS_ADDR", crypto_admin.as_str()),
        ],
    )
    .await;

    let all_ok = "ok serving\nok token verifier\nok database\nok kms\nok audit spool\n";
    let (body, _) = wait_for(&admin, "/readyz", "200", Duration::from_secs(10)).await;
    assert_eq!(body, all_ok);
    assert!(http_get(&admin, "/livez").await.0.starts_with("HTTP/1.1 200"));

    relay.cut();
    let (body, took) = wait_for(&admin, "/readyz", "503", Duration::from_secs(5)).await;
    assert!(body.contains("failed database: "), "{body}");
    assert!(!body.contains(&relayed) && !body.contains("postgres://"), "no connection string: {body}");
    println!("/readyz was 503 {took:?} after the database went away: {body}");
    assert!(http_get(&admin, "/livez").await.0.starts_with("HTTP/1.1 200"), "alive while the database is away");
    assert!(http_get(&admin, "/startupz").await.0.starts_with("HTTP/1.1 200"), "started while the database is away");

    relay.restore();
    let (body, took) = wait_for(&admin, "/readyz", "200", Duration::from_secs(30)).await;
    assert_eq!(body, all_ok);
    println!("/readyz was 200 again {took:?} after the database returned");

    // token-service away: past the 2 s bound crypto-service refuses every token, and says so.
    wait_for(&crypto_admin, "/readyz", "200", Duration::from_secs(10)).await;
    mesh.kill(ServiceName::TokenService).await;
    let (body, _) = wait_for(&crypto_admin, "/readyz", "503", Duration::from_secs(10)).await;
    assert!(body.contains("failed token verifier: token revocations are"), "{body}");
    assert!(http_get(&crypto_admin, "/livez").await.0.starts_with("HTTP/1.1 200"));
    mesh.resume(ServiceName::TokenService, &[]).await;
    let (body, _) = wait_for(&crypto_admin, "/readyz", "200", Duration::from_secs(30)).await;
    assert_eq!(body, "ok serving\nok token verifier\nok audit spool\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_the_kms_keyring_and_livez_does_not() {
    keymesh_mesh::install_crypto_provider();
    let bao = OpenBao::start();
    let transit = bao.transit_member("transit", "keymesh");
    let token = transit.token.clone();
    let (admin, lone_admin) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let key_service = ServiceName::KeyService;
    // key-service: OpenBao Transit as primary, the local backend as secondary.
    let mut per_service = transit.for_service(key_service);
    per_service.extend([
        (key_service, "KEYMESH_TELEMETRY__METRICS_ADDR", admin.as_str()),
        (key_service, "KEYMESH_KMS__PRIMARY", "transit"),
        (key_service, "KEYMESH_KMS__SECONDARY", r#"["local"]"#),
    ]);
    let mut mesh = Mesh::start(&[], &per_service).await;
    // A replica whose keyring is OpenBao alone.
    mesh.spawn_replica(
        key_service,
        &[("KEYMESH_KMS__SECONDARY", "[]"), ("KEYMESH_TELEMETRY__METRICS_ADDR", lone_admin.as_str())],
    )
    .await;
    let all_ok = "ok serving\nok token verifier\nok database\nok kms\nok audit spool\n";
    for admin in [&admin, &lone_admin] {
        let (body, _) = wait_for(admin, "/readyz", "200", Duration::from_secs(10)).await;
        assert_eq!(body, all_ok);
    }

    // Frozen, not gone: a KMS that hangs is the harder case (no refusal, only silence). The keyring with a
    // secondary that answers stays usable, and so ready; the one without turns unready, naming the KMS.
    bao.pause(true);
    let (body, took) = wait_for(&lone_admin, "/readyz", "503", Duration::from_secs(5)).await;
    assert!(body.contains("failed kms: no member of the keyring can wrap and unwrap (\"transit\": "), "{body}");
    assert!(!body.contains(&token), "no token in the reason: {body}");
    println!("/readyz of the replica without a secondary was 503 {took:?} after the KMS froze: {body}");
    assert!(http_get(&lone_admin, "/livez").await.0.starts_with("HTTP/1.1 200"), "alive while the KMS is away");
    // The startup probe's endpoint: started, whatever the KMS says, so a pod is not restarted for an outage.
    assert!(http_get(&lone_admin, "/startupz").await.0.starts_with("HTTP/1.1 200"), "started while the KMS is away");
    let (head, body) = http_get(&admin, "/readyz").await;
    assert!(head.starts_with("HTTP/1.1 200") && body == all_ok, "the keyring with a secondary: {head} {body}");

    bao.pause(false);
    let (body, took) = wait_for(&lone_admin, "/readyz", "200", Duration::from_secs(30)).await;
    assert_eq!(body, all_ok);
    println!("/readyz was 200 again {took:?} after the KMS answered");
}

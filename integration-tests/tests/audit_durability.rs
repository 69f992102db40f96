//! Nothing acknowledged is lost from the audit trail, and nothing is stored twice: encrypt calls go on while
//! audit-service is down for 30 s, and crypto-service is killed with SIGKILL right after answering calls;
//! in the end every acknowledged call has exactly one record, found by the trace id the test gave the call.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use integration_tests::{Mesh, assert_each_recorded_once, audit_events, traced, with_token};
use keymesh_client::KeymeshClient;
use keymesh_mesh::ServiceName;
use keymesh_proto::v1::{
    self as pb, audit_service_client::AuditServiceClient, crypto_service_client::CryptoServiceClient,
};
use tokio::time::Instant;

/// One Encrypt with its own trace id; the trace id if it was acknowledged.
async fn traced_encrypt(
    client: &mut CryptoServiceClient<tonic::transport::Channel>,
    token: &str,
) -> Result<String, tonic::Status> {
    let (trace, mut request) = traced(
        pb::EncryptRequest { key: "audited".into(), plaintext: b"payload".to_vec(), ..Default::default() },
        Some(token),
    );
    request.metadata_mut().insert("x-request-id", format!("req-{trace}").parse().unwrap());
    client.encrypt(request).await?;
    Ok(trace)
}

async fn verify_chain(mesh: &Mesh, token: &str) {
    let verdict = AuditServiceClient::new(mesh.channel(ServiceName::AuditService))
        .verify_chain(with_token(pb::VerifyChainRequest::default(), token))
        .await
        .unwrap()
        .into_inner();
    assert!(verdict.valid, "{}", verdict.message);
}

async fn setup(mesh: &Mesh) -> (KeymeshClient, String) {
    let admin = mesh.admin_client();
    let token = admin.access_token().await.unwrap().to_string();
    admin.create_key("audited").await.unwrap();
    (admin, token)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_audit_service_outage_of_30_s_under_load_loses_no_acknowledged_call() {
    let mut mesh = Mesh::start(&[], &[]).await;
    let (_admin, token) = setup(&mesh).await;

    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let mut client = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService));
        let (token, acknowledged, failures, stop) =
            (token.clone(), acknowledged.clone(), failures.clone(), stop.clone());
        workers.push(tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match traced_encrypt(&mut client, &token).await {
                    Ok(trace) => acknowledged.lock().unwrap().push((Instant::now(), trace)),
                    Err(status) => failures.lock().unwrap().push(format!("{}: {}", status.code(), status.message())),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }

    tokio::time::sleep(Duration::from_secs(2)).await;
    mesh.kill(ServiceName::AuditService).await;
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(30)).await;
    let up_at = Instant::now();
    mesh.resume(ServiceName::AuditService, &[]).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }

    let failures = failures.lock().unwrap().clone();
    assert!(
        failures.is_empty(),
        "{} calls failed while audit-service was down, e.g. {:?}",
        failures.len(),
        failures.first()
    );
    let acknowledged = acknowledged.lock().unwrap().clone();
    let during_outage = acknowledged.iter().filter(|(at, _)| *at > down_at && *at < up_at).count();
    assert!(during_outage > 500, "the load went on during the outage: {during_outage} calls acknowledged");
    let traces: Vec<String> = acknowledged.into_iter().map(|(_, t)| t).collect();
    assert_each_recorded_once(&mesh, &token, "crypto-service", "Encrypt", &traces, Duration::from_secs(60)).await;
    verify_chain(&mesh, &token).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn calls_answered_just_before_a_sigkill_are_recorded_once_after_the_restart() {
    let mut mesh = Mesh::start(&[], &[]).await;
    let (_admin, token) = setup(&mesh).await;
    let mut acknowledged = Vec::new();

    // Killed while shipping: some of the batch is stored and acknowledged, some stored but not
    // acknowledged (re-sent after the restart), some still only in the spool.
    for round in 0..3 {
        let mut calls = Vec::new();
        for _ in 0..50 {
            let mut client = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService));
            let token = token.clone();
            calls.push(tokio::spawn(async move { traced_encrypt(&mut client, &token).await }));
        }
        for call in calls {
            acknowledged.push(call.await.unwrap().unwrap_or_else(|s| panic!("round {round}: {}", s.message())));
        }
        mesh.restart(ServiceName::CryptoService, &[]).await;
    }

    // Killed with audit-service down: the events exist only in the dead process's spool.
    mesh.kill(ServiceName::AuditService).await;
    let mut client = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService));
    for _ in 0..100 {
        acknowledged.push(traced_encrypt(&mut client, &token).await.unwrap());
    }
    mesh.restart(ServiceName::CryptoService, &[]).await;
    mesh.resume(ServiceName::AuditService, &[]).await;

    assert_each_recorded_once(&mesh, &token, "crypto-service", "Encrypt", &acknowledged, Duration::from_secs(30)).await;
    verify_chain(&mesh, &token).await;
    // Each record carries the request id its caller sent.
    for event in audit_events(&mesh, &token, "crypto-service", "Encrypt").await {
        assert_eq!(event.request_id, format!("req-{}", event.trace_id));
    }
}

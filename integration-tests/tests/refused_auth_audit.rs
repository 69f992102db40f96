//! Refused authentications are audited, and a flood of them cannot flood the trail. A call whose bearer token
//! is missing or does not verify is answered UNAUTHENTICATED, and crypto-service, key-service and token-service
//! each record it the same way: DENIED, status 16, the RPC's name, the caller's certificate identity (its
//! SPIFFE URI), no tenant (the token was not trusted), and never the token's text. Per (service, identity,
//! operation) and window, the first refusal is recorded at once with count 1 and the rest of the window's are
//! summed into one event at its end: 10,000 bad tokens make a handful of records whose counts add up to 10,000.
//!
//! Such records have no tenant, so the tenant-scoped Query RPC never shows them: the test reads them from
//! audit-service's own database (the embedded mesh's SQLite file) and decodes the stored events.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use integration_tests::{Mesh, with_token};
use keymesh_mesh::{ServiceName, client::mtls_channel, identity::app_spiffe_id};
use keymesh_proto::v1::{
    self as pb, audit_service_client::AuditServiceClient, crypto_service_client::CryptoServiceClient,
    key_service_client::KeyServiceClient, token_service_client::TokenServiceClient,
};
use keymesh_store::entity::audit_record;
use prost::Message;
use sea_orm::{Database, DatabaseConnection, EntityTrait};
use tonic::{Code, transport::Channel};

/// The aggregation window the meshes run with (seconds).
const WINDOW_SECS: u64 = 2;

/// Every service gets the short window (`WINDOW_SECS`).
const ENV: &[(&str, &str)] = &[("KEYMESH_AUDIT__REFUSED_AUTH_WINDOW_SECONDS", "2")];

/// A channel to `service` with the client certificate of the application `app`, so the refusals of one test
/// come from an identity of their own.
fn channel_as(mesh: &Mesh, service: ServiceName, app: &str) -> Channel {
    mtls_channel(mesh.endpoint(service), &mesh.app_tls(app), service).expect("channel")
}

/// A read-only connection to audit-service's database (the default embedded store: one SQLite file per
/// service in the mesh's data directory).
async fn audit_db(mesh: &Mesh) -> DatabaseConnection {
    let path = mesh.dir.path().join("audit-service.db");
    assert!(path.exists(), "audit-service's database is not at {}", path.display());
    let url = format!("sqlite://{}?mode=ro", path.display());
    Database::connect(url.as_str()).await.unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()))
}

/// Every stored record with its decoded event. A read that fails (the writer holds the lock) is an `Err`, for
/// the caller to try again.
async fn stored(db: &DatabaseConnection) -> Result<Vec<(audit_record::Model, pb::AuditEvent)>, String> {
    let rows = audit_record::Entity::find().all(db).await.map_err(|e| e.to_string())?;
    Ok(rows
        .into_iter()
        .map(|row| {
            let event = pb::AuditEvent::decode(row.event.as_slice())
                .unwrap_or_else(|e| panic!("record {} does not decode as an AuditEvent: {e}", row.sequence));
            (row, event)
        })
        .collect())
}

/// Whether `event` is a refused authentication of `operation` recorded by `service`.
fn refused_auth(event: &pb::AuditEvent, service: &str, operation: &str) -> bool {
    event.service == service
        && event.operation == operation
        && event.outcome == pb::Outcome::Denied as i32
        && event.status_code == Code::Unauthenticated as i32
}

/// One line per event, for failure messages.
fn describe(records: &[(audit_record::Model, pb::AuditEvent)]) -> String {
    let lines: Vec<String> = records
        .iter()
        .map(|(row, e)| {
            format!(
                "#{} {} {} outcome={} status={} identity={:?} tenant={:?} count={} reason={:?}",
                row.sequence,
                e.service,
                e.operation,
                e.outcome,
                e.status_code,
                e.identity,
                e.tenant_id,
                e.count,
                e.reason
            )
        })
        .collect();
    if lines.is_empty() { "(no records)".to_owned() } else { lines.join("\n  ") }
}

/// The DENIED records, for failure messages.
fn describe_denied(records: &[(audit_record::Model, pb::AuditEvent)]) -> String {
    let denied: Vec<_> = records.iter().filter(|(_, e)| e.outcome == pb::Outcome::Denied as i32).cloned().collect();
    describe(&denied)
}

/// No stored record carries `marker` (a bad token's text): not in the reason, nor anywhere in the event or
/// its filter columns.
fn assert_no_token_text(records: &[(audit_record::Model, pb::AuditEvent)], marker: &str) {
    for (row, event) in records {
        assert!(
            !event.reason.contains(marker),
            "record {} ({} {}) has the bad token's text in its reason: {:?}",
            row.sequence,
            event.service,
            event.operation,
            event.reason
        );
        let in_bytes = row.event.windows(marker.len()).any(|w| w == marker.as_bytes());
        let in_columns =
            [&row.identity, &row.resource, &row.operation, &row.tenant_id].iter().any(|c| c.contains(marker));
        assert!(
            !in_bytes && !in_columns,
            "record {} ({} {}) carries the bad token's text",
            row.sequence,
            event.service,
            event.operation
        );
    }
}

fn encrypt_request() -> pb::EncryptRequest {
    pb::EncryptRequest { key: "any-key".into(), plaintext: b"never encrypted".to_vec(), ..Default::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_authentication_is_audited_alike_by_crypto_key_and_token_service() {
    const APP: &str = "refused-probe";
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(ENV, &[]).await;
    let identity = app_spiffe_id(APP);
    // Each bad token is unique, so its text can be looked for in the whole trail afterwards.
    let marker = format!("bad-token-{}", uuid::Uuid::new_v4().simple());
    let bad = |service: &str| format!("{marker}-{service}");

    // One refused call to each service, each answered UNAUTHENTICATED.
    let err = CryptoServiceClient::new(channel_as(&mesh, ServiceName::CryptoService, APP))
        .encrypt(with_token(encrypt_request(), &bad("crypto")))
        .await
        .map(|_| ())
        .expect_err("crypto-service accepted a garbage token");
    assert_eq!(err.code(), Code::Unauthenticated, "crypto-service Encrypt: {}", err.message());
    let err = KeyServiceClient::new(channel_as(&mesh, ServiceName::KeyService, APP))
        .get_key(with_token(pb::GetKeyRequest { key: "any-key".into() }, &bad("key")))
        .await
        .map(|_| ())
        .expect_err("key-service accepted a garbage token");
    assert_eq!(err.code(), Code::Unauthenticated, "key-service GetKey: {}", err.message());
    let err = TokenServiceClient::new(channel_as(&mesh, ServiceName::TokenService, APP))
        .list_applications(with_token(pb::ListApplicationsRequest::default(), &bad("token")))
        .await
        .map(|_| ())
        .expect_err("token-service accepted a garbage token");
    assert_eq!(err.code(), Code::Unauthenticated, "token-service ListApplications: {}", err.message());
    // A missing token is a refused authentication too.
    let decrypt = pb::DecryptRequest { ciphertext: b"not a ciphertext".to_vec(), ..Default::default() };
    let err = CryptoServiceClient::new(channel_as(&mesh, ServiceName::CryptoService, APP))
        .decrypt(tonic::Request::new(decrypt))
        .await
        .map(|_| ())
        .expect_err("crypto-service accepted a call without a token");
    assert_eq!(err.code(), Code::Unauthenticated, "crypto-service Decrypt without a token: {}", err.message());

    let expected = [
        ("crypto-service", "Encrypt"),
        ("key-service", "GetKey"),
        ("token-service", "ListApplications"),
        ("crypto-service", "Decrypt"),
    ];
    let db = audit_db(&mesh).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let records = loop {
        match stored(&db).await {
            Ok(records) => {
                let missing: Vec<_> = expected
                    .iter()
                    .filter(|(service, operation)| !records.iter().any(|(_, e)| refused_auth(e, service, operation)))
                    .collect();
                if missing.is_empty() {
                    break records;
                }
                assert!(
                    Instant::now() < deadline,
                    "after 20 s no refused-authentication record (DENIED, status 16) for {missing:?}; the DENIED \
                     records are:\n  {}",
                    describe_denied(&records)
                );
            }
            Err(e) => assert!(Instant::now() < deadline, "cannot read audit-service's database for 20 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    for (service, operation) in expected {
        let found: Vec<_> = records.iter().filter(|(_, e)| refused_auth(e, service, operation)).cloned().collect();
        let all = describe(&found);
        for (row, event) in &found {
            assert!(event.identity.starts_with("spiffe://"), "{service} {operation}: not a SPIFFE identity:\n  {all}");
            assert_eq!(event.identity, identity, "{service} {operation}: the caller's certificate identity:\n  {all}");
            assert_eq!(event.tenant_id, "", "{service} {operation}: an untrusted token names no tenant:\n  {all}");
            assert_eq!(row.tenant_id, "", "{service} {operation}: the tenant column:\n  {all}");
            assert_eq!(row.identity, event.identity, "{service} {operation}: the identity column:\n  {all}");
            assert_eq!(row.outcome, pb::Outcome::Denied as i32, "{service} {operation}: the outcome column:\n  {all}");
        }
        // One refusal: recorded at once, as one event that stands for one refusal.
        assert_eq!(found.len(), 1, "{service} {operation}: one refusal, one record:\n  {all}");
        assert_eq!(found[0].1.count, 1, "{service} {operation}: the first refusal is recorded with count 1:\n  {all}");
    }
    assert_no_token_text(&records, &marker);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_bad_tokens_in_a_minute_make_a_bounded_number_of_records_that_carry_the_count() {
    const APP: &str = "flood-probe";
    const CALLS: u64 = 10_000;
    const IN_FLIGHT: usize = 48;
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(ENV, &[]).await;
    let identity = app_spiffe_id(APP);
    let marker = format!("flood-token-{}", uuid::Uuid::new_v4().simple());

    // 10,000 Encrypt calls, each with a bad token of its own, 48 at a time over one mTLS connection.
    let client = CryptoServiceClient::new(channel_as(&mesh, ServiceName::CryptoService, APP));
    let started = Instant::now();
    let answers: Vec<Result<(), String>> = futures_util::stream::iter(0..CALLS)
        .map(|i| {
            let mut client = client.clone();
            let token = format!("{marker}-{i}");
            async move {
                match client.encrypt(with_token(encrypt_request(), &token)).await {
                    Ok(_) => Err("accepted".to_owned()),
                    Err(s) if s.code() == Code::Unauthenticated => Ok(()),
                    Err(s) => Err(format!("{:?}: {}", s.code(), s.message())),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    let elapsed = started.elapsed();
    let unexpected: Vec<&String> = answers.iter().filter_map(|a| a.as_ref().err()).collect();
    assert!(
        unexpected.is_empty(),
        "{} of {CALLS} bad-token calls were not answered UNAUTHENTICATED, e.g. {:?}",
        unexpected.len(),
        unexpected.first()
    );
    assert_eq!(answers.len() as u64, CALLS);

    // Every refusal is accounted for: the counts of crypto-service's refused Encrypts add up to exactly 10,000
    // once the last window has ended.
    let flood = |records: &[(audit_record::Model, pb::AuditEvent)]| -> Vec<(audit_record::Model, pb::AuditEvent)> {
        records.iter().filter(|(_, e)| refused_auth(e, "crypto-service", "Encrypt")).cloned().collect()
    };
    let total = |records: &[(audit_record::Model, pb::AuditEvent)]| records.iter().map(|(_, e)| e.count).sum::<u64>();
    let db = audit_db(&mesh).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    let records = loop {
        match stored(&db).await {
            Ok(all) => {
                let records = flood(&all);
                let sum = total(&records);
                assert!(
                    sum <= CALLS,
                    "the counts add up to {sum}, more than the {CALLS} refusals made:\n  {}",
                    describe(&records)
                );
                if sum == CALLS {
                    break records;
                }
                assert!(
                    Instant::now() < deadline,
                    "30 s after the flood the counts of {} refused-Encrypt records add up to {sum}, not {CALLS}:\n  {}",
                    records.len(),
                    describe(&records)
                );
            }
            Err(e) => assert!(Instant::now() < deadline, "cannot read audit-service's database for 30 s: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };

    // At most two records per window (the first refusal, then the window's sum), however many refusals.
    let windows = (elapsed.as_secs_f64() / WINDOW_SECS as f64).ceil() as usize;
    let bound = 2 * (windows + 2);
    eprintln!(
        "{CALLS} refused authentications in {:.2} s ({:.0}/s) made {} audit records (bound {bound})",
        elapsed.as_secs_f64(),
        CALLS as f64 / elapsed.as_secs_f64(),
        records.len()
    );
    let all = describe(&records);
    assert!(
        records.len() <= bound,
        "{} records for {CALLS} refusals in {:.2} s: more than two per {WINDOW_SECS}-s window ({bound}):\n  {all}",
        records.len(),
        elapsed.as_secs_f64()
    );
    assert!(records.len() <= 100, "{} records for {CALLS} refusals: the flood reached the trail", records.len());
    for (_, event) in &records {
        assert!(event.count >= 1, "an event stands for at least one refusal:\n  {all}");
        assert!(event.identity.starts_with("spiffe://"), "not a SPIFFE identity:\n  {all}");
        assert_eq!(event.identity, identity, "the caller's certificate identity:\n  {all}");
        assert_eq!(event.tenant_id, "", "an untrusted token names no tenant:\n  {all}");
    }
    let first = records.iter().min_by_key(|(row, _)| row.sequence).expect("records");
    assert_eq!(first.1.count, 1, "the first refusal is recorded at once, with count 1:\n  {all}");

    // Nothing comes after the sum is complete: once the next window has ended too, the trail is unchanged.
    tokio::time::sleep(Duration::from_secs(WINDOW_SECS + 1)).await;
    let after = flood(&stored(&db).await.expect("audit-service's database"));
    assert_eq!(
        (after.len(), total(&after)),
        (records.len(), CALLS),
        "refused-Encrypt records changed after the count was complete:\n  {}",
        describe(&after)
    );
    assert_no_token_text(&stored(&db).await.expect("audit-service's database"), &marker);

    // The aggregated records are links of the one chain like any other.
    let token = mesh.admin_client().access_token().await.unwrap().to_string();
    let verdict = AuditServiceClient::new(mesh.channel(ServiceName::AuditService))
        .verify_chain(with_token(pb::VerifyChainRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert!(verdict.valid, "{}", verdict.message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_still_pending_at_a_graceful_shutdown_are_recorded() {
    const APP: &str = "shutdown-probe";
    const CALLS: u64 = 25;
    keymesh_mesh::install_crypto_provider();
    // An hour-long window: only the shutdown can record the count.
    let mut mesh = Mesh::start(&[("KEYMESH_AUDIT__REFUSED_AUTH_WINDOW_SECONDS", "3600")], &[]).await;
    let mut client = CryptoServiceClient::new(channel_as(&mesh, ServiceName::CryptoService, APP));
    for i in 0..CALLS {
        let err = client.encrypt(with_token(encrypt_request(), &format!("bad-{i}"))).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    }
    // SIGTERM: crypto-service drains, records the pending count and ships its spool.
    let pid = mesh.child(ServiceName::CryptoService).id().expect("crypto-service runs");
    let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "cannot signal crypto-service");
    let exited = tokio::time::timeout(Duration::from_secs(30), mesh.child(ServiceName::CryptoService).wait())
        .await
        .expect("crypto-service did not stop within 30 s of SIGTERM")
        .expect("wait");
    assert!(exited.success(), "crypto-service stopped with {exited}");
    // Started again, it ships whatever the shutdown could not.
    mesh.kill(ServiceName::CryptoService).await;
    mesh.resume(ServiceName::CryptoService, &[]).await;

    let db = audit_db(&mesh).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let records: Vec<_> = match stored(&db).await {
            Ok(all) => all.into_iter().filter(|(_, e)| refused_auth(e, "crypto-service", "Encrypt")).collect(),
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot read audit-service's database: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            }
        };
        let counts: Vec<u64> = records.iter().map(|(_, e)| e.count).collect();
        if counts.iter().sum::<u64>() == CALLS {
            assert_eq!(
                counts,
                [1, CALLS - 1],
                "the first refusal at once, the rest at shutdown:\n  {}",
                describe(&records)
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "20 s after the shutdown the refused Encrypts add up to {counts:?}, not {CALLS}:\n  {}",
            describe(&records)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

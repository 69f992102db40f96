//! VerifyChain against audit-service on real Postgres: a chain written by the running mesh verifies, and
//! each way of tampering with the stored rows (editing an event, deleting a record, swapping two records,
//! editing a filter column) is reported at the record where it happened; putting the rows back makes the
//! chain whole again. Re-sent batches are stored once, on Postgres and on SQLite.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use integration_tests::{Mesh, fresh_postgres_database, with_token};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use keymesh_store::entity::audit_record;
use sea_orm::{ActiveModelTrait, Database, EntityTrait, IntoActiveModel};
use tonic::Code;

async fn verify(mesh: &Mesh, token: &str, from: u64, to: u64) -> Result<pb::VerifyChainResponse, tonic::Status> {
    let request = pb::VerifyChainRequest { from_sequence: from, to_sequence: to };
    Ok(AuditServiceClient::new(mesh.channel(ServiceName::AuditService))
        .verify_chain(with_token(request, token))
        .await?
        .into_inner())
}

async fn broken_at(mesh: &Mesh, token: &str) -> (u64, String) {
    let verdict = verify(mesh, token, 0, 0).await.unwrap();
    assert!(!verdict.valid, "tampering went unnoticed");
    (verdict.first_invalid_sequence, verdict.message)
}

#[tokio::test]
async fn tampering_with_the_stored_chain_is_found_where_it_happened() {
    let url = fresh_postgres_database().await;
    let mesh = Mesh::start(&[], &[(ServiceName::AuditService, "KEYMESH_DATABASE__URL", &url)]).await;
    let admin = mesh.admin_client();
    let token = admin.access_token().await.unwrap().to_string();
    admin.create_key("audited").await.unwrap();
    for i in 0..20 {
        admin.encrypt("audited", format!("row {i}").into_bytes(), vec![]).await.unwrap();
    }
    let db = Database::connect(url.as_str()).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while audit_record::Entity::find().all(&db).await.unwrap().len() < 20 {
        assert!(tokio::time::Instant::now() < deadline, "the events did not arrive");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let verdict = verify(&mesh, &token, 0, 0).await.unwrap();
    assert!(verdict.valid, "{}", verdict.message);
    assert!(verdict.verified_records >= 20);
    let ranged = verify(&mesh, &token, 5, 12).await.unwrap();
    assert!(ranged.valid && ranged.verified_records == 8, "{ranged:?}", ranged = ranged.message);

    let k = 7i64;
    let original = audit_record::Entity::find_by_id(k).one(&db).await.unwrap().unwrap();
    let next = audit_record::Entity::find_by_id(k + 1).one(&db).await.unwrap().unwrap();
    let put = |row: audit_record::Model| {
        let db = db.clone();
        async move {
            row.into_active_model().reset_all().update(&db).await.unwrap();
        }
    };

    // An edited event.
    let mut edited = original.clone();
    let last = edited.event.len() - 1;
    edited.event[last] ^= 1;
    put(edited).await;
    let (at, why) = broken_at(&mesh, &token).await;
    assert_eq!(at, k as u64, "{why}");
    assert!(why.contains("edited"), "{why}");
    put(original.clone()).await;
    assert!(verify(&mesh, &token, 0, 0).await.unwrap().valid);

    // An edited filter column: the record would show in another tenant's queries.
    let mut moved = original.clone();
    moved.tenant_id = "t_somebody_else".into();
    put(moved).await;
    let (at, why) = broken_at(&mesh, &token).await;
    assert_eq!((at, why.contains("tenant_id")), (k as u64, true), "{why}");
    put(original.clone()).await;

    // Two records swapped in place (event ids are unique, so each is moved aside first).
    let at = |row: &audit_record::Model, sequence: i64, event_id: Option<&str>| {
        let mut row = row.clone();
        row.sequence = sequence;
        if let Some(id) = event_id {
            row.event_id = id.into();
        }
        row
    };
    put(at(&original, k, Some("aside-a"))).await;
    put(at(&next, k + 1, Some("aside-b"))).await;
    put(at(&next, k, None)).await;
    put(at(&original, k + 1, None)).await;
    let (broken, why) = broken_at(&mesh, &token).await;
    assert_eq!(broken, k as u64, "{why}");
    put(at(&next, k, Some("aside-b"))).await;
    put(at(&original, k + 1, Some("aside-a"))).await;
    put(original.clone()).await;
    put(next.clone()).await;
    assert!(verify(&mesh, &token, 0, 0).await.unwrap().valid);

    // A deleted record.
    audit_record::Entity::delete_by_id(k).exec(&db).await.unwrap();
    let (at, why) = broken_at(&mesh, &token).await;
    assert_eq!(at, k as u64, "{why}");
    assert!(why.contains("missing"), "{why}");
    let anchorless = verify(&mesh, &token, (k + 1) as u64, 0).await.unwrap();
    assert_eq!(anchorless.first_invalid_sequence, k as u64, "a range starting after the gap has no anchor");
    original.clone().into_active_model().insert(&db).await.unwrap();
    let verdict = verify(&mesh, &token, 0, 0).await.unwrap();
    assert!(verdict.valid, "{}", verdict.message);

    // Bad input and other roles.
    let err = verify(&mesh, &token, 10, 5).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    let (dev_id, dev_secret) = integration_tests::create_application(
        &mesh,
        &token,
        "",
        "dev",
        &[pb::Role::Developer],
        &[("*", &[pb::Operation::Encrypt])],
    )
    .await
    .unwrap();
    let dev = mesh.client_with(&dev_id, &dev_secret).access_token().await.unwrap();
    assert_eq!(verify(&mesh, &dev, 0, 0).await.unwrap_err().code(), Code::PermissionDenied);
}

/// Two audit-service replicas on one Postgres, each fed by a different service under load at once: one
/// chain, in one order, that verifies.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_appending_at_once_keep_one_chain() {
    let url = fresh_postgres_database().await;
    let mut mesh = Mesh::start(&[], &[(ServiceName::AuditService, "KEYMESH_DATABASE__URL", &url)]).await;
    let replica = mesh.spawn_replica(ServiceName::AuditService, &[]).await;
    // key-service ships to the replica, crypto-service to the first process.
    mesh.restart(ServiceName::KeyService, &[("KEYMESH_ENDPOINTS__AUDIT_SERVICE", &replica)]).await;
    let admin = std::sync::Arc::new(mesh.admin_client());
    let token = admin.access_token().await.unwrap().to_string();
    admin.create_key("busy").await.unwrap();

    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for worker in 0..8 {
        let admin = admin.clone();
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            while tokio::time::Instant::now() < until {
                if worker % 2 == 0 {
                    admin.encrypt("busy", b"x".to_vec(), vec![]).await.unwrap();
                } else {
                    admin.get_key("busy").await.unwrap();
                }
                calls += 1;
            }
            calls
        }));
    }
    let mut calls = 0;
    for task in tasks {
        calls += task.await.unwrap();
    }

    let db = Database::connect(url.as_str()).await.unwrap();
    let count = |service: &'static str| {
        let db = db.clone();
        async move {
            integration_tests::count(&db, &format!("SELECT count(*) FROM audit_records WHERE service = '{service}'"))
                .await
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (crypto, keys) = (count("crypto-service").await, count("key-service").await);
        // Every call is one event of one of the two services (plus key-service's CreateKey).
        if (crypto + keys) as u64 > calls {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "events missing: {crypto} + {keys} of {calls} calls");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(count("crypto-service").await > 0 && count("key-service").await > 0, "both replicas appended");
    let verdict = verify(&mesh, &token, 0, 0).await.unwrap();
    assert!(verdict.valid, "{}", verdict.message);
    let total = integration_tests::count(&db, "SELECT count(*) FROM audit_records").await;
    assert_eq!(verdict.verified_records, total as u64, "one chain through every record");
}

/// Retention deletes the records past the retention period up to a signed checkpoint, which stays as the
/// anchor: the remaining chain verifies from it, the checkpoints verify with the published key, and
/// tampering after pruning is still found (a record deleted at the new start, a rewritten checkpoint).
#[tokio::test]
async fn a_pruned_chain_verifies_from_its_signed_anchor() {
    let url = fresh_postgres_database().await;
    let audit_env = [
        (ServiceName::AuditService, "KEYMESH_DATABASE__URL", url.as_str()),
        (ServiceName::AuditService, "KEYMESH_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "1"),
    ];
    let mut mesh = Mesh::start(&[], &audit_env).await;
    let admin = mesh.admin_client();
    let token = admin.access_token().await.unwrap().to_string();
    admin.create_key("kept").await.unwrap();
    let db = Database::connect(url.as_str()).await.unwrap();
    let scalar = |sql: &'static str| {
        let db = db.clone();
        async move { integration_tests::count(&db, sql).await }
    };
    let wait_for = |what: &'static str, sql: &'static str, at_least: i64| async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let value = scalar(sql).await;
            if value >= at_least {
                return value;
            }
            assert!(tokio::time::Instant::now() < deadline, "{what}: {value}, expected {at_least}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    for i in 0..20 {
        admin.encrypt("kept", format!("old {i}").into_bytes(), vec![]).await.unwrap();
    }
    let records = wait_for("records", "SELECT count(*) FROM audit_records", 21).await;
    let anchor = wait_for("checkpoint", "SELECT coalesce(max(sequence), 0) FROM audit_checkpoints", records).await;
    for i in 0..10 {
        admin.encrypt("kept", format!("new {i}").into_bytes(), vec![]).await.unwrap();
    }
    wait_for("records", "SELECT count(*) FROM audit_records", anchor + 10).await;

    // Everything up to the anchor was received 91 days ago, as far as the database knows.
    let aged = format!("UPDATE audit_records SET received_at = received_at - 7862400000 WHERE sequence <= {anchor}");
    sea_orm::ConnectionTrait::execute_unprepared(&db, &aged).await.unwrap();
    mesh.restart(ServiceName::AuditService, &[]).await;
    wait_for("pruned", "SELECT coalesce(min(sequence), 0) FROM audit_records", anchor + 1).await;
    let kept = scalar("SELECT count(*) FROM audit_records").await;
    assert!(kept >= 10, "records younger than the retention period stay");

    let verdict = verify(&mesh, &token, 0, 0).await.unwrap();
    assert!(verdict.valid, "{}", verdict.message);
    assert_eq!(verdict.verified_records, kept as u64, "the whole remaining chain verifies");
    let ranged = verify(&mesh, &token, anchor as u64 + 2, 0).await.unwrap();
    assert!(ranged.valid, "{}", ranged.message);

    // The checkpoints verify with the published key, outside keymesh.
    let listed = AuditServiceClient::new(mesh.channel(ServiceName::AuditService))
        .list_checkpoints(with_token(pb::ListCheckpointsRequest::default(), &token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.checkpoints[0].sequence, anchor as u64, "the anchor is the oldest checkpoint kept");
    for checkpoint in &listed.checkpoints {
        let key = listed.keys.iter().find(|k| k.kid == checkpoint.kid).expect("the signing key is published");
        let public =
            openssl::pkey::PKey::public_key_from_raw_bytes(&key.public_key, openssl::pkey::Id::ED25519).unwrap();
        let signed_at = checkpoint.signed_at.unwrap();
        let millis = signed_at.seconds * 1000 + i64::from(signed_at.nanos) / 1_000_000;
        let statement =
            format!("keymesh-audit-checkpoint/v1\n{}\n{}\n{millis}\n", checkpoint.sequence, checkpoint.hash);
        let mut verifier = openssl::sign::Verifier::new_without_digest(&public).unwrap();
        assert!(verifier.verify_oneshot(&checkpoint.signature, statement.as_bytes()).unwrap());
    }

    // Export: one JSON line per record of the tenant (the records Query shows), each checkable on its own.
    let mut audit = AuditServiceClient::new(mesh.channel(ServiceName::AuditService));
    let mut stream = audit.export(with_token(pb::ExportRequest::default(), &token)).await.unwrap().into_inner();
    let mut lines = Vec::new();
    while let Some(chunk) = stream.message().await.unwrap() {
        lines.extend(String::from_utf8(chunk.json_lines).unwrap().lines().map(str::to_owned));
    }
    let query = pb::QueryRequest { limit: 10_000, ..Default::default() };
    let mut queried = audit.query(with_token(query, &token)).await.unwrap().into_inner();
    let mut sequences = Vec::new();
    while let Some(response) = queried.message().await.unwrap() {
        sequences.push(response.record.unwrap().sequence);
    }
    assert!(!lines.is_empty());
    assert_eq!(lines.len(), sequences.len(), "Export and Query show the same records");
    for (line, sequence) in lines.iter().zip(&sequences) {
        let record: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(record["sequence"].as_u64(), Some(*sequence));
        use base64::Engine;
        let event =
            base64::engine::general_purpose::STANDARD.decode(record["event_protobuf"].as_str().unwrap()).unwrap();
        let mut covered = record["previous_hash"].as_str().unwrap().as_bytes().to_vec();
        covered.extend_from_slice(&(*sequence as i64).to_be_bytes());
        covered.extend_from_slice(&event);
        assert_eq!(integration_tests::hex(&openssl::sha::sha256(&covered)), record["hash"].as_str().unwrap());
    }

    // Deleting the first remaining record is not pruning: no checkpoint vouches for it.
    let first = audit_record::Entity::find_by_id(anchor + 1).one(&db).await.unwrap().unwrap();
    audit_record::Entity::delete_by_id(anchor + 1).exec(&db).await.unwrap();
    let (at, why) = broken_at(&mesh, &token).await;
    assert_eq!(at, anchor as u64 + 1, "{why}");
    first.into_active_model().insert(&db).await.unwrap();
    assert!(verify(&mesh, &token, 0, 0).await.unwrap().valid);

    // Deleting the newest record is found too: a checkpoint was signed at it.
    let head = wait_for("a checkpoint at the head", "SELECT CASE WHEN (SELECT max(sequence) FROM audit_checkpoints) = (SELECT max(sequence) FROM audit_records) THEN max(sequence) ELSE 0 END FROM audit_records", 1).await;
    let newest = audit_record::Entity::find_by_id(head).one(&db).await.unwrap().unwrap();
    audit_record::Entity::delete_by_id(head).exec(&db).await.unwrap();
    let (at, why) = broken_at(&mesh, &token).await;
    assert_eq!(at, head as u64, "{why}");
    newest.into_active_model().insert(&db).await.unwrap();
    assert!(verify(&mesh, &token, 0, 0).await.unwrap().valid);

    // A checkpoint rewritten to match a rewritten chain no longer carries a valid signature.
    let rewrite = format!("UPDATE audit_checkpoints SET hash = repeat('0', 64) WHERE sequence = {anchor}");
    sea_orm::ConnectionTrait::execute_unprepared(&db, &rewrite).await.unwrap();
    let (at, why) = broken_at(&mesh, &token).await;
    assert_eq!(at, anchor as u64, "{why}");
    assert!(why.contains("signature"), "{why}");
}

/// A batch re-sent (its acknowledgement lost) is stored once: audit-service inserts a batch as all new and,
/// when the unique event id refuses that, rolls back and stores only the events it does not hold, on Postgres
/// (where the refused statement aborts the transaction) as on SQLite. The chain stays one unbroken chain.
async fn resent_batches_are_stored_once(mesh: &Mesh) {
    use keymesh_mesh::pki::{DevIdentity, ensure_dev_identity};
    let admin = mesh.admin_client();
    let token = admin.access_token().await.unwrap().to_string();
    // Appending is for mesh services: the test speaks as crypto-service, with its certificate.
    let crypto = ensure_dev_identity(
        mesh.dir.path(),
        &DevIdentity {
            name: ServiceName::CryptoService.as_str().into(),
            spiffe_id: ServiceName::CryptoService.spiffe_id(),
            server: true,
        },
    )
    .unwrap();
    let channel = keymesh_mesh::client::mtls_channel(
        mesh.endpoint(ServiceName::AuditService),
        &crypto,
        ServiceName::AuditService,
    )
    .unwrap();
    let event = |id: &str| pb::AuditEvent {
        event_id: format!("resent-{id}"),
        service: ServiceName::CryptoService.as_str().into(),
        tenant_id: "default".into(),
        operation: "Encrypt".into(),
        ..Default::default()
    };
    let batches = [
        vec![event("a"), event("b")],
        // Re-sent with one more event behind it.
        vec![event("a"), event("b"), event("c")],
        // The same id twice in one batch.
        vec![event("d"), event("d")],
        // Nothing new.
        vec![event("c")],
    ];
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut replies = AuditServiceClient::new(channel)
        .append(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let mut answers = Vec::new();
    for (n, events) in batches.into_iter().enumerate() {
        let events = events.iter().map(|e| prost::Message::encode_to_vec(e).into()).collect();
        tx.send(pb::AppendRequest { batch_id: n as u64, events }).await.unwrap();
        let reply = replies.message().await.unwrap().unwrap();
        answers.push((reply.batch_id, reply.accepted, reply.duplicates));
    }
    assert_eq!(answers, [(0, 2, 0), (1, 1, 2), (2, 1, 1), (3, 0, 1)]);
    let verdict = verify(mesh, &token, 0, 0).await.unwrap();
    assert!(verdict.valid, "{}", verdict.message);
}

#[tokio::test]
async fn resent_batches_are_stored_once_on_postgres() {
    let url = fresh_postgres_database().await;
    let mesh = Mesh::start(&[], &[(ServiceName::AuditService, "KEYMESH_DATABASE__URL", &url)]).await;
    resent_batches_are_stored_once(&mesh).await;
    let db = Database::connect(url.as_str()).await.unwrap();
    let stored =
        integration_tests::count(&db, "SELECT count(*) FROM audit_records WHERE event_id LIKE 'resent-%'").await;
    assert_eq!(stored, 4);
}

#[tokio::test]
async fn resent_batches_are_stored_once_on_sqlite() {
    let mesh = Mesh::start(&[], &[]).await;
    resent_batches_are_stored_once(&mesh).await;
}

//! Key lifecycle end to end on a real Postgres and a real Redis (a redis-server this test starts, so it can
//! pause and kill it): every KeyService method, every state transition and each refusal, crypto-shredding,
//! automatic and scheduled rotation, what Redis holds, Redis outages in the middle of a workload, and two
//! key-service replicas rotating one key concurrently.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use integration_tests::{Mesh, RedisServer, byok, fresh_postgres_database, hex, second_tenant, unhex};
use keymesh_client::{ClientError, KeymeshClient};
use keymesh_kms::{KeyEncryptionBackend, LocalKms, LocalKmsConfig, WrapContext, WrappedKey};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1 as pb;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, Statement};
use tonic::Code;

fn refused<T>(result: Result<T, ClientError>) -> (Code, String) {
    match result {
        Ok(_) => panic!("the call succeeded but should have been refused"),
        Err(ClientError::Status(s)) => (s.code(), s.message().to_owned()),
        Err(e) => panic!("local failure instead of a refusal: {e}"),
    }
}

fn status<T>(result: Result<tonic::Response<T>, tonic::Status>) -> (Code, String) {
    match result {
        Ok(_) => panic!("the call succeeded but should have been refused"),
        Err(s) => (s.code(), s.message().to_owned()),
    }
}

/// Key-service tuned so that everything happens within seconds: sweeps every second, changes polled every
/// 200 ms, and encryptions granted two at a time with automatic rotation after six.
fn key_service_env<'a>(db: &'a str, redis: &'a str) -> Vec<(ServiceName, &'a str, &'a str)> {
    vec![
        (ServiceName::KeyService, "KEYMESH_DATABASE__URL", db),
        (ServiceName::KeyService, "KEYMESH_KEY_SERVICE__REDIS_URL", redis),
        (ServiceName::KeyService, "KEYMESH_KEY_SERVICE__MAINTENANCE_INTERVAL_SECONDS", "1"),
        (ServiceName::KeyService, "KEYMESH_KEY_SERVICE__CHANGE_POLL_MS", "200"),
        (ServiceName::KeyService, "KEYMESH_KEY_SERVICE__ENCRYPTION_BLOCK", "2"),
        (ServiceName::KeyService, "KEYMESH_KEY_SERVICE__ROTATE_AFTER_ENCRYPTIONS", "6"),
    ]
}

struct Keys<'a>(&'a KeymeshClient);

impl Keys<'_> {
    async fn create(&self, name: &str, labels: &[(&str, &str)]) -> pb::Key {
        let request = pb::CreateKeyRequest {
            name: name.into(),
            purpose: pb::KeyPurpose::Encrypt as i32,
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            ..Default::default()
        };
        let request = self.0.authorized(request).await.unwrap();
        self.0.key_service().create_key(request).await.unwrap().into_inner().key.unwrap()
    }

    async fn rotate(&self, key: &str) -> Result<tonic::Response<pb::RotateKeyResponse>, tonic::Status> {
        let request = self.0.authorized(pb::RotateKeyRequest { key: key.into() }).await.unwrap();
        self.0.key_service().rotate_key(request).await
    }

    async fn list(&self, request: pb::ListKeysRequest) -> Result<tonic::Response<pb::ListKeysResponse>, tonic::Status> {
        let request = self.0.authorized(request).await.unwrap();
        self.0.key_service().list_keys(request).await
    }

    async fn update(
        &self,
        request: pb::UpdateKeyPolicyRequest,
    ) -> Result<tonic::Response<pb::UpdateKeyPolicyResponse>, tonic::Status> {
        let request = self.0.authorized(request).await.unwrap();
        self.0.key_service().update_key_policy(request).await
    }

    async fn enable(&self, key: &str, version: u32, enabled: bool) -> Result<pb::Key, tonic::Status> {
        let mut keys = self.0.key_service();
        if enabled {
            let request = self.0.authorized(pb::EnableKeyRequest { key: key.into(), version }).await.unwrap();
            keys.enable_key(request).await.map(|r| r.into_inner().key.unwrap())
        } else {
            let request = self.0.authorized(pb::DisableKeyRequest { key: key.into(), version }).await.unwrap();
            keys.disable_key(request).await.map(|r| r.into_inner().key.unwrap())
        }
    }

    async fn schedule_deletion(
        &self,
        key: &str,
        version: u32,
        days: u32,
    ) -> Result<tonic::Response<pb::ScheduleKeyDeletionResponse>, tonic::Status> {
        let request = pb::ScheduleKeyDeletionRequest { key: key.into(), version, pending_window_days: days };
        let request = self.0.authorized(request).await.unwrap();
        self.0.key_service().schedule_key_deletion(request).await
    }

    async fn cancel_deletion(&self, key: &str, version: u32) -> Result<pb::Key, tonic::Status> {
        let request = self.0.authorized(pb::CancelKeyDeletionRequest { key: key.into(), version }).await.unwrap();
        self.0.key_service().cancel_key_deletion(request).await.map(|r| r.into_inner().key.unwrap())
    }
}

fn version_state(key: &pb::Key, version: u32) -> pb::KeyVersionState {
    let v = key.versions.iter().find(|v| v.version == version).expect("version listed");
    pb::KeyVersionState::try_from(v.state).unwrap()
}

/// Waits up to 5 s for `check` to hold; changes reach crypto-service's cache asynchronously.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(5);
    while !check().await {
        assert!(Instant::now() < deadline, "never happened: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn decrypt_code(client: &KeymeshClient, ciphertext: &[u8]) -> Option<Code> {
    match client.decrypt(ciphertext.to_vec(), Vec::new()).await {
        Ok(_) => None,
        Err(ClientError::Status(s)) => Some(s.code()),
        Err(e) => panic!("{e}"),
    }
}

async fn encrypt_code(client: &KeymeshClient, key: &str) -> Option<Code> {
    match client.encrypt(key, b"x".to_vec(), Vec::new()).await {
        Ok(_) => None,
        Err(ClientError::Status(s)) => Some(s.code()),
        Err(e) => panic!("{e}"),
    }
}

async fn sql(db: &DatabaseConnection, statement: &str) {
    db.execute_raw(Statement::from_string(db.get_database_backend(), statement.to_owned())).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_method_state_and_refusal_on_postgres_and_redis() {
    let url = fresh_postgres_database().await;
    let mut redis = RedisServer::start();
    let mut mesh = Mesh::start(&[], &key_service_env(&url, &redis.url)).await;
    let db = Database::connect(url.as_str()).await.unwrap();
    let admin = mesh.admin_client();
    let keys = Keys(&admin);

    // Rotation: the old version still decrypts, new encryptions use the new one.
    let orders = keys.create("orders", &[("team", "payments"), ("tier", "gold")]).await;
    let c1 = admin.encrypt("orders", b"v1 secret".to_vec(), Vec::new()).await.unwrap();
    let rotated = keys.rotate("orders").await.unwrap().into_inner();
    assert_eq!(rotated.new_version, 2);
    let key = rotated.key.unwrap();
    assert_eq!(
        (version_state(&key, 1), version_state(&key, 2)),
        (pb::KeyVersionState::DecryptOnly, pb::KeyVersionState::Active)
    );
    // crypto-service hears of the rotation over WatchKeyChanges within milliseconds, not synchronously.
    let deadline = Instant::now() + Duration::from_secs(5);
    let c2 = loop {
        let ciphertext = admin.encrypt("orders", b"v2 secret".to_vec(), Vec::new()).await.unwrap();
        let request = admin.authorized(pb::DecryptRequest { ciphertext: ciphertext.clone(), ..Default::default() });
        if admin.crypto_service().decrypt(request.await.unwrap()).await.unwrap().into_inner().key_version == 2 {
            break ciphertext;
        }
        assert!(Instant::now() < deadline, "new encryptions never used version 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(admin.decrypt(c1.clone(), Vec::new()).await.unwrap().as_slice(), b"v1 secret");

    // ListKeys: tenant-scoped, filtered by labels, purpose and state, paginated with opaque tokens.
    for (name, team) in [("a", "payments"), ("b", "search"), ("c", "payments")] {
        keys.create(name, &[("team", team)]).await;
    }
    let payments = keys
        .list(pb::ListKeysRequest { labels: [("team".into(), "payments".into())].into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut names: Vec<String> = payments.keys.iter().map(|k| k.name.clone()).collect();
    names.sort();
    assert_eq!(names, ["a", "c", "orders"]);
    let mut seen = Vec::new();
    let mut token = String::new();
    loop {
        let page = keys
            .list(pb::ListKeysRequest { page_size: 1, page_token: token, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.keys.len() <= 1);
        seen.extend(page.keys.into_iter().map(|k| k.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ["a", "b", "c", "orders"]);
    let (code, message) =
        status(keys.list(pb::ListKeysRequest { page_token: "garbage!".into(), ..Default::default() }).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    let (code, _) = status(keys.list(pb::ListKeysRequest { page_size: 5000, ..Default::default() }).await);
    assert_eq!(code, Code::InvalidArgument);

    // min_decryption_version retires version 1 for decryption; it never goes back down.
    let raise = |v: u32| pb::UpdateKeyPolicyRequest {
        key: "orders".into(),
        min_decryption_version: v,
        update_paths: vec!["min_decryption_version".into()],
        ..Default::default()
    };
    keys.update(raise(2)).await.unwrap();
    eventually("decrypting below min_decryption_version is refused", || async {
        decrypt_code(&admin, &c1).await == Some(Code::FailedPrecondition)
    })
    .await;
    assert_eq!(decrypt_code(&admin, &c2).await, None);
    let (code, message) = status(keys.update(raise(1)).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    let (code, message) = status(keys.update(raise(9)).await);
    assert_eq!(code, Code::InvalidArgument, "{message}");
    let bad_path =
        pb::UpdateKeyPolicyRequest { key: "orders".into(), update_paths: vec!["state".into()], ..Default::default() };
    assert_eq!(status(keys.update(bad_path).await).0, Code::InvalidArgument);
    let labels = pb::UpdateKeyPolicyRequest {
        key: "orders".into(),
        description: "card numbers".into(),
        labels: [("team".into(), "risk".into())].into(),
        update_paths: vec!["description".into(), "labels".into()],
        ..Default::default()
    };
    let updated = keys.update(labels).await.unwrap().into_inner().key.unwrap();
    assert_eq!((updated.description.as_str(), updated.labels["team"].as_str()), ("card numbers", "risk"));
    assert!(!updated.labels.contains_key("tier"));

    // DisableKey stops encrypt and decrypt with FAILED_PRECONDITION; EnableKey brings it back.
    keys.enable("orders", 0, false).await.unwrap();
    eventually("a disabled key refuses encryption", || async {
        encrypt_code(&admin, "orders").await == Some(Code::FailedPrecondition)
    })
    .await;
    eventually("the change reaches decryption", || async {
        decrypt_code(&admin, &c2).await == Some(Code::FailedPrecondition)
    })
    .await;
    assert_eq!(status(keys.rotate("orders").await).0, Code::FailedPrecondition);
    keys.enable("orders", 0, true).await.unwrap();
    eventually("an enabled key encrypts again", || async { encrypt_code(&admin, "orders").await.is_none() }).await;

    // One version disabled: the primary stops encrypting, then comes back ACTIVE.
    let key = keys.enable("orders", 2, false).await.unwrap();
    assert_eq!(version_state(&key, 2), pb::KeyVersionState::Disabled);
    eventually("a disabled primary version refuses encryption", || async {
        encrypt_code(&admin, "orders").await == Some(Code::FailedPrecondition)
    })
    .await;
    let key = keys.enable("orders", 2, true).await.unwrap();
    assert_eq!(version_state(&key, 2), pb::KeyVersionState::Active);
    assert_eq!(keys.enable("orders", 7, true).await.unwrap_err().code(), Code::NotFound);

    // ScheduleKeyDeletion: the window is 7-30 days; a pending key is unusable; cancelling leaves it DISABLED.
    assert_eq!(status(keys.schedule_deletion("b", 0, 3).await).0, Code::InvalidArgument);
    assert_eq!(status(keys.schedule_deletion("b", 0, 31).await).0, Code::InvalidArgument);
    let cb = admin.encrypt("b", b"b".to_vec(), Vec::new()).await.unwrap();
    let scheduled = keys.schedule_deletion("b", 0, 0).await.unwrap().into_inner();
    let days =
        (scheduled.deletion_time.unwrap().seconds - scheduled.key.unwrap().create_time.unwrap().seconds) / 86_400;
    assert_eq!(days, 30, "the default window is 30 days");
    eventually("a key pending deletion refuses encryption", || async {
        encrypt_code(&admin, "b").await == Some(Code::FailedPrecondition)
    })
    .await;
    assert_eq!(decrypt_code(&admin, &cb).await, Some(Code::FailedPrecondition));
    assert_eq!(keys.enable("b", 0, true).await.unwrap_err().code(), Code::FailedPrecondition);
    let key = keys.cancel_deletion("b", 0).await.unwrap();
    assert_eq!(key.state, pb::KeyState::Disabled as i32);
    assert_eq!(keys.cancel_deletion("b", 0).await.unwrap_err().code(), Code::FailedPrecondition);
    keys.enable("b", 0, true).await.unwrap();
    eventually("a restored key decrypts", || async { decrypt_code(&admin, &cb).await.is_none() }).await;

    // Crypto-shredding of one version: once its deletion time passes (moved into the past here rather
    // than waiting a week), the sweeper erases the material and its ciphertexts never decrypt again.
    keys.rotate("orders").await.unwrap();
    keys.update(pb::UpdateKeyPolicyRequest {
        key: "orders".into(),
        min_decryption_version: 2,
        update_paths: vec!["min_decryption_version".into()],
        ..Default::default()
    })
    .await
    .unwrap();
    assert_eq!(status(keys.schedule_deletion("orders", 3, 7).await).0, Code::FailedPrecondition, "primary version");
    keys.schedule_deletion("orders", 2, 7).await.unwrap();
    let key = admin.get_key("orders").await.unwrap();
    assert_eq!(version_state(&key, 2), pb::KeyVersionState::PendingDeletion);
    eventually("the change reaches decryption", || async {
        decrypt_code(&admin, &c2).await == Some(Code::FailedPrecondition)
    })
    .await;
    sql(&db, &format!("UPDATE key_versions SET deletion_time = 1 WHERE key_id = '{}' AND version = 2", orders.key_id))
        .await;
    eventually("the sweeper destroys the version", || async {
        version_state(&admin.get_key("orders").await.unwrap(), 2) == pb::KeyVersionState::Destroyed
    })
    .await;
    let key = admin.get_key("orders").await.unwrap();
    assert!(key.versions.iter().find(|v| v.version == 2).unwrap().destroy_time.is_some());
    let row = db
        .query_one_raw(Statement::from_string(
            db.get_database_backend(),
            format!(
                "SELECT wrapped_material IS NULL AS gone FROM key_versions WHERE key_id = '{}' AND version = 2",
                orders.key_id
            ),
        ))
        .await
        .unwrap()
        .unwrap();
    assert!(row.try_get::<bool>("", "gone").unwrap(), "the wrapped material is erased from the database");
    assert_eq!(decrypt_code(&admin, &c2).await, Some(Code::FailedPrecondition));
    assert_eq!(keys.cancel_deletion("orders", 2).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(keys.enable("orders", 2, true).await.unwrap_err().code(), Code::FailedPrecondition);

    // The whole key.
    let ca = admin.encrypt("a", b"a".to_vec(), Vec::new()).await.unwrap();
    keys.schedule_deletion("a", 0, 7).await.unwrap();
    sql(&db, "UPDATE keys SET deletion_time = 1 WHERE name = 'a'").await;
    eventually("the sweeper destroys the key", || async {
        admin.get_key("a").await.unwrap().state == pb::KeyState::Destroyed as i32
    })
    .await;
    let key = admin.get_key("a").await.unwrap();
    assert!(key.versions.iter().all(|v| v.state == pb::KeyVersionState::Destroyed as i32));
    assert_eq!(decrypt_code(&admin, &ca).await, Some(Code::FailedPrecondition));
    assert_eq!(keys.enable("a", 0, true).await.unwrap_err().code(), Code::FailedPrecondition);
    assert_eq!(status(keys.schedule_deletion("a", 0, 7).await).0, Code::FailedPrecondition);

    // Automatic rotation: encryptions are granted two at a time and the key rotates after six.
    keys.create("busy", &[]).await;
    for _ in 0..20 {
        admin.encrypt("busy", b"payload".to_vec(), Vec::new()).await.unwrap();
    }
    let busy = admin.get_key("busy").await.unwrap();
    assert!(
        busy.primary_version >= 3,
        "20 encryptions at 6 per version rotate at least twice: {}",
        busy.primary_version
    );

    // Scheduled rotation with retirement: the primary version is made a day old, and the sweeper rotates
    // the key and retires versions whose successor is older than max_decryption_age.
    keys.create("sched", &[]).await;
    let cs = admin.encrypt("sched", b"old".to_vec(), Vec::new()).await.unwrap();
    let hours = |h: i64| Some(prost_types::Duration { seconds: h * 3600, nanos: 0 });
    let too_short =
        pb::KeyPolicy { rotation_period: Some(prost_types::Duration { seconds: 60, nanos: 0 }), ..Default::default() };
    let (code, message) = status(
        keys.update(pb::UpdateKeyPolicyRequest { key: "sched".into(), policy: Some(too_short), ..Default::default() })
            .await,
    );
    assert_eq!(code, Code::InvalidArgument, "{message}");
    let policy = pb::KeyPolicy { rotation_period: hours(24), max_decryption_age: hours(48), ..Default::default() };
    keys.update(pb::UpdateKeyPolicyRequest { key: "sched".into(), policy: Some(policy), ..Default::default() })
        .await
        .unwrap();
    let day = 24 * 3600 * 1000;
    sql(&db, &format!("UPDATE key_versions SET created_at = created_at - {} WHERE key_id IN (SELECT id FROM keys WHERE name = 'sched')", 3 * day)).await;
    sql(&db, "UPDATE keys SET next_maintenance_at = 1 WHERE name = 'sched'").await;
    eventually("the sweeper rotates on schedule", || async {
        admin.get_key("sched").await.unwrap().primary_version == 2
    })
    .await;
    assert_eq!(decrypt_code(&admin, &cs).await, None, "version 1's successor is brand new: it still decrypts");
    sql(&db, &format!("UPDATE key_versions SET created_at = created_at - {} WHERE key_id IN (SELECT id FROM keys WHERE name = 'sched')", 3 * day)).await;
    sql(&db, "UPDATE keys SET next_maintenance_at = 1 WHERE name = 'sched'").await;
    eventually("versions older than max_decryption_age are retired", || async {
        admin.get_key("sched").await.unwrap().min_decryption_version >= 2
    })
    .await;
    eventually("retired versions refuse decryption", || async {
        decrypt_code(&admin, &cs).await == Some(Code::FailedPrecondition)
    })
    .await;

    // Another tenant sees none of this: names are per tenant, and another tenant's key ids are not found.
    let (id, secret) = second_tenant(&mesh).await;
    let other = mesh.client_with(&id, &secret);
    let other_keys = Keys(&other);
    assert_eq!(refused(other.get_key("orders").await).0, Code::NotFound);
    assert_eq!(refused(other.get_key(&orders.key_id).await).0, Code::NotFound);
    assert_eq!(status(other_keys.rotate(&orders.key_id).await).0, Code::NotFound);
    assert_eq!(other_keys.enable("orders", 0, false).await.unwrap_err().code(), Code::NotFound);
    assert!(other_keys.list(pb::ListKeysRequest::default()).await.unwrap().into_inner().keys.is_empty());
    assert_eq!(decrypt_code(&other, &c1).await, Some(Code::InvalidArgument), "another tenant's ciphertext");

    // GetPublicKey on a symmetric key says why there is none.
    let request = admin.authorized(pb::GetPublicKeyRequest { key: "orders".into(), version: 0 }).await.unwrap();
    let (code, message) = status(admin.key_service().get_public_key(request).await);
    assert_eq!(code, Code::FailedPrecondition, "{message}");
    assert!(message.contains("symmetric"), "{message}");

    // Redis holds key records, and no DEK in any encoding: unwrap every live version with the mesh's own
    // KEK (same data directory) and look for its bytes in every value Redis holds.
    // The maintenance sweep may just have changed keys, dropping their cached records; with both services
    // started afresh, an encryption makes crypto-service fetch the DEK, and key-service caches the record.
    mesh.restart(ServiceName::KeyService, &[]).await;
    mesh.restart(ServiceName::CryptoService, &[]).await;
    let admin = mesh.admin_client();
    admin.encrypt("orders", b"after restart".to_vec(), Vec::new()).await.unwrap();
    // The change feed may still drop a record just cached (a change it had not yet seen when the services
    // restarted); a fresh crypto-service fetches the DEK again, which caches the record again. So look a few
    // times before concluding that records are not cached.
    let mut dump = redis.dump();
    for _ in 0..5 {
        if dump.iter().any(|(k, _)| k.starts_with("keymesh:v1:key:")) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        mesh.restart(ServiceName::CryptoService, &[]).await;
        mesh.admin_client().encrypt("orders", b"after restart".to_vec(), Vec::new()).await.unwrap();
        dump = redis.dump();
    }
    assert!(dump.iter().any(|(k, _)| k.starts_with("keymesh:v1:key:")), "records are cached in Redis: {dump:?}");
    let kms = LocalKms::open(&LocalKmsConfig::resolve(mesh.dir.path().to_path_buf(), None, None)).unwrap();
    let rows = db
        .query_all_raw(Statement::from_string(
            db.get_database_backend(),
            "SELECT k.tenant_id, v.key_id, v.version, v.wrapped_material, v.kek_backend, v.kek_id FROM key_versions v JOIN keys k ON k.id = v.key_id WHERE v.wrapped_material IS NOT NULL".to_owned(),
        ))
        .await
        .unwrap();
    assert!(rows.len() >= 8);
    for row in rows {
        let wrapped = WrappedKey {
            backend: row.try_get("", "kek_backend").unwrap(),
            kek_id: row.try_get("", "kek_id").unwrap(),
            ciphertext: row.try_get("", "wrapped_material").unwrap(),
        };
        let context = WrapContext {
            tenant_id: row.try_get("", "tenant_id").unwrap(),
            key_id: row.try_get("", "key_id").unwrap(),
            version: row.try_get::<i32>("", "version").unwrap() as u32,
            algorithm: keymesh_crypto::SymmetricAlgorithm::Aes256Gcm.name().to_owned(),
        };
        let dek = kms.unwrap(&wrapped, &context).await.unwrap();
        let raw = dek.expose_secret().to_vec();
        let encodings = [
            raw.clone(),
            hex(&raw).into_bytes(),
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &raw).into_bytes(),
            serde_json::to_vec(&raw).unwrap(),
            raw[..16].to_vec(),
        ];
        for (key, value) in &dump {
            for encoding in &encodings {
                assert!(
                    !value.windows(encoding.len()).any(|w| w == encoding.as_slice()),
                    "a DEK is in Redis under {key}"
                );
            }
        }
    }

    // Redis slow (paused) and then gone in the middle of a workload: every request still succeeds.
    let workload = |round: usize| {
        let admin = &admin;
        let keys = &keys;
        async move {
            let ciphertext = admin.encrypt("orders", format!("round {round}").into_bytes(), Vec::new()).await.unwrap();
            assert_eq!(
                admin.decrypt(ciphertext, Vec::new()).await.unwrap().as_slice(),
                format!("round {round}").as_bytes()
            );
            if round.is_multiple_of(5) {
                keys.rotate("busy").await.unwrap();
            }
            admin.get_key("orders").await.unwrap();
        }
    };
    for round in 0..10 {
        workload(round).await;
    }
    redis.pause(true);
    let started = Instant::now();
    for round in 10..30 {
        workload(round).await;
    }
    assert!(started.elapsed() < Duration::from_secs(20), "a paused Redis must not stall requests");
    redis.pause(false);
    redis.stop();
    for round in 30..50 {
        workload(round).await;
    }
    redis.restart();
    for round in 50..60 {
        workload(round).await;
    }
    eventually("records are cached in Redis again once it is back", || async {
        admin.encrypt("c", b"x".to_vec(), Vec::new()).await.unwrap();
        redis.dump().iter().any(|(k, _)| k.starts_with("keymesh:v1:key:"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_rotating_one_key_concurrently_make_exactly_one_version_per_rotation() {
    let url = fresh_postgres_database().await;
    let redis = RedisServer::start();
    let mut mesh = Mesh::start(&[], &key_service_env(&url, &redis.url)).await;
    let second = mesh
        .spawn_replica(
            ServiceName::KeyService,
            &[("KEYMESH_DATABASE__URL", url.as_str()), ("KEYMESH_KEY_SERVICE__REDIS_URL", redis.url.as_str())],
        )
        .await;
    let admin = mesh.admin_client();
    Keys(&admin).create("contended", &[]).await;
    let replicas = [
        keymesh_mesh::client::mtls_channel(
            mesh.endpoint(ServiceName::KeyService),
            &mesh.app_tls("test-app"),
            ServiceName::KeyService,
        )
        .unwrap(),
        keymesh_mesh::client::mtls_channel(&second, &mesh.app_tls("test-app"), ServiceName::KeyService).unwrap(),
    ];
    let token = admin.access_token().await.unwrap().to_string();
    let mut tasks = Vec::new();
    for worker in 0..20 {
        let channel = replicas[worker % 2].clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = pb::key_service_client::KeyServiceClient::new(channel);
            let mut versions = Vec::new();
            for _ in 0..5 {
                let mut request = tonic::Request::new(pb::RotateKeyRequest { key: "contended".into() });
                request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
                versions.push(client.rotate_key(request).await.unwrap().into_inner().new_version);
            }
            versions
        }));
    }
    let mut returned: Vec<u32> = Vec::new();
    for task in tasks {
        returned.extend(task.await.unwrap());
    }
    returned.sort_unstable();
    assert_eq!(returned, (2..=101).collect::<Vec<u32>>(), "each rotation got its own new version");
    let key = admin.get_key("contended").await.unwrap();
    assert_eq!(key.versions.len(), 101, "exactly 100 new versions");
    assert_eq!(key.primary_version, 101);
    let active: Vec<u32> =
        key.versions.iter().filter(|v| v.state == pb::KeyVersionState::Active as i32).map(|v| v.version).collect();
    assert_eq!(active, [101], "one ACTIVE version");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_material_encrypts_and_an_independent_implementation_decrypts() {
    let url = fresh_postgres_database().await;
    let redis = RedisServer::start();
    let mesh = Mesh::start(&[], &key_service_env(&url, &redis.url)).await;
    let admin = mesh.admin_client();
    let keys = Keys(&admin);
    let mut service = admin.key_service();
    keys.create("generated", &[]).await;

    // An EXTERNAL key waits for its material.
    let request = pb::CreateKeyRequest {
        name: "byok".into(),
        purpose: pb::KeyPurpose::Encrypt as i32,
        origin: pb::KeyOrigin::External as i32,
        ..Default::default()
    };
    let key = service.create_key(admin.authorized(request).await.unwrap()).await.unwrap().into_inner().key.unwrap();
    assert_eq!((key.state, key.versions.len()), (pb::KeyState::PendingImport as i32, 0));
    assert_eq!(encrypt_code(&admin, "byok").await, Some(Code::FailedPrecondition));

    let wrapping_key = |key: &str, algorithm: pb::WrappingAlgorithm| pb::GetWrappingKeyRequest {
        key: key.into(),
        wrapping_algorithm: algorithm as i32,
        wrapping_key_spec: pb::WrappingKeySpec::Rsa3072 as i32,
    };
    let refused = service
        .get_wrapping_key(
            admin.authorized(wrapping_key("generated", pb::WrappingAlgorithm::RsaOaepSha256)).await.unwrap(),
        )
        .await;
    assert_eq!(status(refused).0, Code::FailedPrecondition);

    // Wrap known material outside keymesh with RSA_AES_KEY_WRAP_SHA_256 and import it.
    let material: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    let material_hex = hex(&material);
    let dir = tempfile::tempdir().unwrap();
    let import = |algorithm: pb::WrappingAlgorithm, material_hex: String| {
        let admin = &admin;
        let dir = dir.path().to_path_buf();
        async move {
            let mut service = admin.key_service();
            let request = admin.authorized(wrapping_key("byok", algorithm)).await.unwrap();
            let wrapping = service.get_wrapping_key(request).await.unwrap().into_inner();
            assert!(wrapping.expire_time.is_some());
            let pem = dir.join("wrapping.pem");
            std::fs::write(&pem, &wrapping.public_key_pem).unwrap();
            let name = match algorithm {
                pb::WrappingAlgorithm::RsaOaepSha256 => "rsa-oaep-sha256",
                _ => "rsa-aes-key-wrap-sha256",
            };
            let wrapped = unhex(&byok(&[
                "wrap",
                "--public-key",
                pem.to_str().unwrap(),
                "--algorithm",
                name,
                "--material-hex",
                &material_hex,
            ]));
            (wrapping.import_token, wrapped)
        }
    };
    let (token, wrapped) = import(pb::WrappingAlgorithm::RsaAesKeyWrapSha256, material_hex.clone()).await;
    let import_request = |token: &[u8], algorithm: pb::WrappingAlgorithm, wrapped: &[u8]| pb::ImportKeyVersionRequest {
        key: "byok".into(),
        import_token: token.to_vec(),
        wrapping_algorithm: algorithm as i32,
        wrapped_key_material: wrapped.to_vec(),
    };
    // Refusals first: the wrong scheme for the token, tampered material, a token from elsewhere.
    for (request, why) in [
        (import_request(&token, pb::WrappingAlgorithm::RsaOaepSha256, &wrapped), "another wrapping algorithm"),
        (
            import_request(&token, pb::WrappingAlgorithm::RsaAesKeyWrapSha256, &{
                let mut w = wrapped.clone();
                *w.last_mut().unwrap() ^= 1;
                w
            }),
            "tampered material",
        ),
        (import_request(b"{}", pb::WrappingAlgorithm::RsaAesKeyWrapSha256, &wrapped), "not a token"),
    ] {
        let result = service.import_key_version(admin.authorized(request).await.unwrap()).await;
        let (code, message) = status(result);
        assert_eq!(code, Code::InvalidArgument, "{why}: {message}");
    }
    let mut other_key = import_request(&token, pb::WrappingAlgorithm::RsaAesKeyWrapSha256, &wrapped);
    other_key.key = "generated".into();
    assert_eq!(
        status(service.import_key_version(admin.authorized(other_key).await.unwrap()).await).0,
        Code::InvalidArgument
    );
    assert_eq!(
        admin.get_key("byok").await.unwrap().state,
        pb::KeyState::PendingImport as i32,
        "refusals change nothing"
    );

    let imported = service
        .import_key_version(
            admin
                .authorized(import_request(&token, pb::WrappingAlgorithm::RsaAesKeyWrapSha256, &wrapped))
                .await
                .unwrap(),
        )
        .await
        .unwrap()
        .into_inner();
    assert_eq!(imported.version, 1);
    let key = imported.key.unwrap();
    assert_eq!(key.state, pb::KeyState::Enabled as i32);
    assert_eq!(key.versions[0].origin, pb::KeyOrigin::External as i32);

    // Encrypt with keymesh; decrypt with the known key by the documented format, outside keymesh.
    let request = pb::EncryptRequest {
        key: "byok".into(),
        plaintext: b"imported and independent".to_vec(),
        aad: b"order-17".to_vec(),
        encryption_context: [("tenant".to_owned(), "acme".to_owned())].into(),
        ..Default::default()
    };
    let ciphertext =
        admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await.unwrap().into_inner().ciphertext;
    let opened = byok(&[
        "open",
        "--key-hex",
        &material_hex,
        "--ciphertext-hex",
        &hex(&ciphertext),
        "--aad-hex",
        &hex(b"order-17"),
        "--context-json",
        r#"{"tenant":"acme"}"#,
    ]);
    assert_eq!(unhex(&opened), b"imported and independent");

    // Imported keys rotate by importing: a new version over RSA-OAEP; RotateKey says how.
    assert_eq!(status(keys.rotate("byok").await).0, Code::FailedPrecondition);
    let short: Vec<u8> = material[..16].to_vec();
    let (token, wrapped_short) = import(pb::WrappingAlgorithm::RsaOaepSha256, hex(&short)).await;
    let wrong_length = import_request(&token, pb::WrappingAlgorithm::RsaOaepSha256, &wrapped_short);
    let (code, message) = status(service.import_key_version(admin.authorized(wrong_length).await.unwrap()).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(message.contains("needs a 32-byte key, got 16 bytes"), "{message}");
    let second: Vec<u8> = material.iter().map(|b| b ^ 0x5a).collect();
    let (token, wrapped) = import(pb::WrappingAlgorithm::RsaOaepSha256, hex(&second)).await;
    let request = import_request(&token, pb::WrappingAlgorithm::RsaOaepSha256, &wrapped);
    let imported = service.import_key_version(admin.authorized(request).await.unwrap()).await.unwrap().into_inner();
    assert_eq!(imported.version, 2);
    let key = imported.key.unwrap();
    assert_eq!(
        (version_state(&key, 1), version_state(&key, 2)),
        (pb::KeyVersionState::DecryptOnly, pb::KeyVersionState::Active)
    );
    // crypto-service hears of the new version over WatchKeyChanges, within milliseconds.
    let deadline = Instant::now() + Duration::from_secs(5);
    let c2 = loop {
        let c2 = admin.encrypt("byok", b"second".to_vec(), Vec::new()).await.unwrap();
        let request = admin.authorized(pb::DecryptRequest { ciphertext: c2.clone(), ..Default::default() });
        if admin.crypto_service().decrypt(request.await.unwrap()).await.unwrap().into_inner().key_version == 2 {
            break c2;
        }
        assert!(Instant::now() < deadline, "new encryptions never used the imported version 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(unhex(&byok(&["open", "--key-hex", &hex(&second), "--ciphertext-hex", &hex(&c2)])), b"second");
    let opened = admin.decrypt(ciphertext.clone(), b"order-17".to_vec()).await;
    assert!(opened.is_err(), "the context is bound: decrypting without it fails");

    // The known material never reaches Redis, in any encoding.
    let dump = redis.dump();
    assert!(!dump.is_empty());
    for key_material in [&material, &second] {
        for encoding in
            [key_material.to_vec(), hex(key_material).into_bytes(), serde_json::to_vec(key_material).unwrap()]
        {
            assert!(dump.iter().all(|(_, v)| !v.windows(encoding.len()).any(|w| w == encoding.as_slice())));
        }
    }
}

//! The chaos suite of issue 23, short form (run by `make test`): faults and load against the real binaries,
//! each drill printing its figures. `KEYMESH_CHAOS_SECONDS` lengthens each drill (`make chaos`).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use integration_tests::{Mesh, fresh_postgres_database, relayed_postgres};
use keymesh_client::ClientError;
use keymesh_mesh::ServiceName;
use keymesh_proto::v1 as pb;

/// A plaintext and the ciphertext an acknowledged Encrypt gave for it.
type Sealed = (Vec<u8>, Vec<u8>);

/// How long each drill runs: a few seconds in `make test`, longer under `make chaos`.
fn drill_length(short: u64) -> Duration {
    let seconds = std::env::var("KEYMESH_CHAOS_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(short);
    Duration::from_secs(seconds)
}

fn code_of(error: &ClientError) -> String {
    match error {
        ClientError::Status(status) => format!("{:?}", status.code()),
        other => format!("client: {other}"),
    }
}

/// Item 6: bursts of concurrent RotateKey on one key beside a steady stream of Encrypts. A key record read in
/// two queries outside one snapshot could hand out a primary version a rotation had just made DECRYPT_ONLY
/// (FAILED_PRECONDITION); read from one snapshot, not one Encrypt fails, and every ciphertext decrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotations_under_load_fail_no_encrypt_and_every_ciphertext_decrypts() {
    let url = fresh_postgres_database().await;
    let mesh = Mesh::start(&[], &[(ServiceName::KeyService, "KEYMESH_DATABASE__URL", url.as_str())]).await;
    let admin = Arc::new(mesh.admin_client());
    admin.create_key("rotating").await.unwrap();
    let length = drill_length(8);
    let stop = Arc::new(AtomicBool::new(false));
    let errors: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let sealed: Arc<Mutex<Vec<Sealed>>> = Arc::default();

    let mut workers = Vec::new();
    for worker in 0..8u32 {
        let (admin, stop, errors, sealed) = (admin.clone(), stop.clone(), errors.clone(), sealed.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let plaintext = format!("worker {worker} call {n}").into_bytes();
                match admin.encrypt("rotating", plaintext.clone(), Vec::new()).await {
                    Ok(ciphertext) => sealed.lock().unwrap().push((plaintext, ciphertext)),
                    Err(e) => {
                        let code = code_of(&e);
                        if errors.lock().unwrap().is_empty() {
                            eprintln!("first failed Encrypt: {e}");
                        }
                        *errors.lock().unwrap().entry(code).or_default() += 1;
                    }
                }
                n += 1;
            }
        }));
    }
    let started = Instant::now();
    let mut rotations = 0u64;
    while started.elapsed() < length {
        let burst = (0..8).map(|_| {
            let admin = admin.clone();
            async move {
                let request = pb::RotateKeyRequest { key: "rotating".into() };
                admin.key_service().rotate_key(admin.authorized(request).await.unwrap()).await
            }
        });
        for outcome in futures_util::future::join_all(burst).await {
            outcome.unwrap();
            rotations += 1;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let sealed = std::mem::take(&mut *sealed.lock().unwrap());
    let errors = errors.lock().unwrap().clone();
    println!(
        "{} Encrypts acknowledged beside {rotations} rotations in {length:?}; failed by code: {errors:?}",
        sealed.len()
    );
    assert!(errors.is_empty(), "Encrypts failed during rotations: {errors:?}");
    assert!(sealed.len() > 100, "too few Encrypts to say anything: {}", sealed.len());
    for (plaintext, ciphertext) in &sealed {
        assert_eq!(admin.decrypt(ciphertext.clone(), Vec::new()).await.unwrap().as_slice(), plaintext.as_slice());
    }
    println!("all {} ciphertexts decrypted", sealed.len());
}

/// Item 3: key-service killed (SIGKILL) and restarted while Encrypts on many keys are in flight through
/// crypto-service. Calls cut off with key-service's connections, and calls made while it is away, are UNAVAILABLE
/// with retry advice — never INTERNAL or UNKNOWN, which would tell the caller not to retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_service_killed_mid_call_gives_unavailable_with_retry_advice_never_internal() {
    let mut mesh = Mesh::start(&[], &[]).await;
    let admin = Arc::new(mesh.admin_client());
    const KEYS: usize = 32;
    for k in 0..KEYS {
        admin.create_key(&format!("k{k}")).await.unwrap();
    }
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes: Arc<Mutex<BTreeMap<String, u64>>> = Arc::default();
    let without_advice = Arc::new(Mutex::new(0u64));
    let mut workers = Vec::new();
    for worker in 0..16usize {
        let (admin, stop, outcomes, without_advice) =
            (admin.clone(), stop.clone(), outcomes.clone(), without_advice.clone());
        workers.push(tokio::spawn(async move {
            let mut n = worker;
            while !stop.load(Ordering::Relaxed) {
                let outcome = match admin.encrypt(&format!("k{}", n % KEYS), b"x".to_vec(), Vec::new()).await {
                    Ok(_) => "Ok".to_owned(),
                    Err(ClientError::Status(status)) => {
                        use tonic_types::StatusExt;
                        if status.code() == tonic::Code::Unavailable
                            && (status.get_details_retry_info().is_none()
                                || status.metadata().get("retry-after").is_none())
                        {
                            *without_advice.lock().unwrap() += 1;
                        }
                        format!("{:?}", status.code())
                    }
                    Err(other) => format!("client: {other}"),
                };
                *outcomes.lock().unwrap().entry(outcome).or_default() += 1;
                n += 7;
            }
        }));
    }
    let rounds = drill_length(3).as_secs().max(1);
    for _ in 0..rounds {
        tokio::time::sleep(Duration::from_millis(700)).await;
        mesh.kill(ServiceName::KeyService).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        mesh.resume(ServiceName::KeyService, &[]).await;
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let outcomes = outcomes.lock().unwrap().clone();
    println!("{rounds} key-service kills under 16 callers on {KEYS} keys; Encrypt outcomes by code: {outcomes:?}");
    let unexpected: Vec<_> = outcomes.keys().filter(|c| *c != "Ok" && *c != "Unavailable").collect();
    assert!(unexpected.is_empty(), "codes other than UNAVAILABLE: {outcomes:?}");
    assert!(outcomes.get("Ok").copied().unwrap_or(0) > 100, "{outcomes:?}");
    assert_eq!(*without_advice.lock().unwrap(), 0, "UNAVAILABLE without RetryInfo");
}

/// Item 2: Postgres out of reach (every connection to it dropped, new ones refused) under key-service and
/// token-service. Key management and token issuance answer UNAVAILABLE naming the database within the 2 s
/// deadlines (never INTERNAL after the driver's 30 s), and work again once it is back, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_unavailable_within_seconds_and_recovers() {
    let url = fresh_postgres_database().await;
    let (relay, relayed) = relayed_postgres(&url).await;
    let mesh = Mesh::start(
        &[],
        &[
            (ServiceName::KeyService, "KEYMESH_DATABASE__URL", relayed.as_str()),
            (ServiceName::TokenService, "KEYMESH_DATABASE__URL", relayed.as_str()),
        ],
    )
    .await;
    let admin = mesh.admin_client();
    admin.create_key("before").await.unwrap();

    relay.cut();
    let started = Instant::now();
    let created = admin.create_key("during").await;
    let took = started.elapsed();
    let error = created.expect_err("CreateKey with the database away");
    println!("CreateKey during the outage: {} after {took:?}: {error}", code_of(&error));
    assert_eq!(code_of(&error), "Unavailable", "{error}");
    assert!(error.to_string().contains("database"), "names the database: {error}");
    assert!(took < Duration::from_secs(4), "CreateKey took {took:?}");
    // A new client's first call issues its token: token-service's database is away too.
    let started = Instant::now();
    let issued = mesh.admin_client().create_key("during").await;
    let took = started.elapsed();
    let error = issued.expect_err("IssueToken with the database away");
    println!("IssueToken during the outage: {} after {took:?}: {error}", code_of(&error));
    assert!(error.to_string().contains("database") && error.to_string().contains("unavailable"), "{error}");
    assert!(!error.to_string().to_lowercase().contains("internal"), "{error}");
    assert!(took < Duration::from_secs(4), "IssueToken took {took:?}");

    relay.restore();
    let started = Instant::now();
    loop {
        match admin.create_key("after").await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(code_of(&e), "Unavailable", "{e}");
                assert!(started.elapsed() < Duration::from_secs(30), "no recovery: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    println!("CreateKey worked again {:?} after the database returned", started.elapsed());
    mesh.admin_client().create_key("fresh-token").await.unwrap();
}

/// Item 1: with a warm cache, key-service stops. Encrypt and Decrypt of the warm key keep working through the
/// outage (until the entries' TTL and within the granted block), crypto-service says so in
/// `keymesh_dek_cache_change_stream_connected` (0), and a key never cached is UNAVAILABLE. Once key-service is
/// back, the stream is followed again (1) and the cache starts afresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_keys_serve_through_a_key_service_outage() {
    let admin_port = format!("127.0.0.1:{}", integration_tests::free_port());
    let mut mesh =
        Mesh::start(&[], &[(ServiceName::CryptoService, "KEYMESH_TELEMETRY__METRICS_ADDR", admin_port.as_str())]).await;
    let admin = mesh.admin_client();
    admin.create_key("warm").await.unwrap();
    admin.create_key("cold").await.unwrap();
    let sealed = admin.encrypt("warm", b"before".to_vec(), Vec::new()).await.unwrap();
    admin.decrypt(sealed.clone(), Vec::new()).await.unwrap();
    let connected = |value: f64| {
        let admin_port = admin_port.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let families =
                    integration_tests::parse_prometheus(&integration_tests::scrape_metrics(&admin_port).await.1);
                let now =
                    families.get("keymesh_dek_cache_change_stream_connected").and_then(|s| s.first()).map(|s| s.value);
                if now == Some(value) {
                    return;
                }
                assert!(Instant::now() < deadline, "the change-stream gauge reads {now:?}, not {value}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    connected(1.0).await;

    mesh.kill(ServiceName::KeyService).await;
    connected(0.0).await;
    let length = drill_length(3);
    let started = Instant::now();
    let (mut encrypted, mut decrypted) = (0u64, 0u64);
    while started.elapsed() < length {
        let ciphertext = admin.encrypt("warm", b"during".to_vec(), Vec::new()).await.expect("Encrypt of a warm key");
        encrypted += 1;
        assert_eq!(admin.decrypt(ciphertext, Vec::new()).await.expect("Decrypt of a warm key").as_slice(), b"during");
        assert_eq!(admin.decrypt(sealed.clone(), Vec::new()).await.unwrap().as_slice(), b"before");
        decrypted += 2;
    }
    let cold = admin.encrypt("cold", b"x".to_vec(), Vec::new()).await.expect_err("a key never cached");
    assert_eq!(code_of(&cold), "Unavailable", "{cold}");
    println!(
        "key-service down {length:?}: {encrypted} Encrypts and {decrypted} Decrypts of the warm key served, 0 failed"
    );

    mesh.resume(ServiceName::KeyService, &[]).await;
    connected(1.0).await;
    admin.encrypt("cold", b"x".to_vec(), Vec::new()).await.unwrap();
}

/// Item 4, part: a crypto-service started with a soft limit of 256 open files raises it to its hard limit (the
/// operator's ceiling), so a flood of 600 idle connections that never send a ClientHello leaves it answering
/// health and Encrypt (on the old code it stopped accepting at the soft limit). Silent connections are closed
/// after the 10 s handshake deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_does_not_starve_a_service_of_file_descriptors() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let mesh = Mesh::start(&[], &[]).await;
    let endpoint = format!("127.0.0.1:{}", integration_tests::free_port());
    let template = mesh.command(ServiceName::CryptoService);
    let mut command = tokio::process::Command::new("sh");
    command
        .args(["-c", "ulimit -Sn 256 && exec \"$0\""])
        .arg(integration_tests::bin_dir().join("crypto-service"))
        .env_clear()
        .envs(template.as_std().get_envs().filter_map(|(k, v)| Some((k.to_owned(), v?.to_owned()))))
        .env("KEYMESH_LISTEN_ADDR", &endpoint)
        .env("KEYMESH_AUDIT__SPOOL_DIR", mesh.dir.path().join("flood-spool"))
        .env("KEYMESH_TELEMETRY__METRICS_ADDR", "off")
        .kill_on_drop(true);
    let replica = command.spawn().unwrap();
    let tls = mesh.app_tls("flood");
    let health = || async {
        let channel = keymesh_mesh::client::mtls_channel(&endpoint, &tls, ServiceName::CryptoService).unwrap();
        let request = HealthCheckRequest { service: "keymesh.v1.CryptoService".into() };
        tokio::time::timeout(Duration::from_secs(5), HealthClient::new(channel).check(request))
            .await
            .ok()
            .and_then(Result::ok)
            .is_some_and(|r| r.into_inner().status == ServingStatus::Serving as i32)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while !health().await {
        assert!(Instant::now() < deadline, "the crypto-service replica did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", replica.id().unwrap())).unwrap();
    let open_files = limits.lines().find(|l| l.starts_with("Max open files")).unwrap().to_owned();
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    println!("the replica's {open_files}");
    assert_eq!(numbers[0], numbers[1], "the soft limit is raised to the hard one: {open_files}");

    let mut flood = Vec::new();
    for _ in 0..600 {
        flood.push(tokio::net::TcpStream::connect(&endpoint).await.unwrap());
    }
    let started = Instant::now();
    assert!(health().await, "health with 600 idle connections open");
    let mut endpoints = mesh.endpoints.clone();
    endpoints.crypto_service = endpoint.clone();
    let credentials =
        keymesh_client::Credentials::from_file(&mesh.dir.path().join("bootstrap-credentials.json")).unwrap();
    let client = keymesh_client::KeymeshClient::new(&endpoints, &tls, credentials).unwrap();
    client.create_key("flooded").await.unwrap();
    client.encrypt("flooded", b"still here".to_vec(), Vec::new()).await.unwrap();
    println!("600 idle connections open: health and Encrypt answered in {:?}", started.elapsed());
    drop(flood);
}

/// Item 2, the deadlines themselves: a statement past `database.statement_timeout_ms` is `Unavailable` (the
/// caller may retry), while the start-up migration, which may wait for another replica's, is not held to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_its_deadline_is_unavailable_and_migrations_wait_for_each_other() {
    use sea_orm::ConnectionTrait;
    let url = fresh_postgres_database().await;
    let settings = keymesh_store::config::DatabaseSettings {
        url: url.clone(),
        acquire_timeout: Duration::from_secs(2),
        statement_timeout: Duration::from_millis(100),
    };
    // Another replica migrating: it holds the migration lock for half a second.
    let other = sea_orm::Database::connect(&url).await.unwrap();
    let holding = tokio::spawn(async move {
        use sea_orm::TransactionTrait;
        let txn = other.begin().await.unwrap();
        txn.execute_unprepared("SELECT pg_advisory_xact_lock(7401740174017401)").await.unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        txn.commit().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = Instant::now();
    let db = keymesh_store::connect_and_migrate_with(&settings).await.expect("the migration waits past the deadline");
    println!("migrated after waiting {:?} for another replica's migration", started.elapsed());
    holding.await.unwrap();
    let slow = db.execute_unprepared("SELECT pg_sleep(0.5)").await.map_err(keymesh_store::StoreError::from);
    assert!(matches!(slow, Err(keymesh_store::StoreError::Unavailable(_))), "{slow:?}");
}

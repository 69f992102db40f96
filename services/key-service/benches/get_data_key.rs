//! GetDataKey's latency by where the answer comes from: the in-process record cache, Redis, the database
//! (Postgres), and a KMS unwrap; with a raw AES-256-GCM seal of 1 KiB measured in the same run as the
//! baseline every tier is reported against. Starts its own redis-server and uses a fresh Postgres database
//! (`KEYMESH_TEST_POSTGRES_URL`, default the local server); fails loudly when either is missing.
//!
//! Run with `make bench` (release build).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::print_stdout)]

use std::{
    net::TcpListener,
    process::{Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use key_service::{changes::ChangeFeed, key_store::KeyStore, record_cache::RecordCache};
use keymesh_crypto::{
    SecretKey, SymmetricAlgorithm,
    ciphertext::{self, Binding, KeyRef, SealRequest},
};
use keymesh_kms::{Keyring, Keyrings, LocalKms, LocalKmsConfig};
use keymesh_proto::v1 as pb;
use keymesh_store::{
    entity::key,
    keys::{KeyLookup, KeyRecord, KeyRepository},
    now_millis,
};
use sea_orm::{ConnectionTrait, Database};

const ITERATIONS: usize = 2_000;

struct Stats {
    median: Duration,
    p99: Duration,
}

async fn measure<F, Fut>(mut op: F) -> Stats
where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()>,
{
    for _ in 0..ITERATIONS / 10 {
        op().await;
    }
    let mut samples = Vec::with_capacity(ITERATIONS);
    for _ in 0..ITERATIONS {
        let started = Instant::now();
        op().await;
        samples.push(started.elapsed());
    }
    samples.sort_unstable();
    Stats { median: samples[ITERATIONS / 2], p99: samples[ITERATIONS * 99 / 100] }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Redis(std::process::Child);

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> (Redis, String) {
    let port = free_port();
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("redis-server is required for this benchmark ({e}); `make test-deps` installs it"));
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "redis-server did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    (Redis(child), format!("redis://127.0.0.1:{port}"))
}

async fn fresh_postgres() -> String {
    let admin_url = std::env::var("KEYMESH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin = Database::connect(admin_url.as_str())
        .await
        .unwrap_or_else(|e| panic!("Postgres is required for this benchmark at {admin_url}: {e}"));
    let name = format!("keymesh_bench_{}", std::process::id());
    admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS {name}")).await.unwrap();
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.unwrap();
    format!("{}/{name}", admin_url.rsplit_once('/').unwrap().0)
}

fn new_record() -> KeyRecord {
    let (encrypt, aes, enabled) =
        (pb::KeyPurpose::Encrypt as i32, pb::Algorithm::Aes256Gcm as i32, pb::KeyState::Enabled as i32);
    KeyRecord {
        key: key::Model::new("k_bench", "t_bench", "bench", encrypt, aes, enabled, now_millis()),
        versions: Vec::new(),
    }
}

fn report(name: &str, stats: &Stats, baseline: &Stats) {
    let ratio = stats.median.as_secs_f64() / baseline.median.as_secs_f64();
    println!(
        "{name:<44} median {:>9.1} µs   p99 {:>9.1} µs   {ratio:>8.1}× the AES-GCM baseline",
        stats.median.as_secs_f64() * 1e6,
        stats.p99.as_secs_f64() * 1e6
    );
}

fn main() {
    keymesh_mesh::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().unwrap();
    let kms = Keyrings::single(Keyring::single(
        "local",
        Arc::new(
            LocalKms::open(&LocalKmsConfig::resolve(dir.path().to_path_buf(), Some("bench-master-key".into()), None))
                .unwrap(),
        ),
    ));
    let db = keymesh_store::connect_and_migrate(&fresh_postgres().await).await.unwrap();
    let repo = KeyRepository::new(db);
    let (_redis, redis_url) = start_redis();
    let memory =
        KeyStore::new(repo.clone(), RecordCache::in_memory(Duration::from_secs(300)), kms.clone(), ChangeFeed::new());
    let redis_cache = RecordCache::redis(&redis_url, Duration::from_millis(50), Duration::from_secs(300)).unwrap();
    let shared = KeyStore::new(repo.clone(), redis_cache, kms.clone(), ChangeFeed::new());

    let mut record = new_record();
    let version = memory.generate_version(&record, 1).await.unwrap();
    record.versions.push(version);
    repo.create(&record).await.unwrap();
    let version = record.versions[0].clone();

    // Baseline: what crypto-service does per Encrypt once it has the DEK.
    let dek = SecretKey::generate(32).unwrap();
    let key_ref = KeyRef { key_id: "k_bench".into(), version: 1 };
    let plaintext = vec![7u8; 1024];
    let baseline = measure(|| async {
        let seal = SealRequest {
            key_name: "bench",
            key_ref: &key_ref,
            algorithm: SymmetricAlgorithm::Aes256Gcm,
            binding: Binding { aad: b"", context: None },
        };
        std::hint::black_box(ciphertext::seal(&dek, &seal, &plaintext).unwrap());
    })
    .await;

    // Warm both caches.
    for store in [&memory, &shared] {
        let (r, _) = store.record("t_bench", "bench").await.unwrap();
        store.material(&r, &version).await.unwrap();
    }
    let memory_hit = measure(|| async {
        let (r, _) = memory.record("t_bench", "bench").await.unwrap();
        std::hint::black_box(memory.material(&r, &version).await.unwrap());
    })
    .await;
    let redis_hit = measure(|| async {
        let (r, source) = shared.record("t_bench", "bench").await.unwrap();
        assert_eq!(source, key_service::key_store::Source::Cache(key_service::record_cache::Tier::Redis));
        std::hint::black_box(shared.material(&r, &version).await.unwrap());
    })
    .await;
    let database = measure(|| async {
        let r = repo.load(KeyLookup::InTenant { tenant_id: "t_bench", name_or_id: "bench" }).await.unwrap().unwrap();
        std::hint::black_box(memory.material(&r, &version).await.unwrap());
    })
    .await;
    let unwrap = measure(|| async {
        std::hint::black_box(memory.unwrap(&record, &version).await.unwrap());
    })
    .await;

    println!("GetDataKey inside key-service, {ITERATIONS} calls per tier (record lookup + DEK):");
    report("baseline: AES-256-GCM seal of 1 KiB", &baseline, &baseline);
    report("in-memory hit (record + DEK in process)", &memory_hit, &baseline);
    report("Redis hit (record from Redis, DEK in process)", &redis_hit, &baseline);
    report("database read (record from Postgres)", &database, &baseline);
    report("KMS unwrap (local KEK, AES-256-GCM)", &unwrap, &baseline);
}

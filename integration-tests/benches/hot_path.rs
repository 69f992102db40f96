//! The hot path beside OpenBao Transit, in one run on this machine: Encrypt and Decrypt of 1 KiB and 64 KiB, a
//! batch of 1,000 × 1 KiB, through keymesh's four release binaries (mTLS, audit `strict`, rate limits and policy
//! on) and through an OpenBao dev server with TLS and the Transit engine, driven by the same in-process load
//! generator at the same number of calls in flight; beside them AES-256-GCM sealing the same sizes in-process on
//! one core. For each: operations per second, p50 and p99 (an HDR histogram of every call), the servers' CPU
//! time per operation (user + system, read from /proc of their processes before and after the measured window),
//! and their peak RSS during it. Beside keymesh, the same calls to its transport floor (keymesh's server stack
//! with only AES-GCM behind it) and to tonic's server alone with the same mTLS: what any service on this stack
//! pays per call before it does anything. Then keymesh's streams (MB/s each way, peak RSS) and an EncryptStream
//! through each floor, an overload run (1,024 calls in flight against the load shedding: what is admitted, its
//! p99, what is shed, memory), and each service's RSS idle and under load.
//!
//! The load generator shares the two cores with the servers, so every figure is a floor. Run with `make bench`;
//! `KEYMESH_BENCH_SECONDS` sets the length of each row (default 5).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::print_stdout, clippy::print_stderr)]

mod shared;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use integration_tests::{Mesh, kms_servers::OpenBao};
use keymesh_client::{KeymeshClient, envelope::Associated, streaming::StreamOptions};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1::{self as pb, crypto_service_client::CryptoServiceClient};
use shared::{Measured, Outcome, Processes, Sink, Source, load, millis, raw_seals_per_second};
use tonic::{metadata::MetadataValue, transport::Channel};

/// Calls in flight in every row (the issue's figure for both systems).
const IN_FLIGHT: usize = 64;
/// Batch calls in flight (each carries a thousand items).
const BATCH_IN_FLIGHT: usize = 8;
/// Calls in flight in the overload run.
const OVERLOAD: usize = 1024;
/// Items per batch call.
const BATCH: usize = 1000;
/// Items per batch call to OpenBao: the most its listener takes by default (it refuses a request body of more
/// than 1,000 JSON strings, and each item is two).
const BAO_BATCH: usize = 499;
/// Bytes per stream measurement.
const STREAM_LEN: u64 = 512 << 20;

fn run_for() -> Duration {
    let seconds = std::env::var("KEYMESH_BENCH_SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    Duration::from_secs_f64(seconds)
}

/// mTLS connections the load generator spreads keymesh's calls over (`KEYMESH_BENCH_CONNECTIONS`, default 1: one
/// application instance, as a service holding one channel to keymesh is).
fn connections() -> usize {
    std::env::var("KEYMESH_BENCH_CONNECTIONS").ok().and_then(|s| s.parse().ok()).unwrap_or(1)
}

/// keymesh's callers: a few mTLS connections (as a handful of application instances would hold), the bearer
/// token's header value made once.
#[derive(Clone)]
struct Keymesh {
    clients: Arc<Vec<CryptoServiceClient<Channel>>>,
    next: Arc<AtomicU64>,
    bearer: MetadataValue<tonic::metadata::Ascii>,
}

impl Keymesh {
    async fn new(mesh: &Mesh, admin: &KeymeshClient, connections: usize) -> Keymesh {
        Keymesh::to(mesh, admin, mesh.endpoint(ServiceName::CryptoService), connections).await
    }

    /// Callers of whatever serves crypto-service's identity at `endpoint` (the mesh's, or the transport floor).
    async fn to(mesh: &Mesh, admin: &KeymeshClient, endpoint: &str, connections: usize) -> Keymesh {
        let token = admin.access_token().await.unwrap();
        let bearer = format!("Bearer {}", token.as_str()).parse().unwrap();
        let clients = (0..connections)
            .map(|_| {
                CryptoServiceClient::new(mesh.channel_to(endpoint, ServiceName::CryptoService))
                    .max_decoding_message_size(64 << 20)
                    .max_encoding_message_size(64 << 20)
            })
            .collect();
        Keymesh { clients: Arc::new(clients), next: Arc::new(AtomicU64::new(0)), bearer }
    }

    fn request<T>(&self, message: T) -> (CryptoServiceClient<Channel>, tonic::Request<T>) {
        let mut request = tonic::Request::new(message);
        request.metadata_mut().insert("authorization", self.bearer.clone());
        let n = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        (self.clients[n % self.clients.len()].clone(), request)
    }

    async fn encrypt(&self, plaintext: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
        let (mut client, request) =
            self.request(pb::EncryptRequest { key: "bench".into(), plaintext, ..Default::default() });
        Ok(client.encrypt(request).await?.into_inner().ciphertext)
    }

    async fn decrypt(&self, ciphertext: Vec<u8>) -> Result<(), tonic::Status> {
        let (mut client, request) = self.request(pb::DecryptRequest { ciphertext, ..Default::default() });
        client.decrypt(request).await.map(drop)
    }

    async fn encrypt_batch(&self, items: usize, size: usize) -> Result<(), tonic::Status> {
        let batch = (0..items).map(|_| pb::EncryptItem { plaintext: vec![3u8; size], ..Default::default() }).collect();
        let (mut client, request) =
            self.request(pb::EncryptRequest { key: "bench".into(), batch, ..Default::default() });
        let response = client.encrypt(request).await?.into_inner();
        assert_eq!(response.batch.len(), items);
        for item in response.batch {
            assert!(matches!(item.result, Some(pb::encrypt_item_result::Result::Ciphertext(_))), "{item:?}");
        }
        Ok(())
    }
}

/// A load-shedding refusal (with the wait its RetryInfo asks for), or a failure of the benchmark.
fn shed_or_panic(status: tonic::Status) -> Outcome {
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::ResourceExhausted => {
            let hint = tonic_types::StatusExt::get_details_retry_info(&status).and_then(|info| info.retry_delay);
            Outcome::Shed(hint.unwrap_or(Duration::from_millis(10)))
        }
        _ => panic!("call failed: {status}"),
    }
}

/// OpenBao's Transit engine over HTTPS, as a Rust client would call it: an HTTP/1.1 keep-alive pool.
#[derive(Clone)]
struct Transit {
    http: reqwest::Client,
    address: String,
    token: String,
}

impl Transit {
    fn new(bao: &OpenBao) -> Transit {
        let ca = reqwest::Certificate::from_pem(bao.ca_pem.as_ref().expect("a TLS dev server")).unwrap();
        let http = reqwest::Client::builder()
            .tls_certs_only([ca])
            .http1_only()
            .pool_max_idle_per_host(OVERLOAD)
            .build()
            .unwrap();
        Transit { http, address: bao.address.clone(), token: bao.root_token.clone() }
    }

    async fn post(&self, path: &str, body: String) -> Result<serde_json::Value, reqwest::StatusCode> {
        let response = self
            .http
            .post(format!("{}/v1/transit/{path}", self.address))
            .header("X-Vault-Token", &self.token)
            .body(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("OpenBao {path}: {e}"));
        let status = response.status();
        if !status.is_success() {
            return Err(status);
        }
        Ok(serde_json::from_slice(&response.bytes().await.unwrap()).unwrap())
    }

    async fn encrypt(&self, plaintext: &[u8]) -> String {
        let body = format!(r#"{{"plaintext":"{}"}}"#, BASE64.encode(plaintext));
        let answer = self.post("encrypt/bench", body).await.unwrap();
        answer["data"]["ciphertext"].as_str().unwrap().to_owned()
    }

    async fn decrypt(&self, ciphertext: &str) {
        let body = format!(r#"{{"ciphertext":"{ciphertext}"}}"#);
        let answer = self.post("decrypt/bench", body).await.unwrap();
        assert!(answer["data"]["plaintext"].is_string());
    }

    async fn encrypt_batch(&self, items: usize, size: usize) {
        let one = format!(r#"{{"plaintext":"{}"}}"#, BASE64.encode(vec![3u8; size]));
        let body = format!(r#"{{"batch_input":[{}]}}"#, vec![one; items].join(","));
        let answer = self.post("encrypt/bench", body).await.unwrap();
        let results = answer["data"]["batch_results"].as_array().unwrap();
        assert_eq!(results.len(), items);
        assert!(results.iter().all(|r| r["ciphertext"].is_string()), "a batch item failed");
    }
}

/// `KEYMESH_BENCH_SERVICES_<NAME>=value` sets `<NAME>` for the services and the transport floor alone, not the
/// load generator (for experiments, such as `TOKIO_WORKER_THREADS`).
fn forwarded_env() -> Vec<(String, String)> {
    std::env::vars()
        .filter_map(|(k, v)| k.strip_prefix("KEYMESH_BENCH_SERVICES_").map(|name| (name.to_owned(), v)))
        .collect()
}

/// The transport floor (see `floor`; `bare`: tonic alone) in a child process, and callers of it like keymesh's.
async fn start_floor(mesh: &Mesh, admin: &KeymeshClient, bare: bool) -> (tokio::process::Child, Processes, Keymesh) {
    let address = format!("127.0.0.1:{}", integration_tests::free_port());
    let server = tokio::process::Command::new(std::env::current_exe().unwrap())
        .arg(if bare { "bare" } else { "floor" })
        .arg(mesh.dir.path())
        .arg(&address)
        .envs(forwarded_env())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let process = Processes { pids: vec![server.id().unwrap()] };
    let floor = Keymesh::to(mesh, admin, &address, connections()).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while let Err(status) = floor.encrypt(vec![3u8; 1024]).await {
        assert!(Instant::now() < deadline, "the transport floor did not serve: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (server, process, floor)
}

/// One row of the table.
struct Row {
    operation: String,
    system: &'static str,
    /// Items (or bytes, for the MB/s rows) per operation.
    unit_per_call: f64,
    measured: Measured,
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let [mode, data_dir, address] = args.as_slice()
        && (mode == "floor" || mode == "bare")
    {
        return floor::serve(std::path::Path::new(data_dir), address.parse().unwrap(), mode == "bare").await;
    }
    keymesh_mesh::install_crypto_provider();
    let duration = run_for();
    let raw_1k = raw_seals_per_second(1024);
    let raw_64k = raw_seals_per_second(64 << 10);

    // keymesh: the release binaries with the embedded defaults (audit strict, policy, limits), except the
    // per-application rate limit, raised far above what two cores can serve so that the limiter still runs on
    // every call without refusing.
    let limits =
        [("KEYMESH_LIMITS__APPLICATION_PER_SECOND", "1000000"), ("KEYMESH_LIMITS__TENANT_PER_SECOND", "1000000")];
    let forwarded = forwarded_env();
    let env: Vec<(&str, &str)> =
        limits.iter().copied().chain(forwarded.iter().map(|(k, v)| (k.as_str(), v.as_str()))).collect();
    let mut mesh = Mesh::start(&env, &[]).await;
    let admin = mesh.admin_client();
    admin.create_key("bench").await.unwrap();
    let processes = Processes::of_mesh(&mesh);
    let keymesh = Keymesh::new(&mesh, &admin, connections()).await;
    let sample_1k = keymesh.encrypt(vec![3u8; 1024]).await.unwrap();
    let sample_64k = keymesh.encrypt(vec![3u8; 64 << 10]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle = processes.rss();
    let idle_anon = processes.rss_anon();

    // `cargo bench --bench hot_path -- encrypt` runs keymesh's Encrypt 1 KiB alone (for a profiler beside it);
    // `-- encrypt floor` the transport floor's, `-- encrypt bare` tonic's alone.
    if std::env::args().skip(1).any(|a| a == "encrypt") {
        let floor = std::env::args().skip(1).find(|a| a == "floor" || a == "bare");
        let (_floor_server, processes, keymesh) = if let Some(floor) = floor {
            let (server, process, floor) = start_floor(&mesh, &admin, floor == "bare").await;
            (Some(server), process, floor)
        } else {
            (None, processes.clone(), keymesh.clone())
        };
        let m = load(&processes, IN_FLIGHT, duration, move || {
            let keymesh = keymesh.clone();
            async move { keymesh.encrypt(vec![3u8; 1024]).await.map_or_else(shed_or_panic, |_| Outcome::Done) }
        })
        .await;
        println!(
            "Encrypt 1 KiB: {:.0}/s, p50 {}, p99 {}, {:.1} µs CPU per call, peak RSS {:.0} MiB",
            m.calls_per_second,
            millis(m.p50),
            millis(m.p99),
            m.cpu_per_call,
            m.peak_rss
        );
        return;
    }
    if std::env::args().skip(1).any(|a| a == "stream") {
        for (name, rate, m) in streams(&admin, &processes).await {
            println!("{name}: {rate:.0} MB/s, {:.0} µs CPU per MiB, peak RSS {:.1} MiB", m.cpu_per_call, m.peak_rss);
        }
        return;
    }
    let mut rows = Vec::new();
    // Encrypt of `size` bytes and Decrypt of `sample` through `keymesh`, as the load generator calls them.
    let unary = |keymesh: &Keymesh, size: usize, sample: Vec<u8>| {
        let (encrypting, decrypting) = (keymesh.clone(), keymesh.clone());
        (
            move || {
                let keymesh = encrypting.clone();
                async move { keymesh.encrypt(vec![3u8; size]).await.map_or_else(shed_or_panic, |_| Outcome::Done) }
            },
            move || {
                let (keymesh, sample) = (decrypting.clone(), sample.clone());
                async move { keymesh.decrypt(sample).await.map_or_else(shed_or_panic, |()| Outcome::Done) }
            },
        )
    };
    for (size, sample) in [(1024usize, sample_1k), (64 << 10, sample_64k)] {
        let (encrypt, decrypt) = unary(&keymesh, size, sample);
        let label = format!("{} KiB", size / 1024);
        let measured = load(&processes, IN_FLIGHT, duration, encrypt).await;
        rows.push(Row { operation: format!("Encrypt {label}"), system: "keymesh", unit_per_call: 1.0, measured });
        let measured = load(&processes, IN_FLIGHT, duration, decrypt).await;
        rows.push(Row { operation: format!("Decrypt {label}"), system: "keymesh", unit_per_call: 1.0, measured });
    }
    let batching = keymesh.clone();
    let measured = load(&processes, BATCH_IN_FLIGHT, duration, move || {
        let keymesh = batching.clone();
        async move { keymesh.encrypt_batch(BATCH, 1024).await.map_or_else(shed_or_panic, |()| Outcome::Done) }
    })
    .await;
    rows.push(Row {
        operation: "Batch × 1 KiB (items)".into(),
        system: "keymesh",
        unit_per_call: BATCH as f64,
        measured,
    });
    // The transport floor (see `floor`), and tonic's server alone with the same mTLS (what keymesh's server stack
    // adds to it), measured like keymesh, with the same callers and requests.
    let mut floor_streams = Vec::new();
    for (system, bare) in [("floor", false), ("tonic", true)] {
        let (mut server, process, floor) = start_floor(&mesh, &admin, bare).await;
        let measured = floor_stream(&floor, &process).await;
        let name = if bare { "EncryptStream, tonic alone" } else { "EncryptStream, floor" };
        floor_streams.push((name, measured.calls_per_second, measured));
        for size in [1024usize, 64 << 10] {
            let sample = floor.encrypt(vec![3u8; size]).await.unwrap();
            let (encrypt, decrypt) = unary(&floor, size, sample);
            let label = format!("{} KiB", size / 1024);
            let measured = load(&process, IN_FLIGHT, duration, encrypt).await;
            rows.push(Row { operation: format!("Encrypt {label}"), system, unit_per_call: 1.0, measured });
            let measured = load(&process, IN_FLIGHT, duration, decrypt).await;
            rows.push(Row { operation: format!("Decrypt {label}"), system, unit_per_call: 1.0, measured });
        }
        server.kill().await.unwrap();
    }
    let loaded: Vec<f64> = {
        let one_kib: Vec<&Row> =
            rows.iter().filter(|r| r.system == "keymesh" && r.operation.ends_with(" 1 KiB")).collect();
        (0..processes.pids.len()).map(|i| one_kib.iter().map(|r| r.measured.peak_each[i]).fold(0.0, f64::max)).collect()
    };
    // Memory the batches took goes back to the system (jemalloc purges after a second) before the streams.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut streams = streams(&admin, &processes).await;
    streams.extend(floor_streams);
    // Overload: crypto-service restarted with load shedding set for latency on two cores (32 calls served at once,
    // 32 more queued for at most 5 ms; the rest refused at once with UNAVAILABLE and a retry hint). With 64 and 64
    // it admitted about 15 % more calls at twice the p99.
    mesh.restart(
        ServiceName::CryptoService,
        &[
            limits[0],
            limits[1],
            ("KEYMESH_SERVER__MAX_IN_FLIGHT", "32"),
            ("KEYMESH_SERVER__MAX_QUEUED", "32"),
            ("KEYMESH_SERVER__QUEUE_TIMEOUT_MS", "5"),
        ],
    )
    .await;
    let processes = Processes::of_mesh(&mesh);
    let services: Vec<ServiceName> = mesh.children.iter().map(|(s, _)| *s).collect();
    let keymesh = Keymesh::new(&mesh, &admin, connections()).await;
    keymesh.encrypt(vec![3u8; 1024]).await.unwrap();
    let overload_encrypt = {
        let keymesh = keymesh.clone();
        move || {
            let keymesh = keymesh.clone();
            async move { keymesh.encrypt(vec![3u8; 1024]).await.map_or_else(shed_or_panic, |_| Outcome::Done) }
        }
    };
    let overload = load(&processes, OVERLOAD, duration, overload_encrypt).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = processes.rss();
    drop(mesh);

    // OpenBao Transit: the dev server with TLS, an aes256-gcm96 key, the same sizes and calls in flight.
    let bao = OpenBao::start_tls();
    bao.cli(&["write", "-f", "transit/keys/bench"]);
    let bao_process = Processes { pids: vec![bao.pid()] };
    let transit = Transit::new(&bao);
    for size in [1024usize, 64 << 10] {
        let sample = transit.encrypt(&vec![3u8; size]).await;
        let label = format!("{} KiB", size / 1024);
        let encrypting = transit.clone();
        let measured = load(&bao_process, IN_FLIGHT, duration, move || {
            let transit = encrypting.clone();
            async move {
                transit.encrypt(&vec![3u8; size]).await;
                Outcome::Done
            }
        })
        .await;
        rows.push(Row { operation: format!("Encrypt {label}"), system: "OpenBao", unit_per_call: 1.0, measured });
        let decrypting = transit.clone();
        let sample = Arc::new(sample);
        let measured = load(&bao_process, IN_FLIGHT, duration, move || {
            let (transit, sample) = (decrypting.clone(), sample.clone());
            async move {
                transit.decrypt(&sample).await;
                Outcome::Done
            }
        })
        .await;
        rows.push(Row { operation: format!("Decrypt {label}"), system: "OpenBao", unit_per_call: 1.0, measured });
    }
    let batching = transit.clone();
    let measured = load(&bao_process, BATCH_IN_FLIGHT, duration, move || {
        let transit = batching.clone();
        async move {
            transit.encrypt_batch(BAO_BATCH, 1024).await;
            Outcome::Done
        }
    })
    .await;
    rows.push(Row {
        operation: "Batch × 1 KiB (items)".into(),
        system: "OpenBao",
        unit_per_call: BAO_BATCH as f64,
        measured,
    });
    let overloading = transit.clone();
    let bao_overload = load(&bao_process, OVERLOAD, duration, move || {
        let transit = overloading.clone();
        async move {
            let body = format!(r#"{{"plaintext":"{}"}}"#, BASE64.encode([3u8; 1024]));
            match transit.post("encrypt/bench", body).await {
                Ok(_) => Outcome::Done,
                Err(status) if status.as_u16() == 429 || status.as_u16() == 503 => {
                    Outcome::Shed(Duration::from_millis(10))
                }
                Err(status) => panic!("OpenBao encrypt under overload: {status}"),
            }
        }
    })
    .await;
    drop(bao);

    print_table(&rows, raw_1k, raw_64k, duration);
    println!(
        "Batch: {BATCH_IN_FLIGHT} calls in flight; keymesh {BATCH} items per call, OpenBao {BAO_BATCH} (the most its listener takes by default: 1,000 JSON \
         strings a request); ops/s and CPU are per item"
    );
    println!();
    println!(
        "streams (one call each way, {} MiB, 1 MiB segments; the floors seal each 1 MiB chunk on its own)",
        STREAM_LEN >> 20
    );
    println!("{:<28} {:>10} {:>13} {:>14}", "", "MB/s", "CPU µs/MiB", "peak RSS MiB");
    for (name, rate, measured) in &streams {
        println!("{name:<28} {rate:>10.0} {:>13.0} {:>14.1}", measured.cpu_per_call, measured.peak_rss);
    }
    println!();
    println!(
        "overload: Encrypt 1 KiB from {OVERLOAD} callers (keymesh: 32 served at once, 32 queued for 5 ms at most, the \
         rest refused with a retry hint that callers wait out; OpenBao as it comes)"
    );
    println!(
        "{:<10} {:>12} {:>10} {:>10} {:>10} {:>13} {:>14}",
        "", "admitted/s", "shed/s", "p50", "p99", "CPU µs/call", "peak RSS MiB"
    );
    for (system, m) in [("keymesh", &overload), ("OpenBao", &bao_overload)] {
        println!(
            "{system:<10} {:>12.0} {:>10.0} {:>10} {:>10} {:>13.1} {:>14.1}",
            m.calls_per_second,
            m.shed_per_second,
            millis(m.p50),
            millis(m.p99),
            m.cpu_per_call,
            m.peak_rss
        );
    }
    println!();
    println!(
        "keymesh RSS per service, MiB (idle anonymous: RSS less the clean pages mapped from the binary and libraries)"
    );
    println!(
        "{:<16} {:>8} {:>15} {:>18} {:>16} {:>18}",
        "", "idle", "idle anonymous", "1 KiB rows (peak)", "overload (peak)", "3 s after the load"
    );
    for (i, service) in services.iter().enumerate() {
        println!(
            "{:<16} {:>8.1} {:>15.1} {:>18.1} {:>16.1} {:>18.1}",
            service.to_string(),
            idle[i],
            idle_anon[i],
            loaded[i],
            overload.peak_each[i],
            after[i]
        );
    }
}

/// A stream's figures: MB/s in `calls_per_second`, the servers' CPU µs per MiB in `cpu_per_call`.
fn stream_measured(
    processes: &Processes,
    started: Instant,
    cpu_before: Duration,
    bytes: u64,
    peak: Vec<f64>,
) -> Measured {
    let elapsed = started.elapsed();
    let mib = bytes as f64 / f64::from(1 << 20);
    Measured {
        calls_per_second: bytes as f64 / elapsed.as_secs_f64() / 1e6,
        shed_per_second: 0.0,
        p50: elapsed,
        p99: elapsed,
        cpu_per_call: processes.cpu().saturating_sub(cpu_before).as_secs_f64() * 1e6 / mib,
        peak_rss: peak.iter().sum(),
        peak_each: peak,
    }
}

/// EncryptStream of `STREAM_LEN` through a floor, in 1 MiB chunks that it seals one by one.
async fn floor_stream(floor: &Keymesh, process: &Processes) -> Measured {
    use pb::encrypt_stream_request::Message;
    let block = vec![7u8; 1 << 20];
    let init = pb::EncryptStreamRequest { message: Some(Message::Init(pb::EncryptStreamInit::default())) };
    let chunks =
        (0..STREAM_LEN >> 20).map(move |_| pb::EncryptStreamRequest { message: Some(Message::Chunk(block.clone())) });
    let (mut client, request) = floor.request(tokio_stream::iter(std::iter::once(init).chain(chunks)));
    let (stop, watcher) = process.watch_rss();
    let (started, cpu) = (Instant::now(), process.cpu());
    let mut sealed = client.encrypt_stream(request).await.unwrap().into_inner();
    let mut bytes = 0u64;
    while let Some(response) = sealed.message().await.unwrap() {
        bytes += response.chunk.len() as u64;
    }
    assert!(bytes > STREAM_LEN, "the floor sealed every chunk");
    stop.store(true, Ordering::Relaxed);
    stream_measured(process, started, cpu, STREAM_LEN, watcher.join().unwrap())
}

/// EncryptStream of STREAM_LEN bytes in one call, and DecryptStream of the same length (a 64 MiB stream
/// decrypted over and over): MB/s each way, with the servers' CPU per MiB and peak RSS.
async fn streams(client: &KeymeshClient, processes: &Processes) -> Vec<(&'static str, f64, Measured)> {
    let options = StreamOptions { key: "bench".into(), associated: Associated::default(), ..Default::default() };
    let block: Vec<u8> = (0..1 << 20).map(|i| (i % 251) as u8).collect();
    let measure = |started: Instant, cpu_before: Duration, bytes: u64, peak: Vec<f64>| {
        stream_measured(processes, started, cpu_before, bytes, peak)
    };

    let (stop, watcher) = processes.watch_rss();
    let (started, cpu) = (Instant::now(), processes.cpu());
    let mut sealed = Sink { kept: Vec::new(), keep: 0, written: 0 };
    let source = Source { block: block.clone(), remaining: STREAM_LEN };
    client.encrypt_stream(&options, source, &mut sealed, &mut |_| {}).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let encrypting = measure(started, cpu, STREAM_LEN, watcher.join().unwrap());

    let mut small = Sink { kept: Vec::new(), keep: usize::MAX, written: 0 };
    let source = Source { block, remaining: 64 << 20 };
    client.encrypt_stream(&options, source, &mut small, &mut |_| {}).await.unwrap();
    let rounds = STREAM_LEN / (64 << 20);
    let (stop, watcher) = processes.watch_rss();
    let (started, cpu) = (Instant::now(), processes.cpu());
    for _ in 0..rounds {
        let mut plain = Sink { kept: Vec::new(), keep: 0, written: 0 };
        let input = std::io::Cursor::new(small.kept.clone());
        client.decrypt_stream(&options, input, &mut plain, &mut |_| {}).await.unwrap();
        assert_eq!(plain.written, 64 << 20);
    }
    stop.store(true, Ordering::Relaxed);
    let decrypting = measure(started, cpu, rounds * (64 << 20), watcher.join().unwrap());
    vec![
        ("EncryptStream 1 MiB segments", encrypting.calls_per_second, encrypting),
        ("DecryptStream 1 MiB segments", decrypting.calls_per_second, decrypting),
    ]
}

fn print_table(rows: &[Row], raw_1k: f64, raw_64k: f64, duration: Duration) {
    println!();
    println!(
        "hot path: {IN_FLIGHT} calls in flight, {duration:?} per row, release build, TLS on both, load generator on the \
         same two cores"
    );
    println!(
        "{:<22} {:<9} {:>10} {:>9} {:>9} {:>9} {:>12} {:>9} {:>11} {:>11}",
        "operation", "system", "ops/s", "MB/s", "p50", "p99", "CPU µs/op", "RSS MiB", "vs OpenBao", "vs raw"
    );
    let mut operations: Vec<&str> = rows.iter().map(|r| r.operation.as_str()).collect();
    operations.dedup();
    let mut seen = std::collections::HashSet::new();
    for operation in operations.into_iter().filter(|o| seen.insert(*o)) {
        let of = |system: &str| rows.iter().find(|r| r.operation == operation && r.system == system);
        let bao = of("OpenBao");
        let size = if operation.contains("64 KiB") { 64 << 10 } else { 1024 };
        let raw = if size == 1024 { raw_1k } else { raw_64k };
        for row in [of("keymesh"), bao, of("floor"), of("tonic")].into_iter().flatten() {
            let m = &row.measured;
            let ops = m.calls_per_second * row.unit_per_call;
            let versus =
                bao.map_or(String::new(), |b| format!("{:.2}x", ops / (b.measured.calls_per_second * b.unit_per_call)));
            println!(
                "{:<22} {:<9} {:>10.0} {:>9.0} {:>9} {:>9} {:>12.1} {:>9.1} {:>11} {:>10.3}x",
                operation,
                row.system,
                ops,
                ops * size as f64 / 1e6,
                millis(m.p50),
                millis(m.p99),
                m.cpu_per_call / row.unit_per_call,
                m.peak_rss,
                versus,
                ops / raw
            );
        }
        if !operation.starts_with("Decrypt") {
            println!(
                "{:<22} {:<9} {:>10.0} {:>9.0} {:>9} {:>9} {:>12.2} {:>9} {:>11} {:>10.3}x",
                operation,
                "raw AES",
                raw,
                raw * size as f64 / 1e6,
                "",
                "",
                1e6 / raw,
                "",
                "",
                1.0
            );
        }
    }
}

/// The transport floor: keymesh's own server stack (`keymesh_mesh::server::serve`: mTLS with the SVID check,
/// load shedding, request ids, server spans, health and reflection) serving a CryptoService whose Encrypt and
/// Decrypt only seal and open under a prepared key: no token check, rate limit, policy, audit or key-service.
/// It runs in a child process (this bench binary, re-executed with `floor <data dir> <address>`) so that /proc
/// counts its CPU apart from the load generator's. Its rows are what any service on this gRPC/mTLS stack pays
/// per call on this machine, which the hot path's targets must be read against.
mod floor {
    use std::{collections::BTreeMap, net::SocketAddr, path::Path};

    use keymesh_crypto::{
        SecretKey, SymmetricAlgorithm,
        ciphertext::{Binding, KeyRef, PreparedKey, parse},
    };
    use keymesh_mesh::{
        ServiceName,
        config::ServerSettings,
        pki::{DevIdentity, ensure_dev_identity},
    };
    use keymesh_proto::v1::{
        self as pb,
        crypto_service_server::{CryptoService, CryptoServiceServer},
        encrypt_stream_request,
    };
    use tonic::{Request, Response, Status, Streaming, service::Routes};

    /// Cheap to clone: a stream's responses are sealed after the handler has returned.
    #[derive(Clone)]
    struct Floor(std::sync::Arc<FloorKey>);

    struct FloorKey {
        key: SecretKey,
        prepared: PreparedKey,
        context: BTreeMap<String, String>,
    }

    impl FloorKey {
        fn binding<'a>(&'a self, aad: &'a [u8]) -> Binding<'a> {
            Binding { aad, context: Some(&self.context) }
        }

        fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Status> {
            self.prepared.seal(&self.key, self.binding(aad), plaintext).map_err(|e| Status::internal(e.to_string()))
        }
    }

    fn unimplemented<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not part of the transport floor"))
    }

    type Stream<T> = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<T, Status>> + Send + 'static>>;

    #[tonic::async_trait]
    impl CryptoService for Floor {
        async fn encrypt(&self, request: Request<pb::EncryptRequest>) -> Result<Response<pb::EncryptResponse>, Status> {
            let request = request.into_inner();
            let ciphertext = self.0.seal(&request.aad, &request.plaintext)?;
            Ok(Response::new(pb::EncryptResponse {
                ciphertext,
                key_id: "k_floor".into(),
                key_version: 1,
                ..Default::default()
            }))
        }

        async fn decrypt(&self, request: Request<pb::DecryptRequest>) -> Result<Response<pb::DecryptResponse>, Status> {
            let request = request.into_inner();
            let parsed = parse(&request.ciphertext).map_err(|e| Status::invalid_argument(e.to_string()))?;
            let plaintext = parsed
                .open_prepared(&self.0.prepared, &self.0.key, self.0.binding(&request.aad))
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
            Ok(Response::new(pb::DecryptResponse {
                plaintext: plaintext.to_vec(),
                key_id: "k_floor".into(),
                key_version: 1,
                ..Default::default()
            }))
        }

        async fn re_encrypt(
            &self,
            _: Request<pb::ReEncryptRequest>,
        ) -> Result<Response<pb::ReEncryptResponse>, Status> {
            unimplemented()
        }

        async fn generate_data_key(
            &self,
            _: Request<pb::GenerateDataKeyRequest>,
        ) -> Result<Response<pb::GenerateDataKeyResponse>, Status> {
            unimplemented()
        }

        async fn generate_data_key_without_plaintext(
            &self,
            _: Request<pb::GenerateDataKeyWithoutPlaintextRequest>,
        ) -> Result<Response<pb::GenerateDataKeyWithoutPlaintextResponse>, Status> {
            unimplemented()
        }

        async fn sign(&self, _: Request<pb::SignRequest>) -> Result<Response<pb::SignResponse>, Status> {
            unimplemented()
        }

        async fn verify(&self, _: Request<pb::VerifyRequest>) -> Result<Response<pb::VerifyResponse>, Status> {
            unimplemented()
        }

        async fn generate_mac(
            &self,
            _: Request<pb::GenerateMacRequest>,
        ) -> Result<Response<pb::GenerateMacResponse>, Status> {
            unimplemented()
        }

        async fn verify_mac(
            &self,
            _: Request<pb::VerifyMacRequest>,
        ) -> Result<Response<pb::VerifyMacResponse>, Status> {
            unimplemented()
        }

        async fn decapsulate(
            &self,
            _: Request<pb::DecapsulateRequest>,
        ) -> Result<Response<pb::DecapsulateResponse>, Status> {
            unimplemented()
        }

        async fn encapsulate(
            &self,
            _: Request<pb::EncapsulateRequest>,
        ) -> Result<Response<pb::EncapsulateResponse>, Status> {
            unimplemented()
        }

        async fn hash(&self, _: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
            unimplemented()
        }

        async fn generate_random(
            &self,
            _: Request<pb::GenerateRandomRequest>,
        ) -> Result<Response<pb::GenerateRandomResponse>, Status> {
            unimplemented()
        }

        type EncryptStreamStream = Stream<pb::EncryptStreamResponse>;

        /// Each chunk sealed on its own with AES-GCM (one pass over the bytes, as keymesh's segments are): the
        /// floor of a stream on this transport.
        async fn encrypt_stream(
            &self,
            request: Request<Streaming<pb::EncryptStreamRequest>>,
        ) -> Result<Response<Self::EncryptStreamStream>, Status> {
            use tokio_stream::StreamExt;
            let floor = self.0.clone();
            let sealed = request.into_inner().filter_map(move |message| match message {
                Ok(pb::EncryptStreamRequest { message: Some(encrypt_stream_request::Message::Chunk(chunk)) }) => {
                    Some(floor.seal(&[], &chunk).map(|chunk| pb::EncryptStreamResponse { chunk }))
                }
                Ok(_) => None,
                Err(status) => Some(Err(status)),
            });
            Ok(Response::new(Box::pin(sealed)))
        }

        type DecryptStreamStream = Stream<pb::DecryptStreamResponse>;

        async fn decrypt_stream(
            &self,
            _: Request<Streaming<pb::DecryptStreamRequest>>,
        ) -> Result<Response<Self::DecryptStreamStream>, Status> {
            unimplemented()
        }
    }

    /// Serves the floor on `address` as crypto-service's identity from the mesh's development PKI in `data_dir`,
    /// with the services' default server settings, until killed: Encrypt, Decrypt and EncryptStream through
    /// keymesh's server stack, or (`bare`) through tonic's server alone with the same mTLS and HTTP/2 windows (no
    /// load shedding, connection bounds, idle timeout, request ids, spans, health or reflection). The difference
    /// between the two is what keymesh's stack adds to tonic's.
    pub async fn serve(data_dir: &Path, address: SocketAddr, bare: bool) {
        keymesh_mesh::install_crypto_provider();
        let service = ServiceName::CryptoService;
        let identity = DevIdentity { name: service.as_str().into(), spiffe_id: service.spiffe_id(), server: true };
        let tls = ensure_dev_identity(data_dir, &identity).expect("crypto-service's certificate");
        let algorithm = SymmetricAlgorithm::Aes256Gcm;
        let key = SecretKey::generate(algorithm.key_len()).expect("key");
        let key_ref = KeyRef { key_id: "k_floor".into(), version: 1 };
        let prepared = PreparedKey::new(&key, "bench", &key_ref, algorithm).expect("prepared key");
        let floor = Floor(std::sync::Arc::new(FloorKey { key, prepared, context: BTreeMap::new() }));
        let service =
            CryptoServiceServer::new(floor).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20);
        if bare {
            return serve_bare(&tls, address, service).await;
        }
        let routes = Routes::new(service);
        // The services' own defaults: the floor sheds and bounds connections as they do.
        let settings = ServerSettings::defaults().expect("default server settings");
        let listener = keymesh_mesh::server::bind(address).await.expect("bind");
        keymesh_mesh::server::serve(
            listener,
            &tls,
            routes,
            &["keymesh.v1.CryptoService"],
            std::future::pending(),
            &settings,
        )
        .await
        .expect("serve");
    }

    async fn serve_bare(
        tls: &keymesh_mesh::pki::TlsMaterial,
        address: SocketAddr,
        service: CryptoServiceServer<Floor>,
    ) {
        use futures_util::StreamExt;
        let config = keymesh_mtls::server_config(tls).expect("TLS configuration");
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
        let listener = tokio::net::TcpListener::bind(address).await.expect("bind");
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |tcp| {
            let acceptor = acceptor.clone();
            async move {
                let tcp = tcp.ok()?;
                tcp.set_nodelay(true).ok()?;
                acceptor.accept(tcp).await.ok().map(Ok::<_, std::io::Error>)
            }
        });
        tonic::transport::Server::builder()
            .initial_stream_window_size(keymesh_mtls::HTTP2_STREAM_WINDOW)
            .initial_connection_window_size(keymesh_mtls::HTTP2_CONNECTION_WINDOW)
            .add_service(service)
            .serve_with_incoming(incoming)
            .await
            .expect("serve");
    }
}

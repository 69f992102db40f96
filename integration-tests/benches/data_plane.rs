//! Beside the hot path (`hot_path.rs`: Encrypt, Decrypt, batches and streams against OpenBao), what else the
//! data plane costs through the real services over mTLS: Sign/Verify per signature algorithm beside `openssl
//! speed` for the same key type, and ML-DSA-65 Sign/Verify and ML-KEM-768 Decapsulate beside the raw liboqs
//! operation, measured in this process on one core; rate-limit isolation: one application's
//! Encrypt throughput alone, then while another application floods crypto-service far over its limit; the audit
//! spool's cost: Encrypt with every event fsynced to the spool before the answer, against auditing off; and
//! telemetry's cost: Encrypt 1 KiB through meshes that differ only in telemetry (off; Prometheus metrics; metrics
//! and traces exported over OTLP at 1 % and at 100 % sampling, to an OTLP sink in this process), measured twice
//! in mirrored order. The load generator shares the machine with the four services, so the ratios are a floor.
//!
//! Run with `make bench` (release build of the binaries and this bench).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic, clippy::print_stdout, clippy::print_stderr)]

mod shared;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use integration_tests::Mesh;
use keymesh_client::KeymeshClient;
use keymesh_proto::v1 as pb;
use opentelemetry_proto::tonic::collector::{
    metrics::v1::{
        ExportMetricsServiceRequest, ExportMetricsServiceResponse,
        metrics_service_server::{MetricsService, MetricsServiceServer},
    },
    trace::v1::{
        ExportTraceServiceRequest, ExportTraceServiceResponse,
        trace_service_server::{TraceService, TraceServiceServer},
    },
};
use shared::{Measured, Outcome, Processes, millis};

/// Calls in flight at once.
const CONCURRENCY: usize = 32;
/// How long each unary measurement runs (after a warm-up of a fifth of it).
const RUN_FOR: Duration = Duration::from_secs(5);

/// Runs `call` from CONCURRENCY tasks for RUN_FOR.
async fn load<F, Fut>(call: F) -> Measured
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    let call = Arc::new(call);
    shared::load(&Processes { pids: Vec::new() }, CONCURRENCY, RUN_FOR, move || {
        let call = call.clone();
        async move {
            call().await;
            Outcome::Done
        }
    })
    .await
}

async fn encrypt(client: &KeymeshClient, plaintext: Vec<u8>) -> Vec<u8> {
    let request = pb::EncryptRequest { key: "bench".into(), plaintext, ..Default::default() };
    client.crypto_service().encrypt(client.authorized(request).await.unwrap()).await.unwrap().into_inner().ciphertext
}

#[tokio::main]
async fn main() {
    keymesh_mesh::install_crypto_provider();
    // `cargo bench --bench data_plane -- telemetry` runs that section alone.
    let only: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    if only.iter().any(|a| a == "telemetry") {
        telemetry_cost().await;
        return;
    }
    let mut mesh = Mesh::start(&[], &[]).await;
    let client = Arc::new(mesh.admin_client());
    client.create_key("bench").await.unwrap();

    signatures(&client).await;
    // `cargo bench --bench data_plane -- signatures` runs the signature and post-quantum section alone.
    if only.iter().any(|a| a == "signatures") {
        return;
    }
    audit_cost(&mut mesh, &client).await;
    isolation(&mut mesh, &client).await;
    drop(mesh);
    telemetry_cost().await;
}

/// An OTLP/gRPC collector that counts the spans it receives and keeps nothing.
#[derive(Clone, Default)]
struct OtlpSink {
    spans: Arc<AtomicU64>,
}

#[tonic::async_trait]
impl TraceService for OtlpSink {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let spans: usize =
            request.get_ref().resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum();
        self.spans.fetch_add(spans as u64, Ordering::Relaxed);
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

#[tonic::async_trait]
impl MetricsService for OtlpSink {
    async fn export(
        &self,
        _: tonic::Request<ExportMetricsServiceRequest>,
    ) -> Result<tonic::Response<ExportMetricsServiceResponse>, tonic::Status> {
        Ok(tonic::Response::new(ExportMetricsServiceResponse::default()))
    }
}

impl OtlpSink {
    /// Serves on a free local port; returns the endpoint.
    async fn start(&self) -> String {
        let addr: std::net::SocketAddr = format!("127.0.0.1:{}", integration_tests::free_port()).parse().unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let sink = self.clone();
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(TraceServiceServer::new(sink.clone()))
                .add_service(MetricsServiceServer::new(sink))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        format!("http://{addr}")
    }
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let middle = values.len() / 2;
    if values.len().is_multiple_of(2) { (values[middle - 1] + values[middle]) / 2.0 } else { values[middle] }
}

/// One measured run of a telemetry mode.
struct TelemetryRun {
    load: Measured,
    /// The four services' CPU time per call, in microseconds.
    cpu_per_call: f64,
    spans: u64,
    calls: f64,
}

/// Encrypt 1 KiB through four meshes that differ only in telemetry, each measured ROUNDS times in mirrored order
/// (A B C D, D C B A, …, so that drift over the run weighs on every mode alike), against telemetry off. Beside
/// throughput, which drifts a lot on a shared machine, the CPU the four services spend per call: the cost
/// itself.
async fn telemetry_cost() {
    const ROUNDS: usize = 6;
    let sink = OtlpSink::default();
    let endpoint = sink.start().await;
    // Rate limits off in every mode: a release build may pass the default application limit, and this measures
    // telemetry, not limits.
    let no_limit = ("KEYMESH_LIMITS__APPLICATION_PER_SECOND", "0");
    let otlp = ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str());
    let modes: Vec<(&str, Vec<(&str, &str)>)> = vec![
        ("telemetry off", vec![no_limit, ("KEYMESH_TELEMETRY__METRICS_ADDR", "off")]),
        ("metrics (Prometheus)", vec![no_limit]),
        (
            "metrics + traces 1 %",
            vec![
                no_limit,
                otlp,
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
            ],
        ),
        ("metrics + traces 100 %", vec![no_limit, otlp]),
    ];
    let mut meshes = Vec::new();
    for (_, env) in &modes {
        let mesh = Mesh::start(env, &[]).await;
        let client = Arc::new(mesh.admin_client());
        client.create_key("bench").await.unwrap();
        encrypt(&client, vec![3u8; 1024]).await;
        meshes.push((mesh, client));
    }
    let mut results: Vec<Vec<TelemetryRun>> = (0..modes.len()).map(|_| Vec::new()).collect();
    let forward: Vec<usize> = (0..modes.len()).collect();
    let order: Vec<usize> = (0..ROUNDS)
        .flat_map(|round| if round % 2 == 0 { forward.clone() } else { forward.iter().rev().copied().collect() })
        .collect();
    for mode in order {
        let (mesh, client) = (&meshes[mode].0, meshes[mode].1.clone());
        let (spans_before, cpu_before, started) =
            (sink.spans.load(Ordering::Relaxed), Processes::of_mesh(mesh).cpu(), Instant::now());
        let load = load(move || {
            let client = client.clone();
            async move {
                encrypt(&client, vec![3u8; 1024]).await;
            }
        })
        .await;
        // Counted over the whole window (warm-up included), so the calls are estimated over it too. Then spans
        // still in the services' batch queues arrive, and the audit spool drains, before the next run.
        let calls = load.calls_per_second * started.elapsed().as_secs_f64();
        let cpu = Processes::of_mesh(mesh).cpu().saturating_sub(cpu_before);
        tokio::time::sleep(Duration::from_secs(6)).await;
        let spans = sink.spans.load(Ordering::Relaxed) - spans_before;
        results[mode].push(TelemetryRun { load, cpu_per_call: cpu.as_secs_f64() * 1e6 / calls, spans, calls });
    }
    let ops = |runs: &[TelemetryRun]| median(runs.iter().map(|r| r.load.calls_per_second).collect());
    let cpu = |runs: &[TelemetryRun]| median(runs.iter().map(|r| r.cpu_per_call).collect());
    let (base_ops, base_cpu) = (ops(&results[0]), cpu(&results[0]));
    println!();
    println!(
        "telemetry cost: Encrypt 1 KiB, {CONCURRENCY} in flight, each mode its own mesh, medians of {ROUNDS} × {RUN_FOR:?}"
    );
    println!(
        "{:<24} {:>8} {:>10} {:>10} {:>8} {:>13} {:>9} {:>11}",
        "", "ops/s", "p50", "p99", "ratio", "CPU µs/call", "CPU cost", "spans/call"
    );
    for ((name, _), runs) in modes.iter().zip(&results) {
        let p = |pick: fn(&Measured) -> Duration| {
            Duration::from_secs_f64(median(runs.iter().map(|r| pick(&r.load).as_secs_f64()).collect()))
        };
        let spans: u64 = runs.iter().map(|r| r.spans).sum();
        let calls: f64 = runs.iter().map(|r| r.calls).sum();
        println!(
            "{:<24} {:>8.0} {:>10} {:>10} {:>7.3}x {:>13.1} {:>8.1}% {:>11.4}",
            name,
            ops(runs),
            millis(p(|u| u.p50)),
            millis(p(|u| u.p99)),
            ops(runs) / base_ops,
            cpu(runs),
            (cpu(runs) / base_cpu - 1.0) * 100.0,
            spans as f64 / calls,
        );
    }
    for ((name, _), runs) in modes.iter().zip(&results) {
        let each: Vec<String> =
            runs.iter().map(|r| format!("{:.0}/s {:.1}µs", r.load.calls_per_second, r.cpu_per_call)).collect();
        println!("  {name}: {}", each.join(", "));
    }
}

/// Encrypt 1 KiB with crypto-service's audit spool on (the default: each call's event fsynced before the
/// answer) and with auditing off, one after the other in this run.
async fn audit_cost(mesh: &mut Mesh, client: &Arc<KeymeshClient>) {
    let measure = || {
        let client = client.clone();
        load(move || {
            let client = client.clone();
            async move {
                encrypt(&client, vec![3u8; 1024]).await;
            }
        })
    };
    let spooled = measure().await;
    // Without the spool's fsync a release build can pass the default limit of 20,000 calls per second per
    // application: the limit is off for this row, which measures auditing, not rate limits.
    let unaudited = [("KEYMESH_AUDIT__MODE", "off"), ("KEYMESH_LIMITS__APPLICATION_PER_SECOND", "0")];
    mesh.restart(keymesh_mesh::ServiceName::CryptoService, &unaudited).await;
    let off = measure().await;
    println!();
    println!("audit cost: Encrypt 1 KiB, {CONCURRENCY} in flight");
    println!("{:<36} {:>12} {:>10} {:>10} {:>10}", "", "ops/s", "p50", "p99", "ratio");
    for (name, result) in [("audit off", &off), ("spool on (strict, fsync per group)", &spooled)] {
        println!(
            "{:<36} {:>12.0} {:>10} {:>10} {:>9.3}x",
            name,
            result.calls_per_second,
            millis(result.p50),
            millis(result.p99),
            result.calls_per_second / off.calls_per_second
        );
    }
}

/// A quiet application's Encrypt rate alone and beside a flood from an application limited to
/// `NOISY_LIMIT` calls per second (CONCURRENCY calls in flight each).
async fn isolation(mesh: &mut Mesh, admin: &Arc<KeymeshClient>) {
    const NOISY_LIMIT: u32 = 200;
    let admin_token = admin.access_token().await.unwrap().to_string();
    let perms: &[(&str, &[pb::Operation])] = &[("bench", &[pb::Operation::Encrypt])];
    let mut apps = Vec::new();
    for name in ["bench-quiet", "bench-noisy", "bench-greedy"] {
        apps.push(
            integration_tests::create_application(mesh, &admin_token, "", name, &[pb::Role::Developer], perms)
                .await
                .unwrap(),
        );
    }
    let limit = (format!("KEYMESH_LIMITS__APPLICATIONS__{}__PER_SECOND", apps[1].0), NOISY_LIMIT.to_string());
    mesh.restart(keymesh_mesh::ServiceName::CryptoService, &[(limit.0.as_str(), limit.1.as_str())]).await;
    let quiet = Arc::new(mesh.client_with(&apps[0].0, &apps[0].1));
    let noisy = Arc::new(mesh.client_with(&apps[1].0, &apps[1].1));
    let greedy = Arc::new(mesh.client_with(&apps[2].0, &apps[2].1));
    let measure_quiet = || {
        let quiet = quiet.clone();
        load(move || {
            let quiet = quiet.clone();
            async move {
                encrypt(&quiet, vec![3u8; 1024]).await;
            }
        })
    };
    let alone = measure_quiet().await;
    let (beside, admitted, refused, flooded_for) = beside_flood(&measure_quiet, &noisy).await;
    let (unlimited, greedy_admitted, _, greedy_for) = beside_flood(&measure_quiet, &greedy).await;
    println!();
    println!("rate-limit isolation: Encrypt 1 KiB by a quiet application, {CONCURRENCY} in flight");
    println!("{:<36} {:>12} {:>10} {:>10} {:>10}", "", "ops/s", "p50", "p99", "ratio");
    println!(
        "{:<36} {:>12.0} {:>10} {:>10} {:>9.3}x",
        "alone",
        alone.calls_per_second,
        millis(alone.p50),
        millis(alone.p99),
        1.0
    );
    println!(
        "{:<36} {:>12.0} {:>10} {:>10} {:>9.3}x",
        format!("beside a flood limited to {NOISY_LIMIT}/s"),
        beside.calls_per_second,
        millis(beside.p50),
        millis(beside.p99),
        beside.calls_per_second / alone.calls_per_second
    );
    println!(
        "{:<36} {:>12.0} {:>10} {:>10} {:>9.3}x",
        "beside an unlimited flood",
        unlimited.calls_per_second,
        millis(unlimited.p50),
        millis(unlimited.p99),
        unlimited.calls_per_second / alone.calls_per_second
    );
    println!(
        "the limited flood: {:.0} admitted/s, {:.0} refused/s with RESOURCE_EXHAUSTED; the unlimited one: {:.0}/s served",
        admitted as f64 / flooded_for,
        refused as f64 / flooded_for,
        greedy_admitted as f64 / greedy_for
    );
}

/// Measures the quiet application while `flooder` calls Encrypt from CONCURRENCY tasks without pause (and
/// without backing off): the quiet result, the flood's admitted and refused calls, and the seconds it ran.
async fn beside_flood<M, Fut>(measure_quiet: &M, flooder: &Arc<KeymeshClient>) -> (Measured, u64, u64, f64)
where
    M: Fn() -> Fut,
    Fut: Future<Output = Measured>,
{
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (admitted, refused) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flood: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let (flooder, stop, admitted, refused) = (flooder.clone(), stop.clone(), admitted.clone(), refused.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match flooder.encrypt("bench", vec![3u8; 1024], vec![]).await {
                        Ok(_) => admitted.fetch_add(1, Ordering::Relaxed),
                        Err(keymesh_client::ClientError::Status(s)) if s.code() == tonic::Code::ResourceExhausted => {
                            refused.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => panic!("flood: {e}"),
                    };
                }
            })
        })
        .collect();
    let started = Instant::now();
    let quiet = measure_quiet().await;
    let ran = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    (quiet, admitted.load(Ordering::Relaxed), refused.load(Ordering::Relaxed), ran)
}

/// `openssl speed -mr` sign/s and verify/s per algorithm, on one core, for the key type each SIGN algorithm
/// uses. (OpenSSL's RSA figures are PKCS#1 v1.5; the private-key operation that dominates is the same as
/// RSA-PSS's.)
fn openssl_speed() -> std::collections::HashMap<String, (f64, f64)> {
    let output = std::process::Command::new("openssl")
        .args(["speed", "-seconds", "2", "-mr", "ed25519", "ecdsap256", "ecdsap384", "rsa2048", "rsa3072", "rsa4096"])
        .output()
        .expect("openssl is required for the signature baseline");
    let mut rates = std::collections::HashMap::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let fields: Vec<&str> = line.split(':').collect();
        let parse = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
        match fields.first() {
            Some(&"+F2") => rates.insert(format!("rsa{}", fields[2]), (parse(3), parse(4))),
            Some(&"+F4") => rates.insert(format!("ecdsap{}", fields[2]), (parse(3), parse(4))),
            Some(&"+F6") if fields.get(3) == Some(&"Ed25519") => rates.insert("ed25519".into(), (parse(4), parse(5))),
            _ => None,
        };
    }
    rates
}

/// Calls per second of `operation` on this thread for two seconds (after a warm-up of a tenth of that).
fn raw_rate(mut operation: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        operation();
    }
    let (started, mut calls) = (Instant::now(), 0u64);
    while started.elapsed() < Duration::from_secs(2) {
        operation();
        calls += 1;
    }
    calls as f64 / started.elapsed().as_secs_f64()
}

/// liboqs's own ML-DSA-65 sign/s and verify/s and ML-KEM-768 decapsulations/s on one core (the `oqs` crate
/// straight, no keymesh code), and RustCrypto `ml-dsa`'s verify/s, which keymesh verifies with.
fn liboqs_speed() -> std::collections::HashMap<String, (f64, f64)> {
    oqs::init();
    let sig = oqs::sig::Sig::new(oqs::sig::Algorithm::MlDsa65).unwrap();
    let (pk, sk) = sig.keypair().unwrap();
    let message = [7u8; 32];
    let signature = sig.sign(&message, &sk).unwrap();
    let sign = raw_rate(|| drop(sig.sign(&message, &sk).unwrap()));
    let verify = raw_rate(|| sig.verify(&message, &signature, &pk).unwrap());
    let kem = oqs::kem::Kem::new(oqs::kem::Algorithm::MlKem768).unwrap();
    let (ek, dk) = kem.keypair().unwrap();
    let (ciphertext, _) = kem.encapsulate(&ek).unwrap();
    let decapsulate = raw_rate(|| drop(kem.decapsulate(&dk, &ciphertext).unwrap()));
    let ours = keymesh_crypto::pq::MlDsaPrivateKey::generate(keymesh_crypto::pq::MlDsa::MlDsa65).unwrap();
    let input = keymesh_crypto::pq::MlDsaInput::Message { message: &message, context: b"" };
    let our_signature = ours.sign(input, keymesh_crypto::pq::MlDsaRandomness::Hedged).unwrap();
    let public = ours.public_key();
    let rust_verify = raw_rate(|| assert!(public.verify(input, &our_signature).unwrap()));
    [
        ("ml-dsa-65".to_owned(), (sign, verify)),
        ("ml-kem-768".to_owned(), (decapsulate, f64::NAN)),
        ("ml-dsa-65 rustcrypto".to_owned(), (f64::NAN, rust_verify)),
    ]
    .into()
}

/// Sign and Verify of a 32-byte message per algorithm, through the services, against OpenSSL's own speed (and
/// liboqs's for ML-DSA); ML-KEM-768 Decapsulate against liboqs's.
async fn signatures(client: &Arc<KeymeshClient>) {
    use pb::{sign_request, verify_request};
    let mut baseline = openssl_speed();
    baseline.extend(liboqs_speed());
    println!();
    println!("{:<28} {:>12} {:>10} {:>10} {:>16} {:>10}", "operation", "ops/s", "p50", "p99", "raw speed/s", "ratio");
    for (algorithm, speed_name) in [
        (pb::Algorithm::Ed25519, "ed25519"),
        (pb::Algorithm::EcdsaP256Sha256, "ecdsap256"),
        (pb::Algorithm::EcdsaP384Sha384, "ecdsap384"),
        (pb::Algorithm::RsaPss2048Sha256, "rsa2048"),
        (pb::Algorithm::RsaPss3072Sha256, "rsa3072"),
        (pb::Algorithm::RsaPss4096Sha256, "rsa4096"),
        (pb::Algorithm::MlDsa65, "ml-dsa-65"),
    ] {
        let name = algorithm.as_str_name().trim_start_matches("ALGORITHM_").to_owned();
        let request = pb::CreateKeyRequest {
            name: format!("bench-{}", name.to_ascii_lowercase()),
            purpose: pb::KeyPurpose::Sign as i32,
            algorithm: algorithm as i32,
            ..Default::default()
        };
        let key = request.name.clone();
        client.key_service().create_key(client.authorized(request).await.unwrap()).await.unwrap();
        let message = vec![7u8; 32];
        let sign = {
            let (client, key, message) = (client.clone(), key.clone(), message.clone());
            move || {
                let (client, key, message) = (client.clone(), key.clone(), message.clone());
                async move {
                    let request = pb::SignRequest {
                        key,
                        input: Some(sign_request::Input::Message(message)),
                        ..Default::default()
                    };
                    client.crypto_service().sign(client.authorized(request).await.unwrap()).await.unwrap().into_inner()
                }
            }
        };
        let signature = sign().await.signature;
        let signing = load(move || {
            let sign = sign.clone();
            async move {
                sign().await;
            }
        })
        .await;
        let verifying = {
            let client = client.clone();
            load(move || {
                let (client, key, message, signature) =
                    (client.clone(), key.clone(), message.clone(), signature.clone());
                async move {
                    let request = pb::VerifyRequest {
                        key,
                        input: Some(verify_request::Input::Message(message)),
                        signature,
                        ..Default::default()
                    };
                    let response = client.crypto_service().verify(client.authorized(request).await.unwrap()).await;
                    assert!(response.unwrap().into_inner().valid);
                }
            })
            .await
        };
        let (openssl_sign, openssl_verify) = baseline.get(speed_name).copied().unwrap_or((f64::NAN, f64::NAN));
        for (operation, result, raw) in [("Sign", signing, openssl_sign), ("Verify", verifying, openssl_verify)] {
            println!(
                "{:<28} {:>12.0} {:>10} {:>10} {:>16.0} {:>9.3}x",
                format!("{operation} {name}"),
                result.calls_per_second,
                millis(result.p50),
                millis(result.p99),
                raw,
                result.calls_per_second / raw
            );
        }
    }
    let rust_verify = baseline.get("ml-dsa-65 rustcrypto").map_or(f64::NAN, |(_, verify)| *verify);
    println!("{:<28} {:>12} {:>10} {:>10} {:>16.0}", "(RustCrypto ml-dsa verify)", "", "", "", rust_verify);
    decapsulations(client, baseline.get("ml-kem-768").map_or(f64::NAN, |(decapsulate, _)| *decapsulate)).await;
    println!("raw speed: `openssl speed` for the classical algorithms, liboqs (the oqs crate) for ML-DSA and ML-KEM");
}

/// ML-KEM-768 Decapsulate through the services beside liboqs's own decapsulations per second.
async fn decapsulations(client: &Arc<KeymeshClient>, raw: f64) {
    let request = pb::CreateKeyRequest {
        name: "bench-ml-kem-768".into(),
        purpose: pb::KeyPurpose::Kem as i32,
        algorithm: pb::Algorithm::MlKem768 as i32,
        ..Default::default()
    };
    client.key_service().create_key(client.authorized(request).await.unwrap()).await.unwrap();
    let request = pb::EncapsulateRequest { key: "bench-ml-kem-768".into() };
    let encapsulated =
        client.crypto_service().encapsulate(client.authorized(request).await.unwrap()).await.unwrap().into_inner();
    let result = {
        let client = client.clone();
        let ciphertext = encapsulated.ciphertext.clone();
        load(move || {
            let (client, ciphertext) = (client.clone(), ciphertext.clone());
            async move {
                let request = pb::DecapsulateRequest { key: "bench-ml-kem-768".into(), key_version: 0, ciphertext };
                let response = client.crypto_service().decapsulate(client.authorized(request).await.unwrap()).await;
                assert_eq!(response.unwrap().into_inner().shared_secret.len(), 32);
            }
        })
        .await
    };
    println!(
        "{:<28} {:>12.0} {:>10} {:>10} {:>16.0} {:>9.3}x",
        "Decapsulate ML_KEM_768",
        result.calls_per_second,
        millis(result.p50),
        millis(result.p99),
        raw,
        result.calls_per_second / raw
    );
}

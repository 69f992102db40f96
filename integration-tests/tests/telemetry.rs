//! Traces an SRE can run on (issue 21), checked against a real OTLP receiver
//! (`integration-tests/scripts/otlp_receiver.py`, grpcio and the official OTLP protos) and the four binaries:
//! - one trace, started by the caller's `traceparent`, runs from the caller through crypto-service's server
//!   span, its client span to key-service, key-service's server span and the KMS call, each span named and
//!   attributed by the OpenTelemetry RPC conventions; a refused call's server span has ERROR status and the
//!   gRPC code;
//! - the exporter follows the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` over gRPC with extra
//!   headers, `https://` with `OTEL_EXPORTER_OTLP_CERTIFICATE`, `OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`;
//! - a bad variable stops a service at start with one line naming it;
//! - JSON log lines written inside a request carry its trace and span ids.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use integration_tests::{
    Mesh, bin_dir, create_key, hex, key_request, parse_prometheus, promtool_check_metrics, scrape_metrics,
};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1::{self as pb, crypto_service_client::CryptoServiceClient};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;

/// A running `otlp_receiver.py`, killed on drop.
struct Receiver {
    _child: tokio::process::Child,
    out: PathBuf,
    grpc_port: Option<u16>,
    http_port: Option<u16>,
    _dir: tempfile::TempDir,
}

impl Receiver {
    async fn start(grpc: bool, http: bool, tls: Option<(&Path, &Path)>) -> Receiver {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("received.jsonl");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/otlp_receiver.py");
        let mut command = tokio::process::Command::new("python3");
        command.arg(&script).arg("--out").arg(&out).kill_on_drop(true).stdout(Stdio::piped());
        if grpc {
            command.args(["--grpc-port", "0"]);
        }
        if http {
            command.args(["--http-port", "0"]);
        }
        if let Some((cert, key)) = tls {
            command.arg("--tls-cert").arg(cert).arg("--tls-key").arg(key);
        }
        let mut child = command.spawn().unwrap_or_else(|e| {
            panic!("cannot start {} (python3 with grpcio and opentelemetry-proto): {e}", script.display())
        });
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let ready = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
            .await
            .expect("the OTLP receiver did not start within 30 s")
            .unwrap()
            .unwrap_or_else(|| panic!("the OTLP receiver exited; is `pip install grpcio opentelemetry-proto` done?"));
        let ready: Value = serde_json::from_str(&ready).unwrap();
        assert_eq!(ready["ready"], true, "{ready}");
        let port = |field: &str| ready[field].as_u64().map(|p| u16::try_from(p).unwrap());
        Receiver { _child: child, out, grpc_port: port("grpc_port"), http_port: port("http_port"), _dir: dir }
    }

    fn received(&self) -> Vec<Value> {
        let Ok(text) = std::fs::read_to_string(&self.out) else { return Vec::new() };
        text.lines().filter_map(|line| serde_json::from_str(line).ok()).collect()
    }

    /// The spans received so far.
    fn spans(&self) -> Vec<Value> {
        self.received().into_iter().filter(|r| r["signal"] == "span").collect()
    }

    /// Waits (up to 30 s) until `done` holds for the spans received.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(Instant::now() < deadline, "{what}: not received within 30 s; spans: {spans:#?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Exports as fast as the batch processor allows, so tests wait little.
const FAST_EXPORT: (&str, &str) = ("OTEL_BSP_SCHEDULE_DELAY", "100");

fn attribute<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

/// A fresh W3C trace context as the caller's: (trace id, span id, traceparent).
fn caller_context() -> (String, String, String) {
    let id = uuid::Uuid::new_v4();
    let trace_id = hex(id.as_bytes());
    let span_id = hex(&id.as_bytes()[..8]);
    let traceparent = format!("00-{trace_id}-{span_id}-01");
    (trace_id, span_id, traceparent)
}

fn with_traceparent<T>(mut request: tonic::Request<T>, traceparent: &str) -> tonic::Request<T> {
    request.metadata_mut().insert("traceparent", traceparent.parse().unwrap());
    request
}

/// The spans of one trace, by span id.
fn by_id(spans: &[Value], trace_id: &str) -> HashMap<String, Value> {
    spans
        .iter()
        .filter(|s| s["trace_id"] == trace_id)
        .map(|s| (s["span_id"].as_str().unwrap().to_owned(), s.clone()))
        .collect()
}

/// The nearest ancestor of `span` (itself excluded) that satisfies `pick`.
fn ancestor<'a>(spans: &'a HashMap<String, Value>, span: &Value, pick: impl Fn(&Value) -> bool) -> Option<&'a Value> {
    let mut parent = span["parent_span_id"].as_str().unwrap_or_default().to_owned();
    while let Some(p) = spans.get(&parent) {
        if pick(p) {
            return Some(p);
        }
        parent = p["parent_span_id"].as_str().unwrap_or_default().to_owned();
    }
    None
}

fn named<'a>(spans: &'a HashMap<String, Value>, service: &str, name: &str, kind: &str) -> Vec<&'a Value> {
    spans.values().filter(|s| s["service_name"] == service && s["name"] == name && s["kind"] == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_runs_from_the_caller_through_both_services_to_the_kms() {
    keymesh_mesh::install_crypto_provider();
    let receiver = Receiver::start(true, false, None).await;
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port.unwrap());
    let mesh = Mesh::start(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_HEADERS", "x-collector-key=s3cr3t"),
            FAST_EXPORT,
        ],
        &[],
    )
    .await;
    let admin = mesh.admin_client();

    // CreateKey, then Encrypt on the cold key (crypto-service fetches it from key-service, which unwraps it
    // through the KMS), then Decrypt, each in a trace the caller started.
    let (create_trace, create_parent, traceparent) = caller_context();
    let request = admin.authorized(key_request("traced", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm)).await;
    admin.key_service().create_key(with_traceparent(request.unwrap(), &traceparent)).await.unwrap();
    let (encrypt_trace, encrypt_parent, traceparent) = caller_context();
    let encrypt = pb::EncryptRequest { key: "traced".into(), plaintext: b"hello".to_vec(), ..Default::default() };
    let request = with_traceparent(admin.authorized(encrypt).await.unwrap(), &traceparent);
    let sealed = admin.crypto_service().encrypt(request).await.unwrap().into_inner().ciphertext;
    let (decrypt_trace, _, traceparent) = caller_context();
    let decrypt = pb::DecryptRequest { ciphertext: sealed, ..Default::default() };
    let request = with_traceparent(admin.authorized(decrypt).await.unwrap(), &traceparent);
    admin.crypto_service().decrypt(request).await.unwrap();
    // A refused call: a token that does not verify.
    let (refused_trace, _, traceparent) = caller_context();
    let mut refused = tonic::Request::new(pb::EncryptRequest { key: "traced".into(), ..Default::default() });
    refused.metadata_mut().insert("authorization", "Bearer not-a-token".parse().unwrap());
    let status = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .encrypt(with_traceparent(refused, &traceparent))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    let spans = receiver
        .wait_for("the Encrypt trace down to the KMS", |spans| {
            let trace = by_id(spans, &encrypt_trace);
            !named(&trace, "key-service", "kms.unwrap", "CLIENT").is_empty()
                && !named(&trace, "crypto-service", "keymesh.v1.CryptoService/Encrypt", "SERVER").is_empty()
                && spans.iter().any(|s| s["trace_id"] == refused_trace)
                && spans.iter().any(|s| s["trace_id"] == create_trace)
                && spans.iter().any(|s| s["trace_id"] == decrypt_trace)
                && spans.iter().any(|s| {
                    s["service_name"] == "crypto-service"
                        && s["kind"] == "CLIENT"
                        && s["attributes"]["rpc.service"] == "keymesh.v1.TokenService"
                })
                && ["crypto-service", "key-service", "token-service", "audit-service"]
                    .iter()
                    .all(|service| spans.iter().any(|s| s["service_name"] == *service))
        })
        .await;

    // The Encrypt trace: caller → crypto-service (server) → crypto-service (client) → key-service (server) →
    // the KMS, one trace id, each span the child of the one before.
    let trace = by_id(&spans, &encrypt_trace);
    let server = named(&trace, "crypto-service", "keymesh.v1.CryptoService/Encrypt", "SERVER")[0];
    assert_eq!(server["parent_span_id"], encrypt_parent, "crypto-service continues the caller's span");
    for (key, value) in [
        ("rpc.system", Value::from("grpc")),
        ("rpc.service", Value::from("keymesh.v1.CryptoService")),
        ("rpc.method", Value::from("Encrypt")),
        ("rpc.grpc.status_code", Value::from(0)),
        ("server.address", Value::from("127.0.0.1")),
    ] {
        assert_eq!(attribute(server, key), &value, "{key} of {server:#}");
    }
    let port = mesh.endpoint(ServiceName::CryptoService).rsplit_once(':').unwrap().1.parse::<u64>().unwrap();
    assert_eq!(attribute(server, "server.port"), &Value::from(port));
    assert!(attribute(server, "network.peer.address").is_string(), "{server:#}");
    assert_eq!(server["status_code"], "UNSET");

    let fetch = named(&trace, "crypto-service", "keymesh.v1.KeyService/GetDataKey", "CLIENT");
    assert_eq!(fetch.len(), 1, "one fetch of the cold key: {trace:#?}");
    let fetch = fetch[0];
    assert!(
        ancestor(&trace, fetch, |s| s["span_id"] == server["span_id"]).is_some(),
        "the client span to key-service is inside the Encrypt server span"
    );
    assert_eq!(attribute(fetch, "rpc.service"), "keymesh.v1.KeyService");
    assert_eq!(attribute(fetch, "rpc.method"), "GetDataKey");
    assert_eq!(attribute(fetch, "rpc.grpc.status_code"), 0);
    assert_eq!(attribute(fetch, "server.address"), "127.0.0.1");
    let key_server = named(&trace, "key-service", "keymesh.v1.KeyService/GetDataKey", "SERVER");
    assert_eq!(key_server.len(), 1, "{trace:#?}");
    assert_eq!(key_server[0]["parent_span_id"], fetch["span_id"], "key-service continues crypto-service's client span");
    let kms = named(&trace, "key-service", "kms.unwrap", "CLIENT")[0];
    assert!(ancestor(&trace, kms, |s| s["span_id"] == key_server[0]["span_id"]).is_some());
    assert_eq!(attribute(kms, "kms.backend"), "local");

    // CreateKey: key-service's server span wraps the KMS wrap.
    let trace = by_id(&spans, &create_trace);
    let create = named(&trace, "key-service", "keymesh.v1.KeyService/CreateKey", "SERVER")[0];
    assert_eq!(create["parent_span_id"], create_parent);
    assert!(named(&trace, "key-service", "kms.wrap", "CLIENT").iter().any(|k| k["parent_span_id"] != ""));

    // The refused call: ERROR with the gRPC code.
    let trace = by_id(&spans, &refused_trace);
    let refused = named(&trace, "crypto-service", "keymesh.v1.CryptoService/Encrypt", "SERVER")[0];
    assert_eq!(refused["status_code"], "ERROR", "{refused:#}");
    assert_eq!(attribute(refused, "rpc.grpc.status_code"), Code::Unauthenticated as i32);
    assert!(refused["status_message"].as_str().unwrap().starts_with("Unauthenticated"), "{refused:#}");

    // Every span came with the configured header, from every service.
    for service in ["crypto-service", "key-service", "token-service", "audit-service"] {
        let sent = spans.iter().filter(|s| s["service_name"] == service).collect::<Vec<_>>();
        assert!(!sent.is_empty(), "{service} sent no span");
        for span in sent {
            assert_eq!(span["headers"]["x-collector-key"], "s3cr3t", "{service}: {span:#}");
        }
    }
    assert!(spans.iter().all(|s| s["transport"] == "grpc"));
}

/// A CA and a certificate for `localhost` it signs, as PEM files in `dir`: (ca, cert, key).
fn collector_pki(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["localhost".to_owned()]).unwrap().signed_by(&key, &issuer).unwrap();
    let paths = (dir.join("ca.pem"), dir.join("collector.pem"), dir.join("collector-key.pem"));
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, cert.pem()).unwrap();
    std::fs::write(&paths.2, key.serialize_pem()).unwrap();
    paths
}

/// Spans of a CreateKey arrive at `receiver` from a mesh started with `env`.
async fn spans_arrive(receiver: &Receiver, env: &[(&str, &str)], transport: &str) {
    let mut env = env.to_vec();
    env.push(FAST_EXPORT);
    let mesh = Mesh::start(&env, &[]).await;
    let admin = mesh.admin_client();
    create_key(&admin, key_request("exported", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm)).await.unwrap();
    let spans = receiver
        .wait_for("the CreateKey span", |spans| spans.iter().any(|s| s["name"] == "keymesh.v1.KeyService/CreateKey"))
        .await;
    assert!(spans.iter().all(|s| s["transport"] == transport), "{spans:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_over_tls_with_a_custom_ca_and_over_http() {
    keymesh_mesh::install_crypto_provider();
    let pki = tempfile::tempdir().unwrap();
    let (ca, cert, key) = collector_pki(pki.path());
    let tls = Receiver::start(true, false, Some((&cert, &key))).await;
    let endpoint = format!("https://localhost:{}", tls.grpc_port.unwrap());
    let ca = ca.display().to_string();
    spans_arrive(&tls, &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca)], "grpc")
        .await;

    let http = Receiver::start(false, true, None).await;
    let endpoint = format!("http://127.0.0.1:{}", http.http_port.unwrap());
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=ci,team=platform%20sre"),
    ];
    spans_arrive(&http, &env, "http").await;
    for span in http.spans() {
        assert_eq!(span["resource"]["deployment.environment"], "ci", "{span:#}");
        assert_eq!(span["resource"]["team"], "platform sre", "{span:#}");
    }
}

#[test]
fn a_bad_otel_variable_stops_the_service_naming_it() {
    for (variable, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317"),
        ("OTEL_TRACES_SAMPLER", "sometimes"),
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let output = std::process::Command::new(bin_dir().join("crypto-service"))
            .env_clear()
            .env("KEYMESH_DATA_DIR", dir.path())
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .env(variable, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
        assert_eq!(output.status.code(), Some(64), "{variable}={value}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(stderr.contains(variable), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_log_lines_carry_the_trace_and_span_of_their_request() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    // A token-service of our own whose JSON log we read: a replayed refresh token is logged inside the
    // IssueToken call that detects it.
    let endpoint = format!("127.0.0.1:{}", integration_tests::free_port());
    let mut command = mesh.command(ServiceName::TokenService);
    command
        .env("KEYMESH_LISTEN_ADDR", &endpoint)
        .env("KEYMESH_TELEMETRY__LOG_FORMAT", "json")
        .env("KEYMESH_AUDIT__SPOOL_DIR", mesh.dir.path().join("json-log-spool"))
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let channel =
        || keymesh_mesh::client::mtls_channel(&endpoint, &mesh.app_tls("json-log"), ServiceName::TokenService).unwrap();
    let credentials: Value =
        serde_json::from_slice(&std::fs::read(mesh.dir.path().join("bootstrap-credentials.json")).unwrap()).unwrap();
    let issue = pb::IssueTokenRequest {
        grant_type: pb::GrantType::ClientCredentials as i32,
        client_id: credentials["client_id"].as_str().unwrap().into(),
        client_secret: credentials["client_secret"].as_str().unwrap().into(),
        ..Default::default()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let issued = loop {
        match pb::token_service_client::TokenServiceClient::new(channel()).issue_token(issue.clone()).await {
            Ok(issued) => break issued.into_inner(),
            Err(status) => {
                assert!(Instant::now() < deadline, "the token-service replica did not start: {status:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let refresh = pb::IssueTokenRequest {
        grant_type: pb::GrantType::RefreshToken as i32,
        refresh_token: issued.refresh_token,
        ..Default::default()
    };
    let mut tokens = pb::token_service_client::TokenServiceClient::new(channel());
    tokens.issue_token(refresh.clone()).await.unwrap();
    let (trace_id, _, traceparent) = caller_context();
    let replay = tokens.issue_token(with_traceparent(tonic::Request::new(refresh), &traceparent)).await;
    assert_eq!(replay.err().map(|s| s.code()), Some(Code::Unauthenticated), "the replay is refused");

    let line = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = log.next_line().await.unwrap() {
            if line.contains("replayed") {
                return line;
            }
        }
        panic!("token-service's log ended");
    })
    .await
    .expect("no log line about the replay");
    let entry: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
    assert_eq!(entry["trace_id"], trace_id, "{line}");
    assert_eq!(entry["span_id"].as_str().map(str::len), Some(16), "{line}");
    child.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rpc_durations_reach_the_collector_and_the_prometheus_endpoint() {
    keymesh_mesh::install_crypto_provider();
    let receiver = Receiver::start(true, false, None).await;
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port.unwrap());
    let metrics: Vec<(ServiceName, String)> =
        ServiceName::ALL.into_iter().map(|s| (s, format!("127.0.0.1:{}", integration_tests::free_port()))).collect();
    let per_service: Vec<(ServiceName, &str, &str)> =
        metrics.iter().map(|(s, addr)| (*s, "KEYMESH_TELEMETRY__METRICS_ADDR", addr.as_str())).collect();
    let mesh = Mesh::start(
        &[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), ("OTEL_METRIC_EXPORT_INTERVAL", "500"), FAST_EXPORT],
        &per_service,
    )
    .await;
    let admin = mesh.admin_client();
    create_key(&admin, key_request("measured", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm)).await.unwrap();
    let sealed = admin.encrypt("measured", b"x".to_vec(), Vec::new()).await.unwrap();
    // The first Encrypt fetched the key (a miss), the second finds it in memory (a hit).
    admin.encrypt("measured", b"y".to_vec(), Vec::new()).await.unwrap();
    admin.decrypt(sealed, Vec::new()).await.unwrap();
    let mut refused = tonic::Request::new(pb::EncryptRequest { key: "measured".into(), ..Default::default() });
    refused.metadata_mut().insert("authorization", "Bearer not-a-token".parse().unwrap());
    let status = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService)).encrypt(refused).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // Over OTLP: crypto-service's rpc.server.duration has a point per method and code, and its
    // rpc.client.duration one for the fetch from key-service.
    let has_point = |metric: &Value, method: &str, code: i64| {
        metric["points"].as_array().unwrap().iter().any(|p| {
            p["attributes"]["rpc.service"] == "keymesh.v1.CryptoService"
                && p["attributes"]["rpc.method"] == method
                && p["attributes"]["rpc.grpc.status_code"] == code
                && p["attributes"]["rpc.system"] == "grpc"
                && p["count"].as_u64().unwrap_or(0) >= 1
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let received = receiver.received();
        let crypto_metric = |name: &str| -> Vec<Value> {
            received
                .iter()
                .filter(|r| r["signal"] == "metric" && r["service_name"] == "crypto-service" && r["name"] == name)
                .cloned()
                .collect()
        };
        let server = crypto_metric("rpc.server.duration");
        let client = crypto_metric("rpc.client.duration");
        // The DEK cache's hit (the second Encrypt) as a monotonic sum, and the spool gauge in bytes.
        let dek_hits = crypto_metric("keymesh.dek_cache.lookups").iter().any(|m| {
            m["type"] == "sum"
                && m["monotonic"] == true
                && m["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|p| p["attributes"]["result"] == "hit" && p["value"].as_i64().unwrap_or(0) >= 1)
        });
        let spool = crypto_metric("keymesh.audit.spool.unshipped")
            .iter()
            .any(|m| m["type"] == "gauge" && m["unit"] == "By" && !m["points"].as_array().unwrap().is_empty());
        let done = dek_hits
            && spool
            && server.iter().any(|m| has_point(m, "Encrypt", 0))
            && server.iter().any(|m| has_point(m, "Decrypt", 0))
            && server.iter().any(|m| has_point(m, "Encrypt", 16))
            && client.iter().any(|m| {
                m["points"].as_array().unwrap().iter().any(|p| {
                    p["attributes"]["rpc.service"] == "keymesh.v1.KeyService"
                        && p["attributes"]["rpc.method"] == "GetDataKey"
                })
            });
        if done {
            assert!(server.iter().all(|m| m["unit"] == "s" && m["type"] == "histogram"), "{server:#?}");
            break;
        }
        assert!(Instant::now() < deadline, "metrics not received within 30 s: {server:#?} {client:#?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Over Prometheus: every service's /metrics parses with the official parser and has the histogram.
    for (service, addr) in &metrics {
        let (head, body) = scrape_metrics(addr).await;
        assert!(head.to_ascii_lowercase().contains("content-type: text/plain"), "{service}: {head}");
        let findings = promtool_check_metrics(&body);
        assert!(findings.is_empty(), "{service}: promtool check metrics: {findings}");
        let families = parse_prometheus(&body);
        let samples = families
            .get("rpc_server_duration_seconds")
            .unwrap_or_else(|| panic!("{service}: no rpc_server_duration_seconds in {:?}", families.keys()));
        assert!(
            samples.iter().any(|s| s.name == "rpc_server_duration_seconds_bucket"
                && s.labels.contains_key("rpc_method")
                && s.labels.contains_key("rpc_grpc_status_code")
                && s.labels.contains_key("le")),
            "{service}: {samples:?}"
        );
        for sample in samples {
            for key in sample.labels.keys() {
                assert!(
                    ["rpc_system", "rpc_service", "rpc_method", "rpc_grpc_status_code", "le", "otel_scope_name"]
                        .contains(&key.as_str())
                        || key.starts_with("otel_scope"),
                    "{service}: an unexpected label {key}"
                );
            }
        }
    }
    let scrape_of = |service: ServiceName| {
        let addr = metrics.iter().find(|(s, _)| *s == service).unwrap().1.clone();
        async move { parse_prometheus(&scrape_metrics(&addr).await.1) }
    };
    let value_of =
        |families: &HashMap<String, Vec<integration_tests::Sample>>, family: &str, labels: &[(&str, &str)]| {
            families.get(family).is_some_and(|samples| samples.iter().any(|s| s.has(labels) && s.value > 0.0))
        };
    // The services' own metrics: crypto-service's DEK cache, token-service's issuance, every emitter's spool.
    let families = scrape_of(ServiceName::CryptoService).await;
    for result in ["hit", "miss"] {
        assert!(value_of(&families, "keymesh_dek_cache_lookups", &[("result", result)]), "{result}: {families:?}");
    }
    let tokens = scrape_of(ServiceName::TokenService).await;
    assert!(
        value_of(&tokens, "keymesh_tokens_requests", &[("grant", "client_credentials"), ("outcome", "issued")]),
        "{tokens:?}"
    );
    for service in [ServiceName::CryptoService, ServiceName::KeyService, ServiceName::TokenService] {
        let families = scrape_of(service).await;
        assert!(families.contains_key("keymesh_audit_spool_unshipped_bytes"), "{service}: {:?}", families.keys());
    }
    assert!(
        families["rpc_server_duration_seconds"]
            .iter()
            .any(|s| s.has(&[("rpc_method", "Encrypt"), ("rpc_grpc_status_code", "16")]) && s.value > 0.0),
        "the refused Encrypt is counted with its code"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sdk_carries_the_applications_trace_context() {
    use opentelemetry::{
        Context,
        context::FutureExt,
        trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
    };
    keymesh_mesh::install_crypto_provider();
    // What an application with OpenTelemetry does: install the W3C propagator, and call inside its span.
    opentelemetry::global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
    let receiver = Receiver::start(true, false, None).await;
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port.unwrap());
    let mesh = Mesh::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), FAST_EXPORT], &[]).await;
    let admin = mesh.admin_client();
    admin.create_key("sdk-traced").await.unwrap();
    let (trace_id, span_id, _) = caller_context();
    let application_span = SpanContext::new(
        TraceId::from_hex(&trace_id).unwrap(),
        SpanId::from_hex(&span_id).unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    let cx = Context::new().with_remote_span_context(application_span);
    admin.encrypt("sdk-traced", b"x".to_vec(), Vec::new()).with_context(cx).await.unwrap();

    let spans = receiver
        .wait_for("the SDK's Encrypt in the application's trace", |spans| {
            spans.iter().any(|s| s["trace_id"] == trace_id && s["name"] == "keymesh.v1.CryptoService/Encrypt")
        })
        .await;
    let trace = by_id(&spans, &trace_id);
    let server = named(&trace, "crypto-service", "keymesh.v1.CryptoService/Encrypt", "SERVER")[0];
    assert_eq!(server["parent_span_id"], span_id, "crypto-service continues the application's span");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_continues_the_trace_of_traceparent_or_starts_a_sampled_one() {
    keymesh_mesh::install_crypto_provider();
    let receiver = Receiver::start(true, false, None).await;
    let endpoint = format!("http://127.0.0.1:{}", receiver.grpc_port.unwrap());
    let mesh = Mesh::start(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint), FAST_EXPORT], &[]).await;
    let create = |name: &str, traceparent: Option<&str>| {
        let mut command = mesh.cli();
        command.args(["--show-trace", "keys", "create", name]).stderr(Stdio::piped());
        if let Some(traceparent) = traceparent {
            command.env("TRACEPARENT", traceparent);
        }
        command
    };
    let trace_of = |output: &std::process::Output| {
        assert!(output.status.success(), "{output:?}");
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        stderr
            .lines()
            .find_map(|l| l.strip_prefix("trace id: "))
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("{stderr}"))
    };
    // Inside a caller's trace (a CI job, a script): the command joins it.
    let (caller_trace, _, traceparent) = caller_context();
    let joined = trace_of(&create("cli-joined", Some(&traceparent)).output().await.unwrap());
    assert_eq!(joined, caller_trace);
    // On its own: a trace of its own, sampled, so the services record it.
    let own = trace_of(&create("cli-own", None).output().await.unwrap());
    assert_ne!(own, caller_trace);
    let create_key = |spans: &[Value], trace: &str| {
        spans
            .iter()
            .any(|s| s["trace_id"] == trace && s["name"] == "keymesh.v1.KeyService/CreateKey" && s["kind"] == "SERVER")
    };
    receiver.wait_for("the CLI's CreateKey spans", |spans| create_key(spans, &joined) && create_key(spans, &own)).await;
    // And the audit trail has each command's CreateKey under its trace id.
    let admin = mesh.admin_client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let query = pb::QueryRequest { operation: "CreateKey".into(), ..Default::default() };
        let traces: Vec<String> =
            admin.audit_query(query).await.unwrap().into_iter().filter_map(|r| r.event.map(|e| e.trace_id)).collect();
        if traces.contains(&joined) && traces.contains(&own) {
            break;
        }
        assert!(Instant::now() < deadline, "the CLI's CreateKey events under {joined} and {own}: {traces:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

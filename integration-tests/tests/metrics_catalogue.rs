//! The metric catalogue (issue 21): every metric the README lists, every Grafana panel queries and every alert
//! rule uses is exported by the running services, each with the values a workload must give it; the alert rules
//! pass promtool's own checks and unit tests.
//!
//! The mesh runs with Redis, a Vault (OpenBao) keyring secondary on key-service (so remote-KMS latency and the
//! circuit breaker exist), fast maintenance and checkpoints, and a workload that creates, uses and rotates a key.
//! audit-service is stopped for a while, so the spool gauges are seen to rise and drain.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    collections::{BTreeSet, HashMap},
    path::PathBuf,
    time::{Duration, Instant},
};

use integration_tests::{
    Mesh, RedisServer, Sample, create_key, free_port, key_request, kms_servers::OpenBao, parse_prometheus,
    scrape_metrics,
};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1::{self as pb, key_service_client::KeyServiceClient};

type Families = HashMap<String, Vec<Sample>>;

/// Every label the README's metric table names (in Prometheus spelling), and the histograms' `le`.
const LABELS: [&str; 20] = [
    "rpc_system",
    "rpc_service",
    "rpc_method",
    "rpc_grpc_status_code",
    "result",
    "cause",
    "operation",
    "algorithm",
    "tier",
    "reason",
    "kms_member",
    "kms_backend",
    "kms_operation",
    "outcome",
    "state",
    "grant",
    "limit",
    "purpose",
    "group",
    "le",
];

fn assets() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/observability")
}

/// The samples named `name` with every one of `labels`.
fn samples<'a>(families: &'a Families, name: &str, labels: &[(&str, &str)]) -> Vec<&'a Sample> {
    families.values().flatten().filter(|s| s.name == name && s.has(labels)).collect()
}

/// The one value of `name` with `labels`; panics when there is none.
fn value(families: &Families, name: &str, labels: &[(&str, &str)]) -> f64 {
    let found = samples(families, name, labels);
    assert!(!found.is_empty(), "no {name} with {labels:?} among {:?}", families.keys());
    found.iter().map(|s| s.value).sum()
}

/// Scrapes `service` until `ready` holds (metrics fed by background loops take a moment; the shipper may be in
/// its backoff when audit-service returns).
async fn scrape_until(
    metrics: &HashMap<ServiceName, String>,
    service: ServiceName,
    what: &str,
    ready: impl Fn(&Families) -> bool,
) -> Families {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let families = parse_prometheus(&scrape_metrics(&metrics[&service]).await.1);
        if ready(&families) {
            return families;
        }
        assert!(Instant::now() < deadline, "{service}: {what} not seen within 60 s: {families:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The metric names a PromQL expression selects. Label matchers, ranges, strings and grouping labels are cut
/// out first; of the identifiers left, those followed by `(`, `by` or `without` are functions or aggregations and the others are
/// metric names, once PromQL's keywords and numbers are set aside. Enough for the plain PromQL the assets use.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut cleaned = String::new();
    let (mut braces, mut brackets, mut quote) = (0, 0, None);
    for c in expr.chars() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'' | '`') => quote = Some(c),
            (None, '{') => braces += 1,
            (None, '}') => braces -= 1,
            (None, '[') => brackets += 1,
            (None, ']') => brackets -= 1,
            (None, c) if braces == 0 && brackets == 0 => cleaned.push(c),
            _ => {}
        }
        if braces > 0 || brackets > 0 {
            cleaned.push(' ');
        }
    }
    let mut tokens = Vec::new();
    let mut chars = cleaned.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_alphabetic() || c == '_' || c == ':' {
            let mut word = c.to_string();
            while let Some(&n) = chars.peek().filter(|n| n.is_ascii_alphanumeric() || **n == '_' || **n == ':') {
                word.push(n);
                chars.next();
            }
            tokens.push(word);
        } else if c.is_ascii_digit() || c == '.' {
            while chars.peek().is_some_and(|n| n.is_ascii_alphanumeric() || *n == '.') {
                chars.next();
            }
        } else if !c.is_whitespace() {
            tokens.push(c.to_string());
        }
    }
    const KEYWORDS: [&str; 9] = ["bool", "and", "or", "unless", "offset", "inf", "nan", "group_left", "group_right"];
    const GROUPING: [&str; 6] = ["by", "without", "on", "ignoring", "group_left", "group_right"];
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = tokens[i].as_str();
        let next = tokens.get(i + 1).map(String::as_str);
        if GROUPING.contains(&token.to_ascii_lowercase().as_str()) && next == Some("(") {
            while tokens.get(i).is_some_and(|t| t != ")") {
                i += 1;
            }
        } else if token.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_' || c == ':')
            && next != Some("(")
            && !next.is_some_and(|n| ["by", "without"].contains(&n.to_ascii_lowercase().as_str()))
            && !KEYWORDS.contains(&token.to_ascii_lowercase().as_str())
        {
            names.insert(token.to_owned());
        }
        i += 1;
    }
    names
}

#[test]
fn the_metric_name_extractor_reads_the_assets_promql() {
    let expr = r#"histogram_quantile(0.99, sum by (le, rpc_service) (rate(rpc_server_duration_seconds_bucket{job=~"$job", rpc_grpc_status_code!="0"}[$__rate_interval])))
        / on (job) group_left(instance) keymesh_keys{state="enabled"} > bool 2 and time() - keymesh_x offset 5m"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["keymesh_keys", "keymesh_x", "rpc_server_duration_seconds_bucket"]);
}

/// The PromQL of the dashboard's panels and of the alert rules, read by Python's JSON and YAML parsers.
fn asset_queries() -> Vec<(String, String)> {
    let script = r#"
import json, sys, yaml
out = []
def walk(node, where):
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                out.append([where, value])
            else:
                walk(value, where)
    elif isinstance(node, list):
        for item in node:
            walk(item, where)
dashboard = json.load(open(sys.argv[1]))
for panel in dashboard["panels"]:
    walk(panel, "dashboard panel " + repr(panel.get("title")))
for group in yaml.safe_load(open(sys.argv[2]))["groups"]:
    for rule in group["rules"]:
        out.append(["alert " + rule["alert"], rule["expr"]])
print(json.dumps(out))
"#;
    let output = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(assets().join("keymesh-dashboard.json"))
        .arg(assets().join("keymesh-alerts.yml"))
        .output()
        .expect("python3 with PyYAML");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).unwrap()
}

/// The Prometheus names in the README's metric table (`| `otel.name` / `prometheus_name` … |`).
fn readme_metric_names() -> BTreeSet<String> {
    let readme = std::fs::read_to_string(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../README.md")).unwrap();
    let table = readme.split("| metric (OTLP / Prometheus) |").nth(1).expect("README has the metric table");
    table
        .lines()
        .skip(1)
        .take_while(|line| line.starts_with('|'))
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| line.split(" / `").nth(1)?.split('`').next().map(str::to_owned))
        .collect()
}

#[test]
fn the_alert_rules_pass_promtool() {
    let check = std::process::Command::new("promtool")
        .args(["check", "rules"])
        .arg(assets().join("keymesh-alerts.yml"))
        .output()
        .expect("promtool (Debian's prometheus package; `make test-deps` installs it)");
    assert!(check.status.success(), "promtool check rules: {check:?}");
    let tests = std::process::Command::new("promtool")
        .args(["test", "rules", "keymesh-alerts.test.yml"])
        .current_dir(assets())
        .output()
        .unwrap();
    assert!(tests.status.success(), "promtool test rules: {tests:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_readme_the_dashboard_and_the_alerts_name_is_exported() {
    keymesh_mesh::install_crypto_provider();
    let bao = OpenBao::start();
    let transit = bao.transit_member("transit", "keymesh");
    let redis = RedisServer::start();
    let metrics: HashMap<ServiceName, String> =
        ServiceName::ALL.into_iter().map(|s| (s, format!("127.0.0.1:{}", free_port()))).collect();
    let mut per_service: Vec<(ServiceName, &str, &str)> =
        metrics.iter().map(|(s, addr)| (*s, "KEYMESH_TELEMETRY__METRICS_ADDR", addr.as_str())).collect();
    let key_service = ServiceName::KeyService;
    per_service.extend([
        (key_service, "KEYMESH_KEY_SERVICE__REDIS_URL", redis.url.as_str()),
        (key_service, "KEYMESH_KEY_SERVICE__MAINTENANCE_INTERVAL_SECONDS", "1"),
        // A member named apart from its type, so the labels show which is which.
        (key_service, "KEYMESH_KMS__SECONDARY", r#"["transit"]"#),
        (ServiceName::AuditService, "KEYMESH_AUDIT__CHECKPOINT_INTERVAL_SECONDS", "1"),
    ]);
    per_service.extend(transit.for_service(key_service));
    let mut mesh = Mesh::start(&[], &per_service).await;

    // The workload: a key wrapped by both keyring members, used, rotated, and used again.
    let admin = mesh.admin_client();
    create_key(&admin, key_request("catalogued", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm)).await.unwrap();
    let sealed = admin.encrypt("catalogued", b"one".to_vec(), Vec::new()).await.unwrap();
    admin.encrypt("catalogued", b"two".to_vec(), Vec::new()).await.unwrap();
    admin.decrypt(sealed, Vec::new()).await.unwrap();
    let rotate = admin.authorized(pb::RotateKeyRequest { key: "catalogued".into() }).await.unwrap();
    KeyServiceClient::new(mesh.channel(key_service)).rotate_key(rotate).await.unwrap();
    // crypto-service drops the key's DEKs when key-service reports the rotation; the next Encrypt fetches again.
    let crypto = ServiceName::CryptoService;
    let families = scrape_until(&metrics, crypto, "an invalidated DEK", |f| {
        samples(f, "keymesh_dek_cache_evictions_total", &[("cause", "invalidated")]).iter().any(|s| s.value >= 1.0)
    })
    .await;
    admin.encrypt("catalogued", b"three".to_vec(), Vec::new()).await.unwrap();
    assert!(value(&families, "keymesh_dek_cache_lookups_total", &[("result", "hit")]) >= 1.0);
    assert!(value(&families, "keymesh_token_cache_lookups_total", &[("result", "hit")]) >= 1.0);
    let encrypt_ops = [("operation", "encrypt"), ("algorithm", "AES-256-GCM")];
    assert!(value(&families, "keymesh_crypto_operations_total", &encrypt_ops) >= 2.0, "{families:#?}");
    assert!(value(&families, "keymesh_crypto_operations_total", &[("operation", "decrypt")]) >= 1.0);
    // Counters whose labels are known start at zero.
    assert_eq!(value(&families, "keymesh_dek_cache_evictions_total", &[("cause", "size")]), 0.0);
    assert_eq!(value(&families, "keymesh_limits_refusals_total", &[("limit", "key_quota")]), 0.0);

    // Audit events wait in the spool while audit-service is away, and drain when it is back.
    let fsyncs = |f: &Families| value(f, "keymesh_audit_spool_fsync_duration_seconds_count", &[]);
    let fsyncs_before = fsyncs(&parse_prometheus(&scrape_metrics(&metrics[&crypto]).await.1));
    mesh.kill(ServiceName::AuditService).await;
    for i in 0..3 {
        admin.encrypt("catalogued", format!("while away {i}").into_bytes(), Vec::new()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let waiting = scrape_until(&metrics, crypto, "events waiting in the spool", |f| {
        samples(f, "keymesh_audit_spool_events", &[]).iter().any(|s| s.value >= 3.0)
    })
    .await;
    assert!(value(&waiting, "keymesh_audit_spool_oldest_age_seconds", &[]) >= 0.25, "{waiting:#?}");
    assert!(value(&waiting, "keymesh_audit_spool_unshipped_bytes", &[]) > 0.0);
    assert!(fsyncs(&waiting) >= fsyncs_before + 3.0, "each of the 3 events was fsynced: {waiting:#?}");
    mesh.resume(ServiceName::AuditService, &[]).await;
    let drained = scrape_until(&metrics, crypto, "the spool drained", |f| {
        [("keymesh_audit_spool_events"), ("keymesh_audit_spool_oldest_age_seconds")]
            .iter()
            .all(|name| samples(f, name, &[]).iter().all(|s| s.value == 0.0) && !samples(f, name, &[]).is_empty())
    })
    .await;
    assert_eq!(value(&drained, "keymesh_audit_spool_unshipped_bytes", &[]), 0.0);

    // key-service: the tiers that answered, KMS calls to both members, the breaker, rotations and keys by state.
    let keys = scrape_until(&metrics, key_service, "keys by state", |f| {
        samples(f, "keymesh_keys", &[("state", "enabled")]).iter().any(|s| s.value >= 1.0)
    })
    .await;
    let tier = |tier| value(&keys, "keymesh_key_records_lookup_duration_seconds_count", &[("tier", tier)]);
    assert!(tier("database") >= 1.0 && tier("redis") >= 1.0, "{keys:#?}");
    for (member, backend) in [("local", "local"), ("transit", "vault")] {
        let wraps = [("kms_member", member), ("kms_backend", backend), ("kms_operation", "wrap"), ("outcome", "ok")];
        assert!(value(&keys, "keymesh_kms_duration_seconds_count", &wraps) >= 2.0, "{member}: {keys:#?}");
    }
    assert_eq!(value(&keys, "keymesh_kms_breaker_state", &[("kms_member", "transit"), ("kms_backend", "vault")]), 0.0);
    assert!(samples(&keys, "keymesh_kms_breaker_state", &[("kms_member", "local")]).is_empty(), "local has none");
    assert_eq!(value(&keys, "keymesh_keys_rotations_total", &[("reason", "manual")]), 1.0);
    assert_eq!(value(&keys, "keymesh_keys_rotations_total", &[("reason", "scheduled")]), 0.0);
    assert_eq!(value(&keys, "keymesh_redis_errors_total", &[("reason", "timeout")]), 0.0);
    assert_eq!(value(&keys, "keymesh_keys", &[("state", "destroyed")]), 0.0);

    // audit-service: the chain grew, and a checkpoint signed it moments ago.
    let audit = scrape_until(&metrics, ServiceName::AuditService, "the chain head", |f| {
        samples(f, "keymesh_audit_chain_head", &[]).iter().any(|s| s.value >= 1.0)
            && !samples(f, "keymesh_audit_checkpoint_age_seconds", &[]).is_empty()
    })
    .await;
    assert!(value(&audit, "keymesh_audit_records_appended_total", &[]) >= 1.0);
    assert!(value(&audit, "keymesh_audit_checkpoint_age_seconds", &[]) < 30.0, "{audit:#?}");

    // Every service: its certificate's expiry ahead, and (those verifying tokens) fresh revocations.
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    let mut exported = BTreeSet::new();
    for service in ServiceName::ALL {
        let families = parse_prometheus(&scrape_metrics(&metrics[&service]).await.1);
        let expiry = value(&families, "keymesh_tls_certificate_expiration_timestamp_seconds", &[]);
        assert!(expiry > now + 86_400.0, "{service}: the certificate expires at {expiry}");
        let age = value(&families, "keymesh_tokens_revocation_poll_age_seconds", &[]);
        assert!((0.0..30.0).contains(&age), "{service}: revocations {age} s old");
        assert_eq!(value(&families, "keymesh_tokens_revocation_bound_seconds", &[]), 30.0, "{service}");
        // Labels come from closed lists only: nothing a caller chose (a key, a tenant, an identity) is a label.
        // (`target_info` carries the resource, as the OpenTelemetry exporter's convention has it.)
        for sample in families.values().flatten().filter(|s| s.name != "target_info") {
            for label in sample.labels.keys() {
                assert!(
                    LABELS.contains(&label.as_str()) || label.starts_with("otel_scope_"),
                    "{service}: {} has the label {label}",
                    sample.name
                );
            }
        }
        exported.extend(families.values().flatten().map(|s| s.name.clone()));
    }

    // The catalogue: what the README, the dashboard and the alerts name is exported.
    let known =
        |name: &str| ["", "_total", "_count"].iter().any(|suffix| exported.contains(&format!("{name}{suffix}")));
    let readme = readme_metric_names();
    assert!(readme.len() >= 20, "the README's metric table: {readme:?}");
    let missing: Vec<_> = readme.iter().filter(|name| !known(name)).collect();
    assert!(missing.is_empty(), "the README lists metrics no service exports: {missing:?}");
    let queries = asset_queries();
    assert!(queries.len() >= 30, "{queries:?}");
    for (place, expr) in &queries {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for name in names {
            assert!(exported.contains(&name), "{place}: {name} is not exported (in {expr})");
        }
    }
}

//! The chart's `helm test` pod does what NOTES.txt and values.yaml promise (issue 22): its script, taken from
//! the rendered chart, runs against a real mesh with the bundled `keymesh` CLI — `keymesh health` over mTLS, then
//! an encrypt/decrypt round trip that creates its key the first time and reuses it after — and fails when a
//! service is down. Only the paths and endpoints differ from the pod's: those are its environment.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use integration_tests::{Mesh, bin_dir};
use keymesh_mesh::ServiceName;
use serde_json::Value;

/// The test Pod of the chart rendered with the dev values and test credentials.
fn rendered_test_pod() -> Value {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/keymesh");
    let helm = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/keymesh/bin/helm");
    assert!(helm.is_file(), "{} is missing: run `make test-deps`", helm.display());
    let out = Command::new(helm)
        .args(["template", "keymesh", "--show-only", "templates/tests/test-mesh.yaml", "-f"])
        .arg(chart.join("ci/dev-values.yaml"))
        .args(["--set", "tests.credentials.existingSecret=helm-test-credentials"])
        .arg(&chart)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json = Command::new("python3")
        .args(["-c", "import json, sys, yaml; json.dump(yaml.safe_load(sys.argv[1]), sys.stdout)"])
        .arg(String::from_utf8(out.stdout).unwrap())
        .output()
        .expect("python3 with PyYAML (make test-deps)");
    assert!(json.status.success(), "{}", String::from_utf8_lossy(&json.stderr));
    let pod: Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(pod["metadata"]["annotations"]["helm.sh/hook"], "test");
    pod
}

/// Runs the pod's command as the pod would, with `env` in place of the pod's paths and Service names.
fn run(pod: &Value, env: &[(String, String)]) -> (bool, String) {
    let container = &pod["spec"]["containers"][0];
    let command: Vec<&str> = container["command"].as_array().unwrap().iter().map(|c| c.as_str().unwrap()).collect();
    assert_eq!(command[..2], ["/bin/sh", "-ec"]);
    let mut process = Command::new("sh");
    process.args(["-ec", command[2]]).env_clear();
    for var in container["env"].as_array().unwrap() {
        process.env(var["name"].as_str().unwrap(), var["value"].as_str().unwrap());
    }
    let path = format!("{}:{}", bin_dir().display(), std::env::var("PATH").unwrap());
    process.env("PATH", path).envs(env.iter().map(|(k, v)| (k, v)));
    let out = process.output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_helm_test_pod_checks_health_and_a_round_trip() {
    let pod = rendered_test_pod();
    let mut mesh = Mesh::start(&[], &[]).await;
    let tls = mesh.app_tls("helm-test");
    let tls_dir = tempfile::tempdir().unwrap();
    std::fs::write(tls_dir.path().join("ca.crt"), &tls.ca_pem).unwrap();
    std::fs::write(tls_dir.path().join("tls.crt"), &tls.cert_pem).unwrap();
    std::fs::write(tls_dir.path().join("tls.key"), tls.key_pem.as_bytes()).unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let mut env: Vec<(String, String)> = vec![
        ("TLS_DIR".into(), tls_dir.path().display().to_string()),
        ("CREDENTIALS_FILE".into(), mesh.dir.path().join("bootstrap-credentials.json").display().to_string()),
        ("KEYMESH_DATA_DIR".into(), scratch.path().display().to_string()),
    ];
    for service in ServiceName::ALL {
        let name = format!("KEYMESH_ENDPOINTS__{}", service.as_str().to_uppercase().replace('-', "_"));
        env.push((name, mesh.endpoint(service).to_owned()));
    }

    let (ok, output) = run(&pod, &env);
    assert!(ok, "{output}");
    assert!(output.contains("health: all four services SERVING"), "{output}");
    assert!(output.contains("round trip: encrypt and decrypt with helm-test ok"), "{output}");
    // Again: the key exists now and is reused.
    let (ok, output) = run(&pod, &env);
    assert!(ok && output.contains("round trip: encrypt and decrypt with helm-test ok"), "{output}");

    // Without credentials: health only, and it says so.
    let mut without = env.clone();
    without[1].1 = scratch.path().join("absent.json").display().to_string();
    let (ok, output) = run(&pod, &without);
    assert!(ok && output.contains("round trip: not run"), "{output}");

    // A service down fails the test, once the health wait (60 s in the pod) is over.
    mesh.kill(ServiceName::AuditService).await;
    env.push(("HEALTH_WAIT_SECONDS".into(), "3".into()));
    let started = std::time::Instant::now();
    let (ok, output) = run(&pod, &env);
    assert!(!ok, "the test passed with audit-service down: {output}");
    println!("failed as it should after {:?}: {}", started.elapsed(), output.lines().last().unwrap_or(""));
}

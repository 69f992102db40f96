//! The chart's configuration is what the services accept (issue 22). For every values file in
//! `helm/keymesh/ci/`, the chart is rendered with the real `helm`, and each Deployment's container is read the
//! way its service starts: the configuration file the chart's ConfigMap holds, overlaid by the container's
//! `KEYMESH_*` variables (variables filled from Secrets get a placeholder), through the services' own loader.
//! A field the services do not know, a keyring that does not hold together, a file path the chart writes into
//! the configuration but does not mount, or a master key given without a local backend (or missing with one)
//! fails here instead of in a pod that exits with code 64. The console's Deployment is read the same way, through
//! the console's own loader: served over TLS, OIDC configured, no development login, its files mounted.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use keymesh_config::KeymeshConfig;
use keymesh_kms::config::{BackendConfig, VaultAuthConfig};
use keymesh_mesh::{ServiceName, config::MeshParams, run::ServiceConfig};
use serde_json::Value;

fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../helm/keymesh")
}

fn helm() -> PathBuf {
    let helm = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/keymesh/bin/helm");
    assert!(helm.is_file(), "{} is missing: run `make test-deps`", helm.display());
    helm
}

/// The manifests `helm template` renders with `values`, as JSON values.
fn render(values: &Path) -> Vec<Value> {
    let out = Command::new(helm())
        .args(["template", "keymesh", "--namespace", "keymesh", "-f"])
        .arg(values)
        .arg(chart_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "helm template -f {}: {}", values.display(), String::from_utf8_lossy(&out.stderr));
    let mut python = Command::new("python3")
        .args(["-c", "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(sys.stdin) if d], sys.stdout)"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 with PyYAML (make test-deps)");
    use std::io::Write;
    python.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let converted = python.wait_with_output().unwrap();
    assert!(converted.status.success(), "python3 -c 'import yaml' failed: run make test-deps");
    serde_json::from_slice(&converted.stdout).unwrap()
}

fn service_named(name: &str) -> ServiceName {
    ServiceName::ALL.into_iter().find(|s| s.as_str() == name).unwrap_or_else(|| panic!("no service {name}"))
}

/// Whether `path` lies under one of the container's mount paths.
fn mounted(mounts: &[String], path: &Path) -> bool {
    mounts.iter().any(|m| path.starts_with(m))
}

#[test]
fn every_ci_values_file_renders_a_configuration_the_services_accept() {
    let mut files: Vec<PathBuf> = std::fs::read_dir(chart_dir().join("ci"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with("-values.yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 6, "the ci values files: {files:?}");
    let scratch = tempfile::tempdir().unwrap();
    // The limits' Redis connection is opened (lazily) on a runtime, as in the services.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let _runtime = runtime.enter();
    let (mut checked, mut consoles) = (0, 0);
    for values in &files {
        let label = values.file_name().unwrap().to_string_lossy().into_owned();
        let docs = render(values);
        let config_map = docs
            .iter()
            .find(|d| d["kind"] == "ConfigMap" && d["metadata"]["name"] == "keymesh-config")
            .unwrap_or_else(|| panic!("{label}: no ConfigMap keymesh-config"));
        let toml = config_map["data"]["keymesh.toml"].as_str().unwrap();
        let config_file = scratch.path().join(format!("{label}.toml"));
        std::fs::write(&config_file, toml).unwrap();
        let ephemeral = std::fs::read_to_string(values).unwrap().contains("allowEphemeralState: true");

        for deployment in docs.iter().filter(|d| d["kind"] == "Deployment") {
            let container = &deployment["spec"]["template"]["spec"]["containers"][0];
            let (mut env, mounts) = env_and_mounts(container);
            if container["name"] == "console" {
                check_console(&label, env, &mounts, &config_file, scratch.path());
                consoles += 1;
                continue;
            }
            let service = service_named(container["name"].as_str().unwrap());
            let what = format!("{label}, {}", service.as_str());
            let config_path = env.get("KEYMESH_CONFIG").unwrap_or_else(|| panic!("{what}: no KEYMESH_CONFIG"));
            assert!(mounted(&mounts, Path::new(config_path)), "{what}: {config_path} is not mounted");
            for file in ["KEYMESH_TLS__CA_CERT", "KEYMESH_TLS__CERT", "KEYMESH_TLS__KEY"] {
                assert!(mounted(&mounts, Path::new(&env[file])), "{what}: {file} is not mounted");
            }
            env.insert("KEYMESH_CONFIG".into(), config_file.display().to_string());

            // What the service does first at start: the file and variables, each field checked.
            let source = keymesh_mesh::config::ConfigSource::load(Some(&config_file), &env)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            let config = KeymeshConfig::from_source(&source).unwrap_or_else(|e| panic!("{what}: {e}"));
            let params = MeshParams::from_raw(service, config.transport()).unwrap_or_else(|e| panic!("{what}: {e}"));
            config.audit_params(&params).unwrap_or_else(|e| panic!("{what}: {e}"));
            let redis = values.to_string_lossy().contains("postgres-ha");
            if service == ServiceName::KeyService {
                let section: Value = config.service_section("key_service").unwrap();
                assert_eq!(section.get("redis_url").is_some(), redis, "{what}: the Redis URL: {section}");
            }
            // Limits are counted together in the Redis the chart is given, by every service that applies them.
            let shares_limits = redis && service != ServiceName::AuditService;
            assert_eq!(config.limits.shared.redis_url.is_some(), shares_limits, "{what}: limits.shared.redis_url");
            keymesh_limits::Limiter::from_config(&config.limits, service.as_str())
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            if service == ServiceName::CryptoService {
                assert!(!env.contains_key("KEYMESH_MASTER_KEY"), "{what}: crypto-service opens no KMS");
                continue;
            }
            let kms = config.kms_checked().unwrap_or_else(|e| panic!("{what}: {e}"));
            let (default, tenants) = kms.keyrings().unwrap();
            let members: Vec<_> = default.iter().chain(tenants.values().flatten()).collect();
            let local = members.iter().any(|m| matches!(m.backend, BackendConfig::Local { .. }));
            if !ephemeral {
                assert_eq!(env.contains_key("KEYMESH_MASTER_KEY"), local, "{what}: the master key iff a local member");
            }
            for member in &members {
                if let BackendConfig::Vault { auth, ca_cert, .. } = &member.backend {
                    if let Some(ca) = ca_cert {
                        assert!(mounted(&mounts, ca), "{what}: Vault's CA {} is not mounted", ca.display());
                    }
                    if let VaultAuthConfig::Kubernetes { jwt_file, .. } = auth {
                        let jwt = jwt_file.as_ref().expect("the chart names the projected token");
                        assert!(mounted(&mounts, jwt), "{what}: the token {} is not mounted", jwt.display());
                    }
                }
            }
            checked += 1;
        }
    }
    println!("{checked} service and {consoles} console configurations from {} values files accepted", files.len());
    assert!(checked >= 3 * files.len());
    assert!(consoles >= 1, "no ci values file enables the console");
}

/// A container's variables (a Secret's value gets a placeholder shaped as the services check it) and mount paths.
fn env_and_mounts(container: &Value) -> (BTreeMap<String, String>, Vec<String>) {
    let mut env = BTreeMap::new();
    for var in container["env"].as_array().unwrap() {
        let name = var["name"].as_str().unwrap().to_owned();
        let value = match var.get("value") {
            Some(v) => v.as_str().unwrap().to_owned(),
            None if name.ends_with("REDIS_URL") => "redis://from-a-secret:6379".to_owned(),
            None => "from-a-secret".to_owned(),
        };
        env.insert(name, value);
    }
    let mounts = container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["mountPath"].as_str().unwrap().to_owned())
        .collect();
    (env, mounts)
}

/// The console's container, read by the console's own loader: every file it names is mounted, and what it
/// starts with is served over TLS, signs in with OIDC, has no development login and listens beyond loopback.
fn check_console(
    label: &str,
    mut env: BTreeMap<String, String>,
    mounts: &[String],
    config_file: &Path,
    scratch: &Path,
) {
    let what = format!("{label}, console");
    for name in ["KEYMESH_CONFIG", "KEYMESH_CONSOLE__TLS_CA", "KEYMESH_CONSOLE__TLS_CERT", "KEYMESH_CONSOLE__TLS_KEY"]
        .into_iter()
        .chain(
            env.contains_key("KEYMESH_CONSOLE__OIDC__CLIENT_SECRET_FILE")
                .then_some("KEYMESH_CONSOLE__OIDC__CLIENT_SECRET_FILE"),
        )
        .chain(env.contains_key("KEYMESH_CONSOLE__OIDC__CA_FILE").then_some("KEYMESH_CONSOLE__OIDC__CA_FILE"))
    {
        let path = env.get(name).unwrap_or_else(|| panic!("{what}: no {name}"));
        assert!(mounted(mounts, Path::new(path)), "{what}: {name} {path} is not mounted");
    }
    env.insert("KEYMESH_CONFIG".into(), config_file.display().to_string());
    // The files the console reads at start, as placeholders here.
    let secret = scratch.join("oidc-client-secret");
    std::fs::write(&secret, "from-a-secret").unwrap();
    env.insert("KEYMESH_CONSOLE__OIDC__CLIENT_SECRET_FILE".into(), secret.display().to_string());
    let (_, console) = keymesh_console::config::load(Some(config_file), &env).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(console.over_tls(), "{what}: served as {}", console.public_url);
    assert!(!console.dev_login, "{what}: the development login is on");
    assert!(console.oidc.is_some() || console.github.is_some(), "{what}: no way to sign in");
    assert!(console.tls_files.is_some(), "{what}: no client certificate of its own");
    assert!(!console.listen.ip().is_loopback(), "{what}: listens on {} only", console.listen);
}

//! A service with bad configuration or a taken port stops at once with one line naming the cause.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{net::TcpListener, process::Command};

use integration_tests::bin_dir;

fn run(service: &str, envs: &[(&str, String)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(bin_dir().join(service))
        .env_clear()
        .env("KEYMESH_DATA_DIR", dir.path())
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    (output.status.code().unwrap_or(-1), String::from_utf8_lossy(&output.stderr).trim().to_owned())
}

#[test]
fn malformed_config_file_exits_64_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keymesh.toml");
    std::fs::write(&file, "[telemetry]\nlog_format = \"yaml\"\n").unwrap();
    let (code, stderr) = run("key-service", &[("KEYMESH_CONFIG", file.display().to_string())]);
    assert_eq!(code, 64, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("telemetry.log_format"), "{stderr}");

    std::fs::write(&file, "data_dir = [\n").unwrap();
    let (code, stderr) = run("crypto-service", &[("KEYMESH_CONFIG", file.display().to_string())]);
    assert_eq!(code, 64, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not valid TOML"), "{stderr}");

    let (code, stderr) = run("token-service", &[("KEYMESH_TOKENS__ACCESS_TOKEN_TTL_SECONDS", "0".into())]);
    assert_eq!(code, 64, "{stderr}");
    assert!(stderr.contains("tokens.access_token_ttl_seconds"), "{stderr}");
}

#[test]
fn taken_port_exits_1_naming_the_address() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, stderr) = run("audit-service", &[("KEYMESH_LISTEN_ADDR", addr.clone())]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(&format!("cannot listen on {addr}")), "{stderr}");
}

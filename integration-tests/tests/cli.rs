//! The `keymesh` CLI against the four real binaries: every public RPC of the API has a subcommand (checked
//! against the descriptors the services serve), each subcommand is driven once with `--output json` and its
//! output parsed, `--help` lists each, a refused call prints one line with the gRPC code and exits 4, a negative
//! verdict exits 1, and the bash completion script parses.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::BTreeSet,
    process::{Output, Stdio},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use integration_tests::{Mesh, bin_dir, byok, hex, unhex};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// Every public RPC and the command that calls it. The internal RPCs (mesh services only) have none.
const RPC_COMMANDS: &[(&str, &str)] = &[
    ("KeyService.CreateKey", "keys create"),
    ("KeyService.GetKey", "keys get"),
    ("KeyService.ListKeys", "keys list"),
    ("KeyService.RotateKey", "keys rotate"),
    ("KeyService.UpdateKeyPolicy", "keys update-policy"),
    ("KeyService.EnableKey", "keys enable"),
    ("KeyService.DisableKey", "keys disable"),
    ("KeyService.ScheduleKeyDeletion", "keys schedule-deletion"),
    ("KeyService.CancelKeyDeletion", "keys cancel-deletion"),
    ("KeyService.GetPublicKey", "keys public-key"),
    ("KeyService.GetWrappingKey", "keys wrapping-key"),
    ("KeyService.ImportKeyVersion", "keys import"),
    ("KeyService.RewrapKeys", "keys rewrap"),
    ("CryptoService.Encrypt", "encrypt"),
    ("CryptoService.Decrypt", "decrypt"),
    ("CryptoService.ReEncrypt", "re-encrypt"),
    ("CryptoService.GenerateDataKey", "data-key"),
    ("CryptoService.GenerateDataKeyWithoutPlaintext", "data-key --without-plaintext"),
    ("CryptoService.Sign", "sign"),
    ("CryptoService.Verify", "verify"),
    ("CryptoService.GenerateMac", "mac"),
    ("CryptoService.VerifyMac", "verify-mac"),
    ("CryptoService.Hash", "hash"),
    ("CryptoService.GenerateRandom", "random"),
    ("CryptoService.EncryptStream", "encrypt --in"),
    ("CryptoService.DecryptStream", "decrypt --in"),
    ("CryptoService.Decapsulate", "decapsulate"),
    ("CryptoService.Encapsulate", "encapsulate"),
    ("TokenService.CreateTenant", "tenants create"),
    ("TokenService.CreateApplication", "applications create"),
    ("TokenService.ListApplications", "applications list"),
    ("TokenService.RotateClientSecret", "applications rotate-secret"),
    ("TokenService.DisableApplication", "applications disable"),
    ("TokenService.IssueToken", "tokens issue"),
    ("TokenService.RevokeToken", "tokens revoke"),
    ("TokenService.GetJwks", "tokens jwks"),
    ("TokenService.RegisterApplication", "register"),
    ("AuditService.Query", "audit query"),
    ("AuditService.Export", "audit export"),
    ("AuditService.VerifyChain", "audit verify"),
    ("AuditService.ListCheckpoints", "audit checkpoints"),
];

/// RPCs only the mesh's own services may call.
const INTERNAL_RPCS: &[&str] =
    &["KeyService.GetDataKey", "KeyService.WatchKeyChanges", "TokenService.ListRevocations", "AuditService.Append"];

#[test]
fn every_public_rpc_has_a_command() {
    let fds = <prost_types::FileDescriptorSet as prost::Message>::decode(keymesh_proto::FILE_DESCRIPTOR_SET).unwrap();
    let served: BTreeSet<String> = fds
        .file
        .iter()
        .flat_map(|f| f.service.iter())
        .flat_map(|s| s.method.iter().map(move |m| format!("{}.{}", s.name(), m.name())))
        .filter(|rpc| !INTERNAL_RPCS.contains(&rpc.as_str()))
        .collect();
    let covered: BTreeSet<String> = RPC_COMMANDS.iter().map(|(rpc, _)| (*rpc).to_owned()).collect();
    assert_eq!(served, covered, "an RPC was added or removed: give it a CLI command and list it here");
}

struct Cli<'a> {
    mesh: &'a Mesh,
    /// `KEYMESH_HOME`: where `login` and `register` keep their files.
    home: std::path::PathBuf,
    /// The commands run so far ("keys create", "encrypt --in"…).
    ran: std::sync::Mutex<BTreeSet<String>>,
}

impl Cli<'_> {
    async fn raw(&self, args: &[&str], stdin: &[u8]) -> Output {
        let mut command = self.mesh.cli();
        command.env("KEYMESH_HOME", &self.home);
        command.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin).await.unwrap();
        drop(input);
        let output = child.wait_with_output().await.unwrap();
        let name = command_name(args);
        if output.status.success() && RPC_COMMANDS.iter().any(|(_, c)| *c == name) {
            self.ran.lock().unwrap().insert(name);
        }
        output
    }

    /// Runs `keymesh -o json ARGS` and parses its standard output; panics unless it succeeded.
    async fn json(&self, args: &[&str], stdin: &[u8]) -> Value {
        let output = self.raw(&[&["-o", "json"][..], args].concat(), stdin).await;
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout)
            .unwrap_or_else(|e| panic!("{args:?} printed no JSON ({e}): {}", String::from_utf8_lossy(&output.stdout)))
    }

    /// Runs `keymesh ARGS`; its standard output, panicking unless it succeeded.
    async fn text(&self, args: &[&str], stdin: &[u8]) -> String {
        let output = self.raw(args, stdin).await;
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    }
}

/// "keys create", "encrypt --in", "data-key --without-plaintext": the command `args` run, without global options,
/// arguments and values.
fn command_name(args: &[&str]) -> String {
    let mut rest = args.iter().copied();
    let mut words = Vec::new();
    while let Some(arg) = rest.next() {
        match arg {
            "-o" | "--output" | "--credentials" => {
                rest.next();
            }
            _ if arg.starts_with('-') => {}
            _ => words.push(arg),
        }
        let grouped = ["keys", "tenants", "applications", "tokens", "audit"];
        if words.len() == 2 || words.first().is_some_and(|w| !grouped.contains(w)) {
            break;
        }
    }
    let mut name = words.join(" ");
    for flag in ["--without-plaintext", "--in"] {
        if args.contains(&flag) {
            name = format!("{name} {flag}");
        }
    }
    name
}

fn b64(value: &Value) -> Vec<u8> {
    B64.decode(value.as_str().unwrap_or_else(|| panic!("not a string: {value}"))).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_runs_against_the_real_mesh_and_prints_json() {
    let mesh = Mesh::start(&[], &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let cli = Cli { mesh: &mesh, home: dir.path().join("home/.keymesh"), ran: Default::default() };
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();

    // Keys.
    let created = cli.json(&["keys", "create", "cli-enc", "--label", "team=payments", "--description", "d"], b"").await;
    assert_eq!(created["key"]["algorithm"], "ALGORITHM_AES_256_GCM");
    assert_eq!(created["key"]["labels"]["team"], "payments");
    let key_id = created["key"]["key_id"].as_str().unwrap().to_owned();
    cli.json(&["keys", "create", "cli-enc-2"], b"").await;
    cli.json(&["keys", "create", "cli-sign", "--algorithm", "ed25519"], b"").await;
    cli.json(&["keys", "create", "cli-mac", "--algorithm", "hmac-sha256"], b"").await;
    cli.json(&["keys", "create", "cli-kem", "--purpose", "kem", "--algorithm", "ml-kem-768"], b"").await;
    let external = cli.json(&["keys", "create", "cli-byok", "--external"], b"").await;
    assert_eq!(external["key"]["state"], "KEY_STATE_PENDING_IMPORT");
    let policy = r#"{"rotation_period": "2592000s"}"#;
    let with_policy = cli.json(&["keys", "create", "cli-policy", "--policy", policy], b"").await;
    assert_eq!(with_policy["key"]["policy"]["rotation_period"], "2592000s");

    let listed = cli.json(&["keys", "list"], b"").await;
    let names: BTreeSet<&str> =
        listed["keys"].as_array().unwrap().iter().map(|k| k["name"].as_str().unwrap()).collect();
    for name in ["cli-enc", "cli-enc-2", "cli-sign", "cli-mac", "cli-kem", "cli-byok", "cli-policy"] {
        assert!(names.contains(name), "{name} missing from {names:?}");
    }
    let labelled = cli.json(&["keys", "list", "--label", "team=payments"], b"").await;
    assert_eq!(labelled["keys"].as_array().unwrap().len(), 1, "{labelled}");
    let table = cli.text(&["keys", "list", "--purpose", "kem"], b"").await;
    assert!(table.starts_with("NAME ") && table.contains("cli-kem") && !table.contains("cli-enc"), "{table}");
    assert_eq!(cli.json(&["keys", "get", &key_id], b"").await["key"]["name"], "cli-enc");

    // The data plane, unary.
    let sealed = cli.json(&["encrypt", "--key", "cli-enc", "--aad", "order-1"], b"card 4111").await;
    assert_eq!(sealed["key_id"], key_id.as_str());
    let ciphertext = b64(&sealed["ciphertext"]);
    let opened = cli.json(&["decrypt", "--aad", "order-1"], &ciphertext).await;
    assert_eq!(b64(&opened["plaintext"]), b"card 4111");
    let moved = cli.json(&["re-encrypt", "--key", "cli-enc-2", "--aad", "order-1"], &ciphertext).await;
    assert_ne!(moved["key_id"], key_id.as_str());
    let opened = cli.text(&["decrypt", "--aad", "order-1"], &b64(&moved["ciphertext"])).await;
    assert_eq!(opened, "card 4111");
    let data_key = cli.json(&["data-key", "--key", "cli-enc"], b"").await;
    assert_eq!(b64(&data_key["plaintext"]).len(), 32);
    let wrapped_only =
        cli.json(&["data-key", "--key", "cli-enc", "--without-plaintext", "--spec", "aes-128"], b"").await;
    assert!(!b64(&wrapped_only["ciphertext"]).is_empty() && wrapped_only.get("plaintext").is_none(), "{wrapped_only}");

    let signed = cli.json(&["sign", "--key", "cli-sign"], b"release 9").await;
    let signature = signed["signature"].as_str().unwrap().to_owned();
    let verified = cli.json(&["verify", "--key", "cli-sign", "--signature", &signature], b"release 9").await;
    assert_eq!(verified["valid"], true);
    let refused = cli.raw(&["verify", "--key", "cli-sign", "--signature", &signature], b"release 8").await;
    assert_eq!(refused.status.code(), Some(1), "a signature that does not verify is exit status 1");
    assert_eq!(String::from_utf8_lossy(&refused.stdout), "invalid\n");

    let mac = cli.text(&["mac", "--key", "cli-mac"], b"payload").await;
    let checked = cli.json(&["verify-mac", "--key", "cli-mac", "--mac", mac.trim()], b"payload").await;
    assert_eq!(checked["valid"], true);
    assert_eq!(
        cli.raw(&["verify-mac", "--key", "cli-mac", "--mac", mac.trim()], b"tampered").await.status.code(),
        Some(1)
    );

    let digest = cli.json(&["hash", "--algorithm", "sha256"], b"abc").await;
    assert_eq!(hex(&b64(&digest["digest"])), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_eq!(
        cli.text(&["hash", "--algorithm", "sha3-256"], b"abc").await.trim(),
        "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
    );
    assert_eq!(b64(&cli.json(&["random", "--bytes", "16"], b"").await["random"]).len(), 16);

    let encapsulated = cli.json(&["encapsulate", "--key", "cli-kem"], b"").await;
    let decapsulated =
        cli.json(&["decapsulate", "--key", "cli-kem"], encapsulated["ciphertext"].as_str().unwrap().as_bytes()).await;
    assert_eq!(decapsulated["shared_secret"], encapsulated["shared_secret"]);

    // Streams through crypto-service.
    std::fs::write(path("plain"), vec![7u8; 100_000]).unwrap();
    cli.text(&["encrypt", "--key", "cli-enc", "--in", &path("plain"), "--out", &path("sealed")], b"").await;
    cli.text(&["decrypt", "--in", &path("sealed"), "--out", &path("opened")], b"").await;
    assert_eq!(std::fs::read(path("opened")).unwrap(), vec![7u8; 100_000]);
    // A unary ciphertext in a file: decrypted by one call, written private and whole.
    std::fs::write(path("unary"), &ciphertext).unwrap();
    cli.text(&["decrypt", "--aad", "order-1", "--in", &path("unary"), "--out", &path("unary.out")], b"").await;
    assert_eq!(std::fs::read(path("unary.out")).unwrap(), b"card 4111");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(path("unary.out")).unwrap().permissions().mode() & 0o777, 0o600);

    // Lifecycle.
    let rotated = cli.json(&["keys", "rotate", "cli-enc"], b"").await;
    assert_eq!(rotated["new_version"], 2);
    assert_eq!(cli.json(&["keys", "disable", "cli-enc-2"], b"").await["key"]["state"], "KEY_STATE_DISABLED");
    assert_eq!(cli.json(&["keys", "enable", "cli-enc-2"], b"").await["key"]["state"], "KEY_STATE_ENABLED");
    let scheduled = cli.json(&["keys", "schedule-deletion", "cli-enc-2", "--days", "7"], b"").await;
    assert_eq!(scheduled["key"]["state"], "KEY_STATE_PENDING_DELETION");
    assert!(scheduled["deletion_time"].as_str().unwrap().ends_with('Z'), "{scheduled}");
    let cancelled = cli.json(&["keys", "cancel-deletion", "cli-enc-2"], b"").await;
    assert_ne!(cancelled["key"]["state"], "KEY_STATE_PENDING_DELETION");
    let updated = cli.json(&["keys", "update-policy", "cli-enc", "--description", "card numbers"], b"").await;
    assert_eq!(updated["key"]["description"], "card numbers");
    assert_eq!(updated["key"]["labels"]["team"], "payments", "only what is given changes");
    let public = cli.json(&["keys", "public-key", "cli-sign"], b"").await;
    assert!(public["public_key_pem"].as_str().unwrap().starts_with("-----BEGIN PUBLIC KEY-----"), "{public}");

    // Bring your own key: the wrapping key, material wrapped outside keymesh, the import.
    let wrapping = cli
        .json(&["keys", "wrapping-key", "cli-byok", "--spec", "rsa-3072", "--token-out", &path("import-token")], b"")
        .await;
    std::fs::write(path("wrapping.pem"), wrapping["public_key_pem"].as_str().unwrap()).unwrap();
    assert_eq!(std::fs::read(path("import-token")).unwrap(), b64(&wrapping["import_token"]));
    let material = [0x42u8; 32];
    let wrapped = unhex(&byok(&[
        "wrap",
        "--public-key",
        &path("wrapping.pem"),
        "--algorithm",
        "rsa-aes-key-wrap-sha256",
        "--material-hex",
        &hex(&material),
    ]));
    std::fs::write(path("wrapped"), wrapped).unwrap();
    let imported = cli
        .json(&["keys", "import", "cli-byok", "--token", &path("import-token"), "--material", &path("wrapped")], b"")
        .await;
    assert_eq!(imported["version"], 1);
    assert_eq!(imported["key"]["state"], "KEY_STATE_ENABLED");
    let rewrapped = cli.json(&["keys", "rewrap"], b"").await;
    assert_eq!(rewrapped["done"], true);

    // Identity.
    let tenant = cli.json(&["tenants", "create", "cli-tenant"], b"").await;
    assert!(tenant["tenant"]["tenant_id"].as_str().unwrap().starts_with("t_"), "{tenant}");
    let app = cli
        .json(
            &["applications", "create", "cli-app", "--role", "developer", "--permission", "cli-*=encrypt,decrypt"],
            b"",
        )
        .await;
    let client_id = app["application"]["client_id"].as_str().unwrap().to_owned();
    let first_secret = app["client_secret"].as_str().unwrap().to_owned();
    assert_eq!(app["application"]["roles"], serde_json::json!(["ROLE_DEVELOPER"]));
    let apps = cli.json(&["applications", "list"], b"").await;
    assert!(apps["applications"].as_array().unwrap().iter().any(|a| a["client_id"] == client_id.as_str()), "{apps}");
    let rotated = cli.json(&["applications", "rotate-secret", &client_id, "--grace-period", "1h"], b"").await;
    assert_ne!(rotated["client_secret"], first_secret.as_str());
    assert!(rotated["previous_secret_expire_time"].as_str().unwrap().ends_with('Z'), "{rotated}");
    std::fs::write(
        path("app.json"),
        serde_json::json!({"client_id": client_id, "client_secret": rotated["client_secret"]}).to_string(),
    )
    .unwrap();
    let issued = cli.json(&["--credentials", &path("app.json"), "tokens", "issue"], b"").await;
    assert_eq!(issued["token_type"], "Bearer");
    let refresh = issued["refresh_token"].as_str().unwrap().to_owned();
    let renewed = cli.json(&["tokens", "issue", "--refresh"], refresh.as_bytes()).await;
    assert_ne!(renewed["access_token"], issued["access_token"]);
    cli.json(&["tokens", "revoke"], renewed["refresh_token"].as_str().unwrap().as_bytes()).await;
    let reused =
        cli.raw(&["tokens", "issue", "--refresh"], renewed["refresh_token"].as_str().unwrap().as_bytes()).await;
    assert_eq!(reused.status.code(), Some(4), "a revoked refresh token is refused by the service");
    let jwks = cli.json(&["tokens", "jwks"], b"").await;
    assert!(!jwks["keys"].as_array().unwrap().is_empty(), "{jwks}");
    let disabled = cli.json(&["applications", "disable", &client_id], b"").await;
    assert_eq!(disabled["application"]["disabled"], true);
    assert!(cli.text(&["token"], b"").await.trim().split('.').count() == 3, "a JWT");

    // Login (the secret on standard input) and auto-registration.
    let developer = cli
        .json(
            &["applications", "create", "cli-dev", "--role", "developer", "--permission", "cli-*=encrypt,decrypt"],
            b"",
        )
        .await;
    let dev_id = developer["application"]["client_id"].as_str().unwrap();
    let dev_secret = developer["client_secret"].as_str().unwrap();
    let logged_in = cli.text(&["login", "--client-id", dev_id], dev_secret.as_bytes()).await;
    assert!(logged_in.starts_with(&format!("logged in as {dev_id}")), "{logged_in}");
    let session = std::fs::read_to_string(cli.home.join("credentials.json")).unwrap();
    assert!(!session.contains(dev_secret), "the session keeps no secret");
    let registered = cli.json(&["register", "cli-svc", "--environment", "staging", "--key", "cli-*"], b"").await;
    assert_eq!(registered["created"], true);
    assert_eq!(registered["application_name"], "cli-svc.staging");
    let again = cli.json(&["register", "cli-svc", "--environment", "staging", "--key", "cli-*"], b"").await;
    assert_eq!(
        (again["created"].clone(), again["client_id"].clone()),
        (Value::Bool(false), registered["client_id"].clone())
    );

    // The audit trail.
    let records = cli.json(&["audit", "query", "--operation", "Encrypt", "--limit", "5"], b"").await;
    let records = records.as_array().unwrap();
    assert!(!records.is_empty() && records.iter().all(|r| r["event"]["operation"] == "Encrypt"), "{records:?}");
    assert!(records[0]["event"]["time"].as_str().unwrap().ends_with('Z'), "RFC 3339 times");
    let table = cli.text(&["audit"], b"").await;
    assert!(table.contains(" Encrypt "), "{table}");
    assert!(table.lines().all(|l| l.split_whitespace().nth(1).is_some_and(|t| t.contains('T'))), "RFC 3339: {table}");
    let exported = cli.text(&["audit", "export", "--limit", "3"], b"").await;
    assert_eq!(exported.lines().count(), 3, "{exported}");
    for line in exported.lines() {
        serde_json::from_str::<Value>(line).unwrap_or_else(|e| panic!("{e}: {line}"));
    }
    assert_eq!(cli.json(&["audit", "verify"], b"").await["valid"], true);
    let checkpoints = cli.json(&["audit", "checkpoints"], b"").await;
    assert!(checkpoints["checkpoints"].is_array(), "{checkpoints}");

    // Operator checks.
    assert!(cli.text(&["health"], b"").await.lines().all(|l| l.split_whitespace().last() == Some("SERVING")));
    assert!(cli.text(&["kms", "check"], b"").await.starts_with("ok "));

    // A refused call: one line, the gRPC code first, exit status 4.
    let missing = cli.raw(&["keys", "get", "no-such-key"], b"").await;
    assert_eq!(missing.status.code(), Some(4));
    let stderr = String::from_utf8(missing.stderr).unwrap();
    assert!(stderr.starts_with("keymesh: NOT_FOUND: ") && stderr.lines().count() == 1, "{stderr}");
    // A local problem: exit status 3, before any call.
    let bad = cli.raw(&["hash", "--algorithm", "md5"], b"abc").await;
    assert_eq!(bad.status.code(), Some(3), "{}", String::from_utf8_lossy(&bad.stderr));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown hash algorithm \"md5\""));
    // A usage error: clap's exit status 2.
    assert_eq!(cli.raw(&["keys", "frobnicate"], b"").await.status.code(), Some(2));
    // A service that does not answer: exit status 5 (retry later); `health` says NOT SERVING with exit status 1.
    let port = integration_tests::free_port();
    let dead = |args: &[&str]| {
        let mut command = mesh.cli();
        command.env("KEYMESH_HOME", &cli.home).env("KEYMESH_ENDPOINTS__KEY_SERVICE", format!("127.0.0.1:{port}"));
        command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
        command
    };
    let unreachable = dead(&["keys", "get", "cli-enc"]).output().await.unwrap();
    assert_eq!(unreachable.status.code(), Some(5), "{}", String::from_utf8_lossy(&unreachable.stderr));
    assert!(String::from_utf8_lossy(&unreachable.stderr).starts_with("keymesh: UNAVAILABLE: "));
    let health = dead(&["health"]).output().await.unwrap();
    assert_eq!(health.status.code(), Some(1), "{}", String::from_utf8_lossy(&health.stdout));
    assert!(String::from_utf8_lossy(&health.stdout).contains("UNREACHABLE"));

    let ran = cli.ran.lock().unwrap().clone();
    let missing: Vec<&str> = RPC_COMMANDS.iter().map(|(_, c)| *c).filter(|c| !ran.contains(*c)).collect();
    assert!(missing.is_empty(), "commands never driven: {missing:?}");
}

#[tokio::test]
async fn help_lists_every_command_and_bash_completion_parses() {
    let help = |args: &[&str]| {
        let output = std::process::Command::new(bin_dir().join("keymesh")).args(args).arg("--help").output().unwrap();
        assert!(output.status.success());
        String::from_utf8(output.stdout).unwrap()
    };
    let top = help(&[]);
    assert!(top.contains("Exit status:") && top.contains("4  the service refused the call"), "{top}");
    for (_, command) in RPC_COMMANDS {
        let words: Vec<&str> = command.split(' ').filter(|w| !w.starts_with("--")).collect();
        let (parent, leaf) = words.split_at(words.len() - 1);
        let listing = help(parent);
        assert!(
            listing.lines().any(|l| l.trim_start().starts_with(&format!("{} ", leaf[0])) || l.trim() == leaf[0]),
            "`keymesh {} --help` does not list {}:\n{listing}",
            parent.join(" "),
            leaf[0]
        );
    }
    for extra in ["token", "login", "health", "kms", "completions"] {
        assert!(top.lines().any(|l| l.trim_start().starts_with(&format!("{extra} "))), "{extra} missing:\n{top}");
    }
    let script = std::process::Command::new(bin_dir().join("keymesh")).args(["completions", "bash"]).output().unwrap();
    assert!(script.status.success() && script.stdout.len() > 1000);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("keymesh.bash");
    std::fs::write(&file, &script.stdout).unwrap();
    let parsed = std::process::Command::new("bash").arg("-n").arg(&file).output().expect("bash");
    assert!(parsed.status.success(), "bash -n: {}", String::from_utf8_lossy(&parsed.stderr));
    let text = String::from_utf8(script.stdout).unwrap();
    for word in ["rotate-secret", "schedule-deletion", "verify-mac", "checkpoints"] {
        assert!(text.contains(word), "the completion script offers {word}");
    }
    for shell in ["zsh", "fish"] {
        let script =
            std::process::Command::new(bin_dir().join("keymesh")).args(["completions", shell]).output().unwrap();
        assert!(
            script.status.success() && String::from_utf8_lossy(&script.stdout).contains("rotate-secret"),
            "{shell}"
        );
    }
}

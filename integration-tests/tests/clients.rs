//! The clients generated from proto/ (libs/python-client, libs/go-client, libs/typescript-client; `deploy/dev/generate-clients.sh`,
//! which `make test` runs first) against the four real binaries over mTLS, each through its own wrapper: a token
//! from client credentials, CreateKey, Encrypt/Decrypt, a ciphertext of the Rust SDK decrypted and one of the client
//! decrypted by the Rust SDK, refused calls with their gRPC codes. The Python client's envelopes and streams open
//! in the Rust SDK and the other way round, and its local hash and HMAC equal the service's. And `buf breaking`
//! against the released API (proto/api-baseline.binpb) passes as the protos are, and fails on a removed field.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use integration_tests::Mesh;
use keymesh_client::{
    ClientError, KeymeshClient,
    envelope::Associated,
    streaming::{StreamOptions, Via},
};
use keymesh_proto::v1 as pb;
use serde_json::Value;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The environment every driver reads: the mesh's endpoints, a client certificate of the mesh's CA, the bootstrap
/// admin's credentials.
fn driver_env(mesh: &Mesh, language: &str) -> HashMap<String, String> {
    let tls = mesh.app_tls(&format!("{language}-client"));
    let files = tls.files.expect("the development PKI writes files");
    let credentials: Value =
        serde_json::from_slice(&std::fs::read(mesh.dir.path().join("bootstrap-credentials.json")).unwrap()).unwrap();
    let path = |p: &Path| p.to_str().unwrap().to_owned();
    HashMap::from([
        ("KEYMESH_KEY_SERVICE".into(), mesh.endpoints.key_service.clone()),
        ("KEYMESH_CRYPTO_SERVICE".into(), mesh.endpoints.crypto_service.clone()),
        ("KEYMESH_TOKEN_SERVICE".into(), mesh.endpoints.token_service.clone()),
        ("KEYMESH_AUDIT_SERVICE".into(), mesh.endpoints.audit_service.clone()),
        ("KEYMESH_CA_CERT".into(), path(&files.ca_cert)),
        ("KEYMESH_CLIENT_CERT".into(), path(&files.cert)),
        ("KEYMESH_CLIENT_KEY".into(), path(&files.key)),
        ("KEYMESH_CLIENT_ID".into(), credentials["client_id"].as_str().unwrap().to_owned()),
        ("KEYMESH_CLIENT_SECRET".into(), credentials["client_secret"].as_str().unwrap().to_owned()),
    ])
}

/// How to run each language's driver; panics with the fix when it was not generated.
fn driver(language: &str) -> Command {
    let (program, args, built): (PathBuf, Vec<PathBuf>, PathBuf) = match language {
        "python" => (
            "python3".into(),
            vec![repo().join("libs/python-client/tests/e2e.py")],
            repo().join("libs/python-client/keymesh/v1/crypto_service_pb2_grpc.py"),
        ),
        "go" => {
            let bin = std::env::var_os("KEYMESH_GO_BIN")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/keymesh/go/bin"))
                .join("keymesh-e2e");
            (bin.clone(), vec![], bin)
        }
        "typescript" => (
            "node".into(),
            vec![repo().join("libs/typescript-client/dist/e2e.js")],
            repo().join("libs/typescript-client/dist/e2e.js"),
        ),
        _ => unreachable!(),
    };
    assert!(
        built.exists(),
        "{} is missing: generate and build the clients first (`deploy/dev/generate-clients.sh`, which `make test` runs)",
        built.display()
    );
    let mut command = Command::new(program);
    command.args(args);
    command
}

/// Runs a driver subcommand; its last stdout line as JSON, or its one-line error.
fn run(language: &str, env: &HashMap<String, String>, args: &[&str]) -> Result<Value, String> {
    let output = driver(language)
        .args(args)
        .env_clear()
        .envs(env)
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", std::env::var("HOME").unwrap())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).trim().to_owned();
    if !output.status.success() {
        return Err(stderr);
    }
    let stdout = String::from_utf8(output.stdout).unwrap();
    let last = stdout.lines().last().unwrap_or_default();
    Ok(serde_json::from_str(last).unwrap_or_else(|e| panic!("{language} {args:?} printed no JSON ({e}): {stdout}")))
}

fn b64(value: &Value) -> Vec<u8> {
    B64.decode(value.as_str().unwrap_or_else(|| panic!("not a string: {value}"))).unwrap()
}

/// The contract every driver's `basic` keeps, checked from the Rust side.
async fn basic(mesh: &Mesh, language: &str) {
    let admin = mesh.admin_client();
    admin.create_key(&format!("rust-for-{language}")).await.unwrap();
    let rust_plaintext = format!("made by the Rust SDK for {language}").into_bytes();
    let rust_ciphertext =
        admin.encrypt(&format!("rust-for-{language}"), rust_plaintext.clone(), b"rust-aad".to_vec()).await.unwrap();
    let mut env = driver_env(mesh, language);
    let key_name = format!("{language}-made");
    env.insert("KEYMESH_TEST_KEY".into(), key_name.clone());
    env.insert("KEYMESH_TEST_RUST_CIPHERTEXT_B64".into(), B64.encode(&rust_ciphertext));
    env.insert("KEYMESH_TEST_RUST_AAD_B64".into(), B64.encode(b"rust-aad"));
    let report = run(language, &env, &["basic"]).unwrap_or_else(|e| panic!("{language} basic failed: {e}"));

    assert_eq!(report["language"], language);
    assert_eq!(report["roundtrip"], true);
    assert_eq!(report["key_name"], key_name.as_str());
    let key = admin.get_key(report["key_id"].as_str().unwrap()).await.unwrap();
    assert_eq!(key.name, key_name, "the client's CreateKey made the key the Rust SDK sees");
    let plaintext = admin.decrypt(b64(&report["ciphertext_b64"]), b64(&report["aad_b64"])).await.unwrap();
    assert_eq!(*plaintext, b64(&report["plaintext_b64"]), "the Rust SDK decrypts the {language} ciphertext");
    assert_eq!(b64(&report["rust_plaintext_b64"]), rust_plaintext, "{language} decrypts the Rust ciphertext");
    assert_eq!(report["refused"]["code"], "NOT_FOUND");
    assert_eq!(report["refused"]["code_number"], 5);
    assert!(report["refused"]["message"].as_str().unwrap().contains("not found"), "{report}");
    assert_eq!(report["unauthenticated"]["code"], "UNAUTHENTICATED");
    assert_eq!(report["unauthenticated"]["code_number"], 16);
    let text = report.to_string();
    assert!(!text.contains(&env["KEYMESH_CLIENT_SECRET"]), "the client secret never appears in a report");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_go_client_creates_keys_encrypts_and_shows_refusals() {
    let mesh = Mesh::start(&[], &[]).await;
    basic(&mesh, "go").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_typescript_client_creates_keys_encrypts_and_shows_refusals() {
    let mesh = Mesh::start(&[], &[]).await;
    basic(&mesh, "typescript").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_creates_keys_encrypts_and_interoperates_with_the_rust_sdk() {
    let mesh = Mesh::start(&[], &[]).await;
    basic(&mesh, "python").await;
    let admin = mesh.admin_client();
    admin.create_key("envelopes").await.unwrap();

    // Associated data and a context both ways; several segments, the last a short one.
    let associated = Associated {
        aad: b"object-42".to_vec(),
        encryption_context: HashMap::from([("bucket".into(), "invoices".into()), ("team".into(), "billing".into())]),
    };
    let mut env = driver_env(&mesh, "python");
    env.insert("KEYMESH_TEST_AAD_B64".into(), B64.encode(&associated.aad));
    env.insert("KEYMESH_TEST_CONTEXT_JSON".into(), serde_json::to_string(&associated.encryption_context).unwrap());
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_owned();
    let plaintext: Vec<u8> = (0..2_500_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(path("plain"), &plaintext).unwrap();
    let options =
        |via| StreamOptions { key: "envelopes".into(), associated: associated.clone(), segment_size: 1 << 20, via };
    // Rust envelope (local data key) and Rust stream (EncryptStream) → Python opens both, both ways.
    admin
        .encrypt_file(&options(Via::Local), Path::new(&path("plain")), Path::new(&path("rust-envelope")), &mut |_| {})
        .await
        .unwrap();
    admin
        .encrypt_file(&options(Via::Service), Path::new(&path("plain")), Path::new(&path("rust-stream")), &mut |_| {})
        .await
        .unwrap();
    for (input, subcommand) in [
        ("rust-envelope", "envelope-open"),
        ("rust-stream", "envelope-open"),
        ("rust-stream", "stream-decrypt"),
        ("rust-envelope", "stream-decrypt"),
    ] {
        let out = path(&format!("{input}.{subcommand}"));
        run("python", &env, &[subcommand, &path(input), &out])
            .unwrap_or_else(|e| panic!("python {subcommand} {input}: {e}"));
        assert_eq!(std::fs::read(&out).unwrap(), plaintext, "python {subcommand} of the {input}");
    }

    // Python envelope (local) and Python stream (EncryptStream) → the Rust SDK opens both, locally and in the service.
    run("python", &env, &["envelope-seal", "envelopes", &path("plain"), &path("py-envelope")]).unwrap();
    run("python", &env, &["stream-encrypt", "envelopes", &path("plain"), &path("py-stream")]).unwrap();
    for input in ["py-envelope", "py-stream"] {
        for via in [Via::Local, Via::Service] {
            let opened = rust_open(&admin, &options(via), &path(input))
                .await
                .unwrap_or_else(|e| panic!("rust opens {input}: {e}"));
            assert_eq!(opened, plaintext, "the Rust SDK opens the {input}");
        }
    }
    let sealed = std::fs::read(path("py-envelope")).unwrap();
    let opened = admin.open_envelope(&sealed, &associated, "envelopes").await.unwrap();
    assert_eq!(*opened, plaintext);

    // Tampering is refused both ways, and no output appears.
    let mut tampered = sealed.clone();
    let middle = tampered.len() / 2;
    tampered[middle] ^= 1;
    std::fs::write(path("py-tampered"), &tampered).unwrap();
    assert!(
        rust_open(&admin, &options(Via::Local), &path("py-tampered")).await.is_err(),
        "the Rust SDK refuses a tampered envelope"
    );
    let mut tampered = std::fs::read(path("rust-envelope")).unwrap();
    tampered.truncate(tampered.len() - 100);
    std::fs::write(path("rust-truncated"), &tampered).unwrap();
    let refused = run("python", &env, &["envelope-open", &path("rust-truncated"), &path("never")]);
    assert!(refused.is_err(), "python refuses a truncated envelope");
    assert!(!Path::new(&path("never")).exists(), "and writes nothing");
    let mut wrong_context = env.clone();
    wrong_context.insert("KEYMESH_TEST_CONTEXT_JSON".into(), r#"{"bucket": "other"}"#.into());
    assert!(run("python", &wrong_context, &["envelope-open", &path("rust-envelope"), &path("never")]).is_err());

    // Local hash and HMAC equal the service's Hash and GenerateMac on the standard vectors (NIST, RFC 4231).
    let local = run("python", &env, &["local-check"]).unwrap_or_else(|e| panic!("python local-check: {e}"));
    assert_eq!(local["ok"], true, "{local}");
    for algorithm in ["sha256", "sha384", "sha512", "sha3-256", "blake2b"] {
        assert!(
            local["hashes"].as_object().unwrap().keys().any(|k| k.contains(algorithm)),
            "{algorithm} checked: {local}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_logs_in_and_registers_sharing_keymesh_home_with_the_rust_sdk() {
    use std::os::unix::fs::PermissionsExt;
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    admin.create_key("py-registered").await.unwrap();
    let token = admin.access_token().await.unwrap();
    let (dev_id, dev_secret) = integration_tests::create_application(
        &mesh,
        &token,
        "",
        "py-dev",
        &[pb::Role::Developer],
        &[("py-*", &[pb::Operation::Encrypt, pb::Operation::Decrypt])],
    )
    .await
    .unwrap();
    let root = tempfile::tempdir().unwrap();
    let home_dir = root.path().join(".keymesh");
    let mut env = driver_env(&mesh, "python");
    env.insert("KEYMESH_CLIENT_ID".into(), dev_id.clone());
    env.insert("KEYMESH_CLIENT_SECRET".into(), dev_secret.clone());
    env.insert("KEYMESH_HOME".into(), home_dir.to_str().unwrap().to_owned());
    env.insert("KEYMESH_TEST_KEY".into(), "py-registered".into());
    let login = run("python", &env, &["login"]).unwrap_or_else(|e| panic!("python login: {e}"));
    assert_eq!(login["client_id"], dev_id.as_str());
    let session = std::fs::read_to_string(home_dir.join("credentials.json")).unwrap();
    assert!(!session.contains(&dev_secret), "the session keeps no secret");

    let first = run("python", &env, &["register", "orders", "development", "py-*"]).unwrap();
    assert_eq!((first["created"].clone(), first["roundtrip"].clone()), (Value::Bool(true), Value::Bool(true)));
    let again = run("python", &env, &["register", "orders", "development", "py-*"]).unwrap();
    assert_eq!(
        (again["created"].clone(), again["client_id"].clone()),
        (Value::Bool(false), first["client_id"].clone())
    );
    let staging = run("python", &env, &["register", "orders", "staging", "py-*"]).unwrap();
    assert_ne!(staging["client_id"], first["client_id"], "another environment, another application");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let file = PathBuf::from(first["credentials_file"].as_str().unwrap());
    assert_eq!((mode(&file), mode(file.parent().unwrap()), mode(&home_dir)), (0o600, 0o700, 0o700));

    // The Rust SDK on the same ~/.keymesh: it finds what Python registered, and Python finds what it registers.
    let home = keymesh_client::home::KeymeshHome::at(&home_dir);
    let tls = mesh.app_tls("sdk");
    let request = |environment: &str| pb::RegisterApplicationRequest {
        name: "orders".into(),
        environment: environment.into(),
        keys: vec!["py-*".into()],
        ..Default::default()
    };
    let (_, found) = home.register(&mesh.endpoints, &tls, request("development")).await.unwrap();
    assert_eq!((found.client_id.as_str(), found.created), (first["client_id"].as_str().unwrap(), false));
    let (client, made) = home.register(&mesh.endpoints, &tls, request("production")).await.unwrap();
    assert!(made.created);
    client.encrypt("py-registered", b"from rust".to_vec(), vec![]).await.unwrap();
    // Python on the session the Rust SDK just refreshed (and rewrote): a new environment needs it.
    let qa = run("python", &env, &["register", "orders", "qa", "py-*"]).unwrap_or_else(|e| panic!("python qa: {e}"));
    assert_eq!(qa["created"], true);
    let python = run("python", &env, &["register", "orders", "production", "py-*"]).unwrap();
    assert_eq!(
        (python["created"].clone(), python["client_id"].as_str()),
        (Value::Bool(false), Some(made.client_id.as_str()))
    );
}

/// Opens a stream or envelope file with the Rust SDK.
async fn rust_open(admin: &KeymeshClient, options: &StreamOptions, file: &str) -> Result<Vec<u8>, ClientError> {
    let out = format!("{file}.rust-opened");
    admin.decrypt_file(options, Path::new(file), Path::new(&out), &mut |_| {}).await?;
    Ok(std::fs::read(&out).unwrap())
}

/// buf from the Makefile's place (`make test-deps` installs it).
fn buf() -> PathBuf {
    let buf = PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/keymesh/node/node_modules/.bin/buf");
    assert!(
        buf.exists(),
        "{} is missing: `make test-deps` (or `npm install --prefix ~/.cache/keymesh/node @bufbuild/buf`)",
        buf.display()
    );
    buf
}

fn copy_protos(to: &Path) {
    let from = repo().join("proto");
    std::fs::create_dir_all(to.join("keymesh/v1")).unwrap();
    std::fs::copy(from.join("buf.yaml"), to.join("buf.yaml")).unwrap();
    for entry in std::fs::read_dir(from.join("keymesh/v1")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join("keymesh/v1").join(entry.file_name())).unwrap();
    }
}

#[test]
fn buf_breaking_passes_as_the_api_is_and_fails_on_a_removed_field() {
    let baseline = repo().join("proto/api-baseline.binpb");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("proto");
    copy_protos(&copy);
    let check = |module: &Path| {
        Command::new(buf()).arg("breaking").arg(module).arg("--against").arg(&baseline).output().unwrap()
    };
    let unchanged = check(&copy);
    assert!(
        unchanged.status.success(),
        "the protos break the released API: {}",
        String::from_utf8_lossy(&unchanged.stdout)
    );

    let file = copy.join("keymesh/v1/key_service.proto");
    let text = std::fs::read_to_string(&file).unwrap();
    let removed = text.replacen("  string description = 2;\n", "", 1);
    assert_ne!(removed, text, "CreateKeyRequest.description is where this test expects it");
    std::fs::write(&file, removed).unwrap();
    let broken = check(&copy);
    assert!(!broken.status.success(), "buf breaking accepted a removed field");
    let report = String::from_utf8_lossy(&broken.stdout);
    assert!(
        report.contains("\"description\"") && report.contains("CreateKeyRequest"),
        "buf names the removed field: {report}"
    );
}

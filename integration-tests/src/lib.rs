//! Starts the four real service binaries as separate processes on free loopback ports with a temporary data
//! directory, and waits until each reports SERVING on grpc.health.v1 over mTLS. Tests then talk to them like
//! any client would.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

pub mod azure_kv_double;
pub mod gcp_kms_double;
pub mod k8s_token_review;
pub mod kms_servers;
pub mod oidc_issuer;

use std::{
    collections::BTreeMap,
    net::TcpListener,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use keymesh_client::{Credentials, Endpoints, KeymeshClient};
use keymesh_mesh::{ServiceName, client::mtls_channel, pki::TlsMaterial, run::dev_client_tls};
use keymesh_proto::v1 as pb;
use tokio::process::{Child, Command};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

/// The directory holding the workspace's binaries: next to the test executable's `deps/`, or `KEYMESH_BIN_DIR`
/// (a benchmark measures an earlier build beside this one so).
pub fn bin_dir() -> PathBuf {
    let dir = match std::env::var_os("KEYMESH_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("current exe");
            exe.parent().and_then(Path::parent).expect("target dir").to_path_buf()
        }
    };
    for name in ["key-service", "crypto-service", "token-service", "audit-service", "keymesh", "keymesh-console"] {
        assert!(
            dir.join(name).exists(),
            "{} is missing: build the workspace binaries first (`cargo build --workspace --bins`, which `make test` does)",
            dir.join(name).display()
        );
    }
    dir
}

/// A free loopback port below the kernel's ephemeral range (32768 and up on Linux), so that a service
/// restarted on its port by `Mesh::restart` cannot find it taken as the source port of some outgoing
/// connection in the meantime.
/// Never the same port twice in one process: tests of one binary run in parallel, and a port handed to one
/// mesh is free until its service binds it.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..1000 {
        let port = 20_000 + (rand_u16() % 12_000);
        let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|p| p.into_inner());
        if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            handed_out.push(port);
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

fn rand_u16() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_le_bytes([bytes[0], bytes[1]])
}

/// A running mesh.
pub struct Mesh {
    /// The processes (killed on drop, before the data directory goes: fields drop in order).
    pub children: Vec<(ServiceName, Child)>,
    /// host:port of each service.
    pub endpoints: Endpoints,
    env: BTreeMap<String, String>,
    per_service: Vec<(ServiceName, String, String)>,
    /// The data directory (removed on drop).
    pub dir: tempfile::TempDir,
}

impl Mesh {
    /// Starts the mesh with extra `KEYMESH_*` variables for all services and per-service ones.
    pub async fn start(common: &[(&str, &str)], per_service: &[(ServiceName, &str, &str)]) -> Mesh {
        keymesh_mesh::install_crypto_provider();
        let dir = tempfile::tempdir().expect("tempdir");
        let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
        let endpoints = Endpoints {
            key_service: format!("127.0.0.1:{}", ports[0]),
            crypto_service: format!("127.0.0.1:{}", ports[1]),
            token_service: format!("127.0.0.1:{}", ports[2]),
            audit_service: format!("127.0.0.1:{}", ports[3]),
        };
        let mut env = BTreeMap::new();
        env.insert("KEYMESH_DATA_DIR".to_owned(), dir.path().display().to_string());
        env.insert("KEYMESH_ENDPOINTS__KEY_SERVICE".to_owned(), endpoints.key_service.clone());
        env.insert("KEYMESH_ENDPOINTS__CRYPTO_SERVICE".to_owned(), endpoints.crypto_service.clone());
        env.insert("KEYMESH_ENDPOINTS__TOKEN_SERVICE".to_owned(), endpoints.token_service.clone());
        env.insert("KEYMESH_ENDPOINTS__AUDIT_SERVICE".to_owned(), endpoints.audit_service.clone());
        env.insert("KEYMESH_LOG".to_owned(), "warn".to_owned());
        // Meshes run side by side: each service's Prometheus endpoint on a port of its own choosing, unless a
        // test names one.
        env.insert("KEYMESH_TELEMETRY__METRICS_ADDR".to_owned(), "127.0.0.1:0".to_owned());
        for (k, v) in common {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let per_service = per_service.iter().map(|(s, k, v)| (*s, (*k).to_owned(), (*v).to_owned())).collect();
        let mut mesh = Mesh { children: Vec::new(), endpoints, env, per_service, dir };
        // token-service first: it creates the PKI's CA, the master key and the bootstrap credentials; the
        // others would wait on the same locks anyway.
        for service in
            [ServiceName::TokenService, ServiceName::AuditService, ServiceName::KeyService, ServiceName::CryptoService]
        {
            let child = mesh.command(service).spawn().unwrap_or_else(|e| panic!("cannot start {service}: {e}"));
            mesh.children.push((service, child));
            mesh.wait_serving(service).await;
        }
        mesh
    }

    /// The test application's client certificate from the mesh's development CA.
    pub fn app_tls(&self, name: &str) -> TlsMaterial {
        dev_client_tls(self.dir.path(), name).expect("client certificate")
    }

    /// A channel to `service` authenticated with an application certificate.
    pub fn channel(&self, service: ServiceName) -> tonic::transport::Channel {
        self.channel_to(self.endpoint(service), service)
    }

    /// A channel to whatever serves `service`'s identity from this mesh's CA at `endpoint` (a replica, a stand-in),
    /// authenticated with the test application's certificate.
    pub fn channel_to(&self, endpoint: &str, service: ServiceName) -> tonic::transport::Channel {
        mtls_channel(endpoint, &self.app_tls("test-app"), service).expect("channel")
    }

    /// host:port of `service`.
    pub fn endpoint(&self, service: ServiceName) -> &str {
        self.endpoints.of(service)
    }

    /// Waits (up to 60 s) for `service` to report SERVING over mTLS; panics if its process exits.
    pub async fn wait_serving(&mut self, service: ServiceName) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let name = format!("keymesh.v1.{}", proto_service_name(service));
        loop {
            if let Some((_, child)) = self.children.iter_mut().find(|(s, _)| *s == service)
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("{service} exited during start-up: {status}");
            }
            let mut health = HealthClient::new(self.channel(service));
            if let Ok(response) = health.check(HealthCheckRequest { service: name.clone() }).await
                && response.into_inner().status == ServingStatus::Serving as i32
            {
                return;
            }
            assert!(Instant::now() < deadline, "{service} did not report SERVING within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A client with the bootstrap admin's credentials.
    pub fn admin_client(&self) -> KeymeshClient {
        let credentials =
            Credentials::from_file(&self.dir.path().join("bootstrap-credentials.json")).expect("bootstrap credentials");
        KeymeshClient::new(&self.endpoints, &self.app_tls("test-app"), credentials).expect("client")
    }

    /// A client with other credentials.
    pub fn client_with(&self, client_id: &str, client_secret: &str) -> KeymeshClient {
        let credentials: Credentials =
            serde_json::from_value(serde_json::json!({"client_id": client_id, "client_secret": client_secret}))
                .unwrap();
        KeymeshClient::new(&self.endpoints, &self.app_tls("test-app"), credentials).expect("client")
    }

    /// A client without a stored secret: it exchanges the platform token in `token_file` at each renewal.
    pub fn client_exchanging(&self, token_file: &Path) -> KeymeshClient {
        KeymeshClient::new(&self.endpoints, &self.app_tls("test-app"), Credentials::token_exchange(token_file))
            .expect("client")
    }

    /// Starts one more process of `service` with the mesh's environment plus `extra`, on a new port, and
    /// waits until it serves; returns its endpoint. Replicas share the data directory (and so the KEK) and
    /// the service's own variables given to [`Mesh::start`]; each has its own audit spool, as every process
    /// must.
    pub async fn spawn_replica(&mut self, service: ServiceName, extra: &[(&str, &str)]) -> String {
        let endpoint = format!("127.0.0.1:{}", free_port());
        let mut command = self.command(service);
        let spool = self.dir.path().join("audit-spool").join(format!("{service}-{}", endpoint.replace(':', "-")));
        command.env("KEYMESH_AUDIT__SPOOL_DIR", spool);
        for (k, v) in extra {
            command.env(k, v);
        }
        command.env("KEYMESH_LISTEN_ADDR", &endpoint);
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start a {service} replica: {e}"));
        let deadline = Instant::now() + Duration::from_secs(60);
        let name = format!("keymesh.v1.{}", proto_service_name(service));
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("{service} replica exited during start-up: {status}");
            }
            let channel = mtls_channel(&endpoint, &self.app_tls("test-app"), service).expect("channel");
            if let Ok(response) = HealthClient::new(channel).check(HealthCheckRequest { service: name.clone() }).await
                && response.into_inner().status == ServingStatus::Serving as i32
            {
                break;
            }
            assert!(Instant::now() < deadline, "{service} replica did not report SERVING within 60 s");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.children.push((service, child));
        endpoint
    }

    /// The `keymesh` CLI with the mesh's common environment, so it finds the endpoints and the development PKI.
    pub fn cli(&self) -> Command {
        self.program("keymesh")
    }

    fn program(&self, name: &str) -> Command {
        let mut command = Command::new(bin_dir().join(name));
        command.env_clear().envs(&self.env).kill_on_drop(true).stderr(Stdio::inherit());
        if let Ok(path) = std::env::var("PATH") {
            command.env("PATH", path);
        }
        command
    }

    /// A command that runs the admin console with the mesh's environment (its endpoints and data directory) plus
    /// `extra` (the `[console]` settings).
    pub fn console(&self, extra: &[(&str, &str)]) -> Command {
        let mut command = self.program("keymesh-console");
        command.stdout(Stdio::null());
        for (k, v) in extra {
            command.env(k, v);
        }
        command
    }

    /// Stops `service` (SIGKILL: a crash, not a shutdown) and starts it again on its port with the mesh's
    /// environment plus `extra`, waiting until it serves.
    pub async fn restart(&mut self, service: ServiceName, extra: &[(&str, &str)]) {
        self.kill(service).await;
        self.resume(service, extra).await;
    }

    /// Kills `service` with SIGKILL (a crash: nothing is flushed) and waits until the process is gone.
    pub async fn kill(&mut self, service: ServiceName) {
        if let Some(index) = self.children.iter().position(|(s, _)| *s == service) {
            let (_, mut child) = self.children.remove(index);
            child.kill().await.expect("kill");
        }
    }

    /// Starts `service` again on its port, after [`Mesh::kill`], with the mesh's environment plus `extra`,
    /// waiting until it serves.
    pub async fn resume(&mut self, service: ServiceName, extra: &[(&str, &str)]) {
        let mut command = self.command(service);
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot restart {service}: {e}"));
        self.children.push((service, child));
        self.wait_serving(service).await;
    }

    /// A command that runs `service`'s binary with the mesh's environment, common and per service (add
    /// arguments and variables).
    pub fn command(&self, service: ServiceName) -> Command {
        let mut command = self.program(service.as_str());
        command.stdout(Stdio::null());
        for (_, k, v) in self.per_service.iter().filter(|(s, _, _)| *s == service) {
            command.env(k, v);
        }
        command
    }

    /// The process of `service`.
    pub fn child(&mut self, service: ServiceName) -> &mut Child {
        &mut self.children.iter_mut().find(|(s, _)| *s == service).expect("child").1
    }
}

/// The proto service name of a mesh service.
pub fn proto_service_name(service: ServiceName) -> &'static str {
    match service {
        ServiceName::KeyService => "KeyService",
        ServiceName::CryptoService => "CryptoService",
        ServiceName::TokenService => "TokenService",
        ServiceName::AuditService => "AuditService",
    }
}

/// A Postgres server for tests: `KEYMESH_TEST_POSTGRES_URL`, else the local server on 127.0.0.1:5432. A fresh
/// database is created per call. Panics with a clear message when no server answers.
pub async fn fresh_postgres_database() -> String {
    use sea_orm::{ConnectionTrait, Database};
    let admin_url = std::env::var("KEYMESH_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned());
    let admin = Database::connect(admin_url.as_str()).await.unwrap_or_else(|e| {
        panic!(
            "Postgres is required for this test and is not reachable at {admin_url} ({e}). Start it \
             (`make services` does) or set KEYMESH_TEST_POSTGRES_URL."
        )
    });
    let name = format!("keymesh_test_{}_{}", std::process::id(), free_port());
    admin.execute_unprepared(&format!("CREATE DATABASE {name}")).await.expect("create database");
    let base = admin_url.rsplit_once('/').map(|(b, _)| b.to_owned()).expect("database url");
    format!("{base}/{name}")
}

/// A redis-server of the test's own on a free port, so the test can stop, pause and restart it. Keeps
/// nothing on disk. Killed on drop.
pub struct RedisServer {
    /// `redis://127.0.0.1:port`.
    pub url: String,
    port: u16,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// Starts one and waits until it answers PING. Panics with a clear message when redis-server is missing.
    pub fn start() -> RedisServer {
        let port = free_port();
        let mut server = RedisServer { url: format!("redis://127.0.0.1:{port}"), port, child: None };
        server.restart();
        server
    }

    /// Starts it again (after `stop`) on the same port.
    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("redis-server is required for this test and cannot start ({e}); `make test-deps` installs it")
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < deadline, "redis-server on port {} did not answer PING", self.port);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes it (SIGSTOP): connections stay open and nothing answers, like a Redis that is overloaded.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = if paused { "-STOP" } else { "-CONT" };
        assert!(std::process::Command::new("kill").args([signal, &pid]).status().unwrap().success());
    }

    /// Runs redis-cli against it, returning its output (raw mode: values as stored).
    pub fn cli(&self, args: &[&str]) -> String {
        let output = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--no-raw"])
            .args(args)
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Every key and its value, as raw bytes.
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        let keys = std::process::Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "--raw", "KEYS", "*"])
            .output()
            .expect("redis-cli");
        String::from_utf8_lossy(&keys.stdout)
            .lines()
            .filter(|k| !k.is_empty())
            .map(|key| {
                let value = std::process::Command::new("redis-cli")
                    .args(["-p", &self.port.to_string(), "--raw", "GET", key])
                    .output()
                    .expect("redis-cli");
                (key.to_owned(), value.stdout)
            })
            .collect()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Adds a second top-level tenant with an admin application straight into token-service's database (the API
/// nests every new tenant below its creator's, so an unrelated one only comes this way), returning its client
/// id and secret.
pub async fn second_tenant(mesh: &Mesh) -> (String, String) {
    use argon2::{
        Argon2, PasswordHasher,
        password_hash::{SaltString, rand_core::OsRng},
    };
    use keymesh_store::{
        entity::{application, tenant},
        tokens::TokenRepository,
    };
    let url = format!("sqlite://{}?mode=rwc", mesh.dir.path().join("token-service.db").display());
    let repo = TokenRepository::new(keymesh_store::connect_and_migrate(&url).await.unwrap());
    let secret = "second-tenant-secret-0123456789abcdef".to_owned();
    let hash =
        Argon2::default().hash_password(secret.as_bytes(), &SaltString::generate(&mut OsRng)).unwrap().to_string();
    let tenant_id = "t_second".to_owned();
    repo.create_tenant_with_application(
        tenant::Model { id: tenant_id.clone(), name: "second".into(), created_at: 0, parent_id: None },
        application::Model {
            client_id: "app_second".into(),
            tenant_id,
            name: "second-admin".into(),
            roles: r#"["admin","owner","auditor"]"#.into(),
            permissions: r#"[{"key":"*","ops":["*"]}]"#.into(),
            secret_hash: hash,
            previous_secret_hash: None,
            previous_secret_expires_at: None,
            disabled: false,
            created_at: 0,
        },
    )
    .await
    .unwrap();
    ("app_second".into(), secret)
}

/// The first column of the first row of `query`, as a number (a count).
pub async fn count(db: &sea_orm::DatabaseConnection, query: &str) -> i64 {
    let row = sea_orm::ConnectionTrait::query_one_raw(
        db,
        sea_orm::Statement::from_string(sea_orm::ConnectionTrait::get_database_backend(db), query.to_owned()),
    )
    .await
    .unwrap()
    .unwrap();
    row.try_get_by_index::<i64>(0).unwrap()
}

/// Calls RewrapKeys and returns every progress message; `stop_after` ends the read early.
pub async fn rewrap(
    client: &KeymeshClient,
    stop_after: impl Fn(&keymesh_proto::v1::RewrapKeysResponse) -> bool,
) -> Vec<keymesh_proto::v1::RewrapKeysResponse> {
    let request = client.authorized(keymesh_proto::v1::RewrapKeysRequest {}).await.unwrap();
    let mut stream = client.key_service().rewrap_keys(request).await.unwrap().into_inner();
    let mut messages = Vec::new();
    while let Some(message) = futures_util::StreamExt::next(&mut stream).await {
        let message = message.unwrap();
        let stop = stop_after(&message);
        messages.push(message);
        if stop {
            break;
        }
    }
    messages
}

/// Decrypts every (ciphertext, plaintext) pair and checks the plaintext; `when` names the moment on failure.
pub async fn decrypt_all(client: &KeymeshClient, ciphertexts: &[(Vec<u8>, Vec<u8>)], when: &str) {
    for (ciphertext, plaintext) in ciphertexts {
        let opened = client.decrypt(ciphertext.clone(), Vec::new()).await.unwrap_or_else(|e| panic!("{when}: {e}"));
        assert_eq!(opened.as_slice(), plaintext.as_slice(), "{when}");
    }
}

/// Runs the independent helper `scripts/byok.py` (Python's `cryptography`, no keymesh code) and returns its
/// hex output.
pub fn byok(args: &[&str]) -> String {
    python_script("byok.py", args)
}

/// Runs `scripts/asym.py` (signatures, public keys and public-key encryption from the outside, on Python's
/// `cryptography`) and returns its trimmed standard output; panics with its standard error if it fails.
pub fn asym(args: &[&str]) -> String {
    python_script("asym.py", args)
}

/// Runs `scripts/pq.py`: ML-DSA and ML-KEM outside keymesh (dilithium-py, kyber-py and `cryptography`).
pub fn pq(args: &[&str]) -> String {
    python_script("pq.py", args)
}

fn python_script(name: &str, args: &[&str]) -> String {
    let script = format!("{}/scripts/{name}", env!("CARGO_MANIFEST_DIR"));
    let output = std::process::Command::new("python3").arg(&script).args(args).output().unwrap_or_else(|e| {
        panic!("python3 is required for this test ({e}); `make test-deps` installs it and `cryptography`")
    });
    assert!(output.status.success(), "{name} {:?} failed: {}", args.first(), String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// A CreateKey request for a generated key of `purpose` and `algorithm`.
pub fn key_request(
    name: &str,
    purpose: keymesh_proto::v1::KeyPurpose,
    algorithm: keymesh_proto::v1::Algorithm,
) -> keymesh_proto::v1::CreateKeyRequest {
    keymesh_proto::v1::CreateKeyRequest {
        name: name.into(),
        purpose: purpose as i32,
        algorithm: algorithm as i32,
        ..Default::default()
    }
}

/// CreateKey as `admin`.
pub async fn create_key(
    admin: &KeymeshClient,
    request: keymesh_proto::v1::CreateKeyRequest,
) -> Result<keymesh_proto::v1::CreateKeyResponse, tonic::Status> {
    Ok(admin.key_service().create_key(admin.authorized(request).await.unwrap()).await?.into_inner())
}

/// Imports `material` into the EXTERNAL key `name` as a customer would: GetWrappingKey (RSA-3072), the material
/// wrapped outside keymesh by `scripts/byok.py` with `wrapping`, then ImportKeyVersion.
pub async fn import_material(
    admin: &KeymeshClient,
    name: &str,
    material: &[u8],
    wrapping: keymesh_proto::v1::WrappingAlgorithm,
) -> Result<keymesh_proto::v1::ImportKeyVersionResponse, tonic::Status> {
    use keymesh_proto::v1 as pb;
    let mut service = admin.key_service();
    let request = pb::GetWrappingKeyRequest {
        key: name.into(),
        wrapping_algorithm: wrapping as i32,
        wrapping_key_spec: pb::WrappingKeySpec::Rsa3072 as i32,
    };
    let wrapping_key = service.get_wrapping_key(admin.authorized(request).await.unwrap()).await?.into_inner();
    let pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pem.path(), &wrapping_key.public_key_pem).unwrap();
    let scheme = match wrapping {
        pb::WrappingAlgorithm::RsaOaepSha256 => "rsa-oaep-sha256",
        _ => "rsa-aes-key-wrap-sha256",
    };
    let wrapped = unhex(&byok(&[
        "wrap",
        "--public-key",
        pem.path().to_str().unwrap(),
        "--algorithm",
        scheme,
        "--material-hex",
        &hex(material),
    ]));
    let request = pb::ImportKeyVersionRequest {
        key: name.into(),
        import_token: wrapping_key.import_token,
        wrapping_algorithm: wrapping as i32,
        wrapped_key_material: wrapped,
    };
    Ok(service.import_key_version(admin.authorized(request).await.unwrap()).await?.into_inner())
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes from hex.
pub fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap()).collect()
}

/// `message` with an `authorization: Bearer` header.
pub fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// token-service's current signing key, unwrapped as token-service does it: a test can then sign whatever
/// claims a token-service with another clock or a bug would sign. Returns the `kid` and the key.
pub async fn genuine_signing_key(mesh: &Mesh) -> (String, jsonwebtoken::EncodingKey) {
    use keymesh_kms::{KeyEncryptionBackend, LocalKms, LocalKmsConfig, WrapContext, WrappedKey};
    use keymesh_store::entity::signing_key;
    use sea_orm::{EntityTrait, QueryOrder};
    let url = format!("sqlite://{}?mode=rwc", mesh.dir.path().join("token-service.db").display());
    let db = keymesh_store::connect_and_migrate(&url).await.unwrap();
    let key = signing_key::Entity::find()
        .order_by_desc(signing_key::Column::CreatedAt)
        .one(&db)
        .await
        .unwrap()
        .expect("token-service has a signing key");
    let kms = LocalKms::open(&LocalKmsConfig::resolve(mesh.dir.path().to_path_buf(), None, None)).unwrap();
    let wrapped = WrappedKey {
        backend: key.kek_backend.clone(),
        kek_id: key.kek_id.clone(),
        ciphertext: key.wrapped_private_key,
    };
    let context =
        WrapContext { tenant_id: "_system".into(), key_id: key.kid.clone(), version: 1, algorithm: "EdDSA".into() };
    let private = kms.unwrap(&wrapped, &context).await.unwrap();
    (key.kid, jsonwebtoken::EncodingKey::from_ed_der(private.expose_secret()))
}

/// Creates an application in the caller's tenant (or `tenant_id`) through TokenService, returning its client
/// id and secret.
pub async fn create_application(
    mesh: &Mesh,
    token: &str,
    tenant_id: &str,
    name: &str,
    roles: &[pb::Role],
    permissions: &[(&str, &[pb::Operation])],
) -> Result<(String, String), tonic::Status> {
    let request = pb::CreateApplicationRequest {
        name: name.into(),
        tenant_id: tenant_id.into(),
        roles: roles.iter().map(|r| *r as i32).collect(),
        permissions: permissions
            .iter()
            .map(|(pattern, ops)| pb::KeyPermission {
                key_pattern: (*pattern).into(),
                operations: ops.iter().map(|o| *o as i32).collect(),
            })
            .collect(),
    };
    let response = pb::token_service_client::TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
        .create_application(with_token(request, token))
        .await?
        .into_inner();
    Ok((response.application.unwrap().client_id, response.client_secret))
}

/// `GET /metrics` on `addr`, over plain HTTP/1.1: the response head and body.
pub async fn scrape_metrics(addr: &str) -> (String, String) {
    let (head, body) = http_get(addr, "/metrics").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (head, body)
}

/// `GET path` on `addr` (an admin port), over plain HTTP/1.1: the response head and body, whatever the status.
pub async fn http_get(addr: &str, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("{addr}: {e}"));
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_owned(), body.to_owned())
}

/// One sample of a Prometheus family.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Sample {
    /// The sample's name (`…_total`, `…_bucket`, …).
    pub name: String,
    /// Its labels.
    pub labels: std::collections::HashMap<String, String>,
    /// Its value.
    pub value: f64,
}

impl Sample {
    /// Whether every one of `labels` is on the sample with that value.
    pub fn has(&self, labels: &[(&str, &str)]) -> bool {
        labels.iter().all(|(k, v)| self.labels.get(*k).map(String::as_str) == Some(*v))
    }
}

/// Runs `command` with `input` on its standard input; panics naming `tool` when it cannot start.
fn with_stdin(command: &mut std::process::Command, input: &str, tool: &str) -> std::process::Output {
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {tool}: {e}"));
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), input.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// The families and samples of a Prometheus text exposition, as the official client's parser reads it.
pub fn parse_prometheus(text: &str) -> std::collections::HashMap<String, Vec<Sample>> {
    let script = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    out[family.name] = [{"name": s.name, "labels": s.labels, "value": s.value} for s in family.samples]
print(json.dumps(out))
"#;
    let output = with_stdin(
        std::process::Command::new("python3").args(["-c", script]),
        text,
        "python3 with prometheus-client (pip install prometheus-client)",
    );
    assert!(
        output.status.success(),
        "the Prometheus parser refused the text: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// `promtool check metrics` on a Prometheus text exposition: its findings (empty when clean).
pub fn promtool_check_metrics(text: &str) -> String {
    let output = with_stdin(
        std::process::Command::new("promtool").args(["check", "metrics"]),
        text,
        "promtool (Debian's prometheus package; `make test-deps` installs it)",
    );
    let findings = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    if output.status.success() { findings.trim().to_owned() } else { format!("exit {}: {findings}", output.status) }
}

/// A request carrying `token` (when some) and a fresh W3C trace id, which its audit record will carry.
pub fn traced<T>(message: T, token: Option<&str>) -> (String, tonic::Request<T>) {
    let trace = uuid::Uuid::new_v4().simple().to_string();
    let span = &uuid::Uuid::new_v4().simple().to_string()[..16];
    let mut request = match token {
        Some(token) => with_token(message, token),
        None => tonic::Request::new(message),
    };
    request.metadata_mut().insert("traceparent", format!("00-{trace}-{span}-01").parse().unwrap());
    (trace, request)
}

/// The tenant's audit events of `operation` made by `service`, oldest first (every page of the query).
pub async fn audit_events(mesh: &Mesh, token: &str, service: &str, operation: &str) -> Vec<pb::AuditEvent> {
    use keymesh_proto::v1::audit_service_client::AuditServiceClient;
    let mut audit = AuditServiceClient::new(mesh.channel(ServiceName::AuditService));
    let mut events = Vec::new();
    let mut after = 0;
    loop {
        let query = pb::QueryRequest {
            operation: operation.into(),
            after_sequence: after,
            limit: 10_000,
            ..Default::default()
        };
        let mut stream = audit.query(with_token(query, token)).await.unwrap().into_inner();
        let mut page = 0;
        while let Some(response) = stream.message().await.unwrap() {
            let record = response.record.unwrap();
            after = record.sequence;
            page += 1;
            let event = record.event.unwrap();
            if event.service == service {
                events.push(event);
            }
        }
        if page < 10_000 {
            return events;
        }
    }
}

/// The tenant's audit records of `operation` made by `service`, counted by trace id.
pub async fn audit_records_by_trace(
    mesh: &Mesh,
    token: &str,
    service: &str,
    operation: &str,
) -> std::collections::BTreeMap<String, usize> {
    let mut counts = std::collections::BTreeMap::new();
    for event in audit_events(mesh, token, service, operation).await {
        *counts.entry(event.trace_id).or_default() += 1;
    }
    counts
}

/// Waits (up to `patience`) until every call of `traces` has an audit record of `operation` by `service`, then
/// asserts each has exactly one: nothing acknowledged lost, nothing stored twice.
pub async fn assert_each_recorded_once(
    mesh: &Mesh,
    token: &str,
    service: &str,
    operation: &str,
    traces: &[String],
    patience: Duration,
) {
    let deadline = Instant::now() + patience;
    loop {
        let records = audit_records_by_trace(mesh, token, service, operation).await;
        let missing = traces.iter().filter(|t| !records.contains_key(*t)).count();
        if missing == 0 {
            let twice = traces.iter().filter(|t| records[*t] != 1).count();
            assert_eq!(twice, 0, "{operation}: {twice} acknowledged calls have more than one record");
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{operation}: {missing} of {} acknowledged calls have no audit record after {patience:?}",
            traces.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A TCP relay to `upstream` that can be cut and restored (a dependency's outage: every connection dropped, new
/// ones refused) or frozen and thawed (a dependency that stopped answering: connections stay open and accepted,
/// and nothing goes through, like a server under SIGSTOP or behind a network that drops packets), without
/// touching a server other tests share.
pub struct TcpRelay {
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cuts: tokio::sync::watch::Sender<u64>,
    frozen: tokio::sync::watch::Sender<bool>,
}

/// Copies `from` to `to`, holding each chunk while the relay is frozen.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut frozen: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(read) => read,
        };
        if frozen.wait_for(|frozen| !*frozen).await.is_err() || to.write_all(&buffer[..read]).await.is_err() {
            return;
        }
    }
}

impl TcpRelay {
    /// Relays 127.0.0.1:<port> to `upstream` (host:port).
    pub async fn start(upstream: String) -> TcpRelay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cuts, _) = tokio::sync::watch::channel(0u64);
        let (frozen, _) = tokio::sync::watch::channel(false);
        let (accepting, cut_signal, freeze_signal) = (up.clone(), cuts.clone(), frozen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { return };
                if !accepting.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the connection is refused
                }
                let upstream = upstream.clone();
                let mut cut = cut_signal.subscribe();
                let freeze = freeze_signal.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::select! {
                        _ = pump(client_read, server_write, freeze.clone()) => {}
                        _ = pump(server_read, client_write, freeze) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        TcpRelay { port, up, cuts, frozen }
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stops (`true`) or resumes (`false`) every byte in both directions, keeping connections open.
    pub fn freeze(&self, frozen: bool) {
        self.frozen.send_replace(frozen);
    }
}

/// The Postgres URL `url` with its host and port replaced by a [`TcpRelay`] to them; the relay and the new URL.
pub async fn relayed_postgres(url: &str) -> (TcpRelay, String) {
    // The last '@': a password may hold one.
    let (before, after) = url.rsplit_once('@').expect("a postgres://user@host:port/db URL");
    let (host_port, database) = after.split_once('/').expect("a database name");
    let relay = TcpRelay::start(host_port.to_owned()).await;
    let relayed = format!("{before}@127.0.0.1:{}/{database}", relay.port);
    (relay, relayed)
}

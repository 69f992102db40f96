//! The KEK backends against real servers: Vault Transit against an OpenBao dev server, AWS KMS against
//! moto_server, Google Cloud KMS and Azure Key Vault against the wire-level doubles of integration-tests;
//! each through the one
//! conformance suite of libs/kms, opened as key-service opens them (inside `Resilient`).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{sync::Arc, time::Duration};

use integration_tests::{
    azure_kv_double::AzureKeyVaultDouble,
    gcp_kms_double::GcpKmsDouble,
    k8s_token_review::TokenReviewApi,
    kms_servers::{Moto, OpenBao},
};
use keymesh_kms::{
    AwsKms, AwsKmsConfig, AzureKms, AzureKmsConfig, GcpKms, GcpKmsConfig, KeyEncryptionBackend, KmsError,
    ResiliencePolicy, Resilient, VaultAuth, VaultKms, VaultKmsConfig,
    conformance::{self, Harness},
};
use zeroize::Zeroizing;

/// Short deadlines so the outage check runs in seconds: attempts of 400 ms, two of them, the breaker open
/// for one second after three failures.
fn policy() -> ResiliencePolicy {
    ResiliencePolicy {
        attempt_timeout: Duration::from_millis(400),
        max_attempts: 2,
        base_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        failure_threshold: 3,
        open_for: Duration::from_secs(1),
    }
}

/// Two attempts, a backoff and scheduling slack.
fn deadline() -> Duration {
    let p = policy();
    p.attempt_timeout * p.max_attempts + p.max_backoff + Duration::from_millis(300)
}

/// The server behind a backend under test, as the conformance suite stops it and disables its key.
enum Server {
    Vault { bao: OpenBao, key: String },
    Aws { moto: Moto, key_id: String },
    Gcp { double: GcpKmsDouble, key: String },
    Azure { double: AzureKeyVaultDouble, key: String, _ca: tempfile::NamedTempFile },
}

impl Server {
    fn freeze(&self, frozen: bool) {
        match self {
            Server::Vault { bao, .. } => bao.pause(frozen),
            Server::Aws { moto, .. } => moto.pause(frozen),
            Server::Gcp { double, .. } => double.freeze(frozen),
            Server::Azure { double, .. } => double.freeze(frozen),
        }
    }

    /// Vault Transit keys cannot be disabled: the key is deleted. The others are disabled.
    async fn disable_key(&self) -> Result<(), String> {
        match self {
            Server::Vault { bao, key } => bao.delete_transit_key(key),
            Server::Aws { moto, key_id } => {
                moto.client().disable_key().key_id(key_id).send().await.map_err(|e| e.to_string())?;
            }
            Server::Gcp { double, key } => double.set_enabled(key, false),
            Server::Azure { double, key, .. } => double.set_enabled(key, false),
        }
        Ok(())
    }
}

struct ServerHarness {
    server: Server,
    backend: Arc<dyn KeyEncryptionBackend>,
}

#[async_trait::async_trait]
impl Harness for ServerHarness {
    fn backend(&self) -> Arc<dyn KeyEncryptionBackend> {
        self.backend.clone()
    }
    fn outage_deadline(&self) -> Duration {
        deadline()
    }
    async fn stop_server(&self) -> Result<bool, String> {
        self.server.freeze(true);
        Ok(true)
    }
    async fn start_server(&self) -> Result<(), String> {
        self.server.freeze(false);
        Ok(())
    }
    async fn disable_key(&self) -> Result<bool, String> {
        self.server.disable_key().await.map(|()| true)
    }
}

/// Runs the conformance suite against `backend` (inside `Resilient`, as key-service opens it): every check
/// must pass.
async fn assert_conforms(name: &str, server: Server, backend: impl KeyEncryptionBackend + 'static) {
    let backend = Arc::new(Resilient::new(backend, name, policy()));
    let report = conformance::run(&ServerHarness { server, backend }).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(report.passed, ["round_trip", "context_mismatch", "outage", "key_disabled"], "{report:?}");
    eprintln!("{name}: {report:?}");
}

fn context() -> keymesh_kms::WrapContext {
    keymesh_kms::WrapContext { tenant_id: "t".into(), key_id: "k".into(), version: 1, algorithm: "AES-256-GCM".into() }
}

fn dek(byte: u8) -> keymesh_crypto::SecretKey {
    keymesh_crypto::SecretKey::from_bytes(vec![byte; 32])
}

async fn vault_backend(bao: &OpenBao, key: &str, auth: VaultAuth) -> Result<VaultKms, KmsError> {
    VaultKms::connect(
        "vault-test",
        VaultKmsConfig {
            address: bao.address.clone(),
            mount: "transit".into(),
            key: key.into(),
            namespace: None,
            ca_cert: None,
            auth,
            request_timeout: policy().attempt_timeout,
        },
    )
    .await
}

#[tokio::test]
async fn vault_transit_conforms() {
    keymesh_mesh::install_crypto_provider();
    let bao = OpenBao::start();
    bao.create_transit_key("keymesh");
    let token = bao.keymesh_token("keymesh");
    let vault = vault_backend(&bao, "keymesh", VaultAuth::Token(Zeroizing::new(token))).await.unwrap();
    assert_conforms("vault-test", Server::Vault { bao, key: "keymesh".into() }, vault).await;
}

#[tokio::test]
async fn vault_approle_login_and_rotation() {
    keymesh_mesh::install_crypto_provider();
    let bao = OpenBao::start();
    bao.create_transit_key("rotating");
    bao.cli(&["auth", "enable", "approle"]);
    let policy = bao.write_keymesh_policy("rotating");
    // Short tokens, so the test sees a renewal by login.
    bao.cli(&[
        "write",
        "auth/approle/role/keymesh",
        &format!("token_policies={policy}"),
        "token_ttl=3s",
        "token_max_ttl=3s",
    ]);
    let role_id = bao.cli(&["read", "-field=role_id", "auth/approle/role/keymesh/role-id"]).trim().to_owned();
    let secret_id =
        bao.cli(&["write", "-f", "-field=secret_id", "auth/approle/role/keymesh/secret-id"]).trim().to_owned();

    let auth = VaultAuth::AppRole { mount: "approle".into(), role_id, secret_id: Zeroizing::new(secret_id) };
    let vault = vault_backend(&bao, "rotating", auth).await.unwrap();
    let context = context();
    let dek = dek(9);
    let v1 = vault.wrap(&dek, &context).await.unwrap();
    assert_eq!(v1.kek_id, "transit/rotating:v1");
    assert!(vault.is_current(&v1));

    // Past the token's TTL, calls still work: the backend logs in again.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(vault.unwrap(&v1, &context).await.unwrap().expose_secret(), dek.expose_secret());

    // Rotating the Transit key makes the old wrap non-current, and both still unwrap.
    bao.cli(&["write", "-f", "transit/keys/rotating/rotate"]);
    let v2 = vault.wrap(&dek, &context).await.unwrap();
    assert_eq!(v2.kek_id, "transit/rotating:v2");
    assert!(!vault.is_current(&v1));
    assert!(vault.is_current(&v2));
    assert_eq!(vault.unwrap(&v1, &context).await.unwrap().expose_secret(), dek.expose_secret());

    // A wrong secret id is refused at login with Vault's reason, not as an outage.
    let bad = VaultAuth::AppRole {
        mount: "approle".into(),
        role_id: "nope".into(),
        secret_id: Zeroizing::new("wrong".into()),
    };
    let refused = vault_backend(&bao, "rotating", bad).await.unwrap();
    match refused.wrap(&dek, &context).await {
        Err(KmsError::KeyUnusable { reason, .. }) => assert!(reason.contains("AppRole login refused"), "{reason}"),
        other => panic!("expected a refused login, got {other:?}"),
    }
}

#[tokio::test]
async fn vault_namespaces_keep_keys_apart() {
    keymesh_mesh::install_crypto_provider();
    let bao = OpenBao::start();
    bao.cli(&["namespace", "create", "team"]);
    bao.cli_in("team", &["secrets", "enable", "transit"]);
    bao.cli_in("team", &["write", "-f", "transit/keys/keymesh"]);
    let connect = |namespace: Option<&str>| {
        let config = VaultKmsConfig {
            address: bao.address.clone(),
            mount: "transit".into(),
            key: "keymesh".into(),
            namespace: namespace.map(str::to_owned),
            ca_cert: None,
            auth: VaultAuth::Token(Zeroizing::new(bao.root_token.clone())),
            request_timeout: policy().attempt_timeout,
        };
        VaultKms::connect("vault-team", config)
    };
    let team = connect(Some("team")).await.unwrap();
    let context = context();
    let dek = dek(5);
    let wrapped = team.wrap(&dek, &context).await.unwrap();
    assert_eq!(team.unwrap(&wrapped, &context).await.unwrap().expose_secret(), dek.expose_secret());
    // The root namespace has no such key: the wrap is refused there, not decrypted.
    let root = connect(None).await.unwrap();
    match root.unwrap(&wrapped, &context).await {
        Err(KmsError::KeyUnusable { reason, .. }) => assert!(reason.contains("does not exist"), "{reason}"),
        other => panic!("expected the root namespace to refuse, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_kubernetes_login_rereads_the_projected_token() {
    keymesh_mesh::install_crypto_provider();
    let bao = OpenBao::start();
    bao.create_transit_key("keymesh");
    let policy = bao.write_keymesh_policy("keymesh");
    let api = TokenReviewApi::start().await;
    bao.cli(&["auth", "enable", "kubernetes"]);
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &api.ca_pem).unwrap();
    bao.cli(&[
        "write",
        "auth/kubernetes/config",
        &format!("kubernetes_host={}", api.url),
        &format!("kubernetes_ca_cert=@{}", ca.path().display()),
        "disable_local_ca_jwt=true",
    ]);
    bao.cli(&[
        "write",
        "auth/kubernetes/role/keymesh",
        "bound_service_account_names=key-service",
        "bound_service_account_namespaces=keymesh",
        &format!("token_policies={policy}"),
        "token_ttl=3s",
        "token_max_ttl=3s",
    ]);
    let jwt_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(jwt_file.path(), api.issue("keymesh", "key-service")).unwrap();
    let auth = VaultAuth::Kubernetes {
        mount: "kubernetes".into(),
        role: "keymesh".into(),
        jwt_file: jwt_file.path().to_path_buf(),
    };
    let vault = vault_backend(&bao, "keymesh", auth).await.unwrap();
    let context = context();
    let dek = dek(6);
    let wrapped = vault.wrap(&dek, &context).await.unwrap();

    // The kubelet rotates the projected token; past the Vault token's TTL the backend logs in again with
    // the new one.
    std::fs::write(jwt_file.path(), api.issue("keymesh", "key-service")).unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(vault.unwrap(&wrapped, &context).await.unwrap().expose_secret(), dek.expose_secret());

    // A service account the role is not bound to is refused at login, in Vault's words.
    let other = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(other.path(), api.issue("default", "intruder")).unwrap();
    let auth = VaultAuth::Kubernetes {
        mount: "kubernetes".into(),
        role: "keymesh".into(),
        jwt_file: other.path().to_path_buf(),
    };
    let refused = vault_backend(&bao, "keymesh", auth).await.unwrap();
    match refused.wrap(&dek, &context).await {
        Err(KmsError::KeyUnusable { reason, .. }) => assert!(reason.contains("Kubernetes login refused"), "{reason}"),
        other => panic!("expected a refused login, got {other:?}"),
    }
}

async fn aws_backend(moto: &Moto, key_id: &str) -> AwsKms {
    AwsKms::connect(
        "aws-test",
        AwsKmsConfig {
            key_id: key_id.into(),
            region: Some("us-east-1".into()),
            endpoint: Some(moto.endpoint.clone()),
            request_timeout: policy().attempt_timeout,
            credentials: Some(Moto::credentials()),
        },
    )
    .await
    .unwrap()
}

#[tokio::test]
async fn aws_kms_conforms() {
    keymesh_mesh::install_crypto_provider();
    let moto = Moto::start();
    let key_id = moto.create_key().await;
    let aws = aws_backend(&moto, &key_id).await;
    assert_conforms("aws-test", Server::Aws { moto, key_id }, aws).await;
}

#[tokio::test]
async fn aws_kms_alias_resolves_to_the_key_arn() {
    keymesh_mesh::install_crypto_provider();
    let moto = Moto::start();
    let key_id = moto.create_key().await;
    moto.client().create_alias().alias_name("alias/keymesh").target_key_id(&key_id).send().await.unwrap();
    let aws = aws_backend(&moto, "alias/keymesh").await;
    assert!(aws.describe().kek_id.ends_with(&format!(":key/{key_id}")), "{:?}", aws.describe());
    let context = context();
    let dek = dek(3);
    let wrapped = aws.wrap(&dek, &context).await.unwrap();
    assert!(wrapped.kek_id.starts_with("arn:aws:kms:us-east-1:"), "{}", wrapped.kek_id);
    assert!(aws.is_current(&wrapped));
    assert_eq!(aws.unwrap(&wrapped, &context).await.unwrap().expose_secret(), dek.expose_secret());
    // A key id that does not exist is reported as such.
    let missing = aws_backend(&moto, "alias/missing").await;
    match missing.wrap(&dek, &context).await {
        Err(KmsError::KeyUnusable { reason, .. }) => assert!(reason.contains("does not exist"), "{reason}"),
        other => panic!("expected KeyUnusable, got {other:?}"),
    }
}

async fn gcp_backend(double: &GcpKmsDouble, crypto_key: &str) -> GcpKms {
    GcpKms::connect(
        "gcp-test",
        GcpKmsConfig {
            crypto_key: crypto_key.into(),
            endpoint: Some(double.endpoint.clone()),
            request_timeout: policy().attempt_timeout,
            anonymous: true,
        },
    )
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_cloud_kms_conforms() {
    keymesh_mesh::install_crypto_provider();
    let double = GcpKmsDouble::start().await;
    let key = double.create_key("keymesh-test", "kek");
    let gcp = gcp_backend(&double, &key).await;
    assert_conforms("gcp-test", Server::Gcp { double, key }, gcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_rotation_makes_old_wraps_non_current() {
    keymesh_mesh::install_crypto_provider();
    let double = GcpKmsDouble::start().await;
    let key = double.create_key("keymesh-test", "rotating");
    let gcp = gcp_backend(&double, &key).await;
    let context = context();
    let dek = dek(4);
    let v1 = gcp.wrap(&dek, &context).await.unwrap();
    assert_eq!(v1.kek_id, format!("{key}/cryptoKeyVersions/1"));
    double.rotate(&key);
    let v2 = gcp.wrap(&dek, &context).await.unwrap();
    assert_eq!(v2.kek_id, format!("{key}/cryptoKeyVersions/2"));
    assert!(!gcp.is_current(&v1) && gcp.is_current(&v2));
    assert_eq!(gcp.unwrap(&v1, &context).await.unwrap().expose_secret(), dek.expose_secret());
    // A key name that is not a CryptoKey resource name is refused before anything is sent.
    let wrong = GcpKms::connect(
        "gcp-test",
        GcpKmsConfig {
            crypto_key: "projects/p/keyRings/r".into(),
            endpoint: Some(double.endpoint.clone()),
            request_timeout: policy().attempt_timeout,
            anonymous: true,
        },
    )
    .await;
    assert!(matches!(wrong, Err(KmsError::Config { .. })), "{:?}", wrong.err());
}

/// A fixed bearer token, as a credential.
#[derive(Debug)]
struct StaticToken(String);

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for StaticToken {
    async fn get_token(
        &self,
        _scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        let expires = azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1);
        Ok(azure_core::credentials::AccessToken::new(self.0.clone(), expires))
    }
}

async fn azure_backend(double: &AzureKeyVaultDouble, token: &str) -> (AzureKms, tempfile::NamedTempFile) {
    let ca = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(ca.path(), &double.ca_pem).unwrap();
    let backend = AzureKms::connect(
        "azure-test",
        AzureKmsConfig {
            vault_url: double.vault_url.clone(),
            key_name: "kek".into(),
            key_version: None,
            credential: Arc::new(StaticToken(token.to_owned())),
            ca_cert: Some(ca.path().to_path_buf()),
            connect_to: Some(double.address),
            request_timeout: policy().attempt_timeout,
        },
    )
    .await
    .unwrap();
    (backend, ca)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_key_vault_conforms() {
    keymesh_mesh::install_crypto_provider();
    let double = AzureKeyVaultDouble::start().await;
    double.create_key("kek");
    let (azure, ca) = azure_backend(&double, &double.token.clone()).await;
    assert_conforms("azure-test", Server::Azure { double, key: "kek".into(), _ca: ca }, azure).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn azure_versions_and_refusals() {
    keymesh_mesh::install_crypto_provider();
    let double = AzureKeyVaultDouble::start().await;
    double.create_key("kek");
    let (azure, _ca) = azure_backend(&double, &double.token.clone()).await;
    let context = context();
    let dek = dek(8);
    let v1 = azure.wrap(&dek, &context).await.unwrap();
    assert!(v1.kek_id.starts_with(&format!("{}keys/kek/", double.vault_url)), "{}", v1.kek_id);
    double.rotate("kek");
    let v2 = azure.wrap(&dek, &context).await.unwrap();
    assert_ne!(v1.kek_id, v2.kek_id);
    assert!(!azure.is_current(&v1) && azure.is_current(&v2));
    assert_eq!(azure.unwrap(&v1, &context).await.unwrap().expose_secret(), dek.expose_secret());

    // A token the vault does not accept is a refusal that names the problem, not an outage.
    let (wrong, _ca2) = azure_backend(&double, "not-the-token").await;
    match wrong.wrap(&dek, &context).await {
        Err(KmsError::KeyUnusable { reason, .. }) => assert!(reason.contains("token"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

//! `[kms]` of the mesh configuration: which backends make up the keyring, in which roles, and how each is
//! reached. With nothing configured the keyring is one local backend named `local` in the data directory.
//!
//! ```toml
//! [kms]
//! primary = "local-2027"          # wraps every new DEK
//! secondary = []                  # also wrap every new DEK (unwrap fallback)
//! retired = ["local"]             # unwrap only, until a re-wrap has moved everything off them
//!
//! [kms.backends.local-2027]
//! type = "local"
//! data_dir = "kek-2027"           # relative to the service's data directory
//! master_key_env = "KEYMESH_MASTER_KEY_2027"
//! ```
//!
//! Remote backends (`vault`, `aws`) are wrapped in [`Resilient`]: per-attempt deadlines, bounded retries and
//! a circuit breaker, tunable per backend under `[kms.backends.<name>.resilience]`.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::Deserialize;

use zeroize::Zeroizing;

use crate::{
    AwsKms, AwsKmsConfig, AzureKms, AzureKmsConfig, GcpKms, GcpKmsConfig, KeyEncryptionBackend, KmsError, LocalKms,
    LocalKmsConfig, ResiliencePolicy, Resilient, VaultAuth, VaultKms, VaultKmsConfig,
    keyring::{Keyring, Keyrings, Member, Role},
};

/// Name of the backend used when none is configured.
pub const DEFAULT_BACKEND: &str = "local";
/// Environment variable holding the local backend's master secret unless a member names another.
pub const MASTER_KEY_ENV: &str = "KEYMESH_MASTER_KEY";

/// `[kms]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KmsConfig {
    /// Name of the primary member; default `local`.
    pub primary: Option<String>,
    /// Older spelling of `primary`.
    pub backend: Option<String>,
    /// Members that also wrap every new DEK, in unwrap order after the primary.
    #[serde(default)]
    pub secondary: Vec<String>,
    /// Members that only unwrap.
    #[serde(default)]
    pub retired: Vec<String>,
    /// Master key file of the implicit `local` backend (when `[kms.backends.local]` is not written out).
    pub master_key_file: Option<PathBuf>,
    /// The backends by name.
    #[serde(default)]
    pub backends: BTreeMap<String, BackendConfig>,
    /// Tenants whose keys are wrapped by a keyring of their own instead of the default one ("hold your own
    /// key"): disabling the tenant's KMS key at the provider makes its data unreadable.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantKeyringConfig>,
    /// Set from `[policy] fips_mode = "enabled"`, not written here: local backends then derive their KEK
    /// with PBKDF2-HMAC-SHA256 instead of Argon2id, which FIPS does not approve.
    #[serde(skip)]
    pub fips_kdf: bool,
}

/// `[kms.tenants.<tenant id>]`: the keyring of one tenant.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantKeyringConfig {
    /// The tenant's primary backend.
    pub primary: String,
    /// Backends that also wrap the tenant's new DEKs.
    #[serde(default)]
    pub secondary: Vec<String>,
    /// Backends that only unwrap, e.g. the default keyring's while the tenant's keys move to its own.
    #[serde(default)]
    pub retired: Vec<String>,
}

/// How to reach one backend.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum BackendConfig {
    /// The embedded backend: a KEK derived from a master secret.
    Local {
        /// Directory of its KDF state (and generated master key); relative paths are taken from the
        /// service's data directory, which is also the default.
        data_dir: Option<PathBuf>,
        /// File holding the master secret.
        master_key_file: Option<PathBuf>,
        /// Environment variable holding the master secret; default `KEYMESH_MASTER_KEY`.
        master_key_env: Option<String>,
    },
    /// HashiCorp Vault or OpenBao Transit.
    Vault {
        /// Vault's address, e.g. `https://vault.internal:8200`.
        address: String,
        /// Mount of the Transit engine; default `transit`.
        #[serde(default = "default_transit_mount")]
        mount: String,
        /// Name of the Transit key (aes256-gcm96).
        key: String,
        /// Namespace (Vault Enterprise, OpenBao).
        namespace: Option<String>,
        /// PEM bundle of the CA of Vault's certificate; the system roots otherwise.
        ca_cert: Option<PathBuf>,
        /// How to log in; a token from `VAULT_TOKEN` when unset.
        #[serde(default)]
        auth: VaultAuthConfig,
        /// Deadlines, retries and circuit breaker.
        #[serde(default)]
        resilience: ResilienceConfig,
    },
    /// AWS KMS.
    Aws {
        /// Key id, key ARN, `alias/<name>` or alias ARN of a symmetric ENCRYPT_DECRYPT key.
        key_id: String,
        /// Region; from the SDK's chain (AWS_REGION, profile) when unset.
        region: Option<String>,
        /// Endpoint override (VPC or FIPS endpoint, a test server).
        endpoint: Option<String>,
        /// Deadlines, retries and circuit breaker.
        #[serde(default)]
        resilience: ResilienceConfig,
    },
    /// Azure Key Vault or Managed HSM (RSA key, RSA-OAEP-256).
    Azure {
        /// `https://<vault>.vault.azure.net/`.
        vault_url: String,
        /// Name of the RSA key.
        key_name: String,
        /// Pin wrapping to this key version; the current version otherwise.
        key_version: Option<String>,
        /// Who keymesh is; Workload Identity when unset.
        #[serde(default)]
        credential: AzureCredentialConfig,
        /// Extra CA (PEM) for the vault's certificate.
        ca_cert: Option<PathBuf>,
        /// Deadlines, retries and circuit breaker.
        #[serde(default)]
        resilience: ResilienceConfig,
    },
    /// Google Cloud KMS.
    Gcp {
        /// `projects/<p>/locations/<l>/keyRings/<r>/cryptoKeys/<k>` of a symmetric ENCRYPT_DECRYPT key.
        crypto_key: String,
        /// Endpoint override (regional or Private Service Connect endpoint).
        endpoint: Option<String>,
        /// Deadlines, retries and circuit breaker.
        #[serde(default)]
        resilience: ResilienceConfig,
    },
}

fn default_transit_mount() -> String {
    "transit".into()
}

/// `auth` of a Vault backend. Secrets are named by environment variable or file, never written inline.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum VaultAuthConfig {
    /// A token from `token_file` (e.g. a Vault Agent sink) or the variable `token_env` (default `VAULT_TOKEN`).
    Token {
        /// Variable holding the token.
        token_env: Option<String>,
        /// File holding the token.
        token_file: Option<PathBuf>,
    },
    /// AppRole login.
    Approle {
        /// Mount of the auth method; default `approle`.
        mount: Option<String>,
        /// The role id.
        role_id: String,
        /// Variable holding the secret id; default `VAULT_SECRET_ID`.
        secret_id_env: Option<String>,
        /// File holding the secret id.
        secret_id_file: Option<PathBuf>,
    },
    /// Kubernetes login with the pod's service-account token.
    Kubernetes {
        /// Mount of the auth method; default `kubernetes`.
        mount: Option<String>,
        /// The Vault role.
        role: String,
        /// Service-account token; default the pod's projected token.
        jwt_file: Option<PathBuf>,
    },
}

impl Default for VaultAuthConfig {
    fn default() -> Self {
        Self::Token { token_env: None, token_file: None }
    }
}

/// `credential` of an Azure backend, from `azure_identity`. Secrets are named by environment variable.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(tag = "method", rename_all = "snake_case", deny_unknown_fields)]
pub enum AzureCredentialConfig {
    /// AKS Workload Identity: AZURE_TENANT_ID, AZURE_CLIENT_ID and AZURE_FEDERATED_TOKEN_FILE, as the
    /// webhook injects them.
    #[default]
    WorkloadIdentity,
    /// The managed identity of the VM or node; a user-assigned one by client id.
    ManagedIdentity {
        /// Client id of a user-assigned identity.
        client_id: Option<String>,
    },
    /// A service principal with a client secret.
    ClientSecret {
        /// Directory (tenant) id.
        tenant_id: String,
        /// Application (client) id.
        client_id: String,
        /// Variable holding the secret; default `AZURE_CLIENT_SECRET`.
        client_secret_env: Option<String>,
    },
}

/// `resilience` of a remote backend; unset fields keep [`ResiliencePolicy::default`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResilienceConfig {
    /// Deadline of one attempt, in milliseconds.
    pub attempt_timeout_ms: Option<u64>,
    /// Attempts per call, the first included.
    pub max_attempts: Option<u32>,
    /// Consecutive transient failures that open the circuit.
    pub failure_threshold: Option<u32>,
    /// How long the circuit stays open, in milliseconds.
    pub open_for_ms: Option<u64>,
}

impl ResilienceConfig {
    /// The policy these settings describe.
    pub fn policy(&self) -> ResiliencePolicy {
        let default = ResiliencePolicy::default();
        ResiliencePolicy {
            attempt_timeout: self.attempt_timeout_ms.map_or(default.attempt_timeout, Duration::from_millis),
            max_attempts: self.max_attempts.unwrap_or(default.max_attempts).max(1),
            failure_threshold: self.failure_threshold.unwrap_or(default.failure_threshold).max(1),
            open_for: self.open_for_ms.map_or(default.open_for, Duration::from_millis),
            ..default
        }
    }
}

/// A validated member: name, role and settings.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// Its name, stored with each wrap.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// Its settings.
    pub backend: BackendConfig,
}

/// A configuration error: the field and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigProblem {
    /// The offending field, as written in the file.
    pub field: String,
    /// What is wrong and how to fix it.
    pub reason: String,
}

impl KmsConfig {
    /// Checks the configuration and lists the default keyring's members, primary first.
    pub fn members(&self) -> Result<Vec<MemberConfig>, ConfigProblem> {
        Ok(self.keyrings()?.0)
    }

    /// Checks the configuration: the default keyring's members and each tenant keyring's, primary first.
    #[allow(clippy::type_complexity)]
    pub fn keyrings(&self) -> Result<(Vec<MemberConfig>, BTreeMap<String, Vec<MemberConfig>>), ConfigProblem> {
        let problem = |field: &str, reason: String| ConfigProblem { field: format!("kms.{field}"), reason };
        let primary = match (&self.primary, &self.backend) {
            (Some(_), Some(_)) => {
                return Err(problem("backend", "set `kms.primary` only (`kms.backend` is its older spelling)".into()));
            }
            (Some(name), None) | (None, Some(name)) => name.clone(),
            (None, None) => DEFAULT_BACKEND.to_owned(),
        };
        if self.master_key_file.is_some() && self.backends.contains_key(DEFAULT_BACKEND) {
            return Err(problem(
                "master_key_file",
                "is for the implicit local backend; set it in [kms.backends.local] instead".into(),
            ));
        }
        let default = self.keyring_members("", &primary, &self.secondary, &self.retired)?;
        let mut tenants = BTreeMap::new();
        for (tenant, ring) in &self.tenants {
            let prefix = format!("tenants.{tenant}.");
            tenants
                .insert(tenant.clone(), self.keyring_members(&prefix, &ring.primary, &ring.secondary, &ring.retired)?);
        }
        // Compared as the service would resolve them (relative to its data directory; `None` is the directory
        // itself), so `"."`, `"./x"` and `"x"` are recognised as the same place.
        // In keyring order, so the member reported is the later one of a clash.
        let mut used: Vec<(&str, &BackendConfig)> = Vec::new();
        for member in default.iter().chain(tenants.values().flatten()) {
            if !used.iter().any(|(name, _)| *name == member.name) {
                used.push((&member.name, &member.backend));
            }
        }
        let mut local_dirs: Vec<(&str, PathBuf)> = Vec::new();
        for (name, backend) in &used {
            let BackendConfig::Local { data_dir, .. } = backend else { continue };
            let resolved = normalized(data_dir.as_deref().unwrap_or(Path::new(".")));
            if let Some((other, _)) = local_dirs.iter().find(|(_, dir)| *dir == resolved) {
                return Err(problem(
                    &format!("backends.{name}.data_dir"),
                    format!("local backends {other:?} and {name:?} would share a directory; give each its own"),
                ));
            }
            local_dirs.push((name, resolved));
        }
        if let Some(unused) = self.backends.keys().find(|n| !used.iter().any(|(name, _)| name == n)) {
            return Err(problem(
                &format!("backends.{unused}"),
                "is defined but not in a keyring: name it in primary, secondary or retired (of [kms] or of a \
                 [kms.tenants.<id>]), or remove it"
                    .into(),
            ));
        }
        Ok((default, tenants))
    }

    /// The members of one keyring; `prefix` locates it in the file (`""` or `"tenants.<id>."`).
    fn keyring_members(
        &self,
        prefix: &str,
        primary: &String,
        secondary: &[String],
        retired: &[String],
    ) -> Result<Vec<MemberConfig>, ConfigProblem> {
        let problem = |field: &str, reason: String| ConfigProblem { field: format!("kms.{prefix}{field}"), reason };
        let roles = std::iter::once(("primary", Role::Primary, primary))
            .chain(secondary.iter().map(|n| ("secondary", Role::Secondary, n)))
            .chain(retired.iter().map(|n| ("retired", Role::Retired, n)));
        let mut members: Vec<MemberConfig> = Vec::new();
        for (field, role, name) in roles {
            if members.iter().any(|m| &m.name == name) {
                return Err(problem(field, format!("backend {name:?} appears more than once in the keyring")));
            }
            let backend = match self.backends.get(name) {
                Some(backend) => backend.clone(),
                None if name == DEFAULT_BACKEND => BackendConfig::Local {
                    data_dir: None,
                    master_key_file: self.master_key_file.clone(),
                    master_key_env: None,
                },
                None => {
                    let defined: Vec<&String> = self.backends.keys().collect();
                    return Err(problem(
                        field,
                        format!("backend {name:?} is not defined: add [kms.backends.{name}] (defined: {defined:?})"),
                    ));
                }
            };
            members.push(MemberConfig { name: name.clone(), role, backend });
        }
        Ok(members)
    }

    /// Opens the default keyring's backends and builds it (for services that only use the default
    /// keyring). `data_dir` is the service's data directory.
    pub async fn open(&self, data_dir: &Path) -> Result<Keyring, KmsError> {
        let members = self.members().map_err(config_error)?;
        let mut opened = BTreeMap::new();
        build_keyring(members, &mut opened, data_dir, self.fips_kdf).await
    }

    /// Opens every backend once and builds the default keyring and each tenant's.
    pub async fn open_all(&self, data_dir: &Path) -> Result<Keyrings, KmsError> {
        let (default, tenants) = self.keyrings().map_err(config_error)?;
        let mut opened = BTreeMap::new();
        let default = build_keyring(default, &mut opened, data_dir, self.fips_kdf).await?;
        let mut rings = BTreeMap::new();
        for (tenant, members) in tenants {
            rings.insert(tenant, build_keyring(members, &mut opened, data_dir, self.fips_kdf).await?);
        }
        Ok(Keyrings::new(default, rings))
    }
}

fn config_error(problem: ConfigProblem) -> KmsError {
    KmsError::Config { reason: format!("{}: {}", problem.field, problem.reason) }
}

/// Builds a keyring, opening the backends not opened yet (one instance per name, shared between keyrings).
async fn build_keyring(
    members: Vec<MemberConfig>,
    opened: &mut BTreeMap<String, Arc<dyn KeyEncryptionBackend>>,
    data_dir: &Path,
    fips_kdf: bool,
) -> Result<Keyring, KmsError> {
    let mut ring = Vec::with_capacity(members.len());
    for member in members {
        let backend = match opened.get(&member.name) {
            Some(backend) => backend.clone(),
            None => {
                let backend = open_backend(&member.name, &member.backend, data_dir, fips_kdf).await?;
                opened.insert(member.name.clone(), backend.clone());
                backend
            }
        };
        ring.push(Member { name: member.name, role: member.role, backend });
    }
    Keyring::new(ring)
}

/// Opens one backend; remote ones come wrapped in [`Resilient`]. `fips_kdf`: see [`KmsConfig::fips_kdf`].
pub async fn open_backend(
    name: &str,
    config: &BackendConfig,
    data_dir: &Path,
    fips_kdf: bool,
) -> Result<Arc<dyn KeyEncryptionBackend>, KmsError> {
    let invalid = |reason: String| KmsError::Config { reason: format!("kms.backends.{name}.{reason}") };
    Ok(match config {
        BackendConfig::Local { data_dir: dir, master_key_file, master_key_env } => {
            let dir = dir.as_ref().map_or_else(|| data_dir.to_path_buf(), |d| data_dir.join(d));
            let env = std::env::var(master_key_env.as_deref().unwrap_or(MASTER_KEY_ENV)).ok();
            // A variable named on purpose but missing must not quietly become a new master key.
            if let Some(var) = master_key_env
                && env.as_deref().is_none_or(str::is_empty)
                && master_key_file.is_none()
            {
                return Err(invalid(format!("master_key_env names {var}, which is not set")));
            }
            let local = LocalKmsConfig { fips_kdf, ..LocalKmsConfig::resolve(dir, env, master_key_file.clone()) };
            Arc::new(LocalKms::open_off_runtime(local).await?)
        }
        BackendConfig::Vault { address, mount, key, namespace, ca_cert, auth, resilience } => {
            let policy = resilience.policy();
            let auth = match auth {
                VaultAuthConfig::Token { token_env, token_file } => VaultAuth::Token(read_secret(
                    token_file.as_deref(),
                    token_env.as_deref().unwrap_or("VAULT_TOKEN"),
                    || invalid("auth: no Vault token: set VAULT_TOKEN, or token_env / token_file".into()),
                )?),
                VaultAuthConfig::Approle { mount, role_id, secret_id_env, secret_id_file } => {
                    VaultAuth::AppRole {
                        mount: mount.clone().unwrap_or_else(|| "approle".into()),
                        role_id: role_id.clone(),
                        secret_id: read_secret(
                            secret_id_file.as_deref(),
                            secret_id_env.as_deref().unwrap_or("VAULT_SECRET_ID"),
                            || {
                                invalid("auth: no AppRole secret id: set VAULT_SECRET_ID, or secret_id_env / secret_id_file".into())
                            },
                        )?,
                    }
                }
                VaultAuthConfig::Kubernetes { mount, role, jwt_file } => VaultAuth::Kubernetes {
                    mount: mount.clone().unwrap_or_else(|| "kubernetes".into()),
                    role: role.clone(),
                    jwt_file: jwt_file
                        .clone()
                        .unwrap_or_else(|| "/var/run/secrets/kubernetes.io/serviceaccount/token".into()),
                },
            };
            let config = VaultKmsConfig {
                address: address.clone(),
                mount: mount.clone(),
                key: key.clone(),
                namespace: namespace.clone(),
                ca_cert: ca_cert.clone(),
                auth,
                request_timeout: policy.attempt_timeout,
            };
            Arc::new(Resilient::new(VaultKms::connect(name, config).await?, name, policy))
        }
        BackendConfig::Aws { key_id, region, endpoint, resilience } => {
            let policy = resilience.policy();
            let config = AwsKmsConfig {
                key_id: key_id.clone(),
                region: region.clone(),
                endpoint: endpoint.clone(),
                request_timeout: policy.attempt_timeout,
                credentials: None,
            };
            Arc::new(Resilient::new(AwsKms::connect(name, config).await?, name, policy))
        }
        BackendConfig::Azure { vault_url, key_name, key_version, credential, ca_cert, resilience } => {
            let policy = resilience.policy();
            let failed = |e: azure_core::Error| invalid(format!("credential: {e}"));
            let credential: Arc<dyn azure_core::credentials::TokenCredential> = match credential {
                AzureCredentialConfig::WorkloadIdentity => {
                    azure_identity::WorkloadIdentityCredential::new(None).map_err(failed)?
                }
                AzureCredentialConfig::ManagedIdentity { client_id } => {
                    let options = azure_identity::ManagedIdentityCredentialOptions {
                        user_assigned_id: client_id.clone().map(azure_identity::UserAssignedId::ClientId),
                        ..Default::default()
                    };
                    azure_identity::ManagedIdentityCredential::new(Some(options)).map_err(failed)?
                }
                AzureCredentialConfig::ClientSecret { tenant_id, client_id, client_secret_env } => {
                    let env = client_secret_env.as_deref().unwrap_or("AZURE_CLIENT_SECRET");
                    let secret = read_secret(None, env, || invalid(format!("credential: {env} is not set")))?;
                    azure_identity::ClientSecretCredential::new(
                        tenant_id,
                        client_id.clone(),
                        azure_core::credentials::Secret::new(secret.to_string()),
                        None,
                    )
                    .map_err(failed)?
                }
            };
            let config = AzureKmsConfig {
                vault_url: vault_url.clone(),
                key_name: key_name.clone(),
                key_version: key_version.clone(),
                credential,
                ca_cert: ca_cert.clone(),
                connect_to: None,
                request_timeout: policy.attempt_timeout,
            };
            Arc::new(Resilient::new(AzureKms::connect(name, config).await?, name, policy))
        }
        BackendConfig::Gcp { crypto_key, endpoint, resilience } => {
            let policy = resilience.policy();
            let config = GcpKmsConfig {
                crypto_key: crypto_key.clone(),
                endpoint: endpoint.clone(),
                request_timeout: policy.attempt_timeout,
                anonymous: false,
            };
            Arc::new(Resilient::new(GcpKms::connect(name, config).await?, name, policy))
        }
    })
}

/// A secret from a file (trimmed) if one is named, else from an environment variable.
fn read_secret(
    file: Option<&Path>,
    env: &str,
    missing: impl FnOnce() -> KmsError,
) -> Result<Zeroizing<String>, KmsError> {
    if let Some(path) = file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|source| KmsError::Io { path: path.display().to_string(), source })?,
        );
        return Ok(Zeroizing::new(text.trim().to_owned()));
    }
    match std::env::var(env) {
        Ok(value) if !value.is_empty() => Ok(Zeroizing::new(value)),
        _ => Err(missing()),
    }
}

/// A relative path without `.` components.
fn normalized(path: &Path) -> PathBuf {
    path.components().filter(|c| !matches!(c, std::path::Component::CurDir)).collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn parse(text: &str) -> KmsConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn nothing_configured_is_one_local_backend() {
        let members = KmsConfig::default().members().unwrap();
        assert_eq!(members.len(), 1);
        assert_eq!(members[0].name, "local");
        assert_eq!(members[0].role, Role::Primary);
        // The older spelling still works.
        let old = parse("backend = \"local\"\nmaster_key_file = \"/k\"");
        let BackendConfig::Local { master_key_file, .. } = &old.members().unwrap()[0].backend else { panic!() };
        assert_eq!(master_key_file.as_deref(), Some(Path::new("/k")));
    }

    #[test]
    fn a_keyring_with_roles() {
        let config = parse(
            r#"
            primary = "new"
            retired = ["local"]
            [backends.new]
            type = "local"
            data_dir = "kek-new"
            master_key_env = "NEW_MASTER"
            "#,
        );
        let members = config.members().unwrap();
        assert_eq!(
            members.iter().map(|m| (m.name.as_str(), m.role)).collect::<Vec<_>>(),
            [("new", Role::Primary), ("local", Role::Retired)]
        );
    }

    #[test]
    fn remote_backends_parse() {
        let config = parse(
            r#"
            primary = "vault-eu"
            secondary = ["aws-us"]
            retired = ["local"]
            [backends.vault-eu]
            type = "vault"
            address = "https://vault:8200"
            key = "keymesh"
            auth = { method = "approle", role_id = "r1", secret_id_file = "/run/secret-id" }
            resilience = { attempt_timeout_ms = 800, max_attempts = 2 }
            [backends.aws-us]
            type = "aws"
            key_id = "alias/keymesh"
            region = "us-east-1"
            "#,
        );
        let members = config.members().unwrap();
        let BackendConfig::Vault { mount, auth, resilience, .. } = &members[0].backend else { panic!() };
        assert_eq!(mount, "transit");
        assert!(matches!(auth, VaultAuthConfig::Approle { role_id, .. } if role_id == "r1"));
        let policy = resilience.policy();
        assert_eq!((policy.attempt_timeout, policy.max_attempts), (Duration::from_millis(800), 2));
        assert!(matches!(&members[1].backend, BackendConfig::Aws { key_id, .. } if key_id == "alias/keymesh"));
        // Secrets are never written inline.
        assert!(
            toml::from_str::<KmsConfig>("[backends.v]\ntype = \"vault\"\naddress = \"a\"\nkey = \"k\"\ntoken = \"s\"")
                .is_err()
        );
    }

    #[test]
    fn tenants_have_keyrings_of_their_own() {
        let config = parse(
            r#"
            [tenants.acme]
            primary = "acme-aws"
            retired = ["local"]
            [backends.acme-aws]
            type = "aws"
            key_id = "arn:aws:kms:eu-west-1:111122223333:key/abc"
            "#,
        );
        let (default, tenants) = config.keyrings().unwrap();
        assert_eq!(default.iter().map(|m| m.name.as_str()).collect::<Vec<_>>(), ["local"]);
        let acme = &tenants["acme"];
        assert_eq!(
            acme.iter().map(|m| (m.name.as_str(), m.role)).collect::<Vec<_>>(),
            [("acme-aws", Role::Primary), ("local", Role::Retired)]
        );
        let undefined = parse("[tenants.acme]\nprimary = \"nope\"").keyrings().unwrap_err();
        assert_eq!(undefined.field, "kms.tenants.acme.primary");
    }

    #[test]
    fn mistakes_name_their_field() {
        let cases = [
            ("primary = \"nope\"", "kms.primary"),
            ("primary = \"local\"\nbackend = \"local\"", "kms.backend"),
            ("secondary = [\"local\"]", "kms.secondary"),
            ("[backends.spare]\ntype = \"local\"\ndata_dir = \"x\"", "kms.backends.spare"),
            ("secondary = [\"b\"]\n[backends.b]\ntype = \"local\"", "kms.backends.b.data_dir"),
            ("secondary = [\"b\"]\n[backends.b]\ntype = \"local\"\ndata_dir = \"./\"", "kms.backends.b.data_dir"),
        ];
        for (text, field) in cases {
            let problem = parse(text).members().unwrap_err();
            assert_eq!(problem.field, field, "{text}: {problem:?}");
        }
        assert!(toml::from_str::<KmsConfig>("[backends.x]\ntype = \"local\"\nbogus = 1").is_err());
        assert!(toml::from_str::<KmsConfig>("[backends.x]\ntype = \"carrier-pigeon\"").is_err());
    }
}

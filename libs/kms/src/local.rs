//! The embedded local backend, modelled on the Argon2id-KEK / random-DEK envelope scheme of
//! `shared/seeds/003`: a master secret resolved from `KEYMESH_MASTER_KEY`, else a file, else generated
//! (mode 0600) into the data directory; the KEK is Argon2id(master secret, stored salt) — or, in FIPS mode,
//! PBKDF2-HMAC-SHA256 with 600,000 iterations (OWASP's figure), since FIPS does not approve Argon2; DEKs are
//! wrapped with AES-256-GCM under the KEK with the DEK's binding as AAD. The KDF is chosen when the data
//! directory is first used and recorded there.
//!
//! The salt and a check value of the KEK live in `local-kms.json` next to the master key, so starting with
//! a different master secret against an existing data directory fails at once with a clear message instead
//! of failing every decrypt later.

use std::{
    fs::{self, OpenOptions},
    io::Write,
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
};

use argon2::{Algorithm, Argon2, Params, Version};
use base64::{Engine, engine::general_purpose::STANDARD as B64};
use keymesh_crypto::{SecretKey, SymmetricAlgorithm, commitment, random};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{BackendDescription, KeyEncryptionBackend, KmsError, WrapContext, WrappedKey};

const BACKEND: &str = "local";
const NONCE_LEN: usize = 12;
const STATE_FILE: &str = "local-kms.json";
const LOCK_FILE: &str = "local-kms.lock";
const DEFAULT_MASTER_FILE: &str = "master.key";

/// Where the master secret comes from, in resolution order.
pub enum MasterKeySource {
    /// The value of `KEYMESH_MASTER_KEY` (any string; high-entropy random keys and passphrases alike go
    /// through Argon2id).
    Value(Zeroizing<String>),
    /// A file holding the secret; created (0600) with 32 random bytes if `generate_if_missing` and absent.
    File {
        /// The file.
        path: PathBuf,
        /// Create it when missing.
        generate_if_missing: bool,
    },
}

impl std::fmt::Debug for MasterKeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Value(_) => f.write_str("MasterKeySource::Value(redacted)"),
            Self::File { path, generate_if_missing } => f
                .debug_struct("MasterKeySource::File")
                .field("path", path)
                .field("generate_if_missing", generate_if_missing)
                .finish(),
        }
    }
}

/// Settings of the local backend.
#[derive(Debug)]
pub struct LocalKmsConfig {
    /// Directory holding the KDF state (and the generated master key).
    pub data_dir: PathBuf,
    /// Where the master secret comes from.
    pub master_key: MasterKeySource,
    /// FIPS mode: derive a new data directory's KEK with PBKDF2-HMAC-SHA256, and refuse one whose KEK
    /// comes from Argon2id.
    pub fips_kdf: bool,
}

impl LocalKmsConfig {
    /// The documented resolution order: the env value if set, else `master_key_file` if configured (it must
    /// exist), else `<data_dir>/master.key`, generated when missing.
    pub fn resolve(data_dir: PathBuf, env_value: Option<String>, master_key_file: Option<PathBuf>) -> Self {
        let master_key = match (env_value.filter(|v| !v.is_empty()), master_key_file) {
            (Some(value), _) => MasterKeySource::Value(Zeroizing::new(value)),
            (None, Some(path)) => MasterKeySource::File { path, generate_if_missing: false },
            (None, None) => {
                MasterKeySource::File { path: data_dir.join(DEFAULT_MASTER_FILE), generate_if_missing: true }
            }
        };
        Self { data_dir, master_key, fips_kdf: false }
    }
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct KdfState {
    version: u32,
    kdf: String,
    m_cost_kib: u32,
    t_cost: u32,
    p_cost: u32,
    /// PBKDF2's iteration count (0 for Argon2id).
    #[serde(default)]
    iterations: u32,
    salt: String,
    check: String,
}

const ARGON2ID: &str = "argon2id";
const PBKDF2: &str = "pbkdf2-hmac-sha256";
/// OWASP's recommendation for PBKDF2-HMAC-SHA256 (2023).
const PBKDF2_ITERATIONS: u32 = 600_000;

impl KdfState {
    fn derive(&self, master: &[u8], salt: &[u8], path: &Path) -> Result<SecretKey, KmsError> {
        match self.kdf.as_str() {
            ARGON2ID => {
                let params = Params::new(self.m_cost_kib, self.t_cost, self.p_cost, Some(32))
                    .map_err(|e| KmsError::MasterKey(format!("{}: bad Argon2 parameters: {e}", path.display())))?;
                derive_kek(master, salt, &params)
            }
            PBKDF2 => {
                let kek = keymesh_crypto::kdf::pbkdf2_hmac_sha256(master, salt, self.iterations, 32)
                    .map_err(|e| KmsError::MasterKey(format!("{}: PBKDF2: {e}", path.display())))?;
                Ok(SecretKey::copy_from_slice(&kek))
            }
            other => Err(KmsError::MasterKey(format!("{} names unknown KDF {other:?}", path.display()))),
        }
    }

    fn describe(&self) -> String {
        match self.kdf.as_str() {
            PBKDF2 => format!("PBKDF2-HMAC-SHA256 ({} iterations)", self.iterations),
            _ => format!("Argon2id (m={} KiB, t={}, p={})", self.m_cost_kib, self.t_cost, self.p_cost),
        }
    }
}

/// The local KEK backend.
pub struct LocalKms {
    kek: SecretKey,
    kek_id: String,
    detail: String,
}

impl LocalKms {
    /// Resolves the master secret, derives the KEK and checks it against the data directory. Safe to call
    /// from several processes sharing a data directory at once (creation happens under a file lock).
    pub fn open(config: &LocalKmsConfig) -> Result<Self, KmsError> {
        fs::create_dir_all(&config.data_dir).map_err(io_err(&config.data_dir))?;
        let lock_path = config.data_dir.join(LOCK_FILE);
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        lock.lock().map_err(io_err(&lock_path))?;

        let state_path = config.data_dir.join(STATE_FILE);
        // A new master key only makes sense for a new data directory: with existing state it could never
        // match, and writing one would leave a useless "master key" to be backed up by mistake.
        let master = match &config.master_key {
            MasterKeySource::File { path, generate_if_missing: true } if state_path.exists() && !path.exists() => {
                return Err(KmsError::MasterKey(format!(
                    "{} is missing but {} exists: restore the master key file or set KEYMESH_MASTER_KEY",
                    path.display(),
                    state_path.display()
                )));
            }
            source => read_master_secret(source)?,
        };
        let state = match fs::read(&state_path) {
            Ok(bytes) => serde_json::from_slice::<KdfState>(&bytes)
                .map_err(|e| KmsError::MasterKey(format!("{} is malformed: {e}", state_path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let salt = random::random_bytes(16)?;
                let mut state = if config.fips_kdf {
                    KdfState {
                        version: 1,
                        kdf: PBKDF2.into(),
                        m_cost_kib: 0,
                        t_cost: 0,
                        p_cost: 0,
                        iterations: PBKDF2_ITERATIONS,
                        salt: B64.encode(&salt),
                        check: String::new(),
                    }
                } else {
                    let params = default_params();
                    KdfState {
                        version: 1,
                        kdf: ARGON2ID.into(),
                        m_cost_kib: params.m_cost(),
                        t_cost: params.t_cost(),
                        p_cost: params.p_cost(),
                        iterations: 0,
                        salt: B64.encode(&salt),
                        check: String::new(),
                    }
                };
                let kek = state.derive(&master, &salt, &state_path)?;
                state.check = B64.encode(commitment::commit(kek.expose_secret()));
                let json = serde_json::to_vec_pretty(&state).map_err(|e| KmsError::MasterKey(e.to_string()))?;
                write_private_file(&state_path, &json)?;
                state
            }
            Err(e) => return Err(io_err(&state_path)(e)),
        };
        drop(lock);

        if config.fips_kdf && state.kdf != PBKDF2 {
            return Err(KmsError::MasterKey(format!(
                "FIPS mode is enabled, but {} derives the KEK with {}, which FIPS does not approve: use a fresh data \
                 directory for the local backend (and move keys to it with `key-service rewrap`), or set \
                 policy.fips_mode to \"preferred\"",
                state_path.display(),
                state.kdf
            )));
        }
        let salt =
            B64.decode(&state.salt).map_err(|_| KmsError::MasterKey(format!("{}: bad salt", state_path.display())))?;
        let kek = state.derive(&master, &salt, &state_path)?;
        let check = B64.decode(&state.check).unwrap_or_default();
        if !commitment::verify(kek.expose_secret(), &check) {
            return Err(KmsError::MasterKey(format!(
                "the master key does not match {} (it was created with another master key; set KEYMESH_MASTER_KEY \
                 or the master key file to the original, or use a fresh data directory)",
                config.data_dir.display()
            )));
        }
        let kek_id = format!("local/{}", check.iter().take(4).map(|b| format!("{b:02x}")).collect::<String>());
        let detail = format!(
            "{} KEK from {}",
            state.describe(),
            match &config.master_key {
                MasterKeySource::Value(_) => "KEYMESH_MASTER_KEY".to_owned(),
                MasterKeySource::File { path, .. } => path.display().to_string(),
            }
        );
        Ok(Self { kek, kek_id, detail })
    }
}

impl LocalKms {
    /// [`LocalKms::open`] off the async workers (Argon2id takes a moment of CPU).
    pub async fn open_off_runtime(config: LocalKmsConfig) -> Result<Self, KmsError> {
        tokio::task::spawn_blocking(move || Self::open(&config))
            .await
            .map_err(|e| KmsError::MasterKey(format!("KEK derivation task failed: {e}")))?
    }
}

/// OWASP's recommended Argon2id minimum (19 MiB, 2 passes): the KEK is derived once per process start.
fn default_params() -> Params {
    Params::new(19 * 1024, 2, 1, Some(32)).unwrap_or_default()
}

fn derive_kek(master: &[u8], salt: &[u8], params: &Params) -> Result<SecretKey, KmsError> {
    let mut out = Zeroizing::new(vec![0u8; 32]);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone())
        .hash_password_into(master, salt, &mut out)
        .map_err(|e| KmsError::MasterKey(format!("Argon2id failed: {e}")))?;
    Ok(SecretKey::copy_from_slice(&out))
}

fn read_master_secret(source: &MasterKeySource) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    match source {
        MasterKeySource::Value(value) => Ok(Zeroizing::new(value.trim().as_bytes().to_vec())),
        MasterKeySource::File { path, generate_if_missing } => match fs::read(path) {
            Ok(bytes) => {
                let bytes = Zeroizing::new(bytes);
                let trimmed = Zeroizing::new(bytes.trim_ascii().to_vec());
                if trimmed.is_empty() {
                    return Err(KmsError::MasterKey(format!("{} is empty", path.display())));
                }
                Ok(trimmed)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && *generate_if_missing => {
                let secret = random::random_bytes(32)?;
                let encoded = Zeroizing::new(format!("{}\n", B64.encode(&secret)));
                write_private_file(path, encoded.as_bytes())?;
                tracing::info!(path = %path.display(), "generated a new master key (mode 0600); back it up");
                Ok(Zeroizing::new(encoded.trim().as_bytes().to_vec()))
            }
            Err(e) => Err(io_err(path)(e)),
        },
    }
}

/// Writes a new file readable only by its owner, atomically (temp file + rename).
pub(crate) fn write_private_file(path: &Path, bytes: &[u8]) -> Result<(), KmsError> {
    let tmp = path.with_extension("tmp");
    let mut file =
        OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp).map_err(io_err(&tmp))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> KmsError + '_ {
    move |source| KmsError::Io { path: path.display().to_string(), source }
}

#[async_trait::async_trait]
impl KeyEncryptionBackend for LocalKms {
    async fn wrap(&self, dek: &SecretKey, context: &WrapContext) -> Result<WrappedKey, KmsError> {
        let nonce = random::nonce::<NONCE_LEN>()?;
        let sealed = SymmetricAlgorithm::Aes256Gcm.seal(&self.kek, &nonce, &context.to_aad(), dek.expose_secret())?;
        let mut ciphertext = nonce.to_vec();
        ciphertext.extend_from_slice(&sealed);
        Ok(WrappedKey { backend: BACKEND.into(), kek_id: self.kek_id.clone(), ciphertext })
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext) -> Result<SecretKey, KmsError> {
        if wrapped.kek_id != self.kek_id {
            return Err(KmsError::UnknownKek { backend: wrapped.backend.clone(), kek_id: wrapped.kek_id.clone() });
        }
        let failed = || KmsError::UnwrapFailed { backend: BACKEND.into() };
        let (nonce, sealed) = wrapped.ciphertext.split_at_checked(NONCE_LEN).ok_or_else(failed)?;
        let dek =
            SymmetricAlgorithm::Aes256Gcm.open(&self.kek, nonce, &context.to_aad(), sealed).map_err(|_| failed())?;
        Ok(SecretKey::copy_from_slice(&dek))
    }

    fn kind(&self) -> &'static str {
        "local"
    }

    fn describe(&self) -> BackendDescription {
        BackendDescription { backend: BACKEND.into(), kek_id: self.kek_id.clone(), detail: self.detail.clone() }
    }

    async fn health(&self) -> Result<(), KmsError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn ctx(version: u32) -> WrapContext {
        WrapContext { tenant_id: "t1".into(), key_id: "k1".into(), version, algorithm: "AES-256-GCM".into() }
    }

    #[tokio::test]
    async fn fips_mode_derives_the_kek_with_pbkdf2_and_refuses_an_argon2id_directory() {
        let dir = tempfile::tempdir().unwrap();
        let fips =
            LocalKmsConfig { fips_kdf: true, ..LocalKmsConfig::resolve(dir.path().into(), Some("m".into()), None) };
        let kms = LocalKms::open(&fips).unwrap();
        assert!(kms.detail.starts_with("PBKDF2-HMAC-SHA256 (600000 iterations)"), "{}", kms.detail);
        let state: serde_json::Value = serde_json::from_slice(&fs::read(dir.path().join(STATE_FILE)).unwrap()).unwrap();
        assert_eq!(state["kdf"], "pbkdf2-hmac-sha256");
        let dek = SecretKey::generate(32).unwrap();
        let wrapped = kms.wrap(&dek, &ctx(1)).await.unwrap();
        // The same directory opens outside FIPS mode too (PBKDF2 is fine everywhere) with the same KEK.
        let plain = LocalKms::open(&LocalKmsConfig::resolve(dir.path().into(), Some("m".into()), None)).unwrap();
        assert_eq!(plain.unwrap(&wrapped, &ctx(1)).await.unwrap().expose_secret(), dek.expose_secret());

        // An Argon2id directory is refused in FIPS mode, saying what to do.
        let other = tempfile::tempdir().unwrap();
        LocalKms::open(&LocalKmsConfig::resolve(other.path().into(), Some("m".into()), None)).unwrap();
        let fips =
            LocalKmsConfig { fips_kdf: true, ..LocalKmsConfig::resolve(other.path().into(), Some("m".into()), None) };
        let Err(KmsError::MasterKey(message)) = LocalKms::open(&fips) else { panic!("an Argon2id KEK in FIPS mode") };
        assert!(message.contains("FIPS mode is enabled") && message.contains("argon2id"), "{message}");
    }

    #[tokio::test]
    async fn generates_master_key_0600_and_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let config = LocalKmsConfig::resolve(dir.path().to_path_buf(), None, None);
        let kms = LocalKms::open(&config).unwrap();
        let mode = fs::metadata(dir.path().join("master.key")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dek = SecretKey::generate(32).unwrap();
        let wrapped = kms.wrap(&dek, &ctx(1)).await.unwrap();
        assert!(!wrapped.ciphertext.windows(32).any(|w| w == dek.expose_secret()));
        let back = kms.unwrap(&wrapped, &ctx(1)).await.unwrap();
        assert_eq!(back.expose_secret(), dek.expose_secret());
        // Bound to its context: another version (or tenant/key) does not unwrap.
        assert!(matches!(kms.unwrap(&wrapped, &ctx(2)).await, Err(KmsError::UnwrapFailed { .. })));

        // Reopening reuses the same master key and KEK.
        let again = LocalKms::open(&config).unwrap();
        assert_eq!(again.unwrap(&wrapped, &ctx(1)).await.unwrap().expose_secret(), dek.expose_secret());
    }

    #[tokio::test]
    async fn env_value_wins_and_a_wrong_master_key_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalKmsConfig::resolve(dir.path().to_path_buf(), Some("correct horse".into()), None);
        LocalKms::open(&first).unwrap();
        assert!(!dir.path().join("master.key").exists());
        let wrong = LocalKmsConfig::resolve(dir.path().to_path_buf(), Some("battery staple".into()), None);
        let err = LocalKms::open(&wrong).err().expect("must refuse");
        assert!(err.to_string().contains("does not match"), "{err}");
        assert!(!err.to_string().contains("battery"), "the secret must not appear: {err}");
    }

    #[test]
    fn debug_of_source_hides_the_secret() {
        let source = MasterKeySource::Value(Zeroizing::new("hunter2".into()));
        assert!(!format!("{source:?}").contains("hunter2"));
    }
}

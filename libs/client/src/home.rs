//! The developer's keymesh directory (`~/.keymesh`, or `$KEYMESH_HOME`) and what lives there: the login session
//! (`credentials.json`) that `keymesh login` writes, and the credentials of every application registered from it
//! (`apps/<client_id>.json`). The directory is 0700 and every file 0600, written whole (a temporary file renamed
//! over the old one) so a crash never leaves half a secret; secrets are never printed, and the types holding them
//! print no secret in Debug.
//!
//! A session keeps no client secret: a login with client credentials stores the refresh token they bought (and
//! every use rotates it, so the file is rewritten under a lock: two processes never spend the same token, which
//! would revoke the session); a login by token exchange stores where the platform token is, read afresh each time.
//! The Python client reads and writes the same files.

use std::{
    fs::{self, DirBuilder, File, OpenOptions},
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use keymesh_proto::v1 as pb;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{ClientError, Credentials, Endpoints, KeymeshClient, TlsMaterial};

/// Where the keymesh directory is: `$KEYMESH_HOME`, else `$HOME/.keymesh`.
pub fn default_home() -> Result<PathBuf, ClientError> {
    if let Some(dir) = std::env::var_os("KEYMESH_HOME") {
        return Ok(PathBuf::from(dir));
    }
    std::env::var_os("HOME")
        .map(|home| PathBuf::from(home).join(".keymesh"))
        .ok_or_else(|| ClientError::Setup("neither KEYMESH_HOME nor HOME is set".into()))
}

/// How `keymesh login` authenticated.
pub enum Login {
    /// An application's client id and secret; the session keeps only the refresh token they buy.
    ClientCredentials(Credentials),
    /// A platform token (an OIDC ID token, a Kubernetes service-account token) in a file, exchanged afresh at each
    /// use.
    TokenExchange(PathBuf),
}

/// The login session file. No Debug: it holds a refresh token.
#[derive(Serialize, Deserialize)]
struct SessionFile {
    /// `refresh_token` or `token_exchange`.
    kind: String,
    /// The application the session acts as (for token exchange: as of the login).
    client_id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    refresh_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    subject_token_file: Option<PathBuf>,
}

impl Drop for SessionFile {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.refresh_token);
    }
}

/// A registered application's credentials file (`apps/<client_id>.json`). No Debug: it holds a client secret.
#[derive(Serialize, Deserialize)]
struct AppFile {
    client_id: String,
    client_secret: Zeroizing<String>,
    tenant_id: String,
    name: String,
    environment: String,
    team: String,
}

/// What registering found or created.
#[derive(Debug, Clone)]
pub struct Registered {
    /// The application's client id.
    pub client_id: String,
    /// Its name in the tenant, `<name>.<environment>`.
    pub application_name: String,
    /// True when this call created it (on the server); false when it was found again.
    pub created: bool,
    /// The credentials file written (0600).
    pub credentials_file: PathBuf,
}

/// One user of the session file at a time in this process. The file lock is taken on a blocking thread: tasks of
/// one process waiting in `flock` on the runtime's own threads could occupy them all while the holder, needing one
/// to finish its call, waits.
static SESSION_IN_PROCESS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The session lock: this process's turn, and the file lock other processes honour.
struct SessionLock {
    _in_process: tokio::sync::MutexGuard<'static, ()>,
    _file: File,
}

/// The keymesh directory.
pub struct KeymeshHome {
    dir: PathBuf,
}

impl KeymeshHome {
    /// The directory at `dir` (created 0700 when first written).
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// `$KEYMESH_HOME` or `~/.keymesh`.
    pub fn default_location() -> Result<Self, ClientError> {
        Ok(Self::at(default_home()?))
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The session file.
    pub fn session_file(&self) -> PathBuf {
        self.dir.join("credentials.json")
    }

    /// The credentials file of a registered application.
    pub fn app_file(&self, client_id: &str) -> PathBuf {
        self.dir.join("apps").join(format!("{client_id}.json"))
    }

    /// Creates `dir` (and parents) owner-only from the start, and narrows an existing one to 0700.
    fn private_dir(dir: &Path) -> Result<(), ClientError> {
        let io = |e: std::io::Error| ClientError::Io(format!("{}: {e}", dir.display()));
        DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io)
    }

    /// Writes `bytes` to `path` as a new 0600 file moved over the old one.
    fn write_private(path: &Path, bytes: &[u8]) -> Result<(), ClientError> {
        let dir = path.parent().ok_or_else(|| ClientError::Setup(format!("{} has no directory", path.display())))?;
        Self::private_dir(dir)?;
        let io = |e: std::io::Error| ClientError::Io(format!("{}: {e}", path.display()));
        let temporary = tempfile::Builder::new().prefix(".keymesh-").tempfile_in(dir).map_err(io)?;
        // tempfile creates it 0600 already; said again so it holds whatever the library does.
        fs::set_permissions(temporary.path(), fs::Permissions::from_mode(0o600)).map_err(io)?;
        let (mut file, temporary) = temporary.into_parts();
        file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io)?;
        temporary.persist(path).map_err(|e| io(e.error))?;
        // The rename itself survives a crash once the directory is on disk.
        File::open(dir).and_then(|d| d.sync_all()).map_err(io)
    }

    /// The lock every reader-and-writer of the session file holds (the Python client takes the same `flock`).
    async fn lock_session(&self) -> Result<SessionLock, ClientError> {
        let in_process = SESSION_IN_PROCESS.lock().await;
        Self::private_dir(&self.dir)?;
        let path = self.dir.join(".credentials.lock");
        let file = tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(&path)?;
            file.lock()?;
            Ok::<_, std::io::Error>(file)
        })
        .await
        .map_err(|e| ClientError::Io(format!("locking the session: {e}")))?
        .map_err(|e| ClientError::Io(format!("locking the session in {}: {e}", self.dir.display())))?;
        Ok(SessionLock { _in_process: in_process, _file: file })
    }

    /// Logs in: authenticates once and stores the session (never the client secret). Returns the client id the
    /// session acts as.
    pub async fn login(&self, endpoints: &Endpoints, tls: &TlsMaterial, method: Login) -> Result<String, ClientError> {
        let client = KeymeshClient::new(endpoints, tls, Credentials::none())?;
        let _lock = self.lock_session().await?;
        let session = match method {
            Login::ClientCredentials(credentials) => {
                let response = client
                    .token_service()
                    .issue_token(pb::IssueTokenRequest {
                        grant_type: pb::GrantType::ClientCredentials as i32,
                        client_id: credentials.client_id.clone(),
                        client_secret: credentials.client_secret.to_string(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                let _access = Zeroizing::new(response.access_token);
                if response.refresh_token.is_empty() {
                    return Err(ClientError::Setup(
                        "token-service issued no refresh token: no session can be kept for this login".into(),
                    ));
                }
                SessionFile {
                    kind: "refresh_token".into(),
                    client_id: credentials.client_id.clone(),
                    refresh_token: response.refresh_token,
                    subject_token_file: None,
                }
            }
            Login::TokenExchange(path) => {
                let access = exchange(&client, &path).await?;
                let client_id = subject_of(&access)?;
                let path = fs::canonicalize(&path).map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))?;
                SessionFile {
                    kind: "token_exchange".into(),
                    client_id,
                    refresh_token: String::new(),
                    subject_token_file: Some(path),
                }
            }
        };
        let text = Zeroizing::new(serde_json::to_vec_pretty(&session).map_err(|e| ClientError::Setup(e.to_string()))?);
        Self::write_private(&self.session_file(), &text)?;
        Ok(session.client_id.clone())
    }

    /// An access token of the login session: a refresh (rotating and storing the refresh token, under the lock)
    /// or a fresh exchange.
    pub async fn session_token(&self, client: &KeymeshClient) -> Result<Zeroizing<String>, ClientError> {
        let _lock = self.lock_session().await?;
        let path = self.session_file();
        let text = Zeroizing::new(
            fs::read(&path)
                .map_err(|e| ClientError::Setup(format!("{}: {e} (log in first: `keymesh login`)", path.display())))?,
        );
        // The parser's message is left out: it could quote the file, which holds a token.
        let mut session: SessionFile = serde_json::from_slice(&text)
            .map_err(|_| ClientError::Setup(format!("{}: not a keymesh session; log in again", path.display())))?;
        match (session.kind.as_str(), &session.subject_token_file) {
            ("token_exchange", Some(file)) => exchange(client, file).await,
            ("refresh_token", _) => {
                let response = client
                    .token_service()
                    .issue_token(pb::IssueTokenRequest {
                        grant_type: pb::GrantType::RefreshToken as i32,
                        refresh_token: session.refresh_token.clone(),
                        ..Default::default()
                    })
                    .await
                    .map_err(|status| match status.code() {
                        tonic::Code::Unauthenticated => ClientError::Setup(format!(
                            "the login session has ended ({}): log in again with `keymesh login`",
                            status.message()
                        )),
                        _ => ClientError::Status(status),
                    })?;
                let response = response.into_inner();
                let access = Zeroizing::new(response.access_token);
                session.refresh_token = response.refresh_token;
                let text =
                    Zeroizing::new(serde_json::to_vec_pretty(&session).map_err(|e| ClientError::Setup(e.to_string()))?);
                Self::write_private(&path, &text)?;
                Ok(access)
            }
            (kind, _) => Err(ClientError::Setup(format!("{}: unknown session kind {kind:?}", path.display()))),
        }
    }

    /// The stored credentials of the application registered as `name` in `environment`, and their file, if any:
    /// the first in name order, temporary files (dot files) left out, as the Python client reads them.
    fn stored_app(&self, name: &str, environment: &str) -> Option<(AppFile, PathBuf)> {
        let mut paths: Vec<PathBuf> = fs::read_dir(self.dir.join("apps"))
            .ok()?
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        paths.sort();
        paths.into_iter().find_map(|path| {
            let text = Zeroizing::new(fs::read(&path).ok()?);
            let app = serde_json::from_slice::<AppFile>(&text).ok()?;
            (app.name == name && app.environment == environment).then_some((app, path))
        })
    }

    /// The SDK's auto-registration: a client for the application `name` in `environment`, registered for the
    /// logged-in identity. Stored credentials of that application are used as they are while they work; otherwise
    /// RegisterApplication creates the application or finds it again (fresh credentials), and they are stored in
    /// `apps/<client_id>.json` (0600). `keys` are the key name patterns it may use (empty: `default`).
    pub async fn register(
        &self,
        endpoints: &Endpoints,
        tls: &TlsMaterial,
        request: pb::RegisterApplicationRequest,
    ) -> Result<(KeymeshClient, Registered), ClientError> {
        if let Some((app, file)) = self.stored_app(&request.name, &request.environment) {
            let credentials = Credentials {
                client_id: app.client_id.clone(),
                client_secret: app.client_secret.clone(),
                subject_token_file: None,
            };
            let client = KeymeshClient::new(endpoints, tls, credentials)?;
            match client.access_token().await {
                Ok(_) => {
                    let registered = Registered {
                        client_id: app.client_id.clone(),
                        application_name: format!("{}.{}", app.name, app.environment),
                        created: false,
                        credentials_file: file,
                    };
                    return Ok((client, registered));
                }
                // A disabled application, a secret rotated away: register again.
                Err(ClientError::Status(status)) if status.code() == tonic::Code::Unauthenticated => {}
                Err(e) => return Err(e),
            }
        }
        let anonymous = KeymeshClient::new(endpoints, tls, Credentials::none())?;
        let token = self.session_token(&anonymous).await?;
        let call = crate::bearer(&token, request)?;
        let response = anonymous.token_service().register_application(call).await?.into_inner();
        let secret = Zeroizing::new(response.client_secret);
        let application = response
            .application
            .ok_or_else(|| ClientError::Setup("RegisterApplication returned no application".into()))?;
        let valid_id = !application.client_id.is_empty()
            && application.client_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !valid_id {
            return Err(ClientError::Setup("RegisterApplication returned a malformed client id".into()));
        }
        let (name, _) = application.name.rsplit_once('.').unwrap_or((&application.name, ""));
        let file = AppFile {
            client_id: application.client_id.clone(),
            client_secret: secret.clone(),
            tenant_id: application.tenant_id.clone(),
            name: name.to_owned(),
            environment: response.environment,
            team: response.team,
        };
        let path = self.app_file(&application.client_id);
        let text = Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(|e| ClientError::Setup(e.to_string()))?);
        Self::write_private(&path, &text)?;
        let credentials =
            Credentials { client_id: application.client_id.clone(), client_secret: secret, subject_token_file: None };
        let registered = Registered {
            client_id: application.client_id,
            application_name: application.name,
            created: response.created,
            credentials_file: path,
        };
        Ok((KeymeshClient::new(endpoints, tls, credentials)?, registered))
    }
}

/// The access token a token exchange of the platform token in `path` gives.
async fn exchange(client: &KeymeshClient, path: &Path) -> Result<Zeroizing<String>, ClientError> {
    let request = crate::token_exchange_request(path).await?;
    Ok(Zeroizing::new(client.token_service().issue_token(request).await?.into_inner().access_token))
}

/// The `sub` of an access token (the application it acts as), read without verifying: only to name the session.
fn subject_of(token: &str) -> Result<String, ClientError> {
    use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
    let payload = token.split('.').nth(1).ok_or_else(|| ClientError::Setup("the access token is not a JWT".into()))?;
    let bytes = Zeroizing::new(
        URL_SAFE_NO_PAD.decode(payload).map_err(|_| ClientError::Setup("the access token is not a JWT".into()))?,
    );
    #[derive(Deserialize)]
    struct Claims {
        sub: String,
    }
    serde_json::from_slice::<Claims>(&bytes)
        .map(|c| c.sub)
        .map_err(|_| ClientError::Setup("the access token names no subject".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_0600_in_a_0700_directory_and_replace_the_old_whole() {
        let root = tempfile::tempdir().unwrap();
        let home = KeymeshHome::at(root.path().join("nested/.keymesh"));
        KeymeshHome::write_private(&home.app_file("app_1"), b"{\"first\": 1}").unwrap();
        KeymeshHome::write_private(&home.app_file("app_1"), b"{\"second\": 2}").unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home.app_file("app_1")), 0o600);
        assert_eq!(mode(&home.dir().join("apps")), 0o700);
        assert_eq!(fs::read(home.app_file("app_1")).unwrap(), b"{\"second\": 2}");
        let leftovers: Vec<_> =
            fs::read_dir(home.dir().join("apps")).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind: {leftovers:?}");
        // An existing directory anyone can read is narrowed.
        fs::set_permissions(home.dir(), fs::Permissions::from_mode(0o755)).unwrap();
        KeymeshHome::private_dir(home.dir()).unwrap();
        assert_eq!(mode(home.dir()), 0o700);
    }

    #[test]
    fn many_tasks_of_one_process_take_the_session_lock_in_turn_on_a_single_thread() {
        // Four tasks on a current-thread runtime: a blocking flock on the runtime's thread would hang here.
        let root = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let held = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        runtime.block_on(async {
            let tasks: Vec<_> = (0..4)
                .map(|_| {
                    let (home, held) = (KeymeshHome::at(root.path()), held.clone());
                    tokio::spawn(async move {
                        let _lock = home.lock_session().await.unwrap();
                        assert_eq!(held.fetch_add(1, std::sync::atomic::Ordering::SeqCst), 0, "one holder at a time");
                        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        held.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                    })
                })
                .collect();
            tokio::time::timeout(std::time::Duration::from_secs(10), async {
                for task in tasks {
                    task.await.unwrap();
                }
            })
            .await
            .expect("the lock is taken in turn, not deadlocked");
        });
    }

    #[test]
    fn the_subject_of_a_token_is_read_for_the_session_name() {
        use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
        let token = format!("x.{}.y", URL_SAFE_NO_PAD.encode(br#"{"sub":"app_42","tenant":"t"}"#));
        assert_eq!(subject_of(&token).unwrap(), "app_42");
        assert!(subject_of("not-a-jwt").is_err());
    }
}

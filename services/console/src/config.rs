//! The console's section of the configuration file, `[console]`, validated at start so a mistake stops the
//! console with the field named. Everything else (the mesh's endpoints, the data directory) it reads from the
//! sections every keymesh process shares.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use keymesh_config::KeymeshConfig;
use keymesh_mesh::{config::ClientParams, run::ServiceConfig};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::bind;

/// What the console reads at start, as the binary reads it (the chart's check reads it the same way): the
/// configuration file (or none) overlaid by `KEYMESH_*` variables; the shared transport settings (the mesh's
/// endpoints, the data directory, the log level) and `[console]`, each mistake naming its field.
pub fn load(
    file: Option<&Path>,
    env: &std::collections::BTreeMap<String, String>,
) -> Result<(ClientParams, ConsoleConfig), String> {
    let config = KeymeshConfig::load(file, env).map_err(|e| e.to_string())?;
    // The console is a client of the mesh: it needs the endpoints, not an address of the services' to listen on.
    let params = ClientParams::from_raw(config.transport()).map_err(|e| e.to_string())?;
    let raw: RawConsole = config.service_section("console").map_err(|e| e.to_string())?;
    let console = ConsoleConfig::from_raw(raw).map_err(|e| e.to_string())?;
    Ok((params, console))
}

/// `[console]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConsole {
    /// Address the console's HTTP server listens on (default `127.0.0.1:7480`).
    pub listen: Option<String>,
    /// The URL browsers reach the console at, e.g. `https://keymesh.example.com` behind an Ingress (default
    /// `http://<listen>`). Its scheme decides the cookie (`__Host-` and `Secure` for https) and HSTS; its origin is
    /// the one POSTs must come from; the OIDC callback is `<public_url>/oidc/callback`.
    pub public_url: Option<String>,
    /// The development login (the bootstrap credentials from the data directory as username and password):
    /// off unless set, and refused unless `listen` is a loopback address.
    pub dev_login: Option<bool>,
    /// Minutes without a request after which a session ends (1..=720; default 30).
    pub session_idle_minutes: Option<u64>,
    /// Hours after sign-in after which a session ends however busy (1..=24; default 8).
    pub session_absolute_hours: Option<u64>,
    /// The console's client certificate toward the mesh (PEM); default: a development identity in the data
    /// directory. With it, `tls_key` and `tls_ca`.
    pub tls_cert: Option<PathBuf>,
    /// Its private key.
    pub tls_key: Option<PathBuf>,
    /// The mesh CA.
    pub tls_ca: Option<PathBuf>,
    /// The OpenID Connect provider people sign in with.
    pub oidc: Option<RawOidc>,
    /// GitHub's OAuth 2.0 sign-in (an OAuth app), beside or instead of OIDC.
    pub github: Option<RawGithub>,
}

/// `[console.github]`: a GitHub OAuth app. token-service needs the same app (`kind = "github"` issuer with
/// `audience` = this client id) to exchange its tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGithub {
    /// The OAuth app's client id.
    pub client_id: String,
    /// A file holding its client secret (GitHub requires it to redeem a code).
    pub client_secret_file: PathBuf,
    /// GitHub's web address (default `https://github.com`; GitHub Enterprise Server: `https://HOST`).
    pub web_url: Option<String>,
    /// Scopes asked for (default none: the public profile is all the sign-in needs).
    pub scopes: Option<Vec<String>>,
    /// PEM bundle trusted for GitHub Enterprise Server beside the system roots.
    pub ca_file: Option<PathBuf>,
}

/// `[console.oidc]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOidc {
    /// The issuer, e.g. `https://accounts.google.com`; its endpoints come from
    /// `<issuer>/.well-known/openid-configuration`. `http://` only on loopback.
    pub issuer: String,
    /// The console's client id at the provider; token-service's `[[tokens.exchange.issuers]]` entry for this
    /// issuer names it as `audience`, because the ID tokens it exchanges are minted for the console.
    pub client_id: String,
    /// A file holding the client secret (a mounted Kubernetes Secret); none for a public client (PKCE alone).
    pub client_secret_file: Option<PathBuf>,
    /// Scopes beyond `openid` (default `email profile`).
    pub scopes: Option<Vec<String>>,
    /// PEM bundle trusted for the provider beside the system roots.
    pub ca_file: Option<PathBuf>,
    /// The name on the sign-in button (default: the issuer's host).
    pub display_name: Option<String>,
}

/// A configuration mistake, naming the field.
#[derive(Debug, thiserror::Error)]
#[error("console.{field}: {reason}")]
pub struct ConsoleConfigError {
    /// The field, below `console.`.
    pub field: &'static str,
    /// What is wrong.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConsoleConfigError {
    ConsoleConfigError { field, reason: reason.into() }
}

/// The validated `[console]`.
pub struct ConsoleConfig {
    /// Where to listen.
    pub listen: SocketAddr,
    /// Where browsers reach it.
    pub public_url: url::Url,
    /// Whether the development login is on (only ever on loopback).
    pub dev_login: bool,
    /// Session lifetimes.
    pub sessions: crate::session::Lifetimes,
    /// The client certificate files, when not the development identity.
    pub tls_files: Option<(PathBuf, PathBuf, PathBuf)>,
    /// The OIDC provider.
    pub oidc: Option<OidcSettings>,
    /// The GitHub OAuth app.
    pub github: Option<GithubSettings>,
}

/// The validated `[console.github]`. No Debug output of the secret.
pub struct GithubSettings {
    /// Client id.
    pub client_id: String,
    /// Client secret.
    pub client_secret: Zeroizing<String>,
    /// `https://github.com` or a GitHub Enterprise Server.
    pub web_url: url::Url,
    /// Scopes.
    pub scopes: Vec<String>,
    /// Extra trust.
    pub ca_file: Option<PathBuf>,
}

impl std::fmt::Debug for GithubSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GithubSettings")
            .field("client_id", &self.client_id)
            .field("web_url", &self.web_url.as_str())
            .finish_non_exhaustive()
    }
}

/// The validated `[console.oidc]`. No Debug output of the secret.
pub struct OidcSettings {
    /// Issuer URL.
    pub issuer: url::Url,
    /// Client id.
    pub client_id: String,
    /// Client secret, if confidential.
    pub client_secret: Option<Zeroizing<String>>,
    /// Extra scopes.
    pub scopes: Vec<String>,
    /// Extra trust.
    pub ca_file: Option<PathBuf>,
    /// Button label.
    pub display_name: String,
}

impl std::fmt::Debug for OidcSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcSettings")
            .field("issuer", &self.issuer.as_str())
            .field("client_id", &self.client_id)
            .field("confidential", &self.client_secret.is_some())
            .finish_non_exhaustive()
    }
}

/// `https://`, or `http://` on a loopback host.
pub fn secure_or_loopback(url: &url::Url) -> bool {
    match url.scheme() {
        "https" => true,
        "http" => loopback_host(url),
        _ => false,
    }
}

/// Whether `url` names this machine (`localhost`, 127.0.0.0/8, `::1`).
fn loopback_host(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

fn bounded(
    field: &'static str,
    value: Option<u64>,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ConsoleConfigError> {
    let v = value.unwrap_or(default);
    if range.contains(&v) {
        Ok(v)
    } else {
        Err(invalid(field, format!("{v} is outside {}..={}", range.start(), range.end())))
    }
}

impl ConsoleConfig {
    /// Validates `raw`; files it names (the client secret) are read now.
    pub fn from_raw(raw: RawConsole) -> Result<Self, ConsoleConfigError> {
        let listen: SocketAddr = raw
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:7480")
            .parse()
            .map_err(|e| invalid("listen", format!("not an address:port: {e}")))?;
        let dev_login = raw.dev_login.unwrap_or(false);
        if dev_login {
            bind::check_dev_login(listen).map_err(|e| invalid("dev_login", e.to_string()))?;
        }
        let public_url = match raw.public_url.as_deref() {
            Some(text) => {
                url::Url::parse(text.trim_end_matches('/')).map_err(|e| invalid("public_url", e.to_string()))?
            }
            None => url::Url::parse(&format!("http://{listen}")).map_err(|e| invalid("listen", e.to_string()))?,
        };
        if !secure_or_loopback(&public_url) {
            return Err(invalid("public_url", "must be https:// (http:// only on a loopback host)"));
        }
        if dev_login && !loopback_host(&public_url) {
            // Listening on loopback is not enough: a proxy, a tunnel or a port-forward in front of it would put
            // the development login on the network under this public URL.
            return Err(invalid("dev_login", format!("is for loopback only; public_url is {public_url}")));
        }
        if public_url.scheme() == "http" && !listen.ip().is_loopback() {
            // Cookies without Secure would cross the network in the clear.
            return Err(invalid("public_url", "must be https:// when the console listens beyond loopback"));
        }
        let sessions = crate::session::Lifetimes {
            idle: Duration::from_secs(60 * bounded("session_idle_minutes", raw.session_idle_minutes, 30, 1..=720)?),
            absolute: Duration::from_secs(
                3600 * bounded("session_absolute_hours", raw.session_absolute_hours, 8, 1..=24)?,
            ),
        };
        let tls_files = match (raw.tls_cert, raw.tls_key, raw.tls_ca) {
            (Some(c), Some(k), Some(a)) => Some((c, k, a)),
            (None, None, None) => None,
            _ => return Err(invalid("tls_cert", "tls_cert, tls_key and tls_ca go together")),
        };
        let oidc = raw.oidc.map(OidcSettings::from_raw).transpose()?;
        let github = raw.github.map(GithubSettings::from_raw).transpose()?;
        if oidc.is_none() && github.is_none() && !dev_login {
            return Err(invalid(
                "oidc",
                "no way to sign in: configure [console.oidc] or [console.github] (or dev_login on loopback)",
            ));
        }
        Ok(Self { listen, public_url, dev_login, sessions, tls_files, oidc, github })
    }

    /// Whether browsers reach the console over TLS.
    pub fn over_tls(&self) -> bool {
        self.public_url.scheme() == "https"
    }

    /// The OIDC callback URL registered at the provider.
    pub fn redirect_uri(&self) -> String {
        format!("{}/oidc/callback", self.public_url.as_str().trim_end_matches('/'))
    }

    /// The callback URL registered in the GitHub OAuth app.
    pub fn github_redirect_uri(&self) -> String {
        format!("{}/github/callback", self.public_url.as_str().trim_end_matches('/'))
    }

    /// The origin POSTs must come from (`scheme://host:port`).
    pub fn origin(&self) -> String {
        self.public_url.origin().ascii_serialization()
    }
}

impl OidcSettings {
    fn from_raw(raw: RawOidc) -> Result<Self, ConsoleConfigError> {
        let issuer =
            url::Url::parse(raw.issuer.trim_end_matches('/')).map_err(|e| invalid("oidc.issuer", e.to_string()))?;
        if !secure_or_loopback(&issuer) {
            return Err(invalid("oidc.issuer", "must be https:// (http:// only on a loopback host)"));
        }
        if raw.client_id.is_empty() {
            return Err(invalid("oidc.client_id", "must not be empty"));
        }
        let client_secret =
            raw.client_secret_file.as_deref().map(|p| read_secret("oidc.client_secret_file", p)).transpose()?;
        let display_name = raw.display_name.unwrap_or_else(|| issuer.host_str().unwrap_or("OpenID Connect").to_owned());
        Ok(Self {
            issuer,
            client_id: raw.client_id,
            client_secret,
            scopes: raw.scopes.unwrap_or_else(|| vec!["email".into(), "profile".into()]),
            ca_file: raw.ca_file,
            display_name,
        })
    }
}

impl GithubSettings {
    fn from_raw(raw: RawGithub) -> Result<Self, ConsoleConfigError> {
        if raw.client_id.is_empty() {
            return Err(invalid("github.client_id", "must not be empty"));
        }
        let web = raw.web_url.as_deref().unwrap_or("https://github.com").trim_end_matches('/');
        let web_url = url::Url::parse(web).map_err(|e| invalid("github.web_url", e.to_string()))?;
        if !secure_or_loopback(&web_url) {
            return Err(invalid("github.web_url", "must be https:// (http:// only on a loopback host)"));
        }
        Ok(Self {
            client_id: raw.client_id,
            client_secret: read_secret("github.client_secret_file", &raw.client_secret_file)?,
            web_url,
            scopes: raw.scopes.unwrap_or_default(),
            ca_file: raw.ca_file,
        })
    }
}

fn read_secret(field: &'static str, path: &Path) -> Result<Zeroizing<String>, ConsoleConfigError> {
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| invalid(field, format!("{}: {e}", path.display())))?);
    let secret = Zeroizing::new(text.trim().to_owned());
    if secret.is_empty() {
        return Err(invalid(field, format!("{} is empty", path.display())));
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oidc() -> RawOidc {
        RawOidc { issuer: "https://idp.example".into(), client_id: "console".into(), ..Default::default() }
    }

    #[test]
    fn defaults_are_loopback_plain_http() {
        let c = ConsoleConfig::from_raw(RawConsole { oidc: Some(oidc()), ..Default::default() }).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:7480");
        assert_eq!(c.redirect_uri(), "http://127.0.0.1:7480/oidc/callback");
        assert_eq!(c.origin(), "http://127.0.0.1:7480");
        assert!(!c.over_tls() && !c.dev_login);
    }

    #[test]
    fn the_development_login_is_refused_beyond_loopback() {
        let raw = RawConsole {
            listen: Some("0.0.0.0:7480".into()),
            public_url: Some("https://console.example".into()),
            dev_login: Some(true),
            ..Default::default()
        };
        let err = ConsoleConfig::from_raw(raw).err().unwrap().to_string();
        assert!(err.starts_with("console.dev_login:"), "{err}");
        // Nor behind a proxy or tunnel that gives a loopback listener a public URL.
        let raw = RawConsole {
            public_url: Some("https://console.example".into()),
            dev_login: Some(true),
            ..Default::default()
        };
        let err = ConsoleConfig::from_raw(raw).err().unwrap().to_string();
        assert!(err.starts_with("console.dev_login:"), "{err}");
        let ok = RawConsole {
            public_url: Some("http://localhost:7480".into()),
            dev_login: Some(true),
            ..Default::default()
        };
        assert!(ConsoleConfig::from_raw(ok).is_ok());
    }

    #[test]
    fn mistakes_name_their_field() {
        let cases: Vec<(RawConsole, &str)> = vec![
            (RawConsole { oidc: Some(oidc()), listen: Some("nowhere".into()), ..Default::default() }, "console.listen"),
            (
                RawConsole {
                    oidc: Some(oidc()),
                    listen: Some("0.0.0.0:1".into()),
                    public_url: Some("http://console.example".into()),
                    ..Default::default()
                },
                "console.public_url",
            ),
            (
                RawConsole {
                    oidc: Some(RawOidc { issuer: "http://idp.example".into(), ..oidc() }),
                    ..Default::default()
                },
                "console.oidc.issuer",
            ),
            (
                RawConsole { oidc: Some(RawOidc { client_id: String::new(), ..oidc() }), ..Default::default() },
                "console.oidc.client_id",
            ),
            (RawConsole::default(), "console.oidc"),
            (
                RawConsole { oidc: Some(oidc()), session_idle_minutes: Some(0), ..Default::default() },
                "console.session_idle_minutes",
            ),
        ];
        for (raw, field) in cases {
            let err = ConsoleConfig::from_raw(raw).err().unwrap().to_string();
            assert!(err.starts_with(&format!("{field}:")), "{err}");
        }
    }

    #[test]
    fn the_client_secret_is_read_from_its_file_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "s3cr3t-value\n").unwrap();
        let raw = RawConsole { oidc: Some(RawOidc { client_secret_file: Some(path), ..oidc() }), ..Default::default() };
        let c = ConsoleConfig::from_raw(raw).unwrap();
        let settings = c.oidc.unwrap();
        assert_eq!(settings.client_secret.as_deref().map(String::as_str), Some("s3cr3t-value"));
        assert!(!format!("{settings:?}").contains("s3cr3t"));
    }
}

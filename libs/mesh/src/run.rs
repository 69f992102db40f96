//! The shape of every service's `main`: load and validate configuration without binding anything, set up
//! telemetry and certificates, run the service, and turn failures into one line and an exit code —
//! 64 (EX_USAGE) for bad configuration, 1 for a failed start.

use std::{collections::BTreeMap, error::Error, future::Future, path::PathBuf, process::ExitCode};

use crate::{
    MeshError, ServiceName,
    config::{ConfigError, ConfigSource, MeshParams, RawTransport},
    identity::app_spiffe_id,
    pki::{self, DevIdentity, TlsMaterial},
    readiness::Readiness,
    telemetry,
};

/// A boxed error a service's start-up can fail with.
pub type BoxError = Box<dyn Error + Send + Sync>;

/// The whole configuration a service reads, composed above this crate from every owner's section.
pub trait ServiceConfig: Sized {
    /// Reads every section from the file and variables; a mistake names its field.
    fn from_source(source: &ConfigSource) -> Result<Self, ConfigError>;

    /// The transport settings among them.
    fn transport(&self) -> &RawTransport;
}

/// What a service gets to build itself from.
pub struct Startup<C> {
    /// Validated shared settings.
    pub params: MeshParams,
    /// The configuration, for the sections the service reads.
    pub config: C,
    /// This service's certificate, key and CA.
    pub tls: TlsMaterial,
    /// What `/readyz` checks: the service adds its dependencies, and says when it serves.
    pub readiness: Readiness,
}

/// Exit code for configuration errors (sysexits EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// Runs a service. `body` builds it from [`Startup`] and serves until shutdown.
pub fn main<C, F, Fut>(service: ServiceName, body: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(Startup<C>) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    main_with_args(service, std::env::args().skip(1), body)
}

/// [`main`] for a service whose binary has already taken its own words off the command line; `args` are what
/// is left (`--config FILE`).
pub fn main_with_args<C, F, Fut>(service: ServiceName, args: impl Iterator<Item = String>, body: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(Startup<C>) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    run(service, args, body, Role::Server)
}

/// A one-shot command of a service's binary (such as `key-service rewrap`): the service's configuration and
/// telemetry, but no metrics endpoint, whose port belongs to the running service.
pub fn command_with_args<C, F, Fut>(service: ServiceName, args: impl Iterator<Item = String>, body: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(Startup<C>) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    run(service, args, body, Role::Command)
}

/// Whether the process serves (and so exposes its metrics) or runs a command and exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Server,
    Command,
}

fn run<C, F, Fut>(service: ServiceName, args: impl Iterator<Item = String>, body: F, role: Role) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(Startup<C>) -> Fut,
    Fut: Future<Output = Result<(), BoxError>>,
{
    crate::install_crypto_provider();
    let open_files = raise_open_file_limit();
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let (params, config) = match load_config::<C>(service, args, &env) {
        Ok(loaded) => loaded,
        Err(e) => return fail(service, &e, EXIT_CONFIG),
    };
    // A bad OTEL_* variable is a configuration error like a bad field: it stops the service before it starts.
    let telemetry_settings = match telemetry::settings(&params, &|name| env.get(name).cloned()) {
        Ok(settings) => settings,
        Err(e) => return fail(service, &e, EXIT_CONFIG),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(service, &e, 1),
    };
    let result: Result<(), BoxError> = runtime.block_on(async {
        let prometheus = params.metrics_addr.filter(|_| role == Role::Server);
        let telemetry = telemetry::init(&params, &telemetry_settings, prometheus.is_some())?;
        match open_files {
            OpenFiles::Raised { from, to } => tracing::info!(from, to, "raised the open-file limit to its hard limit"),
            OpenFiles::Kept(limit) => tracing::debug!(limit, "open-file limit"),
            OpenFiles::Unknown(reason) => tracing::warn!(%reason, "cannot raise the open-file limit"),
        }
        let readiness = Readiness::default();
        if let Some(addr) = prometheus {
            telemetry.serve_admin(addr, readiness.clone()).await?;
        }
        let tls = service_tls(&params)?;
        let outcome = body(Startup { params, config, tls, readiness }).await;
        telemetry.shutdown();
        outcome
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_config_error(e.as_ref()) => fail(service, e.as_ref(), EXIT_CONFIG),
        Err(e) => fail(service, e.as_ref(), 1),
    }
}

/// What became of the open-file limit at start.
enum OpenFiles {
    Raised { from: u64, to: u64 },
    Kept(u64),
    Unknown(String),
}

/// Upper bound when the hard limit is "unlimited", which Linux does not take for open files.
const OPEN_FILES_CAP: u64 = 1 << 20;

/// Raises the soft limit on open files to the hard limit. Every connection is a descriptor, and the usual soft
/// default of 1,024 lets a flood of idle connections starve a service of them (issue 23: 1,100 connections
/// stopped crypto-service answering); the hard limit is what the operator allows.
fn raise_open_file_limit() -> OpenFiles {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let Some(current) = limit.current else { return OpenFiles::Kept(u64::MAX) };
    let target = limit.maximum.unwrap_or(OPEN_FILES_CAP);
    if current >= target {
        return OpenFiles::Kept(current);
    }
    match setrlimit(Resource::Nofile, Rlimit { current: Some(target), maximum: limit.maximum }) {
        Ok(()) => OpenFiles::Raised { from: current, to: target },
        Err(e) => OpenFiles::Unknown(e.to_string()),
    }
}

fn load_config<C: ServiceConfig>(
    service: ServiceName,
    args: impl Iterator<Item = String>,
    env: &BTreeMap<String, String>,
) -> Result<(MeshParams, C), ConfigError> {
    let file = config_file_from_args(args)?.or_else(|| env.get("KEYMESH_CONFIG").map(PathBuf::from));
    let config = C::from_source(&ConfigSource::load(file.as_deref(), env)?)?;
    let params = MeshParams::from_raw(service, config.transport())?;
    Ok((params, config))
}

fn config_file_from_args(mut args: impl Iterator<Item = String>) -> Result<Option<PathBuf>, ConfigError> {
    let mut file = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--config" | "-c" => {
                file =
                    Some(PathBuf::from(args.next().ok_or_else(|| ConfigError::Invalid {
                        field: "--config",
                        reason: "needs a file path".into(),
                    })?))
            }
            other => {
                if let Some(path) = other.strip_prefix("--config=") {
                    file = Some(PathBuf::from(path));
                } else {
                    return Err(ConfigError::Invalid {
                        field: "command line",
                        reason: format!("unknown argument {other:?}; usage: [--config FILE] (or KEYMESH_CONFIG)"),
                    });
                }
            }
        }
    }
    Ok(file)
}

/// The service's TLS material: configured files, or the development PKI.
pub fn service_tls(params: &MeshParams) -> Result<TlsMaterial, MeshError> {
    match &params.tls_files {
        Some(files) => Ok(TlsMaterial::from_files(&files.ca_cert, &files.cert, &files.key)?),
        None => pki::ensure_dev_identity(
            &params.data_dir,
            &DevIdentity { name: params.service.as_str().into(), spiffe_id: params.service.spiffe_id(), server: true },
        ),
    }
}

/// A client identity from the development PKI (the CLI's, or a test application's), stored as
/// `pki/app-<name>.pem` so that no application name can select a service's or the CA's files.
pub fn dev_client_tls(data_dir: &std::path::Path, name: &str) -> Result<TlsMaterial, MeshError> {
    let valid = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(MeshError::Tls(format!("application name {name:?} must be 1-63 characters of [a-z0-9-]")));
    }
    pki::ensure_dev_identity(
        data_dir,
        &DevIdentity { name: format!("app-{name}"), spiffe_id: app_spiffe_id(name), server: false },
    )
}

fn is_config_error(e: &(dyn Error + Send + Sync + 'static)) -> bool {
    e.downcast_ref::<ConfigError>().is_some() || matches!(e.downcast_ref::<MeshError>(), Some(MeshError::Config(_)))
}

fn fail(service: ServiceName, e: &dyn Error, code: u8) -> ExitCode {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !line.contains(&text) {
            line.push_str(": ");
            line.push_str(&text);
        }
        source = s.source();
    }
    // One line, whatever the messages contain.
    let line = line.replace('\n', " ");
    eprintln!("{service}: {line}");
    ExitCode::from(code)
}

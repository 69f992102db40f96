//! keymesh-console: the admin web console's binary. It reads the shared configuration file (the mesh's endpoints
//! and data directory) and its `[console]` section, connects to the mesh with its client certificate (no
//! credentials: every call carries the signed-in person's token), and serves HTTP until SIGTERM or Ctrl-C.
//! Exit codes: 64 for a configuration mistake (the field is named), 1 for a failed start.

use std::{collections::BTreeMap, path::PathBuf, process::ExitCode, sync::Arc, time::Duration};

use keymesh_client::{Credentials, KeymeshClient, TlsMaterial};
use keymesh_console::{
    app::{self, Console},
    config::load,
    session::Sessions,
    signin::{GithubProvider, Provider},
};
use keymesh_mesh::config::ClientParams;

const EXIT_CONFIG: u8 = 64;

enum Failure {
    Config(String),
    Start(String),
}

fn main() -> ExitCode {
    keymesh_mesh::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("keymesh-console: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Config(line)) => {
            eprintln!("keymesh-console: {line}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(Failure::Start(line)) => {
            eprintln!("keymesh-console: {line}");
            ExitCode::FAILURE
        }
    }
}

fn config_path(env: &BTreeMap<String, String>) -> Result<Option<PathBuf>, Failure> {
    let mut args = std::env::args().skip(1);
    match (args.next().as_deref(), args.next()) {
        (None, _) => Ok(env.get("KEYMESH_CONFIG").map(PathBuf::from)),
        (Some("--config" | "-c"), Some(path)) if args.next().is_none() => Ok(Some(PathBuf::from(path))),
        _ => Err(Failure::Config("usage: keymesh-console [--config FILE] (or KEYMESH_CONFIG)".into())),
    }
}

async fn run() -> Result<(), Failure> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let (params, mut config) = load(config_path(&env)?.as_deref(), &env).map_err(Failure::Config)?;
    init_logging(&params);
    let tls = match &config.tls_files {
        Some((cert, key, ca)) => TlsMaterial::from_files(ca, cert, key).map_err(|e| Failure::Start(e.to_string()))?,
        None => {
            keymesh_mesh::run::dev_client_tls(&params.data_dir, "console").map_err(|e| Failure::Start(e.to_string()))?
        }
    };
    let mesh =
        KeymeshClient::new(&params.endpoints, &tls, Credentials::none()).map_err(|e| Failure::Start(e.to_string()))?;
    if tls.files.is_some() {
        tokio::spawn(follow_renewals(tls));
    }
    let provider = match config.oidc.take() {
        Some(settings) => Some(
            Provider::new(settings, config.redirect_uri())
                .map_err(|e| Failure::Config(format!("console.oidc: {e}")))?,
        ),
        None => None,
    };
    let github = match config.github.take() {
        Some(settings) => Some(
            GithubProvider::new(settings, config.github_redirect_uri())
                .map_err(|e| Failure::Config(format!("console.github: {e}")))?,
        ),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Failure::Start(format!("console.listen {}: {e}", config.listen)))?;
    let console = Arc::new(Console {
        sessions: Sessions::new(config.sessions, !config.over_tls()),
        pending: Default::default(),
        mesh,
        provider,
        github,
        config,
    });
    tracing::info!(
        url = %console.config.public_url,
        oidc = console.provider.is_some(),
        github = console.github.is_some(),
        dev_login = console.config.dev_login,
        "keymesh console listening"
    );
    let sweeper = console.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            sweeper.sessions.sweep(std::time::Instant::now());
        }
    });
    axum::serve(listener, app::router(console))
        .with_graceful_shutdown(keymesh_mesh::server::shutdown_signal())
        .await
        .map_err(|e| Failure::Start(e.to_string()))
}

/// Takes renewed certificate files (cert-manager rewrites them before expiry) into the mesh channels, so the
/// console never calls the mesh with an expired certificate and needs no restart.
async fn follow_renewals(mut current: TlsMaterial) {
    let Some(files) = current.files.clone() else { return };
    loop {
        // As often as the services look (reading three small files is cheap).
        tokio::time::sleep(Duration::from_secs(1)).await;
        let renewed = match TlsMaterial::reread(&files) {
            Ok(renewed) => renewed,
            Err(error) => {
                tracing::warn!(%error, "cannot read the certificate files; the certificate in use stays");
                continue;
            }
        };
        if renewed.cert_pem == current.cert_pem && renewed.ca_pem == current.ca_pem {
            continue;
        }
        match current.renew_channels(&renewed) {
            Ok(()) => {
                tracing::info!(serial = %renewed.serial().unwrap_or_default(), "took the renewed client certificate");
                current.cert_pem = renewed.cert_pem;
                current.ca_pem = renewed.ca_pem;
            }
            Err(error) => tracing::warn!(%error, "refused the renewed certificate files; the certificate in use stays"),
        }
    }
}

fn init_logging(params: &ClientParams) {
    let filter = tracing_subscriber::EnvFilter::try_new(&params.log_level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if params.json_logs {
        builder.json().init();
    } else {
        builder.with_ansi(false).init();
    }
}

//! `keymesh`: the command line for the mesh. Uses the embedded defaults (or `--config`), the development
//! PKI's client certificate and the bootstrap credentials of the data directory unless told otherwise.

use std::{
    collections::BTreeMap,
    io::{IsTerminal, Read, Write},
    path::PathBuf,
    process::ExitCode,
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use clap::{Parser, Subcommand};
use keymesh_client::{ClientError, Credentials, Endpoints, KeymeshClient, bootstrap_credentials_path};
use keymesh_mesh::{
    ServiceName,
    config::{self, KmsParams, MeshParams},
    pki::TlsMaterial,
    run::dev_client_tls,
};
use keymesh_proto::v1 as pb;

#[derive(Parser)]
#[command(name = "keymesh", version, about = "Encrypt, decrypt and manage keys with a keymesh mesh")]
struct Cli {
    /// Mesh configuration file (the same one the services read); KEYMESH_* variables apply too.
    #[arg(long, global = true, env = "KEYMESH_CONFIG")]
    config: Option<PathBuf>,
    /// Credentials JSON (client_id, client_secret); default: the bootstrap credentials of the data directory.
    #[arg(long, global = true)]
    credentials: Option<PathBuf>,
    /// Client certificate (PEM); with --tls-key and --tls-ca. Default: one from the development CA.
    #[arg(long, global = true, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<PathBuf>,
    /// Client private key (PEM).
    #[arg(long, global = true)]
    tls_key: Option<PathBuf>,
    /// CA certificate (PEM).
    #[arg(long, global = true)]
    tls_ca: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encrypt standard input to standard output.
    Encrypt {
        /// Key name or id.
        #[arg(long)]
        key: String,
        /// Associated data to bind (must be given again to decrypt).
        #[arg(long, default_value = "")]
        aad: String,
        /// Write base64 text instead of binary (the default when standard output is a terminal).
        #[arg(long)]
        base64: bool,
    },
    /// Decrypt standard input (binary or base64) to standard output.
    Decrypt {
        /// Associated data given at encryption.
        #[arg(long, default_value = "")]
        aad: String,
    },
    /// Manage keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Show the tenant's audit trail.
    Audit {
        /// Only this operation (e.g. Encrypt).
        #[arg(long)]
        operation: Option<String>,
        /// At most this many records.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Print an access token (for grpcurl and friends).
    Token,
    /// The KEK backends of the configuration (run where key-service runs, with its configuration).
    Kms {
        #[command(subcommand)]
        command: KmsCommand,
    },
    /// Check grpc.health.v1 of every service over mTLS (exit status 1 unless all are SERVING).
    Health {
        /// Keep trying for this many seconds before giving up.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create an AES-256-GCM encryption key.
    Create {
        /// Key name, unique in the tenant.
        name: String,
    },
    /// Show a key.
    Get {
        /// Key name or id.
        name: String,
    },
    /// Re-wrap the material of every key of your tenant under the KEK keyring key-service runs with now,
    /// printing progress (admin or owner role). Running it again resumes an interrupted run.
    Rewrap,
}

#[derive(Subcommand)]
enum KmsCommand {
    /// Open every backend of the configured keyring as key-service would, wrap a probe key with each and
    /// unwrap it again; says what is wrong in plain words and exits 1 unless every backend works. A local
    /// backend creates its master key on first use, as key-service would.
    Check,
}

fn main() -> ExitCode {
    keymesh_mesh::install_crypto_provider();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&e.to_string()),
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("keymesh: {message}");
    ExitCode::FAILURE
}

fn setup(cli: &Cli) -> Result<KeymeshClient, ClientError> {
    let (params, endpoints, tls) = connection(cli)?;
    let credentials_path = cli.credentials.clone().unwrap_or_else(|| bootstrap_credentials_path(&params.data_dir));
    let credentials = Credentials::from_file(&credentials_path).map_err(|e| {
        ClientError::Setup(format!("{e} (is the mesh running? `make run` writes the bootstrap credentials there)"))
    })?;
    KeymeshClient::new(&endpoints, &tls, credentials)
}

fn read_stdin() -> Result<Vec<u8>, ClientError> {
    let mut input = Vec::new();
    std::io::stdin().read_to_end(&mut input).map_err(|e| ClientError::Setup(format!("reading standard input: {e}")))?;
    Ok(input)
}

fn write_stdout(bytes: &[u8]) -> Result<(), ClientError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).map_err(|e| ClientError::Setup(format!("writing output: {e}")))
}

fn print_json(value: serde_json::Value) -> Result<(), ClientError> {
    let text = serde_json::to_string_pretty(&value).unwrap_or_default();
    write_stdout(format!("{text}\n").as_bytes())
}

fn key_json(key: &pb::Key) -> serde_json::Value {
    serde_json::json!({
        "key_id": key.key_id,
        "name": key.name,
        "tenant_id": key.tenant_id,
        "algorithm": pb::Algorithm::try_from(key.algorithm).map(|a| a.as_str_name()).unwrap_or("?"),
        "state": pb::KeyState::try_from(key.state).map(|s| s.as_str_name()).unwrap_or("?"),
        "primary_version": key.primary_version,
        "versions": key.versions.iter().map(|v| serde_json::json!({
            "version": v.version,
            "state": pb::KeyVersionState::try_from(v.state).map(|s| s.as_str_name()).unwrap_or("?"),
            "kms_backend": v.kms_backend,
        })).collect::<Vec<_>>(),
    })
}

/// The endpoints and client TLS material from the configuration and flags.
fn connection(cli: &Cli) -> Result<(MeshParams, Endpoints, TlsMaterial), ClientError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let raw = config::load(cli.config.as_deref(), &env).map_err(|e| ClientError::Setup(e.to_string()))?;
    let params =
        MeshParams::from_raw(ServiceName::CryptoService, &raw).map_err(|e| ClientError::Setup(e.to_string()))?;
    let endpoints = params.endpoints.clone();
    let tls = match (&cli.tls_cert, &cli.tls_key, &cli.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => {
            TlsMaterial::from_files(&config::TlsFiles { ca_cert: ca.clone(), cert: cert.clone(), key: key.clone() })
        }
        _ => dev_client_tls(&params.data_dir, "cli"),
    }
    .map_err(|e| ClientError::Setup(e.to_string()))?;
    Ok((params, endpoints, tls))
}

async fn health(cli: &Cli, wait: u64) -> Result<(), ClientError> {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let (params, _, tls) = connection(cli)?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(wait);
    let mut all_serving = true;
    for service in ServiceName::ALL {
        let endpoint = params.endpoints.of(service).to_owned();
        let channel = keymesh_mesh::client::mtls_channel(&endpoint, &tls, service)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        let status = loop {
            let answer = HealthClient::new(channel.clone()).check(HealthCheckRequest { service: String::new() }).await;
            let status = match answer {
                Ok(r) => ServingStatus::try_from(r.into_inner().status)
                    .unwrap_or(ServingStatus::Unknown)
                    .as_str_name()
                    .to_owned(),
                Err(e) => format!("UNREACHABLE ({})", e.message()),
            };
            if status == "SERVING" || std::time::Instant::now() >= deadline {
                break status;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        };
        all_serving &= status == "SERVING";
        write_stdout(format!("{:<15} {endpoint:<22} {status}\n", service.as_str()).as_bytes())?;
    }
    if all_serving { Ok(()) } else { Err(ClientError::Setup("not every service is SERVING".into())) }
}

/// `keymesh kms check`.
async fn kms_check(cli: &Cli) -> Result<(), ClientError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let raw = config::load(cli.config.as_deref(), &env).map_err(|e| ClientError::Setup(e.to_string()))?;
    let params = MeshParams::from_raw(ServiceName::KeyService, &raw).map_err(|e| ClientError::Setup(e.to_string()))?;
    let kms = KmsParams::from_raw(&raw).map_err(|e| ClientError::Setup(e.to_string()))?;
    let keyrings = kms
        .config
        .open_all(&params.data_dir)
        .await
        .map_err(|e| ClientError::Setup(format!("the keyring cannot be opened: {e}")))?;
    let probe = keymesh_crypto::SecretKey::generate(32).map_err(|e| ClientError::Setup(e.to_string()))?;
    let context = keymesh_kms::WrapContext {
        tenant_id: "keymesh-kms-check".into(),
        key_id: "probe".into(),
        version: 1,
        algorithm: "AES-256-GCM".into(),
    };
    let mut failures = 0;
    // Each backend once, though several keyrings may share it; a tenant's role is shown with its tenant.
    let mut seen = std::collections::BTreeSet::new();
    let members = keyrings.all().flat_map(|(tenant, ring)| ring.members().iter().map(move |m| (tenant, m)));
    for (tenant, member) in members {
        if !seen.insert(member.name.clone()) {
            continue;
        }
        let role = match tenant {
            None => format!("{:?}", member.role),
            Some(tenant) => format!("{:?} of tenant {tenant}", member.role),
        };
        let started = std::time::Instant::now();
        let outcome = match member.backend.wrap(&probe, &context).await {
            Ok(wrapped) => match member.backend.unwrap(&wrapped, &context).await {
                Ok(back) if back.expose_secret() == probe.expose_secret() => {
                    Ok(format!("wrap and unwrap work ({} ms)", started.elapsed().as_millis()))
                }
                Ok(_) => Err("unwrap returned different bytes than were wrapped".to_owned()),
                Err(e) => Err(format!("wrapping works but unwrapping fails: {e}")),
            },
            Err(e) => Err(format!("cannot wrap: {e}")),
        };
        let description = member.backend.describe();
        let line = match outcome {
            Ok(ok) => format!("ok    {:<12} {:<10} {} — {ok}\n", member.name, role, description.detail),
            Err(problem) => {
                failures += 1;
                format!("FAIL  {:<12} {:<10} {} — {problem}\n", member.name, role, description.detail)
            }
        };
        write_stdout(line.as_bytes())?;
    }
    if failures == 0 { Ok(()) } else { Err(ClientError::Setup(format!("{failures} KMS backend(s) failed the check"))) }
}

/// `keymesh keys rewrap`: follows RewrapKeys, one line per progress report.
async fn rewrap(client: &KeymeshClient) -> Result<(), ClientError> {
    let request = client.authorized(pb::RewrapKeysRequest {}).await?;
    let mut stream = client.key_service().rewrap_keys(request).await.map_err(ClientError::Status)?.into_inner();
    let mut last = None;
    while let Some(progress) = stream.message().await.map_err(ClientError::Status)? {
        let line = format!(
            "{}/{} keys, {} versions re-wrapped, {} already current, {} failed{}\n",
            progress.keys_done,
            progress.keys_total,
            progress.versions_rewrapped,
            progress.versions_current,
            progress.versions_failed,
            if progress.resumed { " (resumed)" } else { "" }
        );
        std::io::stderr().write_all(line.as_bytes()).map_err(|e| ClientError::Setup(e.to_string()))?;
        last = Some(progress);
    }
    match last {
        Some(p) if p.done && p.versions_failed == 0 => write_stdout(format!("re-wrapped to {}\n", p.target).as_bytes()),
        Some(p) if p.done => Err(ClientError::Setup(format!(
            "{} version(s) could not be re-wrapped; last error: {}",
            p.versions_failed, p.last_error
        ))),
        _ => Err(ClientError::Setup("the re-wrap stream ended early; run the command again to resume".into())),
    }
}

async fn run(cli: Cli) -> Result<(), ClientError> {
    if let Command::Health { wait } = cli.command {
        return health(&cli, wait).await;
    }
    if let Command::Kms { command: KmsCommand::Check } = cli.command {
        return kms_check(&cli).await;
    }
    let client = setup(&cli)?;
    match cli.command {
        Command::Encrypt { key, aad, base64 } => {
            let ciphertext = client.encrypt(&key, read_stdin()?, aad.into_bytes()).await?;
            if base64 || std::io::stdout().is_terminal() {
                write_stdout(format!("{}\n", B64.encode(ciphertext)).as_bytes())
            } else {
                write_stdout(&ciphertext)
            }
        }
        Command::Decrypt { aad } => {
            let input = read_stdin()?;
            // Binary ciphertexts start with a small big-endian header length; anything else is base64 text.
            let ciphertext = if input.first().is_some_and(|b| *b < 0x10) {
                input
            } else {
                B64.decode(input.trim_ascii())
                    .map_err(|_| ClientError::Setup("input is neither a keymesh ciphertext nor base64 of one".into()))?
            };
            let plaintext = client.decrypt(ciphertext, aad.into_bytes()).await?;
            write_stdout(&plaintext)
        }
        Command::Keys { command: KeysCommand::Create { name } } => {
            print_json(key_json(&client.create_key(&name).await?))
        }
        Command::Keys { command: KeysCommand::Get { name } } => print_json(key_json(&client.get_key(&name).await?)),
        Command::Keys { command: KeysCommand::Rewrap } => rewrap(&client).await,
        Command::Audit { operation, limit } => {
            let records = client
                .audit_query(pb::QueryRequest { operation: operation.unwrap_or_default(), limit, ..Default::default() })
                .await?;
            for record in records {
                let Some(e) = record.event else { continue };
                let outcome = pb::Outcome::try_from(e.outcome).map(|o| o.as_str_name()).unwrap_or("?");
                let line = format!(
                    "{:>6} {} {:<14} {:<10} {} {} {}\n",
                    record.sequence,
                    e.time.map(|t| t.seconds).unwrap_or_default(),
                    e.service,
                    e.operation,
                    e.identity,
                    e.resource,
                    outcome.trim_start_matches("OUTCOME_"),
                );
                write_stdout(line.as_bytes())?;
            }
            Ok(())
        }
        Command::Health { .. } | Command::Kms { .. } => Ok(()),
        Command::Token => {
            let token = client.access_token().await?;
            write_stdout(format!("{}\n", token.as_str()).as_bytes())
        }
    }
}

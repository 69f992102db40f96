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
use keymesh_client::{
    ClientError, Credentials, Endpoints, KeymeshClient, bootstrap_credentials_path,
    envelope::Associated,
    streaming::{StreamOptions, Via},
};
use keymesh_config::KeymeshConfig;
use keymesh_mesh::rpc_telemetry::{Sampling, child_or_root_context};
use keymesh_mesh::{ServiceName, config::MeshParams, pki::TlsMaterial, run::ServiceConfig, run::dev_client_tls};
use keymesh_proto::v1::{self as pb, sign_request, verify_request};
use opentelemetry::{
    propagation::Extractor,
    trace::{FutureExt, TraceContextExt},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;

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
    /// Print the command's trace id on standard error: its audit events (and spans, where the services export
    /// them) carry it. The command continues the trace of `TRACEPARENT` when it is set, else starts its own.
    #[arg(long, global = true)]
    show_trace: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Encrypt standard input to standard output (one Encrypt call, up to the unary limit), or a file of any
    /// size with --in and --out (streamed, with progress on a terminal).
    Encrypt {
        /// Key name or id.
        #[arg(long)]
        key: String,
        #[command(flatten)]
        associated: AssociatedArgs,
        /// Write base64 text instead of binary (the default when standard output is a terminal; not with --in).
        #[arg(long, conflicts_with = "input")]
        base64: bool,
        #[command(flatten)]
        files: FileArgs,
        /// Plaintext bytes per stream segment (4096 to 2097152; default 1 MiB).
        #[arg(long, default_value_t = 0, requires = "input")]
        segment_size: u32,
    },
    /// Decrypt standard input (binary or base64) to standard output, or a file with --in and --out (a stream,
    /// an envelope, or a unary ciphertext; the output file appears only once the whole input verified).
    Decrypt {
        #[command(flatten)]
        associated: AssociatedArgs,
        /// Refuse a ciphertext made under another key (name or id).
        #[arg(long, default_value = "")]
        key: String,
        #[command(flatten)]
        files: FileArgs,
    },
    /// Sign standard input (the message) with a SIGN key; prints the signature in base64.
    Sign {
        /// Key name or id.
        #[arg(long)]
        key: String,
        /// The input is ML-DSA's 64-byte external mu (FIPS 204), not the message.
        #[arg(long)]
        mu: bool,
        /// ML-DSA's deterministic variant (default: hedged); Ed25519 always is.
        #[arg(long)]
        deterministic: bool,
    },
    /// Verify a signature over standard input (the message, or --mu); prints valid or invalid and exits 1
    /// unless valid.
    Verify {
        /// Key name or id.
        #[arg(long)]
        key: String,
        /// The signature, base64.
        #[arg(long)]
        signature: String,
        /// The input is ML-DSA's 64-byte external mu.
        #[arg(long)]
        mu: bool,
        /// The version that signed (default: the primary).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Encapsulate to a KEM key (ML-KEM) in the service: prints {"ciphertext", "shared_secret"} in base64.
    Encapsulate {
        /// Key name or id.
        #[arg(long)]
        key: String,
    },
    /// Decapsulate an ML-KEM ciphertext (standard input, binary or base64) with a KEM key: prints the shared
    /// secret in base64.
    Decapsulate {
        /// Key name or id.
        #[arg(long)]
        key: String,
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

/// Associated data bound to a ciphertext.
#[derive(clap::Args)]
struct AssociatedArgs {
    /// Associated data to bind (must be given again to decrypt).
    #[arg(long, default_value = "")]
    aad: String,
    /// Encryption context entry KEY=VALUE, repeatable (all must be given again to decrypt).
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = parse_context_entry)]
    context: Vec<(String, String)>,
}

impl AssociatedArgs {
    fn to_associated(&self) -> Associated {
        Associated { aad: self.aad.as_bytes().to_vec(), encryption_context: self.context.iter().cloned().collect() }
    }
}

fn parse_context_entry(entry: &str) -> Result<(String, String), String> {
    entry
        .split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{entry:?} is not KEY=VALUE"))
}

/// Streaming a file instead of standard input.
#[derive(clap::Args)]
struct FileArgs {
    /// Input file, streamed in constant memory.
    #[arg(long = "in", value_name = "PATH", requires = "output")]
    input: Option<PathBuf>,
    /// Output file; written beside its final name and moved into place only on success.
    #[arg(long = "out", value_name = "PATH", requires = "input")]
    output: Option<PathBuf>,
    /// Encrypt or decrypt here with a data key (one GenerateDataKey or Decrypt call) instead of in
    /// crypto-service; the data never leaves this machine.
    #[arg(long, requires = "input")]
    local: bool,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key: AES-256-GCM for encryption unless --purpose or --algorithm say otherwise.
    Create {
        /// Key name, unique in the tenant.
        name: String,
        /// encrypt, sign, mac or kem (default: the algorithm's own, or encrypt).
        #[arg(long, value_parser = ["encrypt", "sign", "mac", "kem"])]
        purpose: Option<String>,
        /// The algorithm, as the API names it without ALGORITHM_, in any case, dashes or underscores
        /// (e.g. ml-kem-768, ml-dsa-65, ml-kem-768-aes-256-gcm, hpke-xwing-sha256-aes-256-gcm, ecdsa-p256-sha256).
        #[arg(long)]
        algorithm: Option<String>,
    },
    /// Print a key's public key (SubjectPublicKeyInfo PEM), for the asymmetric and post-quantum keys.
    PublicKey {
        /// Key name or id.
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
    let trace = command_trace();
    if cli.show_trace {
        eprintln!("trace id: {}", trace.span().span_context().trace_id());
    }
    match runtime.block_on(run(cli).with_context(trace)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e.to_string()),
    }
}

/// The trace every call of this command belongs to: the one `TRACEPARENT` (and `TRACESTATE`) name, as the
/// OpenTelemetry convention for a process started inside a trace (a CI job, a script) has it, or a new sampled
/// one. The SDK writes it into each request as `traceparent`.
fn command_trace() -> opentelemetry::Context {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let carrier: std::collections::HashMap<String, String> =
        [("traceparent", "TRACEPARENT"), ("tracestate", "TRACESTATE")]
            .into_iter()
            .filter_map(|(field, variable)| Some((field.to_owned(), std::env::var(variable).ok()?)))
            .collect();
    let carrier = (!carrier.is_empty()).then_some(carrier);
    child_or_root_context(carrier.as_ref().map(|c| c as &dyn Extractor), Sampling::ALWAYS)
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
    let file = KeymeshConfig::load(cli.config.as_deref(), &env).map_err(|e| ClientError::Setup(e.to_string()))?;
    let params = MeshParams::from_raw(ServiceName::CryptoService, file.transport())
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let endpoints = params.endpoints.clone();
    let tls = match (&cli.tls_cert, &cli.tls_key, &cli.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => TlsMaterial::from_files(ca, cert, key).map_err(|e| e.to_string()),
        _ => dev_client_tls(&params.data_dir, "cli").map_err(|e| e.to_string()),
    }
    .map_err(ClientError::Setup)?;
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
    let file = KeymeshConfig::load(cli.config.as_deref(), &env).map_err(|e| ClientError::Setup(e.to_string()))?;
    let params = MeshParams::from_raw(ServiceName::KeyService, file.transport())
        .map_err(|e| ClientError::Setup(e.to_string()))?;
    let kms = file.kms_checked().map_err(|e| ClientError::Setup(e.to_string()))?;
    let keyrings = kms
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

fn via(local: bool) -> Via {
    if local { Via::Local } else { Via::Service }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Encrypt,
    Decrypt,
}

/// `keymesh encrypt|decrypt --in --out`: streams the file, with a progress bar when standard error is a
/// terminal. A file holding a unary ciphertext (not a stream) is decrypted with one Decrypt call.
async fn stream_file(
    client: &KeymeshClient,
    options: &StreamOptions,
    input: &std::path::Path,
    output: &std::path::Path,
    direction: Direction,
) -> Result<(), ClientError> {
    let size = std::fs::metadata(input).map_err(|e| ClientError::Io(format!("{}: {e}", input.display())))?.len();
    if direction == Direction::Decrypt && !starts_like_stream(input)? {
        return decrypt_unary_file(client, options, input, output).await;
    }
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(size);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} {bytes}/{total_bytes} [{wide_bar}] {bytes_per_sec}, {eta} left",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut progress = |done: u64| bar.set_position(done);
    let started = std::time::Instant::now();
    let result = match direction {
        Direction::Encrypt => client.encrypt_file(options, input, output, &mut progress).await,
        Direction::Decrypt => client.decrypt_file(options, input, output, &mut progress).await,
    };
    bar.finish_and_clear();
    let total = result?;
    let seconds = started.elapsed().as_secs_f64().max(1e-6);
    let line = format!(
        "{} {} bytes in {:.1} s ({:.0} MB/s) to {}\n",
        if direction == Direction::Encrypt { "encrypted" } else { "decrypted" },
        total,
        seconds,
        total as f64 / seconds / 1e6,
        output.display()
    );
    std::io::stderr().write_all(line.as_bytes()).map_err(|e| ClientError::Io(e.to_string()))
}

fn starts_like_stream(path: &std::path::Path) -> Result<bool, ClientError> {
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))?;
    let n = file.read(&mut head).map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))?;
    Ok(keymesh_crypto::stream::looks_like_stream(&head[..n]))
}

async fn decrypt_unary_file(
    client: &KeymeshClient,
    options: &StreamOptions,
    input: &std::path::Path,
    output: &std::path::Path,
) -> Result<(), ClientError> {
    let ciphertext = std::fs::read(input).map_err(|e| ClientError::Io(format!("{}: {e}", input.display())))?;
    let request = client
        .authorized(pb::DecryptRequest {
            ciphertext,
            key: options.key.clone(),
            aad: options.associated.aad.clone(),
            encryption_context: options.associated.encryption_context.clone(),
            ..Default::default()
        })
        .await?;
    let plaintext = zeroize::Zeroizing::new(client.crypto_service().decrypt(request).await?.into_inner().plaintext);
    std::fs::write(output, &plaintext).map_err(|e| ClientError::Io(format!("{}: {e}", output.display())))
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
        Command::Encrypt { key, associated, base64, files, segment_size } => {
            let associated = associated.to_associated();
            if let FileArgs { input: Some(input), output: Some(output), local } = files {
                let options = StreamOptions { key, associated, segment_size, via: via(local) };
                return stream_file(&client, &options, &input, &output, Direction::Encrypt).await;
            }
            let request = client
                .authorized(pb::EncryptRequest {
                    key,
                    plaintext: read_stdin()?,
                    aad: associated.aad,
                    encryption_context: associated.encryption_context,
                    ..Default::default()
                })
                .await?;
            let ciphertext = client.crypto_service().encrypt(request).await?.into_inner().ciphertext;
            if base64 || std::io::stdout().is_terminal() {
                write_stdout(format!("{}\n", B64.encode(ciphertext)).as_bytes())
            } else {
                write_stdout(&ciphertext)
            }
        }
        Command::Decrypt { associated, key, files } => {
            let associated = associated.to_associated();
            if let FileArgs { input: Some(input), output: Some(output), local } = files {
                let options = StreamOptions { key, associated, segment_size: 0, via: via(local) };
                return stream_file(&client, &options, &input, &output, Direction::Decrypt).await;
            }
            let input = read_stdin()?;
            // Binary ciphertexts start with a small big-endian header length; anything else is base64 text.
            let ciphertext = if input.first().is_some_and(|b| *b < 0x10) {
                input
            } else {
                B64.decode(input.trim_ascii())
                    .map_err(|_| ClientError::Setup("input is neither a keymesh ciphertext nor base64 of one".into()))?
            };
            if keymesh_crypto::stream::looks_like_stream(&ciphertext) {
                let plaintext = client.open_envelope(&ciphertext, &associated, &key).await?;
                return write_stdout(&plaintext);
            }
            let request = client
                .authorized(pb::DecryptRequest {
                    ciphertext,
                    key,
                    aad: associated.aad,
                    encryption_context: associated.encryption_context,
                    ..Default::default()
                })
                .await?;
            let plaintext =
                zeroize::Zeroizing::new(client.crypto_service().decrypt(request).await?.into_inner().plaintext);
            write_stdout(&plaintext)
        }
        Command::Keys { command: KeysCommand::Create { name, purpose: None, algorithm: None } } => {
            print_json(key_json(&client.create_key(&name).await?))
        }
        Command::Keys { command: KeysCommand::Create { name, purpose, algorithm } } => {
            let purpose = match purpose.as_deref() {
                Some(purpose) => {
                    pb::KeyPurpose::from_str_name(&format!("KEY_PURPOSE_{}", purpose.to_ascii_uppercase()))
                        .ok_or_else(|| ClientError::Setup(format!("unknown purpose {purpose:?}")))?
                }
                None => pb::KeyPurpose::Unspecified,
            };
            let algorithm = match algorithm.as_deref() {
                Some(name) => algorithm_named(name)?,
                None => pb::Algorithm::Unspecified,
            };
            let request = pb::CreateKeyRequest {
                name,
                purpose: purpose as i32,
                algorithm: algorithm as i32,
                ..Default::default()
            };
            let response = client.key_service().create_key(client.authorized(request).await?).await?.into_inner();
            let key = response.key.ok_or_else(|| ClientError::Setup("CreateKey returned no key".into()))?;
            print_json(key_json(&key))
        }
        Command::Keys { command: KeysCommand::PublicKey { name } } => {
            let request = pb::GetPublicKeyRequest { key: name, version: 0 };
            let public = client.key_service().get_public_key(client.authorized(request).await?).await?.into_inner();
            write_stdout(public.public_key_pem.as_bytes())
        }
        Command::Sign { key, mu, deterministic } => {
            let input = read_stdin()?;
            let input = if mu { sign_request::Input::Mu(input) } else { sign_request::Input::Message(input) };
            let randomness = if deterministic {
                pb::SignatureRandomness::Deterministic
            } else {
                pb::SignatureRandomness::Unspecified
            };
            let request =
                pb::SignRequest { key, input: Some(input), randomness: randomness as i32, ..Default::default() };
            let signed = client.crypto_service().sign(client.authorized(request).await?).await?.into_inner();
            write_stdout(format!("{}\n", B64.encode(signed.signature)).as_bytes())
        }
        Command::Verify { key, signature, mu, version } => {
            let signature =
                B64.decode(signature.trim()).map_err(|_| ClientError::Setup("--signature is not base64".into()))?;
            let input = read_stdin()?;
            let input = if mu { verify_request::Input::Mu(input) } else { verify_request::Input::Message(input) };
            let request =
                pb::VerifyRequest { key, key_version: version, input: Some(input), signature, ..Default::default() };
            let verified = client.crypto_service().verify(client.authorized(request).await?).await?.into_inner();
            write_stdout(if verified.valid { b"valid\n" } else { b"invalid\n" })?;
            if verified.valid { Ok(()) } else { Err(ClientError::Setup("the signature does not verify".into())) }
        }
        Command::Encapsulate { key } => {
            let request = pb::EncapsulateRequest { key };
            let out = client.crypto_service().encapsulate(client.authorized(request).await?).await?.into_inner();
            let secret = zeroize::Zeroizing::new(out.shared_secret);
            // Written by hand rather than through serde_json, so every copy of the secret is wiped; base64 and
            // a key id need no escaping.
            let text = zeroize::Zeroizing::new(format!(
                "{{\n  \"ciphertext\": \"{}\",\n  \"shared_secret\": \"{}\",\n  \"key_id\": \"{}\",\n  \"key_version\": {}\n}}\n",
                B64.encode(&out.ciphertext),
                zeroize::Zeroizing::new(B64.encode(&*secret)).as_str(),
                out.key_id,
                out.key_version
            ));
            write_stdout(text.as_bytes())
        }
        Command::Decapsulate { key } => {
            let input = read_stdin()?;
            // An ML-KEM ciphertext is 768 bytes or more: text this short and all base64 is base64.
            let ciphertext = match B64.decode(input.trim_ascii()) {
                Ok(decoded) if !input.is_empty() => decoded,
                _ => input,
            };
            let request = pb::DecapsulateRequest { key, key_version: 0, ciphertext };
            let out = client.crypto_service().decapsulate(client.authorized(request).await?).await?.into_inner();
            let secret = zeroize::Zeroizing::new(out.shared_secret);
            let mut line = zeroize::Zeroizing::new(B64.encode(&*secret));
            line.push('\n');
            write_stdout(line.as_bytes())
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

/// An algorithm as the CLI takes it: the API's name without `ALGORITHM_`, in any case, with dashes or
/// underscores (`ml-kem-768`, `ML_DSA_65`).
fn algorithm_named(name: &str) -> Result<pb::Algorithm, ClientError> {
    let wire = format!("ALGORITHM_{}", name.to_ascii_uppercase().replace('-', "_"));
    pb::Algorithm::from_str_name(&wire).filter(|a| *a != pb::Algorithm::Unspecified).ok_or_else(|| {
        ClientError::Setup(format!("unknown algorithm {name:?} (e.g. aes-256-gcm, ml-kem-768, ml-dsa-65, ed25519)"))
    })
}

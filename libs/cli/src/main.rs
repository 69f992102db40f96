//! `keymesh`: the command line for the mesh, one subcommand for every public RPC. Uses the embedded defaults
//! (or `--config`), the development PKI's client certificate and the bootstrap credentials of the data directory
//! unless told otherwise. This file parses and dispatches; each area's commands live in their own module.

mod audit;
mod data_plane;
mod identity;
mod keys;
mod operate;
mod render;

use std::{
    collections::{BTreeMap, HashMap},
    io::{Read, Write},
    path::PathBuf,
    process::ExitCode,
};

use clap::{CommandFactory, Parser, Subcommand};
use keymesh_client::{ClientError, Credentials, Endpoints, KeymeshClient, bootstrap_credentials_path};
use keymesh_config::KeymeshConfig;
use keymesh_mesh::rpc_telemetry::{Sampling, child_or_root_context};
use keymesh_mesh::{config::ClientParams, pki::TlsMaterial, run::ServiceConfig, run::dev_client_tls};
use opentelemetry::{
    propagation::Extractor,
    trace::{FutureExt, TraceContextExt},
};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use render::Output;

const EXIT_CODES: &str = "\
Exit status:
  0  success
  1  a negative answer: a signature or MAC that does not verify, a broken audit chain, a service not SERVING,
     a KMS backend failing `kms check`, versions `keys rewrap` could not re-wrap
  2  the command line is wrong (usage)
  3  a local problem: configuration, certificates, credentials, files, an argument the CLI cannot use
  4  the service refused the call; the message starts with the gRPC code (e.g. NOT_FOUND, PERMISSION_DENIED)
  5  the service could not be reached or did not answer in time (UNAVAILABLE, DEADLINE_EXCEEDED): retry later";

#[derive(Parser)]
#[command(name = "keymesh", version, about = "Encrypt, decrypt and manage keys with a keymesh mesh", after_help = EXIT_CODES)]
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
    /// table (for people; times in RFC 3339) or json (the protobuf JSON mapping of the response with the
    /// .proto's field names: stable for scripts).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    /// Print the command's trace id on standard error: its audit events (and spans, where the services export
    /// them) carry it. The command continues the trace of `TRACEPARENT` when it is set, else starts its own.
    #[arg(long, global = true)]
    show_trace: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    #[command(flatten)]
    Data(data_plane::DataCommand),
    /// Manage keys: create, list, rotate, enable, disable, delete, policies, import, public keys.
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Tenants (CreateTenant).
    Tenants {
        #[command(subcommand)]
        command: identity::TenantsCommand,
    },
    /// Applications and their client secrets.
    Applications {
        #[command(subcommand)]
        command: identity::ApplicationsCommand,
    },
    /// Access tokens: issue, revoke, the signing keys (JWKS).
    Tokens {
        #[command(subcommand)]
        command: identity::TokensCommand,
    },
    /// Print an access token (for grpcurl and friends); `tokens issue` shows the whole answer.
    Token,
    /// Log in once for `register` and the SDKs' auto-registration: exchanges client credentials (--credentials, or
    /// --client-id with the secret on standard input) or a platform token (--subject-token-file) and stores the
    /// session, never the secret, in ~/.keymesh/credentials.json (0600, in a 0700 directory).
    Login {
        /// The application's client id; its secret is read from standard input.
        #[arg(long, conflicts_with = "subject_token_file")]
        client_id: Option<String>,
        /// Log in with this platform token (an OIDC ID token, a Kubernetes service-account token) by token
        /// exchange; the session keeps the path and exchanges it afresh each time.
        #[arg(long, value_name = "PATH")]
        subject_token_file: Option<PathBuf>,
    },
    /// Register an application for the logged-in identity (the SDKs' auto-registration): creates it, or finds it
    /// again, and stores its credentials in ~/.keymesh/apps/<client_id>.json (0600).
    Register {
        /// The application's name (1 to 48 of [a-z0-9-], starting with a letter).
        name: String,
        /// The environment: development, staging, production…
        #[arg(long, default_value = "development")]
        environment: String,
        /// The team that owns it.
        #[arg(long, default_value = "")]
        team: String,
        /// A key name pattern it may use, repeatable (default: `default`); it gets at most what you hold on them.
        #[arg(long = "key")]
        keys: Vec<String>,
    },
    /// The tenant's audit trail: query (the default), export, verify, checkpoints.
    Audit(audit::AuditArgs),
    /// The KEK backends of the configuration (run where key-service runs, with its configuration).
    Kms {
        #[command(subcommand)]
        command: operate::KmsCommand,
    },
    /// Check grpc.health.v1 of every service over mTLS (exit status 1 unless all are SERVING).
    Health {
        /// Keep trying for this many seconds before giving up.
        #[arg(long, default_value_t = 0)]
        wait: u64,
    },
    /// Print a shell completion script: `source <(keymesh completions bash)`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Why a command failed, which decides the exit status (see `EXIT_CODES`).
enum Failure {
    /// The call worked and the answer is no.
    Negative(String),
    /// Anything else.
    Client(ClientError),
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self::Client(e)
    }
}

impl From<tonic::Status> for Failure {
    fn from(status: tonic::Status) -> Self {
        Self::Client(ClientError::Status(status))
    }
}

type Outcome = Result<(), Failure>;

fn main() -> ExitCode {
    keymesh_mesh::install_crypto_provider();
    let cli = Cli::parse();
    if let Command::Completions { shell } = cli.command {
        clap_complete::generate(shell, &mut Cli::command(), "keymesh", &mut std::io::stdout());
        return ExitCode::SUCCESS;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => return fail(&Failure::Client(ClientError::Setup(e.to_string()))),
    };
    let trace = command_trace();
    if cli.show_trace {
        eprintln!("trace id: {}", trace.span().span_context().trace_id());
    }
    match runtime.block_on(run(cli).with_context(trace)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => fail(&failure),
    }
}

/// The trace every call of this command belongs to: the one `TRACEPARENT` (and `TRACESTATE`) name, as the
/// OpenTelemetry convention for a process started inside a trace (a CI job, a script) has it, or a new sampled
/// one. The SDK writes it into each request as `traceparent`.
fn command_trace() -> opentelemetry::Context {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let carrier: HashMap<String, String> = [("traceparent", "TRACEPARENT"), ("tracestate", "TRACESTATE")]
        .into_iter()
        .filter_map(|(field, variable)| Some((field.to_owned(), std::env::var(variable).ok()?)))
        .collect();
    let carrier = (!carrier.is_empty()).then_some(carrier);
    child_or_root_context(carrier.as_ref().map(|c| c as &dyn Extractor), Sampling::ALWAYS)
}

/// One line on standard error, the gRPC code first when the service answered; the exit status by kind.
fn fail(failure: &Failure) -> ExitCode {
    let (line, code) = match failure {
        Failure::Negative(message) => (message.clone(), 1),
        Failure::Client(ClientError::Status(status)) => {
            let code = match status.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => 5,
                _ => 4,
            };
            (format!("{}: {}", code_name(status.code()), status.message()), code)
        }
        Failure::Client(other) => (other.to_string(), 3),
    };
    eprintln!("keymesh: {}", line.replace('\n', " "));
    ExitCode::from(code)
}

/// The gRPC code as the protocol spells it (`NOT_FOUND`), which is what other tools and the docs print.
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        tonic::Code::Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

async fn run(cli: Cli) -> Outcome {
    let output = cli.output;
    match &cli.command {
        Command::Health { wait } => return operate::health(&cli, *wait).await,
        Command::Kms { command: operate::KmsCommand::Check } => return operate::kms_check(&cli).await,
        Command::Login { client_id, subject_token_file } => {
            return identity::login(&cli, client_id.clone(), subject_token_file.clone()).await;
        }
        Command::Register { name, environment, team, keys } => {
            let request = keymesh_proto::v1::RegisterApplicationRequest {
                name: name.clone(),
                team: team.clone(),
                environment: environment.clone(),
                keys: keys.clone(),
            };
            return identity::register(&cli, output, request).await;
        }
        _ => {}
    }
    // The configuration and certificate are read once, for the client and the credentials' path alike.
    let (params, endpoints, tls) = connection(&cli)?;
    let credentials_path = cli.credentials.clone().unwrap_or_else(|| bootstrap_credentials_path(&params.data_dir));
    let client = match &cli.command {
        // Token calls need no access token: they must work where there are no credentials to read (a pod, a
        // laptop with only a refresh token).
        Command::Tokens { .. } => KeymeshClient::new(&endpoints, &tls, Credentials::none())?,
        _ => {
            let credentials = Credentials::from_file(&credentials_path).map_err(|e| {
                ClientError::Setup(format!(
                    "{e} (is the mesh running? `make run` writes the bootstrap credentials there)"
                ))
            })?;
            KeymeshClient::new(&endpoints, &tls, credentials)?
        }
    };
    match cli.command {
        Command::Data(command) => data_plane::run(&client, output, command).await,
        Command::Keys { command } => keys::run(&client, output, command).await,
        Command::Tenants { command } => identity::tenants(&client, output, command).await,
        Command::Applications { command } => identity::applications(&client, output, command).await,
        Command::Tokens { command } => identity::tokens(&client, &credentials_path, output, command).await,
        Command::Token => {
            let token = client.access_token().await?;
            Ok(write_stdout(format!("{}\n", token.as_str()).as_bytes())?)
        }
        Command::Audit(args) => audit::run(&client, output, args).await,
        Command::Health { .. }
        | Command::Kms { .. }
        | Command::Completions { .. }
        | Command::Login { .. }
        | Command::Register { .. } => Ok(()),
    }
}

/// The endpoints and client TLS material from the configuration and flags.
pub(crate) fn connection(cli: &Cli) -> Result<(ClientParams, Endpoints, TlsMaterial), ClientError> {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let file = KeymeshConfig::load(cli.config.as_deref(), &env).map_err(|e| ClientError::Setup(e.to_string()))?;
    let params = ClientParams::from_raw(file.transport()).map_err(|e| ClientError::Setup(e.to_string()))?;
    let endpoints = params.endpoints.clone();
    let tls = match (&cli.tls_cert, &cli.tls_key, &cli.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => TlsMaterial::from_files(ca, cert, key).map_err(|e| e.to_string()),
        _ => dev_client_tls(&params.data_dir, "cli").map_err(|e| e.to_string()),
    }
    .map_err(ClientError::Setup)?;
    Ok((params, endpoints, tls))
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

/// `KEY=VALUE` as a pair (labels, encryption context).
fn parse_pair(entry: &str) -> Result<(String, String), String> {
    entry
        .split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("{entry:?} is not KEY=VALUE"))
}

/// An enum value as the CLI takes it: the API's name without its type prefix, in any case, with dashes or
/// underscores (`ml-kem-768` for `ALGORITHM_ML_KEM_768`, `decrypt` for `OPERATION_DECRYPT`).
fn enum_named<E>(prefix: &str, name: &str, from: impl Fn(&str) -> Option<E>, what: &str) -> Result<E, ClientError> {
    let wire = format!("{prefix}{}", name.to_ascii_uppercase().replace('-', "_"));
    from(&wire)
        .filter(|_| !wire.ends_with("_UNSPECIFIED"))
        .ok_or_else(|| ClientError::Setup(format!("unknown {what} {name:?}")))
}

/// A duration as `90s`, `15m`, `12h` or `30d`.
fn parse_duration(text: &str) -> Result<prost_types::Duration, String> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: i64 = number.parse().map_err(|_| format!("{text:?} is not a duration like 90s, 15m, 12h or 30d"))?;
    let unit = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(format!("{text:?} is not a duration like 90s, 15m, 12h or 30d")),
    };
    let seconds = n.checked_mul(unit).ok_or_else(|| format!("{text:?} is too long"))?;
    Ok(prost_types::Duration { seconds, nanos: 0 })
}

/// An RFC 3339 time (`2026-12-01T00:00:00Z`).
fn parse_time(text: &str) -> Result<prost_types::Timestamp, String> {
    text.parse().map_err(|_| format!("{text:?} is not an RFC 3339 time like 2026-12-01T08:00:00Z"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_command_and_argument_is_documented() {
        Cli::command().debug_assert();
        fn walk(command: &clap::Command, path: &str) {
            for sub in command.get_subcommands() {
                let path = format!("{path} {}", sub.get_name());
                assert!(sub.get_about().is_some(), "`{path}` has no help text");
                for arg in sub.get_arguments().filter(|a| !a.is_global_set() && a.get_id() != "help") {
                    assert!(arg.get_help().is_some(), "`{path}` argument {} has no help text", arg.get_id());
                }
                walk(sub, &path);
            }
        }
        walk(&Cli::command(), "keymesh");
    }

    #[test]
    fn durations_and_times_parse_or_say_what_is_expected() {
        assert_eq!(parse_duration("30d").map(|d| d.seconds), Ok(2_592_000));
        assert_eq!(parse_duration("90s").map(|d| d.seconds), Ok(90));
        assert!(parse_duration("1w").unwrap_err().contains("like 90s"));
        assert!(parse_duration("999999999999999999d").unwrap_err().contains("too long"));
        assert_eq!(parse_time("2026-12-01T00:00:00Z").map(|t| t.seconds), Ok(1_796_083_200));
        assert!(parse_time("yesterday").unwrap_err().contains("RFC 3339"));
    }

    #[test]
    fn enum_names_take_any_case_and_dashes() {
        use keymesh_proto::v1 as pb;
        assert_eq!(
            enum_named("ALGORITHM_", "ml-kem-768", pb::Algorithm::from_str_name, "algorithm").ok(),
            Some(pb::Algorithm::MlKem768)
        );
        assert!(enum_named("ALGORITHM_", "unspecified", pb::Algorithm::from_str_name, "algorithm").is_err());
        assert_eq!(
            enum_named("OPERATION_", "Decrypt", pb::Operation::from_str_name, "operation").ok(),
            Some(pb::Operation::Decrypt)
        );
    }
}

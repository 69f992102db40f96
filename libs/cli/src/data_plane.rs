//! The data-plane commands (CryptoService): data goes in on standard input or a file and comes out on standard
//! output or a file, so they compose in pipes; `--output json` prints the whole response instead where a
//! response has more to say than its bytes. Responses that carry a secret (a plaintext, a data key, a shared
//! secret) are printed from zeroizing buffers, never through the reflection printer.

use std::{
    io::{IsTerminal, Read, Write},
    path::{Path, PathBuf},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use clap::Subcommand;
use keymesh_client::{
    ClientError, KeymeshClient,
    envelope::Associated,
    streaming::{StreamOptions, Via},
};
use keymesh_proto::v1::{self as pb, sign_request, verify_request};
use zeroize::Zeroizing;

use crate::{
    Failure, Outcome, read_stdin, render,
    render::{Field, Output},
    write_stdout,
};

#[derive(Subcommand)]
pub enum DataCommand {
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
    /// Re-encrypt a ciphertext (standard input, binary or base64) under another key or the newest version of its
    /// own, without the plaintext leaving the service; writes the new ciphertext like `encrypt`.
    ReEncrypt {
        /// Destination key name or id (default: the source key's newest version).
        #[arg(long, default_value = "")]
        key: String,
        /// The associated data the ciphertext was made with.
        #[arg(long, default_value = "")]
        aad: String,
        /// An encryption context entry the ciphertext was made with, KEY=VALUE, repeatable.
        #[arg(long = "context", value_name = "KEY=VALUE", value_parser = crate::parse_pair)]
        context: Vec<(String, String)>,
        /// Bind new associated data (with --new-context) instead of carrying the old over.
        #[arg(long)]
        replace_aad: bool,
        /// The new associated data, with --replace-aad.
        #[arg(long, default_value = "", requires = "replace_aad")]
        new_aad: String,
        /// A new encryption context entry KEY=VALUE, with --replace-aad, repeatable.
        #[arg(long = "new-context", value_name = "KEY=VALUE", value_parser = crate::parse_pair, requires = "replace_aad")]
        new_context: Vec<(String, String)>,
        /// Write base64 text instead of binary (the default when standard output is a terminal).
        #[arg(long)]
        base64: bool,
    },
    /// Generate a data key under a key: prints the plaintext key and its wrapped form (base64), or only the
    /// wrapped form with --without-plaintext.
    DataKey {
        /// Key name or id (an ENCRYPT key).
        #[arg(long)]
        key: String,
        /// aes-256 (default) or aes-128.
        #[arg(long, default_value = "aes-256")]
        spec: String,
        #[command(flatten)]
        associated: AssociatedArgs,
        /// Only the wrapped data key (GenerateDataKeyWithoutPlaintext).
        #[arg(long)]
        without_plaintext: bool,
    },
    /// Sign standard input (the message) with a SIGN key; prints the signature in base64.
    Sign {
        /// Key name or id.
        #[arg(long)]
        key: String,
        /// The input is ML-DSA's 64-byte external mu (FIPS 204), not the message.
        #[arg(long, conflicts_with = "digest")]
        mu: bool,
        /// The input is the message's digest (ECDSA, RSA-PSS), not the message.
        #[arg(long)]
        digest: bool,
        /// ML-DSA's deterministic variant (default: hedged); Ed25519 always is.
        #[arg(long)]
        deterministic: bool,
        /// ML-DSA context string (FIPS 204 ctx, at most 255 bytes).
        #[arg(long, default_value = "")]
        context: String,
    },
    /// Verify a signature over standard input (the message, or --mu/--digest); prints valid or invalid and exits
    /// 1 unless valid.
    Verify {
        /// Key name or id.
        #[arg(long)]
        key: String,
        /// The signature, base64.
        #[arg(long)]
        signature: String,
        /// The input is ML-DSA's 64-byte external mu.
        #[arg(long, conflicts_with = "digest")]
        mu: bool,
        /// The input is the message's digest.
        #[arg(long)]
        digest: bool,
        /// The version that signed (default: the primary).
        #[arg(long, default_value_t = 0)]
        version: u32,
        /// ML-DSA context string the signature was made with.
        #[arg(long, default_value = "")]
        context: String,
    },
    /// Compute a MAC over standard input with a MAC key; prints it in base64.
    Mac {
        /// Key name or id.
        #[arg(long)]
        key: String,
    },
    /// Verify a MAC over standard input; prints valid or invalid and exits 1 unless valid.
    VerifyMac {
        /// Key name or id.
        #[arg(long)]
        key: String,
        /// The MAC, base64.
        #[arg(long)]
        mac: String,
        /// The version that made it (default: the primary).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Hash standard input in the service; prints the digest in hex.
    Hash {
        /// sha256 (default), sha384, sha512, sha3-256 or blake2b-512.
        #[arg(long, default_value = "sha256")]
        algorithm: String,
    },
    /// Random bytes from the service's CSPRNG, in base64 (or hex).
    Random {
        /// How many bytes (1 to 1024).
        #[arg(long, default_value_t = 32)]
        bytes: u32,
        /// Print hex instead of base64.
        #[arg(long)]
        hex: bool,
    },
    /// Encapsulate to a KEM key (ML-KEM) in the service: prints the ciphertext and the shared secret in base64.
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
        /// The version to use (default: the primary).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
}

/// Associated data bound to a ciphertext.
#[derive(clap::Args)]
pub struct AssociatedArgs {
    /// Associated data to bind (must be given again to decrypt).
    #[arg(long, default_value = "")]
    aad: String,
    /// Encryption context entry KEY=VALUE, repeatable (all must be given again to decrypt).
    #[arg(long = "context", value_name = "KEY=VALUE", value_parser = crate::parse_pair)]
    context: Vec<(String, String)>,
}

impl AssociatedArgs {
    fn to_associated(&self) -> Associated {
        Associated { aad: self.aad.as_bytes().to_vec(), encryption_context: self.context.iter().cloned().collect() }
    }
}

/// Streaming a file instead of standard input.
#[derive(clap::Args)]
pub struct FileArgs {
    /// Input file, streamed in constant memory.
    #[arg(long = "in", value_name = "PATH", requires = "destination")]
    input: Option<PathBuf>,
    /// Output file; written beside its final name and moved into place only on success.
    // Not `output`: that is the global --output format's id.
    #[arg(long = "out", value_name = "PATH", requires = "input")]
    destination: Option<PathBuf>,
    /// Encrypt or decrypt here with a data key (one GenerateDataKey or Decrypt call) instead of in
    /// crypto-service; the data never leaves this machine.
    #[arg(long, requires = "input")]
    local: bool,
}

pub async fn run(client: &KeymeshClient, output: Output, command: DataCommand) -> Outcome {
    let mut crypto = client.crypto_service();
    match command {
        DataCommand::Encrypt { key, associated, base64, files, segment_size } => {
            let associated = associated.to_associated();
            if let FileArgs { input: Some(input), destination: Some(out), local } = files {
                let options = StreamOptions { key, associated, segment_size, via: via(local) };
                return Ok(stream_file(client, &options, &input, &out, Direction::Encrypt).await?);
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
            let response = crypto.encrypt(request).await?.into_inner();
            if output == Output::Json {
                return Ok(render::print(output, &response, None)?);
            }
            Ok(write_ciphertext(&response.ciphertext, base64)?)
        }
        DataCommand::Decrypt { associated, key, files } => {
            let associated = associated.to_associated();
            if let FileArgs { input: Some(input), destination: Some(out), local } = files {
                let options = StreamOptions { key, associated, segment_size: 0, via: via(local) };
                return Ok(stream_file(client, &options, &input, &out, Direction::Decrypt).await?);
            }
            let ciphertext = ciphertext_from(read_stdin()?)?;
            if keymesh_crypto::stream::looks_like_stream(&ciphertext) {
                let plaintext = client.open_envelope(&ciphertext, &associated, &key).await?;
                return Ok(write_stdout(&plaintext)?);
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
            let response = crypto.decrypt(request).await?.into_inner();
            let plaintext = Zeroizing::new(response.plaintext);
            if output == Output::Json {
                let encoded = Zeroizing::new(B64.encode(&*plaintext));
                let fields = [
                    ("plaintext", Field::Text(&encoded)),
                    ("key_id", Field::Text(&response.key_id)),
                    ("key_version", Field::Number(response.key_version.into())),
                ];
                return Ok(render::print_secret(output, &fields, "")?);
            }
            Ok(write_stdout(&plaintext)?)
        }
        DataCommand::ReEncrypt { key, aad, context, replace_aad, new_aad, new_context, base64 } => {
            let request = pb::ReEncryptRequest {
                ciphertext: ciphertext_from(read_stdin()?)?,
                source_aad: aad.into_bytes(),
                source_encryption_context: context.into_iter().collect(),
                destination_key: key,
                destination_aad: new_aad.into_bytes(),
                destination_encryption_context: new_context.into_iter().collect(),
                replace_aad,
            };
            let response = crypto.re_encrypt(client.authorized(request).await?).await?.into_inner();
            if output == Output::Json {
                return Ok(render::print(output, &response, None)?);
            }
            Ok(write_ciphertext(&response.ciphertext, base64)?)
        }
        DataCommand::DataKey { key, spec, associated, without_plaintext } => {
            let key_spec =
                crate::enum_named("DATA_KEY_SPEC_", &spec, pb::DataKeySpec::from_str_name, "data key spec")? as i32;
            let associated = associated.to_associated();
            if without_plaintext {
                let request = pb::GenerateDataKeyWithoutPlaintextRequest {
                    key,
                    key_spec,
                    aad: associated.aad,
                    encryption_context: associated.encryption_context,
                };
                let response =
                    crypto.generate_data_key_without_plaintext(client.authorized(request).await?).await?.into_inner();
                return Ok(render::print(output, &response, None)?);
            }
            let request = pb::GenerateDataKeyRequest {
                key,
                key_spec,
                aad: associated.aad,
                encryption_context: associated.encryption_context,
            };
            let response = crypto.generate_data_key(client.authorized(request).await?).await?.into_inner();
            let plaintext = Zeroizing::new(B64.encode(&*Zeroizing::new(response.plaintext)));
            let ciphertext = B64.encode(&response.ciphertext);
            let fields = [
                ("plaintext", Field::Text(&plaintext)),
                ("ciphertext", Field::Text(&ciphertext)),
                ("key_id", Field::Text(&response.key_id)),
                ("key_version", Field::Number(response.key_version.into())),
            ];
            Ok(render::print_secret(output, &fields, "")?)
        }
        DataCommand::Sign { key, mu, digest, deterministic, context } => {
            let input = read_stdin()?;
            let input = if mu {
                sign_request::Input::Mu(input)
            } else if digest {
                sign_request::Input::Digest(input)
            } else {
                sign_request::Input::Message(input)
            };
            let randomness = if deterministic {
                pb::SignatureRandomness::Deterministic
            } else {
                pb::SignatureRandomness::Unspecified
            };
            let request = pb::SignRequest {
                key,
                input: Some(input),
                randomness: randomness as i32,
                context: context.into_bytes(),
            };
            let signed = crypto.sign(client.authorized(request).await?).await?.into_inner();
            if output == Output::Json {
                return Ok(render::print(output, &signed, None)?);
            }
            Ok(write_stdout(format!("{}\n", B64.encode(signed.signature)).as_bytes())?)
        }
        DataCommand::Verify { key, signature, mu, digest, version, context } => {
            let signature = base64_arg("--signature", &signature)?;
            let input = read_stdin()?;
            let input = if mu {
                verify_request::Input::Mu(input)
            } else if digest {
                verify_request::Input::Digest(input)
            } else {
                verify_request::Input::Message(input)
            };
            let request = pb::VerifyRequest {
                key,
                key_version: version,
                input: Some(input),
                signature,
                context: context.into_bytes(),
            };
            let verified = crypto.verify(client.authorized(request).await?).await?.into_inner();
            verdict(output, &verified, verified.valid, "the signature does not verify")
        }
        DataCommand::Mac { key } => {
            let request = pb::GenerateMacRequest { key, message: read_stdin()? };
            let response = crypto.generate_mac(client.authorized(request).await?).await?.into_inner();
            if output == Output::Json {
                return Ok(render::print(output, &response, None)?);
            }
            Ok(write_stdout(format!("{}\n", B64.encode(response.mac)).as_bytes())?)
        }
        DataCommand::VerifyMac { key, mac, version } => {
            let request = pb::VerifyMacRequest {
                key,
                key_version: version,
                message: read_stdin()?,
                mac: base64_arg("--mac", &mac)?,
            };
            let verified = crypto.verify_mac(client.authorized(request).await?).await?.into_inner();
            verdict(output, &verified, verified.valid, "the MAC does not verify")
        }
        DataCommand::Hash { algorithm } => {
            // The SDKs' local names (`blake2b`) as well as the API's (`blake2b-512`).
            let algorithm =
                if algorithm.eq_ignore_ascii_case("blake2b") { "blake2b-512".to_owned() } else { algorithm };
            let algorithm =
                crate::enum_named("HASH_ALGORITHM_", &algorithm, pb::HashAlgorithm::from_str_name, "hash algorithm")?;
            let request = pb::HashRequest { algorithm: algorithm as i32, data: read_stdin()? };
            let response = crypto.hash(client.authorized(request).await?).await?.into_inner();
            if output == Output::Json {
                return Ok(render::print(output, &response, None)?);
            }
            Ok(write_stdout(format!("{}\n", hex(&response.digest)).as_bytes())?)
        }
        DataCommand::Random { bytes, hex: as_hex } => {
            let request = pb::GenerateRandomRequest { num_bytes: bytes };
            let response = crypto.generate_random(client.authorized(request).await?).await?.into_inner();
            if output == Output::Json {
                return Ok(render::print(output, &response, None)?);
            }
            let text = if as_hex { hex(&response.random) } else { B64.encode(&response.random) };
            Ok(write_stdout(format!("{text}\n").as_bytes())?)
        }
        DataCommand::Encapsulate { key } => {
            let request = pb::EncapsulateRequest { key };
            let out = crypto.encapsulate(client.authorized(request).await?).await?.into_inner();
            let secret = Zeroizing::new(out.shared_secret);
            let encoded = Zeroizing::new(B64.encode(&*secret));
            let ciphertext = B64.encode(&out.ciphertext);
            let fields = [
                ("ciphertext", Field::Text(&ciphertext)),
                ("shared_secret", Field::Text(&encoded)),
                ("key_id", Field::Text(&out.key_id)),
                ("key_version", Field::Number(out.key_version.into())),
            ];
            // JSON whatever --output says: it has always been this command's output.
            Ok(render::print_secret(Output::Json, &fields, "")?)
        }
        DataCommand::Decapsulate { key, version } => {
            let input = read_stdin()?;
            // An ML-KEM ciphertext is 768 bytes or more: text this short and all base64 is base64.
            let ciphertext = match B64.decode(input.trim_ascii()) {
                Ok(decoded) if !input.is_empty() => decoded,
                _ => input,
            };
            let request = pb::DecapsulateRequest { key, key_version: version, ciphertext };
            let out = crypto.decapsulate(client.authorized(request).await?).await?.into_inner();
            let secret = Zeroizing::new(out.shared_secret);
            let encoded = Zeroizing::new(B64.encode(&*secret));
            if output == Output::Table {
                // The secret alone, for pipes.
                let mut line = Zeroizing::new(encoded.to_string());
                line.push('\n');
                return Ok(write_stdout(line.as_bytes())?);
            }
            let fields = [
                ("shared_secret", Field::Text(&encoded)),
                ("key_id", Field::Text(&out.key_id)),
                ("key_version", Field::Number(out.key_version.into())),
            ];
            Ok(render::print_secret(output, &fields, "")?)
        }
    }
}

/// Prints a verification's answer (`valid`/`invalid`, or the JSON) and turns `invalid` into exit status 1.
fn verdict<M: prost::Message + prost::Name + std::fmt::Debug>(
    output: Output,
    response: &M,
    valid: bool,
    no: &str,
) -> Outcome {
    match output {
        Output::Json => render::print(output, response, None)?,
        Output::Table => write_stdout(if valid { b"valid\n" } else { b"invalid\n" })?,
    }
    if valid { Ok(()) } else { Err(Failure::Negative(no.to_owned())) }
}

fn base64_arg(flag: &str, text: &str) -> Result<Vec<u8>, ClientError> {
    B64.decode(text.trim()).map_err(|_| ClientError::Setup(format!("{flag} is not base64")))
}

/// A ciphertext read from standard input: binary as keymesh writes it, or base64 text of one.
fn ciphertext_from(input: Vec<u8>) -> Result<Vec<u8>, ClientError> {
    // Binary ciphertexts start with a small big-endian header length or the stream magic; anything else is
    // base64 text.
    if input.first().is_some_and(|b| *b < 0x10) || keymesh_crypto::stream::looks_like_stream(&input) {
        return Ok(input);
    }
    B64.decode(input.trim_ascii())
        .map_err(|_| ClientError::Setup("input is neither a keymesh ciphertext nor base64 of one".into()))
}

fn write_ciphertext(ciphertext: &[u8], base64: bool) -> Result<(), ClientError> {
    if base64 || std::io::stdout().is_terminal() {
        write_stdout(format!("{}\n", B64.encode(ciphertext)).as_bytes())
    } else {
        write_stdout(ciphertext)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
    input: &Path,
    output: &Path,
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

fn starts_like_stream(path: &Path) -> Result<bool, ClientError> {
    let mut head = [0u8; 8];
    let mut file = std::fs::File::open(path).map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))?;
    let n = file.read(&mut head).map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))?;
    Ok(keymesh_crypto::stream::looks_like_stream(&head[..n]))
}

async fn decrypt_unary_file(
    client: &KeymeshClient,
    options: &StreamOptions,
    input: &Path,
    output: &Path,
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
    let plaintext = Zeroizing::new(client.crypto_service().decrypt(request).await?.into_inner().plaintext);
    // As the stream helpers write: a private temporary file beside the target, moved into place when whole.
    let io = |e: std::io::Error| ClientError::Io(format!("{}: {e}", output.display()));
    let dir = output.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut temporary = tempfile::Builder::new().prefix(".keymesh-partial-").tempfile_in(dir).map_err(io)?;
    temporary.write_all(&plaintext).and_then(|()| temporary.as_file().sync_all()).map_err(io)?;
    temporary.persist(output).map_err(|e| io(e.error))?;
    Ok(())
}

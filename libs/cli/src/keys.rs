//! `keymesh keys …`: the control plane (KeyService), one subcommand per RPC.

use std::{io::Write, path::PathBuf};

use clap::Subcommand;
use keymesh_client::{ClientError, KeymeshClient};
use keymesh_proto::v1 as pb;

use crate::{Failure, Outcome, enum_named, render, render::Output, write_stdout};

/// The columns of a key list.
const KEY_COLUMNS: &[&str] = &["name", "key_id", "purpose", "algorithm", "state", "primary_version", "create_time"];

#[derive(Subcommand)]
pub enum KeysCommand {
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
        /// What the key is for, for people.
        #[arg(long, default_value = "")]
        description: String,
        /// A label KEY=VALUE, repeatable.
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::parse_pair)]
        labels: Vec<(String, String)>,
        /// The key's policy as JSON in the protobuf mapping of KeyPolicy, e.g.
        /// '{"rotation_period": "2592000s", "enforcement": "POLICY_ENFORCEMENT_ENFORCE"}'.
        #[arg(long)]
        policy: Option<String>,
        /// Created without material, waiting for `keys import` (bring your own key).
        #[arg(long)]
        external: bool,
    },
    /// List the tenant's keys (every page, or --limit of them).
    List {
        /// Only keys of this purpose (encrypt, sign, mac, kem).
        #[arg(long)]
        purpose: Option<String>,
        /// Only keys in this state (enabled, disabled, pending-deletion, destroyed, pending-import).
        #[arg(long)]
        state: Option<String>,
        /// Only keys carrying this label KEY=VALUE, repeatable (all must match).
        #[arg(long = "label", value_name = "KEY=VALUE", value_parser = crate::parse_pair)]
        labels: Vec<(String, String)>,
        /// At most this many keys (0: all).
        #[arg(long, default_value_t = 0)]
        limit: usize,
    },
    /// Show a key.
    Get {
        /// Key name or id.
        name: String,
    },
    /// Make a new version the primary one; older versions still decrypt.
    Rotate {
        /// Key name or id.
        name: String,
    },
    /// Enable a key (or one version of it).
    Enable {
        /// Key name or id.
        name: String,
        /// Only this version.
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Disable a key (or one version of it): nothing uses it until it is enabled again.
    Disable {
        /// Key name or id.
        name: String,
        /// Only this version.
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Schedule a key (or one version) for destruction after a waiting period; cancellable until then.
    ScheduleDeletion {
        /// Key name or id.
        name: String,
        /// Only this version.
        #[arg(long, default_value_t = 0)]
        version: u32,
        /// Days to wait, 7 to 30 (default 30).
        #[arg(long, default_value_t = 0)]
        days: u32,
    },
    /// Cancel a scheduled deletion.
    CancelDeletion {
        /// Key name or id.
        name: String,
        /// Only this version.
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Change a key's policy, oldest decrypting version, description or labels (only what is given).
    UpdatePolicy {
        /// Key name or id.
        name: String,
        /// The new policy as JSON in the protobuf mapping of KeyPolicy (replaces the old one).
        #[arg(long)]
        policy: Option<String>,
        /// Versions below this no longer decrypt (it only goes up).
        #[arg(long)]
        min_decryption_version: Option<u32>,
        /// The new description.
        #[arg(long)]
        description: Option<String>,
        /// The new labels KEY=VALUE, repeatable (replace the old ones); --label '' clears them.
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Option<Vec<String>>,
    },
    /// Print a key's public key (SubjectPublicKeyInfo PEM), for the asymmetric and post-quantum keys.
    PublicKey {
        /// Key name or id.
        name: String,
        /// This version (default: the primary).
        #[arg(long, default_value_t = 0)]
        version: u32,
    },
    /// Get a wrapping key and import token for `keys import`: writes the token to --token-out and prints the
    /// wrapping public key (PEM).
    WrappingKey {
        /// Key name or id (created with --external, or rotated by import).
        name: String,
        /// rsa-aes-key-wrap-sha256 (default; any key size) or rsa-oaep-sha256 (material up to the RSA limit).
        #[arg(long, default_value = "rsa-aes-key-wrap-sha256")]
        wrapping_algorithm: String,
        /// rsa-2048, rsa-3072 or rsa-4096 (default).
        #[arg(long, default_value = "rsa-4096")]
        spec: String,
        /// Where to write the import token (binary).
        #[arg(long, value_name = "PATH")]
        token_out: PathBuf,
    },
    /// Import key material wrapped with the wrapping key: a new version, primary at once.
    Import {
        /// Key name or id.
        name: String,
        /// The import token from `keys wrapping-key`.
        #[arg(long, value_name = "PATH")]
        token: PathBuf,
        /// The wrapped key material (binary).
        #[arg(long, value_name = "PATH")]
        material: PathBuf,
        /// How the material was wrapped (as for wrapping-key).
        #[arg(long, default_value = "rsa-aes-key-wrap-sha256")]
        wrapping_algorithm: String,
    },
    /// Re-wrap the material of every key of your tenant under the KEK keyring key-service runs with now,
    /// printing progress (admin or owner role). Running it again resumes an interrupted run.
    Rewrap,
}

fn read(path: &PathBuf) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|e| ClientError::Io(format!("{}: {e}", path.display())))
}

pub async fn run(client: &KeymeshClient, output: Output, command: KeysCommand) -> Outcome {
    let mut keys = client.key_service();
    match command {
        KeysCommand::Create { name, purpose, algorithm, description, labels, policy, external } => {
            let purpose = match purpose.as_deref() {
                Some(p) => enum_named("KEY_PURPOSE_", p, pb::KeyPurpose::from_str_name, "purpose")?,
                None => pb::KeyPurpose::Unspecified,
            };
            let algorithm = match algorithm.as_deref() {
                Some(a) => enum_named("ALGORITHM_", a, pb::Algorithm::from_str_name, "algorithm")?,
                None => pb::Algorithm::Unspecified,
            };
            let request = pb::CreateKeyRequest {
                name,
                description,
                purpose: purpose as i32,
                algorithm: algorithm as i32,
                labels: labels.into_iter().collect(),
                policy: policy.map(|p| render::from_json("--policy", &p)).transpose()?,
                origin: if external { pb::KeyOrigin::External as i32 } else { 0 },
            };
            let response = keys.create_key(client.authorized(request).await?).await?.into_inner();
            for warning in &response.warnings {
                eprintln!("warning: {warning}");
            }
            Ok(render::print(output, &response, None)?)
        }
        KeysCommand::List { purpose, state, labels, limit } => {
            let purpose = match purpose.as_deref() {
                Some(p) => enum_named("KEY_PURPOSE_", p, pb::KeyPurpose::from_str_name, "purpose")? as i32,
                None => 0,
            };
            let state = match state.as_deref() {
                Some(s) => enum_named("KEY_STATE_", s, pb::KeyState::from_str_name, "state")? as i32,
                None => 0,
            };
            let mut all = pb::ListKeysResponse::default();
            loop {
                let request = pb::ListKeysRequest {
                    page_size: 0,
                    page_token: std::mem::take(&mut all.next_page_token),
                    purpose,
                    state,
                    labels: labels.iter().cloned().collect(),
                };
                let page = keys.list_keys(client.authorized(request).await?).await?.into_inner();
                all.keys.extend(page.keys);
                all.next_page_token = page.next_page_token;
                if all.next_page_token.is_empty() || (limit > 0 && all.keys.len() >= limit) {
                    break;
                }
            }
            if limit > 0 && all.keys.len() > limit {
                all.keys.truncate(limit);
            }
            Ok(render::print(output, &all, Some(("keys", KEY_COLUMNS)))?)
        }
        KeysCommand::Get { name } => {
            let response = keys.get_key(client.authorized(pb::GetKeyRequest { key: name }).await?).await?.into_inner();
            Ok(render::print(output, &response, None)?)
        }
        KeysCommand::Rotate { name } => {
            let response =
                keys.rotate_key(client.authorized(pb::RotateKeyRequest { key: name }).await?).await?.into_inner();
            Ok(render::print(output, &response, None)?)
        }
        KeysCommand::Enable { name, version } => {
            let request = pb::EnableKeyRequest { key: name, version };
            let response = keys.enable_key(client.authorized(request).await?).await?.into_inner();
            Ok(render::print(output, &response, None)?)
        }
        KeysCommand::Disable { name, version } => {
            let request = pb::DisableKeyRequest { key: name, version };
            let response = keys.disable_key(client.authorized(request).await?).await?.into_inner();
            Ok(render::print(output, &response, None)?)
        }
        KeysCommand::ScheduleDeletion { name, version, days } => {
            let request = pb::ScheduleKeyDeletionRequest { key: name, version, pending_window_days: days };
            let response = keys.schedule_key_deletion(client.authorized(request).await?).await?.into_inner();
            Ok(render::print(output, &response, None)?)
        }
        KeysCommand::CancelDeletion { name, version } => {
            let request = pb::CancelKeyDeletionRequest { key: name, version };
            let response = keys.cancel_key_deletion(client.authorized(request).await?).await?.into_inner();
            Ok(render::print(output, &response, None)?)
        }
        KeysCommand::UpdatePolicy { name, policy, min_decryption_version, description, labels } => {
            let mut request = pb::UpdateKeyPolicyRequest { key: name, ..Default::default() };
            if let Some(policy) = policy {
                request.policy = Some(render::from_json("--policy", &policy)?);
                request.update_paths.push("policy".into());
            }
            if let Some(min) = min_decryption_version {
                request.min_decryption_version = min;
                request.update_paths.push("min_decryption_version".into());
            }
            if let Some(description) = description {
                request.description = description;
                request.update_paths.push("description".into());
            }
            if let Some(labels) = labels {
                for entry in labels.iter().filter(|l| !l.is_empty()) {
                    let (k, v) = crate::parse_pair(entry).map_err(ClientError::Setup)?;
                    request.labels.insert(k, v);
                }
                request.update_paths.push("labels".into());
            }
            if request.update_paths.is_empty() {
                return Err(ClientError::Setup(
                    "nothing to change: give --policy, --min-decryption-version, --description or --label".into(),
                )
                .into());
            }
            let response = keys.update_key_policy(client.authorized(request).await?).await?.into_inner();
            Ok(render::print(output, &response, None)?)
        }
        KeysCommand::PublicKey { name, version } => {
            let request = pb::GetPublicKeyRequest { key: name, version };
            let public = keys.get_public_key(client.authorized(request).await?).await?.into_inner();
            match output {
                Output::Json => Ok(render::print(output, &public, None)?),
                Output::Table => Ok(write_stdout(public.public_key_pem.as_bytes())?),
            }
        }
        KeysCommand::WrappingKey { name, wrapping_algorithm, spec, token_out } => {
            let request = pb::GetWrappingKeyRequest {
                key: name,
                wrapping_algorithm: wrapping_algorithm_named(&wrapping_algorithm)? as i32,
                wrapping_key_spec: enum_named(
                    "WRAPPING_KEY_SPEC_",
                    &spec,
                    pb::WrappingKeySpec::from_str_name,
                    "wrapping key spec",
                )? as i32,
            };
            let response = keys.get_wrapping_key(client.authorized(request).await?).await?.into_inner();
            std::fs::write(&token_out, &response.import_token)
                .map_err(|e| ClientError::Io(format!("{}: {e}", token_out.display())))?;
            match output {
                Output::Json => Ok(render::print(output, &response, None)?),
                Output::Table => {
                    let expires = response.expire_time.map(|t| t.to_string()).unwrap_or_default();
                    eprintln!("import token written to {} (valid until {expires})", token_out.display());
                    Ok(write_stdout(response.public_key_pem.as_bytes())?)
                }
            }
        }
        KeysCommand::Import { name, token, material, wrapping_algorithm } => {
            let request = pb::ImportKeyVersionRequest {
                key: name,
                import_token: read(&token)?,
                wrapping_algorithm: wrapping_algorithm_named(&wrapping_algorithm)? as i32,
                wrapped_key_material: read(&material)?,
            };
            let response = keys.import_key_version(client.authorized(request).await?).await?.into_inner();
            Ok(render::print(output, &response, None)?)
        }
        KeysCommand::Rewrap => rewrap(client, output).await,
    }
}

fn wrapping_algorithm_named(name: &str) -> Result<pb::WrappingAlgorithm, ClientError> {
    enum_named("WRAPPING_ALGORITHM_", name, pb::WrappingAlgorithm::from_str_name, "wrapping algorithm")
}

/// `keymesh keys rewrap`: follows RewrapKeys, one line per progress report on standard error; the last report
/// on standard output (as JSON with `--output json`).
async fn rewrap(client: &KeymeshClient, output: Output) -> Outcome {
    let request = client.authorized(pb::RewrapKeysRequest {}).await?;
    let mut stream = client.key_service().rewrap_keys(request).await?.into_inner();
    let mut last = None;
    while let Some(progress) = stream.message().await? {
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
        Some(p) if p.done && p.versions_failed == 0 => Ok(match output {
            Output::Json => render::print(output, &p, None),
            Output::Table => write_stdout(format!("re-wrapped to {}\n", p.target).as_bytes()),
        }?),
        // The run worked and some versions are left as they were: an answer, not a failure of the call.
        Some(p) if p.done => Err(Failure::Negative(format!(
            "{} version(s) could not be re-wrapped; last error: {}",
            p.versions_failed, p.last_error
        ))),
        // An interrupted run resumes: like an unreachable service, worth running again.
        _ => Err(tonic::Status::unavailable("the re-wrap stream ended early; run the command again to resume").into()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn import_token_is_base64_in_json() {
        // The wrapping-key JSON carries the token as the protobuf mapping does: standard base64.
        use base64::{Engine, engine::general_purpose::STANDARD as B64};
        let response =
            keymesh_proto::v1::GetWrappingKeyResponse { import_token: vec![0xff, 0x00], ..Default::default() };
        let json = crate::render::to_json(&response).unwrap();
        assert_eq!(json["import_token"], B64.encode([0xff, 0x00]));
    }
}

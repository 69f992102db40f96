//! Operator checks that need no access token: `keymesh health` (grpc.health.v1 of every service over mTLS) and
//! `keymesh kms check` (the KEK backends of the configuration, as key-service would open them).

use std::collections::BTreeMap;

use clap::Subcommand;
use keymesh_client::ClientError;
use keymesh_config::KeymeshConfig;
use keymesh_mesh::{ServiceName, config::MeshParams, run::ServiceConfig};

use crate::{Cli, Failure, Outcome, write_stdout};

#[derive(Subcommand)]
pub enum KmsCommand {
    /// Open every backend of the configured keyring as key-service would, wrap a probe key with each and
    /// unwrap it again; says what is wrong in plain words and exits 1 unless every backend works. A local
    /// backend creates its master key on first use, as key-service would.
    Check,
}

pub async fn health(cli: &Cli, wait: u64) -> Outcome {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let (params, _, tls) = crate::connection(cli)?;
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
    if all_serving { Ok(()) } else { Err(Failure::Negative("not every service is SERVING".into())) }
}

/// `keymesh kms check`.
pub async fn kms_check(cli: &Cli) -> Outcome {
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
    if failures == 0 { Ok(()) } else { Err(Failure::Negative(format!("{failures} KMS backend(s) failed the check"))) }
}

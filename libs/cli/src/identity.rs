//! `keymesh tenants|applications|tokens …`: identity (TokenService). Client secrets and tokens are printed
//! from zeroizing buffers by hand (they are URL-safe base64 or JWTs: nothing to escape in JSON), never through
//! the reflection printer; a token to revoke is read from standard input, not from the command line, where
//! every user of the machine could see it.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use keymesh_client::{
    ClientError, Credentials, KeymeshClient,
    home::{KeymeshHome, Login},
};
use keymesh_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::{
    Cli, Outcome, enum_named, read_stdin, render,
    render::{Field, Output},
    write_stdout,
};

const APPLICATION_COLUMNS: &[&str] = &["name", "client_id", "tenant_id", "roles", "disabled", "create_time"];

#[derive(Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant below yours (owner role); give it applications with `applications create --tenant`.
    Create {
        /// Unique; 1 to 64 of [a-z0-9-].
        name: String,
    },
}

#[derive(Subcommand)]
pub enum ApplicationsCommand {
    /// Create an application; prints its client id and secret (shown once).
    Create {
        /// Its name.
        name: String,
        /// The tenant (default: yours).
        #[arg(long, default_value = "")]
        tenant: String,
        /// A role: viewer, developer, admin, owner or auditor; repeatable.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A permission PATTERN=OPERATION[,OPERATION…] (e.g. 'user-*=encrypt,decrypt'); repeatable.
        #[arg(long = "permission", value_name = "PATTERN=OPS")]
        permissions: Vec<String>,
    },
    /// List the applications of your tenant (or one below it).
    List {
        /// The tenant (default: yours).
        #[arg(long, default_value = "")]
        tenant: String,
    },
    /// Give an application a new client secret; the old one keeps working for the grace period.
    RotateSecret {
        /// The application's client id.
        client_id: String,
        /// How long the previous secret keeps working (e.g. 1h, 7d; default: the configured grace period).
        #[arg(long, value_parser = crate::parse_duration, conflicts_with = "expire_now")]
        grace_period: Option<prost_types::Duration>,
        /// The previous secret stops working at once (it leaked).
        #[arg(long)]
        expire_now: bool,
    },
    /// Disable an application: its tokens stop working.
    Disable {
        /// The application's client id.
        client_id: String,
    },
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// Issue tokens with the client credentials (--credentials), a refresh token (standard input) or a platform
    /// token (token exchange); prints the access and refresh tokens and when they expire.
    Issue {
        /// Exchange the refresh token on standard input instead of using the client credentials.
        #[arg(long, conflicts_with = "subject_token_file")]
        refresh: bool,
        /// Exchange this platform token (a Kubernetes service-account or OIDC ID token) instead.
        #[arg(long, value_name = "PATH")]
        subject_token_file: Option<PathBuf>,
    },
    /// Revoke the access or refresh token on standard input (a refresh token ends its whole session).
    Revoke,
    /// The public keys tokens are signed with (JWKS), the issuer and the audience.
    Jwks,
}

pub async fn tenants(client: &KeymeshClient, output: Output, command: TenantsCommand) -> Outcome {
    match command {
        TenantsCommand::Create { name } => {
            let request = client.authorized(pb::CreateTenantRequest { name }).await?;
            let response = client.token_service().create_tenant(request).await?.into_inner();
            Ok(render::print(output, &response, None)?)
        }
    }
}

pub async fn applications(client: &KeymeshClient, output: Output, command: ApplicationsCommand) -> Outcome {
    let mut tokens = client.token_service();
    match command {
        ApplicationsCommand::Create { name, tenant, roles, permissions } => {
            let roles = roles
                .iter()
                .map(|r| enum_named("ROLE_", r, pb::Role::from_str_name, "role").map(|r| r as i32))
                .collect::<Result<Vec<_>, _>>()?;
            let permissions = permissions.iter().map(|p| permission(p)).collect::<Result<Vec<_>, _>>()?;
            let request = pb::CreateApplicationRequest { name, tenant_id: tenant, roles, permissions };
            let response = tokens.create_application(client.authorized(request).await?).await?.into_inner();
            let secret = Zeroizing::new(response.client_secret);
            let application = response.application.unwrap_or_default();
            let application_json = serde_json::to_string_pretty(&render::to_json(&application)?).unwrap_or_default();
            let fields = [("application", Field::Json(&application_json)), ("client_secret", Field::Text(&secret))];
            let table = render::table(&render::dynamic(&application)?, None);
            // The table shows the application, then the secret; a note says it is shown once.
            if output == Output::Table {
                write_stdout(table.as_bytes())?;
            }
            Ok(render::print_secret(output, &fields, "(the client secret is shown once: store it now)\n")?)
        }
        ApplicationsCommand::List { tenant } => {
            let mut all = pb::ListApplicationsResponse::default();
            loop {
                let request = pb::ListApplicationsRequest {
                    page_size: 0,
                    page_token: std::mem::take(&mut all.next_page_token),
                    tenant_id: tenant.clone(),
                };
                let page = tokens.list_applications(client.authorized(request).await?).await?.into_inner();
                all.applications.extend(page.applications);
                all.next_page_token = page.next_page_token;
                if all.next_page_token.is_empty() {
                    break;
                }
            }
            Ok(render::print(output, &all, Some(("applications", APPLICATION_COLUMNS)))?)
        }
        ApplicationsCommand::RotateSecret { client_id, grace_period, expire_now } => {
            let request = pb::RotateClientSecretRequest { client_id, grace_period, expire_previous_now: expire_now };
            let response = tokens.rotate_client_secret(client.authorized(request).await?).await?.into_inner();
            let secret = Zeroizing::new(response.client_secret);
            let until = response.previous_secret_expire_time.map(|t| t.to_string()).unwrap_or_default();
            let fields =
                [("client_secret", Field::Text(&secret)), ("previous_secret_expire_time", Field::Text(&until))];
            Ok(render::print_secret(output, &fields, "(the client secret is shown once: store it now)\n")?)
        }
        ApplicationsCommand::Disable { client_id } => {
            let request = pb::DisableApplicationRequest { client_id };
            let response = tokens.disable_application(client.authorized(request).await?).await?.into_inner();
            Ok(render::print(output, &response, None)?)
        }
    }
}

/// `keymesh login`.
pub async fn login(cli: &Cli, client_id: Option<String>, subject_token_file: Option<PathBuf>) -> Outcome {
    let (_, endpoints, tls) = crate::connection(cli)?;
    let method = match (client_id, subject_token_file) {
        (_, Some(path)) => Login::TokenExchange(path),
        (Some(client_id), None) => {
            let secret = Zeroizing::new(String::from_utf8_lossy(&Zeroizing::new(read_stdin()?)).trim().to_owned());
            if secret.is_empty() {
                return Err(ClientError::Setup("give the client secret on standard input".into()).into());
            }
            Login::ClientCredentials(Credentials { client_id, client_secret: secret, subject_token_file: None })
        }
        // Never the bootstrap credentials by default: a 30-day owner session in ~/.keymesh is not a default.
        (None, None) => match &cli.credentials {
            Some(path) => Login::ClientCredentials(Credentials::from_file(path)?),
            None => {
                return Err(ClientError::Setup(
                    "say how to log in: --client-id (the secret on standard input), --credentials FILE or \
                     --subject-token-file FILE"
                        .into(),
                )
                .into());
            }
        },
    };
    let home = KeymeshHome::default_location()?;
    let client_id = home.login(&endpoints, &tls, method).await?;
    Ok(write_stdout(format!("logged in as {client_id}; session in {}\n", home.session_file().display()).as_bytes())?)
}

/// `keymesh register`.
pub async fn register(cli: &Cli, output: Output, request: pb::RegisterApplicationRequest) -> Outcome {
    let (_, endpoints, tls) = crate::connection(cli)?;
    let home = KeymeshHome::default_location()?;
    let (_, registered) = home.register(&endpoints, &tls, request).await?;
    let text = match output {
        Output::Json => format!(
            "{}\n",
            serde_json::to_string_pretty(&serde_json::json!({
                "client_id": registered.client_id,
                "application_name": registered.application_name,
                "created": registered.created,
                "credentials_file": registered.credentials_file,
            }))
            .unwrap_or_default()
        ),
        Output::Table => format!(
            "{} {} ({}); credentials in {}\n",
            if registered.created { "registered" } else { "found" },
            registered.application_name,
            registered.client_id,
            registered.credentials_file.display()
        ),
    };
    Ok(write_stdout(text.as_bytes())?)
}

/// `PATTERN=OP,OP` as a permission.
fn permission(text: &str) -> Result<pb::KeyPermission, ClientError> {
    let (pattern, operations) = text
        .split_once('=')
        .filter(|(p, _)| !p.is_empty())
        .ok_or_else(|| ClientError::Setup(format!("--permission {text:?} is not PATTERN=OPERATION[,OPERATION…]")))?;
    let operations = operations
        .split(',')
        .map(|op| enum_named("OPERATION_", op.trim(), pb::Operation::from_str_name, "operation").map(|o| o as i32))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(pb::KeyPermission { key_pattern: pattern.to_owned(), operations })
}

pub async fn tokens(client: &KeymeshClient, credentials: &Path, output: Output, command: TokensCommand) -> Outcome {
    let mut tokens = client.token_service();
    match command {
        TokensCommand::Issue { refresh, subject_token_file } => {
            let request = if refresh {
                pb::IssueTokenRequest {
                    grant_type: pb::GrantType::RefreshToken as i32,
                    refresh_token: String::from_utf8_lossy(&Zeroizing::new(read_stdin()?)).trim().to_owned(),
                    ..Default::default()
                }
            } else if let Some(path) = subject_token_file {
                keymesh_client::token_exchange_request(&path).await?
            } else {
                let credentials = Credentials::from_file(credentials)?;
                pb::IssueTokenRequest {
                    grant_type: pb::GrantType::ClientCredentials as i32,
                    client_id: credentials.client_id.clone(),
                    client_secret: credentials.client_secret.to_string(),
                    ..Default::default()
                }
            };
            let response = tokens.issue_token(request).await?.into_inner();
            let access = Zeroizing::new(response.access_token);
            let refresh_token = Zeroizing::new(response.refresh_token);
            let expire = response.expire_time.map(|t| t.to_string()).unwrap_or_default();
            let fields = [
                ("access_token", Field::Text(&access)),
                ("token_type", Field::Text(&response.token_type)),
                ("expires_in_seconds", Field::Number(response.expires_in_seconds.into())),
                ("refresh_token", Field::Text(&refresh_token)),
                ("expire_time", Field::Text(&expire)),
            ];
            Ok(render::print_secret(output, &fields, "")?)
        }
        TokensCommand::Revoke => {
            let token = Zeroizing::new(String::from_utf8_lossy(&Zeroizing::new(read_stdin()?)).trim().to_owned());
            let response = tokens.revoke_token(pb::RevokeTokenRequest { token: token.to_string() }).await?.into_inner();
            match output {
                Output::Json => Ok(render::print(output, &response, None)?),
                Output::Table => Ok(write_stdout(b"revoked\n")?),
            }
        }
        TokensCommand::Jwks => {
            let response = tokens.get_jwks(pb::GetJwksRequest {}).await?.into_inner();
            Ok(render::print(output, &response, Some(("keys", &["kid", "kty", "crv", "alg", "use", "x"])))?)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_parse_or_name_the_flag() {
        let p = permission("user-*=encrypt,Decrypt").unwrap();
        assert_eq!(p.key_pattern, "user-*");
        assert_eq!(p.operations, [pb::Operation::Encrypt as i32, pb::Operation::Decrypt as i32]);
        assert!(permission("=encrypt").unwrap_err().to_string().contains("--permission"));
        assert!(permission("x=fly").unwrap_err().to_string().contains("unknown operation"));
    }
}

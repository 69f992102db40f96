//! token-service's part of the configuration file: the issuing half of `[tokens]` (lifetimes, secret
//! grace, signing-key rotation, token exchange), beside the verifying half every service reads.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use keymesh_config::KeymeshConfig;
use keymesh_kms::KmsConfig;
use keymesh_mesh::config::{self as mesh_config, ConfigError, deserialize_value};
use serde::Deserialize;

/// Everything token-service reads from the file, validated.
pub struct TokenConfig {
    /// Token issuance (and verification).
    pub tokens: IssuanceParams,
    /// `[tokens.exchange]`, as written (the exchanger validates it).
    pub exchange: RawExchange,
    /// The KMS keyring that wraps signing keys.
    pub kms: KmsConfig,
}

impl TokenConfig {
    /// Validates token-service's sections.
    pub fn from_file(config: &KeymeshConfig) -> Result<Self, ConfigError> {
        let issuance: RawIssuance = deserialize_value(toml::Value::Table(config.tokens.issuance.clone()), "tokens")?;
        Ok(Self {
            tokens: IssuanceParams::from_raw(mesh_config::TokenParams::from_raw(&config.tokens)?, &issuance)?,
            exchange: issuance.exchange,
            kms: config.kms_checked()?,
        })
    }
}

/// The issuing half of `[tokens]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIssuance {
    /// Lifetime of access tokens in seconds (1..=86400; default 3600).
    pub access_token_ttl_seconds: Option<u64>,
    /// Lifetime of a refresh-token family from its grant, in seconds (60..=7776000; default 2592000, 30 days):
    /// rotation renews the token, not the grant.
    pub refresh_token_ttl_seconds: Option<u64>,
    /// How long a rotated client secret keeps working when RotateClientSecret names no grace period, in
    /// seconds (0..=2592000; default 86400).
    pub secret_grace_seconds: Option<u64>,
    /// Days a token signing key signs before the next one takes over (1..=365; default 30).
    pub signing_key_rotation_days: Option<u64>,
    /// External identities token-service exchanges for access tokens.
    #[serde(default)]
    pub exchange: RawExchange,
}

/// Validated token settings: what every verifier checks, and what token-service issues.
#[derive(Debug, Clone)]
pub struct IssuanceParams {
    /// `iss`, `aud`, clock skew and the revocation bound, as every verifier reads them.
    pub verify: mesh_config::TokenParams,
    /// Access token lifetime.
    pub access_token_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_token_ttl: Duration,
    /// Default grace period of a rotated client secret.
    pub secret_grace: Duration,
    /// How long a signing key signs before the next takes over.
    pub signing_key_rotation: Duration,
}

impl IssuanceParams {
    /// Validates the issuing half of `[tokens]`.
    pub fn from_raw(verify: mesh_config::TokenParams, t: &RawIssuance) -> Result<Self, ConfigError> {
        let seconds = mesh_config::bounded_seconds;
        Ok(Self {
            verify,
            access_token_ttl: seconds("tokens.access_token_ttl_seconds", t.access_token_ttl_seconds, 3600, 1..=86_400)?,
            refresh_token_ttl: seconds(
                "tokens.refresh_token_ttl_seconds",
                t.refresh_token_ttl_seconds,
                30 * 86_400,
                60..=90 * 86_400,
            )?,
            secret_grace: seconds("tokens.secret_grace_seconds", t.secret_grace_seconds, 86_400, 0..=30 * 86_400)?,
            signing_key_rotation: seconds(
                "tokens.signing_key_rotation_days",
                t.signing_key_rotation_days.map(|d| d.saturating_mul(86_400)),
                30 * 86_400,
                86_400..=365 * 86_400,
            )?,
        })
    }
}

/// `[tokens.exchange]`: the issuers whose tokens IssueToken accepts as GRANT_TYPE_TOKEN_EXCHANGE subjects,
/// and the rules mapping their subjects to applications. Empty: token exchange is off.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchange {
    /// Trusted issuers.
    #[serde(default)]
    pub issuers: Vec<RawExchangeIssuer>,
    /// Mapping rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RawExchangeRule>,
}

/// What an issuer's subject tokens are, and so how they are verified.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExchangeIssuerKind {
    /// JWTs (a Kubernetes service-account token, an OIDC ID token), verified with the issuer's JWKS.
    #[default]
    Oidc,
    /// GitHub OAuth access tokens (opaque), checked with GitHub's API as tokens of the OAuth app `audience`
    /// names: a token GitHub issued to any other app is refused, so that app cannot sign in as its users here.
    Github,
}

/// `[[tokens.exchange.issuers]]`: a Kubernetes cluster's service-account issuer, an OIDC provider, or GitHub.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchangeIssuer {
    /// Name rules refer to, e.g. `prod-cluster`.
    pub name: String,
    /// `oidc` (default) or `github`.
    #[serde(default)]
    pub kind: ExchangeIssuerKind,
    /// `github`: the REST API (default `https://api.github.com`; GitHub Enterprise Server:
    /// `https://HOST/api/v3`).
    pub api_url: Option<String>,
    /// `github`: a file holding the client secret of the OAuth app whose client id is `audience` (GitHub's
    /// token check is authenticated as that app).
    pub client_secret_file: Option<PathBuf>,
    /// The `iss` its tokens carry, e.g. `https://kubernetes.default.svc.cluster.local` (`github`: its web
    /// address, e.g. `https://github.com`, for the record).
    pub issuer: String,
    /// The `aud` a token must carry to be exchanged here (e.g. `keymesh`): a token minted for another
    /// audience is refused. `github`: the OAuth app's client id.
    pub audience: String,
    /// Where the signing keys are; default: `jwks_uri` from `<issuer>/.well-known/openid-configuration`.
    pub jwks_url: Option<String>,
    /// PEM bundle to trust for the JWKS (e.g. the cluster CA), beside the system roots.
    pub ca_file: Option<PathBuf>,
    /// Longest lifetime (`exp - iat`) of a token accepted, in seconds (default 86400): long-lived tokens
    /// (legacy service-account secrets) are refused. `github`: how long an access token issued by exchange
    /// may live when GitHub's token does not expire.
    pub max_token_lifetime_seconds: Option<u64>,
}

/// `[[tokens.exchange.rules]]`: subjects of one issuer that become one application. A GitHub user's subject is
/// their numeric id (a login can be renamed and taken by someone else); `login` and `email` are claims.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExchangeRule {
    /// The issuer's `name`.
    pub issuer: String,
    /// Pattern on `sub` (`*` matches any run), e.g. `system:serviceaccount:loaders:*`.
    pub subject: String,
    /// Further claims that must equal these strings (top-level claims, e.g. `email_verified = "true"`).
    #[serde(default)]
    pub claims: BTreeMap<String, String>,
    /// The application the token is issued for.
    pub client_id: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_of(file: Option<&str>, pairs: &[(&str, &str)]) -> Result<TokenConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keymesh.toml");
        if let Some(text) = file {
            std::fs::write(&path, text).unwrap();
        }
        let env: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        TokenConfig::from_file(&KeymeshConfig::load(file.map(|_| path.as_path()), &env)?)
    }

    #[test]
    fn every_issuance_field_is_known_to_the_file_every_service_reads() {
        // keymesh-config refuses a [tokens] field it does not know of in every service; this file sets
        // every field token-service reads, so a field added here and not there fails at once.
        let file = "[tokens]\nissuer = \"i\"\naudience = \"a\"\nclock_skew_seconds = 5\nrevocation_bound_seconds = 10\n\
                    access_token_ttl_seconds = 60\nrefresh_token_ttl_seconds = 600\nsecret_grace_seconds = 0\n\
                    signing_key_rotation_days = 2\n[tokens.exchange]\nissuers = []\nrules = []\n";
        let c = config_of(Some(file), &[]).unwrap();
        assert_eq!(c.tokens.signing_key_rotation, Duration::from_secs(2 * 86_400));
        assert_eq!(c.tokens.verify.revocation_bound, Duration::from_secs(10));
    }

    #[test]
    fn defaults_and_errors_name_the_field() {
        let c = config_of(None, &[]).unwrap();
        assert_eq!(c.tokens.access_token_ttl, Duration::from_secs(3600));
        assert_eq!(c.tokens.verify.issuer, "keymesh");
        let err = config_of(Some("[tokens]\naccess_token_ttl_seconds = \"soon\"\n"), &[]).err().unwrap().to_string();
        assert!(err.contains("tokens.access_token_ttl_seconds"), "{err}");
        let err = config_of(None, &[("KEYMESH_TOKENS__ACCESS_TOKEN_TTL_SECONDS", "0")]).err().unwrap().to_string();
        assert!(err.contains("tokens.access_token_ttl_seconds"), "{err}");
        let err = config_of(None, &[("KEYMESH_TOKENS__ISSUR", "x")]).err().unwrap().to_string();
        assert!(err.contains("issur"), "{err}");
        let err = config_of(Some("[[tokens.exchange.issuers]]\nname = \"k8s\"\n"), &[]).err().unwrap().to_string();
        assert!(err.contains("tokens.exchange.issuers"), "{err}");
    }
}

//! The policy engine: what may be used where, decided the same way wherever a key is created or used.
//!
//! Three layers, checked in this order, each with its own verdict:
//!
//! 1. **FIPS mode** (mesh-wide): `enabled` refuses every algorithm FIPS 140-3 does not approve
//!    (ChaCha20-Poly1305, XChaCha20-Poly1305, AES-GCM-SIV, X25519/HPKE, BLAKE2b, Argon2, scrypt) with
//!    FAILED_PRECONDITION naming it; `preferred` allows them with a warning; `disabled` says nothing.
//! 2. **Algorithm policy** (the tenant's default, then the key's own): `allowed_algorithms` and
//!    `min_key_bits`.
//! 3. **Rules**: CEL expressions over the request's attributes that must evaluate to `true`.
//!
//! A policy's `enforcement` decides what a violation does: `NONE` evaluates nothing, `WARN` turns every
//! violation into a warning returned in the response and recorded in the audit event, `ENFORCE` refuses
//! (algorithm violations with FAILED_PRECONDITION, rule violations with PERMISSION_DENIED naming the rule).
//! A policy that leaves enforcement unspecified is enforced: a rule someone wrote should bind unless they
//! said otherwise. A rule that cannot be evaluated (a type error, a missing attribute) counts as violated,
//! so a broken rule fails closed.
//!
//! The attributes a rule sees:
//!
//! | variable | fields |
//! |---|---|
//! | `identity` | `id` (client id), `tenant`, `roles` (list of strings), `issuer` and `subject` (the external identity a token exchange vouched for, e.g. `system:serviceaccount:loaders:m1`; empty otherwise) |
//! | `tenant` | the caller's tenant id |
//! | `request` | `operation` (`"encrypt"`, `"decrypt"`, `"sign"`, …), `time` (timestamp, UTC), `context` (the encryption context, a map; empty when the call has none) |
//! | `key` | `id`, `name`, `labels` (map), `algorithm` (e.g. `"AES_256_GCM"`), `purpose`, `version` |
//! | `algorithm` | the same as `key.algorithm` |
//!
//! e.g. `request.operation != "decrypt" || request.time.getHours() in [8, 9, 10, 11, 12, 13, 14, 15, 16, 17]`
//! or `!("pii" in key.labels) || "pii-reader" in identity.roles`,
//! or `identity.subject == "system:serviceaccount:loaders:" + request.context.machine` (data of one machine
//! opens only for that machine's workload).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use keymesh_crypto::KeyAlgorithm;
use keymesh_proto::algorithm::ToProto;
use keymesh_proto::v1 as pb;
use serde::Deserialize;

/// Most rules in one policy.
pub const MAX_RULES: usize = 32;
/// Longest rule expression.
pub const MAX_EXPRESSION: usize = 4096;

/// What a policy check can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// A rule does not compile, or a policy is malformed (refused when the policy is set).
    #[error("{0}")]
    Invalid(String),
    /// A rule evaluated to false (or could not be evaluated) under enforcement.
    #[error("denied by {scope} policy rule {rule:?}{detail}")]
    Denied {
        /// "key" or "tenant".
        scope: &'static str,
        /// The rule's name.
        rule: String,
        /// Why it could not be evaluated, when it could not.
        detail: String,
    },
    /// The algorithm or key size is not allowed (policy or FIPS mode).
    #[error("{0}")]
    AlgorithmRefused(String),
}

/// FIPS mode of the mesh.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FipsMode {
    /// No restrictions.
    #[default]
    Disabled,
    /// Non-approved algorithms work, with a warning.
    Preferred,
    /// Non-approved algorithms are refused.
    Enabled,
}

impl FipsMode {
    /// The API's enum.
    pub fn to_proto(self) -> pb::FipsMode {
        match self {
            Self::Disabled => pb::FipsMode::Disabled,
            Self::Preferred => pb::FipsMode::Preferred,
            Self::Enabled => pb::FipsMode::Enabled,
        }
    }

    /// The name the gRPC health service reports SERVING in this mode, so a probe can check the mode in force:
    /// `grpc_health_probe -service keymesh.fips.enabled` succeeds only on a service running FIPS-enabled.
    pub fn health_name(self) -> &'static str {
        match self {
            Self::Disabled => "keymesh.fips.disabled",
            Self::Preferred => "keymesh.fips.preferred",
            Self::Enabled => "keymesh.fips.enabled",
        }
    }

    /// Lower-case name, as configured.
    pub fn name(self) -> &'static str {
        match self {
            Self::Disabled => "disabled",
            Self::Preferred => "preferred",
            Self::Enabled => "enabled",
        }
    }

    /// Checks that `what` (an algorithm, KDF or hash, by name) may be used; `approved` is whether FIPS
    /// 140-3 approves it. A warning goes to `warnings` in preferred mode.
    pub fn check(self, what: &str, approved: bool, warnings: &mut Vec<String>) -> Result<(), PolicyError> {
        if approved {
            return Ok(());
        }
        match self {
            Self::Disabled => Ok(()),
            Self::Preferred => {
                warnings.push(format!("{what} is not FIPS-approved (FIPS mode is preferred)"));
                Ok(())
            }
            Self::Enabled => Err(PolicyError::AlgorithmRefused(format!(
                "FIPS mode is enabled and {what} is not FIPS-approved; use an approved algorithm (AES-GCM, AES-CCM, \
                 AES-CBC/CTR with HMAC, HMAC-SHA2, ECDSA P-256/P-384, Ed25519, RSA-PSS, RSA-OAEP)"
            ))),
        }
    }

    /// [`check`](Self::check) for a key algorithm.
    pub fn check_algorithm(self, algorithm: KeyAlgorithm, warnings: &mut Vec<String>) -> Result<(), PolicyError> {
        self.check(algorithm.name(), algorithm.fips_approved(), warnings)
    }
}

/// `[policy]` of the mesh configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// `disabled` (default), `preferred` or `enabled`.
    #[serde(default)]
    pub fips_mode: FipsMode,
    /// Default policies per tenant id, applied to every key of the tenant before the key's own.
    #[serde(default)]
    pub tenants: BTreeMap<String, TenantPolicyConfig>,
}

/// `[policy.tenants.<tenant>]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantPolicyConfig {
    /// Algorithm names as the API spells them, with or without the `ALGORITHM_` prefix.
    #[serde(default)]
    pub allowed_algorithms: Vec<String>,
    /// Smallest key size in bits.
    #[serde(default)]
    pub min_key_bits: u32,
    /// `none`, `warn` or `enforce` (default).
    pub enforcement: Option<String>,
    /// Rules.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

/// One rule in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// Named in denials.
    pub name: String,
    /// CEL.
    pub expression: String,
    /// Operation names (`"decrypt"`, …); empty means all.
    #[serde(default)]
    pub operations: Vec<String>,
}

impl TenantPolicyConfig {
    /// The policy as the API writes it.
    pub fn to_proto(&self, tenant: &str) -> Result<pb::KeyPolicy, PolicyError> {
        let invalid = |what: String| PolicyError::Invalid(format!("policy.tenants.{tenant}: {what}"));
        let mut allowed = Vec::new();
        for name in &self.allowed_algorithms {
            let full = if name.starts_with("ALGORITHM_") { name.clone() } else { format!("ALGORITHM_{name}") };
            let algorithm = pb::Algorithm::from_str_name(&full.to_ascii_uppercase())
                .ok_or_else(|| invalid(format!("unknown algorithm {name:?}")))?;
            allowed.push(algorithm as i32);
        }
        let enforcement = match self.enforcement.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("enforce") => pb::PolicyEnforcement::Enforce,
            Some("warn") => pb::PolicyEnforcement::Warn,
            Some("none") => pb::PolicyEnforcement::None,
            Some(other) => return Err(invalid(format!("enforcement {other:?} is not none, warn or enforce"))),
        };
        let mut rules = Vec::new();
        for rule in &self.rules {
            let mut operations = Vec::new();
            for op in &rule.operations {
                let name = format!("OPERATION_{}", op.to_ascii_uppercase());
                let operation = pb::Operation::from_str_name(&name)
                    .ok_or_else(|| invalid(format!("rule {:?}: unknown operation {op:?}", rule.name)))?;
                operations.push(operation as i32);
            }
            rules.push(pb::PolicyRule { name: rule.name.clone(), expression: rule.expression.clone(), operations });
        }
        Ok(pb::KeyPolicy {
            allowed_algorithms: allowed,
            min_key_bits: self.min_key_bits,
            enforcement: enforcement as i32,
            rules,
            ..Default::default()
        })
    }
}

/// The request a decision is about.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    /// The caller's client id.
    pub identity: &'a str,
    /// The caller's tenant.
    pub tenant: &'a str,
    /// The caller's roles.
    pub roles: Vec<String>,
    /// The external issuer (configured name) a token exchange vouched for; empty for other tokens.
    pub external_issuer: &'a str,
    /// The external subject; empty for other tokens.
    pub external_subject: &'a str,
    /// The request's encryption context.
    pub context: &'a HashMap<String, String>,
    /// The operation.
    pub operation: pb::Operation,
    /// Key id.
    pub key_id: &'a str,
    /// Key name.
    pub key_name: &'a str,
    /// Key labels.
    pub labels: &'a HashMap<String, String>,
    /// The version's algorithm.
    pub algorithm: KeyAlgorithm,
    /// The version.
    pub version: u32,
    /// When.
    pub time: DateTime<Utc>,
}

impl Attributes<'_> {
    fn context(&self) -> cel::Context<'static, 'static> {
        let algorithm = self.algorithm.to_proto().as_str_name().trim_start_matches("ALGORITHM_").to_owned();
        let mut context = cel::Context::default();
        let identity: HashMap<&str, cel::Value> = HashMap::from([
            ("id", self.identity.into()),
            ("tenant", self.tenant.into()),
            ("roles", self.roles.clone().into()),
            ("issuer", self.external_issuer.into()),
            ("subject", self.external_subject.into()),
        ]);
        let encryption_context: HashMap<String, cel::Value> =
            self.context.iter().map(|(k, v)| (k.clone(), v.as_str().into())).collect();
        let request: HashMap<&str, cel::Value> = HashMap::from([
            ("operation", operation_name(self.operation).into()),
            ("time", cel::Value::Timestamp(self.time.fixed_offset())),
            ("context", encryption_context.into()),
        ]);
        let labels: HashMap<String, cel::Value> =
            self.labels.iter().map(|(k, v)| (k.clone(), v.as_str().into())).collect();
        let purpose =
            pb::KeyPurpose::from(self.algorithm.purpose()).as_str_name().trim_start_matches("KEY_PURPOSE_").to_owned();
        let key: HashMap<&str, cel::Value> = HashMap::from([
            ("id", self.key_id.into()),
            ("name", self.key_name.into()),
            ("labels", labels.into()),
            ("algorithm", algorithm.clone().into()),
            ("purpose", purpose.into()),
            ("version", cel::Value::Int(i64::from(self.version))),
        ]);
        context.add_variable_from_value("identity", identity);
        context.add_variable_from_value("tenant", self.tenant);
        context.add_variable_from_value("request", request);
        context.add_variable_from_value("key", key);
        context.add_variable_from_value("algorithm", algorithm);
        context
    }
}

/// An operation's name in rules (and in permissions): `"encrypt"`, `"generate_data_key"`, ….
pub fn operation_name(operation: pb::Operation) -> String {
    operation.as_str_name().trim_start_matches("OPERATION_").to_ascii_lowercase()
}

struct CompiledRule {
    name: String,
    program: cel::Program,
    operations: Vec<i32>,
}

/// A policy with its rules compiled, ready to evaluate many times.
pub struct CompiledPolicy {
    scope: &'static str,
    allowed: Vec<i32>,
    min_key_bits: u32,
    enforcement: pb::PolicyEnforcement,
    rules: Vec<CompiledRule>,
}

impl std::fmt::Debug for CompiledPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompiledPolicy")
            .field("scope", &self.scope)
            .field("enforcement", &self.enforcement)
            .field("rules", &self.rules.iter().map(|r| r.name.as_str()).collect::<Vec<_>>())
            .finish()
    }
}

impl CompiledPolicy {
    /// Compiles a key's (`scope` "key") or a tenant's (`scope` "tenant") policy; a rule that does not
    /// compile is refused with the compiler's message.
    pub fn compile(scope: &'static str, policy: &pb::KeyPolicy) -> Result<Self, PolicyError> {
        if policy.rules.len() > MAX_RULES {
            return Err(PolicyError::Invalid(format!("at most {MAX_RULES} rules")));
        }
        let enforcement = match pb::PolicyEnforcement::try_from(policy.enforcement) {
            Ok(pb::PolicyEnforcement::Unspecified) => pb::PolicyEnforcement::Enforce,
            Ok(e) => e,
            Err(_) => return Err(PolicyError::Invalid(format!("unknown enforcement {}", policy.enforcement))),
        };
        let mut names = std::collections::HashSet::new();
        let mut rules = Vec::with_capacity(policy.rules.len());
        for rule in &policy.rules {
            if rule.name.is_empty() || rule.name.len() > 64 || !names.insert(rule.name.as_str()) {
                return Err(PolicyError::Invalid(format!(
                    "rule names must be unique and 1-64 characters ({:?})",
                    rule.name
                )));
            }
            if rule.expression.trim().is_empty() || rule.expression.len() > MAX_EXPRESSION {
                return Err(PolicyError::Invalid(format!(
                    "rule {:?}: the expression must be 1 to {MAX_EXPRESSION} characters",
                    rule.name
                )));
            }
            let program = cel::Program::compile(&rule.expression).map_err(|e| {
                PolicyError::Invalid(format!("rule {:?} does not compile: {}", rule.name, e.to_string().trim()))
            })?;
            rules.push(CompiledRule { name: rule.name.clone(), program, operations: rule.operations.clone() });
        }
        Ok(Self {
            scope,
            allowed: policy.allowed_algorithms.clone(),
            min_key_bits: policy.min_key_bits,
            enforcement,
            rules,
        })
    }

    /// Checks the algorithm against `allowed_algorithms` and `min_key_bits` (at key creation and at use).
    pub fn check_algorithm(&self, algorithm: KeyAlgorithm, warnings: &mut Vec<String>) -> Result<(), PolicyError> {
        if self.enforcement == pb::PolicyEnforcement::None {
            return Ok(());
        }
        let name = algorithm.to_proto().as_str_name();
        let mut violation = None;
        if !self.allowed.is_empty() && !self.allowed.contains(&(algorithm.to_proto() as i32)) {
            let allowed: Vec<&str> =
                self.allowed.iter().filter_map(|a| pb::Algorithm::try_from(*a).ok().map(|a| a.as_str_name())).collect();
            violation = Some(format!("the {} policy allows {} only, not {name}", self.scope, allowed.join(", ")));
        } else if algorithm.key_bits() < self.min_key_bits {
            violation = Some(format!(
                "the {} policy requires keys of at least {} bits; {name} has {}",
                self.scope,
                self.min_key_bits,
                algorithm.key_bits()
            ));
        }
        match violation {
            None => Ok(()),
            Some(message) if self.enforcement == pb::PolicyEnforcement::Warn => {
                warnings.push(message);
                Ok(())
            }
            Some(message) => Err(PolicyError::AlgorithmRefused(message)),
        }
    }

    /// Evaluates the rules that apply to the operation.
    pub fn check_rules(&self, attributes: &Attributes<'_>, warnings: &mut Vec<String>) -> Result<(), PolicyError> {
        if self.enforcement == pb::PolicyEnforcement::None || self.rules.is_empty() {
            return Ok(());
        }
        let context = attributes.context();
        let operation = attributes.operation as i32;
        for rule in self.rules.iter().filter(|r| r.operations.is_empty() || r.operations.contains(&operation)) {
            let detail = match rule.program.execute(&context) {
                Ok(cel::Value::Bool(true)) => continue,
                Ok(cel::Value::Bool(false)) => String::new(),
                Ok(other) => format!(" (it gave {:?}, not a bool)", other.type_of()),
                Err(e) => format!(" (it could not be evaluated: {e})"),
            };
            let denied = PolicyError::Denied { scope: self.scope, rule: rule.name.clone(), detail };
            if self.enforcement == pb::PolicyEnforcement::Warn {
                warnings.push(format!("would be {denied}"));
            } else {
                return Err(denied);
            }
        }
        Ok(())
    }
}

/// The mesh's FIPS mode and the tenants' default policies.
#[derive(Debug, Default)]
pub struct PolicyEngine {
    fips: FipsMode,
    tenants: HashMap<String, CompiledPolicy>,
}

impl PolicyEngine {
    /// From `[policy]`; a tenant policy that does not compile stops the service at start.
    pub fn from_config(config: &PolicyConfig) -> Result<Self, PolicyError> {
        let mut tenants = HashMap::new();
        for (tenant, policy) in &config.tenants {
            let compiled = CompiledPolicy::compile("tenant", &policy.to_proto(tenant)?)
                .map_err(|e| PolicyError::Invalid(format!("policy.tenants.{tenant}: {e}")))?;
            tenants.insert(tenant.clone(), compiled);
        }
        Ok(Self { fips: config.fips_mode, tenants })
    }

    /// The FIPS mode in force.
    pub fn fips_mode(&self) -> FipsMode {
        self.fips
    }

    /// Whether `algorithm` may be used for a new key (or version) of `tenant` whose own policy is `key`:
    /// FIPS mode, then the tenant's and the key's algorithm policies.
    pub fn check_new_key(
        &self,
        tenant: &str,
        key: Option<&CompiledPolicy>,
        algorithm: KeyAlgorithm,
    ) -> Result<Vec<String>, PolicyError> {
        let mut warnings = Vec::new();
        self.fips.check_algorithm(algorithm, &mut warnings)?;
        for policy in self.tenants.get(tenant).into_iter().chain(key) {
            policy.check_algorithm(algorithm, &mut warnings)?;
        }
        Ok(warnings)
    }

    /// Everything that decides one use of a key: FIPS mode, the tenant's and the key's algorithm policies,
    /// then their rules. Returns the warnings to report.
    pub fn check_use(
        &self,
        key: Option<&CompiledPolicy>,
        attributes: &Attributes<'_>,
    ) -> Result<Vec<String>, PolicyError> {
        let mut warnings = self.check_new_key(attributes.tenant, key, attributes.algorithm)?;
        for policy in self.tenants.get(attributes.tenant).into_iter().chain(key) {
            policy.check_rules(attributes, &mut warnings)?;
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use keymesh_crypto::{
        SymmetricAlgorithm,
        pq::{MlDsa, MlKem},
        signature::SignatureAlgorithm,
    };

    use super::*;

    fn rule(name: &str, expression: &str, operations: &[pb::Operation]) -> pb::PolicyRule {
        pb::PolicyRule {
            name: name.into(),
            expression: expression.into(),
            operations: operations.iter().map(|o| *o as i32).collect(),
        }
    }

    fn attributes<'a>(labels: &'a HashMap<String, String>, hour: u32, operation: pb::Operation) -> Attributes<'a> {
        Attributes {
            identity: "billing",
            tenant: "acme",
            roles: vec!["app".into()],
            external_issuer: "",
            external_subject: "",
            context: labels,
            operation,
            key_id: "k_1",
            key_name: "user-pii",
            labels,
            algorithm: KeyAlgorithm::Symmetric(SymmetricAlgorithm::Aes256Gcm),
            version: 3,
            time: Utc.with_ymd_and_hms(2026, 11, 23, hour, 30, 0).unwrap(),
        }
    }

    #[test]
    fn rules_and_algorithm_policies_see_the_post_quantum_algorithms_and_operations() {
        // A rule that keeps decapsulation to ML-KEM-1024 keys, and allowed algorithms naming ML-DSA.
        let policy = pb::KeyPolicy {
            rules: vec![rule(
                "strong-kem",
                r#"key.purpose == "KEM" && algorithm == "ML_KEM_1024""#,
                &[pb::Operation::Decapsulate],
            )],
            allowed_algorithms: vec![pb::Algorithm::MlDsa65 as i32],
            ..Default::default()
        };
        let compiled = CompiledPolicy::compile("key", &policy).unwrap();
        let labels = HashMap::new();
        let mut warnings = vec![];
        let kem = |params| Attributes {
            algorithm: KeyAlgorithm::Kem(params),
            ..attributes(&labels, 10, pb::Operation::Decapsulate)
        };
        assert!(compiled.check_rules(&kem(MlKem::MlKem1024), &mut warnings).is_ok());
        let denied = compiled.check_rules(&kem(MlKem::MlKem768), &mut warnings).unwrap_err();
        assert_eq!(denied.to_string(), "denied by key policy rule \"strong-kem\"");
        let ml_dsa = |params| KeyAlgorithm::Signature(SignatureAlgorithm::MlDsa(params));
        assert!(compiled.check_algorithm(ml_dsa(MlDsa::MlDsa65), &mut warnings).is_ok());
        assert!(compiled.check_algorithm(ml_dsa(MlDsa::MlDsa44), &mut warnings).is_err());
    }

    #[test]
    fn office_hours_rule_denies_decrypt_at_night_only() {
        let policy = pb::KeyPolicy {
            rules: vec![rule(
                "office-hours",
                "request.time.getHours() >= 8 && request.time.getHours() < 18",
                &[pb::Operation::Decrypt],
            )],
            ..Default::default()
        };
        let compiled = CompiledPolicy::compile("key", &policy).unwrap();
        let labels = HashMap::new();
        let mut warnings = vec![];
        assert!(compiled.check_rules(&attributes(&labels, 10, pb::Operation::Decrypt), &mut warnings).is_ok());
        let denied = compiled.check_rules(&attributes(&labels, 23, pb::Operation::Decrypt), &mut warnings).unwrap_err();
        assert_eq!(denied.to_string(), "denied by key policy rule \"office-hours\"");
        // Encrypt is not covered by the rule.
        assert!(compiled.check_rules(&attributes(&labels, 23, pb::Operation::Encrypt), &mut warnings).is_ok());
        assert!(warnings.is_empty());
    }

    #[test]
    fn labels_roles_and_warn_mode() {
        let policy = pb::KeyPolicy {
            rules: vec![rule("pii-readers", r#"!("pii" in key.labels) || "pii-reader" in identity.roles"#, &[])],
            enforcement: pb::PolicyEnforcement::Warn as i32,
            ..Default::default()
        };
        let compiled = CompiledPolicy::compile("key", &policy).unwrap();
        let pii = HashMap::from([("pii".to_owned(), "true".to_owned())]);
        let mut warnings = vec![];
        compiled.check_rules(&attributes(&pii, 10, pb::Operation::Decrypt), &mut warnings).unwrap();
        assert_eq!(warnings, ["would be denied by key policy rule \"pii-readers\""]);
        let mut reader = attributes(&pii, 10, pb::Operation::Decrypt);
        reader.roles.push("pii-reader".into());
        let mut warnings = vec![];
        compiled.check_rules(&reader, &mut warnings).unwrap();
        assert!(warnings.is_empty());
    }

    #[test]
    fn broken_rules_are_refused_when_set_and_fail_closed_at_use() {
        let bad = pb::KeyPolicy { rules: vec![rule("typo", "request.time.getHours( >= 8", &[])], ..Default::default() };
        let err = CompiledPolicy::compile("key", &bad).unwrap_err().to_string();
        assert!(err.starts_with("rule \"typo\" does not compile:"), "{err}");
        // Compiles, but `key.labels.team` is missing: evaluation fails, and the rule counts as violated.
        let missing =
            pb::KeyPolicy { rules: vec![rule("team", r#"key.labels.team == "payments""#, &[])], ..Default::default() };
        let compiled = CompiledPolicy::compile("key", &missing).unwrap();
        let labels = HashMap::new();
        let err = compiled.check_rules(&attributes(&labels, 10, pb::Operation::Sign), &mut vec![]).unwrap_err();
        assert!(err.to_string().contains("could not be evaluated"), "{err}");
        let not_bool = pb::KeyPolicy { rules: vec![rule("n", "1 + 1", &[])], ..Default::default() };
        let err = CompiledPolicy::compile("key", &not_bool)
            .unwrap()
            .check_rules(&attributes(&labels, 10, pb::Operation::Sign), &mut vec![])
            .unwrap_err();
        assert!(err.to_string().contains("not a bool"), "{err}");
    }

    #[test]
    fn algorithm_policy_and_fips() {
        let policy = pb::KeyPolicy {
            allowed_algorithms: vec![pb::Algorithm::Aes256Gcm as i32, pb::Algorithm::RsaPss2048Sha256 as i32],
            min_key_bits: 3072,
            ..Default::default()
        };
        let compiled = CompiledPolicy::compile("tenant", &policy).unwrap();
        let chacha = KeyAlgorithm::Symmetric(SymmetricAlgorithm::ChaCha20Poly1305);
        let err = compiled.check_algorithm(chacha, &mut vec![]).unwrap_err().to_string();
        assert!(err.contains("allows ALGORITHM_AES_256_GCM, ALGORITHM_RSA_PSS_2048_SHA256 only"), "{err}");
        let rsa = KeyAlgorithm::Signature(SignatureAlgorithm::RsaPss2048Sha256);
        let err = compiled.check_algorithm(rsa, &mut vec![]).unwrap_err().to_string();
        assert!(err.contains("at least 3072 bits; ALGORITHM_RSA_PSS_2048_SHA256 has 2048"), "{err}");

        let mut warnings = vec![];
        FipsMode::Preferred.check_algorithm(chacha, &mut warnings).unwrap();
        assert_eq!(warnings, ["ChaCha20-Poly1305 is not FIPS-approved (FIPS mode is preferred)"]);
        let err = FipsMode::Enabled.check_algorithm(chacha, &mut vec![]).unwrap_err().to_string();
        assert!(err.starts_with("FIPS mode is enabled and ChaCha20-Poly1305 is not FIPS-approved"), "{err}");
        assert!(FipsMode::Enabled.check_algorithm(rsa, &mut vec![]).is_ok());
    }

    #[test]
    fn tenant_configuration() {
        let config: PolicyConfig = serde_json::from_str(
            r#"{"fips_mode": "preferred", "tenants": {"acme": {"allowed_algorithms": ["AES_256_GCM"],
                "enforcement": "warn", "rules": [{"name": "r", "expression": "true", "operations": ["decrypt"]}]}}}"#,
        )
        .unwrap();
        let engine = PolicyEngine::from_config(&config).unwrap();
        assert_eq!(engine.fips_mode(), FipsMode::Preferred);
        let labels = HashMap::new();
        let mut use_ = attributes(&labels, 10, pb::Operation::Decrypt);
        use_.algorithm = KeyAlgorithm::Symmetric(SymmetricAlgorithm::Aes256GcmSiv);
        let warnings = engine.check_use(None, &use_).unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        let bad: PolicyConfig =
            serde_json::from_str(r#"{"tenants": {"acme": {"rules": [{"name": "r", "expression": "1 +"}]}}}"#).unwrap();
        assert!(PolicyEngine::from_config(&bad).unwrap_err().to_string().contains("policy.tenants.acme"));
    }
}

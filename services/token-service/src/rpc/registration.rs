//! RegisterApplication, the SDK's auto-registration (see the .proto): an identity that logged in (`keymesh login`)
//! gets an application per name and environment, created the first time and found again after, with fresh
//! credentials each time it asks. Three rules keep it from being a way around the administrators:
//! - the application's permissions are bounded by the registrant's own, recomputed at every registration;
//! - a registered application cannot register further ones (else an access token, stolen or exchanged, would
//!   become a chain of lasting secrets, as `RotateClientSecret` refuses to let it become one);
//! - registrations are rate-limited per registering identity.

use keymesh_audit::AuditScope;
use keymesh_mesh::auth::{AccessClaims, KeyPermissionClaim, Role, glob_match, operation_name};
use keymesh_proto::v1 as pb;
use keymesh_store::{
    StoreError,
    entity::{application, registration},
    now_millis,
};

use super::TokenRpc;
use crate::{
    applications::{self, permissions_from_proto},
    error::TokenError,
    secrets,
};

/// At most this many key patterns in one registration.
const MAX_REGISTERED_KEYS: usize = 32;
/// What a registered application may do with the keys it names: the data plane, never key management.
const REGISTERED_OPERATIONS: &[pb::Operation] = &[
    pb::Operation::Encrypt,
    pb::Operation::Decrypt,
    pb::Operation::Reencrypt,
    pb::Operation::GenerateDataKey,
    pb::Operation::Sign,
    pb::Operation::Verify,
    pb::Operation::GenerateMac,
    pb::Operation::VerifyMac,
    pb::Operation::GetPublicKey,
    pb::Operation::Decapsulate,
    pb::Operation::Encapsulate,
];

/// A lowercase label: 1 to `max` of `[a-z0-9-]`, starting with a letter when `letter_first`.
fn check_label(field: &'static str, value: &str, max: usize, letter_first: bool) -> Result<(), TokenError> {
    let valid = !value.is_empty()
        && value.len() <= max
        && value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && (!letter_first || value.starts_with(|c: char| c.is_ascii_lowercase()));
    if valid {
        return Ok(());
    }
    let first = if letter_first { " starting with a letter" } else { "" };
    Err(TokenError::InvalidArgument { field, reason: format!("{value:?} must be 1 to {max} of [a-z0-9-]{first}") })
}

/// The operations of `wanted` that `held` grants on every key the pattern `pattern` can match. A held pattern
/// covers `pattern` when it matches `pattern` read as a literal name: patterns have only `*`, so each fixed part of
/// the held pattern is then a fixed part of `pattern`, and each `*` of `pattern` lies inside a `*` of the held one,
/// whatever it expands to. (A `?` or a class in patterns would break this reasoning: change both together.)
pub(crate) fn granted_operations(held: &[KeyPermissionClaim], pattern: &str, wanted: &[String]) -> Vec<String> {
    wanted
        .iter()
        .filter(|op| {
            held.iter().any(|h| glob_match(&h.key, pattern) && h.ops.iter().any(|o| o == "*" || o == op.as_str()))
        })
        .cloned()
        .collect()
}

/// Whether `registrant` (as [`registrant_of`] wrote it) is the application `client_id`, under any external subject.
pub(super) fn registered_by(registrant: &str, client_id: &str) -> bool {
    serde_json::from_str::<Vec<String>>(registrant).is_ok_and(|parts| parts.first().is_some_and(|c| c == client_id))
}

/// Who registers: the application, and the external subject its token was exchanged for, as a JSON array (no
/// separator a part could contain, so two identities never read alike).
fn registrant_of(claims: &AccessClaims) -> String {
    let (iss, sub) = claims.ext.as_ref().map(|e| (e.iss.as_str(), e.sub.as_str())).unwrap_or_default();
    serde_json::json!([claims.sub, iss, sub]).to_string()
}

impl TokenRpc {
    pub(super) async fn register_application(
        &self,
        claims: &AccessClaims,
        request: pb::RegisterApplicationRequest,
        audit: &mut AuditScope,
    ) -> Result<pb::RegisterApplicationResponse, TokenError> {
        check_label("name", &request.name, 48, true)?;
        check_label("environment", &request.environment, 15, false)?;
        if !request.team.is_empty() {
            check_label("team", &request.team, 64, false)?;
        }
        let patterns = if request.keys.is_empty() { vec!["default".to_owned()] } else { request.keys.clone() };
        if patterns.len() > MAX_REGISTERED_KEYS {
            return Err(TokenError::InvalidArgument {
                field: "keys",
                reason: format!("at most {MAX_REGISTERED_KEYS} key patterns; use `*` to cover more keys"),
            });
        }
        // Validated as CreateApplication validates patterns (length, printable), naming the field `keys`.
        let all_operations: Vec<String> =
            REGISTERED_OPERATIONS.iter().map(|op| operation_name(*op).to_owned()).collect();
        let requested: Vec<pb::KeyPermission> = patterns
            .iter()
            .map(|p| pb::KeyPermission {
                key_pattern: p.clone(),
                operations: REGISTERED_OPERATIONS.iter().map(|op| *op as i32).collect(),
            })
            .collect();
        permissions_from_proto(&requested).map_err(|e| match e {
            TokenError::InvalidArgument { reason, .. } => TokenError::InvalidArgument { field: "keys", reason },
            other => other,
        })?;
        if !claims.has_any_role(&[Role::Developer, Role::Admin, Role::Owner]) {
            return Err(TokenError::PermissionDenied(format!(
                "RegisterApplication needs ROLE_DEVELOPER, ROLE_ADMIN or ROLE_OWNER; application {} has {:?}",
                claims.sub, claims.roles
            )));
        }
        if self.repo.registration_of(&claims.sub).await?.is_some() {
            return Err(TokenError::PermissionDenied(format!(
                "RegisterApplication: application {} was itself registered; register from a login session",
                claims.sub
            )));
        }
        let registrant = registrant_of(claims);
        self.limits.admit_registration(&registrant).await?;
        let permissions = patterns
            .into_iter()
            .map(|pattern| {
                let ops = granted_operations(&claims.perms, &pattern, &all_operations);
                if ops.is_empty() {
                    return Err(TokenError::PermissionDenied(format!(
                        "RegisterApplication: application {} holds no data-plane permission on keys {pattern:?}; an \
                         application gets at most what its registrant holds",
                        claims.sub
                    )));
                }
                Ok(KeyPermissionClaim { key: pattern, ops })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let permissions =
            serde_json::to_string(&permissions).map_err(|e| TokenError::Internal(format!("permissions: {e}")))?;
        let app_name = format!("{}.{}", request.name, request.environment);
        if let Some(found) = self.repo.registration(&claims.tenant, &request.name, &request.environment).await? {
            return self.register_again(found, &registrant, permissions, audit).await;
        }
        let secret = secrets::generate_secret()?;
        let now = now_millis();
        let row = application::Model {
            client_id: format!("app_{}", uuid::Uuid::new_v4().simple()),
            tenant_id: claims.tenant.clone(),
            name: app_name.clone(),
            roles: serde_json::to_string(&[Role::Developer]).map_err(|e| TokenError::Internal(e.to_string()))?,
            permissions,
            secret_hash: self.hash_secret(&secret).await?,
            previous_secret_hash: None,
            previous_secret_expires_at: None,
            disabled: false,
            created_at: now,
        };
        let registration = registration::Model {
            client_id: row.client_id.clone(),
            tenant_id: row.tenant_id.clone(),
            registrant,
            name: request.name.clone(),
            environment: request.environment.clone(),
            team: request.team,
            created_at: now,
        };
        audit.resource(&row.client_id, 0, 0);
        match self.repo.create_registered_application(row.clone(), registration.clone()).await {
            Ok(()) => {}
            Err(StoreError::AlreadyExists { .. }) => {
                return match self.repo.registration(&claims.tenant, &request.name, &request.environment).await? {
                    // A registration racing this one won: registering again finds it.
                    Some(_) => {
                        Err(TokenError::Aborted(format!("{app_name} was registered concurrently; register again")))
                    }
                    None => Err(TokenError::AlreadyExists(format!(
                        "name: an application named {app_name} exists that was not registered; choose another name"
                    ))),
                };
            }
            Err(e) => return Err(e.into()),
        }
        audit.detail("registered: a new application");
        tracing::info!(client_id = %row.client_id, name = %app_name, "registered an application");
        Ok(pb::RegisterApplicationResponse {
            application: Some(applications::to_proto(&row)?),
            client_secret: secret.to_string(),
            created: true,
            environment: registration.environment,
            team: registration.team,
        })
    }

    /// The registrant asks again for an application it registered: fresh credentials (the previous secret keeps
    /// working for the configured grace period, so its other running instances are not cut off), and the
    /// permissions as bounded now, so a registrant whose permissions were narrowed narrows its applications.
    async fn register_again(
        &self,
        (found, app): (registration::Model, application::Model),
        registrant: &str,
        permissions: String,
        audit: &mut AuditScope,
    ) -> Result<pb::RegisterApplicationResponse, TokenError> {
        audit.resource(&app.client_id, 0, 0);
        if found.registrant != registrant {
            return Err(TokenError::AlreadyExists(format!(
                "{} is registered by another identity; ask it (or an admin) for credentials",
                app.name
            )));
        }
        if app.disabled {
            return Err(TokenError::FailedPrecondition(format!(
                "application {} ({}) is disabled; it gets no new credentials",
                app.client_id, app.name
            )));
        }
        let secret = secrets::generate_secret()?;
        let previous_expires_at = now_millis() + self.signer.params.secret_grace.as_millis() as i64;
        let new_hash = self.hash_secret(&secret).await?;
        let reissued = self
            .repo
            .reissue_registered(&app.client_id, new_hash, &app.secret_hash, previous_expires_at, permissions.clone())
            .await?;
        if !reissued {
            return Err(TokenError::Aborted(format!(
                "the secret of {} was rotated concurrently; register again",
                app.client_id
            )));
        }
        audit.detail("registered again: fresh credentials, the previous secret valid for the grace period");
        tracing::info!(client_id = %app.client_id, name = %app.name, "re-registered an application");
        let app = application::Model { permissions, ..app };
        Ok(pb::RegisterApplicationResponse {
            application: Some(applications::to_proto(&app)?),
            client_secret: secret.to_string(),
            created: false,
            environment: found.environment,
            team: found.team,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(pattern: &str, ops: &[&str]) -> KeyPermissionClaim {
        KeyPermissionClaim { key: pattern.into(), ops: ops.iter().map(|o| (*o).to_owned()).collect() }
    }

    fn ops(list: &[&str]) -> Vec<String> {
        list.iter().map(|o| (*o).to_owned()).collect()
    }

    #[test]
    fn a_registered_application_never_gets_more_than_its_registrant_holds() {
        let alice = [held("orders-*", &["encrypt", "decrypt"])];
        let wanted = ops(&["encrypt", "decrypt", "sign"]);
        // Narrower or equal patterns: the operations alice holds, not the others asked for.
        for pattern in ["orders-*", "orders-eu", "orders-eu-*", "orders-*-eu"] {
            assert_eq!(granted_operations(&alice, pattern, &wanted), ["encrypt", "decrypt"], "{pattern}");
        }
        // Wider or other patterns: nothing.
        for pattern in ["*", "orders*", "o*-eu", "*orders-*", "payments", "orders"] {
            assert!(granted_operations(&alice, pattern, &wanted).is_empty(), "{pattern} is not covered");
        }
        // Every operation held on everything.
        let owner = [held("*", &["*"])];
        assert_eq!(granted_operations(&owner, "*", &wanted), wanted);
        // Operations add up over the patterns that cover.
        let split = [held("orders-*", &["encrypt"]), held("orders-eu", &["decrypt"])];
        assert_eq!(granted_operations(&split, "orders-eu", &wanted), ["encrypt", "decrypt"]);
        assert_eq!(granted_operations(&split, "orders-us", &wanted), ["encrypt"]);
    }

    #[test]
    fn labels_name_their_field_and_rule() {
        assert!(check_label("name", "orders-api", 48, true).is_ok());
        for (value, letter_first) in [("", true), ("Orders", true), ("1orders", true), ("a_b", false)] {
            let Err(TokenError::InvalidArgument { field, reason }) = check_label("name", value, 48, letter_first)
            else {
                panic!("{value:?} accepted")
            };
            assert_eq!(field, "name");
            assert!(reason.contains("[a-z0-9-]"), "{reason}");
        }
        assert!(check_label("environment", &"e".repeat(16), 15, false).is_err());
        assert!(check_label("environment", &"e".repeat(15), 15, false).is_ok());
    }

    #[test]
    fn registrants_are_unambiguous_whatever_their_parts_contain() {
        let claims = |iss: &str, sub: &str| AccessClaims {
            iss: String::new(),
            sub: "app_1".into(),
            aud: String::new(),
            exp: 0,
            iat: 0,
            nbf: 0,
            jti: String::new(),
            tenant: "t".into(),
            roles: vec![],
            perms: vec![],
            sid: None,
            ext: Some(keymesh_mesh::auth::ExternalSubject { iss: iss.into(), sub: sub.into() }),
        };
        assert_ne!(
            registrant_of(&claims("https://idp:8443", "alice")),
            registrant_of(&claims("https://idp", "8443:alice"))
        );
        assert!(registered_by(&registrant_of(&claims("https://idp", "alice")), "app_1"));
        assert!(!registered_by(&registrant_of(&claims("https://idp", "alice")), "app_10"));
        assert!(!registered_by("not json", "app_1"));
    }
}

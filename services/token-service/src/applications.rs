//! Applications as the API shows them and as they are stored: validation of names, roles and key
//! permissions on the way in, and the conversions both ways. Roles and permissions are stored as the JSON the
//! access tokens carry, so issuing a token copies them without translation.

use keymesh_mesh::auth::{KeyPermissionClaim, Role, operation_name};
use keymesh_proto::v1 as pb;
use keymesh_store::entity::application;

use crate::error::TokenError;

/// Most permissions one application holds: each is checked on every data-plane call.
const MAX_PERMISSIONS: usize = 32;
const MAX_PATTERN: usize = 160;

/// Every operation a permission can name.
fn all_operations() -> impl Iterator<Item = pb::Operation> {
    (1..).map_while(|n| pb::Operation::try_from(n).ok())
}

/// A Unix-milliseconds time as a proto timestamp.
pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

/// Refuses a name that is empty, too long or has characters outside `allowed`.
pub fn validate_name(field: &'static str, name: &str, allowed: fn(char) -> bool, rule: &str) -> Result<(), TokenError> {
    if name.is_empty() || name.len() > 64 || !name.chars().all(allowed) {
        return Err(TokenError::InvalidArgument { field, reason: format!("{name:?} is not {rule}") });
    }
    Ok(())
}

/// An application name: 1 to 64 of `[A-Za-z0-9._-]`.
pub fn validate_application_name(name: &str) -> Result<(), TokenError> {
    validate_name(
        "name",
        name,
        |c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'),
        "1 to 64 of [A-Za-z0-9._-]",
    )
}

/// A role from the API.
pub fn role_from_proto(role: i32) -> Result<Role, TokenError> {
    match pb::Role::try_from(role) {
        Ok(pb::Role::Viewer) => Ok(Role::Viewer),
        Ok(pb::Role::Developer) => Ok(Role::Developer),
        Ok(pb::Role::Admin) => Ok(Role::Admin),
        Ok(pb::Role::Owner) => Ok(Role::Owner),
        Ok(pb::Role::Auditor) => Ok(Role::Auditor),
        _ => Err(TokenError::InvalidArgument {
            field: "roles",
            reason: format!(
                "{role} is not a role; use ROLE_VIEWER, ROLE_DEVELOPER, ROLE_ADMIN, ROLE_OWNER or ROLE_AUDITOR"
            ),
        }),
    }
}

fn role_to_proto(role: Role) -> pb::Role {
    match role {
        Role::Viewer => pb::Role::Viewer,
        Role::Developer => pb::Role::Developer,
        Role::Admin => pb::Role::Admin,
        Role::Owner => pb::Role::Owner,
        Role::Auditor => pb::Role::Auditor,
    }
}

/// Roles from the API: at least one, each known, no repeats.
pub fn roles_from_proto(roles: &[i32]) -> Result<Vec<Role>, TokenError> {
    if roles.is_empty() {
        return Err(TokenError::InvalidArgument { field: "roles", reason: "give at least one role".into() });
    }
    let mut out = Vec::with_capacity(roles.len());
    for role in roles {
        let role = role_from_proto(*role)?;
        if !out.contains(&role) {
            out.push(role);
        }
    }
    Ok(out)
}

/// Key permissions from the API: patterns of 1 to 160 printable characters, each with at least one known
/// operation.
pub fn permissions_from_proto(permissions: &[pb::KeyPermission]) -> Result<Vec<KeyPermissionClaim>, TokenError> {
    if permissions.len() > MAX_PERMISSIONS {
        return Err(TokenError::InvalidArgument {
            field: "permissions",
            reason: format!("at most {MAX_PERMISSIONS}; use patterns (`*`) to cover more keys"),
        });
    }
    permissions
        .iter()
        .map(|p| {
            let pattern = &p.key_pattern;
            if pattern.is_empty() || pattern.len() > MAX_PATTERN || pattern.chars().any(char::is_control) {
                return Err(TokenError::InvalidArgument {
                    field: "permissions.key_pattern",
                    reason: format!("{pattern:?} must be 1 to {MAX_PATTERN} printable characters"),
                });
            }
            if p.operations.is_empty() {
                return Err(TokenError::InvalidArgument {
                    field: "permissions.operations",
                    reason: format!("the permission on {pattern:?} names no operation"),
                });
            }
            let mut ops = Vec::new();
            for op in &p.operations {
                match pb::Operation::try_from(*op) {
                    Ok(pb::Operation::Unspecified) | Err(_) => {
                        return Err(TokenError::InvalidArgument {
                            field: "permissions.operations",
                            reason: format!("{op} is not an operation (OPERATION_ENCRYPT, OPERATION_DECRYPT, …)"),
                        });
                    }
                    Ok(op) => {
                        let name = operation_name(op).to_owned();
                        if !ops.contains(&name) {
                            ops.push(name);
                        }
                    }
                }
            }
            Ok(KeyPermissionClaim { key: pattern.clone(), ops })
        })
        .collect()
}

/// The roles stored with an application.
pub fn stored_roles(app: &application::Model) -> Result<Vec<Role>, TokenError> {
    serde_json::from_str(&app.roles)
        .map_err(|e| TokenError::Internal(format!("stored roles of {}: {e}", app.client_id)))
}

/// The key permissions stored with an application.
pub fn stored_permissions(app: &application::Model) -> Result<Vec<KeyPermissionClaim>, TokenError> {
    serde_json::from_str(&app.permissions)
        .map_err(|e| TokenError::Internal(format!("stored permissions of {}: {e}", app.client_id)))
}

/// An application as the API shows it (`*` operations listed out).
pub fn to_proto(app: &application::Model) -> Result<pb::Application, TokenError> {
    let permissions = stored_permissions(app)?
        .into_iter()
        .map(|p| {
            let operations = all_operations()
                .filter(|op| p.ops.iter().any(|o| o == "*" || o == operation_name(*op)))
                .map(|op| op as i32)
                .collect();
            pb::KeyPermission { key_pattern: p.key, operations }
        })
        .collect();
    Ok(pb::Application {
        client_id: app.client_id.clone(),
        tenant_id: app.tenant_id.clone(),
        name: app.name.clone(),
        roles: stored_roles(app)?.into_iter().map(|r| role_to_proto(r) as i32).collect(),
        permissions,
        disabled: app.disabled,
        create_time: Some(timestamp(app.created_at)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_round_trip_and_bad_input_is_named() {
        let perms = permissions_from_proto(&[pb::KeyPermission {
            key_pattern: "pii-*".into(),
            operations: vec![
                pb::Operation::Encrypt as i32,
                pb::Operation::Decrypt as i32,
                pb::Operation::Encrypt as i32,
            ],
        }])
        .unwrap();
        assert_eq!(
            perms,
            vec![KeyPermissionClaim { key: "pii-*".into(), ops: vec!["encrypt".into(), "decrypt".into()] }]
        );
        for (bad, field) in [
            (pb::KeyPermission { key_pattern: String::new(), operations: vec![1] }, "permissions.key_pattern"),
            (pb::KeyPermission { key_pattern: "a".into(), operations: vec![] }, "permissions.operations"),
            (pb::KeyPermission { key_pattern: "a".into(), operations: vec![0] }, "permissions.operations"),
            (pb::KeyPermission { key_pattern: "a".into(), operations: vec![99] }, "permissions.operations"),
        ] {
            let err = permissions_from_proto(&[bad]).unwrap_err();
            assert!(matches!(err, TokenError::InvalidArgument { field: f, .. } if f == field), "{err}");
        }
        assert!(roles_from_proto(&[]).is_err());
        assert!(roles_from_proto(&[0]).is_err());
        assert_eq!(roles_from_proto(&[1, 1, 3]).unwrap(), vec![Role::Viewer, Role::Admin]);
        assert!(validate_application_name("billing-api.v2").is_ok());
        assert!(validate_application_name("no spaces").is_err());
    }

    #[test]
    fn wildcard_operations_are_listed_out() {
        let app = application::Model {
            client_id: "app_1".into(),
            tenant_id: "t".into(),
            name: "a".into(),
            roles: r#"["owner"]"#.into(),
            permissions: r#"[{"key":"*","ops":["*"]}]"#.into(),
            secret_hash: String::new(),
            previous_secret_hash: None,
            previous_secret_expires_at: None,
            disabled: false,
            created_at: 1500,
        };
        let shown = to_proto(&app).unwrap();
        assert_eq!(shown.permissions[0].operations.len(), 13, "every operation, DECAPSULATE and ENCAPSULATE too");
        assert_eq!(shown.roles, vec![pb::Role::Owner as i32]);
        assert_eq!(shown.create_time, Some(prost_types::Timestamp { seconds: 1, nanos: 500_000_000 }));
    }
}

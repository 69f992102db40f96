//! No application rotates its own client secret, whatever its roles (issue 20, item 2): an admin or an owner
//! calling RotateClientSecret on itself with its own access token is refused, with `expire_previous_now` too,
//! its current secret keeps working, and the refusal is in the audit trail. Another admin rotates it.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use integration_tests::{Mesh, create_application, with_token};
use keymesh_proto::v1::{self as pb, token_service_client::TokenServiceClient};
use tonic::Code;

async fn issue(mesh: &Mesh, client_id: &str, secret: &str) -> Result<String, tonic::Status> {
    let request = pb::IssueTokenRequest {
        grant_type: pb::GrantType::ClientCredentials as i32,
        client_id: client_id.into(),
        client_secret: secret.into(),
        ..Default::default()
    };
    let mut tokens = TokenServiceClient::new(mesh.channel(keymesh_mesh::ServiceName::TokenService));
    Ok(tokens.issue_token(request).await?.into_inner().access_token)
}

async fn rotate(mesh: &Mesh, token: &str, client_id: &str, now: bool) -> Result<String, tonic::Status> {
    let request =
        pb::RotateClientSecretRequest { client_id: client_id.into(), expire_previous_now: now, ..Default::default() };
    let mut tokens = TokenServiceClient::new(mesh.channel(keymesh_mesh::ServiceName::TokenService));
    Ok(tokens.rotate_client_secret(with_token(request, token)).await?.into_inner().client_secret)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_application_rotates_its_own_secret_whatever_its_roles() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    let root = mesh.admin_client().access_token().await.unwrap().to_string();
    for (name, roles) in [("self-admin", vec![pb::Role::Admin]), ("self-owner", vec![pb::Role::Owner])] {
        let (id, secret) = create_application(&mesh, &root, "", name, &roles, &[]).await.unwrap();
        let token = issue(&mesh, &id, &secret).await.unwrap();
        for now in [false, true] {
            let Err(refused) = rotate(&mesh, &token, &id, now).await else {
                panic!("{name} rotated its own secret (expire_previous_now {now})");
            };
            assert_eq!(refused.code(), Code::PermissionDenied, "{name} (expire_previous_now {now}): {refused:?}");
            assert!(refused.message().contains("own secret"), "{name}: {}", refused.message());
        }
        assert!(issue(&mesh, &id, &secret).await.is_ok(), "{name}: the current secret still works");

        // The refusal is in the trail: a DENIED RotateClientSecret by the application on itself.
        let query = pb::QueryRequest {
            operation: "RotateClientSecret".into(),
            identity: id.clone(),
            outcome: pb::Outcome::Denied as i32,
            ..Default::default()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let mut audit = pb::audit_service_client::AuditServiceClient::new(
                mesh.channel(keymesh_mesh::ServiceName::AuditService),
            );
            let mut stream = audit.query(with_token(query.clone(), &root)).await.unwrap().into_inner();
            let mut found = 0;
            while let Some(record) = stream.message().await.unwrap() {
                let event = record.record.unwrap().event.unwrap();
                assert_eq!(event.resource, id);
                found += 1;
            }
            if found == 2 {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{name}: {found} refusals audited, not 2");
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }

        // Another owner rotates it.
        let rotated = rotate(&mesh, &root, &id, true).await.unwrap();
        assert!(issue(&mesh, &id, &rotated).await.is_ok(), "{name}: the rotated secret works");
        assert_eq!(issue(&mesh, &id, &secret).await.unwrap_err().code(), Code::Unauthenticated, "{name}: old one ends");
    }
}

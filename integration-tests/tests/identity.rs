//! Identity and access through the real services: applications created, listed, rotated and disabled through
//! TokenService; roles, key permissions and tenant boundaries enforced by every service; refresh tokens
//! rotated on use with a replay revoking the family; tokens not yet valid, revoked, or of a disabled
//! application refused within the configured revocation bound; and every token event in the audit trail.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use integration_tests::{Mesh, create_application, genuine_signing_key, key_request, second_tenant, with_token};
use keymesh_mesh::{ServiceName, auth::unix_now};
use keymesh_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient, key_service_client::KeyServiceClient,
    token_service_client::TokenServiceClient,
};
use tonic::Code;

/// The revocation bound the mesh runs with: a revoked token must be refused everywhere this long after.
const BOUND: Duration = Duration::from_secs(3);

fn tokens(mesh: &Mesh) -> TokenServiceClient<tonic::transport::Channel> {
    TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
}

async fn issue(mesh: &Mesh, client_id: &str, secret: &str) -> Result<pb::IssueTokenResponse, tonic::Status> {
    let request = pb::IssueTokenRequest {
        grant_type: pb::GrantType::ClientCredentials as i32,
        client_id: client_id.into(),
        client_secret: secret.into(),
        ..Default::default()
    };
    Ok(tokens(mesh).issue_token(request).await?.into_inner())
}

async fn refresh(mesh: &Mesh, refresh_token: &str) -> Result<pb::IssueTokenResponse, tonic::Status> {
    let request = pb::IssueTokenRequest {
        grant_type: pb::GrantType::RefreshToken as i32,
        refresh_token: refresh_token.into(),
        ..Default::default()
    };
    Ok(tokens(mesh).issue_token(request).await?.into_inner())
}

async fn revoke(mesh: &Mesh, token: &str) {
    tokens(mesh).revoke_token(pb::RevokeTokenRequest { token: token.into() }).await.unwrap();
}

async fn encrypt(mesh: &Mesh, token: &str, key: &str) -> Result<pb::EncryptResponse, tonic::Status> {
    let request = pb::EncryptRequest { key: key.into(), plaintext: b"secret".to_vec(), ..Default::default() };
    Ok(CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .encrypt(with_token(request, token))
        .await?
        .into_inner())
}

async fn get_key(mesh: &Mesh, token: &str, key: &str) -> Result<pb::Key, tonic::Status> {
    let request = pb::GetKeyRequest { key: key.into() };
    Ok(KeyServiceClient::new(mesh.channel(ServiceName::KeyService))
        .get_key(with_token(request, token))
        .await?
        .into_inner()
        .key
        .unwrap())
}

fn assert_code<T>(result: Result<T, tonic::Status>, code: Code, contains: &str, what: &str) {
    let Err(status) = result else { panic!("{what}: succeeded") };
    assert_eq!(status.code(), code, "{what}: {}", status.message());
    assert!(status.message().contains(contains), "{what}: {:?} lacks {contains:?}", status.message());
}

/// `token` is refused with UNAUTHENTICATED naming `reason` by crypto-service, key-service and token-service.
async fn refused_everywhere(mesh: &Mesh, token: &str, reason: &str, what: &str) {
    assert_code(encrypt(mesh, token, "pii-users").await, Code::Unauthenticated, reason, what);
    assert_code(get_key(mesh, token, "pii-users").await, Code::Unauthenticated, reason, what);
    let list = tokens(mesh).list_applications(with_token(pb::ListApplicationsRequest::default(), token)).await;
    assert_code(list, Code::Unauthenticated, reason, what);
}

#[tokio::test]
async fn identity_and_access() {
    let bound = BOUND.as_secs().to_string();
    let mut mesh = Mesh::start(&[("KEYMESH_TOKENS__REVOCATION_BOUND_SECONDS", &bound)], &[]).await;
    let admin = mesh.admin_client();
    let admin_token = admin.access_token().await.unwrap().to_string();
    for name in ["pii-users", "billing"] {
        integration_tests::create_key(&admin, key_request(name, pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm))
            .await
            .unwrap();
    }
    let root_tenant = get_key(&mesh, &admin_token, "pii-users").await.unwrap().tenant_id;

    // Applications with roles and key permissions; bad input is refused, naming the field.
    let (viewer_id, viewer_secret) =
        create_application(&mesh, &admin_token, "", "dashboard", &[pb::Role::Viewer], &[]).await.unwrap();
    let dev_perms: &[(&str, &[pb::Operation])] = &[("pii-*", &[pb::Operation::Encrypt, pb::Operation::Decrypt])];
    let (dev_id, dev_secret) =
        create_application(&mesh, &admin_token, "", "users-api", &[pb::Role::Developer], dev_perms).await.unwrap();
    assert_code(
        create_application(&mesh, &admin_token, "", "users-api", &[pb::Role::Developer], dev_perms).await,
        Code::AlreadyExists,
        "already exists",
        "a second application of the same name",
    );
    assert_code(
        create_application(&mesh, &admin_token, "", "bad name", &[pb::Role::Viewer], &[]).await,
        Code::InvalidArgument,
        "name",
        "a name with a space",
    );
    assert_code(
        create_application(&mesh, &admin_token, "", "no-roles", &[], &[]).await,
        Code::InvalidArgument,
        "roles",
        "no roles",
    );
    let viewer = issue(&mesh, &viewer_id, &viewer_secret).await.unwrap();
    let dev = issue(&mesh, &dev_id, &dev_secret).await.unwrap();
    assert!(dev.refresh_token.starts_with("kmrt_"), "client credentials start a refresh family");

    // PERMISSION_DENIED: a viewer calling admin methods in key-service and token-service.
    let create = pb::CreateKeyRequest {
        name: "by-viewer".into(),
        ..key_request("by-viewer", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm)
    };
    let err = KeyServiceClient::new(mesh.channel(ServiceName::KeyService))
        .create_key(with_token(create, &viewer.access_token))
        .await;
    assert_code(err, Code::PermissionDenied, "roles", "a viewer creating a key");
    assert_code(
        create_application(&mesh, &viewer.access_token, "", "escalate", &[pb::Role::Admin], &[]).await,
        Code::PermissionDenied,
        "roles",
        "a viewer creating an application",
    );
    assert!(get_key(&mesh, &viewer.access_token, "pii-users").await.is_ok(), "a viewer reads keys");
    let listed = tokens(&mesh)
        .list_applications(with_token(pb::ListApplicationsRequest::default(), &viewer.access_token))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.applications.len(), 3, "bootstrap admin, dashboard, users-api");

    // PERMISSION_DENIED: a key outside the application's permissions, or an operation outside them.
    assert!(encrypt(&mesh, &dev.access_token, "pii-users").await.is_ok());
    assert_code(encrypt(&mesh, &dev.access_token, "billing").await, Code::PermissionDenied, "billing", "a key outside");
    let sign = pb::SignRequest {
        key: "pii-users".into(),
        input: Some(pb::sign_request::Input::Message(b"m".to_vec())),
        ..Default::default()
    };
    let err = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .sign(with_token(sign, &dev.access_token))
        .await;
    assert_code(err, Code::PermissionDenied, "sign", "an operation outside");
    let billing_id = get_key(&mesh, &admin_token, "billing").await.unwrap().key_id;
    assert_code(
        encrypt(&mesh, &dev.access_token, &billing_id).await,
        Code::PermissionDenied,
        "billing",
        "a key outside, named by id",
    );
    let (owner_app_id, _) = create_application(&mesh, &admin_token, "", "admin-makes-owner", &[pb::Role::Owner], &[])
        .await
        .expect("the bootstrap admin is an owner, and owners grant ROLE_OWNER");

    // Tenants: an owner creates one below its own and an admin application in it; that admin manages only
    // its tenant.
    let child = tokens(&mesh)
        .create_tenant(with_token(pb::CreateTenantRequest { name: "team-a".into() }, &admin_token))
        .await
        .unwrap()
        .into_inner()
        .tenant
        .unwrap();
    assert_eq!(child.parent_tenant_id, root_tenant);
    let err = tokens(&mesh)
        .create_tenant(with_token(pb::CreateTenantRequest { name: "team-b".into() }, &dev.access_token))
        .await;
    assert_code(err, Code::PermissionDenied, "ROLE_OWNER", "a developer creating a tenant");
    let all: &[(&str, &[pb::Operation])] = &[("*", &[pb::Operation::Encrypt, pb::Operation::Decrypt])];
    let (child_admin_id, child_admin_secret) =
        create_application(&mesh, &admin_token, &child.tenant_id, "team-a-admin", &[pb::Role::Admin], all)
            .await
            .unwrap();
    let child_admin = issue(&mesh, &child_admin_id, &child_admin_secret).await.unwrap().access_token;

    // PERMISSION_DENIED: every explicit reach into another tenant, up, sideways or unknown.
    let (other_id, other_secret) = second_tenant(&mesh).await;
    let other_admin = issue(&mesh, &other_id, &other_secret).await.unwrap().access_token;
    for (token, tenant, who) in [
        (&child_admin, root_tenant.as_str(), "a child tenant's admin into its parent"),
        (&admin_token, "t_second", "an owner into an unrelated tenant"),
        (&other_admin, child.tenant_id.as_str(), "another tenant's owner into a child of the root"),
        (&admin_token, "t_does_not_exist", "an owner into an unknown tenant"),
    ] {
        assert_code(
            create_application(&mesh, token, tenant, "intruder", &[pb::Role::Admin], &[]).await,
            Code::PermissionDenied,
            "neither the caller's nor below it",
            who,
        );
        let list = pb::ListApplicationsRequest { tenant_id: tenant.into(), ..Default::default() };
        assert_code(
            tokens(&mesh).list_applications(with_token(list, token)).await,
            Code::PermissionDenied,
            "neither",
            who,
        );
    }
    // Another tenant's application is answered as an unknown one (cross_tenant.rs has the rest).
    let rotate = pb::RotateClientSecretRequest { client_id: dev_id.clone(), ..Default::default() };
    assert_code(
        tokens(&mesh).rotate_client_secret(with_token(rotate, &child_admin)).await,
        Code::NotFound,
        "no application",
        "rotating another tenant's secret",
    );
    let disable = pb::DisableApplicationRequest { client_id: dev_id.clone() };
    assert_code(
        tokens(&mesh).disable_application(with_token(disable, &other_admin)).await,
        Code::NotFound,
        "no application",
        "disabling another tenant's application",
    );
    assert_code(encrypt(&mesh, &child_admin, "pii-users").await, Code::NotFound, "", "names are per tenant");
    let pii_id = get_key(&mesh, &admin_token, "pii-users").await.unwrap().key_id;
    let root_ciphertext = encrypt(&mesh, &admin_token, "pii-users").await.unwrap().ciphertext;
    assert_code(get_key(&mesh, &child_admin, &pii_id).await, Code::NotFound, "not found", "GetKey by id");
    assert_code(encrypt(&mesh, &child_admin, &pii_id).await, Code::NotFound, "not found", "Encrypt by id");
    let decrypt = pb::DecryptRequest { ciphertext: root_ciphertext, ..Default::default() };
    let err = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .decrypt(with_token(decrypt, &child_admin))
        .await;
    assert_code(err, Code::InvalidArgument, "decryption failed", "decrypting another tenant's ciphertext");

    // Listing pages through the tenant.
    let mut seen = Vec::new();
    let mut page_token = String::new();
    loop {
        let request =
            pb::ListApplicationsRequest { page_size: 2, page_token: page_token.clone(), ..Default::default() };
        let page = tokens(&mesh).list_applications(with_token(request, &admin_token)).await.unwrap().into_inner();
        assert!(page.applications.len() <= 2);
        seen.extend(page.applications.into_iter().map(|a| a.name));
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    seen.sort();
    assert_eq!(seen, ["admin-makes-owner", "bootstrap-admin", "dashboard", "users-api"]);

    let bad = pb::ListApplicationsRequest { page_token: "%%%".into(), ..Default::default() };
    assert_code(
        tokens(&mesh).list_applications(with_token(bad, &admin_token)).await,
        Code::InvalidArgument,
        "page_token",
        "a bad page token",
    );

    // UNAUTHENTICATED: a genuinely signed token that is not valid yet (an issuer whose clock runs ahead), and
    // one that has expired; the same claims valid now pass.
    let (kid, key) = genuine_signing_key(&mesh).await;
    let forge = |nbf: u64, exp: u64| {
        let claims = serde_json::json!({
            "iss": "keymesh", "sub": dev_id, "aud": "keymesh", "iat": nbf, "nbf": nbf, "exp": exp,
            "jti": uuid::Uuid::new_v4().to_string(), "tenant": root_tenant, "roles": ["developer"],
            "perms": [{"key": "pii-*", "ops": ["encrypt"]}],
        });
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        header.kid = Some(kid.clone());
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    };
    let now = unix_now();
    assert!(encrypt(&mesh, &forge(now, now + 600), "pii-users").await.is_ok(), "the genuine key signs valid tokens");
    refused_everywhere(&mesh, &forge(now + 600, now + 1200), "not yet valid", "nbf ten minutes ahead").await;
    refused_everywhere(&mesh, &forge(now - 1200, now - 600), "expired", "expired ten minutes ago").await;

    // UNAUTHENTICATED: a revoked access token, everywhere, within the bound; the application's other tokens
    // live on.
    let doomed = issue(&mesh, &dev_id, &dev_secret).await.unwrap().access_token;
    assert!(encrypt(&mesh, &doomed, "pii-users").await.is_ok());
    assert!(get_key(&mesh, &doomed, "pii-users").await.is_ok());
    revoke(&mesh, &doomed).await;
    tokio::time::sleep(BOUND).await;
    refused_everywhere(&mesh, &doomed, "revoked", "a revoked access token").await;
    assert!(encrypt(&mesh, &dev.access_token, "pii-users").await.is_ok(), "only the revoked token goes");
    revoke(&mesh, "not-a-token").await; // RFC 7009: nothing to revoke is not an error
    let err = tokens(&mesh).revoke_token(pb::RevokeTokenRequest { token: String::new() }).await;
    assert_code(err, Code::InvalidArgument, "token", "an empty revocation");

    // Refresh tokens rotate on every use; presenting a spent one revokes the family: its live refresh token
    // and every access token issued from it.
    let first = refresh(&mesh, &dev.refresh_token).await.unwrap();
    assert_ne!(first.refresh_token, dev.refresh_token, "rotated on use");
    let second = refresh(&mesh, &first.refresh_token).await.unwrap();
    assert!(encrypt(&mesh, &second.access_token, "pii-users").await.is_ok());
    let other_family = issue(&mesh, &dev_id, &dev_secret).await.unwrap();
    assert_code(refresh(&mesh, &first.refresh_token).await, Code::Unauthenticated, "family is revoked", "a replay");
    assert_code(
        refresh(&mesh, &second.refresh_token).await,
        Code::Unauthenticated,
        "already used or revoked",
        "the family's live token",
    );
    tokio::time::sleep(BOUND).await;
    for (token, what) in [(&dev.access_token, "the family's first access token"), (&second.access_token, "its last")] {
        refused_everywhere(&mesh, token, "revoked", what).await;
    }
    assert!(encrypt(&mesh, &other_family.access_token, "pii-users").await.is_ok(), "other families live on");
    assert!(refresh(&mesh, &other_family.refresh_token).await.is_ok());
    assert_code(refresh(&mesh, "kmrt_unknown").await, Code::Unauthenticated, "unknown", "an unknown refresh token");
    assert_code(refresh(&mesh, "eyJhbGciOi").await, Code::InvalidArgument, "refresh_token", "not a refresh token");

    // Secret rotation: the old secret keeps working for the grace period, then stops.
    let grace = prost_types::Duration { seconds: 2, nanos: 0 };
    let rotated = tokens(&mesh)
        .rotate_client_secret(with_token(
            pb::RotateClientSecretRequest {
                client_id: viewer_id.clone(),
                grace_period: Some(grace),
                ..Default::default()
            },
            &admin_token,
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(issue(&mesh, &viewer_id, &viewer_secret).await.is_ok(), "old secret within the grace period");
    assert!(issue(&mesh, &viewer_id, &rotated.client_secret).await.is_ok());
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_code(
        issue(&mesh, &viewer_id, &viewer_secret).await,
        Code::Unauthenticated,
        "invalid client credentials",
        "the old secret after its grace",
    );
    // Only managers rotate: a token (perhaps stolen, perhaps exchanged) cannot mint itself a lasting secret.
    let own = pb::RotateClientSecretRequest { client_id: viewer_id.clone(), ..Default::default() };
    let err = tokens(&mesh).rotate_client_secret(with_token(own.clone(), &viewer.access_token)).await;
    assert_code(err, Code::PermissionDenied, "roles", "an application rotating its own secret");
    // An admin that is not an owner cannot take over an owner's application.
    let (ops_id, ops_secret) =
        create_application(&mesh, &admin_token, "", "ops-admin", &[pb::Role::Admin], &[]).await.unwrap();
    let ops = issue(&mesh, &ops_id, &ops_secret).await.unwrap().access_token;
    let takeover = pb::RotateClientSecretRequest { client_id: owner_app_id.clone(), ..Default::default() };
    let err = tokens(&mesh).rotate_client_secret(with_token(takeover, &ops)).await;
    assert_code(err, Code::PermissionDenied, "ROLE_OWNER", "an admin rotating an owner's secret");
    let err = tokens(&mesh)
        .disable_application(with_token(pb::DisableApplicationRequest { client_id: owner_app_id.clone() }, &ops))
        .await;
    assert_code(err, Code::PermissionDenied, "ROLE_OWNER", "an admin disabling an owner");
    let second = tokens(&mesh).rotate_client_secret(with_token(own, &ops)).await.unwrap().into_inner();
    assert!(issue(&mesh, &viewer_id, &rotated.client_secret).await.is_ok(), "the default grace is a day");
    // A leaked secret is cut off at once, with what was obtained with it: refresh tokens and access tokens.
    let leaked = issue(&mesh, &viewer_id, &second.client_secret).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await; // (the cut covers tokens of earlier seconds)
    let now =
        pb::RotateClientSecretRequest { client_id: viewer_id.clone(), expire_previous_now: true, ..Default::default() };
    let latest = tokens(&mesh).rotate_client_secret(with_token(now, &admin_token)).await.unwrap().into_inner();
    assert_code(
        issue(&mesh, &viewer_id, &second.client_secret).await,
        Code::Unauthenticated,
        "invalid client",
        "cut off",
    );
    assert_code(refresh(&mesh, &leaked.refresh_token).await, Code::Unauthenticated, "revoked", "its refresh token");
    tokio::time::sleep(BOUND + Duration::from_millis(1100)).await;
    refused_everywhere(&mesh, &leaked.access_token, "revoked", "an access token of the leaked secret").await;
    let after = issue(&mesh, &viewer_id, &latest.client_secret).await.unwrap();
    assert!(get_key(&mesh, &after.access_token, "pii-users").await.is_ok(), "the new secret's tokens live");
    let negative = pb::RotateClientSecretRequest {
        client_id: viewer_id.clone(),
        grace_period: Some(prost_types::Duration { seconds: -1, nanos: 0 }),
        ..Default::default()
    };
    assert_code(
        tokens(&mesh).rotate_client_secret(with_token(negative, &admin_token)).await,
        Code::InvalidArgument,
        "grace_period",
        "a negative grace",
    );

    // UNAUTHENTICATED: a disabled application's tokens, old and new, and its refresh tokens.
    let live = issue(&mesh, &dev_id, &dev_secret).await.unwrap();
    let disabled = tokens(&mesh)
        .disable_application(with_token(pb::DisableApplicationRequest { client_id: dev_id.clone() }, &admin_token))
        .await
        .unwrap()
        .into_inner();
    assert!(disabled.application.unwrap().disabled);
    assert_code(
        issue(&mesh, &dev_id, &dev_secret).await,
        Code::Unauthenticated,
        "invalid client credentials",
        "a disabled application",
    );
    assert_code(refresh(&mesh, &live.refresh_token).await, Code::Unauthenticated, "revoked", "its refresh token");
    tokio::time::sleep(BOUND).await;
    refused_everywhere(&mesh, &live.access_token, "revoked", "a disabled application's token").await;
    let self_disable = pb::DisableApplicationRequest { client_id: child_admin_id.clone() };
    assert_code(
        tokens(&mesh).disable_application(with_token(self_disable, &child_admin)).await,
        Code::FailedPrecondition,
        "itself",
        "disabling oneself",
    );

    // ListRevocations is for mesh services only.
    let err = tokens(&mesh).list_revocations(pb::ListRevocationsRequest {}).await;
    assert_code(err, Code::PermissionDenied, "mesh services", "an application certificate listing revocations");

    // Every token event is in the audit trail: issued, refreshed, refused (a replay) and revoked.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let wanted = [
            ("IssueToken.client_credentials", pb::Outcome::Success),
            ("IssueToken.client_credentials", pb::Outcome::Denied),
            ("IssueToken.refresh_token", pb::Outcome::Success),
            ("IssueToken.refresh_token", pb::Outcome::Denied),
            ("RevokeToken", pb::Outcome::Success),
            ("DisableApplication", pb::Outcome::Success),
            ("CreateApplication", pb::Outcome::Denied),
        ];
        let mut missing = Vec::new();
        for (operation, outcome) in wanted {
            let query = pb::QueryRequest { operation: operation.into(), outcome: outcome as i32, ..Default::default() };
            if admin.audit_query(query).await.unwrap().is_empty() {
                missing.push((operation, outcome));
            }
        }
        if missing.is_empty() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "token events missing from the audit trail: {missing:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Fail closed: with token-service gone for a whole bound no token is accepted (revocations cannot be
    // confirmed), and service resumes when it is back.
    let live = issue(&mesh, &viewer_id, &latest.client_secret).await.unwrap().access_token;
    assert!(get_key(&mesh, &live, "pii-users").await.is_ok());
    mesh.child(ServiceName::TokenService).kill().await.unwrap();
    tokio::time::sleep(BOUND + Duration::from_secs(1)).await;
    for _ in 0..2 {
        assert_code(
            get_key(&mesh, &live, "pii-users").await,
            Code::Unavailable,
            "cannot confirm",
            "token-service gone",
        );
    }
    mesh.restart(ServiceName::TokenService, &[]).await;
    let deadline = tokio::time::Instant::now() + BOUND * 2;
    while get_key(&mesh, &live, "pii-users").await.is_err() {
        assert!(tokio::time::Instant::now() < deadline, "service did not resume after token-service came back");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

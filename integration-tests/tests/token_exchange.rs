//! Token exchange end to end: test issuers serve real JWKS over HTTP (a Kubernetes-style service-account
//! issuer and an OIDC provider), token-service verifies their tokens and maps them by rule to applications,
//! and the workload then uses the mesh with no stored secret. Every way a subject token can be wrong is
//! refused with UNAUTHENTICATED and the reason.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use integration_tests::{Mesh, create_application, key_request, oidc_issuer::TestIssuer, with_token};
use keymesh_mesh::{ServiceName, auth::unix_now};
use keymesh_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient, token_service_client::TokenServiceClient,
};
use serde_json::json;
use tonic::Code;

async fn exchange(mesh: &Mesh, token: &str, kind: &str) -> Result<pb::IssueTokenResponse, tonic::Status> {
    let request = pb::IssueTokenRequest {
        grant_type: pb::GrantType::TokenExchange as i32,
        subject_token: token.into(),
        subject_token_type: kind.into(),
        ..Default::default()
    };
    Ok(TokenServiceClient::new(mesh.channel(ServiceName::TokenService)).issue_token(request).await?.into_inner())
}

const JWT: &str = "urn:ietf:params:oauth:token-type:jwt";

async fn refused(mesh: &Mesh, token: &str, code: Code, reason: &str) {
    match exchange(mesh, token, JWT).await {
        Ok(_) => panic!("exchanged a token that should be refused ({reason})"),
        Err(status) => {
            assert_eq!(status.code(), code, "{reason}: {}", status.message());
            assert!(status.message().contains(reason), "{:?} lacks {reason:?}", status.message());
        }
    }
}

fn payload(token: &str) -> serde_json::Value {
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(token.split('.').nth(1).unwrap()).unwrap()).unwrap()
}

#[tokio::test]
async fn token_exchange_end_to_end() {
    let cluster = TestIssuer::start().await;
    let idp = TestIssuer::start().await;
    let untrusted = TestIssuer::start().await;
    let mut mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let admin_token = admin.access_token().await.unwrap().to_string();
    integration_tests::create_key(
        &admin,
        key_request("loader-data", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm),
    )
    .await
    .unwrap();
    let perms: &[(&str, &[pb::Operation])] = &[("loader-*", &[pb::Operation::Encrypt, pb::Operation::Decrypt])];
    let (loader_id, _) =
        create_application(&mesh, &admin_token, "", "loader", &[pb::Role::Developer], perms).await.unwrap();
    let (portal_id, _) = create_application(&mesh, &admin_token, "", "portal", &[pb::Role::Viewer], &[]).await.unwrap();

    // Not configured: said so.
    let sa = cluster.service_account_token("loaders", "m1", "keymesh", 600);
    refused(&mesh, &sa, Code::FailedPrecondition, "not configured").await;

    let issuers = format!(
        r#"[{{name = "cluster", issuer = "{}", audience = "keymesh", max_token_lifetime_seconds = 3600}},
            {{name = "idp", issuer = "{}", audience = "keymesh-portal"}}]"#,
        cluster.url, idp.url
    );
    let rules = format!(
        r#"[{{issuer = "cluster", subject = "system:serviceaccount:loaders:*", client_id = "{loader_id}"}},
            {{issuer = "idp", subject = "*@example.com", claims = {{email_verified = "true"}}, client_id = "{portal_id}"}}]"#
    );
    mesh.restart(
        ServiceName::TokenService,
        &[("KEYMESH_TOKENS__EXCHANGE__ISSUERS", &issuers), ("KEYMESH_TOKENS__EXCHANGE__RULES", &rules)],
    )
    .await;

    // A projected service-account token becomes the loader application's token, no longer-lived than the
    // subject token, without a refresh token, naming the workload.
    let issued = exchange(&mesh, &sa, JWT).await.unwrap();
    assert!(issued.refresh_token.is_empty(), "the platform renews the subject token; no refresh family");
    assert!(issued.expires_in_seconds <= 600, "{}", issued.expires_in_seconds);
    let claims = payload(&issued.access_token);
    assert_eq!(claims["sub"], loader_id.as_str());
    assert_eq!(claims["ext"], json!({"iss": "cluster", "sub": "system:serviceaccount:loaders:m1"}));
    let request = pb::EncryptRequest { key: "loader-data".into(), plaintext: b"x".to_vec(), ..Default::default() };
    CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .encrypt(with_token(request, &issued.access_token))
        .await
        .expect("the exchanged token works in crypto-service");
    assert!(exchange(&mesh, &sa, "").await.is_ok(), "an empty token type means a JWT");
    let err = exchange(&mesh, &sa, "urn:ietf:params:oauth:token-type:saml2").await.err().unwrap();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());

    // The SDK with only the path of the projected token: no client secret anywhere.
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, &sa).unwrap();
    let workload = mesh.client_exchanging(&token_file);
    let ciphertext = workload.encrypt("loader-data", b"model weights".to_vec(), b"aad".to_vec()).await.unwrap();
    assert_eq!(&workload.decrypt(ciphertext, b"aad".to_vec()).await.unwrap()[..], b"model weights");

    // Refusals, each with its reason.
    let now = unix_now();
    let sa_claims = |aud: &str, iat: u64, exp: u64, sub: &str| json!({"iss": cluster.url, "sub": sub, "aud": [aud], "iat": iat, "nbf": iat, "exp": exp});
    let m1 = "system:serviceaccount:loaders:m1";
    refused(
        &mesh,
        &cluster.service_account_token("loaders", "m1", "vault", 600),
        Code::Unauthenticated,
        "another audience",
    )
    .await;
    refused(&mesh, &cluster.sign(&sa_claims("keymesh", now - 1200, now - 600, m1)), Code::Unauthenticated, "expired")
        .await;
    refused(
        &mesh,
        &cluster.sign(&sa_claims("keymesh", now + 600, now + 1200, m1)),
        Code::Unauthenticated,
        "not yet valid",
    )
    .await;
    refused(
        &mesh,
        &cluster.service_account_token("loaders", "m1", "keymesh", 7200),
        Code::Unauthenticated,
        "lives 7200 s",
    )
    .await;
    refused(
        &mesh,
        &cluster.service_account_token("default", "m1", "keymesh", 600),
        Code::Unauthenticated,
        "no rule maps",
    )
    .await;
    refused(
        &mesh,
        &untrusted.service_account_token("loaders", "m1", "keymesh", 600),
        Code::Unauthenticated,
        "not trusted",
    )
    .await;
    // Another key's signature under the trusted issuer's name and key id.
    let forged = untrusted.sign(&sa_claims("keymesh", now, now + 600, m1));
    refused(&mesh, &forged, Code::Unauthenticated, "bad signature").await;
    let hs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header {
            kid: Some("test-key-1".into()),
            ..jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256)
        },
        &sa_claims("keymesh", now, now + 600, m1),
        &jsonwebtoken::EncodingKey::from_secret(b"anything"),
    )
    .unwrap();
    refused(&mesh, &hs256, Code::Unauthenticated, "not accepted").await;
    refused(&mesh, "not-a-jwt", Code::Unauthenticated, "not a JWT").await;

    // The issuer rotates its key: the new kid is fetched on first sight.
    // (Refetches are at most every 5 s, so made-up kids cannot turn keymesh against the issuer.)
    tokio::time::sleep(Duration::from_secs(5)).await;
    let fetches = cluster.jwks_fetches();
    cluster.rotate();
    assert!(exchange(&mesh, &cluster.service_account_token("loaders", "m2", "keymesh", 600), JWT).await.is_ok());
    assert_eq!(cluster.jwks_fetches(), fetches + 1);

    // An OIDC ID token, mapped by subject and a claim.
    let id_token = |verified: bool| {
        idp.sign(&json!({
            "iss": idp.url, "sub": "alice@example.com", "aud": "keymesh-portal", "iat": now, "exp": now + 300,
            "email_verified": verified,
        }))
    };
    let portal = exchange(&mesh, &id_token(true), "urn:ietf:params:oauth:token-type:id_token").await.unwrap();
    assert_eq!(payload(&portal.access_token)["sub"], portal_id.as_str());
    refused(&mesh, &id_token(false), Code::Unauthenticated, "no rule maps").await;

    // A disabled application is not reachable by exchange either.
    TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
        .disable_application(with_token(pb::DisableApplicationRequest { client_id: portal_id.clone() }, &admin_token))
        .await
        .unwrap();
    refused(&mesh, &id_token(true), Code::Unauthenticated, "invalid client").await;

    // Exchanges and refusals are audited, naming the workload.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let query = pb::QueryRequest { operation: "IssueToken.token_exchange".into(), ..Default::default() };
        let records = admin.audit_query(query).await.unwrap();
        let events: Vec<_> = records.iter().filter_map(|r| r.event.as_ref()).collect();
        let exchanged = events
            .iter()
            .any(|e| e.outcome == pb::Outcome::Success as i32 && e.reason.contains("system:serviceaccount:loaders:m1"));
        let denied = events.iter().any(|e| e.outcome == pb::Outcome::Denied as i32);
        if exchanged && denied {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "exchanges missing from the audit trail: {events:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

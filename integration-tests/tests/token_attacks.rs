//! The classic attacks on JWT access tokens, against the real crypto-service and key-service: each is refused
//! with UNAUTHENTICATED before anything else happens, while the genuine token still works. `alg: none`; HS256
//! "signed" with token-service's public key (raw and as PEM); an unknown `kid`; a payload edited under a
//! genuine signature; a signature of another key under the genuine `kid`; a token for another audience or
//! issuer (the services restarted to expect other values); garbage and truncated tokens.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use integration_tests::Mesh;
use keymesh_mesh::ServiceName;
use keymesh_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient, key_service_client::KeyServiceClient,
    token_service_client::TokenServiceClient,
};
use tonic::{Code, Request};

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// The token's payload as JSON.
fn payload(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn b64(value: &serde_json::Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).unwrap())
}

/// Every service that verifies tokens refuses `token` with UNAUTHENTICATED.
async fn refused_everywhere(mesh: &Mesh, token: &str, what: &str) {
    let encrypt = pb::EncryptRequest { key: "target".into(), plaintext: b"x".to_vec(), ..Default::default() };
    let err = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .encrypt(with_token(encrypt, token))
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: crypto-service accepted it"));
    assert_eq!(err.code(), Code::Unauthenticated, "{what}: crypto-service: {}", err.message());
    let get = pb::GetKeyRequest { key: "target".into() };
    let err = KeyServiceClient::new(mesh.channel(ServiceName::KeyService))
        .get_key(with_token(get, token))
        .await
        .err()
        .unwrap_or_else(|| panic!("{what}: key-service accepted it"));
    assert_eq!(err.code(), Code::Unauthenticated, "{what}: key-service: {}", err.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_and_misdirected_tokens_are_unauthenticated() {
    let mut mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    admin.create_key("target").await.unwrap();
    let token = admin.access_token().await.unwrap().to_string();
    let claims = payload(&token);
    let header = jsonwebtoken::decode_header(&token).unwrap();
    let kid = header.kid.clone().unwrap();

    // The genuine token works in both services, so every refusal below is the forgery's.
    let encrypt = pb::EncryptRequest { key: "target".into(), plaintext: b"x".to_vec(), ..Default::default() };
    CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .encrypt(with_token(encrypt, &token))
        .await
        .expect("the genuine token");

    // alg "none", with and without a signature part.
    let none = serde_json::json!({"alg": "none", "typ": "JWT", "kid": kid});
    refused_everywhere(&mesh, &format!("{}.{}.", b64(&none), b64(&claims)), "alg none").await;
    refused_everywhere(&mesh, &format!("{}.{}", b64(&none), b64(&claims)), "alg none, two parts").await;

    // HS256 keyed with the public key, raw and as PEM (the algorithm-confusion attack).
    let jwks = TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
        .get_jwks(pb::GetJwksRequest {})
        .await
        .unwrap()
        .into_inner();
    let public = jwks.keys.iter().find(|k| k.kid == kid).expect("the token's kid is in the JWKS");
    let raw = URL_SAFE_NO_PAD.decode(&public.x).unwrap();
    let pem = openssl::pkey::PKey::public_key_from_raw_bytes(&raw, openssl::pkey::Id::ED25519)
        .unwrap()
        .public_key_to_pem()
        .unwrap();
    for secret in [raw.clone(), pem] {
        let mut hs = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        hs.kid = Some(kid.clone());
        let forged = jsonwebtoken::encode(&hs, &claims, &jsonwebtoken::EncodingKey::from_secret(&secret)).unwrap();
        refused_everywhere(&mesh, &forged, "HS256 keyed with the public key").await;
    }

    // Signed by a key of the attacker's: under an unknown kid, and under the genuine kid.
    let attacker = openssl::pkey::PKey::generate_ed25519().unwrap();
    let attacker_key = jsonwebtoken::EncodingKey::from_ed_der(&attacker.private_key_to_pkcs8().unwrap());
    for forged_kid in ["attacker-key".to_owned(), kid.clone()] {
        let mut ed = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
        ed.kid = Some(forged_kid.clone());
        let forged = jsonwebtoken::encode(&ed, &claims, &attacker_key).unwrap();
        refused_everywhere(&mesh, &forged, &format!("another key's signature under kid {forged_kid}")).await;
    }

    // The genuine signature over an edited payload: more roles, every key, a later expiry, another tenant.
    let parts: Vec<&str> = token.split('.').collect();
    for (field, value) in [
        ("roles", serde_json::json!(["owner"])),
        ("perms", serde_json::json!([{"key": "*", "ops": ["*"]}])),
        ("exp", serde_json::json!(claims["exp"].as_u64().unwrap() + 86_400)),
        ("tenant", serde_json::json!("another-tenant")),
    ] {
        let mut edited = claims.clone();
        edited[field] = value;
        let forged = format!("{}.{}.{}", parts[0], b64(&edited), parts[2]);
        refused_everywhere(&mesh, &forged, &format!("payload edited: {field}")).await;
    }

    // Garbage, truncation, a missing signature, an empty token.
    for (what, forged) in [
        ("garbage", "not.a.jwt".to_owned()),
        ("truncated signature", token[..token.len() - 8].to_owned()),
        ("no signature", format!("{}.{}.", parts[0], parts[1])),
        ("empty", String::new()),
    ] {
        refused_everywhere(&mesh, &forged, what).await;
    }

    // A genuine token for another audience, or from another issuer: restart the verifying services to expect
    // other values, and the same token is refused.
    for (variable, value) in
        [("KEYMESH_TOKENS__AUDIENCE", "another-audience"), ("KEYMESH_TOKENS__ISSUER", "another-issuer")]
    {
        mesh.restart(ServiceName::CryptoService, &[(variable, value)]).await;
        mesh.restart(ServiceName::KeyService, &[(variable, value)]).await;
        refused_everywhere(&mesh, &token, &format!("a token checked against {variable}={value}")).await;
    }
    mesh.restart(ServiceName::CryptoService, &[]).await;
    let encrypt = pb::EncryptRequest { key: "target".into(), plaintext: b"x".to_vec(), ..Default::default() };
    CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .encrypt(with_token(encrypt, &token))
        .await
        .expect("with the expected audience and issuer back, the genuine token works again");
}

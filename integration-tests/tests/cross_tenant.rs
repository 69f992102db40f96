//! Another tenant's id is answered exactly like an id that does not exist (issue 20, item 5). Key ids and
//! client ids are global, and every key RPC answered PERMISSION_DENIED "belongs to another tenant" for another
//! tenant's key id but NOT_FOUND for an unknown one: whoever held a token could probe which ids exist. Now both
//! are NOT_FOUND in the same words (a ciphertext naming one is "decryption failed", as for an unknown key), and
//! the attempt is recorded in the trail of the tenant that owns the id, not in the caller's.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use integration_tests::{Mesh, create_application, second_tenant, with_token};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1::{
    self as pb, crypto_service_client::CryptoServiceClient, key_service_client::KeyServiceClient,
    token_service_client::TokenServiceClient,
};
use tonic::{Code, Status};

/// The (code, message) of a refusal, with the id replaced so that two ids compare alike.
fn shape<T>(result: Result<T, Status>, id: &str, what: &str) -> (Code, String) {
    match result {
        Ok(_) => panic!("{what}: answered"),
        Err(status) => (status.code(), status.message().replace(id, "<id>")),
    }
}

async fn token(mesh: &Mesh, client_id: &str, secret: &str) -> String {
    let request = pb::IssueTokenRequest {
        grant_type: pb::GrantType::ClientCredentials as i32,
        client_id: client_id.into(),
        client_secret: secret.into(),
        ..Default::default()
    };
    TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
        .issue_token(request)
        .await
        .unwrap()
        .into_inner()
        .access_token
}

/// Every key RPC that takes a key, as (name, call) on `key`, by another tenant's `token`.
async fn key_rpcs(mesh: &Mesh, token: &str, key: &str) -> Vec<(&'static str, (Code, String))> {
    let mut keys = KeyServiceClient::new(mesh.channel(ServiceName::KeyService));
    let mut crypto = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService));
    let k = || key.to_owned();
    vec![
        ("GetKey", shape(keys.get_key(with_token(pb::GetKeyRequest { key: k() }, token)).await, key, "GetKey")),
        (
            "RotateKey",
            shape(keys.rotate_key(with_token(pb::RotateKeyRequest { key: k() }, token)).await, key, "RotateKey"),
        ),
        (
            "DisableKey",
            shape(
                keys.disable_key(with_token(pb::DisableKeyRequest { key: k(), version: 0 }, token)).await,
                key,
                "DisableKey",
            ),
        ),
        (
            "ScheduleKeyDeletion",
            shape(
                keys.schedule_key_deletion(with_token(
                    pb::ScheduleKeyDeletionRequest { key: k(), ..Default::default() },
                    token,
                ))
                .await,
                key,
                "ScheduleKeyDeletion",
            ),
        ),
        (
            "UpdateKeyPolicy",
            shape(
                keys.update_key_policy(with_token(
                    pb::UpdateKeyPolicyRequest { key: k(), ..Default::default() },
                    token,
                ))
                .await,
                key,
                "UpdateKeyPolicy",
            ),
        ),
        (
            "GetPublicKey",
            shape(
                keys.get_public_key(with_token(pb::GetPublicKeyRequest { key: k(), version: 0 }, token)).await,
                key,
                "GetPublicKey",
            ),
        ),
        (
            "Encrypt",
            shape(
                crypto
                    .encrypt(with_token(
                        pb::EncryptRequest { key: k(), plaintext: b"x".to_vec(), ..Default::default() },
                        token,
                    ))
                    .await,
                key,
                "Encrypt",
            ),
        ),
        (
            "GenerateDataKey",
            shape(
                crypto
                    .generate_data_key(with_token(pb::GenerateDataKeyRequest { key: k(), ..Default::default() }, token))
                    .await,
                key,
                "GenerateDataKey",
            ),
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_ids_are_not_found_like_unknown_ones_and_the_owner_is_told() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let owner_token = admin.access_token().await.unwrap().to_string();
    let key = admin.create_key("payroll").await.unwrap();
    let sealed = admin.encrypt("payroll", b"salaries".to_vec(), Vec::new()).await.unwrap();
    let dev = create_application(&mesh, &owner_token, "", "payroll-dev", &[pb::Role::Developer], &[]).await.unwrap();
    let (other_id, other_secret) = second_tenant(&mesh).await;
    let intruder = token(&mesh, &other_id, &other_secret).await;
    let unknown = format!("k_{}", "0".repeat(32));

    // Every key RPC: another tenant's key id and an unknown one get the same answer.
    let foreign = key_rpcs(&mesh, &intruder, &key.key_id).await;
    let missing = key_rpcs(&mesh, &intruder, &unknown).await;
    for ((rpc, foreign), (_, missing)) in foreign.iter().zip(&missing) {
        assert_eq!(foreign, missing, "{rpc}: another tenant's key id is told apart from an unknown one");
        assert_eq!(foreign.0, Code::NotFound, "{rpc}: {foreign:?}");
    }

    // Decrypt (by the header's key id): the same as a ciphertext naming an unknown key.
    let mut crypto = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService));
    let decrypt = pb::DecryptRequest { ciphertext: sealed.clone(), ..Default::default() };
    let Err(refused) = crypto.decrypt(with_token(decrypt, &intruder)).await else {
        panic!("another tenant's ciphertext was opened")
    };
    assert_eq!((refused.code(), refused.message()), (Code::InvalidArgument, "decryption failed"), "{refused:?}");
    let re_encrypt = pb::ReEncryptRequest { ciphertext: sealed.clone(), ..Default::default() };
    let refused = crypto.re_encrypt(with_token(re_encrypt, &intruder)).await.unwrap_err();
    assert_eq!((refused.code(), refused.message()), (Code::InvalidArgument, "decryption failed"), "{refused:?}");

    // Client ids too: rotating or disabling another tenant's application is answered as an unknown id.
    let mut tokens = TokenServiceClient::new(mesh.channel(ServiceName::TokenService));
    let unknown_app = format!("app_{}", "0".repeat(32));
    for client_id in [dev.0.as_str(), unknown_app.as_str()] {
        let rotate = pb::RotateClientSecretRequest { client_id: client_id.into(), ..Default::default() };
        let answer = shape(tokens.rotate_client_secret(with_token(rotate, &intruder)).await, client_id, "rotate");
        assert_eq!(answer, (Code::NotFound, "no application \"<id>\"".to_owned()), "RotateClientSecret {client_id}");
        let disable = pb::DisableApplicationRequest { client_id: client_id.into() };
        let answer = shape(tokens.disable_application(with_token(disable, &intruder)).await, client_id, "disable");
        assert_eq!(answer, (Code::NotFound, "no application \"<id>\"".to_owned()), "DisableApplication {client_id}");
    }

    // The owner's trail shows each attempt on its key and its application, with the intruder's identity; the
    // intruder's trail shows plain NOT_FOUNDs, nothing that tells its ids apart.
    let query = || pb::QueryRequest { limit: 1000, ..Default::default() };
    let deadline = Instant::now() + Duration::from_secs(30);
    let attempts = loop {
        let records = admin.audit_query(query()).await.unwrap();
        let attempts: Vec<pb::AuditEvent> = records
            .into_iter()
            .filter_map(|r| r.event)
            .filter(|e| e.reason.starts_with("cross-tenant attempt"))
            .collect();
        let on_key = attempts.iter().filter(|e| e.resource == key.key_id).count();
        let on_app = attempts.iter().filter(|e| e.resource == dev.0).count();
        // GetKey..GetPublicKey (6) at key-service, Encrypt, GenerateDataKey, Decrypt, ReEncrypt through
        // crypto-service's GetDataKey (4); RotateClientSecret and DisableApplication (2).
        if on_key >= 10 && on_app >= 2 {
            break attempts;
        }
        assert!(
            Instant::now() < deadline,
            "the owner's trail shows {on_key} attempts on the key and {on_app} on the application: {attempts:#?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for event in &attempts {
        assert_eq!(event.outcome, pb::Outcome::Denied as i32, "{event:?}");
        assert_eq!(event.status_code, Code::NotFound as i32, "{event:?}");
        assert!(event.identity.contains(&other_id), "the attempt names the intruder: {event:?}");
        assert!(event.reason.contains("t_second"), "the attempt names the intruder's tenant: {event:?}");
    }
    // The intruder's own trail has its GetKey of both ids, recorded alike once the id is masked.
    let intruder_client = mesh.client_with(&other_id, &other_secret);
    let get_key_of = |events: &[pb::AuditEvent], id: &str| -> Option<(i32, i32, String)> {
        events
            .iter()
            .find(|e| e.operation == "GetKey" && e.reason.contains(id))
            .map(|e| (e.outcome, e.status_code, e.reason.replace(id, "<id>")))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let theirs: Vec<pb::AuditEvent> = loop {
        let events: Vec<pb::AuditEvent> =
            intruder_client.audit_query(query()).await.unwrap().into_iter().filter_map(|r| r.event).collect();
        if get_key_of(&events, &key.key_id).is_some() && get_key_of(&events, &unknown).is_some() {
            break events;
        }
        assert!(Instant::now() < deadline, "the intruder's GetKey events are not in its trail: {events:#?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(
        get_key_of(&theirs, &key.key_id),
        get_key_of(&theirs, &unknown),
        "the intruder's trail tells another tenant's id from an unknown one"
    );
    for event in &theirs {
        assert!(!event.reason.contains("cross-tenant"), "the intruder's trail tells the ids apart: {event:?}");
        assert_ne!(event.resource, key.key_id, "the intruder's trail names the key: {event:?}");
    }
}

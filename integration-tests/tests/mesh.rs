//! The mesh end to end: four real binaries over mTLS. A token from the bootstrap credentials, CreateKey,
//! Encrypt, Decrypt, the audit trail — and every refusal the design promises.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::Duration;

use integration_tests::{Mesh, fresh_postgres_database, second_tenant};
use keymesh_client::{ClientError, KeymeshClient};
use keymesh_mesh::{ServiceName, pki::TlsMaterial};
use keymesh_proto::v1::{
    self as pb, audit_service_client::AuditServiceClient, crypto_service_client::CryptoServiceClient,
    key_service_client::KeyServiceClient,
};
use tonic::{
    Code, Request,
    transport::{Certificate, ClientTlsConfig, Endpoint},
};

fn code(result: Result<impl Sized, ClientError>) -> (Code, String) {
    match result {
        Ok(_) => panic!("the call succeeded but should have been refused"),
        Err(ClientError::Status(s)) => (s.code(), s.message().to_owned()),
        Err(e) => panic!("local failure instead of a refusal: {e}"),
    }
}

fn with_token<T>(message: T, token: &str) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
    request
}

/// A token signed by a key that is not token-service's, claiming token-service's kid.
fn forged_token(real: &str, tenant: &str) -> String {
    let header = jsonwebtoken::decode_header(real).unwrap();
    let key = openssl::pkey::PKey::generate_ed25519().unwrap();
    let mut forged_header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::EdDSA);
    forged_header.kid = header.kid;
    let now = keymesh_mesh::auth::unix_now();
    let claims = serde_json::json!({
        "iss": "keymesh", "sub": "app_attacker", "aud": "keymesh", "exp": now + 3600, "iat": now, "nbf": now,
        "jti": "forged", "tenant": tenant, "roles": ["owner"], "perms": [{"key": "*", "ops": ["*"]}],
    });
    jsonwebtoken::encode(
        &forged_header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ed_der(&key.private_key_to_pkcs8().unwrap()),
    )
    .unwrap()
}

async fn wait_for_audit(client: &KeymeshClient, operation: &str, at_least: usize) -> Vec<pb::AuditRecord> {
    for _ in 0..100 {
        let records = client
            .audit_query(pb::QueryRequest { operation: operation.into(), ..Default::default() })
            .await
            .expect("audit query");
        if records.len() >= at_least {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("audit-service never showed {at_least} {operation} event(s)");
}

async fn scenario(mesh: &Mesh) {
    let admin = mesh.admin_client();
    let credentials: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mesh.dir.path().join("bootstrap-credentials.json")).unwrap()).unwrap();
    let admin_id = credentials["client_id"].as_str().unwrap().to_owned();

    // The happy path: token → CreateKey → Encrypt → Decrypt.
    let key = admin.create_key("user-pii").await.expect("CreateKey");
    assert_eq!(key.name, "user-pii");
    assert_eq!(key.algorithm, pb::Algorithm::Aes256Gcm as i32);
    assert_eq!(key.versions.len(), 1);
    let plaintext = b"4111 1111 1111 1111".to_vec();
    let ciphertext = admin.encrypt("user-pii", plaintext.clone(), b"order-42".to_vec()).await.expect("Encrypt");
    assert!(!ciphertext.windows(plaintext.len()).any(|w| w == plaintext.as_slice()));
    let opened = admin.decrypt(ciphertext.clone(), b"order-42".to_vec()).await.expect("Decrypt");
    assert_eq!(opened.as_slice(), plaintext.as_slice());
    assert_eq!(admin.get_key(&key.key_id).await.expect("GetKey by id").name, "user-pii");
    let (c, m) = code(admin.create_key("user-pii").await);
    assert_eq!(c, Code::AlreadyExists, "{m}");
    let (c, m) = code(admin.create_key("k_looks-like-an-id").await);
    assert_eq!(c, Code::InvalidArgument, "{m}");

    // The audit trail shows both operations with the caller's identity.
    let encrypts = wait_for_audit(&admin, "Encrypt", 1).await;
    let decrypts = wait_for_audit(&admin, "Decrypt", 1).await;
    for record in encrypts.iter().chain(&decrypts) {
        let event = record.event.as_ref().unwrap();
        assert_eq!(event.identity, admin_id);
        assert_eq!(event.resource, key.key_id);
        assert_eq!(event.service, "crypto-service");
        assert_eq!(event.outcome, pb::Outcome::Success as i32);
        assert_eq!(event.trace_id.len(), 32, "events carry the W3C trace id");
        assert!(!record.hash.is_empty());
    }

    // Trace context crosses the hop: key-service's GetDataKey for the first Encrypt is in the same trace.
    let fetches: Vec<pb::AuditRecord> =
        admin.audit_query(pb::QueryRequest { operation: "GetDataKey".into(), ..Default::default() }).await.unwrap();
    let encrypt_trace = &encrypts[0].event.as_ref().unwrap().trace_id;
    assert!(
        fetches
            .iter()
            .any(|r| r.event.as_ref().is_some_and(|e| &e.trace_id == encrypt_trace && e.service == "key-service")),
        "no key-service event shares the trace {encrypt_trace} of the first Encrypt"
    );

    // Only mesh services may append to the audit trail.
    let mut audit = AuditServiceClient::new(mesh.channel(ServiceName::AuditService));
    let forged = pb::AppendRequest {
        batch_id: 1,
        events: vec![
            prost::Message::encode_to_vec(&pb::AuditEvent {
                event_id: "forged".into(),
                service: "crypto-service".into(),
                ..Default::default()
            })
            .into(),
        ],
    };
    let refused = match audit.append(tokio_stream::iter(vec![forged])).await {
        Err(status) => status,
        Ok(response) => response.into_inner().message().await.expect_err("an application must not append"),
    };
    assert_eq!(refused.code(), Code::PermissionDenied, "{}", refused.message());

    // Wrong AAD, and a flipped byte anywhere: the same opaque "decryption failed".
    let (c, m) = code(admin.decrypt(ciphertext.clone(), b"order-43".to_vec()).await);
    assert_eq!((c, m.as_str()), (Code::InvalidArgument, "decryption failed"));
    for i in 0..ciphertext.len() {
        let mut bad = ciphertext.clone();
        bad[i] ^= 0x01;
        let (c, m) = code(admin.decrypt(bad, b"order-42".to_vec()).await);
        assert_eq!((c, m.as_str()), (Code::InvalidArgument, "decryption failed"), "flipped byte {i}");
    }

    // Tokens: missing, garbage, forged.
    let token = admin.access_token().await.unwrap();
    let mut crypto = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService));
    let encrypt = || pb::EncryptRequest { key: "user-pii".into(), plaintext: b"x".to_vec(), ..Default::default() };
    let err = crypto.encrypt(Request::new(encrypt())).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(err.message().contains("missing access token"));
    let err = crypto.encrypt(with_token(encrypt(), "not.a.jwt")).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = crypto.encrypt(with_token(encrypt(), &forged_token(&token, &key.tenant_id))).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "a forged token must not pass: {}", err.message());
    assert!(crypto.encrypt(with_token(encrypt(), &token)).await.is_ok());

    // Another tenant sees nothing of this one.
    let (other_id, other_secret) = second_tenant(mesh).await;
    let other = mesh.client_with(&other_id, &other_secret);
    let (c, m) = code(other.encrypt("user-pii", b"x".to_vec(), vec![]).await);
    assert_eq!(c, Code::NotFound, "{m}");
    let (c, _) = code(other.get_key("user-pii").await);
    assert_eq!(c, Code::NotFound);
    // A key id is global, but another tenant's is answered as an unknown one, by id and through a ciphertext.
    let (c, m) = code(other.get_key(&key.key_id).await);
    assert_eq!(c, Code::NotFound, "{m}");
    assert!(m.ends_with("not found"), "{m}");
    let (c, m) = code(other.encrypt(&key.key_id, b"x".to_vec(), vec![]).await);
    assert_eq!(c, Code::NotFound, "{m}");
    let (c, m) = code(other.decrypt(ciphertext.clone(), b"order-42".to_vec()).await);
    assert_eq!((c, m.as_str()), (Code::InvalidArgument, "decryption failed"));
    other.create_key("user-pii").await.expect("the same name is free in another tenant");
    assert!(
        other
            .audit_query(pb::QueryRequest::default())
            .await
            .unwrap()
            .iter()
            .all(|r| r.event.as_ref().is_some_and(|e| e.tenant_id == "t_second")),
        "audit queries are tenant-scoped"
    );

    // An application certificate cannot fetch key material, whatever token it carries.
    let mut keys = KeyServiceClient::new(mesh.channel(ServiceName::KeyService));
    let err = keys
        .get_data_key(with_token(
            pb::GetDataKeyRequest {
                tenant_id: key.tenant_id.clone(),
                key: "user-pii".into(),
                operation: pb::Operation::Encrypt as i32,
                ..Default::default()
            },
            &token,
        ))
        .await
        .err()
        .expect("an application certificate must be refused");
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("spiffe://keymesh/crypto-service"));

    // A malformed request is refused before any key is touched, saying what to set.
    let err = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService))
        .sign(with_token(pb::SignRequest { key: "user-pii".into(), input: None, ..Default::default() }, &token))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("set message, or digest"), "{}", err.message());

    // A client expecting key-service refuses crypto-service's certificate, though the same CA signed it.
    let impostor = keymesh_mesh::client::mtls_channel(
        &mesh.endpoints.crypto_service,
        &mesh.app_tls("test-app"),
        ServiceName::KeyService,
    )
    .unwrap();
    let err = tonic_health::pb::health_client::HealthClient::new(impostor)
        .check(tonic_health::pb::HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("not the expected spiffe://keymesh/key-service"), "{err:?}");

    // No client certificate: the TLS handshake itself fails.
    let ca = TlsMaterial::clone(&mesh.app_tls("test-app")).ca_pem;
    let no_cert = Endpoint::from_shared(format!("https://{}", mesh.endpoints.crypto_service))
        .unwrap()
        .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca)).domain_name("127.0.0.1"))
        .unwrap()
        .connect()
        .await;
    // TLS 1.3 finishes the client side of the handshake before the server's verdict arrives, so the
    // refusal surfaces either at connect or at the first call — as the server's CertificateRequired alert or
    // as the connection it closed or reset. Either way it is a transport failure: no handler ever answered.
    let failure = match no_cert {
        Err(e) => format!("{e:?}"),
        Ok(channel) => {
            let err = CryptoServiceClient::new(channel).encrypt(with_token(encrypt(), &token)).await.unwrap_err();
            format!("{err:?}")
        }
    };
    assert!(failure.contains("tonic::transport::Error"), "expected a refused handshake, got {failure}");
}

async fn stop_gracefully(mesh: &mut Mesh) {
    for service in
        [ServiceName::CryptoService, ServiceName::KeyService, ServiceName::AuditService, ServiceName::TokenService]
    {
        let child = mesh.child(service);
        let pid = child.id().expect("running");
        let killed = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status().unwrap();
        assert!(killed.success());
        let status =
            tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits after SIGTERM").unwrap();
        assert!(status.success(), "{service} exited with {status} after SIGTERM");
    }
}

/// Runs a phase of a test under a watchdog: a hang (once seen in CI, never reproduced) fails the test and
/// names the phase instead of stalling the run.
async fn phase<T>(what: &str, body: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(180), body)
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 180 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_end_to_end_on_sqlite() {
    let mut mesh = phase("start", Mesh::start(&[], &[])).await;
    phase("the scenario", scenario(&mesh)).await;
    phase("the graceful stop", stop_gracefully(&mut mesh)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_end_to_end_with_key_service_on_postgres_and_token_expiry() {
    let url = phase("a fresh Postgres database", fresh_postgres_database()).await;
    // Short-lived tokens and no skew allowance, so expiry can be observed in seconds.
    let mut mesh = phase(
        "start",
        Mesh::start(
            &[("KEYMESH_TOKENS__ACCESS_TOKEN_TTL_SECONDS", "4"), ("KEYMESH_TOKENS__CLOCK_SKEW_SECONDS", "0")],
            &[(ServiceName::KeyService, "KEYMESH_DATABASE__URL", &url)],
        ),
    )
    .await;
    phase("the scenario", scenario(&mesh)).await;

    // The key really lives in Postgres.
    use sea_orm::{ConnectionTrait, Database, Statement};
    let db = Database::connect(url.as_str()).await.unwrap();
    let row = db
        .query_one_raw(Statement::from_string(db.get_database_backend(), "SELECT count(*) AS n FROM keys".to_owned()))
        .await
        .unwrap()
        .unwrap();
    let n: i64 = row.try_get("", "n").unwrap();
    assert_eq!(n, 2, "both tenants' keys are in Postgres");

    // An expired token is refused.
    let admin = mesh.admin_client();
    let token = admin.access_token().await.unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut crypto = CryptoServiceClient::new(mesh.channel(ServiceName::CryptoService));
    let request = pb::EncryptRequest { key: "user-pii".into(), plaintext: b"x".to_vec(), ..Default::default() };
    let err = crypto.encrypt(with_token(request, &token)).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"), "{}", err.message());
    phase("the graceful stop", stop_gracefully(&mut mesh)).await;
}

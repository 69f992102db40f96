//! Policies and FIPS mode through the real services: a key's CEL rule that denies with PERMISSION_DENIED
//! naming the rule (and only warns under WARN); a rule that does not compile refused when set; a tenant's
//! algorithm policy that warns, then refuses, at key creation and at use; FIPS mode enabled refusing every
//! non-approved algorithm by name while every approved one works, reported by health and in audit events;
//! FIPS mode preferred allowing them with a warning.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::time::{Duration, Instant};

use integration_tests::{Mesh, create_key, key_request};
use keymesh_client::KeymeshClient;
use keymesh_mesh::ServiceName;
use keymesh_proto::v1::{self as pb, sign_request, verify_request};
use tonic::Code;

async fn encrypt(admin: &KeymeshClient, key: &str) -> Result<pb::EncryptResponse, tonic::Status> {
    let request = pb::EncryptRequest { key: key.into(), plaintext: b"payload".to_vec(), ..Default::default() };
    Ok(admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await?.into_inner())
}

async fn decrypt(admin: &KeymeshClient, ciphertext: &[u8]) -> Result<pb::DecryptResponse, tonic::Status> {
    let request = pb::DecryptRequest { ciphertext: ciphertext.to_vec(), ..Default::default() };
    Ok(admin.crypto_service().decrypt(admin.authorized(request).await.unwrap()).await?.into_inner())
}

async fn update_policy(admin: &KeymeshClient, key: &str, policy: pb::KeyPolicy) -> Result<(), tonic::Status> {
    let request = pb::UpdateKeyPolicyRequest { key: key.into(), policy: Some(policy), ..Default::default() };
    admin.key_service().update_key_policy(admin.authorized(request).await.unwrap()).await?;
    Ok(())
}

/// Retries `call` until `done` holds: crypto-service hears of a policy change through key-service's
/// change feed, a moment after the change commits.
async fn eventually<T, F, Fut>(mut call: F, done: impl Fn(&T) -> bool) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = T>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let value = call().await;
        if done(&value) || Instant::now() > deadline {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn refusal<T>(result: Result<T, tonic::Status>) -> tonic::Status {
    match result {
        Ok(_) => panic!("expected a refusal"),
        Err(status) => status,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cel_rules_and_tenant_algorithm_policy_warn_then_enforce() {
    let mut mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();

    // A rule over the key's labels and the caller's identity, for Decrypt only.
    let rule = pb::PolicyRule {
        name: "pii-readers".into(),
        expression: r#"!("pii" in key.labels) || identity.id == "pii-batch-reader""#.into(),
        operations: vec![pb::Operation::Decrypt as i32],
    };
    let mut records = key_request("records", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm);
    records.labels = [("pii".to_owned(), "true".to_owned())].into();
    records.policy = Some(pb::KeyPolicy { rules: vec![rule.clone()], ..Default::default() });
    let created = create_key(&admin, records).await.unwrap();
    let tenant = created.key.unwrap().tenant_id;
    let sealed = encrypt(&admin, "records").await.expect("Encrypt is not covered by the rule");
    assert!(sealed.warnings.is_empty());
    let denied = refusal(decrypt(&admin, &sealed.ciphertext).await);
    assert_eq!(denied.code(), Code::PermissionDenied, "{denied:?}");
    assert_eq!(denied.message(), "denied by key policy rule \"pii-readers\"");

    // Under WARN the same rule lets the call through and says what it would have done.
    let warn = pb::KeyPolicy {
        rules: vec![rule.clone()],
        enforcement: pb::PolicyEnforcement::Warn as i32,
        ..Default::default()
    };
    update_policy(&admin, "records", warn).await.unwrap();
    let opened = eventually(|| decrypt(&admin, &sealed.ciphertext), Result::is_ok).await.unwrap();
    assert_eq!(opened.plaintext, b"payload");
    assert_eq!(opened.warnings, ["would be denied by key policy rule \"pii-readers\""]);

    // A rule that does not compile is refused when set, with the compiler's message; nothing changes.
    let broken = pb::PolicyRule { name: "typo".into(), expression: "key.labels[".into(), operations: vec![] };
    let refused =
        refusal(update_policy(&admin, "records", pb::KeyPolicy { rules: vec![broken], ..Default::default() }).await);
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("rule \"typo\" does not compile"), "{refused:?}");
    assert_eq!(decrypt(&admin, &sealed.ciphertext).await.unwrap().warnings.len(), 1, "the WARN policy still holds");

    // Handing out a public key is a use too: a rule can hold it back.
    let mut signer = key_request("signer", pb::KeyPurpose::Sign, pb::Algorithm::Ed25519);
    signer.policy = Some(pb::KeyPolicy {
        rules: vec![pb::PolicyRule {
            name: "no-export".into(),
            expression: "false".into(),
            operations: vec![pb::Operation::GetPublicKey as i32],
        }],
        ..Default::default()
    });
    create_key(&admin, signer).await.unwrap();
    let request = pb::GetPublicKeyRequest { key: "signer".into(), version: 0 };
    let refused = refusal(admin.key_service().get_public_key(admin.authorized(request).await.unwrap()).await);
    assert_eq!(
        (refused.code(), refused.message()),
        (Code::PermissionDenied, "denied by key policy rule \"no-export\"")
    );

    // A key created before the tenant's policy existed.
    create_key(&admin, key_request("legacy", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes128Gcm)).await.unwrap();

    // The tenant's policy in WARN: 128-bit keys are reported, not refused.
    let tenant_env = |enforcement: &'static str| {
        let prefix = format!("KEYMESH_POLICY__TENANTS__{tenant}");
        vec![
            (format!("{prefix}__MIN_KEY_BITS"), "256".to_owned()),
            (format!("{prefix}__ENFORCEMENT"), enforcement.to_owned()),
        ]
    };
    for service in [ServiceName::KeyService, ServiceName::CryptoService] {
        let env = tenant_env("warn");
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        mesh.restart(service, &env).await;
    }
    let admin = mesh.admin_client();
    let sealed = encrypt(&admin, "legacy").await.unwrap();
    assert_eq!(
        sealed.warnings,
        ["the tenant policy requires keys of at least 256 bits; ALGORITHM_AES_128_GCM has 128"],
        "a WARN policy reports the violation"
    );
    let created =
        create_key(&admin, key_request("legacy-2", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes128Gcm)).await.unwrap();
    assert_eq!(created.warnings.len(), 1, "{:?}", created.warnings);

    // The same policy enforced: refused at creation and at use, saying why.
    for service in [ServiceName::KeyService, ServiceName::CryptoService] {
        let env = tenant_env("enforce");
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        mesh.restart(service, &env).await;
    }
    let admin = mesh.admin_client();
    let refused = refusal(encrypt(&admin, "legacy").await);
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("requires keys of at least 256 bits"), "{refused:?}");
    let refused =
        refusal(create_key(&admin, key_request("legacy-3", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes128Gcm)).await);
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    let fine = encrypt(&admin, "records").await.unwrap();
    assert!(fine.warnings.is_empty(), "AES-256 satisfies the tenant policy: {:?}", fine.warnings);
}

/// Checks the gRPC health service for `name`.
async fn health(mesh: &Mesh, service: ServiceName, name: &str) -> Result<i32, tonic::Status> {
    let request = tonic_health::pb::HealthCheckRequest { service: name.into() };
    let response = tonic_health::pb::health_client::HealthClient::new(mesh.channel(service)).check(request).await?;
    Ok(response.into_inner().status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fips_enabled_refuses_every_non_approved_algorithm_and_serves_every_approved_one() {
    let mesh = Mesh::start(&[("KEYMESH_POLICY__FIPS_MODE", "enabled")], &[]).await;
    let admin = mesh.admin_client();
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    for service in [ServiceName::KeyService, ServiceName::CryptoService] {
        assert_eq!(health(&mesh, service, "keymesh.fips.enabled").await.unwrap(), serving, "{service}");
        assert_eq!(refusal(health(&mesh, service, "keymesh.fips.disabled").await).code(), Code::NotFound);
    }

    // Every non-approved algorithm is refused at creation, by name.
    for (algorithm, name) in [
        (pb::Algorithm::Chacha20Poly1305, "ChaCha20-Poly1305"),
        (pb::Algorithm::Xchacha20Poly1305, "XChaCha20-Poly1305"),
        (pb::Algorithm::Aes256GcmSiv, "AES-256-GCM-SIV"),
        (pb::Algorithm::HpkeX25519Sha256Aes256Gcm, "HPKE-X25519-SHA256-AES-256-GCM"),
        // X-Wing's X25519 half is not approved, so neither is X-Wing.
        (pb::Algorithm::HpkeXwingSha256Aes256Gcm, "HPKE-XWING-SHA256-AES-256-GCM"),
    ] {
        let refused =
            refusal(create_key(&admin, key_request(&format!("no-{name}"), pb::KeyPurpose::Encrypt, algorithm)).await);
        assert_eq!(refused.code(), Code::FailedPrecondition, "{name}: {refused:?}");
        assert!(
            refused.message().contains(&format!("FIPS mode is enabled and {name} is not FIPS-approved")),
            "{refused:?}"
        );
    }
    let hash = |algorithm: pb::HashAlgorithm| {
        let request = pb::HashRequest { algorithm: algorithm as i32, data: b"abc".to_vec() };
        let admin = &admin;
        async move { admin.crypto_service().hash(admin.authorized(request).await.unwrap()).await }
    };
    let refused = refusal(hash(pb::HashAlgorithm::Blake2b512).await);
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("BLAKE2b-512 is not FIPS-approved"), "{refused:?}");
    for approved in
        [pb::HashAlgorithm::Sha256, pb::HashAlgorithm::Sha384, pb::HashAlgorithm::Sha512, pb::HashAlgorithm::Sha3256]
    {
        assert!(hash(approved).await.is_ok(), "{approved:?}");
    }

    // Every approved algorithm works end to end.
    for algorithm in [
        pb::Algorithm::Aes128Gcm,
        pb::Algorithm::Aes256Gcm,
        pb::Algorithm::Aes256CbcHmacSha256,
        pb::Algorithm::Aes256CtrHmacSha256,
        pb::Algorithm::Aes256Ccm,
        pb::Algorithm::RsaOaep2048Sha256,
        pb::Algorithm::RsaOaep3072Sha256,
        pb::Algorithm::RsaOaep4096Sha256,
        // The document's hybrid is ML-KEM (FIPS 203), HKDF and AES-GCM.
        pb::Algorithm::MlKem768Aes256Gcm,
    ] {
        let name = format!("ok-{}", algorithm.as_str_name().to_ascii_lowercase());
        let created = create_key(&admin, key_request(&name, pb::KeyPurpose::Encrypt, algorithm)).await.unwrap();
        assert!(created.warnings.is_empty());
        let sealed = encrypt(&admin, &name).await.unwrap_or_else(|e| panic!("{name}: {e:?}"));
        let request = pb::DecryptRequest { key: name.clone(), ciphertext: sealed.ciphertext, ..Default::default() };
        let opened = admin.crypto_service().decrypt(admin.authorized(request).await.unwrap()).await.unwrap();
        assert_eq!(opened.into_inner().plaintext, b"payload", "{name}");
    }
    for algorithm in [
        pb::Algorithm::Ed25519,
        pb::Algorithm::EcdsaP256Sha256,
        pb::Algorithm::EcdsaP384Sha384,
        pb::Algorithm::RsaPss2048Sha256,
        pb::Algorithm::RsaPss3072Sha256,
        pb::Algorithm::RsaPss4096Sha256,
        // FIPS 204.
        pb::Algorithm::MlDsa44,
        pb::Algorithm::MlDsa65,
        pb::Algorithm::MlDsa87,
    ] {
        let name = format!("ok-{}", algorithm.as_str_name().to_ascii_lowercase());
        create_key(&admin, key_request(&name, pb::KeyPurpose::Sign, algorithm)).await.unwrap();
        let request = pb::SignRequest {
            key: name.clone(),
            input: Some(sign_request::Input::Message(b"m".to_vec())),
            ..Default::default()
        };
        let signed = admin.crypto_service().sign(admin.authorized(request).await.unwrap()).await.unwrap().into_inner();
        let request = pb::VerifyRequest {
            key: name.clone(),
            input: Some(verify_request::Input::Message(b"m".to_vec())),
            signature: signed.signature,
            ..Default::default()
        };
        let verified = admin.crypto_service().verify(admin.authorized(request).await.unwrap()).await.unwrap();
        assert!(verified.into_inner().valid, "{name}");
    }
    // ML-KEM (FIPS 203): a KEM key encapsulates and decapsulates.
    create_key(&admin, key_request("ok-kem", pb::KeyPurpose::Kem, pb::Algorithm::MlKem768)).await.unwrap();
    let request = pb::EncapsulateRequest { key: "ok-kem".into() };
    let sent = admin.crypto_service().encapsulate(admin.authorized(request).await.unwrap()).await.unwrap();
    let sent = sent.into_inner();
    let request = pb::DecapsulateRequest { key: "ok-kem".into(), key_version: 0, ciphertext: sent.ciphertext };
    let received = admin.crypto_service().decapsulate(admin.authorized(request).await.unwrap()).await.unwrap();
    assert_eq!(received.into_inner().shared_secret, sent.shared_secret);
    for algorithm in [pb::Algorithm::HmacSha256, pb::Algorithm::HmacSha512] {
        let name = format!("ok-{}", algorithm.as_str_name().to_ascii_lowercase());
        create_key(&admin, key_request(&name, pb::KeyPurpose::Mac, algorithm)).await.unwrap();
        let request = pb::GenerateMacRequest { key: name.clone(), message: b"m".to_vec() };
        let tag = admin.crypto_service().generate_mac(admin.authorized(request).await.unwrap()).await.unwrap();
        assert_eq!(tag.into_inner().mac.len(), if algorithm == pb::Algorithm::HmacSha256 { 32 } else { 64 });
    }

    // Every audit event records the mode the decision was made under.
    let deadline = Instant::now() + Duration::from_secs(10);
    let events = loop {
        let records =
            admin.audit_query(pb::QueryRequest { operation: "Sign".into(), ..Default::default() }).await.unwrap();
        if records.len() >= 9 || Instant::now() > deadline {
            break records;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(events.len(), 9, "six classical signatures and three ML-DSA ones");
    assert!(events.iter().all(|r| r.event.as_ref().unwrap().fips_mode == pb::FipsMode::Enabled as i32));

    // A key made before FIPS mode was switched on is refused at use. (crypto-service alone restarts in
    // FIPS mode here: the local KMS of a FIPS key-service needs a PBKDF2 data directory from the start.)
    drop(mesh);
    let mut mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    create_key(&admin, key_request("chacha", pb::KeyPurpose::Encrypt, pb::Algorithm::Chacha20Poly1305)).await.unwrap();
    assert!(encrypt(&admin, "chacha").await.is_ok());
    mesh.restart(ServiceName::CryptoService, &[("KEYMESH_POLICY__FIPS_MODE", "enabled")]).await;
    let admin = mesh.admin_client();
    let refused = refusal(encrypt(&admin, "chacha").await);
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("ChaCha20-Poly1305 is not FIPS-approved"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fips_preferred_allows_non_approved_algorithms_with_a_warning() {
    let mesh = Mesh::start(&[("KEYMESH_POLICY__FIPS_MODE", "preferred")], &[]).await;
    let admin = mesh.admin_client();
    let created =
        create_key(&admin, key_request("siv", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256GcmSiv)).await.unwrap();
    assert_eq!(created.warnings, ["AES-256-GCM-SIV is not FIPS-approved (FIPS mode is preferred)"]);
    let sealed = encrypt(&admin, "siv").await.unwrap();
    assert_eq!(sealed.warnings, ["AES-256-GCM-SIV is not FIPS-approved (FIPS mode is preferred)"]);
    let opened = decrypt(&admin, &sealed.ciphertext).await.unwrap();
    assert_eq!(opened.plaintext, b"payload");
    assert_eq!(opened.warnings.len(), 1);
    let approved =
        create_key(&admin, key_request("gcm", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm)).await.unwrap();
    assert!(approved.warnings.is_empty());
    let xwing = key_request("xwing", pb::KeyPurpose::Encrypt, pb::Algorithm::HpkeXwingSha256Aes256Gcm);
    let created = create_key(&admin, xwing).await.unwrap();
    assert_eq!(created.warnings, ["HPKE-XWING-SHA256-AES-256-GCM is not FIPS-approved (FIPS mode is preferred)"]);
    let kem = create_key(&admin, key_request("kem", pb::KeyPurpose::Kem, pb::Algorithm::MlKem1024)).await.unwrap();
    assert!(kem.warnings.is_empty(), "FIPS 203");
    let serving = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
    assert_eq!(health(&mesh, ServiceName::CryptoService, "keymesh.fips.preferred").await.unwrap(), serving);
}

//! Post-quantum keys through the real services, checked from the outside with two implementations that
//! share no code with keymesh (`scripts/pq.py`: the pure-Python dilithium-py and kyber-py, and Python's
//! `cryptography`):
//!
//! - ML-DSA-44/65/87: keymesh's signatures (hedged, deterministic, over an external μ the caller computed)
//!   verify outside from the SubjectPublicKeyInfo GetPublicKey exports; a key made outside in the PKCS#8 seed
//!   form is imported, and what the outside signs with it verifies in keymesh; keymesh's deterministic
//!   signature equals dilithium-py's byte for byte; a flipped bit anywhere in a signature is refused.
//! - ML-KEM-512/768/1024: what either outside implementation encapsulates to an exported public key,
//!   Decapsulate turns into the same shared secret; what Encapsulate makes for an imported key (PKCS#8 seed
//!   form), the outside decapsulates to the same secret; a flipped bit gives an unrelated secret (implicit
//!   rejection); shared secrets count against the plaintext quota like decryptions.
//! - The mesh: every hop between services negotiates the hybrid X25519MLKEM768, as each service's
//!   `keymesh_tls_handshakes_total` shows; a client whose TLS offers X25519 alone still connects and is served.
//! - Misuse gets INVALID_ARGUMENT naming the field, or FAILED_PRECONDITION for a key of the wrong purpose.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use integration_tests::{Mesh, hex, import_material, key_request, pq, unhex};
use keymesh_client::KeymeshClient;
use keymesh_mesh::ServiceName;
use keymesh_proto::v1::{self as pb, sign_request, verify_request};
use tonic::Code;

const ML_DSA: [(pb::Algorithm, &str); 3] = [
    (pb::Algorithm::MlDsa44, "ML-DSA-44"),
    (pb::Algorithm::MlDsa65, "ML-DSA-65"),
    (pb::Algorithm::MlDsa87, "ML-DSA-87"),
];
const ML_KEM: [(pb::Algorithm, &str); 3] = [
    (pb::Algorithm::MlKem512, "ML-KEM-512"),
    (pb::Algorithm::MlKem768, "ML-KEM-768"),
    (pb::Algorithm::MlKem1024, "ML-KEM-1024"),
];

async fn create(
    admin: &KeymeshClient,
    name: &str,
    purpose: pb::KeyPurpose,
    algorithm: pb::Algorithm,
    origin: pb::KeyOrigin,
) -> pb::Key {
    let request = pb::CreateKeyRequest { origin: origin as i32, ..key_request(name, purpose, algorithm) };
    integration_tests::create_key(admin, request).await.unwrap().key.unwrap()
}

async fn public_key(admin: &KeymeshClient, name: &str) -> pb::GetPublicKeyResponse {
    let request = pb::GetPublicKeyRequest { key: name.into(), version: 0 };
    admin.key_service().get_public_key(admin.authorized(request).await.unwrap()).await.unwrap().into_inner()
}

async fn sign(
    admin: &KeymeshClient,
    key: &str,
    input: sign_request::Input,
    randomness: pb::SignatureRandomness,
) -> Result<Vec<u8>, tonic::Status> {
    let request =
        pb::SignRequest { key: key.into(), input: Some(input), randomness: randomness as i32, ..Default::default() };
    Ok(admin.crypto_service().sign(admin.authorized(request).await.unwrap()).await?.into_inner().signature)
}

async fn verify(
    admin: &KeymeshClient,
    key: &str,
    input: verify_request::Input,
    signature: &[u8],
) -> Result<bool, tonic::Status> {
    let request = pb::VerifyRequest {
        key: key.into(),
        key_version: 0,
        input: Some(input),
        signature: signature.to_vec(),
        ..Default::default()
    };
    Ok(admin.crypto_service().verify(admin.authorized(request).await.unwrap()).await?.into_inner().valid)
}

/// Both outside implementations' verdicts on `signature` over `message` (in no context).
fn outside_verdicts(alg: &str, spki: &[u8], message: &[u8], signature: &[u8]) -> [String; 2] {
    outside_verdicts_in(alg, spki, message, b"", signature)
}

/// Both outside implementations' verdicts on `signature` over `message` in `context`.
fn outside_verdicts_in(alg: &str, spki: &[u8], message: &[u8], context: &[u8], signature: &[u8]) -> [String; 2] {
    ["dilithium", "cryptography"].map(|implementation| {
        pq(&[
            "mldsa-verify",
            "--algorithm",
            alg,
            "--impl",
            implementation,
            "--spki-hex",
            &hex(spki),
            "--message-hex",
            &hex(message),
            "--signature-hex",
            &hex(signature),
            "--context-hex",
            &hex(context),
        ])
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_dsa_signatures_cross_check_with_two_outside_implementations_both_ways() {
    assert_eq!(pq(&["selftest"]), "ok", "the outside implementations check themselves first");
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let message = b"firmware 7.2.1, sha256 9f86d081884c7d65";
    let valid = ["valid".to_string(), "valid".to_string()];
    let invalid = ["invalid".to_string(), "invalid".to_string()];
    for (algorithm, alg) in ML_DSA {
        let name = format!("sign-{alg}");
        let key = create(&admin, &name, pb::KeyPurpose::Sign, algorithm, pb::KeyOrigin::Generated).await;
        assert_eq!((key.purpose, key.algorithm), (pb::KeyPurpose::Sign as i32, algorithm as i32));
        let public = public_key(&admin, &name).await;
        assert_eq!(public.algorithm, algorithm as i32);
        assert!(public.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{alg}");
        let spki = public.public_key_der.clone();

        // Hedged (the default) and deterministic signatures verify outside; a changed message does not.
        let message_input = || sign_request::Input::Message(message.to_vec());
        let hedged = sign(&admin, &name, message_input(), pb::SignatureRandomness::Unspecified).await.unwrap();
        let again = sign(&admin, &name, message_input(), pb::SignatureRandomness::Hedged).await.unwrap();
        assert_ne!(hedged, again, "{alg}: hedged signatures differ");
        let deterministic = sign(&admin, &name, message_input(), pb::SignatureRandomness::Deterministic).await.unwrap();
        let repeat = sign(&admin, &name, message_input(), pb::SignatureRandomness::Deterministic).await.unwrap();
        assert_eq!(deterministic, repeat, "{alg}: deterministic signatures repeat");
        for signature in [&hedged, &again, &deterministic] {
            assert_eq!(outside_verdicts(alg, &spki, message, signature), valid, "{alg}");
            assert_eq!(outside_verdicts(alg, &spki, b"firmware 7.2.2", signature), invalid, "{alg}");
        }

        // Over an external mu the caller computed from the exported key: the signature is the message's.
        let mu =
            unhex(&pq(&["mldsa-mu", "--algorithm", alg, "--spki-hex", &hex(&spki), "--message-hex", &hex(message)]));
        let over_mu = sign(&admin, &name, sign_request::Input::Mu(mu.clone()), pb::SignatureRandomness::Unspecified)
            .await
            .unwrap();
        assert_eq!(outside_verdicts(alg, &spki, message, &over_mu), valid, "{alg}: signed over mu");
        assert!(verify(&admin, &name, verify_request::Input::Mu(mu.clone()), &over_mu).await.unwrap());
        assert!(verify(&admin, &name, verify_request::Input::Message(message.to_vec()), &over_mu).await.unwrap());
        let deterministic_mu =
            sign(&admin, &name, sign_request::Input::Mu(mu.clone()), pb::SignatureRandomness::Deterministic)
                .await
                .unwrap();
        assert_eq!(deterministic_mu, deterministic, "{alg}: mu and message give the same deterministic signature");

        // A flipped bit anywhere in the signature is refused.
        for byte in (0..hedged.len()).step_by(hedged.len() / 7).chain([hedged.len() - 1]) {
            let mut tampered = hedged.clone();
            tampered[byte] ^= 0x04;
            let input = verify_request::Input::Message(message.to_vec());
            assert!(!verify(&admin, &name, input, &tampered).await.unwrap(), "{alg}: bit flipped at byte {byte}");
        }

        // A context string (FIPS 204's ctx) binds: both outside implementations verify in it, and only in it.
        let context = b"release-channel=stable".to_vec();
        let request = pb::SignRequest {
            key: name.clone(),
            input: Some(message_input()),
            context: context.clone(),
            ..Default::default()
        };
        let in_context =
            admin.crypto_service().sign(admin.authorized(request).await.unwrap()).await.unwrap().into_inner().signature;
        assert_eq!(outside_verdicts_in(alg, &spki, message, &context, &in_context), valid, "{alg}: in the context");
        assert_eq!(outside_verdicts(alg, &spki, message, &in_context), invalid, "{alg}: without it");
        let verify_in = |context: Vec<u8>| {
            let request = pb::VerifyRequest {
                key: name.clone(),
                input: Some(verify_request::Input::Message(message.to_vec())),
                signature: in_context.clone(),
                context,
                ..Default::default()
            };
            let admin = &admin;
            async move { admin.crypto_service().verify(admin.authorized(request).await.unwrap()).await }
        };
        assert!(verify_in(context.clone()).await.unwrap().into_inner().valid);
        assert!(!verify_in(Vec::new()).await.unwrap().into_inner().valid);
        let long = verify_in(vec![0; 256]).await.err().unwrap();
        assert_eq!(long.code(), Code::InvalidArgument, "{long:?}");
        assert!(long.message().contains("context"), "{long:?}");

        // Misuse names its field.
        let digest =
            sign(&admin, &name, sign_request::Input::Digest(vec![0; 32]), pb::SignatureRandomness::Unspecified)
                .await
                .unwrap_err();
        assert_eq!(digest.code(), Code::InvalidArgument, "{digest:?}");
        assert!(digest.message().contains("digest") && digest.message().contains("not digests"), "{digest:?}");
        let short_mu = sign(&admin, &name, sign_request::Input::Mu(vec![0; 32]), pb::SignatureRandomness::Unspecified)
            .await
            .unwrap_err();
        assert_eq!(short_mu.code(), Code::InvalidArgument, "{short_mu:?}");
        assert!(short_mu.message().contains("mu"), "{short_mu:?}");

        // A key made outside, imported in the PKCS#8 seed form `cryptography` writes.
        let generated = pq(&["mldsa-keypair", "--algorithm", alg]);
        let lines: Vec<&str> = generated.lines().collect();
        let (seed, pkcs8, raw) = (lines[0], lines[1], lines[2]);
        let imported = format!("byok-{alg}");
        create(&admin, &imported, pb::KeyPurpose::Sign, algorithm, pb::KeyOrigin::External).await;
        import_material(&admin, &imported, &unhex(pkcs8), pb::WrappingAlgorithm::RsaAesKeyWrapSha256).await.unwrap();
        let exported = public_key(&admin, &imported).await;
        assert!(hex(&exported.public_key_der).ends_with(raw), "{alg}: the imported key's public half");
        for implementation in ["dilithium", "cryptography"] {
            let args = [
                "mldsa-sign",
                "--algorithm",
                alg,
                "--impl",
                implementation,
                "--seed-hex",
                seed,
                "--message-hex",
                &hex(message),
            ];
            let outside = unhex(&pq(&args));
            let input = || verify_request::Input::Message(message.to_vec());
            assert!(verify(&admin, &imported, input(), &outside).await.unwrap(), "{alg}: {implementation}'s signature");
            let mut tampered = outside.clone();
            tampered[outside.len() / 2] ^= 1;
            assert!(!verify(&admin, &imported, input(), &tampered).await.unwrap(), "{alg}: tampered");
        }
        let outside_deterministic = pq(&[
            "mldsa-sign",
            "--algorithm",
            alg,
            "--impl",
            "dilithium",
            "--seed-hex",
            seed,
            "--message-hex",
            &hex(message),
            "--deterministic",
        ]);
        let ours = sign(&admin, &imported, message_input(), pb::SignatureRandomness::Deterministic).await.unwrap();
        assert_eq!(hex(&ours), outside_deterministic, "{alg}: deterministic ML-DSA is the same function in both");
    }

    // Randomness is a choice only ML-DSA (and Ed25519, deterministic) offers.
    create(&admin, "sign-p256", pb::KeyPurpose::Sign, pb::Algorithm::EcdsaP256Sha256, pb::KeyOrigin::Generated).await;
    let input = sign_request::Input::Message(message.to_vec());
    let refused = sign(&admin, "sign-p256", input, pb::SignatureRandomness::Deterministic).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("randomness"), "{refused:?}");
    let mu = sign(&admin, "sign-p256", sign_request::Input::Mu(vec![0; 64]), pb::SignatureRandomness::Unspecified)
        .await
        .unwrap_err();
    assert_eq!(mu.code(), Code::InvalidArgument, "{mu:?}");
    assert!(mu.message().contains("mu is for ML-DSA keys"), "{mu:?}");
    let request = pb::SignRequest {
        key: "sign-p256".into(),
        input: Some(sign_request::Input::Message(message.to_vec())),
        context: b"ctx".to_vec(),
        ..Default::default()
    };
    let refused = admin.crypto_service().sign(admin.authorized(request).await.unwrap()).await.err().unwrap();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("context string is for ML-DSA keys"), "{refused:?}");
    // Ed25519 is always deterministic, so it may be asked for.
    create(&admin, "sign-ed", pb::KeyPurpose::Sign, pb::Algorithm::Ed25519, pb::KeyOrigin::Generated).await;
    let input = || sign_request::Input::Message(message.to_vec());
    let first = sign(&admin, "sign-ed", input(), pb::SignatureRandomness::Deterministic).await.unwrap();
    assert_eq!(first, sign(&admin, "sign-ed", input(), pb::SignatureRandomness::Unspecified).await.unwrap());
    let refused = sign(&admin, "sign-ed", input(), pb::SignatureRandomness::Hedged).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    // The expanded ML-DSA form alone is refused at import, by name.
    create(&admin, "byok-expanded", pb::KeyPurpose::Sign, pb::Algorithm::MlDsa44, pb::KeyOrigin::External).await;
    let expanded = {
        // PKCS#8 with an expandedKey OCTET STRING (2,560 zero bytes) under id-ml-dsa-44.
        let mut der = unhex("30820a18020100300b06096086480165030403110482");
        der.extend_from_slice(&[0x0a, 0x04, 0x04, 0x82, 0x0a, 0x00]);
        der.extend(std::iter::repeat_n(0u8, 2560));
        der
    };
    let refused = import_material(&admin, "byok-expanded", &expanded, pb::WrappingAlgorithm::RsaAesKeyWrapSha256)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("seed"), "{refused:?}");
}

async fn decapsulate(admin: &KeymeshClient, key: &str, ciphertext: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let request = pb::DecapsulateRequest { key: key.into(), key_version: 0, ciphertext };
    Ok(admin.crypto_service().decapsulate(admin.authorized(request).await.unwrap()).await?.into_inner().shared_secret)
}

async fn encapsulate(admin: &KeymeshClient, key: &str) -> Result<pb::EncapsulateResponse, tonic::Status> {
    let request = pb::EncapsulateRequest { key: key.into() };
    Ok(admin.crypto_service().encapsulate(admin.authorized(request).await.unwrap()).await?.into_inner())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_kem_shared_secrets_agree_with_two_outside_implementations_both_ways() {
    let mut mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    // KEM's default algorithm is ML-KEM-768.
    let key =
        create(&admin, "kem-default", pb::KeyPurpose::Kem, pb::Algorithm::Unspecified, pb::KeyOrigin::Generated).await;
    assert_eq!((key.purpose, key.algorithm), (pb::KeyPurpose::Kem as i32, pb::Algorithm::MlKem768 as i32));
    for (algorithm, alg) in ML_KEM {
        let name = format!("kem-{alg}");
        create(&admin, &name, pb::KeyPurpose::Kem, algorithm, pb::KeyOrigin::Generated).await;
        let public = public_key(&admin, &name).await;
        assert_eq!(public.algorithm, algorithm as i32);
        let implementations: &[&str] = if alg == "ML-KEM-512" { &["kyber"] } else { &["kyber", "cryptography"] };
        for implementation in implementations {
            let out = pq(&[
                "mlkem-encaps",
                "--algorithm",
                alg,
                "--impl",
                implementation,
                "--spki-hex",
                &hex(&public.public_key_der),
            ]);
            let (ciphertext, shared) = out.split_once('\n').unwrap();
            let ours = decapsulate(&admin, &name, unhex(ciphertext)).await.unwrap();
            assert_eq!(hex(&ours), shared, "{alg}: what {implementation} encapsulated decapsulates to its secret");
            // A flipped bit is not an error: ML-KEM's implicit rejection gives an unrelated secret.
            let mut tampered = unhex(ciphertext);
            tampered[7] ^= 0x20;
            let rejected = decapsulate(&admin, &name, tampered).await.unwrap();
            assert_eq!(rejected.len(), 32);
            assert_ne!(hex(&rejected), shared, "{alg}: a tampered ciphertext");
        }
        let short = decapsulate(&admin, &name, vec![0; 100]).await.unwrap_err();
        assert_eq!(short.code(), Code::InvalidArgument, "{short:?}");
        assert!(short.message().contains("ciphertext"), "{short:?}");

        // Encapsulate for a key made outside and imported: the outside decapsulates to the same secret.
        let generated = pq(&["mlkem-keypair", "--algorithm", alg]);
        let (seed, pkcs8) = generated.split_once('\n').unwrap();
        let imported = format!("byok-{alg}");
        create(&admin, &imported, pb::KeyPurpose::Kem, algorithm, pb::KeyOrigin::External).await;
        import_material(&admin, &imported, &unhex(pkcs8), pb::WrappingAlgorithm::RsaAesKeyWrapSha256).await.unwrap();
        let encapsulated = encapsulate(&admin, &imported).await.unwrap();
        assert_eq!((encapsulated.key_version, encapsulated.algorithm), (1, algorithm as i32));
        for implementation in implementations {
            let args = ["mlkem-decaps", "--algorithm", alg, "--impl", implementation, "--seed-hex", seed];
            let outside = pq(&[&args[..], &["--ciphertext-hex", &hex(&encapsulated.ciphertext)]].concat());
            assert_eq!(outside, hex(&encapsulated.shared_secret), "{alg}: {implementation} decapsulates Encapsulate's");
        }
        let again = decapsulate(&admin, &imported, encapsulated.ciphertext.clone()).await.unwrap();
        assert_eq!(again, encapsulated.shared_secret, "{alg}: and so does keymesh");
        // A KEM key does not encrypt or sign.
        let request = pb::EncryptRequest { key: name.clone(), plaintext: b"x".to_vec(), ..Default::default() };
        let refused = admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{alg}: {refused:?}");
        let input = sign_request::Input::Message(b"x".to_vec());
        let refused = sign(&admin, &name, input, pb::SignatureRandomness::Unspecified).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{alg}: {refused:?}");
    }
    // After a rotation Encapsulate uses the new primary version (once crypto-service has heard of the rotation
    // on key-service's change stream, as for every key); an older ciphertext opens with its version.
    let before = encapsulate(&admin, "kem-ML-KEM-512").await.unwrap();
    let request = pb::RotateKeyRequest { key: "kem-ML-KEM-512".into() };
    admin.key_service().rotate_key(admin.authorized(request).await.unwrap()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while encapsulate(&admin, "kem-ML-KEM-512").await.unwrap().key_version != 2 {
        assert!(std::time::Instant::now() < deadline, "Encapsulate still uses version 1 after the rotation");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(before.key_version, 1);
    let request =
        pb::DecapsulateRequest { key: "kem-ML-KEM-512".into(), key_version: 1, ciphertext: before.ciphertext };
    let old = admin.crypto_service().decapsulate(admin.authorized(request).await.unwrap()).await.unwrap().into_inner();
    assert_eq!((old.shared_secret, old.key_version), (before.shared_secret, 1));

    // And a key of another purpose does not decapsulate.
    create(&admin, "sign-for-kem", pb::KeyPurpose::Sign, pb::Algorithm::MlDsa44, pb::KeyOrigin::Generated).await;
    let refused = decapsulate(&admin, "sign-for-kem", vec![0; 768]).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("needs a KEM key"), "{refused:?}");

    // Shared secrets leave the mesh: they count against the daily plaintext quota, Decapsulate and
    // Encapsulate alike.
    let credentials: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mesh.dir.path().join("bootstrap-credentials.json")).unwrap()).unwrap();
    let admin_id = credentials["client_id"].as_str().unwrap().to_owned();
    let quota = format!("KEYMESH_LIMITS__QUOTAS__APPLICATIONS__{admin_id}__PER_DAY");
    mesh.restart(ServiceName::CryptoService, &[(quota.as_str(), "3")]).await;
    let admin = mesh.admin_client();
    let encapsulated = encapsulate(&admin, "kem-ML-KEM-768").await.unwrap();
    decapsulate(&admin, "kem-ML-KEM-768", encapsulated.ciphertext.clone()).await.unwrap();
    decapsulate(&admin, "kem-ML-KEM-768", encapsulated.ciphertext.clone()).await.unwrap();
    let exhausted = decapsulate(&admin, "kem-ML-KEM-768", encapsulated.ciphertext).await.unwrap_err();
    assert_eq!(exhausted.code(), Code::ResourceExhausted, "{exhausted:?}");
    assert!(exhausted.message().contains("per day"), "{exhausted:?}");
    assert_eq!(encapsulate(&admin, "kem-ML-KEM-768").await.err().unwrap().code(), Code::ResourceExhausted);

    // Both are audited under their own names, the refusals too.
    for operation in ["Decapsulate", "Encapsulate"] {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let query = pb::QueryRequest { operation: operation.into(), ..Default::default() };
            let events = admin.audit_query(query).await.unwrap();
            let refused = |r: &pb::AuditRecord| {
                r.event.as_ref().is_some_and(|e| {
                    e.resource == encapsulated.key_id && e.status_code == Code::ResourceExhausted as i32
                })
            };
            if events.iter().any(refused) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{operation}: no audited refusal in {events:?}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }
}

/// The handshakes a service counted, by group.
async fn handshakes(addr: &str) -> std::collections::HashMap<String, f64> {
    let families = integration_tests::parse_prometheus(&integration_tests::scrape_metrics(addr).await.1);
    let samples = families.get("keymesh_tls_handshakes").cloned().unwrap_or_default();
    samples
        .iter()
        .filter(|s| s.name == "keymesh_tls_handshakes_total")
        .map(|s| (s.labels["group"].clone(), s.value))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mesh_hop_negotiates_x25519mlkem768_and_a_classical_client_still_connects() {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
    use std::sync::{Arc, Mutex};
    keymesh_mesh::install_crypto_provider();
    let metrics: Vec<(ServiceName, String)> =
        ServiceName::ALL.into_iter().map(|s| (s, format!("127.0.0.1:{}", integration_tests::free_port()))).collect();
    let per_service: Vec<(ServiceName, &str, &str)> =
        metrics.iter().map(|(s, addr)| (*s, "KEYMESH_TELEMETRY__METRICS_ADDR", addr.as_str())).collect();
    let mesh = Mesh::start(&[], &per_service).await;
    let admin = mesh.admin_client();
    // A workload that crosses every hop: the client to crypto- and key-service, crypto-service to key-,
    // token- and audit-service.
    create(&admin, "hops", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm, pb::KeyOrigin::Generated).await;
    let request = pb::EncryptRequest { key: "hops".into(), plaintext: b"x".to_vec(), ..Default::default() };
    admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for (service, addr) in &metrics {
        loop {
            let groups = handshakes(addr).await;
            if groups.get("X25519MLKEM768").is_some_and(|n| *n >= 1.0) {
                assert_eq!(groups.len(), 1, "{service}: every handshake is post-quantum: {groups:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{service}: no X25519MLKEM768 handshake: {groups:?}");
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    // A client whose TLS offers X25519 only still connects, and is served.
    let tls = mesh.app_tls("classical-client");
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes()).unwrap();
    let classical = rustls::crypto::CryptoProvider {
        kx_groups: vec![rustls::crypto::aws_lc_rs::kx_group::X25519],
        ..rustls::crypto::aws_lc_rs::default_provider()
    };
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(classical))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let config = Arc::new(config);
    let negotiated = Arc::new(Mutex::new(None));
    let crypto = mesh.endpoint(ServiceName::CryptoService).to_owned();
    let connector = {
        let negotiated = negotiated.clone();
        tower::service_fn(move |_: tonic::transport::Uri| {
            let (config, crypto, negotiated) = (config.clone(), crypto.clone(), negotiated.clone());
            async move {
                let tcp = tokio::net::TcpStream::connect(&crypto).await?;
                let name = ServerName::IpAddress(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST).into());
                let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
                *negotiated.lock().unwrap() = tls.get_ref().1.negotiated_key_exchange_group().map(|g| g.name());
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
            }
        })
    };
    let channel =
        tonic::transport::Endpoint::from_static("http://127.0.0.1:1").connect_with_connector(connector).await.unwrap();
    let health = tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    assert_eq!(*negotiated.lock().unwrap(), Some(rustls::NamedGroup::X25519), "the classical client's group");
    let crypto_metrics = &metrics.iter().find(|(s, _)| *s == ServiceName::CryptoService).unwrap().1;
    let groups = handshakes(crypto_metrics).await;
    assert_eq!(groups.get("X25519"), Some(&1.0), "crypto-service counted the classical handshake: {groups:?}");
}

async fn encrypt(admin: &KeymeshClient, key: &str, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    let request =
        pb::EncryptRequest { key: key.into(), plaintext: plaintext.to_vec(), aad: aad.to_vec(), ..Default::default() };
    admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await.unwrap().into_inner().ciphertext
}

async fn decrypt(admin: &KeymeshClient, key: &str, ciphertext: Vec<u8>, aad: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let request = pb::DecryptRequest { key: key.into(), ciphertext, aad: aad.to_vec(), ..Default::default() };
    Ok(admin.crypto_service().decrypt(admin.authorized(request).await.unwrap()).await?.into_inner().plaintext)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_documents_hybrid_mode_round_trips_with_an_implementation_written_from_the_document() {
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let plaintext = b"customer 4412: card ending 0042";

    // keymesh encrypts, the document's format, and the outside decrypts (it holds the imported key's seed).
    let generated = pq(&["mlkem-keypair", "--algorithm", "ML-KEM-768"]);
    let (seed, pkcs8) = generated.split_once('\n').unwrap();
    let key =
        create(&admin, "hybrid", pb::KeyPurpose::Encrypt, pb::Algorithm::MlKem768Aes256Gcm, pb::KeyOrigin::External)
            .await;
    import_material(&admin, "hybrid", &unhex(pkcs8), pb::WrappingAlgorithm::RsaAesKeyWrapSha256).await.unwrap();
    let ciphertext = encrypt(&admin, "hybrid", plaintext, b"").await;
    let header_len = usize::from(u16::from_be_bytes([ciphertext[0], ciphertext[1]]));
    let header: serde_json::Value = serde_json::from_slice(&ciphertext[2..2 + header_len]).unwrap();
    assert_eq!(
        (header["v"].as_u64(), header["mode"].as_str(), header["kem_ct_len"].as_u64()),
        (Some(1), Some("AES-256-GCM+ML-KEM-768"), Some(1088))
    );
    let kid = format!("{}:v1", key.key_id);
    assert_eq!(header["kid"].as_str(), Some(kid.as_str()));
    assert_eq!(ciphertext.len(), 2 + header_len + 1088 + plaintext.len() + 16);
    let outside = pq(&["hybrid-decrypt", "--seed-hex", seed, "--ciphertext-hex", &hex(&ciphertext)]);
    assert_eq!(outside, hex(plaintext), "the outside implementation opens keymesh's ciphertext");
    assert_eq!(decrypt(&admin, "hybrid", ciphertext.clone(), b"").await.unwrap(), plaintext);

    // The outside encrypts to the exported public key; keymesh decrypts, the version taken from the header.
    let public = public_key(&admin, "hybrid").await;
    assert_eq!(public.algorithm, pb::Algorithm::MlKem768Aes256Gcm as i32);
    let theirs = unhex(&pq(&[
        "hybrid-encrypt",
        "--spki-hex",
        &hex(&public.public_key_der),
        "--kid",
        &kid,
        "--plaintext-hex",
        &hex(plaintext),
    ]));
    assert_eq!(decrypt(&admin, "hybrid", theirs.clone(), b"").await.unwrap(), plaintext, "keymesh opens theirs");

    // A flipped bit anywhere, in the header, the KEM ciphertext or the AEAD's, is the generic error.
    let step = (theirs.len() / 40).max(1);
    for byte in (0..header_len + 2).chain((header_len + 2..theirs.len()).step_by(step)).chain([theirs.len() - 1]) {
        let mut tampered = theirs.clone();
        tampered[byte] ^= 0x02;
        let refused = decrypt(&admin, "hybrid", tampered, b"").await.unwrap_err();
        assert_eq!((refused.code(), refused.message()), (Code::InvalidArgument, "decryption failed"), "byte {byte}");
    }
    // AAD binds; another key of the same kind does not open it.
    let bound = encrypt(&admin, "hybrid", plaintext, b"order=8813").await;
    assert_eq!(decrypt(&admin, "hybrid", bound.clone(), b"order=8813").await.unwrap(), plaintext);
    assert_eq!(decrypt(&admin, "hybrid", bound, b"").await.unwrap_err().message(), "decryption failed");
    create(&admin, "hybrid-2", pb::KeyPurpose::Encrypt, pb::Algorithm::MlKem768Aes256Gcm, pb::KeyOrigin::Generated)
        .await;
    assert_eq!(decrypt(&admin, "hybrid-2", theirs, b"").await.unwrap_err().message(), "decryption failed");
    let own = encrypt(&admin, "hybrid-2", plaintext, b"").await;
    assert_eq!(decrypt(&admin, "hybrid-2", own, b"").await.unwrap(), plaintext);

    // After a rotation, a version-1 ciphertext opens with no version named: the header's kid says which.
    let request = pb::RotateKeyRequest { key: "hybrid-2".into() };
    admin.key_service().rotate_key(admin.authorized(request).await.unwrap()).await.unwrap();
    let old = encrypt(&admin, "hybrid-2", plaintext, b"").await;
    let request = pb::RotateKeyRequest { key: "hybrid-2".into() };
    admin.key_service().rotate_key(admin.authorized(request).await.unwrap()).await.unwrap();
    let new = encrypt(&admin, "hybrid-2", plaintext, b"").await;
    assert_eq!(decrypt(&admin, "hybrid-2", old.clone(), b"").await.unwrap(), plaintext, "version 2 by its kid");
    assert_eq!(decrypt(&admin, "hybrid-2", new, b"").await.unwrap(), plaintext, "version 3");
    let named = pb::DecryptRequest { key: "hybrid-2".into(), ciphertext: old, key_version: 3, ..Default::default() };
    let refused = admin.crypto_service().decrypt(admin.authorized(named).await.unwrap()).await.err().unwrap();
    assert_eq!(refused.message(), "decryption failed", "a version named that is not the header's");

    // Envelope encryption, post-quantum end to end: a data key under the hybrid key comes in the document's
    // format, and the key's owner opens it outside.
    let request = pb::GenerateDataKeyRequest { key: "hybrid".into(), ..Default::default() };
    let data_key =
        admin.crypto_service().generate_data_key(admin.authorized(request).await.unwrap()).await.unwrap().into_inner();
    let outside = pq(&["hybrid-decrypt", "--seed-hex", seed, "--ciphertext-hex", &hex(&data_key.ciphertext)]);
    assert_eq!(outside, hex(&data_key.plaintext), "the data key opens outside");
    assert_eq!(decrypt(&admin, "hybrid", data_key.ciphertext, b"").await.unwrap(), data_key.plaintext);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_wing_hpke_encrypts_opens_and_carries_data_keys() {
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let algorithm = pb::Algorithm::HpkeXwingSha256Aes256Gcm;
    create(&admin, "xwing", pb::KeyPurpose::Encrypt, algorithm, pb::KeyOrigin::Generated).await;
    let public = public_key(&admin, "xwing").await;
    assert_eq!(public.algorithm, algorithm as i32);
    // SubjectPublicKeyInfo under the draft's identifier, around pk_M || pk_X.
    let oid = unhex("060b2b0601040183e62d81c87a");
    assert!(public.public_key_der.windows(oid.len()).any(|w| w == oid), "1.3.6.1.4.1.62253.25722");
    assert_eq!(
        public.public_key_der.len(),
        4 + 2 + oid.len() + 4 + 1 + 1216,
        "SEQUENCE {{ SEQUENCE {{ OID }}, BIT STRING }}"
    );
    assert!(public.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"));

    let plaintext = b"a key for the year 2040";
    let sealed = encrypt(&admin, "xwing", plaintext, b"tenant=a").await;
    assert_eq!(sealed.len(), 1120 + plaintext.len() + 16, "enc || ciphertext || tag");
    assert_eq!(decrypt(&admin, "xwing", sealed.clone(), b"tenant=a").await.unwrap(), plaintext);
    assert_eq!(decrypt(&admin, "xwing", sealed.clone(), b"tenant=b").await.unwrap_err().message(), "decryption failed");
    for byte in (0..sealed.len()).step_by(sealed.len() / 25).chain([1119, sealed.len() - 1]) {
        let mut tampered = sealed.clone();
        tampered[byte] ^= 0x40;
        let refused = decrypt(&admin, "xwing", tampered, b"tenant=a").await.unwrap_err();
        assert_eq!((refused.code(), refused.message()), (Code::InvalidArgument, "decryption failed"), "byte {byte}");
    }

    // A data key under it: sealed to the X-Wing public key, opened by Decrypt.
    let request = pb::GenerateDataKeyRequest { key: "xwing".into(), aad: b"file=7".to_vec(), ..Default::default() };
    let data_key =
        admin.crypto_service().generate_data_key(admin.authorized(request).await.unwrap()).await.unwrap().into_inner();
    assert_eq!(data_key.ciphertext.len(), 1120 + 32 + 16);
    assert_eq!(decrypt(&admin, "xwing", data_key.ciphertext, b"file=7").await.unwrap(), data_key.plaintext);
    // An encryption context has no place in an HPKE ciphertext: refused, naming the field.
    let request = pb::GenerateDataKeyRequest {
        key: "xwing".into(),
        encryption_context: [("tenant".to_string(), "a".to_string())].into(),
        ..Default::default()
    };
    let refused =
        admin.crypto_service().generate_data_key(admin.authorized(request).await.unwrap()).await.err().unwrap();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().starts_with("encryption_context: "), "{refused:?}");
}

/// Runs the `keymesh` CLI with `stdin`: whether it succeeded, and its standard output.
async fn cli(mesh: &Mesh, args: &[&str], stdin: &[u8]) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut command = mesh.cli();
    command.args(args).stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).await.unwrap();
    drop(input);
    let output = child.wait_with_output().await.unwrap();
    (output.status.success(), String::from_utf8(output.stdout).unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_post_quantum_keys_signs_verifies_encapsulates_and_decapsulates() {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mesh = Mesh::start(&[], &[]).await;
    let (ok, out) =
        cli(&mesh, &["-o", "json", "keys", "create", "pq-kem", "--purpose", "kem", "--algorithm", "ml-kem-768"], b"")
            .await;
    assert!(ok, "{out}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["key"]["algorithm"], "ALGORITHM_ML_KEM_768", "{out}");
    let (ok, out) = cli(&mesh, &["keys", "public-key", "pq-kem"], b"").await;
    assert!(ok && out.starts_with("-----BEGIN PUBLIC KEY-----"), "{out}");

    // Encapsulate, then Decapsulate the ciphertext (as base64 on standard input): the same secret.
    let (ok, out) = cli(&mesh, &["encapsulate", "--key", "pq-kem"], b"").await;
    assert!(ok, "{out}");
    let encapsulated: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ciphertext = encapsulated["ciphertext"].as_str().unwrap();
    assert_eq!(b64.decode(ciphertext).unwrap().len(), 1088);
    let (ok, out) = cli(&mesh, &["decapsulate", "--key", "pq-kem"], ciphertext.as_bytes()).await;
    assert!(ok, "{out}");
    assert_eq!(out.trim(), encapsulated["shared_secret"].as_str().unwrap());

    // ML-DSA: sign standard input, verify it; a changed message does not verify (exit status 1).
    let (ok, out) = cli(&mesh, &["keys", "create", "pq-sign", "--algorithm", "ML_DSA_65"], b"").await;
    assert!(ok && out.contains("key.algorithm: ML_DSA_65"), "{out}");
    for flags in [&[][..], &["--deterministic"][..]] {
        let (ok, signature) = cli(&mesh, &[&["sign", "--key", "pq-sign"][..], flags].concat(), b"release 9").await;
        assert!(ok, "{signature}");
        assert_eq!(b64.decode(signature.trim()).unwrap().len(), 3309);
        let verify = ["verify", "--key", "pq-sign", "--signature", signature.trim()];
        assert_eq!(cli(&mesh, &verify, b"release 9").await, (true, "valid\n".into()));
        assert_eq!(cli(&mesh, &verify, b"release 8").await, (false, "invalid\n".into()));
    }

    // The document's hybrid mode through encrypt and decrypt.
    let create = ["keys", "create", "pq-hybrid", "--algorithm", "ml-kem-768-aes-256-gcm"];
    assert!(cli(&mesh, &create, b"").await.0);
    let (ok, sealed) = cli(&mesh, &["encrypt", "--key", "pq-hybrid", "--base64"], b"hybrid via the CLI").await;
    assert!(ok, "{sealed}");
    let (ok, opened) = cli(&mesh, &["decrypt", "--key", "pq-hybrid"], sealed.as_bytes()).await;
    assert_eq!((ok, opened.as_str()), (true, "hybrid via the CLI"));

    // An unknown algorithm is refused by name, before any call.
    let (ok, _) = cli(&mesh, &["keys", "create", "x", "--algorithm", "ml-kem-769"], b"").await;
    assert!(!ok);
}

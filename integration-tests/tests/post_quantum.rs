//! Post-quantum keys through the real services, checked from the outside with two implementations that
//! share no code with keymesh (`scripts/pq.py`: the pure-Python dilithium-py and kyber-py, and Python's
//! `cryptography`):
//!
//! - ML-DSA-44/65/87: keymesh's signatures (hedged, deterministic, over an external μ the caller computed)
//!   verify outside from the SubjectPublicKeyInfo GetPublicKey exports; a key made outside in the PKCS#8 seed
//!   form is imported, and what the outside signs with it verifies in keymesh; keymesh's deterministic
//!   signature equals dilithium-py's byte for byte; a flipped bit anywhere in a signature is refused.
//! - ML-KEM-512/768/1024: the exported public keys are read and encapsulated to by both outside
//!   implementations.
//! - Misuse gets INVALID_ARGUMENT naming the field, or FAILED_PRECONDITION for a key of the wrong purpose.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use integration_tests::{Mesh, hex, import_material, key_request, pq, unhex};
use keymesh_client::KeymeshClient;
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
    let request = pb::SignRequest { key: key.into(), input: Some(input), randomness: randomness as i32 };
    Ok(admin.crypto_service().sign(admin.authorized(request).await.unwrap()).await?.into_inner().signature)
}

async fn verify(
    admin: &KeymeshClient,
    key: &str,
    input: verify_request::Input,
    signature: &[u8],
) -> Result<bool, tonic::Status> {
    let request =
        pb::VerifyRequest { key: key.into(), key_version: 0, input: Some(input), signature: signature.to_vec() };
    Ok(admin.crypto_service().verify(admin.authorized(request).await.unwrap()).await?.into_inner().valid)
}

/// Both outside implementations' verdicts on `signature` over `message`.
fn outside_verdicts(alg: &str, spki: &[u8], message: &[u8], signature: &[u8]) -> [String; 2] {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ml_kem_keys_export_public_keys_both_outside_implementations_read() {
    let mesh = Mesh::start(&[], &[]).await;
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
            assert_eq!(shared.len(), 64, "{alg}: {implementation}");
            assert!(!ciphertext.is_empty());
        }
        // A KEM key does not encrypt or sign.
        let request = pb::EncryptRequest { key: name.clone(), plaintext: b"x".to_vec(), ..Default::default() };
        let refused = admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{alg}: {refused:?}");
        let input = sign_request::Input::Message(b"x".to_vec());
        let refused = sign(&admin, &name, input, pb::SignatureRandomness::Unspecified).await.unwrap_err();
        assert_eq!(refused.code(), Code::FailedPrecondition, "{alg}: {refused:?}");
    }
}

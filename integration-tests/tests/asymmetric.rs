//! Signatures, MACs and encryption to public keys through the real services, checked from the outside:
//! signatures keymesh makes verify with `openssl` and with an independent implementation
//! (`scripts/asym.py`, Python's `cryptography`) from the public key GetPublicKey exports; private keys made
//! outside and imported (BYOK) sign there and verify in keymesh, and the other way round; what Python
//! encrypts to an exported HPKE or RSA-OAEP public key decrypts in keymesh; HMAC tags match Python's for
//! an imported key; and every misuse (wrong purpose, digest for Ed25519, wrong key kind on import) gets a
//! clear error.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use integration_tests::{Mesh, asym, hex, import_material, key_request, unhex};
use keymesh_client::KeymeshClient;
use keymesh_proto::v1::{self as pb, sign_request, verify_request};
use tonic::Code;

/// The script's name for each algorithm.
fn script_name(algorithm: pb::Algorithm) -> &'static str {
    match algorithm {
        pb::Algorithm::Ed25519 => "ed25519",
        pb::Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
        pb::Algorithm::EcdsaP384Sha384 => "ecdsa-p384-sha384",
        pb::Algorithm::RsaPss2048Sha256 => "rsa-pss-2048-sha256",
        pb::Algorithm::RsaPss3072Sha256 => "rsa-pss-3072-sha256",
        pb::Algorithm::RsaPss4096Sha256 => "rsa-pss-4096-sha256",
        pb::Algorithm::HpkeX25519Sha256Aes256Gcm => "hpke-x25519-sha256-aes256gcm",
        pb::Algorithm::RsaOaep2048Sha256 => "rsa-oaep-2048-sha256",
        pb::Algorithm::RsaOaep3072Sha256 => "rsa-oaep-3072-sha256",
        pb::Algorithm::RsaOaep4096Sha256 => "rsa-oaep-4096-sha256",
        other => panic!("no script name for {other:?}"),
    }
}

const SIGNING: [pb::Algorithm; 6] = [
    pb::Algorithm::Ed25519,
    pb::Algorithm::EcdsaP256Sha256,
    pb::Algorithm::EcdsaP384Sha384,
    pb::Algorithm::RsaPss2048Sha256,
    pb::Algorithm::RsaPss3072Sha256,
    pb::Algorithm::RsaPss4096Sha256,
];

async fn create_key(
    admin: &KeymeshClient,
    name: &str,
    purpose: pb::KeyPurpose,
    algorithm: pb::Algorithm,
    origin: pb::KeyOrigin,
) -> Result<pb::Key, tonic::Status> {
    let request = pb::CreateKeyRequest { origin: origin as i32, ..key_request(name, purpose, algorithm) };
    Ok(integration_tests::create_key(admin, request).await?.key.unwrap())
}

/// What a sender outside keymesh makes with the exported public key (`scripts/asym.py encrypt`).
fn outside_encrypt(pem: &std::path::Path, alg: &str, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
    unhex(&asym(&[
        "encrypt",
        "--public-key",
        pem.to_str().unwrap(),
        "--algorithm",
        alg,
        "--plaintext-hex",
        &hex(plaintext),
        "--aad-hex",
        &hex(aad),
    ]))
}

/// Imports `material` (PKCS#8 DER, or raw key bytes) into the EXTERNAL key `name`, wrapped as AWS KMS users
/// wrap it (RSA-OAEP-SHA256 over an AES-256 key, then AES-KWP), since private keys outgrow plain RSA-OAEP.
async fn import(admin: &KeymeshClient, name: &str, material: &[u8]) -> Result<(), tonic::Status> {
    import_material(admin, name, material, pb::WrappingAlgorithm::RsaAesKeyWrapSha256).await.map(drop)
}

async fn public_key(
    admin: &KeymeshClient,
    name: &str,
    version: u32,
) -> Result<pb::GetPublicKeyResponse, tonic::Status> {
    let request = pb::GetPublicKeyRequest { key: name.into(), version };
    Ok(admin.key_service().get_public_key(admin.authorized(request).await.unwrap()).await?.into_inner())
}

/// The exported public key in a PEM file, for the outside verifiers.
fn pem_file(public: &pb::GetPublicKeyResponse) -> tempfile::NamedTempFile {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &public.public_key_pem).unwrap();
    file
}

async fn sign(admin: &KeymeshClient, key: &str, input: sign_request::Input) -> Result<pb::SignResponse, tonic::Status> {
    let request = pb::SignRequest { key: key.into(), input: Some(input), ..Default::default() };
    Ok(admin.crypto_service().sign(admin.authorized(request).await.unwrap()).await?.into_inner())
}

async fn verify(
    admin: &KeymeshClient,
    key: &str,
    version: u32,
    input: verify_request::Input,
    signature: &[u8],
) -> Result<bool, tonic::Status> {
    let request = pb::VerifyRequest {
        key: key.into(),
        key_version: version,
        input: Some(input),
        signature: signature.to_vec(),
        ..Default::default()
    };
    Ok(admin.crypto_service().verify(admin.authorized(request).await.unwrap()).await?.into_inner().valid)
}

async fn decrypt(
    admin: &KeymeshClient,
    key: &str,
    version: u32,
    ciphertext: Vec<u8>,
    aad: &[u8],
) -> Result<pb::DecryptResponse, tonic::Status> {
    let request = pb::DecryptRequest {
        key: key.into(),
        key_version: version,
        ciphertext,
        aad: aad.to_vec(),
        ..Default::default()
    };
    Ok(admin.crypto_service().decrypt(admin.authorized(request).await.unwrap()).await?.into_inner())
}

async fn mac(admin: &KeymeshClient, key: &str, message: &[u8]) -> Result<pb::GenerateMacResponse, tonic::Status> {
    let request = pb::GenerateMacRequest { key: key.into(), message: message.to_vec() };
    Ok(admin.crypto_service().generate_mac(admin.authorized(request).await.unwrap()).await?.into_inner())
}

async fn verify_mac(admin: &KeymeshClient, key: &str, version: u32, message: &[u8], tag: Vec<u8>) -> bool {
    let request = pb::VerifyMacRequest { key: key.into(), key_version: version, message: message.to_vec(), mac: tag };
    admin.crypto_service().verify_mac(admin.authorized(request).await.unwrap()).await.unwrap().into_inner().valid
}

fn sha(algorithm: pb::Algorithm, message: &[u8]) -> Vec<u8> {
    use keymesh_crypto::primitives::{DigestAlgorithm, digest};
    let hash =
        if algorithm == pb::Algorithm::EcdsaP384Sha384 { DigestAlgorithm::Sha384 } else { DigestAlgorithm::Sha256 };
    digest(hash, message).unwrap()
}

/// Verifies with the `openssl` command line, as an outside party would.
fn openssl_verifies(algorithm: pb::Algorithm, pem: &std::path::Path, message: &[u8], signature: &[u8]) -> bool {
    let dir = tempfile::tempdir().unwrap();
    let (msg, sig) = (dir.path().join("msg"), dir.path().join("sig"));
    std::fs::write(&msg, message).unwrap();
    std::fs::write(&sig, signature).unwrap();
    let mut command = std::process::Command::new("openssl");
    match algorithm {
        pb::Algorithm::Ed25519 => {
            command.args(["pkeyutl", "-verify", "-pubin", "-inkey"]).arg(pem).args(["-rawin", "-in"]).arg(&msg);
            command.arg("-sigfile").arg(&sig);
        }
        _ => {
            let hash = if algorithm == pb::Algorithm::EcdsaP384Sha384 { "-sha384" } else { "-sha256" };
            command.args(["dgst", hash, "-verify"]).arg(pem).arg("-signature").arg(&sig);
            if script_name(algorithm).starts_with("rsa-pss") {
                command.args(["-sigopt", "rsa_padding_mode:pss", "-sigopt", "rsa_pss_saltlen:32"]);
            }
            command.arg(&msg);
        }
    }
    let output = command.output().expect("openssl is required for this test");
    output.status.success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signatures_cross_check_with_openssl_and_python_both_ways() {
    assert_eq!(asym(&["selftest"]), "ok", "the independent implementation checks itself first");
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let message = b"release v1.4.2: sha256 of the tarball";
    for algorithm in SIGNING {
        let alg = script_name(algorithm);
        let has_digest = algorithm != pb::Algorithm::Ed25519;

        // Made by keymesh, verified outside from the exported public key.
        let name = format!("sign-{alg}");
        let key = create_key(&admin, &name, pb::KeyPurpose::Sign, algorithm, pb::KeyOrigin::Generated).await.unwrap();
        assert_eq!((key.purpose, key.algorithm), (pb::KeyPurpose::Sign as i32, algorithm as i32));
        let public = public_key(&admin, &name, 0).await.unwrap();
        assert_eq!((public.version, public.algorithm), (1, algorithm as i32));
        assert!(public.public_key_pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{alg}: SPKI PEM");
        let pem = pem_file(&public);
        let signed = sign(&admin, &name, sign_request::Input::Message(message.to_vec())).await.unwrap();
        assert_eq!((signed.key_version, signed.algorithm), (1, algorithm as i32));
        assert!(openssl_verifies(algorithm, pem.path(), message, &signed.signature), "{alg}: openssl verifies");
        assert!(!openssl_verifies(algorithm, pem.path(), b"another release", &signed.signature), "{alg}: openssl");
        let outside = |input: (&str, &[u8]), signature: &[u8]| {
            asym(&[
                "verify",
                "--public-key",
                pem.path().to_str().unwrap(),
                "--algorithm",
                alg,
                input.0,
                &hex(input.1),
                "--signature-hex",
                &hex(signature),
            ])
        };
        assert_eq!(outside(("--message-hex", message), &signed.signature), "valid", "{alg}: Python verifies");
        assert_eq!(outside(("--message-hex", b"tampered"), &signed.signature), "invalid", "{alg}");
        assert!(
            verify(&admin, &name, 0, verify_request::Input::Message(message.to_vec()), &signed.signature)
                .await
                .unwrap()
        );
        assert!(
            !verify(&admin, &name, 0, verify_request::Input::Message(b"x".to_vec()), &signed.signature).await.unwrap()
        );
        if has_digest {
            // A signature over a digest the caller made is the signature of the message.
            let digest = sha(algorithm, message);
            let over_digest = sign(&admin, &name, sign_request::Input::Digest(digest.clone())).await.unwrap();
            assert!(openssl_verifies(algorithm, pem.path(), message, &over_digest.signature), "{alg}: digest");
            assert_eq!(outside(("--digest-hex", &digest), &over_digest.signature), "valid", "{alg}: digest");
            let short = sign(&admin, &name, sign_request::Input::Digest(digest[1..].to_vec())).await.err().unwrap();
            assert_eq!(short.code(), Code::InvalidArgument, "{alg}: {short:?}");
            assert!(short.message().contains("digest"), "{short:?}");
        } else {
            let refused = sign(&admin, &name, sign_request::Input::Digest(vec![0; 32])).await.err().unwrap();
            assert_eq!(refused.code(), Code::InvalidArgument);
            assert!(refused.message().contains("Ed25519 signs messages, not digests"), "{refused:?}");
        }

        // Made outside with a key imported into keymesh, verified in keymesh; and keymesh's verify with it.
        let generated = asym(&["genkey", "--algorithm", alg]);
        let (pkcs8, spki) = generated.split_once('\n').unwrap();
        let imported = format!("byok-{alg}");
        create_key(&admin, &imported, pb::KeyPurpose::Sign, algorithm, pb::KeyOrigin::External).await.unwrap();
        import(&admin, &imported, &unhex(pkcs8.trim())).await.unwrap();
        let exported = public_key(&admin, &imported, 0).await.unwrap();
        assert_eq!(hex(&exported.public_key_der), spki.trim(), "{alg}: the imported key's public half");
        let outside_signature = unhex(&asym(&[
            "sign",
            "--private-key-hex",
            pkcs8.trim(),
            "--algorithm",
            alg,
            "--message-hex",
            &hex(message),
        ]));
        let input = verify_request::Input::Message(message.to_vec());
        assert!(
            verify(&admin, &imported, 0, input.clone(), &outside_signature).await.unwrap(),
            "{alg}: keymesh verifies"
        );
        let mut tampered = outside_signature.clone();
        tampered[3] ^= 0x10;
        assert!(!verify(&admin, &imported, 0, input, &tampered).await.unwrap(), "{alg}: tampered");
        let signed = sign(&admin, &imported, sign_request::Input::Message(message.to_vec())).await.unwrap();
        let exported_pem = pem_file(&exported);
        assert!(openssl_verifies(algorithm, exported_pem.path(), message, &signed.signature), "{alg}: imported");
    }

    // Rotation: new signatures use the new version; the old version still verifies what it signed.
    let name = "sign-ecdsa-p256-sha256";
    let before = sign(&admin, name, sign_request::Input::Message(message.to_vec())).await.unwrap();
    let request = pb::RotateKeyRequest { key: name.into() };
    admin.key_service().rotate_key(admin.authorized(request).await.unwrap()).await.unwrap();
    // crypto-service hears of the rotation over WatchKeyChanges a few milliseconds after it returns (README, Key
    // service); a signature in that window may still come from version 1.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let after = loop {
        let signed = sign(&admin, name, sign_request::Input::Message(message.to_vec())).await.unwrap();
        if signed.key_version == 2 || std::time::Instant::now() > deadline {
            break signed;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!((before.key_version, after.key_version), (1, 2));
    let input = || verify_request::Input::Message(message.to_vec());
    assert!(verify(&admin, name, 1, input(), &before.signature).await.unwrap());
    assert!(!verify(&admin, name, 0, input(), &before.signature).await.unwrap(), "the primary is version 2");
    let v1 = public_key(&admin, name, 1).await.unwrap();
    assert!(openssl_verifies(pb::Algorithm::EcdsaP256Sha256, pem_file(&v1).path(), message, &before.signature));
    assert_ne!(v1.public_key_der, public_key(&admin, name, 2).await.unwrap().public_key_der);

    // An imported key of another kind is refused, saying what was expected and what came.
    let wrong = asym(&["genkey", "--algorithm", "ecdsa-p256-sha256"]);
    create_key(&admin, "byok-p384", pb::KeyPurpose::Sign, pb::Algorithm::EcdsaP384Sha384, pb::KeyOrigin::External)
        .await
        .unwrap();
    let refused = import(&admin, "byok-p384", &unhex(wrong.split_once('\n').unwrap().0)).await.err().unwrap();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("expected a EC P-384 key, got EC P-256"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_encrypts_to_exported_public_keys_and_keymesh_decrypts() {
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    for algorithm in [
        pb::Algorithm::HpkeX25519Sha256Aes256Gcm,
        pb::Algorithm::RsaOaep2048Sha256,
        pb::Algorithm::RsaOaep3072Sha256,
        pb::Algorithm::RsaOaep4096Sha256,
    ] {
        let alg = script_name(algorithm);
        let name = format!("enc-{alg}");
        create_key(&admin, &name, pb::KeyPurpose::Encrypt, algorithm, pb::KeyOrigin::Generated).await.unwrap();
        let public = public_key(&admin, &name, 0).await.unwrap();
        let pem = pem_file(&public);
        let secret = b"a data key: 0123456789abcdef0123456789abcdef";
        for aad in [&b""[..], b"order=8812"] {
            let ciphertext = outside_encrypt(pem.path(), alg, secret, aad);
            let opened = decrypt(&admin, &name, 1, ciphertext.clone(), aad).await.unwrap();
            assert_eq!((opened.plaintext.as_slice(), opened.key_version), (&secret[..], 1), "{alg}");
            assert_eq!(opened.algorithm, algorithm as i32);
            // Any other AAD, or a flipped bit, is the one opaque refusal.
            let refused = decrypt(&admin, &name, 1, ciphertext.clone(), b"order=8813").await.err().unwrap();
            assert_eq!((refused.code(), refused.message()), (Code::InvalidArgument, "decryption failed"), "{alg}");
            let mut flipped = ciphertext.clone();
            flipped[ciphertext.len() / 2] ^= 1;
            assert_eq!(
                decrypt(&admin, &name, 1, flipped, aad).await.err().unwrap().message(),
                "decryption failed",
                "{alg}"
            );
        }
        // Without the key named, a ciphertext that is not keymesh's cannot be opened.
        let ciphertext = outside_encrypt(pem.path(), alg, secret, b"");
        let request = pb::DecryptRequest { ciphertext: ciphertext.clone(), ..Default::default() };
        let refused = admin.crypto_service().decrypt(admin.authorized(request).await.unwrap()).await.err().unwrap();
        assert_eq!(refused.message(), "decryption failed");
        // An encryption context has no place in these ciphertexts: refused, pointing to aad.
        let request = pb::DecryptRequest {
            key: name.clone(),
            ciphertext,
            encryption_context: [("tenant".to_owned(), "acme".to_owned())].into(),
            ..Default::default()
        };
        let refused = admin.crypto_service().decrypt(admin.authorized(request).await.unwrap()).await.err().unwrap();
        assert_eq!(refused.code(), Code::InvalidArgument);
        assert!(refused.message().contains("bind only aad"), "{refused:?}");
        // keymesh's own Encrypt with the key is the same public-key encryption.
        let request = pb::EncryptRequest { key: name.clone(), plaintext: secret.to_vec(), ..Default::default() };
        let sealed =
            admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await.unwrap().into_inner();
        assert_eq!(sealed.algorithm, algorithm as i32);
        assert_eq!(decrypt(&admin, &name, 0, sealed.ciphertext, b"").await.unwrap().plaintext, secret);
    }

    // RSA-OAEP's size limit is stated, with what to do instead.
    let request =
        pb::EncryptRequest { key: "enc-rsa-oaep-2048-sha256".into(), plaintext: vec![7; 191], ..Default::default() };
    let refused = admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await.err().unwrap();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("190-byte limit"), "{refused:?}");

    // Rotation: what was encrypted to version 1's public key still opens with version 1 named.
    let name = "enc-hpke-x25519-sha256-aes256gcm";
    let v1 = pem_file(&public_key(&admin, name, 1).await.unwrap());
    let request = pb::RotateKeyRequest { key: name.into() };
    admin.key_service().rotate_key(admin.authorized(request).await.unwrap()).await.unwrap();
    let hpke = script_name(pb::Algorithm::HpkeX25519Sha256Aes256Gcm);
    let ciphertext = outside_encrypt(v1.path(), hpke, &[0x00, 0xff], b"");
    assert_eq!(decrypt(&admin, name, 1, ciphertext.clone(), b"").await.unwrap().plaintext, [0x00, 0xff]);
    assert_eq!(decrypt(&admin, name, 0, ciphertext, b"").await.err().unwrap().message(), "decryption failed");

    // An imported HPKE key: keymesh encrypts, the key's owner decrypts outside with the private key.
    let generated = asym(&["genkey", "--algorithm", "hpke-x25519-sha256-aes256gcm"]);
    let (pkcs8, _) = generated.split_once('\n').unwrap();
    create_key(
        &admin,
        "byok-hpke",
        pb::KeyPurpose::Encrypt,
        pb::Algorithm::HpkeX25519Sha256Aes256Gcm,
        pb::KeyOrigin::External,
    )
    .await
    .unwrap();
    import(&admin, "byok-hpke", &unhex(pkcs8)).await.unwrap();
    let request = pb::EncryptRequest {
        key: "byok-hpke".into(),
        plaintext: b"for the key's owner".to_vec(),
        aad: b"v=1".to_vec(),
        ..Default::default()
    };
    let sealed = admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await.unwrap().into_inner();
    // What the key's owner opens outside with the private key (AAD "v=1").
    let owner_opens = |ciphertext: &[u8]| {
        unhex(&asym(&[
            "decrypt",
            "--private-key-hex",
            pkcs8,
            "--algorithm",
            "hpke-x25519-sha256-aes256gcm",
            "--ciphertext-hex",
            &hex(ciphertext),
            "--aad-hex",
            &hex(b"v=1"),
        ]))
    };
    assert_eq!(owner_opens(&sealed.ciphertext), b"for the key's owner");

    // A data key under a public-key key comes encrypted to the public key: the key's owner opens it outside.
    let request = pb::GenerateDataKeyRequest { key: "byok-hpke".into(), aad: b"v=1".to_vec(), ..Default::default() };
    let data_key =
        admin.crypto_service().generate_data_key(admin.authorized(request).await.unwrap()).await.unwrap().into_inner();
    assert_eq!(owner_opens(&data_key.ciphertext), data_key.plaintext);
    assert_eq!(data_key.plaintext.len(), 32);
    // Streams need a symmetric key.
    let request = pb::EncryptStreamRequest {
        message: Some(pb::encrypt_stream_request::Message::Init(pb::EncryptStreamInit {
            key: name.into(),
            ..Default::default()
        })),
    };
    let refused = admin
        .crypto_service()
        .encrypt_stream(admin.authorized(tokio_stream::iter([request])).await.unwrap())
        .await
        .err()
        .unwrap();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("needs a symmetric ENCRYPT key"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mac_keys_and_purpose_misuse() {
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    // An imported HMAC key gives exactly Python's tags, for both hashes.
    for (algorithm, name, len) in
        [(pb::Algorithm::HmacSha256, "hmac-sha256", 32usize), (pb::Algorithm::HmacSha512, "hmac-sha512", 64)]
    {
        let material: Vec<u8> = (0..len).map(|i| (i * 29 + 3) as u8).collect();
        create_key(&admin, name, pb::KeyPurpose::Mac, algorithm, pb::KeyOrigin::External).await.unwrap();
        import(&admin, name, &material).await.unwrap();
        let tag = mac(&admin, name, b"webhook body").await.unwrap();
        assert_eq!(tag.algorithm, algorithm as i32);
        let expected =
            asym(&["mac", "--algorithm", name, "--key-hex", &hex(&material), "--message-hex", &hex(b"webhook body")]);
        assert_eq!(hex(&tag.mac), expected, "{name}: the same tag as Python's HMAC");
        assert!(verify_mac(&admin, name, 0, b"webhook body", tag.mac.clone()).await);
        assert!(!verify_mac(&admin, name, 0, b"webhook bodY", tag.mac.clone()).await);
        assert!(
            !verify_mac(&admin, name, 0, b"webhook body", tag.mac[..16].to_vec()).await,
            "truncated tags are refused"
        );
    }
    // A generated key; after rotation old tags verify with their version named.
    create_key(&admin, "webhooks", pb::KeyPurpose::Mac, pb::Algorithm::Unspecified, pb::KeyOrigin::Generated)
        .await
        .unwrap();
    let old = mac(&admin, "webhooks", b"m").await.unwrap();
    assert_eq!(old.algorithm, pb::Algorithm::HmacSha256 as i32, "MAC keys default to HMAC-SHA256");
    let request = pb::RotateKeyRequest { key: "webhooks".into() };
    admin.key_service().rotate_key(admin.authorized(request).await.unwrap()).await.unwrap();
    assert!(verify_mac(&admin, "webhooks", 1, b"m", old.mac.clone()).await);
    assert!(!verify_mac(&admin, "webhooks", 0, b"m", old.mac).await);
    // Once crypto-service has heard of the rotation (a few milliseconds), new MACs use version 2.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while mac(&admin, "webhooks", b"m").await.unwrap().key_version != 2 {
        assert!(std::time::Instant::now() < deadline, "GenerateMac still uses version 1 after the rotation");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }

    // Every misuse is refused, saying which purpose the operation needs.
    create_key(&admin, "docs", pb::KeyPurpose::Encrypt, pb::Algorithm::Unspecified, pb::KeyOrigin::Generated)
        .await
        .unwrap();
    create_key(&admin, "signer", pb::KeyPurpose::Sign, pb::Algorithm::Unspecified, pb::KeyOrigin::Generated)
        .await
        .unwrap();
    let refused = sign(&admin, "docs", sign_request::Input::Message(b"x".to_vec())).await.err().unwrap();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("SIGN needs a SIGN key"), "{refused:?}");
    let refused = mac(&admin, "signer", b"x").await.err().unwrap();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("GENERATE_MAC needs a MAC key"), "{refused:?}");
    let request = pb::EncryptRequest { key: "signer".into(), plaintext: b"x".to_vec(), ..Default::default() };
    let refused = admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await.err().unwrap();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(refused.message().contains("ENCRYPT needs an ENCRYPT key"), "{refused:?}");
    let refused = public_key(&admin, "docs", 0).await.err().unwrap();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains("GET_PUBLIC_KEY needs a SIGN or KEM key, or an HPKE/RSA-OAEP ENCRYPT key"),
        "{refused:?}"
    );
    let refused = create_key(&admin, "bad", pb::KeyPurpose::Sign, pb::Algorithm::Aes256Gcm, pb::KeyOrigin::Generated)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    assert!(refused.message().contains("ALGORITHM_ED25519"), "lists what SIGN keys can use: {refused:?}");
    let default = public_key(&admin, "signer", 0).await.unwrap();
    assert_eq!(default.algorithm, pb::Algorithm::EcdsaP256Sha256 as i32, "SIGN keys default to ECDSA P-256");
}

//! Every symmetric mode through the real services: for each, a key is created with material imported through
//! ImportKeyVersion (keymesh never exports keys), keymesh encrypts with AAD and an encryption context, and an
//! independent implementation (`scripts/byok.py`, Python's `cryptography`, following only the documented
//! format) decrypts it; keymesh decrypts its own ciphertexts; a one-bit flip in any byte of a ciphertext is
//! refused; AES-256-CCM refuses more than 64 KiB with an INVALID_ARGUMENT that says what to do.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use integration_tests::{Mesh, byok, hex, import_material, unhex};
use keymesh_client::KeymeshClient;
use keymesh_crypto::SymmetricAlgorithm;
use keymesh_proto::algorithm::ToProto;
use keymesh_proto::v1 as pb;

/// Creates an EXTERNAL key of `algorithm` and imports `material` into it over RSA-OAEP-SHA256.
async fn import_key(admin: &KeymeshClient, name: &str, algorithm: SymmetricAlgorithm, material: &[u8]) {
    let mut service = admin.key_service();
    let request = pb::CreateKeyRequest {
        name: name.into(),
        purpose: pb::KeyPurpose::Encrypt as i32,
        origin: pb::KeyOrigin::External as i32,
        algorithm: algorithm.to_proto() as i32,
        ..Default::default()
    };
    service.create_key(admin.authorized(request).await.unwrap()).await.unwrap();
    let imported = import_material(admin, name, material, pb::WrappingAlgorithm::RsaOaepSha256).await.unwrap();
    assert_eq!(imported.key.unwrap().algorithm, algorithm.to_proto() as i32);
}

/// Creates generated ENCRYPT keys of the given algorithms.
async fn create_keys(admin: &KeymeshClient, keys: &[(&str, pb::Algorithm)]) {
    for (name, algorithm) in keys {
        let request = pb::CreateKeyRequest {
            name: (*name).into(),
            purpose: pb::KeyPurpose::Encrypt as i32,
            algorithm: *algorithm as i32,
            ..Default::default()
        };
        admin.key_service().create_key(admin.authorized(request).await.unwrap()).await.unwrap();
    }
}

async fn encrypt(admin: &KeymeshClient, key: &str, plaintext: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let request = pb::EncryptRequest {
        key: key.into(),
        plaintext: plaintext.to_vec(),
        aad: b"invoice-2291".to_vec(),
        encryption_context: [("tenant".to_owned(), "acme".to_owned())].into(),
        ..Default::default()
    };
    admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await.map(|r| r.into_inner().ciphertext)
}

async fn decrypt(admin: &KeymeshClient, ciphertext: &[u8]) -> Result<Vec<u8>, tonic::Status> {
    let request = pb::DecryptRequest {
        ciphertext: ciphertext.to_vec(),
        aad: b"invoice-2291".to_vec(),
        encryption_context: [("tenant".to_owned(), "acme".to_owned())].into(),
        ..Default::default()
    };
    admin.crypto_service().decrypt(admin.authorized(request).await.unwrap()).await.map(|r| r.into_inner().plaintext)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mode_round_trips_and_an_independent_implementation_decrypts() {
    // The independent implementation checks itself first (published vectors, tamper checks), so that a
    // failure below is keymesh's.
    let selftest = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/byok.py"))
        .arg("selftest")
        .output()
        .unwrap();
    assert!(selftest.status.success(), "byok.py selftest: {}", String::from_utf8_lossy(&selftest.stderr));
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    for (n, algorithm) in SymmetricAlgorithm::ALL.into_iter().enumerate() {
        let name = format!("mode-{}", algorithm.mode());
        let name = if algorithm == SymmetricAlgorithm::Aes128Gcm { format!("{name}-128") } else { name };
        let material: Vec<u8> = (0..algorithm.key_len()).map(|i| (i * 7 + n * 13) as u8).collect();
        import_key(&admin, &name, algorithm, &material).await;
        for size in [1usize, 15, 16, 17, 1000, 65_536] {
            let plaintext: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
            let ciphertext = encrypt(&admin, &name, &plaintext).await.unwrap_or_else(|e| panic!("{name} {size}: {e}"));
            assert_eq!(decrypt(&admin, &ciphertext).await.unwrap(), plaintext, "{name} {size}: keymesh decrypts");
            if size <= 1000 {
                let opened = byok(&[
                    "open",
                    "--key-hex",
                    &hex(&material),
                    "--ciphertext-hex",
                    &hex(&ciphertext),
                    "--aad-hex",
                    &hex(b"invoice-2291"),
                    "--context-json",
                    r#"{"tenant":"acme"}"#,
                ]);
                assert_eq!(unhex(&opened), plaintext, "{name} {size}: the independent implementation decrypts");
            }
        }
        // A one-bit flip in any byte, header included, is refused with the one opaque error.
        let ciphertext = encrypt(&admin, &name, b"flip me").await.unwrap();
        for i in 0..ciphertext.len() {
            let mut flipped = ciphertext.clone();
            flipped[i] ^= 0x01;
            let refused = decrypt(&admin, &flipped).await.expect_err(&format!("{name}: byte {i} flipped"));
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{name}: byte {i}: {refused:?}");
        }
        // Another AAD is refused too.
        let request = pb::DecryptRequest { ciphertext: ciphertext.clone(), ..Default::default() };
        let refused = admin.crypto_service().decrypt(admin.authorized(request).await.unwrap()).await;
        assert!(refused.is_err(), "{name}: decrypted without its AAD");
    }

    // CCM's limit is 64 KiB: larger input is refused up front, saying what to do instead.
    let refused = encrypt(&admin, "mode-ccm", &vec![0u8; 65_537]).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(refused.message().contains("65536") && refused.message().contains("AES-256-GCM"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hash_and_random() {
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let hash = |algorithm: pb::HashAlgorithm, data: &[u8]| {
        let admin = &admin;
        let data = data.to_vec();
        async move {
            let request = admin.authorized(pb::HashRequest { algorithm: algorithm as i32, data }).await.unwrap();
            admin.crypto_service().hash(request).await.map(|r| hex(&r.into_inner().digest))
        }
    };
    // FIPS 180-4 / FIPS 202 / RFC 7693 digests of "abc".
    let expected = [
        (pb::HashAlgorithm::Sha256, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (
            pb::HashAlgorithm::Sha384,
            "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7",
        ),
        (
            pb::HashAlgorithm::Sha512,
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd\
             454d4423643ce80e2a9ac94fa54ca49f",
        ),
        (pb::HashAlgorithm::Sha3256, "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"),
        (
            pb::HashAlgorithm::Blake2b512,
            "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc95\
             18d38aa8dbf1925ab92386edd4009923",
        ),
    ];
    for (algorithm, digest) in expected {
        assert_eq!(hash(algorithm, b"abc").await.unwrap(), digest, "{algorithm:?}");
    }
    let refused = hash(pb::HashAlgorithm::Unspecified, b"abc").await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);

    let random = |num_bytes: u32| {
        let admin = &admin;
        async move {
            let request = admin.authorized(pb::GenerateRandomRequest { num_bytes }).await.unwrap();
            admin.crypto_service().generate_random(request).await.map(|r| r.into_inner().random)
        }
    };
    let (a, b) = (random(32).await.unwrap(), random(32).await.unwrap());
    assert_eq!((a.len(), b.len()), (32, 32));
    assert_ne!(a, b);
    assert_eq!(random(1024).await.unwrap().len(), 1024);
    for wrong in [0, 1025] {
        let refused = random(wrong).await.unwrap_err();
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{wrong}: {refused:?}");
        assert!(refused.message().contains("1 to 1024"), "{refused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_give_a_result_or_an_error_per_item_in_order() {
    use pb::{decrypt_item_result::Result as Opened, encrypt_item_result::Result as Sealed};
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    create_keys(&admin, &[("batch-a", pb::Algorithm::Aes256Gcm), ("batch-b", pb::Algorithm::Chacha20Poly1305)]).await;
    let item = |key: &str, plaintext: &[u8], aad: &[u8]| pb::EncryptItem {
        key: key.into(),
        plaintext: plaintext.to_vec(),
        aad: aad.to_vec(),
        ..Default::default()
    };
    let request = pb::EncryptRequest {
        key: "batch-a".into(),
        batch: vec![
            item("", b"first, under the request's key", b""),
            item("batch-b", b"second", b"order-2"),
            item("no-such-key", b"third", b""),
            item("batch-a", b"fourth", b""),
        ],
        ..Default::default()
    };
    let sealed = admin.crypto_service().encrypt(admin.authorized(request).await.unwrap()).await.unwrap().into_inner();
    assert_eq!(sealed.batch.len(), 4);
    let ciphertext = |i: usize| match &sealed.batch[i].result {
        Some(Sealed::Ciphertext(c)) => c.clone(),
        other => panic!("item {i}: {other:?}"),
    };
    match &sealed.batch[2].result {
        Some(Sealed::Error(e)) => assert_eq!(e.code, tonic::Code::NotFound as i32, "{e:?}"),
        other => panic!("item 2 should fail: {other:?}"),
    }
    let key_b = admin.get_key("batch-b").await.unwrap();
    assert_eq!(sealed.batch[1].key_id, key_b.key_id);

    let open =
        |ciphertext: Vec<u8>, aad: &[u8]| pb::DecryptItem { ciphertext, aad: aad.to_vec(), ..Default::default() };
    let request = pb::DecryptRequest {
        batch: vec![
            open(ciphertext(3), b""),
            open(ciphertext(1), b"order-2"),
            open(b"not a ciphertext".to_vec(), b""),
            open(ciphertext(1), b"another aad"),
            open(ciphertext(0), b""),
        ],
        ..Default::default()
    };
    let opened = admin.crypto_service().decrypt(admin.authorized(request).await.unwrap()).await.unwrap().into_inner();
    let outcomes: Vec<Result<Vec<u8>, i32>> = opened
        .batch
        .iter()
        .map(|r| match &r.result {
            Some(Opened::Plaintext(p)) => Ok(p.clone()),
            Some(Opened::Error(e)) => Err(e.code),
            None => panic!("an item without a result"),
        })
        .collect();
    let invalid = tonic::Code::InvalidArgument as i32;
    assert_eq!(
        outcomes,
        [
            Ok(b"fourth".to_vec()),
            Ok(b"second".to_vec()),
            Err(invalid),
            Err(invalid),
            Ok(b"first, under the request's key".to_vec())
        ]
    );

    // Malformed batches fail as a whole: both forms at once, or too many items.
    let both = pb::EncryptRequest {
        key: "batch-a".into(),
        plaintext: b"single".to_vec(),
        batch: vec![item("", b"x", b"")],
        ..Default::default()
    };
    let refused = admin.crypto_service().encrypt(admin.authorized(both).await.unwrap()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("not both"), "{refused:?}");
    let too_many = pb::EncryptRequest {
        key: "batch-a".into(),
        batch: (0..1001).map(|_| item("", b"x", b"")).collect(),
        ..Default::default()
    };
    let refused = admin.crypto_service().encrypt(admin.authorized(too_many).await.unwrap()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("1000"), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn re_encrypt_moves_ciphertexts_forward_with_their_binding() {
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    create_keys(&admin, &[("re-src", pb::Algorithm::Aes256Gcm), ("re-dst", pb::Algorithm::Xchacha20Poly1305)]).await;
    let old = encrypt(&admin, "re-src", b"moved forward").await.unwrap();
    let rotate = pb::RotateKeyRequest { key: "re-src".into() };
    admin.key_service().rotate_key(admin.authorized(rotate).await.unwrap()).await.unwrap();
    let re_encrypt = |request: pb::ReEncryptRequest| {
        let admin = &admin;
        async move { admin.crypto_service().re_encrypt(admin.authorized(request).await.unwrap()).await }
    };
    let context = || [("tenant".to_owned(), "acme".to_owned())].into();

    // To the same key's newest version; AAD and context carried over.
    let moved = re_encrypt(pb::ReEncryptRequest {
        ciphertext: old.clone(),
        source_aad: b"invoice-2291".to_vec(),
        source_encryption_context: context(),
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!((moved.source_key_version, moved.key_version), (1, 2));
    assert_eq!(moved.key_id, moved.source_key_id);
    assert_eq!(decrypt(&admin, &moved.ciphertext).await.unwrap(), b"moved forward");

    // To another key of another algorithm, with a new binding.
    let elsewhere = re_encrypt(pb::ReEncryptRequest {
        ciphertext: old.clone(),
        source_aad: b"invoice-2291".to_vec(),
        source_encryption_context: context(),
        destination_key: "re-dst".into(),
        destination_aad: b"archive".to_vec(),
        replace_aad: true,
        ..Default::default()
    })
    .await
    .unwrap()
    .into_inner();
    assert_eq!(elsewhere.key_id, admin.get_key("re-dst").await.unwrap().key_id);
    let request =
        pb::DecryptRequest { ciphertext: elsewhere.ciphertext, aad: b"archive".to_vec(), ..Default::default() };
    let opened = admin.crypto_service().decrypt(admin.authorized(request).await.unwrap()).await.unwrap();
    assert_eq!(opened.into_inner().plaintext, b"moved forward");

    // The wrong source binding is refused like any decrypt, and nothing is sealed.
    let refused = re_encrypt(pb::ReEncryptRequest { ciphertext: old, ..Default::default() }).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert_eq!(refused.message(), "decryption failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_keys_come_sealed_as_ciphertexts_that_decrypt_opens() {
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    create_keys(&admin, &[("envelope", pb::Algorithm::Aes256Gcm)]).await;
    let context = || [("tenant".to_owned(), "acme".to_owned())].into();

    let request = pb::GenerateDataKeyRequest {
        key: "envelope".into(),
        aad: b"invoice-2291".to_vec(),
        encryption_context: context(),
        ..Default::default()
    };
    let data_key =
        admin.crypto_service().generate_data_key(admin.authorized(request).await.unwrap()).await.unwrap().into_inner();
    assert_eq!(data_key.plaintext.len(), 32, "AES-256 by default");
    assert_eq!(data_key.key_id, admin.get_key("envelope").await.unwrap().key_id);
    // The sealed data key is an ordinary ciphertext: Decrypt opens it with the same binding.
    assert_eq!(decrypt(&admin, &data_key.ciphertext).await.unwrap(), data_key.plaintext);

    let request = pb::GenerateDataKeyWithoutPlaintextRequest {
        key: "envelope".into(),
        key_spec: pb::DataKeySpec::Aes128 as i32,
        aad: b"invoice-2291".to_vec(),
        encryption_context: context(),
    };
    let sealed_only = admin
        .crypto_service()
        .generate_data_key_without_plaintext(admin.authorized(request).await.unwrap())
        .await
        .unwrap()
        .into_inner();
    let opened = decrypt(&admin, &sealed_only.ciphertext).await.unwrap();
    assert_eq!(opened.len(), 16);
    assert_ne!(opened, data_key.plaintext[..16]);

    let request = pb::GenerateDataKeyRequest { key: "envelope".into(), key_spec: 9, ..Default::default() };
    let refused = data_key_refusal(&admin, request).await;
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("DATA_KEY_SPEC_AES_256"), "{refused:?}");
    let request = pb::GenerateDataKeyRequest { key: "no-such-key".into(), ..Default::default() };
    assert_eq!(data_key_refusal(&admin, request).await.code(), tonic::Code::NotFound);
}

/// The status of a GenerateDataKey call that must fail (its response has no Debug: it carries a key).
async fn data_key_refusal(admin: &KeymeshClient, request: pb::GenerateDataKeyRequest) -> tonic::Status {
    match admin.crypto_service().generate_data_key(admin.authorized(request).await.unwrap()).await {
        Ok(_) => panic!("GenerateDataKey should have been refused"),
        Err(status) => status,
    }
}

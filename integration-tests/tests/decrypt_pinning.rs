//! Decrypt's `key` pins the key that actually opens the ciphertext, not the name its header claims (issue 20,
//! item 1). Whoever knows one key's material in a tenant (an imported key, say) can write any header they
//! like: a ciphertext sealed under `mine` whose header names `payments` must not pass a pin on `payments`,
//! and is refused with the generic "decryption failed" even without a pin, since keymesh never writes a
//! header naming another key than the one that sealed it. The same holds for batch items and ReEncrypt's
//! source, which open ciphertexts the same way.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;

use integration_tests::{Mesh, create_key, import_material, key_request};
use keymesh_client::KeymeshClient;
use keymesh_crypto::{
    SecretKey, SymmetricAlgorithm,
    ciphertext::{self, Binding, KeyRef, SealRequest},
};
use keymesh_proto::v1 as pb;
use tonic::Code;

const MATERIAL: [u8; 32] = [7; 32];

/// A v3 ciphertext sealed outside keymesh with `MATERIAL`, its header naming `key_name` and `key_ref`.
fn forge(key_name: &str, key_ref: &KeyRef, plaintext: &[u8]) -> Vec<u8> {
    let empty = BTreeMap::new();
    let request = SealRequest {
        key_name,
        key_ref,
        algorithm: SymmetricAlgorithm::Aes256Gcm,
        binding: Binding { aad: b"", context: Some(&empty) },
    };
    ciphertext::seal(&SecretKey::from_bytes(MATERIAL.to_vec()), &request, plaintext).unwrap()
}

async fn decrypt(admin: &KeymeshClient, ciphertext: &[u8], pin: &str) -> Result<Vec<u8>, tonic::Status> {
    let request = pb::DecryptRequest { ciphertext: ciphertext.to_vec(), key: pin.into(), ..Default::default() };
    admin.crypto_service().decrypt(admin.authorized(request).await.unwrap()).await.map(|r| r.into_inner().plaintext)
}

fn assert_decryption_failed(result: Result<Vec<u8>, tonic::Status>, what: &str) {
    match result {
        Ok(plaintext) => panic!("{what}: returned plaintext {:?}", String::from_utf8_lossy(&plaintext)),
        Err(status) => {
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            assert_eq!(status.message(), "decryption failed", "{what}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pin_holds_against_the_key_that_opens_the_ciphertext() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    create_key(&admin, key_request("payments", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm)).await.unwrap();
    let mine = pb::CreateKeyRequest {
        name: "mine".into(),
        purpose: pb::KeyPurpose::Encrypt as i32,
        origin: pb::KeyOrigin::External as i32,
        algorithm: pb::Algorithm::Aes256Gcm as i32,
        ..Default::default()
    };
    create_key(&admin, mine).await.unwrap();
    let imported = import_material(&admin, "mine", &MATERIAL, pb::WrappingAlgorithm::RsaOaepSha256).await.unwrap();
    let key = imported.key.unwrap();
    let mine_ref = KeyRef { key_id: key.key_id.clone(), version: key.primary_version };

    // Control: a header that names the key that opens it decrypts, pinned by name, by id, or not at all, and
    // a pin on another key is the documented context mismatch.
    let honest = forge("mine", &mine_ref, b"honest");
    for pin in ["", "mine", key.key_id.as_str()] {
        assert_eq!(decrypt(&admin, &honest, pin).await.unwrap(), b"honest", "pin {pin:?}");
    }
    let mismatch = decrypt(&admin, &honest, "payments").await.unwrap_err();
    assert_eq!(mismatch.code(), Code::InvalidArgument);
    assert_ne!(mismatch.message(), "decryption failed", "a pin on another key names the mismatch");

    // The forgery: sealed under mine's material, its header claiming "payments".
    let forged = forge("payments", &mine_ref, b"forged");
    assert_decryption_failed(decrypt(&admin, &forged, "payments").await, "Decrypt pinned on payments");
    assert_decryption_failed(decrypt(&admin, &forged, "").await, "Decrypt without a pin");
    assert_decryption_failed(decrypt(&admin, &forged, &key.key_id).await, "Decrypt pinned on mine's id");

    // A batch item and ReEncrypt's source open it the same way.
    let batch = pb::DecryptRequest {
        batch: vec![pb::DecryptItem { ciphertext: forged.clone(), key: "payments".into(), ..Default::default() }],
        ..Default::default()
    };
    let items =
        admin.crypto_service().decrypt(admin.authorized(batch).await.unwrap()).await.unwrap().into_inner().batch;
    match &items[0].result {
        Some(pb::decrypt_item_result::Result::Error(error)) => assert_eq!(error.message, "decryption failed"),
        _ => panic!("the forged batch item was opened"),
    }
    let re_encrypt =
        pb::ReEncryptRequest { ciphertext: forged.clone(), destination_key: "payments".into(), ..Default::default() };
    let refused = admin.crypto_service().re_encrypt(admin.authorized(re_encrypt).await.unwrap()).await.unwrap_err();
    assert_eq!(refused.message(), "decryption failed");
}

/// A version-1 ciphertext as its writers made it: `{"v":1,"ctx":…,"kid":…,"alg":…,"nonce":…}`, sealed over
/// the length prefix, the header and an empty binding.
fn legacy_v1(key_name: &str, key_ref: &KeyRef, plaintext: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let nonce = [5u8; 12];
    let header = format!(
        r#"{{"v":1,"ctx":"{key_name}","kid":"{}","alg":"AES-256-GCM","nonce":"{}"}}"#,
        key_ref.to_kid(),
        base64::engine::general_purpose::STANDARD.encode(nonce)
    );
    let mut ciphertext = (header.len() as u16).to_be_bytes().to_vec();
    ciphertext.extend_from_slice(header.as_bytes());
    // The empty binding: an 8-byte AAD length and a 4-byte context count, both zero.
    let mut associated = ciphertext.clone();
    associated.extend_from_slice(&[0u8; 12]);
    let body = SymmetricAlgorithm::Aes256Gcm
        .seal(&SecretKey::from_bytes(MATERIAL.to_vec()), &nonce, &associated, plaintext)
        .unwrap();
    ciphertext.extend_from_slice(&body);
    ciphertext
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_1_ciphertext_that_names_no_key_opens_by_its_key_id() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let legacy = pb::CreateKeyRequest {
        name: "legacy".into(),
        purpose: pb::KeyPurpose::Encrypt as i32,
        origin: pb::KeyOrigin::External as i32,
        algorithm: pb::Algorithm::Aes256Gcm as i32,
        ..Default::default()
    };
    create_key(&admin, legacy).await.unwrap();
    let imported = import_material(&admin, "legacy", &MATERIAL, pb::WrappingAlgorithm::RsaOaepSha256).await.unwrap();
    let key = imported.key.unwrap();
    let key_ref = KeyRef { key_id: key.key_id.clone(), version: key.primary_version };
    for name in ["legacy", ""] {
        let sealed = legacy_v1(name, &key_ref, b"from v1");
        for pin in ["", "legacy", key.key_id.as_str()] {
            let opened = decrypt(&admin, &sealed, pin).await;
            assert_eq!(opened.as_deref().ok(), Some(&b"from v1"[..]), "ctx {name:?}, pin {pin:?}: {opened:?}");
        }
    }
    // The pin of a v1 ciphertext that names no key holds against the key its id opens.
    create_key(&admin, key_request("payments", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm)).await.unwrap();
    let mismatch = decrypt(&admin, &legacy_v1("", &key_ref, b"x"), "payments").await.unwrap_err();
    assert_eq!(mismatch.code(), Code::InvalidArgument);
    assert!(mismatch.message().starts_with("context mismatch"), "{mismatch:?}");
    assert_decryption_failed(
        decrypt(&admin, &legacy_v1("payments", &key_ref, b"x"), "").await,
        "v1 naming another key",
    );
}

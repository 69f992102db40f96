//! A malformed identifier is the caller's mistake, never an internal error (issue 20, item 4). A key name of
//! 200 characters or with a control character in Encrypt, and a ciphertext whose header's `kid` has a control
//! character or 129 characters in Decrypt, answered INTERNAL: crypto-service forwarded them to key-service and
//! relayed its INVALID_ARGUMENT as an internal failure. Now every key reference is checked where it enters
//! (one validator per kind of identifier, shared by the services): a request field is INVALID_ARGUMENT naming
//! the field, and anything inside a ciphertext is the generic "decryption failed".

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::BTreeMap;

use integration_tests::{Mesh, create_key, key_request};
use keymesh_client::KeymeshClient;
use keymesh_crypto::{
    SecretKey, SymmetricAlgorithm,
    ciphertext::{self, Binding, KeyRef, SealRequest},
};
use keymesh_proto::v1 as pb;
use tonic::Code;

/// Key references no service accepts.
fn malformed_references() -> Vec<String> {
    vec![
        "a".repeat(200),
        "a".repeat(129),
        "bad\u{7}name".into(),
        "line\nbreak".into(),
        "tab\there".into(),
        "nul\u{0}".into(),
        "k_\u{1}".into(),
        format!("k_{}", "0".repeat(200)),
        "sp ace".into(),
        "ключ".into(),
    ]
}

fn assert_names_field(result: Result<impl Sized, tonic::Status>, field: &str, what: &str) {
    let Err(status) = result else { panic!("{what}: accepted") };
    assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
    assert!(
        status.message().starts_with(&format!("{field}: ")),
        "{what}: {:?} does not name {field}",
        status.message()
    );
}

async fn authorized<T>(admin: &KeymeshClient, message: T) -> tonic::Request<T> {
    admin.authorized(message).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_key_references_in_requests_name_the_field() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    create_key(&admin, key_request("payments", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm)).await.unwrap();
    let sealed = admin.encrypt("payments", b"hello".to_vec(), Vec::new()).await.unwrap();
    let (mut crypto, mut keys) = (admin.crypto_service(), admin.key_service());

    for bad in malformed_references() {
        let what = |rpc: &str| format!("{rpc} with key {bad:?}");
        let encrypt = pb::EncryptRequest { key: bad.clone(), plaintext: b"x".to_vec(), ..Default::default() };
        assert_names_field(crypto.encrypt(authorized(&admin, encrypt).await).await, "key", &what("Encrypt"));
        let data_key = pb::GenerateDataKeyRequest { key: bad.clone(), ..Default::default() };
        assert_names_field(
            crypto.generate_data_key(authorized(&admin, data_key).await).await,
            "key",
            &what("GenerateDataKey"),
        );
        let mac = pb::GenerateMacRequest { key: bad.clone(), message: b"m".to_vec() };
        assert_names_field(crypto.generate_mac(authorized(&admin, mac).await).await, "key", &what("GenerateMac"));
        let sign = pb::SignRequest {
            key: bad.clone(),
            input: Some(pb::sign_request::Input::Message(b"m".to_vec())),
            ..Default::default()
        };
        assert_names_field(crypto.sign(authorized(&admin, sign).await).await, "key", &what("Sign"));
        let re_encrypt =
            pb::ReEncryptRequest { ciphertext: sealed.clone(), destination_key: bad.clone(), ..Default::default() };
        assert_names_field(
            crypto.re_encrypt(authorized(&admin, re_encrypt).await).await,
            "destination_key",
            &what("ReEncrypt"),
        );
        let get = pb::GetKeyRequest { key: bad.clone() };
        assert_names_field(keys.get_key(authorized(&admin, get).await).await, "key", &what("GetKey"));
        let rotate = pb::RotateKeyRequest { key: bad.clone() };
        assert_names_field(keys.rotate_key(authorized(&admin, rotate).await).await, "key", &what("RotateKey"));
        let batch = pb::EncryptRequest {
            batch: vec![pb::EncryptItem { key: bad.clone(), plaintext: b"x".to_vec(), ..Default::default() }],
            ..Default::default()
        };
        let items = crypto.encrypt(authorized(&admin, batch).await).await.unwrap().into_inner().batch;
        match &items[0].result {
            Some(pb::encrypt_item_result::Result::Error(e)) => {
                assert_eq!(e.code, Code::InvalidArgument as i32, "{}: {e:?}", what("an Encrypt batch item"));
                assert!(e.message.starts_with("key: "), "{}: {:?}", what("an Encrypt batch item"), e.message);
            }
            _ => panic!("{}: accepted", what("an Encrypt batch item")),
        }
    }
}

/// A v3 ciphertext sealed outside keymesh whose header says whatever the forger wants.
fn forge(key_name: &str, key_id: &str) -> Vec<u8> {
    let empty = BTreeMap::new();
    let key_ref = KeyRef { key_id: key_id.to_owned(), version: 1 };
    let request = SealRequest {
        key_name,
        key_ref: &key_ref,
        algorithm: SymmetricAlgorithm::Aes256Gcm,
        binding: Binding { aad: b"", context: Some(&empty) },
    };
    ciphertext::seal(&SecretKey::from_bytes(vec![9; 32]), &request, b"forged").unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_identifiers_inside_a_ciphertext_are_decryption_failed() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let key = create_key(&admin, key_request("payments", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm))
        .await
        .unwrap()
        .key
        .unwrap();
    let mut crypto = admin.crypto_service();
    let mut forgeries: Vec<(String, String)> =
        malformed_references().into_iter().map(|bad| ("payments".to_owned(), bad)).collect();
    // The report's two: a kid with a control character, and one of 129 characters.
    forgeries.push(("payments".into(), format!("{}\u{7}", key.key_id)));
    forgeries.push(("payments".into(), format!("k_{}", "a".repeat(127))));
    // A header naming the right key id but a malformed name.
    for bad in malformed_references() {
        forgeries.push((bad, key.key_id.clone()));
    }
    for (name, kid) in forgeries {
        let forged = forge(&name, &kid);
        for pin in ["", "payments"] {
            let request = pb::DecryptRequest { ciphertext: forged.clone(), key: pin.into(), ..Default::default() };
            let result = crypto.decrypt(authorized(&admin, request).await).await;
            let Err(status) = result else { panic!("ctx {name:?} kid {kid:?} pin {pin:?}: opened") };
            assert_eq!(status.code(), Code::InvalidArgument, "ctx {name:?} kid {kid:?} pin {pin:?}: {status:?}");
            if pin.is_empty() || name == "payments" {
                assert_eq!(status.message(), "decryption failed", "ctx {name:?} kid {kid:?} pin {pin:?}");
            }
        }
        let re_encrypt = pb::ReEncryptRequest { ciphertext: forged.clone(), ..Default::default() };
        let status = crypto.re_encrypt(authorized(&admin, re_encrypt).await).await.unwrap_err();
        assert_eq!(
            (status.code(), status.message()),
            (Code::InvalidArgument, "decryption failed"),
            "ReEncrypt, ctx {name:?} kid {kid:?}"
        );
    }
}

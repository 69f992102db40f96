//! A property of the ciphertext format, through the real services (issue 20): for any edit of a ciphertext's
//! header that keeps it valid JSON (ctx, kid, alg, mode, nonce, kc, the aad flag, v: changed, emptied,
//! removed, retyped, pointed at another key of the same tenant), Decrypt either returns the original
//! plaintext under the original key, or fails with the one opaque "decryption failed"; and Decrypt pinned on a
//! key never returns plaintext from any other key. proptest generates the edits and shrinks a failure to the
//! smallest one.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::HashMap;

use integration_tests::{Mesh, create_key, key_request};
use keymesh_client::KeymeshClient;
use keymesh_proto::v1 as pb;
use proptest::{prelude::*, test_runner::TestRunner};
use serde_json::{Map, Value};
use tonic::Code;

const PLAINTEXT: &[u8] = b"the original plaintext";

/// One change to one header field.
#[derive(Debug, Clone)]
enum Edit {
    Set(&'static str, Value),
    Remove(&'static str),
}

const FIELDS: [&str; 8] = ["v", "ctx", "kid", "alg", "mode", "nonce", "kc", "aad"];

/// Values worth trying in any field: the other key's name and id, versions, algorithm and mode names,
/// base64 of several lengths, and arbitrary JSON scalars.
fn values(other_name: String, other_kid: String, own_kid: String) -> impl Strategy<Value = Value> {
    let own_other_version = own_kid.replace(":v1", ":v2");
    prop_oneof![
        Just(Value::from(other_name)),
        Just(Value::from(other_kid)),
        Just(Value::from(own_other_version)),
        Just(Value::from("")),
        prop_oneof![Just(1), Just(2), Just(3), Just(4), Just(0), Just(255)].prop_map(Value::from),
        prop_oneof![
            Just("AES-256-GCM"),
            Just("AES-128-GCM"),
            Just("ChaCha20-Poly1305"),
            Just("AES-256-GCM-SIV"),
            Just("gcm"),
            Just("siv"),
            Just("ctr-hmac"),
        ]
        .prop_map(Value::from),
        prop::collection::vec(any::<u8>(), 0..48).prop_map(|bytes| {
            use base64::Engine;
            Value::from(base64::engine::general_purpose::STANDARD.encode(bytes))
        }),
        any::<bool>().prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        Just(Value::Null),
    ]
}

fn edits(other_name: String, other_kid: String, own_kid: String) -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        4 => (prop::sample::select(FIELDS.to_vec()), values(other_name, other_kid, own_kid))
            .prop_map(|(field, value)| Edit::Set(field, value)),
        1 => prop::sample::select(FIELDS.to_vec()).prop_map(Edit::Remove),
    ];
    prop::collection::vec(edit, 1..4)
}

/// The ciphertext with its header edited (still a JSON object, length prefix recomputed, body untouched).
fn edited(ciphertext: &[u8], edits: &[Edit]) -> Vec<u8> {
    let header_len = u16::from_be_bytes([ciphertext[0], ciphertext[1]]) as usize;
    let mut header: Map<String, Value> = serde_json::from_slice(&ciphertext[2..2 + header_len]).unwrap();
    for edit in edits {
        match edit {
            Edit::Set(field, value) => {
                header.insert((*field).to_owned(), value.clone());
            }
            Edit::Remove(field) => {
                header.remove(*field);
            }
        }
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut out = (header.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(&header);
    out.extend_from_slice(&ciphertext[2 + header_len..]);
    out
}

struct Fixture {
    client: KeymeshClient,
    ciphertext: Vec<u8>,
    context: HashMap<String, String>,
    own: pb::Key,
    other: pb::Key,
}

async fn decrypt(fixture: &Fixture, ciphertext: Vec<u8>, pin: &str) -> Result<(Vec<u8>, String), tonic::Status> {
    let request = pb::DecryptRequest {
        ciphertext,
        key: pin.into(),
        aad: b"aad".to_vec(),
        encryption_context: fixture.context.clone(),
        ..Default::default()
    };
    let response =
        fixture.client.crypto_service().decrypt(fixture.client.authorized(request).await.unwrap()).await?.into_inner();
    Ok((response.plaintext, response.key_id))
}

/// The property, for one edited ciphertext.
async fn holds(fixture: &Fixture, ciphertext: Vec<u8>) -> Result<(), String> {
    match decrypt(fixture, ciphertext.clone(), "").await {
        Ok((plaintext, key_id)) if plaintext == PLAINTEXT && key_id == fixture.own.key_id => {}
        Ok((plaintext, key_id)) => {
            return Err(format!("Decrypt returned {:?} under {key_id}", String::from_utf8_lossy(&plaintext)));
        }
        Err(status) if status.code() == Code::InvalidArgument && status.message() == "decryption failed" => {}
        Err(status) => return Err(format!("Decrypt failed otherwise than \"decryption failed\": {status:?}")),
    }
    // Pinned on the other key, nothing opens; pinned on the original, only the original plaintext does.
    let pins = [
        (&fixture.other.name, false),
        (&fixture.other.key_id, false),
        (&fixture.own.name, true),
        (&fixture.own.key_id, true),
    ];
    for (pin, may_open) in pins {
        match decrypt(fixture, ciphertext.clone(), pin).await {
            Ok((plaintext, key_id)) if may_open && plaintext == PLAINTEXT && key_id == fixture.own.key_id => {}
            Ok((plaintext, key_id)) => {
                return Err(format!(
                    "Decrypt pinned on {pin} returned {:?} under {key_id}",
                    String::from_utf8_lossy(&plaintext)
                ));
            }
            Err(status) if status.code() == Code::InvalidArgument => {}
            Err(status) => return Err(format!("Decrypt pinned on {pin}: {status:?}")),
        }
    }
    Ok(())
}

#[test]
fn any_header_edit_opens_to_the_original_or_fails_opaquely() {
    keymesh_mesh::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (mesh, fixture) = runtime.block_on(async {
        let mesh = Mesh::start(&[("KEYMESH_LIMITS__APPLICATION_PER_SECOND", "0")], &[]).await;
        let client = mesh.admin_client();
        let own = create_key(&client, key_request("orders", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm))
            .await
            .unwrap()
            .key
            .unwrap();
        // Another key of the same tenant, of another algorithm: an edited header may point at either.
        let other =
            create_key(&client, key_request("payments", pb::KeyPurpose::Encrypt, pb::Algorithm::Chacha20Poly1305))
                .await
                .unwrap()
                .key
                .unwrap();
        let context: HashMap<String, String> = [("order".to_owned(), "42".to_owned())].into();
        let request = pb::EncryptRequest {
            key: "orders".into(),
            plaintext: PLAINTEXT.to_vec(),
            aad: b"aad".to_vec(),
            encryption_context: context.clone(),
            ..Default::default()
        };
        let ciphertext =
            client.crypto_service().encrypt(client.authorized(request).await.unwrap()).await.unwrap().into_inner();
        (mesh, Fixture { client, ciphertext: ciphertext.ciphertext, context, own, other })
    });
    // The unedited ciphertext satisfies the property by opening.
    runtime.block_on(async {
        let (plaintext, _) = decrypt(&fixture, fixture.ciphertext.clone(), "").await.unwrap();
        assert_eq!(plaintext, PLAINTEXT);
    });

    let config = ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() };
    let strategy =
        edits(fixture.other.name.clone(), format!("{}:v1", fixture.other.key_id), format!("{}:v1", fixture.own.key_id));
    let result = TestRunner::new(config).run(&strategy, |edits| {
        let ciphertext = edited(&fixture.ciphertext, &edits);
        runtime.block_on(holds(&fixture, ciphertext)).map_err(TestCaseError::fail)
    });
    if let Err(failure) = result {
        panic!("{failure}");
    }
    drop(mesh);
}

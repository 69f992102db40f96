//! Every string and bytes field of every RPC of the four services, filled with the values that break services
//! (empty, 1 MiB, control characters, very long multi-byte text, invalid UTF-8 where the field is bytes), is
//! answered with the caller's error or a result: never INTERNAL (or UNKNOWN, which a panicking handler
//! gives), and no service restarts (issue 20).
//!
//! The fields come from the API's own descriptors (`keymesh_proto::FILE_DESCRIPTOR_SET`), so a field added
//! later is covered without touching this test. Each call starts from a realistic request of its method (a
//! real key, a real ciphertext, valid credentials), so that the edge value reaches as deep as it can, and sets
//! one field by appending it to the encoded request: protobuf's last-one-wins rule replaces a singular field,
//! merges into a nested message, and adds a map entry or a repeated element.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap};

use integration_tests::{Mesh, create_key, key_request};
use keymesh_mesh::ServiceName;
use keymesh_proto::v1 as pb;
use prost::{
    Message,
    bytes::{Buf, BufMut},
};
use prost_types::{
    DescriptorProto, FileDescriptorSet,
    field_descriptor_proto::{Label, Type},
};
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
};

/// Messages as bytes in both directions: the test speaks the wire format itself.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }
    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// A string or bytes field reachable from a request type: the field numbers down to it, and its name.
#[derive(Debug, Clone)]
struct FieldPath {
    name: String,
    numbers: Vec<u32>,
    bytes: bool,
}

/// Every message type of the API by full name (".keymesh.v1.EncryptRequest", nested types included).
fn message_types(set: &FileDescriptorSet) -> HashMap<String, DescriptorProto> {
    fn add(prefix: &str, message: &DescriptorProto, out: &mut HashMap<String, DescriptorProto>) {
        let name = format!("{prefix}.{}", message.name());
        for nested in &message.nested_type {
            add(&name, nested, out);
        }
        out.insert(name, message.clone());
    }
    let mut out = HashMap::new();
    for file in &set.file {
        for message in &file.message_type {
            add(&format!(".{}", file.package()), message, &mut out);
        }
    }
    out
}

/// The string and bytes fields of `type_name`, through nested messages (maps and repeated ones included).
fn string_fields(types: &HashMap<String, DescriptorProto>, type_name: &str, depth: usize) -> Vec<FieldPath> {
    let Some(message) = types.get(type_name) else { return Vec::new() };
    let mut out = Vec::new();
    for field in &message.field {
        let number = field.number() as u32;
        let repeated = field.label() == Label::Repeated;
        let name = format!("{}{}", field.name(), if repeated { "[]" } else { "" });
        match field.r#type() {
            Type::String | Type::Bytes => {
                out.push(FieldPath { name, numbers: vec![number], bytes: field.r#type() == Type::Bytes })
            }
            Type::Message if depth < 4 && !field.type_name().starts_with(".google.protobuf.") => {
                for inner in string_fields(types, field.type_name(), depth + 1) {
                    let mut numbers = vec![number];
                    numbers.extend(inner.numbers);
                    out.push(FieldPath { name: format!("{name}.{}", inner.name), numbers, bytes: inner.bytes });
                }
            }
            _ => {}
        }
    }
    out
}

fn varint(mut value: u64, out: &mut Vec<u8>) {
    while value >= 0x80 {
        out.push((value as u8) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// `message` with the field at `path` set to `value` (appended, so it wins over or merges with the original).
fn with_field(message: &[u8], path: &[u32], value: &[u8]) -> Vec<u8> {
    let mut inner = value.to_vec();
    for number in path.iter().rev() {
        let mut wrapped = Vec::with_capacity(inner.len() + 8);
        varint(u64::from((number << 3) | 2), &mut wrapped);
        varint(inner.len() as u64, &mut wrapped);
        wrapped.extend_from_slice(&inner);
        inner = wrapped;
    }
    let mut out = message.to_vec();
    out.extend_from_slice(&inner);
    out
}

/// The values that break services.
fn edge_values() -> Vec<(&'static str, Vec<u8>, bool)> {
    vec![
        ("empty", Vec::new(), false),
        ("1 MiB", vec![b'a'; 1 << 20], false),
        ("control characters", "\u{0}\u{1}\u{7}\n\r\t\u{1b}[31m\u{7f}\u{85}\u{2028}".as_bytes().to_vec(), false),
        ("very long text", "é".repeat(40_000).into_bytes(), false),
        ("bidi and zero-width", "\u{202e}\u{200d}\u{feff}k\u{301}".as_bytes().to_vec(), false),
        // A string field cannot carry it: protobuf refuses the whole message, as every gRPC stack does.
        ("invalid UTF-8", vec![0xff, 0xfe, 0xc3, 0x28, 0x80, 0x00], true),
    ]
}

/// How an outcome may end: the caller's errors, or success. INTERNAL, UNKNOWN (a panic), UNAVAILABLE,
/// DEADLINE_EXCEEDED, CANCELLED or DATA_LOSS mean the mesh failed.
fn acceptable(code: Code) -> bool {
    matches!(
        code,
        Code::Ok
            | Code::InvalidArgument
            | Code::NotFound
            | Code::AlreadyExists
            | Code::PermissionDenied
            | Code::Unauthenticated
            | Code::FailedPrecondition
            | Code::OutOfRange
            | Code::ResourceExhausted
            | Code::Unimplemented
            | Code::Aborted
    )
}

/// The requests each method starts from (the messages of a stream, for streaming methods).
struct Baselines {
    by_method: HashMap<String, Vec<Vec<Vec<u8>>>>,
}

impl Baselines {
    fn add(&mut self, method: &str, messages: Vec<Vec<u8>>) {
        self.by_method.entry(method.to_owned()).or_default().push(messages);
    }

    fn one(&mut self, method: &str, message: impl Message) {
        self.add(method, vec![message.encode_to_vec()]);
    }

    fn of(&self, method: &str) -> Vec<Vec<Vec<u8>>> {
        self.by_method.get(method).cloned().unwrap_or_else(|| vec![vec![Vec::new()]])
    }
}

async fn baselines(mesh: &Mesh) -> Baselines {
    let admin = mesh.admin_client();
    for (name, purpose, algorithm) in [
        ("fuzz-aes", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm),
        ("fuzz-ec", pb::KeyPurpose::Sign, pb::Algorithm::EcdsaP256Sha256),
        ("fuzz-hmac", pb::KeyPurpose::Mac, pb::Algorithm::HmacSha256),
        ("fuzz-hpke", pb::KeyPurpose::Encrypt, pb::Algorithm::HpkeX25519Sha256Aes256Gcm),
    ] {
        create_key(&admin, key_request(name, purpose, algorithm)).await.unwrap();
    }
    let context: HashMap<String, String> = [("tenant".to_owned(), "fuzz".to_owned())].into();
    let mut crypto = admin.crypto_service();
    let encrypt = pb::EncryptRequest {
        key: "fuzz-aes".into(),
        plaintext: b"hello".to_vec(),
        aad: b"aad".to_vec(),
        encryption_context: context.clone(),
        ..Default::default()
    };
    let sealed = crypto.encrypt(admin.authorized(encrypt.clone()).await.unwrap()).await.unwrap().into_inner();
    let sign = pb::SignRequest {
        key: "fuzz-ec".into(),
        input: Some(pb::sign_request::Input::Message(b"m".to_vec())),
        ..Default::default()
    };
    let signature = crypto.sign(admin.authorized(sign.clone()).await.unwrap()).await.unwrap().into_inner().signature;
    let mac = pb::GenerateMacRequest { key: "fuzz-hmac".into(), message: b"m".to_vec() };
    let tag = crypto.generate_mac(admin.authorized(mac.clone()).await.unwrap()).await.unwrap().into_inner().mac;
    let credentials: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mesh.dir.path().join("bootstrap-credentials.json")).unwrap()).unwrap();
    let (client_id, client_secret) =
        (credentials["client_id"].as_str().unwrap().to_owned(), credentials["client_secret"].as_str().unwrap());
    let issue = pb::IssueTokenRequest {
        grant_type: pb::GrantType::ClientCredentials as i32,
        client_id: client_id.clone(),
        client_secret: client_secret.into(),
        ..Default::default()
    };
    let issued = pb::token_service_client::TokenServiceClient::new(mesh.channel(ServiceName::TokenService))
        .issue_token(issue.clone())
        .await
        .unwrap()
        .into_inner();

    let mut b = Baselines { by_method: HashMap::new() };
    let c = "/keymesh.v1.CryptoService/";
    b.one(&format!("{c}Encrypt"), encrypt.clone());
    b.one(
        &format!("{c}Encrypt"),
        pb::EncryptRequest {
            batch: vec![pb::EncryptItem {
                key: "fuzz-aes".into(),
                plaintext: b"x".to_vec(),
                aad: b"aad".to_vec(),
                encryption_context: context.clone(),
            }],
            ..Default::default()
        },
    );
    b.one(&format!("{c}Encrypt"), pb::EncryptRequest { key: "fuzz-hpke".into(), ..encrypt.clone() });
    let decrypt = pb::DecryptRequest {
        ciphertext: sealed.ciphertext.clone(),
        key: "fuzz-aes".into(),
        aad: b"aad".to_vec(),
        encryption_context: context.clone(),
        ..Default::default()
    };
    b.one(&format!("{c}Decrypt"), decrypt.clone());
    b.one(
        &format!("{c}Decrypt"),
        pb::DecryptRequest {
            batch: vec![pb::DecryptItem {
                ciphertext: sealed.ciphertext.clone(),
                key: "fuzz-aes".into(),
                aad: b"aad".to_vec(),
                encryption_context: context.clone(),
                ..Default::default()
            }],
            ..Default::default()
        },
    );
    b.one(
        &format!("{c}ReEncrypt"),
        pb::ReEncryptRequest {
            ciphertext: sealed.ciphertext.clone(),
            source_aad: b"aad".to_vec(),
            source_encryption_context: context.clone(),
            destination_key: "fuzz-aes".into(),
            ..Default::default()
        },
    );
    b.one(
        &format!("{c}GenerateDataKey"),
        pb::GenerateDataKeyRequest {
            key: "fuzz-aes".into(),
            aad: b"aad".to_vec(),
            encryption_context: context.clone(),
            ..Default::default()
        },
    );
    b.one(
        &format!("{c}GenerateDataKeyWithoutPlaintext"),
        pb::GenerateDataKeyWithoutPlaintextRequest {
            key: "fuzz-aes".into(),
            aad: b"aad".to_vec(),
            encryption_context: context.clone(),
            ..Default::default()
        },
    );
    b.one(&format!("{c}Sign"), sign);
    b.one(
        &format!("{c}Verify"),
        pb::VerifyRequest {
            key: "fuzz-ec".into(),
            input: Some(pb::verify_request::Input::Message(b"m".to_vec())),
            signature,
            ..Default::default()
        },
    );
    b.one(&format!("{c}GenerateMac"), mac);
    b.one(
        &format!("{c}VerifyMac"),
        pb::VerifyMacRequest { key: "fuzz-hmac".into(), message: b"m".to_vec(), mac: tag, ..Default::default() },
    );
    b.one(&format!("{c}Hash"), pb::HashRequest { algorithm: pb::HashAlgorithm::Sha256 as i32, data: b"d".to_vec() });
    let init = pb::EncryptStreamInit {
        key: "fuzz-aes".into(),
        aad: b"aad".to_vec(),
        encryption_context: context.clone(),
        ..Default::default()
    };
    b.add(
        &format!("{c}EncryptStream"),
        vec![
            pb::EncryptStreamRequest { message: Some(pb::encrypt_stream_request::Message::Init(init)) }.encode_to_vec(),
            pb::EncryptStreamRequest { message: Some(pb::encrypt_stream_request::Message::Chunk(b"data".to_vec())) }
                .encode_to_vec(),
        ],
    );
    let init = pb::DecryptStreamInit { key: "fuzz-aes".into(), aad: b"aad".to_vec(), encryption_context: context };
    b.add(
        &format!("{c}DecryptStream"),
        vec![
            pb::DecryptStreamRequest { message: Some(pb::decrypt_stream_request::Message::Init(init)) }.encode_to_vec(),
            pb::DecryptStreamRequest { message: Some(pb::decrypt_stream_request::Message::Chunk(b"data".to_vec())) }
                .encode_to_vec(),
        ],
    );

    let k = "/keymesh.v1.KeyService/";
    b.one(&format!("{k}CreateKey"), key_request("fuzz-created", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm));
    for method in ["GetKey", "RotateKey"] {
        b.one(&format!("{k}{method}"), pb::GetKeyRequest { key: "fuzz-aes".into() });
    }
    b.one(&format!("{k}UpdateKeyPolicy"), pb::UpdateKeyPolicyRequest { key: "fuzz-aes".into(), ..Default::default() });
    for method in ["EnableKey", "DisableKey", "CancelKeyDeletion", "GetPublicKey"] {
        b.one(&format!("{k}{method}"), pb::DisableKeyRequest { key: "fuzz-ec".into(), version: 0 });
    }
    b.one(
        &format!("{k}ScheduleKeyDeletion"),
        pb::ScheduleKeyDeletionRequest { key: "fuzz-hmac".into(), ..Default::default() },
    );
    b.one(&format!("{k}GetWrappingKey"), pb::GetWrappingKeyRequest { key: "fuzz-aes".into(), ..Default::default() });
    b.one(
        &format!("{k}ImportKeyVersion"),
        pb::ImportKeyVersionRequest { key: "fuzz-aes".into(), ..Default::default() },
    );

    let t = "/keymesh.v1.TokenService/";
    b.one(&format!("{t}IssueToken"), issue.clone());
    b.one(
        &format!("{t}IssueToken"),
        pb::IssueTokenRequest {
            grant_type: pb::GrantType::RefreshToken as i32,
            refresh_token: issued.refresh_token.clone(),
            ..Default::default()
        },
    );
    b.one(
        &format!("{t}IssueToken"),
        pb::IssueTokenRequest {
            grant_type: pb::GrantType::TokenExchange as i32,
            subject_token: issued.access_token.clone(),
            subject_token_type: "urn:ietf:params:oauth:token-type:jwt".into(),
            ..Default::default()
        },
    );
    b.one(&format!("{t}RevokeToken"), pb::RevokeTokenRequest { token: issued.refresh_token });
    b.one(&format!("{t}CreateTenant"), pb::CreateTenantRequest { name: "fuzz-tenant".into() });
    b.one(
        &format!("{t}CreateApplication"),
        pb::CreateApplicationRequest {
            name: "fuzz-app".into(),
            roles: vec![pb::Role::Developer as i32],
            permissions: vec![pb::KeyPermission {
                key_pattern: "fuzz-*".into(),
                operations: vec![pb::Operation::Encrypt as i32],
            }],
            ..Default::default()
        },
    );
    b.one(
        &format!("{t}RotateClientSecret"),
        pb::RotateClientSecretRequest { client_id: client_id.clone(), ..Default::default() },
    );
    b.one(&format!("{t}DisableApplication"), pb::DisableApplicationRequest { client_id });
    b
}

/// Calls `path` with `messages` (one for unary methods) and returns how it ended, reading every message of a
/// response stream.
async fn call(
    channel: tonic::transport::Channel,
    token: &str,
    path: &str,
    client_streaming: bool,
    server_streaming: bool,
    messages: Vec<Vec<u8>>,
) -> Code {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = PathAndQuery::try_from(path.to_owned()).unwrap();
    fn authorize<T>(request: &mut tonic::Request<T>, token: &str) {
        request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
        request.set_timeout(std::time::Duration::from_secs(60));
    }
    let outcome: Result<(), Status> = async {
        match (client_streaming, server_streaming) {
            (false, false) => {
                let mut request = tonic::Request::new(messages.into_iter().next().unwrap());
                authorize(&mut request, token);
                grpc.unary::<_, Vec<u8>, _>(request, path, RawCodec).await.map(drop)
            }
            (false, true) => {
                let mut request = tonic::Request::new(messages.into_iter().next().unwrap());
                authorize(&mut request, token);
                let mut stream = grpc.server_streaming::<_, Vec<u8>, _>(request, path, RawCodec).await?.into_inner();
                while stream.message().await?.is_some() {}
                Ok(())
            }
            (true, _) => {
                let mut request = tonic::Request::new(tokio_stream::iter(messages));
                authorize(&mut request, token);
                let mut stream = grpc.streaming::<_, _, Vec<u8>, _>(request, path, RawCodec).await?.into_inner();
                while stream.message().await?.is_some() {}
                Ok(())
            }
        }
    }
    .await;
    match outcome {
        Ok(()) => Code::Ok,
        Err(status) => status.code(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edge_values_in_every_field_of_every_rpc_never_fail_the_mesh() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(
        &[("KEYMESH_LIMITS__TOKEN_REQUESTS_PER_SECOND", "0"), ("KEYMESH_LIMITS__APPLICATION_PER_SECOND", "0")],
        &[],
    )
    .await;
    let token = mesh.admin_client().access_token().await.unwrap().to_string();
    let baselines = baselines(&mesh).await;
    let set = FileDescriptorSet::decode(keymesh_proto::FILE_DESCRIPTOR_SET).unwrap();
    let types = message_types(&set);
    let services: BTreeMap<&str, ServiceName> = [
        ("KeyService", ServiceName::KeyService),
        ("CryptoService", ServiceName::CryptoService),
        ("TokenService", ServiceName::TokenService),
        ("AuditService", ServiceName::AuditService),
    ]
    .into();

    let mut failures = Vec::new();
    let (mut calls, mut fields, mut methods) = (0usize, 0usize, 0usize);
    // Crypto first, so the key-service methods that disable, rotate or delete keys come after the keys' use.
    let order = ["CryptoService", "KeyService", "TokenService", "AuditService"];
    for service_name in order {
        let service = set
            .file
            .iter()
            .flat_map(|f| &f.service)
            .find(|s| s.name() == service_name)
            .unwrap_or_else(|| panic!("no service {service_name} in the descriptors"));
        let mesh_service = services[service_name];
        for method in &service.method {
            methods += 1;
            let path = format!("/keymesh.v1.{service_name}/{}", method.name());
            let targets = string_fields(&types, method.input_type(), 0);
            for baseline in baselines.of(&path) {
                for target in &targets {
                    fields += 1;
                    for (label, value, bytes_only) in edge_values() {
                        if bytes_only && !target.bytes {
                            continue;
                        }
                        let mut messages = baseline.clone();
                        messages[0] = with_field(&messages[0], &target.numbers, &value);
                        let code = call(
                            mesh.channel(mesh_service),
                            &token,
                            &path,
                            method.client_streaming(),
                            method.server_streaming(),
                            messages,
                        )
                        .await;
                        calls += 1;
                        if !acceptable(code) {
                            failures.push(format!("{path} {} = {label}: {code:?}", target.name));
                        }
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{} of {calls} calls failed the mesh:\n{}", failures.len(), failures.join("\n"));
    assert!(methods >= 35 && fields >= 100, "only {methods} methods and {fields} fields were covered");

    // Nobody restarted: every process is the one the mesh started, and serving.
    let mut mesh = mesh;
    for service in ServiceName::ALL {
        assert!(mesh.child(service).try_wait().unwrap().is_none(), "{service} exited");
        mesh.wait_serving(service).await;
    }
    eprintln!("{calls} calls over {fields} fields of {methods} methods: none failed the mesh");
}

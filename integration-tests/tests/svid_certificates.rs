//! Every service admits only X.509-SVIDs of the trust domain, and refuses anything else during the TLS
//! handshake (issue 20, item 3). A certificate from the mesh CA that carries `spiffe://keymesh/crypto-service`
//! *and* `spiffe://keymesh/app/x` was read by its first URI, so key-service took it for crypto-service and
//! handed it key material from GetDataKey. Now a client certificate with no URI SAN, several, or one that is
//! not a SPIFFE id of the trust domain never completes a handshake with any of the four services, and the
//! refusing service logs a line naming the reason.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use integration_tests::{Mesh, create_key, free_port, key_request, proto_service_name};
use keymesh_mesh::{ServiceName, client::mtls_channel, pki::TlsMaterial};
use keymesh_proto::v1::{self as pb, key_service_client::KeyServiceClient};
use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, Issuer, KeyPair, SanType};
use tokio::io::{AsyncBufReadExt, BufReader};
use tonic::Code;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
use zeroize::Zeroizing;

/// A client certificate from the mesh's development CA with exactly these URI SANs.
fn issue(mesh: &Mesh, uris: &[&str]) -> TlsMaterial {
    let pki = mesh.dir.path().join("pki");
    let ca_pem = std::fs::read_to_string(pki.join("ca.pem")).unwrap();
    let ca_key = KeyPair::from_pem(&std::fs::read_to_string(pki.join("ca-key.pem")).unwrap()).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "svid-test");
    for uri in uris {
        params.subject_alt_names.push(SanType::URI((*uri).try_into().unwrap()));
    }
    params.subject_alt_names.push(SanType::DnsName("svid-test".try_into().unwrap()));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.signed_by(&key, &issuer).unwrap();
    TlsMaterial::from_pem(ca_pem, cert.pem(), Zeroizing::new(key.serialize_pem()), None)
}

/// The health check of `service` over a fresh connection with `tls`.
async fn health(endpoint: &str, service: ServiceName, tls: &TlsMaterial) -> Result<i32, tonic::Status> {
    let channel = mtls_channel(endpoint, tls, service).unwrap();
    let request = HealthCheckRequest { service: format!("keymesh.v1.{}", proto_service_name(service)) };
    HealthClient::new(channel).check(request).await.map(|r| r.into_inner().status)
}

/// A call whose connection the server closed during the handshake. Under TLS 1.3 the client may have sent its
/// request before the server's alert arrives, so the call ends UNAVAILABLE, CANCELLED or UNKNOWN "transport
/// error" (the alert as its source), never with an answer of a handler.
fn assert_transport_refusal(status: &tonic::Status, what: &str) {
    let transport = match status.code() {
        Code::Unavailable | Code::Cancelled => true,
        Code::Unknown => status.message() == "transport error",
        _ => false,
    };
    assert!(transport, "{what}: {status:?}");
}

const NOT_SVIDS: [(&str, &[&str]); 5] = [
    ("two URI SANs, a service's first", &["spiffe://keymesh/crypto-service", "spiffe://keymesh/app/x"]),
    ("two URI SANs, an application's first", &["spiffe://keymesh/app/x", "spiffe://keymesh/crypto-service"]),
    ("no URI SAN", &[]),
    ("another trust domain", &["spiffe://elsewhere/crypto-service"]),
    ("a URI that is not a SPIFFE id", &["https://keymesh/crypto-service"]),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_svids_of_the_trust_domain_complete_a_handshake() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    let admin = mesh.admin_client();
    let key = create_key(&admin, key_request("payments", pb::KeyPurpose::Encrypt, pb::Algorithm::Aes256Gcm))
        .await
        .unwrap()
        .key
        .unwrap();

    // Control: a certificate issued the same way with one URI SAN of the trust domain is served.
    let svid = issue(&mesh, &["spiffe://keymesh/app/svid-test"]);
    for service in ServiceName::ALL {
        assert_eq!(health(mesh.endpoint(service), service, &svid).await.unwrap(), 1, "{service} serves an X.509-SVID");
    }

    for (what, uris) in NOT_SVIDS {
        let tls = issue(&mesh, uris);
        for service in ServiceName::ALL {
            let refused = health(mesh.endpoint(service), service, &tls).await;
            assert!(refused.is_err(), "{service} completed a handshake with a certificate with {what}");
            assert_transport_refusal(&refused.unwrap_err(), &format!("{service}, {what}"));
        }
    }

    // The reproduction of the report: the two-URI certificate naming crypto-service first asks key-service
    // for the material of a key. It is never answered.
    let impostor = issue(&mesh, &["spiffe://keymesh/crypto-service", "spiffe://keymesh/app/x"]);
    let channel = mtls_channel(mesh.endpoint(ServiceName::KeyService), &impostor, ServiceName::KeyService).unwrap();
    let request = pb::GetDataKeyRequest {
        tenant_id: key.tenant_id.clone(),
        key: key.key_id.clone(),
        operation: pb::Operation::Decrypt as i32,
        ..Default::default()
    };
    match KeyServiceClient::new(channel).get_data_key(request).await {
        Ok(response) => {
            panic!("key-service handed {} bytes of key material to the impostor", response.get_ref().key_material.len())
        }
        Err(status) => assert_transport_refusal(&status, "GetDataKey"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_handshake_is_logged_with_its_reason() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    // A key-service replica of our own, whose log we read.
    let endpoint = format!("127.0.0.1:{}", free_port());
    let mut command = mesh.command(ServiceName::KeyService);
    command
        .env("KEYMESH_LISTEN_ADDR", &endpoint)
        .env("KEYMESH_AUDIT__SPOOL_DIR", mesh.dir.path().join("svid-test-spool"))
        .env("KEYMESH_LOG", "warn")
        .stderr(Stdio::piped());
    let mut child = command.spawn().unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let svid = issue(&mesh, &["spiffe://keymesh/app/svid-test"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    while health(&endpoint, ServiceName::KeyService, &svid).await.ok() != Some(1) {
        assert!(Instant::now() < deadline, "the key-service replica did not start");
        assert!(child.try_wait().unwrap().is_none(), "the key-service replica exited");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let expected = [
        (&["spiffe://keymesh/crypto-service", "spiffe://keymesh/app/x"][..], "2 URI SANs"),
        (&[][..], "no URI SAN"),
        (&["spiffe://elsewhere/crypto-service"][..], "is not a SPIFFE id of the trust domain"),
    ];
    for (uris, reason) in expected {
        assert!(health(&endpoint, ServiceName::KeyService, &issue(&mesh, uris)).await.is_err());
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(line) = log.next_line().await.unwrap() {
                if line.contains("refused a TLS connection") && line.contains(reason) {
                    return line;
                }
            }
            panic!("key-service's log ended");
        })
        .await
        .unwrap_or_else(|_| panic!("no log line names the reason {reason:?}"));
        assert!(!found.contains("PRIVATE KEY"), "{found}");
        // Text logs to a pipe carry no colour codes (a terminal would get them).
        assert!(!found.contains('\u{1b}'), "colour codes in a log that is not a terminal: {found:?}");
    }
    child.kill().await.unwrap();
}

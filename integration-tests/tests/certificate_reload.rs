//! Certificate renewal without restarts (issue 22): a crypto-service replica reading its certificate, key and CA
//! bundle from files is given renewed files while a client keeps encrypting through it — a new key pair from the
//! same CA, then a certificate from a new CA with a bundle holding the old CA and the new one. Not one call
//! fails; each new connection presents the newest certificate (checked by its serial) and the expiry gauge
//! follows it; and files for another identity, a key that does not match, or a certificate from a CA outside
//! the bundle are each refused, logged, and the certificate in use keeps serving. Then the client half: the
//! replica's calls to key-service present each renewed certificate and trust the renewed CA bundle; and the
//! admin console's calls to the mesh present its renewed client certificate.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::{
    net::{IpAddr, Ipv4Addr},
    path::Path,
    process::Stdio,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use integration_tests::{Mesh, free_port, parse_prometheus, scrape_metrics};
use keymesh_client::{Credentials, KeymeshClient};
use keymesh_mesh::{ServiceName, pki::TlsMaterial};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, pem::PemObject};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A certificate for `spiffe_id`, usable as server and client (as services are), signed by `ca`, valid for
/// `days` (so that each renewal has an expiry of its own).
fn issue(ca_pem: &str, ca_key: &str, spiffe_id: &str, days: i64) -> (String, String) {
    let issuer = Issuer::from_ca_cert_pem(ca_pem, KeyPair::from_pem(ca_key).unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "crypto-service");
    params.subject_alt_names = vec![
        SanType::URI(spiffe_id.try_into().unwrap()),
        SanType::DnsName("localhost".try_into().unwrap()),
        SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)),
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    params.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
    (params.signed_by(&key, &issuer).unwrap().pem(), key.serialize_pem())
}

/// A new CA: its certificate and key.
fn new_ca() -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name.push(DnType::CommonName, "keymesh renewed CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
}

/// When the certificate expires, in seconds since the epoch.
fn not_after(cert_pem: &str) -> f64 {
    let der = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).unwrap();
    cert.validity().not_after.timestamp() as f64
}

/// Waits until the replica's expiry gauge reads the expiry of `cert_pem`.
async fn wait_for_expiry_gauge(admin: &str, cert_pem: &str) {
    let expected = not_after(cert_pem);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let families = parse_prometheus(&scrape_metrics(admin).await.1);
        let reported = families
            .get("keymesh_tls_certificate_expiration_timestamp_seconds")
            .and_then(|samples| samples.first())
            .map(|s| s.value);
        if reported == Some(expected) {
            return;
        }
        assert!(Instant::now() < deadline, "the expiry gauge reads {reported:?}, not {expected}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a log line with every one of `parts`, among those written after the first `from`.
async fn wait_for_log(log: &Mutex<Vec<String>>, from: usize, parts: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !log.lock().unwrap().iter().skip(from).any(|l| parts.iter().all(|p| l.contains(p))) {
        assert!(Instant::now() < deadline, "no log line with {parts:?}: {:#?}", log.lock().unwrap());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Replaces a file the way a Secret volume update does: the new content appears at once, whole.
fn swap(path: &Path, content: &str) {
    let temporary = path.with_extension("new");
    std::fs::write(&temporary, content).unwrap();
    std::fs::rename(&temporary, path).unwrap();
}

/// The development CA of `mesh`: its certificate and key.
fn mesh_ca(mesh: &Mesh) -> (String, String) {
    let pki = mesh.dir.path().join("pki");
    (std::fs::read_to_string(pki.join("ca.pem")).unwrap(), std::fs::read_to_string(pki.join("ca-key.pem")).unwrap())
}

/// A replica's CA bundle, certificate and key files (ca.pem, tls.crt, tls.key), each replaced the way a Secret
/// volume update replaces it.
struct IdentityFiles(tempfile::TempDir);

impl IdentityFiles {
    fn new(ca_pem: &str, cert: &str, key: &str) -> Self {
        let files = Self(tempfile::tempdir().unwrap());
        files.ca(ca_pem);
        files.renew(cert, key);
        files
    }

    fn path(&self) -> &Path {
        self.0.path()
    }

    fn ca(&self, bundle: &str) {
        swap(&self.path().join("ca.pem"), bundle);
    }

    fn cert(&self, cert: &str) {
        swap(&self.path().join("tls.crt"), cert);
    }

    /// The key first, then the certificate, as a renewal writes them.
    fn renew(&self, cert: &str, key: &str) {
        swap(&self.path().join("tls.key"), key);
        self.cert(cert);
    }
}

fn serial(cert_der: &[u8]) -> String {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).unwrap();
    cert.raw_serial_as_string()
}

fn serial_of(cert_pem: &str) -> String {
    serial(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap().as_ref())
}

/// The serial of the certificate `endpoint` presents to a new connection from `app`, trusting `roots`.
async fn served_serial(endpoint: &str, app: &TlsMaterial, roots: &str) -> String {
    let mut store = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(roots.as_bytes()) {
        store.add(cert.unwrap()).unwrap();
    }
    let chain = CertificateDer::pem_slice_iter(app.cert_pem.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(app.key_pem.as_bytes()).unwrap();
    let mut config =
        rustls::ClientConfig::builder().with_root_certificates(store).with_client_auth_cert(chain, key).unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(endpoint).await.unwrap();
    let name = ServerName::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST).into());
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, tcp).await.unwrap();
    serial(tls.get_ref().1.peer_certificates().unwrap()[0].as_ref())
}

/// Waits until new connections see the certificate `expected`.
async fn wait_for_serial(endpoint: &str, app: &TlsMaterial, roots: &str, expected: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let served = served_serial(endpoint, app, roots).await;
        if served == expected {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: still serving {served}, not {expected}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A crypto-service replica of the mesh's on the certificate files in `files` (ca.pem, tls.crt, tls.key), at
/// `endpoint`, with `extra` variables; its log lines are collected.
fn spawn_replica(
    mesh: &Mesh,
    files: &Path,
    endpoint: &str,
    spool: &str,
    extra: &[(&str, &str)],
) -> (tokio::process::Child, Arc<Mutex<Vec<String>>>) {
    let mut command = mesh.command(ServiceName::CryptoService);
    command
        .env("KEYMESH_LISTEN_ADDR", endpoint)
        .env("KEYMESH_TLS__CA_CERT", files.join("ca.pem"))
        .env("KEYMESH_TLS__CERT", files.join("tls.crt"))
        .env("KEYMESH_TLS__KEY", files.join("tls.key"))
        .env("KEYMESH_AUDIT__SPOOL_DIR", mesh.dir.path().join(spool))
        .env("KEYMESH_LOG", "info")
        .envs(extra.iter().copied())
        .stderr(Stdio::piped());
    let mut replica = command.spawn().unwrap();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut lines = BufReader::new(replica.stderr.take().unwrap()).lines();
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    (replica, log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_are_taken_without_a_failed_call_and_wrong_ones_are_refused() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    let (ca_pem, ca_key) = mesh_ca(&mesh);
    let own = ServiceName::CryptoService.spiffe_id();

    // A crypto-service replica of our own, on files of its own ([tls]), whose log we read.
    let (cert, key) = issue(&ca_pem, &ca_key, &own, 30);
    let files = IdentityFiles::new(&ca_pem, &cert, &key);
    let endpoint = format!("127.0.0.1:{}", free_port());
    let admin = format!("127.0.0.1:{}", free_port());
    let (mut replica, log) = spawn_replica(
        &mesh,
        files.path(),
        &endpoint,
        "reload-test-spool",
        &[("KEYMESH_TELEMETRY__METRICS_ADDR", admin.as_str())],
    );

    // A client encrypting through the replica the whole time.
    let mut endpoints = mesh.endpoints.clone();
    endpoints.crypto_service = endpoint.clone();
    let credentials = Credentials::from_file(&mesh.dir.path().join("bootstrap-credentials.json")).unwrap();
    let client = Arc::new(KeymeshClient::new(&endpoints, &mesh.app_tls("reload"), credentials).unwrap());
    client.create_key("renewals").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client.encrypt("renewals", b"up?".to_vec(), Vec::new()).await.is_err() {
        assert!(Instant::now() < deadline, "the crypto-service replica did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (stop, succeeded, failed) =
        (Arc::new(AtomicBool::new(false)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = tokio::spawn({
        let (client, stop, succeeded, failed) = (client.clone(), stop.clone(), succeeded.clone(), failed.clone());
        async move {
            while !stop.load(Ordering::Relaxed) {
                match client.encrypt("renewals", b"during renewals".to_vec(), Vec::new()).await {
                    Ok(_) => succeeded.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("a call failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }
    });
    let app = mesh.app_tls("reload-probe");
    assert_eq!(served_serial(&endpoint, &app, &ca_pem).await, serial_of(&cert));

    // 1. A new key pair from the same CA.
    wait_for_expiry_gauge(&admin, &cert).await;
    let (renewed, renewed_key) = issue(&ca_pem, &ca_key, &own, 60);
    files.renew(&renewed, &renewed_key);
    wait_for_serial(&endpoint, &app, &ca_pem, &serial_of(&renewed), "the renewed certificate").await;
    wait_for_expiry_gauge(&admin, &renewed).await;

    // 2. Files that must not be taken, each refused and logged while the renewed certificate keeps serving:
    // another identity, a key that is not the certificate's, a certificate from a CA outside the bundle.
    let refused = "refused the renewed certificate files";
    let (wrong, wrong_key) = issue(&ca_pem, &ca_key, &ServiceName::KeyService.spiffe_id(), 90);
    let lines = || log.lock().unwrap().len();
    let from = lines();
    files.renew(&wrong, &wrong_key);
    wait_for_log(&log, from, &[refused, "is for spiffe://keymesh/key-service"]).await;
    let (other_ca, other_ca_key) = new_ca();
    let (foreign, foreign_key) = issue(&other_ca, &other_ca_key, &own, 90);
    let from = lines();
    files.renew(&renewed, &foreign_key);
    wait_for_log(&log, from, &[refused, "certificate and key"]).await;
    let from = lines();
    files.cert(&foreign);
    wait_for_log(&log, from, &[refused, "does not chain to the CA bundle"]).await;
    assert_eq!(served_serial(&endpoint, &app, &ca_pem).await, serial_of(&renewed), "the old one keeps serving");
    wait_for_expiry_gauge(&admin, &renewed).await;

    // 3. A new CA: the bundle holds both, the certificate comes from the new one. Clients of the old CA go on.
    let (next_ca, next_ca_key) = new_ca();
    let bundle = format!("{ca_pem}{next_ca}");
    let (rotated, rotated_key) = issue(&next_ca, &next_ca_key, &own, 120);
    files.ca(&bundle);
    files.renew(&rotated, &rotated_key);
    wait_for_serial(&endpoint, &app, &bundle, &serial_of(&rotated), "the certificate from the new CA").await;
    wait_for_expiry_gauge(&admin, &rotated).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    let (succeeded, failed) = (succeeded.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("{succeeded} Encrypts through three renewals, {failed} failed");
    assert!(succeeded > 10, "{succeeded}");
    assert_eq!(failed, 0, "not one call fails");
    assert!(log.lock().unwrap().iter().filter(|l| l.contains("took the renewed certificate")).count() >= 2);
    replica.kill().await.unwrap();
}

/// A stand-in for key-service that only shakes hands: it presents `identity` (swappable), requires a client
/// certificate from its roots, records the serial of each one presented, and hangs up.
struct HandshakeRecorder {
    address: String,
    config: Arc<Mutex<Arc<rustls::ServerConfig>>>,
    serials: Arc<Mutex<Vec<String>>>,
}

impl HandshakeRecorder {
    fn config(cert: &str, key: &str, roots: &str) -> Arc<rustls::ServerConfig> {
        let mut store = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(roots.as_bytes()) {
            store.add(cert.unwrap()).unwrap();
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(store)).build().unwrap();
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<Vec<_>, _>>().unwrap();
        let mut config = rustls::ServerConfig::builder()
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(config)
    }

    async fn start(cert: &str, key: &str, roots: &str) -> HandshakeRecorder {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let config = Arc::new(Mutex::new(Self::config(cert, key, roots)));
        let serials: Arc<Mutex<Vec<String>>> = Arc::default();
        let (current, recorded) = (config.clone(), serials.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else { return };
                let acceptor = tokio_rustls::TlsAcceptor::from(current.lock().unwrap().clone());
                let recorded = recorded.clone();
                tokio::spawn(async move {
                    if let Ok(tls) = acceptor.accept(tcp).await
                        && let Some(presented) = tls.get_ref().1.peer_certificates().and_then(|c| c.first().cloned())
                    {
                        recorded.lock().unwrap().push(serial(presented.as_ref()));
                    }
                });
            }
        });
        HandshakeRecorder { address, config, serials }
    }

    fn present(&self, cert: &str, key: &str, roots: &str) {
        *self.config.lock().unwrap() = Self::config(cert, key, roots);
    }

    /// Calls `call` until a handshake presents `expected`.
    async fn wait_for<F, Fut>(&self, expected: &str, what: &str, call: F)
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            call().await;
            if self.serials.lock().unwrap().last().map(String::as_str) == Some(expected) {
                return;
            }
            assert!(Instant::now() < deadline, "{what}: handshakes presented {:?}", self.serials.lock().unwrap());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The client half of a renewal: a crypto-service replica whose certificate files are renewed presents the
/// renewed certificate when it next connects to key-service, and trusts a renewed CA bundle — without that it
/// would keep presenting a certificate that expires, and refuse a key-service whose certificate comes from a new
/// CA. Key-service here is a stand-in that records the certificate each handshake presents.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_to_other_services_present_the_renewed_certificate_and_trust_the_renewed_bundle() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    let (ca_pem, ca_key) = mesh_ca(&mesh);
    let (own, key_service) = (ServiceName::CryptoService.spiffe_id(), ServiceName::KeyService.spiffe_id());
    let (next_ca, next_ca_key) = new_ca();
    let bundle = format!("{ca_pem}{next_ca}");
    let (stand_in, stand_in_key) = issue(&ca_pem, &ca_key, &key_service, 30);
    let recorder = HandshakeRecorder::start(&stand_in, &stand_in_key, &bundle).await;

    let (first, first_key) = issue(&ca_pem, &ca_key, &own, 30);
    let files = IdentityFiles::new(&ca_pem, &first, &first_key);
    let endpoint = format!("127.0.0.1:{}", free_port());
    let (mut replica, log) = spawn_replica(
        &mesh,
        files.path(),
        &endpoint,
        "client-reload-spool",
        &[("KEYMESH_ENDPOINTS__KEY_SERVICE", recorder.address.as_str())],
    );

    // Each Encrypt through the replica asks "key-service" for the key, over a new connection (the stand-in hangs
    // up after the handshake), so each shows what the replica presents now. The calls themselves fail.
    let mut endpoints = mesh.endpoints.clone();
    endpoints.crypto_service = endpoint.clone();
    let credentials = Credentials::from_file(&mesh.dir.path().join("bootstrap-credentials.json")).unwrap();
    let client = KeymeshClient::new(&endpoints, &mesh.app_tls("client-reload"), credentials).unwrap();
    client.create_key("client-side").await.unwrap();
    let call = || async {
        let _ = client.encrypt("client-side", b"x".to_vec(), Vec::new()).await;
    };
    recorder.wait_for(&serial_of(&first), "the first certificate", call).await;

    // 1. A new key pair from the same CA.
    let from = log.lock().unwrap().len();
    let (renewed, renewed_key) = issue(&ca_pem, &ca_key, &own, 60);
    files.renew(&renewed, &renewed_key);
    wait_for_log(&log, from, &["took the renewed certificate"]).await;
    recorder.wait_for(&serial_of(&renewed), "the renewed certificate", call).await;

    // 2. Key-service moves to a new CA first; the replica refuses it until its own bundle holds the new CA, then
    // presents its certificate from the new CA.
    let (moved, moved_key) = issue(&next_ca, &next_ca_key, &key_service, 60);
    // The stand-in would take the replica's old certificate (it trusts both CAs): only the replica can refuse.
    recorder.present(&moved, &moved_key, &bundle);
    let handshakes = recorder.serials.lock().unwrap().len();
    for _ in 0..5 {
        call().await;
    }
    assert_eq!(recorder.serials.lock().unwrap().len(), handshakes, "a key-service from a CA outside the bundle");
    let from = log.lock().unwrap().len();
    let (rotated, rotated_key) = issue(&next_ca, &next_ca_key, &own, 90);
    files.ca(&bundle);
    files.renew(&rotated, &rotated_key);
    wait_for_log(&log, from, &["took the renewed certificate"]).await;
    recorder.wait_for(&serial_of(&rotated), "the certificate from the new CA", call).await;
    replica.kill().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_presents_its_renewed_client_certificate() {
    keymesh_mesh::install_crypto_provider();
    let mesh = Mesh::start(&[], &[]).await;
    let (ca_pem, ca_key) = mesh_ca(&mesh);
    let (stand_in, stand_in_key) = issue(&ca_pem, &ca_key, &ServiceName::KeyService.spiffe_id(), 30);
    let recorder = HandshakeRecorder::start(&stand_in, &stand_in_key, &ca_pem).await;
    let identity = keymesh_mesh::identity::app_spiffe_id("console");
    let (first, first_key) = issue(&ca_pem, &ca_key, &identity, 30);
    let files = IdentityFiles::new(&ca_pem, &first, &first_key);
    let port = free_port();
    let mut command = mesh.console(&[
        ("KEYMESH_CONSOLE__LISTEN", &format!("127.0.0.1:{port}")),
        ("KEYMESH_CONSOLE__DEV_LOGIN", "true"),
        ("KEYMESH_CONSOLE__TLS_CERT", files.path().join("tls.crt").to_str().unwrap()),
        ("KEYMESH_CONSOLE__TLS_KEY", files.path().join("tls.key").to_str().unwrap()),
        ("KEYMESH_CONSOLE__TLS_CA", files.path().join("ca.pem").to_str().unwrap()),
        ("KEYMESH_ENDPOINTS__KEY_SERVICE", recorder.address.as_str()),
        ("KEYMESH_LOG", "info"),
    ]);
    let mut console = command.stderr(Stdio::piped()).spawn().unwrap();
    let log: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut lines = BufReader::new(console.stderr.take().unwrap()).lines();
    let kept = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            kept.lock().unwrap().push(line);
        }
    });
    // Signed in with the development login (token-service is the real one); each page of keys asks "key-service"
    // over a new connection (the stand-in hangs up after the handshake), so each shows what the console presents.
    let base = format!("http://127.0.0.1:{port}");
    let credentials: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(mesh.dir.path().join("bootstrap-credentials.json")).unwrap())
            .unwrap();
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut signed_in = None;
    for _ in 0..100 {
        let form = [("username", &credentials["client_id"]), ("password", &credentials["client_secret"])]
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
            .join("&");
        let attempt = http
            .post(format!("{base}/login/dev"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await;
        if let Ok(response) = attempt {
            signed_in = Some(response);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let signed_in = signed_in.expect("the console answers");
    assert_eq!(signed_in.status(), 303);
    let cookie = signed_in.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let call = || async {
        let _ = http.get(format!("{base}/keys")).header("cookie", &cookie).send().await;
    };
    recorder.wait_for(&serial_of(&first), "the console's first certificate", call).await;
    let from = log.lock().unwrap().len();
    let (renewed, renewed_key) = issue(&ca_pem, &ca_key, &identity, 60);
    files.renew(&renewed, &renewed_key);
    wait_for_log(&log, from, &["took the renewed client certificate"]).await;
    recorder.wait_for(&serial_of(&renewed), "the console's renewed certificate", call).await;
    console.kill().await.unwrap();
}

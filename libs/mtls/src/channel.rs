//! A lazily connecting mTLS channel that verifies the server's SPIFFE identity as well as the CA, and presents
//! and trusts whatever identity its [`TlsMaterial`] holds *now*: a service that takes renewed certificate files
//! (cert-manager renews long before expiry) must also present the renewed certificate to the services it calls,
//! and trust a renewed CA bundle when it calls them, or its calls stop the day the old certificate expires.
//!
//! tonic's TLS settings take one fixed identity, so the channel does its own TCP and TLS in a connector whose
//! rustls configuration resolves the client certificate and the roots at each handshake. Connections already
//! open keep the identity they were made with; HTTP/2 reconnects whenever one closes.

use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, RwLock},
    task::{Context, Poll},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::{
        ResolvesClientCert, WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    crypto::CryptoProvider,
    pki_types::{CertificateDer, ServerName, UnixTime},
    sign::CertifiedKey,
};
use tokio::net::TcpStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::{
    ServiceName, TlsError, TlsMaterial,
    acceptor::{chain_and_key, root_store},
    spiffe_id_from_der,
};

/// What a client presents and trusts on its next handshake.
struct ClientIdentity {
    certified: Arc<CertifiedKey>,
    roots: Arc<WebPkiServerVerifier>,
}

/// The process's rustls `CryptoProvider`, or aws-lc-rs's when the application installed none: an application
/// using the SDK need not know that rustls wants one, and gets the post-quantum key exchange (X25519MLKEM768)
/// the services prefer.
fn provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default().cloned().unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

impl ClientIdentity {
    fn from_material(tls: &TlsMaterial) -> Result<Self, TlsError> {
        let provider = provider();
        let roots = WebPkiServerVerifier::builder_with_provider(Arc::new(root_store(tls)?), provider.clone())
            .build()
            .map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
        let (chain, key) = chain_and_key(tls)?;
        let certified = CertifiedKey::from_der(chain, key, &provider)
            .map_err(|e| TlsError::Invalid(format!("certificate and key: {e}")))?;
        Ok(Self { certified: Arc::new(certified), roots })
    }
}

/// The client identity shared by a [`TlsMaterial`] and all its clones, so that every channel made from it
/// presents the renewed certificate once a renewal is [taken](Self::replace). Empty until the first channel
/// or renewal fills it.
#[derive(Clone, Default)]
pub struct LiveClientIdentity(Arc<RwLock<Option<Arc<ClientIdentity>>>>);

impl std::fmt::Debug for LiveClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveClientIdentity(<redacted>)")
    }
}

impl LiveClientIdentity {
    /// From now on, new handshakes of every channel sharing this identity present `renewed`'s certificate and
    /// trust its CA bundle. The caller has checked that `renewed` is the right identity.
    pub(crate) fn replace(&self, renewed: &TlsMaterial) -> Result<(), TlsError> {
        let identity = Arc::new(ClientIdentity::from_material(renewed)?);
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = Some(identity);
        Ok(())
    }

    fn current(&self) -> Option<Arc<ClientIdentity>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The current identity, made from `tls` if there is none yet.
    fn current_or_init(&self, tls: &TlsMaterial) -> Result<Arc<ClientIdentity>, TlsError> {
        let mut slot = self.0.write().unwrap_or_else(|p| p.into_inner());
        if let Some(identity) = slot.as_ref() {
            return Ok(identity.clone());
        }
        let identity = Arc::new(ClientIdentity::from_material(tls)?);
        *slot = Some(identity.clone());
        Ok(identity)
    }
}

/// Presents the current certificate.
struct CurrentCertificate(LiveClientIdentity);

impl std::fmt::Debug for CurrentCertificate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CurrentCertificate")
    }
}

impl ResolvesClientCert for CurrentCertificate {
    fn resolve(&self, _root_hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|identity| identity.certified.clone())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// Checks the server's certificate against the current CA bundle *and* its SPIFFE identity: every mesh
/// certificate is valid for loopback names, so the CA alone would accept any service in place of any other.
struct SpiffeServerVerifier {
    identity: LiveClientIdentity,
    /// The roots when the channel was made: the supported schemes must not change under rustls.
    initial: Arc<WebPkiServerVerifier>,
    expected: String,
}

impl std::fmt::Debug for SpiffeServerVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpiffeServerVerifier").field("expected", &self.expected).finish_non_exhaustive()
    }
}

impl SpiffeServerVerifier {
    fn roots(&self) -> Arc<WebPkiServerVerifier> {
        self.identity.current().map_or_else(|| self.initial.clone(), |identity| identity.roots.clone())
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let verified = self.roots().verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
        match spiffe_id_from_der(end_entity.as_ref()) {
            Ok(id) if id == self.expected => Ok(verified),
            Ok(other) => {
                Err(rustls::Error::General(format!("the server is {other}, not the expected {}", self.expected)))
            }
            Err(e) => Err(rustls::Error::General(format!("the server's certificate is refused: {e}"))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.roots().verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.roots().verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.initial.supported_verify_schemes()
    }
}

/// Opens TCP, then TLS with the channel's rustls configuration, for each connection the channel makes.
#[derive(Clone)]
struct MtlsConnector {
    config: Arc<ClientConfig>,
    server_name: ServerName<'static>,
}

type Connecting =
    Pin<Box<dyn Future<Output = std::io::Result<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>> + Send>>;

impl tower::Service<Uri> for MtlsConnector {
    type Response = TokioIo<tokio_rustls::client::TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config.clone());
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{what} in {uri}"));
            let host = uri.host().ok_or_else(|| bad("no host"))?.trim_matches(['[', ']']).to_owned();
            let port = uri.port_u16().ok_or_else(|| bad("no port"))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(connector.connect(server_name, tcp).await?))
        })
    }
}

/// HTTP/2 flow-control window of one stream, both ways, on every mesh connection. h2's default of 64 KiB lets a
/// 1 MiB stream segment through only after sixteen round trips of WINDOW_UPDATE: a stream then idled most of the
/// time (measured: under 300 MB/s with both cores 60 % idle). Two segments' worth keeps the pipe full; it also
/// bounds what one stream can make its peer buffer.
pub const HTTP2_STREAM_WINDOW: u32 = 2 << 20;
/// HTTP/2 flow-control window of one connection: two streams at full speed, and the most one connection can
/// make its peer buffer.
pub const HTTP2_CONNECTION_WINDOW: u32 = 4 << 20;

/// A lazily connecting mTLS channel to `service` at `host:port`, verified against the mesh CA and the
/// service's SPIFFE identity. Lazy, so services may start in any order; the first call connects.
pub fn mtls_channel(endpoint: &str, tls: &TlsMaterial, service: ServiceName) -> Result<Channel, TlsError> {
    let host = endpoint.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(endpoint);
    let server_name = ServerName::try_from(host.to_owned())
        .map_err(|e| TlsError::Invalid(format!("bad endpoint {endpoint:?}: {e}")))?;
    let identity = tls.client_identity().current_or_init(tls)?;
    let verifier = Arc::new(SpiffeServerVerifier {
        identity: tls.client_identity().clone(),
        initial: identity.roots.clone(),
        expected: service.spiffe_id(),
    });
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Invalid(format!("TLS versions: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(Arc::new(CurrentCertificate(tls.client_identity().clone())));
    config.alpn_protocols = vec![b"h2".to_vec()];
    // No session resumption: a resumed TLS 1.3 session skips the client certificate and the server's chain check,
    // so after a renewal the peer would go on seeing the old identity (the client half of certificate_reload.rs
    // caught it), and a server from a CA since dropped would be taken back. Mesh connections are long-lived, so
    // full handshakes cost little.
    config.resumption = rustls::client::Resumption::disabled();
    let connector = MtlsConnector { config: Arc::new(config), server_name };
    // http://, because the connector does the TLS: tonic would otherwise insist on its own.
    let endpoint = Endpoint::from_shared(format!("http://{endpoint}"))
        .map_err(|e| TlsError::Invalid(format!("bad endpoint {endpoint:?}: {e}")))?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW)
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW);
    Ok(endpoint.connect_with_connector_lazy(connector))
}

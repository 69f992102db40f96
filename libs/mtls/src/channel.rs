//! A lazily connecting mTLS channel that verifies the server's SPIFFE identity as well as the CA.

use std::{sync::Arc, time::Duration};

use rustls::{
    DigitallySignedStruct, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use tonic::transport::{Channel, ClientTlsConfig, Endpoint, Identity};

use crate::{ServiceName, TlsError, TlsMaterial, acceptor::root_store, spiffe_id_from_der};

/// Checks the server's certificate against the mesh CA *and* its SPIFFE identity: every mesh certificate
/// is valid for loopback names, so the CA alone would accept any service in place of any other.
#[derive(Debug)]
struct SpiffeServerVerifier {
    inner: Arc<WebPkiServerVerifier>,
    expected: String,
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
        let verified = self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)?;
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
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A lazily connecting mTLS channel to `service` at `host:port`, verified against the mesh CA and the
/// service's SPIFFE identity. Lazy, so services may start in any order; the first call connects.
pub fn mtls_channel(endpoint: &str, tls: &TlsMaterial, service: ServiceName) -> Result<Channel, TlsError> {
    let host = endpoint.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(endpoint);
    let inner = WebPkiServerVerifier::builder(Arc::new(root_store(tls)?))
        .build()
        .map_err(|e| TlsError::Invalid(format!("CA certificate: {e}")))?;
    let verifier = Arc::new(SpiffeServerVerifier { inner, expected: service.spiffe_id() });
    let config =
        ClientTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, tls.key_pem.as_bytes())).domain_name(host);
    let endpoint = Endpoint::from_shared(format!("https://{endpoint}"))
        .map_err(|e| TlsError::Invalid(format!("bad endpoint {endpoint:?}: {e}")))?
        .tls_config_with_verifier(config, verifier)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

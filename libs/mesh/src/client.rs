//! Outgoing calls: mTLS channels to other services, with the W3C trace context of the current span
//! injected into every request.

use std::{sync::Arc, time::Duration};

use keymesh_proto::v1::{self as pb, GetJwksRequest, token_service_client::TokenServiceClient};
use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, ClientTlsConfig, Endpoint, Identity},
};

use rustls::{
    DigitallySignedStruct, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};

use crate::{
    MeshError, ServiceName,
    auth::{PublicJwk, TokenAuthority},
    identity::spiffe_id_from_der,
    pki::TlsMaterial,
    telemetry,
};

/// A channel whose requests carry the caller's trace context.
pub type MeshChannel = InterceptedService<Channel, TraceContextInjector>;

/// Injects `traceparent`/`tracestate` of the current span into outgoing metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContextInjector;

impl Interceptor for TraceContextInjector {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        telemetry::inject_current_context(request.metadata_mut().as_mut());
        Ok(request)
    }
}

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
            Some(id) if id == self.expected => Ok(verified),
            other => Err(rustls::Error::General(format!(
                "the server is {}, not the expected {}",
                other.as_deref().unwrap_or("a certificate without a SPIFFE id"),
                self.expected
            ))),
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
pub fn mtls_channel(endpoint: &str, tls: &TlsMaterial, service: ServiceName) -> Result<Channel, MeshError> {
    let host = endpoint.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(endpoint);
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(tls.ca_pem.as_bytes()) {
        let cert = cert.map_err(|e| MeshError::Tls(format!("CA certificate: {e}")))?;
        roots.add(cert).map_err(|e| MeshError::Tls(format!("CA certificate: {e}")))?;
    }
    let inner = WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .map_err(|e| MeshError::Tls(format!("CA certificate: {e}")))?;
    let verifier = Arc::new(SpiffeServerVerifier { inner, expected: service.spiffe_id() });
    let config =
        ClientTlsConfig::new().identity(Identity::from_pem(&tls.cert_pem, tls.key_pem.as_bytes())).domain_name(host);
    let endpoint = Endpoint::from_shared(format!("https://{endpoint}"))
        .map_err(|e| MeshError::Tls(format!("bad endpoint {endpoint:?}: {e}")))?
        .tls_config_with_verifier(config, verifier)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// [`mtls_channel`] with trace-context propagation.
pub fn traced_channel(endpoint: &str, tls: &TlsMaterial, service: ServiceName) -> Result<MeshChannel, MeshError> {
    Ok(InterceptedService::new(mtls_channel(endpoint, tls, service)?, TraceContextInjector))
}

/// The access-token verifier of a service: JWKS and revocations from token-service over mTLS, issuer and
/// audience from `[tokens]`; revocations are polled from now on.
pub fn token_verifier(
    params: &crate::config::MeshParams,
    tls: &TlsMaterial,
    tokens: &crate::config::TokenParams,
) -> Result<Arc<crate::auth::TokenVerifier>, MeshError> {
    let channel = traced_channel(&params.endpoints.token_service, tls, ServiceName::TokenService)?;
    let verifier = Arc::new(crate::auth::TokenVerifier::new(Arc::new(RemoteAuthority::new(channel)), tokens));
    verifier.start_revocation_poll();
    Ok(verifier)
}

/// token-service over mTLS.
pub struct RemoteAuthority {
    client: TokenServiceClient<MeshChannel>,
}

impl RemoteAuthority {
    /// Uses `channel` to token-service.
    pub fn new(channel: MeshChannel) -> Self {
        // The revocation list is one message: allow it to grow well past tonic's 4 MiB default.
        Self { client: TokenServiceClient::new(channel).max_decoding_message_size(64 << 20) }
    }
}

#[async_trait::async_trait]
impl TokenAuthority for RemoteAuthority {
    async fn revocations(&self) -> Result<Vec<pb::Revocation>, String> {
        let mut client = self.client.clone();
        let response = client
            .list_revocations(pb::ListRevocationsRequest {})
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?;
        Ok(response.into_inner().revocations)
    }

    async fn jwks(&self) -> Result<Vec<PublicJwk>, String> {
        let mut client = self.client.clone();
        let response =
            client.get_jwks(GetJwksRequest {}).await.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
        Ok(response
            .into_inner()
            .keys
            .into_iter()
            .filter(|k| k.kty == "OKP" && k.crv == "Ed25519")
            .map(|k| PublicJwk { kid: k.kid, x: k.x })
            .collect())
    }
}

//! Outgoing calls: mTLS channels to other services, with the W3C trace context of the current span
//! injected into every request.

use std::time::Duration;

use keymesh_proto::v1::{GetJwksRequest, token_service_client::TokenServiceClient};
use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity},
};

use crate::{
    MeshError,
    auth::{JwksSource, PublicJwk},
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

/// A lazily connecting mTLS channel to `host:port`, verified against the mesh CA. Lazy, so services may
/// start in any order; the first call connects.
pub fn mtls_channel(endpoint: &str, tls: &TlsMaterial) -> Result<Channel, MeshError> {
    let host = endpoint.rsplit_once(':').map(|(h, _)| h.trim_matches(['[', ']'])).unwrap_or(endpoint);
    let config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&tls.ca_pem))
        .identity(Identity::from_pem(&tls.cert_pem, tls.key_pem.as_bytes()))
        .domain_name(host);
    let endpoint = Endpoint::from_shared(format!("https://{endpoint}"))
        .map_err(|e| MeshError::Tls(format!("bad endpoint {endpoint:?}: {e}")))?
        .tls_config(config)?
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(endpoint.connect_lazy())
}

/// [`mtls_channel`] with trace-context propagation.
pub fn traced_channel(endpoint: &str, tls: &TlsMaterial) -> Result<MeshChannel, MeshError> {
    Ok(InterceptedService::new(mtls_channel(endpoint, tls)?, TraceContextInjector))
}

/// The JWKS from token-service over mTLS.
pub struct RemoteJwks {
    client: TokenServiceClient<MeshChannel>,
}

impl RemoteJwks {
    /// Uses `channel` to token-service.
    pub fn new(channel: MeshChannel) -> Self {
        Self { client: TokenServiceClient::new(channel) }
    }
}

#[async_trait::async_trait]
impl JwksSource for RemoteJwks {
    async fn fetch(&self) -> Result<Vec<PublicJwk>, String> {
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

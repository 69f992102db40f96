//! Outgoing calls: mTLS channels to other services, with the W3C trace context of the current span
//! injected into every request.

use std::sync::Arc;

use keymesh_proto::v1::{self as pb, GetJwksRequest, token_service_client::TokenServiceClient};
use tonic::{
    Request, Status,
    service::{Interceptor, interceptor::InterceptedService},
    transport::Channel,
};

pub use keymesh_mtls::mtls_channel;

use crate::{
    MeshError, ServiceName,
    auth::{PublicJwk, TokenAuthority},
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

//! Outgoing calls: mTLS channels to other services, each call with its client span and the W3C trace
//! context of that span injected into its request.

use std::sync::Arc;

use keymesh_proto::v1::{self as pb, GetJwksRequest, token_service_client::TokenServiceClient};
use tonic::transport::Channel;

pub use keymesh_mtls::mtls_channel;

use crate::{
    MeshError, ServiceName,
    auth::{PublicJwk, TokenAuthority},
    pki::TlsMaterial,
    rpc_telemetry::ClientSpans,
};

/// A channel to another service whose calls each get a client span, whose context they carry as `traceparent`.
pub type MeshChannel = ClientSpans<Channel>;

/// [`mtls_channel`] with a client span per call and trace-context propagation.
pub fn traced_channel(endpoint: &str, tls: &TlsMaterial, service: ServiceName) -> Result<MeshChannel, MeshError> {
    Ok(ClientSpans::new(mtls_channel(endpoint, tls, service)?, endpoint))
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

//! The request gate: what every call from an application passes before its handler runs, in every service.
//!
//! 1. **Authenticate**: the connection's client certificate (verified by the mTLS handshake against the mesh
//!    CA) and the Bearer access token (signature, lifetime, issuer, audience, revocation).
//! 2. **Refused authentication is audited**, the same way in every service, under the certificate's SPIFFE
//!    identity (the peer's address for a certificate without one), and counted rather than recorded call by
//!    call (see `AuditSink::refused_authentication`), so a flood of bad tokens cannot flood the trail. A
//!    verifier that cannot hear from token-service (UNAVAILABLE) is counted the same way, apart.
//! 3. **Rate limits** of the application and its tenant (refusals are RESOURCE_EXHAUSTED and not audited, for
//!    the same reason; quotas on plaintext, which guard data, are checked and audited inside the call).
//! 4. **The audit scope** of the call opens with the caller in it, and a role the method needs is checked with
//!    the refusal audited.
//!
//! The handler receives an [`Admitted`] call: an authenticated caller and its open audit scope. Methods
//! that answer other services (GetDataKey, WatchKeyChanges, Append, ListRevocations) authorize by
//! certificate identity alone and do not come through here.

use std::sync::Arc;

use keymesh_audit::{AuditScope, AuditSink};
use keymesh_limits::Limiter;
use keymesh_mesh::{
    auth::{AccessClaims, Role, TokenVerifier},
    identity::PeerIdentity,
};
use tonic::{Request, Status};

/// The gate of one service.
pub struct Gate {
    service: &'static str,
    verifier: Arc<TokenVerifier>,
    limits: Option<Arc<Limiter>>,
    audit: Option<AuditSink>,
}

/// A call through the gate: who is calling, and the audit event of the call, already naming the caller.
pub struct Admitted {
    /// The verified access token's claims.
    pub claims: Arc<AccessClaims>,
    /// The call's audit event.
    pub audit: AuditScope,
}

impl Gate {
    /// The gate of `service` ("crypto-service"): tokens checked by `verifier`, calls admitted under `limits`
    /// (none: unlimited), refusals and calls recorded in `audit` (none: audit-service, which is the trail).
    pub fn new(
        service: &'static str,
        verifier: Arc<TokenVerifier>,
        limits: Option<Arc<Limiter>>,
        audit: Option<AuditSink>,
    ) -> Self {
        Self { service, verifier, limits, audit }
    }

    /// Authenticates the caller of `operation`, admits it under the rate limits and opens its audit scope.
    pub async fn admit<T>(&self, request: &Request<T>, operation: &str) -> Result<Admitted, Status> {
        let claims = self.authenticate(request, operation).await?;
        if let Some(limits) = &self.limits {
            limits.admit_call(&claims.tenant, &claims.sub).await?;
        }
        let audit = self.scope(operation, &claims);
        Ok(Admitted { claims, audit })
    }

    /// [`Gate::admit`] for a method that needs one of `roles`; a caller without is refused, and audited.
    pub async fn admit_with_role<T>(
        &self,
        request: &Request<T>,
        operation: &str,
        roles: &[Role],
    ) -> Result<Admitted, Status> {
        let admitted = self.admit(request, operation).await?;
        match admitted.claims.require_role(roles, operation) {
            Ok(()) => Ok(admitted),
            Err(denied) => Err(self.deny(admitted.audit, denied).await),
        }
    }

    /// Another audit event of an admitted caller (one per item of a batch, both sides of a ReEncrypt).
    pub fn scope(&self, operation: &str, claims: &AccessClaims) -> AuditScope {
        let mut audit = AuditScope::start(self.service, operation);
        audit.caller(&claims.tenant, &claims.sub);
        if let Some(person) = &claims.ext {
            audit.on_behalf_of(&person.iss, &person.sub);
        }
        audit
    }

    /// Records a refusal of an admitted call and hands it back.
    pub async fn deny(&self, audit: AuditScope, denied: Status) -> Status {
        match &self.audit {
            Some(sink) => audit.deny(sink, denied).await,
            None => denied,
        }
    }

    /// Verifies the token of a call from an application. The connection's certificate was verified by the
    /// TLS handshake (the server requires one from the mesh CA); its SPIFFE identity names the source of a
    /// refused authentication, whose token claims are not to be believed. It is read only then: parsing the
    /// certificate on every call would tax the hot path for nothing.
    async fn authenticate<T>(&self, request: &Request<T>, operation: &str) -> Result<Arc<AccessClaims>, Status> {
        let refused = match self.verifier.verify_request(request).await {
            Ok(claims) => return Ok(claims),
            Err(error) => Status::from(error),
        };
        if let Some(sink) = &self.audit {
            let source = match PeerIdentity::from_request(request) {
                Ok(peer) => peer.as_str().to_owned(),
                Err(_) => request.remote_addr().map_or_else(|| "(unknown peer)".to_owned(), |a| a.ip().to_string()),
            };
            sink.refused_authentication(self.service, operation, &source, &refused).await;
        }
        Err(refused)
    }
}

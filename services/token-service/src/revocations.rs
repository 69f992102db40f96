//! Revocations as token-service stores and serves them, and token-service's own view of them: it verifies
//! the access tokens of its admin callers with the same verifier as every other service, fed from its store
//! rather than over the network.

use std::{sync::Arc, time::Duration};

use keymesh_mesh::auth::{PublicJwk, TokenAuthority};
use keymesh_proto::v1 as pb;
use keymesh_store::{entity::revocation, now_millis, tokens::TokenRepository};

use crate::{applications::timestamp, signing::Signer};

/// How long a revocation must stay in force to cover every access token it can match, whatever lifetime
/// they were issued with (at most a day, plus the largest skew). Session revocations add the refresh-token
/// lifetime on top.
pub const ACCESS_TOKEN_REVOCATION_LIFETIME_MS: i64 = (86_400 + 300) * 1000;

/// A revocation row.
pub fn revocation(scope: pb::RevocationScope, value: &str, revoked_at: i64, expires_at: i64) -> revocation::Model {
    revocation::Model {
        id: format!("{}:{value}", scope as i32),
        scope: scope as i32,
        value: value.to_owned(),
        revoked_at,
        expires_at,
    }
}

/// A revocation row as the API shows it.
pub fn to_proto(row: revocation::Model) -> pb::Revocation {
    pb::Revocation {
        scope: row.scope,
        value: row.value,
        revoke_time: Some(timestamp(row.revoked_at)),
        expire_time: Some(timestamp(row.expires_at)),
    }
}

/// token-service's signer and store, as the issuer its own verifier asks.
pub struct LocalAuthority {
    pub repo: TokenRepository,
    pub signer: Arc<Signer>,
}

#[async_trait::async_trait]
impl TokenAuthority for LocalAuthority {
    async fn jwks(&self) -> Result<Vec<PublicJwk>, String> {
        Ok(self.signer.jwks().into_iter().map(|k| PublicJwk { kid: k.kid, x: k.x }).collect())
    }

    async fn revocations(&self) -> Result<Vec<pb::Revocation>, String> {
        let rows = self.repo.revocations_in_force(now_millis()).await.map_err(|e| e.to_string())?;
        Ok(rows.into_iter().map(to_proto).collect())
    }
}

/// Deletes revocations and refresh tokens nothing can match any more, every `period`.
pub fn spawn_pruner(repo: TokenRepository, period: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(period);
        loop {
            ticker.tick().await;
            match repo.prune_expired(now_millis()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(rows = n, "pruned expired revocations and refresh tokens"),
                Err(e) => tracing::warn!(error = %e, "cannot prune expired revocations"),
            }
        }
    })
}

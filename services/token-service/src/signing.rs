//! The Ed25519 keys that sign access tokens. Private halves are stored only wrapped by the KEK backend;
//! public halves are served as a JWKS. A fresh database gets its first key on first start.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use std::{collections::HashMap, sync::Arc, time::Duration};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keymesh_kms::{Keyring, KmsError, WrapContext, WrapSet, WrappedKey};
use keymesh_mesh::auth::AccessClaims;

use crate::config::IssuanceParams;
use keymesh_proto::v1 as pb;
use keymesh_store::{entity::signing_key, now_millis, tokens::TokenRepository};

use crate::error::TokenError;

const SYSTEM_TENANT: &str = "_system";
const ALGORITHM: &str = "EdDSA";

/// The key that signs now and every public key still published.
struct SigningState {
    kid: String,
    key: EncodingKey,
    jwks: Vec<pb::Jwk>,
    /// The public halves, for RevokeToken's check that a token is ours.
    decoding: HashMap<String, DecodingKey>,
}

/// Signs access tokens and publishes the keys that verify them. Keys rotate on a schedule with overlap, and
/// are published before they sign: a new key enters the JWKS of every replica (each maintains against the
/// shared store every minute) before any replica signs with it, so no verifier meets a `kid` a replica cannot
/// show it. The key it replaces stays published until every token it signed has expired, then is retired.
pub struct Signer {
    state: std::sync::RwLock<Arc<SigningState>>,
    /// How long a new key is published before it signs.
    publish_ahead: Duration,
    /// Token settings.
    pub params: IssuanceParams,
}

/// The maintenance period of every replica.
pub const MAINTENANCE_PERIOD: Duration = Duration::from_secs(60);
/// Publication ahead of use: three maintenance periods, so every replica has published a key before any
/// signs with it.
const PUBLISH_AHEAD: Duration = Duration::from_secs(180);

fn wrap_context(kid: &str) -> WrapContext {
    WrapContext { tenant_id: SYSTEM_TENANT.into(), key_id: kid.into(), version: 1, algorithm: ALGORITHM.into() }
}

impl Signer {
    /// Loads the signing keys, creating one when there is none (or when the newest is due for rotation).
    pub async fn load_or_create(
        repo: &TokenRepository,
        kms: &Keyring,
        params: IssuanceParams,
    ) -> Result<Self, TokenError> {
        Self::load_with(repo, kms, params, PUBLISH_AHEAD).await
    }

    async fn load_with(
        repo: &TokenRepository,
        kms: &Keyring,
        params: IssuanceParams,
        publish_ahead: Duration,
    ) -> Result<Self, TokenError> {
        let state = Self::maintained_state(repo, kms, &params, publish_ahead, None).await?;
        Ok(Self { state: std::sync::RwLock::new(Arc::new(state)), publish_ahead, params })
    }

    /// Rotates the key when it is due, retires keys whose tokens have all expired, and picks up what other
    /// replicas did.
    pub async fn maintain(&self, repo: &TokenRepository, kms: &Keyring) -> Result<(), TokenError> {
        let previous = self.current();
        let state =
            Arc::new(Self::maintained_state(repo, kms, &self.params, self.publish_ahead, Some(&previous)).await?);
        if let Ok(mut current) = self.state.write() {
            *current = state.clone();
        }
        if previous.kid != state.kid {
            tracing::info!(kid = %state.kid, "now signing access tokens with a new key");
        }
        Ok(())
    }

    async fn maintained_state(
        repo: &TokenRepository,
        kms: &Keyring,
        params: &IssuanceParams,
        publish_ahead: Duration,
        previous: Option<&SigningState>,
    ) -> Result<SigningState, TokenError> {
        let now = now_millis();
        let ahead = publish_ahead.as_millis() as i64;
        let mut keys = repo.current_signing_keys().await?;
        let due = keys.first().is_none_or(|k| now - k.created_at >= params.signing_key_rotation.as_millis() as i64);
        if due {
            let created = create_key(kms).await?;
            tracing::info!(kid = %created.kid, "created a token signing key; it signs once published everywhere");
            repo.insert_signing_key(created).await?;
            keys = repo.current_signing_keys().await?;
        }
        // Newest first. A key starts signing `ahead` after its creation (at once when it is the only key);
        // the key before it is retired once that successor has signed for longer than any token lives, plus a
        // maintenance period for replicas that switched late.
        let signs_from =
            |key: &signing_key::Model, only: bool| if only { key.created_at } else { key.created_at + ahead };
        // (The publication lead is three maintenance periods; one of them covers the late switchers.)
        let overlap = (params.access_token_ttl + params.verify.clock_skew + publish_ahead / 3).as_millis() as i64;
        let mut kept = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let successor_signs_from = i.checked_sub(1).map(|j| signs_from(&keys[j], false));
            if successor_signs_from.is_some_and(|since| now - since > overlap) {
                repo.retire_signing_key(&key.kid, now).await?;
                tracing::info!(kid = %key.kid, "retired a token signing key: every token it signed has expired");
            } else {
                kept.push(key.clone());
            }
        }
        if previous.is_none() {
            bring_up_to_date(repo, kms, &mut kept).await?;
        }
        let only = kept.len() == 1;
        let signing = kept
            .iter()
            .find(|k| signs_from(k, only) <= now)
            .or_else(|| kept.last())
            .ok_or_else(|| TokenError::Internal("no signing key after creating one".into()))?;
        // Unwrapped only when the signing key changes: maintenance runs every minute.
        let key = match previous {
            Some(previous) if previous.kid == signing.kid => previous.key.clone(),
            _ => {
                let private = kms.unwrap(&wraps_of(signing)?, &wrap_context(&signing.kid)).await?;
                EncodingKey::from_ed_der(private.expose_secret())
            }
        };
        let jwks = kept
            .iter()
            .map(|k| pb::Jwk {
                kty: "OKP".into(),
                crv: "Ed25519".into(),
                x: URL_SAFE_NO_PAD.encode(&k.public_key),
                kid: k.kid.clone(),
                alg: ALGORITHM.into(),
                r#use: "sig".into(),
            })
            .collect::<Vec<_>>();
        let decoding = jwks
            .iter()
            .filter_map(|k| DecodingKey::from_ed_components(&k.x).ok().map(|d| (k.kid.clone(), d)))
            .collect();
        Ok(SigningState { kid: signing.kid.clone(), key, jwks, decoding })
    }

    fn current(&self) -> Arc<SigningState> {
        match self.state.read() {
            Ok(state) => state.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Signs `claims` with the current key.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        let state = self.current();
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(state.kid.clone());
        jsonwebtoken::encode(&header, claims, &state.key).map_err(|e| TokenError::Internal(format!("signing: {e}")))
    }

    /// The public keys.
    pub fn jwks(&self) -> Vec<pb::Jwk> {
        self.current().jwks.clone()
    }

    /// The claims of a token this issuer signed, expired or not; `None` for anything else.
    pub fn claims_of_own_token(&self, token: &str) -> Option<AccessClaims> {
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let state = self.current();
        let key = state.decoding.get(&kid)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.params.verify.issuer]);
        validation.set_audience(&[&self.params.verify.audience]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        jsonwebtoken::decode::<AccessClaims>(token, key, &validation).ok().map(|d| d.claims)
    }

    /// Runs [`Signer::maintain`] every `period` for as long as the process lives.
    pub fn spawn_maintenance(
        self: &Arc<Self>,
        repo: TokenRepository,
        kms: Arc<Keyring>,
        period: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let signer = self.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(period);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                if let Err(e) = signer.maintain(&repo, &kms).await {
                    tracing::warn!(error = %e, "token signing key maintenance failed; retrying next period");
                }
            }
        })
    }
}

/// The wraps of a signing key's private half.
fn wraps_of(key: &signing_key::Model) -> Result<WrapSet, TokenError> {
    let first = WrappedKey {
        backend: key.kek_backend.clone(),
        kek_id: key.kek_id.clone(),
        ciphertext: key.wrapped_private_key.clone(),
    };
    WrapSet::from_columns(first, key.extra_wraps.as_deref())
        .map_err(|e| TokenError::Internal(format!("signing key {}: unreadable extra_wraps: {e}", key.kid)))
}

fn set_wraps(key: &mut signing_key::Model, wraps: &WrapSet) {
    let (first, extra) = wraps.to_columns();
    key.wrapped_private_key = first.ciphertext;
    key.kek_backend = first.backend;
    key.kek_id = first.kek_id;
    key.extra_wraps = extra;
}

/// Keeps every current signing key wrapped exactly as the keyring wraps now (the primary and each
/// secondary), as key-service's re-wrap does for DEKs: retired members can then leave the configuration, and
/// a secondary can stand in when the primary is down. A KMS that cannot serve right now only postpones this to
/// the next start; the existing wraps still unwrap through whichever member can.
async fn bring_up_to_date(
    repo: &TokenRepository,
    kms: &Keyring,
    keys: &mut [signing_key::Model],
) -> Result<(), TokenError> {
    for key in keys.iter_mut() {
        let context = wrap_context(&key.kid);
        match kms.rewrap(&wraps_of(key)?, &context).await {
            Ok(None) => {}
            Ok(Some(wraps)) => {
                set_wraps(key, &wraps);
                repo.rewrap_signing_key(key).await?;
                tracing::info!(kid = %key.kid, target = %kms.target(), "re-wrapped a token signing key");
            }
            Err(e @ (KmsError::Unavailable { .. } | KmsError::KeyUnusable { .. })) => {
                tracing::warn!(kid = %key.kid, error = %e, "cannot re-wrap a token signing key now; next start will");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// The private key is wrapped under the primary and every secondary, like a DEK.
async fn create_key(kms: &Keyring) -> Result<signing_key::Model, TokenError> {
    let (kid, public, private) = keymesh_crypto::keypair::service_signing_key("ed25519")
        .map_err(|e| TokenError::Internal(format!("cannot generate a signing key: {e}")))?;
    let wraps = kms.wrap(&private, &wrap_context(&kid)).await?;
    let (first, extra_wraps) = wraps.to_columns();
    Ok(signing_key::Model {
        kid,
        algorithm: ALGORITHM.into(),
        public_key: public,
        wrapped_private_key: first.ciphertext,
        kek_backend: first.backend,
        kek_id: first.kek_id,
        extra_wraps,
        created_at: now_millis(),
        retired_at: None,
    })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use keymesh_config::KeymeshConfig;
    use keymesh_mesh::auth::unix_now;

    use super::*;

    fn claims() -> AccessClaims {
        let now = unix_now();
        AccessClaims {
            iss: "keymesh".into(),
            sub: "app_1".into(),
            aud: "keymesh".into(),
            exp: now + 1,
            iat: now,
            nbf: now,
            jti: "j".into(),
            tenant: "t".into(),
            roles: vec![],
            perms: vec![],
            sid: None,
            ext: None,
        }
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn keys_are_published_before_they_sign_and_retired_once_their_tokens_expired() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
        let repo = TokenRepository::new(keymesh_store::connect_and_migrate(&url).await.unwrap());
        let file = KeymeshConfig::default();
        let kms = keymesh_config::open_keyring(&file.kms_checked().unwrap(), dir.path()).await.unwrap();
        let mut params = crate::config::TokenConfig::from_file(&file).unwrap().tokens;
        // Seconds instead of days: rotation after 3 s, publication 1 s ahead, tokens living 1 s.
        params.signing_key_rotation = Duration::from_secs(3);
        params.access_token_ttl = Duration::from_secs(1);
        params.verify.clock_skew = Duration::ZERO;
        let ahead = Duration::from_secs(1);

        let signer = Signer::load_with(&repo, &kms, params.clone(), ahead).await.unwrap();
        let old_token = signer.sign(&claims()).unwrap();
        let first = signer.jwks()[0].kid.clone();
        assert_eq!(jsonwebtoken::decode_header(&old_token).unwrap().kid.unwrap(), first, "a lone key signs at once");
        signer.maintain(&repo, &kms).await.unwrap();
        assert_eq!(signer.jwks().len(), 1, "not due yet");

        tokio::time::sleep(Duration::from_millis(3100)).await;
        signer.maintain(&repo, &kms).await.unwrap();
        let kids: Vec<String> = signer.jwks().into_iter().map(|k| k.kid).collect();
        assert_eq!(kids.len(), 2, "the new key is published beside the old one");
        assert_eq!(kids[1], first);
        let kid_of = |token: &str| jsonwebtoken::decode_header(token).unwrap().kid.unwrap();
        assert_eq!(kid_of(&signer.sign(&claims()).unwrap()), first, "the old key signs while the new one spreads");
        // A replica starting now publishes both as well.
        let replica = Signer::load_with(&repo, &kms, params.clone(), ahead).await.unwrap();
        assert_eq!(replica.jwks().len(), 2);

        tokio::time::sleep(Duration::from_millis(1100)).await;
        signer.maintain(&repo, &kms).await.unwrap();
        let new_token = signer.sign(&claims()).unwrap();
        assert_eq!(kid_of(&new_token), kids[0], "published long enough: the new key signs");
        assert!(signer.claims_of_own_token(&old_token).is_some(), "tokens of the old key still verify");
        assert_eq!(signer.jwks().len(), 2, "the old key stays until its tokens have expired");

        tokio::time::sleep(Duration::from_millis(1500)).await;
        signer.maintain(&repo, &kms).await.unwrap();
        let kids: Vec<String> = signer.jwks().into_iter().map(|k| k.kid).collect();
        assert_eq!(kids.len(), 1, "then it is retired: {kids:?}");
        assert!(signer.claims_of_own_token(&old_token).is_none());
        assert!(signer.claims_of_own_token(&new_token).is_some());
        assert_eq!(repo.current_signing_keys().await.unwrap().len(), 1);
    }
}

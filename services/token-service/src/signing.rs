//! The Ed25519 keys that sign access tokens. Private halves are stored only wrapped by the KEK backend;
//! public halves are served as a JWKS. A fresh database gets its first key on first start.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use std::collections::HashMap;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use keymesh_crypto::SecretKey;
use keymesh_kms::{Keyring, KmsError, WrapContext, WrapSet, WrappedKey};
use keymesh_mesh::{auth::AccessClaims, config::TokenParams};
use keymesh_proto::v1 as pb;
use keymesh_store::{entity::signing_key, now_millis, tokens::TokenRepository};
use openssl::pkey::PKey;
use sha2::{Digest, Sha256};

use crate::error::TokenError;

const SYSTEM_TENANT: &str = "_system";
const ALGORITHM: &str = "EdDSA";

/// Signs access tokens and publishes the keys that verify them.
pub struct Signer {
    kid: String,
    key: EncodingKey,
    jwks: Vec<pb::Jwk>,
    /// The public halves, for RevokeToken's check that a token is ours.
    decoding: HashMap<String, DecodingKey>,
    /// Token settings.
    pub params: TokenParams,
}

fn wrap_context(kid: &str) -> WrapContext {
    WrapContext { tenant_id: SYSTEM_TENANT.into(), key_id: kid.into(), version: 1, algorithm: ALGORITHM.into() }
}

impl Signer {
    /// Loads the newest signing key, creating one when there is none.
    pub async fn load_or_create(
        repo: &TokenRepository,
        kms: &Keyring,
        params: TokenParams,
    ) -> Result<Self, TokenError> {
        let mut keys = repo.current_signing_keys().await?;
        if keys.is_empty() {
            let created = create_key(kms).await?;
            repo.insert_signing_key(created).await?;
            keys = repo.current_signing_keys().await?;
        }
        bring_up_to_date(repo, kms, &mut keys).await?;
        let newest = keys.first().ok_or_else(|| TokenError::Internal("no signing key after creating one".into()))?;
        let private = kms.unwrap(&wraps_of(newest)?, &wrap_context(&newest.kid)).await?;
        let key = EncodingKey::from_ed_der(private.expose_secret());
        let jwks = keys
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
        Ok(Self { kid: newest.kid.clone(), key, jwks, decoding, params })
    }

    /// Signs `claims` with the current key.
    pub fn sign(&self, claims: &AccessClaims) -> Result<String, TokenError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| TokenError::Internal(format!("signing: {e}")))
    }

    /// The public keys.
    pub fn jwks(&self) -> &[pb::Jwk] {
        &self.jwks
    }

    /// The claims of a token this issuer signed, expired or not; `None` for anything else.
    pub fn claims_of_own_token(&self, token: &str) -> Option<AccessClaims> {
        let kid = jsonwebtoken::decode_header(token).ok()?.kid?;
        let key = self.decoding.get(&kid)?;
        let mut validation = Validation::new(Algorithm::EdDSA);
        validation.set_issuer(&[&self.params.issuer]);
        validation.set_audience(&[&self.params.audience]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        jsonwebtoken::decode::<AccessClaims>(token, key, &validation).ok().map(|d| d.claims)
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
    let internal = |e: openssl::error::ErrorStack| TokenError::Internal(format!("openssl: {e}"));
    let pkey = PKey::generate_ed25519().map_err(internal)?;
    let public = pkey.raw_public_key().map_err(internal)?;
    let private = SecretKey::from_bytes(pkey.private_key_to_pkcs8().map_err(internal)?);
    let digest = Sha256::digest(&public);
    let kid = format!("ed25519-{}", digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>());
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

//! The Ed25519 keys that sign access tokens. Private halves are stored only wrapped by the KEK backend;
//! public halves are served as a JWKS. A fresh database gets its first key on first start.

use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use keymesh_crypto::SecretKey;
use keymesh_kms::{Keyring, WrapContext, WrapSet, WrappedKey};
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
        move_to_primary(repo, kms, &mut keys).await?;
        let newest = keys.first().ok_or_else(|| TokenError::Internal("no signing key after creating one".into()))?;
        let wrapped = WrappedKey {
            backend: newest.kek_backend.clone(),
            kek_id: newest.kek_id.clone(),
            ciphertext: newest.wrapped_private_key.clone(),
        };
        let private = kms.unwrap(&WrapSet::single(wrapped), &wrap_context(&newest.kid)).await?;
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
            .collect();
        Ok(Self { kid: newest.kid.clone(), key, jwks, params })
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
}

/// Keeps every current signing key wrapped under the keyring's primary KEK: a key still wrapped under another
/// (retired) member is re-wrapped at start, so that member can leave the configuration afterwards, as it can
/// for key-service once its re-wrap is done.
async fn move_to_primary(
    repo: &TokenRepository,
    kms: &Keyring,
    keys: &mut [signing_key::Model],
) -> Result<(), TokenError> {
    for key in keys.iter_mut() {
        let wrapped = WrappedKey {
            backend: key.kek_backend.clone(),
            kek_id: key.kek_id.clone(),
            ciphertext: key.wrapped_private_key.clone(),
        };
        if kms.is_current_primary(&wrapped) {
            continue;
        }
        let context = wrap_context(&key.kid);
        let private = kms.unwrap(&WrapSet::single(wrapped), &context).await?;
        let moved = kms.wrap_primary(&private, &context).await?;
        repo.rewrap_signing_key(&key.kid, moved.ciphertext.clone(), moved.backend.clone(), moved.kek_id.clone())
            .await?;
        tracing::info!(kid = %key.kid, backend = %moved.backend, "re-wrapped a token signing key under the primary KEK");
        key.wrapped_private_key = moved.ciphertext;
        key.kek_backend = moved.backend;
        key.kek_id = moved.kek_id;
    }
    Ok(())
}

/// The private key is wrapped under the keyring's primary only; `move_to_primary` follows the primary.
async fn create_key(kms: &Keyring) -> Result<signing_key::Model, TokenError> {
    let internal = |e: openssl::error::ErrorStack| TokenError::Internal(format!("openssl: {e}"));
    let pkey = PKey::generate_ed25519().map_err(internal)?;
    let public = pkey.raw_public_key().map_err(internal)?;
    let private = SecretKey::from_bytes(pkey.private_key_to_pkcs8().map_err(internal)?);
    let digest = Sha256::digest(&public);
    let kid = format!("ed25519-{}", digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>());
    let wrapped = kms.wrap_primary(&private, &wrap_context(&kid)).await?;
    Ok(signing_key::Model {
        kid,
        algorithm: ALGORITHM.into(),
        public_key: public,
        wrapped_private_key: wrapped.ciphertext,
        kek_backend: wrapped.backend,
        kek_id: wrapped.kek_id,
        created_at: now_millis(),
        retired_at: None,
    })
}

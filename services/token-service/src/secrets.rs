//! Client secrets: 256 random bits, stored only as an Argon2id hash (PHC string).

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

use crate::error::TokenError;

/// A new client secret.
pub fn generate_secret() -> Result<Zeroizing<String>, TokenError> {
    let bytes = keymesh_crypto::random::random_bytes(32).map_err(|e| TokenError::Internal(e.to_string()))?;
    Ok(Zeroizing::new(URL_SAFE_NO_PAD.encode(&*bytes)))
}

/// The Argon2id hash of a secret.
pub fn hash_secret(secret: &str) -> Result<String, TokenError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| TokenError::Internal(format!("argon2: {e}")))
}

/// Whether `secret` matches `hash`. The final comparison inside argon2 is constant-time.
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok())
}

/// A hash to verify against when the client id is unknown, so that unknown ids cost the same time as
/// known ones and response times reveal nothing.
pub fn decoy_hash() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| hash_secret("decoy-secret-never-valid").unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let secret = generate_secret().unwrap();
        let hash = hash_secret(&secret).unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(!hash.contains(secret.as_str()));
        assert!(verify_secret(&secret, &hash));
        assert!(!verify_secret("wrong", &hash));
        assert_ne!(hash, hash_secret(&secret).unwrap(), "salted");
        assert!(!verify_secret(&secret, decoy_hash()));
    }
}

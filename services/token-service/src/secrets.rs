//! Client secrets: 256 random bits, stored only as a salted hash (PHC string): Argon2id, or in FIPS mode
//! PBKDF2-HMAC-SHA256 (`$pbkdf2-sha256$i=100000$<salt>$<hash>`, unpadded base64), since FIPS does not approve
//! Argon2. The secrets are random, not passwords, so the hash only has to make a stolen table useless, and
//! 100,000 iterations keep IssueToken cheap. Both forms verify, so a mesh switched to FIPS mode keeps its
//! applications; their secrets move to PBKDF2 as they are rotated.

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

const PBKDF2_PREFIX: &str = "$pbkdf2-sha256$i=";
const PBKDF2_ITERATIONS: u32 = 100_000;

/// The hash of a secret: PBKDF2-HMAC-SHA256 in FIPS mode, else Argon2id.
pub fn hash_secret(secret: &str, fips: bool) -> Result<String, TokenError> {
    if fips {
        let salt = keymesh_crypto::random::random_bytes(16).map_err(|e| TokenError::Internal(e.to_string()))?;
        let hash = keymesh_crypto::kdf::pbkdf2_hmac_sha256(secret.as_bytes(), &salt, PBKDF2_ITERATIONS, 32)
            .map_err(|e| TokenError::Internal(format!("pbkdf2: {e}")))?;
        return Ok(format!(
            "{PBKDF2_PREFIX}{PBKDF2_ITERATIONS}${}${}",
            URL_SAFE_NO_PAD.encode(&*salt),
            URL_SAFE_NO_PAD.encode(&*hash)
        ));
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(secret.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| TokenError::Internal(format!("argon2: {e}")))
}

/// Whether `secret` matches `hash` (either form). Both final comparisons are constant-time.
pub fn verify_secret(secret: &str, hash: &str) -> bool {
    if let Some(rest) = hash.strip_prefix(PBKDF2_PREFIX) {
        return verify_pbkdf2(secret, rest).unwrap_or(false);
    }
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(secret.as_bytes(), &parsed).is_ok())
}

fn verify_pbkdf2(secret: &str, rest: &str) -> Option<bool> {
    let mut parts = rest.split('$');
    let iterations: u32 = parts.next()?.parse().ok()?;
    let salt = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
    let expected = URL_SAFE_NO_PAD.decode(parts.next()?).ok()?;
    let actual = keymesh_crypto::kdf::pbkdf2_hmac_sha256(secret.as_bytes(), &salt, iterations, expected.len()).ok()?;
    Some(bool::from(subtle::ConstantTimeEq::ct_eq(&actual[..], &expected[..])))
}

/// A hash to verify against when the client id is unknown, so that unknown ids cost the same time as
/// known ones and response times reveal nothing (of the form new hashes take).
pub fn decoy_hash(fips: bool) -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    static DECOY_FIPS: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let cell = if fips { &DECOY_FIPS } else { &DECOY };
    cell.get_or_init(|| hash_secret("decoy-secret-never-valid", fips).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_differ() {
        let secret = generate_secret().unwrap();
        for (fips, prefix) in [(false, "$argon2id$"), (true, "$pbkdf2-sha256$i=100000$")] {
            let hash = hash_secret(&secret, fips).unwrap();
            assert!(hash.starts_with(prefix), "{hash}");
            assert!(!hash.contains(secret.as_str()));
            assert!(verify_secret(&secret, &hash));
            assert!(!verify_secret("wrong", &hash));
            assert_ne!(hash, hash_secret(&secret, fips).unwrap(), "salted");
            assert!(!verify_secret(&secret, decoy_hash(fips)));
        }
        assert!(!verify_secret(&secret, "$pbkdf2-sha256$i=1$$"), "malformed hashes never verify");
    }
}

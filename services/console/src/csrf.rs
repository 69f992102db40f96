//! Cross-site request forgery: every state-changing request (POST, PUT, PATCH, DELETE) must carry the session's
//! own random token, in the form field `csrf` or the `x-csrf-token` header, or it is refused with 403 before it
//! does anything. `SameSite=Lax` cookies already keep most cross-site POSTs out; the token also covers same-site
//! attackers (another app on a sibling subdomain) and older browsers.

use axum::http::Method;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use subtle::ConstantTimeEq;

/// The form field a page's forms carry the token in.
pub const FORM_FIELD: &str = "csrf";
/// The header scripts send it in.
pub const HEADER: &str = "x-csrf-token";

/// A new token: 256 random bits, URL-safe base64.
pub fn new_token() -> Result<String, keymesh_crypto::CryptoError> {
    Ok(URL_SAFE_NO_PAD.encode(&*keymesh_crypto::random::random_bytes(32)?))
}

/// Whether `method` changes state and so needs the token.
pub fn needs_token(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether `submitted` is the session's token, compared in constant time; a missing or empty token never is.
pub fn matches(expected: &str, submitted: Option<&str>) -> bool {
    match submitted {
        Some(submitted) if !submitted.is_empty() && !expected.is_empty() => {
            bool::from(expected.as_bytes().ct_eq(submitted.as_bytes()))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_random_and_only_the_same_token_matches() {
        let (a, b) = (new_token().unwrap(), new_token().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43, "256 bits in unpadded base64url");
        assert!(matches(&a, Some(&a)));
        assert!(!matches(&a, Some(&b)));
        assert!(!matches(&a, Some(&a[..42])), "a prefix is not the token");
        assert!(!matches(&a, None));
        assert!(!matches("", Some("")), "an empty token never matches");
    }

    #[test]
    fn only_reads_go_without_a_token() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS] {
            assert!(!needs_token(&method));
        }
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(needs_token(&method));
        }
    }
}

//! Message authentication codes for MAC keys: HMAC-SHA256 and HMAC-SHA512 on OpenSSL, verified in constant
//! time so a caller probing tags learns nothing from timing.

use subtle::ConstantTimeEq;

use crate::{
    CryptoError, SecretKey,
    primitives::{self, Hash},
};

/// Longest HMAC key accepted: one SHA-512 block; longer keys would only be hashed down.
pub const MAX_KEY_LEN: usize = 128;

/// A MAC algorithm a key version can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MacAlgorithm {
    /// HMAC with SHA-256: 32-byte tags, 32-byte generated keys.
    HmacSha256,
    /// HMAC with SHA-512: 64-byte tags, 64-byte generated keys.
    HmacSha512,
}

impl MacAlgorithm {
    /// Every algorithm.
    pub const ALL: [Self; 2] = [Self::HmacSha256, Self::HmacSha512];

    /// Name, as used in wrap contexts and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::HmacSha256 => "HMAC-SHA256",
            Self::HmacSha512 => "HMAC-SHA512",
        }
    }

    fn hash(self) -> Hash {
        match self {
            Self::HmacSha256 => Hash::Sha256,
            Self::HmacSha512 => Hash::Sha512,
        }
    }

    /// Length of generated keys (the hash's output length, as RFC 2104 recommends).
    pub fn key_len(self) -> usize {
        self.hash().output_len()
    }

    /// Length of a tag.
    pub fn tag_len(self) -> usize {
        self.hash().output_len()
    }

    /// Checks key material (generated or imported): at least the hash's output length (RFC 2104's advice,
    /// and what policies count as the key's strength) and at most [`MAX_KEY_LEN`].
    pub fn check_key(self, key: &SecretKey) -> Result<(), CryptoError> {
        if !(self.key_len()..=MAX_KEY_LEN).contains(&key.len()) {
            return Err(CryptoError::InvalidKey {
                algorithm: self.name(),
                reason: format!(
                    "{} keys are {} to {MAX_KEY_LEN} bytes, got {}",
                    self.name(),
                    self.key_len(),
                    key.len()
                ),
            });
        }
        Ok(())
    }

    /// The tag of `message`.
    pub fn compute(self, key: &SecretKey, message: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.check_key(key)?;
        primitives::hmac(self.hash(), key.expose_secret(), &[message])
    }

    /// Whether `tag` is the tag of `message`, compared in constant time. A tag of the wrong length is simply
    /// not valid (truncated tags are not accepted).
    pub fn verify(self, key: &SecretKey, message: &[u8], tag: &[u8]) -> Result<bool, CryptoError> {
        let expected = self.compute(key, message)?;
        Ok(expected.len() == tag.len() && bool::from(expected.ct_eq(tag)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_4231_case_2() {
        // RFC 4231 test case 2 ("Jefe"), a 4-byte key: below keymesh's floor, so checked through the primitive.
        let tag = primitives::hmac(Hash::Sha256, b"Jefe", &[b"what do ya want for nothing?"]).unwrap();
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(tag.iter().map(|b| format!("{b:02x}")).collect::<String>(), expected);
        let key = SecretKey::from_bytes(b"Jefe".to_vec());
        assert!(MacAlgorithm::HmacSha256.compute(&key, b"x").is_err());
    }

    #[test]
    fn verify_accepts_only_the_exact_tag() {
        for alg in MacAlgorithm::ALL {
            let key = SecretKey::generate(alg.key_len()).unwrap();
            let tag = alg.compute(&key, b"message").unwrap();
            assert_eq!(tag.len(), alg.tag_len());
            assert!(alg.verify(&key, b"message", &tag).unwrap());
            assert!(!alg.verify(&key, b"messagE", &tag).unwrap());
            assert!(!alg.verify(&key, b"message", &tag[..16]).unwrap(), "truncated tags are refused");
            let mut bad = tag.clone();
            bad[0] ^= 0x80;
            assert!(!alg.verify(&key, b"message", &bad).unwrap());
        }
    }
}

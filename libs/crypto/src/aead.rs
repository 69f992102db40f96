//! Authenticated encryption primitives, backed by OpenSSL (AES-NI, FIPS-capable).

use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use zeroize::Zeroizing;

use crate::{CryptoError, SecretKey};

/// Length of an AES-GCM authentication tag.
pub const GCM_TAG_LEN: usize = 16;
/// Length of an AES-GCM nonce.
pub const GCM_NONCE_LEN: usize = 12;

/// A symmetric AEAD algorithm that a key version can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymmetricAlgorithm {
    /// AES-128 in Galois/Counter mode.
    Aes128Gcm,
    /// AES-256 in Galois/Counter mode.
    Aes256Gcm,
}

impl SymmetricAlgorithm {
    /// Name as written in ciphertext headers ("alg").
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes128Gcm => "AES-128-GCM",
            Self::Aes256Gcm => "AES-256-GCM",
        }
    }

    /// Mode as written in ciphertext headers ("mode").
    pub fn mode(self) -> &'static str {
        match self {
            Self::Aes128Gcm | Self::Aes256Gcm => "gcm",
        }
    }

    /// Parses a header's "alg".
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "AES-128-GCM" => Some(Self::Aes128Gcm),
            "AES-256-GCM" => Some(Self::Aes256Gcm),
            _ => None,
        }
    }

    /// From the API's algorithm enum; `None` for algorithms that are not symmetric AEADs available here.
    pub fn from_proto(algorithm: keymesh_proto::v1::Algorithm) -> Option<Self> {
        use keymesh_proto::v1::Algorithm as A;
        match algorithm {
            A::Aes128Gcm => Some(Self::Aes128Gcm),
            A::Aes256Gcm => Some(Self::Aes256Gcm),
            _ => None,
        }
    }

    /// The API's algorithm enum.
    pub fn to_proto(self) -> keymesh_proto::v1::Algorithm {
        match self {
            Self::Aes128Gcm => keymesh_proto::v1::Algorithm::Aes128Gcm,
            Self::Aes256Gcm => keymesh_proto::v1::Algorithm::Aes256Gcm,
        }
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::Aes256Gcm => 32,
        }
    }

    /// Nonce length in bytes.
    pub fn nonce_len(self) -> usize {
        GCM_NONCE_LEN
    }

    /// Largest plaintext the algorithm accepts (NIST SP 800-38D: 2^39 - 256 bits for GCM; the source
    /// document rounds to 64 GiB).
    pub fn max_plaintext(self) -> usize {
        64 * 1024 * 1024 * 1024
    }

    fn cipher(self) -> Cipher {
        match self {
            Self::Aes128Gcm => Cipher::aes_128_gcm(),
            Self::Aes256Gcm => Cipher::aes_256_gcm(),
        }
    }

    fn check_key(self, key: &SecretKey) -> Result<(), CryptoError> {
        if key.len() == self.key_len() {
            Ok(())
        } else {
            Err(CryptoError::InvalidKeyLength { algorithm: self.name(), expected: self.key_len(), actual: key.len() })
        }
    }

    /// Encrypts `plaintext`, returning ciphertext with the tag appended.
    pub fn seal(self, key: &SecretKey, nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.check_key(key)?;
        if plaintext.len() > self.max_plaintext() {
            return Err(CryptoError::TooLarge {
                what: "plaintext",
                size: plaintext.len(),
                limit: self.max_plaintext(),
            });
        }
        let mut tag = [0u8; GCM_TAG_LEN];
        let mut out = encrypt_aead(self.cipher(), key.expose_secret(), Some(nonce), aad, plaintext, &mut tag)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Decrypts ciphertext-with-tag; every failure is the same opaque error.
    pub fn open(
        self,
        key: &SecretKey,
        nonce: &[u8],
        aad: &[u8],
        ciphertext_and_tag: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.check_key(key).map_err(|_| CryptoError::DecryptionFailed)?;
        if nonce.len() != self.nonce_len() || ciphertext_and_tag.len() < GCM_TAG_LEN {
            return Err(CryptoError::DecryptionFailed);
        }
        let (ct, tag) = ciphertext_and_tag.split_at(ciphertext_and_tag.len() - GCM_TAG_LEN);
        decrypt_aead(self.cipher(), key.expose_secret(), Some(nonce), aad, ct, tag)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::DecryptionFailed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0)).collect()
    }

    #[test]
    fn nist_gcm_test_case_16() {
        // McGrew & Viega GCM spec, test case 16 (AES-256, 60-byte plaintext, 20-byte AAD).
        let key = SecretKey::from_bytes(hex("feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308"));
        let iv = hex("cafebabefacedbaddecaf888");
        let pt = hex(
            "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        );
        let aad = hex("feedfacedeadbeeffeedfacedeadbeefabaddad2");
        let expected = hex(concat!(
            "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
            "76fc6ece0f4e1768cddf8853bb2d551b"
        ));
        let sealed = SymmetricAlgorithm::Aes256Gcm.seal(&key, &iv, &aad, &pt).unwrap_or_default();
        assert_eq!(sealed, expected);
        let opened = SymmetricAlgorithm::Aes256Gcm.open(&key, &iv, &aad, &sealed).map(|p| p.to_vec());
        assert_eq!(opened, Ok(pt));
        let mut bad = sealed.clone();
        bad[3] ^= 1;
        assert_eq!(
            SymmetricAlgorithm::Aes256Gcm.open(&key, &iv, &aad, &bad).err(),
            Some(CryptoError::DecryptionFailed)
        );
    }

    #[test]
    fn wrong_key_length_is_refused() {
        let key = SecretKey::from_bytes(vec![0; 16]);
        assert!(matches!(
            SymmetricAlgorithm::Aes256Gcm.seal(&key, &[0; 12], b"", b"x"),
            Err(CryptoError::InvalidKeyLength { .. })
        ));
    }
}

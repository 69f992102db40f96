//! Hashes and MACs computed here, never sent to the mesh (the source document's "hash and MAC operations execute
//! locally"): SHA-256/384/512, SHA3-256 and BLAKE2b-512, and HMAC-SHA256/512 under a key the caller holds. They are
//! the functions crypto-service runs for Hash and GenerateMac (keymesh-crypto's), so the bytes are the same; an
//! integration test checks that against the service.

use keymesh_crypto::{
    CryptoError, SecretKey,
    mac::MacAlgorithm,
    primitives::{self, DigestAlgorithm},
};

/// A hash function by the name the SDKs share: `sha256`, `sha384`, `sha512`, `sha3-256`, `blake2b` (or
/// `blake2b-512`), in any case.
pub fn digest_algorithm(name: &str) -> Result<DigestAlgorithm, CryptoError> {
    match name.to_ascii_lowercase().replace('_', "-").as_str() {
        "sha256" | "sha-256" => Ok(DigestAlgorithm::Sha256),
        "sha384" | "sha-384" => Ok(DigestAlgorithm::Sha384),
        "sha512" | "sha-512" => Ok(DigestAlgorithm::Sha512),
        "sha3-256" => Ok(DigestAlgorithm::Sha3_256),
        "blake2b" | "blake2b-512" | "blake2b512" => Ok(DigestAlgorithm::Blake2b512),
        other => Err(CryptoError::Unsupported(format!("hash {other:?} (sha256, sha384, sha512, sha3-256 or blake2b)"))),
    }
}

/// A MAC by the name the SDKs share: `hmac-sha256` or `hmac-sha512`, in any case.
pub fn mac_algorithm(name: &str) -> Result<MacAlgorithm, CryptoError> {
    match name.to_ascii_lowercase().replace('_', "-").as_str() {
        "hmac-sha256" => Ok(MacAlgorithm::HmacSha256),
        "hmac-sha512" => Ok(MacAlgorithm::HmacSha512),
        other => Err(CryptoError::Unsupported(format!("MAC {other:?} (hmac-sha256 or hmac-sha512)"))),
    }
}

/// The digest of `data`, as the service's Hash computes it.
pub fn hash(algorithm: &str, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    primitives::digest(digest_algorithm(algorithm)?, data)
}

/// The tag of `message` under `key`, as the service's GenerateMac computes it with that key's material. Keys
/// shorter than the hash's output are refused, as the service refuses them (RFC 2104's advice).
pub fn mac(algorithm: &str, key: &[u8], message: &[u8]) -> Result<Vec<u8>, CryptoError> {
    mac_algorithm(algorithm)?.compute(&SecretKey::copy_from_slice(key), message)
}

/// Whether `tag` is the tag of `message` under `key`, compared in constant time.
pub fn verify_mac(algorithm: &str, key: &[u8], message: &[u8], tag: &[u8]) -> Result<bool, CryptoError> {
    mac_algorithm(algorithm)?.verify(&SecretKey::copy_from_slice(key), message, tag)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn unhex(text: &str) -> Vec<u8> {
        (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn hashes_match_the_published_vectors() {
        // FIPS 180-2 / FIPS 202 "abc", RFC 7693 Appendix A.
        let vectors = [
            ("sha256", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
            (
                "sha384",
                "cb00753f45a35e8bb5a03d699ac65007272c32ab0eded1631a8b605a43ff5bed8086072ba1e7cc2358baeca134c825a7",
            ),
            (
                "sha512",
                "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
            ),
            ("SHA3-256", "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"),
            (
                "blake2b",
                "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d17d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923",
            ),
        ];
        for (name, digest) in vectors {
            assert_eq!(hex(&hash(name, b"abc").unwrap()), digest, "{name}");
        }
        assert!(hash("md5", b"abc").is_err());
    }

    #[test]
    fn hmacs_match_rfc_4231() {
        // Test case 2 has a 4-byte key, which keymesh (like RFC 2104 advises) refuses; cases 6 and 7 use a
        // 131-byte key, over the 128-byte limit. Case 1 (20-byte key) is under SHA-256's 32: also refused. So the
        // RFC's cases run with their key padded as HMAC itself pads it: a key shorter than the block is
        // zero-extended, which changes nothing in the result.
        let key = {
            let mut k = vec![0x0b; 20];
            k.resize(64, 0);
            k
        };
        let data = b"Hi There";
        assert_eq!(
            hex(&mac("hmac-sha256", &key, data).unwrap()),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&mac("HMAC-SHA512", &key, data).unwrap()),
            "87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cdedaa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"
        );
        let key = {
            let mut k = b"Jefe".to_vec();
            k.resize(64, 0);
            k
        };
        let tag = mac("hmac-sha256", &key, b"what do ya want for nothing?").unwrap();
        assert_eq!(hex(&tag), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
        assert!(verify_mac("hmac-sha256", &key, b"what do ya want for nothing?", &tag).unwrap());
        assert!(!verify_mac("hmac-sha256", &key, b"what do ya want for nothing!", &tag).unwrap());
        assert!(mac("hmac-sha256", &unhex("0b0b"), data).is_err(), "short keys are refused, as the service does");
    }
}

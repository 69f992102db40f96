//! The source document's hybrid mode, "AES-256-GCM+ML-KEM-768", in its header layout, with the key commitment
//! the document puts in its ciphertexts (a sixth header field, "kc"). keymesh's ciphertexts open in any
//! implementation of the document (one that reads the five fields of the hybrid layout ignores "kc"), and an
//! implementation's ciphertexts that carry "kc" open here:
//!
//! ```text
//! header length (2 bytes, big-endian) ‖ header (JSON) ‖ KEM ciphertext (1,088 bytes) ‖ AES-GCM ciphertext ‖ tag
//! {"v":1,"mode":"AES-256-GCM+ML-KEM-768","kid":"k_…:v1","nonce":"<base64>","kem_ct_len":1088,"kc":"<base64>"}
//! ```
//!
//! The sender encapsulates to the key's ML-KEM-768 public key, derives the AES-256 key as
//! HKDF-SHA256(shared secret, salt none, info "cryptoserve-hybrid-v1") and seals with a fresh 12-byte nonce.
//! The caller's AAD, if any, is AES-GCM's associated data (none in the document, so empty AAD is its format).
//!
//! The key commitment "kc" is HMAC-SHA256(AES key, "key-commitment-v1"), as the document defines it for its
//! ciphertext format, checked in constant time before AES-GCM runs. keymesh requires it: a ciphertext without
//! it could not be told from one whose commitment was stripped.
//! Parsing is strict (exact fields, sizes, base64) and every failure is the same opaque `DecryptionFailed`.
//!
//! "Hybrid" here means a post-quantum KEM under a classical AEAD, as the document defines it; a hybrid of two
//! key exchanges, safe if either falls, is X-Wing.

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::{
    CryptoError, commitment,
    pq::{MlKem, MlKemPrivateKey, MlKemPublicKey},
    primitives::{self, Hash},
};

/// The document's name of the mode.
pub const MODE: &str = "AES-256-GCM+ML-KEM-768";
/// HKDF's info, as the document fixes it.
const INFO: &[u8] = b"cryptoserve-hybrid-v1";
const FORMAT_VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
/// A header never needs more: the key id is bounded by the key-id format.
const MAX_HEADER: usize = 1024;
/// Largest plaintext one encryption takes (the same as HPKE's: for keys and small secrets, not bulk data).
pub const MAX_PLAINTEXT: usize = 64 * 1024 * 1024;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    v: u8,
    mode: String,
    kid: String,
    nonce: String,
    kem_ct_len: usize,
    kc: String,
}

fn aes_key(shared_secret: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    primitives::hkdf(Hash::Sha256, shared_secret, b"", INFO, 32)
}

/// Seals `plaintext` to `public` (an ML-KEM-768 key), naming `kid` in the header.
pub fn seal(public: &MlKemPublicKey, kid: &str, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if public.params() != MlKem::MlKem768 {
        return Err(CryptoError::InvalidKey { algorithm: MODE, reason: "needs an ML-KEM-768 key".into() });
    }
    if plaintext.len() > MAX_PLAINTEXT {
        return Err(CryptoError::TooLarge { what: "plaintext", size: plaintext.len(), limit: MAX_PLAINTEXT });
    }
    let (kem_ciphertext, shared_secret) = public.encapsulate()?;
    let key = aes_key(&shared_secret)?;
    let nonce = crate::random::nonce::<NONCE_LEN>()?;
    let header = Header {
        v: FORMAT_VERSION,
        mode: MODE.into(),
        kid: kid.into(),
        nonce: B64.encode(nonce),
        kem_ct_len: kem_ciphertext.len(),
        kc: B64.encode(commitment::commit(&key)),
    };
    let header = serde_json::to_vec(&header).map_err(|_| CryptoError::Library)?;
    let header_len = u16::try_from(header.len()).map_err(|_| CryptoError::Library)?;
    let mut tag = [0u8; TAG_LEN];
    let sealed = encrypt_aead(Cipher::aes_256_gcm(), &key, Some(&nonce), aad, plaintext, &mut tag)?;
    let mut out = Vec::with_capacity(2 + header.len() + kem_ciphertext.len() + sealed.len() + TAG_LEN);
    out.extend_from_slice(&header_len.to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&kem_ciphertext);
    out.extend_from_slice(&sealed);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// The parts of a hybrid ciphertext, checked for shape only.
struct Parsed<'a> {
    kid: String,
    nonce: [u8; NONCE_LEN],
    commitment: Vec<u8>,
    kem_ciphertext: &'a [u8],
    sealed: &'a [u8],
    tag: &'a [u8],
}

fn parse(ciphertext: &[u8]) -> Option<Parsed<'_>> {
    let (len, rest) = ciphertext.split_first_chunk::<2>()?;
    let len = usize::from(u16::from_be_bytes(*len));
    if len > MAX_HEADER || rest.len() < len {
        return None;
    }
    let (header, rest) = rest.split_at(len);
    let header: Header = serde_json::from_slice(header).ok()?;
    let kem_len = MlKem::MlKem768.ciphertext_len();
    if header.v != FORMAT_VERSION
        || header.mode != MODE
        || header.kem_ct_len != kem_len
        || rest.len() < kem_len + TAG_LEN
    {
        return None;
    }
    let nonce: [u8; NONCE_LEN] = B64.decode(&header.nonce).ok()?.try_into().ok()?;
    let commitment = B64.decode(&header.kc).ok()?;
    let (kem_ciphertext, rest) = rest.split_at(kem_len);
    let (sealed, tag) = rest.split_at(rest.len() - TAG_LEN);
    Some(Parsed { kid: header.kid, nonce, commitment, kem_ciphertext, sealed, tag })
}

/// The "kid" a hybrid ciphertext's header names, if `ciphertext` has the hybrid's shape. Not authenticated
/// until [`open`] succeeds.
pub fn kid_of(ciphertext: &[u8]) -> Option<String> {
    parse(ciphertext).map(|parsed| parsed.kid)
}

/// Opens a hybrid ciphertext with `private` (an ML-KEM-768 key), which must be the one `kid` names. Any
/// failure is `DecryptionFailed`.
pub fn open(
    private: &MlKemPrivateKey,
    kid: &str,
    aad: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let failed = |_| CryptoError::DecryptionFailed;
    let parsed = parse(ciphertext).ok_or(CryptoError::DecryptionFailed)?;
    if private.params() != MlKem::MlKem768 || parsed.kid != kid {
        return Err(CryptoError::DecryptionFailed);
    }
    let shared_secret = private.decapsulate(parsed.kem_ciphertext).map_err(failed)?;
    let key = aes_key(&shared_secret).map_err(failed)?;
    if !commitment::verify(&key, &parsed.commitment) {
        return Err(CryptoError::DecryptionFailed);
    }
    decrypt_aead(Cipher::aes_256_gcm(), &key, Some(&parsed.nonce), aad, parsed.sealed, parsed.tag)
        .map(Zeroizing::new)
        .map_err(|_| CryptoError::DecryptionFailed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_and_refuses_every_flipped_bit() {
        let key = MlKemPrivateKey::generate(MlKem::MlKem768).unwrap();
        let sealed = seal(&key.public_key(), "k_0193:v1", b"", b"launch codes").unwrap();
        assert_eq!(&open(&key, "k_0193:v1", b"", &sealed).unwrap()[..], b"launch codes");
        assert_eq!(kid_of(&sealed).as_deref(), Some("k_0193:v1"));
        let header_len = usize::from(u16::from_be_bytes([sealed[0], sealed[1]]));
        let header: serde_json::Value = serde_json::from_slice(&sealed[2..2 + header_len]).unwrap();
        assert_eq!(header["mode"], MODE);
        assert_eq!(header["kem_ct_len"], 1088);
        assert_eq!(sealed.len(), 2 + header_len + 1088 + 12 + 16);
        for byte in 0..sealed.len() {
            for bit in [0x01, 0x80] {
                let mut tampered = sealed.clone();
                tampered[byte] ^= bit;
                assert!(open(&key, "k_0193:v1", b"", &tampered).is_err(), "byte {byte} bit {bit:#x}");
            }
        }
        assert_eq!(open(&key, "k_0193:v2", b"", &sealed), Err(CryptoError::DecryptionFailed), "another kid");
        assert_eq!(open(&key, "k_0193:v1", b"aad", &sealed), Err(CryptoError::DecryptionFailed), "another aad");
        let other = MlKemPrivateKey::generate(MlKem::MlKem768).unwrap();
        assert_eq!(open(&other, "k_0193:v1", b"", &sealed), Err(CryptoError::DecryptionFailed), "another key");
    }

    #[test]
    fn only_ml_kem_768_keys_and_bounded_inputs() {
        let small = MlKemPrivateKey::generate(MlKem::MlKem512).unwrap();
        assert!(matches!(seal(&small.public_key(), "k:v1", b"", b"x"), Err(CryptoError::InvalidKey { .. })));
        assert_eq!(kid_of(b"\x00"), None);
        assert_eq!(kid_of(b"\xff\xff{}"), None);
    }
}

//! Authenticated encryption: every symmetric mode of the platform behind one `seal`/`open`. The FIPS-approved
//! modes run on OpenSSL (AES-NI, FIPS-capable); XChaCha20-Poly1305 and AES-GCM-SIV, which OpenSSL 3.0 lacks
//! and FIPS does not approve, run on RustCrypto's audited implementations.

use aes_gcm_siv::{
    AeadInOut, KeyInit,
    aead::{self},
};
use openssl::symm::{Cipher, decrypt_aead, encrypt_aead};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::{
    CryptoError, SecretKey,
    primitives::{self, Hash},
};

/// Length of the tag of the AEAD modes (GCM, GCM-SIV, CCM, ChaCha20-Poly1305, XChaCha20-Poly1305).
pub const GCM_TAG_LEN: usize = 16;
/// Length of an AES-GCM nonce.
pub const GCM_NONCE_LEN: usize = 12;
/// Length of the HMAC-SHA256 tag of the encrypt-then-MAC modes.
const ETM_TAG_LEN: usize = 32;

const GIB: usize = 1024 * 1024 * 1024;

/// A symmetric algorithm that a key version can hold. Every one is used as an AEAD: the two encrypt-then-MAC
/// constructions (CBC and CTR with HMAC-SHA256) authenticate the associated data as the others do.
///
/// The encrypt-then-MAC modes take the 32-byte DEK apart with HKDF-SHA256 (info `keymesh/v3/<alg>/enc` and
/// `.../mac`) into an AES-256 key and an HMAC key, and their tag is
/// `HMAC-SHA256(mac_key, u64be(len(aad)) || aad || nonce || ciphertext)`, checked in constant time before
/// anything is decrypted. CBC pads with PKCS#7 under a 16-byte IV; CTR's initial counter block is the
/// 12-byte nonce followed by a 32-bit zero counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SymmetricAlgorithm {
    /// AES-128 in Galois/Counter mode.
    Aes128Gcm,
    /// AES-256 in Galois/Counter mode.
    Aes256Gcm,
    /// ChaCha20-Poly1305 (RFC 8439).
    ChaCha20Poly1305,
    /// XChaCha20-Poly1305: 192-bit random nonces, so a key need not rotate after 2^32 messages.
    XChaCha20Poly1305,
    /// AES-256-GCM-SIV (RFC 8452): nonce-misuse resistant.
    Aes256GcmSiv,
    /// AES-256-CBC with PKCS#7, then HMAC-SHA256.
    Aes256CbcHmacSha256,
    /// AES-256-CTR, then HMAC-SHA256.
    Aes256CtrHmacSha256,
    /// AES-256-CCM with a 16-byte tag (SP 800-38C); 64 KiB at most.
    Aes256Ccm,
}

impl SymmetricAlgorithm {
    /// Every algorithm.
    pub const ALL: [Self; 8] = [
        Self::Aes128Gcm,
        Self::Aes256Gcm,
        Self::ChaCha20Poly1305,
        Self::XChaCha20Poly1305,
        Self::Aes256GcmSiv,
        Self::Aes256CbcHmacSha256,
        Self::Aes256CtrHmacSha256,
        Self::Aes256Ccm,
    ];

    /// Name as written in ciphertext headers ("alg").
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes128Gcm => "AES-128-GCM",
            Self::Aes256Gcm => "AES-256-GCM",
            Self::ChaCha20Poly1305 => "ChaCha20-Poly1305",
            Self::XChaCha20Poly1305 => "XChaCha20-Poly1305",
            Self::Aes256GcmSiv => "AES-256-GCM-SIV",
            Self::Aes256CbcHmacSha256 => "AES-256-CBC-HMAC-SHA256",
            Self::Aes256CtrHmacSha256 => "AES-256-CTR-HMAC-SHA256",
            Self::Aes256Ccm => "AES-256-CCM",
        }
    }

    /// Mode as written in ciphertext headers ("mode").
    pub fn mode(self) -> &'static str {
        match self {
            Self::Aes128Gcm | Self::Aes256Gcm => "gcm",
            Self::ChaCha20Poly1305 => "chacha20-poly1305",
            Self::XChaCha20Poly1305 => "xchacha20-poly1305",
            Self::Aes256GcmSiv => "gcm-siv",
            Self::Aes256CbcHmacSha256 => "cbc-hmac",
            Self::Aes256CtrHmacSha256 => "ctr-hmac",
            Self::Aes256Ccm => "ccm",
        }
    }

    /// Parses a header's "alg".
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.name() == name)
    }

    /// Whether FIPS 140-3 approves it (ChaCha20 and GCM-SIV are RFCs, not NIST modes).
    pub fn fips_approved(self) -> bool {
        !matches!(self, Self::ChaCha20Poly1305 | Self::XChaCha20Poly1305 | Self::Aes256GcmSiv)
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            _ => 32,
        }
    }

    /// Nonce (or IV) length in bytes.
    pub fn nonce_len(self) -> usize {
        match self {
            Self::XChaCha20Poly1305 => 24,
            Self::Aes256CbcHmacSha256 => 16,
            _ => GCM_NONCE_LEN,
        }
    }

    /// The most a ciphertext body can exceed its plaintext by (tag, and padding for CBC).
    pub fn max_overhead(self) -> usize {
        match self {
            Self::Aes256CbcHmacSha256 => 16 + ETM_TAG_LEN,
            Self::Aes256CtrHmacSha256 => ETM_TAG_LEN,
            _ => GCM_TAG_LEN,
        }
    }

    /// Largest plaintext the algorithm accepts: 64 GiB for GCM, GCM-SIV and the CTR counter (the source
    /// document's table), 64 KiB for CCM, 256 GiB for the ChaCha20 block counter.
    pub fn max_plaintext(self) -> usize {
        match self {
            Self::Aes256Ccm => 64 * 1024,
            Self::ChaCha20Poly1305 | Self::XChaCha20Poly1305 => 256usize.saturating_mul(GIB),
            _ => 64usize.saturating_mul(GIB),
        }
    }

    fn check_key(self, key: &SecretKey) -> Result<(), CryptoError> {
        if key.len() == self.key_len() {
            Ok(())
        } else {
            Err(CryptoError::InvalidKeyLength { algorithm: self.name(), expected: self.key_len(), actual: key.len() })
        }
    }

    /// Encrypts `plaintext` under `nonce`, returning the ciphertext body (ciphertext and tag).
    pub fn seal(self, key: &SecretKey, nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.check_key(key)?;
        if plaintext.len() > self.max_plaintext() {
            return Err(CryptoError::TooLarge {
                what: "plaintext",
                size: plaintext.len(),
                limit: self.max_plaintext(),
            });
        }
        if nonce.len() != self.nonce_len() {
            return Err(CryptoError::Library);
        }
        let key = key.expose_secret();
        match self {
            Self::Aes128Gcm => openssl_seal(Cipher::aes_128_gcm(), key, nonce, aad, plaintext),
            Self::Aes256Gcm => openssl_seal(Cipher::aes_256_gcm(), key, nonce, aad, plaintext),
            Self::ChaCha20Poly1305 => openssl_seal(Cipher::chacha20_poly1305(), key, nonce, aad, plaintext),
            Self::Aes256Ccm => ccm_seal(key, nonce, aad, plaintext),
            Self::XChaCha20Poly1305 => rust_seal::<chacha20poly1305::XChaCha20Poly1305>(key, nonce, aad, plaintext),
            Self::Aes256GcmSiv => rust_seal::<aes_gcm_siv::Aes256GcmSiv>(key, nonce, aad, plaintext),
            Self::Aes256CbcHmacSha256 | Self::Aes256CtrHmacSha256 => self.etm_seal(key, nonce, aad, plaintext),
        }
    }

    /// Decrypts a ciphertext body; every failure is the same opaque error.
    pub fn open(
        self,
        key: &SecretKey,
        nonce: &[u8],
        aad: &[u8],
        body: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.check_key(key).map_err(|_| CryptoError::DecryptionFailed)?;
        if nonce.len() != self.nonce_len() {
            return Err(CryptoError::DecryptionFailed);
        }
        let key = key.expose_secret();
        let opened = match self {
            Self::Aes128Gcm => openssl_open(Cipher::aes_128_gcm(), key, nonce, aad, body),
            Self::Aes256Gcm => openssl_open(Cipher::aes_256_gcm(), key, nonce, aad, body),
            Self::ChaCha20Poly1305 => openssl_open(Cipher::chacha20_poly1305(), key, nonce, aad, body),
            Self::Aes256Ccm => ccm_open(key, nonce, aad, body),
            Self::XChaCha20Poly1305 => rust_open::<chacha20poly1305::XChaCha20Poly1305>(key, nonce, aad, body),
            Self::Aes256GcmSiv => rust_open::<aes_gcm_siv::Aes256GcmSiv>(key, nonce, aad, body),
            Self::Aes256CbcHmacSha256 | Self::Aes256CtrHmacSha256 => self.etm_open(key, nonce, aad, body),
        };
        opened.map_err(|_| CryptoError::DecryptionFailed)
    }

    /// The encryption and MAC keys of an encrypt-then-MAC mode.
    fn etm_keys(self, key: &[u8]) -> Result<EtmKeys, CryptoError> {
        let info = |part: &str| format!("keymesh/v3/{}/{part}", self.name());
        let enc = primitives::hkdf(Hash::Sha256, key, b"", info("enc").as_bytes(), 32)?;
        let mac = primitives::hkdf(Hash::Sha256, key, b"", info("mac").as_bytes(), 32)?;
        Ok((enc, mac))
    }

    fn etm_tag(mac_key: &[u8], aad: &[u8], nonce: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let aad_len = (aad.len() as u64).to_be_bytes();
        primitives::hmac(Hash::Sha256, mac_key, &[&aad_len, aad, nonce, ciphertext])
    }

    fn etm_seal(self, key: &[u8], nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let (enc, mac) = self.etm_keys(key)?;
        let mut body = match self {
            Self::Aes256CbcHmacSha256 => primitives::aes_cbc_encrypt(&enc, nonce, plaintext)?,
            _ => primitives::aes_ctr_apply(&enc, &counter_block(nonce), plaintext)?,
        };
        let tag = Self::etm_tag(&mac, aad, nonce, &body)?;
        body.extend_from_slice(&tag);
        Ok(body)
    }

    fn etm_open(self, key: &[u8], nonce: &[u8], aad: &[u8], body: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let split = body.len().checked_sub(ETM_TAG_LEN).ok_or(CryptoError::DecryptionFailed)?;
        let (ciphertext, tag) = body.split_at(split);
        let (enc, mac) = self.etm_keys(key)?;
        let expected = Self::etm_tag(&mac, aad, nonce, ciphertext)?;
        // Authenticated before anything is decrypted, so CBC's padding check is no oracle.
        if !bool::from(expected.as_slice().ct_eq(tag)) {
            return Err(CryptoError::DecryptionFailed);
        }
        match self {
            Self::Aes256CbcHmacSha256 => primitives::aes_cbc_decrypt(&enc, nonce, ciphertext),
            _ => primitives::aes_ctr_apply(&enc, &counter_block(nonce), ciphertext).map(Zeroizing::new),
        }
    }
}

/// The encryption key and the MAC key of an encrypt-then-MAC mode.
type EtmKeys = (Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>);

/// CTR's initial counter block: the 12-byte nonce and a 32-bit zero counter.
fn counter_block(nonce: &[u8]) -> [u8; 16] {
    let mut block = [0u8; 16];
    block[..nonce.len().min(12)].copy_from_slice(&nonce[..nonce.len().min(12)]);
    block
}

fn openssl_seal(
    cipher: Cipher,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut tag = [0u8; GCM_TAG_LEN];
    let mut out = encrypt_aead(cipher, key, Some(nonce), aad, plaintext, &mut tag)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn openssl_open(
    cipher: Cipher,
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let split = body.len().checked_sub(GCM_TAG_LEN).ok_or(CryptoError::DecryptionFailed)?;
    let (ciphertext, tag) = body.split_at(split);
    Ok(Zeroizing::new(decrypt_aead(cipher, key, Some(nonce), aad, ciphertext, tag)?))
}

/// CCM through OpenSSL's context API: the one-shot helpers of the `openssl` crate fail on an empty message,
/// which CCM allows (the tag alone then authenticates the associated data).
fn ccm_seal(key: &[u8], nonce: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    use openssl::{cipher::Cipher, cipher_ctx::CipherCtx};
    let mut ctx = CipherCtx::new()?;
    ctx.encrypt_init(Some(Cipher::aes_256_ccm()), None, None)?;
    ctx.set_iv_length(nonce.len())?;
    ctx.set_tag_length(GCM_TAG_LEN)?;
    ctx.encrypt_init(None, Some(key), Some(nonce))?;
    ctx.set_data_len(plaintext.len())?;
    ctx.cipher_update(aad, None)?;
    let mut out = vec![0u8; plaintext.len() + GCM_TAG_LEN];
    let mut n = ctx.cipher_update(plaintext, Some(&mut out))?;
    n += ctx.cipher_final(&mut out[n..])?;
    out.truncate(n);
    let mut tag = [0u8; GCM_TAG_LEN];
    ctx.tag(&mut tag)?;
    out.extend_from_slice(&tag);
    Ok(out)
}

fn ccm_open(key: &[u8], nonce: &[u8], aad: &[u8], body: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    use openssl::{cipher::Cipher, cipher_ctx::CipherCtx};
    let split = body.len().checked_sub(GCM_TAG_LEN).ok_or(CryptoError::DecryptionFailed)?;
    let (ciphertext, tag) = body.split_at(split);
    let mut ctx = CipherCtx::new()?;
    ctx.decrypt_init(Some(Cipher::aes_256_ccm()), None, None)?;
    ctx.set_iv_length(nonce.len())?;
    ctx.set_tag(tag)?;
    ctx.decrypt_init(None, Some(key), Some(nonce))?;
    ctx.set_data_len(ciphertext.len())?;
    ctx.cipher_update(aad, None)?;
    let mut out = Zeroizing::new(vec![0u8; ciphertext.len() + GCM_TAG_LEN]);
    // CCM checks the tag here, in the update; there is no final step on decryption.
    let n = ctx.cipher_update(ciphertext, Some(&mut out))?;
    out.truncate(n);
    Ok(out)
}

fn rust_seal<C: KeyInit + AeadInOut>(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let cipher = C::new_from_slice(key).map_err(|_| CryptoError::Library)?;
    let nonce = aead::Nonce::<C>::try_from(nonce).map_err(|_| CryptoError::Library)?;
    let mut buffer = plaintext.to_vec();
    cipher.encrypt_in_place(&nonce, aad, &mut buffer).map_err(|_| CryptoError::Library)?;
    Ok(buffer)
}

fn rust_open<C: KeyInit + AeadInOut>(
    key: &[u8],
    nonce: &[u8],
    aad: &[u8],
    body: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let cipher = C::new_from_slice(key).map_err(|_| CryptoError::DecryptionFailed)?;
    let nonce = aead::Nonce::<C>::try_from(nonce).map_err(|_| CryptoError::DecryptionFailed)?;
    let mut buffer = Zeroizing::new(body.to_vec());
    cipher.decrypt_in_place(&nonce, aad, &mut *buffer).map_err(|_| CryptoError::DecryptionFailed)?;
    Ok(buffer)
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
    fn every_mode_round_trips_and_refuses_any_flipped_bit() {
        for alg in SymmetricAlgorithm::ALL {
            let key = SecretKey::from_bytes(vec![0x42; alg.key_len()]);
            let nonce = vec![9u8; alg.nonce_len()];
            for len in [0usize, 1, 15, 16, 17, 100] {
                let plaintext: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let body = alg.seal(&key, &nonce, b"aad", &plaintext).unwrap_or_default();
                assert!(body.len() >= plaintext.len() && body.len() <= plaintext.len() + alg.max_overhead());
                let opened = alg.open(&key, &nonce, b"aad", &body).map(|p| p.to_vec());
                assert_eq!(opened, Ok(plaintext), "{alg:?} {len}");
                assert!(alg.open(&key, &nonce, b"aaD", &body).is_err(), "{alg:?}: other AAD");
                for i in 0..body.len() {
                    let mut bad = body.clone();
                    bad[i] ^= 0x01;
                    assert!(alg.open(&key, &nonce, b"aad", &bad).is_err(), "{alg:?}: bit flipped in byte {i}");
                }
            }
            assert_eq!(SymmetricAlgorithm::from_name(alg.name()), Some(alg));
        }
    }

    #[test]
    fn ccm_refuses_more_than_64_kib() {
        let alg = SymmetricAlgorithm::Aes256Ccm;
        let key = SecretKey::from_bytes(vec![1; 32]);
        let too_big = vec![0u8; 64 * 1024 + 1];
        assert!(matches!(alg.seal(&key, &[0; 12], b"", &too_big), Err(CryptoError::TooLarge { .. })));
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

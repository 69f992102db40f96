//! Encryption to a public key: a caller anywhere encrypts with a key's exported public half, only keymesh
//! decrypts. Two algorithms, as the platform's engine lists them:
//!
//! - HPKE (RFC 9180) with DHKEM(X25519, HKDF-SHA256), HKDF-SHA256 and AES-256-GCM — the standard form of
//!   X25519 ECIES. Wire form `enc || ciphertext`; the `info` is empty and the associated data is the
//!   caller's AAD.
//! - RSA-OAEP with SHA-256 and MGF1-SHA-256 (2048/3072/4096-bit). The OAEP label carries the caller's AAD
//!   (empty AAD, no label), so AAD binds here too.
//! - HPKE with X-Wing (ML-KEM-768 and X25519) as its KEM, HKDF-SHA256 and AES-256-GCM: the plaintext stays
//!   secret while either ML-KEM or X25519 holds. Wire form `enc (1,120 bytes) || ciphertext`.
//! - The source document's hybrid mode AES-256-GCM+ML-KEM-768 ([`crate::pq_hybrid`]): its own header names the
//!   key version (`kid`), checked on decryption; the caller's AAD is AES-GCM's.
//!
//! Every decryption failure is the same opaque `DecryptionFailed` (no padding oracle).

use openssl::{
    encrypt::{Decrypter, Encrypter},
    hash::MessageDigest,
    pkey::{PKeyRef, Private},
    rsa::Padding,
};
use zeroize::Zeroizing;

use crate::{
    CryptoError, hpke,
    keypair::{KeyType, PrivateKey, PublicKey},
    pq::MlKem,
    pq_hybrid,
};

/// An asymmetric encryption algorithm a key version can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AsymmetricEncryption {
    /// HPKE base mode, DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM.
    HpkeX25519Sha256Aes256Gcm,
    /// RSA-OAEP-SHA-256, 2048-bit modulus.
    RsaOaep2048Sha256,
    /// RSA-OAEP-SHA-256, 3072-bit modulus.
    RsaOaep3072Sha256,
    /// RSA-OAEP-SHA-256, 4096-bit modulus.
    RsaOaep4096Sha256,
    /// The document's hybrid mode: ML-KEM-768, HKDF-SHA256, AES-256-GCM, with its JSON header.
    MlKem768Aes256Gcm,
    /// HPKE base mode, X-Wing, HKDF-SHA256, AES-256-GCM.
    HpkeXWingSha256Aes256Gcm,
}

/// SHA-256's output length, twice, plus two: OAEP's overhead.
const OAEP_OVERHEAD: usize = 2 * 32 + 2;
/// Largest HPKE plaintext: HPKE is for keys and small secrets; larger data goes through envelopes.
pub const HPKE_MAX_PLAINTEXT: usize = 64 * 1024 * 1024;

impl AsymmetricEncryption {
    /// Every algorithm.
    pub const ALL: [Self; 6] = [
        Self::HpkeX25519Sha256Aes256Gcm,
        Self::RsaOaep2048Sha256,
        Self::RsaOaep3072Sha256,
        Self::RsaOaep4096Sha256,
        Self::MlKem768Aes256Gcm,
        Self::HpkeXWingSha256Aes256Gcm,
    ];

    /// Name, as used in wrap contexts and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::HpkeX25519Sha256Aes256Gcm => hpke::NAME,
            Self::RsaOaep2048Sha256 => "RSA-OAEP-2048-SHA256",
            Self::RsaOaep3072Sha256 => "RSA-OAEP-3072-SHA256",
            Self::RsaOaep4096Sha256 => "RSA-OAEP-4096-SHA256",
            Self::MlKem768Aes256Gcm => pq_hybrid::MODE,
            Self::HpkeXWingSha256Aes256Gcm => hpke::XWING_NAME,
        }
    }

    /// The kind of key it needs.
    pub fn key_type(self) -> KeyType {
        match self {
            Self::HpkeX25519Sha256Aes256Gcm => KeyType::X25519,
            Self::RsaOaep2048Sha256 => KeyType::Rsa(2048),
            Self::RsaOaep3072Sha256 => KeyType::Rsa(3072),
            Self::RsaOaep4096Sha256 => KeyType::Rsa(4096),
            Self::MlKem768Aes256Gcm => KeyType::MlKem(MlKem::MlKem768),
            Self::HpkeXWingSha256Aes256Gcm => KeyType::XWing,
        }
    }

    /// Largest plaintext one encryption takes.
    pub fn max_plaintext(self) -> usize {
        match self.key_type() {
            KeyType::Rsa(bits) => bits as usize / 8 - OAEP_OVERHEAD,
            KeyType::MlKem(_) => pq_hybrid::MAX_PLAINTEXT,
            _ => HPKE_MAX_PLAINTEXT,
        }
    }

    fn check_key(self, kind: KeyType) -> Result<(), CryptoError> {
        self.key_type().require(kind, self.name())
    }

    /// Encrypts to `key` with `aad` bound. `kid` is the key version's reference (`<key id>:v<version>`), which
    /// the hybrid mode writes into its header; the others carry no header.
    pub fn encrypt(self, key: &PublicKey, kid: &str, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.check_key(key.kind())?;
        if plaintext.len() > self.max_plaintext() {
            return Err(CryptoError::TooLarge {
                what: "plaintext",
                size: plaintext.len(),
                limit: self.max_plaintext(),
            });
        }
        if self == Self::HpkeX25519Sha256Aes256Gcm {
            return hpke::seal(key, b"", aad, plaintext);
        }
        if let Some(ml_kem) = key.ml_kem() {
            return pq_hybrid::seal(ml_kem, kid, aad, plaintext);
        }
        if let Some(xwing) = key.xwing() {
            return hpke::seal_xwing(xwing, b"", aad, plaintext);
        }
        let mut encrypter = Encrypter::new(key.pkey()?)?;
        encrypter.set_rsa_padding(Padding::PKCS1_OAEP)?;
        encrypter.set_rsa_oaep_md(MessageDigest::sha256())?;
        encrypter.set_rsa_mgf1_md(MessageDigest::sha256())?;
        if !aad.is_empty() {
            encrypter.set_rsa_oaep_label(aad)?;
        }
        let mut out = vec![0; encrypter.encrypt_len(plaintext)?];
        let n = encrypter.encrypt(plaintext, &mut out)?;
        out.truncate(n);
        Ok(out)
    }

    /// Decrypts with `key`, whose version `kid` names (the hybrid mode's header must name the same). Any
    /// failure is `DecryptionFailed`.
    pub fn decrypt(
        self,
        key: &PrivateKey,
        kid: &str,
        aad: &[u8],
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        self.check_key(key.kind())?;
        if self == Self::HpkeX25519Sha256Aes256Gcm {
            return hpke::open(key, b"", aad, ciphertext);
        }
        if let Some(ml_kem) = key.ml_kem() {
            return pq_hybrid::open(ml_kem, kid, aad, ciphertext);
        }
        if let Some(xwing) = key.xwing() {
            return hpke::open_xwing(xwing, b"", aad, ciphertext);
        }
        rsa_oaep_decrypt(key.pkey()?, aad, ciphertext)
    }
}

/// RSA-OAEP-SHA-256 (MGF1-SHA-256) decryption with `label` (none when empty); any failure is
/// `DecryptionFailed`. Shared with key import, whose transport wrapping is the same scheme.
pub(crate) fn rsa_oaep_decrypt(
    key: &PKeyRef<Private>,
    label: &[u8],
    ciphertext: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let opaque = |_| CryptoError::DecryptionFailed;
    let mut decrypter = Decrypter::new(key).map_err(opaque)?;
    decrypter.set_rsa_padding(Padding::PKCS1_OAEP).map_err(opaque)?;
    decrypter.set_rsa_oaep_md(MessageDigest::sha256()).map_err(opaque)?;
    decrypter.set_rsa_mgf1_md(MessageDigest::sha256()).map_err(opaque)?;
    if !label.is_empty() {
        decrypter.set_rsa_oaep_label(label).map_err(opaque)?;
    }
    let mut out = Zeroizing::new(vec![0; decrypter.decrypt_len(ciphertext).map_err(opaque)?]);
    let n = decrypter.decrypt(ciphertext, &mut out).map_err(opaque)?;
    out.truncate(n);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KID: &str = "k_0193:v1";

    #[test]
    fn round_trips_bind_the_aad_and_refuse_tampering() {
        for alg in [
            AsymmetricEncryption::HpkeX25519Sha256Aes256Gcm,
            AsymmetricEncryption::RsaOaep2048Sha256,
            AsymmetricEncryption::MlKem768Aes256Gcm,
            AsymmetricEncryption::HpkeXWingSha256Aes256Gcm,
        ] {
            let key = PrivateKey::generate(alg.key_type()).unwrap();
            let public = key.public_key().unwrap();
            for aad in [&b""[..], b"tenant=a"] {
                let ct = alg.encrypt(&public, KID, aad, b"a data key").unwrap();
                assert_eq!(&alg.decrypt(&key, KID, aad, &ct).unwrap()[..], b"a data key", "{alg:?}");
                assert_eq!(alg.decrypt(&key, KID, b"other", &ct), Err(CryptoError::DecryptionFailed));
                let mut bad = ct.clone();
                bad[ct.len() / 2] ^= 1;
                assert_eq!(alg.decrypt(&key, KID, aad, &bad), Err(CryptoError::DecryptionFailed));
            }
            assert!(alg.decrypt(&key, KID, b"", b"short").is_err());
        }
    }

    #[test]
    fn rsa_oaep_plaintext_limit() {
        let alg = AsymmetricEncryption::RsaOaep2048Sha256;
        assert_eq!(alg.max_plaintext(), 190);
        let key = PrivateKey::generate(alg.key_type()).unwrap().public_key().unwrap();
        assert!(alg.encrypt(&key, KID, b"", &[0; 190]).is_ok());
        assert!(matches!(alg.encrypt(&key, KID, b"", &[0; 191]), Err(CryptoError::TooLarge { .. })));
    }
}

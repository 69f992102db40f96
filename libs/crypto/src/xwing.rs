//! X-Wing (draft-connolly-cfrg-xwing-kem): a KEM that is the hybrid of ML-KEM-768 and X25519, so a shared
//! secret stays secret as long as either of them holds. keymesh uses it as the KEM of HPKE ([`crate::hpke`]),
//! for encryption to a public key that is post-quantum and classical at once.
//!
//! Built from the parts keymesh already has: ML-KEM-768 ([`crate::pq`]: key generation from the seed `d ‖ z` and
//! decapsulation on liboqs, encapsulation with the caller's randomness on `ml-kem`), X25519, SHAKE256 and SHA3-256
//! from OpenSSL. The private key is the 32-byte seed; `SHAKE256(seed, 96)` expands into ML-KEM's `d ‖ z` and the
//! X25519 private key. The shared secret is `SHA3-256(ss_M ‖ ss_X ‖ ct_X ‖ pk_X ‖ "\.//^\")`. Checked against
//! the draft's test vectors (`vectors/xwing.json`, from the draft's repository) for key generation,
//! encapsulation (from their `eseed`: ML-KEM's `m`, then the ephemeral X25519 key) and decapsulation.
//!
//! A private key rests as PKCS#8 under the draft's object identifier (1.3.6.1.4.1.62253.25722), its
//! privateKey the seed; the public key leaves as `pk_M ‖ pk_X` (1,216 bytes) in SubjectPublicKeyInfo.

use std::fmt;

use der::asn1::ObjectIdentifier;
use openssl::{
    hash::{Hasher, MessageDigest},
    pkey::{Id, PKey, Private},
};
use zeroize::Zeroizing;

use crate::{
    CryptoError, SecretKey, hpke,
    pq::{self, MlKem, MlKemPrivateKey, MlKemPublicKey},
};

/// Length of a private key (the seed).
pub const SEED_LEN: usize = 32;
/// Length of a public key: ML-KEM-768's and X25519's.
pub const PUBLIC_KEY_LEN: usize = 1184 + 32;
/// Length of a ciphertext: ML-KEM-768's and X25519's.
pub const CIPHERTEXT_LEN: usize = 1088 + 32;
/// Length of the encapsulation randomness: ML-KEM's `m` and the ephemeral X25519 private key.
pub const ESEED_LEN: usize = 64;
/// Name, as used in messages.
pub const NAME: &str = "X-Wing";
const LABEL: &[u8] = b"\\.//^\\";

/// The draft's object identifier.
pub fn oid() -> ObjectIdentifier {
    ObjectIdentifier::new_unwrap("1.3.6.1.4.1.62253.25722")
}

/// An X-Wing private key. Never prints its material.
pub struct XWingPrivateKey {
    seed: Zeroizing<[u8; SEED_LEN]>,
    ml_kem: MlKemPrivateKey,
    x25519: PKey<Private>,
    public: XWingPublicKey,
}

impl fmt::Debug for XWingPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XWingPrivateKey(redacted)")
    }
}

/// An X-Wing public key.
#[derive(Clone, PartialEq, Eq)]
pub struct XWingPublicKey {
    ml_kem: MlKemPublicKey,
    x25519: [u8; 32],
}

impl fmt::Debug for XWingPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("XWingPublicKey")
    }
}

fn combiner(ss_m: &[u8], ss_x: &[u8], ct_x: &[u8], pk_x: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut hasher = Hasher::new(MessageDigest::sha3_256())?;
    for part in [ss_m, ss_x, ct_x, pk_x, LABEL] {
        hasher.update(part)?;
    }
    Ok(Zeroizing::new(hasher.finish()?.to_vec()))
}

impl XWingPrivateKey {
    /// A fresh key from a fresh seed (OpenSSL's CSPRNG).
    pub fn generate() -> Result<Self, CryptoError> {
        Self::from_seed(&crate::random::random_bytes(SEED_LEN)?)
    }

    /// The key the 32-byte seed expands into.
    pub fn from_seed(seed: &[u8]) -> Result<Self, CryptoError> {
        if seed.len() != SEED_LEN {
            return Err(CryptoError::InvalidKey {
                algorithm: NAME,
                reason: format!("a private key is a {SEED_LEN}-byte seed, got {} bytes", seed.len()),
            });
        }
        let mut copy = Zeroizing::new([0u8; SEED_LEN]);
        copy.copy_from_slice(seed);
        let seed = copy;
        let mut expanded = Zeroizing::new([0u8; 96]);
        let mut shake = Hasher::new(MessageDigest::shake_256())?;
        shake.update(&seed[..])?;
        shake.finish_xof(&mut expanded[..])?;
        let ml_kem = MlKemPrivateKey::from_seed(MlKem::MlKem768, &expanded[..64])?;
        let x25519 = PKey::private_key_from_raw_bytes(&expanded[64..], Id::X25519)?;
        let pk_x: [u8; 32] = x25519.raw_public_key()?.try_into().map_err(|_| CryptoError::Library)?;
        let public = XWingPublicKey { ml_kem: ml_kem.public_key(), x25519: pk_x };
        Ok(Self { seed, ml_kem, x25519, public })
    }

    /// The public half.
    pub fn public_key(&self) -> XWingPublicKey {
        self.public.clone()
    }

    /// Decapsulates a 1,120-byte ciphertext: the shared secret, or `DecryptionFailed`.
    pub fn decapsulate(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if ciphertext.len() != CIPHERTEXT_LEN {
            return Err(CryptoError::DecryptionFailed);
        }
        let (ct_m, ct_x) = ciphertext.split_at(1088);
        let ss_m = self.ml_kem.decapsulate(ct_m).map_err(|_| CryptoError::DecryptionFailed)?;
        let ss_x = hpke::dh(&self.x25519, ct_x)?;
        combiner(&ss_m, &ss_x, ct_x, &self.public.x25519)
    }

    /// PKCS#8 under the draft's identifier, the seed as the privateKey.
    pub fn to_pkcs8(&self) -> Result<SecretKey, CryptoError> {
        pq::encode_pkcs8(oid(), &self.seed[..])
    }

    /// Reads PKCS#8 as [`Self::to_pkcs8`] writes it.
    pub fn from_pkcs8(der: &[u8]) -> Result<Self, CryptoError> {
        Self::from_seed(&pq::decode_pkcs8_raw(oid(), NAME, der)?)
    }
}

impl XWingPublicKey {
    /// A raw public key, `pk_M ‖ pk_X`, checked (ML-KEM's encapsulation-key check, X25519's length).
    pub fn from_raw(raw: &[u8]) -> Result<Self, CryptoError> {
        if raw.len() != PUBLIC_KEY_LEN {
            return Err(CryptoError::InvalidKey {
                algorithm: NAME,
                reason: format!("a public key is {PUBLIC_KEY_LEN} bytes, got {}", raw.len()),
            });
        }
        let (pk_m, pk_x) = raw.split_at(1184);
        let ml_kem = MlKemPublicKey::from_raw(MlKem::MlKem768, pk_m)?;
        Ok(Self { ml_kem, x25519: pk_x.try_into().map_err(|_| CryptoError::Library)? })
    }

    /// SubjectPublicKeyInfo DER of an X-Wing key.
    pub fn from_der(der: &[u8]) -> Result<Self, CryptoError> {
        Self::from_raw(&pq::decode_spki(oid(), NAME, der)?)
    }

    /// `pk_M ‖ pk_X`.
    pub fn raw(&self) -> Vec<u8> {
        [self.ml_kem.raw(), &self.x25519[..]].concat()
    }

    /// SubjectPublicKeyInfo DER.
    pub fn to_der(&self) -> Result<Vec<u8>, CryptoError> {
        pq::encode_spki(oid(), &self.raw())
    }

    /// A fresh 1,120-byte ciphertext and the shared secret it carries.
    pub fn encapsulate(&self) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), CryptoError> {
        let eseed = crate::random::random_bytes(ESEED_LEN)?;
        let eseed: &[u8; ESEED_LEN] = eseed.as_slice().try_into().map_err(|_| CryptoError::Library)?;
        self.encapsulate_with(eseed)
    }

    /// The draft's `EncapsulateDerand`: `eseed` is ML-KEM's 32 bytes of randomness, then the ephemeral X25519
    /// private key. For known-answer tests: `eseed` must be uniformly random and secret.
    pub fn encapsulate_with(&self, eseed: &[u8; ESEED_LEN]) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), CryptoError> {
        let (m, x25519) = eseed.split_at(32);
        let m: &[u8; 32] = m.try_into().map_err(|_| CryptoError::Library)?;
        let (ct_m, ss_m) = self.ml_kem.encapsulate_with(m)?;
        let ephemeral = PKey::private_key_from_raw_bytes(x25519, Id::X25519)?;
        let ct_x = ephemeral.raw_public_key()?;
        let ss_x = hpke::dh(&ephemeral, &self.x25519).map_err(|_| CryptoError::InvalidKey {
            algorithm: NAME,
            reason: "the X25519 public key is a low-order point".into(),
        })?;
        let shared = combiner(&ss_m, &ss_x, &ct_x, &self.x25519)?;
        let mut ciphertext = ct_m;
        ciphertext.extend_from_slice(&ct_x);
        Ok((ciphertext, shared))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vector {
        eseed: String,
        sk: String,
        pk: String,
        ct: String,
        ss: String,
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[test]
    fn the_drafts_vectors_generate_encapsulate_and_decapsulate() {
        let vectors: Vec<Vector> = serde_json::from_str(include_str!("../vectors/xwing.json")).unwrap();
        assert_eq!(vectors.len(), 3);
        for v in &vectors {
            let key = XWingPrivateKey::from_seed(&hex(&v.sk)).unwrap();
            assert_eq!(key.public_key().raw(), hex(&v.pk), "key generation");
            let eseed: [u8; ESEED_LEN] = hex(&v.eseed).try_into().unwrap();
            let (ct, ss) = key.public_key().encapsulate_with(&eseed).unwrap();
            assert_eq!(ct, hex(&v.ct), "encapsulation: ciphertext");
            assert_eq!(&ss[..], &hex(&v.ss)[..], "encapsulation: shared secret");
            assert_eq!(&key.decapsulate(&hex(&v.ct)).unwrap()[..], &hex(&v.ss)[..], "decapsulation");
        }
    }

    #[test]
    fn round_trips_through_pkcs8_and_spki_and_refuses_tampering() {
        let key = XWingPrivateKey::generate().unwrap();
        let (ct, ss) = key.public_key().encapsulate().unwrap();
        assert_eq!(ct.len(), CIPHERTEXT_LEN);
        assert_eq!(key.decapsulate(&ct).unwrap(), ss);
        let again = XWingPrivateKey::from_pkcs8(key.to_pkcs8().unwrap().expose_secret()).unwrap();
        assert_eq!(again.decapsulate(&ct).unwrap(), ss);
        let public = XWingPublicKey::from_der(&key.public_key().to_der().unwrap()).unwrap();
        assert_eq!(public, key.public_key());
        let mut tampered = ct.clone();
        tampered[5] ^= 1;
        assert_ne!(key.decapsulate(&tampered).unwrap(), ss, "ML-KEM's implicit rejection");
        let mut tampered = ct;
        tampered[CIPHERTEXT_LEN - 3] ^= 1;
        assert_ne!(key.decapsulate(&tampered).ok(), Some(ss), "X25519's half");
        assert!(key.decapsulate(&[0; 10]).is_err());
        assert_eq!(format!("{key:?}"), "XWingPrivateKey(redacted)");
    }
}

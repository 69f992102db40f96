//! Every algorithm a key version can hold, under one type: what purpose it serves, what its material looks
//! like (raw bytes for symmetric and MAC keys, PKCS#8 DER for private keys), how material is generated and
//! checked on import, its strength, and whether FIPS 140-3 approves it. key-service decides with it what
//! to create and import; crypto-service decides with it what an operation may do.

use crate::{
    CryptoError, SecretKey, SymmetricAlgorithm,
    asymmetric::AsymmetricEncryption,
    keypair::KeyType,
    keypair::{PrivateKey, PublicKey},
    mac::MacAlgorithm,
    pq::MlKem,
    signature::SignatureAlgorithm,
};

/// What a key is for; every algorithm serves exactly one purpose.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Purpose {
    /// Encryption, symmetric or to a public key.
    Encrypt,
    /// Signatures.
    Sign,
    /// MACs.
    Mac,
    /// Key encapsulation (ML-KEM): a caller encapsulates to the public key and keymesh decapsulates.
    Kem,
}

/// The algorithm of a key version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlgorithm {
    /// A symmetric AEAD (purpose ENCRYPT).
    Symmetric(SymmetricAlgorithm),
    /// Encryption to a public key (purpose ENCRYPT).
    Asymmetric(AsymmetricEncryption),
    /// Signatures (purpose SIGN).
    Signature(SignatureAlgorithm),
    /// MACs (purpose MAC).
    Mac(MacAlgorithm),
    /// ML-KEM key encapsulation (purpose KEM).
    Kem(MlKem),
}

impl KeyAlgorithm {
    /// Every algorithm available in this build.
    pub fn all() -> impl Iterator<Item = Self> {
        SymmetricAlgorithm::ALL
            .into_iter()
            .map(Self::Symmetric)
            .chain(AsymmetricEncryption::ALL.into_iter().map(Self::Asymmetric))
            .chain(SignatureAlgorithm::ALL.into_iter().map(Self::Signature))
            .chain(MacAlgorithm::ALL.into_iter().map(Self::Mac))
            .chain(MlKem::ALL.into_iter().map(Self::Kem))
    }

    /// Name, as bound into wrapped material and shown in messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Symmetric(a) => a.name(),
            Self::Asymmetric(a) => a.name(),
            Self::Signature(a) => a.name(),
            Self::Mac(a) => a.name(),
            Self::Kem(a) => a.name(),
        }
    }

    /// The purpose a key with this algorithm has.
    pub fn purpose(self) -> Purpose {
        match self {
            Self::Symmetric(_) | Self::Asymmetric(_) => Purpose::Encrypt,
            Self::Signature(_) => Purpose::Sign,
            Self::Mac(_) => Purpose::Mac,
            Self::Kem(_) => Purpose::Kem,
        }
    }

    /// The algorithm a key of `purpose` gets when the request names none.
    pub fn default_for(purpose: Purpose) -> Self {
        match purpose {
            Purpose::Encrypt => Self::Symmetric(SymmetricAlgorithm::Aes256Gcm),
            Purpose::Sign => Self::Signature(SignatureAlgorithm::EcdsaP256Sha256),
            Purpose::Mac => Self::Mac(MacAlgorithm::HmacSha256),
            Purpose::Kem => Self::Kem(MlKem::MlKem768),
        }
    }

    /// Whether the material is a private key (and so has a public half to export).
    pub fn is_asymmetric(self) -> bool {
        matches!(self, Self::Asymmetric(_) | Self::Signature(_) | Self::Kem(_))
    }

    /// Strength in bits as policies count it: the key length for symmetric and MAC keys, the modulus for
    /// RSA, the curve's field for elliptic curves, the security category's AES key size for ML-KEM and ML-DSA.
    pub fn key_bits(self) -> u32 {
        match self {
            Self::Symmetric(a) => a.key_len() as u32 * 8,
            Self::Mac(a) => a.key_len() as u32 * 8,
            Self::Asymmetric(a) => a.key_type().bits(),
            Self::Signature(a) => a.key_type().bits(),
            Self::Kem(a) => a.bits(),
        }
    }

    /// Whether FIPS 140-3 approves it: the platform's list (AES modes, HMAC, RSA 2048+, ECDSA P-256/P-384,
    /// EdDSA, and ML-KEM and ML-DSA since FIPS 203 and 204). ChaCha20, AES-GCM-SIV and X25519 (HPKE) are not
    /// approved.
    pub fn fips_approved(self) -> bool {
        match self {
            Self::Symmetric(a) => a.fips_approved(),
            Self::Asymmetric(a) => !matches!(
                a,
                AsymmetricEncryption::HpkeX25519Sha256Aes256Gcm | AsymmetricEncryption::HpkeXWingSha256Aes256Gcm
            ),
            Self::Signature(_) | Self::Mac(_) | Self::Kem(_) => true,
        }
    }

    /// Fresh material from the CSPRNG, in the form it is stored.
    pub fn generate(self) -> Result<SecretKey, CryptoError> {
        match self {
            Self::Symmetric(a) => SecretKey::generate(a.key_len()),
            Self::Mac(a) => SecretKey::generate(a.key_len()),
            Self::Asymmetric(a) => PrivateKey::generate(a.key_type())?.to_pkcs8(),
            Self::Signature(a) => PrivateKey::generate(a.key_type())?.to_pkcs8(),
            Self::Kem(a) => PrivateKey::generate(KeyType::MlKem(a))?.to_pkcs8(),
        }
    }

    /// Checks material (imported, or read back) is of this algorithm's form.
    pub fn check_material(self, material: &SecretKey) -> Result<(), CryptoError> {
        match self {
            Self::Symmetric(a) if material.len() != a.key_len() => Err(CryptoError::InvalidKey {
                algorithm: a.name(),
                reason: format!("needs a {}-byte key, got {} bytes", a.key_len(), material.len()),
            }),
            Self::Symmetric(_) => Ok(()),
            Self::Mac(a) => a.check_key(material),
            Self::Asymmetric(_) | Self::Signature(_) | Self::Kem(_) => self.private_key(material).map(drop),
        }
    }

    /// Parses private-key material; refused for symmetric and MAC algorithms.
    pub fn private_key(self, material: &SecretKey) -> Result<PrivateKey, CryptoError> {
        let kind = match self {
            Self::Asymmetric(a) => a.key_type(),
            Self::Signature(a) => a.key_type(),
            Self::Kem(a) => KeyType::MlKem(a),
            _ => return Err(CryptoError::InvalidInput(format!("{} keys have no private key", self.name()))),
        };
        PrivateKey::from_pkcs8(material.expose_secret(), kind, self.name())
    }

    /// The public half of private-key material.
    pub fn public_key(self, material: &SecretKey) -> Result<PublicKey, CryptoError> {
        self.private_key(material)?.public_key()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_has_a_unique_name_and_generates_material_it_accepts() {
        let mut names = std::collections::HashSet::new();
        for alg in KeyAlgorithm::all() {
            assert!(names.insert(alg.name()), "duplicate name {}", alg.name());
            let material = alg.generate().unwrap();
            alg.check_material(&material).unwrap();
            assert_eq!(alg.is_asymmetric(), alg.public_key(&material).is_ok(), "{alg:?}");
        }
        assert_eq!(names.len(), 28);
    }

    #[test]
    fn material_of_another_algorithm_is_refused() {
        let ecdsa = KeyAlgorithm::Signature(SignatureAlgorithm::EcdsaP256Sha256);
        let ed = KeyAlgorithm::Signature(SignatureAlgorithm::Ed25519).generate().unwrap();
        assert!(ecdsa.check_material(&ed).is_err());
        let aes = KeyAlgorithm::Symmetric(SymmetricAlgorithm::Aes128Gcm);
        assert!(aes.check_material(&SecretKey::from_bytes(vec![0; 32])).is_err());
        let hmac = KeyAlgorithm::Mac(MacAlgorithm::HmacSha256);
        assert!(hmac.check_material(&SecretKey::from_bytes(vec![0; 16])).is_err(), "shorter than SHA-256's output");
        assert!(hmac.check_material(&SecretKey::from_bytes(vec![0; 48])).is_ok());
        let hmac512 = KeyAlgorithm::Mac(MacAlgorithm::HmacSha512);
        assert!(hmac512.check_material(&SecretKey::from_bytes(vec![0; 32])).is_err(), "policies count 512 bits");
    }

    #[test]
    fn fips_and_strength() {
        let hpke = KeyAlgorithm::Asymmetric(AsymmetricEncryption::HpkeX25519Sha256Aes256Gcm);
        assert!(!hpke.fips_approved());
        // X-Wing's X25519 half is not approved, so neither is X-Wing; the document's hybrid is AES and ML-KEM.
        assert!(!KeyAlgorithm::Asymmetric(AsymmetricEncryption::HpkeXWingSha256Aes256Gcm).fips_approved());
        assert!(KeyAlgorithm::Asymmetric(AsymmetricEncryption::MlKem768Aes256Gcm).fips_approved());
        assert!(KeyAlgorithm::Signature(SignatureAlgorithm::Ed25519).fips_approved());
        // FIPS 203 and 204 approve ML-KEM and ML-DSA; policies count their security category's bits.
        for kem in MlKem::ALL {
            assert!(KeyAlgorithm::Kem(kem).fips_approved());
        }
        let ml_dsa = KeyAlgorithm::Signature(SignatureAlgorithm::MlDsa(crate::pq::MlDsa::MlDsa65));
        assert!(ml_dsa.fips_approved());
        assert_eq!((ml_dsa.key_bits(), KeyAlgorithm::Kem(MlKem::MlKem1024).key_bits()), (192, 256));
        assert_eq!(KeyAlgorithm::Signature(SignatureAlgorithm::RsaPss3072Sha256).key_bits(), 3072);
        assert_eq!(KeyAlgorithm::Symmetric(SymmetricAlgorithm::Aes128Gcm).key_bits(), 128);
    }
}

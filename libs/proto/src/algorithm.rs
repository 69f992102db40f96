//! The API's algorithm and purpose enums beside keymesh-crypto's types. The conversions live here, at the
//! wire edge, so that the cryptographic core knows nothing of the API and an algorithm gains its wire name
//! in one place.

use keymesh_crypto::{
    KeyAlgorithm, SymmetricAlgorithm,
    algorithm::Purpose,
    asymmetric::AsymmetricEncryption,
    mac::MacAlgorithm,
    pq::{MlDsa, MlKem},
    signature::SignatureAlgorithm,
};

use crate::v1::{Algorithm, KeyPurpose};

/// The API's enum of an algorithm type of keymesh-crypto.
pub trait ToProto: Copy {
    /// The wire value.
    fn to_proto(self) -> Algorithm;
}

/// An algorithm type of keymesh-crypto read from the API's enum.
pub trait FromProto: Sized {
    /// `None` for wire values this type does not hold (or that this build does not offer).
    fn from_proto(algorithm: Algorithm) -> Option<Self>;

    /// From the enum as stored or sent (an `i32`).
    fn from_i32(algorithm: i32) -> Option<Self> {
        Algorithm::try_from(algorithm).ok().and_then(Self::from_proto)
    }
}

impl ToProto for SymmetricAlgorithm {
    fn to_proto(self) -> Algorithm {
        match self {
            Self::Aes128Gcm => Algorithm::Aes128Gcm,
            Self::Aes256Gcm => Algorithm::Aes256Gcm,
            Self::ChaCha20Poly1305 => Algorithm::Chacha20Poly1305,
            Self::XChaCha20Poly1305 => Algorithm::Xchacha20Poly1305,
            Self::Aes256GcmSiv => Algorithm::Aes256GcmSiv,
            Self::Aes256CbcHmacSha256 => Algorithm::Aes256CbcHmacSha256,
            Self::Aes256CtrHmacSha256 => Algorithm::Aes256CtrHmacSha256,
            Self::Aes256Ccm => Algorithm::Aes256Ccm,
        }
    }
}

impl ToProto for AsymmetricEncryption {
    fn to_proto(self) -> Algorithm {
        match self {
            Self::HpkeX25519Sha256Aes256Gcm => Algorithm::HpkeX25519Sha256Aes256Gcm,
            Self::RsaOaep2048Sha256 => Algorithm::RsaOaep2048Sha256,
            Self::RsaOaep3072Sha256 => Algorithm::RsaOaep3072Sha256,
            Self::RsaOaep4096Sha256 => Algorithm::RsaOaep4096Sha256,
            Self::MlKem768Aes256Gcm => Algorithm::MlKem768Aes256Gcm,
            Self::HpkeXWingSha256Aes256Gcm => Algorithm::HpkeXwingSha256Aes256Gcm,
        }
    }
}

impl ToProto for SignatureAlgorithm {
    fn to_proto(self) -> Algorithm {
        match self {
            Self::Ed25519 => Algorithm::Ed25519,
            Self::EcdsaP256Sha256 => Algorithm::EcdsaP256Sha256,
            Self::EcdsaP384Sha384 => Algorithm::EcdsaP384Sha384,
            Self::RsaPss2048Sha256 => Algorithm::RsaPss2048Sha256,
            Self::RsaPss3072Sha256 => Algorithm::RsaPss3072Sha256,
            Self::RsaPss4096Sha256 => Algorithm::RsaPss4096Sha256,
            Self::MlDsa(MlDsa::MlDsa44) => Algorithm::MlDsa44,
            Self::MlDsa(MlDsa::MlDsa65) => Algorithm::MlDsa65,
            Self::MlDsa(MlDsa::MlDsa87) => Algorithm::MlDsa87,
        }
    }
}

impl ToProto for MacAlgorithm {
    fn to_proto(self) -> Algorithm {
        match self {
            Self::HmacSha256 => Algorithm::HmacSha256,
            Self::HmacSha512 => Algorithm::HmacSha512,
        }
    }
}

impl ToProto for MlKem {
    fn to_proto(self) -> Algorithm {
        match self {
            Self::MlKem512 => Algorithm::MlKem512,
            Self::MlKem768 => Algorithm::MlKem768,
            Self::MlKem1024 => Algorithm::MlKem1024,
        }
    }
}

impl ToProto for KeyAlgorithm {
    fn to_proto(self) -> Algorithm {
        match self {
            Self::Symmetric(a) => a.to_proto(),
            Self::Asymmetric(a) => a.to_proto(),
            Self::Signature(a) => a.to_proto(),
            Self::Mac(a) => a.to_proto(),
            Self::Kem(a) => a.to_proto(),
        }
    }
}

impl FromProto for KeyAlgorithm {
    fn from_proto(algorithm: Algorithm) -> Option<Self> {
        Self::all().find(|a| a.to_proto() == algorithm)
    }
}

impl FromProto for SymmetricAlgorithm {
    fn from_proto(algorithm: Algorithm) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.to_proto() == algorithm)
    }
}

impl From<Purpose> for KeyPurpose {
    fn from(purpose: Purpose) -> Self {
        match purpose {
            Purpose::Encrypt => Self::Encrypt,
            Purpose::Sign => Self::Sign,
            Purpose::Mac => Self::Mac,
            Purpose::Kem => Self::Kem,
        }
    }
}

/// The purpose a request names: UNSPECIFIED means ENCRYPT, as the API documents.
pub fn purpose_from_proto(purpose: KeyPurpose) -> Purpose {
    match purpose {
        KeyPurpose::Encrypt | KeyPurpose::Unspecified => Purpose::Encrypt,
        KeyPurpose::Sign => Purpose::Sign,
        KeyPurpose::Mac => Purpose::Mac,
        KeyPurpose::Kem => Purpose::Kem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_algorithm_maps_both_ways() {
        let mut wire = std::collections::HashSet::new();
        for alg in KeyAlgorithm::all() {
            assert_eq!(KeyAlgorithm::from_proto(alg.to_proto()), Some(alg));
            assert_eq!(KeyAlgorithm::from_i32(alg.to_proto() as i32), Some(alg));
            assert!(wire.insert(alg.to_proto()), "two algorithms share {:?}", alg.to_proto());
            assert_eq!(purpose_from_proto(alg.purpose().into()), alg.purpose());
        }
        for alg in SymmetricAlgorithm::ALL {
            assert_eq!(SymmetricAlgorithm::from_proto(alg.to_proto()), Some(alg));
        }
        assert_eq!(KeyAlgorithm::from_proto(Algorithm::Unspecified), None);
        assert_eq!(KeyAlgorithm::from_i32(-1), None);
        assert_eq!(purpose_from_proto(KeyPurpose::Unspecified), Purpose::Encrypt);
        assert_eq!(purpose_from_proto(KeyPurpose::Kem), Purpose::Kem);
    }
}

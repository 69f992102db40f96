//! Asymmetric key pairs. A private key travels and rests as PKCS#8 DER inside a [`SecretKey`] — that is what
//! key-service wraps under the KEK and hands crypto-service — and is parsed into an OpenSSL key (or, for the
//! post-quantum ML-KEM and ML-DSA, which OpenSSL 3.0 does not know, a [`crate::pq`] key) only where it is
//! used. Public halves leave as SubjectPublicKeyInfo (DER or PEM), the form `openssl`, Python
//! `cryptography`, Go and Java all read, so anyone can verify or encrypt offline.
//!
//! Parsing checks that the material is the exact kind of key the algorithm names (type, curve, modulus size)
//! and that it is internally consistent, so an imported key of the wrong kind is refused at import, not at
//! first use.

use std::fmt;

use openssl::{
    ec::{EcGroup, EcKey},
    nid::Nid,
    pkey::{HasPublic, Id, PKey, PKeyRef, Private, Public},
    rsa::Rsa,
};

use crate::{
    CryptoError, SecretKey,
    pq::{MlDsa, MlDsaPrivateKey, MlDsaPublicKey, MlKem, MlKemPrivateKey, MlKemPublicKey},
    xwing::{XWingPrivateKey, XWingPublicKey},
};

/// The kind of an asymmetric key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyType {
    /// Ed25519 (RFC 8032).
    Ed25519,
    /// X25519 (RFC 7748).
    X25519,
    /// NIST P-256 (secp256r1).
    EcP256,
    /// NIST P-384 (secp384r1).
    EcP384,
    /// RSA with a modulus of this many bits.
    Rsa(u32),
    /// ML-DSA (FIPS 204).
    MlDsa(MlDsa),
    /// ML-KEM (FIPS 203).
    MlKem(MlKem),
    /// X-Wing: ML-KEM-768 and X25519 together (draft-connolly-cfrg-xwing-kem).
    XWing,
}

impl KeyType {
    /// Human-readable name, e.g. "RSA-3072".
    pub fn describe(self) -> String {
        match self {
            Self::Ed25519 => "Ed25519".into(),
            Self::X25519 => "X25519".into(),
            Self::EcP256 => "EC P-256".into(),
            Self::EcP384 => "EC P-384".into(),
            Self::Rsa(bits) => format!("RSA-{bits}"),
            Self::MlDsa(params) => params.name().into(),
            Self::MlKem(params) => params.name().into(),
            Self::XWing => crate::xwing::NAME.into(),
        }
    }

    /// Security-relevant size in bits: the modulus for RSA, the field for elliptic curves, the security
    /// category's AES key size for ML-KEM and ML-DSA.
    pub fn bits(self) -> u32 {
        match self {
            Self::Ed25519 | Self::X25519 | Self::EcP256 => 256,
            Self::EcP384 => 384,
            Self::Rsa(bits) => bits,
            Self::MlDsa(params) => params.bits(),
            Self::MlKem(params) => params.bits(),
            // ML-KEM-768's category: X25519's 128 bits are the weaker half against a classical attacker.
            Self::XWing => 192,
        }
    }

    /// OpenSSL's id for the raw (RFC 8032 / RFC 7748) form, which only the 25519 keys have.
    fn raw_id(self) -> Result<Id, CryptoError> {
        match self {
            Self::Ed25519 => Ok(Id::ED25519),
            Self::X25519 => Ok(Id::X25519),
            _ => Err(CryptoError::InvalidInput(format!("{} keys have no raw form", self.describe()))),
        }
    }

    /// Refuses a key of another kind than `self`, naming both.
    pub fn require(self, found: KeyType, algorithm: &'static str) -> Result<(), CryptoError> {
        if found != self {
            return Err(CryptoError::InvalidKey {
                algorithm,
                reason: format!("expected a {} key, got {}", self.describe(), found.describe()),
            });
        }
        Ok(())
    }

    fn curve(self) -> Option<Nid> {
        match self {
            Self::EcP256 => Some(Nid::X9_62_PRIME256V1),
            Self::EcP384 => Some(Nid::SECP384R1),
            _ => None,
        }
    }

    /// What kind `key` actually is, if it is one keymesh knows.
    fn of<T: HasPublic>(key: &PKeyRef<T>) -> Option<Self> {
        match key.id() {
            Id::ED25519 => Some(Self::Ed25519),
            Id::X25519 => Some(Self::X25519),
            Id::RSA => Some(Self::Rsa(key.bits())),
            Id::EC => match key.ec_key().ok()?.group().curve_name()? {
                Nid::X9_62_PRIME256V1 => Some(Self::EcP256),
                Nid::SECP384R1 => Some(Self::EcP384),
                _ => None,
            },
            _ => None,
        }
    }

    fn check<T: HasPublic>(self, algorithm: &'static str, key: &PKeyRef<T>) -> Result<(), CryptoError> {
        match Self::of(key) {
            Some(found) => self.require(found, algorithm),
            None => Err(CryptoError::InvalidKey {
                algorithm,
                reason: format!("expected a {} key, got an unsupported key type", self.describe()),
            }),
        }
    }
}

/// A fresh Ed25519 key for the mesh's own signatures (access tokens, audit checkpoints): its key id —
/// `prefix`, a dash, and the first 8 bytes of the public key's SHA-256 in hex —, the raw 32-byte public key,
/// and the PKCS#8 private key in a zeroizing buffer, ready to be wrapped by the KMS.
pub fn service_signing_key(prefix: &str) -> Result<(String, Vec<u8>, SecretKey), CryptoError> {
    use sha2::Digest;
    let key = PKey::generate_ed25519()?;
    let public = key.raw_public_key()?;
    let private = SecretKey::from_bytes(key.private_key_to_pkcs8()?);
    let digest = sha2::Sha256::digest(&public);
    let kid = format!("{prefix}-{}", digest.iter().take(8).map(|b| format!("{b:02x}")).collect::<String>());
    Ok((kid, public, private))
}

/// A private key, checked against the kind its algorithm needs. Never prints its material.
pub struct PrivateKey {
    key: PrivateMaterial,
    kind: KeyType,
}

/// The library that holds a private key.
enum PrivateMaterial {
    OpenSsl(PKey<Private>),
    MlDsa(MlDsaPrivateKey),
    MlKem(MlKemPrivateKey),
    XWing(XWingPrivateKey),
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey({}, redacted)", self.kind.describe())
    }
}

impl PrivateKey {
    /// A fresh key from OpenSSL's CSPRNG.
    pub fn generate(kind: KeyType) -> Result<Self, CryptoError> {
        let key = match kind {
            KeyType::Ed25519 => PKey::generate_ed25519()?,
            KeyType::X25519 => PKey::generate_x25519()?,
            KeyType::EcP256 | KeyType::EcP384 => {
                let group = EcGroup::from_curve_name(kind.curve().ok_or(CryptoError::Library)?)?;
                PKey::from_ec_key(EcKey::generate(&group)?)?
            }
            KeyType::Rsa(bits) => PKey::from_rsa(Rsa::generate(bits)?)?,
            KeyType::MlDsa(params) => {
                return Ok(Self { key: PrivateMaterial::MlDsa(MlDsaPrivateKey::generate(params)?), kind });
            }
            KeyType::MlKem(params) => {
                return Ok(Self { key: PrivateMaterial::MlKem(MlKemPrivateKey::generate(params)?), kind });
            }
            KeyType::XWing => return Ok(Self { key: PrivateMaterial::XWing(XWingPrivateKey::generate()?), kind }),
        };
        Ok(Self { key: PrivateMaterial::OpenSsl(key), kind })
    }

    /// Parses PKCS#8 DER and checks it is a consistent key of `kind`. `algorithm` names the algorithm in
    /// errors.
    pub fn from_pkcs8(der: &[u8], kind: KeyType, algorithm: &'static str) -> Result<Self, CryptoError> {
        match kind {
            KeyType::MlDsa(params) => {
                return Ok(Self { key: PrivateMaterial::MlDsa(MlDsaPrivateKey::from_pkcs8(params, der)?), kind });
            }
            KeyType::MlKem(params) => {
                return Ok(Self { key: PrivateMaterial::MlKem(MlKemPrivateKey::from_pkcs8(params, der)?), kind });
            }
            KeyType::XWing => {
                return Ok(Self { key: PrivateMaterial::XWing(XWingPrivateKey::from_pkcs8(der)?), kind });
            }
            _ => {}
        }
        let key = PKey::private_key_from_pkcs8(der).map_err(|_| CryptoError::InvalidKey {
            algorithm,
            reason: "not a PKCS#8 DER private key (PrivateKeyInfo)".into(),
        })?;
        kind.check(algorithm, &key)?;
        let consistent = match kind {
            KeyType::EcP256 | KeyType::EcP384 => key.ec_key()?.check_key().is_ok(),
            KeyType::Rsa(_) => key.rsa()?.check_key().unwrap_or(false),
            KeyType::Ed25519 | KeyType::X25519 | KeyType::MlDsa(_) | KeyType::MlKem(_) | KeyType::XWing => true,
        };
        if !consistent {
            return Err(CryptoError::InvalidKey { algorithm, reason: "the private key is inconsistent".into() });
        }
        Ok(Self { key: PrivateMaterial::OpenSsl(key), kind })
    }

    /// A raw 32-byte Ed25519 or X25519 private key (RFC 8032 / RFC 7748 form).
    pub fn from_raw(raw: &[u8], kind: KeyType, algorithm: &'static str) -> Result<Self, CryptoError> {
        let key = PKey::private_key_from_raw_bytes(raw, kind.raw_id()?)
            .map_err(|_| CryptoError::InvalidKey { algorithm, reason: "not a 32-byte private key".into() })?;
        Ok(Self { key: PrivateMaterial::OpenSsl(key), kind })
    }

    /// PKCS#8 DER, in a zeroizing buffer (the seed form for ML-KEM and ML-DSA keys that have a seed).
    pub fn to_pkcs8(&self) -> Result<SecretKey, CryptoError> {
        match &self.key {
            PrivateMaterial::OpenSsl(key) => Ok(SecretKey::from_bytes(key.private_key_to_pkcs8()?)),
            PrivateMaterial::MlDsa(key) => key.to_pkcs8(),
            PrivateMaterial::MlKem(key) => key.to_pkcs8(),
            PrivateMaterial::XWing(key) => key.to_pkcs8(),
        }
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyType {
        self.kind
    }

    /// The public half.
    pub fn public_key(&self) -> Result<PublicKey, CryptoError> {
        let key = match &self.key {
            PrivateMaterial::OpenSsl(key) => {
                PublicMaterial::OpenSsl(PKey::public_key_from_der(&key.public_key_to_der()?)?)
            }
            PrivateMaterial::MlDsa(key) => PublicMaterial::MlDsa(key.public_key()),
            PrivateMaterial::MlKem(key) => PublicMaterial::MlKem(key.public_key()),
            PrivateMaterial::XWing(key) => PublicMaterial::XWing(key.public_key()),
        };
        Ok(PublicKey { key, kind: self.kind })
    }

    /// The OpenSSL key; refused for the post-quantum kinds.
    pub(crate) fn pkey(&self) -> Result<&PKeyRef<Private>, CryptoError> {
        match &self.key {
            PrivateMaterial::OpenSsl(key) => Ok(key),
            _ => Err(CryptoError::Unsupported(format!("{} through OpenSSL", self.kind.describe()))),
        }
    }

    /// The ML-DSA key, when it is one.
    pub fn ml_dsa(&self) -> Option<&MlDsaPrivateKey> {
        match &self.key {
            PrivateMaterial::MlDsa(key) => Some(key),
            _ => None,
        }
    }

    /// The ML-KEM key, when it is one.
    pub fn ml_kem(&self) -> Option<&MlKemPrivateKey> {
        match &self.key {
            PrivateMaterial::MlKem(key) => Some(key),
            _ => None,
        }
    }

    /// The X-Wing key, when it is one.
    pub fn xwing(&self) -> Option<&XWingPrivateKey> {
        match &self.key {
            PrivateMaterial::XWing(key) => Some(key),
            _ => None,
        }
    }
}

/// A public key of a known kind.
#[derive(Clone)]
pub struct PublicKey {
    key: PublicMaterial,
    kind: KeyType,
}

#[derive(Clone)]
enum PublicMaterial {
    OpenSsl(PKey<Public>),
    MlDsa(MlDsaPublicKey),
    MlKem(MlKemPublicKey),
    XWing(XWingPublicKey),
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.kind.describe())
    }
}

impl PublicKey {
    /// Parses SubjectPublicKeyInfo DER and checks it is a key of `kind`.
    pub fn from_der(der: &[u8], kind: KeyType, algorithm: &'static str) -> Result<Self, CryptoError> {
        match kind {
            KeyType::MlDsa(params) => {
                return Ok(Self { key: PublicMaterial::MlDsa(MlDsaPublicKey::from_der(params, der)?), kind });
            }
            KeyType::MlKem(params) => {
                return Ok(Self { key: PublicMaterial::MlKem(MlKemPublicKey::from_der(params, der)?), kind });
            }
            KeyType::XWing => return Ok(Self { key: PublicMaterial::XWing(XWingPublicKey::from_der(der)?), kind }),
            _ => {}
        }
        let key = PKey::public_key_from_der(der).map_err(|_| CryptoError::InvalidKey {
            algorithm,
            reason: "not a SubjectPublicKeyInfo DER public key".into(),
        })?;
        kind.check(algorithm, &key)?;
        Ok(Self { key: PublicMaterial::OpenSsl(key), kind })
    }

    /// A raw public key: Ed25519 or X25519 (32 bytes), ML-DSA's `pk` or ML-KEM's `ek`.
    pub fn from_raw(raw: &[u8], kind: KeyType, algorithm: &'static str) -> Result<Self, CryptoError> {
        let key = match kind {
            KeyType::MlDsa(params) => PublicMaterial::MlDsa(MlDsaPublicKey::from_raw(params, raw)?),
            KeyType::MlKem(params) => PublicMaterial::MlKem(MlKemPublicKey::from_raw(params, raw)?),
            KeyType::XWing => PublicMaterial::XWing(XWingPublicKey::from_raw(raw)?),
            _ => PublicMaterial::OpenSsl(
                PKey::public_key_from_raw_bytes(raw, kind.raw_id()?)
                    .map_err(|_| CryptoError::InvalidKey { algorithm, reason: "not a 32-byte public key".into() })?,
            ),
        };
        Ok(Self { key, kind })
    }

    /// The raw form, for the kinds that have one (Ed25519, X25519, ML-DSA, ML-KEM); `None` for RSA and ECDSA,
    /// whose standard form is SubjectPublicKeyInfo.
    pub fn to_raw(&self) -> Result<Option<Vec<u8>>, CryptoError> {
        Ok(match &self.key {
            PublicMaterial::OpenSsl(key) if self.kind.raw_id().is_ok() => Some(key.raw_public_key()?),
            PublicMaterial::OpenSsl(_) => None,
            PublicMaterial::MlDsa(key) => Some(key.raw().to_vec()),
            PublicMaterial::MlKem(key) => Some(key.raw().to_vec()),
            PublicMaterial::XWing(key) => Some(key.raw()),
        })
    }

    /// SubjectPublicKeyInfo DER.
    pub fn to_der(&self) -> Result<Vec<u8>, CryptoError> {
        match &self.key {
            PublicMaterial::OpenSsl(key) => Ok(key.public_key_to_der()?),
            PublicMaterial::MlDsa(key) => key.to_der(),
            PublicMaterial::MlKem(key) => key.to_der(),
            PublicMaterial::XWing(key) => key.to_der(),
        }
    }

    /// SubjectPublicKeyInfo PEM ("-----BEGIN PUBLIC KEY-----").
    pub fn to_pem(&self) -> Result<String, CryptoError> {
        let pem = match &self.key {
            PublicMaterial::OpenSsl(key) => {
                return String::from_utf8(key.public_key_to_pem()?).map_err(|_| CryptoError::Library);
            }
            _ => openssl::base64::encode_block(&self.to_der()?),
        };
        // RFC 7468: base64 in lines of 64 characters between the labels.
        let mut out = String::from("-----BEGIN PUBLIC KEY-----\n");
        for line in pem.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).map_err(|_| CryptoError::Library)?);
            out.push('\n');
        }
        out.push_str("-----END PUBLIC KEY-----\n");
        Ok(out)
    }

    /// The key's kind.
    pub fn kind(&self) -> KeyType {
        self.kind
    }

    /// The OpenSSL key; refused for the post-quantum kinds.
    pub(crate) fn pkey(&self) -> Result<&PKeyRef<Public>, CryptoError> {
        match &self.key {
            PublicMaterial::OpenSsl(key) => Ok(key),
            _ => Err(CryptoError::Unsupported(format!("{} through OpenSSL", self.kind.describe()))),
        }
    }

    /// The ML-DSA key, when it is one.
    pub fn ml_dsa(&self) -> Option<&MlDsaPublicKey> {
        match &self.key {
            PublicMaterial::MlDsa(key) => Some(key),
            _ => None,
        }
    }

    /// The ML-KEM key, when it is one.
    pub fn ml_kem(&self) -> Option<&MlKemPublicKey> {
        match &self.key {
            PublicMaterial::MlKem(key) => Some(key),
            _ => None,
        }
    }

    /// The X-Wing key, when it is one.
    pub fn xwing(&self) -> Option<&XWingPublicKey> {
        match &self.key {
            PublicMaterial::XWing(key) => Some(key),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_round_trips_through_pkcs8_and_spki() {
        for kind in [
            KeyType::Ed25519,
            KeyType::X25519,
            KeyType::EcP256,
            KeyType::EcP384,
            KeyType::Rsa(2048),
            KeyType::MlDsa(MlDsa::MlDsa65),
            KeyType::MlKem(MlKem::MlKem768),
            KeyType::XWing,
        ] {
            let key = PrivateKey::generate(kind).unwrap();
            let der = key.to_pkcs8().unwrap();
            let again = PrivateKey::from_pkcs8(der.expose_secret(), kind, "test").unwrap();
            let public = again.public_key().unwrap();
            assert_eq!(public.to_der().unwrap(), key.public_key().unwrap().to_der().unwrap());
            let parsed = PublicKey::from_der(&public.to_der().unwrap(), kind, "test").unwrap();
            assert!(parsed.to_pem().unwrap().starts_with("-----BEGIN PUBLIC KEY-----"));
            assert_eq!(format!("{again:?}"), format!("PrivateKey({}, redacted)", kind.describe()));
        }
    }

    #[test]
    fn the_wrong_kind_is_refused_with_what_was_found() {
        let ec = PrivateKey::generate(KeyType::EcP256).unwrap().to_pkcs8().unwrap();
        let err = PrivateKey::from_pkcs8(ec.expose_secret(), KeyType::EcP384, "ECDSA-P384").unwrap_err();
        assert_eq!(err.to_string(), "key material does not fit ECDSA-P384: expected a EC P-384 key, got EC P-256");
        let rsa = PrivateKey::generate(KeyType::Rsa(2048)).unwrap().to_pkcs8().unwrap();
        let err = PrivateKey::from_pkcs8(rsa.expose_secret(), KeyType::Rsa(3072), "RSA").unwrap_err();
        assert!(err.to_string().contains("expected a RSA-3072 key, got RSA-2048"), "{err}");
        assert!(PrivateKey::from_pkcs8(b"garbage", KeyType::Ed25519, "Ed25519").is_err());
    }
}

//! Post-quantum key pairs: ML-KEM (FIPS 203) for key encapsulation and ML-DSA (FIPS 204) for signatures.
//!
//! ML-KEM runs on liboqs through the `oqs` crate: key generation from the 64-byte seed `d || z` and
//! decapsulation. Encapsulation is RustCrypto's `ml-kem`, which takes the 32 random bytes `m` of FIPS 203
//! Algorithm 20 from the caller (liboqs 0.13 draws them itself and exposes no derandomized call): keymesh draws
//! `m` from the OS CSPRNG, and the known-answer vectors fix it, so encapsulation runs against Wycheproof's
//! vectors like the rest; decapsulation with liboqs checks every ciphertext it makes (tests). ML-DSA signs hedged on liboqs too. Three parts of FIPS 204 liboqs 0.13
//! (the newest the crate binds) does not expose come from RustCrypto's `ml-dsa`: key generation from the
//! 32-byte seed ξ, the deterministic variant, and signing over an external μ. So does every ML-DSA
//! verification: of Wycheproof's 631 ML-DSA verification vectors, liboqs 0.13's verifier accepts 127 that must
//! fail (signatures whose `z` is outside the bound, which FIPS 204 refuses) and refuses 3 valid ones (zero
//! public keys). `ml-dsa` gets all 631 right. Both implementations are held to Project Wycheproof's
//! vectors (`tests/wycheproof_pq.rs`).
//!
//! A private key rests as PKCS#8 in the seed form the IETF LAMPS profiles (RFC 9881, RFC 9935) define —
//! `[0] IMPLICIT OCTET STRING` of the seed — the form OpenSSL 3.5 and Python `cryptography` write; the
//! expanded key is recomputed from it when the key is loaded. ML-KEM also accepts the expanded
//! decapsulation key (and the "both" form), for keys made by tools that keep no seed; ML-DSA accepts the seed
//! or both, because an expanded ML-DSA key cannot be checked for consistency. Public keys leave raw (FIPS 203's
//! `ek`, FIPS 204's `pk`) and as SubjectPublicKeyInfo under the NIST object identifiers.

use std::{
    fmt,
    sync::{Arc, OnceLock},
};

use der::{
    Decode, Encode, Reader, SliceReader, Tag, TagNumber,
    asn1::{BitStringRef, ObjectIdentifier, OctetStringRef},
};
use ml_dsa::{MlDsa44, MlDsa65, MlDsa87, SigningKey, VerifyingKey};
use pkcs8::PrivateKeyInfo;
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};
use zeroize::Zeroizing;

use crate::{CryptoError, SecretKey};

/// Length of an ML-KEM key-generation seed (`d || z`).
pub const ML_KEM_SEED_LEN: usize = 64;
/// Length of an ML-KEM shared secret.
pub const ML_KEM_SHARED_SECRET_LEN: usize = 32;
/// Length of an ML-DSA key-generation seed (ξ).
pub const ML_DSA_SEED_LEN: usize = 32;
/// Length of an external μ (FIPS 204, Algorithm 7 line 6).
pub const ML_DSA_MU_LEN: usize = 64;
/// Longest ML-DSA context string.
pub const ML_DSA_MAX_CONTEXT_LEN: usize = 255;

fn library(_: oqs::Error) -> CryptoError {
    CryptoError::Library
}

/// An ML-KEM parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MlKem {
    /// ML-KEM-512 (security category 1).
    MlKem512,
    /// ML-KEM-768 (security category 3).
    MlKem768,
    /// ML-KEM-1024 (security category 5).
    MlKem1024,
}

impl MlKem {
    /// Every parameter set.
    pub const ALL: [Self; 3] = [Self::MlKem512, Self::MlKem768, Self::MlKem1024];

    /// Name, as FIPS 203 writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::MlKem512 => "ML-KEM-512",
            Self::MlKem768 => "ML-KEM-768",
            Self::MlKem1024 => "ML-KEM-1024",
        }
    }

    /// Strength in bits as policies count it: the security category's AES key size (128, 192, 256).
    pub fn bits(self) -> u32 {
        match self {
            Self::MlKem512 => 128,
            Self::MlKem768 => 192,
            Self::MlKem1024 => 256,
        }
    }

    /// The module rank k.
    fn rank(self) -> usize {
        match self {
            Self::MlKem512 => 2,
            Self::MlKem768 => 3,
            Self::MlKem1024 => 4,
        }
    }

    /// Length of the encapsulation key `ek`.
    pub fn public_key_len(self) -> usize {
        384 * self.rank() + 32
    }

    /// Length of the expanded decapsulation key `dk = dk_pke || ek || H(ek) || z`.
    pub fn expanded_key_len(self) -> usize {
        768 * self.rank() + 96
    }

    /// Length of a ciphertext.
    pub fn ciphertext_len(self) -> usize {
        match self {
            Self::MlKem512 => 768,
            Self::MlKem768 => 1088,
            Self::MlKem1024 => 1568,
        }
    }

    /// The object identifier of NIST's registry (id-alg-ml-kem-*).
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::MlKem512 => ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.4.1"),
            Self::MlKem768 => ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.4.2"),
            Self::MlKem1024 => ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.4.3"),
        }
    }

    /// liboqs's context for the parameter set, made once: it is only a table of function pointers.
    fn oqs(self) -> Result<&'static oqs::kem::Kem, CryptoError> {
        static KEMS: [OnceLock<Option<oqs::kem::Kem>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let (slot, algorithm) = match self {
            Self::MlKem512 => (&KEMS[0], oqs::kem::Algorithm::MlKem512),
            Self::MlKem768 => (&KEMS[1], oqs::kem::Algorithm::MlKem768),
            Self::MlKem1024 => (&KEMS[2], oqs::kem::Algorithm::MlKem1024),
        };
        slot.get_or_init(|| {
            oqs::init();
            oqs::kem::Kem::new(algorithm).ok()
        })
        .as_ref()
        .ok_or(CryptoError::Library)
    }
}

/// An ML-KEM private key: the decapsulation key, and the seed it came from when there is one. Never prints its
/// material.
pub struct MlKemPrivateKey {
    params: MlKem,
    seed: Option<Zeroizing<Vec<u8>>>,
    decapsulation_key: Zeroizing<Vec<u8>>,
    encapsulation_key: Vec<u8>,
}

impl fmt::Debug for MlKemPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MlKemPrivateKey({}, redacted)", self.params.name())
    }
}

impl MlKemPrivateKey {
    /// A fresh key from a fresh seed (OpenSSL's CSPRNG).
    pub fn generate(params: MlKem) -> Result<Self, CryptoError> {
        let seed = crate::random::random_bytes(ML_KEM_SEED_LEN)?;
        Self::from_seed(params, &seed)
    }

    /// ML-KEM.KeyGen_internal(d, z) from the 64-byte seed `d || z`.
    pub fn from_seed(params: MlKem, seed: &[u8]) -> Result<Self, CryptoError> {
        if seed.len() != ML_KEM_SEED_LEN {
            return Err(CryptoError::InvalidKey {
                algorithm: params.name(),
                reason: format!("a seed is {ML_KEM_SEED_LEN} bytes (d || z), got {}", seed.len()),
            });
        }
        let kem = params.oqs()?;
        let seed_ref = kem.keypair_seed_from_bytes(seed).ok_or(CryptoError::Library)?;
        let (public, secret) = kem.keypair_derand(seed_ref).map_err(library)?;
        Ok(Self {
            params,
            seed: Some(Zeroizing::new(seed.to_vec())),
            decapsulation_key: Zeroizing::new(secret.into_vec()),
            encapsulation_key: public.into_vec(),
        })
    }

    /// An expanded decapsulation key, checked as FIPS 203 §7.3 asks: its length, and the hash of the
    /// encapsulation key it embeds.
    pub fn from_expanded(params: MlKem, dk: &[u8]) -> Result<Self, CryptoError> {
        let invalid = |reason: String| CryptoError::InvalidKey { algorithm: params.name(), reason };
        if dk.len() != params.expanded_key_len() {
            return Err(invalid(format!(
                "an expanded decapsulation key is {} bytes, got {}",
                params.expanded_key_len(),
                dk.len()
            )));
        }
        let start = 384 * params.rank();
        let ek = &dk[start..start + params.public_key_len()];
        let hash = &dk[start + params.public_key_len()..start + params.public_key_len() + 32];
        let digest = openssl::hash::hash(openssl::hash::MessageDigest::sha3_256(), ek)?;
        if !openssl::memcmp::eq(&digest, hash) {
            return Err(invalid("the decapsulation key's hash of its encapsulation key does not match".into()));
        }
        MlKemPublicKey::from_raw(params, ek)?;
        Ok(Self { params, seed: None, decapsulation_key: Zeroizing::new(dk.to_vec()), encapsulation_key: ek.to_vec() })
    }

    /// The parameter set.
    pub fn params(&self) -> MlKem {
        self.params
    }

    /// The public half.
    pub fn public_key(&self) -> MlKemPublicKey {
        MlKemPublicKey { params: self.params, encapsulation_key: self.encapsulation_key.clone() }
    }

    /// ML-KEM.Decaps: the shared secret of `ciphertext`. A ciphertext of the right length always yields a
    /// secret (implicit rejection): a tampered one yields an unrelated pseudorandom value, never an error.
    pub fn decapsulate(&self, ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if ciphertext.len() != self.params.ciphertext_len() {
            return Err(CryptoError::InvalidInput(format!(
                "an {} ciphertext is {} bytes, got {}",
                self.params.name(),
                self.params.ciphertext_len(),
                ciphertext.len()
            )));
        }
        let kem = self.params.oqs()?;
        let secret = kem.secret_key_from_bytes(&self.decapsulation_key).ok_or(CryptoError::Library)?;
        let ciphertext = kem.ciphertext_from_bytes(ciphertext).ok_or(CryptoError::Library)?;
        let shared = kem.decapsulate(secret, ciphertext).map_err(library)?;
        Ok(Zeroizing::new(shared.into_vec()))
    }

    /// PKCS#8 (RFC 9935): the seed form when the key came from a seed, the expanded form otherwise.
    pub fn to_pkcs8(&self) -> Result<SecretKey, CryptoError> {
        let inner = match &self.seed {
            Some(seed) => Zeroizing::new(context_zero(seed)),
            None => Zeroizing::new(
                OctetStringRef::new(&self.decapsulation_key).and_then(|o| o.to_der()).map_err(der_failed)?,
            ),
        };
        encode_pkcs8(self.params.oid(), &inner)
    }

    /// Reads PKCS#8 in the seed, expanded or both form; "both" must agree.
    pub fn from_pkcs8(params: MlKem, der: &[u8]) -> Result<Self, CryptoError> {
        let inner = decode_pkcs8(params.oid(), params.name(), der)?;
        match inner {
            PrivateForm::Seed(seed) => Self::from_seed(params, &seed),
            PrivateForm::Expanded(dk) => Self::from_expanded(params, &dk),
            PrivateForm::Both(seed, dk) => {
                let key = Self::from_seed(params, &seed)?;
                same_expanded(params.name(), &key.decapsulation_key, &dk)?;
                Ok(key)
            }
        }
    }
}

/// An ML-KEM encapsulation key.
#[derive(Clone, PartialEq, Eq)]
pub struct MlKemPublicKey {
    params: MlKem,
    encapsulation_key: Vec<u8>,
}

impl fmt::Debug for MlKemPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MlKemPublicKey({})", self.params.name())
    }
}

impl MlKemPublicKey {
    /// A raw encapsulation key, checked as FIPS 203 §7.2 asks: its length and that every coefficient is
    /// reduced modulo q (liboqs runs the same check on every encapsulation).
    pub fn from_raw(params: MlKem, ek: &[u8]) -> Result<Self, CryptoError> {
        let invalid = |reason: String| CryptoError::InvalidKey { algorithm: params.name(), reason };
        if ek.len() != params.public_key_len() {
            return Err(invalid(format!(
                "an encapsulation key is {} bytes, got {}",
                params.public_key_len(),
                ek.len()
            )));
        }
        // ByteEncode_12 packs two 12-bit coefficients into three bytes; each must be below q = 3329.
        let reduced = ek[..384 * params.rank()].chunks_exact(3).all(|c| {
            let a = u16::from(c[0]) | (u16::from(c[1] & 0x0f) << 8);
            let b = u16::from(c[1] >> 4) | (u16::from(c[2]) << 4);
            a < 3329 && b < 3329
        });
        if !reduced {
            return Err(invalid("a coefficient of the encapsulation key is not reduced modulo q".into()));
        }
        Ok(Self { params, encapsulation_key: ek.to_vec() })
    }

    /// SubjectPublicKeyInfo DER of an ML-KEM key.
    pub fn from_der(params: MlKem, der: &[u8]) -> Result<Self, CryptoError> {
        Self::from_raw(params, &decode_spki(params.oid(), params.name(), der)?)
    }

    /// The parameter set.
    pub fn params(&self) -> MlKem {
        self.params
    }

    /// The raw encapsulation key (FIPS 203's `ek`).
    pub fn raw(&self) -> &[u8] {
        &self.encapsulation_key
    }

    /// SubjectPublicKeyInfo DER.
    pub fn to_der(&self) -> Result<Vec<u8>, CryptoError> {
        encode_spki(self.params.oid(), &self.encapsulation_key)
    }

    /// ML-KEM.Encaps: a fresh ciphertext and the shared secret it carries.
    pub fn encapsulate(&self) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), CryptoError> {
        let m = crate::random::random_bytes(32)?;
        let m: &[u8; 32] = m.as_slice().try_into().map_err(|_| CryptoError::Library)?;
        self.encapsulate_with(m)
    }

    /// ML-KEM.Encaps_internal (FIPS 203 Algorithm 17) with the given randomness `m`: for known-answer tests and
    /// for constructions that derive `m` (X-Wing's vectors). `m` must be uniformly random and secret; anything
    /// else gives the shared secret away. [`MlKemPublicKey::encapsulate`] draws it.
    pub fn encapsulate_with(&self, m: &[u8; 32]) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), CryptoError> {
        match self.params {
            MlKem::MlKem512 => encapsulate_as::<ml_kem::MlKem512>(&self.encapsulation_key, m),
            MlKem::MlKem768 => encapsulate_as::<ml_kem::MlKem768>(&self.encapsulation_key, m),
            MlKem::MlKem1024 => encapsulate_as::<ml_kem::MlKem1024>(&self.encapsulation_key, m),
        }
    }
}

/// Encapsulation to `ek` (already checked: its length and every coefficient reduced) with `ml-kem`.
fn encapsulate_as<K: ml_kem::KemCore>(ek: &[u8], m: &[u8; 32]) -> Result<(Vec<u8>, Zeroizing<Vec<u8>>), CryptoError> {
    use ml_kem::{EncapsulateDeterministic, EncodedSizeUser};
    let encoded = ml_kem::Encoded::<K::EncapsulationKey>::try_from(ek).map_err(|_| CryptoError::Library)?;
    let key = K::EncapsulationKey::from_bytes(&encoded);
    let (ciphertext, shared) =
        key.encapsulate_deterministic(&ml_kem::B32::from(*m)).map_err(|_| CryptoError::Library)?;
    Ok((ciphertext.to_vec(), Zeroizing::new(shared.to_vec())))
}

/// An ML-DSA parameter set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MlDsa {
    /// ML-DSA-44 (security category 2).
    MlDsa44,
    /// ML-DSA-65 (security category 3).
    MlDsa65,
    /// ML-DSA-87 (security category 5).
    MlDsa87,
}

/// How an ML-DSA signature gets its per-signature randomness (FIPS 204 §3.4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum MlDsaRandomness {
    /// Fresh randomness mixed with the key: the default, and what FIPS 204 recommends (resists fault and
    /// side-channel attacks).
    #[default]
    Hedged,
    /// No randomness: the same key and message always give the same signature.
    Deterministic,
}

/// What an ML-DSA signature covers.
#[derive(Debug, Clone, Copy)]
pub enum MlDsaInput<'a> {
    /// A message and a context string (at most 255 bytes; empty for none), as ML-DSA.Sign takes them.
    Message {
        /// The message.
        message: &'a [u8],
        /// The context string.
        context: &'a [u8],
    },
    /// An external μ (64 bytes) the caller computed as SHAKE256(SHAKE256(pk, 64) || M', 64), so a large
    /// message never travels (AWS KMS's EXTERNAL_MU).
    Mu(&'a [u8]),
}

impl MlDsa {
    /// Every parameter set.
    pub const ALL: [Self; 3] = [Self::MlDsa44, Self::MlDsa65, Self::MlDsa87];

    /// Name, as FIPS 204 writes it.
    pub fn name(self) -> &'static str {
        match self {
            Self::MlDsa44 => "ML-DSA-44",
            Self::MlDsa65 => "ML-DSA-65",
            Self::MlDsa87 => "ML-DSA-87",
        }
    }

    /// Strength in bits as policies count it: the security category's AES key size (128, 192, 256).
    pub fn bits(self) -> u32 {
        match self {
            Self::MlDsa44 => 128,
            Self::MlDsa65 => 192,
            Self::MlDsa87 => 256,
        }
    }

    /// Length of a public key.
    pub fn public_key_len(self) -> usize {
        match self {
            Self::MlDsa44 => 1312,
            Self::MlDsa65 => 1952,
            Self::MlDsa87 => 2592,
        }
    }

    /// Length of a signature.
    pub fn signature_len(self) -> usize {
        match self {
            Self::MlDsa44 => 2420,
            Self::MlDsa65 => 3309,
            Self::MlDsa87 => 4627,
        }
    }

    /// The object identifier of NIST's registry (id-ml-dsa-*).
    pub fn oid(self) -> ObjectIdentifier {
        match self {
            Self::MlDsa44 => ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.17"),
            Self::MlDsa65 => ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.18"),
            Self::MlDsa87 => ObjectIdentifier::new_unwrap("2.16.840.1.101.3.4.3.19"),
        }
    }

    fn oqs(self) -> Result<&'static oqs::sig::Sig, CryptoError> {
        static SIGS: [OnceLock<Option<oqs::sig::Sig>>; 3] = [OnceLock::new(), OnceLock::new(), OnceLock::new()];
        let (slot, algorithm) = match self {
            Self::MlDsa44 => (&SIGS[0], oqs::sig::Algorithm::MlDsa44),
            Self::MlDsa65 => (&SIGS[1], oqs::sig::Algorithm::MlDsa65),
            Self::MlDsa87 => (&SIGS[2], oqs::sig::Algorithm::MlDsa87),
        };
        slot.get_or_init(|| {
            oqs::init();
            oqs::sig::Sig::new(algorithm).ok()
        })
        .as_ref()
        .ok_or(CryptoError::Library)
    }
}

fn check_mu(mu: &[u8]) -> Result<&[u8; ML_DSA_MU_LEN], CryptoError> {
    mu.try_into()
        .map_err(|_| CryptoError::InvalidInput(format!("an external mu is {ML_DSA_MU_LEN} bytes, got {}", mu.len())))
}

/// RustCrypto's signing key (it holds the expanded key), per parameter set.
enum DsaSigningKey {
    MlDsa44(Box<SigningKey<MlDsa44>>),
    MlDsa65(Box<SigningKey<MlDsa65>>),
    MlDsa87(Box<SigningKey<MlDsa87>>),
}

/// ML-DSA's per-signature randomness `rnd` for RustCrypto's signer: 32 bytes of OpenSSL's CSPRNG when hedged,
/// zeros when deterministic (FIPS 204 Algorithm 2 line 5 versus line 7).
struct Rnd(MlDsaRandomness);

impl rand_core_0_10::TryRng for Rnd {
    type Error = CryptoError;

    fn try_next_u32(&mut self) -> Result<u32, CryptoError> {
        let mut bytes = [0u8; 4];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u32::from_le_bytes(bytes))
    }

    fn try_next_u64(&mut self) -> Result<u64, CryptoError> {
        let mut bytes = [0u8; 8];
        self.try_fill_bytes(&mut bytes)?;
        Ok(u64::from_le_bytes(bytes))
    }

    fn try_fill_bytes(&mut self, dst: &mut [u8]) -> Result<(), CryptoError> {
        match self.0 {
            MlDsaRandomness::Hedged => Ok(openssl::rand::rand_priv_bytes(dst)?),
            MlDsaRandomness::Deterministic => {
                dst.fill(0);
                Ok(())
            }
        }
    }
}

impl rand_core_0_10::TryCryptoRng for Rnd {}

/// An ML-DSA private key: its seed, and the expanded key and public key it generates. Never prints its
/// material.
pub struct MlDsaPrivateKey {
    params: MlDsa,
    seed: Zeroizing<[u8; ML_DSA_SEED_LEN]>,
    expanded: Zeroizing<Vec<u8>>,
    public_key: MlDsaPublicKey,
    signing_key: DsaSigningKey,
}

impl fmt::Debug for MlDsaPrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MlDsaPrivateKey({}, redacted)", self.params.name())
    }
}

impl MlDsaPrivateKey {
    /// A fresh key from a fresh seed (OpenSSL's CSPRNG).
    pub fn generate(params: MlDsa) -> Result<Self, CryptoError> {
        let seed = crate::random::random_bytes(ML_DSA_SEED_LEN)?;
        Self::from_seed(params, &seed)
    }

    /// ML-DSA.KeyGen_internal(ξ) from the 32-byte seed.
    pub fn from_seed(params: MlDsa, seed: &[u8]) -> Result<Self, CryptoError> {
        if seed.len() != ML_DSA_SEED_LEN {
            return Err(CryptoError::InvalidKey {
                algorithm: params.name(),
                reason: format!("a seed is {ML_DSA_SEED_LEN} bytes (xi), got {}", seed.len()),
            });
        }
        let mut copy = Zeroizing::new([0u8; ML_DSA_SEED_LEN]);
        copy.copy_from_slice(seed);
        let seed = copy;
        let xi = Zeroizing::new(ml_dsa::Seed::from(*seed));
        // The expanded key is the form liboqs signs with. `to_expanded` is deprecated only as a storage form.
        #[allow(deprecated)]
        let (expanded, public_key, signing_key) = match params {
            MlDsa::MlDsa44 => {
                let key = Box::new(SigningKey::<MlDsa44>::from_seed(&xi));
                (
                    Zeroizing::new(key.expanded_key().to_expanded()).to_vec(),
                    key.expanded_key().verifying_key().encode().to_vec(),
                    DsaSigningKey::MlDsa44(key),
                )
            }
            MlDsa::MlDsa65 => {
                let key = Box::new(SigningKey::<MlDsa65>::from_seed(&xi));
                (
                    Zeroizing::new(key.expanded_key().to_expanded()).to_vec(),
                    key.expanded_key().verifying_key().encode().to_vec(),
                    DsaSigningKey::MlDsa65(key),
                )
            }
            MlDsa::MlDsa87 => {
                let key = Box::new(SigningKey::<MlDsa87>::from_seed(&xi));
                (
                    Zeroizing::new(key.expanded_key().to_expanded()).to_vec(),
                    key.expanded_key().verifying_key().encode().to_vec(),
                    DsaSigningKey::MlDsa87(key),
                )
            }
        };
        let public_key = MlDsaPublicKey::from_raw(params, &public_key)?;
        Ok(Self { params, seed, expanded: Zeroizing::new(expanded), public_key, signing_key })
    }

    /// The parameter set.
    pub fn params(&self) -> MlDsa {
        self.params
    }

    /// The public half.
    pub fn public_key(&self) -> MlDsaPublicKey {
        self.public_key.clone()
    }

    /// ML-DSA.Sign. A hedged signature of a message comes from liboqs; the deterministic variant and external
    /// μ from RustCrypto's `ml-dsa`, which liboqs 0.13 does not expose.
    pub fn sign(&self, input: MlDsaInput<'_>, randomness: MlDsaRandomness) -> Result<Vec<u8>, CryptoError> {
        let refused = |_| CryptoError::Library;
        match (input, randomness) {
            (MlDsaInput::Message { context, .. }, _) if context.len() > ML_DSA_MAX_CONTEXT_LEN => {
                Err(CryptoError::InvalidInput(format!(
                    "an ML-DSA context is at most {ML_DSA_MAX_CONTEXT_LEN} bytes, got {}",
                    context.len()
                )))
            }
            (MlDsaInput::Message { message, context }, MlDsaRandomness::Hedged) => {
                let sig = self.params.oqs()?;
                let secret = sig.secret_key_from_bytes(&self.expanded).ok_or(CryptoError::Library)?;
                Ok(sig.sign_with_ctx_str(message, context, secret).map_err(library)?.into_vec())
            }
            (MlDsaInput::Message { message, context }, MlDsaRandomness::Deterministic) => Ok(match &self.signing_key {
                DsaSigningKey::MlDsa44(k) => {
                    k.expanded_key().sign_deterministic(message, context).map_err(refused)?.encode().to_vec()
                }
                DsaSigningKey::MlDsa65(k) => {
                    k.expanded_key().sign_deterministic(message, context).map_err(refused)?.encode().to_vec()
                }
                DsaSigningKey::MlDsa87(k) => {
                    k.expanded_key().sign_deterministic(message, context).map_err(refused)?.encode().to_vec()
                }
            }),
            (MlDsaInput::Mu(mu), randomness) => {
                let mu = check_mu(mu)?;
                let mut rnd = Rnd(randomness);
                Ok(match &self.signing_key {
                    DsaSigningKey::MlDsa44(k) => {
                        k.expanded_key().sign_mu_randomized(mu.into(), &mut rnd).map_err(refused)?.encode().to_vec()
                    }
                    DsaSigningKey::MlDsa65(k) => {
                        k.expanded_key().sign_mu_randomized(mu.into(), &mut rnd).map_err(refused)?.encode().to_vec()
                    }
                    DsaSigningKey::MlDsa87(k) => {
                        k.expanded_key().sign_mu_randomized(mu.into(), &mut rnd).map_err(refused)?.encode().to_vec()
                    }
                })
            }
        }
    }

    /// Verifies with the key's own public half.
    pub fn verify(&self, input: MlDsaInput<'_>, signature: &[u8]) -> Result<bool, CryptoError> {
        self.public_key.verify(input, signature)
    }

    /// PKCS#8 (RFC 9881) in the seed form.
    pub fn to_pkcs8(&self) -> Result<SecretKey, CryptoError> {
        encode_pkcs8(self.params.oid(), &Zeroizing::new(context_zero(&self.seed[..])))
    }

    /// Reads PKCS#8 in the seed or both form ("both" must agree); the expanded form alone is refused.
    pub fn from_pkcs8(params: MlDsa, der: &[u8]) -> Result<Self, CryptoError> {
        match decode_pkcs8(params.oid(), params.name(), der)? {
            PrivateForm::Seed(seed) => Self::from_seed(params, &seed),
            PrivateForm::Both(seed, expanded) => {
                let key = Self::from_seed(params, &seed)?;
                same_expanded(params.name(), &key.expanded, &expanded)?;
                Ok(key)
            }
            PrivateForm::Expanded(_) => Err(CryptoError::InvalidKey {
                algorithm: params.name(),
                reason: "an expanded ML-DSA key without its seed cannot be checked; import the seed form (or both)"
                    .into(),
            }),
        }
    }
}

/// RustCrypto's verifying key (it holds the expanded matrix A, so it is made once per key), per parameter set.
#[derive(Clone)]
enum DsaVerifyingKey {
    MlDsa44(Arc<VerifyingKey<MlDsa44>>),
    MlDsa65(Arc<VerifyingKey<MlDsa65>>),
    MlDsa87(Arc<VerifyingKey<MlDsa87>>),
}

impl DsaVerifyingKey {
    fn decode(params: MlDsa, pk: &[u8]) -> Option<Self> {
        Some(match params {
            MlDsa::MlDsa44 => Self::MlDsa44(Arc::new(VerifyingKey::decode(pk.try_into().ok()?))),
            MlDsa::MlDsa65 => Self::MlDsa65(Arc::new(VerifyingKey::decode(pk.try_into().ok()?))),
            MlDsa::MlDsa87 => Self::MlDsa87(Arc::new(VerifyingKey::decode(pk.try_into().ok()?))),
        })
    }

    /// ML-DSA.Verify; `false` for any malformed or wrong signature.
    fn verify(&self, input: MlDsaInput<'_>, signature: &[u8]) -> Result<bool, CryptoError> {
        let mu = match input {
            MlDsaInput::Mu(mu) => Some(check_mu(mu)?),
            MlDsaInput::Message { .. } => None,
        };
        macro_rules! verify {
            ($key:expr, $params:ty) => {{
                let Ok(encoded) = signature.try_into() else { return Ok(false) };
                // Decoding refuses a signature whose hint or z is out of range.
                let Some(signature) = ml_dsa::Signature::<$params>::decode(encoded) else { return Ok(false) };
                match (input, mu) {
                    (_, Some(mu)) => $key.verify_mu(mu.into(), &signature),
                    (MlDsaInput::Message { message, context }, None) => {
                        $key.verify_with_context(message, context, &signature)
                    }
                    (MlDsaInput::Mu(_), None) => false,
                }
            }};
        }
        Ok(match self {
            Self::MlDsa44(key) => verify!(key, MlDsa44),
            Self::MlDsa65(key) => verify!(key, MlDsa65),
            Self::MlDsa87(key) => verify!(key, MlDsa87),
        })
    }
}

/// An ML-DSA public key.
#[derive(Clone)]
pub struct MlDsaPublicKey {
    params: MlDsa,
    public_key: Vec<u8>,
    verifying_key: DsaVerifyingKey,
}

impl PartialEq for MlDsaPublicKey {
    fn eq(&self, other: &Self) -> bool {
        self.params == other.params && self.public_key == other.public_key
    }
}

impl Eq for MlDsaPublicKey {}

impl fmt::Debug for MlDsaPublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MlDsaPublicKey({})", self.params.name())
    }
}

impl MlDsaPublicKey {
    /// A raw public key (FIPS 204's `pk`), checked for length.
    pub fn from_raw(params: MlDsa, pk: &[u8]) -> Result<Self, CryptoError> {
        if pk.len() != params.public_key_len() {
            return Err(CryptoError::InvalidKey {
                algorithm: params.name(),
                reason: format!("a public key is {} bytes, got {}", params.public_key_len(), pk.len()),
            });
        }
        let verifying_key = DsaVerifyingKey::decode(params, pk).ok_or(CryptoError::Library)?;
        Ok(Self { params, public_key: pk.to_vec(), verifying_key })
    }

    /// SubjectPublicKeyInfo DER of an ML-DSA key.
    pub fn from_der(params: MlDsa, der: &[u8]) -> Result<Self, CryptoError> {
        Self::from_raw(params, &decode_spki(params.oid(), params.name(), der)?)
    }

    /// The parameter set.
    pub fn params(&self) -> MlDsa {
        self.params
    }

    /// The raw public key.
    pub fn raw(&self) -> &[u8] {
        &self.public_key
    }

    /// SubjectPublicKeyInfo DER.
    pub fn to_der(&self) -> Result<Vec<u8>, CryptoError> {
        encode_spki(self.params.oid(), &self.public_key)
    }

    /// ML-DSA.Verify; `false` for any malformed or wrong signature.
    pub fn verify(&self, input: MlDsaInput<'_>, signature: &[u8]) -> Result<bool, CryptoError> {
        if let MlDsaInput::Mu(mu) = input {
            check_mu(mu)?;
        }
        if signature.len() != self.params.signature_len() {
            return Ok(false);
        }
        self.verifying_key.verify(input, signature)
    }
}

/// The "both" form's check: the expanded key is the one the seed generates (lengths first: OpenSSL's
/// constant-time comparison asserts equal lengths).
fn same_expanded(algorithm: &'static str, generated: &[u8], given: &[u8]) -> Result<(), CryptoError> {
    if generated.len() != given.len() || !openssl::memcmp::eq(generated, given) {
        return Err(CryptoError::InvalidKey {
            algorithm,
            reason: "the expanded key is not the one its seed generates".into(),
        });
    }
    Ok(())
}

fn der_failed(_: der::Error) -> CryptoError {
    CryptoError::Library
}

/// `[0] IMPLICIT OCTET STRING` of a seed (both seeds are shorter than 128 bytes, so the length is one byte).
fn context_zero(seed: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + seed.len());
    out.push(0x80);
    out.push(seed.len() as u8);
    out.extend_from_slice(seed);
    out
}

pub(crate) fn encode_pkcs8(oid: ObjectIdentifier, private_key: &[u8]) -> Result<SecretKey, CryptoError> {
    let info = PrivateKeyInfo::new(AlgorithmIdentifierRef { oid, parameters: None }, private_key);
    Ok(SecretKey::from_bytes(info.to_der().map_err(der_failed)?))
}

/// The three private-key forms of the LAMPS profiles.
enum PrivateForm {
    Seed(Zeroizing<Vec<u8>>),
    Expanded(Zeroizing<Vec<u8>>),
    Both(Zeroizing<Vec<u8>>, Zeroizing<Vec<u8>>),
}

/// The privateKey contents of PKCS#8 under `oid` (no parameters).
fn pkcs8_private_key<'a>(
    oid: ObjectIdentifier,
    algorithm: &'static str,
    der: &'a [u8],
) -> Result<&'a [u8], CryptoError> {
    let invalid = |reason: &str| CryptoError::InvalidKey { algorithm, reason: reason.into() };
    let info = PrivateKeyInfo::from_der(der).map_err(|_| invalid("not a PKCS#8 DER private key (OneAsymmetricKey)"))?;
    if info.algorithm.oid != oid {
        return Err(CryptoError::InvalidKey {
            algorithm,
            reason: format!("expected an {algorithm} key, got algorithm {}", info.algorithm.oid),
        });
    }
    if info.algorithm.parameters.is_some() {
        return Err(invalid("the algorithm identifier must have no parameters"));
    }
    Ok(info.private_key)
}

/// The privateKey contents of PKCS#8 under `oid`, copied into a zeroizing buffer (X-Wing's seed).
pub(crate) fn decode_pkcs8_raw(
    oid: ObjectIdentifier,
    algorithm: &'static str,
    der: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    Ok(Zeroizing::new(pkcs8_private_key(oid, algorithm, der)?.to_vec()))
}

fn decode_pkcs8(oid: ObjectIdentifier, algorithm: &'static str, der: &[u8]) -> Result<PrivateForm, CryptoError> {
    let invalid = |reason: &str| CryptoError::InvalidKey { algorithm, reason: reason.into() };
    let private_key = pkcs8_private_key(oid, algorithm, der)?;
    let not_a_form = || invalid("the private key is none of the seed, expandedKey or both forms");
    let mut reader = SliceReader::new(private_key).map_err(|_| not_a_form())?;
    let header = reader.peek_header().map_err(|_| not_a_form())?;
    let form = match header.tag {
        Tag::ContextSpecific { constructed: false, number } if number == TagNumber::N0 => {
            let any = der::asn1::AnyRef::decode(&mut reader).map_err(|_| not_a_form())?;
            PrivateForm::Seed(Zeroizing::new(any.value().to_vec()))
        }
        Tag::OctetString => {
            let expanded = OctetStringRef::decode(&mut reader).map_err(|_| not_a_form())?;
            PrivateForm::Expanded(Zeroizing::new(expanded.as_bytes().to_vec()))
        }
        Tag::Sequence => {
            let sequence = der::asn1::AnyRef::decode(&mut reader).map_err(|_| not_a_form())?;
            let mut inner = SliceReader::new(sequence.value()).map_err(|_| not_a_form())?;
            let seed = OctetStringRef::decode(&mut inner).map_err(|_| not_a_form())?;
            let expanded = OctetStringRef::decode(&mut inner).map_err(|_| not_a_form())?;
            if !inner.is_finished() {
                return Err(not_a_form());
            }
            PrivateForm::Both(Zeroizing::new(seed.as_bytes().to_vec()), Zeroizing::new(expanded.as_bytes().to_vec()))
        }
        _ => return Err(not_a_form()),
    };
    if !reader.is_finished() {
        return Err(not_a_form());
    }
    Ok(form)
}

pub(crate) fn encode_spki(oid: ObjectIdentifier, raw: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let spki = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef { oid, parameters: None },
        subject_public_key: BitStringRef::from_bytes(raw).map_err(der_failed)?,
    };
    spki.to_der().map_err(der_failed)
}

pub(crate) fn decode_spki(oid: ObjectIdentifier, algorithm: &'static str, der: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let spki = SubjectPublicKeyInfoRef::from_der(der).map_err(|_| CryptoError::InvalidKey {
        algorithm,
        reason: "not a SubjectPublicKeyInfo DER public key".into(),
    })?;
    if spki.algorithm.oid != oid || spki.algorithm.parameters.is_some() {
        return Err(CryptoError::InvalidKey {
            algorithm,
            reason: format!("expected an {algorithm} key, got algorithm {}", spki.algorithm.oid),
        });
    }
    spki.subject_public_key
        .as_bytes()
        .map(<[u8]>::to_vec)
        .ok_or(CryptoError::InvalidKey { algorithm, reason: "the public key is not a whole number of bytes".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ml_kem_keys_round_trip_and_agree() {
        for params in MlKem::ALL {
            let key = MlKemPrivateKey::generate(params).unwrap();
            let public = key.public_key();
            assert_eq!(public.raw().len(), params.public_key_len());
            let (ct, shared) = public.encapsulate().unwrap();
            assert_eq!(ct.len(), params.ciphertext_len());
            assert_eq!(shared.len(), ML_KEM_SHARED_SECRET_LEN);
            assert_eq!(key.decapsulate(&ct).unwrap(), shared);
            let pkcs8 = key.to_pkcs8().unwrap();
            let again = MlKemPrivateKey::from_pkcs8(params, pkcs8.expose_secret()).unwrap();
            assert_eq!(again.decapsulate(&ct).unwrap(), shared);
            let expanded = MlKemPrivateKey::from_expanded(params, &key.decapsulation_key).unwrap();
            assert_eq!(expanded.decapsulate(&ct).unwrap(), shared);
            let der = public.to_der().unwrap();
            assert_eq!(MlKemPublicKey::from_der(params, &der).unwrap(), public);
            assert_eq!(format!("{key:?}"), format!("MlKemPrivateKey({}, redacted)", params.name()));
        }
    }

    #[test]
    fn ml_kem_refuses_what_fips_203_asks_to_check() {
        let params = MlKem::MlKem768;
        let key = MlKemPrivateKey::generate(params).unwrap();
        let mut dk = key.decapsulation_key.to_vec();
        let ek_start = 384 * 3;
        dk[ek_start] ^= 1;
        assert!(MlKemPrivateKey::from_expanded(params, &dk).unwrap_err().to_string().contains("hash"));
        let mut ek = key.public_key().raw().to_vec();
        ek[0] = 0xff;
        ek[1] |= 0x0f;
        assert!(MlKemPublicKey::from_raw(params, &ek).unwrap_err().to_string().contains("reduced"));
        assert!(MlKemPrivateKey::from_seed(params, &[0; 32]).is_err());
        assert!(matches!(key.decapsulate(&[0; 10]), Err(CryptoError::InvalidInput(_))));
        let other = MlKemPrivateKey::generate(MlKem::MlKem512).unwrap().to_pkcs8().unwrap();
        let err = MlKemPrivateKey::from_pkcs8(params, other.expose_secret()).unwrap_err().to_string();
        assert!(err.contains("2.16.840.1.101.3.4.4.1"), "{err}");
    }

    #[test]
    fn the_both_form_must_agree_and_the_expanded_form_alone_is_checked() {
        let params = MlKem::MlKem768;
        let key = MlKemPrivateKey::generate(params).unwrap();
        let seed = key.seed.as_ref().unwrap().to_vec();
        let both = |expanded: &[u8]| {
            let seed = OctetStringRef::new(&seed).unwrap().to_der().unwrap();
            let expanded = OctetStringRef::new(expanded).unwrap().to_der().unwrap();
            let body = [seed, expanded].concat();
            let mut inner = vec![0x30, 0x82, (body.len() >> 8) as u8, body.len() as u8];
            inner.extend_from_slice(&body);
            encode_pkcs8(params.oid(), &inner).unwrap()
        };
        let agreeing = both(&key.decapsulation_key);
        assert!(MlKemPrivateKey::from_pkcs8(params, agreeing.expose_secret()).is_ok());
        let mut other = key.decapsulation_key.to_vec();
        other[0] ^= 1;
        let err = MlKemPrivateKey::from_pkcs8(params, both(&other).expose_secret()).unwrap_err();
        assert!(err.to_string().contains("not the one its seed generates"), "{err}");
        // An expanded key of another length is refused, not compared.
        let short = both(&key.decapsulation_key[1..]);
        assert!(MlKemPrivateKey::from_pkcs8(params, short.expose_secret()).is_err());
        // The expanded form alone: its embedded hash is checked.
        let expanded = encode_pkcs8(params.oid(), &OctetStringRef::new(&other).unwrap().to_der().unwrap()).unwrap();
        assert!(MlKemPrivateKey::from_pkcs8(params, expanded.expose_secret()).is_ok(), "dk_pke is not checked");
        let mut bad_hash = key.decapsulation_key.to_vec();
        bad_hash[384 * 3 + 1184] ^= 1;
        let expanded = encode_pkcs8(params.oid(), &OctetStringRef::new(&bad_hash).unwrap().to_der().unwrap()).unwrap();
        assert!(MlKemPrivateKey::from_pkcs8(params, expanded.expose_secret()).is_err());
        // An ML-DSA seed with an expanded key of the wrong length.
        let dsa = MlDsaPrivateKey::generate(MlDsa::MlDsa44).unwrap();
        let seed = OctetStringRef::new(&dsa.seed[..]).unwrap().to_der().unwrap();
        let expanded = OctetStringRef::new(&dsa.expanded[2..]).unwrap().to_der().unwrap();
        let body = [seed, expanded].concat();
        let mut inner = vec![0x30, 0x82, (body.len() >> 8) as u8, body.len() as u8];
        inner.extend_from_slice(&body);
        let der = encode_pkcs8(MlDsa::MlDsa44.oid(), &inner).unwrap();
        assert!(MlDsaPrivateKey::from_pkcs8(MlDsa::MlDsa44, der.expose_secret()).is_err());
    }

    #[test]
    fn ml_dsa_signs_in_every_variant_and_verifies() {
        for params in MlDsa::ALL {
            let key = MlDsaPrivateKey::generate(params).unwrap();
            let public = key.public_key();
            let message = MlDsaInput::Message { message: b"attack at dawn", context: b"" };
            let hedged = key.sign(message, MlDsaRandomness::Hedged).unwrap();
            let again = key.sign(message, MlDsaRandomness::Hedged).unwrap();
            assert_ne!(hedged, again, "hedged signatures differ");
            let deterministic = key.sign(message, MlDsaRandomness::Deterministic).unwrap();
            assert_eq!(deterministic, key.sign(message, MlDsaRandomness::Deterministic).unwrap());
            for signature in [&hedged, &again, &deterministic] {
                assert_eq!(signature.len(), params.signature_len());
                assert!(public.verify(message, signature).unwrap());
                assert!(
                    !public
                        .verify(MlDsaInput::Message { message: b"attack at dusk", context: b"" }, signature)
                        .unwrap()
                );
                assert!(
                    !public
                        .verify(MlDsaInput::Message { message: b"attack at dawn", context: b"x" }, signature)
                        .unwrap()
                );
            }
            let mu = [7u8; ML_DSA_MU_LEN];
            let signature = key.sign(MlDsaInput::Mu(&mu), MlDsaRandomness::Hedged).unwrap();
            assert!(public.verify(MlDsaInput::Mu(&mu), &signature).unwrap());
            assert!(!public.verify(MlDsaInput::Mu(&[8u8; ML_DSA_MU_LEN]), &signature).unwrap());
            let pkcs8 = key.to_pkcs8().unwrap();
            let loaded = MlDsaPrivateKey::from_pkcs8(params, pkcs8.expose_secret()).unwrap();
            assert_eq!(loaded.public_key(), public);
            assert_eq!(MlDsaPublicKey::from_der(params, &public.to_der().unwrap()).unwrap(), public);
        }
    }

    #[test]
    fn a_flipped_bit_anywhere_in_an_ml_dsa_signature_is_refused() {
        let key = MlDsaPrivateKey::generate(MlDsa::MlDsa44).unwrap();
        let message = MlDsaInput::Message { message: b"m", context: b"" };
        let signature = key.sign(message, MlDsaRandomness::Hedged).unwrap();
        for byte in (0..signature.len()).step_by(37).chain([signature.len() - 1]) {
            let mut tampered = signature.clone();
            tampered[byte] ^= 0x10;
            assert!(!key.verify(message, &tampered).unwrap(), "byte {byte}");
        }
        assert!(!key.verify(message, &signature[1..]).unwrap());
    }

    #[test]
    fn ml_dsa_refuses_bad_inputs_by_name() {
        let key = MlDsaPrivateKey::generate(MlDsa::MlDsa65).unwrap();
        let long = [0u8; 256];
        let err = key.sign(MlDsaInput::Message { message: b"m", context: &long }, MlDsaRandomness::Hedged);
        assert!(matches!(err, Err(CryptoError::InvalidInput(_))));
        assert!(matches!(
            key.sign(MlDsaInput::Mu(&[0; 32]), MlDsaRandomness::Hedged),
            Err(CryptoError::InvalidInput(_))
        ));
        assert!(MlDsaPrivateKey::from_seed(MlDsa::MlDsa65, &[0; 31]).is_err());
        assert_eq!(format!("{key:?}"), "MlDsaPrivateKey(ML-DSA-65, redacted)");
    }
}

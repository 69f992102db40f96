//! Digital signatures: Ed25519, ECDSA over P-256/P-384 and RSA-PSS, all on OpenSSL so FIPS mode covers
//! them; and the post-quantum ML-DSA (FIPS 204) of [`crate::pq`]. Signatures are in the encodings every verifier reads: Ed25519's 64 bytes, ECDSA as a DER
//! `ECDSA-Sig-Value` (what `openssl dgst -verify`, Python `cryptography`, Go and AWS KMS use), RSA-PSS with
//! MGF1 over the same hash and a salt as long as the hash (AWS KMS's and Google Cloud KMS's choice).
//!
//! ECDSA and RSA-PSS sign either a message (hashed here) or a digest the caller computed with the
//! algorithm's hash, so a caller never has to send a large document; both produce identical signatures
//! for the same data. Pure Ed25519 hashes the message inside the signature scheme and so only signs
//! messages. ML-DSA signs a message (pure ML-DSA, empty context) or an external μ the caller computed, and
//! names its randomness: hedged by default, deterministic on request.

use openssl::{
    hash::MessageDigest,
    md::Md,
    pkey::{HasPublic, PKeyRef},
    pkey_ctx::PkeyCtx,
    rsa::Padding,
    sign::{RsaPssSaltlen, Signer, Verifier},
};

use crate::{
    CryptoError,
    keypair::{KeyType, PrivateKey, PublicKey},
    pq::{MlDsa, MlDsaInput, MlDsaRandomness},
    primitives::Hash,
};

/// A signature algorithm a key version can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignatureAlgorithm {
    /// Ed25519 (RFC 8032, pure).
    Ed25519,
    /// ECDSA over P-256 with SHA-256.
    EcdsaP256Sha256,
    /// ECDSA over P-384 with SHA-384.
    EcdsaP384Sha384,
    /// RSASSA-PSS, 2048-bit modulus, SHA-256, MGF1-SHA-256, 32-byte salt.
    RsaPss2048Sha256,
    /// RSASSA-PSS, 3072-bit modulus, SHA-256, MGF1-SHA-256, 32-byte salt.
    RsaPss3072Sha256,
    /// RSASSA-PSS, 4096-bit modulus, SHA-256, MGF1-SHA-256, 32-byte salt.
    RsaPss4096Sha256,
    /// ML-DSA (FIPS 204), pure, at one of its parameter sets.
    MlDsa(MlDsa),
}

/// What is signed or verified.
#[derive(Debug, Clone, Copy)]
pub enum SignInput<'a> {
    /// The message itself.
    Message(&'a [u8]),
    /// The message's digest under the algorithm's hash.
    Digest(&'a [u8]),
    /// ML-DSA's external μ (64 bytes), computed by the caller from the public key and the message.
    Mu(&'a [u8]),
}

/// How a signature draws its randomness, where the algorithm offers a choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Randomness {
    /// What the algorithm does by default: hedged ML-DSA, randomized ECDSA and RSA-PSS, deterministic Ed25519.
    #[default]
    AlgorithmDefault,
    /// Fresh randomness mixed with the key (ML-DSA).
    Hedged,
    /// None: equal inputs give equal signatures (ML-DSA, and Ed25519, which is always deterministic).
    Deterministic,
}

impl SignatureAlgorithm {
    /// Every algorithm.
    pub const ALL: [Self; 9] = [
        Self::Ed25519,
        Self::EcdsaP256Sha256,
        Self::EcdsaP384Sha384,
        Self::RsaPss2048Sha256,
        Self::RsaPss3072Sha256,
        Self::RsaPss4096Sha256,
        Self::MlDsa(MlDsa::MlDsa44),
        Self::MlDsa(MlDsa::MlDsa65),
        Self::MlDsa(MlDsa::MlDsa87),
    ];

    /// Name, as used in wrap contexts and messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Ed25519 => "Ed25519",
            Self::EcdsaP256Sha256 => "ECDSA-P256-SHA256",
            Self::EcdsaP384Sha384 => "ECDSA-P384-SHA384",
            Self::RsaPss2048Sha256 => "RSA-PSS-2048-SHA256",
            Self::RsaPss3072Sha256 => "RSA-PSS-3072-SHA256",
            Self::RsaPss4096Sha256 => "RSA-PSS-4096-SHA256",
            Self::MlDsa(params) => params.name(),
        }
    }

    /// The kind of key it needs.
    pub fn key_type(self) -> KeyType {
        match self {
            Self::Ed25519 => KeyType::Ed25519,
            Self::EcdsaP256Sha256 => KeyType::EcP256,
            Self::EcdsaP384Sha384 => KeyType::EcP384,
            Self::RsaPss2048Sha256 => KeyType::Rsa(2048),
            Self::RsaPss3072Sha256 => KeyType::Rsa(3072),
            Self::RsaPss4096Sha256 => KeyType::Rsa(4096),
            Self::MlDsa(params) => KeyType::MlDsa(params),
        }
    }

    /// The hash a digest must be made with; `None` for Ed25519 and ML-DSA, which sign messages (and, for
    /// ML-DSA, an external μ) only.
    pub fn hash(self) -> Option<Hash> {
        match self {
            Self::Ed25519 | Self::MlDsa(_) => None,
            Self::EcdsaP384Sha384 => Some(Hash::Sha384),
            _ => Some(Hash::Sha256),
        }
    }

    fn is_rsa(self) -> bool {
        matches!(self, Self::RsaPss2048Sha256 | Self::RsaPss3072Sha256 | Self::RsaPss4096Sha256)
    }

    /// Signs with `key`, which must be of the algorithm's kind, with the algorithm's default randomness.
    pub fn sign(self, key: &PrivateKey, input: SignInput<'_>) -> Result<Vec<u8>, CryptoError> {
        self.sign_with(key, input, Randomness::AlgorithmDefault, b"")
    }

    /// Signs with `key`, the randomness asked for and, for ML-DSA, a context string (FIPS 204's `ctx`, at most
    /// 255 bytes; empty for none). A choice the algorithm does not offer is refused.
    pub fn sign_with(
        self,
        key: &PrivateKey,
        input: SignInput<'_>,
        randomness: Randomness,
        context: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        self.check_key(key.kind())?;
        if let Some(ml_dsa) = key.ml_dsa() {
            let randomness = match randomness {
                Randomness::AlgorithmDefault | Randomness::Hedged => MlDsaRandomness::Hedged,
                Randomness::Deterministic => MlDsaRandomness::Deterministic,
            };
            return ml_dsa.sign(self.ml_dsa_input(input, context)?, randomness);
        }
        self.no_context(context)?;
        if !self.offers(randomness) {
            return Err(CryptoError::InvalidInput(format!(
                "{} offers no choice of randomness: hedged and deterministic signing are for ML-DSA (Ed25519 is \
                 always deterministic)",
                self.name()
            )));
        }
        let pkey = key.pkey()?;
        let Some(hash) = self.hash() else {
            return match input {
                SignInput::Message(message) => Ok(Signer::new_without_digest(pkey)?.sign_oneshot_to_vec(message)?),
                SignInput::Digest(_) => Err(self.no_digests()),
                SignInput::Mu(_) => Err(self.no_mu()),
            };
        };
        match input {
            SignInput::Mu(_) => Err(self.no_mu()),
            SignInput::Message(message) => {
                let mut signer = Signer::new(message_digest(hash), pkey)?;
                if self.is_rsa() {
                    signer.set_rsa_padding(Padding::PKCS1_PSS)?;
                    signer.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
                    signer.set_rsa_mgf1_md(message_digest(hash))?;
                }
                signer.update(message)?;
                Ok(signer.sign_to_vec()?)
            }
            SignInput::Digest(digest) => {
                self.check_digest(hash, digest)?;
                let mut ctx = PkeyCtx::new(pkey)?;
                ctx.sign_init()?;
                self.configure(&mut ctx, hash)?;
                let mut signature = Vec::new();
                ctx.sign_to_vec(digest, &mut signature)?;
                Ok(signature)
            }
        }
    }

    /// Verifies with a private key's public half (what crypto-service holds), in `context` for ML-DSA (empty
    /// for none).
    pub fn verify_with_private(
        self,
        key: &PrivateKey,
        input: SignInput<'_>,
        context: &[u8],
        signature: &[u8],
    ) -> Result<bool, CryptoError> {
        self.check_key(key.kind())?;
        if let Some(ml_dsa) = key.ml_dsa() {
            return ml_dsa.verify(self.ml_dsa_input(input, context)?, signature);
        }
        self.no_context(context)?;
        self.verify_pkey(key.pkey()?, input, signature)
    }

    /// Verifies with a public key. `Ok(false)` for any signature that does not verify, malformed or not;
    /// `Err` only for a request that cannot be served (wrong key kind, digest of the wrong length).
    pub fn verify(self, key: &PublicKey, input: SignInput<'_>, signature: &[u8]) -> Result<bool, CryptoError> {
        self.check_key(key.kind())?;
        if let Some(ml_dsa) = key.ml_dsa() {
            return ml_dsa.verify(self.ml_dsa_input(input, b"")?, signature);
        }
        self.verify_pkey(key.pkey()?, input, signature)
    }

    /// A context string is ML-DSA's alone.
    fn no_context(self, context: &[u8]) -> Result<(), CryptoError> {
        if context.is_empty() {
            return Ok(());
        }
        Err(CryptoError::InvalidInput(format!(
            "a context string is for ML-DSA keys; {} signs without one",
            self.name()
        )))
    }

    /// Whether the algorithm signs with `randomness`: its default always; ML-DSA hedged or deterministic;
    /// Ed25519 deterministic (what it always is).
    pub fn offers(self, randomness: Randomness) -> bool {
        matches!(
            (self, randomness),
            (_, Randomness::AlgorithmDefault) | (Self::MlDsa(_), _) | (Self::Ed25519, Randomness::Deterministic)
        )
    }

    /// ML-DSA signs a message in a context or an external μ (which already holds its context); never a digest.
    fn ml_dsa_input<'a>(self, input: SignInput<'a>, context: &'a [u8]) -> Result<MlDsaInput<'a>, CryptoError> {
        match input {
            SignInput::Message(message) => Ok(MlDsaInput::Message { message, context }),
            SignInput::Mu(_) if !context.is_empty() => Err(CryptoError::InvalidInput(
                "an external mu already holds its context (FIPS 204's M'); send no context with it".into(),
            )),
            SignInput::Mu(mu) => Ok(MlDsaInput::Mu(mu)),
            SignInput::Digest(_) => Err(CryptoError::InvalidInput(format!(
                "{} signs messages or an external mu, not digests: send the message, or its 64-byte mu",
                self.name()
            ))),
        }
    }

    fn no_mu(self) -> CryptoError {
        CryptoError::InvalidInput(format!(
            "an external mu is for ML-DSA keys; {} signs messages and digests",
            self.name()
        ))
    }

    fn verify_pkey<T: HasPublic>(
        self,
        pkey: &PKeyRef<T>,
        input: SignInput<'_>,
        signature: &[u8],
    ) -> Result<bool, CryptoError> {
        let Some(hash) = self.hash() else {
            return match input {
                // OpenSSL reports a malformed signature as an error, a wrong one as false: both are "invalid".
                SignInput::Message(message) => {
                    Ok(Verifier::new_without_digest(pkey)?.verify_oneshot(signature, message).unwrap_or(false))
                }
                SignInput::Digest(_) => Err(self.no_digests()),
                SignInput::Mu(_) => Err(self.no_mu()),
            };
        };
        match input {
            SignInput::Mu(_) => Err(self.no_mu()),
            SignInput::Message(message) => {
                let mut verifier = Verifier::new(message_digest(hash), pkey)?;
                if self.is_rsa() {
                    verifier.set_rsa_padding(Padding::PKCS1_PSS)?;
                    verifier.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
                    verifier.set_rsa_mgf1_md(message_digest(hash))?;
                }
                verifier.update(message)?;
                Ok(verifier.verify(signature).unwrap_or(false))
            }
            SignInput::Digest(digest) => {
                self.check_digest(hash, digest)?;
                let mut ctx = PkeyCtx::new(pkey)?;
                ctx.verify_init()?;
                self.configure(&mut ctx, hash)?;
                Ok(ctx.verify(digest, signature).unwrap_or(false))
            }
        }
    }

    fn configure<T>(self, ctx: &mut PkeyCtx<T>, hash: Hash) -> Result<(), CryptoError> {
        if self.is_rsa() {
            ctx.set_rsa_padding(Padding::PKCS1_PSS)?;
            ctx.set_signature_md(md(hash))?;
            ctx.set_rsa_pss_saltlen(RsaPssSaltlen::DIGEST_LENGTH)?;
            ctx.set_rsa_mgf1_md(md(hash))?;
        } else {
            ctx.set_signature_md(md(hash))?;
        }
        Ok(())
    }

    fn check_key(self, kind: KeyType) -> Result<(), CryptoError> {
        self.key_type().require(kind, self.name())
    }

    fn check_digest(self, hash: Hash, digest: &[u8]) -> Result<(), CryptoError> {
        if digest.len() != hash.output_len() {
            return Err(CryptoError::InvalidInput(format!(
                "{} signs a {}-byte {hash:?} digest, got {} bytes",
                self.name(),
                hash.output_len(),
                digest.len()
            )));
        }
        Ok(())
    }

    fn no_digests(self) -> CryptoError {
        CryptoError::InvalidInput(format!("{} signs messages, not digests: send the message", self.name()))
    }
}

fn message_digest(hash: Hash) -> MessageDigest {
    match hash {
        Hash::Sha256 => MessageDigest::sha256(),
        Hash::Sha384 => MessageDigest::sha384(),
        Hash::Sha512 => MessageDigest::sha512(),
    }
}

fn md(hash: Hash) -> &'static openssl::md::MdRef {
    match hash {
        Hash::Sha256 => Md::sha256(),
        Hash::Sha384 => Md::sha384(),
        Hash::Sha512 => Md::sha512(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primitives::{DigestAlgorithm, digest};

    #[test]
    fn every_algorithm_signs_and_verifies_messages_and_digests_alike() {
        for alg in SignatureAlgorithm::ALL {
            let key = PrivateKey::generate(alg.key_type()).unwrap();
            let public = key.public_key().unwrap();
            let message = b"the quick brown fox";
            let signature = alg.sign(&key, SignInput::Message(message)).unwrap();
            assert!(alg.verify(&public, SignInput::Message(message), &signature).unwrap(), "{alg:?}");
            assert!(alg.verify_with_private(&key, SignInput::Message(message), b"", &signature).unwrap());
            assert!(!alg.verify(&public, SignInput::Message(b"the quick brown fix"), &signature).unwrap());
            let mut flipped = signature.clone();
            flipped[5] ^= 1;
            assert!(!alg.verify(&public, SignInput::Message(message), &flipped).unwrap(), "{alg:?}");
            assert!(!alg.verify(&public, SignInput::Message(message), b"").unwrap());

            let Some(hash) = alg.hash() else {
                let err = alg.sign(&key, SignInput::Digest(&[0; 32])).unwrap_err();
                assert!(err.to_string().contains("not digests"), "{err}");
                continue;
            };
            let d = digest(
                match hash {
                    Hash::Sha384 => DigestAlgorithm::Sha384,
                    _ => DigestAlgorithm::Sha256,
                },
                message,
            )
            .unwrap();
            // A signature over the digest verifies against the message, and the other way round.
            let over_digest = alg.sign(&key, SignInput::Digest(&d)).unwrap();
            assert!(alg.verify(&public, SignInput::Message(message), &over_digest).unwrap(), "{alg:?}");
            assert!(alg.verify(&public, SignInput::Digest(&d), &signature).unwrap(), "{alg:?}");
            assert!(alg.sign(&key, SignInput::Digest(&d[1..])).is_err());
        }
    }

    #[test]
    fn a_key_of_another_kind_is_refused() {
        let p256 = PrivateKey::generate(KeyType::EcP256).unwrap();
        let err = SignatureAlgorithm::EcdsaP384Sha384.sign(&p256, SignInput::Message(b"x")).unwrap_err();
        assert!(matches!(err, CryptoError::InvalidKey { .. }), "{err}");
    }
}

//! Bring-your-own-key transport: an RSA wrapping key pair whose public half the customer wraps key material
//! with, and the two unwrapping schemes AWS KMS and GCP KMS users know:
//!
//! - RSA-OAEP-SHA-256 (MGF1-SHA-256, no label) directly over the material;
//! - RSA_AES_KEY_WRAP_SHA_256: a fresh AES-256 key wrapped with RSA-OAEP-SHA-256, followed by the material
//!   wrapped with that AES key by AES key wrap with padding (RFC 5649). The RSA part is exactly the
//!   modulus long, so the split needs no length field.
//!
//! Every unwrap failure is the same opaque error: a caller probing with crafted inputs learns nothing
//! about which check failed (Bleichenbacher/Manger-style oracles).

use openssl::{cipher::Cipher, cipher_ctx::CipherCtx, pkey::PKey, rsa::Rsa};
use zeroize::Zeroizing;

use crate::{CryptoError, SecretKey};

/// How material is wrapped for transport.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImportWrapping {
    /// RSA-OAEP-SHA-256 over the material.
    RsaOaepSha256,
    /// RSA-OAEP-SHA-256 over an ephemeral AES-256 key, then AES-KWP over the material.
    RsaAesKeyWrapSha256,
}

/// A freshly generated wrapping key pair: the private half as PKCS#8 DER (secret), the public half as PEM.
pub struct WrappingKeyPair {
    /// PKCS#8 DER of the private key; zeroized on drop.
    pub private_der: SecretKey,
    /// SubjectPublicKeyInfo PEM, for the customer.
    pub public_pem: String,
}

/// Generates an RSA wrapping key of `bits` (2048, 3072 or 4096).
pub fn generate_wrapping_key(bits: u32) -> Result<WrappingKeyPair, CryptoError> {
    if !matches!(bits, 2048 | 3072 | 4096) {
        return Err(CryptoError::Unsupported(format!("RSA-{bits} wrapping key")));
    }
    let key = PKey::from_rsa(Rsa::generate(bits)?)?;
    let private_der = SecretKey::from_bytes(key.private_key_to_pkcs8()?);
    let public_pem = String::from_utf8(key.public_key_to_pem()?).map_err(|_| CryptoError::Library)?;
    Ok(WrappingKeyPair { private_der, public_pem })
}

fn aes_kwp_unwrap(kek: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut ctx = CipherCtx::new()?;
    ctx.decrypt_init(Some(Cipher::aes_256_wrap_pad()), Some(kek), None)?;
    let mut out = Zeroizing::new(vec![0; wrapped.len() + 16]);
    let n = ctx.cipher_update(wrapped, Some(&mut out)).map_err(|_| CryptoError::DecryptionFailed)?;
    let m = ctx.cipher_final(&mut out[n..]).map_err(|_| CryptoError::DecryptionFailed)?;
    out.truncate(n + m);
    Ok(out)
}

/// Recovers imported material. Any failure is `DecryptionFailed`.
pub fn unwrap_imported(
    private_der: &SecretKey,
    wrapping: ImportWrapping,
    wrapped: &[u8],
) -> Result<SecretKey, CryptoError> {
    let key = PKey::private_key_from_pkcs8(private_der.expose_secret())?;
    let modulus_len = key.size();
    let material = match wrapping {
        ImportWrapping::RsaOaepSha256 => {
            if wrapped.len() != modulus_len {
                return Err(CryptoError::DecryptionFailed);
            }
            crate::asymmetric::rsa_oaep_decrypt(&key, b"", wrapped)?
        }
        ImportWrapping::RsaAesKeyWrapSha256 => {
            if wrapped.len() <= modulus_len {
                return Err(CryptoError::DecryptionFailed);
            }
            let (rsa_part, kwp_part) = wrapped.split_at(modulus_len);
            let ephemeral = crate::asymmetric::rsa_oaep_decrypt(&key, b"", rsa_part)?;
            if ephemeral.len() != 32 {
                return Err(CryptoError::DecryptionFailed);
            }
            aes_kwp_unwrap(&ephemeral, kwp_part)?
        }
    };
    Ok(SecretKey::copy_from_slice(&material))
}

#[cfg(test)]
mod tests {
    use openssl::{encrypt::Encrypter, hash::MessageDigest, rsa::Padding};

    use super::*;

    fn oaep_encrypt(public_pem: &str, plaintext: &[u8]) -> Vec<u8> {
        let key = PKey::public_key_from_pem(public_pem.as_bytes()).unwrap();
        let mut encrypter = Encrypter::new(&key).unwrap();
        encrypter.set_rsa_padding(Padding::PKCS1_OAEP).unwrap();
        encrypter.set_rsa_oaep_md(MessageDigest::sha256()).unwrap();
        encrypter.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
        let mut out = vec![0; encrypter.encrypt_len(plaintext).unwrap()];
        let n = encrypter.encrypt(plaintext, &mut out).unwrap();
        out.truncate(n);
        out
    }

    fn kwp_wrap(kek: &[u8], material: &[u8]) -> Vec<u8> {
        let mut ctx = CipherCtx::new().unwrap();
        ctx.encrypt_init(Some(Cipher::aes_256_wrap_pad()), Some(kek), None).unwrap();
        let mut out = vec![0; material.len() + 32];
        let n = ctx.cipher_update(material, Some(&mut out)).unwrap();
        let m = ctx.cipher_final(&mut out[n..]).unwrap();
        out.truncate(n + m);
        out
    }

    #[test]
    fn both_schemes_round_trip_and_tampering_is_opaque() {
        let pair = generate_wrapping_key(2048).unwrap();
        let material = [0x42u8; 32];
        let direct = oaep_encrypt(&pair.public_pem, &material);
        let got = unwrap_imported(&pair.private_der, ImportWrapping::RsaOaepSha256, &direct).unwrap();
        assert_eq!(got.expose_secret(), material);

        let ephemeral = [7u8; 32];
        let mut two_step = oaep_encrypt(&pair.public_pem, &ephemeral);
        two_step.extend(kwp_wrap(&ephemeral, &material));
        let got = unwrap_imported(&pair.private_der, ImportWrapping::RsaAesKeyWrapSha256, &two_step).unwrap();
        assert_eq!(got.expose_secret(), material);

        // Wrong scheme, flipped bits, truncation: one opaque error each.
        let mut flipped = two_step.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        for (wrapping, input) in [
            (ImportWrapping::RsaOaepSha256, &two_step[..]),
            (ImportWrapping::RsaAesKeyWrapSha256, &direct[..]),
            (ImportWrapping::RsaAesKeyWrapSha256, &flipped[..]),
            (ImportWrapping::RsaAesKeyWrapSha256, &two_step[..two_step.len() - 8]),
        ] {
            assert_eq!(unwrap_imported(&pair.private_der, wrapping, input).err(), Some(CryptoError::DecryptionFailed));
        }
        assert!(generate_wrapping_key(1024).is_err());
    }
}

//! The building blocks under the AEAD modes that are not AEADs themselves: HMAC, HKDF, AES-CBC with PKCS#7
//! padding and AES-CTR. They are public so that they can be checked against published vectors on their own,
//! and they run on OpenSSL, so FIPS mode covers them too.

use openssl::{
    hash::MessageDigest,
    md::Md,
    pkey::{Id, PKey},
    pkey_ctx::PkeyCtx,
    sign::Signer,
    symm::{Cipher, Crypter, Mode},
};
use zeroize::Zeroizing;

use crate::CryptoError;

/// A hash function under HMAC and HKDF.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hash {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
}

impl Hash {
    fn digest(self) -> MessageDigest {
        match self {
            Self::Sha256 => MessageDigest::sha256(),
            Self::Sha384 => MessageDigest::sha384(),
            Self::Sha512 => MessageDigest::sha512(),
        }
    }

    fn md(self) -> &'static openssl::md::MdRef {
        match self {
            Self::Sha256 => Md::sha256(),
            Self::Sha384 => Md::sha384(),
            Self::Sha512 => Md::sha512(),
        }
    }

    /// Output length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }
}

/// A hash function offered by the Hash API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DigestAlgorithm {
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// SHA3-256.
    Sha3_256,
    /// BLAKE2b with a 512-bit output (not FIPS-approved).
    Blake2b512,
}

/// The digest of `data`.
pub fn digest(algorithm: DigestAlgorithm, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let md = match algorithm {
        DigestAlgorithm::Sha256 => MessageDigest::sha256(),
        DigestAlgorithm::Sha384 => MessageDigest::sha384(),
        DigestAlgorithm::Sha512 => MessageDigest::sha512(),
        DigestAlgorithm::Sha3_256 => MessageDigest::sha3_256(),
        DigestAlgorithm::Blake2b512 => {
            MessageDigest::from_name("BLAKE2B512").ok_or_else(|| CryptoError::Unsupported("BLAKE2b-512".into()))?
        }
    };
    Ok(openssl::hash::hash(md, data)?.to_vec())
}

/// HMAC of `parts`, concatenated, under `key`.
pub fn hmac(hash: Hash, key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, CryptoError> {
    let key = PKey::hmac(key)?;
    let mut signer = Signer::new(hash.digest(), &key)?;
    for part in parts {
        signer.update(part)?;
    }
    Ok(signer.sign_to_vec()?)
}

/// HKDF (RFC 5869) extract-and-expand to `len` bytes. An empty salt is the hash length of zeros, as the RFC
/// says.
pub fn hkdf(hash: Hash, ikm: &[u8], salt: &[u8], info: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if len == 0 || len > 255 * hash.output_len() {
        return Err(CryptoError::TooLarge { what: "HKDF output", size: len, limit: 255 * hash.output_len() });
    }
    let mut ctx = PkeyCtx::new_id(Id::HKDF)?;
    ctx.derive_init()?;
    ctx.set_hkdf_md(hash.md())?;
    ctx.set_hkdf_key(ikm)?;
    if !salt.is_empty() {
        ctx.set_hkdf_salt(salt)?;
    }
    ctx.add_hkdf_info(info)?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    ctx.derive(Some(&mut out))?;
    Ok(out)
}

fn aes_cbc(key_len: usize) -> Result<Cipher, CryptoError> {
    match key_len {
        16 => Ok(Cipher::aes_128_cbc()),
        24 => Ok(Cipher::aes_192_cbc()),
        32 => Ok(Cipher::aes_256_cbc()),
        _ => Err(CryptoError::InvalidKeyLength { algorithm: "AES-CBC", expected: 32, actual: key_len }),
    }
}

fn aes_ctr(key_len: usize) -> Result<Cipher, CryptoError> {
    match key_len {
        16 => Ok(Cipher::aes_128_ctr()),
        24 => Ok(Cipher::aes_192_ctr()),
        32 => Ok(Cipher::aes_256_ctr()),
        _ => Err(CryptoError::InvalidKeyLength { algorithm: "AES-CTR", expected: 32, actual: key_len }),
    }
}

fn run(cipher: Cipher, mode: Mode, key: &[u8], iv: &[u8], pad: bool, input: &[u8]) -> Result<Vec<u8>, CryptoError> {
    if iv.len() != 16 {
        return Err(CryptoError::DecryptionFailed);
    }
    let mut crypter = Crypter::new(cipher, mode, key, Some(iv))?;
    crypter.pad(pad);
    let mut out = vec![0u8; input.len() + cipher.block_size()];
    let mut n = crypter.update(input, &mut out)?;
    n += crypter.finalize(&mut out[n..])?;
    out.truncate(n);
    Ok(out)
}

/// AES-CBC encryption with PKCS#7 padding under a 16-byte IV.
pub fn aes_cbc_encrypt(key: &[u8], iv: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    run(aes_cbc(key.len())?, Mode::Encrypt, key, iv, true, plaintext)
}

/// AES-CBC decryption and PKCS#7 unpadding. Any failure is the one opaque error; callers must have
/// authenticated the ciphertext first (encrypt-then-MAC), so this is no padding oracle.
pub fn aes_cbc_decrypt(key: &[u8], iv: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let cipher = aes_cbc(key.len()).map_err(|_| CryptoError::DecryptionFailed)?;
    if ciphertext.is_empty() || !ciphertext.len().is_multiple_of(16) {
        return Err(CryptoError::DecryptionFailed);
    }
    run(cipher, Mode::Decrypt, key, iv, true, ciphertext).map(Zeroizing::new).map_err(|_| CryptoError::DecryptionFailed)
}

/// AES-CTR under a 16-byte initial counter block (encryption and decryption are the same).
pub fn aes_ctr_apply(key: &[u8], counter_block: &[u8], input: &[u8]) -> Result<Vec<u8>, CryptoError> {
    run(aes_ctr(key.len())?, Mode::Encrypt, key, counter_block, false, input)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap_or(0)).collect()
    }

    #[test]
    fn rfc5869_case_1() {
        let okm = hkdf(
            Hash::Sha256,
            &hex("0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b"),
            &hex("000102030405060708090a0b0c"),
            &hex("f0f1f2f3f4f5f6f7f8f9"),
            42,
        )
        .map(|k| k.to_vec());
        let expected = hex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
        assert_eq!(okm, Ok(expected));
    }

    #[test]
    fn digests_of_abc() {
        let hex_of = |a| digest(a, b"abc").map(|d| d.iter().map(|b| format!("{b:02x}")).collect::<String>());
        assert_eq!(
            hex_of(DigestAlgorithm::Sha256).as_deref(),
            Ok("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad")
        );
        assert_eq!(
            hex_of(DigestAlgorithm::Sha3_256).as_deref(),
            Ok("3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532")
        );
        assert_eq!(
            hex_of(DigestAlgorithm::Blake2b512).as_deref(),
            Ok(concat!(
                "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1",
                "7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923"
            ))
        );
        assert_eq!(digest(DigestAlgorithm::Sha384, b"abc").map(|d| d.len()), Ok(48));
        assert_eq!(digest(DigestAlgorithm::Sha512, b"abc").map(|d| d.len()), Ok(64));
    }

    #[test]
    fn cbc_round_trip_and_bad_padding() {
        let key = [7u8; 32];
        let iv = [1u8; 16];
        let ct = aes_cbc_encrypt(&key, &iv, b"sixteen byte msg").unwrap_or_default();
        assert_eq!(ct.len(), 32, "a full block of padding is added");
        assert_eq!(aes_cbc_decrypt(&key, &iv, &ct).map(|p| p.to_vec()), Ok(b"sixteen byte msg".to_vec()));
        assert_eq!(aes_cbc_decrypt(&key, &iv, &ct[..31]).err(), Some(CryptoError::DecryptionFailed));
    }
}

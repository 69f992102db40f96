//! Randomness from the operating system's CSPRNG (through OpenSSL's DRBG, which is seeded by getrandom).

use zeroize::Zeroizing;

use crate::CryptoError;

/// `len` random bytes in a zeroizing buffer.
pub fn random_bytes(len: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut buf = Zeroizing::new(vec![0u8; len]);
    openssl::rand::rand_bytes(&mut buf)?;
    Ok(buf)
}

/// A random nonce of `N` bytes (nonces are public; no zeroizing needed).
pub fn nonce<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut buf = [0u8; N];
    openssl::rand::rand_bytes(&mut buf)?;
    Ok(buf)
}

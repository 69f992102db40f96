//! Secret byte strings that zeroize on drop and never print their contents.

use std::fmt;

use zeroize::{Zeroize, Zeroizing};

/// Symmetric key material (a DEK or a KEK). Not `Clone` on purpose: a copy of a key must be made
/// explicitly from `expose_secret`, so every copy is visible in review. Zeroized when dropped.
pub struct SecretKey(Zeroizing<Vec<u8>>);

impl SecretKey {
    /// Takes ownership of key bytes.
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Copies key bytes out of a borrowed buffer (the caller zeroizes its own copy).
    pub fn copy_from_slice(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// A fresh key of `len` bytes from the OS CSPRNG.
    pub fn generate(len: usize) -> Result<Self, crate::CryptoError> {
        Ok(Self(crate::random::random_bytes(len)?))
    }

    /// The raw key bytes. The name is long so that every use stands out.
    pub fn expose_secret(&self) -> &[u8] {
        &self.0
    }

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the key is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey({} bytes, redacted)", self.0.len())
    }
}

impl Drop for SecretKey {
    fn drop(&mut self) {
        // Zeroizing already does this; being explicit keeps the guarantee if the field type changes.
        self.0.zeroize();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_bytes() {
        let key = SecretKey::from_bytes(vec![0xAB; 32]);
        let printed = format!("{key:?}");
        assert_eq!(printed, "SecretKey(32 bytes, redacted)");
        assert!(!printed.to_lowercase().contains("ab, "));
    }
}

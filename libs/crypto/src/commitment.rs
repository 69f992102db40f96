//! Key commitment: binds a ciphertext to exactly one key, closing the "invisible salamanders"
//! partitioning attacks on AES-GCM (Albertini et al., 2020). The commitment is
//! HMAC-SHA256(key, "key-commitment-v1"), stored in the header and checked before decrypting.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// Length of a commitment in bytes.
pub const COMMITMENT_LEN: usize = 32;

const LABEL: &[u8] = b"key-commitment-v1";

/// The commitment to `key`.
pub fn commit(key: &[u8]) -> [u8; COMMITMENT_LEN] {
    // HMAC accepts keys of any length; new_from_slice cannot fail for Hmac<Sha256>.
    let mut mac = match Hmac::<Sha256>::new_from_slice(key) {
        Ok(mac) => mac,
        Err(_) => unreachable_hmac(),
    };
    mac.update(LABEL);
    mac.finalize().into_bytes().into()
}

/// Whether `candidate` commits to `key`, compared in constant time so timing reveals nothing about
/// how many leading bytes matched.
pub fn verify(key: &[u8], candidate: &[u8]) -> bool {
    let expected = commit(key);
    candidate.len() == COMMITMENT_LEN && bool::from(expected.ct_eq(candidate))
}

#[cold]
fn unreachable_hmac() -> ! {
    // Hmac::new_from_slice only fails for MACs with fixed key sizes, which HMAC is not.
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commitment_matches_python_hmac() {
        // python3 -c "import hmac,hashlib;print(hmac.new(bytes(32),b'key-commitment-v1',hashlib.sha256).hexdigest())"
        let c = commit(&[0u8; 32]);
        let hex: String = c.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex, "4bd4d0ce4e09f6e03ecf46b5a328f2773c5ec8b4b042d6fe1b36417b57c000a2");
        assert!(verify(&[0u8; 32], &c));
        assert!(!verify(&[1u8; 32], &c));
        assert!(!verify(&[0u8; 32], &c[..31]));
    }
}

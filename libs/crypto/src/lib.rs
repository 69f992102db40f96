//! keymesh's cryptographic core: secret types, AEAD primitives, key commitment, the self-describing
//! ciphertext format, signatures, MACs, encryption to public keys and KDFs. No I/O and no async: everything
//! here is a pure function of its inputs, so it can be tested against published vectors and reused by
//! every service and the client SDK.

pub mod aead;
pub mod algorithm;
pub mod asymmetric;
pub mod ciphertext;
pub mod commitment;
mod error;
pub mod hpke;
pub mod kdf;
pub mod key_import;
pub mod keypair;
pub mod mac;
pub mod pq;
pub mod pq_hybrid;
pub mod primitives;
pub mod random;
pub mod secret;
pub mod signature;
pub mod stream;
pub mod xwing;

pub use aead::SymmetricAlgorithm;
pub use algorithm::KeyAlgorithm;
pub use error::CryptoError;
pub use secret::SecretKey;

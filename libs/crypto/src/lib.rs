//! keymesh's cryptographic core: secret types, AEAD primitives, key commitment and the self-describing
//! ciphertext format. No I/O and no async: everything here is a pure function of its inputs, so it can be
//! tested against published vectors and reused by every service and the client SDK.

pub mod aead;
pub mod ciphertext;
pub mod commitment;
mod error;
pub mod key_import;
pub mod primitives;
pub mod random;
pub mod secret;
pub mod stream;

pub use aead::SymmetricAlgorithm;
pub use error::CryptoError;
pub use secret::SecretKey;

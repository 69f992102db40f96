//! Client-side (envelope) encryption: one GenerateDataKey call gives a data key, and data of any size is
//! then encrypted and decrypted here, without sending it to the mesh. The format is keymesh's stream
//! format (`keymesh_crypto::stream`, documented in the README), so an envelope made here opens in
//! crypto-service's DecryptStream and a stream made by EncryptStream opens here; opening needs one Decrypt
//! call for the wrapped data key in the header.

use std::collections::HashMap;

use keymesh_crypto::{
    SecretKey,
    ciphertext::Binding,
    stream::{self, StreamHeader},
};
use keymesh_proto::v1 as pb;
use zeroize::Zeroizing;

use crate::{ClientError, KeymeshClient};

/// Associated data bound to a ciphertext: raw AAD and a key-value encryption context. Both must be given
/// again, exactly, to decrypt.
#[derive(Debug, Clone, Default)]
pub struct Associated {
    /// Caller-supplied associated data.
    pub aad: Vec<u8>,
    /// Encryption context.
    pub encryption_context: HashMap<String, String>,
}

impl Associated {
    /// Just raw AAD.
    pub fn aad(aad: impl Into<Vec<u8>>) -> Self {
        Self { aad: aad.into(), encryption_context: HashMap::new() }
    }

    /// Calls `f` with the binding as the format encodes it (the context sorted).
    pub(crate) fn with_binding<T>(&self, f: impl FnOnce(Binding<'_>) -> T) -> T {
        let context = self.encryption_context.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        f(Binding { aad: &self.aad, context: Some(&context) })
    }
}

/// A data key from GenerateDataKey: the plaintext key to encrypt with here, and its wrapped form (a keymesh
/// ciphertext that only the mesh can open) to store beside the data. Never printed.
pub struct DataKey {
    plaintext: SecretKey,
    wrapped: Vec<u8>,
    key_id: String,
    key_version: u32,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("key_id", &self.key_id)
            .field("key_version", &self.key_version)
            .field("plaintext", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl DataKey {
    /// The plaintext data key.
    pub fn expose_secret(&self) -> &SecretKey {
        &self.plaintext
    }

    /// The wrapped data key, which Decrypt opens with the same associated data.
    pub fn wrapped(&self) -> &[u8] {
        &self.wrapped
    }

    /// The id of the key that wrapped it.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The version that wrapped it.
    pub fn key_version(&self) -> u32 {
        self.key_version
    }

    /// Encrypts a whole buffer into an envelope (the stream format) with this data key.
    pub fn seal(&self, associated: &Associated, plaintext: &[u8]) -> Result<Vec<u8>, ClientError> {
        associated
            .with_binding(|binding| {
                stream::seal_all(&self.plaintext, &self.wrapped, binding, stream::DEFAULT_SEGMENT_SIZE, plaintext)
            })
            .map_err(ClientError::Crypto)
    }
}

/// The header at the front of an envelope or stream, or an error if it is not one.
pub fn read_header(envelope: &[u8]) -> Result<(StreamHeader, usize), ClientError> {
    stream::parse_header(envelope)
        .ok()
        .flatten()
        .ok_or_else(|| ClientError::Setup("input is not a keymesh stream or envelope".into()))
}

impl KeymeshClient {
    /// A fresh AES-256 data key wrapped under `key`, bound to `associated`.
    pub async fn generate_data_key(&self, key: &str, associated: &Associated) -> Result<DataKey, ClientError> {
        let request = self
            .authorized(pb::GenerateDataKeyRequest {
                key: key.to_owned(),
                key_spec: pb::DataKeySpec::Aes256 as i32,
                aad: associated.aad.clone(),
                encryption_context: associated.encryption_context.clone(),
            })
            .await?;
        let response = self.crypto_service().generate_data_key(request).await?.into_inner();
        Ok(DataKey {
            plaintext: SecretKey::from_bytes(response.plaintext),
            wrapped: response.ciphertext,
            key_id: response.key_id,
            key_version: response.key_version,
        })
    }

    /// Opens a wrapped data key with Decrypt. A non-empty `key` (name or id) is the key it must have been
    /// wrapped under; crypto-service refuses any other with its context-mismatch error.
    pub async fn unwrap_data_key(
        &self,
        wrapped: &[u8],
        associated: &Associated,
        key: &str,
    ) -> Result<SecretKey, ClientError> {
        let request = self
            .authorized(pb::DecryptRequest {
                ciphertext: wrapped.to_vec(),
                key: key.to_owned(),
                aad: associated.aad.clone(),
                encryption_context: associated.encryption_context.clone(),
                ..Default::default()
            })
            .await?;
        let response = self.crypto_service().decrypt(request).await?.into_inner();
        Ok(SecretKey::from_bytes(response.plaintext))
    }

    /// Opens a whole envelope (or a stream made by EncryptStream): one Decrypt call for its data key, the
    /// rest here. A non-empty `key` is the key the envelope must be under, as in [`Self::unwrap_data_key`].
    pub async fn open_envelope(
        &self,
        envelope: &[u8],
        associated: &Associated,
        key: &str,
    ) -> Result<Zeroizing<Vec<u8>>, ClientError> {
        let (header, used) = read_header(envelope)?;
        let data_key = self.unwrap_data_key(header.wrapped_data_key(), associated, key).await?;
        associated
            .with_binding(|binding| stream::open_all(&header, &data_key, binding, &envelope[used..]))
            .map_err(ClientError::Crypto)
    }
}

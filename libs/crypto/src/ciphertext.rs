//! The self-describing ciphertext format of the source document:
//!
//! ```text
//! [2-byte big-endian header length][JSON header][ciphertext || tag]
//! {"v":3,"ctx":"user-pii","kid":"k_…:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"…","kc":"…","aad":false}
//! ```
//!
//! Version 3 is written; versions 1–3 are read. The length prefix and header bytes are authenticated: they
//! are the first part of the AEAD associated data, followed by the caller's AAD and the canonical encoding of
//! the encryption context. Parsing is strict and bounded (header size, JSON shape, base64, version, unknown
//! fields) and every parse failure is the same opaque [`CryptoError::DecryptionFailed`].

use std::collections::BTreeMap;

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use serde::Deserialize;
use zeroize::Zeroizing;

use crate::{CryptoError, SecretKey, SymmetricAlgorithm, commitment};

/// The format version this code writes.
pub const CURRENT_VERSION: u8 = 3;
/// Largest header accepted, in bytes: far above any header keymesh writes, far below the u16 limit.
pub const MAX_HEADER_LEN: usize = 4096;

// Written by HeaderTemplate; serde writes it only in the test that holds the two to the same bytes.
#[derive(Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
#[serde(deny_unknown_fields)]
struct RawHeader {
    v: u8,
    ctx: String,
    kid: String,
    alg: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    mode: Option<String>,
    nonce: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    aad: Option<bool>,
}

/// Associated data a caller binds to a ciphertext: raw AAD and/or a key-value encryption context. Both must
/// be presented again, byte for byte, to decrypt.
#[derive(Debug, Default, Clone, Copy)]
pub struct Binding<'a> {
    /// Caller-supplied associated data.
    pub aad: &'a [u8],
    /// Encryption context (sorted, so map order never matters).
    pub context: Option<&'a BTreeMap<String, String>>,
}

impl Binding<'_> {
    pub(crate) fn is_empty(&self) -> bool {
        self.aad.is_empty() && self.context.is_none_or(|c| c.is_empty())
    }

    /// Length-prefixed, so that no two different (aad, context) pairs encode alike.
    pub(crate) fn encode_into(&self, out: &mut Vec<u8>) {
        push_len_prefixed(out, self.aad);
        let context = self.context.map(|c| c.iter().collect::<Vec<_>>()).unwrap_or_default();
        out.extend_from_slice(&(context.len() as u32).to_be_bytes());
        for (k, v) in context {
            push_len_prefixed(out, k.as_bytes());
            push_len_prefixed(out, v.as_bytes());
        }
    }
}

fn push_len_prefixed(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u64).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// A key version reference as written in the header's "kid": `<key id>:v<version>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRef {
    /// The key's stable id.
    pub key_id: String,
    /// The version.
    pub version: u32,
}

impl KeyRef {
    /// Formats the reference for a header.
    pub fn to_kid(&self) -> String {
        format!("{}:v{}", self.key_id, self.version)
    }

    /// Parses a header's "kid".
    pub fn parse(kid: &str) -> Option<Self> {
        let (key_id, version) = kid.rsplit_once(":v")?;
        let version: u32 = version.parse().ok()?;
        (!key_id.is_empty() && version > 0).then(|| Self { key_id: key_id.to_owned(), version })
    }
}

/// What a caller needs to seal a plaintext.
#[derive(Debug)]
pub struct SealRequest<'a> {
    /// The key's name (the document's "context"), written as "ctx".
    pub key_name: &'a str,
    /// Key id and version, written as "kid".
    pub key_ref: &'a KeyRef,
    /// The version's algorithm.
    pub algorithm: SymmetricAlgorithm,
    /// Associated data to bind.
    pub binding: Binding<'a>,
}

/// Seals `plaintext` under `key` into a version-3 ciphertext.
pub fn seal(key: &SecretKey, request: &SealRequest<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let template = HeaderTemplate::new(
        request.key_name,
        request.key_ref,
        request.algorithm,
        &commitment::commit(key.expose_secret()),
    )?;
    template.seal(request.algorithm, None, key, request.binding, plaintext)
}

/// A version-3 header's JSON around its nonce and its "aad" flag, the only parts that change from one ciphertext
/// of a key version to the next. Field for field what serde writes for [`RawHeader`] (a unit test compares).
struct HeaderTemplate {
    /// `{"v":3,"ctx":…,"kid":…,"alg":…,"mode":…,"nonce":"`.
    before_nonce: Vec<u8>,
    /// `","kc":"…","aad":`.
    after_nonce: Vec<u8>,
}

impl HeaderTemplate {
    fn new(
        key_name: &str,
        key_ref: &KeyRef,
        algorithm: SymmetricAlgorithm,
        commitment: &[u8],
    ) -> Result<Self, CryptoError> {
        let json = |value: &str| serde_json::to_string(value).map_err(|_| CryptoError::Library);
        let before_nonce = format!(
            "{{\"v\":{CURRENT_VERSION},\"ctx\":{},\"kid\":{},\"alg\":{},\"mode\":{},\"nonce\":\"",
            json(key_name)?,
            json(&key_ref.to_kid())?,
            json(algorithm.name())?,
            json(algorithm.mode())?
        );
        let after_nonce = format!("\",\"kc\":\"{}\",\"aad\":", B64.encode(commitment));
        Ok(Self { before_nonce: before_nonce.into_bytes(), after_nonce: after_nonce.into_bytes() })
    }

    /// Seals `plaintext` with a fresh nonce under this header: with `keyed` (AES-GCM keyed once for `key`) when
    /// given, else keying `alg` afresh.
    fn seal(
        &self,
        alg: SymmetricAlgorithm,
        keyed: Option<&KeyedGcm>,
        key: &SecretKey,
        binding: Binding<'_>,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, CryptoError> {
        if plaintext.len() > alg.max_plaintext() {
            return Err(CryptoError::TooLarge { what: "plaintext", size: plaintext.len(), limit: alg.max_plaintext() });
        }
        let mut nonce_bytes = [0u8; 24];
        crate::random::fill_nonce(&mut nonce_bytes[..alg.nonce_len()])?;
        let nonce = &nonce_bytes[..alg.nonce_len()];
        let flag: &[u8] = if binding.is_empty() { b"false}" } else { b"true}" };
        // Nonces are at most 24 bytes: 32 characters of base64.
        let mut encoded = [0u8; 64];
        let encoded_len = B64.encode_slice(nonce, &mut encoded).map_err(|_| CryptoError::Library)?;
        let header_len = self.before_nonce.len() + encoded_len + self.after_nonce.len() + flag.len();
        if header_len > MAX_HEADER_LEN {
            return Err(CryptoError::TooLarge { what: "ciphertext header", size: header_len, limit: MAX_HEADER_LEN });
        }
        let mut out = Vec::with_capacity(2 + header_len + plaintext.len() + alg.max_overhead());
        out.extend_from_slice(&(header_len as u16).to_be_bytes());
        out.extend_from_slice(&self.before_nonce);
        out.extend_from_slice(&encoded[..encoded_len]);
        out.extend_from_slice(&self.after_nonce);
        out.extend_from_slice(flag);
        let associated = associated_data(&out, binding);
        match keyed {
            Some(keyed) => keyed.seal_into(nonce, &associated, plaintext, &mut out)?,
            None => out.extend_from_slice(&alg.seal(key, nonce, &associated, plaintext)?),
        }
        Ok(out)
    }
}

/// AES-GCM keyed once (OpenSSL's, so FIPS mode still holds): the key schedule done and the cipher fetched, one
/// context for sealing and one for opening, copied per call and then given the nonce.
struct KeyedGcm {
    sealing: openssl::cipher_ctx::CipherCtx,
    opening: openssl::cipher_ctx::CipherCtx,
}

impl KeyedGcm {
    /// For AES-128-GCM and AES-256-GCM with a key of the right length; none for the other algorithms.
    fn new(algorithm: SymmetricAlgorithm, key: &SecretKey) -> Result<Option<Self>, CryptoError> {
        let cipher = match algorithm {
            SymmetricAlgorithm::Aes128Gcm => openssl::cipher::Cipher::aes_128_gcm(),
            SymmetricAlgorithm::Aes256Gcm => openssl::cipher::Cipher::aes_256_gcm(),
            _ => return Ok(None),
        };
        if key.len() != algorithm.key_len() {
            return Ok(None);
        }
        let mut sealing = openssl::cipher_ctx::CipherCtx::new()?;
        sealing.encrypt_init(Some(cipher), Some(key.expose_secret()), None)?;
        let mut opening = openssl::cipher_ctx::CipherCtx::new()?;
        opening.decrypt_init(Some(cipher), Some(key.expose_secret()), None)?;
        Ok(Some(Self { sealing, opening }))
    }

    /// Appends the ciphertext and the tag of `plaintext` to `out`.
    fn seal_into(&self, nonce: &[u8], aad: &[u8], plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let mut context = openssl::cipher_ctx::CipherCtx::new()?;
        context.copy(&self.sealing)?;
        context.encrypt_init(None, None, Some(nonce))?;
        context.cipher_update(aad, None)?;
        let body_at = out.len();
        out.resize(body_at + plaintext.len(), 0);
        let written = context.cipher_update(plaintext, Some(&mut out[body_at..]))?;
        let finished = context.cipher_final(&mut out[body_at + written..])?;
        out.truncate(body_at + written + finished);
        let mut tag = [0u8; crate::aead::GCM_TAG_LEN];
        context.tag(&mut tag)?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// The plaintext of `body` (ciphertext, then tag); every failure, a wrong tag above all, is the same opaque
    /// error, and a partial plaintext is wiped.
    fn open(&self, nonce: &[u8], aad: &[u8], body: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let split = body.len().checked_sub(crate::aead::GCM_TAG_LEN).ok_or(CryptoError::DecryptionFailed)?;
        let (sealed, tag) = body.split_at(split);
        let mut plaintext = Zeroizing::new(vec![0u8; sealed.len() + 16]);
        let opened = (|| {
            let mut context = openssl::cipher_ctx::CipherCtx::new()?;
            context.copy(&self.opening)?;
            context.decrypt_init(None, None, Some(nonce))?;
            context.set_tag(tag)?;
            context.cipher_update(aad, None)?;
            let written = context.cipher_update(sealed, Some(&mut plaintext[..]))?;
            let finished = context.cipher_final(&mut plaintext[written..])?;
            Ok::<_, openssl::error::ErrorStack>(written + finished)
        })();
        let len = opened.map_err(|_| CryptoError::DecryptionFailed)?;
        plaintext.truncate(len);
        Ok(plaintext)
    }
}

/// Everything about sealing and opening under one key version that does not change from one call to the next,
/// worked out once: the header around the nonce, the key commitment, and for AES-GCM keyed cipher contexts.
/// crypto-service keeps one beside each cached data key, so a seal costs a nonce, one copy of a keyed context and
/// the AEAD pass, and an open compares the commitment instead of recomputing it. [`PreparedKey::seal`] writes
/// what [`seal`] writes; [`ParsedCiphertext::open_prepared`] accepts exactly what [`ParsedCiphertext::open`]
/// accepts.
pub struct PreparedKey {
    algorithm: SymmetricAlgorithm,
    /// The key's commitment (HMAC-SHA256 of the key), compared in constant time when opening.
    commitment: [u8; commitment::COMMITMENT_LEN],
    header: HeaderTemplate,
    keyed_gcm: Option<KeyedGcm>,
}

impl PreparedKey {
    /// Prepares sealing under `key` for `key_name` and `key_ref` with `algorithm`, and opening under `key`.
    pub fn new(
        key: &SecretKey,
        key_name: &str,
        key_ref: &KeyRef,
        algorithm: SymmetricAlgorithm,
    ) -> Result<Self, CryptoError> {
        let commitment = commitment::commit(key.expose_secret());
        Ok(Self {
            algorithm,
            commitment,
            header: HeaderTemplate::new(key_name, key_ref, algorithm, &commitment)?,
            keyed_gcm: KeyedGcm::new(algorithm, key)?,
        })
    }

    /// Seals `plaintext` (under `key`, the key this was prepared for) into a version-3 ciphertext.
    pub fn seal(&self, key: &SecretKey, binding: Binding<'_>, plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        self.header.seal(self.algorithm, self.keyed_gcm.as_ref(), key, binding, plaintext)
    }
}

fn associated_data(prefix_and_header: &[u8], binding: Binding<'_>) -> Vec<u8> {
    let mut associated = Vec::with_capacity(prefix_and_header.len() + binding.aad.len() + 16);
    associated.extend_from_slice(prefix_and_header);
    binding.encode_into(&mut associated);
    associated
}

/// A parsed ciphertext whose header has been read but whose body is not yet authenticated. The header
/// fields are therefore *claims* until [`ParsedCiphertext::open`] succeeds.
#[derive(Debug)]
pub struct ParsedCiphertext<'a> {
    /// Format version (1–3).
    pub version: u8,
    /// The key name claimed by the header.
    pub key_name: String,
    /// The key version claimed by the header.
    pub key_ref: KeyRef,
    /// The algorithm claimed by the header.
    pub algorithm: SymmetricAlgorithm,
    nonce: Vec<u8>,
    commitment: Option<Vec<u8>>,
    has_binding: Option<bool>,
    header_bytes: &'a [u8],
    body: &'a [u8],
}

/// Reads the header of `ciphertext`. Any malformation is [`CryptoError::DecryptionFailed`].
pub fn parse(ciphertext: &[u8]) -> Result<ParsedCiphertext<'_>, CryptoError> {
    let fail = || CryptoError::DecryptionFailed;
    let len_bytes: [u8; 2] = ciphertext.get(..2).and_then(|b| b.try_into().ok()).ok_or_else(fail)?;
    let header_len = u16::from_be_bytes(len_bytes) as usize;
    if header_len == 0 || header_len > MAX_HEADER_LEN {
        return Err(fail());
    }
    let header_bytes = ciphertext.get(..2 + header_len).ok_or_else(fail)?;
    let body = &ciphertext[2 + header_len..];
    // serde would also take a struct written as a JSON array; the format is an object, and only that.
    if header_bytes.get(2) != Some(&b'{') {
        return Err(fail());
    }
    let raw: RawHeader = serde_json::from_slice(&header_bytes[2..]).map_err(|_| fail())?;
    let algorithm = SymmetricAlgorithm::from_name(&raw.alg).ok_or_else(fail)?;
    // Each version has exactly its own fields: v1 {ctx,kid,alg,nonce}, v2 adds mode, v3 adds kc and aad.
    let shape_ok = match raw.v {
        1 => raw.mode.is_none() && raw.kc.is_none() && raw.aad.is_none(),
        2 => raw.mode.is_some() && raw.kc.is_none() && raw.aad.is_none(),
        3 => raw.mode.is_some() && raw.kc.is_some() && raw.aad.is_some(),
        _ => false,
    };
    if !shape_ok || raw.mode.as_deref().is_some_and(|m| m != algorithm.mode()) {
        return Err(fail());
    }
    let nonce = B64.decode(&raw.nonce).map_err(|_| fail())?;
    if nonce.len() != algorithm.nonce_len() {
        return Err(fail());
    }
    let commitment = raw.kc.as_deref().map(|kc| B64.decode(kc)).transpose().map_err(|_| fail())?;
    let key_ref = KeyRef::parse(&raw.kid).ok_or_else(fail)?;
    Ok(ParsedCiphertext {
        version: raw.v,
        key_name: raw.ctx,
        key_ref,
        algorithm,
        nonce,
        commitment,
        has_binding: raw.aad,
        header_bytes,
        body,
    })
}

impl ParsedCiphertext<'_> {
    /// Checks that the ciphertext was made under the key the caller expects (by name or id). This is the
    /// one decrypt error that is not opaque, as the source document specifies.
    pub fn expect_key(&self, expected: &str) -> Result<(), CryptoError> {
        if expected.is_empty() || expected == self.key_name || expected == self.key_ref.key_id {
            Ok(())
        } else {
            Err(CryptoError::ContextMismatch { expected: expected.to_owned(), actual: self.key_name.clone() })
        }
    }

    /// Authenticates and decrypts. The key commitment is checked first, in constant time.
    pub fn open(&self, key: &SecretKey, binding: Binding<'_>) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if let Some(commitment) = &self.commitment
            && !commitment::verify(key.expose_secret(), commitment)
        {
            return Err(CryptoError::DecryptionFailed);
        }
        if self.has_binding == Some(false) && !binding.is_empty() {
            return Err(CryptoError::DecryptionFailed);
        }
        let associated = associated_data(self.header_bytes, binding);
        self.algorithm.open(key, &self.nonce, &associated, self.body)
    }

    /// [`ParsedCiphertext::open`] with `prepared`, made for `key` (the version the header names): the same
    /// checks and result, without recomputing the commitment or keying a cipher.
    pub fn open_prepared(
        &self,
        prepared: &PreparedKey,
        key: &SecretKey,
        binding: Binding<'_>,
    ) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        if self.algorithm != prepared.algorithm {
            return self.open(key, binding);
        }
        if let Some(commitment) = &self.commitment
            && !bool::from(subtle::ConstantTimeEq::ct_eq(prepared.commitment.as_slice(), commitment.as_slice()))
        {
            return Err(CryptoError::DecryptionFailed);
        }
        if self.has_binding == Some(false) && !binding.is_empty() {
            return Err(CryptoError::DecryptionFailed);
        }
        let associated = associated_data(self.header_bytes, binding);
        match &prepared.keyed_gcm {
            Some(keyed) => keyed.open(&self.nonce, &associated, self.body),
            None => self.algorithm.open(key, &self.nonce, &associated, self.body),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SecretKey {
        SecretKey::from_bytes((0u8..32).collect())
    }

    fn seal_sample(binding: Binding<'_>) -> Vec<u8> {
        let key_ref = KeyRef { key_id: "k_0123".into(), version: 2 };
        let req =
            SealRequest { key_name: "user-pii", key_ref: &key_ref, algorithm: SymmetricAlgorithm::Aes256Gcm, binding };
        seal(&key(), &req, b"attack at dawn").unwrap_or_default()
    }

    #[test]
    fn round_trip_and_header_shape() {
        let ct = seal_sample(Binding { aad: b"order-17", context: None });
        let parsed = parse(&ct).expect("parse");
        assert_eq!(parsed.version, 3);
        assert_eq!(parsed.key_name, "user-pii");
        assert_eq!(parsed.key_ref, KeyRef { key_id: "k_0123".into(), version: 2 });
        let header_len = u16::from_be_bytes([ct[0], ct[1]]) as usize;
        let header: serde_json::Value = serde_json::from_slice(&ct[2..2 + header_len]).unwrap_or_default();
        assert_eq!(header["v"], 3);
        assert_eq!(header["alg"], "AES-256-GCM");
        assert_eq!(header["mode"], "gcm");
        assert_eq!(header["aad"], true);
        let opened = parsed.open(&key(), Binding { aad: b"order-17", context: None }).map(|p| p.to_vec());
        assert_eq!(opened, Ok(b"attack at dawn".to_vec()));
        assert_eq!(parsed.open(&key(), Binding::default()).err(), Some(CryptoError::DecryptionFailed));
        assert_eq!(
            parsed.open(&key(), Binding { aad: b"order-18", context: None }).err(),
            Some(CryptoError::DecryptionFailed)
        );
    }

    #[test]
    fn a_prepared_key_seals_what_seal_writes_and_opens_what_open_opens() {
        let context: BTreeMap<String, String> = [("tenant".to_owned(), "a \"quoted\" ünï\\code".to_owned())].into();
        for algorithm in SymmetricAlgorithm::ALL {
            let key = SecretKey::from_bytes(vec![9; algorithm.key_len()]);
            let key_ref = KeyRef { key_id: "k_01J".into(), version: 4 };
            let sealer = PreparedKey::new(&key, "odd \"name\"\t\u{1F511}", &key_ref, algorithm).unwrap();
            for binding in [Binding::default(), Binding { aad: b"order-1", context: Some(&context) }] {
                let sealed = sealer.seal(&key, binding, b"attack at dawn").unwrap();
                let parsed = parse(&sealed).unwrap();
                assert_eq!(parsed.open(&key, binding).unwrap().as_slice(), b"attack at dawn", "{algorithm:?}");
                let opened = parsed.open_prepared(&sealer, &key, binding).unwrap();
                assert_eq!(opened.as_slice(), b"attack at dawn", "{algorithm:?}");
                // What open() refuses, open_prepared() refuses: any flipped byte, another binding.
                for i in [0, 5, sealed.len() / 2, sealed.len() - 20, sealed.len() - 1] {
                    let mut bad = sealed.clone();
                    bad[i] ^= 1;
                    if let Ok(parsed) = parse(&bad) {
                        assert!(parsed.open_prepared(&sealer, &key, binding).is_err(), "{algorithm:?} byte {i}");
                    }
                }
                let other = Binding { aad: b"order-2", context: None };
                assert!(parsed.open_prepared(&sealer, &key, other).is_err(), "{algorithm:?}");
                let wrong = SecretKey::from_bytes(vec![8; algorithm.key_len()]);
                let wrong_prepared = PreparedKey::new(&wrong, "n", &key_ref, algorithm).unwrap();
                assert!(parsed.open_prepared(&wrong_prepared, &wrong, binding).is_err(), "{algorithm:?}: commitment");
                // Byte for byte serde's JSON of the same fields, the nonce included.
                let header_len = u16::from_be_bytes([sealed[0], sealed[1]]) as usize;
                let expected = serde_json::to_vec(&RawHeader {
                    v: CURRENT_VERSION,
                    ctx: "odd \"name\"\t\u{1F511}".into(),
                    kid: key_ref.to_kid(),
                    alg: algorithm.name().into(),
                    mode: Some(algorithm.mode().into()),
                    nonce: B64.encode(&parsed.nonce),
                    kc: Some(B64.encode(commitment::commit(key.expose_secret()))),
                    aad: Some(!binding.is_empty()),
                })
                .unwrap();
                assert_eq!(&sealed[2..2 + header_len], expected.as_slice(), "{algorithm:?}");
                // seal() writes through the same template and keys the algorithm afresh: same length, and it opens.
                let reference = seal(
                    &key,
                    &SealRequest { key_name: "odd \"name\"\t\u{1F511}", key_ref: &key_ref, algorithm, binding },
                    b"attack at dawn",
                )
                .unwrap();
                assert_eq!(
                    parse(&reference).unwrap().open_prepared(&sealer, &key, binding).unwrap().as_slice(),
                    b"attack at dawn"
                );
                assert_eq!(sealed.len(), reference.len());
            }
        }
    }

    #[test]
    fn every_flipped_byte_fails_opaquely() {
        let ct = seal_sample(Binding::default());
        for i in 0..ct.len() {
            for bit in [0x01u8, 0x80] {
                let mut bad = ct.clone();
                bad[i] ^= bit;
                let result = parse(&bad).and_then(|p| p.open(&key(), Binding::default()));
                assert_eq!(result.err(), Some(CryptoError::DecryptionFailed), "byte {i} bit {bit:#x}");
            }
        }
    }

    #[test]
    fn encryption_context_is_bound_independent_of_order() {
        let mut ctx = BTreeMap::new();
        ctx.insert("tenant".to_owned(), "acme".to_owned());
        ctx.insert("purpose".to_owned(), "billing".to_owned());
        let ct = seal_sample(Binding { aad: b"", context: Some(&ctx) });
        let parsed = parse(&ct).expect("parse");
        assert!(parsed.open(&key(), Binding { aad: b"", context: Some(&ctx) }).is_ok());
        let mut other = ctx.clone();
        other.insert("purpose".to_owned(), "marketing".to_owned());
        assert!(parsed.open(&key(), Binding { aad: b"", context: Some(&other) }).is_err());
        // The same bytes as AAD instead of context must not be interchangeable.
        assert!(parsed.open(&key(), Binding { aad: b"tenantacme", context: None }).is_err());
    }

    #[test]
    fn wrong_key_is_caught_by_commitment() {
        let ct = seal_sample(Binding::default());
        let parsed = parse(&ct).expect("parse");
        let other = SecretKey::from_bytes(vec![7; 32]);
        assert_eq!(parsed.open(&other, Binding::default()).err(), Some(CryptoError::DecryptionFailed));
    }

    #[test]
    fn context_mismatch_is_reported() {
        let ct = seal_sample(Binding::default());
        let parsed = parse(&ct).expect("parse");
        assert!(parsed.expect_key("user-pii").is_ok());
        assert!(parsed.expect_key("k_0123").is_ok());
        assert!(matches!(parsed.expect_key("payments"), Err(CryptoError::ContextMismatch { .. })));
    }

    #[test]
    fn older_versions_are_read() {
        // A v2 header (no kc, no aad flag) written by hand, then sealed the way v2 writers did.
        let key_ref = KeyRef { key_id: "k_9".into(), version: 1 };
        let nonce = [9u8; 12];
        for (v, header) in [
            (
                1,
                format!(
                    r#"{{"v":1,"ctx":"legacy","kid":"{}","alg":"AES-256-GCM","nonce":"{}"}}"#,
                    key_ref.to_kid(),
                    B64.encode(nonce)
                ),
            ),
            (
                2,
                format!(
                    r#"{{"v":2,"ctx":"legacy","kid":"{}","alg":"AES-256-GCM","mode":"gcm","nonce":"{}"}}"#,
                    key_ref.to_kid(),
                    B64.encode(nonce)
                ),
            ),
        ] {
            let mut ct = (header.len() as u16).to_be_bytes().to_vec();
            ct.extend_from_slice(header.as_bytes());
            let associated = associated_data(&ct, Binding::default());
            let body = SymmetricAlgorithm::Aes256Gcm.seal(&key(), &nonce, &associated, b"old data").unwrap_or_default();
            ct.extend_from_slice(&body);
            let opened = parse(&ct).and_then(|p| p.open(&key(), Binding::default())).map(|p| p.to_vec());
            assert_eq!(opened, Ok(b"old data".to_vec()), "v{v}");
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in [
            r#"{"v":4,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false}"#,
            r#"{"v":3,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","aad":false}"#,
            r#"{"v":3,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false,"x":1}"#,
            r#"{"v":3,"ctx":"a","kid":"k:v1","alg":"DES","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false}"#,
            r#"{"v":3,"ctx":"a","kid":"k:v1","alg":"AES-256-GCM","mode":"gcm","nonce":"!!","kc":"","aad":false}"#,
            r#"{"v":3,"ctx":"a","kid":"nokid","alg":"AES-256-GCM","mode":"gcm","nonce":"AAAAAAAAAAAAAAAA","kc":"","aad":false}"#,
            r#"not json"#,
            r#"[3,"a","k:v1","AES-256-GCM","gcm","AAAAAAAAAAAAAAAA","",false]"#,
        ] {
            let mut ct = (header.len() as u16).to_be_bytes().to_vec();
            ct.extend_from_slice(header.as_bytes());
            ct.extend_from_slice(&[0u8; 32]);
            assert_eq!(parse(&ct).err(), Some(CryptoError::DecryptionFailed), "{header}");
        }
        assert!(parse(&[]).is_err());
        assert!(parse(&[0xff, 0xff, b'{']).is_err());
    }
}

//! The keymesh stream format: chunked authenticated encryption for data of any size in constant memory, and
//! the envelope format that clients use to encrypt locally with a data key. One format serves both, so a
//! stream made by crypto-service opens in a client holding the data key, and a client's envelope opens in
//! crypto-service's DecryptStream.
//!
//! It follows the STREAM construction (Hoang, Reyhanitabar, Rogaway, Vizár, 2015) as Tink's streaming AEAD
//! does:
//!
//! ```text
//! [u16be header length][header JSON][segment 0][segment 1]…[segment n-1]
//! {"sv":1,"alg":"AES-256-GCM","seg":1048576,"salt":"<32 bytes>","np":"<7 bytes>","kc":"<32 bytes>","dk":"<wrapped data key>"}
//! ```
//!
//! - `dk` is the data key wrapped by crypto-service: a keymesh ciphertext (the unary v3 format) that
//!   Decrypt opens with the stream's AAD and encryption context. `kc` commits to the data key
//!   (HMAC-SHA256(data key, "key-commitment-v1")) and is checked before anything is decrypted.
//! - The stream key is HKDF-SHA256(ikm = data key, salt = `salt`, info = "keymesh/stream/v1" ||
//!   SHA-256(length prefix || header JSON || binding)), as long as the data key. The binding is the
//!   caller's AAD and encryption context, encoded as in the unary format. So every header byte and the
//!   binding select the key: a changed header or AAD fails the first segment.
//! - Segment `i` holds `seg` plaintext bytes (the last one 0 to `seg`) sealed with AES-GCM under the
//!   stream key, nonce `np || u32be(i) || last` (last = 1 on the final segment, else 0), no associated
//!   data; a sealed segment is its ciphertext followed by the 16-byte tag. An empty plaintext is one final
//!   segment of just a tag.
//!
//! The counter in the nonce detects reordering, duplication and dropped segments; the final flag detects
//! truncation at a segment boundary (the stream must end with a segment sealed as last, and any segment
//! followed by more data must not be); the per-stream salt gives every stream its own key, so segments
//! spliced from another stream fail. A decoder releases a segment's plaintext only after its tag verifies,
//! but a stream is whole only when [`StreamDecryptor::finish`] succeeds: a reader must discard what it
//! received when that fails.
//!
//! Parsing is strict and bounded (header length, JSON shape, unknown fields, base64, sizes), and every
//! failure is the opaque [`CryptoError::DecryptionFailed`].

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use openssl::symm::{Cipher, Crypter, Mode};
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, Zeroizing};

use crate::{
    CryptoError, SecretKey,
    ciphertext::Binding,
    commitment,
    primitives::{self, Hash},
};

/// The stream format version this code writes and reads.
pub const STREAM_VERSION: u8 = 1;
/// Largest stream header accepted, in bytes (the wrapped data key is the bulk of it).
pub const MAX_STREAM_HEADER_LEN: usize = 8192;
/// Plaintext bytes per segment unless the caller chooses.
pub const DEFAULT_SEGMENT_SIZE: usize = 1 << 20;
/// Smallest segment size.
pub const MIN_SEGMENT_SIZE: usize = 4 << 10;
/// Largest segment size: a sealed segment must fit a default-sized gRPC message.
pub const MAX_SEGMENT_SIZE: usize = 2 << 20;
/// Bytes a segment's seal adds.
pub const SEGMENT_TAG_LEN: usize = 16;

const SALT_LEN: usize = 32;
const NONCE_PREFIX_LEN: usize = 7;
const KDF_LABEL: &[u8] = b"keymesh/stream/v1";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStreamHeader {
    sv: u8,
    alg: String,
    seg: u32,
    salt: String,
    np: String,
    kc: String,
    dk: String,
}

/// The AEAD that seals segments; chosen by the data key's length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SegmentCipher {
    /// AES-128-GCM, for 16-byte data keys.
    Aes128Gcm,
    /// AES-256-GCM, for 32-byte data keys.
    Aes256Gcm,
}

impl SegmentCipher {
    fn for_key_len(len: usize) -> Option<Self> {
        match len {
            16 => Some(Self::Aes128Gcm),
            32 => Some(Self::Aes256Gcm),
            _ => None,
        }
    }

    /// The name written as "alg".
    pub fn name(self) -> &'static str {
        match self {
            Self::Aes128Gcm => "AES-128-GCM",
            Self::Aes256Gcm => "AES-256-GCM",
        }
    }

    fn from_name(name: &str) -> Option<Self> {
        [Self::Aes128Gcm, Self::Aes256Gcm].into_iter().find(|c| c.name() == name)
    }

    /// Key length in bytes.
    pub fn key_len(self) -> usize {
        match self {
            Self::Aes128Gcm => 16,
            Self::Aes256Gcm => 32,
        }
    }

    fn openssl(self) -> Cipher {
        match self {
            Self::Aes128Gcm => Cipher::aes_128_gcm(),
            Self::Aes256Gcm => Cipher::aes_256_gcm(),
        }
    }
}

/// Checks a segment size against the format's bounds.
pub fn check_segment_size(segment_size: usize) -> Result<(), CryptoError> {
    if (MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&segment_size) {
        Ok(())
    } else {
        Err(CryptoError::OutOfRange {
            what: "segment size",
            value: segment_size,
            min: MIN_SEGMENT_SIZE,
            max: MAX_SEGMENT_SIZE,
        })
    }
}

fn derive_stream_key(
    cipher: SegmentCipher,
    data_key: &SecretKey,
    salt: &[u8],
    header: &[u8],
    binding: Binding<'_>,
) -> Result<SecretKey, CryptoError> {
    let mut transcript = header.to_vec();
    binding.encode_into(&mut transcript);
    let mut info = KDF_LABEL.to_vec();
    info.extend_from_slice(&openssl::sha::sha256(&transcript));
    let key = primitives::hkdf(Hash::Sha256, data_key.expose_secret(), salt, &info, cipher.key_len())?;
    Ok(SecretKey::copy_from_slice(&key))
}

fn segment_nonce(prefix: &[u8; NONCE_PREFIX_LEN], index: u64, last: bool) -> Result<[u8; 12], CryptoError> {
    let index = u32::try_from(index).map_err(|_| CryptoError::TooLarge {
        what: "stream (segments)",
        size: usize::try_from(index).unwrap_or(usize::MAX),
        limit: u32::MAX as usize,
    })?;
    let mut nonce = [0u8; 12];
    nonce[..NONCE_PREFIX_LEN].copy_from_slice(prefix);
    nonce[NONCE_PREFIX_LEN..11].copy_from_slice(&index.to_be_bytes());
    nonce[11] = u8::from(last);
    Ok(nonce)
}

/// Seals one segment and appends it (ciphertext, then tag) to `out`.
fn seal_segment(
    cipher: SegmentCipher,
    key: &SecretKey,
    nonce: &[u8; 12],
    plaintext: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let mut crypter = Crypter::new(cipher.openssl(), Mode::Encrypt, key.expose_secret(), Some(nonce))?;
    let start = out.len();
    out.resize(start + plaintext.len() + cipher.openssl().block_size(), 0);
    let n = crypter.update(plaintext, &mut out[start..])?;
    let m = crypter.finalize(&mut out[start + n..])?;
    out.truncate(start + n + m);
    let mut tag = [0u8; SEGMENT_TAG_LEN];
    crypter.get_tag(&mut tag)?;
    out.extend_from_slice(&tag);
    Ok(())
}

/// Opens one sealed segment and appends its plaintext to `out`; on failure `out` is left as it was and the
/// partial plaintext is wiped.
fn open_segment(
    cipher: SegmentCipher,
    key: &SecretKey,
    nonce: &[u8; 12],
    sealed: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), CryptoError> {
    let split = sealed.len().checked_sub(SEGMENT_TAG_LEN).ok_or(CryptoError::DecryptionFailed)?;
    let (ciphertext, tag) = sealed.split_at(split);
    let start = out.len();
    out.resize(start + ciphertext.len() + cipher.openssl().block_size(), 0);
    let opened = (|| {
        let mut crypter = Crypter::new(cipher.openssl(), Mode::Decrypt, key.expose_secret(), Some(nonce))?;
        crypter.set_tag(tag)?;
        let n = crypter.update(ciphertext, &mut out[start..])?;
        let m = crypter.finalize(&mut out[start + n..])?;
        Ok::<_, openssl::error::ErrorStack>(n + m)
    })();
    match opened {
        Ok(len) => {
            out.truncate(start + len);
            Ok(())
        }
        Err(_) => {
            out[start..].zeroize();
            out.truncate(start);
            Err(CryptoError::DecryptionFailed)
        }
    }
}

/// Encrypts a stream incrementally: write [`StreamEncryptor::header`] first, then whatever `update` and
/// `finish` append. Holds at most one segment of plaintext.
pub struct StreamEncryptor {
    cipher: SegmentCipher,
    key: SecretKey,
    prefix: [u8; NONCE_PREFIX_LEN],
    segment_size: usize,
    next_index: u64,
    pending: Zeroizing<Vec<u8>>,
    header: Vec<u8>,
}

impl std::fmt::Debug for StreamEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamEncryptor")
            .field("cipher", &self.cipher)
            .field("segment_size", &self.segment_size)
            .field("segments_sealed", &self.next_index)
            .finish_non_exhaustive()
    }
}

impl StreamEncryptor {
    /// Starts a stream under `data_key` (16 or 32 bytes), whose wrapped form `wrapped_data_key` goes into
    /// the header, binding `binding`.
    pub fn new(
        data_key: &SecretKey,
        wrapped_data_key: &[u8],
        binding: Binding<'_>,
        segment_size: usize,
    ) -> Result<Self, CryptoError> {
        check_segment_size(segment_size)?;
        let cipher = SegmentCipher::for_key_len(data_key.len()).ok_or(CryptoError::InvalidKeyLength {
            algorithm: "stream data key",
            expected: 32,
            actual: data_key.len(),
        })?;
        let salt = crate::random::nonce::<SALT_LEN>()?;
        let prefix = crate::random::nonce::<NONCE_PREFIX_LEN>()?;
        let raw = RawStreamHeader {
            sv: STREAM_VERSION,
            alg: cipher.name().to_owned(),
            seg: u32::try_from(segment_size).map_err(|_| CryptoError::Library)?,
            salt: B64.encode(salt),
            np: B64.encode(prefix),
            kc: B64.encode(commitment::commit(data_key.expose_secret())),
            dk: B64.encode(wrapped_data_key),
        };
        let json = serde_json::to_vec(&raw).map_err(|_| CryptoError::Library)?;
        if json.len() > MAX_STREAM_HEADER_LEN {
            return Err(CryptoError::TooLarge {
                what: "stream header (wrapped data key)",
                size: json.len(),
                limit: MAX_STREAM_HEADER_LEN,
            });
        }
        let mut header = Vec::with_capacity(2 + json.len());
        header.extend_from_slice(&(json.len() as u16).to_be_bytes());
        header.extend_from_slice(&json);
        let key = derive_stream_key(cipher, data_key, &salt, &header, binding)?;
        Ok(Self {
            cipher,
            key,
            prefix,
            segment_size,
            next_index: 0,
            pending: Zeroizing::new(Vec::with_capacity(segment_size)),
            header,
        })
    }

    /// The header bytes, to be written before any segment.
    pub fn header(&self) -> &[u8] {
        &self.header
    }

    /// Plaintext bytes per segment.
    pub fn segment_size(&self) -> usize {
        self.segment_size
    }

    /// Takes more plaintext, appending every segment it completes to `out`. A full segment is held back
    /// until more plaintext arrives, since only then is it known not to be the last. Input of at most one
    /// segment size completes at most one segment.
    pub fn update(&mut self, mut plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        while !plaintext.is_empty() {
            if self.pending.len() == self.segment_size {
                self.seal_pending(false, out)?;
            }
            let take = (self.segment_size - self.pending.len()).min(plaintext.len());
            self.pending.extend_from_slice(&plaintext[..take]);
            plaintext = &plaintext[take..];
        }
        Ok(())
    }

    /// Seals the final segment (possibly empty) and appends it to `out`.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        self.seal_pending(true, out)
    }

    fn seal_pending(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let nonce = segment_nonce(&self.prefix, self.next_index, last)?;
        seal_segment(self.cipher, &self.key, &nonce, &self.pending, out)?;
        self.pending.zeroize();
        self.next_index += 1;
        Ok(())
    }
}

/// A parsed stream header. Its fields are claims until a segment opens.
pub struct StreamHeader {
    cipher: SegmentCipher,
    segment_size: usize,
    salt: Vec<u8>,
    prefix: [u8; NONCE_PREFIX_LEN],
    commitment: Vec<u8>,
    wrapped_data_key: Vec<u8>,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for StreamHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamHeader")
            .field("cipher", &self.cipher)
            .field("segment_size", &self.segment_size)
            .field("wrapped_data_key_len", &self.wrapped_data_key.len())
            .finish_non_exhaustive()
    }
}

/// Whether `bytes` begin like a stream (as opposed to a unary ciphertext): a cheap sniff for tools that
/// accept both; [`parse_header`] decides.
pub fn looks_like_stream(bytes: &[u8]) -> bool {
    bytes.get(2..8) == Some(br#"{"sv":"#.as_slice())
}

/// Reads a stream header from the start of `input`. `Ok(None)` means more bytes are needed; `Ok(Some)`
/// gives the header and how many bytes of `input` it took. Malformed input is
/// [`CryptoError::DecryptionFailed`] as soon as it can be told.
pub fn parse_header(input: &[u8]) -> Result<Option<(StreamHeader, usize)>, CryptoError> {
    let fail = CryptoError::DecryptionFailed;
    let Some(len_bytes) = input.get(..2) else {
        return Ok(None);
    };
    let len = u16::from_be_bytes([len_bytes[0], len_bytes[1]]) as usize;
    if len == 0 || len > MAX_STREAM_HEADER_LEN {
        return Err(fail);
    }
    let Some(bytes) = input.get(..2 + len) else {
        return Ok(None);
    };
    // serde would also take a struct written as a JSON array; the format is an object, and only that.
    if bytes.get(2) != Some(&b'{') {
        return Err(fail);
    }
    let raw: RawStreamHeader = serde_json::from_slice(&bytes[2..]).map_err(|_| CryptoError::DecryptionFailed)?;
    if raw.sv != STREAM_VERSION {
        return Err(fail);
    }
    let cipher = SegmentCipher::from_name(&raw.alg).ok_or(CryptoError::DecryptionFailed)?;
    let segment_size = raw.seg as usize;
    check_segment_size(segment_size).map_err(|_| CryptoError::DecryptionFailed)?;
    let decode = |field: &str, len: Option<usize>| {
        let bytes = B64.decode(field).map_err(|_| CryptoError::DecryptionFailed)?;
        match len {
            Some(len) if bytes.len() != len => Err(CryptoError::DecryptionFailed),
            None if bytes.is_empty() => Err(CryptoError::DecryptionFailed),
            _ => Ok(bytes),
        }
    };
    let salt = decode(&raw.salt, Some(SALT_LEN))?;
    let prefix: [u8; NONCE_PREFIX_LEN] =
        decode(&raw.np, Some(NONCE_PREFIX_LEN))?.try_into().map_err(|_| CryptoError::DecryptionFailed)?;
    let commitment = decode(&raw.kc, Some(commitment::COMMITMENT_LEN))?;
    let wrapped_data_key = decode(&raw.dk, None)?;
    let header =
        StreamHeader { cipher, segment_size, salt, prefix, commitment, wrapped_data_key, bytes: bytes.to_vec() };
    Ok(Some((header, 2 + len)))
}

impl StreamHeader {
    /// The wrapped data key: a keymesh ciphertext for Decrypt, with the stream's AAD and encryption context.
    pub fn wrapped_data_key(&self) -> &[u8] {
        &self.wrapped_data_key
    }

    /// The segment cipher.
    pub fn cipher(&self) -> SegmentCipher {
        self.cipher
    }

    /// Plaintext bytes per segment.
    pub fn segment_size(&self) -> usize {
        self.segment_size
    }

    /// Checks the data key against the commitment and derives the stream key.
    pub fn decryptor(&self, data_key: &SecretKey, binding: Binding<'_>) -> Result<StreamDecryptor, CryptoError> {
        if data_key.len() != self.cipher.key_len() || !commitment::verify(data_key.expose_secret(), &self.commitment) {
            return Err(CryptoError::DecryptionFailed);
        }
        let key = derive_stream_key(self.cipher, data_key, &self.salt, &self.bytes, binding)?;
        Ok(StreamDecryptor {
            cipher: self.cipher,
            key,
            prefix: self.prefix,
            segment_size: self.segment_size,
            next_index: 0,
            pending: Vec::with_capacity(self.segment_size + SEGMENT_TAG_LEN),
            failed: false,
        })
    }
}

/// Decrypts the segments of a stream incrementally. Holds at most one sealed segment.
pub struct StreamDecryptor {
    cipher: SegmentCipher,
    key: SecretKey,
    prefix: [u8; NONCE_PREFIX_LEN],
    segment_size: usize,
    next_index: u64,
    pending: Vec<u8>,
    failed: bool,
}

impl std::fmt::Debug for StreamDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamDecryptor")
            .field("cipher", &self.cipher)
            .field("segment_size", &self.segment_size)
            .field("segments_opened", &self.next_index)
            .finish_non_exhaustive()
    }
}

impl StreamDecryptor {
    fn sealed_segment_len(&self) -> usize {
        self.segment_size + SEGMENT_TAG_LEN
    }

    /// Plaintext bytes per segment.
    pub fn segment_size(&self) -> usize {
        self.segment_size
    }

    /// Takes more of the stream (after the header), appending the plaintext of every segment it verifies to
    /// `out`. A full segment is held back until more input shows it is not the last. Input of at most one
    /// sealed segment's length opens at most one segment. After a failure every call fails.
    pub fn update(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), CryptoError> {
        if self.failed {
            return Err(CryptoError::DecryptionFailed);
        }
        while !input.is_empty() {
            if self.pending.len() == self.sealed_segment_len() {
                self.open_pending(false, out)?;
            }
            let take = (self.sealed_segment_len() - self.pending.len()).min(input.len());
            self.pending.extend_from_slice(&input[..take]);
            input = &input[take..];
        }
        Ok(())
    }

    /// Opens the final segment. Only when this succeeds is the stream known to be whole.
    pub fn finish(mut self, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        if self.failed {
            return Err(CryptoError::DecryptionFailed);
        }
        self.open_pending(true, out)
    }

    fn open_pending(&mut self, last: bool, out: &mut Vec<u8>) -> Result<(), CryptoError> {
        let opened = segment_nonce(&self.prefix, self.next_index, last)
            .map_err(|_| CryptoError::DecryptionFailed)
            .and_then(|nonce| open_segment(self.cipher, &self.key, &nonce, &self.pending, out));
        if opened.is_err() {
            self.failed = true;
        }
        opened?;
        self.pending.clear();
        self.next_index += 1;
        Ok(())
    }
}

/// Encrypts a whole buffer in the stream format (the envelope helper's one-shot form).
pub fn seal_all(
    data_key: &SecretKey,
    wrapped_data_key: &[u8],
    binding: Binding<'_>,
    segment_size: usize,
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let mut encryptor = StreamEncryptor::new(data_key, wrapped_data_key, binding, segment_size)?;
    let segments = plaintext.len() / segment_size + 1;
    let mut out = Vec::with_capacity(encryptor.header().len() + plaintext.len() + segments * SEGMENT_TAG_LEN);
    out.extend_from_slice(encryptor.header());
    encryptor.update(plaintext, &mut out)?;
    encryptor.finish(&mut out)?;
    Ok(out)
}

/// Decrypts a whole stream whose header was parsed from the front of `stream` (the envelope helper's
/// one-shot form); `data_key` is the unwrapped `dk`.
pub fn open_all(
    header: &StreamHeader,
    data_key: &SecretKey,
    binding: Binding<'_>,
    segments: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut decryptor = header.decryptor(data_key, binding)?;
    let mut out = Zeroizing::new(Vec::with_capacity(segments.len()));
    decryptor.update(segments, &mut out)?;
    decryptor.finish(&mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    const SEG: usize = MIN_SEGMENT_SIZE;

    fn data_key() -> SecretKey {
        SecretKey::from_bytes((100u8..132).collect())
    }

    fn sample(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn seal(plaintext: &[u8], binding: Binding<'_>) -> Vec<u8> {
        seal_all(&data_key(), b"wrapped-dk", binding, SEG, plaintext).unwrap()
    }

    fn open(stream: &[u8], binding: Binding<'_>) -> Result<Vec<u8>, CryptoError> {
        let (header, used) = parse_header(stream)?.ok_or(CryptoError::DecryptionFailed)?;
        open_all(&header, &data_key(), binding, &stream[used..]).map(|p| p.to_vec())
    }

    /// Splits a sealed stream into its header and its sealed segments.
    fn segments(stream: &[u8]) -> (Vec<u8>, Vec<Vec<u8>>) {
        let (_, used) = parse_header(stream).unwrap().unwrap();
        (stream[..used].to_vec(), stream[used..].chunks(SEG + SEGMENT_TAG_LEN).map(<[u8]>::to_vec).collect())
    }

    #[test]
    fn round_trips_at_every_boundary() {
        for len in [0, 1, SEG - 1, SEG, SEG + 1, 2 * SEG, 3 * SEG + 17] {
            let plaintext = sample(len);
            let stream = seal(&plaintext, Binding::default());
            let expected_segments = len / SEG + usize::from(len % SEG != 0 || len == 0);
            let (header, segs) = segments(&stream);
            assert_eq!(segs.len(), expected_segments, "len {len}");
            assert_eq!(stream.len(), header.len() + len + expected_segments * SEGMENT_TAG_LEN);
            assert_eq!(open(&stream, Binding::default()).unwrap(), plaintext, "len {len}");
        }
    }

    #[test]
    fn any_input_chunking_gives_the_same_plaintext() {
        let plaintext = sample(5 * SEG + 3);
        let stream = seal(&plaintext, Binding::default());
        for piece in [1, 7, SEG - 1, SEG, SEG + SEGMENT_TAG_LEN, SEG + SEGMENT_TAG_LEN + 1, 100_000] {
            let mut buffer = Vec::new();
            let mut rest = &stream[..];
            let header = loop {
                let take = piece.min(rest.len());
                buffer.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if let Some((header, used)) = parse_header(&buffer).unwrap() {
                    buffer.drain(..used);
                    break header;
                }
            };
            let mut decryptor = header.decryptor(&data_key(), Binding::default()).unwrap();
            let mut out = Vec::new();
            decryptor.update(&buffer, &mut out).unwrap();
            for chunk in rest.chunks(piece) {
                decryptor.update(chunk, &mut out).unwrap();
            }
            decryptor.finish(&mut out).unwrap();
            assert_eq!(out, plaintext, "piece {piece}");
        }
    }

    #[test]
    fn truncation_reordering_duplication_and_splicing_fail() {
        let plaintext = sample(3 * SEG + 5);
        let stream = seal(&plaintext, Binding::default());
        let (header, segs) = segments(&stream);
        let join = |parts: &[&Vec<u8>]| {
            let mut s = header.clone();
            for p in parts {
                s.extend_from_slice(p);
            }
            s
        };
        let cases = [
            ("drop the last segment", join(&[&segs[0], &segs[1], &segs[2]])),
            ("drop a middle segment", join(&[&segs[0], &segs[2], &segs[3]])),
            ("swap two segments", join(&[&segs[1], &segs[0], &segs[2], &segs[3]])),
            ("duplicate a segment", join(&[&segs[0], &segs[0], &segs[1], &segs[2], &segs[3]])),
            ("append after the last", join(&[&segs[0], &segs[1], &segs[2], &segs[3], &segs[3]])),
            ("header only", header.clone()),
        ];
        for (what, bad) in cases {
            assert_eq!(open(&bad, Binding::default()).err(), Some(CryptoError::DecryptionFailed), "{what}");
        }
        // Cut inside a segment and at its tag.
        assert!(open(&stream[..stream.len() - 1], Binding::default()).is_err());
        // A segment from another stream under the same data key (other salt, so another stream key).
        let other = seal(&plaintext, Binding::default());
        let (_, other_segs) = segments(&other);
        let spliced = join(&[&segs[0], &other_segs[1], &segs[2], &segs[3]]);
        assert!(open(&spliced, Binding::default()).is_err());
        // The other stream's header with this stream's segments.
        let (other_header, _) = segments(&other);
        let mut mixed = other_header;
        mixed.extend_from_slice(&stream[header.len()..]);
        assert!(open(&mixed, Binding::default()).is_err());
    }

    #[test]
    fn binding_and_data_key_are_checked() {
        let mut context = BTreeMap::new();
        context.insert("bucket".to_owned(), "invoices".to_owned());
        let binding = Binding { aad: b"object-7", context: Some(&context) };
        let stream = seal(b"bound", binding);
        assert_eq!(open(&stream, binding).unwrap(), b"bound");
        assert!(open(&stream, Binding::default()).is_err());
        assert!(open(&stream, Binding { aad: b"object-8", context: Some(&context) }).is_err());
        let (header, _) = parse_header(&stream).unwrap().unwrap();
        assert_eq!(header.wrapped_data_key(), b"wrapped-dk");
        let wrong = SecretKey::from_bytes(vec![9; 32]);
        assert_eq!(header.decryptor(&wrong, binding).err(), Some(CryptoError::DecryptionFailed));
    }

    #[test]
    fn every_flipped_bit_fails() {
        let stream = seal(&sample(SEG + 10), Binding::default());
        for i in 0..stream.len() {
            let mut bad = stream.clone();
            bad[i] ^= 1 << (i % 8);
            assert!(open(&bad, Binding::default()).is_err(), "byte {i}");
        }
    }

    #[test]
    fn malformed_headers_are_refused() {
        let header = |json: &str| {
            let mut h = (json.len() as u16).to_be_bytes().to_vec();
            h.extend_from_slice(json.as_bytes());
            h
        };
        let salt = B64.encode([0u8; 32]);
        let np = B64.encode([0u8; 7]);
        let kc = B64.encode([0u8; 32]);
        for json in [
            format!(r#"{{"sv":2,"alg":"AES-256-GCM","seg":4096,"salt":"{salt}","np":"{np}","kc":"{kc}","dk":"AA=="}}"#),
            format!(r#"{{"sv":1,"alg":"AES-512-GCM","seg":4096,"salt":"{salt}","np":"{np}","kc":"{kc}","dk":"AA=="}}"#),
            format!(r#"{{"sv":1,"alg":"AES-256-GCM","seg":4095,"salt":"{salt}","np":"{np}","kc":"{kc}","dk":"AA=="}}"#),
            format!(r#"{{"sv":1,"alg":"AES-256-GCM","seg":4096,"salt":"AA==","np":"{np}","kc":"{kc}","dk":"AA=="}}"#),
            format!(r#"{{"sv":1,"alg":"AES-256-GCM","seg":4096,"salt":"{salt}","np":"{np}","kc":"{kc}","dk":""}}"#),
            format!(r#"{{"sv":1,"alg":"AES-256-GCM","seg":4096,"salt":"{salt}","np":"{np}","kc":"{kc}","dk":"!"}}"#),
            format!(
                r#"{{"sv":1,"alg":"AES-256-GCM","seg":4096,"salt":"{salt}","np":"{np}","kc":"{kc}","dk":"AA==","x":0}}"#
            ),
            format!(r#"{{"sv":1,"alg":"AES-256-GCM","seg":4096,"salt":"{salt}","np":"{np}","kc":"{kc}"}}"#),
            r#"{"v":3}"#.to_owned(),
            format!(r#"[1,"AES-256-GCM",4096,"{salt}","{np}","{kc}","AA=="]"#),
            format!(
                r#" {{"sv":1,"alg":"AES-256-GCM","seg":4096,"salt":"{salt}","np":"{np}","kc":"{kc}","dk":"AA=="}}"#
            ),
        ] {
            assert_eq!(parse_header(&header(&json)).err(), Some(CryptoError::DecryptionFailed), "{json}");
        }
        let good =
            format!(r#"{{"sv":1,"alg":"AES-256-GCM","seg":4096,"salt":"{salt}","np":"{np}","kc":"{kc}","dk":"AA=="}}"#);
        assert!(parse_header(&header(&good)).unwrap().is_some());
        // Short input asks for more; an oversized length is refused at once.
        assert!(parse_header(&header(&good)[..10]).unwrap().is_none());
        assert!(parse_header(&[0x7f, 0xff]).is_err());
        assert!(parse_header(&[0, 0]).is_err());
        assert!(looks_like_stream(&header(&good)));
    }

    #[test]
    fn encryptor_checks_its_inputs() {
        assert!(matches!(
            StreamEncryptor::new(&data_key(), b"dk", Binding::default(), 100),
            Err(CryptoError::OutOfRange { .. })
        ));
        assert!(matches!(
            StreamEncryptor::new(&SecretKey::from_bytes(vec![0; 24]), b"dk", Binding::default(), SEG),
            Err(CryptoError::InvalidKeyLength { .. })
        ));
        assert!(matches!(
            StreamEncryptor::new(&data_key(), &vec![0; 7000], Binding::default(), SEG),
            Err(CryptoError::TooLarge { .. })
        ));
        let aes128 = SecretKey::from_bytes(vec![3; 16]);
        let stream = seal_all(&aes128, b"dk", Binding::default(), SEG, b"short key").unwrap();
        let (header, used) = parse_header(&stream).unwrap().unwrap();
        assert_eq!(header.cipher(), SegmentCipher::Aes128Gcm);
        assert_eq!(open_all(&header, &aes128, Binding::default(), &stream[used..]).unwrap().to_vec(), b"short key");
    }

    #[test]
    fn debug_output_has_no_key() {
        let encryptor = StreamEncryptor::new(&data_key(), b"dk", Binding::default(), SEG).unwrap();
        let printed = format!("{encryptor:?}");
        assert!(printed.starts_with("StreamEncryptor") && !printed.contains("key:"), "{printed}");
    }
}

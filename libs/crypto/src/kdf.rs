//! The platform's key-derivation functions, each with bounds a service can afford and each checked against
//! its published vectors (`vectors/` and Wycheproof):
//!
//! | function | standard | FIPS-approved | runs on |
//! |---|---|---|---|
//! | HKDF-SHA256/384/512 | RFC 5869, SP 800-56C | yes | OpenSSL ([`crate::primitives::hkdf`]) |
//! | PBKDF2-HMAC-SHA256 | RFC 8018, SP 800-132 | yes | OpenSSL |
//! | KBKDF, HMAC counter mode | SP 800-108 | yes | OpenSSL's HMAC |
//! | Argon2id | RFC 9106 | no | the `argon2` crate |
//! | scrypt | RFC 7914 | no (not validated) | OpenSSL |
//!
//! The cost parameters are capped so that one derivation cannot take a service's memory or a core for
//! minutes; a request above a cap is refused with the cap named.

use openssl::hash::MessageDigest;
use zeroize::Zeroizing;

use crate::{
    CryptoError,
    primitives::{self, Hash},
};

/// Longest output of any KDF here.
pub const MAX_OUTPUT: usize = 1024;
/// Most PBKDF2 iterations.
pub const PBKDF2_MAX_ITERATIONS: u32 = 10_000_000;
/// Most memory Argon2id or scrypt may use, in KiB (256 MiB).
pub const MAX_MEMORY_KIB: u64 = 256 * 1024;
/// Most Argon2id passes and lanes.
pub const ARGON2_MAX_ITERATIONS: u32 = 64;
/// Most Argon2id lanes.
pub const ARGON2_MAX_LANES: u32 = 16;
/// Most scrypt parallelism (computed sequentially, so it multiplies the CPU time).
pub const SCRYPT_MAX_P: u32 = 16;

fn check_output(len: usize) -> Result<(), CryptoError> {
    if len == 0 || len > MAX_OUTPUT {
        return Err(CryptoError::OutOfRange { what: "output length", value: len, min: 1, max: MAX_OUTPUT });
    }
    Ok(())
}

/// PBKDF2 with HMAC-SHA256 (SP 800-132).
pub fn pbkdf2_hmac_sha256(
    password: &[u8],
    salt: &[u8],
    iterations: u32,
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    check_output(len)?;
    if !(1..=PBKDF2_MAX_ITERATIONS).contains(&iterations) {
        return Err(CryptoError::OutOfRange {
            what: "PBKDF2 iterations",
            value: iterations as usize,
            min: 1,
            max: PBKDF2_MAX_ITERATIONS as usize,
        });
    }
    let mut out = Zeroizing::new(vec![0u8; len]);
    openssl::pkcs5::pbkdf2_hmac(password, salt, iterations as usize, MessageDigest::sha256(), &mut out)?;
    Ok(out)
}

/// SP 800-108 KBKDF in counter mode with HMAC as the PRF: `K(i) = HMAC(key, [i]_32 || fixed_input)`, the
/// counter a 32-bit big-endian integer before the fixed input data, output the first `len` bytes of
/// `K(1) || K(2) || ...`. `fixed_input` is usually [`kbkdf_fixed_input`].
pub fn kbkdf_counter_hmac(
    hash: Hash,
    key: &[u8],
    fixed_input: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    check_output(len)?;
    if key.is_empty() {
        return Err(CryptoError::InvalidInput("KBKDF needs a non-empty key".into()));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len + hash.output_len()));
    let mut counter = 1u32;
    while out.len() < len {
        let block = Zeroizing::new(primitives::hmac(hash, key, &[&counter.to_be_bytes(), fixed_input])?);
        out.extend_from_slice(&block);
        counter += 1;
    }
    out.truncate(len);
    Ok(out)
}

/// SP 800-108's recommended fixed input: `label || 0x00 || context || [L]_32`, with L the output length in
/// bits.
pub fn kbkdf_fixed_input(label: &[u8], context: &[u8], len: usize) -> Result<Vec<u8>, CryptoError> {
    check_output(len)?;
    let bits = u32::try_from(len * 8).map_err(|_| CryptoError::Library)?;
    Ok([label, &[0u8], context, &bits.to_be_bytes()].concat())
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Argon2idParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes over memory.
    pub iterations: u32,
    /// Degree of parallelism (computed sequentially here).
    pub lanes: u32,
}

/// Argon2id (RFC 9106, version 0x13) with an optional secret (pepper) and associated data.
pub fn argon2id(
    password: &[u8],
    salt: &[u8],
    params: Argon2idParams,
    secret: &[u8],
    associated_data: &[u8],
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    check_output(len)?;
    if u64::from(params.memory_kib) > MAX_MEMORY_KIB {
        return Err(CryptoError::OutOfRange {
            what: "Argon2id memory (KiB)",
            value: params.memory_kib as usize,
            min: 8,
            max: MAX_MEMORY_KIB as usize,
        });
    }
    if !(1..=ARGON2_MAX_ITERATIONS).contains(&params.iterations) || !(1..=ARGON2_MAX_LANES).contains(&params.lanes) {
        return Err(CryptoError::InvalidInput(format!(
            "Argon2id takes 1 to {ARGON2_MAX_ITERATIONS} iterations and 1 to {ARGON2_MAX_LANES} lanes"
        )));
    }
    let invalid = |e: argon2::Error| CryptoError::InvalidInput(format!("Argon2id: {e}"));
    let mut builder = argon2::ParamsBuilder::new();
    builder.m_cost(params.memory_kib).t_cost(params.iterations).p_cost(params.lanes).output_len(len);
    if !associated_data.is_empty() {
        builder.data(argon2::AssociatedData::new(associated_data).map_err(invalid)?);
    }
    let built = builder.build().map_err(invalid)?;
    let hasher = if secret.is_empty() {
        argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, built)
    } else {
        argon2::Argon2::new_with_secret(secret, argon2::Algorithm::Argon2id, argon2::Version::V0x13, built)
            .map_err(invalid)?
    };
    let mut out = Zeroizing::new(vec![0u8; len]);
    hasher.hash_password_into(password, salt, &mut out).map_err(invalid)?;
    Ok(out)
}

/// scrypt (RFC 7914). `n` is a power of two above 1; memory is 128·r·n bytes, capped at [`MAX_MEMORY_KIB`].
pub fn scrypt(
    password: &[u8],
    salt: &[u8],
    n: u64,
    r: u32,
    p: u32,
    len: usize,
) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    check_output(len)?;
    if n < 2 || !n.is_power_of_two() || r == 0 || p == 0 || u64::from(r) * u64::from(p) >= 1 << 30 {
        return Err(CryptoError::InvalidInput(
            "scrypt takes N a power of two above 1, r ≥ 1, p ≥ 1, r·p < 2^30".into(),
        ));
    }
    let memory = 128u64.saturating_mul(u64::from(r)).saturating_mul(n);
    if memory > MAX_MEMORY_KIB * 1024 {
        return Err(CryptoError::OutOfRange {
            what: "scrypt memory (KiB, 128·r·N/1024)",
            value: usize::try_from(memory / 1024).unwrap_or(usize::MAX),
            min: 1,
            max: MAX_MEMORY_KIB as usize,
        });
    }
    let mut out = Zeroizing::new(vec![0u8; len]);
    // OpenSSL's own ceiling must sit above ours (it also counts the p·128·r buffer).
    let maxmem = MAX_MEMORY_KIB * 1024 * 2;
    openssl::pkcs5::scrypt(password, salt, n, u64::from(r), u64::from(p), maxmem, &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    /// `key = value` records separated by blank lines, as NIST and pyca/cryptography write them.
    fn records(text: &str) -> Vec<std::collections::HashMap<String, String>> {
        let mut out = vec![];
        let mut current = std::collections::HashMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') || line.starts_with('[') {
                if line.starts_with('[') {
                    current.insert("section".to_owned(), line.to_owned());
                }
                continue;
            }
            let Some((k, v)) = line.split_once('=') else { continue };
            let (k, v) = (k.trim().to_owned(), v.trim().to_owned());
            if k == "COUNT" && current.contains_key("COUNT") {
                let section = current.get("section").cloned();
                out.push(std::mem::take(&mut current));
                if let Some(section) = section {
                    current.insert("section".to_owned(), section);
                }
            }
            current.insert(k, v);
        }
        if current.contains_key("COUNT") {
            out.push(current);
        }
        out
    }

    #[test]
    fn kbkdf_nist_cavs_vectors() {
        let mut checked = 0;
        let text = include_str!("../vectors/kbkdf_ctr_hmac_before_fixed_r32.txt");
        // Split by PRF section so each record knows its hash.
        for (i, part) in text.split("[PRF=").enumerate().skip(1) {
            let hash = if part.starts_with("HMAC_SHA256") { Hash::Sha256 } else { Hash::Sha512 };
            assert!(part.starts_with("HMAC_SHA256") || part.starts_with("HMAC_SHA512"), "section {i}");
            for r in records(part) {
                let bits: usize = r["L"].parse().unwrap();
                assert_eq!(bits % 8, 0);
                let out = kbkdf_counter_hmac(hash, &hex(&r["KI"]), &hex(&r["FixedInputData"]), bits / 8).unwrap();
                assert_eq!(out[..], hex(&r["KO"])[..], "{hash:?} COUNT {}", r["COUNT"]);
                checked += 1;
            }
        }
        assert_eq!(checked, 80, "every vector must run");
        assert_eq!(
            kbkdf_fixed_input(b"enc", b"ctx", 32).unwrap(),
            [&b"enc"[..], &[0], b"ctx", &[0, 0, 1, 0]].concat(),
            "L is in bits"
        );
    }

    #[test]
    fn argon2id_rfc_9106_and_cli_vectors() {
        let all = records(include_str!("../vectors/argon2id.txt"));
        for r in &all {
            let params = Argon2idParams {
                memory_kib: r["memcost"].parse().unwrap(),
                iterations: r["iter"].parse().unwrap(),
                lanes: r["lanes"].parse().unwrap(),
            };
            let field = |k: &str| r.get(k).map(|v| hex(v)).unwrap_or_default();
            let out = argon2id(
                &field("pass"),
                &field("salt"),
                params,
                &field("secret"),
                &field("ad"),
                r["length"].parse().unwrap(),
            )
            .unwrap();
            assert_eq!(out[..], hex(&r["output"])[..], "COUNT {}", r["COUNT"]);
        }
        assert_eq!(all.len(), 6, "every vector must run");
    }

    #[test]
    fn scrypt_rfc_7914_vectors() {
        let all = records(include_str!("../vectors/scrypt.txt"));
        for r in &all {
            let (n, r_, p) = (r["N"].parse().unwrap(), r["r"].parse().unwrap(), r["p"].parse().unwrap());
            let out = scrypt(r["PASSWORD"].as_bytes(), r["SALT"].as_bytes(), n, r_, p, r["LENGTH"].parse().unwrap());
            if 128 * u64::from(r_) * n > MAX_MEMORY_KIB * 1024 {
                // RFC 7914's fourth vector needs 1 GiB: above keymesh's cap, so it must be refused.
                assert!(matches!(out, Err(CryptoError::OutOfRange { .. })), "COUNT {}", r["COUNT"]);
                continue;
            }
            assert_eq!(out.unwrap()[..], hex(&r["DERIVED_KEY"])[..], "COUNT {}", r["COUNT"]);
        }
        assert_eq!(all.len(), 4, "every vector must run");
    }

    #[test]
    fn bounds_are_enforced() {
        assert!(pbkdf2_hmac_sha256(b"p", b"s", 0, 32).is_err());
        assert!(pbkdf2_hmac_sha256(b"p", b"s", 1, 0).is_err());
        assert!(pbkdf2_hmac_sha256(b"p", b"s", 1, MAX_OUTPUT + 1).is_err());
        assert!(scrypt(b"p", b"s", 3, 1, 1, 32).is_err());
        let huge = Argon2idParams { memory_kib: 1 << 20, iterations: 1, lanes: 1 };
        assert!(argon2id(b"p", b"saltsalt", huge, b"", b"", 32).is_err());
    }
}

//! The unary ciphertext parser and opener under attacker-controlled bytes. Two properties:
//! - any input: parsing never panics, and nothing but a real ciphertext opens under the fixture keys;
//! - edits to a real ciphertext of each algorithm (bit flips, truncation, appended or overwritten bytes):
//!   the edited ciphertext is refused unless the edits cancel out, in which case it still opens.

#![no_main]

use std::sync::OnceLock;

use keymesh_crypto::{
    SecretKey, SymmetricAlgorithm,
    ciphertext::{self, Binding, KeyRef, SealRequest},
};
use libfuzzer_sys::fuzz_target;

struct Sealed {
    key: SecretKey,
    ciphertext: Vec<u8>,
}

/// One real ciphertext per algorithm, made once per process.
fn fixtures() -> &'static [Sealed] {
    static FIXTURES: OnceLock<Vec<Sealed>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        SymmetricAlgorithm::ALL
            .into_iter()
            .enumerate()
            .map(|(n, algorithm)| {
                let key = SecretKey::from_bytes((0..algorithm.key_len()).map(|i| (i * 7 + n) as u8).collect());
                let key_ref = KeyRef { key_id: "k_fuzz".into(), version: 1 };
                let request = SealRequest {
                    key_name: "fuzz",
                    key_ref: &key_ref,
                    algorithm,
                    binding: Binding { aad: b"fuzz-aad", context: None },
                };
                let ciphertext = ciphertext::seal(&key, &request, b"a plaintext of forty-one bytes, or so....")
                    .unwrap_or_else(|e| panic!("fixture {algorithm:?}: {e}"));
                Sealed { key, ciphertext }
            })
            .collect()
    })
}

fn open(bytes: &[u8], key: &SecretKey) -> bool {
    ciphertext::parse(bytes).and_then(|p| p.open(key, Binding { aad: b"fuzz-aad", context: None })).is_ok()
}

/// Applies edits, three input bytes each: (kind, a, b).
fn edit(original: &[u8], ops: &[u8]) -> Vec<u8> {
    let mut out = original.to_vec();
    for op in ops.chunks_exact(3) {
        let (kind, a, b) = (op[0], op[1] as usize, op[2]);
        let at = |len: usize| if len == 0 { 0 } else { (a * 256 + b as usize) % len };
        match kind % 4 {
            0 if !out.is_empty() => {
                let i = at(out.len());
                out[i] ^= 1 << (b % 8);
            }
            1 => out.truncate(at(out.len() + 1)),
            2 => out.push(b),
            3 if !out.is_empty() => {
                let i = at(out.len());
                out[i] = b;
            }
            _ => {}
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    for sealed in fixtures() {
        if open(data, &sealed.key) {
            assert_eq!(data, &sealed.ciphertext[..], "a forged ciphertext opened");
        }
    }
    if let Some((&which, ops)) = data.split_first() {
        let sealed = &fixtures()[which as usize % fixtures().len()];
        let edited = edit(&sealed.ciphertext, ops);
        assert_eq!(open(&edited, &sealed.key), edited == sealed.ciphertext, "an edited ciphertext opened");
    }
});

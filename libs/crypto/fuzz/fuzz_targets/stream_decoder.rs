//! The stream header parser and segment decoder under attacker-controlled bytes, fed in pieces of every
//! size. Two properties:
//! - any input: decoding never panics, and nothing but the real stream opens under the fixture's data key;
//! - edits to a real stream (bit flips, truncation, dropped, duplicated and swapped segments, appended
//!   bytes): the edited stream is refused unless the edits cancel out, in which case the original
//!   plaintext comes back whole.

#![no_main]

use std::sync::OnceLock;

use keymesh_crypto::{
    SecretKey,
    ciphertext::Binding,
    stream::{self, MIN_SEGMENT_SIZE, SEGMENT_TAG_LEN},
};
use libfuzzer_sys::fuzz_target;

struct Fixture {
    data_key: SecretKey,
    plaintext: Vec<u8>,
    stream: Vec<u8>,
    header_len: usize,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let data_key = SecretKey::from_bytes((0u8..32).collect());
        let plaintext: Vec<u8> = (0..3 * MIN_SEGMENT_SIZE + 123).map(|i| (i * 31 % 251) as u8).collect();
        let stream = stream::seal_all(&data_key, b"wrapped", Binding::default(), MIN_SEGMENT_SIZE, &plaintext)
            .unwrap_or_else(|e| panic!("fixture: {e}"));
        let header_len = match stream::parse_header(&stream) {
            Ok(Some((_, used))) => used,
            _ => panic!("fixture header"),
        };
        Fixture { data_key, plaintext, stream, header_len }
    })
}

/// Decodes `bytes` as a whole stream, fed `piece` bytes at a time.
fn decode(bytes: &[u8], data_key: &SecretKey, piece: usize) -> Option<Vec<u8>> {
    let mut chunks = bytes.chunks(piece);
    let mut buffer = Vec::new();
    let (header, used) = loop {
        buffer.extend_from_slice(chunks.next()?);
        if let Some(parsed) = stream::parse_header(&buffer).ok()? {
            break parsed;
        }
    };
    let mut decryptor = header.decryptor(data_key, Binding::default()).ok()?;
    let mut out = Vec::new();
    decryptor.update(&buffer[used..], &mut out).ok()?;
    for chunk in chunks {
        decryptor.update(chunk, &mut out).ok()?;
    }
    decryptor.finish(&mut out).ok()?;
    Some(out)
}

/// Applies edits, three input bytes each: (kind, a, b). Segment edits work on whole sealed segments.
fn edit(fx: &Fixture, ops: &[u8]) -> Vec<u8> {
    let sealed = MIN_SEGMENT_SIZE + SEGMENT_TAG_LEN;
    let mut header = fx.stream[..fx.header_len].to_vec();
    let mut segments: Vec<Vec<u8>> = fx.stream[fx.header_len..].chunks(sealed).map(<[u8]>::to_vec).collect();
    let mut tail = Vec::new();
    for op in ops.chunks_exact(3) {
        let (kind, a, b) = (op[0], op[1] as usize, op[2] as usize);
        let n = segments.len();
        match kind % 7 {
            0 if n > 0 => segments.swap(a % n, b % n),
            1 if n > 0 => {
                segments.remove(a % n);
            }
            2 if n > 0 => {
                let copy = segments[a % n].clone();
                segments.insert(b % (n + 1), copy);
            }
            3 if n > 0 => {
                let segment = &mut segments[a % n];
                if !segment.is_empty() {
                    let i = (b * 37) % segment.len();
                    segment[i] ^= 1 << (b % 8);
                }
            }
            4 if !header.is_empty() => {
                let i = (a * 256 + b) % header.len();
                header[i] ^= 1 << (a % 8);
            }
            5 if n > 0 => {
                let segment = &mut segments[n - 1];
                segment.truncate((a * 256 + b) % (segment.len() + 1));
            }
            6 => tail.push(b as u8),
            _ => {}
        }
    }
    let mut out = header;
    segments.iter().for_each(|s| out.extend_from_slice(s));
    out.extend_from_slice(&tail);
    out
}

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let Some((&selector, ops)) = data.split_first() else {
        return;
    };
    let piece = 1 + selector as usize * 67;
    if let Some(opened) = decode(data, &fx.data_key, piece) {
        assert_eq!(data, &fx.stream[..], "a forged stream opened");
        assert_eq!(opened, fx.plaintext);
    }
    let edited = edit(fx, ops);
    let opened = decode(&edited, &fx.data_key, piece);
    if edited == fx.stream {
        assert_eq!(opened.as_deref(), Some(&fx.plaintext[..]), "the real stream did not open");
    } else {
        assert!(opened.is_none(), "an edited stream opened");
    }
});

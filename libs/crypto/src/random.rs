//! Randomness from the operating system's CSPRNG (through OpenSSL's DRBG, which is seeded by getrandom).
//!
//! Nonces are served from a per-thread pool of DRBG output refilled [`NONCE_POOL`] bytes at a time. A
//! `RAND_bytes` call per seal (its lock, its fork check, its reseed bookkeeping) was 4 % of crypto-service's CPU
//! per Encrypt; the pool makes it one call per few hundred nonces. A nonce is public (it is written into its
//! ciphertext), so holding the next ones in memory discloses nothing a ciphertext will not; each byte of the
//! pool is handed out once. Keys and other secrets never come from the pool.

use std::cell::RefCell;

use zeroize::Zeroizing;

use crate::CryptoError;

/// `len` random bytes in a zeroizing buffer.
pub fn random_bytes(len: usize) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    let mut buf = Zeroizing::new(vec![0u8; len]);
    openssl::rand::rand_bytes(&mut buf)?;
    Ok(buf)
}

/// A random nonce of `N` bytes (nonces are public; no zeroizing needed).
pub fn nonce<const N: usize>() -> Result<[u8; N], CryptoError> {
    let mut buf = [0u8; N];
    fill_nonce(&mut buf)?;
    Ok(buf)
}

/// Bytes of DRBG output a thread's nonce pool holds.
const NONCE_POOL: usize = 4096;

struct NoncePool {
    bytes: Box<[u8; NONCE_POOL]>,
    /// Bytes handed out (the next nonce starts here).
    used: usize,
    /// The process that filled the pool. A forked child starts with a copy of its parent's memory, pool
    /// included, and must never hand out the nonces its parent will: a pool filled by another process is
    /// thrown away.
    pid: u32,
}

impl NoncePool {
    /// Hands out `out.len()` bytes to process `pid`, refilling the pool first when it is short or not `pid`'s.
    fn take(pool: &mut Option<NoncePool>, pid: u32, out: &mut [u8]) -> Result<(), CryptoError> {
        let fresh = match pool.as_ref() {
            Some(p) => p.pid != pid || p.used + out.len() > NONCE_POOL,
            None => true,
        };
        if fresh {
            let mut bytes = Box::new([0u8; NONCE_POOL]);
            openssl::rand::rand_bytes(bytes.as_mut_slice())?;
            *pool = Some(NoncePool { bytes, used: 0, pid });
        }
        let Some(p) = pool.as_mut() else { return Err(CryptoError::Library) };
        let taken = p.used..p.used + out.len();
        out.copy_from_slice(&p.bytes[taken.clone()]);
        // Handed-out bytes are cleared: the pool only ever holds nonces not yet in use.
        p.bytes[taken].fill(0);
        p.used += out.len();
        Ok(())
    }
}

thread_local! {
    static POOL: RefCell<Option<NoncePool>> = const { RefCell::new(None) };
}

/// Fills `out` with random bytes for a nonce (or another public random value), from this thread's pool.
pub fn fill_nonce(out: &mut [u8]) -> Result<(), CryptoError> {
    if out.len() > NONCE_POOL / 4 {
        openssl::rand::rand_bytes(out)?;
        return Ok(());
    }
    // getpid(2) on every call (glibc does not cache it): far cheaper than RAND_bytes, which makes the same call.
    let pid = std::process::id();
    POOL.with(|pool| NoncePool::take(&mut pool.borrow_mut(), pid, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_never_repeat_across_refills_and_threads() {
        let mut seen = std::collections::HashSet::new();
        // Several refills of this thread's pool.
        for _ in 0..3 * NONCE_POOL / 12 {
            assert!(seen.insert(nonce::<12>().unwrap()));
        }
        let others: Vec<[u8; 12]> =
            std::thread::spawn(|| (0..1000).map(|_| nonce::<12>().unwrap()).collect()).join().unwrap();
        for n in others {
            assert!(seen.insert(n), "another thread's pool repeated a nonce");
        }
    }

    #[test]
    fn a_pool_filled_by_another_process_is_never_used() {
        let mut pool = None;
        let mut first = [0u8; 12];
        NoncePool::take(&mut pool, 1, &mut first).unwrap();
        let parents_next: [u8; 12] = pool.as_ref().unwrap().bytes[12..24].try_into().unwrap();
        // As in a child forked after the first nonce: another pid, the same pool.
        let mut childs = [0u8; 12];
        NoncePool::take(&mut pool, 2, &mut childs).unwrap();
        assert_ne!(childs, parents_next, "the child handed out its parent's next nonce");
        assert_eq!(pool.as_ref().unwrap().pid, 2);
        assert_eq!(pool.as_ref().unwrap().used, 12);
    }

    #[test]
    fn handed_out_bytes_are_cleared_and_large_requests_bypass_the_pool() {
        let mut pool = None;
        let mut n = [0u8; 16];
        NoncePool::take(&mut pool, 7, &mut n).unwrap();
        assert!(pool.as_ref().unwrap().bytes[..16].iter().all(|b| *b == 0));
        assert_ne!(n, [0u8; 16]);
        let mut large = vec![0u8; NONCE_POOL];
        fill_nonce(&mut large).unwrap();
        assert!(large.iter().any(|b| *b != 0));
    }
}

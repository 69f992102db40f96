//! One conformance suite for every KEK backend. Tests of each backend (against OpenBao, moto, the GCP and
//! Azure doubles, or nothing for the local backend) supply a [`Harness`] and run [`run`] unchanged, so a
//! backend is only "supported" when it behaves like the others: round trips, refuses a wrap presented under
//! another context, reports its provider key disabled or deleted as [`KmsError::KeyUnusable`] (or
//! unavailable), and reports an outage as [`KmsError::Unavailable`] within its deadline and recovers when
//! the server returns.
//!
//! The suite returns what it found instead of panicking, so callers decide how to fail and the report can
//! say which check broke.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use keymesh_crypto::SecretKey;

use crate::{KeyEncryptionBackend, KmsError, WrapContext};

/// What the suite needs from a test environment.
#[async_trait::async_trait]
pub trait Harness: Send + Sync {
    /// The backend under test, opened as the service opens it (remote ones inside `Resilient`).
    fn backend(&self) -> Arc<dyn KeyEncryptionBackend>;
    /// The longest a call may take while the server is down (its resilience policy's worst case).
    fn outage_deadline(&self) -> Duration;
    /// Makes the server stop answering; `false` when the backend has no server (the local one).
    async fn stop_server(&self) -> Result<bool, String>;
    /// Brings the server back.
    async fn start_server(&self) -> Result<(), String>;
    /// Disables or deletes the backend's key at the provider; `false` when it has none to disable.
    async fn disable_key(&self) -> Result<bool, String>;
}

/// Which checks ran, and how long the outage took to detect and to recover from.
#[derive(Debug, Default)]
pub struct Report {
    /// Names of the checks that passed.
    pub passed: Vec<&'static str>,
    /// Names of the checks that did not apply (no server, no provider key).
    pub not_applicable: Vec<&'static str>,
    /// Slowest failing call while the server was down.
    pub slowest_outage_call: Option<Duration>,
    /// Time from the server's return to the first successful call.
    pub recovery: Option<Duration>,
}

fn context(version: u32) -> WrapContext {
    WrapContext {
        tenant_id: "conformance-tenant".into(),
        key_id: "conformance-key".into(),
        version,
        algorithm: "AES-256-GCM".into(),
    }
}

fn dek(seed: u8) -> SecretKey {
    SecretKey::from_bytes((0..32).map(|i| seed.wrapping_mul(31).wrapping_add(i)).collect())
}

fn fail(check: &str, detail: impl std::fmt::Display) -> String {
    format!("conformance check `{check}` failed: {detail}")
}

/// Runs every check; the first that fails ends the run with its reason. The key is disabled last, since
/// for some providers that cannot be undone.
pub async fn run(harness: &dyn Harness) -> Result<Report, String> {
    let mut report = Report::default();
    round_trip(harness).await?;
    report.passed.push("round_trip");
    context_mismatch(harness).await?;
    report.passed.push("context_mismatch");
    if outage(harness, &mut report).await? {
        report.passed.push("outage");
    } else {
        report.not_applicable.push("outage");
    }
    if key_disabled(harness).await? {
        report.passed.push("key_disabled");
    } else {
        report.not_applicable.push("key_disabled");
    }
    Ok(report)
}

async fn round_trip(harness: &dyn Harness) -> Result<(), String> {
    const CHECK: &str = "round_trip";
    let backend = harness.backend();
    backend.health().await.map_err(|e| fail(CHECK, format!("health: {e}")))?;
    let key = dek(1);
    let first = backend.wrap(&key, &context(1)).await.map_err(|e| fail(CHECK, format!("wrap: {e}")))?;
    let second = backend.wrap(&key, &context(1)).await.map_err(|e| fail(CHECK, format!("wrap: {e}")))?;
    if first.ciphertext == second.ciphertext {
        return Err(fail(CHECK, "two wraps of one DEK are identical: wrapping must be randomized"));
    }
    if first.ciphertext.windows(8).any(|w| key.expose_secret().windows(8).any(|k| k == w)) {
        return Err(fail(CHECK, "the wrapped bytes contain part of the DEK"));
    }
    for wrapped in [&first, &second] {
        let back = backend.unwrap(wrapped, &context(1)).await.map_err(|e| fail(CHECK, format!("unwrap: {e}")))?;
        if back.expose_secret() != key.expose_secret() {
            return Err(fail(CHECK, "unwrap returned different bytes"));
        }
    }
    let description = backend.describe();
    if description.kek_id.is_empty() || !backend.is_current(&first) {
        return Err(fail(CHECK, format!("a fresh wrap is not current under {description:?}")));
    }
    // Sizes DEKs come in: AES-128 keys and 64-byte SIV / HMAC keys.
    for len in [16usize, 64] {
        let key = SecretKey::from_bytes(vec![7; len]);
        let wrapped = backend.wrap(&key, &context(2)).await.map_err(|e| fail(CHECK, format!("wrap {len}: {e}")))?;
        let back =
            backend.unwrap(&wrapped, &context(2)).await.map_err(|e| fail(CHECK, format!("unwrap {len}: {e}")))?;
        if back.expose_secret() != key.expose_secret() {
            return Err(fail(CHECK, format!("a {len}-byte DEK came back different")));
        }
    }
    Ok(())
}

async fn context_mismatch(harness: &dyn Harness) -> Result<(), String> {
    const CHECK: &str = "context_mismatch";
    let backend = harness.backend();
    let original = context(3);
    let wrapped = backend.wrap(&dek(3), &original).await.map_err(|e| fail(CHECK, format!("wrap: {e}")))?;
    let others = [
        WrapContext { tenant_id: "other-tenant".into(), ..original.clone() },
        WrapContext { key_id: "other-key".into(), ..original.clone() },
        WrapContext { version: 4, ..original.clone() },
        WrapContext { algorithm: "AES-128-GCM".into(), ..original.clone() },
    ];
    for other in &others {
        match backend.unwrap(&wrapped, other).await {
            Err(KmsError::UnwrapFailed { .. }) => {}
            Ok(_) => return Err(fail(CHECK, format!("unwrapped under a different context {other:?}"))),
            Err(e) => return Err(fail(CHECK, format!("expected UnwrapFailed under {other:?}, got {e}"))),
        }
    }
    let mut tampered = wrapped.clone();
    if let Some(last) = tampered.ciphertext.last_mut() {
        // Flip a bit of the last byte that keeps text-encoded ciphertexts (Vault's base64) well-formed.
        *last = if *last == b'A' { b'B' } else { b'A' };
    }
    match backend.unwrap(&tampered, &original).await {
        Ok(_) => Err(fail(CHECK, "unwrapped a tampered ciphertext")),
        Err(KmsError::UnwrapFailed { .. }) => Ok(()),
        Err(e) => Err(fail(CHECK, format!("expected UnwrapFailed for a tampered ciphertext, got {e}"))),
    }
}

/// A workload of unwraps keeps running while the server stops and returns: every failing call must be
/// `Unavailable` and return within the deadline, and calls must succeed again once the server is back.
async fn outage(harness: &dyn Harness, report: &mut Report) -> Result<bool, String> {
    const CHECK: &str = "outage";
    let backend = harness.backend();
    let key = dek(5);
    let wrapped = backend.wrap(&key, &context(5)).await.map_err(|e| fail(CHECK, format!("wrap: {e}")))?;
    let deadline = harness.outage_deadline();

    let running = Arc::new(AtomicBool::new(true));
    let worker = {
        let (backend, running, wrapped) = (backend.clone(), running.clone(), wrapped.clone());
        let expected = key.expose_secret().to_vec();
        tokio::spawn(async move {
            let mut outcomes: Vec<(Instant, Duration, Result<(), String>)> = Vec::new();
            while running.load(Ordering::Relaxed) {
                let started = Instant::now();
                let outcome = match backend.unwrap(&wrapped, &context(5)).await {
                    Ok(back) if back.expose_secret() == expected.as_slice() => Ok(()),
                    Ok(_) => Err("wrong bytes".to_owned()),
                    Err(KmsError::Unavailable { .. }) => Err("unavailable".to_owned()),
                    Err(e) => Err(format!("unexpected error: {e}")),
                };
                outcomes.push((started, started.elapsed(), outcome));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            outcomes
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    if !harness.stop_server().await.map_err(|e| fail(CHECK, e))? {
        running.store(false, Ordering::Relaxed);
        let _ = worker.await;
        return Ok(false);
    }
    let stopped = Instant::now();
    // Long enough for several calls to run into the outage and for the breaker to open.
    tokio::time::sleep(deadline * 2 + Duration::from_millis(500)).await;
    harness.start_server().await.map_err(|e| fail(CHECK, e))?;
    let restarted = Instant::now();
    // Recovery: the breaker's open period plus a probe; the harness's deadline bounds both.
    let recover_by = restarted + deadline * 4 + Duration::from_secs(5);
    let mut recovered = None;
    while Instant::now() < recover_by {
        if backend.unwrap(&wrapped, &context(5)).await.is_ok() {
            recovered = Some(restarted.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    running.store(false, Ordering::Relaxed);
    let outcomes = worker.await.map_err(|e| fail(CHECK, format!("workload task: {e}")))?;

    let during: Vec<_> = outcomes.iter().filter(|(at, took, _)| *at > stopped && *at + *took < restarted).collect();
    if during.is_empty() {
        return Err(fail(CHECK, "no call ran while the server was down"));
    }
    for (_, took, outcome) in &during {
        match outcome {
            Err(reason) if reason == "unavailable" => {}
            other => return Err(fail(CHECK, format!("while down, a call gave {other:?} instead of Unavailable"))),
        }
        if *took > deadline {
            return Err(fail(CHECK, format!("a call took {took:?} while down, over the deadline of {deadline:?}")));
        }
    }
    if let Some((_, _, Err(e))) = outcomes.iter().find(|(_, _, o)| matches!(o, Err(r) if r != "unavailable")) {
        return Err(fail(CHECK, format!("the workload saw {e}")));
    }
    report.slowest_outage_call = during.iter().map(|(_, took, _)| *took).max();
    report.recovery = Some(recovered.ok_or_else(|| fail(CHECK, "calls did not succeed again after the restart"))?);
    Ok(true)
}

async fn key_disabled(harness: &dyn Harness) -> Result<bool, String> {
    const CHECK: &str = "key_disabled";
    let backend = harness.backend();
    let wrapped = backend.wrap(&dek(6), &context(6)).await.map_err(|e| fail(CHECK, format!("wrap: {e}")))?;
    if !harness.disable_key().await.map_err(|e| fail(CHECK, e))? {
        return Ok(false);
    }
    match backend.unwrap(&wrapped, &context(6)).await {
        Err(KmsError::KeyUnusable { reason, .. }) if !reason.is_empty() => {}
        Err(KmsError::Unavailable { .. }) => {}
        Ok(_) => return Err(fail(CHECK, "unwrapped under a disabled key")),
        Err(e) => return Err(fail(CHECK, format!("expected KeyUnusable, got {e}"))),
    }
    match backend.wrap(&dek(7), &context(7)).await {
        Err(KmsError::KeyUnusable { .. } | KmsError::Unavailable { .. }) => Ok(true),
        Ok(_) => Err(fail(CHECK, "wrapped under a disabled key")),
        Err(e) => Err(fail(CHECK, format!("expected KeyUnusable on wrap, got {e}"))),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::{LocalKms, LocalKmsConfig};

    struct LocalHarness(Arc<dyn KeyEncryptionBackend>);

    #[async_trait::async_trait]
    impl Harness for LocalHarness {
        fn backend(&self) -> Arc<dyn KeyEncryptionBackend> {
            self.0.clone()
        }
        fn outage_deadline(&self) -> Duration {
            Duration::from_secs(1)
        }
        async fn stop_server(&self) -> Result<bool, String> {
            Ok(false)
        }
        async fn start_server(&self) -> Result<(), String> {
            Ok(())
        }
        async fn disable_key(&self) -> Result<bool, String> {
            Ok(false)
        }
    }

    #[tokio::test]
    async fn the_local_backend_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let kms = LocalKms::open(&LocalKmsConfig::resolve(dir.path().into(), Some("m".into()), None)).unwrap();
        let report = run(&LocalHarness(Arc::new(kms))).await.unwrap();
        assert_eq!(report.passed, ["round_trip", "context_mismatch"]);
        assert_eq!(report.not_applicable, ["outage", "key_disabled"]);
    }
}

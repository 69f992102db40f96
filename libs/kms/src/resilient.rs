//! Resilience for remote KEK backends (cloud KMSs, Vault): every call gets a deadline, transient failures
//! (the backend unreachable, overloaded or too slow) are retried a bounded number of times with jittered
//! exponential backoff, and a circuit breaker stops calling a backend that keeps failing so that requests
//! fail fast with UNAVAILABLE instead of each waiting out the deadline. Answers that are final (the wrap
//! does not open, the KEK is disabled) are neither retried nor counted against the backend.
//!
//! The breaker is closed normally; `failure_threshold` consecutive transient failures open it for
//! `open_for`; then one probe call is let through (half-open): success closes it, failure opens it again.

use std::{
    sync::{
        Arc, LazyLock, Mutex, Weak,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::{KeyValue, metrics::ObservableGauge};

use keymesh_crypto::SecretKey;
use rand::Rng;

use crate::{BackendDescription, KeyEncryptionBackend, KmsError, WrapContext, WrappedKey};

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct ResiliencePolicy {
    /// Deadline of one attempt.
    pub attempt_timeout: Duration,
    /// Attempts per call, the first included.
    pub max_attempts: u32,
    /// Backoff before the first retry; doubles with each retry, up to `max_backoff`, with full jitter.
    pub base_backoff: Duration,
    /// Largest backoff.
    pub max_backoff: Duration,
    /// Consecutive transient failures that open the breaker.
    pub failure_threshold: u32,
    /// How long the breaker stays open before a probe.
    pub open_for: Duration,
}

impl Default for ResiliencePolicy {
    /// Fits inside a typical 5 s client deadline: at most 3 attempts of 1.5 s with short backoffs.
    fn default() -> Self {
        Self {
            attempt_timeout: Duration::from_millis(1500),
            max_attempts: 3,
            base_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
            failure_threshold: 5,
            open_for: Duration::from_secs(10),
        }
    }
}

#[derive(Debug)]
enum Breaker {
    Closed {
        consecutive_failures: u32,
    },
    Open {
        until: Instant,
    },
    /// One probe call is under way since then. A probe cannot legitimately outlive its attempt deadline, so
    /// an older one was abandoned (its caller went away) and another may go.
    HalfOpen {
        probe_started: Instant,
    },
}

/// A breaker's state as `keymesh.kms.breaker.state` reads it, kept in step with the breaker: 0 closed,
/// 1 half-open, 2 open. An open breaker whose wait is over lets the next call through as a probe, so it reads as
/// half-open from then on, even while no call comes to close it.
#[derive(Default)]
struct ReportedState {
    state: AtomicU8,
    /// While open: until when, in milliseconds since [`EPOCH`].
    open_until_ms: AtomicU64,
}

/// The clock `open_until_ms` counts from.
static EPOCH: LazyLock<Instant> = LazyLock::new(Instant::now);

fn millis_since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(*EPOCH).as_millis()).unwrap_or(u64::MAX)
}

impl ReportedState {
    fn set(&self, breaker: &Breaker) {
        let (state, until) = match breaker {
            Breaker::Closed { .. } => (0, 0),
            Breaker::HalfOpen { .. } => (1, 0),
            Breaker::Open { until } => (2, millis_since_epoch(*until)),
        };
        self.open_until_ms.store(until, Ordering::Relaxed);
        self.state.store(state, Ordering::Relaxed);
    }

    fn read(&self) -> u8 {
        match self.state.load(Ordering::Relaxed) {
            2 if millis_since_epoch(Instant::now()) >= self.open_until_ms.load(Ordering::Relaxed) => 1,
            state => state,
        }
    }
}

/// Every live breaker of the process, by backend name and type, for `keymesh.kms.breaker.state`.
static BREAKERS: Mutex<Vec<(String, &'static str, Weak<ReportedState>)>> = Mutex::new(Vec::new());

/// `keymesh.kms.breaker.state` by `kms.member` and `kms.backend`: 0 closed, 1 half-open, 2 open. Built with the
/// first remote backend, so after the service installed its meter provider.
static BREAKER_GAUGE: LazyLock<ObservableGauge<u64>> = LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .u64_observable_gauge("keymesh.kms.breaker.state")
        .with_description("Circuit breaker of each remote KMS backend: 0 closed, 1 half-open, 2 open")
        .with_callback(|observer| {
            let mut breakers = BREAKERS.lock().unwrap_or_else(|p| p.into_inner());
            breakers.retain(|(_, _, state)| state.strong_count() > 0);
            for (member, backend, state) in breakers.iter() {
                if let Some(state) = state.upgrade() {
                    observer.observe(
                        u64::from(state.read()),
                        &[KeyValue::new("kms.member", member.clone()), KeyValue::new("kms.backend", *backend)],
                    );
                }
            }
        })
        .build()
});

/// A backend with deadlines, retries and a circuit breaker.
pub struct Resilient<B> {
    inner: B,
    name: String,
    policy: ResiliencePolicy,
    breaker: Mutex<Breaker>,
    /// The breaker's state as the gauge reads it, kept in step with `breaker`.
    reported: Arc<ReportedState>,
}

impl<B: KeyEncryptionBackend> Resilient<B> {
    /// Wraps `inner`; `name` appears in errors, logs and the breaker's gauge.
    pub fn new(inner: B, name: &str, policy: ResiliencePolicy) -> Self {
        let reported = Arc::new(ReportedState::default());
        LazyLock::force(&BREAKER_GAUGE);
        BREAKERS.lock().unwrap_or_else(|p| p.into_inner()).push((
            name.to_owned(),
            inner.kind(),
            Arc::downgrade(&reported),
        ));
        Self {
            inner,
            name: name.to_owned(),
            policy,
            breaker: Mutex::new(Breaker::Closed { consecutive_failures: 0 }),
            reported,
        }
    }

    fn set(&self, breaker: &mut Breaker, next: Breaker) {
        self.reported.set(&next);
        *breaker = next;
    }

    fn unavailable(&self, reason: String) -> KmsError {
        KmsError::Unavailable { backend: self.name.clone(), reason }
    }

    /// May a call go through now? Refuses while open, and while a half-open probe is under way.
    fn admit(&self) -> Result<(), KmsError> {
        let mut breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        match *breaker {
            Breaker::Closed { .. } => Ok(()),
            Breaker::Open { until } if Instant::now() < until => Err(self.unavailable(format!(
                "circuit open after repeated failures; next attempt in {} ms",
                until.saturating_duration_since(Instant::now()).as_millis()
            ))),
            Breaker::HalfOpen { probe_started } if probe_started.elapsed() <= self.policy.attempt_timeout => {
                Err(self.unavailable("circuit half-open; a probe call is under way".into()))
            }
            Breaker::Open { .. } | Breaker::HalfOpen { .. } => {
                self.set(&mut breaker, Breaker::HalfOpen { probe_started: Instant::now() });
                Ok(())
            }
        }
    }

    fn record(&self, transient_failure: bool) {
        let mut breaker = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        let next = match (&*breaker, transient_failure) {
            (_, false) => Breaker::Closed { consecutive_failures: 0 },
            (Breaker::Closed { consecutive_failures }, true)
                if consecutive_failures + 1 < self.policy.failure_threshold =>
            {
                Breaker::Closed { consecutive_failures: consecutive_failures + 1 }
            }
            (_, true) => {
                tracing::warn!(backend = %self.name, open_for_ms = self.policy.open_for.as_millis() as u64, "KMS circuit opened");
                Breaker::Open { until: Instant::now() + self.policy.open_for }
            }
        };
        self.set(&mut breaker, next);
    }

    fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.policy.base_backoff.saturating_mul(1 << retry.min(16)).min(self.policy.max_backoff);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::rng().random_range(0..=millis))
    }

    async fn call<T, F, Fut>(&self, operation: &str, attempt: F) -> Result<T, KmsError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<T, KmsError>>,
    {
        let mut last = None;
        for n in 0..self.policy.max_attempts.max(1) {
            if n > 0 {
                tokio::time::sleep(self.backoff(n - 1)).await;
            }
            self.admit()?;
            let outcome = match tokio::time::timeout(self.policy.attempt_timeout, attempt()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(self.unavailable(format!(
                    "{operation} took longer than {} ms",
                    self.policy.attempt_timeout.as_millis()
                ))),
            };
            match outcome {
                Err(KmsError::Unavailable { reason, .. }) => {
                    self.record(true);
                    tracing::debug!(backend = %self.name, operation, attempt = n + 1, %reason, "transient KMS failure");
                    // Named after the keyring member, which is what an operator configured.
                    last = Some(self.unavailable(reason));
                }
                other => {
                    self.record(false);
                    return other;
                }
            }
        }
        Err(last.unwrap_or_else(|| self.unavailable(format!("{operation} was not attempted"))))
    }
}

#[async_trait::async_trait]
impl<B: KeyEncryptionBackend> KeyEncryptionBackend for Resilient<B> {
    async fn wrap(&self, dek: &SecretKey, context: &WrapContext) -> Result<WrappedKey, KmsError> {
        self.call("wrap", || self.inner.wrap(dek, context)).await
    }

    async fn unwrap(&self, wrapped: &WrappedKey, context: &WrapContext) -> Result<SecretKey, KmsError> {
        self.call("unwrap", || self.inner.unwrap(wrapped, context)).await
    }

    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn describe(&self) -> BackendDescription {
        self.inner.describe()
    }

    fn is_current(&self, wrapped: &WrappedKey) -> bool {
        self.inner.is_current(wrapped)
    }

    async fn health(&self) -> Result<(), KmsError> {
        self.call("health", || self.inner.health()).await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    /// A backend that fails (transiently or for good) a set number of times, or hangs, counting calls.
    #[derive(Default)]
    struct Flaky {
        calls: AtomicU32,
        transient_failures: AtomicU32,
        hang: std::sync::atomic::AtomicBool,
        refuse: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl KeyEncryptionBackend for Flaky {
        async fn wrap(&self, dek: &SecretKey, _: &WrapContext) -> Result<WrappedKey, KmsError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.hang.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            if self.refuse.load(Ordering::SeqCst) {
                return Err(KmsError::UnwrapFailed { backend: "flaky".into() });
            }
            if self.transient_failures.load(Ordering::SeqCst) > 0 {
                self.transient_failures.fetch_sub(1, Ordering::SeqCst);
                return Err(KmsError::Unavailable { backend: "flaky".into(), reason: "503".into() });
            }
            Ok(WrappedKey { backend: "flaky".into(), kek_id: "k".into(), ciphertext: dek.expose_secret().to_vec() })
        }
        async fn unwrap(&self, _: &WrappedKey, _: &WrapContext) -> Result<SecretKey, KmsError> {
            Err(KmsError::UnwrapFailed { backend: "flaky".into() })
        }
        fn kind(&self) -> &'static str {
            "flaky"
        }

        fn describe(&self) -> BackendDescription {
            BackendDescription { backend: "flaky".into(), kek_id: "k".into(), detail: String::new() }
        }
        async fn health(&self) -> Result<(), KmsError> {
            Ok(())
        }
    }

    fn policy() -> ResiliencePolicy {
        ResiliencePolicy {
            attempt_timeout: Duration::from_millis(100),
            max_attempts: 3,
            base_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
            failure_threshold: 4,
            open_for: Duration::from_millis(300),
        }
    }

    fn ctx() -> WrapContext {
        WrapContext { tenant_id: "t".into(), key_id: "k".into(), version: 1, algorithm: "AES-256-GCM".into() }
    }

    #[tokio::test]
    async fn retries_transient_failures_only() {
        let backend = Resilient::new(Flaky::default(), "remote", policy());
        let dek = SecretKey::generate(32).unwrap();
        backend.inner.transient_failures.store(2, Ordering::SeqCst);
        backend.wrap(&dek, &ctx()).await.unwrap();
        assert_eq!(backend.inner.calls.load(Ordering::SeqCst), 3, "two retries, then success");

        // A final answer is returned at once.
        backend.inner.refuse.store(true, Ordering::SeqCst);
        assert!(matches!(backend.wrap(&dek, &ctx()).await, Err(KmsError::UnwrapFailed { .. })));
        assert_eq!(backend.inner.calls.load(Ordering::SeqCst), 4);
        backend.inner.refuse.store(false, Ordering::SeqCst);

        // Retries are bounded: three attempts, then the last transient error, naming the backend.
        backend.inner.transient_failures.store(10, Ordering::SeqCst);
        let err = backend.wrap(&dek, &ctx()).await.unwrap_err();
        assert!(matches!(&err, KmsError::Unavailable { backend, .. } if backend == "remote"), "{err}");
        assert_eq!(backend.inner.calls.load(Ordering::SeqCst), 7);
    }

    #[tokio::test]
    async fn a_hanging_backend_fails_within_its_deadline_and_opens_the_circuit() {
        let backend = Resilient::new(Flaky::default(), "remote", policy());
        let dek = SecretKey::generate(32).unwrap();
        backend.inner.hang.store(true, Ordering::SeqCst);
        let started = Instant::now();
        let err = backend.wrap(&dek, &ctx()).await.unwrap_err();
        assert!(err.to_string().contains("longer than 100 ms"), "{err}");
        // Bounded by attempts × deadline (plus generous slack for a loaded machine); unbounded would hang.
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        // One more failure reaches the threshold of 4: the circuit opens and calls fail fast, untried.
        let _ = backend.wrap(&dek, &ctx()).await;
        let calls = backend.inner.calls.load(Ordering::SeqCst);
        let err = backend.wrap(&dek, &ctx()).await.unwrap_err();
        assert!(err.to_string().contains("circuit open"), "{err}");
        assert_eq!(backend.inner.calls.load(Ordering::SeqCst), calls);

        // After open_for, one probe goes through; it succeeds and the circuit closes.
        backend.inner.hang.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(350)).await;
        backend.wrap(&dek, &ctx()).await.unwrap();
        backend.wrap(&dek, &ctx()).await.unwrap();
        assert_eq!(backend.inner.calls.load(Ordering::SeqCst), calls + 2);
    }

    #[tokio::test]
    async fn an_abandoned_probe_does_not_keep_the_circuit_half_open() {
        let backend = Resilient::new(Flaky::default(), "remote", ResiliencePolicy { max_attempts: 1, ..policy() });
        let dek = SecretKey::generate(32).unwrap();
        backend.inner.hang.store(true, Ordering::SeqCst);
        for _ in 0..4 {
            let _ = backend.wrap(&dek, &ctx()).await;
        }
        assert_eq!(backend.reported.read(), 2, "the gauge reads open");
        tokio::time::sleep(Duration::from_millis(350)).await;
        assert_eq!(backend.reported.read(), 1, "its wait over, the open circuit reads half-open");
        // The probe's caller gives up before the attempt's deadline.
        let _ = tokio::time::timeout(Duration::from_millis(10), backend.wrap(&dek, &ctx())).await;
        assert!(backend.wrap(&dek, &ctx()).await.unwrap_err().to_string().contains("probe call is under way"));
        assert_eq!(backend.reported.read(), 1, "the gauge reads half-open");
        backend.inner.hang.store(false, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(120)).await;
        backend.wrap(&dek, &ctx()).await.unwrap();
        assert_eq!(backend.reported.read(), 0, "the gauge reads closed");
    }

    #[tokio::test]
    async fn a_failed_probe_opens_the_circuit_again() {
        let backend = Resilient::new(Flaky::default(), "remote", ResiliencePolicy { max_attempts: 1, ..policy() });
        let dek = SecretKey::generate(32).unwrap();
        backend.inner.transient_failures.store(100, Ordering::SeqCst);
        for _ in 0..4 {
            let _ = backend.wrap(&dek, &ctx()).await;
        }
        assert!(backend.wrap(&dek, &ctx()).await.unwrap_err().to_string().contains("circuit open"));
        tokio::time::sleep(Duration::from_millis(350)).await;
        let probe = backend.wrap(&dek, &ctx()).await.unwrap_err();
        assert!(probe.to_string().contains("503"), "the probe reached the backend: {probe}");
        assert!(backend.wrap(&dek, &ctx()).await.unwrap_err().to_string().contains("circuit open"));
    }
}

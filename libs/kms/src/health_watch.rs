//! Whether the keyring's primary can wrap and unwrap right now, known without asking the KMS on every readiness
//! probe. A remote KMS charges per request and may answer slowly; a kubelet asks every few seconds on every
//! pod. So one background task per process probes the primary on a fixed period (the backend's own deadlines,
//! retries and circuit breaker apply) and the readiness check reads its last outcome.
//!
//! Only the primary counts: it wraps every new DEK, so without it nothing can be created or rotated. A
//! secondary or retired member that is down only narrows the fallbacks, and a tenant's own keyring that its
//! owner disabled is that tenant's decision (crypto-shredding), not a reason to take the pod out of service.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::Keyring;

/// The last outcome of the primary's probe.
#[derive(Clone)]
pub struct HealthWatch {
    state: Arc<Mutex<State>>,
    period: Duration,
}

struct State {
    /// When the last probe finished and what it said; `None` before the first one.
    last: Option<(Instant, Result<(), String>)>,
    /// When the probe under way started.
    probing_since: Option<Instant>,
}

impl HealthWatch {
    /// Probes `keyring`'s primary now and then every `period`, until the returned task is aborted.
    pub fn spawn(keyring: Keyring, period: Duration) -> (Self, tokio::task::JoinHandle<()>) {
        let watch = Self { state: Arc::new(Mutex::new(State { last: None, probing_since: None })), period };
        let state = watch.state.clone();
        let task = tokio::spawn(async move {
            let primary = keyring.primary().clone();
            loop {
                state.lock().unwrap_or_else(|p| p.into_inner()).probing_since = Some(Instant::now());
                let outcome = primary
                    .backend
                    .health()
                    .await
                    .map_err(|e| format!("the primary backend {:?} cannot wrap and unwrap: {e}", primary.name));
                if let Err(reason) = &outcome {
                    tracing::warn!(%reason, "KMS health probe failed");
                }
                {
                    let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
                    state.last = Some((Instant::now(), outcome));
                    state.probing_since = None;
                }
                tokio::time::sleep(period).await;
            }
        });
        (watch, task)
    }

    /// `Ok` when the last probe passed; otherwise why not. A probe still waiting for its answer after a
    /// whole period counts as failed: a KMS that hangs is not usable either, whatever its deadlines say.
    pub fn current(&self) -> Result<(), String> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(since) = state.probing_since
            && since.elapsed() > self.period
        {
            return Err(format!(
                "the primary backend has not answered a probe for {:.1} s",
                since.elapsed().as_secs_f64()
            ));
        }
        match &state.last {
            None => Err("the first probe of the primary backend has not finished".into()),
            Some((_, outcome)) => outcome.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicBool, Ordering};

    use keymesh_crypto::SecretKey;

    use super::*;
    use crate::{BackendDescription, KeyEncryptionBackend, KmsError, WrapContext, WrappedKey};

    /// A backend whose health follows a switch.
    struct Switch(Arc<AtomicBool>);

    #[async_trait::async_trait]
    impl KeyEncryptionBackend for Switch {
        async fn wrap(&self, _: &SecretKey, _: &WrapContext) -> Result<WrappedKey, KmsError> {
            unreachable!()
        }
        async fn unwrap(&self, _: &WrappedKey, _: &WrapContext) -> Result<SecretKey, KmsError> {
            unreachable!()
        }
        fn kind(&self) -> &'static str {
            "switch"
        }
        fn describe(&self) -> BackendDescription {
            BackendDescription { backend: "switch".into(), kek_id: "k".into(), detail: String::new() }
        }
        async fn health(&self) -> Result<(), KmsError> {
            if self.0.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err(KmsError::Unavailable { backend: "switch".into(), reason: "switched off".into() })
            }
        }
    }

    #[tokio::test]
    async fn follows_the_primary() {
        let up = Arc::new(AtomicBool::new(true));
        let keyring = Keyring::single("main", Arc::new(Switch(up.clone())));
        let (watch, task) = HealthWatch::spawn(keyring, Duration::from_millis(20));
        let wait = |expect_ok: bool| {
            let watch = watch.clone();
            async move {
                for _ in 0..200 {
                    if watch.current().is_ok() == expect_ok {
                        return watch.current();
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                panic!("the watch never became {}", if expect_ok { "ok" } else { "failed" });
            }
        };
        wait(true).await.unwrap();
        up.store(false, Ordering::SeqCst);
        let reason = wait(false).await.unwrap_err();
        assert!(reason.contains("\"main\"") && reason.contains("switched off"), "{reason}");
        up.store(true, Ordering::SeqCst);
        wait(true).await.unwrap();
        task.abort();
    }
}

//! Whether the keyring can wrap and unwrap right now, known without asking the KMS on every readiness probe. A
//! remote KMS charges per request and may answer slowly; a kubelet asks every few seconds on every pod. So one
//! background task per process probes the keyring's members on a fixed period (the backends' own deadlines,
//! retries and circuit breakers apply) and the readiness check reads their last outcomes.
//!
//! The keyring is usable while any member that wraps every new DEK (the primary or a secondary) answers: each
//! of them can unwrap everything wrapped since it joined, and the keyring falls back to it by itself. Only when
//! none answers is the pod unready — every replica probes the same KMS, so a check that failed with the primary
//! alone would take every replica out of its Service and defeat the secondary. A retired member only unwraps
//! old material, and a tenant's own keyring that its owner disabled is that tenant's decision
//! (crypto-shredding): neither decides readiness.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use crate::{
    Keyring,
    keyring::{Member, Role},
};

/// The last outcome of each member's probe.
#[derive(Clone)]
pub struct HealthWatch {
    members: Arc<Vec<(Member, Mutex<Probe>)>>,
    period: Duration,
}

#[derive(Default)]
struct Probe {
    /// What the last probe that finished said; `None` before the first one.
    last: Option<Result<(), String>>,
    /// When the probe under way started.
    since: Option<Instant>,
}

impl Probe {
    /// `Ok` when the last probe passed and the one under way has not hung for a whole period.
    fn usable(&self, period: Duration) -> Result<(), String> {
        if let Some(since) = self.since
            && since.elapsed() > period
        {
            return Err(format!("no answer to a probe for {:.1} s", since.elapsed().as_secs_f64()));
        }
        self.last.clone().unwrap_or_else(|| Err("the first probe has not finished".into()))
    }
}

impl HealthWatch {
    /// Probes the primary and secondary members of `keyring` now and then every `period`, all at once, until
    /// the returned task is aborted.
    pub fn spawn(keyring: Keyring, period: Duration) -> (Self, tokio::task::JoinHandle<()>) {
        let members = keyring
            .members()
            .iter()
            .filter(|m| m.role != Role::Retired)
            .map(|m| (m.clone(), Mutex::new(Probe::default())))
            .collect();
        let watch = Self { members: Arc::new(members), period };
        let probes = watch.members.clone();
        let task = tokio::spawn(async move {
            loop {
                let rounds = probes.iter().map(|(member, probe)| async move {
                    probe.lock().unwrap_or_else(|p| p.into_inner()).since = Some(Instant::now());
                    let outcome = member.backend.health().await.map_err(|e| e.to_string());
                    let mut probe = probe.lock().unwrap_or_else(|p| p.into_inner());
                    // A line when a member's state changes, not one every period of an outage.
                    match (&probe.last, &outcome) {
                        (Some(Ok(())) | None, Err(reason)) => {
                            tracing::warn!(member = %member.name, %reason, "KMS keyring member fails its health probe");
                        }
                        (Some(Err(_)), Ok(())) => {
                            tracing::info!(member = %member.name, "KMS keyring member answers again");
                        }
                        _ => {}
                    }
                    probe.last = Some(outcome);
                    probe.since = None;
                });
                futures_util::future::join_all(rounds).await;
                tokio::time::sleep(period).await;
            }
        });
        (watch, task)
    }

    /// `Ok` while a member that wraps every new DEK answers its probes; otherwise each one's reason. A probe
    /// still waiting for its answer after a whole period counts as failed: a KMS that hangs is not usable
    /// either, whatever its deadlines say.
    pub fn current(&self) -> Result<(), String> {
        let mut reasons = Vec::new();
        for (member, probe) in self.members.iter() {
            match probe.lock().unwrap_or_else(|p| p.into_inner()).usable(self.period) {
                Ok(()) => return Ok(()),
                Err(reason) => reasons.push(format!("{:?}: {reason}", member.name)),
            }
        }
        Err(format!("no member of the keyring can wrap and unwrap ({})", reasons.join("; ")))
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

    #[tokio::test]
    async fn a_secondary_that_answers_keeps_the_keyring_usable_and_a_retired_one_does_not() {
        use crate::keyring::Member;
        let member = |name: &str, role: Role, up: &Arc<AtomicBool>| Member {
            name: name.into(),
            role,
            backend: Arc::new(Switch(up.clone())) as Arc<dyn KeyEncryptionBackend>,
        };
        let (primary, secondary, retired) =
            (Arc::new(AtomicBool::new(false)), Arc::new(AtomicBool::new(true)), Arc::new(AtomicBool::new(true)));
        let keyring = Keyring::new(vec![
            member("main", Role::Primary, &primary),
            member("dr", Role::Secondary, &secondary),
            member("old", Role::Retired, &retired),
        ])
        .unwrap();
        let (watch, task) = HealthWatch::spawn(keyring, Duration::from_millis(20));
        let settle = || tokio::time::sleep(Duration::from_millis(200));
        settle().await;
        watch.current().unwrap();
        secondary.store(false, Ordering::SeqCst);
        settle().await;
        let reason = watch.current().unwrap_err();
        assert!(reason.contains("\"main\"") && reason.contains("\"dr\"") && !reason.contains("old"), "{reason}");
        task.abort();
    }
}

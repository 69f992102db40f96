//! What the admin port's `/readyz` answers: whether this process can do its work now — its database answers,
//! its KMS keyring can wrap (key-service registers the check), its token verifier is fresh, its audit spool
//! takes events — each check named with its reason, so a probe's failure
//! says what is wrong. `/livez` only says the process runs: restarting a process whose database is down fixes
//! nothing, so liveness never depends on a dependency.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

/// How long one check may take before it counts as failed (a dependency that hangs is not ready either).
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;
type Check = Arc<dyn Fn() -> CheckFuture + Send + Sync>;

/// The checks of one process. Not ready until the service says it serves.
#[derive(Clone, Default)]
pub struct Readiness {
    checks: Arc<Mutex<Vec<(&'static str, Check)>>>,
    serving: Arc<AtomicBool>,
}

impl Readiness {
    /// Adds a check named `name`: `Err` carries the reason.
    pub fn add<F, Fut>(&self, name: &'static str, check: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), String>> + Send + 'static,
    {
        let check: Check = Arc::new(move || Box::pin(check()));
        self.checks.lock().unwrap_or_else(|p| p.into_inner()).push((name, check));
    }

    /// Checks that the token verifier can accept tokens (its revocations are within their bound).
    pub fn watch_token_verifier(&self, verifier: &Arc<crate::auth::TokenVerifier>) {
        let verifier = Arc::downgrade(verifier);
        self.add("token verifier", move || {
            let fresh = verifier.upgrade().map_or(Ok(()), |verifier| verifier.revocations_fresh());
            async move { fresh }
        });
    }

    /// The service is set up and about to serve.
    pub fn serving(&self) {
        self.serving.store(true, Ordering::Relaxed);
    }

    /// Whether the service said it serves (`/startupz`).
    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    /// Runs every check at once: whether all pass, and one line per check (`ok database`, `failed database: …`).
    pub async fn report(&self) -> (bool, String) {
        if !self.serving.load(Ordering::Relaxed) {
            return (false, "failed serving: still starting\n".to_owned());
        }
        let checks: Vec<(&'static str, Check)> = self.checks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let outcomes = futures_util::future::join_all(checks.into_iter().map(|(name, check)| async move {
            let outcome = match tokio::time::timeout(CHECK_TIMEOUT, check()).await {
                Ok(outcome) => outcome,
                Err(_) => Err(format!("no answer within {} s", CHECK_TIMEOUT.as_secs())),
            };
            (name, outcome)
        }))
        .await;
        let mut ready = true;
        let mut body = String::from("ok serving\n");
        for (name, outcome) in outcomes {
            match outcome {
                Ok(()) => body.push_str(&format!("ok {name}\n")),
                Err(reason) => {
                    ready = false;
                    body.push_str(&format!("failed {name}: {reason}\n"));
                }
            }
        }
        (ready, body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ready_only_when_serving_and_every_check_passes() {
        let readiness = Readiness::default();
        let up = Arc::new(AtomicBool::new(true));
        let flag = up.clone();
        readiness.add("database", move || {
            let up = flag.load(Ordering::Relaxed);
            async move { if up { Ok(()) } else { Err("connection refused".to_owned()) } }
        });
        readiness.add("spool", || async { Ok(()) });
        assert_eq!(readiness.report().await, (false, "failed serving: still starting\n".to_owned()));
        readiness.serving();
        assert_eq!(readiness.report().await, (true, "ok serving\nok database\nok spool\n".to_owned()));
        up.store(false, Ordering::Relaxed);
        let (ready, body) = readiness.report().await;
        assert!(!ready && body.contains("failed database: connection refused"), "{body}");
        readiness.add("slow", || async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok(())
        });
        up.store(true, Ordering::Relaxed);
        let (ready, body) = readiness.report().await;
        assert!(!ready && body.contains("failed slow: no answer within 2 s"), "{body}");
    }
}

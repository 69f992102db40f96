//! A Redis connection every keymesh use of Redis goes through (key-service's record cache, the limits shared
//! by replicas). Redis is an optimisation there, never a dependency: every exchange runs under a short
//! deadline; when Redis is down or slow the caller gets `None` and does without (reads the database, limits
//! per process), the outage is logged once with what the service does meanwhile, and Redis is tried again a
//! second later rather than on every call, so an outage costs one deadline per second, not one per call.

use std::{
    future::Future,
    sync::{
        LazyLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use opentelemetry::{KeyValue, metrics::Counter};
use redis::aio::ConnectionManager;

/// How long Redis is left alone after a failure before it is tried again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// `keymesh.redis.errors` by `reason` (timeout, error) and `purpose` (what the service did without Redis).
static REDIS_ERRORS: LazyLock<Counter<u64>> = LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .u64_counter("keymesh.redis.errors")
        .with_description("Redis exchanges that failed or timed out, by reason and by what Redis was used for")
        .build()
});

/// Checks that `url` names Redis (`redis://` or `rediss://`), for a configuration error naming the field.
pub fn check_url(url: &str) -> Result<(), &'static str> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(())
    } else {
        Err("must start with redis:// or rediss://")
    }
}

/// One Redis server as a service uses it for one purpose.
pub struct GuardedRedis {
    connection: ConnectionManager,
    timeout: Duration,
    /// What Redis is used for, the `purpose` label of the error counter: `record_cache`, `limits`.
    purpose: &'static str,
    /// What the service does while Redis is down, for the log line: "serving key records from the database".
    meanwhile: &'static str,
    /// Set while Redis is considered down (logged once per outage).
    down: AtomicBool,
    /// Milliseconds since `epoch` when Redis may next be tried.
    retry_at_ms: AtomicU64,
    epoch: Instant,
}

impl GuardedRedis {
    /// Connects lazily to `url` (a Redis that is down at start is an outage like any other). `purpose` names
    /// the use in metrics; `meanwhile` says in the outage's log line what the service does without Redis.
    pub fn open(
        url: &str,
        timeout: Duration,
        purpose: &'static str,
        meanwhile: &'static str,
    ) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(200))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = client.get_connection_manager_lazy(config)?;
        // Both reasons start at zero on the endpoint, so a rate and an alert work before the first failure.
        for reason in ["timeout", "error"] {
            REDIS_ERRORS.add(0, &[KeyValue::new("reason", reason), KeyValue::new("purpose", purpose)]);
        }
        Ok(Self {
            connection,
            timeout,
            purpose,
            meanwhile,
            down: AtomicBool::new(false),
            retry_at_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        })
    }

    /// False while Redis is considered down and not yet due for another try.
    pub fn available(&self) -> bool {
        !self.down.load(Ordering::Relaxed)
            || self.epoch.elapsed().as_millis() as u64 >= self.retry_at_ms.load(Ordering::Relaxed)
    }

    /// Runs one Redis exchange under the deadline, tracking outages. `None` when Redis did not answer.
    pub async fn guarded<T>(&self, exchange: impl Future<Output = redis::RedisResult<T>>) -> Option<T> {
        if !self.available() {
            return None;
        }
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(value)) => {
                if self.down.swap(false, Ordering::Relaxed) {
                    tracing::warn!(purpose = self.purpose, "Redis answers again");
                }
                Some(value)
            }
            Ok(Err(error)) => {
                self.failed("error", &format!("{:?}", error.kind()));
                None
            }
            Err(_) => {
                self.failed("timeout", &format!("no answer within {} ms", self.timeout.as_millis()));
                None
            }
        }
    }

    /// One command.
    pub async fn run<T: redis::FromRedisValue>(&self, cmd: redis::Cmd) -> Option<T> {
        let mut connection = self.connection.clone();
        self.guarded(cmd.query_async::<T>(&mut connection)).await
    }

    /// One pipeline.
    pub async fn run_pipe<T: redis::FromRedisValue>(&self, pipe: redis::Pipeline) -> Option<T> {
        let mut connection = self.connection.clone();
        self.guarded(pipe.query_async::<T>(&mut connection)).await
    }

    /// One script (EVALSHA, loading it first when the server does not know it).
    pub async fn run_script<T: redis::FromRedisValue>(&self, invocation: redis::ScriptInvocation<'_>) -> Option<T> {
        let mut connection = self.connection.clone();
        self.guarded(invocation.invoke_async::<T>(&mut connection)).await
    }

    fn failed(&self, reason: &'static str, detail: &str) {
        REDIS_ERRORS.add(1, &[KeyValue::new("reason", reason), KeyValue::new("purpose", self.purpose)]);
        let retry_at = self.epoch.elapsed() + RETRY_AFTER;
        self.retry_at_ms.store(retry_at.as_millis() as u64, Ordering::Relaxed);
        if !self.down.swap(true, Ordering::Relaxed) {
            tracing::error!(purpose = self.purpose, reason = %detail, "Redis is unavailable; {} until it returns", self.meanwhile);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unreachable_redis_answers_none_quickly_and_is_left_alone_for_a_second() {
        // Nothing listens on port 1.
        let redis = GuardedRedis::open("redis://127.0.0.1:1", Duration::from_millis(50), "test", "doing without")
            .expect("a well-formed URL");
        let started = Instant::now();
        assert!(redis.run::<Option<String>>(redis::cmd("GET").arg("k").clone()).await.is_none());
        assert!(!redis.available(), "a failure holds further tries back");
        assert!(redis.run::<Option<String>>(redis::cmd("GET").arg("k").clone()).await.is_none());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}

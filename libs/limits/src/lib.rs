//! Rate limits and quotas, so that one application cannot starve the others and a stolen credential
//! cannot drain a key.
//!
//! Two controls, both answered with RESOURCE_EXHAUSTED and a `google.rpc.RetryInfo` saying when to retry:
//! - **rate limits** on every authenticated call, per application and per tenant, with per-application and
//!   per-tenant overrides;
//! - **quotas** on the calls that hand out plaintext (Decrypt, DecryptStream, data keys, KEM shared secrets), per
//!   application and per key, in two windows at once: per second (a burst cap) and per day (a volume cap).
//!   A client that may legitimately decrypt a few thousand records a day then cannot decrypt the whole table
//!   in an afternoon, whatever its permissions say. A day's figure N is a rate of N per day with a burst of
//!   N: a full allowance is spent at once, then it refills evenly, so any 24 hours admit at most 2N.
//!
//! Limits are GCRA cells. Per process (the `governor` crate) a check costs a map lookup and a compare-and-swap.
//! With `[limits.shared] redis_url`, every limit except those listed in `per_process` is shared by all
//! replicas of every service: the cells live in Redis (see [`shared`]), so N replicas admit the figure once,
//! not N times, and a restart refills nothing. When Redis does not answer, each replica falls back to its
//! own per-process cells (the outage is logged once and counted in `keymesh.redis.errors{purpose="limits"}`),
//! admitting up to the figure each until Redis returns: a limit degrades to per-replica, calls are never
//! refused because Redis is down.
//!
//! Windows are checked in turn, and a call a per-process window refuses has already used a unit of the
//! per-process windows before it; so the caller's own windows come first and the shared ones (its tenant's,
//! the key's) last: a refused call costs only the caller's own allowance, never another application's.
//! Windows in Redis are checked together, atomically: a refused call costs none of them. Idle keys are
//! forgotten by [`Limiter::forget_idle`], which a service calls periodically.

mod shared;

use std::{collections::BTreeMap, num::NonZeroU32, time::Duration};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock};
use serde::Deserialize;

pub use shared::SharedLimitsConfig;

/// `[limits]`.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Calls per second one application may make (default 20000; 0 turns the limit off).
    pub application_per_second: Option<u32>,
    /// Calls per second all of a tenant's applications together may make (default 100000; 0: off).
    pub tenant_per_second: Option<u32>,
    /// Overrides by client id.
    #[serde(default)]
    pub applications: BTreeMap<String, RateOverride>,
    /// Overrides by tenant id.
    #[serde(default)]
    pub tenants: BTreeMap<String, RateOverride>,
    /// Calls per second to token-service's unauthenticated methods (IssueToken, RevokeToken) from one client
    /// certificate identity (default 100; 0: off): they hash secrets and add revocations every verifier
    /// downloads, so they are the cheapest way to load the mesh.
    pub token_requests_per_second: Option<u32>,
    /// RegisterApplication calls per minute from one registering identity (default 10; 0: off): each creates an
    /// application or a secret, so a leaked developer session cannot mint them in bulk.
    pub registrations_per_minute: Option<u32>,
    /// Quotas on Decrypt and data keys.
    #[serde(default)]
    pub quotas: QuotaConfig,
    /// Limits shared by every replica through Redis.
    #[serde(default)]
    pub shared: SharedLimitsConfig,
}

/// A kind of limit: the `limit` label of `keymesh.limits.refusals`, and what `[limits.shared] per_process`
/// names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitKind {
    /// `application_per_second` and `applications`.
    ApplicationRate,
    /// `tenant_per_second` and `tenants`.
    TenantRate,
    /// `token_requests_per_second`.
    TokenRequests,
    /// `quotas.application_per_*` and `quotas.applications`.
    ApplicationQuota,
    /// `quotas.key_per_*`.
    KeyQuota,
    /// `registrations_per_minute`.
    Registrations,
}

impl LimitKind {
    const ALL: [LimitKind; 6] = [
        Self::ApplicationRate,
        Self::TenantRate,
        Self::TokenRequests,
        Self::ApplicationQuota,
        Self::KeyQuota,
        Self::Registrations,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::ApplicationRate => "application_rate",
            Self::TenantRate => "tenant_rate",
            Self::TokenRequests => "token_requests",
            Self::ApplicationQuota => "application_quota",
            Self::KeyQuota => "key_quota",
            Self::Registrations => "registrations",
        }
    }

    /// What a refusal names, e.g. `application app_1`.
    fn scope(self, id: &str) -> String {
        match self {
            Self::ApplicationRate | Self::ApplicationQuota => format!("application {id}"),
            Self::TenantRate => format!("tenant {id}"),
            Self::TokenRequests => format!("client certificate {id}"),
            Self::KeyQuota => format!("key {id}"),
            Self::Registrations => format!("registering identity {id}"),
        }
    }
}

/// A rate for one application or tenant.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverride {
    /// Calls per second (0: unlimited).
    pub per_second: u32,
    /// Calls admitted at once after a quiet spell (default: one second's worth).
    pub burst: Option<u32>,
}

/// `[limits.quotas]`: each figure absent or 0 means no quota in that window.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Decrypts and data keys per second per application.
    pub application_per_second: Option<u32>,
    /// … per day per application.
    pub application_per_day: Option<u32>,
    /// Decrypts and data keys per second per key (all applications together).
    pub key_per_second: Option<u32>,
    /// … per day per key.
    pub key_per_day: Option<u32>,
    /// Per-application overrides of the two application figures.
    #[serde(default)]
    pub applications: BTreeMap<String, QuotaOverride>,
}

/// Quotas for one application.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverride {
    /// Per second (absent or 0: none).
    pub per_second: Option<u32>,
    /// Per day (absent or 0: none).
    pub per_day: Option<u32>,
}

/// A call refused by a limit: which one, and when to retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{scope} is over its limit of {limit}; retry in {:.3} s", retry_after.as_secs_f64())]
pub struct Exceeded {
    /// What is limited, e.g. `application app_1`.
    pub scope: String,
    /// The limit, e.g. `50 calls per second`.
    pub limit: String,
    /// When the next call can be admitted.
    pub retry_after: Duration,
}

impl From<Exceeded> for tonic::Status {
    fn from(e: Exceeded) -> Self {
        keymesh_mesh::retry_status(tonic::Code::ResourceExhausted, e.to_string(), e.retry_after)
    }
}

/// A bad figure in `[limits]`.
#[derive(Debug, thiserror::Error)]
#[error("config field `limits.{field}`: {reason}")]
pub struct LimitsError {
    field: String,
    reason: String,
}

const DAY: Duration = Duration::from_secs(86_400);

/// One keyed GCRA cell set with a description for refusals.
struct Window {
    limiter: DefaultKeyedRateLimiter<String>,
    what: String,
    kind: LimitKind,
    /// The window's name among the shared cells in Redis, e.g. `application_quota_day`.
    name: &'static str,
    /// The time one call uses of the allowance (period / count).
    interval: Duration,
    /// Calls admitted at once after a quiet spell.
    burst: u32,
}

impl Window {
    /// `count` per `period` with `burst` at once; none for a count of 0.
    fn new(
        kind: LimitKind,
        name: &'static str,
        count: u32,
        period: Duration,
        burst: Option<u32>,
        what: String,
    ) -> Option<Self> {
        let count = NonZeroU32::new(count)?;
        let burst = burst.and_then(NonZeroU32::new).unwrap_or(count);
        let interval = period / count.get();
        let quota = Quota::with_period(interval)?.allow_burst(burst);
        Some(Self { limiter: RateLimiter::keyed(quota), what, kind, name, interval, burst: burst.get() })
    }

    fn check(&self, key: &str) -> Result<(), Exceeded> {
        // The map is keyed by String: the lookup needs one, and a short allocation is far below a call's cost.
        match self.limiter.check_key(&key.to_owned()) {
            Ok(()) => Ok(()),
            // The limiter's own clock: instants of another clock instance do not compare.
            Err(not_until) => Err(self.exceeded(key, not_until.wait_time_from(self.limiter.clock().now()))),
        }
    }

    /// The refusal of a call of `key`, admitted again after `wait` (at least a millisecond, so a refusal never
    /// says "retry in 0 s").
    fn exceeded(&self, key: &str, wait: Duration) -> Exceeded {
        Exceeded {
            scope: self.kind.scope(key),
            limit: self.what.clone(),
            retry_after: wait.max(Duration::from_millis(1)),
        }
    }
}

/// A default window for every key, with overrides for some.
struct Scoped {
    default: Option<Window>,
    overrides: BTreeMap<String, Option<Window>>,
}

impl Scoped {
    /// The same window for every key.
    fn uniform(default: Option<Window>) -> Self {
        Self { default, overrides: BTreeMap::new() }
    }

    /// The window `key` is counted in; none when it is unlimited.
    fn window(&self, key: &str) -> Option<&Window> {
        match self.overrides.get(key) {
            Some(window) => window.as_ref(),
            None => self.default.as_ref(),
        }
    }

    fn forget_idle(&self) {
        for window in self.default.iter().chain(self.overrides.values().flatten()) {
            window.limiter.retain_recent();
            window.limiter.shrink_to_fit();
        }
    }
}

fn per_second(count: u32) -> String {
    format!("{count} calls per second")
}

fn rate(kind: LimitKind, default: Option<u32>, fallback: u32, overrides: &BTreeMap<String, RateOverride>) -> Scoped {
    let window =
        |count: u32, burst| Window::new(kind, kind.label(), count, Duration::from_secs(1), burst, per_second(count));
    Scoped {
        default: window(default.unwrap_or(fallback), None),
        overrides: overrides.iter().map(|(k, o)| (k.clone(), window(o.per_second, o.burst))).collect(),
    }
}

fn quota_window(kind: LimitKind, name: &'static str, count: Option<u32>, period: Duration) -> Option<Window> {
    let count = count.unwrap_or(0);
    let unit = if period == DAY { "day" } else { "second" };
    Window::new(kind, name, count, period, None, format!("{count} decrypts, data keys and KEM secrets per {unit}"))
}

/// The limits of one service process.
pub struct Limiter {
    applications: Scoped,
    tenants: Scoped,
    app_quota_second: Scoped,
    app_quota_day: Scoped,
    key_quota_second: Scoped,
    key_quota_day: Scoped,
    token_requests: Scoped,
    registrations: Scoped,
    /// The cells in Redis, when configured.
    shared: Option<shared::SharedCells>,
    /// `keymesh.limits.refusals` by `limit`: which kind of limit refused, never who was refused (an
    /// application or key id would make the label unbounded).
    refusals: opentelemetry::metrics::Counter<u64>,
}

impl Limiter {
    /// Builds the limits `[limits]` describes for the calls of `service` ("crypto-service").
    pub fn from_config(config: &LimitsConfig, service: &str) -> Result<Self, LimitsError> {
        for (kind, overrides) in [("applications", &config.applications), ("tenants", &config.tenants)] {
            for (id, o) in overrides {
                if o.burst == Some(0) {
                    return Err(LimitsError {
                        field: format!("{kind}.{id}.burst"),
                        reason: "0 would refuse every call; leave it out for one second's worth".into(),
                    });
                }
            }
        }
        let q = &config.quotas;
        let app_quota = |name, period: Duration, pick: fn(&QuotaOverride) -> Option<u32>, default| Scoped {
            default: quota_window(LimitKind::ApplicationQuota, name, default, period),
            overrides: q
                .applications
                .iter()
                .map(|(k, o)| (k.clone(), quota_window(LimitKind::ApplicationQuota, name, pick(o), period)))
                .collect(),
        };
        let key_quota = |name, count, period| Scoped::uniform(quota_window(LimitKind::KeyQuota, name, count, period));
        let refusals = opentelemetry::global::meter("keymesh")
            .u64_counter("keymesh.limits.refusals")
            .with_description("Calls refused by a rate limit or quota, by kind of limit")
            .build();
        // Every kind starts at zero on the endpoint, so a rate or an alert over it works before the first refusal.
        for kind in LimitKind::ALL {
            refusals.add(0, &[opentelemetry::KeyValue::new("limit", kind.label())]);
        }
        let second = Duration::from_secs(1);
        Ok(Self {
            applications: rate(LimitKind::ApplicationRate, config.application_per_second, 20_000, &config.applications),
            tenants: rate(LimitKind::TenantRate, config.tenant_per_second, 100_000, &config.tenants),
            app_quota_second: app_quota("application_quota_second", second, |o| o.per_second, q.application_per_second),
            app_quota_day: app_quota("application_quota_day", DAY, |o| o.per_day, q.application_per_day),
            key_quota_second: key_quota("key_quota_second", q.key_per_second, second),
            key_quota_day: key_quota("key_quota_day", q.key_per_day, DAY),
            token_requests: rate(LimitKind::TokenRequests, config.token_requests_per_second, 100, &BTreeMap::new()),
            registrations: {
                let per_minute = config.registrations_per_minute.unwrap_or(10);
                Scoped::uniform(Window::new(
                    LimitKind::Registrations,
                    LimitKind::Registrations.label(),
                    per_minute,
                    Duration::from_secs(60),
                    None,
                    format!("{per_minute} registrations per minute"),
                ))
            },
            shared: shared::SharedCells::from_config(&config.shared, service)?,
            refusals,
        })
    }

    /// True when the limits are held in Redis (whether or not Redis answers right now).
    pub fn is_shared(&self) -> bool {
        self.shared.is_some()
    }

    /// Admits one call of `application` in `tenant`, or says which limit refuses it.
    pub async fn admit_call(&self, tenant: &str, application: &str) -> Result<(), Exceeded> {
        self.admit(&[(&self.applications, application), (&self.tenants, tenant)]).await
    }

    /// Admits one IssueToken or RevokeToken from the client certificate identity `peer`.
    pub async fn admit_token_request(&self, peer: &str) -> Result<(), Exceeded> {
        self.admit(&[(&self.token_requests, peer)]).await
    }

    /// Admits one RegisterApplication of the registering identity `registrant`.
    pub async fn admit_registration(&self, registrant: &str) -> Result<(), Exceeded> {
        self.admit(&[(&self.registrations, registrant)]).await
    }

    /// Admits one decrypt or data key of `application` with the key `key_id`, in both windows of both
    /// scopes.
    pub async fn admit_plaintext(&self, application: &str, key_id: &str) -> Result<(), Exceeded> {
        self.admit(&[
            (&self.app_quota_second, application),
            (&self.app_quota_day, application),
            (&self.key_quota_second, key_id),
            (&self.key_quota_day, key_id),
        ])
        .await
    }

    /// Checks one call against `checks` (a window set and the id it is counted under), in order: the
    /// per-process windows one by one, then the shared ones together in Redis, or one by one in this process
    /// when Redis does not answer.
    async fn admit(&self, checks: &[(&Scoped, &str)]) -> Result<(), Exceeded> {
        let mut in_redis = Vec::new();
        for &(scoped, id) in checks {
            let Some(window) = scoped.window(id) else { continue };
            match &self.shared {
                Some(shared) if shared.holds(window.kind) => in_redis.push((window, id)),
                _ => self.counted(window, window.check(id))?,
            }
        }
        let Some(shared) = self.shared.as_ref().filter(|_| !in_redis.is_empty()) else { return Ok(()) };
        match shared.admit(&in_redis).await {
            Some(Ok(())) => Ok(()),
            Some(Err(refused)) => {
                let (window, id) = in_redis[refused.window];
                self.counted(window, Err(window.exceeded(id, refused.wait)))
            }
            None => {
                for (window, id) in in_redis {
                    self.counted(window, window.check(id))?;
                }
                Ok(())
            }
        }
    }

    /// Counts a refusal under its kind of limit, and hands the outcome back.
    fn counted(&self, window: &Window, outcome: Result<(), Exceeded>) -> Result<(), Exceeded> {
        if outcome.is_err() {
            self.refusals.add(1, &[opentelemetry::KeyValue::new("limit", window.kind.label())]);
        }
        outcome
    }

    /// Drops the state of keys that are back to full allowance (nothing lost: they would start full anyway),
    /// and leases of shared allowance that are too old to use.
    pub fn forget_idle(&self) {
        for scoped in [
            &self.applications,
            &self.tenants,
            &self.app_quota_second,
            &self.app_quota_day,
            &self.key_quota_second,
            &self.key_quota_day,
            &self.token_requests,
            &self.registrations,
        ] {
            scoped.forget_idle();
        }
        if let Some(shared) = &self.shared {
            shared.forget_stale_leases();
        }
    }

    /// Calls [`Limiter::forget_idle`] every minute for as long as the limiter lives.
    pub fn spawn_forgetter(limiter: &std::sync::Arc<Self>) -> tokio::task::JoinHandle<()> {
        let limiter = std::sync::Arc::downgrade(limiter);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(Duration::from_secs(60));
            loop {
                ticker.tick().await;
                match limiter.upgrade() {
                    Some(limiter) => limiter.forget_idle(),
                    None => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_like: impl FnOnce(&mut LimitsConfig)) -> Limiter {
        let mut config = LimitsConfig::default();
        toml_like(&mut config);
        Limiter::from_config(&config, "test").unwrap()
    }

    #[tokio::test]
    async fn an_application_over_its_rate_is_refused_alone() {
        let limiter = config(|c| {
            c.applications.insert("app_slow".into(), RateOverride { per_second: 5, burst: None });
        });
        for _ in 0..5 {
            limiter.admit_call("t", "app_slow").await.unwrap();
        }
        let refused = limiter.admit_call("t", "app_slow").await.unwrap_err();
        assert_eq!(refused.scope, "application app_slow");
        assert_eq!(refused.limit, "5 calls per second");
        assert!(refused.retry_after > Duration::ZERO && refused.retry_after <= Duration::from_millis(200));
        for _ in 0..1000 {
            limiter.admit_call("t", "app_other").await.unwrap();
        }
        let status = tonic::Status::from(refused);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        use tonic_types::StatusExt;
        assert!(status.get_details_retry_info().and_then(|r| r.retry_delay).is_some(), "RetryInfo attached");
        assert_eq!(status.metadata().get("retry-after").unwrap(), "1");
    }

    #[tokio::test]
    async fn a_tenant_limit_covers_all_its_applications_and_zero_means_unlimited() {
        let limiter = config(|c| {
            c.tenants.insert("t_small".into(), RateOverride { per_second: 10, burst: None });
            c.applications.insert("app_free".into(), RateOverride { per_second: 0, burst: None });
        });
        for i in 0..10 {
            limiter.admit_call("t_small", &format!("app_{i}")).await.unwrap();
        }
        assert_eq!(limiter.admit_call("t_small", "app_new").await.unwrap_err().scope, "tenant t_small");
        for _ in 0..50_000 {
            limiter.admit_call("t_big", "app_free").await.unwrap();
        }
    }

    #[tokio::test]
    async fn quotas_hold_in_both_windows_per_application_and_per_key() {
        let limiter = config(|c| {
            c.quotas.application_per_day = Some(100);
            c.quotas.application_per_second = Some(1000);
            c.quotas.key_per_day = Some(150);
            c.quotas.applications.insert("app_batch".into(), QuotaOverride { per_second: None, per_day: Some(1000) });
        });
        for _ in 0..100 {
            limiter.admit_plaintext("app_a", "k_1").await.unwrap();
        }
        let refused = limiter.admit_plaintext("app_a", "k_1").await.unwrap_err();
        assert_eq!(
            (refused.scope.as_str(), refused.limit.as_str()),
            ("application app_a", "100 decrypts, data keys and KEM secrets per day")
        );
        assert!(refused.retry_after > Duration::from_secs(800), "one day's quota refills one call per 864 s");
        // The key's own daily quota is shared by every application.
        for _ in 0..50 {
            limiter.admit_plaintext("app_batch", "k_1").await.unwrap();
        }
        // app_a's refused call above did not touch the key's allowance: 100 + 50 fill it exactly.
        assert_eq!(limiter.admit_plaintext("app_batch", "k_1").await.unwrap_err().scope, "key k_1");
        assert!(limiter.admit_plaintext("app_batch", "k_2").await.is_ok());
        limiter.forget_idle();
    }

    #[test]
    fn a_zero_burst_is_refused_at_start() {
        let mut config = LimitsConfig::default();
        config.tenants.insert("t".into(), RateOverride { per_second: 5, burst: Some(0) });
        let err = Limiter::from_config(&config, "test").err().unwrap();
        assert!(err.to_string().contains("limits.tenants.t.burst"), "{err}");
    }
}

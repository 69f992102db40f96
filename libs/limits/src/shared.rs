//! Limits shared by every replica: GCRA cells in Redis, one key per service, window and id holding the window's
//! theoretical arrival time (TAT) in microseconds of Redis's own clock, so replicas' clocks never disagree. Each
//! service counts its own calls, as without Redis: an application's key-management calls do not use up its
//! Encrypt allowance.
//! One Lua script checks all of a call's shared windows at once and advances them only when all admit, so a
//! refused call costs nothing anywhere.
//!
//! A Redis round trip per call would put Redis on the hot path of every Encrypt at a high figure; so a
//! replica takes a *lease* of several calls at once when a window is fast (a hundredth of a second's worth,
//! from 200 calls a second up), spends it locally, and drops what it has not spent after a second. One call
//! at a time asks for a lease; calls that find it empty meanwhile ask Redis for themselves alone. With N
//! replicas the mesh then admits at most N leases above the figure at any moment and wastes at most N leases
//! a second below it — 1 % of a fast window each — while a slow window (under 200/s, any daily quota) is
//! checked call by call and exact.
//!
//! Redis 5 or later (the script reads `TIME` before it writes, which needs effects replication). Redis Cluster
//! is not supported (a call's windows are keys of different slots); a standalone Redis or a Sentinel-managed
//! primary is.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::{Duration, Instant},
};

use keymesh_redis::GuardedRedis;
use serde::Deserialize;

use crate::{LimitKind, LimitsError, Window};

/// `[limits.shared]`.
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedLimitsConfig {
    /// `redis://…` or `rediss://…`; unset keeps every limit per process.
    pub redis_url: Option<String>,
    /// Deadline of one exchange with Redis, in milliseconds (default 50, 1..=5000); past it the call is
    /// checked against the per-process limits instead.
    pub timeout_ms: Option<u64>,
    /// Kinds of limit kept per process even with Redis (e.g. `["application_rate"]` to keep a very high
    /// rate off Redis): `application_rate`, `tenant_rate`, `token_requests`, `application_quota`, `key_quota`,
    /// `registrations`.
    #[serde(default)]
    pub per_process: Vec<LimitKind>,
}

impl std::fmt::Debug for SharedLimitsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry Redis's password.
        f.debug_struct("SharedLimitsConfig")
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<redacted>"))
            .field("timeout_ms", &self.timeout_ms)
            .field("per_process", &self.per_process)
            .finish()
    }
}

/// Prefix of the cells' keys; the format version lets a new layout coexist with the old.
const KEY_PREFIX: &str = "keymesh:v1:limit";
/// How long a leased allowance may be spent: past it, what is left is dropped.
const LEASE_LIFETIME: Duration = Duration::from_secs(1);
/// A lease is this fraction of a window's second (1/100: 10 ms of calls).
const LEASES_PER_SECOND: f64 = 100.0;

/// KEYS: one cell per window. ARGV[1]: calls wanted; then per window its interval and its capacity (interval ×
/// burst), in microseconds with a fraction (a rate of 30,000/s has an interval of 33.33 µs). Grants the most calls up to the number wanted that every window admits and
/// advances every window by them; or grants none and names the window (0-based) that refuses longest, with
/// its wait in microseconds.
const GCRA_SCRIPT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local grant = tonumber(ARGV[1])
local tats = {}
local refusing, wait = -1, 0
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local capacity = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  tats[i] = tat
  local free = math.floor((now + capacity - tat) / interval)
  if free < grant then grant = free end
  if free < 1 then
    local until_free = tat + interval - capacity - now
    if until_free > wait or refusing < 0 then refusing, wait = i - 1, until_free end
  end
end
if grant < 1 then return {0, refusing, wait} end
for i, key in ipairs(KEYS) do
  local tat = tats[i] + grant * tonumber(ARGV[2 * i])
  redis.call('SET', key, string.format('%.0f', tat), 'PX', math.ceil((tat - now) / 1000) + 1000)
end
return {grant, -1, 0}
";

/// A shared window's refusal: which of the call's shared windows, and when it admits again.
pub(crate) struct Refused {
    pub window: usize,
    pub wait: Duration,
}

/// Calls already granted by Redis and not spent yet.
struct Lease {
    calls: u64,
    taken: Instant,
    /// A call is asking Redis for a new lease: others ask for themselves alone meanwhile.
    refilling: bool,
}

/// The cells in Redis and this replica's leases of them.
pub(crate) struct SharedCells {
    redis: GuardedRedis,
    /// The service whose calls are counted, part of every cell's key.
    service: String,
    per_process: HashSet<LimitKind>,
    script: redis::Script,
    /// By the call's windows and ids.
    leases: Mutex<HashMap<String, Lease>>,
}

impl SharedCells {
    pub(crate) fn from_config(config: &SharedLimitsConfig, service: &str) -> Result<Option<Self>, LimitsError> {
        let Some(url) = config.redis_url.as_deref().filter(|u| !u.is_empty()) else { return Ok(None) };
        let invalid = |field: &str, reason: String| LimitsError { field: format!("shared.{field}"), reason };
        keymesh_redis::check_url(url).map_err(|reason| invalid("redis_url", reason.into()))?;
        let timeout_ms = config.timeout_ms.unwrap_or(50);
        if !(1..=5000).contains(&timeout_ms) {
            return Err(invalid("timeout_ms", format!("{timeout_ms} is outside 1..=5000")));
        }
        let redis = GuardedRedis::open(
            url,
            Duration::from_millis(timeout_ms),
            "limits",
            "each replica applies the limits on its own",
        )
        // The error's kind only: its text could quote the URL.
        .map_err(|e| invalid("redis_url", format!("is invalid: {:?}", e.kind())))?;
        tracing::info!(per_process = ?config.per_process, "limits are shared by every replica through Redis");
        Ok(Some(Self {
            redis,
            service: service.to_owned(),
            per_process: config.per_process.iter().copied().collect(),
            script: redis::Script::new(GCRA_SCRIPT),
            leases: Mutex::new(HashMap::new()),
        }))
    }

    /// True when `kind` is held in Redis.
    pub(crate) fn holds(&self, kind: LimitKind) -> bool {
        !self.per_process.contains(&kind)
    }

    /// Admits one call in every window of `windows` (each with the id it counts), from a lease or from Redis.
    /// `None` when Redis did not answer.
    pub(crate) async fn admit(&self, windows: &[(&Window, &str)]) -> Option<Result<(), Refused>> {
        let mut lease_key = String::new();
        for (window, id) in windows {
            lease_key.push_str(window.name);
            lease_key.push('\0');
            lease_key.push_str(id);
            lease_key.push('\0');
        }
        let lease_size = windows.iter().map(|(w, _)| lease_size(w)).min().unwrap_or(1);
        let wanted = match self.spend_lease(&lease_key, lease_size) {
            Spent::Call => return Some(Ok(())),
            Spent::Refill => lease_size,
            Spent::Nothing => 1,
        };
        // Ends the refill however this call ends, a cancelled call included: otherwise no lease would be asked
        // for again.
        let mut refill = (wanted > 1).then(|| Refill { leases: &self.leases, key: &lease_key, granted: 0 });
        let outcome = self.ask_redis(windows, wanted).await;
        if let (Some(refill), Some(Ok(granted))) = (refill.as_mut(), &outcome) {
            refill.granted = *granted;
        }
        drop(refill);
        Some(outcome?.map(|_| ()))
    }

    /// Asks Redis for up to `wanted` calls in every window: how many it granted (at least one), or the refusal.
    async fn ask_redis(&self, windows: &[(&Window, &str)], wanted: u64) -> Option<Result<u64, Refused>> {
        let mut invocation = self.script.prepare_invoke();
        for (window, id) in windows {
            invocation.key(format!("{KEY_PREFIX}:{}:{}:{id}", self.service, window.name));
        }
        invocation.arg(wanted);
        for (window, _) in windows {
            let interval = window.interval.as_secs_f64() * 1e6;
            invocation.arg(interval).arg(interval * f64::from(window.burst));
        }
        let (granted, refusing, wait): (u64, i64, u64) = self.redis.run_script(invocation).await?;
        if granted == 0 {
            let window = usize::try_from(refusing).unwrap_or(0).min(windows.len().saturating_sub(1));
            return Some(Err(Refused { window, wait: Duration::from_micros(wait) }));
        }
        Some(Ok(granted))
    }

    /// Spends one call of a live lease for `key`; else says whether this call should ask for a new lease (none
    /// is being asked for) or for itself alone.
    fn spend_lease(&self, key: &str, lease_size: u64) -> Spent {
        if lease_size <= 1 {
            return Spent::Nothing;
        }
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        let lease = leases.entry(key.to_owned()).or_insert(Lease { calls: 0, taken: Instant::now(), refilling: false });
        if lease.calls > 0 && lease.taken.elapsed() < LEASE_LIFETIME {
            lease.calls -= 1;
            Spent::Call
        } else if lease.refilling {
            Spent::Nothing
        } else {
            lease.refilling = true;
            Spent::Refill
        }
    }

    /// Drops leases past their lifetime, so ids seen once do not stay in memory.
    pub(crate) fn forget_stale_leases(&self) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        leases.retain(|_, lease| lease.refilling || (lease.calls > 0 && lease.taken.elapsed() < LEASE_LIFETIME));
        leases.shrink_to_fit();
    }
}

/// A lease being asked for: when dropped, the lease takes what Redis granted beyond the asking call's own, and
/// another refill may start.
struct Refill<'a> {
    leases: &'a Mutex<HashMap<String, Lease>>,
    key: &'a str,
    /// Calls Redis granted (0: none, or no answer).
    granted: u64,
}

impl Drop for Refill<'_> {
    fn drop(&mut self) {
        let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lease) = leases.get_mut(self.key) {
            lease.refilling = false;
            if self.granted > 0 {
                lease.calls = self.granted - 1;
                lease.taken = Instant::now();
            }
        }
    }
}

/// What [`SharedCells::spend_lease`] found.
enum Spent {
    /// A leased call: admitted.
    Call,
    /// No lease: ask Redis for one.
    Refill,
    /// No lease, and one is being asked for (or the windows are too slow to lease): ask for this call alone.
    Nothing,
}

/// Calls leased at once from a window: a hundredth of its second's worth, at least one, at most its burst.
fn lease_size(window: &Window) -> u64 {
    let per_second = 1.0 / window.interval.as_secs_f64();
    ((per_second / LEASES_PER_SECOND) as u64).clamp(1, u64::from(window.burst))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(count: u32, period: Duration) -> Window {
        Window::new(LimitKind::ApplicationRate, "application_rate", count, period, None, String::new()).unwrap()
    }

    #[test]
    fn fast_windows_lease_a_hundredth_of_a_second_and_slow_ones_one_call() {
        assert_eq!(lease_size(&window(20_000, Duration::from_secs(1))), 200);
        assert_eq!(lease_size(&window(100, Duration::from_secs(1))), 1);
        assert_eq!(lease_size(&window(1_000_000, Duration::from_secs(86_400))), 1);
    }

    #[tokio::test]
    async fn one_lease_is_asked_for_at_a_time_and_a_cancelled_ask_frees_the_next() {
        let config = SharedLimitsConfig { redis_url: Some("redis://127.0.0.1:1".into()), ..Default::default() };
        let cells = SharedCells::from_config(&config, "test").unwrap().unwrap();
        let key = "application_rate\0app_1\0";
        assert!(matches!(cells.spend_lease(key, 5), Spent::Refill));
        assert!(matches!(cells.spend_lease(key, 5), Spent::Nothing), "a second caller asks for itself alone");
        drop(Refill { leases: &cells.leases, key, granted: 5 });
        for _ in 0..4 {
            assert!(matches!(cells.spend_lease(key, 5), Spent::Call), "the asking call used one of the five");
        }
        assert!(matches!(cells.spend_lease(key, 5), Spent::Refill));
        // The asking call is cancelled (or Redis did not answer): the next call asks again.
        drop(Refill { leases: &cells.leases, key, granted: 0 });
        assert!(matches!(cells.spend_lease(key, 5), Spent::Refill));
        assert!(matches!(cells.spend_lease(key, 1), Spent::Nothing), "slow windows never lease");
    }

    #[tokio::test]
    async fn kinds_listed_per_process_stay_off_redis() {
        let config = SharedLimitsConfig {
            redis_url: Some("redis://127.0.0.1:1".into()),
            per_process: vec![LimitKind::ApplicationRate],
            ..Default::default()
        };
        let cells = SharedCells::from_config(&config, "test").unwrap().unwrap();
        assert!(!cells.holds(LimitKind::ApplicationRate));
        assert!(cells.holds(LimitKind::TenantRate) && cells.holds(LimitKind::KeyQuota));
    }

    #[test]
    fn the_redis_password_never_prints_and_bad_settings_name_their_field() {
        let config = SharedLimitsConfig {
            redis_url: Some("redis://:hunter2@cache:6379".into()),
            ..SharedLimitsConfig::default()
        };
        assert!(!format!("{config:?}").contains("hunter2"));
        let bad = |config: SharedLimitsConfig| SharedCells::from_config(&config, "test").err().unwrap().to_string();
        let url = bad(SharedLimitsConfig { redis_url: Some("http://cache".into()), ..Default::default() });
        assert!(url.contains("limits.shared.redis_url"), "{url}");
        let timeout = bad(SharedLimitsConfig {
            redis_url: Some("redis://cache".into()),
            timeout_ms: Some(0),
            ..Default::default()
        });
        assert!(timeout.contains("limits.shared.timeout_ms"), "{timeout}");
    }
}

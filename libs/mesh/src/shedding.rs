//! Load shedding: a service handles at most `max_in_flight` calls at once, lets at most `max_queued` more
//! wait for a slot (each at most `queue_timeout`), and refuses the rest at once with UNAVAILABLE and a
//! `google.rpc.RetryInfo`. Without it an overloaded service queues every caller, and every caller's latency
//! grows with the queue; with it the admitted calls keep the latency of a loaded-but-not-overloaded service,
//! memory stays bounded by the two figures, and the excess is told to back off — or, with a client-side
//! retry policy, to try another replica.
//!
//! A call holds its slot until its handler has answered; a streaming call's stream then goes on outside the
//! count (its messages are bounded by the stream's own flow control), so the figures bound handlers, not streams.
//!
//! UNAVAILABLE rather than RESOURCE_EXHAUSTED: the caller did nothing wrong and another replica may have room,
//! which is what gRPC's retry policies and load balancers read UNAVAILABLE as. (A caller over its own rate
//! limit or quota gets RESOURCE_EXHAUSTED.) Health and reflection are never shed: a probe must see an
//! overloaded service as alive.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use opentelemetry::{KeyValue, metrics::Counter};
use tokio::sync::Semaphore;

use crate::error::retry_status;

/// `keymesh.server.shed` by `reason` (`queue_full`, `queue_timeout`): calls refused because the service was at
/// capacity.
static SHED: LazyLock<Counter<u64>> = LazyLock::new(|| {
    opentelemetry::global::meter("keymesh")
        .u64_counter("keymesh.server.shed")
        .with_description("Calls refused at once because the service was at capacity, by reason")
        .build()
});

/// How much a service takes on at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Capacity {
    /// Calls handled at once.
    pub max_in_flight: usize,
    /// Calls waiting for a slot.
    pub max_queued: usize,
    /// How long a call may wait for a slot.
    pub queue_timeout: Duration,
}

struct Shared {
    slots: Arc<Semaphore>,
    waiting: AtomicUsize,
    capacity: Capacity,
    pushback: Pushback,
}

/// Length of the windows over which admissions and refusals are counted for the retry hint.
const PUSHBACK_WINDOW: Duration = Duration::from_millis(100);
/// The shortest retry hint.
const MIN_RETRY_HINT: Duration = Duration::from_millis(10);
/// The longest retry hint: past it, a caller is better served by another replica or by failing.
const MAX_RETRY_HINT: Duration = Duration::from_secs(1);

/// The retry hint a refusal carries, grown with the overload until the callers' retries come back at about the
/// rate the service admits them. Each window (100 ms) that saw `f` arrivals per admission (f > 1.1) multiplies
/// the hint by `f`; a window without such overload halves it, down to the base (the queue's wait, at least
/// 10 ms); it never exceeds a second. A fixed hint had a thousand callers come back every 10 ms and the service
/// spend on refusing them the CPU its admitted calls needed (the hot path benchmark's overload run: three
/// refusals per admitted call).
struct Pushback {
    started: std::time::Instant,
    /// The window `admitted` and `refused` count in (windows since `started`).
    window: AtomicU64,
    admitted: AtomicU64,
    refused: AtomicU64,
    /// The hint as a multiple of the base, in thousandths (1,000: the base).
    scale_milli: AtomicU64,
}

impl Pushback {
    fn new() -> Self {
        Self {
            started: std::time::Instant::now(),
            window: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            scale_milli: AtomicU64::new(1000),
        }
    }

    fn now(&self) -> u64 {
        (self.started.elapsed().as_millis() / PUSHBACK_WINDOW.as_millis()) as u64
    }

    /// Counts a call admitted or refused in window `now`.
    fn count(&self, now: u64, admitted: bool) {
        let seen = self.window.load(Ordering::Relaxed);
        if now != seen && self.window.compare_exchange(seen, now, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            // The one call that moved the window on closes the last one. Counts racing with it land in either
            // window: the figure is an estimate.
            let (admitted, refused) = (self.admitted.swap(0, Ordering::AcqRel), self.refused.swap(0, Ordering::AcqRel));
            let arrivals_per_admission = (admitted + refused) * 1000 / admitted.max(1);
            let scale = self.scale_milli.load(Ordering::Relaxed);
            let ceiling = (MAX_RETRY_HINT.as_millis() * 1000 / MIN_RETRY_HINT.as_millis()) as u64;
            // A window long past (the service was idle in between) says nothing about now: back to the base.
            let next = if now != seen + 1 {
                1000
            } else if arrivals_per_admission > 1100 {
                (scale.saturating_mul(arrivals_per_admission) / 1000).min(ceiling)
            } else {
                (scale / 2).max(1000)
            };
            self.scale_milli.store(next, Ordering::Relaxed);
        }
        if admitted { &self.admitted } else { &self.refused }.fetch_add(1, Ordering::Relaxed);
    }

    /// The hint for a call refused in window `now`.
    fn hint(&self, now: u64, base: Duration) -> Duration {
        self.count(now, false);
        let scale = u32::try_from(self.scale_milli.load(Ordering::Relaxed)).unwrap_or(u32::MAX);
        base.max(MIN_RETRY_HINT).saturating_mul(scale).div_f64(1000.0).min(MAX_RETRY_HINT)
    }
}

/// The shedding layer of one server.
#[derive(Clone)]
pub struct LoadShedLayer {
    shared: Arc<Shared>,
}

impl LoadShedLayer {
    /// A layer admitting what `capacity` says; also reports `keymesh.server.calls.in_flight` and
    /// `keymesh.server.calls.queued`.
    pub fn new(capacity: Capacity) -> Self {
        let shared = Arc::new(Shared {
            slots: Arc::new(Semaphore::new(capacity.max_in_flight)),
            waiting: AtomicUsize::new(0),
            capacity,
            pushback: Pushback::new(),
        });
        for reason in ["queue_full", "queue_timeout"] {
            SHED.add(0, &[KeyValue::new("reason", reason)]);
        }
        let meter = opentelemetry::global::meter("keymesh");
        let weak = Arc::downgrade(&shared);
        meter
            .i64_observable_gauge("keymesh.server.calls.in_flight")
            .with_description("Calls being handled now (at most server.max_in_flight)")
            .with_callback(move |observer| {
                if let Some(shared) = weak.upgrade() {
                    let busy = shared.capacity.max_in_flight.saturating_sub(shared.slots.available_permits());
                    observer.observe(busy as i64, &[]);
                }
            })
            .build();
        let weak = Arc::downgrade(&shared);
        meter
            .i64_observable_gauge("keymesh.server.calls.queued")
            .with_description("Calls waiting for a slot (at most server.max_queued)")
            .with_callback(move |observer| {
                if let Some(shared) = weak.upgrade() {
                    observer.observe(shared.waiting.load(Ordering::Relaxed) as i64, &[]);
                }
            })
            .build();
        Self { shared }
    }
}

impl<S> tower::Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed { inner, shared: self.shared.clone() }
    }
}

/// See [`LoadShedLayer`].
#[derive(Clone)]
pub struct LoadShed<S> {
    inner: S,
    shared: Arc<Shared>,
}

/// Paths never shed: probes and tooling must reach an overloaded service.
fn exempt(path: &str) -> bool {
    path.starts_with("/grpc.health.") || path.starts_with("/grpc.reflection.")
}

impl<S, B, ResBody> tower::Service<http::Request<B>> for LoadShed<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    ResBody: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if exempt(request.uri().path()) {
            return Box::pin(self.inner.call(request));
        }
        // The service that was polled ready handles this call; a clone takes its place for the next one.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let shared = self.shared.clone();
        let now = shared.pushback.now();
        if let Ok(slot) = shared.slots.clone().try_acquire_owned() {
            shared.pushback.count(now, true);
            return Box::pin(async move {
                let response = inner.call(request).await;
                drop(slot);
                response
            });
        }
        let capacity = shared.capacity;
        let Some(place) = QueuePlace::take(&shared) else {
            let hint = shared.pushback.hint(now, capacity.queue_timeout);
            return Box::pin(async move { Ok(refusal(&capacity, "queue_full", hint)) });
        };
        Box::pin(async move {
            let waited = tokio::time::timeout(capacity.queue_timeout, shared.slots.clone().acquire_owned()).await;
            drop(place);
            match waited {
                Ok(Ok(slot)) => {
                    shared.pushback.count(shared.pushback.now(), true);
                    let response = inner.call(request).await;
                    drop(slot);
                    response
                }
                // Timed out, or (never here) the semaphore closed.
                _ => {
                    let hint = shared.pushback.hint(shared.pushback.now(), capacity.queue_timeout);
                    Ok(refusal(&capacity, "queue_timeout", hint))
                }
            }
        })
    }
}

/// A place in the queue, given back when dropped: a queued call the client cancels (hyper drops its future) must
/// not keep its place, or the queue would fill with calls no one waits for.
struct QueuePlace(Arc<Shared>);

impl QueuePlace {
    /// A place, unless the queue is full.
    fn take(shared: &Arc<Shared>) -> Option<Self> {
        let place = Self(shared.clone());
        // Counted first and given back by the drop when over: no window where a full queue admits one more.
        (shared.waiting.fetch_add(1, Ordering::AcqRel) < shared.capacity.max_queued).then_some(place)
    }
}

impl Drop for QueuePlace {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The answer to a shed call: UNAVAILABLE, retry after `hint` (see [`Pushback`]).
fn refusal<ResBody: Default>(capacity: &Capacity, reason: &'static str, hint: Duration) -> http::Response<ResBody> {
    SHED.add(1, &[KeyValue::new("reason", reason)]);
    let message = format!(
        "the service is at capacity ({} calls in flight, {} waiting); retry later or on another replica",
        capacity.max_in_flight, capacity.max_queued
    );
    retry_status(tonic::Code::Unavailable, message, hint).into_http()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::{Layer, Service, ServiceExt};

    type Answer = Pin<Box<dyn Future<Output = Result<http::Response<tonic::body::Body>, Infallible>> + Send>>;

    /// A handler that holds each call until `release` has a permit for it.
    fn held(
        release: Arc<Semaphore>,
    ) -> impl Service<
        http::Request<()>,
        Response = http::Response<tonic::body::Body>,
        Error = Infallible,
        Future = Answer,
    > + Clone {
        tower::service_fn(move |_request: http::Request<()>| {
            let release = release.clone();
            Box::pin(async move {
                let _permit = release.acquire().await;
                Ok::<_, Infallible>(http::Response::new(tonic::body::Body::empty()))
            }) as Answer
        })
    }

    fn grpc_status(response: &http::Response<tonic::body::Body>) -> Option<String> {
        response.headers().get("grpc-status").map(|v| v.to_str().unwrap_or_default().to_owned())
    }

    #[tokio::test]
    async fn the_excess_is_refused_at_once_with_retry_advice_and_probes_pass() {
        let release = Arc::new(Semaphore::new(0));
        let layer =
            LoadShedLayer::new(Capacity { max_in_flight: 2, max_queued: 1, queue_timeout: Duration::from_secs(30) });
        let service = layer.layer(held(release.clone()));
        let call = |path: &str| {
            let request = http::Request::builder().uri(path).body(()).unwrap();
            service.clone().oneshot(request)
        };
        // Two in flight and one waiting, all held.
        let admitted: Vec<_> = (0..3).map(|_| tokio::spawn(call("/keymesh.v1.CryptoService/Encrypt"))).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = call("/keymesh.v1.CryptoService/Encrypt").await.unwrap();
        assert_eq!(grpc_status(&refused).as_deref(), Some("14"), "UNAVAILABLE");
        assert!(refused.headers().contains_key("grpc-status-details-bin"), "RetryInfo attached");
        assert!(refused.headers().contains_key("retry-after"));
        // A health check is not counted: it waits for its own handler only.
        let probe = tokio::spawn(call("/grpc.health.v1.Health/Check"));
        release.add_permits(4);
        assert_eq!(grpc_status(&probe.await.unwrap().unwrap()), None);
        for call in admitted {
            assert_eq!(grpc_status(&call.await.unwrap().unwrap()), None, "admitted calls are served");
        }
    }

    #[tokio::test]
    async fn a_queued_call_the_client_cancels_gives_its_place_back() {
        let release = Arc::new(Semaphore::new(0));
        let layer =
            LoadShedLayer::new(Capacity { max_in_flight: 1, max_queued: 1, queue_timeout: Duration::from_secs(30) });
        let service = layer.layer(held(release.clone()));
        let request = || http::Request::builder().uri("/keymesh.v1.KeyService/GetKey").body(()).unwrap();
        let first = tokio::spawn(service.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        // Queued, then cancelled by its client.
        let queued = tokio::spawn(service.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        queued.abort();
        let _ = queued.await;
        assert_eq!(layer.shared.waiting.load(Ordering::Acquire), 0, "the cancelled call's place is free");
        let next = tokio::spawn(service.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        release.add_permits(2);
        assert_eq!(grpc_status(&first.await.unwrap().unwrap()), None);
        assert_eq!(grpc_status(&next.await.unwrap().unwrap()), None, "queued, not refused");
    }

    #[test]
    fn the_retry_hint_grows_while_callers_outnumber_admissions_and_falls_back_after() {
        let pushback = Pushback::new();
        let base = Duration::from_millis(5);
        // Calls counted in window `now` (each hint also counts its own refusal, in the window it is asked in).
        let window = |now: u64, admitted: u32, refused: u32| {
            for _ in 0..admitted {
                pushback.count(now, true);
            }
            for _ in 0..refused {
                pushback.count(now, false);
            }
        };
        // Window 1: four arrivals per admission. Asked in window 2: four times the base, raised to the floor.
        window(1, 100, 300);
        assert_eq!(pushback.hint(2, base), 4 * MIN_RETRY_HINT);
        // Still four per admission in window 2: sixteen times.
        window(2, 100, 299);
        assert_eq!(pushback.hint(3, base), 16 * MIN_RETRY_HINT);
        // Overload without end: capped at a second.
        for now in 3..10 {
            window(now, 10, 100);
        }
        assert_eq!(pushback.hint(10, base), MAX_RETRY_HINT);
        // Windows where every call is admitted halve it, down to the base.
        for now in 11..30 {
            window(now, 100, 0);
        }
        assert_eq!(pushback.hint(30, Duration::from_millis(40)), Duration::from_millis(40));
        // After a quiet spell the overload is forgotten at once.
        window(31, 1, 100);
        assert!(pushback.hint(32, base) > MIN_RETRY_HINT);
        assert_eq!(pushback.hint(40, base), MIN_RETRY_HINT);
    }

    #[tokio::test]
    async fn a_call_waiting_past_the_queue_timeout_is_refused() {
        let release = Arc::new(Semaphore::new(0));
        let layer =
            LoadShedLayer::new(Capacity { max_in_flight: 1, max_queued: 4, queue_timeout: Duration::from_millis(20) });
        let service = layer.layer(held(release.clone()));
        let request = || http::Request::builder().uri("/keymesh.v1.KeyService/GetKey").body(()).unwrap();
        let first = tokio::spawn(service.clone().oneshot(request()));
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waited = service.clone().oneshot(request()).await.unwrap();
        assert_eq!(grpc_status(&waited).as_deref(), Some("14"));
        release.add_permits(1);
        assert_eq!(grpc_status(&first.await.unwrap().unwrap()), None);
    }
}

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
        atomic::{AtomicUsize, Ordering},
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
        if let Ok(slot) = shared.slots.clone().try_acquire_owned() {
            return Box::pin(async move {
                let response = inner.call(request).await;
                drop(slot);
                response
            });
        }
        let capacity = shared.capacity;
        let Some(place) = QueuePlace::take(&shared) else {
            return Box::pin(async move { Ok(refusal(&capacity, "queue_full")) });
        };
        Box::pin(async move {
            let waited = tokio::time::timeout(capacity.queue_timeout, shared.slots.clone().acquire_owned()).await;
            drop(place);
            match waited {
                Ok(Ok(slot)) => {
                    let response = inner.call(request).await;
                    drop(slot);
                    response
                }
                // Timed out, or (never here) the semaphore closed.
                _ => Ok(refusal(&capacity, "queue_timeout")),
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

/// The answer to a shed call: UNAVAILABLE, retry after the queue's wait (a slot frees up within it for most
/// calls of a loaded service).
fn refusal<ResBody: Default>(capacity: &Capacity, reason: &'static str) -> http::Response<ResBody> {
    SHED.add(1, &[KeyValue::new("reason", reason)]);
    let message = format!(
        "the service is at capacity ({} calls in flight, {} waiting); retry later or on another replica",
        capacity.max_in_flight, capacity.max_queued
    );
    retry_status(tonic::Code::Unavailable, message, capacity.queue_timeout.max(Duration::from_millis(10))).into_http()
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

//! What every gRPC call leaves behind for the people who run the mesh: a span named and attributed by the
//! OpenTelemetry RPC conventions, on both sides of every hop. A server span is named after the method
//! (`keymesh.v1.CryptoService/Encrypt`) and carries `rpc.system`, `rpc.service`, `rpc.method`,
//! `server.address`/`server.port`, the peer's address and, once the call ends, `rpc.grpc.status_code` and an
//! ERROR status for anything but OK. Calls to other services get the matching client span, whose context is
//! the `traceparent` the callee continues. Each side also records the call's duration in
//! `rpc.server.duration` or `rpc.client.duration`.
//!
//! The status of a gRPC call is known only at its very end (the `grpc-status` trailer, or the header of a
//! trailers-only answer), so both sides watch the response body to its end rather than the handler's return.
//!
//! A call gets no span at all when no exporter is configured or when the configured sampler drops it (decided
//! here, before anything is built; see [`record_spans`]): it only carries a trace context — the caller's trace
//! with a span id of its own, or a fresh trace — so that audit events, JSON logs and the next hop still share
//! one trace id, at the cost of two random numbers instead of a span.

use std::{
    collections::HashSet,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, LazyLock,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Instant,
};

use http_body::{Body, Frame, SizeHint};
use opentelemetry::{
    KeyValue, global,
    metrics::Histogram,
    propagation::Extractor,
    trace::{FutureExt, SpanContext, TraceContextExt, TraceFlags, TraceState},
};
use opentelemetry_sdk::trace::{IdGenerator, RandomIdGenerator};
use prost::Message;
use tonic::{
    Code, Status,
    transport::server::{TcpConnectInfo, TlsConnectInfo},
};
use tracing::{Instrument, field::Empty};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::{HeaderExtractor, inject_current_context};

/// Whether calls may get spans; off when nothing would export them.
static RECORD_SPANS: AtomicBool = AtomicBool::new(true);
/// The configured sampler, as the share of traces it records (as `f64` bits) and whether a caller's decision
/// binds it (`parentbased_*`). A call the sampler would drop gets no span at all, only its trace context.
static SAMPLING_RATIO: AtomicU64 = AtomicU64::new(0x3FF0_0000_0000_0000); // 1.0
static PARENT_BASED: AtomicBool = AtomicBool::new(true);

/// How calls are traced (the process's telemetry says so, once, at start): with spans or not at all, and what
/// the sampler records: `ratio` of the traces, following the caller's decision when `parent_based`.
pub fn record_spans(on: bool, ratio: f64, parent_based: bool) {
    RECORD_SPANS.store(on, Ordering::Relaxed);
    SAMPLING_RATIO.store(ratio.clamp(0.0, 1.0).to_bits(), Ordering::Relaxed);
    PARENT_BASED.store(parent_based, Ordering::Relaxed);
}

fn spans_on() -> bool {
    RECORD_SPANS.load(Ordering::Relaxed)
}

/// The sampling rule of the configured sampler, for the context a call is served under.
fn sampling() -> Sampling {
    Sampling {
        ratio: f64::from_bits(SAMPLING_RATIO.load(Ordering::Relaxed)),
        parent_based: PARENT_BASED.load(Ordering::Relaxed),
    }
}

/// A sampler's rule: `TraceIdRatioBased(ratio)`, wrapped in `ParentBased` or not.
#[derive(Debug, Clone, Copy)]
pub struct Sampling {
    /// The share of traces recorded (1.0: all).
    pub ratio: f64,
    /// Whether a caller's decision is followed.
    pub parent_based: bool,
}

impl Sampling {
    /// Record everything: what a command line asks of the services for its own trace.
    pub const ALWAYS: Sampling = Sampling { ratio: 1.0, parent_based: true };

    fn samples(self, parent: &SpanContext, trace_id: opentelemetry::trace::TraceId) -> bool {
        if self.parent_based && parent.is_valid() {
            return parent.is_sampled();
        }
        // The SDK's ratio rule: the trace id's low 63 bits under the ratio's share of them.
        let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or_default()) >> 1;
        self.ratio >= 1.0 || (low as f64) < self.ratio * (1u64 << 63) as f64
    }
}

/// The caller's trace context, when it sent one.
fn caller_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    if headers.contains_key("traceparent") {
        global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)))
    } else {
        opentelemetry::Context::new()
    }
}

/// A trace context of one's own without a span: the trace `carrier` holds under a fresh span id, or else a
/// fresh trace, marked sampled as `sampling` decides. The services serve calls they build no span for under
/// one of these; a command line makes its calls under one (sampled, so that the services record them).
pub fn child_or_root_context(carrier: Option<&dyn Extractor>, sampling: Sampling) -> opentelemetry::Context {
    let parent = match carrier {
        Some(carrier) => global::get_text_map_propagator(|p| p.extract(carrier)),
        None => opentelemetry::Context::new(),
    };
    spanless_child(&parent, sampling)
}

fn spanless_child(parent: &opentelemetry::Context, sampling: Sampling) -> opentelemetry::Context {
    let ids = RandomIdGenerator::default();
    let parent = parent.span().span_context().clone();
    let (trace_id, state) = if parent.is_valid() {
        (parent.trace_id(), parent.trace_state().clone())
    } else {
        (ids.new_trace_id(), TraceState::default())
    };
    let flags = if sampling.samples(&parent, trace_id) { TraceFlags::SAMPLED } else { TraceFlags::default() };
    let own = SpanContext::new(trace_id, ids.new_span_id(), flags, false, state);
    opentelemetry::Context::new().with_remote_span_context(own)
}

/// What the mesh's spans call a method nobody declared: a bounded name, whatever path a caller sent.
const OTHER: &str = "_OTHER";

/// Every method the services serve, as `/package.Service/Method`: keymesh's API, health and reflection.
static KNOWN_METHODS: LazyLock<HashSet<String>> = LazyLock::new(|| {
    let mut known = HashSet::new();
    for set in [
        keymesh_proto::FILE_DESCRIPTOR_SET,
        tonic_health::pb::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
        tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
    ] {
        // The sets are compiled in; one that does not decode only leaves its methods unnamed.
        let Ok(set) = prost_types::FileDescriptorSet::decode(set) else { continue };
        for file in &set.file {
            for service in &file.service {
                for method in &service.method {
                    known.insert(format!("/{}.{}/{}", file.package(), service.name(), method.name()));
                }
            }
        }
    }
    known
});

/// The service and method of a request path; a path no service declares is `_OTHER`, so that span names
/// and (later) metric labels stay bounded whatever a caller sends.
pub fn rpc_name(path: &str) -> (&'static str, &'static str) {
    if let Some(known) = KNOWN_METHODS.get(path)
        && let Some((service, method)) = known.trim_start_matches('/').split_once('/')
    {
        return (service, method);
    }
    (OTHER, OTHER)
}

/// Whether some API declares the gRPC service `name` (health can report on other names, such as a mode).
pub fn is_declared_service(name: &str) -> bool {
    let prefix = format!("/{name}/");
    KNOWN_METHODS.iter().any(|path| path.starts_with(&prefix))
}

/// A span's name: `keymesh.v1.CryptoService/Encrypt`, or `_OTHER`.
fn span_name(service: &str, method: &str) -> String {
    if service == OTHER { OTHER.to_owned() } else { format!("{service}/{method}") }
}

/// Which side of a call is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Server,
    Client,
}

/// `rpc.server.duration` and `rpc.client.duration` (the semconv 1.37 names) in seconds, labelled by service,
/// method and gRPC code only: bounded, and never anything a caller chose. Seconds, not 1.37's milliseconds:
/// Prometheus's base unit (promtool refuses `_milliseconds`), and what semconv itself moved to in 1.39.
struct RpcDurations {
    server: Histogram<f64>,
    client: Histogram<f64>,
}

/// Boundaries in seconds: the hot path lives under 10 ms, a cold key or a KMS call in the hundreds.
const DURATION_BOUNDARIES: [f64; 15] =
    [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// A histogram of durations in seconds with the boundaries of the RPC durations, so that every keymesh
/// latency (an RPC, a cache tier, an fsync) can be read on the same scale.
pub fn seconds_histogram(name: &'static str, description: &'static str) -> Histogram<f64> {
    global::meter("keymesh")
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(DURATION_BOUNDARIES.to_vec())
        .build()
}

static DURATIONS: LazyLock<RpcDurations> = LazyLock::new(|| {
    let histogram = seconds_histogram;
    RpcDurations {
        server: histogram("rpc.server.duration", "Duration of the gRPC calls this service served"),
        client: histogram("rpc.client.duration", "Duration of the gRPC calls this service made to another"),
    }
});

/// The end of one call: records its status on its span when the response is over, however it ends.
struct CallEnd {
    span: tracing::Span,
    side: Side,
    service: &'static str,
    method: &'static str,
    started: Instant,
    /// The status of a trailers-only answer, read from its headers.
    early: Option<Status>,
}

impl CallEnd {
    /// Ends the call with the trailers' status, else the trailers-only header's, else UNKNOWN (a body that
    /// ended without a status: the stream broke).
    fn finish(self, trailers: Option<Status>) {
        let status = trailers.or(self.early);
        let code = status.as_ref().map_or(Code::Unknown, Status::code);
        self.span.record("rpc.grpc.status_code", code as i32);
        let histogram = match self.side {
            Side::Server => &DURATIONS.server,
            Side::Client => &DURATIONS.client,
        };
        histogram.record(
            self.started.elapsed().as_secs_f64(),
            &[
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("rpc.service", self.service),
                KeyValue::new("rpc.method", self.method),
                KeyValue::new("rpc.grpc.status_code", code as i64),
            ],
        );
        if code != Code::Ok {
            let message = status.as_ref().map_or("the call ended without a gRPC status", Status::message);
            self.span.record("otel.status_code", "error");
            self.span.record("otel.status_description", format!("{code:?}: {message}"));
        }
    }
}

/// A response body that reports the call's status when it ends (trailers, end of stream, or drop: a
/// cancelled call).
pub struct ObservedBody<B> {
    inner: B,
    end: Option<CallEnd>,
}

impl<B> ObservedBody<B> {
    fn finish(&mut self, status: Option<Status>) {
        if let Some(end) = self.end.take() {
            end.finish(status);
        }
    }
}

/// An empty body observing nothing: what a layer outside this one (load shedding) answers with.
impl<B: Default> Default for ObservedBody<B> {
    fn default() -> Self {
        Self { inner: B::default(), end: None }
    }
}

impl<B> Drop for ObservedBody<B> {
    fn drop(&mut self) {
        // A trailers-only answer (most refusals) is complete in its headers, and hyper may drop its empty body
        // unpolled. Anything else dropped before its end lost the other side: a cancelled call, a reset stream.
        let unfinished = self.end.as_ref().is_some_and(|end| end.early.is_none());
        self.finish(unfinished.then(|| Status::cancelled("the call was cancelled before it ended")));
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body + Unpin,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    let status = Status::from_header_map(trailers);
                    self.finish(status);
                }
            }
            Poll::Ready(Some(Err(_))) => {
                self.finish(Some(Status::unknown("the response stream failed")));
            }
            Poll::Ready(None) => self.finish(None),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Wraps a service's routes so that every call it serves has its server span.
#[derive(Debug, Clone, Copy, Default)]
pub struct ServerSpanLayer;

impl<S> tower::Layer<S> for ServerSpanLayer {
    type Service = ServerSpans<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ServerSpans { inner }
    }
}

/// See [`ServerSpanLayer`].
#[derive(Debug, Clone)]
pub struct ServerSpans<S> {
    inner: S,
}

/// The server span of an incoming request, parented on the caller's `traceparent` when it sent one.
fn server_span<B>(
    request: &http::Request<B>,
    service: &str,
    method: &str,
    parent: opentelemetry::Context,
) -> tracing::Span {
    let name = span_name(service, method);
    let connection = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>().map(|info| info.get_ref());
    let local = connection.and_then(TcpConnectInfo::local_addr);
    let remote = connection.and_then(TcpConnectInfo::remote_addr);
    let span = tracing::info_span!(
        "rpc.server",
        otel.name = %name,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = %service,
        rpc.method = %method,
        server.address = local.map(|a| a.ip().to_string()),
        server.port = local.map(|a| i64::from(a.port())),
        network.peer.address = remote.map(|a| a.ip().to_string()),
        network.peer.port = remote.map(|a| i64::from(a.port())),
        rpc.grpc.status_code = Empty,
        otel.status_code = Empty,
        otel.status_description = Empty,
    );
    // Fails only if the span is disabled by the filter; then there is nothing to parent.
    let _ = span.set_parent(parent);
    span
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for ServerSpans<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let (service, method) = rpc_name(request.uri().path());
        // A span only when it would be exported: with an exporter, and a sampler that records this call (decided
        // here, before anything is built, as the SDK's sampler would). Otherwise only the trace context goes on.
        // Boxed either way, so the call's end is handled once.
        let caller = caller_context(request.headers());
        let own = spanless_child(&caller, sampling());
        let (span, response): (tracing::Span, Pin<Box<dyn Future<Output = _> + Send>>) =
            if spans_on() && own.span().span_context().is_sampled() {
                let span = server_span(&request, service, method, caller);
                (span.clone(), Box::pin(self.inner.call(request).instrument(span)))
            } else {
                (tracing::Span::none(), Box::pin(self.inner.call(request).with_context(own)))
            };
        Box::pin(async move {
            let response = response.await?;
            let early = Status::from_header_map(response.headers());
            let end = CallEnd { span, side: Side::Server, service, method, started, early };
            Ok(response.map(|inner| ObservedBody { inner, end: Some(end) }))
        })
    }
}

/// A channel to another service whose calls each get a client span, and carry its context as `traceparent`.
#[derive(Debug, Clone)]
pub struct ClientSpans<S> {
    inner: S,
    /// The callee, as `server.address` and `server.port`.
    server: Arc<(String, Option<u16>)>,
}

impl<S> ClientSpans<S> {
    /// Wraps `inner`, a channel to `endpoint` (`host:port`).
    pub fn new(inner: S, endpoint: &str) -> Self {
        let server = match endpoint.parse::<SocketAddr>() {
            Ok(addr) => (addr.ip().to_string(), Some(addr.port())),
            Err(_) => match endpoint.rsplit_once(':') {
                Some((host, port)) => (host.trim_matches(['[', ']']).to_owned(), port.parse().ok()),
                None => (endpoint.to_owned(), None),
            },
        };
        Self { inner, server: Arc::new(server) }
    }

    /// The client span of a call to the callee.
    fn client_span(&self, service: &str, method: &str) -> tracing::Span {
        let name = span_name(service, method);
        let (address, port) = &*self.server;
        tracing::info_span!(
            "rpc.client",
            otel.name = %name,
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = %service,
            rpc.method = %method,
            server.address = %address,
            server.port = port.map(i64::from),
            rpc.grpc.status_code = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
        )
    }
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for ClientSpans<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ResBody: Send + 'static,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<ReqBody>) -> Self::Future {
        let started = Instant::now();
        let (service, method) = rpc_name(request.uri().path());
        // A client span only inside a call that is recorded, or, for a call made outside any (a background
        // task's), when the sampler picks it as a new trace; otherwise the current context goes on as it is.
        let recorded = spans_on() && {
            let current = crate::telemetry::current_context();
            let current = current.span().span_context().clone();
            if current.is_valid() {
                current.is_sampled()
            } else {
                sampling().samples(&current, RandomIdGenerator::default().new_trace_id())
            }
        };
        let span = if recorded { self.client_span(service, method) } else { tracing::Span::none() };
        span.in_scope(|| inject_current_context(request.headers_mut()));
        let response = self.inner.call(request).instrument(span.clone());
        Box::pin(async move {
            match response.await {
                Ok(response) => {
                    let early = Status::from_header_map(response.headers());
                    let end = CallEnd { span, side: Side::Client, service, method, started, early };
                    Ok(response.map(|inner| ObservedBody { inner, end: Some(end) }))
                }
                Err(e) => {
                    CallEnd { span, side: Side::Client, service, method, started, early: None }
                        .finish(Some(Status::unavailable("the call did not reach the service")));
                    Err(e)
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::Layer;
    use tracing_subscriber::{Layer as _, filter::LevelFilter, layer::SubscriberExt};

    /// A handler that reports the tracing span and the trace context it runs under.
    #[derive(Clone, Default)]
    struct Handler(Arc<std::sync::Mutex<Option<Seen>>>);

    /// The name of the tracing span a handler ran in, and its trace context.
    type Seen = (Option<String>, SpanContext);

    impl tower::Service<http::Request<()>> for Handler {
        type Response = http::Response<()>;
        type Error = std::convert::Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<http::Response<()>, Self::Error>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            let seen = self.0.clone();
            Box::pin(async move {
                let span = tracing::Span::current().metadata().map(|m| m.name().to_owned());
                let context = opentelemetry::Context::current().span().span_context().clone();
                *seen.lock().unwrap() = Some((span, context));
                Ok(http::Response::new(()))
            })
        }
    }

    /// Puts the process-wide setting back when a test that changed it ends, even by a failed assertion.
    struct SpansBackOn;

    impl Drop for SpansBackOn {
        fn drop(&mut self) {
            record_spans(true, 1.0, true);
        }
    }

    #[tokio::test]
    async fn without_an_exporter_or_a_sampled_trace_calls_carry_a_trace_context_but_no_span() {
        global::set_text_map_propagator(opentelemetry_sdk::propagation::TraceContextPropagator::new());
        let _subscriber = tracing::subscriber::set_default(
            tracing_subscriber::registry()
                .with(tracing_subscriber::fmt::layer().with_writer(std::io::sink).with_filter(LevelFilter::INFO)),
        );
        let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let request = || {
            http::Request::builder()
                .uri("/keymesh.v1.CryptoService/Encrypt")
                .header("traceparent", format!("00-{caller_trace}-00f067aa0ba902b7-01"))
                .body(())
                .unwrap()
        };
        let seen = |handler: &Handler| handler.0.lock().unwrap().take().unwrap();

        // With an exporter: the handler runs inside the server span.
        let handler = Handler::default();
        let mut served = ServerSpanLayer.layer(handler.clone());
        drop(tower::Service::call(&mut served, request()).await.unwrap());
        assert_eq!(seen(&handler).0.as_deref(), Some("rpc.server"));
        let _back_on = SpansBackOn;
        // A call the sampler drops (parent-based, the caller did not sample; or a new trace at ratio 0) gets no
        // span either, only its trace context, unsampled.
        record_spans(true, 0.0, true);
        let mut unsampled = request();
        let traceparent = format!("00-{caller_trace}-00f067aa0ba902b7-00");
        unsampled.headers_mut().insert("traceparent", traceparent.parse().unwrap());
        drop(tower::Service::call(&mut served, unsampled).await.unwrap());
        let (span, context) = seen(&handler);
        assert_eq!(span, None, "an unsampled call builds no span");
        assert!(context.trace_id().to_string() == caller_trace && !context.is_sampled());
        drop(tower::Service::call(&mut served, request()).await.unwrap());
        assert_eq!(seen(&handler).0.as_deref(), Some("rpc.server"), "the caller's sampled trace is followed");
        let mut root = request();
        root.headers_mut().remove("traceparent");
        drop(tower::Service::call(&mut served, root).await.unwrap());
        assert_eq!(seen(&handler).0, None, "ratio 0: a new trace is not recorded");

        // Without: no span, and the caller's trace goes on under a span id of the service's own.
        record_spans(false, 1.0, true);
        drop(tower::Service::call(&mut served, request()).await.unwrap());
        let (span, context) = seen(&handler);
        assert_eq!(span, None, "no span is built");
        assert_eq!(context.trace_id().to_string(), caller_trace);
        assert_ne!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled(), "the caller's sampling decision is kept");
        // A caller without a trace starts one.
        let mut bare = request();
        bare.headers_mut().remove("traceparent");
        drop(tower::Service::call(&mut served, bare).await.unwrap());
        let (span, context) = seen(&handler);
        assert!(span.is_none() && context.is_valid() && context.trace_id().to_string() != caller_trace);
        assert!(context.is_sampled(), "a new trace is sampled as the sampler (always on here) would");
        record_spans(false, 0.0, true);
        let mut bare = request();
        bare.headers_mut().remove("traceparent");
        drop(tower::Service::call(&mut served, bare).await.unwrap());
        assert!(!seen(&handler).1.is_sampled(), "nor when it samples nothing");
    }

    #[test]
    fn only_declared_methods_are_named() {
        assert_eq!(rpc_name("/keymesh.v1.CryptoService/Encrypt"), ("keymesh.v1.CryptoService", "Encrypt"));
        assert_eq!(rpc_name("/grpc.health.v1.Health/Check"), ("grpc.health.v1.Health", "Check"));
        assert_eq!(
            rpc_name("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"),
            ("grpc.reflection.v1alpha.ServerReflection", "ServerReflectionInfo")
        );
        for unknown in ["/keymesh.v1.CryptoService/Encrypt2", "/x/y", "/", "", "/keymesh.v1.CryptoService/"] {
            assert_eq!(rpc_name(unknown), (OTHER, OTHER), "{unknown:?}");
        }
    }
}

//! Logs and traces. Spans always get real trace ids (an SDK tracer provider runs even without an exporter),
//! so audit events and logs can carry the trace id; spans are exported over OTLP/gRPC only when an endpoint
//! is configured. Trace context crosses every hop as W3C `traceparent`.

use opentelemetry::{
    global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{Resource, propagation::TraceContextPropagator, trace::SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{EnvFilter, Layer as _, layer::SubscriberExt, util::SubscriberInitExt};

use crate::{MeshError, config::MeshParams};

/// Keeps the tracer provider alive; flushes spans when dropped via [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// Flushes and stops exporting.
    pub fn shutdown(self) {
        let _ = self.provider.shutdown();
    }
}

/// Sets up logging to stderr and tracing. Must run inside the tokio runtime (the OTLP exporter connects
/// lazily through tonic).
pub fn init(params: &MeshParams) -> Result<Telemetry, MeshError> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder().with_service_name(params.service.as_str()).build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource);
    if let Some(endpoint) = &params.otlp_endpoint {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(endpoint)
            .with_timeout(std::time::Duration::from_secs(5))
            .build()
            .map_err(|e| MeshError::Telemetry(e.to_string()))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    global::set_tracer_provider(provider.clone());
    // Spans are traced whatever the log level, so trace ids (in audit events, in propagation) never depend
    // on how verbose the logs are.
    let otel = tracing_opentelemetry::layer()
        .with_tracer(provider.tracer(params.service.as_str()))
        .with_filter(tracing_subscriber::filter::LevelFilter::INFO);
    let filter = std::env::var("KEYMESH_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(quiet_sdks(&f)).ok())
        .or_else(|| EnvFilter::try_new(quiet_sdks(&params.log_level)).ok())
        .unwrap_or_else(|| EnvFilter::new(quiet_sdks("info")));
    let registry = tracing_subscriber::registry().with(otel);
    let result = if params.json_logs {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter))
            .try_init()
    } else {
        registry.with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter)).try_init()
    };
    result.map_err(|e| MeshError::Telemetry(e.to_string()))?;
    Ok(Telemetry { provider })
}

/// The Vault client logs every refused or failed request at ERROR level, in its own words; keymesh logs the
/// same failure once, classified and named after the keyring member. Its logs are off unless the filter
/// names the crates.
fn quiet_sdks(filter: &str) -> String {
    let mut filter = if filter.trim().is_empty() { "info".to_owned() } else { filter.to_owned() };
    for target in ["vaultrs", "rustify"] {
        if !filter.contains(target) {
            filter.push(',');
            filter.push_str(target);
            filter.push_str("=off");
        }
    }
    filter
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(key.as_bytes()), http::HeaderValue::from_str(&value))
        {
            self.0.insert(name, value);
        }
    }
}

/// Writes the current span's context into outgoing headers.
pub fn inject_current_context(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// The server span of an incoming request, parented on the caller's `traceparent` when present.
pub fn server_span(request: &http::Request<()>) -> tracing::Span {
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(request.headers())));
    let span = tracing::info_span!("grpc.request", otel.kind = "server", rpc.method = %request.uri().path());
    // Fails only if the span is disabled by the filter; then there is nothing to parent.
    let _ = span.set_parent(parent);
    span
}

/// The current trace id (32 hex digits), if the current span is traced.
pub fn current_trace_id() -> Option<String> {
    let cx = tracing::Span::current().context();
    let span_context = cx.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::quiet_sdks;

    #[test]
    fn sdk_logs_are_off_unless_asked_for() {
        assert_eq!(quiet_sdks("info"), "info,vaultrs=off,rustify=off");
        assert_eq!(quiet_sdks(""), "info,vaultrs=off,rustify=off");
        assert_eq!(quiet_sdks("vaultrs=debug"), "vaultrs=debug,rustify=off");
    }
}

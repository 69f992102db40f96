//! Logs, traces and metrics. Spans always get real trace ids (an SDK tracer provider runs even without an exporter),
//! so audit events and logs can carry the trace id; spans are exported over OTLP when an endpoint is
//! configured, by `telemetry.otlp_endpoint` or the standard `OTEL_*` variables (gRPC or HTTP/protobuf, plain
//! or TLS with a custom CA, extra headers, a sampler). Trace context crosses every hop as W3C `traceparent`.
//! JSON log lines carry the trace and span ids of the span they were written in. Metrics are served in the
//! Prometheus text format and pushed over OTLP by the same variables.

use std::{io::IsTerminal, net::SocketAddr, time::Duration};

use opentelemetry::{
    KeyValue, global,
    propagation::{Extractor, Injector},
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::{
    Resource,
    metrics::{PeriodicReader, SdkMeterProvider},
    propagation::TraceContextPropagator,
    trace::{ParentBasedSampler, Sampler, SdkTracerProvider},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{
    EnvFilter, Layer as _,
    fmt::{FmtContext, FormatEvent, FormatFields, format::Writer},
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

use crate::{MeshError, config::MeshParams, readiness::Readiness};

/// Keeps the tracer and meter providers alive (flushed by [`Telemetry::shutdown`]) and holds the registry the
/// Prometheus endpoint reads.
pub struct Telemetry {
    tracer: SdkTracerProvider,
    /// None when nothing reads metrics: every instrument is then the API's no-op.
    meter: Option<SdkMeterProvider>,
    registry: prometheus::Registry,
}

impl Telemetry {
    /// Flushes and stops exporting.
    pub fn shutdown(self) {
        let _ = self.tracer.shutdown();
        if let Some(meter) = self.meter {
            let _ = meter.shutdown();
        }
    }

    /// Serves the admin endpoints, plain HTTP off the mTLS port (the Linkerd and Vault convention: a scraper
    /// or a kubelet needs no client certificate): `/metrics` in the Prometheus text format, `/livez` (the
    /// process runs), `/startupz` (200 once it serves, whatever its dependencies say: a startup probe that read
    /// `/readyz` would kill, in a loop, every pod that starts during an outage of something they all share) and
    /// `/readyz` (200 or 503, a line per check). Returns the bound address; a taken port is an
    /// error naming it.
    pub async fn serve_admin(&self, addr: SocketAddr, readiness: Readiness) -> Result<SocketAddr, MeshError> {
        let listener = crate::server::bind(addr).await?;
        let bound = listener.local_addr().map_err(|source| MeshError::Bind { addr, source })?;
        let registry = self.registry.clone();
        let app = axum::Router::new()
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let registry = registry.clone();
                    async move { prometheus_text(&registry) }
                }),
            )
            .route("/livez", axum::routing::get(|| async { "ok\n" }))
            .route("/startupz", {
                let readiness = readiness.clone();
                axum::routing::get(move || {
                    let started = readiness.is_serving();
                    async move {
                        if started {
                            (http::StatusCode::OK, "ok serving\n")
                        } else {
                            (http::StatusCode::SERVICE_UNAVAILABLE, "failed serving: still starting\n")
                        }
                    }
                })
            })
            .route(
                "/readyz",
                axum::routing::get(move || {
                    let readiness = readiness.clone();
                    async move {
                        let (ready, body) = readiness.report().await;
                        let status = if ready { http::StatusCode::OK } else { http::StatusCode::SERVICE_UNAVAILABLE };
                        (status, body)
                    }
                }),
            );
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                tracing::error!(error = %e, "the metrics endpoint stopped");
            }
        });
        tracing::debug!(%bound, "metrics on http://{bound}/metrics");
        Ok(bound)
    }
}

/// The registry's metrics in the Prometheus text format (0.0.4).
fn prometheus_text(registry: &prometheus::Registry) -> axum::response::Response {
    use axum::response::IntoResponse;
    use prometheus::Encoder;
    let encoder = prometheus::TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => ([(http::header::CONTENT_TYPE, encoder.format_type().to_owned())], body).into_response(),
        Err(e) => (http::StatusCode::INTERNAL_SERVER_ERROR, format!("cannot encode the metrics: {e}")).into_response(),
    }
}

/// How spans leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// OTLP/gRPC (the default).
    Grpc,
    /// OTLP over HTTP with protobuf bodies.
    HttpProtobuf,
}

/// The two signals keymesh exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Spans.
    Traces,
    /// Metric points.
    Metrics,
}

impl Signal {
    /// The signal's path on an OTLP/HTTP collector.
    fn http_path(self) -> &'static str {
        match self {
            Self::Traces => "/v1/traces",
            Self::Metrics => "/v1/metrics",
        }
    }

    /// The signal's own variable for `what` (ENDPOINT, PROTOCOL, …), then the general one.
    fn variables(self, what: &str) -> [&'static str; 2] {
        match (self, what) {
            (Self::Traces, "ENDPOINT") => ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"],
            (Self::Traces, "PROTOCOL") => ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"],
            (Self::Traces, "HEADERS") => ["OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"],
            (Self::Traces, "CERTIFICATE") => {
                ["OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"]
            }
            (Self::Traces, _) => ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"],
            (Self::Metrics, "ENDPOINT") => ["OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"],
            (Self::Metrics, "PROTOCOL") => ["OTEL_EXPORTER_OTLP_METRICS_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"],
            (Self::Metrics, "HEADERS") => ["OTEL_EXPORTER_OTLP_METRICS_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"],
            (Self::Metrics, "CERTIFICATE") => {
                ["OTEL_EXPORTER_OTLP_METRICS_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"]
            }
            (Self::Metrics, _) => ["OTEL_EXPORTER_OTLP_METRICS_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"],
        }
    }
}

/// Where and how one signal is exported, from `telemetry.otlp_endpoint` and the `OTEL_EXPORTER_OTLP_*`
/// variables (a signal's own variable before the general one, as the OpenTelemetry specification says).
/// Its `Debug` shows header names only: their values are often API keys.
#[derive(Clone, PartialEq)]
pub struct OtlpExport {
    /// The full URL the signal is sent to (for HTTP, with its `/v1/<signal>` path).
    pub endpoint: String,
    /// gRPC or HTTP/protobuf.
    pub protocol: Protocol,
    /// Extra request headers (an API key, a tenant header).
    pub headers: Vec<(String, String)>,
    /// PEM of the CA that signs the collector's certificate, when it is not a public one.
    pub ca_pem: Option<Vec<u8>>,
    /// How long one export may take.
    pub timeout: Duration,
}

impl std::fmt::Debug for OtlpExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OtlpExport")
            .field("endpoint", &self.endpoint)
            .field("protocol", &self.protocol)
            .field("headers", &self.headers.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>())
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<PEM>"))
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// What the `OTEL_*` variables and the configuration ask of traces and metrics.
#[derive(Debug, Clone, PartialEq)]
pub struct TelemetrySettings {
    /// Where spans go; None: nowhere (no endpoint, or `OTEL_SDK_DISABLED=true`).
    pub traces: Option<OtlpExport>,
    /// Where metric points are pushed; None: only the Prometheus endpoint has them.
    pub metrics: Option<OtlpExport>,
    /// `OTEL_METRIC_EXPORT_INTERVAL`: how often metrics are pushed (default 60 s).
    pub metric_interval: Duration,
    /// `OTEL_TRACES_SAMPLER[_ARG]`; parent-based always-on by default.
    pub sampler: SamplerChoice,
    /// `OTEL_SERVICE_NAME`, else the service's own name.
    pub service_name: String,
    /// `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: Vec<(String, String)>,
}

/// A sampler the specification names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum SamplerChoice {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio` with its ratio.
    Ratio(f64),
    /// `parentbased_always_on` (the default).
    ParentBasedAlwaysOn,
    /// `parentbased_always_off`.
    ParentBasedAlwaysOff,
    /// `parentbased_traceidratio` with its ratio.
    ParentBasedRatio(f64),
}

impl SamplerChoice {
    /// The share of traces it records, and whether it follows the caller's decision.
    fn rule(self) -> (f64, bool) {
        match self {
            Self::AlwaysOn => (1.0, false),
            Self::AlwaysOff => (0.0, false),
            Self::Ratio(ratio) => (ratio, false),
            Self::ParentBasedAlwaysOn => (1.0, true),
            Self::ParentBasedAlwaysOff => (0.0, true),
            Self::ParentBasedRatio(ratio) => (ratio, true),
        }
    }
}

/// The SDK's sampler. keymesh applies the configured rule itself, before it builds a call's span
/// (`rpc_telemetry`), so that a call the rule drops costs no span at all: every span the SDK then sees as a
/// root or under a caller's context was chosen to be recorded. Spans inside a call (KMS calls, client spans)
/// follow their parent, recorded or not.
fn sdk_sampler() -> ParentBasedSampler {
    Sampler::parent_based(Sampler::AlwaysOn).with_remote_parent_not_sampled(Sampler::AlwaysOn)
}

/// A variable's value that cannot be used: the one-line error names the variable.
fn bad(variable: &str, reason: impl std::fmt::Display) -> MeshError {
    MeshError::Telemetry(format!("{variable}: {reason}"))
}

/// The first of `names` that is set (and not blank), with its name.
fn first_set(env: &dyn Fn(&str) -> Option<String>, names: &[&'static str]) -> Option<(&'static str, String)> {
    names.iter().find_map(|name| env(name).filter(|v| !v.trim().is_empty()).map(|v| (*name, v.trim().to_owned())))
}

/// `key=value` pairs separated by commas, values percent-decoded (the W3C Baggage format the specification
/// uses for headers and resource attributes). An error names the entry by its position, never its text: a
/// header's value is often an API key.
fn key_values(variable: &str, value: &str) -> Result<Vec<(String, String)>, MeshError> {
    let mut out = Vec::new();
    for (n, pair) in value.split(',').map(str::trim).filter(|p| !p.is_empty()).enumerate() {
        let entry = n + 1;
        let Some((key, value)) = pair.split_once('=') else {
            return Err(bad(variable, format!("entry {entry} is not key=value")));
        };
        let key = key.trim();
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(bad(variable, format!("entry {entry} has no valid key")));
        }
        let decoded = percent_encoding::percent_decode_str(value.trim())
            .decode_utf8()
            .map_err(|_| bad(variable, format!("the value of {key} is not UTF-8 once percent-decoded")))?;
        out.push((key.to_owned(), decoded.into_owned()));
    }
    Ok(out)
}

fn ratio(variable: &str, arg: Option<&str>) -> Result<f64, MeshError> {
    let Some(arg) = arg else { return Ok(1.0) };
    match arg.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(bad(variable, format!("{arg:?} is not a ratio between 0 and 1"))),
    }
}

/// Reads the telemetry settings from `params` and the environment (`env`, a lookup, so tests need not touch
/// the process's variables).
pub fn settings(params: &MeshParams, env: &dyn Fn(&str) -> Option<String>) -> Result<TelemetrySettings, MeshError> {
    let disabled = match first_set(env, &["OTEL_SDK_DISABLED"]) {
        None => false,
        Some((_, v)) if v.eq_ignore_ascii_case("true") => true,
        Some((_, v)) if v.eq_ignore_ascii_case("false") => false,
        Some((name, v)) => return Err(bad(name, format!("{v:?} is neither true nor false"))),
    };
    let arg = first_set(env, &["OTEL_TRACES_SAMPLER_ARG"]).map(|(_, v)| v);
    let sampler = match first_set(env, &["OTEL_TRACES_SAMPLER"]) {
        None => SamplerChoice::ParentBasedAlwaysOn,
        Some((name, v)) => match v.as_str() {
            "always_on" => SamplerChoice::AlwaysOn,
            "always_off" => SamplerChoice::AlwaysOff,
            "traceidratio" => SamplerChoice::Ratio(ratio("OTEL_TRACES_SAMPLER_ARG", arg.as_deref())?),
            "parentbased_always_on" => SamplerChoice::ParentBasedAlwaysOn,
            "parentbased_always_off" => SamplerChoice::ParentBasedAlwaysOff,
            "parentbased_traceidratio" => {
                SamplerChoice::ParentBasedRatio(ratio("OTEL_TRACES_SAMPLER_ARG", arg.as_deref())?)
            }
            other => {
                return Err(bad(
                    name,
                    format!(
                        "{other:?} is not one of always_on, always_off, traceidratio, parentbased_always_on, \
                         parentbased_always_off, parentbased_traceidratio"
                    ),
                ));
            }
        },
    };
    let service_name =
        first_set(env, &["OTEL_SERVICE_NAME"]).map_or_else(|| params.service.as_str().to_owned(), |(_, v)| v);
    let resource_attributes = match first_set(env, &["OTEL_RESOURCE_ATTRIBUTES"]) {
        Some((name, v)) => key_values(name, &v)?,
        None => Vec::new(),
    };

    let metric_interval = match first_set(env, &["OTEL_METRIC_EXPORT_INTERVAL"]) {
        Some((name, v)) => match v.parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => return Err(bad(name, format!("{v:?} is not a positive number of milliseconds"))),
        },
        None => Duration::from_secs(60),
    };
    let traces = otlp_export(params, env, Signal::Traces)?.filter(|_| !disabled);
    let metrics = otlp_export(params, env, Signal::Metrics)?.filter(|_| !disabled);
    Ok(TelemetrySettings { traces, metrics, metric_interval, sampler, service_name, resource_attributes })
}

/// Where `signal` goes, if anywhere. The configuration file's `telemetry.otlp_endpoint` and the general
/// variable name a collector, to which HTTP adds the signal's path; the signal's own variable is used as it is.
fn otlp_export(
    params: &MeshParams,
    env: &dyn Fn(&str) -> Option<String>,
    signal: Signal,
) -> Result<Option<OtlpExport>, MeshError> {
    let [own, general] = signal.variables("PROTOCOL");
    let protocol = match first_set(env, &[own, general]) {
        None => Protocol::Grpc,
        Some((_, v)) if v == "grpc" => Protocol::Grpc,
        Some((_, v)) if v == "http/protobuf" => Protocol::HttpProtobuf,
        Some((name, v)) => return Err(bad(name, format!("{v:?} is not supported; use grpc or http/protobuf"))),
    };
    let with_path = |base: String| match protocol {
        Protocol::Grpc => base,
        Protocol::HttpProtobuf => format!("{}{}", base.trim_end_matches('/'), signal.http_path()),
    };
    let [own, general] = signal.variables("ENDPOINT");
    let endpoint = match (&params.otlp_endpoint, first_set(env, &[own])) {
        (Some(configured), _) => Some(("telemetry.otlp_endpoint", with_path(configured.clone()))),
        (None, Some(signal_own)) => Some(signal_own),
        (None, None) => first_set(env, &[general]).map(|(name, base)| (name, with_path(base))),
    };
    let [own, general] = signal.variables("HEADERS");
    let headers = match first_set(env, &[own, general]) {
        Some((name, v)) => key_values(name, &v)?,
        None => Vec::new(),
    };
    let [own, general] = signal.variables("CERTIFICATE");
    let ca_pem = match first_set(env, &[own, general]) {
        Some((name, path)) => {
            let pem = std::fs::read(&path).map_err(|e| bad(name, format!("cannot read {path}: {e}")))?;
            if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
                return Err(bad(name, format!("{path} holds no PEM certificate")));
            }
            Some(pem)
        }
        None => None,
    };
    let [own, general] = signal.variables("TIMEOUT");
    let timeout = match first_set(env, &[own, general]) {
        Some((name, v)) => match v.parse::<u64>() {
            Ok(ms) if ms > 0 => Duration::from_millis(ms),
            _ => return Err(bad(name, format!("{v:?} is not a positive number of milliseconds"))),
        },
        None => Duration::from_secs(10),
    };
    let Some((name, url)) = endpoint else { return Ok(None) };
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    if !scheme_ok || url.parse::<http::Uri>().map_or(true, |u| u.host().is_none()) {
        return Err(bad(name, format!("{url:?} is not an http:// or https:// URL")));
    }
    Ok(Some(OtlpExport { endpoint: url, protocol, headers, ca_pem, timeout }))
}

fn export_failed(export: &OtlpExport, e: &dyn std::fmt::Display) -> MeshError {
    MeshError::Telemetry(format!("OTLP exporter to {}: {e}", export.endpoint))
}

/// An OTLP/gRPC exporter builder set up as `export` says: endpoint, timeout, headers, and TLS (public roots and
/// the configured CA) for `https://`.
fn over_grpc<B: WithExportConfig + WithTonicConfig>(builder: B, export: &OtlpExport) -> Result<B, MeshError> {
    let mut metadata = tonic::metadata::MetadataMap::new();
    for (key, value) in &export.headers {
        let key = tonic::metadata::MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes())
            .map_err(|e| export_failed(export, &e))?;
        metadata.insert(key, value.parse().map_err(|e| export_failed(export, &e))?);
    }
    let mut builder = builder.with_endpoint(&export.endpoint).with_timeout(export.timeout).with_metadata(metadata);
    if export.endpoint.starts_with("https://") {
        let mut tls = tonic::transport::ClientTlsConfig::new().with_webpki_roots();
        if let Some(pem) = &export.ca_pem {
            tls = tls.ca_certificate(tonic::transport::Certificate::from_pem(pem));
        }
        builder = builder.with_tls_config(tls);
    }
    Ok(builder)
}

/// An OTLP/HTTP (protobuf) exporter builder set up as `export` says.
fn over_http<B: WithExportConfig + WithHttpConfig>(builder: B, export: &OtlpExport) -> Result<B, MeshError> {
    let mut builder = builder
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(&export.endpoint)
        .with_timeout(export.timeout)
        .with_headers(export.headers.iter().cloned().collect());
    if let Some(pem) = export.ca_pem.clone() {
        builder = builder.with_http_client(http_client_trusting(pem, export.timeout)?);
    }
    Ok(builder)
}

fn span_exporter(export: &OtlpExport) -> Result<opentelemetry_otlp::SpanExporter, MeshError> {
    let built = match export.protocol {
        Protocol::Grpc => over_grpc(opentelemetry_otlp::SpanExporter::builder().with_tonic(), export)?.build(),
        Protocol::HttpProtobuf => over_http(opentelemetry_otlp::SpanExporter::builder().with_http(), export)?.build(),
    };
    built.map_err(|e| export_failed(export, &e))
}

fn metric_exporter(export: &OtlpExport) -> Result<opentelemetry_otlp::MetricExporter, MeshError> {
    let built = match export.protocol {
        Protocol::Grpc => over_grpc(opentelemetry_otlp::MetricExporter::builder().with_tonic(), export)?.build(),
        Protocol::HttpProtobuf => over_http(opentelemetry_otlp::MetricExporter::builder().with_http(), export)?.build(),
    };
    built.map_err(|e| export_failed(export, &e))
}

/// A blocking HTTP client (what the SDK's batch exporter thread needs) that also trusts `ca_pem`. Built on a
/// thread of its own: a blocking client cannot be made inside the async runtime.
fn http_client_trusting(ca_pem: Vec<u8>, timeout: Duration) -> Result<reqwest::blocking::Client, MeshError> {
    let failed = |e: String| bad("OTEL_EXPORTER_OTLP_CERTIFICATE", e);
    std::thread::spawn(move || {
        let ca = reqwest::Certificate::from_pem(&ca_pem).map_err(|e| e.to_string())?;
        reqwest::blocking::Client::builder()
            .add_root_certificate(ca)
            .timeout(timeout)
            .build()
            .map_err(|e| e.to_string())
    })
    .join()
    .map_err(|_| failed("building the HTTP client failed".into()))?
    .map_err(failed)
}

/// Sets up logging to stderr, tracing and metrics as `settings` (from [`settings`]) say. Must run inside the
/// tokio runtime (the OTLP/gRPC exporter connects lazily through tonic).
pub fn init(params: &MeshParams, settings: &TelemetrySettings, prometheus: bool) -> Result<Telemetry, MeshError> {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let resource = Resource::builder()
        .with_service_name(settings.service_name.clone())
        .with_attributes(settings.resource_attributes.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
        .build();
    let mut builder = SdkTracerProvider::builder().with_resource(resource.clone()).with_sampler(sdk_sampler());
    if let Some(export) = &settings.traces {
        builder = builder.with_batch_exporter(span_exporter(export)?);
    }
    let provider = builder.build();
    // Metrics: read by Prometheus at the metrics endpoint, pushed over OTLP when a collector is configured,
    // and not recorded at all when neither is (the instruments stay the API's no-ops).
    let registry = prometheus::Registry::new();
    let meter = if prometheus || settings.metrics.is_some() {
        let mut meters = SdkMeterProvider::builder().with_resource(resource);
        if prometheus {
            let reader = opentelemetry_prometheus::exporter()
                .with_registry(registry.clone())
                .scope_info_enabled(false)
                .build()
                .map_err(|e| MeshError::Telemetry(format!("Prometheus exporter: {e}")))?;
            meters = meters.with_reader(reader);
        }
        if let Some(export) = &settings.metrics {
            let reader =
                PeriodicReader::builder(metric_exporter(export)?).with_interval(settings.metric_interval).build();
            meters = meters.with_reader(reader);
        }
        let meter = meters.build();
        global::set_meter_provider(meter.clone());
        Some(meter)
    } else {
        None
    };
    global::set_tracer_provider(provider.clone());
    // Spans are traced whatever the log level, so trace ids (in audit events, in propagation) never depend
    // on how verbose the logs are. With nowhere to export them, no span is built at all: calls carry a bare
    // trace context instead (see `rpc_telemetry`).
    let (ratio, parent_based) = settings.sampler.rule();
    crate::rpc_telemetry::record_spans(settings.traces.is_some(), ratio, parent_based);
    let otel = settings.traces.is_some().then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(params.service.as_str()))
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO)
    });
    let filter = std::env::var("KEYMESH_LOG")
        .ok()
        .and_then(|f| EnvFilter::try_new(quiet_sdks(&f)).ok())
        .or_else(|| EnvFilter::try_new(quiet_sdks(&params.log_level)).ok())
        .unwrap_or_else(|| EnvFilter::new(quiet_sdks("info")));
    let subscriber = tracing_subscriber::registry().with(otel);
    // Colour codes only for a person at a terminal: a file or a log collector gets plain text.
    let ansi = std::io::stderr().is_terminal();
    let result = if params.json_logs {
        let json = tracing_subscriber::fmt::format().json();
        subscriber
            .with(
                tracing_subscriber::fmt::layer()
                    .event_format(WithTraceIds(json))
                    .fmt_fields(tracing_subscriber::fmt::format::JsonFields::new())
                    .with_ansi(false)
                    .with_writer(std::io::stderr)
                    .with_filter(filter),
            )
            .try_init()
    } else {
        subscriber
            .with(tracing_subscriber::fmt::layer().with_ansi(ansi).with_writer(std::io::stderr).with_filter(filter))
            .try_init()
    };
    result.map_err(|e| MeshError::Telemetry(e.to_string()))?;
    Ok(Telemetry { tracer: provider, meter, registry })
}

/// The JSON log format with the current span's `trace_id` and `span_id` first, so a log line leads to its
/// trace. The OpenTelemetry layer makes a span's context current while the span is entered.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let cx = opentelemetry::Context::current();
        let span = cx.span();
        let span_context = span.span_context();
        if !span_context.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => {
                let separator = if rest.starts_with('}') { "" } else { "," };
                write!(
                    writer,
                    "{{\"trace_id\":\"{}\",\"span_id\":\"{}\"{separator}{rest}",
                    span_context.trace_id(),
                    span_context.span_id()
                )
            }
            None => writer.write_str(&line),
        }
    }
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

/// Reads W3C trace context from request headers.
pub(crate) struct HeaderExtractor<'a>(pub(crate) &'a http::HeaderMap);

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

/// The trace context of the work under way: the current span's, or, when calls get no spans, the bare context
/// the call was served under.
pub(crate) fn current_context() -> opentelemetry::Context {
    let of_span = tracing::Span::current().context();
    if of_span.span().span_context().is_valid() { of_span } else { opentelemetry::Context::current() }
}

/// Writes the current trace context into outgoing headers.
pub fn inject_current_context(headers: &mut http::HeaderMap) {
    let cx = current_context();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut HeaderInjector(headers)));
}

/// The current trace id (32 hex digits), if the work under way belongs to a trace.
pub fn current_trace_id() -> Option<String> {
    let cx = current_context();
    let span_context = cx.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{ServiceName, config::ConfigSource};

    fn params(otlp_endpoint: Option<&str>) -> MeshParams {
        let source = ConfigSource::load(None, &BTreeMap::new()).unwrap();
        let raw = source.top_level(crate::config::RawTransport::KEYS).unwrap();
        let mut params = MeshParams::from_raw(ServiceName::CryptoService, &raw).unwrap();
        params.otlp_endpoint = otlp_endpoint.map(str::to_owned);
        params
    }

    fn settings(otlp_endpoint: Option<&str>, vars: &[(&str, &str)]) -> Result<TelemetrySettings, String> {
        let vars: BTreeMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        super::settings(&params(otlp_endpoint), &|name| vars.get(name).cloned()).map_err(|e| e.to_string())
    }

    #[test]
    fn nothing_is_exported_without_an_endpoint() {
        let s = settings(None, &[]).unwrap();
        assert_eq!(s.traces, None);
        assert_eq!(s.sampler, SamplerChoice::ParentBasedAlwaysOn);
        assert_eq!(s.service_name, "crypto-service");
    }

    #[test]
    fn the_standard_variables_choose_endpoint_protocol_and_headers() {
        let grpc = settings(None, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")]).unwrap();
        let export = grpc.traces.unwrap();
        assert_eq!((export.endpoint.as_str(), export.protocol), ("http://collector:4317", Protocol::Grpc));

        let http = settings(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=abc%20def, x-tenant=ops"),
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ],
        )
        .unwrap();
        assert_eq!(
            http.metrics.as_ref().map(|m| m.endpoint.as_str()),
            Some("http://collector:4318/v1/metrics"),
            "each signal gets its own path"
        );
        let http = http.traces.unwrap();
        assert_eq!(http.endpoint, "http://collector:4318/v1/traces", "the general variable gets the signal's path");
        assert_eq!(http.protocol, Protocol::HttpProtobuf);
        assert_eq!(http.headers, vec![("api-key".into(), "abc def".into()), ("x-tenant".into(), "ops".into())]);
        assert_eq!(http.timeout, Duration::from_millis(2500));

        // A signal's own variable is used as it is, and wins over the general one; the file wins over both.
        let signal = settings(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
                ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4318/custom"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        )
        .unwrap();
        assert_eq!(signal.traces.unwrap().endpoint, "http://b:4318/custom");
        let file = settings(Some("http://c:4317"), &[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317")]).unwrap();
        assert_eq!(file.traces.unwrap().endpoint, "http://c:4317");
        let file_http = settings(Some("http://c:4318"), &[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")]).unwrap();
        assert_eq!(file_http.traces.unwrap().endpoint, "http://c:4318/v1/traces", "the file names a collector");
        assert_eq!(file_http.metrics.unwrap().endpoint, "http://c:4318/v1/metrics");

        let off = settings(Some("http://c:4317"), &[("OTEL_SDK_DISABLED", "TRUE")]).unwrap();
        assert_eq!(off.traces, None);
    }

    #[test]
    fn sampler_service_name_and_resource() {
        let s = settings(
            None,
            &[
                ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
                ("OTEL_TRACES_SAMPLER_ARG", "0.01"),
                ("OTEL_SERVICE_NAME", "crypto-eu-1"),
                ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,k8s.namespace.name=keymesh"),
            ],
        )
        .unwrap();
        assert_eq!(s.sampler, SamplerChoice::ParentBasedRatio(0.01));
        assert_eq!(s.service_name, "crypto-eu-1");
        assert_eq!(s.resource_attributes.len(), 2);
    }

    #[test]
    fn header_values_stay_out_of_errors_and_debug_output() {
        let error = settings(
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317"),
                ("OTEL_EXPORTER_OTLP_HEADERS", "authorization: s3cr3t"),
            ],
        )
        .unwrap_err();
        assert!(error.contains("OTEL_EXPORTER_OTLP_HEADERS") && !error.contains("s3cr3t"), "{error}");
        let ok = settings(
            None,
            &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x:4317"), ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=s3cr3t")],
        )
        .unwrap();
        let printed = format!("{ok:?}");
        assert!(printed.contains("api-key") && !printed.contains("s3cr3t"), "{printed}");
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (vars, variable) in [
            (vec![("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")], "OTEL_EXPORTER_OTLP_PROTOCOL"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (
                vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x"), ("OTEL_EXPORTER_OTLP_HEADERS", "novalue")],
                "OTEL_EXPORTER_OTLP_HEADERS",
            ),
            (vec![("OTEL_EXPORTER_OTLP_CERTIFICATE", "/nonexistent/ca.pem")], "OTEL_EXPORTER_OTLP_CERTIFICATE"),
            (vec![("OTEL_EXPORTER_OTLP_TIMEOUT", "soon")], "OTEL_EXPORTER_OTLP_TIMEOUT"),
            (vec![("OTEL_TRACES_SAMPLER", "sometimes")], "OTEL_TRACES_SAMPLER"),
            (
                vec![("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "2")],
                "OTEL_TRACES_SAMPLER_ARG",
            ),
            (vec![("OTEL_SDK_DISABLED", "yes")], "OTEL_SDK_DISABLED"),
            (vec![("OTEL_RESOURCE_ATTRIBUTES", "=x")], "OTEL_RESOURCE_ATTRIBUTES"),
        ] {
            let error = settings(None, &vars).unwrap_err();
            assert!(error.contains(variable), "{vars:?}: {error}");
            assert!(!error.contains('\n'), "one line: {error}");
        }
    }

    #[test]
    fn sdk_logs_are_off_unless_asked_for() {
        assert_eq!(quiet_sdks("info"), "info,vaultrs=off,rustify=off");
        assert_eq!(quiet_sdks(""), "info,vaultrs=off,rustify=off");
        assert_eq!(quiet_sdks("vaultrs=debug"), "vaultrs=debug,rustify=off");
    }
}

//! The audit event every service records, the durable spool it is written to before the call is answered,
//! and the shipper that streams spooled events to audit-service.
//!
//! A call's event is committed to the local spool (fsynced, in group commits) before the call returns; in
//! strict mode, the default, a call whose event cannot be spooled fails instead of being answered. A
//! background task reads the spool and ships it in batches over one `Append` stream, moving the spool's
//! cursor only when audit-service acknowledges a batch; after a reconnect or a restart it re-sends from the
//! cursor and audit-service drops what it already stored (by event id). So an outage of audit-service, or
//! a crash of the emitting process, loses no acknowledged call's event and stores none twice.

pub mod config;
mod refusals;
pub mod spool;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

pub use config::{AuditMode, AuditParams, RawAudit};
use keymesh_mesh::client::MeshChannel;
use keymesh_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use tokio::sync::mpsc;

pub use spool::SpoolError;
use spool::{SpoolReader, SpoolWriter};

/// Events per `Append` batch, at most: the most audit-service takes in one. Under load every batch is full, and
/// audit-service's cost per batch (a transaction, its commit's fsync, the head of the chain, the duplicate
/// check) is shared by that many events.
const BATCH_MAX: usize = 1000;
/// How long the shipper lets events gather after the spool wakes it.
const BATCH_LINGER: Duration = Duration::from_millis(20);
/// How long to wait for an acknowledgement.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts an event for `operation`, filled with a fresh id, the time and the current trace id.
fn event(service: &str, operation: &str) -> pb::AuditEvent {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    pb::AuditEvent {
        event_id: uuid::Uuid::now_v7().to_string(),
        time: Some(prost_types::Timestamp { seconds: now.as_secs() as i64, nanos: now.subsec_nanos() as i32 }),
        service: service.to_owned(),
        operation: operation.to_owned(),
        trace_id: keymesh_mesh::telemetry::current_trace_id().unwrap_or_default(),
        request_id: keymesh_mesh::request_id::current().unwrap_or_default(),
        fips_mode: pb::FipsMode::Disabled as i32,
        ..Default::default()
    }
}

/// Fills the outcome fields of an event from a call's result.
fn set_outcome<T>(event: &mut pb::AuditEvent, result: &Result<T, tonic::Status>, started: Instant) {
    event.latency_micros = started.elapsed().as_micros() as u64;
    match result {
        Ok(_) => event.outcome = pb::Outcome::Success as i32,
        Err(status) => {
            event.status_code = status.code() as i32;
            event.reason = bounded_to(status.message(), MAX_REASON);
            event.outcome = match status.code() {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => pb::Outcome::Denied as i32,
                _ => pb::Outcome::Failed as i32,
            };
        }
    }
}

/// Longest string field, in bytes, an event carries: events stay small and within what audit-service accepts
/// (1024 bytes a field) whatever a caller sent, in any script.
const MAX_FIELD: usize = 256;
/// Longest reason, in bytes.
const MAX_REASON: usize = 512;

fn bounded(value: &str) -> String {
    bounded_to(value, MAX_FIELD)
}

/// `value` without control characters, cut on a character boundary to at most `max` bytes.
fn bounded_to(value: &str, max: usize) -> String {
    let mut out = String::new();
    for c in value.chars().filter(|c| !c.is_control()) {
        if out.len() + c.len_utf8() > max {
            break;
        }
        out.push(c);
    }
    out
}

/// One audit event filled in while a request runs, recorded when it finishes.
pub struct AuditScope {
    event: pb::AuditEvent,
    started: Instant,
}

impl AuditScope {
    /// Starts the event of one call.
    pub fn start(service: &str, operation: &str) -> Self {
        Self { event: event(service, operation), started: Instant::now() }
    }

    /// Who called, for which tenant.
    pub fn caller(&mut self, tenant: &str, identity: &str) {
        self.event.tenant_id = bounded(tenant);
        self.event.identity = bounded(identity);
    }

    /// For a caller whose token a token exchange issued: whom the exchange vouched for (`<issuer>:<subject>`).
    pub fn on_behalf_of(&mut self, issuer: &str, subject: &str) {
        self.event.on_behalf_of = bounded(&format!("{issuer}:{subject}"));
    }

    /// What the call operated on.
    pub fn resource(&mut self, key_id: &str, version: u32, algorithm: i32) {
        self.event.resource = bounded(key_id);
        self.event.key_version = version;
        self.event.algorithm = algorithm;
    }

    /// What happened, in words, for a call whose operation and outcome do not say it all (which token family
    /// a refresh continued, what a revocation covered). A failure's status message replaces it.
    pub fn detail(&mut self, text: &str) {
        self.event.reason = bounded(text);
    }

    /// The policy decision's warnings (enforcement WARN, FIPS mode preferred).
    pub fn policy_warnings(&mut self, warnings: &[String]) {
        self.event.policy_warnings = warnings.iter().take(16).map(|w| bounded(w)).collect();
    }

    /// Records, in the trail of the tenant that owns `resource` (a key or an application, by id), that this
    /// call (of another tenant) reached for it. The caller's own event says only NOT_FOUND, as for an id that
    /// does not exist: the caller's auditors must not learn from it that the id is real, while the owner's
    /// learn who tried.
    pub async fn cross_tenant_attempt(&self, sink: &AuditSink, owner_tenant: &str, resource: &str) {
        let mut event = self.event.clone();
        event.event_id = uuid::Uuid::now_v7().to_string();
        event.reason = bounded_to(
            &format!(
                "cross-tenant attempt: a caller of tenant {} named this by its id; it was answered NOT_FOUND",
                event.tenant_id
            ),
            MAX_REASON,
        );
        event.tenant_id = bounded(owner_tenant);
        event.resource = bounded(resource);
        event.outcome = pb::Outcome::Denied as i32;
        event.status_code = tonic::Code::NotFound as i32;
        event.latency_micros = self.started.elapsed().as_micros() as u64;
        let _ = sink.record(event).await;
    }

    /// Records an authorization refusal and hands it back (the refusal stands whether or not its event
    /// could be stored).
    pub async fn deny(mut self, sink: &AuditSink, status: tonic::Status) -> tonic::Status {
        set_outcome(&mut self.event, &Err::<(), _>(status.clone()), self.started);
        let _ = sink.record(self.event).await;
        status
    }

    /// Records the outcome and hands the result back; in strict mode a call whose event could not be stored
    /// fails with UNAVAILABLE instead.
    pub async fn finish<T>(mut self, sink: &AuditSink, result: Result<T, tonic::Status>) -> Result<T, tonic::Status> {
        set_outcome(&mut self.event, &result, self.started);
        sink.record(self.event).await?;
        result
    }
}

/// Where services record events. Cheap to clone.
#[derive(Clone)]
pub struct AuditSink {
    inner: Arc<SinkInner>,
}

struct SinkInner {
    mode: AuditMode,
    /// Stamped on every event: the FIPS mode the decision was made under.
    fips_mode: pb::FipsMode,
    /// None when auditing is off.
    spool: Option<SpoolWriter>,
    /// Events that could not be spooled.
    lost: AtomicU64,
    /// Reads the spool's state, for readiness.
    probe: Option<spool::SpoolProbe>,
    shipper: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Refused authentications, counted per source and method.
    refusals: refusals::RefusalWindows,
}

/// Registers the spool's gauges: what this process answered for but audit-service has not yet acknowledged,
/// `keymesh.audit.spool.unshipped` (bytes), `keymesh.audit.spool.events` and `keymesh.audit.spool.oldest_age`
/// (seconds). They grow while audit-service is away and fall back to zero once shipping catches up. The SDK
/// keeps a callback for the life of the process, so a process opens one spool.
fn register_spool_gauges(probe: spool::SpoolProbe) {
    let meter = opentelemetry::global::meter("keymesh");
    let (bytes, events, oldest) = (probe.clone(), probe.clone(), probe);
    meter
        .u64_observable_gauge("keymesh.audit.spool.unshipped")
        .with_unit("By")
        .with_description("Bytes of audit events spooled but not yet acknowledged by audit-service")
        .with_callback(move |observer| observer.observe(bytes.unshipped(), &[]))
        .build();
    meter
        .u64_observable_gauge("keymesh.audit.spool.events")
        .with_description("Audit events spooled but not yet acknowledged by audit-service")
        .with_callback(move |observer| observer.observe(events.unshipped_events(), &[]))
        .build();
    meter
        .f64_observable_gauge("keymesh.audit.spool.oldest_age")
        .with_unit("s")
        .with_description("How long the oldest audit event not yet acknowledged by audit-service has waited")
        .with_callback(move |observer| observer.observe(oldest.oldest_unshipped_age().as_secs_f64(), &[]))
        .build();
}

impl AuditSink {
    /// Adds the `audit spool` check to `/readyz`: the spool takes events now (always so when auditing is off).
    pub fn report_readiness(&self, readiness: &keymesh_mesh::readiness::Readiness) {
        let probe = self.inner.probe.clone();
        readiness.add("audit spool", move || {
            let problem = probe.as_ref().and_then(spool::SpoolProbe::problem);
            async move { problem.map_or(Ok(()), Err) }
        });
    }

    /// Opens the spool `params` names (events an earlier run left there are shipped first) and starts the
    /// shipper on `channel` to audit-service; every event records `fips_mode`.
    pub fn start(channel: MeshChannel, fips_mode: pb::FipsMode, params: &AuditParams) -> Result<Self, SpoolError> {
        let (spool, shipper) = if params.mode == AuditMode::Off {
            tracing::warn!("audit.mode is off: this service records no audit events");
            (None, None)
        } else {
            let (writer, reader) = spool::open(&spool::SpoolOptions {
                dir: params.spool_dir.clone(),
                max_bytes: params.spool_max_bytes,
                full_wait: params.spool_full_wait,
            })?;
            let probe = reader.probe();
            (Some(writer), Some((tokio::spawn(ship(AuditServiceClient::new(channel), reader)), probe)))
        };
        let probe = shipper.as_ref().map(|(_, probe)| probe.clone());
        let shipper = shipper.map(|(task, probe)| {
            register_spool_gauges(probe);
            task
        });
        let sink = Self {
            inner: Arc::new(SinkInner {
                mode: params.mode,
                fips_mode,
                spool,
                lost: AtomicU64::new(0),
                probe,
                shipper: std::sync::Mutex::new(shipper),
                refusals: refusals::RefusalWindows::new(params.refused_auth_window),
            }),
        };
        if params.mode != AuditMode::Off {
            tokio::spawn(record_ended_refusal_windows(Arc::downgrade(&sink.inner)));
        }
        Ok(sink)
    }

    /// Records a refused authentication of `operation` by the peer `identity` (a missing or invalid token,
    /// or a verifier that cannot hear from token-service): the first of a window at once, the rest of the
    /// window as one event with their count (see [`refusals`]). The refusal stands whether or not its
    /// event could be stored; a summary that cannot be is counted among the lost events.
    pub async fn refused_authentication(&self, service: &str, operation: &str, identity: &str, status: &tonic::Status) {
        if self.inner.spool.is_none() {
            return;
        }
        let refusal = refusals::Refusal { service, operation, identity, status };
        for event in self.inner.refusals.note(&refusal, Instant::now()) {
            let _ = self.record(event).await;
        }
    }

    /// After the server has stopped (every other clone of the sink is gone): ships what is spooled, waiting
    /// at most `deadline`. What is left stays in the spool and is shipped at the next start.
    pub async fn flush(self, deadline: Duration) {
        for summary in self.inner.refusals.sweep(Instant::now(), true) {
            let _ = self.record(summary).await;
        }
        let handle = self.inner.shipper.lock().ok().and_then(|mut h| h.take());
        drop(self);
        if let Some(handle) = handle
            && tokio::time::timeout(deadline, handle).await.is_err()
        {
            tracing::warn!(
                "audit-service did not take every spooled event before shutdown; the rest ships at the next start"
            );
        }
    }

    /// Stores an event durably in the spool. Fails (strict mode only) when it cannot be stored.
    pub async fn record(&self, mut event: pb::AuditEvent) -> Result<(), tonic::Status> {
        let Some(spool) = &self.inner.spool else {
            return Ok(());
        };
        event.fips_mode = self.inner.fips_mode as i32;
        let Err(error) = spool.append(&event).await else {
            return Ok(());
        };
        let lost = self.inner.lost.fetch_add(1, Ordering::Relaxed) + 1;
        if lost.is_power_of_two() {
            tracing::error!(lost, %error, mode = ?self.inner.mode, "audit events could not be spooled");
        }
        match self.inner.mode {
            AuditMode::Strict => Err(tonic::Status::unavailable(format!(
                "this call was not completed because its audit record could not be stored ({error}); retry later"
            ))),
            AuditMode::BestEffort | AuditMode::Off => Ok(()),
        }
    }
}

/// Records the counts of refusal windows as they end, for as long as the sink lives (a weak reference, so
/// that it never keeps the spool open past [`AuditSink::flush`]).
async fn record_ended_refusal_windows(inner: std::sync::Weak<SinkInner>) {
    let Some(tick) = inner.upgrade().map(|i| i.refusals.tick()) else { return };
    loop {
        tokio::time::sleep(tick).await;
        let Some(inner) = inner.upgrade() else { return };
        let sink = AuditSink { inner };
        for summary in sink.inner.refusals.sweep(Instant::now(), false) {
            let _ = sink.record(summary).await;
        }
    }
}

/// Ships the spool to audit-service until the spool closes and is drained.
async fn ship(client: AuditServiceClient<MeshChannel>, mut reader: SpoolReader) {
    let mut batch_id = 0u64;
    let mut backoff = Duration::from_millis(100);
    let mut stream: Option<Connection> = None;
    loop {
        let batch = match reader.read(BATCH_MAX).await {
            Ok(batch) => batch,
            Err(error) => {
                tracing::error!(%error, "cannot read the audit spool; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if batch.events.is_empty() {
            if batch.end > reader.position() {
                // Only damaged frames, already reported: step over them.
                reader.acknowledge(batch.end).await;
            } else if !reader.wait_for_events().await {
                return;
            } else {
                // Woken by the first commit after a quiet spell: let more gather so that one round trip
                // carries them. Under load the next batch has gathered while this one was sent.
                tokio::time::sleep(BATCH_LINGER).await;
            }
            continue;
        }
        loop {
            batch_id += 1;
            let connection = match stream.take() {
                Some(c) => c,
                None => match Connection::open(client.clone()).await {
                    Ok(c) => c,
                    Err(reason) => {
                        tracing::warn!(%reason, waiting_bytes = reader.unshipped(), "audit-service unreachable; events stay spooled");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                        continue;
                    }
                },
            };
            match connection.send(batch_id, batch.events.clone()).await {
                Ok(connection) => {
                    backoff = Duration::from_millis(100);
                    stream = Some(connection);
                    break;
                }
                Err(SendError::Refused(reason)) => {
                    // Retrying cannot help and would hold every later event behind this batch: keep it aside,
                    // for an operator, rather than delete it.
                    match reader.quarantine(&batch.events).await {
                        Ok(path) => {
                            tracing::error!(%reason, events = batch.events.len(), kept = %path.display(), "audit-service refused an audit batch; kept it aside")
                        }
                        Err(error) => {
                            tracing::error!(%reason, %error, "audit-service refused an audit batch that cannot be kept aside; retrying");
                            tokio::time::sleep(backoff).await;
                            continue;
                        }
                    }
                    break;
                }
                Err(SendError::Retry(reason)) => {
                    tracing::warn!(%reason, events = batch.events.len(), "audit batch not acknowledged; will resend");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
        reader.acknowledge(batch.end).await;
        if batch.events.len() < BATCH_MAX {
            // The spool is drained: let the next batch gather rather than send each group commit's few events
            // on its own. audit-service pays a transaction and its fsync per batch; under load this makes the
            // batches full, and no event waits in the spool much longer than the linger.
            tokio::time::sleep(BATCH_LINGER).await;
        }
    }
}

enum SendError {
    /// Worth sending again (network, audit-service restarting).
    Retry(String),
    /// audit-service refused the batch itself.
    Refused(String),
}

/// One open `Append` stream.
struct Connection {
    requests: mpsc::Sender<pb::AppendRequest>,
    responses: tonic::Streaming<pb::AppendResponse>,
}

impl Connection {
    async fn open(mut client: AuditServiceClient<MeshChannel>) -> Result<Self, String> {
        let (requests, rx) = mpsc::channel(4);
        let responses = client
            .append(tokio_stream::wrappers::ReceiverStream::new(rx))
            .await
            .map_err(|s| format!("{}: {}", s.code(), s.message()))?
            .into_inner();
        Ok(Self { requests, responses })
    }

    async fn send(mut self, batch_id: u64, events: Vec<prost::bytes::Bytes>) -> Result<Self, SendError> {
        self.requests
            .send(pb::AppendRequest { batch_id, events })
            .await
            .map_err(|_| SendError::Retry("stream closed".to_owned()))?;
        loop {
            match tokio::time::timeout(ACK_TIMEOUT, self.responses.message()).await {
                Err(_) => return Err(SendError::Retry("acknowledgement timed out".into())),
                Ok(Err(status)) => {
                    let reason = format!("{}: {}", status.code(), status.message());
                    return Err(match status.code() {
                        tonic::Code::InvalidArgument | tonic::Code::PermissionDenied | tonic::Code::OutOfRange => {
                            SendError::Refused(reason)
                        }
                        _ => SendError::Retry(reason),
                    });
                }
                Ok(Ok(None)) => return Err(SendError::Retry("stream ended".into())),
                Ok(Ok(Some(ack))) if ack.batch_id == batch_id => return Ok(self),
                Ok(Ok(Some(_))) => continue,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_cut_by_bytes_on_a_character_boundary() {
        let long = "é".repeat(1000);
        let cut = bounded(&long);
        assert!(cut.len() <= MAX_FIELD && cut.len() >= MAX_FIELD - 1);
        assert!(cut.chars().all(|c| c == 'é'));
        assert_eq!(bounded("a\nb\u{7}c"), "abc");
        let mut event = pb::AuditEvent::default();
        set_outcome::<()>(&mut event, &Err(tonic::Status::not_found("🔑".repeat(1000))), Instant::now());
        assert!(event.reason.len() <= MAX_REASON);
    }
}

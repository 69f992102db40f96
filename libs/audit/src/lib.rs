//! The audit event every service records and the shipper that streams events to audit-service.
//!
//! Recording never blocks a request: events go into a bounded queue and a background task ships them in
//! batches over one `Append` stream, keeping each batch until audit-service acknowledges it and re-sending
//! it after a reconnect (audit-service drops duplicates by event id). The durable on-disk spool that
//! survives a crash of the sending process is the next step (issue: audit trail that loses nothing).

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use keymesh_mesh::client::MeshChannel;
use keymesh_proto::v1::{self as pb, audit_service_client::AuditServiceClient};
use tokio::sync::mpsc;

/// Events waiting to be shipped, at most.
const QUEUE_CAPACITY: usize = 50_000;
/// Events per `Append` batch, at most.
const BATCH_MAX: usize = 256;
/// How long a batch waits for more events before it is sent.
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
            event.reason = status.message().chars().take(512).collect();
            event.outcome = match status.code() {
                tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => pb::Outcome::Denied as i32,
                _ => pb::Outcome::Failed as i32,
            };
        }
    }
}

/// Longest string field an event carries: events stay small and valid whatever a caller sent.
const MAX_FIELD: usize = 256;

fn bounded(value: &str) -> String {
    value.chars().filter(|c| !c.is_control()).take(MAX_FIELD).collect()
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

    /// Records an authorization refusal and hands it back.
    pub fn deny(mut self, sink: &AuditSink, status: tonic::Status) -> tonic::Status {
        let result: Result<(), tonic::Status> = Err(status);
        set_outcome(&mut self.event, &result, self.started);
        sink.record(self.event);
        result.err().unwrap_or_else(|| tonic::Status::internal("audit: refusal without a status"))
    }

    /// Records the outcome and hands the result back.
    pub fn finish<T>(mut self, sink: &AuditSink, result: Result<T, tonic::Status>) -> Result<T, tonic::Status> {
        set_outcome(&mut self.event, &result, self.started);
        sink.record(self.event);
        result
    }
}

/// Where services record events.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<pb::AuditEvent>,
    /// Stamped on every event: the FIPS mode the decision was made under.
    fips_mode: pb::FipsMode,
    dropped: Arc<AtomicU64>,
    shipper: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl AuditSink {
    /// Starts the shipper on `channel` to audit-service; every event records `fips_mode`.
    pub fn start(channel: MeshChannel, fips_mode: pb::FipsMode) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
        let handle = tokio::spawn(ship(AuditServiceClient::new(channel), rx));
        Self {
            tx,
            fips_mode,
            dropped: Arc::new(AtomicU64::new(0)),
            shipper: Arc::new(std::sync::Mutex::new(Some(handle))),
        }
    }

    /// After the server has stopped (every other clone of the sink is gone): ships what is queued, waiting
    /// at most `deadline`.
    pub async fn flush(self, deadline: Duration) {
        let handle = self.shipper.lock().ok().and_then(|mut h| h.take());
        drop(self);
        if let Some(handle) = handle
            && tokio::time::timeout(deadline, handle).await.is_err()
        {
            tracing::error!("audit events still queued at shutdown could not be shipped in time");
        }
    }

    /// Queues an event without waiting.
    pub fn record(&self, mut event: pb::AuditEvent) {
        event.fips_mode = self.fips_mode as i32;
        if self.tx.try_send(event).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::error!(dropped, "audit queue full or closed: events are being dropped");
            }
        }
    }
}

async fn ship(client: AuditServiceClient<MeshChannel>, mut rx: mpsc::Receiver<pb::AuditEvent>) {
    let mut batch_id = 0u64;
    let mut pending: Vec<pb::AuditEvent> = Vec::new();
    let mut backoff = Duration::from_millis(100);
    let mut stream: Option<Connection> = None;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(event) => pending.push(event),
                None => return,
            }
            let deadline = tokio::time::Instant::now() + BATCH_LINGER;
            while pending.len() < BATCH_MAX {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(event)) => pending.push(event),
                    _ => break,
                }
            }
        }
        batch_id += 1;
        let connection = match stream.take() {
            Some(c) => c,
            None => match Connection::open(client.clone()).await {
                Ok(c) => c,
                Err(reason) => {
                    tracing::warn!(%reason, pending = pending.len(), "audit-service unreachable; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
        };
        match connection.send(batch_id, pending.clone()).await {
            Ok(connection) => {
                pending.clear();
                backoff = Duration::from_millis(100);
                stream = Some(connection);
            }
            Err(SendError::Refused(reason)) => {
                // Retrying cannot help and would block every later event behind this batch.
                tracing::error!(%reason, dropped = pending.len(), "audit-service refused an audit batch; dropping it");
                pending.clear();
            }
            Err(SendError::Retry(reason)) => {
                tracing::warn!(%reason, pending = pending.len(), "audit batch not acknowledged; will resend");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
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

    async fn send(mut self, batch_id: u64, events: Vec<pb::AuditEvent>) -> Result<Self, SendError> {
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

//! The AuditService gRPC methods.

use std::{pin::Pin, sync::Arc};

use keymesh_gate::Gate;
use keymesh_mesh::{PeerIdentity, auth::Role};
use keymesh_proto::v1::{self as pb, audit_service_server::AuditService};
use keymesh_store::{audit::AuditFilter, entity::audit_record};
use prost::Message;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    chain::{ChainWriter, ReceivedEvent, timestamp_millis},
    export, verify,
};

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Largest batch accepted in one AppendRequest.
const MAX_BATCH: usize = 1000;

/// The AuditService implementation.
pub struct AuditRpc {
    writer: Arc<ChainWriter>,
    gate: Gate,
}

impl AuditRpc {
    /// Wires the service.
    pub fn new(writer: ChainWriter, gate: Gate) -> Self {
        Self { writer: Arc::new(writer), gate }
    }

    /// The caller's tenant and filter of a Query or Export (auditor, admin or owner).
    async fn tenant_filter<T>(
        &self,
        request: &Request<T>,
        filter: Filter,
        method: &str,
    ) -> Result<(String, AuditFilter), Status> {
        let claims =
            self.gate.admit_with_role(request, method, &[Role::Auditor, Role::Admin, Role::Owner]).await?.claims;
        let non_empty = |s: String| (!s.is_empty()).then_some(s);
        let filter = AuditFilter {
            start_millis: millis(&filter.start_time, "start_time")?,
            end_millis: millis(&filter.end_time, "end_time")?,
            identity: non_empty(filter.identity),
            operation: non_empty(filter.operation),
            resource: non_empty(filter.resource),
            outcome: (filter.outcome != 0).then_some(filter.outcome),
        };
        Ok((claims.tenant.clone(), filter))
    }
}

/// The filter fields of a QueryRequest or an ExportRequest (same names, two messages).
macro_rules! filter_of {
    ($r:expr) => {{
        let r = $r;
        Filter {
            start_time: r.start_time,
            end_time: r.end_time,
            identity: r.identity.clone(),
            operation: r.operation.clone(),
            resource: r.resource.clone(),
            outcome: r.outcome,
        }
    }};
}

/// The filter fields Query and Export share.
struct Filter {
    start_time: Option<prost_types::Timestamp>,
    end_time: Option<prost_types::Timestamp>,
    identity: String,
    operation: String,
    resource: String,
    outcome: i32,
}

fn store_unavailable(what: &str) -> impl Fn(keymesh_store::StoreError) -> Status + '_ {
    move |e| {
        tracing::error!(error = %e, "{what} failed");
        Status::unavailable("audit store unavailable")
    }
}

/// A page size: 0 means 1000, at most 10000.
fn page_limit(limit: u32) -> Result<u64, Status> {
    match limit {
        0 => Ok(1000),
        n if n <= 10_000 => Ok(u64::from(n)),
        n => Err(Status::invalid_argument(format!("limit {n} is over 10000"))),
    }
}

fn after_sequence(after: u64) -> Result<i64, Status> {
    i64::try_from(after).map_err(|_| Status::invalid_argument(format!("after_sequence {after} is out of range")))
}

/// Records exported per database read.
const EXPORT_PAGE: u64 = 1000;

/// Decodes and checks a batch: each event as sent (its bytes, which are hashed and stored) and decoded.
fn validate(batch: &pb::AppendRequest, sender: &str) -> Result<Vec<ReceivedEvent>, Status> {
    if batch.events.len() > MAX_BATCH {
        return Err(Status::invalid_argument(format!("at most {MAX_BATCH} events per AppendRequest")));
    }
    let mut received = Vec::with_capacity(batch.events.len());
    for (index, bytes) in batch.events.iter().enumerate() {
        let event = pb::AuditEvent::decode(bytes.clone())
            .map_err(|_| Status::invalid_argument(format!("events[{index}] is not a valid AuditEvent")))?;
        if event.event_id.is_empty() || event.event_id.len() > 64 {
            return Err(Status::invalid_argument("event_id must be 1 to 64 characters"));
        }
        let fields = [
            &event.tenant_id,
            &event.identity,
            &event.operation,
            &event.resource,
            &event.reason,
            &event.trace_id,
            &event.on_behalf_of,
        ];
        if fields.iter().any(|f| f.len() > 1024) {
            return Err(Status::invalid_argument(format!(
                "event {}: string fields are limited to 1024 bytes",
                event.event_id
            )));
        }
        if event.service != sender {
            return Err(Status::permission_denied(format!(
                "event {} claims service {:?} but was sent by {sender}",
                event.event_id, event.service
            )));
        }
        received.push(ReceivedEvent { event, bytes: bytes.clone() });
    }
    Ok(received)
}

pub fn timestamp(millis: i64) -> prost_types::Timestamp {
    prost_types::Timestamp { seconds: millis.div_euclid(1000), nanos: (millis.rem_euclid(1000) * 1_000_000) as i32 }
}

fn millis(t: &Option<prost_types::Timestamp>, field: &str) -> Result<Option<i64>, Status> {
    t.as_ref()
        .map(|t| timestamp_millis(t).ok_or_else(|| Status::invalid_argument(format!("{field} is out of range"))))
        .transpose()
}

fn to_record(row: audit_record::Model) -> pb::AuditRecord {
    pb::AuditRecord {
        sequence: row.sequence as u64,
        event: pb::AuditEvent::decode(row.event.as_slice()).ok(),
        receive_time: Some(timestamp(row.received_at)),
        previous_hash: row.previous_hash,
        hash: row.hash,
    }
}

#[tonic::async_trait]
impl AuditService for AuditRpc {
    type AppendStream = ResponseStream<pb::AppendResponse>;

    async fn append(
        &self,
        request: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<Self::AppendStream>, Status> {
        let peer = PeerIdentity::from_request(&request)?;
        let sender = peer
            .mesh_service()
            .ok_or_else(|| Status::permission_denied(format!("Append is only for mesh services; caller is {peer}")))?;
        let mut inbound = request.into_inner();
        let writer = self.writer.clone();
        let sender = sender.as_str();
        let outbound = async_stream_like(move |tx| async move {
            while let Some(batch) = inbound.next().await {
                let reply = match batch {
                    Ok(batch) => match validate(&batch, sender) {
                        Ok(events) => writer
                            .append(events)
                            .await
                            .map(|a| pb::AppendResponse {
                                batch_id: batch.batch_id,
                                accepted: a.accepted,
                                duplicates: a.duplicates,
                            })
                            .map_err(|e| {
                                tracing::error!(error = %e, "cannot store audit batch");
                                Status::unavailable("audit store unavailable; resend the batch")
                            }),
                        Err(status) => Err(status),
                    },
                    Err(status) => Err(status),
                };
                let failed = reply.is_err();
                if tx.send(reply).await.is_err() || failed {
                    break;
                }
            }
        });
        Ok(Response::new(outbound))
    }

    type QueryStream = ResponseStream<pb::QueryResponse>;

    async fn query(&self, request: Request<pb::QueryRequest>) -> Result<Response<Self::QueryStream>, Status> {
        let filter = filter_of!(request.get_ref());
        let (tenant, filter) = self.tenant_filter(&request, filter, "AuditService.Query").await?;
        let request = request.into_inner();
        let limit = page_limit(request.limit)?;
        let after = after_sequence(request.after_sequence)?;
        let rows =
            self.writer.repo().query(&tenant, &filter, after, limit).await.map_err(store_unavailable("audit query"))?;
        let stream =
            tokio_stream::iter(rows.into_iter().map(|row| Ok(pb::QueryResponse { record: Some(to_record(row)) })));
        Ok(Response::new(Box::pin(stream)))
    }

    type ExportStream = ResponseStream<pb::ExportResponse>;

    async fn export(&self, request: Request<pb::ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        let filter = filter_of!(request.get_ref());
        let (tenant, filter) = self.tenant_filter(&request, filter, "AuditService.Export").await?;
        let request = request.into_inner();
        let mut after = after_sequence(request.after_sequence)?;
        let mut left = if request.limit == 0 { u64::MAX } else { request.limit };
        let repo = self.writer.repo().clone();
        Ok(Response::new(async_stream_like(move |tx| async move {
            while left > 0 {
                let rows = match repo.query(&tenant, &filter, after, EXPORT_PAGE.min(left)).await {
                    Ok(rows) => rows,
                    Err(e) => {
                        let _ = tx.send(Err(store_unavailable("audit export")(e))).await;
                        return;
                    }
                };
                let Some(last) = rows.last() else { return };
                after = last.sequence;
                left -= rows.len() as u64;
                let full = rows.len() as u64 == EXPORT_PAGE;
                let mut json_lines = Vec::new();
                for row in &rows {
                    json_lines.extend_from_slice(export::json_line(row).as_bytes());
                    json_lines.push(b'\n');
                }
                if tx.send(Ok(pb::ExportResponse { json_lines })).await.is_err() || !full {
                    return;
                }
            }
        })))
    }

    async fn list_checkpoints(
        &self,
        request: Request<pb::ListCheckpointsRequest>,
    ) -> Result<Response<pb::ListCheckpointsResponse>, Status> {
        self.gate.admit_with_role(&request, "AuditService.ListCheckpoints", &[Role::Auditor, Role::Owner]).await?;
        let request = request.into_inner();
        let limit = page_limit(request.limit)?;
        let after = after_sequence(request.after_sequence)?;
        let repo = self.writer.repo();
        let checkpoints = repo.checkpoints_after(after, limit).await.map_err(store_unavailable("checkpoint list"))?;
        let keys = repo.checkpoint_keys().await.map_err(store_unavailable("checkpoint key list"))?;
        Ok(Response::new(pb::ListCheckpointsResponse {
            checkpoints: checkpoints
                .into_iter()
                .map(|c| pb::Checkpoint {
                    sequence: c.sequence as u64,
                    hash: c.hash,
                    signed_at: Some(timestamp(c.signed_at)),
                    kid: c.kid,
                    signature: c.signature,
                })
                .collect(),
            keys: keys
                .into_iter()
                .map(|k| pb::CheckpointKey {
                    kid: k.kid,
                    algorithm: k.algorithm,
                    public_key: k.public_key,
                    created_at: Some(timestamp(k.created_at)),
                })
                .collect(),
        }))
    }

    async fn verify_chain(
        &self,
        request: Request<pb::VerifyChainRequest>,
    ) -> Result<Response<pb::VerifyChainResponse>, Status> {
        // The chain spans every tenant; verifying it reveals only counts and positions, never a record.
        self.gate.admit_with_role(&request, "AuditService.VerifyChain", &[Role::Auditor, Role::Owner]).await?;
        let request = request.into_inner();
        let sequence = |n: u64, field: &str| {
            i64::try_from(n).map_err(|_| Status::invalid_argument(format!("{field} {n} is out of range")))
        };
        let from = sequence(request.from_sequence, "from_sequence")?;
        let to = match request.to_sequence {
            0 => None,
            n if n < request.from_sequence => {
                return Err(Status::invalid_argument(format!(
                    "to_sequence {n} is before from_sequence {}; 0 means up to the newest record",
                    request.from_sequence
                )));
            }
            n => Some(sequence(n, "to_sequence")?),
        };
        let verdict = verify::verify(self.writer.repo(), from, to).await.map_err(|e| {
            tracing::error!(error = %e, "audit chain verification failed");
            Status::unavailable("audit store unavailable")
        })?;
        if let Some((at, reason)) = &verdict.broken {
            tracing::error!(sequence = at, %reason, "the audit chain is broken");
        }
        Ok(Response::new(pb::VerifyChainResponse {
            valid: verdict.broken.is_none(),
            verified_records: verdict.verified,
            first_invalid_sequence: verdict.broken.as_ref().map_or(0, |(at, _)| *at as u64),
            message: verdict.broken.map_or_else(|| "the chain holds".to_owned(), |(_, reason)| reason),
        }))
    }
}

/// A response stream fed by a task through a channel.
fn async_stream_like<T, F, Fut>(body: F) -> ResponseStream<T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<Result<T, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(body(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_that_is_not_an_audit_event_is_refused_naming_it() {
        let good = pb::AuditEvent { event_id: "e1".into(), service: "crypto-service".into(), ..Default::default() };
        let batch =
            pb::AppendRequest { batch_id: 1, events: vec![good.encode_to_vec().into(), vec![0xFF, 0xFF, 0xFF].into()] };
        let refused = validate(&batch, "crypto-service").err().expect("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);
        assert_eq!(refused.message(), "events[1] is not a valid AuditEvent");
        let accepted =
            validate(&pb::AppendRequest { batch_id: 2, events: batch.events[..1].to_vec() }, "crypto-service");
        assert_eq!(accepted.unwrap()[0].event, good);
    }
}

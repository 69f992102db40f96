//! The audit trail of the tenant: events with filters, whether the hash chain verifies, the signed checkpoints,
//! and the JSON Lines export (audit-service's own format, streamed through).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use askama::Template;
use axum::{
    Extension,
    body::Body,
    extract::{Query, State},
    http::header,
    response::{IntoResponse, Response},
};
use futures_util::StreamExt;
use keymesh_proto::v1 as pb;
use serde::Deserialize;

use super::{call, require_audit_reader, short, timestamp, wire_name};
use crate::{
    app::{Shared, Who},
    error::PageError,
    views::{Layout, render},
};

/// Rows shown on the page (the newest).
const SHOWN: usize = 200;

/// The filters, as the form and the export link carry them.
#[derive(Deserialize, Default, Clone)]
pub struct AuditFilter {
    #[serde(default)]
    operation: String,
    #[serde(default)]
    resource: String,
    #[serde(default)]
    identity: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    days: Option<u32>,
}

impl AuditFilter {
    fn outcome(&self) -> Result<i32, PageError> {
        if self.outcome.is_empty() {
            return Ok(0);
        }
        pb::Outcome::from_str_name(&wire_name("OUTCOME_", &self.outcome))
            .map(|o| o as i32)
            .ok_or_else(|| PageError::Invalid(format!("outcome: unknown outcome {:?}", self.outcome)))
    }

    fn days(&self) -> Result<u32, PageError> {
        match self.days.unwrap_or(7) {
            d @ 1..=366 => Ok(d),
            d => Err(PageError::Invalid(format!("days: {d} is outside 1..=366"))),
        }
    }

    fn start_time(&self) -> Result<prost_types::Timestamp, PageError> {
        let since = SystemTime::now() - Duration::from_secs(u64::from(self.days()?) * 86_400);
        let seconds = since.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        Ok(prost_types::Timestamp { seconds: seconds as i64, nanos: 0 })
    }

    fn query(&self, limit: u32) -> Result<pb::QueryRequest, PageError> {
        Ok(pb::QueryRequest {
            start_time: Some(self.start_time()?),
            end_time: None,
            identity: self.identity.trim().to_owned(),
            operation: self.operation.trim().to_owned(),
            resource: self.resource.trim().to_owned(),
            outcome: self.outcome()?,
            after_sequence: 0,
            limit,
        })
    }

    /// The filter as the export link's query string.
    fn as_query(&self) -> String {
        let mut s = url::form_urlencoded::Serializer::new(String::new());
        for (k, v) in [
            ("operation", self.operation.as_str()),
            ("resource", self.resource.as_str()),
            ("identity", self.identity.as_str()),
            ("outcome", self.outcome.as_str()),
        ] {
            if !v.is_empty() {
                s.append_pair(k, v);
            }
        }
        s.append_pair("days", &self.days.unwrap_or(7).to_string());
        s.finish()
    }
}

/// Every record the query matches, in order (the service caps `limit`).
pub async fn records(console: &Shared, who: &Who, query: pb::QueryRequest) -> Result<Vec<pb::AuditRecord>, PageError> {
    let mut stream = console.mesh.audit_service().query(call(who, query)?).await?.into_inner();
    let mut out = Vec::new();
    while let Some(message) = stream.message().await? {
        out.extend(message.record);
    }
    Ok(out)
}

/// One row of the table.
pub struct EventRow {
    sequence: u64,
    time: String,
    service: String,
    operation: String,
    identity: String,
    on_behalf_of: String,
    resource: String,
    outcome: String,
    reason: String,
}

#[derive(Template)]
#[template(path = "audit.html")]
struct AuditPage {
    layout: Layout,
    filter: AuditFilter,
    days: u32,
    rows: Vec<EventRow>,
    matched: usize,
    chain: ChainStatus,
    checkpoints: Vec<(u64, String, String, String)>,
    export_query: String,
}

/// What the page says about the chain.
struct ChainStatus {
    /// `verified`, `BROKEN` or `unknown`.
    word: String,
    /// The details.
    text: String,
}

/// `GET /audit`.
pub async fn show(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Query(filter): Query<AuditFilter>,
) -> Result<Response, PageError> {
    require_audit_reader(&who)?;
    let all = records(&console, &who, filter.query(10_000)?).await?;
    let matched = all.len();
    let rows = all
        .iter()
        .rev()
        .take(SHOWN)
        .map(|r| {
            let e = r.event.clone().unwrap_or_default();
            EventRow {
                sequence: r.sequence,
                time: timestamp(e.time.as_ref()),
                service: e.service.clone(),
                operation: e.operation.clone(),
                identity: e.identity.clone(),
                on_behalf_of: e.on_behalf_of.clone(),
                resource: e.resource.clone(),
                outcome: short(e.outcome().as_str_name(), "OUTCOME_"),
                reason: e.reason.clone(),
            }
        })
        .collect();
    // Chain verification and checkpoints are the auditors' and owners' (audit-service's rule).
    let (chain, checkpoints) = if who.has_role(&["auditor", "owner"]) {
        let verified = console
            .mesh
            .audit_service()
            .verify_chain(call(&who, pb::VerifyChainRequest { from_sequence: 0, to_sequence: 0 })?)
            .await?
            .into_inner();
        let chain = if verified.valid {
            ChainStatus {
                word: "verified".into(),
                text: format!("{} records verified: every hash links to the one before.", verified.verified_records),
            }
        } else {
            ChainStatus {
                word: "BROKEN".into(),
                text: format!("first invalid record: {}; {}", verified.first_invalid_sequence, verified.message),
            }
        };
        let listed = console
            .mesh
            .audit_service()
            .list_checkpoints(call(&who, pb::ListCheckpointsRequest { after_sequence: 0, limit: 1000 })?)
            .await?
            .into_inner();
        let checkpoints = listed
            .checkpoints
            .iter()
            .rev()
            .take(20)
            .map(|c| (c.sequence, c.hash.clone(), timestamp(c.signed_at.as_ref()), c.kid.clone()))
            .collect();
        (chain, checkpoints)
    } else {
        let text = "Chain verification needs the auditor or owner role.".into();
        (ChainStatus { word: "unknown".into(), text }, Vec::new())
    };
    Ok(render(&AuditPage {
        layout: Layout::of(&who, None),
        days: filter.days()?,
        export_query: filter.as_query(),
        filter,
        rows,
        matched,
        chain,
        checkpoints,
    }))
}

/// `GET /audit/export`: the matching records as JSON Lines (audit-service's export format), as a download.
pub async fn export(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Query(filter): Query<AuditFilter>,
) -> Result<Response, PageError> {
    require_audit_reader(&who)?;
    let query = filter.query(0)?;
    let request = pb::ExportRequest {
        start_time: query.start_time,
        end_time: None,
        identity: query.identity,
        operation: query.operation,
        resource: query.resource,
        outcome: query.outcome,
        after_sequence: 0,
        limit: 0,
    };
    // Streamed through as audit-service sends it: a year of records never sits in the console's memory.
    let stream = console.mesh.audit_service().export(call(&who, request)?).await?.into_inner();
    let body = Body::from_stream(stream.map(|chunk| chunk.map(|c| c.json_lines)));
    let tenant: String =
        who.session.user.tenant.chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_')).collect();
    let name = format!("keymesh-audit-{tenant}.jsonl");
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson".to_owned()),
            (header::CONTENT_DISPOSITION, format!("attachment; filename=\"{name}\"")),
        ],
        body,
    )
        .into_response())
}

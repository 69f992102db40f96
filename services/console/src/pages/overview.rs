//! The overview: the tenant's usage from its audit trail (operations per key and per day over the last week, and
//! how many failed or were refused) and a count of its keys.

use std::collections::{BTreeMap, HashMap};

use askama::Template;
use axum::{
    Extension,
    extract::{Query, State},
    response::Response,
};
use keymesh_proto::v1 as pb;

use super::{audit, keys, timestamp};
use crate::{
    app::{Shared, Who},
    error::PageError,
    views::{Layout, render},
};

/// Days of usage shown.
const DAYS: i64 = 7;

/// Usage of one key on one day.
pub struct UsageRow {
    day: String,
    key: String,
    operations: u64,
    errors: u64,
}

#[derive(Template)]
#[template(path = "overview.html")]
struct OverviewPage {
    layout: Layout,
    key_count: usize,
    usage: Option<Vec<UsageRow>>,
}

/// Counts operations per (day, key) from audit records; `names` maps key ids to names.
pub fn usage(records: &[pb::AuditRecord], names: &HashMap<String, String>) -> Vec<UsageRow> {
    let mut counts: BTreeMap<(String, String), (u64, u64)> = BTreeMap::new();
    for event in records.iter().filter_map(|r| r.event.as_ref()) {
        if event.resource.is_empty() {
            continue;
        }
        let Some(name) = names.get(&event.resource) else { continue };
        let day = timestamp(event.time.as_ref()).get(..10).unwrap_or_default().to_owned();
        let entry = counts.entry((day, name.clone())).or_default();
        let calls = event.count.max(1);
        entry.0 += calls;
        if event.outcome() != pb::Outcome::Success {
            entry.1 += calls;
        }
    }
    counts
        .into_iter()
        .rev()
        .map(|((day, key), (operations, errors))| UsageRow { day, key, operations, errors })
        .collect()
}

/// `GET /`.
pub async fn show(
    State(console): State<Shared>,
    Extension(who): Extension<Who>,
    Query(done): Query<super::Done>,
) -> Result<Response, PageError> {
    let all_keys = keys::all_keys(&console, &who, 0, 0).await?;
    let usage = if super::require_audit_reader(&who).is_ok() {
        let since =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
                - DAYS * 86_400;
        let query = pb::QueryRequest {
            start_time: Some(prost_types::Timestamp { seconds: since, nanos: 0 }),
            limit: 10_000,
            ..Default::default()
        };
        let records = audit::records(&console, &who, query).await?;
        let names = all_keys.iter().map(|k| (k.key_id.clone(), k.name.clone())).collect();
        Some(usage(&records, &names))
    } else {
        None
    };
    Ok(render(&OverviewPage { layout: Layout::of(&who, done.notice()), key_count: all_keys.len(), usage }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, seconds: i64, outcome: pb::Outcome) -> pb::AuditRecord {
        pb::AuditRecord {
            event: Some(pb::AuditEvent {
                resource: key.into(),
                time: Some(prost_types::Timestamp { seconds, nanos: 0 }),
                outcome: outcome as i32,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn usage_is_counted_per_key_and_day_with_errors_apart() {
        let day = 1_800_000_000;
        let names = HashMap::from([("k1".to_owned(), "orders".to_owned())]);
        let records = [
            record("k1", day, pb::Outcome::Success),
            record("k1", day + 60, pb::Outcome::Denied),
            record("k1", day + 86_400, pb::Outcome::Success),
            record("other-tenant-or-token", day, pb::Outcome::Success),
            record("", day, pb::Outcome::Success),
        ];
        let rows = usage(&records, &names);
        let flat: Vec<_> = rows.iter().map(|r| (r.day.as_str(), r.key.as_str(), r.operations, r.errors)).collect();
        assert_eq!(flat, [("2027-01-16", "orders", 1, 0), ("2027-01-15", "orders", 2, 1)]);
    }
}

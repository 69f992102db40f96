//! `keymesh audit …`: the tenant's audit trail (AuditService). `keymesh audit` alone queries, as it always did.

use std::io::Write;

use clap::Subcommand;
use keymesh_client::{ClientError, KeymeshClient};
use keymesh_proto::v1 as pb;

use crate::{Failure, Outcome, enum_named, render, render::Output, write_stdout};

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct AuditArgs {
    #[command(subcommand)]
    command: Option<AuditCommand>,
    #[command(flatten)]
    query: Filter,
}

/// Which records.
#[derive(clap::Args, Clone, Default)]
pub struct Filter {
    /// Only this operation (e.g. Encrypt).
    #[arg(long)]
    operation: Option<String>,
    /// Only this caller identity (an application's client id).
    #[arg(long)]
    identity: Option<String>,
    /// Only this resource (a key id, an application).
    #[arg(long)]
    resource: Option<String>,
    /// Only this outcome: success, denied or failed.
    #[arg(long)]
    outcome: Option<String>,
    /// From this time on (RFC 3339).
    #[arg(long, value_parser = crate::parse_time)]
    since: Option<prost_types::Timestamp>,
    /// Before this time (RFC 3339).
    #[arg(long, value_parser = crate::parse_time)]
    until: Option<prost_types::Timestamp>,
    /// Only records after this sequence number (to page on).
    #[arg(long, default_value_t = 0)]
    after: u64,
    /// At most this many records (default: 50 for query, all for export).
    #[arg(long)]
    limit: Option<u32>,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Query the trail (the default): one line per record, oldest first.
    Query(Filter),
    /// Export the trail as JSON lines (one record per line) to standard output.
    Export(Filter),
    /// Verify the hash chain (and so that no record was changed, removed or reordered); exit 1 if broken.
    Verify {
        /// From this sequence number (default: the first).
        #[arg(long, default_value_t = 0)]
        from: u64,
        /// To this sequence number (default: the last).
        #[arg(long, default_value_t = 0)]
        to: u64,
    },
    /// The signed checkpoints of the chain and the keys that signed them.
    Checkpoints {
        /// Only checkpoints after this sequence number.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// At most this many (default: the service's).
        #[arg(long, default_value_t = 0)]
        limit: u32,
    },
}

const RECORD_COLUMNS: &[&str] = &["sequence", "receive_time", "previous_hash", "hash"];

pub async fn run(client: &KeymeshClient, output: Output, args: AuditArgs) -> Outcome {
    let mut audit = client.audit_service();
    match args.command.unwrap_or(AuditCommand::Query(args.query)) {
        AuditCommand::Query(filter) => {
            let mut q = query(&filter)?;
            q.limit = filter.limit.unwrap_or(50);
            let records = client.audit_query(q).await?;
            match output {
                Output::Json => Ok(render::print_all(output, &records, RECORD_COLUMNS)?),
                Output::Table => {
                    let mut text = String::new();
                    for record in records {
                        let Some(e) = record.event else { continue };
                        let outcome = pb::Outcome::try_from(e.outcome).map(|o| o.as_str_name()).unwrap_or("?");
                        text.push_str(&format!(
                            "{:>6} {} {:<14} {:<10} {} {} {}\n",
                            record.sequence,
                            e.time.map(|t| t.to_string()).unwrap_or_default(),
                            e.service,
                            e.operation,
                            e.identity,
                            e.resource,
                            outcome.trim_start_matches("OUTCOME_"),
                        ));
                    }
                    Ok(write_stdout(text.as_bytes())?)
                }
            }
        }
        AuditCommand::Export(filter) => {
            let q = query(&filter)?;
            let request = pb::ExportRequest {
                start_time: q.start_time,
                end_time: q.end_time,
                identity: q.identity,
                operation: q.operation,
                resource: q.resource,
                outcome: q.outcome,
                after_sequence: q.after_sequence,
                limit: u64::from(q.limit),
            };
            let mut stream = audit.export(client.authorized(request).await?).await?.into_inner();
            let mut out = std::io::stdout().lock();
            while let Some(chunk) = stream.message().await? {
                out.write_all(&chunk.json_lines).map_err(|e| ClientError::Io(format!("writing output: {e}")))?;
            }
            out.flush().map_err(|e| ClientError::Io(format!("writing output: {e}")))?;
            Ok(())
        }
        AuditCommand::Verify { from, to } => {
            let request = pb::VerifyChainRequest { from_sequence: from, to_sequence: to };
            let response = audit.verify_chain(client.authorized(request).await?).await?.into_inner();
            render::print(output, &response, None)?;
            if response.valid {
                Ok(())
            } else {
                Err(Failure::Negative(format!(
                    "the audit chain is broken at sequence {}: {}",
                    response.first_invalid_sequence, response.message
                )))
            }
        }
        AuditCommand::Checkpoints { after, limit } => {
            let request = pb::ListCheckpointsRequest { after_sequence: after, limit };
            let response = audit.list_checkpoints(client.authorized(request).await?).await?.into_inner();
            Ok(render::print(output, &response, Some(("checkpoints", &["sequence", "signed_at", "kid", "hash"])))?)
        }
    }
}

fn query(filter: &Filter) -> Result<pb::QueryRequest, ClientError> {
    let outcome = match filter.outcome.as_deref() {
        Some(o) => enum_named("OUTCOME_", o, pb::Outcome::from_str_name, "outcome")? as i32,
        None => 0,
    };
    Ok(pb::QueryRequest {
        start_time: filter.since,
        end_time: filter.until,
        identity: filter.identity.clone().unwrap_or_default(),
        operation: filter.operation.clone().unwrap_or_default(),
        resource: filter.resource.clone().unwrap_or_default(),
        outcome,
        after_sequence: filter.after,
        limit: filter.limit.unwrap_or(0),
    })
}

//! The audit trail's rows. Sequence numbers are assigned by whichever audit-service replica holds the append
//! lock; event ids are unique so a re-sent batch is recognised and not stored twice.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use std::collections::HashSet;

use sea_orm::sea_query::OnConflict;

use crate::{
    StoreError,
    entity::{audit_checkpoint, audit_checkpoint_key, audit_record},
};

/// Most rows (or looked-up ids) per statement: a full batch from a crypto-service's shipper, which under load is
/// every batch. 13 columns a row keeps it under the bind-parameter limits (SQLite's 32,766, Postgres's 65,535).
const MAX_CHUNK: usize = 1000;

/// Splits `n` into statement sizes: whole chunks of [`MAX_CHUNK`], then the rest in powers of two (largest
/// first), so that batches of any size are written by statements of at most eleven distinct texts. A
/// multi-row statement of a size not seen before is new SQL that the driver must parse and plan (a fifth of
/// audit-service's CPU in a profile under load, when every batch had a size of its own); one seen before comes
/// from the connection's prepared-statement cache.
fn statement_sizes(mut n: usize) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        if n == 0 {
            return None;
        }
        let size = if n >= MAX_CHUNK { MAX_CHUNK } else { 1 << (usize::BITS - 1 - n.leading_zeros()) };
        n -= size;
        Some(size)
    })
}

/// Filter of a tenant-scoped audit query.
#[derive(Debug, Default, Clone)]
pub struct AuditFilter {
    /// Only events at or after this time (ms).
    pub start_millis: Option<i64>,
    /// Only events before this time (ms).
    pub end_millis: Option<i64>,
    /// Only this identity.
    pub identity: Option<String>,
    /// Only this operation.
    pub operation: Option<String>,
    /// Only this resource.
    pub resource: Option<String>,
    /// Only this outcome.
    pub outcome: Option<i32>,
}

/// Repository of audit records.
#[derive(Clone)]
pub struct AuditRepository {
    db: DatabaseConnection,
}

impl AuditRepository {
    /// Wraps a connection.
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db }
    }

    /// Appends to the chain in one transaction, all or none: on Postgres under a transaction-scoped advisory
    /// lock, so replicas of audit-service sharing the database append one at a time and each starts from the
    /// head the previous one committed (SQLite has one writer anyway). `build` gets the head (sequence and
    /// hash; none for an empty chain) and which of the batch's event ids are stored already, and returns the
    /// records to insert.
    ///
    /// A batch is first inserted as all new: an event id already stored is rare (a batch re-sent because its
    /// acknowledgement was lost), and looking every id up first took 4–21 % of audit-service's CPU per event in
    /// paired benchmark runs. Should one be stored, the unique index refuses the insert, the transaction is
    /// rolled back, and the batch is built again without the ids found stored.
    pub async fn append_chain(
        &self,
        event_ids: &[String],
        mut build: impl FnMut(Option<(i64, String)>, &HashSet<String>) -> Vec<audit_record::Model>,
    ) -> Result<usize, StoreError> {
        match self.append_built(None, &mut build).await {
            Err(StoreError::AlreadyExists { .. }) => self.append_built(Some(event_ids), &mut build).await,
            appended => appended,
        }
    }

    /// One attempt of [`Self::append_chain`], looking up `event_ids` first when given.
    async fn append_built(
        &self,
        event_ids: Option<&[String]>,
        build: &mut impl FnMut(Option<(i64, String)>, &HashSet<String>) -> Vec<audit_record::Model>,
    ) -> Result<usize, StoreError> {
        let txn = self.locked().await?;
        let head = match audit_record::Entity::find().order_by_desc(audit_record::Column::Sequence).one(&txn).await? {
            Some(record) => Some((record.sequence, record.hash)),
            // Pruning keeps the newest record, so an empty table is a fresh chain; should it not be, the chain
            // goes on from the newest checkpoint rather than starting over at 1.
            None => audit_checkpoint::Entity::find()
                .order_by_desc(audit_checkpoint::Column::Sequence)
                .one(&txn)
                .await?
                .map(|c| (c.sequence, c.hash)),
        };
        let mut existing = HashSet::new();
        if let Some(event_ids) = event_ids {
            let mut ids = event_ids.iter();
            for size in statement_sizes(event_ids.len()) {
                let found = audit_record::Entity::find()
                    .select_only()
                    .column(audit_record::Column::EventId)
                    .filter(audit_record::Column::EventId.is_in(ids.by_ref().take(size).cloned()))
                    .into_tuple::<String>()
                    .all(&txn)
                    .await?;
                existing.extend(found);
            }
        }
        let records = build(head, &existing);
        let stored = records.len();
        // Many rows per INSERT: one statement per record cost more than everything else audit-service does per
        // event.
        let mut rows = records.into_iter().map(IntoActiveModel::into_active_model);
        for size in statement_sizes(stored) {
            if let Err(e) =
                audit_record::Entity::insert_many(rows.by_ref().take(size)).exec_without_returning(&txn).await
            {
                // Postgres refuses every statement of a transaction after an error: end it before any retry.
                txn.rollback().await?;
                return Err(StoreError::from_insert("audit event", e));
            }
        }
        txn.commit().await?;
        Ok(stored)
    }

    /// A transaction holding the chain's lock: on Postgres a transaction-scoped advisory lock every replica
    /// takes before it changes the chain (SQLite has one writer anyway).
    async fn locked(&self) -> Result<sea_orm::DatabaseTransaction, StoreError> {
        let txn = self.db.begin().await?;
        if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            // Waiting for the lock is not a slow statement: a prune may hold it for minutes, and appends wait
            // behind it as they always did. Their own statements keep the connection's deadline.
            txn.execute_unprepared("SET LOCAL statement_timeout = 0").await?;
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(7401740174017402)").await?;
            txn.execute_unprepared("SET LOCAL statement_timeout TO DEFAULT").await?;
        }
        Ok(txn)
    }

    /// The newest record's sequence and hash.
    pub async fn head(&self) -> Result<Option<(i64, String)>, StoreError> {
        Ok(audit_record::Entity::find()
            .order_by_desc(audit_record::Column::Sequence)
            .one(&self.db)
            .await?
            .map(|r| (r.sequence, r.hash)))
    }

    /// Deletes the records received before `cutoff_millis` up to the newest checkpoint among them (never the
    /// newest record), and the checkpoints before that one, which stays as the anchor the remaining chain is
    /// verified from. Returns
    /// the anchor's sequence and how many records went; none when no checkpoint is old enough.
    pub async fn prune(&self, cutoff_millis: i64) -> Result<Option<(i64, u64)>, StoreError> {
        let txn = self.locked().await?;
        if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            // Maintenance, off the request path: a large backlog may take longer than a call's deadline.
            txn.execute_unprepared("SET LOCAL statement_timeout = '10min'").await?;
        }
        let Some(newest_old) = audit_record::Entity::find()
            .filter(audit_record::Column::ReceivedAt.lt(cutoff_millis))
            .order_by_desc(audit_record::Column::Sequence)
            .one(&txn)
            .await?
        else {
            return Ok(None);
        };
        let head = audit_record::Entity::find().order_by_desc(audit_record::Column::Sequence).one(&txn).await?;
        // Never the newest record: the chain goes on from what is kept.
        let keep_from = head.map_or(0, |h| h.sequence);
        let Some(anchor) = audit_checkpoint::Entity::find()
            .filter(audit_checkpoint::Column::Sequence.lte(newest_old.sequence))
            .filter(audit_checkpoint::Column::Sequence.lt(keep_from))
            .order_by_desc(audit_checkpoint::Column::Sequence)
            .one(&txn)
            .await?
        else {
            return Ok(None);
        };
        let deleted = audit_record::Entity::delete_many()
            .filter(audit_record::Column::Sequence.lte(anchor.sequence))
            .exec(&txn)
            .await?
            .rows_affected;
        audit_checkpoint::Entity::delete_many()
            .filter(audit_checkpoint::Column::Sequence.lt(anchor.sequence))
            .exec(&txn)
            .await?;
        txn.commit().await?;
        Ok(Some((anchor.sequence, deleted)))
    }

    /// Stores a checkpoint; one another replica stored at the same sequence first is kept instead.
    pub async fn insert_checkpoint(&self, checkpoint: audit_checkpoint::Model) -> Result<(), StoreError> {
        audit_checkpoint::Entity::insert(checkpoint.into_active_model())
            .on_conflict(OnConflict::column(audit_checkpoint::Column::Sequence).do_nothing().to_owned())
            .exec_without_returning(&self.db)
            .await?;
        Ok(())
    }

    /// The newest checkpoint.
    pub async fn latest_checkpoint(&self) -> Result<Option<audit_checkpoint::Model>, StoreError> {
        Ok(audit_checkpoint::Entity::find().order_by_desc(audit_checkpoint::Column::Sequence).one(&self.db).await?)
    }

    /// Checkpoints at sequences `from..=to`, oldest first.
    pub async fn checkpoints_between(&self, from: i64, to: i64) -> Result<Vec<audit_checkpoint::Model>, StoreError> {
        Ok(audit_checkpoint::Entity::find()
            .filter(audit_checkpoint::Column::Sequence.between(from, to))
            .order_by_asc(audit_checkpoint::Column::Sequence)
            .all(&self.db)
            .await?)
    }

    /// Checkpoints after `after_sequence`, oldest first.
    pub async fn checkpoints_after(
        &self,
        after_sequence: i64,
        limit: u64,
    ) -> Result<Vec<audit_checkpoint::Model>, StoreError> {
        Ok(audit_checkpoint::Entity::find()
            .filter(audit_checkpoint::Column::Sequence.gt(after_sequence))
            .order_by_asc(audit_checkpoint::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// The checkpoint at `sequence`.
    pub async fn checkpoint(&self, sequence: i64) -> Result<Option<audit_checkpoint::Model>, StoreError> {
        Ok(audit_checkpoint::Entity::find_by_id(sequence).one(&self.db).await?)
    }

    /// Every checkpoint key, oldest first.
    pub async fn checkpoint_keys(&self) -> Result<Vec<audit_checkpoint_key::Model>, StoreError> {
        Ok(audit_checkpoint_key::Entity::find()
            .order_by_asc(audit_checkpoint_key::Column::CreatedAt)
            .all(&self.db)
            .await?)
    }

    /// Stores a new checkpoint key.
    pub async fn insert_checkpoint_key(&self, key: audit_checkpoint_key::Model) -> Result<(), StoreError> {
        key.into_active_model().insert(&self.db).await.map_err(|e| StoreError::from_insert("checkpoint key", e))?;
        Ok(())
    }

    /// Records of every tenant after `after_sequence`, oldest first: the chain as stored, for verification.
    pub async fn chain_after(&self, after_sequence: i64, limit: u64) -> Result<Vec<audit_record::Model>, StoreError> {
        Ok(audit_record::Entity::find()
            .filter(audit_record::Column::Sequence.gt(after_sequence))
            .order_by_asc(audit_record::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?)
    }

    /// The record at `sequence`.
    pub async fn record(&self, sequence: i64) -> Result<Option<audit_record::Model>, StoreError> {
        Ok(audit_record::Entity::find_by_id(sequence).one(&self.db).await?)
    }

    /// A tenant's records after `after_sequence`, oldest first.
    pub async fn query(
        &self,
        tenant_id: &str,
        filter: &AuditFilter,
        after_sequence: i64,
        limit: u64,
    ) -> Result<Vec<audit_record::Model>, StoreError> {
        let mut cond = Condition::all()
            .add(audit_record::Column::TenantId.eq(tenant_id))
            .add(audit_record::Column::Sequence.gt(after_sequence));
        if let Some(t) = filter.start_millis {
            cond = cond.add(audit_record::Column::Time.gte(t));
        }
        if let Some(t) = filter.end_millis {
            cond = cond.add(audit_record::Column::Time.lt(t));
        }
        if let Some(v) = &filter.identity {
            cond = cond.add(audit_record::Column::Identity.eq(v.as_str()));
        }
        if let Some(v) = &filter.operation {
            cond = cond.add(audit_record::Column::Operation.eq(v.as_str()));
        }
        if let Some(v) = &filter.resource {
            cond = cond.add(audit_record::Column::Resource.eq(v.as_str()));
        }
        if let Some(v) = filter.outcome {
            cond = cond.add(audit_record::Column::Outcome.eq(v));
        }
        Ok(audit_record::Entity::find()
            .filter(cond)
            .order_by_asc(audit_record::Column::Sequence)
            .limit(limit)
            .all(&self.db)
            .await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_are_whole_chunks_then_powers_of_two_and_cover_the_batch() {
        for n in [0usize, 1, 2, 3, 7, 255, 256, 257, 511, 999, 1000, 1001, 1024, 5000] {
            let sizes: Vec<usize> = statement_sizes(n).collect();
            assert_eq!(sizes.iter().sum::<usize>(), n, "{n}: {sizes:?}");
            assert!(sizes.iter().all(|s| *s == MAX_CHUNK || (s.is_power_of_two() && *s < MAX_CHUNK)), "{n}: {sizes:?}");
            assert!(sizes.windows(2).all(|w| w[0] >= w[1]), "{n}: {sizes:?}");
        }
        assert_eq!(statement_sizes(1000).collect::<Vec<_>>(), [1000]);
        assert_eq!(statement_sizes(300).collect::<Vec<_>>(), [256, 32, 8, 4]);
    }
}

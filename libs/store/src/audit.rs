//! The audit trail's rows. Sequence numbers are assigned by whichever audit-service replica holds the append
//! lock; event ids are unique so a re-sent batch is recognised and not stored twice.

use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, EntityTrait, IntoActiveModel,
    QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};

use crate::{StoreError, entity::audit_record};

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
    pub async fn append_chain(
        &self,
        event_ids: &[String],
        build: impl FnOnce(Option<(i64, String)>, Vec<String>) -> Vec<audit_record::Model>,
    ) -> Result<usize, StoreError> {
        let txn = self.db.begin().await?;
        if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
            txn.execute_unprepared("SELECT pg_advisory_xact_lock(7401740174017402)").await?;
        }
        let head = audit_record::Entity::find()
            .order_by_desc(audit_record::Column::Sequence)
            .one(&txn)
            .await?
            .map(|r| (r.sequence, r.hash));
        let existing = if event_ids.is_empty() {
            vec![]
        } else {
            audit_record::Entity::find()
                .filter(audit_record::Column::EventId.is_in(event_ids.iter().cloned()))
                .all(&txn)
                .await?
                .into_iter()
                .map(|r| r.event_id)
                .collect()
        };
        let records = build(head, existing);
        let stored = records.len();
        for record in records {
            record.into_active_model().insert(&txn).await.map_err(|e| StoreError::from_insert("audit event", e))?;
        }
        txn.commit().await?;
        Ok(stored)
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

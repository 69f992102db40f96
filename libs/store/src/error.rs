/// Storage failures. Services map these to gRPC codes in one place each.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached (URL shown with its password redacted).
    #[error("cannot connect to database {url}: {reason}")]
    Connect {
        /// Redacted URL.
        url: String,
        /// The driver's message with the URL and password removed.
        reason: String,
    },
    /// Applying migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[source] sea_orm::DbErr),
    /// A row with the same unique name exists.
    #[error("{what} already exists")]
    AlreadyExists {
        /// What kind of thing.
        what: &'static str,
    },
    /// The database did not answer in time or the connection to it failed: an outage the caller may retry
    /// after, never an internal error.
    #[error("the database is unavailable: {0}")]
    Unavailable(#[source] sea_orm::DbErr),
    /// A query failed.
    #[error("database error: {0}")]
    Db(sea_orm::DbErr),
    /// A stored value could not be decoded (corruption or a newer schema).
    #[error("corrupt stored {what}: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

impl From<sea_orm::DbErr> for StoreError {
    fn from(err: sea_orm::DbErr) -> Self {
        if is_outage(&err) { Self::Unavailable(err) } else { Self::Db(err) }
    }
}

/// Whether `err` says the database is out of reach (no connection within the acquire deadline, a connection
/// that broke, a statement cancelled at its deadline) rather than that the query was wrong.
fn is_outage(err: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr, sqlx::Error as Sqlx};
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => match e.as_ref() {
            Sqlx::Io(_) | Sqlx::PoolTimedOut | Sqlx::PoolClosed | Sqlx::WorkerCrashed | Sqlx::Tls(_) => true,
            // 57014 query_canceled (the statement deadline), 57P0x shutting down, starting up or in recovery (a
            // failover), 53300 too many connections, 08xxx connection exceptions.
            Sqlx::Database(db) => {
                db.code().is_some_and(|c| c == "57014" || c == "53300" || c.starts_with("57P") || c.starts_with("08"))
            }
            _ => false,
        },
        _ => false,
    }
}

impl StoreError {
    pub(crate) fn from_insert(what: &'static str, err: sea_orm::DbErr) -> Self {
        match err.sql_err() {
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => Self::AlreadyExists { what },
            _ => err.into(),
        }
    }
}

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
    /// A query failed.
    #[error("database error: {0}")]
    Db(#[from] sea_orm::DbErr),
    /// A stored value could not be decoded (corruption or a newer schema).
    #[error("corrupt stored {what}: {detail}")]
    Corrupt {
        /// Which value.
        what: &'static str,
        /// Why.
        detail: String,
    },
}

impl StoreError {
    pub(crate) fn from_insert(what: &'static str, err: sea_orm::DbErr) -> Self {
        match err.sql_err() {
            Some(sea_orm::SqlErr::UniqueConstraintViolation(_)) => Self::AlreadyExists { what },
            _ => Self::Db(err),
        }
    }
}

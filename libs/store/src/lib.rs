//! Storage for every service: sea-orm entities, one migration history, and repositories whose methods
//! always take the tenant they act for. Runs on SQLite (the embedded default) and on Postgres.

pub mod audit;
pub mod config;
pub mod entity;
mod error;
pub mod keys;
mod migration;
pub mod tokens;

pub use error::StoreError;
pub use migration::Migrator;
pub use sea_orm::DatabaseConnection;

use std::{
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, TransactionTrait,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};
use sea_orm_migration::MigratorTrait;

/// The longest one call of the key and token repositories may take, in milliseconds, client side: two acquire
/// deadlines and two statement deadlines (a call takes at most two connections one after the other). Postgres cancels a statement past its deadline only while it
/// runs; a database that stopped answering altogether (a frozen process, a network that drops packets) would
/// otherwise hold the call until TCP gave up, many minutes later. Process-wide: a service opens one database,
/// and the last connection opened sets it.
static CALL_DEADLINE_MS: AtomicU64 = AtomicU64::new(8000);
/// One statement deadline, for calls that run more statements than the base deadline allows for.
static STATEMENT_DEADLINE_MS: AtomicU64 = AtomicU64::new(2000);

/// Runs one repository call under [`CALL_DEADLINE_MS`]; past it the call is `Unavailable`, like any outage.
/// Work the call started is dropped with it (its connection is discarded, its transaction rolled back by the
/// server when the connection closes).
pub(crate) async fn bounded<T>(call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    bounded_with(0, call).await
}

/// [`bounded`] for a call that runs `extra` statements beyond the two the base deadline allows for.
pub(crate) async fn bounded_with<T>(
    extra: usize,
    call: impl Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let deadline = Duration::from_millis(
        CALL_DEADLINE_MS.load(Ordering::Relaxed)
            + STATEMENT_DEADLINE_MS.load(Ordering::Relaxed).saturating_mul(extra as u64),
    );
    tokio::time::timeout(deadline, call).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(sea_orm::DbErr::Custom(format!(
            "no answer from the database within {} ms",
            deadline.as_millis()
        ))))
    })
}

/// Connects to `url` (`sqlite://path?mode=rwc` or `postgres://…`) with the default deadlines and applies
/// pending migrations.
pub async fn connect_and_migrate(url: &str) -> Result<DatabaseConnection, StoreError> {
    connect_and_migrate_with(&config::DatabaseSettings::new(url.to_owned())).await
}

/// Connects as `settings` say and applies pending migrations.
pub async fn connect_and_migrate_with(settings: &config::DatabaseSettings) -> Result<DatabaseConnection, StoreError> {
    let url = settings.url.as_str();
    let call_deadline = 2 * settings.acquire_timeout + 2 * settings.statement_timeout;
    CALL_DEADLINE_MS.store(call_deadline.as_millis() as u64, Ordering::Relaxed);
    STATEMENT_DEADLINE_MS.store(settings.statement_timeout.as_millis() as u64, Ordering::Relaxed);
    let mut options = ConnectOptions::new(url.to_owned());
    options.sqlx_logging(false);
    options.acquire_timeout(settings.acquire_timeout);
    options.statement_timeout(settings.statement_timeout);
    if url.starts_with("sqlite:") {
        // One writer at a time is SQLite's model anyway; more connections only add lock contention.
        options.max_connections(1);
        // Write-ahead logging, with every commit synced before it returns (FULL): a commit is one append and one
        // fsync of the log, where the rollback journal's default took a journal file created, synced and
        // deleted and the database file synced, for each transaction. audit-service commits a batch of the
        // trail per transaction, so this was most of its I/O. Readers (another process included) see the last
        // commit while a write is under way.
        options.map_sqlx_sqlite_opts(|sqlite| {
            sqlite.journal_mode(SqliteJournalMode::Wal).synchronous(SqliteSynchronous::Full)
        });
    } else {
        options.max_connections(16);
    }
    let db = Database::connect(options)
        .await
        .map_err(|e| StoreError::Connect { url: redact_url(url), reason: scrub(&e.to_string(), url) })?;
    if db.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        // Replicas (or services sharing one database) may start together: one migrates at a time, the
        // others then find nothing to do. The lock is released with the transaction.
        let txn = db.begin().await?;
        // Waiting for another replica's migration, and the migration itself, may take longer than a call's
        // statement deadline.
        txn.execute_unprepared("SET LOCAL statement_timeout = 0").await?;
        txn.execute_unprepared("SELECT pg_advisory_xact_lock(7401740174017401)").await?;
        Migrator::up(&txn, None).await.map_err(StoreError::Migrate)?;
        txn.commit().await?;
    } else {
        Migrator::up(&db, None).await.map_err(StoreError::Migrate)?;
    }
    Ok(db)
}

/// A driver message with the URL (and its password, however escaped) removed.
fn scrub(message: &str, url: &str) -> String {
    let mut message = message.replace(url, &redact_url(url));
    if let (Some(scheme_end), Some(at)) = (url.find("://"), url.rfind('@'))
        && let Some((_, password)) = url.get(scheme_end + 3..at).and_then(|u| u.split_once(':'))
        && !password.is_empty()
    {
        message = message.replace(password, "***");
    }
    message
}

/// A database URL with any password replaced by `***`, for logs and errors.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

/// Milliseconds since the Unix epoch: the one time representation stored, portable across databases.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether the database answers, for a readiness check. The reason never carries the connection string.
pub async fn ping(db: &DatabaseConnection) -> Result<(), String> {
    db.ping().await.map_err(|e| match e {
        sea_orm::DbErr::ConnectionAcquire(_) => {
            "no database connection could be opened or taken from the pool".to_owned()
        }
        _ => "the database does not answer".to_owned(),
    })
}

/// The `database` check of a service's `/readyz`: [`ping`] on `db`, as `Readiness::add` takes it.
pub fn readiness_check(
    db: DatabaseConnection,
) -> impl Fn() -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), String>> + Send>> + Send + Sync + 'static
{
    move || {
        let db = db.clone();
        Box::pin(async move { ping(&db).await })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("postgres://app:s3cret@db:5432/keymesh"), "postgres://app:***@db:5432/keymesh");
        assert_eq!(redact_url("sqlite://data/key.db?mode=rwc"), "sqlite://data/key.db?mode=rwc");
        assert!(!redact_url("postgres://u:p%40ss@h/db").contains("p%40ss"));
        let url = "postgres://u:s3cr/t@h/db";
        assert!(!scrub(&format!("The connection string '{url}' cannot be parsed"), url).contains("s3cr/t"));
    }

    #[tokio::test]
    async fn an_embedded_database_logs_ahead_and_syncs_every_commit() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("audit-service.db").display());
        let db = connect_and_migrate(&url).await.unwrap();
        let pragma = |name: &'static str| {
            let db = db.clone();
            async move {
                let statement = sea_orm::Statement::from_string(db.get_database_backend(), format!("PRAGMA {name}"));
                let row = db.query_one_raw(statement).await.unwrap().unwrap();
                row.try_get_by_index::<String>(0).or_else(|_| row.try_get_by_index::<i64>(0).map(|n| n.to_string()))
            }
        };
        assert_eq!(pragma("journal_mode").await.unwrap(), "wal");
        // 2 is FULL: a commit returns once the log is synced.
        assert_eq!(pragma("synchronous").await.unwrap(), "2");
    }
}

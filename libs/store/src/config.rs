//! `[database]`: where a service keeps its tables.

use std::path::Path;

use serde::Deserialize;

/// `[database]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// `postgres://…` or `sqlite://…`; default a SQLite file per service in `data_dir`.
    pub url: Option<String>,
    /// How long a call waits for a pooled connection before it fails UNAVAILABLE; default 2000 (100 to 60000).
    pub acquire_timeout_ms: Option<u64>,
    /// How long Postgres lets one statement run before cancelling it (the call then fails UNAVAILABLE);
    /// default 2000 (100 to 600000). Migrations, start-up locks and audit pruning set their own.
    pub statement_timeout_ms: Option<u64>,
}

/// Where a service keeps its tables, and how long it waits for them.
#[derive(Clone)]
pub struct DatabaseSettings {
    /// `postgres://…` or `sqlite://…`.
    pub url: String,
    /// Wait for a pooled connection.
    pub acquire_timeout: std::time::Duration,
    /// Deadline of one statement (Postgres).
    pub statement_timeout: std::time::Duration,
}

impl std::fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &crate::redact_url(&self.url))
            .field("acquire_timeout", &self.acquire_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .finish()
    }
}

impl DatabaseSettings {
    /// `url` with the default deadlines (2 s each): an outage answers UNAVAILABLE within seconds, not after
    /// the driver's 30 s.
    pub fn new(url: String) -> Self {
        Self { url, acquire_timeout: DEFAULT_TIMEOUT, statement_timeout: DEFAULT_TIMEOUT }
    }
}

/// The acquire and statement deadline unless configured.
pub const DEFAULT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

impl std::fmt::Debug for RawDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Database URLs carry passwords: say only whether one is set.
        f.debug_struct("RawDatabase").field("url", &self.url.as_ref().map(|_| "<redacted>")).finish()
    }
}

impl RawDatabase {
    /// The configured URL, or a SQLite file named for the service in its data directory.
    pub fn url_or_sqlite(&self, data_dir: &Path, service: &str) -> String {
        self.url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}?mode=rwc", data_dir.join(format!("{service}.db")).display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_a_sqlite_file_per_service_and_passwords_never_print() {
        let default = RawDatabase::default();
        assert_eq!(
            default.url_or_sqlite(Path::new(".keymesh"), "crypto-service"),
            "sqlite://.keymesh/crypto-service.db?mode=rwc"
        );
        let configured = RawDatabase { url: Some("postgres://app:hunter2@db/keymesh".into()), ..Default::default() };
        assert_eq!(configured.url_or_sqlite(Path::new("x"), "y"), "postgres://app:hunter2@db/keymesh");
        assert!(!format!("{configured:?}").contains("hunter2"));
    }
}

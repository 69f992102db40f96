//! `[database]`: where a service keeps its tables.

use std::path::Path;

use serde::Deserialize;

/// `[database]`.
#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDatabase {
    /// `postgres://…` or `sqlite://…`; default a SQLite file per service in `data_dir`.
    pub url: Option<String>,
}

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
        let configured = RawDatabase { url: Some("postgres://app:hunter2@db/keymesh".into()) };
        assert_eq!(configured.url_or_sqlite(Path::new("x"), "y"), "postgres://app:hunter2@db/keymesh");
        assert!(!format!("{configured:?}").contains("hunter2"));
    }
}

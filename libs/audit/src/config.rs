//! `[audit]`: the spool of every emitting service, and audit-service's retention and checkpoints.

use std::{path::PathBuf, time::Duration};

use keymesh_mesh::config::{ConfigError, MeshParams, bounded, bounded_millis, bounded_seconds};
use serde::Deserialize;

/// `[audit]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAudit {
    /// `strict` (default: a call whose event cannot be spooled fails), `best_effort` (the call is answered
    /// and the loss logged) or `off` (no events; for benchmarks and throwaway setups).
    pub mode: Option<String>,
    /// The emitting service's spool directory; default `data_dir/audit-spool/<service>`. One per process.
    pub spool_dir: Option<PathBuf>,
    /// MiB of events not yet acknowledged by audit-service before calls wait (1..=65536; default 256).
    pub spool_max_mib: Option<u64>,
    /// Milliseconds a call waits for space in a full spool before it fails (0..=60000; default 2000).
    pub spool_full_wait_ms: Option<u64>,
    /// audit-service: days a record is kept (1..=36500; default 90).
    pub retention_days: Option<u64>,
    /// audit-service: seconds between signed checkpoints of the chain (1..=86400; default 60).
    pub checkpoint_interval_seconds: Option<u64>,
    /// Seconds over which refused authentications from one source to one method are counted into one
    /// event (1..=3600; default 60): the first refusal is recorded at once, the rest of the window as one
    /// event with their count, so a flood of bad tokens cannot flood the trail.
    pub refused_auth_window_seconds: Option<u64>,
}

/// What an emitting service does with its audit events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditMode {
    /// Every event is spooled durably before its call is answered; a call whose event cannot be is failed.
    Strict,
    /// Events are spooled before the answer, but a call is answered even when its event could not be.
    BestEffort,
    /// No events at all.
    Off,
}

/// Validated `[audit]`.
#[derive(Debug, Clone)]
pub struct AuditParams {
    /// Strict, best effort or off.
    pub mode: AuditMode,
    /// The spool directory.
    pub spool_dir: PathBuf,
    /// Unacknowledged bytes before back-pressure.
    pub spool_max_bytes: u64,
    /// How long a call waits for space.
    pub spool_full_wait: Duration,
    /// How long audit-service keeps records.
    pub retention: Duration,
    /// How often audit-service signs a checkpoint.
    pub checkpoint_interval: Duration,
    /// The window over which refused authentications are counted into one event.
    pub refused_auth_window: Duration,
}

impl AuditParams {
    /// Validates `[audit]` for the service `params` describes.
    pub fn from_raw(a: &RawAudit, params: &MeshParams) -> Result<Self, ConfigError> {
        let mode = match a.mode.as_deref() {
            None | Some("strict") => AuditMode::Strict,
            Some("best_effort") => AuditMode::BestEffort,
            Some("off") => AuditMode::Off,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    field: "audit.mode",
                    reason: format!("{other:?} is not one of \"strict\", \"best_effort\", \"off\""),
                });
            }
        };
        let spool_dir = match &a.spool_dir {
            Some(dir) if dir.as_os_str().is_empty() => {
                return Err(ConfigError::Invalid { field: "audit.spool_dir", reason: "must not be empty".into() });
            }
            Some(dir) => dir.clone(),
            None => params.data_dir.join("audit-spool").join(params.service.as_str()),
        };
        let mib = bounded("audit.spool_max_mib", a.spool_max_mib, 256, 1..=65536)?;
        let days = bounded("audit.retention_days", a.retention_days, 90, 1..=36_500)?;
        Ok(Self {
            mode,
            spool_dir,
            spool_max_bytes: mib * 1024 * 1024,
            spool_full_wait: bounded_millis("audit.spool_full_wait_ms", a.spool_full_wait_ms, 2000, 0..=60_000)?,
            retention: Duration::from_secs(days * 86_400),
            checkpoint_interval: bounded_seconds(
                "audit.checkpoint_interval_seconds",
                a.checkpoint_interval_seconds,
                60,
                1..=86_400,
            )?,
            refused_auth_window: bounded_seconds(
                "audit.refused_auth_window_seconds",
                a.refused_auth_window_seconds,
                60,
                1..=3600,
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use keymesh_mesh::{
        ServiceName,
        config::{ConfigSource, RawTransport},
    };

    use super::*;

    fn params_of(pairs: &[(&str, &str)]) -> Result<AuditParams, ConfigError> {
        let env: BTreeMap<String, String> = pairs.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
        let source = ConfigSource::load(None, &env)?;
        let mesh = MeshParams::from_raw(ServiceName::CryptoService, &source.top_level(RawTransport::KEYS)?)?;
        AuditParams::from_raw(&source.section("audit")?, &mesh)
    }

    #[test]
    fn defaults_and_errors_name_the_field() {
        let p = params_of(&[]).unwrap();
        assert_eq!(p.mode, AuditMode::Strict);
        assert_eq!(p.spool_dir, PathBuf::from(".keymesh/audit-spool/crypto-service"));
        assert_eq!(p.refused_auth_window, Duration::from_secs(60));
        let err = params_of(&[("KEYMESH_AUDIT__MODE", "sometimes")]).unwrap_err().to_string();
        assert!(err.contains("audit.mode"), "{err}");
        let err = params_of(&[("KEYMESH_AUDIT__REFUSED_AUTH_WINDOW_SECONDS", "0")]).unwrap_err().to_string();
        assert!(err.contains("audit.refused_auth_window_seconds"), "{err}");
        let err = params_of(&[("KEYMESH_AUDIT__SPOOL_MAX_MEB", "1")]).unwrap_err().to_string();
        assert!(err.contains("spool_max_meb"), "{err}");
    }
}

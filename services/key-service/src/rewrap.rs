//! KEK re-wrap: after the keyring changes (a new KEK version, a new primary, a secondary added, a backend
//! retired), every stored DEK is re-wrapped so that it is wrapped exactly as the keyring would wrap it now.
//! Ciphertexts are never touched: the DEKs stay the same, only their wrapping changes.
//!
//! Online: each key is locked only while its own versions are re-wrapped, and keys created or rotated
//! meanwhile are wrapped under the new keyring anyway, provided every replica already runs it (hence: roll
//! the new configuration out first, then re-wrap). Resumable: the job's cursor (the last key id done)
//! and counters are saved in `rewrap_jobs`, so a run after a crash continues from there; re-wrapping a
//! version that is already current is a no-op, so overlap costs nothing. A start takes over the job of its
//! scope; a runner that finds itself taken over stops. A KMS outage stops the run (to resume later) rather
//! than marking every key failed; a version whose material no configured backend can unwrap is counted as
//! failed and named in `last_error`.

use std::time::{Duration, Instant};

use keymesh_kms::KmsError;
use keymesh_store::{entity::rewrap_job, keys::KeyLookup, now_millis};

use crate::{
    error::KeyError,
    key_store::{KeyStore, algorithm, store_wraps, stored_wraps, wrap_context},
};

/// Keys fetched per page of the walk.
const PAGE: u64 = 100;
/// Progress is saved (and reported) after this many keys or this much time, whichever comes first.
const SAVE_EVERY_KEYS: i64 = 50;
const SAVE_EVERY: Duration = Duration::from_millis(500);

/// How far a re-wrap got.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Keys in scope when the job started.
    pub keys_total: u64,
    /// Keys processed.
    pub keys_done: u64,
    /// Versions whose wraps changed.
    pub versions_rewrapped: u64,
    /// Versions that were already current.
    pub versions_current: u64,
    /// Versions no configured backend could unwrap.
    pub versions_failed: u64,
    /// Whether this run continued an interrupted one.
    pub resumed: bool,
    /// Whether the walk is complete.
    pub done: bool,
    /// The keyring re-wrapped to: member names and KEK ids.
    pub target: String,
    /// The last failure.
    pub last_error: Option<String>,
}

impl Progress {
    fn of(job: &rewrap_job::Model, resumed: bool) -> Self {
        let count = |n: i64| u64::try_from(n).unwrap_or(0);
        Self {
            keys_total: count(job.keys_total),
            keys_done: count(job.keys_done),
            versions_rewrapped: count(job.versions_rewrapped),
            versions_current: count(job.versions_current),
            versions_failed: count(job.versions_failed),
            resumed,
            done: job.finished_at.is_some(),
            target: job.target.clone(),
            last_error: job.last_error.clone(),
        }
    }
}

/// Re-wraps every key of `tenant` (or of every tenant), calling `report` as it goes. Returns the final
/// progress; an error means the run stopped early and a new run resumes it.
pub async fn run(
    store: &KeyStore,
    tenant: Option<&str>,
    mut report: impl FnMut(&Progress) + Send,
) -> Result<Progress, KeyError> {
    let repo = store.repo();
    let scope = tenant.unwrap_or("*").to_owned();
    let target = match tenant {
        Some(tenant) => store.kms().for_tenant(tenant).target(),
        None => store.kms().target(),
    };
    let runner = uuid::Uuid::new_v4().to_string();
    let now = now_millis();
    let (mut job, resumed) = match repo.rewrap_job(&scope).await? {
        Some(job) if job.target == target && job.finished_at.is_none() => {
            (rewrap_job::Model { runner, updated_at: now, ..job }, true)
        }
        _ => {
            let keys_total = i64::try_from(repo.count_keys(tenant).await?).unwrap_or(i64::MAX);
            let job = rewrap_job::Model {
                scope,
                target,
                runner,
                cursor: None,
                keys_total,
                keys_done: 0,
                versions_rewrapped: 0,
                versions_current: 0,
                versions_failed: 0,
                started_at: now,
                updated_at: now,
                finished_at: None,
                last_error: None,
            };
            (job, false)
        }
    };
    repo.start_rewrap_job(&job).await?;
    if resumed {
        tracing::info!(scope = %job.scope, done = job.keys_done, total = job.keys_total, "resuming re-wrap");
    }
    report(&Progress::of(&job, resumed));

    let mut last_save = Instant::now();
    loop {
        let ids = repo.key_ids_after(tenant, job.cursor.as_deref(), PAGE).await?;
        if ids.is_empty() {
            break;
        }
        for id in ids {
            match rewrap_key(store, &id).await {
                Ok(outcome) => {
                    job.versions_rewrapped += outcome.rewrapped;
                    job.versions_current += outcome.current;
                    job.versions_failed += outcome.failed;
                    if let Some(error) = outcome.error {
                        job.last_error = Some(error);
                    }
                }
                // Deleted since the page was read: nothing to re-wrap.
                Err(KeyError::KeyNotFound(_)) => {}
                Err(e) => {
                    job.last_error = Some(format!("key {id}: {e}"));
                    job.updated_at = now_millis();
                    repo.save_rewrap_job(&job).await?;
                    return Err(e);
                }
            }
            job.keys_done += 1;
            job.cursor = Some(id);
            if job.keys_done % SAVE_EVERY_KEYS == 0 || last_save.elapsed() >= SAVE_EVERY {
                save(store, &mut job).await?;
                report(&Progress::of(&job, resumed));
                last_save = Instant::now();
            }
        }
    }
    job.finished_at = Some(now_millis());
    // Keys created during the run count as done too.
    job.keys_total = job.keys_total.max(job.keys_done);
    save(store, &mut job).await?;
    let progress = Progress::of(&job, resumed);
    report(&progress);
    tracing::info!(
        scope = %job.scope,
        rewrapped = job.versions_rewrapped,
        current = job.versions_current,
        failed = job.versions_failed,
        "re-wrap finished"
    );
    Ok(progress)
}

async fn save(store: &KeyStore, job: &mut rewrap_job::Model) -> Result<(), KeyError> {
    job.updated_at = now_millis();
    if store.repo().save_rewrap_job(job).await? {
        Ok(())
    } else {
        Err(KeyError::FailedPrecondition(format!(
            "another re-wrap of scope {:?} took over this one; follow that one instead",
            job.scope
        )))
    }
}

/// What re-wrapping one key did.
#[derive(Debug, Default)]
struct KeyOutcome {
    rewrapped: i64,
    current: i64,
    failed: i64,
    error: Option<String>,
}

/// Re-wraps the versions of one key under its row lock. A KMS outage aborts (nothing of this key is
/// committed); a version that cannot be unwrapped is counted and left as it is.
async fn rewrap_key(store: &KeyStore, key_id: &str) -> Result<KeyOutcome, KeyError> {
    let mut locked = store.lock(KeyLookup::ById(key_id)).await?;
    let mut outcome = KeyOutcome::default();
    let record = locked.record.clone();
    for version in &mut locked.record.versions {
        // A version that cannot even be read is counted and skipped, so it cannot stall every resume.
        let prepared = stored_wraps(version).and_then(|wraps| {
            let context = wrap_context(&record, version.version as u32, algorithm(&record, version)?);
            Ok(wraps.map(|w| (w, context)))
        });
        let (wraps, context) = match prepared {
            Ok(Some(prepared)) => prepared,
            Ok(None) => continue,
            Err(e) => {
                outcome.failed += 1;
                outcome.error = Some(format!("key {key_id} version {}: {e}", version.version));
                continue;
            }
        };
        match store.kms().for_tenant(&record.key.tenant_id).rewrap(&wraps, &context).await {
            Ok(Some(new)) => {
                store_wraps(version, &new);
                outcome.rewrapped += 1;
            }
            Ok(None) => outcome.current += 1,
            Err(e @ KmsError::Unavailable { .. }) => return Err(e.into()),
            Err(e) => {
                tracing::warn!(key_id, version = version.version, error = %e, "cannot re-wrap version");
                outcome.failed += 1;
                outcome.error = Some(format!("key {key_id} version {}: {e}", version.version));
            }
        }
    }
    store.commit(locked).await?;
    Ok(outcome)
}

//! Refused authentications, counted instead of recorded one by one.
//!
//! A call whose token is missing or does not verify costs the caller nothing, so a broken or hostile client
//! can send thousands a second; one audit event each would let it flood the trail (and the spool's disk).
//! Each source (the caller's certificate identity), method and status code gets a window instead: its first refusal is
//! recorded at once, so a single bad call is in the trail as soon as it is answered, and the refusals after it
//! are counted and recorded as one event carrying their count when the window ends. A flood of any size is
//! thus at most two events per source, method and window, and the counts add up to every refusal.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use keymesh_proto::v1 as pb;

/// Most windows open at once; refusals from further sources share one window (identity
/// [`OTHER_SOURCES`]) until some close, so that many sources cannot grow the map without bound either.
const MAX_OPEN: usize = 10_000;

/// The identity the refusals of sources beyond [`MAX_OPEN`] are counted under.
pub const OTHER_SOURCES: &str = "(other sources)";

#[derive(Clone, PartialEq, Eq, Hash)]
struct Source {
    service: String,
    operation: String,
    identity: String,
    /// UNAUTHENTICATED (the caller's token) or UNAVAILABLE (the verifier could not hear from token-service).
    code: i32,
}

struct Window {
    opened: Instant,
    /// Refusals after the first.
    further: u64,
    /// The last refusal's message.
    reason: String,
}

/// The open windows of one process.
pub(crate) struct RefusalWindows {
    window: Duration,
    open: Mutex<HashMap<Source, Window>>,
}

/// One refused authentication.
pub(crate) struct Refusal<'a> {
    pub service: &'a str,
    pub operation: &'a str,
    pub identity: &'a str,
    pub status: &'a tonic::Status,
}

impl RefusalWindows {
    pub(crate) fn new(window: Duration) -> Self {
        Self { window, open: Mutex::new(HashMap::new()) }
    }

    /// How often the windows should be looked at for ones that ended.
    pub(crate) fn tick(&self) -> Duration {
        (self.window / 4).clamp(Duration::from_millis(100), Duration::from_secs(5))
    }

    /// Counts a refusal. What to record now: nothing while its window is open; when it opens a window, its
    /// own event (count 1), after the summary of the source's previous window if that ended unswept.
    pub(crate) fn note(&self, refusal: &Refusal<'_>, now: Instant) -> Vec<pb::AuditEvent> {
        // A panic elsewhere while the lock was held leaves the map as consistent as any other moment.
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut source = Source {
            service: refusal.service.to_owned(),
            operation: refusal.operation.to_owned(),
            identity: refusal.identity.to_owned(),
            code: refusal.status.code() as i32,
        };
        if !open.contains_key(&source) && open.len() >= MAX_OPEN {
            source.identity = OTHER_SOURCES.to_owned();
        }
        match open.get_mut(&source) {
            Some(window) if now.duration_since(window.opened) < self.window => {
                window.further += 1;
                window.reason = refusal.status.message().to_owned();
                vec![]
            }
            // An ended window still in the map is summarised by the next sweep; this refusal opens a new one.
            _ => {
                let ended = open.insert(
                    source.clone(),
                    Window { opened: now, further: 0, reason: refusal.status.message().to_owned() },
                );
                let mut events: Vec<_> =
                    ended.filter(|w| w.further > 0).map(|w| summary(&source, &w, self.window)).into_iter().collect();
                events.push(event_of(&source, 1, refusal.status.message()));
                events
            }
        }
    }

    /// The summaries of the windows that ended by `now` (every window, with `all`), which are closed.
    pub(crate) fn sweep(&self, now: Instant, all: bool) -> Vec<pb::AuditEvent> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let mut summaries = Vec::new();
        open.retain(|source, window| {
            let ended = all || now.duration_since(window.opened) >= self.window;
            if ended && window.further > 0 {
                summaries.push(summary(source, window, self.window));
            }
            !ended
        });
        summaries
    }
}

/// The event of refusals from one source to one method.
fn event_of(source: &Source, count: u64, reason: &str) -> pb::AuditEvent {
    let mut event = crate::event(&source.service, &source.operation);
    event.identity = crate::bounded(&source.identity);
    event.outcome = match tonic::Code::from_i32(source.code) {
        tonic::Code::Unauthenticated => pb::Outcome::Denied as i32,
        _ => pb::Outcome::Failed as i32,
    };
    event.status_code = source.code;
    event.reason = crate::bounded_to(reason, crate::MAX_REASON);
    event.count = count;
    event
}

fn summary(source: &Source, window: &Window, length: Duration) -> pb::AuditEvent {
    let reason = format!(
        "{} more refused authentications within {} s of the first; the last: {}",
        window.further,
        length.as_secs(),
        window.reason
    );
    let mut event = event_of(source, window.further, &reason);
    // Many calls, recorded outside any of them: no one call's trace or request id.
    event.trace_id.clear();
    event.request_id.clear();
    event
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(identity: &str) -> (String, tonic::Status) {
        (identity.to_owned(), tonic::Status::unauthenticated("the access token is invalid"))
    }

    #[test]
    fn a_flood_is_one_event_at_once_and_one_with_the_count() {
        let windows = RefusalWindows::new(Duration::from_secs(60));
        let start = Instant::now();
        let (identity, status) = refusal("spiffe://keymesh/app/a");
        let note = |at: Duration| {
            windows.note(
                &Refusal { service: "crypto-service", operation: "Encrypt", identity: &identity, status: &status },
                start + at,
            )
        };
        let first = note(Duration::ZERO);
        assert_eq!(first.len(), 1);
        assert_eq!((first[0].count, first[0].status_code, first[0].tenant_id.as_str()), (1, 16, ""));
        for i in 1..10_000u64 {
            assert!(note(Duration::from_millis(i)).is_empty());
        }
        assert!(windows.sweep(start + Duration::from_secs(59), false).is_empty(), "the window is still open");
        let summaries = windows.sweep(start + Duration::from_secs(60), false);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].count, 9_999);
        assert_eq!(summaries[0].outcome, pb::Outcome::Denied as i32);
        assert!(windows.sweep(start + Duration::from_secs(120), true).is_empty(), "nothing is counted twice");
    }

    #[test]
    fn a_verifier_that_cannot_reach_token_service_is_counted_apart_as_failed() {
        let windows = RefusalWindows::new(Duration::from_secs(60));
        let start = Instant::now();
        let identity = "spiffe://keymesh/app/a";
        let bad = tonic::Status::unauthenticated("the access token is invalid");
        let stale = tonic::Status::unavailable("revocations are stale");
        let note = |status: &tonic::Status| {
            windows.note(&Refusal { service: "key-service", operation: "GetKey", identity, status }, start)
        };
        let first_bad = note(&bad);
        let first_stale = note(&stale);
        assert_eq!((first_bad.len(), first_stale.len()), (1, 1), "each status opens a window of its own");
        assert_eq!((first_bad[0].outcome, first_bad[0].status_code), (pb::Outcome::Denied as i32, 16));
        assert_eq!((first_stale[0].outcome, first_stale[0].status_code), (pb::Outcome::Failed as i32, 14));
        assert!(note(&stale).is_empty());
        let summaries = windows.sweep(start, true);
        assert_eq!(summaries.len(), 1);
        assert_eq!((summaries[0].status_code, summaries[0].count), (14, 1));
        assert!(summaries[0].trace_id.is_empty() && summaries[0].request_id.is_empty(), "no one call's ids");
    }

    #[test]
    fn an_ended_window_is_summarised_when_the_next_refusal_reopens_it_and_sources_are_bounded() {
        let windows = RefusalWindows::new(Duration::from_secs(1));
        let start = Instant::now();
        let (identity, status) = refusal("spiffe://keymesh/app/a");
        let r = Refusal { service: "key-service", operation: "GetKey", identity: &identity, status: &status };
        assert_eq!(windows.note(&r, start).len(), 1);
        assert!(windows.note(&r, start + Duration::from_millis(10)).is_empty());
        let reopened = windows.note(&r, start + Duration::from_secs(2));
        assert_eq!(reopened.iter().map(|e| e.count).collect::<Vec<_>>(), [1, 1], "the summary, then the new first");

        let windows = RefusalWindows::new(Duration::from_secs(60));
        let status = tonic::Status::unauthenticated("missing");
        let mut recorded = 0;
        for i in 0..MAX_OPEN + 50 {
            let identity = format!("spiffe://keymesh/app/{i}");
            let r = Refusal {
                service: "token-service",
                operation: "ListApplications",
                identity: &identity,
                status: &status,
            };
            recorded += windows.note(&r, start).len();
        }
        assert_eq!(recorded, MAX_OPEN + 1, "sources beyond the bound share one window");
        let summaries = windows.sweep(start, true);
        assert_eq!(summaries.len(), 1);
        assert_eq!((summaries[0].identity.as_str(), summaries[0].count), (OTHER_SOURCES, 49));
    }
}

//! The emitter's durable spool: an event is on disk, fsynced, before the call it records is answered, so a
//! crash or an audit-service outage loses nothing that was acknowledged.
//!
//! Events are framed (`length | CRC-32C | protobuf`) and appended to numbered segment files by one writer
//! thread. The thread takes every request waiting when it wakes and commits them with a single
//! `fdatasync` (group commit): under load one flush covers many calls, so the cost per call falls as
//! concurrency rises. The shipper reads the segments from disk behind the writer and records, in a small
//! cursor file, how far audit-service has acknowledged; segments wholly behind the cursor are deleted.
//!
//! A segment is written ahead with zeros (a mebibyte at a time, in the same write as the group that reaches
//! the end of the zeroed room), and groups are written over those zeros. A flush that extends a file must
//! also commit the file system's journal (the new length is metadata); one that overwrites written blocks
//! flushes only the data: on ext4 here half the time and half the CPU per group. The zeros end the frames: a
//! frame's length is never zero.
//!
//! The spool is bounded: when the bytes not yet acknowledged reach the limit the writer waits for the
//! shipper to free space (back-pressure on every call) and, past a deadline, refuses the events, which in
//! strict mode fails the calls.
//!
//! After a crash the last segment may end in a torn frame; it is cut at the last whole one (that event's
//! call was never answered). The cursor is renamed into place but not fsynced: a cursor lost to a power cut
//! only means re-sending events, which audit-service recognises by id and stores once.
//!
//! The shipper sends the frames' payloads as they are (see `keymesh_proto::audit_frames`): an event is encoded
//! once, where it happens, and never decoded again before audit-service.

use std::{
    collections::{BTreeMap, VecDeque},
    fs::{self, File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    path::{Path, PathBuf},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime},
};

use std::os::unix::fs::{FileExt, OpenOptionsExt};

use keymesh_proto::v1 as pb;
use prost::{Message, bytes::Bytes};
use tokio::sync::{Notify, mpsc, oneshot};

/// Slice-by-16 (a 16 KiB table): every frame is checksummed where it is written and again where it is shipped, and
/// the bytewise default took 1 % of the four services' CPU in a profile under load.
static CASTAGNOLI: crc::Crc<u32, crc::Table<16>> = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_ISCSI);
/// Length and checksum before each event.
const FRAME_HEADER: usize = 8;
/// Larger frames are corruption: events are a few hundred bytes, bounded by the scope that fills them.
const MAX_FRAME: usize = 1 << 20;
/// Requests the writer commits at once, at most.
const GROUP_MAX: usize = 4096;
/// Bytes the writer commits at once, at most (less in a small spool).
const GROUP_MAX_BYTES: u64 = 1 << 20;
/// Calls that may wait for the writer thread before `append` itself waits.
const QUEUE_CAPACITY: usize = 8192;
/// Bytes of zeros written ahead of the groups (see the module documentation), at most.
const ZERO_AHEAD: u64 = 1 << 20;
/// Bytes the shipper reads from a segment at a time.
const READ_CHUNK: u64 = 1 << 20;
const CURSOR_FILE: &str = "cursor";
const LOCK_FILE: &str = "LOCK";
const SEGMENT_SUFFIX: &str = ".seg";

/// Why an event could not be spooled (or the spool not opened).
#[derive(Debug, Clone, thiserror::Error)]
pub enum SpoolError {
    /// Back-pressure gave up: audit-service has not taken events for a while.
    #[error(
        "the audit spool is full ({unshipped} of {max} bytes not yet acknowledged by audit-service) and did \
         not drain within {waited:?}"
    )]
    Full {
        /// Bytes waiting.
        unshipped: u64,
        /// The limit.
        max: u64,
        /// How long the write waited.
        waited: Duration,
    },
    /// The disk refused.
    #[error("audit spool {path}: {reason}")]
    Io {
        /// The file or directory.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// Another process holds the spool directory.
    #[error("audit spool {path} is in use by another process; give each replica its own data_dir or audit.spool_dir")]
    Locked {
        /// The directory.
        path: String,
    },
    /// The writer has stopped (shutdown, or an earlier disk failure it could not undo).
    #[error("the audit spool is closed")]
    Closed,
    /// An event with no fields set encodes to nothing, and a frame of length zero marks the end of a segment's
    /// frames: such an event is refused rather than hide the events after it.
    #[error("an audit event with no fields set cannot be spooled")]
    Empty,
}

fn io_error(path: &Path, error: std::io::Error) -> SpoolError {
    SpoolError::Io { path: path.display().to_string(), reason: error.to_string() }
}

/// Where in the spool: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Position {
    segment: u64,
    offset: u64,
}

/// How the spool is set up.
#[derive(Debug, Clone)]
pub struct SpoolOptions {
    /// The directory (one per process).
    pub dir: PathBuf,
    /// Bytes not yet acknowledged by audit-service, at most.
    pub max_bytes: u64,
    /// How long a write waits for space before it is refused.
    pub full_wait: Duration,
}

struct State {
    /// Every segment on disk with its committed length: the shipper never reads past it.
    segments: BTreeMap<u64, u64>,
    /// Everything before this is acknowledged by audit-service.
    acked: Position,
    /// The writer has stopped; nothing more will be committed.
    closed: bool,
    /// The last write found no space in time and was refused (until one finds space again).
    refusing: bool,
    /// The committed groups not yet wholly acknowledged, oldest first: what the event count and the age of
    /// the oldest unshipped event are read from.
    groups: VecDeque<Group>,
}

/// Events committed together (one fsync), or those a segment held when the spool was opened.
struct Group {
    /// The position just after its last event.
    end: Position,
    events: u64,
    /// When it was committed (for recovered events: when their segment was last written, so their age is
    /// never overstated). Wall-clock time, so that events older than the machine's uptime keep their age.
    committed_at: SystemTime,
}

impl State {
    fn unshipped(&self) -> u64 {
        let total: u64 = self.segments.range(self.acked.segment..).map(|(_, len)| len).sum();
        total.saturating_sub(self.acked.offset)
    }

    /// Forgets the groups that `acked` covers.
    fn drop_acknowledged_groups(&mut self) {
        while self.groups.front().is_some_and(|group| group.end <= self.acked) {
            self.groups.pop_front();
        }
    }
}

/// See [`SpoolReader::probe`].
#[derive(Clone)]
pub struct SpoolProbe(Arc<Shared>);

impl SpoolProbe {
    /// Bytes committed but not yet acknowledged by audit-service.
    pub fn unshipped(&self) -> u64 {
        self.0.lock().unshipped()
    }

    /// Events committed but not yet acknowledged (a group that audit-service acknowledged in part is counted
    /// whole until the rest follows).
    pub fn unshipped_events(&self) -> u64 {
        self.0.lock().groups.iter().map(|group| group.events).sum()
    }

    /// Why the spool cannot take events now: its writer stopped, or it is full (calls then wait, and fail).
    pub fn problem(&self) -> Option<String> {
        let state = self.0.lock();
        if state.closed {
            return Some("the spool's writer stopped (see the service log)".to_owned());
        }
        let unshipped = state.unshipped();
        (state.refusing || unshipped >= self.0.max_bytes)
            .then(|| format!("the spool is full: {unshipped} of {} bytes await audit-service", self.0.max_bytes))
    }

    /// How long the oldest unacknowledged event has waited; zero when everything is shipped.
    pub fn oldest_unshipped_age(&self) -> Duration {
        let oldest = self.0.lock().groups.front().map(|group| group.committed_at);
        oldest.map_or(Duration::ZERO, |at| at.elapsed().unwrap_or_default())
    }
}

struct Shared {
    dir: PathBuf,
    max_bytes: u64,
    state: Mutex<State>,
    /// Signalled when the shipper frees space.
    space: Condvar,
    /// Signalled when events are committed or the writer stops.
    committed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain numbers behind, still consistent enough to go on.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn segment_path(&self, segment: u64) -> PathBuf {
        segment_path(&self.dir, segment)
    }
}

fn segment_path(dir: &Path, segment: u64) -> PathBuf {
    dir.join(format!("{segment:020}{SEGMENT_SUFFIX}"))
}

/// Appends events durably. Cheap to clone; the writer thread stops when every clone is gone.
#[derive(Clone)]
pub struct SpoolWriter {
    requests: mpsc::Sender<WriteRequest>,
}

struct WriteRequest {
    frame: Vec<u8>,
    done: oneshot::Sender<Result<(), SpoolError>>,
}

impl SpoolWriter {
    /// Returns once the event is on disk (fsynced), or why it is not.
    pub async fn append(&self, event: &pb::AuditEvent) -> Result<(), SpoolError> {
        if event.encoded_len() == 0 {
            return Err(SpoolError::Empty);
        }
        let (done, committed) = oneshot::channel();
        self.requests.send(WriteRequest { frame: frame(event), done }).await.map_err(|_| SpoolError::Closed)?;
        committed.await.map_err(|_| SpoolError::Closed)?
    }
}

fn frame(event: &pb::AuditEvent) -> Vec<u8> {
    // A Vec grows as needed, so encoding into one cannot fail; the header is taken from what was written.
    framed(event.encoded_len(), |buffer| {
        let _ = event.encode(buffer);
    })
}

/// The frame of an already encoded event.
fn frame_payload(payload: &[u8]) -> Vec<u8> {
    framed(payload.len(), |buffer| buffer.extend_from_slice(payload))
}

/// A frame whose payload `write` appends straight after the header's room, so that it is written once.
fn framed(len: usize, write: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut frame = Vec::with_capacity(FRAME_HEADER + len);
    frame.extend_from_slice(&[0; FRAME_HEADER]);
    write(&mut frame);
    let len = frame.len() - FRAME_HEADER;
    let checksum = CASTAGNOLI.checksum(&frame[FRAME_HEADER..]);
    frame[..4].copy_from_slice(&(len as u32).to_le_bytes());
    frame[4..FRAME_HEADER].copy_from_slice(&checksum.to_le_bytes());
    frame
}

/// The whole frames at the start of `bytes`: each event's payload and the offset just after it. Stops at
/// the first incomplete or damaged frame, and at a length of zero (the zeros written ahead).
fn frames(bytes: &[u8]) -> impl Iterator<Item = (&[u8], usize)> {
    let mut at = 0usize;
    std::iter::from_fn(move || {
        let header = bytes.get(at..at + FRAME_HEADER)?;
        let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
        let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
        if len == 0 || len > MAX_FRAME {
            return None;
        }
        let payload = bytes.get(at + FRAME_HEADER..at + FRAME_HEADER + len)?;
        if CASTAGNOLI.checksum(payload) != crc {
            return None;
        }
        at += FRAME_HEADER + len;
        Some((payload, at))
    })
}

/// Opens (or creates) the spool in `options.dir`: takes its lock, cuts a torn tail left by a crash, and
/// starts the writer thread on a fresh segment. Returns the writer and the reader the shipper drains.
pub fn open(options: &SpoolOptions) -> Result<(SpoolWriter, SpoolReader), SpoolError> {
    let dir = options.dir.clone();
    fs::create_dir_all(&dir).map_err(|e| io_error(&dir, e))?;
    let lock_path = dir.join(LOCK_FILE);
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| io_error(&lock_path, e))?;
    lock.try_lock().map_err(|_| SpoolError::Locked { path: dir.display().to_string() })?;

    let mut segments = BTreeMap::new();
    let mut recovered_frames = BTreeMap::new();
    for entry in fs::read_dir(&dir).map_err(|e| io_error(&dir, e))? {
        let name = entry.map_err(|e| io_error(&dir, e))?.file_name();
        let Some(number) = name.to_str().and_then(|n| n.strip_suffix(SEGMENT_SUFFIX)).and_then(|n| n.parse().ok())
        else {
            continue;
        };
        let recovered = recover_segment(&segment_path(&dir, number))?;
        segments.insert(number, recovered.len);
        recovered_frames.insert(number, recovered);
    }
    let acked = read_cursor(&dir, &segments);
    let groups = recovered_frames
        .into_iter()
        .filter(|(number, _)| *number >= acked.segment)
        .filter_map(|(number, recovered)| {
            let after = if number == acked.segment { acked.offset } else { 0 };
            let events = recovered.frame_ends.iter().filter(|end| **end > after).count() as u64;
            (events > 0).then_some(Group {
                end: Position { segment: number, offset: recovered.len },
                events,
                committed_at: recovered.written_at,
            })
        })
        .collect();
    // Segments before the cursor were acknowledged; a crash may have come between the cursor and the delete.
    for number in segments.range(..acked.segment).map(|(n, _)| *n).collect::<Vec<_>>() {
        remove_segment(&dir, number);
        segments.remove(&number);
    }
    let current = segments.last_key_value().map_or(1, |(n, _)| n + 1);
    let file = create_segment(&dir, current)?;
    segments.insert(current, 0);
    let state = State { segments, acked, closed: false, refusing: false, groups };
    if state.unshipped() > 0 {
        tracing::info!(bytes = state.unshipped(), dir = %dir.display(), "audit events of an earlier run are waiting to be shipped");
    }
    let shared = Arc::new(Shared {
        dir,
        max_bytes: options.max_bytes,
        state: Mutex::new(state),
        space: Condvar::new(),
        committed: Notify::new(),
    });
    let (requests, queue) = mpsc::channel(QUEUE_CAPACITY);
    let writer = Writer {
        shared: shared.clone(),
        file,
        segment: current,
        len: 0,
        zeroed_to: 0,
        segment_bytes: (options.max_bytes / 8).clamp(64 * 1024, 64 * 1024 * 1024),
        full_wait: options.full_wait,
        _lock: lock,
    };
    std::thread::Builder::new()
        .name("audit-spool".into())
        .spawn(move || writer.run(queue))
        .map_err(|e| io_error(&options.dir, e))?;
    Ok((SpoolWriter { requests }, SpoolReader { shared, next: acked, read_ahead: None }))
}

/// What a segment holds when the spool is opened.
struct RecoveredSegment {
    /// The length of its whole frames.
    len: u64,
    /// Where each frame ends.
    frame_ends: Vec<u64>,
    /// When it was last written.
    written_at: SystemTime,
}

/// A segment's whole frames; a torn or damaged tail (a crash mid-write) is cut off, as are the zeros written
/// ahead (a recovered segment is only read: the writer starts a new one).
fn recover_segment(path: &Path) -> Result<RecoveredSegment, SpoolError> {
    let bytes = fs::read(path).map_err(|e| io_error(path, e))?;
    let frame_ends: Vec<u64> = frames(&bytes).map(|(_, end)| end as u64).collect();
    let whole = frame_ends.last().map_or(0, |end| *end as usize);
    let written_at = fs::metadata(path).and_then(|m| m.modified()).unwrap_or_else(|_| SystemTime::now());
    if whole < bytes.len() {
        if bytes[whole..].iter().any(|b| *b != 0) {
            tracing::warn!(
                segment = %path.display(),
                cut = bytes.len() - whole,
                "audit spool segment ends in an incomplete frame (a crash while writing); cutting it off"
            );
        }
        let file = OpenOptions::new().write(true).open(path).map_err(|e| io_error(path, e))?;
        file.set_len(whole as u64).and_then(|()| file.sync_all()).map_err(|e| io_error(path, e))?;
    }
    Ok(RecoveredSegment { len: whole as u64, frame_ends, written_at })
}

/// Where the last run's acknowledgements reached. A missing or unreadable cursor, or one that points
/// nowhere, starts from the oldest segment: re-sent events are de-duplicated by audit-service.
fn read_cursor(dir: &Path, segments: &BTreeMap<u64, u64>) -> Position {
    let oldest = Position { segment: segments.first_key_value().map_or(1, |(n, _)| *n), offset: 0 };
    let Ok(text) = fs::read_to_string(dir.join(CURSOR_FILE)) else {
        return oldest;
    };
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    let (Some(Ok(segment)), Some(Ok(offset))) = (parts.next(), parts.next()) else {
        tracing::warn!(dir = %dir.display(), "audit spool cursor is unreadable; re-sending from the oldest segment");
        return oldest;
    };
    match segments.get(&segment) {
        Some(len) if offset <= *len => Position { segment, offset },
        _ => {
            tracing::warn!(dir = %dir.display(), "audit spool cursor points past the data; re-sending from the oldest segment");
            oldest
        }
    }
}

fn write_cursor(dir: &Path, at: Position) -> std::io::Result<()> {
    let temporary = dir.join(format!("{CURSOR_FILE}.tmp"));
    // Not fsynced (see the module documentation): an fsync per acknowledged batch cost more than the batch.
    File::create(&temporary)?.write_all(format!("{} {}\n", at.segment, at.offset).as_bytes())?;
    fs::rename(&temporary, dir.join(CURSOR_FILE))
}

fn create_segment(dir: &Path, segment: u64) -> Result<File, SpoolError> {
    let path = segment_path(dir, segment);
    // Not in append mode: groups are written at their offset, over the zeros written ahead.
    let file = OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .map_err(|e| io_error(&path, e))?;
    // The new name must survive a power cut with the events written into it.
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_error(dir, e))?;
    Ok(file)
}

fn remove_segment(dir: &Path, segment: u64) {
    let path = segment_path(dir, segment);
    if let Err(e) = fs::remove_file(&path)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(segment = %path.display(), error = %e, "cannot delete a shipped audit spool segment");
    }
}

/// `keymesh.audit.spool.fsync.duration`: one write and `fdatasync` of a group of events, which every audited
/// call waits for.
static FSYNC_DURATION: std::sync::LazyLock<opentelemetry::metrics::Histogram<f64>> = std::sync::LazyLock::new(|| {
    keymesh_mesh::rpc_telemetry::seconds_histogram(
        "keymesh.audit.spool.fsync.duration",
        "Write and fdatasync of one group of audit events in the spool",
    )
});

/// The writer thread's side.
struct Writer {
    shared: Arc<Shared>,
    file: File,
    segment: u64,
    /// Where the committed frames end.
    len: u64,
    /// Where the zeros written ahead end: the file's length.
    zeroed_to: u64,
    segment_bytes: u64,
    full_wait: Duration,
    /// Held (and locked) as long as the writer runs.
    _lock: File,
}

impl Writer {
    fn run(mut self, mut queue: mpsc::Receiver<WriteRequest>) {
        // A group fits in the spool many times over, so that a group never waits for space it cannot get.
        let group_bytes = (self.shared.max_bytes / 4).clamp(1, GROUP_MAX_BYTES);
        let mut carried: Option<WriteRequest> = None;
        loop {
            let Some(first) = carried.take().or_else(|| queue.blocking_recv()) else { break };
            let mut bytes = first.frame.len() as u64;
            let mut group = vec![first];
            while group.len() < GROUP_MAX {
                match queue.try_recv() {
                    Ok(request) if bytes + request.frame.len() as u64 > group_bytes => {
                        carried = Some(request);
                        break;
                    }
                    Ok(request) => {
                        bytes += request.frame.len() as u64;
                        group.push(request);
                    }
                    Err(_) => break,
                }
            }
            let result = self.commit(&group);
            for request in group {
                // The call may have gone away (its client cancelled); the event is stored all the same.
                let _ = request.done.send(result.clone());
            }
            if let Err(SpoolError::Closed) = result {
                break;
            }
        }
        self.shared.lock().closed = true;
        self.shared.committed.notify_one();
    }

    /// Writes a group of frames and flushes them with one `fdatasync`.
    fn commit(&mut self, group: &[WriteRequest]) -> Result<(), SpoolError> {
        let bytes: u64 = group.iter().map(|r| r.frame.len() as u64).sum();
        self.wait_for_space(bytes)?;
        if self.len >= self.segment_bytes {
            self.rotate()?;
        }
        // Past the zeroed room, the group carries the next stretch of zeros with it (one extending flush for
        // many groups); inside it, the group only overwrites zeros.
        let end = self.len + bytes;
        let extending = end > self.zeroed_to;
        let zeroed_to = if extending { end + ZERO_AHEAD.min(self.segment_bytes) } else { self.zeroed_to };
        // Room for the zeros only when they are written: inside the room a group needs its own bytes alone.
        let mut buffer = Vec::with_capacity(if extending { zeroed_to - self.len } else { bytes } as usize);
        for request in group {
            buffer.extend_from_slice(&request.frame);
        }
        if extending {
            buffer.resize((zeroed_to - self.len) as usize, 0);
        }
        let path = self.shared.segment_path(self.segment);
        let started = Instant::now();
        let written = self.file.write_all_at(&buffer, self.len).and_then(|()| self.file.sync_data());
        FSYNC_DURATION.record(started.elapsed().as_secs_f64(), &[]);
        if let Err(e) = written {
            // Undo a partial write so later frames follow whole ones; if even that fails, stop taking events
            // rather than append after garbage.
            if self.file.set_len(self.len).and_then(|()| self.file.sync_data()).is_err() {
                tracing::error!(segment = %path.display(), error = %e, "audit spool cannot be repaired; closing it");
                return Err(SpoolError::Closed);
            }
            self.zeroed_to = self.len;
            return Err(io_error(&path, e));
        }
        self.len = end;
        self.zeroed_to = zeroed_to;
        {
            let mut state = self.shared.lock();
            state.segments.insert(self.segment, self.len);
            state.groups.push_back(Group {
                end: Position { segment: self.segment, offset: self.len },
                events: group.len() as u64,
                committed_at: SystemTime::now(),
            });
        }
        self.shared.committed.notify_one();
        Ok(())
    }

    fn rotate(&mut self) -> Result<(), SpoolError> {
        let next = self.segment + 1;
        self.file = create_segment(&self.shared.dir, next)?;
        self.segment = next;
        self.len = 0;
        self.zeroed_to = 0;
        self.shared.lock().segments.insert(next, 0);
        Ok(())
    }

    fn wait_for_space(&self, bytes: u64) -> Result<(), SpoolError> {
        let started = Instant::now();
        let mut state = self.shared.lock();
        loop {
            let unshipped = state.unshipped();
            if unshipped + bytes <= self.shared.max_bytes {
                state.refusing = false;
                return Ok(());
            }
            let waited = started.elapsed();
            if waited >= self.full_wait {
                state.refusing = true;
                return Err(SpoolError::Full { unshipped, max: self.shared.max_bytes, waited });
            }
            state = match self.shared.space.wait_timeout(state, self.full_wait - waited) {
                Ok((state, _)) => state,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
    }
}

/// The shipper's side: reads committed events in order and records acknowledgements.
pub struct SpoolReader {
    shared: Arc<Shared>,
    /// Where the next unacknowledged event starts.
    next: Position,
    /// Bytes read from a segment beyond the last batch, and where they start: the next batch begins with them
    /// rather than reading them from the file again.
    read_ahead: Option<(Position, Bytes)>,
}

/// Events read from the spool and the position just after them.
pub struct Batch {
    /// The encoded events, oldest first: slices of the bytes read from the segment.
    pub events: Vec<Bytes>,
    /// Acknowledging the batch moves the cursor here.
    pub end: Position,
}

impl SpoolReader {
    /// Up to `max` committed events after the last acknowledged one (none when the spool is drained).
    pub async fn read(&mut self, max: usize) -> Result<Batch, SpoolError> {
        let shared = self.shared.clone();
        let (from, read_ahead) = (self.next, self.read_ahead.take());
        let (batch, read_ahead) = tokio::task::spawn_blocking(move || read_from(&shared, from, max, read_ahead))
            .await
            .map_err(|_| SpoolError::Closed)??;
        self.read_ahead = read_ahead;
        Ok(batch)
    }

    /// Waits until the writer commits more events; false once it has stopped and everything was read.
    pub async fn wait_for_events(&self) -> bool {
        let notified = self.shared.committed.notified();
        {
            let state = self.shared.lock();
            if state.closed {
                return state.unshipped() > 0;
            }
        }
        notified.await;
        true
    }

    /// Where the next unacknowledged event starts.
    pub fn position(&self) -> Position {
        self.next
    }

    /// Bytes committed but not yet acknowledged.
    pub fn unshipped(&self) -> u64 {
        self.shared.lock().unshipped()
    }

    /// A handle that reads [`SpoolReader::unshipped`] from elsewhere (a metrics callback) while the reader
    /// itself belongs to the shipper.
    pub fn probe(&self) -> SpoolProbe {
        SpoolProbe(self.shared.clone())
    }

    /// audit-service stored everything up to `end`: move the cursor, delete the segments behind it, and
    /// wake a writer waiting for space.
    pub async fn acknowledge(&mut self, end: Position) {
        self.next = end;
        let behind: Vec<u64> = {
            let mut state = self.shared.lock();
            state.acked = end;
            // Space was freed: a pod unready for a full spool gets no traffic, so no write would clear this.
            state.refusing = false;
            state.drop_acknowledged_groups();
            let behind = state.segments.range(..end.segment).map(|(n, _)| *n).collect::<Vec<_>>();
            for number in &behind {
                state.segments.remove(number);
            }
            behind
        };
        self.shared.space.notify_all();
        let shared = self.shared.clone();
        let persisted = tokio::task::spawn_blocking(move || {
            if let Err(e) = write_cursor(&shared.dir, end) {
                // Only costs re-sending (de-duplicated by audit-service) after a restart.
                tracing::warn!(dir = %shared.dir.display(), error = %e, "cannot record the audit spool cursor");
            }
            for number in behind {
                remove_segment(&shared.dir, number);
            }
        });
        let _ = persisted.await;
    }

    /// Keeps events audit-service refused (it will refuse them again) in a file beside the spool, so that
    /// nothing is deleted unseen, and returns its path.
    pub async fn quarantine(&self, events: &[Bytes]) -> Result<PathBuf, SpoolError> {
        let path = self.shared.dir.join(format!("refused-{}-{}.events", self.next.segment, self.next.offset));
        let bytes: Vec<u8> = events.iter().flat_map(|event| frame_payload(event)).collect();
        let target = path.clone();
        tokio::task::spawn_blocking(move || {
            OpenOptions::new()
                .create(true)
                .write(true)
                .truncate(true)
                .mode(0o600)
                .open(&target)
                .and_then(|mut file| file.write_all(&bytes).and_then(|()| file.sync_data()))
                .map_err(|e| io_error(&target, e))
        })
        .await
        .map_err(|_| SpoolError::Closed)??;
        Ok(path)
    }
}

/// Where the payloads of the first `max` whole frames of `bytes` lie.
fn frame_spans(bytes: &[u8], max: usize) -> Vec<std::ops::Range<usize>> {
    frames(bytes).take(max).map(|(payload, after)| after - payload.len()..after).collect()
}

/// Up to `max` events from `from`, starting with `read_ahead` (bytes an earlier call read past its batch) when
/// they start there; returns the batch and what was read past it.
fn read_from(
    shared: &Shared,
    from: Position,
    max: usize,
    read_ahead: Option<(Position, Bytes)>,
) -> Result<(Batch, Option<(Position, Bytes)>), SpoolError> {
    let mut at = from;
    let mut bytes = read_ahead.filter(|(start, _)| *start == from).map(|(_, bytes)| bytes).unwrap_or_default();
    loop {
        let (committed, later) = {
            let state = shared.lock();
            (
                state.segments.get(&at.segment).copied().unwrap_or(0),
                state.segments.range(at.segment + 1..).next().map(|(n, _)| *n),
            )
        };
        if at.offset < committed {
            let path = shared.segment_path(at.segment);
            let have = at.offset + bytes.len() as u64;
            let mut found = frame_spans(&bytes, max);
            // (Past a chunk in hand the frames are damaged, not short: events are far smaller than a chunk.)
            if found.len() < max && have < committed && bytes.len() < READ_CHUNK as usize {
                // Too few whole frames in hand: append the next chunk of the segment to what is left of them.
                let len = (committed - have).min(READ_CHUNK) as usize;
                let mut joined = Vec::with_capacity(bytes.len() + len);
                joined.extend_from_slice(&bytes);
                joined.resize(bytes.len() + len, 0);
                let mut file = File::open(&path).map_err(|e| io_error(&path, e))?;
                file.seek(SeekFrom::Start(have))
                    .and_then(|_| file.read_exact(&mut joined[bytes.len()..]))
                    .map_err(|e| io_error(&path, e))?;
                bytes = Bytes::from(joined);
                found = frame_spans(&bytes, max);
            }
            let used = found.last().map_or(0, |span| span.end);
            let events = found.into_iter().map(|span| bytes.slice(span)).collect();
            let mut end = Position { segment: at.segment, offset: at.offset + used as u64 };
            if end == at {
                // A committed frame larger than READ_CHUNK cannot exist; the rest of the segment is damaged.
                tracing::error!(segment = %path.display(), offset = at.offset, "damaged audit spool segment; skipping its rest");
                end.offset = committed;
                return Ok((Batch { events, end }, None));
            }
            let rest = (used < bytes.len()).then(|| (end, bytes.slice(used..)));
            return Ok((Batch { events, end }, rest));
        }
        bytes = Bytes::new();
        match later {
            // This segment is read to its end and the writer has moved on.
            Some(next) => at = Position { segment: next, offset: 0 },
            None => return Ok((Batch { events: Vec::new(), end: at }, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(dir: &Path) -> SpoolOptions {
        SpoolOptions { dir: dir.to_owned(), max_bytes: 1 << 20, full_wait: Duration::from_millis(200) }
    }

    fn event(n: u32) -> pb::AuditEvent {
        pb::AuditEvent { event_id: format!("e{n}"), operation: "Encrypt".into(), ..Default::default() }
    }

    fn event_ids(batch: &Batch) -> Vec<String> {
        batch.events.iter().map(|e| pb::AuditEvent::decode(e.clone()).unwrap().event_id).collect()
    }

    async fn drain(reader: &mut SpoolReader) -> Vec<String> {
        let mut ids = Vec::new();
        loop {
            let batch = reader.read(7).await.unwrap();
            if batch.events.is_empty() {
                return ids;
            }
            ids.extend(event_ids(&batch));
            reader.acknowledge(batch.end).await;
        }
    }

    #[tokio::test]
    async fn events_survive_a_restart_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, mut reader) = open(&options(dir.path())).unwrap();
            for n in 0..20 {
                writer.append(&event(n)).await.unwrap();
            }
            let batch = reader.read(5).await.unwrap();
            assert_eq!(batch.events.len(), 5);
            reader.acknowledge(batch.end).await;
            assert_eq!(reader.probe().unshipped_events(), 15, "the gauge counts what is not acknowledged");
            // Read but not acknowledged: must come back.
            let _ = reader.read(5).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (_writer, mut reader) = open(&options(dir.path())).unwrap();
        let probe = reader.probe();
        assert_eq!(probe.unshipped_events(), 15, "events of the earlier run are counted");
        assert!(probe.oldest_unshipped_age() >= Duration::from_millis(40), "{:?}", probe.oldest_unshipped_age());
        let ids = drain(&mut reader).await;
        assert_eq!(ids, (5..20).map(|n| format!("e{n}")).collect::<Vec<_>>());
        assert_eq!((probe.unshipped_events(), probe.oldest_unshipped_age()), (0, Duration::ZERO));
    }

    #[tokio::test]
    async fn what_a_batch_read_past_is_served_from_memory_and_a_batch_not_acknowledged_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut reader) = open(&options(dir.path())).unwrap();
        for n in 0..10 {
            writer.append(&event(n)).await.unwrap();
        }
        let first = reader.read(3).await.unwrap();
        assert_eq!(event_ids(&first), ["e0", "e1", "e2"]);
        // Not acknowledged (audit-service did not answer): the same events again.
        let again = reader.read(3).await.unwrap();
        assert_eq!(event_ids(&again), ["e0", "e1", "e2"]);
        reader.acknowledge(again.end).await;
        // The rest was read with them: with the segment out of reach, the next batches still come.
        let segment = segment_path(dir.path(), 1);
        let aside = dir.path().join("aside");
        fs::rename(&segment, &aside).unwrap();
        let next = reader.read(3).await.unwrap();
        assert_eq!(event_ids(&next), ["e3", "e4", "e5"]);
        reader.acknowledge(next.end).await;
        fs::rename(&aside, &segment).unwrap();
        assert_eq!(drain(&mut reader).await, ["e6", "e7", "e8", "e9"]);
    }

    #[tokio::test]
    async fn a_torn_tail_is_cut_and_the_whole_frames_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (writer, _reader) = open(&options(dir.path())).unwrap();
            for n in 0..3 {
                writer.append(&event(n)).await.unwrap();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let segment = segment_path(dir.path(), 1);
        // A crash in the middle of a group leaves part of a frame over the zeros written ahead.
        let whole = frames(&fs::read(&segment).unwrap()).last().unwrap().1 as u64;
        let mut torn = frame(&event(3));
        torn.truncate(torn.len() - 2);
        OpenOptions::new().write(true).open(&segment).unwrap().write_all_at(&torn, whole).unwrap();
        let (_writer, mut reader) = open(&options(dir.path())).unwrap();
        assert_eq!(drain(&mut reader).await, ["e0", "e1", "e2"]);
        assert_eq!(fs::metadata(&segment).unwrap().len(), whole, "the torn frame and the zeros are cut");
    }

    #[tokio::test]
    async fn groups_are_written_over_zeros_written_ahead_which_a_restart_reads_past() {
        let dir = tempfile::tempdir().unwrap();
        let segment = segment_path(dir.path(), 1);
        {
            let (writer, _reader) = open(&options(dir.path())).unwrap();
            writer.append(&event(0)).await.unwrap();
            let first = fs::metadata(&segment).unwrap().len();
            let one = frame(&event(0)).len() as u64;
            assert!(first > one, "zeros are written ahead of the first group ({first} bytes)");
            writer.append(&event(1)).await.unwrap();
            assert_eq!(fs::metadata(&segment).unwrap().len(), first, "the second group is written over the zeros");
            let bytes = fs::read(&segment).unwrap();
            assert_eq!(frames(&bytes).count(), 2);
            assert!(bytes[2 * one as usize..].iter().all(|b| *b == 0));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let (writer, mut reader) = open(&options(dir.path())).unwrap();
        writer.append(&event(2)).await.unwrap();
        assert_eq!(drain(&mut reader).await, ["e0", "e1", "e2"]);
    }

    #[tokio::test]
    async fn an_event_that_encodes_to_nothing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, mut reader) = open(&options(dir.path())).unwrap();
        assert!(matches!(writer.append(&pb::AuditEvent::default()).await, Err(SpoolError::Empty)));
        writer.append(&event(1)).await.unwrap();
        assert_eq!(drain(&mut reader).await, ["e1"]);
    }

    #[tokio::test]
    async fn a_second_process_cannot_share_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let _first = open(&options(dir.path())).unwrap();
        assert!(matches!(open(&options(dir.path())), Err(SpoolError::Locked { .. })));
    }

    #[tokio::test]
    async fn a_full_spool_waits_then_refuses_and_takes_events_again_once_shipped() {
        let dir = tempfile::tempdir().unwrap();
        let small = SpoolOptions { max_bytes: 200, ..options(dir.path()) };
        let (writer, mut reader) = open(&small).unwrap();
        let mut stored = 0;
        let refused = loop {
            match writer.append(&event(stored)).await {
                Ok(()) => stored += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(refused, SpoolError::Full { .. }), "{refused}");
        assert!(stored > 0);
        let problem = reader.probe().problem().unwrap_or_default();
        assert!(problem.starts_with("the spool is full: "), "readiness says why: {problem:?}");
        // A writer blocked on space resumes as soon as the shipper acknowledges.
        let blocked = tokio::spawn({
            let writer = writer.clone();
            async move { writer.append(&event(1000)).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let batch = reader.read(1000).await.unwrap();
        reader.acknowledge(batch.end).await;
        blocked.await.unwrap().unwrap();
        assert_eq!(reader.probe().problem(), None, "ready again once it takes events");

        // Refused again, then shipped with no write after: a pod unready for a full spool gets no calls, so
        // shipping alone must make it ready.
        let refused = loop {
            if let Err(e) = writer.append(&event(1)).await {
                break e;
            }
        };
        assert!(matches!(refused, SpoolError::Full { .. }), "{refused}");
        assert!(reader.probe().problem().is_some());
        let batch = reader.read(1000).await.unwrap();
        reader.acknowledge(batch.end).await;
        assert_eq!(reader.probe().problem(), None, "ready again once shipped, without a write");
    }

    #[tokio::test]
    async fn shipped_segments_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let tiny = SpoolOptions { max_bytes: 64 * 1024, ..options(dir.path()) };
        let (writer, mut reader) = open(&tiny).unwrap();
        let mut shipped = 0;
        for n in 0..4000 {
            writer.append(&event(n)).await.unwrap();
            if n % 500 == 499 {
                shipped += drain(&mut reader).await.len();
            }
        }
        assert_eq!(shipped, 4000);
        let segments = fs::read_dir(dir.path())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(SEGMENT_SUFFIX))
            .count();
        assert_eq!(segments, 1, "only the segment being written remains");
    }
}

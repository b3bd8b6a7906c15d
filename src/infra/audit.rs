//! The audit log: one JSON line per signature and per lifecycle event, append-only and
//! hash-chained.
//!
//! Each line carries `prev`, the SHA-256 (hex) of the previous line's bytes (64 zeros on
//! the first line), so editing or removing any line breaks the chain at the next one;
//! `keyturn audit verify FILE` finds the first break. Tokens are never logged: only caller,
//! key set, kid, jti, sub, aud and exp.
//!
//! A chain alone does not catch a log cut short, or rewritten whole with every hash
//! recomputed. So the audit thread writes the chain's [`Head`] (the number of lines and the
//! hash of the last, once synced) to the daemon's own log, "audit chain head", at most every
//! [`HEAD_EVERY`] while lines are added and at the stop; a copy of it kept elsewhere (a log
//! shipper, the journal) anchors the file: `keyturn audit verify FILE --head COUNT:HASH`.
//!
//! Signing tasks append their lines to one shared buffer. A task that needs its line
//! written takes the whole buffer, chains the lines and appends them with one write, then
//! wakes the tasks whose lines it wrote; while it writes, others wait for it (group
//! commit, with no thread between a signature and its write). The audit thread calls
//! fdatasync within 5 ms of a write, and writes the lifecycle events.
//! Durability: a token is returned only once its line is written to the file (no line, no
//! token), so a crash of the daemon, however abrupt (SIGKILL, the OOM killer), loses no
//! line of a token that left; a power loss can lose lines written in the last ~5 ms (plus
//! the time of one fdatasync).

use crate::core::lifecycle::Event;
use aws_lc_rs::digest;
use serde::Serialize;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How often at most the audit thread logs the chain head while lines are added: often
/// enough that little of the log is unanchored, rarely enough not to flood the daemon's log.
const HEAD_EVERY: Duration = Duration::from_secs(60);

/// The head of an audit log's chain: how many lines it holds and the hash of the last one
/// (the `prev` the next line will carry; 64 zeros for no line). Written `COUNT:HASH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// Lines, the last one included.
    pub count: u64,
    /// SHA-256 of the last line's bytes, lowercase hex.
    pub hash: String,
}

impl std::fmt::Display for Head {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.count, self.hash)
    }
}

impl std::str::FromStr for Head {
    type Err = String;
    fn from_str(s: &str) -> Result<Head, String> {
        let bad = || {
            format!(
                "{s:?} is not a chain head: write COUNT:HASH as the daemon logs them (\"audit \
                 chain head\" count=N hash=H), e.g. 12:{GENESIS}"
            )
        };
        let (count, hash) = s.split_once(':').ok_or_else(bad)?;
        let count = count.parse().map_err(|_| bad())?;
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad());
        }
        Ok(Head {
            count,
            hash: hash.to_ascii_lowercase(),
        })
    }
}

/// One audit record, before chaining. It borrows its fields: the caller serializes it on
/// its own thread and hands the writer one buffer (no copies of the caller's strings, none
/// freed on the writer's thread).
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Record<'a> {
    /// Unix seconds.
    pub ts: i64,
    /// "sign", or a lifecycle event ("published", "activated", "removed", "revoked", ...).
    pub event: &'static str,
    /// The client, for signatures and admin actions.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub caller: Option<&'a str>,
    /// The key set.
    pub keyset: &'a str,
    /// The key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kid: Option<&'a str>,
    /// Token id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jti: Option<&'a str>,
    /// Token subject.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<&'a str>,
    /// Token audience.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aud: Option<&'a crate::core::policy::Audience<'a>>,
    /// Token expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// The token's place in a status list and, for a status change, the change.
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub status: Option<StatusNote<'a>>,
}

/// A token's status list entry in an audit line: a signed token's, or a changed one's.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct StatusNote<'a> {
    /// The list's URI.
    pub uri: &'a str,
    /// The index.
    pub idx: u64,
    /// The status before a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub old: Option<&'static str>,
    /// The status after a change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub new: Option<&'static str>,
    /// The change's number in its key set's status lists (the lists remember it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// Written at a start from the state store: the daemon that made the change stopped
    /// before its line was written (it may have been written after all).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub recovered: bool,
}

/// A line about keys rather than a token (a lifecycle event, an admin action), as much of
/// it as the console shows: never a caller, and never a token's jti, sub, aud or exp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleLine {
    /// Unix seconds.
    pub ts: i64,
    /// What happened ("published", "activated", "revoked", ...).
    pub event: String,
    /// The key set.
    pub keyset: String,
    /// The key.
    pub kid: Option<String>,
}

/// A lifecycle line as the file holds it: any field but these (a token's) makes a line
/// no lifecycle line.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLine {
    ts: i64,
    event: String,
    keyset: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "caller")]
    _caller: serde::de::IgnoredAny,
    #[serde(rename = "prev")]
    _prev: serde::de::IgnoredAny,
}

/// How many lifecycle lines [`Audit::recent_lifecycle`] keeps.
pub const RECENT_LIFECYCLE: usize = 64;

impl Record<'_> {
    /// The record as a [`LifecycleLine`], unless it concerns a token.
    pub fn lifecycle(&self) -> Option<LifecycleLine> {
        // Every field named: a field added to records must be placed on one side.
        let Record {
            ts,
            event,
            caller: _,
            keyset,
            kid,
            jti,
            sub,
            aud,
            exp,
            status,
        } = *self;
        let token = jti.is_some() || sub.is_some() || aud.is_some() || exp.is_some();
        (!token && status.is_none()).then(|| LifecycleLine {
            ts,
            event: event.to_owned(),
            keyset: keyset.to_owned(),
            kid: kid.map(str::to_owned),
        })
    }

    /// Appends the record's line up to its closing brace, which the writer adds after
    /// `prev`: the bytes serde would write for the record, less that brace.
    fn write_unchained(&self, out: &mut Vec<u8>) {
        use crate::core::json::{push_int, push_str};
        use crate::core::policy::Audience;
        out.extend_from_slice(b"{\"ts\":");
        push_int(out, self.ts);
        out.extend_from_slice(b",\"event\":");
        push_str(out, self.event);
        let strings: [(&[u8], Option<&str>); 5] = [
            (b",\"caller\":", self.caller),
            (b",\"keyset\":", Some(self.keyset)),
            (b",\"kid\":", self.kid),
            (b",\"jti\":", self.jti),
            (b",\"sub\":", self.sub),
        ];
        for (key, value) in strings {
            if let Some(value) = value {
                out.extend_from_slice(key);
                push_str(out, value);
            }
        }
        if let Some(aud) = self.aud {
            out.extend_from_slice(b",\"aud\":");
            match aud {
                Audience::One(name) => push_str(out, name),
                Audience::Many(names) => {
                    out.push(b'[');
                    for (i, name) in names.iter().enumerate() {
                        if i > 0 {
                            out.push(b',');
                        }
                        push_str(out, name);
                    }
                    out.push(b']');
                }
            }
        }
        if let Some(exp) = self.exp {
            out.extend_from_slice(b",\"exp\":");
            push_int(out, exp);
        }
        if let Some(status) = &self.status {
            out.extend_from_slice(b",\"uri\":");
            push_str(out, status.uri);
            out.extend_from_slice(b",\"idx\":");
            push_int(out, i64::try_from(status.idx).unwrap_or(i64::MAX));
            for (key, value) in [(&b",\"old\":"[..], status.old), (b",\"new\":", status.new)] {
                if let Some(value) = value {
                    out.extend_from_slice(key);
                    push_str(out, value);
                }
            }
            if let Some(seq) = status.seq {
                out.extend_from_slice(b",\"seq\":");
                push_int(out, i64::try_from(seq).unwrap_or(i64::MAX));
            }
            if status.recovered {
                out.extend_from_slice(b",\"recovered\":true");
            }
        }
    }
}

/// Lines waiting to be chained and written.
struct Queue {
    /// Each record's unchained line followed by a newline (serde_json writes none inside
    /// a line). Appending to it allocates nothing once it has grown: a writer swaps it
    /// with its own emptied buffer. A channel of one buffer per line cost an allocation per
    /// signature, freed on the writer's thread under the signing thread's malloc arena lock.
    lines: Vec<u8>,
    /// Every handle is gone: the audit thread writes what is left and stops.
    closed: bool,
    /// The audit thread is waiting and must be woken.
    thread_idle: bool,
    /// It waits with no deadline near (no sync, retry or queued line due): a line queued
    /// now wakes it, or a line no task writes (its request cancelled between queuing and
    /// writing) would wait for the next write or the stop.
    thread_asleep: bool,
    /// Lines queued since the log was opened: a line's number is the count with it.
    queued: u64,
}

/// The file's side, held by whoever writes: a signing task that waits for its line (it
/// writes the queued lines itself rather than wake a thread and wait to be woken), or the
/// audit thread (lifecycle events, retries, the lines left at the stop).
struct Chain {
    file: File,
    /// The hash of the last line chained.
    prev: String,
    /// Lines chained and not all in the file yet: kept across a failed write, which is
    /// resumed where it stopped (no line torn or doubled).
    pending: Vec<u8>,
    /// How many of `pending`'s bytes are in the file.
    pending_written: usize,
    /// The number of `pending`'s last line.
    pending_through: u64,
    /// The queue's buffer, swapped out of it.
    taken: Vec<u8>,
}

/// What the handles, the signing tasks and the audit thread share.
struct LogState {
    queue: Mutex<Queue>,
    chain: Mutex<Chain>,
    /// Wakes the idle audit thread.
    arrived: Condvar,
    /// Lines in the file so far (numbered as `Queue::queued` counts them).
    written: AtomicU64,
    /// Lines were written since the last fdatasync.
    dirty: AtomicBool,
    /// Wakes records waiting for room in a full queue or for their line to be written:
    /// lines were taken or written, a write failed, or the log stopped.
    progress: Notify,
    /// False while the log cannot be written (read-only or full disk): signing stops.
    healthy: AtomicBool,
    /// The last fdatasync failed: writes that succeed do not make the log healthy again
    /// until a sync does.
    sync_failing: AtomicBool,
    /// The `ts` of the last record the log held when opened.
    last_ts: Option<i64>,
    /// Lines the log held when opened: line numbers in the file are this plus
    /// `Queue::queued`'s.
    opened_lines: u64,
    /// The log's path, for messages.
    shown: String,
    /// The last lifecycle lines, oldest first.
    recent: Mutex<std::collections::VecDeque<LifecycleLine>>,
    /// The token status changes (key set, `seq`) the log's tail held when opened.
    status_changes: std::collections::HashSet<(String, u64)>,
}

/// Most bytes of lines queued (about 16k lines); beyond it records wait.
const MAX_QUEUED: usize = 4 << 20;

impl LogState {
    fn new(
        chain: Chain,
        last_ts: Option<i64>,
        opened_lines: u64,
        shown: String,
        (recent, status_changes): Tail,
    ) -> LogState {
        LogState {
            queue: Mutex::new(Queue {
                lines: Vec::with_capacity(64 * 1024),
                closed: false,
                thread_idle: false,
                thread_asleep: false,
                queued: 0,
            }),
            chain: Mutex::new(chain),
            arrived: Condvar::new(),
            written: AtomicU64::new(0),
            dirty: AtomicBool::new(false),
            progress: Notify::new(),
            healthy: AtomicBool::new(true),
            sync_failing: AtomicBool::new(false),
            last_ts,
            opened_lines,
            shown,
            recent: Mutex::new(recent),
            status_changes,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn chain(&self) -> MutexGuard<'_, Chain> {
        self.chain.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The chain, unless another writer holds it.
    fn try_chain(&self) -> Option<MutexGuard<'_, Chain>> {
        match self.chain.try_lock() {
            Ok(chain) => Some(chain),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Queues `record`: its line's number, `Ok(None)` when the queue is full, `Err` when
    /// the log has stopped. `wake`: no one will wait for it (a lifecycle event), so the
    /// audit thread is told of it and writes it.
    fn push(&self, record: &Record<'_>, wake: bool) -> Result<Option<u64>, ()> {
        let queued = self.push_line(record, wake);
        if let Ok(Some(_)) = queued {
            if let Some(line) = record.lifecycle() {
                let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
                if recent.len() == RECENT_LIFECYCLE {
                    recent.pop_front();
                }
                recent.push_back(line);
            }
        }
        queued
    }

    fn push_line(&self, record: &Record<'_>, wake: bool) -> Result<Option<u64>, ()> {
        let mut queue = self.queue();
        if queue.closed {
            return Err(());
        }
        if queue.lines.len() >= MAX_QUEUED {
            return Ok(None);
        }
        record.write_unchained(&mut queue.lines);
        queue.lines.push(b'\n');
        queue.queued += 1;
        let line = queue.queued;
        if wake || queue.thread_asleep {
            self.wake_thread(queue);
        }
        Ok(Some(line))
    }

    /// Wakes the audit thread if it is waiting (`queue` is its lock, held).
    fn wake_thread(&self, mut queue: MutexGuard<'_, Queue>) {
        queue.thread_asleep = false;
        if std::mem::take(&mut queue.thread_idle) {
            drop(queue);
            self.arrived.notify_one();
        }
    }

    /// Moves the queued lines into the empty `into`. Returns the number of the last line
    /// taken.
    fn take(&self, into: &mut Vec<u8>) -> u64 {
        let mut queue = self.queue();
        std::mem::swap(&mut queue.lines, into);
        queue.queued
    }

    /// Chains the queued lines after the pending ones and writes them all with one write.
    /// A failed write keeps what did not reach the file for the next attempt. Called
    /// through [`Self::write`].
    fn flush(&self, chain: &mut Chain) -> std::io::Result<()> {
        if chain.pending.len() < MAX_PENDING {
            let through = self.take(&mut chain.taken);
            if !chain.taken.is_empty() {
                let Chain {
                    pending,
                    taken,
                    prev,
                    ..
                } = &mut *chain;
                let mut start = 0;
                for end in memchr::memchr_iter(b'\n', taken) {
                    append(pending, &taken[start..end], prev);
                    start = end + 1;
                }
                taken.clear();
                chain.pending_through = through;
            }
        }
        if chain.pending.is_empty() {
            return Ok(());
        }
        write_from(&mut chain.file, &chain.pending, &mut chain.pending_written)?;
        chain.pending.clear();
        chain.pending_written = 0;
        self.written.store(chain.pending_through, Ordering::Release);
        if !self.dirty.swap(true, Ordering::AcqRel) {
            // The first write since a sync: the audit thread syncs it within SYNC_EVERY.
            self.wake_thread(self.queue());
        }
        Ok(())
    }

    /// Flushes as the holder of `chain`, notes the outcome (in the order of the writes),
    /// lets the chain go, and only then wakes the records waiting for room or for their
    /// line: one that found the chain taken is woken after it is free again.
    ///
    /// The write blocks the calling thread (a tokio worker when a signing task writes):
    /// an append to the page cache, microseconds, but as long as the filesystem makes it
    /// wait (some hold a file's appends during its fsync).
    fn write(&self, chain: MutexGuard<'_, Chain>) -> std::io::Result<()> {
        self.write_then(chain, |_, _| ()).0
    }

    /// [`Self::write`], reading `then` of the chain before letting it go.
    fn write_then<T>(
        &self,
        mut chain: MutexGuard<'_, Chain>,
        then: impl FnOnce(&Self, &Chain) -> T,
    ) -> (std::io::Result<()>, T) {
        let outcome = self.flush(&mut chain);
        self.note(&outcome);
        let read = then(self, &chain);
        drop(chain);
        self.progress.notify_waiters();
        (outcome, read)
    }

    /// The head of the lines in the file, `chain` held: None while a failed write is
    /// pending (the hash is of a line not all in the file).
    fn head(&self, chain: &Chain) -> Option<Head> {
        chain.pending.is_empty().then(|| Head {
            count: self.opened_lines + self.written.load(Ordering::Acquire),
            hash: chain.prev.clone(),
        })
    }

    /// Notes the outcome of a write or a sync: signing stops while the log cannot be
    /// written, and resumes once it can.
    fn note(&self, outcome: &std::io::Result<()>) {
        match outcome {
            Ok(()) => {
                if !self.sync_failing.load(Ordering::Acquire)
                    && !self.healthy.swap(true, Ordering::Relaxed)
                {
                    tracing::info!(
                        path = self.shown,
                        "the audit log is writable again; signing resumes"
                    );
                }
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(path = self.shown, error = %e, "cannot write the audit log; refusing to sign until it is writable");
                }
                // Records waiting for room or for their line give up (woken by the
                // caller); the audit thread retries.
                self.wake_thread(self.queue());
            }
        }
    }
}

/// Marks the log unhealthy and closed when the audit thread ends, however it ends: records
/// are then refused at once instead of piling up (or waiting) with nobody to write them.
struct ThreadStopped<'a>(&'a LogState);

impl Drop for ThreadStopped<'_> {
    fn drop(&mut self) {
        self.0.healthy.store(false, Ordering::Relaxed);
        self.0.queue().closed = true;
        self.0.progress.notify_waiters();
    }
}

/// Closes the queue when the last [`Audit`] handle goes, so the audit thread finishes.
struct Handles(Arc<LogState>);

impl Drop for Handles {
    fn drop(&mut self) {
        let mut queue = self.0.queue();
        queue.closed = true;
        queue.thread_idle = false;
        drop(queue);
        self.0.arrived.notify_one();
    }
}

/// A queued line, for [`Audit::written`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Line(u64);

/// A handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit(Option<Arc<Handles>>);

/// Waits for the audit thread to write and sync everything and stop.
pub struct AuditWriter(Option<std::thread::JoinHandle<()>>);

impl AuditWriter {
    /// Blocks until every record made before all [`Audit`] handles were dropped is on disk.
    pub fn finish(mut self) {
        if let Some(handle) = self.0.take() {
            let _ = handle.join();
        }
    }
}

impl Audit {
    /// Opens (creating, 0600) `path` for appending and starts the audit thread. Reads the
    /// whole log once, to count its lines for the chain head (a count of newlines: about a
    /// second per GB from disk, less from the page cache).
    pub fn open(path: &Path) -> Result<(Audit, AuditWriter), String> {
        Self::open_with_heads_every(path, HEAD_EVERY)
    }

    /// [`Self::open`], logging the chain head at most every `head_every` while lines are
    /// added.
    fn open_with_heads_every(
        path: &Path,
        head_every: Duration,
    ) -> Result<(Audit, AuditWriter), String> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            // Directories it creates are keyturn's alone, like the log (existing ones keep
            // their mode).
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(parent)
                .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("cannot open audit log {}: {e}", path.display()))?;
        let (prev, last_ts) = last_line(&mut file)
            .map_err(|e| format!("cannot read audit log {}: {e}", path.display()))?;
        let opened = Head {
            count: count_lines(&mut file)
                .map_err(|e| format!("cannot read audit log {}: {e}", path.display()))?,
            hash: prev.clone(),
        };
        // The audit thread's own handle, for fdatasync while others write.
        let sync = file
            .try_clone()
            .map_err(|e| format!("cannot open audit log {}: {e}", path.display()))?;
        let mut chain = Chain {
            file,
            prev,
            pending: Vec::with_capacity(64 * 1024),
            pending_written: 0,
            pending_through: 0,
            taken: Vec::with_capacity(64 * 1024),
        };
        let recent = read_tail(&mut chain.file)
            .map_err(|e| format!("cannot read audit log {}: {e}", path.display()))?;
        let shared = Arc::new(LogState::new(
            chain,
            last_ts,
            opened.count,
            path.display().to_string(),
            recent,
        ));
        let thread = shared.clone();
        // The thread logs where its opener does (the global subscriber in the daemon).
        let dispatch = tracing::dispatcher::get_default(Clone::clone);
        let handle = std::thread::Builder::new()
            .name("keyturn-audit".into())
            .spawn(move || {
                let _stopped = ThreadStopped(&thread);
                let mut heads = HeadLog::new(opened, head_every, Instant::now());
                tracing::dispatcher::with_default(&dispatch, || {
                    audit_thread(&thread, &sync, &mut heads);
                    // At the stop, whatever was added: the head the next start continues.
                    log_head(&thread.shown, heads.last());
                });
            })
            .map_err(|e| format!("cannot start the audit thread: {e}"))?;
        Ok((
            Audit(Some(Arc::new(Handles(shared)))),
            AuditWriter(Some(handle)),
        ))
    }

    fn shared(&self) -> Option<&LogState> {
        self.0.as_deref().map(|handles| &*handles.0)
    }

    /// Whether the log is being written (false while the disk refuses writes).
    pub fn is_healthy(&self) -> bool {
        self.shared()
            .is_none_or(|shared| shared.healthy.load(Ordering::Relaxed))
    }

    /// The time (`ts`) of the last record the log held when it was opened: what happened
    /// after it and before this start was seen by no daemon writing this log. None for a
    /// new log.
    pub fn last_ts(&self) -> Option<i64> {
        self.shared()?.last_ts
    }

    /// The last [`RECENT_LIFECYCLE`] lifecycle lines, newest first: those recorded since
    /// the log was opened, after those found in its last [`LIFECYCLE_TAIL`] bytes then.
    pub fn recent_lifecycle(&self) -> Vec<LifecycleLine> {
        self.shared().map_or_else(Vec::new, |shared| {
            let recent = shared.recent.lock().unwrap_or_else(PoisonError::into_inner);
            recent.iter().rev().cloned().collect()
        })
    }

    /// Whether the log held, when opened, the line of `keyset`'s token status change
    /// number `seq` (searched in its last [`LIFECYCLE_TAIL`] bytes).
    pub fn has_status_change(&self, keyset: &str, seq: u64) -> bool {
        self.shared()
            .is_some_and(|shared| shared.status_changes.contains(&(keyset.to_owned(), seq)))
    }

    /// A handle that records nothing (for tests and tools that have no log).
    pub fn disabled() -> Audit {
        Audit(None)
    }

    /// Records `record`: returns once its line is written to the file (see [`Self::queue`]
    /// and [`Self::written`]).
    pub async fn record(&self, record: Record<'_>) -> Result<(), ()> {
        let line = self.queue(record).await?;
        self.written(line).await
    }

    /// Queues `record`'s line, waiting only if the queue is full, and returns it for
    /// [`Self::written`]. Fails when the log cannot be written (read-only or full disk) or
    /// has stopped: the caller must then refuse to sign.
    pub async fn queue(&self, record: Record<'_>) -> Result<Line, ()> {
        let Some(shared) = self.shared() else {
            return Ok(Line(0));
        };
        loop {
            if !shared.healthy.load(Ordering::Relaxed) {
                return Err(());
            }
            // Registered before trying, so that a write that makes room meanwhile is not
            // missed.
            let progress = shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if let Some(line) = shared.push(&record, false)? {
                return Ok(Line(line));
            }
            // Full: write the queue out, or wait for the task writing it.
            if let Some(chain) = shared.try_chain() {
                let _ = shared.write(chain);
                continue;
            }
            progress.await;
        }
    }

    /// Returns once `line` and every line queued before it are in the file. Unless another
    /// task is writing (then it waits for it), it writes them itself: one write for all the
    /// lines queued, however many tasks wait for them. Fails when the log cannot be written
    /// or has stopped: the caller must then withhold the token (its line may still reach
    /// the file later: the log may name a token that never left, never the reverse).
    pub async fn written(&self, line: Line) -> Result<(), ()> {
        let Some(shared) = self.shared() else {
            return Ok(());
        };
        // Let the other tasks ready on this worker queue their lines first: one write then
        // takes them all.
        tokio::task::yield_now().await;
        loop {
            let progress = shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if shared.written.load(Ordering::Acquire) >= line.0 {
                return Ok(());
            }
            if !shared.healthy.load(Ordering::Relaxed) {
                return Err(());
            }
            if let Some(chain) = shared.try_chain() {
                let _ = shared.write(chain);
                continue;
            }
            progress.await;
        }
    }

    /// Records a lifecycle event without waiting (from maintenance tasks): the audit
    /// thread writes it.
    pub fn lifecycle(&self, keyset: &str, event: &Event) {
        let record = Record {
            ts: event.at,
            event: event.kind,
            caller: None,
            keyset,
            kid: Some(&event.kid),
            jti: None,
            sub: None,
            aud: None,
            exp: None,
            status: None,
        };
        if let Some(shared) = self.shared() {
            if !matches!(shared.push(&record, true), Ok(Some(_))) {
                tracing::error!(
                    keyset,
                    "audit log is full or stopped; lifecycle event not recorded"
                );
            }
        }
    }
}

/// Most bytes held back while the disk refuses writes; beyond it new records wait.
const MAX_PENDING: usize = 16 << 20;
/// How often a failed write is retried, and how many retries a stopping daemon allows.
const RETRY: Duration = Duration::from_millis(250);
const RETRIES_AT_EXIT: u32 = 40;

/// Longest time between writing a line and its fdatasync. Under load one fdatasync covers
/// everything written in this window instead of one per request: on this kind of machine
/// (a VM's virtio disk) each costs a trap to the hypervisor and a journal commit, and one per
/// batch took a fifth of the daemon's CPU at 17k signatures/s.
const SYNC_EVERY: Duration = Duration::from_millis(5);

/// When the audit thread logs the chain head: once lines were synced since the last head
/// logged and `every` has passed since then (the open counts as a head logged). Time is a
/// parameter.
struct HeadLog {
    every: Duration,
    /// The head of the lines known to be on disk.
    synced: Head,
    /// The line count of the last head logged, and when.
    logged: u64,
    logged_at: Instant,
}

impl HeadLog {
    fn new(opened: Head, every: Duration, now: Instant) -> HeadLog {
        HeadLog {
            every,
            logged: opened.count,
            synced: opened,
            logged_at: now,
        }
    }

    /// The lines up to `head` are on disk.
    fn synced(&mut self, head: Head) {
        self.synced = head;
    }

    /// How long until a head is due; None while no line was synced since the last one.
    fn wait(&self, now: Instant) -> Option<Duration> {
        (self.synced.count > self.logged).then(|| {
            self.every
                .saturating_sub(now.saturating_duration_since(self.logged_at))
        })
    }

    /// The head to log at `now`, if one is due; it then counts as logged.
    fn due(&mut self, now: Instant) -> Option<&Head> {
        if !self.wait(now)?.is_zero() {
            return None;
        }
        self.logged = self.synced.count;
        self.logged_at = now;
        Some(&self.synced)
    }

    /// The head of the lines on disk.
    fn last(&self) -> &Head {
        &self.synced
    }
}

/// The daemon's log line an operator anchors the file with (`keyturn audit verify FILE
/// --head COUNT:HASH`).
fn log_head(shown: &str, head: &Head) {
    tracing::info!(
        count = head.count,
        hash = %head.hash,
        path = shown,
        "audit chain head"
    );
    #[cfg(test)]
    tests::LOGGED_HEADS
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push((shown.to_owned(), head.clone()));
}

/// The audit thread: fdatasyncs (on its own handle, `sync`, so that writers go on) within
/// [`SYNC_EVERY`] of a write, writes within about [`SYNC_EVERY`] the lines no one waits for
/// (lifecycle events, and those of requests cancelled before their write), retries
/// every [`RETRY`] while the disk refuses writes (read-only, full), logs the chain head of
/// the synced lines as `heads` says, and at the stop writes and syncs what is left.
fn audit_thread(shared: &LogState, sync: &File, heads: &mut HeadLog) {
    let mut synced_at = Instant::now();
    // The last write attempt: retries while the disk refuses writes count from it, so
    // that an early wake (a lifecycle event) does not put them off.
    let mut tried_at = Instant::now();
    let mut retries_at_exit = 0;
    loop {
        // Wait for what is due: a retry, a sync, lines no one waits for, the stop.
        let closed = {
            let mut queue = shared.queue();
            while !queue.closed {
                let wait = if !shared.healthy.load(Ordering::Relaxed) {
                    Some(RETRY.saturating_sub(tried_at.elapsed()))
                } else if shared.dirty.load(Ordering::Acquire) {
                    Some(SYNC_EVERY.saturating_sub(synced_at.elapsed()))
                } else if !queue.lines.is_empty() {
                    // Lines still there by then have no task to write them (lifecycle
                    // events, cancelled requests).
                    Some(SYNC_EVERY)
                } else {
                    None
                };
                // Nothing near: a queued line must wake it (the head can wait that long).
                let asleep = wait.is_none();
                let wait = match (wait, heads.wait(Instant::now())) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                if wait.is_some_and(|w| w.is_zero()) {
                    break;
                }
                queue.thread_idle = true;
                queue.thread_asleep = asleep;
                match wait {
                    Some(wait) => {
                        let (q, timeout) = shared
                            .arrived
                            .wait_timeout(queue, wait)
                            .unwrap_or_else(PoisonError::into_inner);
                        queue = q;
                        if timeout.timed_out() {
                            break;
                        }
                    }
                    None => {
                        queue = shared
                            .arrived
                            .wait(queue)
                            .unwrap_or_else(PoisonError::into_inner)
                    }
                }
            }
            queue.thread_idle = false;
            queue.thread_asleep = false;
            queue.closed
        };
        tried_at = Instant::now();
        let (mut outcome, head) = shared.write_then(shared.chain(), LogState::head);
        if outcome.is_ok()
            && (closed || synced_at.elapsed() >= SYNC_EVERY)
            && shared.dirty.swap(false, Ordering::AcqRel)
        {
            outcome = sync.sync_data();
            synced_at = Instant::now();
            let failed = outcome.is_err();
            if failed {
                shared.dirty.store(true, Ordering::Release);
            } else if let Some(head) = head {
                // Read after the write, before the sync: its lines are synced.
                heads.synced(head);
            }
            if shared.sync_failing.swap(failed, Ordering::AcqRel) != failed {
                shared.note(&outcome);
                // Records waiting for their line give up.
                shared.progress.notify_waiters();
            }
        }
        // At the stop it is logged once, after the last sync.
        if !closed {
            if let Some(head) = heads.due(Instant::now()) {
                log_head(&shared.shown, head);
            }
        }
        match outcome {
            Ok(()) => {
                let done = closed && shared.queue().lines.is_empty();
                if done && !shared.dirty.load(Ordering::Acquire) {
                    return; // closed, and everything is on disk
                }
            }
            Err(_) => {
                if closed {
                    retries_at_exit += 1;
                    if retries_at_exit > RETRIES_AT_EXIT {
                        let chain = shared.chain();
                        tracing::error!(
                            path = shared.shown,
                            bytes = chain.pending.len() - chain.pending_written
                                + shared.queue().lines.len(),
                            "audit lines lost at exit: the log stayed unwritable"
                        );
                        return;
                    }
                    std::thread::sleep(RETRY);
                }
            }
        }
    }
}

/// Writes `buf[*written..]`, advancing `written` past whatever reached the file.
fn write_from(file: &mut File, buf: &[u8], written: &mut usize) -> std::io::Result<()> {
    while *written < buf.len() {
        match file.write(&buf[*written..]) {
            Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
            Ok(n) => *written += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Appends a record's line: its fields, the previous line's hash, a newline. `prev` becomes
/// this line's hash.
fn append(buf: &mut Vec<u8>, unchained: &[u8], prev: &mut String) {
    let start = buf.len();
    buf.extend_from_slice(unchained);
    buf.extend_from_slice(b",\"prev\":\"");
    buf.extend_from_slice(prev.as_bytes());
    buf.extend_from_slice(b"\"}");
    hex_sha256_into(&buf[start..], prev);
    buf.push(b'\n');
}

fn hex_sha256(bytes: &[u8]) -> String {
    let mut hex = String::with_capacity(64);
    hex_sha256_into(bytes, &mut hex);
    hex
}

/// Replaces `hex` with the SHA-256 of `bytes` in lowercase hex, in place: the writer hashes
/// every line.
fn hex_sha256_into(bytes: &[u8], hex: &mut String) {
    let digest = digest::digest(&digest::SHA256, bytes);
    hex.clear();
    for b in digest.as_ref() {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 15)]));
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The hash of the file's last line (the genesis value for an empty file), and the `ts` of
/// the last record among the final lines. A last line
/// without its newline (torn by a crash, or left when the disk stayed full at exit) is
/// ended first, so the next line starts on a line of its own; `verify` reports the torn one.
fn last_line(file: &mut File) -> std::io::Result<(String, Option<i64>)> {
    let len = file.seek(SeekFrom::End(0))?;
    if len == 0 {
        return Ok((GENESIS.to_owned(), None));
    }
    // Lines are short; the last one is inside the final 64 KiB.
    let start = len.saturating_sub(64 * 1024);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail)?;
    let partial = tail.last() != Some(&b'\n');
    if partial {
        file.write_all(b"\n")?;
        file.sync_data()?;
        tracing::warn!(
            "the audit log ended in a partial line; it was ended so that new lines start on \
             their own (`keyturn audit verify` reports it)"
        );
    }
    let body = tail.strip_suffix(b"\n").unwrap_or(&tail);
    let line = body.rsplit(|b| *b == b'\n').next().unwrap_or(body);
    if !partial && serde_json::from_slice::<serde::de::IgnoredAny>(line).is_err() {
        tracing::warn!(
            "the audit log's last line is not a record (a write cut short, or not written by \
             keyturn); new lines chain onto its bytes and `keyturn audit verify` reports it"
        );
    }
    #[derive(serde::Deserialize)]
    struct Ts {
        ts: i64,
    }
    // A torn or foreign last line has none: the record before it does.
    let last_ts = body
        .rsplit(|b| *b == b'\n')
        .find_map(|line| serde_json::from_slice::<Ts>(line).ok())
        .map(|r| r.ts);
    Ok((hex_sha256(line), last_ts))
}

/// How far back from its end the log is searched for lifecycle lines at the open: lines
/// of signatures may bury older ones, and the open must stay quick.
pub const LIFECYCLE_TAIL: u64 = 4 << 20;

/// What the open reads from the end of the log: the recent lifecycle lines, and the token
/// status changes logged.
type Tail = (
    std::collections::VecDeque<LifecycleLine>,
    std::collections::HashSet<(String, u64)>,
);

/// A token status change's line, as far as telling whether it was logged goes.
#[derive(serde::Deserialize)]
struct StatusLine {
    event: String,
    keyset: String,
    seq: Option<u64>,
}

/// The last [`RECENT_LIFECYCLE`] lifecycle lines in the final [`LIFECYCLE_TAIL`] bytes of
/// `file`, oldest first, and the token status changes there (key set, `seq`).
fn read_tail(file: &mut File) -> std::io::Result<Tail> {
    let len = file.seek(SeekFrom::End(0))?;
    let start = len.saturating_sub(LIFECYCLE_TAIL);
    file.seek(SeekFrom::Start(start))?;
    let mut tail = Vec::new();
    file.take(LIFECYCLE_TAIL).read_to_end(&mut tail)?;
    // The first line may be cut by the start of the tail: only whole ones count.
    let whole = if start == 0 {
        &tail[..]
    } else {
        tail.iter()
            .position(|b| *b == b'\n')
            .map_or(&[][..], |i| &tail[i + 1..])
    };
    let mut found: std::collections::VecDeque<LifecycleLine> = whole
        .split(|b| *b == b'\n')
        .rev()
        .filter_map(|line| serde_json::from_slice::<FileLine>(line).ok())
        .map(|l| LifecycleLine {
            ts: l.ts,
            event: l.event,
            keyset: l.keyset,
            kid: l.kid,
        })
        .take(RECENT_LIFECYCLE)
        .collect();
    found.make_contiguous().reverse();
    let changes = whole
        .split(|b| *b == b'\n')
        .filter(|line| memchr::memmem::find(line, b"\"token-status\"").is_some())
        .filter_map(|line| serde_json::from_slice::<StatusLine>(line).ok())
        .filter(|l| l.event == "token-status")
        .filter_map(|l| Some((l.keyset, l.seq?)))
        .collect();
    Ok((found, changes))
}

/// The number of lines in `file`: its newlines, once [`last_line`] has ended a torn last
/// line.
fn count_lines(file: &mut File) -> std::io::Result<u64> {
    file.seek(SeekFrom::Start(0))?;
    let mut buf = vec![0; 256 * 1024];
    let mut lines = 0;
    loop {
        match file.read(&mut buf) {
            Ok(0) => return Ok(lines),
            Ok(n) => lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Lines checked.
    pub lines: u64,
    /// Lines that are not records (numbered from 1): writes cut short by a crash or a power
    /// loss, ended at the next start. What they held is lost; the chain still covers them.
    pub torn: Vec<u64>,
    /// The file's head: anchor it to check the file against it later.
    pub head: Head,
}

/// Checks the chain of an audit log: the first broken line, or what was checked. A line
/// that is not JSON is reported as torn and the chain continues over its bytes, as the
/// daemon continued it: the next line must still carry its hash, so garbage put in later
/// breaks the chain at the line after it.
///
/// With `anchor`, a head logged earlier, the file must also still begin with the lines it
/// counts, unchanged: fewer lines, or another hash at its line (a rewrite, even one that
/// recomputed every hash after it), fail. Lines added after it are checked as any others.
pub fn verify(path: &Path, anchor: Option<&Head>) -> Result<Verified, String> {
    let shown = path.display();
    let file = File::open(path).map_err(|e| format!("cannot open {shown}: {e}"))?;
    let mut found = Verified {
        lines: 0,
        torn: Vec::new(),
        head: Head {
            count: 0,
            hash: GENESIS.to_owned(),
        },
    };
    let anchored = |head: &Head| match anchor {
        Some(anchor) if anchor.count == head.count && anchor.hash != head.hash => Err(format!(
            "{shown}: line {} is not the one the head {anchor} was logged for: the log was \
             rewritten up to there since (its hashes recomputed), or it is another log",
            anchor.count
        )),
        _ => Ok(()),
    };
    anchored(&found.head)?;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| format!("cannot read {shown}: {e}"))?;
        found.lines += 1;
        let n = found.lines;
        let prev = &found.head.hash;
        match serde_json::from_slice::<serde_json::Value>(&line) {
            Err(_) => found.torn.push(n),
            Ok(value) => {
                let claimed = value
                    .get("prev")
                    .and_then(|p| p.as_str())
                    .unwrap_or_default();
                if claimed != prev {
                    return Err(format!(
                        "chain broken at line {n}: it does not follow the line before it (a \
                         line was removed, inserted or edited before it)"
                    ));
                }
            }
        }
        found.head = Head {
            count: n,
            hash: hex_sha256(&line),
        };
        anchored(&found.head)?;
    }
    match anchor {
        Some(anchor) if anchor.count > found.lines => Err(format!(
            "{shown}: {} lines, fewer than the {} of the head {anchor}: the log was cut short \
             since that head was logged",
            found.lines, anchor.count
        )),
        _ => Ok(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::policy::Audience;

    const AUD: Audience<'static> = Audience::One(std::borrow::Cow::Borrowed("api"));

    fn record<'a>(i: i64, jti: &'a str, aud: &'a Audience<'a>) -> Record<'a> {
        Record {
            ts: i,
            event: "sign",
            caller: Some("svc"),
            keyset: "default",
            kid: Some("kid"),
            jti: Some(jti),
            sub: Some("alice"),
            aud: Some(aud),
            exp: Some(i + 60),
            status: None,
        }
    }

    fn unchained(record: &Record<'_>) -> Vec<u8> {
        let mut line = Vec::new();
        record.write_unchained(&mut line);
        line
    }

    async fn write(path: &Path, range: std::ops::Range<i64>) {
        let (audit, writer) = Audit::open(path).unwrap();
        let aud = AUD;
        for i in range {
            let jti = format!("jti{i}");
            audit.record(record(i, &jti, &aud)).await.unwrap();
        }
        drop(audit);
        writer.finish();
    }

    /// The console's feed: lifecycle events and admin actions, newest first, without their
    /// caller; never a signature's line. After a restart, as found at the end of the file.
    #[tokio::test]
    async fn recent_lifecycle_lines_leave_out_tokens_and_callers() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (audit, writer) = Audit::open(&path).unwrap();
        let aud = AUD;
        let event = |kind, at| Event {
            kind,
            kid: format!("k{at}"),
            at,
        };
        audit.lifecycle("default", &event("published", 1));
        audit.record(record(2, "jti2", &aud)).await.unwrap();
        let revoke = Record {
            event: "revoked",
            jti: None,
            sub: None,
            aud: None,
            exp: None,
            ..record(3, "", &aud)
        };
        audit.record(revoke).await.unwrap();
        audit.lifecycle("other", &event("activated", 4));
        let line = |ts, event: &str, keyset: &str, kid: &str| LifecycleLine {
            ts,
            event: event.into(),
            keyset: keyset.into(),
            kid: Some(kid.into()),
        };
        let expected = vec![
            line(4, "activated", "other", "k4"),
            line(3, "revoked", "default", "kid"),
            line(1, "published", "default", "k1"),
        ];
        assert_eq!(audit.recent_lifecycle(), expected);
        drop(audit);
        writer.finish();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("\"caller\":\"svc\"") && text.contains("jti2"),
            "{text}"
        );
        let (reopened, writer) = Audit::open(&path).unwrap();
        assert_eq!(reopened.recent_lifecycle(), expected);
        drop(reopened);
        writer.finish();
    }

    /// Only the last lines are kept, and only whole lines of the file's tail are read.
    #[test]
    fn the_tail_read_at_the_open_is_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let mut text = String::new();
        for i in 0..RECENT_LIFECYCLE as i64 + 5 {
            text.push_str(&format!(
                "{{\"ts\":{i},\"event\":\"published\",\"keyset\":\"a\",\"kid\":\"k\",\"prev\":\"x\"}}\n"
            ));
        }
        std::fs::write(&path, &text).unwrap();
        let mut file = File::open(&path).unwrap();
        let (found, changes) = read_tail(&mut file).unwrap();
        assert!(changes.is_empty());
        assert_eq!(found.len(), RECENT_LIFECYCLE);
        assert_eq!(found.front().unwrap().ts, 5);
        assert_eq!(found.back().unwrap().ts, RECENT_LIFECYCLE as i64 + 4);
        // A line with a token's field is none, even with a lifecycle event's name.
        let token = "{\"ts\":1,\"event\":\"published\",\"keyset\":\"a\",\"sub\":\"alice\",\"prev\":\"x\"}\n";
        // Status changes are found by key set and number; they are no lifecycle lines.
        let change = "{\"ts\":2,\"event\":\"token-status\",\"caller\":\"ops\",\"keyset\":\"a\",\"uri\":\"u\",\"idx\":3,\"old\":\"valid\",\"new\":\"revoked\",\"seq\":7,\"prev\":\"x\"}\n";
        std::fs::write(&path, format!("{token}{change}")).unwrap();
        let mut file = File::open(&path).unwrap();
        let (found, changes) = read_tail(&mut file).unwrap();
        assert!(found.is_empty());
        assert_eq!(changes, [("a".to_owned(), 7)].into_iter().collect());
    }

    #[test]
    fn a_line_has_the_record_fields_in_order_then_prev() {
        let mut buf = Vec::new();
        let mut prev = GENESIS.to_owned();
        let aud = AUD;
        append(&mut buf, &unchained(&record(1, "jti1", &aud)), &mut prev);
        let lifecycle = Record {
            caller: None,
            jti: None,
            sub: None,
            aud: None,
            exp: None,
            event: "published",
            ..record(2, "", &AUD)
        };
        append(&mut buf, &unchained(&lifecycle), &mut prev);
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!(
                r#"{{"ts":1,"event":"sign","caller":"svc","keyset":"default","kid":"kid","jti":"jti1","sub":"alice","aud":"api","exp":61,"prev":"{GENESIS}"}}"#
            )
        );
        assert_eq!(
            lines[1],
            format!(
                r#"{{"ts":2,"event":"published","keyset":"default","kid":"kid","prev":"{}"}}"#,
                hex_sha256(lines[0].as_bytes())
            )
        );
        assert_eq!(prev, hex_sha256(lines[1].as_bytes()));
    }

    /// The hand-written line is byte for byte serde's, escapes included.
    #[test]
    fn lines_are_the_bytes_serde_writes() {
        let many = Audience::Many(vec!["a".into(), "b".into()]);
        let none = Audience::Many(vec![]);
        let escaped = Audience::One("x\"y".into());
        let lifecycle = Record {
            event: "published",
            caller: None,
            jti: None,
            sub: None,
            aud: None,
            exp: None,
            ..record(-5, "", &AUD)
        };
        let cases = [
            record(1, "j1", &AUD),
            record(2, "j2", &many),
            record(6, "j6", &none),
            lifecycle,
            record(3, "j\n", &AUD),
            record(4, "j4", &escaped),
            Record {
                sub: Some("\u{e9}"),
                ..record(5, "j5", &AUD)
            },
            Record {
                status: Some(StatusNote {
                    uri: "https://a.example/keysets/x/statuslists/1",
                    idx: 1_048_575,
                    old: None,
                    new: None,
                    seq: None,
                    recovered: false,
                }),
                ..record(7, "j7", &AUD)
            },
            Record {
                event: "token-status",
                status: Some(StatusNote {
                    uri: "u\"",
                    idx: 0,
                    old: Some("valid"),
                    new: Some("revoked"),
                    seq: Some(12),
                    recovered: true,
                }),
                ..lifecycle
            },
        ];
        for record in cases {
            let mut serde = serde_json::to_vec(&record).unwrap();
            assert_eq!(serde.pop(), Some(b'}'));
            assert_eq!(
                String::from_utf8(unchained(&record)).unwrap(),
                String::from_utf8(serde).unwrap(),
                "{record:?}"
            );
        }
    }

    #[test]
    fn a_line_escapes_strings_and_keeps_audience_arrays() {
        let aud = Audience::Many(vec!["a".into(), "b\n\"c".into()]);
        let tricky = Record {
            sub: Some("al\"ice\n\\"),
            ..record(3, "j", &aud)
        };
        let mut buf = Vec::new();
        let mut prev = GENESIS.to_owned();
        append(&mut buf, &unchained(&tricky), &mut prev);
        let text = String::from_utf8(buf).unwrap();
        let line = text.strip_suffix('\n').unwrap();
        assert!(!line.contains('\n'), "{line}");
        let value: serde_json::Value = serde_json::from_str(line).unwrap();
        assert_eq!(value["sub"], "al\"ice\n\\");
        assert_eq!(value["aud"], serde_json::json!(["a", "b\n\"c"]));
        assert_eq!(value["prev"], GENESIS);
        assert_eq!(prev, hex_sha256(line.as_bytes()));
    }

    #[tokio::test]
    async fn chain_verifies_across_reopen_and_detects_edits() {
        let dir = tempfile::tempdir().unwrap();
        // Directories the log needs are created for keyturn alone.
        let path = dir.path().join("new/dir/audit.log");
        write(&path, 0..5).await;
        for dir in [dir.path().join("new"), dir.path().join("new/dir")] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        }
        write(&path, 5..10).await;
        assert_eq!(
            verify(&path, None).map(|v| (v.lines, v.torn.len())),
            Ok((10, 0))
        );

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        let mut removed = lines.clone();
        removed.remove(3);
        std::fs::write(&path, removed.join("\n") + "\n").unwrap();
        assert!(verify(&path, None).unwrap_err().contains("line 4"));

        let mut edited = lines.clone();
        let changed = edited[6].replace("alice", "mallory");
        edited[6] = &changed;
        std::fs::write(&path, edited.join("\n") + "\n").unwrap();
        assert!(verify(&path, None).unwrap_err().contains("line 8"));
    }

    /// A log on `file` with no audit thread: the test drives it.
    fn shared_on(file: File) -> Arc<LogState> {
        let chain = Chain {
            file,
            prev: GENESIS.to_owned(),
            pending: Vec::new(),
            pending_written: 0,
            pending_through: 0,
            taken: Vec::new(),
        };
        Arc::new(LogState::new(
            chain,
            None,
            0,
            "test".into(),
            Default::default(),
        ))
    }

    /// A record finding the queue full writes it out, or waits while another task writes
    /// it. Then waiting for its line writes it, with every line queued before it, unless
    /// another task is writing: then it waits for that one. If the write fails, it gives
    /// up and signing stops.
    #[tokio::test]
    async fn a_record_writes_or_waits_for_the_queue_and_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .open(&path)
            .unwrap();
        let shared = shared_on(file);
        let audit = Audit(Some(Arc::new(Handles(shared.clone()))));
        let aud = AUD;
        let line_count = || std::fs::read_to_string(&path).unwrap().lines().count();

        // Full while another task holds the chain: the record waits for it.
        shared.queue().lines = vec![b'x'; MAX_QUEUED];
        let mut queued = tokio_test::task::spawn(audit.queue(record(1, "j1", &aud)));
        {
            let _chain = shared.chain();
            assert!(
                queued.poll().is_pending(),
                "a full queue must hold the record"
            );
            shared.take(&mut Vec::new());
        }
        shared.progress.notify_waiters();
        assert!(queued.is_woken(), "room made must wake the record");
        let std::task::Poll::Ready(Ok(first)) = queued.poll() else {
            panic!("queued once there is room");
        };
        drop(queued);
        // Full, no one writing: the record writes the queue out, then queues.
        let mut full = 1;
        while shared.push(&record(1, "jq", &aud), false) != Ok(None) {
            full += 1;
        }
        let second = audit.queue(record(2, "j2", &aud)).await.unwrap();
        assert_eq!(line_count(), full);
        audit.written(first).await.unwrap();
        assert_eq!(line_count(), full, "written with the full queue");

        // Another task is writing: the second line waits for it.
        let mut waiting = tokio_test::task::spawn(audit.written(second));
        let chain = shared.chain();
        assert!(waiting.poll().is_pending(), "the yield to other tasks");
        assert!(waiting.poll().is_pending(), "another task holds the chain");
        shared.write(chain).unwrap();
        assert!(waiting.is_woken(), "woken once the chain is free");
        assert_eq!(waiting.poll(), std::task::Poll::Ready(Ok(())));
        drop(waiting);
        assert_eq!(line_count(), full + 1);
        let lines = std::fs::read_to_string(&path).unwrap();
        assert!(lines.lines().next().unwrap().contains("\"jti\":\"j1\""));
        assert!(lines.lines().last().unwrap().contains("\"jti\":\"j2\""));
        assert_eq!(verify(&path, None).unwrap().lines, (full + 1) as u64);

        // No one writing: waiting for the third line writes it.
        let third = audit.queue(record(3, "j3", &aud)).await.unwrap();
        audit.written(third).await.unwrap();
        assert_eq!(line_count(), full + 2);

        // A file that refuses writes: the wait fails, and signing stops.
        let shared = shared_on(File::open(&path).unwrap());
        let audit = Audit(Some(Arc::new(Handles(shared.clone()))));
        let line = audit.queue(record(4, "j4", &aud)).await.unwrap();
        assert_eq!(audit.written(line).await, Err(()));
        assert!(!audit.is_healthy());
        assert_eq!(audit.queue(record(5, "j5", &aud)).await, Err(()));
    }

    /// Many tasks recording at once, on two workers, with the audit thread syncing between
    /// their writes: every record returns (no waiter is left without a wake), and the log
    /// holds each line once, chained in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_records_all_return_and_chain() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (audit, writer) = Audit::open(&path).unwrap();
        let (tasks, each) = (16, 1500);
        let mut set = tokio::task::JoinSet::new();
        for t in 0..tasks {
            let audit = audit.clone();
            set.spawn(async move {
                for i in 0..each {
                    let jti = format!("t{t}-{i}");
                    let aud = AUD;
                    audit.record(record(i, &jti, &aud)).await.unwrap();
                }
            });
        }
        let all = async {
            while let Some(done) = set.join_next().await {
                done.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(60), all)
            .await
            .expect("a record never returned");
        drop(audit);
        writer.finish();
        let verified = verify(&path, None).unwrap();
        assert_eq!(verified.lines, tasks * each as u64);
        assert!(verified.torn.is_empty());
    }

    /// A line queued by a task that then gave up waiting for it (a cancelled request) is
    /// written by the audit thread, without any other write to carry it.
    #[tokio::test]
    async fn a_line_no_one_waits_for_is_written_by_the_audit_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let (audit, writer) = Audit::open(&path).unwrap();
        let aud = AUD;
        // Queued, never waited for.
        let _ = audit.queue(record(1, "abandoned", &aud)).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while !std::fs::read_to_string(&path)
            .unwrap()
            .contains("\"jti\":\"abandoned\"")
        {
            assert!(Instant::now() < deadline, "the line was not written");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(!writer.0.as_ref().unwrap().is_finished());
        drop(audit);
        writer.finish();
    }

    /// The log tells when its last record was written: none for a new log, the last
    /// record's `ts`, the one before a torn line's.
    #[tokio::test]
    async fn last_ts_is_the_last_records() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let opened = |path: &Path| {
            let (audit, writer) = Audit::open(path).unwrap();
            let ts = audit.last_ts();
            drop(audit);
            writer.finish();
            ts
        };
        assert_eq!(opened(&path), None);
        write(&path, 10..13).await;
        assert_eq!(opened(&path), Some(12));
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(b"{\"ts\":99,\"ev").unwrap();
        assert_eq!(opened(&path), Some(12));
    }

    #[tokio::test]
    async fn a_torn_last_line_is_ended_before_new_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write(&path, 0..3).await;
        let mut file = OpenOptions::new().append(true).open(&path).unwrap();
        file.write_all(br#"{"ts":3,"event":"si"#).unwrap();
        drop(file);
        write(&path, 4..6).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 6, "{text}");
        assert_eq!(lines[3], r#"{"ts":3,"event":"si"#);
        for line in &lines[4..] {
            serde_json::from_str::<serde_json::Value>(line).unwrap();
        }
        // The torn line is reported, and the lines after it are still checked.
        let verified = verify(&path, None).unwrap();
        assert_eq!((verified.lines, verified.torn), (6, vec![4]));
        let edited = text.replace(r#""ts":4,"#, r#""ts":8,"#);
        std::fs::write(&path, &edited).unwrap();
        assert!(verify(&path, None).unwrap_err().contains("line 6"));
        // Garbage in place of a record breaks the chain at the next line.
        let garbage = text.replacen(lines[1], "garbage", 1);
        std::fs::write(&path, garbage).unwrap();
        assert!(verify(&path, None).unwrap_err().contains("line 3"));
    }

    #[tokio::test]
    async fn records_are_refused_once_the_audit_thread_has_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let (audit, writer) = Audit::open(&dir.path().join("audit.log")).unwrap();
        let shared = audit.0.as_ref().unwrap().0.clone();
        drop(ThreadStopped(&shared));
        assert!(!audit.is_healthy());
        let aud = AUD;
        assert_eq!(audit.record(record(1, "j", &aud)).await, Err(()));
        drop(audit);
        writer.finish();
    }

    /// `lines` chained again from the first, as someone who rewrote them would: each
    /// line's `prev` replaced by the hash of the line before it as it now is.
    fn rechain(lines: &[String]) -> String {
        let mut prev = GENESIS.to_owned();
        let mut out = String::new();
        for line in lines {
            let cut = line.rfind("\"prev\":\"").unwrap();
            let line = format!("{}\"prev\":\"{prev}\"}}", &line[..cut]);
            prev = hex_sha256(line.as_bytes());
            out += &line;
            out.push('\n');
        }
        out
    }

    #[test]
    fn a_head_is_count_colon_hash() {
        let head: Head = format!("12:{}", "AB".repeat(32)).parse().unwrap();
        assert_eq!(head.count, 12);
        assert_eq!(head.to_string(), format!("12:{}", "ab".repeat(32)));
        for bad in [
            String::new(),
            "12".into(),
            "a".repeat(64),
            format!("-1:{}", "a".repeat(64)),
            format!("x:{}", "a".repeat(64)),
            format!("12:{}", "a".repeat(63)),
            format!("12:{}", "g".repeat(64)),
            format!("12:{}:", "a".repeat(64)),
        ] {
            let err = bad.parse::<Head>().unwrap_err();
            assert!(err.contains("COUNT:HASH"), "{bad}: {err}");
        }
    }

    /// A head logged earlier catches what the chain alone cannot: a log cut short, and one
    /// rewritten with every hash after the change recomputed. Lines added after the head,
    /// and changes after it, are not its business.
    #[tokio::test]
    async fn a_head_anchors_the_lines_it_counts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        assert_eq!(
            verify(&path.with_extension("none"), None).map(|_| ()),
            Err(format!(
                "cannot open {}: No such file or directory (os error 2)",
                path.with_extension("none").display()
            ))
        );
        write(&path, 0..6).await;
        let six = verify(&path, None).unwrap().head;
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(six.count, 6);
        assert_eq!(
            six.hash,
            hex_sha256(text.lines().last().unwrap().as_bytes())
        );
        // The head the daemon held at each stop is the one verify finds.
        let (audit, writer) = Audit::open(&path).unwrap();
        let shared = audit.shared().unwrap();
        assert_eq!(shared.head(&shared.chain()), Some(six.clone()));
        drop(audit);
        writer.finish();
        write(&path, 6..10).await;
        let ten = verify(&path, None).unwrap().head;
        assert_eq!(ten.count, 10);
        for head in [&six, &ten] {
            assert_eq!(verify(&path, Some(head)).unwrap().head, ten, "{head}");
        }
        // The empty prefix: any log holds it.
        let empty = Head {
            count: 0,
            hash: GENESIS.into(),
        };
        assert!(verify(&path, Some(&empty)).is_ok());
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();

        // Cut short: the chain holds, the head does not.
        std::fs::write(&path, lines[..5].join("\n") + "\n").unwrap();
        assert!(verify(&path, None).is_ok());
        let err = verify(&path, Some(&six)).unwrap_err();
        assert!(
            err.contains("5 lines, fewer than the 6") && err.contains("cut short"),
            "{err}"
        );

        // Line 3 rewritten and every hash after it recomputed.
        let mut rewritten = lines.clone();
        rewritten[2] = rewritten[2].replace("alice", "mallory");
        std::fs::write(&path, rechain(&rewritten)).unwrap();
        assert!(verify(&path, None).is_ok(), "the chain alone is fooled");
        for head in [&six, &ten] {
            let err = verify(&path, Some(head)).unwrap_err();
            assert!(
                err.contains(&format!("line {} is not the one", head.count))
                    && err.contains("rewritten"),
                "{err}"
            );
        }
        // A head of another count or hash is no anchor either.
        let other = Head {
            count: 6,
            hash: ten.hash.clone(),
        };
        std::fs::write(&path, &text).unwrap();
        assert!(verify(&path, Some(&other)).is_err());

        // Rewritten after the head: the head still holds; a later head does not.
        let mut late = lines.clone();
        late[8] = late[8].replace("alice", "mallory");
        std::fs::write(&path, rechain(&late)).unwrap();
        assert!(verify(&path, Some(&six)).is_ok());
        assert!(verify(&path, Some(&ten)).is_err());
    }

    /// Heads are due once lines were synced since the last one and the interval has passed
    /// since it: at most one per interval under load, at once after a quiet spell.
    #[test]
    fn heads_are_due_every_interval_while_lines_are_added() {
        let head = |count| Head {
            count,
            hash: format!("{count:064}"),
        };
        let t0 = Instant::now();
        let at = |secs| t0 + Duration::from_secs(secs);
        let mut log = HeadLog::new(head(5), Duration::from_secs(60), t0);
        assert_eq!(log.wait(at(3600)), None, "nothing added");
        assert_eq!(log.due(at(3600)), None);
        log.synced(head(7));
        assert_eq!(log.wait(at(10)), Some(Duration::from_secs(50)));
        assert_eq!(log.due(at(10)), None);
        log.synced(head(9));
        assert_eq!(log.due(at(60)), Some(&head(9)));
        assert_eq!(log.wait(at(61)), None, "logged");
        log.synced(head(10));
        assert_eq!(log.wait(at(61)), Some(Duration::from_secs(59)));
        assert_eq!(log.due(at(119)), None);
        assert_eq!(log.due(at(120)), Some(&head(10)));
        // After a quiet hour, a new line's head is due at once.
        log.synced(head(11));
        assert_eq!(log.wait(at(3720)), Some(Duration::ZERO));
        assert_eq!(log.due(at(3720)), Some(&head(11)));
        assert_eq!(log.last(), &head(11));
    }

    /// Every head [`log_head`] logged, with the log it names. The log line itself is checked
    /// against the real daemon (tests/it/cli.rs); a capturing subscriber here would race
    /// with the other tests' subscribers over tracing's per-callsite cache.
    pub(super) static LOGGED_HEADS: Mutex<Vec<(String, Head)>> = Mutex::new(Vec::new());

    /// The heads logged for the log at `path`.
    fn logged_heads(path: &Path) -> Vec<Head> {
        let shown = path.display().to_string();
        LOGGED_HEADS
            .lock()
            .unwrap()
            .iter()
            .filter(|(p, _)| *p == shown)
            .map(|(_, h)| h.clone())
            .collect()
    }

    /// The audit thread logs the head of the synced lines by itself once the interval has
    /// passed (no other line wakes it), and again at the stop; each head anchors the file.
    #[tokio::test]
    async fn the_audit_thread_logs_heads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write(&path, 0..2).await;
        assert_eq!(logged_heads(&path), [verify(&path, None).unwrap().head]);

        let (audit, writer) =
            Audit::open_with_heads_every(&path, Duration::from_millis(200)).unwrap();
        let aud = AUD;
        for i in 2..5 {
            let jti = format!("jti{i}");
            audit.record(record(i, &jti, &aud)).await.unwrap();
        }
        // Logged with no other line or request to wake the thread.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !logged_heads(&path).iter().any(|head| head.count == 5) {
            assert!(Instant::now() < deadline, "no head within the interval");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        audit.record(record(5, "jti5", &aud)).await.unwrap();
        drop(audit);
        writer.finish();
        let heads = logged_heads(&path);
        let last = verify(&path, None).unwrap().head;
        assert_eq!(last.count, 6);
        assert_eq!(heads.last(), Some(&last), "the head at the stop");
        for head in &heads {
            assert!(verify(&path, Some(head)).is_ok(), "{head}");
        }
    }

    #[test]
    fn line_hash_is_lowercase_hex_sha256() {
        assert_eq!(
            hex_sha256(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[tokio::test]
    async fn lines_hold_no_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        write(&path, 0..1).await;
        let text = std::fs::read_to_string(&path).unwrap();
        let line: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
        let keys: Vec<_> = line.as_object().unwrap().keys().cloned().collect();
        assert_eq!(
            keys,
            ["aud", "caller", "event", "exp", "jti", "keyset", "kid", "prev", "sub", "ts"]
        );
    }
}

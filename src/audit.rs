//! The audit log: one JSON line per signature and per lifecycle event, append-only and
//! hash-chained.
//!
//! Each line carries `prev`, the SHA-256 (hex) of the previous line's bytes (64 zeros on
//! the first line), so editing or removing any line breaks the chain at the next one;
//! `keyturn audit verify FILE` finds the first break. Tokens are never logged: only caller,
//! key set, kid, jti, sub, aud and exp.
//!
//! Signing threads append their lines to one shared buffer; one writer thread takes the
//! whole buffer at a time, chains the lines and appends them with one write, then wakes
//! the signatures waiting for them, and calls fdatasync at most every 5 ms.
//! Durability: a token is returned only once its line is written to the file (no line, no
//! token), so a crash of the daemon, however abrupt (SIGKILL, the OOM killer), loses no
//! line of a token that left; a power loss can lose lines written in the last ~5 ms (plus
//! the time of one fdatasync).

use crate::lifecycle::Event;
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
    pub aud: Option<&'a crate::policy::Audience<'a>>,
    /// Token expiry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
}

impl Record<'_> {
    /// Appends the record's line up to its closing brace, which the writer adds after
    /// `prev`: the bytes serde would write for the record, less that brace.
    fn write_unchained(&self, out: &mut Vec<u8>) {
        use crate::json::{push_int, push_str};
        use crate::policy::Audience;
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
    }
}

/// Lines waiting for the writer.
struct Queue {
    /// Each record's unchained line followed by a newline (serde_json writes none inside
    /// a line). Appending to it allocates nothing once it has grown: the writer swaps it
    /// with its own emptied buffer. A channel of one buffer per line cost an allocation per
    /// signature, freed on the writer's thread under the signing thread's malloc arena lock.
    lines: Vec<u8>,
    /// Every handle is gone: the writer writes what is left and stops.
    closed: bool,
    /// The writer is waiting for lines and must be woken.
    writer_idle: bool,
    /// Lines queued since the log was opened: a line's number is the count with it.
    queued: u64,
}

/// What the handles and the writer thread share.
struct Shared {
    queue: Mutex<Queue>,
    /// Wakes the idle writer when lines arrive or the last handle goes.
    arrived: Condvar,
    /// Lines written to the file so far (numbered as `Queue::queued` counts them).
    written: AtomicU64,
    /// Wakes records waiting for room in a full queue or for their line to be written:
    /// the writer took or wrote lines, failed, or stopped.
    progress: Notify,
    /// False while the log cannot be written (read-only or full disk): signing stops.
    healthy: AtomicBool,
    /// The `ts` of the last record the log held when opened.
    last_ts: Option<i64>,
}

/// Most bytes of lines queued for the writer (about 16k lines); beyond it records wait.
const MAX_QUEUED: usize = 4 << 20;

impl Shared {
    fn new(lines: Vec<u8>, last_ts: Option<i64>) -> Shared {
        Shared {
            queue: Mutex::new(Queue {
                lines,
                closed: false,
                writer_idle: false,
                queued: 0,
            }),
            arrived: Condvar::new(),
            written: AtomicU64::new(0),
            progress: Notify::new(),
            healthy: AtomicBool::new(true),
            last_ts,
        }
    }

    fn queue(&self) -> MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `record`: its line's number, `Ok(None)` when the queue is full, `Err` when
    /// the writer has stopped.
    fn push(&self, record: &Record<'_>) -> Result<Option<u64>, ()> {
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
        let wake = std::mem::take(&mut queue.writer_idle);
        drop(queue);
        if wake {
            self.arrived.notify_one();
        }
        Ok(Some(line))
    }

    /// Moves the queued lines into the empty `into` and wakes records waiting for room.
    /// Returns the number of the last line taken, and whether any handle is left.
    fn take(&self, into: &mut Vec<u8>) -> (u64, bool) {
        let taken = {
            let mut queue = self.queue();
            std::mem::swap(&mut queue.lines, into);
            (queue.queued, !queue.closed)
        };
        self.progress.notify_waiters();
        taken
    }
}

/// Marks the log unhealthy and closed when the writer thread ends, however it ends: records
/// are then refused at once instead of piling up (or waiting for room) with nobody to
/// write them.
struct WriterStopped<'a>(&'a Shared);

impl Drop for WriterStopped<'_> {
    fn drop(&mut self) {
        self.0.healthy.store(false, Ordering::Relaxed);
        self.0.queue().closed = true;
        self.0.progress.notify_waiters();
    }
}

/// Closes the queue when the last [`Audit`] handle goes, so the writer finishes.
struct Handles(Arc<Shared>);

impl Drop for Handles {
    fn drop(&mut self) {
        self.0.queue().closed = true;
        self.0.arrived.notify_one();
    }
}

/// A queued line, for [`Audit::written`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Line(u64);

/// A handle to the audit log; cheap to clone.
#[derive(Clone)]
pub struct Audit(Option<Arc<Handles>>);

/// Waits for the writer thread to flush everything and stop.
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
    /// Opens (creating, 0600) `path` for appending and starts the writer thread.
    pub fn open(path: &Path) -> Result<(Audit, AuditWriter), String> {
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
        let (mut prev, last_ts) = last_line(&mut file)
            .map_err(|e| format!("cannot read audit log {}: {e}", path.display()))?;
        let shared = Arc::new(Shared::new(Vec::with_capacity(64 * 1024), last_ts));
        let shown = path.display().to_string();
        let writer = shared.clone();
        let handle = std::thread::Builder::new()
            .name("keyturn-audit".into())
            .spawn(move || {
                let _stopped = WriterStopped(&writer);
                write_loop(&writer, &mut file, &mut prev, &shown);
            })
            .map_err(|e| format!("cannot start the audit writer: {e}"))?;
        Ok((
            Audit(Some(Arc::new(Handles(shared)))),
            AuditWriter(Some(handle)),
        ))
    }

    fn shared(&self) -> Option<&Shared> {
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

    /// Queues `record`'s line, waiting only if the writer is far behind, and returns it for
    /// [`Self::written`]. Fails when the log cannot be written (read-only or full disk) or
    /// the writer has stopped: the caller must then refuse to sign.
    pub async fn queue(&self, record: Record<'_>) -> Result<Line, ()> {
        let Some(shared) = self.shared() else {
            return Ok(Line(0));
        };
        loop {
            if !shared.healthy.load(Ordering::Relaxed) {
                return Err(());
            }
            if let Some(line) = shared.push(&record)? {
                return Ok(Line(line));
            }
            // Full: wait for the writer to take the queue. Registered before trying again,
            // so a take between the two is not missed.
            let progress = shared.progress.notified();
            tokio::pin!(progress);
            progress.as_mut().enable();
            if let Some(line) = shared.push(&record)? {
                return Ok(Line(line));
            }
            progress.await;
        }
    }

    /// Waits until `line` and every line queued before it are written to the file. Fails
    /// when the log cannot be written or the writer has stopped: the caller must then
    /// withhold the token (its line may still reach the file later: the log may name a
    /// token that never left, never the reverse).
    pub async fn written(&self, line: Line) -> Result<(), ()> {
        let Some(shared) = self.shared() else {
            return Ok(());
        };
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
            progress.await;
        }
    }

    /// Records a lifecycle event without waiting (from maintenance tasks).
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
        };
        if let Some(shared) = self.shared() {
            if !matches!(shared.push(&record), Ok(Some(_))) {
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
/// everything written in this window instead of one per batch: on this kind of machine
/// (a VM's virtio disk) each costs a trap to the hypervisor and a journal commit, and one per
/// batch took a fifth of the daemon's CPU at 17k signatures/s (see BENCHMARKS.md).
const SYNC_EVERY: Duration = Duration::from_millis(5);

/// The writer thread: takes the queued lines, chains them, appends them with one write,
/// tells the records waiting for them, and fdatasyncs at most every [`SYNC_EVERY`] (once
/// that long has passed since the last sync, and at exit). When the disk refuses
/// (read-only, full), it keeps the bytes not yet written, resumes a partial write where it
/// stopped (so no line is torn or doubled), marks the log unhealthy so signing stops, and
/// retries until the disk takes the bytes again.
fn write_loop(shared: &Shared, file: &mut File, prev: &mut String, shown: &str) {
    let mut taken: Vec<u8> = Vec::with_capacity(64 * 1024);
    let mut pending: Vec<u8> = Vec::with_capacity(64 * 1024);
    // The number of the last line in `pending`, and how many of its bytes are in the file.
    let mut pending_through = 0;
    let mut written = 0usize;
    let mut open = true;
    let mut retries_at_exit = 0;
    let mut synced_at = Instant::now();
    let mut unsynced = false;
    loop {
        if pending.is_empty() {
            let mut queue = shared.queue();
            // Wait for lines; with lines written but not synced, only until the sync is due.
            while queue.lines.is_empty() && !queue.closed {
                let due = SYNC_EVERY.saturating_sub(synced_at.elapsed());
                if unsynced && due.is_zero() {
                    break;
                }
                queue.writer_idle = true;
                queue = if unsynced {
                    match shared.arrived.wait_timeout(queue, due) {
                        Ok((queue, _)) => queue,
                        Err(poisoned) => poisoned.into_inner().0,
                    }
                } else {
                    shared
                        .arrived
                        .wait(queue)
                        .unwrap_or_else(PoisonError::into_inner)
                };
            }
            queue.writer_idle = false;
            if queue.lines.is_empty() && queue.closed && !unsynced {
                return; // closed, and everything is on disk
            }
        }
        if pending.len() < MAX_PENDING {
            let (through, still_open) = shared.take(&mut taken);
            open = still_open;
            let mut start = 0;
            for end in memchr::memchr_iter(b'\n', &taken) {
                append(&mut pending, &taken[start..end], prev);
                start = end + 1;
            }
            taken.clear();
            pending_through = through;
        }
        let outcome = write_from(file, &pending, &mut written).and_then(|()| {
            if !pending.is_empty() {
                shared.written.store(pending_through, Ordering::Release);
                shared.progress.notify_waiters();
                unsynced = true;
            }
            if unsynced && (!open || synced_at.elapsed() >= SYNC_EVERY) {
                file.sync_data()?;
                synced_at = Instant::now();
                unsynced = false;
            }
            Ok(())
        });
        match outcome {
            Ok(()) => {
                pending.clear();
                written = 0;
                if !shared.healthy.swap(true, Ordering::Relaxed) {
                    tracing::info!(
                        path = shown,
                        "the audit log is writable again; signing resumes"
                    );
                }
            }
            Err(e) => {
                if shared.healthy.swap(false, Ordering::Relaxed) {
                    tracing::error!(path = shown, error = %e, "cannot write the audit log; refusing to sign until it is writable");
                }
                // Records waiting for room or for their line see the log is unhealthy and
                // give up; with the pending bytes at their limit nothing is taken, so learn
                // of a stop here.
                shared.progress.notify_waiters();
                open = open && !shared.queue().closed;
                if !open {
                    retries_at_exit += 1;
                    if retries_at_exit > RETRIES_AT_EXIT {
                        tracing::error!(
                            path = shown,
                            bytes = pending.len() - written,
                            "audit lines lost at exit: the log stayed unwritable"
                        );
                        return;
                    }
                }
                std::thread::sleep(RETRY);
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

/// What [`verify`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Lines checked.
    pub lines: u64,
    /// Lines that are not records (numbered from 1): writes cut short by a crash or a power
    /// loss, ended at the next start. What they held is lost; the chain still covers them.
    pub torn: Vec<u64>,
}

/// Checks the chain of an audit log: the first broken line, or what was checked. A line
/// that is not JSON is reported as torn and the chain continues over its bytes, as the
/// daemon continued it: the next line must still carry its hash, so garbage put in later
/// breaks the chain at the line after it.
pub fn verify(path: &Path) -> Result<Verified, String> {
    let file = File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    let mut prev = GENESIS.to_owned();
    let mut found = Verified {
        lines: 0,
        torn: Vec::new(),
    };
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        found.lines += 1;
        let n = found.lines;
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
        prev = hex_sha256(&line);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Audience;

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
        assert_eq!(verify(&path).map(|v| (v.lines, v.torn.len())), Ok((10, 0)));

        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();

        let mut removed = lines.clone();
        removed.remove(3);
        std::fs::write(&path, removed.join("\n") + "\n").unwrap();
        assert!(verify(&path).unwrap_err().contains("line 4"));

        let mut edited = lines.clone();
        let changed = edited[6].replace("alice", "mallory");
        edited[6] = &changed;
        std::fs::write(&path, edited.join("\n") + "\n").unwrap();
        assert!(verify(&path).unwrap_err().contains("line 8"));
    }

    /// A record waits for room in a full queue, then until the writer has written its
    /// line (taken is not enough), and gives up if the log becomes unwritable first.
    #[tokio::test]
    async fn a_record_waits_for_room_then_for_its_line_to_be_written() {
        let shared = Arc::new(Shared::new(vec![b'x'; MAX_QUEUED], None));
        let audit = Audit(Some(Arc::new(Handles(shared.clone()))));
        let aud = AUD;
        let mut queued = tokio_test::task::spawn(audit.queue(record(1, "j", &aud)));
        assert!(queued.poll().is_pending(), "a full queue must hold the record");
        assert!(queued.poll().is_pending());
        let mut taken = Vec::new();
        assert_eq!(shared.take(&mut taken), (0, true));
        assert_eq!(taken.len(), MAX_QUEUED);
        assert!(
            queued.is_woken(),
            "taking the queue must wake the waiting record"
        );
        let std::task::Poll::Ready(Ok(line)) = queued.poll() else {
            panic!("queued once there is room");
        };
        drop(queued);

        let mut written = tokio_test::task::spawn(audit.written(line));
        assert!(written.poll().is_pending());
        let mut taken = Vec::new();
        assert_eq!(shared.take(&mut taken), (1, true));
        assert_eq!(
            taken,
            [unchained(&record(1, "j", &aud)), b"\n".to_vec()].concat()
        );
        assert!(written.poll().is_pending(), "taken, not yet written");
        shared.written.store(1, Ordering::Release);
        shared.progress.notify_waiters();
        assert!(written.is_woken());
        assert_eq!(written.poll(), std::task::Poll::Ready(Ok(())));
        drop(written);

        // The next line: the disk refuses it.
        let std::task::Poll::Ready(Ok(line)) =
            tokio_test::task::spawn(audit.queue(record(2, "k", &aud))).poll()
        else {
            panic!("room in the queue");
        };
        let mut written = tokio_test::task::spawn(audit.written(line));
        assert!(written.poll().is_pending());
        shared.healthy.store(false, Ordering::Relaxed);
        shared.progress.notify_waiters();
        assert!(written.is_woken());
        assert_eq!(written.poll(), std::task::Poll::Ready(Err(())));
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
        assert_eq!(
            verify(&path),
            Ok(Verified {
                lines: 6,
                torn: vec![4]
            })
        );
        let edited = text.replace(r#""ts":4,"#, r#""ts":8,"#);
        std::fs::write(&path, &edited).unwrap();
        assert!(verify(&path).unwrap_err().contains("line 6"));
        // Garbage in place of a record breaks the chain at the next line.
        let garbage = text.replacen(lines[1], "garbage", 1);
        std::fs::write(&path, garbage).unwrap();
        assert!(verify(&path).unwrap_err().contains("line 3"));
    }

    #[tokio::test]
    async fn records_are_refused_once_the_writer_has_stopped() {
        let dir = tempfile::tempdir().unwrap();
        let (audit, writer) = Audit::open(&dir.path().join("audit.log")).unwrap();
        let shared = audit.0.as_ref().unwrap().0.clone();
        drop(WriterStopped(&shared));
        assert!(!audit.is_healthy());
        let aud = AUD;
        assert_eq!(audit.record(record(1, "j", &aud)).await, Err(()));
        drop(audit);
        writer.finish();
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

//! Token status lists (draft-ietf-oauth-status-list): each token of a key set with
//! `status_list` carries an index into a list of 2-bit statuses that keyturn signs and
//! serves; an admin changes a token's status in the list, and verifiers that fetch it
//! refuse the token.
//!
//! The lists live in the key set's backend state store, beside its lifecycle document and
//! sealed with the same MAC, under the name [`document_name`]. Every replica reads them
//! there (at each poll), so all serve the same statuses. Signing writes nothing per token:
//! a replica reserves a block of indexes with one write ([`doc`]) and hands them out from
//! memory, and reserves the next one in the background before they run out, so that a
//! token waits for that write only when a burst outruns it.

pub mod bits;
pub mod doc;

use crate::config::timing::Timing;
use crate::config::StatusListConfig;
use crate::core::lifecycle::LifecycleError;
use crate::core::published::Served;
use arc_swap::ArcSwap;
use doc::{index_in, Change, Lists, Refused, Status, BLOCK_SIZE};
use keyturn_backend::{BackendError, KeyBackend};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// The name of a key set's status lists in its backend's state store. A key set's own
/// name starts with a letter or digit, so no key set's document can take this place.
pub fn document_name(keyset: &str) -> String {
    format!("_status-{keyset}")
}

/// How long after its tokens expired a block's cleared entries must be served before its
/// indexes are handed out again: a verifier's cached copy is `ttl` old at most, and a
/// replica serves what another wrote within the sync delay.
fn cooling(config: &StatusListConfig, timing: &Timing) -> i64 {
    config.ttl + timing.clock_skew + timing.sync_delay
}

/// The figures `keyturn check-config` prints for a key set's status lists.
pub fn describe(config: &StatusListConfig, timing: &Timing) -> String {
    use crate::config::human;
    // A block is out of use for its lease, its tokens' retention and the cooling.
    let reuse = doc::LEASE + timing.retention() + cooling(config, timing);
    format!(
        "status lists of {} tokens each ({} bits, {} KiB unpacked), served for ttl {} and \
         valid {}; an index is handed out again {} after its block was reserved, so one list \
         carries about {} tokens/s (up to {} lists)",
        doc::LIST_SIZE,
        doc::BITS,
        u64::from(doc::LIST_SIZE) * u64::from(doc::BITS) / 8 / 1024,
        human(config.ttl),
        human(config.validity),
        human(reuse),
        i64::from(doc::LIST_SIZE) / reuse.max(1),
        doc::MAX_LISTS,
    )
}

/// Writes tried before giving up on replicas that keep writing in between.
const ATTEMPTS: usize = 8;

/// What a write of the stored lists is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// A block for this replica's tokens: on whatever lists it last read (a conflict
    /// shows a newer one), whatever their size.
    Reservation,
    /// A status change: checked against the stored lists as they are now (an old view
    /// lacks the blocks other replicas reserved since), and refused if it would make them
    /// larger than `max_document`.
    Change,
}

/// Indexes left in the held blocks below which the next block is reserved in the
/// background. Half a block: at 100,000 tokens a second that leaves 20 ms for the write,
/// and a replica that signs fewer than this many tokens in a lease holds one block at a time.
const RESERVE_AHEAD: usize = BLOCK_SIZE as usize / 2;

/// A block whose lease ends within this many seconds counts as used up: the next one is
/// reserved ahead of it, in the background.
const LEASE_AHEAD: i64 = 5;

/// Why a status list operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// The request cannot be done (unknown list, index not in use, revoked is final, ...).
    #[error(transparent)]
    Refused(#[from] Refused),
    /// A backend call failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The stored lists are not keyturn's, or do not read.
    #[error(
        "the stored status lists of key set {keyset:?} cannot be used ({how}); they were \
         written outside keyturn, under another key-encryption, transit or KMS key, or by a \
         newer keyturn. Statuses are not changed and no token is signed with them until they \
         are restored from a backup taken from keyturn's own backend"
    )]
    Untrusted {
        /// The key set.
        keyset: String,
        /// What is wrong.
        how: String,
    },
    /// Replicas kept writing in between.
    #[error("too many concurrent writers on the status lists of key set {0:?}; try again")]
    Contention(String),
    /// The system's random generator failed: no index is drawn without it.
    #[error("the system's random number generator failed")]
    NoRandomness,
}

impl StatusError {
    /// Whether asking again later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            StatusError::Backend(e) => e.is_retryable(),
            StatusError::Contention(_) => true,
            _ => false,
        }
    }
}

/// The lists as read or written last, with their state-store version.
struct Loaded {
    lists: Lists,
    version: Option<u64>,
}

/// A list as the public listener serves it: the signed Status List Token.
#[derive(Debug, Clone)]
pub struct ServedList {
    /// The list's number.
    pub list: u32,
    /// The token, with its headers.
    pub served: Served,
    /// The list's `lst` it was built from.
    pub lst: String,
    /// The key that signed it.
    pub kid: String,
    /// When it must be built again (its `exp` minus its `ttl`: a verifier may cache it for
    /// `ttl` and must find it valid all that time).
    pub refresh_at: i64,
}

/// A block this replica reserved: its indexes not yet handed out, in random order.
struct Held {
    list: u32,
    uri: Arc<str>,
    until: i64,
    order: Vec<u32>,
    block: u32,
}

/// One token's place in a list: what its `status` claim holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// The list's number.
    pub list: u32,
    /// The list's URI.
    pub uri: Arc<str>,
    /// The index.
    pub idx: u64,
}

/// A key set's status lists in the daemon.
pub struct StatusLists {
    keyset: String,
    name: String,
    /// The key set's `status_list` settings.
    pub config: StatusListConfig,
    timing: Timing,
    backend: Arc<dyn KeyBackend>,
    loaded: tokio::sync::Mutex<Loaded>,
    // The lists now, for serving: replaced whole at each change.
    view: ArcSwap<Lists>,
    held: Mutex<Vec<Held>>,
    served: ArcSwap<Vec<ServedList>>,
    // Since when a served list is known to be older than the list (i64::MAX: none is).
    unsigned_since: AtomicI64,
    changed: Notify,
    /// Held while the served lists are built (one build at a time).
    pub building: tokio::sync::Mutex<()>,
    // Held while a block is reserved: the tasks that ran out of indexes together wait for
    // one reservation instead of making one each.
    reserving: tokio::sync::Mutex<()>,
    // Set while a reservation ahead runs in the background.
    ahead: AtomicBool,
    // The most bytes a status change may make the stored lists take (doc::MAX_DOCUMENT;
    // lower in tests).
    max_document: usize,
}

impl StatusLists {
    /// Reads key set `keyset`'s lists (none yet is an empty document), which must have
    /// been written at least `writes` times (what the last run knew of).
    pub async fn open(
        keyset: &str,
        config: StatusListConfig,
        timing: Timing,
        backend: Arc<dyn KeyBackend>,
        writes: u64,
    ) -> Result<Self, StatusError> {
        let lists = StatusLists {
            keyset: keyset.to_owned(),
            name: document_name(keyset),
            config,
            timing,
            backend,
            loaded: tokio::sync::Mutex::new(Loaded {
                lists: Lists {
                    writes,
                    ..Lists::default()
                },
                version: None,
            }),
            view: ArcSwap::from_pointee(Lists::default()),
            held: Mutex::new(Vec::new()),
            served: ArcSwap::from_pointee(Vec::new()),
            unsigned_since: AtomicI64::new(i64::MAX),
            changed: Notify::new(),
            building: tokio::sync::Mutex::new(()),
            reserving: tokio::sync::Mutex::new(()),
            ahead: AtomicBool::new(false),
            max_document: doc::MAX_DOCUMENT,
        };
        lists.refresh().await?;
        Ok(lists)
    }

    /// The lists now.
    pub fn view(&self) -> Arc<Lists> {
        self.view.load_full()
    }

    /// The lists as served now.
    pub fn served(&self) -> arc_swap::Guard<Arc<Vec<ServedList>>> {
        self.served.load()
    }

    /// Replaces the served lists (built by the server, which signs them from the lists
    /// as they are now).
    pub fn set_served(&self, served: Vec<ServedList>) {
        self.served.store(Arc::new(served));
        self.unsigned_since.store(i64::MAX, Ordering::Relaxed);
    }

    /// Notes at `now` that a served list is older than the list (a change not signed
    /// yet), and returns since when one has been, until the lists are signed again.
    pub fn note_unsigned(&self, now: i64) -> i64 {
        self.unsigned_since
            .fetch_min(now, Ordering::Relaxed)
            .min(now)
    }

    /// Resolves when the lists change after this call (a write here, or one read).
    pub fn changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.changed.notified()
    }

    /// Re-reads the stored lists (another replica's writes); returns whether they changed.
    pub async fn refresh(&self) -> Result<bool, StatusError> {
        let mut loaded = self.loaded.lock().await;
        self.reload(&mut loaded).await
    }

    async fn reload(&self, loaded: &mut Loaded) -> Result<bool, StatusError> {
        let untrusted = |how: String| StatusError::Untrusted {
            keyset: self.keyset.clone(),
            how,
        };
        let Some(blob) = self.backend.load_state(&self.name).await? else {
            if loaded.version.is_some() || loaded.lists.writes > 0 {
                return Err(untrusted(format!(
                    "they are gone from the state store, where they were written {} times",
                    loaded.lists.writes
                )));
            }
            return Ok(false);
        };
        if Some(blob.version) == loaded.version {
            return Ok(false);
        }
        let document = crate::core::lifecycle::open_sealed(&*self.backend, &self.name, &blob.data)
            .await
            .map_err(|e| match e {
                Ok(backend) => StatusError::Backend(backend),
                Err(how) => untrusted(how),
            })?;
        let lists = Lists::from_bytes(&document).map_err(untrusted)?;
        // Writes are counted and the count only grows: a sealed copy from before a write
        // (a backup put back by whoever can write the state store) would undo a status
        // change or a reservation (an index would be handed out twice). Two versions with
        // one count are a copy of one of them.
        let replayed = lists.writes < loaded.lists.writes
            || (lists.writes == loaded.lists.writes && loaded.version.is_some());
        if replayed {
            return Err(untrusted(format!(
                "they were written {} times where {} writes were seen: an older copy replaced them",
                lists.writes, loaded.lists.writes
            )));
        }
        loaded.lists = lists;
        loaded.version = Some(blob.version);
        self.publish(loaded);
        Ok(true)
    }

    fn publish(&self, loaded: &Loaded) {
        self.view.store(Arc::new(loaded.lists.clone()));
        self.changed.notify_waiters();
    }

    fn cooling(&self) -> i64 {
        cooling(&self.config, &self.timing)
    }

    /// Applies `change` to the stored lists and writes them (with check-and-set, again on
    /// the newest document if another replica wrote first), after clearing expired
    /// blocks. `change` returns its result and whether it changed anything; nothing is
    /// written if neither it nor the clearing did. See [`Write`] for what `kind` adds.
    async fn write<T>(
        &self,
        now: i64,
        kind: Write,
        mut change: impl FnMut(&mut Lists) -> Result<(T, bool), Refused>,
    ) -> Result<T, StatusError> {
        let mut loaded = self.loaded.lock().await;
        if kind == Write::Change {
            self.reload(&mut loaded).await?;
        }
        for _ in 0..ATTEMPTS {
            let mut next = loaded.lists.clone();
            let swept = next.sweep(now, self.cooling());
            let (out, changed) = change(&mut next)?;
            if !swept && !changed {
                return Ok(out);
            }
            next.writes += 1;
            let sealed = crate::core::lifecycle::seal(&*self.backend, &self.name, &next.to_bytes())
                .await
                .map_err(|e| match e {
                    LifecycleError::Backend(e) => StatusError::Backend(e),
                    e => StatusError::Untrusted {
                        keyset: self.keyset.clone(),
                        how: e.to_string(),
                    },
                })?;
            if kind == Write::Change && sealed.len() > self.max_document {
                return Err(Refused::TooLarge(sealed.len()).into());
            }
            match self
                .backend
                .store_state(&self.name, &sealed, loaded.version)
                .await
            {
                Ok(version) => {
                    loaded.lists = next;
                    loaded.version = Some(version);
                    self.publish(&loaded);
                    return Ok(out);
                }
                Err(BackendError::Conflict) => {
                    self.reload(&mut loaded).await?;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(StatusError::Contention(self.keyset.clone()))
    }

    /// `n` indexes for tokens signed at `now`, each drawn at random among those of the
    /// blocks this replica holds; a block is reserved (one write) when they run out, and in
    /// the background when fewer than [`RESERVE_AHEAD`] are left, or the lease of those
    /// left ends within [`LEASE_AHEAD`].
    pub async fn take(self: &Arc<Self>, now: i64, n: usize) -> Result<Vec<Slot>, StatusError> {
        let mut slots = Vec::with_capacity(n);
        loop {
            let left_soon = self.take_held(now, n, &mut slots);
            if slots.len() == n {
                if left_soon < RESERVE_AHEAD {
                    self.reserve_ahead(now);
                }
                return Ok(slots);
            }
            self.reserve(now, 1).await?;
        }
    }

    /// Takes up to `n` indexes into `out`, under one lock; returns how many the held
    /// blocks have left whose lease does not end within [`LEASE_AHEAD`].
    fn take_held(&self, now: i64, n: usize, out: &mut Vec<Slot>) -> usize {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|h| h.until > now && !h.order.is_empty());
        for h in held.iter_mut() {
            while out.len() < n {
                let Some(k) = h.order.pop() else { break };
                out.push(Slot {
                    list: h.list,
                    uri: h.uri.clone(),
                    idx: index_in(h.block, k),
                });
            }
        }
        held.iter()
            .filter(|h| h.until > now + LEASE_AHEAD)
            .map(|h| h.order.len())
            .sum()
    }

    /// Indexes the held blocks can still hand out at `at`.
    fn left(&self, at: i64) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.iter()
            .filter(|h| h.until > at)
            .map(|h| h.order.len())
            .sum()
    }

    /// Starts a reservation in the background, unless one is under way. A failure there
    /// is only logged: the token that finds no index left reserves (and reports) itself.
    fn reserve_ahead(self: &Arc<Self>, now: i64) {
        if self.ahead.swap(true, Ordering::AcqRel) {
            return;
        }
        let lists = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = lists.reserve(now, RESERVE_AHEAD).await {
                tracing::debug!(keyset = %lists.keyset, error = %e, "status list block not reserved ahead");
            }
            lists.ahead.store(false, Ordering::Release);
        });
    }

    /// Reserves a block, unless the held ones (their leases not ending within
    /// [`LEASE_AHEAD`] for a reservation ahead) have `below` indexes left, once any
    /// reservation under way is done.
    async fn reserve(&self, now: i64, below: usize) -> Result<(), StatusError> {
        let _one = self.reserving.lock().await;
        let soon = if below > 1 { now + LEASE_AHEAD } else { now };
        if self.left(soon) >= below {
            return Ok(());
        }
        let mut random = Random::new(BLOCK_SIZE as usize + ATTEMPTS)?;
        let retention = self.timing.retention();
        let (list, block) = self
            .write(now, Write::Reservation, |lists| {
                let picked = lists.reserve(now, retention, &mut |n| random.below(n))?;
                Ok((picked, true))
            })
            .await?;
        // A random order of the block's indexes: each taken is drawn among those left.
        let mut order: Vec<u32> = (0..BLOCK_SIZE).collect();
        for i in (1..order.len()).rev() {
            let j = random.below(i as u32 + 1) as usize;
            order.swap(i, j);
        }
        let uri: Arc<str> = self.config.list_uri(list).into();
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Held {
                list,
                uri,
                until: now + doc::LEASE,
                order,
                block,
            });
        tracing::debug!(keyset = %self.keyset, list, block, "status list block reserved");
        Ok(())
    }

    /// Sets index `idx` of list `list` to `status` at `now` for client `by`; for the
    /// token `issued` then, when known (see [`Lists::status`]). Returns the change (None:
    /// the index already had it).
    #[allow(clippy::too_many_arguments)]
    pub async fn set(
        &self,
        list: u32,
        idx: u64,
        status: Status,
        now: i64,
        issued: Option<i64>,
        by: &str,
        jti: Option<&str>,
    ) -> Result<Option<Change>, StatusError> {
        let issued = issued.map(|iat| (iat, self.timing.clock_skew));
        self.write(now, Write::Change, |lists| {
            let change = lists.set(list, idx, status, now, issued, by, jti)?;
            let changed = change.is_some();
            Ok((change, changed))
        })
        .await
    }

    /// The changes the stored lists remember, oldest first (for audit lines that a crash
    /// may have left unwritten).
    pub fn changes(&self) -> Vec<Change> {
        self.view().changes.clone()
    }

    /// The indexes left to hand out in the blocks this replica holds.
    #[cfg(test)]
    pub(crate) fn held_indexes(&self) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.iter().map(|h| h.order.len()).sum()
    }
}

/// A status list failure as a lifecycle one: a backend that did not answer is retried,
/// lists that cannot be trusted stop the key set like a lifecycle document that cannot.
impl From<StatusError> for LifecycleError {
    fn from(e: StatusError) -> Self {
        match e {
            StatusError::Backend(e) => LifecycleError::Backend(e),
            StatusError::Contention(keyset) => LifecycleError::Contention(keyset),
            e @ StatusError::Untrusted { .. } => LifecycleError::StatusLists(e.to_string()),
            e => LifecycleError::Refused(e.to_string()),
        }
    }
}

/// Random numbers from the system's CSPRNG, drawn once for a reservation.
struct Random {
    bytes: Vec<u8>,
    next: usize,
}

impl Random {
    /// Enough for `draws` numbers.
    fn new(draws: usize) -> Result<Self, StatusError> {
        let mut bytes = vec![0u8; draws * 8];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| StatusError::NoRandomness)?;
        Ok(Random { bytes, next: 0 })
    }

    /// A number below `n` (n > 0), uniform but for a bias below 2^-32. Past the numbers
    /// drawn, 0: a valid pick, and never reached (the caller draws enough).
    fn below(&mut self, n: u32) -> u32 {
        let Some(b) = self.bytes.get(self.next..self.next + 8) else {
            return 0;
        };
        self.next += 8;
        let x = u64::from_le_bytes(b.try_into().unwrap_or_default());
        (x % u64::from(n.max(1))) as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::Rigged;
    use keyturn_backend::memory::MemoryBackend;

    const T0: i64 = 1_700_000_000;

    fn settings() -> StatusListConfig {
        StatusListConfig {
            ttl: 300,
            validity: 3600,
            uri: "https://a.example/keysets/k/statuslists".into(),
        }
    }

    async fn open(backend: &Arc<MemoryBackend>) -> Arc<StatusLists> {
        let timing = Timing::new(900, 300, 60, true);
        Arc::new(
            StatusLists::open("k", settings(), timing, backend.clone(), 0)
                .await
                .unwrap(),
        )
    }

    async fn rigged(backend: &Arc<Rigged>) -> Arc<StatusLists> {
        let timing = Timing::new(600, 300, 0, false);
        Arc::new(
            StatusLists::open("k", settings(), timing, backend.clone(), 0)
                .await
                .unwrap(),
        )
    }

    /// Writes of the stored lists so far (each one bumps the version).
    async fn writes(backend: &Rigged) -> u64 {
        let stored = backend.load_state(&document_name("k")).await.unwrap();
        stored.map_or(0, |s| s.version)
    }

    #[tokio::test]
    async fn tokens_that_wait_for_a_block_share_its_write() {
        let backend = Arc::new(Rigged {
            slow_writes: AtomicBool::new(true),
            ..Rigged::default()
        });
        let lists = rigged(&backend).await;
        let mut takes = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let lists = lists.clone();
            takes.spawn(async move { lists.take(T0, 1).await.unwrap() });
        }
        let mut idx = std::collections::HashSet::new();
        for slots in takes.join_all().await {
            idx.extend(slots.iter().map(|s| s.idx));
        }
        assert_eq!(idx.len(), 8);
        assert_eq!(
            writes(&backend).await,
            1,
            "one block reserved, by one write"
        );
        assert_eq!(lists.view().lists[0].blocks.len(), 1);
    }

    #[tokio::test]
    async fn a_block_hands_out_each_of_its_indexes_once_in_a_random_order() {
        let backend = Arc::new(Rigged::default());
        let lists = rigged(&backend).await;
        let slots = lists.take(T0, BLOCK_SIZE as usize).await.unwrap();
        let idx: Vec<u64> = slots.iter().map(|s| s.idx).collect();
        assert_eq!(
            idx.iter().collect::<std::collections::HashSet<_>>().len(),
            idx.len()
        );
        let block = doc::block_of(idx[0]);
        assert!(idx.iter().all(|&i| doc::block_of(i) == block));
        assert!(idx.windows(2).any(|w| w[0] > w[1]), "not in order");
        assert!(idx.windows(2).any(|w| w[0] < w[1]), "not in reverse order");
        assert!(slots.iter().all(|s| *s.uri == *settings().list_uri(1)));
    }

    #[tokio::test]
    async fn the_next_block_is_reserved_before_the_held_ones_run_out() {
        let backend = Arc::new(Rigged::default());
        let lists = rigged(&backend).await;
        lists
            .take(T0, BLOCK_SIZE as usize - RESERVE_AHEAD)
            .await
            .unwrap();
        assert_eq!(writes(&backend).await, 1);
        assert_eq!(lists.left(T0), RESERVE_AHEAD, "no reservation ahead yet");

        // One more token leaves fewer than RESERVE_AHEAD: the next block is reserved in
        // the background (nothing else writes here), and this token does not wait for it.
        let changed = lists.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        lists.take(T0, 1).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), changed)
            .await
            .expect("a block reserved ahead");
        drop(lists.reserving.lock().await);
        assert_eq!(writes(&backend).await, 2);
        assert_eq!(lists.left(T0), RESERVE_AHEAD - 1 + BLOCK_SIZE as usize);

        // The rest of the first block and the start of the next take no write.
        lists.take(T0, RESERVE_AHEAD).await.unwrap();
        assert_eq!(writes(&backend).await, 2);
        assert_eq!(lists.view().lists[0].blocks.len(), 2);

        // A lease about to end counts as used up: the next block comes ahead of it.
        let changed = lists.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        lists.take(T0 + doc::LEASE - LEASE_AHEAD, 1).await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), changed)
            .await
            .expect("a block reserved ahead of the lease's end");
        drop(lists.reserving.lock().await);
        assert_eq!(writes(&backend).await, 3);
    }

    /// Two replicas on one backend: each reserves its own block, so no index is handed
    /// out twice; a change made on one is read by the other.
    #[tokio::test]
    async fn replicas_hand_out_distinct_indexes_and_read_each_others_changes() {
        let backend = Arc::new(MemoryBackend::new());
        let (a, b) = (open(&backend).await, open(&backend).await);
        let from_a = a.take(T0, 100).await.unwrap();
        let from_b = b.take(T0, 100).await.unwrap();
        let all: std::collections::HashSet<u64> =
            from_a.iter().chain(&from_b).map(|s| s.idx).collect();
        assert_eq!(all.len(), 200);
        assert_ne!(doc::block_of(from_a[0].idx), doc::block_of(from_b[0].idx));
        // Drawn at random: not the block's indexes in order.
        let in_order: Vec<u64> = (0..100)
            .map(|k| index_in(doc::block_of(from_a[0].idx), k))
            .collect();
        assert_ne!(from_a.iter().map(|s| s.idx).collect::<Vec<_>>(), in_order);
        let idx = from_b[0].idx;
        let change = a
            .set(1, idx, Status::Revoked, T0, None, "ops", None)
            .await
            .unwrap();
        assert_eq!(change.unwrap().old, Status::Valid);
        assert!(b.refresh().await.unwrap());
        assert_eq!(b.view().status(1, idx, T0, None), Ok(Status::Revoked));
    }

    /// A status change that would make the stored lists too large for the state store
    /// is refused and changes nothing; reservations (signing) go on.
    #[tokio::test]
    async fn a_change_that_would_outgrow_the_state_store_is_refused() {
        let backend = Arc::new(MemoryBackend::new());
        let timing = Timing::new(900, 300, 60, true);
        let mut lists = StatusLists::open("k", settings(), timing, backend.clone(), 0)
            .await
            .unwrap();
        lists.max_document = 1;
        let lists = Arc::new(lists);
        let idx = lists.take(T0, 1).await.unwrap()[0].idx;
        let name = document_name("k");
        let before = backend.load_state(&name).await.unwrap().unwrap();
        let refused = lists
            .set(1, idx, Status::Revoked, T0, None, "ops", None)
            .await
            .unwrap_err();
        assert!(
            matches!(refused, StatusError::Refused(Refused::TooLarge(n)) if n > 1),
            "{refused}"
        );
        assert_eq!(backend.load_state(&name).await.unwrap().unwrap(), before);
        assert_eq!(lists.view().status(1, idx, T0, None), Ok(Status::Valid));
        lists.take(T0, BLOCK_SIZE as usize).await.unwrap();
    }

    /// Whoever can write the state store cannot change statuses: an edited document, and
    /// an older sealed copy put back (which would reinstate a revoked token), are refused.
    #[tokio::test]
    async fn edited_and_rolled_back_lists_are_refused() {
        let backend = Arc::new(MemoryBackend::new());
        let lists = open(&backend).await;
        let name = document_name("k");
        let idx = lists.take(T0, 1).await.unwrap()[0].idx;
        let before = backend.load_state(&name).await.unwrap().unwrap();
        lists
            .set(1, idx, Status::Revoked, T0, None, "ops", None)
            .await
            .unwrap();
        let after = backend.load_state(&name).await.unwrap().unwrap();

        let rolled_back = backend
            .store_state(&name, &before.data, Some(after.version))
            .await
            .unwrap();
        let err = lists.refresh().await.unwrap_err().to_string();
        assert!(err.contains("older copy"), "{err}");
        assert_eq!(lists.view().status(1, idx, T0, None), Ok(Status::Revoked));

        let edited = String::from_utf8(after.data.clone()).unwrap().replacen(
            "\\\"seq\\\":1",
            "\\\"seq\\\":9",
            1,
        );
        assert_ne!(edited.as_bytes(), after.data);
        backend
            .store_state(&name, edited.as_bytes(), Some(rolled_back))
            .await
            .unwrap();
        let err = lists.refresh().await.unwrap_err().to_string();
        assert!(err.contains("MAC does not match"), "{err}");
        // A new daemon refuses them from the start; and the older copy (written once, by
        // the reservation), once the last run recorded two writes, or no lists where it
        // recorded any.
        let timing = Timing::new(900, 300, 60, true);
        let opened = StatusLists::open("k", settings(), timing, backend.clone(), 0).await;
        assert!(matches!(opened, Err(StatusError::Untrusted { .. })));
        let current = backend.load_state(&name).await.unwrap().unwrap().version;
        backend
            .store_state(&name, &before.data, Some(current))
            .await
            .unwrap();
        for (writes, ok) in [(1, true), (2, false)] {
            let opened = StatusLists::open("k", settings(), timing, backend.clone(), writes).await;
            assert_eq!(opened.is_ok(), ok, "{writes}");
        }
        let gone = StatusLists::open("g", settings(), timing, backend.clone(), 1).await;
        assert!(matches!(gone, Err(StatusError::Untrusted { .. })));
    }
}

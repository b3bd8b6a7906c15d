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
use crate::core::published::Served;
use arc_swap::ArcSwap;
use doc::{index_in, Change, Lists, Refused, Status, BLOCK_SIZE};
use keyturn_backend::{BackendError, KeyBackend};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// The name of a key set's status lists in its backend's state store. A key set's own
/// name starts with a letter or digit, so no key set's document can take this place.
pub fn document_name(keyset: &str) -> String {
    format!("_status-{keyset}")
}

/// Writes tried before giving up on replicas that keep writing in between.
const ATTEMPTS: usize = 8;

/// Indexes left in the held blocks below which the next block is reserved in the
/// background. Half a block: at 100,000 tokens a second that leaves 20 ms for the write,
/// and a replica that signs fewer than this many tokens in a lease holds one block at a time.
const RESERVE_AHEAD: usize = BLOCK_SIZE as usize / 2;

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

/// What the lists are now, for serving: replaced whole at each change.
#[derive(Debug, Default)]
pub struct View {
    /// Counts the changes this daemon has seen (a served list built from an older one is
    /// rebuilt).
    pub generation: u64,
    /// The lists.
    pub lists: Lists,
}

/// A list as the public listener serves it: the signed Status List Token.
#[derive(Debug, Clone)]
pub struct ServedList {
    /// The list's number.
    pub list: u32,
    /// The token, with its headers.
    pub served: Served,
    /// The [`View::generation`] it was built from.
    pub generation: u64,
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
    view: ArcSwap<View>,
    held: Mutex<Vec<Held>>,
    /// Held while a block is reserved (one reservation at a time: the tasks that waited
    /// find its indexes and write nothing).
    reserving: tokio::sync::Mutex<()>,
    /// Set while a reservation ahead runs in the background.
    ahead: AtomicBool,
    served: ArcSwap<Vec<ServedList>>,
    changed: Notify,
    /// Held while the served lists are built (one build at a time).
    pub building: tokio::sync::Mutex<()>,
}

impl StatusLists {
    /// Reads key set `keyset`'s lists (none yet is an empty document).
    pub async fn open(
        keyset: &str,
        config: StatusListConfig,
        timing: Timing,
        backend: Arc<dyn KeyBackend>,
    ) -> Result<Self, StatusError> {
        let lists = StatusLists {
            keyset: keyset.to_owned(),
            name: document_name(keyset),
            config,
            timing,
            backend,
            loaded: tokio::sync::Mutex::new(Loaded {
                lists: Lists::default(),
                version: None,
            }),
            view: ArcSwap::from_pointee(View::default()),
            held: Mutex::new(Vec::new()),
            reserving: tokio::sync::Mutex::new(()),
            ahead: AtomicBool::new(false),
            served: ArcSwap::from_pointee(Vec::new()),
            changed: Notify::new(),
            building: tokio::sync::Mutex::new(()),
        };
        lists.refresh().await?;
        Ok(lists)
    }

    /// The lists now.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// The lists as served now.
    pub fn served(&self) -> arc_swap::Guard<Arc<Vec<ServedList>>> {
        self.served.load()
    }

    /// Replaces the served lists (built by the server, which signs them).
    pub fn set_served(&self, served: Vec<ServedList>) {
        self.served.store(Arc::new(served));
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
            if loaded.version.is_some() {
                return Err(untrusted("they were deleted while keyturn ran".into()));
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
        loaded.lists = lists;
        loaded.version = Some(blob.version);
        self.publish(loaded);
        Ok(true)
    }

    fn publish(&self, loaded: &Loaded) {
        let generation = self.view.load().generation + 1;
        self.view.store(Arc::new(View {
            generation,
            lists: loaded.lists.clone(),
        }));
        self.changed.notify_waiters();
    }

    /// How long after its tokens expired a block's cleared entries must be served before
    /// its indexes are handed out again: a verifier's cached copy is `ttl` old at most,
    /// and a replica serves what another wrote within the sync delay.
    fn cooling(&self) -> i64 {
        self.config.ttl + self.timing.clock_skew + self.timing.sync_delay
    }

    /// Applies `change` to the stored lists and writes them (with check-and-set, again on
    /// the newest document if another replica wrote first), after clearing expired
    /// blocks. `change` returns its result and whether it changed anything; nothing is
    /// written if neither it nor the clearing did.
    async fn write<T>(
        &self,
        now: i64,
        mut change: impl FnMut(&mut Lists) -> Result<(T, bool), Refused>,
    ) -> Result<T, StatusError> {
        let mut loaded = self.loaded.lock().await;
        for _ in 0..ATTEMPTS {
            let mut next = loaded.lists.clone();
            let swept = next.sweep(now, self.cooling());
            let (out, changed) = change(&mut next)?;
            if !swept && !changed {
                return Ok(out);
            }
            let sealed = crate::core::lifecycle::seal(&*self.backend, &self.name, &next.to_bytes())
                .await
                .map_err(|e| StatusError::Untrusted {
                    keyset: self.keyset.clone(),
                    how: e.to_string(),
                })?;
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
    /// the background when fewer than [`RESERVE_AHEAD`] are left.
    pub async fn take(self: &Arc<Self>, now: i64, n: usize) -> Result<Vec<Slot>, StatusError> {
        let mut slots = Vec::with_capacity(n);
        loop {
            let left = self.take_held(now, n, &mut slots);
            if slots.len() == n {
                if left < RESERVE_AHEAD {
                    self.reserve_ahead(now);
                }
                return Ok(slots);
            }
            self.reserve(now, 1).await?;
        }
    }

    /// Takes up to `n` indexes into `out`; returns how many the held blocks have left.
    fn take_held(&self, now: i64, n: usize, out: &mut Vec<Slot>) -> usize {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.retain(|h| h.until > now && !h.order.is_empty());
        for h in held.iter_mut() {
            while out.len() < n {
                let Some(k) = h.order.pop() else { break };
                out.push(Slot {
                    uri: h.uri.clone(),
                    idx: index_in(h.block, k),
                });
            }
        }
        held.iter().map(|h| h.order.len()).sum()
    }

    /// Indexes the held blocks can still hand out at `now`.
    fn left(&self, now: i64) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.iter()
            .filter(|h| h.until > now)
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

    /// Reserves a block, unless the held ones have `below` indexes left, once any
    /// reservation under way is done.
    async fn reserve(&self, now: i64, below: usize) -> Result<(), StatusError> {
        let _one = self.reserving.lock().await;
        if self.left(now) >= below {
            return Ok(());
        }
        let retention = self.timing.retention();
        let (list, block) = self
            .write(now, |lists| {
                let picked = lists.reserve(now, retention, &mut |n| random_below(n))?;
                Ok((picked, true))
            })
            .await?;
        let uri: Arc<str> = self.config.list_uri(list).into();
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Held {
                list,
                uri,
                until: now + doc::LEASE,
                order: shuffled(BLOCK_SIZE),
                block,
            });
        tracing::debug!(keyset = %self.keyset, list, block, "status list block reserved");
        Ok(())
    }

    /// Sets index `idx` of list `list` to `status` at `now` for client `by`. Returns the
    /// change (None: the index already had it).
    pub async fn set(
        &self,
        list: u32,
        idx: u64,
        status: Status,
        now: i64,
        by: &str,
        jti: Option<&str>,
    ) -> Result<Option<Change>, StatusError> {
        self.write(now, |lists| {
            let change = lists.set(list, idx, status, now, by, jti)?;
            let changed = change.is_some();
            Ok((change, changed))
        })
        .await
    }

    /// The changes the stored lists remember from `since` on (for audit lines that a
    /// crash may have left unwritten).
    pub fn changes_since(&self, since: i64) -> Vec<Change> {
        let view = self.view();
        view.lists
            .changes
            .iter()
            .filter(|c| c.at >= since)
            .cloned()
            .collect()
    }

    /// The lists this replica holds blocks of (for `/metrics`): indexes left to hand out.
    pub fn held_indexes(&self) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.iter().map(|h| h.order.len()).sum()
    }

    /// The list numbers of the blocks this replica holds.
    pub fn held_lists(&self) -> Vec<u32> {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.iter().map(|h| h.list).collect()
    }
}

/// A uniformly random number below `n` (n > 0), from the system's CSPRNG.
fn random_below(n: u32) -> u32 {
    let mut draw = [0u8; 8];
    // The system generator does not fail on Linux; a zero draw would still be a valid pick.
    let _ = aws_lc_rs::rand::fill(&mut draw);
    below(draw, n)
}

/// The number below `n` (n > 0) that a draw of 8 random bytes picks: 64 bits for at most
/// 32, so the modulo's bias is below 2^-32.
fn below(draw: [u8; 8], n: u32) -> u32 {
    (u64::from_le_bytes(draw) % u64::from(n.max(1))) as u32
}

/// The numbers below `n` in a random order: each placed by a draw among those left
/// (Fisher-Yates), the draws from one call to the system's CSPRNG (a call per draw cost
/// more than the rest of handing out the block).
fn shuffled(n: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n).collect();
    let mut random = vec![0u8; 8 * order.len()];
    let _ = aws_lc_rs::rand::fill(&mut random);
    let (draws, _) = random.as_chunks::<8>();
    for (i, draw) in (1..n).rev().zip(draws) {
        order.swap(i as usize, below(*draw, i + 1) as usize);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::testing::Rigged;
    use std::collections::HashSet;
    use std::time::Duration;

    const NOW: i64 = 1_700_000_000;

    async fn open(backend: &Arc<Rigged>) -> Arc<StatusLists> {
        let config = StatusListConfig {
            ttl: 300,
            validity: 600,
            uri: "https://issuer.test/keysets/default/statuslists".into(),
        };
        let timing = Timing::new(600, 300, 0, false);
        Arc::new(
            StatusLists::open("default", config, timing, backend.clone())
                .await
                .unwrap(),
        )
    }

    /// Writes of the stored lists so far (each one bumps the version).
    async fn writes(backend: &Rigged) -> u64 {
        let stored = backend.load_state(&document_name("default")).await.unwrap();
        stored.map_or(0, |s| s.version)
    }

    #[tokio::test]
    async fn tokens_that_wait_for_a_block_share_its_write() {
        let backend = Arc::new(Rigged {
            slow_writes: AtomicBool::new(true),
            ..Rigged::default()
        });
        let lists = open(&backend).await;
        let mut takes = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let lists = lists.clone();
            takes.spawn(async move { lists.take(NOW, 1).await.unwrap() });
        }
        let mut idx = HashSet::new();
        for slots in takes.join_all().await {
            idx.extend(slots.iter().map(|s| s.idx));
        }
        assert_eq!(idx.len(), 8);
        assert_eq!(
            writes(&backend).await,
            1,
            "one block reserved, by one write"
        );
        assert_eq!(lists.view().lists.lists[0].blocks.len(), 1);
    }

    #[tokio::test]
    async fn a_block_hands_out_each_of_its_indexes_once_in_a_random_order() {
        let backend = Arc::new(Rigged::default());
        let lists = open(&backend).await;
        let slots = lists.take(NOW, BLOCK_SIZE as usize).await.unwrap();
        let idx: Vec<u64> = slots.iter().map(|s| s.idx).collect();
        assert_eq!(idx.iter().collect::<HashSet<_>>().len(), idx.len());
        let block = doc::block_of(idx[0]);
        assert!(idx.iter().all(|&i| doc::block_of(i) == block));
        assert!(idx.windows(2).any(|w| w[0] > w[1]), "not in order");
        assert!(idx.windows(2).any(|w| w[0] < w[1]), "not in reverse order");
        assert!(slots
            .iter()
            .all(|s| &*s.uri == "https://issuer.test/keysets/default/statuslists/1"));
    }

    #[tokio::test]
    async fn the_next_block_is_reserved_before_the_held_ones_run_out() {
        let backend = Arc::new(Rigged::default());
        let lists = open(&backend).await;
        lists
            .take(NOW, BLOCK_SIZE as usize - RESERVE_AHEAD)
            .await
            .unwrap();
        assert_eq!(writes(&backend).await, 1);
        assert_eq!(lists.left(NOW), RESERVE_AHEAD, "no reservation ahead yet");

        // One more token leaves fewer than RESERVE_AHEAD: the next block is reserved in
        // the background (nothing else writes here), and this token does not wait for it.
        let changed = lists.changed();
        tokio::pin!(changed);
        changed.as_mut().enable();
        lists.take(NOW, 1).await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), changed)
            .await
            .expect("a block reserved ahead");
        drop(lists.reserving.lock().await);
        assert_eq!(writes(&backend).await, 2);
        assert_eq!(lists.left(NOW), RESERVE_AHEAD - 1 + BLOCK_SIZE as usize);

        // The rest of the first block and the start of the next take no write.
        lists.take(NOW, RESERVE_AHEAD).await.unwrap();
        assert_eq!(writes(&backend).await, 2);
        assert_eq!(lists.view().lists.lists[0].blocks.len(), 2);
    }
}

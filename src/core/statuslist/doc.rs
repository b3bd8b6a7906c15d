//! The status lists of a key set as its backend's state store holds them, and the rules
//! that change them. Pure: time is a parameter, randomness a caller's.
//!
//! A list holds [`LIST_SIZE`] entries in [`BLOCKS`] blocks. Block `b` is the entries
//! `b`, `b + BLOCKS`, `b + 2 * BLOCKS`, ...: a block's indexes are spread over the whole
//! list, so tokens issued one after the other do not sit in neighbouring bits. A replica
//! reserves a whole block with one write and hands out its indexes in a random order with
//! no further write; the block records until when it may hand them out (`until`) and when
//! the last token that can carry one of them has expired (`expires`). At `expires` its
//! entries are set back to VALID, and it is handed out again only once every verifier's
//! cached copy of the list has that (`free_at`).

use super::bits::Packed;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Bits per entry: 2, so that SUSPENDED can be told from INVALID.
pub const BITS: u8 = 2;
/// Entries per list.
pub const LIST_SIZE: u32 = 1 << 20;
/// Blocks per list.
pub const BLOCKS: u32 = 256;
/// Entries per block.
pub const BLOCK_SIZE: u32 = LIST_SIZE / BLOCKS;
/// How long a replica hands out a block's indexes (seconds), if it does not use them all.
pub const LEASE: i64 = 60;
/// The most lists a key set holds: 64 Mi tokens in flight (at most 16 MiB of statuses).
pub const MAX_LISTS: u32 = 64;
/// How many changes the document remembers (for audit lines a crash left unwritten).
pub const RECENT_CHANGES: usize = 256;
/// The most bytes a status change may make the stored lists take (sealed): under a
/// DynamoDB item's 400 KB and Vault's default entry limits, with room left for the block
/// reservations that signing needs.
pub const MAX_DOCUMENT: usize = 300_000;
/// The newest document format this build reads.
pub const FORMAT: u32 = 1;

/// A token's status (the draft's values).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// 0x00 VALID.
    Valid,
    /// 0x01 INVALID: revoked for good.
    Revoked,
    /// 0x02 SUSPENDED: invalid until reinstated.
    Suspended,
}

impl Status {
    /// Its value in the list.
    pub fn value(self) -> u8 {
        match self {
            Status::Valid => 0,
            Status::Revoked => 1,
            Status::Suspended => 2,
        }
    }

    /// The status a list value stands for (3 is application-specific; keyturn writes none).
    pub fn of(value: u8) -> Option<Status> {
        match value {
            0 => Some(Status::Valid),
            1 => Some(Status::Revoked),
            2 => Some(Status::Suspended),
            _ => None,
        }
    }

    /// Its name in the API and in audit lines.
    pub fn name(self) -> &'static str {
        match self {
            Status::Valid => "valid",
            Status::Revoked => "revoked",
            Status::Suspended => "suspended",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a status change or a reservation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// No list of that number.
    #[error("the key set has no status list {0}")]
    UnknownList(u32),
    /// The index is past the list's end.
    #[error("index {idx} is past the end of status list {list} ({LIST_SIZE} entries)")]
    OutOfRange { list: u32, idx: u64 },
    /// No token that may still be used carries the index.
    #[error(
        "no token that may still be used carries index {idx} of status list {list} (its tokens \
         have expired, or it was never handed out)"
    )]
    NotInUse { list: u32, idx: u64 },
    /// Revoked is final.
    #[error("the token is revoked, which is final; it cannot become {0}")]
    Final(Status),
    /// Every list is full.
    #[error("all {MAX_LISTS} status lists are full; lower the token rate or max_token_ttl")]
    Full,
    /// The change would make the stored lists larger than the state store is given.
    #[error(
        "the status lists would take {0} bytes stored, above the {MAX_DOCUMENT} a state \
         store is given: too many live tokens are revoked or suspended at scattered indexes; \
         revoke the key that signed them instead (every token it signed stops verifying)"
    )]
    TooLarge(usize),
}

/// One block's reservation, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Block {
    /// Its number (0 to [`BLOCKS`] - 1).
    pub block: u32,
    /// Until when its replica hands out its indexes.
    pub until: i64,
    /// When the last token that can carry one of its indexes has expired (and the clocks
    /// and replicas agree): its entries are then set back to VALID.
    pub expires: i64,
    /// Set once its entries are VALID again: from then on it may be reserved anew.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub free_at: Option<i64>,
}

/// One list, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredList {
    id: u32,
    bits: u8,
    size: u32,
    lst: String,
    blocks: Vec<Block>,
}

/// A status change, as the document remembers it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    /// Its number in the key set's changes (1, 2, ...).
    pub seq: u64,
    /// When (Unix seconds).
    pub at: i64,
    /// The list.
    pub list: u32,
    /// The index.
    pub idx: u64,
    /// The status before.
    pub old: Status,
    /// The status after.
    pub new: Status,
    /// The client that asked.
    pub by: String,
    /// The token's jti, when the change named the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
}

/// The document as stored.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Stored {
    format: u32,
    lists: Vec<StoredList>,
    #[serde(default)]
    seq: u64,
    #[serde(default)]
    writes: u64,
    #[serde(default)]
    changes: Vec<Change>,
}

/// One list in memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct List {
    /// Its number (1, 2, ...).
    pub id: u32,
    /// Its entries.
    pub statuses: Packed,
    /// `statuses` as served (`lst`), encoded once per change.
    pub lst: String,
    /// Its reserved and cooling blocks.
    pub blocks: Vec<Block>,
}

impl List {
    fn new(id: u32) -> Self {
        let statuses = Packed::new(BITS, LIST_SIZE);
        List {
            id,
            lst: statuses.encode(),
            statuses,
            blocks: Vec::new(),
        }
    }

    fn block(&self, n: u32) -> Option<&Block> {
        self.blocks.iter().find(|b| b.block == n)
    }
}

/// A key set's status lists and recent changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Lists {
    /// The lists, by number.
    pub lists: Vec<List>,
    /// The last change's number.
    pub seq: u64,
    /// How many times the lists were written: it only grows, so an older copy put back
    /// shows.
    pub writes: u64,
    /// The last [`RECENT_CHANGES`] changes, oldest first.
    pub changes: Vec<Change>,
}

/// Whether three quarters of a list's blocks are taken: the next list is then made (and
/// served by every replica) before any token needs it.
fn crowded(list: &List) -> bool {
    list.blocks.len() >= (BLOCKS as usize) * 3 / 4
}

/// The block an index belongs to.
pub fn block_of(idx: u64) -> u32 {
    (idx % u64::from(BLOCKS)) as u32
}

/// The `k`th index of block `block`.
pub fn index_in(block: u32, k: u32) -> u64 {
    u64::from(block) + u64::from(k) * u64::from(BLOCKS)
}

impl Lists {
    /// Reads a stored document.
    pub fn from_bytes(bytes: &[u8]) -> Result<Lists, String> {
        let stored: Stored = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if stored.format > FORMAT {
            return Err(format!(
                "it is of format {}, newer than this keyturn reads ({FORMAT}); upgrade keyturn",
                stored.format
            ));
        }
        if stored.lists.len() > MAX_LISTS as usize {
            return Err(format!("it holds more than {MAX_LISTS} lists"));
        }
        if stored.changes.len() > RECENT_CHANGES {
            return Err(format!("it remembers more than {RECENT_CHANGES} changes"));
        }
        let mut lists: Vec<List> = Vec::with_capacity(stored.lists.len());
        for l in stored.lists {
            if l.bits != BITS || l.size != LIST_SIZE {
                return Err(format!(
                    "list {} has {} entries of {} bits, not {LIST_SIZE} of {BITS}",
                    l.id, l.size, l.bits
                ));
            }
            if l.id == 0 || l.id > MAX_LISTS || lists.iter().any(|o| o.id == l.id) {
                return Err(format!(
                    "list number {} is 0, above {MAX_LISTS} or repeated",
                    l.id
                ));
            }
            let max = (LIST_SIZE as usize * BITS as usize) / 8;
            let statuses =
                Packed::decode(BITS, &l.lst, max).map_err(|e| format!("list {}: {e}", l.id))?;
            if statuses.len() != u64::from(LIST_SIZE) {
                return Err(format!("list {} does not hold {LIST_SIZE} entries", l.id));
            }
            let mut seen = std::collections::HashSet::new();
            if l.blocks
                .iter()
                .any(|b| b.block >= BLOCKS || !seen.insert(b.block))
            {
                return Err(format!("list {} names a block twice or out of range", l.id));
            }
            lists.push(List {
                id: l.id,
                statuses,
                lst: l.lst,
                blocks: l.blocks,
            });
        }
        lists.sort_by_key(|l| l.id);
        Ok(Lists {
            lists,
            seq: stored.seq,
            writes: stored.writes,
            changes: stored.changes,
        })
    }

    /// The document to store.
    pub fn to_bytes(&self) -> Vec<u8> {
        let stored = Stored {
            format: FORMAT,
            lists: self
                .lists
                .iter()
                .map(|l| StoredList {
                    id: l.id,
                    bits: BITS,
                    size: LIST_SIZE,
                    lst: l.lst.clone(),
                    blocks: l.blocks.clone(),
                })
                .collect(),
            seq: self.seq,
            writes: self.writes,
            changes: self.changes.clone(),
        };
        // Strings and numbers only: serializing cannot fail.
        serde_json::to_vec(&stored).unwrap_or_default()
    }

    /// List `id`.
    pub fn list(&self, id: u32) -> Option<&List> {
        self.lists.iter().find(|l| l.id == id)
    }

    /// Sets the entries of every block whose tokens have all expired at `now` back to
    /// VALID, to be reserved again `cool` seconds later (when every cached copy of the list
    /// has them VALID), and forgets blocks whose cooling is over and trailing lists with
    /// no block left. Returns whether anything changed.
    pub fn sweep(&mut self, now: i64, cool: i64) -> bool {
        let mut changed = false;
        for list in &mut self.lists {
            let mut cleared = false;
            list.blocks.retain_mut(|b| match b.free_at {
                Some(free_at) => {
                    let keep = free_at > now;
                    changed |= !keep;
                    keep
                }
                None if b.expires <= now => {
                    for k in 0..BLOCK_SIZE {
                        list.statuses.set(index_in(b.block, k), 0);
                    }
                    b.free_at = Some(now.saturating_add(cool));
                    cleared = true;
                    true
                }
                None => true,
            });
            if cleared {
                list.lst = list.statuses.encode();
                changed = true;
            }
        }
        // A list with no block left goes, unless it is the one made ahead for a crowded
        // list before it.
        while let [.., before, last] = self.lists.as_slice() {
            if !last.blocks.is_empty() || crowded(before) {
                break;
            }
            self.lists.pop();
            changed = true;
        }
        changed
    }

    /// Reserves a free block at `now`, to hand out until `now + LEASE`, for tokens that
    /// expire by `retention` after that: in the lowest list with a free block (a new list
    /// if none has one), the block picked by `pick` among the free ones (`pick(n)` returns
    /// a number below `n`). Returns the list and block.
    pub fn reserve(
        &mut self,
        now: i64,
        retention: i64,
        pick: &mut dyn FnMut(u32) -> u32,
    ) -> Result<(u32, u32), Refused> {
        let until = now.saturating_add(LEASE);
        let expires = until.saturating_add(retention);
        let free =
            |l: &List| -> Vec<u32> { (0..BLOCKS).filter(|n| l.block(*n).is_none()).collect() };
        let at = match self
            .lists
            .iter()
            .position(|l| l.blocks.len() < BLOCKS as usize)
        {
            Some(i) => i,
            None => {
                let id = self.lists.last().map_or(1, |l| l.id + 1);
                if id > MAX_LISTS {
                    return Err(Refused::Full);
                }
                self.lists.push(List::new(id));
                self.lists.len() - 1
            }
        };
        let list = &mut self.lists[at];
        let candidates = free(list);
        let n = candidates.len() as u32;
        let block = candidates[(pick(n) % n) as usize];
        list.blocks.push(Block {
            block,
            until,
            expires,
            free_at: None,
        });
        let (id, spare) = (list.id, crowded(list) && at + 1 == self.lists.len());
        if spare && id < MAX_LISTS {
            self.lists.push(List::new(id + 1));
        }
        Ok((id, block))
    }

    /// Index `idx` of list `list`, checked: it must be handed out (its block reserved and
    /// its tokens not yet expired at `now`), and, for a token `issued` at a known time
    /// (with `skew`), by this reservation of its block: one that ended before the token
    /// was issued, or began after, hands the index to another token.
    pub fn status(
        &self,
        list: u32,
        idx: u64,
        now: i64,
        issued: Option<(i64, i64)>,
    ) -> Result<Status, Refused> {
        let l = self.list(list).ok_or(Refused::UnknownList(list))?;
        let value = l
            .statuses
            .get(idx)
            .ok_or(Refused::OutOfRange { list, idx })?;
        let Some(b) = l
            .block(block_of(idx))
            .filter(|b| b.free_at.is_none() && b.expires > now)
        else {
            return Err(Refused::NotInUse { list, idx });
        };
        if let Some((iat, skew)) = issued {
            let reserved = b.until - LEASE;
            if iat < reserved - skew || iat > b.until + skew {
                return Err(Refused::NotInUse { list, idx });
            }
        }
        Ok(Status::of(value).unwrap_or(Status::Revoked))
    }

    /// Sets index `idx` of list `list` to `new` at `now`, for client `by`. Returns the
    /// change, or None if the index already had that status. Revoked is final.
    /// With `issued`, the change is for the token issued then (see [`Self::status`]).
    #[allow(clippy::too_many_arguments)]
    pub fn set(
        &mut self,
        list: u32,
        idx: u64,
        new: Status,
        now: i64,
        issued: Option<(i64, i64)>,
        by: &str,
        jti: Option<&str>,
    ) -> Result<Option<Change>, Refused> {
        let old = self.status(list, idx, now, issued)?;
        if old == new {
            return Ok(None);
        }
        if old == Status::Revoked {
            return Err(Refused::Final(new));
        }
        let Some(l) = self.lists.iter_mut().find(|l| l.id == list) else {
            return Err(Refused::UnknownList(list));
        };
        l.statuses.set(idx, new.value());
        l.lst = l.statuses.encode();
        self.seq += 1;
        let change = Change {
            seq: self.seq,
            at: now,
            list,
            idx,
            old,
            new,
            by: by.to_owned(),
            jti: jti.map(str::to_owned),
        };
        self.changes.push(change.clone());
        if self.changes.len() > RECENT_CHANGES {
            let extra = self.changes.len() - RECENT_CHANGES;
            self.changes.drain(..extra);
        }
        Ok(Some(change))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000;
    const RETENTION: i64 = 960;
    const COOL: i64 = 360;

    fn first(n: u32) -> u32 {
        let _ = n;
        0
    }

    #[test]
    fn a_block_spreads_over_the_list_and_blocks_do_not_overlap() {
        let mut seen = std::collections::HashSet::new();
        for b in [0, 1, 255] {
            for k in 0..BLOCK_SIZE {
                let i = index_in(b, k);
                assert!(i < u64::from(LIST_SIZE));
                assert_eq!(block_of(i), b);
                assert!(seen.insert(i));
            }
        }
        assert_eq!(index_in(7, 1) - index_in(7, 0), u64::from(BLOCKS));
    }

    #[test]
    fn reservations_fill_a_list_then_open_the_next_and_stop_at_the_limit() {
        let mut lists = Lists::default();
        let mut picks = 0u32;
        let mut pick = |n: u32| {
            picks += 1;
            n - 1
        };
        for i in 0..BLOCKS {
            let (list, block) = lists.reserve(T0, RETENTION, &mut pick).unwrap();
            assert_eq!(
                (list, block),
                (1, BLOCKS - 1 - i),
                "the last free block each time"
            );
        }
        assert_eq!(lists.reserve(T0, RETENTION, &mut first).unwrap(), (2, 0));
        let b = lists.list(2).unwrap().block(0).unwrap().clone();
        assert_eq!((b.until, b.expires), (T0 + LEASE, T0 + LEASE + RETENTION));
        for l in lists.lists.iter_mut() {
            l.blocks = (0..BLOCKS)
                .map(|block| Block {
                    block,
                    until: T0,
                    expires: T0 + 10,
                    free_at: None,
                })
                .collect();
        }
        while lists.lists.len() < MAX_LISTS as usize {
            let id = lists.lists.len() as u32 + 1;
            let mut l = List::new(id);
            l.blocks = lists.lists[0].blocks.clone();
            lists.lists.push(l);
        }
        assert_eq!(lists.reserve(T0, RETENTION, &mut first), Err(Refused::Full));
    }

    #[test]
    fn statuses_change_only_while_in_use_and_revoked_is_final() {
        let mut lists = Lists::default();
        let (list, block) = lists.reserve(T0, RETENTION, &mut first).unwrap();
        let idx = index_in(block, 17);
        let set = |l: &mut Lists, s, at| l.set(list, idx, s, at, None, "ops", Some("j1"));
        assert_eq!(
            set(&mut lists, Status::Suspended, T0).unwrap().unwrap().old,
            Status::Valid
        );
        assert_eq!(set(&mut lists, Status::Suspended, T0).unwrap(), None);
        let back = set(&mut lists, Status::Valid, T0 + 1).unwrap().unwrap();
        assert_eq!(
            (back.old, back.new, back.seq),
            (Status::Suspended, Status::Valid, 2)
        );
        set(&mut lists, Status::Revoked, T0 + 2).unwrap().unwrap();
        for s in [Status::Valid, Status::Suspended] {
            assert_eq!(set(&mut lists, s, T0 + 3), Err(Refused::Final(s)));
        }
        assert_eq!(lists.list(list).unwrap().statuses.get(idx), Some(1));
        assert_eq!(lists.changes.len(), 3);
        // Another block's index, another list, past the end, after expiry.
        let other = index_in((block + 1) % BLOCKS, 0);
        assert_eq!(
            lists.set(list, other, Status::Revoked, T0, None, "ops", None),
            Err(Refused::NotInUse { list, idx: other })
        );
        assert_eq!(
            lists.set(9, idx, Status::Revoked, T0, None, "ops", None),
            Err(Refused::UnknownList(9))
        );
        let past = u64::from(LIST_SIZE) + u64::from(block);
        assert!(matches!(
            lists.set(list, past, Status::Revoked, T0, None, "ops", None),
            Err(Refused::OutOfRange { .. })
        ));
        let expires = T0 + LEASE + RETENTION;
        assert!(lists.status(list, idx, expires - 1, None).is_ok());
        assert!(matches!(
            lists.status(list, idx, expires, None),
            Err(Refused::NotInUse { .. })
        ));
    }

    /// A change for a token checks that the token was issued while its block was reserved
    /// this time: an older token whose index was handed out again changes nothing.
    #[test]
    fn a_token_issued_under_another_reservation_of_its_block_is_not_changed() {
        let mut lists = Lists::default();
        let (list, block) = lists.reserve(T0, RETENTION, &mut first).unwrap();
        let idx = index_in(block, 9);
        for iat in [T0, T0 + 30, T0 + LEASE] {
            assert!(
                lists.status(list, idx, T0 + 100, Some((iat, 60))).is_ok(),
                "{iat}"
            );
        }
        for iat in [T0 - 61, T0 + LEASE + 61] {
            assert_eq!(
                lists.set(
                    list,
                    idx,
                    Status::Revoked,
                    T0 + 100,
                    Some((iat, 60)),
                    "ops",
                    None
                ),
                Err(Refused::NotInUse { list, idx }),
                "{iat}"
            );
        }
        assert_eq!(lists.list(list).unwrap().statuses.get(idx), Some(0));
    }

    #[test]
    fn the_next_list_is_made_once_three_quarters_of_the_last_are_taken() {
        let mut lists = Lists::default();
        for _ in 0..BLOCKS * 3 / 4 - 1 {
            lists.reserve(T0, RETENTION, &mut first).unwrap();
        }
        assert_eq!(lists.lists.len(), 1);
        lists.reserve(T0, RETENTION, &mut first).unwrap();
        assert_eq!(lists.lists.len(), 2, "made ahead");
        assert!(lists.lists[1].blocks.is_empty());
        // Kept while the list before is crowded; gone once it is not.
        assert!(!lists.sweep(T0 + 1, COOL));
        assert_eq!(lists.lists.len(), 2);
        lists.sweep(T0 + LEASE + RETENTION, COOL);
        lists.sweep(T0 + LEASE + RETENTION + COOL, COOL);
        assert_eq!(lists.lists.len(), 1);
    }

    #[test]
    fn an_expired_block_is_cleared_then_freed_after_the_cooling_and_the_list_shrinks() {
        let mut lists = Lists::default();
        let (list, block) = lists.reserve(T0, RETENTION, &mut first).unwrap();
        let (_, second) = lists
            .reserve(T0 + COOL + 100, RETENTION, &mut first)
            .unwrap();
        let idx = index_in(block, 5);
        lists
            .set(list, idx, Status::Revoked, T0, None, "ops", None)
            .unwrap();
        let expires = T0 + LEASE + RETENTION;
        assert!(!lists.sweep(expires - 1, COOL));
        assert!(lists.sweep(expires, COOL));
        let l = lists.list(list).unwrap();
        assert_eq!(l.statuses.get(idx), Some(0), "cleared");
        assert_eq!(l.lst, Packed::new(BITS, LIST_SIZE).encode());
        assert_eq!(l.block(block).unwrap().free_at, Some(expires + COOL));
        // Cooling: not free yet, so the next reservation takes another block.
        let (_, third) = lists.reserve(expires, RETENTION, &mut first).unwrap();
        assert!(third != block && third != second);
        assert!(!lists.sweep(expires + COOL - 1, COOL));
        assert!(lists.sweep(expires + COOL, COOL));
        assert!(lists.list(list).unwrap().block(block).is_none());
        // A second list with nothing left in it goes.
        let mut full = Lists::default();
        for _ in 0..=BLOCKS {
            full.reserve(T0, RETENTION, &mut first).unwrap();
        }
        assert_eq!(full.lists.len(), 2);
        full.sweep(T0 + LEASE + RETENTION, COOL);
        full.sweep(T0 + LEASE + RETENTION + COOL, COOL);
        assert_eq!(full.lists.len(), 1);
    }

    /// At 1,000 tokens/s with a 15-minute max_token_ttl (retention 16 minutes with a
    /// minute of clock skew) and a 5-minute list ttl, two hours of simulated time: the
    /// lists never grow past two, and the stored document stays small, whatever the hour.
    #[test]
    fn storage_stays_bounded_under_a_steady_token_rate() {
        let (rate, retention, cool) = (1000u64, 960, 300 + 60);
        let mut lists = Lists::default();
        let mut pick = {
            let mut x = 12345u32;
            move |n: u32| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                (x >> 8) % n
            }
        };
        let (mut issued, mut reserved, mut most_lists, mut largest) = (0u64, 0u64, 0, 0);
        for now in T0..T0 + 7200 {
            issued += rate;
            // One replica: a block per 4096 tokens (its lease of a minute never runs out
            // first at this rate).
            while reserved * u64::from(BLOCK_SIZE) < issued {
                lists.sweep(now, cool);
                lists.reserve(now, retention, &mut pick).unwrap();
                reserved += 1;
                // A revocation every 100 blocks (every ~7 minutes).
                if reserved % 100 == 0 {
                    let (list, b) = (lists.lists[0].id, lists.lists[0].blocks[0].block);
                    let _ = lists.set(
                        list,
                        index_in(b, 3),
                        Status::Revoked,
                        now,
                        None,
                        "ops",
                        None,
                    );
                }
            }
            most_lists = most_lists.max(lists.lists.len());
            if now % 60 == 0 {
                largest = largest.max(lists.to_bytes().len());
            }
        }
        // In flight: 1000/s over the lease, the retention and the cooling (60 + 960 + 360
        // s), 1.38 Mi indexes: two lists of 1 Mi.
        assert_eq!(most_lists, 2);
        assert!(largest < 64 * 1024, "{largest} bytes");
    }

    #[test]
    fn the_document_reads_back_and_refuses_what_it_cannot_trust() {
        let mut lists = Lists::default();
        let (list, block) = lists.reserve(T0, RETENTION, &mut first).unwrap();
        lists
            .set(
                list,
                index_in(block, 1),
                Status::Suspended,
                T0,
                None,
                "ops",
                None,
            )
            .unwrap();
        let bytes = lists.to_bytes();
        assert_eq!(Lists::from_bytes(&bytes).unwrap(), lists);
        let text = String::from_utf8(bytes).unwrap();
        for (from, to) in [
            ("\"format\":1", "\"format\":2"),
            ("\"bits\":2", "\"bits\":1"),
            ("\"id\":1", "\"id\":0"),
            (&format!("\"block\":{block}"), "\"block\":256"),
            ("\"id\":1", "\"id\":65"),
        ] {
            let bad = text.replacen(from, to, 1);
            assert_ne!(bad, text, "{from}");
            assert!(Lists::from_bytes(bad.as_bytes()).is_err(), "{from} -> {to}");
        }
    }
}

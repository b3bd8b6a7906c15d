//! The key lifecycle: pending → active → retired → removed, plus revoked.
//!
//! Each key set has one document (a [`KeySetDoc`]) stored in its backend with
//! check-and-set. Keys are scheduled ahead: a pending key carries the instant it becomes
//! active (`activate_at`), so which key signs at any instant is a pure function of the
//! document and the time ([`KeySetDoc::active`]). Replicas that share a backend agree
//! without talking to each other, and no write is needed at the moment of activation.
//!
//! The [`Engine`] moves a key set forward with single steps, each at most one backend key
//! call followed by one document write ([`plan`] decides the next step from the document
//! and `now` alone). A crash between any two calls leaves a document from which the next
//! step is again well defined, which is invariant I4:
//!
//! - a key is first recorded as an intent (name and type), then created in the backend
//!   (idempotent by name), then published with its public key;
//! - removal is recorded before the backend key is destroyed;
//! - activation is a time written in advance, never a separate write.
//!
//! Whoever can write the state store (the data directory, the KV path, the DynamoDB table)
//! is not trusted with the JWKS. Every document is stored with a MAC under a key only the
//! backend holds ([`KeyBackend::state_mac`]), and every published record is checked against
//! the key the backend holds under its name before it is published or signs: a record that
//! fails is withheld ([`KeyRecord::withheld`]) and the engine takes no step while one is.

use crate::config::timing::Timing;
use crate::config::Schedule;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use keyturn_backend::{BackendError, KeyBackend, KeyType, PublicKey};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::Arc;

/// How many ended (removed or revoked, and destroyed) records a document keeps, for
/// `status` and audits; older ones are dropped so the document stays bounded.
const ENDED_HISTORY: usize = 16;

/// The newest document format this build acts on (see [`KeySetDoc::min_reader`]). Format
/// 2 stores documents sealed with a MAC ([`Sealed`]).
pub const FORMAT: u32 = 2;

/// A document as stored: its JSON text and the backend's MAC of it. The MAC covers the text
/// exactly as written, so readers of any version check the same bytes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Sealed {
    /// [`FORMAT`] 2: a keyturn from before sealing refuses the document (rather than reading
    /// an empty one in it).
    min_reader: u32,
    /// The [`KeySetDoc`], as JSON text.
    document: String,
    /// The backend's [`KeyBackend::state_mac`] of `document`, base64.
    mac: String,
}

/// What a stored state holds: a sealed document, or one written before sealing.
struct Stored {
    min_reader: u32,
    document: Vec<u8>,
    mac: Option<Vec<u8>>,
}

impl Stored {
    fn parse(bytes: &[u8]) -> Result<Stored, String> {
        let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if value.get("document").is_none() {
            return Ok(Stored {
                min_reader: 0,
                document: bytes.to_vec(),
                mac: None,
            });
        }
        let sealed: Sealed = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let mac = B64
            .decode(&sealed.mac)
            .map_err(|_| "its MAC is not base64".to_owned())?;
        Ok(Stored {
            min_reader: sealed.min_reader,
            document: sealed.document.into_bytes(),
            mac: Some(mac),
        })
    }
}

/// `document` (a [`KeySetDoc`]'s JSON) sealed with `backend`'s MAC, as it is stored.
pub async fn seal(
    backend: &dyn KeyBackend,
    keyset: &str,
    document: &[u8],
) -> Result<Vec<u8>, LifecycleError> {
    let corrupt = |message: String| LifecycleError::Corrupt {
        keyset: keyset.to_owned(),
        message,
    };
    let mac = backend.state_mac(keyset, document).await?;
    let document = String::from_utf8(document.to_vec()).map_err(|e| corrupt(e.to_string()))?;
    serde_json::to_vec(&Sealed {
        min_reader: 2,
        document,
        mac: B64.encode(mac),
    })
    .map_err(|e| corrupt(e.to_string()))
}

/// The document a sealed state holds, if its MAC is `backend`'s for `name`: Err says what
/// is wrong (not sealed, not parsed, a MAC that does not match). For documents that were
/// sealed from their first write (status lists).
pub async fn open_sealed(
    backend: &dyn KeyBackend,
    name: &str,
    bytes: &[u8],
) -> Result<Vec<u8>, Result<BackendError, String>> {
    let stored = Stored::parse(bytes).map_err(Err)?;
    let Some(mac) = stored.mac else {
        return Err(Err("it has no MAC".into()));
    };
    let expected = backend
        .state_mac(name, &stored.document)
        .await
        .map_err(Ok)?;
    if aws_lc_rs::constant_time::verify_slices_are_equal(&expected, &mac).is_err() {
        return Err(Err("its MAC does not match".into()));
    }
    Ok(stored.document)
}

/// The lifecycle document of one key set.
///
/// Fields this build does not know (written by a newer keyturn sharing the backend) are
/// kept, in `other`, and written back, so replicas of two versions can share one key set
/// during a rolling upgrade or a rollback. A newer keyturn that adds a field an older one
/// must not ignore raises `min_reader`, and an older one then refuses the document.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeySetDoc {
    /// The oldest format a keyturn must read to act on this document (0: any). A keyturn
    /// whose [`FORMAT`] is lower treats it as unreadable: it does not sign (past the sync
    /// delay, on a shared backend) and does not write it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub min_reader: u32,
    /// Bumped whenever the set of published keys changes: the JWKS version.
    pub jwks_version: u64,
    /// When the published set last changed (unix seconds): `Last-Modified`.
    pub jwks_changed_at: i64,
    /// Keys, oldest first.
    pub keys: Vec<KeyRecord>,
    /// This key set's history: random, given by its first write and never changed, so
    /// that a reload or restart can tell it from another (a backend that holds another key
    /// set's state under the same name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<String>,
    /// Fields of a newer format, kept as read.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// One key's history. Times are unix seconds. Unknown fields are kept, as in [`KeySetDoc`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// The backend's name for the key.
    pub name: String,
    /// Its type.
    pub key_type: KeyType,
    /// When the intent to create it was recorded.
    pub created_at: i64,
    /// SubjectPublicKeyInfo DER, base64; set when published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
    /// RFC 7638 thumbprint; set when published.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kid: Option<String>,
    /// When it entered the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub published_at: Option<i64>,
    /// When it starts (or started) signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activate_at: Option<i64>,
    /// When retention ended and it left the JWKS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed_at: Option<i64>,
    /// When it was revoked (out of the JWKS at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<i64>,
    /// When the backend key was destroyed (or scheduled for deletion).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destroyed_at: Option<i64>,
    /// The longest retention (seconds) of any config under which it could sign: tokens it
    /// signed may need it in the JWKS that long after it retires, even once a reload, a
    /// restart or another replica runs a config with a shorter `max_token_ttl`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retain: Option<i64>,
    /// Why the record is withheld from the JWKS and from signing, if it is: the backend does
    /// not hold its key, or holds another one under its name. Never stored.
    #[serde(skip)]
    pub withheld: Option<String>,
    /// Fields of a newer format, kept as read.
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// A key's state at an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyState {
    /// Recorded, not yet created in the backend or not yet published.
    Creating,
    /// Published, not yet signing.
    Pending,
    /// Signing.
    Active,
    /// No longer signing, still published.
    Retired,
    /// No longer published.
    Removed,
    /// Revoked: out of the JWKS at once.
    Revoked,
    /// Recorded as published, but the backend does not hold its key (or holds another):
    /// neither published nor signing until restored, or revoked.
    Withheld,
}

impl KeyRecord {
    /// Published, neither removed nor revoked, and not withheld: in the JWKS.
    pub fn is_published(&self) -> bool {
        self.published_at.is_some() && !self.is_ended() && self.withheld.is_none()
    }

    fn is_ended(&self) -> bool {
        self.removed_at.is_some() || self.revoked_at.is_some()
    }

    /// The public key, parsed.
    pub fn public(&self) -> Option<PublicKey> {
        let der = B64.decode(self.public_key.as_ref()?).ok()?;
        PublicKey::from_spki_der(&der).ok()
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl KeySetDoc {
    /// Parses a stored document (see [`Engine::reload`] for the format check).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The names of fields this build does not know, at the top and in each key.
    pub fn unknown_fields(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self
            .other
            .keys()
            .chain(self.keys.iter().flat_map(|k| k.other.keys()))
            .map(String::as_str)
            .collect();
        names.sort_unstable();
        names.dedup();
        names
    }

    /// Index of the key that signs at `now`: the published key with the latest
    /// `activate_at` not after `now`.
    pub fn active(&self, now: i64) -> Option<usize> {
        self.keys
            .iter()
            .enumerate()
            .filter(|(_, k)| k.is_published() && k.activate_at.is_some_and(|t| t <= now))
            .max_by_key(|(i, k)| (k.activate_at, *i))
            .map(|(i, _)| i)
    }

    /// Index of the published key waiting to become active after `now`.
    pub fn pending(&self, now: i64) -> Option<usize> {
        self.keys
            .iter()
            .position(|k| k.is_published() && k.activate_at.is_none_or(|t| t > now))
    }

    /// When key `i` stopped signing: the first later activation up to `now`.
    pub fn retired_at(&self, i: usize, now: i64) -> Option<i64> {
        let since = self.keys.get(i)?.activate_at?;
        self.keys
            .iter()
            .filter_map(|k| k.activate_at)
            .filter(|t| *t > since && *t <= now)
            .min()
    }

    /// The state of key `i` at `now`.
    pub fn state(&self, i: usize, now: i64) -> KeyState {
        let k = &self.keys[i];
        if k.revoked_at.is_some() {
            KeyState::Revoked
        } else if k.removed_at.is_some() {
            KeyState::Removed
        } else if k.withheld.is_some() {
            KeyState::Withheld
        } else if k.published_at.is_none() {
            KeyState::Creating
        } else if k.activate_at.is_none_or(|t| t > now) {
            KeyState::Pending
        } else if self.active(now) == Some(i) {
            KeyState::Active
        } else {
            KeyState::Retired
        }
    }

    /// When key `i` leaves the JWKS, if that is already determined: its retention after it
    /// retired, the longer of the current config's and the one recorded with it.
    pub fn remove_at(&self, i: usize, now: i64, timing: &Timing) -> Option<i64> {
        let retention = timing.retention().max(self.keys[i].retain.unwrap_or(0));
        self.retired_at(i, now).map(|t| t.saturating_add(retention))
    }

    /// Keys whose recorded retention must be raised to `retention`: those that may still
    /// sign (not ended, not retired at `now`) with a shorter one, and published retired keys
    /// with none (recorded by a keyturn older than the field: the current retention is the
    /// best known bound, and keeps them should a later config shorten it).
    fn retain_short(&self, now: i64, retention: i64) -> impl Iterator<Item = usize> + '_ {
        (0..self.keys.len()).filter(move |&i| {
            let k = &self.keys[i];
            !k.is_ended()
                && match k.retain {
                    None => true,
                    Some(r) => r < retention && self.retired_at(i, now).is_none(),
                }
        })
    }

    /// The records withheld from the JWKS, with the reason.
    pub fn withheld(&self) -> impl Iterator<Item = (&KeyRecord, &str)> {
        self.keys
            .iter()
            .filter_map(|k| Some((k, k.withheld.as_deref()?)))
    }

    /// The published keys, in document order.
    pub fn published(&self) -> impl Iterator<Item = &KeyRecord> {
        self.keys.iter().filter(|k| k.is_published())
    }

    fn published_kids(&self) -> Vec<Option<String>> {
        self.published().map(|k| k.kid.clone()).collect()
    }

    fn find(&self, name: &str) -> Option<usize> {
        self.keys.iter().position(|k| k.name == name)
    }

    /// The next instant at which [`plan`] may have work even if nothing else happens.
    pub fn next_event(&self, now: i64, timing: &Timing) -> Option<i64> {
        let activations = self
            .keys
            .iter()
            .filter(|k| k.is_published())
            .filter_map(|k| k.activate_at);
        let removals = (0..self.keys.len())
            .filter(|i| self.keys[*i].is_published())
            .filter_map(|i| self.remove_at(i, now, timing));
        activations.chain(removals).filter(|t| *t > now).min()
    }
}

/// One step forward.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Record the intent to create a new key (a write).
    Intend,
    /// Create key `name` in the backend and publish it (a backend call, then a write).
    Publish(String),
    /// No key signs now: make the published pending key `name` active at once (a write).
    ActivateNow(String),
    /// Retention of `name` ended: take it out of the JWKS (a write).
    Remove(String),
    /// Destroy the backend key of the ended `name` (a backend call, then a write).
    Destroy(String),
    /// Drop the oldest ended records beyond the history limit (a write).
    Forget,
    /// Record the current retention with every key that may still sign, before any token
    /// is signed under it (a write).
    Retain,
    /// Give the document its history (the first write; a document from a keyturn before
    /// histories gets one too).
    Identify,
}

/// The next step for `doc` at `now`, or `None` when the key set is in order.
pub fn plan(doc: &KeySetDoc, now: i64, timing: &Timing) -> Option<Step> {
    if doc.history.is_none() {
        return Some(Step::Identify);
    }
    if doc.retain_short(now, timing.retention()).next().is_some() {
        return Some(Step::Retain);
    }
    if let Some(k) = doc
        .keys
        .iter()
        .find(|k| k.published_at.is_none() && !k.is_ended() && k.withheld.is_none())
    {
        return Some(Step::Publish(k.name.clone()));
    }
    let active = doc.active(now);
    let pending = doc.pending(now);
    if active.is_none() {
        if let Some(p) = pending {
            return Some(Step::ActivateNow(doc.keys[p].name.clone()));
        }
    }
    if pending.is_none() {
        return Some(Step::Intend);
    }
    for (i, k) in doc.keys.iter().enumerate() {
        if k.is_published() && doc.remove_at(i, now, timing).is_some_and(|t| t <= now) {
            return Some(Step::Remove(k.name.clone()));
        }
    }
    if let Some(k) = doc
        .keys
        .iter()
        .find(|k| k.is_ended() && k.destroyed_at.is_none())
    {
        return Some(Step::Destroy(k.name.clone()));
    }
    let ended = doc.keys.iter().filter(|k| k.is_ended()).count();
    (ended > ENDED_HISTORY).then_some(Step::Forget)
}

/// When a newly published key should start signing.
///
/// With a key active: at the next scheduled rotation after it activated, but never before
/// the key has been published for the publish lead (so after downtime there is one
/// catch-up rotation, not a burst). With none (first start): at once.
fn activation_time(doc: &KeySetDoc, now: i64, timing: &Timing, schedule: &Schedule) -> i64 {
    match doc.active(now).and_then(|i| doc.keys[i].activate_at) {
        None => now,
        Some(since) => {
            let due = schedule.next_after(since).unwrap_or(i64::MAX);
            due.max(now + timing.publish_lead())
        }
    }
}

/// What an engine operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// A backend call failed.
    #[error(transparent)]
    Backend(#[from] BackendError),
    /// The stored document is for newer readers than this build.
    #[error(
        "the stored lifecycle document of key set {keyset:?} was written by a newer keyturn, \
         for readers of format {min_reader} and later (this one reads format {FORMAT}); \
         upgrade this keyturn"
    )]
    TooNew {
        /// The key set.
        keyset: String,
        /// The document's `min_reader`.
        min_reader: u32,
    },
    /// The stored document's MAC does not match, or it has none where one is required.
    #[error(
        "the stored lifecycle document of key set {keyset:?} fails its authentication \
         ({how}): it was written outside keyturn, or under another key-encryption key, \
         transit key or KMS key. Not acted on: the keys published until now stay served. \
         Restore its latest state from a backup taken from keyturn's own backend"
    )]
    Unauthentic {
        /// The key set.
        keyset: String,
        /// What is wrong.
        how: &'static str,
    },
    /// The stored document does not parse.
    #[error("the stored lifecycle document of key set {keyset:?} is corrupt: {message}")]
    Corrupt {
        /// The key set.
        keyset: String,
        /// What is wrong.
        message: String,
    },
    /// No key with that kid in the key set.
    #[error("no key with kid {0:?} in this key set")]
    UnknownKid(String),
    /// The key is not in a state that allows the operation.
    #[error("{0}")]
    Refused(String),
    /// Replicas kept overwriting each other; try again.
    #[error("too many concurrent writers on key set {0:?}; try again")]
    Contention(String),
    /// The key set's stored status lists cannot be trusted (the message says why).
    #[error("{0}")]
    StatusLists(String),
    /// A reload is replacing the key set; try again.
    #[error("key set {0:?} is being reloaded; try again")]
    Reloading(String),
    /// The stored document is no longer this key set's (deleted, or another history) while
    /// keyturn ran: acting on it would drop every key published until now.
    #[error(
        "the stored lifecycle document of key set {keyset:?} was replaced while keyturn ran \
         ({how}); not acted on: the keys published until now stay served. Restore its latest \
         state (of the same history, no older than what keyturn last read); to start the key \
         set over instead, stop keyturn and remove the key set's entry from \
         <data_dir>/keysets.json"
    )]
    Replaced {
        /// The key set.
        keyset: String,
        /// What the backend holds now.
        how: &'static str,
    },
}

impl LifecycleError {
    /// Whether retrying later may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            LifecycleError::Backend(e) => e.is_retryable(),
            LifecycleError::Contention(_) | LifecycleError::Reloading(_) => true,
            _ => false,
        }
    }
}

/// What a completed engine operation reports, for the audit log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// "published", "activated", "retired", "removed", "revoked", "destroyed",
    /// "rotation-scheduled".
    pub kind: &'static str,
    /// The key's kid (or backend name when it has none yet).
    pub kid: String,
    /// When.
    pub at: i64,
}

/// Drives one key set's document in its backend.
pub struct Engine {
    keyset: String,
    timing: Timing,
    schedule: Schedule,
    key_type: KeyType,
    backend: Arc<dyn KeyBackend>,
    doc: KeySetDoc,
    version: Option<u64>,
    // Events of steps already written by a tick that then failed: reported by the next
    // successful tick, so a later failure never drops them from the audit log.
    unreported: Vec<Event>,
    // Told of each document written or read, before the engine goes on (see `on_change`).
    on_change: Option<OnChange>,
    // The key active at the last successful tick (None before the first): a scheduled
    // activation is no write, so a tick that finds another key active reports it.
    seen_active: Option<Option<String>>,
    // Before the first tick after a restart: the time of the audit log's last record. The
    // first tick reports the activations since then, which no running daemon saw.
    audited_until: Option<i64>,
    // Whether a document must carry a valid MAC: from the first sealed one read or written
    // on (a document from before sealing is accepted once, then rewritten sealed).
    sealed: bool,
    // The stored bytes last authenticated (read or written): a poll that finds them again
    // needs no MAC call.
    authenticated: Vec<u8>,
    // What the backend holds under each key name checked so far: its public key, or why it
    // cannot vouch for a record of that name. Key names are never reused.
    held: HashMap<String, Result<PublicKey, String>>,
    // The longest retention this key set was configured with (here, at a reload, or in the
    // last run): no record is kept published longer after it retires.
    retention_cap: i64,
    // Kids (or names) of records withheld since the last tick: its events.
    withheld_events: Vec<String>,
}

/// What an engine tells of each new document.
pub type OnChange = Box<dyn Fn(&KeySetDoc) + Send + Sync>;

/// At most this many steps per tick: a healthy key set needs two or three.
const MAX_STEPS: usize = 64;

impl Engine {
    /// Loads the key set's document from the backend (an empty one if there is none).
    pub async fn load(
        keyset: &str,
        timing: Timing,
        schedule: Schedule,
        key_type: KeyType,
        backend: Arc<dyn KeyBackend>,
    ) -> Result<Self, LifecycleError> {
        let mut engine = Engine::new(keyset, timing, schedule, key_type, backend);
        engine.reload().await?;
        Ok(engine)
    }

    /// An engine that has read nothing yet: [`Self::reload`] reads the document.
    pub fn new(
        keyset: &str,
        timing: Timing,
        schedule: Schedule,
        key_type: KeyType,
        backend: Arc<dyn KeyBackend>,
    ) -> Self {
        Engine {
            keyset: keyset.to_owned(),
            timing,
            schedule,
            key_type,
            backend,
            doc: KeySetDoc::default(),
            version: None,
            unreported: Vec::new(),
            on_change: None,
            seen_active: None,
            audited_until: None,
            sealed: false,
            authenticated: Vec::new(),
            held: HashMap::new(),
            retention_cap: timing.retention(),
            withheld_events: Vec::new(),
        }
    }

    /// Has `f` called with each document the engine writes or reads that differs from the
    /// one before, at once: before the engine's next backend call (a revoke's successor key,
    /// the rest of a tick), so what is published and signs never lags what is stored.
    pub fn on_change(&mut self, f: OnChange) {
        self.on_change = Some(f);
    }

    fn changed(&self) {
        if let Some(f) = &self.on_change {
            f(&self.doc);
        }
    }

    /// The document as last read or written.
    pub fn doc(&self) -> &KeySetDoc {
        &self.doc
    }

    /// The timing of this key set.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Re-reads the document; returns whether it changed.
    pub async fn reload(&mut self) -> Result<bool, LifecycleError> {
        let blob = self.backend.load_state(&self.keyset).await?;
        let (mut doc, version, sealed) = match blob {
            None => (KeySetDoc::default(), None, true),
            Some(b) => {
                let (doc, sealed) = self.authenticate(&b.data).await?;
                (doc, Some(b.version), sealed)
            }
        };
        if doc.min_reader > FORMAT {
            return Err(LifecycleError::TooNew {
                keyset: self.keyset.clone(),
                min_reader: doc.min_reader,
            });
        }
        if let Some(how) = self.replaced_by(&doc) {
            return Err(LifecycleError::Replaced {
                keyset: self.keyset.clone(),
                how,
            });
        }
        // A copy from before histories, restored, is ours (it knows our keys): it keeps our
        // history (its next write stores it), not a fresh one that would set it apart from
        // the other replicas and from what the ledger remembers.
        if doc.history.is_none() {
            doc.history.clone_from(&self.doc.history);
        }
        if !sealed {
            self.cap_retention(&mut doc);
        }
        self.vouch(&mut doc).await?;
        let changed = doc != self.doc || version != self.version;
        let unknown = doc.unknown_fields();
        if changed && !unknown.is_empty() {
            tracing::warn!(keyset = %self.keyset, fields = ?unknown, "the lifecycle document has fields this keyturn does not know (written by a newer keyturn, or edited by hand); they are kept as they are");
        }
        self.doc = doc;
        self.version = version;
        if changed {
            self.changed();
        }
        Ok(changed)
    }

    /// Checks the MAC of stored `bytes` and parses the document they hold, and tells whether
    /// it was sealed. A document from before sealing is accepted until the first sealed one;
    /// it is sealed at the next tick.
    async fn authenticate(&mut self, bytes: &[u8]) -> Result<(KeySetDoc, bool), LifecycleError> {
        let corrupt = |message: String| LifecycleError::Corrupt {
            keyset: self.keyset.clone(),
            message,
        };
        let stored = Stored::parse(bytes).map_err(corrupt)?;
        if stored.min_reader > FORMAT {
            return Err(LifecycleError::TooNew {
                keyset: self.keyset.clone(),
                min_reader: stored.min_reader,
            });
        }
        let unauthentic = |how| LifecycleError::Unauthentic {
            keyset: self.keyset.clone(),
            how,
        };
        match &stored.mac {
            Some(_) if self.authenticated == bytes => {}
            Some(mac) => {
                let expected = self
                    .backend
                    .state_mac(&self.keyset, &stored.document)
                    .await?;
                if aws_lc_rs::constant_time::verify_slices_are_equal(&expected, mac).is_err() {
                    return Err(unauthentic("its MAC does not match"));
                }
                self.sealed = true;
                self.authenticated = bytes.to_vec();
            }
            None if self.sealed => return Err(unauthentic("it has no MAC")),
            None => {}
        }
        let doc = KeySetDoc::from_bytes(&stored.document).map_err(|e| corrupt(e.to_string()))?;
        Ok((doc, stored.mac.is_some()))
    }

    /// Caps each recorded retention of a document that cannot prove keyturn wrote it (one
    /// from before sealing) at the longest this key set was configured with here: its
    /// writer may have lengthened them to keep old keys published. A sealed document's
    /// retentions were written by replicas holding the backend's key, whose configs may
    /// be longer than this one's.
    fn cap_retention(&self, doc: &mut KeySetDoc) {
        for k in &mut doc.keys {
            if let Some(retain) = k.retain.filter(|r| *r > self.retention_cap) {
                tracing::warn!(keyset = %self.keyset, key = %k.name, retain, cap = self.retention_cap, "a record of an unsealed lifecycle document keeps its key longer than this key set was ever configured to; capped");
                k.retain = Some(self.retention_cap);
            }
        }
    }

    /// Whether the document last read was sealed (or none was stored yet).
    pub fn is_sealed(&self) -> bool {
        self.sealed || self.version.is_none()
    }

    /// Requires a sealed document from now on: the ledger remembers one from the last run.
    /// Fails if the document read is not sealed (its MAC was stripped).
    pub fn require_sealed(&mut self) -> Result<(), LifecycleError> {
        if !self.is_sealed() {
            return Err(LifecycleError::Unauthentic {
                keyset: self.keyset.clone(),
                how: "it has no MAC, and the last run stored it with one",
            });
        }
        self.sealed = true;
        Ok(())
    }

    /// Forgets what the backend did not hold: the next read checks those records again
    /// (an operator restored their keys and reloaded).
    pub fn forget_unheld(&mut self) {
        self.held.retain(|_, held| held.is_ok());
    }

    /// Raises the longest retention this key set was configured with.
    pub fn raise_retention_cap(&mut self, retention: i64) {
        self.retention_cap = self.retention_cap.max(retention);
    }

    /// Checks every record `doc` may publish or sign with against the key the backend holds
    /// under its name, withholding those it does not vouch for.
    async fn vouch(&mut self, doc: &mut KeySetDoc) -> Result<(), LifecycleError> {
        let prefix = format!("{}-", self.keyset);
        for i in 0..doc.keys.len() {
            let k = &doc.keys[i];
            if k.is_ended() {
                continue;
            }
            let reason =
                if !k.name.starts_with(&prefix) || keyturn_backend::check_name(&k.name).is_err() {
                    Some(format!(
                        "{:?} is not a name keyturn gives the keys of this key set",
                        k.name
                    ))
                } else if k.published_at.is_none() {
                    None
                } else {
                    self.ensure_held(&k.name).await?;
                    self.held.get(&k.name).and_then(|held| unvouched(k, held))
                };
            let known = self
                .doc
                .keys
                .iter()
                .any(|o| o.name == k.name && o.withheld.is_some());
            if let Some(reason) = &reason {
                if !known {
                    let kid = k.kid.clone().unwrap_or_else(|| k.name.clone());
                    tracing::error!(keyset = %self.keyset, kid = %kid, reason = %reason, "a record of the lifecycle document is withheld from the JWKS and from signing");
                    self.withheld_events.push(kid);
                }
            }
            doc.keys[i].withheld = reason;
        }
        Ok(())
    }

    /// Asks the backend what it holds under `name`, unless the answer is cached: its public
    /// key, or why it vouches for no record of that name. Only an unreachable backend is an
    /// error.
    async fn ensure_held(&mut self, name: &str) -> Result<(), LifecycleError> {
        if self.held.contains_key(name) {
            return Ok(());
        }
        let held = match self.backend.public_key(name).await {
            Ok(public) => Ok(public),
            Err(e) if e.is_retryable() => return Err(e.into()),
            Err(BackendError::NotFound(_)) => {
                Err(format!("the backend holds no key named {name:?}"))
            }
            Err(e) => Err(format!("the backend's key {name:?} cannot be read: {e}")),
        };
        self.held.insert(name.to_owned(), held);
        Ok(())
    }

    /// Whether `doc`, just read, is another key set's than the one this engine knows: of
    /// another history, or (where one of the two has none yet) without every key this one
    /// published. None if it is this key set's, or if the engine knows nothing yet.
    fn replaced_by(&self, doc: &KeySetDoc) -> Option<&'static str> {
        let ours = &self.doc;
        match (&ours.history, &doc.history) {
            // Its JWKS version only grows: a lower one is an older copy (a backup restored,
            // a KV rollback), without the keys published since.
            (Some(a), Some(b)) if a == b && doc.jwks_version < ours.jwks_version => {
                return Some("by an older document of its history")
            }
            (Some(a), Some(b)) if a == b => return None,
            (Some(_), Some(_)) => return Some("by a document of another history"),
            _ => {}
        }
        let knows = |kid: &String| doc.keys.iter().any(|k| k.kid.as_ref() == Some(kid));
        if ours.published().filter_map(|k| k.kid.as_ref()).all(knows) {
            None
        } else if doc.keys.is_empty() {
            Some("it is gone")
        } else {
            Some("by a document without keys this one published")
        }
    }

    /// Writes `doc` with check-and-set against the version we read.
    async fn write(&mut self, mut doc: KeySetDoc, now: i64) -> Result<(), LifecycleError> {
        if doc.published_kids() != self.doc.published_kids() {
            doc.jwks_version = self.doc.jwks_version.saturating_add(1);
            doc.jwks_changed_at = now;
        }
        let bytes = serde_json::to_vec(&doc).map_err(|e| LifecycleError::Corrupt {
            keyset: self.keyset.clone(),
            message: e.to_string(),
        })?;
        let bytes = seal(&*self.backend, &self.keyset, &bytes).await?;
        let version = self
            .backend
            .store_state(&self.keyset, &bytes, self.version)
            .await?;
        self.sealed = true;
        self.authenticated = bytes;
        self.doc = doc;
        self.version = Some(version);
        self.changed();
        Ok(())
    }

    /// Runs `op` until it succeeds, re-reading the document after each lost
    /// check-and-set race (another replica wrote first).
    async fn with_retry<T>(
        &mut self,
        now: i64,
        mut op: impl FnMut(&KeySetDoc) -> Result<Option<(KeySetDoc, T)>, LifecycleError>,
    ) -> Result<Option<T>, LifecycleError> {
        for _ in 0..MAX_STEPS {
            let Some((doc, out)) = op(&self.doc)? else {
                return Ok(None);
            };
            match self.write(doc, now).await {
                Ok(()) => return Ok(Some(out)),
                Err(LifecycleError::Backend(BackendError::Conflict)) => {
                    self.reload().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(LifecycleError::Contention(self.keyset.clone()))
    }

    /// Brings the key set in order at `now`: bootstrap, publishing the next key, activating
    /// when nothing is active, removals, destruction. Returns what happened.
    pub async fn tick(&mut self, now: i64) -> Result<Vec<Event>, LifecycleError> {
        let withheld = std::mem::take(&mut self.withheld_events);
        self.unreported
            .extend(withheld.into_iter().map(|kid| Event {
                kind: "withheld",
                kid,
                at: now,
            }));
        // Nothing is acted on while the document holds a record the backend does not vouch
        // for: neither sealed (which would vouch for it) nor moved on from a view without it.
        if self.doc.withheld().next().is_some() {
            return Ok(std::mem::take(&mut self.unreported));
        }
        if !self.is_sealed() {
            tracing::warn!(keyset = %self.keyset, "the lifecycle document has no MAC (stored by a keyturn before documents were sealed); accepted this once and stored sealed");
            self.write(self.doc.clone(), now).await?;
        }
        for _ in 0..MAX_STEPS {
            let Some(step) = plan(&self.doc, now, &self.timing) else {
                self.note_activation(now);
                return Ok(std::mem::take(&mut self.unreported));
            };
            match self.run(step, now).await {
                Ok(Some(event)) => self.unreported.push(event),
                Ok(None) => {}
                Err(LifecycleError::Backend(BackendError::Conflict)) => {
                    self.reload().await?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(LifecycleError::Contention(self.keyset.clone()))
    }

    /// Tells the engine, before its first tick, that the audit log's last record is from
    /// `at`: the first tick then reports every activation since (by schedule while the
    /// daemon was down), not only one from that very instant.
    pub fn audited_until(&mut self, at: i64) {
        if self.seen_active.is_none() {
            self.audited_until = Some(at);
        }
    }

    /// Reports a key that became active since the last tick (by its schedule, a revoke, or
    /// this tick's own start of the key set) and, if still published, the key it took over
    /// from. Before its first tick the engine knows of no earlier key: it reports the
    /// activations since the audit log's last record ([`Self::audited_until`]), else only
    /// a key active from this very instant.
    fn note_activation(&mut self, now: i64) {
        let doc = &self.doc;
        let active = doc.active(now);
        let kid = active.and_then(|i| doc.keys[i].kid.clone());
        if self.seen_active.is_none() {
            if let Some(since) = self.audited_until.take() {
                let missed: Vec<Event> = self
                    .activations_since(since, now)
                    .into_iter()
                    .filter(|e| !self.unreported.contains(e))
                    .collect();
                // Before this tick's own events: they are older.
                self.unreported.splice(0..0, missed);
                self.seen_active = Some(kid);
                return;
            }
        }
        let at = active.and_then(|i| doc.keys[i].activate_at).unwrap_or(now);
        let changed = match &self.seen_active {
            Some(seen) => *seen != kid,
            None => at == now,
        };
        if changed {
            let reported = self
                .unreported
                .iter()
                .any(|e| e.kind == "activated" && Some(&e.kid) == kid.as_ref());
            let mut events = Vec::new();
            if let Some(kid) = kid.clone().filter(|_| !reported) {
                events.push(Event {
                    kind: "activated",
                    kid,
                    at,
                });
            }
            // Changed: the key seen before is not the one active now.
            let before = self.seen_active.clone().flatten();
            if let Some(kid) = before.filter(|s| doc.published().any(|k| k.kid.as_ref() == Some(s)))
            {
                events.push(Event {
                    kind: "retired",
                    kid,
                    at,
                });
            }
            self.unreported.extend(events);
        }
        self.seen_active = Some(kid);
    }

    /// Each key that became active in (`since`, `now`], in order, and the key it took
    /// over from unless that one was revoked (a revoke reports itself).
    fn activations_since(&self, since: i64, now: i64) -> Vec<Event> {
        let mut order: Vec<(i64, &KeyRecord)> = self
            .doc
            .keys
            .iter()
            .filter(|k| k.kid.is_some())
            .filter_map(|k| Some((k.activate_at?, k)))
            .filter(|(at, _)| *at <= now)
            .collect();
        order.sort_unstable_by_key(|(at, _)| *at);
        let split = order.partition_point(|(at, _)| *at <= since);
        let mut before = split.checked_sub(1).map(|i| order[i].1);
        let kid = |k: &KeyRecord| k.kid.clone().unwrap_or_default();
        let mut events = Vec::new();
        for &(at, key) in &order[split..] {
            events.push(Event {
                kind: "activated",
                kid: kid(key),
                at,
            });
            if let Some(prev) = before.filter(|p| p.revoked_at.is_none_or(|r| r > at)) {
                events.push(Event {
                    kind: "retired",
                    kid: kid(prev),
                    at,
                });
            }
            before = Some(key);
        }
        events
    }

    /// A tick inside an admin operation: its events stay for the maintenance task's next
    /// tick to report (the operation returns something else).
    async fn tick_keeping_events(&mut self, now: i64) -> Result<(), LifecycleError> {
        let events = self.tick(now).await?;
        self.unreported.extend(events);
        Ok(())
    }

    async fn run(&mut self, step: Step, now: i64) -> Result<Option<Event>, LifecycleError> {
        let mut doc = self.doc.clone();
        let event = match step {
            Step::Intend => {
                let name = new_key_name(&self.keyset)?;
                doc.keys.push(KeyRecord {
                    name: name.clone(),
                    key_type: self.key_type,
                    created_at: now,
                    public_key: None,
                    kid: None,
                    published_at: None,
                    activate_at: None,
                    removed_at: None,
                    revoked_at: None,
                    destroyed_at: None,
                    retain: Some(self.timing.retention()),
                    withheld: None,
                    other: serde_json::Map::new(),
                });
                None
            }
            Step::Identify => {
                doc.history = Some(random_hex(16)?);
                None
            }
            Step::Retain => {
                let retention = self.timing.retention();
                for i in doc.retain_short(now, retention).collect::<Vec<_>>() {
                    doc.keys[i].retain = Some(retention);
                }
                None
            }
            Step::Publish(name) => {
                let Some(i) = doc.find(&name) else {
                    return Ok(None);
                };
                let public = self.backend.create_key(&name, doc.keys[i].key_type).await?;
                self.held.insert(name.clone(), Ok(public.clone()));
                let at = activation_time(&doc, now, &self.timing, &self.schedule);
                let kid = public.kid();
                let k = &mut doc.keys[i];
                k.public_key = Some(B64.encode(public.spki_der()));
                k.kid = Some(kid.clone());
                k.published_at = Some(now);
                k.activate_at = Some(at);
                Some(Event {
                    kind: "published",
                    kid,
                    at: now,
                })
            }
            Step::ActivateNow(name) => {
                let Some(i) = doc.find(&name) else {
                    return Ok(None);
                };
                doc.keys[i].activate_at = Some(now);
                Some(Event {
                    kind: "activated",
                    kid: doc.keys[i].kid.clone().unwrap_or(name),
                    at: now,
                })
            }
            Step::Remove(name) => {
                let Some(i) = doc.find(&name) else {
                    return Ok(None);
                };
                doc.keys[i].removed_at = Some(now);
                Some(Event {
                    kind: "removed",
                    kid: doc.keys[i].kid.clone().unwrap_or(name),
                    at: now,
                })
            }
            Step::Destroy(name) => {
                self.backend.destroy(&name).await?;
                let Some(i) = doc.find(&name) else {
                    return Ok(None);
                };
                doc.keys[i].destroyed_at = Some(now);
                Some(Event {
                    kind: "destroyed",
                    kid: doc.keys[i].kid.clone().unwrap_or(name),
                    at: now,
                })
            }
            Step::Forget => {
                let ended = doc.keys.iter().filter(|k| k.is_ended()).count();
                let mut excess = ended.saturating_sub(ENDED_HISTORY);
                doc.keys.retain(|k| {
                    let drop = excess > 0 && k.is_ended() && k.destroyed_at.is_some();
                    excess -= usize::from(drop);
                    !drop
                });
                None
            }
        };
        self.write(doc, now).await?;
        Ok(event)
    }

    /// Rotates now: the pending key becomes active as soon as it has been published for
    /// the publish lead (at once if it has). Returns when it becomes active.
    pub async fn rotate_now(&mut self, now: i64) -> Result<i64, LifecycleError> {
        self.tick_keeping_events(now).await?;
        let lead = self.timing.publish_lead();
        let at = self
            .with_retry(now, |doc| {
                let Some(p) = doc.pending(now) else {
                    return Err(LifecycleError::Refused(
                        "no pending key to rotate to".into(),
                    ));
                };
                let mut doc = doc.clone();
                let k = &mut doc.keys[p];
                let at = k.published_at.unwrap_or(now).saturating_add(lead).max(now);
                if k.activate_at.is_some_and(|t| t <= at) {
                    // Already scheduled at or before the earliest safe instant.
                    return Ok(None);
                }
                k.activate_at = Some(at);
                Ok(Some((doc, at)))
            })
            .await?;
        let at = match at {
            Some(at) => at,
            None => self
                .doc
                .pending(now)
                .and_then(|p| self.doc.keys[p].activate_at)
                .unwrap_or(now),
        };
        self.tick_keeping_events(now).await?;
        Ok(at)
    }

    /// Revokes `kid`: out of the JWKS at once. If it was the active key, the pending key
    /// becomes active at once (verifiers that cached the JWKS before it was published refetch
    /// on the unknown kid). Returns the kid that is active afterwards.
    pub async fn revoke(&mut self, kid: &str, now: i64) -> Result<Option<String>, LifecycleError> {
        // Make sure a published successor exists before the revoking write.
        self.tick_keeping_events(now).await?;
        self.with_retry(now, |doc| {
            let Some(i) = doc.keys.iter().position(|k| k.kid.as_deref() == Some(kid)) else {
                return Err(LifecycleError::UnknownKid(kid.to_owned()));
            };
            // A withheld record is revoked to be done with it.
            if !doc.keys[i].is_published() && doc.keys[i].withheld.is_none() {
                return Err(LifecycleError::Refused(format!(
                    "key {kid:?} is already out of the JWKS"
                )));
            }
            let was_active = doc.active(now) == Some(i);
            let mut doc = doc.clone();
            doc.keys[i].revoked_at = Some(now);
            doc.keys[i].withheld = None;
            if was_active {
                if let Some(p) = doc.pending(now) {
                    doc.keys[p].activate_at = Some(now);
                }
            } else if doc.keys[i].activate_at.is_some_and(|t| t > now) {
                doc.keys[i].activate_at = None;
            }
            Ok(Some((doc, ())))
        })
        .await?;
        self.tick_keeping_events(now).await?;
        Ok(self
            .doc
            .active(now)
            .and_then(|i| self.doc.keys[i].kid.clone()))
    }
}

/// Why what the backend holds under `k`'s name does not vouch for `k`, if it does not.
fn unvouched(k: &KeyRecord, held: &Result<PublicKey, String>) -> Option<String> {
    match held {
        Err(why) => Some(why.clone()),
        Ok(public)
            if k.kid.as_deref() == Some(public.kid().as_str())
                && k.public_key.as_deref() == Some(B64.encode(public.spki_der()).as_str()) =>
        {
            None
        }
        Ok(public) => Some(format!(
            "the backend holds another public key under {:?} (kid {})",
            k.name,
            public.kid()
        )),
    }
}

/// A fresh backend key name: the key set's name and 64 random bits.
fn new_key_name(keyset: &str) -> Result<String, LifecycleError> {
    Ok(format!("{keyset}-{}", random_hex(8)?))
}

/// `n` random bytes, in hex.
fn random_hex(n: usize) -> Result<String, LifecycleError> {
    use aws_lc_rs::rand::SecureRandom;
    let mut bytes = vec![0u8; n];
    aws_lc_rs::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| LifecycleError::Refused("no randomness available".into()))?;
    Ok(crate::config::secret::to_hex(&bytes))
}

/// The document a stored state holds, its MAC unchecked (tests look into what is stored).
#[cfg(test)]
pub fn stored_doc(bytes: &[u8]) -> KeySetDoc {
    let stored = Stored::parse(bytes).unwrap();
    KeySetDoc::from_bytes(&stored.document).unwrap()
}

/// The JSON text a stored state holds, its MAC unchecked.
#[cfg(test)]
pub fn stored_json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(&Stored::parse(bytes).unwrap().document).unwrap()
}

#[cfg(test)]
mod tests;

//! A running key set: its engine, its published view, its backend's health, and the
//! background task that keeps it in order.

use crate::config::KeySetConfig;
use crate::core::clock::Clock;
use crate::core::lifecycle::{Engine, Event, LifecycleError};
use crate::core::published::{Published, PublishedKey};
use crate::core::statuslist::StatusLists;
use arc_swap::ArcSwap;
use keyturn_backend::KeyBackend;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;

/// Longest wait between two ticks, even with nothing scheduled: picks up clock jumps and
/// recovers a backend that came back.
const MAX_IDLE: i64 = 60;

/// Why a key set does not sign now (each a 503: the same request may do later).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CannotSign {
    /// Its active or next key failed the last check: an operator must restore it.
    KeysUnusable,
    /// The shared state could not be read lately.
    OutOfSync,
    /// No key is active yet.
    NoActiveKey,
    /// The active key's record does not yet keep it published for this config's tokens.
    RetentionUnrecorded,
    /// No one may sign with it any more (a reload took the right from the request's
    /// client after it was let in): its removal counts from then.
    NoSigners,
}

impl CannotSign {
    /// What to tell the caller.
    pub fn message(self) -> &'static str {
        match self {
            CannotSign::KeysUnusable => {
                "the key set's signing key cannot be used; an operator must restore it (see the daemon's log)"
            }
            CannotSign::OutOfSync => {
                "the key set's shared state could not be read lately; retry shortly"
            }
            CannotSign::NoActiveKey => "the key set has no active key yet; retry shortly",
            CannotSign::RetentionUnrecorded => {
                "the key set's shared state could not be brought in order for this configuration yet; retry shortly"
            }
            CannotSign::NoSigners => {
                "no client may sign with this key set any more (the configuration changed)"
            }
        }
    }
}

/// What is known of a key set from before it is opened: from the running key set a reload
/// replaces, or from the last run (the ledger).
#[derive(Debug, Clone, Copy, Default)]
pub struct Past {
    /// The longest retention its settings had (seconds; 0: none known).
    pub retention: i64,
    /// Whether its document was stored sealed: one without a MAC is then refused.
    pub sealed: bool,
    /// Since when no client may sign with it (None: one may, or nothing is known).
    pub unsigned_since: Option<i64>,
    /// How many times its status lists had been written (their stored copy must count at
    /// least these: an older one would undo changes and reservations).
    pub status_writes: u64,
}

/// A key set in the daemon.
pub struct KeySet {
    /// Its configuration.
    pub config: KeySetConfig,
    /// Its backend.
    pub backend: Arc<dyn KeyBackend>,
    /// Its token status lists, if its tokens carry a `status` claim.
    pub status: Option<Arc<StatusLists>>,
    // Rebuilt by the engine's `on_change` as each document is written or read.
    published: Arc<ArcSwap<Published>>,
    engine: Mutex<Engine>,
    /// Whether the last backend round trip succeeded.
    backend_ok: AtomicBool,
    // Whether its active and next key could be used when last checked (the cause of a
    // failure is logged), read on every signature.
    keys_ok: AtomicBool,
    // Since when no client of the running config may sign with it (i64::MAX: some may).
    unsigned_since: AtomicI64,
    // The longest retention of the settings this key set had before (the last run, or the
    // key set a reload replaced): its tokens may live that long.
    retention_floor: AtomicI64,
    // When a tick last read the shared state (backends shared by replicas only).
    synced_at: AtomicI64,
    // Whether its document is stored sealed (see `Engine::is_sealed`).
    sealed: AtomicBool,
    // Why the stored state was not acted on at the last tick (replaced, or failing its
    // MAC), for /readyz.
    state_refused: std::sync::Mutex<Option<String>>,
    wake: Notify,
    // Cancelled when a reload replaces or drops this key set.
    stopped: CancellationToken,
}

impl KeySet {
    /// Loads the key set's document and builds its published view, without ticking.
    pub async fn open(
        config: KeySetConfig,
        backend: Arc<dyn KeyBackend>,
        past: Past,
    ) -> Result<Arc<Self>, LifecycleError> {
        let mut engine = Engine::new(
            &config.name,
            config.timing,
            config.schedule.clone(),
            config.key_type,
            backend.clone(),
        );
        engine.raise_retention_cap(past.retention);
        engine.reload().await?;
        if past.sealed {
            engine.require_sealed()?;
        }
        if let Some(k) = engine
            .doc()
            .published()
            .find(|k| k.key_type != config.key_type)
        {
            return Err(LifecycleError::Refused(format!(
                "key set {:?} holds published keys of type {:?} but is configured for {} ({:?}); \
                 restore its algorithm, or create a new key set under another name",
                config.name, k.key_type, config.algorithm, config.key_type
            )));
        }
        let published = Arc::new(ArcSwap::from_pointee(Published::build(
            &config,
            engine.doc().clone(),
        )));
        let status = match &config.status_list {
            Some(settings) => Some(Arc::new(
                StatusLists::open(
                    &config.name,
                    settings.clone(),
                    config.timing,
                    backend.clone(),
                    past.status_writes,
                )
                .await
                .map_err(LifecycleError::from)?,
            )),
            None => None,
        };
        let sealed = AtomicBool::new(engine.is_sealed());
        let (view, view_config) = (published.clone(), config.clone());
        engine.on_change(Box::new(move |doc| {
            view.store(Arc::new(Published::build(&view_config, doc.clone())));
        }));
        Ok(Arc::new(KeySet {
            config,
            backend,
            status,
            published,
            engine: Mutex::new(engine),
            backend_ok: AtomicBool::new(false),
            keys_ok: AtomicBool::new(true),
            unsigned_since: AtomicI64::new(past.unsigned_since.unwrap_or(i64::MAX)),
            retention_floor: AtomicI64::new(past.retention),
            synced_at: AtomicI64::new(i64::MIN),
            sealed,
            state_refused: std::sync::Mutex::new(None),
            wake: Notify::new(),
            stopped: CancellationToken::new(),
        }))
    }

    /// Stops this key set's maintenance task (a reload replaced or dropped it).
    pub fn stop(&self) {
        self.stopped.cancel();
    }

    /// Stops this key set for a reload that replaces it, and returns once an admin
    /// operation under way on it has finished (none starts after): its successor then
    /// re-reads the state ([`Self::refresh`]) and misses no revoke made here.
    pub async fn hand_over(&self) {
        self.stopped.cancel();
        drop(self.engine.lock().await);
    }

    /// Re-reads the state (and the status lists) and publishes what it holds.
    pub async fn refresh(&self) -> Result<(), LifecycleError> {
        self.engine.lock().await.reload().await?;
        if let Some(status) = &self.status {
            status.refresh().await.map_err(LifecycleError::from)?;
        }
        Ok(())
    }

    /// Resolves when a reload has replaced or dropped this key set.
    pub async fn stopped(&self) {
        self.stopped.cancelled().await;
    }

    /// At a reload that keeps it: checks its withheld records against the backend again
    /// (their keys may have been restored) and its keys' usability.
    pub async fn recheck(&self, now: i64) -> Result<(), LifecycleError> {
        if self.published().doc.withheld().next().is_some() {
            let mut engine = self.engine.lock().await;
            engine.forget_unheld();
            engine.reload().await?;
        }
        if !self.keys_usable() {
            self.recheck_keys(now).await?;
        }
        Ok(())
    }

    /// The name.
    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// The current published view. Never waits.
    pub fn published(&self) -> Arc<Published> {
        self.published.load_full()
    }

    /// The current published view for a moment (a response): no reference count is
    /// touched, so the JWKS listener's threads share no written cache line.
    pub fn view(&self) -> arc_swap::Guard<Arc<Published>> {
        self.published.load()
    }

    /// Whether key `kid` of `published` (a view taken earlier) is still in the JWKS: a key
    /// revoked since is not, and tokens it signed would not verify.
    pub fn still_publishes(&self, published: &Arc<Published>, kid: &str) -> bool {
        let now = self.published.load();
        Arc::ptr_eq(&now, published) || now.by_kid.contains_key(kid)
    }

    /// Whether it signs at `now` ([`Self::signer`]), the backend's last answer was a
    /// success and no record of its document is withheld.
    pub fn ready(&self, now: i64) -> bool {
        self.not_ready_reason(now).is_none()
    }

    /// Whether this replica's view of the shared state is recent (always, on a backend no
    /// other replica shares). A view older than the sync delay, which the publish lead and
    /// the retention allow for, means reads are failing, and another replica may have
    /// published, rotated or revoked without this one knowing: it must not sign (and is
    /// not ready) until a read succeeds again.
    pub fn in_sync(&self, now: i64) -> bool {
        let timing = &self.config.timing;
        if timing.poll_interval().is_none() {
            return true;
        }
        let age = now.saturating_sub(self.synced_at.load(Ordering::Relaxed));
        age <= timing.sync_delay
    }

    /// The key that signs at `now` in `published`, if signing is safe.
    pub fn signer<'a>(
        &self,
        published: &'a Published,
        now: i64,
    ) -> Result<&'a PublishedKey, CannotSign> {
        if !self.keys_usable() {
            return Err(CannotSign::KeysUnusable);
        }
        if !self.in_sync(now) {
            return Err(CannotSign::OutOfSync);
        }
        let signer = published.signer(now).ok_or_else(|| {
            // A withheld record may be the one that would sign: an operator must act.
            if published.doc.withheld().next().is_some() {
                CannotSign::KeysUnusable
            } else {
                CannotSign::NoActiveKey
            }
        })?;
        // A replica with a shorter max_token_ttl wrote the key and this one has not yet
        // recorded its longer retention (its tick does that first, before signing; the write
        // failed or is under way): its tokens could outlive the key in the JWKS.
        if !signer.retained {
            return Err(CannotSign::RetentionUnrecorded);
        }
        if self.unsigned_since.load(Ordering::Relaxed) <= now {
            return Err(CannotSign::NoSigners);
        }
        Ok(signer)
    }

    /// Whether the active and next key could be used when last checked ([`Self::recheck_keys`]).
    pub fn keys_usable(&self) -> bool {
        self.keys_ok.load(Ordering::Relaxed)
    }

    /// Runs `check_keys`. A key the backend cannot use does not stop the daemon:
    /// the key set keeps serving its JWKS (verifiers still need it) but is not ready and
    /// refuses to sign, with the cause in the log, until a reload or restart finds the key
    /// usable again. Only an unreachable backend is an error (to retry).
    pub async fn recheck_keys(&self, now: i64) -> Result<(), LifecycleError> {
        let usable = match self.check_keys(now).await {
            Ok(()) => true,
            Err(e) if e.is_retryable() => return Err(e),
            Err(e) => {
                tracing::error!(keyset = %self.name(), error = %e, "key set cannot sign: its JWKS is served, signing is refused");
                false
            }
        };
        if usable && !self.keys_usable() {
            tracing::info!(keyset = %self.name(), "key set's keys are usable again");
        }
        self.keys_ok.store(usable, Ordering::Relaxed);
        Ok(())
    }

    /// Whether the last backend round trip succeeded.
    pub fn backend_ok(&self) -> bool {
        self.backend_ok.load(Ordering::Relaxed)
    }

    /// Records the outcome of a backend round trip (signing reports here too). A failure
    /// wakes the maintenance task, whose tick then probes the backend with backoff.
    pub fn note_backend(&self, ok: bool) {
        // Read first: every signature reports, and a write on each would move the cache
        // line between the cores.
        if self.backend_ok.load(Ordering::Relaxed) != ok
            && self.backend_ok.swap(ok, Ordering::Relaxed)
            && !ok
        {
            self.wake.notify_one();
        }
    }

    /// The time of its last successful tick (None before the first).
    pub fn synced_at(&self) -> Option<i64> {
        Some(self.synced_at.load(Ordering::Relaxed)).filter(|t| *t != i64::MIN)
    }

    /// Tells the engine, before its first tick, when the audit log's last record was
    /// written: that tick reports the activations since (see `Engine::audited_until`).
    pub async fn audited_until(&self, at: i64) {
        self.engine.lock().await.audited_until(at);
    }

    /// One round: re-read the state (another replica's writes; a state deleted or replaced
    /// under a backend of one daemon shows here too), bring the key set in order, publish
    /// the result.
    pub async fn tick(&self, now: i64) -> Result<Vec<Event>, LifecycleError> {
        let mut engine = self.engine.lock().await;
        let result = async {
            engine.reload().await?;
            let events = engine.tick(now).await?;
            // Another replica's status changes: served here within the sync delay, like
            // its lifecycle steps.
            if let (Some(status), Some(_)) = (&self.status, self.config.timing.poll_interval()) {
                status.refresh().await.map_err(LifecycleError::from)?;
            }
            Ok(events)
        }
        .await;
        self.sealed.store(engine.is_sealed(), Ordering::Relaxed);
        let refused = match &result {
            Err(
                e @ (LifecycleError::Replaced { .. }
                | LifecycleError::Unauthentic { .. }
                | LifecycleError::StatusLists(_)),
            ) => Some(e.to_string()),
            _ => None,
        };
        *self
            .state_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = refused;
        match &result {
            Ok(_) => {
                self.synced_at.fetch_max(now, Ordering::Relaxed);
                self.note_backend(true)
            }
            // Any backend failure, transient or not (a read-only or full disk), or a state
            // replaced under it, means the key set cannot be kept in order: not ready until
            // a tick succeeds again.
            Err(
                LifecycleError::Backend(_)
                | LifecycleError::Contention(_)
                | LifecycleError::Replaced { .. }
                | LifecycleError::Unauthentic { .. }
                | LifecycleError::StatusLists(_),
            ) => self.note_backend(false),
            Err(_) => {}
        }
        result
    }

    /// Since when no one may sign with this key set under `config` (a client, or the
    /// Kubernetes signer): None while one may; else since it was first so, or `now`.
    pub fn unsigned_since_under(&self, config: &crate::config::Config, now: i64) -> Option<i64> {
        let k8s = config
            .server
            .k8s_signer
            .as_ref()
            .is_some_and(|(_, keyset)| keyset == self.name());
        let client = config.clients.iter().any(|c| c.may_use(self.name()));
        if k8s || client {
            None
        } else {
            Some(self.unsigned_since().unwrap_or(now))
        }
    }

    /// Records, at start and at each reload, what [`Self::unsigned_since_under`] says of
    /// `config`: from then on the key set signs nothing.
    pub fn note_signers(&self, config: &crate::config::Config, now: i64) {
        let since = self.unsigned_since_under(config, now);
        self.unsigned_since
            .store(since.unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    /// What a successor opened at a reload must know of it.
    pub fn past(&self) -> Past {
        Past {
            retention: self.retention(),
            sealed: self.sealed.load(Ordering::Relaxed),
            unsigned_since: self.unsigned_since(),
            status_writes: self.status_writes(),
        }
    }

    /// How many times its status lists were written (0 without status lists).
    pub fn status_writes(&self) -> u64 {
        self.status.as_ref().map_or(0, |s| s.view().writes)
    }

    /// Whether its document is stored sealed with the backend's MAC.
    pub fn sealed(&self) -> bool {
        self.sealed.load(Ordering::Relaxed)
    }

    /// Why it is not ready at `now`, if it is not.
    pub fn not_ready_reason(&self, now: i64) -> Option<String> {
        let refused = self
            .state_refused
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if refused.is_some() {
            return refused;
        }
        let published = self.published();
        if let Some((k, why)) = published.doc.withheld().next() {
            let kid = k.kid.as_deref().unwrap_or(&k.name);
            return Some(format!(
                "key {kid} of its lifecycle document is withheld: {why}; restore the backend's \
                 key and reload, or revoke the key (keyturn revoke {} {kid})",
                self.name()
            ));
        }
        if !self.backend_ok() {
            return Some("its backend's last answer was an error (see the log)".into());
        }
        match self.signer(&published, now) {
            Ok(_) | Err(CannotSign::NoSigners) => None,
            Err(why) => Some(why.message().to_owned()),
        }
    }

    /// Since when no client may sign with it; None while one may.
    pub fn unsigned_since(&self) -> Option<i64> {
        let since = self.unsigned_since.load(Ordering::Relaxed);
        (since != i64::MAX).then_some(since)
    }

    /// The longest retention its settings had: how long its last token may live.
    pub fn retention(&self) -> i64 {
        self.config
            .timing
            .retention()
            .max(self.retention_floor.load(Ordering::Relaxed))
    }

    /// From when the key set may leave the config: every token it signed has expired, so
    /// no verifier needs its keys. None while a client may still sign with it.
    pub fn removable_at(&self) -> Option<i64> {
        self.unsigned_since()
            .map(|since| since.saturating_add(self.retention()))
    }

    /// Asks the backend for the key that signs at `now` and the one that signs next, and
    /// checks each is the key the JWKS publishes: a wrong key-encryption key, a key file
    /// lost or damaged, or a key deleted from Vault or KMS shows here, with its cause,
    /// rather than in every signature. It also fills the file backend's key cache before
    /// the first request. [`Self::recheck_keys`] acts on the answer.
    async fn check_keys(&self, now: i64) -> Result<(), LifecycleError> {
        let published = self.published();
        let doc = &published.doc;
        let active = published.signer(now).map(|k| (&k.name, &k.kid));
        let pending = doc
            .pending(now)
            .and_then(|i| Some((&doc.keys[i].name, doc.keys[i].kid.as_ref()?)));
        let fix = "restore the key (and the key-encryption key it was stored under) from a \
                   backup, then reload (restart, for the key-encryption key); if it is lost for \
                   good, configure the key set under a new name (its tokens stop verifying)";
        for (name, kid) in active.into_iter().chain(pending) {
            let held = match self.backend.public_key(name).await {
                Ok(public) => public.kid(),
                Err(e) if e.is_retryable() => return Err(e.into()),
                Err(e) => {
                    return Err(LifecycleError::Refused(format!(
                        "its key {kid} ({name:?}) cannot be used: {e}; {fix}"
                    )))
                }
            };
            if held != *kid {
                return Err(LifecycleError::Refused(format!(
                    "the backend's key {name:?} is not the published key {kid} (it holds {held}): \
                     the key was replaced outside keyturn; {fix}"
                )));
            }
        }
        Ok(())
    }

    /// Admin: rotate now (as soon as safe). Returns when the new key signs.
    pub async fn rotate_now(&self, now: i64) -> Result<i64, LifecycleError> {
        let mut engine = self.engine.lock().await;
        self.running()?;
        let result = engine.rotate_now(now).await;
        self.wake.notify_one();
        result
    }

    /// Admin: revoke `kid`. Returns the kid active afterwards.
    pub async fn revoke(&self, kid: &str, now: i64) -> Result<Option<String>, LifecycleError> {
        let mut engine = self.engine.lock().await;
        self.running()?;
        let result = engine.revoke(kid, now).await;
        self.wake.notify_one();
        result
    }

    /// Refuses an admin operation on a key set a reload has replaced (the request began
    /// before it): the client asks again and reaches the successor.
    fn running(&self) -> Result<(), LifecycleError> {
        if self.stopped.is_cancelled() {
            return Err(LifecycleError::Reloading(self.name().to_owned()));
        }
        Ok(())
    }

    /// The next instant the key set needs a tick.
    async fn next_wake(&self, now: i64) -> i64 {
        let engine = self.engine.lock().await;
        let timing = engine.timing();
        let mut next = now + MAX_IDLE;
        if let Some(t) = engine.doc().next_event(now, timing) {
            next = next.min(t);
        }
        if let Some(poll) = timing.poll_interval() {
            next = next.min(now + poll);
        }
        next
    }

    /// Keeps the key set in order until `shutdown`: ticks at every scheduled event, retries
    /// failures with capped exponential backoff, and hands each lifecycle event to `report`
    /// (the daemon writes them to the audit log).
    pub async fn run(
        self: Arc<Self>,
        clock: Arc<dyn Clock>,
        report: impl Fn(&str, &Event) + Send,
        shutdown: CancellationToken,
    ) {
        let mut backoff = 1i64;
        loop {
            // A reload that replaced it (a wake may be pending too) ends it before a tick.
            if self.stopped.is_cancelled() {
                return;
            }
            let now = clock.now();
            let wait = match self.tick(now).await {
                Ok(events) => {
                    backoff = 1;
                    for event in events {
                        tracing::info!(keyset = %self.name(), kid = %event.kid, event = event.kind, "key lifecycle");
                        report(self.name(), &event);
                    }
                    (self.next_wake(now).await - now).max(1)
                }
                Err(e) => {
                    // Shared state is read again at the poll interval at the latest.
                    let poll = self.config.timing.poll_interval().unwrap_or(MAX_IDLE);
                    let wait = backoff.min(poll);
                    tracing::warn!(keyset = %self.name(), error = %e, retry_in_s = wait, "key set maintenance failed");
                    backoff = (backoff * 2).min(MAX_IDLE);
                    wait
                }
            };
            let wait = Duration::from_secs(wait.unsigned_abs());
            tokio::select! {
                biased;
                () = shutdown.cancelled() => return,
                () = self.stopped.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::timing::Timing;
    use crate::config::{Config, Env};
    use crate::core::testing::Rigged;

    /// `toml` parsed, and its first key set opened on a rigged backend of its own.
    async fn opened(toml: &str) -> (Config, Arc<KeySet>, Arc<Rigged>) {
        let config = Config::parse(toml, Env::default()).unwrap();
        let backend = Arc::new(Rigged::default());
        let keyset = KeySet::open(config.keysets[0].clone(), backend.clone(), Past::default())
            .await
            .unwrap();
        (config, keyset, backend)
    }

    /// An ES256 key set rotated daily, with `timing` as on a backend shared by replicas.
    fn shared_config(timing: Timing) -> KeySetConfig {
        let mut config = Config::parse(crate::core::testing::KEYSET, Env::default())
            .unwrap()
            .keysets[0]
            .clone();
        assert_eq!(config.timing.sync_delay, 0, "a file backend is not shared");
        config.timing = timing;
        config
    }

    /// A revoke takes the key out of the JWKS and out of signing as soon as the revoking
    /// write lands, not once the successor's successor is made (a slow RSA key, a remote
    /// backend's round trip): a token it signed then would not verify.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_revoked_key_stops_signing_when_its_revoke_is_written() {
        let (_, keyset, backend) = opened(crate::core::testing::KEYSET).await;
        let t0 = 1_700_000_000;
        keyset.tick(t0).await.unwrap();
        let before = keyset.published();
        let active = keyset.signer(&before, t0).unwrap().kid.clone();
        backend.hold_creates.store(true, Ordering::Relaxed);
        let revoking = {
            let keyset = keyset.clone();
            let kid = active.clone();
            tokio::spawn(async move { keyset.revoke(&kid, t0).await })
        };
        // The revoke is written; the next key is being made.
        backend.waiting.acquire().await.unwrap().forget();
        let blob = backend.inner.load_state("default").await.unwrap().unwrap();
        let stored = crate::core::lifecycle::stored_doc(&blob.data);
        assert!(stored.published().all(|k| k.kid.as_ref() != Some(&active)));
        let now = keyset.published();
        assert!(!now.by_kid.contains_key(&active));
        let signer = keyset.signer(&now, t0).unwrap();
        assert_ne!(signer.kid, active);
        assert!(!keyset.still_publishes(&before, &active));
        backend.released.add_permits(1);
        let after = revoking.await.unwrap().unwrap();
        assert_eq!(after.as_deref(), Some(signer.kid.as_str()));
    }

    /// A reload that replaces a key set while an admin revoke runs on it: the hand-over
    /// waits for the revoke, the successor (which read the state before it) re-reads and
    /// no longer publishes the key, and no admin operation lands on the old one after.
    /// (One thread: a yield runs the hand-over as far as it can go.)
    #[tokio::test]
    async fn a_revoke_during_a_reload_reaches_the_successor() {
        let (config, old, backend) = opened(crate::core::testing::KEYSET).await;
        let t0 = 1_700_000_000;
        old.tick(t0).await.unwrap();
        let successor = KeySet::open(config.keysets[0].clone(), backend.clone(), Past::default())
            .await
            .unwrap();
        let active = old.signer(&old.published(), t0).unwrap().kid.clone();
        backend.hold_creates.store(true, Ordering::Relaxed);
        let revoking = {
            let (old, kid) = (old.clone(), active.clone());
            tokio::spawn(async move { old.revoke(&kid, t0).await })
        };
        backend.waiting.acquire().await.unwrap().forget();
        let handing = {
            let old = old.clone();
            tokio::spawn(async move { old.hand_over().await })
        };
        assert!(
            successor.published().by_kid.contains_key(&active),
            "read before"
        );
        tokio::task::yield_now().await;
        assert!(!handing.is_finished(), "waits for the revoke under way");
        backend.released.add_permits(1);
        revoking.await.unwrap().unwrap();
        handing.await.unwrap();
        successor.refresh().await.unwrap();
        assert!(!successor.published().by_kid.contains_key(&active));
        let err = old.rotate_now(t0).await.unwrap_err();
        assert!(matches!(err, LifecycleError::Reloading(_)), "{err}");
        assert!(err.is_retryable());
    }

    /// On a backend shared by replicas, a key set whose reads of the shared state fail
    /// stops signing (and is not ready) once its view is older than the sync delay (which
    /// the publish lead and retention include); a good read brings it back.
    #[tokio::test]
    async fn a_replica_that_cannot_read_the_shared_state_stops_after_the_sync_delay() {
        let config = shared_config(Timing::new(600, 300, 60, true));
        assert_eq!(config.timing.sync_delay, 47);
        assert_eq!(config.timing.poll_interval(), Some(15));
        let backend = Arc::new(Rigged {
            shared: true,
            ..Default::default()
        });
        let keyset = KeySet::open(config, backend.clone(), Past::default())
            .await
            .unwrap();
        let t0 = 1_700_000_000;
        keyset.tick(t0).await.unwrap();
        // Stale beyond the delay: a 30 s window, one read (15 s) and two seconds of rounding.
        assert_eq!(keyset.config.timing.publish_lead(), 300 + 60 + 47);
        assert!(keyset.ready(t0 + 47));
        assert!(!keyset.in_sync(t0 + 48), "no read for too long");
        keyset.tick(t0 + 15).await.unwrap();
        assert!(keyset.in_sync(t0 + 62));
        backend.fail_reads.store(true, Ordering::Relaxed);
        assert!(keyset.tick(t0 + 30).await.is_err());
        assert!(
            keyset.in_sync(t0 + 62),
            "within reach of the last good read"
        );
        assert!(!keyset.in_sync(t0 + 63));
        assert!(!keyset.ready(t0 + 63));
        backend.fail_reads.store(false, Ordering::Relaxed);
        keyset.tick(t0 + 70).await.unwrap();
        assert!(keyset.ready(t0 + 70));
    }

    /// The key set of the Kubernetes signer is signed with though no client lists it: it
    /// may not leave the config as if unused.
    #[tokio::test]
    async fn the_kubernetes_signer_counts_as_a_signer() {
        let toml = format!(
            "[server]\nk8s_signer_socket = \"@kt-test\"\nk8s_signer_keyset = \"default\"\n{}",
            crate::core::testing::KEYSET
        );
        let (config, keyset, _) = opened(&toml).await;
        assert!(config.clients.is_empty());
        keyset.note_signers(&config, 1_700_000_000);
        assert_eq!(keyset.unsigned_since(), None);
        assert_eq!(keyset.removable_at(), None);
        let mut without = config.clone();
        without.server.k8s_signer = None;
        keyset.note_signers(&without, 1_700_000_000);
        assert_eq!(keyset.unsigned_since(), Some(1_700_000_000));
    }

    /// From its `unsigned_since` on, a key set signs nothing, even for a request let in
    /// before the reload took its client's right: its removal counts from then. It stays
    /// ready (its JWKS is served until it leaves).
    #[tokio::test]
    async fn a_key_set_signs_nothing_once_no_one_may_sign() {
        let toml = format!(
            "{}\n[[client]]\nname = \"svc\"\nunix_uid = 1\nkeysets = [\"default\"]",
            crate::core::testing::KEYSET
        );
        let (config, keyset, _) = opened(&toml).await;
        let t0 = 1_700_000_000;
        keyset.tick(t0).await.unwrap();
        keyset.note_signers(&config, t0);
        assert!(keyset.signer(&keyset.published(), t0 + 5).is_ok());
        let mut without = config.clone();
        without.clients.clear();
        keyset.note_signers(&without, t0 + 5);
        assert!(keyset.signer(&keyset.published(), t0 + 4).is_ok());
        assert_eq!(
            keyset.signer(&keyset.published(), t0 + 5).err(),
            Some(CannotSign::NoSigners)
        );
        assert!(keyset.ready(t0 + 5));
        // A client back: it signs again.
        keyset.note_signers(&config, t0 + 6);
        assert!(keyset.signer(&keyset.published(), t0 + 6).is_ok());
    }

    /// A replica does not sign with a key whose record keeps it published for less than
    /// this replica's tokens live (written by a replica with a shorter max_token_ttl, or a
    /// keyturn before keys recorded it) until its own write has recorded the longer one.
    #[tokio::test]
    async fn a_replica_signs_only_with_keys_recorded_to_outlive_its_tokens() {
        let backend = Arc::new(Rigged {
            shared: true,
            ..Default::default()
        });
        let long = shared_config(Timing::new(24 * 3600, 300, 60, true));
        let keyset = KeySet::open(long.clone(), backend.clone(), Past::default())
            .await
            .unwrap();
        let t0 = 1_700_000_000;
        keyset.tick(t0).await.unwrap();
        assert!(keyset.signer(&keyset.published(), t0).is_ok());
        // Another replica, with max_token_ttl 10m, records 10m-and-change with every key.
        let blob = backend.load_state("default").await.unwrap().unwrap();
        let mut doc = crate::core::lifecycle::stored_doc(&blob.data);
        let short = Timing::new(600, 300, 60, true).retention();
        for k in &mut doc.keys {
            k.retain = Some(short);
        }
        let bytes = serde_json::to_vec(&doc).unwrap();
        let bytes = crate::core::lifecycle::seal(&*backend, "default", &bytes)
            .await
            .unwrap();
        backend
            .store_state("default", &bytes, Some(blob.version))
            .await
            .unwrap();
        // This replica reads it, and its write of the 24h retention fails.
        backend.fail_writes.store(true, Ordering::Relaxed);
        assert!(keyset.tick(t0 + 10).await.is_err());
        assert!(keyset.in_sync(t0 + 10), "the read was recent");
        assert_eq!(
            keyset.signer(&keyset.published(), t0 + 10).err(),
            Some(CannotSign::RetentionUnrecorded)
        );
        assert!(!keyset.ready(t0 + 10));
        backend.fail_writes.store(false, Ordering::Relaxed);
        keyset.tick(t0 + 20).await.unwrap();
        assert!(keyset.signer(&keyset.published(), t0 + 20).is_ok());
        let stored = backend.load_state("default").await.unwrap().unwrap();
        let doc = crate::core::lifecycle::stored_doc(&stored.data);
        assert!(doc
            .keys
            .iter()
            .all(|k| k.retain == Some(long.timing.retention())));
    }

    /// Stripping the MAC is no downgrade: a key set the ledger remembers as sealed refuses
    /// a document without one at its next start; without that memory it is accepted once.
    #[tokio::test]
    async fn a_key_set_remembered_as_sealed_refuses_a_document_without_a_mac() {
        let (config, keyset, backend) = opened(crate::core::testing::KEYSET).await;
        keyset.tick(1_700_000_000).await.unwrap();
        assert!(keyset.sealed());
        let blob = backend.load_state("default").await.unwrap().unwrap();
        let plain = serde_json::to_vec(&crate::core::lifecycle::stored_json(&blob.data)).unwrap();
        backend
            .store_state("default", &plain, Some(blob.version))
            .await
            .unwrap();
        let ks = config.keysets[0].clone();
        let past = keyset.past();
        let err = KeySet::open(ks.clone(), backend.clone(), past)
            .await
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .contains("has no MAC, and the last run stored it with one"),
            "{err}"
        );
        let accepted = KeySet::open(ks, backend.clone(), Past::default())
            .await
            .unwrap();
        assert!(!accepted.sealed());
    }
}

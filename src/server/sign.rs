//! The signing transaction: every token keyturn issues (a single sign, a batch, the
//! Kubernetes signer) goes through it, and its rules live only here.
//!
//! 1. [`Transaction::begin`]: the key set's key that signs now, if it may sign.
//! 2. [`Transaction::sign`]: the backend's signature (the one call to `KeyBackend::sign` in
//!    the daemon), timed into the metrics, the outcome noted as the backend's health.
//! 3. [`Transaction::record`]: the token's audit line queued.
//! 4. [`Transaction::finish`]: the line (and every line before it) in the file, then a last
//!    look at the JWKS. No token leaves without its audit line, and a key revoked while it
//!    signed withholds its tokens: they would not verify.
//!
//! The adapters (the API's handlers, the Kubernetes signer) only translate requests,
//! responses and [`SignError`]s.

use crate::core::keyset::{CannotSign, KeySet};
use crate::core::policy::Audience;
use crate::core::published::{Published, PublishedKey};
use crate::core::statuslist::Slot;
use crate::infra::audit::{Line, Record, StatusNote};
use crate::server::state::AppState;
use std::sync::Arc;
use std::time::Instant;

/// Why no token left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignError {
    /// The key set does not sign now.
    CannotSign(CannotSign),
    /// The backend is unreachable (it may answer later).
    BackendDown,
    /// The backend refused to sign (logged; an operator must look).
    BackendFailed,
    /// The key was revoked while it signed.
    Revoked,
    /// The audit log is not writable.
    AuditUnavailable,
    /// No status list index could be reserved (the backend's state store did not answer,
    /// or every list is full).
    StatusListsUnavailable,
}

/// One key set's signatures at one instant, with the key active then.
pub struct Transaction<'a> {
    state: &'a AppState,
    keyset: &'a KeySet,
    published: Arc<Published>,
    signer: usize,
    now: i64,
}

impl<'a> Transaction<'a> {
    /// Starts signing with `keyset`'s key active at `now`.
    pub fn begin(state: &'a AppState, keyset: &'a KeySet, now: i64) -> Result<Self, SignError> {
        let published = keyset.published();
        let key = keyset
            .signer(&published, now)
            .map_err(SignError::CannotSign)?;
        // The same key, by address: kept as its index beside the view that holds it.
        let signer = published
            .keys
            .iter()
            .position(|k| std::ptr::eq(k, key))
            .ok_or(SignError::CannotSign(CannotSign::NoActiveKey))?;
        Ok(Transaction {
            state,
            keyset,
            published,
            signer,
            now,
        })
    }

    /// The key that signs.
    pub fn key(&self) -> &PublishedKey {
        &self.published.keys[self.signer]
    }

    /// The instant the transaction signs at.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// The published view it signs under.
    pub fn published(&self) -> &Published {
        &self.published
    }

    /// The backend's signature over `input` (a JWS signing input).
    pub async fn sign(&self, input: &[u8]) -> Result<Vec<u8>, SignError> {
        let (keyset, alg) = (self.keyset, self.published.alg);
        let started = Instant::now();
        let result = keyset.backend.sign(&self.key().name, alg, input).await;
        self.state
            .metrics
            .observe_sign(keyset.name(), alg, result.is_ok(), started.elapsed());
        match result {
            Ok(sig) => {
                keyset.note_backend(true);
                Ok(sig)
            }
            Err(e) => {
                // A key revoked meanwhile may be why the backend refused.
                self.still_published()?;
                if e.is_retryable() {
                    keyset.note_backend(false);
                    Err(SignError::BackendDown)
                } else {
                    tracing::error!(keyset = %keyset.name(), error = %e, "signing failed");
                    Err(SignError::BackendFailed)
                }
            }
        }
    }

    /// Status list entries for `n` tokens (none for a key set without status lists),
    /// from the blocks this replica holds; a block is reserved when they run out.
    pub async fn slots(&self, n: usize) -> Result<Vec<Slot>, SignError> {
        let Some(status) = &self.keyset.status else {
            return Ok(Vec::new());
        };
        status.take(self.now, n).await.map_err(|e| {
            tracing::error!(keyset = %self.keyset.name(), error = %e, "no status list index for a token");
            if e.is_retryable() {
                self.keyset.note_backend(false);
            }
            SignError::StatusListsUnavailable
        })
    }

    /// Queues the audit line of a token signed for `caller`; [`Self::finish`] waits for it.
    pub async fn record(
        &self,
        caller: &str,
        jti: Option<&str>,
        sub: Option<&str>,
        aud: Option<&Audience<'_>>,
        exp: i64,
        slot: Option<&Slot>,
    ) -> Result<Line, SignError> {
        self.state
            .audit
            .queue(Record {
                ts: self.now,
                event: "sign",
                caller: Some(caller),
                keyset: self.keyset.name(),
                kid: Some(&self.key().kid),
                jti,
                sub,
                aud,
                exp: Some(exp),
                status: slot.map(|s| StatusNote {
                    uri: &s.uri,
                    idx: s.idx,
                    old: None,
                    new: None,
                    seq: None,
                    recovered: false,
                }),
            })
            .await
            .map_err(|()| SignError::AuditUnavailable)
    }

    /// Lets the tokens go whose audit lines were queued up to `line`: once those lines are
    /// in the file, and only if the key is still published. Last, after every wait (the
    /// signature, the audit line): a revoke in that time withholds the tokens, whose audit
    /// lines are then the only trace of them.
    pub async fn finish(&self, line: Line) -> Result<(), SignError> {
        self.state
            .audit
            .written(line)
            .await
            .map_err(|()| SignError::AuditUnavailable)?;
        self.still_published()
    }

    /// Whether the key is still in the JWKS: a key revoked since is not, and tokens it
    /// signed would not verify.
    fn still_published(&self) -> Result<(), SignError> {
        if self
            .keyset
            .still_publishes(&self.published, &self.key().kid)
        {
            Ok(())
        } else {
            Err(SignError::Revoked)
        }
    }
}

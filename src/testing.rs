//! A backend for unit tests that need one to misbehave on cue.

use async_trait::async_trait;
use keyturn_backend::memory::MemoryBackend;
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType, PublicKey, StateBlob};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;

/// The memory backend, with switches: it may claim to be shared by replicas, fail its state
/// reads as an unreachable backend would, and hold signatures until the test lets them go.
pub struct Rigged {
    /// Where keys and state live.
    pub inner: MemoryBackend,
    /// What [`KeyBackend::shared`] answers.
    pub shared: bool,
    /// While set, `load_state` fails with [`BackendError::Unavailable`].
    pub fail_reads: AtomicBool,
    /// Whether signatures wait for [`Rigged::released`].
    pub hold: bool,
    /// One permit per signature that has arrived (and, with `hold`, waits).
    pub waiting: Semaphore,
    /// One permit per held signature the test lets through.
    pub released: Semaphore,
}

impl Default for Rigged {
    fn default() -> Self {
        Rigged {
            inner: MemoryBackend::new(),
            shared: false,
            fail_reads: AtomicBool::new(false),
            hold: false,
            waiting: Semaphore::new(0),
            released: Semaphore::new(0),
        }
    }
}

#[async_trait]
impl KeyBackend for Rigged {
    fn kind(&self) -> &'static str {
        "rigged"
    }
    fn supports(&self, alg: Algorithm) -> bool {
        self.inner.supports(alg)
    }
    fn shared(&self) -> bool {
        self.shared
    }
    async fn create_key(&self, name: &str, key_type: KeyType) -> Result<PublicKey, BackendError> {
        self.inner.create_key(name, key_type).await
    }
    async fn public_key(&self, name: &str) -> Result<PublicKey, BackendError> {
        self.inner.public_key(name).await
    }
    async fn sign(
        &self,
        name: &str,
        alg: Algorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.waiting.add_permits(1);
        if self.hold {
            // Never closed: the permit comes once the test releases it.
            let _ = self.released.acquire().await.map(|p| p.forget());
        }
        self.inner.sign(name, alg, message).await
    }
    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.inner.destroy(name).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.inner.list_keys(prefix).await
    }
    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(BackendError::Unavailable {
                message: "state reads are switched off".into(),
                source: None,
            });
        }
        self.inner.load_state(keyset).await
    }
    async fn store_state(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        self.inner.store_state(keyset, data, expected).await
    }
}

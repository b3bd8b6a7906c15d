//! For unit tests: the key set they run, and a backend that misbehaves on cue.

use async_trait::async_trait;
use keyturn_backend::memory::MemoryBackend;
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType, PublicKey, StateBlob};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;

/// The key set of in-process tests: ES256, rotated daily, tokens of at most 10 minutes.
pub const KEYSET: &str = r#"
[[keyset]]
name = "default"
issuer = "https://issuer.test"
algorithm = "ES256"
rotate_every = "24h"
max_token_ttl = "10m"
jwks_max_age = "5m"
"#;

/// The memory backend, with switches: it may claim to be shared by replicas, fail its state
/// reads as an unreachable backend would, and hold signatures until the test lets them go.
pub struct Rigged {
    /// Where keys and state live.
    pub inner: MemoryBackend,
    /// What [`KeyBackend::shared`] answers.
    pub shared: bool,
    /// While set, `load_state` fails with [`BackendError::Unavailable`].
    pub fail_reads: AtomicBool,
    /// While set, `store_state` fails with [`BackendError::Unavailable`].
    pub fail_writes: AtomicBool,
    /// While set, `store_state` lets the other tasks run before it writes, as a remote
    /// backend's round trip does.
    pub slow_writes: AtomicBool,
    /// Whether signatures, once made, wait for [`Rigged::released`] before they return.
    pub hold: bool,
    /// With `hold`: sign once released instead (with the key as it is then).
    pub sign_when_released: bool,
    /// While set, `create_key` waits for [`Rigged::released`] too.
    pub hold_creates: AtomicBool,
    /// One permit per signature (or held key creation) that has arrived (and waits).
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
            fail_writes: AtomicBool::new(false),
            slow_writes: AtomicBool::new(false),
            hold: false,
            sign_when_released: false,
            hold_creates: AtomicBool::new(false),
            waiting: Semaphore::new(0),
            released: Semaphore::new(0),
        }
    }
}

impl Rigged {
    /// Waits for one permit of [`Rigged::released`] (never closed: it comes once the test
    /// lets one through).
    async fn until_released(&self) {
        let _ = self.released.acquire().await.map(|p| p.forget());
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
        if self.hold_creates.load(Ordering::Relaxed) {
            self.waiting.add_permits(1);
            self.until_released().await;
        }
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
        // Unless told otherwise, signed before the hold: a held signature is one the backend
        // has made and not yet returned (a key destroyed meanwhile does not change it).
        let signature = if self.sign_when_released {
            None
        } else {
            Some(self.inner.sign(name, alg, message).await)
        };
        self.waiting.add_permits(1);
        if self.hold {
            self.until_released().await;
        }
        match signature {
            Some(signature) => signature,
            None => self.inner.sign(name, alg, message).await,
        }
    }
    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.inner.destroy(name).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.inner.list_keys(prefix).await
    }
    async fn state_mac(&self, keyset: &str, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.inner.state_mac(keyset, data).await
    }
    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(switched_off("reads"));
        }
        self.inner.load_state(keyset).await
    }
    async fn store_state(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        if self.fail_writes.load(Ordering::Relaxed) {
            return Err(switched_off("writes"));
        }
        if self.slow_writes.load(Ordering::Relaxed) {
            tokio::task::yield_now().await;
        }
        self.inner.store_state(keyset, data, expected).await
    }
}

fn switched_off(what: &str) -> BackendError {
    BackendError::Unavailable {
        message: format!("state {what} are switched off"),
        source: None,
    }
}

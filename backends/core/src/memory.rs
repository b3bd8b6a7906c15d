//! An in-memory backend: keys in a map, state in a map. For tests and examples only;
//! everything is lost when the process exits.

use crate::software::SoftwareKey;
use crate::{Algorithm, BackendError, KeyBackend, KeyType, PublicKey, StateBlob};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

/// Keys and lifecycle documents held in memory.
pub struct MemoryBackend {
    keys: RwLock<HashMap<String, Arc<SoftwareKey>>>,
    states: Mutex<HashMap<String, StateBlob>>,
    // A random key of this instance: its documents authenticate only with it.
    mac_key: aws_lc_rs::hmac::Key,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        use aws_lc_rs::rand::SecureRandom;
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        // A test backend: should the system have no randomness, a fixed key still works.
        let _ = aws_lc_rs::rand::SystemRandom::new().fill(&mut *secret);
        MemoryBackend {
            keys: RwLock::default(),
            states: Mutex::default(),
            mac_key: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &*secret),
        }
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl KeyBackend for MemoryBackend {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn supports(&self, _alg: Algorithm) -> bool {
        true
    }

    async fn create_key(&self, name: &str, key_type: KeyType) -> Result<PublicKey, BackendError> {
        let mut keys = self.keys.write().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = keys.get(name) {
            if existing.key_type() != key_type {
                return Err(BackendError::Rejected(format!(
                    "key {name:?} exists with another type"
                )));
            }
            return existing.public_key();
        }
        let key = SoftwareKey::generate(key_type)?;
        let public = key.public_key()?;
        keys.insert(name.to_owned(), Arc::new(key));
        Ok(public)
    }

    async fn public_key(&self, name: &str) -> Result<PublicKey, BackendError> {
        self.keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .ok_or_else(|| BackendError::NotFound(name.to_owned()))?
            .public_key()
    }

    async fn sign(
        &self,
        name: &str,
        alg: Algorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let key = self
            .keys
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(name.to_owned()))?;
        key.sign(alg, message)
    }

    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.keys
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
        Ok(())
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let keys = self.keys.read().unwrap_or_else(PoisonError::into_inner);
        Ok(keys
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn state_mac(&self, keyset: &str, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        Ok(crate::hmac_state(&self.mac_key, keyset, data))
    }

    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        Ok(self
            .states
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(keyset)
            .cloned())
    }

    async fn store_state(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        let mut states = self.states.lock().unwrap_or_else(PoisonError::into_inner);
        let current = states.get(keyset).map(|s| s.version);
        if current != expected {
            return Err(BackendError::Conflict);
        }
        let version = current.unwrap_or(0).saturating_add(1);
        states.insert(
            keyset.to_owned(),
            StateBlob {
                data: data.to_vec(),
                version,
            },
        );
        Ok(version)
    }
}

#[cfg(all(test, feature = "conformance"))]
mod tests {
    #[tokio::test]
    async fn memory_backend_passes_conformance() {
        crate::conformance::run(&super::MemoryBackend::new(), "conf").await;
    }
}

//! A custom backend outside the workspace's backends, wired in with one call: "ephemeral"
//! keeps private keys only in memory (like an HSM session without persistence) and the
//! lifecycle documents in a JSON file with check-and-set. Use it from a key set with
//! `backend = { type = "custom", name = "ephemeral" }`. Run: `cargo run --example custom_backend -- FILE`.

use async_trait::async_trait;
use keyturn_backend::software::SoftwareKey;
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType, PublicKey, StateBlob};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::sync::Mutex;

struct Ephemeral {
    keys: Mutex<BTreeMap<String, Arc<SoftwareKey>>>,
    // keyset -> (version, document); mirrored to `state_file` on every write.
    states: Mutex<BTreeMap<String, (u64, String)>>,
    state_file: PathBuf,
    // Authenticates the lifecycle documents. Like the keys, it lives only as long as the
    // process; a real backend keeps it where it keeps its keys.
    mac_key: aws_lc_rs::hmac::Key,
}

impl Ephemeral {
    fn open(state_file: PathBuf) -> Result<Self, BackendError> {
        let bytes = std::fs::read(&state_file).unwrap_or_else(|_| b"{}".to_vec());
        let states =
            serde_json::from_slice(&bytes).map_err(|e| BackendError::storage("bad state", e))?;
        let mac_key = aws_lc_rs::hmac::Key::generate(
            aws_lc_rs::hmac::HMAC_SHA256,
            &aws_lc_rs::rand::SystemRandom::new(),
        )
        .map_err(|_| BackendError::Rejected("no randomness for the MAC key".into()))?;
        Ok(Ephemeral {
            keys: Mutex::default(),
            states: Mutex::new(states),
            state_file,
            mac_key,
        })
    }

    async fn key(&self, name: &str) -> Result<Arc<SoftwareKey>, BackendError> {
        let keys = self.keys.lock().await;
        keys.get(name)
            .cloned()
            .ok_or_else(|| BackendError::NotFound(name.to_owned()))
    }
}

#[async_trait]
impl KeyBackend for Ephemeral {
    fn kind(&self) -> &'static str {
        "ephemeral"
    }

    fn supports(&self, _alg: Algorithm) -> bool {
        true
    }

    async fn create_key(&self, name: &str, key_type: KeyType) -> Result<PublicKey, BackendError> {
        let mut keys = self.keys.lock().await;
        if let Some(existing) = keys.get(name) {
            if existing.key_type() != key_type {
                return Err(BackendError::Rejected(format!(
                    "{name:?} exists with another type"
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
        self.key(name).await?.public_key()
    }

    async fn sign(
        &self,
        name: &str,
        alg: Algorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.key(name).await?.sign(alg, message)
    }

    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.keys.lock().await.remove(name);
        Ok(())
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let keys = self.keys.lock().await;
        Ok(keys
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }

    async fn state_mac(&self, keyset: &str, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        Ok(keyturn_backend::hmac_state(&self.mac_key, keyset, data))
    }

    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        let states = self.states.lock().await;
        let blob = |(version, doc): &(u64, String)| StateBlob::new(doc.as_bytes(), *version);
        Ok(states.get(keyset).map(blob))
    }

    async fn store_state(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        let mut states = self.states.lock().await;
        if states.get(keyset).map(|(v, _)| *v) != expected {
            return Err(BackendError::Conflict);
        }
        let version = expected.unwrap_or(0) + 1;
        states.insert(
            keyset.to_owned(),
            (version, String::from_utf8_lossy(data).into_owned()),
        );
        let bytes = serde_json::to_vec(&*states)
            .map_err(|e| BackendError::storage("cannot encode state", e))?;
        keyturn_backend::fsutil::write_atomic(&self.state_file, &bytes)?;
        Ok(version)
    }
}

fn main() -> anyhow::Result<()> {
    let path = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "keyturn.toml".into()),
    );
    let config = keyturn::config::Config::load(&path)?;
    let backend = Ephemeral::open(config.server.data_dir.join("ephemeral-state.json"))?;
    keyturn::infra::logging::init(config.server.log_format, config.server.under_journald);
    let runtime = tokio::runtime::Runtime::new()?;
    // The one call: the daemon, with "ephemeral" available to [[keyset]] backend tables.
    runtime.block_on(keyturn::server::app::run_with_backends(
        config,
        Some(path),
        Arc::new(keyturn::core::clock::SystemClock),
        vec![("ephemeral".into(), Arc::new(backend))],
    ))
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn ephemeral_passes_the_conformance_suite() {
        let dir = tempfile::tempdir().unwrap();
        let backend = super::Ephemeral::open(dir.path().join("state.json")).unwrap();
        keyturn_backend::conformance::run(&backend, "ephemeral").await;
    }
}

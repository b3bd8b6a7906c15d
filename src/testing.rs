//! For unit tests: a backend that misbehaves on cue, and the API on it in process.

use async_trait::async_trait;
use keyturn_backend::memory::MemoryBackend;
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType, PublicKey, StateBlob};
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Semaphore;

use crate::app::AppState;
use crate::auth::Peer;
use crate::clock::Clock;
use crate::keyset::KeySet;
use axum::body::Body;
use axum::extract::Request;
use http::{header, StatusCode};
use std::sync::Arc;

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
        self.inner.store_state(keyset, data, expected).await
    }
}

fn switched_off(what: &str) -> BackendError {
    BackendError::Unavailable {
        message: format!("state {what} are switched off"),
        source: None,
    }
}

/// The API on an in-process router: one ES256 key set (on `backend`, its timing that of
/// a shared backend if `backend.shared`), one client, a simulated clock, an audit log.
pub struct InProcess {
    pub state: Arc<AppState>,
    pub keyset: Arc<KeySet>,
    pub backend: Arc<Rigged>,
    pub clock: Arc<crate::clock::SimClock>,
    pub writer: crate::audit::AuditWriter,
    pub log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub const TOKEN: &str = "kt_in_process_test_token";

impl InProcess {
    pub async fn new(backend: Rigged) -> Self {
        use crate::config::{Config, Env};
        let hash: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, TOKEN.as_bytes())
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let config = Config::parse(
            &format!(
                r#"
                {KEYSET}
                [[client]]
                name = "issuer"
                token_sha256 = "{hash}"
                keysets = ["default"]
                subject_pattern = "*"
                "#
            ),
            Env::default(),
        )
        .unwrap();
        let mut keyset_config = config.keysets[0].clone();
        let t = keyset_config.timing;
        keyset_config.timing = crate::timing::Timing::new(
            t.max_token_ttl,
            t.jwks_max_age,
            t.clock_skew,
            backend.shared,
        );
        let backend = Arc::new(backend);
        let clock = Arc::new(crate::clock::SimClock::new(1_700_000_000));
        let keyset = KeySet::open(keyset_config, backend.clone(), Default::default())
            .await
            .unwrap();
        keyset.tick(clock.now()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let (audit, writer) = crate::audit::Audit::open(&log).unwrap();
        let state = Arc::new(AppState {
            keysets: arc_swap::ArcSwap::from_pointee(crate::app::KeySets::new(
                vec![keyset.clone()],
            )),
            clients: arc_swap::ArcSwap::from_pointee(config.clients),
            clock: clock.clone(),
            audit,
            metrics: Arc::default(),
            limits: crate::http::serve::Limits::default(),
        });
        InProcess {
            state,
            keyset,
            backend,
            clock,
            writer,
            log,
            _dir: dir,
        }
    }

    /// Sends `POST /v1/keysets/default/{route}` with `body` (not awaited).
    pub fn post(
        &self,
        route: &str,
        body: &serde_json::Value,
    ) -> tokio::task::JoinHandle<(StatusCode, serde_json::Value)> {
        use tower::ServiceExt;
        let mut request = Request::post(format!("/v1/keysets/default/{route}"))
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        request.extensions_mut().insert(Arc::new(Peer::default()));
        let router = crate::http::api::router(self.state.clone());
        tokio::spawn(async move {
            let response = router.oneshot(request).await.unwrap();
            let status = response.status();
            let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                .await
                .unwrap();
            (status, serde_json::from_slice(&body).unwrap())
        })
    }

    /// Stops it; returns the number of sign lines in the audit log.
    pub fn finish(self) -> usize {
        drop(self.state);
        drop(self.keyset);
        self.writer.finish();
        std::fs::read_to_string(&self.log)
            .unwrap()
            .matches("\"event\":\"sign\"")
            .count()
    }
}

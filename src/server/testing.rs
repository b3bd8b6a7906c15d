//! For unit tests: the API in process, on the backend of [`crate::core::testing`].

pub use crate::core::testing::{Rigged, KEYSET};

use crate::core::clock::Clock;
use crate::core::keyset::KeySet;
use crate::server::state::AppState;
use std::sync::Arc;

/// The API on an in-process router: one ES256 key set (on `backend`, its timing that of
/// a shared backend if `backend.shared`), one client, a simulated clock, an audit log.
pub struct InProcess {
    pub state: Arc<AppState>,
    pub keyset: Arc<KeySet>,
    pub backend: Arc<Rigged>,
    pub clock: Arc<crate::core::clock::SimClock>,
    pub writer: crate::infra::audit::AuditWriter,
    pub log: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

pub const TOKEN: &str = "kt_in_process_test_token";

impl InProcess {
    pub async fn new(backend: Rigged) -> Self {
        Self::with(backend, "").await
    }

    /// As [`InProcess::new`], with `extra` lines in the key set's table.
    pub async fn with(backend: Rigged, extra: &str) -> Self {
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
                {extra}
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
        keyset_config.timing = crate::config::timing::Timing::new(
            t.max_token_ttl,
            t.jwks_max_age,
            t.clock_skew,
            backend.shared,
        );
        let backend = Arc::new(backend);
        let clock = Arc::new(crate::core::clock::SimClock::new(1_700_000_000));
        let keyset = KeySet::open(keyset_config, backend.clone(), Default::default())
            .await
            .unwrap();
        keyset.tick(clock.now()).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("audit.log");
        let (audit, writer) = crate::infra::audit::Audit::open(&log).unwrap();
        let state = Arc::new(AppState {
            keysets: arc_swap::ArcSwap::from_pointee(crate::server::state::KeySets::new(vec![
                keyset.clone(),
            ])),
            clients: arc_swap::ArcSwap::from_pointee(config.clients),
            clock: clock.clone(),
            audit,
            metrics: Arc::default(),
            limits: crate::config::Limits::default(),
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

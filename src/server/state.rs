//! What every request handler shares: the key sets and clients (swapped whole at a reload;
//! readers never wait), the clock, the audit log, the metrics and the listener limits.

use crate::config::{ClientConfig, Limits};
use crate::core::clock::Clock;
use crate::core::keyset::KeySet;
use crate::infra::audit::Audit;
use crate::infra::metrics::Metrics;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// The key sets being served, in config order.
#[derive(Default)]
pub struct KeySets {
    list: Vec<Arc<KeySet>>,
    default: Option<usize>,
}

impl KeySets {
    /// A set in `list` order; the default is `default`, else the first.
    pub fn new(list: Vec<Arc<KeySet>>) -> Self {
        let default = list
            .iter()
            .position(|k| k.name() == "default")
            .or((!list.is_empty()).then_some(0));
        KeySets { list, default }
    }

    /// By name.
    pub fn get(&self, name: &str) -> Option<&Arc<KeySet>> {
        self.list.iter().find(|k| k.name() == name)
    }

    /// The one served at `/.well-known/jwks.json`.
    pub fn default(&self) -> Option<&Arc<KeySet>> {
        self.default.and_then(|i| self.list.get(i))
    }

    /// All of them.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<KeySet>> {
        self.list.iter()
    }
}

/// What every request handler shares. Key sets and clients are swapped whole on reload;
/// readers never wait.
pub struct AppState {
    /// Key sets.
    pub keysets: ArcSwap<KeySets>,
    /// Signing-API clients.
    pub clients: ArcSwap<Vec<ClientConfig>>,
    /// The clock.
    pub clock: Arc<dyn Clock>,
    /// The audit log.
    pub audit: Audit,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Listener limits (the API reads its body timeout here).
    pub limits: Limits,
}

//! What touches the host: the audit log, the ledger of key sets in the data directory,
//! metrics, the backend factory, TLS, systemd notification, signals, process hardening and
//! logging. Built on [`crate::core`] and [`crate::config`]; knows nothing of HTTP routes.

pub mod audit;
pub mod backends;
pub mod hardening;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod signals;
pub mod tls;

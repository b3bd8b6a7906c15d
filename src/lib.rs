//! keyturn: a key-management and rotation daemon for JWT issuers.
//!
//! It keeps signing keys in a backend (local encrypted files, Vault/OpenBao transit, AWS
//! KMS), rotates them on a schedule with overlap windows derived from the token lifetime
//! and the JWKS cache age, signs tokens for authenticated clients so that private keys
//! never leave it (or the backend), and serves a versioned JWKS.
//!
//! The binary is thin: [`cli`] parses arguments, [`config`] validates, [`app::run`] serves.

pub mod app;
pub mod audit;
pub mod auth;
pub mod backends;
pub mod cli;
pub mod client;
pub mod clock;
pub mod config;
pub mod console;
pub mod fuzzing;
pub mod hardening;
pub mod http;
pub mod json;
pub mod jwks;
pub mod k8s;
pub mod keyset;
pub mod ledger;
pub mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod secret;
pub mod signals;
#[cfg(test)]
mod testing;
pub mod timeline;
pub mod timing;
pub mod tls;
pub mod verify;

//! keyturn: a key-management and rotation daemon for JWT issuers.
//!
//! It keeps signing keys in a backend (local encrypted files, Vault/OpenBao transit, AWS
//! KMS), rotates them on a schedule with overlap windows derived from the token lifetime
//! and the JWKS cache age, signs tokens for authenticated clients so that private keys
//! never leave it (or the backend), and serves a versioned JWKS.
//!
//! The binary is thin: [`cli`] parses arguments, [`config`] validates,
//! [`server::app::run`] serves.
//!
//! The code is in layers, each importing only the layers below it:
//!
//! - [`config`]: the TOML file, parsed and validated; durations, the timing rules they
//!   imply, secrets read from files.
//! - [`core`]: the key lifecycle, a running key set and its published view, the signing
//!   policy, the key timeline picture. No I/O but through the backend trait; time is a
//!   parameter.
//! - [`infra`]: what touches the host: the audit log, the ledger, metrics, the backend
//!   factory, TLS, systemd notification, signals, hardening, logging.
//! - [`server`]: the daemon: its state, authentication, the HTTP listeners, the signing
//!   transaction, the read-only console, the Kubernetes signer, and the task that keeps
//!   each key set in order.
//! - [`cli`]: the subcommands, the small HTTP client they use, and the token verifier.

pub mod cli;
pub mod config;
pub mod core;
pub mod fuzzing;
pub mod infra;
pub mod server;

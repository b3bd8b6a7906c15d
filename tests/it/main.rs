//! Integration tests: the real `keyturn` binary on loopback, driven over HTTP.
//! Tests that need OpenBao or moto start their own servers (see backends/core testserver).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod browser;
mod cli;
mod console;
mod crash;
mod deploy;
mod faults;
mod fuzz_corpus;
mod harness;
mod hostile;
mod interop;
mod jwks;
mod k8s;
mod kms;
mod leak;
mod metrics;
mod pkcs11;
mod statuslist;
mod systemd;
mod tour;
mod trust;
mod vault;
mod verify;

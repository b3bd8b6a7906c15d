//! The daemon: its shared state and start-up ([`app`]), caller authentication, the HTTP
//! listeners (JWKS, API, the read-only console) with their error mapping, the Kubernetes
//! signer. A domain error becomes an HTTP status or a gRPC code only here.

pub mod app;
pub mod auth;
pub mod console;
pub mod http;
pub mod k8s;
pub mod sign;
pub mod state;
pub mod statuslists;
#[cfg(test)]
pub(crate) mod testing;

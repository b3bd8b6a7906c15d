//! HTTP: the public JWKS listener and the authenticated API listener.

pub mod api;
pub mod error;
pub mod public;
pub mod serve;
pub mod token_status;

pub use error::ApiError;

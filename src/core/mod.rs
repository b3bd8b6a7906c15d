//! The domain: a key set's lifecycle and the rules it keeps, the view it publishes, the
//! policy a signature must pass, and the key timeline drawn as a picture. It reads the
//! world only through the backend trait and takes time as a parameter; it knows nothing of
//! HTTP, files or the process.

pub mod clock;
pub mod json;
pub mod keyset;
pub mod lifecycle;
pub mod policy;
pub mod published;
pub mod statuslist;
#[cfg(test)]
pub(crate) mod testing;
pub mod timeline;

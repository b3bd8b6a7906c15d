//! The keyturn backend contract.
//!
//! A backend holds private keys and signs with them; the daemon never sees a private key.
//! It also stores each key set's lifecycle document with check-and-set, so that several
//! daemons sharing a backend agree on one history.
//!
//! This crate holds the [`KeyBackend`] trait, the shared key types ([`Algorithm`],
//! [`KeyType`], [`PublicKey`], [`Jwk`]), the in-process signer used by the file and memory
//! backends ([`software`]), an in-memory backend (feature `memory`) and the conformance
//! suite every backend must pass (feature `conformance`).

#![warn(missing_docs)]

mod algorithm;
mod error;
pub mod fsutil;
mod public_key;
pub mod software;

#[cfg(feature = "memory")]
pub mod memory;

#[cfg(feature = "conformance")]
pub mod conformance;

#[cfg(feature = "testserver")]
pub mod testserver;

pub use algorithm::{Algorithm, KeyType};
pub use error::BackendError;
pub use public_key::{Jwk, PublicKey};

use async_trait::async_trait;

/// A stored lifecycle document and the backend's version of it, for check-and-set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateBlob {
    /// The document as the daemon wrote it (JSON).
    pub data: Vec<u8>,
    /// The backend's version; pass it back to [`KeyBackend::store_state`].
    pub version: u64,
}

impl StateBlob {
    /// A document and its version.
    pub fn new(data: &[u8], version: u64) -> Self {
        StateBlob {
            data: data.to_vec(),
            version,
        }
    }
}

/// What a backend's [`KeyBackend::state_mac`] authenticates for `keyset`'s document `data`:
/// a SHA-256 digest that binds the document to its key set (a document copied to another
/// key set's place fails), short enough for every MAC service (KMS takes at most 4 KiB).
pub fn state_digest(keyset: &str, data: &[u8]) -> [u8; 32] {
    let mut ctx = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
    ctx.update(b"keyturn-state-v1\0");
    ctx.update(keyset.as_bytes());
    ctx.update(b"\0");
    ctx.update(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(ctx.finish().as_ref());
    out
}

/// [`KeyBackend::state_mac`] for a backend that holds its MAC key in process memory:
/// HMAC-SHA256 of [`state_digest`].
pub fn hmac_state(key: &aws_lc_rs::hmac::Key, keyset: &str, data: &[u8]) -> Vec<u8> {
    aws_lc_rs::hmac::sign(key, &state_digest(keyset, data))
        .as_ref()
        .to_vec()
}

/// Whether `host` (as in a URL, IPv6 in brackets or not) names this machine: an address in
/// 127.0.0.0/8, `::1` (also IPv4-mapped), or `localhost`. Plain HTTP is safe only to these:
/// no other machine is on the path.
pub fn is_loopback_host(host: &str) -> bool {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_canonical().is_loopback(),
        Err(_) => bare.eq_ignore_ascii_case("localhost"),
    }
}

/// Refuses a plaintext `http://` URL of a backend service (`setting` names it in the
/// message) unless its host is loopback or the operator opted in with `allow_plaintext`:
/// over plain HTTP, credentials cross in clear and a machine in the path can answer with
/// its own public keys. Returns whether the URL is plaintext to a host that is not
/// loopback (opted in: the caller warns at every start).
pub fn check_transport(
    setting: &str,
    url: &str,
    allow_plaintext: bool,
) -> Result<bool, BackendError> {
    let Some(rest) = url.strip_prefix("http://") else {
        return Ok(false);
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = authority.rsplit('@').next().unwrap_or_default();
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => host.split(':').next().unwrap_or_default(),
    };
    if is_loopback_host(host) {
        return Ok(false);
    }
    if !allow_plaintext {
        return Err(BackendError::Rejected(format!(
            "{setting} = {url:?} is plaintext HTTP to a host that is not loopback: credentials \
             would cross in clear and anyone in the path could answer with their own keys. Use \
             https:// (with ca_file for a private CA), or set allow_plaintext_http = true in \
             the backend table if the network path is protected otherwise"
        )));
    }
    Ok(true)
}

/// Checks a key or key set name against the rule every backend relies on (safe in file
/// paths, Vault paths and KMS aliases): `[a-z0-9_-]`, 1 to 100 characters.
pub fn check_name(name: &str) -> Result<(), BackendError> {
    let ok = !name.is_empty()
        && name.len() <= 100
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(BackendError::Rejected(format!(
            "invalid name {name:?}: use [a-z0-9_-], at most 100 characters"
        )))
    }
}

/// Where keys live and where signatures are made.
///
/// Key names are chosen by the daemon (`[a-z0-9_-]`, at most 100 characters) so that
/// every call is idempotent: a create interrupted by a crash is finished by calling it again.
#[async_trait]
pub trait KeyBackend: Send + Sync + 'static {
    /// Short name for logs and metrics: "file", "vault", "kms", ...
    fn kind(&self) -> &'static str;

    /// Whether this backend can create keys for and sign with `alg`.
    fn supports(&self, alg: Algorithm) -> bool;

    /// Why this backend cannot do `alg` (when [`Self::supports`] says so), for the error
    /// that refuses a key set configured with it.
    fn unsupported(&self, alg: Algorithm) -> String {
        format!("the {} backend cannot sign {alg}", self.kind())
    }

    /// True when several daemons may share this backend's keys and state.
    fn shared(&self) -> bool {
        false
    }

    /// Creates the key `name` of type `key_type`, or returns the public key of the existing
    /// key of that name and type (idempotent). A type mismatch is [`BackendError::Rejected`].
    async fn create_key(&self, name: &str, key_type: KeyType) -> Result<PublicKey, BackendError>;

    /// The public key of `name`; [`BackendError::NotFound`] if there is none.
    async fn public_key(&self, name: &str) -> Result<PublicKey, BackendError>;

    /// Signs `message` (the JWS signing input) with key `name`, returning the signature in
    /// JOSE form (ECDSA as fixed-length r||s, RFC 7518 section 3.4).
    async fn sign(
        &self,
        name: &str,
        alg: Algorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, BackendError>;

    /// Destroys the key `name` (or schedules its deletion, where the backend's policy says
    /// so). Destroying a key that does not exist succeeds.
    async fn destroy(&self, name: &str) -> Result<(), BackendError>;

    /// Names of the keys this backend holds whose name starts with `prefix`.
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError>;

    /// The lifecycle document of `keyset`, if one was ever stored.
    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError>;

    /// Stores the lifecycle document of `keyset` if the stored version is still `expected`
    /// (`None`: no document yet). Returns the new version, or [`BackendError::Conflict`].
    async fn store_state(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError>;

    /// A MAC of [`state_digest`]`(keyset, data)` under a secret key that only this backend
    /// holds and never hands out (derived from the key-encryption key, a transit HMAC key, a
    /// KMS HMAC key, a secret key in an HSM). Deterministic: the daemon recomputes it to
    /// check a document it reads, so whoever can write the state store but cannot use this
    /// key cannot make a document keyturn acts on. Every replica sharing the backend gets
    /// the same MAC.
    async fn state_mac(&self, keyset: &str, data: &[u8]) -> Result<Vec<u8>, BackendError>;

    /// A cheap call that succeeds when the backend is reachable and usable.
    async fn health(&self) -> Result<(), BackendError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::{check_transport, is_loopback_host};

    #[test]
    fn loopback_hosts_are_local_addresses_and_localhost_only() {
        for host in [
            "127.0.0.1",
            "127.8.9.10",
            "::1",
            "[::1]",
            "[::ffff:127.0.0.2]",
            "localhost",
            "LocalHost",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "128.0.0.1",
            "10.0.0.1",
            "0.0.0.0",
            "[::]",
            "[::2]",
            "127.1",
            "localhost.",
            "localhost.invalid",
            "127.0.0.1.invalid",
            "jwks.invalid",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn plaintext_http_is_refused_unless_loopback_or_opted_in() {
        for url in [
            "https://vault.example.com:8200",
            "http://127.0.0.1:8200",
            "http://127.9.9.9",
            "http://localhost:4566/",
            "http://[::1]:8200/v1",
        ] {
            assert!(!check_transport("address", url, false).unwrap(), "{url}");
        }
        for url in [
            "http://vault.example.com:8200",
            "http://10.0.0.7",
            "http://[2001:db8::1]:8200",
            "http://user@vault.invalid",
            "http://127.0.0.1.vault.invalid",
        ] {
            let err = check_transport("address", url, false)
                .unwrap_err()
                .to_string();
            assert!(err.contains("allow_plaintext_http"), "{url}: {err}");
            assert!(check_transport("address", url, true).unwrap(), "{url}");
        }
    }
}

//! Client identities: bearer tokens (stored as SHA-256, compared in constant time), Unix
//! peer credentials, TLS client certificates.

use crate::config::{ClientAuth, ClientConfig};
use aws_lc_rs::constant_time::verify_slices_are_equal;
use aws_lc_rs::digest;

/// The SHA-256 of a bearer token, as stored in the config.
pub fn hash_token(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Parses 64 hex digits.
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the transport tells us about the caller.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// Unix peer credentials (API socket).
    pub unix: Option<(u32, u32)>,
    /// Subject common name of a verified TLS client certificate.
    pub tls_subject: Option<String>,
    /// Remote address, for logs.
    pub remote: Option<String>,
}

/// Finds the client a request comes from.
///
/// A bearer token, when present, decides alone (a wrong token is never rescued by the
/// transport). Without one, a verified TLS certificate or Unix credentials may match.
/// Token comparison runs over every token client in constant time per comparison.
pub fn identify<'a>(
    clients: &'a [ClientConfig],
    peer: &Peer,
    bearer: Option<&str>,
) -> Option<&'a ClientConfig> {
    if let Some(token) = bearer {
        let hash = hash_token(token);
        let mut found = None;
        for client in clients {
            if let ClientAuth::Token(expected) = &client.auth {
                if verify_slices_are_equal(expected, &hash).is_ok() && found.is_none() {
                    found = Some(client);
                }
            }
        }
        return found;
    }
    clients.iter().find(|client| match &client.auth {
        ClientAuth::Tls(subject) => peer.tls_subject.as_deref() == Some(subject.as_str()),
        ClientAuth::Unix { uid, gid } => match peer.unix {
            Some((peer_uid, peer_gid)) => {
                uid.is_none_or(|u| u == peer_uid) && gid.is_none_or(|g| g == peer_gid)
            }
            None => false,
        },
        ClientAuth::Token(_) => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let h = hash_token("secret");
        assert_eq!(parse_sha256_hex(&to_hex(&h)), Some(h));
        assert_eq!(parse_sha256_hex("zz"), None);
        assert_eq!(parse_sha256_hex(&"é".repeat(32)), None);
    }
}

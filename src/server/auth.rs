//! Client identities: bearer tokens (stored as SHA-256, compared in constant time), Unix
//! peer credentials, TLS client certificates; and the rate-limited log of those that fail.

use crate::config::secret::hash_token;
use crate::config::{ClientAuth, ClientConfig};
use crate::infra::logging::Throttled;
pub use crate::infra::tls::CertNames;
use aws_lc_rs::constant_time::verify_slices_are_equal;
use std::time::{Duration, Instant};

/// What the transport tells us about the caller.
#[derive(Debug, Clone, Default)]
pub struct Peer {
    /// The listener it came in on (`api`, `api-socket`).
    pub listener: &'static str,
    /// Unix peer credentials (API socket).
    pub unix: Option<(u32, u32)>,
    /// The names of a verified TLS client certificate.
    pub tls: Option<CertNames>,
    /// Remote address, for logs.
    pub remote: Option<String>,
}

impl CertNames {
    /// Whether these names are those `auth` asks for.
    fn name(&self, auth: &ClientAuth) -> bool {
        match auth {
            ClientAuth::TlsSubject(cn) => self.common_name.as_deref() == Some(cn.as_str()),
            // A DNS name holds no ':'; a URI always does (after its scheme).
            ClientAuth::TlsSan(uri) if uri.contains(':') => self.uris.iter().any(|u| u == uri),
            ClientAuth::TlsSan(dns) => self.dns.iter().any(|d| d.eq_ignore_ascii_case(dns)),
            ClientAuth::Token(_) | ClientAuth::Unix { .. } => false,
        }
    }
}

/// Why a caller is no client: the `reason` of the log line and of
/// `keyturn_auth_failures_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// An `Authorization` header that is not one `Bearer <token>`.
    BadAuthorization,
    /// A bearer token no client has.
    UnknownToken,
    /// A verified certificate that names no client.
    UnknownCertificate,
    /// A verified certificate that names two clients (a common name one's `tls_subject`,
    /// an alternative name another's `tls_san`): which one calls would be a guess.
    AmbiguousCertificate,
    /// Unix credentials that match no client.
    UnknownPeer,
    /// Nothing that could name a client (TCP, no token, no certificate).
    NoCredentials,
}

impl AuthFailure {
    /// The reason, as logged and as the metric's label.
    pub fn reason(self) -> &'static str {
        match self {
            AuthFailure::BadAuthorization => "bad_authorization",
            AuthFailure::UnknownToken => "unknown_token",
            AuthFailure::UnknownCertificate => "unknown_certificate",
            AuthFailure::AmbiguousCertificate => "ambiguous_certificate",
            AuthFailure::UnknownPeer => "unknown_peer",
            AuthFailure::NoCredentials => "no_credentials",
        }
    }
}

/// Finds the client a request comes from: its index in `clients`.
///
/// A bearer token, when present, decides alone (a wrong token is never rescued by the
/// transport). Without one, a verified TLS certificate or Unix credentials may match.
/// Token comparison runs over every token client in constant time per comparison.
pub fn identify(
    clients: &[ClientConfig],
    peer: &Peer,
    bearer: Option<&str>,
) -> Result<usize, AuthFailure> {
    if let Some(token) = bearer {
        let hash = hash_token(token);
        let mut found = None;
        for (i, client) in clients.iter().enumerate() {
            if let ClientAuth::Token(expected) = &client.auth {
                if verify_slices_are_equal(expected, &hash).is_ok() && found.is_none() {
                    found = Some(i);
                }
            }
        }
        return found.ok_or(AuthFailure::UnknownToken);
    }
    if let Some(names) = &peer.tls {
        let mut named = (0..clients.len()).filter(|&i| names.name(&clients[i].auth));
        return match (named.next(), named.next()) {
            (Some(i), None) => Ok(i),
            (Some(_), Some(_)) => Err(AuthFailure::AmbiguousCertificate),
            (None, _) => Err(AuthFailure::UnknownCertificate),
        };
    }
    let Some((peer_uid, peer_gid)) = peer.unix else {
        return Err(AuthFailure::NoCredentials);
    };
    clients
        .iter()
        .position(|client| match &client.auth {
            ClientAuth::Unix { uid, gid } => {
                uid.is_none_or(|u| u == peer_uid) && gid.is_none_or(|g| g == peer_gid)
            }
            _ => false,
        })
        .ok_or(AuthFailure::UnknownPeer)
}

/// Failed authentications: at most one line per 10 s.
static AUTH_FAILURES: Throttled = Throttled::new(Duration::from_secs(10));

/// Logs a failed authentication at WARN (rate-limited): the listener, the peer address and
/// the reason; never what the caller presented.
pub fn log_failure(peer: &Peer, failure: AuthFailure) {
    if let Some(suppressed) = AUTH_FAILURES.admit(Instant::now()) {
        tracing::warn!(
            listener = peer.listener,
            peer = peer.remote.as_deref().unwrap_or("-"),
            reason = failure.reason(),
            suppressed,
            "authentication failed"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(name: &str, auth: ClientAuth) -> ClientConfig {
        ClientConfig {
            name: name.into(),
            auth,
            keysets: vec![],
            audiences: vec![],
            subject_pattern: None,
            max_ttl: None,
            allowed_claims: vec![],
            forbidden_claims: vec![],
            allowed_typ: vec![],
            admin: false,
            revoke_tokens: false,
        }
    }

    /// A certificate names the one client whose `tls_subject` is its common name or whose
    /// `tls_san` is one of its DNS names (any case) or URIs (exactly); naming two is
    /// refused, as is naming none.
    #[test]
    fn certificates_name_one_client_by_common_name_or_san() {
        let clients = [
            client("by-cn", ClientAuth::TlsSubject("ci".into())),
            client("by-dns", ClientAuth::TlsSan("ci.example.org".into())),
            client(
                "by-uri",
                ClientAuth::TlsSan("spiffe://example.org/ci".into()),
            ),
        ];
        let with = |cn: Option<&str>, dns: &[&str], uris: &[&str]| Peer {
            tls: Some(CertNames {
                common_name: cn.map(str::to_owned),
                dns: dns.iter().map(|s| s.to_string()).collect(),
                uris: uris.iter().map(|s| s.to_string()).collect(),
            }),
            ..Peer::default()
        };
        for (peer, expected) in [
            (with(Some("ci"), &[], &[]), Ok(0)),
            (with(None, &["CI.Example.ORG"], &[]), Ok(1)),
            (with(Some("x"), &[], &["spiffe://example.org/ci"]), Ok(2)),
            (
                with(Some("CI"), &[], &[]),
                Err(AuthFailure::UnknownCertificate),
            ),
            (
                with(None, &[], &["SPIFFE://example.org/ci"]),
                Err(AuthFailure::UnknownCertificate),
            ),
            (
                with(None, &["spiffe://example.org/ci"], &[]),
                Err(AuthFailure::UnknownCertificate),
            ),
            (
                with(None, &[], &["ci.example.org"]),
                Err(AuthFailure::UnknownCertificate),
            ),
            (
                with(Some("ci"), &["ci.example.org"], &[]),
                Err(AuthFailure::AmbiguousCertificate),
            ),
            (Peer::default(), Err(AuthFailure::NoCredentials)),
        ] {
            assert_eq!(identify(&clients, &peer, None), expected, "{peer:?}");
        }
    }
}

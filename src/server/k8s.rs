//! The Kubernetes external JWT signer (KEP-740): kube-apiserver, started with
//! `--service-account-signing-endpoint`, has keyturn sign its service-account tokens and
//! fetches the verification keys from it, over gRPC on a local Unix socket.
//!
//! Both API packages are served on one socket: `v1alpha1` (Kubernetes 1.32, behind a
//! feature gate) and `v1` (1.34 on). The key set named by `server.k8s_signer_keyset` signs;
//! its limits apply to every token kube-apiserver asks for, exactly as they do on the
//! signing API, and every signature is audited with the caller `kube-apiserver`.

use crate::config::KeySetConfig;
use crate::core::keyset::KeySet;
use crate::core::policy::Audience;
use crate::server::sign::{SignError, Transaction};
use crate::server::state::AppState;
use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{UnixListener, UnixStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};
use tower::ServiceExt;

/// The gRPC code generated from `proto/externaljwt/{v1,v1alpha1}/api.proto`: the messages,
/// the server traits keyturn implements and the clients kube-apiserver (or a test) uses.
#[allow(
    missing_docs,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod proto {
    /// Package `v1` (Kubernetes 1.34 on).
    pub mod v1 {
        tonic::include_proto!("v1");
    }
    /// Package `v1alpha1` (Kubernetes 1.32 and 1.33).
    pub mod v1alpha1 {
        tonic::include_proto!("v1alpha1");
    }
}

/// The caller named in audit lines for every signature made here.
pub const CALLER: &str = "kube-apiserver";

/// Longest `claims` accepted: far above any service-account token, far below gRPC's 4 MiB.
pub const MAX_CLAIMS: usize = 64 * 1024;

/// How long in-flight calls get to finish on shutdown before the listener is dropped;
/// kube-apiserver keeps its connection open, so the drain must not wait for it to leave.
const DRAIN: Duration = Duration::from_secs(5);

/// Longest a single call may take (a backend round trip included).
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// Open connections at most; kube-apiserver holds one (a few across restarts).
const MAX_CONNECTIONS: usize = 64;

/// Concurrent calls per connection.
const MAX_STREAMS: u32 = 256;

/// What a signature is checked against and recorded with, read from the claims.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedClaims {
    /// `exp`.
    pub exp: i64,
    /// `sub`, if a string.
    pub sub: Option<String>,
    /// `aud`, if a string or an array of strings.
    pub aud: Option<Audience<'static>>,
    /// `jti`, if a string.
    pub jti: Option<String>,
}

/// A NumericDate claim (RFC 7519 section 2), whole seconds; None when absent.
fn numeric_date(claims: &Map<String, Value>, name: &str) -> Result<Option<i64>, Status> {
    let Some(v) = claims.get(name) else {
        return Ok(None);
    };
    let last = crate::core::json::LAST_NUMERIC_DATE;
    v.as_i64()
        .or_else(|| {
            v.as_f64()
                .filter(|f| f.is_finite() && f.abs() < 1e15)
                .map(|f| f.floor() as i64)
        })
        .filter(|n| (0..=last).contains(n))
        .map(Some)
        .ok_or_else(|| {
            Status::invalid_argument(format!(
                "claim {name:?} must be a NumericDate (seconds since the epoch, 0 to {last}), \
                 not {v}"
            ))
        })
}

/// Decodes the claims segment exactly as kube-apiserver sent it and checks it against the
/// key set's limits. The segment itself is what gets signed; nothing here re-encodes it.
///
/// `iss` must be the key set's issuer; `exp` must lie in the future and at most
/// `max_token_ttl` (plus `clock_skew`, for kube-apiserver's clock) ahead; `exp - iat` at
/// most `max_token_ttl`; `iat` and `nbf` neither after `exp` nor ahead of our clock by
/// more than the skew. A token that passes expires before its key leaves the JWKS.
pub fn check_claims(
    segment: &str,
    config: &KeySetConfig,
    now: i64,
) -> Result<CheckedClaims, Status> {
    if segment.is_empty() {
        return Err(Status::invalid_argument(
            "claims is empty: send the base64url-encoded JWT claims segment",
        ));
    }
    if segment.len() > MAX_CLAIMS {
        return Err(Status::invalid_argument(format!(
            "claims is {} bytes; at most {MAX_CLAIMS} are accepted",
            segment.len()
        )));
    }
    let json = B64.decode(segment).map_err(|e| {
        Status::invalid_argument(format!(
            "claims is not unpadded base64url (the JWT's second segment): {e}"
        ))
    })?;
    let claims: Map<String, Value> = serde_json::from_slice(&json).map_err(|e| {
        Status::invalid_argument(format!("claims does not decode to a JSON object: {e}"))
    })?;
    // A name given twice would be read one way here and maybe another by a verifier.
    if crate::core::json::strict(&json).is_err() {
        return Err(Status::invalid_argument(
            "claims give a name twice (in some object); give each name once",
        ));
    }
    let timing = &config.timing;
    match claims.get("iss") {
        Some(Value::String(iss)) if *iss == config.issuer => {}
        Some(Value::String(iss)) => {
            return Err(Status::permission_denied(format!(
                "iss {iss:?} is not the issuer of key set {:?} ({:?}); start kube-apiserver \
                 with --service-account-issuer={} or sign with another key set",
                config.name, config.issuer, config.issuer
            )))
        }
        _ => {
            return Err(Status::invalid_argument(
                "claim \"iss\" is missing or not a string",
            ))
        }
    }
    let exp = numeric_date(&claims, "exp")?
        .ok_or_else(|| Status::invalid_argument("claim \"exp\" is missing"))?;
    if exp <= now {
        return Err(Status::invalid_argument(format!(
            "exp {exp} is not in the future (now is {now}); check kube-apiserver's clock"
        )));
    }
    let too_long = |lifetime: i64| {
        Status::permission_denied(format!(
            "the token would live {lifetime}s, longer than key set {:?} allows ({}s); set \
             kube-apiserver's --service-account-max-token-expiration to at most {}s, or raise \
             the key set's max_token_ttl",
            config.name, timing.max_token_ttl, timing.max_token_ttl
        ))
    };
    // kube-apiserver's clock may run ahead of ours by up to the tolerated skew.
    if exp.saturating_sub(now) > timing.max_token_ttl.saturating_add(timing.clock_skew) {
        return Err(too_long(exp.saturating_sub(now)));
    }
    let ahead = now.saturating_add(timing.clock_skew);
    if let Some(iat) = numeric_date(&claims, "iat")? {
        if iat >= exp {
            return Err(Status::invalid_argument(format!(
                "iat {iat} is not before exp {exp}"
            )));
        }
        if iat > ahead {
            return Err(Status::invalid_argument(format!(
                "iat {iat} is in the future (now is {now}); check kube-apiserver's clock"
            )));
        }
        // Both within 0..=LAST_NUMERIC_DATE: the difference cannot overflow.
        let lifetime = exp.saturating_sub(iat);
        if lifetime > timing.max_token_ttl {
            return Err(too_long(lifetime));
        }
    }
    if let Some(nbf) = numeric_date(&claims, "nbf")? {
        if nbf >= exp {
            return Err(Status::invalid_argument(format!(
                "nbf {nbf} is not before exp {exp}"
            )));
        }
        if nbf > ahead {
            return Err(Status::invalid_argument(format!(
                "nbf {nbf} is in the future (now is {now}); check kube-apiserver's clock"
            )));
        }
    }
    let aud = match claims.get("aud") {
        None => None,
        Some(aud) => Some(Audience::from_value(aud).ok_or_else(|| {
            Status::invalid_argument("claim \"aud\" is not a string or an array of strings")
        })?),
    };
    Ok(CheckedClaims {
        exp,
        sub: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
        aud,
        jti: claims.get("jti").and_then(Value::as_str).map(str::to_owned),
    })
}

/// Why a signing transaction gave no token, as gRPC tells kube-apiserver.
fn status(e: SignError) -> Status {
    match e {
        SignError::CannotSign(why) => Status::unavailable(why.message()),
        SignError::BackendDown => {
            Status::unavailable("the key backend is unreachable; retry shortly")
        }
        SignError::BackendFailed => {
            Status::internal("the backend could not sign; see keyturn's log")
        }
        SignError::Revoked => {
            Status::unavailable("the signing key was revoked while it signed; retry")
        }
        SignError::AuditUnavailable => {
            Status::unavailable("the audit log is not writable; no token was issued")
        }
        SignError::StatusListsUnavailable => {
            Status::unavailable("no status list index could be reserved; retry shortly")
        }
    }
}

/// The JWT header kube-apiserver accepts from an external signer: `alg`, `kid` and
/// `typ: JWT`, nothing else, as unpadded base64url JSON.
pub fn header(alg: &str, kid: &str) -> String {
    let json = serde_json::json!({"alg": alg, "kid": kid, "typ": "JWT"});
    B64.encode(json.to_string())
}

/// The verification keys as FetchKeys returns them.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyData {
    /// (kid, PKIX DER) of every published key: pending, active and retired ones.
    pub keys: Vec<(String, Vec<u8>)>,
    /// When the published keys last changed, Unix seconds.
    pub changed_at: i64,
    /// How often to refetch, seconds (at least 1).
    pub refresh_hint: i64,
}

/// The ExternalJWTSigner service for one key set; serves both API packages.
#[derive(Clone)]
pub struct Signer {
    state: Arc<AppState>,
    keyset: String,
}

impl Signer {
    /// A signer for key set `keyset`.
    pub fn new(state: Arc<AppState>, keyset: String) -> Self {
        Signer { state, keyset }
    }

    // Looked up per call: a reload may replace the key set object (never remove it while
    // it is named here: the config check refuses that).
    fn keyset(&self) -> Result<Arc<KeySet>, Status> {
        self.state
            .keysets
            .load()
            .get(&self.keyset)
            .cloned()
            .ok_or_else(|| Status::unavailable(format!("key set {:?} is not loaded", self.keyset)))
    }

    /// Sign: checks `claims`, signs `header.claims` with the active key, audits it.
    /// Returns (header, signature), both unpadded base64url.
    pub async fn sign_claims(&self, claims: &str) -> Result<(String, String), Status> {
        let keyset = self.keyset()?;
        let now = self.state.clock.now();
        let checked = check_claims(claims, &keyset.config, now)?;
        let tx = Transaction::begin(&self.state, &keyset, now).map_err(status)?;
        let header = header(tx.published().alg.as_str(), &tx.key().kid);
        let signing_input = format!("{header}.{claims}");
        let sig = tx.sign(signing_input.as_bytes()).await.map_err(status)?;
        let line = tx
            .record(
                CALLER,
                checked.jti.as_deref(),
                checked.sub.as_deref(),
                checked.aud.as_ref(),
                checked.exp,
                None,
            )
            .await
            .map_err(status)?;
        tx.finish(line).await.map_err(status)?;
        Ok((header, B64.encode(sig)))
    }

    /// FetchKeys: every published key. A pending key is here for at least the publish lead
    /// (jwks_max_age + clock_skew) before it signs, and the refresh hint is jwks_max_age,
    /// so kube-apiserver holds every key at least one refresh interval before its first
    /// token. A revoked key is gone from the next answer.
    pub fn key_data(&self) -> Result<KeyData, Status> {
        let keyset = self.keyset()?;
        let published = keyset.published();
        Ok(KeyData {
            keys: published
                .keys
                .iter()
                .map(|k| (k.kid.clone(), k.spki_der.clone()))
                .collect(),
            changed_at: published.doc.jwks_changed_at,
            refresh_hint: keyset.config.timing.jwks_max_age.max(1),
        })
    }

    /// Metadata: the longest token lifetime, the key set's max_token_ttl.
    pub fn max_token_expiration(&self) -> Result<i64, Status> {
        Ok(self.keyset()?.config.timing.max_token_ttl)
    }
}

/// Implements one API package's service trait on [`Signer`]; the packages' messages are
/// identical, only their Rust types differ.
macro_rules! external_jwt_signer {
    ($v:ident) => {
        #[tonic::async_trait]
        impl proto::$v::external_jwt_signer_server::ExternalJwtSigner for Signer {
            async fn sign(
                &self,
                request: Request<proto::$v::SignJwtRequest>,
            ) -> Result<Response<proto::$v::SignJwtResponse>, Status> {
                let (header, signature) = self.sign_claims(&request.into_inner().claims).await?;
                Ok(Response::new(proto::$v::SignJwtResponse {
                    header,
                    signature,
                }))
            }

            async fn fetch_keys(
                &self,
                _request: Request<proto::$v::FetchKeysRequest>,
            ) -> Result<Response<proto::$v::FetchKeysResponse>, Status> {
                let data = self.key_data()?;
                Ok(Response::new(proto::$v::FetchKeysResponse {
                    keys: data
                        .keys
                        .into_iter()
                        .map(|(key_id, key)| proto::$v::Key {
                            key_id,
                            key,
                            exclude_from_oidc_discovery: false,
                        })
                        .collect(),
                    data_timestamp: Some(prost_types::Timestamp {
                        seconds: data.changed_at,
                        nanos: 0,
                    }),
                    refresh_hint_seconds: data.refresh_hint,
                }))
            }

            async fn metadata(
                &self,
                _request: Request<proto::$v::MetadataRequest>,
            ) -> Result<Response<proto::$v::MetadataResponse>, Status> {
                Ok(Response::new(proto::$v::MetadataResponse {
                    max_token_expiration_seconds: self.max_token_expiration()?,
                }))
            }
        }
    };
}

external_jwt_signer!(v1);
external_jwt_signer!(v1alpha1);

/// Where the signer listens, parsed from `server.k8s_signer_socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketSpec<'a> {
    /// A socket file.
    Path(&'a Path),
    /// A Linux abstract socket (`@name`).
    Abstract(&'a str),
}

impl<'a> SocketSpec<'a> {
    /// `@name` is an abstract socket, anything else a path (as kube-apiserver reads it).
    pub fn parse(socket: &'a str) -> Self {
        match socket.strip_prefix('@') {
            Some(name) => SocketSpec::Abstract(name),
            None => SocketSpec::Path(Path::new(socket)),
        }
    }
}

/// Binds the signer's socket: a stale socket file is replaced, a new one is made 0600.
pub fn bind(socket: &str) -> anyhow::Result<UnixListener> {
    match SocketSpec::parse(socket) {
        SocketSpec::Path(path) => bind_path(path),
        SocketSpec::Abstract(name) => bind_abstract(name),
    }
}

fn bind_path(path: &Path) -> anyhow::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            bail!(
                "{} exists and is not a socket; remove it or choose another k8s_signer_socket",
                path.display()
            );
        }
        // Left by a previous run (no one can be listening on it: we are starting).
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    // Only keyturn's own user (and root, i.e. kube-apiserver) may connect.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("cannot chmod 0600 {}", path.display()))?;
    Ok(listener)
}

#[cfg(target_os = "linux")]
fn bind_abstract(name: &str) -> anyhow::Result<UnixListener> {
    use std::os::linux::net::SocketAddrExt;
    if name.is_empty() {
        bail!("k8s_signer_socket \"@\" names no abstract socket; use \"@name\"");
    }
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
        .with_context(|| format!("bad abstract socket name @{name}"))?;
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr)
        .with_context(|| format!("cannot bind the abstract socket @{name}"))?;
    listener.set_nonblocking(true)?;
    Ok(UnixListener::from_std(listener)?)
}

#[cfg(not(target_os = "linux"))]
fn bind_abstract(name: &str) -> anyhow::Result<UnixListener> {
    bail!("abstract sockets (@{name}) exist on Linux only; give k8s_signer_socket a path")
}

/// The uid this process runs as, from the kernel's credentials on a socket pair (no
/// `unsafe` call to `geteuid`).
fn own_uid() -> std::io::Result<u32> {
    let (a, _b) = UnixStream::pair()?;
    Ok(a.peer_cred()?.uid())
}

/// Whether a connecting peer may use the signer: root (kube-apiserver) or keyturn's own
/// user. A socket file's 0600 mode says the same; an abstract socket has no mode at all,
/// so without this check any process in the network namespace could mint tokens.
fn peer_allowed(stream: &UnixStream, own: u32) -> bool {
    match stream.peer_cred() {
        Ok(cred) if cred.uid() == 0 || cred.uid() == own => true,
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "k8s signer: connection refused: only root or keyturn's own user may connect"
            );
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "k8s signer: connection refused: no peer credentials");
            false
        }
    }
}

/// Serves both ExternalJWTSigner packages (gRPC, HTTP/2 without TLS) on `listener` until
/// `shutdown`; then in-flight calls get a bounded drain and every remaining connection is
/// closed, so that none outlives the daemon's state (and its audit log).
pub async fn serve(
    listener: UnixListener,
    state: Arc<AppState>,
    keyset: String,
    shutdown: CancellationToken,
) {
    let own = match own_uid() {
        Ok(uid) => uid,
        Err(e) => {
            tracing::error!(error = %e, "k8s signer: cannot learn keyturn's own uid; not serving");
            return;
        }
    };
    let signer = Signer::new(state, keyset);
    let limit = MAX_CLAIMS + 1024;
    let app = tonic::service::Routes::new(
        proto::v1::external_jwt_signer_server::ExternalJwtSignerServer::new(signer.clone())
            .max_decoding_message_size(limit),
    )
    .add_service(
        proto::v1alpha1::external_jwt_signer_server::ExternalJwtSignerServer::new(signer)
            .max_decoding_message_size(limit),
    )
    .prepare()
    .into_axum_router();
    let mut builder =
        hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .max_header_list_size(64 * 1024)
        .max_concurrent_streams(MAX_STREAMS);
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut connections = JoinSet::new();
    loop {
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "k8s signer: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        // Finished connections leave the set here, so it stays as small as the live ones.
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS || !peer_allowed(&stream, own) {
            continue;
        }
        let app = app.clone();
        let service = hyper::service::service_fn(move |req| {
            let call = app.clone().oneshot(req);
            async move {
                match tokio::time::timeout(CALL_TIMEOUT, call).await {
                    Ok(response) => response,
                    Err(_) => Ok(Status::deadline_exceeded("the call took too long").into_http()),
                }
            }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "k8s signer: connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("k8s signer: drain timed out; closing the remaining connections");
    }
    connections.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, Env};
    use tonic::Code;

    fn config() -> KeySetConfig {
        Config::parse(
            r#"
            [[keyset]]
            name = "cluster"
            issuer = "https://kubernetes.default.svc"
            algorithm = "ES256"
            rotate_every = "24h"
            max_token_ttl = "1h"
            jwks_max_age = "5m"
            clock_skew = "60s"
            "#,
            Env::default(),
        )
        .unwrap()
        .keysets[0]
            .clone()
    }

    fn enc(v: Value) -> String {
        B64.encode(v.to_string())
    }

    const NOW: i64 = 1_700_000_000;

    fn kube_claims(iat: i64, exp: i64) -> Value {
        serde_json::json!({
            "aud": ["https://kubernetes.default.svc"],
            "exp": exp,
            "iat": iat,
            "iss": "https://kubernetes.default.svc",
            "jti": "5b7a0f0e-8d0e-4b3f-9a50-0d6f7e0c1a2b",
            "kubernetes.io": {"namespace": "default", "serviceaccount": {"name": "default", "uid": "u"}},
            "nbf": iat,
            "sub": "system:serviceaccount:default:default"
        })
    }

    fn refused(segment: &str) -> (Code, String) {
        let e = check_claims(segment, &config(), NOW).unwrap_err();
        (e.code(), e.message().to_owned())
    }

    #[test]
    fn kube_apiserver_claims_pass_and_feed_the_audit_line() {
        let c = check_claims(&enc(kube_claims(NOW, NOW + 3600)), &config(), NOW).unwrap();
        assert_eq!(c.exp, NOW + 3600);
        assert_eq!(
            c.sub.as_deref(),
            Some("system:serviceaccount:default:default")
        );
        assert_eq!(
            c.jti.as_deref(),
            Some("5b7a0f0e-8d0e-4b3f-9a50-0d6f7e0c1a2b")
        );
        assert_eq!(
            c.aud,
            Some(Audience::Many(
                vec!["https://kubernetes.default.svc".into()]
            ))
        );
        // kube-apiserver's clock a little ahead of ours: within the skew.
        check_claims(&enc(kube_claims(NOW + 30, NOW + 3630)), &config(), NOW).unwrap();
        // Fractional NumericDates are whole seconds.
        let mut v = kube_claims(NOW, NOW + 60);
        v["exp"] = serde_json::json!((NOW + 60) as f64 + 0.5);
        assert_eq!(check_claims(&enc(v), &config(), NOW).unwrap().exp, NOW + 60);
    }

    /// Times from outside are NumericDates within 0 to year 9999: an extreme `iat` is
    /// refused, not wrapped into a short lifetime.
    #[test]
    fn extreme_times_are_refused() {
        for (name, value) in [
            ("iat", serde_json::json!(i64::MIN)),
            ("iat", serde_json::json!(-1)),
            ("nbf", serde_json::json!(i64::MIN + 1)),
            ("exp", serde_json::json!(i64::MAX)),
            ("exp", serde_json::json!(1e300)),
        ] {
            let mut v = kube_claims(NOW, NOW + 600);
            v[name] = value.clone();
            let (code, msg) = refused(&enc(v));
            assert_eq!(code, Code::InvalidArgument, "{name} = {value}: {msg}");
            assert!(msg.contains("NumericDate"), "{name} = {value}: {msg}");
        }
    }

    #[test]
    fn bad_encoding_is_invalid_argument() {
        for segment in [
            "",
            "not base64!",
            "eyJpc3MiOiJ4In0=", // padded
            "eyJpc3MiOiJ4In0.", // a dot
        ] {
            assert_eq!(refused(segment).0, Code::InvalidArgument, "{segment:?}");
        }
        let (code, msg) = refused(&B64.encode("not json"));
        assert_eq!(code, Code::InvalidArgument);
        assert!(msg.contains("JSON object"), "{msg}");
        assert_eq!(refused(&B64.encode("[1,2]")).0, Code::InvalidArgument);
        // A name twice, at the top or nested: which one counts would differ by verifier.
        let good = kube_claims(NOW, NOW + 600).to_string();
        for twice in [
            good.replacen("{", &format!("{{\"exp\":{},", NOW + 99_999), 1),
            good.replacen("\"uid\":\"u\"", "\"uid\":\"u\",\"uid\":\"v\"", 1),
        ] {
            assert!(serde_json::from_str::<Value>(&twice).is_ok(), "{twice}");
            let (code, msg) = refused(&B64.encode(&twice));
            assert_eq!(code, Code::InvalidArgument, "{twice}");
            assert!(msg.contains("twice"), "{msg}");
        }
        assert_eq!(
            refused(&"A".repeat(MAX_CLAIMS + 4)).0,
            Code::InvalidArgument
        );
    }

    #[test]
    fn limits_of_the_key_set_are_enforced() {
        let mut wrong_iss = kube_claims(NOW, NOW + 600);
        wrong_iss["iss"] = "https://evil.example".into();
        let (code, msg) = refused(&enc(wrong_iss));
        assert_eq!(code, Code::PermissionDenied);
        assert!(msg.contains("--service-account-issuer"), "{msg}");

        let (code, msg) = refused(&enc(kube_claims(NOW, NOW + 3601)));
        assert_eq!(code, Code::PermissionDenied);
        assert!(
            msg.contains("--service-account-max-token-expiration"),
            "{msg}"
        );
        // Without iat, exp is measured from our clock (plus the skew).
        let mut v = kube_claims(NOW, NOW + 3600 + 61);
        v.as_object_mut().unwrap().remove("iat");
        assert_eq!(refused(&enc(v)).0, Code::PermissionDenied);

        for (name, value) in [
            ("exp", serde_json::json!(NOW)),
            ("exp", serde_json::json!(NOW - 10)),
            ("exp", serde_json::json!("tomorrow")),
            ("iat", serde_json::json!(NOW + 3600)),
            ("iat", serde_json::json!(NOW + 120)),
            ("nbf", serde_json::json!(NOW + 120)),
            ("nbf", serde_json::json!(NOW + 600)),
            ("iss", serde_json::json!(7)),
            ("aud", serde_json::json!({"a": 1})),
            ("aud", serde_json::json!(["x", 1])),
        ] {
            let mut v = kube_claims(NOW, NOW + 600);
            v[name] = value.clone();
            assert_eq!(
                refused(&enc(v)).0,
                Code::InvalidArgument,
                "{name} = {value}"
            );
        }
        for name in ["exp", "iss"] {
            let mut v = kube_claims(NOW, NOW + 600);
            v.as_object_mut().unwrap().remove(name);
            assert_eq!(refused(&enc(v)).0, Code::InvalidArgument, "no {name}");
        }
    }

    #[test]
    fn header_has_exactly_alg_kid_typ() {
        let h = header("ES256", "abc");
        assert!(!h.contains('='));
        let v: Value = serde_json::from_slice(&B64.decode(h).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"alg": "ES256", "kid": "abc", "typ": "JWT"})
        );
    }

    #[test]
    fn socket_specs() {
        assert_eq!(SocketSpec::parse("@kt"), SocketSpec::Abstract("kt"));
        assert_eq!(
            SocketSpec::parse("/run/keyturn/k8s.sock"),
            SocketSpec::Path(Path::new("/run/keyturn/k8s.sock"))
        );
    }

    #[tokio::test]
    async fn path_socket_is_0600_and_a_stale_one_is_replaced() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/k8s.sock");
        let first = bind(path.to_str().unwrap()).unwrap();
        drop(first); // leaves the file behind, as a crash would
        assert!(path.exists());
        let _second = bind(path.to_str().unwrap()).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A regular file is never removed.
        let file = dir.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert!(bind(file.to_str().unwrap()).is_err());
        assert!(file.exists());
        assert!(own_uid().is_ok());
    }

    /// Claims for the in-process key set (issuer https://issuer.test, max_token_ttl 10m).
    fn in_process_claims(now: i64) -> String {
        let mut v = kube_claims(now, now + 600);
        v["iss"] = "https://issuer.test".into();
        enc(v)
    }

    /// The signer refuses as the signing API does: a replica out of touch with the shared
    /// state for longer than the sync delay, and a key revoked while it signs
    /// (no token, no audit line).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_signer_refuses_when_out_of_touch_or_revoked_while_signing() {
        use crate::core::clock::Clock;
        use crate::server::testing::{InProcess, Rigged};
        use std::sync::atomic::Ordering;
        let app = InProcess::new(Rigged {
            shared: true,
            ..Default::default()
        })
        .await;
        let signer = Signer::new(app.state.clone(), "default".into());
        signer
            .sign_claims(&in_process_claims(app.clock.now()))
            .await
            .unwrap();
        app.backend.fail_reads.store(true, Ordering::Relaxed);
        app.clock.advance(15);
        assert!(app.keyset.tick(app.clock.now()).await.is_err());
        app.clock.advance(33);
        let e = signer
            .sign_claims(&in_process_claims(app.clock.now()))
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().contains("could not be read lately"), "{e:?}");
        drop(signer);
        assert_eq!(app.finish(), 1);

        let app = InProcess::new(Rigged {
            hold: true,
            ..Default::default()
        })
        .await;
        let signer = Signer::new(app.state.clone(), "default".into());
        let claims = in_process_claims(app.clock.now());
        let signing = tokio::spawn(async move { signer.sign_claims(&claims).await });
        app.backend.waiting.acquire().await.unwrap().forget();
        let now = app.clock.now();
        let active = app.keyset.published().signer(now).unwrap().kid.clone();
        app.keyset.revoke(&active, now).await.unwrap();
        app.backend.released.add_permits(1);
        let e = signing.await.unwrap().unwrap_err();
        assert_eq!(e.code(), Code::Unavailable);
        assert!(e.message().contains("revoked"), "{e:?}");
        assert_eq!(app.finish(), 1, "the withheld token's audit line");
    }
}

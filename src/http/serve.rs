//! Accept loops: TCP (optionally TLS) and Unix sockets, one per listener, each with its own
//! connection limit, header-read timeout and graceful drain. Each connection gets its
//! service from the listener's [`PerConnection`]: the API router sees the caller's
//! transport identity ([`Peer`]), shared by the connection's requests.

use crate::auth::Peer;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::util::Oneshot;
use tower::ServiceExt;
use tower_http::request_id::{
    MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer,
};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tower_http::LatencyUnit;
use tracing::Level;

/// Per-listener limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Open connections at most; further clients wait in the accept backlog.
    pub max_connections: usize,
    /// Time to send the request headers (slowloris), and to finish a TLS handshake.
    pub header_timeout: Duration,
    /// Time to send a request body.
    pub body_timeout: Duration,
    /// How long in-flight requests may run after shutdown starts.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            drain: Duration::from_secs(10),
        }
    }
}

/// A TLS acceptor plus how to name the client from its certificate.
pub type TlsAcceptor = tokio_rustls::TlsAcceptor;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What a listener serves: a service for each connection, given who is on the other end.
pub trait PerConnection: Clone + Send + 'static {
    /// The response body.
    type Body: hyper::body::Body<Data = bytes::Bytes, Error: Into<BoxError>> + Send + 'static;
    /// The connection's service.
    type Service: hyper::service::Service<
            http::Request<Incoming>,
            Response = http::Response<Self::Body>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + 'static;
    /// The service for a connection from `peer`.
    fn service(&self, peer: Peer) -> Self::Service;
}

/// An axum router sees the caller: every request carries its connection's `Arc<Peer>`.
impl PerConnection for Router {
    type Body = axum::body::Body;
    type Service = WithPeer;
    fn service(&self, peer: Peer) -> WithPeer {
        WithPeer {
            app: self.clone(),
            peer: Arc::new(peer),
        }
    }
}

/// A router and the peer of one connection.
#[derive(Clone)]
pub struct WithPeer {
    app: Router,
    peer: Arc<Peer>,
}

impl hyper::service::Service<http::Request<Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Oneshot<Router, http::Request<Incoming>>;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.peer.clone());
        self.app.clone().oneshot(req)
    }
}

/// The public documents need no caller identity.
impl PerConnection for super::public::Documents {
    type Body = http_body_util::Full<bytes::Bytes>;
    type Service = Self;
    fn service(&self, _: Peer) -> Self {
        self.clone()
    }
}

struct Shared<A> {
    app: A,
    builder: Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    permits: Arc<Semaphore>,
    // A connection with no request started and none running this long is closed.
    idle: Duration,
    // Every connection task, so that the ones still open after the drain are aborted: a
    // stuck client must not keep the daemon (and its audit log) alive.
    conns: JoinSet<()>,
}

/// Numbers requests: `<process start in hex>-<counter>`, unique across restarts.
#[derive(Clone)]
struct RequestIds(Arc<(String, AtomicU64)>);

impl MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &http::Request<B>) -> Option<RequestId> {
        let n = self.0 .1.fetch_add(1, Ordering::Relaxed);
        http::HeaderValue::from_str(&format!("{}-{n}", self.0 .0))
            .ok()
            .map(RequestId::new)
    }
}

/// Gives every request an id (`x-request-id` in the response) and a DEBUG span with the
/// id, method and path, closed with the status and latency. Headers are never logged.
/// The API listener uses it; the public listener, which only serves pre-serialized
/// documents to anonymous readers, does not pay for it (see BENCHMARKS.md).
pub fn traced(app: Router) -> Router {
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let ids = RequestIds(Arc::new((format!("{start:x}"), AtomicU64::new(0))));
    let trace = TraceLayer::new_for_http()
        .make_span_with(|req: &http::Request<_>| {
            let id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-");
            tracing::debug_span!("request", id, method = %req.method(), path = %req.uri().path())
        })
        .on_request(())
        .on_response(
            DefaultOnResponse::new()
                .level(Level::DEBUG)
                .latency_unit(LatencyUnit::Micros),
        )
        .on_failure(());
    app.layer(PropagateRequestIdLayer::x_request_id())
        .layer(trace)
        .layer(SetRequestIdLayer::x_request_id(ids))
}

impl<A: PerConnection> Shared<A> {
    fn new(app: A, limits: &Limits) -> Self {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(64 * 1024)
            // Headers and body in one buffer, one write: for the small responses here
            // (a JWKS, a token) 4% less CPU per JWKS GET than vectored writes (BENCHMARKS.md).
            .writev(false);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(64 * 1024)
            .max_concurrent_streams(256);
        Shared {
            app,
            builder,
            graceful: GracefulShutdown::new(),
            permits: Arc::new(Semaphore::new(limits.max_connections)),
            idle: limits.header_timeout,
            conns: JoinSet::new(),
        }
    }

    /// Serves one connection in a task of its own, once `accept` (a TLS handshake, or
    /// nothing) has produced its stream and peer: a client that stalls there holds up
    /// only its own task, never the accept loop.
    fn spawn_conn<IO>(
        &mut self,
        accept: impl Future<Output = Option<(IO, Peer)>> + Send + 'static,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let (app, builder, watcher, idle) = (
            self.app.clone(),
            self.builder.clone(),
            self.graceful.watcher(),
            self.idle,
        );
        self.conns.spawn(async move {
            if let Some((io, peer)) = accept.await {
                let activity = Arc::new(Activity::default());
                let service = Noting {
                    inner: app.service(peer),
                    activity: activity.clone(),
                };
                let conn = builder.serve_connection(TokioIo::new(io), service);
                let conn = watcher.watch(conn.into_owned());
                tokio::pin!(conn);
                // Closed (by dropping it) once a whole header_timeout passes with no request
                // started and none in flight, from the start (silent clients, an HTTP/2
                // preface alone) or between requests (idle HTTP/2; hyper times out idle
                // HTTP/1 itself).
                let mut seen = 0;
                loop {
                    tokio::select! {
                        biased;
                        _ = &mut conn => break,
                        () = tokio::time::sleep(idle) => {
                            let started = activity.started.load(Ordering::Relaxed);
                            if started == seen && activity.in_flight.load(Ordering::Relaxed) == 0 {
                                break;
                            }
                            seen = started;
                        }
                    }
                }
            }
            drop(permit);
        });
        // Reap finished connections so the set stays as small as the open connections.
        while self.conns.try_join_next().is_some() {}
    }

    async fn drain(mut self, limits: &Limits, name: &str) {
        if tokio::time::timeout(limits.drain, self.graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                listener = name,
                "drain timed out; closing remaining connections"
            );
        }
        self.conns.shutdown().await;
    }
}

/// Serves `app` on a TCP listener until `shutdown`, then drains.
pub async fn serve_tcp(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: impl PerConnection,
    limits: Limits,
    shutdown: CancellationToken,
    name: &'static str,
) {
    let mut shared = Shared::new(app, &limits);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = shared.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let (stream, remote) = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    // Out of file descriptors and the like: give the system a moment.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let mut peer = Peer {
            remote: Some(remote.to_string()),
            ..Peer::default()
        };
        match &tls {
            None => shared.spawn_conn(std::future::ready(Some((stream, peer))), permit),
            Some(acceptor) => {
                let (acceptor, stopping) = (acceptor.clone(), shutdown.clone());
                let handshake = async move {
                    let accept =
                        tokio::time::timeout(limits.header_timeout, acceptor.accept(stream));
                    // A stop does not wait for handshakes: they have no request yet.
                    let accepted = tokio::select! {
                        biased;
                        () = stopping.cancelled() => return None,
                        accepted = accept => accepted,
                    };
                    match accepted {
                        Ok(Ok(tls_stream)) => {
                            peer.tls_subject = crate::tls::peer_subject(tls_stream.get_ref().1);
                            Some((tls_stream, peer))
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(listener = name, error = %e, "TLS handshake failed");
                            None
                        }
                        Err(_) => {
                            tracing::debug!(listener = name, "TLS handshake timed out");
                            None
                        }
                    }
                };
                shared.spawn_conn(handshake, permit);
            }
        }
    }
    shared.drain(&limits, name).await;
}

/// Serves `app` on a Unix socket until `shutdown`, then drains. Each request carries the
/// peer's uid and gid from the kernel.
pub async fn serve_unix(
    listener: UnixListener,
    app: impl PerConnection,
    limits: Limits,
    shutdown: CancellationToken,
    name: &'static str,
) {
    let mut shared = Shared::new(app, &limits);
    loop {
        let permit = tokio::select! {
            () = shutdown.cancelled() => break,
            p = shared.permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break },
        };
        let stream = tokio::select! {
            () = shutdown.cancelled() => break,
            r = listener.accept() => match r {
                Ok((s, _)) => s,
                Err(e) => {
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let unix = stream.peer_cred().ok().map(|c| (c.uid(), c.gid()));
        let peer = Peer {
            unix,
            remote: Some("unix".into()),
            ..Peer::default()
        };
        shared.spawn_conn(std::future::ready(Some((stream, peer))), permit);
    }
    shared.drain(&limits, name).await;
}

/// What a connection's requests have done: how many started, how many are running.
#[derive(Default)]
struct Activity {
    started: AtomicU64,
    in_flight: AtomicUsize,
}

/// A connection's service that keeps its [`Activity`], so that an idle connection can be
/// closed: hyper's own header timer starts only once it knows the protocol, and never for
/// HTTP/2, so connections that send nothing, only the HTTP/2 preface, or one request and
/// then nothing would otherwise stay open and use up `max_connections`.
#[derive(Clone)]
struct Noting<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S, R> hyper::service::Service<R> for Noting<S>
where
    S: hyper::service::Service<R>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Running<S::Future>;

    fn call(&self, req: R) -> Self::Future {
        self.activity.started.fetch_add(1, Ordering::Relaxed);
        self.activity.in_flight.fetch_add(1, Ordering::Relaxed);
        Running {
            inner: self.inner.call(req),
            _done: Done(self.activity.clone()),
        }
    }
}

/// Counts a request out of flight when its future completes or is dropped.
struct Done(Arc<Activity>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A request's future, in flight until it is dropped.
    struct Running<F> {
        #[pin]
        inner: F,
        _done: Done,
    }
}

impl<F: Future> Future for Running<F> {
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.project().inner.poll(cx)
    }
}

//! Accept loops: TCP (optionally TLS) and Unix sockets, one per listener, each with its own
//! connection limit, header-read timeout and graceful drain. Each connection gets its
//! service from the listener's [`PerConnection`]: the API router sees the caller's
//! transport identity ([`Peer`]), shared by the connection's requests, and every API
//! request gets an id and a span ([`Traced`]).

use crate::server::auth::Peer;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::config::Limits;
use std::time::Instant;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::util::Oneshot;
use tower::ServiceExt;
use tracing::instrument::{Instrument, Instrumented};

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

/// The API: an axum router whose requests are numbered and traced (see [`traced`]).
#[derive(Clone)]
pub struct Traced {
    app: Router,
    ids: Arc<RequestIds>,
}

/// Gives every request of `app` an id, `x-request-id` in its response (the client's own
/// if it sent one of at most 128 bytes of `[A-Za-z0-9._:-]`, so that its logs and ours
/// meet; else `<process start in hex>-<counter>`), and a DEBUG span with the id, method
/// and path, closed by a DEBUG event, in the span, with the status and `latency_us`.
/// Headers are never logged. One `Traced` serves every API listener, so that ids are
/// unique across them; the public listener, which only serves pre-serialized documents to
/// anonymous readers, does not pay for it.
///
/// This is tower-http's `SetRequestId`, `PropagateRequestId` and `TraceLayer` in one step
/// around the router: those layers cost 3.7 us of CPU per sign request (8%), mostly in
/// allocations (the id's string, the request extension, the re-boxed response body) and
/// per-route service clones; this costs a fraction of it.
pub fn traced(app: Router) -> Traced {
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Traced {
        app,
        ids: Arc::new(RequestIds {
            prefix: format!("{start:x}-"),
            next: AtomicU64::new(0),
        }),
    }
}

/// Numbers requests: `<process start in hex>-<counter>`, unique across restarts.
struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    fn next(&self) -> http::HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let mut id = String::with_capacity(self.prefix.len() + 20);
        id.push_str(&self.prefix);
        id.push_str(itoa::Buffer::new().format(n));
        // Hex digits, a dash and decimal digits: always a valid header value.
        http::HeaderValue::from_maybe_shared(bytes::Bytes::from(id))
            .unwrap_or(http::HeaderValue::from_static("-"))
    }
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A client's own request id, if it is one to keep: at most 128 bytes, all of them
/// `[A-Za-z0-9._:-]`, so that it reads the same in the response and in the logs.
fn client_id(id: &http::HeaderValue) -> Option<http::HeaderValue> {
    let ok = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'-');
    let bytes = id.as_bytes();
    (!bytes.is_empty() && bytes.len() <= 128 && bytes.iter().all(ok)).then(|| id.clone())
}

/// An axum router sees the caller: every request carries its connection's `Arc<Peer>`.
impl PerConnection for Traced {
    type Body = axum::body::Body;
    type Service = WithPeer;
    fn service(&self, peer: Peer) -> WithPeer {
        WithPeer {
            api: self.clone(),
            peer: Arc::new(peer),
        }
    }
}

/// The traced router and the peer of one connection.
#[derive(Clone)]
pub struct WithPeer {
    api: Traced,
    peer: Arc<Peer>,
}

impl hyper::service::Service<http::Request<Incoming>> for WithPeer {
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Answering<Routed<Oneshot<Router, http::Request<Incoming>>>>;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        use hyper::body::Body as _;
        req.extensions_mut().insert(self.peer.clone());
        let id = req
            .headers()
            .get(X_REQUEST_ID)
            .and_then(client_id)
            .unwrap_or_else(|| self.api.ids.next());
        let span = tracing::debug_span!(
            "request",
            id = id.to_str().unwrap_or("-"),
            method = %req.method(),
            path = %req.uri().path(),
        );
        let has_body = !req.body().is_end_stream();
        let routed = match super::api::refusal(req.method(), req.headers(), has_body) {
            Some(error) => Routed::Refused { error },
            None => Routed::Router {
                inner: self.api.app.clone().oneshot(req),
            },
        };
        Answering {
            started: (!span.is_disabled()).then(Instant::now),
            id: Some(id),
            inner: routed.instrument(span),
        }
    }
}

pin_project_lite::pin_project! {
    /// An API request's answer: the router's, or a refusal made before any route (see
    /// `api::refusal`).
    #[project = RoutedProj]
    pub enum Routed<F> {
        /// Routed.
        Router {
            #[pin]
            inner: F,
        },
        /// Refused.
        Refused {
            error: super::ApiError,
        },
    }
}

impl<F, E> Future for Routed<F>
where
    F: Future<Output = Result<axum::response::Response, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        match self.project() {
            RoutedProj::Router { inner } => inner.poll(cx),
            RoutedProj::Refused { error } => std::task::Poll::Ready(Ok(error.response())),
        }
    }
}

pin_project_lite::pin_project! {
    /// A traced request's response: it gets the request's id, and the span its status and
    /// latency.
    pub struct Answering<F> {
        #[pin]
        inner: Instrumented<F>,
        id: Option<http::HeaderValue>,
        started: Option<Instant>,
    }
}

impl<F, E> Future for Answering<F>
where
    F: Future<Output = Result<axum::response::Response, E>>,
{
    type Output = F::Output;

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let mut this = self.project();
        let mut res = std::task::ready!(this.inner.as_mut().poll(cx));
        if let Ok(res) = &mut res {
            if let Some(id) = this.id.take() {
                res.headers_mut().insert(X_REQUEST_ID, id);
            }
            if let Some(started) = *this.started {
                // In the span, not only under it: span filters (`RUST_LOG=[request]=debug`)
                // select what runs inside a span.
                this.inner.span().in_scope(|| {
                    tracing::debug!(
                        status = res.status().as_u16(),
                        latency_us =
                            u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX),
                        "finished processing request"
                    );
                });
            }
        }
        std::task::Poll::Ready(res)
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

impl<A: PerConnection> Shared<A> {
    fn new(app: A, limits: &Limits) -> Self {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(64 * 1024)
            // Headers and body in one buffer, one write: for the small responses here
            // (a JWKS, a token) 4% less CPU per JWKS GET than vectored writes.
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
            listener: name,
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
                    let remote = peer.remote.as_deref().unwrap_or("-");
                    match accepted {
                        Ok(Ok(tls_stream)) => {
                            peer.tls = crate::infra::tls::peer_names(tls_stream.get_ref().1);
                            Some((tls_stream, peer))
                        }
                        Ok(Err(e)) => {
                            crate::infra::tls::log_handshake_failure(name, remote, &e);
                            None
                        }
                        Err(_) => {
                            let e = std::io::Error::new(
                                std::io::ErrorKind::TimedOut,
                                "no handshake within header_timeout",
                            );
                            crate::infra::tls::log_handshake_failure(name, remote, &e);
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
        let remote = match unix {
            Some((uid, gid)) => format!("unix:uid={uid},gid={gid}"),
            None => "unix".to_owned(),
        };
        let peer = Peer {
            listener: name,
            unix,
            remote: Some(remote),
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

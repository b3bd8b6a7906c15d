//! Accept loops: TCP (optionally TLS) and Unix sockets, one per listener, each with its own
//! connection limit, header-read timeout and graceful drain. The caller's transport
//! identity ([`Peer`]) is attached to every request, shared by the connection's requests.

use crate::auth::Peer;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
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

struct Shared {
    app: Router,
    builder: Builder<TokioExecutor>,
    graceful: GracefulShutdown,
    permits: Arc<Semaphore>,
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

impl Shared {
    fn new(app: Router, limits: &Limits) -> Self {
        let mut builder = Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(64 * 1024);
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
            conns: JoinSet::new(),
        }
    }

    fn spawn_conn<IO>(&mut self, io: IO, peer: Peer, permit: tokio::sync::OwnedSemaphorePermit)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
        let peer = Arc::new(peer);
        let svc =
            hyper::service::service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
                req.extensions_mut().insert(peer.clone());
                app.clone().oneshot(req)
            });
        let conn = self
            .builder
            .serve_connection(TokioIo::new(io), svc)
            .into_owned();
        let conn = self.graceful.watch(conn);
        self.conns.spawn(async move {
            let _ = conn.await;
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
    app: Router,
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
            None => shared.spawn_conn(stream, peer, permit),
            Some(acceptor) => {
                let acceptor = acceptor.clone();
                let handshake_timeout = limits.header_timeout;
                let accepted =
                    tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await;
                match accepted {
                    Ok(Ok(tls_stream)) => {
                        peer.tls_subject = crate::tls::peer_subject(tls_stream.get_ref().1);
                        shared.spawn_conn(tls_stream, peer, permit);
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(listener = name, error = %e, "TLS handshake failed")
                    }
                    Err(_) => tracing::debug!(listener = name, "TLS handshake timed out"),
                }
            }
        }
    }
    shared.drain(&limits, name).await;
}

/// Serves `app` on a Unix socket until `shutdown`, then drains. Each request carries the
/// peer's uid and gid from the kernel.
pub async fn serve_unix(
    listener: UnixListener,
    app: Router,
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
        shared.spawn_conn(stream, peer, permit);
    }
    shared.drain(&limits, name).await;
}

//! Accept loops: TCP (optionally TLS) and Unix sockets, one per listener, each with its own
//! connection limit, header-read timeout and graceful drain. The caller's transport
//! identity ([`Peer`]) is attached to every request.

use crate::auth::Peer;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

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
        }
    }

    fn spawn_conn<IO>(&self, io: IO, peer: Peer, permit: tokio::sync::OwnedSemaphorePermit)
    where
        IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let app = self.app.clone();
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
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }

    async fn drain(self, limits: &Limits, name: &str) {
        if tokio::time::timeout(limits.drain, self.graceful.shutdown())
            .await
            .is_err()
        {
            tracing::warn!(
                listener = name,
                "drain timed out; closing remaining connections"
            );
        }
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
    let shared = Shared::new(app, &limits);
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
    let shared = Shared::new(app, &limits);
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

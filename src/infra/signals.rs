//! SIGTERM and SIGINT stop the daemon; SIGHUP reloads its configuration.

use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// The daemon's view of signals: one stop token, one reload notification.
#[derive(Clone)]
pub struct Signals {
    stop: CancellationToken,
    reload: Arc<Notify>,
}

impl Signals {
    /// Installs the handlers (must run inside the runtime).
    pub fn install() -> std::io::Result<Self> {
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let mut hup = signal(SignalKind::hangup())?;
        let signals = Signals {
            stop: CancellationToken::new(),
            reload: Arc::new(Notify::new()),
        };
        let (stop, reload) = (signals.stop.clone(), signals.reload.clone());
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => { tracing::info!("SIGTERM received"); stop.cancel(); return }
                    _ = int.recv() => { tracing::info!("SIGINT received"); stop.cancel(); return }
                    _ = hup.recv() => { tracing::info!("SIGHUP received: reloading"); reload.notify_one() }
                }
            }
        });
        Ok(signals)
    }

    /// Cancelled on SIGTERM or SIGINT: the root of every task's shutdown.
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Resolves on the next SIGHUP.
    pub async fn reload(&self) {
        self.reload.notified().await;
    }
}

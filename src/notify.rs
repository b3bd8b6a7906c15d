//! systemd notifications (Type=notify): READY=1 once every listener is bound and every key
//! set has an active key, RELOADING=1 around reloads, STOPPING=1 on the way out, and
//! WATCHDOG=1 from a health loop that pings only while the daemon is healthy.
//! Outside systemd (no $NOTIFY_SOCKET) every call is a no-op.

use crate::app::AppState;
use sd_notify::NotifyState;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(false, states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// READY=1.
pub fn ready() {
    send(&[NotifyState::Ready, NotifyState::Status("serving")]);
}

/// RELOADING=1, with the timestamp Type=notify-reload wants.
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// STOPPING=1.
pub fn stopping() {
    send(&[NotifyState::Stopping, NotifyState::Status("draining")]);
}

/// Pings the watchdog at half its interval while the daemon is healthy: the async runtime
/// answers (this task runs) and every key set has a key that signs now. A daemon that is
/// wedged, or has lost its active key, stops pinging and systemd restarts it.
pub fn spawn_watchdog(state: Arc<AppState>, shutdown: CancellationToken) -> JoinHandle<()> {
    let mut usec = 0u64;
    let enabled = sd_notify::watchdog_enabled(false, &mut usec);
    tokio::spawn(async move {
        if !enabled || usec == 0 {
            return;
        }
        let period = Duration::from_micros(usec / 2);
        loop {
            let now = state.clock.now();
            let healthy = state
                .keysets
                .load()
                .iter()
                .all(|k| k.published().signer(now).is_some());
            if healthy {
                send(&[NotifyState::Watchdog]);
            } else {
                tracing::warn!("not pinging the watchdog: a key set has no active key");
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
        }
    })
}

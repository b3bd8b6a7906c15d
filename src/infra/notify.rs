//! systemd notifications (Type=notify): READY=1 once every listener is bound and every key
//! set has an active key, RELOADING=1 around reloads, STOPPING=1 on the way out, and
//! WATCHDOG=1 from a health loop that pings only while the daemon is healthy.
//! Outside systemd (no $NOTIFY_SOCKET) every call is a no-op.

use sd_notify::NotifyState;
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

/// Pings the watchdog at half its interval while the async runtime answers (this task
/// runs): a wedged daemon stops pinging and systemd restarts it. A key set without a key
/// that signs is not a reason: a restart would not mend it (its state is what it is), and
/// would take every other key set's JWKS down with it; /readyz and the log report it.
pub fn spawn_watchdog(shutdown: CancellationToken) -> JoinHandle<()> {
    let mut usec = 0u64;
    let enabled = sd_notify::watchdog_enabled(false, &mut usec);
    tokio::spawn(async move {
        if !enabled || usec == 0 {
            return;
        }
        let period = Duration::from_micros(usec / 2);
        loop {
            send(&[NotifyState::Watchdog]);
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(period) => {}
            }
        }
    })
}

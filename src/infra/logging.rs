//! Logging: human-readable text on a terminal (without timestamps under journald, which
//! adds its own), or one JSON object per line. `RUST_LOG` filters (default `info`).

use crate::config::LogFormat;
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing_subscriber::EnvFilter;

/// Installs the global subscriber, writing to stderr.
pub fn init(format: LogFormat, under_journald: bool) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The PKCS#11 library logs an error for each mechanism in a token's list it has no name
    // for (vendor or newer mechanisms): nothing is wrong, and keyturn uses none of them.
    if let Ok(quiet) = "cryptoki::mechanism=off".parse() {
        filter = filter.add_directive(quiet);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match (format, under_journald) {
        (LogFormat::Json, _) => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init(),
        (LogFormat::Text, true) => builder.without_time().with_ansi(false).try_init(),
        // Colours only on a terminal: in a file they are escape codes.
        (LogFormat::Text, false) => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
    };
    if result.is_err() {
        eprintln!("keyturn: logging was already initialised");
    }
}

/// A log line that may be written at most once per window: a flood of failures (wrong
/// tokens, broken handshakes) is one line per window, which counts the lines left out.
pub struct Throttled {
    window: Duration,
    /// When the last line was written, and how many were left out since.
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    /// At most one line per `window`.
    pub const fn new(window: Duration) -> Self {
        Throttled {
            window,
            state: Mutex::new((None, 0)),
        }
    }

    /// Whether a line may be written at `now`: `Some(lines left out since the last one)`,
    /// or `None` (this one is left out, and counted).
    pub fn admit(&self, now: Instant) -> Option<u64> {
        let mut state = self
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let (last, left_out) = &mut *state;
        if last.is_some_and(|at| now.saturating_duration_since(at) < self.window) {
            *left_out += 1;
            return None;
        }
        *last = Some(now);
        Some(std::mem::take(left_out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One line per window; the next line counts those left out meanwhile.
    #[test]
    fn throttled_lines_count_those_left_out() {
        let log = Throttled::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(log.admit(at(0)), Some(0));
        assert_eq!(log.admit(at(1)), None);
        assert_eq!(log.admit(at(9)), None);
        assert_eq!(log.admit(at(10)), Some(2));
        assert_eq!(log.admit(at(19)), None);
        assert_eq!(log.admit(at(30)), Some(1));
        assert_eq!(log.admit(at(41)), Some(0));
        // A clock read out of order leaves the line out rather than failing.
        assert_eq!(log.admit(at(40)), None);
    }
}

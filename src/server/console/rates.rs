//! Signatures per second of each key set over the last minutes, for the console's
//! sparklines: the signature counters (`keyturn_signatures_total`), sampled every
//! [`SAMPLE_EVERY`] while the console is on. Time is a parameter of [`Rates::sample`].

use crate::server::state::AppState;
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the counters are read.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How far back the rates go (seconds).
pub const WINDOW: i64 = 600;

/// (time, signatures so far) of one key set, oldest first.
type Samples = VecDeque<(i64, u64)>;

/// The samples of each key set.
#[derive(Default)]
pub struct Rates {
    series: Mutex<Vec<(Box<str>, Samples)>>,
}

impl Rates {
    /// Records each key set's count of signatures at `now`; samples older than [`WINDOW`]
    /// (and key sets no longer listed) go.
    pub fn sample<'a>(&self, now: i64, totals: impl IntoIterator<Item = (&'a str, u64)>) {
        let mut series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let mut kept = Vec::new();
        for (name, total) in totals {
            let mut samples = series
                .iter()
                .position(|(k, _)| &**k == name)
                .map(|i| series.swap_remove(i).1)
                .unwrap_or_default();
            while samples.front().is_some_and(|(t, _)| *t < now - WINDOW) {
                samples.pop_front();
            }
            samples.push_back((now, total));
            kept.push((Box::from(name), samples));
        }
        *series = kept;
    }

    /// Signatures per second between successive samples of `keyset`, oldest first.
    pub fn per_second(&self, keyset: &str) -> Vec<f64> {
        let series = self.series.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((_, samples)) = series.iter().find(|(k, _)| &**k == keyset) else {
            return Vec::new();
        };
        samples
            .iter()
            .zip(samples.iter().skip(1))
            .filter(|((t0, _), (t1, _))| t1 > t0)
            .map(|((t0, n0), (t1, n1))| n1.saturating_sub(*n0) as f64 / (t1 - t0) as f64)
            .collect()
    }
}

/// Samples the signature counters of `state`'s key sets into `rates` every
/// [`SAMPLE_EVERY`] until `shutdown`.
pub async fn sample_rates(state: Arc<AppState>, rates: Arc<Rates>, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(SAMPLE_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => {}
        }
        let totals = state.metrics.signatures_by_keyset();
        let keysets = state.keysets.load();
        let counted = keysets.iter().map(|k| {
            let name = k.name();
            let n = totals.iter().find(|(t, _)| &**t == name).map_or(0, |t| t.1);
            (name, n)
        });
        rates.sample(state.clock.now(), counted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infra::metrics::Metrics;
    use keyturn_backend::Algorithm;

    const T: i64 = 1_800_000_000;

    #[test]
    fn rates_come_from_successive_samples_within_the_window() {
        let rates = Rates::default();
        rates.sample(T, [("a", 0), ("b", 5)]);
        rates.sample(T + 10, [("a", 100), ("b", 5)]);
        rates.sample(T + 20, [("a", 150), ("b", 25)]);
        assert_eq!(rates.per_second("a"), vec![10.0, 5.0]);
        assert_eq!(rates.per_second("b"), vec![0.0, 2.0]);
        assert!(rates.per_second("c").is_empty());
        // Past the window the oldest samples go; a key set gone from the list goes too.
        rates.sample(T + 20 + WINDOW, [("a", 150)]);
        assert_eq!(rates.per_second("a"), vec![0.0]);
        assert!(rates.per_second("b").is_empty());
    }

    /// The counts are the successful signatures of each key set, whatever the algorithm.
    #[test]
    fn the_counts_are_the_signature_counters() {
        let metrics = Metrics::default();
        let took = Duration::from_micros(50);
        for _ in 0..3 {
            metrics.observe_sign("a", Algorithm::ES256, true, took);
        }
        metrics.observe_sign("a", Algorithm::EdDSA, true, took);
        metrics.observe_sign("a", Algorithm::ES256, false, took);
        metrics.observe_sign("b", Algorithm::ES256, true, took);
        let mut totals = metrics.signatures_by_keyset();
        totals.sort();
        assert_eq!(totals, vec![("a".into(), 4), ("b".into(), 1)]);
    }
}

//! The timing rules (docs/design.md, "Timing rules"): what follows from `max_token_ttl`,
//! `jwks_max_age` and `clock_skew`, and which schedules are safe.

use crate::config::{human, Schedule};

/// The most keys a JWKS may hold at once before the config is refused.
pub const MAX_KEYS_AT_ONCE: i64 = 50;

/// Timing limits of a key set and the windows derived from them, in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// Longest token lifetime.
    pub max_token_ttl: i64,
    /// `Cache-Control: max-age` of the JWKS.
    pub jwks_max_age: i64,
    /// Tolerated clock difference between keyturn and verifiers.
    pub clock_skew: i64,
    /// How often a replica re-reads the shared state (0 for a single host).
    pub poll: i64,
    /// The longest a replica may act on a view of the shared state older than another
    /// replica's write (0 for a single host): a replica whose last good read is older than
    /// this does not sign (see `KeySet::in_sync`).
    pub sync_delay: i64,
}

impl Timing {
    /// Timing for a key set; `shared` when replicas share its backend.
    pub fn new(max_token_ttl: i64, jwks_max_age: i64, clock_skew: i64, shared: bool) -> Self {
        let (poll, sync_delay) = if shared {
            // Reads twice per window of a quarter of jwks_max_age (1 s to 30 s), so that a
            // fast demo lifecycle still converges: a replica whose read fails once is still
            // within the window. The delay adds one more read and 2 s (times are whole
            // seconds, reads take time) to the window, so that a replica whose reads fail
            // stops signing within the delay the windows below allow for.
            let window = (jwks_max_age / 4).clamp(1, 30);
            let poll = (window / 2).max(1);
            (poll, window + poll + 2)
        } else {
            (0, 0)
        };
        Timing {
            max_token_ttl,
            jwks_max_age,
            clock_skew,
            poll,
            sync_delay,
        }
    }

    /// How long a key is published before it may sign: every verifier that honours
    /// max-age has refetched by then, on any replica, with any clock skew.
    pub fn publish_lead(&self) -> i64 {
        self.jwks_max_age + self.clock_skew + self.sync_delay
    }

    /// How long a key stays published after it stopped signing: its last token expires
    /// (plus skew) before it is removed, even if a replica learned of the rotation late.
    pub fn retention(&self) -> i64 {
        self.max_token_ttl + self.clock_skew + self.sync_delay
    }

    /// How often replicas re-read the shared state (None for a single host).
    pub fn poll_interval(&self) -> Option<i64> {
        (self.poll > 0).then_some(self.poll)
    }

    /// The bound on published keys (invariant I3): one pending, one active, and the retired
    /// keys still inside retention, at most one per period.
    pub fn max_published(&self, min_period: i64) -> i64 {
        2 + (self.retention() + min_period - 1) / min_period.max(1)
    }

    /// Refuses limits and schedules that cannot keep every token verifiable.
    pub fn check(&self, schedule: &Schedule) -> Result<(), String> {
        if self.max_token_ttl < 1 {
            return Err("max_token_ttl must be at least 1s".into());
        }
        let lead = self.publish_lead();
        let lead_text = format!(
            "the publish lead, {} (jwks_max_age {} + clock_skew {}{})",
            human(lead),
            human(self.jwks_max_age),
            human(self.clock_skew),
            if self.sync_delay > 0 {
                format!(" + replica sync {}", human(self.sync_delay))
            } else {
                String::new()
            }
        );
        let min_period = min_period(schedule).ok_or("rotate_cron never fires")?;
        if min_period < lead.max(1) {
            return Err(match schedule {
                Schedule::Every(p) => format!(
                    "rotate_every ({}) is shorter than {lead_text}; set rotate_every to at least \
                     {} or lower jwks_max_age",
                    human(*p),
                    human(lead.max(1))
                ),
                Schedule::Cron(_) => format!(
                    "rotate_cron fires as little as {} apart, less than {lead_text}; fire at \
                     least {} apart or lower jwks_max_age",
                    human(min_period),
                    human(lead.max(1))
                ),
            });
        }
        let keys = self.max_published(min_period);
        if keys > MAX_KEYS_AT_ONCE {
            return Err(format!(
                "with max_token_ttl {} and rotations {} apart the JWKS would hold up to {keys} \
                 keys at once (limit {MAX_KEYS_AT_ONCE}); rotate less often or lower max_token_ttl",
                human(self.max_token_ttl),
                human(min_period)
            ));
        }
        Ok(())
    }
}

/// The shortest gap between rotations: the period, or the smallest gap among the first
/// fire times of a cron expression (a year of hourly fires covers any weekly pattern).
pub fn min_period(schedule: &Schedule) -> Option<i64> {
    match schedule {
        Schedule::Every(p) => Some(*p),
        Schedule::Cron(_) => {
            let mut t = schedule.next_after(0)?;
            let mut min = i64::MAX;
            for _ in 0..500 {
                let next = schedule.next_after(t)?;
                min = min.min(next - t);
                t = next;
            }
            Some(min)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_windows() {
        let t = Timing::new(900, 300, 60, false);
        assert_eq!(t.publish_lead(), 360);
        assert_eq!(t.retention(), 960);
        assert_eq!(t.poll_interval(), None);
        let shared = Timing::new(900, 300, 60, true);
        // A read every 15 s; the delay: a 30 s window, one more read and 2 s.
        assert_eq!(shared.poll_interval(), Some(15));
        assert_eq!(shared.sync_delay, 47);
        assert_eq!(shared.publish_lead(), 300 + 60 + 47);
        assert_eq!(shared.retention(), 900 + 60 + 47);
        // The shortest: jwks_max_age 1 s reads every second and allows 4 s.
        let fast = Timing::new(2, 1, 0, true);
        assert_eq!((fast.poll_interval(), fast.sync_delay), (Some(1), 4));
        // hourly rotation, 16 min retention: pending + active + one retired.
        assert_eq!(t.max_published(3600), 3);
    }

    #[test]
    fn period_shorter_than_lead_is_refused() {
        let t = Timing::new(900, 300, 60, false);
        assert!(t.check(&Schedule::Every(360)).is_ok());
        let err = t.check(&Schedule::Every(359)).unwrap_err();
        assert!(err.contains("at least 6m"), "{err}");
    }
}

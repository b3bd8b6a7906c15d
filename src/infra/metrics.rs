//! Prometheus metrics, prefixed `keyturn_`. Counters and histograms are updated on the hot
//! path (lock-free after the first use of a label set); per-key-set gauges are computed at
//! scrape time from the published views, so they never go stale.

use crate::core::keyset::KeySet;
use arc_swap::ArcSwap;
use keyturn_backend::Algorithm;
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignLabels {
    keyset: String,
    algorithm: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KeySetLabel {
    keyset: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendLabels {
    backend: &'static str,
    op: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendErrorLabels {
    backend: &'static str,
    op: &'static str,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AuthFailureLabels {
    listener: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StatusChangeLabels {
    keyset: String,
    status: &'static str,
}

/// The daemon's metrics.
pub struct Metrics {
    registry: Registry,
    signatures: Family<SignLabels, Counter>,
    sign_seconds: Family<KeySetLabel, Histogram>,
    backend_seconds: Family<BackendLabels, Histogram>,
    backend_errors: Family<BackendErrorLabels, Counter>,
    auth_failures: Family<AuthFailureLabels, Counter>,
    status_changes: Family<StatusChangeLabels, Counter>,
    // The series of each (key set, algorithm, outcome) seen, found by a scan with the
    // borrowed name: `Family::get_or_create` wants owned labels, four String allocations
    // per signature. Few key sets, so a Vec; read without writing to shared memory (a lock
    // word written by every signature moves its cache line between the cores).
    hot: ArcSwap<Vec<Series>>,
}

/// The counter and histogram one signature updates.
#[derive(Clone)]
struct Series {
    keyset: Box<str>,
    alg: Algorithm,
    ok: bool,
    count: Counter,
    seconds: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("keyturn");
        let signatures = Family::<SignLabels, Counter>::default();
        registry.register(
            "signatures",
            "Signatures by key set, algorithm and outcome",
            signatures.clone(),
        );
        let sign_seconds = Family::<KeySetLabel, Histogram>::new_with_constructor(|| {
            // 50 µs to ~1.6 s: local signing sits at the bottom, remote backends higher.
            Histogram::new(exponential_buckets(0.000_05, 2.0, 16))
        });
        registry.register(
            "sign_duration_seconds",
            "Backend signing latency",
            sign_seconds.clone(),
        );
        let backend_seconds = Family::<BackendLabels, Histogram>::new_with_constructor(|| {
            // 100 µs (local files) to ~6.5 s (a slow Vault or KMS, RSA-4096 generation).
            Histogram::new(exponential_buckets(0.000_1, 2.0, 17))
        });
        registry.register(
            "backend_call_duration_seconds",
            "Latency of backend calls other than sign (create, destroy, state reads and writes)",
            backend_seconds.clone(),
        );
        let backend_errors = Family::<BackendErrorLabels, Counter>::default();
        registry.register(
            "backend_errors",
            "Failed backend calls by backend, operation and kind (sign failures are in keyturn_signatures)",
            backend_errors.clone(),
        );
        let auth_failures = Family::<AuthFailureLabels, Counter>::default();
        registry.register(
            "auth_failures",
            "API requests refused as unauthenticated, by listener and reason",
            auth_failures.clone(),
        );
        let status_changes = Family::<StatusChangeLabels, Counter>::default();
        registry.register(
            "token_status_changes",
            "Token status changes by key set and new status (revoked, suspended, valid)",
            status_changes.clone(),
        );
        Metrics {
            registry,
            status_changes,
            signatures,
            sign_seconds,
            backend_seconds,
            backend_errors,
            auth_failures,
            hot: ArcSwap::default(),
        }
    }
}

impl Metrics {
    /// Records one backend call (lifecycle and state operations; signing has its own).
    pub fn observe_backend(
        &self,
        backend: &'static str,
        op: &'static str,
        error: Option<&keyturn_backend::BackendError>,
        took: Duration,
    ) {
        self.backend_seconds
            .get_or_create(&BackendLabels { backend, op })
            .observe(took.as_secs_f64());
        if let Some(e) = error {
            use keyturn_backend::BackendError as E;
            let kind = match e {
                E::NotFound(_) => "not_found",
                E::Conflict => "conflict",
                E::Unsupported(_) => "unsupported",
                E::Rejected(_) => "rejected",
                E::Unavailable { .. } => "unavailable",
                E::Storage { .. } => "storage",
            };
            self.backend_errors
                .get_or_create(&BackendErrorLabels { backend, op, kind })
                .inc();
        }
    }

    /// Records one failed authentication on `listener` (see `auth::AuthFailure::reason`).
    pub fn auth_failure(&self, listener: &'static str, reason: &'static str) {
        self.auth_failures
            .get_or_create(&AuthFailureLabels { listener, reason })
            .inc();
    }

    /// Records one token status change in `keyset` to `status`.
    pub fn status_change(&self, keyset: &str, status: &'static str) {
        self.status_changes
            .get_or_create(&StatusChangeLabels {
                keyset: keyset.to_owned(),
                status,
            })
            .inc();
    }

    /// Records one signature.
    pub fn observe_sign(&self, keyset: &str, alg: Algorithm, ok: bool, took: Duration) {
        let record = |s: &Series| {
            s.count.inc();
            s.seconds.observe(took.as_secs_f64());
        };
        let found = |s: &&Series| s.ok == ok && s.alg == alg && *s.keyset == *keyset;
        if let Some(s) = self.hot.load().iter().find(found) {
            record(s);
            return;
        }
        // First signature of this kind: create the series (the Family keeps them, and
        // gives a racing thread the same ones) and remember them.
        let count = self
            .signatures
            .get_or_create(&SignLabels {
                keyset: keyset.to_owned(),
                algorithm: alg.as_str().to_owned(),
                outcome: if ok { "ok" } else { "error" }.to_owned(),
            })
            .clone();
        let seconds = self
            .sign_seconds
            .get_or_create(&KeySetLabel {
                keyset: keyset.to_owned(),
            })
            .clone();
        let series = Series {
            keyset: keyset.into(),
            alg,
            ok,
            count,
            seconds,
        };
        record(&series);
        self.hot.rcu(|hot| {
            let mut hot = Vec::clone(hot);
            if !hot.iter().any(|s| found(&s)) {
                hot.push(series.clone());
            }
            hot
        });
    }

    /// Signatures made so far (`keyturn_signatures_total{outcome="ok"}`), per key set.
    pub fn signatures_by_keyset(&self) -> Vec<(Box<str>, u64)> {
        let mut totals: Vec<(Box<str>, u64)> = Vec::new();
        for s in self.hot.load().iter().filter(|s| s.ok) {
            match totals.iter_mut().find(|(k, _)| *k == s.keyset) {
                Some((_, n)) => *n += s.count.get(),
                None => totals.push((s.keyset.clone(), s.count.get())),
            }
        }
        totals
    }

    /// The text exposition, with per-key-set gauges as of now and whether the audit log
    /// is being written.
    pub fn render<'a>(
        &self,
        keysets: impl IntoIterator<Item = &'a Arc<KeySet>>,
        now: i64,
        audit_log_writable: bool,
    ) -> String {
        let mut gauges = Registry::with_prefix("keyturn");
        let family = |registry: &mut Registry, name: &str, help: &str| {
            let f = Family::<KeySetLabel, Gauge>::default();
            registry.register(name, help, f.clone());
            f
        };
        let age = family(
            &mut gauges,
            "active_key_age_seconds",
            "Age of the active key (since activation)",
        );
        let next_activation = family(
            &mut gauges,
            "next_activation_seconds",
            "Seconds until the pending key becomes active",
        );
        let next_removal = family(
            &mut gauges,
            "next_removal_seconds",
            "Seconds until the next retired key leaves the JWKS",
        );
        let version = family(&mut gauges, "jwks_version", "Version of the published JWKS");
        let published = family(&mut gauges, "published_keys", "Keys in the JWKS");
        let backend_up = family(
            &mut gauges,
            "backend_up",
            "1 if the backend's last answer was a success",
        );
        let unsafe_lead = family(
            &mut gauges,
            "publish_lead_unsafe",
            "1 if the pending key would activate before it has been published for jwks_max_age",
        );
        let withheld = family(
            &mut gauges,
            "withheld_keys",
            "Records of the lifecycle document withheld from the JWKS: the backend does not hold their key",
        );
        let ready = family(
            &mut gauges,
            "ready",
            "1 if the key set is ready (as /readyz says; its reasons are there)",
        );
        let audit_writable = Gauge::<i64>::default();
        gauges.register(
            "audit_log_writable",
            "1 if the audit log is being written; while it is not, signing is refused",
            audit_writable.clone(),
        );
        audit_writable.set(i64::from(audit_log_writable));
        for keyset in keysets {
            let label = KeySetLabel {
                keyset: keyset.name().to_owned(),
            };
            let p = keyset.published();
            let doc = &p.doc;
            let timing = &keyset.config.timing;
            if let Some(active) = p.signer(now) {
                age.get_or_create(&label)
                    .set(now.saturating_sub(active.activate_at.unwrap_or(now)));
            }
            if let Some(i) = doc.pending(now) {
                let k = &doc.keys[i];
                if let Some(at) = k.activate_at {
                    next_activation
                        .get_or_create(&label)
                        .set(at.saturating_sub(now));
                    let lead = at.saturating_sub(k.published_at.unwrap_or(at));
                    unsafe_lead
                        .get_or_create(&label)
                        .set(i64::from(lead < timing.jwks_max_age));
                }
            }
            let removal = (0..doc.keys.len())
                .filter(|i| doc.keys[*i].is_published())
                .filter_map(|i| doc.remove_at(i, now, timing))
                .min();
            if let Some(t) = removal {
                next_removal
                    .get_or_create(&label)
                    .set(t.saturating_sub(now));
            }
            version
                .get_or_create(&label)
                .set(i64::try_from(doc.jwks_version).unwrap_or(i64::MAX));
            published
                .get_or_create(&label)
                .set(i64::try_from(p.keys.len()).unwrap_or(0));
            backend_up
                .get_or_create(&label)
                .set(i64::from(keyset.backend_ok()));
            withheld
                .get_or_create(&label)
                .set(i64::try_from(doc.withheld().count()).unwrap_or(i64::MAX));
            ready
                .get_or_create(&label)
                .set(i64::from(keyset.not_ready_reason(now).is_none()));
        }
        let mut out = String::new();
        let _ = encode(&mut out, &self.registry);
        let mut more = String::new();
        let _ = encode(&mut more, &gauges);
        // Each encoding ends with "# EOF"; keep only the last.
        out = out.trim_end().trim_end_matches("# EOF").to_owned();
        out.push_str(&more);
        out
    }
}

//! SIGKILL at random moments during rotations, then restart, many times over (a shortened
//! clock: a rotation every 2 s). After every restart: every key that was published is still
//! published (unless its retention ended), exactly one key is active, and no due rotation
//! ran twice. `KEYTURN_CRASH_RUNS` sets the number of kills (default 100);
//! `scripts/crash-test.sh` runs it with more.

use crate::harness::*;
use std::collections::BTreeMap;
use std::time::Duration;

const PERIOD: i64 = 2;

struct Observed {
    /// kid -> when it leaves the JWKS, if already determined.
    published: BTreeMap<String, Option<i64>>,
    now: i64,
}

async fn observe(d: &Daemon, token: &str) -> Observed {
    let (status, view) = admin(d, token, reqwest::Method::GET, "/v1/keysets/default").await;
    assert_eq!(status, 200, "{view}");
    let now = view["now"].as_i64().unwrap();
    let keys = view["keys"].as_array().unwrap();
    let active: Vec<_> = keys.iter().filter(|k| k["state"] == "active").collect();
    assert_eq!(active.len(), 1, "exactly one active key: {view}");
    // No due rotation ran twice: activations are at least a period apart.
    let mut activations: Vec<i64> = keys
        .iter()
        .filter(|k| k["revoked_at"].is_null())
        .filter_map(|k| k["activate_at"].as_i64())
        .collect();
    activations.sort_unstable();
    for pair in activations.windows(2) {
        assert!(
            pair[1] - pair[0] >= PERIOD,
            "two rotations within one period: {activations:?}\n{view}"
        );
    }
    let published = keys
        .iter()
        .filter(|k| matches!(k["state"].as_str(), Some("pending" | "active" | "retired")))
        .map(|k| {
            (
                k["kid"].as_str().unwrap().to_owned(),
                k["remove_at"].as_i64(),
            )
        })
        .collect();
    Observed { published, now }
}

#[tokio::test]
async fn sigkill_during_rotations_loses_nothing() {
    let runs: usize = std::env::var("KEYTURN_CRASH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let dir = private_dir();
    let (client, token) = token_client("ops", &["default"], "admin = true");
    let keyset = "[[keyset]]\nname = \"default\"\nissuer = \"https://issuer.test/default\"\nalgorithm = \"ES256\"\n\
                  rotate_every = \"2s\"\nmax_token_ttl = \"1s\"\njwks_max_age = \"1s\"\nclock_skew = \"0s\"\n";
    let config = format!("{}{keyset}{client}", server_toml(dir.path()));
    std::fs::write(dir.path().join("keyturn.toml"), &config).unwrap();
    // A fixed-seed generator: the kill moments differ run to run but the test is repeatable.
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut last: Option<Observed> = None;
    let mut rotations_seen = std::collections::BTreeSet::new();
    for run in 0..runs {
        let d = Daemon::spawn(dir.path().join("keyturn.toml"), &[]);
        let seen = observe(&d, &token).await;
        if let Some(before) = &last {
            for (kid, remove_at) in &before.published {
                let expired = remove_at.is_some_and(|t| t <= seen.now);
                assert!(
                    expired || seen.published.contains_key(kid),
                    "run {run}: key {kid} was published (removal due {remove_at:?}) and is gone at {}",
                    seen.now
                );
            }
        }
        rotations_seen.extend(seen.published.keys().cloned());
        // Let it run for a random moment (0-900 ms: up to half a rotation period), then kill.
        tokio::time::sleep(Duration::from_millis(next() % 900)).await;
        let observed = observe(&d, &token).await;
        rotations_seen.extend(observed.published.keys().cloned());
        d.signal("KILL");
        drop(d);
        last = Some(observed);
    }
    // The test crossed many rotations, not one.
    assert!(
        rotations_seen.len() as f64 >= runs as f64 / 4.0,
        "only {} keys over {runs} runs",
        rotations_seen.len()
    );
}

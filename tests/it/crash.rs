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

/// However abruptly the daemon stops, every token it returned is in its audit log: a
/// line is written to the file before its token leaves. Clients sign single tokens and
/// batches without pause; one SIGKILL; each jti they got back must be in the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_no_audit_line_of_a_returned_token() {
    use std::sync::{Arc, Mutex};
    let dir = private_dir();
    let (client, token) = token_client("issuer", &["default"], "subject_pattern = \"*\"");
    let config = server_toml(dir.path()) + &keyset_toml("default", "ES256", "") + &client;
    let d = Daemon::start(dir.path(), &config);
    let returned = Arc::new(Mutex::new(Vec::new()));
    let item = serde_json::json!({"claims": {"sub": "svc"}});
    let mut clients = Vec::new();
    for c in 0..8 {
        let (returned, token) = (returned.clone(), token.clone());
        let (route, body) = if c == 0 {
            (
                "sign-batch",
                serde_json::json!({"requests": vec![item.clone(); 64]}),
            )
        } else {
            ("sign", item.clone())
        };
        let url = format!("{}/v1/keysets/default/{route}", d.api);
        clients.push(tokio::spawn(async move {
            let http = http();
            // Until the daemon is gone: a refused or cut request ends the client.
            while let Ok(r) = http.post(&url).bearer_auth(&token).json(&body).send().await {
                assert_eq!(r.status(), 200);
                let Ok(answer) = r.json::<serde_json::Value>().await else {
                    break;
                };
                let results = answer["results"].as_array().cloned();
                let mut returned = returned.lock().unwrap();
                for signed in results.unwrap_or_else(|| vec![answer]) {
                    returned.push(signed["jti"].as_str().unwrap().to_owned());
                }
            }
        }));
    }
    eventually(Duration::from_secs(60), "2000 tokens returned", || {
        let n = returned.lock().unwrap().len();
        async move { n >= 2000 }
    })
    .await;
    d.signal("KILL");
    for c in clients {
        c.await.unwrap();
    }
    drop(d);
    let audited: std::collections::HashSet<String> =
        audit_field(&dir.path().join("data/audit.log"), "sign", "default", "jti")
            .into_iter()
            .collect();
    let returned = returned.lock().unwrap();
    let missing: Vec<_> = returned.iter().filter(|j| !audited.contains(*j)).collect();
    assert!(
        missing.is_empty(),
        "{} of {} returned tokens are not in the audit log, e.g. {:?}",
        missing.len(),
        returned.len(),
        missing.first()
    );
}

//! The lifecycle invariants I1-I5 (docs/design.md), each driven by a simulated clock.

use super::*;
use crate::config::timing::Timing;
use crate::config::Schedule;
use async_trait::async_trait;
use keyturn_backend::memory::MemoryBackend;
use keyturn_backend::{Algorithm, StateBlob};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};

const T0: i64 = 1_800_000_000;
const HOUR: i64 = 3600;

fn timing() -> Timing {
    // max_token_ttl 15m, jwks_max_age 5m, clock_skew 60s: lead 6m, retention 16m.
    Timing::new(900, 300, 60, false)
}

async fn engine(backend: Arc<dyn KeyBackend>, schedule: Schedule) -> Engine {
    Engine::load("ks", timing(), schedule, KeyType::EcP256, backend)
        .await
        .unwrap()
}

/// Why a fresh engine (a start) on `backend` refuses the stored document.
async fn refused_at_load(backend: &Arc<dyn KeyBackend>) -> LifecycleError {
    Engine::load(
        "ks",
        timing(),
        Schedule::Every(HOUR),
        KeyType::EcP256,
        backend.clone(),
    )
    .await
    .err()
    .unwrap()
}

/// An engine on `backend` rotating hourly under `timing` (as after a reload or restart with
/// another config, or on another replica).
async fn hourly(backend: &Arc<dyn KeyBackend>, timing: Timing) -> Engine {
    Engine::load(
        "ks",
        timing,
        Schedule::Every(HOUR),
        KeyType::EcP256,
        backend.clone(),
    )
    .await
    .unwrap()
}

fn rank(s: KeyState) -> u8 {
    match s {
        KeyState::Creating => 0,
        KeyState::Pending => 1,
        KeyState::Active => 2,
        KeyState::Retired => 3,
        KeyState::Removed | KeyState::Revoked | KeyState::Withheld => 4,
    }
}

/// What verifiers could have fetched: the published kids from each instant on.
#[derive(Default)]
struct History {
    versions: Vec<(i64, BTreeSet<String>)>,
}

impl History {
    fn record(&mut self, t: i64, doc: &KeySetDoc) {
        let kids: BTreeSet<String> = doc.published().filter_map(|k| k.kid.clone()).collect();
        if self.versions.last().is_none_or(|(_, last)| *last != kids) {
            self.versions.push((t, kids));
        }
    }

    /// Every set a verifier could hold while checking a token during [from, to]: any fetch
    /// in (from - max_age, to].
    fn sets_during(&self, from: i64, to: i64) -> impl Iterator<Item = &BTreeSet<String>> {
        let start = self
            .versions
            .partition_point(|(t, _)| *t <= from)
            .saturating_sub(1);
        self.versions[start..]
            .iter()
            .take_while(move |(t, _)| *t <= to)
            .map(|(_, s)| s)
    }
}

/// Checks I1 and I3 and that no key's state ever goes backwards.
fn check_states(doc: &KeySetDoc, now: i64, seen: &mut HashMap<String, u8>, max_published: usize) {
    let states: Vec<KeyState> = (0..doc.keys.len()).map(|i| doc.state(i, now)).collect();
    let active = states.iter().filter(|s| **s == KeyState::Active).count();
    assert_eq!(active, 1, "I1: {active} active keys at t={now}: {states:?}");
    let published = doc.published().count();
    assert!(
        published <= max_published,
        "I3: {published} keys published at t={now}"
    );
    for (k, s) in doc.keys.iter().zip(&states) {
        let r = rank(*s);
        let before = seen.entry(k.name.clone()).or_insert(r);
        assert!(
            r >= *before,
            "key {} went back from rank {before} to {s:?} at t={now}",
            k.name
        );
        *before = r;
    }
}

/// I1, I2, I3 over a simulated year of hourly rotations: a token every ten minutes, each
/// checked against every JWKS a verifier caching for max-age could hold during its life,
/// and some verified cryptographically against that JWKS.
#[tokio::test]
async fn a_year_of_hourly_rotations_keeps_every_token_verifiable() {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
    let t = timing();
    let max_published = usize::try_from(t.max_published(HOUR)).unwrap();
    let mut history = History::default();
    let mut seen = HashMap::new();
    let mut tokens = Vec::new();
    let mut activations = BTreeSet::new();
    let end = T0 + 365 * 24 * HOUR;
    let mut now = T0;
    while now < end {
        e.tick(now).await.unwrap();
        history.record(now, e.doc());
        check_states(e.doc(), now, &mut seen, max_published);
        let doc = e.doc();
        let active = &doc.keys[doc.active(now).unwrap()];
        activations.insert(active.activate_at.unwrap());
        if (now - T0) % 600 == 0 {
            tokens.push((
                now,
                active.kid.clone().unwrap(),
                active.name.clone(),
                now + t.max_token_ttl,
            ));
        }
        // Irregular ticks, as a real daemon wakes at events and at most every minute.
        now += 37 + (now % 23);
    }
    // One activation per hour (plus the bootstrap), never more.
    let n = activations.len() as i64;
    assert!(
        (365 * 24 - 1..=365 * 24 + 1).contains(&n),
        "{n} activations in a year"
    );
    let gaps: Vec<i64> = activations
        .iter()
        .zip(activations.iter().skip(1))
        .map(|(a, b)| b - a)
        .collect();
    assert!(
        gaps.iter().all(|g| *g >= HOUR),
        "a rotation came early: {:?}",
        gaps.iter().min()
    );

    for (i, (iat, kid, name, exp)) in tokens.iter().enumerate() {
        for set in history.sets_during(iat - t.jwks_max_age, exp + t.clock_skew) {
            assert!(
                set.contains(kid),
                "I2: token of t={iat} (kid {kid}) unverifiable at a verifier holding {set:?}"
            );
        }
        // Cryptographic spot checks: sign with the backend, verify against the JWKS as
        // published when the token expires (the last instant it must verify).
        if i % 500 == 0 {
            let input = format!("eyJhbGciOiJFUzI1NiJ9.{i}");
            if let Ok(sig) = backend.sign(name, Algorithm::ES256, input.as_bytes()).await {
                let key = e
                    .doc()
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .and_then(KeyRecord::public);
                if let Some(key) = key {
                    assert!(key.jwk().verify(Algorithm::ES256, input.as_bytes(), &sig));
                }
            }
        }
    }
    // The document stays bounded.
    assert!(
        e.doc().keys.len() <= max_published + ENDED_HISTORY + 1,
        "{} records",
        e.doc().keys.len()
    );
}

/// The same with a cron schedule (03:00 UTC daily) and a long token lifetime.
#[tokio::test]
async fn cron_schedule_rotates_at_the_fire_times() {
    let schedule = Schedule::Cron(Box::new("0 0 3 * * *".parse().unwrap()));
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = engine(backend, schedule).await;
    let mut seen = HashMap::new();
    let mut now = T0;
    let mut activations = BTreeSet::new();
    while now < T0 + 30 * 24 * HOUR {
        e.tick(now).await.unwrap();
        check_states(e.doc(), now, &mut seen, 4);
        let doc = e.doc();
        activations.insert(doc.keys[doc.active(now).unwrap()].activate_at.unwrap());
        now += 300;
    }
    // After the bootstrap, every activation is at 03:00:00 UTC.
    for at in activations.iter().skip(1) {
        assert_eq!(at % 86_400, 3 * HOUR, "activation at {at}");
    }
    assert!(
        (29..=31).contains(&activations.len()),
        "{} activations",
        activations.len()
    );
}

/// I5: a daemon down for five periods rotates once to catch up, not five times.
#[tokio::test]
async fn downtime_leads_to_one_catch_up_rotation() {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
    let mut now = T0;
    while now < T0 + 3 * HOUR {
        e.tick(now).await.unwrap();
        now += 60;
    }
    let before: BTreeSet<i64> = e.doc().keys.iter().filter_map(|k| k.activate_at).collect();
    let down_from = now;
    // Five periods later, a restarted daemon (fresh engine from the stored state).
    now += 5 * HOUR;
    let mut e = engine(backend, Schedule::Every(HOUR)).await;
    let resume = now;
    let mut seen = HashMap::new();
    while now < resume + 3 * HOUR {
        e.tick(now).await.unwrap();
        check_states(e.doc(), now, &mut seen, 4);
        now += 60;
    }
    let after: Vec<i64> = e
        .doc()
        .keys
        .iter()
        .filter_map(|k| k.activate_at)
        .filter(|t| *t > down_from && !before.contains(t))
        .collect();
    let lead = timing().publish_lead();
    // The pending key scheduled before the outage activated at its time; on restart one
    // catch-up rotation one publish lead later; then the hourly rhythm resumes.
    let in_outage: Vec<_> = e
        .doc()
        .keys
        .iter()
        .filter_map(|k| k.activate_at)
        .filter(|t| *t > down_from && *t < resume)
        .collect();
    assert!(
        in_outage.len() <= 1,
        "activations during the outage: {in_outage:?}"
    );
    let catch_up: Vec<_> = after
        .iter()
        .filter(|t| **t >= resume && **t < resume + HOUR)
        .collect();
    assert_eq!(
        catch_up,
        vec![&(resume + lead)],
        "catch-up rotations: {after:?}"
    );
    assert!(after.contains(&(resume + lead + HOUR)));
}

/// Shortening `max_token_ttl` (a reload, a restart, a replica with another config) does not
/// shorten the time a key that signed under the longer one stays published: its tokens
/// still verify to the end. A key that only signs under the shorter one gets the shorter
/// retention. Lengthening takes effect at once, even if it is shortened again before the
/// key retires.
#[tokio::test]
async fn a_shorter_max_token_ttl_keeps_the_keys_that_signed_under_the_longer_one() {
    // max_token_ttl 24h: retention 24h + 60s skew + 60s drift.
    let long = Timing::new(24 * HOUR, 300, 60, false);
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = hourly(&backend, long).await;
    e.tick(T0).await.unwrap();
    let first = e.doc().active(T0).unwrap();
    let first_kid = e.doc().keys[first].kid.clone().unwrap();
    // A token signed just before the first key retires (T0 + 1h) lives 24h.
    let retires = T0 + HOUR;
    let token_exp = retires + 24 * HOUR;
    // Now the config says 15m (the same backend, as after a reload or restart).
    let mut e = hourly(&backend, timing()).await;
    let mut now = T0 + 60;
    while now <= token_exp + timing().retention() {
        e.tick(now).await.unwrap();
        let published = e
            .doc()
            .published()
            .any(|k| k.kid.as_deref() == Some(first_kid.as_str()));
        if now <= token_exp {
            assert!(
                published,
                "the first key left the JWKS at {} before its last token expired at {token_exp}",
                now - T0
            );
        }
        now += 300;
    }
    assert!(
        !e.doc()
            .published()
            .any(|k| k.kid.as_deref() == Some(first_kid.as_str())),
        "the first key leaves once its retention has passed"
    );
    // Keys made under the 15m config leave 16m after they retire.
    let short = e
        .doc()
        .keys
        .iter()
        .position(|k| k.created_at > T0 + 2 * HOUR && k.removed_at.is_some())
        .expect("a key made under the short config was removed");
    let retired = e.doc().retired_at(short, now).unwrap();
    let kept = e.doc().keys[short].removed_at.unwrap() - retired;
    let retention = timing().retention();
    // Ticks every 300 s: removed at the first tick from retired + retention on.
    assert!(
        (retention..retention + 300).contains(&kept),
        "kept {kept}s after retiring, retention {retention}s"
    );

    // Lengthened, then shortened again before the active key retires: the key that was
    // active under 24h keeps 24h.
    let mut e = hourly(&backend, long).await;
    e.tick(now).await.unwrap();
    let active = e.doc().active(now).unwrap();
    let kid = e.doc().keys[active].kid.clone().unwrap();
    let mut e = hourly(&backend, timing()).await;
    let retires = e
        .doc()
        .keys
        .iter()
        .filter_map(|k| k.activate_at)
        .filter(|t| *t > now)
        .min()
        .unwrap();
    let mut t = now;
    while t < retires + 24 * HOUR {
        e.tick(t).await.unwrap();
        assert!(
            e.doc()
                .published()
                .any(|k| k.kid.as_deref() == Some(kid.as_str())),
            "a key active under the 24h config left the JWKS {}s after it retired",
            t - retires
        );
        t += 300;
    }
}

/// Rewrites the stored document of `ks` through `edit` of its JSON, as another keyturn
/// version sharing the backend would.
async fn rewrite_stored(backend: &Arc<dyn KeyBackend>, edit: impl FnOnce(&mut serde_json::Value)) {
    let blob = backend.load_state("ks").await.unwrap().unwrap();
    let mut json = stored_json(&blob.data);
    edit(&mut json);
    store_json(backend, &json).await;
}

/// Stores `json` as the document of `ks`, sealed as a keyturn holding the backend's key
/// would, over whatever is stored; returns the stored bytes.
async fn store_json(backend: &Arc<dyn KeyBackend>, json: &serde_json::Value) -> Vec<u8> {
    let current = backend.load_state("ks").await.unwrap().map(|b| b.version);
    let text = serde_json::to_vec(json).unwrap();
    let bytes = seal(&**backend, "ks", &text).await.unwrap();
    backend.store_state("ks", &bytes, current).await.unwrap();
    bytes
}

/// A key retired before keys recorded their retention (written by an older keyturn) gets
/// the current one recorded, so a later, shorter config does not drop it early.
#[tokio::test]
async fn a_key_retired_under_an_older_keyturn_keeps_the_retention_of_the_config_after_upgrade() {
    let long = Timing::new(24 * HOUR, 300, 60, false);
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = hourly(&backend, long).await;
    e.tick(T0).await.unwrap();
    let first_kid = e.doc().keys[e.doc().active(T0).unwrap()]
        .kid
        .clone()
        .unwrap();
    let now = T0 + HOUR + 60;
    e.tick(now).await.unwrap();
    let first = e
        .doc()
        .keys
        .iter()
        .position(|k| k.kid.as_deref() == Some(&first_kid))
        .unwrap();
    let retired = e
        .doc()
        .retired_at(first, now)
        .expect("the first key has retired");
    // The document as a keyturn without 'retain' wrote it.
    rewrite_stored(&backend, |doc| {
        for k in doc["keys"].as_array_mut().unwrap() {
            k.as_object_mut().unwrap().remove("retain");
        }
    })
    .await;
    // The upgraded replica, still under the 24h config, ticks once...
    let mut e = hourly(&backend, long).await;
    e.tick(now).await.unwrap();
    assert_eq!(e.doc().keys[first].retain, Some(long.retention()));
    // ... and a later config of 15m keeps the first key for the 24h its tokens may live.
    let mut e = hourly(&backend, timing()).await;
    let mut t = now;
    while t < retired + 24 * HOUR {
        e.tick(t).await.unwrap();
        assert!(
            e.doc()
                .published()
                .any(|k| k.kid.as_deref() == Some(&first_kid)),
            "the key retired before the upgrade left the JWKS {}s after it retired",
            t - retired
        );
        t += 600;
    }
}

/// A document written by a newer keyturn (fields this one does not know, at the top and in
/// a key) is read, and the fields survive this build's writes.
#[tokio::test]
async fn fields_of_a_newer_format_are_kept_through_writes() {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
    e.tick(T0).await.unwrap();
    rewrite_stored(&backend, |doc| {
        doc["format_note"] = serde_json::json!({"from": "a newer keyturn"});
        doc["keys"][0]["rotation_hint"] = serde_json::json!(7);
    })
    .await;
    let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
    let before = e.doc().keys.len();
    // Past the rotation and the first key's retention: several writes.
    let mut now = T0;
    while now < T0 + 3 * HOUR {
        now += 300;
        e.tick(now).await.unwrap();
    }
    assert!(e.doc().jwks_version > 2 && e.doc().keys.len() > before);
    let stored = backend.load_state("ks").await.unwrap().unwrap();
    let json = stored_json(&stored.data);
    assert_eq!(json["format_note"]["from"], "a newer keyturn");
    assert_eq!(json["keys"][0]["rotation_hint"], 7);
    assert!(
        json["keys"][0]["removed_at"].is_i64(),
        "the first key was written since"
    );
    assert_eq!(e.doc().unknown_fields(), ["format_note", "rotation_hint"]);

    // A newer keyturn that this one must not act for raises min_reader: refused, unwritten.
    rewrite_stored(&backend, |doc| {
        doc["min_reader"] = serde_json::json!(FORMAT + 1)
    })
    .await;
    let before = backend.load_state("ks").await.unwrap().unwrap();
    let err = e.reload().await.unwrap_err().to_string();
    assert!(err.contains("newer keyturn"), "{err}");
    let err = refused_at_load(&backend).await.to_string();
    assert!(err.contains("upgrade this keyturn"), "{err}");
    let after = backend.load_state("ks").await.unwrap().unwrap();
    assert_eq!(after.version, before.version);
    // Its own format is fine.
    rewrite_stored(&backend, |doc| {
        doc["min_reader"] = serde_json::json!(FORMAT)
    })
    .await;
    e.reload().await.unwrap();
    assert_eq!(e.doc().min_reader, FORMAT);
}

/// A document that is no longer the key set's while it runs (deleted, or replaced by one
/// of another history or without its keys) is not acted on: no fresh start drops the keys
/// it published. Its own document, restored, is taken back.
#[tokio::test]
async fn a_document_replaced_while_running_is_not_acted_on() {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
    e.tick(T0).await.unwrap();
    let own = backend.load_state("ks").await.unwrap().unwrap();
    let published: Vec<_> = e.doc().published_kids();
    for (edit, how) in [
        (
            serde_json::json!({"jwks_version": 0, "jwks_changed_at": 0, "keys": []}),
            "it is gone",
        ),
        (
            serde_json::json!({"history": "another", "jwks_version": 0, "jwks_changed_at": 0, "keys": []}),
            "another history",
        ),
    ] {
        let bytes = store_json(&backend, &edit).await;
        let err = e.reload().await.unwrap_err();
        assert!(matches!(err, LifecycleError::Replaced { .. }), "{err}");
        assert!(err.to_string().contains(how), "{err}");
        assert!(!err.is_retryable());
        // A tick that writes (the next key is due; its write conflicts, and the re-read
        // finds the replacement) neither starts over nor drops a key.
        let err = e.tick(T0 + 2 * HOUR).await.unwrap_err();
        assert!(matches!(err, LifecycleError::Replaced { .. }), "{err}");
        assert_eq!(e.doc().published_kids(), published);
        let stored = backend.load_state("ks").await.unwrap().unwrap();
        assert_eq!(stored.data, bytes, "nothing written");
    }
    // The key set's own document, restored: taken back.
    let current = backend.load_state("ks").await.unwrap().unwrap();
    backend
        .store_state("ks", &own.data, Some(current.version))
        .await
        .unwrap();
    e.reload().await.unwrap();
    e.tick(T0 + 60).await.unwrap();
    assert_eq!(e.doc().published_kids(), published);

    // Rotations later, that copy is an older state of the history (a backup, a rollback):
    // it lacks the keys published since, so it is not taken.
    let mut now = T0;
    while e.doc().jwks_version < 4 {
        now += 300;
        e.tick(now).await.unwrap();
    }
    let latest = backend.load_state("ks").await.unwrap().unwrap();
    backend
        .store_state("ks", &own.data, Some(latest.version))
        .await
        .unwrap();
    let err = e.reload().await.unwrap_err().to_string();
    assert!(err.contains("older document of its history"), "{err}");
    // The latest copy, without its history (as a keyturn before histories would write it):
    // taken, and it keeps the history rather than getting a new one.
    let history = e.doc().history.clone();
    let mut json = stored_json(&latest.data);
    json.as_object_mut().unwrap().remove("history");
    store_json(&backend, &json).await;
    e.reload().await.unwrap();
    assert_eq!(e.doc().history, history);
    e.tick(now + 3 * HOUR).await.unwrap();
    let stored = backend.load_state("ks").await.unwrap().unwrap();
    let stored = stored_doc(&stored.data);
    assert_eq!(stored.history, history, "written back with its history");
}

/// A scheduled activation is no write, yet the audit log hears of it: the tick at its time
/// reports the key that became active and the one it retired, each once, at the
/// activation time; a revoke reports the key it activated (the revoked one is not retired).
#[tokio::test]
async fn scheduled_activations_are_reported() {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
    let kinds = |events: &[Event]| -> Vec<(&'static str, String)> {
        events.iter().map(|e| (e.kind, e.kid.clone())).collect()
    };
    let first = e.tick(T0).await.unwrap();
    let activated: Vec<_> = kinds(&first)
        .into_iter()
        .filter(|(k, _)| *k == "activated")
        .collect();
    assert_eq!(activated.len(), 1, "{first:?}");
    let old = e
        .doc()
        .active(T0)
        .and_then(|i| e.doc().keys[i].kid.clone())
        .unwrap();
    let p = e.doc().pending(T0).unwrap();
    let (new, at) = (
        e.doc().keys[p].kid.clone().unwrap(),
        e.doc().keys[p].activate_at.unwrap(),
    );
    assert!(e
        .tick(at - 1)
        .await
        .unwrap()
        .iter()
        .all(|e| e.kind != "activated"));
    let events = e.tick(at).await.unwrap();
    let mut reported = kinds(&events);
    reported.retain(|(k, _)| *k == "activated" || *k == "retired");
    assert_eq!(
        reported,
        [("activated", new.clone()), ("retired", old.clone())],
        "{events:?}"
    );
    assert!(events
        .iter()
        .filter(|e| e.kind != "published")
        .all(|e| e.at == at));
    assert!(e
        .tick(at + 60)
        .await
        .unwrap()
        .iter()
        .all(|e| e.kind != "activated"));
    // A revoke of the active key: its successor is reported active, nothing retired.
    let next = e
        .doc()
        .pending(at + 60)
        .and_then(|i| e.doc().keys[i].kid.clone())
        .unwrap();
    e.revoke(&new, at + 60).await.unwrap();
    let events = e.tick(at + 60).await.unwrap();
    let mut reported = kinds(&events);
    reported.retain(|(k, _)| *k == "activated" || *k == "retired");
    assert_eq!(reported, [("activated", next)], "{events:?}");
}

/// A key that activated by schedule while the daemon was down is reported by the first
/// tick after the restart, at its activation time and before that tick's own events, with
/// the key it retired; once, whatever the restart's audit log had seen after it. Without
/// the log's last record the engine cannot tell, and reports only a key active from that
/// very instant (here none).
#[tokio::test]
async fn an_activation_while_down_is_reported_after_the_restart() {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
    let mut now = T0;
    while now < T0 + HOUR / 2 {
        e.tick(now).await.unwrap();
        now += 60;
    }
    let down = now - 60; // the last tick, and the audit log's last record
    let doc = e.doc().clone();
    let kid = |i: usize| doc.keys[i].kid.clone().unwrap();
    let old = kid(doc.active(down).unwrap());
    let pending = doc.pending(down).unwrap();
    let (new, at) = (kid(pending), doc.keys[pending].activate_at.unwrap());
    assert!(at > down && at < down + 2 * HOUR, "{at}");
    drop(e);
    let resume = down + 2 * HOUR;

    let kinds = |events: &[Event]| -> Vec<(&'static str, String, i64)> {
        events
            .iter()
            .map(|e| (e.kind, e.kid.clone(), e.at))
            .collect()
    };
    let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
    e.audited_until(down);
    let events = e.tick(resume).await.unwrap();
    assert_eq!(
        kinds(&events[..2]),
        [("activated", new.clone(), at), ("retired", old.clone(), at)],
        "{events:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.kind == "activated" && e.kid == new)
            .count(),
        1,
        "{events:?}"
    );
    let later = e.tick(resume + 60).await.unwrap();
    assert!(later.iter().all(|e| e.kind != "activated"), "{later:?}");

    // Restarts whose log had heard of it, or that do not know what the log heard, report
    // nothing of it.
    for audited in [Some(at), Some(resume), None] {
        let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
        if let Some(t) = audited {
            e.audited_until(t);
        }
        let events = e.tick(resume + 120).await.unwrap();
        assert!(
            events.iter().all(|e| e.kid != new && e.kid != old),
            "{audited:?}: {events:?}"
        );
    }
}

/// Revoke: out of the JWKS at once, a new key active at once, exactly one active after.
#[tokio::test]
async fn revoke_takes_the_key_out_and_activates_another() {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = engine(backend, Schedule::Every(HOUR)).await;
    e.tick(T0).await.unwrap();
    let now = T0 + 600;
    e.tick(now).await.unwrap();
    let active = e.doc().keys[e.doc().active(now).unwrap()]
        .kid
        .clone()
        .unwrap();
    let new_active = e.revoke(&active, now).await.unwrap().unwrap();
    assert_ne!(new_active, active);
    assert!(!e
        .doc()
        .published()
        .any(|k| k.kid.as_deref() == Some(active.as_str())));
    let mut seen = HashMap::new();
    check_states(e.doc(), now, &mut seen, 4);
    assert!(
        e.doc().pending(now).is_some(),
        "a new pending key is published after a revoke"
    );
    assert!(matches!(
        e.revoke(&active, now).await,
        Err(LifecycleError::Refused(_))
    ));
    assert!(matches!(
        e.revoke("nope", now).await,
        Err(LifecycleError::UnknownKid(_))
    ));
}

/// Rotate now waits for the publish lead of the pending key, then activates it.
#[tokio::test]
async fn rotate_now_respects_the_publish_lead() {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = engine(backend, Schedule::Every(24 * HOUR)).await;
    e.tick(T0).await.unwrap();
    let lead = timing().publish_lead();
    // The pending key was published at T0: it may sign from T0 + lead.
    assert_eq!(e.rotate_now(T0 + 10).await.unwrap(), T0 + lead);
    let later = T0 + 2 * lead;
    e.tick(later).await.unwrap();
    // The next pending key was published at `later`.
    assert_eq!(e.rotate_now(later).await.unwrap(), later + lead);
}

/// A backend that fails one chosen call: before it runs, or after it ran (a lost answer).
struct Crashy {
    inner: Arc<dyn KeyBackend>,
    calls: AtomicUsize,
    fail_at: usize,
    after: bool,
}

impl Crashy {
    async fn gate<T>(
        &self,
        f: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let crash = || BackendError::Unavailable {
            message: format!("injected crash at call {n}"),
            source: None,
        };
        if n == self.fail_at && !self.after {
            return Err(crash());
        }
        let out = f.await;
        if n == self.fail_at {
            return Err(crash());
        }
        out
    }
}

#[async_trait]
impl KeyBackend for Crashy {
    fn kind(&self) -> &'static str {
        "crashy"
    }
    fn supports(&self, alg: Algorithm) -> bool {
        self.inner.supports(alg)
    }
    async fn create_key(&self, name: &str, key_type: KeyType) -> Result<PublicKey, BackendError> {
        self.gate(self.inner.create_key(name, key_type)).await
    }
    async fn public_key(&self, name: &str) -> Result<PublicKey, BackendError> {
        self.gate(self.inner.public_key(name)).await
    }
    async fn sign(
        &self,
        name: &str,
        alg: Algorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.inner.sign(name, alg, message).await
    }
    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.gate(self.inner.destroy(name)).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.gate(self.inner.list_keys(prefix)).await
    }
    async fn state_mac(&self, keyset: &str, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.inner.state_mac(keyset, data).await
    }
    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        self.gate(self.inner.load_state(keyset)).await
    }
    async fn store_state(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        self.gate(self.inner.store_state(keyset, data, expected))
            .await
    }
}

fn open_file_backend(dir: &std::path::Path) -> Arc<dyn KeyBackend> {
    use keyturn_backend_file::{FileBackend, FileBackendConfig, KekSource};
    let config = FileBackendConfig {
        dir: dir.join("keys"),
        kek: KekSource::File(dir.join("kek")),
    };
    Arc::new(FileBackend::open(&config).unwrap())
}

/// Runs a key set through bootstrap, two rotations and a removal, crashing at backend call
/// `fail_at`, then restarts from disk and carries on. Returns the activation times.
async fn run_with_crash(fail_at: usize, after: bool) -> (Vec<i64>, usize) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let schedule = || Schedule::Every(HOUR);
    let checkpoints = [
        T0,
        T0 + 60,
        T0 + HOUR + 1,
        T0 + 2 * HOUR + 1,
        T0 + 2 * HOUR + 1200,
        T0 + 3 * HOUR + 5,
    ];
    let mut published_before: BTreeSet<String> = BTreeSet::new();
    let mut crashed_at = None;
    {
        let crashy = Arc::new(Crashy {
            inner: open_file_backend(dir.path()),
            calls: AtomicUsize::new(0),
            fail_at,
            after,
        });
        let backend: Arc<dyn KeyBackend> = crashy.clone();
        match Engine::load("ks", timing(), schedule(), KeyType::EcP256, backend).await {
            Err(_) => crashed_at = Some(T0),
            Ok(mut e) => {
                for now in checkpoints {
                    published_before = e.doc().published().filter_map(|k| k.kid.clone()).collect();
                    if e.tick(now).await.is_err() {
                        crashed_at = Some(now);
                        break;
                    }
                }
            }
        }
        drop(crashy);
    }
    // Restart from disk (the crashed "process" and its file lock are gone).
    let backend = open_file_backend(dir.path());
    let mut e = engine(backend, schedule()).await;
    let restart = crashed_at.unwrap_or(T0 + 3 * HOUR + 5);
    e.tick(restart).await.unwrap();
    // I4: nothing that was published is lost (no retention can have ended in between).
    let now_published: BTreeSet<String> =
        e.doc().published().filter_map(|k| k.kid.clone()).collect();
    for kid in &published_before {
        let removed = e
            .doc()
            .keys
            .iter()
            .any(|k| k.kid.as_deref() == Some(kid.as_str()) && k.removed_at.is_some());
        assert!(
            now_published.contains(kid) || removed,
            "call {fail_at} (after={after}): published key {kid} lost"
        );
    }
    let mut seen = HashMap::new();
    for now in checkpoints
        .iter()
        .copied()
        .filter(|t| *t >= restart)
        .chain([T0 + 4 * HOUR + 5, T0 + 5 * HOUR + 5])
    {
        e.tick(now).await.unwrap();
        check_states(e.doc(), now, &mut seen, 4);
    }
    let activations = e.doc().keys.iter().filter_map(|k| k.activate_at).collect();
    (activations, crashed_at.map_or(0, |_| 1))
}

/// I4: a crash at every backend call during bootstrap, rotation and removal, with and
/// without the call having taken effect, followed by a restart from disk: no published key
/// lost, exactly one active key, and no rotation twice for one due time.
#[tokio::test]
async fn a_crash_between_any_two_backend_calls_is_recovered() {
    let (reference, _) = run_with_crash(usize::MAX, false).await;
    let mut crashes = 0;
    for fail_at in 1..=40 {
        for after in [false, true] {
            let (activations, crashed) = run_with_crash(fail_at, after).await;
            crashes += crashed;
            // Never two activations for one due time: activations are at least a period
            // apart, except the bootstrap key, which a crash may leave unpublished.
            let mut sorted = activations.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(
                sorted.len(),
                activations.len(),
                "call {fail_at}: two keys activate at one instant"
            );
            for pair in sorted.windows(2).skip(1) {
                assert!(
                    pair[1] - pair[0] >= HOUR - 1,
                    "call {fail_at} (after={after}): rotations {pair:?} too close"
                );
            }
            assert!(
                activations.len() + 1 >= reference.len(),
                "call {fail_at}: {activations:?} vs {reference:?}"
            );
        }
    }
    assert!(
        crashes >= 40,
        "the injector crashed only {crashes} runs: the test does not reach the calls"
    );
}

/// A record of `key` as a writer of the state store would add it: published, active from
/// `activate_at`, kept a day after it retires.
fn foreign_record(
    name: &str,
    key: &keyturn_backend::software::SoftwareKey,
    activate_at: i64,
) -> serde_json::Value {
    let public = key.public_key().unwrap();
    serde_json::json!({
        "name": name,
        "key_type": "ec-p256",
        "created_at": activate_at - 10,
        "public_key": B64.encode(public.spki_der()),
        "kid": public.kid(),
        "published_at": activate_at - 10,
        "activate_at": activate_at,
        "retain": 86_400,
    })
}

/// A record the backend does not hold (a foreign public key added to the document by
/// whoever can write the state store), and one whose public key differs from the key the
/// backend holds under its name, are withheld: never published, never signing, reported
/// once, and the engine takes no step while they are there. Revoking one is done with it.
#[tokio::test]
async fn records_the_backend_does_not_vouch_for_are_withheld() {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
    e.tick(T0).await.unwrap();
    let ours = e.doc().published_kids();
    let active = e.doc().keys[e.doc().active(T0).unwrap()].kid.clone();
    let foreign = keyturn_backend::software::SoftwareKey::generate(KeyType::EcP256).unwrap();
    let foreign_kid = foreign.public_key().unwrap().kid();
    // Activating after ours: it would sign from T0 + 20 if it were trusted.
    rewrite_stored(&backend, |doc| {
        let record = foreign_record("ks-00000000deadbeef", &foreign, T0 + 20);
        doc["keys"].as_array_mut().unwrap().push(record);
    })
    .await;
    e.reload().await.unwrap();
    assert_eq!(e.doc().published_kids(), ours, "not published");
    let withheld: Vec<_> = e.doc().withheld().map(|(k, _)| k.kid.clone()).collect();
    assert_eq!(withheld, [Some(foreign_kid.clone())]);
    let why = e.doc().withheld().next().unwrap().1.to_owned();
    assert!(why.contains("holds no key named"), "{why}");
    assert_eq!(e.doc().keys[e.doc().active(T0 + 30).unwrap()].kid, active);
    let stored = backend.load_state("ks").await.unwrap().unwrap();
    let events = e.tick(T0 + 30).await.unwrap();
    assert_eq!(
        events,
        [Event {
            kind: "withheld",
            kid: foreign_kid.clone(),
            at: T0 + 30
        }]
    );
    // No step while it is there (the next key is due at T0 + 1h), and reported once.
    assert!(e.tick(T0 + 2 * HOUR).await.unwrap().is_empty());
    assert_eq!(backend.load_state("ks").await.unwrap().unwrap(), stored);

    // One of ours whose public key is replaced by another foreign one: withheld too.
    let other = keyturn_backend::software::SoftwareKey::generate(KeyType::EcP256).unwrap();
    let other_kid = other.public_key().unwrap().kid();
    let mut replaced = String::new();
    rewrite_stored(&backend, |doc| {
        let key = &mut doc["keys"][0];
        replaced = key["kid"].as_str().unwrap().to_owned();
        key["kid"] = serde_json::json!(other_kid);
        key["public_key"] = serde_json::json!(B64.encode(other.public_key().unwrap().spki_der()));
    })
    .await;
    e.reload().await.unwrap();
    let why: Vec<_> = e.doc().withheld().map(|(_, why)| why.to_owned()).collect();
    assert!(why[0].contains("another public key"), "{why:?}");
    assert!(!e.doc().published_kids().contains(&Some(replaced)));

    // Revoked, both are done with and the engine goes on.
    for kid in [&foreign_kid, &other_kid] {
        let revoked = e.revoke(kid, T0 + 2 * HOUR).await;
        assert!(revoked.is_ok(), "{revoked:?}");
    }
    assert_eq!(e.doc().withheld().count(), 0);
    e.tick(T0 + 2 * HOUR).await.unwrap();
    assert!(e.doc().jwks_version > 2, "a step was taken");
}

/// A stored document whose MAC does not match (edited, or sealed under another backend's
/// key) or that lost its MAC is not acted on; the keys published until then stay.
#[tokio::test]
async fn a_document_that_fails_its_mac_is_not_acted_on() {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
    e.tick(T0).await.unwrap();
    let published = e.doc().published_kids();
    let own = backend.load_state("ks").await.unwrap().unwrap();
    let mut sealed: serde_json::Value = serde_json::from_slice(&own.data).unwrap();
    let text = sealed["document"].as_str().unwrap().to_owned();
    let mut json = stored_json(&own.data);
    json["keys"][0]["retain"] = serde_json::json!(10 * 365 * 86_400);
    let edited = serde_json::to_string(&json).unwrap();
    let other: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let cases = [
        ("edited, the MAC kept", {
            sealed["document"] = serde_json::json!(edited);
            serde_json::to_vec(&sealed).unwrap()
        }),
        ("without its MAC", edited.clone().into_bytes()),
        (
            "sealed under another backend's key",
            seal(&*other, "ks", text.as_bytes()).await.unwrap(),
        ),
    ];
    for (what, bytes) in cases {
        let current = backend.load_state("ks").await.unwrap().unwrap();
        backend
            .store_state("ks", &bytes, Some(current.version))
            .await
            .unwrap();
        let err = e.reload().await.unwrap_err();
        assert!(
            matches!(err, LifecycleError::Unauthentic { .. }),
            "{what}: {err}"
        );
        let err = e.tick(T0 + 2 * HOUR).await.unwrap_err();
        assert!(
            matches!(err, LifecycleError::Unauthentic { .. }),
            "{what}: {err}"
        );
        assert_eq!(e.doc().published_kids(), published, "{what}");
        let stored = backend.load_state("ks").await.unwrap().unwrap();
        assert_eq!(stored.data, bytes, "{what}: nothing written");
        // A fresh engine (a start) refuses it too, or (no MAC) accepts it only without a
        // ledger that remembers a sealed document: see the KeySet tests.
        if what != "without its MAC" {
            let err = refused_at_load(&backend).await;
            assert!(
                err.to_string().contains("fails its authentication"),
                "{err}"
            );
        }
    }
}

/// A document stored by a keyturn before documents were sealed is accepted once (its
/// records still checked against the backend) and stored sealed by the first tick; from then
/// on a document without a MAC is refused, so stripping it is no downgrade.
#[tokio::test]
async fn a_document_from_before_sealing_is_accepted_once_then_sealed() {
    let backend: Arc<dyn KeyBackend> = Arc::new(MemoryBackend::new());
    let mut first = engine(backend.clone(), Schedule::Every(HOUR)).await;
    first.tick(T0).await.unwrap();
    let plain = serde_json::to_vec(&stored_json(
        &backend.load_state("ks").await.unwrap().unwrap().data,
    ))
    .unwrap();
    let current = backend.load_state("ks").await.unwrap().unwrap();
    backend
        .store_state("ks", &plain, Some(current.version))
        .await
        .unwrap();
    let mut e = engine(backend.clone(), Schedule::Every(HOUR)).await;
    assert!(!e.is_sealed());
    assert_eq!(e.doc().published_kids(), first.doc().published_kids());
    e.tick(T0 + 60).await.unwrap();
    assert!(e.is_sealed());
    let stored = backend.load_state("ks").await.unwrap().unwrap();
    let sealed: serde_json::Value = serde_json::from_slice(&stored.data).unwrap();
    assert!(sealed["mac"].is_string(), "stored sealed: {sealed}");
    assert_eq!(sealed["min_reader"], 2);
    backend
        .store_state("ks", &plain, Some(stored.version))
        .await
        .unwrap();
    let err = e.reload().await.unwrap_err();
    assert!(err.to_string().contains("has no MAC"), "{err}");
}

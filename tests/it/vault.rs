//! The daemon on the vault backend against a real OpenBao started by each test: every
//! algorithm verified by an independent library, three replicas sharing one key set across
//! rotations, a replica killed in the middle of a rotation, and an OpenBao outage with
//! recovery. Key sets run on a shortened clock (rotations seconds apart); every wait polls
//! an observable condition with a bound, none is a fixed sleep.
//!
//! The replica checks ([`watch_rotations`], [`assert_published_once`]) are shared with the
//! kms tests.

use crate::api::{sign_and_verify, verify_independently};
use crate::harness::*;
use keyturn_backend::testserver::openbao::OpenBao;
use serde_json::{json, Value};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ALGS: [&str; 10] = [
    "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

/// Mounts transit (KV v2 is at `secret/` on a dev server; a persistent one gets it here),
/// installs the shipped policy `config/vault-policy.hcl`, writes a token limited to it into
/// `dir/vault.token` and returns the key set's `backend = { ... }` line.
pub(crate) fn vault_backend(bao: &OpenBao, dir: &Path) -> String {
    bao.enable_transit("transit");
    bao.enable_kv2("secret");
    let policy =
        std::fs::read_to_string(crate::harness::repo_dir().join("config/vault-policy.hcl"))
            .unwrap();
    bao.put_policy("keyturn", &policy);
    let token = bao.create_token(&["keyturn"], "1h");
    let file = dir.join("vault.token");
    write_secret(&file, &token);
    format!(
        "backend = {{ type = \"vault\", address = \"{}\", token_file = \"{}\" }}\n",
        bao.address(),
        file.display()
    )
}

/// A key set on a shortened clock: rotations `every` apart, a 1 s JWKS max-age and no
/// skew. On a shared backend the poll interval is 1 s and the sync delay 4 s, so the
/// publish lead is 5 s and retention 6 s: validation accepts `every` from 5 s on.
pub(crate) fn fast_keyset(name: &str, alg: &str, every: &str, extra: &str) -> String {
    format!(
        "[[keyset]]\nname = \"{name}\"\nissuer = \"https://issuer.test/{name}\"\nalgorithm = \"{alg}\"\nrotate_every = \"{every}\"\nmax_token_ttl = \"2s\"\njwks_max_age = \"1s\"\nclock_skew = \"0s\"\n{extra}\n"
    )
}

/// The poll interval of a fast key set on a shared backend (`jwks_max_age / 4`, at least 1 s).
pub(crate) const POLL: Duration = Duration::from_secs(1);

/// How long replicas may disagree on the JWKS: one poll interval, plus one second because
/// lifecycle times are whole seconds, plus slack for a loaded 2-core test machine.
pub(crate) const CONVERGENCE: Duration = Duration::from_millis(POLL.as_millis() as u64 + 2500);

/// `n` replicas of the same `config` (each in its own directory under `root`).
pub(crate) fn start_replicas(
    root: &Path,
    n: usize,
    config: impl Fn(&Path) -> String,
    env: &[(&str, &str)],
) -> Vec<Daemon> {
    (0..n)
        .map(|i| {
            let dir = root.join(format!("replica-{i}"));
            std::fs::create_dir(&dir).unwrap();
            Daemon::start_with_env(&dir, &config(&dir), env)
        })
        .collect()
}

/// The audit log of a replica started by [`start_replicas`].
pub(crate) fn audit_log(d: &Daemon) -> PathBuf {
    d.config_path.parent().unwrap().join("data/audit.log")
}

/// Keys in state `active` in a replica's view of `keyset` (invariant I1: exactly one).
pub(crate) async fn active_kids(d: &Daemon, token: &str, keyset: &str) -> Vec<String> {
    keyset_view(d, token, keyset).await["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["state"] == "active")
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// Samples every replica about four times a second until `rotations` more keys have signed,
/// and checks on every round:
/// - every replica has exactly one active key;
/// - the replicas serve byte-identical JWKS, except for at most [`CONVERGENCE`] after a
///   change (one poll interval and rounding);
/// - a token signed by each replica verifies (with `jsonwebtoken`) against the JWKS of every
///   replica, at once.
///
/// Returns the signing kids in the order they took over. `token` is a client allowed to
/// sign (audience "orders") and to read the admin views.
pub(crate) async fn watch_rotations(
    replicas: &[&Daemon],
    keyset: &str,
    alg: &str,
    token: &str,
    rotations: usize,
    period: Duration,
) -> Vec<String> {
    let deadline = Instant::now() + period * (rotations as u32 + 2) + Duration::from_secs(30);
    let jwks_path = format!("/keysets/{keyset}/jwks.json");
    let mut signers: Vec<String> = Vec::new();
    let mut diverged_since: Option<Instant> = None;
    let mut longest = Duration::ZERO;
    let mut rounds = 0;
    while signers.len() < rotations + 1 {
        assert!(
            Instant::now() < deadline,
            "only {} of {rotations} rotations within the deadline; signers {signers:?}",
            signers.len().saturating_sub(1)
        );
        rounds += 1;
        let mut bodies = Vec::new();
        for d in replicas {
            let (status, _, body) = get_public(d, &jwks_path).await;
            assert_eq!(status, 200);
            bodies.push(body);
        }
        if bodies.windows(2).all(|w| w[0] == w[1]) {
            if let Some(since) = diverged_since.take() {
                longest = longest.max(since.elapsed());
            }
        } else {
            let since = *diverged_since.get_or_insert_with(Instant::now);
            let sets: Vec<Vec<String>> = bodies
                .iter()
                .map(|b| kids(&serde_json::from_slice(b).unwrap()))
                .collect();
            assert!(
                since.elapsed() <= CONVERGENCE,
                "replicas disagree on the JWKS for {:?} (bound {CONVERGENCE:?}): {sets:?}",
                since.elapsed()
            );
        }
        for (i, d) in replicas.iter().enumerate() {
            let active = active_kids(d, token, keyset).await;
            assert_eq!(active.len(), 1, "replica {i} active keys: {active:?}");
            let (status, body) = sign(
                d,
                keyset,
                token,
                json!({"claims": {"sub": format!("replica-{i}"), "aud": "orders"}, "ttl": "2s"}),
            )
            .await;
            assert_eq!(status, 200, "replica {i}: {body}");
            let jws = body["token"].as_str().unwrap();
            for verifier in replicas {
                let claims = verify_independently(verifier, keyset, alg, jws, "orders").await;
                assert_eq!(claims["jti"], body["jti"]);
            }
            let kid = body["kid"].as_str().unwrap().to_owned();
            if !signers.contains(&kid) {
                signers.push(kid);
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "{rounds} rounds over {} replicas; longest JWKS disagreement {longest:?}; signers {signers:?}",
        replicas.len()
    );
    signers
}

/// Every key of `keyset` was published exactly once across all `logs` (so exactly one
/// replica performed each rotation step). First waits (bounded) until each replica serves a
/// key beyond `signers` (the next pending key) and every kid served or in `signers` is in
/// some log, since audit lines are written asynchronously. Returns, per kid, the index of
/// the log that published it.
pub(crate) async fn assert_published_once(
    replicas: &[&Daemon],
    logs: &[PathBuf],
    keyset: &str,
    signers: &[String],
) -> BTreeMap<String, usize> {
    let logged = || -> BTreeMap<String, Vec<usize>> {
        let mut by: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, log) in logs.iter().enumerate() {
            for kid in audit_field(log, "published", keyset, "kid") {
                by.entry(kid).or_default().push(i);
            }
        }
        by
    };
    // Generous: the next key may be a 4096-bit RSA key, slow to generate.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut served: Vec<String> = signers.to_vec();
        let mut pending = true;
        for d in replicas {
            let kids = kids(&jwks(d, keyset).await);
            pending &= kids.iter().any(|k| !signers.contains(k));
            served.extend(kids);
        }
        let by = logged();
        let missing: Vec<&String> = served.iter().filter(|k| !by.contains_key(*k)).collect();
        if pending && missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "next key served everywhere: {pending}; served but never logged as published: \
             {missing:?}; logged: {by:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let by = logged();
    for (kid, publishers) in &by {
        assert_eq!(
            publishers.len(),
            1,
            "kid {kid} was published {} times (by replicas {publishers:?})",
            publishers.len()
        );
    }
    by.into_iter().map(|(k, v)| (k, v[0])).collect()
}

/// The lifecycle document of `keyset` as stored in OpenBao's KV v2.
fn stored_doc(bao: &OpenBao, keyset: &str) -> Value {
    let (status, body) = bao.request("GET", &format!("secret/data/keyturn/{keyset}"), None);
    assert_eq!(status, 200, "{body}");
    let sealed: Value =
        serde_json::from_str(body["data"]["data"]["document"].as_str().unwrap()).unwrap();
    serde_json::from_str(sealed["document"].as_str().unwrap()).unwrap()
}

/// The backend name of a recorded but unpublished key (a rotation in progress).
fn intent(doc: &Value) -> Option<String> {
    doc["keys"]
        .as_array()?
        .iter()
        .find(|k| {
            k["published_at"].is_null() && k["removed_at"].is_null() && k["revoked_at"].is_null()
        })
        .map(|k| k["name"].as_str().unwrap().to_owned())
}

fn kid_of(doc: &Value, name: &str) -> Option<String> {
    doc["keys"]
        .as_array()?
        .iter()
        .find(|k| k["name"] == name)
        .and_then(|k| k["kid"].as_str().map(str::to_owned))
}

#[tokio::test]
async fn vault_every_algorithm_signs_tokens_that_an_independent_library_verifies() {
    let Some(bao) = OpenBao::start() else { return };
    let dir = private_dir();
    let backend = vault_backend(&bao, dir.path());
    let mut config = server_toml(dir.path());
    for alg in ALGS {
        config += &keyset_toml(&alg.to_lowercase(), alg, &backend);
    }
    let names: Vec<String> = ALGS.iter().map(|a| a.to_lowercase()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (client, token) = token_client(
        "issuer",
        &refs,
        "audiences = [\"orders\"]\nsubject_pattern = \"*\"",
    );
    config += &client;
    let d = Daemon::start(dir.path(), &config);
    for alg in ALGS {
        let ks = alg.to_lowercase();
        let body = sign_and_verify(&d, &ks, alg, &token).await;
        // The key lives in transit, not in keyturn: its kid names a published transit key.
        let doc = stored_doc(&bao, &ks);
        let name = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == body["kid"])
            .unwrap()["name"]
            .as_str()
            .unwrap()
            .to_owned();
        let (status, key) = bao.request("GET", &format!("transit/keys/{name}"), None);
        assert_eq!(status, 200, "{key}");
        assert_eq!(key["data"]["exportable"], false);
    }
}

/// Three real daemons on one OpenBao share one key set rotating every 5 s: each rotation is
/// done by exactly one of them (each kid is `published` once across the three audit logs),
/// they serve the same JWKS within the poll interval, and every replica's tokens verify
/// against every replica's JWKS.
#[tokio::test]
async fn vault_three_replicas_share_one_key_set_across_rotations() {
    let Some(bao) = OpenBao::start() else { return };
    let root = private_dir();
    let backend = vault_backend(&bao, root.path());
    let (client, token) = token_client(
        "issuer",
        &["shared"],
        "audiences = [\"orders\"]\nsubject_pattern = \"*\"\nadmin = true",
    );
    let replicas = start_replicas(
        root.path(),
        3,
        |dir| {
            format!(
                "{}{}{client}",
                server_toml(dir),
                fast_keyset("shared", "ES256", "5s", &backend)
            )
        },
        &[],
    );
    let refs: Vec<&Daemon> = replicas.iter().collect();
    let signers =
        watch_rotations(&refs, "shared", "ES256", &token, 3, Duration::from_secs(5)).await;
    let logs: Vec<PathBuf> = replicas.iter().map(audit_log).collect();
    let publishers = assert_published_once(&refs, &logs, "shared", &signers).await;
    eprintln!("kid -> publishing replica: {publishers:?}");
    // Bootstrap (two keys) plus a new pending key per rotation.
    assert!(publishers.len() >= 2 + 3, "{publishers:?}");
    let doc = stored_doc(&bao, "shared");
    let names: Vec<&str> = doc["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["name"].as_str().unwrap())
        .collect();
    let mut unique = names.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), names.len(), "a key recorded twice: {names:?}");
}

/// A replica SIGKILLed in the middle of a rotation: after it wrote the intent to create the
/// next key and before it published that key.
///
/// How the kill lands there deterministically: the two other replicas are frozen with
/// SIGSTOP at a quiet moment early in a period (no step under way, the next rotation at
/// least a second away), so the victim is the only process that can act when the rotation
/// is due. The key set uses 4096-bit RSA keys (rotating every 8 s, room for their slow
/// generation), so the window between the intent write and the publish write is wide. The test polls
/// the lifecycle document in OpenBao every few milliseconds and sends SIGKILL as soon as the
/// intent is there; it then reads the document again and asserts the intent is still
/// unpublished (nobody else could have written: the victim is dead, the others frozen),
/// which proves the kill landed mid-rotation. (If key generation ever finished between two
/// polls, the loop waits for the next rotation.) Then the others resume (SIGCONT) and must
/// publish exactly that key once, keep exactly one active key, rotate on, and agree on the
/// JWKS.
#[tokio::test]
async fn vault_replica_killed_mid_rotation_leaves_a_state_the_others_finish() {
    let Some(bao) = OpenBao::start() else { return };
    let root = private_dir();
    let backend = vault_backend(&bao, root.path());
    let (client, token) = token_client(
        "issuer",
        &["shared"],
        "audiences = [\"orders\"]\nsubject_pattern = \"*\"\nadmin = true",
    );
    let every = Duration::from_secs(8);
    let mut replicas = start_replicas(
        root.path(),
        3,
        |dir| {
            format!(
                "{}{}{client}",
                server_toml(dir),
                fast_keyset(
                    "shared",
                    "RS256",
                    "8s",
                    &format!("rsa_bits = 4096\n{backend}")
                )
            )
        },
        &[],
    );
    let logs: Vec<PathBuf> = replicas.iter().map(audit_log).collect();
    // Freeze the others early in a period (the next key published, no step under way, the
    // next rotation at least a second away), so none of them is caught holding a step.
    eventually(every * 3, "a quiet moment early in a period", || {
        let doc = stored_doc(&bao, "shared");
        let next = doc["keys"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|k| k["activate_at"].as_i64())
            .max()
            .unwrap_or(0);
        let quiet = intent(&doc).is_none() && next - unix_now() >= 2;
        async move { quiet }
    })
    .await;
    let victim = replicas.remove(0);
    for s in &replicas {
        s.signal("STOP");
    }
    let deadline = Instant::now() + every * 4 + Duration::from_secs(30);
    let name = loop {
        if let Some(name) = intent(&stored_doc(&bao, "shared")) {
            break name;
        }
        assert!(
            Instant::now() < deadline,
            "the victim never started a rotation"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    victim.signal("KILL");
    drop(victim);
    let doc = stored_doc(&bao, "shared");
    assert_eq!(
        intent(&doc).as_deref(),
        Some(name.as_str()),
        "the kill did not land between intent and publish: {doc}"
    );
    let (created, _) = bao.request("GET", &format!("transit/keys/{name}"), None);
    eprintln!(
        "killed mid-rotation: intent {name} recorded, transit key {}",
        if created == 200 {
            "created"
        } else {
            "not yet created"
        }
    );

    for s in &replicas {
        s.signal("CONT");
    }
    let survivors: Vec<&Daemon> = replicas.iter().collect();
    // The survivors publish exactly the key the victim intended (no second one).
    let mut kid = None;
    eventually(every * 3, "the survivors publish the intended key", || {
        let found = kid_of(&stored_doc(&bao, "shared"), &name);
        let done = found.is_some();
        kid = found;
        async move { done }
    })
    .await;
    let kid = kid.unwrap();
    assert!(intent(&stored_doc(&bao, "shared")).is_none());
    for s in &survivors {
        let (s, kid) = (*s, &kid);
        eventually(
            CONVERGENCE,
            "each survivor serves the new key",
            || async move { kids(&jwks(s, "shared").await).contains(kid) },
        )
        .await;
    }
    // Rotations go on: the finished key signs, then the one after it.
    let signers = watch_rotations(&survivors, "shared", "RS256", &token, 2, every).await;
    assert!(signers.contains(&kid), "{kid} never signed: {signers:?}");
    let publishers = assert_published_once(&survivors, &logs, "shared", &signers).await;
    assert_ne!(
        publishers[&kid], 0,
        "the dead victim cannot have published {kid}"
    );
}

/// OpenBao (a persistent server) is killed and later restarted on the same address with
/// its data ([`outage_and_recovery`] checks the daemon throughout); afterwards the stored
/// history lost no key and recorded none twice.
#[tokio::test]
async fn vault_outage_serves_jwks_from_memory_and_recovers() {
    let root = private_dir();
    let bao_dir = root.path().join("openbao");
    let Some(bao) = OpenBao::start_persistent(&bao_dir) else {
        return;
    };
    let backend = vault_backend(&bao, root.path());
    let (client, token) = token_client(
        "issuer",
        &["default"],
        "audiences = [\"orders\"]\nsubject_pattern = \"*\"\nadmin = true",
    );
    let config = format!(
        "{}{}{client}",
        server_toml(root.path()),
        fast_keyset("default", "ES256", "5s", &backend)
    );
    let d = Daemon::start(root.path(), &config);
    let doc_before = stored_doc(&bao, "default");
    let bao = RefCell::new(bao);
    outage_and_recovery(
        &d,
        &token,
        || bao.borrow_mut().stop(),
        || *bao.borrow_mut() = OpenBao::start_persistent(&bao_dir).unwrap(),
    )
    .await;
    let bao = bao.into_inner();
    // Nothing lost: every key record from before is still there with the same key and
    // times; nothing duplicated: each name recorded once.
    let doc = stored_doc(&bao, "default");
    let keys = doc["keys"].as_array().unwrap();
    for old in doc_before["keys"].as_array().unwrap() {
        let now = keys
            .iter()
            .find(|k| k["name"] == old["name"])
            .unwrap_or_else(|| panic!("key {} lost: {doc}", old["name"]));
        for field in ["kid", "public_key", "published_at", "activate_at"] {
            assert_eq!(now[field], old[field], "{field} of {}", old["name"]);
        }
    }
    let mut names: Vec<&str> = keys.iter().map(|k| k["name"].as_str().unwrap()).collect();
    let count = names.len();
    names.sort_unstable();
    names.dedup();
    assert_eq!(names.len(), count, "a key recorded twice: {doc}");
}

/// The outage scenario, shared with the kms tests, on one daemon whose key set `default`
/// rotates every 5 s (client `token` may sign for audience "orders" and read admin views):
/// `down()` makes the backend unreachable, `up()` brings it back with its data.
///
/// While down: /readyz turns 503 through the maintenance poll alone (before any signing
/// request), and until a scheduled activation has passed, every round sees the JWKS served
/// from memory (200, the same bytes and ETag), signing answer 503 `backend_unavailable`
/// with Retry-After, and /readyz 503. After `up()`: /readyz 200 without help, signing 200
/// with the key that was pending before the outage (verified with jsonwebtoken), a new key
/// published, and each kid published exactly once in the audit log.
pub(crate) async fn outage_and_recovery(
    d: &Daemon,
    token: &str,
    down: impl FnOnce(),
    up: impl FnOnce(),
) {
    let jwks_path = "/keysets/default/jwks.json";
    let ok = json!({"claims": {"sub": "alice", "aud": "orders"}, "ttl": "2s"});
    let (status, before) = sign(d, "default", token, ok.clone()).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(readyz(d).await, 200);
    let (_, view) = admin(d, token, reqwest::Method::GET, "/v1/keysets/default").await;
    let next_activation = view["next_activation"].as_i64().unwrap();
    let (_, headers, body) = get_public(d, jwks_path).await;
    let etag = headers["etag"].clone();
    let kids_before = kids(&serde_json::from_slice(&body).unwrap());

    down();
    // Readiness follows the backend without any signing request (the maintenance poll).
    eventually(POLL * 8, "/readyz turns 503", || async {
        readyz(d).await == 503
    })
    .await;
    let url = format!("{}/v1/keysets/default/sign", d.api);
    let mut rounds = 0;
    // Stay down until the scheduled activation has passed, checking every answer meanwhile.
    eventually(
        Duration::from_secs(30),
        "the scheduled activation passes during the outage",
        || {
            rounds += 1;
            let (url, ok, body, etag) = (&url, &ok, &body, &etag);
            async move {
                let (status, headers, served) = get_public(d, jwks_path).await;
                assert_eq!(status, 200);
                assert_eq!(&served, body, "the JWKS changed during the outage");
                assert_eq!(&headers["etag"], etag);
                let r = http()
                    .post(url)
                    .bearer_auth(token)
                    .json(ok)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 503);
                let retry: u64 = r.headers()["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(retry >= 1);
                let err: Value = r.json().await.unwrap();
                assert_eq!(err["error"]["code"], "backend_unavailable", "{err}");
                assert_eq!(readyz(d).await, 503);
                unix_now() > next_activation
            }
        },
    )
    .await;
    assert!(rounds > 1);
    // A batch fails as a whole.
    let r = http()
        .post(format!("{}/v1/keysets/default/sign-batch", d.api))
        .bearer_auth(token)
        .json(&json!({"requests": vec![ok.clone(); 40]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    let err: Value = r.json().await.unwrap();
    assert_eq!(err["error"]["code"], "backend_unavailable", "{err}");

    up();
    eventually(Duration::from_secs(40), "/readyz recovers", || async {
        readyz(d).await == 200
    })
    .await;
    let (status, after) = sign(d, "default", token, ok.clone()).await;
    assert_eq!(status, 200, "{after}");
    verify_independently(
        d,
        "default",
        "ES256",
        after["token"].as_str().unwrap(),
        "orders",
    )
    .await;
    // The key that was pending before the outage signs now; the next one gets published.
    let signer = after["kid"].as_str().unwrap().to_owned();
    assert!(
        kids_before.contains(&signer),
        "{signer} not in {kids_before:?}"
    );
    assert_ne!(after["kid"], before["kid"]);
    eventually(
        Duration::from_secs(20),
        "a new key is published after recovery",
        || {
            let kids_before = &kids_before;
            async move {
                kids(&jwks(d, "default").await)
                    .iter()
                    .any(|k| !kids_before.contains(k))
            }
        },
    )
    .await;
    let published = assert_published_once(&[d], &[audit_log(d)], "default", &kids_before).await;
    assert!(published.len() > kids_before.len(), "{published:?}");
}

pub(crate) fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

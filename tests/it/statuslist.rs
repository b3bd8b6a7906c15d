//! Token status lists end to end: tokens carry their entry, the lists are served signed
//! and read by an independent decoder (scripts/statuslist.py: PyJWT and Python's zlib with
//! the draft's bit rule), statuses change through the API and the CLI, survive restarts
//! and crashes, and replicas sharing OpenBao serve each other's changes.

use crate::harness::*;
use crate::vault::{fast_keyset, start_replicas, CONVERGENCE};
use keyturn_backend::testserver::openbao::OpenBao;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// The key set's settings: status lists with a 5-minute ttl.
const LISTS: &str = "status_list = { ttl = \"5m\" }";

/// What the independent decoder reads from a served list (see scripts/statuslist.py).
fn decoded(list_url: &str, jwks_url: &str) -> Option<Value> {
    let python = keyturn_backend::testserver::find_binary("KEYTURN_PYTHON", "python with PyJWT")?;
    let out = Command::new(python)
        .arg(repo_dir().join("scripts/statuslist.py"))
        .args([list_url, jwks_url])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "statuslist.py: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(serde_json::from_slice(&out.stdout).unwrap())
}

/// The statuses the decoder finds not VALID, by index.
fn not_valid(decoded: &Value) -> Vec<(u64, u64)> {
    let mut found: Vec<(u64, u64)> = decoded["not_valid"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(i, s)| (i.parse().unwrap(), s.as_u64().unwrap()))
        .collect();
    found.sort_unstable();
    found
}

/// The claims of a compact JWS (not verified: the list's signature is checked by PyJWT).
fn claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

/// Changes a token's status through the API: (status, body).
async fn change(d: &Daemon, token: &str, keyset: &str, body: Value) -> (u16, Value) {
    post(
        d,
        token,
        &format!("/v1/keysets/{keyset}/token-status"),
        &body,
    )
    .await
}

/// Checks that an API answer is the error `code` with HTTP status `status`.
fn refused((got, body): (u16, Value), status: u16, code: &str) {
    assert_eq!(
        (got, body["error"]["code"].as_str()),
        (status, Some(code)),
        "{body}"
    );
}

/// The list URL and index a signed token's `status` claim holds, checked against the
/// sign response's `status`.
fn entry(signed: &Value) -> (String, u64) {
    let claim = &claims(signed["token"].as_str().unwrap())["status"]["status_list"];
    let (uri, idx) = (
        claim["uri"].as_str().unwrap(),
        claim["idx"].as_u64().unwrap(),
    );
    assert_eq!(
        signed["status"],
        json!({"uri": uri, "idx": idx}),
        "{signed}"
    );
    (uri.to_owned(), idx)
}

/// Waits until the daemon serves the list at `path` (it is signed just after the start).
async fn served(d: &Daemon, path: &str) -> (reqwest::header::HeaderMap, Vec<u8>) {
    eventually(
        Duration::from_secs(10),
        "the status list is served",
        || async { get_public(d, path).await.0 == 200 },
    )
    .await;
    let (_, headers, body) = get_public(d, path).await;
    (headers, body)
}

/// The public listener's path of the list a URI names (the URI is the issuer's, which
/// a proxy may put in front of the listener).
fn path_of(uri: &str) -> String {
    uri[uri.find("/keysets/").unwrap()..].to_owned()
}

#[tokio::test]
async fn revoke_suspend_and_reinstate_on_the_file_backend_survive_a_restart() {
    let dir = private_dir();
    let (issuer, issuer_token) = token_client(
        "issuer",
        &["default"],
        "subject_pattern = \"*\"\nallowed_claims = [\"*\"]\nrevoke_tokens = true",
    );
    let (signer, signer_token) = token_client("signer", &["default"], "subject_pattern = \"*\"");
    let (ops, ops_token) = token_client("ops", &["default"], "admin = true");
    let config = format!(
        "{}audit_log = \"{}\"\n{}{issuer}{signer}{ops}",
        server_toml(dir.path()),
        dir.path().join("audit.log").display(),
        keyset_toml("default", "ES256", LISTS)
    );
    let d = Daemon::start(dir.path(), &config);

    // Every token carries its entry; the indexes differ; the claim is the daemon's.
    let mut signed = Vec::new();
    for i in 0..4 {
        let (status, body) = sign(
            &d,
            "default",
            &signer_token,
            json!({"claims": {"sub": format!("u{i}")}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        signed.push(body);
    }
    let requests = json!({"requests": [{"claims": {"sub": "b1"}}, {"claims": {"sub": "b2"}}]});
    let (status, batch) = post(
        &d,
        &signer_token,
        "/v1/keysets/default/sign-batch",
        &requests,
    )
    .await;
    assert_eq!(status, 200, "{batch}");
    signed.extend(batch["results"].as_array().unwrap().iter().cloned());
    let entries: Vec<(String, u64)> = signed.iter().map(entry).collect();
    let uri = entries[0].0.clone();
    assert_eq!(
        uri,
        "https://issuer.test/default/keysets/default/statuslists/1"
    );
    assert!(entries.iter().all(|(u, _)| *u == uri));
    let distinct: HashSet<u64> = entries.iter().map(|(_, i)| *i).collect();
    assert_eq!(distinct.len(), entries.len(), "{entries:?}");
    let reserved = json!({"claims": {"status": {"status_list": {"idx": 0, "uri": uri}}}});
    refused(
        sign(&d, "default", &issuer_token, reserved).await,
        422,
        "reserved_claim",
    );

    // Served: the media type, caching no longer than ttl, CORS, ETag and 304, HEAD.
    // The list is served as soon as a token of it is returned.
    let path = path_of(&uri);
    let (status, headers, body) = get_public(&d, &path).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(headers["content-type"], "application/statuslist+jwt");
    assert_eq!(headers["cache-control"], "public, max-age=300");
    assert_eq!(headers["access-control-allow-origin"], "*");
    let etag = headers["etag"].clone();
    let again = http()
        .get(format!("{}{path}", d.jwks))
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 304);
    let head = http()
        .head(format!("{}{path}", d.jwks))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(
        head.headers()["content-length"],
        body.len().to_string().as_str()
    );
    for missing in [
        "/keysets/default/statuslists/2",
        "/keysets/default/statuslists/01",
        "/keysets/nope/statuslists/1",
    ] {
        let (status, _, body) = get_public(&d, missing).await;
        assert_eq!(status, 404, "{missing}");
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert!(body["error"]["code"].is_string(), "{missing}: {body}");
    }

    // The independent decoder: signed by the JWKS's key, typ, sub, ttl, and all VALID.
    let list_url = format!("{}{path}", d.jwks);
    let jwks_url = format!("{}/keysets/default/jwks.json", d.jwks);
    let Some(read) = decoded(&list_url, &jwks_url) else {
        return;
    };
    assert_eq!(read["content_type"], "application/statuslist+jwt");
    assert_eq!(read["typ"], "statuslist+jwt");
    assert_eq!(read["sub"], uri.as_str());
    assert_eq!(read["ttl"], 300);
    assert_eq!(
        (read["bits"].as_u64(), read["size"].as_u64()),
        (Some(2), Some(1 << 20))
    );
    assert!(read["exp"].as_i64().unwrap() - read["iat"].as_i64().unwrap() >= 600);
    assert_eq!(not_valid(&read), []);

    // Who may change a status: revoke_tokens or admin, on key sets it may use.
    let by_token = |t: &Value, s: &str| json!({"token": t["token"], "status": s});
    refused(
        change(
            &d,
            &signer_token,
            "default",
            by_token(&signed[0], "revoked"),
        )
        .await,
        403,
        "not_allowed",
    );

    // Revoke by token, suspend by URI and index (CLI), reinstate; revoked is final.
    let (status, body) = change(
        &d,
        &issuer_token,
        "default",
        by_token(&signed[0], "revoked"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["changed"].as_bool(), body["previous"].as_str()),
        (Some(true), Some("valid"))
    );
    let cli = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
            .args(["--api", &d.api])
            .env("KEYTURN_TOKEN_FILE", dir.path().join("ops.token"))
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    write_secret(&dir.path().join("ops.token"), &ops_token);
    let idx1 = entries[1].1.to_string();
    let (ok, said) = cli(&["token", "suspend", "default", "--uri", &uri, "--idx", &idx1]);
    assert!(ok && said.contains("valid -> suspended"), "{said}");
    let idx2 = entries[2].1.to_string();
    assert!(cli(&["token", "suspend", "default", "--uri", &uri, "--idx", &idx2]).0);
    let (ok, said) = cli(&[
        "token",
        "reinstate",
        "default",
        "--uri",
        &uri,
        "--idx",
        &idx2,
    ]);
    assert!(ok && said.contains("suspended -> valid"), "{said}");
    write_secret(
        &dir.path().join("t0.jwt"),
        signed[0]["token"].as_str().unwrap(),
    );
    let t0 = dir.path().join("t0.jwt");
    let (ok, said) = cli(&[
        "token",
        "reinstate",
        "default",
        "--token-file",
        t0.to_str().unwrap(),
    ]);
    assert!(!ok && said.contains("409 status_final"), "{said}");
    let (status, body) = change(
        &d,
        &issuer_token,
        "default",
        by_token(&signed[0], "revoked"),
    )
    .await;
    assert_eq!(
        (status, body["changed"].as_bool()),
        (200, Some(false)),
        "{body}"
    );
    // An index no token holds, a list that is not this key set's, a token that is not its.
    let unused = (0..1u64 << 20)
        .find(|i| i % 256 != entries[0].1 % 256 && !distinct.contains(i))
        .unwrap();
    refused(
        change(
            &d,
            &ops_token,
            "default",
            json!({"uri": uri, "idx": unused, "status": "revoked"}),
        )
        .await,
        404,
        "index_not_in_use",
    );
    let (status, _) = change(
        &d,
        &ops_token,
        "default",
        json!({"uri": "https://elsewhere.test/1", "idx": 1, "status": "revoked"}),
    )
    .await;
    assert_eq!(status, 404);
    let mut forged = signed[3]["token"].as_str().unwrap().to_owned();
    forged.push('A');
    refused(
        change(
            &d,
            &ops_token,
            "default",
            json!({"token": forged, "status": "revoked"}),
        )
        .await,
        422,
        "not_our_token",
    );

    // Served at once, as the decoder reads it.
    let expected = vec![(entries[0].1, 1), (entries[1].1, 2)];
    let mut wanted = expected.clone();
    wanted.sort_unstable();
    assert_eq!(not_valid(&decoded(&list_url, &jwks_url).unwrap()), wanted);
    let metrics = metrics_text(&d).await;
    assert!(
        metrics.contains(
            "keyturn_token_status_changes_total{keyset=\"default\",status=\"revoked\"} 1"
        ),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "keyturn_token_status_changes_total{keyset=\"default\",status=\"suspended\"} 2"
        ),
        "{metrics}"
    );

    // Each change is an audit line: who, index, jti when known, old and new status.
    let audit = dir.path().join("audit.log");
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|l: &Value| l["event"] == "token-status")
        .collect();
    assert_eq!(lines.len(), 4, "{lines:?}");
    assert_eq!(lines[0]["caller"], "issuer");
    assert_eq!(lines[0]["jti"], signed[0]["jti"]);
    assert_eq!(
        (lines[0]["uri"].as_str(), lines[0]["idx"].as_u64()),
        (Some(uri.as_str()), Some(entries[0].1))
    );
    assert_eq!(
        (lines[0]["old"].as_str(), lines[0]["new"].as_str()),
        (Some("valid"), Some("revoked"))
    );
    assert_eq!(
        (lines[1]["caller"].as_str(), lines[1]["new"].as_str()),
        (Some("ops"), Some("suspended"))
    );
    assert!(lines[1].get("jti").is_none());

    // A restart serves every status as before, and new tokens still get entries.
    d.stop();
    let d = Daemon::start(dir.path(), &config);
    let path_after = path_of(&uri);
    served(&d, &path_after).await;
    let list_url = format!("{}{path}", d.jwks);
    let jwks_url = format!("{}/keysets/default/jwks.json", d.jwks);
    assert_eq!(not_valid(&decoded(&list_url, &jwks_url).unwrap()), wanted);
    let (status, body) = sign(
        &d,
        "default",
        &signer_token,
        json!({"claims": {"sub": "later"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (_, later) = entry(&body);
    assert!(!distinct.contains(&later));
    // Nothing was logged again: every change had its line.
    let recovered = std::fs::read_to_string(&audit)
        .unwrap()
        .matches("\"recovered\":true")
        .count();
    assert_eq!(recovered, 0);
}

/// The change is stored before its audit line is written: with the audit log on a full
/// disk the change stands (the client hears that its line is missing), and after a
/// SIGKILL the next start writes the line, marked `recovered`. Needs root to mount a
/// tmpfs, as CI has.
#[tokio::test]
async fn a_crash_between_a_status_change_and_its_audit_line_loses_neither() {
    let dir = private_dir();
    let Some(fs) = crate::faults::Tmpfs::mount(dir.path()) else {
        return;
    };
    let (ops, ops_token) = token_client("ops", &["default"], "admin = true");
    let audit = fs.0.join("audit.log");
    let config = format!(
        "{}audit_log = \"{}\"\n{}{ops}",
        server_toml(dir.path()),
        audit.display(),
        keyset_toml("default", "ES256", LISTS)
    );
    let d = Daemon::start(dir.path(), &config);
    let (status, signed) = sign(&d, "default", &ops_token, json!({"claims": {}})).await;
    assert_eq!(status, 200, "{signed}");
    let (uri, idx) = entry(&signed);
    let path = path_of(&uri);
    served(&d, &path).await;

    // A full disk: once the log's last page is full, signing stops.
    let _ = std::fs::write(fs.0.join("filler"), vec![0u8; 4 << 20]);
    let mut full = false;
    for _ in 0..1000 {
        let (status, _) = sign(&d, "default", &ops_token, json!({"claims": {}})).await;
        if status == 503 {
            full = true;
            break;
        }
    }
    assert!(full, "the audit log never filled up");
    let revoke = json!({"uri": uri, "idx": idx, "status": "revoked"});
    refused(
        change(&d, &ops_token, "default", revoke.clone()).await,
        503,
        "audit_unavailable",
    );
    let logged = || {
        std::fs::read_to_string(&audit)
            .unwrap_or_default()
            .matches("\"event\":\"token-status\"")
            .count()
    };
    assert_eq!(logged(), 0);
    // The crash: nothing more is written.
    d.signal("KILL");
    drop(d);
    std::fs::remove_file(fs.0.join("filler")).unwrap();

    let d = Daemon::start(dir.path(), &config);
    served(&d, &path).await;
    let (status, body) = change(&d, &ops_token, "default", revoke).await;
    assert_eq!(
        (status, body["changed"].as_bool()),
        (200, Some(false)),
        "the change stood: {body}"
    );
    eventually(
        Duration::from_secs(5),
        "the recovered audit line",
        || async { logged() == 1 },
    )
    .await;
    let text = std::fs::read_to_string(&audit).unwrap();
    // (The full disk may have torn the line it refused; the chain goes on after it.)
    let line: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|l| l["event"] == "token-status")
        .unwrap();
    assert_eq!(line["recovered"], true, "{line}");
    assert_eq!(
        (
            line["idx"].as_u64(),
            line["new"].as_str(),
            line["caller"].as_str()
        ),
        (Some(idx), Some("revoked"), Some("ops"))
    );
    let verified = keyturn::infra::audit::verify(&audit, None).unwrap();
    assert!(verified.torn.len() <= 1, "{:?}", verified.torn);
}

/// Two replicas sharing OpenBao: their tokens never share an index, and a change made on
/// one is served by the other within the sync delay, also after a restart.
#[tokio::test]
async fn replicas_on_openbao_share_statuses_and_never_share_an_index() {
    let Some(bao) = OpenBao::start() else { return };
    let root = private_dir();
    let backend = crate::vault::vault_backend(&bao, root.path());
    let (ops, token) = token_client("ops", &["shared"], "admin = true");
    let config = |dir: &Path| {
        format!(
            "{}{}{ops}",
            server_toml(dir),
            fast_keyset("shared", "ES256", "1h", &format!("{LISTS}\n{backend}"))
        )
    };
    let mut replicas = start_replicas(root.path(), 2, config, &[]);
    let mut entries = Vec::new();
    for (i, d) in replicas.iter().enumerate() {
        for _ in 0..3 {
            let (status, signed) = sign(d, "shared", &token, json!({"claims": {}})).await;
            assert_eq!(status, 200, "replica {i}: {signed}");
            entries.push(entry(&signed));
        }
    }
    let distinct: HashSet<&(String, u64)> = entries.iter().collect();
    assert_eq!(distinct.len(), entries.len(), "{entries:?}");
    let path = path_of(&entries[0].0);
    let jwks_url = |d: &Daemon| format!("{}/keysets/shared/jwks.json", d.jwks);
    let reads = |d: &Daemon| decoded(&format!("{}{path}", d.jwks), &jwks_url(d));
    for d in &replicas {
        served(d, &path).await;
    }
    if reads(&replicas[0]).is_none() {
        return;
    }

    // Revoked on replica 0 (a token replica 1 signed), suspended on replica 1.
    let (uri, a) = entries[4].clone();
    let (_, b) = entries[1].clone();
    let (status, body) = change(
        &replicas[0],
        &token,
        "shared",
        json!({"uri": uri, "idx": a, "status": "revoked"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = change(
        &replicas[1],
        &token,
        "shared",
        json!({"uri": uri, "idx": b, "status": "suspended"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let mut wanted = vec![(a, 1), (b, 2)];
    wanted.sort_unstable();
    for (i, d) in replicas.iter().enumerate() {
        eventually(
            CONVERGENCE + Duration::from_secs(5),
            &format!("replica {i} serves both changes"),
            || {
                let wanted = wanted.clone();
                async move { reads(d).is_some_and(|r| not_valid(&r) == wanted) }
            },
        )
        .await;
    }
    // A restarted replica serves them too.
    let first = replicas.remove(0);
    let dir = first.config_path.parent().unwrap().to_owned();
    first.stop();
    let restarted = Daemon::start(&dir, &config(&dir));
    served(&restarted, &path).await;
    assert_eq!(not_valid(&reads(&restarted).unwrap()), wanted);
}

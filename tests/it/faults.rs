//! The data directory filling up (a real ENOSPC on a small tmpfs): clear errors, no
//! corruption, no unaudited signature, and recovery by itself once space is freed. Needs
//! root to mount, as CI has. (A read-only flip cannot be produced the same way: the kernel
//! refuses `remount,ro` while the daemon holds files open for writing; EROFS takes the same
//! code path as ENOSPC, the storage error of a write.)

use crate::harness::*;
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

pub(crate) struct Tmpfs(pub(crate) std::path::PathBuf);

impl Tmpfs {
    pub(crate) fn mount(dir: &Path) -> Option<Tmpfs> {
        let at = dir.join("mnt");
        std::fs::create_dir_all(&at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs"])
            .arg(&at)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let msg = "cannot mount a tmpfs (the fault tests need root, as CI runs)";
            assert!(std::env::var_os("CI").is_none(), "{msg}");
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED (not under CI): {msg}");
            return None;
        }
        Some(Tmpfs(at))
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

async fn ready(d: &Daemon) -> u16 {
    http()
        .get(format!("{}/readyz", d.jwks))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test]
async fn a_full_data_dir_fails_clearly_and_recovers() {
    let dir = private_dir();
    let Some(fs) = Tmpfs::mount(dir.path()) else {
        return;
    };
    let (client, token) = token_client(
        "ops",
        &["default"],
        "admin = true\naudiences = [\"orders\"]",
    );
    let config = format!(
        "[server]\njwks_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n{}{client}",
        fs.0.join("data").display(),
        keyset_toml("default", "ES256", "")
    );
    let d = Daemon::start(dir.path(), &config);
    let body = json!({"claims": {"aud": "orders"}});
    assert_eq!(sign(&d, "default", &token, body.clone()).await.0, 200);
    let mut issued = 1;

    for round in 0..2 {
        let fault = format!("full disk, round {round}");
        let jwks_before = jwks(&d, "default").await;
        // Fill every free byte.
        let _ = std::fs::write(fs.0.join("filler"), vec![0u8; 4 << 20]);
        // A lifecycle change cannot be recorded: a clear error, not a crash, and no change.
        let (_, view) = admin(&d, &token, reqwest::Method::GET, "/v1/keysets/default").await;
        let keys = view["keys"].as_array().unwrap();
        let pending = keys.iter().find(|k| k["state"] == "pending").unwrap()["kid"]
            .as_str()
            .unwrap()
            .to_owned();
        let path = format!("/v1/keysets/default/keys/{pending}/revoke");
        let (status, err) = admin(&d, &token, reqwest::Method::POST, &path).await;
        assert!(status >= 500, "{fault}: revoke answered {status} {err}");
        assert!(
            kids(&jwks(&d, "default").await).contains(&pending),
            "{fault}: a failed revoke changed the JWKS"
        );
        // Signing stops as soon as the audit log cannot take lines: never an unaudited token.
        eventually(
            Duration::from_secs(10),
            "signing refused while the audit log is unwritable",
            || {
                let (d, token, body) = (&d, &token, body.clone());
                async move {
                    let (status, resp) = sign(d, "default", token, body).await;
                    if status == 200 {
                        return false;
                    }
                    assert_eq!(
                        (status, resp["error"]["code"].as_str()),
                        (503, Some("audit_unavailable")),
                        "{resp}"
                    );
                    true
                }
            },
        )
        .await;
        // The sign that first met the broken disk: its token was withheld (503), its line
        // is kept and written once the disk clears.
        issued += 1;
        // A batch fails as a whole, with no token in the answer.
        let r = http()
            .post(format!("{}/v1/keysets/default/sign-batch", d.api))
            .bearer_auth(&token)
            .json(&json!({"requests": vec![body.clone(); 40]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "{fault}: sign-batch");
        let err: serde_json::Value = r.json().await.unwrap();
        assert_eq!(err["error"]["code"], "audit_unavailable", "{fault}: {err}");
        assert_eq!(ready(&d).await, 503, "{fault}: /readyz must say not ready");
        let metrics = metrics_text(&d).await;
        assert!(metrics.contains("keyturn_backend_errors_total{backend=\"file\",op=\"store_state\",kind=\"storage\"}"), "{metrics}");
        assert!(
            metrics.contains("keyturn_audit_log_writable 0"),
            "{metrics}"
        );
        // Verifiers are unaffected.
        assert_eq!(jwks(&d, "default").await, jwks_before);
        // The disk clears.
        std::fs::remove_file(fs.0.join("filler")).unwrap();
        eventually(Duration::from_secs(20), "signing resumes", || {
            let (d, token, body) = (&d, &token, body.clone());
            async move { sign(d, "default", token, body).await.0 == 200 }
        })
        .await;
        issued += 1;
        eventually(Duration::from_secs(20), "ready again", || async {
            ready(&d).await == 200
        })
        .await;
        let (status, r) = rotate(&d, &token, "default").await;
        assert_eq!(status, 200, "{fault}: rotate after recovery: {r}");
    }
    let log = d.log_text();
    assert!(
        log.contains("No space left on device"),
        "the log names the cause"
    );
    assert!(d.stop().success());

    // Nothing is corrupt: the audit chain verifies and holds every token issued (and the
    // lines of tokens withheld when the disk broke, written once it cleared), the state
    // parses, and a restart serves the same keys.
    let audit = fs.0.join("data/audit.log");
    assert!(
        keyturn::infra::audit::verify(&audit, None).is_ok_and(|v| v.torn.is_empty()),
        "{:?}",
        keyturn::infra::audit::verify(&audit, None)
    );
    let signs = std::fs::read_to_string(&audit)
        .unwrap()
        .matches("\"event\":\"sign\"")
        .count();
    assert!(
        signs >= issued - 2,
        "{signs} sign lines for at least {issued} tokens"
    );
    let d = Daemon::spawn(dir.path().join("keyturn.toml"), &[]);
    let after = jwks(&d, "default").await;
    assert!(!after["keys"].as_array().unwrap().is_empty());
}

/// A key set whose keys the backend no longer holds (a key file deleted or damaged) does
/// not take the daemon down: the records the backend cannot vouch for are withheld from the
/// JWKS (nothing but the backend's own keys is published), /readyz and the log say why, a
/// signature is refused with 503 `key_unavailable`, and the other key sets work. Once the
/// keys are restored a reload brings them back.
#[tokio::test]
async fn keys_that_cannot_sign_are_refused_and_reported() {
    let dir = private_dir();
    let (client, token) = token_client("svc", &["default", "other"], "audiences = [\"orders\"]");
    let config = format!(
        "{}{}{}{client}",
        server_toml(dir.path()),
        keyset_toml("default", "ES256", ""),
        keyset_toml("other", "ES256", "")
    );
    let body = json!({"claims": {"aud": "orders"}});
    let d = Daemon::start(dir.path(), &config);
    for ks in ["default", "other"] {
        assert_eq!(sign(&d, ks, &token, body.clone()).await.0, 200);
    }
    assert!(d.stop().success());
    let config_path = dir.path().join("keyturn.toml");
    let data = dir.path().join("data");
    let keys: Vec<std::path::PathBuf> = std::fs::read_dir(data.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "key"))
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("default-")
        })
        .collect();
    assert!(!keys.is_empty());
    let not_ready = |d: &Daemon| {
        let url = format!("{}/readyz", d.jwks);
        async move {
            let r = http().get(url).send().await.unwrap();
            let status = r.status().as_u16();
            let v: serde_json::Value = r.json().await.unwrap_or_default();
            (status, v["keysets_not_ready"].clone())
        }
    };

    for (fault, damage) in [("deleted", None), ("truncated", Some(&b"{\"v\":1,"[..]))] {
        let saved: Vec<Vec<u8>> = keys.iter().map(|k| std::fs::read(k).unwrap()).collect();
        for k in &keys {
            match damage {
                None => std::fs::remove_file(k).unwrap(),
                Some(bytes) => std::fs::write(k, bytes).unwrap(),
            }
        }
        let d = Daemon::spawn(config_path.clone(), &[]);
        assert_eq!(not_ready(&d).await, (503, json!(["default"])), "{fault}");
        assert!(jwks(&d, "default").await["keys"]
            .as_array()
            .unwrap()
            .is_empty());
        let (status, err) = sign(&d, "default", &token, body.clone()).await;
        assert_eq!(
            (status, err["error"]["code"].as_str()),
            (503, Some("key_unavailable")),
            "{fault}"
        );
        assert_eq!(
            sign(&d, "other", &token, body.clone()).await.0,
            200,
            "{fault}"
        );
        assert!(
            d.log_text()
                .contains("withheld from the JWKS and from signing"),
            "{fault}: {}",
            d.log_text()
        );
        // Restored, a reload finds the keys again.
        for (k, bytes) in keys.iter().zip(saved) {
            write_secret(k, &bytes);
        }
        d.signal("HUP");
        eventually(
            Duration::from_secs(20),
            "usable again after a reload",
            || async { sign(&d, "default", &token, body.clone()).await.0 == 200 },
        )
        .await;
        assert_eq!(not_ready(&d).await.0, 200, "{fault}");
        assert!(d.stop().success());
    }

    // A wrong key-encryption key: the state documents' MACs (derived from it) fail, so the
    // daemon acts on none of them and refuses to start, naming the key.
    let kek = std::fs::read(data.join("kek")).unwrap();
    let mut other = kek.clone();
    other.iter_mut().for_each(|b| *b ^= 0x5a);
    write_secret(&data.join("kek"), &other);
    let log = Daemon::refused(&config_path);
    assert!(
        log.contains("fails its authentication") && log.contains("key-encryption key"),
        "{log}"
    );
    write_secret(&data.join("kek"), &kek);
    let d = Daemon::spawn(config_path, &[]);
    assert_eq!(sign(&d, "default", &token, body).await.0, 200);
}

/// The key set's state deleted while the daemon runs (a file backend's `.state` file): the
/// next write finds it gone and is not made. No fresh start drops the published keys; the
/// daemon keeps serving its JWKS, says in /readyz and the log what happened, refuses the
/// admin operation with 503 `state_replaced`, and takes its state back once restored.
#[tokio::test]
async fn a_state_deleted_while_running_is_not_started_over() {
    let dir = private_dir();
    let (client, token) = token_client("ops", &["default"], "admin = true");
    let config = format!(
        "{}{}{client}",
        server_toml(dir.path()),
        keyset_toml("default", "ES256", "")
    );
    let d = Daemon::start(dir.path(), &config);
    let before = kids(&jwks(&d, "default").await);
    let state = dir.path().join("data/keys/default.state");
    let saved = std::fs::read(&state).unwrap();
    std::fs::remove_file(&state).unwrap();
    let (status, err) = rotate(&d, &token, "default").await;
    assert_eq!(
        (status, err["error"]["code"].as_str()),
        (503, Some("state_replaced")),
        "{err}"
    );
    assert_eq!(kids(&jwks(&d, "default").await), before);
    assert!(!state.exists(), "nothing written in its place");
    assert_eq!(ready(&d).await, 503);
    assert!(
        d.log_text()
            .contains("was replaced while keyturn ran (it is gone)"),
        "{}",
        d.log_text()
    );
    // Restored: taken back at the next write.
    write_secret(&state, &saved);
    let (status, err) = rotate(&d, &token, "default").await;
    assert_eq!(status, 200, "{err}");
    let after = kids(&jwks(&d, "default").await);
    assert!(
        before.iter().all(|k| after.contains(k)),
        "{before:?} {after:?}"
    );
    eventually(Duration::from_secs(10), "ready again", || async {
        ready(&d).await == 200
    })
    .await;
    assert!(d.stop().success());
}

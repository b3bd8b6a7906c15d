//! Running under systemd: the sd-notify protocol (READY, WATCHDOG, RELOADING, STOPPING)
//! seen from a test datagram socket standing in for the service manager, config reload on
//! SIGHUP without touching the listeners, refusal of an invalid config, and the drain of
//! in-flight requests on SIGTERM.

use crate::harness::{
    audit_field, http, jwks, keyset_toml, keyset_view, kids, metrics_text, private_dir, rotate,
    server_toml, sign, token_client, Daemon,
};
use serde_json::json;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

/// The policy of the clients here that sign: any `sub` (the tokens carry one).
const SIGNER: &str = "subject_pattern = \"*\"";

/// What the daemon told the "service manager", in order.
struct Manager {
    socket: UnixDatagram,
    seen: Vec<String>,
}

impl Manager {
    fn bind(path: &Path) -> Manager {
        let socket = UnixDatagram::bind(path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Manager {
            socket,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams until one has the line `line`; returns that datagram. Earlier
    /// non-matching ones (watchdog pings mostly) are kept in `seen`.
    fn expect(&mut self, line: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            match self.socket.recv(&mut buf) {
                Ok(n) => {
                    let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                    self.seen.push(msg.clone());
                    if msg.lines().any(|l| l == line) {
                        return msg;
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(e) => panic!("notify socket: {e}"),
            }
            assert!(
                Instant::now() < deadline,
                "no {line} within {timeout:?}; got so far: {:?}",
                self.seen
            );
        }
    }
}

/// Starts `keyturn serve` the way systemd does for a Type=notify unit with WatchdogSec=:
/// `NOTIFY_SOCKET`, `WATCHDOG_USEC`, and `WATCHDOG_PID` set to the daemon's own pid (the
/// shell execs the binary, so `$$` is that pid). Waits for the "ready" log line, like
/// [`Daemon::spawn`].
fn spawn_under_systemd(config_path: PathBuf, notify_socket: &Path, watchdog_usec: u64) -> Daemon {
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg("WATCHDOG_PID=$$ exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_keyturn"))
        .args(["serve", "--log-format", "json", "--config"])
        .arg(&config_path)
        .env("RUST_LOG", "info")
        .env("NOTIFY_SOCKET", notify_socket)
        .env("WATCHDOG_USEC", watchdog_usec.to_string());
    Daemon::launch(cmd, config_path)
}

/// `GET path` over plain HTTP/1.1 from a synchronous test: the whole response.
fn get_blocking(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let addr = base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

/// Waits (bounded) for the daemon to exit after a signal sent elsewhere.
fn wait_exit(d: &mut Daemon, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = d.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "daemon did not exit within {timeout:?}; log:\n{}",
            d.log_text()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn notify_protocol_ready_watchdog_reload_stopping() {
    let dir = private_dir();
    let notify_path = dir.path().join("notify.sock");
    let mut manager = Manager::bind(&notify_path);
    let config_path = dir.path().join("keyturn.toml");
    std::fs::write(
        &config_path,
        server_toml(dir.path()) + &keyset_toml("default", "ES256", ""),
    )
    .unwrap();

    let mut d = spawn_under_systemd(config_path, &notify_path, 200_000);
    let wait = Duration::from_secs(30);

    let ready = manager.expect("READY=1", wait);
    assert!(ready.contains("STATUS=serving"), "{ready:?}");
    // READY=1 means the listener is bound and the key set has a key: the JWKS has it.
    let jwks = get_blocking(&d.jwks, "/.well-known/jwks.json");
    assert!(jwks.starts_with("HTTP/1.1 200"), "{jwks}");
    assert!(jwks.contains("\"kid\""), "{jwks}");
    // Pings every 100 ms (half of WATCHDOG_USEC) while healthy: expect several.
    for _ in 0..3 {
        manager.expect("WATCHDOG=1", Duration::from_secs(5));
    }

    // Core dumps are off for the daemon whatever the caller's limit was.
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", d.child.id())).unwrap();
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .unwrap();
    assert_eq!(
        core.split_whitespace().collect::<Vec<_>>()[4..6],
        ["0", "0"],
        "{core}"
    );

    d.signal("HUP");
    let reloading = manager.expect("RELOADING=1", wait);
    let monotonic = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"));
    assert!(monotonic.parse::<u64>().unwrap() > 0);
    manager.expect("READY=1", wait);
    // Still healthy after the reload.
    manager.expect("WATCHDOG=1", Duration::from_secs(5));

    d.signal("TERM");
    manager.expect("STOPPING=1", wait);
    let status = wait_exit(&mut d, wait);
    assert!(status.success(), "{status:?}; log:\n{}", d.log_text());
    // Nothing but the protocol's own words went to the manager.
    for msg in &manager.seen {
        for line in msg.lines() {
            let key = line.split('=').next().unwrap();
            assert!(
                [
                    "READY",
                    "STATUS",
                    "WATCHDOG",
                    "RELOADING",
                    "MONOTONIC_USEC",
                    "STOPPING"
                ]
                .contains(&key),
                "unexpected notification {line:?}"
            );
        }
    }
}

/// Signs with `token` on `keyset` and checks the token against that key set's JWKS.
async fn signs_and_verifies(d: &Daemon, keyset: &str, token: &str) {
    let (status, body) = sign(d, keyset, token, json!({"claims": {"sub": "svc"}})).await;
    assert_eq!(status, 200, "{keyset}: {body}");
    let set = jwks(d, keyset).await;
    assert!(
        kids(&set)
            .iter()
            .any(|k| Some(k.as_str()) == body["kid"].as_str()),
        "{keyset}: kid {} not in {set}",
        body["kid"]
    );
    let keys = keyturn::cli::verify::parse_jwks(&serde_json::to_vec(&set).unwrap()).unwrap();
    let now = body["exp"].as_i64().unwrap() - 1; // inside any lifetime of a second or more
    keyturn::cli::verify::verify(
        body["token"].as_str().unwrap(),
        &keys,
        &keyturn::cli::verify::Expect::default(),
        now,
    )
    .unwrap();
}

async fn jwks_status(d: &Daemon, keyset: &str) -> u16 {
    http()
        .get(format!("{}/keysets/{keyset}/jwks.json", d.jwks))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

fn log_lines_with(d: &Daemon, needle: &str) -> Vec<String> {
    d.logs
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// A reload that points a key set at a backend holding none of its keys (here another key
/// directory) is refused: it would start the key set over, and its published keys would
/// leave the JWKS at once.
#[tokio::test]
async fn sighup_refuses_to_start_a_key_set_over_on_an_empty_backend() {
    let dir = private_dir();
    let (alpha, alpha_token) = token_client("alpha", &["default"], SIGNER);
    let base = server_toml(dir.path());
    let d = Daemon::start(
        dir.path(),
        &(base.clone() + &keyset_toml("default", "ES256", "") + &alpha),
    );
    let before = kids(&jwks(&d, "default").await);
    let (elsewhere, moved) = moved_default(dir.path());
    std::fs::write(&d.config_path, base + &moved + &alpha).unwrap();
    d.signal("HUP");
    crate::harness::eventually(Duration::from_secs(30), "reload refused", || async {
        !log_lines_with(&d, "reload refused").is_empty()
    })
    .await;
    let refused = log_lines_with(&d, "reload refused").join("\n");
    assert!(refused.contains("holds no keys"), "{refused}");
    assert_eq!(kids(&jwks(&d, "default").await), before);
    signs_and_verifies(&d, "default", &alpha_token).await;
    // Nothing was written there: the key set was not started over.
    assert!(
        !elsewhere.join("default.state").exists(),
        "a lifecycle document was written in the new directory"
    );

    // The new directory now holds another key set's history under the same name (another
    // daemon made it; the refused reload let go of the directory): switching to it is
    // refused as well.
    let other = private_dir();
    let d2 = Daemon::start(other.path(), &(server_toml(other.path()) + &moved + &alpha));
    let theirs = kids(&jwks(&d2, "default").await);
    assert!(d2.stop().success());
    assert!(elsewhere.join("default.state").exists());
    assert!(theirs.iter().all(|kid| !before.contains(kid)));
    d.signal("HUP");
    crate::harness::eventually(Duration::from_secs(30), "second reload refused", || async {
        log_lines_with(&d, "reload refused").len() >= 2
    })
    .await;
    let refused = log_lines_with(&d, "reload refused").join("\n");
    // Written under another daemon's key-encryption key, its MAC fails under this one's.
    assert!(refused.contains("fails its authentication"), "{refused}");
    assert_eq!(kids(&jwks(&d, "default").await), before);
    signs_and_verifies(&d, "default", &alpha_token).await;
    assert!(d.stop().success());
}

/// `dir/elsewhere`, and key set "default" (ES256) with its file backend there.
fn moved_default(dir: &Path) -> (PathBuf, String) {
    let elsewhere = dir.join("elsewhere");
    let backend = format!(
        "backend = {{ type = \"file\", dir = \"{}\" }}",
        elsewhere.display()
    );
    let config = keyset_toml("default", "ES256", &backend);
    (elsewhere, config)
}

/// Runs `keyturn serve` on `config` (written to `dir/keyturn.toml`), which must refuse to
/// start: returns its stderr.
fn refused_start(dir: &Path, config: &str) -> String {
    let path = dir.join("keyturn.toml");
    std::fs::write(&path, config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("keyturn started on a config it should refuse:\n{config}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Runs `keyturn check-config` on `config` (written to `dir/keyturn.toml`): its stdout if it
/// passes, its stderr if not.
fn check_config(dir: &Path, config: &str) -> Result<String, String> {
    let path = dir.join("keyturn.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The entry of `keyset` in the ledger at `path`.
fn entry(path: &Path, keyset: &str) -> serde_json::Value {
    let ledger: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    ledger["keysets"][keyset].clone()
}

/// A restart is held to what a reload is: the data directory remembers the key sets it
/// served (`keysets.json`), so a key set whose tokens may be live cannot leave the config,
/// and cannot start over on a backend without its history; the config that ran before
/// starts again with every key as it was.
#[tokio::test]
async fn a_restart_is_refused_where_a_reload_would_be() {
    let dir = private_dir();
    let (alpha, alpha_token) = token_client("alpha", &["default", "second"], SIGNER);
    let base = server_toml(dir.path());
    let second = keyset_toml("second", "EdDSA", "");
    let full = base.clone() + &keyset_toml("default", "ES256", "") + &second + &alpha;
    let d = Daemon::start(dir.path(), &full);
    let before = (
        kids(&jwks(&d, "default").await),
        kids(&jwks(&d, "second").await),
    );
    assert!(d.stop().success());
    let ledger = dir.path().join("data/keysets.json");
    assert!(ledger.exists());

    // "second" left out while alpha could sign with it.
    let (alpha_default, _) = token_client("alpha", &["default"], SIGNER);
    let without = base.clone() + &keyset_toml("default", "ES256", "") + &alpha_default;
    let err = refused_start(dir.path(), &without);
    assert!(
        err.contains("key set \"second\" was removed") && err.contains("keysets.json"),
        "{err}"
    );
    // check-config says so before a restart.
    let err = check_config(dir.path(), &without).unwrap_err();
    assert!(err.contains("key set \"second\" was removed"), "{err}");

    // "default" moved to an empty directory.
    let (elsewhere, moved) = moved_default(dir.path());
    let err = refused_start(dir.path(), &(base.clone() + &moved + &second + &alpha));
    assert!(err.contains("holds no keys or history"), "{err}");
    assert!(!elsewhere.join("default.state").exists());

    // No client lists "second": the ledger notes since when, and a further restart keeps
    // that time, and keeps the longer retention when "second"'s tokens get shorter.
    let unlisted = base.clone() + &keyset_toml("default", "ES256", "") + &second + &alpha_default;
    assert!(Daemon::start(dir.path(), &unlisted).stop().success());
    let first = entry(&ledger, "second");
    let since = first["unsigned_since"]
        .as_i64()
        .expect("unsigned_since noted");
    let shorter = second.replace("max_token_ttl = \"10m\"", "max_token_ttl = \"1m\"");
    let unlisted_shorter =
        base.clone() + &keyset_toml("default", "ES256", "") + &shorter + &alpha_default;
    assert!(Daemon::start(dir.path(), &unlisted_shorter)
        .stop()
        .success());
    let again = entry(&ledger, "second");
    assert_eq!(again["unsigned_since"].as_i64(), Some(since));
    assert_eq!(again["retention"], first["retention"]);
    // Its removal is still early: the wait is the 10m tokens'.
    let err = check_config(dir.path(), &without).unwrap_err();
    assert!(err.contains("may be valid for"), "{err}");

    // The config that ran: everything as it was.
    let d = Daemon::start(dir.path(), &full);
    let after = (
        kids(&jwks(&d, "default").await),
        kids(&jwks(&d, "second").await),
    );
    assert_eq!(after, before);
    signs_and_verifies(&d, "second", &alpha_token).await;
    assert!(d.stop().success());
}

/// A backend restored from a backup taken before the last stop, without the keys published
/// since, is refused at the next start (the stop recorded the state's JWKS version); the
/// state the stop left starts again.
#[tokio::test]
async fn a_backup_older_than_the_last_stop_is_refused_at_the_start() {
    let dir = private_dir();
    let (ops, token) = token_client("ops", &["default"], "admin = true");
    let config = server_toml(dir.path()) + &keyset_toml("default", "ES256", "") + &ops;
    let keys = dir.path().join("data/keys");
    // The backend's files (the file backend's directory is flat).
    let copy = |from: &Path, to: &Path| {
        use std::os::unix::fs::DirBuilderExt;
        let _ = std::fs::remove_dir_all(to);
        std::fs::DirBuilder::new().mode(0o700).create(to).unwrap();
        for file in std::fs::read_dir(from).unwrap() {
            let file = file.unwrap();
            assert!(file.file_type().unwrap().is_file(), "{file:?}");
            std::fs::copy(file.path(), to.join(file.file_name())).unwrap();
        }
    };
    let version = |view: &serde_json::Value| view["jwks_version"].as_u64().unwrap();

    let d = Daemon::start(dir.path(), &config);
    let started = keyset_view(&d, &token, "default").await;
    let backup = dir.path().join("backup");
    copy(&keys, &backup);
    let (status, rotation) = rotate(&d, &token, "default").await;
    assert_eq!(status, 200, "{rotation}");
    // Its key activates one publish lead (1 s) later; then a new next key is published.
    crate::harness::eventually(Duration::from_secs(20), "a new key published", || async {
        let view = keyset_view(&d, &token, "default").await;
        version(&view) > version(&started)
    })
    .await;
    let served = kids(&jwks(&d, "default").await);
    assert!(d.stop().success());
    let at_stop = dir.path().join("at-stop");
    copy(&keys, &at_stop);

    copy(&backup, &keys);
    let err = refused_start(dir.path(), &config);
    assert!(err.contains("older state of its history"), "{err}");
    copy(&at_stop, &keys);
    let d = Daemon::start(dir.path(), &config);
    assert_eq!(kids(&jwks(&d, "default").await), served);
    assert!(d.stop().success());
}

/// A key that activates by schedule while the daemon is stopped is in the audit log after
/// the restart: "activated" at its activation time, and the key it retired, each once.
#[tokio::test]
async fn an_activation_while_stopped_is_audited_at_the_restart() {
    let dir = private_dir();
    let (ops, token) = token_client("ops", &["default"], "admin = true");
    // A publish lead of 3 s: the rotation's key activates 3 s after it is asked for, well
    // after the stop below (milliseconds).
    let keyset = keyset_toml("default", "ES256", "")
        .replace("jwks_max_age = \"1s\"", "jwks_max_age = \"3s\"");
    let d = Daemon::start(dir.path(), &(server_toml(dir.path()) + &keyset + &ops));
    let view = keyset_view(&d, &token, "default").await;
    let state_of = |view: &serde_json::Value, kid: &str| {
        view["keys"]
            .as_array()
            .unwrap()
            .iter()
            .find(|k| k["kid"] == kid)
            .map(|k| k["state"].clone())
    };
    let old = view["active_kid"].as_str().unwrap().to_owned();
    assert_eq!(state_of(&view, &old), Some(json!("active")), "{view}");
    let (status, rotation) = rotate(&d, &token, "default").await;
    assert_eq!(status, 200, "{rotation}");
    let new = rotation["kid"].as_str().unwrap().to_owned();
    let at = rotation["activates_at"].as_i64().unwrap();
    assert!(d.stop().success());
    let log = dir.path().join("data/audit.log");
    assert!(
        !audit_field(&log, "activated", "default", "kid").contains(&new),
        "activated before the stop: the stop took over 3 s"
    );

    // Stopped across the activation.
    let unix_now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64
    };
    crate::harness::eventually(
        Duration::from_secs(10),
        "the activation time to pass",
        || async { unix_now() > at },
    )
    .await;
    let d = Daemon::spawn(dir.path().join("keyturn.toml"), &[]);
    let view = keyset_view(&d, &token, "default").await;
    assert!(d.stop().success());
    assert_eq!(state_of(&view, &new), Some(json!("active")), "{view}");
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&log)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &serde_json::Value| v["event"] == "activated" || v["event"] == "retired")
        .collect();
    let of = |event: &str, kid: &str| {
        lines
            .iter()
            .filter(|v| v["event"] == event && v["kid"] == kid)
            .map(|v| v["ts"].as_i64().unwrap())
            .collect::<Vec<_>>()
    };
    assert_eq!(of("activated", &new), [at], "{lines:?}");
    assert_eq!(of("retired", &old), [at], "{lines:?}");
    let verified = std::process::Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(verified.status.success(), "{verified:?}");
}

/// A reload whose ledger cannot be written is refused: a ledger left behind could let the
/// next start drop a key set whose tokens are live. Once it can be written, the same reload
/// applies.
#[tokio::test]
async fn a_reload_that_cannot_be_recorded_is_refused() {
    let dir = private_dir();
    let (alpha, _) = token_client("alpha", &["default"], SIGNER);
    let (beta, beta_token) = token_client("beta", &["second"], SIGNER);
    let base = server_toml(dir.path()) + &keyset_toml("default", "ES256", "") + &alpha;
    let d = Daemon::start(dir.path(), &base);
    let ledger = dir.path().join("data/keysets.json");
    std::fs::remove_file(&ledger).unwrap();
    std::fs::create_dir(&ledger).unwrap(); // a rename cannot replace it
    std::fs::write(
        &d.config_path,
        base.clone() + &keyset_toml("second", "EdDSA", "") + &beta,
    )
    .unwrap();
    d.signal("HUP");
    crate::harness::eventually(Duration::from_secs(30), "reload refused", || async {
        !log_lines_with(&d, "reload refused").is_empty()
    })
    .await;
    let refused = log_lines_with(&d, "reload refused").join("\n");
    assert!(refused.contains("cannot record the key sets"), "{refused}");
    assert_eq!(jwks_status(&d, "second").await, 404);
    std::fs::remove_dir(&ledger).unwrap();
    d.signal("HUP");
    crate::harness::eventually(Duration::from_secs(30), "reload applied", || async {
        !log_lines_with(&d, "configuration reloaded").is_empty()
    })
    .await;
    signs_and_verifies(&d, "second", &beta_token).await;
    let recorded = std::fs::read_to_string(&ledger).unwrap();
    assert!(recorded.contains("\"second\""), "{recorded}");
    assert!(d.stop().success());
}

#[tokio::test]
async fn sighup_applies_a_new_config_on_the_same_listeners_and_refuses_an_invalid_one() {
    let dir = private_dir();
    let (alpha, alpha_token) = token_client("alpha", &["default"], SIGNER);
    let (beta, beta_token) = token_client("beta", &["second"], SIGNER);
    let base = server_toml(dir.path()) + &keyset_toml("default", "ES256", "");
    // "second" lives briefly: its tokens last 5 s at most.
    let second = keyset_toml("second", "EdDSA", "")
        .replace("max_token_ttl = \"10m\"", "max_token_ttl = \"5s\"");
    let d = Daemon::start(dir.path(), &(base.clone() + &alpha));
    signs_and_verifies(&d, "default", &alpha_token).await;
    assert_eq!(jwks_status(&d, "second").await, 404);
    let (status, _) = sign(&d, "second", &beta_token, json!({"claims": {}})).await;
    assert_eq!(status, 401, "beta is not a client yet");

    // A new key set and a new client.
    let with_second = base.clone() + &second + &alpha + &beta;
    std::fs::write(&d.config_path, &with_second).unwrap();
    d.signal("HUP");
    crate::harness::eventually(Duration::from_secs(30), "reload applied", || async {
        !log_lines_with(&d, "configuration reloaded").is_empty()
    })
    .await;
    // Same addresses as before: the listeners were not rebound.
    signs_and_verifies(&d, "second", &beta_token).await;
    signs_and_verifies(&d, "default", &alpha_token).await;
    assert_eq!(log_lines_with(&d, "keyturn ready").len(), 1);

    // An invalid config: a client naming a key set that does not exist.
    let (gamma, _) = token_client("gamma", &["nope"], "");
    std::fs::write(&d.config_path, with_second.clone() + &gamma).unwrap();
    d.signal("HUP");
    crate::harness::eventually(Duration::from_secs(30), "reload refused", || async {
        !log_lines_with(&d, "reload refused").is_empty()
    })
    .await;
    let refused = log_lines_with(&d, "reload refused").join("\n");
    assert!(
        refused.contains("gamma") && refused.contains("is not a [[keyset]]"),
        "the log should say why: {refused}"
    );
    // Everything from the last good config keeps working.
    signs_and_verifies(&d, "default", &alpha_token).await;
    signs_and_verifies(&d, "second", &beta_token).await;
    assert_eq!(log_lines_with(&d, "configuration reloaded").len(), 1);

    // A key set leaves only once its tokens have expired. While a client may still sign
    // with it, its removal is refused...
    let refusals = |d: &Daemon, text: &str| {
        log_lines_with(d, "reload refused")
            .iter()
            .filter(|l| l.contains(text))
            .count()
    };
    std::fs::write(&d.config_path, base.clone() + &alpha).unwrap();
    d.signal("HUP");
    crate::harness::eventually(Duration::from_secs(30), "removal refused", || async {
        refusals(&d, "clients may still sign") == 1
    })
    .await;
    assert_eq!(jwks_status(&d, "second").await, 200);
    // ...then no client may sign with it (beta goes), and its lifetime is cut to 1 s: the
    // tokens already out keep their 5 s, and the wait is theirs...
    let unsigned = Instant::now();
    let shorter = second.replace("max_token_ttl = \"5s\"", "max_token_ttl = \"1s\"");
    std::fs::write(&d.config_path, base.clone() + &shorter + &alpha).unwrap();
    d.signal("HUP");
    crate::harness::eventually(Duration::from_secs(30), "second reload applied", || async {
        log_lines_with(&d, "configuration reloaded").len() == 2
    })
    .await;
    // ...and it may go once its last tokens (5 s) have expired; before, it is refused.
    std::fs::write(&d.config_path, base + &alpha).unwrap();
    d.signal("HUP");
    crate::harness::eventually(Duration::from_secs(30), "removal applied", || async {
        if log_lines_with(&d, "configuration reloaded").len() == 3 {
            return true;
        }
        if refusals(&d, "too early") > 0 {
            d.signal("HUP"); // time passes in the daemon's real clock; ask again
        }
        false
    })
    .await;
    assert!(
        refusals(&d, "too early") > 0,
        "removed before its tokens expired"
    );
    assert!(
        unsigned.elapsed() >= Duration::from_secs(4),
        "removed {:?} after its last client: its 5 s tokens may still be live",
        unsigned.elapsed()
    );
    assert_eq!(jwks_status(&d, "second").await, 404);
    let (status, _) = sign(&d, "second", &beta_token, json!({"claims": {}})).await;
    assert_eq!(status, 401, "beta is gone");
    signs_and_verifies(&d, "default", &alpha_token).await;

    let status = d.stop();
    assert!(status.success(), "{status:?}");
}

/// `keyturn_signatures_total{keyset=...,outcome="ok"}` from /metrics.
async fn signatures(d: &Daemon, keyset: &str) -> u64 {
    let text = metrics_text(d).await;
    let label = format!("keyset=\"{keyset}\"");
    text.lines()
        .filter(|l| {
            l.starts_with("keyturn_signatures") && l.contains(&label) && l.contains("\"ok\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

/// A sign request on a raw HTTP/1.1 connection, sent up to its headers with
/// `Expect: 100-continue`. Once the daemon answers "100 Continue", the request is past
/// authentication and its handler is waiting for the body: accepted and in flight, for as
/// long as the test likes.
struct StalledRequest {
    stream: tokio::net::TcpStream,
    body: String,
}

impl StalledRequest {
    async fn open(d: &Daemon, keyset: &str, token: &str) -> StalledRequest {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = d.api.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let body = json!({"claims": {"sub": "late"}}).to_string();
        let head = format!(
            "POST /v1/keysets/{keyset}/sign HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf))
                .await
                .expect("no 100 Continue within 10 s")
                .unwrap();
            assert!(
                n > 0,
                "connection closed: {}",
                String::from_utf8_lossy(&got)
            );
            got.extend_from_slice(&buf[..n]);
        }
        let interim = String::from_utf8_lossy(&got);
        assert!(interim.starts_with("HTTP/1.1 100 Continue"), "{interim}");
        StalledRequest { stream, body }
    }

    /// Sends the body; returns the whole response (the daemon closes the connection after
    /// it, being in shutdown).
    async fn finish(mut self) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        self.stream.write_all(self.body.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tokio::time::timeout(
            Duration::from_secs(20),
            self.stream.read_to_end(&mut response),
        )
        .await
        .expect("no complete response within 20 s")
        .unwrap();
        String::from_utf8(response).unwrap()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_requests_in_flight() {
    // Load: one batch of 256 RS4096 signatures per key set, so /metrics shows per batch
    // that the daemon has accepted it. And one request held open across the SIGTERM.
    const SLOW: [&str; 2] = ["slow-a", "slow-b"];
    let dir = private_dir();
    let mut config = server_toml(dir.path()) + &keyset_toml("default", "ES256", "");
    for ks in SLOW {
        config += &keyset_toml(ks, "RS256", "rsa_bits = 4096");
    }
    let (client, token) = token_client("issuer", &["default", SLOW[0], SLOW[1]], SIGNER);
    config += &client;
    let mut d = Daemon::start(dir.path(), &config);

    let stalled = StalledRequest::open(&d, "default", &token).await;

    let batch = json!({
        "requests": vec![json!({"claims": {"sub": "svc"}}); keyturn::server::http::api::MAX_BATCH]
    });
    let mut batches = Vec::new();
    for ks in SLOW {
        // A client of its own: one connection per batch, nothing shared or pooled.
        let req = http()
            .post(format!("{}/v1/keysets/{ks}/sign-batch", d.api))
            .bearer_auth(&token)
            .json(&batch);
        batches.push(tokio::spawn(async move {
            let r = req.send().await?;
            let status = r.status().as_u16();
            let body: serde_json::Value = r.json().await?;
            Ok::<_, reqwest::Error>((status, body))
        }));
    }
    crate::harness::eventually(Duration::from_secs(60), "both batches signing", || {
        let d = &d;
        async move {
            for ks in SLOW {
                if signatures(d, ks).await == 0 {
                    return false;
                }
            }
            true
        }
    })
    .await;

    d.signal("TERM");
    crate::harness::eventually(Duration::from_secs(10), "the drain to start", || async {
        !log_lines_with(&d, "draining in-flight requests").is_empty()
    })
    .await;

    // Accepted before the SIGTERM, finished during the drain: a complete answer.
    let response = stalled.finish().await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    let signed: serde_json::Value = serde_json::from_str(body).unwrap();
    assert!(signed["token"].is_string(), "{response}");

    for (ks, task) in SLOW.iter().zip(batches) {
        let (status, body) = task
            .await
            .unwrap()
            .unwrap_or_else(|e| panic!("{ks}: an accepted request lost its response: {e}"));
        assert_eq!(status, 200, "{ks}: {body}");
        let results = body["results"].as_array().unwrap();
        assert_eq!(results.len(), keyturn::server::http::api::MAX_BATCH, "{ks}");
        assert!(
            results.iter().all(|r| r["token"].is_string()),
            "{ks}: {body}"
        );
    }
    let status = wait_exit(&mut d, Duration::from_secs(30));
    assert!(status.success(), "{status:?}; log:\n{}", d.log_text());
}

/// SIGTERM while the start is still making keys (here six RSA-4096 keys, an active and a
/// next one for each of three key sets) stops it there,
/// cleanly, instead of after every key is made; the next start finishes the job.
#[tokio::test]
async fn sigterm_during_a_long_start_stops_it_there() {
    use std::io::BufRead;
    let dir = private_dir();
    let mut config = server_toml(dir.path());
    for i in 0..3 {
        config += &keyset_toml(&format!("rsa{i}"), "RS256", "rsa_bits = 4096");
    }
    let path = dir.path().join("keyturn.toml");
    std::fs::write(&path, &config).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .env_remove("NOTIFY_SOCKET")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    // The key-encryption key is made once the signal handlers are in place, before keys.
    let mut log = Vec::new();
    while !log
        .iter()
        .any(|l: &String| l.contains("key-encryption key"))
    {
        log.push(rx.recv_timeout(Duration::from_secs(60)).unwrap());
    }
    let sent = Instant::now();
    assert!(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let status = child.wait().unwrap();
    log.extend(rx.iter());
    let log = log.join("\n");
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("stopped during start"), "{log}");
    assert!(
        !log.contains("keyturn ready"),
        "it finished the start first:\n{log}"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(30),
        "{:?}",
        sent.elapsed()
    );
    // The next start makes the keys still missing and serves.
    let d = Daemon::spawn(path, &[]);
    for i in 0..3 {
        let set = jwks(&d, &format!("rsa{i}")).await;
        assert!(!kids(&set).is_empty(), "rsa{i}: {set}");
    }
}

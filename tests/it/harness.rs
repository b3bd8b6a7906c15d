//! Runs the real `keyturn` binary on loopback ports chosen by the kernel.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running daemon, stopped (SIGKILL) when dropped.
#[allow(dead_code)] // Not every test binary module reads every field.
pub struct Daemon {
    pub child: Child,
    /// `http://127.0.0.1:PORT` of the JWKS listener.
    pub jwks: String,
    /// `http://127.0.0.1:PORT` of the API listener.
    pub api: String,
    /// Every log line so far (JSON).
    pub logs: Arc<Mutex<Vec<String>>>,
    pub config_path: PathBuf,
}

/// A fresh private directory.
/// The repository's root, read when the test runs rather than when it is built: cargo
/// reuses a test binary built from another checkout that shares CARGO_TARGET_DIR, and
/// `env!` would then point into that checkout.
pub fn repo_dir() -> PathBuf {
    PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"))
}

pub fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

/// Writes a 0600 file.
pub fn write_secret(path: &Path, contents: impl AsRef<[u8]>) {
    std::fs::write(path, contents).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}

/// The `[server]` table for a daemon in `dir` on kernel-chosen ports.
pub fn server_toml(dir: &Path) -> String {
    format!(
        "[server]\njwks_listen = \"127.0.0.1:0\"\napi_listen = \"127.0.0.1:0\"\ndata_dir = \"{}\"\n",
        dir.join("data").display()
    )
}

impl Daemon {
    /// Starts `keyturn serve` with `config` (TOML) written to `dir/keyturn.toml`.
    pub fn start(dir: &Path, config: &str) -> Daemon {
        Self::start_with_env(dir, config, &[])
    }

    /// As [`Daemon::start`], with extra environment variables.
    pub fn start_with_env(dir: &Path, config: &str, env: &[(&str, &str)]) -> Daemon {
        let config_path = dir.join("keyturn.toml");
        std::fs::write(&config_path, config).unwrap();
        Self::spawn(config_path, env)
    }

    /// Starts the binary on an existing config file and waits until it is ready.
    pub fn spawn(config_path: PathBuf, env: &[(&str, &str)]) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_keyturn"));
        cmd.args(["serve", "--log-format", "json", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET");
        for (k, v) in env {
            cmd.env(k, v);
        }
        Self::launch(cmd, config_path)
    }

    /// Runs `keyturn serve` on `config_path`, which must refuse to start: returns its log.
    #[allow(dead_code)]
    pub fn refused(config_path: &Path) -> String {
        let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
            .args(["serve", "--config"])
            .arg(config_path)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "started: {log}");
        log
    }

    /// Runs `cmd` (a `keyturn serve --log-format json` however wrapped), collects its log
    /// lines, and waits (bounded) for the "ready" line, which names the listeners.
    pub fn launch(mut cmd: Command, config_path: PathBuf) -> Daemon {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap();
        let stderr = child.stderr.take().unwrap();
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let ready = line.contains("keyturn ready");
                // Into the log before the start returns: a test may read the ready line.
                sink.lock().unwrap().push(line.clone());
                if ready {
                    let _ = tx.send(line);
                }
            }
        });
        let Ok(ready) = rx.recv_timeout(Duration::from_secs(60)) else {
            let _ = child.kill();
            panic!(
                "daemon did not become ready; log:\n{}",
                logs.lock().unwrap().join("\n")
            );
        };
        let v: serde_json::Value = serde_json::from_str(&ready).unwrap();
        Daemon {
            child,
            jwks: format!("http://{}", v["jwks"].as_str().unwrap()),
            api: format!("http://{}", v["api"].as_str().unwrap()),
            logs,
            config_path,
        }
    }

    /// Sends a signal by name (TERM, HUP, KILL).
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// SIGTERM, then waits (bounded) for the exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "daemon did not stop within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log so far.
    #[allow(dead_code)]
    pub fn log_text(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `cond` every 20 ms until it holds or `timeout` passes: waiting for an observable
/// effect, never a fixed sleep.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An HTTP client for tests.
pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// Signs through the API; returns (status, body).
pub async fn sign(
    d: &Daemon,
    keyset: &str,
    token: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    post(d, token, &format!("/v1/keysets/{keyset}/sign"), &body).await
}

/// `POST {path}` on the API with a JSON body; returns (status, body).
pub async fn post(
    d: &Daemon,
    token: &str,
    path: &str,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = http()
        .post(format!("{}{path}", d.api))
        .bearer_auth(token)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The JWKS of `keyset`.
pub async fn jwks(d: &Daemon, keyset: &str) -> serde_json::Value {
    http()
        .get(format!("{}/keysets/{keyset}/jwks.json", d.jwks))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The kids in a JWKS.
pub fn kids(jwks: &serde_json::Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap().to_owned())
        .collect()
}

/// An admin call; returns (status, body).
pub async fn admin(
    d: &Daemon,
    token: &str,
    method: reqwest::Method,
    path: &str,
) -> (u16, serde_json::Value) {
    let r = http()
        .request(method, format!("{}{path}", d.api))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// The admin view of `keyset` (`GET /v1/keysets/{keyset}`).
pub async fn keyset_view(d: &Daemon, token: &str, keyset: &str) -> serde_json::Value {
    let (status, view) = admin(
        d,
        token,
        reqwest::Method::GET,
        &format!("/v1/keysets/{keyset}"),
    )
    .await;
    assert_eq!(status, 200, "{view}");
    view
}

/// An admin rotation of `keyset`; returns (status, body).
pub async fn rotate(d: &Daemon, token: &str, keyset: &str) -> (u16, serde_json::Value) {
    admin(
        d,
        token,
        reqwest::Method::POST,
        &format!("/v1/keysets/{keyset}/rotate"),
    )
    .await
}

/// A `[[client]]` with a bearer token: (toml, token).
pub fn token_client(name: &str, keysets: &[&str], extra: &str) -> (String, String) {
    let token = format!("tok-{name}-0123456789abcdef");
    let hash: String = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes())
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let list = keysets
        .iter()
        .map(|k| format!("{k:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    (format!("[[client]]\nname = \"{name}\"\ntoken_sha256 = \"{hash}\"\nkeysets = [{list}]\n{extra}\n"), token)
}

/// A `[[keyset]]` on the file backend.
pub fn keyset_toml(name: &str, alg: &str, extra: &str) -> String {
    format!(
        "[[keyset]]\nname = \"{name}\"\nissuer = \"https://issuer.test/{name}\"\nalgorithm = \"{alg}\"\nrotate_every = \"1h\"\nmax_token_ttl = \"10m\"\njwks_max_age = \"1s\"\nclock_skew = \"0s\"\n{extra}\n"
    )
}

/// `GET {path}` on the JWKS listener: (status, headers, body).
#[allow(dead_code)]
pub async fn get_public(d: &Daemon, path: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let r = http()
        .get(format!("{}{path}", d.jwks))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    (status, headers, r.bytes().await.unwrap().to_vec())
}

/// The status of `GET /readyz`.
#[allow(dead_code)]
pub async fn readyz(d: &Daemon) -> u16 {
    get_public(d, "/readyz").await.0
}

/// One field (`kid`, `jti`, ...) of every audit line of `event` (e.g. "published", "sign")
/// for `keyset` in the audit log at `path`, in order. A torn last line (a daemon killed
/// mid-write) is skipped.
pub fn audit_field(path: &Path, event: &str, keyset: &str, field: &str) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == event && v["keyset"] == keyset)
        .filter_map(|v| v[field].as_str().map(str::to_owned))
        .collect()
}

/// The body of `GET url`, whatever its status.
pub async fn get_text(url: &str) -> String {
    http().get(url).send().await.unwrap().text().await.unwrap()
}

/// The text of the JWKS listener's `/metrics`.
pub async fn metrics_text(d: &Daemon) -> String {
    get_text(&format!("{}/metrics", d.jwks)).await
}

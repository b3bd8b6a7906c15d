//! A real OpenBao server (the open-source Vault fork, same HTTP API) for tests.
//!
//! ```text
//! let Some(bao) = OpenBao::start() else { return };   // SKIPPED notice printed already
//! bao.enable_transit("transit");
//! let token = bao.create_token(&["keyturn"], "1h");
//! ```
//!
//! [`OpenBao::start`] runs a dev server: in memory, unsealed, root token `root`, KV v2 at
//! `secret/`. [`OpenBao::start_persistent`] runs a real server with integrated (raft) storage in a
//! directory of the caller's, initialised and unsealed by the launcher, so that a test can
//! stop it and start it again on the same address with its keys and state intact.
//!
//! The helpers talk plain HTTP/1.0 over `std::net` with the root token, so tests need no
//! HTTP client of their own; they panic on any unexpected answer (this is test code).

use super::{find_binary, free_port, ServerProcess};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a server may take to answer its first request.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running OpenBao server, killed when dropped.
pub struct OpenBao {
    /// The server process; `process.address` is the server's address.
    pub process: ServerProcess,
    /// A root token.
    pub root_token: String,
    log: PathBuf,
}

impl Drop for OpenBao {
    fn drop(&mut self) {
        // A persistent server's log lives in its directory and is kept for post-mortems.
        if self.log.starts_with(std::env::temp_dir()) {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

impl OpenBao {
    /// Starts a dev server (in memory) on a free loopback port. `None` when the binary is
    /// missing outside CI (after a loud notice); a panic under CI.
    pub fn start() -> Option<OpenBao> {
        Self::start_dev(None)
    }

    /// Starts a dev server speaking TLS, with a CA, certificate (for 127.0.0.1) and key
    /// written to `cert_dir` (`vault-ca.pem` is the CA to trust). The address is
    /// `https://127.0.0.1:<port>`. The helpers of this type speak plain HTTP and do not work
    /// with this server; it is for testing TLS clients (KV v2 is at `secret/`).
    pub fn start_tls(cert_dir: &Path) -> Option<OpenBao> {
        Self::start_dev(Some(cert_dir))
    }

    fn start_dev(tls_dir: Option<&Path>) -> Option<OpenBao> {
        let bin = find_binary("KEYTURN_BAO_BIN", "OpenBao")?;
        // A dev server also listens on port+1 (cluster traffic), which a parallel test may
        // grab between our check and its bind: try a few ports before giving up.
        let mut last_log = String::new();
        for _ in 0..5 {
            let port = free_port_pair();
            let log = std::env::temp_dir().join(format!("keyturn-openbao-{port}.log"));
            let mut command = Command::new(&bin);
            command.args([
                "server",
                "-dev",
                "-dev-no-store-token",
                &format!("-dev-listen-address=127.0.0.1:{port}"),
            ]);
            if let Some(dir) = tls_dir {
                command.args(["-dev-tls", &format!("-dev-tls-cert-dir={}", dir.display())]);
            }
            let child = command
                .env("BAO_DEV_ROOT_TOKEN_ID", "root")
                .stdin(Stdio::null())
                .stdout(log_file(&log))
                .stderr(log_file(&log))
                .spawn()
                .expect("cannot run the OpenBao binary");
            let scheme = if tls_dir.is_some() { "https" } else { "http" };
            let mut bao = OpenBao {
                process: ServerProcess {
                    child,
                    address: format!("{scheme}://127.0.0.1:{port}"),
                    port,
                },
                root_token: "root".to_owned(),
                log,
            };
            // Over TLS our plain HTTP probe gets a 400 ("HTTP request to an HTTPS server")
            // once the listener is up.
            let up = if tls_dir.is_some() { 400 } else { 200 };
            if bao.wait_until(|status| status == up) {
                return Some(bao);
            }
            last_log = bao.log_tail();
        }
        panic!("OpenBao dev server did not start; last log:\n{last_log}");
    }

    /// Starts a server with integrated (raft) storage under `dir` (created if needed), initialising it on
    /// first use and unsealing it every time. The unseal key and root token are kept in
    /// `dir/init.json`, the port in `dir/port`, so a second call on the same directory (after
    /// this server was dropped or [`OpenBao::stop`]ped) comes back on the same address with
    /// the same data. Mounts are not created here: call [`OpenBao::enable_transit`] and
    /// [`OpenBao::enable_kv2`] (both idempotent).
    pub fn start_persistent(dir: &Path) -> Option<OpenBao> {
        let bin = find_binary("KEYTURN_BAO_BIN", "OpenBao")?;
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let port_file = dir.join("port");
        let port = match std::fs::read_to_string(&port_file) {
            Ok(p) => p.trim().parse().unwrap(),
            Err(_) => {
                let port = free_port_pair();
                std::fs::write(&port_file, port.to_string()).unwrap();
                port
            }
        };
        let config = dir.join("bao.hcl");
        std::fs::write(
            &config,
            format!(
                "storage \"raft\" {{\n  path = {data:?}\n  node_id = \"keyturn-test\"\n}}\n\
                 listener \"tcp\" {{\n  address = \"127.0.0.1:{port}\"\n  \
                 cluster_address = \"127.0.0.1:{cluster}\"\n  tls_disable = true\n}}\n\
                 api_addr = \"http://127.0.0.1:{port}\"\n\
                 cluster_addr = \"http://127.0.0.1:{cluster}\"\n",
                data = dir.join("data").display().to_string(),
                cluster = port + 1,
            ),
        )
        .unwrap();
        let log = dir.join("bao.log");
        let child = Command::new(&bin)
            .args(["server", &format!("-config={}", config.display())])
            .stdin(Stdio::null())
            .stdout(log_file(&log))
            .stderr(log_file(&log))
            .spawn()
            .expect("cannot run the OpenBao binary");
        let mut bao = OpenBao {
            process: ServerProcess {
                child,
                address: format!("http://127.0.0.1:{port}"),
                port,
            },
            root_token: String::new(),
            log,
        };
        // Any HTTP answer will do here: 501 uninitialised, 503 sealed.
        if !bao.wait_until(|_| true) {
            panic!(
                "OpenBao did not start on port {port}; log:\n{}",
                bao.log_tail()
            );
        }
        let init_file = dir.join("init.json");
        let init: Value = match std::fs::read(&init_file) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap(),
            Err(_) => {
                let init = bao.call(
                    "PUT",
                    "sys/init",
                    Some(json!({"secret_shares": 1, "secret_threshold": 1})),
                );
                std::fs::write(&init_file, init.to_string()).unwrap();
                init
            }
        };
        bao.root_token = init["root_token"].as_str().unwrap().to_owned();
        let key = init["keys_base64"][0].as_str().unwrap();
        bao.call("PUT", "sys/unseal", Some(json!({ "key": key })));
        if !bao.wait_until(|status| status == 200) {
            panic!("OpenBao did not unseal; log:\n{}", bao.log_tail());
        }
        Some(bao)
    }

    /// `http://127.0.0.1:<port>` (`https` for [`OpenBao::start_tls`]), the address to give
    /// a Vault client.
    pub fn address(&self) -> &str {
        &self.process.address
    }

    /// Kills the server (a Vault outage, or the first half of a restart).
    pub fn stop(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
    }

    /// One API call with the root token: `(status, body)`; the body is `Null` when empty.
    /// `path` is below `/v1/`. Panics only when the server cannot be reached.
    pub fn request(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(
            self.process.port,
            method,
            path,
            Some(&self.root_token),
            body.as_ref(),
        )
        .unwrap_or_else(|e| panic!("OpenBao {method} {path}: {e}"))
    }

    /// Like [`OpenBao::request`], but panics unless the answer is 2xx; returns the body.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.request(method, path, body);
        assert!(
            (200..300).contains(&status),
            "OpenBao {method} {path} answered {status}: {answer}"
        );
        answer
    }

    /// Mounts the transit engine at `mount` unless something is mounted there already.
    pub fn enable_transit(&self, mount: &str) {
        self.enable_engine(mount, json!({"type": "transit"}));
    }

    /// Mounts a KV v2 engine at `mount` unless something is mounted there already (a dev
    /// server has one at `secret`).
    pub fn enable_kv2(&self, mount: &str) {
        self.enable_engine(mount, json!({"type": "kv", "options": {"version": "2"}}));
    }

    fn enable_engine(&self, mount: &str, body: Value) {
        let (status, _) = self.request("GET", &format!("sys/mounts/{mount}"), None);
        if status != 200 {
            self.call("POST", &format!("sys/mounts/{mount}"), Some(body));
        }
        // A new KV v2 mount upgrades itself in the background; writes fail until it is done.
        if self.request("GET", &format!("sys/mounts/{mount}"), None).1["data"]["type"] == "kv" {
            let deadline = Instant::now() + START_TIMEOUT;
            while self.request("GET", &format!("{mount}/config"), None).0 != 200 {
                assert!(
                    Instant::now() < deadline,
                    "KV mount {mount} never got ready"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Writes the ACL policy `name` (HCL text).
    pub fn put_policy(&self, name: &str, hcl: &str) {
        self.call(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        );
    }

    /// A new renewable service token with `policies`, valid for `ttl` (e.g. `"1h"`, `"3s"`).
    pub fn create_token(&self, policies: &[&str], ttl: &str) -> String {
        let answer = self.call(
            "POST",
            "auth/token/create",
            Some(json!({"policies": policies, "ttl": ttl, "renewable": true})),
        );
        answer["auth"]["client_token"].as_str().unwrap().to_owned()
    }

    /// Looks a token up with the root token: the `data` of `auth/token/lookup`
    /// (`ttl`, `last_renewal_time`, ...), or `None` when the token is invalid or expired.
    pub fn lookup_token(&self, token: &str) -> Option<Value> {
        let (status, answer) =
            self.request("POST", "auth/token/lookup", Some(json!({ "token": token })));
        (status == 200).then(|| answer["data"].clone())
    }

    /// Accessors of every live token (root's included).
    pub fn token_accessors(&self) -> Vec<String> {
        let answer = self.call("LIST", "auth/token/accessors", None);
        answer["data"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k.as_str().unwrap().to_owned())
            .collect()
    }

    /// Like [`OpenBao::lookup_token`], by accessor.
    pub fn lookup_accessor(&self, accessor: &str) -> Option<Value> {
        let (status, answer) = self.request(
            "POST",
            "auth/token/lookup-accessor",
            Some(json!({ "accessor": accessor })),
        );
        (status == 200).then(|| answer["data"].clone())
    }

    /// Enables AppRole (if needed) and creates `role` with `policies` and token TTLs
    /// (e.g. `"1h"`); returns `(role_id, secret_id)`.
    pub fn create_approle(
        &self,
        role: &str,
        policies: &[&str],
        token_ttl: &str,
        token_max_ttl: &str,
    ) -> (String, String) {
        let (status, _) = self.request("GET", "sys/auth/approle", None);
        if status != 200 {
            self.call("POST", "sys/auth/approle", Some(json!({"type": "approle"})));
        }
        self.call(
            "POST",
            &format!("auth/approle/role/{role}"),
            Some(json!({
                "token_policies": policies,
                "token_ttl": token_ttl,
                "token_max_ttl": token_max_ttl,
            })),
        );
        let role_id = self.call("GET", &format!("auth/approle/role/{role}/role-id"), None)["data"]
            ["role_id"]
            .as_str()
            .unwrap()
            .to_owned();
        let secret_id = self.call("POST", &format!("auth/approle/role/{role}/secret-id"), None)
            ["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_owned();
        (role_id, secret_id)
    }

    /// Polls `sys/health` until `ok(status)` holds; false if the process exits or the
    /// server does not answer in time.
    fn wait_until(&mut self, ok: impl Fn(u16) -> bool) -> bool {
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.process.child.try_wait() {
                return false;
            }
            if let Ok((status, _)) = http(self.process.port, "GET", "sys/health", None, None) {
                if ok(status) {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let start = log.len().saturating_sub(4000);
        log.get(start..).unwrap_or(&log).to_owned()
    }
}

fn log_file(path: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap()
}

/// A free port whose successor is free too (OpenBao's cluster listener takes port+1).
fn free_port_pair() -> u16 {
    loop {
        let port = free_port();
        if port < u16::MAX && std::net::TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

/// A minimal HTTP/1.0 exchange: the server closes the connection after the answer, so the
/// body is everything after the headers (no chunking in HTTP/1.0).
fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let body = body.map(Value::to_string).unwrap_or_default();
    let mut request = format!(
        "{method} /v1/{path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(token) = token {
        request.push_str(&format!("X-Vault-Token: {token}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    stream.write_all(request.as_bytes())?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer)?;
    let answer = String::from_utf8_lossy(&answer);
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP answer");
    let (head, body) = answer.split_once("\r\n\r\n").ok_or_else(bad)?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let body = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or(Value::String(body.to_owned()))
    };
    Ok((status, body))
}

//! Headless Chromium (Debian's `chromium` package), driven over the DevTools protocol, and
//! the other Debian tools the tests use. A missing tool fails the test under CI with the
//! install step named; outside CI the test says loudly that it skipped.

use futures_util::{SinkExt, StreamExt};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::Message;

/// `name` on the PATH, from the Debian package `package`. `None` (after a loud notice)
/// when it is missing outside CI; a panic naming the install step under CI.
pub fn debian_tool(name: &str, package: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_some() {
        return found;
    }
    let msg = format!(
        "{name} not found on the PATH: install Debian's `{package}` package (`apt-get install \
         {package}`; scripts/test.sh does it through scripts/test-env.sh)"
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED (not under CI): {msg}");
    None
}

/// Where tests keep what they make for people to look at (screenshots): under the target
/// directory, beside the binaries.
pub fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_keyturn"))
        .parent()
        .unwrap()
        .join("artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether this run should refresh the pictures in docs/ (`KEYTURN_UPDATE_DOCS=1`).
pub fn update_docs() -> bool {
    std::env::var_os("KEYTURN_UPDATE_DOCS").is_some_and(|v| v == "1")
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// One headless Chromium with one page, killed when dropped.
pub struct Browser {
    child: Child,
    socket: Socket,
    session: String,
    next_id: u64,
    _profile: tempfile::TempDir,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    /// Starts Chromium (None when it is not installed, outside CI) with a page of
    /// `width` x `height` CSS pixels showing `url`.
    pub async fn open(url: &str, width: u32, height: u32) -> Option<Browser> {
        let chromium = debian_tool("chromium", "chromium")?;
        let profile = tempfile::tempdir().unwrap();
        let child = Command::new(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--hide-scrollbars",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                &format!("--window-size={width},{height}"),
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Chromium names its DevTools port and path in this file once it listens.
        let active = profile.path().join("DevToolsActivePort");
        let deadline = Instant::now() + Duration::from_secs(60);
        let endpoint = loop {
            let text = std::fs::read_to_string(&active).unwrap_or_default();
            if let Some((port, path)) = text.split_once('\n').filter(|(_, p)| !p.is_empty()) {
                break format!("ws://127.0.0.1:{port}{}", path.trim());
            }
            assert!(
                Instant::now() < deadline,
                "chromium did not open its DevTools port"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (socket, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .unwrap();
        let mut browser = Browser {
            child,
            socket,
            session: String::new(),
            next_id: 0,
            _profile: profile,
        };
        let target = browser
            .call(
                "Target.createTarget",
                serde_json::json!({"url": "about:blank"}),
            )
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                serde_json::json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_owned();
        // Every page records what its Content-Security-Policy blocked (see `blocked`).
        browser
            .call(
                "Page.addScriptToEvaluateOnNewDocument",
                serde_json::json!({"source": "window.cspBlocked = []; \
                    document.addEventListener('securitypolicyviolation', \
                    e => window.cspBlocked.push(e.violatedDirective + ' ' + e.blockedURI));"}),
            )
            .await;
        browser.navigate(url).await;
        Some(browser)
    }

    /// Loads `url` in the page.
    pub async fn navigate(&mut self, url: &str) {
        let r = self
            .call("Page.navigate", serde_json::json!({"url": url}))
            .await;
        assert!(r["errorText"].is_null(), "{url}: {r}");
    }

    /// What the page's Content-Security-Policy blocked so far.
    pub async fn blocked(&mut self) -> Vec<String> {
        serde_json::from_value(self.eval("window.cspBlocked || []").await).unwrap()
    }

    /// Sends a DevTools command (to the page, once attached) and returns its result.
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = serde_json::json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            message["sessionId"] = self.session.clone().into();
        }
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(message) = self.socket.next().await {
                let Message::Text(text) = message.unwrap() else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_str(&text).unwrap();
                // Events carry no id; answers to other commands are not awaited here.
                if v["id"] == id {
                    return v;
                }
            }
            panic!("chromium closed the DevTools connection");
        })
        .await
        .unwrap_or_else(|_| panic!("chromium did not answer {method}"));
        assert!(answer["error"].is_null(), "{method}: {answer}");
        answer["result"].clone()
    }

    /// The value of a JavaScript expression in the page (promises awaited).
    pub async fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({"expression": expression, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(r["exceptionDetails"].is_null(), "{expression}: {r}");
        r["result"]["value"].clone()
    }

    /// Waits (bounded) until `expression` is true in the page.
    pub async fn wait_for(&mut self, expression: &str, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(expression).await == serde_json::Value::Bool(true) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({expression})"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A PNG of the whole page (beyond the window's height too), written to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        use base64::Engine as _;
        let height = self
            .eval("document.documentElement.scrollHeight")
            .await
            .as_f64()
            .unwrap();
        let width = self
            .eval("document.documentElement.scrollWidth")
            .await
            .as_f64()
            .unwrap();
        let shot = self
            .call(
                "Page.captureScreenshot",
                serde_json::json!({
                    "format": "png",
                    "captureBeyondViewport": true,
                    "clip": {"x": 0, "y": 0, "width": width, "height": height, "scale": 1},
                }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }
}

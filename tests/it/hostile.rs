//! Hostile input on both listeners: oversize and slow requests, connection floods, odd
//! paths and methods. Each gets a clear 4xx or a closed connection, never a panic, never a
//! changed state.

use crate::harness::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

fn config(dir: &std::path::Path, extra_server: &str) -> (String, String) {
    let (client, token) = token_client("svc", &["default"], "audiences = [\"orders\"]");
    (
        format!(
            "{}{extra_server}\n{}{client}",
            server_toml(dir),
            keyset_toml("default", "ES256", "")
        ),
        token,
    )
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Sends raw bytes; returns whatever comes back before the server closes (or `limit`).
fn raw(addr: &str, bytes: &[u8], limit: Duration) -> (String, Duration) {
    let started = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    let _ = s.write_all(bytes);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    (
        String::from_utf8_lossy(&out).into_owned(),
        started.elapsed(),
    )
}

fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

async fn snapshot(d: &Daemon) -> String {
    get_text(&format!("{}/keysets/default/jwks.json", d.jwks)).await
}

#[tokio::test]
async fn oversize_odd_and_unknown_requests_are_refused_on_both_listeners() {
    let dir = private_dir();
    let (config, token) = config(dir.path(), "");
    let d = Daemon::start(dir.path(), &config);
    let before = snapshot(&d).await;
    for base in [d.jwks.clone(), d.api.clone()] {
        let a = addr(&base);
        // A 100 KiB header: refused (431) or the connection closed.
        let big = format!(
            "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(100 * 1024)
        );
        let (resp, _) = raw(&a, big.as_bytes(), Duration::from_secs(10));
        assert!(
            resp.is_empty() || status_of(&resp) == 431,
            "{base}: {}",
            &resp[..resp.len().min(80)]
        );
        // Garbage instead of HTTP.
        let (resp, _) = raw(
            &a,
            b"\x16\x03\x01\x02\x00GARBAGE\r\n\r\n",
            Duration::from_secs(10),
        );
        assert!(resp.is_empty() || status_of(&resp) == 400, "{base}: {resp}");
        // Odd characters, traversal, huge names, in key set names and kids.
        let long = "k".repeat(10_000);
        for path in [
            "/keysets/..%2F..%2Fetc%2Fpasswd/jwks.json".to_owned(),
            "/keysets/%00/jwks.json".to_owned(),
            "/keysets/%ff%fe/jwks.json".to_owned(),
            "/keysets/default/jwks/..%2F..%2Fkek".to_owned(),
            "/keysets/d%C3%A9fault/jwks.json".to_owned(),
            format!("/keysets/{long}/jwks.json"),
            "/v1/keysets/..%2Fdefault/sign".to_owned(),
            "/v1/keysets/default/keys/%2e%2e/revoke".to_owned(),
            format!("/v1/keysets/{long}/sign"),
        ] {
            let r = http()
                .get(format!("{base}{path}"))
                .bearer_auth(&token)
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            let shown = &path[..path.len().min(60)];
            assert!((400..500).contains(&s), "{base}{shown}: {s}");
            // Every refusal is a JSON error with a code, whatever refused it.
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert!(
                body["error"]["code"].is_string(),
                "{base}{shown}: {s} {body}"
            );
        }
        // Unknown methods.
        for method in ["PUT", "DELETE", "PATCH", "TRACE", "FOO"] {
            let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
            let r = http()
                .request(m, format!("{base}/v1/keysets/default/sign"))
                .send()
                .await
                .unwrap();
            let s = r.status().as_u16();
            assert!((400..500).contains(&s), "{method} on {base}: {s}");
            let allow = r.headers().get("allow").cloned();
            let body: serde_json::Value = r.json().await.unwrap_or_default();
            assert!(
                body["error"]["code"].is_string(),
                "{method} on {base}: {s} {body}"
            );
            if s == 405 {
                assert!(allow.is_some(), "{method} on {base}: 405 without Allow");
            }
        }
    }
    // Nothing changed, nothing was signed, nothing panicked.
    assert_eq!(snapshot(&d).await, before);
    let (status, _) = sign(&d, "default", &token, json!({"claims": {"aud": "orders"}})).await;
    assert_eq!(status, 200, "the daemon still signs");
    assert!(!d.log_text().contains("panicked"), "{}", d.log_text());
    let mut d = d;
    assert!(d.child.try_wait().unwrap().is_none(), "the daemon died");
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let dir = private_dir();
    let (config, token) = config(dir.path(), "header_timeout = \"1s\"\nbody_timeout = \"1s\"");
    let d = Daemon::start(dir.path(), &config);
    for base in [&d.jwks, &d.api] {
        // Slowloris: headers that never end. The server closes within about a second.
        let (resp, took) = raw(
            &addr(base),
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n",
            Duration::from_secs(15),
        );
        assert!(
            took < Duration::from_secs(10),
            "{base}: held open for {took:?}"
        );
        assert!(resp.is_empty() || status_of(&resp) == 408, "{base}: {resp}");
    }
    // A body that never finishes: 408 with a JSON error, and no signature.
    let head = format!(
        "POST /v1/keysets/default/sign HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"claims\""
    );
    let (resp, took) = raw(&addr(&d.api), head.as_bytes(), Duration::from_secs(15));
    assert_eq!(status_of(&resp), 408, "{resp}");
    assert!(resp.contains("body_timeout"), "{resp}");
    assert!(took < Duration::from_secs(10));
}

/// Connections that never send a request (not a byte, or only the HTTP/2 preface) are
/// closed at the header timeout, so they cannot hold a listener's connection limit.
#[tokio::test]
async fn silent_connections_are_closed_at_the_header_timeout() {
    let dir = private_dir();
    let (config, token) = config(dir.path(), "max_connections = 4\nheader_timeout = \"1s\"");
    let d = Daemon::start(dir.path(), &config);
    for base in [&d.jwks, &d.api] {
        let silent: Vec<TcpStream> = (0..4)
            .map(|_| TcpStream::connect(addr(base)).unwrap())
            .collect();
        // And an HTTP/2 client that sends the preface and nothing more (hyper's header
        // timer is HTTP/1's only).
        let mut h2 = TcpStream::connect(addr(base)).unwrap();
        h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
        // And one that makes a request (GET /healthz, HTTP/2 prior knowledge) and then
        // stays idle: HTTP/2 has no header timeout between requests.
        let mut h2_idle = TcpStream::connect(addr(base)).unwrap();
        let mut frames = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        frames.extend([0, 0, 0, 4, 0, 0, 0, 0, 0]); // SETTINGS, empty
                                                    // HPACK: GET, http, :path "/healthz", :authority "x".
        let mut block = vec![0x82, 0x86, 0x44, 8];
        block.extend(b"/healthz");
        block.extend([0x41, 1, b'x']);
        // HEADERS, END_STREAM | END_HEADERS, stream 1.
        frames.extend([0, 0, block.len() as u8, 1, 5, 0, 0, 0, 1]);
        frames.extend(block);
        h2_idle.write_all(&frames).unwrap();
        for mut s in silent.into_iter().chain([h2, h2_idle]) {
            // Long enough for the old behaviour (never closed) to fail here, not hang.
            s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            // The server's HTTP/2 SETTINGS may come first; then the close.
            match s.read_to_end(&mut Vec::new()) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
                other => panic!("{base}: an idle connection got {other:?}, not a close"),
            }
        }
    }
    let (status, body) = sign(&d, "default", &token, json!({"claims": {"aud": "orders"}})).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn a_flooded_api_listener_does_not_starve_the_jwks_listener() {
    let dir = private_dir();
    let (config, token) = config(dir.path(), "max_connections = 8\nheader_timeout = \"2s\"");
    let d = Daemon::start(dir.path(), &config);
    // Eight idle connections use up the API listener's connection limit...
    let api = addr(&d.api);
    let hogs: Vec<TcpStream> = (0..8)
        .map(|_| {
            let mut s = TcpStream::connect(&api).unwrap();
            s.write_all(b"POST /v1/keysets/default/sign HTTP/1.1\r\n")
                .unwrap();
            s
        })
        .collect();
    // ...while the JWKS listener keeps serving, many times over.
    for _ in 0..50 {
        let r = http()
            .get(format!("{}/.well-known/jwks.json", d.jwks))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Once the hogs are cut off by the header timeout, the API serves again.
    eventually(Duration::from_secs(20), "the API serves again", || {
        let (d, token) = (&d, &token);
        async move {
            sign(d, "default", token, json!({"claims": {"aud": "orders"}}))
                .await
                .0
                == 200
        }
    })
    .await;
    drop(hogs);
}

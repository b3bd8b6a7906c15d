//! The console (`console_listen`): read-only, same-origin only, and in a real browser it
//! shows every published key, the active key and the next event, and follows a rotation
//! without a reload. `keyturn plan --svg` draws the same timeline as a standalone file.

use crate::browser::{artifacts, update_docs, Browser};
use crate::harness::*;
use std::time::Duration;

/// A daemon with the console on, two key sets, a signing client and an admin client.
/// Returns the daemon, the console's URL, the admin token and the signer's token.
fn start(dir: &std::path::Path) -> (Daemon, String, String, String) {
    let (admin, admin_token) =
        token_client("ops-console-test", &["default", "payments"], "admin = true");
    let (signer, signer_token) = token_client(
        "issuer-console-test",
        &["default", "payments"],
        "audiences = [\"orders-console-test\"]\nsubject_pattern = \"*\"",
    );
    let config = format!(
        "{}console_listen = \"127.0.0.1:0\"\n{}{}{admin}{signer}",
        server_toml(dir),
        keyset_toml("default", "ES256", ""),
        keyset_toml("payments", "EdDSA", ""),
    );
    let d = Daemon::start(dir, &config);
    let ready = d
        .log_text()
        .lines()
        .find(|l| l.contains("keyturn ready"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .unwrap();
    let console = format!("http://{}", ready["console"].as_str().unwrap());
    (d, console, admin_token, signer_token)
}

/// `t` as the console writes dates: `2025-03-01 14:05:00 UTC`.
fn utc(t: i64) -> String {
    chrono::DateTime::from_timestamp(t, 0)
        .unwrap()
        .format("%Y-%m-%d %H:%M:%S UTC")
        .to_string()
}

/// A JavaScript string literal.
fn js(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// The text of `selector` inside the key set's panel.
fn text_of(keyset: &str, selector: &str) -> String {
    format!(
        "(document.querySelector('section[data-keyset={}] {selector}') || {{}}).textContent",
        js(keyset)
    )
}

/// Every published kid, the active kid and the next event of each key set are on the
/// page; a rotation through the API shows up in the same page, which is never reloaded;
/// the sparkline shows the signatures; nothing is blocked by the page's CSP.
#[tokio::test]
async fn the_console_shows_the_keys_and_follows_a_rotation_without_a_reload() {
    let dir = private_dir();
    let (d, console, admin_token, signer_token) = start(dir.path());
    let Some(mut page) = Browser::open(&format!("{console}/"), 1440, 900).await else {
        return;
    };
    page.wait_for(
        "document.querySelectorAll('svg.timeline').length === 2",
        Duration::from_secs(30),
        "the timelines of both key sets",
    )
    .await;
    // The script has taken over: it refreshes the panels in place.
    page.wait_for(
        "document.getElementById('status').textContent === 'live'",
        Duration::from_secs(30),
        "the refresh script",
    )
    .await;
    for keyset in ["default", "payments"] {
        let view = keyset_view(&d, &admin_token, keyset).await;
        let published = kids(&jwks(&d, keyset).await);
        assert!(published.len() >= 2, "{published:?}");
        for kid in &published {
            let band = format!(
                "!!document.querySelector('section[data-keyset={}] svg.timeline g.key[data-kid={}]')",
                js(keyset),
                js(kid)
            );
            assert_eq!(page.eval(&band).await, true, "{keyset}: no band for {kid}");
            let shown = format!("{}.includes({})", text_of(keyset, "svg.timeline"), js(kid));
            assert_eq!(page.eval(&shown).await, true, "{keyset}: {kid} not written");
        }
        let active = view["active_kid"].as_str().unwrap();
        assert_eq!(page.eval(&text_of(keyset, ".active-kid")).await, active);
        let next = view["next_event"].as_i64().unwrap();
        let shown = page.eval(&text_of(keyset, ".next-event")).await;
        assert!(
            shown.as_str().unwrap().starts_with(&utc(next)),
            "{keyset}: next event {shown} is not {}",
            utc(next)
        );
    }

    // Traffic for the sparkline.
    for i in 0..20 {
        let (status, body) = sign(
            &d,
            "default",
            &signer_token,
            serde_json::json!({"claims": {"sub": format!("user-{i}"), "aud": "orders-console-test"}}),
        )
        .await;
        assert_eq!(status, 200, "{body}");
    }

    // A rotation: the pending key becomes active, a new one is published. The page shows
    // it without being loaded again (a reload would drop the mark).
    page.eval("window.keyturnMark = 'same page'").await;
    let before = keyset_view(&d, &admin_token, "default").await;
    let (status, rotated) = rotate(&d, &admin_token, "default").await;
    assert_eq!(status, 200, "{rotated}");
    let incoming = rotated["kid"].as_str().unwrap().to_owned();
    assert_ne!(Some(incoming.as_str()), before["active_kid"].as_str());
    page.wait_for(
        &format!(
            "{} === {}",
            text_of("default", ".active-kid"),
            js(&incoming)
        ),
        Duration::from_secs(60),
        "the rotated key to show as the active key",
    )
    .await;
    page.wait_for(
        &format!(
            "{}.includes('rotate-requested')",
            text_of("default", "table.events")
        ),
        Duration::from_secs(30),
        "the rotation among the lifecycle events",
    )
    .await;
    let published = kids(&jwks(&d, "default").await);
    let all_shown = format!(
        "{}.every(k => !!document.querySelector(`section[data-keyset=default] g.key[data-kid=\"${{k}}\"]`))",
        serde_json::Value::from(published.clone())
    );
    page.wait_for(
        &all_shown,
        Duration::from_secs(30),
        "every key published after the rotation",
    )
    .await;
    assert_eq!(
        page.eval("window.keyturnMark").await,
        "same page",
        "the page was reloaded"
    );

    // The signatures per second: the sampler reads the counters every 10 s.
    page.wait_for(
        &format!(
            "!!document.querySelector('section[data-keyset=default] svg.sparkline') && !{}.includes('peak 0.0/s')",
            text_of("default", ".rate")
        ),
        Duration::from_secs(60),
        "the sparkline of the signatures",
    )
    .await;
    assert_eq!(page.blocked().await, Vec::<String>::new(), "CSP blocked");

    let shot = artifacts().join("console.png");
    page.screenshot(&shot).await;
    if update_docs() {
        std::fs::copy(&shot, repo_dir().join("docs/console.png")).unwrap();
    }

    // The same picture from the CLI: a standalone SVG a browser renders as one.
    let token_file = dir.path().join("ops.token");
    write_secret(&token_file, &admin_token);
    let svg = dir.path().join("timeline.svg");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(["--api", &d.api, "plan", "--svg"])
        .arg(&svg)
        .env("KEYTURN_TOKEN_FILE", &token_file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    page.navigate(&format!("file://{}", svg.display())).await;
    page.wait_for(
        "document.documentElement.tagName === 'svg' && document.querySelectorAll('svg.timeline').length === 2",
        Duration::from_secs(30),
        "the plan's SVG, parsed as SVG",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementsByTagName('parsererror').length")
            .await,
        0
    );
    for kid in &published {
        let band = format!("!!document.querySelector('g.key[data-kid={}]')", js(kid));
        assert_eq!(page.eval(&band).await, true, "{kid} not in the plan's SVG");
    }
    page.screenshot(&artifacts().join("plan.png")).await;
}

/// GET and HEAD only; a same-origin-only policy; and nothing of a token or a caller on
/// the page, though both are in the audit log.
#[tokio::test]
async fn the_console_is_read_only_and_shows_no_token_or_caller() {
    let dir = private_dir();
    let (d, console, admin_token, signer_token) = start(dir.path());
    let (status, body) = sign(
        &d,
        "default",
        &signer_token,
        serde_json::json!({"claims": {"sub": "subject-console-test", "aud": "orders-console-test"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let jti = body["jti"].as_str().unwrap().to_owned();
    let (status, _) = rotate(&d, &admin_token, "default").await;
    assert_eq!(status, 200);
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    for secret in [
        jti.as_str(),
        "subject-console-test",
        "orders-console-test",
        "issuer-console-test",
        "ops-console-test",
    ] {
        assert!(audit.contains(secret), "{secret} not in the audit log");
    }

    let client = http();
    let mut page = String::new();
    for path in ["/", "/panels"] {
        let r = client.get(format!("{console}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers().clone();
        assert_eq!(h["content-type"], "text/html; charset=utf-8");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self';"), "{csp}");
        assert!(csp.contains("frame-ancestors 'none'"), "{csp}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert_eq!(h["cache-control"], "no-store");
        page.push_str(&r.text().await.unwrap());
    }
    assert!(page.contains("rotate-requested"), "{page}");
    // A signature's line is no lifecycle event, however little of it were shown.
    assert!(!page.contains(r#"<td class="event">sign</td>"#), "{page}");
    for secret in [
        jti.as_str(),
        "subject-console-test",
        "orders-console-test",
        "issuer-console-test",
        "ops-console-test",
    ] {
        assert!(!page.contains(secret), "{secret} is on the console");
    }
    // Everything it loads is its own: no scheme, no other host, no inline script or style.
    for attr in ["src=\"", "href=\""] {
        for target in page.split(attr).skip(1) {
            assert!(
                target.starts_with('/') && !target.starts_with("//"),
                "{attr}{target}"
            );
        }
    }
    assert!(
        !page.contains("style=") && !page.contains("<style"),
        "{page}"
    );
    assert_eq!(page.matches("<script").count(), 1);
    assert!(page.contains(r#"<script src="/console.js" defer></script>"#));

    for (path, content_type) in [
        ("/console.js", "text/javascript; charset=utf-8"),
        ("/console.css", "text/css; charset=utf-8"),
    ] {
        let r = client.get(format!("{console}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["content-type"], content_type);
        let body = r.text().await.unwrap();
        assert!(
            !body.contains("http:") && !body.contains("https:"),
            "{body}"
        );
    }

    // HEAD: the length of the page, without it.
    let r = client.head(format!("{console}/")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let length: usize = r.headers()["content-length"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(length > 1000, "{length}");
    assert!(r.bytes().await.unwrap().is_empty());

    // Every other method: 405 with Allow, a JSON error, and no change.
    let version = keyset_view(&d, &admin_token, "default").await["jwks_version"].clone();
    for method in ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"] {
        for path in ["/", "/panels", "/v1/keysets/default/rotate"] {
            let r = client
                .request(method.parse().unwrap(), format!("{console}{path}"))
                .bearer_auth(&admin_token)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 405, "{method} {path}");
            assert_eq!(r.headers()["allow"], "GET, HEAD");
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "method_not_allowed");
        }
    }
    assert_eq!(
        keyset_view(&d, &admin_token, "default").await["jwks_version"],
        version
    );
    // The API is not here.
    let r = client
        .get(format!("{console}/v1/keysets"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
}

//! Prometheus metrics on the public listener.

use crate::harness::*;
use serde_json::json;

#[tokio::test]
async fn metrics_cover_signatures_backend_calls_and_key_timing() {
    let dir = private_dir();
    let (client, token) = token_client("svc", &["default"], "audiences = [\"orders\"]");
    let d = Daemon::start(
        dir.path(),
        &format!(
            "{}{}{client}",
            server_toml(dir.path()),
            keyset_toml("default", "ES256", "")
        ),
    );
    for _ in 0..3 {
        assert_eq!(
            sign(&d, "default", &token, json!({"claims": {"aud": "orders"}}))
                .await
                .0,
            200
        );
    }
    assert_eq!(
        sign(&d, "default", &token, json!({"claims": {"aud": "nope"}}))
            .await
            .0,
        403
    );
    let r = http()
        .get(format!("{}/metrics", d.jwks))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "an OpenMetrics body: {text}");
    for needle in [
        "keyturn_signatures_total{keyset=\"default\",algorithm=\"ES256\",outcome=\"ok\"} 3",
        "keyturn_sign_duration_seconds_count{keyset=\"default\"} 3",
        "keyturn_backend_call_duration_seconds_count{backend=\"file\",op=\"store_state\"}",
        "keyturn_backend_call_duration_seconds_count{backend=\"file\",op=\"create_key\"}",
        "keyturn_active_key_age_seconds{keyset=\"default\"}",
        "keyturn_next_activation_seconds{keyset=\"default\"}",
        "keyturn_jwks_version{keyset=\"default\"}",
        "keyturn_published_keys{keyset=\"default\"} 2",
        "keyturn_backend_up{keyset=\"default\"} 1",
        "keyturn_publish_lead_unsafe{keyset=\"default\"} 0",
        "keyturn_ready{keyset=\"default\"} 1",
        "keyturn_audit_log_writable 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // A policy refusal is not a signature.
    assert!(!text.contains("outcome=\"error\""), "{text}");
    assert_eq!(text.matches("# EOF").count(), 1);
}

/// With `metrics_listen`, `/metrics` moves off the public listener (404 there) to its own.
#[tokio::test]
async fn metrics_listen_moves_metrics_off_the_public_listener() {
    let dir = private_dir();
    let config = format!(
        "{}metrics_listen = \"127.0.0.1:0\"\n{}",
        server_toml(dir.path()),
        keyset_toml("default", "ES256", "")
    );
    let d = Daemon::start(dir.path(), &config);
    let ready = d
        .log_text()
        .lines()
        .find(|l| l.contains("keyturn ready"))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .unwrap();
    let metrics = format!("http://{}", ready["metrics"].as_str().unwrap());
    let (status, _, _) = get_public(&d, "/metrics").await;
    assert_eq!(status, 404);
    assert_eq!(
        readyz(&d).await,
        200,
        "the rest stays on the public listener"
    );
    let text = get_text(&format!("{metrics}/metrics")).await;
    assert!(
        text.contains("keyturn_jwks_version{keyset=\"default\"}"),
        "{text}"
    );
    let r = http()
        .get(format!("{metrics}/.well-known/jwks.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        404,
        "documents stay on the public listener"
    );
    assert!(d.stop().success());
}

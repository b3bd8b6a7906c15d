//! The public JWKS listener: representation, caching headers, CORS, discovery, isolation.

use crate::harness::*;

fn config(dir: &std::path::Path) -> String {
    format!(
        "{}{}{}",
        server_toml(dir),
        keyset_toml("default", "ES256", ""),
        keyset_toml("other", "EdDSA", "")
    )
}

#[tokio::test]
async fn jwks_is_public_members_only_with_thumbprint_kids() {
    let dir = private_dir();
    let d = Daemon::start(dir.path(), &config(dir.path()));
    let r = http()
        .get(format!("{}/.well-known/jwks.json", d.jwks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/jwk-set+json");
    let body: serde_json::Value = r.json().await.unwrap();
    let keys = body["keys"].as_array().unwrap();
    assert_eq!(
        keys.len(),
        2,
        "active and pending keys are published: {body}"
    );
    for key in keys {
        let mut members: Vec<&str> = key
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        members.sort_unstable();
        assert_eq!(members, ["alg", "crv", "kid", "kty", "use", "x", "y"]);
        assert_eq!(key["use"], "sig");
        assert_eq!(key["alg"], "ES256");
        let jwk: keyturn_backend::Jwk = serde_json::from_value(key.clone()).unwrap();
        assert_eq!(key["kid"], jwk.thumbprint());
    }
    let other = jwks(&d, "other").await;
    for key in other["keys"].as_array().unwrap() {
        assert_eq!(key["kty"], "OKP");
        assert!(key.get("d").is_none());
    }
    // A single key by kid, and unknown names.
    let kid = keys[0]["kid"].as_str().unwrap();
    let one: serde_json::Value = http()
        .get(format!("{}/keysets/default/jwks/{kid}", d.jwks))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one, keys[0]);
    for path in [
        "/keysets/nope/jwks.json",
        "/keysets/default/jwks/nope",
        "/keysets/..%2F..%2Fetc/jwks.json",
        "/nothing",
    ] {
        let r = http()
            .get(format!("{}{path}", d.jwks))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404, "{path}");
        let e: serde_json::Value = r.json().await.unwrap();
        assert!(e["error"]["code"].is_string(), "{path}: {e}");
    }
}

#[tokio::test]
async fn caching_headers_conditional_requests_head_and_cors() {
    let dir = private_dir();
    let d = Daemon::start(dir.path(), &config(dir.path()));
    let url = format!("{}/keysets/default/jwks.json", d.jwks);
    let r = http().get(&url).send().await.unwrap();
    let etag = r.headers()["etag"].to_str().unwrap().to_owned();
    assert!(
        etag.starts_with('"') && !etag.starts_with("W/"),
        "strong ETag: {etag}"
    );
    assert_eq!(
        r.headers()["cache-control"],
        "public, max-age=1, stale-if-error=86400"
    );
    let body = r.bytes().await.unwrap();

    let r = http()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 304);
    assert_eq!(r.headers()["etag"].to_str().unwrap(), etag);
    assert!(r.bytes().await.unwrap().is_empty());
    let r = http()
        .get(&url)
        .header("if-none-match", "\"0-other\"")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // If-Modified-Since with the date it was given: 304 once the second in which the set
    // changed is over (during it, the set is dated a second early, so the client asks again).
    eventually(
        std::time::Duration::from_secs(5),
        "If-Modified-Since with the last date given gives 304",
        || {
            let url = url.clone();
            async move {
                let r = http().get(&url).send().await.unwrap();
                let date = r.headers()["last-modified"].to_str().unwrap().to_owned();
                let r = http()
                    .get(&url)
                    .header("if-modified-since", &date)
                    .send()
                    .await
                    .unwrap();
                r.status() == 304
            }
        },
    )
    .await;

    let r = http().head(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(
        r.headers()["content-length"].to_str().unwrap(),
        body.len().to_string()
    );
    assert!(r.bytes().await.unwrap().is_empty());

    let r = http()
        .get(&url)
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = http()
        .request(reqwest::Method::OPTIONS, &url)
        .header("origin", "https://app.example")
        .header("access-control-request-method", "GET")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success());
    assert!(r.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .contains("GET"));
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    // Errors are readable cross-origin too, and the caching headers are exposed to scripts.
    let r = http()
        .get(format!("{}/keysets/nope/jwks.json", d.jwks))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = http()
        .get(format!("{}/keysets/%FF/jwks.json", d.jwks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let r = http().get(&url).send().await.unwrap();
    let exposed = r.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(
        exposed.contains("etag") && exposed.contains("cache-control"),
        "{exposed}"
    );

    let disco: serde_json::Value = http()
        .get(format!(
            "{}/keysets/default/.well-known/openid-configuration",
            d.jwks
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(disco["issuer"], "https://issuer.test/default");
    assert_eq!(
        disco["jwks_uri"],
        "https://issuer.test/default/keysets/default/jwks.json"
    );
    assert_eq!(
        disco["id_token_signing_alg_values_supported"],
        serde_json::json!(["ES256"])
    );
}

/// The listener speaks HTTP/2 too (prior knowledge): HEAD answers carry the length and no
/// body on both protocols (a strict HTTP/2 client resets a HEAD stream that sends DATA).
#[tokio::test]
async fn head_and_get_over_http2() {
    let dir = private_dir();
    let d = Daemon::start(dir.path(), &config(dir.path()));
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let url = format!("{}/.well-known/jwks.json", d.jwks);
    let r = h2.get(&url).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let body = r.bytes().await.unwrap();
    assert!(!body.is_empty());
    for (path, status, length) in [
        ("/.well-known/jwks.json", 200, Some(body.len())),
        ("/keysets/nope/jwks.json", 404, None),
        ("/healthz", 200, Some(3)),
    ] {
        for client in [&h2, &http()] {
            let r = client
                .head(format!("{}{path}", d.jwks))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), status, "{path} {:?}", r.version());
            let declared: usize = r.headers()["content-length"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            if let Some(length) = length {
                assert_eq!(declared, length, "{path} {:?}", r.version());
            }
            assert!(declared > 0, "{path}");
            assert!(r.bytes().await.unwrap().is_empty(), "{path}");
        }
    }
}

#[tokio::test]
async fn the_jwks_listener_has_no_signing_or_admin_routes() {
    let dir = private_dir();
    let (client, token) = token_client("svc", &["default"], "admin = true");
    let d = Daemon::start(dir.path(), &format!("{}{client}", config(dir.path())));
    for (method, path) in [
        (reqwest::Method::POST, "/v1/keysets/default/sign"),
        (reqwest::Method::GET, "/v1/keysets"),
        (reqwest::Method::POST, "/v1/keysets/default/rotate"),
    ] {
        let r = http()
            .request(method, format!("{}{path}", d.jwks))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert!(
            r.status() == 404 || r.status() == 405,
            "{path}: {}",
            r.status()
        );
    }
    // Unknown methods on a JWKS route.
    let r = http()
        .delete(format!("{}/.well-known/jwks.json", d.jwks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD, OPTIONS");
    assert_eq!(r.headers()["access-control-allow-origin"], "*");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    // Operators' endpoints answer GET and HEAD, without CORS.
    let r = http()
        .post(format!("{}/healthz", d.jwks))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "GET, HEAD");
    assert!(r.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn version_and_etag_change_when_the_published_set_changes() {
    let dir = private_dir();
    let (client, token) = token_client("ops", &["default"], "admin = true");
    let d = Daemon::start(dir.path(), &format!("{}{client}", config(dir.path())));
    let url = format!("{}/keysets/default/jwks.json", d.jwks);
    let before = http().get(&url).send().await.unwrap();
    let etag = before.headers()["etag"].to_str().unwrap().to_owned();
    let kids_before = kids(&before.json().await.unwrap());
    let (status, body) = admin(
        &d,
        &token,
        reqwest::Method::POST,
        &format!("/v1/keysets/default/keys/{}/revoke", kids_before[0]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let after = http()
        .get(&url)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(after.status(), 200, "a changed set is not 304");
    let new_etag = after.headers()["etag"].to_str().unwrap().to_owned();
    let version = |e: &str| {
        e.trim_matches('"')
            .split('-')
            .next()
            .unwrap()
            .parse::<u64>()
            .unwrap()
    };
    assert!(version(&new_etag) > version(&etag), "{etag} -> {new_etag}");
    assert!(!kids(&after.json().await.unwrap()).contains(&kids_before[0]));
}

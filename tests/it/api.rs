//! The signing API: authentication, policy, bad input, every algorithm verified by an
//! independent library, admin routes, the audit chain, the Unix socket and mTLS.

use crate::harness::*;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use serde_json::json;
use std::time::Duration;

const ALGS: [&str; 10] = [
    "ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA",
];

fn jwt_alg(alg: &str) -> Option<jsonwebtoken::Algorithm> {
    use jsonwebtoken::Algorithm as A;
    Some(match alg {
        "ES256" => A::ES256,
        "ES384" => A::ES384,
        "RS256" => A::RS256,
        "RS384" => A::RS384,
        "RS512" => A::RS512,
        "PS256" => A::PS256,
        "PS384" => A::PS384,
        "PS512" => A::PS512,
        "EdDSA" => A::EdDSA,
        _ => return None, // jsonwebtoken 9 has no ES512; PyJWT checks it (interop test).
    })
}

/// Verifies with the `jsonwebtoken` crate against the live JWKS.
pub async fn verify_independently(
    d: &Daemon,
    keyset: &str,
    alg: &str,
    token: &str,
    aud: &str,
) -> serde_json::Value {
    let header = decode_header(token).unwrap();
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks(d, keyset).await).unwrap();
    let jwk = set
        .find(header.kid.as_deref().unwrap())
        .expect("kid published");
    let key = DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = Validation::new(jwt_alg(alg).unwrap());
    validation.set_issuer(&[format!("https://issuer.test/{keyset}")]);
    validation.set_audience(&[aud]);
    decode::<serde_json::Value>(token, &key, &validation)
        .unwrap()
        .claims
}

#[tokio::test]
async fn every_algorithm_signs_tokens_that_an_independent_library_verifies() {
    let dir = private_dir();
    let mut config = server_toml(dir.path());
    for alg in ALGS {
        config += &keyset_toml(&alg.to_lowercase(), alg, "");
    }
    let names: Vec<String> = ALGS.iter().map(|a| a.to_lowercase()).collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (client, token) = token_client(
        "issuer",
        &name_refs,
        "audiences = [\"orders\"]\nsubject_pattern = \"*\"",
    );
    config += &client;
    let d = Daemon::start(dir.path(), &config);
    for alg in ALGS {
        sign_and_verify(&d, &alg.to_lowercase(), alg, &token).await;
    }
}

/// Signs a 5-minute token with key set `ks` (algorithm `alg`) and verifies it against the live
/// JWKS: with the `jsonwebtoken` crate where it supports `alg`, else (ES512) with keyturn's
/// own strict verifier (PyJWT checks ES512 in the interop test). Returns the sign response.
pub async fn sign_and_verify(d: &Daemon, ks: &str, alg: &str, token: &str) -> serde_json::Value {
    let req = json!({"claims": {"sub": "alice", "aud": "orders"}, "ttl": "5m"});
    let (status, body) = sign(d, ks, token, req).await;
    assert_eq!(status, 200, "{alg}: {body}");
    let jws = body["token"].as_str().unwrap();
    assert_eq!(jws.split('.').count(), 3);
    if jwt_alg(alg).is_some() {
        let header = decode_header(jws).unwrap();
        assert_eq!(header.kid.as_deref(), body["kid"].as_str());
        let claims = verify_independently(d, ks, alg, jws, "orders").await;
        assert_eq!(claims["sub"], "alice");
        assert_eq!(claims["jti"], body["jti"]);
        assert_eq!(claims["exp"], body["exp"]);
        let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
        assert_eq!(lifetime, 300);
    } else {
        let set = serde_json::to_vec(&jwks(d, ks).await).unwrap();
        let keys = keyturn::cli::verify::parse_jwks(&set).unwrap();
        let expect = keyturn::cli::verify::Expect {
            audience: Some("orders".into()),
            ..Default::default()
        };
        let now = body["exp"].as_i64().unwrap() - 300;
        keyturn::cli::verify::verify(jws, &keys, &expect, now).unwrap();
    }
    body
}

fn policy_config(dir: &std::path::Path) -> (String, String, String) {
    let (issuer, issuer_token) = token_client(
        "issuer",
        &["default"],
        "audiences = [\"orders\", \"billing\"]\nsubject_pattern = \"user:*\"\nmax_ttl = \"5m\"\nforbidden_claims = [\"admin\"]\nallowed_typ = [\"JWT\", \"at+jwt\"]",
    );
    let (ops, ops_token) = token_client("ops", &["*"], "admin = true");
    let config = format!(
        "{}{}{}{issuer}{ops}",
        server_toml(dir),
        keyset_toml("default", "ES256", ""),
        keyset_toml("private", "ES256", "")
    );
    (config, issuer_token, ops_token)
}

#[tokio::test]
async fn authentication_and_policy_refusals() {
    let dir = private_dir();
    let (config, token, ops) = policy_config(dir.path());
    let d = Daemon::start(dir.path(), &config);
    let ok = json!({"claims": {"sub": "user:1", "aud": "orders"}});
    // No token, a wrong token, a malformed header: 401. Every API response, refusals
    // included, names its request for the logs.
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = http()
            .post(format!("{}/v1/keysets/default/sign", d.api))
            .json(&ok)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        ids.push(r.headers()["x-request-id"].to_str().unwrap().to_owned());
    }
    assert!(!ids[0].is_empty() && ids[0] != ids[1], "{ids:?}");
    // A client's own id is kept, so that its logs and ours meet; a 404 is named too.
    let r = http()
        .post(format!("{}/v1/keysets/default/sign", d.api))
        .header("x-request-id", "client-7")
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            r.status().as_u16(),
            r.headers()["x-request-id"].to_str().unwrap()
        ),
        (401, "client-7")
    );
    // Ours: <process start in hex>-<counter>.
    let ours = |id: &str| {
        id.split_once('-').is_some_and(|(start, n)| {
            !start.is_empty()
                && start.bytes().all(|b| b.is_ascii_hexdigit())
                && n.parse::<u64>().is_ok()
        })
    };
    assert!(ids.iter().all(|id| ours(id)), "{ids:?}");
    // A client id of up to 128 bytes of [A-Za-z0-9._:-] is kept; any other is replaced
    // (too long, or what would read differently in the logs), also on a 404.
    for (sent, kept) in [
        ("a.B_9:z-".repeat(16), true),
        ("x".repeat(129), false),
        ("two words".to_owned(), false),
        ("quote\"".to_owned(), false),
    ] {
        let r = http()
            .get(format!("{}/nowhere", d.api))
            .header("x-request-id", &sent)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 404);
        let id = r.headers()["x-request-id"].to_str().unwrap();
        assert_eq!(
            (id == sent, kept || ours(id)),
            (kept, true),
            "{sent} -> {id}"
        );
    }
    let (status, body) = sign(&d, "default", "wrong-token", ok.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthenticated"))
    );
    let r = http()
        .post(format!("{}/v1/keysets/default/sign", d.api))
        .header("authorization", "Basic abc")
        .json(&ok)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The scheme is case-insensitive; two Authorization headers are refused, even when one
    // of them is right.
    let with = |values: &[String]| {
        let mut req = http().post(format!("{}/v1/keysets/default/sign", d.api));
        for v in values {
            req = req.header("authorization", v);
        }
        req.json(&ok).send()
    };
    let r = with(&[format!("bearer {token}")]).await.unwrap();
    assert_eq!(r.status(), 200);
    let r = with(&[format!("Bearer {token}"), "Bearer wrong".into()])
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "bad_authorization");
    // A key set the client may not use; an admin whose policy grants no sub.
    let (status, body) = sign(&d, "private", &token, ok.clone()).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("keyset_not_allowed"))
    );
    let (status, _) = sign(&d, "default", &ops, ok.clone()).await;
    assert_eq!(status, 403);
    // Policy refusals: 403 with a code and a message that says what to change.
    for (body, code) in [
        (
            json!({"claims": {"sub": "bot:1", "aud": "orders"}}),
            "subject_not_allowed",
        ),
        (
            json!({"claims": {"sub": "user:1", "aud": "payroll"}}),
            "audience_not_allowed",
        ),
        (
            json!({"claims": {"sub": "user:1", "aud": "orders", "iss": "https://evil"}}),
            "issuer_fixed",
        ),
        (
            json!({"claims": {"sub": "user:1", "aud": "orders", "admin": true}}),
            "claim_forbidden",
        ),
        (
            json!({"claims": {"sub": "user:1", "aud": "orders"}, "ttl": "6m"}),
            "ttl_too_long",
        ),
        (
            json!({"claims": {"sub": "user:1", "aud": "orders"}, "typ": "dpop+jwt"}),
            "typ_not_allowed",
        ),
    ] {
        let (status, resp) = sign(&d, "default", &token, body.clone()).await;
        assert_eq!(status, 403, "{body}: {resp}");
        assert_eq!(resp["error"]["code"], code, "{body}");
        assert!(resp["error"]["message"].as_str().unwrap().len() > 10);
        assert!(resp.get("token").is_none());
    }
    // The policy's happy path with typ at+jwt (RFC 9068).
    let (status, body) = sign(
        &d,
        "default",
        &token,
        json!({"claims": {"sub": "user:1", "aud": ["orders", "billing"]}, "typ": "at+jwt"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let header = decode_header(body["token"].as_str().unwrap()).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
}

/// sign-batch: every item goes through the single-sign policy on its own, results come
/// back in request order, refusals (of the policy or of an item's shape) stay per item,
/// each token is audited once.
#[tokio::test]
async fn sign_batch_checks_each_item_and_keeps_their_order() {
    let dir = private_dir();
    let (config, token, _) = policy_config(dir.path());
    let d = Daemon::start(dir.path(), &config);
    let batch_url = format!("{}/v1/keysets/default/sign-batch", d.api);
    let post = |body: serde_json::Value| {
        http()
            .post(&batch_url)
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    // 200 items; every seventh asks for an audience the client may not use, every eleventh
    // for a forbidden claim. Items span several chunks, the last one partial.
    let refusal = |i: usize| match i {
        i if i % 7 == 3 => Some("audience_not_allowed"),
        i if i % 11 == 5 => Some("claim_forbidden"),
        i if i % 13 == 6 => Some("invalid_request"),
        _ => None,
    };
    let requests: Vec<serde_json::Value> = (0..200)
        .map(|i| {
            let mut claims = json!({"sub": format!("user:{i}"), "aud": "orders"});
            match refusal(i) {
                Some("audience_not_allowed") => claims["aud"] = json!("payroll"),
                // Not a sign request at all: refused alone, like a policy refusal.
                Some("invalid_request") => return json!({"claim": claims}),
                Some(_) => claims["admin"] = json!(true),
                None => {}
            }
            json!({"claims": claims})
        })
        .collect();
    let r = post(json!({"requests": requests})).await.unwrap();
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    let results = body["results"].as_array().unwrap();
    assert_eq!(results.len(), 200);
    let mut jtis = std::collections::HashSet::new();
    for (i, item) in results.iter().enumerate() {
        match refusal(i) {
            Some(code) => {
                assert_eq!(item["error"]["code"], code, "item {i}: {item}");
                assert!(item.get("token").is_none(), "item {i}: {item}");
            }
            None => {
                let claims = verify_independently(
                    &d,
                    "default",
                    "ES256",
                    item["token"].as_str().unwrap(),
                    "orders",
                )
                .await;
                assert_eq!(claims["sub"], format!("user:{i}"), "item {i} out of order");
                assert_eq!(claims["jti"], item["jti"]);
                assert!(jtis.insert(item["jti"].as_str().unwrap().to_owned()));
            }
        }
    }
    let signed = (0..200).filter(|i| refusal(*i).is_none()).count();
    assert_eq!(jtis.len(), signed);
    // One audit line per token, none for the refusals.
    let audited = audit_field(&dir.path().join("data/audit.log"), "sign", "default", "jti");
    assert_eq!(audited.len(), signed);
    assert!(audited.iter().all(|j| jtis.contains(j)));

    // Size limits: 1 to 256 items.
    for n in [0, 257] {
        let items = vec![json!({"claims": {"sub": "user:1", "aud": "orders"}}); n];
        let r = post(json!({"requests": items})).await.unwrap();
        assert_eq!(r.status(), 422, "{n} items");
        let e: serde_json::Value = r.json().await.unwrap();
        assert_eq!(e["error"]["code"], "batch_size");
    }
}

/// An API listener that other hosts can reach without TLS is a warning at start (bearer
/// tokens would cross the network in clear); a loopback one is not.
#[tokio::test]
async fn a_cleartext_api_listener_off_loopback_is_warned_about() {
    for (listen, warned) in [("127.0.0.1:0", false), ("0.0.0.0:0", true)] {
        let dir = private_dir();
        let config = server_toml(dir.path()).replace(
            "api_listen = \"127.0.0.1:0\"",
            &format!("api_listen = \"{listen}\""),
        ) + &keyset_toml("default", "ES256", "");
        let d = Daemon::start(dir.path(), &config);
        let log = d.log_text();
        assert_eq!(log.contains("in clear"), warned, "{listen}: {log}");
        assert!(d.stop().success());
    }
}

#[tokio::test]
async fn bad_input_gets_a_clear_4xx_and_never_a_signature() {
    let dir = private_dir();
    let (config, token, _) = policy_config(dir.path());
    let d = Daemon::start(dir.path(), &config);
    let url = format!("{}/v1/keysets/default/sign", d.api);
    let raw = |body: Vec<u8>, ct: &'static str| {
        let url = url.clone();
        let token = token.clone();
        async move {
            let r = http()
                .post(url)
                .bearer_auth(token)
                .header("content-type", ct)
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    // Nesting deeper than JSON parsers take, inside a claim (refused as JSON) and as the
    // claims themselves (not an object).
    let deep = format!(
        "{{\"claims\": {{\"x\": {}1{}}}}}",
        "[".repeat(200),
        "]".repeat(200)
    );
    let deep_claims = format!(
        "{{\"claims\": {}1{}}}",
        "[".repeat(20_000),
        "]".repeat(20_000)
    );
    let big = format!(
        "{{\"claims\": {{\"sub\": \"user:1\", \"aud\": \"orders\", \"x\": \"{}\"}}}}",
        "a".repeat(70_000)
    );
    let cases: Vec<(Vec<u8>, &'static str, u16, &str)> = vec![
        (big.into_bytes(), "application/json", 413, "body_too_large"),
        (b"{}".to_vec(), "text/plain", 415, "unsupported_media_type"),
        (
            b"{\"claims\": ".to_vec(),
            "application/json",
            400,
            "invalid_json",
        ),
        (
            b"\xff\xfe{}".to_vec(),
            "application/json",
            400,
            "invalid_json",
        ),
        (deep.into_bytes(), "application/json", 400, "invalid_json"),
        (
            deep_claims.into_bytes(),
            "application/json",
            422,
            "claims_not_object",
        ),
        (
            b"{\"claims\": [1, 2]}".to_vec(),
            "application/json",
            422,
            "claims_not_object",
        ),
        // The request's fields as an array (serde's derive would take it).
        (
            b" [{\"sub\": \"user:1\", \"aud\": \"orders\"}, \"5m\"]".to_vec(),
            "application/json",
            422,
            "invalid_request",
        ),
        (
            b"{\"claims\": \"x\"}".to_vec(),
            "application/json",
            422,
            "claims_not_object",
        ),
        (
            b"{\"claims\": {}, \"extra\": 1}".to_vec(),
            "application/json",
            422,
            "invalid_request",
        ),
        (b"{}".to_vec(), "application/json", 422, "invalid_request"),
        (
            br#"{"claims": {"sub": "user:1", "aud": "orders", "exp": 9999999999}}"#.to_vec(),
            "application/json",
            422,
            "reserved_claim",
        ),
        (
            br#"{"claims": {"sub": "user:1", "aud": "orders", "iat": 1}}"#.to_vec(),
            "application/json",
            422,
            "reserved_claim",
        ),
        (
            br#"{"claims": {"sub": "user:1", "aud": "orders", "nbf": 1}}"#.to_vec(),
            "application/json",
            422,
            "reserved_claim",
        ),
        (
            br#"{"claims": {"sub": "user:1", "aud": "orders", "jti": "mine"}}"#.to_vec(),
            "application/json",
            422,
            "reserved_claim",
        ),
        (
            br#"{"claims": {"sub": "user:1", "aud": "orders", "s\u0075b": "user:2"}}"#.to_vec(),
            "application/json",
            422,
            "duplicate_claim",
        ),
        (
            br#"{"claims": {"sub": 42, "aud": "orders"}}"#.to_vec(),
            "application/json",
            422,
            "invalid_sub",
        ),
        (
            format!(
                r#"{{"claims": {{"sub": "user:{}", "aud": "orders"}}}}"#,
                "x".repeat(300)
            )
            .into_bytes(),
            "application/json",
            422,
            "invalid_sub",
        ),
        (
            br#"{"claims": {"sub": "user:1", "aud": 7}}"#.to_vec(),
            "application/json",
            422,
            "invalid_aud",
        ),
        (
            format!(
                r#"{{"claims": {{"sub": "user:1", "aud": "{}"}}}}"#,
                "o".repeat(300)
            )
            .into_bytes(),
            "application/json",
            422,
            "invalid_aud",
        ),
        (
            br#"{"claims": {"sub": "user:1", "aud": "orders"}, "ttl": "forever"}"#.to_vec(),
            "application/json",
            422,
            "invalid_ttl",
        ),
    ];
    for (body, ct, status, code) in cases {
        let (got, resp) = raw(body, ct).await;
        assert_eq!(
            (got, resp["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{resp}"
        );
        assert!(resp.get("token").is_none());
    }
    // Unknown key set.
    let (status, resp) = sign(&d, "nope", &token, json!({"claims": {}})).await;
    assert_eq!(
        (status, resp["error"]["code"].as_str()),
        (404, Some("unknown_keyset"))
    );
    // Nothing above was signed: the audit log holds no signature.
    let stopped = d.stop();
    assert!(stopped.success());
    let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
    assert!(!audit.contains("\"event\":\"sign\""), "{audit}");
}

#[tokio::test]
async fn admin_rotate_and_revoke_and_the_audit_chain() {
    let dir = private_dir();
    let (config, token, ops) = policy_config(dir.path());
    let d = Daemon::start(dir.path(), &config);
    // Non-admins may not use admin routes.
    let (status, _) = admin(&d, &token, reqwest::Method::GET, "/v1/keysets").await;
    assert_eq!(status, 403);
    let (status, list) = admin(&d, &ops, reqwest::Method::GET, "/v1/keysets").await;
    assert_eq!(status, 200);
    assert_eq!(list["keysets"].as_array().unwrap().len(), 2);
    let (_, view) = admin(&d, &ops, reqwest::Method::GET, "/v1/keysets/default").await;
    let states: Vec<&str> = view["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["state"].as_str().unwrap())
        .collect();
    assert_eq!(states, ["active", "pending"]);
    let first = view["active_kid"].as_str().unwrap().to_owned();

    // Rotate: with a 1 s publish lead the pending key takes over within a second or two.
    let (status, rotated) = rotate(&d, &ops, "default").await;
    assert_eq!(status, 200, "{rotated}");
    let next = rotated["kid"].as_str().unwrap().to_owned();
    assert_ne!(next, first);
    let ok = json!({"claims": {"sub": "user:1", "aud": "orders"}});
    eventually(
        std::time::Duration::from_secs(10),
        "the rotated key signs",
        || {
            let (d, token, ok, next) = (&d, &token, ok.clone(), next.clone());
            async move { sign(d, "default", token, ok).await.1["kid"] == next.as_str() }
        },
    )
    .await;
    // The retired key stays published for its tokens.
    assert!(kids(&jwks(&d, "default").await).contains(&first));

    // Revoke the active key: out of the JWKS at once, a new key signs at once.
    let (status, revoked) = admin(
        &d,
        &ops,
        reqwest::Method::POST,
        &format!("/v1/keysets/default/keys/{next}/revoke"),
    )
    .await;
    assert_eq!(status, 200, "{revoked}");
    assert!(!kids(&jwks(&d, "default").await).contains(&next));
    let (_, signed) = sign(&d, "default", &token, ok.clone()).await;
    assert_eq!(signed["kid"], revoked["active_kid"]);
    assert_ne!(signed["kid"].as_str(), Some(next.as_str()));
    let (status, again) = admin(
        &d,
        &ops,
        reqwest::Method::POST,
        &format!("/v1/keysets/default/keys/{next}/revoke"),
    )
    .await;
    assert_eq!(
        (status, again["error"]["code"].as_str()),
        (409, Some("refused"))
    );
    // A kid the key set never had: 404, not a conflict.
    let (status, unknown) = admin(
        &d,
        &ops,
        reqwest::Method::POST,
        "/v1/keysets/default/keys/no-such-kid/revoke",
    )
    .await;
    assert_eq!(
        (status, unknown["error"]["code"].as_str()),
        (404, Some("unknown_kid"))
    );

    assert!(d.stop().success());
    let log = dir.path().join("data/audit.log");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    for event in [
        "\"sign\"",
        "\"published\"",
        "\"revoked\"",
        "\"rotate-requested\"",
    ] {
        assert!(text.contains(event), "audit lacks {event}");
    }
    let signed_token = signed["token"].as_str().unwrap();
    assert!(
        !text.contains(signed_token.split('.').nth(2).unwrap()),
        "a token is in the audit log"
    );
    // Tampering is detected.
    let mut lines: Vec<&str> = text.lines().collect();
    lines.remove(1);
    std::fs::write(&log, lines.join("\n") + "\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(["audit", "verify"])
        .arg(&log)
        .output()
        .unwrap();
    assert!(!out.status.success());
}

#[tokio::test]
async fn unix_socket_clients_are_named_by_peer_uid() {
    let dir = private_dir();
    let uid = std::fs::metadata(dir.path())
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let socket = dir.path().join("api.sock");
    let config = format!(
        "{}api_socket = \"{}\"\n{}[[client]]\nname = \"local\"\nunix_uid = {uid}\nkeysets = [\"default\"]\nsubject_pattern = \"*\"\n[[client]]\nname = \"someone-else\"\nunix_uid = {}\nkeysets = [\"default\"]\nadmin = true\n",
        server_toml(dir.path()),
        socket.display(),
        keyset_toml("default", "EdDSA", ""),
        uid + 1
    );
    let d = Daemon::start(dir.path(), &config);
    use keyturn::cli::client::{request, Endpoint};
    let ep = Endpoint::Socket(socket.clone());
    let r = request(
        &ep,
        http::Method::POST,
        "/v1/keysets/default/sign",
        None,
        Some(json!({"claims": {"sub": "x"}}).to_string().into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    // The uid matches "local", not the admin client with another uid.
    let r = request(&ep, http::Method::GET, "/v1/keysets", None, None)
        .await
        .unwrap();
    assert_eq!(r.status, 403);
    // TCP without a token is anonymous: refused.
    let r = http()
        .post(format!("{}/v1/keysets/default/sign", d.api))
        .json(&json!({"claims": {}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// A test CA that issues server and client certificates (rcgen).
struct TestCa {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
}

impl TestCa {
    fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![]).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "test CA");
        TestCa {
            cert: params.self_signed(&key).unwrap(),
            key,
        }
    }

    /// A certificate for `params` and its key, as PEM.
    fn issue(&self, params: rcgen::CertificateParams) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    /// A certificate with subject `CN=cn` and DNS names `sans`.
    fn issue_cn(&self, cn: &str, sans: Vec<String>) -> (String, String) {
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        self.issue(params)
    }

    /// Writes `server.pem`, `server.key` (for localhost) and `ca.pem` into `dir`; returns
    /// the `[server.tls]` table that uses them, with client certificates.
    fn server_files(&self, dir: &std::path::Path) -> String {
        let (server_cert, server_key) = self.issue_cn("localhost", vec!["localhost".into()]);
        std::fs::write(dir.join("server.pem"), server_cert).unwrap();
        write_secret(&dir.join("server.key"), &server_key);
        std::fs::write(dir.join("ca.pem"), self.cert.pem()).unwrap();
        format!(
            "[server.tls]\ncert_file = \"{d}/server.pem\"\nkey_file = \"{d}/server.key\"\nclient_ca_file = \"{d}/ca.pem\"\n",
            d = dir.display()
        )
    }

    /// A client for the daemon's API port that trusts this CA, with `identity` (PEM
    /// certificate and key) if given.
    fn client(&self, port: &str, identity: Option<&(String, String)>) -> reqwest::Client {
        let mut builder = reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.cert.pem().as_bytes()).unwrap(),
            )
            .resolve("localhost", format!("127.0.0.1:{port}").parse().unwrap());
        if let Some((cert, key)) = identity {
            builder = builder
                .identity(reqwest::Identity::from_pem(format!("{cert}{key}").as_bytes()).unwrap());
        }
        builder.build().unwrap()
    }
}

#[tokio::test]
async fn mtls_clients_are_named_by_certificate_and_tokens_still_work() {
    let dir = private_dir();
    let ca = TestCa::new();
    let tls = ca.server_files(dir.path());
    let (client_cert, client_key) = ca.issue_cn("ci-runner", vec![]);
    let (token_client_toml, token) =
        token_client("token-user", &["default"], "subject_pattern = \"*\"");
    // A long handshake timeout, so that a handshake run by the accept loop would show.
    let config = format!(
        "{}header_timeout = \"30s\"\n{tls}{}[[client]]\nname = \"runner\"\ntls_subject = \"ci-runner\"\nkeysets = [\"default\"]\nsubject_pattern = \"*\"\n{token_client_toml}",
        server_toml(dir.path()),
        keyset_toml("default", "ES256", ""),
    );
    let daemon = Daemon::start(dir.path(), &config);
    let port = daemon.api.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}/v1/keysets/default/sign");
    let body = json!({"claims": {"sub": "job-1"}});
    let with_cert = ca.client(&port, Some(&(client_cert, client_key)));
    // Clients that never start their handshake hold up nobody else: each handshake runs
    // in its connection's own task (the accept loop used to wait out each one's timeout).
    let silent: Vec<std::net::TcpStream> = (0..3)
        .map(|_| std::net::TcpStream::connect(format!("127.0.0.1:{port}")).unwrap())
        .collect();
    let started = std::time::Instant::now();
    let r = with_cert.post(&url).json(&body).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(20),
        "waited {:?} behind silent clients",
        started.elapsed()
    );
    drop(silent);
    let without = ca.client(&port, None);
    assert_eq!(
        without
            .post(&url)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        without
            .post(&url)
            .bearer_auth(&token)
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // Plain HTTP to the TLS listener gets no token.
    assert!(http()
        .post(format!("http://127.0.0.1:{port}/v1/keysets/default/sign"))
        .json(&body)
        .send()
        .await
        .map(|r| r.status() != 200)
        .unwrap_or(true));
}

#[test]
fn client_token_prints_config_lines_that_authenticate() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .args(["client-token", "svc", "--keyset", "default"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    let token = stderr.trim().rsplit(' ').next().unwrap();
    let hash = stdout
        .lines()
        .find_map(|l| l.strip_prefix("token_sha256 = \""))
        .unwrap()
        .trim_end_matches('"');
    assert_eq!(
        keyturn::config::secret::to_hex(&keyturn::config::secret::hash_token(token)),
        hash
    );
    assert!(stdout.contains("name = \"svc\""));
}

/// The `[[client]]` lines `keyturn client-token NAME ARGS...` prints, and its token.
fn client_token(name: &str, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .arg("client-token")
        .arg(name)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(out.status.success(), "{stderr}");
    let token = stderr.trim().rsplit(' ').next().unwrap().to_owned();
    (String::from_utf8(out.stdout).unwrap(), token)
}

/// A client as `client-token` makes it by default signs no `sub` and no claim beyond `aud`:
/// not `sub: "admin"`, `roles`, `email_verified` or `cnf`; each refusal is a 403 naming the
/// setting to add. The options that add them give exactly that right.
#[tokio::test]
async fn a_client_token_client_is_denied_sub_and_extra_claims_by_default() {
    let dir = private_dir();
    let (plain, plain_token) = client_token("plain", &["--audience", "orders"]);
    assert!(
        plain.contains("# subject_pattern = ") && plain.contains("# allowed_claims = "),
        "both choices shown: {plain}"
    );
    let (open, open_token) = client_token(
        "open",
        &[
            "--audience",
            "orders",
            "--subject-pattern",
            "user:*",
            "--allowed-claim",
            "roles",
        ],
    );
    let d = Daemon::start(
        dir.path(),
        &format!(
            "{}{}{plain}\n{open}",
            server_toml(dir.path()),
            keyset_toml("default", "ES256", "")
        ),
    );
    let attempt = |token: &str, claims: serde_json::Value| {
        let (d, token) = (&d, token.to_owned());
        async move { sign(d, "default", &token, json!({ "claims": claims })).await }
    };
    for (claims, code, setting) in [
        (
            json!({"sub": "admin", "aud": "orders"}),
            "subject_not_allowed",
            "subject_pattern",
        ),
        (
            json!({"aud": "orders", "roles": ["superuser"]}),
            "claim_not_allowed",
            "allowed_claims",
        ),
        (
            json!({"aud": "orders", "email_verified": true}),
            "claim_not_allowed",
            "allowed_claims",
        ),
        (
            json!({"aud": "orders", "cnf": {"jkt": "x"}}),
            "claim_not_allowed",
            "allowed_claims",
        ),
    ] {
        let (status, body) = attempt(&plain_token, claims.clone()).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (403, Some(code)),
            "{claims}"
        );
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(setting), "{claims}: {message}");
    }
    let (status, body) = attempt(&plain_token, json!({"aud": "orders"})).await;
    assert_eq!(status, 200, "{body}");
    // The options grant what they name, and nothing more.
    let (status, body) = attempt(
        &open_token,
        json!({"sub": "user:1", "aud": "orders", "roles": ["reader"]}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = attempt(&open_token, json!({"sub": "admin", "aud": "orders"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("subject_not_allowed"))
    );
    let (status, body) = attempt(
        &open_token,
        json!({"sub": "user:1", "aud": "orders", "email_verified": true}),
    )
    .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (403, Some("claim_not_allowed"))
    );
}

/// An admin client administers the key sets in its `keysets` and no other: it lists only
/// those, and reading, rotating or revoking another is a 403 that names the setting;
/// `keysets = ["*"]` administers every key set.
#[tokio::test]
async fn an_admin_client_administers_only_its_key_sets() {
    let dir = private_dir();
    let (scoped, scoped_token) = token_client("ops-default", &["default"], "admin = true");
    let (all, all_token) = token_client("ops-all", &["*"], "admin = true");
    let d = Daemon::start(
        dir.path(),
        &format!(
            "{}{}{}{scoped}{all}",
            server_toml(dir.path()),
            keyset_toml("default", "ES256", ""),
            keyset_toml("private", "ES256", "")
        ),
    );
    let names = |list: &serde_json::Value| -> Vec<String> {
        list["keysets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["name"].as_str().unwrap().to_owned())
            .collect()
    };
    let (status, list) = admin(&d, &scoped_token, reqwest::Method::GET, "/v1/keysets").await;
    assert_eq!((status, names(&list)), (200, vec!["default".to_owned()]));
    let (status, list) = admin(&d, &all_token, reqwest::Method::GET, "/v1/keysets").await;
    assert_eq!(
        (status, names(&list)),
        (200, vec!["default".to_owned(), "private".to_owned()])
    );
    let private_kid = keyset_view(&d, &all_token, "private").await["active_kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = kids(&jwks(&d, "private").await);
    for (method, path) in [
        (reqwest::Method::GET, "/v1/keysets/private".to_owned()),
        (
            reqwest::Method::POST,
            "/v1/keysets/private/rotate".to_owned(),
        ),
        (
            reqwest::Method::POST,
            format!("/v1/keysets/private/keys/{private_kid}/revoke"),
        ),
    ] {
        let (status, body) = admin(&d, &scoped_token, method, &path).await;
        assert_eq!(status, 403, "{path}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("\"ops-default\"") && message.contains("keysets"),
            "{path}: {message}"
        );
    }
    assert_eq!(kids(&jwks(&d, "private").await), before, "nothing changed");
    // Its own key set, and every key set for "*".
    assert_eq!(rotate(&d, &scoped_token, "default").await.0, 200);
    assert_eq!(rotate(&d, &all_token, "private").await.0, 200);
}

/// The API listener is not for web pages: a request with an `Origin` header or a
/// `Sec-Fetch-Site` other than `same-origin`/`none` is a 403 `browser_request`, on every
/// route; a POST may carry only a JSON body (415 otherwise), and a POST without a body
/// refuses any Content-Type but JSON. A form POST that a page could send with the
/// browser's client certificate revokes nothing.
#[tokio::test]
async fn browser_style_requests_are_refused_and_change_nothing() {
    let dir = private_dir();
    let (config, token, ops) = policy_config(dir.path());
    let d = Daemon::start(dir.path(), &config);
    let kid = keyset_view(&d, &ops, "default").await["active_kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = kids(&jwks(&d, "default").await);
    let revoke = format!("{}/v1/keysets/default/keys/{kid}/revoke", d.api);
    let rotate_url = format!("{}/v1/keysets/default/rotate", d.api);
    let sign_url = format!("{}/v1/keysets/default/sign", d.api);
    let ok = json!({"claims": {"sub": "user:1", "aud": "orders"}}).to_string();
    let send = |url: &str, bearer: &str, headers: &[(&str, &str)], body: Option<&str>| {
        let mut req = http().post(url).bearer_auth(bearer);
        for (name, value) in headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.body(body.to_owned());
        }
        async move {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (
                status,
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let form = ("content-type", "application/x-www-form-urlencoded");
    let text = ("content-type", "text/plain");
    let json_ct = ("content-type", "application/json");
    // (url, bearer token, headers, body, expected status and code)
    type Case<'a> = (
        &'a str,
        &'a str,
        Vec<(&'a str, &'a str)>,
        Option<&'a str>,
        u16,
        &'a str,
    );
    let cases: Vec<Case> = vec![
        // Cross-site, whatever else the request holds.
        (
            &revoke,
            &ops,
            vec![("origin", "https://evil.example")],
            None,
            403,
            "browser_request",
        ),
        (
            &revoke,
            &ops,
            vec![("origin", "null"), json_ct],
            Some("{}"),
            403,
            "browser_request",
        ),
        (
            &rotate_url,
            &ops,
            vec![("sec-fetch-site", "cross-site")],
            None,
            403,
            "browser_request",
        ),
        (
            &rotate_url,
            &ops,
            vec![("sec-fetch-site", "same-site")],
            None,
            403,
            "browser_request",
        ),
        (
            &sign_url,
            &token,
            vec![("origin", "https://evil.example"), json_ct],
            Some(&ok),
            403,
            "browser_request",
        ),
        // Bodies other than JSON, and content types other than JSON without a body.
        (
            &revoke,
            &ops,
            vec![form],
            Some("x=1"),
            415,
            "unsupported_media_type",
        ),
        (
            &revoke,
            &ops,
            vec![form],
            None,
            415,
            "unsupported_media_type",
        ),
        (
            &rotate_url,
            &ops,
            vec![text],
            None,
            415,
            "unsupported_media_type",
        ),
        (
            &rotate_url,
            &ops,
            vec![("content-type", "multipart/form-data; boundary=x")],
            Some("--x--"),
            415,
            "unsupported_media_type",
        ),
        (
            &rotate_url,
            &ops,
            vec![],
            Some("x=1"),
            415,
            "unsupported_media_type",
        ),
        (
            &sign_url,
            &token,
            vec![],
            Some(&ok),
            415,
            "unsupported_media_type",
        ),
    ];
    for (url, bearer, headers, body, status, code) in cases {
        let (got, resp) = send(url, bearer, &headers, body).await;
        assert_eq!(
            (got, resp["error"]["code"].as_str().unwrap_or("")),
            (status, code),
            "{url} {headers:?} {body:?}: {resp}"
        );
    }
    // GETs too, and paths that do not exist.
    for path in ["/v1/keysets", "/v1/keysets/default", "/nowhere"] {
        let r = http()
            .get(format!("{}{path}", d.api))
            .bearer_auth(&ops)
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path}");
        let body: serde_json::Value = r.json().await.unwrap();
        assert_eq!(body["error"]["code"], "browser_request", "{path}");
    }
    assert_eq!(kids(&jwks(&d, "default").await), before, "nothing changed");
    // What programs send still works: JSON, no body without a content type or with JSON's,
    // and the Sec-Fetch-Site values no page sends.
    let (status, resp) = send(
        &sign_url,
        &token,
        &[json_ct, ("sec-fetch-site", "none")],
        Some(&ok),
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let (status, resp) = send(
        &rotate_url,
        &ops,
        &[("sec-fetch-site", "same-origin")],
        None,
    )
    .await;
    assert_eq!(status, 200, "{resp}");
    let (status, resp) = send(&revoke, &ops, &[json_ct], None).await;
    assert_eq!(status, 200, "{resp}");
}

/// The daemon's WARN lines so far whose message is `message`.
fn warnings(d: &Daemon, message: &str) -> Vec<serde_json::Value> {
    d.log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["level"] == "WARN" && l["message"] == message)
        .collect()
}

/// Failed authentication is counted in `keyturn_auth_failures_total{listener,reason}` and
/// logged at WARN with the peer address and the reason, rate-limited (a flood is a line,
/// not a line per request), never with the presented secret.
#[tokio::test]
async fn failed_authentication_is_logged_rate_limited_and_counted() {
    let dir = private_dir();
    let uid = std::fs::metadata(dir.path())
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap();
    let socket = dir.path().join("api.sock");
    let (client, token) = token_client("svc", &["default"], "");
    let config = format!(
        "{}api_socket = \"{}\"\n{}{client}[[client]]\nname = \"other-uid\"\nunix_uid = {}\nkeysets = [\"default\"]\n",
        server_toml(dir.path()),
        socket.display(),
        keyset_toml("default", "ES256", ""),
        uid + 1
    );
    let d = Daemon::start(dir.path(), &config);
    let url = format!("{}/v1/keysets/default/sign", d.api);
    let body = json!({"claims": {}});
    let secret = "kt_not-a-client-token-but-a-secret";
    let post = |auth: Option<String>| {
        let mut req = http().post(&url).json(&body);
        if let Some(auth) = auth {
            req = req.header("authorization", auth);
        }
        async move { req.send().await.unwrap().status().as_u16() }
    };
    let floods = 30;
    for _ in 0..floods {
        assert_eq!(post(Some(format!("Bearer {secret}"))).await, 401);
    }
    assert_eq!(post(None).await, 401);
    assert_eq!(post(Some(format!("Basic {secret}"))).await, 401);
    assert_eq!(post(Some(format!("Bearer {token}"))).await, 200);
    use keyturn::cli::client::{request, Endpoint};
    let r = request(
        &Endpoint::Socket(socket),
        http::Method::POST,
        "/v1/keysets/default/sign",
        None,
        Some(body.to_string().into_bytes()),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 401);

    let metrics = metrics_text(&d).await;
    for (listener, reason, n) in [
        ("api", "unknown_token", floods),
        ("api", "no_credentials", 1),
        ("api", "bad_authorization", 1),
        ("api-socket", "unknown_peer", 1),
    ] {
        let line = format!(
            "keyturn_auth_failures_total{{listener=\"{listener}\",reason=\"{reason}\"}} {n}\n"
        );
        assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
    }
    // The line reaches the test through a pipe, after the response.
    eventually(Duration::from_secs(10), "a failure is logged", || async {
        !warnings(&d, "authentication failed").is_empty()
    })
    .await;
    assert!(
        !d.log_text().contains(secret),
        "the presented secret is in the log"
    );
    let warned = warnings(&d, "authentication failed");
    assert!(
        !warned.is_empty() && warned.len() < floods,
        "one line per window, not per failure: {warned:?}"
    );
    let first = &warned[0];
    assert_eq!(first["reason"], "unknown_token", "{first}");
    assert_eq!(first["listener"], "api", "{first}");
    assert!(
        first["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{first}"
    );
}

/// A certificate whose subject holds two common names (`CN=opsmtls, CN=someone-else`) is
/// refused at the handshake, which is logged at WARN with the peer and the reason; a
/// client may instead be named by a SAN of its certificate (`tls_san`: a URI such as a
/// SPIFFE id, or a DNS name, case-insensitive); a verified certificate that names no
/// client is a 401 counted as `unknown_certificate`.
#[tokio::test]
async fn mtls_refuses_two_common_names_and_names_clients_by_san() {
    use rcgen::{CertificateParams, DnType, SanType};
    let dir = private_dir();
    let ca = TestCa::new();
    let tls = ca.server_files(dir.path());
    let config = format!(
        "{}{tls}{}\
         [[client]]\nname = \"ops\"\ntls_subject = \"opsmtls\"\nkeysets = [\"default\"]\nadmin = true\n\
         [[client]]\nname = \"ci\"\ntls_san = \"spiffe://example.org/ci\"\nkeysets = [\"default\"]\n\
         [[client]]\nname = \"runner\"\ntls_san = \"runner.example.org\"\nkeysets = [\"default\"]\n",
        server_toml(dir.path()),
        keyset_toml("default", "ES256", ""),
    );
    let d = Daemon::start(dir.path(), &config);
    let port = d.api.rsplit(':').next().unwrap().to_owned();
    let list = format!("https://localhost:{port}/v1/keysets");
    let sign_url = format!("https://localhost:{port}/v1/keysets/default/sign");
    let body = json!({"claims": {}});

    // The right CN first, then another: refused, whichever a reader takes.
    let mut two = CertificateParams::new(vec![]).unwrap();
    two.distinguished_name.push(DnType::CommonName, "opsmtls");
    two.distinguished_name
        .push(DnType::CustomDnType(vec![2, 5, 4, 3]), "someone-else");
    let two = ca.issue(two);
    let answer = ca.client(&port, Some(&two)).get(&list).send().await;
    assert!(
        answer.is_err(),
        "a two-CN certificate got an answer: {answer:?}"
    );
    // The same name alone is ops.
    let one = ca.issue_cn("opsmtls", vec![]);
    let r = ca
        .client(&port, Some(&one))
        .get(&list)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // The line reaches the test through a pipe, after the handshake it tells of.
    let refused = || warnings(&d, "TLS handshake failed");
    eventually(Duration::from_secs(10), "the refusal is logged", || async {
        !refused().is_empty()
    })
    .await;
    let refused = refused();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(
        refused[0]["peer"]
            .as_str()
            .unwrap()
            .starts_with("127.0.0.1:")
            && refused[0]["reason"]
                .as_str()
                .unwrap()
                .contains("2 common names"),
        "{}",
        refused[0]
    );

    // SANs: a URI and a DNS name (any case), whatever the CN says.
    let san = |cn: &str, san: SanType| {
        let mut p = CertificateParams::new(vec![]).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.subject_alt_names = vec![san];
        ca.issue(p)
    };
    for (cert, caller) in [
        (
            san(
                "opsmtls-lookalike",
                SanType::URI("spiffe://example.org/ci".try_into().unwrap()),
            ),
            "ci",
        ),
        (
            san(
                "x",
                SanType::DnsName("Runner.Example.org".try_into().unwrap()),
            ),
            "runner",
        ),
    ] {
        let r = ca
            .client(&port, Some(&cert))
            .post(&sign_url)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{caller}");
        let jti = r.json::<serde_json::Value>().await.unwrap()["jti"]
            .as_str()
            .unwrap()
            .to_owned();
        let audit = std::fs::read_to_string(dir.path().join("data/audit.log")).unwrap();
        let line = audit.lines().find(|l| l.contains(&jti)).unwrap();
        assert!(line.contains(&format!("\"caller\":\"{caller}\"")), "{line}");
    }
    // A SAN that is a URI does not match as a DNS name, nor a prefix as the whole.
    for cert in [
        san(
            "y",
            SanType::DnsName("spiffe.example.org".try_into().unwrap()),
        ),
        san(
            "y",
            SanType::URI("spiffe://example.org/ci/evil".try_into().unwrap()),
        ),
        ca.issue_cn("nobody", vec![]),
    ] {
        let r = ca
            .client(&port, Some(&cert))
            .post(&sign_url)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
    }
    let metrics = metrics_text(&d).await;
    assert!(
        metrics.contains(
            "keyturn_auth_failures_total{listener=\"api\",reason=\"unknown_certificate\"} 3\n"
        ),
        "{metrics}"
    );
}

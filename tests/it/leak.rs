//! Leak scan: drive every endpoint, error path and admin action at log level trace, then
//! search every response (headers and body), every log line, the audit log and the state
//! files for each private key, in every encoding: PKCS#8 DER, PEM and base64 of it, and each
//! private component (EC d, Ed25519 seed, RSA d/p/q/dp/dq/qi) raw, hex, base64 and
//! base64url (the JWK form). Zero hits.

use crate::harness::*;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use pkcs8::der::Decode;
use serde_json::json;

/// Decrypts a file-backend key file with the KEK, following the format documented in
/// backends/file/src/lib.rs (an independent reading of it, not the backend's code).
fn decrypt_key_file(path: &std::path::Path, kek: &[u8]) -> Vec<u8> {
    use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM};
    let file: serde_json::Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let name = path.file_stem().unwrap().to_str().unwrap();
    let key_type: keyturn_backend::KeyType =
        serde_json::from_value(file["key_type"].clone()).unwrap();
    let nonce: [u8; 12] = STANDARD
        .decode(file["nonce"].as_str().unwrap())
        .unwrap()
        .try_into()
        .unwrap();
    let mut buf = STANDARD
        .decode(file["ciphertext"].as_str().unwrap())
        .unwrap();
    let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, kek).unwrap());
    let aad = format!("keyturn-file-key-v1:{name}:{key_type:?}");
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad.as_bytes()),
            &mut buf,
        )
        .unwrap();
    plain.to_vec()
}

/// Every secret byte string of a PKCS#8 key worth searching for.
fn secrets(pkcs8_der: &[u8]) -> Vec<(String, Vec<u8>)> {
    let info = pkcs8::PrivateKeyInfo::from_der(pkcs8_der).unwrap();
    let mut parts = vec![("pkcs8".to_owned(), pkcs8_der.to_vec())];
    let oid = info.algorithm.oid.to_string();
    match oid.as_str() {
        "1.2.840.10045.2.1" => {
            let ec = sec1::EcPrivateKey::from_der(info.private_key).unwrap();
            parts.push(("ec-d".into(), ec.private_key.to_vec()));
        }
        "1.3.101.112" => {
            let seed = pkcs8::der::asn1::OctetStringRef::from_der(info.private_key).unwrap();
            parts.push(("ed25519-seed".into(), seed.as_bytes().to_vec()));
        }
        "1.2.840.113549.1.1.1" => {
            let rsa = pkcs1::RsaPrivateKey::from_der(info.private_key).unwrap();
            for (n, v) in [
                ("rsa-d", rsa.private_exponent),
                ("rsa-p", rsa.prime1),
                ("rsa-q", rsa.prime2),
                ("rsa-dp", rsa.exponent1),
                ("rsa-dq", rsa.exponent2),
                ("rsa-qi", rsa.coefficient),
            ] {
                parts.push((n.into(), v.as_bytes().to_vec()));
            }
        }
        other => panic!("unexpected key algorithm {other}"),
    }
    parts
}

fn encodings(bytes: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    vec![
        ("raw", bytes.to_vec()),
        ("hex", hex.clone().into_bytes()),
        ("HEX", hex.to_uppercase().into_bytes()),
        (
            "base64",
            STANDARD
                .encode(bytes)
                .trim_end_matches('=')
                .as_bytes()
                .to_vec(),
        ),
        ("base64url", URL_SAFE_NO_PAD.encode(bytes).into_bytes()),
    ]
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.len() >= 16 && haystack.windows(needle.len()).any(|w| w == needle)
}

async fn capture(resp: reqwest::Response, out: &mut Vec<u8>) {
    for (k, v) in resp.headers() {
        out.extend_from_slice(k.as_str().as_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    out.extend_from_slice(&resp.bytes().await.unwrap_or_default());
    out.push(b'\n');
}

#[tokio::test]
async fn no_private_key_appears_in_any_response_log_or_audit_line() {
    let dir = private_dir();
    let (issuer, token) = token_client(
        "issuer",
        &["ec", "rsa", "ed"],
        "audiences = [\"orders\"]\nsubject_pattern = \"u:*\"",
    );
    let (ops, ops_token) = token_client("ops", &["*"], "admin = true");
    let config = format!(
        "{}{}{}{}{issuer}{ops}",
        server_toml(dir.path()),
        keyset_toml("ec", "ES256", ""),
        keyset_toml("rsa", "PS256", ""),
        keyset_toml("ed", "EdDSA", "")
    );
    let d = Daemon::start_with_env(dir.path(), &config, &[("RUST_LOG", "trace")]);
    let mut seen = Vec::new();
    let client = http();
    // Public listener, every route, hits and misses.
    for ks in ["ec", "rsa", "ed", "nope"] {
        for path in [
            format!("/keysets/{ks}/jwks.json"),
            format!("/keysets/{ks}/.well-known/openid-configuration"),
            format!("/keysets/{ks}/jwks/nokid"),
        ] {
            capture(
                client
                    .get(format!("{}{path}", d.jwks))
                    .send()
                    .await
                    .unwrap(),
                &mut seen,
            )
            .await;
        }
    }
    for path in [
        "/.well-known/jwks.json",
        "/.well-known/openid-configuration",
        "/healthz",
        "/readyz",
        "/metrics",
        "/x",
    ] {
        capture(
            client
                .get(format!("{}{path}", d.jwks))
                .send()
                .await
                .unwrap(),
            &mut seen,
        )
        .await;
    }
    // Signing: success and every refusal, in every key set.
    for ks in ["ec", "rsa", "ed"] {
        for body in [
            json!({"claims": {"sub": "u:1", "aud": "orders"}}),
            json!({"claims": {"sub": "x", "aud": "orders"}}),
            json!({"claims": {"sub": "u:1", "aud": "other"}}),
            json!({"claims": {"sub": "u:1", "aud": "orders", "exp": 1}}),
            json!({"claims": [1]}),
            json!({"claims": {"sub": "u:1", "aud": "orders"}, "ttl": "99h"}),
            json!({"requests": []}),
        ] {
            let url = format!("{}/v1/keysets/{ks}/sign", d.api);
            capture(
                client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
                &mut seen,
            )
            .await;
            capture(
                client
                    .post(&url)
                    .bearer_auth("wrong")
                    .json(&body)
                    .send()
                    .await
                    .unwrap(),
                &mut seen,
            )
            .await;
        }
        let batch = json!({"requests": [{"claims": {"sub": "u:2", "aud": "orders"}}, {"claims": {"sub": "bad", "aud": "orders"}}]});
        capture(
            client
                .post(format!("{}/v1/keysets/{ks}/sign-batch", d.api))
                .bearer_auth(&token)
                .json(&batch)
                .send()
                .await
                .unwrap(),
            &mut seen,
        )
        .await;
        capture(
            client
                .post(format!("{}/v1/keysets/{ks}/sign", d.api))
                .bearer_auth(&token)
                .body("{bad")
                .header("content-type", "application/json")
                .send()
                .await
                .unwrap(),
            &mut seen,
        )
        .await;
    }
    // Admin: list, show, rotate; keys are snapshotted before the revoke destroys one.
    for path in [
        "/v1/keysets",
        "/v1/keysets/ec",
        "/v1/keysets/rsa",
        "/v1/keysets/ed",
    ] {
        capture(
            client
                .get(format!("{}{path}", d.api))
                .bearer_auth(&ops_token)
                .send()
                .await
                .unwrap(),
            &mut seen,
        )
        .await;
    }
    let mut keys: Vec<(String, Vec<u8>)> = Vec::new();
    let kek = std::fs::read(dir.path().join("data/kek")).unwrap();
    let snapshot = |keys: &mut Vec<(String, Vec<u8>)>| {
        for entry in std::fs::read_dir(dir.path().join("data/keys")).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "key") {
                let name = path.file_stem().unwrap().to_string_lossy().into_owned();
                if !keys.iter().any(|(n, _)| *n == name) {
                    keys.push((name, decrypt_key_file(&path, &kek)));
                }
            }
        }
    };
    snapshot(&mut keys);
    for ks in ["ec", "rsa", "ed"] {
        let (_, view) = rotate(&d, &ops_token, ks).await;
        seen.extend_from_slice(view.to_string().as_bytes());
        let (_, view) = admin(
            &d,
            &ops_token,
            reqwest::Method::GET,
            &format!("/v1/keysets/{ks}"),
        )
        .await;
        let kid = view["active_kid"].as_str().unwrap().to_owned();
        let (_, revoked) = admin(
            &d,
            &ops_token,
            reqwest::Method::POST,
            &format!("/v1/keysets/{ks}/keys/{kid}/revoke"),
        )
        .await;
        seen.extend_from_slice(revoked.to_string().as_bytes());
        snapshot(&mut keys);
    }
    let log_lines = d.logs.clone();
    assert!(d.stop().success());
    let log = log_lines.lock().unwrap().join("\n");
    assert!(
        log.len() > 10_000,
        "the trace log is suspiciously short: {} bytes",
        log.len()
    );
    // Every API request is traced (its id, method and path, then its status and latency);
    // no credential is, whatever the level.
    let finished: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l["message"] == "finished processing request")
        .collect();
    assert!(
        finished.iter().any(|l| l["status"] == 200
            && l["latency_us"].is_u64()
            && l["span"]["path"] == "/v1/keysets/ec/sign"
            && l["span"]["method"] == "POST"
            && l["span"]["id"]
                .as_str()
                .and_then(|id| id.split_once('-'))
                .is_some_and(
                    |(start, n)| u64::from_str_radix(start, 16).is_ok() && n.parse::<u64>().is_ok()
                )),
        "no trace of a signed request: {finished:?}"
    );
    for secret in [&token, &ops_token] {
        assert!(
            !log.contains(secret.as_str()),
            "a bearer token is in the log"
        );
    }
    seen.extend_from_slice(log.as_bytes());
    seen.extend_from_slice(&std::fs::read(dir.path().join("data/audit.log")).unwrap());
    for entry in std::fs::read_dir(dir.path().join("data/keys")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "state") {
            seen.extend_from_slice(&std::fs::read(&path).unwrap());
        }
    }
    // PEM and wrapped base64 break lines: search a copy without line breaks too.
    let flat: Vec<u8> = seen
        .iter()
        .copied()
        .filter(|b| !matches!(b, b'\n' | b'\r'))
        .collect();
    let flat_escaped: Vec<u8> = String::from_utf8_lossy(&flat)
        .replace("\\n", "")
        .into_bytes();
    assert!(
        keys.len() >= 9,
        "expected at least 9 private keys, found {}",
        keys.len()
    );
    let mut checked = 0;
    for (name, der) in &keys {
        for (part, bytes) in secrets(der) {
            for (encoding, needle) in encodings(&bytes) {
                checked += 1;
                for hay in [&seen, &flat, &flat_escaped] {
                    assert!(
                        !contains(hay, &needle),
                        "key {name}: {part} found as {encoding}"
                    );
                }
            }
        }
    }
    // The scan can find what it looks for: a planted component is detected.
    let (_, der) = &keys[0];
    let (_, d_bytes) = secrets(der).pop().unwrap();
    let mut planted = seen.clone();
    planted.extend_from_slice(URL_SAFE_NO_PAD.encode(&d_bytes).as_bytes());
    assert!(encodings(&d_bytes)
        .iter()
        .any(|(_, n)| contains(&planted, n)));
    assert!(checked >= 9 * 2 * 5, "only {checked} needles");
}

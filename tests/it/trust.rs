//! The trust boundary of the state store: whoever can write a key set's lifecycle document
//! (the data directory, the KV path) cannot put a key into the JWKS, nor change the document
//! keyturn acts on. Each case runs the real binary (and real OpenBao replicas).

use crate::harness::*;
use crate::vault::{audit_log, fast_keyset, start_replicas, CONVERGENCE};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use keyturn_backend::software::SoftwareKey;
use keyturn_backend::testserver::openbao::OpenBao;
use keyturn_backend::{Algorithm, KeyType};
use serde_json::{json, Value};
use std::path::Path;
use std::time::Duration;

/// A key that is not keyturn's, and a record of it as a writer of the state store would
/// add it: published, active before the key set's own key (so it counts as retired and
/// would verify old tokens), kept a day.
fn foreign(keyset: &str, before: i64) -> (SoftwareKey, String, Value) {
    let key = SoftwareKey::generate(KeyType::EcP256).unwrap();
    let public = key.public_key().unwrap();
    let record = json!({
        "name": format!("{keyset}-00000000deadbeef"),
        "key_type": "ec-p256",
        "created_at": before - 20,
        "public_key": B64.encode(public.spki_der()),
        "kid": public.kid(),
        "published_at": before - 20,
        "activate_at": before - 10,
        "retain": 86_400,
    });
    (key, public.kid(), record)
}

/// A compact ES256 token signed by `key` under `kid`.
fn forged_token(key: &SoftwareKey, kid: &str, iss: &str) -> String {
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).unwrap())
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let input = format!(
        "{}.{}",
        b64(&json!({"alg": "ES256", "kid": kid, "typ": "JWT"})),
        b64(&json!({"iss": iss, "sub": "admin", "aud": "orders", "exp": now + 600}))
    );
    let sig = key.sign(Algorithm::ES256, input.as_bytes()).unwrap();
    format!(
        "{input}.{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sig)
    )
}

/// Whether the independent `jsonwebtoken` library accepts `token` against `jwks`.
fn verifies(token: &str, jwks: &Value) -> bool {
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks.clone()).unwrap();
    let Ok(header) = jsonwebtoken::decode_header(token) else {
        return false;
    };
    let Some(jwk) = header.kid.as_deref().and_then(|kid| set.find(kid)) else {
        return false;
    };
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&["orders"]);
    jsonwebtoken::decode::<Value>(token, &key, &validation).is_ok()
}

/// The document text a file backend's state file holds, and the file's JSON.
fn file_state(path: &Path) -> (Value, Value) {
    let file: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
    let sealed: Value = serde_json::from_str(file["data"].as_str().unwrap()).unwrap();
    let doc: Value = serde_json::from_str(sealed["document"].as_str().unwrap()).unwrap();
    (file, doc)
}

/// Writes `data` as the stored text of the state file at `path` (as its writer would).
fn write_file_state(path: &Path, mut file: Value, data: &str) {
    file["data"] = json!(data);
    write_secret(path, serde_json::to_vec(&file).unwrap());
}

/// The `/readyz` body.
async fn readyz_body(d: &Daemon) -> (u16, Value) {
    let (status, _, body) = get_public(d, "/readyz").await;
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

/// File backend. A writer of the data directory without the key-encryption key: a
/// document edited under its MAC, or stripped of it (a downgrade), is refused at start. A
/// foreign key in a document from before sealing (accepted once) is withheld: never in
/// the JWKS, so a token it signs verifies nowhere; the key set says why on /readyz, in the
/// log, the audit log and a metric.
#[tokio::test]
async fn a_writer_of_the_data_directory_cannot_publish_a_key() {
    let dir = private_dir();
    let (client, token) = token_client("svc", &["default"], "audiences = [\"orders\"]");
    let config = format!(
        "{}{}{client}",
        server_toml(dir.path()),
        keyset_toml("default", "ES256", "")
    );
    let d = Daemon::start(dir.path(), &config);
    let body = json!({"claims": {"aud": "orders"}});
    assert_eq!(sign(&d, "default", &token, body.clone()).await.0, 200);
    let ours = kids(&jwks(&d, "default").await);
    assert!(d.stop().success());

    let data = dir.path().join("data");
    let state = data.join("keys/default.state");
    let config_path = dir.path().join("keyturn.toml");
    let saved = std::fs::read(&state).unwrap();
    let (file, doc) = file_state(&state);
    let active_from = doc["keys"][0]["activate_at"].as_i64().unwrap();
    let (key, foreign_kid, record) = foreign("default", active_from);
    let mut injected = doc.clone();
    injected["keys"].as_array_mut().unwrap().insert(0, record);
    let injected_text = serde_json::to_string(&injected).unwrap();

    // Under the old MAC: refused.
    let sealed: Value = serde_json::from_str(file["data"].as_str().unwrap()).unwrap();
    let mut edited = sealed.clone();
    edited["document"] = json!(injected_text);
    write_file_state(&state, file.clone(), &edited.to_string());
    let log = Daemon::refused(&config_path);
    assert!(
        log.contains("fails its authentication") && log.contains("its MAC does not match"),
        "{log}"
    );
    // Without a MAC (a downgrade to a document from before sealing): refused, as the ledger
    // remembers a sealed one.
    write_file_state(&state, file.clone(), &injected_text);
    let log = Daemon::refused(&config_path);
    assert!(log.contains("has no MAC"), "{log}");

    // As on a data directory of a keyturn from before sealing (its ledger says nothing of
    // it): accepted once, and the foreign record withheld.
    let ledger_path = data.join("keysets.json");
    let mut ledger: Value = serde_json::from_slice(&std::fs::read(&ledger_path).unwrap()).unwrap();
    ledger["keysets"]["default"]
        .as_object_mut()
        .unwrap()
        .remove("sealed");
    write_secret(&ledger_path, serde_json::to_vec(&ledger).unwrap());
    let d = Daemon::spawn(config_path.clone(), &[]);
    let served = jwks(&d, "default").await;
    assert_eq!(kids(&served), ours, "only keyturn's keys are published");
    let forged = forged_token(&key, &foreign_kid, "https://issuer.test/default");
    assert!(!verifies(&forged, &served));
    let (status, ready) = readyz_body(&d).await;
    assert_eq!(status, 503);
    let reason = ready["reasons"]["default"].as_str().unwrap_or_default();
    assert!(
        reason.contains(&foreign_kid) && reason.contains("withheld"),
        "{ready}"
    );
    assert!(
        d.log_text()
            .contains("withheld from the JWKS and from signing"),
        "{}",
        d.log_text()
    );
    let metrics = metrics_text(&d).await;
    assert!(metrics.contains("keyturn_withheld_keys{keyset=\"default\"} 1"));
    // Not ready, as /readyz says: the gauge the alert rules watch.
    assert!(
        metrics.contains("keyturn_ready{keyset=\"default\"} 0"),
        "{metrics}"
    );
    eventually(
        Duration::from_secs(5),
        "the withheld key audited",
        || async {
            audit_field(&data.join("audit.log"), "withheld", "default", "kid")
                == std::slice::from_ref(&foreign_kid)
        },
    )
    .await;
    // keyturn's own key still signs, and its tokens verify.
    let (status, signed) = sign(&d, "default", &token, body.clone()).await;
    assert_eq!(status, 200);
    assert!(verifies(signed["token"].as_str().unwrap(), &served));
    assert!(d.stop().success());

    // Restored: ready again.
    std::fs::write(&state, saved).unwrap();
    let d = Daemon::spawn(config_path, &[]);
    assert_eq!(readyz(&d).await, 200);
    assert!(d.stop().success());
}

/// Vault, two replicas running: whoever can write the KV path cannot put a key into the
/// JWKS. A document without a MAC is not acted on (the replicas keep the keys they
/// publish and say they are not ready); one that carries a valid MAC (made by someone who
/// may use the transit HMAC key but not sign) still gets no foreign key published.
#[tokio::test]
async fn a_writer_of_the_kv_path_cannot_publish_a_key() {
    let Some(bao) = OpenBao::start() else { return };
    let root = private_dir();
    let backend = crate::vault::vault_backend(&bao, root.path());
    let replicas = start_replicas(
        root.path(),
        2,
        |dir| {
            format!(
                "{}{}",
                server_toml(dir),
                fast_keyset("shared", "ES256", "1h", &backend)
            )
        },
        &[],
    );
    let ours = kids(&jwks(&replicas[0], "shared").await);
    assert_eq!(kids(&jwks(&replicas[1], "shared").await), ours);
    let (status, body) = bao.request("GET", "secret/data/keyturn/shared", None);
    assert_eq!(status, 200, "{body}");
    let sealed: Value =
        serde_json::from_str(body["data"]["data"]["document"].as_str().unwrap()).unwrap();
    let mut doc: Value = serde_json::from_str(sealed["document"].as_str().unwrap()).unwrap();
    let active_from = doc["keys"][0]["activate_at"].as_i64().unwrap();
    let (key, foreign_kid, record) = foreign("shared", active_from);
    doc["keys"].as_array_mut().unwrap().insert(0, record);
    let text = doc.to_string();
    let put = |stored: String| {
        let (status, body) = bao.request(
            "POST",
            "secret/data/keyturn/shared",
            Some(json!({"data": {"document": stored}})),
        );
        assert_eq!(status, 200, "{body}");
    };
    let forged = forged_token(&key, &foreign_kid, "https://issuer.test/shared");
    let all_refuse = |needle: &'static str| {
        let replicas = &replicas;
        let ours = &ours;
        let forged = &forged;
        async move {
            for d in replicas {
                let served = jwks(d, "shared").await;
                assert_eq!(&kids(&served), ours, "a replica published another key");
                assert!(!verifies(forged, &served));
                let (status, ready) = readyz_body(d).await;
                let reason = ready["reasons"]["shared"].as_str().unwrap_or_default();
                if status != 503 || !reason.contains(needle) {
                    return false;
                }
            }
            true
        }
    };

    // Without a MAC.
    put(text.clone());
    eventually(
        CONVERGENCE * 2,
        "both replicas refuse the unsealed document",
        || all_refuse("fails its authentication"),
    )
    .await;

    // With a MAC made through transit (the HMAC key, not a signing key).
    let digest = keyturn_backend::state_digest("shared", text.as_bytes());
    let (status, body) = bao.request(
        "POST",
        "transit/hmac/keyturn-state-mac",
        Some(json!({"input": B64.encode(digest), "key_version": 1, "algorithm": "sha2-256"})),
    );
    assert_eq!(status, 200, "{body}");
    let mac = body["data"]["hmac"].as_str().unwrap().as_bytes().to_vec();
    put(json!({"min_reader": 2, "document": text, "mac": B64.encode(mac)}).to_string());
    eventually(
        CONVERGENCE * 2,
        "both replicas withhold the foreign key",
        || all_refuse("withheld"),
    )
    .await;
    // Each replica's audit log records it (its line follows the view within milliseconds).
    for d in &replicas {
        eventually(CONVERGENCE, "the withheld key audited", || async {
            audit_field(&audit_log(d), "withheld", "shared", "kid").contains(&foreign_kid)
        })
        .await;
    }
}

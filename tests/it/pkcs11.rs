//! The daemon on the pkcs11 backend against SoftHSM tokens made by each test in a
//! temporary token directory: every algorithm verified by independent libraries, a token
//! that goes away and comes back, and a mechanism the token lacks named at check-config
//! and at the start.

use crate::api::{sign_and_verify, verify_independently};
use crate::harness::*;
use crate::interop::{PyJwt, ALGS};
use crate::vault::{fast_keyset, unix_now};
use keyturn_backend::testserver::softhsm::{self, SoftHsm};
use serde_json::json;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A SoftHSM token labelled `label` in a token directory of its own under `dir`, the PIN
/// file, and the daemon's `backend = { ... }` line and environment.
struct Token {
    hsm: SoftHsm,
    backend: String,
}

impl Token {
    fn make(dir: &Path, label: &str, conf_extra: &str) -> Option<Token> {
        let hsm = SoftHsm::start()?;
        if !conf_extra.is_empty() {
            let conf = std::fs::read_to_string(&hsm.conf).unwrap();
            std::fs::write(&hsm.conf, format!("{conf}{conf_extra}\n")).unwrap();
        }
        hsm.init_token(label);
        let pin_file = dir.join("token.pin");
        write_secret(&pin_file, format!("{}\n", softhsm::PIN));
        let backend = format!(
            "backend = {{ type = \"pkcs11\", module = \"{}\", token_label = \"{label}\", pin_file = \"{}\" }}\n",
            hsm.module.display(),
            pin_file.display()
        );
        Some(Token { hsm, backend })
    }

    fn env(&self) -> [(&str, &str); 1] {
        [("SOFTHSM2_CONF", self.hsm.conf.to_str().unwrap())]
    }

    /// What another PKCS#11 client (OpenSC's pkcs11-tool) lists of the token's objects
    /// of `kind` ("privkey", "pubkey", "secrkey").
    fn list(&self, label: &str, kind: &str) -> String {
        let out = Command::new("pkcs11-tool")
            .arg("--module")
            .arg(&self.hsm.module)
            .args(["--token-label", label, "--login", "--pin", softhsm::PIN])
            .args(["--list-objects", "--type", kind])
            .env("SOFTHSM2_CONF", &self.hsm.conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// The key names keyturn's objects of `kind` carry (`keyturn:<name>` labels).
    fn key_names(&self, label: &str, kind: &str) -> Vec<String> {
        let mut names: Vec<String> = self
            .list(label, kind)
            .lines()
            .filter_map(|l| l.trim().strip_prefix("label:      keyturn:"))
            .map(str::to_owned)
            .collect();
        names.sort();
        names
    }
}

#[tokio::test]
async fn pkcs11_every_algorithm_signs_tokens_that_independent_libraries_verify() {
    let dir = private_dir();
    let Some(token) = Token::make(dir.path(), "keyturn", "") else {
        return;
    };
    let Some(mut py) = PyJwt::start() else { return };
    let mut config = server_toml(dir.path());
    for alg in ALGS {
        // Each RSA size once.
        let bits = match alg {
            "RS384" => "rsa_bits = 3072\n",
            "RS512" => "rsa_bits = 4096\n",
            _ => "",
        };
        config += &keyset_toml(
            &alg.to_lowercase(),
            alg,
            &format!("{bits}{}", token.backend),
        );
    }
    let names: Vec<String> = ALGS.iter().map(|a| a.to_lowercase()).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let (client, bearer) = token_client(
        "issuer",
        &refs,
        "audiences = [\"orders\"]\nsubject_pattern = \"*\"",
    );
    config += &client;
    let d = Daemon::start_with_env(dir.path(), &config, &token.env());
    for alg in ALGS {
        let ks = alg.to_lowercase();
        // jsonwebtoken (keyturn's own verifier for ES512, which jsonwebtoken lacks)...
        let body = sign_and_verify(&d, &ks, alg, &bearer).await;
        // ...and PyJWT with its JWKS client, for every algorithm.
        let result = py.verify(json!({
            "jwks": format!("{}/keysets/{ks}/jwks.json", d.jwks),
            "token": body["token"], "alg": alg,
            "issuer": format!("https://issuer.test/{ks}"), "audience": "orders"}));
        assert_eq!(result["ok"], true, "{alg}: {result}");
        assert_eq!(result["kid"], body["kid"]);
    }
    // The keys are in the token, as another PKCS#11 client sees it: a private and a
    // public object per key (each key set has its active and its next key), never
    // extractable.
    let private = token.list("keyturn", "privkey");
    for ks in &names {
        let count = private
            .matches(&format!("label:      keyturn:{ks}-"))
            .count();
        assert_eq!(count, 2, "{ks}: {private}");
    }
    assert_eq!(
        private.matches("never extractable").count(),
        2 * ALGS.len(),
        "{private}"
    );
    assert_eq!(
        token.key_names("keyturn", "privkey"),
        token.key_names("keyturn", "pubkey")
    );
}

/// A revoked key leaves the JWKS at once and both its objects leave the token.
#[tokio::test]
async fn pkcs11_a_revoked_key_is_destroyed_in_the_token() {
    let dir = private_dir();
    let Some(token) = Token::make(dir.path(), "keyturn", "") else {
        return;
    };
    let (client, bearer) = token_client(
        "ops",
        &["default"],
        "audiences = [\"orders\"]\nadmin = true",
    );
    let config = format!(
        "{}{}{client}",
        server_toml(dir.path()),
        keyset_toml("default", "ES256", &token.backend)
    );
    let d = Daemon::start_with_env(dir.path(), &config, &token.env());
    let before = token.key_names("keyturn", "privkey");
    assert_eq!(before.len(), 2, "{before:?}");
    let (status, body) = sign(&d, "default", &bearer, json!({"claims": {"aud": "orders"}})).await;
    assert_eq!(status, 200, "{body}");
    let kid = body["kid"].as_str().unwrap().to_owned();
    let (status, body) = admin(
        &d,
        &bearer,
        reqwest::Method::POST,
        &format!("/v1/keysets/default/keys/{kid}/revoke"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert!(!kids(&jwks(&d, "default").await).contains(&kid));
    eventually(
        Duration::from_secs(20),
        "the revoked key's objects are destroyed",
        || {
            let before = &before;
            let token = &token;
            async move {
                let private = token.key_names("keyturn", "privkey");
                let public = token.key_names("keyturn", "pubkey");
                let gone: Vec<&String> = before.iter().filter(|n| !private.contains(n)).collect();
                gone.len() == 1 && !public.contains(gone[0]) && private == public
            }
        },
    )
    .await;
}

/// The token's directory is moved out of SoftHSM's token directory (the token is gone,
/// as an unplugged or unreachable HSM is), and comes back as a restored copy in another
/// directory (as a replacement HSM restored from a backup would). While it is gone, until a scheduled
/// activation has passed: the JWKS is served unchanged (same bytes and ETag), signing
/// answers 503 `backend_unavailable` with Retry-After, /readyz 503. After it is back, the
/// daemon recovers without help (no signing request): /readyz 200, then signing 200 with
/// the key that was pending before, verified by jsonwebtoken.
#[tokio::test]
async fn pkcs11_token_outage_serves_jwks_and_recovers() {
    let dir = private_dir();
    let Some(token) = Token::make(dir.path(), "keyturn", "") else {
        return;
    };
    let (client, bearer) = token_client(
        "issuer",
        &["default"],
        "audiences = [\"orders\"]\nsubject_pattern = \"*\"\nadmin = true",
    );
    let config = format!(
        "{}{}{client}",
        server_toml(dir.path()),
        fast_keyset("default", "ES256", "5s", &token.backend)
    );
    let d = Daemon::start_with_env(dir.path(), &config, &token.env());
    let ok = json!({"claims": {"sub": "alice", "aud": "orders"}, "ttl": "2s"});
    let (status, before) = sign(&d, "default", &bearer, ok.clone()).await;
    assert_eq!(status, 200, "{before}");
    assert_eq!(readyz(&d).await, 200);
    let view = keyset_view(&d, &bearer, "default").await;
    let next_activation = view["next_activation"].as_i64().unwrap();
    let jwks_path = "/keysets/default/jwks.json";
    let (_, headers, body) = get_public(&d, jwks_path).await;
    let etag = headers["etag"].clone();
    let kids_before = kids(&serde_json::from_slice(&body).unwrap());

    let [token_dir] = token.hsm.token_dirs().try_into().unwrap();
    let away = dir.path().join("unplugged");
    std::fs::rename(&token_dir, &away).unwrap();
    let url = format!("{}/v1/keysets/default/sign", d.api);
    eventually(
        Duration::from_secs(30),
        "the scheduled activation passes while the token is gone",
        || {
            let (d, url, ok, body, etag, bearer) = (&d, &url, &ok, &body, &etag, &bearer);
            async move {
                let (status, headers, served) = get_public(d, jwks_path).await;
                assert_eq!(status, 200);
                assert_eq!(&served, body, "the JWKS changed while the token was gone");
                assert_eq!(&headers["etag"], etag);
                let r = http()
                    .post(url)
                    .bearer_auth(bearer)
                    .json(ok)
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status(), 503);
                assert!(r.headers().contains_key("retry-after"));
                let err: serde_json::Value = r.json().await.unwrap();
                assert_eq!(err["error"]["code"], "backend_unavailable", "{err}");
                assert_eq!(readyz(d).await, 503);
                unix_now() > next_activation
            }
        },
    )
    .await;

    std::fs::rename(&away, token_dir.with_extension("restored")).unwrap();
    eventually(Duration::from_secs(40), "/readyz recovers", || async {
        readyz(&d).await == 200
    })
    .await;
    let (status, after) = sign(&d, "default", &bearer, ok).await;
    assert_eq!(status, 200, "{after}");
    let jws = after["token"].as_str().unwrap();
    verify_independently(&d, "default", "ES256", jws, "orders").await;
    let signer = after["kid"].as_str().unwrap().to_owned();
    assert!(
        kids_before.contains(&signer),
        "{signer} not in {kids_before:?}"
    );
    assert_ne!(after["kid"], before["kid"]);
}

/// A token without CKM_EDDSA (SoftHSM told to leave it out): check-config and serve both
/// name the missing mechanism for an EdDSA key set.
#[tokio::test]
async fn pkcs11_missing_mechanism_is_named_at_check_config_and_start() {
    let dir = private_dir();
    // SoftHSM 2.6.1 skips the last name of the list, hence the name twice.
    let no_eddsa = "slots.mechanisms = -CKM_EDDSA,CKM_EDDSA";
    let Some(token) = Token::make(dir.path(), "keyturn", no_eddsa) else {
        return;
    };
    let config = format!(
        "{}{}{}",
        server_toml(dir.path()),
        keyset_toml("edwards", "EdDSA", &token.backend),
        keyset_toml("curves", "ES256", &token.backend)
    );
    let path = dir.path().join("keyturn.toml");
    std::fs::write(&path, &config).unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
            .args(args)
            .arg(&path)
            .envs(token.env())
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["check-config"]);
    assert!(!ok, "check-config passed without CKM_EDDSA");
    assert!(
        err.contains("key set \"edwards\"")
            && err.contains("CKM_EDDSA")
            && err.contains("EdDSA needs"),
        "{err}"
    );
    let (ok, err) = run(&["serve", "--config"]);
    assert!(!ok);
    assert!(
        err.contains("\"edwards\"") && err.contains("CKM_EDDSA"),
        "{err}"
    );

    // Without the EdDSA key set, the same token passes and says what it checked.
    let config = format!(
        "{}{}",
        server_toml(dir.path()),
        keyset_toml("curves", "ES256", &token.backend)
    );
    std::fs::write(&path, &config).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_keyturn"))
        .arg("check-config")
        .arg(&path)
        .envs(token.env())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains("token \"keyturn\" offers the mechanisms ES256 needs"),
        "{said}"
    );
}

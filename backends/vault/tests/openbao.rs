//! The vault backend against a real OpenBao server, one server per test.
//!
//! Without the `bao` binary these tests fail under CI and print a SKIPPED notice otherwise
//! (see `keyturn_backend::testserver::find_binary`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyturn_backend::testserver::openbao::OpenBao;
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType};
use keyturn_backend_vault::{VaultAuth, VaultBackend, VaultConfig};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The shipped policy, with its mount prefixes replaced as its comment tells operators to.
/// Its path is read when the test runs: cargo reuses a test binary built from another
/// checkout that shares CARGO_TARGET_DIR, and `env!` would point into that checkout.
fn policy(transit: &str, kv: &str) -> String {
    let crate_dir = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap());
    std::fs::read_to_string(crate_dir.join("../../config/vault-policy.hcl"))
        .unwrap()
        .replace("\"transit/", &format!("\"{transit}/"))
        .replace("\"secret/", &format!("\"{kv}/"))
}

fn secret_file(dir: &Path, name: &str, content: &str, mode: u32) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, format!("{content}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    path
}

fn token_config(bao: &OpenBao, token_file: PathBuf) -> VaultConfig {
    VaultConfig::new(bao.address(), VaultAuth::Token { token_file })
}

/// Polls `check` until it yields a value; fails after `timeout`.
async fn eventually<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, BackendError>, call: &str) {
    match result {
        Err(e @ BackendError::Unavailable { .. }) => assert!(e.is_retryable()),
        other => panic!("{call} during an outage: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn conformance_with_approle_and_the_shipped_policy() {
    let Some(bao) = OpenBao::start() else { return };
    bao.enable_transit("transit");
    bao.put_policy("keyturn", &policy("transit", "secret"));
    let (role_id, secret_id) = bao.create_approle("keyturn", &["keyturn"], "1h", "4h");
    let dir = tempfile::tempdir().unwrap();
    let secret_id_file = secret_file(dir.path(), "secret-id", &secret_id, 0o600);
    let config = VaultConfig::new(
        bao.address(),
        VaultAuth::AppRole {
            role_id,
            secret_id_file,
        },
    );
    let backend = VaultBackend::connect(&config).await.unwrap();
    assert!(backend.shared());
    keyturn_backend::conformance::run(&backend, "conf").await;

    // Keys are created unexportable and without plaintext backup.
    let key = bao.call("GET", "transit/keys/conf-es256", None);
    assert_eq!(key["data"]["exportable"], false);
    assert_eq!(key["data"]["allow_plaintext_backup"], false);
}

#[tokio::test]
async fn conformance_on_custom_mounts_with_a_token_file() {
    let Some(bao) = OpenBao::start() else { return };
    bao.enable_transit("kt-transit");
    bao.enable_kv2("kt-kv");
    bao.put_policy("kt", &policy("kt-transit", "kt-kv"));
    let token = bao.create_token(&["kt"], "1h");
    let dir = tempfile::tempdir().unwrap();
    let mut config = token_config(&bao, secret_file(dir.path(), "token", &token, 0o600));
    config.transit_mount = "kt-transit".into();
    config.kv_mount = "kt-kv".into();
    let backend = VaultBackend::connect(&config).await.unwrap();
    // A transit mount with no key answers LIST with 404.
    assert_eq!(backend.list_keys("").await.unwrap(), Vec::<String>::new());
    keyturn_backend::conformance::run(&backend, "custom").await;
    assert_eq!(bao.request("GET", "transit/keys/custom-es256", None).0, 404);
    let state = bao.call("GET", "kt-kv/data/keyturn/custom-state", None);
    assert_eq!(state["data"]["data"]["document"], "{\"n\":2}");
}

#[tokio::test]
async fn secret_files_readable_by_others_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    // Refused before any network call: no server needed.
    let address = "http://127.0.0.1:9";
    let token_file = secret_file(dir.path(), "token", "s.secret", 0o644);
    let config = VaultConfig::new(address, VaultAuth::Token { token_file });
    let err = VaultBackend::connect(&config).await.err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, BackendError::Rejected(_)), "{msg}");
    assert!(msg.contains("0644") && msg.contains("chmod 600"), "{msg}");
    assert!(!msg.contains("s.secret"), "{msg}");

    let secret_id_file = secret_file(dir.path(), "secret-id", "sid", 0o640);
    let config = VaultConfig::new(
        address,
        VaultAuth::AppRole {
            role_id: "role".into(),
            secret_id_file,
        },
    );
    let msg = VaultBackend::connect(&config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("chmod 600"), "{msg}");

    let token_file = secret_file(dir.path(), "token2", "t", 0o600);
    let bad_address = VaultConfig::new("vault.example.com:8200", VaultAuth::Token { token_file });
    let msg = VaultBackend::connect(&bad_address)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("invalid Vault address"), "{msg}");
}

#[tokio::test]
async fn bad_credentials_and_missing_permissions_are_clear_refusals() {
    let Some(bao) = OpenBao::start() else { return };
    bao.enable_transit("transit");
    let dir = tempfile::tempdir().unwrap();

    let bogus = token_config(&bao, secret_file(dir.path(), "bogus", "s.bogus", 0o600));
    let err = VaultBackend::connect(&bogus).await.err().unwrap();
    assert!(
        matches!(&err, BackendError::Rejected(m) if m.contains("does not accept the token")),
        "{err}"
    );
    assert!(!err.to_string().contains("s.bogus"));

    // A token allowed transit only: state writes are denied, with the policy named.
    bao.put_policy(
        "transit-only",
        r#"path "transit/*" { capabilities = ["create", "read", "update", "list"] }"#,
    );
    let token = bao.create_token(&["transit-only"], "1h");
    let config = token_config(&bao, secret_file(dir.path(), "token", &token, 0o600));
    let backend = VaultBackend::connect(&config).await.unwrap();
    backend.create_key("k1", KeyType::EcP256).await.unwrap();
    let err = backend.store_state("ks", b"{}", None).await.unwrap_err();
    assert!(
        matches!(&err, BackendError::Rejected(m) if m.contains("config/vault-policy.hcl")),
        "{err}"
    );
    assert!(!err.to_string().contains(&token));
    // Transit would sign with whatever the key is; the backend refuses a mismatched algorithm.
    let err = backend
        .sign("k1", Algorithm::EdDSA, b"msg")
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Rejected(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewable_token_is_renewed_until_the_backend_is_dropped() {
    let Some(bao) = OpenBao::start() else { return };
    bao.enable_transit("transit");
    bao.put_policy("keyturn", &policy("transit", "secret"));
    let token = bao.create_token(&["keyturn"], "3s");
    let dir = tempfile::tempdir().unwrap();
    let config = token_config(&bao, secret_file(dir.path(), "token", &token, 0o600));
    let backend = VaultBackend::connect(&config).await.unwrap();

    // Renewed at least twice: the token outlives its 3 s TTL.
    let first = eventually("a first renewal", Duration::from_secs(15), || {
        bao.lookup_token(&token)?["last_renewal_time"].as_i64()
    })
    .await;
    eventually("a second renewal", Duration::from_secs(15), || {
        let renewed = bao.lookup_token(&token)?["last_renewal_time"].as_i64()?;
        (renewed > first).then_some(())
    })
    .await;
    backend.health().await.unwrap();
    backend
        .create_key("renewed", KeyType::Ed25519)
        .await
        .unwrap();

    // The renewal task stops with the backend: the token then expires.
    drop(backend);
    eventually("the token to expire", Duration::from_secs(15), || {
        bao.lookup_token(&token).is_none().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_logs_in_again_when_its_token_reaches_max_ttl() {
    let Some(bao) = OpenBao::start() else { return };
    bao.enable_transit("transit");
    bao.put_policy("keyturn", &policy("transit", "secret"));
    let (role_id, secret_id) = bao.create_approle("short", &["keyturn"], "2s", "4s");
    let dir = tempfile::tempdir().unwrap();
    let config = VaultConfig::new(
        bao.address(),
        VaultAuth::AppRole {
            role_id,
            secret_id_file: secret_file(dir.path(), "secret-id", &secret_id, 0o600),
        },
    );
    let before = bao.token_accessors();
    let backend = VaultBackend::connect(&config).await.unwrap();
    let first: Vec<String> = bao
        .token_accessors()
        .into_iter()
        .filter(|a| !before.contains(a))
        .collect();
    assert_eq!(first.len(), 1, "one login, one token");

    // The first token dies at its max TTL; the backend must have logged in again by then.
    eventually("the first token to expire", Duration::from_secs(20), || {
        bao.lookup_accessor(&first[0]).is_none().then_some(())
    })
    .await;
    backend.health().await.unwrap();
    backend
        .create_key("after-relogin", KeyType::EcP256)
        .await
        .unwrap();
    backend.store_state("relogin", b"{}", None).await.unwrap();
}

#[tokio::test]
async fn sealed_or_dead_vault_gives_retryable_errors() {
    let Some(mut bao) = OpenBao::start() else {
        return;
    };
    bao.enable_transit("transit");
    let dir = tempfile::tempdir().unwrap();
    let config = token_config(
        &bao,
        secret_file(dir.path(), "token", &bao.root_token, 0o600),
    );
    let backend = VaultBackend::connect(&config).await.unwrap();
    backend.create_key("k1", KeyType::EcP384).await.unwrap();
    backend.store_state("ks", b"{}", None).await.unwrap();

    bao.call("PUT", "sys/seal", None);
    assert_unavailable(backend.sign("k1", Algorithm::ES384, b"m").await, "sign");
    assert_unavailable(backend.health().await, "health");

    bao.stop();
    assert_unavailable(backend.sign("k1", Algorithm::ES384, b"m").await, "sign");
    assert_unavailable(backend.public_key("k1").await, "public_key");
    assert_unavailable(backend.list_keys("").await, "list_keys");
    assert_unavailable(backend.load_state("ks").await, "load_state");
    assert_unavailable(
        backend.store_state("ks", b"{}", Some(1)).await,
        "store_state",
    );
    assert_unavailable(backend.destroy("k1").await, "destroy");
    assert_unavailable(backend.health().await, "health");
    assert_unavailable(VaultBackend::connect(&config).await.map(drop), "connect");
}

#[tokio::test]
async fn a_persistent_server_keeps_keys_and_state_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut bao) = OpenBao::start_persistent(&dir.path().join("bao")) else {
        return;
    };
    bao.enable_transit("transit");
    bao.enable_kv2("secret");
    let config = token_config(
        &bao,
        secret_file(dir.path(), "token", &bao.root_token, 0o600),
    );
    let backend = VaultBackend::connect(&config).await.unwrap();
    let public = backend.create_key("k1", KeyType::Rsa2048).await.unwrap();
    let version = backend.store_state("ks", b"{\"a\":1}", None).await.unwrap();

    bao.stop();
    assert_unavailable(backend.public_key("k1").await, "public_key");
    drop(bao);
    let bao = OpenBao::start_persistent(&dir.path().join("bao")).unwrap();
    assert_eq!(
        bao.address(),
        config.address,
        "same address after a restart"
    );

    // The same backend works again once Vault is back.
    assert_eq!(backend.public_key("k1").await.unwrap(), public);
    let state = backend.load_state("ks").await.unwrap().unwrap();
    assert_eq!(
        (state.data.as_slice(), state.version),
        (&b"{\"a\":1}"[..], version)
    );
    let sig = backend.sign("k1", Algorithm::PS256, b"m").await.unwrap();
    assert!(public.jwk().verify(Algorithm::PS256, b"m", &sig));
}

#[tokio::test]
async fn tls_with_a_custom_ca_file() {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let Some(bao) = OpenBao::start_tls(&certs) else {
        return;
    };
    let mut config = token_config(&bao, secret_file(dir.path(), "token", "root", 0o600));
    assert!(config.address.starts_with("https://"));

    // Not signed by a system root: refused without the CA file.
    let err = VaultBackend::connect(&config).await.err().unwrap();
    assert!(matches!(err, BackendError::Unavailable { .. }), "{err}");
    assert!(err.to_string().contains("ca_file"), "{err}");

    config.ca_file = Some(certs.join("vault-ca.pem"));
    let backend = VaultBackend::connect(&config).await.unwrap();
    backend.health().await.unwrap();
    let version = backend.store_state("tls", b"{}", None).await.unwrap();
    assert_eq!(
        backend.load_state("tls").await.unwrap().unwrap().version,
        version
    );

    let mut plain = config.clone();
    plain.address = plain.address.replace("https://", "http://");
    let err = VaultBackend::connect(&plain).await.err().unwrap();
    assert!(err.to_string().contains("ca_file"), "{err}");
}

/// A transit key whose private half could leave Vault (exportable, or with plaintext backup
/// allowed) is refused, whoever made it: as a signing key and as the state MAC key.
#[tokio::test]
async fn keys_that_could_leave_vault_are_refused() {
    let Some(bao) = OpenBao::start() else { return };
    bao.enable_transit("transit");
    bao.enable_kv2("secret");
    let dir = tempfile::tempdir().unwrap();
    let root = secret_file(dir.path(), "token", "root", 0o600);
    let backend = VaultBackend::connect(&token_config(&bao, root))
        .await
        .unwrap();
    for (name, option) in [
        ("ks-exportable", "exportable"),
        ("ks-backup", "allow_plaintext_backup"),
    ] {
        let body = serde_json::json!({"type": "ecdsa-p256", "exportable": true, option: true});
        let (status, answer) = bao.request("POST", &format!("transit/keys/{name}"), Some(body));
        assert!(status < 300, "{answer}");
        for err in [
            backend.public_key(name).await.unwrap_err(),
            backend.create_key(name, KeyType::EcP256).await.unwrap_err(),
        ] {
            assert!(
                matches!(&err, BackendError::Rejected(m) if m.contains("could leave Vault")),
                "{name}: {err}"
            );
        }
    }
    let body = serde_json::json!({"type": "aes256-gcm96", "exportable": true});
    let (status, answer) = bao.request("POST", "transit/keys/keyturn-state-mac", Some(body));
    assert!(status < 300, "{answer}");
    let err = backend.state_mac("ks", b"{}").await.unwrap_err();
    assert!(err.to_string().contains("could leave Vault"), "{err}");
}

//! The conformance suite: what every backend must do, checked with one call.
//!
//! ```text
//! keyturn_backend::conformance::run(&my_backend, "unique-prefix").await;
//! ```
//!
//! It panics with a message naming the broken rule. `prefix` keeps key and state names
//! apart when several runs share one server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::{Algorithm, BackendError, KeyBackend, KeyType};

const MESSAGE: &[u8] = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJjb25mb3JtYW5jZSJ9";

/// Runs every check against `backend`.
pub async fn run(backend: &dyn KeyBackend, prefix: &str) {
    keys_sign_and_verify(backend, prefix).await;
    errors_and_idempotence(backend, prefix).await;
    state_check_and_set(backend, prefix).await;
    state_authentication(backend, prefix).await;
    backend
        .health()
        .await
        .expect("health() fails on a working backend");
}

/// Every supported algorithm: create, read back, sign, verify with the public JWK.
pub async fn keys_sign_and_verify(backend: &dyn KeyBackend, prefix: &str) {
    let mut rsa_key: Option<(String, crate::PublicKey)> = None;
    for alg in Algorithm::ALL {
        if !backend.supports(alg) {
            continue;
        }
        // One RSA-2048 key serves all six RSA algorithms: key generation is slow.
        let (name, public) = match (&rsa_key, alg.is_rsa()) {
            (Some((name, public)), true) => (name.clone(), public.clone()),
            _ => {
                let key_type = alg.key_type(2048).unwrap();
                let name = format!("{prefix}-{}", alg.as_str().to_lowercase());
                let public = backend
                    .create_key(&name, key_type)
                    .await
                    .unwrap_or_else(|e| panic!("create_key({alg}) failed: {e}"));
                assert_eq!(
                    public.key_type(),
                    key_type,
                    "create_key returned another key type"
                );
                let again = backend.create_key(&name, key_type).await.unwrap();
                assert_eq!(again, public, "create_key is not idempotent for {alg}");
                let read = backend.public_key(&name).await.unwrap();
                assert_eq!(read, public, "public_key differs from create_key for {alg}");
                if alg.is_rsa() {
                    rsa_key = Some((name.clone(), public.clone()));
                }
                (name, public)
            }
        };
        let sig = backend
            .sign(&name, alg, MESSAGE)
            .await
            .unwrap_or_else(|e| panic!("sign({alg}) failed: {e}"));
        if let Some(len) = alg.fixed_signature_len() {
            assert_eq!(sig.len(), len, "{alg} signature is not in JOSE form (r||s)");
        }
        assert!(
            public.jwk().verify(alg, MESSAGE, &sig),
            "{alg} signature does not verify"
        );
        assert!(
            !public.jwk().verify(alg, b"another message", &sig),
            "{alg} signature verifies over the wrong message"
        );
        let listed = backend.list_keys(prefix).await.unwrap();
        assert!(listed.contains(&name), "list_keys misses {name}");
    }
}

/// Unknown keys, type clashes, destroy.
pub async fn errors_and_idempotence(backend: &dyn KeyBackend, prefix: &str) {
    let missing = format!("{prefix}-missing");
    assert!(
        matches!(
            backend.public_key(&missing).await,
            Err(BackendError::NotFound(_))
        ),
        "public_key of an unknown key must be NotFound"
    );
    assert!(
        backend
            .sign(&missing, Algorithm::ES256, MESSAGE)
            .await
            .is_err(),
        "sign with an unknown key must fail"
    );
    let alg = Algorithm::ALL
        .into_iter()
        .find(|a| backend.supports(*a) && !a.is_rsa())
        .unwrap();
    let key_type = alg.key_type(2048).unwrap();
    let name = format!("{prefix}-doomed");
    backend.create_key(&name, key_type).await.unwrap();
    let other = if key_type == KeyType::Ed25519 {
        KeyType::EcP256
    } else {
        KeyType::Ed25519
    };
    let other = if backend.supports(other.default_algorithm()) {
        other
    } else {
        KeyType::Rsa2048
    };
    assert!(
        backend.create_key(&name, other).await.is_err(),
        "create_key over an existing key of another type must fail"
    );
    backend.destroy(&name).await.unwrap();
    assert!(
        backend.sign(&name, alg, MESSAGE).await.is_err(),
        "a destroyed key still signs"
    );
    let listed = backend.list_keys(prefix).await.unwrap();
    assert!(
        !listed.contains(&name),
        "list_keys still shows a destroyed key"
    );
    backend
        .destroy(&name)
        .await
        .expect("destroying twice must succeed");
    backend
        .destroy(&missing)
        .await
        .expect("destroying an unknown key must succeed");

    // Replicas sharing a backend may retire the same key at the same moment: each
    // destroy must succeed whichever step the others have reached.
    let raced = format!("{prefix}-raced");
    backend.create_key(&raced, key_type).await.unwrap();
    let (a, b, c) = tokio::join!(
        backend.destroy(&raced),
        backend.destroy(&raced),
        backend.destroy(&raced)
    );
    for outcome in [a, b, c] {
        outcome.unwrap_or_else(|e| panic!("a destroy racing another failed: {e}"));
    }
    assert!(
        backend.sign(&raced, alg, MESSAGE).await.is_err(),
        "a key destroyed by racing calls still signs"
    );
    assert!(
        !backend.list_keys(prefix).await.unwrap().contains(&raced),
        "list_keys still shows a key destroyed by racing calls"
    );
}

/// Lifecycle documents: first write, check-and-set conflicts, read back.
pub async fn state_check_and_set(backend: &dyn KeyBackend, prefix: &str) {
    let keyset = format!("{prefix}-state");
    assert_eq!(
        backend.load_state(&keyset).await.unwrap(),
        None,
        "fresh key set has a state"
    );
    let v1 = backend
        .store_state(&keyset, b"{\"n\":1}", None)
        .await
        .unwrap();
    assert!(
        matches!(
            backend.store_state(&keyset, b"{}", None).await,
            Err(BackendError::Conflict)
        ),
        "a second first write must conflict"
    );
    let v2 = backend
        .store_state(&keyset, b"{\"n\":2}", Some(v1))
        .await
        .unwrap();
    assert_ne!(v1, v2, "versions must change on write");
    assert!(
        matches!(
            backend.store_state(&keyset, b"{}", Some(v1)).await,
            Err(BackendError::Conflict)
        ),
        "a write with a stale version must conflict"
    );
    let blob = backend.load_state(&keyset).await.unwrap().unwrap();
    assert_eq!(blob.data, b"{\"n\":2}");
    assert_eq!(blob.version, v2);
    // A key set's status lists are a second document under a name starting with '_' (no
    // key set's does): stored and read on their own, the lifecycle document untouched.
    let lists = format!("_status-{keyset}");
    let v = backend
        .store_state(&lists, b"{\"lists\":[]}", None)
        .await
        .unwrap();
    assert_eq!(
        backend.load_state(&lists).await.unwrap(),
        Some(crate::StateBlob::new(b"{\"lists\":[]}", v))
    );
    assert_eq!(
        backend.load_state(&keyset).await.unwrap().unwrap().data,
        b"{\"n\":2}"
    );
}

/// State MACs: deterministic, at least 128 bits, and different for another document or
/// another key set.
pub async fn state_authentication(backend: &dyn KeyBackend, prefix: &str) {
    let keyset = format!("{prefix}-mac");
    let doc = b"{\"keys\":[]}";
    let mac = backend.state_mac(&keyset, doc).await.unwrap();
    assert!(mac.len() >= 16, "a state MAC shorter than 128 bits");
    assert_eq!(
        backend.state_mac(&keyset, doc).await.unwrap(),
        mac,
        "state_mac is not deterministic"
    );
    assert_ne!(
        backend.state_mac(&keyset, b"{\"keys\":[1]}").await.unwrap(),
        mac,
        "state_mac does not depend on the document"
    );
    let other = format!("{prefix}-mac2");
    assert_ne!(
        backend.state_mac(&other, doc).await.unwrap(),
        mac,
        "state_mac does not depend on the key set"
    );
}

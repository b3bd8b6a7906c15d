//! The KMS backend against a real moto server (KMS and DynamoDB on loopback).
//!
//! Each test starts its own moto; without `moto_server` the tests fail under CI and print
//! a SKIPPED notice otherwise (see `keyturn_backend::testserver::find_binary`).

// Helpers outside #[test] functions are test code too.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use aws_sdk_kms::types::{KeyState, Tag};
use keyturn_backend::testserver::{moto, ServerProcess};
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType, PublicKey, StateBlob};
use keyturn_backend_kms::{KmsBackend, KmsConfig};
use std::sync::Once;
use std::time::{Duration, SystemTime};

/// Static dummy credentials through the standard chain (the environment), set once
/// before any test touches the AWS SDK.
fn dummy_credentials() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        std::env::set_var("AWS_ACCESS_KEY_ID", moto::ACCESS_KEY_ID);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", moto::SECRET_ACCESS_KEY);
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    });
}

fn start_moto() -> Option<ServerProcess> {
    dummy_credentials();
    moto::start()
}

fn config(moto: &ServerProcess) -> KmsConfig {
    KmsConfig {
        region: Some(moto::REGION.into()),
        endpoint: Some(moto.address.clone()),
        create_state_table: true,
        deletion_window_days: 7,
        ..KmsConfig::default()
    }
}

async fn backend(moto: &ServerProcess) -> KmsBackend {
    KmsBackend::connect(&config(moto)).await.unwrap()
}

/// A plain KMS client on moto, to look at what the backend did.
async fn raw_kms(moto: &ServerProcess) -> aws_sdk_kms::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_sdk_kms::config::Region::new(moto::REGION))
        .endpoint_url(&moto.address)
        .load()
        .await;
    aws_sdk_kms::Client::new(&sdk)
}

async fn describe(kms: &aws_sdk_kms::Client, key_id: &str) -> aws_sdk_kms::types::KeyMetadata {
    kms.describe_key()
        .key_id(key_id)
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
}

/// The KMS key id behind the alias of `name`.
async fn key_id(kms: &aws_sdk_kms::Client, name: &str) -> String {
    describe(kms, &format!("alias/keyturn/{name}"))
        .await
        .key_id()
        .to_owned()
}

/// The backend as moto can test it: without PS256/384/512, which moto signs with the
/// maximum PSS salt length instead of the hash length that KMS and RFC 7518 use (see
/// `moto_pss_signatures_are_refused_not_passed_on`).
struct WithoutPss(KmsBackend);

#[async_trait::async_trait]
impl KeyBackend for WithoutPss {
    fn kind(&self) -> &'static str {
        self.0.kind()
    }
    fn supports(&self, alg: Algorithm) -> bool {
        !matches!(alg, Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512)
            && self.0.supports(alg)
    }
    fn shared(&self) -> bool {
        self.0.shared()
    }
    async fn create_key(&self, name: &str, key_type: KeyType) -> Result<PublicKey, BackendError> {
        self.0.create_key(name, key_type).await
    }
    async fn public_key(&self, name: &str) -> Result<PublicKey, BackendError> {
        self.0.public_key(name).await
    }
    async fn sign(&self, name: &str, alg: Algorithm, msg: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.0.sign(name, alg, msg).await
    }
    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.0.destroy(name).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.0.list_keys(prefix).await
    }
    async fn state_mac(&self, keyset: &str, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.0.state_mac(keyset, data).await
    }
    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        self.0.load_state(keyset).await
    }
    async fn store_state(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        self.0.store_state(keyset, data, expected).await
    }
    async fn health(&self) -> Result<(), BackendError> {
        self.0.health().await
    }
}

#[tokio::test]
async fn kms_backend_passes_conformance_on_moto() {
    let Some(moto) = start_moto() else { return };
    let backend = backend(&moto).await;
    assert_eq!(backend.kind(), "kms");
    assert!(backend.shared());
    assert!(!backend.supports(Algorithm::EdDSA));
    assert!(backend.supports(Algorithm::PS256));
    let backend = WithoutPss(backend);
    keyturn_backend::conformance::run(&backend, "conf").await;
    // A second run on the same server and table with another prefix stays apart.
    keyturn_backend::conformance::state_check_and_set(&backend, "again").await;
}

/// Two places where moto 5.2.5 signs differently from KMS, and the verify-after-sign
/// check that keeps such signatures out of tokens. A canary: when moto behaves like KMS,
/// this fails, and `WithoutPss` and the expectation for long messages flip.
#[tokio::test]
async fn moto_gaps_are_caught_by_verify_after_sign() {
    let Some(moto) = start_moto() else { return };
    let backend = backend(&moto).await;
    backend.create_key("gaps", KeyType::Rsa2048).await.unwrap();
    backend.sign("gaps", Algorithm::RS256, b"m").await.unwrap();
    // PSS with the maximum salt length instead of the hash length.
    let err = backend
        .sign("gaps", Algorithm::PS256, b"m")
        .await
        .unwrap_err();
    assert!(matches!(err, BackendError::Rejected(_)), "{err:?}");
    assert!(err.to_string().contains("does not verify"), "{err}");
    // Messages over 4096 bytes go as MessageType=DIGEST, which moto hashes again.
    let long = vec![b'a'; 5000];
    let err = backend
        .sign("gaps", Algorithm::RS256, &long)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[tokio::test]
async fn keys_are_tagged_and_destroy_schedules_deletion() {
    let Some(moto) = start_moto() else { return };
    let backend = backend(&moto).await;
    let kms = raw_kms(&moto).await;

    backend.create_key("tagged", KeyType::EcP256).await.unwrap();
    let id = key_id(&kms, "tagged").await;
    let tags = kms
        .list_resource_tags()
        .key_id(&id)
        .send()
        .await
        .unwrap()
        .tags()
        .to_vec();
    for (key, value) in [
        ("keyturn:name", "tagged"),
        ("keyturn:managed-by", "keyturn"),
    ] {
        let expected = Tag::builder()
            .tag_key(key)
            .tag_value(value)
            .build()
            .unwrap();
        assert!(
            tags.contains(&expected),
            "missing tag {key}={value} in {tags:?}"
        );
    }
    let meta = describe(&kms, &id).await;
    assert_eq!(meta.key_state(), Some(&KeyState::Enabled));
    assert_eq!(
        meta.key_usage(),
        Some(&aws_sdk_kms::types::KeyUsageType::SignVerify)
    );

    backend.destroy("tagged").await.unwrap();
    // The key still exists, disabled and pending deletion after the configured window.
    let meta = describe(&kms, &id).await;
    assert_eq!(meta.key_state(), Some(&KeyState::PendingDeletion));
    assert!(!meta.enabled());
    let deletion = meta.deletion_date().unwrap().secs();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let in_days = (deletion - now) as f64 / 86_400.0;
    assert!((6.9..=7.1).contains(&in_days), "deletion in {in_days} days");
    assert!(kms
        .describe_key()
        .key_id("alias/keyturn/tagged")
        .send()
        .await
        .is_err());
    backend.destroy("tagged").await.unwrap();
}

/// A destroy interrupted after DisableKey (Disabled, alias still there) is finished by
/// the next destroy: Disabled → PendingDeletion, alias gone.
#[tokio::test]
async fn interrupted_destroy_is_finished_by_the_next_one() {
    let Some(moto) = start_moto() else { return };
    let backend = backend(&moto).await;
    let kms = raw_kms(&moto).await;
    backend.create_key("half", KeyType::Rsa2048).await.unwrap();
    let id = key_id(&kms, "half").await;
    kms.disable_key().key_id(&id).send().await.unwrap();

    // A fresh daemon (nothing cached) sees a destroy in progress.
    let other = self::backend(&moto).await;
    assert!(matches!(
        other.public_key("half").await,
        Err(BackendError::NotFound(_))
    ));
    let err = other
        .create_key("half", KeyType::Rsa2048)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("pending deletion"), "{err}");
    assert!(other
        .list_keys("half")
        .await
        .unwrap()
        .contains(&"half".into()));

    other.destroy("half").await.unwrap();
    let meta = describe(&kms, &id).await;
    assert_eq!(meta.key_state(), Some(&KeyState::PendingDeletion));
    assert!(other.list_keys("half").await.unwrap().is_empty());
    // (On KMS the first daemon's cached key would now fail to sign with
    // KMSInvalidStateException, mapped to NotFound; moto signs with disabled keys.)
    drop(backend);
}

#[tokio::test]
async fn two_daemons_race_on_state_and_keys() {
    let Some(moto) = start_moto() else { return };
    let a = backend(&moto).await;
    let b = backend(&moto).await;

    let (ra, rb) = tokio::join!(
        a.store_state("race", b"{\"by\":\"a\"}", None),
        b.store_state("race", b"{\"by\":\"b\"}", None)
    );
    let mut version = match (ra, rb) {
        (Ok(v), Err(BackendError::Conflict)) | (Err(BackendError::Conflict), Ok(v)) => v,
        other => panic!("exactly one first write must win: {other:?}"),
    };
    for round in 0..5 {
        let (da, db) = (format!("{{\"a\":{round}}}"), format!("{{\"b\":{round}}}"));
        let (ra, rb) = tokio::join!(
            a.store_state("race", da.as_bytes(), Some(version)),
            b.store_state("race", db.as_bytes(), Some(version))
        );
        let (winner, data) = match (ra, rb) {
            (Ok(v), Err(BackendError::Conflict)) => (v, da),
            (Err(BackendError::Conflict), Ok(v)) => (v, db),
            other => panic!("round {round}: exactly one write must win: {other:?}"),
        };
        assert_ne!(winner, version);
        version = winner;
        let blob = b.load_state("race").await.unwrap().unwrap();
        assert_eq!((blob.version, blob.data), (version, data.into_bytes()));
    }

    // Both create the same key at once: both end up with one and the same key.
    let (ka, kb) = tokio::join!(
        a.create_key("shared", KeyType::EcP384),
        b.create_key("shared", KeyType::EcP384)
    );
    assert_eq!(ka.unwrap(), kb.unwrap());
    let kms = raw_kms(&moto).await;
    let mut enabled = 0;
    let keys = kms.list_keys().send().await.unwrap();
    for key in keys.keys() {
        let meta = describe(&kms, key.key_id().unwrap()).await;
        match meta.key_state() {
            Some(KeyState::Enabled) => enabled += 1,
            // Usually both daemons create a key and the loser of CreateAlias retires its own.
            state => assert_eq!(state, Some(&KeyState::PendingDeletion)),
        }
    }
    assert_eq!(enabled, 1, "the losing daemon's key must be retired");
    let sig = b.sign("shared", Algorithm::ES384, b"m").await.unwrap();
    assert!(a
        .public_key("shared")
        .await
        .unwrap()
        .jwk()
        .verify(Algorithm::ES384, b"m", &sig));
}

#[tokio::test]
async fn an_outage_is_a_retryable_unavailable_error() {
    let Some(mut moto) = start_moto() else { return };
    let backend = backend(&moto).await;
    backend.create_key("cached", KeyType::EcP256).await.unwrap();
    moto.child.kill().unwrap();
    moto.child.wait().unwrap();

    let started = std::time::Instant::now();
    let results = [
        backend
            .sign("cached", Algorithm::ES256, b"m")
            .await
            .map(drop),
        backend.public_key("uncached").await.map(drop),
        backend.load_state("ks").await.map(drop),
        backend.store_state("ks", b"{}", None).await.map(drop),
        backend.list_keys("").await.map(drop),
        backend.health().await,
    ];
    for result in results {
        let err = result.unwrap_err();
        assert!(
            matches!(err, BackendError::Unavailable { .. }) && err.is_retryable(),
            "{err:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "retries took {:?}",
        started.elapsed()
    );
    // A daemon starting during the outage gets the same retryable error.
    let err = KmsBackend::connect(&config(&moto)).await.err().unwrap();
    assert!(err.is_retryable(), "{err:?}");
}

#[tokio::test]
async fn a_missing_state_table_is_a_clear_error() {
    let Some(moto) = start_moto() else { return };
    let config = KmsConfig {
        create_state_table: false,
        state_table: "no-such-table".into(),
        ..config(&moto)
    };
    let err = KmsBackend::connect(&config)
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("no-such-table") && err.contains("create_state_table"),
        "{err}"
    );
    // Once created, a second daemon without the flag uses it.
    backend(&moto).await;
    KmsBackend::connect(&KmsConfig {
        create_state_table: false,
        ..self::config(&moto)
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn bad_credentials_are_rejected_with_the_policy_hint() {
    dummy_credentials();
    // With this, moto checks every request's credentials against its own IAM users.
    let Some(moto) = moto::start_with_env(&[("INITIAL_NO_AUTH_ACTION_COUNT", "0")]) else {
        return;
    };
    let err = KmsBackend::connect(&config(&moto)).await.err().unwrap();
    assert!(matches!(err, BackendError::Rejected(_)), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("config/kms-iam-policy.json"), "{text}");
    assert!(!text.contains(moto::SECRET_ACCESS_KEY), "{text}");
    assert!(!format!("{err:?}").contains(moto::SECRET_ACCESS_KEY));
}

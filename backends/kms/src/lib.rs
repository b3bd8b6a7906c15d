//! The AWS KMS backend: signing keys live in KMS and never leave it; each key set's
//! lifecycle document lives in a DynamoDB table, so several daemons can share one key set.
//!
//! # Keys
//!
//! Each key name the daemon chooses (`[a-z0-9_-]`) is the KMS alias
//! `alias/keyturn/<name>` of an asymmetric `SIGN_VERIFY` key, tagged
//! `keyturn:name=<name>` and `keyturn:managed-by=keyturn` so operators can see what each
//! key is (the backend is not told which key set a key belongs to, so there is no key set
//! tag). `create_key` looks the alias up first, so it is idempotent; when two daemons
//! create the same name at once, the one whose `CreateAlias` fails schedules its new key
//! for deletion and uses the winner's. A crash between `CreateKey` and `CreateAlias`
//! leaves an unaliased key tagged `keyturn:managed-by=keyturn`: harmless, and visible for
//! cleanup.
//!
//! | algorithms              | KMS key spec             | KMS signing algorithm       |
//! |-------------------------|--------------------------|-----------------------------|
//! | ES256 / ES384 / ES512   | `ECC_NIST_P256/P384/P521`| `ECDSA_SHA_256/384/512`     |
//! | RS256 / RS384 / RS512   | `RSA_2048/3072/4096`     | `RSASSA_PKCS1_V1_5_SHA_*`   |
//! | PS256 / PS384 / PS512   | `RSA_2048/3072/4096`     | `RSASSA_PSS_SHA_*`          |
//!
//! EdDSA is not supported (`supports(EdDSA) == false`). KMS and this SDK version do offer
//! `ECC_NIST_EDWARDS25519`, but JWS EdDSA is pure Ed25519 (`ED25519_SHA_512`), which KMS
//! only signs as a raw message of at most 4096 bytes, and moto, the server the tests run
//! against, does not implement it, so it could not be tested here.
//!
//! The public key is read once (`GetPublicKey`, SPKI DER) and cached. ECDSA signatures
//! come back as DER and are converted to the fixed-length JOSE `r || s`. Every signature
//! is verified against the cached public key before it is returned, so a misconfigured
//! or faulty KMS (or emulator) can never put a bad signature into a token.
//!
//! Messages up to 4096 bytes are sent as `MessageType=RAW` and KMS hashes them; longer
//! ones are hashed here (SHA-256/384/512 per algorithm) and sent as `MessageType=DIGEST`.
//! Both give the same signature on KMS. RAW is preferred because moto (5.2.5) ignores
//! `MessageType` and hashes a digest again, so an always-DIGEST backend could not be
//! tested against it.
//!
//! `destroy` disables the key at once, schedules its deletion after
//! [`KmsConfig::deletion_window_days`] (7 to 30 days; KMS never deletes at once), then
//! deletes the alias. Each step is skipped when already done, so an interrupted destroy
//! is finished by calling it again. A key that is disabled or pending deletion counts
//! as destroyed: `public_key` and `sign` report [`BackendError::NotFound`].
//!
//! # Lifecycle state
//!
//! One DynamoDB table (default `keyturn-state`, on-demand capacity) holds one item per
//! key set: `keyset` (String, the partition key), `version` (Number), `data` (String, the
//! JSON document, at most about 400 KB). Check-and-set is a conditional `PutItem`:
//! `attribute_not_exists(keyset)` for the first write, `version = :expected` afterwards; a
//! failed condition is [`BackendError::Conflict`]. Reads are strongly consistent. DynamoDB
//! is the AWS service built for this (moto implements its condition expressions); S3
//! conditional writes would do too but add a bucket and its policy for no gain.
//!
//! [`KmsBackend::connect`] checks that the table exists with that key. It creates it
//! only when [`KmsConfig::create_state_table`] is set; otherwise a missing table is an
//! error naming it.
//!
//! # Failures
//!
//! Every call goes through the SDK's standard retry mode (exponential backoff with full
//! jitter, 3 attempts) with explicit timeouts; throttling, 5xx answers, timeouts and
//! refused connections that persist become [`BackendError::Unavailable`] (retryable).
//! Access errors become [`BackendError::Rejected`] naming `config/kms-iam-policy.json`,
//! the exact IAM policy keyturn needs. AWS error messages that could echo request
//! details are kept out of errors and logs; credentials are never part of either.
//!
//! `config/kms-iam-policy.json` scopes every key operation to keys tagged
//! `keyturn:managed-by=keyturn` and aliases under `alias/keyturn/`. Tagging a key while
//! creating it needs `kms:TagResource` on `*` (restricted to keyturn's two tag keys), so the
//! role could also tag some other key in the account as keyturn's: give keyturn an account
//! of its own, or deny `kms:TagResource` in the key policies of other signing keys.
//!
//! Credentials and (unless configured) the region come from the standard AWS chain:
//! environment, shared config and credentials files, web identity (EKS), ECS and EC2
//! instance roles. SSO and `credential_process` profiles are not compiled in.
//!
//! # Testing against moto
//!
//! `tests/moto.rs` runs everything against a real moto server (KMS and DynamoDB). Moto
//! 5.2.5 differs from KMS in three ways the tests work around, each noted where it
//! matters: it signs RSASSA-PSS with the maximum salt length instead of the hash length
//! (KMS and RFC 7518 use the hash length; strict verifiers, ours included, refuse moto's),
//! so the conformance run there leaves PS256/384/512 out; it hashes `DIGEST` messages
//! again; and it signs with disabled keys. The verify-after-sign check turns the first
//! two into errors rather than bad tokens, which a canary test pins down.

#![warn(missing_docs)]

mod aws_error;
mod ecdsa;
mod state;

use async_trait::async_trait;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_config::BehaviorVersion;
use aws_lc_rs::digest;
use aws_sdk_kms::config::Region;
use aws_sdk_kms::error::ProvideErrorMetadata;
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::{
    KeyMetadata, KeySpec, KeyState, KeyUsageType, MessageType, SigningAlgorithmSpec, Tag,
};
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType, PublicKey, StateBlob};
use serde::Deserialize;
use state::StateTable;
use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

/// Every key name `n` is the KMS alias `alias/keyturn/n`.
pub const ALIAS_PREFIX: &str = "alias/keyturn/";

/// The alias of the HMAC key that authenticates lifecycle documents (outside
/// [`ALIAS_PREFIX`], so no key name can reach it).
pub const STATE_MAC_ALIAS: &str = "alias/keyturn-state-mac";

/// The default DynamoDB table for lifecycle documents.
pub const DEFAULT_STATE_TABLE: &str = "keyturn-state";

/// The default pending window before KMS deletes a destroyed key: the longest KMS allows,
/// so that a key destroyed by mistake can be recovered (CancelKeyDeletion) for a month.
pub const DEFAULT_DELETION_WINDOW_DAYS: u32 = 30;

/// KMS signs at most this many bytes as a raw message; longer messages go as a digest.
const MAX_RAW_MESSAGE: usize = 4096;

/// Attempts per call, the first included (the SDK's standard mode default).
const MAX_ATTEMPTS: u32 = 3;

/// Settings of a KMS backend: the `backend = { type = "kms", ... }` table of a key set.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KmsConfig {
    /// The AWS region, e.g. `eu-west-1`. Default: the AWS chain (`AWS_REGION`, the
    /// shared config file, instance metadata).
    pub region: Option<String>,
    /// An endpoint URL for KMS (and DynamoDB, unless [`Self::dynamodb_endpoint`] is set):
    /// a VPC endpoint, or a local emulator in tests. Default: the public AWS endpoints.
    pub endpoint: Option<String>,
    /// An endpoint URL for DynamoDB only (a DynamoDB VPC endpoint next to a KMS one).
    /// Default: [`Self::endpoint`].
    pub dynamodb_endpoint: Option<String>,
    /// The DynamoDB table holding lifecycle documents. Default: `keyturn-state`.
    pub state_table: String,
    /// Create the state table (on-demand capacity) if it is missing. Default: false,
    /// so that a typo in `state_table` is an error, not a new, empty key history.
    pub create_state_table: bool,
    /// Days KMS waits before deleting a destroyed key, 7 to 30. Default: 30.
    pub deletion_window_days: u32,
    /// Accept `http://` endpoints to a host that is not loopback. Default: false (the
    /// request signatures and the answers would cross in clear).
    pub allow_plaintext_http: bool,
}

impl Default for KmsConfig {
    fn default() -> Self {
        KmsConfig {
            region: None,
            endpoint: None,
            dynamodb_endpoint: None,
            state_table: DEFAULT_STATE_TABLE.to_owned(),
            create_state_table: false,
            deletion_window_days: DEFAULT_DELETION_WINDOW_DAYS,
            allow_plaintext_http: false,
        }
    }
}

impl KmsConfig {
    /// Checks the values that can be checked without calling AWS.
    pub fn validate(&self) -> Result<(), BackendError> {
        if !(7..=30).contains(&self.deletion_window_days) {
            return Err(BackendError::Rejected(format!(
                "deletion_window_days = {} is outside the 7 to 30 days KMS allows",
                self.deletion_window_days
            )));
        }
        let table_ok = (3..=255).contains(&self.state_table.len())
            && self
                .state_table
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !table_ok {
            return Err(BackendError::Rejected(format!(
                "state_table {:?} is not a DynamoDB table name (3 to 255 of [a-zA-Z0-9_.-])",
                self.state_table
            )));
        }
        for url in [&self.endpoint, &self.dynamodb_endpoint]
            .into_iter()
            .flatten()
        {
            if !(url.starts_with("https://") || url.starts_with("http://")) {
                return Err(BackendError::Rejected(format!(
                    "endpoint {url:?} must be an http:// or https:// URL"
                )));
            }
        }
        for (setting, url) in [
            ("endpoint", &self.endpoint),
            ("dynamodb_endpoint", &self.dynamodb_endpoint),
        ] {
            if let Some(url) = url {
                keyturn_backend::check_transport(setting, url, self.allow_plaintext_http)?;
            }
        }
        Ok(())
    }
}

/// A key read from KMS: its ARN and its cached public key.
struct KmsKey {
    arn: String,
    public: PublicKey,
}

/// Keys in AWS KMS, lifecycle documents in DynamoDB.
///
/// Any number of daemons (and backends in one daemon) may share one account, region and
/// state table: key names and key set names are their only shared namespace.
pub struct KmsBackend {
    kms: aws_sdk_kms::Client,
    state: StateTable,
    deletion_window_days: i32,
    cache: RwLock<HashMap<String, Arc<KmsKey>>>,
    // The ARN of the state MAC key, once found or created.
    mac_key: tokio::sync::OnceCell<String>,
}

impl KmsBackend {
    /// Builds the AWS clients from the standard chain and `config`, and checks (or
    /// creates, see [`KmsConfig::create_state_table`]) the state table.
    pub async fn connect(config: &KmsConfig) -> Result<Self, BackendError> {
        config.validate()?;
        for url in [&config.endpoint, &config.dynamodb_endpoint]
            .into_iter()
            .flatten()
        {
            if keyturn_backend::check_transport("endpoint", url, true)? {
                tracing::warn!(url, "KMS or DynamoDB is reached over plaintext HTTP (allow_plaintext_http = true): requests and answers cross in clear");
            }
        }
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(MAX_ATTEMPTS)
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    // KMS creates even an RSA-4096 key within a few seconds.
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .operation_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        let sdk = loader.load().await;
        if sdk.region().is_none() {
            return Err(BackendError::Rejected(
                "no AWS region: set `region` in the kms backend table, or AWS_REGION".into(),
            ));
        }
        let mut kms = aws_sdk_kms::config::Builder::from(&sdk);
        if let Some(url) = &config.endpoint {
            kms = kms.endpoint_url(url);
        }
        let mut dynamodb = aws_sdk_dynamodb::config::Builder::from(&sdk);
        if let Some(url) = config
            .dynamodb_endpoint
            .as_ref()
            .or(config.endpoint.as_ref())
        {
            dynamodb = dynamodb.endpoint_url(url);
        }
        let state = StateTable::new(
            aws_sdk_dynamodb::Client::from_conf(dynamodb.build()),
            config.state_table.clone(),
        );
        state.ensure(config.create_state_table).await?;
        Ok(KmsBackend {
            kms: aws_sdk_kms::Client::from_conf(kms.build()),
            state,
            // validate() bounds it to 7..=30.
            deletion_window_days: i32::try_from(config.deletion_window_days).unwrap_or(30),
            cache: RwLock::default(),
            mac_key: tokio::sync::OnceCell::new(),
        })
    }

    /// The metadata of the key the alias of `name` points to, if the alias exists.
    async fn describe(&self, name: &str) -> Result<Option<KeyMetadata>, BackendError> {
        match self.kms.describe_key().key_id(alias(name)).send().await {
            Ok(out) => out.key_metadata.map(Some).ok_or_else(|| {
                BackendError::Rejected("KMS DescribeKey returned no key metadata".into())
            }),
            Err(e) if e.code() == Some("NotFoundException") => Ok(None),
            Err(e) => Err(aws_error::map("DescribeKey", e)),
        }
    }

    /// The key `name`: `None` if there is no alias, `NotFound` if its key is disabled or
    /// pending deletion (a destroy in progress).
    async fn existing(&self, name: &str) -> Result<Option<Arc<KmsKey>>, BackendError> {
        if let Some(key) = self
            .cache
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
        {
            return Ok(Some(key.clone()));
        }
        let Some(meta) = self.describe(name).await? else {
            return Ok(None);
        };
        self.load(name, &meta).await.map(Some)
    }

    async fn lookup(&self, name: &str) -> Result<Arc<KmsKey>, BackendError> {
        keyturn_backend::check_name(name)?;
        self.existing(name)
            .await?
            .ok_or_else(|| BackendError::NotFound(name.to_owned()))
    }

    /// Reads the public key of an enabled key and caches it under `name`.
    async fn load(&self, name: &str, meta: &KeyMetadata) -> Result<Arc<KmsKey>, BackendError> {
        if meta.key_state() != Some(&KeyState::Enabled) {
            return Err(BackendError::NotFound(name.to_owned()));
        }
        if meta.key_usage() != Some(&KeyUsageType::SignVerify) {
            return Err(BackendError::Rejected(format!(
                "{} points to a KMS key that is not a SIGN_VERIFY key",
                alias(name)
            )));
        }
        let arn = meta.arn().unwrap_or(meta.key_id()).to_owned();
        let out = self
            .kms
            .get_public_key()
            .key_id(&arn)
            .send()
            .await
            .map_err(|e| aws_error::map("GetPublicKey", e))?;
        let der = out.public_key.ok_or_else(|| {
            BackendError::Rejected("KMS GetPublicKey returned no public key".into())
        })?;
        let key = Arc::new(KmsKey {
            arn,
            public: PublicKey::from_spki_der(der.as_ref())?,
        });
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), key.clone());
        Ok(key)
    }

    fn evict(&self, name: &str) {
        self.cache
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }

    /// Disables the key and schedules its deletion, skipping what is already done.
    async fn retire(&self, meta: &KeyMetadata) -> Result<(), BackendError> {
        let id = meta.key_id();
        // KMSInvalidStateException: another daemon got there first.
        if meta.key_state() == Some(&KeyState::Enabled) {
            match self.kms.disable_key().key_id(id).send().await {
                Ok(_) => {}
                Err(e) if e.code() == Some("KMSInvalidStateException") => {}
                Err(e) => return Err(aws_error::map("DisableKey", e)),
            }
        }
        if meta.key_state() != Some(&KeyState::PendingDeletion) {
            let scheduled = self
                .kms
                .schedule_key_deletion()
                .key_id(id)
                .pending_window_in_days(self.deletion_window_days)
                .send()
                .await;
            match scheduled {
                Ok(_) => tracing::info!(
                    key_id = %id,
                    days = self.deletion_window_days,
                    "scheduled KMS key deletion"
                ),
                Err(e) if e.code() == Some("KMSInvalidStateException") => {}
                Err(e) => return Err(aws_error::map("ScheduleKeyDeletion", e)),
            }
        }
        Ok(())
    }

    /// The ARN of the state MAC key: an HMAC_256 key under [`STATE_MAC_ALIAS`], created
    /// on first use (a replica that loses the race to create it uses the winner's).
    async fn state_mac_key(&self) -> Result<String, BackendError> {
        let found = |meta: &KeyMetadata| -> Result<String, BackendError> {
            if meta.key_usage() != Some(&KeyUsageType::GenerateVerifyMac)
                || meta.key_state() != Some(&KeyState::Enabled)
            {
                return Err(BackendError::Rejected(format!(
                    "{STATE_MAC_ALIAS} points to a KMS key that is not an enabled \
                     GENERATE_VERIFY_MAC key"
                )));
            }
            Ok(meta.arn().unwrap_or(meta.key_id()).to_owned())
        };
        let describe = || async {
            match self.kms.describe_key().key_id(STATE_MAC_ALIAS).send().await {
                Ok(out) => Ok(out.key_metadata),
                Err(e) if e.code() == Some("NotFoundException") => Ok(None),
                Err(e) => Err(aws_error::map("DescribeKey", e)),
            }
        };
        if let Some(meta) = describe().await? {
            return found(&meta);
        }
        let created = self
            .kms
            .create_key()
            .key_usage(KeyUsageType::GenerateVerifyMac)
            .key_spec(KeySpec::Hmac256)
            .description("keyturn lifecycle document authentication")
            .tags(tag("keyturn:managed-by", "keyturn")?)
            .send()
            .await
            .map_err(|e| aws_error::map("CreateKey", e))?;
        let meta = created.key_metadata.ok_or_else(|| {
            BackendError::Rejected("KMS CreateKey returned no key metadata".into())
        })?;
        match self
            .kms
            .create_alias()
            .alias_name(STATE_MAC_ALIAS)
            .target_key_id(meta.key_id())
            .send()
            .await
        {
            Ok(_) => found(&meta),
            Err(e) if e.code() == Some("AlreadyExistsException") => {
                if let Err(retire) = self.retire(&meta).await {
                    tracing::warn!(key_id = %meta.key_id(), error = %retire, "cannot retire an unaliased KMS HMAC key");
                }
                let meta = describe().await?.ok_or_else(|| {
                    BackendError::Rejected(format!("{STATE_MAC_ALIAS} vanished while creating it"))
                })?;
                found(&meta)
            }
            Err(e) => Err(aws_error::map("CreateAlias", e)),
        }
    }

    /// Creates a key of `spec` and points the alias of `name` at it.
    async fn create_new(&self, name: &str, spec: KeySpec) -> Result<Arc<KmsKey>, BackendError> {
        let created = self
            .kms
            .create_key()
            .key_usage(KeyUsageType::SignVerify)
            .key_spec(spec)
            .description(format!("keyturn signing key {name}"))
            .tags(tag("keyturn:name", name)?)
            .tags(tag("keyturn:managed-by", "keyturn")?)
            .send()
            .await
            .map_err(|e| aws_error::map("CreateKey", e))?;
        let meta = created.key_metadata.ok_or_else(|| {
            BackendError::Rejected("KMS CreateKey returned no key metadata".into())
        })?;
        let aliased = self
            .kms
            .create_alias()
            .alias_name(alias(name))
            .target_key_id(meta.key_id())
            .send()
            .await;
        match aliased {
            Ok(_) => {
                tracing::info!(name, key_id = %meta.key_id(), "created KMS key");
                self.load(name, &meta).await
            }
            Err(e) => {
                // Our new key is unreachable without the alias: retire it. Losing the race
                // to another daemon is fine (use its key); anything else is an error.
                let lost_race = e.code() == Some("AlreadyExistsException");
                let err = aws_error::map("CreateAlias", e);
                if let Err(retire) = self.retire(&meta).await {
                    tracing::warn!(
                        key_id = %meta.key_id(),
                        error = %retire,
                        "cannot retire an unaliased KMS key; it stays tagged keyturn:name"
                    );
                }
                if !lost_race {
                    return Err(err);
                }
                self.existing(name).await?.ok_or_else(|| {
                    BackendError::unavailable(
                        format!("{} vanished while creating it", alias(name)),
                        err,
                    )
                })
            }
        }
    }
}

fn alias(name: &str) -> String {
    format!("{ALIAS_PREFIX}{name}")
}

fn tag(key: &str, value: &str) -> Result<Tag, BackendError> {
    Tag::builder()
        .tag_key(key)
        .tag_value(value)
        .build()
        .map_err(|e| BackendError::Rejected(format!("cannot build a KMS tag: {e}")))
}

fn key_spec(key_type: KeyType) -> Result<KeySpec, BackendError> {
    Ok(match key_type {
        KeyType::EcP256 => KeySpec::EccNistP256,
        KeyType::EcP384 => KeySpec::EccNistP384,
        KeyType::EcP521 => KeySpec::EccNistP521,
        KeyType::Rsa2048 => KeySpec::Rsa2048,
        KeyType::Rsa3072 => KeySpec::Rsa3072,
        KeyType::Rsa4096 => KeySpec::Rsa4096,
        KeyType::Ed25519 => return Err(BackendError::Unsupported(Algorithm::EdDSA)),
    })
}

/// What goes to KMS Sign for `alg` and `message`: the signing algorithm, the message type
/// and the message (or its digest), and the ECDSA field size for the DER→JOSE conversion.
fn sign_request(
    alg: Algorithm,
    message: &[u8],
) -> Result<(SigningAlgorithmSpec, MessageType, Vec<u8>, Option<usize>), BackendError> {
    use SigningAlgorithmSpec as S;
    let (spec, hash, ecdsa_field) = match alg {
        Algorithm::ES256 => (S::EcdsaSha256, &digest::SHA256, Some(32)),
        Algorithm::ES384 => (S::EcdsaSha384, &digest::SHA384, Some(48)),
        Algorithm::ES512 => (S::EcdsaSha512, &digest::SHA512, Some(66)),
        Algorithm::RS256 => (S::RsassaPkcs1V15Sha256, &digest::SHA256, None),
        Algorithm::RS384 => (S::RsassaPkcs1V15Sha384, &digest::SHA384, None),
        Algorithm::RS512 => (S::RsassaPkcs1V15Sha512, &digest::SHA512, None),
        Algorithm::PS256 => (S::RsassaPssSha256, &digest::SHA256, None),
        Algorithm::PS384 => (S::RsassaPssSha384, &digest::SHA384, None),
        Algorithm::PS512 => (S::RsassaPssSha512, &digest::SHA512, None),
        Algorithm::EdDSA => return Err(BackendError::Unsupported(alg)),
    };
    let (message_type, payload) = if message.len() <= MAX_RAW_MESSAGE {
        (MessageType::Raw, message.to_vec())
    } else {
        let digest = digest::digest(hash, message);
        (MessageType::Digest, digest.as_ref().to_vec())
    };
    Ok((spec, message_type, payload, ecdsa_field))
}

#[async_trait]
impl KeyBackend for KmsBackend {
    fn kind(&self) -> &'static str {
        "kms"
    }

    fn supports(&self, alg: Algorithm) -> bool {
        alg != Algorithm::EdDSA
    }

    fn shared(&self) -> bool {
        true
    }

    async fn create_key(&self, name: &str, key_type: KeyType) -> Result<PublicKey, BackendError> {
        keyturn_backend::check_name(name)?;
        let spec = key_spec(key_type)?;
        let key = match self.existing(name).await {
            Ok(Some(key)) => key,
            Ok(None) => self.create_new(name, spec).await?,
            Err(BackendError::NotFound(_)) => {
                return Err(BackendError::Rejected(format!(
                    "the KMS key of {name:?} is disabled or pending deletion: finish destroying \
                     it, or use another name"
                )))
            }
            Err(e) => return Err(e),
        };
        if key.public.key_type() != key_type {
            return Err(BackendError::Rejected(format!(
                "key {name:?} exists with type {:?}, not {key_type:?}",
                key.public.key_type()
            )));
        }
        Ok(key.public.clone())
    }

    async fn public_key(&self, name: &str) -> Result<PublicKey, BackendError> {
        Ok(self.lookup(name).await?.public.clone())
    }

    async fn sign(
        &self,
        name: &str,
        alg: Algorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let key = self.lookup(name).await?;
        if !key.public.key_type().can_sign(alg) {
            return Err(BackendError::Rejected(format!(
                "key {name:?} is a {:?} key and cannot sign {alg}",
                key.public.key_type()
            )));
        }
        let (spec, message_type, payload, ecdsa_field) = sign_request(alg, message)?;
        let signed = self
            .kms
            .sign()
            .key_id(&key.arn)
            .signing_algorithm(spec)
            .message_type(message_type)
            .message(Blob::new(payload))
            .send()
            .await;
        let der = match signed {
            Ok(out) => out
                .signature
                .ok_or_else(|| BackendError::Rejected("KMS Sign returned no signature".into()))?,
            // Destroyed (by us or another daemon) since it was cached.
            Err(e)
                if matches!(
                    e.code(),
                    Some("NotFoundException" | "KMSInvalidStateException" | "DisabledException")
                ) =>
            {
                self.evict(name);
                return Err(BackendError::NotFound(name.to_owned()));
            }
            Err(e) => return Err(aws_error::map("Sign", e)),
        };
        let sig = match ecdsa_field {
            Some(field) => ecdsa::der_to_jose(der.as_ref(), field).map_err(|why| {
                BackendError::Rejected(format!("KMS returned a malformed ECDSA signature: {why}"))
            })?,
            None => der.into_inner(),
        };
        if !key.public.jwk().verify(alg, message, &sig) {
            return Err(BackendError::Rejected(format!(
                "KMS returned a {alg} signature that does not verify with the public key of \
                 {name:?}"
            )));
        }
        Ok(sig)
    }

    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        keyturn_backend::check_name(name)?;
        self.evict(name);
        let Some(meta) = self.describe(name).await? else {
            return Ok(());
        };
        self.retire(&meta).await?;
        match self.kms.delete_alias().alias_name(alias(name)).send().await {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("NotFoundException") => Ok(()),
            Err(e) => Err(aws_error::map("DeleteAlias", e)),
        }
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let wanted = alias(prefix);
        let mut aliases = self
            .kms
            .list_aliases()
            .limit(100)
            .into_paginator()
            .items()
            .send();
        let mut names = Vec::new();
        while let Some(entry) = aliases.next().await {
            let entry = entry.map_err(|e| aws_error::map("ListAliases", e))?;
            let name = entry
                .alias_name()
                .filter(|a| a.starts_with(&wanted))
                .and_then(|a| a.strip_prefix(ALIAS_PREFIX));
            if let Some(name) = name.filter(|n| keyturn_backend::check_name(n).is_ok()) {
                names.push(name.to_owned());
            }
        }
        Ok(names)
    }

    async fn state_mac(&self, keyset: &str, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        let key = self
            .mac_key
            .get_or_try_init(|| self.state_mac_key())
            .await?;
        let out = self
            .kms
            .generate_mac()
            .key_id(key)
            .mac_algorithm(aws_sdk_kms::types::MacAlgorithmSpec::HmacSha256)
            .message(Blob::new(
                keyturn_backend::state_digest(keyset, data).to_vec(),
            ))
            .send()
            .await
            .map_err(|e| aws_error::map("GenerateMac", e))?;
        out.mac
            .map(Blob::into_inner)
            .ok_or_else(|| BackendError::Rejected("KMS GenerateMac returned no MAC".into()))
    }

    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        keyturn_backend::check_name(keyset)?;
        self.state.load(keyset).await
    }

    async fn store_state(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        keyturn_backend::check_name(keyset)?;
        self.state.store(keyset, data, expected).await
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.kms
            .list_aliases()
            .limit(1)
            .send()
            .await
            .map_err(|e| aws_error::map("ListAliases", e))?;
        self.state.health().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_messages_go_raw_long_ones_as_their_digest() {
        let (spec, kind, payload, field) = sign_request(Algorithm::ES384, b"abc").unwrap();
        assert_eq!(spec, SigningAlgorithmSpec::EcdsaSha384);
        assert_eq!(kind, MessageType::Raw);
        assert_eq!(payload, b"abc");
        assert_eq!(field, Some(48));

        let long = vec![b'x'; MAX_RAW_MESSAGE + 1];
        for (alg, hash) in [
            (Algorithm::RS256, &digest::SHA256),
            (Algorithm::PS384, &digest::SHA384),
            (Algorithm::ES512, &digest::SHA512),
        ] {
            let (_, kind, payload, _) = sign_request(alg, &long).unwrap();
            assert_eq!(kind, MessageType::Digest, "{alg}");
            assert_eq!(payload, digest::digest(hash, &long).as_ref(), "{alg}");
        }
        let edge = vec![b'x'; MAX_RAW_MESSAGE];
        assert_eq!(
            sign_request(Algorithm::RS256, &edge).unwrap().1,
            MessageType::Raw
        );
        assert!(matches!(
            sign_request(Algorithm::EdDSA, b"abc"),
            Err(BackendError::Unsupported(Algorithm::EdDSA))
        ));
    }

    #[test]
    fn config_defaults_and_validation() {
        let config = KmsConfig::default();
        assert_eq!(config.state_table, "keyturn-state");
        assert_eq!(config.deletion_window_days, 30);
        assert!(!config.create_state_table);
        config.validate().unwrap();
        for days in [0, 6, 31] {
            let bad = KmsConfig {
                deletion_window_days: days,
                ..KmsConfig::default()
            };
            assert!(bad.validate().is_err(), "{days}");
        }
        for table in ["ab", "has space", "x/y"] {
            let bad = KmsConfig {
                state_table: table.into(),
                ..KmsConfig::default()
            };
            assert!(bad.validate().is_err(), "{table}");
        }
        let bad = KmsConfig {
            endpoint: Some("localhost:4566".into()),
            ..KmsConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn key_types_map_to_kms_specs() {
        assert_eq!(key_spec(KeyType::EcP521).unwrap(), KeySpec::EccNistP521);
        assert_eq!(key_spec(KeyType::Rsa3072).unwrap(), KeySpec::Rsa3072);
        assert!(key_spec(KeyType::Ed25519).is_err());
    }
}

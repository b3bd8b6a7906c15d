//! The vault backend: keys in a Vault/OpenBao transit engine, lifecycle state in KV v2.
//!
//! Private keys never leave Vault: keyturn asks transit to sign and reads public keys back.
//!
//! # Mapping keyturn keys onto transit
//!
//! - One transit key per keyturn key, named by the daemon (`[a-z0-9_-]`, at most 100
//!   characters), of type `ecdsa-p256`/`p384`/`p521`, `rsa-2048`/`3072`/`4096` or `ed25519`,
//!   created with `exportable=false` and `allow_plaintext_backup=false`.
//! - Transit's own key versions are never used: keyturn rotates by creating a new transit
//!   key, and signs and reads the public key of version 1 only, so a rotation done by hand
//!   inside transit cannot make keyturn sign with a key its JWKS does not publish.
//! - Creation is idempotent: an existing key of the same type is returned, one of another
//!   type is refused (transit would silently keep the old type, so the type is read back).
//! - Destroy sets `deletion_allowed=true` on the key, then deletes it; a missing key is fine.
//! - Signing uses `marshaling_algorithm=jws` (ECDSA as r||s, base64url), the JOSE hash
//!   (`sha2-256/384/512`), `pkcs1v15` for RS*, `pss` with a hash-length salt for PS*, and
//!   no prehash (Ed25519 signs the message itself).
//!
//! # Lifecycle state
//!
//! Each key set's document is the KV v2 secret `<kv_mount>/data/keyturn/<keyset>` holding
//! `{"document": "<the JSON text>"}`; its KV version is the check-and-set version, so
//! several daemons sharing one Vault agree on one history ([`KeyBackend::shared`] is true).
//! Documents are authenticated with transit's HMAC under the key [`STATE_MAC_KEY`]
//! (version 1, `aes256-gcm96`, not exportable), created on first use: whoever can write the
//! KV path but not use that key cannot make a document keyturn acts on.
//!
//! Keys that are exportable or allow a plaintext backup are refused, whoever created them:
//! their private half could leave Vault.
//!
//! # Authentication
//!
//! A token read from a file, or an AppRole login (role id plus a secret id file). Both files
//! must be private to their owner. A background task renews the token at two thirds of its
//! TTL; when renewal fails or (for AppRole) the token nears its max TTL, it reads the token
//! file again or logs in again. The task ends when the backend is dropped. The policy the
//! token needs is in `config/vault-policy.hcl`.

#![warn(missing_docs)]

mod auth;
mod errors;
mod transit;

use async_trait::async_trait;
use auth::{Login, Session};
use errors::{api_error_mentions, classify, status};
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType, PublicKey, StateBlob};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use vaultrs::api::kv2::requests::{ReadSecretRequest, SetSecretRequestOptions};
use vaultrs::api::transit::requests::{CreateKeyRequest, UpdateKeyConfigurationRequest};
use vaultrs::api::transit::responses::ReadKeyData;
use vaultrs::client::{VaultClient, VaultClientSettingsBuilder};

/// The transit key that authenticates lifecycle documents (HMAC). Not a name keyturn gives
/// signing keys, which always end in 16 hex digits after their key set's name.
pub const STATE_MAC_KEY: &str = "keyturn-state-mac";

/// How keyturn authenticates to Vault.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VaultAuth {
    /// A token kept in a file (mode 0600 or stricter), read again whenever it cannot be
    /// renewed, so an agent may replace it.
    Token {
        /// The file holding the token.
        token_file: PathBuf,
    },
    /// An AppRole login.
    AppRole {
        /// The role id (not a secret).
        role_id: String,
        /// The file holding the secret id (mode 0600 or stricter), read at every login.
        secret_id_file: PathBuf,
    },
}

/// Settings of a vault backend: the `backend = { type = "vault", ... }` table of a key set.
/// Give `token_file`, or `approle_role_id` with `approle_secret_id_file`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaultConfig {
    /// The Vault address, `https://vault.example.com:8200`.
    pub address: String,
    /// A file holding a Vault token (read again whenever it cannot be renewed).
    pub token_file: Option<PathBuf>,
    /// AppRole role id (with `approle_secret_id_file`).
    pub approle_role_id: Option<String>,
    /// A file holding the AppRole secret id.
    pub approle_secret_id_file: Option<PathBuf>,
    /// Where the transit engine is mounted. Default `transit`.
    #[serde(default = "default_transit_mount")]
    pub transit_mount: String,
    /// Where the KV v2 engine holding the lifecycle state is mounted. Default `secret`.
    #[serde(default = "default_kv_mount")]
    pub kv_mount: String,
    /// Where the AppRole auth method is mounted. Default `approle`.
    #[serde(default = "default_approle_mount")]
    pub approle_mount: String,
    /// PEM bundle of the CAs that sign Vault's TLS certificate; `None`: the system roots.
    pub ca_file: Option<PathBuf>,
    /// Accept an `http://` address to a host that is not loopback. Default false: the
    /// token would cross in clear.
    #[serde(default)]
    pub allow_plaintext_http: bool,
    /// `$CREDENTIALS_DIRECTORY`: secret files under it are systemd credentials, which may
    /// be group-readable (0440). Set by the daemon, not in the table.
    #[serde(skip)]
    pub credentials_dir: Option<PathBuf>,
    /// Limit on each call to Vault. 30 s: a hung Vault becomes a retryable error well
    /// before a caller gives up.
    #[serde(skip, default = "default_request_timeout")]
    pub request_timeout: Duration,
}

/// Transit's usual mount.
fn default_transit_mount() -> String {
    "transit".into()
}

/// KV v2 at `secret/`, as on a dev server.
fn default_kv_mount() -> String {
    "secret".into()
}

/// AppRole's usual mount.
fn default_approle_mount() -> String {
    "approle".into()
}

fn default_request_timeout() -> Duration {
    Duration::from_secs(30)
}

impl VaultConfig {
    /// A config with the default mounts, system CA roots and timeout.
    pub fn new(address: impl Into<String>, auth: VaultAuth) -> Self {
        let (token_file, approle_role_id, approle_secret_id_file) = match auth {
            VaultAuth::Token { token_file } => (Some(token_file), None, None),
            VaultAuth::AppRole {
                role_id,
                secret_id_file,
            } => (None, Some(role_id), Some(secret_id_file)),
        };
        VaultConfig {
            address: address.into(),
            token_file,
            approle_role_id,
            approle_secret_id_file,
            transit_mount: default_transit_mount(),
            kv_mount: default_kv_mount(),
            approle_mount: default_approle_mount(),
            ca_file: None,
            allow_plaintext_http: false,
            credentials_dir: None,
            request_timeout: default_request_timeout(),
        }
    }

    /// How it gets a token: a token file, or an AppRole login.
    pub fn auth(&self) -> Result<VaultAuth, BackendError> {
        match (
            &self.token_file,
            &self.approle_role_id,
            &self.approle_secret_id_file,
        ) {
            (Some(token_file), None, None) => Ok(VaultAuth::Token {
                token_file: token_file.clone(),
            }),
            (None, Some(role_id), Some(secret_id_file)) => Ok(VaultAuth::AppRole {
                role_id: role_id.clone(),
                secret_id_file: secret_id_file.clone(),
            }),
            _ => Err(BackendError::Rejected(
                "the vault backend needs token_file, or approle_role_id with \
                 approle_secret_id_file (one of the two, not both)"
                    .into(),
            )),
        }
    }

    /// Checks what can be checked without calling Vault.
    pub fn validate(&self) -> Result<(), BackendError> {
        self.auth()?;
        keyturn_backend::check_transport("address", &self.address, self.allow_plaintext_http)?;
        Ok(())
    }
}

/// Keys in Vault transit, lifecycle state in Vault KV v2.
pub struct VaultBackend {
    session: Arc<Session>,
    transit_mount: String,
    kv_mount: String,
    /// Types of the keys seen so far, so that a key is never asked to sign with an algorithm
    /// of another type (transit would sign with whatever the key is).
    key_types: RwLock<HashMap<String, KeyType>>,
    // Set once the state MAC key is known to exist and to stay in Vault.
    mac_key_ready: tokio::sync::OnceCell<()>,
    renewal: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for VaultBackend {
    fn drop(&mut self) {
        if let Some(task) = &self.renewal {
            task.abort();
        }
    }
}

/// The KV v2 payload of a lifecycle document.
#[derive(Serialize, Deserialize)]
struct StateDoc {
    document: String,
}

impl VaultBackend {
    /// Checks the settings, logs in (reading the token or secret id file) and starts the
    /// token renewal task. Must be called inside a Tokio runtime.
    pub async fn connect(config: &VaultConfig) -> Result<VaultBackend, BackendError> {
        config.validate()?;
        if keyturn_backend::check_transport("address", &config.address, true)? {
            tracing::warn!(address = %config.address, "Vault is reached over plaintext HTTP (allow_plaintext_http = true): its token crosses in clear");
        }
        let url = url::Url::parse(&config.address)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                BackendError::Rejected(format!(
                    "invalid Vault address {:?}: expected https://host:port",
                    config.address
                ))
            })?;
        if config.ca_file.is_some() && url.scheme() != "https" {
            return Err(BackendError::Rejected(
                "ca_file is set but the Vault address is not https".into(),
            ));
        }
        for mount in [
            &config.transit_mount,
            &config.kv_mount,
            &config.approle_mount,
        ] {
            if mount.is_empty() || mount.starts_with('/') || mount.ends_with('/') {
                return Err(BackendError::Rejected(format!(
                    "invalid mount path {mount:?}: no leading or trailing slash"
                )));
            }
        }
        // Every setting explicit: the builder would otherwise read VAULT_* variables.
        let settings = VaultClientSettingsBuilder::default()
            .address(url.as_str())
            .ca_certs(
                config
                    .ca_file
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect(),
            )
            .identity(None)
            .timeout(Some(config.request_timeout))
            .token("")
            .verify(true)
            .namespace(None)
            .build()
            .map_err(|e| BackendError::Rejected(format!("invalid Vault settings: {e}")))?;
        let login = Login {
            method: config.auth()?,
            approle_mount: config.approle_mount.clone(),
            settings,
            credentials_dir: config.credentials_dir.clone(),
        };
        let (session, lease) = Session::start(login).await?;
        let session = Arc::new(session);
        let renewal = lease
            .refresh_in()
            .map(|_| tokio::spawn(auth::keep_alive(session.clone(), lease)));
        Ok(VaultBackend {
            session,
            transit_mount: config.transit_mount.clone(),
            kv_mount: config.kv_mount.clone(),
            key_types: RwLock::default(),
            mac_key_ready: tokio::sync::OnceCell::new(),
            renewal,
        })
    }

    fn client(&self) -> Arc<VaultClient> {
        self.session.client()
    }

    fn state_path(keyset: &str) -> String {
        format!("keyturn/{keyset}")
    }

    /// Reads transit key `name`: its type and the public key of version 1.
    async fn read_key(&self, name: &str) -> Result<PublicKey, BackendError> {
        keyturn_backend::check_name(name)?;
        let key =
            match vaultrs::transit::key::read(&*self.client(), &self.transit_mount, name).await {
                Ok(key) => key,
                Err(e) if status(&e) == Some(404) => {
                    return Err(BackendError::NotFound(name.to_owned()))
                }
                Err(e) => return Err(classify(&format!("reading transit key {name:?}"), e)),
            };
        refuse_extractable(name, key.exportable, key.allow_plaintext_backup)?;
        let key_type = transit::keyturn_type(key.key_type).ok_or_else(|| {
            BackendError::Rejected(format!(
                "transit key {name:?} is a {:?} key, not a signing key keyturn knows",
                key.key_type
            ))
        })?;
        let ReadKeyData::Asymmetric(versions) = key.keys else {
            return Err(BackendError::Rejected(format!(
                "transit key {name:?} has no public key"
            )));
        };
        let version = versions
            .get(&transit::KEY_VERSION.to_string())
            .ok_or_else(|| {
                BackendError::Rejected(format!(
                    "transit key {name:?} has no version {} any more",
                    transit::KEY_VERSION
                ))
            })?;
        let public = transit::public_key(key_type, &version.public_key)?;
        self.key_types
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_owned(), key_type);
        Ok(public)
    }

    /// Creates the state MAC key unless it exists, and checks it cannot leave Vault.
    async fn ensure_mac_key(&self) -> Result<(), BackendError> {
        let client = self.client();
        let mount = &self.transit_mount;
        let mut options = CreateKeyRequest::builder();
        options
            .key_type(vaultrs::api::transit::KeyType::Aes256Gcm96)
            .exportable(false)
            .allow_plaintext_backup(false);
        // Creating a key that exists changes nothing: every replica may call it.
        vaultrs::transit::key::create(&*client, mount, STATE_MAC_KEY, Some(&mut options))
            .await
            .map_err(|e| classify(&format!("creating transit key {STATE_MAC_KEY:?}"), e))?;
        let key = vaultrs::transit::key::read(&*client, mount, STATE_MAC_KEY)
            .await
            .map_err(|e| classify(&format!("reading transit key {STATE_MAC_KEY:?}"), e))?;
        refuse_extractable(STATE_MAC_KEY, key.exportable, key.allow_plaintext_backup)
    }

    async fn key_type(&self, name: &str) -> Result<KeyType, BackendError> {
        let known = self
            .key_types
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .copied();
        match known {
            Some(key_type) => Ok(key_type),
            None => Ok(self.read_key(name).await?.key_type()),
        }
    }

    fn forget(&self, name: &str) {
        self.key_types
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(name);
    }
}

/// Refuses a transit key whose private material could leave Vault.
fn refuse_extractable(name: &str, exportable: bool, backup: bool) -> Result<(), BackendError> {
    if exportable || backup {
        return Err(BackendError::Rejected(format!(
            "transit key {name:?} is exportable or allows a plaintext backup, so its private \
             key could leave Vault; keyturn refuses it (recreate the key without those settings)"
        )));
    }
    Ok(())
}

#[async_trait]
impl KeyBackend for VaultBackend {
    fn kind(&self) -> &'static str {
        "vault"
    }

    fn supports(&self, _alg: Algorithm) -> bool {
        true
    }

    fn shared(&self) -> bool {
        true
    }

    async fn create_key(&self, name: &str, key_type: KeyType) -> Result<PublicKey, BackendError> {
        let clash = || BackendError::Rejected(format!("key {name:?} exists with another type"));
        match self.read_key(name).await {
            Ok(public) if public.key_type() == key_type => return Ok(public),
            Ok(_) => return Err(clash()),
            Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let mut options = CreateKeyRequest::builder();
        options
            .key_type(transit::transit_type(key_type))
            .exportable(false)
            .allow_plaintext_backup(false);
        vaultrs::transit::key::create(
            &*self.client(),
            &self.transit_mount,
            name,
            Some(&mut options),
        )
        .await
        .map_err(|e| classify(&format!("creating transit key {name:?}"), e))?;
        // Another daemon may have created it first, with another type.
        let public = self.read_key(name).await?;
        if public.key_type() != key_type {
            return Err(clash());
        }
        tracing::info!(name, ?key_type, "created a transit key");
        Ok(public)
    }

    async fn public_key(&self, name: &str) -> Result<PublicKey, BackendError> {
        self.read_key(name).await
    }

    async fn sign(
        &self,
        name: &str,
        alg: Algorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let key_type = self.key_type(name).await?;
        if !key_type.can_sign(alg) {
            return Err(BackendError::Rejected(format!(
                "key {name:?} is a {key_type:?} key and cannot sign {alg}"
            )));
        }
        let request = transit::SignRequest::new(&self.transit_mount, name, alg, message);
        match vaultrs::api::exec_with_result(&*self.client(), request).await {
            Ok(answer) => transit::decode_signature(alg, &answer.signature),
            Err(e) if api_error_mentions(&e, 400, "not found") => {
                self.forget(name);
                Err(BackendError::NotFound(name.to_owned()))
            }
            Err(e) => Err(classify(&format!("signing with transit key {name:?}"), e)),
        }
    }

    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        keyturn_backend::check_name(name)?;
        self.forget(name);
        let client = self.client();
        let mount = &self.transit_mount;
        match vaultrs::transit::key::read(&*client, mount, name).await {
            Ok(_) => {}
            Err(e) if status(&e) == Some(404) => return Ok(()),
            Err(e) => return Err(classify(&format!("reading transit key {name:?}"), e)),
        }
        // Another replica may be destroying the same key: once it is gone, transit answers
        // 400 "no existing key named ..." or "... could not delete key; not found".
        let gone = |e: &vaultrs::error::ClientError| {
            api_error_mentions(e, 400, "no existing key") || api_error_mentions(e, 400, "not found")
        };
        // Racing calls may also get other answers (OpenBao has answered 500 to one of two
        // configuration updates of one key): each step is tried again, up to three times,
        // and a key found gone meanwhile counts as destroyed.
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut config = UpdateKeyConfigurationRequest::builder();
            config.deletion_allowed(true);
            let step = match vaultrs::transit::key::update(&*client, mount, name, Some(&mut config))
                .await
            {
                Ok(_) => match vaultrs::transit::key::delete(&*client, mount, name).await {
                    Ok(_) => break,
                    Err(e) => (e, "deleting"),
                },
                Err(e) => (e, "allowing deletion of"),
            };
            let (e, what) = step;
            if gone(&e) {
                return Ok(());
            }
            match vaultrs::transit::key::read(&*client, mount, name).await {
                Err(e) if status(&e) == Some(404) => return Ok(()),
                _ if attempts < 3 => continue,
                _ => return Err(classify(&format!("{what} transit key {name:?}"), e)),
            }
        }
        tracing::info!(name, "deleted a transit key");
        Ok(())
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        match vaultrs::transit::key::list(&*self.client(), &self.transit_mount).await {
            Ok(list) => Ok(list
                .keys
                .into_iter()
                .filter(|k| k.starts_with(prefix))
                .collect()),
            // Vault answers 404 to a LIST with nothing to list.
            Err(e) if status(&e) == Some(404) => Ok(Vec::new()),
            Err(e) => Err(classify("listing transit keys", e)),
        }
    }

    async fn state_mac(&self, keyset: &str, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        use base64::Engine as _;
        self.mac_key_ready
            .get_or_try_init(|| self.ensure_mac_key())
            .await?;
        let digest = keyturn_backend::state_digest(keyset, data);
        let input = base64::engine::general_purpose::STANDARD.encode(digest);
        let mut options = vaultrs::api::transit::requests::GenerateHmacRequest::builder();
        // Version 1 always: a rotation of the key inside transit must not make every stored
        // document fail.
        options
            .key_version(1u64)
            .algorithm(vaultrs::api::transit::HashAlgorithm::Sha2_256);
        let answer = vaultrs::transit::generate::hmac(
            &*self.client(),
            &self.transit_mount,
            STATE_MAC_KEY,
            &input,
            Some(&mut options),
        )
        .await
        .map_err(|e| classify("authenticating a lifecycle document with transit", e))?;
        Ok(answer.hmac.into_bytes())
    }

    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        keyturn_backend::check_name(keyset)?;
        let request = ReadSecretRequest {
            mount: self.kv_mount.clone(),
            path: Self::state_path(keyset),
            version: None,
        };
        let what = || format!("reading the state of key set {keyset:?}");
        let secret = match vaultrs::api::exec_with_result(&*self.client(), request).await {
            Ok(secret) => secret,
            Err(e) if status(&e) == Some(404) => return Ok(None),
            Err(e) => return Err(classify(&what(), e)),
        };
        let doc: StateDoc = serde_json::from_value(secret.data).map_err(|_| {
            BackendError::Rejected(format!(
                "{}/data/{} is not a keyturn state document",
                self.kv_mount,
                Self::state_path(keyset)
            ))
        })?;
        Ok(Some(StateBlob {
            data: doc.document.into_bytes(),
            version: secret.metadata.version,
        }))
    }

    async fn store_state(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        keyturn_backend::check_name(keyset)?;
        let document = std::str::from_utf8(data)
            .map_err(|_| BackendError::Rejected("state must be UTF-8 JSON".into()))?
            .to_owned();
        // KV v2: cas=0 writes only if there is no secret yet, cas=n only over version n.
        let cas = u32::try_from(expected.unwrap_or(0))
            .map_err(|_| BackendError::Rejected("state version out of KV v2's range".into()))?;
        match vaultrs::kv2::set_with_options(
            &*self.client(),
            &self.kv_mount,
            &Self::state_path(keyset),
            &StateDoc { document },
            SetSecretRequestOptions { cas },
        )
        .await
        {
            Ok(meta) => Ok(meta.version),
            Err(e) if api_error_mentions(&e, 400, "check-and-set") => Err(BackendError::Conflict),
            Err(e) => Err(classify(
                &format!("writing the state of key set {keyset:?}"),
                e,
            )),
        }
    }

    async fn health(&self) -> Result<(), BackendError> {
        vaultrs::token::lookup_self(&*self.client())
            .await
            .map(drop)
            .map_err(|e| classify("looking up keyturn's token", e))
    }
}

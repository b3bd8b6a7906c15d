//! The PKCS#11 backend: signing keys generated and kept in a hardware security module (or
//! any token with a PKCS#11 module: a network HSM, a YubiHSM 2, a TPM, SoftHSM).
//!
//! # Keys
//!
//! Each key is a pair generated inside the token (`C_GenerateKeyPair`), both halves token
//! objects labelled `keyturn:<name>` (`CKA_LABEL` and `CKA_ID`; the name is
//! `<keyset>-<random>`, so the label names the key set and the key). The private half is
//! `CKA_PRIVATE`, `CKA_SENSITIVE`, not `CKA_EXTRACTABLE`, and may only sign. `destroy`
//! removes both objects, the private one first.
//!
//! | algorithms            | key generation                | signature                              |
//! |-----------------------|-------------------------------|----------------------------------------|
//! | ES256 / ES384 / ES512 | `CKM_EC_KEY_PAIR_GEN`         | `CKM_ECDSA` over a SHA-2 digest made here (raw `r‖s`) |
//! | RS256 / RS384 / RS512 | `CKM_RSA_PKCS_KEY_PAIR_GEN`   | `CKM_RSA_PKCS` over the DigestInfo of a digest made here |
//! | PS256 / PS384 / PS512 | `CKM_RSA_PKCS_KEY_PAIR_GEN`   | `CKM_RSA_PKCS_PSS` over a digest made here (MGF1, salt = hash length) |
//! | EdDSA                 | `CKM_EC_EDWARDS_KEY_PAIR_GEN` | `CKM_EDDSA` over the message           |
//!
//! Hashing on the host needs only the plain mechanisms, which every token offers (SoftHSM
//! refuses `CKM_ECDSA_SHA256`), and sends a digest, not the token, to the HSM.
//! [`KeyBackend::supports`] asks the token's mechanism list. Every signature is checked
//! against the key's public half before it is returned: a faulty module, or a private
//! key swapped under keyturn's label, cannot put a bad signature into a token.
//!
//! # Sessions
//!
//! At most `max_sessions` sessions, opened as needed and kept; the token's login is
//! repeated after `CKR_USER_NOT_LOGGED_IN`, sessions are reopened after a token reset, and
//! a token that went away is looked for again, the module re-initialized at most once a
//! second, until it is back. Meanwhile calls fail with [`BackendError::Unavailable`].
//!
//! # Lifecycle state
//!
//! Each key set's document is a file in a private directory of this host
//! ([`StateDir`]), like the file backend's: atomic writes, check-and-set, and a lock that
//! refuses a second daemon on the same directory. The state is per host: a second daemon
//! (on another host) on the same token keeps its own key sets beside this one's. Its keys
//! have other names, so neither touches the other's keys, but they do not share a
//! history or a JWKS: use the vault or kms backend for replicas.
//!
//! The documents are authenticated ([`KeyBackend::state_mac`]) with HMAC-SHA256
//! (`CKM_SHA256_HMAC`) under a 256-bit generic secret generated in the token
//! (`CKM_GENERIC_SECRET_KEY_GEN`, labelled `keyturn-state-mac`; private, sensitive, never
//! extractable, for MACs only), made on first use: whoever can write the directory but not
//! use the token cannot make a document keyturn acts on. Reading a document first asks
//! the token whether it is there, so a daemon's maintenance notices a token that went away.

#![warn(missing_docs)]

mod keys;
mod module;
mod token;

pub use token::TokenSelector;

use async_trait::async_trait;
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::ObjectClass;
use keyturn_backend::fsutil::StateDir;
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType, PublicKey, StateBlob};
use module::Module;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use token::Token;
use zeroize::Zeroizing;

/// Sessions a pkcs11 backend opens at most, unless `max_sessions` says otherwise: small
/// HSMs allow few (a YubiHSM 2 has 16 for all its clients), and a few sessions already
/// keep a token busy.
pub const DEFAULT_MAX_SESSIONS: usize = 4;

fn default_max_sessions() -> usize {
    DEFAULT_MAX_SESSIONS
}

/// Settings of a pkcs11 backend as configured: the `backend = { type = "pkcs11", ... }`
/// table of a key set. The daemon resolves it (reads the PIN, picks the state directory)
/// into a [`Pkcs11BackendConfig`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pkcs11Config {
    /// The PKCS#11 module: the vendor's shared library.
    pub module: PathBuf,
    /// The token's label (or `slot`).
    pub token_label: Option<String>,
    /// The token's slot id (or `token_label`).
    pub slot: Option<u64>,
    /// File holding the user PIN (0600, or a systemd credential).
    pub pin_file: PathBuf,
    /// The most sessions open at once. Default [`DEFAULT_MAX_SESSIONS`].
    #[serde(default = "default_max_sessions")]
    pub max_sessions: usize,
    /// Lifecycle state directory. Default: `<data_dir>/pkcs11/<token_label>` (or
    /// `slot-<slot>`).
    pub state_dir: Option<PathBuf>,
}

impl Pkcs11Config {
    /// Checks what can be checked without loading the module.
    pub fn validate(&self) -> Result<(), BackendError> {
        let refuse = |m: String| Err(BackendError::Rejected(m));
        match (&self.token_label, self.slot) {
            (Some(label), None) => {
                // PKCS#11 labels are at most 32 bytes.
                if label.is_empty() || label.len() > 32 {
                    return refuse(
                        "token_label must be 1 to 32 bytes, as PKCS#11 labels are".into(),
                    );
                }
                let plain = label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
                    && !label.starts_with('.');
                if self.state_dir.is_none() && !plain {
                    return refuse(format!(
                        "token_label {label:?} cannot name the default state directory; set \
                         state_dir (e.g. \"/var/lib/keyturn/pkcs11\")"
                    ));
                }
            }
            (None, Some(_)) => {}
            _ => {
                return refuse(
                    "the pkcs11 backend needs token_label or slot (one of the two)".into(),
                )
            }
        }
        if !(1..=1024).contains(&self.max_sessions) {
            return refuse(format!(
                "max_sessions must be 1 to 1024 (default {DEFAULT_MAX_SESSIONS})"
            ));
        }
        Ok(())
    }
}

/// Settings of a PKCS#11 backend, resolved.
#[derive(Debug, Clone)]
pub struct Pkcs11BackendConfig {
    /// The module (the vendor's shared library).
    pub module: PathBuf,
    /// The token.
    pub token: TokenSelector,
    /// The user PIN.
    pub pin: Zeroizing<String>,
    /// The most sessions open at once.
    pub max_sessions: usize,
    /// Where the lifecycle documents are kept (created 0700 if missing).
    pub state_dir: PathBuf,
}

/// The mechanisms a token offers.
#[derive(Debug, Clone)]
pub struct Mechanisms(Vec<MechanismType>);

impl Mechanisms {
    /// The mechanisms `alg` needs that the token does not offer (e.g. "CKM_EDDSA"), or
    /// `None` when it offers them all.
    pub fn missing(&self, alg: Algorithm) -> Option<String> {
        self.lacking(&keys::mechanisms(alg))
    }

    /// The mechanisms the lifecycle documents' MAC needs that the token does not offer.
    pub fn missing_for_state(&self) -> Option<String> {
        self.lacking(&keys::STATE_MAC_MECHANISMS)
    }

    fn lacking(&self, needed: &[MechanismType]) -> Option<String> {
        let missing: Vec<String> = needed
            .iter()
            .filter(|m| !self.0.contains(m))
            .map(|m| m.to_string())
            .collect();
        (!missing.is_empty()).then(|| missing.join(" and "))
    }
}

/// The mechanisms of `token` in `module`, without logging in: what `check-config` asks.
pub async fn probe(module: &Path, token: &TokenSelector) -> Result<Mechanisms, BackendError> {
    let (module, token) = (module.to_path_buf(), token.clone());
    tokio::task::spawn_blocking(move || {
        let module = Module::load(&module)?;
        token::mechanisms(&module, &token).map(Mechanisms)
    })
    .await
    .map_err(|e| BackendError::unavailable("the PKCS#11 probe stopped", e))?
}

/// The state MAC key's entry in the handle cache (not a key name: those have no colon).
const STATE_MAC_HANDLE: &str = ":state-mac";

/// Keys in a PKCS#11 token, lifecycle documents in a local directory.
pub struct Pkcs11Backend {
    token: Arc<Token>,
    mechanisms: Mechanisms,
    states: StateDir,
    // Public keys by key name, read once.
    publics: Mutex<HashMap<String, PublicKey>>,
    // Serializes creation and destruction of keys in this process.
    keys_lock: tokio::sync::Mutex<()>,
}

impl Pkcs11Backend {
    /// Takes the state directory's lock, loads the module, finds the token and logs in.
    pub async fn open(config: &Pkcs11BackendConfig) -> Result<Self, BackendError> {
        if config.max_sessions == 0 {
            return Err(BackendError::Rejected(
                "max_sessions must be at least 1".into(),
            ));
        }
        let states = StateDir::open(&config.state_dir)?;
        let (path, selector, max) = (
            config.module.clone(),
            config.token.clone(),
            config.max_sessions,
        );
        let pin = cryptoki::types::AuthPin::from(config.pin.as_str());
        let token = tokio::task::spawn_blocking(move || {
            let module = Module::load(&path)?;
            Token::open(module, selector, pin, max)
        })
        .await
        .map_err(|e| BackendError::unavailable("opening the PKCS#11 token stopped", e))??;
        let mechanisms = Mechanisms(token.mechanisms.clone());
        if let Some(missing) = mechanisms.missing_for_state() {
            return Err(BackendError::Rejected(format!(
                "{} does not offer {missing}, which keyturn needs to authenticate its \
                 lifecycle documents",
                token.selector()
            )));
        }
        Ok(Pkcs11Backend {
            mechanisms,
            token: Arc::new(token),
            states,
            publics: Mutex::new(HashMap::new()),
            keys_lock: tokio::sync::Mutex::new(()),
        })
    }

    /// The mechanisms the token offered when it was opened.
    pub fn mechanisms(&self) -> &Mechanisms {
        &self.mechanisms
    }

    fn cached(&self, name: &str) -> Option<PublicKey> {
        self.publics
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(name)
            .cloned()
    }

    fn cache(&self, name: &str, public: Option<PublicKey>) {
        let mut publics = self.publics.lock().unwrap_or_else(PoisonError::into_inner);
        match public {
            Some(p) => publics.insert(name.to_owned(), p),
            None => publics.remove(name),
        };
    }
}

/// The objects of `class` labelled for `name`. Private ones are only visible once logged
/// in, so an empty answer is checked against the login, and against the token's presence.
fn find(
    ctx: &token::Ctx<'_>,
    class: ObjectClass,
    name: &str,
) -> Result<Vec<cryptoki::object::ObjectHandle>, Error> {
    let mut found = keys::find(ctx.session, class, name)?;
    if found.is_empty() && class == ObjectClass::PRIVATE_KEY && ctx.ensure_login()? {
        found = keys::find(ctx.session, class, name)?;
    }
    if found.is_empty() {
        ctx.confirm_token()?;
    }
    Ok(found)
}

#[async_trait]
impl KeyBackend for Pkcs11Backend {
    fn kind(&self) -> &'static str {
        "pkcs11"
    }

    fn supports(&self, alg: Algorithm) -> bool {
        self.mechanisms.missing(alg).is_none()
    }

    fn unsupported(&self, alg: Algorithm) -> String {
        match self.mechanisms.missing(alg) {
            Some(missing) => format!(
                "{} does not offer {missing}, which {alg} needs",
                self.token.selector()
            ),
            None => format!("{} offers what {alg} needs", self.token.selector()),
        }
    }

    async fn create_key(&self, name: &str, key_type: KeyType) -> Result<PublicKey, BackendError> {
        keyturn_backend::check_name(name)?;
        let _guard = self.keys_lock.lock().await;
        let owned = name.to_owned();
        let public = self
            .token
            .call(move |ctx| {
                let name = owned.as_str();
                let private = find(ctx, ObjectClass::PRIVATE_KEY, name)?;
                let mut public = keys::find(ctx.session, ObjectClass::PUBLIC_KEY, name)?;
                match (private.is_empty(), public.first()) {
                    (false, Some(_)) => {}
                    (false, None) => {
                        return Ok(Err(BackendError::Rejected(format!(
                            "key {name:?} has a private but no public object in the token; \
                             remove the object labelled {:?} or restore its public half",
                            String::from_utf8_lossy(&keys::label(name))
                        ))))
                    }
                    (true, leftover) => {
                        // A public half alone is what an interrupted destroy leaves.
                        if let Some(handle) = leftover {
                            ctx.session.destroy_object(*handle)?;
                        }
                        keys::generate(ctx.session, name, key_type)?;
                        public = keys::find(ctx.session, ObjectClass::PUBLIC_KEY, name)?;
                    }
                }
                match public.first() {
                    Some(handle) => keys::read_public(ctx.session, *handle),
                    None => Ok(Err(BackendError::Rejected(format!(
                        "the token generated key {name:?} but shows no public object for it"
                    )))),
                }
            })
            .await??;
        if public.key_type() != key_type {
            return Err(BackendError::Rejected(format!(
                "key {name:?} exists with another type"
            )));
        }
        self.cache(name, Some(public.clone()));
        Ok(public)
    }

    async fn public_key(&self, name: &str) -> Result<PublicKey, BackendError> {
        keyturn_backend::check_name(name)?;
        if let Some(public) = self.cached(name) {
            return Ok(public);
        }
        let owned = name.to_owned();
        let public = self
            .token
            .call(
                move |ctx| match find(ctx, ObjectClass::PUBLIC_KEY, &owned)?.first() {
                    Some(handle) => keys::read_public(ctx.session, *handle).map(Some),
                    None => Ok(None),
                },
            )
            .await?
            .ok_or_else(|| BackendError::NotFound(name.to_owned()))??;
        self.cache(name, Some(public.clone()));
        Ok(public)
    }

    async fn sign(
        &self,
        name: &str,
        alg: Algorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        let public = self.public_key(name).await?;
        if !public.key_type().can_sign(alg) {
            return Err(BackendError::Rejected(format!(
                "key {name:?} is a {:?} key and cannot sign {alg}",
                public.key_type()
            )));
        }
        let (owned, input) = (name.to_owned(), message.to_vec());
        let signature = self
            .token
            .call(move |ctx| {
                let handle = match ctx.handle(&owned) {
                    Some(handle) => handle,
                    None => match find(ctx, ObjectClass::PRIVATE_KEY, &owned)?.first() {
                        Some(handle) => {
                            ctx.set_handle(&owned, Some(*handle));
                            *handle
                        }
                        None => return Ok(None),
                    },
                };
                keys::sign(ctx.session, handle, alg, &input).map(Some)
            })
            .await?
            .ok_or_else(|| BackendError::NotFound(name.to_owned()))?;
        if !public.jwk().verify(alg, message, &signature) {
            return Err(BackendError::Rejected(format!(
                "{} returned a {alg} signature that does not verify with the public key of \
                 {name:?}; the token or its module is faulty, or the key object was replaced",
                self.token.selector()
            )));
        }
        Ok(signature)
    }

    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        keyturn_backend::check_name(name)?;
        let _guard = self.keys_lock.lock().await;
        let owned = name.to_owned();
        let result = self
            .token
            .call(move |ctx| {
                // The private half first: a key interrupted half way can no longer sign.
                for class in [ObjectClass::PRIVATE_KEY, ObjectClass::PUBLIC_KEY] {
                    for handle in find(ctx, class, &owned)? {
                        match ctx.session.destroy_object(handle) {
                            Ok(()) | Err(Error::Pkcs11(RvError::ObjectHandleInvalid, _)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                ctx.set_handle(&owned, None);
                Ok(())
            })
            .await;
        self.cache(name, None);
        result
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let prefix = prefix.to_owned();
        let names = self
            .token
            .call(|ctx| {
                ctx.ensure_login()?;
                keys::names(ctx.session)
            })
            .await?;
        Ok(names
            .into_iter()
            .filter(|n| n.starts_with(&prefix) && keyturn_backend::check_name(n).is_ok())
            .collect())
    }

    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        // The document is on this host; the keys it names are not: the maintenance loop
        // reads it, and must notice a token that went away.
        self.health().await?;
        self.states.load(keyset).await
    }

    async fn store_state(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        self.states.store(keyset, data, expected).await
    }

    async fn state_mac(&self, keyset: &str, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        let digest = keyturn_backend::state_digest(keyset, data);
        self.token
            .call(move |ctx| {
                let key = match ctx.handle(STATE_MAC_HANDLE) {
                    Some(key) => key,
                    None => {
                        ctx.ensure_login()?;
                        match keys::state_mac_key(ctx.session)? {
                            Ok(key) => {
                                ctx.set_handle(STATE_MAC_HANDLE, Some(key));
                                key
                            }
                            Err(refusal) => return Ok(Err(BackendError::Rejected(refusal))),
                        }
                    }
                };
                keys::state_mac(ctx.session, key, &digest).map(Ok)
            })
            .await?
    }

    async fn health(&self) -> Result<(), BackendError> {
        self.token
            .call(|ctx| {
                ctx.confirm_token()?;
                ctx.ensure_login().map(drop)
            })
            .await
    }
}

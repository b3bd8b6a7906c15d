//! The backend factory: one arm per backend. A backend that exists but was not compiled in
//! gives its own clear error.

use crate::config::{resolve_credential, BackendConfig, Env, FileTable, Pkcs11Table, ServerConfig};
use crate::infra::metrics::Metrics;
use async_trait::async_trait;
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType, PublicKey, StateBlob};
use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Instant;

/// Builds backends, sharing one instance between key sets with the same settings (the file
/// backend locks its directory, so it must be opened once). It holds them weakly: a backend
/// lives as long as a key set (or a request) uses it, and one that no key set uses any
/// more, after a reload or a refused one, is closed (a file backend's directory unlocked).
pub struct Factory {
    built: Vec<(BackendConfig, Weak<dyn KeyBackend>)>,
    custom: Vec<(String, Arc<dyn KeyBackend>)>,
    metrics: Arc<Metrics>,
}

#[cfg_attr(
    all(
        feature = "file",
        feature = "vault",
        feature = "kms",
        feature = "pkcs11"
    ),
    allow(dead_code)
)]
fn not_compiled(kind: &str) -> String {
    format!(
        "this keyturn was built without the {kind} backend; rebuild with `cargo build --release --features {kind}`"
    )
}

impl Factory {
    /// A factory that also knows these custom backends, by name, and meters every backend
    /// it builds into `metrics`.
    pub fn new(custom: Vec<(String, Arc<dyn KeyBackend>)>, metrics: Arc<Metrics>) -> Self {
        Factory {
            built: Vec::new(),
            custom,
            metrics,
        }
    }

    /// The backend for `config`.
    pub async fn get(
        &mut self,
        config: &BackendConfig,
        server: &ServerConfig,
    ) -> Result<Arc<dyn KeyBackend>, String> {
        self.built.retain(|(_, b)| b.strong_count() > 0);
        let wanted = identity(config, server);
        for (built, backend) in &self.built {
            let Some(backend) = backend.upgrade() else {
                continue;
            };
            match (built, &wanted) {
                (a, b) if a == b => return Ok(backend),
                #[cfg(feature = "file")]
                (BackendConfig::File(a), BackendConfig::File(b))
                    if a.dir == b.dir && a.kek_file != b.kek_file =>
                {
                    return Err(format!(
                        "the key directory {} is used with two kek_file settings; key sets \
                         that share a directory share its backend and its key-encryption \
                         key: give them the same kek_file",
                        a.dir.as_deref().unwrap_or(Path::new("")).display()
                    ))
                }
                #[cfg(feature = "pkcs11")]
                (BackendConfig::Pkcs11(a), BackendConfig::Pkcs11(b))
                    if a.state_dir == b.state_dir =>
                {
                    return Err(format!(
                        "the pkcs11 state directory {} is used with two different pkcs11 \
                         settings; key sets on one token share its backend: give them the \
                         same module, token, pin_file and max_sessions (or each its own \
                         state_dir)",
                        a.state_dir.as_deref().unwrap_or(Path::new("")).display()
                    ))
                }
                _ => {}
            }
        }
        let backend = match config {
            BackendConfig::Custom { name } => self
                .custom
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, b)| b.clone())
                .ok_or_else(|| {
                    format!(
                        "no custom backend named {name:?} is compiled into this keyturn \
                         (custom backends are registered with app::run_with_backends)"
                    )
                })?,
            _ => build(config, server).await?,
        };
        let backend: Arc<dyn KeyBackend> = Arc::new(Metered {
            inner: backend,
            metrics: self.metrics.clone(),
        });
        // Once built, a new directory exists and resolves.
        self.built
            .push((identity(config, server), Arc::downgrade(&backend)));
        Ok(backend)
    }
}

#[cfg(feature = "file")]
/// The directory a file backend keeps its keys in: `dir`, else `<data_dir>/keys`.
fn key_dir(dir: Option<&Path>, server: &ServerConfig) -> std::path::PathBuf {
    dir.map_or_else(|| server.data_dir.join("keys"), Path::to_path_buf)
}

#[cfg(feature = "file")]
/// The key-encryption key file a file backend uses: `kek_file` (a relative path names a
/// credential), else the `keyturn-kek` credential if there is one, else `<data_dir>/kek`.
fn kek_path(kek_file: Option<&Path>, server: &ServerConfig) -> std::path::PathBuf {
    let env = Env {
        credentials_directory: server.credentials_dir.clone(),
        ..Env::default()
    };
    match (kek_file, &server.credentials_dir) {
        (Some(path), _) => resolve_credential(path, &env),
        (None, Some(creds)) if creds.join("keyturn-kek").exists() => creds.join("keyturn-kek"),
        (None, _) => server.data_dir.join("kek"),
    }
}

/// The directory a pkcs11 backend keeps lifecycle state in: `state_dir`, else
/// `<data_dir>/pkcs11/<token_label>` (or `slot-<slot>`; config validation makes sure the
/// label is a plain file name when it names the directory).
#[cfg(feature = "pkcs11")]
fn pkcs11_state_dir(config: &Pkcs11Table, server: &ServerConfig) -> std::path::PathBuf {
    match (&config.state_dir, &config.token_label, config.slot) {
        (Some(dir), _, _) => dir.clone(),
        (None, Some(label), _) => server.data_dir.join("pkcs11").join(label),
        (None, None, slot) => server
            .data_dir
            .join("pkcs11")
            .join(format!("slot-{}", slot.unwrap_or_default())),
    }
}

/// What makes two settings one backend: a file backend is its directory and its KEK file,
/// however each is written (the default or spelled out, through a symlink, with a trailing
/// slash), so that key sets sharing a directory share one backend rather than fail on its
/// lock; a pkcs11 backend is its settings with its state directory resolved the same way.
fn identity(config: &BackendConfig, server: &ServerConfig) -> BackendConfig {
    let real = |path: std::path::PathBuf| Some(std::fs::canonicalize(&path).unwrap_or(path));
    match config {
        #[cfg(feature = "file")]
        BackendConfig::File(file) => BackendConfig::File(FileTable {
            dir: real(key_dir(file.dir.as_deref(), server)),
            kek_file: real(kek_path(file.kek_file.as_deref(), server)),
        }),
        #[cfg(feature = "pkcs11")]
        BackendConfig::Pkcs11(pkcs11) => BackendConfig::Pkcs11(Pkcs11Table {
            state_dir: real(pkcs11_state_dir(pkcs11, server)),
            ..pkcs11.clone()
        }),
        other => other.clone(),
    }
}

/// An error with its causes, each once: "cannot read X: No such file or directory".
fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

async fn build(
    config: &BackendConfig,
    server: &ServerConfig,
) -> Result<Arc<dyn KeyBackend>, String> {
    let env = Env {
        credentials_directory: server.credentials_dir.clone(),
        ..Env::default()
    };
    match config {
        #[cfg(feature = "file")]
        BackendConfig::File(file) => {
            use keyturn_backend_file::{FileBackend, FileBackendConfig, KekSource};
            let dir = key_dir(file.dir.as_deref(), server);
            let path = kek_path(file.kek_file.as_deref(), server);
            let kek = match &server.credentials_dir {
                Some(creds) if path.starts_with(creds) => KekSource::Credential(path),
                _ if file.kek_file.is_some() => KekSource::Existing(path),
                // <data_dir>/kek, made on the first start.
                _ => KekSource::File(path),
            };
            let backend =
                FileBackend::open(&FileBackendConfig { dir, kek }).map_err(|e| with_causes(&e))?;
            Ok(Arc::new(backend))
        }
        #[cfg(not(feature = "file"))]
        BackendConfig::File(_) => Err(not_compiled("file")),
        #[cfg(feature = "vault")]
        BackendConfig::Vault(vault) => {
            // Secret paths may name systemd credentials.
            let credential =
                |f: &Option<std::path::PathBuf>| f.as_ref().map(|f| resolve_credential(f, &env));
            let mut config = vault.clone();
            config.token_file = credential(&vault.token_file);
            config.approle_secret_id_file = credential(&vault.approle_secret_id_file);
            config.ca_file = credential(&vault.ca_file);
            config.credentials_dir.clone_from(&server.credentials_dir);
            let backend = keyturn_backend_vault::VaultBackend::connect(&config)
                .await
                .map_err(|e| with_causes(&e))?;
            Ok(Arc::new(backend))
        }
        #[cfg(not(feature = "vault"))]
        BackendConfig::Vault(_) => Err(not_compiled("vault")),
        #[cfg(feature = "kms")]
        BackendConfig::Kms(kms) => {
            let backend = keyturn_backend_kms::KmsBackend::connect(kms)
                .await
                .map_err(|e| with_causes(&e))?;
            Ok(Arc::new(backend))
        }
        #[cfg(not(feature = "kms"))]
        BackendConfig::Kms(_) => Err(not_compiled("kms")),
        #[cfg(feature = "pkcs11")]
        BackendConfig::Pkcs11(pkcs11) => {
            use keyturn_backend_pkcs11::{Pkcs11Backend, Pkcs11BackendConfig};
            let pin_path = resolve_credential(&pkcs11.pin_file, &env);
            let pin = crate::config::secret::read_secret_file(
                &pin_path,
                server.credentials_dir.as_deref(),
            )?;
            let pin = zeroize::Zeroizing::new(pin.trim_end_matches(['\r', '\n']).to_owned());
            if pin.is_empty() {
                return Err(format!(
                    "pin_file {} is empty; put the token's user PIN in it",
                    pin_path.display()
                ));
            }
            let config = Pkcs11BackendConfig {
                module: pkcs11.module.clone(),
                token: token_selector(pkcs11.token_label.as_deref(), pkcs11.slot),
                pin,
                max_sessions: pkcs11.max_sessions,
                state_dir: pkcs11_state_dir(pkcs11, server),
            };
            let backend = Pkcs11Backend::open(&config)
                .await
                .map_err(|e| with_causes(&e))?;
            Ok(Arc::new(backend))
        }
        #[cfg(not(feature = "pkcs11"))]
        BackendConfig::Pkcs11(_) => Err(not_compiled("pkcs11")),
        BackendConfig::Custom { name } => Err(format!("custom backend {name:?} is not registered")),
    }
}

#[cfg(feature = "pkcs11")]
fn token_selector(label: Option<&str>, slot: Option<u64>) -> keyturn_backend_pkcs11::TokenSelector {
    use keyturn_backend_pkcs11::TokenSelector;
    match (label, slot) {
        (Some(label), _) => TokenSelector::Label(label.to_owned()),
        (None, slot) => TokenSelector::Slot(slot.unwrap_or_default()),
    }
}

/// What `check-config` can check of `config` beyond the file, offline: for a pkcs11
/// backend, that the token offers the mechanisms `alg` needs (found without the PIN).
/// `Ok(Some(note))` tells what was checked or why it could not be; `Err` names what is
/// missing.
pub async fn check_offline(
    config: &BackendConfig,
    alg: Algorithm,
) -> Result<Option<String>, String> {
    match config {
        #[cfg(feature = "pkcs11")]
        BackendConfig::Pkcs11(pkcs11) => {
            let token = token_selector(pkcs11.token_label.as_deref(), pkcs11.slot);
            match keyturn_backend_pkcs11::probe(&pkcs11.module, &token).await {
                Ok(mechanisms) => match (mechanisms.missing(alg), mechanisms.missing_for_state()) {
                    (None, None) => Ok(Some(format!("{token} offers the mechanisms {alg} needs"))),
                    (Some(missing), _) => Err(format!(
                        "{token} does not offer {missing}, which {alg} needs; pick another \
                         algorithm or token"
                    )),
                    (None, Some(missing)) => Err(format!(
                        "{token} does not offer {missing}, which keyturn needs to \
                         authenticate its lifecycle documents; pick another token"
                    )),
                },
                Err(e) => Ok(Some(format!(
                    "not checked against the token: {}",
                    with_causes(&e)
                ))),
            }
        }
        _ => Ok(None),
    }
}

/// Measures every backend call but `sign` (which the sign path measures per key set) into
/// `keyturn_backend_call_duration_seconds` and `keyturn_backend_errors`.
struct Metered {
    inner: Arc<dyn KeyBackend>,
    metrics: Arc<Metrics>,
}

impl Metered {
    async fn timed<T>(
        &self,
        op: &'static str,
        call: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let started = Instant::now();
        let result = call.await;
        let error = result.as_ref().err();
        self.metrics
            .observe_backend(self.inner.kind(), op, error, started.elapsed());
        result
    }
}

#[async_trait]
impl KeyBackend for Metered {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }
    fn supports(&self, alg: Algorithm) -> bool {
        self.inner.supports(alg)
    }
    fn unsupported(&self, alg: Algorithm) -> String {
        self.inner.unsupported(alg)
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    async fn create_key(&self, name: &str, key_type: KeyType) -> Result<PublicKey, BackendError> {
        self.timed("create_key", self.inner.create_key(name, key_type))
            .await
    }
    async fn public_key(&self, name: &str) -> Result<PublicKey, BackendError> {
        self.timed("public_key", self.inner.public_key(name)).await
    }
    async fn sign(
        &self,
        name: &str,
        alg: Algorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        self.inner.sign(name, alg, message).await
    }
    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        self.timed("destroy", self.inner.destroy(name)).await
    }
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        self.timed("list_keys", self.inner.list_keys(prefix)).await
    }
    async fn state_mac(&self, keyset: &str, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        self.timed("state_mac", self.inner.state_mac(keyset, data))
            .await
    }
    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        self.timed("load_state", self.inner.load_state(keyset))
            .await
    }
    async fn store_state(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        self.timed(
            "store_state",
            self.inner.store_state(keyset, data, expected),
        )
        .await
    }
    async fn health(&self) -> Result<(), BackendError> {
        self.timed("health", self.inner.health()).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_show_their_causes_once() {
        let missing = || std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = BackendError::storage("cannot read the key-encryption key /k", missing());
        assert_eq!(
            with_causes(&e),
            format!(
                "backend storage error: cannot read the key-encryption key /k: {}",
                missing()
            )
        );
        // A cause already in the message is not repeated.
        let e = BackendError::storage(format!("cannot open /k: {}", missing()), missing());
        assert_eq!(
            with_causes(&e),
            format!("backend storage error: cannot open /k: {}", missing())
        );
    }

    /// Key sets that name one key directory in different ways share one backend (a second
    /// would fail on the directory's lock); two KEKs for one directory are refused clearly.
    #[cfg(feature = "file")]
    #[tokio::test]
    async fn one_directory_is_one_backend_however_it_is_written() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .unwrap();
        std::os::unix::fs::symlink(&data, tmp.path().join("link")).unwrap();
        let toml = format!(
            "[server]\ndata_dir = \"{}\"\n{}",
            data.display(),
            crate::core::testing::KEYSET
        );
        let config = crate::config::Config::parse(&toml, Env::default()).unwrap();
        let mut factory = Factory::new(Vec::new(), Arc::new(Metrics::default()));
        let file = |dir: Option<std::path::PathBuf>, kek_file: Option<&str>| {
            BackendConfig::File(FileTable {
                dir,
                kek_file: kek_file.map(Into::into),
            })
        };
        let first = factory
            .get(&file(None, None), &config.server)
            .await
            .unwrap();
        for alias in [
            data.join("keys/"),
            tmp.path().join("link/keys"),
            data.join("keys/../keys"),
        ] {
            let again = factory
                .get(&file(Some(alias.clone()), None), &config.server)
                .await;
            assert!(Arc::ptr_eq(&first, &again.unwrap()), "{}", alias.display());
        }
        // The default KEK spelled out is the same KEK; another one is refused.
        let same = factory
            .get(&file(None, data.join("kek").to_str()), &config.server)
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&first, &same));
        let other_kek = data.join("other.kek");
        std::fs::write(&other_kek, [7u8; 32]).unwrap();
        let err = factory
            .get(&file(None, other_kek.to_str()), &config.server)
            .await
            .err()
            .unwrap();
        assert!(err.contains("two kek_file settings"), "{err}");
        // Another directory is another backend.
        let other = factory
            .get(&file(Some(data.join("other")), None), &config.server)
            .await
            .unwrap();
        assert!(!Arc::ptr_eq(&first, &other));
    }
}

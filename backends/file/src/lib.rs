//! The file backend: keys generated in this process and kept encrypted at rest.
//!
//! Layout under `dir` (0700, checked at open):
//!
//! ```text
//! <name>.key       AES-256-GCM(PKCS#8), AAD = name and key type   (0600)
//! <keyset>.state   lifecycle document and its version              (0600)
//! .lock            held exclusively while the backend is open
//! ```
//!
//! The key-encryption key (KEK) is 32 random bytes in a file of its own, created on
//! first start when the operator allows it, or a systemd credential. Every write is atomic:
//! temp file, fsync, rename, fsync of the directory. A second daemon on the same directory
//! is refused, as the file backend is for a single host.

#![warn(missing_docs)]

use arc_swap::ArcSwap;
use async_trait::async_trait;
use aws_lc_rs::aead::{Aad, RandomizedNonceKey, AES_256_GCM, NONCE_LEN};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use keyturn_backend::software::SoftwareKey;
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType, PublicKey, StateBlob};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use zeroize::Zeroizing;

use keyturn_backend::fsutil::{self, StateDir};

/// Where the key-encryption key comes from.
#[derive(Debug, Clone)]
pub enum KekSource {
    /// A file that is created with 32 random bytes if it does not exist.
    File(PathBuf),
    /// A file that must exist and be private to its owner (an operator-provided secret).
    Existing(PathBuf),
    /// A systemd credential: held to the credential rule of
    /// [`fsutil::check_secret_file`] (0400, or 0440 where the directory supports ACLs).
    Credential(PathBuf),
}

/// Settings of a file backend as configured: the `backend = { type = "file", ... }` table
/// of a key set. The daemon resolves the defaults into a [`FileBackendConfig`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// The key directory. Default: `<data_dir>/keys`.
    pub dir: Option<PathBuf>,
    /// The key-encryption key file (a relative path names a systemd credential). Default:
    /// the `keyturn-kek` credential if there is one, else `<data_dir>/kek`, created on the
    /// first start.
    pub kek_file: Option<PathBuf>,
}

/// Settings of a file backend, resolved.
#[derive(Debug, Clone)]
pub struct FileBackendConfig {
    /// The key directory.
    pub dir: PathBuf,
    /// The key-encryption key.
    pub kek: KekSource,
}

/// Keys and lifecycle documents in an encrypted local directory.
pub struct FileBackend {
    dir: PathBuf,
    kek: RandomizedNonceKey,
    // Authenticates lifecycle documents; derived from the KEK, so a writer of the directory
    // without the KEK cannot make one.
    mac_key: aws_lc_rs::hmac::Key,
    // Decrypted keys. Signing reads it without writing to shared memory (no lock word, no
    // reference count: on two cores each such write moves a cache line between them);
    // loading, generating and destroying a key replace the map.
    cache: ArcSwap<HashMap<String, Arc<SoftwareKey>>>,
    // Serializes creation and destruction of keys.
    write_lock: tokio::sync::Mutex<()>,
    // The lifecycle documents, in the same directory, and its lock.
    states: StateDir,
}

#[derive(Serialize, Deserialize)]
struct KeyFile {
    v: u32,
    key_type: KeyType,
    nonce: String,
    ciphertext: String,
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

fn unb64(s: &str) -> Result<Vec<u8>, BackendError> {
    B64.decode(s)
        .map_err(|_| BackendError::Rejected("corrupt base64 in key file".into()))
}

fn aad(name: &str, key_type: KeyType) -> String {
    format!("keyturn-file-key-v1:{name}:{key_type:?}")
}

impl FileBackend {
    /// Opens (creating if needed) the key directory and loads the KEK.
    ///
    /// Refuses directories or files readable by group or other, and a directory another
    /// process holds open.
    pub fn open(config: &FileBackendConfig) -> Result<Self, BackendError> {
        let dir = config.dir.clone();
        let states = StateDir::open(&dir)?;
        let kek_bytes = load_kek(&config.kek)?;
        let kek = RandomizedNonceKey::new(&AES_256_GCM, &kek_bytes).map_err(|_| {
            BackendError::Rejected("the key-encryption key must be 32 bytes".into())
        })?;
        let mac_key = state_mac_key(&kek_bytes)?;
        Ok(FileBackend {
            dir,
            kek,
            mac_key,
            cache: ArcSwap::default(),
            write_lock: tokio::sync::Mutex::new(()),
            states,
        })
    }

    fn key_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.key"))
    }

    fn seal(&self, name: &str, key: &SoftwareKey) -> Result<Vec<u8>, BackendError> {
        let pkcs8 = key.to_pkcs8()?;
        // Room for the tag up front: growing the buffer would leave an unwiped copy behind.
        let mut buf = Zeroizing::new(Vec::with_capacity(pkcs8.len() + AES_256_GCM.tag_len()));
        buf.extend_from_slice(&pkcs8);
        let nonce = self
            .kek
            .seal_in_place_append_tag(Aad::from(aad(name, key.key_type()).as_bytes()), &mut *buf)
            .map_err(|_| BackendError::Rejected("encryption failed".into()))?;
        let file = KeyFile {
            v: 1,
            key_type: key.key_type(),
            nonce: b64(nonce.as_ref()),
            ciphertext: b64(&buf),
        };
        serde_json::to_vec(&file).map_err(|e| BackendError::storage("cannot encode key file", e))
    }

    fn unseal(&self, name: &str, bytes: &[u8]) -> Result<SoftwareKey, BackendError> {
        let corrupt = || {
            BackendError::Storage {
            message: format!("key file for {name:?} is corrupt or was encrypted under another key-encryption key"),
            source: None,
        }
        };
        let file: KeyFile = serde_json::from_slice(bytes).map_err(|_| corrupt())?;
        let nonce: [u8; NONCE_LEN] = unb64(&file.nonce)?.try_into().map_err(|_| corrupt())?;
        let mut buf = Zeroizing::new(unb64(&file.ciphertext)?);
        let plain = self
            .kek
            .open_in_place(
                aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(name, file.key_type).as_bytes()),
                &mut buf,
            )
            .map_err(|_| corrupt())?;
        SoftwareKey::from_pkcs8(file.key_type, plain)
    }

    /// The key `name`, from the cache or decrypted from disk.
    async fn key(&self, name: &str) -> Result<Arc<SoftwareKey>, BackendError> {
        keyturn_backend::check_name(name)?;
        if let Some(key) = self.cache.load().get(name) {
            return Ok(key.clone());
        }
        let path = self.key_path(name);
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BackendError::NotFound(name.to_owned()))
            }
            Err(e) => {
                return Err(BackendError::storage(
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
        };
        fsutil::check_private_file(&path)?;
        let key = Arc::new(self.unseal(name, &bytes)?);
        self.cache_set(name, Some(key.clone()));
        // A destroy may have run since the read. It deletes the file before it evicts the
        // key, so if the file is gone now, the key just cached must not stay: else a
        // destroyed key would sign until the next restart.
        let still_there = tokio::fs::try_exists(&path)
            .await
            .map_err(|e| BackendError::storage(format!("cannot check {}", path.display()), e))?;
        if !still_there {
            self.cache_set(name, None);
            return Err(BackendError::NotFound(name.to_owned()));
        }
        Ok(key)
    }

    /// Caches `key` as `name`, or evicts `name` (`None`), in a new copy of the map.
    fn cache_set(&self, name: &str, key: Option<Arc<SoftwareKey>>) {
        self.cache.rcu(|keys| {
            let mut keys = HashMap::clone(keys);
            match &key {
                Some(key) => keys.insert(name.to_owned(), key.clone()),
                None => keys.remove(name),
            };
            keys
        });
    }
}

/// The lifecycle documents' MAC key: HKDF-SHA256 of the KEK, for that purpose alone.
fn state_mac_key(kek: &[u8]) -> Result<aws_lc_rs::hmac::Key, BackendError> {
    use aws_lc_rs::hkdf::{Salt, HKDF_SHA256};
    let prk = Salt::new(HKDF_SHA256, b"keyturn-file").extract(kek);
    let okm = prk
        .expand(&[b"keyturn-state-mac-v1"], aws_lc_rs::hmac::HMAC_SHA256)
        .map_err(|_| BackendError::Rejected("cannot derive the state MAC key".into()))?;
    Ok(aws_lc_rs::hmac::Key::from(okm))
}

fn load_kek(source: &KekSource) -> Result<Zeroizing<Vec<u8>>, BackendError> {
    let path = match source {
        KekSource::File(p) | KekSource::Existing(p) | KekSource::Credential(p) => p,
    };
    match std::fs::read(path).map(Zeroizing::new) {
        Ok(bytes) => {
            let credentials_dir = match source {
                KekSource::Credential(p) => p.parent(),
                _ => None,
            };
            fsutil::check_secret_file(path, credentials_dir)?;
            if bytes.len() != 32 {
                return Err(BackendError::Rejected(format!(
                    "key-encryption key {} must hold exactly 32 bytes, it holds {}",
                    path.display(),
                    bytes.len()
                )));
            }
            Ok(bytes)
        }
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound && matches!(source, KekSource::File(_)) =>
        {
            let mut kek = Zeroizing::new(vec![0u8; 32]);
            SystemRandom::new().fill(&mut kek).map_err(|_| {
                BackendError::Rejected("no randomness for the key-encryption key".into())
            })?;
            let parent = path.parent().unwrap_or(Path::new("."));
            fsutil::ensure_private_dir(parent)?;
            fsutil::write_atomic(path, &kek)?;
            tracing::info!(path = %path.display(), "created a new key-encryption key");
            Ok(kek)
        }
        Err(e) => Err(BackendError::storage(
            format!("cannot read the key-encryption key {}", path.display()),
            e,
        )),
    }
}

#[async_trait]
impl KeyBackend for FileBackend {
    fn kind(&self) -> &'static str {
        "file"
    }

    fn supports(&self, _alg: Algorithm) -> bool {
        true
    }

    async fn create_key(&self, name: &str, key_type: KeyType) -> Result<PublicKey, BackendError> {
        keyturn_backend::check_name(name)?;
        let _guard = self.write_lock.lock().await;
        match self.key(name).await {
            Ok(existing) if existing.key_type() == key_type => return existing.public_key(),
            Ok(_) => {
                return Err(BackendError::Rejected(format!(
                    "key {name:?} exists with another type"
                )))
            }
            Err(BackendError::NotFound(_)) => {}
            Err(e) => return Err(e),
        }
        let key = generate_at_low_priority(key_type).await?;
        let sealed = self.seal(name, &key)?;
        let path = self.key_path(name);
        tokio::task::spawn_blocking(move || fsutil::write_atomic(&path, &sealed))
            .await
            .map_err(|e| BackendError::storage("write task failed", e))??;
        let public = key.public_key()?;
        self.cache_set(name, Some(Arc::new(key)));
        Ok(public)
    }

    async fn public_key(&self, name: &str) -> Result<PublicKey, BackendError> {
        self.key(name).await?.public_key()
    }

    async fn sign(
        &self,
        name: &str,
        alg: Algorithm,
        message: &[u8],
    ) -> Result<Vec<u8>, BackendError> {
        if let Some(key) = self.cache.load().get(name) {
            return key.sign(alg, message);
        }
        self.key(name).await?.sign(alg, message)
    }

    async fn destroy(&self, name: &str) -> Result<(), BackendError> {
        keyturn_backend::check_name(name)?;
        let _guard = self.write_lock.lock().await;
        // The file first, then the cache: a concurrent cache fill checks the file after it
        // inserts (see `key`). The key is evicted whatever the removal says: one whose file
        // is still there is only read again.
        let path = self.key_path(name);
        let removed = tokio::task::spawn_blocking(move || fsutil::remove_durable(&path)).await;
        self.cache_set(name, None);
        removed.map_err(|e| BackendError::storage("remove task failed", e))?
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, BackendError> {
        let dir = &self.dir;
        let mut names = Vec::new();
        let entries = std::fs::read_dir(dir)
            .map_err(|e| BackendError::storage(format!("cannot list {}", dir.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| BackendError::storage("cannot list keys", e))?;
            let file = entry.file_name();
            if let Some(name) = file.to_str().and_then(|f| f.strip_suffix(".key")) {
                if name.starts_with(prefix) && keyturn_backend::check_name(name).is_ok() {
                    names.push(name.to_owned());
                }
            }
        }
        Ok(names)
    }

    async fn state_mac(&self, keyset: &str, data: &[u8]) -> Result<Vec<u8>, BackendError> {
        Ok(keyturn_backend::hmac_state(&self.mac_key, keyset, data))
    }

    async fn load_state(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
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

    async fn health(&self) -> Result<(), BackendError> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || fsutil::check_private_dir(&dir))
            .await
            .map_err(|e| BackendError::storage("health task failed", e))?
    }
}

/// Sets the calling thread's nice value to 19. Linux only: there the nice value belongs to
/// the thread; elsewhere `setpriority(PRIO_PROCESS, 0)` would renice the whole daemon, for
/// good. A refusal (a seccomp filter without `setpriority`) leaves normal priority.
fn lower_this_threads_priority() {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::debug!(error = %e, "key generation runs at normal priority: setpriority refused");
    }
}

/// Generates a key on a thread of its own at the lowest CPU priority (nice 19). An RSA-4096
/// key takes up to seconds of CPU: off the async workers, and behind every signing request
/// when the CPUs are busy (it would show in the signing latency during a rotation).
async fn generate_at_low_priority(key_type: KeyType) -> Result<SoftwareKey, BackendError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("keyturn-keygen".into())
        .spawn(move || {
            lower_this_threads_priority();
            let _ = tx.send(SoftwareKey::generate(key_type));
        })
        .map_err(|e| BackendError::storage("cannot start key generation", e))?;
    rx.await.map_err(|_| {
        BackendError::storage(
            "key generation failed",
            std::io::Error::other("the key generation thread stopped"),
        )
    })?
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn config(dir: &Path) -> FileBackendConfig {
        FileBackendConfig {
            dir: dir.join("keys"),
            kek: KekSource::File(dir.join("kek")),
        }
    }

    fn private_tempdir() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
        dir
    }

    #[tokio::test]
    async fn file_backend_passes_conformance() {
        let dir = private_tempdir();
        let backend = FileBackend::open(&config(dir.path())).unwrap();
        keyturn_backend::conformance::run(&backend, "conf").await;
    }

    #[tokio::test]
    async fn keys_survive_reopen_and_are_encrypted() {
        let dir = private_tempdir();
        let public = {
            let backend = FileBackend::open(&config(dir.path())).unwrap();
            let public = backend.create_key("k1", KeyType::EcP256).await.unwrap();
            backend.store_state("ks", b"{}", None).await.unwrap();
            public
        };
        let backend = FileBackend::open(&config(dir.path())).unwrap();
        assert_eq!(backend.public_key("k1").await.unwrap(), public);
        assert_eq!(backend.load_state("ks").await.unwrap().unwrap().version, 1);
        // The PKCS#8 body of the key is not on disk in the clear.
        let on_disk = std::fs::read(dir.path().join("keys/k1.key")).unwrap();
        let key = backend.key("k1").await.unwrap();
        let pkcs8 = key.to_pkcs8().unwrap();
        assert!(!on_disk
            .windows(32)
            .any(|w| pkcs8.windows(32).any(|p| p == w)));
        let mode = std::fs::metadata(dir.path().join("keys/k1.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[tokio::test]
    async fn wrong_kek_is_a_clear_error() {
        let dir = private_tempdir();
        {
            let backend = FileBackend::open(&config(dir.path())).unwrap();
            backend.create_key("k1", KeyType::Ed25519).await.unwrap();
        }
        std::fs::remove_file(dir.path().join("kek")).unwrap();
        let backend = FileBackend::open(&config(dir.path())).unwrap();
        let err = backend.public_key("k1").await.unwrap_err().to_string();
        assert!(err.contains("another key-encryption key"), "{err}");
    }

    #[tokio::test]
    async fn loose_modes_are_refused() {
        let dir = private_tempdir();
        let cfg = config(dir.path());
        drop(FileBackend::open(&cfg).unwrap());
        std::fs::set_permissions(&cfg.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let err = FileBackend::open(&cfg).err().unwrap().to_string();
        assert!(err.contains("0755") && err.contains("chmod 700"), "{err}");
        std::fs::set_permissions(&cfg.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(
            dir.path().join("kek"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let err = FileBackend::open(&cfg).err().unwrap().to_string();
        assert!(err.contains("chmod 600"), "{err}");
    }

    #[tokio::test]
    async fn a_second_daemon_on_the_same_dir_is_refused() {
        let dir = private_tempdir();
        let _first = FileBackend::open(&config(dir.path())).unwrap();
        let err = FileBackend::open(&config(dir.path()))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("in use"), "{err}");
    }

    #[tokio::test]
    async fn path_tricks_in_names_are_rejected() {
        let dir = private_tempdir();
        let backend = FileBackend::open(&config(dir.path())).unwrap();
        for bad in ["../x", "a/b", "", "A", "k.key", "x\0"] {
            assert!(
                backend.create_key(bad, KeyType::EcP256).await.is_err(),
                "{bad:?}"
            );
            assert!(backend.load_state(bad).await.is_err(), "{bad:?}");
        }
    }
}

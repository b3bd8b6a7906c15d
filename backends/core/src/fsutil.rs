//! Durable, private file operations, for backends and the daemon's data directory, and
//! [`StateDir`], the lifecycle documents of the backends that keep them on this host.

use crate::{BackendError, StateBlob};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The message carries the cause; it is not attached again as the source, which would
/// print it twice in an error chain ("...: No such file: No such file").
fn io_err(what: String) -> impl FnOnce(std::io::Error) -> BackendError {
    move |e| BackendError::Storage {
        message: format!("{what}: {e}"),
        source: None,
    }
}

/// Creates `dir` with mode 0700 if missing, and refuses it if group or other have access.
pub fn ensure_private_dir(dir: &Path) -> Result<(), BackendError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(format!("cannot create {}", dir.display())))?;
    }
    check_private_dir(dir)
}

/// Refuses a directory that group or other can access.
pub fn check_private_dir(dir: &Path) -> Result<(), BackendError> {
    let meta = std::fs::metadata(dir).map_err(io_err(format!("cannot stat {}", dir.display())))?;
    if !meta.is_dir() {
        return Err(BackendError::Rejected(format!(
            "{} is not a directory",
            dir.display()
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(BackendError::Rejected(format!(
            "refusing to use {}: its mode is {mode:04o}, group or other have access; run `chmod 700 {}`",
            dir.display(),
            dir.display()
        )));
    }
    Ok(())
}

/// Refuses a secret file that group or other can read.
pub fn check_private_file(path: &Path) -> Result<(), BackendError> {
    let meta =
        std::fs::metadata(path).map_err(io_err(format!("cannot stat {}", path.display())))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(BackendError::Rejected(format!(
            "refusing to use {}: its mode is {mode:04o}, group or other have access; run `chmod 600 {}`",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

/// The one rule for secrets an operator provides (tokens, key-encryption keys, TLS keys,
/// PINs): the file must be private to its owner, or be a systemd credential (a file under
/// `credentials_dir`, `$CREDENTIALS_DIRECTORY`), which systemd makes 0400, or 0440 where
/// the directory supports ACLs: readable by its group, never writable by it, nothing for
/// other.
pub fn check_secret_file(path: &Path, credentials_dir: Option<&Path>) -> Result<(), BackendError> {
    let meta =
        std::fs::metadata(path).map_err(io_err(format!("cannot read {}", path.display())))?;
    let mode = meta.mode() & 0o777;
    let credential = credentials_dir.is_some_and(|dir| path.starts_with(dir));
    let allowed = if credential { 0o740 } else { 0o700 };
    if mode & !allowed != 0 {
        return Err(BackendError::Rejected(format!(
            "refusing secret file {}: its mode is {mode:04o}, {} have access; run `chmod 600 {}`",
            path.display(),
            if credential {
                "other or group writers"
            } else {
                "group or other"
            },
            path.display()
        )));
    }
    Ok(())
}

/// Writes `bytes` to `path` atomically and durably: a 0600 temp file beside it, fsync,
/// rename over `path`, fsync of the directory. A crash leaves the old or the new file.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), BackendError> {
    let dir = parent(path);
    let file_name = path.file_name().and_then(|f| f.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(format!("cannot create {}", tmp.display())))?;
        file.write_all(bytes)
            .map_err(io_err(format!("cannot write {}", tmp.display())))?;
        file.sync_all()
            .map_err(io_err(format!("cannot fsync {}", tmp.display())))?;
        std::fs::rename(&tmp, path)
            .map_err(io_err(format!("cannot rename into {}", path.display())))?;
        sync_dir(dir)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes `path` (if present) and fsyncs its directory.
pub fn remove_durable(path: &Path) -> Result<(), BackendError> {
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err(format!("cannot remove {}", path.display()))(e)),
    }
    sync_dir(parent(path))
}

/// The directory `path` is in: "." for a bare file name (whose parent is "").
fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

fn sync_dir(dir: &Path) -> Result<(), BackendError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(format!("cannot fsync {}", dir.display())))
}

/// Takes an exclusive lock on `<dir>/.lock` for as long as the returned file lives.
pub fn lock_dir(dir: &Path) -> Result<File, BackendError> {
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(io_err(format!("cannot open {}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(_) => Err(BackendError::Rejected(format!(
            "{} is in use by another keyturn process (a key or state directory serves one daemon)",
            dir.display()
        ))),
    }
}

/// Lifecycle documents in a private local directory: `<dir>/<keyset>.state` (0600), each
/// with the version check-and-set compares. Writes are atomic ([`write_atomic`]) and
/// serialized in this process; the directory's lock ([`lock_dir`]), held as long as the
/// `StateDir` lives, keeps other processes out. The documents are on this host only: a
/// backend that keeps them here serves one daemon.
pub struct StateDir {
    dir: PathBuf,
    // Serializes check-and-set: read the version, compare, write.
    write_lock: tokio::sync::Mutex<()>,
    _lock: File,
}

#[derive(Serialize, Deserialize)]
struct StateFile {
    version: u64,
    data: String,
}

impl StateDir {
    /// Opens `dir` (created 0700 if missing, refused if group or other have access) and
    /// takes its lock.
    pub fn open(dir: &Path) -> Result<Self, BackendError> {
        ensure_private_dir(dir)?;
        let lock = lock_dir(dir)?;
        Ok(StateDir {
            dir: dir.to_path_buf(),
            write_lock: tokio::sync::Mutex::new(()),
            _lock: lock,
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, keyset: &str) -> Result<PathBuf, BackendError> {
        crate::check_name(keyset)?;
        Ok(self.dir.join(format!("{keyset}.state")))
    }

    /// The document of `keyset`, if one was ever stored.
    pub async fn load(&self, keyset: &str) -> Result<Option<StateBlob>, BackendError> {
        let path = self.path(keyset)?;
        let bytes = match tokio::fs::read(&path).await {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => {
                return Err(BackendError::storage(
                    format!("cannot read {}", path.display()),
                    e,
                ))
            }
        };
        check_private_file(&path)?;
        let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
            BackendError::storage(format!("state file {} is corrupt", path.display()), e)
        })?;
        Ok(Some(StateBlob {
            data: file.data.into_bytes(),
            version: file.version,
        }))
    }

    /// Stores the document of `keyset` if its version is still `expected` (`None`: no
    /// document yet); returns the new version, or [`BackendError::Conflict`].
    pub async fn store(
        &self,
        keyset: &str,
        data: &[u8],
        expected: Option<u64>,
    ) -> Result<u64, BackendError> {
        let path = self.path(keyset)?;
        let data = String::from_utf8(data.to_vec())
            .map_err(|_| BackendError::Rejected("state must be UTF-8 JSON".into()))?;
        let _guard = self.write_lock.lock().await;
        let current = self.load(keyset).await?.map(|s| s.version);
        if current != expected {
            return Err(BackendError::Conflict);
        }
        let version = current.unwrap_or(0).saturating_add(1);
        let bytes = serde_json::to_vec(&StateFile { version, data })
            .map_err(|e| BackendError::storage("cannot encode state", e))?;
        tokio::task::spawn_blocking(move || write_atomic(&path, &bytes))
            .await
            .map_err(|e| BackendError::storage("write task failed", e))??;
        Ok(version)
    }
}

#[cfg(test)]
mod tests {
    use super::check_secret_file;
    use std::os::unix::fs::PermissionsExt;

    /// One rule for every operator secret: private to its owner, or a systemd credential
    /// (group-readable at most).
    #[test]
    fn secrets_are_private_or_systemd_credentials() {
        let creds = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        for (mode, as_credential, elsewhere_ok) in [
            (0o600, true, true),
            (0o400, true, true),
            (0o440, true, false),
            (0o640, true, false),
            (0o444, false, false),
            (0o460, false, false),
            (0o604, false, false),
        ] {
            for (dir, ok) in [
                (creds.path(), as_credential),
                (elsewhere.path(), elsewhere_ok),
            ] {
                let path = dir.join("secret");
                std::fs::write(&path, "s3cret").unwrap();
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
                let result = check_secret_file(&path, Some(creds.path()));
                assert_eq!(
                    result.is_ok(),
                    ok,
                    "{mode:o} in {}: {result:?}",
                    dir.display()
                );
                if let Err(e) = result {
                    assert!(!e.to_string().contains("s3cret"));
                }
                std::fs::remove_file(&path).unwrap();
            }
        }
    }
}

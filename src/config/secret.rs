//! Secrets read from files: refused when group or other may read them.

use std::path::Path;
use zeroize::Zeroizing;

/// Reads a secret file, refusing one that group or other can access, except inside
/// `credentials_dir` ($CREDENTIALS_DIRECTORY), whose access systemd enforces (its files may
/// show mode 0440 where the directory supports ACLs).
pub fn read_secret_file(
    path: &Path,
    credentials_dir: Option<&Path>,
) -> Result<Zeroizing<String>, String> {
    keyturn_backend::fsutil::check_secret_file(path, credentials_dir).map_err(|e| e.to_string())?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Zeroizing::new(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn group_readable_secrets_are_refused_except_systemd_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        let err = read_secret_file(&path, None).unwrap_err();
        assert!(
            err.contains("chmod 600") && !err.contains("s3cret"),
            "{err}"
        );
        assert_eq!(
            read_secret_file(&path, Some(dir.path())).unwrap().trim(),
            "s3cret"
        );
        let other = tempfile::tempdir().unwrap();
        assert!(read_secret_file(&path, Some(other.path())).is_err());
    }
}

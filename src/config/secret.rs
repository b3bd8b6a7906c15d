//! Secrets read from files: refused when group or other may read them.

use aws_lc_rs::digest;
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

/// The SHA-256 of a bearer token, as stored in the config.
pub fn hash_token(token: &str) -> [u8; 32] {
    let d = digest::digest(&digest::SHA256, token.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Parses 64 hex digits.
pub fn parse_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    #[test]
    fn hex_round_trip() {
        let h = hash_token("secret");
        assert_eq!(parse_sha256_hex(&to_hex(&h)), Some(h));
        assert_eq!(parse_sha256_hex("zz"), None);
        assert_eq!(parse_sha256_hex(&"é".repeat(32)), None);
    }
}

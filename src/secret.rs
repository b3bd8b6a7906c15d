//! Secrets read from files: refused when group or other may read them.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use zeroize::Zeroizing;

/// Reads a secret file, refusing one that group or other can access.
pub fn read_secret_file(path: &Path) -> Result<Zeroizing<String>, String> {
    let meta =
        std::fs::metadata(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "refusing secret file {}: its mode is {mode:04o}, group or other have access; run `chmod 600 {}`",
            path.display(),
            path.display()
        ));
    }
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    Ok(Zeroizing::new(text))
}

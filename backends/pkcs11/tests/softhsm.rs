//! The pkcs11 backend against real SoftHSM tokens, made for this test process.
//!
//! Without SoftHSM these tests fail under CI and print a SKIPPED notice otherwise (see
//! `keyturn_backend::testserver::softhsm`).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use keyturn_backend::testserver::softhsm::{self, SoftHsm};
use keyturn_backend::{Algorithm, BackendError, KeyBackend, KeyType};
use keyturn_backend_pkcs11::{Pkcs11Backend, Pkcs11BackendConfig, TokenSelector};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use zeroize::Zeroizing;

/// The tokens of this process, one per test, all made before the module is first loaded
/// (SoftHSM lists tokens when it is initialized).
const TOKENS: [&str; 4] = ["conformance", "attributes", "refusals", "lock"];

fn hsm() -> Option<&'static SoftHsm> {
    static HSM: OnceLock<Option<SoftHsm>> = OnceLock::new();
    HSM.get_or_init(|| {
        let hsm = SoftHsm::start_at(PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("softhsm"))?;
        for label in TOKENS {
            hsm.init_token(label);
        }
        // Read by SoftHSM when this process first initializes the module, which no test
        // does before it has this fixture.
        std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
        Some(hsm)
    })
    .as_ref()
}

fn private_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    dir
}

fn config(hsm: &SoftHsm, label: &str, state_dir: &Path) -> Pkcs11BackendConfig {
    Pkcs11BackendConfig {
        module: hsm.module.clone(),
        token: TokenSelector::Label(label.to_owned()),
        pin: Zeroizing::new(softhsm::PIN.to_owned()),
        max_sessions: 4,
        state_dir: state_dir.join("state"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn softhsm_passes_conformance() {
    let Some(hsm) = hsm() else { return };
    let dir = private_dir();
    let backend = Pkcs11Backend::open(&config(hsm, "conformance", dir.path()))
        .await
        .unwrap();
    for alg in Algorithm::ALL {
        assert!(backend.supports(alg), "SoftHSM offers what {alg} needs");
    }
    keyturn_backend::conformance::run(&backend, "conf").await;
}

/// What `pkcs11-tool` (OpenSC, another PKCS#11 client) shows of the token's objects.
fn list_objects(hsm: &SoftHsm, label: &str, kind: &str) -> String {
    let out = Command::new("pkcs11-tool")
        .arg("--module")
        .arg(&hsm.module)
        .args(["--token-label", label, "--login", "--pin", softhsm::PIN])
        .args(["--list-objects", "--type", kind])
        .env("SOFTHSM2_CONF", &hsm.conf)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Keys (and the state MAC key) are made inside the token as non-extractable, sensitive
/// token objects labelled with the key's name; destroying a key removes both objects.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_token_objects_that_never_leave_it() {
    let Some(hsm) = hsm() else { return };
    let dir = private_dir();
    let backend = Pkcs11Backend::open(&config(hsm, "attributes", dir.path()))
        .await
        .unwrap();
    backend
        .create_key("issuer-0123456789abcdef", KeyType::EcP256)
        .await
        .unwrap();
    let private = list_objects(hsm, "attributes", "privkey");
    assert!(
        private.contains("label:      keyturn:issuer-0123456789abcdef"),
        "{private}"
    );
    assert!(private.contains("Usage:      sign\n"), "{private}");
    assert!(
        private.contains("Access:     sensitive, always sensitive, never extractable, local"),
        "{private}"
    );
    let public = list_objects(hsm, "attributes", "pubkey");
    assert!(
        public.contains("label:      keyturn:issuer-0123456789abcdef"),
        "{public}"
    );

    // The state MAC key too, once a document was authenticated.
    backend.state_mac("issuer", b"{}").await.unwrap();
    let secret = list_objects(hsm, "attributes", "secrkey");
    assert!(secret.contains("label:      keyturn-state-mac"), "{secret}");
    assert!(
        secret.contains("Access:     sensitive, always sensitive, never extractable, local"),
        "{secret}"
    );

    backend.destroy("issuer-0123456789abcdef").await.unwrap();
    for kind in ["privkey", "pubkey"] {
        let listed = list_objects(hsm, "attributes", kind);
        assert!(!listed.contains("issuer-0123456789abcdef"), "{listed}");
    }
}

/// A wrong PIN and an absent token are refused with what to fix, and the PIN never
/// appears in an error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_and_missing_token_are_clear_errors() {
    let Some(hsm) = hsm() else { return };
    let dir = private_dir();
    let mut wrong = config(hsm, "refusals", dir.path());
    wrong.pin = Zeroizing::new("not-the-pin-4711".to_owned());
    let err = Pkcs11Backend::open(&wrong).await.err().unwrap();
    assert!(matches!(err, BackendError::Rejected(_)), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("PinIncorrect") && text.contains("pin_file"),
        "{text}"
    );
    assert!(!text.contains("not-the-pin-4711"), "{text}");

    let missing = config(hsm, "no-such-token", dir.path());
    let err = Pkcs11Backend::open(&missing).await.err().unwrap();
    let text = err.to_string();
    assert!(
        text.contains("no token labelled \"no-such-token\"") && text.contains("\"refusals\""),
        "{text}"
    );
}

/// The lifecycle state is per host: a second backend on the same state directory is
/// refused, as for the file backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_daemon_on_the_same_state_directory_is_refused() {
    let Some(hsm) = hsm() else { return };
    let dir = private_dir();
    let first = Pkcs11Backend::open(&config(hsm, "lock", dir.path()))
        .await
        .unwrap();
    first.store_state("ks", b"{}", None).await.unwrap();
    let err = Pkcs11Backend::open(&config(hsm, "lock", dir.path()))
        .await
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("in use"), "{err}");
    let state: PathBuf = dir.path().join("state/ks.state");
    let mode = std::fs::metadata(state).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

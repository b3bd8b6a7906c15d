//! The pkcs11 backend recovers without help from a logged-out application, a module reset
//! and a finalized module. One test in its own process: each acts on the whole process.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use keyturn_backend::testserver::softhsm::{self, SoftHsm};
use keyturn_backend::{Algorithm, KeyBackend, KeyType};
use keyturn_backend_pkcs11::{Pkcs11Backend, Pkcs11BackendConfig, TokenSelector};
use std::os::unix::fs::PermissionsExt;
use zeroize::Zeroizing;

const MESSAGE: &[u8] = b"eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJyZWNvdmVyeSJ9";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovers_from_logout_and_module_reset() {
    let Some(hsm) = SoftHsm::start() else { return };
    hsm.init_token("recovery");
    // This process's only SoftHSM, set before the module is first loaded.
    std::env::set_var("SOFTHSM2_CONF", &hsm.conf);
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let backend = Pkcs11Backend::open(&Pkcs11BackendConfig {
        module: hsm.module.clone(),
        token: TokenSelector::Label("recovery".into()),
        pin: Zeroizing::new(softhsm::PIN.to_owned()),
        max_sessions: 2,
        state_dir: dir.path().join("state"),
    })
    .await
    .unwrap();
    let name = "recovery-00000000000000aa";
    let public = backend.create_key(name, KeyType::EcP256).await.unwrap();
    let sign = || backend.sign(name, Algorithm::ES256, MESSAGE);
    assert!(public
        .jwk()
        .verify(Algorithm::ES256, MESSAGE, &sign().await.unwrap()));

    // Another part of the process logs the application out of the token: login belongs to
    // the application, so every session of the backend is logged out with it, and its
    // handles to private objects become void (PKCS#11 2.40, C_Logout).
    let other = Pkcs11::new(&hsm.module).unwrap();
    // Already initialized by the backend: the two share the module's state.
    let already = other.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK));
    assert!(
        matches!(
            already,
            Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _))
        ),
        "{already:?}"
    );
    let slot = other.get_slots_with_token().unwrap()[0];
    let session = other.open_ro_session(slot).unwrap();
    session.logout().unwrap();
    let sig = sign().await.expect("signing after a logout logs in again");
    assert!(public.jwk().verify(Algorithm::ES256, MESSAGE, &sig));
    // A lookup of a private object (invisible while logged out) logs in again too.
    session.logout().unwrap();
    drop(session);
    assert_eq!(backend.list_keys("recovery-").await.unwrap(), vec![name]);

    // The module restarts under the backend (as an HSM does at a reset): every session
    // and the login are gone.
    other.clone().finalize().unwrap();
    other
        .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        .unwrap();
    let sig = sign()
        .await
        .expect("signing after a reset opens new sessions");
    assert!(public.jwk().verify(Algorithm::ES256, MESSAGE, &sig));
    backend.health().await.unwrap();

    // The module is finalized under the backend and left so (CKR_CRYPTOKI_NOT_INITIALIZED):
    // the backend initializes it again.
    other.finalize().unwrap();
    let sig = sign().await.expect("signing initializes the module again");
    assert!(public.jwk().verify(Algorithm::ES256, MESSAGE, &sig));
}

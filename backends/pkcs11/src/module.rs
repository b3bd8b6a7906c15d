//! A PKCS#11 module loaded once per process.
//!
//! `C_Initialize` and `C_Finalize` act on the whole process, whoever calls them: two
//! backends on tokens of one module share one [`Module`]. Re-initializing it (the way to
//! see a token that went away and came back) must not run while another thread is inside
//! the module (PKCS#11 leaves that undefined, and a module may free what the other call
//! uses), so every call holds the module's gate for reading and re-initialization holds it
//! for writing. A module stays loaded until the process exits: unloading and loading it
//! again at a reload gains nothing, and some modules do not survive it.

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error, RvError};
use keyturn_backend::BackendError;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

/// Re-initializations of one module are at least this far apart: a network HSM's client
/// may take seconds to connect, and every call waits while it does. (A module that forgets
/// the token until it is initialized again needs them; SoftHSM finds a token that came
/// back by itself.)
pub(crate) const REINIT_INTERVAL: Duration = Duration::from_secs(1);

/// The modules loaded in this process.
static MODULES: Mutex<Vec<Arc<Module>>> = Mutex::new(Vec::new());

pub(crate) struct Module {
    path: PathBuf,
    ctx: Pkcs11,
    // The number of the current initialization: sessions and object handles of an
    // earlier one are void. Read-held by every call into the module.
    gate: RwLock<u64>,
    last_reinit: Mutex<Option<Instant>>,
}

/// Inside the module: its context and the initialization the calls belong to.
pub(crate) struct Entered<'a> {
    guard: RwLockReadGuard<'a, u64>,
    pub(crate) ctx: &'a Pkcs11,
}

impl Entered<'_> {
    pub(crate) fn generation(&self) -> u64 {
        *self.guard
    }
}

fn initialize(ctx: &Pkcs11) -> Result<(), Error> {
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        // Initialized by other code in this process (it shares the module's state).
        Err(Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) | Ok(()) => Ok(()),
        Err(e) => Err(e),
    }
}

impl Module {
    /// The module at `path`, loaded and initialized on first use.
    pub(crate) fn load(path: &Path) -> Result<Arc<Module>, BackendError> {
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(module) = modules.iter().find(|m| m.path == path) {
            return Ok(module.clone());
        }
        let ctx = Pkcs11::new(path).map_err(|e| {
            BackendError::Rejected(format!(
                "cannot load the PKCS#11 module {}: {e}; check `module` (the vendor's \
                 library, e.g. /usr/lib/softhsm/libsofthsm2.so)",
                path.display()
            ))
        })?;
        initialize(&ctx).map_err(|e| {
            BackendError::unavailable(
                format!("the PKCS#11 module {} did not initialize", path.display()),
                e,
            )
        })?;
        let module = Arc::new(Module {
            path: path.to_path_buf(),
            ctx,
            gate: RwLock::new(0),
            last_reinit: Mutex::new(None),
        });
        modules.push(module.clone());
        Ok(module)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Holds the gate for a call (blocks while the module is being re-initialized).
    pub(crate) fn enter(&self) -> Entered<'_> {
        Entered {
            guard: self.gate.read().unwrap_or_else(PoisonError::into_inner),
            ctx: &self.ctx,
        }
    }

    /// Finalizes and initializes the module again, unless that happened since
    /// `generation` (then its callers just retry) or less than [`REINIT_INTERVAL`] ago.
    /// Returns whether there is a newer initialization than `generation` to retry with.
    pub(crate) fn reinitialize(&self, generation: u64) -> Result<bool, BackendError> {
        let mut current = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        if *current != generation {
            return Ok(true);
        }
        let mut last = self
            .last_reinit
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < REINIT_INTERVAL) {
            return Ok(false);
        }
        *last = Some(Instant::now());
        tracing::info!(module = %self.path.display(), "re-initializing the PKCS#11 module");
        // Finalizing fails when the module is already finalized or never saw the device
        // again; initializing is what matters.
        let _ = self.ctx.clone().finalize();
        *current += 1;
        initialize(&self.ctx).map_err(|e| {
            BackendError::unavailable(
                format!(
                    "the PKCS#11 module {} did not initialize",
                    self.path.display()
                ),
                e,
            )
        })?;
        Ok(true)
    }
}

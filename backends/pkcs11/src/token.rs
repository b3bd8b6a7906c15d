//! One token: its slot, the login, a bounded pool of sessions, and recovery from a token
//! that was logged out, reset or went away.
//!
//! Every call takes one of `max_sessions` permits, then a session from the pool (opening
//! and logging in a new one when none is idle), and runs on a blocking thread: an HSM
//! call is a device or network round trip. A failed call is retried after the matching
//! repair, each repair at most once per call (a reset needs two: new sessions, then the
//! keys looked up again):
//!
//! | the module says                                        | repair                          |
//! |--------------------------------------------------------|---------------------------------|
//! | `CKR_USER_NOT_LOGGED_IN`                               | log in again                    |
//! | `CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`     | drop the idle sessions, reopen  |
//! | `CKR_OBJECT_HANDLE_INVALID`, `CKR_KEY_HANDLE_INVALID`  | look the key up again           |
//! | device removed or failing, token absent or not recognized, module not initialized, general error | re-initialize the module (at most once a second), find the token's slot again |
//!
//! A call that still fails is [`BackendError::Unavailable`] when a later one may succeed
//! without anyone's help, and [`BackendError::Rejected`] otherwise (a refused PIN, a
//! refused template).

use crate::module::{Entered, Module};
use cryptoki::error::{Error, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::ObjectHandle;
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use keyturn_backend::BackendError;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use tokio::sync::Semaphore;

/// Which token to use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSelector {
    /// The token with this label, in whatever slot it is (slot numbers may change when
    /// the module is initialized again).
    Label(String),
    /// The token in this slot.
    Slot(u64),
}

impl std::fmt::Display for TokenSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TokenSelector::Label(label) => write!(f, "token {label:?}"),
            TokenSelector::Slot(slot) => write!(f, "the token in slot {slot}"),
        }
    }
}

/// Why a call failed, before it becomes a [`BackendError`].
pub(crate) enum Failure {
    /// The module's answer.
    Module(Error),
    /// The token is not in any slot (the message says what was seen).
    Absent(String),
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        Failure::Module(e)
    }
}

/// What to do before retrying a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repair {
    Login,
    Reopen,
    LookUpAgain,
    Reinitialize,
    Nothing,
}

fn repair(failure: &Failure) -> Repair {
    use RvError as R;
    match failure {
        Failure::Absent(_) => Repair::Reinitialize,
        Failure::Module(Error::Pkcs11(rv, _)) => match rv {
            R::UserNotLoggedIn => Repair::Login,
            R::SessionHandleInvalid | R::SessionClosed => Repair::Reopen,
            R::ObjectHandleInvalid | R::KeyHandleInvalid => Repair::LookUpAgain,
            R::DeviceRemoved
            | R::DeviceError
            | R::TokenNotPresent
            | R::TokenNotRecognized
            | R::CryptokiNotInitialized
            | R::SlotIdInvalid
            | R::GeneralError => Repair::Reinitialize,
            _ => Repair::Nothing,
        },
        Failure::Module(_) => Repair::Nothing,
    }
}

/// The module's error in a message: the function and the return value, e.g.
/// "Sign: UserNotLoggedIn" (the library's own text for each value is a paragraph).
pub(crate) fn describe(e: &Error) -> String {
    match e {
        Error::Pkcs11(rv, function) => format!("{function}: {rv:?}"),
        other => other.to_string(),
    }
}

/// The slot `selector` names in `module`.
fn find_slot(
    entered: &Entered<'_>,
    module: &Path,
    selector: &TokenSelector,
) -> Result<Slot, Failure> {
    let ctx = entered.ctx;
    let slots = ctx.get_slots_with_token()?;
    let module = module.display();
    match selector {
        TokenSelector::Slot(id) => slots
            .into_iter()
            .find(|s| s.id() == *id)
            .ok_or_else(|| Failure::Absent(format!("slot {id} of {module} holds no token"))),
        TokenSelector::Label(label) => {
            let mut seen = Vec::new();
            for slot in slots {
                // A slot whose token is going away is skipped, not an error.
                let Ok(info) = ctx.get_token_info(slot) else {
                    continue;
                };
                if info.label() == label {
                    return Ok(slot);
                }
                seen.push(format!("{:?} in slot {}", info.label(), slot.id()));
            }
            let seen = if seen.is_empty() {
                "none".to_owned()
            } else {
                seen.join(", ")
            };
            Err(Failure::Absent(format!(
                "no token labelled {label:?} in {module} (tokens present: {seen}); check \
                 token_label, or that the token is connected"
            )))
        }
    }
}

/// The mechanisms of `selector` in `module`, found without logging in.
pub(crate) fn mechanisms(
    module: &Module,
    selector: &TokenSelector,
) -> Result<Vec<MechanismType>, BackendError> {
    let entered = module.enter();
    find_slot(&entered, module.path(), selector)
        .and_then(|slot| Ok(entered.ctx.get_mechanism_list(slot)?))
        .map_err(|f| error(selector, f))
}

/// The message of a failure.
fn failure_text(failure: &Failure) -> String {
    match failure {
        Failure::Absent(message) => message.clone(),
        Failure::Module(e) => describe(e),
    }
}

/// The error a caller sees.
fn error(selector: &TokenSelector, failure: Failure) -> BackendError {
    use RvError as R;
    let what = failure_text(&failure);
    let transient = repair(&failure) != Repair::Nothing
        || matches!(
            failure,
            Failure::Module(Error::Pkcs11(
                R::SessionCount | R::DeviceMemory | R::HostMemory | R::FunctionCanceled,
                _
            ))
        );
    match failure {
        Failure::Absent(message) => BackendError::Unavailable {
            message,
            source: None,
        },
        Failure::Module(Error::Pkcs11(
            R::PinIncorrect | R::PinInvalid | R::PinLenRange | R::PinExpired | R::PinLocked,
            _,
        )) => BackendError::Rejected(format!(
            "{selector} refused the PIN ({what}); put the token's user PIN in pin_file"
        )),
        Failure::Module(e) if transient => {
            BackendError::unavailable(format!("{selector} is unavailable ({what})"), e)
        }
        Failure::Module(_) => {
            BackendError::Rejected(format!("{selector} refused the request ({what})"))
        }
    }
}

/// A token in use: its module, where it is, its login and its sessions.
pub(crate) struct Token {
    module: Arc<Module>,
    selector: TokenSelector,
    pin: AuthPin,
    permits: Semaphore,
    pool: Mutex<Pool>,
    /// The mechanisms the token offered when it was opened.
    pub(crate) mechanisms: Vec<MechanismType>,
}

/// What belongs to one initialization of the module: handles of another are void.
#[derive(Default)]
struct Pool {
    generation: u64,
    slot: Option<Slot>,
    idle: Vec<Session>,
    // Private key handles by key name: a signature is then one call into the module.
    handles: HashMap<String, ObjectHandle>,
}

/// A session of the token for one call, and the pool's key handle cache.
pub(crate) struct Ctx<'a> {
    /// The session.
    pub(crate) session: &'a Session,
    token: &'a Token,
    entered: &'a Entered<'a>,
    generation: u64,
}

impl Ctx<'_> {
    /// The cached private key handle of `name`.
    pub(crate) fn handle(&self, name: &str) -> Option<ObjectHandle> {
        let pool = self.token.pool();
        (pool.generation == self.generation)
            .then(|| pool.handles.get(name).copied())
            .flatten()
    }

    /// Caches (or, with `None`, forgets) the private key handle of `name`.
    pub(crate) fn set_handle(&self, name: &str, handle: Option<ObjectHandle>) {
        let mut pool = self.token.pool();
        if pool.generation == self.generation {
            match handle {
                Some(h) => pool.handles.insert(name.to_owned(), h),
                None => pool.handles.remove(name),
            };
        }
    }

    /// Fails (with an error whose repair is to re-initialize the module) unless the
    /// session's slot still holds the token: some modules answer for a token that went
    /// away as if its objects did not exist, so an object that is not found is only
    /// believed missing once this passes.
    pub(crate) fn confirm_token(&self) -> Result<(), Error> {
        let slot = self.session.get_session_info()?.slot_id();
        let info = self.entered.ctx.get_token_info(slot)?;
        match &self.token.selector {
            TokenSelector::Label(label) if info.label() != label => Err(Error::Pkcs11(
                RvError::TokenNotRecognized,
                cryptoki::context::Function::GetTokenInfo,
            )),
            _ => Ok(()),
        }
    }

    /// Logs the session's application in if it is not (objects marked private are
    /// invisible until it is); returns whether it had to.
    pub(crate) fn ensure_login(&self) -> Result<bool, Error> {
        let state = self.session.get_session_info()?.session_state();
        if matches!(state, SessionState::RwUser | SessionState::RoUser) {
            return Ok(false);
        }
        self.token.login(self.session)?;
        Ok(true)
    }
}

impl Token {
    /// Opens `selector` in `module`: finds its slot, reads its mechanisms, opens a
    /// session and logs in with `pin`.
    pub(crate) fn open(
        module: Arc<Module>,
        selector: TokenSelector,
        pin: AuthPin,
        max_sessions: usize,
    ) -> Result<Token, BackendError> {
        let mut token = Token {
            module,
            selector,
            pin,
            permits: Semaphore::new(max_sessions),
            pool: Mutex::new(Pool::default()),
            mechanisms: Vec::new(),
        };
        let opened = {
            let entered = token.module.enter();
            token.checkout(&entered, false).and_then(|session| {
                let slot = token
                    .pool()
                    .slot
                    .ok_or_else(|| Failure::Absent(format!("{} has no slot", token.selector)))?;
                let mechanisms = entered.ctx.get_mechanism_list(slot)?;
                token.checkin(&entered, session);
                Ok(mechanisms)
            })
        };
        token.mechanisms = opened.map_err(|f| token.error(f))?;
        Ok(token)
    }

    /// What the operator configured, for messages.
    pub(crate) fn selector(&self) -> &TokenSelector {
        &self.selector
    }

    fn pool(&self) -> MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn login(&self, session: &Session) -> Result<(), Error> {
        match session.login(UserType::User, Some(&self.pin)) {
            // Login belongs to the application, not the session: another session did it.
            Ok(()) | Err(Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// A logged-in session of `entered`'s initialization: an idle one, or a new one.
    fn checkout(&self, entered: &Entered<'_>, login: bool) -> Result<Session, Failure> {
        let generation = entered.generation();
        let slot = {
            let mut pool = self.pool();
            if pool.generation != generation {
                // Sessions and handles of an earlier initialization are void: forgotten,
                // never closed (their numbers may belong to new sessions now).
                *pool = Pool {
                    generation,
                    ..Pool::default()
                };
            }
            if let Some(session) = pool.idle.pop() {
                drop(pool);
                if login {
                    self.login(&session)?;
                }
                return Ok(session);
            }
            pool.slot
        };
        let slot = match slot {
            Some(slot) => slot,
            None => {
                let slot = find_slot(entered, self.module.path(), &self.selector)?;
                let mut pool = self.pool();
                if pool.generation == generation {
                    pool.slot = Some(slot);
                }
                slot
            }
        };
        let session = entered.ctx.open_rw_session_no_drop(slot)?;
        if let Err(e) = self.login(&session) {
            let _ = session.close();
            return Err(e.into());
        }
        Ok(session)
    }

    fn checkin(&self, entered: &Entered<'_>, session: Session) {
        let mut pool = self.pool();
        if pool.generation == entered.generation() {
            pool.idle.push(session);
        }
    }

    /// Runs `op` with a session, repairing and retrying (see the module docs).
    fn run<T>(&self, op: &mut dyn FnMut(&Ctx<'_>) -> Result<T, Error>) -> Result<T, BackendError> {
        let mut login = false;
        let mut done = Vec::new();
        loop {
            let entered = self.module.enter();
            let generation = entered.generation();
            let result = self.checkout(&entered, login).and_then(|session| {
                let ctx = Ctx {
                    session: &session,
                    token: self,
                    entered: &entered,
                    generation,
                };
                let result = op(&ctx).map_err(Failure::from);
                match result.as_ref().map_err(repair) {
                    Err(Repair::Reopen | Repair::Reinitialize) => {}
                    _ => self.checkin(&entered, session),
                }
                result
            });
            let failure = match result {
                Ok(value) => return Ok(value),
                Err(failure) => failure,
            };
            let repair = repair(&failure);
            if repair == Repair::Nothing || done.contains(&repair) {
                return Err(self.error(failure));
            }
            done.push(repair);
            match repair {
                Repair::Login => login = true,
                Repair::Reopen => self.pool().idle.clear(),
                Repair::LookUpAgain => self.pool().handles.clear(),
                Repair::Reinitialize => {
                    {
                        let mut pool = self.pool();
                        pool.idle.clear();
                        pool.slot = None;
                    }
                    drop(entered);
                    tracing::warn!(token = %self.selector, error = %failure_text(&failure), "the PKCS#11 token failed; initializing its module again");
                    if !self.module.reinitialize(generation)? {
                        return Err(self.error(failure));
                    }
                }
                Repair::Nothing => {}
            }
        }
    }

    /// Runs `op` with a session on a blocking thread, once one of the pool's permits is
    /// free.
    pub(crate) async fn call<T, F>(self: &Arc<Self>, mut op: F) -> Result<T, BackendError>
    where
        T: Send + 'static,
        F: FnMut(&Ctx<'_>) -> Result<T, Error> + Send + 'static,
    {
        let _permit =
            self.permits.acquire().await.map_err(|e| {
                BackendError::unavailable(format!("{} is closed", self.selector), e)
            })?;
        let token = self.clone();
        tokio::task::spawn_blocking(move || token.run(&mut op))
            .await
            .map_err(|e| BackendError::unavailable("a PKCS#11 call stopped", e))?
    }

    fn error(&self, failure: Failure) -> BackendError {
        error(&self.selector, failure)
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        // Close what this backend opened (the last session's close logs the application
        // out), unless the module was initialized again since.
        let entered = self.module.enter();
        let mut pool = self.pool();
        if pool.generation == entered.generation() {
            for session in pool.idle.drain(..) {
                let _ = session.close();
            }
        }
    }
}

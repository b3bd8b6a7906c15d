//! Process hardening applied before anything touches a key: no core dumps, not dumpable.
//!
//! keyturn holds private keys (file backend), the key-encryption key, Vault tokens and
//! client-token hashes in memory. A core dump would write all of them to disk, where
//! `systemd-coredump` or an `apport`-style handler keeps them readable by administrators
//! for weeks; `ptrace` or `/proc/<pid>/mem` would let any process of the same uid read
//! them live. So, first thing in `main`:
//!
//! - `RLIMIT_CORE` is set to 0, soft and hard, so no core file is written and nothing
//!   started later (or the process itself) can raise it again.
//! - `PR_SET_DUMPABLE` is set to 0: no core dump even if a handler ignores the rlimit
//!   (a `core_pattern` pipe does), no `ptrace` attach by same-uid processes, and
//!   `/proc/<pid>/` (mem, environ, maps...) owned by root.
//!
//! The unit file does the same from outside (`LimitCORE=0`, `ProtectProc=`), but the
//! binary is also run by hand, from containers and by other supervisors; both layers stay.

use rustix::process::{setrlimit, DumpableBehavior, Resource, Rlimit};

/// Makes this process non-dumpable and sets its core-file limit to zero.
///
/// Fails only if the kernel refuses, which it does not for lowering a limit or clearing
/// the dumpable flag; the caller treats a failure as fatal, since a key daemon that cannot
/// keep its memory off the disk should not start.
pub fn apply() -> std::io::Result<()> {
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    )?;
    rustix::process::set_dumpable_behavior(DumpableBehavior::NotDumpable)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_apply_the_process_is_not_dumpable_and_has_no_core_limit() {
        // Applying it to the test process is harmless (tests dump no core either), and it
        // is idempotent, so parallel tests do not care.
        apply().unwrap();
        assert_eq!(
            rustix::process::dumpable_behavior().unwrap(),
            DumpableBehavior::NotDumpable
        );
        let core = rustix::process::getrlimit(Resource::Core);
        assert_eq!(core.current, Some(0));
        assert_eq!(core.maximum, Some(0));
    }
}

//! What the data directory remembers of the key sets the daemon served, so that a restart
//! is held to the rules a reload follows: a key set leaves the config only once every token
//! it signed has expired, and is never started over on a backend that does not hold its
//! history (another directory, mount or table, or a lost state, or a backup older than the
//! state the last run left). Written at start, after each reload and at the stop; one
//! entry per key set.

use crate::config::{human, Config};
use crate::core::keyset::KeySet;
use crate::core::published::Published;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The file's name in `data_dir`.
pub const FILE: &str = "keysets.json";

/// The remembered key sets, by name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Ledger {
    /// One entry per key set of the last config that ran.
    pub keysets: BTreeMap<String, Entry>,
}

/// What a restart must know of one key set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Which state is its own.
    #[serde(flatten)]
    pub identity: Identity,
    /// Since when no client of the config may sign with it (absent while one may).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsigned_since: Option<i64>,
    /// The longest retention its settings had (seconds).
    pub retention: i64,
    /// Whether its document was stored sealed with the backend's MAC: the next start
    /// refuses one without (a stripped MAC is no downgrade).
    #[serde(default)]
    pub sealed: bool,
    /// How many times its status lists had been written: the next start refuses a stored
    /// copy that counts fewer (an older copy put back would undo changes).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub status_writes: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// What tells a key set's state from another's, or from an older copy of itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Identity {
    /// Its history (the lifecycle document's `history`).
    pub history: String,
    /// The kids it published: a document restored from before histories existed is the
    /// same key set's if it knows them all.
    #[serde(default)]
    pub kids: Vec<String>,
    /// Its JWKS version (it only grows: a state restored with a lower one is older).
    #[serde(default)]
    pub jwks_version: u64,
}

impl Identity {
    /// Of a published view (None before its first write gives it a history).
    pub fn of(published: &Published) -> Option<Identity> {
        Some(Identity {
            history: published.doc.history.clone()?,
            kids: published.keys.iter().map(|k| k.kid.clone()).collect(),
            jwks_version: published.doc.jwks_version,
        })
    }
}

impl Entry {
    /// From when it may leave the config: its last token has expired.
    pub fn removable_at(&self) -> Option<i64> {
        self.unsigned_since
            .map(|since| since.saturating_add(self.retention))
    }
}

/// Where the ledger of `data_dir` lives.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

impl Ledger {
    /// Reads the ledger (an empty one if there is none: a first start, or a keyturn from
    /// before it).
    pub fn load(path: &Path) -> anyhow::Result<Ledger> {
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Ledger::default()),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "{} is damaged ({e}); restore it from a backup, or remove it to forget what \
                 it remembers of the key sets (see docs/operations.md)",
                path.display()
            )
        })
    }

    /// What `keysets` need remembered once `config` runs, from `now` on.
    pub fn under<'a>(
        keysets: impl IntoIterator<Item = &'a Arc<KeySet>>,
        config: &Config,
        now: i64,
    ) -> Ledger {
        Ledger {
            keysets: keysets
                .into_iter()
                .filter_map(|k| {
                    Some((
                        k.name().to_owned(),
                        Entry {
                            identity: Identity::of(&k.published())?,
                            unsigned_since: k.unsigned_since_under(config, now),
                            retention: k.retention(),
                            sealed: k.sealed(),
                            status_writes: k.status_writes(),
                        },
                    ))
                })
                .collect(),
        }
    }

    /// Writes it (atomically, 0600) unless `last`, what the file holds, says the same;
    /// `last` is then this. A failure is for the caller to refuse what it was about to
    /// apply: a ledger left behind could let the next start drop a key set early.
    pub fn record(self, last: &mut Ledger, path: &Path) -> anyhow::Result<()> {
        if self == *last {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&self)?;
        keyturn_backend::fsutil::write_atomic(path, &bytes).map_err(|e| {
            anyhow::anyhow!(
                "cannot record the key sets in {} ({e}); keyturn needs its data directory \
                 writable, so that its next start keeps every key set as long as its tokens live",
                path.display()
            )
        })?;
        *last = self;
        Ok(())
    }

    /// Refuses a config that leaves out a key set whose tokens may still be live at `now`.
    /// `path` names the ledger in the message.
    pub fn check_removed(&self, config: &Config, now: i64, path: &Path) -> anyhow::Result<()> {
        for (name, entry) in &self.keysets {
            if config.keysets.iter().any(|k| k.name == *name) {
                continue;
            }
            let why = match entry.removable_at() {
                Some(at) if now >= at => continue,
                Some(at) => format!(
                    "tokens it signed may be valid for {} more, and verifiers need its keys \
                     until they expire: put it back and remove it then",
                    human(at - now)
                ),
                None => format!(
                    "it could sign until the last run, and verifiers need its keys until its \
                     tokens expire: put it back; to remove it, first run a config in which no \
                     client lists it in `keysets` (nor has keysets = [\"*\"], nor k8s_signer_keyset \
                     names it), then \
                     remove it {} later",
                    human(entry.retention)
                ),
            };
            anyhow::bail!(
                "key set {name:?} was removed from the config, but {why}. To drop it anyway \
                 (its live tokens will no longer verify), remove the entry {name:?} from {} \
                 while keyturn is stopped",
                path.display()
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Env;

    fn entry(unsigned_since: Option<i64>) -> Entry {
        Entry {
            identity: Identity {
                history: "h".into(),
                kids: vec!["k1".into()],
                jwks_version: 1,
            },
            unsigned_since,
            retention: 960,
            sealed: true,
            status_writes: 0,
        }
    }

    #[test]
    fn a_key_set_leaves_the_config_only_once_its_tokens_have_expired() {
        let config = Config::parse(crate::core::testing::KEYSET, Env::default()).unwrap();
        let path = Path::new("/var/lib/keyturn/keysets.json");
        let now = 1_800_000_000;
        let with = |name: &str, e: Entry| Ledger {
            keysets: [(name.to_owned(), e)].into(),
        };
        // In the config: nothing to check.
        with("default", entry(None))
            .check_removed(&config, now, path)
            .unwrap();
        // Gone while clients could sign.
        let err = with("gone", entry(None))
            .check_removed(&config, now, path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"gone\"") && err.contains("no client lists it"),
            "{err}"
        );
        assert!(err.contains("/var/lib/keyturn/keysets.json"), "{err}");
        // Gone before its retention passed, then after.
        let ledger = with("gone", entry(Some(now - 900)));
        let err = ledger
            .check_removed(&config, now, path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("valid for 1m more") && err.contains("remove it then"),
            "{err}"
        );
        ledger.check_removed(&config, now + 60, path).unwrap();
    }

    #[test]
    fn a_missing_ledger_is_empty_and_a_damaged_one_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = path(dir.path());
        assert_eq!(Ledger::load(&p).unwrap(), Ledger::default());
        let ledger = Ledger {
            keysets: [("a".to_owned(), entry(Some(5)))].into(),
        };
        let mut last = Ledger::default();
        ledger.clone().record(&mut last, &p).unwrap();
        assert_eq!(last, ledger);
        assert_eq!(Ledger::load(&p).unwrap(), ledger);
        std::fs::write(&p, b"{\"keysets\": [").unwrap();
        let err = Ledger::load(&p).unwrap_err().to_string();
        assert!(err.contains("damaged"), "{err}");
    }

    /// A ledger that cannot be written is an error for the caller (start or reload) to
    /// refuse on; one that says what the file holds is not written at all.
    #[test]
    fn a_ledger_that_cannot_be_recorded_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("missing-dir").join(FILE);
        let ledger = Ledger {
            keysets: [("a".to_owned(), entry(None))].into(),
        };
        let mut last = Ledger::default();
        let err = ledger
            .clone()
            .record(&mut last, &p)
            .unwrap_err()
            .to_string();
        assert!(err.contains("cannot record the key sets"), "{err}");
        assert_eq!(last, Ledger::default(), "unchanged: nothing was written");
        let mut same = ledger.clone();
        ledger.record(&mut same, &p).unwrap();
        assert!(!p.exists());
    }
}

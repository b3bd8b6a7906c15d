//! Logging in to Vault and keeping the token alive.

use crate::errors::{classify, describe, status};
use crate::VaultAuth;
use keyturn_backend::BackendError;

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;
use vaultrs::client::{VaultClient, VaultClientSettings};

/// Floor between two refreshes, so that a token about to reach its max TTL cannot spin.
const MIN_REFRESH_WAIT: Duration = Duration::from_millis(200);
/// Pause after a failed refresh (Vault down, token file not yet replaced) before the next try.
const RETRY_WAIT: Duration = Duration::from_secs(5);

/// How to get a token.
pub(crate) struct Login {
    /// Token file or AppRole.
    pub(crate) method: VaultAuth,
    /// Where AppRole is mounted (`approle`).
    pub(crate) approle_mount: String,
    /// Every client setting but the token (empty here).
    pub(crate) settings: VaultClientSettings,
    /// `$CREDENTIALS_DIRECTORY`: its files are systemd credentials.
    pub(crate) credentials_dir: Option<std::path::PathBuf>,
}

/// The client currently holding a valid token, and how to get the next one.
pub(crate) struct Session {
    login: Login,
    current: RwLock<Arc<VaultClient>>,
}

/// What Vault said about a token's lifetime.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lease {
    /// Time left; zero for a token that never expires (then nothing is renewed).
    ttl: Duration,
    renewable: bool,
    /// The TTL granted at login: renewals granting much less mean the max TTL is near.
    at_login: Duration,
}

impl Session {
    /// Logs in once; the caller then runs [`keep_alive`] when the lease says so.
    pub(crate) async fn start(login: Login) -> Result<(Session, Lease), BackendError> {
        let (client, lease) = login.new_token().await?;
        let session = Session {
            login,
            current: RwLock::new(Arc::new(client)),
        };
        Ok((session, lease))
    }

    /// The client with the current token.
    pub(crate) fn client(&self) -> Arc<VaultClient> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Renews the token, or gets a new one when renewal is impossible or nearly used up.
    async fn refresh(&self, lease: Lease) -> Result<Lease, BackendError> {
        if lease.renewable {
            match vaultrs::token::renew_self(&*self.client(), None).await {
                Ok(auth) => {
                    let ttl = Duration::from_secs(auth.lease_duration);
                    let capped = ttl < lease.at_login / 2;
                    // A capped AppRole token is replaced by a new login; a token from a file
                    // is renewed to its end, then the file is read again.
                    if !(capped && matches!(self.login.method, VaultAuth::AppRole { .. })) {
                        tracing::debug!(ttl_secs = ttl.as_secs(), "renewed the Vault token");
                        return Ok(Lease {
                            ttl,
                            renewable: auth.renewable,
                            ..lease
                        });
                    }
                }
                Err(e) => tracing::warn!(error = %describe(&e), "renewing the Vault token failed"),
            }
        }
        let (client, lease) = self.login.new_token().await?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(client);
        tracing::info!(ttl_secs = lease.ttl.as_secs(), "got a new Vault token");
        Ok(lease)
    }
}

impl Login {
    /// A fresh token: the token file read again (an agent may have replaced it), or an
    /// AppRole login with the secret id file read again.
    async fn new_token(&self) -> Result<(VaultClient, Lease), BackendError> {
        match &self.method {
            VaultAuth::Token { token_file } => {
                let token = read_secret_file(token_file, self.credentials_dir.as_deref())?;
                let client = client(&self.settings, &token)?;
                let info =
                    vaultrs::token::lookup_self(&client)
                        .await
                        .map_err(|e| match status(&e) {
                            Some(403) => BackendError::Rejected(format!(
                                "Vault does not accept the token in {}: it is invalid, revoked or \
                             expired; put a valid token there",
                                token_file.display()
                            )),
                            _ => classify("looking up keyturn's token", e),
                        })?;
                let ttl = Duration::from_secs(info.ttl);
                let renewable = info.renewable.unwrap_or(false);
                Ok((client, Lease::new(ttl, renewable)))
            }
            VaultAuth::AppRole {
                role_id,
                secret_id_file,
            } => {
                let secret_id = read_secret_file(secret_id_file, self.credentials_dir.as_deref())?;
                // No token on a login: an expired one could get the login refused.
                let anonymous = client(&self.settings, "")?;
                let auth = vaultrs::auth::approle::login(
                    &anonymous,
                    &self.approle_mount,
                    role_id,
                    &secret_id,
                )
                .await
                .map_err(|e| match status(&e) {
                    Some(400 | 403) => BackendError::Rejected(format!(
                        "Vault refused the AppRole login at auth/{}: check approle_role_id and \
                         the secret id in {} ({})",
                        self.approle_mount,
                        secret_id_file.display(),
                        describe(&e)
                    )),
                    _ => classify("the AppRole login", e),
                })?;
                let client = client(&self.settings, &auth.client_token)?;
                let ttl = Duration::from_secs(auth.lease_duration);
                Ok((client, Lease::new(ttl, auth.renewable)))
            }
        }
    }
}

impl Lease {
    fn new(ttl: Duration, renewable: bool) -> Self {
        Lease {
            ttl,
            renewable,
            at_login: ttl,
        }
    }

    /// When to refresh: after two thirds of the TTL; never for a token without expiry.
    pub(crate) fn refresh_in(&self) -> Option<Duration> {
        (!self.ttl.is_zero()).then(|| (self.ttl * 2 / 3).max(MIN_REFRESH_WAIT))
    }
}

/// Keeps the session's token valid until the task is aborted (when the backend is dropped).
pub(crate) async fn keep_alive(session: Arc<Session>, mut lease: Lease) {
    while let Some(wait) = lease.refresh_in() {
        tokio::time::sleep(wait).await;
        lease = loop {
            match session.refresh(lease).await {
                Ok(new) => break new,
                Err(e) => {
                    tracing::warn!(error = %e, retry_in_secs = RETRY_WAIT.as_secs(), "cannot refresh the Vault token");
                    tokio::time::sleep(RETRY_WAIT).await;
                }
            }
        };
    }
}

fn client(settings: &VaultClientSettings, token: &str) -> Result<VaultClient, BackendError> {
    let mut settings = settings.clone();
    settings.token = token.to_owned();
    VaultClient::new(settings).map_err(|e| {
        BackendError::Rejected(format!("cannot set up the Vault client: {}", describe(&e)))
    })
}

/// A secret from a file only its owner may read (or a systemd credential), trimmed.
fn read_secret_file(path: &Path, credentials_dir: Option<&Path>) -> Result<String, BackendError> {
    keyturn_backend::fsutil::check_secret_file(path, credentials_dir)?;
    let text = std::fs::read_to_string(path)
        .map_err(|e| BackendError::storage(format!("cannot read {}", path.display()), e))?;
    let secret = text.trim();
    if secret.is_empty() {
        return Err(BackendError::Rejected(format!(
            "{} is empty",
            path.display()
        )));
    }
    Ok(secret.to_owned())
}

#[cfg(test)]
mod tests {
    use super::read_secret_file;
    use std::os::unix::fs::PermissionsExt;

    /// A token delivered as a systemd credential may be 0440 (credentials directories with
    /// ACLs); the same mode elsewhere is refused.
    #[test]
    fn a_group_readable_systemd_credential_is_a_token() {
        let creds = tempfile::tempdir().unwrap();
        let path = creds.path().join("vault-token");
        std::fs::write(&path, "hvs.token\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o440)).unwrap();
        assert_eq!(
            read_secret_file(&path, Some(creds.path())).unwrap(),
            "hvs.token"
        );
        assert!(read_secret_file(&path, None).is_err());
    }
}

//! Vault failures mapped onto [`BackendError`], without leaking secrets.
//!
//! vaultrs errors can carry whole response bodies (an AppRole login answer holds a token),
//! so they never become a `source` as they are: [`VaultFailure`] keeps only the HTTP status,
//! Vault's own error strings and the `Display` chain of transport errors.

use keyturn_backend::BackendError;
use vaultrs::error::ClientError;

/// Where the policy keyturn's token needs is kept; named in every permission error.
pub(crate) const POLICY_HINT: &str = "the token lacks the policy in config/vault-policy.hcl \
     (adjust its mount paths to transit_mount and kv_mount), or it has expired";

/// A Vault failure reduced to what is safe to log.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub(crate) struct VaultFailure(String);

/// The HTTP status of a failed call, if Vault answered at all.
pub(crate) fn status(e: &ClientError) -> Option<u16> {
    match e {
        ClientError::APIError { code, .. } => Some(*code),
        ClientError::RestClientError {
            source: rustify::errors::ClientError::ServerResponseError { code, .. },
        } => Some(*code),
        _ => None,
    }
}

/// True when Vault answered `code` with an error string containing `needle`.
pub(crate) fn api_error_mentions(e: &ClientError, code: u16, needle: &str) -> bool {
    matches!(e, ClientError::APIError { code: c, errors } if *c == code && errors.iter().any(|m| m.contains(needle)))
}

/// Status, Vault's error strings, or the transport error chain: never a body.
pub(crate) fn describe(e: &ClientError) -> String {
    if let ClientError::APIError { code, errors } = e {
        return format!("HTTP {code}: {}", errors.join("; "));
    }
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Maps a failed call (`what`: "signing with transit key \"k\"") onto a [`BackendError`]:
/// unreachable, 429, 5xx and sealed are retryable; 403 names the policy; any other answer
/// is a refusal. Callers handle 404 and check-and-set themselves where they mean something.
pub(crate) fn classify(what: &str, e: ClientError) -> BackendError {
    let detail = describe(&e);
    match status(&e) {
        Some(403) => BackendError::Rejected(format!(
            "Vault denied {what} (403 permission denied): {POLICY_HINT}"
        )),
        Some(code @ (429 | 500..=599)) => BackendError::unavailable(
            format!("Vault answered {code} to {what} (sealed, standby or overloaded?)"),
            VaultFailure(detail),
        ),
        Some(code) => BackendError::Rejected(format!("Vault refused {what} ({code}): {detail}")),
        None if is_transport(&e) => {
            let hint = if detail.contains("certificate") {
                " (TLS verification failed: does ca_file hold the CA of Vault's certificate?)"
            } else {
                ""
            };
            BackendError::unavailable(
                format!("cannot reach Vault for {what}{hint}"),
                VaultFailure(detail),
            )
        }
        None => BackendError::Rejected(format!("unexpected answer from Vault to {what}: {detail}")),
    }
}

fn is_transport(e: &ClientError) -> bool {
    use rustify::errors::ClientError as Rest;
    matches!(
        e,
        ClientError::RestClientError {
            source: Rest::RequestError { .. } | Rest::ResponseError { .. }
        }
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, msg: &str) -> ClientError {
        ClientError::APIError {
            code,
            errors: vec![msg.to_owned()],
        }
    }

    #[test]
    fn statuses_map_onto_backend_errors() {
        let sealed = classify("x", api(503, "Vault is sealed"));
        assert!(sealed.is_retryable(), "{sealed}");
        assert!(classify("x", api(429, "standby")).is_retryable());
        let denied = classify("reading key", api(403, "permission denied"));
        assert!(!denied.is_retryable());
        assert!(denied.to_string().contains("vault-policy.hcl"), "{denied}");
        assert!(matches!(
            classify("x", api(400, "bad")),
            BackendError::Rejected(_)
        ));
        assert!(api_error_mentions(
            &api(
                400,
                "check-and-set parameter did not match the current version"
            ),
            400,
            "check-and-set"
        ));
    }
}

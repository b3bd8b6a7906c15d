//! AWS SDK failures mapped onto [`BackendError`].
//!
//! By the time an error reaches here the SDK's retry policy has already retried what it
//! considers transient (throttling, 5xx, timeouts, connection failures); what is left is
//! either still transient (→ `Unavailable`, retryable later) or a refusal.
//!
//! AWS error messages are kept out of our messages and, for signature and token errors,
//! out of the logged source too: those echo the string-to-sign, which names the access key.

use aws_sdk_kms::config::http::HttpResponse;
use aws_sdk_kms::error::{ProvideErrorMetadata, SdkError};
use keyturn_backend::BackendError;

/// Where the IAM permissions keyturn needs are listed; named in every access error.
pub(crate) const POLICY_HINT: &str = "grant the IAM permissions in config/kms-iam-policy.json \
     and check the credentials the AWS chain picked up";

/// Maps a failed call `op` (the AWS operation name) to a [`BackendError`].
pub(crate) fn map<E>(op: &'static str, err: SdkError<E, HttpResponse>) -> BackendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let status = match &err {
        SdkError::ServiceError(ctx) => Some(ctx.raw().status().as_u16()),
        _ => None,
    };
    let Some(code) = err.code().map(str::to_owned) else {
        return match (status, err) {
            // An error body the SDK could not read (some endpoints answer auth failures
            // in another protocol's format).
            (Some(status @ (401 | 403)), _) => {
                BackendError::Rejected(format!("AWS refused {op} (HTTP {status}): {POLICY_HINT}"))
            }
            (Some(status), SdkError::ServiceError(_)) if status < 500 && status != 429 => {
                BackendError::Rejected(format!("AWS {op} failed with HTTP {status}"))
            }
            // No answer (timeout, connection refused, DNS), an unreadable answer, a 5xx
            // without a code, or no credentials yet (instance metadata can be slow).
            (_, other) => BackendError::unavailable(format!("AWS {op} did not succeed"), other),
        };
    };
    let detail = match code.as_str() {
        "InvalidSignatureException"
        | "IncompleteSignature"
        | "UnrecognizedClientException"
        | "InvalidClientTokenId"
        | "ExpiredTokenException"
        | "MissingAuthenticationToken" => None,
        _ => err.message().map(str::to_owned),
    };
    let source = format!(
        "{op}: {code} (HTTP {}){}",
        status.unwrap_or_default(),
        detail.map(|m| format!(": {m}")).unwrap_or_default()
    );
    tracing::debug!(error = %source, "AWS call failed");
    if is_access_error(&code) {
        return BackendError::Rejected(format!("AWS refused {op} ({code}): {POLICY_HINT}"));
    }
    if is_transient(&code) || status.is_some_and(|s| s >= 500 || s == 429) {
        return BackendError::unavailable(format!("AWS {op} failed: {code}"), source);
    }
    BackendError::Rejected(format!("AWS {op} failed: {code}"))
}

fn is_access_error(code: &str) -> bool {
    matches!(
        code,
        "AccessDeniedException"
            | "AccessDenied"
            | "NotAuthorized"
            | "UnauthorizedOperation"
            | "UnrecognizedClientException"
            | "InvalidSignatureException"
            | "IncompleteSignature"
            | "InvalidClientTokenId"
            | "ExpiredTokenException"
            | "MissingAuthenticationToken"
    )
}

fn is_transient(code: &str) -> bool {
    matches!(
        code,
        "ThrottlingException"
            | "Throttling"
            | "TooManyRequestsException"
            | "RequestLimitExceeded"
            | "ProvisionedThroughputExceededException"
            | "KMSInternalException"
            | "DependencyTimeoutException"
            | "InternalServerError"
            | "InternalFailure"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
    )
}

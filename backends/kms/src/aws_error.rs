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
    if is_transient(&code) || status.is_some_and(|s| s >= 500 || s == 429) {
        tracing::debug!(error = %source, "AWS call failed");
        return BackendError::unavailable(format!("AWS {op} failed: {code}"), source);
    }
    // Rejected carries no source: log what AWS said (for AccessDenied, the principal and
    // the missing action) so that the operator can fix it.
    tracing::warn!(error = %source, "AWS refused a call");
    if is_access_error(&code) {
        return BackendError::Rejected(format!("AWS refused {op} ({code}): {POLICY_HINT}"));
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

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_kms::error::{ConnectorError, ErrorMetadata};
    use aws_sdk_kms::operation::sign::SignError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;

    fn service(
        status: u16,
        code: Option<&str>,
        message: &str,
    ) -> SdkError<SignError, HttpResponse> {
        let mut meta = ErrorMetadata::builder().message(message);
        if let Some(code) = code {
            meta = meta.code(code);
        }
        let raw = HttpResponse::new(StatusCode::try_from(status).unwrap(), SdkBody::empty());
        SdkError::service_error(SignError::generic(meta.build()), raw)
    }

    #[test]
    fn transient_failures_are_retryable() {
        for err in [
            service(400, Some("ThrottlingException"), "slow down"),
            service(500, Some("KMSInternalException"), "oops"),
            service(503, None, ""),
            service(429, Some("SomethingNew"), ""),
            SdkError::timeout_error("attempt timed out"),
            SdkError::dispatch_failure(ConnectorError::io("connection refused".into())),
        ] {
            let mapped = map("Sign", err);
            assert!(
                matches!(mapped, BackendError::Unavailable { .. }) && mapped.is_retryable(),
                "{mapped:?}"
            );
        }
    }

    #[test]
    fn access_errors_name_the_policy_and_hide_aws_details() {
        for err in [
            service(
                400,
                Some("AccessDeniedException"),
                "User: arn:x is not authorized",
            ),
            service(
                400,
                Some("InvalidSignatureException"),
                "string-to-sign AKIAEXAMPLE",
            ),
            service(403, None, "<xml/>"),
        ] {
            let mapped = map("Sign", err);
            let text = format!("{mapped} {mapped:?}");
            assert!(matches!(mapped, BackendError::Rejected(_)), "{text}");
            assert!(text.contains("config/kms-iam-policy.json"), "{text}");
            assert!(
                !text.contains("AKIAEXAMPLE") && !text.contains("arn:x"),
                "{text}"
            );
        }
    }

    #[test]
    fn other_client_errors_are_rejected() {
        let mapped = map("Sign", service(400, Some("ValidationException"), "bad"));
        assert!(
            matches!(mapped, BackendError::Rejected(ref m) if m.contains("ValidationException"))
        );
        assert!(!mapped.is_retryable());
    }
}

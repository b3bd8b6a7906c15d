//! The one error type every HTTP handler returns: a status, a stable code and a message
//! that tells the caller what to change. Never backend internals, never key material.

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};

/// An HTTP error: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// Status.
    pub status: StatusCode,
    /// Stable machine-readable code.
    pub code: &'static str,
    /// What to change.
    pub message: String,
    /// Seconds before retrying, on 503.
    pub retry_after: Option<u64>,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 400.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 403.
    pub fn forbidden(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, code, message)
    }

    /// 404 for an unknown key set.
    pub fn unknown_keyset(name: &str) -> Self {
        let shown: String = name.chars().take(64).collect();
        Self::new(
            StatusCode::NOT_FOUND,
            "unknown_keyset",
            format!("no key set named {shown:?}; GET /v1/keysets lists them"),
        )
    }

    /// 503 with Retry-After: the backend is unreachable.
    pub fn unavailable(retry_after: u64) -> Self {
        Self::retry_after(
            retry_after,
            "backend_unavailable",
            "the key backend is unreachable; retry later",
        )
    }

    /// 503 with Retry-After: the same request will do, `secs` later.
    pub fn retry_after(secs: u64, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            retry_after: Some(secs),
            ..Self::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
        }
    }

    /// The body: `{"error": {"code", "message"}}`.
    fn body(&self) -> Vec<u8> {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        serde_json::to_vec(&body).unwrap_or_default()
    }

    /// The status, body and headers, for any body type.
    pub fn response<B: From<Vec<u8>>>(&self) -> http::Response<B> {
        let mut response = http::Response::new(B::from(self.body()));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(secs) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.response()
    }
}

/// A policy refusal at the HTTP edge.
impl From<crate::core::policy::Refusal> for ApiError {
    fn from(r: crate::core::policy::Refusal) -> Self {
        use crate::core::policy::Refused;
        let status = match r.kind {
            Refused::Malformed => StatusCode::BAD_REQUEST,
            Refused::Forbidden => StatusCode::FORBIDDEN,
            Refused::Invalid => StatusCode::UNPROCESSABLE_ENTITY,
            Refused::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, r.code, r.message)
    }
}

/// Why a signing transaction gave no token, at the HTTP edge.
impl From<crate::server::sign::SignError> for ApiError {
    fn from(e: crate::server::sign::SignError) -> Self {
        use crate::core::keyset::CannotSign;
        use crate::server::sign::SignError;
        match e {
            SignError::CannotSign(why @ CannotSign::KeysUnusable) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "key_unavailable",
                why.message(),
            ),
            // The key set may have moved on without this replica knowing.
            SignError::CannotSign(
                why @ (CannotSign::OutOfSync | CannotSign::RetentionUnrecorded),
            ) => ApiError::retry_after(1, "backend_unavailable", why.message()),
            SignError::CannotSign(why @ CannotSign::NoActiveKey) => {
                ApiError::retry_after(1, "no_active_key", why.message())
            }
            SignError::CannotSign(why @ CannotSign::NoSigners) => {
                ApiError::forbidden("keyset_not_allowed", why.message())
            }
            SignError::BackendDown => ApiError::unavailable(5),
            SignError::BackendFailed => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "signing_failed",
                "the backend could not sign; see the daemon's log",
            ),
            SignError::Revoked => ApiError::retry_after(
                1,
                "key_revoked",
                "the signing key was revoked while it signed; send the request again",
            ),
            SignError::AuditUnavailable => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "audit_unavailable",
                "the audit log is not writable; no token was issued",
            ),
            SignError::StatusListsUnavailable => ApiError::retry_after(
                5,
                "status_lists_unavailable",
                "no status list index could be reserved for the token; see the daemon's log",
            ),
        }
    }
}

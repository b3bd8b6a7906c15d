use crate::Algorithm;

/// What a backend call can fail with.
///
/// Messages never contain key material; backends put their own details in `source`,
/// which the daemon logs but never returns to a caller.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The key (or document) does not exist.
    #[error("key {0:?} not found in the backend")]
    NotFound(String),
    /// A check-and-set write lost against another writer.
    #[error("the stored state changed underneath this write (check-and-set conflict)")]
    Conflict,
    /// The backend cannot do this algorithm.
    #[error("the backend does not support {0}")]
    Unsupported(Algorithm),
    /// The request was refused for a reason that retrying will not fix.
    #[error("the backend refused the request: {0}")]
    Rejected(String),
    /// The backend could not be reached or answered with a transient failure.
    #[error("the backend is unavailable: {message}")]
    Unavailable {
        /// What failed, without backend internals that could leak secrets.
        message: String,
        /// The underlying cause, for logs.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// A local storage or integrity failure (disk, permissions, corrupt data).
    #[error("backend storage error: {message}")]
    Storage {
        /// What failed.
        message: String,
        /// The underlying cause.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

impl BackendError {
    /// Whether the same call may succeed later without any change on our side.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            BackendError::Unavailable { .. } | BackendError::Conflict
        )
    }

    /// An [`BackendError::Unavailable`] with a cause.
    pub fn unavailable(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        BackendError::Unavailable {
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// A [`BackendError::Storage`] with a cause.
    pub fn storage(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        BackendError::Storage {
            message: message.into(),
            source: Some(source.into()),
        }
    }
}

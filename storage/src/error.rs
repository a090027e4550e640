//! Storage errors, coarse and prescriptive: what should the caller do?

#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    #[error("object {0} not found")]
    NotFound(String),
    /// A conditional create found the key taken.
    #[error("object {0} already exists")]
    AlreadyExists(String),
    /// Nothing was written; retry or move on to other targets.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A write may or may not have landed (e.g. it timed out).
    #[error("storage write outcome unknown: {0}")]
    Indeterminate(String),
    #[error("corrupt object {key}: {reason}")]
    Corrupt { key: String, reason: String },
    #[error("invalid storage configuration: {0}")]
    Invalid(String),
}

impl StorageError {
    pub fn from_object_store(e: object_store::Error) -> Self {
        match e {
            object_store::Error::NotFound { path, .. } => StorageError::NotFound(path),
            object_store::Error::AlreadyExists { path, .. } => StorageError::AlreadyExists(path),
            other => StorageError::Unavailable(other.to_string()),
        }
    }

    pub fn corrupt(key: impl Into<String>, reason: impl Into<String>) -> Self {
        StorageError::Corrupt {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

//! The store's error type.

/// Errors of the store crate. Write-level outcomes (conflicts, missing objects) are not errors
/// here but [`crate::WriteError`] values, because the state machine decides them.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("opening the database {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: redb::DatabaseError,
    },
    #[error("database: {0}")]
    Database(String),
    #[error("raft: {0}")]
    Raft(String),
    #[error("this server is not the leader of the control-plane group ({0})")]
    NotLeader(String),
    #[error("decoding a stored object: {0}")]
    Decode(#[from] serde_json::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Wraps any redb error (they are many distinct types) into [`Error::Database`].
pub(crate) fn db<E: std::fmt::Display>(error: E) -> Error {
    Error::Database(error.to_string())
}

//! The API server's error type (start-up and serving failures; request errors are `ApiError`s).

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("certificates: {0}")]
    Tls(String),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("joining the cluster through {url}: {detail}")]
    Join { url: String, detail: String },
    #[error(transparent)]
    Store(#[from] shoal_store::Error),
}

impl Error {
    pub(crate) fn tls<E: std::fmt::Display>(error: E) -> Self {
        Error::Tls(error.to_string())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

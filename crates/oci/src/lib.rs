//! shoal-oci: how Shoal names, inspects, moves and caches artifacts.
//!
//! One distribution client ([`client`]) serves the built-in registry of the control plane and
//! external OCI registries alike. Manifests are classified into the Wasm families and plain
//! container images ([`media`]); Wasm bytes are validated and described with wasmparser
//! ([`wasm`]); nodes keep what they pull in a bounded content-addressed cache ([`cache`]).

pub mod cache;
pub mod client;
pub mod digest;
pub mod media;
pub mod reference;
pub mod wasm;

pub use digest::Digest;
pub use reference::Reference;

/// The registry host that always means "this cluster's built-in registry".
pub const BUILT_IN_REGISTRY: &str = "shoal.local";

/// The largest artifact (all its blobs together) accepted by default.
pub const DEFAULT_MAX_ARTIFACT_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid reference {reference:?}: {detail}")]
    Reference { reference: String, detail: String },
    #[error("invalid digest {0:?}: expected sha256: and 64 lowercase hex digits")]
    Digest(String),
    #[error("digest mismatch: expected {expected}, the content hashes to {actual}")]
    DigestMismatch { expected: String, actual: String },
    #[error("not a valid WebAssembly binary: {0}")]
    InvalidWasm(String),
    #[error("{0} bytes is over the artifact size limit of {1} bytes")]
    TooLarge(u64, u64),
    #[error("registry {registry}: {status} {code}: {message}")]
    Registry { registry: String, status: u16, code: String, message: String },
    #[error("cannot reach registry {registry}: {detail}")]
    Transport { registry: String, detail: String },
    #[error("unsupported manifest: {0}")]
    UnsupportedManifest(String),
    #[error("io on {path}: {source}")]
    Io {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

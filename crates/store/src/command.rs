//! The commands replicated through Raft and the state machine's answers to them.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Where an object lives: its resource (`deployments.apps`, `pods` for the core group), its
/// namespace (empty for cluster-scoped kinds) and its name.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectKey {
    pub resource: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(resource: impl Into<String>, namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self { resource: resource.into(), namespace: namespace.into(), name: name.into() }
    }

    /// The redb key. Names and namespaces are DNS labels or subdomains, so `/` cannot occur
    /// inside a part and prefix scans by resource or by resource and namespace are exact.
    pub fn encode(&self) -> String {
        format!("{}/{}/{}", self.resource, self.namespace, self.name)
    }

    pub fn decode(encoded: &str) -> Option<Self> {
        let mut parts = encoded.splitn(3, '/');
        Some(Self::new(parts.next()?, parts.next()?, parts.next()?))
    }

    /// The key prefix of every object of `resource`, optionally only in `namespace`.
    pub fn prefix(resource: &str, namespace: Option<&str>) -> String {
        match namespace {
            Some(namespace) => format!("{resource}/{namespace}/"),
            None => format!("{resource}/"),
        }
    }
}

/// A write to the object store. The API server prepares the whole object (uid, timestamps,
/// generation); the state machine checks preconditions against the current state, because only
/// it sees writes in their final order, and stamps the new revision as `resourceVersion`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Command {
    /// Fails with `AlreadyExists` if the key is taken.
    Create { key: ObjectKey, object: Value },
    /// Fails with `NotFound`, or `Conflict` when a precondition does not hold.
    Update { key: ObjectKey, object: Value, precondition: Precondition },
    /// Fails with `NotFound`, or `Conflict` when a precondition does not hold.
    Delete { key: ObjectKey, precondition: Precondition },
    /// One chunk of a content-addressed blob (registry content), base64-encoded. Chunks live in
    /// their own redb table, not in the object map, and are readable through
    /// `Store::blob_chunk`.
    PutBlobChunk { digest: String, index: u32, data: String },
    /// Removes every chunk of a blob.
    DeleteBlobChunks { digest: String },
    /// Independent commands applied in order in one log entry, each with its own revision and
    /// verdict: how concurrent writes share one Raft round and one fsync (group commit).
    Batch(Vec<Command>),
}

/// Optimistic-concurrency checks on the object as it is when the write is applied.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Precondition {
    pub resource_version: Option<u64>,
    pub uid: Option<String>,
}

/// The state machine's answer to one command.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum CommandResponse {
    /// The object as stored, with its new `resourceVersion` (shared with the store, not a
    /// copy). For a delete, the last state. `encoded` is the write's watch event's shared
    /// encoding (`history::Event::encoded`), so an answer and the watch lines can share one
    /// serialisation; it does not travel between servers.
    Written {
        revision: u64,
        object: Arc<Value>,
        #[serde(skip)]
        encoded: Arc<std::sync::OnceLock<bytes::Bytes>>,
    },
    Rejected(WriteError),
    /// A blob chunk was written or removed.
    BlobDone,
    /// The answers to a [`Command::Batch`], in order.
    Batch(Vec<CommandResponse>),
    /// Entries that carry no command (blank and membership entries).
    None,
}

/// Why the state machine refused a command.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    #[error("already exists")]
    AlreadyExists,
    #[error("not found")]
    NotFound,
    #[error("the object has been modified; please apply your changes to the latest version and try again (current resourceVersion {current}, expected {expected})")]
    ResourceVersionConflict { current: u64, expected: u64 },
    #[error("precondition failed: UID in precondition: {expected}, UID in object meta: {current}")]
    UidConflict { current: String, expected: String },
    /// A Service claims a cluster IP or node port another Service holds. Checked where writes
    /// are ordered, so two API servers (or one before and after a leader change) that allocated
    /// the same address from a state not yet showing the other's write cannot both succeed.
    #[error("{field}: Invalid value: {value}: {detail}")]
    AddressTaken { field: String, value: String, detail: String },
}



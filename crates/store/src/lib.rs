//! shoal-store: the revisioned object store behind the API server, replicated through openraft.
//!
//! Every write is a [`Command`] proposed to Raft; the [`state_machine`] applies it to redb and
//! assigns the next cluster-wide revision (the objects' `resourceVersion`), and the in-memory
//! [`history`] keeps recent events for watches. The Raft log and vote live in their own redb file
//! ([`log_store`]), written by one thread that commits many appends per fsync.

pub mod command;
pub mod error;
pub mod history;
pub mod log_store;
pub mod network;
pub mod state_machine;
mod store;

pub use command::{Command, CommandResponse, LoggedCommand, ObjectKey, WriteError};
pub use error::{Error, Result};
pub use history::{Event, EventType, WatchError};
pub use store::{ClusterStatus, MemberRequest, MemberStatus, Store, StoreConfig, Stored, WireError, WriteAnswer};

openraft::declare_raft_types!(
    /// The Raft type configuration of Shoal's control plane.
    pub TypeConfig:
        D = LoggedCommand,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = state_machine::SnapshotBytes,
        AsyncRuntime = openraft::TokioRuntime,
);

/// The page cache each redb file keeps in the process (redb's default is 1 GiB per file). Both
/// files are written far more than read: objects are served from memory and log entries are read
/// back only when a member lags. Left at the default, every page written stayed cached, so the
/// process held a second copy of the state and of the log file; the operating system's page
/// cache still serves what redb reads back.
pub(crate) const REDB_CACHE_BYTES: usize = 16 * 1024 * 1024;

/// The Raft handle type for Shoal's control plane.
pub type Raft = openraft::Raft<TypeConfig>;

//! The store facade the API server uses: open, write through Raft, read, list and watch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, Config, ServerState, SnapshotPolicy};
use serde_json::Value;

use crate::command::{Command, CommandResponse, ObjectKey, WriteError};
use crate::error::{Error, Result};
use crate::history::{HistoryLimits, WatchError, Watcher};
use crate::log_store::LogStore;
use crate::network::NetworkFactory;
use crate::state_machine::{StateMachine, StateShared};
use crate::Raft;

/// Where and how to open the store.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    pub data_dir: PathBuf,
    pub node_id: u64,
    /// The address peers would reach this server at (recorded in the membership).
    pub advertise_addr: String,
    pub history: HistoryLimits,
}

/// A listing: the items, the revision they were read at, and where to continue.
#[derive(Debug)]
pub struct ListResult {
    pub items: Vec<Value>,
    pub revision: u64,
    pub continue_after: Option<String>,
}

/// The replicated object store. Cloning shares it.
#[derive(Clone)]
pub struct Store {
    raft: Raft,
    state: Arc<StateShared>,
    log_writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Store {
    /// Opens the store in `data_dir`, starting the Raft group and, on first start, initialising
    /// it as a single-member group with this server as its voter. Returns once this server leads.
    pub async fn open(config: StoreConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        let (log_store, log_writer) = LogStore::open(&config.data_dir.join("raft-log.redb"))?;
        let state = StateShared::open(&config.data_dir.join("state.redb"), config.history.clone())?;
        let raft_config = Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: 250,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(10_000),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| Error::Raft(e.to_string()))?);
        let raft = Raft::new(
            config.node_id,
            raft_config,
            NetworkFactory,
            log_store,
            StateMachine::new(Arc::clone(&state)),
        )
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
        if !raft.is_initialized().await.map_err(|e| Error::Raft(e.to_string()))? {
            let mut members = BTreeMap::new();
            members.insert(config.node_id, BasicNode { addr: config.advertise_addr.clone() });
            raft.initialize(members).await.map_err(|e| Error::Raft(e.to_string()))?;
        }
        raft.wait(Some(Duration::from_secs(30)))
            .state(ServerState::Leader, "the single-member group elects this server")
            .await
            .map_err(|e| Error::Raft(e.to_string()))?;
        Ok(Self { raft, state, log_writer: Arc::new(std::sync::Mutex::new(Some(log_writer))) })
    }

    /// Proposes `command` and waits until it is durable in the log and applied. The inner
    /// result is the state machine's verdict.
    pub async fn write(&self, command: Command) -> Result<Result<(u64, Value), WriteError>> {
        let response = self.raft.client_write(command).await.map_err(|e| match e {
            openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(forward)) => {
                Error::NotLeader(format!("leader is {:?}", forward.leader_id))
            }
            other => Error::Raft(other.to_string()),
        })?;
        match response.data {
            CommandResponse::Written { revision, object } => Ok(Ok((revision, object))),
            CommandResponse::Rejected(error) => Ok(Err(error)),
            CommandResponse::None => Err(Error::Raft("a write produced no response".into())),
        }
    }

    /// Waits until this server's state reflects every write committed before the call
    /// (Raft read-index), so the reads that follow are linearizable.
    pub async fn read_barrier(&self) -> Result<()> {
        self.raft.ensure_linearizable().await.map_err(|e| Error::NotLeader(e.to_string()))?;
        Ok(())
    }

    pub fn get(&self, key: &ObjectKey) -> Result<Option<Value>> {
        self.state.get(key)
    }

    /// Lists `resource` objects (in `namespace` if given) that `filter` accepts, in key order,
    /// starting after the encoded key `start_after`, at most `limit` of them.
    pub fn list(
        &self,
        resource: &str,
        namespace: Option<&str>,
        start_after: Option<&str>,
        limit: Option<usize>,
        filter: &dyn Fn(&Value) -> bool,
    ) -> Result<ListResult> {
        let prefix = ObjectKey::prefix(resource, namespace);
        let (items, revision, continue_after) = self.state.list(&prefix, start_after, limit, filter)?;
        Ok(ListResult { items, revision, continue_after })
    }

    /// The revision of the last applied write.
    pub fn revision(&self) -> u64 {
        self.state.revision()
    }

    /// Follows every change after `after_revision`.
    pub fn watch(&self, after_revision: u64) -> Result<Watcher, WatchError> {
        self.state.history.watch(after_revision)
    }

    /// Stops the Raft group (pending writes fail) and waits until the log file is closed.
    pub async fn shutdown(&self) {
        if let Err(error) = self.raft.shutdown().await {
            tracing::warn!(%error, "raft shutdown");
        }
        let handle = self.log_writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(handle) = handle {
            let joined = tokio::time::timeout(Duration::from_secs(10), tokio::task::spawn_blocking(move || handle.join())).await;
            if joined.is_err() {
                tracing::warn!("the raft log writer did not stop within 10 s");
            }
        }
    }
}

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
    /// Build a snapshot (and compact the log) after this many log entries...
    pub snapshot_every: u64,
    /// ...or once the log holds this many bytes, whichever comes first.
    pub snapshot_log_bytes: u64,
    /// Log entries kept behind a snapshot, so a briefly lagging peer can catch up from the log.
    pub entries_kept_after_snapshot: u64,
}

impl StoreConfig {
    /// The defaults for a server: history per [`HistoryLimits::default`], a snapshot every
    /// 100,000 entries (as etcd) or 64 MiB of log.
    pub fn new(data_dir: PathBuf, node_id: u64, advertise_addr: String) -> Self {
        Self {
            data_dir,
            node_id,
            advertise_addr,
            history: HistoryLimits::default(),
            snapshot_every: 100_000,
            snapshot_log_bytes: 64 * 1024 * 1024,
            entries_kept_after_snapshot: 1_000,
        }
    }
}

/// A listing: the items, the revision they were read at, and where to continue.
#[derive(Debug)]
pub struct ListResult {
    pub items: Vec<Value>,
    pub revision: u64,
    pub continue_after: Option<String>,
}

type Proposal = (Command, tokio::sync::oneshot::Sender<Result<CommandResponse>>);

/// How many Raft writes the proposer keeps in flight at once.
const PROPOSALS_IN_FLIGHT: usize = 2;
/// The most commands folded into one log entry.
const MAX_BATCH: usize = 512;

/// The replicated object store. Cloning shares it.
#[derive(Clone)]
pub struct Store {
    raft: Raft,
    proposals: tokio::sync::mpsc::UnboundedSender<Proposal>,
    state: Arc<StateShared>,
    log_writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Store {
    /// Opens the store in `data_dir`, starting the Raft group and, on first start, initialising
    /// it as a single-member group with this server as its voter. Returns once this server leads.
    pub async fn open(config: StoreConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        let (log_store, log_writer) = LogStore::open(&config.data_dir.join("raft-log.redb"))?;
        let log_bytes = log_store.bytes_held();
        let state = StateShared::open(&config.data_dir.join("state.redb"), config.history.clone())?;
        let raft_config = Config {
            cluster_name: "shoal".into(),
            heartbeat_interval: 250,
            election_timeout_min: 300,
            election_timeout_max: 600,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.entries_kept_after_snapshot,
            purge_batch_size: 1,
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
        tokio::spawn(bound_log_size(raft.clone(), log_bytes, config.snapshot_log_bytes));
        let (proposals, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(propose(raft.clone(), queue));
        Ok(Self { raft, proposals, state, log_writer: Arc::new(std::sync::Mutex::new(Some(log_writer))) })
    }

    /// Proposes `command` and waits until it is durable in the log and applied. The inner
    /// result is the state machine's verdict. Concurrent writes share log entries (see
    /// [`propose`]).
    pub async fn write(&self, command: Command) -> Result<Result<(u64, Value), WriteError>> {
        let (reply, response) = tokio::sync::oneshot::channel();
        self.proposals.send((command, reply)).map_err(|_| Error::Raft("the store is shut down".into()))?;
        match response.await.map_err(|_| Error::Raft("the store is shut down".into()))?? {
            CommandResponse::Written { revision, object } => Ok(Ok((revision, object))),
            CommandResponse::Rejected(error) => Ok(Err(error)),
            CommandResponse::Batch(_) | CommandResponse::BlobDone | CommandResponse::None => {
                Err(Error::Raft("a write produced no response".into()))
            }
        }
    }

    /// Replicates one blob chunk (or a chunk deletion) and waits until it is applied.
    pub async fn write_blob(&self, command: Command) -> Result<()> {
        let (reply, response) = tokio::sync::oneshot::channel();
        self.proposals.send((command, reply)).map_err(|_| Error::Raft("the store is shut down".into()))?;
        match response.await.map_err(|_| Error::Raft("the store is shut down".into()))?? {
            CommandResponse::BlobDone => Ok(()),
            other => Err(Error::Raft(format!("a blob write produced {other:?}"))),
        }
    }

    /// Chunk `index` of blob `digest` as applied on this server.
    pub fn blob_chunk(&self, digest: &str, index: u32) -> Result<Option<Vec<u8>>> {
        self.state.blob_chunk(digest, index)
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

    /// Raft's view of this server: the log, snapshot and membership positions.
    pub fn raft_metrics(&self) -> openraft::RaftMetrics<u64, BasicNode> {
        self.raft.metrics().borrow().clone()
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
        if let Err(error) = self.state.close() {
            tracing::warn!(%error, "flushing the state machine at shutdown");
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

fn raft_error(error: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>) -> Error {
    match error {
        openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(forward)) => {
            Error::NotLeader(format!("leader is {:?}", forward.leader_id))
        }
        other => Error::Raft(other.to_string()),
    }
}

/// Group commit above Raft. openraft 0.9 starts a log append only after the previous one is
/// flushed, so one write per entry would cap throughput at one fsync per write. Instead every
/// write that arrives while a Raft write is in flight waits here, and the next log entry carries
/// all of them as one [`Command::Batch`].
async fn propose(raft: Raft, mut queue: tokio::sync::mpsc::UnboundedReceiver<Proposal>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT));
    while let Some(first) = queue.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(proposal) => batch.push(proposal),
                Err(_) => break,
            }
        }
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if batch.len() == 1 {
                let (command, reply) = batch.pop().expect("one proposal");
                let outcome = raft.client_write(command).await.map(|r| r.data).map_err(raft_error);
                let _ = reply.send(outcome);
                return;
            }
            let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            match raft.client_write(Command::Batch(commands)).await {
                Ok(response) => match response.data {
                    CommandResponse::Batch(responses) => {
                        for (reply, response) in replies.into_iter().zip(responses) {
                            let _ = reply.send(Ok(response));
                        }
                    }
                    other => {
                        for reply in replies {
                            let _ = reply.send(Err(Error::Raft(format!("a batch produced {other:?}"))));
                        }
                    }
                },
                Err(error) => {
                    let error = raft_error(error);
                    for reply in replies {
                        let copy = match &error {
                            Error::NotLeader(message) => Error::NotLeader(message.clone()),
                            other => Error::Raft(other.to_string()),
                        };
                        let _ = reply.send(Err(copy));
                    }
                }
            }
        });
    }
}

/// Triggers a snapshot (and with it log compaction) whenever the log outgrows `limit` bytes, so
/// that large batch entries cannot grow memory without bound between entry-count snapshots.
async fn bound_log_size(raft: Raft, log_bytes: Arc<std::sync::atomic::AtomicU64>, limit: u64) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last_trigger: Option<tokio::time::Instant> = None;
    loop {
        ticker.tick().await;
        if log_bytes.load(std::sync::atomic::Ordering::Relaxed) < limit || last_trigger.is_some_and(|at| at.elapsed() < Duration::from_secs(10)) {
            continue;
        }
        last_trigger = Some(tokio::time::Instant::now());
        if raft.trigger().snapshot().await.is_err() {
            return;
        }
    }
}

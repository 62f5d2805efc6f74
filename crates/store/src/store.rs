//! The store facade the API server uses: open, write through Raft, read, list and watch.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openraft::{BasicNode, ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::{Command, CommandResponse, LoggedCommand, ObjectKey, WriteError};
use crate::error::{Error, Result};
use crate::history::{HistoryLimits, WatchError, Watcher};
use crate::log_store::{Durability, LogMemory, LogStore};
use crate::network::{CallError, NetworkFactory, Transport, paths};
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
    /// Start a new single-member group here when the store holds none (the first server).
    /// A joining server sets this to false and waits to be added by the group.
    pub bootstrap: bool,
    /// The cluster CA, which peers' serving certificates are checked against.
    pub ca_pem: Option<String>,
    /// The server token this server presents to its peers.
    pub server_token: String,
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
            bootstrap: true,
            ca_pem: None,
            server_token: String::new(),
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

/// A write's answer and the index of the log entry that carried it.
type Indexed = (CommandResponse, u64);
type Proposal = (Command, tokio::sync::oneshot::Sender<std::result::Result<Indexed, Unwritten>>);
/// A write to forward: the leader's URL, the command, how long it may take, and where the answer
/// goes, with the command back (for a retry).
type Forward = (String, Command, Duration, tokio::sync::oneshot::Sender<(std::result::Result<WriteAnswer, CallError>, Command)>);

/// Why a proposal was not written. A command this server could not propose because it does not
/// lead (openraft's `ForwardToLeader`: refused before it was appended, or its entry truncated
/// by a new leader) comes back unapplied, so the write can go to the leader without having kept
/// a copy of it.
#[derive(Debug)]
struct Unwritten {
    error: Error,
    command: Option<Command>,
}

/// How long a write may wait for a leader (an election, a moving leader, a lost quorum) before it
/// fails with 503.
const WRITE_WAIT: Duration = Duration::from_secs(10);
/// How long a linearizable read may wait for its read index.
const READ_WAIT: Duration = Duration::from_secs(5);
/// How long after a quorum confirmed this leader (counted from before the confirmation was
/// asked) it serves reads without asking again. Followers that acknowledged the leader refuse to
/// vote for another for openraft's leader lease (`election_timeout_max`, 800 ms) after hearing
/// from it, so no other leader can exist within this much shorter window.
const LEASE_READS: Duration = Duration::from_millis(200);

type ReadIndexAnswer = std::result::Result<std::result::Result<u64, WireError>, CallError>;

/// The reads waiting for the next round of a read-index check, and whether a round is under way.
struct Coalesced<T> {
    waiting: Vec<tokio::sync::oneshot::Sender<T>>,
    in_flight: bool,
}

impl<T> Default for Coalesced<T> {
    fn default() -> Self {
        Self { waiting: Vec::new(), in_flight: false }
    }
}

type Queue<T> = Arc<std::sync::Mutex<Coalesced<T>>>;

/// Waits for the next round of `round` that begins after this call, sharing it with every
/// caller waiting then: one round runs at a time, and a round answers exactly the callers that
/// were waiting when it began (a read index fetched after a read began is valid for it, one
/// fetched before is not). The first caller to find no round under way starts a task that runs
/// rounds while callers keep arriving. `dropped` answers a caller whose round was lost (the
/// runtime shutting down).
async fn coalesce<T, F, Fut>(queue: &Queue<T>, dropped: impl FnOnce() -> T, mut round: F) -> T
where
    T: Clone + Send + 'static,
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T> + Send,
{
    let (reply, answer) = tokio::sync::oneshot::channel();
    let start = {
        let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
        queue.waiting.push(reply);
        !std::mem::replace(&mut queue.in_flight, true)
    };
    if start {
        let queue = Arc::clone(queue);
        tokio::spawn(async move {
            loop {
                let batch = {
                    let mut queue = queue.lock().unwrap_or_else(|p| p.into_inner());
                    let batch = std::mem::take(&mut queue.waiting);
                    if batch.is_empty() {
                        queue.in_flight = false;
                        return;
                    }
                    batch
                };
                let outcome = round().await;
                for reply in batch {
                    let _ = reply.send(outcome.clone());
                }
            }
        });
    }
    answer.await.unwrap_or_else(|_| dropped())
}

/// What a peer answers when it cannot act on a forwarded call.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum WireError {
    /// The peer is not the leader (any more): the call was not acted on; ask the leader.
    NotLeader(String),
    /// It was not acted on because another change is under way (a membership change): retry.
    Busy(String),
    /// It failed there; the message says why.
    Failed(String),
}

/// The answer to a forwarded write.
pub type WriteAnswer = std::result::Result<(CommandResponse, u64), WireError>;

/// A member joining the group: its id and the base URL of its API.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberRequest {
    pub id: u64,
    pub addr: String,
}

/// One member as `shoal cluster status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemberStatus {
    pub id: u64,
    pub addr: String,
    /// `voter` or `learner`.
    pub role: String,
    /// The last log index known replicated to it (from the leader's view).
    pub matched_index: Option<u64>,
    /// How many entries it is behind the leader's log.
    pub lag: Option<u64>,
}

/// A server's view of the control-plane group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The answering server.
    pub id: u64,
    /// Leader, Follower, Candidate or Learner.
    pub state: String,
    pub leader: Option<u64>,
    pub term: u64,
    pub last_log_index: Option<u64>,
    /// The last log index this server knows to be committed.
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// Milliseconds since a quorum last acknowledged this server as leader (leaders only).
    pub millis_since_quorum_ack: Option<u64>,
    pub members: Vec<MemberStatus>,
    /// The store's revision (the last `resourceVersion`).
    pub revision: u64,
}

/// How many Raft writes the proposer keeps in flight at once. One, since the log acknowledges
/// appends before their fsync (`log_store`): a write's round is then replication and the
/// slower fsync in parallel, and what arrives meanwhile makes the next entry larger. Against
/// two in flight, six alternating rounds of 3 members with 64 clients gave a median of about
/// 7,900 writes/s against 7,300 (session 26, `benches/RESULTS.md`); 8 clients, a follower's 64
/// and a lone server measured the same.
const PROPOSALS_IN_FLIGHT: usize = 1;
/// The most commands folded into one log entry.
const MAX_BATCH: usize = 512;

/// A write as applied: its revision, the stored object (shared) and the shared encoding of its
/// watch event (`history::Event::encoded`), empty until someone serialises it, and always empty
/// for a write forwarded to another server.
#[derive(Debug, Clone)]
pub struct Stored {
    pub revision: u64,
    pub object: Arc<Value>,
    pub encoded: Arc<std::sync::OnceLock<bytes::Bytes>>,
}

/// The replicated object store. Cloning shares it.
#[derive(Clone)]
pub struct Store {
    id: u64,
    /// What the Raft log holds in memory.
    log_memory: LogMemory,
    log_on_disk: Durability,
    /// Reads on a follower waiting for the leader's read index (see `coalesced_read_index`).
    read_indexes: Queue<ReadIndexAnswer>,
    /// Reads on the leader waiting for a quorum to confirm its leadership (see `read_index`).
    leadership_checks: Queue<std::result::Result<u64, WireError>>,
    /// When a quorum last confirmed this server's leadership (the time before it asked).
    lease_from: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    in_step: tokio::sync::watch::Receiver<bool>,
    raft: Raft,
    proposals: tokio::sync::mpsc::UnboundedSender<Proposal>,
    /// Writes to forward to the leader (see [`forward_writes`]).
    forwards: tokio::sync::mpsc::UnboundedSender<Forward>,
    state: Arc<StateShared>,
    transport: Transport,
    log_writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Store {
    /// Opens the store in `data_dir` and starts its Raft member. On first start with
    /// `bootstrap`, it initialises a single-member group with this server as its voter. When this
    /// server is the group's only voter, returns once it leads; otherwise at once (a joining
    /// server is added by the group, a restarted member of a larger group rejoins it).
    pub async fn open(config: StoreConfig) -> Result<Self> {
        std::fs::create_dir_all(&config.data_dir)?;
        let (log_store, log_writer) = LogStore::open(&config.data_dir.join("raft-log.redb"))?;
        let log_bytes = log_store.bytes_held();
        let hand_over_through = log_store.hand_over_through();
        let log_memory = log_store.memory();
        let log_on_disk = log_store.durability();
        let state = StateShared::open(&config.data_dir.join("state.redb"), config.history.clone())?;
        let raft_config = Config {
            cluster_name: "shoal".into(),
            // A follower starts an election after 400–800 ms without hearing from the leader
            // (heartbeats every 100 ms). AppendEntries carry at most 64 entries (each may be a
            // batch of writes), so that a follower catching up after a partition keeps hearing
            // from the leader between requests instead of timing out in the middle of a long
            // one and disrupting the group.
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            max_payload_entries: 64,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
            max_in_snapshot_log_to_keep: config.entries_kept_after_snapshot,
            purge_batch_size: 1,
            // Chunks travel as JSON between servers: keep each request moderate.
            snapshot_max_chunk_size: 1024 * 1024,
            ..Default::default()
        };
        let raft_config = Arc::new(raft_config.validate().map_err(|e| Error::Raft(e.to_string()))?);
        let transport = Transport::new(config.ca_pem.as_deref(), &config.server_token, config.node_id).map_err(Error::Raft)?;
        let (heartbeats, heartbeat_requests) = tokio::sync::mpsc::unbounded_channel();
        let raft = Raft::new(
            config.node_id,
            raft_config,
            NetworkFactory::new(transport.clone(), log_on_disk.clone(), heartbeats),
            log_store,
            StateMachine::new(Arc::clone(&state), log_on_disk.clone()),
        )
        .await
        .map_err(|e| Error::Raft(e.to_string()))?;
        let initialized = raft.is_initialized().await.map_err(|e| Error::Raft(e.to_string()))?;
        if config.bootstrap && !initialized {
            let mut members = BTreeMap::new();
            members.insert(config.node_id, BasicNode { addr: config.advertise_addr.clone() });
            raft.initialize(members).await.map_err(|e| Error::Raft(e.to_string()))?;
        }
        if config.bootstrap || initialized {
            // The metrics show the new or stored membership only a moment after `initialize` (or
            // `Raft::new`) returns; deciding `alone` from them before that would take a lone
            // server for a member of a larger group.
            raft.wait(Some(Duration::from_secs(30)))
                .metrics(|m| m.membership_config.membership().nodes().next().is_some(), "the membership is loaded")
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
        }
        let alone = {
            let metrics = raft.metrics().borrow().clone();
            let voters: Vec<u64> = metrics.membership_config.membership().voter_ids().collect();
            voters == [config.node_id]
        };
        if alone {
            // Both the state and the known leader: `is_alone` reads the latter, and the server
            // bootstraps its objects before it serves clients only when it is alone.
            let id = config.node_id;
            raft.wait(Some(Duration::from_secs(30)))
                .metrics(|m| m.state == ServerState::Leader && m.current_leader == Some(id), "the single-member group elects this server")
                .await
                .map_err(|e| Error::Raft(e.to_string()))?;
            // A lone server restarted at another address records the new one, which the
            // kubeconfig's server list and the `kubernetes` Endpoints are built from.
            let recorded = raft.metrics().borrow().membership_config.membership().get_node(&id).map(|node| node.addr.clone());
            if recorded.as_deref() != Some(config.advertise_addr.as_str()) {
                let nodes = BTreeMap::from([(id, BasicNode { addr: config.advertise_addr.clone() })]);
                raft.change_membership(ChangeMembers::SetNodes(nodes), false).await.map_err(|e| Error::Raft(e.to_string()))?;
            }
        }
        tokio::spawn(bound_log_size(raft.clone(), log_bytes, config.snapshot_log_bytes));
        tokio::spawn(follow_replication(raft.clone(), config.node_id, hand_over_through));
        tokio::spawn(send_heartbeats(raft.clone(), heartbeat_requests));
        let (proposals, queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(propose(raft.clone(), queue));
        let (forwards, forward_queue) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(forward_writes(transport.clone(), forward_queue));
        let (in_step_sender, in_step) = tokio::sync::watch::channel(true);
        tokio::spawn(monitor_group(raft.clone(), transport.clone(), config.node_id, in_step_sender));
        Ok(Self { id: config.node_id, log_memory, log_on_disk, read_indexes: Arc::default(), leadership_checks: Arc::default(), lease_from: Arc::new(std::sync::Mutex::new(None)), in_step, raft, proposals, forwards, state, transport, log_writer: Arc::new(std::sync::Mutex::new(Some(log_writer))) })
    }

    /// How many Raft log entries this server holds in memory, and how many of those since the
    /// last purge were handed over to the state machine (and are only on disk).
    pub fn log_entries_in_memory(&self) -> (usize, usize) {
        self.log_memory.entries()
    }

    /// This server's member id.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The Raft handle, for the internal API that serves peers' RPCs.
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// How far this server's Raft log is on disk (see `log_store`).
    pub fn log_on_disk(&self) -> &Durability {
        &self.log_on_disk
    }

    /// The leader this server knows of, with the base URL of its API.
    pub fn leader(&self) -> Option<(u64, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let leader = metrics.current_leader?;
        let addr = metrics.membership_config.membership().get_node(&leader)?.addr.clone();
        Some((leader, addr))
    }

    /// True while this server is in step with a majority of the group (always, alone): it
    /// turns false within a few seconds of the server losing contact with the leader or the
    /// leader with its quorum (a partition, a removal). Watches end when it does, so that their
    /// clients reconnect to a server that is in step, as etcd's require-leader watches do.
    pub fn in_step(&self) -> tokio::sync::watch::Receiver<bool> {
        self.in_step.clone()
    }

    /// Every member (voters and learners): id and API URL.
    pub fn members(&self) -> Vec<(u64, String)> {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        metrics.membership_config.membership().nodes().map(|(id, node)| (*id, node.addr.clone())).collect()
    }

    /// Whether `id` is a member (voter or learner) of the group as this server knows it.
    pub fn is_member(&self, id: u64) -> bool {
        self.raft.metrics().borrow().membership_config.membership().get_node(&id).is_some()
    }

    /// Whether this server is the group's only voter and leads it (the single-server default),
    /// where every read is linearizable without a round and no write is ever forwarded.
    pub fn is_alone(&self) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let mut voters = metrics.membership_config.membership().voter_ids();
        voters.next() == Some(self.id) && voters.next().is_none() && metrics.current_leader == Some(self.id)
    }

    /// Waits until some leader is known (or `until` passes).
    async fn await_leader(&self, until: tokio::time::Instant) -> bool {
        let mut metrics = self.raft.metrics();
        loop {
            if metrics.borrow_and_update().current_leader.is_some() {
                return true;
            }
            if tokio::time::timeout_at(until, metrics.changed()).await.is_err() {
                return false;
            }
        }
    }

    /// Waits until this server has applied log index `index` (bounded by `wait`).
    async fn await_applied(&self, index: u64, wait: Duration) -> Result<()> {
        self.raft
            .wait(Some(wait))
            .applied_index_at_least(Some(index), "catching up to a write or read index")
            .await
            .map(|_| ())
            .map_err(|e| Error::NotLeader(format!("this server has not caught up with the leader within {wait:?}: {e}")))
    }

    /// Writes `command` through the group from any member: proposed here when this server
    /// leads, otherwise forwarded to the leader, then awaited until applied here too, so that a
    /// client reading from this server next sees its own write. A write that finds no leader (an
    /// election, a lost quorum) waits up to [`WRITE_WAIT`] for one; one whose fate is unknown (the
    /// leader went away after receiving it) fails and says so, never retried blindly.
    pub async fn write_indexed(&self, command: Command) -> Result<Indexed> {
        if self.is_alone() {
            return self.propose(command).await.map_err(|unwritten| unwritten.error);
        }
        let until = tokio::time::Instant::now() + WRITE_WAIT;
        let mut last_problem = String::from("no leader is known");
        let mut command = command;
        loop {
            match self.leader() {
                Some((leader, _)) if leader == self.id => {
                    match tokio::time::timeout_at(until, self.propose(command)).await {
                        Err(_) => {
                            return Err(Error::NotLeader(format!(
                                "this server leads but no majority of the control plane acknowledged the write within {WRITE_WAIT:?}; it may still be applied if the majority returns"
                            )));
                        }
                        Ok(Err(Unwritten { error: Error::NotLeader(message), command: Some(unapplied) })) => {
                            last_problem = message;
                            command = unapplied;
                        }
                        Ok(Err(unwritten)) => return Err(unwritten.error),
                        Ok(Ok(outcome)) => return Ok(outcome),
                    }
                }
                Some((leader, url)) => {
                    let remaining = until.saturating_duration_since(tokio::time::Instant::now()).max(Duration::from_millis(100));
                    let (reply, answer) = tokio::sync::oneshot::channel();
                    self.forwards.send((url, command, remaining, reply)).map_err(|_| Error::Raft("the store is shut down".into()))?;
                    let (outcome, back) = answer.await.map_err(|_| Error::Raft("the store is shut down".into()))?;
                    command = back;
                    match outcome {
                        Ok(Ok((response, index))) => {
                            if let Err(error) = self.await_applied(index, READ_WAIT).await {
                                tracing::debug!(%error, "a forwarded write is not applied here yet");
                            }
                            return Ok((response, index));
                        }
                        Ok(Err(WireError::NotLeader(message) | WireError::Busy(message))) => last_problem = format!("member {leader}: {message}"),
                        Ok(Err(WireError::Failed(message))) => return Err(Error::NotLeader(format!("the leader (member {leader}) refused the write: {message}"))),
                        Err(error @ CallError::Unreachable { .. }) => last_problem = format!("the leader (member {leader}) is unreachable: {error}"),
                        Err(error) => {
                            return Err(Error::NotLeader(format!(
                                "forwarding the write to the leader (member {leader}) failed, so its outcome is unknown: {error}"
                            )));
                        }
                    }
                }
                None => {}
            }
            if tokio::time::Instant::now() >= until {
                return Err(Error::NotLeader(format!("no leader accepted the write within {WRITE_WAIT:?} ({last_problem})")));
            }
            // Give an election or a moving leader a moment, or wake as soon as one is known.
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.await_leader(until).await;
        }
    }

    /// Proposes on this server (which must lead) through the group-commit proposer.
    async fn propose(&self, command: Command) -> std::result::Result<Indexed, Unwritten> {
        let (reply, response) = tokio::sync::oneshot::channel();
        let shut_down = || Unwritten { error: Error::Raft("the store is shut down".into()), command: None };
        self.proposals.send((command, reply)).map_err(|_| shut_down())?;
        response.await.map_err(|_| shut_down())?
    }

    /// Serves a write forwarded by a peer: applied only when this server leads.
    pub async fn write_forwarded(&self, command: Command) -> WriteAnswer {
        if self.leader().is_none_or(|(leader, _)| leader != self.id) {
            return Err(WireError::NotLeader(format!("member {} is not the leader", self.id)));
        }
        match tokio::time::timeout(WRITE_WAIT, self.propose(command)).await {
            Err(_) => Err(WireError::Failed(format!("no majority acknowledged the write within {WRITE_WAIT:?}"))),
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(Unwritten { error: Error::NotLeader(message), .. })) => Err(WireError::NotLeader(message)),
            Ok(Err(other)) => Err(WireError::Failed(other.error.to_string())),
        }
    }

    /// Serves a read-index request (a peer's, or this leader's own): the log index a
    /// linearizable read must wait for. Within [`LEASE_READS`] of the last confirmation by a
    /// quorum it is this server's applied index (every write answered so far was applied here
    /// first); otherwise the leader confirms its leadership with a quorum first (read-index).
    ///
    /// Concurrent reads share one check (see [`coalesce`]): a read that finds a check under way
    /// waits for the next, so a quorum is asked once per round trip however many reads wait, and
    /// a leader cut off from its quorum sends one failing round at a time rather than one per
    /// waiting read.
    pub async fn read_index(&self) -> std::result::Result<u64, WireError> {
        let leads = self.raft.metrics().borrow().current_leader == Some(self.id);
        if leads && self.lease_valid() {
            return Ok(self.state.applied_index());
        }
        let store = self.clone();
        let check = coalesce(&self.leadership_checks, || Err(WireError::Failed("the leadership check was dropped".into())), move || {
            let store = store.clone();
            async move { store.confirm_leadership().await }
        });
        // A read that just missed a round waits for the next: bound the whole wait.
        match tokio::time::timeout(READ_WAIT, check).await {
            Ok(answer) => answer,
            Err(_) => Err(WireError::Failed(format!("no majority confirmed this leader within {READ_WAIT:?}"))),
        }
    }

    /// One leadership check: a quorum confirms this leader, whose commit point is the read index.
    async fn confirm_leadership(&self) -> std::result::Result<u64, WireError> {
        let asked = std::time::Instant::now();
        match tokio::time::timeout(READ_WAIT, self.raft.ensure_linearizable()).await {
            Err(_) => Err(WireError::Failed(format!("no majority confirmed this leader within {READ_WAIT:?}"))),
            Ok(Ok(log_id)) => {
                *self.lease_from.lock().unwrap_or_else(|p| p.into_inner()) = Some(asked);
                Ok(log_id.map_or(0, |id| id.index))
            }
            Ok(Err(error)) => Err(WireError::NotLeader(error.to_string())),
        }
    }

    /// Asks the leader for a read index on behalf of every read waiting on this follower: one
    /// request in flight at a time, answering all the reads that arrived before it was sent
    /// (a read index fetched after a read began is valid for it), as etcd batches its
    /// linearizable reads.
    async fn coalesced_read_index(&self, leader: u64, url: String) -> ReadIndexAnswer {
        let store = self.clone();
        let dropped = || Err(CallError::Failed { url: format!("member {leader}"), detail: "the read-index request was dropped".into() });
        coalesce(&self.read_indexes, dropped, move || {
            let store = store.clone();
            // The leader may have changed since the first read asked; ask the current one.
            let target = store.leader().filter(|(id, _)| *id != store.id).map_or_else(|| url.clone(), |(_, url)| url);
            async move { store.transport.call::<_, std::result::Result<u64, WireError>>(&target, paths::READ_INDEX, &(), READ_WAIT).await }
        })
        .await
    }

    fn lease_valid(&self) -> bool {
        self.lease_from.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|from| from.elapsed() < LEASE_READS)
    }

    /// Adds a member: as a learner first, blocking until it has caught up with the log, then as
    /// a voter. Forwarded to the leader from other members.
    pub async fn add_member(&self, member: MemberRequest) -> std::result::Result<(), WireError> {
        match self.leader() {
            Some((leader, _)) if leader == self.id => {
                let node = BasicNode { addr: member.addr.clone() };
                self.raft.add_learner(member.id, node, true).await.map_err(membership_error)?;
                let voters = std::collections::BTreeSet::from([member.id]);
                self.raft.change_membership(ChangeMembers::AddVoterIds(voters), false).await.map_err(membership_error)?;
                tracing::info!(id = member.id, addr = %member.addr, "added a control-plane member");
                Ok(())
            }
            Some((_, url)) => self
                .transport
                .call::<_, std::result::Result<(), WireError>>(&url, paths::MEMBERS, &member, Duration::from_secs(300))
                .await
                .map_err(|e| WireError::Failed(e.to_string()))?,
            None => Err(WireError::NotLeader("no leader is known; try again when the group has elected one".into())),
        }
    }

    /// Removes a member (voter or learner) from the group. Forwarded to the leader from other
    /// members. The removed server stops receiving the log; its writes then fail with 503.
    pub async fn remove_member(&self, id: u64) -> std::result::Result<(), WireError> {
        match self.leader() {
            Some((leader, _)) if leader == self.id => {
                let metrics = self.raft.metrics().borrow().clone();
                let membership = metrics.membership_config.membership();
                let ids = std::collections::BTreeSet::from([id]);
                let change = if membership.voter_ids().any(|voter| voter == id) {
                    ChangeMembers::RemoveVoters(ids)
                } else if membership.get_node(&id).is_some() {
                    ChangeMembers::RemoveNodes(ids)
                } else {
                    return Err(WireError::Failed(format!("member {id} is not in the group")));
                };
                self.raft.change_membership(change, false).await.map_err(membership_error)?;
                tracing::info!(id, "removed a control-plane member");
                Ok(())
            }
            Some((_, url)) => {
                let path = format!("{}/{id}/remove", paths::MEMBERS);
                self.transport.call::<_, std::result::Result<(), WireError>>(&url, &path, &(), Duration::from_secs(60)).await.map_err(|e| WireError::Failed(e.to_string()))?
            }
            None => Err(WireError::NotLeader("no leader is known; try again when the group has elected one".into())),
        }
    }

    /// This server's view of the group (replication progress only when it leads).
    pub async fn status(&self) -> ClusterStatus {
        let commit_index = self.raft.with_raft_state(|state| state.committed.map(|id| id.index)).await.ok().flatten();
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: std::collections::BTreeSet<u64> = membership.voter_ids().collect();
        let last = metrics.last_log_index;
        let members = membership
            .nodes()
            .map(|(id, node)| {
                let matched_index = match &metrics.replication {
                    Some(replication) => replication.get(id).copied().flatten().map(|log_id| log_id.index),
                    None if *id == metrics.id => metrics.last_log_index,
                    None => None,
                };
                let lag = match (&metrics.replication, matched_index) {
                    (Some(_), Some(matched)) => last.map(|last| last.saturating_sub(matched)),
                    (Some(_), None) if *id == metrics.id => Some(0),
                    _ => None,
                };
                MemberStatus {
                    id: *id,
                    addr: node.addr.clone(),
                    role: if voters.contains(id) { "voter" } else { "learner" }.into(),
                    matched_index: if *id == metrics.id { metrics.last_log_index } else { matched_index },
                    lag: if *id == metrics.id && metrics.replication.is_some() { Some(0) } else { lag },
                }
            })
            .collect();
        ClusterStatus {
            id: metrics.id,
            state: format!("{:?}", metrics.state),
            leader: metrics.current_leader,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index,
            commit_index,
            applied_index: metrics.last_applied.map(|id| id.index),
            snapshot_index: metrics.snapshot.map(|id| id.index),
            millis_since_quorum_ack: metrics.millis_since_quorum_ack,
            members,
            revision: self.state.revision(),
        }
    }

    /// The leader's view of the group when it can be had (it alone knows replication progress),
    /// else this server's own.
    pub async fn cluster_status(&self) -> ClusterStatus {
        if let Some((leader, url)) = self.leader()
            && leader != self.id
            && let Ok(status) = self.transport.call::<_, ClusterStatus>(&url, paths::STATUS, &(), Duration::from_secs(3)).await
        {
            return status;
        }
        self.status().await
    }

    /// Proposes `command` and waits until it is durable in the log and applied. The inner
    /// result is the state machine's verdict. Concurrent writes share log entries (see
    /// [`propose`]). The object is the stored one, shared.
    pub async fn write(&self, command: Command) -> Result<Result<(u64, Arc<Value>), WriteError>> {
        Ok(self.write_stored(command).await?.map(|stored| (stored.revision, stored.object)))
    }

    /// [`Store::write`], with the shared encoding of the write's watch event.
    pub async fn write_stored(&self, command: Command) -> Result<Result<Stored, WriteError>> {
        match self.write_indexed(command).await?.0 {
            CommandResponse::Written { revision, object, encoded } => Ok(Ok(Stored { revision, object, encoded })),
            CommandResponse::Rejected(error) => Ok(Err(error)),
            CommandResponse::Batch(_) | CommandResponse::BlobDone | CommandResponse::None => {
                Err(Error::Raft("a write produced no response".into()))
            }
        }
    }

    /// Replicates one blob chunk (or a chunk deletion) and waits until it is applied.
    pub async fn write_blob(&self, command: Command) -> Result<()> {
        match self.write_indexed(command).await?.0 {
            CommandResponse::BlobDone => Ok(()),
            other => Err(Error::Raft(format!("a blob write produced {other:?}"))),
        }
    }

    /// Chunk `index` of blob `digest` as applied on this server.
    pub fn blob_chunk(&self, digest: &str, index: u32) -> Result<Option<Vec<u8>>> {
        self.state.blob_chunk(digest, index)
    }

    /// Chunk `index` of blob `digest`, from this server or else from a peer. Snapshots carry
    /// objects, not registry chunks, so a server that joined (or caught up through a snapshot)
    /// after the log entries carrying a blob were compacted has the blob's record but not its
    /// chunks; it reads them from a member that has them.
    pub async fn blob_chunk_anywhere(&self, digest: &str, index: u32) -> Result<Option<Vec<u8>>> {
        if let Some(chunk) = self.state.blob_chunk(digest, index)? {
            return Ok(Some(chunk));
        }
        if self.is_alone() {
            return Ok(None);
        }
        let peers: Vec<String> = {
            let metrics = self.raft.metrics().borrow().clone();
            let mut peers: Vec<(bool, String)> = metrics
                .membership_config
                .membership()
                .nodes()
                .filter(|(id, _)| **id != self.id)
                .map(|(id, node)| (Some(*id) != metrics.current_leader, node.addr.clone()))
                .collect();
            // The leader first: it has every chunk not yet compacted away from all.
            peers.sort();
            peers.into_iter().map(|(_, addr)| addr).collect()
        };
        for peer in peers {
            match self.transport.call::<_, Option<String>>(&peer, paths::BLOB_CHUNK, &(digest, index), Duration::from_secs(30)).await {
                Ok(Some(encoded)) => {
                    use base64::Engine;
                    let chunk = base64::engine::general_purpose::STANDARD
                        .decode(encoded)
                        .map_err(|e| Error::Raft(format!("a peer sent chunk {index} of {digest} in bad base64: {e}")))?;
                    return Ok(Some(chunk));
                }
                Ok(None) => {}
                Err(error) => tracing::debug!(%error, "reading a blob chunk from a peer"),
            }
        }
        Ok(None)
    }

    /// Waits until this server's state reflects every write committed before the call, so the
    /// reads that follow are linearizable (Raft read-index: the leader confirms its leadership
    /// with a quorum and names its commit point; a follower asks the leader for it and waits
    /// until it has applied that far). Free on a single-server group.
    pub async fn read_barrier(&self) -> Result<()> {
        if self.is_alone() {
            return Ok(());
        }
        let until = tokio::time::Instant::now() + READ_WAIT;
        loop {
            let problem = match self.leader() {
                Some((leader, _)) if leader == self.id => match self.read_index().await {
                    Ok(_) => return Ok(()),
                    Err(WireError::NotLeader(message) | WireError::Busy(message) | WireError::Failed(message)) => {
                        format!("this server leads but no majority confirmed it: {message}")
                    }
                },
                Some((leader, url)) => {
                    match self.coalesced_read_index(leader, url).await {
                        Ok(Ok(index)) => return self.await_applied(index, until.saturating_duration_since(tokio::time::Instant::now())).await,
                        Ok(Err(WireError::Failed(message))) => return Err(Error::NotLeader(format!("the leader (member {leader}) refused a read index: {message}"))),
                        Ok(Err(WireError::NotLeader(message) | WireError::Busy(message))) => format!("member {leader}: {message}"),
                        Err(error) => format!("member {leader}: {error}"),
                    }
                }
                None => "no leader is known".into(),
            };
            if tokio::time::Instant::now() >= until {
                return Err(Error::NotLeader(format!(
                    "this server could not confirm the group's current state with a majority of the control plane within {READ_WAIT:?} ({problem})"
                )));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.await_leader(until).await;
        }
    }

    pub fn get(&self, key: &ObjectKey) -> Result<Option<Value>> {
        self.state.get(key)
    }

    /// The stored object itself, shared rather than copied (for readers that only look).
    pub fn get_shared(&self, key: &ObjectKey) -> Result<Option<std::sync::Arc<Value>>> {
        self.state.get_shared(key)
    }

    /// Every `resource` object (in `namespace` if given), in key order, shared rather than
    /// copied (for readers that only look, such as RBAC's checks).
    pub fn list_shared(&self, resource: &str, namespace: Option<&str>) -> Vec<std::sync::Arc<Value>> {
        self.state.list_shared(&ObjectKey::prefix(resource, namespace))
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

fn membership_error(error: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>) -> WireError {
    match error {
        openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ForwardToLeader(forward)) => {
            WireError::NotLeader(format!("leader is {:?}", forward.leader_id))
        }
        openraft::error::RaftError::APIError(openraft::error::ClientWriteError::ChangeMembershipError(
            openraft::error::ChangeMembershipError::InProgress(progress),
        )) => WireError::Busy(progress.to_string()),
        other => WireError::Failed(other.to_string()),
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

/// Group commit above Raft. One Raft write per client write would cost each its own entry,
/// AppendEntries and apply. Instead at most [`PROPOSALS_IN_FLIGHT`] Raft write is in flight;
/// every write that arrives meanwhile waits here, and the next log entry carries all of them as
/// one [`Command::Batch`].
async fn propose(raft: Raft, mut queue: tokio::sync::mpsc::UnboundedReceiver<Proposal>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(PROPOSALS_IN_FLIGHT));
    while let Some((permit, mut batch)) = next_batch(&mut queue, &slots, MAX_BATCH).await {
        let raft = raft.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if batch.len() == 1 {
                let (command, reply) = batch.pop().expect("one proposal");
                let logged = LoggedCommand::from(command);
                let outcome = raft.client_write(logged.clone()).await.map(|r| (r.data, r.log_id.index)).map_err(|error| unwritten(error, &logged));
                let _ = reply.send(outcome);
                return;
            }
            let (commands, replies): (Vec<Command>, Vec<_>) = batch.into_iter().unzip();
            let logged = LoggedCommand::from(Command::Batch(commands));
            match raft.client_write(logged.clone()).await {
                Ok(response) => match response.data {
                    CommandResponse::Batch(responses) => {
                        let index = response.log_id.index;
                        for (reply, response) in replies.into_iter().zip(responses) {
                            let _ = reply.send(Ok((response, index)));
                        }
                    }
                    other => {
                        for reply in replies {
                            let _ = reply.send(Err(Unwritten { error: Error::Raft(format!("a batch produced {other:?}")), command: None }));
                        }
                    }
                },
                Err(error) => {
                    let Unwritten { error, command: batch } = unwritten(error, &logged);
                    let mut commands = match batch {
                        Some(Command::Batch(commands)) => commands.into_iter().map(Some).collect(),
                        _ => Vec::new(),
                    };
                    commands.resize_with(replies.len(), || None);
                    for (reply, command) in replies.into_iter().zip(commands) {
                        let error = match &error {
                            Error::NotLeader(message) => Error::NotLeader(message.clone()),
                            other => Error::Raft(other.to_string()),
                        };
                        let _ = reply.send(Err(Unwritten { error, command }));
                    }
                }
            }
        });
    }
}

/// The most writes one forwarded call carries. An object is at most 3 MiB (the API's body limit)
/// and a blob chunk 1 MiB before base64, so 64 stay well inside a peer's 512 MiB limit on an
/// internal request body.
const MAX_FORWARD_BATCH: usize = 64;
/// Forwarded calls in flight at once; writes arriving meanwhile wait and go together.
const FORWARDS_IN_FLIGHT: usize = 2;

/// Forwards writes to the leader, those that arrive together in one call
/// ([`paths::WRITE_BATCH`]), as the proposer folds them into one log entry there: each forwarded
/// write cost a follower an HTTP/2 request of its own, a third of its CPU at 64 clients. A lone
/// write goes as before ([`paths::WRITE`]), and so does each write of a batch that a leader of an
/// older version does not serve.
async fn forward_writes(transport: Transport, mut queue: tokio::sync::mpsc::UnboundedReceiver<Forward>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(FORWARDS_IN_FLIGHT));
    while let Some((permit, batch)) = next_batch(&mut queue, &slots, MAX_FORWARD_BATCH).await {
        // One call per leader (a batch may straddle a change of leader).
        let mut by_leader: BTreeMap<String, Vec<Forward>> = BTreeMap::new();
        for forward in batch {
            by_leader.entry(forward.0.clone()).or_default().push(forward);
        }
        let transport = transport.clone();
        tokio::spawn(async move {
            let _permit = permit;
            futures::future::join_all(by_leader.into_iter().map(|(url, forwards)| forward_batch(&transport, url, forwards))).await;
        });
    }
}

async fn forward_batch(transport: &Transport, url: String, forwards: Vec<Forward>) {
    let timeout = forwards.iter().map(|forward| forward.2).max().unwrap_or(WRITE_WAIT);
    let (commands, replies): (Vec<Command>, Vec<_>) = forwards.into_iter().map(|(_, command, _, reply)| (command, reply)).unzip();
    if commands.len() > 1 {
        match transport.call::<_, Vec<WriteAnswer>>(&url, paths::WRITE_BATCH, &commands, timeout).await {
            Err(CallError::NotServed { .. }) => {}
            outcome => {
                let answers = match outcome {
                    Ok(answers) if answers.len() == commands.len() => answers.into_iter().map(Ok).collect(),
                    Ok(answers) => {
                        let detail = format!("the leader answered {} of {} forwarded writes", answers.len(), commands.len());
                        vec![Err(CallError::Failed { url: url.clone(), detail }); commands.len()]
                    }
                    Err(error) => vec![Err(error); commands.len()],
                };
                for ((command, reply), answer) in commands.into_iter().zip(replies).zip(answers) {
                    let _ = reply.send((answer, command));
                }
                return;
            }
        }
    }
    // One write, or a leader without the batch path: one call each, together.
    let singles = commands.into_iter().zip(replies).map(|(command, reply)| {
        let url = url.clone();
        async move {
            let answer = transport.call::<_, WriteAnswer>(&url, paths::WRITE, &command, timeout).await;
            let _ = reply.send((answer, command));
        }
    });
    futures::future::join_all(singles).await;
}

/// The next batch of a queue with at most `slots` batches in flight: waits for one item and a
/// slot, then takes up to `max` items that are already there. `None` once the queue is closed.
async fn next_batch<T>(queue: &mut tokio::sync::mpsc::UnboundedReceiver<T>, slots: &Arc<tokio::sync::Semaphore>, max: usize) -> Option<(tokio::sync::OwnedSemaphorePermit, Vec<T>)> {
    let first = queue.recv().await?;
    let permit = Arc::clone(slots).acquire_owned().await.ok()?;
    let mut batch = vec![first];
    while batch.len() < max {
        match queue.try_recv() {
            Ok(item) => batch.push(item),
            Err(_) => break,
        }
    }
    Some((permit, batch))
}

/// A failed proposal: its error, and its command back when it was provably not applied (the
/// `ForwardToLeader` case, see [`Unwritten`]).
fn unwritten(error: openraft::error::RaftError<u64, openraft::error::ClientWriteError<u64, BasicNode>>, logged: &LoggedCommand) -> Unwritten {
    let error = raft_error(error);
    let command = match error {
        Error::NotLeader(_) => logged.take().ok(),
        _ => None,
    };
    Unwritten { error, command }
}

/// Watches this server's place in the group.
///
/// Every 250 ms it checks that it reaches a majority of the voters (`GET /healthz`); while it
/// does not, it stands for no election (openraft's runtime `elect(false)`). A server cut off from
/// the others would otherwise raise its term election after election, and on rejoining force the
/// majority's leader to step down, possibly again and again: this is what Raft's pre-vote
/// prevents, which openraft 0.9 lacks.
///
/// Every second it checks that it is in step with the group: the leader confirms its leadership
/// with a quorum, a follower gets a read index from the leader. Two failures in a row mark it out
/// of step (see [`Store::in_step`]); one success marks it in step again.
async fn monitor_group(raft: Raft, transport: Transport, id: u64, in_step: tokio::sync::watch::Sender<bool>) {
    const PROBE_WAIT: Duration = Duration::from_secs(2);
    const REACH_WAIT: Duration = Duration::from_millis(300);
    let mut failures = 0u32;
    let mut elections = true;
    let mut ticker = tokio::time::interval(Duration::from_millis(250));
    let mut tick = 0u64;
    loop {
        ticker.tick().await;
        tick += 1;
        let metrics = raft.metrics().borrow().clone();
        if metrics.running_state.is_err() || in_step.is_closed() {
            return;
        }
        let membership = metrics.membership_config.membership();
        let voter_ids: Vec<u64> = membership.voter_ids().collect();
        let alone = voter_ids == [id];
        if !alone {
            let peers: Vec<String> = voter_ids.iter().filter(|v| **v != id).filter_map(|v| membership.get_node(v)).map(|n| n.addr.clone()).collect();
            let reached = futures::future::join_all(peers.iter().map(|peer| transport.reachable(peer, REACH_WAIT))).await.into_iter().filter(|ok| *ok).count();
            let majority = voter_ids.len() / 2 + 1;
            let electable = !voter_ids.contains(&id) || reached + 1 >= majority;
            if electable != elections {
                elections = electable;
                raft.runtime_config().elect(electable);
                if electable {
                    tracing::info!("a majority of the control plane is reachable again: standing for elections");
                } else {
                    tracing::warn!(reached, voters = voter_ids.len(), "cannot reach a majority of the control plane: standing for no election until it can");
                }
            }
        } else if !elections {
            elections = true;
            raft.runtime_config().elect(true);
        }
        if !tick.is_multiple_of(4) {
            continue;
        }
        let healthy = if alone {
            true
        } else {
            match metrics.current_leader {
                Some(leader) if leader == id => matches!(tokio::time::timeout(PROBE_WAIT, raft.ensure_linearizable()).await, Ok(Ok(_))),
                Some(leader) => match membership.get_node(&leader) {
                    Some(node) => matches!(transport.call::<_, std::result::Result<u64, WireError>>(&node.addr, paths::READ_INDEX, &(), PROBE_WAIT).await, Ok(Ok(_))),
                    None => false,
                },
                None => false,
            }
        };
        failures = if healthy { 0 } else { failures + 1 };
        let now = failures < 2;
        if *in_step.borrow() != now {
            if now {
                tracing::info!("in step with the control-plane group again");
            } else {
                tracing::warn!("out of step with the control-plane group (no leader in contact with a majority): refusing reads and writes, ending watches");
            }
            in_step.send_replace(now);
        }
    }
}

/// Triggers a snapshot (and with it log compaction) whenever the log outgrows `limit` bytes, so
/// that large batch entries cannot grow memory without bound between entry-count snapshots.
/// Sends a heartbeat whenever the network asks, to tell followers a committed index it held
/// back until this server's log reached the disk (`network::capped_commit`). Ends when the
/// Raft member (which owns the asking side) stops.
async fn send_heartbeats(raft: Raft, mut requests: tokio::sync::mpsc::UnboundedReceiver<()>) {
    while requests.recv().await.is_some() {
        while requests.try_recv().is_ok() {}
        if raft.trigger().heartbeat().await.is_err() {
            return;
        }
    }
}

/// Keeps the log's hand-over point (see `log_store`) at what no other member can still need
/// from this server's memory: everything on a follower or a lone leader, and the lowest index
/// every other member has matched on a leader of several.
async fn follow_replication(raft: Raft, id: u64, through: Arc<std::sync::atomic::AtomicU64>) {
    let mut metrics = raft.metrics();
    loop {
        let value = {
            let metrics = metrics.borrow_and_update();
            match (&metrics.state, &metrics.replication) {
                (ServerState::Leader, Some(progress)) => {
                    progress.iter().filter(|(member, _)| **member != id).map(|(_, matched)| matched.map_or(0, |log_id| log_id.index)).min().unwrap_or(u64::MAX)
                }
                // A leader whose progress is not reported yet.
                (ServerState::Leader, None) => 0,
                _ => u64::MAX,
            }
        };
        through.store(value, std::sync::atomic::Ordering::Release);
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Waits until `rounds` rounds have begun.
    async fn until_begun(begun: &AtomicUsize, rounds: usize) {
        while begun.load(Ordering::SeqCst) < rounds {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_round_answers_the_callers_waiting_when_it_began_and_later_ones_share_the_next() {
        let queue: Queue<usize> = Arc::default();
        let begun = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let round = {
            let (begun, gate) = (Arc::clone(&begun), Arc::clone(&gate));
            move || {
                let (begun, gate) = (Arc::clone(&begun), Arc::clone(&gate));
                async move {
                    let number = begun.fetch_add(1, Ordering::SeqCst) + 1;
                    gate.acquire().await.expect("gate").forget();
                    number
                }
            }
        };
        let first = tokio::spawn({
            let (queue, round) = (Arc::clone(&queue), round.clone());
            async move { coalesce(&queue, || 0, round).await }
        });
        until_begun(&begun, 1).await;
        // Two reads arrive while round 1 is under way: it may have confirmed leadership before
        // they began, so they must wait for round 2, together.
        let later: Vec<_> = (0..2)
            .map(|_| {
                let (queue, round) = (Arc::clone(&queue), round.clone());
                tokio::spawn(async move { coalesce(&queue, || 0, round).await })
            })
            .collect();
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert_eq!(begun.load(Ordering::SeqCst), 1, "no second round while the first is under way");
        gate.add_permits(1);
        assert_eq!(first.await.expect("first"), 1);
        until_begun(&begun, 2).await;
        gate.add_permits(1);
        for read in later {
            assert_eq!(read.await.expect("later"), 2);
        }
        assert_eq!(begun.load(Ordering::SeqCst), 2, "one round for both later reads");
        // With nobody waiting the driver stops; the next read starts a round of its own.
        gate.add_permits(1);
        assert_eq!(coalesce(&queue, || 0, round).await, 3);
    }
}

//! The Raft log and vote, persisted in their own redb file by one writer thread.
//!
//! openraft hands `append` a callback to call once the entries are on disk. Appends go to a
//! channel; the writer thread takes everything queued, writes it in one transaction, commits
//! with one fsync, and then calls every callback: under concurrent load many client writes share
//! one fsync (group commit). Entries are also kept in memory (the log is compacted after each
//! snapshot, so this is bounded) so that readers see them as soon as `append` returns, as
//! openraft requires. Entries found on disk when the log is opened are not: only their ids are
//! decoded, and they are read back from disk when needed, like handed-over entries below.
//!
//! Applying hands an entry over instead of copying it. openraft 0.9 reads the entries it applies
//! through the store it was given, and the entries it replicates through the readers
//! `get_log_reader` makes. So a read through the store itself moves each entry out of memory to
//! the state machine, keeping only its id, once no other member may need it from this server's
//! memory (`hand_over_through`: every member when this server is alone or a follower, the
//! members' matched index when it leads others). A later read of a handed-over entry (a member
//! that fell behind, a new leader's replication) gets it from disk. Copying each applied
//! command's objects was a tenth of a busy server's time, and the copies kept every write twice
//! in memory until the next purge.
//!
//! ## Acknowledged before the fsync, applied after it
//!
//! openraft 0.9 waits for `append`'s callback before it does anything else: on a leader, before
//! it sends the entries to the followers. Waiting there put the leader's fsync and a follower's
//! in series on every write (about 350 µs of a 1.6 ms single-client write on the VMs measured;
//! `benches/RESULTS.md`). So an `append` of ordinary entries calls back at once, once the entries
//! are in memory and queued for the writer, and the leader replicates them while its own fsync
//! runs: the parallel write of the Raft thesis (§10.2.1), which etcd also does. What must not
//! happen is acting on an entry before a majority of the group has it on disk, so that is
//! enforced where it would be acted on, against [`Durability`] (how far this server's log is
//! on disk):
//! - **applying**: the state machine applies an entry only once it is on this server's disk
//!   (`StateMachine::apply` waits), so nothing is answered, watched or read before that;
//! - **a follower's answer**: an AppendEntries is answered (`network::serve`) only once every
//!   entry it vouches for is on the follower's disk, so a follower's acknowledgement means what
//!   Raft says it means;
//! - **the committed index a leader sends**: capped at what is on the leader's disk
//!   (`network::capped_commit`), so no follower applies an entry that the leader counted
//!   itself for but could still lose in a crash.
//!
//! An entry acted on is therefore on the leader's disk and on the disks of enough followers to
//! make a majority with it. A leader that crashes before its fsync loses only entries nobody
//! acted on; if a majority of followers has them, the next leader commits them, as Raft
//! allows for any write whose answer was lost.
//!
//! Membership entries still call back only after their fsync: openraft acts on their commit
//! itself (the next step of a joint change), which the checks above do not cover.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, RwLock};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, StorageError, StorageIOError, Vote};
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tokio::sync::oneshot;

use crate::TypeConfig;
use crate::error::{Error, Result, db};

const LOGS: TableDefinition<u64, &[u8]> = TableDefinition::new("raft_logs");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("raft_meta");
const VOTE_KEY: &str = "vote";
const COMMITTED_KEY: &str = "committed";
const LAST_PURGED_KEY: &str = "last_purged";
/// The most operations the writer folds into one transaction.
const MAX_BATCH: usize = 4096;
/// The most purged entries deleted from disk per transaction: purging is spread over many
/// small deletions so that compaction never stalls appends.
const PURGE_STEP: u64 = 256;

type NodeId = u64;

/// A log entry as stored: its index and its JSON.
type Encoded = (u64, Vec<u8>);

enum WriteOp {
    /// Entries to write, the id of the last, and the callback if it waits for the fsync (see
    /// the module documentation; `None` when it was called at once).
    Append { entries: Vec<Encoded>, last: Option<LogId<NodeId>>, callback: Option<LogFlushed<TypeConfig>> },
    SaveMeta { key: &'static str, value: Vec<u8>, reply: Option<oneshot::Sender<Result<(), String>>> },
    /// Deletes the entries from `from_index` on; `keeps` is the last entry left.
    Truncate { from_index: u64, keeps: Option<LogId<NodeId>>, reply: oneshot::Sender<Result<(), String>> },
    Purge { up_to: LogId<NodeId>, last_purged: Vec<u8>, reply: oneshot::Sender<Result<(), String>> },
    /// Reads entries back (those handed over to the state machine), after every operation
    /// queued before it is on disk.
    Read { indexes: Vec<u64>, reply: oneshot::Sender<Result<Vec<Encoded>, String>> },
    /// Holds the writer until the sender is dropped or sends (tests only).
    #[cfg(test)]
    Pause(mpsc::Receiver<()>),
}

impl WriteOp {
    /// Whether the batch holding this operation must be on disk before anyone is answered.
    /// Appends, truncations, purge points and the vote must. The committed index does not (it
    /// is a hint that openraft re-derives after a crash), nor does a read, nor the deletion of
    /// entries below a recorded purge point (they are ignored on load). Committing those without
    /// an fsync keeps them from costing the next append a second fsync in series. (The writer
    /// takes the committed index out of its batches and writes it now and then: see
    /// [`CommittedHint`].)
    fn needs_durability(&self) -> bool {
        match self {
            WriteOp::Append { .. } | WriteOp::Truncate { .. } | WriteOp::Purge { .. } => true,
            WriteOp::SaveMeta { reply, .. } => reply.is_some(),
            WriteOp::Read { .. } => false,
            #[cfg(test)]
            WriteOp::Pause(_) => false,
        }
    }
}

#[derive(Default)]
struct LogMeta {
    vote: Option<Vote<NodeId>>,
    committed: Option<LogId<NodeId>>,
    last_purged: Option<LogId<NodeId>>,
}

/// A stored entry's id, decoded without its payload.
#[derive(serde::Deserialize)]
struct IdOnly {
    log_id: LogId<NodeId>,
}

/// One entry of the log since the last purge: the entry itself, or only its id once it was
/// handed over to the state machine (it is still on disk).
struct Held {
    log_id: LogId<NodeId>,
    /// Its encoded size, counted in `bytes_held`.
    size: u64,
    entry: Option<Entry<TypeConfig>>,
}

/// How far this server's log is on disk: the last entry written with an fsync, or the error
/// that stopped the writer. Appends are acknowledged to openraft before their fsync (see the
/// module documentation); whatever acts on an entry waits here first. Cloning shares it.
#[derive(Clone)]
pub struct Durability(Arc<tokio::sync::watch::Sender<OnDisk>>);

#[derive(Clone, Debug, Default, PartialEq)]
struct OnDisk {
    last: Option<LogId<NodeId>>,
    failed: Option<Arc<str>>,
}

impl OnDisk {
    fn reaches(&self, index: u64) -> bool {
        self.failed.is_some() || self.last.is_some_and(|last| last.index >= index)
    }
}

impl Durability {
    fn new(last: Option<LogId<NodeId>>) -> Self {
        Self(Arc::new(tokio::sync::watch::channel(OnDisk { last, failed: None }).0))
    }

    /// A log that has everything on disk, for state machines tested without one.
    #[cfg(test)]
    pub(crate) fn settled() -> Self {
        Self::new(Some(LogId::new(openraft::CommittedLeaderId::new(u64::MAX, u64::MAX), u64::MAX)))
    }

    /// The last entry on disk.
    pub fn last_on_disk(&self) -> Option<LogId<NodeId>> {
        self.0.borrow().last
    }

    /// Why the log can no longer be written, if it cannot.
    pub fn failed(&self) -> Option<Arc<str>> {
        self.0.borrow().failed.clone()
    }

    /// Waits until every entry up to `index` is on disk. Fails if the writer failed or stopped.
    pub async fn wait_for(&self, index: u64) -> Result<(), String> {
        let outcome = |on_disk: &OnDisk| match &on_disk.failed {
            Some(failed) => Err(format!("the raft log could not be written: {failed}")),
            None => Ok(()),
        };
        {
            let on_disk = self.0.borrow();
            if on_disk.reaches(index) {
                return outcome(&on_disk);
            }
        }
        let mut receiver = self.0.subscribe();
        let on_disk = receiver.wait_for(|on_disk| on_disk.reaches(index)).await.map_err(|_| closed().to_string())?;
        outcome(&on_disk)
    }

    fn advance(&self, last: Option<LogId<NodeId>>) {
        self.0.send_if_modified(|on_disk| {
            let changed = on_disk.last != last;
            on_disk.last = last;
            changed
        });
    }

    fn fail(&self, error: &str) {
        self.0.send_modify(|on_disk| {
            on_disk.failed.get_or_insert_with(|| Arc::from(error));
        });
    }
}

struct Shared {
    entries: RwLock<BTreeMap<u64, Held>>,
    /// Encoded bytes of the log since the last purge.
    bytes_held: Arc<AtomicU64>,
    /// Entries up to this index may be handed over when read for applying (see the module
    /// documentation). Zero, so nothing is handed over, until [`LogStore::hand_over_through`]'s
    /// owner sets it.
    hand_over_through: Arc<AtomicU64>,
    meta: Mutex<LogMeta>,
    durability: Durability,
}

/// The log store handed to openraft. Cloning shares the same log.
#[derive(Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
    writer: mpsc::Sender<WriteOp>,
    /// Whether this handle is the one openraft applies through (the store itself, not a reader).
    applies: bool,
}

impl LogStore {
    /// Opens (or creates) the log database and starts its writer thread. The thread ends, and
    /// closes the database, once every clone of the store is dropped; join the returned handle
    /// to know the file is free again.
    pub fn open(path: &Path) -> Result<(Self, std::thread::JoinHandle<()>)> {
        let database = Database::builder()
            .set_cache_size(crate::REDB_CACHE_BYTES)
            .create(path)
            .map_err(|source| Error::Open { path: path.to_owned(), source })?;
        let mut entries = BTreeMap::new();
        let mut meta = LogMeta::default();
        {
            let write = database.begin_write().map_err(db)?;
            write.open_table(LOGS).map_err(db)?;
            write.open_table(META).map_err(db)?;
            write.commit().map_err(db)?;
            let read = database.begin_read().map_err(db)?;
            let logs = read.open_table(LOGS).map_err(db)?;
            let table = read.open_table(META).map_err(db)?;
            if let Some(bytes) = table.get(LAST_PURGED_KEY).map_err(db)? {
                meta.last_purged = serde_json::from_slice(bytes.value())?;
            }
            // Entries up to the purge point may still be on disk (purging is incremental).
            let first_kept = meta.last_purged.map_or(0, |id: LogId<NodeId>| id.index + 1);
            // Loaded entries stay on disk, as if handed over: only their ids are decoded. Those up
            // to the state machine's last applied entry are never read again, yet decoded they
            // took several times their encoded size until the next purge (a restart with 64 MiB
            // of log held about 360 MB more than the server before it); the rest are read back
            // once to be applied or replicated.
            for row in logs.range::<u64>(first_kept..).map_err(db)? {
                let (index, bytes) = row.map_err(db)?;
                let IdOnly { log_id } = serde_json::from_slice(bytes.value())?;
                entries.insert(index.value(), Held { log_id, size: bytes.value().len() as u64, entry: None });
            }
            if let Some(bytes) = table.get(VOTE_KEY).map_err(db)? {
                meta.vote = Some(serde_json::from_slice(bytes.value())?);
            }
            if let Some(bytes) = table.get(COMMITTED_KEY).map_err(db)? {
                meta.committed = serde_json::from_slice(bytes.value())?;
            }
        }
        let purge_up_to = meta.last_purged.map(|id| id.index);
        let last_on_disk = entries.values().next_back().map(|held: &Held| held.log_id).or(meta.last_purged);
        let durability = Durability::new(last_on_disk);
        let (writer, receiver) = mpsc::channel();
        let thread = std::thread::Builder::new().name("raft-log-writer".into()).spawn({
            let durability = durability.clone();
            move || writer_loop(database, receiver, purge_up_to, durability)
        })?;
        let bytes_held = entries.values().map(|held| held.size).sum();
        let shared = Shared {
            entries: RwLock::new(entries),
            bytes_held: Arc::new(AtomicU64::new(bytes_held)),
            hand_over_through: Arc::new(AtomicU64::new(0)),
            meta: Mutex::new(meta),
            durability,
        };
        let store = Self { shared: Arc::new(shared), writer, applies: true };
        Ok((store, thread))
    }

    /// A live count of the bytes of log the store holds since the last purge. Holding it does not
    /// keep the store open.
    pub fn bytes_held(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shared.bytes_held)
    }

    /// The index up to which entries read for applying are handed over instead of copied, to be
    /// kept at what no other member can still need from this server's memory. Holding it does
    /// not keep the store open.
    pub fn hand_over_through(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shared.hand_over_through)
    }

    /// How far the log is on disk. Holding it does not keep the store open.
    pub fn durability(&self) -> Durability {
        self.shared.durability.clone()
    }

    /// A view of what the log holds in memory. Holding it does not keep the store open.
    pub fn memory(&self) -> LogMemory {
        LogMemory(Arc::clone(&self.shared))
    }

    fn send(&self, op: WriteOp) -> Result<(), StorageError<NodeId>> {
        self.writer.send(op).map_err(|_| StorageIOError::write_logs(&closed()).into())
    }

    fn meta(&self) -> std::sync::MutexGuard<'_, LogMeta> {
        // Poisoning would need a panic while the small critical sections below hold the lock.
        self.shared.meta.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn entries_read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<u64, Held>> {
        self.shared.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn entries_write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<u64, Held>> {
        self.shared.entries.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// What a log holds in memory (see [`LogStore::memory`]).
#[derive(Clone)]
pub struct LogMemory(Arc<Shared>);

impl LogMemory {
    /// How many entries since the last purge are held in memory, and how many were handed over
    /// to the state machine (and are only on disk).
    pub fn entries(&self) -> (usize, usize) {
        let entries = self.0.entries.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let handed_over = entries.values().filter(|held| held.entry.is_none()).count();
        (entries.len() - handed_over, handed_over)
    }
}

fn closed() -> std::io::Error {
    std::io::Error::other("the raft log writer has stopped")
}

fn writer_loop(database: Database, receiver: mpsc::Receiver<WriteOp>, mut purge_up_to: Option<u64>, durability: Durability) {
    // Entries at or below `purge_up_to` are deleted from disk a step at a time.
    let mut purge_pending = purge_up_to.is_some();
    let mut committed = CommittedHint::default();
    loop {
        let first = if purge_pending {
            match receiver.recv_timeout(std::time::Duration::from_millis(1)) {
                Ok(op) => Some(op),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => return committed.write_on_close(&database),
            }
        } else {
            match receiver.recv() {
                Ok(op) => Some(op),
                Err(_) => return committed.write_on_close(&database),
            }
        };
        let mut batch: Vec<WriteOp> = first.into_iter().collect();
        while batch.len() < MAX_BATCH {
            match receiver.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        batch.retain_mut(|op| !committed.take(op));
        #[cfg(test)]
        batch.retain_mut(|op| match op {
            WriteOp::Pause(until) => {
                let _ = until.recv();
                false
            }
            _ => true,
        });
        for op in &batch {
            if let WriteOp::Purge { up_to, .. } = op {
                purge_up_to = Some(purge_up_to.map_or(up_to.index, |current| current.max(up_to.index)));
                purge_pending = true;
            }
        }
        // Appends carry the hint only when it is due; a vote, truncation or purge always does.
        let carries_hint =
            batch.iter().any(|op| matches!(op, WriteOp::SaveMeta { .. } | WriteOp::Truncate { .. } | WriteOp::Purge { .. }));
        let hint = committed.due(carries_hint);
        if batch.is_empty() && hint.is_none() && !purge_pending {
            continue;
        }
        let durable = batch.iter().any(WriteOp::needs_durability);
        let started = std::time::Instant::now();
        let outcome = write_batch(&database, &batch, hint.as_deref(), if purge_pending { purge_up_to } else { None }, durable)
            .map_err(|error| error.to_string());
        if outcome.is_ok() {
            committed.written();
        } else if let Some(hint) = hint {
            committed.keep(hint);
        }
        let elapsed = started.elapsed();
        if elapsed > std::time::Duration::from_millis(50) {
            tracing::warn!(operations = batch.len(), elapsed_ms = elapsed.as_millis() as u64, "slow raft log write");
        }
        tracing::trace!(operations = batch.len(), durable, micros = elapsed.as_micros() as u64, "log batch committed");
        match &outcome {
            Ok(more) => {
                purge_pending = *more;
                durability.advance(on_disk_after(durability.last_on_disk(), &batch));
            }
            // Entries acknowledged before this fsync can never be written now: everything that
            // waits for them fails instead (openraft stops on the state machine's error).
            Err(error) if batch.iter().any(|op| matches!(op, WriteOp::Append { .. })) => durability.fail(error),
            Err(_) => {}
        }
        let outcome = outcome.map(|_| ());
        for op in batch {
            let result = outcome.clone();
            match op {
                WriteOp::Append { callback, .. } => {
                    if let Some(callback) = callback {
                        callback.log_io_completed(result.map_err(std::io::Error::other));
                    }
                }
                WriteOp::SaveMeta { reply, .. } => {
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
                WriteOp::Truncate { reply, .. } | WriteOp::Purge { reply, .. } => {
                    let _ = reply.send(result);
                }
                WriteOp::Read { indexes, reply } => {
                    let _ = reply.send(result.and_then(|()| read_entries(&database, &indexes).map_err(|error| error.to_string())));
                }
                #[cfg(test)]
                WriteOp::Pause(_) => {}
            }
        }
    }
}

/// The last entry on disk once `batch` is: the last appended, the one a truncation keeps, or a
/// purge point past the end (a follower that installed a snapshot).
fn on_disk_after(mut last: Option<LogId<NodeId>>, batch: &[WriteOp]) -> Option<LogId<NodeId>> {
    for op in batch {
        match op {
            WriteOp::Append { last: Some(appended), .. } => last = Some(*appended),
            WriteOp::Truncate { keeps, .. } => last = *keeps,
            WriteOp::Purge { up_to, .. } if last.is_none_or(|last| last.index < up_to.index) => last = Some(*up_to),
            _ => {}
        }
    }
    last
}

/// The encoded entries at `indexes`, read from disk.
fn read_entries(database: &Database, indexes: &[u64]) -> Result<Vec<Encoded>> {
    let read = database.begin_read().map_err(db)?;
    let logs = read.open_table(LOGS).map_err(db)?;
    let mut found = Vec::with_capacity(indexes.len());
    for index in indexes {
        if let Some(bytes) = logs.get(index).map_err(db)? {
            found.push((*index, bytes.value().to_vec()));
        }
    }
    Ok(found)
}

/// The committed index openraft reports after every commit, written to disk only now and then.
///
/// It is a hint: openraft re-derives the committed index from the leader after a restart, and
/// a stale one only means applying fewer entries before that. Writing it with every commit cost
/// each single-client write a second redb transaction on every member and put an extra page of
/// the META table into every durable commit after it (a durable redb commit writes about eight
/// scattered pages; each one more costs about 30 µs of fsync on the VMs measured). So it is
/// written when a second has passed since it last was, with any batch other than plain appends
/// (votes, truncations, purges, which are rare), and when the store closes.
#[derive(Default)]
struct CommittedHint {
    /// The newest value not yet on disk.
    pending: Option<Vec<u8>>,
    last_written: Option<std::time::Instant>,
}

impl CommittedHint {
    const INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

    /// Takes the value out of `op` if `op` is the committed hint (nobody waits for it), and
    /// says whether it was.
    fn take(&mut self, op: &mut WriteOp) -> bool {
        match op {
            WriteOp::SaveMeta { key: COMMITTED_KEY, value, reply: None } => {
                self.pending = Some(std::mem::take(value));
                true
            }
            _ => false,
        }
    }

    /// The pending value, if it is to go into the batch being written.
    fn due(&mut self, carried: bool) -> Option<Vec<u8>> {
        let due = carried || self.last_written.is_none_or(|at| at.elapsed() >= Self::INTERVAL);
        if due { self.pending.take() } else { None }
    }

    /// Puts back a value whose batch failed, unless a newer one came meanwhile.
    fn keep(&mut self, value: Vec<u8>) {
        self.pending.get_or_insert(value);
    }

    fn written(&mut self) {
        self.last_written = Some(std::time::Instant::now());
    }

    /// Writes the pending value, durably, as the writer stops.
    fn write_on_close(mut self, database: &Database) {
        if let Some(value) = self.pending.take()
            && let Err(error) = write_batch(database, &[], Some(&value), None, true)
        {
            tracing::warn!(%error, "could not save the committed index on close");
        }
    }
}

/// Writes one batch, plus one step of pending purging; returns whether purging remains. A batch
/// that is not `durable` is committed without an fsync: the next durable commit makes it durable
/// too (redb's `Durability::None`).
fn write_batch(database: &Database, batch: &[WriteOp], committed: Option<&[u8]>, purge_up_to: Option<u64>, durable: bool) -> Result<bool> {
    let mut purge_remaining = false;
    let mut write = database.begin_write().map_err(db)?;
    if !durable {
        write.set_durability(redb::Durability::None).map_err(db)?;
    }
    {
        let mut logs = write.open_table(LOGS).map_err(db)?;
        let mut meta = write.open_table(META).map_err(db)?;
        if let Some(committed) = committed {
            meta.insert(COMMITTED_KEY, committed).map_err(db)?;
        }
        for op in batch {
            match op {
                WriteOp::Append { entries, .. } => {
                    for (index, bytes) in entries {
                        logs.insert(index, bytes.as_slice()).map_err(db)?;
                    }
                }
                WriteOp::SaveMeta { key, value, .. } => {
                    meta.insert(*key, value.as_slice()).map_err(db)?;
                }
                WriteOp::Truncate { from_index, .. } => {
                    logs.retain_in(*from_index.., |_, _| false).map_err(db)?;
                }
                WriteOp::Read { .. } => {}
                #[cfg(test)]
                WriteOp::Pause(_) => {}
                WriteOp::Purge { last_purged, .. } => {
                    // Recording the purge point is what makes the purge durable; the entries
                    // below it are deleted step by step (and ignored when the log is loaded).
                    meta.insert(LAST_PURGED_KEY, last_purged.as_slice()).map_err(db)?;
                }
            }
        }
        if let Some(up_to) = purge_up_to {
            let first = logs.first().map_err(db)?.map(|(index, _)| index.value());
            if let Some(first) = first.filter(|first| *first <= up_to) {
                let end = up_to.min(first + PURGE_STEP - 1);
                logs.retain_in(first..=end, |_, _| false).map_err(db)?;
                purge_remaining = end < up_to;
            }
        }
    }
    write.commit().map_err(db)?;
    Ok(purge_remaining)
}

async fn wait(reply: oneshot::Receiver<Result<(), String>>) -> Result<(), StorageError<NodeId>> {
    match reply.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(message)) => Err(StorageIOError::write_logs(&std::io::Error::other(message)).into()),
        Err(_) => Err(StorageIOError::write_logs(&closed()).into()),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let through = if self.applies { self.shared.hand_over_through.load(Ordering::Acquire) } else { 0 };
        let hands_over = through > 0
            && match range.start_bound() {
                std::ops::Bound::Included(start) => *start <= through,
                std::ops::Bound::Excluded(start) => *start < through,
                std::ops::Bound::Unbounded => true,
            };
        // Entries in order; `None` where one was handed over and must come from disk.
        let mut entries: Vec<(u64, Option<Entry<TypeConfig>>)> = if hands_over {
            self.entries_write()
                .range_mut(range)
                .map(|(index, held)| (*index, if *index <= through { held.entry.take() } else { held.entry.clone() }))
                .collect()
        } else {
            self.entries_read().range(range).map(|(index, held)| (*index, held.entry.clone())).collect()
        };
        let missing: Vec<u64> = entries.iter().filter(|(_, entry)| entry.is_none()).map(|(index, _)| *index).collect();
        if missing.is_empty() {
            return Ok(entries.into_iter().filter_map(|(_, entry)| entry).collect());
        }
        let (reply, receiver) = oneshot::channel();
        self.writer.send(WriteOp::Read { indexes: missing.clone(), reply }).map_err(|_| StorageIOError::read_logs(&closed()))?;
        let read_error = |message: String| StorageError::from(StorageIOError::read_logs(&std::io::Error::other(message)));
        let found = receiver.await.map_err(|_| read_error(closed().to_string()))?.map_err(read_error)?;
        let mut found: BTreeMap<u64, Vec<u8>> = found.into_iter().collect();
        for (index, entry) in &mut entries {
            if entry.is_none() {
                let bytes = found.remove(index).ok_or_else(|| read_error(format!("log entry {index} was handed over but is not on disk")))?;
                *entry = Some(serde_json::from_slice(&bytes).map_err(|e| StorageIOError::read_logs(&e))?);
            }
        }
        Ok(entries.into_iter().filter_map(|(_, entry)| entry).collect())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let last_purged_log_id = self.meta().last_purged;
        let last_log_id = self.entries_read().values().next_back().map(|held| held.log_id).or(last_purged_log_id);
        Ok(LogState { last_purged_log_id, last_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        Self { applies: false, ..self.clone() }
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        let value = serde_json::to_vec(vote).map_err(|e| StorageIOError::write_vote(&e))?;
        let (reply, receiver) = oneshot::channel();
        self.send(WriteOp::SaveMeta { key: VOTE_KEY, value, reply: Some(reply) })?;
        wait(receiver).await?;
        self.meta().vote = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        Ok(self.meta().vote)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // The committed index is a hint for faster restarts; it becomes durable with the next
        // append's fsync, and losing it only means re-deriving it from the log.
        let value = serde_json::to_vec(&committed).map_err(|e| StorageIOError::write_logs(&e))?;
        self.send(WriteOp::SaveMeta { key: COMMITTED_KEY, value, reply: None })?;
        self.meta().committed = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.meta().committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(failed) = self.shared.durability.failed() {
            return Err(StorageIOError::write_logs(&std::io::Error::other(failed.to_string())).into());
        }
        let mut encoded = Vec::new();
        let mut last = None;
        let mut membership = false;
        {
            let mut memory = self.entries_write();
            for entry in entries {
                let bytes = serde_json::to_vec(&entry).map_err(|e| StorageIOError::write_logs(&e))?;
                let size = bytes.len() as u64;
                self.shared.bytes_held.fetch_add(size, Ordering::Relaxed);
                encoded.push((entry.log_id.index, bytes));
                last = Some(entry.log_id);
                membership |= matches!(entry.payload, EntryPayload::Membership(_));
                memory.insert(entry.log_id.index, Held { log_id: entry.log_id, size, entry: Some(entry) });
            }
        }
        // Acknowledged now, in memory and queued, unless openraft acts on the entries' commit
        // itself (see the module documentation).
        if membership {
            return self.send(WriteOp::Append { entries: encoded, last, callback: Some(callback) });
        }
        self.send(WriteOp::Append { entries: encoded, last, callback: None })?;
        callback.log_io_completed(Ok(()));
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let kept = {
            let mut entries = self.entries_write();
            entries.retain(|index, _| *index < log_id.index);
            entries.values().next_back().map(|held| held.log_id)
        };
        let keeps = kept.or(self.meta().last_purged);
        let (reply, receiver) = oneshot::channel();
        self.send(WriteOp::Truncate { from_index: log_id.index, keeps, reply })?;
        wait(receiver).await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        let last_purged = serde_json::to_vec(&Some(log_id)).map_err(|e| StorageIOError::write_logs(&e))?;
        let (reply, receiver) = oneshot::channel();
        self.send(WriteOp::Purge { up_to: log_id, last_purged, reply })?;
        wait(receiver).await?;
        self.meta().last_purged = Some(log_id);
        let mut entries = self.entries_write();
        entries.retain(|index, _| *index > log_id.index);
        // Recount what remains (purges are rare; appends only add).
        let remaining: u64 = entries.values().map(|held| held.size).sum();
        self.shared.bytes_held.store(remaining, Ordering::Relaxed);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, LoggedCommand, ObjectKey};
    use openraft::{CommittedLeaderId, Membership};

    fn entry(index: u64) -> Entry<TypeConfig> {
        let object = serde_json::json!({"metadata": {"name": format!("c{index}")}, "data": {"k": index}});
        Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), index), payload: EntryPayload::Normal(LoggedCommand::from(Command::Create { key: ObjectKey::new("configmaps", "default", format!("c{index}")), object })) }
    }

    fn name(entry: &Entry<TypeConfig>) -> String {
        match &entry.payload {
            EntryPayload::Normal(logged) => match serde_json::from_str(&serde_json::to_string(logged).expect("encode")).expect("decode") {
                Command::Create { key, .. } => key.name,
                _ => String::new(),
            },
            _ => String::new(),
        }
    }

    /// A log of entries 1..=10 on disk, opened, and then held in memory as appended entries are.
    fn opened(dir: &Path) -> (LogStore, std::thread::JoinHandle<()>) {
        let (store, writer) = opened_from_disk(dir);
        {
            let mut memory = store.entries_write();
            for index in 1..=10 {
                let entry = entry(index);
                let size = serde_json::to_vec(&entry).expect("encode").len() as u64;
                memory.insert(index, Held { log_id: entry.log_id, size, entry: Some(entry) });
            }
        }
        (store, writer)
    }

    /// A log of entries 1..=10 on disk, opened.
    fn opened_from_disk(dir: &Path) -> (LogStore, std::thread::JoinHandle<()>) {
        let path = dir.join("log.redb");
        {
            let database = Database::create(&path).expect("create");
            let write = database.begin_write().expect("write");
            {
                let mut logs = write.open_table(LOGS).expect("table");
                for index in 1..=10 {
                    logs.insert(index, serde_json::to_vec(&entry(index)).expect("encode").as_slice()).expect("insert");
                }
            }
            write.commit().expect("commit");
        }
        LogStore::open(&path).expect("open")
    }

    #[tokio::test]
    async fn applied_entries_are_handed_over_and_read_back_from_disk() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, writer) = opened(dir.path());
        let mut reader = store.get_log_reader().await;
        assert_eq!(store.memory().entries(), (10, 0));

        // Nothing is handed over until the hand-over point is set.
        let read = store.try_get_log_entries(1..=4).await.expect("read");
        assert_eq!(read.iter().map(name).collect::<Vec<_>>(), ["c1", "c2", "c3", "c4"]);
        assert_eq!(store.memory().entries(), (10, 0));

        // Reads for applying hand over what is at or below the point, and copy the rest.
        store.hand_over_through().store(6, Ordering::Release);
        let read = store.try_get_log_entries(3..9).await.expect("read");
        assert_eq!(read.iter().map(name).collect::<Vec<_>>(), ["c3", "c4", "c5", "c6", "c7", "c8"]);
        assert_eq!(store.memory().entries(), (6, 4));

        // A reader (replication) never hands over, and gets handed-over entries from disk, in
        // order with those still in memory.
        let read = reader.try_get_log_entries(1..=10).await.expect("read");
        assert_eq!(read.iter().map(name).collect::<Vec<_>>(), (1..=10).map(|i| format!("c{i}")).collect::<Vec<_>>());
        assert_eq!(read[4].log_id.index, 5);
        assert_eq!(store.memory().entries(), (6, 4));

        // Reading handed-over entries again for applying also works, and the log's state still
        // knows its last entry.
        let read = store.try_get_log_entries(5..=6).await.expect("read");
        assert_eq!(read.iter().map(name).collect::<Vec<_>>(), ["c5", "c6"]);
        assert_eq!(store.get_log_state().await.expect("state").last_log_id.map(|id| id.index), Some(10));

        // A purge recounts the bytes held from the sizes kept with handed-over entries.
        let before = store.bytes_held().load(Ordering::Relaxed);
        store.purge(LogId::new(CommittedLeaderId::new(1, 1), 4)).await.expect("purge");
        let after = store.bytes_held().load(Ordering::Relaxed);
        let purged: u64 = (1..=4).map(|i| serde_json::to_vec(&entry(i)).expect("encode").len() as u64).sum();
        assert_eq!(before - after, purged);
        assert_eq!(store.memory().entries(), (4, 2));
        drop((store, reader));
        writer.join().expect("writer");
    }

    #[tokio::test]
    async fn entries_found_on_disk_at_open_stay_there_and_are_read_back_in_order() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, writer) = opened_from_disk(dir.path());
        assert_eq!(store.memory().entries(), (0, 10), "only the ids of stored entries are held");
        let bytes: u64 = (1..=10).map(|i| serde_json::to_vec(&entry(i)).expect("encode").len() as u64).sum();
        assert_eq!(store.bytes_held().load(Ordering::Relaxed), bytes);
        assert_eq!(store.get_log_state().await.expect("state").last_log_id, Some(entry(10).log_id));

        let mut reader = store.get_log_reader().await;
        let read = reader.try_get_log_entries(3..=7).await.expect("read");
        assert_eq!(read.iter().map(name).collect::<Vec<_>>(), ["c3", "c4", "c5", "c6", "c7"]);
        assert_eq!(read.iter().map(|e| e.log_id).collect::<Vec<_>>(), (3..=7).map(|i| entry(i).log_id).collect::<Vec<_>>());
        // Applying reads them from disk too, and nothing is decoded into memory by reading.
        store.hand_over_through().store(10, Ordering::Release);
        let read = store.try_get_log_entries(1..=10).await.expect("read");
        assert_eq!(read.len(), 10);
        assert_eq!(store.memory().entries(), (0, 10));
        drop((store, reader));
        writer.join().expect("writer");
    }

    #[tokio::test]
    async fn ordinary_appends_are_acknowledged_before_their_fsync_and_waited_for_after_it() {
        use openraft::storage::RaftLogStorageExt;
        const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, writer) = opened_from_disk(dir.path());
        let on_disk = store.durability();
        assert_eq!(on_disk.last_on_disk(), Some(entry(10).log_id), "what was on disk at open is");

        // The writer is held: nothing reaches the disk until `resume` goes.
        let (resume, until) = mpsc::channel();
        store.send(WriteOp::Pause(until)).expect("pause");
        tokio::time::timeout(PATIENCE, store.blocking_append([entry(11)]))
            .await
            .expect("an ordinary entry is acknowledged without waiting for its fsync")
            .expect("append");
        assert_eq!(on_disk.last_on_disk(), Some(entry(10).log_id));
        assert_eq!(store.get_log_state().await.expect("state").last_log_id, Some(entry(11).log_id), "readers see it at once");
        let waiting = tokio::spawn({
            let on_disk = on_disk.clone();
            async move { on_disk.wait_for(11).await }
        });
        let membership = Membership::new(vec![std::collections::BTreeSet::from([1])], None);
        let membership = Entry { log_id: LogId::new(CommittedLeaderId::new(1, 1), 12), payload: EntryPayload::Membership(membership) };
        let appending = tokio::spawn({
            let mut store = store.clone();
            async move { store.blocking_append([membership]).await }
        });
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!waiting.is_finished(), "waiting for entry 11 to be on disk ends only once it is");
        assert!(!appending.is_finished(), "a membership entry is acknowledged only after its fsync");

        drop(resume);
        tokio::time::timeout(PATIENCE, waiting).await.expect("on disk").expect("task").expect("no failure");
        tokio::time::timeout(PATIENCE, appending).await.expect("acknowledged").expect("task").expect("append");
        assert_eq!(on_disk.last_on_disk().map(|id| id.index), Some(12));

        // A truncation takes what is on disk back with it.
        store.truncate(entry(12).log_id).await.expect("truncate");
        assert_eq!(on_disk.last_on_disk(), Some(entry(11).log_id));
        drop(store);
        writer.join().expect("writer");
        let (mut store, writer) = LogStore::open(&dir.path().join("log.redb")).expect("reopen");
        assert_eq!(store.get_log_state().await.expect("state").last_log_id, Some(entry(11).log_id));
        assert_eq!(store.durability().last_on_disk(), Some(entry(11).log_id));
        drop(store);
        writer.join().expect("writer");
    }

    #[test]
    fn what_is_on_disk_follows_appends_truncations_and_purges_past_the_end() {
        let id = |index| Some(entry(index).log_id);
        let reply = || oneshot::channel().0;
        let append = |index| WriteOp::Append { entries: Vec::new(), last: id(index), callback: None };
        assert_eq!(on_disk_after(id(3), &[append(4), append(6)]), id(6));
        assert_eq!(on_disk_after(id(6), &[WriteOp::Truncate { from_index: 5, keeps: id(4), reply: reply() }]), id(4));
        let purge = |index| WriteOp::Purge { up_to: entry(index).log_id, last_purged: Vec::new(), reply: reply() };
        assert_eq!(on_disk_after(id(6), &[purge(4)]), id(6), "a purge below the end changes nothing");
        assert_eq!(on_disk_after(id(6), &[purge(9)]), id(9), "a snapshot's purge point past the end is covered");
        assert_eq!(on_disk_after(None, &[WriteOp::Read { indexes: vec![1], reply: oneshot::channel().0 }]), None);
    }

    #[tokio::test]
    async fn the_committed_index_is_written_without_an_fsync_and_kept_by_the_next_durable_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut store, writer) = opened(dir.path());
        let committed = Some(LogId::new(CommittedLeaderId::new(1, 1), 7));
        store.save_committed(committed).await.expect("save committed");
        let vote = Vote::new(2, 1);
        store.save_vote(&vote).await.expect("save vote");
        drop(store);
        writer.join().expect("writer");

        let (mut store, writer) = LogStore::open(&dir.path().join("log.redb")).expect("reopen");
        assert_eq!(store.read_committed().await.expect("committed"), committed);
        assert_eq!(store.read_vote().await.expect("vote"), Some(vote));

        // Alone, the hint is written when the store closes.
        let later = Some(LogId::new(CommittedLeaderId::new(2, 1), 9));
        store.save_committed(later).await.expect("save committed");
        drop(store);
        writer.join().expect("writer");
        let (mut store, writer) = LogStore::open(&dir.path().join("log.redb")).expect("reopen");
        assert_eq!(store.read_committed().await.expect("committed"), later);
        drop(store);
        writer.join().expect("writer");

        let op = |reply: bool| WriteOp::SaveMeta { key: COMMITTED_KEY, value: Vec::new(), reply: reply.then(|| oneshot::channel().0) };
        assert!(!op(false).needs_durability(), "the committed hint alone needs no fsync");
        assert!(op(true).needs_durability(), "a write someone waits for (the vote) does");
        assert!(!WriteOp::Read { indexes: vec![1], reply: oneshot::channel().0 }.needs_durability());
    }

    #[test]
    fn the_committed_hint_rides_along_at_most_once_a_second_unless_a_rarer_write_carries_it() {
        let hint = |value: u8| WriteOp::SaveMeta { key: COMMITTED_KEY, value: vec![value], reply: None };
        let mut committed = CommittedHint::default();
        assert!(committed.take(&mut hint(1)), "the hint is taken out of the batch");
        let mut vote = WriteOp::SaveMeta { key: VOTE_KEY, value: vec![0], reply: None };
        assert!(!committed.take(&mut vote), "other metadata stays in the batch");
        assert_eq!(committed.due(false), Some(vec![1]), "never written yet: due at once");
        committed.written();
        committed.take(&mut hint(2));
        committed.take(&mut hint(3));
        assert_eq!(committed.due(false), None, "written under a second ago: appends go without it");
        assert_eq!(committed.due(true), Some(vec![3]), "a vote, truncation or purge carries the newest");
        committed.keep(vec![3]);
        committed.take(&mut hint(4));
        committed.keep(vec![3]);
        assert_eq!(committed.due(true), Some(vec![4]), "a failed batch's value never replaces a newer one");
        committed.last_written = Some(std::time::Instant::now() - CommittedHint::INTERVAL);
        committed.take(&mut hint(5));
        assert_eq!(committed.due(false), Some(vec![5]), "a second on, an append carries it");
    }
}

//! The state machine: objects in redb, the cluster revision, and the events it emits.
//!
//! Objects are served from memory and written behind to redb in batches without fsync
//! (`Durability::None`): the Raft log is the durable record, and after a crash openraft
//! re-applies committed entries past the last applied id that did reach disk. Before the log is
//! compacted, building a snapshot forces a durable flush here, so no entry is purged from the
//! log while its effect exists only in memory.

use std::io::Cursor;
use std::path::Path;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::{Command, CommandResponse, ObjectKey, Precondition, WriteError};
use crate::error::{Error, Result, db};
use crate::history::{Event, EventType, History};
use crate::TypeConfig;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
/// Blob chunks, keyed `DIGEST/INDEX` with the index zero-padded so that keys sort by index.
const BLOB_CHUNKS: TableDefinition<&str, &[u8]> = TableDefinition::new("blob_chunks");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("state_meta");
const APPLIED_KEY: &str = "last_applied";
const MEMBERSHIP_KEY: &str = "membership";
const REVISION_KEY: &str = "revision";
/// How long the flusher gathers applied writes before it writes them to redb in one transaction.
/// Nothing waits on it (the log is what makes a write durable; a restart replays what the state
/// file lacks), and each transaction copies the B-tree pages it touches: at 64 clients on 3
/// members, 2 ms meant a transaction per log entry, and the flusher cost a follower 18% of its CPU.
const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

type NodeId = u64;
type Membership = StoredMembership<NodeId, BasicNode>;

#[derive(Clone, Default)]
struct Applied {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    revision: u64,
}

/// What a snapshot holds: the whole object table and the applied position.
#[derive(Serialize, Deserialize)]
struct SnapshotData {
    last_applied: Option<LogId<NodeId>>,
    membership: Membership,
    revision: u64,
    objects: Vec<(String, Value)>,
}

/// The served state: every object, in memory, and what still has to reach redb.
#[derive(Default)]
struct Memory {
    objects: BTreeMap<String, Arc<Value>>,
    applied: Applied,
    /// Keys changed since the last flush (`None`: deleted).
    dirty: BTreeMap<String, Option<Arc<Value>>>,
    applied_dirty: bool,
}

/// A borrowed [`SnapshotData`], serialised to the same layout without copying the objects.
#[derive(Serialize)]
struct SnapshotView<'a> {
    last_applied: Option<LogId<NodeId>>,
    membership: &'a Membership,
    revision: u64,
    objects: Vec<(&'a str, &'a Value)>,
}

/// State shared between the state machine (owned by openraft), the flusher and readers.
///
/// Objects are served from memory; a flusher thread writes what changed to redb in batches
/// (write-behind). redb always holds a consistent (objects, last applied) pair, because both are
/// taken from memory under one lock and written in one transaction; after a crash openraft
/// re-applies the log from that last applied id.
pub struct StateShared {
    database: Database,
    memory: RwLock<Memory>,
    pub(crate) history: Arc<History>,
    /// The last snapshot built or installed, shared with every reader of it.
    snapshot: Mutex<Option<(SnapshotMeta<NodeId, BasicNode>, Bytes)>>,
    /// Serialises flushes so that an older batch never lands after a newer one.
    flush_lock: Mutex<()>,
    flush_signal: Mutex<Option<std::sync::mpsc::Sender<()>>>,
    flusher: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl StateShared {
    pub fn open(path: &Path, history_limits: crate::history::HistoryLimits) -> Result<Arc<Self>> {
        let database = Database::builder()
            .set_cache_size(crate::REDB_CACHE_BYTES)
            .create(path)
            .map_err(|source| Error::Open { path: path.to_owned(), source })?;
        let write = database.begin_write().map_err(db)?;
        write.open_table(OBJECTS).map_err(db)?;
        write.open_table(META).map_err(db)?;
        write.open_table(BLOB_CHUNKS).map_err(db)?;
        write.commit().map_err(db)?;
        let mut memory = Memory::default();
        {
            let read = database.begin_read().map_err(db)?;
            let meta = read.open_table(META).map_err(db)?;
            if let Some(bytes) = meta.get(APPLIED_KEY).map_err(db)? {
                memory.applied.last_applied = serde_json::from_slice(bytes.value())?;
            }
            if let Some(bytes) = meta.get(MEMBERSHIP_KEY).map_err(db)? {
                memory.applied.membership = serde_json::from_slice(bytes.value())?;
            }
            if let Some(bytes) = meta.get(REVISION_KEY).map_err(db)? {
                memory.applied.revision = serde_json::from_slice(bytes.value())?;
            }
            let objects = read.open_table(OBJECTS).map_err(db)?;
            for row in objects.range::<&str>(..).map_err(db)? {
                let (key, bytes) = row.map_err(db)?;
                memory.objects.insert(key.value().to_owned(), Arc::new(serde_json::from_slice(bytes.value())?));
            }
        }
        let history = Arc::new(History::new(memory.applied.revision, history_limits));
        let shared = Arc::new(Self {
            database,
            memory: RwLock::new(memory),
            history,
            snapshot: Mutex::new(None),
            flush_lock: Mutex::new(()),
            flush_signal: Mutex::new(None),
            flusher: Mutex::new(None),
        });
        let (signal, wakeups) = std::sync::mpsc::channel::<()>();
        let weak = Arc::downgrade(&shared);
        let flusher = std::thread::Builder::new().name("state-flusher".into()).spawn(move || {
            // Flush at most every FLUSH_INTERVAL, batching everything applied meanwhile.
            while wakeups.recv().is_ok() {
                std::thread::sleep(FLUSH_INTERVAL);
                while wakeups.try_recv().is_ok() {}
                let Some(shared) = weak.upgrade() else { return };
                if let Err(error) = shared.flush(false) {
                    tracing::error!(%error, "writing the state machine to redb");
                }
            }
        })?;
        *lock(&shared.flush_signal) = Some(signal);
        *lock(&shared.flusher) = Some(flusher);
        Ok(shared)
    }

    fn read_memory(&self) -> std::sync::RwLockReadGuard<'_, Memory> {
        // Only short, panic-free sections hold this lock.
        self.memory.read().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_memory(&self) -> std::sync::RwLockWriteGuard<'_, Memory> {
        self.memory.write().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wake_flusher(&self) {
        if let Some(signal) = lock(&self.flush_signal).as_ref() {
            let _ = signal.send(());
        }
    }

    /// Writes what changed since the last flush to redb, durably if asked.
    pub fn flush(&self, durable: bool) -> Result<()> {
        let _serialised = lock(&self.flush_lock);
        let (dirty, applied, applied_dirty) = {
            let mut memory = self.write_memory();
            let dirty = std::mem::take(&mut memory.dirty);
            let applied_dirty = std::mem::replace(&mut memory.applied_dirty, false);
            (dirty, memory.applied.clone(), applied_dirty)
        };
        if dirty.is_empty() && !applied_dirty && !durable {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let result: Result<()> = (|| {
            let mut write = self.database.begin_write().map_err(db)?;
            write.set_durability(if durable { Durability::Immediate } else { Durability::None }).map_err(db)?;
            {
                let mut objects = write.open_table(OBJECTS).map_err(db)?;
                for (key, object) in &dirty {
                    match object {
                        Some(object) => {
                            objects.insert(key.as_str(), serde_json::to_vec(object.as_ref())?.as_slice()).map_err(db)?;
                        }
                        None => {
                            objects.remove(key.as_str()).map_err(db)?;
                        }
                    }
                }
                write_applied(&mut write.open_table(META).map_err(db)?, &applied)?;
            }
            write.commit().map_err(db)?;
            Ok(())
        })();
        let elapsed = started.elapsed();
        if elapsed > std::time::Duration::from_millis(50) {
            tracing::warn!(objects = dirty.len(), durable, elapsed_ms = elapsed.as_millis() as u64, "slow state machine flush");
        }
        if result.is_err() {
            // Put the batch back, under anything newer, so the next flush retries it.
            let mut memory = self.write_memory();
            for (key, object) in dirty {
                memory.dirty.entry(key).or_insert(object);
            }
            memory.applied_dirty = true;
        }
        result
    }

    /// Flushes durably and stops the flusher thread (the store is closing).
    pub fn close(&self) -> Result<()> {
        let flushed = self.flush(true);
        lock(&self.flush_signal).take();
        if let Some(handle) = lock(&self.flusher).take() {
            let _ = handle.join();
        }
        flushed
    }

    /// The index of the last applied log entry (set before the entry's writes are answered).
    pub fn applied_index(&self) -> u64 {
        self.read_memory().applied.last_applied.map_or(0, |id| id.index)
    }

    /// The revision of the last applied write.
    pub fn revision(&self) -> u64 {
        self.read_memory().applied.revision
    }

    pub fn get(&self, key: &ObjectKey) -> Result<Option<Value>> {
        Ok(self.read_memory().objects.get(&key.encode()).map(|object| Value::clone(object)))
    }

    pub fn get_shared(&self, key: &ObjectKey) -> Result<Option<Arc<Value>>> {
        Ok(self.read_memory().objects.get(&key.encode()).cloned())
    }

    /// Lists objects under `prefix`, after the encoded key `start_after` if given, keeping those
    /// `filter` accepts, at most `limit` of them. Returns the items, the revision they were read
    /// at, and the key to continue after when the limit cut the list short.
    pub fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: Option<usize>,
        filter: &dyn Fn(&Value) -> bool,
    ) -> Result<(Vec<Value>, u64, Option<String>)> {
        let memory = self.read_memory();
        let start = match start_after {
            Some(after) => std::ops::Bound::Excluded(after.to_owned()),
            None => std::ops::Bound::Included(prefix.to_owned()),
        };
        let mut items = Vec::new();
        let mut last_key = None;
        let mut continue_after = None;
        for (key, object) in memory.objects.range::<String, _>((start, std::ops::Bound::Unbounded)) {
            if !key.starts_with(prefix) {
                break;
            }
            if !filter(object) {
                continue;
            }
            if limit.is_some_and(|limit| items.len() >= limit) {
                continue_after = last_key;
                break;
            }
            items.push(Value::clone(object));
            last_key = Some(key.clone());
        }
        Ok((items, memory.applied.revision, continue_after))
    }
}

impl StateShared {
    /// Every object under `prefix`, shared rather than copied (for readers that only look).
    pub fn list_shared(&self, prefix: &str) -> Vec<Arc<Value>> {
        let memory = self.read_memory();
        memory.objects.range::<str, _>((std::ops::Bound::Included(prefix), std::ops::Bound::Unbounded)).take_while(|(key, _)| key.starts_with(prefix)).map(|(_, object)| Arc::clone(object)).collect()
    }
}

/// Records the applied position (last applied id, membership, revision) in the meta table.
fn write_applied(meta: &mut redb::Table<&str, &[u8]>, applied: &Applied) -> Result<()> {
    meta.insert(APPLIED_KEY, serde_json::to_vec(&applied.last_applied)?.as_slice()).map_err(db)?;
    meta.insert(MEMBERSHIP_KEY, serde_json::to_vec(&applied.membership)?.as_slice()).map_err(db)?;
    meta.insert(REVISION_KEY, serde_json::to_vec(&applied.revision)?.as_slice()).map_err(db)?;
    Ok(())
}

fn blob_chunk_key(digest: &str, index: u32) -> String {
    format!("{digest}/{index:08}")
}

impl StateShared {
    /// Chunk `index` of blob `digest`, if stored.
    pub fn blob_chunk(&self, digest: &str, index: u32) -> Result<Option<Vec<u8>>> {
        let read = self.database.begin_read().map_err(db)?;
        let chunks = read.open_table(BLOB_CHUNKS).map_err(db)?;
        Ok(chunks.get(blob_chunk_key(digest, index).as_str()).map_err(db)?.map(|bytes| bytes.value().to_vec()))
    }

    /// Writes or removes blob chunks (applied commands; idempotent, so replay is harmless).
    fn apply_blob(&self, command: &Command) -> Result<()> {
        let mut write = self.database.begin_write().map_err(db)?;
        write.set_durability(Durability::None).map_err(db)?;
        {
            let mut chunks = write.open_table(BLOB_CHUNKS).map_err(db)?;
            match command {
                Command::PutBlobChunk { digest, index, data } => {
                    use base64::Engine;
                    let bytes = base64::engine::general_purpose::STANDARD
                        .decode(data)
                        .map_err(|e| Error::Database(format!("blob chunk {digest}/{index} is not base64: {e}")))?;
                    chunks.insert(blob_chunk_key(digest, *index).as_str(), bytes.as_slice()).map_err(db)?;
                }
                Command::DeleteBlobChunks { digest } => {
                    let start = format!("{digest}/");
                    let end = format!("{digest}0");
                    chunks.retain_in(start.as_str()..end.as_str(), |_, _| false).map_err(db)?;
                }
                _ => {}
            }
        }
        write.commit().map_err(db)?;
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn object_revision(object: &Value) -> u64 {
    object["metadata"]["resourceVersion"].as_str().and_then(|rv| rv.parse().ok()).unwrap_or(0)
}

fn check_precondition(current: &Value, precondition: &Precondition) -> Result<(), WriteError> {
    if let Some(expected) = precondition.resource_version {
        let current = object_revision(current);
        if current != expected {
            return Err(WriteError::ResourceVersionConflict { current, expected });
        }
    }
    if let Some(expected) = &precondition.uid {
        let current = current["metadata"]["uid"].as_str().unwrap_or_default();
        if current != expected {
            return Err(WriteError::UidConflict { current: current.to_owned(), expected: expected.clone() });
        }
    }
    Ok(())
}

fn stamp(object: &mut Value, revision: u64) {
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        metadata.insert("resourceVersion".into(), Value::String(revision.to_string()));
    }
}

/// The state machine handed to openraft.
pub struct StateMachine {
    shared: Arc<StateShared>,
    /// How far the Raft log is on disk: an entry is applied only once it is (the log
    /// acknowledges appends before their fsync; see `log_store`).
    log_on_disk: crate::log_store::Durability,
}

impl StateMachine {
    pub fn new(shared: Arc<StateShared>, log_on_disk: crate::log_store::Durability) -> Self {
        Self { shared, log_on_disk }
    }
}

/// The core group's Services, whose cluster IPs and node ports are unique.
const SERVICES: &str = "services";

/// The cluster IPs and node ports a Service holds: (field, value, what) for each.
fn service_addresses(service: &Value) -> Vec<(&'static str, String, &'static str)> {
    let spec = &service["spec"];
    let mut claims = Vec::new();
    let ips = spec["clusterIP"].as_str().into_iter().chain(spec["clusterIPs"].as_array().into_iter().flatten().filter_map(Value::as_str));
    for ip in ips {
        if !ip.is_empty() && ip != "None" && !claims.iter().any(|(_, v, _): &(&str, String, &str)| v == ip) {
            claims.push(("spec.clusterIPs", ip.to_owned(), "IP"));
        }
    }
    for port in spec["ports"].as_array().into_iter().flatten() {
        if let Some(node_port) = port["nodePort"].as_u64().filter(|p| *p > 0) {
            claims.push(("spec.ports[].nodePort", node_port.to_string(), "port"));
        }
    }
    if let Some(port) = spec["healthCheckNodePort"].as_u64().filter(|p| *p > 0) {
        claims.push(("spec.healthCheckNodePort", port.to_string(), "port"));
    }
    claims
}

/// Whether `service` (to be stored at `encoded`) claims an address another Service holds.
fn address_taken(memory: &Memory, encoded: &str, service: &Value) -> Option<WriteError> {
    let claims = service_addresses(service);
    if claims.is_empty() {
        return None;
    }
    let prefix = format!("{SERVICES}/");
    for (key, other) in memory.objects.range::<str, _>((std::ops::Bound::Included(prefix.as_str()), std::ops::Bound::Unbounded)) {
        if !key.starts_with(&prefix) {
            break;
        }
        if key == encoded {
            continue;
        }
        for (_, held, held_what) in service_addresses(other) {
            if let Some((field, value, what)) = claims.iter().find(|(_, value, what)| *value == held && *what == held_what) {
                return Some(WriteError::AddressTaken { field: (*field).to_owned(), value: value.clone(), detail: format!("provided {what} is already allocated") });
            }
        }
    }
    None
}

fn execute(shared: &StateShared, memory: &mut Memory, command: Command, events: &mut Vec<Event>) -> Result<CommandResponse> {
    let key = match &command {
        Command::Batch(_) => {
            let Command::Batch(commands) = command else { unreachable!("matched just above") };
            let responses = commands.into_iter().map(|c| execute(shared, memory, c, events)).collect::<Result<Vec<_>>>()?;
            return Ok(CommandResponse::Batch(responses));
        }
        Command::PutBlobChunk { .. } | Command::DeleteBlobChunks { .. } => {
            shared.apply_blob(&command)?;
            return Ok(CommandResponse::BlobDone);
        }
        Command::Create { key, .. } | Command::Update { key, .. } | Command::Delete { key, .. } => key,
    };
    let encoded = key.encode();
    let current = memory.objects.get(&encoded).cloned();
    let (key, mut object, event_type) = match command {
        Command::Batch(_) | Command::PutBlobChunk { .. } | Command::DeleteBlobChunks { .. } => unreachable!("returned above"),
        Command::Create { key, object } => {
            if current.is_some() {
                return Ok(CommandResponse::Rejected(WriteError::AlreadyExists));
            }
            (key, object, EventType::Added)
        }
        Command::Update { key, object, precondition } => {
            let Some(current) = &current else { return Ok(CommandResponse::Rejected(WriteError::NotFound)) };
            if let Err(error) = check_precondition(current, &precondition) {
                return Ok(CommandResponse::Rejected(error));
            }
            (key, object, EventType::Modified)
        }
        Command::Delete { key, precondition } => {
            let Some(current) = &current else { return Ok(CommandResponse::Rejected(WriteError::NotFound)) };
            if let Err(error) = check_precondition(current, &precondition) {
                return Ok(CommandResponse::Rejected(error));
            }
            (key, Value::clone(current), EventType::Deleted)
        }
    };
    if key.resource == SERVICES && event_type != EventType::Deleted
        && let Some(taken) = address_taken(memory, &encoded, &object)
    {
        return Ok(CommandResponse::Rejected(taken));
    }
    memory.applied.revision += 1;
    let revision = memory.applied.revision;
    stamp(&mut object, revision);
    let object = Arc::new(object);
    if event_type == EventType::Deleted {
        memory.objects.remove(&encoded);
        memory.dirty.insert(encoded, None);
    } else {
        memory.objects.insert(encoded.clone(), Arc::clone(&object));
        memory.dirty.insert(encoded, Some(Arc::clone(&object)));
    }
    let previous = if event_type == EventType::Modified { current } else { None };
    let event = Event::new(revision, event_type, key, Arc::clone(&object), previous);
    let encoded = Arc::clone(&event.encoded);
    events.push(event);
    Ok(CommandResponse::Written { revision, object, encoded })
}

fn io_error(error: Error) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(error.to_string())).into()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let memory = self.shared.read_memory();
        Ok((memory.applied.last_applied, memory.applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        if let Some(last) = entries.last() {
            self.log_on_disk.wait_for(last.log_id.index).await.map_err(|message| StorageError::from(StorageIOError::write_state_machine(&std::io::Error::other(message))))?;
        }
        // Commands that arrived as JSON are decoded here (`LoggedCommand`), before the state's
        // lock is taken, so that readers never wait for the decoding.
        enum Step {
            Blank,
            Command(Command),
            Membership(openraft::Membership<NodeId, BasicNode>),
        }
        let steps = entries
            .into_iter()
            .map(|entry| {
                let step = match entry.payload {
                    EntryPayload::Blank => Step::Blank,
                    EntryPayload::Normal(command) => Step::Command(command.take().map_err(|e| io_error(e.into()))?),
                    EntryPayload::Membership(membership) => Step::Membership(membership),
                };
                Ok((entry.log_id, step))
            })
            .collect::<Result<Vec<_>, StorageError<NodeId>>>()?;
        let mut responses = Vec::new();
        let mut events = Vec::new();
        {
            let mut memory = self.shared.write_memory();
            for (log_id, step) in steps {
                memory.applied.last_applied = Some(log_id);
                let response = match step {
                    Step::Blank => CommandResponse::None,
                    Step::Command(command) => execute(&self.shared, &mut memory, command, &mut events).map_err(io_error)?,
                    Step::Membership(membership) => {
                        memory.applied.membership = StoredMembership::new(Some(log_id), membership);
                        CommandResponse::None
                    }
                };
                responses.push(response);
            }
            memory.applied_dirty = true;
        }
        self.shared.history.record(events);
        self.shared.wake_flusher();
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shared: Arc::clone(&self.shared) }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotBytes>, StorageError<NodeId>> {
        Ok(Box::new(SnapshotBytes::receiving()))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<SnapshotBytes>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_bytes();
        let _serialised = lock(&self.shared.flush_lock);
        let data: SnapshotData = serde_json::from_slice(&bytes)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), &e))?;
        let result: Result<()> = (|| {
            let write = self.shared.database.begin_write().map_err(db)?;
            write.delete_table(OBJECTS).map_err(db)?;
            {
                let mut objects = write.open_table(OBJECTS).map_err(db)?;
                for (key, object) in &data.objects {
                    objects.insert(key.as_str(), serde_json::to_vec(object)?.as_slice()).map_err(db)?;
                }
                let applied = Applied { last_applied: data.last_applied, membership: data.membership.clone(), revision: data.revision };
                write_applied(&mut write.open_table(META).map_err(db)?, &applied)?;
            }
            write.commit().map_err(db)?;
            Ok(())
        })();
        result.map_err(io_error)?;
        {
            let mut memory = self.shared.write_memory();
            memory.objects = data.objects.into_iter().map(|(key, object)| (key, Arc::new(object))).collect();
            memory.applied = Applied { last_applied: data.last_applied, membership: data.membership, revision: data.revision };
            memory.dirty.clear();
            memory.applied_dirty = false;
        }
        self.shared.history.reset(data.revision);
        *self.shared.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let guard = self.shared.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        Ok(guard
            .as_ref()
            .map(|(meta, bytes)| Snapshot { meta: meta.clone(), snapshot: Box::new(SnapshotBytes::shared(bytes.clone())) }))
    }
}

/// Builds snapshots from a consistent read of the object table.
pub struct SnapshotBuilder {
    shared: Arc<StateShared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        // Serialising every object and the durable flush are long, synchronous work: keep them off
        // the async workers that serve requests and drive Raft.
        let shared = Arc::clone(&self.shared);
        // Sized after the last snapshot, so the buffer does not grow by doubling (each step a
        // fresh allocation of the whole table's size, touched page by page).
        let expected = self.shared.snapshot.lock().unwrap_or_else(|p| p.into_inner()).as_ref().map_or(0, |(_, bytes)| bytes.len());
        let built = tokio::task::spawn_blocking(move || -> Result<(SnapshotData, Vec<u8>)> {
            // Make everything applied so far durable before openraft may purge the log entries
            // that produced it.
            shared.flush(true)?;
            // Hold the lock only to copy the map of shared objects; serialise outside it.
            let (last_applied, membership, revision, objects) = {
                let memory = shared.read_memory();
                (memory.applied.last_applied, memory.applied.membership.clone(), memory.applied.revision, memory.objects.clone())
            };
            // Serialise straight from the shared objects, in the layout of `SnapshotData`.
            let borrowed: Vec<(&str, &Value)> = objects.iter().map(|(key, object)| (key.as_str(), object.as_ref())).collect();
            let mut bytes = Vec::with_capacity(expected + expected / 8);
            serde_json::to_writer(&mut bytes, &SnapshotView { last_applied, membership: &membership, revision, objects: borrowed })?;
            // The snapshot is kept until the next one: without its spare capacity.
            bytes.shrink_to_fit();
            Ok((SnapshotData { last_applied, membership, revision, objects: Vec::new() }, bytes))
        })
        .await;
        let (data, bytes) = match built {
            Ok(Ok(built)) => built,
            Ok(Err(error)) => return Err(StorageIOError::read_state_machine(&std::io::Error::other(error.to_string())).into()),
            Err(join) => return Err(StorageIOError::read_state_machine(&std::io::Error::other(join.to_string())).into()),
        };
        let snapshot_id = match data.last_applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id.term, log_id.index, data.revision),
            None => format!("0-0-{}", data.revision),
        };
        let meta = SnapshotMeta { last_log_id: data.last_applied, last_membership: data.membership, snapshot_id };
        let bytes = Bytes::from(bytes);
        *self.shared.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(SnapshotBytes::shared(bytes)) })
    }
}

/// A snapshot's bytes as openraft reads and writes them (the group's `SnapshotData`).
///
/// A built snapshot is shared: the copy kept for lagging members, what `build_snapshot` returns
/// and every copy handed out to send are one buffer, so a snapshot of the whole object table
/// is held once instead of once per holder. A snapshot being received from the leader is written
/// into a buffer of its own. Writing to a shared snapshot is refused: openraft only writes to the
/// one it asked to receive into.
pub struct SnapshotBytes(SnapshotCursor);

enum SnapshotCursor {
    Shared(Cursor<Bytes>),
    Receiving(Cursor<Vec<u8>>),
}

impl SnapshotBytes {
    /// A built snapshot, read from the start.
    pub fn shared(bytes: Bytes) -> Self {
        Self(SnapshotCursor::Shared(Cursor::new(bytes)))
    }

    /// An empty buffer to receive a snapshot into.
    pub fn receiving() -> Self {
        Self(SnapshotCursor::Receiving(Cursor::new(Vec::new())))
    }

    /// The whole snapshot, whatever the position.
    pub fn into_bytes(self) -> Bytes {
        match self.0 {
            SnapshotCursor::Shared(cursor) => cursor.into_inner(),
            SnapshotCursor::Receiving(cursor) => Bytes::from(cursor.into_inner()),
        }
    }
}

impl std::fmt::Debug for SnapshotBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (kind, len) = match &self.0 {
            SnapshotCursor::Shared(cursor) => ("shared", cursor.get_ref().len()),
            SnapshotCursor::Receiving(cursor) => ("receiving", cursor.get_ref().len()),
        };
        write!(f, "SnapshotBytes({kind}, {len} bytes)")
    }
}

impl tokio::io::AsyncRead for SnapshotBytes {
    fn poll_read(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
        match &mut self.get_mut().0 {
            SnapshotCursor::Shared(cursor) => std::pin::Pin::new(cursor).poll_read(cx, buf),
            SnapshotCursor::Receiving(cursor) => std::pin::Pin::new(cursor).poll_read(cx, buf),
        }
    }
}

impl tokio::io::AsyncSeek for SnapshotBytes {
    fn start_seek(self: std::pin::Pin<&mut Self>, position: std::io::SeekFrom) -> std::io::Result<()> {
        match &mut self.get_mut().0 {
            SnapshotCursor::Shared(cursor) => std::pin::Pin::new(cursor).start_seek(position),
            SnapshotCursor::Receiving(cursor) => std::pin::Pin::new(cursor).start_seek(position),
        }
    }

    fn poll_complete(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<u64>> {
        match &mut self.get_mut().0 {
            SnapshotCursor::Shared(cursor) => std::pin::Pin::new(cursor).poll_complete(cx),
            SnapshotCursor::Receiving(cursor) => std::pin::Pin::new(cursor).poll_complete(cx),
        }
    }
}

impl tokio::io::AsyncWrite for SnapshotBytes {
    fn poll_write(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &[u8]) -> std::task::Poll<std::io::Result<usize>> {
        match &mut self.get_mut().0 {
            SnapshotCursor::Shared(_) => std::task::Poll::Ready(Err(read_only())),
            SnapshotCursor::Receiving(cursor) => std::pin::Pin::new(cursor).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: std::pin::Pin<&mut Self>, _cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

fn read_only() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::Unsupported, "a built snapshot is shared and read-only")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_received_snapshot_is_written_then_read_back_whole() {
        let mut snapshot = SnapshotBytes::receiving();
        snapshot.write_all(b"{\"objects\":").await.expect("write");
        snapshot.write_all(b"[]}").await.expect("write");
        snapshot.seek(std::io::SeekFrom::Start(0)).await.expect("seek");
        let mut read = String::new();
        snapshot.read_to_string(&mut read).await.expect("read");
        assert_eq!(read, "{\"objects\":[]}");
        assert_eq!(&snapshot.into_bytes()[..], b"{\"objects\":[]}");
    }

    #[tokio::test]
    async fn a_shared_snapshot_reads_from_any_position_and_refuses_writes() {
        let bytes = Bytes::from_static(b"0123456789");
        let mut snapshot = SnapshotBytes::shared(bytes.clone());
        snapshot.seek(std::io::SeekFrom::Start(6)).await.expect("seek");
        let mut tail = Vec::new();
        snapshot.read_to_end(&mut tail).await.expect("read");
        assert_eq!(tail, b"6789");
        let refused = snapshot.write_all(b"x").await.expect_err("a shared snapshot is read-only");
        assert_eq!(refused.kind(), std::io::ErrorKind::Unsupported);
        assert_eq!(snapshot.into_bytes().as_ptr(), bytes.as_ptr(), "no copy is made");
    }

    #[tokio::test]
    async fn the_built_snapshot_and_every_copy_handed_out_share_one_buffer() {
        let dir = tempfile::tempdir().expect("tempdir");
        let shared = StateShared::open(&dir.path().join("state.redb"), crate::history::HistoryLimits::default()).expect("open");
        let mut machine = StateMachine::new(Arc::clone(&shared), crate::log_store::Durability::settled());
        let built = machine.get_snapshot_builder().await.build_snapshot().await.expect("build");
        let current = machine.get_current_snapshot().await.expect("current").expect("a snapshot was built");
        let again = machine.get_current_snapshot().await.expect("current").expect("a snapshot was built");
        assert_eq!(current.meta, built.meta);
        let built = built.snapshot.into_bytes();
        assert!(!built.is_empty());
        assert_eq!(current.snapshot.into_bytes().as_ptr(), built.as_ptr());
        assert_eq!(again.snapshot.into_bytes().as_ptr(), built.as_ptr());
        let data: SnapshotData = serde_json::from_slice(&built).expect("a snapshot parses");
        assert!(data.objects.is_empty());
        shared.close().expect("close");
    }
}

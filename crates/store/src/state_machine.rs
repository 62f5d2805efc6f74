//! The state machine: objects in redb, the cluster revision, and the events it emits.
//!
//! Applies commit without fsync (`Durability::None`): the Raft log is the durable record, and
//! after a crash openraft re-applies committed entries past the last applied id that did reach
//! disk. Before the log is compacted, building a snapshot forces a durable commit here, so no
//! entry is purged from the log while its effect exists only in memory.

use std::io::Cursor;
use std::path::Path;
use std::sync::{Arc, Mutex};

use openraft::storage::{RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, LogId, OptionalSend, RaftSnapshotBuilder, StorageError, StorageIOError,
    StoredMembership,
};
use redb::{Database, Durability, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::command::{Command, CommandResponse, ObjectKey, Precondition, WriteError};
use crate::error::{Error, Result, db};
use crate::history::{Event, EventType, History};
use crate::TypeConfig;

const OBJECTS: TableDefinition<&str, &[u8]> = TableDefinition::new("objects");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("state_meta");
const APPLIED_KEY: &str = "last_applied";
const MEMBERSHIP_KEY: &str = "membership";
const REVISION_KEY: &str = "revision";

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

/// State shared between the state machine (owned by openraft) and the store's readers.
pub struct StateShared {
    database: Database,
    applied: Mutex<Applied>,
    pub(crate) history: Arc<History>,
    snapshot: Mutex<Option<(SnapshotMeta<NodeId, BasicNode>, Vec<u8>)>>,
}

impl StateShared {
    pub fn open(path: &Path, history_limits: crate::history::HistoryLimits) -> Result<Arc<Self>> {
        let database = Database::create(path).map_err(|source| Error::Open { path: path.to_owned(), source })?;
        let write = database.begin_write().map_err(db)?;
        write.open_table(OBJECTS).map_err(db)?;
        write.open_table(META).map_err(db)?;
        write.commit().map_err(db)?;
        let mut applied = Applied::default();
        {
            let read = database.begin_read().map_err(db)?;
            let meta = read.open_table(META).map_err(db)?;
            if let Some(bytes) = meta.get(APPLIED_KEY).map_err(db)? {
                applied.last_applied = serde_json::from_slice(bytes.value())?;
            }
            if let Some(bytes) = meta.get(MEMBERSHIP_KEY).map_err(db)? {
                applied.membership = serde_json::from_slice(bytes.value())?;
            }
            if let Some(bytes) = meta.get(REVISION_KEY).map_err(db)? {
                applied.revision = serde_json::from_slice(bytes.value())?;
            }
        }
        let history = Arc::new(History::new(applied.revision, history_limits));
        Ok(Arc::new(Self { database, applied: Mutex::new(applied), history, snapshot: Mutex::new(None) }))
    }

    fn applied(&self) -> std::sync::MutexGuard<'_, Applied> {
        // Only short, panic-free sections hold this lock.
        self.applied.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The revision of the last applied write.
    pub fn revision(&self) -> u64 {
        self.applied().revision
    }

    pub fn get(&self, key: &ObjectKey) -> Result<Option<Value>> {
        let read = self.database.begin_read().map_err(db)?;
        let objects = read.open_table(OBJECTS).map_err(db)?;
        match objects.get(key.encode().as_str()).map_err(db)? {
            Some(bytes) => Ok(Some(serde_json::from_slice(bytes.value())?)),
            None => Ok(None),
        }
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
        let read = self.database.begin_read().map_err(db)?;
        let objects = read.open_table(OBJECTS).map_err(db)?;
        let meta = read.open_table(META).map_err(db)?;
        let revision: u64 = match meta.get(REVISION_KEY).map_err(db)? {
            Some(bytes) => serde_json::from_slice(bytes.value())?,
            None => 0,
        };
        let start = start_after.map(str::to_owned).unwrap_or_else(|| prefix.to_owned());
        let mut items = Vec::new();
        let mut continue_after = None;
        let bounds = (std::ops::Bound::Included(start.as_str()), std::ops::Bound::Unbounded);
        for row in objects.range::<&str>(bounds).map_err(db)? {
            let (key, bytes) = row.map_err(db)?;
            let key = key.value();
            if !key.starts_with(prefix) {
                break;
            }
            if Some(key) == start_after {
                continue;
            }
            let object: Value = serde_json::from_slice(bytes.value())?;
            if !filter(&object) {
                continue;
            }
            if limit.is_some_and(|limit| items.len() >= limit) {
                continue_after = Some(last_key(&items, prefix));
                break;
            }
            items.push(object);
        }
        Ok((items, revision, continue_after))
    }
}

/// The encoded key of the last listed object (for continue tokens).
fn last_key(items: &[Value], prefix: &str) -> String {
    let name = items.last().and_then(|object| object["metadata"]["name"].as_str()).unwrap_or_default();
    let namespace = items.last().and_then(|object| object["metadata"]["namespace"].as_str()).unwrap_or_default();
    let resource = prefix.split('/').next().unwrap_or_default();
    ObjectKey::new(resource, namespace, name).encode()
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
}

impl StateMachine {
    pub fn new(shared: Arc<StateShared>) -> Self {
        Self { shared }
    }
}

fn execute(
    objects: &mut redb::Table<&str, &[u8]>,
    revision: &mut u64,
    command: Command,
    events: &mut Vec<Event>,
) -> Result<CommandResponse> {
    let encoded = command.key().encode();
    let current: Option<Value> = match objects.get(encoded.as_str()).map_err(db)? {
        Some(bytes) => Some(serde_json::from_slice(bytes.value())?),
        None => None,
    };
    let (key, mut object, event_type) = match command {
        Command::Create { key, object } => {
            if current.is_some() {
                return Ok(CommandResponse::Rejected(WriteError::AlreadyExists));
            }
            (key, object, EventType::Added)
        }
        Command::Update { key, object, precondition } => {
            let Some(current) = current else { return Ok(CommandResponse::Rejected(WriteError::NotFound)) };
            if let Err(error) = check_precondition(&current, &precondition) {
                return Ok(CommandResponse::Rejected(error));
            }
            (key, object, EventType::Modified)
        }
        Command::Delete { key, precondition } => {
            let Some(current) = current else { return Ok(CommandResponse::Rejected(WriteError::NotFound)) };
            if let Err(error) = check_precondition(&current, &precondition) {
                return Ok(CommandResponse::Rejected(error));
            }
            (key, current, EventType::Deleted)
        }
    };
    *revision += 1;
    stamp(&mut object, *revision);
    if event_type == EventType::Deleted {
        objects.remove(encoded.as_str()).map_err(db)?;
    } else {
        let bytes = serde_json::to_vec(&object)?;
        objects.insert(encoded.as_str(), bytes.as_slice()).map_err(db)?;
    }
    let object = Arc::new(object);
    events.push(Event { revision: *revision, event_type, key, object: Arc::clone(&object) });
    Ok(CommandResponse::Written { revision: *revision, object: Arc::unwrap_or_clone(object) })
}

fn io_error(error: Error) -> StorageError<NodeId> {
    StorageIOError::write_state_machine(&std::io::Error::other(error.to_string())).into()
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId<NodeId>>, Membership), StorageError<NodeId>> {
        let applied = self.shared.applied();
        Ok((applied.last_applied, applied.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut applied = self.shared.applied().clone();
        let mut responses = Vec::new();
        let mut events = Vec::new();
        let result: Result<()> = (|| {
            let mut write = self.shared.database.begin_write().map_err(db)?;
            write.set_durability(Durability::None).map_err(db)?;
            {
                let mut objects = write.open_table(OBJECTS).map_err(db)?;
                let mut meta = write.open_table(META).map_err(db)?;
                for entry in entries {
                    applied.last_applied = Some(entry.log_id);
                    let response = match entry.payload {
                        EntryPayload::Blank => CommandResponse::None,
                        EntryPayload::Normal(command) => {
                            execute(&mut objects, &mut applied.revision, command, &mut events)?
                        }
                        EntryPayload::Membership(membership) => {
                            applied.membership = StoredMembership::new(Some(entry.log_id), membership);
                            CommandResponse::None
                        }
                    };
                    responses.push(response);
                }
                meta.insert(APPLIED_KEY, serde_json::to_vec(&applied.last_applied)?.as_slice()).map_err(db)?;
                meta.insert(MEMBERSHIP_KEY, serde_json::to_vec(&applied.membership)?.as_slice()).map_err(db)?;
                meta.insert(REVISION_KEY, serde_json::to_vec(&applied.revision)?.as_slice()).map_err(db)?;
            }
            write.commit().map_err(db)?;
            Ok(())
        })();
        result.map_err(io_error)?;
        *self.shared.applied() = applied;
        self.shared.history.record(events);
        Ok(responses)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder { shared: Arc::clone(&self.shared) }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let bytes = snapshot.into_inner();
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
                let mut table = write.open_table(META).map_err(db)?;
                table.insert(APPLIED_KEY, serde_json::to_vec(&data.last_applied)?.as_slice()).map_err(db)?;
                table.insert(MEMBERSHIP_KEY, serde_json::to_vec(&data.membership)?.as_slice()).map_err(db)?;
                table.insert(REVISION_KEY, serde_json::to_vec(&data.revision)?.as_slice()).map_err(db)?;
            }
            write.commit().map_err(db)?;
            Ok(())
        })();
        result.map_err(io_error)?;
        *self.shared.applied() =
            Applied { last_applied: data.last_applied, membership: data.membership, revision: data.revision };
        self.shared.history.reset(data.revision);
        *self.shared.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), bytes));
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let guard = self.shared.snapshot.lock().unwrap_or_else(|p| p.into_inner());
        Ok(guard
            .as_ref()
            .map(|(meta, bytes)| Snapshot { meta: meta.clone(), snapshot: Box::new(Cursor::new(bytes.clone())) }))
    }
}

/// Builds snapshots from a consistent read of the object table.
pub struct SnapshotBuilder {
    shared: Arc<StateShared>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let result: Result<(SnapshotData, Vec<u8>)> = (|| {
            // Make every earlier non-durable apply durable before openraft may purge the log
            // entries that produced it.
            let mut flush = self.shared.database.begin_write().map_err(db)?;
            flush.set_durability(Durability::Immediate).map_err(db)?;
            flush.commit().map_err(db)?;
            let read = self.shared.database.begin_read().map_err(db)?;
            let objects_table = read.open_table(OBJECTS).map_err(db)?;
            let meta = read.open_table(META).map_err(db)?;
            let decode = |key: &str| -> Result<Option<Vec<u8>>> {
                Ok(meta.get(key).map_err(db)?.map(|bytes| bytes.value().to_vec()))
            };
            let last_applied = match decode(APPLIED_KEY)? {
                Some(bytes) => serde_json::from_slice(&bytes)?,
                None => None,
            };
            let membership = match decode(MEMBERSHIP_KEY)? {
                Some(bytes) => serde_json::from_slice(&bytes)?,
                None => Membership::default(),
            };
            let revision = match decode(REVISION_KEY)? {
                Some(bytes) => serde_json::from_slice(&bytes)?,
                None => 0,
            };
            let mut objects = Vec::new();
            for row in objects_table.range::<&str>(..).map_err(db)? {
                let (key, bytes) = row.map_err(db)?;
                objects.push((key.value().to_owned(), serde_json::from_slice(bytes.value())?));
            }
            let data = SnapshotData { last_applied, membership, revision, objects };
            let bytes = serde_json::to_vec(&data)?;
            Ok((data, bytes))
        })();
        let (data, bytes) = result.map_err(|e| StorageIOError::read_state_machine(&std::io::Error::other(e.to_string())))?;
        let snapshot_id = match data.last_applied {
            Some(log_id) => format!("{}-{}-{}", log_id.leader_id.term, log_id.index, data.revision),
            None => format!("0-0-{}", data.revision),
        };
        let meta = SnapshotMeta { last_log_id: data.last_applied, last_membership: data.membership, snapshot_id };
        *self.shared.snapshot.lock().unwrap_or_else(|p| p.into_inner()) = Some((meta.clone(), bytes.clone()));
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(bytes)) })
    }
}

//! The commands replicated through Raft and the state machine's answers to them.

use std::sync::Arc;

use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;
use serde_json::value::RawValue;

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

/// A log entry's command, shared and encoded at most once. openraft clones an entry for every
/// AppendEntries it sends and every read of the log, and encodes it for the log file and for
/// each follower: with the command behind an `Arc` a clone is a reference count, and its JSON is
/// made on first use and copied from then on. An entry decoded from JSON (a follower's
/// AppendEntries, a log read back from disk) keeps the bytes it came from, so a follower writes
/// them to its log without encoding the command again.
///
/// Such an entry is decoded into a [`Command`] only when it is applied, not when it arrives: a
/// follower's AppendEntries is on every write's path to its commit, and building the objects of
/// a batch of writes there was most of that request's decoding. Only the JSON's syntax is
/// checked on arrival; a command whose JSON does not describe a `Command` (which a leader never
/// sends) fails when it is applied, as a corrupt entry read back from disk does.
///
/// Applying an entry takes the command out ([`LoggedCommand::take`]) instead of copying it: a
/// leader still holds the entry for a follower that has not matched it yet, and from then on
/// sends it from its encoding.
///
/// It serialises only through `serde_json`, which is all the log and the Raft transport use.
#[derive(Clone)]
pub struct LoggedCommand(Arc<Logged>);

struct Logged {
    command: std::sync::Mutex<Slot>,
    encoded: std::sync::OnceLock<Box<RawValue>>,
}

/// Where a logged command's decoded form is.
enum Slot {
    /// Proposed here, or decoded.
    Decoded(Command),
    /// Received as JSON (`encoded` holds it) and not decoded yet.
    Undecoded,
    /// Taken by the state machine.
    Taken,
}

impl LoggedCommand {
    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        // Only moves happen under this lock: nothing panics while it is held.
        self.0.command.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The command, moved out, or decoded from its encoding if it arrived as JSON (or was taken
    /// before, which applying each entry once never does).
    pub fn take(&self) -> serde_json::Result<Command> {
        if let Slot::Decoded(command) = std::mem::replace(&mut *self.slot(), Slot::Taken) {
            return Ok(command);
        }
        serde_json::from_str(self.encoded()?.get())
    }

    /// The command's JSON, made on the first call (which the log's append is, before anything
    /// could take the command).
    fn encoded(&self) -> serde_json::Result<&RawValue> {
        if let Some(raw) = self.0.encoded.get() {
            return Ok(raw);
        }
        let raw = match &*self.slot() {
            Slot::Decoded(command) => serde_json::value::to_raw_value(command)?,
            Slot::Undecoded | Slot::Taken => {
                return Err(serde_json::Error::io(std::io::Error::other("a log entry's command was applied before it was encoded")));
            }
        };
        Ok(self.0.encoded.get_or_init(|| raw))
    }
}

impl From<Command> for LoggedCommand {
    fn from(command: Command) -> Self {
        Self(Arc::new(Logged { command: std::sync::Mutex::new(Slot::Decoded(command)), encoded: std::sync::OnceLock::new() }))
    }
}

impl std::fmt::Debug for LoggedCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.slot() {
            Slot::Decoded(command) => command.fmt(f),
            Slot::Undecoded => write!(f, "(not decoded yet, {} bytes)", self.0.encoded.get().map_or(0, |raw| raw.get().len())),
            Slot::Taken => f.write_str("(applied)"),
        }
    }
}

impl Serialize for LoggedCommand {
    fn serialize<S: Serializer>(&self, serializer: S) -> std::result::Result<S::Ok, S::Error> {
        self.encoded().map_err(S::Error::custom)?.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for LoggedCommand {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        Ok(Self(Arc::new(Logged { command: std::sync::Mutex::new(Slot::Undecoded), encoded: std::sync::OnceLock::from(raw) })))
    }
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



#[cfg(test)]
mod tests {
    use super::*;

    fn create(name: &str) -> Command {
        Command::Create { key: ObjectKey::new("configmaps", "default", name), object: serde_json::json!({"metadata": {"name": name}, "data": {"k": "v"}}) }
    }

    #[test]
    fn a_logged_command_encodes_as_the_plain_command_does() {
        // Logs written before commands were shared hold plain commands: the format is the same.
        let command = create("a");
        let logged = LoggedCommand::from(command.clone());
        let plain = serde_json::to_string(&command).expect("encode");
        assert_eq!(serde_json::to_string(&logged).expect("encode"), plain);
        assert_eq!(serde_json::to_string(&logged.clone()).expect("encode again, from the kept encoding"), plain);
        let decoded: LoggedCommand = serde_json::from_str(&plain).expect("decode");
        assert!(matches!(decoded.take().expect("take"), Command::Create { key, .. } if key.name == "a"));
    }

    #[test]
    fn a_decoded_command_keeps_the_bytes_it_came_from() {
        // Spacing a fresh encoding would not produce: encoding it again copies these bytes.
        let text = r#"{"Create": {"key": {"resource": "configmaps", "namespace": "default", "name": "b"}, "object": {"data": {}}}}"#;
        let decoded: LoggedCommand = serde_json::from_str(text).expect("decode");
        assert_eq!(serde_json::to_string(&decoded).expect("encode"), text);
        // Inside a message decoded from bytes, as a follower's AppendEntries is.
        #[derive(Deserialize)]
        struct Message {
            entries: Vec<LoggedCommand>,
        }
        let message: Message = serde_json::from_slice(format!(r#"{{"entries": [{text}, {text}]}}"#).as_bytes()).expect("decode");
        assert_eq!(message.entries.len(), 2);
        assert_eq!(serde_json::to_string(&message.entries[1]).expect("encode"), text);
    }

    #[test]
    fn a_received_command_is_decoded_when_it_is_taken() {
        let text = serde_json::to_string(&create("e")).expect("encode");
        let received: LoggedCommand = serde_json::from_str(&text).expect("decode");
        assert_eq!(format!("{received:?}"), format!("(not decoded yet, {} bytes)", text.len()));
        let held = received.clone();
        assert!(matches!(received.take().expect("take"), Command::Create { key, .. } if key.name == "e"));
        assert_eq!(format!("{held:?}"), "(applied)");
        assert_eq!(serde_json::to_string(&held).expect("still encodes"), text);
    }

    #[test]
    fn a_command_that_does_not_decode_is_an_error() {
        // Not JSON: refused on arrival.
        let error = serde_json::from_str::<LoggedCommand>(r#"{"Create": {"key": 5"#).expect_err("not JSON");
        assert!(error.to_string().contains("EOF"), "{error}");
        // JSON that is not a command: refused when it is applied.
        let received = serde_json::from_str::<LoggedCommand>(r#"{"Create": {"key": 5}}"#).expect("JSON");
        let error = received.take().expect_err("not a command");
        assert!(error.to_string().contains("invalid type"), "{error}");
    }

    #[test]
    fn applying_takes_the_command_and_its_holders_still_encode_it() {
        let logged = LoggedCommand::from(create("c"));
        let encoded = serde_json::to_string(&logged).expect("encode, as the log's append does");
        let held = logged.clone();
        assert!(matches!(logged.take().expect("take"), Command::Create { key, .. } if key.name == "c"));
        assert_eq!(format!("{held:?}"), "(applied)");
        assert_eq!(serde_json::to_string(&held).expect("a held copy still encodes"), encoded);
        // Taken twice (never done), it is decoded again.
        assert!(matches!(held.take().expect("take again"), Command::Create { key, .. } if key.name == "c"));
    }

    #[test]
    fn a_command_taken_before_it_was_encoded_cannot_be_encoded() {
        let logged = LoggedCommand::from(create("d"));
        logged.take().expect("take");
        let error = serde_json::to_string(&logged).expect_err("nothing to encode");
        assert!(error.to_string().contains("applied before it was encoded"), "{error}");
        assert!(logged.take().is_err());
    }
}

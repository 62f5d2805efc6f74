//! Watch events handed over in-process. A controller, the scheduler or the local node agent in
//! the API server's own process would otherwise get every event encoded as a JSON line only to
//! decode it again into the same object. A watch request carrying [`WantObjects`] is answered
//! with [`ObjectEvents`] instead: the stored objects themselves, shared rather than copied, in
//! the order and with the filtering a JSON watch has, and an empty body.

use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures_core::Stream;
use serde_json::Value;

/// A request extension: the caller runs in the API server's process and takes a watch's
/// events as objects (an [`ObjectEvents`] response extension).
#[derive(Debug, Clone, Copy)]
pub struct WantObjects;

/// One watch event handed over in-process: `ADDED`, `MODIFIED`, `DELETED`, `BOOKMARK` or
/// `ERROR` (a `Status`), as on the wire.
#[derive(Debug, Clone)]
pub struct ObjectEvent {
    pub event_type: &'static str,
    pub object: Arc<Value>,
}

/// The stream of a watch's events, ending when the watch does.
pub type ObjectStream = Pin<Box<dyn Stream<Item = ObjectEvent> + Send>>;

/// A response extension answering [`WantObjects`]. (Extensions must be `Clone` and `Sync`,
/// hence the shared slot; the one receiver takes the stream out.)
#[derive(Clone)]
pub struct ObjectEvents(Arc<Mutex<Option<ObjectStream>>>);

impl ObjectEvents {
    pub fn new(stream: ObjectStream) -> Self {
        Self(Arc::new(Mutex::new(Some(stream))))
    }

    /// The stream, the first time it is asked for.
    pub fn take(&self) -> Option<ObjectStream> {
        self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take()
    }
}

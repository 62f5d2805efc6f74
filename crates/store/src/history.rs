//! The bounded watch history: recent change events in revision order, and watchers over it.
//!
//! The state machine appends one [`Event`] per applied write. A watch that resumes from revision
//! `r` replays every event after `r` and then follows new ones; if events after `r` have already
//! been evicted it gets [`WatchError::Expired`], which the API turns into 410 Gone.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::watch;

use crate::ObjectKey;

/// What happened to an object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One change, as watchers see it. For `Deleted`, `object` is the last state stamped with the
/// deletion's revision.
#[derive(Clone, Debug)]
pub struct Event {
    pub revision: u64,
    pub event_type: EventType,
    pub key: ObjectKey,
    pub object: Arc<Value>,
    /// For a modification, the object before it: a watch with selectors turns a modification
    /// that leaves (or enters) its selection into DELETED (or ADDED), as kube-apiserver does.
    pub previous: Option<Arc<Value>>,
    /// The event as the API sends it on watches, encoded once by the first watcher that needs it
    /// and shared by every other (a pod event goes to many watchers).
    pub encoded: Arc<std::sync::OnceLock<bytes::Bytes>>,
}

impl Event {
    pub fn new(revision: u64, event_type: EventType, key: ObjectKey, object: Arc<Value>, previous: Option<Arc<Value>>) -> Self {
        Self { revision, event_type, key, object, previous, encoded: Arc::default() }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WatchError {
    #[error("too old resource version: {requested} ({oldest})")]
    Expired { requested: u64, oldest: u64 },
}

/// How much history to keep: an event stays while it is among the newest `min_events` or younger
/// than `min_age`, but never beyond `max_events`.
#[derive(Clone, Debug)]
pub struct HistoryLimits {
    pub min_events: usize,
    pub min_age: Duration,
    pub max_events: usize,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        Self { min_events: 10_000, min_age: Duration::from_secs(300), max_events: 200_000 }
    }
}

struct Inner {
    events: VecDeque<(Instant, Event)>,
    /// Every event with a revision greater than this one is still in `events`.
    complete_after: u64,
}

/// Shared between the state machine (which records) and watchers (which read).
pub struct History {
    inner: Mutex<Inner>,
    limits: HistoryLimits,
    latest: watch::Sender<u64>,
}

impl History {
    pub fn new(current_revision: u64, limits: HistoryLimits) -> Self {
        let (latest, _) = watch::channel(current_revision);
        Self {
            inner: Mutex::new(Inner { events: VecDeque::new(), complete_after: current_revision }),
            limits,
            latest,
        }
    }

    /// Records events of one applied batch and wakes watchers once.
    pub fn record(&self, events: Vec<Event>) {
        let Some(last_revision) = events.last().map(|event| event.revision) else { return };
        let now = Instant::now();
        {
            let mut inner = self.lock();
            for event in events {
                inner.events.push_back((now, event));
            }
            while let Some((recorded_at, front)) = inner.events.front() {
                let len = inner.events.len();
                let evict = len > self.limits.max_events
                    || (len > self.limits.min_events && now.duration_since(*recorded_at) > self.limits.min_age);
                if !evict {
                    break;
                }
                let revision = front.revision;
                inner.events.pop_front();
                inner.complete_after = revision;
            }
        }
        self.latest.send_replace(last_revision);
    }

    /// Forgets everything (after a snapshot replaced the state); watches must re-list.
    pub fn reset(&self, current_revision: u64) {
        {
            let mut inner = self.lock();
            inner.events.clear();
            inner.complete_after = current_revision;
        }
        self.latest.send_replace(current_revision);
    }

    /// Starts a watch that yields every event after `after_revision`.
    pub fn watch(self: &Arc<Self>, after_revision: u64) -> Result<Watcher, WatchError> {
        let receiver = self.latest.subscribe();
        self.check(after_revision)?;
        Ok(Watcher { history: Arc::clone(self), last_revision: after_revision, receiver, resource: None })
    }

    fn check(&self, after_revision: u64) -> Result<(), WatchError> {
        let inner = self.lock();
        if after_revision < inner.complete_after {
            return Err(WatchError::Expired { requested: after_revision, oldest: inner.complete_after });
        }
        Ok(())
    }

    /// Up to `max` events after `after_revision` (of `resource` only, when given), and the last
    /// revision looked at, so a watcher of a quiet resource still moves forward.
    fn events_after(&self, after_revision: u64, max: usize, resource: Option<&str>) -> Result<(Vec<Event>, Option<u64>), WatchError> {
        let inner = self.lock();
        if after_revision < inner.complete_after {
            return Err(WatchError::Expired { requested: after_revision, oldest: inner.complete_after });
        }
        let start = inner.events.partition_point(|(_, event)| event.revision <= after_revision);
        let mut events = Vec::new();
        let mut last = None;
        // Other resources' events are skipped without being cloned; the scan is bounded so the
        // lock is held briefly.
        for (_, event) in inner.events.range(start..).take(max * 16) {
            last = Some(event.revision);
            if resource.is_none_or(|r| event.key.resource == r) {
                events.push(event.clone());
                if events.len() >= max {
                    break;
                }
            }
        }
        Ok((events, last))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock would be a bug in the few lines above; the data stays
        // consistent in that case, so recover the guard rather than poisoning every watcher.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// A resumable position in the history.
pub struct Watcher {
    history: Arc<History>,
    last_revision: u64,
    receiver: watch::Receiver<u64>,
    resource: Option<String>,
}

impl Watcher {
    /// Only events of `resource` (its group-resource key part) from now on.
    pub fn only(mut self, resource: impl Into<String>) -> Self {
        self.resource = Some(resource.into());
        self
    }

    /// Waits for the next events after the last one returned (at most 1,000 at a time).
    pub async fn next_batch(&mut self) -> Result<Vec<Event>, WatchError> {
        loop {
            let (events, scanned) = self.history.events_after(self.last_revision, 1000, self.resource.as_deref())?;
            if let Some(last) = scanned {
                self.last_revision = last;
                if !events.is_empty() {
                    return Ok(events);
                }
                continue;
            }
            if self.receiver.changed().await.is_err() {
                // The store shut down: no more events will come.
                std::future::pending::<()>().await;
            }
        }
    }

    pub fn last_revision(&self) -> u64 {
        self.last_revision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(revision: u64) -> Event {
        Event {
            encoded: Arc::default(),
            revision,
            event_type: EventType::Added,
            key: ObjectKey::new("pods", "default", format!("p{revision}")),
            object: Arc::new(Value::Null),
            previous: None,
        }
    }

    #[tokio::test]
    async fn watch_replays_exactly_the_later_events() {
        let history = Arc::new(History::new(0, HistoryLimits::default()));
        history.record((1..=5).map(event).collect());
        let mut watcher = history.watch(3).expect("revision 3 is retained");
        let revisions: Vec<u64> = watcher.next_batch().await.expect("events").iter().map(|e| e.revision).collect();
        assert_eq!(revisions, vec![4, 5]);
        history.record(vec![event(6)]);
        let revisions: Vec<u64> = watcher.next_batch().await.expect("events").iter().map(|e| e.revision).collect();
        assert_eq!(revisions, vec![6]);
    }

    #[test]
    fn evicted_revisions_are_expired() {
        let limits = HistoryLimits { min_events: 2, min_age: Duration::ZERO, max_events: 3 };
        let history = Arc::new(History::new(0, limits));
        history.record((1..=10).map(event).collect());
        assert!(history.watch(8).is_ok());
        assert_eq!(history.watch(2).err(), Some(WatchError::Expired { requested: 2, oldest: 7 }));
    }

    #[test]
    fn young_events_outlive_the_minimum_count() {
        let limits = HistoryLimits { min_events: 2, min_age: Duration::from_secs(3600), max_events: 100 };
        let history = Arc::new(History::new(0, limits));
        history.record((1..=10).map(event).collect());
        assert!(history.watch(0).is_ok(), "events younger than min_age are kept beyond min_events");
    }
}

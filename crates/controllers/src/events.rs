//! The event recorder: controllers report decisions as `v1` Events, aggregated like kubelet's
//! and kube-controller-manager's (one Event per object, reason and message, whose `count` and
//! `lastTimestamp` grow on repeats). Recording never blocks a reconcile: events go through a
//! bounded channel to one writer task, and are dropped (with a debug log) if it falls behind.

use std::collections::HashMap;

use serde_json::{Value, json};
use shoal_api::{meta, resources};
use shoal_client::Client;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One event to record about `object`.
#[derive(Debug, Clone)]
pub struct EventRecord {
    pub object: ObjectReference,
    pub warning: bool,
    pub reason: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ObjectReference {
    pub api_version: String,
    pub kind: String,
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl ObjectReference {
    pub fn of(api_version: &str, kind: &str, object: &Value) -> Self {
        Self {
            api_version: api_version.into(),
            kind: kind.into(),
            namespace: meta::namespace(object).into(),
            name: meta::name(object).into(),
            uid: meta::uid(object).into(),
        }
    }
}

#[derive(Clone)]
pub struct Recorder {
    sender: mpsc::Sender<EventRecord>,
}

impl Recorder {
    pub fn normal(&self, object: ObjectReference, reason: &str, message: impl Into<String>) {
        self.send(EventRecord { object, warning: false, reason: reason.into(), message: message.into() });
    }

    pub fn warning(&self, object: ObjectReference, reason: &str, message: impl Into<String>) {
        self.send(EventRecord { object, warning: true, reason: reason.into(), message: message.into() });
    }

    fn send(&self, record: EventRecord) {
        if let Err(error) = self.sender.try_send(record) {
            tracing::debug!(%error, "event dropped: the recorder is behind");
        }
    }

    /// A recorder and the task that writes its events as `component`, until `shutdown`.
    pub fn start(client: Client, component: &'static str, shutdown: CancellationToken) -> (Self, impl std::future::Future<Output = ()> + Send) {
        let (sender, receiver) = mpsc::channel(4096);
        (Self { sender }, write_events(client, component, receiver, shutdown))
    }
}

async fn write_events(client: Client, component: &'static str, mut receiver: mpsc::Receiver<EventRecord>, shutdown: CancellationToken) {
    let events = resources::by_name("events").expect("events are served");
    // (object uid, reason, message) → (event name, count). Bounded: cleared when large.
    let mut seen: HashMap<(String, String, String), (String, i64)> = HashMap::new();
    loop {
        let record = tokio::select! {
            record = receiver.recv() => match record { Some(record) => record, None => return },
            _ = shutdown.cancelled() => return,
        };
        let now = jiff::Timestamp::now();
        let stamp = meta::format_time(now);
        let key = (record.object.uid.clone(), record.reason.clone(), record.message.clone());
        if let Some((name, count)) = seen.get_mut(&key) {
            let patch = json!({"count": *count + 1, "lastTimestamp": stamp});
            if client.patch(events, Some(&record.object.namespace), name, &patch, true, component).await.is_ok() {
                *count += 1;
                continue;
            }
        }
        if seen.len() > 10_000 {
            seen.clear();
        }
        let namespace = if record.object.namespace.is_empty() { "default".to_owned() } else { record.object.namespace.clone() };
        let name = format!("{}.{:x}", record.object.name, now.as_nanosecond() as u64 ^ rand::random::<u64>() >> 16);
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": name, "namespace": namespace},
            "involvedObject": {"apiVersion": record.object.api_version, "kind": record.object.kind, "namespace": record.object.namespace, "name": record.object.name, "uid": record.object.uid},
            "reason": record.reason, "message": record.message,
            "type": if record.warning { "Warning" } else { "Normal" },
            "source": {"component": component},
            "reportingComponent": component, "reportingInstance": component,
            "firstTimestamp": stamp, "lastTimestamp": stamp, "count": 1,
        });
        match client.create(events, Some(&namespace), &event, component).await {
            Ok(_) => {
                seen.insert(key, (name, 1));
            }
            Err(error) => tracing::debug!(%error, "recording an event"),
        }
    }
}

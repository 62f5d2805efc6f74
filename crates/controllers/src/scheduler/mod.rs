//! The scheduler: binds pending pods to nodes through the `binding` subresource. One task owns
//! the scheduling cache (nodes, and the pods placed on them, including pods it has assumed but
//! whose binding is still in flight); informer handlers feed it changes over a channel, and
//! bindings run concurrently. The decision itself is [`placement::place`], a pure function.

pub mod images;
pub mod placement;

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_api::meta;
use shoal_client::Client;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::events::{ObjectReference, Recorder};
use crate::informer::{Informer, object_key};
use images::{ImageKinds, Verdict};
use placement::{NodeView, PodView, Resources, Runtime};

/// The scheduler names pods may ask for (`spec.schedulerName`).
pub const SCHEDULER_NAMES: &[&str] = &["default-scheduler", "shoal-scheduler"];
/// Bindings sent and not yet answered. Each waits for its Raft commit, behind the other writes
/// of the moment (the nodes' status patches, events), so this bounds placements/s at about
/// `BINDINGS_IN_FLIGHT / commit latency`: 64 capped a backlog of 10,000 pods at about 5,000/s
/// (benches/RESULTS.md, session 15). kube-scheduler bounds its binding goroutines only by its
/// client's rate limit.
const BINDINGS_IN_FLIGHT: usize = 1024;
/// How often unschedulable pods are retried even if nothing changed.
const UNSCHEDULABLE_RETRY: Duration = Duration::from_secs(30);

enum Change {
    Node(Option<Arc<Value>>, String),
    Pod(Option<Arc<Value>>, String),
    Bound { key: String, node: String, outcome: Result<(), String> },
    /// An image resolved to a container image (true), Wasm (false), or not at all (None).
    Image { reference: String, container: Option<bool> },
}

/// A pod the scheduler should place: unbound, not terminating, not finished, and ours.
pub fn wants_scheduling(pod: &Value) -> bool {
    let unbound = pod["spec"]["nodeName"].as_str().is_none_or(str::is_empty);
    let ours = pod["spec"]["schedulerName"].as_str().is_none_or(|n| SCHEDULER_NAMES.contains(&n));
    let finished = matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"));
    unbound && ours && !finished && pod["metadata"]["deletionTimestamp"].is_null()
}

/// Whether a bound pod still holds node resources (finished pods do not).
fn holds_resources(pod: &Value) -> bool {
    !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed"))
}

struct Cache {
    nodes: Vec<NodeView>,
    node_index: HashMap<String, usize>,
    /// Pod key → (node, requests) for every pod counted on a node.
    placed: HashMap<String, (String, Resources)>,
    /// Placed pods whose node is not known yet (the node registers later).
    orphaned: HashMap<String, (String, Resources, placement::PlacedPod)>,
    pending: VecDeque<String>,
    pending_set: BTreeSet<String>,
    /// Pods that fit nowhere, with the message last reported.
    unschedulable: HashMap<String, String>,
    /// Pods whose binding is in flight.
    binding: BTreeSet<String>,
    rotation: usize,
    /// Whether every node runs containers (None: nodes changed since it was worked out).
    containers_everywhere: Option<bool>,
}

impl Cache {
    fn new() -> Self {
        Self {
            nodes: Vec::new(),
            node_index: HashMap::new(),
            placed: HashMap::new(),
            orphaned: HashMap::new(),
            pending: VecDeque::new(),
            pending_set: BTreeSet::new(),
            unschedulable: HashMap::new(),
            binding: BTreeSet::new(),
            rotation: 0,
            containers_everywhere: None,
        }
    }

    fn enqueue(&mut self, key: String) {
        if !self.binding.contains(&key) && self.pending_set.insert(key.clone()) {
            self.pending.push_back(key);
        }
    }

    fn retry_unschedulable(&mut self) {
        let keys: Vec<String> = self.unschedulable.keys().cloned().collect();
        for key in keys {
            self.enqueue(key);
        }
    }

    fn unplace(&mut self, key: &str) {
        if let Some((node, requests)) = self.placed.remove(key)
            && let Some(&index) = self.node_index.get(&node)
        {
            let view = &mut self.nodes[index];
            view.requested.subtract(&requests);
            view.remove_pod(key);
        }
        self.orphaned.remove(key);
    }

    fn place_on(&mut self, key: &str, node: &str, pod: &PodView) {
        self.unplace(key);
        let mut placed = pod.placed();
        placed.key = key.to_owned();
        match self.node_index.get(node) {
            Some(&index) => {
                let view = &mut self.nodes[index];
                view.requested.add(&pod.requests);
                view.add_pod(placed);
                self.placed.insert(key.to_owned(), (node.to_owned(), pod.requests));
            }
            None => {
                self.orphaned.insert(key.to_owned(), (node.to_owned(), pod.requests, placed));
            }
        }
    }

    fn node_changed(&mut self, name: &str, node: Option<&Value>) {
        self.containers_everywhere = None;
        match (node, self.node_index.get(name).copied()) {
            (Some(node), Some(index)) => {
                let mut view = NodeView::from_node(node);
                let old = &mut self.nodes[index];
                view.requested = old.requested;
                view.pods = std::mem::take(&mut old.pods);
                view.anti_affinity_pods = old.anti_affinity_pods;
                *old = view;
            }
            (Some(node), None) => {
                let view = NodeView::from_node(node);
                self.node_index.insert(name.to_owned(), self.nodes.len());
                self.nodes.push(view);
                // Pods already bound to this node count now.
                let waiting: Vec<String> = self.orphaned.iter().filter(|(_, (n, _, _))| n == name).map(|(k, _)| k.clone()).collect();
                for key in waiting {
                    if let Some((node, requests, placed)) = self.orphaned.remove(&key)
                        && let Some(&index) = self.node_index.get(&node)
                    {
                        self.nodes[index].requested.add(&requests);
                        self.nodes[index].add_pod(placed);
                        self.placed.insert(key, (node, requests));
                    }
                }
            }
            (None, Some(index)) => {
                let removed = self.nodes.swap_remove(index);
                self.node_index.remove(name);
                if index < self.nodes.len() {
                    let moved = self.nodes[index].name.clone();
                    self.node_index.insert(moved, index);
                }
                for placed in removed.pods {
                    if let Some((node, requests)) = self.placed.remove(&placed.key) {
                        self.orphaned.insert(placed.key.clone(), (node, requests, placed));
                    }
                }
            }
            (None, None) => {}
        }
        self.retry_unschedulable();
    }

    fn pod_changed(&mut self, key: &str, pod: Option<&Value>) {
        let Some(pod) = pod else {
            self.unplace(key);
            self.unschedulable.remove(key);
            if self.pending_set.remove(key) {
                self.pending.retain(|k| k != key);
            }
            self.retry_unschedulable();
            return;
        };
        match pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            Some(node) => {
                self.unschedulable.remove(key);
                if self.pending_set.remove(key) {
                    self.pending.retain(|k| k != key);
                }
                if holds_resources(pod) {
                    let already = self.placed.get(key).is_some_and(|(n, _)| n == node);
                    if !already {
                        self.place_on(key, node, &PodView::from_pod(pod));
                    }
                } else if self.placed.contains_key(key) || self.orphaned.contains_key(key) {
                    self.unplace(key);
                    self.retry_unschedulable();
                }
            }
            None if wants_scheduling(pod)
                && !self.unschedulable.contains_key(key) => {
                    self.enqueue(key.to_owned());
                }
            None => {}
        }
    }
}

/// Runs the scheduler until `shutdown`.
pub async fn run(client: Client, pods: Arc<Informer>, nodes: Arc<Informer>, recorder: Recorder, shutdown: CancellationToken) {
    let (sender, mut receiver) = mpsc::unbounded_channel::<Change>();
    {
        let sender = sender.clone();
        nodes.on_change(Box::new(move |old, new| {
            let name = new.or(old).map(|n| meta::name(n).to_owned()).unwrap_or_default();
            let _ = sender.send(Change::Node(new.cloned(), name));
        }));
    }
    {
        let sender = sender.clone();
        pods.on_change(Box::new(move |old, new| {
            let key = new.or(old).map(|p| object_key(p)).unwrap_or_default();
            let _ = sender.send(Change::Pod(new.cloned(), key));
        }));
    }
    // Informers that stop before their first list never sync: wait for shutdown too.
    tokio::select! {
        _ = async { nodes.synced().await; pods.synced().await } => {}
        _ = shutdown.cancelled() => return,
    }
    let mut cache = Cache::new();
    for node in nodes.list() {
        cache.node_changed(meta::name(&node), Some(&node));
    }
    for pod in pods.list() {
        cache.pod_changed(&object_key(&pod), Some(&pod));
    }
    let mut kinds = ImageKinds::default();
    let bindings = Arc::new(Semaphore::new(BINDINGS_IN_FLIGHT));
    let mut retry = tokio::time::interval(UNSCHEDULABLE_RETRY);
    retry.tick().await;
    loop {
        // Take in every change first, so placements see the newest state.
        while let Ok(change) = receiver.try_recv() {
            apply(&mut cache, &mut kinds, &pods, &recorder, change);
        }
        let Some(key) = cache.pending.pop_front() else {
            tokio::select! {
                change = receiver.recv() => {
                    if let Some(change) = change {
                        apply(&mut cache, &mut kinds, &pods, &recorder, change);
                    }
                }
                _ = retry.tick() => cache.retry_unschedulable(),
                _ = shutdown.cancelled() => return,
            }
            continue;
        };
        cache.pending_set.remove(&key);
        let Some(pod) = pods.get(&key).filter(|p| wants_scheduling(p)) else { continue };
        let mut view = PodView::from_pod(&pod);
        // Where some nodes run no containers, a pod's images decide which nodes it may use.
        let containers_everywhere = *cache.containers_everywhere.get_or_insert_with(|| cache.nodes.iter().all(|n| n.runs_containers));
        if view.runtime == Runtime::Wasm && !containers_everywhere {
            match kinds.verdict(&images::images_of(&pod), Instant::now()) {
                Verdict::Known { containers: true } => view.runtime = Runtime::Containers,
                Verdict::Known { containers: false } => {}
                Verdict::Unknown(references) => {
                    for reference in references {
                        if kinds.wait_for(&reference, &key) {
                            let (client, sender, pod) = (client.clone(), sender.clone(), Arc::clone(&pod));
                            tokio::spawn(async move {
                                let container = images::resolve(&client, &pod, &reference).await;
                                let _ = sender.send(Change::Image { reference, container });
                            });
                        }
                    }
                    continue;
                }
            }
        }
        cache.rotation = cache.rotation.wrapping_add(1);
        let start = if cache.nodes.is_empty() { 0 } else { cache.rotation % cache.nodes.len() };
        match placement::place(&view, &cache.nodes, start) {
            Ok(index) => {
                let node = cache.nodes[index].name.clone();
                // Assume the placement now; the binding confirms or undoes it.
                cache.place_on(&key, &node, &view);
                cache.binding.insert(key.clone());
                cache.unschedulable.remove(&key);
                let permit = tokio::select! {
                    permit = Arc::clone(&bindings).acquire_owned() => permit,
                    _ = shutdown.cancelled() => return,
                };
                let Ok(permit) = permit else { return };
                let client = client.clone();
                let sender = sender.clone();
                let uid = meta::uid(&pod).to_owned();
                tokio::spawn(async move {
                    let outcome = bind(&client, &key, &uid, &node).await;
                    drop(permit);
                    let _ = sender.send(Change::Bound { key, node, outcome });
                });
            }
            Err(unschedulable) => {
                let message = unschedulable.to_string();
                let changed = cache.unschedulable.get(&key) != Some(&message);
                cache.unschedulable.insert(key.clone(), message.clone());
                if changed {
                    recorder.warning(ObjectReference::of("v1", "Pod", &pod), "FailedScheduling", message.clone());
                    let client = client.clone();
                    tokio::spawn(async move {
                        if let Err(error) = mark_unschedulable(&client, &key, &message).await {
                            tracing::debug!(%error, key, "setting PodScheduled=False");
                        }
                    });
                }
            }
        }
    }
}

fn apply(cache: &mut Cache, kinds: &mut ImageKinds, pods: &Informer, recorder: &Recorder, change: Change) {
    match change {
        Change::Image { reference, container } => {
            for key in kinds.resolved(&reference, container, Instant::now()) {
                let current = pods.get(&key);
                cache.pod_changed(&key, current.as_deref());
            }
        }
        Change::Node(node, name) => cache.node_changed(&name, node.as_deref()),
        Change::Pod(pod, key) => {
            if !cache.binding.contains(&key) {
                cache.pod_changed(&key, pod.as_deref());
            }
        }
        Change::Bound { key, node, outcome } => {
            cache.binding.remove(&key);
            match outcome {
                Ok(()) => {
                    if let Some(pod) = pods.get(&key) {
                        let (namespace, name) = crate::informer::split_key(&key);
                        recorder.normal(ObjectReference::of("v1", "Pod", &pod), "Scheduled", format!("Successfully assigned {namespace}/{name} to {node}"));
                    }
                }
                Err(error) => {
                    tracing::debug!(key, node, error, "binding failed");
                    cache.unplace(&key);
                }
            }
            // Re-read the pod as it is now: bound (counted on its node), gone, or still pending.
            let current = pods.get(&key);
            cache.pod_changed(&key, current.as_deref());
        }
    }
}

async fn bind(client: &Client, key: &str, uid: &str, node: &str) -> Result<(), String> {
    let (namespace, name) = crate::informer::split_key(key);
    let body = json!({"apiVersion": "v1", "kind": "Binding", "metadata": {"name": name, "namespace": namespace, "uid": uid}, "target": {"apiVersion": "v1", "kind": "Node", "name": node}});
    let bytes = serde_json::to_vec(&body).map_err(|e| e.to_string())?;
    client
        .request(shoal_client::Method::POST, &format!("/api/v1/namespaces/{namespace}/pods/{name}/binding"), &[], Some(("application/json", bytes)))
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

async fn mark_unschedulable(client: &Client, key: &str, message: &str) -> Result<(), shoal_client::Error> {
    let pods = shoal_api::resources::by_name("pods").expect("pods are served");
    let (namespace, name) = crate::informer::split_key(key);
    let pod = client.get(pods, Some(namespace), name).await?;
    let mut conditions: Vec<Value> = pod["status"]["conditions"].as_array().cloned().unwrap_or_default().into_iter().filter(|c| c["type"] != "PodScheduled").collect();
    conditions.insert(0, json!({"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": message, "lastProbeTime": null, "lastTransitionTime": meta::format_time(jiff::Timestamp::now())}));
    client.merge_patch_subresource(pods, Some(namespace), name, "status", &json!({"status": {"conditions": conditions}})).await.map(|_| ())
}

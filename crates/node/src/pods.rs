//! Pod workers: one task per pod bound to this node. It pulls and loads each container's
//! artifact, runs init containers in order, then serves HTTP components and runs commands with
//! the pod's restart policy and back-off, and writes the pod's status as things change. On
//! deletion it stops taking requests, lets in-flight ones finish within the grace period, and
//! then completes the deletion.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use shoal_api::resources;
use shoal_oci::Reference;
use shoal_oci::client::{Auth, RegistryClient};
use shoal_runtime_wasm::{HttpHandler, LogSink, Workload, run_command};
use tokio_util::sync::CancellationToken;

use crate::status::{ContainerRecord, ContainerState, pod_status};
use crate::{HttpRoute, Shared, spec};

const MAX_BACKOFF: Duration = Duration::from_secs(300);
const FIRST_BACKOFF: Duration = Duration::from_secs(10);
const LOG_LINES_KEPT: usize = 10_000;
const DEFAULT_CONCURRENCY: usize = 100;

pub(crate) struct PodHandle {
    stop: CancellationToken,
    /// Set when the worker has finished (so a terminal pod is not restarted).
    done: Arc<std::sync::atomic::AtomicBool>,
    /// The pod as last seen, for what follows its metadata (downward API volumes).
    updates: tokio::sync::watch::Sender<Arc<Value>>,
}

pub(crate) fn now() -> String {
    shoal_api::meta::format_time(jiff::Timestamp::now())
}

fn key(pod: &Value) -> (String, String) {
    (pod["metadata"]["namespace"].as_str().unwrap_or_default().to_owned(), pod["metadata"]["name"].as_str().unwrap_or_default().to_owned())
}

/// Brings this node in line with one pod object.
pub(crate) fn reconcile(shared: &Arc<Shared>, pod: Value) {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    if uid.is_empty() {
        return;
    }
    if !pod["metadata"]["deletionTimestamp"].is_null() {
        // One termination per pod: later events of a terminating pod (its own status writes, a
        // re-list) must not complete the deletion before the grace period has run.
        if !shared.terminating.lock().unwrap_or_else(|p| p.into_inner()).insert(uid.clone()) {
            return;
        }
        let handle = shared.pods.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
        let shared = Arc::clone(shared);
        shared.clone().tasks.spawn(async move {
            terminate(&shared, pod, handle).await;
            shared.terminating.lock().unwrap_or_else(|p| p.into_inner()).remove(&uid);
        });
        return;
    }
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    let mut pods = shared.pods.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(running) = pods.get(&uid) {
        let metadata_changed = |old: &Value| old["metadata"]["labels"] != pod["metadata"]["labels"] || old["metadata"]["annotations"] != pod["metadata"]["annotations"];
        if metadata_changed(&running.updates.borrow()) {
            running.updates.send_replace(Arc::new(pod));
        }
        return;
    }
    if phase == "Succeeded" || phase == "Failed" {
        return;
    }
    let (updates, updates_seen) = tokio::sync::watch::channel(Arc::new(pod.clone()));
    let handle = PodHandle { stop: shared.shutdown.child_token(), done: Arc::new(std::sync::atomic::AtomicBool::new(false)), updates };
    let stop = handle.stop.clone();
    let done = Arc::clone(&handle.done);
    pods.insert(uid, handle);
    drop(pods);
    let worker_shared = Arc::clone(shared);
    shared.tasks.spawn(async move {
        run_pod(&worker_shared, pod, updates_seen, stop).await;
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
}

/// Stops the worker of a pod that is gone from the API.
///
/// Once the worker has finished, the pod's directory and logs on this node go too, as they do
/// when the node itself completes a deletion (`terminate`): the pod was deleted by force, or
/// while this agent was not watching.
pub(crate) fn stop(shared: &Arc<Shared>, uid: &str) {
    let Some(handle) = shared.pods.lock().unwrap_or_else(|p| p.into_inner()).remove(uid) else { return };
    handle.stop.cancel();
    let shared = Arc::clone(shared);
    let uid = uid.to_owned();
    tokio::spawn(async move {
        // A worker stops its containers with their grace period; past this, the files go anyway.
        finished(&handle, Duration::from_secs(60)).await;
        remove_files(&shared, &uid);
    });
}

/// Waits until the pod's worker has finished, for at most `within`.
async fn finished(handle: &PodHandle, within: Duration) {
    let deadline = tokio::time::Instant::now() + within;
    while !handle.done.load(std::sync::atomic::Ordering::Relaxed) && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Stops workers whose pods no longer exist (after a re-list), and removes the directories and
/// logs of pods this node no longer has at all: those deleted while the agent was down, as the
/// kubelet cleans up orphaned pod directories.
pub(crate) fn forget_missing(shared: &Arc<Shared>, live: &[String]) {
    let working: HashSet<String> = shared.pods.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
    let kept = |uid: &str| live.iter().any(|l| l == uid) || working.contains(uid);
    let pods = std::fs::read_dir(shared.config.data_dir.join("pods")).into_iter().flatten().flatten().filter_map(|entry| entry.file_name().into_string().ok());
    let logs = std::fs::read_dir(shared.config.data_dir.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().into_string().ok()?.rsplit_once('_').map(|(_, uid)| uid.to_owned()));
    let mut orphans: Vec<String> = pods.chain(logs).filter(|uid| !kept(uid)).collect();
    orphans.sort();
    orphans.dedup();
    for uid in orphans {
        tracing::info!(pod_uid = %uid, "removing the files of a pod that is gone");
        remove_files(shared, &uid);
    }
    let gone: Vec<String> = shared.pods.lock().unwrap_or_else(|p| p.into_inner()).keys().filter(|uid| !live.contains(uid)).cloned().collect();
    for uid in gone {
        stop(shared, &uid);
    }
}

/// Removes what this node keeps for the pod with `uid`: its directory (emptyDir and written
/// volumes, subPath links, `/etc` files) and its containers' logs.
fn remove_files(shared: &Shared, uid: &str) {
    if uid.is_empty() || uid.contains('/') || uid.starts_with('.') {
        return;
    }
    let _ = std::fs::remove_dir_all(pod_dir(shared, uid));
    let suffix = format!("_{uid}");
    let logs = shared.config.data_dir.join("logs");
    for entry in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
        if entry.file_name().to_str().is_some_and(|name| name.ends_with(&suffix)) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

pub(crate) async fn stop_all(shared: &Arc<Shared>) {
    let handles: Vec<PodHandle> = shared.pods.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, h)| h).collect();
    for handle in handles {
        handle.stop.cancel();
    }
}

/// Graceful deletion: no new requests, in-flight ones finish within the grace period, then the
/// node completes the deletion in the API.
async fn terminate(shared: &Arc<Shared>, pod: Value, handle: Option<PodHandle>) {
    let (namespace, name) = key(&pod);
    let grace = Duration::from_secs(pod["metadata"]["deletionGracePeriodSeconds"].as_u64().unwrap_or(30));
    let routes = shared.routes.write().unwrap_or_else(|p| p.into_inner()).remove(&(namespace.clone(), name.clone()));
    if let Some(routes) = routes {
        let deadline = tokio::time::Instant::now() + grace;
        for route in routes {
            while route.in_flight() > 0 && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
    if let Some(handle) = handle {
        handle.stop.cancel();
        // Containers stop with SIGTERM and the grace period; the deletion completes after.
        finished(&handle, grace + Duration::from_secs(15)).await;
    }
    let pods = resources::by_name("pods").expect("pods are served");
    let options = json!({"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0, "preconditions": {"uid": pod["metadata"]["uid"]}});
    // The deletion is retried until the API takes it: a pod left Terminating would hold its
    // name (and a StatefulSet-style replacement) forever. A 404 or 409 (the uid precondition)
    // means the pod is already gone or replaced. On shutdown the pod stays Terminating and the
    // restarted agent completes it after its re-list.
    let completed = retry_with_backoff(&shared.shutdown, || async {
        match shared.client.delete(pods, Some(&namespace), &name, &options).await {
            Ok(_) => Attempt::Done,
            Err(shoal_client::Error::Api(status)) if status.code == 404 || status.code == 409 => Attempt::Done,
            Err(error) => {
                tracing::warn!(%error, pod = %name, "completing the pod's deletion; retrying");
                Attempt::Retry
            }
        }
    })
    .await;
    if !completed {
        return;
    }
    shared.logs.write().unwrap_or_else(|p| p.into_inner()).retain(|(ns, pod_name, _), _| !(ns == &namespace && pod_name == &name));
    // The pod's logs and its own directory go with it, as in kube.
    remove_files(shared, pod["metadata"]["uid"].as_str().unwrap_or_default());
    shared.runtime.release_unused();
}

/// The node's directory of the pod with `uid`: its volumes, subPath links and `/etc` files.
pub(crate) fn pod_dir(shared: &Shared, uid: &str) -> std::path::PathBuf {
    shared.config.data_dir.join("pods").join(uid)
}

/// The outcome of one try of an operation retried with back-off.
#[derive(Debug, PartialEq, Eq)]
enum Attempt {
    Done,
    Retry,
}

const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Runs `attempt` until it is done, waiting 100 ms, then twice as long each time up to 5 s,
/// between tries. Returns false if `shutdown` ends the wait first.
async fn retry_with_backoff<F, Fut>(shutdown: &CancellationToken, mut attempt: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Attempt>,
{
    let mut wait = RETRY_FIRST;
    loop {
        if attempt().await == Attempt::Done {
            return true;
        }
        tokio::select! {
            () = shutdown.cancelled() => return false,
            () = tokio::time::sleep(wait) => {}
        }
        wait = (wait * 2).min(RETRY_MAX);
    }
}

/// Writes the pod's status and events.
pub(crate) struct Reporter {
    pub(crate) shared: Arc<Shared>,
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) uid: String,
    pub(crate) restart_policy: String,
    start_time: String,
    pub(crate) records: Mutex<Vec<ContainerRecord>>,
    write_lock: tokio::sync::Mutex<()>,
    /// The pod's own address when it has a network namespace (pods with containers); else the
    /// node's.
    pub(crate) pod_ip: Mutex<Option<String>>,
}

impl Reporter {
    /// How the node's metrics name one of this pod's containers.
    pub(crate) fn container_key(&self, container: &str) -> crate::metrics::ContainerKey {
        crate::metrics::ContainerKey { uid: self.uid.clone(), namespace: self.namespace.clone(), pod: self.name.clone(), container: container.to_owned() }
    }

    pub(crate) fn update(&self, container: &str, change: impl FnOnce(&mut ContainerRecord)) {
        let mut records = self.records.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(record) = records.iter_mut().find(|r| r.name == container) {
            change(record);
        }
    }

    pub(crate) async fn publish(&self) {
        let _serialised = self.write_lock.lock().await;
        let status = {
            let records = self.records.lock().unwrap_or_else(|p| p.into_inner());
            let pod_ip = self.pod_ip.lock().unwrap_or_else(|p| p.into_inner()).clone();
            pod_status(&records, &self.restart_policy, &self.shared.host_ip, pod_ip.as_deref().unwrap_or(&self.shared.host_ip), &self.start_time, &now())
        };
        let pods = resources::by_name("pods").expect("pods are served");
        let outcome = self.shared.client.merge_patch_subresource(pods, Some(&self.namespace), &self.name, "status", &json!({"status": status})).await;
        if let Err(error) = outcome {
            tracing::debug!(%error, pod = %self.name, "writing pod status");
        }
    }

    /// The container cannot be set up as specified: say why, in its status and an event.
    pub(crate) async fn config_error(&self, container: &str, message: &str) {
        self.update(container, |r| r.state = ContainerState::Waiting { reason: "CreateContainerConfigError".into(), message: Some(message.to_owned()) });
        self.publish().await;
        self.event("Warning", "Failed", message).await;
    }

    pub(crate) async fn event(&self, kind: &str, reason: &str, message: &str) {
        let events = resources::by_name("events").expect("events are served");
        let timestamp = now();
        let suffix: String = (0..8).map(|_| format!("{:x}", rand::random::<u8>() % 16)).collect();
        let event = json!({
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": format!("{}.{suffix}", self.name), "namespace": self.namespace},
            "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": self.namespace, "name": self.name, "uid": self.uid},
            "reason": reason, "message": message, "type": kind,
            "source": {"component": "shoal-node", "host": self.shared.config.node_name},
            "firstTimestamp": timestamp, "lastTimestamp": timestamp, "count": 1,
            "reportingComponent": "shoal-node", "reportingInstance": self.shared.config.node_name,
        });
        if let Err(error) = self.shared.client.create(events, Some(&self.namespace), &event, "shoal-node").await {
            tracing::debug!(%error, "recording an event");
        }
    }
}

/// A registry client for `reference`: the node's shared client for the built-in registry, or
/// one for an external registry with the pod's pull secrets.
async fn registry_for(shared: &Shared, pod: &Value, reference: &Reference) -> Result<Arc<RegistryClient>, String> {
    if reference.is_built_in() {
        // Every API server serves the built-in registry: use the one the node's client uses
        // now, so that pulls follow it to another server when one dies.
        let auth = Auth::Bearer(shared.token.clone());
        return Ok(Arc::new(RegistryClient::new(shared.builtin_registry_http.clone(), shared.client.server(), shoal_oci::BUILT_IN_REGISTRY, auth)));
    }
    let mut auth = Auth::Anonymous;
    let secrets = resources::by_name("secrets").expect("secrets are served");
    for secret in pod["spec"]["imagePullSecrets"].as_array().into_iter().flatten() {
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        if let Ok(object) = shared.client.get(secrets, Some(namespace), secret["name"].as_str().unwrap_or_default()).await
            && let Some(found) = shoal_oci::client::auth_from_pull_secret(&object, &reference.registry)
        {
            auth = found;
            break;
        }
    }
    RegistryClient::external(&reference.registry, &[], auth).map(Arc::new).map_err(|e| e.to_string())
}

/// What a container of a pod runs.
pub(crate) enum Loaded {
    /// A Wasm component or module, in-process.
    Wasm(Workload),
    /// An OCI image, through containerd.
    Image(shoal_runtime_oci::Image),
}

/// Pulls and loads one container's artifact: (what it runs, image ID) or (waiting reason,
/// message).
async fn load(shared: &Arc<Shared>, pod: &Value, container: &Value) -> Result<(Loaded, String), (&'static str, String)> {
    let image = container["image"].as_str().unwrap_or_default();
    let reference = Reference::parse(image).map_err(|e| ("InvalidImageName", e.to_string()))?;
    let policy = shoal_runtime_oci::PullPolicy::from_spec(container["imagePullPolicy"].as_str(), image);
    if let Some(containers) = shared.containers.as_ref().and_then(|s| s.started())
        && policy != shoal_runtime_oci::PullPolicy::Always
        && let Some(local) = containers.images.local(image).await
    {
        let id = local.reference.clone();
        return Ok((Loaded::Image(local), id));
    }
    let client = registry_for(shared, pod, &reference).await.map_err(|e| ("ErrImagePull", e))?;
    let server = shared.client.server();
    let pulled = shared.cache.pull(&client, &reference).await.map_err(|e| match e {
        shoal_oci::Error::UnsupportedManifest(detail) => ("InvalidImage", detail),
        other => {
            // The built-in registry's server is unreachable: the retry goes to another server.
            if reference.is_built_in() && matches!(other, shoal_oci::Error::Transport { .. }) {
                shared.client.move_on(&server);
            }
            ("ErrImagePull", other.to_string())
        }
    })?;
    if matches!(pulled.kind, shoal_oci::media::ArtifactKind::Container) {
        if shared.containers.is_none() {
            return Err(("InvalidImage", format!("{image} is an OCI container image, and this node has no container runtime (containerd); it runs Wasm artifacts only")));
        }
        let containers = crate::containers::runtime(shared).await.map_err(|e| ("ErrImagePull", e))?;
        let unpacked = crate::containers::pull(&containers, &client, &pulled.reference, image, policy).await?;
        let id = unpacked.reference.clone();
        return Ok((Loaded::Image(unpacked), id));
    }
    let blob = pulled.blobs.first().ok_or(("InvalidImage", "the artifact has no Wasm layer".to_owned()))?;
    let workload = shared.runtime.load(blob.digest.as_str(), &blob.path).await.map_err(|e| ("InvalidImage", e.to_string()))?;
    Ok((Loaded::Wasm(workload), pulled.reference.to_string()))
}

/// The restart count the pod's status reports for a container (0 for a new pod).
fn reported_restarts(pod: &Value, container: &str, init: bool) -> u32 {
    let list = if init { "initContainerStatuses" } else { "containerStatuses" };
    pod["status"][list].as_array().into_iter().flatten().find(|s| s["name"] == container).and_then(|s| s["restartCount"].as_u64()).map(|c| c as u32).unwrap_or(0)
}

fn backoff(attempt: u32) -> Duration {
    FIRST_BACKOFF.saturating_mul(1u32 << attempt.min(5)).min(MAX_BACKOFF)
}

async fn run_pod(shared: &Arc<Shared>, pod: Value, updates: tokio::sync::watch::Receiver<Arc<Value>>, stop: CancellationToken) {
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let attached = run_pod_containers(shared, pod, updates, stop).await;
    // The pod's network goes when its containers have ended or stopped, unless the agent is the
    // one stopping (its containers keep running for the next agent process).
    if attached && !shared.shutdown.is_cancelled() {
        crate::containers::detach(shared, &uid).await;
    }
}

/// Runs the pod's containers; true when it made the pod a network namespace.
async fn run_pod_containers(shared: &Arc<Shared>, pod: Value, updates: tokio::sync::watch::Receiver<Arc<Value>>, stop: CancellationToken) -> bool {
    let (namespace, name) = key(&pod);
    let restart_policy = pod["spec"]["restartPolicy"].as_str().unwrap_or("Always").to_owned();
    let init: Vec<Value> = pod["spec"]["initContainers"].as_array().cloned().unwrap_or_default();
    let main: Vec<Value> = pod["spec"]["containers"].as_array().cloned().unwrap_or_default();
    let waiting = |reason: &str| ContainerState::Waiting { reason: reason.into(), message: None };
    let records = init
        .iter()
        .map(|c| (c, true))
        .chain(main.iter().map(|c| (c, false)))
        .map(|(c, is_init)| ContainerRecord {
            name: c["name"].as_str().unwrap_or_default().to_owned(),
            image: c["image"].as_str().unwrap_or_default().to_owned(),
            image_id: String::new(),
            state: waiting(if is_init { "PodInitializing" } else { "ContainerCreating" }),
            last_state: None,
            // A restarted agent carries on counting where the pod's status left off.
            restart_count: reported_restarts(&pod, c["name"].as_str().unwrap_or_default(), is_init),
            ready: false,
            init: is_init,
            sidecar: is_init && c["restartPolicy"] == "Always",
        })
        .collect();
    let start_time = pod["status"]["startTime"].as_str().map(str::to_owned).unwrap_or_else(now);
    let reporter = Arc::new(Reporter {
        shared: Arc::clone(shared),
        namespace: namespace.clone(),
        name: name.clone(),
        uid: pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
        restart_policy: restart_policy.clone(),
        start_time,
        records: Mutex::new(records),
        write_lock: tokio::sync::Mutex::new(()),
        pod_ip: Mutex::new(None),
    });
    reporter.publish().await;
    let volume_root = pod_dir(shared, pod["metadata"]["uid"].as_str().unwrap_or("unknown")).join("volumes");

    // Pull and load every artifact first (with back-off), so failures show before anything runs.
    let mut loaded: Vec<(Loaded, String)> = Vec::new();
    for container in init.iter().chain(main.iter()) {
        let container_name = container["name"].as_str().unwrap_or_default().to_owned();
        let mut attempt = 0;
        loop {
            match load(shared, &pod, container).await {
                Ok(done) => {
                    loaded.push(done);
                    break;
                }
                Err((reason, message)) => {
                    reporter.update(&container_name, |r| r.state = ContainerState::Waiting { reason: reason.into(), message: Some(message.clone()) });
                    reporter.publish().await;
                    reporter.event("Warning", "Failed", &format!("Failed to pull or load \"{}\": {message}", container["image"].as_str().unwrap_or_default())).await;
                    let wait = backoff(attempt);
                    attempt += 1;
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    if reason == "ErrImagePull" {
                        reporter.update(&container_name, |r| r.state = ContainerState::Waiting { reason: "ImagePullBackOff".into(), message: Some(message.clone()) });
                    }
                }
            }
        }
        reporter.update(&container_name, |r| r.image_id = loaded.last().map(|(_, id)| id.clone()).unwrap_or_default());
        reporter.event("Normal", "Pulled", &format!("Artifact \"{}\" is ready", container["image"].as_str().unwrap_or_default())).await;
    }
    // A pod with any OCI container gets a network namespace of its own; its address is the
    // pod's IP, for its Wasm components as well. Its ServiceAccount tokens are issued and its
    // volumes written meanwhile: both are done before any container starts, and the volumes are
    // then kept in step with their sources while the pod runs.
    let wants_network = loaded.iter().any(|(l, _)| matches!(l, Loaded::Image(_)));
    let network = async {
        if !wants_network {
            return Ok(None);
        }
        let mut attempt = 0;
        loop {
            match crate::containers::attach(shared, &pod).await {
                Ok(attached) => {
                    *reporter.pod_ip.lock().unwrap_or_else(|p| p.into_inner()) = Some(attached.network.address.to_string());
                    return Ok(Some(attached));
                }
                Err(message) => {
                    reporter.event("Warning", "FailedCreatePodSandBox", &format!("Failed to create the pod's network: {message}")).await;
                    let wait = backoff(attempt);
                    attempt += 1;
                    tokio::select! {
                        // Stopped while (possibly half) attached: the caller detaches.
                        _ = stop.cancelled() => return Err(()),
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            }
        }
    };
    let volumes = Arc::new(crate::volumes::PodVolumes::new(shared, &pod, volume_root.clone()));
    let volumes_written = async { crate::tokens::keep(shared, &reporter, &pod, &volumes, &stop).await && volumes.set_up(&reporter, &pod, &stop).await };
    let (volumes_written, net) = tokio::join!(volumes_written, network);
    let Ok(net) = net else { return true };
    if !volumes_written {
        return net.is_some();
    }
    shared.tasks.spawn(Arc::clone(&volumes).keep(updates, stop.clone()));
    if net.is_some() {
        reporter.publish().await;
    }
    let attached = net.is_some();
    let mut loaded = loaded.into_iter();

    // Init containers run to completion, in order; a native sidecar (`restartPolicy: Always`)
    // starts, and the next one goes once it runs. Sidecars stop after the main containers.
    let sidecar_stop = CancellationToken::new();
    let mut sidecars = Vec::new();
    for container in &init {
        let (artifact, _) = loaded.next().expect("one artifact per container");
        let container_name = container["name"].as_str().unwrap_or_default().to_owned();
        if container["restartPolicy"] == "Always" {
            sidecars.push({
                let (shared, reporter, pod, stop, volume_root, net, container) =
                    (Arc::clone(shared), Arc::clone(&reporter), pod.clone(), sidecar_stop.clone(), volume_root.clone(), net.clone(), container.clone());
                tokio::spawn(async move {
                    match (artifact, &net) {
                        (Loaded::Wasm(workload), _) => run_main(&shared, &reporter, &pod, &container, workload, &volume_root, &stop, net.as_ref()).await,
                        (Loaded::Image(image), Some(net)) => crate::containers::run_main(&shared, &reporter, &pod, &container, &image, net, &volume_root, &stop).await,
                        (Loaded::Image(_), None) => {}
                    }
                })
            });
            loop {
                let started = reporter.records.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|r| r.name == container_name && (r.restart_count > 0 || matches!(r.state, ContainerState::Running { .. })));
                if started {
                    break;
                }
                tokio::select! {
                    _ = stop.cancelled() => {
                        sidecar_stop.cancel();
                        return attached;
                    }
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
            continue;
        }
        let mut attempt = 0;
        loop {
            let outcome = match (&artifact, &net) {
                (Loaded::Wasm(workload), _) => run_once(shared, &reporter, &pod, container, workload, &volume_root, &stop, net.as_ref()).await,
                (Loaded::Image(image), Some(net)) => crate::containers::run_once(shared, &reporter, &pod, container, image, net, &volume_root, &stop, true).await,
                (Loaded::Image(_), None) => None,
            };
            match outcome {
                Some(0) => break,
                Some(_) if restart_policy != "Never" => {
                    if !crash_loop_back_off(&reporter, &container_name, &mut attempt, &stop).await {
                        sidecar_stop.cancel();
                        return attached;
                    }
                }
                // Failed with restartPolicy Never, or stopped.
                _ => {
                    sidecar_stop.cancel();
                    return attached;
                }
            }
        }
    }

    let mut workers = Vec::new();
    for container in main {
        let (artifact, _) = loaded.next().expect("one artifact per container");
        let shared = Arc::clone(shared);
        let reporter = Arc::clone(&reporter);
        let pod = pod.clone();
        let stop = stop.clone();
        let volume_root = volume_root.clone();
        let net = net.clone();
        workers.push(tokio::spawn(async move {
            match (artifact, &net) {
                (Loaded::Wasm(workload), _) => run_main(&shared, &reporter, &pod, &container, workload, &volume_root, &stop, net.as_ref()).await,
                (Loaded::Image(image), Some(net)) => crate::containers::run_main(&shared, &reporter, &pod, &container, &image, net, &volume_root, &stop).await,
                (Loaded::Image(_), None) => {}
            }
        }));
    }
    for worker in workers {
        let _ = worker.await;
    }
    sidecar_stop.cancel();
    for sidecar in sidecars {
        let _ = sidecar.await;
    }
    attached
}

/// Runs one command container once; returns its exit code (None when stopped).
/// The container's sandbox, or None after reporting why it cannot be built.
/// A configuration that cannot be built now (a ConfigMap, Secret or key not there yet) is tried
/// again with growing waits, as the kubelet does, until it can or the pod stops.
async fn prepare_sandbox(shared: &Arc<Shared>, reporter: &Reporter, pod: &Value, container: &Value, volume_root: &std::path::Path, net: Option<&crate::containers::PodNet>, stop: &CancellationToken) -> Option<shoal_runtime_wasm::SandboxSpec> {
    let container_name = container["name"].as_str().unwrap_or_default();
    let logs = log_sink(shared, reporter, container_name);
    let pod_ip = net.map(|n| n.network.address.to_string()).unwrap_or_else(|| shared.host_ip.clone());
    let mut attempt = 0;
    loop {
        // A Wasm container is given directories only: files mounted by subPath are linked into
        // directories of the container's own.
        let scratch = volume_root.parent().unwrap_or(volume_root).join("subpaths").join(container_name);
        let built = spec::sandbox(&shared.client, pod, container, volume_root, &pod_ip, api_service(shared), logs.clone()).await.and_then(|mut sandbox| {
            sandbox.preopens = crate::subpath::files_as_directories(std::mem::take(&mut sandbox.preopens), &scratch)?;
            Ok(sandbox)
        });
        match built {
            Ok(sandbox) => return Some(with_outbound(shared, reporter, container_name, sandbox, net)),
            Err(message) => {
                reporter.config_error(container_name, &message).await;
                if !config_back_off(&mut attempt, stop).await {
                    return None;
                }
            }
        }
    }
}

/// The API's Service (`default/kubernetes`): its cluster IP and port, once the node knows it.
pub(crate) fn api_service(shared: &Shared) -> Option<(std::net::Ipv4Addr, u16)> {
    let service = shared.services.get("default", "kubernetes")?;
    Some((service.cluster_ip?, service.ports.first()?.port))
}

/// Waits before a container's configuration is built again: 1 s, doubling up to a minute.
/// False when the pod stops first.
pub(crate) async fn config_back_off(attempt: &mut u32, stop: &CancellationToken) -> bool {
    let wait = Duration::from_secs(1u64 << (*attempt).min(6)).min(Duration::from_secs(60));
    *attempt += 1;
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// The sandbox with its container's usage meter and outgoing-request router.
fn with_outbound(shared: &Arc<Shared>, reporter: &Reporter, container_name: &str, mut sandbox: shoal_runtime_wasm::SandboxSpec, net: Option<&crate::containers::PodNet>) -> shoal_runtime_wasm::SandboxSpec {
    sandbox.usage = shared.metrics.wasm(reporter.container_key(container_name));
    // Outgoing requests to Service names go through this node's proxy; in a pod with
    // containers, `localhost` means the pod's network namespace.
    sandbox.outbound = Some(Arc::new(crate::proxy::GuestOutbound {
        shared: Arc::downgrade(shared),
        namespace: reporter.namespace.clone(),
        client: shared.host_ip.parse().ok(),
        pod_address: net.map(|n| n.network.address),
    }));
    sandbox
}

#[allow(clippy::too_many_arguments)]
async fn run_once(shared: &Arc<Shared>, reporter: &Reporter, pod: &Value, container: &Value, workload: &Workload, volume_root: &std::path::Path, stop: &CancellationToken, net: Option<&crate::containers::PodNet>) -> Option<i32> {
    let container_name = container["name"].as_str().unwrap_or_default().to_owned();
    let sandbox = prepare_sandbox(shared, reporter, pod, container, volume_root, net, stop).await?;
    let started_at = now();
    let restarted = reporter.records.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|r| r.name == container_name && r.restart_count > 0);
    if restarted {
        sandbox.logs.start_new_run();
    }
    sandbox.logs.set_finished(false);
    reporter.update(&container_name, |r| r.state = ContainerState::Running { started_at: started_at.clone() });
    reporter.publish().await;
    let outcome = tokio::select! {
        _ = stop.cancelled() => return None,
        outcome = run_command(workload, &sandbox) => outcome,
    };
    let (exit_code, reason, message) = match outcome {
        Ok(outcome) => (outcome.exit_code, outcome.reason, outcome.message),
        Err(error) => (128, "StartError".to_owned(), Some(error.to_string())),
    };
    sandbox.logs.set_finished(true);
    reporter.update(&container_name, |r| {
        r.ready = false;
        r.state = ContainerState::Terminated { exit_code, reason: reason.clone(), message: message.clone(), started_at, finished_at: now() };
    });
    reporter.publish().await;
    Some(exit_code)
}

/// The bytes of log kept per container file before it rotates (one rotated file is kept).
const LOG_FILE_BYTES: u64 = 10 * 1024 * 1024;

pub(crate) fn log_sink(shared: &Shared, reporter: &Reporter, container: &str) -> LogSink {
    let key = (reporter.namespace.clone(), reporter.name.clone(), container.to_owned());
    let path = shared.config.data_dir.join("logs").join(format!("{}_{}_{}", reporter.namespace, reporter.name, reporter.uid)).join(format!("{container}.log"));
    shared
        .logs
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_insert_with(|| {
            LogSink::with_file(LOG_LINES_KEPT, &path, LOG_FILE_BYTES).unwrap_or_else(|error| {
                tracing::warn!(path = %path.display(), %error, "keeping this container's logs in memory only");
                LogSink::new(LOG_LINES_KEPT)
            })
        })
        .clone()
}

#[allow(clippy::too_many_arguments)]
async fn run_main(shared: &Arc<Shared>, reporter: &Arc<Reporter>, pod: &Value, container: &Value, workload: Workload, volume_root: &std::path::Path, stop: &CancellationToken, net: Option<&crate::containers::PodNet>) {
    let container_name = container["name"].as_str().unwrap_or_default().to_owned();
    let is_http = matches!(workload, Workload::Http(_));
    let mut probes = Vec::new();
    for kind in ["startup", "liveness", "readiness"] {
        match crate::probes::parse(&container[format!("{kind}Probe")], kind, is_http) {
            Ok(probe) => probes.push(probe),
            Err(message) => {
                reporter.config_error(&container_name, &message).await;
                return;
            }
        }
    }
    if let Workload::Http(prepared) = &workload {
        let Some(sandbox) = prepare_sandbox(shared, reporter, pod, container, volume_root, net, stop).await else { return };
        let concurrency = pod["metadata"]["annotations"][spec::CONCURRENCY_ANNOTATION].as_str().and_then(|c| c.parse().ok()).unwrap_or(DEFAULT_CONCURRENCY);
        let reuse = pod["metadata"]["annotations"][spec::REUSE_ANNOTATION].as_str().and_then(|r| r.parse().ok()).unwrap_or(1);
        let handler = Arc::new(HttpHandler::with_reuse(Arc::clone(prepared), sandbox, concurrency, reuse));
        let ports: Vec<u16> = container["ports"].as_array().into_iter().flatten().filter_map(|p| p["containerPort"].as_u64()).map(|p| p as u16).collect();
        let route = HttpRoute { target: crate::RouteTarget::Component(Arc::clone(&handler)), ports: ports.clone() };
        if let Some(net) = net {
            crate::containers::serve_components_in_pod(shared, net, &route, stop);
        }
        shared.routes.write().unwrap_or_else(|p| p.into_inner()).entry((reporter.namespace.clone(), reporter.name.clone())).or_default().push(route);
        let [startup, liveness, readiness] = [probes[0].clone(), probes[1].clone(), probes[2].clone()];
        reporter.update(&container_name, |r| {
            r.state = ContainerState::Running { started_at: now() };
            // Without a readiness probe a started component is ready at once.
            r.ready = readiness.is_none() && startup.is_none();
        });
        reporter.publish().await;
        reporter.event("Normal", "Started", &format!("Started HTTP component {container_name}")).await;
        let check = |probe: crate::probes::Probe| {
            let (handler, ports) = (&handler, &ports);
            async move { crate::probes::check(&probe, handler, ports).await }
        };
        // A failed probe starts a new generation of instances, counted as a container's restart.
        let restart = |kind: &'static str| {
            let container_name = &container_name;
            async move {
                reporter.update(container_name, |r| {
                    r.restart_count += 1;
                    r.last_state = Some(ContainerState::Terminated { exit_code: 137, reason: "Error".into(), message: Some(format!("{kind} probe failed")), started_at: now(), finished_at: now() });
                    r.state = ContainerState::Running { started_at: now() };
                });
                reporter.publish().await;
                true
            }
        };
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = probe_loop(reporter, &container_name, startup, liveness, readiness, check, restart) => {}
        }
        return;
    }
    let mut attempt = 0;
    loop {
        let Some(exit_code) = run_once(shared, reporter, pod, container, &workload, volume_root, stop, net).await else { return };
        let restart = match reporter.restart_policy.as_str() {
            "Always" => true,
            "OnFailure" => exit_code != 0,
            _ => false,
        };
        if !restart {
            return;
        }
        if !crash_loop_back_off(reporter, &container_name, &mut attempt, stop).await {
            return;
        }
    }
}

/// Records a restart and waits out the exponential back-off; false when the pod is stopping.
pub(crate) async fn crash_loop_back_off(reporter: &Reporter, container: &str, attempt: &mut u32, stop: &CancellationToken) -> bool {
    let wait = backoff(*attempt);
    *attempt += 1;
    reporter.update(container, |r| {
        r.restart_count += 1;
        r.last_state = Some(r.state.clone());
        r.state = ContainerState::Waiting { reason: "CrashLoopBackOff".into(), message: Some(format!("back-off {wait:?} restarting the failed container")) };
    });
    reporter.publish().await;
    tokio::select! {
        _ = stop.cancelled() => false,
        _ = tokio::time::sleep(wait) => true,
    }
}

/// Runs a container's probes until the pod stops: the startup probe first, then liveness and
/// readiness (which sets the container's `ready`). A failed startup or liveness probe calls
/// `restart`, which says whether to go on probing: an HTTP component restarts as a new generation
/// of instances and probing goes on; a container is killed, its run ends, and so does this loop.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn probe_loop<Check, Checked, Restart, Restarted>(
    reporter: &Reporter,
    container: &str,
    startup: Option<crate::probes::Probe>,
    liveness: Option<crate::probes::Probe>,
    readiness: Option<crate::probes::Probe>,
    check: Check,
    restart: Restart,
) where
    Check: Fn(crate::probes::Probe) -> Checked,
    Checked: std::future::Future<Output = bool>,
    Restart: Fn(&'static str) -> Restarted,
    Restarted: std::future::Future<Output = bool>,
{
    if let Some(probe) = &startup {
        tokio::time::sleep(probe.initial_delay).await;
        let mut failures = 0;
        while !check(probe.clone()).await {
            failures += 1;
            if failures >= probe.failure_threshold {
                reporter.event("Warning", "Unhealthy", &format!("Startup probe failed {failures} times; restarting {container}")).await;
                failures = 0;
                if !restart("startup").await {
                    return;
                }
            }
            tokio::time::sleep(probe.period).await;
        }
        if readiness.is_none() {
            reporter.update(container, |r| r.ready = true);
            reporter.publish().await;
        }
    }
    if liveness.is_none() && readiness.is_none() {
        return std::future::pending().await;
    }
    let (mut live_failures, mut ready_successes, mut ready_failures) = (0u32, 0u32, 0u32);
    let mut ready = readiness.is_none();
    let start = tokio::time::Instant::now();
    let period = [liveness.as_ref(), readiness.as_ref()].into_iter().flatten().map(|p| p.period).min().unwrap_or(Duration::from_secs(10));
    loop {
        if let Some(probe) = &liveness
            && start.elapsed() >= probe.initial_delay
        {
            if check(probe.clone()).await {
                live_failures = 0;
            } else {
                live_failures += 1;
                if live_failures >= probe.failure_threshold {
                    live_failures = 0;
                    reporter.event("Normal", "Killing", &format!("Container {container} failed its liveness probe, will be restarted")).await;
                    if !restart("liveness").await {
                        return;
                    }
                }
            }
        }
        if let Some(probe) = &readiness
            && start.elapsed() >= probe.initial_delay
        {
            if check(probe.clone()).await {
                ready_failures = 0;
                ready_successes += 1;
                if !ready && ready_successes >= probe.success_threshold {
                    ready = true;
                    reporter.update(container, |r| r.ready = true);
                    reporter.publish().await;
                }
            } else {
                ready_successes = 0;
                ready_failures += 1;
                if ready && ready_failures >= probe.failure_threshold {
                    ready = false;
                    reporter.update(container, |r| r.ready = false);
                    reporter.publish().await;
                    reporter.event("Warning", "Unhealthy", &format!("Readiness probe failed for {container}")).await;
                } else if !ready && ready_failures == 1 {
                    reporter.event("Warning", "Unhealthy", &format!("Readiness probe failed for {container}")).await;
                }
            }
        }
        tokio::time::sleep(period).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(start_paused = true)]
    async fn a_failing_step_is_retried_with_growing_waits_until_it_is_done() {
        let shutdown = CancellationToken::new();
        let tries = AtomicUsize::new(0);
        let started = tokio::time::Instant::now();
        let done = retry_with_backoff(&shutdown, || async {
            if tries.fetch_add(1, Ordering::Relaxed) < 8 { Attempt::Retry } else { Attempt::Done }
        })
        .await;
        assert!(done);
        assert_eq!(tries.load(Ordering::Relaxed), 9);
        // 0.1 + 0.2 + 0.4 + 0.8 + 1.6 + 3.2 + 5 + 5 seconds: doubling, capped at 5 s.
        assert_eq!(started.elapsed(), Duration::from_millis(16_300));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_the_retries_without_completing() {
        let shutdown = CancellationToken::new();
        let tries = AtomicUsize::new(0);
        let stopper = shutdown.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            stopper.cancel();
        });
        let done = retry_with_backoff(&shutdown, || async {
            tries.fetch_add(1, Ordering::Relaxed);
            Attempt::Retry
        })
        .await;
        assert!(!done);
        // Tries at 0, 0.1, 0.3, 0.7 and 1.5 s; the wait after that is cut short at 2 s.
        assert_eq!(tries.load(Ordering::Relaxed), 5);
    }
}

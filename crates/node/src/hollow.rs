//! Hollow nodes, like Kubernetes' kubemark: many simulated nodes in one process for control-plane
//! benchmarks. Each registers a Node (Ready, 4 cpu, 16 Gi, 110 pods), renews its Lease every
//! 10 s as kubelet does, and marks pods bound to it Running (and Ready) without running them;
//! deletions of its pods are completed at once.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use shoal_api::{meta, resources};
use shoal_client::{Client, ListOptions};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::Result;

const LEASE_EVERY: Duration = Duration::from_secs(10);
const IN_FLIGHT: usize = 64;

/// The hollow nodes of one process.
pub struct HollowNodes {
    tasks: TaskTracker,
}

impl HollowNodes {
    pub async fn wait(self) {
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn node_object(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "shoal.dev/wasm": "true", "shoal.dev/hollow": "true"}},
        "spec": {},
    })
}

fn node_status(now: &str) -> Value {
    let resources = json!({"cpu": "4", "memory": "16Gi", "pods": "110"});
    json!({
        "capacity": resources, "allocatable": resources,
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "hollow node", "lastHeartbeatTime": now, "lastTransitionTime": now}],
        "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
        "nodeInfo": {"kubeletVersion": "hollow", "operatingSystem": "linux", "architecture": "amd64", "containerRuntimeVersion": "hollow"},
    })
}

/// Registers `count` nodes named `PREFIX-0` … and runs them until `shutdown`.
pub async fn start(client: Client, prefix: &str, count: usize, shutdown: CancellationToken) -> Result<HollowNodes> {
    let nodes = resources::by_name("nodes").expect("nodes are served");
    let names: Vec<String> = (0..count).map(|i| format!("{prefix}-{i}")).collect();
    let registered: Vec<Result<()>> = futures::stream::iter(names.clone())
        .map(|name| {
            let client = client.clone();
            async move {
                let stamp = meta::format_time(jiff::Timestamp::now());
                let mut node = match client.create(nodes, None, &node_object(&name), "shoal-hollow-node").await {
                    Ok(node) => node,
                    Err(shoal_client::Error::Api(error)) if error.code == 409 => client.get(nodes, None, &name).await?,
                    Err(error) => return Err(error.into()),
                };
                node["status"] = node_status(&stamp);
                client.replace_status(nodes, None, &name, &node).await?;
                Ok(())
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    for outcome in registered {
        outcome?;
    }
    let tasks = TaskTracker::new();
    // Both loops end at shutdown wherever they wait: with the server gone, their requests fail
    // and are retried forever, so they must not be left to notice the signal themselves.
    tasks.spawn(shutdown.clone().run_until_cancelled_owned(renew_leases(client.clone(), names.clone())));
    tasks.spawn(shutdown.run_until_cancelled_owned(run_pods(client, names.into_iter().collect())));
    Ok(HollowNodes { tasks })
}

async fn renew_leases(client: Client, names: Vec<String>) {
    let leases = resources::by_name("leases").expect("leases are served");
    let mut timer = tokio::time::interval(LEASE_EVERY);
    loop {
        timer.tick().await;
        let now = meta::format_micro_time(jiff::Timestamp::now());
        futures::stream::iter(names.iter())
            .for_each_concurrent(IN_FLIGHT, |name| {
                let client = client.clone();
                let now = now.clone();
                async move {
                    let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": name, "namespace": "kube-node-lease"},
                        "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
                    let patch = json!({"spec": {"renewTime": now}});
                    let outcome = match client.patch(leases, Some("kube-node-lease"), name, &patch, true, "shoal-hollow-node").await {
                        Err(shoal_client::Error::Api(error)) if error.code == 404 => client.create(leases, Some("kube-node-lease"), &lease, "shoal-hollow-node").await.map(|_| ()),
                        other => other.map(|_| ()),
                    };
                    if let Err(error) = outcome {
                        tracing::debug!(%error, node = name, "renewing a hollow node's lease");
                    }
                }
            })
            .await;
    }
}

/// Marks pods bound to a hollow node Running and Ready, and completes their deletions.
async fn run_pods(client: Client, names: HashSet<String>) {
    let pods = resources::by_name("pods").expect("pods are served");
    let names = Arc::new(names);
    let permits = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut revision: Option<String> = None;
    let mut handled: HashSet<String> = HashSet::new();
    loop {
        let mut events: Vec<Value> = Vec::new();
        if revision.is_none() {
            match client.list_all(pods, None, &ListOptions { limit: Some(1000), ..Default::default() }).await {
                Ok((items, listed)) => {
                    events = items;
                    revision = Some(listed);
                }
                Err(error) => {
                    tracing::debug!(%error, "hollow nodes listing pods");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        for pod in events {
            act(&client, &names, &permits, &mut handled, pod).await;
        }
        let options = ListOptions { resource_version: revision.clone(), timeout_seconds: Some(300), ..Default::default() };
        let stream = match client.watch(pods, None, &options).await {
            Ok(stream) => stream,
            Err(_) => {
                revision = None;
                continue;
            }
        };
        let mut stream = std::pin::pin!(stream);
        loop {
            match stream.next().await {
                Some(Ok(event)) if event.event_type == "ERROR" => {
                    revision = None;
                    break;
                }
                Some(Ok(event)) => {
                    if let Some(rv) = event.object["metadata"]["resourceVersion"].as_str() {
                        revision = Some(rv.to_owned());
                    }
                    if event.event_type == "DELETED" {
                        handled.remove(meta::uid(&event.object));
                    } else {
                        act(&client, &names, &permits, &mut handled, Arc::unwrap_or_clone(event.object)).await;
                    }
                }
                _ => break,
            }
        }
    }
}

async fn act(client: &Client, names: &Arc<HashSet<String>>, permits: &Arc<Semaphore>, handled: &mut HashSet<String>, pod: Value) {
    let Some(node) = pod["spec"]["nodeName"].as_str() else { return };
    if !names.contains(node) {
        return;
    }
    let uid = meta::uid(&pod).to_owned();
    let terminating = !pod["metadata"]["deletionTimestamp"].is_null();
    let key = if terminating { format!("{uid}/deleted") } else { uid.clone() };
    if !terminating && pod["status"]["phase"] != "Pending" {
        return;
    }
    if !handled.insert(key) {
        return;
    }
    let Ok(permit) = Arc::clone(permits).acquire_owned().await else { return };
    let client = client.clone();
    let node = node.to_owned();
    tokio::spawn(async move {
        let pods = resources::by_name("pods").expect("pods are served");
        let (namespace, name) = (meta::namespace(&pod).to_owned(), meta::name(&pod).to_owned());
        let outcome = if terminating {
            let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": uid}});
            client.delete(pods, Some(&namespace), &name, &options).await.map(|_| ())
        } else {
            let now = meta::format_time(jiff::Timestamp::now());
            let statuses: Vec<Value> = pod["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|c| json!({"name": c["name"], "image": c["image"], "imageID": "", "ready": true, "started": true, "restartCount": 0, "state": {"running": {"startedAt": now}}}))
                .collect();
            let status = json!({"status": {
                "phase": "Running", "hostIP": "127.0.0.1", "podIP": "127.0.0.1", "startTime": now, "containerStatuses": statuses,
                "conditions": [
                    {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                    {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                    {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                    {"type": "Ready", "status": "True", "lastTransitionTime": now},
                ],
            }});
            client.merge_patch_subresource(pods, Some(&namespace), &name, "status", &status).await.map(|_| ())
        };
        if let Err(error) = outcome {
            tracing::debug!(%error, node, pod = name, "hollow node pod update");
        }
        drop(permit);
    });
}

//! Node lifecycle: watches node Leases; a node whose Lease is not renewed within the grace
//! period is marked Ready=Unknown, its pods NotReady, and tainted
//! `node.kubernetes.io/unreachable` (NoSchedule and NoExecute); the taint goes when the Lease is
//! renewed again. The NoExecute taint manager evicts pods whose tolerations run out, so their
//! owners recreate them elsewhere, and pods bound to nodes that no longer exist are removed.
//! Renewals are timed by this process's clock when it sees them, never by the node's.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shoal_api::meta;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::ObjectReference;
use crate::scheduler::placement::{Taint, toleration_matches};
use crate::{Context, info};

pub const UNREACHABLE_TAINT: &str = "node.kubernetes.io/unreachable";
const MONITOR_EVERY: Duration = Duration::from_millis(500);
/// How long a pod bound to a node that does not exist is left before it is removed.
const ORPHAN_POD_GRACE: Duration = Duration::from_secs(20);
const MANAGER: &str = "shoal-node-lifecycle-controller";

/// When a pod on a node with `taints` must be evicted: `None` to stay (all NoExecute taints
/// tolerated forever), `Some(deadline)` otherwise (possibly already past).
pub fn eviction_deadline(tolerations: &Value, taints: &[(Taint, Option<jiff::Timestamp>)], now: jiff::Timestamp) -> Option<jiff::Timestamp> {
    let mut deadline: Option<jiff::Timestamp> = None;
    for (taint, added) in taints.iter().filter(|(t, _)| t.effect == "NoExecute") {
        let matching: Vec<&Value> = tolerations.as_array().into_iter().flatten().filter(|t| toleration_matches(t, taint)).collect();
        if matching.is_empty() {
            return Some(now);
        }
        // Forever if any matching toleration has no limit; otherwise the shortest limit.
        if matching.iter().any(|t| t["tolerationSeconds"].is_null()) {
            continue;
        }
        let seconds = matching.iter().filter_map(|t| t["tolerationSeconds"].as_i64()).min().unwrap_or(0).max(0);
        let start = added.unwrap_or(now);
        let this = start.checked_add(jiff::SignedDuration::from_secs(seconds)).unwrap_or(start);
        deadline = Some(deadline.map_or(this, |d| d.min(this)));
    }
    deadline
}

fn no_execute_taints(node: &Value) -> Vec<(Taint, Option<jiff::Timestamp>)> {
    node["spec"]["taints"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|t| t["effect"] == "NoExecute")
        .map(|t| {
            let taint = Taint { key: t["key"].as_str().unwrap_or_default().into(), value: t["value"].as_str().unwrap_or_default().into(), effect: "NoExecute".into() };
            (taint, t["timeAdded"].as_str().and_then(meta::parse_time))
        })
        .collect()
}

pub struct NodeLifecycleController {
    context: Arc<Context>,
}

impl NodeLifecycleController {
    pub fn register(context: &Arc<Context>) -> Self {
        Self { context: Arc::clone(context) }
    }

    pub fn spawn(self, tasks: &TaskTracker, shutdown: CancellationToken) {
        tasks.spawn(async move { self.run(shutdown).await });
    }

    async fn run(self, shutdown: CancellationToken) {
        let informers = &self.context.informers;
        let (nodes, leases, pods) = (informers.get("Node"), informers.get("Lease"), informers.get("Pod"));
        tokio::select! {
            _ = async { nodes.synced().await; leases.synced().await; pods.synced().await } => {}
            _ = shutdown.cancelled() => return,
        }
        // Node name → (the renewTime last seen, when this process saw it change).
        let mut observed: HashMap<String, (String, Instant)> = HashMap::new();
        let mut missing_nodes: HashMap<String, Instant> = HashMap::new();
        let mut evicted: HashMap<String, Instant> = HashMap::new();
        let grace = self.context.settings.node_monitor_grace_period;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(MONITOR_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
            let now = jiff::Timestamp::now();
            for node in nodes.list() {
                let name = meta::name(&node).to_owned();
                let renew = leases.get_named("kube-node-lease", &name).and_then(|l| l["spec"]["renewTime"].as_str().map(str::to_owned)).unwrap_or_default();
                let entry = observed.entry(name.clone()).or_insert_with(|| (renew.clone(), Instant::now()));
                if entry.0 != renew {
                    *entry = (renew, Instant::now());
                }
                let healthy = entry.1.elapsed() < grace;
                if let Err(error) = self.monitor(&node, healthy, now).await {
                    tracing::debug!(%error, node = name, "node lifecycle");
                }
                // NoExecute taints evict pods whose tolerations run out.
                let taints = no_execute_taints(&node);
                if taints.is_empty() {
                    continue;
                }
                for pod in pods.on_node(&name) {
                    if crate::pods::is_terminating(&pod) || !crate::pods::is_active(&pod) {
                        continue;
                    }
                    let Some(deadline) = eviction_deadline(&pod["spec"]["tolerations"], &taints, now) else { continue };
                    if deadline > now || evicted.get(meta::uid(&pod)).is_some_and(|at| at.elapsed() < Duration::from_secs(5)) {
                        continue;
                    }
                    evicted.insert(meta::uid(&pod).to_owned(), Instant::now());
                    self.context.recorder.normal(ObjectReference::of("v1", "Pod", &pod), "TaintManagerEviction", format!("Marking for deletion Pod {}/{}", meta::namespace(&pod), meta::name(&pod)));
                    if let Err(error) = crate::pods::delete(&self.context.client, pods, &pod).await {
                        tracing::warn!(%error, pod = meta::name(&pod), "evicting");
                    }
                }
            }
            observed.retain(|name, _| nodes.get(name).is_some());
            evicted.retain(|_, at| at.elapsed() < Duration::from_secs(60));

            // Pods bound to nodes that do not exist (deleted nodes) are removed at once.
            let mut seen_missing = Vec::new();
            for pod in pods.list() {
                let Some(node) = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) else { continue };
                if nodes.get(node).is_some() {
                    continue;
                }
                let key = crate::informer::object_key(&pod);
                let since = *missing_nodes.entry(key.clone()).or_insert_with(Instant::now);
                seen_missing.push(key);
                if since.elapsed() >= ORPHAN_POD_GRACE {
                    let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": meta::uid(&pod)}});
                    match self.context.client.delete(info("Pod"), Some(meta::namespace(&pod)), meta::name(&pod), &options).await {
                        Ok(_) => self.context.recorder.normal(ObjectReference::of("v1", "Pod", &pod), "PodGC", format!("Deleted: its node {node} no longer exists")),
                        Err(error) => tracing::debug!(%error, "removing a pod of a deleted node"),
                    }
                }
            }
            missing_nodes.retain(|key, _| seen_missing.contains(key));
        }
    }

    /// Brings one node's Ready condition, taints and pods in line with its health.
    async fn monitor(&self, node: &Value, healthy: bool, now: jiff::Timestamp) -> Result<(), shoal_client::Error> {
        let client = &self.context.client;
        let name = meta::name(node);
        let stamp = meta::format_time(now);
        let taints: Vec<Value> = node["spec"]["taints"].as_array().cloned().unwrap_or_default();
        let tainted = taints.iter().any(|t| t["key"] == UNREACHABLE_TAINT);
        let ready = node["status"]["conditions"].as_array().into_iter().flatten().find(|c| c["type"] == "Ready").cloned();
        if !healthy {
            if ready.as_ref().is_none_or(|c| c["status"] != "Unknown") {
                let conditions: Vec<Value> = node["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| {
                        let mut c = c.clone();
                        c["status"] = json!("Unknown");
                        c["reason"] = json!("NodeStatusUnknown");
                        c["message"] = json!("Kubelet stopped posting node status.");
                        c["lastTransitionTime"] = json!(stamp);
                        c
                    })
                    .collect();
                let updated = client.merge_patch_subresource(info("Node"), None, name, "status", &json!({"status": {"conditions": conditions}})).await?;
                self.context.informers.get("Node").remember(updated);
                self.context.recorder.normal(ObjectReference::of("v1", "Node", node), "NodeNotReady", format!("Node {name} status is now: NodeNotReady"));
                // Its pods are not ready any more: traffic must stop going to them.
                for pod in self.context.informers.get("Pod").on_node(name) {
                    if !crate::pods::is_ready(&pod) {
                        continue;
                    }
                    let conditions: Vec<Value> = pod["status"]["conditions"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|c| {
                            let mut c = c.clone();
                            if c["type"] == "Ready" || c["type"] == "ContainersReady" {
                                c["status"] = json!("False");
                                c["lastTransitionTime"] = json!(stamp);
                            }
                            c
                        })
                        .collect();
                    let patch = json!({"status": {"conditions": conditions}});
                    if let Err(error) = client.merge_patch_subresource(info("Pod"), Some(meta::namespace(&pod)), meta::name(&pod), "status", &patch).await {
                        tracing::debug!(%error, "marking a pod not ready");
                    }
                }
            }
            if !tainted {
                let mut updated_taints = taints.clone();
                updated_taints.push(json!({"key": UNREACHABLE_TAINT, "effect": "NoSchedule", "timeAdded": stamp}));
                updated_taints.push(json!({"key": UNREACHABLE_TAINT, "effect": "NoExecute", "timeAdded": stamp}));
                let patch = json!({"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}, "spec": {"taints": updated_taints}});
                let patched = match client.patch(info("Node"), None, name, &patch, true, MANAGER).await {
                    Ok(patched) => patched,
                    // The status patch above moved the version on: retry on the fresh object.
                    Err(shoal_client::Error::Api(error)) if error.code == 409 => {
                        let fresh = client.get(info("Node"), None, name).await?;
                        let patch = json!({"metadata": {"resourceVersion": fresh["metadata"]["resourceVersion"]}, "spec": {"taints": updated_taints}});
                        client.patch(info("Node"), None, name, &patch, true, MANAGER).await?
                    }
                    Err(error) => return Err(error),
                };
                self.context.informers.get("Node").remember(patched);
            }
        } else if tainted {
            let kept: Vec<Value> = taints.into_iter().filter(|t| t["key"] != UNREACHABLE_TAINT).collect();
            let patch = json!({"metadata": {"resourceVersion": node["metadata"]["resourceVersion"]}, "spec": {"taints": if kept.is_empty() { Value::Null } else { Value::Array(kept) }}});
            let patched = client.patch(info("Node"), None, name, &patch, true, MANAGER).await?;
            self.context.informers.get("Node").remember(patched);
            self.context.recorder.normal(ObjectReference::of("v1", "Node", node), "NodeReachable", format!("Node {name} renews its lease again"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tolerations_decide_when_pods_leave() {
        let now: jiff::Timestamp = "2026-01-01T00:00:10Z".parse().expect("time");
        let added: jiff::Timestamp = "2026-01-01T00:00:00Z".parse().expect("time");
        let unreachable = vec![(Taint { key: UNREACHABLE_TAINT.into(), value: String::new(), effect: "NoExecute".into() }, Some(added))];
        // No toleration: now.
        assert_eq!(eviction_deadline(&json!([]), &unreachable, now), Some(now));
        // Tolerated for 5 s from when the taint was added.
        let five = json!([{"key": UNREACHABLE_TAINT, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 5}]);
        assert_eq!(eviction_deadline(&five, &unreachable, now), Some("2026-01-01T00:00:05Z".parse().expect("time")));
        // Tolerated forever.
        let forever = json!([{"operator": "Exists"}]);
        assert_eq!(eviction_deadline(&forever, &unreachable, now), None);
        // NoSchedule taints never evict.
        let soft = vec![(Taint { key: "k".into(), value: String::new(), effect: "NoSchedule".into() }, None)];
        assert_eq!(eviction_deadline(&json!([]), &soft, now), None);
    }
}

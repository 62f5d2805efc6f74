//! The DaemonSet controller: one pod per eligible node (nodeSelector, node affinity and taints,
//! with the tolerations Kubernetes gives daemon pods), following nodes as they come and go,
//! and replacing pods of an old template within maxUnavailable (RollingUpdate) or only when
//! they are deleted (OnDelete). Daemon pods are bound directly to their node.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shoal_api::meta;

use crate::deployment::{int_or_percent, template_hash};
use crate::events::ObjectReference;
use crate::harness::{self, Action, Reconciler, Result};
use crate::informer::{controller_of, split_key};
use crate::pods::{self, PodName};
use crate::scheduler::placement::{NodeView, PodView, tolerates};
use crate::{Context, Registered, info};

pub const REVISION_HASH_LABEL: &str = "controller-revision-hash";
const MANAGER: &str = "shoal-daemonset-controller";

/// The tolerations the DaemonSet controller adds to its pods (as kube-controller-manager does).
pub fn daemon_tolerations(template_tolerations: &Value) -> Value {
    let mut tolerations = template_tolerations.as_array().cloned().unwrap_or_default();
    let extra = [
        ("node.kubernetes.io/not-ready", "NoExecute"),
        ("node.kubernetes.io/unreachable", "NoExecute"),
        ("node.kubernetes.io/disk-pressure", "NoSchedule"),
        ("node.kubernetes.io/memory-pressure", "NoSchedule"),
        ("node.kubernetes.io/pid-pressure", "NoSchedule"),
        ("node.kubernetes.io/unschedulable", "NoSchedule"),
    ];
    for (key, effect) in extra {
        if !tolerations.iter().any(|t| t["key"] == key && t["effect"] == effect) {
            tolerations.push(json!({"key": key, "operator": "Exists", "effect": effect}));
        }
    }
    Value::Array(tolerations)
}

/// Whether a daemon pod of `template` belongs on `node`.
pub fn should_run(template: &Value, node: &Value) -> bool {
    let view = NodeView::from_node(node);
    let pod = json!({"metadata": template["metadata"].clone(), "spec": template["spec"].clone()});
    let pod_view = PodView::from_pod(&pod);
    let runtime_ok = match pod_view.runtime {
        crate::scheduler::placement::Runtime::Wasm => node["metadata"]["labels"]["shoal.dev/wasm"] == "true",
        crate::scheduler::placement::Runtime::Containers => node["metadata"]["labels"]["shoal.dev/containers"] == "true",
    };
    let tolerations = daemon_tolerations(&template["spec"]["tolerations"]);
    let taints_ok = view.taints.iter().filter(|t| t.effect == "NoSchedule" || t.effect == "NoExecute").all(|t| tolerates(&tolerations, t));
    let selector_ok = pod_view.node_selector.iter().all(|(k, v)| view.labels.get(k) == Some(v));
    let affinity = &template["spec"]["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"];
    let affinity_ok = match affinity.as_array() {
        None => true,
        Some(terms) => {
            // Reuse placement's affinity check through a one-node placement without resources.
            let mut probe = pod_view.clone();
            probe.requests = Default::default();
            probe.tolerations = json!([{"operator": "Exists"}]);
            let mut lone = view.clone();
            lone.ready = true;
            lone.unschedulable = false;
            lone.allocatable.pods = i64::MAX;
            !terms.is_empty() && crate::scheduler::placement::place(&probe, &[lone], 0).is_ok()
        }
    };
    runtime_ok && taints_ok && selector_ok && affinity_ok
}

pub struct DaemonSetController {
    context: Arc<Context>,
}

impl DaemonSetController {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let daemon_sets = Arc::clone(context.informers.get("DaemonSet"));
        harness::watch_into(&daemon_sets, &queue, harness::own_keys);
        harness::watch_into(context.informers.get("Pod"), &queue, harness::owners_of_kind("DaemonSet"));
        let all = Arc::clone(&daemon_sets);
        harness::watch_into(context.informers.get("Node"), &queue, move |old, new| {
            // Only changes that can move eligibility: labels, taints, arrival and departure.
            let relevant = match (old, new) {
                (Some(old), Some(new)) => old["metadata"]["labels"] != new["metadata"]["labels"] || old["spec"]["taints"] != new["spec"]["taints"],
                _ => true,
            };
            if relevant { all.keys() } else { Vec::new() }
        });
        Registered::new(Self { context: Arc::clone(context) }, queue, &daemon_sets)
    }
}

impl Reconciler for DaemonSetController {
    fn name(&self) -> &'static str {
        "daemonset"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let context = &self.context;
        let daemon_sets = context.informers.get("DaemonSet");
        let pod_cache = context.informers.get("Pod");
        let Some(ds) = daemon_sets.get(key) else { return Ok(Action::Done) };
        if !ds["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let (namespace, name) = split_key(key);
        let uid = meta::uid(&ds);
        let reference = ObjectReference::of("apps/v1", "DaemonSet", &ds);
        let template = &ds["spec"]["template"];
        let hash = template_hash(template, 0);
        let min_ready = ds["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
        let now = jiff::Timestamp::now();
        let nodes = context.informers.get("Node").list();
        let owned: Vec<Arc<Value>> = pod_cache.owned_by(uid).into_iter().filter(|p| controller_of(p).is_some_and(|o| o["uid"] == uid)).collect();
        let mut by_node: HashMap<String, Vec<Arc<Value>>> = HashMap::new();
        for pod in owned.iter().filter(|p| pods::is_active(p)) {
            by_node.entry(pod["spec"]["nodeName"].as_str().unwrap_or_default().to_owned()).or_default().push(Arc::clone(pod));
        }
        let mut create_on = Vec::new();
        let mut delete = Vec::new();
        let mut eligible = 0;
        let mut misscheduled = 0;
        let mut old_available = Vec::new();
        let mut unavailable = 0;
        for node in &nodes {
            let node_name = meta::name(node);
            let runs = should_run(template, node);
            let mut here = by_node.remove(node_name).unwrap_or_default();
            if runs {
                eligible += 1;
                if here.is_empty() {
                    create_on.push(node_name.to_owned());
                    unavailable += 1;
                    continue;
                }
                here.sort_by_key(|p| p["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_owned());
                // One per node: the oldest stays.
                delete.extend(here.drain(1..));
                let pod = &here[0];
                let current = pod["metadata"]["labels"][REVISION_HASH_LABEL] == hash.as_str();
                let available = pods::is_available(pod, min_ready, now);
                if !available {
                    unavailable += 1;
                    if !current {
                        delete.push(Arc::clone(pod));
                    }
                } else if !current {
                    old_available.push(Arc::clone(pod));
                }
            } else {
                misscheduled += here.len();
                delete.extend(here);
            }
        }
        // Pods of nodes that are gone.
        for (_, pods_left) in by_node {
            delete.extend(pods_left);
        }
        if ds["spec"]["updateStrategy"]["type"].as_str().unwrap_or("RollingUpdate") == "RollingUpdate" {
            let max_unavailable = int_or_percent(&ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"], eligible, false).max(1);
            let budget = (max_unavailable - unavailable).max(0) as usize;
            delete.extend(old_available.into_iter().take(budget));
        }

        for node_name in &create_on {
            let mut pod_template = template.clone();
            pod_template["metadata"]["labels"][REVISION_HASH_LABEL] = json!(hash);
            pod_template["spec"]["nodeName"] = json!(node_name);
            pod_template["spec"]["tolerations"] = daemon_tolerations(&template["spec"]["tolerations"]);
            let prefix = format!("{name}-");
            let pod = pods::pod_from_template(&pod_template, namespace, pods::controller_reference("apps/v1", "DaemonSet", &ds), PodName::Generate(&prefix));
            match pods::create(&context.client, pod_cache, &pod, MANAGER).await {
                Ok(created) => context.recorder.normal(reference.clone(), "SuccessfulCreate", format!("Created pod: {}", meta::name(&created))),
                Err(error) => {
                    context.recorder.warning(reference.clone(), "FailedCreate", format!("Error creating: {error}"));
                    return Err(error.into());
                }
            }
        }
        for pod in &delete {
            let node_gone = pod["spec"]["nodeName"].as_str().is_some_and(|n| !nodes.iter().any(|node| meta::name(node) == n));
            if node_gone {
                // Nobody will finish a graceful deletion on a node that no longer exists.
                let options = json!({"gracePeriodSeconds": 0, "preconditions": {"uid": meta::uid(pod)}});
                match context.client.delete(info("Pod"), Some(namespace), meta::name(pod), &options).await {
                    Ok(_) | Err(shoal_client::Error::Api(shoal_api::ApiError { code: 404 | 409, .. })) => pod_cache.remember_deleted(pod),
                    Err(error) => return Err(error.into()),
                }
            } else {
                pods::delete(&context.client, pod_cache, pod).await?;
            }
            context.recorder.normal(reference.clone(), "SuccessfulDelete", format!("Deleted pod: {}", meta::name(pod)));
        }

        let active: Vec<Arc<Value>> = pod_cache.owned_by(uid).into_iter().filter(|p| controller_of(p).is_some_and(|o| o["uid"] == uid) && pods::is_active(p)).collect();
        let scheduled_nodes: std::collections::HashSet<&str> = active.iter().filter_map(|p| p["spec"]["nodeName"].as_str()).collect();
        let current_scheduled = nodes.iter().filter(|n| should_run(template, n) && scheduled_nodes.contains(meta::name(n))).count();
        let ready = active.iter().filter(|p| pods::is_ready(p)).count();
        let available = active.iter().filter(|p| pods::is_available(p, min_ready, now)).count();
        let updated = active.iter().filter(|p| p["metadata"]["labels"][REVISION_HASH_LABEL] == hash.as_str()).count();
        let status = json!({
            "currentNumberScheduled": current_scheduled,
            "desiredNumberScheduled": eligible,
            "numberMisscheduled": misscheduled,
            "numberReady": ready,
            "numberAvailable": available,
            "numberUnavailable": (eligible - available as i64).max(0),
            "updatedNumberScheduled": updated,
            "observedGeneration": ds["metadata"]["generation"].as_i64().unwrap_or(0),
        });
        if let Some(action) = harness::write_status(&context.client, "DaemonSet", daemon_sets, &ds, status).await? {
            return Ok(action);
        }
        Ok(if min_ready > 0 && available < ready { Action::RequeueAfter(Duration::from_secs(1)) } else { Action::Done })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(labels: Value, taints: Value) -> Value {
        json!({"metadata": {"name": "n", "labels": labels}, "spec": {"taints": taints}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    }

    #[test]
    fn eligibility_follows_selectors_taints_and_runtimes() {
        let template = json!({"metadata": {"labels": {"app": "agent"}}, "spec": {"containers": [{"name": "c", "image": "x"}]}});
        let wasm = json!({"shoal.dev/wasm": "true"});
        assert!(should_run(&template, &node(wasm.clone(), json!([]))));
        assert!(!should_run(&template, &node(json!({}), json!([]))));
        // Unreachable and cordoned nodes keep their daemon pods.
        assert!(should_run(&template, &node(wasm.clone(), json!([{"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}, {"key": "node.kubernetes.io/unschedulable", "effect": "NoSchedule"}]))));
        assert!(!should_run(&template, &node(wasm.clone(), json!([{"key": "dedicated", "value": "db", "effect": "NoSchedule"}]))));
        let mut selective = template.clone();
        selective["spec"]["nodeSelector"] = json!({"role": "edge"});
        assert!(!should_run(&selective, &node(wasm.clone(), json!([]))));
        assert!(should_run(&selective, &node(json!({"shoal.dev/wasm": "true", "role": "edge"}), json!([]))));
    }
}

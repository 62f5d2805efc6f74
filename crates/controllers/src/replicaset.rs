//! The ReplicaSet controller: keeps `spec.replicas` active pods matching the template, adopting
//! matching orphans and releasing pods that no longer match, and reports replicas,
//! fullyLabeledReplicas, readyReplicas, availableReplicas and observedGeneration.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use shoal_api::meta;
use shoal_api::selector::LabelSelector;

use crate::events::ObjectReference;
use crate::harness::{self, Action, Reconciler, Result};
use crate::informer::{Informer, controller_of, object_key, split_key};
use crate::pods::{self, PodName};
use crate::{Context, Registered, info};

/// Pods created or deleted per reconcile at most; the rest follow on the next pass. Creation
/// starts with one and doubles while it succeeds (kube-controller-manager's slow start).
const BURST: usize = 500;
const MANAGER: &str = "shoal-replicaset-controller";

pub struct ReplicaSetController {
    context: Arc<Context>,
}

impl ReplicaSetController {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let replica_sets = Arc::clone(context.informers.get("ReplicaSet"));
        harness::watch_into(&replica_sets, &queue, harness::own_keys);
        let lookup = Arc::clone(&replica_sets);
        harness::watch_into(context.informers.get("Pod"), &queue, move |old, new| pod_owners(&lookup, old, new));
        Registered::new(Self { context: Arc::clone(context) }, queue, &replica_sets)
    }
}

/// The ReplicaSets to look at when a pod changes: its controllers before and after, or, for an
/// orphan, every ReplicaSet in its namespace whose selector matches it (to adopt it).
pub(crate) fn pod_owners(owners: &Informer, old: Option<&Value>, new: Option<&Value>) -> Vec<String> {
    let mut keys = Vec::new();
    for pod in [old, new].into_iter().flatten() {
        match controller_of(pod) {
            Some(owner) if owner["kind"] == owners.info.kind => {
                keys.push(format!("{}/{}", meta::namespace(pod), owner["name"].as_str().unwrap_or_default()));
            }
            Some(_) => {}
            None if pod["metadata"]["deletionTimestamp"].is_null() => {
                for candidate in owners.list_namespace(meta::namespace(pod)) {
                    if LabelSelector::from_object(&candidate["spec"]["selector"]).is_ok_and(|s| !s.is_empty() && s.matches(meta::labels(pod))) {
                        keys.push(object_key(&candidate));
                    }
                }
            }
            None => {}
        }
    }
    keys.dedup();
    keys
}

/// What a reconcile of one ReplicaSet decided.
#[derive(Debug, PartialEq)]
pub struct Plan {
    pub create: usize,
    /// Keys of pods to delete, best candidates first.
    pub delete: Vec<String>,
    pub adopt: Vec<String>,
    pub release: Vec<String>,
    pub status: Value,
    /// When a ready pod becomes available (minReadySeconds), in seconds.
    pub recheck_after: Option<i64>,
}

/// The decision for `rs` given every pod in its namespace. Pure.
pub fn plan(rs: &Value, namespace_pods: &[Arc<Value>], now: jiff::Timestamp) -> Plan {
    let uid = meta::uid(rs);
    let selector = LabelSelector::from_object(&rs["spec"]["selector"]).unwrap_or_default();
    let replicas = rs["spec"]["replicas"].as_i64().unwrap_or(1).max(0) as usize;
    let min_ready = rs["spec"]["minReadySeconds"].as_i64().unwrap_or(0);
    let mut owned: Vec<&Value> = Vec::new();
    let mut adopt = Vec::new();
    let mut release = Vec::new();
    for pod in namespace_pods {
        let matches = !selector.is_empty() && selector.matches(meta::labels(pod));
        match controller_of(pod) {
            Some(owner) if owner["uid"] == uid => {
                if matches {
                    owned.push(pod);
                } else if pods::is_active(pod) {
                    release.push(object_key(pod));
                }
            }
            None if matches && pods::is_active(pod) && rs["metadata"]["deletionTimestamp"].is_null() => {
                adopt.push(object_key(pod));
                owned.push(pod);
            }
            _ => {}
        }
    }
    let mut active: Vec<&Value> = owned.iter().copied().filter(|p| pods::is_active(p)).collect();
    let mut create = 0;
    let mut delete = Vec::new();
    if active.len() < replicas {
        create = (replicas - active.len()).min(BURST);
    } else if active.len() > replicas {
        active.sort_by_key(|p| pods::deletion_rank(p));
        delete = active.iter().take((active.len() - replicas).min(BURST)).map(|p| object_key(p)).collect();
    }
    let template_labels = rs["spec"]["template"]["metadata"]["labels"].as_object().cloned().unwrap_or_default();
    let active_pods: Vec<&Value> = owned.iter().copied().filter(|p| pods::is_active(p)).collect();
    let fully_labeled = active_pods.iter().filter(|p| meta::labels(p).is_some_and(|labels| template_labels.iter().all(|(k, v)| labels.get(k) == Some(v)))).count();
    let ready = active_pods.iter().filter(|p| pods::is_ready(p)).count();
    let mut available = 0;
    let mut recheck_after: Option<i64> = None;
    for pod in &active_pods {
        match pods::availability(pod, min_ready, now) {
            Ok(()) => available += 1,
            Err(Some(remaining)) => recheck_after = Some(recheck_after.map_or(remaining, |r| r.min(remaining))),
            Err(None) => {}
        }
    }
    let mut status = json!({
        "replicas": active_pods.len(),
        "fullyLabeledReplicas": fully_labeled,
        "readyReplicas": ready,
        "availableReplicas": available,
        "observedGeneration": rs["metadata"]["generation"].as_i64().unwrap_or(0),
    });
    // Keep a ReplicaFailure condition the last pass set; it is cleared when creation works.
    if let Some(conditions) = rs["status"]["conditions"].as_array().filter(|c| !c.is_empty()) {
        status["conditions"] = Value::Array(conditions.clone());
    }
    Plan { create, delete, adopt, release, status, recheck_after }
}

impl Reconciler for ReplicaSetController {
    fn name(&self) -> &'static str {
        "replicaset"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let context = &self.context;
        let replica_sets = context.informers.get("ReplicaSet");
        let pod_cache = context.informers.get("Pod");
        let Some(rs) = replica_sets.get(key) else { return Ok(Action::Done) };
        let (namespace, name) = split_key(key);
        let namespace_pods = pod_cache.list_namespace(namespace);
        let now = jiff::Timestamp::now();
        let mut decided = plan(&rs, &namespace_pods, now);
        let reference = ObjectReference::of("apps/v1", "ReplicaSet", &rs);
        let owner = pods::controller_reference("apps/v1", "ReplicaSet", &rs);
        let terminating = !rs["metadata"]["deletionTimestamp"].is_null();

        for pod_key in decided.adopt.iter().chain(&decided.release) {
            let Some(pod) = pod_cache.get(pod_key) else { continue };
            let adopting = decided.adopt.contains(pod_key);
            let mut references: Vec<Value> = pod["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
            if adopting {
                references.push(owner.clone());
            } else {
                references.retain(|r| r["uid"] != meta::uid(&rs));
            }
            let patch = json!({"metadata": {"ownerReferences": references, "resourceVersion": pod["metadata"]["resourceVersion"]}});
            match context.client.patch(info("Pod"), Some(namespace), meta::name(&pod), &patch, true, MANAGER).await {
                Ok(updated) => pod_cache.remember(updated),
                Err(shoal_client::Error::Api(error)) if error.code == 404 || error.code == 409 => {}
                Err(error) => return Err(error.into()),
            }
        }

        let mut failure: Option<String> = None;
        if decided.create > 0 && !terminating {
            let template = &rs["spec"]["template"];
            let prefix = format!("{name}-");
            let pod = pods::pod_from_template(template, namespace, owner.clone(), PodName::Generate(&prefix));
            let mut remaining = decided.create;
            let mut batch = 1;
            let mut created = 0;
            while remaining > 0 && failure.is_none() {
                let size = batch.min(remaining);
                let results: Vec<_> = futures::stream::iter(0..size).map(|_| pods::create(&context.client, pod_cache, &pod, MANAGER)).buffer_unordered(64).collect().await;
                for result in results {
                    match result {
                        Ok(_) => created += 1,
                        Err(error) => failure = Some(error.to_string()),
                    }
                }
                remaining -= size;
                batch *= 2;
            }
            if created > 0 {
                context.recorder.normal(reference.clone(), "SuccessfulCreate", if created == 1 { format!("Created pod for {name}") } else { format!("Created {created} pods") });
            }
            if let Some(error) = &failure {
                context.recorder.warning(reference.clone(), "FailedCreate", format!("Error creating: {error}"));
            }
        }
        if !decided.delete.is_empty() {
            let victims: Vec<Arc<Value>> = decided.delete.iter().filter_map(|k| pod_cache.get(k)).collect();
            let client = &context.client;
            let results: Vec<_> = futures::stream::iter(victims)
                .map(|pod| async move { pods::delete(client, pod_cache, &pod).await })
                .buffer_unordered(64)
                .collect()
                .await;
            let deleted = results.iter().filter(|r| r.is_ok()).count();
            if deleted > 0 {
                context.recorder.normal(reference.clone(), "SuccessfulDelete", format!("Deleted {deleted} pod(s)"));
            }
            if let Some(Err(error)) = results.into_iter().find(|r| r.is_err()) {
                return Err(error.into());
            }
        }

        // Status reflects the pods as they are now (including any just created or deleted).
        let refreshed = pod_cache.list_namespace(namespace);
        let mut status = plan(&rs, &refreshed, now).status;
        let mut conditions: Vec<Value> = status["conditions"].as_array().cloned().unwrap_or_default();
        conditions.retain(|c| c["type"] != "ReplicaFailure");
        if let Some(error) = &failure {
            conditions.push(json!({"type": "ReplicaFailure", "status": "True", "reason": "FailedCreate", "message": error, "lastTransitionTime": meta::format_time(now)}));
        }
        if conditions.is_empty() {
            if let Some(map) = status.as_object_mut() {
                map.remove("conditions");
            }
        } else {
            status["conditions"] = Value::Array(conditions);
        }
        decided.status = status;
        if let Some(action) = harness::write_status(&context.client, "ReplicaSet", replica_sets, &rs, decided.status.clone()).await? {
            return Ok(action);
        }
        if let Some(error) = failure {
            return Err(harness::Error::Other(error));
        }
        if decided.create == BURST || decided.delete.len() == BURST {
            return Ok(Action::RequeueAfter(Duration::ZERO));
        }
        Ok(match decided.recheck_after {
            Some(seconds) => Action::RequeueAfter(Duration::from_secs(seconds.max(1) as u64)),
            None => Action::Done,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(replicas: i64) -> Value {
        json!({"metadata": {"namespace": "ns", "name": "web", "uid": "rs-uid", "generation": 3},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}}, "template": {"metadata": {"labels": {"app": "web", "tier": "front"}}}}})
    }

    fn pod(name: &str, owner: Option<&str>, labels: Value, phase: &str, ready: bool) -> Arc<Value> {
        let mut pod = json!({"metadata": {"namespace": "ns", "name": name, "uid": name, "labels": labels, "creationTimestamp": "2026-01-01T00:00:00Z"},
                             "spec": {"nodeName": "n"}, "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }, "lastTransitionTime": "2026-01-01T00:00:00Z"}]}});
        if let Some(owner) = owner {
            pod["metadata"]["ownerReferences"] = json!([{"uid": owner, "controller": true, "kind": "ReplicaSet", "name": "web"}]);
        }
        Arc::new(pod)
    }

    #[test]
    fn scales_up_counting_only_active_owned_pods() {
        let now = jiff::Timestamp::now();
        let pods = vec![
            pod("a", Some("rs-uid"), json!({"app": "web", "tier": "front"}), "Running", true),
            pod("failed", Some("rs-uid"), json!({"app": "web"}), "Failed", false),
            pod("other", Some("other-uid"), json!({"app": "web"}), "Running", true),
        ];
        let decided = plan(&rs(3), &pods, now);
        assert_eq!(decided.create, 2);
        assert!(decided.delete.is_empty() && decided.adopt.is_empty());
        assert_eq!(decided.status, json!({"replicas": 1, "fullyLabeledReplicas": 1, "readyReplicas": 1, "availableReplicas": 1, "observedGeneration": 3}));
    }

    #[test]
    fn adopts_orphans_releases_mismatches_and_deletes_the_surplus_unready_first() {
        let now = jiff::Timestamp::now();
        let pods = vec![
            pod("ready", Some("rs-uid"), json!({"app": "web"}), "Running", true),
            pod("unready", Some("rs-uid"), json!({"app": "web"}), "Running", false),
            pod("orphan", None, json!({"app": "web"}), "Running", true),
            pod("relabelled", Some("rs-uid"), json!({"app": "debug"}), "Running", true),
        ];
        let decided = plan(&rs(1), &pods, now);
        assert_eq!(decided.adopt, vec!["ns/orphan".to_owned()]);
        assert_eq!(decided.release, vec!["ns/relabelled".to_owned()]);
        assert_eq!(decided.create, 0);
        assert_eq!(decided.delete[0], "ns/unready");
        assert_eq!(decided.delete.len(), 2);
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let now: jiff::Timestamp = "2026-01-01T00:00:04Z".parse().expect("time");
        let mut set = rs(1);
        set["spec"]["minReadySeconds"] = json!(10);
        let decided = plan(&set, &[pod("a", Some("rs-uid"), json!({"app": "web"}), "Running", true)], now);
        assert_eq!(decided.status["availableReplicas"], 0);
        assert_eq!(decided.recheck_after, Some(6));
    }
}

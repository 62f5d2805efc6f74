//! What several controllers need to know about pods: whether one is active, ready or
//! available, how to rank pods for deletion, and how to create a pod from a template with an
//! owner reference.

use serde_json::{Value, json};
use shoal_api::{meta, resources};
use shoal_client::{Client, Error as ClientError};

use crate::informer::Informer;

/// Running or about to: not finished and not being deleted.
pub fn is_active(pod: &Value) -> bool {
    !matches!(pod["status"]["phase"].as_str(), Some("Succeeded" | "Failed")) && pod["metadata"]["deletionTimestamp"].is_null()
}

pub fn is_terminating(pod: &Value) -> bool {
    !pod["metadata"]["deletionTimestamp"].is_null()
}

fn ready_condition(pod: &Value) -> Option<&Value> {
    pod["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")
}

pub fn is_ready(pod: &Value) -> bool {
    ready_condition(pod).is_some_and(|c| c["status"] == "True")
}

/// Ready for at least `min_ready_seconds` at `now`; otherwise how many seconds remain (`Err`),
/// or `Err(None)` when not ready at all.
pub fn availability(pod: &Value, min_ready_seconds: i64, now: jiff::Timestamp) -> Result<(), Option<i64>> {
    if !is_ready(pod) {
        return Err(None);
    }
    if min_ready_seconds <= 0 {
        return Ok(());
    }
    let since = ready_condition(pod).and_then(|c| c["lastTransitionTime"].as_str()).and_then(meta::parse_time);
    match since {
        Some(since) => {
            let ready_for = now.duration_since(since).as_secs();
            if ready_for >= min_ready_seconds { Ok(()) } else { Err(Some(min_ready_seconds - ready_for)) }
        }
        None => Ok(()),
    }
}

pub fn is_available(pod: &Value, min_ready_seconds: i64, now: jiff::Timestamp) -> bool {
    availability(pod, min_ready_seconds, now).is_ok()
}

fn restarts(pod: &Value) -> i64 {
    pod["status"]["containerStatuses"].as_array().into_iter().flatten().map(|s| s["restartCount"].as_i64().unwrap_or(0)).sum()
}

/// Orders pods the way a ReplicaSet deletes them when scaling down (kube-controller-manager's
/// ActivePods ordering): unscheduled before scheduled, pending before running, not ready before
/// ready, more restarts before fewer, newer before older.
pub fn deletion_rank(pod: &Value) -> (u8, u8, u8, i64, std::cmp::Reverse<String>) {
    let scheduled = !pod["spec"]["nodeName"].as_str().unwrap_or_default().is_empty();
    let phase = match pod["status"]["phase"].as_str() {
        Some("Pending") => 0,
        Some("Unknown") => 1,
        _ => 2,
    };
    let created = pod["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_owned();
    (scheduled as u8, phase, is_ready(pod) as u8, -restarts(pod), std::cmp::Reverse(created))
}

/// An owner reference to `owner` as its controller.
pub fn controller_reference(api_version: &str, kind: &str, owner: &Value) -> Value {
    json!({"apiVersion": api_version, "kind": kind, "name": meta::name(owner), "uid": meta::uid(owner), "controller": true, "blockOwnerDeletion": true})
}

/// A pod from `template` in `namespace`, owned by `owner_reference`, named `generate_name`
/// plus a random suffix (or exactly `name`).
pub fn pod_from_template(template: &Value, namespace: &str, owner_reference: Value, name: PodName<'_>) -> Value {
    let mut metadata = json!({
        "namespace": namespace,
        "labels": template["metadata"]["labels"].clone(),
        "ownerReferences": [owner_reference],
    });
    if let Some(annotations) = template["metadata"]["annotations"].as_object().filter(|a| !a.is_empty()) {
        metadata["annotations"] = Value::Object(annotations.clone());
    }
    if let Some(finalizers) = template["metadata"]["finalizers"].as_array().filter(|f| !f.is_empty()) {
        metadata["finalizers"] = Value::Array(finalizers.clone());
    }
    match name {
        PodName::Generate(prefix) => metadata["generateName"] = json!(prefix),
        PodName::Exact(name) => metadata["name"] = json!(name),
    }
    if metadata["labels"].is_null() {
        metadata["labels"] = json!({});
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": template["spec"].clone()})
}

pub enum PodName<'a> {
    Generate(&'a str),
    Exact(&'a str),
}

/// Creates `pod` and records it in `cache` at once, so the next reconcile counts it.
pub async fn create(client: &Client, cache: &Informer, pod: &Value, manager: &str) -> Result<Value, ClientError> {
    let pods = resources::by_name("pods").expect("pods are served");
    let created = client.create(pods, Some(meta::namespace(pod)), pod, manager).await?;
    cache.remember(created.clone());
    Ok(created)
}

/// Deletes `pod` (gracefully when it is bound) and records the outcome in `cache`.
pub async fn delete(client: &Client, cache: &Informer, pod: &Value) -> Result<(), ClientError> {
    let pods = resources::by_name("pods").expect("pods are served");
    let options = json!({"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": meta::uid(pod)}});
    match client.delete(pods, Some(meta::namespace(pod)), meta::name(pod), &options).await {
        Ok(after) => {
            if after["metadata"]["deletionTimestamp"].is_null() || after["metadata"]["deletionGracePeriodSeconds"] == 0 {
                cache.remember_deleted(pod);
            } else {
                cache.remember(after);
            }
            Ok(())
        }
        Err(ClientError::Api(error)) if error.code == 404 => {
            cache.remember_deleted(pod);
            Ok(())
        }
        Err(ClientError::Api(error)) if error.code == 409 => Ok(()),
        Err(other) => Err(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletion_prefers_unscheduled_pending_unready_new_pods() {
        let pod = |name: &str, node: &str, phase: &str, ready: bool, created: &str| {
            json!({"metadata": {"name": name, "creationTimestamp": created}, "spec": {"nodeName": node},
                   "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}})
        };
        let mut pods = [
            pod("old-ready", "n", "Running", true, "2026-01-01T00:00:00Z"),
            pod("new-ready", "n", "Running", true, "2026-01-02T00:00:00Z"),
            pod("unready", "n", "Running", false, "2026-01-01T00:00:00Z"),
            pod("pending", "n", "Pending", false, "2026-01-01T00:00:00Z"),
            pod("unscheduled", "", "Pending", false, "2026-01-01T00:00:00Z"),
        ];
        pods.sort_by_key(deletion_rank);
        let names: Vec<&str> = pods.iter().map(meta::name).collect();
        assert_eq!(names, ["unscheduled", "pending", "unready", "new-ready", "old-ready"]);
    }

    #[test]
    fn availability_waits_for_min_ready_seconds() {
        let now: jiff::Timestamp = "2026-01-01T00:00:10Z".parse().expect("time");
        let pod = json!({"status": {"conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-01-01T00:00:05Z"}]}});
        assert_eq!(availability(&pod, 0, now), Ok(()));
        assert_eq!(availability(&pod, 5, now), Ok(()));
        assert_eq!(availability(&pod, 8, now), Err(Some(3)));
        assert_eq!(availability(&json!({}), 0, now), Err(None));
    }
}

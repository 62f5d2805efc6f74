//! The Deployment controller: one ReplicaSet per pod template (`<name>-<pod-template-hash>`),
//! RollingUpdate within maxSurge/maxUnavailable or Recreate, revisions and rollback by template,
//! paused deployments, revision history cleanup, and the status and conditions
//! `kubectl rollout status` reads. The rollout arithmetic is pure and tested here.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use shoal_api::meta;
use shoal_api::selector::LabelSelector;

use crate::events::ObjectReference;
use crate::harness::{self, Action, Reconciler, Result};
use crate::informer::{controller_of, split_key};
use crate::{Context, Registered, info};

pub const REVISION_ANNOTATION: &str = "deployment.kubernetes.io/revision";
pub const DESIRED_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/desired-replicas";
pub const MAX_REPLICAS_ANNOTATION: &str = "deployment.kubernetes.io/max-replicas";
pub const CHANGE_CAUSE_ANNOTATION: &str = "kubernetes.io/change-cause";
pub const HASH_LABEL: &str = "pod-template-hash";
const MANAGER: &str = "shoal-deployment-controller";

/// Drops nulls, empty objects and empty lists, so templates that mean the same compare equal
/// however they were written.
pub fn normalized(value: &Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (key, child) in map {
                let child = normalized(child);
                let empty = match &child {
                    Value::Null => true,
                    Value::Object(m) => m.is_empty(),
                    Value::Array(a) => a.is_empty(),
                    _ => false,
                };
                if !empty {
                    out.insert(key.clone(), child);
                }
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(normalized).collect()),
        other => other.clone(),
    }
}

/// A ReplicaSet's template without the hash label, normalized: what it is compared by.
fn comparable_template(template: &Value) -> Value {
    let mut template = template.clone();
    if let Some(labels) = template["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    normalized(&template)
}

/// Whether a ReplicaSet's template is the Deployment's (semantically, ignoring the hash label).
pub fn same_template(deployment_template: &Value, rs_template: &Value) -> bool {
    comparable_template(deployment_template) == comparable_template(rs_template)
}

/// The pod-template-hash: a digest of the normalized template and the collision count, in
/// Kubernetes' safe alphabet (no vowels, no look-alike digits).
pub fn template_hash(template: &Value, collision_count: i64) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hasher = Sha256::new();
    hasher.update(serde_json::to_vec(&comparable_template(template)).unwrap_or_default());
    if collision_count > 0 {
        hasher.update(collision_count.to_le_bytes());
    }
    let digest = hasher.finalize();
    let mut number = u64::from_le_bytes(digest[..8].try_into().unwrap_or([0; 8]));
    let mut out = String::new();
    for _ in 0..10 {
        out.push(ALPHABET[(number % ALPHABET.len() as u64) as usize] as char);
        number /= ALPHABET.len() as u64;
    }
    out
}

/// An int-or-percent field against `total`: percentages round up (`round_up`) or down.
pub fn int_or_percent(value: &Value, total: i64, round_up: bool) -> i64 {
    match value {
        Value::Number(n) => n.as_i64().unwrap_or(0),
        Value::String(s) => match s.strip_suffix('%').and_then(|p| p.trim().parse::<i64>().ok()) {
            Some(percent) => {
                let scaled = percent * total;
                if round_up { (scaled + 99) / 100 } else { scaled / 100 }
            }
            None => s.parse().unwrap_or(0),
        },
        _ => 0,
    }
}

/// maxSurge and maxUnavailable resolved against `replicas` (both zero becomes one unavailable).
pub fn surge_and_unavailable(deployment: &Value, replicas: i64) -> (i64, i64) {
    if deployment["spec"]["strategy"]["type"] == "Recreate" {
        return (0, 0);
    }
    let rolling = &deployment["spec"]["strategy"]["rollingUpdate"];
    let surge_value = if rolling["maxSurge"].is_null() { json!("25%") } else { rolling["maxSurge"].clone() };
    let unavailable_value = if rolling["maxUnavailable"].is_null() { json!("25%") } else { rolling["maxUnavailable"].clone() };
    let surge = int_or_percent(&surge_value, replicas, true).max(0);
    let mut unavailable = int_or_percent(&unavailable_value, replicas, false).max(0);
    if surge == 0 && unavailable == 0 {
        unavailable = 1;
    }
    (surge, unavailable.min(replicas.max(0)))
}

/// A ReplicaSet as the rollout arithmetic sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsCounts {
    pub name: String,
    pub replicas: i64,
    pub available: i64,
}

/// The new ReplicaSet's replicas for this step of a rolling update.
pub fn new_replicas_rolling(replicas: i64, surge: i64, all_replicas: i64, new_replicas: i64) -> i64 {
    if new_replicas >= replicas {
        return replicas;
    }
    let max_total = replicas + surge;
    if all_replicas >= max_total {
        return new_replicas;
    }
    new_replicas + (max_total - all_replicas).min(replicas - new_replicas)
}

/// The old ReplicaSets' replicas for this step (oldest first in `old`): first unhealthy pods go,
/// then available ones while at least `replicas - unavailable` stay available.
pub fn old_replicas_rolling(replicas: i64, unavailable: i64, new: &RsCounts, old: &[RsCounts]) -> Vec<RsCounts> {
    let mut old = old.to_vec();
    let all_replicas: i64 = new.replicas + old.iter().map(|r| r.replicas).sum::<i64>();
    let min_available = replicas - unavailable;
    let new_unavailable = new.replicas - new.available;
    let max_scaled_down = all_replicas - min_available - new_unavailable;
    if max_scaled_down <= 0 {
        return old;
    }
    let mut cleaned = 0;
    for rs in old.iter_mut() {
        if cleaned >= max_scaled_down {
            break;
        }
        let unhealthy = rs.replicas - rs.available.min(rs.replicas);
        if rs.replicas == 0 || unhealthy <= 0 {
            continue;
        }
        let down = unhealthy.min(max_scaled_down - cleaned);
        rs.replicas -= down;
        cleaned += down;
    }
    let available: i64 = new.available + old.iter().map(|r| r.available.min(r.replicas)).sum::<i64>();
    if available <= min_available {
        return old;
    }
    let mut budget = (available - min_available).min(max_scaled_down - cleaned);
    for rs in old.iter_mut() {
        if budget <= 0 {
            break;
        }
        let down = rs.replicas.min(budget);
        rs.replicas -= down;
        budget -= down;
    }
    old
}

fn revision_of(object: &Value) -> i64 {
    object["metadata"]["annotations"][REVISION_ANNOTATION].as_str().and_then(|r| r.parse().ok()).unwrap_or(0)
}

fn condition<'a>(status: &'a Value, kind: &str) -> Option<&'a Value> {
    status["conditions"].as_array()?.iter().find(|c| c["type"] == kind)
}

/// Sets a condition, keeping lastTransitionTime when the status does not change and
/// lastUpdateTime when nothing about it changes.
fn set_condition(conditions: &mut Vec<Value>, kind: &str, status: &str, reason: &str, message: &str, now: &str) {
    let existing = conditions.iter().position(|c| c["type"] == kind);
    let (transition, update) = match existing.map(|i| &conditions[i]) {
        Some(old) if old["status"] == status => {
            let same = old["reason"] == reason && old["message"] == message;
            (old["lastTransitionTime"].clone(), if same { old["lastUpdateTime"].clone() } else { json!(now) })
        }
        _ => (json!(now), json!(now)),
    };
    let condition = json!({"type": kind, "status": status, "reason": reason, "message": message, "lastTransitionTime": transition, "lastUpdateTime": update});
    match existing {
        Some(index) => conditions[index] = condition,
        None => conditions.push(condition),
    }
}

pub struct DeploymentController {
    context: Arc<Context>,
}

impl DeploymentController {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let deployments = Arc::clone(context.informers.get("Deployment"));
        harness::watch_into(&deployments, &queue, harness::own_keys);
        let lookup = Arc::clone(&deployments);
        harness::watch_into(context.informers.get("ReplicaSet"), &queue, move |old, new| crate::replicaset::pod_owners(&lookup, old, new));
        // A pod of a Deployment changes its ReplicaSet's status, which wakes the Deployment; a
        // deleted pod also matters directly to Recreate, which waits for old pods to go.
        let replica_sets = Arc::clone(context.informers.get("ReplicaSet"));
        harness::watch_into(context.informers.get("Pod"), &queue, move |old, new| {
            if new.is_some() {
                return Vec::new();
            }
            let Some(pod) = old else { return Vec::new() };
            let Some(owner) = controller_of(pod).filter(|o| o["kind"] == "ReplicaSet") else { return Vec::new() };
            let Some(rs) = replica_sets.get_named(meta::namespace(pod), owner["name"].as_str().unwrap_or_default()) else { return Vec::new() };
            harness::owner_key(&rs, "Deployment").into_iter().collect()
        });
        Registered::new(Self { context: Arc::clone(context) }, queue, &deployments)
    }

    async fn scale(&self, deployment: &Value, rs: &Value, replicas: i64, max_replicas: i64) -> Result<Value> {
        let (namespace, name) = (meta::namespace(rs), meta::name(rs));
        let current = rs["spec"]["replicas"].as_i64().unwrap_or(0);
        let patch = json!({
            "metadata": {"resourceVersion": rs["metadata"]["resourceVersion"], "annotations": {
                DESIRED_REPLICAS_ANNOTATION: deployment["spec"]["replicas"].as_i64().unwrap_or(1).to_string(),
                MAX_REPLICAS_ANNOTATION: max_replicas.to_string(),
            }},
            "spec": {"replicas": replicas},
        });
        let updated = self.context.client.patch(info("ReplicaSet"), Some(namespace), name, &patch, true, MANAGER).await?;
        self.context.informers.get("ReplicaSet").remember(updated.clone());
        if current != replicas {
            let direction = if replicas > current { "up" } else { "down" };
            self.context.recorder.normal(
                ObjectReference::of("apps/v1", "Deployment", deployment),
                "ScalingReplicaSet",
                format!("Scaled {direction} replica set {name} from {current} to {replicas}"),
            );
        }
        Ok(updated)
    }
}

impl Reconciler for DeploymentController {
    fn name(&self) -> &'static str {
        "deployment"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let context = &self.context;
        let deployments = context.informers.get("Deployment");
        let replica_set_cache = context.informers.get("ReplicaSet");
        let Some(deployment) = deployments.get(key) else { return Ok(Action::Done) };
        if !deployment["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let (namespace, name) = split_key(key);
        let uid = meta::uid(&deployment);
        let selector = LabelSelector::from_object(&deployment["spec"]["selector"]).unwrap_or_default();
        let replicas = deployment["spec"]["replicas"].as_i64().unwrap_or(1).max(0);
        let template = &deployment["spec"]["template"];
        let paused = deployment["spec"]["paused"] == true;
        let now = jiff::Timestamp::now();
        let stamp = meta::format_time(now);
        let reference = ObjectReference::of("apps/v1", "Deployment", &deployment);

        // The ReplicaSets it owns, adopting matching orphans.
        let mut owned: Vec<Arc<Value>> = Vec::new();
        for rs in replica_set_cache.list_namespace(namespace) {
            match controller_of(&rs) {
                Some(owner) if owner["uid"] == uid => owned.push(rs),
                None if !selector.is_empty() && selector.matches(rs["spec"]["template"]["metadata"]["labels"].as_object()) && rs["metadata"]["deletionTimestamp"].is_null() => {
                    let mut references = rs["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
                    references.push(crate::pods::controller_reference("apps/v1", "Deployment", &deployment));
                    let patch = json!({"metadata": {"ownerReferences": references, "resourceVersion": rs["metadata"]["resourceVersion"]}});
                    let adopted = context.client.patch(info("ReplicaSet"), Some(namespace), meta::name(&rs), &patch, true, MANAGER).await?;
                    replica_set_cache.remember(adopted.clone());
                    owned.push(Arc::new(adopted));
                }
                _ => {}
            }
        }
        owned.sort_by(|a, b| {
            let created = |rs: &Value| rs["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_owned();
            created(a).cmp(&created(b)).then_with(|| meta::name(a).cmp(meta::name(b)))
        });
        let mut new_rs: Option<Value> = owned.iter().find(|rs| same_template(template, &rs["spec"]["template"])).map(|rs| (**rs).clone());
        let old: Vec<Value> = owned.iter().filter(|rs| new_rs.as_ref().is_none_or(|n| meta::uid(n) != meta::uid(rs))).map(|rs| (**rs).clone()).collect();
        let max_old_revision = old.iter().map(revision_of).max().unwrap_or(0);
        let (surge, unavailable) = surge_and_unavailable(&deployment, replicas);
        let all_replicas = |new_rs: &Option<Value>, old: &[Value]| -> i64 {
            new_rs.iter().chain(old.iter()).map(|rs| rs["spec"]["replicas"].as_i64().unwrap_or(0)).sum()
        };
        let mut created_new = None;

        if !paused {
            match &new_rs {
                None => {
                    // A new template: a new ReplicaSet at the next revision.
                    let old_active: i64 = old.iter().map(|rs| rs["spec"]["replicas"].as_i64().unwrap_or(0)).sum();
                    let initial = if deployment["spec"]["strategy"]["type"] == "Recreate" {
                        if old_active > 0 { 0 } else { replicas }
                    } else if old_active == 0 {
                        replicas
                    } else {
                        new_replicas_rolling(replicas, surge, all_replicas(&None, &old), 0)
                    };
                    let mut collisions = deployment["status"]["collisionCount"].as_i64().unwrap_or(0);
                    loop {
                        let hash = template_hash(template, collisions);
                        let mut rs_template = template.clone();
                        rs_template["metadata"]["labels"][HASH_LABEL] = json!(hash);
                        let mut rs_selector = deployment["spec"]["selector"].clone();
                        rs_selector["matchLabels"][HASH_LABEL] = json!(hash);
                        let mut annotations = Map::new();
                        if let Some(cause) = deployment["metadata"]["annotations"][CHANGE_CAUSE_ANNOTATION].as_str() {
                            annotations.insert(CHANGE_CAUSE_ANNOTATION.into(), json!(cause));
                        }
                        annotations.insert(REVISION_ANNOTATION.into(), json!((max_old_revision + 1).to_string()));
                        annotations.insert(DESIRED_REPLICAS_ANNOTATION.into(), json!(replicas.to_string()));
                        annotations.insert(MAX_REPLICAS_ANNOTATION.into(), json!((replicas + surge).to_string()));
                        let mut labels = template["metadata"]["labels"].as_object().cloned().unwrap_or_default();
                        labels.insert(HASH_LABEL.into(), json!(hash));
                        let rs_name = format!("{name}-{hash}");
                        let rs = json!({
                            "apiVersion": "apps/v1", "kind": "ReplicaSet",
                            "metadata": {"name": rs_name, "namespace": namespace, "labels": labels, "annotations": annotations,
                                         "ownerReferences": [crate::pods::controller_reference("apps/v1", "Deployment", &deployment)]},
                            "spec": {"replicas": initial, "minReadySeconds": deployment["spec"]["minReadySeconds"].as_i64().unwrap_or(0), "selector": rs_selector, "template": rs_template},
                        });
                        match context.client.create(info("ReplicaSet"), Some(namespace), &rs, MANAGER).await {
                            Ok(created) => {
                                replica_set_cache.remember(created.clone());
                                context.recorder.normal(reference.clone(), "ScalingReplicaSet", format!("Scaled up replica set {rs_name} from 0 to {initial}"));
                                created_new = Some(rs_name);
                                new_rs = Some(created);
                                break;
                            }
                            Err(shoal_client::Error::Api(error)) if error.code == 409 => {
                                // A ReplicaSet of that name with another template or owner: rehash.
                                let existing = context.client.get(info("ReplicaSet"), Some(namespace), &rs_name).await?;
                                let ours = controller_of(&existing).is_some_and(|o| o["uid"] == uid);
                                if ours && same_template(template, &existing["spec"]["template"]) {
                                    replica_set_cache.remember(existing.clone());
                                    new_rs = Some(existing);
                                    break;
                                }
                                collisions += 1;
                                let patch = json!({"status": {"collisionCount": collisions}});
                                context.client.merge_patch_subresource(info("Deployment"), Some(namespace), name, "status", &patch).await?;
                                if collisions > 10 {
                                    return Err(harness::Error::Other(format!("ReplicaSet names for deployment {name} keep colliding")));
                                }
                            }
                            Err(other) => return Err(other.into()),
                        }
                    }
                }
                Some(rs) if revision_of(rs) <= max_old_revision => {
                    // Rolled back to an older template: that ReplicaSet becomes the newest revision.
                    let revision = (max_old_revision + 1).to_string();
                    let mut annotations = json!({REVISION_ANNOTATION: revision});
                    if let Some(cause) = deployment["metadata"]["annotations"][CHANGE_CAUSE_ANNOTATION].as_str() {
                        annotations[CHANGE_CAUSE_ANNOTATION] = json!(cause);
                    }
                    let patch = json!({"metadata": {"annotations": annotations, "resourceVersion": rs["metadata"]["resourceVersion"]}});
                    let updated = context.client.patch(info("ReplicaSet"), Some(namespace), meta::name(rs), &patch, true, MANAGER).await?;
                    replica_set_cache.remember(updated.clone());
                    context.recorder.normal(reference.clone(), "DeploymentRollback", format!("Rolled back deployment {name} to the template of replica set {} (now revision {revision})", meta::name(rs)));
                    new_rs = Some(updated);
                }
                Some(_) => {}
            }
        }

        // The Deployment carries its newest revision.
        if let Some(rs) = &new_rs {
            let revision = revision_of(rs).to_string();
            if deployment["metadata"]["annotations"][REVISION_ANNOTATION].as_str() != Some(revision.as_str()) {
                let patch = json!({"metadata": {"annotations": {REVISION_ANNOTATION: revision}}});
                let updated = context.client.patch(info("Deployment"), Some(namespace), name, &patch, true, MANAGER).await?;
                deployments.remember(updated);
            }
        }

        if paused {
            // Paused: no rollout, but a lone ReplicaSet still follows the replica count.
            let active: Vec<&Value> = new_rs.iter().chain(old.iter()).filter(|rs| rs["spec"]["replicas"].as_i64().unwrap_or(0) > 0).collect();
            if let [only] = active.as_slice()
                && only["spec"]["replicas"].as_i64() != Some(replicas)
            {
                self.scale(&deployment, only, replicas, replicas + surge).await?;
            }
        } else if let Some(new) = &new_rs {
            let new_replicas = new["spec"]["replicas"].as_i64().unwrap_or(0);
            if deployment["spec"]["strategy"]["type"] == "Recreate" {
                let pods = context.informers.get("Pod");
                for rs in &old {
                    if rs["spec"]["replicas"].as_i64().unwrap_or(0) > 0 {
                        self.scale(&deployment, rs, 0, replicas).await?;
                    }
                }
                let old_pods_running = old.iter().any(|rs| pods.owned_by(meta::uid(rs)).iter().any(|p| crate::pods::is_active(p) || crate::pods::is_terminating(p)));
                if !old_pods_running && new_replicas != replicas {
                    self.scale(&deployment, new, replicas, replicas).await?;
                }
            } else {
                let target = new_replicas_rolling(replicas, surge, all_replicas(&new_rs, &old), new_replicas);
                if target != new_replicas {
                    self.scale(&deployment, new, target, replicas + surge).await?;
                } else {
                    let counts = |rs: &Value| RsCounts {
                        name: meta::name(rs).to_owned(),
                        replicas: rs["spec"]["replicas"].as_i64().unwrap_or(0),
                        available: rs["status"]["availableReplicas"].as_i64().unwrap_or(0),
                    };
                    let old_counts: Vec<RsCounts> = old.iter().map(counts).collect();
                    let scaled = old_replicas_rolling(replicas, unavailable, &counts(new), &old_counts);
                    for (rs, after) in old.iter().zip(scaled) {
                        if rs["spec"]["replicas"].as_i64().unwrap_or(0) != after.replicas {
                            self.scale(&deployment, rs, after.replicas, replicas + surge).await?;
                        }
                    }
                }
            }
        }

        // History: fully scaled-down old ReplicaSets beyond revisionHistoryLimit, oldest first.
        let limit = deployment["spec"]["revisionHistoryLimit"].as_i64().unwrap_or(10).max(0) as usize;
        let mut history: Vec<&Value> = old
            .iter()
            .filter(|rs| rs["spec"]["replicas"].as_i64().unwrap_or(0) == 0 && rs["status"]["replicas"].as_i64().unwrap_or(0) == 0 && rs["metadata"]["deletionTimestamp"].is_null())
            .collect();
        history.sort_by_key(|rs| revision_of(rs));
        if history.len() > limit {
            for rs in &history[..history.len() - limit] {
                let options = json!({"propagationPolicy": "Background", "preconditions": {"uid": meta::uid(rs)}});
                match context.client.delete(info("ReplicaSet"), Some(namespace), meta::name(rs), &options).await {
                    Ok(_) => {}
                    Err(shoal_client::Error::Api(error)) if error.code == 404 || error.code == 409 => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }

        // Status, from the ReplicaSets as they are now.
        let current: Vec<Arc<Value>> = replica_set_cache.list_namespace(namespace).into_iter().filter(|rs| controller_of(rs).is_some_and(|o| o["uid"] == uid)).collect();
        let sum = |field: &str| -> i64 { current.iter().map(|rs| rs["status"][field].as_i64().unwrap_or(0)).sum() };
        let new_name = new_rs.as_ref().map(|rs| meta::name(rs).to_owned());
        let new_current = new_name.as_ref().and_then(|n| current.iter().find(|rs| meta::name(rs) == n));
        let updated_replicas = new_current.map(|rs| rs["status"]["replicas"].as_i64().unwrap_or(0)).unwrap_or(0);
        let total = sum("replicas");
        let ready = sum("readyReplicas");
        let available = sum("availableReplicas");
        let previous = &deployment["status"];
        let mut status = json!({
            "observedGeneration": deployment["metadata"]["generation"].as_i64().unwrap_or(0),
            "replicas": total,
            "updatedReplicas": updated_replicas,
            "readyReplicas": ready,
            "availableReplicas": available,
            "unavailableReplicas": (replicas - available).max(0),
        });
        if let Some(collisions) = previous["collisionCount"].as_i64() {
            status["collisionCount"] = json!(collisions);
        }
        let mut conditions: Vec<Value> = previous["conditions"].as_array().cloned().unwrap_or_default();
        if available >= replicas - unavailable {
            set_condition(&mut conditions, "Available", "True", "MinimumReplicasAvailable", "Deployment has minimum availability.", &stamp);
        } else {
            set_condition(&mut conditions, "Available", "False", "MinimumReplicasUnavailable", "Deployment does not have minimum availability.", &stamp);
        }
        let rs_label = new_name.clone().unwrap_or_default();
        let complete = updated_replicas == replicas && available == replicas && total == replicas && new_current.is_some_and(|rs| rs["status"]["observedGeneration"] == rs["metadata"]["generation"]);
        let deadline = deployment["spec"]["progressDeadlineSeconds"].as_i64().unwrap_or(600);
        let mut requeue = None;
        if paused {
            set_condition(&mut conditions, "Progressing", "Unknown", "DeploymentPaused", "Deployment is paused", &stamp);
        } else if let Some(created) = &created_new {
            set_condition(&mut conditions, "Progressing", "True", "NewReplicaSetCreated", &format!("Created new replica set \"{created}\""), &stamp);
        } else if complete {
            set_condition(&mut conditions, "Progressing", "True", "NewReplicaSetAvailable", &format!("ReplicaSet \"{rs_label}\" has successfully progressed."), &stamp);
        } else {
            let progressed = updated_replicas > previous["updatedReplicas"].as_i64().unwrap_or(0)
                || total < previous["replicas"].as_i64().unwrap_or(0)
                || ready > previous["readyReplicas"].as_i64().unwrap_or(0)
                || available > previous["availableReplicas"].as_i64().unwrap_or(0)
                || condition(previous, "Progressing").is_none_or(|c| c["reason"] == "DeploymentPaused" || c["reason"] == "NewReplicaSetAvailable");
            let timed_out = condition(previous, "Progressing")
                .and_then(|c| c["lastUpdateTime"].as_str().and_then(meta::parse_time))
                .is_some_and(|since| now.duration_since(since).as_secs() > deadline);
            if progressed {
                set_condition(&mut conditions, "Progressing", "True", "ReplicaSetUpdated", &format!("ReplicaSet \"{rs_label}\" is progressing."), &stamp);
                requeue = Some(Duration::from_secs(deadline.max(1) as u64 + 1));
            } else if timed_out {
                set_condition(&mut conditions, "Progressing", "False", "ProgressDeadlineExceeded", &format!("ReplicaSet \"{rs_label}\" has timed out progressing."), &stamp);
            } else if let Some(since) = condition(previous, "Progressing").and_then(|c| c["lastUpdateTime"].as_str().and_then(meta::parse_time)) {
                let left = deadline - now.duration_since(since).as_secs();
                requeue = Some(Duration::from_secs(left.max(0) as u64 + 1));
            }
        }
        conditions.sort_by_key(|c| if c["type"] == "Available" { 0 } else { 1 });
        status["conditions"] = Value::Array(conditions);
        if let Some(action) = harness::write_status(&context.client, "Deployment", deployments, &deployment, status).await? {
            return Ok(action);
        }
        Ok(requeue.map_or(Action::Done, Action::RequeueAfter))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentages_round_like_kubernetes() {
        let deployment = |surge: Value, unavailable: Value| json!({"spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}}});
        assert_eq!(surge_and_unavailable(&deployment(json!("25%"), json!("25%")), 10), (3, 2));
        assert_eq!(surge_and_unavailable(&deployment(json!("25%"), json!("25%")), 1), (1, 0));
        assert_eq!(surge_and_unavailable(&deployment(json!(0), json!(0)), 4), (0, 1));
        assert_eq!(surge_and_unavailable(&deployment(json!(2), json!("50%")), 5), (2, 2));
        assert_eq!(surge_and_unavailable(&json!({"spec": {"strategy": {"type": "Recreate"}}}), 5), (0, 0));
    }

    #[test]
    fn the_new_replica_set_grows_within_the_surge() {
        // 4 replicas, surge 1: the old set holds 4, so the new one may add one.
        assert_eq!(new_replicas_rolling(4, 1, 4, 0), 1);
        // Already at the cap.
        assert_eq!(new_replicas_rolling(4, 1, 5, 1), 1);
        // Done, or over (scale-down of the deployment).
        assert_eq!(new_replicas_rolling(4, 1, 4, 4), 4);
        assert_eq!(new_replicas_rolling(2, 1, 6, 5), 2);
        assert_eq!(new_replicas_rolling(10, 3, 10, 0), 3);
    }

    fn counts(name: &str, replicas: i64, available: i64) -> RsCounts {
        RsCounts { name: name.into(), replicas, available }
    }

    #[test]
    fn old_replica_sets_shrink_only_while_enough_stay_available() {
        // maxUnavailable 0: the new pod is not available yet, so nothing old may go.
        assert_eq!(old_replicas_rolling(2, 0, &counts("new", 1, 0), &[counts("old", 2, 2)]), vec![counts("old", 2, 2)]);
        // The new pod is available: one old may go.
        assert_eq!(old_replicas_rolling(2, 0, &counts("new", 1, 1), &[counts("old", 2, 2)]), vec![counts("old", 1, 2)]);
        // Unhealthy old pods go first, even at the minimum.
        assert_eq!(old_replicas_rolling(3, 1, &counts("new", 1, 0), &[counts("old", 3, 1)]), vec![counts("old", 2, 1)]);
        // Oldest first across several old sets.
        assert_eq!(
            old_replicas_rolling(4, 2, &counts("new", 2, 2), &[counts("v1", 1, 1), counts("v2", 3, 3)]),
            vec![counts("v1", 0, 1), counts("v2", 0, 3)]
        );
    }

    #[test]
    fn templates_compare_semantically() {
        let a = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "x", "env": []}], "volumes": null}});
        let b = json!({"metadata": {"labels": {"app": "web", "pod-template-hash": "abc"}, "annotations": {}}, "spec": {"containers": [{"image": "x", "name": "c"}]}});
        let c = json!({"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "c", "image": "y"}]}});
        assert!(same_template(&a, &b));
        assert!(!same_template(&a, &c));
        assert_eq!(template_hash(&a, 0), template_hash(&b, 0));
        assert_ne!(template_hash(&a, 0), template_hash(&a, 1));
        assert_eq!(template_hash(&a, 0).len(), 10);
    }
}

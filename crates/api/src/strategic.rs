//! Strategic merge patch (`application/strategic-merge-patch+json`), the patch `kubectl apply`,
//! `kubectl set image`, `kubectl rollout restart` and `kubectl edit` send for built-in kinds.
//!
//! It is a JSON merge patch, except that some lists are merged element by element instead of
//! replaced: containers by `name`, ports by `containerPort`, volume mounts by `mountPath`, and
//! so on ([`list_strategy`] holds Kubernetes' table, from the `patchStrategy`/`patchMergeKey`
//! tags of the API types Shoal serves). The directives:
//! - `null` deletes a field;
//! - `$patch: replace` replaces a map (or, as a list element, the whole list) instead of merging;
//!   `$patch: delete` deletes a map, or the list element with the same merge key;
//! - `$retainKeys: [...]` drops every field of the map the list does not name, before merging;
//! - `$setElementOrder/FIELD: [...]` orders a merged list (elements it does not name, which only
//!   the server knew, follow in their previous order);
//! - `$deleteFromPrimitiveList/FIELD: [...]` removes those values from a merged list of strings.
//!
//! Directives never reach the stored object.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// How a list field is patched.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ListStrategy {
    /// The patch's list replaces the object's (JSON merge patch semantics).
    Replace,
    /// Elements (objects) are matched by this field and merged; new ones are appended.
    MergeByKey(&'static str),
    /// A list of scalars: the patch's values are added to the object's, as a set.
    MergePrimitive,
}

/// Where each kind keeps its pod spec.
fn pod_spec_prefix(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "Pod" => &["spec"],
        "PodTemplate" => &["template", "spec"],
        "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController" => &["spec", "template", "spec"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template", "spec"],
        _ => return None,
    })
}

/// Kubernetes' merge strategy for the list at `path` (field names from the object's root; list
/// elements add no segment) in an object of `kind`.
pub fn list_strategy(kind: &str, path: &[&str]) -> ListStrategy {
    use ListStrategy::{MergeByKey, MergePrimitive, Replace};
    // Object metadata, the object's own or a template's.
    match path {
        [.., "metadata", "finalizers"] => return MergePrimitive,
        [.., "metadata", "ownerReferences"] => return MergeByKey("uid"),
        _ => {}
    }
    if let Some(prefix) = pod_spec_prefix(kind)
        && let Some(within) = path.strip_prefix(prefix)
    {
        return match within {
            ["containers" | "initContainers" | "ephemeralContainers"] => MergeByKey("name"),
            ["containers" | "initContainers" | "ephemeralContainers", "ports"] => MergeByKey("containerPort"),
            ["containers" | "initContainers" | "ephemeralContainers", "env"] => MergeByKey("name"),
            ["containers" | "initContainers" | "ephemeralContainers", "volumeMounts"] => MergeByKey("mountPath"),
            ["containers" | "initContainers" | "ephemeralContainers", "volumeDevices"] => MergeByKey("devicePath"),
            ["volumes" | "imagePullSecrets" | "resourceClaims" | "schedulingGates"] => MergeByKey("name"),
            ["hostAliases"] => MergeByKey("ip"),
            ["topologySpreadConstraints"] => MergeByKey("topologyKey"),
            _ => Replace,
        };
    }
    match (kind, path) {
        ("Pod", ["status", "conditions"]) => MergeByKey("type"),
        ("Pod", ["status", "podIPs" | "hostIPs"]) => MergeByKey("ip"),
        ("Service", ["spec", "ports"]) => MergeByKey("port"),
        ("Node", ["spec", "podCIDRs"]) => MergePrimitive,
        ("Node", ["status", "addresses"]) => MergeByKey("type"),
        ("ServiceAccount", ["secrets"]) => MergeByKey("name"),
        (
            "Node" | "Namespace" | "Service" | "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet" | "Job" | "ReplicationController"
            | "PersistentVolumeClaim",
            ["status", "conditions"],
        ) => MergeByKey("type"),
        _ => Replace,
    }
}

const ORDER_PREFIX: &str = "$setElementOrder/";
const DELETE_PRIMITIVE_PREFIX: &str = "$deleteFromPrimitiveList/";

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(format!("invalid strategic merge patch: {}", message.into()))
}

/// Applies a strategic merge patch to `original`, an object of `kind`, and returns the result.
pub fn apply(kind: &str, original: &Value, patch: &Value) -> Result<Value, ApiError> {
    let Some(patch) = patch.as_object() else { return Err(invalid("the patch must be a JSON object")) };
    let mut merged = original.as_object().cloned().unwrap_or_default();
    match merge_map(kind, &mut merged, patch, &[])? {
        Outcome::Keep => Ok(Value::Object(merged)),
        Outcome::Delete => Err(invalid("$patch: delete cannot remove the whole object")),
    }
}

enum Outcome {
    Keep,
    Delete,
}

fn path_string(path: &[&str]) -> String {
    if path.is_empty() { "the object".into() } else { path.join(".") }
}

fn merge_map(kind: &str, original: &mut Map<String, Value>, patch: &Map<String, Value>, path: &[&str]) -> Result<Outcome, ApiError> {
    match patch.get("$patch") {
        None => {}
        Some(Value::String(directive)) if directive == "merge" => {}
        Some(Value::String(directive)) if directive == "delete" => return Ok(Outcome::Delete),
        Some(Value::String(directive)) if directive == "replace" => {
            let mut fresh = Map::new();
            let without: Map<String, Value> = patch.iter().filter(|(k, _)| k.as_str() != "$patch").map(|(k, v)| (k.clone(), v.clone())).collect();
            merge_map(kind, &mut fresh, &without, path)?;
            *original = fresh;
            return Ok(Outcome::Keep);
        }
        Some(other) => return Err(invalid(format!("unknown $patch directive {other} at {}", path_string(path)))),
    }
    if let Some(retain) = patch.get("$retainKeys") {
        let Some(keys) = retain.as_array() else { return Err(invalid(format!("$retainKeys at {} must be a list of field names", path_string(path)))) };
        let keys: Vec<&str> = keys.iter().filter_map(Value::as_str).collect();
        original.retain(|key, _| keys.contains(&key.as_str()));
    }
    for (key, value) in patch {
        if let Some(field) = key.strip_prefix(DELETE_PRIMITIVE_PREFIX) {
            let Some(remove) = value.as_array() else { return Err(invalid(format!("{key} at {} must be a list", path_string(path)))) };
            if let Some(Value::Array(list)) = original.get_mut(field) {
                list.retain(|item| !remove.contains(item));
            }
        }
    }
    for (key, value) in patch {
        if key.starts_with('$') {
            continue;
        }
        if value.is_null() {
            original.remove(key);
            continue;
        }
        let mut child: Vec<&str> = path.to_vec();
        child.push(key);
        match value {
            Value::Object(nested_patch) => {
                let mut nested = match original.remove(key) {
                    Some(Value::Object(existing)) => existing,
                    _ => Map::new(),
                };
                if let Outcome::Keep = merge_map(kind, &mut nested, nested_patch, &child)? {
                    original.insert(key.clone(), Value::Object(nested));
                }
            }
            Value::Array(items) => {
                let existing = match original.remove(key) {
                    Some(Value::Array(existing)) => existing,
                    _ => Vec::new(),
                };
                let merged = match list_strategy(kind, &child) {
                    ListStrategy::Replace => items.clone(),
                    ListStrategy::MergePrimitive => merge_primitives(existing, items),
                    ListStrategy::MergeByKey(merge_key) => merge_keyed(kind, existing, items, merge_key, &child)?,
                };
                original.insert(key.clone(), Value::Array(merged));
            }
            scalar => {
                original.insert(key.clone(), scalar.clone());
            }
        }
    }
    for (key, order) in patch {
        let Some(field) = key.strip_prefix(ORDER_PREFIX) else { continue };
        let Some(order) = order.as_array() else { return Err(invalid(format!("{key} at {} must be a list", path_string(path)))) };
        let mut child: Vec<&str> = path.to_vec();
        child.push(field);
        if let Some(Value::Array(list)) = original.get_mut(field) {
            let merge_key = match list_strategy(kind, &child) {
                ListStrategy::MergeByKey(merge_key) => Some(merge_key),
                ListStrategy::MergePrimitive => None,
                ListStrategy::Replace => continue,
            };
            reorder(list, order, merge_key);
        }
    }
    Ok(Outcome::Keep)
}

fn merge_primitives(mut existing: Vec<Value>, items: &[Value]) -> Vec<Value> {
    for item in items {
        if !item.is_null() && !existing.contains(item) {
            existing.push(item.clone());
        }
    }
    existing
}

fn merge_keyed(kind: &str, mut existing: Vec<Value>, items: &[Value], merge_key: &str, path: &[&str]) -> Result<Vec<Value>, ApiError> {
    // `{"$patch": "replace"}` as an element: the list becomes the patch's other elements.
    if items.iter().any(|item| item.get("$patch").and_then(Value::as_str) == Some("replace")) {
        existing.clear();
    }
    for item in items {
        let Some(element) = item.as_object() else {
            return Err(invalid(format!("{} is merged by {merge_key:?}, so its elements must be objects, not {item}", path_string(path))));
        };
        let directive = element.get("$patch").and_then(Value::as_str);
        if directive == Some("replace") && element.len() == 1 {
            continue;
        }
        let Some(key_value) = element.get(merge_key) else {
            return Err(invalid(format!("an element of {} does not contain the merge key {merge_key:?}: {item}", path_string(path))));
        };
        let position = existing.iter().position(|e| e.get(merge_key) == Some(key_value));
        if directive == Some("delete") {
            if let Some(position) = position {
                existing.remove(position);
            }
            continue;
        }
        let mut merged = match position {
            Some(position) => match existing.remove(position) {
                Value::Object(map) => map,
                _ => Map::new(),
            },
            None => Map::new(),
        };
        if let Outcome::Keep = merge_map(kind, &mut merged, element, path)? {
            match position {
                Some(position) => existing.insert(position, Value::Object(merged)),
                None => existing.push(Value::Object(merged)),
            }
        }
    }
    Ok(existing)
}

/// Orders `list` as `order` lists it; elements `order` does not name keep their relative order
/// after the named ones.
fn reorder(list: &mut [Value], order: &[Value], merge_key: Option<&str>) {
    let identity = |value: &Value| -> Option<Value> {
        match merge_key {
            Some(key) => value.get(key).cloned(),
            None => Some(value.clone()),
        }
    };
    let wanted: Vec<Option<Value>> = order.iter().map(&identity).collect();
    let rank = |value: &Value| -> usize {
        let id = identity(value);
        wanted.iter().position(|w| id.is_some() && *w == id).unwrap_or(usize::MAX)
    };
    // A stable sort keeps the unnamed elements (all ranked last) in their previous order.
    list.sort_by_key(|value| rank(value));
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deployment(containers: Value) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": 1, "template": {"spec": {"containers": containers}}}})
    }

    #[test]
    fn kubectl_apply_merges_containers_by_name() {
        let live = deployment(json!([
            {"name": "app", "image": "web:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}], "ports": [{"containerPort": 8080}]},
            {"name": "sidecar", "image": "side:1"}
        ]));
        // What kubectl 1.32 sends for a changed image and replica count.
        let patch = json!({"metadata": {"annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
            "spec": {"replicas": 3, "template": {"spec": {"$setElementOrder/containers": [{"name": "app"}, {"name": "sidecar"}],
                "containers": [{"image": "web:2", "name": "app", "env": [{"name": "B", "value": "3"}]}]}}}});
        let merged = apply("Deployment", &live, &patch).expect("applies");
        assert_eq!(merged["spec"]["replicas"], 3);
        let containers = &merged["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "web:2");
        assert_eq!(containers[0]["env"], json!([{"name": "A", "value": "1"}, {"name": "B", "value": "3"}]), "env merged by name");
        assert_eq!(containers[0]["ports"], json!([{"containerPort": 8080}]), "untouched fields stay");
        assert_eq!(containers[1], json!({"name": "sidecar", "image": "side:1"}));
        assert_eq!(merged["metadata"]["labels"]["app"], "web");
        assert!(!merged.to_string().contains('$'), "no directive is stored: {merged}");
    }

    #[test]
    fn set_element_order_reorders_and_delete_removes_an_element() {
        let live = deployment(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}, {"name": "c", "image": "c"}]));
        let patch = json!({"spec": {"template": {"spec": {
            "$setElementOrder/containers": [{"name": "c"}, {"name": "a"}],
            "containers": [{"name": "b", "$patch": "delete"}, {"name": "d", "image": "d"}]}}}});
        let merged = apply("Deployment", &live, &patch).expect("applies");
        let names: Vec<&str> = merged["spec"]["template"]["spec"]["containers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["c", "a", "d"], "named ones in order, the new one after");
    }

    #[test]
    fn patch_replace_in_a_list_replaces_the_list() {
        let live = deployment(json!([{"name": "a", "image": "a"}, {"name": "b", "image": "b"}]));
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"$patch": "replace"}, {"name": "z", "image": "z"}]}}}});
        let merged = apply("Deployment", &live, &patch).expect("applies");
        assert_eq!(merged["spec"]["template"]["spec"]["containers"], json!([{"name": "z", "image": "z"}]));
    }

    #[test]
    fn maps_can_be_replaced_deleted_and_retained() {
        let live = json!({"kind": "Deployment", "spec": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1}},
                          "selector": {"matchLabels": {"a": "1", "b": "2"}}, "paused": true}});
        let patch = json!({"spec": {
            "strategy": {"$retainKeys": ["type"], "type": "Recreate"},
            "selector": {"$patch": "replace", "matchLabels": {"c": "3"}},
            "paused": null}});
        let merged = apply("Deployment", &live, &patch).expect("applies");
        assert_eq!(merged["spec"]["strategy"], json!({"type": "Recreate"}), "$retainKeys drops rollingUpdate");
        assert_eq!(merged["spec"]["selector"], json!({"matchLabels": {"c": "3"}}));
        assert!(merged["spec"].get("paused").is_none(), "null deletes");
        let deleted = apply("Deployment", &live, &json!({"spec": {"strategy": {"$patch": "delete"}}})).expect("applies");
        assert!(deleted["spec"].get("strategy").is_none());
    }

    #[test]
    fn primitive_lists_merge_as_sets() {
        let live = json!({"kind": "ConfigMap", "metadata": {"finalizers": ["a", "b"]}, "data": {"x": "1"}});
        let merged = apply("ConfigMap", &live, &json!({"metadata": {"finalizers": ["c", "a"], "$deleteFromPrimitiveList/finalizers": ["b"]}})).expect("applies");
        assert_eq!(merged["metadata"]["finalizers"], json!(["a", "c"]));
    }

    #[test]
    fn lists_without_a_strategy_are_replaced() {
        let live = json!({"kind": "Deployment", "spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["1", "2"]}], "tolerations": [{"key": "x"}]}}}});
        let patch = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["3"]}], "tolerations": [{"key": "y"}]}}}});
        let merged = apply("Deployment", &live, &patch).expect("applies");
        assert_eq!(merged["spec"]["template"]["spec"]["containers"][0]["args"], json!(["3"]));
        assert_eq!(merged["spec"]["template"]["spec"]["tolerations"], json!([{"key": "y"}]));
    }

    #[test]
    fn merge_keys_follow_the_kind() {
        assert_eq!(list_strategy("Pod", &["spec", "containers"]), ListStrategy::MergeByKey("name"));
        assert_eq!(list_strategy("CronJob", &["spec", "jobTemplate", "spec", "template", "spec", "containers", "env"]), ListStrategy::MergeByKey("name"));
        assert_eq!(list_strategy("Service", &["spec", "ports"]), ListStrategy::MergeByKey("port"));
        assert_eq!(list_strategy("Deployment", &["spec", "template", "metadata", "finalizers"]), ListStrategy::MergePrimitive);
        assert_eq!(list_strategy("ConfigMap", &["spec", "containers"]), ListStrategy::Replace);
        let live = json!({"kind": "Service", "spec": {"ports": [{"port": 80, "targetPort": 8080}, {"port": 443, "targetPort": 8443}]}});
        let merged = apply("Service", &live, &json!({"spec": {"ports": [{"port": 80, "targetPort": 9090}]}})).expect("applies");
        assert_eq!(merged["spec"]["ports"], json!([{"port": 80, "targetPort": 9090}, {"port": 443, "targetPort": 8443}]));
    }

    #[test]
    fn malformed_patches_are_refused_with_the_reason() {
        let live = deployment(json!([{"name": "a"}]));
        let missing_key = apply("Deployment", &live, &json!({"spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}})).expect_err("refused");
        assert!(missing_key.message.contains("merge key \"name\""), "{}", missing_key.message);
        let scalar = apply("Deployment", &live, &json!({"spec": {"template": {"spec": {"containers": ["x"]}}}})).expect_err("refused");
        assert!(scalar.message.contains("must be objects"), "{}", scalar.message);
        assert!(apply("Deployment", &live, &json!({"spec": {"$patch": "explode"}})).is_err());
        assert!(apply("Deployment", &live, &json!([1])).is_err());
        assert!(apply("Deployment", &live, &json!({"$patch": "delete"})).is_err());
    }
}

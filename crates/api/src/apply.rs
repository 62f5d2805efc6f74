//! Server-side apply (`application/apply-patch+yaml`): a field manager declares the fields it
//! wants; the server merges them into the live object, records which manager owns which field in
//! `metadata.managedFields` (the `FieldsV1` format), refuses to change a field another manager
//! owns unless forced (409 with one cause per field), and removes fields the manager applied
//! before but no longer does, unless another manager owns them too.
//!
//! Lists follow the same table as strategic merge patch: lists with a merge key are owned element
//! by element (`k:{"name":"app"}`), sets of scalars value by value (`v:"x"`), every other list as
//! a whole.
//!
//! Ownership is recorded for writes other than apply (operation `Update`) only on objects that
//! already carry `managedFields`, that is once something has applied them: an object never
//! applied costs no field tracking on its writes.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value, json};

use crate::error::ApiError;
use crate::strategic::{self, ListStrategy};

/// One owned field: segments as `FieldsV1` spells them (`f:spec`, `k:{"name":"app"}`,
/// `v:"x"`), ending in `.` for a list element owned as a whole.
pub type FieldPath = Vec<String>;
pub type FieldSet = BTreeSet<FieldPath>;

/// Fields no manager owns: identity and server bookkeeping.
fn ignored(path: &[String]) -> bool {
    match path {
        [first] => first == "f:apiVersion" || first == "f:kind",
        [first, ..] if first == "f:status" => true,
        [first, second, ..] if first == "f:metadata" => {
            matches!(second.as_str(), "f:name" | "f:namespace" | "f:uid" | "f:resourceVersion" | "f:generation" | "f:creationTimestamp" | "f:deletionTimestamp" | "f:managedFields" | "f:selfLink")
        }
        _ => false,
    }
}

/// The `k:` segment of a list element merged by `key`.
fn element_segment(key: &str, value: &Value) -> String {
    let mut identity = Map::new();
    identity.insert(key.to_owned(), value.clone());
    format!("k:{}", Value::Object(identity))
}

/// The strategic-merge path (field names only) of a field path, for [`strategic::list_strategy`].
fn field_names(path: &[String]) -> Vec<&str> {
    path.iter().filter_map(|segment| segment.strip_prefix("f:")).collect()
}

/// Every field `object` sets, as owned leaves (and owned list elements).
pub fn fields_of(kind: &str, object: &Value) -> FieldSet {
    let mut set = FieldSet::new();
    collect(kind, object, &mut Vec::new(), &mut set);
    set.retain(|path| !ignored(path));
    set
}

fn collect(kind: &str, value: &Value, path: &mut Vec<String>, set: &mut FieldSet) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                path.push(format!("f:{key}"));
                if !ignored(path) {
                    collect(kind, child, path, set);
                }
                path.pop();
            }
        }
        Value::Array(items) if !path.is_empty() => match strategic::list_strategy(kind, &field_names(path)) {
            ListStrategy::MergeByKey(key) => {
                for item in items {
                    let Some(identity) = item.get(key) else { continue };
                    path.push(element_segment(key, identity));
                    path.push(".".into());
                    set.insert(path.clone());
                    path.pop();
                    collect(kind, item, path, set);
                    path.pop();
                }
            }
            ListStrategy::MergePrimitive => {
                for item in items {
                    path.push(format!("v:{item}"));
                    set.insert(path.clone());
                    path.pop();
                }
            }
            ListStrategy::Replace => {
                set.insert(path.clone());
            }
        },
        _ => {
            set.insert(path.clone());
        }
    }
}

/// The value at `path` in `object`, if it is there (`.` and `v:` segments name the element or
/// value itself).
fn value_at<'a>(object: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut current = object;
    for segment in path {
        if segment == "." {
            return Some(current);
        }
        if let Some(field) = segment.strip_prefix("f:") {
            current = current.get(field)?;
        } else if let Some(identity) = segment.strip_prefix("k:") {
            let identity: Map<String, Value> = serde_json::from_str(identity).ok()?;
            current = current.as_array()?.iter().find(|item| identity.iter().all(|(k, v)| item.get(k) == Some(v)))?;
        } else if let Some(literal) = segment.strip_prefix("v:") {
            let wanted: Value = serde_json::from_str(literal).ok()?;
            return current.as_array()?.iter().find(|item| **item == wanted);
        } else {
            return None;
        }
    }
    Some(current)
}

/// Removes the field at `path` from `object` (a no-op when it is not there).
fn remove_at(object: &mut Value, path: &[String]) {
    let (target, parent_path) = match path {
        [parent @ .., last] if last == "." => match parent {
            [grand @ .., element] => (element.clone(), grand.to_vec()),
            [] => return,
        },
        [parent @ .., last] => (last.clone(), parent.to_vec()),
        [] => return,
    };
    let mut current = object;
    for segment in &parent_path {
        let next = if let Some(field) = segment.strip_prefix("f:") {
            current.get_mut(field)
        } else if let Some(identity) = segment.strip_prefix("k:") {
            let Ok(identity) = serde_json::from_str::<Map<String, Value>>(identity) else { return };
            current.as_array_mut().and_then(|items| items.iter_mut().find(|item| identity.iter().all(|(k, v)| item.get(k) == Some(v))))
        } else {
            None
        };
        let Some(next) = next else { return };
        current = next;
    }
    if let Some(field) = target.strip_prefix("f:") {
        if let Some(map) = current.as_object_mut() {
            map.remove(field);
        }
    } else if let Some(identity) = target.strip_prefix("k:") {
        let Ok(identity) = serde_json::from_str::<Map<String, Value>>(identity) else { return };
        if let Some(items) = current.as_array_mut() {
            items.retain(|item| !identity.iter().all(|(k, v)| item.get(k) == Some(v)));
        }
    } else if let Some(literal) = target.strip_prefix("v:")
        && let Ok(wanted) = serde_json::from_str::<Value>(literal)
        && let Some(items) = current.as_array_mut()
    {
        items.retain(|item| *item != wanted);
    }
}

/// `FieldsV1` JSON for a set: a trie of segments, `{}` at owned leaves, `".": {}` where an
/// owned path also has owned children.
pub fn to_fields_v1(set: &FieldSet) -> Value {
    let mut root = Map::new();
    for path in set {
        let mut node = &mut root;
        for segment in path {
            let entry = node.entry(segment.clone()).or_insert_with(|| Value::Object(Map::new()));
            let Value::Object(next) = entry else { break };
            node = next;
        }
    }
    Value::Object(root)
}

/// The set a `FieldsV1` trie describes.
pub fn from_fields_v1(fields: &Value) -> FieldSet {
    fn walk(node: &Map<String, Value>, path: &mut Vec<String>, set: &mut FieldSet) {
        for (segment, child) in node {
            path.push(segment.clone());
            match child.as_object() {
                Some(children) if !children.is_empty() => walk(children, path, set),
                _ => {
                    set.insert(path.clone());
                }
            }
            path.pop();
        }
    }
    let mut set = FieldSet::new();
    if let Some(root) = fields.as_object() {
        walk(root, &mut Vec::new(), &mut set);
    }
    set
}

/// `.spec.template.spec.containers[name="app"].image`, as conflicts name fields.
pub fn display(path: &[String]) -> String {
    let mut text = String::new();
    for segment in path {
        if let Some(field) = segment.strip_prefix("f:") {
            text.push('.');
            text.push_str(field);
        } else if let Some(identity) = segment.strip_prefix("k:") {
            let identity: Map<String, Value> = serde_json::from_str(identity).unwrap_or_default();
            let parts: Vec<String> = identity.iter().map(|(k, v)| format!("{k}={v}")).collect();
            text.push_str(&format!("[{}]", parts.join(",")));
        } else if let Some(literal) = segment.strip_prefix("v:") {
            text.push_str(&format!("[={literal}]"));
        }
    }
    text
}

/// One `managedFields` entry.
#[derive(Clone, Debug)]
struct Entry {
    manager: String,
    operation: String,
    api_version: String,
    time: String,
    subresource: Option<String>,
    fields: FieldSet,
}

fn entries_of(object: &Value) -> Vec<Entry> {
    object["metadata"]["managedFields"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| Entry {
            manager: entry["manager"].as_str().unwrap_or_default().to_owned(),
            operation: entry["operation"].as_str().unwrap_or("Update").to_owned(),
            api_version: entry["apiVersion"].as_str().unwrap_or_default().to_owned(),
            time: entry["time"].as_str().unwrap_or_default().to_owned(),
            subresource: entry["subresource"].as_str().map(str::to_owned),
            fields: from_fields_v1(&entry["fieldsV1"]),
        })
        .collect()
}

fn write_entries(object: &mut Value, entries: &[Entry]) {
    let listed: Vec<Value> = entries
        .iter()
        .filter(|e| !e.fields.is_empty())
        .map(|e| {
            let mut entry = json!({"manager": e.manager, "operation": e.operation, "apiVersion": e.api_version, "time": e.time, "fieldsType": "FieldsV1", "fieldsV1": to_fields_v1(&e.fields)});
            if let Some(subresource) = &e.subresource {
                entry["subresource"] = json!(subresource);
            }
            entry
        })
        .collect();
    if let Some(metadata) = object.get_mut("metadata").and_then(Value::as_object_mut) {
        if listed.is_empty() {
            metadata.remove("managedFields");
        } else {
            metadata.insert("managedFields".into(), Value::Array(listed));
        }
    }
}

/// Applies `config` for `manager` to `live` (`None`: the object does not exist yet) and returns
/// the new object, `managedFields` updated. `api_version` is the applied config's; `time` the
/// server's clock.
pub fn apply(kind: &str, live: Option<&Value>, config: &Value, manager: &str, force: bool, api_version: &str, time: &str) -> Result<Value, ApiError> {
    if !config.is_object() {
        return Err(ApiError::bad_request("an apply patch must be an object"));
    }
    let applied = fields_of(kind, config);
    let Some(live) = live else {
        let mut created = config.clone();
        write_entries(&mut created, &[Entry { manager: manager.into(), operation: "Apply".into(), api_version: api_version.into(), time: time.into(), subresource: None, fields: applied }]);
        return Ok(created);
    };
    let mut entries = entries_of(live);
    let mine = entries.iter().position(|e| e.manager == manager && e.operation == "Apply" && e.subresource.is_none());
    let previous = mine.map(|i| entries[i].fields.clone()).unwrap_or_default();

    // Conflicts: a field another manager owns whose value this apply changes.
    let mut conflicts: BTreeMap<FieldPath, Vec<(String, String)>> = BTreeMap::new();
    for (index, entry) in entries.iter().enumerate() {
        if Some(index) == mine || entry.subresource.is_some() {
            continue;
        }
        for path in applied.intersection(&entry.fields) {
            if path.last().is_some_and(|s| s == ".") {
                continue;
            }
            if value_at(live, path) != value_at(config, path) {
                conflicts.entry(path.clone()).or_default().push((entry.manager.clone(), entry.api_version.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        let causes: Vec<Value> = conflicts
            .iter()
            .flat_map(|(path, owners)| {
                owners.iter().map(move |(owner, version)| json!({"reason": "FieldManagerConflict", "message": format!("conflict with {owner:?} using {version}"), "field": display(path)}))
            })
            .collect();
        let lines: Vec<String> = causes.iter().map(|c| format!("- {}: {}", c["message"].as_str().unwrap_or_default(), c["field"].as_str().unwrap_or_default())).collect();
        let count = causes.len();
        let mut error = ApiError::new(409, "Conflict", format!("Apply failed with {count} conflict{}: {}", if count == 1 { "" } else { "s" }, lines.join("\n")));
        error.details = Some(json!({"causes": causes}));
        return Err(error);
    }

    // Merge the config in, then drop what this manager stopped applying and nobody else owns.
    let mut merged = strategic::apply(kind, live, config)?;
    let others: FieldSet = entries.iter().enumerate().filter(|(i, _)| Some(*i) != mine).flat_map(|(_, e)| e.fields.iter().cloned()).collect();
    let mut dropped: Vec<&FieldPath> = previous.iter().filter(|path| !applied.contains(*path) && !others.contains(*path)).collect();
    // Deeper paths first, so an element's fields go before the element.
    dropped.sort_by_key(|path| std::cmp::Reverse(path.len()));
    for path in dropped {
        // An element is removed only when none of its fields is still wanted.
        let element = path.last().is_some_and(|s| s == ".");
        let prefix = &path[..path.len() - usize::from(element)];
        if element && applied.iter().chain(others.iter()).any(|p| p.starts_with(prefix)) {
            continue;
        }
        remove_at(&mut merged, path);
    }

    // Ownership: forced fields leave their previous owners; this manager owns what it applied.
    for (index, entry) in entries.iter_mut().enumerate() {
        if Some(index) != mine {
            entry.fields.retain(|path| !conflicts.contains_key(path));
        }
    }
    let me = Entry { manager: manager.into(), operation: "Apply".into(), api_version: api_version.into(), time: time.into(), subresource: None, fields: applied };
    match mine {
        Some(index) => entries[index] = me,
        None => entries.push(me),
    }
    write_entries(&mut merged, &entries);
    Ok(merged)
}

/// Records a write other than apply on an object that has `managedFields`: the fields it
/// changed move to `manager`'s `Update` entry and leave every other manager. Objects without
/// `managedFields` are left untracked.
pub fn record_update(kind: &str, before: &Value, after: &mut Value, manager: &str, api_version: &str, time: &str) {
    if before["metadata"]["managedFields"].as_array().is_none_or(Vec::is_empty) {
        return;
    }
    let old = fields_of(kind, before);
    let new = fields_of(kind, after);
    let changed: FieldSet = new.iter().filter(|path| path.last().is_none_or(|s| s != ".") && value_at(before, path) != value_at(after, path)).cloned().collect();
    let removed: FieldSet = old.difference(&new).cloned().collect();
    if changed.is_empty() && removed.is_empty() {
        // Keep the entries as they were (a PUT may have sent them back unchanged, or not at all).
        if let (Some(metadata), Some(entries)) = (after.get_mut("metadata").and_then(Value::as_object_mut), before["metadata"].get("managedFields")) {
            metadata.insert("managedFields".into(), entries.clone());
        }
        return;
    }
    let mut entries = entries_of(before);
    for entry in &mut entries {
        entry.fields.retain(|path| !changed.contains(path) && !removed.contains(path));
    }
    match entries.iter_mut().find(|e| e.manager == manager && e.operation == "Update" && e.subresource.is_none()) {
        Some(entry) => {
            entry.fields.extend(changed);
            entry.time = time.into();
            entry.api_version = api_version.into();
        }
        None => entries.push(Entry { manager: manager.into(), operation: "Update".into(), api_version: api_version.into(), time: time.into(), subresource: None, fields: changed }),
    }
    write_entries(after, &entries);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deployment(replicas: u32, image: &str, env: &[&str]) -> Value {
        let env: Vec<Value> = env.iter().map(|name| json!({"name": name, "value": "1"})).collect();
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web", "labels": {"app": "web"}},
               "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "app", "image": image, "env": env}]}}}})
    }

    #[test]
    fn field_sets_name_elements_by_their_merge_key() {
        let set = fields_of("Deployment", &deployment(1, "web:1", &["A"]));
        let paths: Vec<String> = set.iter().map(|p| display(p)).collect();
        assert!(paths.contains(&".spec.template.spec.containers[name=\"app\"].image".to_owned()), "{paths:?}");
        assert!(paths.contains(&".spec.template.spec.containers[name=\"app\"].env[name=\"A\"].value".to_owned()), "{paths:?}");
        assert!(!paths.iter().any(|p| p.starts_with(".metadata.name") || p == ".apiVersion"), "{paths:?}");
        assert_eq!(from_fields_v1(&to_fields_v1(&set)), set, "FieldsV1 round-trips");
        let v1 = to_fields_v1(&set);
        assert!(v1["f:spec"]["f:template"]["f:spec"]["f:containers"]["k:{\"name\":\"app\"}"]["."].is_object(), "{v1}");
    }

    #[test]
    fn apply_creates_then_conflicts_with_another_manager_unless_forced() {
        let created = apply("Deployment", None, &deployment(1, "web:1", &["A"]), "alice", false, "apps/v1", "t1").expect("creates");
        assert_eq!(created["metadata"]["managedFields"][0]["manager"], "alice");
        // Bob applies the same values: co-ownership, no conflict.
        let shared = apply("Deployment", Some(&created), &deployment(1, "web:1", &[]), "bob", false, "apps/v1", "t2").expect("same values never conflict");
        // Bob changes the image alice owns: a conflict naming the field and the owner.
        let conflict = apply("Deployment", Some(&shared), &deployment(1, "web:2", &[]), "bob", false, "apps/v1", "t3").expect_err("conflict");
        assert_eq!(conflict.code, 409);
        assert!(conflict.message.contains("conflict with \"alice\"") && conflict.message.contains("containers[name=\"app\"].image"), "{}", conflict.message);
        assert_eq!(conflict.details.as_ref().expect("details")["causes"][0]["field"], ".spec.template.spec.containers[name=\"app\"].image");
        let forced = apply("Deployment", Some(&shared), &deployment(1, "web:2", &[]), "bob", true, "apps/v1", "t3").expect("forced");
        assert_eq!(forced["spec"]["template"]["spec"]["containers"][0]["image"], "web:2");
        let alice: FieldSet = entries_of(&forced).into_iter().find(|e| e.manager == "alice").expect("alice").fields;
        assert!(!alice.iter().any(|p| display(p).ends_with(".image")), "the forced field left alice");
    }

    #[test]
    fn fields_a_manager_stops_applying_are_removed_unless_someone_else_owns_them() {
        let created = apply("Deployment", None, &deployment(1, "web:1", &["A", "B"]), "alice", false, "apps/v1", "t1").expect("creates");
        let mut config = deployment(1, "web:1", &["A"]);
        config["metadata"]["labels"] = json!({});
        let next = apply("Deployment", Some(&created), &config, "alice", false, "apps/v1", "t2").expect("applies");
        let env = &next["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(env, &json!([{"name": "A", "value": "1"}]), "B is gone");
        assert!(next["metadata"]["labels"].get("app").is_none(), "the label alice dropped is gone");

        // Someone else's update of B keeps it alive when alice drops it.
        let mut edited = created.clone();
        edited["spec"]["template"]["spec"]["containers"][0]["env"][1]["value"] = json!("2");
        record_update("Deployment", &created, &mut edited, "kubectl-edit", "apps/v1", "t2");
        let next = apply("Deployment", Some(&edited), &deployment(1, "web:1", &["A"]), "alice", false, "apps/v1", "t3").expect("applies");
        let env = &next["spec"]["template"]["spec"]["containers"][0]["env"];
        assert_eq!(env.as_array().map(Vec::len), Some(2), "B's value is kubectl-edit's, so B stays: {env}");
    }

    #[test]
    fn updates_take_ownership_only_on_tracked_objects() {
        let created = apply("Deployment", None, &deployment(1, "web:1", &[]), "alice", false, "apps/v1", "t1").expect("creates");
        let mut scaled = created.clone();
        scaled["spec"]["replicas"] = json!(5);
        record_update("Deployment", &created, &mut scaled, "kubectl-scale", "apps/v1", "t2");
        let entries = entries_of(&scaled);
        let scaler = entries.iter().find(|e| e.manager == "kubectl-scale").expect("an Update entry");
        assert_eq!(scaler.operation, "Update");
        assert!(scaler.fields.contains(&vec!["f:spec".to_owned(), "f:replicas".to_owned()]));
        let conflict = apply("Deployment", Some(&scaled), &deployment(2, "web:1", &[]), "alice", false, "apps/v1", "t3").expect_err("replicas moved to kubectl-scale");
        assert!(conflict.message.contains("kubectl-scale"), "{}", conflict.message);

        let mut untracked = deployment(1, "web:1", &[]);
        let before = untracked.clone();
        untracked["spec"]["replicas"] = json!(3);
        record_update("Deployment", &before, &mut untracked, "someone", "apps/v1", "t1");
        assert!(untracked["metadata"].get("managedFields").is_none());
    }
}

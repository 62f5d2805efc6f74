//! Patches: JSON merge patch (RFC 7386), JSON patch (RFC 6902), and the three-way merge patch
//! `shoal apply` computes from the last applied manifest, the new manifest and the live object.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// Applies a JSON merge patch in place.
pub fn merge_patch(document: &mut Value, patch: &Value) {
    json_patch::merge(document, patch);
}

/// Applies a JSON patch (a list of operations); on any failed operation nothing changes.
pub fn json_patch(document: &mut Value, operations: &Value) -> Result<(), ApiError> {
    let patch: json_patch::Patch = serde_json::from_value(operations.clone())
        .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
    let mut working = document.clone();
    json_patch::patch(&mut working, &patch).map_err(|e| ApiError::new(422, "Invalid", format!("the JSON patch could not be applied: {e}")))?;
    *document = working;
    Ok(())
}

/// A merge patch that turns `live` into what `desired` asks for: every field `desired` sets that
/// differs from `live`, and a `null` for every field the previous manifest (`last_applied`) set
/// that `desired` no longer does. Fields only the server or other writers set are left alone.
/// Returns `None` when nothing would change.
pub fn three_way_merge_patch(last_applied: Option<&Value>, desired: &Value, live: &Value) -> Option<Value> {
    let mut patch = Map::new();
    diff_into(&mut patch, last_applied, desired, live);
    if patch.is_empty() { None } else { Some(Value::Object(patch)) }
}

fn diff_into(patch: &mut Map<String, Value>, last_applied: Option<&Value>, desired: &Value, live: &Value) {
    let Some(desired_map) = desired.as_object() else { return };
    for (key, desired_value) in desired_map {
        let live_value = &live[key.as_str()];
        match (desired_value, live_value) {
            (Value::Object(_), Value::Object(_)) => {
                let mut nested = Map::new();
                diff_into(&mut nested, last_applied.map(|l| &l[key.as_str()]), desired_value, live_value);
                if !nested.is_empty() {
                    patch.insert(key.clone(), Value::Object(nested));
                }
            }
            _ if desired_value != live_value => {
                patch.insert(key.clone(), desired_value.clone());
            }
            _ => {}
        }
    }
    if let Some(Value::Object(previous)) = last_applied {
        for key in previous.keys() {
            if !desired_map.contains_key(key) && !live[key.as_str()].is_null() {
                patch.insert(key.clone(), Value::Null);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_sets_and_deletes() {
        let mut document = json!({"spec": {"replicas": 1, "paused": true}, "metadata": {"labels": {"a": "1"}}});
        merge_patch(&mut document, &json!({"spec": {"replicas": 3, "paused": null}, "metadata": {"labels": {"b": "2"}}}));
        assert_eq!(document, json!({"spec": {"replicas": 3}, "metadata": {"labels": {"a": "1", "b": "2"}}}));
    }

    #[test]
    fn json_patch_is_all_or_nothing() {
        let mut document = json!({"spec": {"replicas": 1}});
        json_patch(&mut document, &json!([{"op": "replace", "path": "/spec/replicas", "value": 5}])).expect("applies");
        assert_eq!(document["spec"]["replicas"], 5);
        let failed = json_patch(&mut document, &json!([
            {"op": "replace", "path": "/spec/replicas", "value": 9},
            {"op": "test", "path": "/spec/replicas", "value": 1}
        ]));
        assert!(failed.is_err());
        assert_eq!(document["spec"]["replicas"], 5, "a failed patch changes nothing");
        assert!(json_patch(&mut document, &json!({"op": "add"})).is_err());
    }

    #[test]
    fn three_way_patch_keeps_foreign_fields_and_drops_removed_ones() {
        let last = json!({"spec": {"replicas": 2, "paused": false}});
        let desired = json!({"spec": {"replicas": 2}});
        let live = json!({"spec": {"replicas": 2, "paused": false, "strategy": {"type": "RollingUpdate"}}, "status": {"replicas": 2}});
        assert_eq!(three_way_merge_patch(Some(&last), &desired, &live), Some(json!({"spec": {"paused": null}})));
        assert_eq!(three_way_merge_patch(Some(&desired), &desired, &live), None);
        let scaled = json!({"spec": {"replicas": 5}});
        assert_eq!(three_way_merge_patch(Some(&desired), &desired, &scaled), None.or(Some(json!({"spec": {"replicas": 2}}))));
    }
}

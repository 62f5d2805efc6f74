//! Reading YAML (and JSON, which is YAML) with limits on depth, aliases and size, so that a
//! hostile document (alias bombs, deep nesting) is refused instead of exhausting the server.
//!
//! The parser is serde-saphyr, a maintained, panic-free YAML crate with explicit budgets.

use serde_json::Value;

/// The deepest nesting accepted in a YAML or JSON body.
pub const MAX_DEPTH: usize = 64;

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.max_aliases = 1_000;
    budget.max_anchors = 1_000;
    budget.max_documents = 10_000;
    budget.max_nodes = 1_000_000;
    budget.max_total_scalar_bytes = 64 * 1024 * 1024;
    let mut options = serde_saphyr::Options::default();
    options.budget = Some(budget);
    options
}

/// Parses one YAML document into a JSON value.
pub fn from_str(text: &str) -> Result<Value, String> {
    serde_saphyr::from_str_with_options::<Value>(text, options()).map_err(|e| e.to_string())
}

/// Parses a multi-document stream, skipping empty documents.
pub fn documents(text: &str) -> Result<Vec<Value>, String> {
    let documents: Vec<Option<Value>> =
        serde_saphyr::from_multiple_with_options(text, options()).map_err(|e| e.to_string())?;
    Ok(documents.into_iter().flatten().filter(|d| !d.is_null()).collect())
}

/// Serialises a value as YAML.
pub fn to_string(value: &Value) -> String {
    serde_saphyr::to_string(value).unwrap_or_else(|e| format!("# cannot render as YAML: {e}\n"))
}

/// The nesting depth of a JSON value (for the API's depth limit on JSON bodies).
pub fn depth(value: &Value) -> usize {
    match value {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn multi_document_streams_skip_empty_documents() {
        let docs = documents("---\na: 1\n---\n---\nb: [1, 2]\n").expect("parses");
        assert_eq!(docs, vec![serde_json::json!({"a": 1}), serde_json::json!({"b": [1, 2]})]);
    }

    #[test]
    fn deep_nesting_is_refused() {
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        assert!(from_str(&deep).is_err());
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut bomb = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        for level in 0..9 {
            let previous = (b'a' + level) as char;
            let next = (b'a' + level + 1) as char;
            bomb.push_str(&format!("{next}: &{next} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"));
        }
        assert!(from_str(&bomb).is_err(), "a billion-laughs document must be refused");
    }

    #[test]
    fn yaml_round_trips() {
        let value = serde_json::json!({"metadata": {"name": "web", "labels": {"app": "web"}}, "spec": {"replicas": 2}});
        assert_eq!(from_str(&to_string(&value)).expect("parses"), value);
    }
}

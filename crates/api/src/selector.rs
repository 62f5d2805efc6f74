//! Label selectors (`app=web,tier!=db,env in (a,b),!legacy`) and field selectors
//! (`metadata.name=web,status.phase!=Running`), parsed and matched as Kubernetes does.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// One requirement of a label selector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A conjunction of requirements; empty matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LabelSelector {
    pub requirements: Vec<Requirement>,
}

impl LabelSelector {
    /// Parses the query-string form.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in split_top_level(text) {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            requirements.push(parse_requirement(part)?);
        }
        Ok(Self { requirements })
    }

    /// Builds a selector from a `metav1.LabelSelector` object (`matchLabels`, `matchExpressions`).
    pub fn from_object(selector: &Value) -> Result<Self, String> {
        let mut requirements = Vec::new();
        if let Some(labels) = selector["matchLabels"].as_object() {
            for (key, value) in labels {
                requirements.push(Requirement::Equals(key.clone(), value.as_str().unwrap_or_default().to_owned()));
            }
        }
        if let Some(expressions) = selector["matchExpressions"].as_array() {
            for expression in expressions {
                let key = expression["key"].as_str().unwrap_or_default().to_owned();
                let values: Vec<String> = expression["values"]
                    .as_array()
                    .map(|v| v.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
                    .unwrap_or_default();
                let requirement = match expression["operator"].as_str().unwrap_or_default() {
                    "In" => Requirement::In(key, values),
                    "NotIn" => Requirement::NotIn(key, values),
                    "Exists" => Requirement::Exists(key),
                    "DoesNotExist" => Requirement::DoesNotExist(key),
                    other => return Err(format!("\"{other}\" is not a valid label selector operator")),
                };
                requirements.push(requirement);
            }
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, labels: Option<&Map<String, Value>>) -> bool {
        let get = |key: &str| labels.and_then(|l| l.get(key)).and_then(Value::as_str);
        self.requirements.iter().all(|requirement| match requirement {
            Requirement::Equals(key, value) => get(key) == Some(value.as_str()),
            Requirement::NotEquals(key, value) => get(key) != Some(value.as_str()),
            Requirement::In(key, values) => get(key).is_some_and(|v| values.iter().any(|x| x == v)),
            Requirement::NotIn(key, values) => get(key).is_none_or(|v| !values.iter().any(|x| x == v)),
            Requirement::Exists(key) => get(key).is_some(),
            Requirement::DoesNotExist(key) => get(key).is_none(),
        })
    }
}

impl std::fmt::Display for LabelSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .requirements
            .iter()
            .map(|r| match r {
                Requirement::Equals(k, v) => format!("{k}={v}"),
                Requirement::NotEquals(k, v) => format!("{k}!={v}"),
                Requirement::In(k, vs) => format!("{k} in ({})", vs.join(",")),
                Requirement::NotIn(k, vs) => format!("{k} notin ({})", vs.join(",")),
                Requirement::Exists(k) => k.clone(),
                Requirement::DoesNotExist(k) => format!("!{k}"),
            })
            .collect();
        write!(f, "{}", parts.join(","))
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (index, character) in text.char_indices() {
        match character {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..index]);
                start = index + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn parse_requirement(part: &str) -> Result<Requirement, ApiError> {
    let invalid = || ApiError::bad_request(format!("unable to parse requirement: invalid label selector \"{part}\""));
    if let Some(key) = part.strip_prefix('!') {
        let key = key.trim();
        check_key(key).map_err(|_| invalid())?;
        return Ok(Requirement::DoesNotExist(key.to_owned()));
    }
    for (operator, negate) in [(" notin ", true), (" in ", false)] {
        if let Some(position) = part.find(operator) {
            let key = part[..position].trim();
            let rest = part[position + operator.len()..].trim();
            let inner = rest.strip_prefix('(').and_then(|r| r.strip_suffix(')')).ok_or_else(invalid)?;
            let values: Vec<String> = inner.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect();
            check_key(key).map_err(|_| invalid())?;
            return Ok(if negate { Requirement::NotIn(key.to_owned(), values) } else { Requirement::In(key.to_owned(), values) });
        }
    }
    for (operator, kind) in [("!=", 1), ("==", 0), ("=", 0)] {
        if let Some((key, value)) = part.split_once(operator) {
            let (key, value) = (key.trim(), value.trim());
            check_key(key).map_err(|_| invalid())?;
            if !crate::validation::is_label_value(value) {
                return Err(invalid());
            }
            return Ok(if kind == 1 {
                Requirement::NotEquals(key.to_owned(), value.to_owned())
            } else {
                Requirement::Equals(key.to_owned(), value.to_owned())
            });
        }
    }
    check_key(part).map_err(|_| invalid())?;
    Ok(Requirement::Exists(part.to_owned()))
}

fn check_key(key: &str) -> Result<(), ()> {
    if crate::validation::is_qualified_name(key) { Ok(()) } else { Err(()) }
}

/// One field requirement: `path=value` or `path!=value`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldRequirement {
    pub path: String,
    pub value: String,
    pub negated: bool,
}

/// A conjunction of field requirements over the fields Kubernetes allows selecting on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FieldSelector {
    pub requirements: Vec<FieldRequirement>,
}

/// Fields every kind can be selected on.
const COMMON_FIELDS: &[&str] = &["metadata.name", "metadata.namespace"];

/// Fields particular kinds add.
fn kind_fields(kind: &str) -> &'static [&'static str] {
    match kind {
        "Pod" => &["spec.nodeName", "spec.restartPolicy", "spec.schedulerName", "spec.serviceAccountName", "status.phase", "status.podIP", "status.nominatedNodeName"],
        "Event" => &[
            "involvedObject.kind", "involvedObject.namespace", "involvedObject.name", "involvedObject.uid",
            "involvedObject.apiVersion", "involvedObject.resourceVersion", "involvedObject.fieldPath",
            "reason", "reportingComponent", "source", "type",
        ],
        "Secret" => &["type"],
        "Namespace" => &["status.phase"],
        "Node" => &["spec.unschedulable"],
        "Job" => &["status.successful"],
        "ReplicaSet" => &["status.replicas"],
        _ => &[],
    }
}

impl FieldSelector {
    /// Parses the query form, refusing fields the kind does not support (as Kubernetes does).
    pub fn parse(text: &str, kind: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (path, value, negated) = if let Some((p, v)) = part.split_once("!=") {
                (p, v, true)
            } else if let Some((p, v)) = part.split_once("==") {
                (p, v, false)
            } else if let Some((p, v)) = part.split_once('=') {
                (p, v, false)
            } else {
                return Err(ApiError::bad_request(format!("invalid field selector: '{part}' is not a valid field selector: no operator found")));
            };
            let path = path.trim();
            if !COMMON_FIELDS.contains(&path) && !kind_fields(kind).contains(&path) {
                return Err(ApiError::bad_request(format!("field label not supported: {path}")));
            }
            requirements.push(FieldRequirement { path: path.to_owned(), value: value.trim().to_owned(), negated });
        }
        Ok(Self { requirements })
    }

    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }

    pub fn matches(&self, object: &Value) -> bool {
        self.requirements.iter().all(|requirement| {
            let mut current = object;
            for segment in requirement.path.split('.') {
                current = &current[segment];
            }
            let actual = match current {
                Value::String(s) => s.clone(),
                Value::Null => String::new(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => other.to_string(),
            };
            (actual == requirement.value) != requirement.negated
        })
    }

    /// The name this selector pins, if it has `metadata.name=NAME`.
    pub fn pinned_name(&self) -> Option<&str> {
        self.requirements
            .iter()
            .find(|r| r.path == "metadata.name" && !r.negated)
            .map(|r| r.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn label_selector_operators() {
        let web = labels(json!({"app": "web", "tier": "front", "env": "prod"}));
        let cases = [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("app=web,tier=front", true),
            ("env in (prod, staging)", true),
            ("env notin (prod)", false),
            ("env notin (dev)", true),
            ("tier", true),
            ("!tier", false),
            ("!legacy", true),
            ("missing!=x", true),
            ("missing in (x)", false),
            ("", true),
        ];
        for (text, expected) in cases {
            let selector = LabelSelector::parse(text).expect(text);
            assert_eq!(selector.matches(Some(&web)), expected, "{text}");
        }
    }

    #[test]
    fn malformed_label_selectors_are_refused() {
        for text in ["app=(", "in (a)", "env in a,b", "-bad=x"] {
            assert!(LabelSelector::parse(text).is_err(), "{text} should be refused");
        }
    }

    #[test]
    fn match_expressions_from_objects() {
        let selector = LabelSelector::from_object(&json!({"matchLabels": {"app": "web"}, "matchExpressions": [{"key": "env", "operator": "In", "values": ["prod"]}]})).expect("valid");
        assert!(selector.matches(Some(&labels(json!({"app": "web", "env": "prod"})))));
        assert!(!selector.matches(Some(&labels(json!({"app": "web", "env": "dev"})))));
        assert_eq!(selector.to_string(), "app=web,env in (prod)");
    }

    #[test]
    fn field_selectors_select_and_refuse_unknown_fields() {
        let pod = json!({"metadata": {"name": "p", "namespace": "default"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        assert!(FieldSelector::parse("metadata.name=p,spec.nodeName=n1", "Pod").expect("valid").matches(&pod));
        assert!(!FieldSelector::parse("status.phase!=Running", "Pod").expect("valid").matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=", "Pod").expect("valid").matches(&json!({"metadata": {}})));
        assert!(FieldSelector::parse("spec.replicas=1", "Deployment").is_err());
        let event = json!({"involvedObject": {"name": "web", "kind": "Deployment", "uid": "u1"}});
        assert!(FieldSelector::parse("involvedObject.name=web,involvedObject.kind=Deployment,involvedObject.uid=u1", "Event").expect("valid").matches(&event));
    }
}

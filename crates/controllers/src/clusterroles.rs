//! ClusterRole aggregation, as kube-controller-manager's clusterrole-aggregation controller keeps
//! it: a ClusterRole with an `aggregationRule` gets, as its `rules`, the rules of every other
//! ClusterRole its selectors match, in name order, each rule once. `kubectl get clusterrole edit
//! -o yaml` and `kubectl describe clusterrole admin` then show what the role grants, a CRD's
//! `aggregate-to-view` role included. Any change to any ClusterRole queues every aggregating one;
//! a role aggregating another aggregating role follows it on the next pass (its own write queues
//! them all again).
//!
//! RBAC's evaluation (`shoal_apiserver::rbac`) follows the selectors itself when it judges a
//! request, so a grant holds as soon as the selected role is written, before this controller
//! runs.

use std::sync::Arc;

use serde_json::{Value, json};
use shoal_api::selector::LabelSelector;

use crate::harness::{self, Action, Reconciler, Result};
use crate::informer::object_key;
use crate::{Context, Registered};

const FIELD_MANAGER: &str = "shoal-clusterrole-aggregation-controller";

pub struct ClusterRoleAggregationController {
    context: Arc<Context>,
}

impl ClusterRoleAggregationController {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let roles = Arc::clone(context.informers.get("ClusterRole"));
        let lookup = Arc::clone(&roles);
        harness::watch_into(&roles, &queue, move |_, _| lookup.list().iter().filter(|role| aggregates(role)).map(|role| object_key(role)).collect());
        Registered::new(Self { context: Arc::clone(context) }, queue, &roles)
    }
}

/// Whether `role` has an `aggregationRule` with at least one selector.
fn aggregates(role: &Value) -> bool {
    role["aggregationRule"]["clusterRoleSelectors"].as_array().is_some_and(|selectors| !selectors.is_empty())
}

/// The rules `role` aggregates from `roles`: those of every other role its selectors match, in
/// name order, each once. `None` when a selector does not parse (the role is left as it is).
pub fn aggregated_rules(role: &Value, roles: &[Arc<Value>]) -> Option<Vec<Value>> {
    let selectors = role["aggregationRule"]["clusterRoleSelectors"].as_array()?;
    let selectors: Vec<LabelSelector> = selectors.iter().map(LabelSelector::from_object).collect::<std::result::Result<_, _>>().ok()?;
    let name = &role["metadata"]["name"];
    let mut selected: Vec<&Value> = roles
        .iter()
        .map(|other| &**other)
        .filter(|other| other["metadata"]["name"] != *name && selectors.iter().any(|selector| selector.matches(other["metadata"]["labels"].as_object())))
        .collect();
    selected.sort_by(|a, b| a["metadata"]["name"].as_str().cmp(&b["metadata"]["name"].as_str()));
    let mut rules: Vec<Value> = Vec::new();
    for rule in selected.iter().filter_map(|other| other["rules"].as_array()).flatten() {
        if !rules.contains(rule) {
            rules.push(rule.clone());
        }
    }
    Some(rules)
}

impl Reconciler for ClusterRoleAggregationController {
    fn name(&self) -> &'static str {
        "clusterrole-aggregation"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let informer = self.context.informers.get("ClusterRole");
        let Some(role) = informer.get(key) else { return Ok(Action::Done) };
        if !aggregates(&role) || !role["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let Some(rules) = aggregated_rules(&role, &informer.list()) else { return Ok(Action::Done) };
        if role["rules"].as_array().map_or(rules.is_empty(), |current| *current == rules) {
            return Ok(Action::Done);
        }
        let name = role["metadata"]["name"].as_str().unwrap_or_default();
        // A merge patch replaces the list whole; the resourceVersion makes it a compare-and-swap
        // against the role this was computed from (a 409 retries with the newer one).
        let patch = json!({"metadata": {"resourceVersion": role["metadata"]["resourceVersion"]}, "rules": rules});
        match self.context.client.patch(crate::info("ClusterRole"), None, name, &patch, true, FIELD_MANAGER).await {
            Ok(_) | Err(shoal_client::Error::Api(shoal_api::ApiError { code: 404, .. })) => Ok(Action::Done),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(name: &str, labels: Value, rules: Value) -> Arc<Value> {
        Arc::new(json!({"metadata": {"name": name, "labels": labels}, "rules": rules}))
    }

    #[test]
    fn an_aggregating_role_gets_the_selected_rules_in_name_order_each_once() {
        let get = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]});
        let widgets = json!({"apiGroups": ["example.com"], "resources": ["widgets"], "verbs": ["get"]});
        let view = json!({"metadata": {"name": "view"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"to-view": "true"}}]},
            "rules": [{"apiGroups": ["old"], "resources": ["gone"], "verbs": ["get"]}]});
        let roles = vec![
            role("z-widgets", json!({"to-view": "true"}), json!([widgets, get])),
            role("a-pods", json!({"to-view": "true"}), json!([get])),
            role("unrelated", json!({"to-edit": "true"}), json!([{"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]}])),
            Arc::new(view.clone()),
        ];
        assert_eq!(aggregated_rules(&view, &roles), Some(vec![get.clone(), widgets.clone()]), "its own rules are replaced, as kube's controller does");
        let nothing = json!({"metadata": {"name": "empty"}, "aggregationRule": {"clusterRoleSelectors": [{"matchLabels": {"none": "true"}}]}});
        assert_eq!(aggregated_rules(&nothing, &roles), Some(Vec::new()));
        let broken = json!({"metadata": {"name": "broken"}, "aggregationRule": {"clusterRoleSelectors": [{"matchExpressions": [{"key": "a", "operator": "Sideways"}]}]}});
        assert_eq!(aggregated_rules(&broken, &roles), None, "left alone");
        assert!(!aggregates(&json!({"metadata": {"name": "plain"}, "rules": []})));
    }
}

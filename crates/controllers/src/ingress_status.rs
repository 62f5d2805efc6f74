//! Ingress status: every Ingress of the `shoal` class gets `status.loadBalancer.ingress` set to
//! the addresses of the Ready nodes that run an ingress router (those announcing
//! `shoal.dev/ingress-addr`), as k3s's bundled ingress controller reports its nodes. `kubectl get
//! ingress` shows them in its ADDRESS column. Ingresses of other classes are left alone.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::harness::{self, Action, Reconciler, Result};
use crate::informer::object_key;
use crate::{Context, Registered};

/// The IngressClass every node's router serves.
pub const CLASS: &str = "shoal";

/// The node annotation a node with an ingress router sets.
pub const INGRESS_ADDR_ANNOTATION: &str = "shoal.dev/ingress-addr";

pub struct IngressStatusController {
    context: Arc<Context>,
}

impl IngressStatusController {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let ingresses = Arc::clone(context.informers.get("Ingress"));
        harness::watch_into(&ingresses, &queue, harness::own_keys);
        let lookup = Arc::clone(&ingresses);
        harness::watch_into(context.informers.get("Node"), &queue, move |_, _| lookup.list().iter().map(|i| object_key(i)).collect());
        Registered::new(Self { context: Arc::clone(context) }, queue, &ingresses)
    }
}

/// Whether the `shoal` routers serve `ingress`.
pub fn ours(ingress: &Value) -> bool {
    let class = ingress["spec"]["ingressClassName"].as_str().or_else(|| ingress["metadata"]["annotations"]["kubernetes.io/ingress.class"].as_str());
    class == Some(CLASS)
}

impl Reconciler for IngressStatusController {
    fn name(&self) -> &'static str {
        "ingress-status"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let informer = self.context.informers.get("Ingress");
        let Some(ingress) = informer.get(key) else { return Ok(Action::Done) };
        if !ours(&ingress) || !ingress["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let addresses = crate::endpoints::node_addresses(&self.context, |node| node["metadata"]["annotations"][INGRESS_ADDR_ANNOTATION].is_string());
        let listed: Vec<Value> = addresses.into_iter().map(|ip| json!({"ip": ip})).collect();
        let status = if listed.is_empty() { json!({"loadBalancer": {}}) } else { json!({"loadBalancer": {"ingress": listed}}) };
        Ok(harness::write_status(&self.context.client, "Ingress", informer, &ingress, status).await?.unwrap_or(Action::Done))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_shoal_class_is_ours() {
        assert!(ours(&json!({"spec": {"ingressClassName": "shoal"}})));
        assert!(ours(&json!({"metadata": {"annotations": {"kubernetes.io/ingress.class": "shoal"}}, "spec": {}})));
        assert!(!ours(&json!({"spec": {"ingressClassName": "nginx"}})));
        assert!(!ours(&json!({"spec": {}})));
    }
}

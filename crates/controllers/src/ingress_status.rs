//! Ingress status: every Ingress the nodes' routers serve (`shoal_api::ingress::served_by_shoal`)
//! gets `status.loadBalancer.ingress` set to the addresses of the Ready nodes that run a router
//! (those announcing `shoal.dev/ingress-addr`), as k3s's bundled ingress controller reports its
//! nodes. `kubectl get ingress` shows them in its ADDRESS column. Other Ingresses are left alone.

use std::sync::Arc;

use serde_json::{Value, json};
use shoal_api::ingress::{INGRESS_ADDR_ANNOTATION, served_by_shoal};

use crate::harness::{self, Action, Reconciler, Result};
use crate::informer::object_key;
use crate::{Context, Registered};

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
        // A class changing its controller changes which Ingresses are served.
        let lookup = Arc::clone(&ingresses);
        harness::watch_into(context.informers.get("IngressClass"), &queue, move |_, _| lookup.list().iter().map(|i| object_key(i)).collect());
        Registered::new(Self { context: Arc::clone(context) }, queue, &ingresses)
    }
}

impl Reconciler for IngressStatusController {
    fn name(&self) -> &'static str {
        "ingress-status"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let informer = self.context.informers.get("Ingress");
        let Some(ingress) = informer.get(key) else { return Ok(Action::Done) };
        let classes = self.context.informers.get("IngressClass").list();
        if !served_by_shoal(&ingress, &classes) || !ingress["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let addresses = crate::endpoints::node_addresses(&self.context, |node| node["metadata"]["annotations"][INGRESS_ADDR_ANNOTATION].is_string());
        let listed: Vec<Value> = addresses.into_iter().map(|ip| json!({"ip": ip})).collect();
        let status = if listed.is_empty() { json!({"loadBalancer": {}}) } else { json!({"loadBalancer": {"ingress": listed}}) };
        Ok(harness::write_status(&self.context.client, "Ingress", informer, &ingress, status).await?.unwrap_or(Action::Done))
    }
}

//! ServiceAccounts: every active namespace has a `default` ServiceAccount, as kube-controller-
//! manager's ServiceAccount controller keeps it. Pods name it when their spec names none (API
//! defaulting), and it is made again if deleted.

use std::sync::Arc;

use serde_json::json;

use crate::harness::{self, Action, Reconciler, Result};
use crate::{Context, Registered};

/// The account every namespace has.
pub const DEFAULT: &str = "default";

pub struct ServiceAccountController {
    context: Arc<Context>,
}

impl ServiceAccountController {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let namespaces = Arc::clone(context.informers.get("Namespace"));
        harness::watch_into(&namespaces, &queue, harness::own_keys);
        // A deleted `default` account is made again: the key is its namespace's.
        harness::watch_into(context.informers.get("ServiceAccount"), &queue, |old, new| match (old, new) {
            (Some(gone), None) if gone["metadata"]["name"] == DEFAULT => gone["metadata"]["namespace"].as_str().map(str::to_owned).into_iter().collect(),
            _ => Vec::new(),
        });
        Registered::new(Self { context: Arc::clone(context) }, queue, &namespaces)
    }
}

impl Reconciler for ServiceAccountController {
    fn name(&self) -> &'static str {
        "serviceaccount"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(namespace) = self.context.informers.get("Namespace").get(key) else { return Ok(Action::Done) };
        if !namespace["metadata"]["deletionTimestamp"].is_null() || namespace["status"]["phase"] == "Terminating" {
            return Ok(Action::Done);
        }
        let name = namespace["metadata"]["name"].as_str().unwrap_or_default();
        if self.context.informers.get("ServiceAccount").get_named(name, DEFAULT).is_some() {
            return Ok(Action::Done);
        }
        let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DEFAULT, "namespace": name}});
        match self.context.client.create(crate::info("ServiceAccount"), Some(name), &account, "shoal-serviceaccount-controller").await {
            // 409: it is there already (the informer had not seen it yet); 403/404: the
            // namespace is going away.
            Ok(_) | Err(shoal_client::Error::Api(shoal_api::ApiError { code: 403 | 404 | 409, .. })) => Ok(Action::Done),
            Err(error) => Err(error.into()),
        }
    }
}

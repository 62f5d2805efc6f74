//! What every active namespace holds, as kube-controller-manager's ServiceAccount controller and
//! root-CA publisher keep it:
//! - a `default` ServiceAccount, which pods name when their spec names none (API defaulting);
//! - the `kube-root-ca.crt` ConfigMap with the cluster's CA certificate (`ca.crt`), which the
//!   projected volume of every pod's ServiceAccount token includes, so in-cluster clients can
//!   verify the API server.
//!
//! Both are made again if deleted, and the ConfigMap is put back if its content is changed.

use std::sync::Arc;

use serde_json::{Value, json};

use crate::harness::{self, Action, Reconciler, Result};
use crate::{Context, Registered};

/// The account every namespace has.
pub const DEFAULT: &str = "default";
/// The ConfigMap every namespace has with the cluster's CA.
pub const ROOT_CA: &str = "kube-root-ca.crt";
const FIELD_MANAGER: &str = "shoal-serviceaccount-controller";

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
        // So is the CA ConfigMap, and it is put back when changed.
        harness::watch_into(context.informers.get("ConfigMap"), &queue, |old, new| {
            let object = new.or(old);
            match object {
                Some(map) if map["metadata"]["name"] == ROOT_CA => map["metadata"]["namespace"].as_str().map(str::to_owned).into_iter().collect(),
                _ => Vec::new(),
            }
        });
        Registered::new(Self { context: Arc::clone(context) }, queue, &namespaces)
    }

    /// Creates `object` (of `kind`) in `namespace`; 409 means it is there already (the informer
    /// had not seen it yet), 403/404 that the namespace is going away.
    async fn create(&self, kind: &str, namespace: &str, object: &Value) -> Result<()> {
        match self.context.client.create(crate::info(kind), Some(namespace), object, FIELD_MANAGER).await {
            Ok(_) | Err(shoal_client::Error::Api(shoal_api::ApiError { code: 403 | 404 | 409, .. })) => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    async fn publish_root_ca(&self, namespace: &str, ca: &str) -> Result<()> {
        let data = json!({"ca.crt": ca});
        match self.context.informers.get("ConfigMap").get_named(namespace, ROOT_CA) {
            Some(current) if current["data"]["ca.crt"] == ca => Ok(()),
            Some(_) => {
                let patch = json!({"data": data});
                match self.context.client.patch(crate::info("ConfigMap"), Some(namespace), ROOT_CA, &patch, true, FIELD_MANAGER).await {
                    Ok(_) | Err(shoal_client::Error::Api(shoal_api::ApiError { code: 404, .. })) => Ok(()),
                    Err(error) => Err(error.into()),
                }
            }
            None => {
                let map = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": ROOT_CA, "namespace": namespace}, "data": data});
                self.create("ConfigMap", namespace, &map).await
            }
        }
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
        if self.context.informers.get("ServiceAccount").get_named(name, DEFAULT).is_none() {
            let account = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": DEFAULT, "namespace": name}});
            self.create("ServiceAccount", name, &account).await?;
        }
        if let Some(ca) = &self.context.settings.root_ca_pem {
            self.publish_root_ca(name, ca).await?;
        }
        Ok(Action::Done)
    }
}

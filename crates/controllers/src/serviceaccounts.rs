//! What every active namespace holds, as kube-controller-manager's ServiceAccount controller and
//! root-CA publisher keep it:
//! - a `default` ServiceAccount, which pods name when their spec names none (API defaulting);
//! - the `kube-root-ca.crt` ConfigMap with the cluster's CA certificate (`ca.crt`), which the
//!   projected volume of every pod's ServiceAccount token includes, so in-cluster clients can
//!   verify the API server.
//!
//! Both are made again if deleted, and the ConfigMap is put back if its content is changed.
//!
//! [`TokensController`] is kube's tokens controller for the legacy, long-lived tokens some tools
//! still ask for: a Secret of type `kubernetes.io/service-account-token` annotated
//! `kubernetes.io/service-account.name: NAME` gets `data.token` (a token for that account, bound
//! to the Secret: it stops working when the Secret or the account is deleted), `data.ca.crt`,
//! `data.namespace` and the `kubernetes.io/service-account.uid` annotation. A Secret written
//! before its account waits for it (kube's controller deletes it instead).

use std::sync::Arc;

use base64::Engine;
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

/// The type of a Secret holding a legacy ServiceAccount token.
pub const TOKEN_SECRET_TYPE: &str = "kubernetes.io/service-account-token";
/// The annotation naming the account a token Secret is for.
pub const ACCOUNT_NAME: &str = "kubernetes.io/service-account.name";
/// The annotation the controller sets to the uid of the account the token was issued for.
pub const ACCOUNT_UID: &str = "kubernetes.io/service-account.uid";
/// The longest lifetime the TokenRequest API grants (2^32 s, about 136 years): a legacy token
/// does not expire, it ends with its Secret or its account.
const LEGACY_TOKEN_SECONDS: i64 = 1 << 32;
const TOKENS_FIELD_MANAGER: &str = "shoal-tokens-controller";

pub struct TokensController {
    context: Arc<Context>,
}

impl TokensController {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let secrets = Arc::clone(context.informers.get("Secret"));
        harness::watch_into(&secrets, &queue, |old, new| match new.or(old) {
            Some(secret) if secret["type"] == TOKEN_SECRET_TYPE => harness::own_keys(old, new),
            _ => Vec::new(),
        });
        // An account made (or made again) after its token Secrets: they get (new) tokens.
        let waiting = Arc::clone(&secrets);
        harness::watch_into(context.informers.get("ServiceAccount"), &queue, move |old, new| {
            let (Some(account), None) = (new, old) else { return Vec::new() };
            let (namespace, name) = (shoal_api::meta::namespace(account), shoal_api::meta::name(account));
            waiting
                .list_namespace(namespace)
                .iter()
                .filter(|secret| secret["type"] == TOKEN_SECRET_TYPE && secret["metadata"]["annotations"][ACCOUNT_NAME] == name)
                .map(|secret| crate::informer::object_key(secret))
                .collect()
        });
        Registered::new(Self { context: Arc::clone(context) }, queue, &secrets)
    }
}

/// Whether a token Secret still needs (a new) token for the account with `account_uid`.
fn needs_token(secret: &Value, account_uid: &str) -> bool {
    let data = &secret["data"];
    data["token"].as_str().is_none_or(str::is_empty)
        || data["namespace"].as_str().is_none_or(str::is_empty)
        || secret["metadata"]["annotations"][ACCOUNT_UID] != account_uid
}

impl Reconciler for TokensController {
    fn name(&self) -> &'static str {
        "tokens"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some(secret) = self.context.informers.get("Secret").get(key) else { return Ok(Action::Done) };
        if secret["type"] != TOKEN_SECRET_TYPE || !secret["metadata"]["deletionTimestamp"].is_null() {
            return Ok(Action::Done);
        }
        let namespace = shoal_api::meta::namespace(&secret).to_owned();
        let name = shoal_api::meta::name(&secret).to_owned();
        let Some(account_name) = secret["metadata"]["annotations"][ACCOUNT_NAME].as_str().filter(|n| !n.is_empty()) else {
            return Ok(Action::Done);
        };
        let Some(account) = self.context.informers.get("ServiceAccount").get_named(&namespace, account_name) else {
            // kube deletes such a Secret; it waits here (for a manifest listing the Secret before
            // its account), and says so where `kubectl describe secret` shows it.
            if needs_token(&secret, "") {
                let reference = crate::events::ObjectReference::of("v1", "Secret", &secret);
                self.context.recorder.warning(reference, "ServiceAccountNotFound", format!("waiting for ServiceAccount {account_name:?} in namespace {namespace:?}: the token is written once it exists"));
            }
            return Ok(Action::Done);
        };
        let account_uid = account["metadata"]["uid"].as_str().unwrap_or_default();
        if !needs_token(&secret, account_uid) {
            return Ok(Action::Done);
        }
        let request = json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {
                "expirationSeconds": LEGACY_TOKEN_SECONDS,
                "boundObjectRef": {"apiVersion": "v1", "kind": "Secret", "name": name, "uid": secret["metadata"]["uid"]},
            },
        });
        let path = format!("/api/v1/namespaces/{namespace}/serviceaccounts/{account_name}/token");
        let body = serde_json::to_vec(&request).map_err(|e| harness::Error::Other(e.to_string()))?;
        let issued = match self.context.client.request(shoal_client::Method::POST, &path, &[], Some(("application/json", body))).await {
            Ok(issued) => issued,
            // The account or the Secret went away meanwhile (or was made again): the informer
            // brings the next state.
            Err(shoal_client::Error::Api(shoal_api::ApiError { code: 404 | 409, .. })) => return Ok(Action::Done),
            Err(error) => return Err(error.into()),
        };
        let Some(token) = issued["status"]["token"].as_str() else {
            return Err(harness::Error::Other(format!("the TokenRequest for {namespace}/{account_name} returned no token")));
        };
        let encode = |text: &str| base64::engine::general_purpose::STANDARD.encode(text);
        let mut data = json!({"token": encode(token), "namespace": encode(&namespace)});
        if let Some(ca) = &self.context.settings.root_ca_pem {
            data["ca.crt"] = json!(encode(ca));
        }
        // The resourceVersion makes the patch conditional: a Secret changed since it was read
        // is read again (409) rather than overwritten.
        let patch = json!({
            "metadata": {"resourceVersion": secret["metadata"]["resourceVersion"], "annotations": {ACCOUNT_UID: account_uid}},
            "data": data,
        });
        match self.context.client.patch(crate::info("Secret"), Some(&namespace), &name, &patch, true, TOKENS_FIELD_MANAGER).await {
            Ok(_) | Err(shoal_client::Error::Api(shoal_api::ApiError { code: 404, .. })) => Ok(Action::Done),
            Err(shoal_client::Error::Api(shoal_api::ApiError { code: 409, .. })) => Ok(Action::RequeueAfter(std::time::Duration::ZERO)),
            Err(error) => Err(error.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_secret_is_filled_until_it_holds_a_token_for_the_current_account() {
        let secret = |data: Value, uid: Option<&str>| {
            json!({"type": TOKEN_SECRET_TYPE, "metadata": {"annotations": {ACCOUNT_NAME: "bot", ACCOUNT_UID: uid}}, "data": data})
        };
        assert!(needs_token(&secret(json!({}), None), "u1"), "an empty Secret");
        assert!(needs_token(&secret(json!({"token": "", "namespace": "ZGVmYXVsdA=="}), Some("u1")), "u1"), "an emptied token");
        assert!(needs_token(&secret(json!({"token": "dA==", "namespace": "ZGVmYXVsdA=="}), Some("u1")), "u2"), "the account was made again");
        assert!(!needs_token(&secret(json!({"token": "dA==", "namespace": "ZGVmYXVsdA=="}), Some("u1")), "u1"));
    }
}

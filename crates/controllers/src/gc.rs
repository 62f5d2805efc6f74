//! The garbage collector: deletes objects whose every owner is gone (Background propagation),
//! deletes an owner's dependents before the owner under Foreground propagation (the
//! `foregroundDeletion` finalizer), and strips owner references from dependents under Orphan
//! propagation (the `orphan` finalizer). Owner absence is confirmed with a live read, since a
//! cache may not have seen a just-created owner yet.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use shoal_api::meta;

use crate::harness::{self, Action, Reconciler, Result};
use crate::informer::object_key;
use crate::{Context, Registered};

pub const FOREGROUND: &str = "foregroundDeletion";
pub const ORPHAN: &str = "orphan";
const MANAGER: &str = "shoal-garbage-collector";

/// Queue keys name the kind: `Kind|namespace/name`.
fn queue_key(kind: &str, object: &Value) -> String {
    format!("{kind}|{}", object_key(object))
}

fn has_owners(object: &Value) -> bool {
    object["metadata"]["ownerReferences"].as_array().is_some_and(|r| !r.is_empty())
}

fn gc_finalizer(object: &Value) -> bool {
    !object["metadata"]["deletionTimestamp"].is_null() && meta::finalizers(object).iter().any(|f| f == FOREGROUND || f == ORPHAN)
}

pub struct GarbageCollector {
    context: Arc<Context>,
}

impl GarbageCollector {
    pub fn register(context: &Arc<Context>) -> Registered<Self> {
        let queue = Arc::new(crate::queue::WorkQueue::default());
        let informers: Vec<_> = context.informers.all().cloned().collect();
        for informer in &informers {
            let kind = informer.info.kind;
            let everyone = informers.clone();
            harness::watch_into(informer, &queue, move |old, new| {
                let mut keys = Vec::new();
                match (old, new) {
                    (_, Some(new)) => {
                        let owners_changed = old.is_none_or(|old| old["metadata"]["ownerReferences"] != new["metadata"]["ownerReferences"]);
                        if (has_owners(new) && owners_changed) || gc_finalizer(new) {
                            keys.push(queue_key(kind, new));
                        }
                    }
                    (Some(gone), None) => {
                        // Its dependents may now be orphans; its owners may now be unblocked.
                        for informer in &everyone {
                            for dependent in informer.owned_by(meta::uid(gone)) {
                                keys.push(queue_key(informer.info.kind, &dependent));
                            }
                        }
                        for reference in gone["metadata"]["ownerReferences"].as_array().into_iter().flatten() {
                            if let Some(owner_kind) = reference["kind"].as_str() {
                                let namespace = meta::namespace(gone);
                                let name = reference["name"].as_str().unwrap_or_default();
                                keys.push(if namespace.is_empty() || !crate::info_for_kind(owner_kind).is_some_and(|i| i.namespaced) {
                                    format!("{owner_kind}|{name}")
                                } else {
                                    format!("{owner_kind}|{namespace}/{name}")
                                });
                            }
                        }
                    }
                    (None, None) => {}
                }
                keys
            });
        }
        // Resync walks every object of every kind, as `Kind|key`.
        let resync = informers.into_iter().map(|informer| harness::ResyncSource { informer, kind_prefix: true }).collect();
        Registered { reconciler: Arc::new(Self { context: Arc::clone(context) }), queue, resync }
    }

    fn informer(&self, kind: &str) -> Option<&Arc<crate::informer::Informer>> {
        self.context.informers.find(kind)
    }

    /// Whether the owner `reference` of an object in `namespace` exists (with that uid).
    async fn owner_exists(&self, namespace: &str, reference: &Value) -> Result<bool> {
        let kind = reference["kind"].as_str().unwrap_or_default();
        let name = reference["name"].as_str().unwrap_or_default();
        let uid = reference["uid"].as_str().unwrap_or_default();
        let Some(info) = crate::info_for_kind(kind) else {
            // An owner of a kind this server does not serve can never be found: treat the
            // reference as dangling, as kube-controller-manager does for unknown kinds.
            return Ok(false);
        };
        let owner_namespace = if info.namespaced { Some(namespace) } else { None };
        if let Some(informer) = self.informer(kind)
            && informer.get_named(owner_namespace.unwrap_or_default(), name).is_some_and(|o| meta::uid(&o) == uid)
        {
            return Ok(true);
        }
        match self.context.client.get(info, owner_namespace, name).await {
            Ok(owner) => Ok(meta::uid(&owner) == uid),
            Err(shoal_client::Error::Api(error)) if error.code == 404 => Ok(false),
            Err(error) => Err(error.into()),
        }
    }

    async fn remove_finalizer(&self, info: &'static shoal_api::ResourceInfo, object: &Value, finalizer: &str) -> Result<()> {
        let remaining: Vec<String> = meta::finalizers(object).into_iter().filter(|f| f != finalizer).collect();
        let patch = json!({"metadata": {"finalizers": remaining, "resourceVersion": object["metadata"]["resourceVersion"]}});
        let namespace = Some(meta::namespace(object)).filter(|n| !n.is_empty());
        match self.context.client.patch(info, namespace, meta::name(object), &patch, true, MANAGER).await {
            Ok(_) => Ok(()),
            Err(shoal_client::Error::Api(error)) if error.code == 404 => Ok(()),
            Err(error) => Err(error.into()),
        }
    }

    fn dependents(&self, uid: &str) -> Vec<(&'static shoal_api::ResourceInfo, Arc<Value>)> {
        self.context.informers.all().flat_map(|i| i.owned_by(uid).into_iter().map(move |d| (i.info, d))).collect()
    }
}

impl Reconciler for GarbageCollector {
    fn name(&self) -> &'static str {
        "garbage-collector"
    }

    async fn reconcile(&self, key: &str) -> Result<Action> {
        let Some((kind, object_key)) = key.split_once('|') else { return Ok(Action::Done) };
        let Some(informer) = self.informer(kind) else { return Ok(Action::Done) };
        let info = informer.info;
        let Some(object) = informer.get(object_key) else { return Ok(Action::Done) };
        let namespace = meta::namespace(&object).to_owned();
        let client = &self.context.client;

        // As an owner being deleted.
        if !object["metadata"]["deletionTimestamp"].is_null() {
            let finalizers = meta::finalizers(&object);
            if finalizers.iter().any(|f| f == ORPHAN) {
                for (dependent_info, dependent) in self.dependents(meta::uid(&object)) {
                    let references: Vec<Value> = dependent["metadata"]["ownerReferences"].as_array().into_iter().flatten().filter(|r| r["uid"] != meta::uid(&object)).cloned().collect();
                    let patch = json!({"metadata": {"ownerReferences": references, "resourceVersion": dependent["metadata"]["resourceVersion"]}});
                    let dependent_namespace = Some(meta::namespace(&dependent)).filter(|n| !n.is_empty());
                    match client.patch(dependent_info, dependent_namespace, meta::name(&dependent), &patch, true, MANAGER).await {
                        Ok(_) => {}
                        Err(shoal_client::Error::Api(error)) if error.code == 404 => {}
                        Err(error) => return Err(error.into()),
                    }
                }
                self.remove_finalizer(info, &object, ORPHAN).await?;
                return Ok(Action::Done);
            }
            if finalizers.iter().any(|f| f == FOREGROUND) {
                let dependents = self.dependents(meta::uid(&object));
                let mut blocking = 0;
                for (dependent_info, dependent) in &dependents {
                    let blocks = dependent["metadata"]["ownerReferences"].as_array().into_iter().flatten().any(|r| r["uid"] == meta::uid(&object) && r["blockOwnerDeletion"] == true);
                    if blocks {
                        blocking += 1;
                    }
                    if dependent["metadata"]["deletionTimestamp"].is_null() {
                        let options = json!({"propagationPolicy": "Foreground", "preconditions": {"uid": meta::uid(dependent)}});
                        let dependent_namespace = Some(meta::namespace(dependent)).filter(|n| !n.is_empty());
                        match client.delete(dependent_info, dependent_namespace, meta::name(dependent), &options).await {
                            Ok(_) => {}
                            Err(shoal_client::Error::Api(error)) if error.code == 404 || error.code == 409 => {}
                            Err(error) => return Err(error.into()),
                        }
                    }
                }
                if blocking == 0 {
                    self.remove_finalizer(info, &object, FOREGROUND).await?;
                    return Ok(Action::Done);
                }
                // Dependents' deletions wake this key; look again regardless in a while.
                return Ok(Action::RequeueAfter(Duration::from_secs(5)));
            }
        }

        // As a dependent.
        let references: Vec<Value> = object["metadata"]["ownerReferences"].as_array().cloned().unwrap_or_default();
        if references.is_empty() {
            return Ok(Action::Done);
        }
        let mut dangling = Vec::new();
        let mut owner_in_foreground = false;
        for reference in &references {
            if self.owner_exists(&namespace, reference).await? {
                let kind = reference["kind"].as_str().unwrap_or_default();
                if let Some(owner_informer) = self.informer(kind) {
                    let owner_namespace = if owner_informer.info.namespaced { namespace.as_str() } else { "" };
                    if let Some(owner) = owner_informer.get_named(owner_namespace, reference["name"].as_str().unwrap_or_default()) {
                        owner_in_foreground |= !owner["metadata"]["deletionTimestamp"].is_null() && meta::finalizers(&owner).iter().any(|f| f == FOREGROUND);
                    }
                }
            } else {
                dangling.push(reference["uid"].clone());
            }
        }
        let object_namespace = Some(namespace.as_str()).filter(|n| !n.is_empty());
        if dangling.len() == references.len() {
            if object["metadata"]["deletionTimestamp"].is_null() {
                let options = json!({"propagationPolicy": "Background", "preconditions": {"uid": meta::uid(&object)}});
                match client.delete(info, object_namespace, meta::name(&object), &options).await {
                    Ok(_) => tracing::debug!(key, "garbage collected"),
                    Err(shoal_client::Error::Api(error)) if error.code == 404 || error.code == 409 => {}
                    Err(error) => return Err(error.into()),
                }
            }
        } else if !dangling.is_empty() {
            let kept: Vec<Value> = references.into_iter().filter(|r| !dangling.contains(&r["uid"])).collect();
            let patch = json!({"metadata": {"ownerReferences": kept, "resourceVersion": object["metadata"]["resourceVersion"]}});
            match client.patch(info, object_namespace, meta::name(&object), &patch, true, MANAGER).await {
                Ok(_) => {}
                Err(shoal_client::Error::Api(error)) if error.code == 404 || error.code == 409 => {}
                Err(error) => return Err(error.into()),
            }
        } else if owner_in_foreground && object["metadata"]["deletionTimestamp"].is_null() {
            let options = json!({"propagationPolicy": "Foreground", "preconditions": {"uid": meta::uid(&object)}});
            match client.delete(info, object_namespace, meta::name(&object), &options).await {
                Ok(_) => {}
                Err(shoal_client::Error::Api(error)) if error.code == 404 || error.code == 409 => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Action::Done)
    }
}

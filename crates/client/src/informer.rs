//! Informers: a list-then-watch mirror of one resource kind in memory, shared by every
//! controller that reads it, with change handlers that feed the controllers' work queues.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use shoal_api::ResourceInfo;
use shoal_api::meta;
use crate::{Client, Error as ClientError, ListOptions};
use tokio_util::sync::CancellationToken;

/// Called with the object before and after a change (`None` for a create or a delete).
pub type Handler = Box<dyn Fn(Option<&Arc<Value>>, Option<&Arc<Value>>) + Send + Sync>;

/// The cache key of an object: `namespace/name`, or `name` for cluster-scoped kinds.
pub fn object_key(object: &Value) -> String {
    let namespace = meta::namespace(object);
    if namespace.is_empty() { meta::name(object).to_owned() } else { format!("{namespace}/{}", meta::name(object)) }
}

/// Splits an [`object_key`] into namespace (empty for cluster-scoped) and name.
pub fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or(("", key))
}

/// The controller owner reference of an object, if it has one.
pub fn controller_of(object: &Value) -> Option<&Value> {
    object["metadata"]["ownerReferences"].as_array()?.iter().find(|r| r["controller"] == true)
}

#[derive(Default)]
struct Contents {
    objects: BTreeMap<String, Arc<Value>>,
    /// Uids this process deleted whose DELETED event has not arrived: late events for them are
    /// ignored so a deleted object does not reappear in the cache.
    tombstones: HashSet<String>,
    /// Uids whose DELETED event arrived, with its revision: an object this process wrote
    /// before the deletion (a graceful delete's answer, say) and records only after the event
    /// must not bring it back.
    deleted: HashMap<String, u64>,
    /// Keys of the objects each owner uid owns (any owner reference, controller or not).
    by_owner: HashMap<String, HashSet<String>>,
    /// Keys by the node a pod is bound to (pods only; empty otherwise).
    by_node: HashMap<String, HashSet<String>>,
}

impl Contents {
    fn index(&mut self, key: &str, object: &Value, insert: bool) {
        for reference in object["metadata"]["ownerReferences"].as_array().into_iter().flatten() {
            if let Some(uid) = reference["uid"].as_str() {
                if insert {
                    self.by_owner.entry(uid.to_owned()).or_default().insert(key.to_owned());
                } else if let Some(set) = self.by_owner.get_mut(uid) {
                    set.remove(key);
                    if set.is_empty() {
                        self.by_owner.remove(uid);
                    }
                }
            }
        }
        if let Some(node) = object["spec"]["nodeName"].as_str().filter(|n| !n.is_empty()) {
            if insert {
                self.by_node.entry(node.to_owned()).or_default().insert(key.to_owned());
            } else if let Some(set) = self.by_node.get_mut(node) {
                set.remove(key);
                if set.is_empty() {
                    self.by_node.remove(node);
                }
            }
        }
    }

    fn put(&mut self, object: Arc<Value>) -> (Option<Arc<Value>>, Arc<Value>) {
        let key = object_key(&object);
        let old = self.objects.insert(key.clone(), Arc::clone(&object));
        if let Some(old) = &old {
            self.index(&key, old, false);
        }
        self.index(&key, &object, true);
        (old, object)
    }

    fn remove(&mut self, key: &str) -> Option<Arc<Value>> {
        let old = self.objects.remove(key)?;
        self.index(key, &old, false);
        Some(old)
    }
}

/// A watched mirror of one kind, across all namespaces.
pub struct Informer {
    pub info: &'static ResourceInfo,
    /// Mirror only the objects this field selector matches (the watch sends DELETED for one
    /// that stops matching).
    field_selector: Option<String>,
    /// Mirror only this namespace's objects (all namespaces when `None`).
    namespace: Option<String>,
    contents: RwLock<Contents>,
    handlers: RwLock<Vec<Handler>>,
    synced: tokio::sync::watch::Sender<bool>,
}

impl Informer {
    pub fn new(info: &'static ResourceInfo) -> Arc<Self> {
        Self::selecting(info, None, None)
    }

    /// An informer of only the objects `field_selector` matches (`type=kubernetes.io/tls`).
    pub fn with_field_selector(info: &'static ResourceInfo, field_selector: &str) -> Arc<Self> {
        Self::selecting(info, Some(field_selector.to_owned()), None)
    }

    /// An informer of the one object `namespace/name` (the kubelet's way of following the
    /// ConfigMaps and Secrets its pods use: a list and watch with `fieldSelector=metadata.name=`,
    /// which a node may make for an object its pods use).
    pub fn of_object(info: &'static ResourceInfo, namespace: &str, name: &str) -> Arc<Self> {
        Self::selecting(info, Some(format!("metadata.name={name}")), Some(namespace.to_owned()))
    }

    fn selecting(info: &'static ResourceInfo, field_selector: Option<String>, namespace: Option<String>) -> Arc<Self> {
        Arc::new(Self { info, field_selector, namespace, contents: RwLock::default(), handlers: RwLock::default(), synced: tokio::sync::watch::channel(false).0 })
    }

    /// Registers a change handler. Handlers run on the informer's task and must not block.
    pub fn on_change(&self, handler: Handler) {
        self.handlers.write().unwrap_or_else(|p| p.into_inner()).push(handler);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Contents> {
        self.contents.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Contents> {
        self.contents.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, key: &str) -> Option<Arc<Value>> {
        self.read().objects.get(key).cloned()
    }

    pub fn get_named(&self, namespace: &str, name: &str) -> Option<Arc<Value>> {
        if namespace.is_empty() { self.get(name) } else { self.get(&format!("{namespace}/{name}")) }
    }

    pub fn list(&self) -> Vec<Arc<Value>> {
        self.read().objects.values().cloned().collect()
    }

    pub fn keys(&self) -> Vec<String> {
        self.read().objects.keys().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.read().objects.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every object in `namespace`.
    pub fn list_namespace(&self, namespace: &str) -> Vec<Arc<Value>> {
        let prefix = format!("{namespace}/");
        self.read().objects.range(prefix.clone()..).take_while(|(k, _)| k.starts_with(&prefix)).map(|(_, v)| Arc::clone(v)).collect()
    }

    /// Every object with an owner reference to `uid`.
    pub fn owned_by(&self, uid: &str) -> Vec<Arc<Value>> {
        let contents = self.read();
        contents.by_owner.get(uid).into_iter().flatten().filter_map(|k| contents.objects.get(k).cloned()).collect()
    }

    /// Every pod bound to `node`.
    pub fn on_node(&self, node: &str) -> Vec<Arc<Value>> {
        let contents = self.read();
        contents.by_node.get(node).into_iter().flatten().filter_map(|k| contents.objects.get(k).cloned()).collect()
    }

    /// Records an object this process just wrote, so that reads before the watch delivers it
    /// see it (a controller must not act twice on its own write). The watch event that follows
    /// replaces it; an older revision never replaces a newer one.
    pub fn remember(&self, object: Value) {
        let newer = {
            let contents = self.read();
            let key = object_key(&object);
            match contents.objects.get(&key) {
                Some(old) => meta::resource_version(old) < meta::resource_version(&object),
                None => contents.deleted.get(meta::uid(&object)).is_none_or(|deleted_at| Some(*deleted_at) < meta::resource_version(&object)),
            }
        };
        if newer {
            let (old, new) = self.write().put(Arc::new(object));
            self.notify(old.as_ref(), Some(&new));
        }
    }

    /// Records that this process deleted `object` (it answered the delete without a grace
    /// period), so reads before the watch catches up no longer see it.
    pub fn remember_deleted(&self, object: &Value) {
        let key = object_key(object);
        let removed = {
            let mut contents = self.write();
            if contents.tombstones.len() > 100_000 {
                contents.tombstones.clear();
            }
            contents.tombstones.insert(meta::uid(object).to_owned());
            match contents.objects.get(&key) {
                Some(old) if meta::uid(old) == meta::uid(object) => contents.remove(&key),
                _ => None,
            }
        };
        if let Some(old) = removed {
            self.notify(Some(&old), None);
        }
    }

    /// Waits until the first list has filled the cache.
    pub async fn synced(&self) {
        let mut receiver = self.synced.subscribe();
        let _ = receiver.wait_for(|synced| *synced).await;
    }

    fn notify(&self, old: Option<&Arc<Value>>, new: Option<&Arc<Value>>) {
        for handler in self.handlers.read().unwrap_or_else(|p| p.into_inner()).iter() {
            handler(old, new);
        }
    }

    fn apply_event(&self, event_type: &str, object: Arc<Value>) {
        match event_type {
            "ADDED" | "MODIFIED" => {
                if self.read().tombstones.contains(meta::uid(&object)) {
                    return;
                }
                let key = object_key(&object);
                let stale = self.read().objects.get(&key).is_some_and(|old| meta::resource_version(old) > meta::resource_version(&object) && meta::uid(old) == meta::uid(&object));
                if stale {
                    return;
                }
                let (old, new) = self.write().put(object);
                self.notify(old.as_ref(), Some(&new));
            }
            "DELETED" => {
                {
                    let mut contents = self.write();
                    contents.tombstones.remove(meta::uid(&object));
                    if contents.deleted.len() > 100_000 {
                        contents.deleted.clear();
                    }
                    contents.deleted.insert(meta::uid(&object).to_owned(), meta::resource_version(&object).unwrap_or(u64::MAX));
                }
                let key = object_key(&object);
                // A delete of an earlier incarnation must not remove a recreated object.
                let other_incarnation = self.read().objects.get(&key).is_some_and(|old| meta::uid(old) != meta::uid(&object));
                if other_incarnation {
                    return;
                }
                let removed = self.write().remove(&key);
                if let Some(old) = removed {
                    self.notify(Some(&old), None);
                }
            }
            _ => {}
        }
    }

    /// Replaces the contents with a fresh list, telling handlers what changed.
    fn replace_all(&self, items: Vec<Value>) {
        let fresh: HashSet<String> = items.iter().map(object_key).collect();
        let gone: Vec<String> = self.read().objects.keys().filter(|k| !fresh.contains(*k)).cloned().collect();
        for key in gone {
            let removed = self.write().remove(&key);
            if let Some(old) = removed {
                self.notify(Some(&old), None);
            }
        }
        for item in items {
            let unchanged = self.read().objects.get(&object_key(&item)).is_some_and(|old| **old == item);
            if !unchanged {
                let (old, new) = self.write().put(Arc::new(item));
                self.notify(old.as_ref(), Some(&new));
            }
        }
    }

    /// Lists and watches until `shutdown`, re-listing when the watch history has moved on.
    pub async fn run(self: Arc<Self>, client: Client, shutdown: CancellationToken) {
        let mut revision: Option<String> = None;
        loop {
            if shutdown.is_cancelled() {
                return;
            }
            if revision.is_none() {
                match client.list_all(self.info, self.namespace.as_deref(), &ListOptions { limit: Some(2000), field_selector: self.field_selector.clone(), ..Default::default() }).await {
                    Ok((items, listed_revision)) => {
                        self.replace_all(items);
                        self.synced.send_replace(true);
                        revision = Some(listed_revision);
                    }
                    Err(error) => {
                        tracing::debug!(%error, kind = self.info.kind, "informer list failed; retrying");
                        tokio::select! {
                            _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                            _ = shutdown.cancelled() => return,
                        }
                    }
                }
            }
            let options = ListOptions { resource_version: revision.clone(), timeout_seconds: Some(300 + rand::random_range(0..60)), field_selector: self.field_selector.clone(), ..Default::default() };
            let stream = match client.watch(self.info, self.namespace.as_deref(), &options).await {
                Ok(stream) => stream,
                Err(ClientError::Api(error)) if error.code == 410 => {
                    revision = None;
                    continue;
                }
                Err(error) => {
                    tracing::debug!(%error, kind = self.info.kind, "informer watch failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                        _ = shutdown.cancelled() => return,
                    }
                }
            };
            let mut stream = std::pin::pin!(stream);
            loop {
                let next = tokio::select! {
                    next = stream.next() => next,
                    _ = shutdown.cancelled() => return,
                };
                match next {
                    Some(Ok(event)) if event.event_type == "ERROR" => {
                        if event.object["code"] == 410 {
                            revision = None;
                        }
                        break;
                    }
                    Some(Ok(event)) => {
                        if let Some(rv) = event.object["metadata"]["resourceVersion"].as_str() {
                            revision = Some(rv.to_owned());
                        }
                        if event.event_type != "BOOKMARK" {
                            self.apply_event(&event.event_type, event.object);
                        }
                    }
                    Some(Err(error)) => {
                        tracing::debug!(%error, kind = self.info.kind, "informer watch broke; resuming");
                        break;
                    }
                    None => break,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(name: &str, rv: &str, owner: Option<&str>, node: Option<&str>) -> Value {
        let mut pod = json!({"metadata": {"namespace": "default", "name": name, "uid": format!("uid-{name}"), "resourceVersion": rv}, "spec": {}});
        if let Some(owner) = owner {
            pod["metadata"]["ownerReferences"] = json!([{"uid": owner, "controller": true, "kind": "ReplicaSet", "name": "rs"}]);
        }
        if let Some(node) = node {
            pod["spec"]["nodeName"] = json!(node);
        }
        pod
    }

    #[test]
    fn indexes_follow_changes_and_stale_events_are_ignored() {
        let informer = Informer::new(shoal_api::resources::by_name("pods").expect("pods"));
        informer.apply_event("ADDED", Arc::new(pod("a", "5", Some("rs-1"), None)));
        informer.apply_event("ADDED", Arc::new(pod("b", "6", Some("rs-1"), Some("n1"))));
        assert_eq!(informer.owned_by("rs-1").len(), 2);
        informer.apply_event("MODIFIED", Arc::new(pod("a", "7", None, Some("n1"))));
        assert_eq!(informer.owned_by("rs-1").len(), 1);
        assert_eq!(informer.on_node("n1").len(), 2);
        // A replayed older revision does not overwrite the newer one.
        informer.apply_event("MODIFIED", Arc::new(pod("a", "4", Some("rs-1"), None)));
        assert_eq!(informer.owned_by("rs-1").len(), 1);
        informer.apply_event("DELETED", Arc::new(pod("b", "8", Some("rs-1"), Some("n1"))));
        assert!(informer.owned_by("rs-1").is_empty());
        assert_eq!(informer.on_node("n1").len(), 1);
        assert_eq!(informer.list_namespace("default").len(), 1);
        assert!(informer.list_namespace("other").is_empty());
    }

    #[test]
    fn an_object_written_before_its_deletion_is_not_brought_back() {
        let informer = Informer::new(shoal_api::resources::by_name("pods").expect("pods"));
        informer.apply_event("ADDED", Arc::new(pod("a", "5", Some("rs-1"), Some("n1"))));
        // A graceful delete answered with the terminating pod (revision 7); the node completed
        // the deletion (revision 9), and that event arrived before the answer was recorded.
        let mut terminating = pod("a", "7", Some("rs-1"), Some("n1"));
        terminating["metadata"]["deletionTimestamp"] = serde_json::json!("2026-01-01T00:00:00Z");
        informer.apply_event("DELETED", Arc::new(pod("a", "9", Some("rs-1"), Some("n1"))));
        informer.remember(terminating);
        assert!(informer.get("default/a").is_none(), "a deleted pod came back");
        assert!(informer.owned_by("rs-1").is_empty());
        // A new object of the same name (another uid) is recorded as usual.
        let mut recreated = pod("a", "11", Some("rs-1"), None);
        recreated["metadata"]["uid"] = serde_json::json!("uid-a-2");
        informer.remember(recreated);
        assert_eq!(informer.get("default/a").map(|p| p["metadata"]["uid"].clone()), Some(serde_json::json!("uid-a-2")));
    }

    #[test]
    fn relist_reports_deletions() {
        let informer = Informer::new(shoal_api::resources::by_name("pods").expect("pods"));
        let deleted = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&deleted);
        informer.on_change(Box::new(move |old, new| {
            if let (Some(old), None) = (old, new) {
                seen.lock().expect("lock").push(meta::name(old).to_owned());
            }
        }));
        informer.apply_event("ADDED", Arc::new(pod("a", "1", None, None)));
        informer.apply_event("ADDED", Arc::new(pod("b", "2", None, None)));
        informer.replace_all(vec![pod("b", "2", None, None)]);
        assert_eq!(*deleted.lock().expect("lock"), vec!["a".to_owned()]);
    }
}

//! A pod's configMap, secret, downwardAPI and projected volumes: written before any of its
//! containers starts, then kept in step with their sources while the pod runs, as the kubelet
//! keeps them.
//!
//! - **Layout** (the kubelet's AtomicWriter): the files live in a timestamped directory
//!   `..2026_11_23_20_15_02.1234`; `..data` is a symlink to it, and every top-level name of the
//!   volume is a symlink through `..data`. An update writes a new directory and swaps `..data`
//!   with one rename, so a reader sees the whole old content or the whole new one, never a mix,
//!   and a removed key disappears. Tools that watch `..data` (config reloaders) work unchanged.
//! - **Sources** are followed, not polled: each ConfigMap or Secret a pod's volumes name is
//!   mirrored by one list-and-watch of that object alone (`fieldSelector=metadata.name=`, which
//!   the API lets a node make only for objects its pods use), shared by every pod of the node
//!   and stopped when the last pod using it goes. A change rewrites the volumes that use it at
//!   once; labels and annotations of the pod itself (downward API) are followed through the pod
//!   worker; ServiceAccount tokens come from [`crate::tokens`]; and every volume is rewritten
//!   every minute regardless, so a missed event heals.
//! - **Failures**: a source that is missing (and not `optional`) holds the pod's containers
//!   back with `FailedMount` events until it appears, as in kube. A failed rewrite of a running
//!   pod leaves the last good content in place.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use futures::FutureExt;
use serde_json::Value;
use shoal_api::resources;
use shoal_client::informer::Informer;
use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::pods::Reporter;

/// The symlink to the directory holding a volume's current files.
const DATA: &str = "..data";
const DATA_TMP: &str = "..data_tmp";
/// How often a running pod's volumes are rewritten from their sources without a change event.
const RESYNC: Duration = Duration::from_secs(60);
/// How long the first read of a source waits for its list.
const CACHE_WAIT: Duration = Duration::from_secs(10);
const FIRST_RETRY: Duration = Duration::from_millis(250);
const MAX_RETRY: Duration = Duration::from_secs(30);
/// kube's default file mode for volume files (0644).
const DEFAULT_MODE: u32 = 0o644;

/// One file of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct File {
    pub bytes: Vec<u8>,
    pub mode: u32,
}

/// A volume's whole content: relative path → file.
pub type Payload = BTreeMap<String, File>;

/// Refuses a path that is absolute, climbs out, has empty parts or starts with `..` (the
/// writer's own names).
pub fn check_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.starts_with('/') || path.starts_with("..") || path.split('/').any(|p| p == ".." || p.is_empty()) {
        return Err(format!("volume item path {path:?} must be relative, stay inside the volume and not start with '..'"));
    }
    Ok(())
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{}: {e}", path.display())
}

/// Whether `directory` already holds exactly `payload` (same paths, bytes and modes).
fn holds(directory: &Path, payload: &Payload) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fn count_files(directory: &Path) -> Option<usize> {
        let mut count = 0;
        for entry in std::fs::read_dir(directory).ok()? {
            let entry = entry.ok()?;
            let kind = entry.file_type().ok()?;
            count += if kind.is_dir() { count_files(&entry.path())? } else { 1 };
        }
        Some(count)
    }
    count_files(directory) == Some(payload.len())
        && payload.iter().all(|(path, file)| {
            let target = directory.join(path);
            let same_mode = std::fs::symlink_metadata(&target).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o7777 == file.mode);
            same_mode && std::fs::read(&target).is_ok_and(|bytes| bytes == file.bytes)
        })
}

/// A fresh name for a volume's data directory: `..` and the UTC time, then a number no other
/// write of this process uses.
fn data_directory_name() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let time = jiff::Timestamp::now().strftime("%Y_%m_%d_%H_%M_%S");
    format!("..{time}.{}{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Makes `directory` hold `payload`, laid out as the kubelet's AtomicWriter does (see the
/// module's documentation). Returns whether anything changed.
pub fn write_payload(directory: &Path, payload: &Payload) -> Result<bool, String> {
    use std::os::unix::fs::PermissionsExt;
    for path in payload.keys() {
        check_path(path)?;
    }
    std::fs::create_dir_all(directory).map_err(io_error(directory))?;
    let data = directory.join(DATA);
    let current = std::fs::read_link(&data).ok();
    let visible: BTreeSet<&str> = payload.keys().map(|path| path.split('/').next().unwrap_or(path)).collect();
    let links_in_place = || visible.iter().all(|name| std::fs::read_link(directory.join(name)).is_ok_and(|target| target == Path::new(DATA).join(name)));
    if current.as_ref().is_some_and(|old| holds(&directory.join(old), payload)) && links_in_place() {
        return Ok(false);
    }
    let fresh = data_directory_name();
    let fresh_path = directory.join(&fresh);
    std::fs::create_dir_all(&fresh_path).map_err(io_error(&fresh_path))?;
    for (path, file) in payload {
        let target = fresh_path.join(path);
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io_error(parent))?;
        }
        std::fs::write(&target, &file.bytes).map_err(io_error(&target))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(file.mode)).map_err(io_error(&target))?;
    }
    let swap = directory.join(DATA_TMP);
    let _ = std::fs::remove_file(&swap);
    std::os::unix::fs::symlink(&fresh, &swap).map_err(io_error(&swap))?;
    std::fs::rename(&swap, &data).map_err(io_error(&data))?;
    // The visible names: each a symlink through `..data` (a plain file or directory left by an
    // older layout is replaced); names no longer in the payload go.
    for name in &visible {
        let link = directory.join(name);
        let wanted = Path::new(DATA).join(name);
        match std::fs::symlink_metadata(&link) {
            Ok(meta) if meta.file_type().is_symlink() && std::fs::read_link(&link).is_ok_and(|t| t == wanted) => continue,
            Ok(meta) if meta.is_dir() => std::fs::remove_dir_all(&link).map_err(io_error(&link))?,
            Ok(_) => std::fs::remove_file(&link).map_err(io_error(&link))?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&wanted, &link).map_err(io_error(&link))?;
    }
    for entry in std::fs::read_dir(directory).map_err(io_error(directory))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        // An older data directory (or a swap link a crash left), or a name no longer served.
        let stale = if name.starts_with("..") { name != fresh && name != DATA } else { !visible.contains(name.as_str()) };
        if stale {
            let _ = if entry.file_type().is_ok_and(|t| t.is_dir()) { std::fs::remove_dir_all(entry.path()) } else { std::fs::remove_file(entry.path()) };
        }
    }
    Ok(true)
}

/// The ConfigMaps and Secrets this node's pods use, each followed by one informer while some
/// pod needs it.
#[derive(Default)]
pub(crate) struct Sources {
    entries: Mutex<HashMap<SourceKey, Source>>,
}

/// `(configmap | secret, namespace, name)`.
type SourceKey = (&'static str, String, String);

struct Source {
    informer: Arc<Informer>,
    users: usize,
    stop: CancellationToken,
    changed: watch::Sender<u64>,
}

/// A pod's hold on a followed source; the source is let go with its last holder.
pub(crate) struct Followed {
    sources: Arc<Sources>,
    key: SourceKey,
    informer: Arc<Informer>,
    changed: watch::Receiver<u64>,
}

impl Sources {
    fn entries(&self) -> std::sync::MutexGuard<'_, HashMap<SourceKey, Source>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts following `kind` (`configmap` or `secret`) `namespace/name`, or joins those
    /// following it already.
    fn follow(self: &Arc<Self>, shared: &Shared, kind: &'static str, namespace: &str, name: &str) -> Followed {
        let key = (kind, namespace.to_owned(), name.to_owned());
        let mut entries = self.entries();
        let source = entries.entry(key.clone()).or_insert_with(|| {
            let info = resources::by_name(kind).expect("configmaps and secrets are served");
            let informer = Informer::of_object(info, namespace, name);
            let (changed, _) = watch::channel(0u64);
            let notify = changed.clone();
            informer.on_change(Box::new(move |_, _| notify.send_modify(|generation| *generation += 1)));
            let stop = shared.shutdown.child_token();
            shared.tasks.spawn(Arc::clone(&informer).run(shared.client.clone(), stop.clone()));
            Source { informer, users: 0, stop, changed }
        });
        source.users += 1;
        Followed { sources: Arc::clone(self), key, informer: Arc::clone(&source.informer), changed: source.changed.subscribe() }
    }

    /// How many sources are followed (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.entries().len()
    }
}

impl Drop for Followed {
    fn drop(&mut self) {
        let mut entries = self.sources.entries();
        if let Some(source) = entries.get_mut(&self.key) {
            source.users -= 1;
            if source.users == 0 {
                source.stop.cancel();
                entries.remove(&self.key);
            }
        }
    }
}

impl Followed {
    /// The object as last seen, or None when it does not exist; waits for the first list.
    async fn current(&self) -> Result<Option<Arc<Value>>, String> {
        let (kind, namespace, name) = &self.key;
        if tokio::time::timeout(CACHE_WAIT, self.informer.synced()).await.is_err() {
            return Err(format!("failed to sync {kind} cache: timed out waiting to read {kind} {namespace}/{name}"));
        }
        Ok(self.informer.get_named(namespace, name))
    }
}

/// The ConfigMaps and Secrets `pod`'s volumes read: `(kind, name)`.
pub fn sources_of(pod: &Value) -> BTreeSet<(&'static str, String)> {
    let mut found = BTreeSet::new();
    for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
        let mut add = |kind: &'static str, name: &Value| {
            if let Some(name) = name.as_str().filter(|n| !n.is_empty()) {
                found.insert((kind, name.to_owned()));
            }
        };
        add("configmap", &volume["configMap"]["name"]);
        add("secret", &volume["secret"]["secretName"]);
        for source in volume["projected"]["sources"].as_array().into_iter().flatten() {
            add("configmap", &source["configMap"]["name"]);
            add("secret", &source["secret"]["name"]);
        }
    }
    found
}

/// A file mode from the spec (`mode` or `defaultMode`, decimal in JSON as in kube), if valid.
fn mode_of(value: &Value) -> Option<u32> {
    value.as_u64().and_then(|m| u32::try_from(m).ok()).filter(|m| *m <= 0o777)
}

/// Adds a ConfigMap's or Secret's keys to `payload`: every key, or the listed `items`. A
/// missing object or key is an error unless the source is `optional`.
fn add_object(payload: &mut Payload, kind: &str, name: &str, source: &Value, object: Option<&Value>, default_mode: u32) -> Result<(), String> {
    let optional = source["optional"] == true;
    let Some(object) = object else {
        return if optional { Ok(()) } else { Err(format!("{kind} \"{name}\" not found")) };
    };
    let items: Vec<(String, String, Option<u32>)> = match source["items"].as_array() {
        Some(items) => items.iter().map(|i| (i["key"].as_str().unwrap_or_default().to_owned(), i["path"].as_str().unwrap_or_default().to_owned(), mode_of(&i["mode"]))).collect(),
        None => ["data", "binaryData"].iter().flat_map(|field| object[*field].as_object().into_iter().flatten()).map(|(k, _)| (k.clone(), k.clone(), None)).collect(),
    };
    let decode = |raw: &str, key: &str| base64::engine::general_purpose::STANDARD.decode(raw).map_err(|e| format!("{kind} {name}/{key}: {e}"));
    for (key, path, mode) in items {
        let bytes = if let Some(raw) = object["data"][&key].as_str() {
            if kind == "secret" { decode(raw, &key)? } else { raw.as_bytes().to_vec() }
        } else if let Some(raw) = object["binaryData"][&key].as_str() {
            decode(raw, &key)?
        } else if optional {
            continue;
        } else {
            return Err(format!("{kind} \"{name}\" has no key {key:?}"));
        };
        check_path(&path)?;
        payload.insert(path, File { bytes, mode: mode.unwrap_or(default_mode) });
    }
    Ok(())
}

/// Adds a downward API source's items (`fieldRef`, `resourceFieldRef`) to `payload`.
fn add_downward(payload: &mut Payload, pod: &Value, items: &Value, host_ip: &str, default_mode: u32) -> Result<(), String> {
    for item in items.as_array().into_iter().flatten() {
        let path = item["path"].as_str().unwrap_or_default();
        let value = if let Some(field) = item["fieldRef"]["fieldPath"].as_str() {
            crate::spec::field_value(pod, field, host_ip)?
        } else if item["resourceFieldRef"].is_object() {
            let container = pod["spec"]["containers"].get(0).unwrap_or(&Value::Null);
            crate::spec::resource_value(pod, container, &item["resourceFieldRef"])?
        } else {
            return Err(format!("downward API item {path:?} names neither fieldRef nor resourceFieldRef"));
        };
        check_path(path)?;
        payload.insert(path.to_owned(), File { bytes: value.into_bytes(), mode: mode_of(&item["mode"]).unwrap_or(default_mode) });
    }
    Ok(())
}

/// Whether the node writes this volume (rather than leaving a plain or host directory).
pub fn written_by_node(volume: &Value) -> bool {
    ["configMap", "secret", "downwardAPI", "projected"].iter().any(|kind| volume.get(*kind).is_some())
}

/// One pod's written volumes: what they are made from and where they live.
pub(crate) struct PodVolumes {
    root: PathBuf,
    host_ip: String,
    followed: Vec<Followed>,
    /// Issued ServiceAccount tokens, by (volume, path).
    tokens: Mutex<HashMap<(String, String), Vec<u8>>>,
    tokens_changed: Notify,
}

impl PodVolumes {
    /// Follows every ConfigMap and Secret `pod`'s volumes read.
    pub(crate) fn new(shared: &Shared, pod: &Value, root: PathBuf) -> Self {
        let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
        let followed = sources_of(pod).into_iter().map(|(kind, name)| shared.volume_sources.follow(shared, kind, namespace, &name)).collect();
        Self { root, host_ip: shared.host_ip.clone(), followed, tokens: Mutex::default(), tokens_changed: Notify::new() }
    }

    /// The directory of volume `name`.
    pub(crate) fn directory(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Records a newly issued token; the volume holding it is rewritten (at once when the pod
    /// runs, else by its first write).
    pub(crate) fn set_token(&self, volume: &str, path: &str, token: &[u8]) {
        self.tokens.lock().unwrap_or_else(|p| p.into_inner()).insert((volume.to_owned(), path.to_owned()), token.to_vec());
        self.tokens_changed.notify_one();
    }

    async fn object(&self, kind: &str, name: &str) -> Result<Option<Arc<Value>>, String> {
        match self.followed.iter().find(|f| f.key.0 == kind && f.key.2 == name) {
            Some(followed) => followed.current().await,
            None => Err(format!("{kind} {name} is not followed")),
        }
    }

    /// What `volume` holds now, or None for a volume the node does not write.
    async fn payload(&self, pod: &Value, volume: &Value) -> Result<Option<Payload>, String> {
        let volume_name = volume["name"].as_str().unwrap_or_default();
        let mut payload = Payload::new();
        if let Some(source) = volume.get("configMap") {
            let name = source["name"].as_str().unwrap_or_default();
            let default_mode = mode_of(&source["defaultMode"]).unwrap_or(DEFAULT_MODE);
            add_object(&mut payload, "configmap", name, source, self.object("configmap", name).await?.as_deref(), default_mode)?;
        } else if let Some(source) = volume.get("secret") {
            let name = source["secretName"].as_str().unwrap_or_default();
            let default_mode = mode_of(&source["defaultMode"]).unwrap_or(DEFAULT_MODE);
            add_object(&mut payload, "secret", name, source, self.object("secret", name).await?.as_deref(), default_mode)?;
        } else if let Some(source) = volume.get("downwardAPI") {
            add_downward(&mut payload, pod, &source["items"], &self.host_ip, mode_of(&source["defaultMode"]).unwrap_or(DEFAULT_MODE))?;
        } else if let Some(projected) = volume.get("projected") {
            let default_mode = mode_of(&projected["defaultMode"]).unwrap_or(DEFAULT_MODE);
            for source in projected["sources"].as_array().into_iter().flatten() {
                if let Some(config_map) = source.get("configMap") {
                    let name = config_map["name"].as_str().unwrap_or_default();
                    add_object(&mut payload, "configmap", name, config_map, self.object("configmap", name).await?.as_deref(), default_mode)?;
                } else if let Some(secret) = source.get("secret") {
                    let name = secret["name"].as_str().unwrap_or_default();
                    add_object(&mut payload, "secret", name, secret, self.object("secret", name).await?.as_deref(), default_mode)?;
                } else if let Some(downward) = source.get("downwardAPI") {
                    add_downward(&mut payload, pod, &downward["items"], &self.host_ip, default_mode)?;
                } else if let Some(token) = source.get("serviceAccountToken") {
                    let path = token["path"].as_str().unwrap_or_default();
                    let issued = self.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(&(volume_name.to_owned(), path.to_owned())).cloned();
                    let bytes = issued.ok_or_else(|| format!("the ServiceAccount token {path:?} has not been issued"))?;
                    check_path(path)?;
                    payload.insert(path.to_owned(), File { bytes, mode: default_mode });
                } else if let Some(other) = source.as_object().and_then(|o| o.keys().next()) {
                    return Err(format!("projected volume source {other:?} is not supported"));
                }
            }
        } else {
            return Ok(None);
        }
        Ok(Some(payload))
    }

    /// Writes every volume of `pod` the node writes, and makes the directory of every other
    /// volume but hostPath. The first error names the volume.
    async fn write_all(&self, pod: &Value) -> Result<(), (String, String)> {
        for volume in pod["spec"]["volumes"].as_array().into_iter().flatten() {
            let name = volume["name"].as_str().unwrap_or_default();
            if volume["hostPath"].is_object() {
                continue;
            }
            let directory = self.directory(name);
            let written = match self.payload(pod, volume).await {
                Ok(Some(payload)) => write_payload(&directory, &payload).map(drop),
                Ok(None) => std::fs::create_dir_all(&directory).map_err(io_error(&directory)),
                Err(message) => Err(message),
            };
            written.map_err(|message| (name.to_owned(), message))?;
        }
        Ok(())
    }

    /// Writes the pod's volumes before its containers start, retrying with growing waits (each
    /// failure a `FailedMount` event in the kubelet's words). False when the pod stopped first.
    pub(crate) async fn set_up(&self, reporter: &Reporter, pod: &Value, stop: &CancellationToken) -> bool {
        let mut wait = FIRST_RETRY;
        loop {
            match self.write_all(pod).await {
                Ok(()) => return true,
                Err((volume, message)) => {
                    reporter.event("Warning", "FailedMount", &format!("MountVolume.SetUp failed for volume \"{volume}\" : {message}")).await;
                    tokio::select! {
                        _ = stop.cancelled() => return false,
                        _ = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(MAX_RETRY);
                }
            }
        }
    }

    /// Keeps the volumes in step until `stop`: rewritten when a source changes, the pod's labels
    /// or annotations change (`pod`), a token is renewed, and every minute.
    pub(crate) async fn keep(self: Arc<Self>, mut pod: watch::Receiver<Arc<Value>>, stop: CancellationToken) {
        let mut changes: Vec<watch::Receiver<u64>> = self.followed.iter().map(|f| f.changed.clone()).collect();
        for change in &mut changes {
            change.mark_unchanged();
        }
        let mut pod_open = true;
        loop {
            let source_changed = async {
                if changes.is_empty() {
                    return std::future::pending().await;
                }
                let _ = futures::future::select_all(changes.iter_mut().map(|c| c.changed().boxed())).await;
            };
            tokio::select! {
                _ = stop.cancelled() => return,
                // Spread over ten seconds, so a node's pods do not all resync at once.
                _ = tokio::time::sleep(RESYNC + Duration::from_millis(rand::random_range(0..10_000))) => {}
                _ = self.tokens_changed.notified() => {}
                changed = pod.changed(), if pod_open => pod_open = changed.is_ok(),
                _ = source_changed => {}
            }
            let current = Arc::clone(&pod.borrow_and_update());
            if let Err((volume, message)) = self.write_all(&current).await {
                tracing::warn!(pod = %format!("{}/{}", current["metadata"]["namespace"].as_str().unwrap_or_default(), current["metadata"]["name"].as_str().unwrap_or_default()), %volume, %message, "updating a volume; its last content stays");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn payload(files: &[(&str, &str)]) -> Payload {
        files.iter().map(|(path, text)| ((*path).to_owned(), File { bytes: text.as_bytes().to_vec(), mode: DEFAULT_MODE })).collect()
    }

    fn names(directory: &Path) -> BTreeSet<String> {
        std::fs::read_dir(directory).expect("listed").map(|e| e.expect("entry").file_name().to_string_lossy().into_owned()).collect()
    }

    #[test]
    fn a_volume_is_laid_out_as_the_kubelet_does_and_swapped_whole() {
        use std::os::unix::fs::PermissionsExt;
        let directory = tempfile::tempdir().expect("temporary directory");
        let volume = directory.path();
        assert!(write_payload(volume, &payload(&[("app.conf", "one"), ("nested/ca.crt", "ca")])).expect("written"));
        assert_eq!(std::fs::read_to_string(volume.join("app.conf")).expect("read"), "one");
        assert_eq!(std::fs::read_to_string(volume.join("nested/ca.crt")).expect("read"), "ca");
        assert_eq!(std::fs::read_link(volume.join("app.conf")).expect("a link"), Path::new("..data/app.conf"));
        assert_eq!(std::fs::read_link(volume.join("nested")).expect("a link"), Path::new("..data/nested"));
        let first = std::fs::read_link(volume.join(DATA)).expect("..data is a link");
        assert!(first.to_string_lossy().starts_with(".."), "{first:?}");
        assert_eq!(std::fs::metadata(volume.join("app.conf")).expect("meta").permissions().mode() & 0o777, 0o644);

        assert!(!write_payload(volume, &payload(&[("app.conf", "one"), ("nested/ca.crt", "ca")])).expect("written"), "nothing changed");
        assert_eq!(std::fs::read_link(volume.join(DATA)).expect("link"), first, "an unchanged payload is not rewritten");

        // A changed value and a removed key: one swap, and the old directory is gone.
        assert!(write_payload(volume, &payload(&[("app.conf", "two")])).expect("rewritten"));
        assert_eq!(std::fs::read_to_string(volume.join("app.conf")).expect("read"), "two");
        assert!(!volume.join("nested").exists(), "a removed key disappears");
        let second = std::fs::read_link(volume.join(DATA)).expect("link");
        assert_ne!(second, first);
        assert_eq!(names(volume), BTreeSet::from([DATA.to_owned(), second.to_string_lossy().into_owned(), "app.conf".to_owned()]));

        // A mode change alone is a change.
        let mut secret = payload(&[("app.conf", "two")]);
        secret.get_mut("app.conf").expect("file").mode = 0o400;
        assert!(write_payload(volume, &secret).expect("rewritten"));
        assert_eq!(std::fs::metadata(volume.join("app.conf")).expect("meta").permissions().mode() & 0o777, 0o400);
    }

    #[test]
    fn files_of_an_older_layout_are_replaced_by_links() {
        let directory = tempfile::tempdir().expect("temporary directory");
        let volume = directory.path();
        std::fs::write(volume.join("token"), "old").expect("written");
        std::fs::write(volume.join("stale"), "x").expect("written");
        assert!(write_payload(volume, &payload(&[("token", "new")])).expect("written"));
        assert_eq!(std::fs::read_to_string(volume.join("token")).expect("read"), "new");
        assert!(std::fs::symlink_metadata(volume.join("token")).expect("meta").file_type().is_symlink());
        assert!(!volume.join("stale").exists());
    }

    #[test]
    fn paths_must_stay_inside_the_volume() {
        for escape in ["../x", "/etc/passwd", "a/../../x", "", "a//b", "..data", "..2026", "a/.."] {
            assert!(check_path(escape).is_err(), "{escape:?}");
        }
        for fine in ["token", "nested/ca.crt", "a..b", ".hidden"] {
            assert!(check_path(fine).is_ok(), "{fine:?}");
        }
        let directory = tempfile::tempdir().expect("temporary directory");
        assert!(write_payload(directory.path(), &payload(&[("../escape", "x")])).is_err());
        assert!(!directory.path().parent().expect("parent").join("escape").exists());
    }

    #[test]
    fn config_maps_and_secrets_give_their_keys_items_modes_and_optional_absence() {
        let config = json!({"data": {"a.conf": "A", "b.conf": "B"}, "binaryData": {"logo": "AAE="}});
        let mut all = Payload::new();
        add_object(&mut all, "configmap", "settings", &json!({"name": "settings"}), Some(&config), DEFAULT_MODE).expect("added");
        assert_eq!(all.keys().collect::<Vec<_>>(), ["a.conf", "b.conf", "logo"]);
        assert_eq!(all["logo"].bytes, [0, 1]);

        let mut picked = Payload::new();
        let source = json!({"name": "settings", "items": [{"key": "a.conf", "path": "etc/app.conf", "mode": 0o600}]});
        add_object(&mut picked, "configmap", "settings", &source, Some(&config), DEFAULT_MODE).expect("added");
        assert_eq!(picked.len(), 1);
        assert_eq!(picked["etc/app.conf"], File { bytes: b"A".to_vec(), mode: 0o600 });

        let secret = json!({"data": {"password": "aHVudGVyMg=="}});
        let mut decoded = Payload::new();
        add_object(&mut decoded, "secret", "db", &json!({"secretName": "db"}), Some(&secret), 0o400).expect("added");
        assert_eq!(decoded["password"], File { bytes: b"hunter2".to_vec(), mode: 0o400 });

        let missing_key = json!({"name": "settings", "items": [{"key": "nope", "path": "x"}]});
        let error = add_object(&mut Payload::new(), "configmap", "settings", &missing_key, Some(&config), DEFAULT_MODE).expect_err("no such key");
        assert!(error.contains("has no key \"nope\""), "{error}");
        let error = add_object(&mut Payload::new(), "configmap", "gone", &json!({"name": "gone"}), None, DEFAULT_MODE).expect_err("missing");
        assert_eq!(error, "configmap \"gone\" not found");
        let mut optional = Payload::new();
        add_object(&mut optional, "configmap", "gone", &json!({"name": "gone", "optional": true}), None, DEFAULT_MODE).expect("optional");
        assert!(optional.is_empty());
        let escape = json!({"name": "settings", "items": [{"key": "a.conf", "path": "../a"}]});
        assert!(add_object(&mut Payload::new(), "configmap", "settings", &escape, Some(&config), DEFAULT_MODE).is_err());
    }

    #[test]
    fn every_config_map_and_secret_a_pods_volumes_read_is_followed() {
        let pod = json!({"spec": {"volumes": [
            {"name": "a", "configMap": {"name": "settings"}},
            {"name": "b", "secret": {"secretName": "db"}},
            {"name": "c", "projected": {"sources": [{"configMap": {"name": "kube-root-ca.crt"}}, {"secret": {"name": "db"}}, {"serviceAccountToken": {"path": "token"}}]}},
            {"name": "d", "emptyDir": {}},
        ]}});
        let found: Vec<(&str, String)> = sources_of(&pod).into_iter().collect();
        assert_eq!(found, [("configmap", "kube-root-ca.crt".to_owned()), ("configmap", "settings".to_owned()), ("secret", "db".to_owned())]);
    }

    #[tokio::test]
    async fn a_source_is_followed_once_for_all_its_pods_and_let_go_with_the_last() {
        let sources = Arc::new(Sources::default());
        let informer = Informer::of_object(resources::by_name("configmap").expect("served"), "shop", "settings");
        let stop = CancellationToken::new();
        let (changed, _) = watch::channel(0);
        sources.entries().insert(("configmap", "shop".into(), "settings".into()), Source { informer: Arc::clone(&informer), users: 2, stop: stop.clone(), changed: changed.clone() });
        let hold = |sources: &Arc<Sources>| Followed { sources: Arc::clone(sources), key: ("configmap", "shop".into(), "settings".into()), informer: Arc::clone(&informer), changed: changed.subscribe() };
        let (first, second) = (hold(&sources), hold(&sources));
        drop(first);
        assert_eq!(sources.len(), 1, "one pod still uses it");
        assert!(!stop.is_cancelled());
        drop(second);
        assert_eq!(sources.len(), 0);
        assert!(stop.is_cancelled(), "its watch stops with its last user");
    }
}

//! Images: a manifest's config and layers written to containerd's content store and unpacked,
//! layer by layer, into committed snapshots named by chain ID, as `ctr pull` does. Each image is
//! held by a containerd lease of its own (`shoal.image.<manifest hex>`), so containerd's garbage
//! collector keeps its content and snapshots. Pulls of the same manifest are coalesced.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use shoal_oci::client::RegistryClient;
use shoal_oci::media::{Descriptor, Manifest};
use shoal_oci::{Digest, Reference};

use crate::grpc::{ALREADY_EXISTS, Channel, NOT_FOUND};
use crate::proto;
use crate::{Error, Result};

const CONTENT_INFO: &str = "/containerd.services.content.v1.Content/Info";
const CONTENT_WRITE: &str = "/containerd.services.content.v1.Content/Write";
const SNAPSHOT_STAT: &str = "/containerd.services.snapshots.v1.Snapshots/Stat";
const SNAPSHOT_PREPARE: &str = "/containerd.services.snapshots.v1.Snapshots/Prepare";
const SNAPSHOT_COMMIT: &str = "/containerd.services.snapshots.v1.Snapshots/Commit";
const SNAPSHOT_REMOVE: &str = "/containerd.services.snapshots.v1.Snapshots/Remove";
const DIFF_APPLY: &str = "/containerd.services.diff.v1.Diff/Apply";
const LEASE_CREATE: &str = "/containerd.services.leases.v1.Leases/Create";
const LEASE_ADD: &str = "/containerd.services.leases.v1.Leases/AddResource";
/// Content is streamed to containerd in messages of this size.
const WRITE_CHUNK: usize = 1024 * 1024;

/// The parts of an image config (`config` in the config blob) a container starts from.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageConfig {
    #[serde(default)]
    pub entrypoint: Option<Vec<String>>,
    #[serde(default)]
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<Vec<String>>,
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
}

#[derive(Deserialize)]
struct ConfigBlob {
    #[serde(default)]
    config: Option<ImageConfig>,
    rootfs: RootFs,
}

#[derive(Deserialize)]
struct RootFs {
    diff_ids: Vec<String>,
}

/// An image unpacked and ready to run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Image {
    /// The reference pinned to the manifest digest.
    pub reference: String,
    pub manifest_digest: String,
    /// The committed snapshot holding the whole root filesystem.
    pub chain_id: String,
    pub config: ImageConfig,
}

/// When to go to the registry (`imagePullPolicy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    /// Kubernetes' default: `Always` for `:latest` or no tag, otherwise `IfNotPresent`.
    pub fn from_spec(policy: Option<&str>, image: &str) -> Self {
        match policy {
            Some("Always") => PullPolicy::Always,
            Some("Never") => PullPolicy::Never,
            Some("IfNotPresent") => PullPolicy::IfNotPresent,
            _ => {
                let last = image.rsplit('/').next().unwrap_or(image);
                if image.contains('@') {
                    PullPolicy::IfNotPresent
                } else if !last.contains(':') || last.ends_with(":latest") {
                    PullPolicy::Always
                } else {
                    PullPolicy::IfNotPresent
                }
            }
        }
    }
}

/// The chain IDs of a layer stack: the first is the first diff ID, each next one the SHA-256 of
/// "PARENT CHILD" (the OCI image spec's definition).
pub fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut chain: Vec<String> = Vec::with_capacity(diff_ids.len());
    for diff_id in diff_ids {
        let next = match chain.last() {
            None => diff_id.clone(),
            Some(parent) => Digest::of(format!("{parent} {diff_id}").as_bytes()).to_string(),
        };
        chain.push(next);
    }
    chain
}

#[derive(Default, Serialize, Deserialize)]
struct Record {
    /// Image by manifest digest.
    images: HashMap<String, Image>,
    /// Manifest digest by the reference text a pod named.
    tags: HashMap<String, String>,
}

/// The node's images in containerd.
pub struct Images {
    channel: Arc<Channel>,
    snapshotter: String,
    record_path: PathBuf,
    record: Mutex<Record>,
    gates: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    max_bytes: u64,
}

fn is_code(error: &Error, code: u32) -> bool {
    matches!(error, Error::Grpc { code: c, .. } if *c == code)
}

impl Images {
    pub fn new(channel: Arc<Channel>, snapshotter: &str, record_path: PathBuf, max_bytes: u64) -> Self {
        let record = std::fs::read(&record_path).ok().and_then(|bytes| serde_json::from_slice(&bytes).ok()).unwrap_or_default();
        Images { channel, snapshotter: snapshotter.to_owned(), record_path, record: Mutex::new(record), gates: Mutex::new(HashMap::new()), max_bytes }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Record> {
        self.record.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn save(&self) {
        let bytes = serde_json::to_vec(&*self.lock()).unwrap_or_default();
        let partial = self.record_path.with_extension("partial");
        if std::fs::write(&partial, bytes).and_then(|_| std::fs::rename(&partial, &self.record_path)).is_err() {
            tracing::warn!(path = %self.record_path.display(), "saving the image record");
        }
    }

    /// The image a reference names, already on this node (for `IfNotPresent` and `Never`).
    pub async fn local(&self, reference: &str) -> Option<Image> {
        let image = {
            let record = self.lock();
            let digest = record.tags.get(reference)?;
            record.images.get(digest)?.clone()
        };
        self.unpacked(&image).await.then_some(image)
    }

    /// Makes `reference` (as a pod names it) ready to run, pulling with `client` as `policy` says.
    pub async fn ensure(&self, client: &RegistryClient, reference: &Reference, named: &str, policy: PullPolicy) -> Result<Image> {
        if policy != PullPolicy::Always
            && let Some(image) = self.local(named).await
        {
            return Ok(image);
        }
        if policy == PullPolicy::Never {
            return Err(Error::NeverPull(named.to_owned()));
        }
        // A reference pinned to a manifest unpacked here (the node resolved the tag already)
        // needs no second trip to the registry.
        let pinned = reference.digest.as_ref().and_then(|digest| self.lock().images.get(digest.as_str()).cloned());
        if let Some(image) = pinned
            && self.unpacked(&image).await
        {
            self.remember(named, &image);
            return Ok(image);
        }
        let (manifest_bytes, manifest, manifest_digest) = resolve(client, reference).await?;
        let gate = Arc::clone(self.gates.lock().unwrap_or_else(|p| p.into_inner()).entry(manifest_digest.to_string()).or_default());
        let _pulling = gate.lock().await;
        let known = self.lock().images.get(manifest_digest.as_str()).cloned();
        let image = match known {
            Some(image) if self.unpacked(&image).await => image,
            _ => self.pull(client, reference, &manifest_bytes, &manifest, &manifest_digest).await?,
        };
        self.remember(named, &image);
        Ok(image)
    }

    /// Records that `named` means `image`, saving the record when that is news.
    fn remember(&self, named: &str, image: &Image) {
        let changed = {
            let mut record = self.lock();
            let tag_changed = record.tags.insert(named.to_owned(), image.manifest_digest.clone()).as_ref() != Some(&image.manifest_digest);
            let image_changed = record.images.insert(image.manifest_digest.clone(), image.clone()).as_ref() != Some(image);
            tag_changed || image_changed
        };
        if changed {
            self.save();
        }
    }

    /// Whether the image's top snapshot is still in containerd (a wiped root loses it).
    async fn unpacked(&self, image: &Image) -> bool {
        let stat = proto::SnapshotKeyRequest { snapshotter: self.snapshotter.clone(), key: image.chain_id.clone() };
        self.channel.unary::<_, proto::StatSnapshotResponse>(SNAPSHOT_STAT, &stat, None).await.is_ok()
    }

    async fn pull(&self, client: &RegistryClient, reference: &Reference, manifest_bytes: &[u8], manifest: &Manifest, manifest_digest: &Digest) -> Result<Image> {
        let total: u64 = manifest.blobs().map(|d| d.size).sum();
        if total > self.max_bytes {
            return Err(Error::Image(format!("the image is {total} bytes, more than the node's limit of {}", self.max_bytes)));
        }
        let lease = format!("shoal.image.{}", manifest_digest.hex());
        let create = proto::CreateLeaseRequest { id: lease.clone(), labels: HashMap::new() };
        match self.channel.unary::<_, proto::Empty>(LEASE_CREATE, &create, None).await {
            Ok(_) => {}
            Err(error) if is_code(&error, ALREADY_EXISTS) => {}
            Err(error) => return Err(error),
        }
        let config_descriptor = manifest.config.as_ref().ok_or_else(|| Error::Image("the manifest has no config".into()))?;
        let config_digest = Digest::parse(&config_descriptor.digest).map_err(|e| Error::Image(e.to_string()))?;
        let config_bytes = client.get_blob(&reference.repository, &config_digest, self.max_bytes).await.map_err(|e| Error::Pull(e.to_string()))?;
        let config: ConfigBlob = serde_json::from_slice(&config_bytes).map_err(|e| Error::Image(format!("the image config: {e}")))?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(Error::Image(format!("the config lists {} layers, the manifest {}", config.rootfs.diff_ids.len(), manifest.layers.len())));
        }
        self.write_content(&lease, config_descriptor, bytes::Bytes::copy_from_slice(&config_bytes)).await?;
        let manifest_descriptor = Descriptor { media_type: manifest.media_type.clone().unwrap_or_default(), digest: manifest_digest.to_string(), size: manifest_bytes.len() as u64, annotations: None, platform: None };
        self.write_content(&lease, &manifest_descriptor, bytes::Bytes::copy_from_slice(manifest_bytes)).await?;
        for layer in &manifest.layers {
            if self.has_content(&layer.digest).await? {
                self.hold(&lease, &layer.digest, "content").await?;
                continue;
            }
            let digest = Digest::parse(&layer.digest).map_err(|e| Error::Image(e.to_string()))?;
            let bytes = client.get_blob(&reference.repository, &digest, self.max_bytes).await.map_err(|e| Error::Pull(e.to_string()))?;
            self.write_content(&lease, layer, bytes::Bytes::from(bytes)).await?;
        }
        let chain = chain_ids(&config.rootfs.diff_ids);
        let mut parent = String::new();
        for ((layer, chain_id), diff_id) in manifest.layers.iter().zip(&chain).zip(&config.rootfs.diff_ids) {
            self.unpack(&lease, layer, &parent, chain_id, diff_id).await?;
            parent = chain_id.clone();
        }
        Ok(Image {
            reference: reference.with_digest(manifest_digest.clone()).to_string(),
            manifest_digest: manifest_digest.to_string(),
            chain_id: parent,
            config: config.config.unwrap_or_default(),
        })
    }

    async fn has_content(&self, digest: &str) -> Result<bool> {
        match self.channel.unary::<_, proto::InfoResponse>(CONTENT_INFO, &proto::InfoRequest { digest: digest.to_owned() }, None).await {
            Ok(_) => Ok(true),
            Err(error) if is_code(&error, NOT_FOUND) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Adds an existing object to the image's lease, so collecting another image keeps it.
    async fn hold(&self, lease: &str, id: &str, kind: &str) -> Result<()> {
        let request = proto::AddResourceRequest { id: lease.to_owned(), resource: Some(proto::LeaseResource { id: id.to_owned(), r#type: kind.to_owned() }) };
        self.channel.unary::<_, proto::Empty>(LEASE_ADD, &request, None).await.map(|_| ())
    }

    async fn write_content(&self, lease: &str, descriptor: &Descriptor, bytes: bytes::Bytes) -> Result<()> {
        let reference = format!("shoal-{}", descriptor.digest);
        let mut requests = Vec::new();
        let mut offset = 0usize;
        loop {
            let end = (offset + WRITE_CHUNK).min(bytes.len());
            let last = end == bytes.len();
            requests.push(proto::WriteContentRequest {
                action: if last { proto::WRITE_ACTION_COMMIT } else { proto::WRITE_ACTION_WRITE },
                r#ref: reference.clone(),
                total: bytes.len() as i64,
                expected: descriptor.digest.clone(),
                offset: offset as i64,
                data: bytes.slice(offset..end),
            });
            offset = end;
            if last {
                break;
            }
        }
        match self.channel.client_stream::<_, proto::WriteContentResponse>(CONTENT_WRITE, requests, Some(lease)).await {
            Ok(response) if response.digest.is_empty() || response.digest == descriptor.digest => Ok(()),
            Ok(response) => Err(Error::Image(format!("containerd committed {} for {}", response.digest, descriptor.digest))),
            Err(error) if is_code(&error, ALREADY_EXISTS) => self.hold(lease, &descriptor.digest, "content").await,
            Err(error) => Err(error),
        }
    }

    /// Applies one layer on top of `parent` and commits it as `chain_id` (or holds the existing one).
    async fn unpack(&self, lease: &str, layer: &Descriptor, parent: &str, chain_id: &str, diff_id: &str) -> Result<()> {
        let snapshot_type = format!("snapshots/{}", self.snapshotter);
        let stat = proto::SnapshotKeyRequest { snapshotter: self.snapshotter.clone(), key: chain_id.to_owned() };
        if self.channel.unary::<_, proto::StatSnapshotResponse>(SNAPSHOT_STAT, &stat, None).await.is_ok() {
            return self.hold(lease, chain_id, &snapshot_type).await;
        }
        let key = format!("extract-{}-{}", rand::random::<u32>(), chain_id);
        let prepare = proto::PrepareSnapshotRequest { snapshotter: self.snapshotter.clone(), key: key.clone(), parent: parent.to_owned(), labels: HashMap::new() };
        let mounts = self.channel.unary::<_, proto::MountsResponse>(SNAPSHOT_PREPARE, &prepare, Some(lease)).await?.mounts;
        let apply = proto::ApplyRequest {
            diff: Some(proto::Descriptor { media_type: layer.media_type.clone(), digest: layer.digest.clone(), size: layer.size as i64, annotations: HashMap::new() }),
            mounts,
        };
        let outcome = self.channel.unary::<_, proto::ApplyResponse>(DIFF_APPLY, &apply, Some(lease)).await;
        let applied = match outcome {
            Ok(response) => response.applied.map(|d| d.digest).unwrap_or_default(),
            Err(error) => {
                self.remove_snapshot(&key).await;
                return Err(error);
            }
        };
        if applied != diff_id {
            self.remove_snapshot(&key).await;
            return Err(Error::Image(format!("layer {} unpacked to {applied}, but the config says {diff_id}", layer.digest)));
        }
        let commit = proto::CommitSnapshotRequest { snapshotter: self.snapshotter.clone(), name: chain_id.to_owned(), key: key.clone(), labels: HashMap::new() };
        match self.channel.unary::<_, proto::Empty>(SNAPSHOT_COMMIT, &commit, Some(lease)).await {
            Ok(_) => Ok(()),
            Err(error) if is_code(&error, ALREADY_EXISTS) => {
                self.remove_snapshot(&key).await;
                self.hold(lease, chain_id, &snapshot_type).await
            }
            Err(error) => {
                self.remove_snapshot(&key).await;
                Err(error)
            }
        }
    }

    async fn remove_snapshot(&self, key: &str) {
        let request = proto::SnapshotKeyRequest { snapshotter: self.snapshotter.clone(), key: key.to_owned() };
        if let Err(error) = self.channel.unary::<_, proto::Empty>(SNAPSHOT_REMOVE, &request, None).await {
            tracing::debug!(%error, key, "removing a snapshot");
        }
    }
}

/// The image manifest for linux/amd64 a reference names: (bytes, manifest, digest).
async fn resolve(client: &RegistryClient, reference: &Reference) -> Result<(Vec<u8>, Manifest, Digest)> {
    let pull = |e: shoal_oci::Error| Error::Pull(e.to_string());
    let (bytes, _, digest) = client.get_manifest(&reference.repository, &reference.manifest_reference()).await.map_err(pull)?;
    let manifest = Manifest::parse(&bytes).map_err(|e| Error::Image(e.to_string()))?;
    if !manifest.is_index() {
        return Ok((bytes, manifest, digest));
    }
    let chosen = manifest
        .manifests
        .iter()
        .find(|m| m.platform.as_ref().is_some_and(|p| p["os"] == "linux" && p["architecture"] == std::env::consts::ARCH.replace("x86_64", "amd64").replace("aarch64", "arm64")))
        .cloned()
        .ok_or_else(|| Error::Image(format!("the index has no manifest for linux/{}", std::env::consts::ARCH)))?;
    let (bytes, _, digest) = client.get_manifest(&reference.repository, &chosen.digest).await.map_err(pull)?;
    let manifest = Manifest::parse(&bytes).map_err(|e| Error::Image(e.to_string()))?;
    Ok((bytes, manifest, digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_ids_follow_the_image_spec() {
        let a = "sha256:aaaa".to_owned();
        let b = "sha256:bbbb".to_owned();
        let chain = chain_ids(&[a.clone(), b.clone()]);
        assert_eq!(chain[0], a);
        assert_eq!(chain[1], Digest::of(b"sha256:aaaa sha256:bbbb").to_string());
        assert!(chain_ids(&[]).is_empty());
    }

    #[test]
    fn pull_policy_defaults_as_kubernetes_does() {
        assert_eq!(PullPolicy::from_spec(None, "busybox"), PullPolicy::Always);
        assert_eq!(PullPolicy::from_spec(None, "reg:5000/busybox:latest"), PullPolicy::Always);
        assert_eq!(PullPolicy::from_spec(None, "reg:5000/busybox:1.36"), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::from_spec(None, "reg:5000/busybox"), PullPolicy::Always);
        assert_eq!(PullPolicy::from_spec(None, "reg/busybox@sha256:ab"), PullPolicy::IfNotPresent);
        assert_eq!(PullPolicy::from_spec(Some("Never"), "busybox:1"), PullPolicy::Never);
    }

    #[test]
    fn image_configs_read_docker_field_names() {
        let blob: ConfigBlob = serde_json::from_str(r#"{"config": {"Cmd": ["httpd"], "Env": ["PATH=/bin"], "WorkingDir": "/w"}, "rootfs": {"type": "layers", "diff_ids": ["sha256:1"]}}"#).expect("parses");
        let config = blob.config.expect("has a config");
        assert_eq!(config.cmd, Some(vec!["httpd".to_owned()]));
        assert_eq!(config.working_dir.as_deref(), Some("/w"));
        assert_eq!(blob.rootfs.diff_ids, ["sha256:1"]);
    }
}

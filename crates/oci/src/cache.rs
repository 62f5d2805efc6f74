//! The node's artifact cache: content-addressed files under one directory, verified against their
//! digest when written and when first used after a restart. Concurrent requests for one digest
//! share one download, and unused entries are evicted least-recently-used beyond the budget.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::client::RegistryClient;
use crate::media::{ArtifactKind, Manifest, classify};
use crate::{Digest, Error, Reference, Result};

struct Entry {
    size: u64,
    last_used: u64,
    users: usize,
    verified: bool,
}

#[derive(Default)]
struct State {
    entries: HashMap<Digest, Entry>,
    total: u64,
    clock: u64,
}

/// A bounded, content-addressed cache of blobs.
pub struct ArtifactCache {
    root: PathBuf,
    max_bytes: u64,
    max_artifact_bytes: u64,
    state: Mutex<State>,
    downloads: Mutex<HashMap<Digest, Arc<tokio::sync::Mutex<()>>>>,
    download_count: AtomicU64,
}

/// A blob held in the cache; it is not evicted while a handle exists.
pub struct CachedBlob {
    pub digest: Digest,
    pub path: PathBuf,
    pub size: u64,
    cache: Arc<ArtifactCache>,
}

impl Drop for CachedBlob {
    fn drop(&mut self) {
        let mut state = self.cache.lock();
        if let Some(entry) = state.entries.get_mut(&self.digest) {
            entry.users = entry.users.saturating_sub(1);
        }
        drop(state);
        self.cache.evict();
    }
}

/// A pulled artifact: its kind and the blobs it needs, pinned by digest.
pub struct PulledArtifact {
    pub reference: Reference,
    pub manifest_digest: Digest,
    pub kind: ArtifactKind,
    pub blobs: Vec<CachedBlob>,
}

impl ArtifactCache {
    /// Opens the cache in `root`, taking stock of what an earlier run left there.
    pub fn open(root: &Path, max_bytes: u64, max_artifact_bytes: u64) -> Result<Arc<Self>> {
        let io = |source| Error::Io { path: root.to_owned(), source };
        std::fs::create_dir_all(root.join("sha256")).map_err(io)?;
        let mut state = State::default();
        for entry in std::fs::read_dir(root.join("sha256")).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let Ok(digest) = Digest::parse(&format!("sha256:{name}")) else {
                // Leftovers of interrupted downloads.
                let _ = std::fs::remove_file(entry.path());
                continue;
            };
            let size = entry.metadata().map_err(io)?.len();
            state.total += size;
            state.entries.insert(digest, Entry { size, last_used: 0, users: 0, verified: false });
        }
        let cache = Arc::new(Self {
            root: root.to_owned(),
            max_bytes,
            max_artifact_bytes,
            state: Mutex::new(state),
            downloads: Mutex::new(HashMap::new()),
            download_count: AtomicU64::new(0),
        });
        cache.evict();
        Ok(cache)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn path_of(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    /// How many blobs were downloaded (not served from the cache) since opening.
    pub fn downloads(&self) -> u64 {
        self.download_count.load(Ordering::Relaxed)
    }

    /// Bytes held now.
    pub fn total_bytes(&self) -> u64 {
        self.lock().total
    }

    pub fn contains(&self, digest: &Digest) -> bool {
        self.lock().entries.contains_key(digest)
    }

    /// Takes a handle on a cached digest, verifying it if this run has not yet.
    fn take(self: &Arc<Self>, digest: &Digest) -> Option<CachedBlob> {
        let path = self.path_of(digest);
        let (size, verified) = {
            let state = self.lock();
            let entry = state.entries.get(digest)?;
            (entry.size, entry.verified)
        };
        if !verified {
            let intact = std::fs::read(&path).map(|bytes| digest.verify(&bytes).is_ok()).unwrap_or(false);
            if !intact {
                tracing::warn!(%digest, "cached blob is corrupt; fetching it again");
                let _ = std::fs::remove_file(&path);
                let mut state = self.lock();
                if let Some(entry) = state.entries.remove(digest) {
                    state.total -= entry.size;
                }
                return None;
            }
        }
        let mut state = self.lock();
        state.clock += 1;
        let clock = state.clock;
        let entry = state.entries.get_mut(digest)?;
        entry.users += 1;
        entry.last_used = clock;
        entry.verified = true;
        Some(CachedBlob { digest: digest.clone(), path, size, cache: Arc::clone(self) })
    }

    /// The blob `digest` of `repository`, from the cache or downloaded once (concurrent callers
    /// for the same digest wait for the one download).
    pub async fn blob(self: &Arc<Self>, client: &RegistryClient, repository: &str, digest: &Digest) -> Result<CachedBlob> {
        if let Some(blob) = self.take(digest) {
            return Ok(blob);
        }
        let gate = {
            let mut downloads = self.downloads.lock().unwrap_or_else(|p| p.into_inner());
            Arc::clone(downloads.entry(digest.clone()).or_default())
        };
        let _guard = gate.lock().await;
        if let Some(blob) = self.take(digest) {
            return Ok(blob);
        }
        let bytes = client.get_blob(repository, digest, self.max_artifact_bytes).await?;
        self.download_count.fetch_add(1, Ordering::Relaxed);
        let path = self.path_of(digest);
        let partial = path.with_extension("partial");
        let io = |source| Error::Io { path: path.clone(), source };
        tokio::fs::write(&partial, &bytes).await.map_err(io)?;
        tokio::fs::rename(&partial, &path).await.map_err(io)?;
        {
            let mut state = self.lock();
            state.total += bytes.len() as u64;
            state.entries.insert(digest.clone(), Entry { size: bytes.len() as u64, last_used: 0, users: 0, verified: true });
        }
        self.downloads.lock().unwrap_or_else(|p| p.into_inner()).remove(digest);
        let blob = self.take(digest).ok_or_else(|| Error::Io { path: path.clone(), source: std::io::Error::other("the blob vanished after download") })?;
        self.evict();
        Ok(blob)
    }

    /// Resolves `reference` and caches the blobs a runtime needs (the Wasm layers, or nothing
    /// for a container image, which its runtime pulls itself).
    pub async fn pull(self: &Arc<Self>, client: &RegistryClient, reference: &Reference) -> Result<PulledArtifact> {
        let (bytes, _, manifest_digest) = client.get_manifest(&reference.repository, &reference.manifest_reference()).await?;
        let mut manifest = Manifest::parse(&bytes)?;
        let mut manifest_digest = manifest_digest;
        if manifest.is_index() {
            // Prefer a Wasm entry, then linux/amd64.
            let chosen = manifest
                .manifests
                .iter()
                .find(|m| m.platform.as_ref().is_some_and(|p| p["architecture"] == "wasm"))
                .or_else(|| manifest.manifests.iter().find(|m| m.platform.as_ref().is_some_and(|p| p["os"] == "linux" && p["architecture"] == "amd64")))
                .or_else(|| manifest.manifests.first())
                .cloned()
                .ok_or_else(|| Error::UnsupportedManifest("an empty index".into()))?;
            let (bytes, _, digest) = client.get_manifest(&reference.repository, &chosen.digest).await?;
            manifest = Manifest::parse(&bytes)?;
            manifest_digest = digest;
        }
        let total: u64 = manifest.blobs().map(|d| d.size).sum();
        if total > self.max_artifact_bytes {
            return Err(Error::TooLarge(total, self.max_artifact_bytes));
        }
        let kind = classify(&manifest)?;
        let layers = match &kind {
            ArtifactKind::Wasm { layer, .. } => vec![layer.clone()],
            ArtifactKind::SpinApp { components } => components.clone(),
            ArtifactKind::Container => Vec::new(),
        };
        let mut blobs = Vec::new();
        for layer in layers {
            let digest = Digest::parse(&layer.digest)?;
            blobs.push(self.blob(client, &reference.repository, &digest).await?);
        }
        Ok(PulledArtifact { reference: reference.with_digest(manifest_digest.clone()), manifest_digest, kind, blobs })
    }

    /// Evicts least-recently-used unused blobs until the cache fits its budget.
    fn evict(&self) {
        let mut state = self.lock();
        while state.total > self.max_bytes {
            let victim = state.entries.iter().filter(|(_, e)| e.users == 0).min_by_key(|(_, e)| e.last_used).map(|(d, e)| (d.clone(), e.size));
            let Some((digest, size)) = victim else { break };
            state.entries.remove(&digest);
            state.total -= size;
            let _ = std::fs::remove_file(self.path_of(&digest));
        }
    }
}

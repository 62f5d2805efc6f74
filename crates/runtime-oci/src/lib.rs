//! shoal-runtime-oci: OCI containers for the node agent, through containerd's gRPC API in a
//! containerd namespace of Shoal's own. The node hands it resolved specs; it knows nothing of
//! the API server.
//!
//! - [`daemon`]: the node's containerd, or a private one the agent supervises.
//! - [`grpc`] and [`proto`]: a small gRPC client and the containerd messages it carries.
//! - [`image`]: pulls into the content store and unpacks into snapshots.
//! - [`container`]: runtime specs, containers, tasks, exec.
//! - [`network`]: pod network namespaces on the node's bridge.

pub mod container;
pub mod daemon;
pub mod grpc;
pub mod image;
pub mod network;
pub mod proto;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

pub use container::{BindMount, ContainerSpec, Containers, Exit, Running, cgroup_usage};
pub use daemon::Source;
pub use image::{Image, Images, PullPolicy};
pub use network::{Network, PodNetwork, PodRange};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to containerd at {socket}: {source}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("containerd {method}: {message} (gRPC code {code})")]
    Grpc { method: String, code: u32, message: String },
    #[error("containerd {method}: an unreadable response: {detail}")]
    Decode { method: String, detail: String },
    #[error("containerd: {0}")]
    Daemon(String),
    #[error("pulling the image: {0}")]
    Pull(String),
    #[error("the image: {0}")]
    Image(String),
    #[error("image {0} is not on this node and its imagePullPolicy is Never")]
    NeverPull(String),
    #[error("the container spec: {0}")]
    Spec(String),
    #[error("the pod network: {0}")]
    Network(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The containerd namespace holding everything Shoal creates.
pub const NAMESPACE: &str = "shoal";
/// Where the node's own containerd listens, by default.
pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";

/// How to set up the container runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// The node's containerd socket (used when it exists).
    pub socket: PathBuf,
    pub data_dir: PathBuf,
    /// The node's pod range.
    pub pod_range: PodRange,
    /// The largest image (all blobs) a pull may bring.
    pub max_image_bytes: u64,
}

/// The node's container runtime.
pub struct ContainerRuntime {
    pub source: Source,
    pub version: String,
    pub snapshotter: String,
    pub images: Images,
    pub containers: Containers,
    pub network: Network,
}

impl ContainerRuntime {
    /// Whether this machine has a containerd to use: the node's socket, or the binaries to start
    /// a private one.
    pub fn available(config: &RuntimeConfig) -> bool {
        config.socket.exists() || ["containerd", "runc", "containerd-shim-runc-v2"].iter().all(|b| daemon::find_binary(b).is_some())
    }

    /// Finds or starts containerd and sets up the pod network. `Ok(None)`: no containerd here.
    pub async fn start(config: &RuntimeConfig, shutdown: &CancellationToken) -> Result<Option<Arc<Self>>> {
        let Some((source, version)) = daemon::locate(&config.socket, &config.data_dir, shutdown).await? else { return Ok(None) };
        let socket = match &source {
            Source::Node(socket) | Source::Private(socket) => socket.clone(),
        };
        let channel = Arc::new(grpc::Channel::new(&socket, NAMESPACE));
        let snapshotter = pick_snapshotter(&channel).await;
        let range = config.pod_range;
        let network = Network::start(&config.data_dir, range)?;
        let record = config.data_dir.join("containerd-images.json");
        tracing::info!(?source, %version, %snapshotter, pod_range = %range, "container runtime ready");
        Ok(Some(Arc::new(ContainerRuntime {
            source,
            version,
            images: Images::new(Arc::clone(&channel), &snapshotter, record, config.max_image_bytes),
            containers: Containers::new(Arc::clone(&channel), &snapshotter),
            snapshotter,
            network,
        })))
    }

    /// Where a container's output file goes (the shim appends to it; the node follows it).
    pub fn log_path(data_dir: &Path, id: &str) -> PathBuf {
        data_dir.join("containers").join(format!("{id}.log"))
    }
}

/// overlayfs when containerd loaded it (it skips it on filesystems that cannot hold it), else
/// the native snapshotter, which copies.
async fn pick_snapshotter(channel: &grpc::Channel) -> String {
    let probe = proto::SnapshotKeyRequest { snapshotter: "overlayfs".into(), key: "shoal-probe-absent".into() };
    match channel.unary::<_, proto::StatSnapshotResponse>("/containerd.services.snapshots.v1.Snapshots/Stat", &probe, None).await {
        Err(Error::Grpc { code, .. }) if code == grpc::NOT_FOUND => "overlayfs".into(),
        Ok(_) => "overlayfs".into(),
        Err(error) => {
            tracing::info!(%error, "overlayfs is not available; using the native snapshotter");
            "native".into()
        }
    }
}

/// Follows a container's output file from `offset`, calling `line` for each complete line,
/// until `done` is cancelled and the file has been read to its end. Returns the offset reached.
pub async fn follow_output(path: PathBuf, mut offset: u64, done: CancellationToken, mut line: impl FnMut(&str)) -> u64 {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let mut pending: Vec<u8> = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let finishing = done.is_cancelled();
        if let Ok(mut file) = tokio::fs::File::open(&path).await
            && file.seek(std::io::SeekFrom::Start(offset)).await.is_ok()
        {
            while let Ok(read) = file.read(&mut buffer).await {
                if read == 0 {
                    break;
                }
                offset += read as u64;
                pending.extend_from_slice(&buffer[..read]);
                while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                    let text: Vec<u8> = pending.drain(..=end).collect();
                    line(String::from_utf8_lossy(&text[..text.len() - 1]).trim_end_matches('\r'));
                }
            }
        }
        if finishing {
            if !pending.is_empty() {
                line(&String::from_utf8_lossy(&pending));
            }
            return offset;
        }
        tokio::select! {
            _ = done.cancelled() => {}
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn output_is_followed_line_by_line_to_the_end() {
        let directory = tempfile::tempdir().expect("a temp dir");
        let path = directory.path().join("out.log");
        std::fs::write(&path, "one\ntwo\npart").expect("written");
        let done = CancellationToken::new();
        let lines = Arc::new(std::sync::Mutex::new(Vec::new()));
        let collected = Arc::clone(&lines);
        let follower = tokio::spawn(follow_output(path.clone(), 0, done.clone(), move |l| collected.lock().expect("lock").push(l.to_owned())));
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new().append(true).open(&path).expect("open");
            file.write_all(b"ial\nthree\n").expect("append");
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        done.cancel();
        let offset = follower.await.expect("joined");
        assert_eq!(offset, 22);
        assert_eq!(*lines.lock().expect("lock"), ["one", "two", "partial", "three"]);
    }
}

//! Finding containerd: the node's own when its socket exists; otherwise, if the `containerd`
//! binary is installed, a private one with its root, state and socket under the agent's data
//! dir, started and restarted by the agent (as k3s does). A private containerd left running by an
//! earlier agent process is reused rather than started twice on the same root.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::grpc::Channel;
use crate::proto::{Empty, VersionResponse};
use crate::{Error, Result};

const VERSION: &str = "/containerd.services.version.v1.Version/Version";
/// How long a private containerd may take to answer after it starts.
const START_WAIT: Duration = Duration::from_secs(20);
/// The longest Unix socket path Linux accepts, less a margin for the `.ttrpc` suffix.
const MAX_SOCKET_PATH: usize = 100;

/// Which containerd the node uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// The node's containerd, at this socket.
    Node(PathBuf),
    /// A private containerd the agent supervises.
    Private(PathBuf),
}

/// Finds `name` on `PATH`.
pub fn find_binary(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(name)).find(|candidate| candidate.is_file())
}

async fn answers(socket: &Path) -> Option<String> {
    let channel = Channel::new(socket, "default");
    let version = tokio::time::timeout(Duration::from_secs(3), channel.unary::<_, VersionResponse>(VERSION, &Empty {}, None)).await.ok()?.ok()?;
    Some(version.version)
}

/// The private containerd's socket: under the data dir when the path is short enough, else
/// under `/run/shoal/` by a hash of the data dir.
pub fn private_socket(data_dir: &Path) -> PathBuf {
    let preferred = data_dir.join("containerd").join("containerd.sock");
    if preferred.as_os_str().len() <= MAX_SOCKET_PATH {
        return preferred;
    }
    let digest = shoal_oci::digest::Digest::of(data_dir.as_os_str().as_encoded_bytes());
    PathBuf::from("/run/shoal").join(format!("{}.sock", &digest.hex()[..16]))
}

fn private_config(data_dir: &Path, socket: &Path) -> String {
    let root = data_dir.join("containerd").join("root");
    let state = data_dir.join("containerd").join("state");
    format!(
        "version = 2\nroot = {root:?}\nstate = {state:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n[grpc]\n  address = {socket:?}\n\n[ttrpc]\n  address = {ttrpc:?}\n",
        root = root.display().to_string(),
        state = state.display().to_string(),
        socket = socket.display().to_string(),
        ttrpc = format!("{}.ttrpc", socket.display()),
    )
}

/// Connects to the node's containerd at `node_socket`, or starts a private one. `Ok(None)`:
/// there is no containerd on this machine (the node runs Wasm only).
pub async fn locate(node_socket: &Path, data_dir: &Path, shutdown: &CancellationToken) -> Result<Option<(Source, String)>> {
    if node_socket.exists() {
        return match answers(node_socket).await {
            Some(version) => Ok(Some((Source::Node(node_socket.to_owned()), version))),
            None => Err(Error::Daemon(format!("{} exists but containerd does not answer on it", node_socket.display()))),
        };
    }
    let Some(binary) = find_binary("containerd") else { return Ok(None) };
    if find_binary("runc").is_none() || find_binary("containerd-shim-runc-v2").is_none() {
        tracing::warn!("containerd is installed but runc or containerd-shim-runc-v2 is not: this node runs no containers");
        return Ok(None);
    }
    let socket = private_socket(data_dir);
    if let Some(version) = answers(&socket).await {
        tracing::info!(socket = %socket.display(), "reusing the private containerd an earlier agent started");
        supervise(binary, data_dir.to_owned(), socket.clone(), shutdown.clone(), true);
        return Ok(Some((Source::Private(socket), version)));
    }
    let directory = data_dir.join("containerd");
    std::fs::create_dir_all(&directory).map_err(|e| Error::Io { path: directory.clone(), source: e })?;
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::Io { path: parent.to_owned(), source: e })?;
    }
    let config = directory.join("config.toml");
    std::fs::write(&config, private_config(data_dir, &socket)).map_err(|e| Error::Io { path: config.clone(), source: e })?;
    supervise(binary, data_dir.to_owned(), socket.clone(), shutdown.clone(), false);
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        if let Some(version) = answers(&socket).await {
            return Ok(Some((Source::Private(socket), version)));
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(directory.join("containerd.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            return Err(Error::Daemon(format!("the private containerd did not answer on {} within {START_WAIT:?}: {}", socket.display(), tail.join(" | "))));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Keeps the private containerd running until shutdown, then stops it (its shims, and so the
/// containers, keep running, as they do when the node's containerd restarts).
fn supervise(binary: PathBuf, data_dir: PathBuf, socket: PathBuf, shutdown: CancellationToken, adopted: bool) {
    tokio::spawn(async move {
        let directory = data_dir.join("containerd");
        let config = directory.join("config.toml");
        let mut first = !adopted;
        loop {
            if !first {
                // An adopted daemon, or one that exited: wait while it still answers.
                while answers(&socket).await.is_some() {
                    tokio::select! {
                        _ = shutdown.cancelled() => return stop_adopted(&directory).await,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
                if shutdown.is_cancelled() {
                    return;
                }
            }
            first = false;
            let log = std::fs::OpenOptions::new().create(true).append(true).open(directory.join("containerd.log"));
            let mut command = tokio::process::Command::new(&binary);
            command.arg("--config").arg(&config);
            if let Ok(log) = log
                && let Ok(copy) = log.try_clone()
            {
                command.stdout(log).stderr(copy);
            }
            // Its own process group: a terminal's Ctrl-C reaches the agent, which stops it.
            command.process_group(0).stdin(std::process::Stdio::null());
            let mut child = match command.spawn() {
                Ok(child) => child,
                Err(error) => {
                    tracing::error!(%error, binary = %binary.display(), "starting the private containerd");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                    }
                }
            };
            if let Some(pid) = child.id() {
                let _ = std::fs::write(directory.join("containerd.pid"), pid.to_string());
            }
            tokio::select! {
                status = child.wait() => {
                    tracing::warn!(?status, "the private containerd exited; restarting it");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                _ = shutdown.cancelled() => {
                    terminate(&mut child).await;
                    return;
                }
            }
        }
    });
}

async fn terminate(child: &mut tokio::process::Child) {
    if let Some(pid) = child.id() {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGTERM);
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
        let _ = child.kill().await;
    }
}

async fn stop_adopted(directory: &Path) {
    let Some(pid) = std::fs::read_to_string(directory.join("containerd.pid")).ok().and_then(|p| p.trim().parse::<i32>().ok()) else { return };
    let pid = nix::unistd::Pid::from_raw(pid);
    if nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).is_err() {
        return;
    }
    for _ in 0..100 {
        if nix::sys::signal::kill(pid, None).is_err() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_data_dirs_put_the_socket_under_run() {
        assert_eq!(private_socket(Path::new("/var/lib/shoal")), PathBuf::from("/var/lib/shoal/containerd/containerd.sock"));
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(120)));
        let socket = private_socket(&long);
        assert!(socket.starts_with("/run/shoal"));
        assert!(socket.as_os_str().len() < MAX_SOCKET_PATH);
    }

    #[test]
    fn the_private_config_names_its_own_root_state_and_socket() {
        let config = private_config(Path::new("/data"), Path::new("/data/containerd/containerd.sock"));
        assert!(config.contains("root = \"/data/containerd/root\""));
        assert!(config.contains("state = \"/data/containerd/state\""));
        assert!(config.contains("address = \"/data/containerd/containerd.sock\""));
        assert!(config.contains("io.containerd.grpc.v1.cri"));
    }
}

//! Containers: the OCI runtime spec built from a resolved container spec (a pure function, tested
//! below), and the containerd calls that run it: a container record, an active snapshot on the
//! image's chain, a task whose output goes to a file, wait, signals, exec, and removal.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use crate::grpc::{Channel, NOT_FOUND};
use crate::image::Image;
use crate::proto;
use crate::{Error, Result};

const CONTAINER_CREATE: &str = "/containerd.services.containers.v1.Containers/Create";
const CONTAINER_DELETE: &str = "/containerd.services.containers.v1.Containers/Delete";
const CONTAINER_LIST: &str = "/containerd.services.containers.v1.Containers/List";
const SNAPSHOT_PREPARE: &str = "/containerd.services.snapshots.v1.Snapshots/Prepare";
const SNAPSHOT_REMOVE: &str = "/containerd.services.snapshots.v1.Snapshots/Remove";
const TASK_CREATE: &str = "/containerd.services.tasks.v1.Tasks/Create";
const TASK_START: &str = "/containerd.services.tasks.v1.Tasks/Start";
const TASK_GET: &str = "/containerd.services.tasks.v1.Tasks/Get";
const TASK_WAIT: &str = "/containerd.services.tasks.v1.Tasks/Wait";
const TASK_KILL: &str = "/containerd.services.tasks.v1.Tasks/Kill";
const TASK_DELETE: &str = "/containerd.services.tasks.v1.Tasks/Delete";
const TASK_EXEC: &str = "/containerd.services.tasks.v1.Tasks/Exec";
const TASK_DELETE_PROCESS: &str = "/containerd.services.tasks.v1.Tasks/DeleteProcess";
const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";
const PROCESS_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Process";
const RUNTIME: &str = "io.containerd.runc.v2";
/// The label on every container Shoal creates, naming the pod it belongs to.
pub const POD_LABEL: &str = "shoal.dev/pod-uid";
const SIGTERM: u32 = 15;
const SIGKILL: u32 = 9;

/// Docker's default capability set, which Kubernetes runtimes also grant by default.
const DEFAULT_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

const ALL_CAPABILITIES: &[&str] = &[
    "CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH", "CAP_FOWNER", "CAP_FSETID", "CAP_KILL", "CAP_SETGID", "CAP_SETUID", "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE", "CAP_NET_BIND_SERVICE", "CAP_NET_BROADCAST", "CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_IPC_LOCK", "CAP_IPC_OWNER",
    "CAP_SYS_MODULE", "CAP_SYS_RAWIO", "CAP_SYS_CHROOT", "CAP_SYS_PTRACE", "CAP_SYS_PACCT", "CAP_SYS_ADMIN", "CAP_SYS_BOOT", "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE", "CAP_SYS_TIME", "CAP_SYS_TTY_CONFIG", "CAP_MKNOD", "CAP_LEASE", "CAP_AUDIT_WRITE", "CAP_AUDIT_CONTROL", "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE", "CAP_MAC_ADMIN", "CAP_SYSLOG", "CAP_WAKE_ALARM", "CAP_BLOCK_SUSPEND", "CAP_AUDIT_READ",
];

/// A host directory or file mounted into the container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindMount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// Everything the runtime needs to run one container, resolved by the node from the pod spec.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ContainerSpec {
    /// containerd's id for this run of the container.
    pub id: String,
    pub pod_uid: String,
    pub name: String,
    /// Kubernetes `command` and `args` (empty: the image's entrypoint and cmd).
    pub command: Vec<String>,
    pub args: Vec<String>,
    pub working_dir: Option<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<BindMount>,
    pub hostname: String,
    /// `/run/netns/…` of the pod's network namespace.
    pub network_namespace: Option<PathBuf>,
    pub memory_limit_bytes: Option<u64>,
    pub cpu_millicores: Option<u64>,
    pub run_as_user: Option<u32>,
    pub run_as_group: Option<u32>,
    pub read_only_root: bool,
    pub privileged: bool,
    pub allow_privilege_escalation: bool,
    pub capabilities_add: Vec<String>,
    pub capabilities_drop: Vec<String>,
    /// Where the container's stdout and stderr go.
    pub log_path: PathBuf,
}

impl ContainerSpec {
    /// The cgroup of this container (cgroup v1 and v2 alike): `/shoal/POD/CONTAINER`.
    pub fn cgroup(&self) -> String {
        format!("/shoal/{}/{}", self.pod_uid, self.name)
    }
}

/// The process arguments by Kubernetes' rules: `command` replaces the image's entrypoint (and
/// drops its cmd); `args` replaces the cmd.
pub fn process_args(spec: &ContainerSpec, image: &Image) -> Vec<String> {
    let entrypoint = image.config.entrypoint.clone().unwrap_or_default();
    let cmd = image.config.cmd.clone().unwrap_or_default();
    match (spec.command.is_empty(), spec.args.is_empty()) {
        (false, _) => spec.command.iter().chain(&spec.args).cloned().collect(),
        (true, false) => entrypoint.into_iter().chain(spec.args.iter().cloned()).collect(),
        (true, true) => entrypoint.into_iter().chain(cmd).collect(),
    }
}

fn capability_name(name: &str) -> String {
    let upper = name.to_ascii_uppercase();
    if upper.starts_with("CAP_") { upper } else { format!("CAP_{upper}") }
}

/// The effective capability set: the defaults (or all, privileged), plus `add`, less `drop`.
pub fn capabilities(spec: &ContainerSpec) -> Vec<String> {
    if spec.privileged {
        return ALL_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
    }
    let drop_all = spec.capabilities_drop.iter().any(|c| c.eq_ignore_ascii_case("ALL"));
    let mut set: Vec<String> = if drop_all { Vec::new() } else { DEFAULT_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect() };
    for add in &spec.capabilities_add {
        if add.eq_ignore_ascii_case("ALL") {
            set = ALL_CAPABILITIES.iter().map(|c| (*c).to_owned()).collect();
            continue;
        }
        let name = capability_name(add);
        if !set.contains(&name) {
            set.push(name);
        }
    }
    let dropped: Vec<String> = spec.capabilities_drop.iter().map(|c| capability_name(c)).collect();
    set.retain(|c| !dropped.contains(c));
    set
}

fn user_of(spec: &ContainerSpec, image: &Image) -> (u32, u32) {
    let (image_uid, image_gid) = match image.config.user.as_deref().unwrap_or_default().split_once(':') {
        Some((uid, gid)) => (uid.parse().unwrap_or(0), gid.parse().unwrap_or(0)),
        None => (image.config.user.as_deref().unwrap_or_default().parse().unwrap_or(0), 0),
    };
    (spec.run_as_user.unwrap_or(image_uid), spec.run_as_group.unwrap_or(image_gid))
}

fn environment(spec: &ContainerSpec, image: &Image) -> Vec<String> {
    let mut env: Vec<(String, String)> = image.config.env.clone().unwrap_or_default().iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    if !env.iter().any(|(k, _)| k == "PATH") {
        env.insert(0, ("PATH".into(), "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()));
    }
    for (key, value) in &spec.env {
        env.retain(|(k, _)| k != key);
        env.push((key.clone(), value.clone()));
    }
    env.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// The process part of the runtime spec (also what exec runs, with other args).
fn process(spec: &ContainerSpec, image: &Image, args: Vec<String>) -> Value {
    let (uid, gid) = user_of(spec, image);
    let capabilities = capabilities(spec);
    json!({
        "terminal": false,
        "user": {"uid": uid, "gid": gid},
        "args": args,
        "env": environment(spec, image),
        "cwd": spec.working_dir.clone().or_else(|| image.config.working_dir.clone()).filter(|w| !w.is_empty()).unwrap_or_else(|| "/".into()),
        "capabilities": {"bounding": capabilities, "effective": capabilities, "permitted": capabilities},
        "noNewPrivileges": !spec.allow_privilege_escalation && !spec.privileged,
    })
}

/// The OCI runtime spec runc gets for this container.
pub fn runtime_spec(spec: &ContainerSpec, image: &Image) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]}),
        json!({"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", if spec.privileged { "rw" } else { "ro" }]}),
        json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
    ];
    for mount in &spec.mounts {
        let mut options = vec!["rbind", "rprivate"];
        options.push(if mount.read_only { "ro" } else { "rw" });
        mounts.push(json!({"destination": mount.container_path, "type": "bind", "source": mount.host_path, "options": options}));
    }
    let mut namespaces = vec![json!({"type": "pid"}), json!({"type": "ipc"}), json!({"type": "uts"}), json!({"type": "mount"})];
    match &spec.network_namespace {
        Some(path) => namespaces.push(json!({"type": "network", "path": path})),
        None => namespaces.push(json!({"type": "network"})),
    }
    let mut resources = json!({"devices": [{"allow": false, "access": "rwm"}]});
    if let Some(limit) = spec.memory_limit_bytes {
        resources["memory"] = json!({"limit": limit, "swap": limit});
    }
    if let Some(millis) = spec.cpu_millicores {
        let period = 100_000u64;
        resources["cpu"] = json!({"quota": (millis * period / 1000).max(1000), "period": period});
    }
    let mut linux = json!({
        "namespaces": namespaces,
        "cgroupsPath": spec.cgroup(),
        "resources": resources,
    });
    if !spec.privileged {
        linux["maskedPaths"] = json!([
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
            "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap"
        ]);
        linux["readonlyPaths"] = json!(["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]);
    }
    json!({
        "ociVersion": "1.0.2",
        "process": process(spec, image, process_args(spec, image)),
        "root": {"path": "rootfs", "readonly": spec.read_only_root},
        "hostname": spec.hostname,
        "mounts": mounts,
        "linux": linux,
    })
}

/// How a container's run ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    /// The kernel's OOM killer ended it (its cgroup counted an OOM kill).
    pub oom_killed: bool,
}

/// One running container, as handed to the node.
pub struct Running {
    pub id: String,
    pub pid: u32,
    cgroup: String,
}

/// Runs containers through containerd.
pub struct Containers {
    channel: Arc<Channel>,
    snapshotter: String,
}

fn is_not_found(error: &Error) -> bool {
    matches!(error, Error::Grpc { code, .. } if *code == NOT_FOUND)
}

/// A cgroup's CPU time and working set (memory less inactive file pages, as the kubelet reports
/// it): cgroup v1 `cpuacct.usage` and `memory.usage_in_bytes`, or v2 `cpu.stat` and
/// `memory.current`. `None` when the cgroup is not there.
pub fn cgroup_usage(cgroup: &str) -> Option<(Duration, u64)> {
    let relative = cgroup.trim_start_matches('/');
    let read = |path: String| std::fs::read_to_string(path).ok();
    let stat_field = |text: &str, key: &str| text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse::<u64>().ok());
    for root in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if let (Some(cpu), Some(memory)) = (read(format!("{root}/{relative}/cpu.stat")), read(format!("{root}/{relative}/memory.current"))) {
            let cpu = Duration::from_micros(stat_field(&cpu, "usage_usec ")?);
            let memory: u64 = memory.trim().parse().ok()?;
            let inactive = read(format!("{root}/{relative}/memory.stat")).and_then(|s| stat_field(&s, "inactive_file ")).unwrap_or(0);
            return Some((cpu, memory.saturating_sub(inactive)));
        }
    }
    let cpu = ["cpuacct", "cpu,cpuacct"].iter().find_map(|h| read(format!("/sys/fs/cgroup/{h}/{relative}/cpuacct.usage")))?;
    let cpu = Duration::from_nanos(cpu.trim().parse().ok()?);
    let memory: u64 = read(format!("/sys/fs/cgroup/memory/{relative}/memory.usage_in_bytes"))?.trim().parse().ok()?;
    let inactive = read(format!("/sys/fs/cgroup/memory/{relative}/memory.stat")).and_then(|s| stat_field(&s, "total_inactive_file ")).unwrap_or(0);
    Some((cpu, memory.saturating_sub(inactive)))
}

/// How many OOM kills the cgroup has seen (cgroup v1 `memory.oom_control`, v2 `memory.events`).
fn oom_kills(cgroup: &str) -> u64 {
    let relative = cgroup.trim_start_matches('/');
    let candidates = [
        (format!("/sys/fs/cgroup/memory/{relative}/memory.oom_control"), "oom_kill "),
        (format!("/sys/fs/cgroup/{relative}/memory.events"), "oom_kill "),
        (format!("/sys/fs/cgroup/unified/{relative}/memory.events"), "oom_kill "),
    ];
    for (path, key) in candidates {
        if let Ok(text) = std::fs::read_to_string(&path)
            && let Some(count) = text.lines().find_map(|l| l.strip_prefix(key)).and_then(|v| v.trim().parse().ok())
        {
            return count;
        }
    }
    0
}

impl Containers {
    pub fn new(channel: Arc<Channel>, snapshotter: &str) -> Self {
        Containers { channel, snapshotter: snapshotter.to_owned() }
    }

    /// Creates and starts the container.
    pub async fn start(&self, spec: &ContainerSpec, image: &Image) -> Result<Running> {
        // A record left by an earlier run of the same id (an agent restart) goes first.
        self.remove(&spec.id).await;
        let runtime_spec = serde_json::to_vec(&runtime_spec(spec, image)).map_err(|e| Error::Spec(e.to_string()))?;
        let container = proto::Container {
            id: spec.id.clone(),
            labels: HashMap::from([(POD_LABEL.to_owned(), spec.pod_uid.clone()), ("shoal.dev/container".to_owned(), spec.name.clone())]),
            image: image.reference.clone(),
            runtime: Some(proto::ContainerRuntime { name: RUNTIME.into(), options: None }),
            spec: Some(proto::Any { type_url: SPEC_TYPE.into(), value: runtime_spec }),
            snapshotter: self.snapshotter.clone(),
            snapshot_key: spec.id.clone(),
        };
        self.channel.unary::<_, proto::ContainerMessage>(CONTAINER_CREATE, &proto::ContainerMessage { container: Some(container) }, None).await?;
        let prepare = proto::PrepareSnapshotRequest { snapshotter: self.snapshotter.clone(), key: spec.id.clone(), parent: image.chain_id.clone(), labels: HashMap::new() };
        let mounts = match self.channel.unary::<_, proto::MountsResponse>(SNAPSHOT_PREPARE, &prepare, None).await {
            Ok(response) => response.mounts,
            Err(error) => {
                self.remove(&spec.id).await;
                return Err(error);
            }
        };
        if let Some(parent) = spec.log_path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::Io { path: parent.to_owned(), source: e })?;
        }
        let log = format!("file://{}", spec.log_path.display());
        let create = proto::CreateTaskRequest { container_id: spec.id.clone(), rootfs: mounts, stdin: String::new(), stdout: log.clone(), stderr: log, terminal: false };
        let created = self.channel.unary::<_, proto::CreateTaskResponse>(TASK_CREATE, &create, None).await;
        if let Err(error) = created {
            self.remove(&spec.id).await;
            return Err(error);
        }
        if let Err(error) = self.channel.unary::<_, proto::StartResponse>(TASK_START, &proto::ProcessRequest { container_id: spec.id.clone(), exec_id: String::new() }, None).await {
            self.remove(&spec.id).await;
            return Err(error);
        }
        let pid = created.map(|c| c.pid).unwrap_or_default();
        Ok(Running { id: spec.id.clone(), pid, cgroup: spec.cgroup() })
    }

    /// A container of an earlier agent process that is still running, to adopt.
    pub async fn running(&self, spec: &ContainerSpec) -> Option<Running> {
        let task = self.channel.unary::<_, proto::GetTaskResponse>(TASK_GET, &proto::ProcessRequest { container_id: spec.id.clone(), exec_id: String::new() }, None).await.ok()?;
        let process = task.process?;
        (process.status == proto::TASK_RUNNING).then(|| Running { id: spec.id.clone(), pid: process.pid, cgroup: spec.cgroup() })
    }

    /// Waits for the container to end. A broken connection (containerd restarting) is waited
    /// out: the task lives in its shim, and the wait resumes once containerd answers again.
    pub async fn wait(&self, running: &Running) -> Result<Exit> {
        let request = proto::ProcessRequest { container_id: running.id.clone(), exec_id: String::new() };
        let mut lost_since: Option<tokio::time::Instant> = None;
        let code = loop {
            match self.channel.unary::<_, proto::WaitResponse>(TASK_WAIT, &request, None).await {
                Ok(response) => break response.exit_status,
                Err(Error::Connect { .. }) if lost_since.is_none_or(|since| since.elapsed() < Duration::from_secs(120)) => {
                    lost_since.get_or_insert_with(tokio::time::Instant::now);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(error) => return Err(error),
            }
        };
        let oom_killed = oom_kills(&running.cgroup) > 0;
        Ok(Exit { code: code as i32, oom_killed })
    }

    /// Sends SIGTERM, and SIGKILL if it has not ended within `grace`.
    pub async fn stop(&self, running: &Running, grace: Duration) {
        let kill = |signal| proto::KillRequest { container_id: running.id.clone(), exec_id: String::new(), signal, all: true };
        if self.channel.unary::<_, proto::Empty>(TASK_KILL, &kill(SIGTERM), None).await.is_err() {
            return;
        }
        let waited = tokio::time::timeout(grace, self.wait(running)).await;
        if waited.is_err() {
            let _ = self.channel.unary::<_, proto::Empty>(TASK_KILL, &kill(SIGKILL), None).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), self.wait(running)).await;
        }
    }

    /// Removes the task, the container record and its snapshot (each if present).
    pub async fn remove(&self, id: &str) {
        let delete = proto::DeleteTaskRequest { container_id: id.to_owned() };
        if let Err(error) = self.channel.unary::<_, proto::DeleteResponse>(TASK_DELETE, &delete, None).await
            && !is_not_found(&error)
        {
            // A task still running: kill it, then delete.
            let kill = proto::KillRequest { container_id: id.to_owned(), exec_id: String::new(), signal: SIGKILL, all: true };
            let _ = self.channel.unary::<_, proto::Empty>(TASK_KILL, &kill, None).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), self.channel.unary::<_, proto::WaitResponse>(TASK_WAIT, &proto::ProcessRequest { container_id: id.to_owned(), exec_id: String::new() }, None)).await;
            if let Err(error) = self.channel.unary::<_, proto::DeleteResponse>(TASK_DELETE, &delete, None).await {
                tracing::warn!(%error, id, "deleting a container's task");
            }
        }
        if let Err(error) = self.channel.unary::<_, proto::Empty>(CONTAINER_DELETE, &proto::IdRequest { id: id.to_owned() }, None).await
            && !is_not_found(&error)
        {
            tracing::warn!(%error, id, "deleting a container record");
        }
        let snapshot = proto::SnapshotKeyRequest { snapshotter: self.snapshotter.clone(), key: id.to_owned() };
        if let Err(error) = self.channel.unary::<_, proto::Empty>(SNAPSHOT_REMOVE, &snapshot, None).await
            && !is_not_found(&error)
        {
            tracing::warn!(%error, id, "removing a container's snapshot");
        }
    }

    /// The ids of every container Shoal made for pod `pod_uid` (or for any pod, with `None`).
    pub async fn list(&self, pod_uid: Option<&str>) -> Result<Vec<(String, String)>> {
        let filters = match pod_uid {
            Some(uid) => vec![format!("labels.\"{POD_LABEL}\"=={uid}")],
            None => vec![format!("labels.\"{POD_LABEL}\"")],
        };
        let response = self.channel.unary::<_, proto::ListContainersResponse>(CONTAINER_LIST, &proto::ListContainersRequest { filters }, None).await?;
        Ok(response.containers.into_iter().map(|c| (c.id, c.labels.get(POD_LABEL).cloned().unwrap_or_default())).collect())
    }

    /// Runs `command` in the running container (an exec probe): its exit code and output, or
    /// `None` when it did not finish within `timeout` (it is then killed).
    pub async fn exec(&self, spec: &ContainerSpec, image: &Image, command: Vec<String>, timeout: Duration) -> Result<(Option<i32>, String)> {
        let exec_id = format!("exec-{:08x}", rand::random::<u32>());
        let output = spec.log_path.with_extension(format!("{exec_id}.out"));
        let process = serde_json::to_vec(&process(spec, image, command)).map_err(|e| Error::Spec(e.to_string()))?;
        let stdout = format!("file://{}", output.display());
        let request = proto::ExecProcessRequest {
            container_id: spec.id.clone(),
            stdin: String::new(),
            stdout: stdout.clone(),
            stderr: stdout,
            terminal: false,
            spec: Some(proto::Any { type_url: PROCESS_TYPE.into(), value: process }),
            exec_id: exec_id.clone(),
        };
        self.channel.unary::<_, proto::Empty>(TASK_EXEC, &request, None).await?;
        let which = proto::ProcessRequest { container_id: spec.id.clone(), exec_id: exec_id.clone() };
        let outcome = async {
            self.channel.unary::<_, proto::StartResponse>(TASK_START, &which, None).await?;
            match tokio::time::timeout(timeout, self.channel.unary::<_, proto::WaitResponse>(TASK_WAIT, &which, None)).await {
                Ok(waited) => waited.map(|w| Some(w.exit_status as i32)),
                Err(_) => {
                    let kill = proto::KillRequest { container_id: spec.id.clone(), exec_id: exec_id.clone(), signal: SIGKILL, all: false };
                    let _ = self.channel.unary::<_, proto::Empty>(TASK_KILL, &kill, None).await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), self.channel.unary::<_, proto::WaitResponse>(TASK_WAIT, &which, None)).await;
                    Ok(None)
                }
            }
        }
        .await;
        let _ = self.channel.unary::<_, proto::DeleteResponse>(TASK_DELETE_PROCESS, &which, None).await;
        let text = std::fs::read_to_string(&output).unwrap_or_default();
        let _ = std::fs::remove_file(&output);
        outcome.map(|code| (code, text))
    }
}

/// Removes the cgroups runc leaves for a pod (`/shoal/POD` in each hierarchy; runc removes only
/// each container's own).
pub fn remove_pod_cgroups(pod_uid: &str) {
    let mut candidates = vec![PathBuf::from("/sys/fs/cgroup/shoal").join(pod_uid)];
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").into_iter().flatten().flatten() {
        candidates.push(hierarchy.path().join("shoal").join(pod_uid));
    }
    for directory in candidates {
        if !directory.is_dir() {
            continue;
        }
        for child in std::fs::read_dir(&directory).into_iter().flatten().flatten() {
            if child.path().is_dir() {
                let _ = std::fs::remove_dir(child.path());
            }
        }
        let _ = std::fs::remove_dir(&directory);
    }
}

/// The `/etc/hosts` of a pod with containers: localhost, the pod's own name and address, and the
/// names of Services (`NAME`, `NAME.NS`, `NAME.NS.svc`, `NAME.NS.svc.cluster.local`).
pub fn hosts_file(pod_name: &str, pod_address: Ipv4Addr, services: &[(String, String, Ipv4Addr)], namespace: &str) -> String {
    let mut text = format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{pod_address}\t{pod_name}\n");
    for (service_namespace, name, address) in services {
        let short = if service_namespace == namespace { format!("{name} ") } else { String::new() };
        text.push_str(&format!("{address}\t{short}{name}.{service_namespace} {name}.{service_namespace}.svc {name}.{service_namespace}.svc.cluster.local\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::ImageConfig;

    fn image(entrypoint: Option<&[&str]>, cmd: Option<&[&str]>) -> Image {
        let owned = |list: Option<&[&str]>| list.map(|l| l.iter().map(|s| (*s).to_owned()).collect());
        Image {
            reference: "r".into(),
            manifest_digest: "d".into(),
            chain_id: "c".into(),
            config: ImageConfig { entrypoint: owned(entrypoint), cmd: owned(cmd), env: Some(vec!["PATH=/bin".into(), "A=image".into()]), ..Default::default() },
        }
    }

    fn spec(command: &[&str], args: &[&str]) -> ContainerSpec {
        ContainerSpec {
            id: "id".into(),
            pod_uid: "uid".into(),
            name: "main".into(),
            command: command.iter().map(|s| (*s).to_owned()).collect(),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn args_follow_kubernetes_rules() {
        let image = image(Some(&["/entry"]), Some(&["default"]));
        assert_eq!(process_args(&spec(&[], &[]), &image), ["/entry", "default"]);
        assert_eq!(process_args(&spec(&[], &["mine"]), &image), ["/entry", "mine"]);
        assert_eq!(process_args(&spec(&["/bin/sh"], &[]), &image), ["/bin/sh"]);
        assert_eq!(process_args(&spec(&["/bin/sh"], &["-c", "x"]), &image), ["/bin/sh", "-c", "x"]);
    }

    #[test]
    fn container_env_overrides_the_image() {
        let mut container = spec(&[], &[]);
        container.env = vec![("A".into(), "pod".into()), ("B".into(), "b".into())];
        let env = environment(&container, &image(None, None));
        assert_eq!(env, ["PATH=/bin", "A=pod", "B=b"]);
    }

    #[test]
    fn capabilities_default_add_and_drop() {
        let mut container = spec(&[], &[]);
        assert!(capabilities(&container).contains(&"CAP_CHOWN".to_owned()));
        assert!(!capabilities(&container).contains(&"CAP_SYS_ADMIN".to_owned()));
        container.capabilities_drop = vec!["ALL".into()];
        container.capabilities_add = vec!["NET_BIND_SERVICE".into()];
        assert_eq!(capabilities(&container), ["CAP_NET_BIND_SERVICE"]);
        container.capabilities_drop = vec!["chown".into()];
        container.capabilities_add = vec![];
        assert!(!capabilities(&container).contains(&"CAP_CHOWN".to_owned()));
    }

    #[test]
    fn the_runtime_spec_carries_limits_namespaces_and_security() {
        let mut container = spec(&["/bin/httpd"], &["-f"]);
        container.memory_limit_bytes = Some(64 << 20);
        container.cpu_millicores = Some(500);
        container.network_namespace = Some(PathBuf::from("/run/netns/shoal-x"));
        container.read_only_root = true;
        container.run_as_user = Some(1000);
        container.mounts = vec![BindMount { host_path: "/data/v".into(), container_path: "/shared".into(), read_only: false }];
        let runtime = runtime_spec(&container, &image(None, None));
        assert_eq!(runtime["process"]["args"], json!(["/bin/httpd", "-f"]));
        assert_eq!(runtime["process"]["user"]["uid"], 1000);
        assert_eq!(runtime["process"]["noNewPrivileges"], true);
        assert_eq!(runtime["root"]["readonly"], true);
        assert_eq!(runtime["linux"]["resources"]["memory"]["limit"], 64 << 20);
        assert_eq!(runtime["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(runtime["linux"]["cgroupsPath"], "/shoal/uid/main");
        assert!(runtime["linux"]["namespaces"].as_array().expect("a list").contains(&json!({"type": "network", "path": "/run/netns/shoal-x"})));
        assert!(runtime["mounts"].as_array().expect("a list").iter().any(|m| m["destination"] == "/shared" && m["source"] == "/data/v"));
        assert!(runtime["linux"]["maskedPaths"].is_array());
    }

    #[test]
    fn hosts_name_services_in_and_out_of_the_namespace() {
        let services = vec![("default".to_owned(), "web".to_owned(), Ipv4Addr::new(10, 43, 0, 5)), ("other".to_owned(), "db".to_owned(), Ipv4Addr::new(10, 43, 0, 6))];
        let hosts = hosts_file("pod", Ipv4Addr::new(10, 88, 1, 2), &services, "default");
        assert!(hosts.contains("10.43.0.5\tweb web.default web.default.svc web.default.svc.cluster.local"));
        assert!(hosts.contains("10.43.0.6\tdb.other db.other.svc"));
        assert!(hosts.contains("10.88.1.2\tpod"));
    }
}

//! OCI containers in pods, run through `shoal-runtime-oci`: images pulled with the pod's pull
//! secrets and policy; the pod's network namespace and its `/etc/hosts`, `resolv.conf` and
//! `hostname`; one run of a container (output into the pod's log store, exit code and OOM kill
//! into its status); restarts with the pod's policy; probes; routes for the Service proxy;
//! listeners inside the pod for its Wasm components; Service names for containers through the
//! bridge gateway; and removal of whatever a deleted pod leaves.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use hyper::StatusCode;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use shoal_api::resources;
use shoal_oci::Reference;
use shoal_oci::client::RegistryClient;
use shoal_runtime_oci::{BindMount, ContainerRuntime, ContainerSpec, Image, PodNetwork, PullPolicy};
use tokio_util::sync::CancellationToken;

use crate::pods::{Reporter, crash_loop_back_off, log_sink, now};
use crate::probes::{Probe, ProbeAction};
use crate::proxy::text;
use crate::status::ContainerState;
use crate::{HttpRoute, RouteTarget, Shared, spec};

/// The namespace label that lets pods in it run privileged containers.
pub const ALLOW_PRIVILEGED_LABEL: &str = "shoal.dev/allow-privileged";
const DEFAULT_GRACE: Duration = Duration::from_secs(30);

/// The node's container runtime, started on first use.
pub(crate) struct ContainerSupport {
    config: shoal_runtime_oci::RuntimeConfig,
    shutdown: CancellationToken,
    cell: tokio::sync::OnceCell<Arc<ContainerRuntime>>,
}

impl ContainerSupport {
    pub fn new(config: shoal_runtime_oci::RuntimeConfig, shutdown: CancellationToken) -> Self {
        ContainerSupport { config, shutdown, cell: tokio::sync::OnceCell::new() }
    }

    /// The node's pod range (whether or not the runtime has started).
    pub fn range(&self) -> shoal_runtime_oci::PodRange {
        self.config.pod_range
    }

    /// Whether an earlier agent process ran containers here (so they may need adopting).
    pub fn used_before(&self) -> bool {
        std::fs::read_dir(self.config.data_dir.join("network").join("leases")).is_ok_and(|mut entries| entries.next().is_some())
    }

    pub fn started(&self) -> Option<Arc<ContainerRuntime>> {
        self.cell.get().cloned()
    }
}

/// The container runtime, started now if this is its first use (and the Service follower with it).
pub(crate) async fn runtime(shared: &Arc<Shared>) -> Result<Arc<ContainerRuntime>, String> {
    let support = shared.containers.as_ref().ok_or("this node has no container runtime (containerd)")?;
    let mut first = false;
    let runtime = support
        .cell
        .get_or_try_init(|| async {
            first = true;
            match ContainerRuntime::start(&support.config, &support.shutdown).await {
                Ok(Some(runtime)) => Ok(runtime),
                Ok(None) => Err("containerd is not installed on this node".to_owned()),
                Err(error) => Err(format!("the container runtime did not start: {error}")),
            }
        })
        .await?
        .clone();
    if first {
        shared.tasks.spawn(follow_services(Arc::clone(shared)));
    }
    Ok(runtime)
}

/// A pod with a network namespace on this node.
#[derive(Clone, Debug)]
pub(crate) struct PodNet {
    pub namespace: String,
    pub name: String,
    pub network: PodNetwork,
}

/// containerd's id for a pod's container: `UID-NAME` (or a hash of the name when that would not
/// be a valid containerd identifier).
pub(crate) fn container_id(uid: &str, name: &str) -> String {
    let compact: String = uid.chars().filter(|c| c.is_ascii_alphanumeric()).collect();
    let valid = !name.is_empty() && name.len() <= 40 && !name.contains("--") && !name.starts_with('-') && !name.ends_with('-') && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid { format!("{compact}-{name}") } else { format!("{compact}-{}", &shoal_oci::Digest::of(name.as_bytes()).hex()[..12]) }
}

/// Makes a container's image ready: (image, waiting reason and message on failure).
pub(crate) async fn pull(runtime: &ContainerRuntime, client: &RegistryClient, pinned: &Reference, named: &str, policy: PullPolicy) -> Result<Image, (&'static str, String)> {
    runtime.images.ensure(client, pinned, named, policy).await.map_err(|error| match error {
        shoal_runtime_oci::Error::NeverPull(_) => ("ErrImageNeverPull", error.to_string()),
        shoal_runtime_oci::Error::Image(_) => ("InvalidImage", error.to_string()),
        other => ("ErrImagePull", other.to_string()),
    })
}

fn etc_dir(shared: &Shared, uid: &str) -> PathBuf {
    crate::pods::pod_dir(shared, uid).join("etc")
}

/// The pod's network namespace and `/etc` files, made (or found again after an agent restart).
pub(crate) async fn attach(shared: &Arc<Shared>, pod: &Value) -> Result<PodNet, String> {
    let runtime = runtime(shared).await?;
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default().to_owned();
    let attach_uid = uid.clone();
    // The API's cluster IP (`KUBERNETES_SERVICE_HOST`) leads to the gateway, which passes TLS on
    // to the API server (`serve_gateway`).
    let api = crate::pods::api_service(shared);
    let network = tokio::task::spawn_blocking(move || runtime.network.attach(&attach_uid, api)).await.map_err(|e| e.to_string())?.map_err(|e| e.to_string())?;
    let net = PodNet {
        namespace: pod["metadata"]["namespace"].as_str().unwrap_or("default").to_owned(),
        name: pod["metadata"]["name"].as_str().unwrap_or_default().to_owned(),
        network,
    };
    let directory = etc_dir(shared, &uid);
    std::fs::create_dir_all(&directory).map_err(|e| format!("{}: {e}", directory.display()))?;
    std::fs::write(directory.join("hostname"), format!("{}\n", net.name)).map_err(|e| e.to_string())?;
    std::fs::write(directory.join("resolv.conf"), resolv_conf(&net.namespace, &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default())).map_err(|e| e.to_string())?;
    shared.pod_networks.write().unwrap_or_else(|p| p.into_inner()).insert(uid.clone(), net.clone());
    write_hosts(shared, &uid, &net);
    Ok(net)
}

/// Removes the pod's network namespace, address, `/etc` files and cgroups.
pub(crate) async fn detach(shared: &Arc<Shared>, uid: &str) {
    let Some(runtime) = shared.containers.as_ref().and_then(|s| s.started()) else { return };
    shared.pod_networks.write().unwrap_or_else(|p| p.into_inner()).remove(uid);
    let owned = uid.to_owned();
    let _ = tokio::task::spawn_blocking(move || {
        runtime.network.detach(&owned);
        shoal_runtime_oci::container::remove_pod_cgroups(&owned);
    })
    .await;
    let _ = std::fs::remove_dir_all(etc_dir(shared, uid));
}

/// The pod's resolv.conf: the node's name servers (not loopback ones, which the pod cannot
/// reach) and the cluster's search domains.
fn resolv_conf(namespace: &str, host: &str) -> String {
    let mut text = format!("search {namespace}.svc.cluster.local svc.cluster.local cluster.local\n");
    for line in host.lines() {
        if let Some(server) = line.trim().strip_prefix("nameserver")
            && let Ok(address) = server.trim().parse::<std::net::IpAddr>()
            && !address.is_loopback()
        {
            text.push_str(&format!("nameserver {address}\n"));
        }
    }
    text.push_str("options ndots:5\n");
    text
}

/// (Re)writes a pod's `/etc/hosts` in place (the file is bind-mounted, so its inode stays):
/// every Service name resolves to the bridge gateway, where the node's Service listeners are.
fn write_hosts(shared: &Shared, uid: &str, net: &PodNet) {
    let Some(runtime) = shared.containers.as_ref().and_then(|s| s.started()) else { return };
    let gateway = runtime.network.range.gateway();
    let services: Vec<(String, String, Ipv4Addr)> = shared.services.all().iter().map(|s| (s.namespace.clone(), s.name.clone(), gateway)).collect();
    let hosts = shoal_runtime_oci::container::hosts_file(&net.name, net.network.address, &services, &net.namespace);
    let path = etc_dir(shared, uid).join("hosts");
    if let Err(error) = std::fs::write(&path, hosts) {
        tracing::warn!(%error, path = %path.display(), "writing a pod's hosts file");
    }
}

/// Keeps every pod's `/etc/hosts` and the gateway's Service listeners in step with the Services.
async fn follow_services(shared: Arc<Shared>) {
    let Some(runtime) = shared.containers.as_ref().and_then(|s| s.started()) else { return };
    let gateway = runtime.network.range.gateway();
    let mut changes = shared.services.changes.subscribe();
    let mut open: HashMap<u16, CancellationToken> = HashMap::new();
    let mut names: Vec<(String, String)> = Vec::new();
    loop {
        // Most changes are endpoints coming and going; the hosts files change only with names
        // (a pod attached since writes its own).
        let mut current: Vec<(String, String)> = shared.services.all().iter().map(|s| (s.namespace.clone(), s.name.clone())).collect();
        current.sort();
        if current != names {
            names = current;
            let nets: Vec<(String, PodNet)> = shared.pod_networks.read().unwrap_or_else(|p| p.into_inner()).iter().map(|(u, n)| (u.clone(), n.clone())).collect();
            for (uid, net) in &nets {
                write_hosts(&shared, uid, net);
            }
        }
        let desired: HashSet<u16> = shared.services.all().iter().flat_map(|s| s.ports.iter().filter(|p| p.protocol == "TCP" || p.protocol.is_empty()).map(|p| p.port).collect::<Vec<_>>()).collect();
        open.retain(|port, stop| {
            let keep = desired.contains(port);
            if !keep {
                stop.cancel();
            }
            keep
        });
        for port in desired {
            if open.contains_key(&port) {
                continue;
            }
            match tokio::net::TcpListener::bind(SocketAddr::new(gateway.into(), port)).await {
                Ok(listener) => {
                    let stop = shared.shutdown.child_token();
                    shared.tasks.spawn(serve_gateway(Arc::clone(&shared), listener, port, stop.clone()));
                    open.insert(port, stop);
                }
                Err(error) => tracing::warn!(%error, %gateway, port, "cannot open a Service port for the pods"),
            }
        }
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            changed = changes.changed() => if changed.is_err() { return },
        }
    }
}

/// Serves HTTP from pods to Services on the gateway: the Host header names the Service (`NAME`
/// in the calling pod's namespace, or `NAME.NS[.svc[.cluster.local]]`).
///
/// A TLS connection on the port of the `kubernetes` Service (by name through `/etc/hosts`, or by
/// its cluster IP, which the pod's NAT rule sends here) is passed through whole to the API
/// server this node uses: the container's client verifies the API's own certificate (issued
/// for `kubernetes.default.svc` and the cluster IP) against the mounted `ca.crt`.
async fn serve_gateway(shared: Arc<Shared>, listener: tokio::net::TcpListener, port: u16, stop: CancellationToken) {
    while let Some((stream, peer)) = crate::proxy::next_connection(&listener, &stop, "pod gateway").await {
        let shared = Arc::clone(&shared);
        shared.clone().tasks.spawn(async move {
            if crate::pods::api_service(&shared).is_some_and(|(_, api_port)| api_port == port) && starts_tls(&stream).await {
                pass_to_api(&shared, stream).await;
                return;
            }
            let caller = shared.pod_networks.read().unwrap_or_else(|p| p.into_inner()).values().find(|n| std::net::IpAddr::V4(n.network.address) == peer.ip()).map(|n| n.namespace.clone());
            let handler_shared = Arc::clone(&shared);
            crate::proxy::serve_http(&shared, TokioIo::new(stream), move |request| {
                let shared = Arc::clone(&handler_shared);
                let caller = caller.clone().unwrap_or_else(|| "default".into());
                async move {
                    let host = request.headers().get(hyper::header::HOST).and_then(|h| h.to_str().ok()).map(str::to_owned).or_else(|| request.uri().host().map(str::to_owned)).unwrap_or_default();
                    let (name, _) = crate::services::split_host_port(&host);
                    let Some(service) = shared.services.resolve(name, &caller) else { return text(StatusCode::BAD_GATEWAY, format!("no Service is named {name:?} (from namespace {caller})\n")) };
                    let Some(service_port) = service.port(Some(port)).cloned() else { return text(StatusCode::BAD_GATEWAY, format!("service {}/{} has no port {port}\n", service.namespace, service.name)) };
                    let request = request.map(|body| http_body_util::BodyExt::boxed_unsync(http_body_util::BodyExt::map_err(body, shoal_runtime_wasm::HttpError::from)));
                    crate::proxy::to_service(&shared, &service, &service_port, request, Some(peer.ip())).await
                }
            })
            .await;
        });
    }
}

/// Whether the client's first byte is a TLS handshake record (waits up to 5 s for it).
async fn starts_tls(stream: &tokio::net::TcpStream) -> bool {
    let mut first = [0u8; 1];
    matches!(tokio::time::timeout(Duration::from_secs(5), stream.peek(&mut first)).await, Ok(Ok(1)) if first[0] == 0x16)
}

/// Copies bytes between a pod's connection and the API server the node's client uses now.
async fn pass_to_api(shared: &Shared, mut stream: tokio::net::TcpStream) {
    let server = shared.client.server();
    let Some(address) = server.strip_prefix("https://").map(|rest| rest.split('/').next().unwrap_or(rest).to_owned()) else { return };
    match tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(&address)).await {
        Ok(Ok(mut upstream)) => {
            let _ = upstream.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
        }
        Ok(Err(error)) => tracing::debug!(%error, %address, "a pod's connection to the API: the server did not answer"),
        Err(_) => tracing::debug!(%address, "a pod's connection to the API: connecting timed out"),
    }
}

/// Serves the pod's Wasm components inside its network namespace on their ports, so that its
/// containers reach them at `localhost:PORT`, until `stop`.
pub(crate) fn serve_components_in_pod(shared: &Arc<Shared>, net: &PodNet, route: &HttpRoute, stop: &CancellationToken) {
    for &port in &route.ports {
        let listener = match net.network.listen(port).and_then(|l| tokio::net::TcpListener::from_std(l).map_err(|e| shoal_runtime_oci::Error::Network(e.to_string()))) {
            Ok(listener) => listener,
            Err(error) => {
                tracing::warn!(%error, pod = %net.name, port, "serving a component inside the pod");
                continue;
            }
        };
        let (shared, route, stop) = (Arc::clone(shared), route.clone(), stop.clone());
        shared.clone().tasks.spawn(async move {
            while let Some((stream, _)) = crate::proxy::next_connection(&listener, &stop, "pod localhost").await {
                let (shared, route) = (Arc::clone(&shared), route.clone());
                shared.clone().tasks.spawn(async move {
                    let handler_shared = Arc::clone(&shared);
                    crate::proxy::serve_http(&shared, TokioIo::new(stream), move |request| {
                        let (shared, route) = (Arc::clone(&handler_shared), route.clone());
                        async move {
                            let (mut parts, body) = request.into_parts();
                            parts.uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").parse().unwrap_or_default();
                            route.handle(&shared, hyper::Request::from_parts(parts, body), Some(port)).await
                        }
                    })
                    .await;
                });
            }
        });
    }
}

/// Whether pods in `namespace` may run privileged containers.
async fn privileged_allowed(shared: &Shared, namespace: &str) -> bool {
    let namespaces = resources::by_name("namespaces").expect("namespaces are served");
    shared.client.get(namespaces, None, namespace).await.is_ok_and(|n| n["metadata"]["labels"][ALLOW_PRIVILEGED_LABEL] == "true")
}

fn strings(value: &Value) -> Vec<String> {
    value.as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
}

/// The resolved spec of one container run, or why it cannot be built (a config error).
async fn container_spec(shared: &Arc<Shared>, reporter: &Reporter, pod: &Value, container: &Value, net: &PodNet, volume_root: &std::path::Path) -> Result<ContainerSpec, String> {
    let name = container["name"].as_str().unwrap_or_default();
    let logs = log_sink(shared, reporter, name);
    let address = net.network.address.to_string();
    let sandbox = spec::sandbox(&shared.client, pod, container, volume_root, &address, crate::pods::api_service(shared), logs).await?;
    let security = &container["securityContext"];
    let pod_security = &pod["spec"]["securityContext"];
    let privileged = security["privileged"] == true;
    if privileged && !privileged_allowed(shared, &net.namespace).await {
        return Err(format!("container {name} asks to be privileged, which namespace {} does not allow (label it {ALLOW_PRIVILEGED_LABEL}=true to allow it)", net.namespace));
    }
    let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
    let etc = etc_dir(shared, uid);
    let mut mounts: Vec<BindMount> = sandbox.preopens.iter().map(|p| BindMount { host_path: p.host_path.clone(), container_path: p.guest_path.clone(), read_only: p.read_only }).collect();
    for file in ["hosts", "resolv.conf", "hostname"] {
        if !mounts.iter().any(|m| m.container_path == format!("/etc/{file}")) {
            mounts.push(BindMount { host_path: etc.join(file), container_path: format!("/etc/{file}"), read_only: true });
        }
    }
    let id = container_id(uid, name);
    Ok(ContainerSpec {
        log_path: ContainerRuntime::log_path(&shared.config.data_dir, &id),
        id,
        pod_uid: uid.to_owned(),
        name: name.to_owned(),
        command: strings(&container["command"]),
        args: strings(&container["args"]),
        working_dir: container["workingDir"].as_str().map(str::to_owned),
        env: sandbox.env.clone(),
        mounts,
        hostname: net.name.clone(),
        network_namespace: Some(net.network.path()),
        memory_limit_bytes: shoal_api::quantity::of_json(&container["resources"]["limits"]["memory"]).as_deref().and_then(spec::parse_bytes),
        cpu_millicores: spec::cpu_millicores(container),
        run_as_user: security["runAsUser"].as_u64().or(pod_security["runAsUser"].as_u64()).map(|u| u as u32),
        run_as_group: security["runAsGroup"].as_u64().or(pod_security["runAsGroup"].as_u64()).map(|g| g as u32),
        read_only_root: security["readOnlyRootFilesystem"] == true,
        privileged,
        allow_privilege_escalation: security["allowPrivilegeEscalation"] == true,
        capabilities_add: strings(&security["capabilities"]["add"]),
        capabilities_drop: strings(&security["capabilities"]["drop"]),
    })
}

/// The container's declared ports, by name.
fn named_ports(container: &Value) -> Vec<(String, u16)> {
    container["ports"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| Some((p["name"].as_str().unwrap_or_default().to_owned(), u16::try_from(p["containerPort"].as_u64()?).ok()?)))
        .collect()
}

/// How long the pod gives its containers to stop.
fn grace_of(pod: &Value) -> Duration {
    pod["metadata"]["deletionGracePeriodSeconds"].as_u64().or(pod["spec"]["terminationGracePeriodSeconds"].as_u64()).map(Duration::from_secs).unwrap_or(DEFAULT_GRACE)
}

/// Runs one container once: its exit code, or None when the pod stopped (or the container
/// could not be set up, which is reported).
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_once(shared: &Arc<Shared>, reporter: &Arc<Reporter>, pod: &Value, container: &Value, image: &Image, net: &PodNet, volume_root: &std::path::Path, stop: &CancellationToken, is_init: bool) -> Option<i32> {
    let runtime = shared.containers.as_ref().and_then(|s| s.started())?;
    let name = container["name"].as_str().unwrap_or_default().to_owned();
    // A configuration that cannot be built yet is tried again, as the kubelet does.
    let mut attempt = 0;
    let spec = loop {
        match container_spec(shared, reporter, pod, container, net, volume_root).await {
            Ok(spec) => break spec,
            Err(message) => {
                reporter.config_error(&name, &message).await;
                if !crate::pods::config_back_off(&mut attempt, stop).await {
                    return None;
                }
            }
        }
    };
    let mut probes = Vec::new();
    for kind in ["startup", "liveness", "readiness"] {
        match crate::probes::parse_for_container(&container[format!("{kind}Probe")], kind, &named_ports(container)) {
            Ok(probe) => probes.push(probe),
            Err(message) => {
                reporter.config_error(&name, &message).await;
                return None;
            }
        }
    }
    let logs = log_sink(shared, reporter, &name);
    logs.set_finished(false);
    // A container an earlier agent process started is adopted, not started twice.
    let (running, offset) = match runtime.containers.running(&spec).await {
        Some(running) => {
            let offset = std::fs::metadata(&spec.log_path).map(|m| m.len()).unwrap_or(0);
            (running, offset)
        }
        None => {
            // A new run: the last run's lines become `--previous`.
            let restarted = reporter.records.lock().unwrap_or_else(|p| p.into_inner()).iter().any(|r| r.name == name && r.restart_count > 0);
            if restarted {
                logs.start_new_run();
            }
            let _ = std::fs::remove_file(&spec.log_path);
            match runtime.containers.start(&spec, image).await {
                Ok(running) => (running, 0),
                Err(error) => {
                    let message = error.to_string();
                    reporter.update(&name, |r| {
                        r.ready = false;
                        r.state = ContainerState::Terminated { exit_code: 128, reason: "StartError".into(), message: Some(message.clone()), started_at: now(), finished_at: now() };
                    });
                    reporter.publish().await;
                    reporter.event("Warning", "Failed", &format!("Error: failed to start container {name}: {message}")).await;
                    return Some(128);
                }
            }
        }
    };
    shared.metrics.cgroup(reporter.container_key(&name), spec.cgroup());
    let started_at = now();
    let [startup, liveness, readiness] = [probes[0].clone(), probes[1].clone(), probes[2].clone()];
    reporter.update(&name, |r| {
        r.state = ContainerState::Running { started_at: started_at.clone() };
        r.ready = !is_init && readiness.is_none() && startup.is_none();
    });
    reporter.publish().await;
    reporter.event("Normal", "Started", &format!("Started container {name}")).await;
    let follow_done = CancellationToken::new();
    let follower = {
        let logs = logs.clone();
        tokio::spawn(shoal_runtime_oci::follow_output(spec.log_path.clone(), offset, follow_done.clone(), move |line| logs.push_line(shoal_runtime_wasm::Stream::Stdout, line)))
    };
    let ports: Vec<u16> = named_ports(container).into_iter().map(|(_, p)| p).collect();
    let route_key = (reporter.namespace.clone(), reporter.name.clone());
    if !is_init && let Some(&first) = ports.first() {
        let route = HttpRoute { target: RouteTarget::Container(SocketAddr::new(net.network.address.into(), first)), ports: ports.clone() };
        shared.routes.write().unwrap_or_else(|p| p.into_inner()).entry(route_key.clone()).or_default().push(route);
    }
    let probing = CancellationToken::new();
    if !is_init {
        let context = ProbeContext { shared: Arc::clone(shared), spec: spec.clone(), image: image.clone(), name: name.clone(), address: net.network.address };
        let (reporter, probing) = (Arc::clone(reporter), probing.clone());
        shared.tasks.spawn(async move {
            let probe = |probe: Probe| {
                let context = &context;
                async move { check(context, &probe).await }
            };
            // A failed startup or liveness probe kills the container: its run ends, and the
            // restart policy decides what comes next.
            let restart = |_| async {
                kill(&context).await;
                false
            };
            tokio::select! {
                _ = probing.cancelled() => {}
                _ = crate::pods::probe_loop(&reporter, &context.name, startup, liveness, readiness, probe, restart) => {}
            }
        });
    }
    let outcome = tokio::select! {
        exit = runtime.containers.wait(&running) => Some(exit),
        _ = stop.cancelled() => None,
    };
    probing.cancel();
    let remove_route = |shared: &Shared| {
        if let Some(routes) = shared.routes.write().unwrap_or_else(|p| p.into_inner()).get_mut(&route_key) {
            routes.retain(|r| !matches!(r.target, RouteTarget::Container(address) if address.ip() == std::net::IpAddr::V4(net.network.address) && ports.contains(&address.port())));
        }
    };
    let Some(exit) = outcome else {
        remove_route(shared);
        if shared.shutdown.is_cancelled() {
            // The agent is stopping, not the pod: the container keeps running for the next one.
            follow_done.cancel();
            return None;
        }
        runtime.containers.stop(&running, grace_of(pod)).await;
        follow_done.cancel();
        let _ = follower.await;
        runtime.containers.remove(&spec.id).await;
        let _ = std::fs::remove_file(&spec.log_path);
        logs.set_finished(true);
        return None;
    };
    remove_route(shared);
    follow_done.cancel();
    let _ = follower.await;
    logs.set_finished(true);
    let (code, reason, message) = match exit {
        Ok(exit) if exit.oom_killed => (exit.code, "OOMKilled".to_owned(), Some("the container went over its memory limit".to_owned())),
        Ok(exit) => (exit.code, if exit.code == 0 { "Completed".to_owned() } else { "Error".to_owned() }, None),
        Err(error) => (128, "Error".to_owned(), Some(format!("waiting for the container: {error}"))),
    };
    runtime.containers.remove(&spec.id).await;
    let _ = std::fs::remove_file(&spec.log_path);
    reporter.update(&name, |r| {
        r.ready = false;
        r.state = ContainerState::Terminated { exit_code: code, reason: reason.clone(), message: message.clone(), started_at, finished_at: now() };
    });
    reporter.publish().await;
    if reason == "OOMKilled" {
        reporter.event("Warning", "OOMKilled", &format!("Container {name} was killed for using more than its memory limit")).await;
    }
    Some(code)
}

/// A main container: runs it, and again as the restart policy says, until the pod stops.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_main(shared: &Arc<Shared>, reporter: &Arc<Reporter>, pod: &Value, container: &Value, image: &Image, net: &PodNet, volume_root: &std::path::Path, stop: &CancellationToken) {
    let name = container["name"].as_str().unwrap_or_default().to_owned();
    let mut attempt = 0;
    loop {
        let Some(exit_code) = run_once(shared, reporter, pod, container, image, net, volume_root, stop, false).await else { return };
        let restart = match reporter.restart_policy.as_str() {
            "Always" => true,
            "OnFailure" => exit_code != 0,
            _ => false,
        };
        if !restart || !crash_loop_back_off(reporter, &name, &mut attempt, stop).await {
            return;
        }
    }
}

struct ProbeContext {
    shared: Arc<Shared>,
    spec: ContainerSpec,
    image: Image,
    name: String,
    address: Ipv4Addr,
}

async fn check(context: &ProbeContext, probe: &Probe) -> bool {
    match &probe.action {
        ProbeAction::Exec { command } => {
            let Some(runtime) = context.shared.containers.as_ref().and_then(|s| s.started()) else { return false };
            match runtime.containers.exec(&context.spec, &context.image, command.clone(), probe.timeout).await {
                Ok((Some(0), _)) => true,
                Ok((code, output)) => {
                    tracing::debug!(container = %context.name, ?code, %output, "exec probe failed");
                    false
                }
                Err(error) => {
                    tracing::warn!(container = %context.name, %error, "running an exec probe");
                    false
                }
            }
        }
        ProbeAction::TcpSocket { port } => {
            matches!(tokio::time::timeout(probe.timeout, tokio::net::TcpStream::connect((context.address, *port))).await, Ok(Ok(_)))
        }
        ProbeAction::HttpGet { path, headers, port } => {
            let Some(port) = port else { return false };
            let mut request = hyper::Request::builder().uri(path.as_str()).header("user-agent", "shoal-probe/1.0");
            for (name, value) in headers {
                request = request.header(name.as_str(), value.as_str());
            }
            let Ok(request) = request.body(http_body_util::BodyExt::map_err(http_body_util::Empty::<bytes::Bytes>::new(), |never| -> shoal_runtime_wasm::HttpError { match never {} })) else { return false };
            let address = SocketAddr::new(context.address.into(), *port);
            match tokio::time::timeout(probe.timeout, crate::proxy::to_address(&context.shared, address, request)).await {
                Ok(response) => (200..400).contains(&response.status().as_u16()),
                Err(_) => false,
            }
        }
    }
}

/// Kills a container that failed its probe (its run ends; the restart policy decides the rest).
async fn kill(context: &ProbeContext) {
    let Some(runtime) = context.shared.containers.as_ref().and_then(|s| s.started()) else { return };
    if let Some(running) = runtime.containers.running(&context.spec).await {
        runtime.containers.stop(&running, Duration::from_secs(1)).await;
    }
}

/// Removes containers and pod networks of pods no longer bound to this node (deleted while the
/// agent was down, or left by a crash).
pub(crate) async fn remove_strays(shared: &Arc<Shared>, live: &[String]) {
    let Some(runtime) = shared.containers.as_ref().and_then(|s| s.started()) else { return };
    let working: HashSet<String> = shared.pods.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
    let keep = |uid: &str| live.iter().any(|l| l == uid) || working.contains(uid);
    match runtime.containers.list(None).await {
        Ok(containers) => {
            for (id, uid) in containers {
                if !keep(&uid) {
                    tracing::info!(id, pod_uid = %uid, "removing a container whose pod is gone");
                    runtime.containers.remove(&id).await;
                }
            }
        }
        Err(error) => tracing::debug!(%error, "listing containers"),
    }
    for uid in runtime.network.attached() {
        if !keep(&uid) {
            detach(shared, &uid).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_ids_are_valid_containerd_identifiers() {
        assert_eq!(container_id("0f6c-11aa", "web"), "0f6c11aa-web");
        let odd = container_id("uid", "a--b");
        assert!(odd.starts_with("uid-") && odd.len() == 16, "{odd}");
        assert!(container_id("uid", &"x".repeat(63)).len() <= 76);
    }

    #[test]
    fn resolv_conf_skips_loopback_servers() {
        let text = resolv_conf("apps", "nameserver 127.0.0.53\nnameserver 10.0.0.2\nsearch example.com\n");
        assert_eq!(text, "search apps.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.0.0.2\noptions ndots:5\n");
    }
}

//! shoal-node: the node agent. It registers its Node, renews its Lease, watches the pods bound to
//! it and runs them, Wasm components with the in-process Wasm runtime and OCI containers through
//! containerd ([`containers`]), reporting their status as Kubernetes does. Its data-plane
//! listener serves pods' HTTP components and their logs ([`dataplane`]).
//!
//! The agent talks to the control plane only through `shoal-client`, as a node on another
//! machine would.

mod containers;
pub mod dataplane;
pub mod hollow;
pub mod ingress;
mod metrics;
pub mod nodeports;
mod pods;
pub mod probes;
pub mod proxy;
pub mod reactors;
pub mod services;
pub mod spec;
pub mod status;
pub mod subpath;
pub mod tokens;
pub mod tunnel;
pub mod volumes;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use futures::StreamExt;
use serde_json::{Value, json};
use shoal_api::resources;
use shoal_client::{Client, ListOptions};
use shoal_oci::cache::ArtifactCache;
use shoal_runtime_wasm::{HttpHandler, LogSink, Runtime, RuntimeConfig};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Where the node looks for the machine's containerd by default.
pub use shoal_runtime_oci::DEFAULT_SOCKET as DEFAULT_CONTAINERD_SOCKET;
pub const DATA_ADDR_ANNOTATION: &str = "shoal.dev/data-addr";
/// Where this node's ingress router listens (HTTP and HTTPS), for clients and tests.
pub use shoal_api::ingress::INGRESS_ADDR_ANNOTATION;
pub const INGRESS_TLS_ADDR_ANNOTATION: &str = "shoal.dev/ingress-tls-addr";
const LEASE_RENEW: Duration = Duration::from_secs(2);
const NODE_STATUS_EVERY: Duration = Duration::from_secs(10);
const RESYNC_EVERY: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the node's runtime: {0}")]
    Runtime(#[from] shoal_runtime_wasm::Error),
    #[error("the node's artifact cache: {0}")]
    Cache(#[from] shoal_oci::Error),
    #[error("the control plane: {0}")]
    Client(#[from] shoal_client::Error),
    #[error("listening on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the data plane's {count} reactor threads: {source}")]
    Reactors {
        count: usize,
        #[source]
        source: std::io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to run a node.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    pub node_name: String,
    pub data_dir: PathBuf,
    /// `HOST:PORT` of the data-plane listener (port 0 picks one).
    pub data_addr: String,
    /// The API server's URL.
    pub server: String,
    /// The cluster CA (None: the system roots).
    pub ca_pem: Option<String>,
    /// The node's credential for the API and the built-in registry: its own
    /// (`system:node:NAME`), or the shared node token.
    pub token: String,
    /// The SHA-256 of the shared node token's secret: API servers present that token to the
    /// data plane (pod logs), and the node checks it against this hash without holding it.
    pub server_token_sha256: String,
    /// The artifact cache's budget in bytes.
    pub cache_bytes: u64,
    /// `HOST:PORT` of the ingress router's HTTP and HTTPS listeners (None: no ingress here).
    pub ingress_addr: Option<String>,
    pub ingress_tls_addr: Option<String>,
    /// The node's containerd socket (used when it exists; otherwise a private containerd is
    /// started if the binary is installed).
    pub containerd_socket: std::path::PathBuf,
    /// Run no OCI containers even if containerd is here.
    pub disable_containers: bool,
    /// The node's pod range for container pods (None: a /24 in 10.88.0.0/16 by the node's name).
    pub pod_cidr: Option<String>,
    /// Threads that own the data plane's, the ingress router's and the node ports' connections
    /// (see [`reactors`]); 0 serves them on the process's runtime. (The CLI's default is one
    /// per core.)
    pub reactor_threads: usize,
    /// The API server of this process (the local node of `shoal server` and `shoal up`): the
    /// agent's requests to `server` become calls instead of HTTPS.
    pub in_process: Option<shoal_client::InProcess>,
}

/// Where a pod's HTTP traffic for some ports goes.
#[derive(Clone)]
pub enum RouteTarget {
    /// A Wasm component, called in-process.
    Component(Arc<HttpHandler>),
    /// An OCI container listening at this address (the pod's address and the port).
    Container(SocketAddr),
}

/// A pod's HTTP endpoint, as the data plane finds it.
#[derive(Clone)]
pub struct HttpRoute {
    pub target: RouteTarget,
    pub ports: Vec<u16>,
}

impl HttpRoute {
    /// Requests being served now (containers: not counted, they drain on SIGTERM).
    pub fn in_flight(&self) -> usize {
        match &self.target {
            RouteTarget::Component(handler) => handler.in_flight(),
            RouteTarget::Container(_) => 0,
        }
    }

    /// Serves one request; `request`'s URI is the path and query.
    pub async fn handle<B>(&self, shared: &Shared, request: hyper::Request<B>, port: Option<u16>) -> hyper::Response<proxy::ProxyBody>
    where
        B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
        B::Error: Into<shoal_runtime_wasm::HttpError>,
    {
        match &self.target {
            RouteTarget::Component(handler) => handler.handle(request).await.0,
            RouteTarget::Container(address) => {
                let address = SocketAddr::new(address.ip(), port.filter(|p| self.ports.contains(p)).unwrap_or(address.port()));
                proxy::to_address(shared, address, request).await
            }
        }
    }
}

/// State shared by the agent's tasks.
pub struct Shared {
    pub(crate) client: Client,
    pub(crate) runtime: Arc<Runtime>,
    /// The container runtime, started on first use (None: this node runs Wasm only).
    pub(crate) containers: Option<containers::ContainerSupport>,
    pub(crate) cache: Arc<ArtifactCache>,
    pub(crate) config: NodeConfig,
    pub(crate) host_ip: String,
    pub(crate) token: String,
    /// The built-in registry, reached with the node token (one client, shared by every pull).
    /// The HTTPS client (cluster CA) for the built-in registry, served by every API server.
    pub(crate) builtin_registry_http: reqwest::Client,
    /// Running pod workers by uid.
    pub(crate) pods: Mutex<HashMap<String, pods::PodHandle>>,
    /// Pods whose graceful termination is under way, by uid.
    pub(crate) terminating: Mutex<std::collections::HashSet<String>>,
    /// HTTP routes by (namespace, pod name): one per HTTP container.
    pub(crate) routes: RwLock<HashMap<(String, String), Vec<HttpRoute>>>,
    /// What each running container uses, for `/_metrics`.
    pub(crate) metrics: metrics::Metrics,
    /// Log sinks by (namespace, pod name, container).
    pub(crate) logs: RwLock<HashMap<(String, String, String), LogSink>>,
    /// Pods with a network namespace here, by uid.
    pub(crate) pod_networks: RwLock<HashMap<String, containers::PodNet>>,
    /// The ConfigMaps and Secrets the pods' volumes are made from, followed while used.
    pub(crate) volume_sources: Arc<volumes::Sources>,
    /// Services and their endpoints, for the proxy.
    pub(crate) services: Arc<services::ServiceTable>,
    pub(crate) reactors: reactors::Reactors,
    pub(crate) router: Arc<ingress::Router>,
    /// Connections to other nodes' data planes.
    pub(crate) forwarder: hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, proxy::ProxyBody>,
    pub(crate) tasks: TaskTracker,
    pub(crate) shutdown: CancellationToken,
}

/// A running node agent.
pub struct NodeAgent {
    pub data_addr: SocketAddr,
    pub ingress_addr: Option<SocketAddr>,
    pub ingress_tls_addr: Option<SocketAddr>,
    shared: Arc<Shared>,
}

impl NodeAgent {
    /// Waits for every task after shutdown was requested.
    pub async fn wait(self) {
        self.shared.shutdown.cancelled().await;
        self.shared.tasks.close();
        self.shared.tasks.wait().await;
    }
}

fn machine_memory_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| text.lines().find_map(|l| l.strip_prefix("MemTotal:").map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))))
        .unwrap_or(0)
}

/// Starts the agent: the data plane, Node registration, the Lease and the pod loop.
async fn bind(address: &str) -> Result<(tokio::net::TcpListener, SocketAddr)> {
    let listener = tokio::net::TcpListener::bind(address).await.map_err(|source| Error::Bind { addr: address.to_owned(), source })?;
    let local = listener.local_addr().map_err(|source| Error::Bind { addr: address.to_owned(), source })?;
    Ok((listener, local))
}

pub async fn start(config: NodeConfig, shutdown: CancellationToken) -> Result<NodeAgent> {
    let (listener, data_addr) = bind(&config.data_addr).await?;
    let ingress = match &config.ingress_addr {
        Some(address) => Some(bind(address).await?),
        None => None,
    };
    let ingress_tls = match &config.ingress_tls_addr {
        Some(address) => Some(bind(address).await?),
        None => None,
    };
    let host_ip = match data_addr.ip() {
        ip if ip.is_unspecified() => "127.0.0.1".to_owned(),
        ip => ip.to_string(),
    };
    let mut client = Client::new(&config.server, config.ca_pem.as_deref(), Some(config.token.clone()))?;
    if let Some(in_process) = config.in_process.clone() {
        client = client.with_in_process(in_process);
    }
    let runtime = Runtime::new(RuntimeConfig::new(config.data_dir.join("compiled")))?;
    let cache = ArtifactCache::open(&config.data_dir.join("artifacts"), config.cache_bytes, shoal_oci::DEFAULT_MAX_ARTIFACT_BYTES)?;
    let builtin_registry_http = builtin_registry_http(&config)?;
    let containers = container_support(&config, &shutdown);
    // Instances kept for a reactor's idle moment hold pool slots: at most an eighth of the pool.
    let kept_instances = runtime.max_instances() / (8 * config.reactor_threads.max(1));
    let reactors = reactors::Reactors::start(config.reactor_threads, kept_instances).map_err(|source| Error::Reactors { count: config.reactor_threads, source })?;
    let shared = Arc::new(Shared {
        builtin_registry_http,
        client,
        runtime,
        containers,
        cache,
        token: config.token.clone(),
        config,
        host_ip,
        pods: Mutex::new(HashMap::new()),
        terminating: Mutex::new(std::collections::HashSet::new()),
        routes: RwLock::new(HashMap::new()),
        pod_networks: RwLock::new(HashMap::new()),
        logs: RwLock::new(HashMap::new()),
        metrics: metrics::Metrics::default(),
        services: services::ServiceTable::new(),
        volume_sources: Arc::default(),
        reactors,
        router: ingress::Router::new(),
        forwarder: proxy::forwarder(),
        tasks: TaskTracker::new(),
        shutdown: shutdown.clone(),
    });
    shared.tasks.spawn(dataplane::serve(Arc::clone(&shared), listener));
    start_networking(&shared, data_addr);
    let ingress_addr = ingress.as_ref().map(|(_, address)| *address);
    let ingress_tls_addr = ingress_tls.as_ref().map(|(_, address)| *address);
    if let Some((listener, _)) = ingress {
        shared.tasks.spawn(ingress::serve(Arc::clone(&shared), listener, None));
    }
    if let Some((listener, _)) = ingress_tls {
        let acceptor = ingress::tls_acceptor(Arc::clone(&shared.router.certificates));
        shared.tasks.spawn(ingress::serve(Arc::clone(&shared), listener, Some(acceptor)));
    }
    register(&shared, data_addr, ingress_addr, ingress_tls_addr).await?;
    shared.tasks.spawn(heartbeats(Arc::clone(&shared), data_addr));
    shared.tasks.spawn(discover_servers(shared.client.clone(), shared.shutdown.clone()));
    shared.tasks.spawn(pod_loop(Arc::clone(&shared)));
    shared.tasks.spawn(metrics::run(Arc::clone(&shared)));
    tracing::info!(node = %shared.config.node_name, %data_addr, ?ingress_addr, ?ingress_tls_addr, "node agent running");
    Ok(NodeAgent { data_addr, ingress_addr, ingress_tls_addr, shared })
}

/// The container runtime, if this node can have one: the node's containerd socket exists, or
/// the containerd binary is installed. It starts on first use, so a node that never runs a
/// container never starts a containerd.
fn container_support(config: &NodeConfig, shutdown: &CancellationToken) -> Option<containers::ContainerSupport> {
    if config.disable_containers {
        return None;
    }
    let pod_range = match config.pod_cidr.as_deref().map(shoal_runtime_oci::PodRange::parse) {
        Some(Ok(range)) => range,
        Some(Err(error)) => {
            tracing::error!(%error, "this node runs no containers");
            return None;
        }
        None => shoal_runtime_oci::PodRange::for_node(&config.node_name),
    };
    let runtime_config = shoal_runtime_oci::RuntimeConfig {
        socket: config.containerd_socket.clone(),
        data_dir: config.data_dir.clone(),
        pod_range,
        max_image_bytes: 4 << 30,
    };
    if !shoal_runtime_oci::ContainerRuntime::available(&runtime_config) {
        tracing::info!("no containerd on this node: it runs Wasm components only");
        return None;
    }
    Some(containers::ContainerSupport::new(runtime_config, shutdown.clone()))
}

/// The informers behind the Service proxy and the ingress router, and the node-port listeners
/// (bound on the data plane's address).
fn start_networking(shared: &Arc<Shared>, data_addr: SocketAddr) {
    use shoal_client::informer::Informer;
    let informer = |name: &str| Informer::new(resources::by_name(name).expect("networking kinds are served"));
    let (services, slices, nodes) = (informer("services"), informer("endpointslices"), informer("nodes"));
    // The router needs TLS Secrets only; the node mirrors no other kind of Secret.
    let secrets = Informer::with_field_selector(resources::by_name("secrets").expect("secrets are served"), "type=kubernetes.io/tls");
    let (ingresses, classes) = (informer("ingresses"), informer("ingressclasses"));
    shared.services.follow(&services, &slices, &nodes);
    shared.router.follow(&ingresses, &classes, &secrets);
    for informer in [services, slices, nodes, ingresses, classes, secrets] {
        shared.tasks.spawn(informer.run(shared.client.clone(), shared.shutdown.clone()));
    }
    shared.tasks.spawn(nodeports::run(Arc::clone(shared), data_addr.ip()));
    if let Some(support) = &shared.containers
        && support.used_before()
    {
        // Containers an earlier agent process left: start the runtime now to adopt or remove them.
        let shared = Arc::clone(shared);
        shared.clone().tasks.spawn(async move {
            if let Err(error) = containers::runtime(&shared).await {
                tracing::warn!(%error, "starting the container runtime");
            }
        });
    }
}

/// A client for the cluster's built-in registry: the API server's URL, the cluster CA, the node
/// token.
/// Learns the control plane's servers now and every 30 s, so that the node moves to another
/// server within seconds when its own dies (a highly-available control plane).
async fn discover_servers(client: Client, shutdown: tokio_util::sync::CancellationToken) {
    let mut known = 0;
    loop {
        match client.discover_servers().await {
            Ok(count) if count != known => {
                known = count;
                tracing::info!(servers = count, "control-plane servers known");
            }
            Ok(_) => {}
            Err(error) => tracing::debug!(%error, "learning the control-plane servers"),
        }
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(30)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}

fn builtin_registry_http(config: &NodeConfig) -> Result<reqwest::Client> {
    let transport = |detail: String| shoal_oci::Error::Transport { registry: shoal_oci::BUILT_IN_REGISTRY.into(), detail };
    let mut builder = reqwest::Client::builder().use_rustls_tls();
    if let Some(ca) = &config.ca_pem {
        let certificate = reqwest::Certificate::from_pem(ca.as_bytes()).map_err(|e| transport(e.to_string()))?;
        builder = builder.tls_built_in_root_certs(false).add_root_certificate(certificate);
    }
    Ok(builder.build().map_err(|e| transport(e.to_string()))?)
}

fn node_object(shared: &Shared, data_addr: SocketAddr, ingress: Option<SocketAddr>, ingress_tls: Option<SocketAddr>) -> Value {
    let name = &shared.config.node_name;
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH },
                "shoal.dev/wasm": "true",
                "shoal.dev/containers": if shared.containers.is_some() { "true" } else { "false" },
            },
            "annotations": node_annotations(data_addr, ingress, ingress_tls),
        },
        "spec": match &shared.containers {
            Some(support) => json!({"podCIDR": support.range().to_string(), "podCIDRs": [support.range().to_string()]}),
            None => json!({}),
        },
    })
}

fn node_annotations(data_addr: SocketAddr, ingress: Option<SocketAddr>, ingress_tls: Option<SocketAddr>) -> serde_json::Map<String, Value> {
    let mut annotations = serde_json::Map::new();
    annotations.insert(DATA_ADDR_ANNOTATION.into(), json!(data_addr.to_string()));
    if let Some(address) = ingress {
        annotations.insert(INGRESS_ADDR_ANNOTATION.into(), json!(address.to_string()));
    }
    if let Some(address) = ingress_tls {
        annotations.insert(INGRESS_TLS_ADDR_ANNOTATION.into(), json!(address.to_string()));
    }
    annotations
}

fn node_status(shared: &Shared, data_addr: SocketAddr, now: &str) -> Value {
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let memory = format!("{}Ki", machine_memory_kib());
    let resources = json!({"cpu": cpus.to_string(), "memory": memory, "pods": "1000"});
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
    let os_image = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned())))
        .unwrap_or_else(|| "Linux".into());
    let (major, minor, patch) = shoal_api::KUBERNETES_VERSION;
    json!({
        "capacity": resources,
        "allocatable": resources,
        "conditions": [{
            "type": "Ready", "status": "True", "reason": "KubeletReady", "message": "the shoal node agent is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now,
        }],
        "addresses": [{"type": "InternalIP", "address": shared.host_ip}, {"type": "Hostname", "address": shared.config.node_name}],
        "daemonEndpoints": {"kubeletEndpoint": {"Port": data_addr.port()}},
        "nodeInfo": {
            "machineID": "", "systemUUID": "", "bootID": "",
            "kernelVersion": kernel, "osImage": os_image,
            "containerRuntimeVersion": match shared.containers.as_ref().and_then(|s| s.started()) {
                Some(runtime) => format!("wasmtime://48,containerd://{}", runtime.version),
                None if shared.containers.is_some() => "wasmtime://48,containerd".to_owned(),
                None => "wasmtime://48".to_owned(),
            },
            "kubeletVersion": format!("v{major}.{minor}.{patch}-shoal.{}", env!("CARGO_PKG_VERSION")),
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": if std::env::consts::ARCH == "x86_64" { "amd64" } else { std::env::consts::ARCH },
        },
    })
}

/// Creates or updates this node's Node object and its status.
async fn register(shared: &Shared, data_addr: SocketAddr, ingress: Option<SocketAddr>, ingress_tls: Option<SocketAddr>) -> Result<()> {
    let nodes = resources::by_name("nodes").expect("nodes are served");
    let name = &shared.config.node_name;
    let desired = node_object(shared, data_addr, ingress, ingress_tls);
    let mut current = match shared.client.get(nodes, None, name).await {
        Ok(mut current) => {
            current["metadata"]["labels"] = desired["metadata"]["labels"].clone();
            if let Some(range) = desired["spec"].get("podCIDR") {
                current["spec"]["podCIDR"] = range.clone();
                current["spec"]["podCIDRs"] = desired["spec"]["podCIDRs"].clone();
            }
            for key in [INGRESS_ADDR_ANNOTATION, INGRESS_TLS_ADDR_ANNOTATION] {
                if let Some(annotations) = current["metadata"]["annotations"].as_object_mut() {
                    annotations.remove(key);
                }
            }
            for (key, value) in node_annotations(data_addr, ingress, ingress_tls) {
                current["metadata"]["annotations"][key] = value;
            }
            shared.client.replace(nodes, None, name, &current).await?
        }
        Err(shoal_client::Error::Api(status)) if status.code == 404 => shared.client.create(nodes, None, &desired, "shoal-node").await?,
        Err(other) => return Err(other.into()),
    };
    current["status"] = node_status(shared, data_addr, &shoal_api::meta::format_time(jiff::Timestamp::now()));
    shared.client.replace_status(nodes, None, name, &current).await?;
    Ok(())
}

/// Renews the node's Lease every 2 s and its Ready condition every 10 s.
async fn heartbeats(shared: Arc<Shared>, data_addr: SocketAddr) {
    let leases = resources::by_name("leases").expect("leases are served");
    let nodes = resources::by_name("nodes").expect("nodes are served");
    let name = shared.config.node_name.clone();
    let mut lease_timer = tokio::time::interval(LEASE_RENEW);
    let mut status_timer = tokio::time::interval(NODE_STATUS_EVERY);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = lease_timer.tick() => {
                let now = shoal_api::meta::format_micro_time(jiff::Timestamp::now());
                let lease = json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                    "metadata": {"name": name, "namespace": "kube-node-lease"},
                    "spec": {"holderIdentity": name, "leaseDurationSeconds": 40, "renewTime": now}});
                let outcome = match shared.client.get(leases, Some("kube-node-lease"), &name).await {
                    Ok(mut current) => {
                        current["spec"] = lease["spec"].clone();
                        shared.client.replace(leases, Some("kube-node-lease"), &name, &current).await.map(|_| ())
                    }
                    Err(shoal_client::Error::Api(status)) if status.code == 404 => shared.client.create(leases, Some("kube-node-lease"), &lease, "shoal-node").await.map(|_| ()),
                    Err(other) => Err(other),
                };
                if let Err(error) = outcome {
                    tracing::warn!(%error, "renewing the node lease");
                }
            }
            _ = status_timer.tick() => {
                if let Ok(mut current) = shared.client.get(nodes, None, &name).await {
                    current["status"] = node_status(&shared, data_addr, &shoal_api::meta::format_time(jiff::Timestamp::now()));
                    if let Err(error) = shared.client.replace_status(nodes, None, &name, &current).await {
                        tracing::warn!(%error, "updating the node's status");
                    }
                }
            }
        }
    }
}

/// Lists and watches the pods bound to this node, reconciling each change, and resyncs
/// periodically so a missed event heals.
async fn pod_loop(shared: Arc<Shared>) {
    let pods = resources::by_name("pods").expect("pods are served");
    let selector = format!("spec.nodeName={}", shared.config.node_name);
    loop {
        let options = ListOptions { field_selector: Some(selector.clone()), ..Default::default() };
        let (items, revision) = match shared.client.list_all(pods, None, &options).await {
            Ok(listed) => listed,
            Err(error) => {
                tracing::warn!(%error, "listing this node's pods");
                tokio::select! {
                    _ = shared.shutdown.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        let live: Vec<String> = items.iter().filter_map(|p| p["metadata"]["uid"].as_str().map(str::to_owned)).collect();
        pods::forget_missing(&shared, &live);
        containers::remove_strays(&shared, &live).await;
        for pod in items {
            pods::reconcile(&shared, pod);
        }
        let watch_options = ListOptions { field_selector: Some(selector.clone()), resource_version: Some(revision), timeout_seconds: Some(RESYNC_EVERY.as_secs()), ..Default::default() };
        let stream = match shared.client.watch(pods, None, &watch_options).await {
            Ok(stream) => stream,
            Err(error) => {
                tracing::warn!(%error, "watching this node's pods");
                continue;
            }
        };
        let mut stream = Box::pin(stream);
        loop {
            tokio::select! {
                _ = shared.shutdown.cancelled() => {
                    pods::stop_all(&shared).await;
                    return;
                }
                event = stream.next() => match event {
                    Some(Ok(event)) if event.event_type == "DELETED" => pods::stop(&shared, event.object["metadata"]["uid"].as_str().unwrap_or_default()),
                    Some(Ok(event)) if event.event_type == "ADDED" || event.event_type == "MODIFIED" => pods::reconcile(&shared, Arc::unwrap_or_clone(event.object)),
                    // Bookmarks, errors (410: re-list) and the end of the stream: re-list.
                    Some(Ok(event)) if event.event_type == "BOOKMARK" => {}
                    _ => break,
                }
            }
        }
    }
}

//! `shoal server` and `shoal up`: the control plane in the foreground.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use shoal_apiserver::{ApiServer, ApiServerConfig};
use tokio_util::sync::CancellationToken;

#[derive(Args)]
pub struct ServerCommandArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// Run the control plane only, without a local node.
    #[arg(long)]
    disable_node: bool,
}

#[derive(Args)]
pub struct ServerArgs {
    /// Where the store, certificates and kubeconfig live.
    #[arg(long, default_value = ".shoal")]
    data_dir: PathBuf,
    /// Address of the HTTPS API (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:6443")]
    api_addr: String,
    /// The built-in registry's size limit for one artifact, in bytes.
    #[arg(long, default_value_t = shoal_oci::DEFAULT_MAX_ARTIFACT_BYTES)]
    registry_max_artifact_bytes: u64,
    /// How long a node may go without renewing its Lease before it is marked unreachable and
    /// its pods are moved (seconds).
    #[arg(long, default_value_t = 6)]
    node_monitor_grace_period: u64,
    /// How often each HorizontalPodAutoscaler reads its pods' metrics and rescales (seconds).
    #[arg(long, default_value_t = 15)]
    horizontal_pod_autoscaler_sync_period: u64,
    /// The first delay before a failed Job pod is replaced (seconds; doubles per failure).
    #[arg(long, default_value_t = 10)]
    job_backoff_seconds: u64,
    /// Run the API only: no controllers and no scheduler in this process.
    #[arg(long)]
    disable_controllers: bool,
    /// The range Services' cluster IPs are given from.
    #[arg(long, default_value = "10.43.0.0/16", value_parser = shoal_apiserver::services::Cidr::parse)]
    service_cidr: shoal_apiserver::services::Cidr,
    /// The host (name or address) peers, agents and clients reach this server at; it is named
    /// in the serving certificate and recorded in the control-plane membership (default: the
    /// host of --api-addr, or 127.0.0.1 when that is 0.0.0.0).
    #[arg(long)]
    advertise_address: Option<String>,
    /// Join the cluster of the server at this URL (https://HOST:PORT) instead of starting a new
    /// one; needs --token.
    #[arg(long, requires = "token")]
    join: Option<String>,
    /// With --join: the cluster's server token (DATA_DIR/server-token on a member, or its bare
    /// secret). Without: the secret the new cluster's server token takes (default: random).
    #[arg(long, env = "SHOAL_SERVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The secret a new cluster's node token takes (default: random; DATA_DIR/node-token).
    #[arg(long, env = "SHOAL_AGENT_TOKEN", hide_env_values = true)]
    agent_token: Option<String>,
    /// Raft: snapshot the store and compact the log every this many entries.
    #[arg(long, hide = true)]
    raft_snapshot_entries: Option<u64>,
    /// Raft: log entries kept behind a snapshot, for peers that lag briefly.
    #[arg(long, hide = true)]
    raft_kept_entries: Option<u64>,
    /// Watch history: events always kept (at least).
    #[arg(long, default_value_t = 10_000, hide = true)]
    watch_history_min_events: usize,
    /// Watch history: seconds an event is kept even beyond the minimum count.
    #[arg(long, default_value_t = 300, hide = true)]
    watch_history_min_age_seconds: u64,
    /// Watch history: the hard cap on kept events.
    #[arg(long, default_value_t = 200_000, hide = true)]
    watch_history_max_events: usize,
}

/// The node a server or agent runs.
#[derive(Args, Clone)]
pub struct NodeArgs {
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// Address of the node's data plane (pods' HTTP and logs); port 0 picks one.
    #[arg(long, default_value = "127.0.0.1:10250")]
    data_addr: String,
    /// Bytes of artifacts the node keeps cached.
    #[arg(long, default_value_t = 2 * 1024 * 1024 * 1024)]
    artifact_cache_bytes: u64,
    /// Address of the node's HTTP ingress listener (port 0 picks one).
    #[arg(long, default_value = "0.0.0.0:8080")]
    ingress_addr: String,
    /// Address of the node's HTTPS ingress listener (certificates from the Ingresses' TLS Secrets).
    #[arg(long, default_value = "0.0.0.0:8443")]
    ingress_tls_addr: String,
    /// Run no ingress router on this node.
    #[arg(long)]
    disable_ingress: bool,
    /// The node's containerd socket, used when it exists; otherwise, if the containerd binary is
    /// installed, the node starts a private containerd under its data dir (on first use).
    #[arg(long, default_value = shoal_node::DEFAULT_CONTAINERD_SOCKET)]
    containerd_socket: PathBuf,
    /// Run no OCI containers on this node, even if containerd is here.
    #[arg(long)]
    disable_containers: bool,
    /// This node's range of pod addresses for pods with containers (default: a /24 in
    /// 10.88.0.0/16 picked by the node's name).
    #[arg(long)]
    pod_cidr: Option<String>,
    /// Threads that own the connections of the data plane, the ingress router and the node
    /// ports, each connection served wholly on one of them (default: one per core; 0 serves
    /// them on the threads the rest of the process shares). See benches/RESULTS.md for what
    /// each choice measured.
    #[arg(long)]
    data_plane_threads: Option<usize>,
}

impl NodeArgs {
    /// `--data-plane-threads`, or one reactor per core the process may run on.
    fn reactor_threads(&self) -> usize {
        self.data_plane_threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    fn name(&self) -> String {
        self.node_name.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_lowercase()).ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "shoal-node".into())
        })
    }
}

#[derive(Args)]
pub struct AgentArgs {
    /// The API server's URL, or several servers' URLs separated by commas (a highly-available
    /// control plane; the agent also learns the others from the first it reaches).
    #[arg(long)]
    server: String,
    /// The node token (`DATA_DIR/node-token` on the server, or its bare secret).
    #[arg(long, env = "SHOAL_NODE_TOKEN", hide_env_values = true)]
    token: String,
    /// The cluster CA (`DATA_DIR/pki/ca.crt` on the server). Without it, the agent fetches the
    /// CA from the server, checks it against the hash the token pins (`K1<hash>::…`), and keeps
    /// it in its data dir.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    #[arg(long, default_value = ".shoal-agent")]
    data_dir: PathBuf,
    #[command(flatten)]
    node: NodeArgs,
    /// Benchmarking: simulate this many nodes (`NODE_NAME-0` …) that register, renew their
    /// Leases and report bound pods Running without running them, like kubemark.
    #[arg(long, default_value_t = 0)]
    hollow_nodes: usize,
}

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[command(flatten)]
    node: NodeArgs,
    /// Manifests to apply once the API is up (default: the sample app).
    manifests: Vec<PathBuf>,
}

/// Registers SIGINT and SIGTERM handlers now (before anything starts, so a signal during start-up
/// also shuts down cleanly) and cancels `shutdown` when one arrives.
fn cancel_on_termination(shutdown: &CancellationToken) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut terminate = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut interrupt = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = shutdown.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        shutdown.cancel();
    });
    Ok(())
}

async fn start(args: &ServerArgs, shutdown: &CancellationToken) -> anyhow::Result<ApiServer> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let server = shoal_apiserver::start(ApiServerConfig {
        data_dir: args.data_dir.clone(),
        api_addr: args.api_addr.clone(),
        registry_max_artifact_bytes: args.registry_max_artifact_bytes,
        service_cidr: args.service_cidr,
        advertise_host: args.advertise_address.clone(),
        snapshot_every: args.raft_snapshot_entries,
        entries_kept_after_snapshot: args.raft_kept_entries,
        presets: shoal_apiserver::pki::Presets {
            server_secret: if args.join.is_none() { args.token.clone() } else { None },
            node_secret: args.agent_token.clone(),
        },
        join: match (&args.join, &args.token) {
            (Some(url), Some(token)) => Some(shoal_apiserver::JoinConfig { url: url.clone(), token: token.clone() }),
            _ => None,
        },
        watch_history: shoal_apiserver::HistoryLimits {
            min_events: args.watch_history_min_events,
            min_age: std::time::Duration::from_secs(args.watch_history_min_age_seconds),
            max_events: args.watch_history_max_events.max(args.watch_history_min_events),
        },
    }, shutdown.clone())
        .await
        .context("starting the API server")?;
    Ok(server)
}

/// Starts the controllers and the scheduler against the server's own API (admin credentials),
/// unless disabled. They run while this server holds the controller-manager Lease.
fn start_controllers(server: &ApiServer, args: &ServerArgs, shutdown: &CancellationToken) -> anyhow::Result<Option<shoal_controllers::ControllerManager>> {
    if args.disable_controllers {
        return Ok(None);
    }
    let client = shoal_client::Client::new(&server.loopback_url(), Some(&server.credentials.ca_pem), Some(server.credentials.admin_token.clone()))?
        .with_in_process(in_process(server));
    let mut settings = shoal_controllers::Settings::new(controller_identity(&args.data_dir)?);
    settings.node_monitor_grace_period = std::time::Duration::from_secs(args.node_monitor_grace_period.max(1));
    settings.job_backoff_base = std::time::Duration::from_secs(args.job_backoff_seconds);
    settings.autoscaler_sync_period = std::time::Duration::from_secs(args.horizontal_pod_autoscaler_sync_period.max(1));
    settings.root_ca_pem = Some(server.credentials.ca_pem.clone());
    Ok(Some(shoal_controllers::start(client, settings, shutdown.clone())))
}

/// The server as a call, for this process's own clients.
fn in_process(server: &ApiServer) -> shoal_client::InProcess {
    shoal_client::InProcess::new(&server.loopback_url(), server.call())
}

/// This server's stable identity for leader election, kept in the data directory: a restarted
/// server takes its Lease back at once instead of waiting for it to expire.
fn controller_identity(data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join("controller-identity");
    if let Ok(identity) = std::fs::read_to_string(&path)
        && !identity.trim().is_empty()
    {
        return Ok(identity.trim().to_owned());
    }
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_owned()).unwrap_or_default();
    let identity = format!("{}_{:016x}", if host.is_empty() { "shoal" } else { &host }, rand::random::<u64>());
    std::fs::write(&path, &identity).with_context(|| format!("writing {}", path.display()))?;
    Ok(identity)
}

async fn run_until_signal(server: Option<ApiServer>, node: Option<shoal_node::NodeAgent>, controllers: Option<shoal_controllers::ControllerManager>, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    shutdown.cancelled().await;
    tracing::info!("shutting down");
    if let Some(controllers) = controllers {
        controllers.wait().await;
    }
    if let Some(node) = node {
        node.wait().await;
    }
    if let Some(server) = server {
        server.wait().await;
    }
    Ok(ExitCode::SUCCESS)
}

async fn start_node(
    args: &NodeArgs,
    data_dir: PathBuf,
    server: String,
    ca_pem: Option<String>,
    credentials: NodeCredentials,
    in_process: Option<shoal_client::InProcess>,
    shutdown: &CancellationToken,
) -> anyhow::Result<shoal_node::NodeAgent> {
    let NodeCredentials { token, server_token_sha256 } = credentials;
    let config = shoal_node::NodeConfig {
        node_name: args.name(),
        data_dir,
        data_addr: args.data_addr.clone(),
        server,
        ca_pem,
        token,
        server_token_sha256,
        cache_bytes: args.artifact_cache_bytes,
        ingress_addr: (!args.disable_ingress).then(|| args.ingress_addr.clone()),
        ingress_tls_addr: (!args.disable_ingress).then(|| args.ingress_tls_addr.clone()),
        containerd_socket: args.containerd_socket.clone(),
        disable_containers: args.disable_containers,
        pod_cidr: args.pod_cidr.clone(),
        reactor_threads: args.reactor_threads(),
        in_process,
    };
    shoal_node::start(config, shutdown.clone()).await.context("starting the node agent")
}

/// The local node of a server: it talks to its own API in-process.
async fn start_local_node(server: &ApiServer, args: &NodeArgs, data_dir: &std::path::Path, shutdown: &CancellationToken) -> anyhow::Result<shoal_node::NodeAgent> {
    let url = server.loopback_url();
    let credentials = NodeCredentials { token: server.credentials.node_token.clone(), server_token_sha256: shoal_api::token::secret_sha256(&server.credentials.node_token) };
    start_node(args, data_dir.join("node"), url, Some(server.credentials.ca_pem.clone()), credentials, Some(in_process(server)), shutdown).await
}

/// What a node agent authenticates with: its credential for the API and the registry, and the
/// hash of the token the API servers present to its data plane.
struct NodeCredentials {
    token: String,
    server_token_sha256: String,
}

pub async fn run_server(args: ServerCommandArgs) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    cancel_on_termination(&shutdown)?;
    let server = start(&args.server, &shutdown).await?;
    eprintln!("shoal server: API at {} (kubeconfig {})", server.url, server.credentials.kubeconfig_path.display());
    let controllers = start_controllers(&server, &args.server, &shutdown)?;
    let node = if args.disable_node {
        None
    } else {
        match start_local_node(&server, &args.node, &args.server.data_dir, &shutdown).await {
            Ok(node) => Some(node),
            // A signal during start-up stops the API under the starting node: a clean stop.
            Err(_) if shutdown.is_cancelled() => None,
            Err(error) => return Err(error),
        }
    };
    if let Some(node) = &node {
        eprintln!("shoal server: node {} with its data plane at http://{}{}", args.node.name(), node.data_addr, ingress_note(node));
    }
    run_until_signal(Some(server), node, controllers, shutdown).await
}

pub async fn run_agent(args: AgentArgs) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    cancel_on_termination(&shutdown)?;
    let ca_pem = agent_ca(&args).await?;
    if args.hollow_nodes > 0 {
        // Hollow nodes stand for many nodes at once: they need the shared node token.
        anyhow::ensure!(
            !is_join_token(&args.token),
            "--hollow-nodes needs the shared node token (DATA_DIR/node-token on a server), not a join token"
        );
        let client = shoal_client::Client::new(&args.server, Some(&ca_pem), Some(args.token.clone()))?;
        let prefix = args.node.node_name.clone().unwrap_or_else(|| "hollow".into());
        let hollow = shoal_node::hollow::start(client, &prefix, args.hollow_nodes, shutdown.clone()).await.context("registering hollow nodes")?;
        eprintln!("shoal agent: {} hollow nodes ({prefix}-0 …) joined {}", args.hollow_nodes, args.server);
        shutdown.cancelled().await;
        hollow.wait().await;
        return Ok(ExitCode::SUCCESS);
    }
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let credentials = agent_credentials(&args, &ca_pem).await?;
    let node = start_node(&args.node, args.data_dir.clone(), args.server.clone(), Some(ca_pem), credentials, None, &shutdown).await?;
    eprintln!("shoal agent: node {} joined {}; data plane at http://{}{}", args.node.name(), args.server, node.data_addr, ingress_note(&node));
    run_until_signal(None, Some(node), None, shutdown).await
}

/// Whether `token` is a join token (`shoal token create`): `K1<CA hash>::<id>.<secret>`.
fn is_join_token(token: &str) -> bool {
    let secret = shoal_api::token::secret(token);
    secret.contains('.') && !secret.starts_with("node:")
}

/// The agent's credentials. `--token` (the shared node token, or a join token) is exchanged for
/// a credential of this node's own (`system:node:NAME`, which opens only what this node's agent
/// does), kept in the data dir as `node-token` with `server-token.sha256`. The shared node
/// token is exchanged again at every start (the earlier credential stops working); a join
/// token, which may have expired, only once, and the kept credential is used from then on.
async fn agent_credentials(args: &AgentArgs, ca_pem: &str) -> anyhow::Result<NodeCredentials> {
    let (kept_token, kept_hash) = (args.data_dir.join("node-token"), args.data_dir.join("server-token.sha256"));
    let name = args.node.name();
    let kept = || -> Option<NodeCredentials> {
        let token = std::fs::read_to_string(&kept_token).ok()?.trim().to_owned();
        let server_token_sha256 = std::fs::read_to_string(&kept_hash).ok()?.trim().to_owned();
        let own = shoal_api::token::secret(&token).strip_prefix("node:").and_then(|rest| rest.split_once(':')).is_some_and(|(node, _)| node == name);
        own.then_some(NodeCredentials { token, server_token_sha256 })
    };
    if is_join_token(&args.token)
        && let Some(credentials) = kept()
    {
        return Ok(credentials);
    }
    let server = args.server.split(',').next().unwrap_or_default().trim().trim_end_matches('/');
    let http = shoal_apiserver::cluster::client_trusting(ca_pem)?;
    let exchanged = async {
        let response = http
            .post(format!("{server}{}", shoal_apiserver::cluster::NODE_JOIN_PATH))
            .timeout(std::time::Duration::from_secs(10))
            .bearer_auth(&args.token)
            .json(&serde_json::json!({"nodeName": name}))
            .send()
            .await
            .with_context(|| format!("joining through {server}"))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            anyhow::bail!("joining through {server}: the token was refused ({status}: {}); a join token may have expired", text.trim());
        }
        let answer: serde_json::Value = response.json().await.context("decoding the join answer")?;
        let token = answer["nodeToken"].as_str().context("the join answer has no node credential")?.to_owned();
        let server_token_sha256 = answer["serverTokenSha256"].as_str().context("the join answer has no server token hash")?.to_owned();
        Ok(NodeCredentials { token, server_token_sha256 })
    }
    .await;
    let credentials = match exchanged {
        Ok(credentials) => credentials,
        // The servers are unreachable or refuse the shared token: a credential kept from an
        // earlier start still works if the cluster still knows it.
        Err(error) => match kept() {
            Some(credentials) => {
                eprintln!("shoal agent: {error:#}; using the node credential kept in {}", kept_token.display());
                return Ok(credentials);
            }
            None => return Err(error),
        },
    };
    shoal_apiserver::pki::write_private(&kept_token, &credentials.token)?;
    shoal_apiserver::pki::write_private(&kept_hash, &credentials.server_token_sha256)?;
    Ok(credentials)
}

/// The cluster CA for an agent: `--ca-file`, else the copy in its data dir, else fetched from
/// the (first) server and checked against the token.
async fn agent_ca(args: &AgentArgs) -> anyhow::Result<String> {
    if let Some(path) = &args.ca_file {
        return std::fs::read_to_string(path).with_context(|| format!("reading the cluster CA {}", path.display()));
    }
    let kept = args.data_dir.join("ca.crt");
    if let Ok(ca) = std::fs::read_to_string(&kept) {
        return Ok(ca);
    }
    let server = args.server.split(',').next().unwrap_or_default().trim();
    let ca = shoal_apiserver::cluster::fetch_ca(server, &args.token).await?;
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    std::fs::write(&kept, &ca).with_context(|| format!("writing {}", kept.display()))?;
    Ok(ca)
}

fn ingress_note(node: &shoal_node::NodeAgent) -> String {
    match (node.ingress_addr, node.ingress_tls_addr) {
        (Some(http), Some(https)) => format!("; ingress at http://{http} and https://{https}"),
        (Some(http), None) => format!("; ingress at http://{http}"),
        _ => String::new(),
    }
}

/// Builds the sample guests with `samples/build.sh` when the sample app is missing, so that a
/// fresh clone runs with nothing but the Rust toolchain.
fn ensure_samples(repository: &Path) -> anyhow::Result<()> {
    let script = repository.join("samples/build.sh");
    if repository.join("samples/hello/hello.wasm").exists() || !script.exists() {
        return Ok(());
    }
    eprintln!("shoal up: building the sample guests (samples/build.sh), once");
    let status = std::process::Command::new("bash").arg(&script).status().context("running samples/build.sh")?;
    anyhow::ensure!(status.success(), "samples/build.sh failed ({status})");
    Ok(())
}

const SAMPLE_WASM: &str = "samples/hello/hello.wasm";
const SAMPLE_IMAGE: &str = "shoal.local/samples/hello:latest";

pub async fn run_up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let manifests = if args.manifests.is_empty() { vec![PathBuf::from("samples/hello/hello.yaml")] } else { args.manifests.clone() };
    if args.manifests.is_empty() {
        ensure_samples(Path::new("."))?;
    }
    let shutdown = CancellationToken::new();
    cancel_on_termination(&shutdown)?;
    let server = start(&args.server, &shutdown).await?;
    let controllers = start_controllers(&server, &args.server, &shutdown)?;
    let node = start_local_node(&server, &args.node, &args.server.data_dir, &shutdown).await?;
    let kubeconfig = server.credentials.kubeconfig_path.clone();
    let client = shoal_client::Client::from_kubeconfig(&kubeconfig, None)?;
    if args.manifests.is_empty() {
        // The sample app's component goes to the built-in registry, where its pods pull it.
        let pushed = crate::artifact::push_file(&kubeconfig, None, Path::new(SAMPLE_WASM), SAMPLE_IMAGE, &Default::default()).await?;
        println!("pushed {} ({})", pushed.reference, pushed.digest);
    }
    for manifest in &manifests {
        let documents = crate::apply::read_manifests(manifest)?;
        for line in crate::apply::apply_documents(&client, &documents, None).await? {
            println!("{line}");
        }
    }
    println!("shoal is up: API {}", server.url);
    println!("kubeconfig: {}", kubeconfig.display());
    println!("try: cargo run --release -- get all   (or kubectl --kubeconfig {} get deployments)", kubeconfig.display());
    println!("node {}: data plane at http://{}{}", args.node.name(), node.data_addr, ingress_note(&node));
    if args.manifests.is_empty() {
        // The sample is ready once its rollout is: then its URL answers.
        let rollout = tokio::select! {
            outcome = crate::deploy::wait_for_rollout(&client, "default", "hello", std::time::Duration::from_secs(120)) => outcome,
            _ = shutdown.cancelled() => Ok(()),
        };
        match rollout {
            Ok(()) if !shutdown.is_cancelled() => println!("the sample app is serving at {}", crate::deploy::url(&client, "hello.localhost").await),
            Ok(()) => {}
            Err(error) => eprintln!("shoal up: the sample app did not roll out: {error:#}"),
        }
    }
    run_until_signal(Some(server), Some(node), controllers, shutdown).await
}

//! The `shoal` binary: argument parsing and dispatch to the server and client commands.

mod apply;
mod artifact;
mod cluster;
mod deploy;
mod describe;
mod get;
mod logging;
mod logs;
mod output;
mod port_forward;
mod server;
mod top;
mod workloads;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use shoal_client::Client;

/// jemalloc rather than glibc's malloc: the Raft group's writes and the Wasm data path measured a
/// few percent faster with it, and a server holding many objects smaller (benches/RESULTS.md,
/// session 31).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Parser)]
#[command(name = "shoal", version, about = "Run WebAssembly workloads with Kubernetes' model, in one binary")]
struct Cli {
    /// Path to the kubeconfig (otherwise $KUBECONFIG, then ./.shoal/admin.kubeconfig).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    /// API server URL, overriding the kubeconfig's.
    #[arg(long, global = true)]
    server: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the control plane (and a local node) in the foreground.
    Server(server::ServerCommandArgs),
    /// Run a node agent that joins a cluster.
    Agent(server::AgentArgs),
    /// Run a single-node development cluster and apply manifests (default: the sample app).
    Up(server::UpArgs),
    /// Create or update objects from manifests.
    Apply(apply::ApplyArgs),
    /// Deploy a wasi:http component: push it, create its Deployment, Service and Ingress, wait for
    /// the rollout and print its URL.
    Deploy(deploy::DeployArgs),
    /// List or show objects.
    Get(get::GetArgs),
    /// Serve a pod's HTTP port on a local port, through its node.
    PortForward(port_forward::PortForwardArgs),
    /// Print a pod's container logs.
    Logs(logs::LogsArgs),
    /// CPU and memory of pods or nodes (from metrics.k8s.io).
    Top {
        #[command(subcommand)]
        what: top::TopCommand,
    },
    /// Show an object in detail, with its events.
    Describe(describe::DescribeArgs),
    /// Delete objects by kind and name, or those in manifests.
    Delete(apply::DeleteArgs),
    /// Push a .wasm file as an OCI artifact (CNCF Wasm format) and print its digest.
    Push(artifact::PushArgs),
    /// Pull a Wasm artifact into a file.
    Pull(artifact::PullArgs),
    /// Manage the built-in registry's artifacts.
    Artifact {
        #[command(subcommand)]
        what: artifact::ArtifactCommand,
    },
    /// Set a Deployment's or ReplicaSet's replica count.
    Scale(workloads::ScaleArgs),
    /// Watch, list or undo a Deployment's rollouts.
    Rollout {
        #[command(subcommand)]
        what: workloads::RolloutCommand,
    },
    /// Change fields of a workload imperatively.
    Set {
        #[command(subcommand)]
        what: SetCommand,
    },
    /// Mark a node unschedulable.
    Cordon(workloads::NodeArgs),
    /// Mark a node schedulable again.
    Uncordon(workloads::NodeArgs),
    /// Cordon a node and evict its pods (their owners recreate them elsewhere).
    Drain(workloads::DrainArgs),
    /// Show or change the control-plane group (highly-available servers).
    Cluster {
        #[command(subcommand)]
        what: cluster::ClusterCommand,
    },
    /// Create, list or delete join tokens for servers and nodes.
    Token {
        #[command(subcommand)]
        what: cluster::TokenCommand,
    },
    /// Create an object imperatively.
    Create {
        #[command(subcommand)]
        what: CreateCommand,
    },
}

#[derive(Subcommand)]
enum SetCommand {
    /// Set container images: `shoal set image deployment/NAME CONTAINER=IMAGE`.
    Image(workloads::SetImageArgs),
}

#[derive(Subcommand)]
enum CreateCommand {
    /// Create a namespace.
    Namespace { name: String },
}

/// Finds the kubeconfig as documented on `--kubeconfig`.
fn kubeconfig_path(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()).map(|v| {
        // Like kubectl, take the first file of a colon-separated list.
        PathBuf::from(v.to_string_lossy().split(':').next().unwrap_or_default().to_owned())
    }))
    .unwrap_or_else(|| PathBuf::from(".shoal/admin.kubeconfig"))
}

fn client(cli_kubeconfig: Option<PathBuf>, server: Option<&str>) -> anyhow::Result<Client> {
    let path = kubeconfig_path(cli_kubeconfig);
    Ok(Client::from_kubeconfig(&path, server)?)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let is_server = matches!(cli.command, Command::Server(_) | Command::Up(_) | Command::Agent(_));
    logging::init(is_server);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(error) => {
            output::print_error(&error);
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let server = cli.server.as_deref();
    match cli.command {
        Command::Server(args) => server::run_server(args).await,
        Command::Up(args) => server::run_up(args).await,
        Command::Agent(args) => server::run_agent(args).await,
        Command::PortForward(args) => port_forward::port_forward(&client(cli.kubeconfig, server)?, args).await,
        Command::Logs(args) => logs::logs(&client(cli.kubeconfig, server)?, args).await,
        Command::Top { what } => top::top(&client(cli.kubeconfig, server)?, what).await,
        Command::Apply(args) => apply::apply(&client(cli.kubeconfig, server)?, args).await,
        Command::Get(args) => get::get(&client(cli.kubeconfig, server)?, args).await,
        Command::Describe(args) => describe::describe(&client(cli.kubeconfig, server)?, args).await,
        Command::Delete(args) => apply::delete(&client(cli.kubeconfig, server)?, args).await,
        Command::Deploy(args) => deploy::deploy(&kubeconfig_path(cli.kubeconfig), server, args).await,
        Command::Push(args) => artifact::push(&kubeconfig_path(cli.kubeconfig), server, args).await,
        Command::Pull(args) => artifact::pull(&kubeconfig_path(cli.kubeconfig), server, args).await,
        Command::Scale(args) => workloads::scale(&client(cli.kubeconfig, server)?, args).await,
        Command::Rollout { what } => workloads::rollout(&client(cli.kubeconfig, server)?, what).await,
        Command::Set { what: SetCommand::Image(args) } => workloads::set_image(&client(cli.kubeconfig, server)?, args).await,
        Command::Cordon(args) => workloads::cordon(&client(cli.kubeconfig, server)?, args, true).await,
        Command::Uncordon(args) => workloads::cordon(&client(cli.kubeconfig, server)?, args, false).await,
        Command::Drain(args) => workloads::drain(&client(cli.kubeconfig, server)?, args).await,
        Command::Token { what } => cluster::token(&client(cli.kubeconfig, server)?, what).await,
        Command::Cluster { what } => cluster::cluster(&client(cli.kubeconfig, server)?, what).await,
        Command::Artifact { what } => artifact::artifact(&kubeconfig_path(cli.kubeconfig), server, what).await,
        Command::Create { what: CreateCommand::Namespace { name } } => {
            let client = client(cli.kubeconfig, server)?;
            let info = shoal_api::resources::by_name("namespace").expect("namespaces are served");
            let object = serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}});
            client.create(info, None, &object, "shoal-create").await?;
            println!("namespace/{name} created");
            Ok(ExitCode::SUCCESS)
        }
    }
}

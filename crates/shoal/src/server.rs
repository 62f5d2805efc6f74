//! `shoal server` and `shoal up`: the control plane in the foreground.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use shoal_apiserver::{ApiServer, ApiServerConfig};
use tokio_util::sync::CancellationToken;

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

#[derive(Args)]
pub struct UpArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Manifests to apply once the API is up (default: the sample app).
    manifests: Vec<PathBuf>,
}

/// Resolves on SIGINT or SIGTERM.
async fn termination_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = interrupt => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = interrupt.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}

async fn start(args: &ServerArgs, shutdown: &CancellationToken) -> anyhow::Result<ApiServer> {
    std::fs::create_dir_all(&args.data_dir).with_context(|| format!("creating {}", args.data_dir.display()))?;
    let server = shoal_apiserver::start(ApiServerConfig {
        data_dir: args.data_dir.clone(),
        api_addr: args.api_addr.clone(),
        registry_max_artifact_bytes: args.registry_max_artifact_bytes,
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

async fn run_until_signal(server: ApiServer, shutdown: CancellationToken) -> anyhow::Result<ExitCode> {
    termination_signal().await;
    tracing::info!("shutting down");
    shutdown.cancel();
    server.wait().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn run_server(args: ServerArgs) -> anyhow::Result<ExitCode> {
    let shutdown = CancellationToken::new();
    let server = start(&args, &shutdown).await?;
    eprintln!("shoal server: API at {} (kubeconfig {})", server.url, server.credentials.kubeconfig_path.display());
    run_until_signal(server, shutdown).await
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

pub async fn run_up(args: UpArgs) -> anyhow::Result<ExitCode> {
    let manifests = if args.manifests.is_empty() { vec![PathBuf::from("samples/hello/hello.yaml")] } else { args.manifests.clone() };
    if args.manifests.is_empty() {
        ensure_samples(Path::new("."))?;
    }
    let shutdown = CancellationToken::new();
    let server = start(&args.server, &shutdown).await?;
    let kubeconfig = server.credentials.kubeconfig_path.clone();
    let client = shoal_client::Client::from_kubeconfig(&kubeconfig, None)?;
    for manifest in &manifests {
        let documents = crate::apply::read_manifests(manifest)?;
        for line in crate::apply::apply_documents(&client, &documents, None).await? {
            println!("{line}");
        }
    }
    println!("shoal is up: API {}", server.url);
    println!("kubeconfig: {}", kubeconfig.display());
    println!("try: cargo run --release -- get all   (or kubectl --kubeconfig {} get deployments)", kubeconfig.display());
    println!("note: this build runs the control plane only; pods stay Pending until a node agent runs them.");
    run_until_signal(server, shutdown).await
}

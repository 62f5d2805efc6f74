//! shoal-controllers: the controllers and the scheduler. Everything here talks to the control
//! plane only through [`shoal_client`], so it can run in any process; today `shoal server`
//! runs it, gated by a leader Lease so that several servers run it exactly once.
//!
//! Each controller is a [`harness::Reconciler`] over shared [`informer::Informer`] caches; its
//! decisions are pure functions where they are intricate (placement, rollout arithmetic, cron
//! schedules) with table-driven tests next to them.

pub mod autoscaler;
pub mod clusterroles;
pub mod cronjob;
pub mod daemonset;
pub mod deployment;
pub mod endpoints;
pub mod events;
pub mod gc;
pub mod harness;
pub mod ingress_status;
pub use shoal_client::informer;
pub mod job;
pub mod leader;
pub mod node_lifecycle;
pub mod pods;
pub mod queue;
pub mod replicaset;
pub mod scheduler;
pub mod serviceaccounts;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_api::resources::{RESOURCES, ResourceInfo};
use shoal_client::Client;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::events::Recorder;
use crate::harness::RunOptions;
use crate::informer::Informer;

/// Settings of the controllers (their command-line flags).
#[derive(Debug, Clone)]
pub struct Settings {
    /// How long a node may go without renewing its Lease before it is marked unreachable.
    pub node_monitor_grace_period: Duration,
    /// The first delay before a failed Job pod is replaced; it doubles per failure, up to 6 min.
    pub job_backoff_base: Duration,
    /// The identity this process holds the leader Lease under.
    pub identity: String,
    /// How often each HorizontalPodAutoscaler reads its metrics and rescales.
    pub autoscaler_sync_period: Duration,
    /// The cluster's CA certificate (PEM), published in every namespace as the
    /// `kube-root-ca.crt` ConfigMap; nothing is published when `None`.
    pub root_ca_pem: Option<String>,
}

impl Settings {
    pub fn new(identity: impl Into<String>) -> Self {
        Self { node_monitor_grace_period: Duration::from_secs(6), job_backoff_base: Duration::from_secs(10), identity: identity.into(), autoscaler_sync_period: Duration::from_secs(15), root_ca_pem: None }
    }
}

/// One informer per served kind (Events excepted), shared by every controller.
pub struct Informers {
    by_kind: HashMap<&'static str, Arc<Informer>>,
}

impl Informers {
    fn new() -> Self {
        let by_kind = RESOURCES.iter().filter(|r| r.kind != "Event").map(|r| (r.kind, Informer::new(r))).collect();
        Self { by_kind }
    }

    pub fn get(&self, kind: &str) -> &Arc<Informer> {
        self.by_kind.get(kind).unwrap_or_else(|| panic!("no informer for {kind}: every served kind but Event has one"))
    }

    /// The informer of `kind`, if that kind is served (owner references may name any kind).
    pub fn find(&self, kind: &str) -> Option<&Arc<Informer>> {
        self.by_kind.get(kind)
    }

    pub fn all(&self) -> impl Iterator<Item = &Arc<Informer>> {
        self.by_kind.values()
    }
}

/// What every controller gets.
pub struct Context {
    pub client: Client,
    pub informers: Informers,
    pub recorder: Recorder,
    pub settings: Settings,
}

/// The served kind `kind`; only called with the kinds this crate controls, all of which are served.
pub fn info(kind: &str) -> &'static ResourceInfo {
    info_for_kind(kind).unwrap_or_else(|| panic!("{kind} is a served kind"))
}

/// The running controller manager.
pub struct ControllerManager {
    task: tokio::task::JoinHandle<()>,
}

impl ControllerManager {
    /// Waits for the controllers to stop (after the shutdown token fires).
    pub async fn wait(self) {
        let _ = self.task.await;
    }
}

/// Starts leader election; while this process leads, every controller and the scheduler run.
pub fn start(client: Client, settings: Settings, shutdown: CancellationToken) -> ControllerManager {
    let lease = leader::LeaseConfig::new(settings.identity.clone());
    let task = tokio::spawn(leader::run(client.clone(), lease, shutdown, move |leading| run_all(client.clone(), settings.clone(), leading)));
    ControllerManager { task }
}

async fn run_all(client: Client, settings: Settings, shutdown: CancellationToken) {
    let tasks = TaskTracker::new();
    let (recorder, writer) = Recorder::start(client.clone(), "shoal-controller-manager", shutdown.clone());
    tasks.spawn(writer);
    let context = Arc::new(Context { client: client.clone(), informers: Informers::new(), recorder, settings });
    let resync = |seconds| RunOptions { workers: 2, resync: Duration::from_secs(seconds) };

    // Handlers are registered before the informers start, so no event is missed.
    let replica_sets = replicaset::ReplicaSetController::register(&context);
    let deployments = deployment::DeploymentController::register(&context);
    let jobs = job::JobController::register(&context);
    let cron_jobs = cronjob::CronJobController::register(&context);
    let daemon_sets = daemonset::DaemonSetController::register(&context);
    let garbage = gc::GarbageCollector::register(&context);
    let node_lifecycle = node_lifecycle::NodeLifecycleController::register(&context);
    let endpoints = endpoints::EndpointsController::register(&context);
    let ingress_status = ingress_status::IngressStatusController::register(&context);
    let autoscalers = autoscaler::AutoscalerController::register(&context);
    let service_accounts = serviceaccounts::ServiceAccountController::register(&context);
    let tokens = serviceaccounts::TokensController::register(&context);
    let cluster_roles = clusterroles::ClusterRoleAggregationController::register(&context);

    let informers = &context.informers;
    let scheduler_pods = Arc::clone(informers.get("Pod"));
    let scheduler_nodes = Arc::clone(informers.get("Node"));
    tasks.spawn(scheduler::run(client.clone(), scheduler_pods, scheduler_nodes, context.recorder.clone(), shutdown.clone()));
    for informer in context.informers.all() {
        tasks.spawn(Arc::clone(informer).run(client.clone(), shutdown.clone()));
    }
    replica_sets.spawn(&tasks, RunOptions { workers: 4, resync: Duration::from_secs(30) }, shutdown.clone());
    deployments.spawn(&tasks, RunOptions { workers: 4, resync: Duration::from_secs(30) }, shutdown.clone());
    jobs.spawn(&tasks, resync(30), shutdown.clone());
    cron_jobs.spawn(&tasks, resync(30), shutdown.clone());
    daemon_sets.spawn(&tasks, resync(30), shutdown.clone());
    garbage.spawn(&tasks, RunOptions { workers: 4, resync: Duration::from_secs(60) }, shutdown.clone());
    node_lifecycle.spawn(&tasks, shutdown.clone());
    endpoints.spawn(&tasks, RunOptions { workers: 4, resync: Duration::from_secs(30) }, shutdown.clone());
    ingress_status.spawn(&tasks, resync(60), shutdown.clone());
    // Each autoscaler requeues itself every sync period; the resync is only a safety net.
    autoscalers.spawn(&tasks, resync(60), shutdown.clone());
    service_accounts.spawn(&tasks, resync(300), shutdown.clone());
    tokens.spawn(&tasks, resync(300), shutdown.clone());
    cluster_roles.spawn(&tasks, resync(300), shutdown.clone());

    shutdown.cancelled().await;
    tasks.close();
    // Every task watches the token; a request stuck on a server that is going away must
    // still not hold up the process, so the wait is bounded.
    if tokio::time::timeout(Duration::from_secs(10), tasks.wait()).await.is_err() {
        tracing::warn!("controllers did not stop within 10 s of shutdown; leaving them");
    }
}

/// Registers a harness-driven controller: its queue is fed by handlers the constructor adds.
pub struct Registered<R: harness::Reconciler> {
    reconciler: Arc<R>,
    queue: Arc<queue::WorkQueue>,
    resync: Vec<harness::ResyncSource>,
}

impl<R: harness::Reconciler> Registered<R> {
    pub fn new(reconciler: R, queue: Arc<queue::WorkQueue>, primary: &Arc<Informer>) -> Self {
        Self { reconciler: Arc::new(reconciler), queue, resync: harness::ResyncSource::of(primary) }
    }

    pub fn spawn(self, tasks: &TaskTracker, options: RunOptions, shutdown: CancellationToken) {
        harness::spawn(tasks, self.reconciler, self.queue, self.resync, options, shutdown);
    }
}

/// The served kind named `kind`, if any.
pub fn info_for_kind(kind: &str) -> Option<&'static ResourceInfo> {
    RESOURCES.iter().find(|r| r.kind == kind)
}

//! shoal-runtime-wasm: runs Wasm workloads inside the node agent's process.
//!
//! One wasmtime [`Engine`] per node, with the pooling allocator, copy-on-write memory images and
//! epoch interruption. Artifacts are compiled off the request path, under a size cap and a time
//! budget, and the compiled code is cached on disk by artifact digest and the engine's
//! compatibility hash, so neither a restart nor a second pod of the same artifact recompiles.
//! Three kinds of workload are detected from the artifact:
//! [`Workload::Http`] (a component exporting `wasi:http/incoming-handler`, a fresh instance per
//! request), [`Workload::Command`] (a component exporting `wasi:cli/run`) and
//! [`Workload::Preview1`] (a core module with `_start`). The runtime knows nothing about the API
//! server: the node hands it resolved [`SandboxSpec`]s.

mod cache;
mod command;
mod http;
mod latency;
mod outgoing;
mod sandbox;
mod usage;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

pub use command::{CommandOutcome, run_command};
pub use http::{HttpHandler, HttpOutcome, MAX_KEPT_INSTANCES, ResponseBody, defer_instance_drops, drop_retired, kept_instances};
/// The error type of guest response bodies.
pub type BodyError = wasmtime_wasi_http::Error;
pub use usage::Usage;
pub use sandbox::{CpuLimit, LogLine, LogSink, OutboundFuture, OutboundHttp, Preopen, SandboxSpec, Stream};
pub use wasmtime_wasi_http::{Error as HttpError, WasiBody};

/// How long one epoch tick is: the granularity of time budgets.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("the artifact is {0} bytes, over the runtime's limit of {1} bytes")]
    TooLarge(usize, usize),
    #[error("compiling took longer than the {0:?} budget")]
    CompileTimeout(Duration),
    #[error("the artifact cannot be compiled: {0}")]
    Compile(String),
    #[error("the artifact cannot be linked (it imports something this node does not provide): {0}")]
    Link(String),
    #[error("the artifact is neither a wasi:http component, a wasi:cli command nor a WASI preview 1 module with _start")]
    NotRunnable,
    #[error("the artifact is a WASIp3 component ({0}); this node runs WASI 0.2 components and preview 1 modules")]
    Preview3(String),
    #[error("starting the sandbox: {0}")]
    Sandbox(String),
    #[error("io on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the engine: {0}")]
    Engine(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How to build the node's runtime.
#[derive(Clone, Debug)]
pub struct RuntimeConfig {
    /// Where compiled artifacts are cached.
    pub cache_dir: PathBuf,
    /// The largest artifact accepted for compilation.
    pub max_artifact_bytes: usize,
    /// How long compilation may take.
    pub compile_budget: Duration,
    /// Instances that may be live at once on this node (the pool's size).
    pub max_instances: u32,
    /// The largest linear memory any instance may have (per-pod limits are lower).
    pub max_memory_bytes: usize,
    /// The guest's Wasm stack limit; kept well under the host's async stack.
    pub max_wasm_stack: usize,
    /// Bytes of each pooled linear memory kept resident between instances (reset by memset, not
    /// returned to the kernel).
    pub keep_resident_bytes: usize,
}

impl RuntimeConfig {
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            cache_dir,
            max_artifact_bytes: 64 * 1024 * 1024,
            compile_budget: Duration::from_secs(60),
            max_instances: 1000,
            max_memory_bytes: 1024 * 1024 * 1024,
            max_wasm_stack: 512 * 1024,
            keep_resident_bytes: 2 * 1024 * 1024,
        }
    }
}

/// A loaded artifact, ready to run as its kind of workload. Cloning shares it.
#[derive(Clone)]
pub enum Workload {
    Http(Arc<http::Prepared>),
    Command(Arc<command::PreparedCommand>),
    Preview1(Arc<command::PreparedModule>),
}

impl Workload {
    pub fn kind(&self) -> &'static str {
        match self {
            Workload::Http(_) => "http",
            Workload::Command(_) => "command",
            Workload::Preview1(_) => "preview1",
        }
    }
}

/// An engine's epoch clock: a thread that advances the epoch every [`EPOCH_TICK`] while any
/// guest runs, so that each running store can check its deadline, and sleeps while none does.
///
/// An idle node's clock used to tick anyway, a thousand wake-ups a second. On a 2-core VM that
/// was about 2% of a core, nine tenths of an idle server's CPU (session 29). Now every run of a
/// guest holds a [`Running`] from before it instantiates until it has returned, and the thread
/// parks when the last one ends. The first new run wakes it, so the epoch moves again within a
/// tick of any guest starting: a budget or CPU limit is checked as before.
pub(crate) struct EpochClock {
    running: AtomicUsize,
    ticks: AtomicU64,
    stop: AtomicBool,
    thread: OnceLock<std::thread::Thread>,
}

/// A guest run the epoch clock ticks for (see [`EpochClock`]).
pub(crate) struct Running(Arc<EpochClock>);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::SeqCst);
    }
}

impl EpochClock {
    fn start(engine: Engine) -> Result<Arc<Self>> {
        let clock = Arc::new(Self { running: AtomicUsize::new(0), ticks: AtomicU64::new(0), stop: AtomicBool::new(false), thread: OnceLock::new() });
        let ticking = Arc::clone(&clock);
        let thread = std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !ticking.stop.load(Ordering::SeqCst) {
                    // A run that starts between this check and the park unparks first, and the
                    // park then returns at once.
                    if ticking.running.load(Ordering::SeqCst) == 0 {
                        std::thread::park();
                        continue;
                    }
                    std::thread::sleep(EPOCH_TICK);
                    engine.increment_epoch();
                    ticking.ticks.fetch_add(1, Ordering::Relaxed);
                }
            })
            .map_err(|source| Error::Io { path: PathBuf::from("wasm-epoch thread"), source })?;
        let _ = clock.thread.set(thread.thread().clone());
        Ok(clock)
    }

    /// Marks a guest run as under way until the returned value is dropped.
    pub(crate) fn running(self: &Arc<Self>) -> Running {
        if self.running.fetch_add(1, Ordering::SeqCst) == 0 {
            self.wake();
        }
        Running(Arc::clone(self))
    }

    fn wake(&self) {
        if let Some(thread) = self.thread.get() {
            thread.unpark();
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        self.wake();
    }
}

/// The node's Wasm runtime: one engine, its linkers and its compile cache.
pub struct Runtime {
    engine: Engine,
    config: RuntimeConfig,
    clock: Arc<EpochClock>,
    /// Loaded workloads by digest, shared by every pod of the same artifact (one compiled
    /// component and one `InstancePre` however many pods run it).
    loaded: std::sync::Mutex<std::collections::HashMap<String, Workload>>,
    /// One load at a time per digest, so pods starting together share one compile and one copy.
    loading: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Drop for Runtime {
    fn drop(&mut self) {
        self.clock.stop();
    }
}

impl Runtime {
    pub fn new(config: RuntimeConfig) -> Result<Arc<Self>> {
        std::fs::create_dir_all(&config.cache_dir).map_err(|source| Error::Io { path: config.cache_dir.clone(), source })?;
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(config.max_instances);
        // A component holds a few core instances, memories and tables.
        pool.total_core_instances(config.max_instances * 4);
        pool.total_memories(config.max_instances * 2);
        pool.total_tables(config.max_instances * 4);
        pool.total_stacks(config.max_instances);
        pool.max_memory_size(config.max_memory_bytes);
        // Resetting a slot with madvise makes the kernel shoot down TLBs on every CPU, once per
        // instance: under load that dominated the profile. Keep the first pages resident and
        // reset them with memset (only the pages actually touched, where the kernel can scan
        // them), and batch the decommits that remain.
        pool.linear_memory_keep_resident(config.keep_resident_bytes);
        pool.table_keep_resident(64 * 1024);
        pool.decommit_batch_size(64);
        pool.pagemap_scan(wasmtime::Enabled::Auto);
        let mut wasmtime_config = Config::new();
        wasmtime_config
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool))
            .epoch_interruption(true)
            .max_wasm_stack(config.max_wasm_stack)
            .async_stack_size(config.max_wasm_stack + 2 * 1024 * 1024)
            .wasm_component_model(true)
            .memory_init_cow(true);
        let engine = Engine::new(&wasmtime_config).map_err(|e| Error::Engine(e.to_string()))?;
        let clock = EpochClock::start(engine.clone())?;
        Ok(Arc::new(Self { engine, config, clock, loaded: Default::default(), loading: Default::default() }))
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// How many times the epoch clock has ticked: it ticks only while a guest runs.
    pub fn epoch_ticks(&self) -> u64 {
        self.clock.ticks.load(Ordering::Relaxed)
    }

    /// How many component instances the pool holds at once.
    pub fn max_instances(&self) -> usize {
        self.config.max_instances as usize
    }

    /// Loads the artifact `digest` from `wasm_path`: from the compile cache when possible, else
    /// compiled off the async workers within the budget. Detects the kind of workload.
    pub async fn load(self: &Arc<Self>, digest: &str, wasm_path: &Path) -> Result<Workload> {
        if let Some(workload) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(digest) {
            return Ok(workload.clone());
        }
        let gate = Arc::clone(self.loading.lock().unwrap_or_else(|p| p.into_inner()).entry(digest.to_owned()).or_default());
        let _guard = gate.lock().await;
        if let Some(workload) = self.loaded.lock().unwrap_or_else(|p| p.into_inner()).get(digest) {
            return Ok(workload.clone());
        }
        let workload = self.load_uncached(digest, wasm_path).await;
        self.loading.lock().unwrap_or_else(|p| p.into_inner()).remove(digest);
        let workload = workload?;
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).insert(digest.to_owned(), workload.clone());
        Ok(workload)
    }

    /// Forgets loaded workloads no pod holds any more.
    pub fn release_unused(&self) {
        self.loaded.lock().unwrap_or_else(|p| p.into_inner()).retain(|_, workload| match workload {
            Workload::Http(prepared) => Arc::strong_count(prepared) > 1,
            Workload::Command(prepared) => Arc::strong_count(prepared) > 1,
            Workload::Preview1(prepared) => Arc::strong_count(prepared) > 1,
        });
    }

    async fn load_uncached(self: &Arc<Self>, digest: &str, wasm_path: &Path) -> Result<Workload> {
        let runtime = Arc::clone(self);
        let digest = digest.to_owned();
        let wasm_path = wasm_path.to_owned();
        let budget = self.config.compile_budget;
        let compiled = tokio::task::spawn_blocking(move || cache::load_or_compile(&runtime, &digest, &wasm_path));
        let artifact = match tokio::time::timeout(budget, compiled).await {
            Ok(Ok(result)) => result?,
            Ok(Err(join)) => return Err(Error::Compile(join.to_string())),
            // Cranelift cannot be cancelled; the compile finishes in the background and is cached.
            Err(_) => return Err(Error::CompileTimeout(budget)),
        };
        match artifact {
            cache::Compiled::Component(component) => {
                if let Some(prepared) = http::Prepared::new(&self.engine, &component, &self.clock)? {
                    return Ok(Workload::Http(Arc::new(prepared)));
                }
                if let Some(prepared) = command::PreparedCommand::new(&self.engine, &component, &self.clock)? {
                    return Ok(Workload::Command(Arc::new(prepared)));
                }
                let exports: Vec<String> = component.component_type().exports(&self.engine).map(|(name, _)| name.to_owned()).collect();
                if let Some(p3) = exports.iter().find(|e| e.contains("@0.3")) {
                    return Err(Error::Preview3(p3.clone()));
                }
                Err(Error::NotRunnable)
            }
            cache::Compiled::Module(module) => Ok(Workload::Preview1(Arc::new(command::PreparedModule::new(&self.engine, &module, &self.clock)?))),
        }
    }
}

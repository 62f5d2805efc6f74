//! HTTP workloads: components exporting `wasi:http/incoming-handler`, served with a fresh
//! instance per request (or, when a pod opts in, nothing reused: see the note on reuse below),
//! under the pod's concurrency limit, time budget and memory limit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::BodyExt;
use wasmtime::component::{Component, Linker};
use wasmtime::{Engine, Store};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::{Proxy, ProxyPre};
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;

use crate::sandbox::{ComponentState, OpenedDirs, SandboxSpec, apply_time_budget};
use crate::{Error, Result};

/// The body of a response from a guest.
pub type ResponseBody = HyperOutgoingBody;

/// The most finished instances one thread may keep (see [`defer_instance_drops`]).
pub const MAX_KEPT_INSTANCES: usize = 4;

/// Finished instances a thread keeps until it goes idle, and how many it may keep.
struct Kept {
    stores: Vec<Store<ComponentState>>,
    limit: usize,
}

std::thread_local! {
    /// `None`: the thread drops finished instances at once.
    static KEPT: std::cell::RefCell<Option<Kept>> = const { std::cell::RefCell::new(None) };
}

/// Makes the calling thread keep up to `limit` (at most [`MAX_KEPT_INSTANCES`]) instances whose
/// request has finished until it calls [`drop_retired`], instead of dropping each in the
/// request's path. Dropping a store returns its pooling-allocator slot, which resets the
/// instance's memory and tables: several µs that the response need not wait for. Past the limit
/// an instance is dropped at once (under steady load the thread seldom goes idle). A kept
/// instance holds its pool slot, so the caller sizes `limit` against the pool (the node keeps
/// at most an eighth of it across its reactors). The node's reactor threads call this at start
/// and [`drop_retired`] just before they park.
pub fn defer_instance_drops(limit: usize) {
    let limit = limit.min(MAX_KEPT_INSTANCES);
    KEPT.with(|kept| *kept.borrow_mut() = (limit > 0).then(|| Kept { stores: Vec::with_capacity(limit), limit }));
}

/// Drops the instances this thread kept (see [`defer_instance_drops`]).
pub fn drop_retired() {
    // Called at every park: nothing is allocated when nothing was kept.
    let stores = KEPT.try_with(|kept| kept.borrow_mut().as_mut().filter(|kept| !kept.stores.is_empty()).map(|kept| std::mem::take(&mut kept.stores)));
    // Dropped here, outside the borrow.
    drop(stores);
}

/// How many finished instances this thread keeps now.
pub fn kept_instances() -> usize {
    KEPT.try_with(|kept| kept.borrow().as_ref().map_or(0, |kept| kept.stores.len())).unwrap_or(0)
}

/// Drops `store` now, or keeps it for the thread's next idle moment when the thread asked for
/// that and has room.
fn retire(store: Store<ComponentState>) {
    let mut store = Some(store);
    let _ = KEPT.try_with(|kept| {
        if let Some(kept) = kept.borrow_mut().as_mut()
            && kept.stores.len() < kept.limit
        {
            kept.stores.extend(store.take());
        }
    });
    drop(store);
}

/// A component linked against WASI and wasi:http, ready to instantiate per request.
pub struct Prepared {
    pre: ProxyPre<ComponentState>,
    clock: Arc<crate::EpochClock>,
}

impl Prepared {
    /// `None` when the component does not export the HTTP handler.
    pub(crate) fn new(engine: &Engine, component: &Component, clock: &Arc<crate::EpochClock>) -> Result<Option<Self>> {
        let exports_handler = component
            .component_type()
            .exports(engine)
            .any(|(name, _)| name.starts_with("wasi:http/incoming-handler@0.2"));
        if !exports_handler {
            return Ok(None);
        }
        let mut linker = Linker::<ComponentState>::new(engine);
        crate::sandbox::add_wasi_to_linker(&mut linker)?;
        crate::outgoing::add_to_linker(&mut linker).map_err(|e| Error::Engine(e.to_string()))?;
        crate::sandbox::link_shared_preopens(&mut linker).map_err(|e| Error::Engine(e.to_string()))?;
        let instance_pre = linker.instantiate_pre(component).map_err(|e| Error::Link(format!("{e:#}")))?;
        let pre = ProxyPre::new(instance_pre).map_err(|e| Error::Link(format!("{e:#}")))?;
        Ok(Some(Self { pre, clock: Arc::clone(clock) }))
    }
}

/// How a request ended, for the pod's status and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpOutcome {
    /// The guest answered.
    Answered,
    /// The guest trapped, ran past its budget, or never answered: the client got a 5xx.
    Failed(String),
}

/// An instance kept for reuse, with how many requests it has served.
struct Warm {
    store: Store<ComponentState>,
    proxy: Proxy,
    uses: usize,
}

/// One cache line (two, for the adjacent-line prefetcher) per value, so that pools used by
/// different threads never share a line.
#[repr(align(128))]
struct Padded<T>(T);

/// The instances a pod keeps for reuse, in one pool per thread slot. An instance goes back to
/// the pool of the thread that ran it, and that thread takes it again first, so an instance's
/// store, tables and memory stay in one core's caches instead of moving between cores on every
/// request (a reactor per core serves a pod's connections). A thread whose pool is empty takes
/// an instance from another's before making a new one.
struct WarmPools {
    pools: Box<[Padded<std::sync::Mutex<Vec<Warm>>>]>,
}

/// Which pool the calling thread uses: threads are numbered in the order they first ask.
fn thread_slot() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    std::thread_local! {
        static SLOT: usize = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    SLOT.try_with(|slot| *slot).unwrap_or(0)
}

impl WarmPools {
    /// One pool per core for a pod that reuses instances; a single (unused) one otherwise, so
    /// that the many pods that never reuse stay small.
    fn new(reuse: bool) -> Self {
        let count = if reuse { std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 64) } else { 1 };
        Self { pools: (0..count).map(|_| Padded(std::sync::Mutex::new(Vec::new()))).collect() }
    }

    fn pool(&self, index: usize) -> std::sync::MutexGuard<'_, Vec<Warm>> {
        self.pools[index % self.pools.len()].0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self) -> Option<Warm> {
        let own = thread_slot();
        (0..self.pools.len()).find_map(|offset| self.pool(own + offset).pop())
    }

    fn give_back(&self, warm: Warm) {
        self.pool(thread_slot()).push(warm);
    }

    fn len(&self) -> usize {
        (0..self.pools.len()).map(|index| self.pool(index).len()).sum()
    }
}

/// Serves one pod's HTTP component.
pub struct HttpHandler {
    prepared: Arc<Prepared>,
    spec: SandboxSpec,
    concurrency: Arc<tokio::sync::Semaphore>,
    max_concurrency: usize,
    failures: std::sync::atomic::AtomicU64,
    /// Requests one instance may serve in sequence: 1 (the default) means a fresh instance per
    /// request; more is the pod's opt-in trade of isolation between its own requests for speed.
    reuse_limit: usize,
    warm: Arc<WarmPools>,
    /// How long each fresh instantiation took (its count is the number of instances made).
    instantiate_times: Arc<crate::latency::LatencyHistogram>,
    /// The spec's preopened directories, opened for the first instance and shared by every
    /// instance after it ([`OpenedDirs`]). Not set while opening fails: each request then fails
    /// saying why, and the first one after the directories appear opens them.
    preopened: std::sync::OnceLock<OpenedDirs>,
}

fn text_response(status: u16, text: String) -> hyper::Response<ResponseBody> {
    let body = http_body_util::Full::new(Bytes::from(text)).map_err(|never| match never {}).boxed_unsync();
    let mut response = hyper::Response::new(body);
    *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR);
    response.headers_mut().insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    response
}

impl HttpHandler {
    pub fn new(prepared: Arc<Prepared>, spec: SandboxSpec, max_concurrency: usize) -> Self {
        Self::with_reuse(prepared, spec, max_concurrency, 1)
    }

    /// Like [`HttpHandler::new`], reusing each instance for up to `reuse_limit` sequential
    /// requests. An instance that traps or overruns its budget is never reused.
    pub fn with_reuse(prepared: Arc<Prepared>, spec: SandboxSpec, max_concurrency: usize, reuse_limit: usize) -> Self {
        Self {
            reuse_limit: reuse_limit.max(1),
            warm: Arc::new(WarmPools::new(reuse_limit > 1)),
            instantiate_times: Arc::default(),
            prepared,
            spec,
            concurrency: Arc::new(tokio::sync::Semaphore::new(max_concurrency.max(1))),
            max_concurrency: max_concurrency.max(1),
            failures: std::sync::atomic::AtomicU64::new(0),
            preopened: std::sync::OnceLock::new(),
        }
    }

    /// The preopened directories, opened now if they were not yet.
    fn preopened(&self) -> Result<OpenedDirs> {
        if let Some(opened) = self.preopened.get() {
            return Ok(Arc::clone(opened));
        }
        let opened = self.spec.open_preopens()?;
        Ok(Arc::clone(self.preopened.get_or_init(|| opened)))
    }

    /// Instances idle in the reuse pool now.
    pub fn warm_instances(&self) -> usize {
        self.warm.len()
    }

    /// Instances created so far (with reuse, fewer than requests).
    pub fn instantiations(&self) -> u64 {
        self.instantiate_times.count()
    }

    /// A quantile (0.99 for p99) of how long instantiation alone took, from a histogram of every
    /// instance made (reported as its bucket's upper bound, within 25%).
    pub fn instantiate_latency(&self, quantile: f64) -> Option<Duration> {
        self.instantiate_times.quantile(quantile)
    }

    /// Requests being handled now.
    pub fn in_flight(&self) -> usize {
        self.max_concurrency - self.concurrency.available_permits()
    }

    /// Requests that failed inside the guest (traps, budget, no answer).
    pub fn failures(&self) -> u64 {
        self.failures.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Handles one request in a fresh instance. Never fails: guest failures become 500 (or 503
    /// when the pod is at its concurrency limit for longer than its budget).
    pub async fn handle<B>(&self, request: hyper::Request<B>) -> (hyper::Response<ResponseBody>, HttpOutcome)
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        let started = Instant::now();
        let budget = self.spec.time_budget;
        let permit = match tokio::time::timeout(budget, Arc::clone(&self.concurrency).acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            _ => return (text_response(503, "the pod is at its concurrency limit\n".into()), HttpOutcome::Failed("concurrency limit".into())),
        };
        let outcome = self.run(request, budget).await;
        drop(permit);
        match outcome {
            Ok(response) => (response, HttpOutcome::Answered),
            Err(reason) => {
                self.failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::debug!(%reason, elapsed_ms = started.elapsed().as_millis() as u64, "request failed in the guest");
                (text_response(500, format!("the Wasm handler failed: {reason}\n")), HttpOutcome::Failed(reason))
            }
        }
    }

    async fn run<B>(&self, request: hyper::Request<B>, budget: Duration) -> Result<hyper::Response<ResponseBody>, String>
    where
        B: hyper::body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<wasmtime_wasi_http::Error>,
    {
        // Under a CPU limit whose quota this period is spent, a new request waits for the next
        // period, as a throttled cgroup's would.
        if let Some(wait) = self.spec.cpu.as_ref().and_then(|cpu| cpu.pending_wait()) {
            tokio::time::sleep(wait.min(budget)).await;
        }
        // From before the instance is made until the guest has returned (in whichever task).
        let running = self.prepared.clock.running();
        let warm = if self.reuse_limit > 1 { self.warm.take() } else { None };
        let (mut store, proxy, uses) = match warm {
            Some(warm) => (warm.store, Some(warm.proxy), warm.uses),
            None => {
                let state = ComponentState::with_dirs(&self.spec, self.preopened().map_err(|e| e.to_string())?);
                let mut store = Store::new(self.prepared.pre.engine(), state);
                store.limiter(|state| &mut state.limits);
                (store, None, 0)
            }
        };
        let charged = apply_time_budget(&mut store, budget, self.spec.cpu.clone());
        let (sender, mut receiver) = tokio::sync::oneshot::channel();
        let incoming = store.data_mut().http().new_incoming_request(Scheme::Http, request).map_err(|e| e.to_string())?;
        let outparam = store.data_mut().http().new_response_outparam(sender).map_err(|e| e.to_string())?;
        let pre = self.prepared.pre.clone();
        let (pool, reuse_limit, instantiate_times) = (Arc::clone(&self.warm), self.reuse_limit, Arc::clone(&self.instantiate_times));
        // The guest runs inline, in the caller's task: a task of its own would cost a hand-off
        // to another worker thread and back on every request. When the response's headers
        // arrive before the guest has finished (it is still streaming the body), the rest of
        // the guest moves to a task of its own.
        let mut guest = crate::usage::Metered::new(Box::pin(async move {
            let _running = running;
            let proxy = match proxy {
                Some(proxy) => proxy,
                None => {
                    let started = Instant::now();
                    let proxy = pre.instantiate_async(&mut store).await?;
                    instantiate_times.record(started.elapsed());
                    proxy
                }
            };
            proxy.wasi_http_incoming_handler().call_handle(&mut store, incoming, outparam).await?;
            if uses + 1 < reuse_limit {
                pool.give_back(Warm { store, proxy, uses: uses + 1 });
            } else {
                retire(store);
            }
            Ok::<(), wasmtime::Error>(())
        }), Arc::clone(&self.spec.usage), charged);
        let first = tokio::time::timeout(budget, async {
            tokio::select! {
                biased;
                answer = &mut receiver => First::Answer(answer),
                finished = &mut guest => First::Finished(finished),
            }
        })
        .await;
        let answer = match first {
            Err(_) => return Err(format!("the request ran past its {budget:?} time budget")),
            Ok(First::Answer(answer)) => {
                tokio::spawn(async move {
                    if let Err(error) = guest.await {
                        tracing::debug!(reason = %describe_trap(&error), "the guest failed after answering");
                    }
                });
                answer
            }
            // The guest returned: its answer, if it set one, is already there.
            Ok(First::Finished(finished)) => match receiver.try_recv() {
                Ok(answer) => Ok(answer),
                Err(_) => {
                    return Err(match finished {
                        Ok(()) => "the guest returned without setting a response".into(),
                        Err(error) => describe_trap(&error),
                    });
                }
            },
        };
        match answer {
            Ok(Ok(response)) => Ok(response),
            Ok(Err(code)) => Err(format!("the guest answered with an error: {code:?}")),
            Err(_) => Err("the guest dropped its response without setting it".into()),
        }
    }
}

/// Which came first while a guest runs: its answer or its return.
enum First<A, F> {
    Answer(A),
    Finished(F),
}

/// A trap in words users recognise.
pub(crate) fn describe_trap(error: &wasmtime::Error) -> String {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => "stopped at its time budget (epoch interrupt)".into(),
        Some(wasmtime::Trap::StackOverflow) => "trapped: Wasm stack overflow".into(),
        Some(trap) => format!("trapped: {trap}"),
        None => format!("{error:#}"),
    }
}

//! What a guest may do and see: the sandbox spec the node resolves from the pod spec, the store
//! state built from it (deny by default), and the line-by-line capture of stdout and stderr.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::AsyncWrite;
use wasmtime::component::ResourceTable;
use wasmtime::StoreLimitsBuilder;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::filesystem::Dir;
use wasmtime_wasi::{FsPerms, OpenMode, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// A host directory the guest sees at `guest_path`.
#[derive(Clone, Debug)]
pub struct Preopen {
    pub host_path: PathBuf,
    pub guest_path: String,
    pub read_only: bool,
}

/// Which output stream a line came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

/// One captured line of output.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub timestamp: jiff::Timestamp,
    pub stream: Stream,
    pub text: String,
}

/// Where a container's output goes, line by line. Bounded: beyond `max_lines` the oldest are
/// dropped (the node's log store persists and rotates them).
#[derive(Clone)]
pub struct LogSink {
    inner: Arc<Mutex<SinkInner>>,
}

/// Where a sink also writes its lines: a file rotated to `FILE.1` beyond `max_bytes`.
struct LogFile {
    path: PathBuf,
    file: std::fs::File,
    written: u64,
    max_bytes: u64,
}

impl LogFile {
    fn append(&mut self, line: &LogLine) {
        use std::io::Write;
        let stream = match line.stream {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        };
        let record = format!("{} {stream} {}\n", line.timestamp, line.text);
        if self.written + record.len() as u64 > self.max_bytes {
            let rotated = self.path.with_extension("log.1");
            let _ = std::fs::rename(&self.path, rotated);
            match std::fs::OpenOptions::new().create(true).append(true).open(&self.path) {
                Ok(file) => {
                    self.file = file;
                    self.written = 0;
                }
                Err(error) => tracing::warn!(path = %self.path.display(), %error, "rotating a log file"),
            }
        }
        if self.file.write_all(record.as_bytes()).is_ok() {
            self.written += record.len() as u64;
        }
    }
}

/// Parses a line written by [`LogFile::append`].
fn parse_record(record: &str) -> Option<LogLine> {
    let mut parts = record.splitn(3, ' ');
    let timestamp = parts.next()?.parse().ok()?;
    let stream = match parts.next()? {
        "stdout" => Stream::Stdout,
        "stderr" => Stream::Stderr,
        _ => return None,
    };
    Some(LogLine { timestamp, stream, text: parts.next().unwrap_or_default().to_owned() })
}

struct SinkInner {
    lines: std::collections::VecDeque<LogLine>,
    /// The lines of the container's previous run (after a restart).
    previous: Vec<LogLine>,
    file: Option<LogFile>,
    max_lines: usize,
    partial: [Vec<u8>; 2],
    notify: Option<tokio::sync::watch::Sender<u64>>,
    written: u64,
    /// Set when the container has ended and will write no more (until it restarts).
    finished: bool,
}

/// The longest line kept whole; longer output is split.
const MAX_LINE_BYTES: usize = 16 * 1024;

impl LogSink {
    pub fn new(max_lines: usize) -> Self {
        let (notify, _) = tokio::sync::watch::channel(0);
        Self {
            inner: Arc::new(Mutex::new(SinkInner {
                lines: Default::default(),
                previous: Vec::new(),
                file: None,
                max_lines,
                partial: [Vec::new(), Vec::new()],
                notify: Some(notify),
                written: 0,
                finished: false,
            })),
        }
    }

    /// A sink that also keeps its lines in `path` (rotated beyond `max_bytes`), and starts
    /// with the last lines already there (so a restarted node still shows them).
    pub fn with_file(max_lines: usize, path: &std::path::Path, max_bytes: u64) -> std::io::Result<Self> {
        let sink = Self::new(max_lines);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let existing = std::fs::read_to_string(path).unwrap_or_default();
        let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
        let mut inner = sink.lock();
        for line in existing.lines().filter_map(parse_record) {
            inner.lines.push_back(line);
            if inner.lines.len() > max_lines {
                inner.lines.pop_front();
            }
        }
        inner.written = inner.lines.len() as u64;
        inner.file = Some(LogFile { path: path.to_owned(), file, written: existing.len() as u64, max_bytes });
        drop(inner);
        Ok(sink)
    }

    /// Starts a new run of the container: the current lines become the previous run's.
    pub fn start_new_run(&self) {
        let mut inner = self.lock();
        inner.previous = inner.lines.drain(..).collect();
        inner.finished = false;
    }

    /// The lines of the previous run, if the container has restarted.
    pub fn previous_lines(&self) -> Vec<LogLine> {
        self.lock().previous.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkInner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one complete line (output captured elsewhere, such as an OCI container's).
    pub fn push_line(&self, stream: Stream, text: &str) {
        self.lock().push(LogLine { timestamp: jiff::Timestamp::now(), stream, text: text.to_owned() });
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut inner = self.lock();
        let index = stream as usize;
        for byte in bytes {
            if *byte == b'\n' || inner.partial[index].len() >= MAX_LINE_BYTES {
                let text = String::from_utf8_lossy(&inner.partial[index]).into_owned();
                inner.partial[index].clear();
                inner.push(LogLine { timestamp: jiff::Timestamp::now(), stream, text });
                if *byte == b'\n' {
                    continue;
                }
            }
            inner.partial[index].push(*byte);
        }
    }

    /// Flushes unterminated output (when the guest exits).
    pub fn flush(&self) {
        let mut inner = self.lock();
        for (index, stream) in [(0, Stream::Stdout), (1, Stream::Stderr)] {
            if !inner.partial[index].is_empty() {
                let text = String::from_utf8_lossy(&inner.partial[index]).into_owned();
                inner.partial[index].clear();
                inner.push(LogLine { timestamp: jiff::Timestamp::now(), stream, text });
            }
        }
    }

    /// Marks the container as ended (followers stop once they have every line) or, with
    /// `false`, as running again.
    pub fn set_finished(&self, finished: bool) {
        let mut inner = self.lock();
        inner.finished = finished;
        let written = inner.written;
        if let Some(notify) = &inner.notify {
            notify.send_replace(written);
        }
    }

    pub fn is_finished(&self) -> bool {
        self.lock().finished
    }

    /// The lines captured so far (oldest first).
    pub fn lines(&self) -> Vec<LogLine> {
        self.lock().lines.iter().cloned().collect()
    }

    /// Wakes up whenever a line is added.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        match &self.lock().notify {
            Some(notify) => notify.subscribe(),
            None => tokio::sync::watch::channel(0).1,
        }
    }

    /// How many lines were ever written (to resume a follow).
    pub fn written(&self) -> u64 {
        self.lock().written
    }

    fn stream(&self, stream: Stream) -> SinkStream {
        SinkStream { sink: self.clone(), stream }
    }
}

impl SinkInner {
    fn push(&mut self, line: LogLine) {
        if let Some(file) = &mut self.file {
            file.append(&line);
        }
        self.lines.push_back(line);
        while self.lines.len() > self.max_lines {
            self.lines.pop_front();
        }
        self.written += 1;
        if let Some(notify) = &self.notify {
            notify.send_replace(self.written);
        }
    }
}

#[derive(Clone)]
struct SinkStream {
    sink: LogSink,
    stream: Stream,
}

impl IsTerminal for SinkStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for SinkStream {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl AsyncWrite for SinkStream {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, bytes: &[u8]) -> Poll<std::io::Result<usize>> {
        self.sink.write(self.stream, bytes);
        Poll::Ready(Ok(bytes.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// Everything a guest is granted, resolved from the pod spec by the node. Nothing else is
/// granted: no environment, arguments, files or sockets beyond these.
#[derive(Clone)]
pub struct SandboxSpec {
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    pub preopens: Vec<Preopen>,
    /// The most linear memory one instance may grow to.
    pub memory_limit_bytes: usize,
    /// How long one HTTP request (or, for commands, the whole run) may execute.
    pub time_budget: Duration,
    pub logs: LogSink,
    /// Where the guest's outgoing `wasi:http` requests go first: the node's Service proxy takes
    /// cluster names; everything else goes to the network as `wasi:http` does by default.
    pub outbound: Option<Arc<dyn OutboundHttp>>,
    /// The container's CPU limit (`resources.limits.cpu`), shared by all its instances.
    pub cpu: Option<Arc<CpuLimit>>,
    /// Where the container's CPU time and memory are counted, shared by all its instances.
    pub usage: Arc<crate::Usage>,
}

/// A CPU limit enforced like the kernel's CFS bandwidth control: in every period (100 ms) the
/// instances sharing it may run for `quota` (the limit in cores × the period) in Wasm; an
/// instance that finds the quota spent waits, yielding its thread, until the period ends.
///
/// Run time is charged at each epoch check (every few ticks while a guest runs): the time since
/// the guest last resumed, at most the ticks it could have run since (time spent waiting in host
/// calls, where the epoch advances but no Wasm runs, is not charged past that).
pub struct CpuLimit {
    quota: Duration,
    period: Duration,
    state: std::sync::Mutex<CpuPeriod>,
}

struct CpuPeriod {
    started: std::time::Instant,
    used: Duration,
    total: Duration,
    throttled: u64,
}

impl CpuLimit {
    pub const PERIOD: Duration = Duration::from_millis(100);

    /// A limit of `millicores` thousandths of a core; `None` for no limit (0).
    pub fn new(millicores: u64) -> Option<Arc<Self>> {
        if millicores == 0 {
            return None;
        }
        let quota = Self::PERIOD.mul_f64(millicores as f64 / 1000.0);
        Some(Arc::new(Self { quota, period: Self::PERIOD, state: std::sync::Mutex::new(CpuPeriod { started: std::time::Instant::now(), used: Duration::ZERO, total: Duration::ZERO, throttled: 0 }) }))
    }

    /// Charges `ran`; returns how long to wait when the period's quota is spent (counted as a
    /// throttled wait).
    pub(crate) fn charge(&self, ran: Duration) -> Option<Duration> {
        self.account(ran, true)
    }

    /// Charges `ran` after the fact (a guest that has ended waits for nothing).
    pub(crate) fn charge_ended(&self, ran: Duration) {
        self.account(ran, false);
    }

    /// How long a new request must wait because this period's quota is spent (counted as a
    /// throttled wait), or `None`.
    pub(crate) fn pending_wait(&self) -> Option<Duration> {
        self.account(Duration::ZERO, true)
    }

    fn account(&self, ran: Duration, waits: bool) -> Option<Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        if now.duration_since(state.started) >= self.period {
            state.started = now;
            state.used = Duration::ZERO;
        }
        state.used += ran;
        state.total += ran;
        if state.used < self.quota || !waits {
            return None;
        }
        state.throttled += 1;
        Some((state.started + self.period).saturating_duration_since(now))
    }

    /// (Run time charged in all, how many times an instance had to wait): cgroup's
    /// `cpu.stat` usage and `nr_throttled`.
    pub fn stats(&self) -> (Duration, u64) {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        (state.total, state.throttled)
    }
}

/// A boxed future of an outgoing request's response.
pub type OutboundFuture = Pin<Box<dyn std::future::Future<Output = Result<http::Response<wasmtime_wasi_http::WasiBody>, wasmtime_wasi_http::Error>> + Send>>;

/// The host's router for a guest's outgoing HTTP requests.
pub trait OutboundHttp: Send + Sync {
    /// Takes the request (`Ok`) when this host answers it itself, or hands it back (`Err`) to
    /// be sent to the network. (The request is handed back by value: boxing it would cost an
    /// allocation on every outgoing call.)
    #[allow(clippy::result_large_err)]
    fn route(&self, request: http::Request<wasmtime_wasi_http::WasiBody>) -> Result<OutboundFuture, http::Request<wasmtime_wasi_http::WasiBody>>;
}

/// The `wasi:http` hooks of one store: the node's router, which the store's outgoing requests
/// pass first (`crate::outgoing`).
#[derive(Default)]
pub(crate) struct Hooks {
    pub(crate) outbound: Option<Arc<dyn OutboundHttp>>,
}

impl wasmtime_wasi_http::WasiHttpHooks for Hooks {}

impl SandboxSpec {
    pub fn new(logs: LogSink) -> Self {
        Self { env: Vec::new(), args: Vec::new(), preopens: Vec::new(), memory_limit_bytes: 128 * 1024 * 1024, time_budget: Duration::from_secs(30), logs, outbound: None, cpu: None, usage: Arc::default() }
    }

    /// A WASI context builder with everything granted, the preopened directories included.
    pub(crate) fn wasi_builder(&self) -> Result<WasiCtxBuilder, crate::Error> {
        let mut builder = self.wasi_builder_without_preopens();
        for preopen in &self.preopens {
            let perms = if preopen.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
            builder.preopened_dir(&preopen.host_path, &preopen.guest_path, perms).map_err(|e| preopen.error(e))?;
        }
        Ok(builder)
    }

    /// A WASI context builder with everything granted but the preopened directories, which the
    /// store's [`ComponentState::preopened`] holds instead (see [`OpenedDirs`]).
    fn wasi_builder_without_preopens(&self) -> WasiCtxBuilder {
        let mut builder = WasiCtx::builder();
        builder.envs(&self.env).args(&self.args).stdout(self.logs.stream(Stream::Stdout)).stderr(self.logs.stream(Stream::Stderr));
        builder
    }

    /// Opens every preopened directory, with the permissions `WasiCtxBuilder::preopened_dir`
    /// gives it.
    pub(crate) fn open_preopens(&self) -> Result<OpenedDirs, crate::Error> {
        self.preopens
            .iter()
            .map(|preopen| {
                let directory = open_directory(&preopen.host_path).map_err(|e| preopen.error(e))?;
                let (perms, mode) = if preopen.read_only { (FsPerms::ReadOnly, OpenMode::READ) } else { (FsPerms::ReadWrite, OpenMode::READ | OpenMode::WRITE) };
                Ok((Dir::new(directory, perms, mode, false), preopen.guest_path.clone()))
            })
            .collect()
    }

    /// A store's limits, counting its memory into the container's usage.
    pub(crate) fn limits(&self) -> crate::usage::Limits {
        crate::usage::Limits::new(StoreLimitsBuilder::new().memory_size(self.memory_limit_bytes).instances(64).tables(64).memories(16).build(), Arc::clone(&self.usage))
    }
}

impl Preopen {
    fn error(&self, error: impl std::fmt::Display) -> crate::Error {
        crate::Error::Sandbox(format!("preopening {} as {}: {error}", self.host_path.display(), self.guest_path))
    }
}

/// A directory handle as wasmtime-wasi opens a preopen's (`O_PATH`: no read permission needed on
/// the directory itself; everything under it is opened relative to it).
fn open_directory(path: &Path) -> std::io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new().read(true).custom_flags((OFlag::O_DIRECTORY | OFlag::O_PATH).bits()).open(path)
}

/// An HTTP component's preopened directories, opened once and shared by all its instances,
/// with the guest path each is seen at.
///
/// Opening a directory is a path walk in the kernel: done for every instance, as
/// `WasiCtxBuilder::preopened_dir` would, it cost more than a small guest's whole run (every pod
/// has at least its ServiceAccount token's directory). Shared handles are what a container's
/// bind mounts are too: made once at its start, they keep showing the directory they were made
/// from. Every file operation of the guest is relative to the handle (`openat`), so instances
/// on different threads share it safely, as one instance's several descriptors for a preopen
/// already do in wasmtime-wasi.
pub(crate) type OpenedDirs = Arc<[(Dir, String)]>;

/// The per-store state of component workloads.
pub struct ComponentState {
    pub(crate) wasi: WasiCtx,
    pub(crate) http: WasiHttpCtx,
    pub(crate) table: ResourceTable,
    pub(crate) limits: crate::usage::Limits,
    pub(crate) hooks: Hooks,
    /// The preopened directories `wasi:filesystem/preopens#get-directories` hands out, for
    /// stores whose WASI context has none of its own ([`ComponentState::with_dirs`]).
    pub(crate) preopened: OpenedDirs,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for ComponentState {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

impl ComponentState {
    /// A store's state whose WASI context opens the spec's directories itself (commands: one
    /// store per run).
    pub(crate) fn new(spec: &SandboxSpec) -> Result<Self, crate::Error> {
        Ok(Self::from_ctx(spec, spec.wasi_builder()?.build(), Arc::new([])))
    }

    /// A store's state seeing `preopened` as its directories, for a linker that serves
    /// `get-directories` from [`ComponentState::preopened`] ([`link_shared_preopens`]).
    pub(crate) fn with_dirs(spec: &SandboxSpec, preopened: OpenedDirs) -> Self {
        Self::from_ctx(spec, spec.wasi_builder_without_preopens().build(), preopened)
    }

    fn from_ctx(spec: &SandboxSpec, wasi: WasiCtx, preopened: OpenedDirs) -> Self {
        Self { wasi, http: WasiHttpCtx::new(), table: ResourceTable::new(), limits: spec.limits(), hooks: Hooks { outbound: spec.outbound.clone() }, preopened }
    }
}

/// The interface whose `get-directories` [`link_shared_preopens`] replaces, at the version
/// wasmtime-wasi links (guests importing any earlier 0.2 version resolve to it).
const PREOPENS: &str = "wasi:filesystem/preopens@0.2.12";

/// Makes `wasi:filesystem/preopens#get-directories` hand out the store's
/// [`ComponentState::preopened`] directories, for stores made with [`ComponentState::with_dirs`].
pub(crate) fn link_shared_preopens(linker: &mut wasmtime::component::Linker<ComponentState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::filesystem::Descriptor;
    linker.allow_shadowing(true);
    let replaced = linker.instance(PREOPENS).and_then(|mut instance| {
        instance.func_wrap("get-directories", |mut store: wasmtime::StoreContextMut<'_, ComponentState>, (): ()| {
            let state = store.data_mut();
            let mut directories: Vec<(Resource<Descriptor>, String)> = Vec::with_capacity(state.preopened.len());
            for (directory, guest_path) in state.preopened.iter() {
                directories.push((state.table.push(Descriptor::Dir(directory.clone()))?, guest_path.clone()));
            }
            Ok((directories,))
        })
    });
    linker.allow_shadowing(false);
    replaced
}

/// Links WASI 0.2 for components (including `wasi:cli/exit#exit-with-code`, stable since 0.2.12,
/// which commands need to report exact exit codes).
pub(crate) fn add_wasi_to_linker(linker: &mut wasmtime::component::Linker<ComponentState>) -> Result<(), crate::Error> {
    wasmtime_wasi::p2::add_to_linker_async(linker).map_err(|e| crate::Error::Engine(e.to_string()))
}

/// Makes `store` stop the guest once it has run for `budget` (checked every epoch tick), and
/// yield to other tasks every few ticks meanwhile so one guest cannot hold an executor thread.
/// With a CPU limit, each check also charges the run time and, when the quota is spent, the
/// yield waits out the rest of the period.
///
/// Returns, under a CPU limit, the limit and the nanoseconds the epoch checks charge to it, for
/// [`crate::usage::Metered`] to charge the rest of the guest's run time when it ends: a request
/// shorter than one epoch tick never meets a check.
pub(crate) fn apply_time_budget<T: 'static>(store: &mut wasmtime::Store<T>, budget: Duration, cpu: Option<Arc<CpuLimit>>) -> Option<crate::usage::Charged> {
    // Wall-clock: a guest spinning in Wasm is stopped within one epoch tick of its deadline.
    // (Waits inside host calls are bounded by the caller's own timeout.)
    const SLICE: u64 = 10;
    let deadline = std::time::Instant::now() + budget;
    store.set_epoch_deadline(1);
    let ticks_left = move |now: std::time::Instant| ((deadline - now).as_millis() / crate::EPOCH_TICK.as_millis().max(1)) as u64;
    let Some(cpu) = cpu else {
        // No CPU limit: nothing to charge, and nothing allocated per request.
        store.epoch_deadline_callback(move |_| {
            let now = std::time::Instant::now();
            if now >= deadline {
                return Ok(wasmtime::UpdateDeadline::Interrupt);
            }
            Ok(wasmtime::UpdateDeadline::Yield(ticks_left(now).clamp(1, SLICE)))
        });
        return None;
    };
    let charged = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let epoch_charged = Arc::clone(&charged);
    let limit = Arc::clone(&cpu);
    // When the guest last resumed, and how many ticks it was given then.
    let resumed = Arc::new(std::sync::Mutex::new((std::time::Instant::now(), 1u64)));
    store.epoch_deadline_callback(move |_| {
        let now = std::time::Instant::now();
        if now >= deadline {
            return Ok(wasmtime::UpdateDeadline::Interrupt);
        }
        let ticks = ticks_left(now).clamp(1, SLICE);
        let wait = {
            let mut resumed = resumed.lock().unwrap_or_else(|p| p.into_inner());
            let ran = now.duration_since(resumed.0).min(crate::EPOCH_TICK * (resumed.1 as u32 + 1));
            *resumed = (now, ticks);
            epoch_charged.fetch_add(ran.as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
            cpu.charge(ran)
        };
        match wait {
            None => Ok(wasmtime::UpdateDeadline::Yield(ticks)),
            Some(wait) => {
                let resumed = Arc::clone(&resumed);
                let wait = wait.min(deadline.saturating_duration_since(now));
                Ok(wasmtime::UpdateDeadline::YieldCustom(
                    ticks,
                    Box::pin(async move {
                        tokio::time::sleep(wait).await;
                        resumed.lock().unwrap_or_else(|p| p.into_inner()).0 = std::time::Instant::now();
                    }),
                ))
            }
        }
    });
    Some(crate::usage::Charged { limit, by_epochs: charged })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_backed_sinks_rotate_and_reload() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("c.log");
        let sink = LogSink::with_file(100, &path, 200).expect("sink");
        for index in 0..20 {
            sink.write(Stream::Stdout, format!("line {index}\n").as_bytes());
        }
        assert!(path.with_extension("log.1").exists(), "the file rotated past 200 bytes");
        assert!(std::fs::metadata(&path).expect("current").len() <= 200);
        drop(sink);
        let reloaded = LogSink::with_file(100, &path, 200).expect("reopen");
        let last = reloaded.lines().last().map(|l| l.text.clone());
        assert_eq!(last.as_deref(), Some("line 19"), "a new sink starts with the file's lines");
        reloaded.start_new_run();
        assert!(reloaded.lines().is_empty());
        assert_eq!(reloaded.previous_lines().last().map(|l| l.text.as_str()), Some("line 19"));
    }

    #[test]
    fn output_is_split_into_bounded_lines() {
        let sink = LogSink::new(3);
        sink.write(Stream::Stdout, b"one\ntw");
        sink.write(Stream::Stderr, b"err\n");
        sink.write(Stream::Stdout, b"o\nthree\nfour");
        sink.flush();
        let lines: Vec<(Stream, String)> = sink.lines().into_iter().map(|l| (l.stream, l.text)).collect();
        assert_eq!(lines, vec![(Stream::Stdout, "two".into()), (Stream::Stdout, "three".into()), (Stream::Stdout, "four".into())]);
        assert_eq!(sink.written(), 5);
    }
}

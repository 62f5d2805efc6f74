//! The data plane's reactors: threads that own connections.
//!
//! Each reactor is a thread running a current-thread tokio runtime. Every connection the data
//! plane, the ingress router (HTTP and HTTPS) and the node ports accept is handed to one reactor,
//! in turn, and lives there: its TLS handshake, its requests, the guests they call (inline) and
//! the tasks those spawn (a guest's outgoing request to a Service, a streaming body) all run on
//! that one thread. A request then never moves between worker threads: no wake-up of another
//! worker, no stealing, no cache lines crossing cores. This is the thread-per-core shape of
//! Envoy's and nginx's workers; the price is that a connection cannot move to an idle thread, so
//! one connection's work is bounded by one core.
//!
//! The rest of the node (pod lifecycle, informers, probes, the API client) stays on the process's
//! multi-thread runtime. A guest that runs long yields at its epoch deadlines (see the runtime's
//! time budget), so the other connections of its reactor keep being served.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::sync::mpsc::{UnboundedSender, unbounded_channel};
use tokio_util::task::TaskTracker;

type Job = Box<dyn FnOnce() + Send>;

/// The reactor threads (none: connections are served on the calling runtime).
pub struct Reactors {
    senders: Vec<UnboundedSender<Job>>,
    next: AtomicUsize,
}

impl Reactors {
    /// Starts `count` reactor threads, each keeping up to `kept_instances` finished Wasm
    /// instances until it goes idle (see `shoal_runtime_wasm::defer_instance_drops`). They stop
    /// when the `Reactors` is dropped and their last connection has finished.
    pub fn start(count: usize, kept_instances: usize) -> std::io::Result<Self> {
        let mut senders = Vec::with_capacity(count);
        for index in 0..count {
            // Instances whose requests are answered are dropped when the reactor goes idle,
            // after the responses are written (see `defer_instance_drops`).
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().on_thread_park(shoal_runtime_wasm::drop_retired).build()?;
            let (sender, mut jobs) = unbounded_channel::<Job>();
            std::thread::Builder::new().name(format!("shoal-reactor-{index}")).spawn(move || {
                shoal_runtime_wasm::defer_instance_drops(kept_instances);
                runtime.block_on(async move {
                    while let Some(job) = jobs.recv().await {
                        job();
                    }
                });
                // Let the connections still open finish (they end on the node's shutdown).
                runtime.shutdown_timeout(std::time::Duration::from_secs(10));
                // Drop the last kept instances now, not in the thread-local destructors at exit.
                shoal_runtime_wasm::drop_retired();
            })?;
            senders.push(sender);
        }
        Ok(Self { senders, next: AtomicUsize::new(0) })
    }

    /// How many reactor threads serve connections.
    pub fn count(&self) -> usize {
        self.senders.len()
    }

    /// Serves `stream` with `serve` on the next reactor, tracked by `tasks` (so that waiting for
    /// the node's tasks waits for it). Without reactors it is spawned here.
    pub fn serve<F, Fut>(&self, stream: tokio::net::TcpStream, tasks: &TaskTracker, serve: F)
    where
        F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        if self.senders.is_empty() {
            tasks.spawn(serve(stream));
            return;
        }
        // The socket moves to the reactor's own IO driver.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(error) => {
                tracing::debug!(%error, "handing a connection to a reactor");
                return;
            }
        };
        let token = tasks.token();
        let job: Job = Box::new(move || match tokio::net::TcpStream::from_std(stream) {
            Ok(stream) => {
                tokio::spawn(async move {
                    let _tracked = token;
                    serve(stream).await;
                });
            }
            Err(error) => tracing::debug!(%error, "registering a connection with its reactor"),
        });
        let index = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        if self.senders[index].send(job).is_err() {
            tracing::debug!(index, "a reactor has stopped; the connection is closed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn connections_are_served_in_turn_on_the_reactor_threads() {
        let reactors = Reactors::start(2, 0).expect("reactors");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let tasks = TaskTracker::new();
        let mut names = Vec::new();
        for _ in 0..4 {
            let mut client = tokio::net::TcpStream::connect(address).await.expect("connect");
            let (stream, _) = listener.accept().await.expect("accept");
            reactors.serve(stream, &tasks, |mut stream| async move {
                let thread = std::thread::current().name().unwrap_or_default().to_owned();
                let mut byte = [0u8; 1];
                if stream.read_exact(&mut byte).await.is_ok() {
                    let _ = stream.write_all(thread.as_bytes()).await;
                }
            });
            client.write_all(b"x").await.expect("write");
            let mut name = String::new();
            client.read_to_string(&mut name).await.expect("read");
            names.push(name);
        }
        assert_eq!(names, ["shoal-reactor-0", "shoal-reactor-1", "shoal-reactor-0", "shoal-reactor-1"]);
        tasks.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait()).await.expect("every connection's task ends and is tracked");
    }
}

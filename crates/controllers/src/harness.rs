//! The reconcile harness every controller runs in: workers take keys from a [`WorkQueue`], call
//! the controller's level-triggered `reconcile`, and requeue on failure (with backoff) or when
//! the controller asks to be called again; a periodic resync queues every primary object so that
//! a missed event heals.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::informer::Informer;
use crate::queue::WorkQueue;

/// What a reconcile asks for next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The object is as it should be; wait for the next change (or the resync).
    Done,
    /// Look again after this long (a deadline, a backoff, a pending readiness).
    RequeueAfter(Duration),
}

/// Why a reconcile did not finish; it is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] shoal_client::Error),
    #[error("{0}")]
    Other(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One controller: a name for logs and a reconcile of one key (`namespace/name`).
pub trait Reconciler: Send + Sync + 'static {
    fn name(&self) -> &'static str;
    fn reconcile(&self, key: &str) -> impl Future<Output = Result<Action>> + Send;
}

/// How a controller is run.
pub struct RunOptions {
    pub workers: usize,
    pub resync: Duration,
}

/// An informer whose objects are queued on every resync, as `key` or `Kind|key`.
pub struct ResyncSource {
    pub informer: Arc<Informer>,
    pub kind_prefix: bool,
}

impl ResyncSource {
    pub fn of(informer: &Arc<Informer>) -> Vec<Self> {
        vec![Self { informer: Arc::clone(informer), kind_prefix: false }]
    }
}

/// Runs `reconciler` on `queue` until `shutdown`, resyncing from `resync`.
pub fn spawn<R: Reconciler>(tasks: &TaskTracker, reconciler: Arc<R>, queue: Arc<WorkQueue>, resync: Vec<ResyncSource>, options: RunOptions, shutdown: CancellationToken) {
    for _ in 0..options.workers.max(1) {
        let reconciler = Arc::clone(&reconciler);
        let queue = Arc::clone(&queue);
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            loop {
                let key = tokio::select! {
                    key = queue.next() => key,
                    _ = shutdown.cancelled() => return,
                };
                let outcome = tokio::select! {
                    outcome = reconciler.reconcile(&key) => outcome,
                    _ = shutdown.cancelled() => return,
                };
                match outcome {
                    Ok(Action::Done) => queue.forget(&key),
                    Ok(Action::RequeueAfter(delay)) => {
                        queue.forget(&key);
                        queue.add_after(key.clone(), delay);
                    }
                    Err(error) => {
                        let delay = queue.add_rate_limited(&key);
                        if delay >= Duration::from_secs(1) {
                            tracing::warn!(controller = reconciler.name(), key, %error, "reconcile failed; retrying in {delay:?}");
                        } else {
                            tracing::debug!(controller = reconciler.name(), key, %error, "reconcile failed; retrying");
                        }
                    }
                }
                queue.done(&key);
            }
        });
    }
    let resync_queue = Arc::clone(&queue);
    tasks.spawn(async move {
        for source in &resync {
            tokio::select! {
                _ = source.informer.synced() => {}
                _ = shutdown.cancelled() => return,
            }
        }
        loop {
            for source in &resync {
                for key in source.informer.keys() {
                    if source.kind_prefix {
                        resync_queue.add(format!("{}|{key}", source.informer.info.kind));
                    } else {
                        resync_queue.add(key);
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(options.resync) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    });
}

/// Feeds changes of `informer` into `queue` as the keys `map` returns for each changed object.
pub fn watch_into(informer: &Informer, queue: &Arc<WorkQueue>, map: impl Fn(Option<&serde_json::Value>, Option<&serde_json::Value>) -> Vec<String> + Send + Sync + 'static) {
    let queue = Arc::clone(queue);
    informer.on_change(Box::new(move |old, new| {
        for key in map(old.map(|v| &**v), new.map(|v| &**v)) {
            queue.add(key);
        }
    }));
}

/// The queue keys of an informer's own objects: each changed object's key.
pub fn own_keys(old: Option<&serde_json::Value>, new: Option<&serde_json::Value>) -> Vec<String> {
    new.or(old).map(crate::informer::object_key).into_iter().collect()
}

/// A mapping for [`watch_into`]: the keys of the `kind` controllers owning a changed object.
pub fn owners_of_kind(kind: &'static str) -> impl Fn(Option<&serde_json::Value>, Option<&serde_json::Value>) -> Vec<String> + Send + Sync + 'static {
    move |old, new| {
        let mut keys: Vec<String> = [old, new].into_iter().flatten().filter_map(|o| owner_key(o, kind)).collect();
        keys.dedup();
        keys
    }
}

/// Writes `status` to `object` (of `kind`) through its status subresource when it changed,
/// recording the stored object in `cache`. `Some(action)` ends the reconcile: a conflict means
/// a newer object is on its way (look again at once), a 404 that it is gone.
pub async fn write_status(client: &shoal_client::Client, kind: &str, cache: &Informer, object: &serde_json::Value, status: serde_json::Value) -> Result<Option<Action>> {
    if object["status"] == status {
        return Ok(None);
    }
    let mut updated = object.clone();
    updated["status"] = status;
    let namespace = Some(shoal_api::meta::namespace(object)).filter(|n| !n.is_empty());
    match client.replace_status(crate::info(kind), namespace, shoal_api::meta::name(object), &updated).await {
        Ok(stored) => {
            cache.remember(stored);
            Ok(None)
        }
        Err(shoal_client::Error::Api(error)) if error.code == 409 => Ok(Some(Action::RequeueAfter(Duration::ZERO))),
        Err(shoal_client::Error::Api(error)) if error.code == 404 => Ok(Some(Action::Done)),
        Err(error) => Err(error.into()),
    }
}

/// The queue key of the controller owning `object` (of `kind`), if any.
pub fn owner_key(object: &serde_json::Value, kind: &str) -> Option<String> {
    let owner = crate::informer::controller_of(object)?;
    (owner["kind"] == kind).then(|| format!("{}/{}", shoal_api::meta::namespace(object), owner["name"].as_str().unwrap_or_default()))
}

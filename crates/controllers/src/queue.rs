//! The work queue between informers and reconcilers: de-duplicated keys, delayed requeues, and
//! per-key exponential backoff after failures. A key being reconciled is never handed to a
//! second worker; if it is added meanwhile, it is handed out again once the first is done.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// The first retry delay after a failed reconcile; it doubles per failure up to [`MAX_BACKOFF`].
pub const BASE_BACKOFF: Duration = Duration::from_millis(10);
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);

#[derive(Default)]
struct State {
    ready: VecDeque<String>,
    queued: HashSet<String>,
    processing: HashSet<String>,
    /// Keys added while being processed: they go back to `ready` when processing ends.
    dirty: HashSet<String>,
    delayed: BTreeMap<(Instant, u64), String>,
    sequence: u64,
    failures: HashMap<String, u32>,
}

#[derive(Default)]
pub struct WorkQueue {
    state: Mutex<State>,
    notify: Notify,
}

impl WorkQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `key` now (a no-op if it is already waiting).
    pub fn add(&self, key: impl Into<String>) {
        let key = key.into();
        let mut state = self.lock();
        if state.processing.contains(&key) {
            state.dirty.insert(key);
            return;
        }
        if state.queued.insert(key.clone()) {
            state.ready.push_back(key);
            drop(state);
            self.notify.notify_one();
        }
    }

    /// Queues `key` after `delay`.
    pub fn add_after(&self, key: impl Into<String>, delay: Duration) {
        if delay.is_zero() {
            self.add(key);
            return;
        }
        let mut state = self.lock();
        state.sequence += 1;
        let sequence = state.sequence;
        state.delayed.insert((Instant::now() + delay, sequence), key.into());
        drop(state);
        self.notify.notify_one();
    }

    /// Queues `key` after its backoff, which doubles with each call until [`forget`](Self::forget).
    pub fn add_rate_limited(&self, key: &str) -> Duration {
        let failures = {
            let mut state = self.lock();
            let failures = state.failures.entry(key.to_owned()).or_insert(0);
            *failures += 1;
            *failures
        };
        let delay = BASE_BACKOFF.saturating_mul(1u32 << (failures - 1).min(20)).min(MAX_BACKOFF);
        self.add_after(key, delay);
        delay
    }

    /// Resets `key`'s backoff.
    pub fn forget(&self, key: &str) {
        self.lock().failures.remove(key);
    }

    pub fn len(&self) -> usize {
        self.lock().ready.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits for the next key. The caller must call [`done`](Self::done) with it afterwards.
    pub async fn next(&self) -> String {
        loop {
            let notified = self.notify.notified();
            let wake_at = {
                let mut state = self.lock();
                let now = Instant::now();
                while let Some(entry) = state.delayed.first_entry() {
                    if entry.key().0 > now {
                        break;
                    }
                    let key = entry.remove();
                    if state.processing.contains(&key) {
                        state.dirty.insert(key);
                    } else if state.queued.insert(key.clone()) {
                        state.ready.push_back(key);
                    }
                }
                if let Some(key) = state.ready.pop_front() {
                    state.queued.remove(&key);
                    state.processing.insert(key.clone());
                    if !state.ready.is_empty() {
                        // Another worker may take the next one.
                        self.notify.notify_one();
                    }
                    return key;
                }
                state.delayed.first_key_value().map(|((at, _), _)| *at)
            };
            match wake_at {
                Some(at) => {
                    tokio::select! {
                        _ = notified => {}
                        _ = tokio::time::sleep_until(at) => {}
                    }
                }
                None => notified.await,
            }
        }
    }

    /// Ends processing of `key`, re-queuing it if it was added meanwhile.
    pub fn done(&self, key: &str) {
        let mut state = self.lock();
        state.processing.remove(key);
        if state.dirty.remove(key) && state.queued.insert(key.to_owned()) {
            state.ready.push_back(key.to_owned());
            drop(state);
            self.notify.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_deduplicated_and_not_handed_out_twice() {
        let queue = WorkQueue::default();
        queue.add("a");
        queue.add("a");
        queue.add("b");
        assert_eq!(queue.len(), 2);
        let first = queue.next().await;
        assert_eq!(first, "a");
        // Added while processing: held back until done.
        queue.add("a");
        assert_eq!(queue.next().await, "b");
        assert!(queue.is_empty());
        queue.done("a");
        assert_eq!(queue.next().await, "a");
    }

    #[tokio::test(start_paused = true)]
    async fn delayed_keys_wait_and_backoff_doubles() {
        let queue = WorkQueue::default();
        let start = Instant::now();
        queue.add_after("later", Duration::from_secs(5));
        assert_eq!(queue.next().await, "later");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        queue.done("later");
        assert_eq!(queue.add_rate_limited("x"), BASE_BACKOFF);
        assert_eq!(queue.add_rate_limited("x"), BASE_BACKOFF * 2);
        assert_eq!(queue.add_rate_limited("x"), BASE_BACKOFF * 4);
        queue.forget("x");
        assert_eq!(queue.add_rate_limited("x"), BASE_BACKOFF);
        for _ in 0..30 {
            queue.add_rate_limited("y");
        }
        assert_eq!(queue.add_rate_limited("y"), MAX_BACKOFF);
    }
}

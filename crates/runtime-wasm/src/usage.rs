//! What a container's guests use, for the node's metrics (`kubectl top`, autoscaling): the CPU
//! time spent running them and the linear memory their live instances hold.
//!
//! - **CPU:** the time a thread spends polling a guest's future (instantiation, Wasm, and the
//!   host calls made for it), less the time spent inside another metered guest polled from
//!   within it (a same-node Service call runs the callee inline): each nanosecond is charged to
//!   one container. Time a guest spends waiting (a timer, a socket, the CPU limit's throttle) is
//!   not polling, so it is not charged.
//! - **Memory:** linear memory as the store's limiter lets it grow, returned when the store is
//!   dropped. A fresh instance per request holds memory only while it runs.

use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use wasmtime::{ResourceLimiter, StoreLimits};

/// One container's running totals, shared by all its instances.
#[derive(Debug, Default)]
pub struct Usage {
    cpu_nanos: AtomicU64,
    memory_bytes: AtomicU64,
}

impl Usage {
    /// CPU time charged since the container started.
    pub fn cpu_time(&self) -> Duration {
        Duration::from_nanos(self.cpu_nanos.load(Ordering::Relaxed))
    }

    /// Linear memory its live instances hold now.
    pub fn memory_bytes(&self) -> u64 {
        self.memory_bytes.load(Ordering::Relaxed)
    }

    /// Charges CPU time spent for the container outside its guests' futures.
    pub fn charge_cpu(&self, time: Duration) {
        self.charge(time.as_nanos() as u64);
    }

    fn charge(&self, nanos: u64) {
        if nanos > 0 {
            self.cpu_nanos.fetch_add(nanos, Ordering::Relaxed);
        }
    }
}

std::thread_local! {
    /// Nanoseconds the metered futures polled inside the one being polled now have taken.
    static NESTED: Cell<u64> = const { Cell::new(0) };
}

/// A CPU limit and what the epoch checks of one store have charged to it so far.
pub(crate) struct Charged {
    pub limit: Arc<crate::CpuLimit>,
    pub by_epochs: Arc<AtomicU64>,
}

/// A guest's future whose polls are charged to a container's [`Usage`], and, under a CPU limit,
/// whose run time the epoch checks did not charge is charged to the limit when it ends.
pub(crate) struct Metered<F> {
    inner: F,
    usage: Arc<Usage>,
    limit: Option<Charged>,
    /// Nanoseconds of this future's own polls.
    own: u64,
}

impl<F> Metered<F> {
    pub(crate) fn new(inner: F, usage: Arc<Usage>, limit: Option<Charged>) -> Self {
        Self { inner, usage, limit, own: 0 }
    }
}

impl<F> Drop for Metered<F> {
    fn drop(&mut self) {
        if let Some(charged) = &self.limit {
            let rest = self.own.saturating_sub(charged.by_epochs.load(Ordering::Relaxed));
            if rest > 0 {
                charged.limit.charge_ended(Duration::from_nanos(rest));
            }
        }
    }
}

impl<F: Future + Unpin> Future for Metered<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let outer = NESTED.replace(0);
        let started = Instant::now();
        let result = Pin::new(&mut self.inner).poll(cx);
        let elapsed = started.elapsed().as_nanos() as u64;
        let nested = NESTED.replace(outer.saturating_add(elapsed));
        let own = elapsed.saturating_sub(nested);
        self.own += own;
        self.usage.charge(own);
        result
    }
}

/// A store's limits, counting the linear memory it is allowed into its container's [`Usage`].
pub(crate) struct Limits {
    inner: StoreLimits,
    usage: Arc<Usage>,
    /// Bytes this store has added to `usage`.
    held: u64,
    /// The last growth counted, taken back if it then fails.
    last_growth: u64,
}

impl Limits {
    pub(crate) fn new(inner: StoreLimits, usage: Arc<Usage>) -> Self {
        Self { inner, usage, held: 0, last_growth: 0 }
    }
}

impl ResourceLimiter for Limits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.inner.memory_growing(current, desired, maximum)?;
        self.last_growth = 0;
        if allowed {
            let growth = desired.saturating_sub(current) as u64;
            self.usage.memory_bytes.fetch_add(growth, Ordering::Relaxed);
            self.held += growth;
            self.last_growth = growth;
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        let growth = std::mem::take(&mut self.last_growth);
        self.usage.memory_bytes.fetch_sub(growth, Ordering::Relaxed);
        self.held -= growth;
        self.inner.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.inner.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.inner.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.inner.instances()
    }

    fn tables(&self) -> usize {
        self.inner.tables()
    }

    fn memories(&self) -> usize {
        self.inner.memories()
    }
}

impl Drop for Limits {
    fn drop(&mut self) {
        self.usage.memory_bytes.fetch_sub(self.held, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A future that burns `spin` of CPU on every poll, polling `nested` (if any) in between,
    /// and finishes after `polls` polls.
    struct Busy {
        spin: Duration,
        polls: u32,
        nested: Option<Pin<Box<dyn Future<Output = ()> + Unpin>>>,
    }

    impl Future for Busy {
        type Output = ();
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            let started = Instant::now();
            while started.elapsed() < self.spin {
                std::hint::spin_loop();
            }
            if let Some(nested) = self.nested.as_mut()
                && nested.as_mut().poll(cx).is_ready()
            {
                self.nested = None;
            }
            self.polls -= 1;
            if self.polls == 0 {
                Poll::Ready(())
            } else {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }

    #[tokio::test]
    async fn nested_guests_are_charged_once_each() {
        let (outer, inner) = (Arc::new(Usage::default()), Arc::new(Usage::default()));
        let callee = Metered::new(Busy { spin: Duration::from_millis(20), polls: 1, nested: None }, Arc::clone(&inner), None);
        let caller = Metered::new(Busy { spin: Duration::from_millis(10), polls: 2, nested: Some(Box::pin(callee)) }, Arc::clone(&outer), None);
        let started = Instant::now();
        caller.await;
        let wall = started.elapsed();
        let (outer_time, inner_time) = (outer.cpu_time(), inner.cpu_time());
        assert!(inner_time >= Duration::from_millis(20), "the callee ran 20 ms: {inner_time:?}");
        assert!(outer_time >= Duration::from_millis(20), "the caller ran 2 × 10 ms: {outer_time:?}");
        assert!(outer_time < Duration::from_millis(20) + (wall - Duration::from_millis(40)) + Duration::from_millis(1), "the callee's time is not charged to the caller too: {outer_time:?} of {wall:?}");
        assert!(outer_time + inner_time <= wall, "nothing is charged twice: {outer_time:?} + {inner_time:?} > {wall:?}");
    }

    #[test]
    fn memory_is_held_while_the_store_lives_and_returned_after() {
        let usage = Arc::new(Usage::default());
        let mut limits = Limits::new(wasmtime::StoreLimitsBuilder::new().memory_size(1 << 20).build(), Arc::clone(&usage));
        assert!(limits.memory_growing(0, 65536, None).expect("allowed"));
        assert!(limits.memory_growing(65536, 131072, None).expect("allowed"));
        assert_eq!(usage.memory_bytes(), 131072);
        assert!(!limits.memory_growing(131072, 2 << 20, None).expect("refused, not a trap"), "past the limit");
        assert_eq!(usage.memory_bytes(), 131072, "a refused growth is not counted");
        assert!(limits.memory_growing(131072, 196608, None).expect("allowed"));
        limits.memory_grow_failed(wasmtime::Error::msg("no memory")).expect("not a trap");
        assert_eq!(usage.memory_bytes(), 131072, "a growth that then failed is taken back");
        let other = Limits::new(wasmtime::StoreLimitsBuilder::new().build(), Arc::clone(&usage));
        drop(limits);
        assert_eq!(usage.memory_bytes(), 0);
        drop(other);
        assert_eq!(usage.memory_bytes(), 0);
    }
}

//! The process's log output: `SHOAL_LOG` (an `EnvFilter`; servers default to
//! `info,openraft=warn`), written to stderr, with each of openraft's warning and error call sites
//! shown at most once a minute.
//!
//! While a member of the Raft group is down or cut off, openraft 0.9 logs the same few messages
//! over and over: a warning and an error for every failed replication attempt (every 500 ms for a
//! peer it cannot connect to, at every heartbeat for one that times out), two warnings per failed
//! heartbeat, and an error per read whose leadership check could not reach the peer (hundreds a
//! second while readers retry). Measured on a two-member group with one member killed: 2,600
//! lines in ten seconds. The store's network layer logs once when a member stops answering and
//! once when it answers again (`shoal_store::network`), and the store says when the server falls
//! out of step with the group and back; openraft's own lines then add nothing after the first.
//! The first line of each call site always shows; `SHOAL_LOG=debug` output below warnings is not
//! limited.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::level_filters::LevelFilter;
use tracing::{Level, Metadata};
use tracing_subscriber::filter::FilterExt;
use tracing_subscriber::layer::{Context, Filter};
use tracing_subscriber::prelude::*;

/// How often a repeating message is let through.
const WINDOW: Duration = Duration::from_secs(60);

pub fn init(is_server: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SHOAL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if is_server { "info,openraft=warn" } else { "warn" }));
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_filter(filter.and(QuietRepeats::new(WINDOW)));
    tracing_subscriber::registry().with(layer).init();
}

/// openraft's warnings and errors: the call sites that repeat while a member is away.
fn is_limited(metadata: &Metadata<'_>) -> bool {
    metadata.is_event() && metadata.target().starts_with("openraft") && *metadata.level() <= Level::WARN
}

/// Lets a repeating message through once per window per call site.
struct QuietRepeats {
    window: Duration,
    last: Mutex<HashMap<Identifier, Instant>>,
}

impl QuietRepeats {
    fn new(window: Duration) -> Self {
        Self { window, last: Mutex::new(HashMap::new()) }
    }
}

/// Whether `key` may log at `now`, given when each key last did; records it if so.
fn admit<K: std::hash::Hash + Eq>(last: &mut HashMap<K, Instant>, key: K, now: Instant, window: Duration) -> bool {
    match last.get(&key) {
        Some(previous) if now.saturating_duration_since(*previous) < window => false,
        _ => {
            last.insert(key, now);
            true
        }
    }
}

impl<S> Filter<S> for QuietRepeats {
    fn enabled(&self, metadata: &Metadata<'_>, _: &Context<'_, S>) -> bool {
        !is_limited(metadata) || admit(&mut self.last.lock().unwrap_or_else(|p| p.into_inner()), metadata.callsite(), Instant::now(), self.window)
    }

    fn callsite_enabled(&self, metadata: &'static Metadata<'static>) -> Interest {
        // The limited call sites must be asked about at every event; the rest never change.
        if is_limited(metadata) { Interest::sometimes() } else { Interest::always() }
    }

    /// This filter only ever holds messages back, so it puts no bound on the level. Without a
    /// hint, `And` drops the `EnvFilter`'s own bound too; the process's maximum level then
    /// becomes TRACE, and every `log` record of every crate (wasmtime logs several per
    /// instantiation) is formed and dispatched before being refused.
    fn max_level_hint(&self) -> Option<LevelFilter> {
        Some(LevelFilter::TRACE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_passes_once_per_window_per_call_site() {
        let mut last = HashMap::new();
        let start = Instant::now();
        let window = Duration::from_secs(60);
        assert!(admit(&mut last, "a", start, window));
        assert!(!admit(&mut last, "a", start + Duration::from_millis(500), window));
        assert!(admit(&mut last, "b", start + Duration::from_millis(500), window), "another call site has its own window");
        assert!(!admit(&mut last, "a", start + Duration::from_secs(59), window));
        assert!(admit(&mut last, "a", start + Duration::from_secs(60), window));
        assert!(!admit(&mut last, "a", start + Duration::from_secs(61), window), "the window restarts when a message passes");
    }

    #[test]
    fn the_combined_filter_keeps_the_env_filters_level_bound() {
        let filter = tracing_subscriber::EnvFilter::new("info,openraft=warn").and(QuietRepeats::new(WINDOW));
        assert_eq!(Filter::<tracing_subscriber::Registry>::max_level_hint(&filter), Some(LevelFilter::INFO));
    }

    fn event(target: &'static str, level: Level) -> Metadata<'static> {
        Metadata::new(
            "event",
            target,
            level,
            None,
            None,
            None,
            tracing::field::FieldSet::new(&["message"], Identifier(&CALLSITE)),
            tracing::metadata::Kind::EVENT,
        )
    }

    #[test]
    fn only_openraft_warnings_and_errors_are_limited() {
        assert!(is_limited(&event("openraft::replication", Level::WARN)));
        assert!(is_limited(&event("openraft::core::raft_core", Level::ERROR)));
        assert!(!is_limited(&event("openraft::core::raft_core", Level::INFO)));
        assert!(!is_limited(&event("shoal_store::network", Level::WARN)));
    }

    struct TestCallsite;
    static CALLSITE: TestCallsite = TestCallsite;
    impl tracing::callsite::Callsite for TestCallsite {
        fn set_interest(&self, _: Interest) {}
        fn metadata(&self) -> &Metadata<'_> {
            unreachable!("the tests build metadata by hand")
        }
    }
}

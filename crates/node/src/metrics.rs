//! Resource usage of this node and of the containers it runs, served on the data plane at
//! `/_metrics` for the API server's `metrics.k8s.io` (`kubectl top`, the autoscaler).
//!
//! - Wasm containers count their own CPU time and linear memory
//!   ([`shoal_runtime_wasm::Usage`]); OCI containers are read from their cgroup (CPU time, and
//!   memory less inactive file pages: the working set, as the kubelet reports it).
//! - The node is the machine: busy time from `/proc/stat`, memory in use from `/proc/meminfo`
//!   (total less available).
//! - CPU is a rate, so the node samples every container's CPU time every [`RESOLUTION`] and
//!   answers with the usage since the newest sample at least a second old: a window of one to
//!   six seconds. A container that started after that sample is measured from it, which can only
//!   under-state it.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use shoal_runtime_wasm::Usage;

/// How often CPU time is sampled.
pub const RESOLUTION: Duration = Duration::from_secs(5);
/// Samples kept (the newest at least a second old is the baseline).
const SAMPLES_KEPT: usize = 4;

/// One container of one pod.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ContainerKey {
    pub uid: String,
    pub namespace: String,
    pub pod: String,
    pub container: String,
}

enum Source {
    Wasm(Arc<Usage>),
    /// An OCI container's cgroup (`/shoal/POD/CONTAINER`).
    Cgroup(String),
}

impl Source {
    /// CPU time so far and memory now (one read of the cgroup's files).
    fn read(&self) -> Option<(Duration, u64)> {
        match self {
            Source::Wasm(usage) => Some((usage.cpu_time(), usage.memory_bytes())),
            Source::Cgroup(cgroup) => shoal_runtime_oci::cgroup_usage(cgroup),
        }
    }
}

struct Sample {
    at: Instant,
    node_cpu: Option<Duration>,
    /// Each container's CPU time so far and memory then.
    containers: HashMap<ContainerKey, (Duration, u64)>,
}

/// The containers this node measures and its recent samples.
#[derive(Default)]
pub(crate) struct Metrics {
    sources: Mutex<HashMap<ContainerKey, Source>>,
    samples: Mutex<VecDeque<Sample>>,
}

impl Metrics {
    /// The usage counters of a Wasm container, kept across its restarts.
    pub(crate) fn wasm(&self, key: ContainerKey) -> Arc<Usage> {
        let mut sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        match sources.get(&key) {
            Some(Source::Wasm(usage)) => Arc::clone(usage),
            _ => {
                let usage = Arc::new(Usage::default());
                sources.insert(key, Source::Wasm(Arc::clone(&usage)));
                usage
            }
        }
    }

    /// Measures an OCI container through its cgroup.
    pub(crate) fn cgroup(&self, key: ContainerKey, cgroup: String) {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).insert(key, Source::Cgroup(cgroup));
    }

    /// Forgets the containers of pods that no longer run here.
    pub(crate) fn retain(&self, live: &HashSet<String>) {
        self.sources.lock().unwrap_or_else(|p| p.into_inner()).retain(|key, _| live.contains(&key.uid));
    }

    fn take_sample(&self) -> Sample {
        let sources = self.sources.lock().unwrap_or_else(|p| p.into_inner());
        let containers = sources.iter().filter_map(|(key, source)| Some((key.clone(), source.read()?))).collect();
        Sample { at: Instant::now(), node_cpu: machine_cpu_busy(), containers }
    }

    /// Records a sample, keeping the last few.
    pub(crate) fn sample(&self) {
        let sample = self.take_sample();
        let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.push_back(sample);
        while samples.len() > SAMPLES_KEPT {
            samples.pop_front();
        }
    }

    /// The node's and its pods' usage now (see the module's notes), as the data plane serves it.
    pub(crate) fn summary(&self) -> Value {
        let now = self.take_sample();
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        let baseline = samples.iter().rev().find(|s| now.at.duration_since(s.at) >= Duration::from_secs(1)).or(samples.front());
        let window = baseline.map(|b| now.at.duration_since(b.at)).filter(|w| !w.is_zero());
        let rate = |used: Duration, before: Option<Duration>| -> Option<u64> {
            let window = window?;
            let spent = used.checked_sub(before.unwrap_or_default())?;
            Some((spent.as_nanos() as f64 / window.as_secs_f64()).round() as u64)
        };
        let node_cpu = match (now.node_cpu, baseline.and_then(|b| b.node_cpu)) {
            (Some(used), Some(before)) => rate(used, Some(before)),
            _ => None,
        };
        let mut pods: HashMap<&str, (Value, Vec<Value>)> = HashMap::new();
        for (key, (used, memory)) in &now.containers {
            let Some(cpu) = rate(*used, baseline.and_then(|b| b.containers.get(key)).map(|(cpu, _)| *cpu)) else { continue };
            let memory = *memory;
            let entry = pods.entry(&key.uid).or_insert_with(|| (json!({"uid": key.uid, "namespace": key.namespace, "name": key.pod}), Vec::new()));
            entry.1.push(json!({"name": key.container, "cpuNanocores": cpu, "memoryBytes": memory}));
        }
        let pods: Vec<Value> = pods
            .into_values()
            .map(|(mut pod, mut containers)| {
                containers.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
                pod["containers"] = Value::Array(containers);
                pod
            })
            .collect();
        json!({
            "timestamp": shoal_api::meta::format_time(jiff::Timestamp::now()),
            "windowSeconds": window.map(|w| w.as_secs_f64()),
            "node": {"cpuNanocores": node_cpu, "memoryBytes": machine_memory_used()},
            "pods": pods,
        })
    }
}

/// Samples every [`RESOLUTION`] and forgets pods this node no longer runs, until shutdown.
pub(crate) async fn run(shared: Arc<crate::Shared>) {
    let mut ticks = tokio::time::interval(RESOLUTION);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let live: HashSet<String> = shared.pods.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        shared.metrics.retain(&live);
        shared.metrics.sample();
    }
}

/// The machine's busy CPU time since boot, all cores (`/proc/stat`: user, nice, system, irq,
/// softirq and steal; in USER_HZ, 100 per second on Linux).
fn machine_cpu_busy() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_proc_stat(&text)
}

fn parse_proc_stat(text: &str) -> Option<Duration> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line.split_whitespace().skip(1).map(|f| f.parse().unwrap_or(0)).collect();
    let field = |index: usize| fields.get(index).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = field(0) + field(1) + field(2) + field(5) + field(6) + field(7);
    Some(Duration::from_millis(busy * 10))
}

/// The machine's memory in use: total less available (`/proc/meminfo`).
fn machine_memory_used() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_meminfo(&text)
}

fn parse_meminfo(text: &str) -> Option<u64> {
    let field = |name: &str| text.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
    Some(field("MemTotal:")?.saturating_sub(field("MemAvailable:")?) * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_files_are_read_as_the_kernel_writes_them() {
        let stat = "cpu  100 5 50 9000 20 3 2 1 0 0\ncpu0 50 2 25 4500 10 1 1 0 0 0\nintr 1 2 3\n";
        assert_eq!(parse_proc_stat(stat), Some(Duration::from_millis((100 + 5 + 50 + 3 + 2 + 1) * 10)));
        assert_eq!(parse_proc_stat("intr 1\n"), None);
        let meminfo = "MemTotal:       24000000 kB\nMemFree:        20000000 kB\nMemAvailable:   22000000 kB\n";
        assert_eq!(parse_meminfo(meminfo), Some(2_000_000 * 1024));
        assert_eq!(parse_meminfo("MemTotal: 5 kB\n"), None);
    }

    #[test]
    fn cpu_is_the_rate_since_a_sample_at_least_a_second_old() {
        let metrics = Metrics::default();
        let key = |pod: &str| ContainerKey { uid: format!("uid-{pod}"), namespace: "default".into(), pod: pod.into(), container: "main".into() };
        let usage = metrics.wasm(key("a"));
        assert!(Arc::ptr_eq(&usage, &metrics.wasm(key("a"))), "one counter per container, kept across restarts");
        // No sample yet: no rate, so the pod is left out rather than shown idle.
        assert_eq!(metrics.summary()["pods"], json!([]));
        metrics.sample();
        // Back-date the sample by two seconds, with 0.5 s of CPU since.
        {
            let mut samples = metrics.samples.lock().expect("samples");
            let sample = samples.back_mut().expect("one");
            sample.at -= Duration::from_secs(2);
        }
        usage.charge_cpu(Duration::from_millis(500));
        let summary = metrics.summary();
        let window = summary["windowSeconds"].as_f64().expect("a window");
        assert!((2.0..2.5).contains(&window), "{window}");
        let cpu = summary["pods"][0]["containers"][0]["cpuNanocores"].as_u64().expect("cpu");
        let expected = 0.5e9 / window;
        assert!((cpu as f64 - expected).abs() < 1e6, "{cpu} vs {expected}");
        assert_eq!(summary["pods"][0]["name"], "a");
        metrics.retain(&HashSet::new());
        assert_eq!(metrics.summary()["pods"], json!([]), "a pod that stopped is forgotten");
    }
}

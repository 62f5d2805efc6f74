//! Shared helpers of the benchmark programs: latency summaries.

use std::time::Duration;

/// Percentile summary of a set of latencies.
#[derive(Debug, Clone)]
pub struct Summary {
    pub count: usize,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
}

impl Summary {
    pub fn of(mut samples: Vec<Duration>) -> Self {
        samples.sort();
        let at = |q: f64| samples.get(((samples.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or_default();
        Self { count: samples.len(), p50: at(0.50), p99: at(0.99), max: samples.last().copied().unwrap_or_default() }
    }
}

pub fn micros(duration: Duration) -> String {
    format!("{:.0} µs", duration.as_secs_f64() * 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let summary = Summary::of((1..=100).map(Duration::from_millis).collect());
        assert_eq!(summary.count, 100);
        assert_eq!(summary.p50, Duration::from_millis(51));
        assert_eq!(summary.p99, Duration::from_millis(99));
        assert_eq!(summary.max, Duration::from_millis(100));
    }
}

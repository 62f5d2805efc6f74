//! A fixed, lock-free latency histogram: four buckets per power of two from 128 ns to about 8.6 s
//! (each bucket 12.5 to 25% wide), 105 counters. Percentiles are reported as the upper bound of
//! their bucket, so they never flatter. Recording is one relaxed atomic add.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

const FIRST_OCTAVE: u32 = 7; // 2^7 ns = 128 ns
const OCTAVES: usize = 26; // up to 2^33 ns, about 8.6 s
const PER_OCTAVE: usize = 4;
const BUCKETS: usize = OCTAVES * PER_OCTAVE + 1; // and one for everything longer

pub struct LatencyHistogram {
    buckets: [AtomicU64; BUCKETS],
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { buckets: std::array::from_fn(|_| AtomicU64::new(0)) }
    }
}

fn index(nanos: u64) -> usize {
    if nanos < 1 << FIRST_OCTAVE {
        return 0;
    }
    let octave = 63 - nanos.leading_zeros();
    let within = ((nanos >> (octave - 2)) & 3) as usize;
    ((octave - FIRST_OCTAVE) as usize * PER_OCTAVE + within).min(BUCKETS - 1)
}

fn upper_bound(index: usize) -> Duration {
    if index == BUCKETS - 1 {
        return Duration::MAX;
    }
    let octave = FIRST_OCTAVE + (index / PER_OCTAVE) as u32;
    let within = (index % PER_OCTAVE) as u64;
    Duration::from_nanos((1u64 << octave) + (within + 1) * (1u64 << (octave - 2)))
}

impl LatencyHistogram {
    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.buckets[index(nanos)].fetch_add(1, Ordering::Relaxed);
    }

    /// How many durations were recorded.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// The `quantile` (0.99 for p99) as its bucket's upper bound; `None` before any record.
    pub fn quantile(&self, quantile: f64) -> Option<Duration> {
        let counts: Vec<u64> = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = ((quantile.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (index, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= target {
                return Some(upper_bound(index));
            }
        }
        Some(upper_bound(BUCKETS - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_bound_their_values_within_a_quarter() {
        for nanos in [1u64, 127, 128, 159, 160, 1_000, 12_345, 20_000, 999_999, 1 << 32] {
            let bound = upper_bound(index(nanos)).as_nanos() as u64;
            assert!(bound > nanos || nanos < 128, "{nanos} -> {bound}");
            assert!(nanos < 128 || bound <= nanos + nanos / 4 + 1, "{nanos} -> {bound}: within 25%");
        }
        assert_eq!(upper_bound(index(u64::MAX)), Duration::MAX);
    }

    #[test]
    fn quantiles_follow_the_records() {
        let histogram = LatencyHistogram::default();
        assert_eq!(histogram.quantile(0.99), None);
        for _ in 0..990 {
            histogram.record(Duration::from_micros(10));
        }
        for _ in 0..10 {
            histogram.record(Duration::from_millis(5));
        }
        assert_eq!(histogram.count(), 1000);
        let p50 = histogram.quantile(0.5).expect("p50");
        let p99 = histogram.quantile(0.99).expect("p99");
        let p999 = histogram.quantile(0.999).expect("p99.9");
        assert!(p50 >= Duration::from_micros(10) && p50 <= Duration::from_micros(13), "{p50:?}");
        assert_eq!(p99, p50, "990 of 1000 are 10 µs, so p99 is too");
        assert!(p999 >= Duration::from_millis(5) && p999 <= Duration::from_micros(6_250), "{p999:?}");
    }
}

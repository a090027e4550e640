//! The pace of background copies: segment replicas copied by repair (a
//! storage target drained or down) share one byte rate per broker, so
//! retiring storage under load does not crowd out produce and fetch.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

/// Spaces copies so that, over time, at most `bytes_per_sec` are copied
/// (0: no limit). A copy starts when the bytes before it have had their
/// time, so the burst is one copy; waiters are served in the order they
/// asked.
pub struct Pacer {
    bytes_per_sec: u64,
    next: Mutex<Option<Instant>>,
}

impl Pacer {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            bytes_per_sec,
            next: Mutex::new(None),
        }
    }

    pub fn limit(&self) -> Option<u64> {
        (self.bytes_per_sec > 0).then_some(self.bytes_per_sec)
    }

    /// Wait for the right to copy `bytes`; returns how long it waited.
    pub async fn acquire(&self, bytes: u64) -> Duration {
        let wait = self.reserve(bytes, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        wait
    }

    /// Book the next turn for `bytes` asked at `now`: how long to wait.
    fn reserve(&self, bytes: u64, now: Instant) -> Duration {
        let Some(rate) = self.limit() else {
            return Duration::ZERO;
        };
        let cost = Duration::from_secs_f64(bytes as f64 / rate as f64);
        let mut next = self.next.lock().unwrap();
        // Time not used while idle is not saved up for a later burst.
        let start = next.map_or(now, |n| n.max(now));
        *next = Some(start + cost);
        start - now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn copies_are_spaced_to_the_rate_and_idle_time_is_not_saved() {
        let pacer = Pacer::new(1_000_000);
        let t0 = Instant::now();
        // Four 500 KB copies asked at once at 1 MB/s: every 0.5 s.
        let waits: Vec<Duration> = (0..4).map(|_| pacer.reserve(500_000, t0)).collect();
        assert_eq!(waits, [0, 500, 1_000, 1_500].map(MS).to_vec());
        // Asked later, a copy waits only for what is left of the turns.
        assert_eq!(pacer.reserve(1, t0 + MS(1_800)), MS(200));
        // After a long idle time, no burst: one copy at once, then paced.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(pacer.reserve(2_000_000, later), Duration::ZERO);
        assert_eq!(pacer.reserve(1, later), Duration::from_secs(2));
    }

    #[tokio::test]
    async fn acquire_waits_its_turn() {
        let pacer = Pacer::new(100_000);
        assert_eq!(pacer.acquire(2_000).await, Duration::ZERO);
        // 2 KB at 100 KB/s is a 20 ms turn, and the wait is slept.
        let asked = Instant::now();
        let waited = pacer.acquire(1).await;
        assert!(waited <= MS(20), "{waited:?}");
        assert!(asked.elapsed() >= waited);
    }

    #[tokio::test]
    async fn zero_means_no_limit() {
        let pacer = Pacer::new(0);
        assert_eq!(pacer.limit(), None);
        for _ in 0..100 {
            assert_eq!(pacer.acquire(u64::MAX).await, Duration::ZERO);
        }
    }
}

//! Read pacing for the slow-reader scenario: a token bucket per reader that
//! turns "N bytes per second" into how many bytes one read may take now.
//!
//! Time is passed in, so the arithmetic is tested without sleeping; the
//! reading itself lives in `slow.rs`.

use std::time::{Duration, Instant};

/// Tokens a bucket holds at most, as time at the rate: a reader that was
/// not served for a while (a busy loop, a late wake-up) catches up by at
/// most this much at once, so its reads stay a rate, not bursts.
const BURST: Duration = Duration::from_millis(20);
/// The least burst, so a very low rate still reads whole small frames
/// rather than a few bytes per wake-up.
const MIN_BURST_BYTES: f64 = 4096.0;

/// One reader's allowance of bytes.
#[derive(Debug, Clone)]
pub struct Pacer {
    /// Bytes per second; `None`: unpaced (read whatever is there).
    rate: Option<f64>,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// A pacer at `bytes_per_sec` (0: unpaced), starting empty at `now`.
    pub fn new(bytes_per_sec: u64, now: Instant) -> Pacer {
        let rate = (bytes_per_sec > 0).then_some(bytes_per_sec as f64);
        let burst = rate.map_or(0.0, |r| (r * BURST.as_secs_f64()).max(MIN_BURST_BYTES));
        Pacer {
            rate,
            burst,
            tokens: 0.0,
            last: now,
        }
    }

    /// Bytes that may be read at `now`.
    pub fn allowance(&mut self, now: Instant) -> usize {
        let Some(rate) = self.rate else {
            return usize::MAX;
        };
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + dt * rate).min(self.burst);
        self.tokens as usize
    }

    /// `n` bytes were read.
    pub fn spend(&mut self, n: usize) {
        if self.rate.is_some() {
            self.tokens -= n as f64;
        }
    }
}

/// Seconds to move `bytes` at `bytes_per_sec`: the floor a paced reader
/// (or a link of that rate) cannot beat. `None` when unpaced.
pub fn floor_secs(bytes: u64, bytes_per_sec: u64) -> Option<f64> {
    (bytes_per_sec > 0).then(|| bytes as f64 / bytes_per_sec as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn refills_at_the_rate_and_caps_the_burst() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1_000_000, t0);
        assert_eq!(p.allowance(t0), 0, "starts empty");
        assert_eq!(p.allowance(t0 + 5 * MS), 5000);
        p.spend(5000);
        assert_eq!(p.allowance(t0 + 5 * MS), 0);
        // A long pause buys 20 ms of rate, not the whole pause.
        assert_eq!(p.allowance(t0 + 1000 * MS), 20_000);
        // A short read leaves the rest for later.
        p.spend(1500);
        assert_eq!(p.allowance(t0 + 1000 * MS), 18_500);
    }

    #[test]
    fn reads_over_time_match_the_rate() {
        // Read everything allowed every 5 ms for 10 s at 1 MiB/s.
        let t0 = Instant::now();
        let rate = 1 << 20;
        let mut p = Pacer::new(rate, t0);
        let mut total = 0;
        for i in 1..=2000 {
            let n = p.allowance(t0 + i * 5 * MS);
            p.spend(n);
            total += n as u64;
        }
        let want = 10 * rate;
        assert!(want - total < 2000, "{total} of {want}");
        assert_eq!(floor_secs(want, rate), Some(10.0));
    }

    #[test]
    fn low_rates_get_a_minimum_burst_and_zero_is_unpaced() {
        let t0 = Instant::now();
        let mut p = Pacer::new(1000, t0);
        assert_eq!(p.allowance(t0 + 60_000 * MS), 4096);
        let mut p = Pacer::new(0, t0);
        assert_eq!(p.allowance(t0), usize::MAX);
        p.spend(1 << 30);
        assert_eq!(p.allowance(t0), usize::MAX);
        assert_eq!(floor_secs(5, 0), None);
    }

    #[test]
    fn time_going_backwards_is_ignored() {
        let t0 = Instant::now() + Duration::from_secs(1);
        let mut p = Pacer::new(1_000_000, t0);
        assert_eq!(p.allowance(t0 - 500 * MS), 0);
        assert_eq!(p.allowance(t0 + 2 * MS), 2000);
    }
}

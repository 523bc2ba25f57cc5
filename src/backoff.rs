//! Capped exponential backoff with jitter, shared by every retry loop (platform polls,
//! sends, agent restarts), so that no failure turns into a hot loop.

use std::time::Duration;

/// Delays that double from `base` up to `max`, each shortened by up to a quarter at random so
/// that many clients failing together do not retry together.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    max: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, max: Duration) -> Backoff {
        Backoff { base, max, attempt: 0 }
    }

    /// The delay before the next retry.
    pub fn next_delay(&mut self) -> Duration {
        let full = self.base.saturating_mul(1u32 << self.attempt.min(16)).min(self.max);
        self.attempt = self.attempt.saturating_add(1);
        let jitter = full.as_millis() as u64 / 4;
        let cut = if jitter == 0 { 0 } else { getrandom::u64().unwrap_or(0) % jitter };
        full - Duration::from_millis(cut)
    }

    /// How many delays were handed out since the last success.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// After a success: start again from `base`.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_bounded_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let expected_full = [100, 200, 400, 800, 1000, 1000, 1000];
        for full in expected_full {
            let d = b.next_delay().as_millis() as u64;
            assert!(d <= full && d >= full - full / 4, "delay {d} for full {full}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
        assert_eq!(b.attempts(), 1);
    }

    #[test]
    fn many_attempts_do_not_overflow() {
        let mut b = Backoff::new(Duration::from_secs(3), Duration::from_secs(60));
        for _ in 0..100 {
            assert!(b.next_delay() <= Duration::from_secs(60));
        }
    }
}

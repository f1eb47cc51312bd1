//! Time for row versions: `_updated` must strictly increase, even when the wall clock stalls
//! or steps back, so every write takes `max(now, last + 1µs)`.

use std::sync::atomic::{AtomicI64, Ordering};

pub fn wall_clock_us() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[derive(Debug, Default)]
pub struct VersionClock {
    last: AtomicI64,
}

impl VersionClock {
    /// The next version time, strictly greater than every earlier one.
    pub fn next(&self) -> i64 {
        let now = wall_clock_us();
        let mut prev = self.last.load(Ordering::Relaxed);
        loop {
            let candidate = now.max(prev + 1);
            match self.last.compare_exchange_weak(prev, candidate, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return candidate,
                Err(actual) => prev = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_strictly_increase() {
        let c = VersionClock::default();
        let mut prev = c.next();
        for _ in 0..10_000 {
            let next = c.next();
            assert!(next > prev);
            prev = next;
        }
    }
}

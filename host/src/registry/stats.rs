//! Per-version counters: totals, in-flight work, and outcomes per second over
//! the last few minutes (what `atoll ps` shows and what a canary is judged by).
//!
//! Written on every request, so lock-free: a ring of one-second buckets of
//! atomics. A bucket is reused when its second comes round again; an outcome
//! recorded by a thread racing that reset may be lost, which is acceptable for
//! rates (the totals are exact).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Longest window a rate can be measured over.
pub const MAX_WINDOW: Duration = Duration::from_secs(300);
const BUCKETS: usize = MAX_WINDOW.as_secs() as usize + 1;

/// Outcomes of one version.
pub struct VersionStats {
    started: Instant,
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    buckets: Box<[Bucket]>,
}

#[derive(Default)]
struct Bucket {
    /// The second (since `started`, plus one; 0 = never used) it counts.
    second: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
}

/// Outcomes over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Window {
    /// Invocations that ended well.
    pub ok: u64,
    /// Invocations that failed (5xx, trap, deadline).
    pub failed: u64,
}

impl Window {
    /// All invocations.
    pub fn total(&self) -> u64 {
        self.ok + self.failed
    }

    /// Failed / total, 0 when there were none.
    pub fn error_rate(&self) -> f64 {
        match self.total() {
            0 => 0.0,
            n => self.failed as f64 / n as f64,
        }
    }
}

/// Marks one invocation in flight until dropped.
pub struct InFlight<'a>(&'a AtomicU64);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Default for VersionStats {
    fn default() -> Self {
        VersionStats {
            started: Instant::now(),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
        }
    }
}

impl VersionStats {
    /// Counts an invocation in flight until the guard drops.
    pub fn enter(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(&self.in_flight)
    }

    /// Records how an invocation ended.
    pub fn record(&self, failed: bool) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if failed {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        let second = self.started.elapsed().as_secs() + 1;
        let bucket = &self.buckets[second as usize % BUCKETS];
        let seen = bucket.second.load(Ordering::Acquire);
        if seen != second
            && bucket
                .second
                .compare_exchange(seen, second, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            bucket.ok.store(0, Ordering::Relaxed);
            bucket.failed.store(0, Ordering::Relaxed);
        }
        let counter = if failed { &bucket.failed } else { &bucket.ok };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Outcomes in the last `window` (whole seconds, the current one included).
    pub fn window(&self, window: Duration) -> Window {
        let now = self.started.elapsed().as_secs() + 1;
        let span = window.min(MAX_WINDOW).as_secs().max(1);
        let mut out = Window::default();
        for b in self.buckets.iter() {
            let second = b.second.load(Ordering::Acquire);
            if second != 0 && second <= now && now - second < span {
                out.ok += b.ok.load(Ordering::Relaxed);
                out.failed += b.failed.load(Ordering::Relaxed);
            }
        }
        out
    }

    /// Invocations per second over the last `window`.
    pub fn rate(&self, window: Duration) -> f64 {
        // The window counts whole seconds, but no more than have passed.
        let secs = window
            .as_secs_f64()
            .min(self.started.elapsed().as_secs_f64())
            .max(1.0);
        self.window(window).total() as f64 / secs
    }

    /// All invocations so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// All failed invocations so far.
    pub fn errors(&self) -> u64 {
        self.errors.load(Ordering::Relaxed)
    }

    /// Invocations running now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_totals_and_the_current_window() {
        let s = VersionStats::default();
        for i in 0..10 {
            s.record(i % 5 == 0);
        }
        assert_eq!((s.requests(), s.errors()), (10, 2));
        let w = s.window(Duration::from_secs(30));
        assert_eq!(w, Window { ok: 8, failed: 2 });
        assert!((w.error_rate() - 0.2).abs() < 1e-9);
        {
            let _a = s.enter();
            let _b = s.enter();
            assert_eq!(s.in_flight(), 2);
        }
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn old_seconds_fall_out_of_the_window() {
        let s = VersionStats {
            started: Instant::now() - Duration::from_secs(10),
            ..VersionStats::default()
        };
        // Pretend 3 failures happened 8 s ago.
        let old = &s.buckets[(10 - 8 + 1) % BUCKETS];
        old.second.store(10 - 8 + 1, Ordering::Relaxed);
        old.failed.store(3, Ordering::Relaxed);
        s.record(false);
        assert_eq!(
            s.window(Duration::from_secs(5)),
            Window { ok: 1, failed: 0 }
        );
        assert_eq!(
            s.window(Duration::from_secs(30)),
            Window { ok: 1, failed: 3 }
        );
    }
}

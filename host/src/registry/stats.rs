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

/// Upper bounds (seconds) of the latency histogram's buckets (`+Inf` after).
pub const LATENCY_BOUNDS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 2.5, 10.0,
];

/// A latency histogram over [`LATENCY_BOUNDS`]: lock-free counters, read
/// at scrape time. Invocations, kv flushes and the like share it.
#[derive(Default)]
pub struct Histogram {
    /// Per bucket (not cumulative), then `+Inf`.
    buckets: [AtomicU64; LATENCY_BOUNDS.len() + 1],
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one duration.
    pub fn observe(&self, took: Duration) {
        let secs = took.as_secs_f64();
        let i = LATENCY_BOUNDS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BOUNDS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// Cumulative counts per bound (then `+Inf`), and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|c| {
                total += c.load(Ordering::Relaxed);
                total
            })
            .collect();
        let sum = self.sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (cumulative, sum)
    }
}

/// Why the host stopped or refused an invocation of a version, or something
/// it asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_concurrency` was reached (503).
    Concurrency,
    /// The instance pool was full (503).
    Pool,
    /// It ran past its deadline (504).
    Deadline,
    /// It trapped.
    Trap,
    /// A memory could not grow past `memory` (or its own declared maximum):
    /// counted once per refused growth, so one invocation may count several.
    Memory,
}

impl Limit {
    /// All of them, in order.
    pub const ALL: [Limit; 5] = [
        Limit::Concurrency,
        Limit::Pool,
        Limit::Deadline,
        Limit::Trap,
        Limit::Memory,
    ];

    /// Its label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Concurrency => "concurrency",
            Limit::Pool => "instance_pool",
            Limit::Deadline => "deadline",
            Limit::Trap => "trap",
            Limit::Memory => "memory",
        }
    }
}

/// Outcomes of one version.
pub struct VersionStats {
    started: Instant,
    requests: AtomicU64,
    errors: AtomicU64,
    in_flight: AtomicU64,
    buckets: Box<[Bucket]>,
    /// HTTP answers by class (index = status / 100).
    statuses: [AtomicU64; 6],
    /// Latency histogram: per bucket (not cumulative), then `+Inf`.
    latency: Histogram,
    /// Refusals and stops by [`Limit`].
    limits: [AtomicU64; Limit::ALL.len()],
    /// Traps by kind (wasmtime's trap code, or `host` for an error from a
    /// host call). Touched only when something traps.
    traps: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
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
            statuses: Default::default(),
            latency: Histogram::default(),
            limits: Default::default(),
            traps: Default::default(),
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

    /// Records an HTTP answer's status and how long its head took.
    pub fn answered(&self, status: u16, took: Duration) {
        if let Some(class) = self.statuses.get(usize::from(status / 100)) {
            class.fetch_add(1, Ordering::Relaxed);
        }
        self.observe(took);
    }

    /// Records how long an invocation took.
    pub fn observe(&self, took: Duration) {
        self.latency.observe(took);
    }

    /// Counts a limit reached.
    pub fn limit(&self, limit: Limit) {
        self.limits[limit as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a trap (also as [`Limit::Trap`]), by its kind.
    pub fn trapped(&self, error: &wasmtime::Error) {
        self.limit(Limit::Trap);
        let kind = match error.downcast_ref::<wasmtime::Trap>() {
            Some(trap) => format!("{trap:?}"),
            None => "host".to_string(),
        };
        *self
            .traps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(kind)
            .or_default() += 1;
    }

    /// Traps so far, by kind.
    pub fn traps(&self) -> Vec<(String, u64)> {
        self.traps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// Times a limit was reached.
    pub fn limits(&self, limit: Limit) -> u64 {
        self.limits[limit as usize].load(Ordering::Relaxed)
    }

    /// HTTP answers of one class (`2` for 2xx).
    pub fn statuses(&self, class: usize) -> u64 {
        self.statuses
            .get(class)
            .map_or(0, |c| c.load(Ordering::Relaxed))
    }

    /// The latency histogram: cumulative counts per bound (then `+Inf`), and the sum in seconds.
    pub fn latency(&self) -> (Vec<u64>, f64) {
        self.latency.snapshot()
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
        s.answered(200, Duration::from_micros(300));
        s.answered(503, Duration::from_secs(20));
        s.limit(Limit::Concurrency);
        assert_eq!((s.statuses(2), s.statuses(5), s.statuses(4)), (1, 1, 0));
        let (cumulative, sum) = s.latency();
        assert_eq!(cumulative[1], 0); // <= 250 us
        assert_eq!(cumulative[2], 1); // <= 500 us
        assert_eq!(cumulative[LATENCY_BOUNDS.len() - 1], 1); // <= 10 s
        assert_eq!(cumulative[LATENCY_BOUNDS.len()], 2); // +Inf
        assert!((sum - 20.0003).abs() < 1e-9);
        assert_eq!(s.limits(Limit::Concurrency), 1);
        assert_eq!(s.limits(Limit::Trap), 0);
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

//! A circuit breaker with resilience4j's count-based semantics.
//!
//! - **Closed:** calls pass; the last `window` outcomes are kept. Once at
//!   least `min_calls` are recorded, a failure rate at or above
//!   `failure_rate`, or a slow-call rate at or above `slow_call_rate`, opens it.
//! - **Open:** calls fail at once, without entering the callee, for `open_for`.
//! - **Half-open:** the next `half_open_calls` calls are let through as
//!   probes and the rest refused; when all probes have answered, the same
//!   thresholds over the probes decide: open again, or closed with a fresh window.
//!
//! One mutex around a small struct: a call takes it twice (admit, record), for
//! well under a microsecond each. Written here rather than taken from a crate:
//! the breaker crates on crates.io (failsafe, ...) have no slow-call rate or
//! half-open probe limit, which the resilience4j semantics need.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::config::BreakerSpec;

/// The breaker's state, for views.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Calls pass.
    Closed,
    /// Calls fail fast.
    Open,
    /// Probes pass.
    HalfOpen,
}

impl State {
    /// `closed`, `open` or `half-open`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half-open",
        }
    }
}

/// How one call went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// It failed (trap, timeout, unavailable).
    pub failed: bool,
    /// It took longer than `slow_call`.
    pub slow: bool,
}

/// Permission to make one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    probe: bool,
}

/// A refused call: the circuit is open (or its probes are all out).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    /// Until it probes again (zero while half-open).
    pub retry_in: Duration,
}

/// A snapshot for `atoll ps` and the admin API.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Snapshot {
    /// The state.
    pub state: State,
    /// Outcomes in the window (closed) or probes answered (half-open).
    pub calls: usize,
    /// Failure rate over them.
    pub failure_rate: f64,
    /// Times it opened.
    pub opened: u64,
    /// Calls refused while open.
    pub refused: u64,
}

/// One edge's breaker.
pub struct Breaker {
    spec: BreakerSpec,
    inner: Mutex<Inner>,
}

struct Inner {
    state: Phase,
    /// Closed: the last `window` outcomes. Half-open: the probes' outcomes.
    outcomes: VecDeque<Outcome>,
    opened: u64,
    refused: u64,
}

enum Phase {
    Closed,
    Open { until: Instant },
    HalfOpen { admitted: u32 },
}

impl Breaker {
    /// A closed breaker.
    pub fn new(spec: BreakerSpec) -> Breaker {
        Breaker {
            inner: Mutex::new(Inner {
                state: Phase::Closed,
                outcomes: VecDeque::with_capacity(spec.window as usize),
                opened: 0,
                refused: 0,
            }),
            spec,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a call, or refuses it.
    pub fn admit(&self, now: Instant) -> Result<Ticket, Refused> {
        let mut inner = self.lock();
        match inner.state {
            Phase::Closed => Ok(Ticket { probe: false }),
            Phase::Open { until } if now >= until => {
                inner.state = Phase::HalfOpen { admitted: 1 };
                inner.outcomes.clear();
                Ok(Ticket { probe: true })
            }
            Phase::Open { until } => {
                inner.refused += 1;
                Err(Refused {
                    retry_in: until - now,
                })
            }
            Phase::HalfOpen { ref mut admitted } if *admitted < self.spec.half_open_calls => {
                *admitted += 1;
                Ok(Ticket { probe: true })
            }
            Phase::HalfOpen { .. } => {
                inner.refused += 1;
                Err(Refused {
                    retry_in: Duration::ZERO,
                })
            }
        }
    }

    /// Gives back a ticket whose call never reached the callee.
    pub fn cancel(&self, ticket: Ticket) {
        let mut inner = self.lock();
        if let (true, Phase::HalfOpen { admitted }) = (ticket.probe, &mut inner.state) {
            *admitted = admitted.saturating_sub(1);
        }
    }

    /// Records how an admitted call went.
    pub fn record(&self, ticket: Ticket, outcome: Outcome, now: Instant) {
        let mut inner = self.lock();
        let spec = &self.spec;
        match (&inner.state, ticket.probe) {
            (Phase::Closed, false) => {
                if inner.outcomes.len() == spec.window as usize {
                    inner.outcomes.pop_front();
                }
                inner.outcomes.push_back(outcome);
                if inner.outcomes.len() >= spec.min_calls as usize && self.trips(&inner.outcomes) {
                    inner.open(now + spec.open_for);
                }
            }
            (Phase::HalfOpen { .. }, true) => {
                inner.outcomes.push_back(outcome);
                if inner.outcomes.len() >= spec.half_open_calls as usize {
                    if self.trips(&inner.outcomes) {
                        inner.open(now + spec.open_for);
                    } else {
                        inner.state = Phase::Closed;
                        inner.outcomes.clear();
                    }
                }
            }
            // A call admitted in an earlier phase: its outcome is stale.
            _ => {}
        }
    }

    fn trips(&self, outcomes: &VecDeque<Outcome>) -> bool {
        let n = outcomes.len() as f64;
        let failed = outcomes.iter().filter(|o| o.failed).count() as f64;
        let slow = outcomes.iter().filter(|o| o.slow).count() as f64;
        failed / n >= self.spec.failure_rate || slow / n >= self.spec.slow_call_rate
    }

    /// Whether a call of this duration counts as slow.
    pub fn is_slow(&self, took: Duration) -> bool {
        took > self.spec.slow_call
    }

    /// The state now.
    pub fn snapshot(&self, now: Instant) -> Snapshot {
        let inner = self.lock();
        let state = match inner.state {
            Phase::Closed => State::Closed,
            Phase::Open { until } if now >= until => State::HalfOpen,
            Phase::Open { .. } => State::Open,
            Phase::HalfOpen { .. } => State::HalfOpen,
        };
        let calls = inner.outcomes.len();
        let failed = inner.outcomes.iter().filter(|o| o.failed).count();
        Snapshot {
            state,
            calls,
            failure_rate: if calls == 0 {
                0.0
            } else {
                failed as f64 / calls as f64
            },
            opened: inner.opened,
            refused: inner.refused,
        }
    }
}

impl Inner {
    fn open(&mut self, until: Instant) {
        self.state = Phase::Open { until };
        self.outcomes.clear();
        self.opened += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OK: Outcome = Outcome {
        failed: false,
        slow: false,
    };
    const FAIL: Outcome = Outcome {
        failed: true,
        slow: false,
    };
    const SLOW: Outcome = Outcome {
        failed: false,
        slow: true,
    };

    fn breaker() -> Breaker {
        Breaker::new(BreakerSpec {
            window: 4,
            min_calls: 4,
            failure_rate: 0.5,
            slow_call: Duration::from_millis(100),
            slow_call_rate: 0.75,
            open_for: Duration::from_secs(1),
            half_open_calls: 2,
        })
    }

    fn call(b: &Breaker, outcome: Outcome, now: Instant) -> Result<(), Refused> {
        let t = b.admit(now)?;
        b.record(t, outcome, now);
        Ok(())
    }

    #[test]
    fn opens_at_the_failure_rate_once_min_calls_are_in() {
        let b = breaker();
        let now = Instant::now();
        // 3 failures of 3: below min_calls, still closed.
        for _ in 0..3 {
            call(&b, FAIL, now).unwrap();
        }
        assert_eq!(b.snapshot(now).state, State::Closed);
        // The 4th call makes 4 of 4: open.
        call(&b, OK, now).unwrap();
        assert_eq!(b.snapshot(now).state, State::Open);
        assert_eq!(b.snapshot(now).opened, 1);
        let refused = call(&b, OK, now).unwrap_err();
        assert_eq!(refused.retry_in, Duration::from_secs(1));
        assert_eq!(b.snapshot(now).refused, 1);
    }

    #[test]
    fn the_window_slides() {
        let b = breaker();
        let now = Instant::now();
        // F O O O: 25% < 50%.
        for o in [FAIL, OK, OK, OK] {
            call(&b, o, now).unwrap();
        }
        assert_eq!(b.snapshot(now).state, State::Closed);
        // Window O O O F: 25%.
        call(&b, FAIL, now).unwrap();
        assert_eq!(b.snapshot(now).state, State::Closed);
        // O O F F: 50% -> open.
        call(&b, FAIL, now).unwrap();
        assert_eq!(b.snapshot(now).state, State::Open);
    }

    #[test]
    fn slow_calls_open_it_too() {
        let b = breaker();
        let now = Instant::now();
        for o in [SLOW, SLOW, OK, SLOW] {
            call(&b, o, now).unwrap();
        }
        assert_eq!(b.snapshot(now).state, State::Open);
        assert!(b.is_slow(Duration::from_millis(101)));
        assert!(!b.is_slow(Duration::from_millis(100)));
    }

    #[test]
    fn half_open_lets_probes_through_then_closes_or_reopens() {
        let b = breaker();
        let t0 = Instant::now();
        for _ in 0..4 {
            call(&b, FAIL, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(1);
        // Two probes are admitted, the third refused while they run.
        let p1 = b.admit(later).unwrap();
        let p2 = b.admit(later).unwrap();
        assert_eq!(b.admit(later).unwrap_err().retry_in, Duration::ZERO);
        assert_eq!(b.snapshot(later).state, State::HalfOpen);
        b.record(p1, OK, later);
        b.record(p2, FAIL, later);
        // 1 of 2 failed = 50%: open again.
        assert_eq!(b.snapshot(later).state, State::Open);
        assert_eq!(b.snapshot(later).opened, 2);

        let again = later + Duration::from_secs(1);
        let p1 = b.admit(again).unwrap();
        let p2 = b.admit(again).unwrap();
        b.record(p1, OK, again);
        b.record(p2, OK, again);
        assert_eq!(b.snapshot(again).state, State::Closed);
        // A fresh window: three failures do not reopen it yet.
        for _ in 0..3 {
            call(&b, FAIL, again).unwrap();
        }
        assert_eq!(b.snapshot(again).state, State::Closed);
    }

    #[test]
    fn a_cancelled_probe_frees_its_slot_and_stale_outcomes_are_ignored() {
        let b = breaker();
        let t0 = Instant::now();
        let stale = b.admit(t0).unwrap();
        for _ in 0..4 {
            call(&b, FAIL, t0).unwrap();
        }
        let later = t0 + Duration::from_secs(1);
        let p1 = b.admit(later).unwrap();
        let p2 = b.admit(later).unwrap();
        b.cancel(p2);
        let p3 = b.admit(later).unwrap();
        // An outcome admitted while closed arrives now: ignored.
        b.record(stale, FAIL, later);
        b.record(p1, OK, later);
        b.record(p3, OK, later);
        assert_eq!(b.snapshot(later).state, State::Closed);
    }
}

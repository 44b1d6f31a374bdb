//! Circuit breakers and retries, with Moleculer's semantics.
//!
//! # Circuit breaker
//! Per action. Closed, it counts calls and failures in a window of
//! `window`; once at least `min_calls` calls have been seen and the failure
//! ratio reaches `threshold`, it opens: calls fail at once with
//! `overloaded`, never reaching the callee. After `half_open_after` it lets
//! one call through as a probe (half-open); the probe's success closes the
//! circuit, its failure opens it again. Only failures of the callee count
//! (crashed, timeout, overloaded); an action's own error or bad params do not.
//!
//! # Retries
//! Only for actions marked `idempotent`: after a crash, a timeout or an
//! overload, the call is tried again after a delay that doubles each time
//! (up to `max_delay`), as long as the caller's deadline leaves room.
//!
//! The mechanisms only (breaker states, retry delays), pure and tested on
//! their own; the broker's `protect.rs` applies them around calls. It must
//! not route or run calls.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::context::CallError;
use crate::manifest::{CircuitPolicy, RetryPolicy};

/// Whether an error is the callee's failure (it counts for breakers and
/// may be retried) rather than the caller's or the action's own.
pub fn is_failure(e: &CallError) -> bool {
    matches!(
        e,
        CallError::Crashed(_) | CallError::Timeout(_) | CallError::Overloaded(_)
    )
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum State {
    Closed {
        since: Instant,
        calls: u32,
        failures: u32,
    },
    Open {
        until: Instant,
    },
    HalfOpen {
        probing: bool,
    },
}

/// The circuit breaker of one action.
#[derive(Debug)]
pub struct CircuitBreaker {
    policy: CircuitPolicy,
    state: Mutex<State>,
}

/// What the breaker says about a call about to be made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Go ahead.
    Pass,
    /// Go ahead: this call is the half-open probe.
    Probe,
    /// The circuit is open: fail now; a probe is allowed after this long.
    Reject(Duration),
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(policy: CircuitPolicy) -> Self {
        let state = Mutex::new(State::Closed {
            since: Instant::now(),
            calls: 0,
            failures: 0,
        });
        CircuitBreaker { policy, state }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks whether a call may go through now.
    pub fn admit(&self, now: Instant) -> Admission {
        let mut state = self.lock();
        match *state {
            State::Closed { .. } => Admission::Pass,
            State::Open { until } if now >= until => {
                *state = State::HalfOpen { probing: true };
                Admission::Probe
            }
            State::Open { until } => Admission::Reject(until - now),
            State::HalfOpen { probing: false } => {
                *state = State::HalfOpen { probing: true };
                Admission::Probe
            }
            State::HalfOpen { probing: true } => Admission::Reject(self.policy.half_open_after),
        }
    }

    /// Records a call's outcome (`failure` as [`is_failure`] says).
    pub fn record(&self, failure: bool, now: Instant) {
        let mut state = self.lock();
        *state = match *state {
            State::HalfOpen { .. } if failure => State::Open {
                until: now + self.policy.half_open_after,
            },
            State::HalfOpen { .. } => State::Closed {
                since: now,
                calls: 0,
                failures: 0,
            },
            State::Closed {
                since,
                calls,
                failures,
            } => {
                let (since, calls, failures) = match now.duration_since(since) >= self.policy.window
                {
                    true => (now, 0, 0),
                    false => (since, calls, failures),
                };
                let (calls, failures) = (calls + 1, failures + u32::from(failure));
                let ratio = f64::from(failures) / f64::from(calls);
                match calls >= self.policy.min_calls && ratio >= self.policy.threshold {
                    true => State::Open {
                        until: now + self.policy.half_open_after,
                    },
                    false => State::Closed {
                        since,
                        calls,
                        failures,
                    },
                }
            }
            open @ State::Open { .. } => open,
        };
    }

    /// `closed`, `open` or `half-open`, for `/health` and metrics.
    pub fn state_name(&self) -> &'static str {
        match *self.lock() {
            State::Closed { .. } => "closed",
            State::Open { .. } => "open",
            State::HalfOpen { .. } => "half-open",
        }
    }
}

/// The delay before retry number `attempt` (1 for the first retry).
pub fn retry_delay(policy: &RetryPolicy, attempt: u32) -> Duration {
    let factor = 2u32.saturating_pow(attempt.saturating_sub(1));
    policy.delay.saturating_mul(factor).min(policy.max_delay)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> CircuitPolicy {
        CircuitPolicy {
            threshold: 0.5,
            min_calls: 4,
            window: Duration::from_secs(10),
            half_open_after: Duration::from_millis(100),
        }
    }

    #[test]
    fn opens_at_the_ratio_after_the_minimum_then_probes_and_closes() {
        let b = CircuitBreaker::new(policy());
        let t = Instant::now();
        for ok in [true, false, true] {
            assert_eq!(b.admit(t), Admission::Pass);
            b.record(!ok, t);
        }
        assert_eq!(b.state_name(), "closed", "below min_calls");
        b.record(true, t);
        assert_eq!(b.state_name(), "open", "2 of 4 failed");
        assert!(matches!(b.admit(t), Admission::Reject(_)));
        let later = t + Duration::from_millis(150);
        assert_eq!(b.admit(later), Admission::Probe);
        assert!(
            matches!(b.admit(later), Admission::Reject(_)),
            "one probe at a time"
        );
        b.record(false, later);
        assert_eq!(b.state_name(), "closed");
        assert_eq!(b.admit(later), Admission::Pass);
    }

    #[test]
    fn a_failed_probe_reopens_and_old_failures_leave_the_window() {
        let b = CircuitBreaker::new(policy());
        let t = Instant::now();
        for _ in 0..4 {
            b.record(true, t);
        }
        let later = t + Duration::from_millis(150);
        assert_eq!(b.admit(later), Admission::Probe);
        b.record(true, later);
        assert_eq!(b.state_name(), "open");
        let b = CircuitBreaker::new(policy());
        for _ in 0..3 {
            b.record(true, t);
        }
        // The window turned over: three old failures no longer count.
        let next = t + Duration::from_secs(11);
        b.record(false, next);
        b.record(true, next);
        assert_eq!(b.state_name(), "closed");
    }

    #[test]
    fn retry_delays_double_up_to_the_cap() {
        let p = RetryPolicy {
            max: 5,
            delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(35),
        };
        let d: Vec<u128> = (1..=4).map(|a| retry_delay(&p, a).as_millis()).collect();
        assert_eq!(d, [10, 20, 35, 35]);
    }

    #[test]
    fn only_callee_failures_count() {
        assert!(is_failure(&CallError::Crashed("x".into())));
        assert!(is_failure(&CallError::Timeout("x".into())));
        assert!(!is_failure(&CallError::Failed("x".into())));
        assert!(!is_failure(&CallError::InvalidParams("x".into())));
    }
}

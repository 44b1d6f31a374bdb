//! Restart policy: when a dead instance is replaced at once, and when its
//! package must rest first.
//!
//! Every fault (trap, timeout, out of memory, failed `started`) costs one
//! restart. Up to `max` restarts within the `within` window are made at
//! once; one more puts the package in backoff: no restarts (callers get
//! `overloaded`) until the backoff has passed, then a retry. Each
//! consecutive backoff doubles, up to `max_backoff`; a package that then
//! serves a whole window without a fault starts again from `backoff`.
//! A crash loop therefore costs the host a bounded amount of work.
//!
//! A pure policy: it owns the restart budget and the verdict, asked by the
//! broker's `lifecycle.rs` at each fault; it must not start, stop or touch
//! instances itself.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::manifest::RestartPolicy;

pub use crate::health::PackageState;

/// What to do about a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Replace the instance now.
    RestartNow,
    /// Rest for this long, then retry.
    Backoff(Duration),
}

/// The restart budget and backoff of one package.
#[derive(Debug)]
pub struct RestartBudget {
    policy: RestartPolicy,
    recent: VecDeque<Instant>,
    next_backoff: Duration,
    last_fault: Option<Instant>,
    /// Restarts since the package was loaded.
    pub total: u64,
}

impl RestartBudget {
    /// A fresh budget.
    pub fn new(policy: RestartPolicy) -> Self {
        let next_backoff = policy.backoff;
        RestartBudget {
            policy,
            recent: VecDeque::new(),
            next_backoff,
            last_fault: None,
            total: 0,
        }
    }

    /// Records a fault at `now` and says what to do.
    pub fn on_fault(&mut self, now: Instant) -> Verdict {
        if self
            .last_fault
            .is_some_and(|t| now.duration_since(t) >= self.policy.within)
        {
            // A whole window without a fault: forgive earlier backoffs.
            self.next_backoff = self.policy.backoff;
        }
        self.last_fault = Some(now);
        while self
            .recent
            .front()
            .is_some_and(|&t| now.duration_since(t) >= self.policy.within)
        {
            self.recent.pop_front();
        }
        if self.recent.len() < self.policy.max_restarts as usize {
            self.recent.push_back(now);
            self.total += 1;
            return Verdict::RestartNow;
        }
        let rest = self.next_backoff;
        self.next_backoff = (rest * 2).min(self.policy.max_backoff);
        self.recent.clear();
        Verdict::Backoff(rest)
    }

    /// Counts a restart made after a backoff.
    pub fn after_backoff(&mut self) {
        self.total += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> RestartPolicy {
        RestartPolicy {
            max_restarts: 3,
            within: Duration::from_secs(10),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(350),
        }
    }

    #[test]
    fn budget_then_doubling_backoff_then_forgiveness() {
        let mut b = RestartBudget::new(policy());
        let t0 = Instant::now();
        for i in 0..3 {
            assert_eq!(
                b.on_fault(t0 + Duration::from_millis(i)),
                Verdict::RestartNow
            );
        }
        assert_eq!(
            b.on_fault(t0 + Duration::from_millis(5)),
            Verdict::Backoff(Duration::from_millis(100))
        );
        for i in 0..3 {
            assert_eq!(
                b.on_fault(t0 + Duration::from_millis(200 + i)),
                Verdict::RestartNow
            );
        }
        assert_eq!(
            b.on_fault(t0 + Duration::from_millis(210)),
            Verdict::Backoff(Duration::from_millis(200))
        );
        for i in 0..3 {
            b.on_fault(t0 + Duration::from_millis(500 + i));
        }
        assert_eq!(
            b.on_fault(t0 + Duration::from_millis(510)),
            Verdict::Backoff(Duration::from_millis(350))
        );
        // A quiet window resets the backoff.
        let later = t0 + Duration::from_secs(30);
        assert_eq!(b.on_fault(later), Verdict::RestartNow);
        for i in 1..3 {
            b.on_fault(later + Duration::from_millis(i));
        }
        assert_eq!(
            b.on_fault(later + Duration::from_millis(9)),
            Verdict::Backoff(Duration::from_millis(100))
        );
        assert_eq!(b.total, 3 + 3 + 3 + 3);
    }

    #[test]
    fn faults_outside_the_window_do_not_count() {
        let mut b = RestartBudget::new(policy());
        let t0 = Instant::now();
        for i in 0..20u64 {
            assert_eq!(
                b.on_fault(t0 + Duration::from_secs(4 * i)),
                Verdict::RestartNow
            );
        }
    }
}

//! An emitter's budget: how much event delivery work a package may cause
//! per second, shared by all its instances.
//!
//! Every event a package emits costs the host a copy of its payload into
//! each subscriber and a run of each subscriber's handler, work the
//! emitter does not pay for in its own instance. Without a bound, a package
//! emitting large events as fast as the host takes them (an "emit storm")
//! takes the cores from every other package's calls. So each emit is
//! charged, before any subscriber takes it, its payload plus
//! [`EVENT_COST`](super::events::EVENT_COST) for every delivery it makes
//! (one per subscriber; one per instance of each for a broadcast; one more
//! when it goes out to the cluster), against the package's `emit_rate`
//! (bytes a second, a second's worth at once). Past it the emitter waits
//! for its budget, like a full queue makes it wait; when the budget would
//! come only after the emitter's deadline, the emit is refused at once
//! with `overloaded`. Nothing taken is lost: the budget is charged before
//! the event is accepted.
//!
//! It owns the rate limiter (governor's GCRA, counted in KiB) and its
//! counts; it must not queue or deliver events (see `events.rs`).

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use governor::clock::{Clock, MonotonicClock};
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::context::CallError;

/// The budget is counted in units of this many bytes.
const UNIT: u64 = 1 << 10;

type Limiter = RateLimiter<NotKeyed, InMemoryState, MonotonicClock>;

/// One package's budget of event bytes per second.
pub(super) struct EmitBudget {
    limiter: Limiter,
    clock: MonotonicClock,
    /// The rate, in bytes a second, for messages.
    rate: u64,
    /// The most units one check may take (a second's worth).
    burst: u32,
    /// Emits that had to wait for the budget.
    throttled: AtomicU64,
    /// Emits refused because the budget would come after their deadline.
    refused: AtomicU64,
}

impl EmitBudget {
    /// A full budget of `rate` bytes a second.
    pub(super) fn new(rate: u64) -> Self {
        let units = u32::try_from(rate.div_ceil(UNIT)).unwrap_or(u32::MAX);
        let burst = NonZeroU32::new(units).unwrap_or(NonZeroU32::MIN);
        let clock = MonotonicClock;
        EmitBudget {
            limiter: RateLimiter::direct_with_clock(Quota::per_second(burst), clock.clone()),
            clock,
            rate,
            burst: burst.get(),
            throttled: AtomicU64::new(0),
            refused: AtomicU64::new(0),
        }
    }

    /// Emits that waited for the budget, and emits refused over it.
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.throttled.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }

    /// Takes `bytes` from the budget of `package`, waiting for it until
    /// `deadline`; `Overloaded` when it would come later than that.
    pub(super) async fn take(
        &self,
        package: &str,
        event: &str,
        bytes: u64,
        deadline: Instant,
    ) -> Result<(), CallError> {
        let mut left = bytes.div_ceil(UNIT);
        let mut waited = false;
        while left > 0 {
            // A charge over a second's worth is taken a second's worth at a time.
            let step = u32::try_from(left).unwrap_or(u32::MAX).min(self.burst);
            let n = NonZeroU32::new(step).unwrap_or(NonZeroU32::MIN);
            match self.limiter.check_n(n) {
                Ok(Ok(())) => left -= u64::from(step),
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(self.clock.now());
                    if Instant::now() + wait > deadline {
                        return Err(self.refuse(package, event, bytes, wait));
                    }
                    if !waited {
                        waited = true;
                        self.throttled.fetch_add(1, Ordering::Relaxed);
                    }
                    tokio::time::sleep(wait).await;
                }
                // `step` is never over the burst; should governor disagree,
                // the emit is refused rather than spun on.
                Err(_) => return Err(self.refuse(package, event, bytes, Duration::MAX)),
            }
        }
        Ok(())
    }

    fn refuse(&self, package: &str, event: &str, bytes: u64, wait: Duration) -> CallError {
        let n = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let why = format!(
            "event `{event}` refused: package `{package}` emits more than its `emit_rate` of {} a second \
             (this emit costs {} for its deliveries, and its budget would come back in {} ms, after its deadline); \
             emit less or raise `emit_rate` in [packages.{package}]",
            bytesize::ByteSize::b(self.rate).display().iec(),
            bytesize::ByteSize::b(bytes).display().iec(),
            wait.as_millis()
        );
        if n.is_power_of_two() {
            tracing::warn!(package, event, refused = n, "{why}");
        }
        CallError::Overloaded(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime")
            .block_on(f)
    }

    #[test]
    fn a_second_s_worth_goes_at_once_then_the_emitter_waits() {
        let budget = EmitBudget::new(1 << 20);
        let far = Instant::now() + Duration::from_secs(10);
        block_on(async {
            let t = Instant::now();
            budget.take("p", "e", 1 << 20, far).await.expect("burst");
            assert!(t.elapsed() < Duration::from_millis(200));
            assert_eq!(budget.counts(), (0, 0));
            budget
                .take("p", "e", 256 << 10, far)
                .await
                .expect("after a wait");
            assert!(
                t.elapsed() >= Duration::from_millis(200),
                "{:?}",
                t.elapsed()
            );
            assert_eq!(budget.counts(), (1, 0));
        });
    }

    #[test]
    fn a_wait_past_the_deadline_is_refused_at_once_and_names_the_setting() {
        let budget = EmitBudget::new(1 << 20);
        let soon = Instant::now() + Duration::from_millis(50);
        block_on(async {
            budget.take("p", "e", 1 << 20, soon).await.expect("burst");
            let t = Instant::now();
            let e = budget
                .take("p", "order.x", 1 << 20, soon)
                .await
                .expect_err("over");
            assert!(t.elapsed() < Duration::from_millis(40));
            let CallError::Overloaded(m) = e else {
                panic!("{e:?}")
            };
            assert!(
                m.contains("`emit_rate`") && m.contains("`p`") && m.contains("order.x"),
                "{m}"
            );
            assert_eq!(budget.counts(), (0, 1));
        });
    }

    #[test]
    fn a_charge_over_a_second_s_worth_is_taken_in_steps() {
        let budget = EmitBudget::new(64 << 10);
        let far = Instant::now() + Duration::from_secs(10);
        block_on(async {
            let t = Instant::now();
            budget
                .take("p", "e", 128 << 10, far)
                .await
                .expect("in two steps");
            assert!(
                t.elapsed() >= Duration::from_millis(900),
                "{:?}",
                t.elapsed()
            );
        });
    }
}

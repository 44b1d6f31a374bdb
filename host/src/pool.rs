//! The live instances of one package, checked out one call at a time.
//!
//! An [`InstancePool`] hands an idle instance to a caller, who runs its
//! call inline on its own task and gives the instance back. When none is
//! idle the caller waits in a bounded queue (the package's bulkhead); past
//! the bound it is refused at once. A returned instance goes straight to
//! the longest waiter, so no wake-up is lost and no caller waits while an
//! instance sits idle.
//!
//! Idle instances are handed out in turn (first in, first out), so calls
//! are balanced over the live instances. A pool with room to grow
//! ([`InstancePool::grow`]) gets a new instance when calls have to wait;
//! one above its minimum that stays idle is retired
//! ([`InstancePool::take_idle_since`]).
//!
//! A broadcast must reach every instance, not just any one; it asks for a
//! particular slot with [`InstancePool::checkout_slot`].
//!
//! # Waiting
//! A queued caller holds a [`Wait`]: a ticket in the queue, no allocation
//! and no timer of its own. A returned instance is put aside for the ticket
//! at the head of the queue and its task woken. Waiters past their
//! deadline are expired by one sweeper task per pool, which runs only
//! while someone waits and sleeps until the earliest deadline. A `Wait`
//! dropped before it is served leaves the queue, and an instance already
//! put aside for it goes on to the next waiter: cancelling never loses an
//! instance.
//!
//! It owns the instances and the wait queue only: it must not start,
//! restart or call instances (the broker's `lifecycle.rs` and `call.rs` do)
//! nor decide anything about faults.

use std::collections::{BTreeSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tokio::sync::Notify;

use crate::engine::coarse_now;
use crate::package::LiveInstance;

/// An instance now, or a place in the queue.
pub enum Checkout<'a> {
    /// An idle instance, yours until you give it back.
    Ready(LiveInstance),
    /// Wait here for an instance.
    Queued(Wait<'a>),
}

/// Why the pool cannot serve a call now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The wait queue is full.
    QueueFull,
    /// No instance is alive (starting, restarting, in backoff or stopped).
    NoInstance,
    /// No instance is idle and the caller may not wait (it would wait on itself).
    Busy,
}

/// Why a queued caller got no instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Unserved {
    /// Its deadline passed first.
    Expired,
    /// The pool closed, or lost its last instance with none coming.
    Released,
}

/// A place in the queue.
struct Waiter {
    ticket: u64,
    deadline: Instant,
    waker: Option<Waker>,
}

#[derive(Default)]
struct Inner {
    /// Idle instances with the moment they became idle, oldest first.
    idle: VecDeque<(LiveInstance, Instant)>,
    /// The slots of live and pending instances.
    slots: BTreeSet<usize>,
    /// Callers waiting for any instance, longest first.
    waiters: VecDeque<Waiter>,
    /// Callers waiting for the instance in one slot.
    targeted: Vec<(usize, Waiter)>,
    /// Outcomes decided for waiters that have not collected them yet.
    served: Vec<(u64, Result<LiveInstance, Unserved>)>,
    next_ticket: u64,
    /// When the sweeper will next look for expired waiters; `None` when
    /// no sweeper runs.
    sweep_at: Option<Instant>,
    live: usize,
    /// Instances being restarted right now: callers may wait for them.
    pending: usize,
    closed: bool,
}

impl Inner {
    /// Queues a waiter; returns its ticket.
    fn enqueue(&mut self, slot: Option<usize>, deadline: Instant) -> u64 {
        let ticket = self.next_ticket;
        self.next_ticket += 1;
        let waiter = Waiter {
            ticket,
            deadline,
            waker: None,
        };
        match slot {
            Some(slot) => self.targeted.push((slot, waiter)),
            None => self.waiters.push_back(waiter),
        }
        ticket
    }

    /// Decides `waiter`'s outcome; returns the waker to call once the lock is released.
    fn serve(&mut self, waiter: Waiter, outcome: Result<LiveInstance, Unserved>) -> Option<Waker> {
        self.served.push((waiter.ticket, outcome));
        waiter.waker
    }

    /// An instance is free: to whoever asked for its slot, else to the
    /// longest waiter, else to the idle set.
    fn give(&mut self, instance: LiveInstance) -> Option<Waker> {
        if let Some(at) = self.targeted.iter().position(|(s, _)| *s == instance.slot) {
            let (_, waiter) = self.targeted.swap_remove(at);
            return self.serve(waiter, Ok(instance));
        }
        if let Some(waiter) = self.waiters.pop_front() {
            return self.serve(waiter, Ok(instance));
        }
        self.idle.push_back((instance, coarse_now()));
        None
    }

    /// The queued waiter holding `ticket` (searched from the newest: a
    /// waiter is usually polled right after it queued).
    fn waiter_mut(&mut self, ticket: u64) -> Option<&mut Waiter> {
        match self.waiters.iter().rposition(|w| w.ticket == ticket) {
            Some(at) => self.waiters.get_mut(at),
            None => self
                .targeted
                .iter_mut()
                .map(|(_, w)| w)
                .find(|w| w.ticket == ticket),
        }
    }

    /// Takes `ticket` out of the queue, if it is still there.
    fn leave(&mut self, ticket: u64) {
        if let Some(at) = self.waiters.iter().position(|w| w.ticket == ticket) {
            self.waiters.remove(at);
        } else if let Some(at) = self.targeted.iter().position(|(_, w)| w.ticket == ticket) {
            self.targeted.swap_remove(at);
        }
    }

    /// Releases every waiter with `why`; returns their wakers.
    fn release_all(&mut self, why: Unserved) -> Vec<Waker> {
        let mut waiters: Vec<Waiter> = self.waiters.drain(..).collect();
        waiters.extend(self.targeted.drain(..).map(|(_, w)| w));
        waiters
            .into_iter()
            .filter_map(|w| self.serve(w, Err(why)))
            .collect()
    }

    /// Expires the waiters whose deadline is past `now`; returns their wakers.
    fn expire(&mut self, now: Instant) -> Vec<Waker> {
        let mut expired = Vec::new();
        let mut kept = VecDeque::with_capacity(self.waiters.len());
        for w in self.waiters.drain(..) {
            match w.deadline <= now {
                true => expired.push(w),
                false => kept.push_back(w),
            }
        }
        self.waiters = kept;
        let targeted = std::mem::take(&mut self.targeted);
        for (slot, w) in targeted {
            match w.deadline <= now {
                true => expired.push(w),
                false => self.targeted.push((slot, w)),
            }
        }
        expired
            .into_iter()
            .filter_map(|w| self.serve(w, Err(Unserved::Expired)))
            .collect()
    }

    /// The earliest deadline of anyone waiting.
    fn earliest_deadline(&self) -> Option<Instant> {
        self.waiters
            .iter()
            .chain(self.targeted.iter().map(|(_, w)| w))
            .map(|w| w.deadline)
            .min()
    }

    /// With no instance alive and none coming, waiters are released with an
    /// error instead of waiting out their deadline.
    fn release_if_empty(&mut self) -> Vec<Waker> {
        match self.live + self.pending {
            0 => self.release_all(Unserved::Released),
            _ => Vec::new(),
        }
    }
}

struct Shared {
    inner: Mutex<Inner>,
    /// Wakes the sweeper when a waiter's deadline comes before its plan.
    replan: Arc<Notify>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it inconsistent:
        // every critical section is a few pushes and pops.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Expires overdue waiters until nobody waits. It holds the pool weakly,
/// so a retired pool's instances are not kept until its next look.
async fn sweep(shared: Weak<Shared>, replan: Arc<Notify>) {
    loop {
        let Some(pool) = shared.upgrade() else { return };
        let (wakers, next) = {
            let mut inner = pool.lock();
            let wakers = inner.expire(Instant::now());
            let next = inner.earliest_deadline();
            inner.sweep_at = next;
            (wakers, next)
        };
        drop(pool);
        wakers.into_iter().for_each(Waker::wake);
        let Some(next) = next else { return };
        tokio::select! {
            _ = tokio::time::sleep_until(next.into()) => {}
            _ = replan.notified() => {}
        }
    }
}

/// A queued caller's claim on the next free instance; resolves to the
/// instance, or to why none came.
pub struct Wait<'a> {
    pool: &'a InstancePool,
    ticket: u64,
    done: bool,
}

impl Future for Wait<'_> {
    type Output = Result<LiveInstance, Unserved>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let ticket = self.ticket;
        let mut inner = self.pool.shared.lock();
        if let Some(at) = inner.served.iter().position(|(t, _)| *t == ticket) {
            let (_, outcome) = inner.served.swap_remove(at);
            drop(inner);
            self.done = true;
            return Poll::Ready(outcome);
        }
        match inner.waiter_mut(ticket) {
            Some(w) => {
                if !w.waker.as_ref().is_some_and(|k| k.will_wake(cx.waker())) {
                    w.waker = Some(cx.waker().clone());
                }
                Poll::Pending
            }
            None => {
                drop(inner);
                self.done = true;
                Poll::Ready(Err(Unserved::Released))
            }
        }
    }
}

impl Drop for Wait<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let waker = {
            let mut inner = self.pool.shared.lock();
            match inner.served.iter().position(|(t, _)| *t == self.ticket) {
                Some(at) => match inner.served.swap_remove(at) {
                    // Served but never collected: pass the instance on.
                    (_, Ok(instance)) => inner.give(instance),
                    (_, Err(_)) => None,
                },
                None => {
                    inner.leave(self.ticket);
                    None
                }
            }
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// The live instances of one package.
pub struct InstancePool {
    shared: Arc<Shared>,
    queue_limit: usize,
}

impl InstancePool {
    /// An empty pool whose wait queue holds at most `queue_limit` calls.
    pub fn new(queue_limit: usize) -> Self {
        let shared = Shared {
            inner: Mutex::new(Inner::default()),
            replan: Arc::new(Notify::new()),
        };
        InstancePool {
            shared: Arc::new(shared),
            queue_limit,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.shared.lock()
    }

    /// Takes an idle instance, or, when `may_wait`, a place in the queue
    /// until `deadline`.
    pub fn checkout(&self, may_wait: bool, deadline: Instant) -> Result<Checkout<'_>, Refusal> {
        let mut inner = self.lock();
        // A closed pool (its version replaced or the host stopping) lends
        // nothing, not even an instance that came back idle: it is drained.
        if inner.closed {
            return Err(Refusal::NoInstance);
        }
        if let Some((instance, _)) = inner.idle.pop_front() {
            return Ok(Checkout::Ready(instance));
        }
        if inner.live + inner.pending == 0 {
            return Err(Refusal::NoInstance);
        }
        if !may_wait {
            return Err(Refusal::Busy);
        }
        if inner.waiters.len() >= self.queue_limit {
            return Err(Refusal::QueueFull);
        }
        let ticket = inner.enqueue(None, deadline);
        self.watch_deadline(&mut inner, deadline);
        Ok(Checkout::Queued(Wait {
            pool: self,
            ticket,
            done: false,
        }))
    }

    /// Takes the instance in `slot` (now, or when it comes back before `deadline`).
    pub fn checkout_slot(&self, slot: usize, deadline: Instant) -> Option<Checkout<'_>> {
        let mut inner = self.lock();
        if inner.closed {
            return None;
        }
        if let Some(at) = inner.idle.iter().position(|(i, _)| i.slot == slot) {
            return inner.idle.remove(at).map(|(i, _)| Checkout::Ready(i));
        }
        let ticket = inner.enqueue(Some(slot), deadline);
        self.watch_deadline(&mut inner, deadline);
        Some(Checkout::Queued(Wait {
            pool: self,
            ticket,
            done: false,
        }))
    }

    /// Makes sure a sweeper will expire a waiter at `deadline`: starts one,
    /// or wakes the running one when it planned to look later.
    fn watch_deadline(&self, inner: &mut Inner, deadline: Instant) {
        match inner.sweep_at {
            Some(at) if at <= deadline => {}
            Some(_) => {
                inner.sweep_at = Some(deadline);
                self.shared.replan.notify_one();
            }
            // Outside a runtime nothing can sweep; waiters are still
            // served or released as instances come and go.
            None => {
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    inner.sweep_at = Some(deadline);
                    rt.spawn(sweep(
                        Arc::downgrade(&self.shared),
                        self.shared.replan.clone(),
                    ));
                }
            }
        }
    }

    /// Gives an instance back (or in, when it is new): to whoever asked
    /// for its slot, else to the longest waiter, else to the idle set.
    pub fn checkin(&self, instance: LiveInstance) {
        let waker = self.lock().give(instance);
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Counts a new instance as alive and puts it in service; `expected`
    /// when it is a restart announced with [`expect`](Self::expect).
    pub fn add(&self, instance: LiveInstance, expected: bool) {
        let waker = {
            let mut inner = self.lock();
            inner.live += 1;
            inner.slots.insert(instance.slot);
            if expected {
                inner.pending = inner.pending.saturating_sub(1);
            }
            inner.give(instance)
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Counts an instance as gone (it faulted and was dropped); its slot
    /// stays, as its replacement will take it.
    pub fn remove(&self) {
        let wakers = {
            let mut inner = self.lock();
            inner.live = inner.live.saturating_sub(1);
            inner.release_if_empty()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Reserves a new slot when the pool has fewer than `max` instances
    /// (live or starting) and calls are waiting; the caller starts an
    /// instance for it and adds it with `add(instance, true)`.
    pub fn grow(&self, max: usize) -> Option<usize> {
        let mut inner = self.lock();
        if inner.closed || inner.slots.len() >= max || inner.waiters.is_empty() {
            return None;
        }
        let slot = (0..).find(|s| !inner.slots.contains(s)).unwrap_or(0);
        inner.slots.insert(slot);
        inner.pending += 1;
        Some(slot)
    }

    /// Gives up a slot reserved by [`grow`](Self::grow) whose instance did not start.
    pub fn abandon(&self, slot: usize) {
        let wakers = {
            let mut inner = self.lock();
            inner.slots.remove(&slot);
            inner.pending = inner.pending.saturating_sub(1);
            inner.release_if_empty()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Takes one instance that has been idle since before `before`, when
    /// more than `min` are live; the caller stops it. Its slot is freed.
    pub fn take_idle_since(&self, before: Instant, min: usize) -> Option<LiveInstance> {
        let mut inner = self.lock();
        if inner.live <= min {
            return None;
        }
        let (instance, since) = inner.idle.front()?;
        if *since > before {
            return None;
        }
        let slot = instance.slot;
        let (instance, _) = inner.idle.pop_front()?;
        inner.live -= 1;
        inner.slots.remove(&slot);
        Some(instance)
    }

    /// The slots of the instances alive or starting, for a broadcast.
    pub fn slots(&self) -> Vec<usize> {
        self.lock().slots.iter().copied().collect()
    }

    /// Announces a restart under way: callers wait for it rather than being
    /// refused.
    pub fn expect(&self, slot: usize) {
        let mut inner = self.lock();
        inner.pending += 1;
        inner.slots.insert(slot);
    }

    /// Withdraws an announced restart (it failed, or the pool closed).
    pub fn unexpect(&self) {
        let wakers = {
            let mut inner = self.lock();
            inner.pending = inner.pending.saturating_sub(1);
            inner.release_if_empty()
        };
        wakers.into_iter().for_each(Waker::wake);
    }

    /// Instances alive (idle or busy).
    pub fn live(&self) -> usize {
        self.lock().live
    }

    /// Instances idle now.
    pub fn idle(&self) -> usize {
        self.lock().idle.len()
    }

    /// Calls waiting for an instance.
    pub fn queued(&self) -> usize {
        self.lock().waiters.len()
    }

    /// Stops serving: no new checkouts, waiters released. Returns the idle
    /// instances; busy ones come back through [`checkin`](Self::checkin)
    /// and can be collected with [`drain_idle`](Self::drain_idle).
    pub fn close(&self) -> Vec<LiveInstance> {
        let (idle, wakers) = {
            let mut inner = self.lock();
            inner.closed = true;
            let wakers = inner.release_all(Unserved::Released);
            (std::mem::take(&mut inner.idle), wakers)
        };
        wakers.into_iter().for_each(Waker::wake);
        idle.into_iter().map(|(i, _)| i).collect()
    }

    /// Takes every idle instance (after [`close`](Self::close)).
    pub fn drain_idle(&self) -> Vec<LiveInstance> {
        std::mem::take(&mut self.lock().idle)
            .into_iter()
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

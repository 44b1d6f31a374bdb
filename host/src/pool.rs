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

use std::collections::{BTreeSet, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::package::LiveInstance;

/// An instance now, or a place in the queue.
pub enum Checkout {
    /// An idle instance, yours until you give it back.
    Ready(LiveInstance),
    /// Wait here; the receiver fails if the pool is closed or drained.
    Queued(oneshot::Receiver<LiveInstance>),
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

#[derive(Default)]
struct Inner {
    /// Idle instances with the moment they became idle, oldest first.
    idle: VecDeque<(LiveInstance, Instant)>,
    /// The slots of live and pending instances.
    slots: BTreeSet<usize>,
    waiters: VecDeque<oneshot::Sender<LiveInstance>>,
    targeted: Vec<(usize, oneshot::Sender<LiveInstance>)>,
    live: usize,
    /// Instances being restarted right now: callers may wait for them.
    pending: usize,
    closed: bool,
}

/// The live instances of one package.
pub struct InstancePool {
    inner: Mutex<Inner>,
    queue_limit: usize,
}

impl InstancePool {
    /// An empty pool whose wait queue holds at most `queue_limit` calls.
    pub fn new(queue_limit: usize) -> Self {
        InstancePool {
            inner: Mutex::new(Inner::default()),
            queue_limit,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it inconsistent:
        // every critical section is a few pushes and pops.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes an idle instance, or a place in the queue when `may_wait`.
    pub fn checkout(&self, may_wait: bool) -> Result<Checkout, Refusal> {
        let mut inner = self.lock();
        if let Some((instance, _)) = inner.idle.pop_front() {
            return Ok(Checkout::Ready(instance));
        }
        if inner.closed || inner.live + inner.pending == 0 {
            return Err(Refusal::NoInstance);
        }
        if !may_wait {
            return Err(Refusal::Busy);
        }
        inner.waiters.retain(|w| !w.is_closed());
        if inner.waiters.len() >= self.queue_limit {
            return Err(Refusal::QueueFull);
        }
        let (tx, rx) = oneshot::channel();
        inner.waiters.push_back(tx);
        Ok(Checkout::Queued(rx))
    }

    /// Takes the instance in `slot` (now, or when it comes back).
    pub fn checkout_slot(&self, slot: usize) -> Option<Checkout> {
        let mut inner = self.lock();
        if let Some(at) = inner.idle.iter().position(|(i, _)| i.slot == slot) {
            return inner.idle.remove(at).map(|(i, _)| Checkout::Ready(i));
        }
        if inner.closed {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        inner.targeted.push((slot, tx));
        Some(Checkout::Queued(rx))
    }

    /// Gives an instance back (or in, when it is new): to whoever asked
    /// for its slot, else to the longest waiter, else to the idle set.
    pub fn checkin(&self, instance: LiveInstance) {
        let mut inner = self.lock();
        let mut instance = instance;
        while let Some(at) = inner.targeted.iter().position(|(s, _)| *s == instance.slot) {
            let (_, tx) = inner.targeted.swap_remove(at);
            match tx.send(instance) {
                Ok(()) => return,
                Err(back) => instance = back,
            }
        }
        while let Some(tx) = inner.waiters.pop_front() {
            match tx.send(instance) {
                Ok(()) => return,
                Err(back) => instance = back,
            }
        }
        inner.idle.push_back((instance, Instant::now()));
    }

    /// Counts a new instance as alive and puts it in service; `expected`
    /// when it is a restart announced with [`expect`](Self::expect).
    pub fn add(&self, instance: LiveInstance, expected: bool) {
        {
            let mut inner = self.lock();
            inner.live += 1;
            inner.slots.insert(instance.slot);
            if expected {
                inner.pending = inner.pending.saturating_sub(1);
            }
        }
        self.checkin(instance);
    }

    /// Counts an instance as gone (it faulted and was dropped); its slot
    /// stays, as its replacement will take it.
    pub fn remove(&self) {
        let mut inner = self.lock();
        inner.live = inner.live.saturating_sub(1);
        Self::release_if_empty(&mut inner);
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
        let mut inner = self.lock();
        inner.slots.remove(&slot);
        inner.pending = inner.pending.saturating_sub(1);
        Self::release_if_empty(&mut inner);
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
        let mut inner = self.lock();
        inner.pending = inner.pending.saturating_sub(1);
        Self::release_if_empty(&mut inner);
    }

    /// With no instance alive and none coming, waiters are released with an
    /// error instead of waiting out their deadline.
    fn release_if_empty(inner: &mut Inner) {
        if inner.live + inner.pending == 0 {
            inner.waiters.clear();
            inner.targeted.clear();
        }
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
        let mut inner = self.lock();
        inner.waiters.retain(|w| !w.is_closed());
        inner.waiters.len()
    }

    /// Stops serving: no new checkouts, waiters released. Returns the idle
    /// instances; busy ones come back through [`checkin`](Self::checkin)
    /// and can be collected with [`drain_idle`](Self::drain_idle).
    pub fn close(&self) -> Vec<LiveInstance> {
        let mut inner = self.lock();
        inner.closed = true;
        inner.waiters.clear();
        inner.targeted.clear();
        std::mem::take(&mut inner.idle)
            .into_iter()
            .map(|(i, _)| i)
            .collect()
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

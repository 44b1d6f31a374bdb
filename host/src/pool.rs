//! The live instances of one package, checked out one call at a time.
//!
//! An [`InstancePool`] hands an idle instance to a caller, who runs its
//! call inline on its own task and gives the instance back. When none is
//! idle the caller waits in a bounded queue (the package's bulkhead); past
//! the bound it is refused at once. A returned instance goes straight to
//! the longest waiter, so no wake-up is lost and no caller waits while an
//! instance sits idle.
//!
//! A broadcast must reach every instance, not just any one; it asks for a
//! particular slot with [`InstancePool::checkout_slot`].

use std::collections::VecDeque;
use std::sync::Mutex;

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
    idle: Vec<LiveInstance>,
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
        InstancePool { inner: Mutex::new(Inner::default()), queue_limit }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A panic while holding this lock cannot leave it inconsistent:
        // every critical section is a few pushes and pops.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes an idle instance, or a place in the queue when `may_wait`.
    pub fn checkout(&self, may_wait: bool) -> Result<Checkout, Refusal> {
        let mut inner = self.lock();
        if let Some(instance) = inner.idle.pop() {
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
        if let Some(at) = inner.idle.iter().position(|i| i.slot == slot) {
            return Some(Checkout::Ready(inner.idle.swap_remove(at)));
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
        inner.idle.push(instance);
    }

    /// Counts a new instance as alive and puts it in service; `expected`
    /// when it is a restart announced with [`expect`](Self::expect).
    pub fn add(&self, instance: LiveInstance, expected: bool) {
        {
            let mut inner = self.lock();
            inner.live += 1;
            if expected {
                inner.pending = inner.pending.saturating_sub(1);
            }
        }
        self.checkin(instance);
    }

    /// Counts an instance as gone (it faulted and was dropped).
    pub fn remove(&self) {
        let mut inner = self.lock();
        inner.live = inner.live.saturating_sub(1);
        Self::release_if_empty(&mut inner);
    }

    /// Announces a restart under way: callers wait for it rather than being
    /// refused.
    pub fn expect(&self) {
        self.lock().pending += 1;
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
    }

    /// Takes every idle instance (after [`close`](Self::close)).
    pub fn drain_idle(&self) -> Vec<LiveInstance> {
        std::mem::take(&mut self.lock().idle)
    }

    /// Whether [`close`](Self::close) was called.
    pub fn is_closed(&self) -> bool {
        self.lock().closed
    }
}

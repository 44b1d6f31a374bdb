//! Events: who may emit them, where they wait, and how they are delivered.
//!
//! # Accepted or refused, never lost quietly
//! An emit is checked first: the emitter's `emits` grant (bound to its
//! instance, like `calls`), the payload's size ([`EVENT_PAYLOAD_MAX`]) and
//! the depth of the event chain (`max_call_depth`, counted like nested
//! calls: an event handled at level n emits at level n + 1). Then every
//! subscriber must take it into its queue, bounded in bytes
//! ([`EVENT_QUEUE_BYTES`] per subscriber, each event charged its payload
//! plus [`EVENT_COST`]): an emitter that finds a queue full waits for room
//! until its own deadline, then the emit is refused with `overloaded` (and
//! at once when the subscriber is already part of the emitter's chain,
//! where waiting would wait on itself). The event is taken by every
//! subscriber or by none. A package's refused emit fails its current call
//! (`emit` returns nothing it could read an error from); an emit past the
//! depth limit is dropped with a log line instead, so that a chain stops
//! there without killing the handlers at its end.
//!
//! # Delivery
//! A queued event waits for one of the subscriber's instances (at most one
//! delivery per instance at a time, so events never crowd out calls); an
//! instance in restart or backoff is waited for. An event still waiting
//! when the subscriber's `timeout` has passed since it was accepted is not
//! started: it is dropped, counted and logged. A delivery that starts gets
//! the subscriber's full `timeout` to run.
//!
//! It owns the event queues and the deliveries; it must not route calls,
//! check call grants or restart instances (a faulted delivery goes to
//! `lifecycle.rs` through its lease).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::emit_budget::EmitBudget;
use super::lifecycle::Lease;
use super::{Broker, DEADLINE_GRACE, InFlight, Service};
use crate::context::{CallContext, CallError, Human, deadline_after};
use crate::package::{Caller, Fault, LiveInstance};
use crate::pool::{Checkout, Refusal};
use crate::supervisor::PackageState;
use crate::telemetry;

pub use crate::health::EventStats;

/// The largest event payload accepted, in bytes.
pub const EVENT_PAYLOAD_MAX: usize = 1 << 20;
/// The bytes of events that may wait for one subscriber.
pub const EVENT_QUEUE_BYTES: usize = 16 << 20;
/// What a queued event costs beyond its payload (its delivery task and
/// context), so that many small events are bounded too.
pub const EVENT_COST: usize = 2 << 10;

/// The longest pause between two looks for an instance of a subscriber
/// that has none (restarting, in backoff) or whose queue calls filled.
const INSTANCE_RETRY_MAX: Duration = Duration::from_millis(50);

/// One package's events: its queue as a subscriber (its room, in bytes,
/// and what it has counted) and its budget as an emitter.
pub(super) struct EventQueue {
    /// What its own emits may cost the host a second.
    pub(super) budget: EmitBudget,
    room: Arc<Semaphore>,
    /// Deliveries under way: at most one per instance the package may
    /// have, so that events never crowd its call queue.
    running: Arc<Semaphore>,
    queued: AtomicUsize,
    peak_bytes: AtomicUsize,
    expired: AtomicU64,
    refused: AtomicU64,
    too_deep: AtomicU64,
    /// Events whose subscriber stopped (shutdown, upgrade, removal) first.
    stopped: AtomicU64,
}

impl EventQueue {
    pub(super) fn new(max_instances: u32, emit_rate: u64) -> Self {
        EventQueue {
            budget: EmitBudget::new(emit_rate),
            room: Arc::new(Semaphore::new(EVENT_QUEUE_BYTES)),
            running: Arc::new(Semaphore::new(max_instances.max(1) as usize)),
            queued: AtomicUsize::new(0),
            peak_bytes: AtomicUsize::new(0),
            expired: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            too_deep: AtomicU64::new(0),
            stopped: AtomicU64::new(0),
        }
    }

    pub(super) fn stats(&self) -> EventStats {
        let (emits_throttled, emits_over_rate) = self.budget.counts();
        EventStats {
            emits_throttled,
            emits_over_rate,
            queued: self.queued.load(Ordering::Relaxed),
            queued_bytes: EVENT_QUEUE_BYTES - self.room.available_permits(),
            peak_bytes: self.peak_bytes.load(Ordering::Relaxed),
            expired: self.expired.load(Ordering::Relaxed),
            refused: self.refused.load(Ordering::Relaxed),
            too_deep: self.too_deep.load(Ordering::Relaxed),
        }
    }

    fn taken(&self, permit: OwnedSemaphorePermit) -> Queued {
        self.queued.fetch_add(1, Ordering::Relaxed);
        let used = EVENT_QUEUE_BYTES - self.room.available_permits();
        self.peak_bytes.fetch_max(used, Ordering::Relaxed);
        Queued(permit)
    }
}

/// An event's place in a subscriber's queue, until it is delivered or dropped.
struct Queued(#[allow(dead_code)] OwnedSemaphorePermit);

/// Where an event comes from.
#[derive(Clone, Copy)]
pub(super) enum Origin<'a> {
    /// A package of this host, by its instance's grants and context.
    Package(Caller<'a>),
    /// The host itself ([`Broker::publish`]).
    Host,
    /// Another node of the cluster; it is already published there.
    Remote,
}

/// One event taken by one subscriber, on its way to an instance.
struct Delivery {
    service: Arc<Service>,
    event: Arc<str>,
    payload: Arc<[u8]>,
    broadcast: bool,
    ctx: CallContext,
    /// Counts the delivery for shutdown until it ends.
    in_flight: InFlight,
    /// Its place in the subscriber's queue, given back when it ends.
    place: Queued,
}

/// The checks before an emit: the emitter's `emits` grant and the payload's size.
fn check_emit(
    origin: Origin<'_>,
    event: &str,
    len: usize,
    broadcast: bool,
) -> Result<(), CallError> {
    let what = if broadcast { "broadcast" } else { "emit" };
    if let Origin::Package(from) = origin
        && !from.grants.may_emit(event)
    {
        return Err(CallError::Denied(format!(
            "package `{}` may not {what} `{event}`: add it to `emits` in [packages.{}.grants]",
            from.package, from.package
        )));
    }
    if len > EVENT_PAYLOAD_MAX {
        return Err(CallError::InvalidParams(format!(
            "{what} `{event}`: the payload of {len} bytes is over the limit of {EVENT_PAYLOAD_MAX} bytes"
        )));
    }
    Ok(())
}

/// Whether to say the `n`th drop of a kind: the 1st, 2nd, 4th, 8th, ...,
/// so that a flood is logged in a few lines with its count.
fn worth_saying(n: u64) -> bool {
    n.is_power_of_two()
}

impl Broker {
    /// Emits (`broadcast == false`) or broadcasts `event` from `origin`:
    /// checks it, waits for room in each subscriber's queue (until
    /// `ctx.deadline`), starts the deliveries, and hands it to other nodes.
    /// `Err` when it was refused: no subscriber got it.
    pub(super) async fn emit_event(
        self: &Arc<Self>,
        origin: Origin<'_>,
        event: &str,
        payload: Vec<u8>,
        broadcast: bool,
        ctx: &CallContext,
        groups: Option<&[String]>,
    ) -> Result<(), CallError> {
        check_emit(origin, event, payload.len(), broadcast)?;
        self.clean_cache_on(event).await;
        // The chain and level a handler of this event sees.
        let ctx = match origin {
            Origin::Package(from) => ctx.via(from.package),
            Origin::Host | Origin::Remote => ctx.clone(),
        };
        let subscribers = self.subscribers(event, groups);
        if ctx.level() > self.settings.max_call_depth {
            self.too_deep(&subscribers, event, &ctx);
            return Ok(());
        }
        let cost = (payload.len() + EVENT_COST).min(EVENT_QUEUE_BYTES) as u32;
        if let Origin::Package(from) = origin {
            self.charge_emitter(from.package, event, &subscribers, broadcast, cost, &ctx)
                .await?;
        }
        let mut places = Vec::with_capacity(subscribers.len());
        for service in &subscribers {
            places.push(self.make_room(service, event, cost, &ctx).await?);
        }
        let payload: Arc<[u8]> = payload.into();
        let event: Arc<str> = event.into();
        let mut names = Vec::with_capacity(subscribers.len());
        for (service, place) in subscribers.into_iter().zip(places) {
            names.push(service.package.name.clone());
            let ctx = CallContext {
                deadline: deadline_after(service.package.spec.timeout),
                ..ctx.clone()
            };
            let delivery = self.clone().deliver_to(Delivery {
                service,
                event: event.clone(),
                payload: payload.clone(),
                broadcast,
                ctx,
                in_flight: InFlight::new(&self.in_flight),
                place,
            });
            match origin {
                // The emitter goes on at once; its instance stays its own.
                Origin::Package(_) | Origin::Host => {
                    tokio::spawn(delivery);
                }
                Origin::Remote => run_or_spawn(delivery).await,
            }
        }
        if !matches!(origin, Origin::Remote)
            && let Some(remote) = self.remote()
        {
            remote.publish(&event, &payload, broadcast, &names, &ctx);
        }
        Ok(())
    }

    /// Charges the emitting package's budget for the deliveries this event
    /// makes: one per subscriber (per instance of each for a broadcast) and
    /// one to the cluster, each its payload plus [`EVENT_COST`].
    async fn charge_emitter(
        &self,
        package: &str,
        event: &str,
        subscribers: &[Arc<Service>],
        broadcast: bool,
        cost: u32,
        ctx: &CallContext,
    ) -> Result<(), CallError> {
        let Some(emitter) = self.service(package) else {
            return Ok(());
        };
        let local: usize = match broadcast {
            true => subscribers
                .iter()
                .map(|s| s.pool.slots().len().max(1))
                .sum(),
            false => subscribers.len(),
        };
        let deliveries = local + usize::from(self.remote().is_some());
        let bytes = u64::from(cost).saturating_mul(deliveries as u64);
        emitter
            .events
            .budget
            .take(package, event, bytes, ctx.deadline)
            .await
    }

    /// An event past the depth limit: dropped for every subscriber, counted
    /// and logged now and then.
    fn too_deep(&self, subscribers: &[Arc<Service>], event: &str, ctx: &CallContext) {
        let level = ctx.level();
        for service in subscribers {
            let n = service.events.too_deep.fetch_add(1, Ordering::Relaxed) + 1;
            if worth_saying(n) {
                tracing::warn!(
                    package = service.name(),
                    event,
                    level,
                    dropped = n,
                    "event not delivered: the event chain is {level} deep, over the limit of {} (chain: {}); {n} dropped so far",
                    self.settings.max_call_depth,
                    ctx.chain_text()
                );
            }
        }
    }

    /// A place for an event of `cost` bytes in `service`'s queue: now, or
    /// once one is free before the emitter's deadline.
    async fn make_room(
        &self,
        service: &Arc<Service>,
        event: &str,
        cost: u32,
        ctx: &CallContext,
    ) -> Result<Queued, CallError> {
        let queue = &service.events;
        if let Ok(permit) = queue.room.clone().try_acquire_many_owned(cost) {
            return Ok(queue.taken(permit));
        }
        // A subscriber already serving part of this chain frees room only
        // once the chain goes on: waiting for it would wait on itself.
        if !ctx.passed_through(service.name()) {
            let wait = queue.room.clone().acquire_many_owned(cost);
            if let Ok(Ok(permit)) = tokio::time::timeout_at(ctx.deadline.into(), wait).await {
                return Ok(queue.taken(permit));
            }
        }
        let n = queue.refused.fetch_add(1, Ordering::Relaxed) + 1;
        let stats = queue.stats();
        let why = format!(
            "event `{event}` refused: subscriber `{}` has {} events ({} KiB) waiting, its queue's bound, and {}",
            service.name(),
            stats.queued,
            stats.queued_bytes >> 10,
            if ctx.passed_through(service.name()) {
                "it is part of this event's chain, so waiting would wait on itself"
            } else {
                "no room came before the emitter's deadline"
            }
        );
        if worth_saying(n) {
            tracing::warn!(package = service.name(), event, refused = n, "{why}");
        }
        Err(CallError::Overloaded(why))
    }

    /// Delivers one queued event to its subscriber: to one instance, or to
    /// each in turn for a broadcast.
    async fn deliver_to(self: Arc<Self>, d: Delivery) {
        let Delivery {
            service,
            event,
            payload,
            broadcast,
            ctx,
            in_flight,
            place,
        } = d;
        let _held = (in_flight, place);
        let _queued = QueuedCount(&service.events.queued);
        let running = service.events.running.clone();
        let room = match tokio::time::timeout_at(ctx.deadline.into(), running.acquire_owned()).await
        {
            Ok(Ok(room)) => room,
            _ => return self.expired(&service, &event, &ctx),
        };
        let _room = room;
        let mut service = service.clone();
        // An upgrade may close the subscriber with this event queued: the
        // version that replaced it takes the event (for a broadcast, every
        // instance of it), so an accepted event is not lost to the swap.
        loop {
            let delivered = match broadcast {
                true => {
                    let mut all = Ok(());
                    for slot in service.pool.slots() {
                        all = self
                            .deliver(&service, Some(slot), &event, &payload, ctx.clone())
                            .await;
                        if all.is_err() {
                            break;
                        }
                    }
                    all
                }
                false => {
                    self.deliver(&service, None, &event, &payload, ctx.clone())
                        .await
                }
            };
            let Err(Replaced) = delivered else { return };
            match self.successor_service(&service) {
                Some(next)
                    if next.package.ty.handles_events()
                        && next.package.spec.subscribes_to(&event) =>
                {
                    service = next;
                }
                _ => return self.stopped(&service, &event),
            }
        }
    }

    /// An event that found its subscriber stopped, with no version after it.
    fn stopped(&self, service: &Service, event: &str) {
        let n = service.events.stopped.fetch_add(1, Ordering::Relaxed) + 1;
        if worth_saying(n) {
            tracing::warn!(
                package = service.name(),
                event,
                "event not delivered: the package was stopped before an instance was free ({n} so far)"
            );
        }
    }

    /// Runs `event` on one instance of `service` (`slot`'s, or any);
    /// `Err(Replaced)` when the package was closed before an instance was
    /// free (the caller finds the version after it, if any).
    async fn deliver(
        &self,
        service: &Arc<Service>,
        slot: Option<usize>,
        event: &str,
        payload: &[u8],
        ctx: CallContext,
    ) -> Result<(), Replaced> {
        let instance = match event_instance(service, slot, ctx.deadline).await {
            Ok(instance) => instance,
            Err(Undelivered::Expired) => {
                self.expired(service, event, &ctx);
                return Ok(());
            }
            Err(Undelivered::Stopped) => return Err(Replaced),
        };
        let mut lease = Lease::new(self, service, instance);
        if Instant::now() >= ctx.deadline {
            lease.release();
            self.expired(service, event, &ctx);
            return Ok(());
        }
        // Time spent queued is not the handler's: it gets its full timeout.
        let budget = service.package.spec.timeout;
        let mut ctx = CallContext {
            deadline: deadline_after(budget),
            ..ctx
        };
        let t = self.telemetry();
        let span =
            t.and_then(|t| telemetry::spans::event(t, &mut ctx, &service.package.name, event));
        let deadline = ctx.deadline + DEADLINE_GRACE;
        let label = || format!("{} (event `{event}`)", service.name());
        let error = match tokio::time::timeout_at(
            deadline.into(),
            lease.get().handle_event(event, payload, ctx),
        )
        .await
        {
            Ok(Ok(())) => {
                lease.release();
                None
            }
            Ok(Err(fault)) => Some(lease.fault(fault, &label(), budget)),
            Err(_) => Some(lease.fault(Fault::Timeout, &label(), budget)),
        };
        if let (Some(t), Some(mut span)) = (t, span) {
            match error {
                Some(e) => span.outcome::<()>(&Err(e)),
                None => span.set("steedos.result", "ok"),
            }
            t.end(span);
        }
        Ok(())
    }

    fn expired(&self, service: &Service, event: &str, ctx: &CallContext) {
        let n = service.events.expired.fetch_add(1, Ordering::Relaxed) + 1;
        if worth_saying(n) {
            tracing::warn!(
                package = service.name(),
                event,
                request_id = &*ctx.request_id,
                expired = n,
                "event dropped: it waited past its deadline ({} after it was accepted) for an instance of `{}`; {n} dropped so far",
                Human(service.package.spec.timeout),
                service.name()
            );
        }
    }
}

/// Counts an event as queued until its delivery ends.
struct QueuedCount<'a>(&'a AtomicUsize);

impl Drop for QueuedCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

enum Undelivered {
    Expired,
    Stopped,
}

/// An instance of `service` (the one in `slot`, when given) for an event.
/// An event's subscriber was closed (replaced or stopped) before it ran.
struct Replaced;

/// Unlike a call, an event finding the call queue full, or no instance
/// (restarting, in backoff), waits until its deadline.
async fn event_instance(
    service: &Service,
    slot: Option<usize>,
    deadline: Instant,
) -> Result<LiveInstance, Undelivered> {
    let mut pause = Duration::from_millis(1);
    loop {
        let checkout = match slot {
            Some(s) => service
                .pool
                .checkout_slot(s, deadline)
                .ok_or(Refusal::NoInstance),
            None => service.pool.checkout(true, deadline),
        };
        match checkout {
            Ok(Checkout::Ready(instance)) => return Ok(instance),
            Ok(Checkout::Queued(wait)) => {
                return wait.await.map_err(|_| match Instant::now() >= deadline {
                    true => Undelivered::Expired,
                    false => Undelivered::Stopped,
                });
            }
            Err(_) if service.pool.is_closed() || service.state() == PackageState::Stopped => {
                return Err(Undelivered::Stopped);
            }
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(pause.min(deadline.saturating_duration_since(Instant::now())))
                    .await;
                pause = (pause * 2).min(INSTANCE_RETRY_MAX);
            }
            Err(_) => return Err(Undelivered::Expired),
        }
    }
}

/// Runs `work` on this task as far as it goes without waiting; the rest,
/// if any, goes on in a task of its own.
async fn run_or_spawn(work: impl Future<Output = ()> + Send + 'static) {
    let mut work = Box::pin(work);
    let first = std::future::poll_fn(|cx| Poll::Ready(work.as_mut().poll(cx))).await;
    if first.is_pending() {
        tokio::spawn(work);
    }
}

/// Runs `work` here as far as it goes without waiting, from code that
/// cannot wait; the rest goes on in a task of its own.
pub(super) fn start_or_spawn(work: impl Future<Output = ()> + Send + 'static) {
    let mut work = Box::pin(work);
    let mut cx = Context::from_waker(std::task::Waker::noop());
    if work.as_mut().poll(&mut cx).is_pending() {
        tokio::spawn(work);
    }
}

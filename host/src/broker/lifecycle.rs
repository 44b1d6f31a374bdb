//! Where an instance is started, faulted, restarted, scaled and drained.
//! A package's instances start here ([`Broker::start`], [`Broker::prepare`]);
//! a faulted instance is retired here and its replacement scheduled as the
//! [`supervisor`](crate::supervisor) decides (restart now, or back off);
//! pools grow when calls wait and shrink when idle; a retired version or
//! a shutting-down host drains here.
//!
//! It must not decide the restart policy (the supervisor does), route
//! calls (`call.rs`) or deliver events (`events.rs`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{Broker, DEADLINE_GRACE, Service};
use crate::context::{CallContext, CallError, Human};
use crate::manifest::PackageSpec;
use crate::package::{ActionType, BoxFuture, Fault, LiveInstance, Package, StartError};
use crate::supervisor::{PackageState, Verdict};
use crate::telemetry;
use crate::types::wit_signature;

/// How many restart latencies each service keeps for its statistics.
const RESTART_SAMPLES: usize = 4096;

/// How often a package waiting for its dependencies looks again.
const DEPENDENCY_POLL: Duration = Duration::from_millis(50);

/// At most one "failed to start" line per package in this long.
const START_FAILURE_LOG_EVERY: Duration = Duration::from_secs(5);

/// An instance checked out for one call. Dropped without [`release`]
/// (the call's future was cancelled mid-call), the instance is retired and
/// replaced, so no cancellation ever loses capacity.
///
/// [`release`]: Lease::release
pub(super) struct Lease<'a> {
    broker: &'a Broker,
    service: &'a Arc<Service>,
    instance: Option<LiveInstance>,
}

impl<'a> Lease<'a> {
    pub(super) fn new(
        broker: &'a Broker,
        service: &'a Arc<Service>,
        instance: LiveInstance,
    ) -> Self {
        Lease {
            broker,
            service,
            instance: Some(instance),
        }
    }

    pub(super) fn get(&mut self) -> &mut LiveInstance {
        self.instance
            .as_mut()
            .expect("a lease holds its instance until released")
    }

    /// The call finished and its instance may not serve another (it serves
    /// HTTP one request per instance): a fresh one takes its slot.
    pub(super) async fn renew(mut self) {
        let Some(instance) = self.instance.take() else {
            return;
        };
        let slot = instance.slot;
        drop(instance);
        match self.broker.start_instance(self.service, slot, false).await {
            Ok(fresh) => self.service.pool.checkin(fresh),
            Err(e) => self.broker.retire(
                self.service,
                slot,
                format!("a fresh instance did not start: {e}"),
            ),
        }
    }

    /// The call finished and its caller takes the instance back (to hand
    /// it to [`Lease::renew`] elsewhere).
    pub(super) fn take(mut self) -> LiveInstance {
        self.instance
            .take()
            .expect("a lease holds its instance until released")
    }

    /// The call finished: the instance goes back to the pool.
    pub(super) fn release(mut self) {
        if let Some(instance) = self.instance.take() {
            self.service.pool.checkin(instance);
        }
    }

    /// The call faulted: the instance is retired and replaced.
    pub(super) fn fault(mut self, fault: Fault, label: &str, budget: Duration) -> CallError {
        let instance = self
            .instance
            .take()
            .expect("a lease holds its instance until released");
        self.broker
            .fault(self.service, instance, fault, label, budget)
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            let slot = instance.slot;
            drop(instance);
            tracing::warn!(
                package = self.service.name(),
                slot,
                "call cancelled mid-run; replacing the instance"
            );
            self.broker.retire(
                self.service,
                slot,
                "a call was cancelled while the instance ran".to_string(),
            );
        }
    }
}

impl Broker {
    /// Registers `package` and starts its instances; returns once each has
    /// started or failed (a failed one is retried under the restart policy).
    pub async fn start(self: &Arc<Self>, package: Package) -> Arc<Service> {
        let service = self.prepare(package).await;
        self.install(service.clone());
        service
    }

    /// [`Broker::start`] once every service among the package's
    /// `dependencies` is available (here or on another node), as Moleculer
    /// waits before `started`; after `dependency_timeout` without them the
    /// package fails, its error naming what is missing.
    pub async fn start_when_ready(self: &Arc<Self>, package: Package) -> Option<Arc<Service>> {
        if let Err(why) = self.wait_for_dependencies(&package.spec).await {
            self.record_failure(&package.spec.name, why);
            return None;
        }
        Some(self.start(package).await)
    }

    /// Waits until every service among `spec`'s `dependencies` is available
    /// here or on another node of the cluster; after `dependency_timeout`
    /// (or at shutdown) the error names the package and what is missing.
    pub async fn wait_for_dependencies(&self, spec: &PackageSpec) -> Result<(), String> {
        if spec.dependencies.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + spec.dependency_timeout;
        tracing::info!(package = %spec.name, dependencies = ?spec.dependencies, "waiting for dependencies");
        loop {
            let missing = self.missing_dependencies(spec);
            if missing.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline || self.closing.load(Ordering::Acquire) {
                return Err(format!(
                    "package `{}`: not started: {} not available after {} (a service of \
                     this host or of another node of the cluster; see `dependencies`)",
                    spec.name,
                    missing
                        .iter()
                        .map(|m| format!("`{m}`"))
                        .collect::<Vec<_>>()
                        .join(", "),
                    Human(spec.dependency_timeout)
                ));
            }
            tokio::time::sleep(DEPENDENCY_POLL).await;
        }
    }

    /// Starts `package`'s instances without routing calls to it yet: the
    /// first half of a deploy or an upgrade.
    pub async fn prepare(self: &Arc<Self>, package: Package) -> Arc<Service> {
        let service = Arc::new(Service::new(package, &self.metrics));
        let starts = (0..service.package.spec.instances as usize).map(|slot| {
            let (broker, service) = (self.clone(), service.clone());
            async move {
                match broker.start_instance(&service, slot, false).await {
                    Ok(instance) => {
                        service.set_state(PackageState::Serving);
                        service.pool.add(instance, false);
                    }
                    Err(e) => broker.start_failed(&service, slot, e),
                }
            }
        });
        futures_join_all(starts).await;
        service
    }

    /// Lets the calls in flight on `service` finish (up to `grace`), then
    /// calls `stopped` on its instances. For a version replaced or removed.
    pub async fn retire_service(&self, service: Arc<Service>, grace: Duration) {
        service.set_state(PackageState::Stopped);
        let mut stopped = drain(&service, Instant::now() + grace).await;
        // Calls still running past the grace end by their own deadline; each
        // instance is stopped as it comes back, none left idle in a closed pool.
        if stopped < service.pool.live() {
            let last = Instant::now() + service.package.spec.timeout + DEADLINE_GRACE;
            stopped = stop_returning(&service, Vec::new(), stopped, last).await;
        }
        tracing::info!(package = service.name(), instances = stopped, "retired");
    }

    /// The version that replaced `service` (closed by an upgrade), with the
    /// index of its `action` when that action has the same type there: a
    /// call or event that found the old version closed before it ran is
    /// given to the new one instead of failing.
    pub(super) fn successor(
        &self,
        service: &Service,
        action: usize,
    ) -> Option<(Arc<Service>, usize)> {
        if !service.pool.is_closed() {
            return None;
        }
        let next = self.service(service.name())?;
        if std::ptr::eq(Arc::as_ptr(&next), service) {
            return None;
        }
        let from = service.package.ty.actions.get(action)?;
        let index = next
            .package
            .ty
            .actions
            .iter()
            .position(|a| a.name == from.name)?;
        let to = &next.package.ty.actions[index];
        let signature = |a: &ActionType| wit_signature(&a.params, a.result.as_ref());
        (signature(from) == signature(to)).then_some((next, index))
    }

    /// The version that replaced `service` (closed by an upgrade), if any,
    /// for an event it subscribed to.
    pub(super) fn successor_service(&self, service: &Service) -> Option<Arc<Service>> {
        if !service.pool.is_closed() {
            return None;
        }
        let next = self.service(service.name())?;
        (!std::ptr::eq(Arc::as_ptr(&next), service)).then_some(next)
    }

    /// A call had to wait: starts one more instance of `service`, in a task
    /// of its own, when its pool may grow.
    pub(super) fn scale_up(&self, service: &Arc<Service>) {
        let max = service.package.spec.max_instances as usize;
        let (Some(slot), Some(broker)) = (service.pool.grow(max), self.handle.0.upgrade()) else {
            return;
        };
        let service = service.clone();
        tokio::spawn(async move {
            match broker.start_instance(&service, slot, false).await {
                Ok(instance) => {
                    tracing::debug!(package = service.name(), slot, "scaled up");
                    service.pool.add(instance, true);
                }
                Err(e) => {
                    tracing::warn!(package = service.name(), slot, error = %e, "could not scale up");
                    service.pool.abandon(slot);
                }
            }
        });
    }

    /// Stops instances above each package's minimum that stayed idle past
    /// its `scale_down_after`. The broker's reaper calls this every second.
    pub async fn scale_down(&self) {
        for service in self.services() {
            let spec = &service.package.spec;
            if spec.max_instances <= spec.instances {
                continue;
            }
            let Some(before) = Instant::now().checked_sub(spec.scale_down_after) else {
                continue;
            };
            while let Some(mut instance) = service
                .pool
                .take_idle_since(before, spec.instances as usize)
            {
                let slot = instance.slot;
                let _ = instance.stopped(CallContext::new(spec.timeout)).await;
                tracing::debug!(package = service.name(), slot, "scaled down");
            }
        }
    }

    /// Runs [`scale_down`](Self::scale_down) every second while the broker lives.
    pub fn start_reaper(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let Some(broker) = weak.upgrade() else { return };
                if broker.closing.load(Ordering::Acquire) {
                    return;
                }
                broker.scale_down().await;
            }
        });
    }

    /// Retires a faulted instance, starts its replacement, and explains the
    /// fault to the caller.
    pub(super) fn fault(
        &self,
        service: &Arc<Service>,
        instance: LiveInstance,
        fault: Fault,
        label: &str,
        budget: Duration,
    ) -> CallError {
        let slot = instance.slot;
        drop(instance);
        let error = match &fault {
            Fault::Timeout => CallError::Timeout(format!(
                "{label} did not finish within {}; the instance was stopped and is being replaced",
                Human(budget)
            )),
            // What the host refused is the caller's error too, of its own kind.
            Fault::Refused(e) => e.with_message(format!(
                "{label} was stopped: {}; the instance is being replaced",
                e.message()
            )),
            other => {
                CallError::Crashed(format!("{label} {other}; the instance is being restarted"))
            }
        };
        tracing::warn!(package = service.name(), slot, %fault, "instance faulted");
        self.retire(service, slot, error.message().to_string());
        error
    }

    pub(super) fn retire(&self, service: &Arc<Service>, slot: usize, why: String) {
        service.pool.remove();
        service.status().last_error = Some(why);
        self.schedule_restart(service, slot, Instant::now());
    }

    /// Asks the supervisor when `slot` is started again, and schedules it.
    fn schedule_restart(&self, service: &Arc<Service>, slot: usize, fault_at: Instant) {
        let verdict = service
            .budget
            .lock()
            .map(|mut b| b.on_fault(fault_at))
            .unwrap_or(Verdict::RestartNow);
        let delay = match verdict {
            Verdict::RestartNow => {
                service.pool.expect(slot);
                None
            }
            Verdict::Backoff(rest) => {
                tracing::warn!(package = service.name(), backoff = %Human(rest), "restart budget exhausted; backing off");
                service.set_state(PackageState::Backoff {
                    retry_at: Instant::now() + rest,
                });
                Some(rest)
            }
        };
        // Outside a runtime (it is shutting down) there is nothing to restart for.
        if let (Some(broker), Ok(rt)) = (
            self.handle.0.upgrade(),
            tokio::runtime::Handle::try_current(),
        ) {
            rt.spawn(broker.restart(service.clone(), slot, fault_at, delay));
        }
    }

    /// Starts `slot` again after a fault at `fault_at`, first resting for
    /// `delay` when the package is in backoff.
    fn restart(
        self: Arc<Self>,
        service: Arc<Service>,
        slot: usize,
        fault_at: Instant,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            if let Some(rest) = delay {
                tokio::time::sleep(rest).await;
                if let Ok(mut b) = service.budget.lock() {
                    b.after_backoff();
                }
                service.pool.expect(slot);
            }
            // A shutdown ends a crash loop: no restart starts once it began.
            if service.pool.is_closed() || self.closing.load(Ordering::Acquire) {
                service.pool.unexpect();
                return;
            }
            match self.start_instance(&service, slot, true).await {
                Ok(instance) => {
                    {
                        let mut s = service.status();
                        if s.restart_latency.len() >= RESTART_SAMPLES {
                            s.restart_latency.remove(0);
                        }
                        s.restart_latency.push(fault_at.elapsed());
                    }
                    service.set_state(PackageState::Serving);
                    service.pool.add(instance, true);
                }
                Err(e) => {
                    service.pool.unexpect();
                    self.start_failed(&service, slot, e);
                }
            }
        })
    }

    fn start_failed(&self, service: &Arc<Service>, slot: usize, e: StartError) {
        {
            // A package failing every instance, again and again, says so
            // once in a while, not once per failure.
            let mut status = service.status();
            let now = Instant::now();
            match &mut status.start_failures_logged {
                Some((at, quiet)) if now.duration_since(*at) < START_FAILURE_LOG_EVERY => {
                    *quiet += 1;
                }
                logged => {
                    let quiet = logged.map_or(0, |(_, n)| n);
                    *logged = Some((now, 0));
                    tracing::error!(package = service.name(), slot, error = %e, more_failures_unlogged = quiet, "instance failed to start");
                }
            }
            status.last_error = Some(format!("package `{}` instance {slot}: {e}", service.name()));
        }
        if service.pool.live() == 0 && !matches!(service.state(), PackageState::Backoff { .. }) {
            service.set_state(PackageState::Starting);
        }
        self.schedule_restart(service, slot, Instant::now());
    }

    /// Starts the instance of `service` in `slot` (`restart`: after a
    /// fault), under its span when traced.
    async fn start_instance(
        &self,
        service: &Arc<Service>,
        slot: usize,
        restart: bool,
    ) -> Result<LiveInstance, StartError> {
        let mut ctx = CallContext::new(service.package.spec.timeout);
        let t = self.telemetry();
        let name = &service.package.name;
        let span = t.and_then(|t| telemetry::spans::instance_start(t, &mut ctx, name, restart));
        let started = self.run_start(service, slot, ctx).await;
        if let (Some(t), Some(mut span)) = (t, span) {
            span.set("steedos.slot", slot as i64);
            match &started {
                Ok(_) => span.set("steedos.result", "ok"),
                Err(e) => span.fail("crashed", e.to_string()),
            }
            t.end(span);
        }
        started
    }

    async fn run_start(
        &self,
        service: &Arc<Service>,
        slot: usize,
        ctx: CallContext,
    ) -> Result<LiveInstance, StartError> {
        let mut instance = service.package.instantiate(slot, self.router()).await?;
        let deadline = ctx.deadline + DEADLINE_GRACE;
        match tokio::time::timeout_at(deadline.into(), instance.started(ctx)).await {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StartError::Fault(Fault::Timeout)),
        }
    }

    /// Stops taking calls, lets in-flight calls finish, and calls `stopped`
    /// on every instance, all within `grace` in all: the hooks of every
    /// package run at once under that one deadline; a spinning one is
    /// interrupted there, and one blocked in a host call is abandoned.
    /// Restarts under way or in backoff give up.
    pub async fn shutdown(&self, grace: Duration) {
        self.closing.store(true, Ordering::Release);
        let deadline = Instant::now() + grace;
        let services = self.services();
        // No guest code runs past the deadline: not a `started` of a crash
        // loop, not a call, not a `stopped`.
        for service in &services {
            service.package.cut_off_at(deadline);
        }
        while self.in_flight.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let stops = services.iter().map(|service| async move {
            service.set_state(PackageState::Stopped);
            let stopped = drain(service, deadline).await;
            tracing::info!(package = service.name(), instances = stopped, "stopped");
        });
        let all = futures_util::future::join_all(stops);
        if tokio::time::timeout_at(deadline.into(), all).await.is_err() {
            tracing::warn!(
                grace = %Human(grace),
                "shutdown_timeout passed: `stopped` hooks still running were abandoned"
            );
        }
        // The spans of the last calls go out before the host does.
        if let Some(t) = self.telemetry() {
            t.flush().await;
        }
    }
}

/// Waits (until `deadline`) for `service`'s busy instances to come back,
/// closing its pool to new calls, and calls `stopped` on each instance, at
/// once. Returns how many were stopped.
async fn drain(service: &Service, deadline: Instant) -> usize {
    // Calls that resolved this service before it was replaced may still
    // queue for it: give them the instances until the busy ones are back.
    while service.pool.idle() < service.pool.live() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let idle = service.pool.close();
    stop_returning(service, idle, 0, deadline).await
}

/// Calls `stopped` on `idle` and on each instance of the closed `service`
/// that comes back, until all of its live instances are stopped or
/// `deadline`; returns how many are stopped, `already` included.
async fn stop_returning(
    service: &Service,
    mut idle: Vec<LiveInstance>,
    already: usize,
    deadline: Instant,
) -> usize {
    let mut stopped = already;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let budget = service.package.spec.timeout.min(left);
        let hooks = idle.drain(..).map(|mut instance| async move {
            if let Err(fault) = instance.stopped(CallContext::new(budget)).await {
                tracing::warn!(package = service.name(), %fault, "`stopped` failed");
            }
        });
        let hooks: Vec<_> = hooks.collect();
        stopped += hooks.len();
        futures_util::future::join_all(hooks).await;
        if stopped >= service.pool.live() || Instant::now() >= deadline {
            return stopped;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        idle = service.pool.drain_idle();
    }
}

/// Waits for every future (the few starts of one package; no extra crate).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    futures: impl Iterator<Item = F>,
) {
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}

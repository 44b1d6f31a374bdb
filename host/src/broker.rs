//! The broker: the registry of services and actions, and every route a call
//! or an event takes between them.
//!
//! # Services and actions
//! Each loaded package becomes a [`Service`]: its [`Package`], its
//! [`InstancePool`], its restart budget and its state. Its actions are
//! reached as `<package>.<action>`.
//!
//! # Calls
//! A call — from outside ([`Broker::call_json`], [`Broker::call`]), from a
//! package by name (`broker.call`), or through a typed import — resolves its
//! target, checks the caller's grants and the call depth, decodes the
//! parameters by the action's WIT type (so params that do not fit never
//! enter the callee), checks an instance out of the callee's pool and runs
//! the call inline on the caller's task. Whatever happens in the callee, the
//! caller gets a value or a [`CallError`], never a trap.
//!
//! Call cycles never deadlock: a package already serving an outer part of
//! the same call may take another idle instance of itself, but never waits
//! for one; the call fails at once and says why.
//!
//! # Faults
//! A trap, a timeout or a refused memory grow kills that instance only. The
//! caller gets `crashed` or `timeout`; the instance is replaced from the
//! package's `InstancePre` in microseconds, within the restart budget
//! (see [`supervisor`](crate::supervisor)).
//!
//! # Grants
//! A package's grants (`calls`, `emits`) travel with each of its instances
//! from the moment it is created ([`Caller::grants`]), so a call from
//! `started`, from an event handler, or from a version not yet installed
//! is checked exactly like any other; nothing is looked up by name.
//!
//! # Events
//! `emit` hands an event to one instance of every subscribing package,
//! `broadcast` to every instance of each, through a bounded queue per
//! subscriber: the emitter is slowed down, or refused with `overloaded`,
//! and nothing it was told was taken is lost quietly (see `broker/events.rs`).
//!
//! The broker knows neither HTTP nor NATS: the gateway and the transport
//! are callers of it.
//!
//! # Other nodes
//! A [`RemoteRoute`] set with [`Broker::set_remote`] (the cluster
//! transport) takes the calls no local package serves, and hears of every
//! event emitted here so that other nodes' listeners get it too. Local
//! packages always come first.

mod events;

pub use events::{EVENT_COST, EVENT_PAYLOAD_MAX, EVENT_QUEUE_BYTES, EventStats};

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::component::Val;
use wasmtime::component::types::Type;

use crate::codec::{self, Format};
use crate::context::{CallContext, CallError, Human};
use crate::metrics::{ActionMetrics, Metrics};
use crate::package::{
    ActionType, BoxFuture, Caller, Fault, ImportTarget, LiveInstance, Output, Package, Params,
    Router, StartError, host_budget,
};
use crate::pool::{Checkout, InstancePool, Refusal, Unserved, Wait};
use crate::resilience::{self, Admission, CircuitBreaker};
use crate::supervisor::{PackageState, RestartBudget, Verdict};
use events::{EventQueue, Origin};

/// Extra time past a call's deadline before the broker stops waiting for an
/// instance that does not come back from the host (a guest blocked in a
/// host call). The epoch deadline normally fires first.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// How many restart latencies each service keeps for its statistics.
const RESTART_SAMPLES: usize = 4096;

/// Settings of a broker that do not belong to one package.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    /// Calls nested deeper than this fail with `overloaded`.
    pub max_call_depth: u32,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings { max_call_depth: 16 }
    }
}

/// A running package: its instances, its restart budget, its state.
pub struct Service {
    /// The package.
    pub package: Package,
    pool: InstancePool,
    budget: Mutex<RestartBudget>,
    status: Mutex<Status>,
    /// Recording handles, one per action, by action index.
    metrics: Vec<ActionMetrics>,
    /// Breaker, retry, fallback and bulkhead settings, by action index.
    policies: Vec<ActionRuntime>,
    /// The events waiting for this package, bounded.
    events: EventQueue,
}

/// How one action is protected: its circuit breaker, whether it may be
/// retried, its fallback, and its own wait-queue bound.
struct ActionRuntime {
    breaker: Option<CircuitBreaker>,
    idempotent: bool,
    fallback: Option<String>,
    queue: Option<usize>,
    waiting: AtomicUsize,
}

struct Status {
    state: PackageState,
    last_error: Option<String>,
    restart_latency: Vec<Duration>,
    /// When a start failure was last logged, and how many since went unlogged.
    start_failures_logged: Option<(Instant, u64)>,
}

/// At most one "failed to start" line per package in this long.
const START_FAILURE_LOG_EVERY: Duration = Duration::from_secs(5);

pub use crate::health::ServiceReport;

impl Service {
    fn new(package: Package, metrics: &Metrics) -> Self {
        let pool = InstancePool::new(package.spec.queue);
        let budget = Mutex::new(RestartBudget::new(package.spec.restart.clone()));
        let status = Mutex::new(Status {
            state: PackageState::Starting,
            last_error: None,
            restart_latency: Vec::new(),
            start_failures_logged: None,
        });
        let metrics = package
            .ty
            .actions
            .iter()
            .map(|a| metrics.action(&package.name, &a.name))
            .collect();
        let policies = package
            .ty
            .actions
            .iter()
            .map(|a| {
                let own = package.spec.actions.iter().find(|p| p.name == a.name);
                ActionRuntime {
                    breaker: package.spec.circuit.clone().map(CircuitBreaker::new),
                    idempotent: own.is_some_and(|p| p.idempotent),
                    fallback: own.and_then(|p| p.fallback.clone()),
                    queue: own.and_then(|p| p.queue),
                    waiting: AtomicUsize::new(0),
                }
            })
            .collect();
        let events = EventQueue::new(package.spec.max_instances);
        Service {
            package,
            pool,
            budget,
            status,
            metrics,
            policies,
            events,
        }
    }

    fn record<T>(&self, action: usize, started: Instant, outcome: &Result<T, CallError>) {
        if let Some(m) = self.metrics.get(action) {
            m.record(started.elapsed(), outcome);
        }
    }

    fn name(&self) -> &str {
        &self.package.name
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_state(&self, state: PackageState) {
        let mut s = self.status();
        if s.state != PackageState::Stopped {
            s.state = state;
        }
    }

    /// The package's state now.
    pub fn state(&self) -> PackageState {
        self.status().state.clone()
    }

    /// Restart latencies (fault to replacement serving) seen so far, oldest first.
    pub fn restart_latencies(&self) -> Vec<Duration> {
        self.status().restart_latency.clone()
    }

    /// A snapshot for reports.
    pub fn report(&self) -> ServiceReport {
        let (state, last_error) = {
            let s = self.status();
            (s.state.name(), s.last_error.clone())
        };
        ServiceReport {
            name: self.name().to_string(),
            state,
            live: self.pool.live(),
            instances: self.package.spec.instances,
            queued: self.pool.queued(),
            restarts: self.budget.lock().map(|b| b.total).unwrap_or(0),
            last_error,
            circuits: self
                .policies
                .iter()
                .zip(&self.package.ty.actions)
                .filter_map(|(p, a)| p.breaker.as_ref().map(|b| (a.name.clone(), b.state_name())))
                .filter(|(_, state)| *state != "closed")
                .collect(),
            events: self.events.stats(),
            log_lines_dropped: self.package.log_lines_dropped(),
        }
    }

    /// What this package's event queue holds and has dropped.
    pub fn event_stats(&self) -> EventStats {
        self.events.stats()
    }
}

/// An instance checked out for one call. Dropped without [`release`]
/// (the call's future was cancelled mid-call), the instance is retired and
/// replaced, so no cancellation ever loses capacity.
///
/// [`release`]: Lease::release
struct Lease<'a> {
    broker: &'a Broker,
    service: &'a Arc<Service>,
    instance: Option<LiveInstance>,
}

impl Lease<'_> {
    fn get(&mut self) -> &mut LiveInstance {
        self.instance
            .as_mut()
            .expect("a lease holds its instance until released")
    }

    /// The call finished: the instance goes back to the pool.
    fn release(mut self) {
        if let Some(instance) = self.instance.take() {
            self.service.pool.checkin(instance);
        }
    }

    /// The call faulted: the instance is retired and replaced.
    fn fault(mut self, fault: Fault, label: &str, budget: Duration) -> CallError {
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

/// A package that could not be loaded at all, and why.
#[derive(Clone, Debug)]
pub struct LoadFailure {
    /// The package name.
    pub name: String,
    /// The full explanation.
    pub error: String,
}

/// Params of a call to another node, as the caller wrote them.
#[derive(Clone, Copy, Debug)]
pub enum RemoteParams<'a> {
    /// JSON (the gateway, the CLI, [`Broker::call_json`]).
    Json(&'a [u8]),
    /// MessagePack (`broker.call` from a package).
    MessagePack(&'a [u8]),
}

/// The route to other nodes: calls that no local package serves, and
/// events for listeners elsewhere. Set once by the cluster transport.
pub trait RemoteRoute: Send + Sync + 'static {
    /// Calls `action` on another node; `None` when no node serves it. The
    /// result is the action's JSON result.
    fn call(
        &self,
        action: &str,
        params: RemoteParams<'_>,
        ctx: &CallContext,
    ) -> Option<BoxFuture<'static, Result<serde_json::Value, CallError>>>;
    /// The parameters of `action` on a node that serves it, with their
    /// fastest-validator rules (Moleculer's `params`); `None` when no node
    /// serves it.
    fn params(&self, action: &str) -> Option<Vec<(String, serde_json::Value)>>;
    /// Hands an event emitted here (`payload` in MessagePack) to the other
    /// nodes' listeners; for `emit`, `local_groups` already got it here.
    fn publish(
        &self,
        event: &str,
        payload: &[u8],
        broadcast: bool,
        local_groups: &[Arc<str>],
        ctx: &CallContext,
    );
}

/// The registry and router of one host.
pub struct Broker {
    settings: BrokerSettings,
    services: RwLock<HashMap<Arc<str>, Arc<Service>>>,
    failures: Mutex<Vec<LoadFailure>>,
    handle: Arc<BrokerHandle>,
    closing: AtomicBool,
    /// Outside calls and event deliveries under way; shutdown waits for them.
    in_flight: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    remote: RwLock<Option<Arc<dyn RemoteRoute>>>,
}

/// Counts one unit of work in flight until dropped.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        InFlight(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a package's host functions hold: a weak link back to the broker,
/// so instances never keep the broker alive.
pub struct BrokerHandle(Weak<Broker>);

impl Broker {
    /// An empty broker.
    pub fn new(settings: BrokerSettings) -> Arc<Broker> {
        Arc::new_cyclic(|weak| Broker {
            settings,
            services: RwLock::new(HashMap::new()),
            failures: Mutex::new(Vec::new()),
            handle: Arc::new(BrokerHandle(weak.clone())),
            closing: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            metrics: Arc::new(Metrics::new()),
            remote: RwLock::new(None),
        })
    }

    /// Routes calls that no local package serves, and events, to other
    /// nodes through `remote`; `None` ends that.
    pub fn set_remote(&self, remote: Option<Arc<dyn RemoteRoute>>) {
        *self.remote.write().unwrap_or_else(|p| p.into_inner()) = remote;
    }

    fn remote(&self) -> Option<Arc<dyn RemoteRoute>> {
        self.remote
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The parameter rules another node announced for `action` (see
    /// [`RemoteRoute::params`]) when a call to it goes to another node;
    /// `None` when a package of this host serves it or no node does.
    pub fn remote_params(&self, action: &str) -> Option<Vec<(String, serde_json::Value)>> {
        if self.resolve(action).is_ok() {
            return None;
        }
        self.remote()?.params(action)
    }

    /// A local miss goes to another node when one serves `action`.
    async fn call_remote(
        &self,
        action: &str,
        params: RemoteParams<'_>,
        ctx: CallContext,
        missing: CallError,
    ) -> Result<serde_json::Value, CallError> {
        let call = self
            .remote()
            .and_then(|remote| remote.call(action, params, &ctx));
        match call {
            Some(call) => call.await,
            None => Err(missing),
        }
    }

    /// The metrics of every call this broker routes.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The router that packages' host functions use.
    pub fn router(&self) -> Arc<dyn Router> {
        self.handle.clone()
    }

    /// The service of `package`.
    pub fn service(&self, package: &str) -> Option<Arc<Service>> {
        self.services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(package)
            .cloned()
    }

    /// Every service, by name.
    pub fn services(&self) -> Vec<Arc<Service>> {
        let mut all: Vec<_> = self
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// Packages that could not be loaded.
    pub fn failures(&self) -> Vec<LoadFailure> {
        self.failures.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// Records a package that could not be loaded.
    pub fn record_failure(&self, name: &str, error: String) {
        tracing::error!(package = name, "{error}");
        if let Ok(mut f) = self.failures.lock() {
            f.push(LoadFailure {
                name: name.to_string(),
                error,
            });
        }
    }

    /// Forgets the load failure of `name` (it has been deployed since).
    pub fn clear_failure(&self, name: &str) {
        if let Ok(mut f) = self.failures.lock() {
            f.retain(|f| f.name != name);
        }
    }

    /// Snapshots of every package, loaded or failed.
    pub fn reports(&self) -> Vec<ServiceReport> {
        let mut reports: Vec<ServiceReport> = self.services().iter().map(|s| s.report()).collect();
        for f in self.failures() {
            reports.push(ServiceReport {
                name: f.name,
                state: PackageState::Failed.name(),
                live: 0,
                instances: 0,
                queued: 0,
                restarts: 0,
                last_error: Some(f.error),
                circuits: Vec::new(),
                events: EventStats::default(),
                log_lines_dropped: 0,
            });
        }
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    }

    /// Registers `package` and starts its instances; returns once each has
    /// started or failed (a failed one is retried under the restart policy).
    pub async fn start(self: &Arc<Self>, package: Package) -> Arc<Service> {
        let service = self.prepare(package).await;
        self.install(service.clone());
        service
    }

    /// Starts `package`'s instances without routing calls to it yet: the
    /// first half of a deploy or an upgrade.
    pub async fn prepare(self: &Arc<Self>, package: Package) -> Arc<Service> {
        let service = Arc::new(Service::new(package, &self.metrics));
        let starts = (0..service.package.spec.instances as usize).map(|slot| {
            let (broker, service) = (self.clone(), service.clone());
            async move {
                match broker.start_instance(&service, slot).await {
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

    /// Routes calls for the service's package to `service` from now on;
    /// returns the version it replaces, still running.
    pub fn install(&self, service: Arc<Service>) -> Option<Arc<Service>> {
        let name = service.package.name.clone();
        if let Ok(mut f) = self.failures.lock() {
            f.retain(|f| *f.name != *name);
        }
        self.services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name, service)
    }

    /// Stops routing calls to `package`; returns its service, still running.
    pub fn uninstall(&self, package: &str) -> Option<Arc<Service>> {
        self.services
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(package)
    }

    /// Lets the calls in flight on `service` finish (up to `grace`), then
    /// calls `stopped` on its instances. For a version replaced or removed.
    pub async fn retire_service(&self, service: Arc<Service>, grace: Duration) {
        service.set_state(PackageState::Stopped);
        let stopped = drain(&service, Instant::now() + grace).await;
        tracing::info!(package = service.name(), instances = stopped, "retired");
    }

    // ------------------------------------------------------------ calls

    /// Calls `action` (`<package>.<action>`) with JSON params (an object by
    /// parameter name, or an array by position); returns the JSON result.
    /// An action no local package serves goes to another node of the
    /// cluster when one serves it.
    pub async fn call_json(
        &self,
        action: &str,
        params: &[u8],
        ctx: CallContext,
    ) -> Result<serde_json::Value, CallError> {
        match self.resolve(action) {
            Ok(found) => self.call_json_on(found, action, params, ctx).await,
            Err(missing) => {
                self.call_remote(action, RemoteParams::Json(params), ctx, missing)
                    .await
            }
        }
    }

    /// [`Broker::call_json`] on this host's packages only (for calls that
    /// came from another node).
    pub async fn call_json_local(
        &self,
        action: &str,
        params: &[u8],
        ctx: CallContext,
    ) -> Result<serde_json::Value, CallError> {
        let found = self.resolve(action)?;
        self.call_json_on(found, action, params, ctx).await
    }

    async fn call_json_on(
        &self,
        (service, index): (Arc<Service>, usize),
        action: &str,
        params: &[u8],
        ctx: CallContext,
    ) -> Result<serde_json::Value, CallError> {
        let action_ty = &service.package.ty.actions[index];
        let args = decode_params(&service, action_ty, action, Format::Json, params)
            .inspect_err(|e| service.record(index, Instant::now(), &Err::<(), _>(e.clone())))?;
        let value = self.invoke(&service, index, args.params(), ctx).await?;
        let (ty, val) = split_result(action, action_ty.result.as_ref(), value)?;
        match (ty, val) {
            (_, Some(Output::Bytes(bytes))) => Ok(codec::bytes_to_json(&bytes)),
            (Some(ty), Some(out)) => codec::to_json_value(&ty, &out.into_val())
                .map_err(|e| CallError::Failed(format!("{action}: cannot encode the result: {e}"))),
            _ => Ok(serde_json::Value::Null),
        }
    }

    /// Calls `action` with component values; returns its raw result value.
    pub async fn call(
        &self,
        action: &str,
        params: &[Val],
        ctx: CallContext,
    ) -> Result<Option<Val>, CallError> {
        let (service, index) = self.resolve(action)?;
        let out = self
            .invoke(&service, index, Params::Vals(params), ctx)
            .await?;
        Ok(out.map(Output::into_val))
    }

    /// Publishes an event from the host itself (no grant applies). It is
    /// taken at once when every subscriber has room; otherwise it waits
    /// for room, in a task of its own, until `ctx`'s deadline, and a
    /// refusal is logged.
    pub fn publish(
        self: &Arc<Self>,
        event: &str,
        payload: Vec<u8>,
        broadcast: bool,
        ctx: CallContext,
    ) {
        let (broker, event) = (self.clone(), event.to_string());
        events::start_or_spawn(async move {
            let emitted = broker
                .emit_event(Origin::Host, &event, payload, broadcast, &ctx, None)
                .await;
            if let Err(e) = emitted {
                tracing::warn!(event, error = %e, "event published by the host refused");
            }
        });
    }

    /// Emits `event` from the host itself and waits until every subscriber
    /// has taken it (until `ctx`'s deadline); `Err` says why it was refused.
    pub async fn emit(
        self: &Arc<Self>,
        event: &str,
        payload: Vec<u8>,
        broadcast: bool,
        ctx: &CallContext,
    ) -> Result<(), CallError> {
        self.emit_event(Origin::Host, event, payload, broadcast, ctx, None)
            .await
    }

    fn resolve(&self, action: &str) -> Result<(Arc<Service>, usize), CallError> {
        let Some((package, name)) = action.split_once('.') else {
            return Err(CallError::NotFound(format!(
                "`{action}` is not an action name; actions are called `<package>.<action>`"
            )));
        };
        let service = self.service(package).ok_or_else(|| {
            let failed = self.failures().into_iter().find(|f| f.name == package);
            CallError::NotFound(match failed {
                Some(f) => format!("package `{package}` failed to load: {}", f.error),
                None => format!("no package `{package}` (for action `{action}`)"),
            })
        })?;
        let Some((index, _)) = service.package.ty.action(name) else {
            let known: Vec<&str> = service
                .package
                .ty
                .actions
                .iter()
                .map(|a| a.name.as_str())
                .collect();
            return Err(CallError::NotFound(format!(
                "package `{package}` has no action `{name}` (it has: {})",
                known.join(", ")
            )));
        };
        Ok((service, index))
    }

    /// Runs one call on one instance of `service`: the common path of every route.
    async fn invoke(
        &self,
        service: &Arc<Service>,
        action: usize,
        params: Params<'_>,
        ctx: CallContext,
    ) -> Result<Option<Output>, CallError> {
        self.invoke_protected(service, action, params, ctx, true)
            .await
    }

    /// One call with its protections: the circuit breaker, retries of
    /// idempotent actions with exponential backoff, and the fallback.
    async fn invoke_protected(
        &self,
        service: &Arc<Service>,
        action: usize,
        params: Params<'_>,
        ctx: CallContext,
        allow_fallback: bool,
    ) -> Result<Option<Output>, CallError> {
        let policy = &service.policies[action];
        let mut attempt = 0;
        let outcome = loop {
            let started = Instant::now();
            let admission = policy
                .breaker
                .as_ref()
                .map_or(Admission::Pass, |b| b.admit(started));
            let outcome = match admission {
                Admission::Reject(after) => {
                    let label = format!(
                        "{}.{}",
                        service.name(),
                        service.package.ty.actions[action].name
                    );
                    let e = CallError::Overloaded(format!(
                        "{label}: circuit open after repeated failures; the next probe in {}",
                        Human(after)
                    ));
                    service.record(action, started, &Err::<(), _>(e.clone()));
                    break Err(e);
                }
                Admission::Pass | Admission::Probe => {
                    self.invoke_unmetered(service, action, params, ctx.clone(), started)
                        .await
                }
            };
            if let Some(b) = &policy.breaker {
                b.record(
                    matches!(&outcome, Err(e) if resilience::is_failure(e)),
                    Instant::now(),
                );
            }
            service.record(action, started, &outcome);
            match &outcome {
                Err(e)
                    if resilience::is_failure(e)
                        && policy.idempotent
                        && attempt < service.package.spec.retry.max =>
                {
                    attempt += 1;
                    let delay = resilience::retry_delay(&service.package.spec.retry, attempt);
                    if ctx.remaining() <= delay {
                        break outcome;
                    }
                    tracing::debug!(
                        package = service.name(),
                        attempt,
                        "retrying an idempotent action"
                    );
                    // Boxed: a timer in place would grow every call's future.
                    Box::pin(tokio::time::sleep(delay)).await;
                }
                _ => break outcome,
            }
        };
        match (&outcome, &policy.fallback) {
            (Err(e), Some(fallback)) if allow_fallback && resilience::is_failure(e) => {
                let Ok((fb_service, fb_action)) = self.resolve(fallback) else {
                    return outcome;
                };
                let from = &service.package.ty.actions[action];
                let to = &fb_service.package.ty.actions[fb_action];
                let Some(fb_params) = fallback_params(from, to, params, &fb_service) else {
                    tracing::warn!(package = service.name(), fallback = %fallback, "the fallback's parameters do not fit; not called");
                    return outcome;
                };
                tracing::info!(package = service.name(), fallback = %fallback, "calling the fallback");
                let call = Box::pin(self.invoke_protected(
                    &fb_service,
                    fb_action,
                    fb_params.params(),
                    ctx,
                    false,
                ));
                call.await.or(outcome)
            }
            _ => outcome,
        }
    }

    /// One attempt of a call, begun at `now`.
    async fn invoke_unmetered(
        &self,
        service: &Arc<Service>,
        action: usize,
        params: Params<'_>,
        ctx: CallContext,
        now: Instant,
    ) -> Result<Option<Output>, CallError> {
        // A caller that never waits (its instances are always idle) still
        // gives the runtime back now and then, so restarts and timers run.
        tokio::task::consume_budget().await;
        let label = || {
            format!(
                "{}.{}",
                service.name(),
                service.package.ty.actions[action].name
            )
        };
        let outermost = ctx.chain.is_empty();
        // Calls already under way finish, nested calls included; new ones are refused.
        if outermost && self.closing.load(Ordering::Acquire) {
            return Err(CallError::Overloaded(format!(
                "{}: the host is shutting down",
                label()
            )));
        }
        let _in_flight = outermost.then(|| InFlight::new(&self.in_flight));
        let level = ctx.level();
        if level > self.settings.max_call_depth {
            return Err(CallError::Overloaded(format!(
                "{}: call depth {level} exceeds the limit of {} (chain: {})",
                label(),
                self.settings.max_call_depth,
                ctx.chain_text()
            )));
        }
        // The callee's own timeout applies too, never more than the caller has left.
        let budget = service
            .package
            .spec
            .timeout
            .min(ctx.deadline.saturating_duration_since(now));
        let ctx = CallContext {
            deadline: now + budget,
            ..ctx
        };
        let in_chain = ctx.passed_through(service.name());
        let instance = match service.pool.checkout(!in_chain, ctx.deadline) {
            Ok(Checkout::Ready(i)) => i,
            Ok(Checkout::Queued(wait)) => match self.grow_then_wait(service, action, wait).await {
                Err(e) => return Err(e),
                Ok(Ok(i)) => i,
                Ok(Err(Unserved::Released)) => return Err(unavailable(service, &label())),
                Ok(Err(Unserved::Expired)) => {
                    return Err(CallError::Timeout(format!(
                        "{}: no instance became idle before the deadline ({} instances busy)",
                        label(),
                        service.package.spec.instances
                    )));
                }
            },
            Err(Refusal::Busy) => {
                return Err(CallError::Overloaded(format!(
                    "{}: every instance of `{}` is busy serving an outer part of this call (chain: {}); \
                     waiting would deadlock, so the call fails now — raise `instances` for `{}`",
                    label(),
                    service.name(),
                    ctx.chain_text(),
                    service.name()
                )));
            }
            Err(Refusal::QueueFull) => {
                return Err(CallError::Overloaded(format!(
                    "{}: {} calls are already waiting (queue limit)",
                    label(),
                    service.package.spec.queue
                )));
            }
            Err(Refusal::NoInstance) => return Err(unavailable(service, &label())),
        };
        let action_ty = &service.package.ty.actions[action];
        let (has_result, bytes) = (action_ty.result.is_some(), action_ty.bytes);
        let deadline = ctx.deadline;
        let mut lease = Lease {
            broker: self,
            service,
            instance: Some(instance),
        };
        let outcome = {
            let run = std::pin::pin!(lease.get().call(action, params, bytes, has_result, ctx));
            // The epoch deadline stops a running guest. The outermost call also
            // keeps a timer, for a guest stuck in a host call; nested calls are
            // inside its future and go with it (their leases retire them).
            match outermost {
                true => within(deadline + DEADLINE_GRACE, run).await,
                false => Some(run.await),
            }
        };
        match outcome {
            Some(Ok(value)) => {
                lease.release();
                Ok(value)
            }
            Some(Err(fault)) => Err(lease.fault(fault, &label(), budget)),
            None => Err(lease.fault(Fault::Timeout, &label(), budget)),
        }
    }

    /// A call had to wait: start one more instance if the pool may grow,
    /// then wait for whichever instance comes back first.
    async fn grow_then_wait(
        &self,
        service: &Arc<Service>,
        action: usize,
        wait: Wait<'_>,
    ) -> Result<Result<LiveInstance, Unserved>, CallError> {
        let max = service.package.spec.max_instances as usize;
        if let (Some(slot), Some(broker)) = (service.pool.grow(max), self.handle.0.upgrade()) {
            let service = service.clone();
            tokio::spawn(async move {
                match broker.start_instance(&service, slot).await {
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
        self.wait_queued(service, action, wait).await
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

    /// Waits for a queued instance, within the action's own bulkhead.
    async fn wait_queued(
        &self,
        service: &Service,
        action: usize,
        wait: Wait<'_>,
    ) -> Result<Result<LiveInstance, Unserved>, CallError> {
        let policy = &service.policies[action];
        let waiting = policy.waiting.fetch_add(1, Ordering::AcqRel);
        let _waiting = scopeguard_dec(&policy.waiting);
        if let Some(limit) = policy.queue
            && waiting >= limit
        {
            return Err(CallError::Overloaded(format!(
                "{}.{}: {limit} calls of this action are already waiting (its queue limit)",
                service.name(),
                service.package.ty.actions[action].name
            )));
        }
        Ok(wait.await)
    }

    /// Retires a faulted instance, starts its replacement, and explains the
    /// fault to the caller.
    fn fault(
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

    fn retire(&self, service: &Arc<Service>, slot: usize, why: String) {
        service.pool.remove();
        service.status().last_error = Some(why);
        self.schedule_restart(service, slot, Instant::now());
    }

    /// Decides, within the restart budget, when `slot` is started again.
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
            match self.start_instance(&service, slot).await {
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

    async fn start_instance(
        &self,
        service: &Arc<Service>,
        slot: usize,
    ) -> Result<LiveInstance, StartError> {
        let mut instance = service.package.instantiate(slot, self.router()).await?;
        let ctx = CallContext::new(service.package.spec.timeout);
        let deadline = ctx.deadline + DEADLINE_GRACE;
        match tokio::time::timeout_at(deadline.into(), instance.started(ctx)).await {
            Ok(Ok(())) => Ok(instance),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(StartError::Fault(Fault::Timeout)),
        }
    }

    // ------------------------------------------------------------ events

    /// Hands an event that came from another node (`payload` in
    /// MessagePack) to this host's subscribers; `groups` (package names)
    /// limits it to those when given.
    ///
    /// A delivery that finds an idle instance runs here, on the caller's
    /// task (no task per event); one that has to wait goes on in a task of
    /// its own. Resolves once every subscriber has taken the event: while a
    /// subscriber's queue is full this waits, so a flood slows down the
    /// reading of events rather than growing memory.
    pub async fn deliver_remote_event(
        self: &Arc<Self>,
        event: &str,
        payload: Vec<u8>,
        broadcast: bool,
        groups: Option<&[String]>,
        ctx: CallContext,
    ) {
        let delivered = self
            .emit_event(Origin::Remote, event, payload, broadcast, &ctx, groups)
            .await;
        if let Err(e) = delivered {
            tracing::warn!(event, error = %e, "event from another node refused");
        }
    }

    /// The services subscribed to `event` (among `groups`, when given), by name.
    fn subscribers(&self, event: &str, groups: Option<&[String]>) -> Vec<Arc<Service>> {
        let mut subscribers: Vec<Arc<Service>> = self
            .services
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.package.ty.handles_events() && s.package.spec.subscribes_to(event))
            .filter(|s| groups.is_none_or(|g| g.iter().any(|g| **g == *s.package.name)))
            .cloned()
            .collect();
        if subscribers.len() > 1 {
            subscribers.sort_by(|a, b| a.name().cmp(b.name()));
        }
        subscribers
    }

    // ---------------------------------------------------------- shutdown

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
    let mut idle = service.pool.close();
    let mut stopped = 0;
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

/// The fallback's parameters, taken by name from the failed call's: each
/// must be there with the same type, or be an `option` (then `none`).
fn fallback_params(
    from: &ActionType,
    to: &ActionType,
    params: Params<'_>,
    to_service: &Service,
) -> Option<Decoded> {
    let arg = |i: usize| match params {
        Params::Vals(vals) => vals.get(i).cloned().map(codec::Arg::Val),
        Params::Args(args) => args.get(i).cloned(),
    };
    let args: Vec<codec::Arg> = to
        .params
        .iter()
        .map(
            |(name, ty)| match from.params.iter().position(|(n, t)| n == name && t == ty) {
                Some(i) => arg(i),
                None if matches!(ty, Type::Option(_)) => Some(codec::Arg::Val(Val::Option(None))),
                None => None,
            },
        )
        .collect::<Option<_>>()?;
    Decoded::new(args, to, to_service).ok()
}

/// Runs `call` until `deadline`; `None` if the deadline came first. The
/// timer is armed only once the call has to wait, and most calls never do.
async fn within<F: Future>(deadline: Instant, mut call: Pin<&mut F>) -> Option<F::Output> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let timer =
            timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Decrements `counter` when dropped.
fn scopeguard_dec(counter: &AtomicUsize) -> impl Drop + '_ {
    struct Dec<'a>(&'a AtomicUsize);
    impl Drop for Dec<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::AcqRel);
        }
    }
    Dec(counter)
}

fn unavailable(service: &Service, label: &str) -> CallError {
    let status = service.status();
    let why = status
        .last_error
        .as_deref()
        .unwrap_or("no instance is running");
    match status.state {
        PackageState::Backoff { retry_at } => CallError::Overloaded(format!(
            "{label}: package `{}` is in restart backoff after repeated faults (retry in {}); last error: {why}",
            service.name(),
            Human(retry_at.saturating_duration_since(Instant::now()))
        )),
        PackageState::Stopped => {
            CallError::Overloaded(format!("{label}: package `{}` is stopped", service.name()))
        }
        _ => CallError::Overloaded(format!(
            "{label}: package `{}` has no running instance ({}); last error: {why}",
            service.name(),
            status.state.name()
        )),
    }
}

/// A call's decoded parameters: bytes kept as bytes for a byte-shaped
/// action, values for any other.
enum Decoded {
    Vals(Vec<Val>),
    Args(Vec<codec::Arg>),
}

impl Decoded {
    /// `args` in the form `action` of `service` takes; an error if as
    /// values they would outgrow the package's host budget.
    fn new(
        args: Vec<codec::Arg>,
        action: &ActionType,
        service: &Service,
    ) -> Result<Decoded, String> {
        if action.bytes.is_some() {
            return Ok(Decoded::Args(args));
        }
        let budget = host_budget(service.package.spec.memory);
        let cost = args.iter().map(codec::Arg::val_cost).sum::<usize>();
        if cost > budget {
            return Err(format!(
                "too large: as component values the parameters would take more than {} of host memory",
                bytesize::ByteSize::b(budget as u64).display().iec()
            ));
        }
        Ok(Decoded::Vals(
            args.into_iter().map(codec::Arg::into_val).collect(),
        ))
    }

    fn params(&self) -> Params<'_> {
        match self {
            Decoded::Vals(vals) => Params::Vals(vals),
            Decoded::Args(args) => Params::Args(args),
        }
    }
}

/// Decodes `bytes` as the parameters of `action` of `service`, within the
/// package's host budget; refusals name the action and the payload's size.
fn decode_params(
    service: &Service,
    action: &ActionType,
    label: &str,
    format: Format,
    bytes: &[u8],
) -> Result<Decoded, CallError> {
    let options = codec::DecodeOptions {
        budget: host_budget(service.package.spec.memory),
        bytes: action.bytes.is_some(),
    };
    let refuse = |e: &dyn std::fmt::Display| {
        let size = bytesize::ByteSize::b(bytes.len() as u64).display().iec();
        CallError::InvalidParams(format!("{label}: {e} (payload of {size})"))
    };
    match codec::decode_args(&action.params, format, bytes, options) {
        Ok(args) => Decoded::new(args, action, service).map_err(|e| refuse(&e)),
        Err(e) if e.message.starts_with("too large") => Err(refuse(&e)),
        Err(e) => Err(CallError::InvalidParams(format!("{label}: {e}"))),
    }
}

/// For an action returning `result<T, E>`: the ok value by `T`, or the
/// error as `failed`. Any other result passes through.
fn split_result(
    label: &str,
    ty: Option<&Type>,
    value: Option<Output>,
) -> Result<(Option<Type>, Option<Output>), CallError> {
    match (ty, value) {
        (Some(Type::Result(r)), Some(Output::OkBytes(bytes))) => {
            Ok((r.ok(), Some(Output::Bytes(bytes))))
        }
        (Some(Type::Result(r)), Some(Output::Val(Val::Result(Ok(v))))) => {
            Ok((r.ok(), v.map(|b| Output::Val(*b))))
        }
        (Some(Type::Result(r)), Some(Output::Val(Val::Result(Err(e))))) => {
            let message = match (r.err(), e) {
                (_, Some(v)) if matches!(*v, Val::String(_)) => match *v {
                    Val::String(s) => s,
                    _ => unreachable!("checked above"),
                },
                (Some(ty), Some(v)) => codec::to_json_value(&ty, &v)
                    .map(|j| j.to_string())
                    .unwrap_or_else(|e| e.to_string()),
                _ => "error".to_string(),
            };
            Err(CallError::Failed(format!("{label}: {message}")))
        }
        (ty, value) => Ok((ty.cloned(), value)),
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

// ------------------------------------------------------------ the router

impl Broker {
    /// `broker.call` of an action no local package serves: the caller's
    /// grants apply, then another node may serve it (JSON on the wire,
    /// MessagePack for the package).
    async fn call_remote_for(
        &self,
        from: Caller<'_>,
        action: &str,
        params: &[u8],
        missing: CallError,
    ) -> Result<Vec<u8>, CallError> {
        if self.remote().is_none() {
            return Err(missing);
        }
        check_call_grant(from, action)?;
        // No callee limit is known here: the caller's deadline bounds it.
        let ctx = from.ctx.via(from.package);
        let value = self
            .call_remote(action, RemoteParams::MessagePack(params), ctx, missing)
            .await?;
        rmp_serde::to_vec_named(&value).map_err(|e| {
            CallError::Failed(format!(
                "{action}: cannot encode the result as MessagePack: {e}"
            ))
        })
    }
}

/// `Denied` unless the caller's own grants (bound to its instance) allow `action`.
fn check_call_grant(from: Caller<'_>, action: &str) -> Result<(), CallError> {
    if from.grants.may_call(action) {
        return Ok(());
    }
    Err(CallError::Denied(format!(
        "package `{}` may not call `{action}`: add it to `calls` in [packages.{}.grants]",
        from.package, from.package
    )))
}

impl BrokerHandle {
    fn broker(&self) -> Result<Arc<Broker>, CallError> {
        self.0
            .upgrade()
            .ok_or_else(|| CallError::Overloaded("the host is shutting down".into()))
    }
}

impl Router for BrokerHandle {
    fn call<'a>(
        &'a self,
        from: Caller<'a>,
        action: String,
        params: Vec<u8>,
    ) -> BoxFuture<'a, Result<Vec<u8>, CallError>> {
        Box::pin(async move {
            let broker = self.broker()?;
            let (service, index) = match broker.resolve(&action) {
                Ok(found) => found,
                Err(missing) => {
                    return broker
                        .call_remote_for(from, &action, &params, missing)
                        .await;
                }
            };
            let action_ty = &service.package.ty.actions[index];
            check_call_grant(from, &action)?;
            let args = decode_params(&service, action_ty, &action, Format::MessagePack, &params)
                .inspect_err(|e| service.record(index, Instant::now(), &Err::<(), _>(e.clone())))?;
            // The caller's copy is not needed any more: hold one payload, not two.
            drop(params);
            let value = broker
                .invoke(&service, index, args.params(), from.ctx.via(from.package))
                .await?;
            drop(args);
            let (ty, val) = split_result(&action, action_ty.result.as_ref(), value)?;
            match (ty, val) {
                (_, Some(Output::Bytes(bytes))) => {
                    Ok(codec::encode_bytes(&bytes, Format::MessagePack))
                }
                (Some(ty), Some(out)) => {
                    codec::encode_value(&ty, &out.into_val(), Format::MessagePack).map_err(|e| {
                        CallError::Failed(format!("{action}: cannot encode the result: {e}"))
                    })
                }
                // MessagePack nil: the action returns nothing.
                _ => Ok(vec![0xc0]),
            }
        })
    }

    fn call_import<'a>(
        &'a self,
        from: Caller<'a>,
        target: &'a ImportTarget,
        params: &'a [Val],
    ) -> BoxFuture<'a, Result<Option<Val>, CallError>> {
        Box::pin(async move {
            let broker = self.broker()?;
            let service = broker.service(&target.provider).ok_or_else(|| {
                CallError::NotFound(format!(
                    "no package `{}` (for `{}`)",
                    target.provider, target.label
                ))
            })?;
            let ty = &service.package.ty;
            let linked = ty.actions.get(target.action).is_some_and(|a| {
                a.function == target.function
                    && a.interface.as_deref() == Some(target.interface.as_str())
            });
            let action = match linked {
                true => target.action,
                // The provider was upgraded since the import was linked.
                false => ty
                    .exported_function(&target.interface, &target.function)
                    .ok_or_else(|| {
                        CallError::NotFound(format!(
                            "package `{}` no longer exports `{}`",
                            target.provider, target.label
                        ))
                    })?,
            };
            let out = broker
                .invoke(
                    &service,
                    action,
                    Params::Vals(params),
                    from.ctx.via(from.package),
                )
                .await?;
            Ok(out.map(Output::into_val))
        })
    }

    fn publish<'a>(
        &'a self,
        from: Caller<'a>,
        event: String,
        payload: Vec<u8>,
        broadcast: bool,
    ) -> BoxFuture<'a, Result<(), CallError>> {
        Box::pin(async move {
            let broker = self.broker()?;
            broker
                .emit_event(
                    Origin::Package(from),
                    &event,
                    payload,
                    broadcast,
                    from.ctx,
                    None,
                )
                .await
        })
    }
}

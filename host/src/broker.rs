//! The broker: the front of the broker's wing, the [`Broker`] API the
//! app, the gateway, the transport and the CLI use. It routes every call
//! and every event between packages, and to other nodes, through the rooms
//! under `broker/`:
//!
//! - `registry.rs`: who serves what (services, actions, subscriptions,
//!   load failures) and the queries others ask of it;
//! - `call.rs`: where a call is decided — one grants check, one decode ->
//!   invoke -> encode pipeline for JSON and MessagePack, the checkout;
//! - `protect.rs`: the breaker, retries, fallback and bulkhead, a layer
//!   around any route, local or another node;
//! - `lifecycle.rs`: where instances start, fault, restart (as
//!   [`supervisor`](crate::supervisor) decides), scale and drain;
//! - `events.rs`: where an event is queued and delivered;
//! - `host.rs`: the guest-facing side of `steedos:package/broker`.
//!
//! # Calls
//! A call — from outside ([`Broker::call_json`], [`Broker::call`]), from a
//! package by name (`broker.call`), or through a typed import — resolves its
//! target, checks the caller's grants and the call depth, decodes the
//! parameters by the action's WIT type (so params that do not fit never
//! enter the callee), checks an instance out of the callee's pool and runs
//! the call inline on the caller's task. Whatever happens in the callee, the
//! caller gets a value or a [`CallError`], never a trap. Call cycles never
//! deadlock: a package already serving an outer part of the same call may
//! take another idle instance of itself, but never waits for one.
//!
//! # Grants
//! A package's grants (`calls`, `emits`) travel with each of its instances
//! from the moment it is created ([`Caller::grants`](crate::package::Caller)),
//! so a call from `started`, from an event handler, or from a version not
//! yet installed is checked exactly like any other.
//!
//! # Other nodes
//! A [`RemoteRoute`] set with [`Broker::set_remote`] (the cluster
//! transport) takes the calls no local package serves, and hears of every
//! event emitted here so that other nodes' listeners get it too. Local
//! packages always come first. The broker knows neither HTTP nor NATS: the
//! gateway and the transport are callers of it. This file must not hold
//! routing, protection or lifecycle logic itself: it delegates to its rooms.

mod cache;
mod call;
mod emit_budget;
mod events;
mod host;
mod http;
mod lifecycle;
mod protect;
mod registry;

pub use events::{EVENT_COST, EVENT_PAYLOAD_MAX, EVENT_QUEUE_BYTES, EventStats};
pub use host::BrokerHandle;
pub use http::HTTP_HANDLER;
pub use registry::{ActionEntry, InternalService, LoadFailure, Service};

pub use crate::health::ServiceReport;

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use wasmtime::component::Val;

use crate::codec::Format;
use crate::context::{CallContext, CallError};
use crate::manifest::CallerProtection;
use crate::metrics::Metrics;
use crate::package::{BoxFuture, Output, Params, Router};
use call::{Encoded, Reply};
use events::Origin;
use registry::CallerKind;

/// Extra time past a call's deadline before the broker stops waiting for an
/// instance that does not come back from the host (a guest blocked in a
/// host call). The epoch deadline normally fires first.
const DEADLINE_GRACE: Duration = Duration::from_millis(250);

/// Settings of a broker that do not belong to one package.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    /// Calls nested deeper than this fail with `overloaded`.
    pub max_call_depth: u32,
    /// How calls from outside (HTTP, [`Broker::call_json`]) to actions on
    /// other nodes are protected (`[gateway]` `circuit`, `retry`, `actions`).
    pub outside: CallerProtection,
}

impl Default for BrokerSettings {
    fn default() -> Self {
        BrokerSettings {
            max_call_depth: 16,
            outside: CallerProtection::default(),
        }
    }
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
    /// Whether another node has the service `name` (its full name, as
    /// `dependencies` write it).
    fn has_service(&self, _name: &str) -> bool {
        false
    }
    /// This node's id in the cluster.
    fn node_id(&self) -> Option<Arc<str>> {
        None
    }
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
    /// The breakers of calls from outside to actions on other nodes.
    outside: protect::RemoteProtection,
    /// Read on every call, written on a deploy: swapped whole, so that a
    /// call reads it without a lock (two cores taking a read lock a
    /// million times a second pass its cache line back and forth).
    services: ArcSwap<HashMap<Arc<str>, Arc<Service>>>,
    failures: Mutex<Vec<LoadFailure>>,
    handle: Arc<BrokerHandle>,
    closing: AtomicBool,
    /// Outside calls and event deliveries under way; shutdown waits for them.
    in_flight: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    remote: RwLock<Option<Arc<dyn RemoteRoute>>>,
    /// `$node`, once the transport sets it.
    internal: RwLock<Option<Arc<dyn InternalService>>>,
    /// Spans and their export, once the app sets them (off: never set).
    telemetry: std::sync::OnceLock<Arc<crate::telemetry::Telemetry>>,
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

impl Broker {
    /// An empty broker.
    pub fn new(settings: BrokerSettings) -> Arc<Broker> {
        Arc::new_cyclic(|weak| Broker {
            outside: protect::RemoteProtection::outside(&settings.outside),
            settings,
            services: ArcSwap::default(),
            failures: Mutex::new(Vec::new()),
            handle: Arc::new(BrokerHandle(weak.clone(), std::sync::OnceLock::new())),
            closing: AtomicBool::new(false),
            in_flight: Arc::new(AtomicUsize::new(0)),
            metrics: Arc::new(Metrics::new()),
            remote: RwLock::new(None),
            internal: RwLock::new(None),
            telemetry: std::sync::OnceLock::new(),
        })
    }

    /// Records the spans of calls and events through `telemetry`; once (a
    /// second set is ignored).
    pub fn set_telemetry(&self, telemetry: Arc<crate::telemetry::Telemetry>) {
        let _ = self.telemetry.set(telemetry);
    }

    /// Turns on the telemetry `settings` and the `OTEL_*` variables ask
    /// for, and the `$tracing.spans` batches when those are asked for too.
    pub fn start_telemetry(
        self: &Arc<Self>,
        settings: &crate::manifest::TelemetrySettings,
        app: &str,
    ) -> Result<(), crate::telemetry::ConfigError> {
        if let Some(t) = crate::telemetry::Telemetry::from_settings(settings, app)? {
            self.set_telemetry(t.clone());
            let weak = Arc::downgrade(self);
            let publish = move |event: &str, payload, ctx| {
                let broker = weak.upgrade();
                broker
                    .map(|b| b.publish(event, payload, false, ctx))
                    .is_some()
            };
            t.emit_moleculer_spans(publish.clone());
            let weak = Arc::downgrade(self);
            t.export_metrics(
                Arc::new(move || {
                    let b = weak.upgrade()?;
                    Some(b.metrics.snapshot(&b.reports(), b.kv()))
                }),
                publish,
            );
        }
        Ok(())
    }

    /// The app's telemetry, when on.
    pub fn telemetry(&self) -> Option<&Arc<crate::telemetry::Telemetry>> {
        self.telemetry.get()
    }

    /// Routes calls that no local package serves, and events, to other
    /// nodes through `remote`; `None` ends that.
    pub fn set_remote(&self, remote: Option<Arc<dyn RemoteRoute>>) {
        *self.remote.write().unwrap_or_else(|p| p.into_inner()) = remote;
    }

    /// Gives packages with `grants.kv`, and the action cache, the app's
    /// buckets; once (a second set is ignored).
    pub fn set_kv(&self, stores: Arc<crate::kv::Stores>) {
        let _ = self.handle.1.set(stores);
    }

    /// The app's buckets, once set.
    pub fn kv(&self) -> Option<&crate::kv::Stores> {
        self.handle.1.get().map(|stores| &**stores)
    }

    fn remote(&self) -> Option<Arc<dyn RemoteRoute>> {
        self.remote
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The metrics of every call this broker routes.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The router that packages' host functions use.
    pub fn router(&self) -> Arc<dyn Router> {
        self.handle.clone()
    }

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
            Ok(found) => {
                found.0.check_visibility(found.1, CallerKind::Outside)?;
                self.call_json_on(found, action, params, ctx).await
            }
            Err(missing) => {
                if let Some(answer) = self.call_internal(action, params) {
                    return answer;
                }
                let guard = self.remote_guard(&self.outside, action);
                let params = RemoteParams::Json(params);
                // Boxed: the transport's futures stay off the local path.
                let reply =
                    Box::pin(self.call_remote_protected(guard, action, params, ctx, missing));
                reply.await.map(Reply::into_json)
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
        let found = match self.resolve(action) {
            Ok(found) => found,
            Err(missing) => return self.call_internal(action, params).unwrap_or(Err(missing)),
        };
        found.0.check_visibility(found.1, CallerKind::Node)?;
        self.call_json_on(found, action, params, ctx).await
    }

    async fn call_json_on(
        &self,
        found: (Arc<Service>, usize),
        action: &str,
        params: &[u8],
        ctx: CallContext,
    ) -> Result<serde_json::Value, CallError> {
        let call = Encoded {
            action,
            format: Format::Json,
            params: Cow::Borrowed(params),
            ctx,
            fallback: true,
        };
        self.call_encoded(found, call).await.map(Reply::into_json)
    }

    /// Calls `action` with component values; returns its raw result value.
    pub async fn call(
        &self,
        action: &str,
        params: &[Val],
        ctx: CallContext,
    ) -> Result<Option<Val>, CallError> {
        let (service, index) = self.resolve(action)?;
        service.check_visibility(index, CallerKind::Outside)?;
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
}

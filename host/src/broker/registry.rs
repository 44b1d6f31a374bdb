//! The registry: who serves what on this host. Each loaded package is a
//! [`Service`] (its package, pool, restart budget, state, protections and
//! event queue); packages that did not load are [`LoadFailure`]s. This
//! module resolves an action name to a service and an action index, lists
//! subscribers of an event, says who may call an action (its
//! `visibility`), which services are available (`dependencies`) and which
//! internal service (`$node`) answers `$` names, and answers the queries
//! the gateway, OpenAPI, `$node` and the transport ask
//! ([`Broker::find_action`], [`Broker::actions`]) so that they need not
//! reach into packages. A versioned package is found by its name and by
//! its cluster name (`v2.greeter.hello`).
//!
//! It must not run calls, start instances or deliver events: it only
//! knows who is there (see `call.rs`, `lifecycle.rs`, `events.rs`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use wasmtime::component::types::Type;

use super::events::EventQueue;
use super::protect::{ActionProtection, RemoteProtection};
use super::{Broker, EventStats, ServiceReport};
use crate::context::{CallError, host_record};
use crate::manifest::Visibility;
use crate::metrics::{ActionMetrics, Metrics};
use crate::package::{ActionType, Package};
use crate::pool::InstancePool;
use crate::supervisor::{PackageState, RestartBudget};
use crate::telemetry::spans::ActionNames;

/// A running package: its instances, its restart budget, its state.
pub struct Service {
    /// The package.
    pub package: Package,
    pub(super) pool: InstancePool,
    pub(super) budget: Mutex<RestartBudget>,
    pub(super) status: Mutex<Status>,
    /// Recording handles, one per action, by action index (then the HTTP
    /// handler's, when it serves HTTP).
    pub(super) metrics: Vec<ActionMetrics>,
    /// Breaker, retry, fallback and bulkhead settings, by action index.
    pub(super) policies: Vec<ActionProtection>,
    /// The protections of this package's calls to actions on other nodes.
    pub(super) remote: RemoteProtection,
    /// The events waiting for this package, bounded.
    pub(super) events: EventQueue,
    /// Who may call each action (`visibility`), by action index.
    pub(super) visibility: Vec<Visibility>,
    /// What a call's span says of each action, by action index.
    pub(super) span_names: Vec<ActionNames>,
}

/// What the lifecycle knows about a service beyond its pool.
pub(super) struct Status {
    pub(super) state: PackageState,
    pub(super) last_error: Option<String>,
    pub(super) restart_latency: Vec<Duration>,
    /// When a start failure was last logged, and how many since went unlogged.
    pub(super) start_failures_logged: Option<(Instant, u64)>,
}

impl Service {
    pub(super) fn new(package: Package, metrics: &Metrics) -> Self {
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
            // A package serving HTTP: its handler's, after its actions'.
            .chain(
                package
                    .ty
                    .serves_http()
                    .then(|| metrics.action(&package.name, super::HTTP_HANDLER)),
            )
            .collect();
        let policies = package
            .ty
            .actions
            .iter()
            .map(|a| ActionProtection::new(&package.spec, &package.name, &a.name))
            .collect();
        let remote = RemoteProtection::new(&package.spec, &package.ty.actions);
        let events = EventQueue::new(package.spec.max_instances, package.spec.emit_rate);
        let visibility = package
            .ty
            .actions
            .iter()
            .map(|a| {
                package
                    .spec
                    .action(&a.name)
                    .map_or_else(Default::default, |p| p.visibility)
            })
            .collect();
        let span_names = package
            .ty
            .actions
            .iter()
            .map(|a| ActionNames::new(&package.name, &a.name))
            .collect();
        Service {
            visibility,
            span_names,
            package,
            pool,
            budget,
            status,
            metrics,
            policies,
            remote,
            events,
        }
    }

    pub(super) fn record<T>(
        &self,
        action: usize,
        started: Instant,
        outcome: &Result<T, CallError>,
    ) {
        if let Some(m) = self.metrics.get(action) {
            m.record(started.elapsed(), outcome);
        }
    }

    /// The package's name.
    pub fn name(&self) -> &str {
        &self.package.name
    }

    /// The event patterns it listens to (none unless it handles events).
    pub fn subscriptions(&self) -> &[String] {
        match self.package.ty.handles_events() {
            true => &self.package.spec.events,
            false => &[],
        }
    }

    /// `<package>.<action>` of the action at `index`, for messages.
    pub(super) fn label(&self, index: usize) -> String {
        format!("{}.{}", self.name(), self.package.ty.actions[index].name)
    }

    pub(super) fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn set_state(&self, state: PackageState) {
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
            (s.state.clone(), s.last_error.clone())
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
                .chain(self.remote.circuits())
                .filter(|(_, state)| *state != "closed")
                .collect(),
            events: self.events.stats(),
            log_lines_dropped: self.package.log_lines_dropped(),
            missing_dependencies: Vec::new(),
        }
    }

    /// What this package's event queue holds and has dropped.
    pub fn event_stats(&self) -> EventStats {
        self.events.stats()
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

/// One action this host serves, as the gateway, OpenAPI and the transport
/// see it: its package, its name and its WIT signature.
#[derive(Clone)]
pub struct ActionEntry {
    service: Arc<Service>,
    index: usize,
}

impl ActionEntry {
    /// The package serving it.
    pub fn package(&self) -> &str {
        self.service.name()
    }

    /// The action's name within its package.
    pub fn name(&self) -> &str {
        &self.ty().name
    }

    /// `<package>.<action>`.
    pub fn full_name(&self) -> String {
        self.service.label(self.index)
    }

    /// Its analysed WIT type: parameters, result, bytes shape.
    pub fn ty(&self) -> &ActionType {
        &self.service.package.ty.actions[self.index]
    }

    /// Its parameters, by name, with their WIT types.
    pub fn params(&self) -> &[(String, Type)] {
        &self.ty().params
    }

    /// The service serving it (its state, its reports).
    pub fn service(&self) -> &Arc<Service> {
        &self.service
    }

    /// Who may call it (`visibility`).
    pub fn visibility(&self) -> Visibility {
        self.service
            .visibility
            .get(self.index)
            .copied()
            .unwrap_or_default()
    }

    /// Its Moleculer properties (`rest`, `trigger`, ...), as written in the manifest.
    pub fn properties(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.service
            .package
            .spec
            .action(&self.ty().name)
            .map(|a| &a.properties)
    }
}

/// Who is calling, for the visibility check.
#[derive(Clone, Copy, Debug)]
pub(super) enum CallerKind<'a> {
    /// The gateway, the CLI, the host's API: the way an API gateway calls.
    Outside,
    /// Another node of the cluster.
    Node,
    /// A package of this host.
    Package(&'a str),
}

impl Service {
    /// `NotFound` when `caller` may not see action `index` (its
    /// `visibility`): as Moleculer does, such an action is not there for it.
    pub(super) fn check_visibility(
        &self,
        index: usize,
        caller: CallerKind<'_>,
    ) -> Result<(), CallError> {
        let visibility = self.visibility.get(index).copied().unwrap_or_default();
        let allowed = match (visibility, caller) {
            (Visibility::Published, _) => true,
            (Visibility::Public, caller) => !matches!(caller, CallerKind::Outside),
            (Visibility::Protected, caller) => matches!(caller, CallerKind::Package(_)),
            (Visibility::Private, CallerKind::Package(from)) => from == self.name(),
            (Visibility::Private, _) => false,
        };
        if allowed {
            return Ok(());
        }
        let who = match caller {
            CallerKind::Outside => "the gateway or the host's API".to_owned(),
            CallerKind::Node => "another node".to_owned(),
            CallerKind::Package(p) => format!("package `{p}`"),
        };
        Err(CallError::NotFound(format!(
            "`{}` is {} and cannot be called by {who}",
            self.label(index),
            visibility.name()
        )))
    }
}

impl Broker {
    /// The service of `package`.
    pub fn service(&self, package: &str) -> Option<Arc<Service>> {
        self.services.load().get(package).cloned()
    }

    /// Every service, by name.
    pub fn services(&self) -> Vec<Arc<Service>> {
        let mut all: Vec<_> = self.services.load().values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// The action `<package>.<action>` when a package of this host serves it.
    pub fn find_action(&self, action: &str) -> Option<ActionEntry> {
        let (package, name) = action.split_once('.')?;
        let (service, name) = match self.service(package) {
            Some(service) => (service, name),
            None => self.versioned(action)?,
        };
        let (index, _) = service.package.ty.action(name)?;
        Some(ActionEntry { service, index })
    }

    /// Every action this host serves, by package then by action order.
    pub fn actions(&self) -> Vec<ActionEntry> {
        self.services()
            .into_iter()
            .flat_map(|service| {
                (0..service.package.ty.actions.len()).map(move |index| ActionEntry {
                    service: service.clone(),
                    index,
                })
            })
            .collect()
    }

    /// Whether the service `name` is available: a package of this host
    /// serving (by its name or its versioned name), `$node` once this host
    /// is a node, or a service another node announced.
    pub fn service_available(&self, name: &str) -> bool {
        let local = self.services().into_iter().any(|s| {
            let spec = &s.package.spec;
            (spec.name == name || spec.service_name() == name) && s.state() == PackageState::Serving
        });
        local
            || (name == "$node" && self.internal.read().is_ok_and(|i| i.is_some()))
            || self.remote().is_some_and(|r| r.has_service(name))
    }

    /// The services among `spec`'s `dependencies` that are not available now.
    pub fn missing_dependencies(&self, spec: &crate::manifest::PackageSpec) -> Vec<String> {
        spec.dependencies
            .iter()
            .filter(|d| !self.service_available(d))
            .cloned()
            .collect()
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
        let mut reports: Vec<ServiceReport> = self
            .services()
            .iter()
            .map(|s| ServiceReport {
                missing_dependencies: self.missing_dependencies(&s.package.spec),
                ..s.report()
            })
            .collect();
        for f in self.failures() {
            reports.push(ServiceReport {
                name: f.name,
                state: PackageState::Failed,
                live: 0,
                instances: 0,
                queued: 0,
                restarts: 0,
                last_error: Some(f.error),
                circuits: Vec::new(),
                events: EventStats::default(),
                log_lines_dropped: 0,
                missing_dependencies: Vec::new(),
            });
        }
        reports.sort_by(|a, b| a.name.cmp(&b.name));
        reports
    }

    /// Routes calls for the service's package to `service` from now on;
    /// returns the version it replaces, still running.
    pub fn install(&self, service: Arc<Service>) -> Option<Arc<Service>> {
        let name = service.package.name.clone();
        if let Ok(mut f) = self.failures.lock() {
            f.retain(|f| *f.name != *name);
        }
        let mut replaced = None;
        self.services.rcu(|map| {
            let mut map = HashMap::clone(map);
            replaced = map.insert(name.clone(), service.clone());
            map
        });
        replaced
    }

    /// Stops routing calls to `package`; returns its service, still running.
    pub fn uninstall(&self, package: &str) -> Option<Arc<Service>> {
        let mut removed = None;
        self.services.rcu(|map| {
            let mut map = HashMap::clone(map);
            removed = map.remove(package);
            map
        });
        removed
    }

    /// The parameter rules another node announced for `action` (see
    /// [`RemoteRoute::params`](super::RemoteRoute::params)) when a call to
    /// it goes to another node; `None` when a package of this host serves
    /// it or no node does.
    pub fn remote_params(&self, action: &str) -> Option<Vec<(String, serde_json::Value)>> {
        if self.resolve(action).is_ok() {
            return None;
        }
        self.remote()?.params(action)
    }

    /// The service and action index serving `action`, or why none does.
    pub(super) fn resolve(&self, action: &str) -> Result<(Arc<Service>, usize), CallError> {
        let Some((package, name)) = action.split_once('.') else {
            return Err(CallError::NotFound(format!(
                "`{action}` is not an action name; actions are called `<package>.<action>`"
            )));
        };
        let found = match self.service(package) {
            Some(service) => Some((service, name)),
            None => self.versioned(action),
        };
        let (service, name) = found.ok_or_else(|| {
            let failed = self.failures().into_iter().find(|f| f.name == package);
            CallError::NotFound(match failed {
                Some(f) => format!(
                    "package `{package}` failed to load{}",
                    host_record(&f.error)
                ),
                None => format!("no package `{package}` (for action `{action}`)"),
            })
        })?;
        let Some((index, _)) = service.package.ty.action(name) else {
            return Err(CallError::NotFound(format!(
                "package `{package}` has no action `{name}` (it has: {})",
                service.package.ty.action_names()
            )));
        };
        Ok((service, index))
    }

    /// The service and action name of `v2.greeter.hello` (a versioned
    /// service's action as the cluster names it): the version is one
    /// segment, and must be the package's.
    fn versioned<'a>(&self, action: &'a str) -> Option<(Arc<Service>, &'a str)> {
        let (prefix, rest) = action.split_once('.')?;
        let (package, name) = rest.split_once('.')?;
        let service = self.service(package)?;
        let version = service.package.spec.version.as_ref()?;
        (version.prefix() == prefix).then_some((service, name))
    }

    /// The services subscribed to `event` (among `groups`, when given), by name.
    pub(super) fn subscribers(&self, event: &str, groups: Option<&[String]>) -> Vec<Arc<Service>> {
        let mut subscribers: Vec<Arc<Service>> = self
            .services
            .load()
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
}

/// A service the host serves itself, without an instance (Moleculer's
/// `$node`): each answer is made at once from what the host knows.
pub trait InternalService: Send + Sync + 'static {
    /// Answers `action` (`$node.health`) with its JSON `params`; `None`
    /// when it has no such action.
    fn call(&self, action: &str, params: &[u8]) -> Option<Result<serde_json::Value, CallError>>;
}

impl Broker {
    /// Serves the `$`-named internal actions through `service` from now on
    /// (`None` ends that).
    pub fn set_internal(&self, service: Option<Arc<dyn InternalService>>) {
        *self.internal.write().unwrap_or_else(|p| p.into_inner()) = service;
    }

    /// The answer of an internal action (`$node.*`), when one serves `action`.
    pub(super) fn call_internal(
        &self,
        action: &str,
        params: &[u8],
    ) -> Option<Result<serde_json::Value, CallError>> {
        if !action.starts_with('$') {
            return None;
        }
        let service = self
            .internal
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()?;
        service.call(action, params)
    }
}

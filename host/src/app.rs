//! An app: a `steedos.toml` and its packages, loaded into one broker.
//!
//! [`App::load`] takes a manifest through every step to serving: build the
//! packages that are out of date, compile (or load from the cache) each
//! component, read its types, link its typed imports to the packages that
//! export them ([`App::prepare`]), and start its instances, each package
//! once its `dependencies` are available ([`App::start`]; a host joins its
//! cluster between the two, so `started` finds the other nodes). A package
//! that fails at any step is reported and left out; the rest of the app
//! serves.
//!
//! While it serves, [`App::deploy`] adds a package or upgrades one without
//! downtime, and [`App::remove`] takes one out; the gateway's `/admin` API
//! and `steedos-wasm run --watch` drive them.
//!
//! It implements the operator port ([`crate::admin::Operator`]) and knows
//! neither HTTP nor NATS: it must not import the gateway or the transport.
//! A deploy's settings are checked by the manifest
//! ([`Manifest::deployed_package`]), never here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::{Component, Linker};

use crate::admin::{BoxFuture, Operator, OperatorError};
use crate::broker::{Broker, BrokerSettings};
use crate::builder::{self, BuildOutcome};
use crate::engine::{
    CompileCache, Compiled, DEFAULT_MAX_INSTANCES, EngineLimits, EpochClock, new_engine,
};
use crate::manifest::{Manifest, PackageSpec};
use crate::package::{self, Cutoff, Package, PackageError, PackageType};

mod link;

use link::{Provider, check_dependents, link};

/// How to load an app.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Run build commands of packages that are out of date.
    pub build: bool,
    /// Use the compiled-code cache.
    pub cache: bool,
    /// Instances the host holds at once over all packages; `None` takes
    /// `[app] max_instances`, else [`DEFAULT_MAX_INSTANCES`].
    pub max_instances: Option<u32>,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            build: true,
            cache: true,
            max_instances: None,
        }
    }
}

/// Why an app could not be loaded at all.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// The engine could not be created.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// The host's own imports could not be defined.
    #[error(transparent)]
    Package(#[from] PackageError),
    /// The packages ask for more instances than the host holds.
    #[error(
        "the app asks for up to {wanted} instances ({detail}) but this host holds {capacity}: \
         lower `instances` of some packages, or raise the host's capacity (`max_instances` in \
         [app], `--max-instances`, or STEEDOS_MAX_INSTANCES)"
    )]
    Capacity {
        /// The sum of the packages' instance ceilings.
        wanted: u64,
        /// The largest asks, `package: n`.
        detail: String,
        /// The engine's pool size.
        capacity: u32,
    },
    /// `[telemetry]` or an `OTEL_*` variable cannot be used.
    #[error("telemetry: {0}")]
    Telemetry(#[from] crate::telemetry::ConfigError),
}

/// What happened to one package during load.
#[derive(Clone, Debug)]
pub struct LoadedPackage {
    /// The package.
    pub name: String,
    /// Whether its code came from the cache.
    pub compiled: Option<Compiled>,
    /// Whether it was built now.
    pub built: bool,
}

/// A loaded, serving app.
pub struct App {
    /// The manifest it was loaded from.
    pub manifest: Manifest,
    /// Its broker: call it, or hand it to a gateway.
    pub broker: Arc<Broker>,
    /// The engine its packages run on.
    pub engine: Engine,
    /// Its metrics, for `/metrics`.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// What happened to each package during load.
    pub loaded: Vec<LoadedPackage>,
    /// How long loading took.
    pub load_time: Duration,
    /// Instances the engine holds at once over all packages.
    pub capacity: u32,
    cache: CompileCache,
    base: Linker<package::HostState>,
    /// When the app's guest code stops for good (set at shutdown).
    cutoff: Arc<Cutoff>,
    deploying: tokio::sync::Mutex<()>,
    /// Packages whose typed imports found no provider (or more than one):
    /// linked again after every deploy and remove, and started once they link.
    unlinked: std::sync::Mutex<Vec<Compiled1>>,
    /// Packages linked by [`App::prepare`], waiting for [`App::start`].
    pending: std::sync::Mutex<Vec<Package>>,
    _clock: EpochClock,
}

/// A package compiled and analyzed, not yet linked.
struct Compiled1 {
    spec: PackageSpec,
    component: Component,
    ty: PackageType,
}

/// How often the key-value buckets' sizes are measured for `/metrics`.
const KV_SIZES_EVERY: Duration = Duration::from_secs(5);

impl App {
    /// Loads every package of `manifest` and starts it.
    pub async fn load(manifest: Manifest, options: &LoadOptions) -> Result<App, AppError> {
        let began = Instant::now();
        let mut app = App::prepare(manifest, options).await?;
        app.start().await;
        app.load_time = began.elapsed();
        Ok(app)
    }

    /// Starts the packages [`App::prepare`] left ready, at once, each once
    /// its `dependencies` are available (see [`Broker::start_when_ready`]);
    /// returns when each has started or failed. Join the cluster first, so
    /// that `started` finds the services of other nodes.
    pub async fn start(&self) {
        let packages = std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()));
        let starts: Vec<_> = packages
            .into_iter()
            .map(|p| {
                let broker = self.broker.clone();
                tokio::spawn(async move { broker.start_when_ready(p).await })
            })
            .collect();
        for s in starts {
            let _ = s.await;
        }
        self.broker.start_reaper();
        tracing::info!(app = %self.manifest.app.name, "app started");
    }

    /// Compiles and links every package of `manifest` without starting any:
    /// the first half of [`App::load`], for a host that joins its cluster
    /// before `started` runs ([`App::start`] is the second half).
    pub async fn prepare(manifest: Manifest, options: &LoadOptions) -> Result<App, AppError> {
        let started = Instant::now();
        let capacity = options
            .max_instances
            .or(manifest.app.max_instances)
            .unwrap_or(DEFAULT_MAX_INSTANCES)
            .max(1);
        check_capacity(manifest.packages.iter(), capacity)?;
        let engine = new_engine(&EngineLimits {
            total_instances: capacity,
            ..EngineLimits::default()
        })?;
        let clock = EpochClock::start(&engine);
        let broker = Broker::new(BrokerSettings {
            max_call_depth: manifest.app.max_call_depth,
            outside: manifest.gateway.protection.clone(),
        });
        let stores = Arc::new(crate::kv::Stores::new(&manifest));
        stores.open_all().await;
        crate::kv::Stores::watch_sizes(&stores, KV_SIZES_EVERY);
        broker.set_kv(stores);
        broker.start_telemetry(&manifest.telemetry, &manifest.app.name)?;
        for rejected in &manifest.rejected {
            broker.record_failure(
                rejected.package().unwrap_or("steedos.toml"),
                rejected.to_string(),
            );
        }
        let cache = match options.cache {
            true => CompileCache::new(&manifest.app.cache_dir),
            false => CompileCache::disabled(),
        }
        .max_component_size(manifest.app.max_component_size);
        let mut loaded = Vec::new();
        let mut ready = Vec::new();
        for spec in &manifest.packages {
            if let Some((how, compiled)) =
                compile_at_load(spec, options, &engine, &cache, &broker).await
            {
                loaded.push(how);
                ready.push(compiled);
            }
        }
        let base = package::base_linker(&engine)?;
        let cutoff = Arc::new(Cutoff::default());
        let (packages, unlinked) = link_at_load(ready, &base, &cutoff, &broker);
        package::check_http_routes(&manifest.gateway.http, &packages)?;
        let load_time = started.elapsed();
        tracing::info!(app = %manifest.app.name, seconds = load_time.as_secs_f64(), "app loaded");
        let metrics = broker.metrics();
        Ok(App {
            manifest,
            broker,
            engine,
            metrics,
            loaded,
            load_time,
            capacity,
            cache,
            base,
            cutoff,
            deploying: tokio::sync::Mutex::new(()),
            unlinked: std::sync::Mutex::new(unlinked),
            pending: std::sync::Mutex::new(packages),
            _clock: clock,
        })
    }

    /// Stops taking calls, lets in-flight ones finish, calls `stopped`.
    pub async fn shutdown(&self) {
        self.broker
            .shutdown(self.manifest.app.shutdown_timeout)
            .await;
    }

    /// Deploys the component `bytes` as package `name`, or upgrades `name`
    /// to it: the new version's instances start and take new calls, calls in
    /// flight on the old version finish, then the old instances get
    /// `stopped`. A version that fails to load or to start leaves the old one
    /// serving, and the error says why. `settings` override the package's
    /// `instances`, `memory`, `emit_rate`, `timeout`, `events`, `calls`,
    /// `emits`, `dependencies` and `dependency_timeout` (waited for first), and
    /// are checked as the same settings in `steedos.toml` would be.
    pub async fn deploy(
        &self,
        name: &str,
        bytes: &[u8],
        settings: &[(String, String)],
    ) -> Result<String, OperatorError> {
        // Dependencies are awaited before taking the one-deploy-at-a-time
        // lock, so a provider deployed meanwhile is what ends the wait.
        let planned = self.deployed_spec(name, bytes.len(), settings)?;
        self.broker
            .wait_for_dependencies(&planned)
            .await
            .map_err(OperatorError::Start)?;
        let _one_at_a_time = self.deploying.lock().await;
        let old = self.broker.service(name);
        let mut spec = self.deployed_spec(name, bytes.len(), settings)?;
        // The old version keeps its instances until the new one serves.
        let services = self.broker.services();
        let specs = services
            .iter()
            .map(|s| &s.package.spec)
            .chain(std::iter::once(&spec));
        check_capacity(specs, self.capacity).map_err(|e| OperatorError::Invalid(e.to_string()))?;
        spec.component = self.store_component(name, bytes).map_err(|e| {
            OperatorError::Invalid(format!("package `{name}`: cannot store the component: {e}"))
        })?;
        let (component, ty) = self.compile(&spec, bytes).await?;
        let package = self.link_deployed(&spec, &ty, &component, old.as_deref())?;
        let fresh = self.broker.prepare(package).await;
        let live = fresh.report().live;
        if live == 0 {
            let why = fresh
                .report()
                .last_error
                .unwrap_or_else(|| "no instance started".into());
            self.broker
                .retire_service(fresh, Duration::from_secs(1))
                .await;
            let keeps = match old {
                Some(_) => "; the old version keeps serving",
                None => "",
            };
            return Err(OperatorError::Start(format!(
                "package `{name}` did not start: {why}{keeps}"
            )));
        }
        let done = self.swap_in(name, fresh, live);
        Ok(done + &self.link_waiting().await)
    }

    /// The spec `settings` give package `name` over the version serving (or
    /// the package of the file), checked as the file's own settings are.
    fn deployed_spec(
        &self,
        name: &str,
        size: usize,
        settings: &[(String, String)],
    ) -> Result<PackageSpec, OperatorError> {
        let old = self.broker.service(name);
        let base = match &old {
            Some(old) => Some(&old.package.spec),
            None => self.manifest.packages.iter().find(|p| p.name == name),
        };
        self.manifest
            .deployed_package(name, base, size as u64, settings)
            .map_err(|e| OperatorError::Invalid(e.to_string()))
    }

    /// Compiles (or finds in the cache) and analyzes a deployed component.
    async fn compile(
        &self,
        spec: &PackageSpec,
        bytes: &[u8],
    ) -> Result<(Component, PackageType), OperatorError> {
        let name = spec.name.as_str();
        let label = spec.component.clone();
        let (engine, cache, owned) = (self.engine.clone(), self.cache.clone(), bytes.to_vec());
        let component =
            tokio::task::spawn_blocking(move || cache.load_bytes(&engine, &label, &owned))
                .await
                .map_err(|e| {
                    OperatorError::Invalid(format!("package `{name}`: compile task failed: {e}"))
                })?
                .map_err(|e| OperatorError::Invalid(format!("package `{name}`: {e}")))?
                .0;
        let ty = PackageType::analyze(&self.engine, &component, name)
            .map_err(|e| OperatorError::Invalid(e.to_string()))?;
        Ok((component, ty))
    }

    /// Links a deployed package to the other packages serving; an upgrade
    /// is refused if a package importing from the old version would break.
    fn link_deployed(
        &self,
        spec: &PackageSpec,
        ty: &PackageType,
        component: &Component,
        old: Option<&crate::broker::Service>,
    ) -> Result<Package, OperatorError> {
        let name = spec.name.as_str();
        let others: Vec<Arc<crate::broker::Service>> = self
            .broker
            .services()
            .into_iter()
            .filter(|s| &*s.package.name != name)
            .collect();
        let providers: Vec<Provider<'_>> = others
            .iter()
            .map(|s| Provider {
                spec: &s.package.spec,
                ty: &s.package.ty,
            })
            .collect();
        if let Some(old) = old {
            check_dependents(name, &old.package.ty, ty, &providers)
                .map_err(OperatorError::Invalid)?;
        }
        let http = self.metrics.http();
        link(
            spec,
            ty,
            component,
            &providers,
            &self.base,
            &self.cutoff,
            http,
        )
        .map_err(|e| OperatorError::Invalid(e.to_string()))
    }

    /// Installs a started version; the one it replaces, if any, retires in
    /// the background once its calls in flight finish.
    fn swap_in(&self, name: &str, fresh: Arc<crate::broker::Service>, live: usize) -> String {
        let replaced = self.broker.install(fresh);
        self.broker.clear_failure(name);
        self.lock_unlinked().retain(|c| c.spec.name != name);
        match replaced {
            Some(old) => {
                let broker = self.broker.clone();
                let grace = self.manifest.app.shutdown_timeout;
                tokio::spawn(async move { broker.retire_service(old, grace).await });
                tracing::info!(package = name, instances = live, "upgraded");
                format!("upgraded `{name}`: {live} instance(s) of the new version serve")
            }
            None => {
                tracing::info!(package = name, instances = live, "deployed");
                format!("deployed `{name}`: {live} instance(s) serve")
            }
        }
    }

    fn lock_unlinked(&self) -> std::sync::MutexGuard<'_, Vec<Compiled1>> {
        self.unlinked.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Links and starts the packages that waited for a provider of their
    /// typed imports, where the packages now serving provide it; says which.
    async fn link_waiting(&self) -> String {
        let waiting = std::mem::take(&mut *self.lock_unlinked());
        if waiting.is_empty() {
            return String::new();
        }
        let services = self.broker.services();
        let mut started = Vec::new();
        let mut still = Vec::new();
        for c in waiting {
            let providers: Vec<Provider<'_>> = services
                .iter()
                .filter(|s| *s.package.name != *c.spec.name)
                .map(|s| Provider {
                    spec: &s.package.spec,
                    ty: &s.package.ty,
                })
                .collect();
            let linked = link(
                &c.spec,
                &c.ty,
                &c.component,
                &providers,
                &self.base,
                &self.cutoff,
                self.metrics.http(),
            );
            drop(providers);
            match linked {
                Ok(package) => {
                    self.broker.clear_failure(&c.spec.name);
                    tracing::info!(package = %c.spec.name, "its imports have a provider now; starting");
                    self.broker.start(package).await;
                    started.push(format!("`{}`", c.spec.name));
                }
                Err(e) => {
                    tracing::debug!(package = %c.spec.name, error = %e, "still waiting for a provider");
                    still.push(c);
                }
            }
        }
        self.lock_unlinked().extend(still);
        match started.is_empty() {
            true => String::new(),
            false => format!(
                "; {} linked to it and started (it waited for a provider)",
                started.join(", ")
            ),
        }
    }

    /// Removes package `name`: it takes no new calls, calls in flight
    /// finish, its instances get `stopped`.
    pub async fn remove(&self, name: &str) -> Result<String, OperatorError> {
        let _one_at_a_time = self.deploying.lock().await;
        let Some(old) = self.broker.uninstall(name) else {
            return Err(OperatorError::NotFound(format!("no package `{name}`")));
        };
        self.broker
            .retire_service(old, self.manifest.app.shutdown_timeout)
            .await;
        // One of two providers of an interface gone can settle an importer.
        Ok(format!("removed `{name}`") + &self.link_waiting().await)
    }

    /// Keeps a deployed component beside the app, named by its content.
    fn store_component(&self, name: &str, bytes: &[u8]) -> std::io::Result<PathBuf> {
        let dir = self.manifest.dir.join(".steedos").join("deployed");
        std::fs::create_dir_all(&dir)?;
        let hash = blake3::hash(bytes).to_hex();
        let path = dir.join(format!("{name}-{}.wasm", &hash[..16]));
        if !path.exists() {
            std::fs::write(&path, bytes)?;
        }
        Ok(path)
    }
}

impl Drop for App {
    fn drop(&mut self) {
        // Guest code still running in tasks the runtime has yet to cancel
        // stops at the next epoch tick.
        self.cutoff.set(Instant::now());
    }
}

impl Operator for App {
    fn deploy(
        &self,
        name: String,
        component: bytes::Bytes,
        settings: Vec<(String, String)>,
    ) -> BoxFuture<'_, Result<String, OperatorError>> {
        Box::pin(async move { App::deploy(self, &name, &component, &settings).await })
    }

    fn remove(&self, name: String) -> BoxFuture<'_, Result<String, OperatorError>> {
        Box::pin(async move { App::remove(self, &name).await })
    }
}

/// Builds (when out of date and asked to), compiles and analyzes one
/// package at load; a failure is recorded against the package, which is
/// left out.
async fn compile_at_load(
    spec: &PackageSpec,
    options: &LoadOptions,
    engine: &Engine,
    cache: &CompileCache,
    broker: &Broker,
) -> Option<(LoadedPackage, Compiled1)> {
    let mut built = false;
    if options.build {
        match builder::build_if_needed(spec, false).await {
            Ok(BuildOutcome::Built(_)) => built = true,
            Ok(_) => {}
            Err(e) => {
                broker.record_failure(&spec.name, e.to_string());
                return None;
            }
        }
    }
    let (path, eng, c) = (spec.component.clone(), engine.clone(), cache.clone());
    let compiled = tokio::task::spawn_blocking(move || c.load(&eng, &path)).await;
    let (component, how) = match compiled {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            broker.record_failure(&spec.name, format!("package `{}`: {e}", spec.name));
            return None;
        }
        Err(e) => {
            let why = format!("package `{}`: compile task failed: {e}", spec.name);
            broker.record_failure(&spec.name, why);
            return None;
        }
    };
    match PackageType::analyze(engine, &component, &spec.name) {
        Ok(ty) => {
            let loaded = LoadedPackage {
                name: spec.name.clone(),
                compiled: Some(how),
                built,
            };
            let ready = Compiled1 {
                spec: spec.clone(),
                component,
                ty,
            };
            Some((loaded, ready))
        }
        Err(e) => {
            broker.record_failure(&spec.name, e.to_string());
            None
        }
    }
}

/// Links the packages compiled at load to one another: those that link,
/// and those whose typed imports wait for a provider (linked again after
/// every deploy and remove).
fn link_at_load(
    ready: Vec<Compiled1>,
    base: &Linker<package::HostState>,
    cutoff: &Arc<Cutoff>,
    broker: &Broker,
) -> (Vec<Package>, Vec<Compiled1>) {
    let providers: Vec<Provider<'_>> = ready
        .iter()
        .map(|c| Provider {
            spec: &c.spec,
            ty: &c.ty,
        })
        .collect();
    let mut packages = Vec::new();
    let mut unlinked = Vec::new();
    for (i, c) in ready.iter().enumerate() {
        let http = broker.metrics();
        match link(
            &c.spec,
            &c.ty,
            &c.component,
            &providers,
            base,
            cutoff,
            http.http(),
        ) {
            Ok(p) => packages.push(p),
            Err(e) => {
                broker.record_failure(&c.spec.name, e.to_string());
                if matches!(e, PackageError::Import { .. }) {
                    unlinked.push(i);
                }
            }
        }
    }
    drop(providers);
    let unlinked = ready
        .into_iter()
        .enumerate()
        .filter(|(i, _)| unlinked.contains(i))
        .map(|(_, c)| c)
        .collect();
    (packages, unlinked)
}

/// The most instances `packages` may have at once must fit the engine's
/// pool: one clear error now rather than a failure per instance later.
fn check_capacity<'a>(
    packages: impl Iterator<Item = &'a PackageSpec>,
    capacity: u32,
) -> Result<(), AppError> {
    let mut asks: Vec<(&str, u64)> = packages
        .map(|p| (p.name.as_str(), u64::from(p.instances.max(p.max_instances))))
        .collect();
    let wanted: u64 = asks.iter().map(|(_, n)| n).sum();
    if wanted <= u64::from(capacity) {
        return Ok(());
    }
    asks.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let mut detail: Vec<String> = asks
        .iter()
        .take(5)
        .map(|(p, n)| format!("{p}: {n}"))
        .collect();
    if asks.len() > 5 {
        detail.push(format!("and {} more", asks.len() - 5));
    }
    Err(AppError::Capacity {
        wanted,
        detail: detail.join(", "),
        capacity,
    })
}

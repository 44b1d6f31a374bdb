//! An app: a `steedos.toml` and its packages, loaded into one broker.
//!
//! [`App::load`] takes a manifest through every step to serving: build the
//! packages that are out of date, compile (or load from the cache) each
//! component, read its types, link its typed imports to the packages that
//! export them, and start its instances. A package that fails at any step
//! is reported and left out; the rest of the app serves.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use wasmtime::Engine;
use wasmtime::component::Component;

use crate::broker::{Broker, BrokerSettings};
use crate::builder::{self, BuildOutcome};
use crate::codec;
use crate::engine::{CompileCache, Compiled, EngineLimits, EpochClock, new_engine};
use crate::manifest::{Manifest, PackageSpec};
use crate::package::{self, ImportTarget, Package, PackageError, PackageType, TypedImport};

/// How to load an app.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Run build commands of packages that are out of date.
    pub build: bool,
    /// Use the compiled-code cache.
    pub cache: bool,
    /// Pooling-allocator limits.
    pub limits: EngineLimits,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions { build: true, cache: true, limits: EngineLimits::default() }
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
    _clock: EpochClock,
}

struct Compiled1 {
    spec: PackageSpec,
    component: Component,
    ty: PackageType,
}

impl App {
    /// Loads every package of `manifest` and starts it.
    pub async fn load(manifest: Manifest, options: &LoadOptions) -> Result<App, AppError> {
        let started = Instant::now();
        let engine = new_engine(&options.limits)?;
        let clock = EpochClock::start(&engine);
        let broker = Broker::new(BrokerSettings { max_call_depth: manifest.app.max_call_depth });
        for rejected in &manifest.rejected {
            broker.record_failure(rejected.package().unwrap_or("steedos.toml"), rejected.to_string());
        }
        let cache = match options.cache {
            true => CompileCache::new(&manifest.app.cache_dir),
            false => CompileCache::disabled(),
        };
        let mut loaded = Vec::new();
        let mut ready = Vec::new();
        for spec in &manifest.packages {
            let mut built = false;
            if options.build {
                match builder::build_if_needed(spec, false).await {
                    Ok(BuildOutcome::Built(_)) => built = true,
                    Ok(_) => {}
                    Err(e) => {
                        broker.record_failure(&spec.name, e.to_string());
                        continue;
                    }
                }
            }
            let path = spec.component.clone();
            let eng = engine.clone();
            let c = cache.clone();
            let compiled = tokio::task::spawn_blocking(move || c.load(&eng, &path)).await;
            let (component, how) = match compiled {
                Ok(Ok(pair)) => pair,
                Ok(Err(e)) => {
                    broker.record_failure(&spec.name, format!("package `{}`: {e}", spec.name));
                    continue;
                }
                Err(e) => {
                    broker.record_failure(&spec.name, format!("package `{}`: compile task failed: {e}", spec.name));
                    continue;
                }
            };
            match PackageType::analyze(&engine, &component, &spec.name) {
                Ok(ty) => {
                    loaded.push(LoadedPackage { name: spec.name.clone(), compiled: Some(how), built });
                    ready.push(Compiled1 { spec: spec.clone(), component, ty });
                }
                Err(e) => broker.record_failure(&spec.name, e.to_string()),
            }
        }

        let base = package::base_linker(&engine)?;
        let mut packages = Vec::new();
        for c in &ready {
            match link(c, &ready, &base) {
                Ok(p) => packages.push(p),
                Err(e) => broker.record_failure(&c.spec.name, e.to_string()),
            }
        }
        let starts: Vec<_> = packages
            .into_iter()
            .map(|p| {
                let broker = broker.clone();
                tokio::spawn(async move { broker.start(p).await })
            })
            .collect();
        for s in starts {
            let _ = s.await;
        }
        let load_time = started.elapsed();
        tracing::info!(app = %manifest.app.name, seconds = load_time.as_secs_f64(), "app loaded");
        let metrics = Arc::new(crate::metrics::Metrics::new());
        Ok(App { manifest, broker, engine, metrics, loaded, load_time, _clock: clock })
    }

    /// Stops taking calls, lets in-flight ones finish, calls `stopped`.
    pub async fn shutdown(&self) {
        self.broker.shutdown(self.manifest.app.shutdown_timeout).await;
    }
}

/// Links one package: its typed imports to their providers, then the rest.
fn link(c: &Compiled1, all: &[Compiled1], base: &wasmtime::component::Linker<package::HostState>) -> Result<Package, PackageError> {
    let mut linker = base.clone();
    for import in &c.ty.typed_imports {
        let targets = resolve_import(c, import, all)?;
        package::link_typed_import(&mut linker, import, targets).map_err(|e| PackageError::Link {
            package: c.spec.name.clone(),
            message: format!("{e:#}"),
        })?;
    }
    Package::new(c.spec.clone(), c.ty.clone(), &c.component, &linker)
}

/// Finds the one package that exports `import`, checks the grant and every
/// function's type, and returns where each function goes.
fn resolve_import(c: &Compiled1, import: &TypedImport, all: &[Compiled1]) -> Result<Vec<Arc<ImportTarget>>, PackageError> {
    let err = |reason: String| PackageError::Import {
        package: c.spec.name.clone(),
        interface: import.interface.clone(),
        reason,
    };
    let providers: Vec<&Compiled1> = all
        .iter()
        .filter(|p| p.spec.name != c.spec.name && p.ty.exported_interfaces.iter().any(|(n, _)| *n == import.interface))
        .collect();
    let provider = match providers.as_slice() {
        [] => return Err(err("no loaded package exports it".to_string())),
        [one] => *one,
        many => {
            let names: Vec<&str> = many.iter().map(|p| p.spec.name.as_str()).collect();
            return Err(err(format!("it is exported by more than one package ({}); keep one", names.join(", "))));
        }
    };
    let mut by_name: HashMap<&str, usize> = HashMap::new();
    for (fname, _) in &import.functions {
        let Some(index) = provider.ty.exported_function(&import.interface, fname) else {
            return Err(err(format!("package `{}` exports it without the function `{fname}`", provider.spec.name)));
        };
        by_name.insert(fname, index);
    }
    let mut targets = Vec::new();
    for (fname, fty) in &import.functions {
        let action = &provider.ty.actions[by_name[fname.as_str()]];
        let label = format!("{}.{}", provider.spec.name, action.name);
        if !c.spec.grants.may_call(&label) {
            return Err(err(format!(
                "its grants do not allow calling `{label}`: add \"{}.*\" to `calls` in [packages.{}.grants]",
                provider.spec.name, c.spec.name
            )));
        }
        let wanted: Vec<(String, _)> = fty.params().map(|(n, t)| (n.to_string(), t)).collect();
        let wanted_result = fty.results().next();
        let same = wanted.len() == action.params.len()
            && wanted.iter().zip(&action.params).all(|((_, a), (_, b))| a == b)
            && wanted_result == action.result;
        if !same {
            return Err(err(format!(
                "function `{fname}` has another type in package `{}`: the importer expects {} but `{}` exports {}",
                provider.spec.name,
                codec::wit_signature(&wanted, wanted_result.as_ref()),
                provider.spec.name,
                codec::wit_signature(&action.params, action.result.as_ref()),
            )));
        }
        targets.push(Arc::new(ImportTarget {
            provider: provider.spec.name.as_str().into(),
            action: by_name[fname.as_str()],
            label,
            errors_as_value: package::is_call_error_result(wanted_result.as_ref()),
        }));
    }
    Ok(targets)
}

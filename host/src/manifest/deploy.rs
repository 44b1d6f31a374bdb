//! A package deployed through `/admin`: its settings (query parameters such
//! as `memory=32 MiB`) become the TOML table the same package would have in
//! `steedos.toml`, and that table goes through [`Source::package`], the one
//! check every package of the file goes through. So a deploy is refused
//! exactly when the same settings in the file would be, with the same
//! message (without a line: the settings came from a request, not a file).
//!
//! It reads settings and decides nothing else: the app stores, compiles and
//! starts the component; this module must not reach the engine or broker.

use std::path::PathBuf;

use toml::Value;
use toml::de::DeTable;

use super::check::protected_dirs;
use super::error::ManifestError;
use super::model::{Limits, Manifest, PackageSpec};
use super::source::{Sections, Source};

/// The settings an `/admin` deploy may give. Never `build` or `path`: a
/// deploy takes a component, not a command to run.
pub const DEPLOY_SETTINGS: &str = "instances, memory, emit_rate, timeout, events, calls, emits, kv, dependencies, dependency_timeout";

/// Stands for the uploaded component in the table checked; the app sets
/// the real path once the component is stored.
const UPLOADED: &str = "uploaded.wasm";

impl Manifest {
    /// The spec of package `name` deployed with a component of `size` bytes
    /// and `settings`, over `base` (the version serving, or the package of
    /// the file) or else `[defaults]`. Refused, naming the package and the
    /// setting, wherever the file would refuse the same settings.
    pub fn deployed_package(
        &self,
        name: &str,
        base: Option<&PackageSpec>,
        size: u64,
        settings: &[(String, String)],
    ) -> Result<PackageSpec, ManifestError> {
        let refuse = |message: String| ManifestError::Setting {
            package: name.to_owned(),
            message,
        };
        let limit = self.app.max_component_size;
        if size > limit {
            return Err(refuse(format!(
                "the component is {size} bytes, more than this host takes ({limit}; \
                 `max_component_size` in [app])"
            )));
        }
        let table = settings_table(settings).map_err(refuse)?;
        let limits = base.map_or_else(|| self.defaults.clone(), Limits::of);
        let checked = self.check_package(name, table, &limits)?;
        let mut spec = base.cloned().unwrap_or_else(|| {
            PackageSpec::with_limits(name, PathBuf::new(), self.defaults.clone())
        });
        spec.instances = checked.instances;
        spec.max_instances = checked.max_instances;
        spec.memory = checked.memory;
        spec.emit_rate = checked.emit_rate;
        spec.timeout = checked.timeout;
        let given = |key: &str| settings.iter().any(|(k, _)| k == key);
        if given("events") {
            spec.events = checked.events;
        }
        if given("dependencies") {
            spec.dependencies = checked.dependencies;
        }
        if given("dependency_timeout") {
            spec.dependency_timeout = checked.dependency_timeout;
        }
        if given("calls") {
            spec.grants.calls = checked.grants.calls;
        }
        if given("emits") {
            spec.grants.emits = checked.grants.emits;
        }
        if given("kv") {
            spec.grants.kv = checked.grants.kv;
        }
        Ok(spec)
    }

    /// `[packages.<name>]` holding `table`, through the file's own check.
    fn check_package(
        &self,
        name: &str,
        mut table: toml::Table,
        limits: &Limits,
    ) -> Result<PackageSpec, ManifestError> {
        table.insert("component".into(), Value::String(UPLOADED.into()));
        let mut packages = toml::Table::new();
        packages.insert(name.to_owned(), Value::Table(table));
        let mut root = toml::Table::new();
        root.insert("packages".into(), Value::Table(packages));
        let text = root.to_string();
        let as_setting = |error: ManifestError| as_setting(name, error);
        let source = Source::new(&text, &self.path).map_err(as_setting)?;
        let parsed = DeTable::parse(&text).map_err(|e| as_setting(source.syntax_error(&e)))?;
        let sections = Sections::split(&source, parsed.get_ref()).map_err(as_setting)?;
        let protected = protected_dirs(&self.app, &self.dir);
        let (mut specs, mut rejected) = source
            .packages(sections.packages, limits, &protected)
            .map_err(as_setting)?;
        match (specs.pop(), rejected.pop()) {
            (Some(spec), None) => Ok(spec),
            (_, Some(error)) => Err(as_setting(error)),
            (None, None) => Err(as_setting(source.error(
                0..0,
                Some(name),
                "no package".into(),
            ))),
        }
    }
}

/// The settings as the package table a file would hold: numbers where the
/// file has numbers, lists split at commas, `calls` and `emits` in `grants`.
fn settings_table(settings: &[(String, String)]) -> Result<toml::Table, String> {
    let (mut table, mut grants) = (toml::Table::new(), toml::Table::new());
    for (key, value) in settings {
        let (target, value) = match key.as_str() {
            "instances" | "memory" | "emit_rate" => (&mut table, number_or_text(value)),
            "timeout" | "dependency_timeout" => (&mut table, Value::String(value.clone())),
            "events" | "dependencies" => (&mut table, list(value)),
            "calls" | "emits" | "kv" => (&mut grants, list(value)),
            other => {
                return Err(format!(
                    "unknown setting `{}` ({DEPLOY_SETTINGS})",
                    other.escape_debug()
                ));
            }
        };
        if target.insert(key.clone(), value).is_some() {
            return Err(format!("{key}: given twice"));
        }
    }
    if !grants.is_empty() {
        table.insert("grants".into(), Value::Table(grants));
    }
    Ok(table)
}

fn number_or_text(value: &str) -> Value {
    value
        .trim()
        .parse::<i64>()
        .map_or_else(|_| Value::String(value.to_owned()), Value::Integer)
}

fn list(value: &str) -> Value {
    let items = value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| Value::String(s.to_owned()))
        .collect();
    Value::Array(items)
}

/// An error of the table checked, told as an error of the request: no
/// file, line or column, and the setting named as the request names it.
fn as_setting(name: &str, error: ManifestError) -> ManifestError {
    let message = match error {
        ManifestError::Invalid { message, .. } | ManifestError::Syntax { message, .. } => message,
        ManifestError::Io { path, source } => format!("{}: {source}", path.display()),
        setting @ ManifestError::Setting { .. } => return setting,
    };
    let message = match message.strip_prefix("grants.") {
        Some(rest) => rest.to_owned(),
        None => message,
    };
    ManifestError::Setting {
        package: name.to_owned(),
        message,
    }
}

impl Limits {
    /// The limits `spec` runs with, as the base a deploy's settings override.
    fn of(spec: &PackageSpec) -> Limits {
        Limits {
            instances: spec.instances,
            max_instances: spec.max_instances,
            memory: spec.memory,
            emit_rate: spec.emit_rate,
            timeout: spec.timeout,
            queue: spec.queue,
            restart: spec.restart.clone(),
        }
    }
}

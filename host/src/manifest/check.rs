//! The checks: from the raw tables to the model. Each table of the file is
//! read in its scope, its cross-key rules checked (heartbeat timeout over
//! interval, one kind of credentials, `build` with `path`, circuit ranges,
//! `env` against `env_inherit`), its paths resolved against the app folder,
//! and every dir grant held away from the host's own state.
//!
//! [`Source::package`] is the one check of a package's settings: a package
//! read from `steedos.toml` and one deployed through `/admin` both go
//! through it. It must not reach outside the manifest (no engine, no
//! broker).

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;
use toml::de::{DeString, DeValue};

use super::error::ManifestError;
use super::model::{
    ActionPolicy, Alias, AppSettings, CallerProtection, CircuitPolicy, ClusterAuth,
    ClusterSettings, ClusterTls, DEFAULT_MAX_COMPONENT_SIZE, DirGrant, GatewaySettings, Grants,
    Limits, OpsAccess, PackageSpec, RetryPolicy, Secret, Serializer, redact,
};
use super::properties;
use super::raw::{
    RawAction, RawApp, RawCircuit, RawCluster, RawDirGrant, RawGateway, RawGrants, RawLimits,
    RawPackage, RawRetry, check_restart,
};
use super::source::{Scope, Source, find_key};
use super::values::{
    DAY_MS, DurationIn, EnvName, PathValue, ServiceName, VersionValue, is_package_name,
};

pub(super) const DEFAULT_MAX_CALL_DEPTH: u32 = 16;
pub(super) const DEFAULT_CACHE_DIR: &str = ".steedos/cache";
pub(super) const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
pub(super) const PACKAGE_NAME_RULE: &str = "a package name is lowercase ASCII letters, digits and `-`, \
     starts with a letter, and is at most 64 characters";

impl Source<'_> {
    pub(super) fn app(
        &self,
        value: Option<&Spanned<DeValue<'_>>>,
    ) -> Result<AppSettings, ManifestError> {
        let raw: RawApp = match value {
            Some(value) => Scope::new(self, value, "app", None).deserialize()?,
            None => RawApp::default(),
        };
        let name = raw.name.map_or_else(|| self.folder_name(), |name| name.0);
        let cache_dir = raw
            .cache_dir
            .map_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR), |dir| dir.0);
        Ok(AppSettings {
            name,
            max_call_depth: raw.max_call_depth.map_or(DEFAULT_MAX_CALL_DEPTH, |n| n.0),
            cache_dir: self.dir.join(cache_dir),
            shutdown_timeout: raw
                .shutdown_timeout
                .map_or(DEFAULT_SHUTDOWN_TIMEOUT, |d| d.0),
            max_instances: raw.max_instances.map(|n| n.0),
            max_component_size: raw
                .max_component_size
                .map_or(DEFAULT_MAX_COMPONENT_SIZE, |s| s.0),
        })
    }

    pub(super) fn gateway(
        &self,
        value: Option<&Spanned<DeValue<'_>>>,
    ) -> Result<GatewaySettings, ManifestError> {
        let Some(value) = value else {
            return Ok(GatewaySettings::default());
        };
        let scope = Scope::new(self, value, "gateway", None);
        let raw: RawGateway = scope.deserialize()?;
        let defaults = GatewaySettings::default();
        let span = value.span();
        let listen = match raw.listen.map(|t| t.0) {
            None => defaults.listen,
            Some(off) if off == "off" => None,
            Some(addr) => Some(addr.parse().map_err(|_| {
                scope.error(
                    span.clone(),
                    format!(
                        "listen: {addr:?} is not an address (try \"127.0.0.1:3000\", or \"off\")"
                    ),
                )
            })?),
        };
        let mut aliases = Vec::new();
        for (route, action) in raw.aliases.unwrap_or_default() {
            let alias = Alias::parse(&route, &action.0)
                .map_err(|e| scope.error(span.clone(), format!("aliases: {e}")))?;
            aliases.push(alias);
        }
        let http = self.http_routes(raw.http.unwrap_or_default(), &scope)?;
        let ops = match raw.ops.as_ref().map(|t| t.0.as_str()) {
            None | Some("public") => OpsAccess::Public,
            Some("token") => OpsAccess::Token,
            Some("off") => OpsAccess::Off,
            Some(other) => {
                let at = find_key(value.get_ref(), "ops").unwrap_or_else(|| span.clone());
                return Err(scope.error(
                    at,
                    format!("ops: {other:?} is not one of \"public\", \"token\", \"off\""),
                ));
            }
        };
        let admin_token = raw
            .admin_token_env
            .and_then(|name| std::env::var(&name.0).ok())
            .filter(|t| !t.is_empty());
        let header_timeout = raw.header_timeout.map_or(defaults.header_timeout, |d| d.0);
        Ok(GatewaySettings {
            listen,
            expose: raw
                .expose
                .unwrap_or_default()
                .into_iter()
                .map(|p| p.0)
                .collect(),
            aliases,
            http,
            max_body: raw.max_body.map_or(defaults.max_body, |s| s.0),
            header_timeout,
            idle_timeout: raw.idle_timeout.map_or(defaults.idle_timeout, |d| d.0),
            // A body, like a head, gets header_timeout unless told otherwise.
            body_timeout: raw.body_timeout.map_or(header_timeout, |d| d.0),
            min_body_rate: raw.min_body_rate.map_or(defaults.min_body_rate, |s| s.0),
            max_connections: raw
                .max_connections
                .map_or(defaults.max_connections, |n| n.0),
            ops,
            admin_token,
            protection: scope.protection(span, raw.circuit, raw.retry, raw.actions)?,
        })
    }

    pub(super) fn cluster(
        &self,
        value: &Spanned<DeValue<'_>>,
    ) -> Result<ClusterSettings, ManifestError> {
        let scope = Scope::new(self, value, "cluster", None);
        let mut raw: RawCluster = scope.deserialize()?;
        let defaults = ClusterSettings::new(raw.transporter.0.clone());
        let at = |key: &str| find_key(value.get_ref(), key).unwrap_or_else(|| value.span());
        let schemes = ["nats://", "tls://", "redis://", "rediss://"];
        if !schemes.iter().any(|s| raw.transporter.0.starts_with(s)) {
            let message = format!(
                "{:?} is not a NATS or Redis URL (try \"nats://127.0.0.1:4222\" or \"redis://127.0.0.1:6379\")",
                redact(&raw.transporter.0)
            );
            return Err(scope.error(at("transporter"), message));
        }
        let serializer = match raw.serializer.as_ref().map(|s| s.0.as_str()) {
            None | Some("json") => Serializer::Json,
            Some("msgpack") => Serializer::MessagePack,
            Some(other) => {
                let message = format!(
                    "{other:?} is not a serializer (\"json\", or \"msgpack\" between steedos-wasm nodes)"
                );
                return Err(scope.error(at("serializer"), message));
            }
        };
        let heartbeat_interval = raw
            .heartbeat_interval
            .map_or(defaults.heartbeat_interval, |d| d.0);
        let heartbeat_timeout = raw
            .heartbeat_timeout
            .map_or(defaults.heartbeat_timeout, |d| d.0);
        if heartbeat_timeout <= heartbeat_interval {
            let message = format!(
                "{} must be longer than heartbeat_interval ({})",
                humantime::format_duration(heartbeat_timeout),
                humantime::format_duration(heartbeat_interval)
            );
            return Err(scope.error(at("heartbeat_timeout"), message));
        }
        let auth = self.cluster_auth(&scope, &mut raw)?;
        let tls = self.cluster_tls(&scope, &mut raw)?;
        Ok(ClusterSettings {
            publish: raw
                .publish
                .map_or(defaults.publish, |p| p.into_iter().map(|p| p.0).collect()),
            auth,
            tls,
            transporter: raw.transporter.0,
            node_id: raw.node_id.map(|t| t.0),
            namespace: raw.namespace.map(|t| t.0),
            protocol: raw.protocol.map_or(defaults.protocol, |n| n.0 as u8),
            serializer,
            heartbeat_interval,
            heartbeat_timeout,
            advertise: raw.advertise.unwrap_or(true),
        })
    }

    /// The cluster's NATS credentials: at most one kind.
    fn cluster_auth(
        &self,
        scope: &Scope<'_, '_>,
        raw: &mut RawCluster,
    ) -> Result<ClusterAuth, ManifestError> {
        let value = scope.value;
        let at = |key: &str| find_key(value.get_ref(), key).unwrap_or_else(|| value.span());
        let secret = |env: Option<EnvName>, file: Option<PathValue>, key: &str| match (env, file) {
            (Some(_), Some(_)) => Err(scope.error(
                at(&format!("{key}_file")),
                format!("set `{key}_env` or `{key}_file`, not both"),
            )),
            (Some(env), None) => Ok(Some(Secret::Env(env.0))),
            (None, Some(file)) => Ok(Some(Secret::File(self.dir.join(file.0)))),
            (None, None) => Ok(None),
        };
        let token = secret(raw.token_env.take(), raw.token_file.take(), "token")?;
        let password = secret(
            raw.password_env.take(),
            raw.password_file.take(),
            "password",
        )?;
        let nkey = secret(
            raw.nkey_seed_env.take(),
            raw.nkey_seed_file.take(),
            "nkey_seed",
        )?;
        let credentials = raw.credentials.take().map(|p| self.dir.join(p.0));
        let auth = match (token, raw.user.take(), password, nkey, credentials) {
            (None, None, None, None, None) => ClusterAuth::None,
            (Some(t), None, None, None, None) => ClusterAuth::Token(t),
            (None, Some(user), Some(password), None, None) => ClusterAuth::UserPassword {
                user: user.0,
                password,
            },
            (None, Some(_), None, None, None) => {
                let message = "`user` needs `password_env` or `password_file`".to_owned();
                return Err(scope.error(at("user"), message));
            }
            (None, None, Some(_), None, None) => {
                let message = "a password needs `user`".to_owned();
                return Err(scope.error(value.span(), message));
            }
            (None, None, None, Some(n), None) => ClusterAuth::NKey(n),
            (None, None, None, None, Some(c)) => ClusterAuth::Credentials(c),
            _ => {
                let message = "give one kind of NATS credentials: a token, a user and password, an NKey seed, or a credentials file".to_owned();
                return Err(scope.error(value.span(), message));
            }
        };
        Ok(auth)
    }

    /// The cluster's TLS: a CA, and a client certificate with its key.
    fn cluster_tls(
        &self,
        scope: &Scope<'_, '_>,
        raw: &mut RawCluster,
    ) -> Result<ClusterTls, ManifestError> {
        let value = scope.value;
        let at = |key: &str| find_key(value.get_ref(), key).unwrap_or_else(|| value.span());
        let client = match (raw.tls_cert.take(), raw.tls_key.take()) {
            (Some(cert), Some(key)) => Some((self.dir.join(cert.0), self.dir.join(key.0))),
            (None, None) => None,
            (Some(_), None) => {
                let message = "a client certificate needs `tls_key`".to_owned();
                return Err(scope.error(at("tls_cert"), message));
            }
            (None, Some(_)) => {
                let message = "a client key needs `tls_cert`".to_owned();
                return Err(scope.error(at("tls_key"), message));
            }
        };
        Ok(ClusterTls {
            required: raw.tls.unwrap_or(false),
            ca: raw.tls_ca.take().map(|p| self.dir.join(p.0)),
            client,
        })
    }

    pub(super) fn folder_name(&self) -> String {
        self.dir.file_name().map_or_else(
            || "app".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        )
    }

    pub(super) fn defaults(
        &self,
        value: Option<&Spanned<DeValue<'_>>>,
    ) -> Result<Limits, ManifestError> {
        let Some(value) = value else {
            return Ok(Limits::default());
        };
        let scope = Scope::new(self, value, "defaults", None);
        let raw: RawLimits = scope.deserialize()?;
        scope.limits(&raw, &Limits::default())
    }

    pub(super) fn packages(
        &self,
        value: Option<&Spanned<DeValue<'_>>>,
        defaults: &Limits,
        protected: &[PathBuf],
    ) -> Result<(Vec<PackageSpec>, Vec<ManifestError>), ManifestError> {
        let Some(value) = value else {
            return Ok((Vec::new(), Vec::new()));
        };
        let DeValue::Table(table) = value.get_ref() else {
            let message = format!(
                "packages: invalid type: {}, expected a table of packages",
                value.get_ref().type_str()
            );
            return Err(self.error(value.span(), None, message));
        };
        // The table is sorted by name; the host starts packages in file order.
        let mut entries: Vec<_> = table.iter().collect();
        entries.sort_by_key(|(key, _)| key.span().start);
        let (mut packages, mut rejected) = (Vec::new(), Vec::new());
        for (key, value) in entries {
            match self.package(key, value, defaults, protected) {
                Ok(package) => packages.push(package),
                Err(error) => rejected.push(error),
            }
        }
        Ok((packages, rejected))
    }

    pub(super) fn package(
        &self,
        key: &Spanned<DeString<'_>>,
        value: &Spanned<DeValue<'_>>,
        defaults: &Limits,
        protected: &[PathBuf],
    ) -> Result<PackageSpec, ManifestError> {
        let name = key.get_ref().as_ref();
        if !is_package_name(name) {
            return Err(self.error(key.span(), Some(name), PACKAGE_NAME_RULE.to_owned()));
        }
        let scope = Scope::new(self, value, "", Some(name));
        let mut raw: RawPackage = scope.deserialize()?;
        let source = raw.path.as_ref().map(|path| self.dir.join(&path.0));
        let build = match (&raw.build, &source) {
            (Some(build), None) => {
                let message = "`build` needs `path`, the folder to run it in".to_owned();
                return Err(scope.error(build.span(), message));
            }
            (build, _) => build.as_ref().map(|build| build.get_ref().0.clone()),
        };
        let limits = scope.limits(&raw.limits(), defaults)?;
        let component = source
            .as_deref()
            .unwrap_or(&self.dir)
            .join(&raw.component.0);
        let mut spec = PackageSpec::with_limits(name, component, limits);
        spec.source = source;
        spec.build = build;
        let service = (
            raw.version.take(),
            std::mem::take(&mut raw.dependencies),
            raw.dependency_timeout.take(),
        );
        spec.events = raw.events.into_iter().map(|pattern| pattern.0).collect();
        spec.grants = scope.grants(raw.grants, protected)?;
        spec.http = raw.http.over(spec.http.clone());
        if let Some(d) = raw.scale_down_after {
            spec.scale_down_after = d.0;
        }
        let protection = scope.protection(value.span(), raw.circuit, raw.retry, raw.actions)?;
        spec.circuit = protection.circuit;
        spec.retry = protection.retry;
        spec.actions = protection.actions;
        scope.service(service, &mut spec)?;
        Ok(spec)
    }
}

impl Scope<'_, '_> {
    /// A caller's `circuit`, `retry` and `actions` entries (a package's,
    /// or the gateway's for its calls to other nodes).
    pub(super) fn protection(
        &self,
        span: std::ops::Range<usize>,
        circuit: Option<RawCircuit>,
        retry: Option<RawRetry>,
        actions: std::collections::BTreeMap<String, RawAction>,
    ) -> Result<CallerProtection, ManifestError> {
        let mut out = CallerProtection::default();
        if let Some(c) = circuit {
            let threshold = c.threshold.unwrap_or(0.5);
            if !(threshold > 0.0 && threshold <= 1.0) {
                let message = format!("circuit.threshold: {threshold} is out of range (0..=1)");
                return Err(self.error(span, message));
            }
            out.circuit = Some(CircuitPolicy {
                threshold,
                min_calls: c.min_calls.map_or(20, |n| n.0),
                window: c.window.map_or(Duration::from_secs(60), |d| d.0),
                half_open_after: c.half_open_after.map_or(Duration::from_secs(10), |d| d.0),
            });
        }
        if let Some(r) = retry {
            let base = RetryPolicy::default();
            out.retry = RetryPolicy {
                max: r.max.0,
                delay: r.delay.map_or(base.delay, |d| d.0),
                max_delay: r.max_delay.map_or(base.max_delay, |d| d.0),
            };
        }
        out.actions = self.actions(actions)?;
        Ok(out)
    }

    /// `[packages.<name>.actions.<action>]`: the host's keys and the
    /// Moleculer properties published in INFO.
    fn actions(
        &self,
        raw: std::collections::BTreeMap<String, RawAction>,
    ) -> Result<Vec<ActionPolicy>, ManifestError> {
        let tables = table_entry(self.value.get_ref(), "actions");
        let mut actions = Vec::new();
        for (name, a) in raw {
            let (properties, visibility) =
                match tables.and_then(|t| table_entry(t.get_ref(), &name)) {
                    Some(table) => properties::action_properties(&name, table)
                        .map_err(|(span, message)| self.error(span, message))?,
                    None => Default::default(),
                };
            let cache = match properties.get("cache") {
                Some(value) => super::kv::cache_policy(value).map_err(|message| {
                    let at = tables.map_or_else(|| self.value.span(), |t| t.span());
                    self.error(at, format!("actions.{name}.{message}"))
                })?,
                None => None,
            };
            actions.push(ActionPolicy {
                cache,
                name,
                queue: a.queue.map(|q| q.0 as usize),
                idempotent: a.idempotent,
                fallback: a.fallback.map(|f| f.0),
                visibility,
                properties,
            });
        }
        Ok(actions)
    }

    /// The package as a Moleculer service: `version`, `settings`,
    /// `dependencies`, `dependency_timeout`; and a bound on what INFO carries.
    fn service(
        &self,
        (version, dependencies, timeout): MoleculerKeys,
        spec: &mut PackageSpec,
    ) -> Result<(), ManifestError> {
        spec.version = version.map(|v| v.0);
        if let Some(value) = table_entry(self.value.get_ref(), "settings") {
            spec.settings =
                properties::settings(value).map_err(|(span, message)| self.error(span, message))?;
        }
        spec.dependencies = Vec::new();
        for dependency in dependencies {
            let name = dependency.get_ref().0.clone();
            if name == spec.name || name == spec.service_name() {
                let message = format!("package `{}` cannot depend on itself", spec.name);
                return Err(self.error(dependency.span(), message));
            }
            spec.dependencies.push(name);
        }
        if let Some(timeout) = timeout {
            spec.dependency_timeout = timeout.0;
        }
        let size = serde_json::to_vec(&spec.settings).map_or(0, |b| b.len())
            + spec
                .actions
                .iter()
                .map(|a| serde_json::to_vec(&a.properties).map_or(0, |b| b.len()))
                .sum::<usize>();
        if size > properties::MAX_PROPERTIES_BYTES {
            let message = format!(
                "settings and action properties come to {size} bytes of JSON, over the \
                 {} KiB an INFO packet may carry for one package",
                properties::MAX_PROPERTIES_BYTES >> 10
            );
            return Err(self.error(self.value.span(), message));
        }
        Ok(())
    }

    pub(super) fn limits(&self, raw: &RawLimits, base: &Limits) -> Result<Limits, ManifestError> {
        let limits = raw.over(base);
        if let Some(restart) = &raw.restart {
            check_restart(&limits.restart)
                .map_err(|message| self.error(restart.span(), message))?;
        }
        Ok(limits)
    }

    pub(super) fn grants(
        &self,
        raw: RawGrants,
        protected: &[PathBuf],
    ) -> Result<Grants, ManifestError> {
        let dirs = raw
            .dirs
            .into_iter()
            .map(|dir| self.dir_grant(dir, protected))
            .collect::<Result<_, _>>()?;
        let mut env: Vec<(String, String)> = raw
            .env
            .iter()
            .map(|(name, value)| (name.0.clone(), value.clone()))
            .collect();
        for name in &raw.env_inherit {
            if raw.env.contains_key(name.get_ref()) {
                let message = format!("`{}` is already set in `env`", name.get_ref().0);
                return Err(self.error(name.span(), message));
            }
            env.extend(self.inherit(&name.get_ref().0));
        }
        let calls = raw.calls.into_iter().map(|pattern| pattern.0).collect();
        let emits = raw.emits.into_iter().map(|pattern| pattern.0).collect();
        let http = raw.http.into_iter().map(|grant| grant.0).collect();
        Ok(Grants {
            dirs,
            env,
            calls,
            emits,
            http,
            kv: super::kv::granted_buckets(raw.kv),
        })
    }

    pub(super) fn dir_grant(
        &self,
        raw: RawDirGrant,
        protected: &[PathBuf],
    ) -> Result<DirGrant, ManifestError> {
        let written = &raw.host.get_ref().0;
        let host = self.source.dir.join(written);
        let problem = match std::fs::metadata(&host) {
            Ok(metadata) if metadata.is_dir() => None,
            Ok(_) => Some("is not a directory".to_owned()),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                Some("does not exist".to_owned())
            }
            Err(error) => Some(format!("cannot be opened: {error}")),
        };
        if let Some(problem) = problem {
            let message =
                format!("{written:?} {problem} (host paths are relative to the app folder)");
            return Err(self.error(raw.host.span(), message));
        }
        let real = resolve_links(&host);
        if let Some(state) = protected
            .iter()
            .find(|p| real.starts_with(p) || p.starts_with(&real))
        {
            let how = match (real.starts_with(state), state.starts_with(&real)) {
                (true, true) => "is",
                (true, false) => "is inside",
                _ => "holds",
            };
            let message = format!(
                "{written:?} {how} {}, a folder of the host's own state (the compile cache \
                 holds native code the host runs): no grant may reach it; grant a folder \
                 beside it instead",
                state.display()
            );
            return Err(self.error(raw.host.span(), message));
        }
        Ok(DirGrant {
            host,
            guest: raw.guest.0,
            read_only: raw.read_only,
        })
    }

    pub(super) fn inherit(&self, name: &str) -> Option<(String, String)> {
        match std::env::var(name) {
            Ok(value) => Some((name.to_owned(), value)),
            Err(error) => {
                tracing::warn!(
                    package = self.package.unwrap_or_default(),
                    var = name,
                    %error,
                    "env_inherit: not passed to the package"
                );
                None
            }
        }
    }
}

/// `path` with every symbolic link resolved: its longest existing ancestor
/// canonicalised, the rest (not there yet) appended with `.` and `..`
/// resolved by name.
pub(super) fn resolve_links(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for part in rest.iter().rev() {
                match part {
                    std::path::Component::ParentDir => {
                        out.pop();
                    }
                    std::path::Component::Normal(name) => out.push(name),
                    _ => {}
                }
            }
            return out;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(last)) => {
                rest.push(last);
                existing = parent;
            }
            _ => return absolute,
        }
    }
}

/// The host's own folders no grant may reach, with symbolic links resolved.
pub(super) fn protected_dirs(app: &AppSettings, dir: &Path) -> Vec<PathBuf> {
    app.protected_dirs(dir)
        .iter()
        .map(|dir| resolve_links(dir))
        .collect()
}

/// The value of `key` in `table`, when `table` is a table that has it.
fn table_entry<'t, 'i>(table: &'t DeValue<'i>, key: &str) -> Option<&'t Spanned<DeValue<'i>>> {
    let DeValue::Table(table) = table else {
        return None;
    };
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v)
}

/// A package's `version`, `dependencies` and `dependency_timeout`, as read.
type MoleculerKeys = (
    Option<VersionValue>,
    Vec<Spanned<ServiceName>>,
    Option<DurationIn<1, DAY_MS>>,
);

//! The validated model: what a `steedos.toml` means once read, with every
//! default filled in and every path absolute ([`PackageSpec`],
//! [`AppSettings`], [`GatewaySettings`], [`ClusterSettings`], grants and
//! policies), and the questions the host asks of it (`may_call`,
//! `subscribes_to`, `exposes`, alias matching).
//!
//! It knows nothing of TOML, spans or serde: reading and checking the file
//! is `raw`, `values` and `check`'s work, and no other module builds these
//! types from text.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::ManifestError;
use super::values::ServiceVersion;

pub(super) const DEFAULT_INSTANCES: u32 = 1;
pub(super) const DEFAULT_MEMORY: u64 = 64 << 20;
/// Bytes of event deliveries a package may cause per second (see `broker::emit_budget`).
pub const DEFAULT_EMIT_RATE: u64 = 64 << 20;
pub(super) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
pub(super) const DEFAULT_QUEUE: usize = 64;

/// An app's `steedos.toml`, validated, with every default filled in.
#[derive(Debug)]
pub struct Manifest {
    /// The `steedos.toml` file, as it was given.
    pub path: PathBuf,
    /// The app folder, absolute; relative paths in the manifest resolve against it.
    pub dir: PathBuf,
    /// App-wide settings from `[app]`.
    pub app: AppSettings,
    /// The HTTP gateway: `[gateway]`.
    pub gateway: GatewaySettings,
    /// The cluster this host joins: `[cluster]`; `None` without the table.
    pub cluster: Option<ClusterSettings>,
    /// `[kv.<bucket>]`: buckets whose settings are written (others are embedded).
    pub kv: Vec<super::kv::BucketSettings>,
    /// `[telemetry]`: spans, their export and sampling (as written).
    pub telemetry: super::telemetry::TelemetrySettings,
    /// The packages that passed validation, in file order.
    pub packages: Vec<PackageSpec>,
    /// One [`ManifestError::Invalid`] per package that failed validation, in
    /// file order; the rest of the app runs without them.
    pub rejected: Vec<ManifestError>,
    /// `[defaults]`: the limits of a package that does not set them, one
    /// deployed through `/admin` included.
    pub(super) defaults: Limits,
}

/// The transporter URL with any `user:password@` shown as `***@`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

/// The largest component file read from disk or taken by a deploy unless
/// the app says otherwise (`[app] max_component_size`).
pub const DEFAULT_MAX_COMPONENT_SIZE: u64 = 64 << 20;

/// The host's own state, outside every app: the compile cache's key lives
/// here. `$XDG_STATE_HOME/steedos-wasm`, else `~/.local/state/steedos-wasm`;
/// `None` without either variable.
pub fn host_state_dir() -> Option<PathBuf> {
    let xdg = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute());
    let base = xdg.or_else(|| {
        std::env::var_os("HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .map(|home| home.join(".local").join("state"))
    })?;
    Some(base.join("steedos-wasm"))
}

/// App-wide settings: the `[app]` table.
#[derive(Clone, Debug)]
pub struct AppSettings {
    /// The app's name; defaults to the app folder's name.
    pub name: String,
    /// The longest chain of nested calls (A calls B calls C ...) the broker allows.
    pub max_call_depth: u32,
    /// Where compiled components are cached, absolute.
    pub cache_dir: PathBuf,
    /// How long a shutdown may take in all: calls in flight finishing, then
    /// every `stopped` hook (they run at once, under this one deadline).
    pub shutdown_timeout: Duration,
    /// Instances the host holds at once over all packages (the engine's
    /// pool); `None` leaves it to the command line or the default.
    pub max_instances: Option<u32>,
    /// The largest component file read from disk or taken by a deploy.
    pub max_component_size: u64,
}

impl AppSettings {
    /// The folders of the host's own state that no grant may reach.
    pub fn protected_dirs(&self, app_dir: &Path) -> Vec<PathBuf> {
        let mut dirs = vec![app_dir.join(".steedos"), self.cache_dir.clone()];
        dirs.extend(host_state_dir());
        dirs
    }
}

/// The HTTP gateway's settings: the `[gateway]` table.
#[derive(Clone, Debug)]
pub struct GatewaySettings {
    /// Where it listens; `None` when `listen = "off"`.
    pub listen: Option<std::net::SocketAddr>,
    /// Actions reachable as `POST /api/<package>/<action>`: exact names,
    /// `pkg.*` or `*`. Nothing is exposed unless listed.
    pub expose: Vec<String>,
    /// REST aliases, in file order.
    pub aliases: Vec<Alias>,
    /// `[gateway.http]`: paths served by packages that serve HTTP themselves.
    pub http: Vec<super::HttpRoute>,
    /// The largest request body accepted.
    pub max_body: u64,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long an idle keep-alive connection is kept, and how long a
    /// client may take to take (read) a response.
    pub idle_timeout: Duration,
    /// How long a client may take to send a request's body, on top of
    /// what `min_body_rate` allows for the bytes it did send.
    pub body_timeout: Duration,
    /// The slowest a body may arrive, in bytes per second: each byte
    /// received extends the body's deadline by `1 / min_body_rate` s.
    pub min_body_rate: u64,
    /// The most connections open at once; past it the least recently
    /// active connection not running a call is closed, or the new one refused.
    pub max_connections: u32,
    /// Who may read `/health`, `/metrics` and `/openapi.json`.
    pub ops: OpsAccess,
    /// The bearer token of the `/admin` API, read from the environment
    /// variable `admin_token_env` names; `None` leaves `/admin` off.
    pub admin_token: Option<String>,
    /// How calls from outside (HTTP, the host's own API) to actions on
    /// other nodes are protected: `circuit`, `retry` and `actions` under `[gateway]`.
    pub protection: CallerProtection,
}

/// A caller's protections for the actions it calls on other nodes: its
/// breaker policy (one breaker per action), its retry policy, and its
/// entries naming those actions (`idempotent`, `fallback`).
#[derive(Clone, Debug, Default)]
pub struct CallerProtection {
    /// `circuit`.
    pub circuit: Option<CircuitPolicy>,
    /// `retry`.
    pub retry: RetryPolicy,
    /// `actions."<package>.<action>"`.
    pub actions: Vec<ActionPolicy>,
}

/// Who may read the gateway's operational routes (`/health`, `/metrics`,
/// `/openapi.json`): `[gateway] ops`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpsAccess {
    /// Anyone who reaches the gateway (its default listen address is loopback).
    Public,
    /// Only requests with the admin bearer token.
    Token,
    /// Nobody: the routes answer 404.
    Off,
}

impl Default for GatewaySettings {
    fn default() -> Self {
        GatewaySettings {
            listen: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 3000))),
            expose: Vec::new(),
            aliases: Vec::new(),
            http: Vec::new(),
            max_body: 1 << 20,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(5),
            min_body_rate: 1024,
            max_connections: 4096,
            ops: OpsAccess::Public,
            admin_token: None,
            protection: CallerProtection::default(),
        }
    }
}

impl GatewaySettings {
    /// Whether `action` is reachable over HTTP.
    pub fn exposes(&self, action: &str) -> bool {
        self.expose.iter().any(|p| pattern_matches(p, action))
            || self.aliases.iter().any(|a| a.action == action)
    }
}

/// How this host joins a cluster of steedos-wasm nodes and Moleculer
/// services over NATS: the `[cluster]` table (see [`transport`](crate::transport)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSettings {
    /// The transporter, `nats://host:port` or `redis://host:port` (`tls://`, `rediss://` with TLS).
    pub transporter: String,
    /// This node's id; `None` picks `<hostname>-<pid>` when the node starts.
    pub node_id: Option<String>,
    /// The namespace: subjects are prefixed `MOL-<namespace>` instead of `MOL`.
    pub namespace: Option<String>,
    /// The Moleculer protocol version spoken: 4 (Moleculer 0.14, Steedos) or 5 (0.15).
    pub protocol: u8,
    /// How packets are written.
    pub serializer: Serializer,
    /// How often this node sends a HEARTBEAT.
    pub heartbeat_interval: Duration,
    /// A node silent for this long is taken as lost.
    pub heartbeat_timeout: Duration,
    /// Whether this node offers its packages to the cluster (`false`: it
    /// only calls, as `steedos-wasm call` does).
    pub advertise: bool,
    /// The actions this node announces to the cluster and serves to it
    /// (patterns like `[gateway] expose`); others are refused as not found.
    pub publish: Vec<String>,
    /// How this node proves who it is to the NATS server.
    pub auth: ClusterAuth,
    /// TLS to the NATS server.
    pub tls: ClusterTls,
}

/// A secret's source: read when the node joins, never kept in settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Secret {
    /// An environment variable of the host.
    Env(String),
    /// A file; its content, trimmed.
    File(PathBuf),
}

/// NATS credentials: at most one kind (user and password may also come in
/// the transporter URL, `nats://user:pass@host:4222`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ClusterAuth {
    /// None beyond what the URL holds.
    #[default]
    None,
    /// `token_env` / `token_file`.
    Token(Secret),
    /// `user` with `password_env` / `password_file`.
    UserPassword {
        /// The user name.
        user: String,
        /// The password.
        password: Secret,
    },
    /// `nkey_seed_env` / `nkey_seed_file`: an NKey seed (`SU...`).
    NKey(Secret),
    /// `credentials`: a `.creds` file (a user JWT and its NKey seed).
    Credentials(PathBuf),
}

/// TLS to the NATS server: `tls`, `tls_ca`, `tls_cert`, `tls_key`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterTls {
    /// Refuse a connection without TLS (also implied by a `tls://` URL and by a CA or client certificate).
    pub required: bool,
    /// A PEM file of CA certificates trusted for the server's certificate.
    pub ca: Option<PathBuf>,
    /// A PEM client certificate and its key, for servers that verify clients.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// How cluster packets are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serializer {
    /// Moleculer's JSON serializer; every Moleculer node reads it.
    Json,
    /// MessagePack through rmp-serde; for clusters of steedos-wasm nodes only.
    MessagePack,
}

impl ClusterSettings {
    /// Every default, for a transporter URL (what `--nats URL` gives without a `[cluster]` table).
    pub fn new(transporter: impl Into<String>) -> Self {
        ClusterSettings {
            transporter: transporter.into(),
            node_id: None,
            namespace: None,
            protocol: 4,
            serializer: Serializer::Json,
            heartbeat_interval: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(30),
            advertise: true,
            publish: vec!["*".to_owned()],
            auth: ClusterAuth::None,
            tls: ClusterTls::default(),
        }
    }
}

/// A REST alias: `"GET /stock/:sku" = "inventory.get-item"`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alias {
    /// The HTTP method, upper case.
    pub method: String,
    /// The path's segments; a segment starting with `:` is a parameter.
    pub segments: Vec<String>,
    /// The action it calls.
    pub action: String,
}

impl Alias {
    /// The path parameters of `path` if it matches this alias.
    pub fn matches(&self, method: &str, path: &str) -> Option<Vec<(String, String)>> {
        if method != self.method {
            return None;
        }
        let parts: Vec<&str> = path
            .trim_matches('/')
            .split('/')
            .filter(|p| !p.is_empty())
            .collect();
        if parts.len() != self.segments.len() {
            return None;
        }
        let mut params = Vec::new();
        for (segment, part) in self.segments.iter().zip(parts) {
            match segment.strip_prefix(':') {
                Some(name) => params.push((name.to_string(), part.to_string())),
                None if segment == part => {}
                None => return None,
            }
        }
        Some(params)
    }

    pub(super) fn parse(route: &str, action: &str) -> Result<Alias, String> {
        let (method, path) = route
            .split_once(' ')
            .ok_or_else(|| format!("{route:?} is not a route (try \"GET /stock/:sku\")"))?;
        let method = method.to_ascii_uppercase();
        if !["GET", "POST", "PUT", "PATCH", "DELETE"].contains(&method.as_str()) {
            return Err(format!(
                "{method:?} is not a method (GET, POST, PUT, PATCH or DELETE)"
            ));
        }
        let path = path.trim();
        if !path.starts_with('/') {
            return Err(format!("{path:?}: a route's path starts with `/`"));
        }
        if action
            .split_once('.')
            .is_none_or(|(p, a)| p.is_empty() || a.is_empty())
        {
            return Err(format!(
                "{action:?} is not an action (try \"inventory.get-item\")"
            ));
        }
        let segments = path
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_string)
            .collect();
        Ok(Alias {
            method,
            segments,
            action: action.to_string(),
        })
    }
}

/// One package: where its component is, how to build it, its limits and its grants.
#[derive(Clone, Debug)]
pub struct PackageSpec {
    /// The package name; its actions are `<name>.<function>`.
    pub name: String,
    /// The package's source folder (`path`), absolute.
    pub source: Option<PathBuf>,
    /// The shell command that builds the component, run in [`PackageSpec::source`].
    pub build: Option<String>,
    /// The component file, absolute.
    pub component: PathBuf,
    /// How many live instances serve calls (the minimum, when the pool
    /// scales); each serves one call at a time.
    pub instances: u32,
    /// The most instances the pool grows to when calls wait (`instances =
    /// { min, max }`); equal to `instances` for a fixed pool.
    pub max_instances: u32,
    /// An instance above the minimum idle this long is stopped.
    pub scale_down_after: Duration,
    /// The circuit breaker of each action, when set.
    pub circuit: Option<CircuitPolicy>,
    /// Retries of idempotent actions.
    pub retry: RetryPolicy,
    /// Per-action settings from `[packages.<name>.actions.<action>]`.
    pub actions: Vec<ActionPolicy>,
    /// The memory limit of each instance, in bytes.
    pub memory: u64,
    /// Bytes of event deliveries the package may cause per second, over
    /// all its instances (`emit_rate`).
    pub emit_rate: u64,
    /// The deadline of one call.
    pub timeout: Duration,
    /// How many calls may wait for an idle instance before callers get `overloaded`.
    pub queue: usize,
    /// When a crashing package goes into backoff.
    pub restart: RestartPolicy,
    /// Event patterns this package subscribes to; see [`PackageSpec::subscribes_to`].
    pub events: Vec<String>,
    /// What this package may touch beyond its own sandbox.
    pub grants: Grants,
    /// `version`: the service is then `v2.<name>` (or `<word>.<name>`) to
    /// the cluster, as Moleculer names a versioned service.
    pub version: Option<ServiceVersion>,
    /// `settings`: the service's settings, sent verbatim in INFO.
    pub settings: serde_json::Map<String, serde_json::Value>,
    /// `dependencies`: services (here or on another node) that must be
    /// available before this package's `started` runs.
    pub dependencies: Vec<String>,
    /// How long `started` waits for [`PackageSpec::dependencies`] before the
    /// package fails (`dependency_timeout`).
    pub dependency_timeout: Duration,
    /// Limits on its outgoing HTTP requests (`[packages.<name>.http]`).
    pub http: super::http::HttpLimits,
}

/// How long a package's `started` waits for its dependencies by default.
pub const DEFAULT_DEPENDENCY_TIMEOUT: Duration = Duration::from_secs(30);

/// Who may call an action (Moleculer's `visibility`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Visibility {
    /// Anyone, and the gateway may expose it (the default).
    #[default]
    Published,
    /// Packages of this host and other nodes, not the gateway.
    Public,
    /// Packages of this host only: not announced to other nodes.
    Protected,
    /// Its own package only.
    Private,
}

impl Visibility {
    /// The word `visibility` is written with.
    pub fn name(self) -> &'static str {
        match self {
            Visibility::Published => "published",
            Visibility::Public => "public",
            Visibility::Protected => "protected",
            Visibility::Private => "private",
        }
    }
}

/// Moleculer's circuit breaker: once at least `min_calls` calls in `window`
/// failed at a ratio of `threshold` or more (crashes, timeouts, overload;
/// not the action's own errors), the action's circuit opens and calls fail
/// at once; after `half_open_after` one call probes, and its outcome closes
/// or reopens the circuit.
#[derive(Clone, Debug, PartialEq)]
pub struct CircuitPolicy {
    /// The failure ratio that opens the circuit, in 0..=1.
    pub threshold: f64,
    /// Calls in the window before the ratio counts.
    pub min_calls: u32,
    /// The window the ratio is measured over.
    pub window: Duration,
    /// How long an open circuit waits before a probe.
    pub half_open_after: Duration,
}

/// Retries, with exponential backoff, of actions marked `idempotent`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0: none).
    pub max: u32,
    /// The first delay; each next one doubles.
    pub delay: Duration,
    /// The longest delay.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max: 0,
            delay: Duration::from_millis(50),
            max_delay: Duration::from_secs(1),
        }
    }
}

/// Settings of one action.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionPolicy {
    /// The action's name within its package.
    pub name: String,
    /// Calls of this action that may wait at once (its own bulkhead).
    pub queue: Option<usize>,
    /// Whether it may be retried.
    pub idempotent: bool,
    /// An action (`pkg.action`) to call, with the same parameters, when this one fails.
    pub fallback: Option<String>,
    /// Who may call it.
    pub visibility: Visibility,
    /// Every other key of its table (`rest`, `trigger`, `visibility`,
    /// `cache`, free-form ones), as JSON, sent verbatim in INFO.
    pub properties: serde_json::Map<String, serde_json::Value>,
    /// Its `cache` property as the host reads it: answers kept in the store.
    pub cache: Option<super::kv::CachePolicy>,
}

/// A restart budget: more than `max_restarts` restarts within `within` puts
/// the package in backoff, doubling from `backoff` up to `max_backoff`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartPolicy {
    /// Restarts allowed within [`RestartPolicy::within`] before backoff (`max`).
    pub max_restarts: u32,
    /// The window the restarts are counted in.
    pub within: Duration,
    /// The first backoff.
    pub backoff: Duration,
    /// The longest backoff.
    pub max_backoff: Duration,
}

/// What a package may touch; nothing unless granted.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// Host folders preopened in the guest.
    pub dirs: Vec<DirGrant>,
    /// Environment variables, resolved: the fixed `env` ones, then the
    /// `env_inherit` ones that are set in the host's environment.
    pub env: Vec<(String, String)>,
    /// Call patterns; see [`Grants::may_call`].
    pub calls: Vec<String>,
    /// Event patterns it may emit or broadcast; see [`Grants::may_emit`].
    pub emits: Vec<String>,
    /// Origins it may send HTTP requests to (`grants.http`).
    pub http: Vec<super::http::HttpGrant>,
    /// Key-value buckets it may open (`wasi:keyvalue`), sorted.
    pub kv: Vec<String>,
}

/// A host folder preopened in the guest.
#[derive(Clone, Debug)]
pub struct DirGrant {
    /// The folder on the host, absolute; it existed when the manifest was read.
    pub host: PathBuf,
    /// The path the guest sees it at.
    pub guest: String,
    /// Whether the guest may only read it.
    pub read_only: bool,
}

impl PackageSpec {
    /// A package with every default, for a bare component (used by
    /// `steedos-wasm inspect` and tests). Its name is not validated.
    pub fn for_component(name: &str, component: PathBuf) -> PackageSpec {
        PackageSpec::with_limits(name, component, Limits::default())
    }

    pub(super) fn with_limits(name: &str, component: PathBuf, limits: Limits) -> PackageSpec {
        PackageSpec {
            name: name.to_owned(),
            source: None,
            build: None,
            component,
            instances: limits.instances,
            max_instances: limits.max_instances,
            scale_down_after: Duration::from_secs(30),
            circuit: None,
            retry: RetryPolicy::default(),
            actions: Vec::new(),
            memory: limits.memory,
            emit_rate: limits.emit_rate,
            timeout: limits.timeout,
            queue: limits.queue,
            restart: limits.restart,
            events: Vec::new(),
            grants: Grants::default(),
            version: None,
            settings: serde_json::Map::new(),
            dependencies: Vec::new(),
            dependency_timeout: DEFAULT_DEPENDENCY_TIMEOUT,
            http: super::http::HttpLimits::default(),
        }
    }

    /// The service's name in the cluster: `v2.greeter` for a versioned
    /// package, else its name.
    pub fn service_name(&self) -> String {
        match &self.version {
            Some(v) => format!("{}.{}", v.prefix(), self.name),
            None => self.name.clone(),
        }
    }

    /// The settings of action `name` (`[packages.<name>.actions.<action>]`), if any.
    pub fn action(&self, name: &str) -> Option<&ActionPolicy> {
        self.actions.iter().find(|a| a.name == name)
    }

    /// Whether this package subscribes to `event`: an exact name, a
    /// `prefix.*` pattern (any name under `prefix.`), or `*`.
    pub fn subscribes_to(&self, event: &str) -> bool {
        self.events
            .iter()
            .any(|pattern| pattern_matches(pattern, event))
    }
}

impl Grants {
    /// Whether this package may call `action` (`pkg.action`): granted by an
    /// exact name, a `pkg.*` pattern, or `*`.
    pub fn may_call(&self, action: &str) -> bool {
        self.calls
            .iter()
            .any(|pattern| pattern_matches(pattern, action))
    }

    /// Whether this package may emit or broadcast `event`: granted by an
    /// exact name, a `prefix.*` pattern, or `*`.
    pub fn may_emit(&self, event: &str) -> bool {
        self.emits
            .iter()
            .any(|pattern| pattern_matches(pattern, event))
    }
}

impl Default for RestartPolicy {
    /// At most 5 restarts within 10s, then backoff from 1s up to 30s.
    fn default() -> Self {
        RestartPolicy {
            max_restarts: 5,
            within: Duration::from_secs(10),
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Whether `name` matches `pattern`: exact, `prefix.*` or `*`.
pub fn pattern_matches(pattern: &str, name: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| !rest.is_empty()),
        None => pattern == name,
    }
}

// ---------------------------------------------------------------------------
// The limits a package may set, and `[defaults]` may set for all of them.

#[derive(Clone, Debug)]
pub(super) struct Limits {
    pub(super) instances: u32,
    pub(super) max_instances: u32,
    pub(super) memory: u64,
    pub(super) emit_rate: u64,
    pub(super) timeout: Duration,
    pub(super) queue: usize,
    pub(super) restart: RestartPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            instances: DEFAULT_INSTANCES,
            max_instances: DEFAULT_INSTANCES,
            memory: DEFAULT_MEMORY,
            emit_rate: DEFAULT_EMIT_RATE,
            timeout: DEFAULT_TIMEOUT,
            queue: DEFAULT_QUEUE,
            restart: RestartPolicy::default(),
        }
    }
}

// ---------------------------------------------------------------------------
// The file as written. Each table is read with serde on its own, so a bad
// value's error carries the value's span; ranges are checked while reading
// for the same reason.

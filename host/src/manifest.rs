//! An app's `steedos.toml`: parsing and validation.
//!
//! An app is a folder holding a `steedos.toml` that names its packages, their
//! limits, their scale and what each may touch. [`Manifest::load`] reads it
//! into one [`PackageSpec`] per package, with every default filled in and
//! every relative path resolved against the app folder.
//!
//! # Example
//!
//! ```
//! use std::path::Path;
//! use std::time::Duration;
//! use steedos_wasm::manifest::Manifest;
//!
//! let text = r#"
//! [app]
//! name = "shop"
//!
//! [defaults]
//! timeout = "2s"
//!
//! [packages.inventory]
//! component = "inventory.wasm"
//! instances = 2
//! memory = "32 MiB"
//! events = ["order.*"]
//!
//! [packages.inventory.grants]
//! env = { MODE = "fast" }
//! calls = ["greeter.hello"]
//! "#;
//! let manifest = Manifest::parse(text, Path::new("/srv/shop/steedos.toml"))?;
//! let inventory = &manifest.packages[0];
//! assert_eq!(inventory.component, Path::new("/srv/shop/inventory.wasm"));
//! assert_eq!(inventory.memory, 32 << 20);
//! assert_eq!(inventory.timeout, Duration::from_secs(2));
//! assert!(inventory.subscribes_to("order.placed"));
//! assert!(inventory.grants.may_call("greeter.hello"));
//! assert!(!inventory.grants.may_call("greeter.goodbye"));
//! # Ok::<(), steedos_wasm::manifest::ManifestError>(())
//! ```
//!
//! # Keys
//!
//! - `[app]`: `name` (default: the folder name), `max_call_depth` (1..=1024,
//!   default 16), `cache_dir` (default `.steedos/cache`), `shutdown_timeout`
//!   (0s..=1h, default 10s), `max_instances` (instances the host holds at
//!   once over all packages, 1..=100000, default 1000), `max_component_size`
//!   (the largest component read or deployed, 1 KiB..=1 GiB, default 64 MiB).
//! - `[defaults]`: the limits below, for every package that does not set them.
//! - `[packages.<name>]`: `component` (required), `path` and `build` (the
//!   source folder and the shell command that builds it there), the limits
//!   `instances` (1..=1024, default 1), `memory` (64 KiB..=4 GiB, default
//!   64 MiB), `timeout` (1ms..=1h, default 5s), `queue` (0..=100000, default
//!   64), `restart` (`{ max, within, backoff, max_backoff }`, default
//!   `{ max = 5, within = "10s", backoff = "1s", max_backoff = "30s" }`), and
//!   `events`.
//! - `[cluster]` (optional; without it the host joins no cluster):
//!   `transporter` (`nats://host:port`, required), `node_id` (default:
//!   `<hostname>-<pid>`), `namespace`, `protocol` (4 for Moleculer 0.14 and
//!   Steedos, the default; 5 for Moleculer 0.15), `serializer` (`"json"`,
//!   the default, or `"msgpack"` between steedos-wasm nodes only),
//!   `heartbeat_interval` (default 5s), `heartbeat_timeout` (default 30s,
//!   more than the interval), `advertise` (default true: offer this host's
//!   packages to the cluster), `publish` (the actions announced to and
//!   served to the cluster, default `["*"]`), one kind of credentials
//!   (`token_env`/`token_file`, `user` with `password_env`/`password_file`,
//!   `nkey_seed_env`/`nkey_seed_file`, or `credentials`, a `.creds` file),
//!   and TLS (`tls`, `tls_ca`, `tls_cert` with `tls_key`); the transporter
//!   may be `nats://` or `tls://`. See [`transport`](crate::transport).
//! - `[packages.<name>.grants]`: nothing unless granted. `dirs` (host folders
//!   preopened in the guest, `{ host, guest, read_only }`; `host` must exist,
//!   and may neither be, hold, nor sit inside a folder of the host's own
//!   state: `.steedos` of the app, `cache_dir`, or [`host_state_dir`]; that
//!   is checked after symbolic links are resolved),
//!   `env` (fixed variables), `env_inherit` (variables copied from the host's
//!   environment when set there), `calls` (the actions it may call), `emits`
//!   (the events it may emit or broadcast, as event patterns; none unless
//!   granted).
//!
//! A package name is lowercase ASCII letters, digits and `-`, starts with a
//! letter, and is at most 64 characters. Relative paths resolve against the
//! app folder, except `component`, which resolves against `path` when given.
//!
//! Sizes are human (`"32 MiB"`, `"512KiB"`, `"1GB"`) or a number of bytes;
//! durations are humantime (`"500ms"`, `"2s"`, `"1m"`). Event patterns are an
//! exact name, a prefix followed by `.*`, or `*`; call patterns are an exact
//! `pkg.action`, `pkg.*`, or `*`. A `prefix.*` pattern matches every name
//! that starts with `prefix.`, however deep.
//!
//! # Errors
//!
//! A TOML syntax error, an unknown top-level key, or a bad `[app]` or
//! `[defaults]` table fails the whole manifest. A bad `[packages.<name>]`
//! table rejects that package alone: it lands in [`Manifest::rejected`] and
//! every other package still loads. Either way the error names the file, the
//! line and column of the offending key or value, the package, and the key
//! path, the way cargo reports manifest errors:
//!
//! ```text
//! steedos.toml:14:10: package `chaos`: memory: "12 parsecs" is not a size (try "64 MiB")
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::marker::PhantomData;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytesize::ByteSize;
use serde::Deserialize;
use serde::de::{self, DeserializeOwned, Deserializer, Visitor};
use toml::Spanned;
use toml::de::{DeString, DeTable, DeValue, ValueDeserializer};

/// The manifest's file name inside an app folder.
pub const FILE_NAME: &str = "steedos.toml";

const DEFAULT_MAX_CALL_DEPTH: u32 = 16;
const DEFAULT_CACHE_DIR: &str = ".steedos/cache";
const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_INSTANCES: u32 = 1;
const DEFAULT_MEMORY: u64 = 64 << 20;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
const DEFAULT_QUEUE: usize = 64;

const MIN_MEMORY: u64 = 64 << 10;
const MAX_MEMORY: u64 = 4 << 30;
const MAX_PACKAGE_NAME: usize = 64;
const HOUR_MS: u64 = 60 * 60 * 1000;
const DAY_MS: u64 = 24 * HOUR_MS;

const TOP_LEVEL_KEYS: &str = "`app`, `cluster`, `defaults`, `gateway`, `packages`";
const PACKAGE_NAME_RULE: &str = "a package name is lowercase ASCII letters, digits and `-`, \
     starts with a letter, and is at most 64 characters";

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
    /// The packages that passed validation, in file order.
    pub packages: Vec<PackageSpec>,
    /// One [`ManifestError::Invalid`] per package that failed validation, in
    /// file order; the rest of the app runs without them.
    pub rejected: Vec<ManifestError>,
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
            max_body: 1 << 20,
            header_timeout: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            body_timeout: Duration::from_secs(5),
            min_body_rate: 1024,
            max_connections: 4096,
            ops: OpsAccess::Public,
            admin_token: None,
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
    /// The transporter, `nats://host:port`.
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

    fn parse(route: &str, action: &str) -> Result<Alias, String> {
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

/// Why a manifest, or one package in it, could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest file could not be read.
    #[error("cannot read {}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The file is not valid TOML.
    #[error("{}:{line}:{column}: invalid TOML: {message}", file.display())]
    Syntax {
        /// The manifest file.
        file: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A key is unknown or missing, or a value has the wrong type or is out of range.
    #[error("{}:{line}:{column}: {}{message}", file.display(), package_prefix(package.as_deref()))]
    Invalid {
        /// The manifest file.
        file: PathBuf,
        /// 1-based line of the offending key or value.
        line: usize,
        /// 1-based column (in characters) of the offending key or value.
        column: usize,
        /// The package it rejects; `None` when it fails the whole manifest.
        package: Option<String>,
        /// What is wrong, starting with the key path (`grants.dirs[0].host: ...`).
        message: String,
    },
}

impl ManifestError {
    /// The package this error rejects, if it rejects one package rather than the manifest.
    pub fn package(&self) -> Option<&str> {
        match self {
            ManifestError::Invalid { package, .. } => package.as_deref(),
            ManifestError::Io { .. } | ManifestError::Syntax { .. } => None,
        }
    }
}

fn package_prefix(package: Option<&str>) -> String {
    package.map_or_else(String::new, |name| format!("package `{name}`: "))
}

impl Manifest {
    /// Reads and validates a manifest. `path` is an app folder (then
    /// `<path>/steedos.toml`) or the toml file itself.
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let file = if path.is_dir() {
            path.join(FILE_NAME)
        } else {
            path.to_path_buf()
        };
        let text = std::fs::read_to_string(&file).map_err(|source| ManifestError::Io {
            path: file.clone(),
            source,
        })?;
        Self::parse(&text, &file)
    }

    /// Validates manifest text. `path` names the file in messages, and its
    /// parent is the app folder that relative paths resolve against.
    pub fn parse(text: &str, path: &Path) -> Result<Manifest, ManifestError> {
        let source = Source::new(text, path)?;
        let root = DeTable::parse(text).map_err(|error| source.syntax_error(&error))?;
        let sections = Sections::split(&source, root.get_ref())?;
        let app = source.app(sections.app)?;
        let gateway = source.gateway(sections.gateway)?;
        let cluster = sections
            .cluster
            .map(|value| source.cluster(value))
            .transpose()?;
        let defaults = source.defaults(sections.defaults)?;
        let protected: Vec<PathBuf> = app
            .protected_dirs(&source.dir)
            .iter()
            .map(|dir| resolve_links(dir))
            .collect();
        let (packages, rejected) = source.packages(sections.packages, &defaults, &protected)?;
        Ok(Manifest {
            path: path.to_path_buf(),
            dir: source.dir,
            app,
            gateway,
            cluster,
            packages,
            rejected,
        })
    }
}

impl PackageSpec {
    /// A package with every default, for a bare component (used by
    /// `steedos-wasm inspect` and tests). Its name is not validated.
    pub fn for_component(name: &str, component: PathBuf) -> PackageSpec {
        PackageSpec::with_limits(name, component, Limits::default())
    }

    fn with_limits(name: &str, component: PathBuf, limits: Limits) -> PackageSpec {
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
            timeout: limits.timeout,
            queue: limits.queue,
            restart: limits.restart,
            events: Vec::new(),
            grants: Grants::default(),
        }
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
struct Limits {
    instances: u32,
    max_instances: u32,
    memory: u64,
    timeout: Duration,
    queue: usize,
    restart: RestartPolicy,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            instances: DEFAULT_INSTANCES,
            max_instances: DEFAULT_INSTANCES,
            memory: DEFAULT_MEMORY,
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

type CallDepth = CountIn<1, 1024>;
type InstanceCount = CountIn<1, 1024>;
type QueueLength = CountIn<0, 100_000>;
type RestartCount = CountIn<0, 10_000>;
type CallTimeout = DurationIn<1, HOUR_MS>;
type ShutdownTimeout = DurationIn<0, HOUR_MS>;
type RestartWindow = DurationIn<1, DAY_MS>;
type Backoff = DurationIn<1, HOUR_MS>;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawGateway {
    listen: Option<Text>,
    expose: Option<Vec<CallPattern>>,
    aliases: Option<std::collections::BTreeMap<String, Text>>,
    max_body: Option<BodySize>,
    header_timeout: Option<DurationIn<1, HOUR_MS>>,
    idle_timeout: Option<DurationIn<1, DAY_MS>>,
    body_timeout: Option<DurationIn<1, HOUR_MS>>,
    min_body_rate: Option<BodySize>,
    max_connections: Option<CountIn<1, 1_000_000>>,
    ops: Option<Text>,
    admin_token_env: Option<EnvName>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawCluster {
    transporter: Text,
    node_id: Option<SubjectToken>,
    namespace: Option<SubjectToken>,
    protocol: Option<CountIn<4, 5>>,
    serializer: Option<Text>,
    heartbeat_interval: Option<DurationIn<100, HOUR_MS>>,
    heartbeat_timeout: Option<DurationIn<100, DAY_MS>>,
    advertise: Option<bool>,
    publish: Option<Vec<CallPattern>>,
    token_env: Option<EnvName>,
    token_file: Option<PathValue>,
    user: Option<Text>,
    password_env: Option<EnvName>,
    password_file: Option<PathValue>,
    nkey_seed_env: Option<EnvName>,
    nkey_seed_file: Option<PathValue>,
    credentials: Option<PathValue>,
    tls: Option<bool>,
    tls_ca: Option<PathValue>,
    tls_cert: Option<PathValue>,
    tls_key: Option<PathValue>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawApp {
    name: Option<Text>,
    max_call_depth: Option<CallDepth>,
    cache_dir: Option<PathValue>,
    shutdown_timeout: Option<ShutdownTimeout>,
    max_instances: Option<CountIn<1, 100_000>>,
    max_component_size: Option<SizeIn<{ 1 << 10 }, { 1 << 30 }>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawLimits {
    instances: Option<Instances>,
    memory: Option<Size>,
    timeout: Option<CallTimeout>,
    queue: Option<QueueLength>,
    restart: Option<Spanned<RawRestart>>,
}

#[derive(Clone, Copy, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { max = 5, within = \"10s\", backoff = \"1s\", max_backoff = \"30s\" }"
)]
struct RawRestart {
    max: Option<RestartCount>,
    within: Option<RestartWindow>,
    backoff: Option<Backoff>,
    max_backoff: Option<Backoff>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a package table")]
struct RawPackage {
    path: Option<PathValue>,
    build: Option<Spanned<Text>>,
    component: PathValue,
    instances: Option<Instances>,
    memory: Option<Size>,
    timeout: Option<CallTimeout>,
    queue: Option<QueueLength>,
    restart: Option<Spanned<RawRestart>>,
    #[serde(default)]
    events: Vec<EventPattern>,
    #[serde(default)]
    grants: RawGrants,
    scale_down_after: Option<DurationIn<1, DAY_MS>>,
    circuit: Option<RawCircuit>,
    retry: Option<RawRetry>,
    #[serde(default)]
    actions: std::collections::BTreeMap<String, RawAction>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { threshold = 0.5, min_calls = 20, window = \"60s\", half_open_after = \"10s\" }"
)]
struct RawCircuit {
    threshold: Option<f64>,
    min_calls: Option<CountIn<1, 1_000_000>>,
    window: Option<DurationIn<1, DAY_MS>>,
    half_open_after: Option<DurationIn<1, DAY_MS>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { max = 3, delay = \"50ms\", max_delay = \"1s\" }"
)]
struct RawRetry {
    max: CountIn<0, 100>,
    delay: Option<DurationIn<1, HOUR_MS>>,
    max_delay: Option<DurationIn<1, HOUR_MS>>,
}

#[derive(Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table of `queue`, `idempotent`, `fallback`"
)]
struct RawAction {
    queue: Option<QueueLength>,
    #[serde(default)]
    idempotent: bool,
    fallback: Option<CallPattern>,
}

/// `instances = 2` or `instances = { min = 1, max = 8 }`.
#[derive(Clone, Copy)]
struct Instances {
    min: u32,
    max: u32,
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(InstancesVisitor)
    }
}

struct InstancesVisitor;

impl<'de> Visitor<'de> for InstancesVisitor {
    type Value = Instances;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number of instances, or a table like { min = 1, max = 8 }")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Instances, E> {
        let n = CountVisitor::<1, 1024>.visit_i64::<E>(value)?.0;
        Ok(Instances { min: n, max: n })
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Instances, E> {
        let n = CountVisitor::<1, 1024>.visit_u64::<E>(value)?.0;
        Ok(Instances { min: n, max: n })
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Instances, A::Error> {
        let (mut min, mut max) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "min" => min = Some(map.next_value::<InstanceCount>()?.0),
                "max" => max = Some(map.next_value::<InstanceCount>()?.0),
                other => {
                    return Err(de::Error::custom(format!(
                        "unknown key `{other}`, expected `min` or `max`"
                    )));
                }
            }
        }
        let min = min.unwrap_or(1);
        let max = max.ok_or_else(|| de::Error::custom("`max` is missing"))?;
        if max < min {
            return Err(de::Error::custom(format!(
                "max ({max}) is below min ({min})"
            )));
        }
        Ok(Instances { min, max })
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawGrants {
    #[serde(default)]
    dirs: Vec<RawDirGrant>,
    #[serde(default)]
    env: BTreeMap<EnvName, String>,
    #[serde(default)]
    env_inherit: Vec<Spanned<EnvName>>,
    #[serde(default)]
    calls: Vec<CallPattern>,
    #[serde(default)]
    emits: Vec<EventPattern>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { host = \"data\", guest = \"/data\" }"
)]
struct RawDirGrant {
    host: Spanned<PathValue>,
    guest: Text,
    #[serde(default)]
    read_only: bool,
}

impl RawLimits {
    fn over(&self, base: &Limits) -> Limits {
        Limits {
            instances: self.instances.map_or(base.instances, |n| n.min),
            max_instances: self.instances.map_or(base.max_instances, |n| n.max),
            memory: self.memory.map_or(base.memory, |size| size.0),
            timeout: self.timeout.map_or(base.timeout, |d| d.0),
            queue: self.queue.map_or(base.queue, |n| n.0 as usize),
            restart: self
                .restart
                .as_ref()
                .map_or_else(|| base.restart.clone(), |r| r.get_ref().over(&base.restart)),
        }
    }
}

impl RawPackage {
    fn limits(&self) -> RawLimits {
        RawLimits {
            instances: self.instances,
            memory: self.memory,
            timeout: self.timeout,
            queue: self.queue,
            restart: self.restart.clone(),
        }
    }
}

impl RawRestart {
    fn over(&self, base: &RestartPolicy) -> RestartPolicy {
        RestartPolicy {
            max_restarts: self.max.map_or(base.max_restarts, |n| n.0),
            within: self.within.map_or(base.within, |d| d.0),
            backoff: self.backoff.map_or(base.backoff, |d| d.0),
            max_backoff: self.max_backoff.map_or(base.max_backoff, |d| d.0),
        }
    }
}

/// `Err` with a message when backoff cannot double up to max_backoff.
fn check_restart(policy: &RestartPolicy) -> Result<(), String> {
    if policy.max_backoff < policy.backoff {
        return Err(format!(
            "max_backoff ({}) is less than backoff ({})",
            humantime::format_duration(policy.max_backoff),
            humantime::format_duration(policy.backoff)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Resolving: from the file as written to the specs the host runs.

/// The text being parsed, for turning spans into `file:line:column`.
struct Source<'a> {
    text: &'a str,
    file: &'a Path,
    dir: PathBuf,
}

/// The top-level tables.
struct Sections<'t, 'i> {
    app: Option<&'t Spanned<DeValue<'i>>>,
    cluster: Option<&'t Spanned<DeValue<'i>>>,
    gateway: Option<&'t Spanned<DeValue<'i>>>,
    defaults: Option<&'t Spanned<DeValue<'i>>>,
    packages: Option<&'t Spanned<DeValue<'i>>>,
}

/// One table of the manifest being read: errors in it name the key path
/// from `prefix` down, and the package it rejects (if any).
struct Scope<'s, 'i> {
    source: &'s Source<'s>,
    value: &'s Spanned<DeValue<'i>>,
    prefix: &'static str,
    package: Option<&'s str>,
}

impl<'t, 'i> Sections<'t, 'i> {
    fn split(source: &Source<'_>, root: &'t DeTable<'i>) -> Result<Self, ManifestError> {
        let mut sections = Sections {
            app: None,
            cluster: None,
            gateway: None,
            defaults: None,
            packages: None,
        };
        for (key, value) in root.iter() {
            match key.get_ref().as_ref() {
                "app" => sections.app = Some(value),
                "gateway" => sections.gateway = Some(value),
                "cluster" => sections.cluster = Some(value),
                "defaults" => sections.defaults = Some(value),
                "packages" => sections.packages = Some(value),
                other => {
                    let message =
                        format!("unknown key `{other}`, expected one of {TOP_LEVEL_KEYS}");
                    return Err(source.error(key.span(), None, message));
                }
            }
        }
        Ok(sections)
    }
}

impl<'a> Source<'a> {
    fn new(text: &'a str, file: &'a Path) -> Result<Self, ManifestError> {
        let parent = file
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = std::path::absolute(parent).map_err(|source| ManifestError::Io {
            path: file.to_path_buf(),
            source,
        })?;
        Ok(Source { text, file, dir })
    }

    /// 1-based line and column (in characters) of a byte offset.
    fn position(&self, offset: usize) -> (usize, usize) {
        let before = self.text.get(..offset).unwrap_or(self.text);
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        let line = before.matches('\n').count() + 1;
        let column = before[line_start..].chars().count() + 1;
        (line, column)
    }

    fn syntax_error(&self, error: &toml::de::Error) -> ManifestError {
        let (line, column) = self.position(error.span().map_or(0, |span| span.start));
        ManifestError::Syntax {
            file: self.file.to_path_buf(),
            line,
            column,
            message: error.message().trim_end().to_owned(),
        }
    }

    fn error(&self, span: Range<usize>, package: Option<&str>, message: String) -> ManifestError {
        let (line, column) = self.position(span.start);
        ManifestError::Invalid {
            file: self.file.to_path_buf(),
            line,
            column,
            package: package.map(str::to_owned),
            message,
        }
    }

    fn app(&self, value: Option<&Spanned<DeValue<'_>>>) -> Result<AppSettings, ManifestError> {
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

    fn gateway(
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
        })
    }

    fn cluster(&self, value: &Spanned<DeValue<'_>>) -> Result<ClusterSettings, ManifestError> {
        let scope = Scope::new(self, value, "cluster", None);
        let raw: RawCluster = scope.deserialize()?;
        let defaults = ClusterSettings::new(raw.transporter.0.clone());
        let at = |key: &str| find_key(value.get_ref(), key).unwrap_or_else(|| value.span());
        if !raw.transporter.0.starts_with("nats://") && !raw.transporter.0.starts_with("tls://") {
            let message = format!(
                "{:?} is not a NATS URL (try \"nats://127.0.0.1:4222\")",
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
        let secret = |env: Option<EnvName>, file: Option<PathValue>, key: &str| match (env, file) {
            (Some(_), Some(_)) => Err(scope.error(
                at(&format!("{key}_file")),
                format!("set `{key}_env` or `{key}_file`, not both"),
            )),
            (Some(env), None) => Ok(Some(Secret::Env(env.0))),
            (None, Some(file)) => Ok(Some(Secret::File(self.dir.join(file.0)))),
            (None, None) => Ok(None),
        };
        let token = secret(raw.token_env, raw.token_file, "token")?;
        let password = secret(raw.password_env, raw.password_file, "password")?;
        let nkey = secret(raw.nkey_seed_env, raw.nkey_seed_file, "nkey_seed")?;
        let credentials = raw.credentials.map(|p| self.dir.join(p.0));
        let auth = match (token, raw.user, password, nkey, credentials) {
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
        let client = match (raw.tls_cert, raw.tls_key) {
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
        let tls = ClusterTls {
            required: raw.tls.unwrap_or(false),
            ca: raw.tls_ca.map(|p| self.dir.join(p.0)),
            client,
        };
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

    fn folder_name(&self) -> String {
        self.dir.file_name().map_or_else(
            || "app".to_owned(),
            |name| name.to_string_lossy().into_owned(),
        )
    }

    fn defaults(&self, value: Option<&Spanned<DeValue<'_>>>) -> Result<Limits, ManifestError> {
        let Some(value) = value else {
            return Ok(Limits::default());
        };
        let scope = Scope::new(self, value, "defaults", None);
        let raw: RawLimits = scope.deserialize()?;
        scope.limits(&raw, &Limits::default())
    }

    fn packages(
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

    fn package(
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
        let raw: RawPackage = scope.deserialize()?;
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
        spec.events = raw.events.into_iter().map(|pattern| pattern.0).collect();
        spec.grants = scope.grants(raw.grants, protected)?;
        if let Some(d) = raw.scale_down_after {
            spec.scale_down_after = d.0;
        }
        if let Some(c) = raw.circuit {
            let threshold = c.threshold.unwrap_or(0.5);
            if !(threshold > 0.0 && threshold <= 1.0) {
                return Err(scope.error(
                    value.span(),
                    format!("circuit.threshold: {threshold} is out of range (0..=1)"),
                ));
            }
            spec.circuit = Some(CircuitPolicy {
                threshold,
                min_calls: c.min_calls.map_or(20, |n| n.0),
                window: c.window.map_or(Duration::from_secs(60), |d| d.0),
                half_open_after: c.half_open_after.map_or(Duration::from_secs(10), |d| d.0),
            });
        }
        if let Some(r) = raw.retry {
            let base = RetryPolicy::default();
            spec.retry = RetryPolicy {
                max: r.max.0,
                delay: r.delay.map_or(base.delay, |d| d.0),
                max_delay: r.max_delay.map_or(base.max_delay, |d| d.0),
            };
        }
        spec.actions = raw
            .actions
            .into_iter()
            .map(|(name, a)| ActionPolicy {
                name,
                queue: a.queue.map(|q| q.0 as usize),
                idempotent: a.idempotent,
                fallback: a.fallback.map(|f| f.0),
            })
            .collect();
        Ok(spec)
    }
}

impl<'s, 'i> Scope<'s, 'i> {
    fn new(
        source: &'s Source<'s>,
        value: &'s Spanned<DeValue<'i>>,
        prefix: &'static str,
        package: Option<&'s str>,
    ) -> Self {
        Scope {
            source,
            value,
            prefix,
            package,
        }
    }

    fn deserialize<T: DeserializeOwned>(&self) -> Result<T, ManifestError> {
        T::deserialize(ValueDeserializer::from(self.value.clone()))
            .map_err(|error| self.toml_error(&error))
    }

    fn toml_error(&self, error: &toml::de::Error) -> ManifestError {
        let span = error.span().unwrap_or_else(|| self.value.span());
        // serde reports an unknown key at the key: the path is the table holding it.
        let at_key = error.message().starts_with("unknown field");
        self.error_at(span, at_key, describe(error.message()))
    }

    /// An error at `span`, prefixed with the key path that leads to it.
    fn error(&self, span: Range<usize>, message: String) -> ManifestError {
        self.error_at(span, false, message)
    }

    fn error_at(&self, span: Range<usize>, at_key: bool, message: String) -> ManifestError {
        let steps = if self.value.span() == span {
            Vec::new()
        } else {
            locate(self.value.get_ref(), &span, at_key).unwrap_or_default()
        };
        let path = render_path(self.prefix, &steps);
        let message = if path.is_empty() {
            message
        } else {
            format!("{path}: {message}")
        };
        self.source.error(span, self.package, message)
    }

    fn limits(&self, raw: &RawLimits, base: &Limits) -> Result<Limits, ManifestError> {
        let limits = raw.over(base);
        if let Some(restart) = &raw.restart {
            check_restart(&limits.restart)
                .map_err(|message| self.error(restart.span(), message))?;
        }
        Ok(limits)
    }

    fn grants(&self, raw: RawGrants, protected: &[PathBuf]) -> Result<Grants, ManifestError> {
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
        Ok(Grants {
            dirs,
            env,
            calls,
            emits,
        })
    }

    fn dir_grant(
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

    fn inherit(&self, name: &str) -> Option<(String, String)> {
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
fn resolve_links(path: &Path) -> PathBuf {
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

/// serde speaks of fields, maps and sequences; a TOML author writes keys,
/// tables and arrays.
fn describe(message: &str) -> String {
    const WORDS: [(&str, &str); 6] = [
        ("unknown field", "unknown key"),
        ("missing field", "missing key"),
        ("invalid type: map", "invalid type: table"),
        ("expected a map", "expected a table"),
        ("invalid type: sequence", "invalid type: array"),
        ("expected a sequence", "expected an array"),
    ];
    WORDS
        .iter()
        .fold(message.trim_end().to_owned(), |message, (from, to)| {
            message.replace(from, to)
        })
}

/// The span of `key`'s value in `table`, if the table has it.
fn find_key(table: &DeValue<'_>, key: &str) -> Option<Range<usize>> {
    let DeValue::Table(table) = table else {
        return None;
    };
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v.span())
}

// ---------------------------------------------------------------------------
// Key paths: which key an error's span belongs to.

enum Step {
    Key(String),
    Index(usize),
}

/// The path from `value` down to the key or value at `span`, or `None` if
/// `span` is not inside `value`. Searches every child, because a table
/// opened by a `[header]` has the header's span, not its contents'.
fn locate(value: &DeValue<'_>, span: &Range<usize>, at_key: bool) -> Option<Vec<Step>> {
    match value {
        DeValue::Table(table) => table.iter().find_map(|(key, child)| {
            if at_key && covers(&key.span(), span) {
                return Some(Vec::new());
            }
            let step = || Step::Key(key.get_ref().to_string());
            locate_child(child, span, at_key).map(|steps| prepend(step(), steps))
        }),
        DeValue::Array(array) => array.iter().enumerate().find_map(|(index, child)| {
            locate_child(child, span, at_key).map(|steps| prepend(Step::Index(index), steps))
        }),
        _ => None,
    }
}

fn locate_child(
    child: &Spanned<DeValue<'_>>,
    span: &Range<usize>,
    at_key: bool,
) -> Option<Vec<Step>> {
    if child.span() == *span {
        return Some(Vec::new());
    }
    locate(child.get_ref(), span, at_key).or_else(|| covers(&child.span(), span).then(Vec::new))
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

fn prepend(step: Step, mut steps: Vec<Step>) -> Vec<Step> {
    steps.insert(0, step);
    steps
}

fn render_path(prefix: &str, steps: &[Step]) -> String {
    let mut path = prefix.to_owned();
    for step in steps {
        match step {
            Step::Key(key) if path.is_empty() => path.push_str(key),
            Step::Key(key) => {
                path.push('.');
                path.push_str(key);
            }
            Step::Index(index) => path.push_str(&format!("[{index}]")),
        }
    }
    path
}

// ---------------------------------------------------------------------------
// Values that are checked as they are read.

/// An integer in `MIN..=MAX`.
#[derive(Clone, Copy)]
struct CountIn<const MIN: u32, const MAX: u32>(u32);

struct CountVisitor<const MIN: u32, const MAX: u32>;

impl<'de, const MIN: u32, const MAX: u32> Deserialize<'de> for CountIn<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_u32(CountVisitor::<MIN, MAX>)
    }
}

impl<const MIN: u32, const MAX: u32> Visitor<'_> for CountVisitor<MIN, MAX> {
    type Value = CountIn<MIN, MAX>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "an integer from {MIN} to {MAX}")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        match u32::try_from(value) {
            Ok(count) => self.visit_u32(count),
            Err(_) => Err(E::custom(format!(
                "{value} is out of range ({MIN}..={MAX})"
            ))),
        }
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        match u32::try_from(value) {
            Ok(count) => self.visit_u32(count),
            Err(_) => Err(E::custom(format!(
                "{value} is out of range ({MIN}..={MAX})"
            ))),
        }
    }

    fn visit_u32<E: de::Error>(self, value: u32) -> Result<Self::Value, E> {
        if (MIN..=MAX).contains(&value) {
            Ok(CountIn(value))
        } else {
            Err(E::custom(format!(
                "{value} is out of range ({MIN}..={MAX})"
            )))
        }
    }
}

/// A memory size in bytes, in `MIN_MEMORY..=MAX_MEMORY`: `"32 MiB"` or a number of bytes.
#[derive(Clone, Copy)]
struct SizeIn<const MIN: u64, const MAX: u64>(u64);

/// A memory limit.
type Size = SizeIn<MIN_MEMORY, MAX_MEMORY>;
/// A request body limit: 1 byte to 1 GiB.
type BodySize = SizeIn<1, { 1 << 30 }>;

struct SizeVisitor<const MIN: u64, const MAX: u64>;

impl<'de, const MIN: u64, const MAX: u64> Deserialize<'de> for SizeIn<MIN, MAX> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(SizeVisitor::<MIN, MAX>)
    }
}

impl<const MIN: u64, const MAX: u64> SizeIn<MIN, MAX> {
    fn checked(bytes: u64, written: &dyn fmt::Display) -> Result<Self, String> {
        if (MIN..=MAX).contains(&bytes) {
            Ok(SizeIn(bytes))
        } else {
            let range = |n: u64| match n {
                n if n >= 1 << 10 => ByteSize(n).display().iec().to_string().replace(".0 ", " "),
                n => format!("{n} B"),
            };
            Err(format!(
                "{written} is out of range ({}..={})",
                range(MIN),
                range(MAX)
            ))
        }
    }
}

impl<const MIN: u64, const MAX: u64> Visitor<'_> for SizeVisitor<MIN, MAX> {
    type Value = SizeIn<MIN, MAX>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a size like \"64 MiB\", or a number of bytes")
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<Self::Value, E> {
        let written = format!("{value:?}");
        let size = value
            .parse::<ByteSize>()
            .map_err(|_| E::custom(format!("{written} is not a size (try \"64 MiB\")")))?;
        SizeIn::checked(size.as_u64(), &written).map_err(E::custom)
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Self::Value, E> {
        let bytes = u64::try_from(value).unwrap_or(0);
        SizeIn::checked(bytes, &format_args!("{value} bytes")).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Self::Value, E> {
        SizeIn::checked(value, &format_args!("{value} bytes")).map_err(E::custom)
    }
}

/// A value written as a TOML string and checked while it is read.
trait FromTomlStr: Sized {
    /// What a good value looks like, for "invalid type" messages.
    const EXPECTING: &'static str;

    fn from_toml_str(text: &str) -> Result<Self, String>;
}

struct StrVisitor<T>(PhantomData<T>);

impl<T: FromTomlStr> Visitor<'_> for StrVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_str<E: de::Error>(self, value: &str) -> Result<T, E> {
        T::from_toml_str(value).map_err(E::custom)
    }
}

macro_rules! deserialize_from_toml_str {
    ($($ty:ty),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                deserializer.deserialize_str(StrVisitor(PhantomData))
            }
        }
    )*};
}

deserialize_from_toml_str!(
    Text,
    PathValue,
    EnvName,
    EventPattern,
    CallPattern,
    SubjectToken
);

/// A duration in `MIN_MS..=MAX_MS` milliseconds, written the humantime way.
#[derive(Clone, Copy)]
struct DurationIn<const MIN_MS: u64, const MAX_MS: u64>(Duration);

impl<'de, const MIN_MS: u64, const MAX_MS: u64> Deserialize<'de> for DurationIn<MIN_MS, MAX_MS> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

impl<const MIN_MS: u64, const MAX_MS: u64> FromTomlStr for DurationIn<MIN_MS, MAX_MS> {
    const EXPECTING: &'static str = "a duration like \"5s\"";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        let duration = humantime::parse_duration(text)
            .map_err(|_| format!("{text:?} is not a duration (try \"5s\")"))?;
        let (min, max) = (Duration::from_millis(MIN_MS), Duration::from_millis(MAX_MS));
        if (min..=max).contains(&duration) {
            Ok(DurationIn(duration))
        } else {
            let (min, max) = (
                humantime::format_duration(min),
                humantime::format_duration(max),
            );
            Err(format!("{text:?} is out of range ({min}..={max})"))
        }
    }
}

/// A non-empty string.
struct Text(String);

impl FromTomlStr for Text {
    const EXPECTING: &'static str = "a string";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".to_owned());
        }
        Ok(Text(text.to_owned()))
    }
}

/// A node id or namespace: it becomes part of NATS subjects, so no
/// whitespace, `.`, `*` or `>`.
struct SubjectToken(String);

impl FromTomlStr for SubjectToken {
    const EXPECTING: &'static str = "a name";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        match crate::node_id::token_problem(text) {
            Some(problem) => Err(problem),
            None => Ok(SubjectToken(text.to_owned())),
        }
    }
}

/// A non-empty path.
struct PathValue(PathBuf);

impl FromTomlStr for PathValue {
    const EXPECTING: &'static str = "a path";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be an empty path".to_owned());
        }
        Ok(PathValue(PathBuf::from(text)))
    }
}

/// A portable environment variable name: `[A-Za-z_][A-Za-z0-9_]*`.
#[derive(PartialEq, Eq, PartialOrd, Ord)]
struct EnvName(String);

impl FromTomlStr for EnvName {
    const EXPECTING: &'static str = "an environment variable name";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        let mut chars = text.chars();
        let first_ok = chars
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
        if !(first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')) {
            return Err(format!(
                "{text:?} is not an environment variable name (letters, digits and `_`, not starting with a digit)"
            ));
        }
        Ok(EnvName(text.to_owned()))
    }
}

/// An event subscription: an exact name, `prefix.*`, or `*`.
struct EventPattern(String);

impl FromTomlStr for EventPattern {
    const EXPECTING: &'static str = "an event pattern";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        let name = text.strip_suffix(".*").unwrap_or(text);
        if text != "*" && !is_event_name(name) {
            return Err(format!(
                "{text:?} is not an event pattern (use a name like \"order.placed\", a prefix like \"order.*\", or \"*\")"
            ));
        }
        Ok(EventPattern(text.to_owned()))
    }
}

/// A call grant: `pkg.action`, `pkg.*`, or `*`.
struct CallPattern(String);

impl FromTomlStr for CallPattern {
    const EXPECTING: &'static str = "an action pattern";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        if !is_call_pattern(text) {
            return Err(format!(
                "{text:?} is not an action pattern (use \"package.action\", \"package.*\", or \"*\")"
            ));
        }
        Ok(CallPattern(text.to_owned()))
    }
}

fn is_package_name(name: &str) -> bool {
    name.len() <= MAX_PACKAGE_NAME
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// Dot-separated, non-empty segments without spaces or `*`.
fn is_event_name(name: &str) -> bool {
    name.split('.').all(|segment| {
        !segment.is_empty()
            && segment
                .chars()
                .all(|c| !c.is_whitespace() && !c.is_control() && c != '*')
    })
}

fn is_call_pattern(pattern: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let Some((package, action)) = pattern.split_once('.') else {
        return false;
    };
    is_package_name(package) && (action == "*" || is_action_name(action))
}

/// A function name, or `interface.function` where two interfaces share one.
fn is_action_name(action: &str) -> bool {
    action.split('.').all(|segment| {
        !segment.is_empty()
            && segment
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    })
}

#[cfg(test)]
mod tests {
    //! Snapshot tests: `tests/manifest/<case>.toml` beside `<case>.err`, the
    //! exact errors it must produce (none: no `.err`). `UPDATE_SNAPSHOTS=1`
    //! rewrites the `.err` files.

    use super::*;

    fn cases_dir() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/manifest")
    }

    /// Every error the outcome holds, one a line, with paths relative to the cases folder.
    fn render(outcome: &Result<Manifest, ManifestError>) -> String {
        let errors: Vec<String> = match outcome {
            Ok(manifest) => manifest.rejected.iter().map(ToString::to_string).collect(),
            Err(error) => vec![error.to_string()],
        };
        let dir = format!("{}{}", cases_dir().display(), std::path::MAIN_SEPARATOR);
        errors
            .iter()
            .map(|error| format!("{}\n", error.replace(&dir, "")))
            .collect()
    }

    /// Loads `<case>.toml` and compares its errors with `<case>.err`.
    fn check_snapshot(case: &str) -> Result<Manifest, ManifestError> {
        let outcome = Manifest::load(&cases_dir().join(format!("{case}.toml")));
        let actual = render(&outcome);
        let snapshot = cases_dir().join(format!("{case}.err"));
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some_and(|value| value == "1") {
            update_snapshot(&snapshot, &actual);
        } else {
            let expected = std::fs::read_to_string(&snapshot).unwrap_or_default();
            assert_eq!(
                actual, expected,
                "{case}.toml: errors differ from {case}.err (UPDATE_SNAPSHOTS=1 rewrites it)"
            );
        }
        outcome
    }

    fn update_snapshot(snapshot: &Path, actual: &str) {
        if actual.is_empty() {
            if snapshot.exists() {
                std::fs::remove_file(snapshot).expect("remove stale snapshot");
            }
        } else {
            std::fs::write(snapshot, actual).expect("write snapshot");
        }
    }

    fn load_good(case: &str) -> Manifest {
        check_snapshot(case).unwrap_or_else(|error| panic!("{case}: {error}"))
    }

    fn package<'m>(manifest: &'m Manifest, name: &str) -> &'m PackageSpec {
        manifest
            .packages
            .iter()
            .find(|package| package.name == name)
            .unwrap_or_else(|| panic!("no package `{name}`"))
    }

    fn parse_inline(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, &cases_dir().join("inline.toml"))
    }

    /// Broken inputs: each is a `<case>.toml` with a `<case>.err`.
    mod snapshots {
        use super::check_snapshot;

        macro_rules! cases {
            ($($case:ident),* $(,)?) => {
                pub(super) const CASES: &[&str] = &[$(stringify!($case)),*];
                $(#[test]
                fn $case() {
                    let _ = check_snapshot(stringify!($case));
                })*
            };
        }

        cases!(
            syntax_error,
            unknown_top_level_key,
            unknown_app_key,
            app_out_of_range,
            app_wrong_type,
            bad_defaults,
            defaults_unknown_key,
            defaults_bad_restart,
            packages_not_a_table,
            unknown_package_key,
            unknown_grants_key,
            wrong_types,
            out_of_range,
            bad_values,
            missing_component,
            build_without_path,
            bad_package_names,
            missing_grant_dir,
            bad_patterns,
            cluster_unknown_key,
            cluster_bad_transporter,
            cluster_bad_node_id,
            cluster_bad_protocol,
            cluster_bad_serializer,
            cluster_bad_heartbeat,
        );
    }

    /// Good inputs, each with its own test below.
    const GOOD_CASES: &[&str] = &[
        "empty",
        "minimal",
        "full",
        "defaults",
        "one_bad_package",
        "cluster",
    ];

    #[test]
    fn cluster_sets_every_key_and_is_off_without_the_table() {
        let manifest = load_good("cluster");
        let cluster = manifest.cluster.expect("[cluster]");
        assert_eq!(
            cluster,
            ClusterSettings {
                transporter: "nats://127.0.0.1:4222".into(),
                node_id: Some("shop-1".into()),
                namespace: Some("dev".into()),
                protocol: 5,
                serializer: Serializer::MessagePack,
                heartbeat_interval: Duration::from_secs(1),
                heartbeat_timeout: Duration::from_secs(3),
                advertise: false,
                publish: vec!["greeter.*".into(), "orders.place".into()],
                auth: ClusterAuth::UserPassword {
                    user: "shop".into(),
                    password: Secret::File(cases_dir().join("secrets/nats-password")),
                },
                tls: ClusterTls {
                    required: true,
                    ca: Some(cases_dir().join("certs/ca.pem")),
                    client: Some((
                        cases_dir().join("certs/client.pem"),
                        cases_dir().join("certs/client.key")
                    )),
                },
            }
        );
        let auth = |extra: &str| {
            parse_inline(&format!(
                "[cluster]\ntransporter = \"tls://10.0.0.1:4222\"\n{extra}"
            ))
            .map(|m| m.cluster.expect("[cluster]").auth)
        };
        assert_eq!(
            auth("token_env = \"NATS_TOKEN\"").expect("token"),
            ClusterAuth::Token(Secret::Env("NATS_TOKEN".into()))
        );
        assert_eq!(
            auth("nkey_seed_env = \"NATS_SEED\"").expect("nkey"),
            ClusterAuth::NKey(Secret::Env("NATS_SEED".into()))
        );
        assert!(matches!(
            auth("credentials = \"app.creds\"").expect("creds"),
            ClusterAuth::Credentials(p) if p.ends_with("app.creds")
        ));
        for (bad, says) in [
            ("token_env = \"A\"\ntoken_file = \"t\"", "not both"),
            (
                "token_env = \"A\"\ncredentials = \"c\"",
                "one kind of NATS credentials",
            ),
            ("user = \"u\"", "needs `password_env`"),
            ("password_env = \"P\"", "needs `user`"),
            ("tls_cert = \"c.pem\"", "needs `tls_key`"),
            ("publish = [\"greeter.*.x\"]", "not an action pattern"),
        ] {
            let e = auth(bad).expect_err(bad).to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
        assert!(load_good("empty").cluster.is_none());
        let minimal =
            parse_inline("[cluster]\ntransporter = \"nats://10.0.0.1:4222\"\n").expect("parses");
        assert_eq!(
            minimal.cluster,
            Some(ClusterSettings::new("nats://10.0.0.1:4222"))
        );
    }

    #[test]
    fn every_case_file_has_a_test() {
        let mut files: Vec<String> = std::fs::read_dir(cases_dir())
            .expect("read tests/manifest")
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .filter_map(|name| name.strip_suffix(".toml").map(str::to_owned))
            .collect();
        let mut tested: Vec<String> = snapshots::CASES
            .iter()
            .chain(GOOD_CASES)
            .map(|case| (*case).to_owned())
            .collect();
        files.sort();
        tested.sort();
        assert_eq!(files, tested);
    }

    #[test]
    fn empty_manifest_has_every_app_default() {
        let manifest = load_good("empty");
        assert_eq!(manifest.dir, cases_dir());
        assert_eq!(manifest.path, cases_dir().join("empty.toml"));
        assert_eq!(manifest.app.name, "manifest");
        assert_eq!(manifest.app.max_call_depth, 16);
        assert_eq!(manifest.app.cache_dir, cases_dir().join(".steedos/cache"));
        assert_eq!(manifest.app.shutdown_timeout, Duration::from_secs(10));
        assert!(manifest.packages.is_empty());
        assert!(manifest.rejected.is_empty());
    }

    #[test]
    fn minimal_package_has_every_default() {
        let manifest = load_good("minimal");
        let [hello] = manifest.packages.as_slice() else {
            panic!("expected one package, got {:?}", manifest.packages);
        };
        assert_eq!(hello.name, "hello");
        assert_eq!(hello.source, None);
        assert_eq!(hello.build, None);
        assert_eq!(hello.component, cases_dir().join("hello.wasm"));
        assert_eq!(hello.instances, 1);
        assert_eq!(hello.memory, 64 << 20);
        assert_eq!(hello.timeout, Duration::from_secs(5));
        assert_eq!(hello.queue, 64);
        assert_eq!(hello.restart, RestartPolicy::default());
        assert!(hello.events.is_empty());
        assert!(hello.grants.dirs.is_empty());
        assert!(hello.grants.env.is_empty());
        assert!(hello.grants.calls.is_empty());
        assert!(!hello.subscribes_to("order.placed"));
        assert!(!hello.grants.may_call("hello.hello"));
    }

    #[test]
    fn full_manifest_sets_every_key() {
        let manifest = load_good("full");
        assert_eq!(manifest.app.name, "shop");
        assert_eq!(manifest.app.max_call_depth, 8);
        assert_eq!(manifest.app.cache_dir, Path::new("/var/cache/steedos"));
        assert_eq!(manifest.app.shutdown_timeout, Duration::from_secs(90));
        let names: Vec<&str> = manifest.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["inventory", "greeter"], "file order");

        let inventory = package(&manifest, "inventory");
        let source = cases_dir().join("packages/inventory");
        assert_eq!(inventory.source.as_deref(), Some(source.as_path()));
        assert_eq!(
            inventory.build.as_deref(),
            Some("cargo build --release --target wasm32-wasip2")
        );
        assert_eq!(
            inventory.component,
            source.join("target/wasm32-wasip2/release/inventory.wasm")
        );
        assert_eq!(inventory.instances, 2);
        assert_eq!(inventory.memory, 32 << 20);
        assert_eq!(inventory.timeout, Duration::from_secs(2));
        assert_eq!(inventory.queue, 128);
        assert_eq!(inventory.events, ["order.placed", "order.*", "*"]);
        let restart = RestartPolicy {
            max_restarts: 10,
            within: Duration::from_secs(30),
            backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(20),
        };
        assert_eq!(inventory.restart, restart);
        assert_eq!(
            inventory.grants.calls,
            ["inventory.*", "greeter.hello", "*"]
        );
        assert_eq!(inventory.grants.emits, ["order.*", "audit.written"]);
        assert!(inventory.grants.may_emit("order.placed"));
        assert!(!inventory.grants.may_emit("audit.read"));
        assert!(!Grants::default().may_emit("order.placed"));

        let dirs = &inventory.grants.dirs;
        assert_eq!(dirs.len(), 2);
        assert_eq!(dirs[0].host, cases_dir().join("data"));
        assert_eq!(dirs[0].guest, "/data");
        assert!(dirs[0].read_only);
        assert_eq!(dirs[1].host, cases_dir().join("data/out"));
        assert_eq!(dirs[1].guest, "/app");
        assert!(!dirs[1].read_only);
    }

    #[test]
    fn full_manifest_sets_every_gateway_key() {
        let manifest = load_good("full");
        let gateway = &manifest.gateway;
        assert_eq!(
            gateway.listen,
            Some(std::net::SocketAddr::from(([0, 0, 0, 0], 8080)))
        );
        assert_eq!(gateway.expose, ["greeter.*", "inventory.get-item"]);
        assert_eq!(gateway.max_body, 2 << 20);
        assert_eq!(gateway.header_timeout, Duration::from_secs(3));
        assert_eq!(gateway.idle_timeout, Duration::from_secs(120));
        // The token is the named variable's value (PATH: always set here).
        assert_eq!(gateway.admin_token, std::env::var("PATH").ok());
        let aliases: Vec<(&str, String, &str)> = gateway
            .aliases
            .iter()
            .map(|a| (a.method.as_str(), a.segments.join("/"), a.action.as_str()))
            .collect();
        assert_eq!(
            aliases,
            [
                ("GET", "items/:sku".to_owned(), "inventory.get-item"),
                ("POST", "orders".to_owned(), "inventory.reserve"),
            ]
        );
        assert!(gateway.exposes("greeter.hello") && gateway.exposes("inventory.reserve"));
        assert!(!gateway.exposes("inventory.list-items"));
    }

    #[test]
    fn full_manifest_sets_every_resilience_key() {
        let manifest = load_good("full");
        let inventory = package(&manifest, "inventory");
        assert_eq!((inventory.instances, inventory.max_instances), (2, 6));
        assert_eq!(inventory.scale_down_after, Duration::from_secs(45));
        let circuit = inventory.circuit.as_ref().expect("circuit");
        assert_eq!(circuit.threshold, 0.25);
        assert_eq!(circuit.min_calls, 7);
        assert_eq!(circuit.window, Duration::from_secs(120));
        assert_eq!(circuit.half_open_after, Duration::from_secs(15));
        assert_eq!(inventory.retry.max, 4);
        assert_eq!(inventory.retry.delay, Duration::from_millis(20));
        assert_eq!(inventory.retry.max_delay, Duration::from_secs(3));
        let mut actions: Vec<_> = inventory
            .actions
            .iter()
            .map(|a| {
                (
                    a.name.as_str(),
                    a.queue,
                    a.idempotent,
                    a.fallback.as_deref(),
                )
            })
            .collect();
        actions.sort();
        assert_eq!(
            actions,
            [
                ("get-item", None, true, None),
                ("reserve", Some(5), true, Some("greeter.hello")),
            ]
        );
        // greeter sets none of them: one instance, no circuit, no retries.
        let greeter = package(&manifest, "greeter");
        assert_eq!(greeter.max_instances, greeter.instances);
        assert!(greeter.circuit.is_none());
        assert_eq!(greeter.retry.max, 0);
        assert!(greeter.actions.is_empty());
    }

    #[test]
    fn env_is_fixed_then_inherited_when_set() {
        let manifest = load_good("full");
        let inventory = package(&manifest, "inventory");
        let mut expected = vec![
            ("LEVEL".to_owned(), "3".to_owned()),
            ("MODE".to_owned(), "fast".to_owned()),
        ];
        // PATH is inherited when the test runs with one; the never-set variable is skipped.
        expected.extend(
            std::env::var("PATH")
                .ok()
                .map(|path| ("PATH".to_owned(), path)),
        );
        assert_eq!(inventory.grants.env, expected);
    }

    #[test]
    fn absolute_component_and_defaults_table() {
        let manifest = load_good("full");
        let greeter = package(&manifest, "greeter");
        assert_eq!(greeter.component, Path::new("/opt/steedos/greeter.wasm"));
        assert_eq!(greeter.instances, 3);
        assert_eq!(greeter.memory, 128 << 20);
        assert_eq!(greeter.timeout, Duration::from_secs(10));
        assert_eq!(greeter.queue, 32);
        let restart = RestartPolicy {
            max_restarts: 3,
            within: Duration::from_secs(60),
            backoff: Duration::from_secs(2),
            max_backoff: Duration::from_secs(60),
        };
        assert_eq!(greeter.restart, restart);
    }

    #[test]
    fn defaults_apply_key_by_key() {
        let manifest = load_good("defaults");
        let plain = package(&manifest, "plain");
        assert_eq!(plain.instances, 4);
        assert_eq!(plain.memory, 1 << 20);
        assert_eq!(plain.timeout, Duration::from_millis(750));
        assert_eq!(plain.queue, 0);
        let restart = RestartPolicy {
            max_restarts: 2,
            backoff: Duration::from_millis(100),
            ..RestartPolicy::default()
        };
        assert_eq!(plain.restart, restart);

        let tuned = package(&manifest, "tuned");
        assert_eq!(tuned.instances, 1);
        assert_eq!(tuned.memory, 1_000_000_000);
        assert_eq!(tuned.timeout, Duration::from_millis(750));
        let restart = RestartPolicy {
            max_restarts: 2,
            within: Duration::from_secs(3600),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(300),
        };
        assert_eq!(tuned.restart, restart);
    }

    #[test]
    fn one_bad_package_leaves_the_others_loaded() {
        let manifest = load_good("one_bad_package");
        let names: Vec<&str> = manifest.packages.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["first", "last"]);
        let rejected: Vec<Option<&str>> = manifest.rejected.iter().map(|e| e.package()).collect();
        assert_eq!(rejected, [Some("chaos")]);
    }

    #[test]
    fn human_sizes() {
        let cases: &[(&str, u64)] = &[
            ("\"32 MiB\"", 32 << 20),
            ("\"512KiB\"", 512 << 10),
            ("\"1GB\"", 1_000_000_000),
            ("\"4 GiB\"", 4 << 30),
            ("\"1.5 MiB\"", 3 << 19),
            ("\"100 kb\"", 100_000),
            ("\"65536\"", 65536),
            ("65536", 65536),
        ];
        for (written, bytes) in cases {
            let text = format!("[packages.p]\ncomponent = \"p.wasm\"\nmemory = {written}\n");
            let manifest = parse_inline(&text).expect("valid manifest");
            assert!(
                manifest.rejected.is_empty(),
                "{written}: {:?}",
                manifest.rejected
            );
            assert_eq!(manifest.packages[0].memory, *bytes, "{written}");
        }
    }

    #[test]
    fn human_durations() {
        let cases: &[(&str, Duration)] = &[
            ("500ms", Duration::from_millis(500)),
            ("2s", Duration::from_secs(2)),
            ("1m", Duration::from_secs(60)),
            ("1m 30s", Duration::from_secs(90)),
            ("1h", Duration::from_secs(3600)),
            ("1ms", Duration::from_millis(1)),
        ];
        for (written, duration) in cases {
            let text = format!("[packages.p]\ncomponent = \"p.wasm\"\ntimeout = \"{written}\"\n");
            let manifest = parse_inline(&text).expect("valid manifest");
            assert!(
                manifest.rejected.is_empty(),
                "{written}: {:?}",
                manifest.rejected
            );
            assert_eq!(manifest.packages[0].timeout, *duration, "{written}");
        }
    }

    #[test]
    fn may_call_patterns() {
        let grants = Grants {
            calls: vec!["inventory.*".into(), "greeter.hello".into()],
            ..Grants::default()
        };
        assert!(grants.may_call("inventory.reserve"));
        assert!(grants.may_call("inventory.stock.reserve"));
        assert!(grants.may_call("greeter.hello"));
        assert!(!grants.may_call("greeter.goodbye"));
        assert!(!grants.may_call("greeter.hello.world"));
        assert!(!grants.may_call("inventory"));
        assert!(!grants.may_call("inventory."));
        assert!(!grants.may_call("inventoryx.reserve"));
        assert!(!Grants::default().may_call("inventory.reserve"));
        let everything = Grants {
            calls: vec!["*".into()],
            ..Grants::default()
        };
        assert!(everything.may_call("anything.at-all"));
    }

    #[test]
    fn subscribes_to_patterns() {
        let mut spec = PackageSpec::for_component("audit", PathBuf::from("/audit.wasm"));
        assert!(!spec.subscribes_to("order.placed"));
        spec.events = vec!["order.*".into(), "user.created".into()];
        assert!(spec.subscribes_to("order.placed"));
        assert!(spec.subscribes_to("order.line.added"));
        assert!(spec.subscribes_to("user.created"));
        assert!(!spec.subscribes_to("user.deleted"));
        assert!(!spec.subscribes_to("order"));
        assert!(!spec.subscribes_to("orders.placed"));
        spec.events = vec!["*".into()];
        assert!(spec.subscribes_to("anything"));
    }

    #[test]
    fn for_component_has_every_default() {
        let spec = PackageSpec::for_component("hello", PathBuf::from("/hello.wasm"));
        let minimal = load_good("minimal");
        let hello = package(&minimal, "hello");
        assert_eq!(spec.name, "hello");
        assert_eq!(spec.component, Path::new("/hello.wasm"));
        assert_eq!(
            (spec.instances, spec.memory, spec.timeout, spec.queue),
            (hello.instances, hello.memory, hello.timeout, hello.queue)
        );
        assert_eq!(spec.restart, hello.restart);
        assert!(spec.source.is_none() && spec.build.is_none() && spec.events.is_empty());
    }

    #[test]
    fn load_reads_steedos_toml_in_a_folder() {
        let folder = cases_dir().join("data");
        let Err(ManifestError::Io { path, .. }) = Manifest::load(&folder) else {
            panic!("a folder without steedos.toml is an Io error");
        };
        assert_eq!(path, folder.join(FILE_NAME));
    }

    #[test]
    fn bare_file_name_resolves_against_the_working_directory() {
        let manifest = Manifest::parse("", Path::new(FILE_NAME)).expect("empty manifest");
        let cwd = std::env::current_dir().expect("working directory");
        assert_eq!(manifest.dir, cwd);
        assert_eq!(manifest.app.cache_dir, cwd.join(".steedos/cache"));
    }

    #[test]
    fn errors_point_at_line_and_column() {
        let text = "[packages.p]\ncomponent = \"p.wasm\"\n  timeout = \"soon\"\n";
        let manifest = parse_inline(text).expect("the file itself is valid");
        let [
            ManifestError::Invalid {
                line,
                column,
                package,
                message,
                ..
            },
        ] = manifest.rejected.as_slice()
        else {
            panic!("expected one Invalid error, got {:?}", manifest.rejected);
        };
        assert_eq!((*line, *column), (3, 13));
        assert_eq!(package.as_deref(), Some("p"));
        assert_eq!(message, "timeout: \"soon\" is not a duration (try \"5s\")");
    }

    #[test]
    fn gateway_connection_limits_and_ops_access() {
        let defaults = parse_inline("").expect("empty").gateway;
        assert_eq!(defaults.body_timeout, defaults.header_timeout);
        assert_eq!(defaults.min_body_rate, 1024);
        assert_eq!(defaults.max_connections, 4096);
        assert_eq!(defaults.ops, OpsAccess::Public);

        let text = "[gateway]\nheader_timeout = \"2s\"\nops = \"token\"\nmax_connections = 64\n";
        let g = parse_inline(text).expect("valid").gateway;
        assert_eq!(
            g.body_timeout,
            Duration::from_secs(2),
            "follows header_timeout"
        );
        assert_eq!((g.ops, g.max_connections), (OpsAccess::Token, 64));

        let text = "[gateway]\nbody_timeout = \"9s\"\nmin_body_rate = \"16 KiB\"\nops = \"off\"\n";
        let g = parse_inline(text).expect("valid").gateway;
        assert_eq!(g.body_timeout, Duration::from_secs(9));
        assert_eq!((g.min_body_rate, g.ops), (16 << 10, OpsAccess::Off));

        for (bad, says) in [
            ("ops = \"everyone\"", "ops: \"everyone\" is not one of"),
            ("max_connections = 0", "out of range"),
            ("min_body_rate = \"fast\"", "is not a size"),
            ("body_timeout = \"0s\"", "out of range"),
        ] {
            let e = parse_inline(&format!("[gateway]\n{bad}\n")).expect_err(bad);
            assert!(e.to_string().contains(says), "{bad}: {e}");
        }
    }
}

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
//!   64 MiB), `emit_rate` (bytes of event deliveries the package may cause
//!   a second, its payload plus 2 KiB per delivery, 64 KiB..=64 GiB, default
//!   64 MiB; past it emits wait), `timeout` (1ms..=1h, default 5s), `queue` (0..=100000, default
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
//!
//! # Layout
//!
//! This file is the entry ([`Manifest::load`], [`Manifest::parse`]) over:
//! `raw` (the file as written, serde structs), `values` (value types
//! checked as they are read), `check` (from raw tables to the model: the
//! one check of a package's settings, used by file loading and by `/admin`
//! deploys alike), `deploy` (an `/admin` deploy's settings, written as the
//! package table the file would hold and put through that check: see
//! [`Manifest::deployed_package`]), `model` (the validated settings the host
//! runs), `source` (where an error points) and `error` ([`ManifestError`]).
//!
//! A leaf: it imports no other module of the host (only [`node_id`](crate::node_id),
//! itself a leaf); the engine, the broker, the gateway and the transport
//! read what it produces and never reach inside it.

use std::path::Path;

use toml::de::DeTable;

/// The manifest's file name inside an app folder.
pub const FILE_NAME: &str = "steedos.toml";

mod check;
mod deploy;
mod error;
mod http;
mod kv;
mod model;
mod properties;
mod raw;
mod routes;
mod source;
mod telemetry;
mod values;

pub use deploy::DEPLOY_SETTINGS;
pub use error::ManifestError;
pub use http::{HostPattern, HttpGrant, HttpLimits, HttpScheme, RequestHost};
pub use kv::{
    BUCKET_NAME_RULE, BucketSettings, CachePolicy, DEFAULT_BUCKET, DEFAULT_MAX_VALUE, KvBackend,
    is_bucket_name,
};
pub use model::*;
pub use routes::{HttpRoute, RoutePath, find_route, is_own};
pub use telemetry::{DEFAULT_MOLECULER_INTERVAL, OtlpProtocol, TelemetrySettings, check_endpoint};
pub use values::ServiceVersion;

use check::protected_dirs;
use source::{Sections, Source};

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
        let kv = source.kv(sections.kv)?;
        let telemetry = source.telemetry(sections.telemetry)?;
        let protected = protected_dirs(&app, &source.dir);
        let (packages, rejected) = source.packages(sections.packages, &defaults, &protected)?;
        source.check_route_packages(&gateway.http, &packages, &rejected)?;
        Ok(Manifest {
            path: path.to_path_buf(),
            dir: source.dir,
            app,
            gateway,
            cluster,
            kv,
            telemetry,
            packages,
            rejected,
            defaults,
        })
    }
}

#[cfg(test)]
mod tests;

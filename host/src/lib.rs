//! steedos-wasm runs every package of an app as a sandboxed WebAssembly
//! component and wires them into one system through a broker.
//!
//! The modules, in the direction dependencies run:
//! - [`cli`]: the `steedos-wasm` command line.
//! - [`app`]: loads a `steedos.toml` into a serving [`broker::Broker`].
//! - [`transport`]: this host as a node of a Moleculer cluster over NATS.
//! - [`broker`]: the registry of services and actions; routes calls and events.
//! - [`pool`]: the live instances of one package; [`supervisor`]: their restart policy.
//! - [`package`]: a loaded component: its actions, imports and instances;
//!   [`guest_log`]: what guests write, escaped and within a budget.
//! - [`engine`]: the wasmtime engine, its epoch clock and the compile cache.
//! - leaves: [`manifest`] (steedos.toml), [`codec`] (values <-> JSON and
//!   MessagePack by WIT type), [`context`] (call context and errors),
//!   [`builder`] (building packages from source), [`scaffold`] (new apps
//!   for `steedos-wasm new`), [`admin`] (the operator port the gateway's
//!   `/admin` calls and the app implements), [`telemetry`] (spans, OTLP
//!   and Moleculer's `$tracing.spans`).
//!
//! # Example
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use steedos_wasm::{app::{App, LoadOptions}, manifest::Manifest, context::CallContext};
//! let manifest = Manifest::load("examples/shop".as_ref())?;
//! let app = App::load(manifest, &LoadOptions::default()).await?;
//! let ctx = CallContext::new(std::time::Duration::from_secs(5));
//! let hello = app.broker.call_json("greeter.hello", br#"{"name":"Ada"}"#, ctx).await?;
//! assert_eq!(hello, "Hello, Ada!");
//! # Ok(()) }
//! ```
#![recursion_limit = "256"]
#![deny(missing_docs)]

pub mod admin;
pub mod app;
pub mod boxed;
pub mod broker;
pub mod builder;
pub mod cli;
pub mod codec;
pub mod context;
pub mod engine;
pub mod gateway;
pub mod guest_log;
pub mod health;
pub mod http;
pub mod kv;
pub mod manifest;
pub mod metrics;
pub mod node_id;
pub mod openapi;
pub mod operate;
pub mod package;
pub mod pool;
pub mod resilience;
pub mod scaffold;
pub mod supervisor;
pub mod telemetry;
pub mod transport;
pub mod types;
pub mod watch;

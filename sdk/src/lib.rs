//! Write steedos-wasm packages in Rust.
//!
//! A **package** is a WebAssembly component (wasm32-wasip2). Every function
//! of every interface it exports is an **action** the host's broker routes
//! to, named `<package>.<function>`. This crate gives a package the host's
//! side of the contract (the WIT package `steedos:package`, in `wit/` at
//! the root of the repository) as Rust:
//!
//! - [`call`], [`emit`], [`broadcast`] and [`context`]: the broker, with
//!   parameters, results and event payloads as serde values (MessagePack on
//!   the wire);
//! - [`decode`]: read an event payload;
//! - [`log`] and the macros [`trace!`], [`debug!`], [`info!`], [`warn!`] and
//!   [`error!`]: logs that end up in the host's `tracing`;
//! - [`wit`]: the generated bindings of `steedos:package`, which a package's
//!   own bindings reuse (see *The recipe* below);
//! - [`wit_bindgen`] and [`generate!`]: the bindings generator, re-exported,
//!   so that a package depends on `steedos-sdk` (and `serde`) only.
//!
//! # A complete package
//!
//! A package is a `cdylib` crate with its own `wit/` folder:
//!
//! ```text
//! greeter/
//!   Cargo.toml
//!   wit/greeter.wit
//!   src/lib.rs
//! ```
//!
//! `Cargo.toml`:
//!
//! ```toml
//! [package]
//! name = "greeter"
//! version = "0.1.0"
//! edition = "2024"
//!
//! [lib]
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! steedos-sdk = { path = "../../sdk" }
//! ```
//!
//! `wit/greeter.wit`: the package's actions are the functions of the
//! interfaces its world exports. `include steedos:%package/%package@0.2.0`
//! brings in what the host offers (the broker and the logger; `package` is a
//! WIT keyword, hence the `%`). A package may also export
//! `steedos:%package/lifecycle@0.2.0` (called once per instance after it
//! starts and before it stops) and `steedos:%package/events@0.2.0` (receives
//! the events `steedos.toml` subscribes it to). A world may not share its
//! name with an interface of its package.
//!
//! ```wit
//! package acme:greeter@0.1.0;
//!
//! interface greet {
//!   hello: func(name: string) -> string;
//! }
//!
//! world greeter {
//!   include steedos:%package/%package@0.2.0;
//!   export greet;
//! }
//! ```
//!
//! `src/lib.rs`:
//!
//! ```rust,ignore
//! steedos_sdk::generate!({
//!     // The steedos:package WIT first, then the package's own: a later
//!     // folder may depend on an earlier one, not the other way round.
//!     path: ["../../wit", "wit"],
//!     // With more than one folder, the world is named in full.
//!     world: "acme:greeter/greeter",
//! });
//!
//! use exports::acme::greeter::greet::Guest;
//!
//! struct Greeter;
//!
//! impl Guest for Greeter {
//!     fn hello(name: String) -> String {
//!         steedos_sdk::info!("greeting {name}");
//!         format!("Hello, {name}!")
//!     }
//! }
//!
//! export!(Greeter);
//! ```
//!
//! Build it, and name the component in the app's `steedos.toml`:
//!
//! ```sh
//! cargo build --release --target wasm32-wasip2
//! # -> target/wasm32-wasip2/release/greeter.wasm
//! ```
//!
//! The action is now `greeter.hello`: `steedos-wasm call <app folder>
//! greeter.hello '{"name": "Ada"}'` answers `"Hello, Ada!"`.
//!
//! # The recipe
//!
//! [`generate!`] is [`wit_bindgen::generate!`] with three options added in
//! front of yours; written out, the invocation above is:
//!
//! ```rust,ignore
//! steedos_sdk::wit_bindgen::generate!({
//!     // Reuse the SDK's bindings of the host's interfaces instead of
//!     // generating a second, incompatible copy of each type.
//!     with: {
//!         "steedos:package/types@0.2.0": steedos_sdk::wit::types,
//!         "steedos:package/broker@0.2.0": steedos_sdk::wit::broker,
//!         "steedos:package/logging@0.2.0": steedos_sdk::wit::logging,
//!     },
//!     // Generate everything else: the package's own interfaces, and the
//!     // interfaces of other packages it imports.
//!     generate_all,
//!     // The generated code finds wit-bindgen's runtime through the SDK.
//!     runtime_path: "::steedos_sdk::wit_bindgen::rt",
//!     path: ["../../wit", "wit"],
//!     world: "acme:greeter/greeter",
//! });
//! ```
//!
//! To call another package through its typed interface, import that
//! interface in the world (`import acme:inventory/stock@0.1.0;`) and add the
//! folder holding its WIT to `path`, before your own:
//! `path: ["../../wit", "../inventory/wit", "wit"]`. The host links the
//! import to the package exporting it. To call by name instead, use
//! [`call`].
//!
//! # Values on the wire
//!
//! Dynamic calls and events carry MessagePack. The host converts between it
//! and the action's WIT types by these rules, which serde types must follow:
//!
//! | WIT | MessagePack | serde |
//! | --- | --- | --- |
//! | parameters of an action | map of parameter names to values | a struct; multi-word names are kebab-case (`#[serde(rename_all = "kebab-case")]`) |
//! | `record` | map of field names (kebab-case) to values | a struct with `#[serde(rename_all = "kebab-case")]` |
//! | `variant`, `enum` | `"case"` or `{"case": payload}` | an enum with `#[serde(rename_all = "kebab-case")]` |
//! | `option<T>` | nil or the value | `Option<T>` |
//! | `result<T, E>` inside a value | `{"ok": v}` or `{"err": e}` | `Result<T, E>` |
//! | `list<u8>` | bin | `serde_bytes::ByteBuf`, or `#[serde(with = "serde_bytes")]` (re-exported as [`serde_bytes`]) |
//!
//! The reply of an action whose WIT result is `result<T, E>` is `T` alone;
//! its `E` reaches the caller as [`CallError::Failed`], with the value of
//! `E` written out as JSON (`inventory.reserve: {"insufficient":0}`).
//!
//! # Instances
//!
//! The host runs `instances = N` copies of a package, each with its own
//! memory, and an instance serves one call at a time. Globals (a
//! `thread_local!`, a `static` with interior mutability) are therefore
//! per instance: state kept there is neither shared with the other
//! instances nor kept across a restart.

#![deny(missing_docs)]

use std::fmt;

use serde::{Deserialize, Serialize, de::DeserializeOwned};

pub use serde_bytes;
#[cfg(feature = "kv")]
pub mod kv;
pub use wit_bindgen;

pub mod wit {
    //! The generated bindings of the `steedos:package` WIT package.
    //!
    //! A package reuses these through the `with:` option of its own
    //! `generate!` (see the crate docs), so that its code and the SDK agree
    //! on one Rust type per WIT type.

    #[allow(missing_docs)]
    mod generated {
        wit_bindgen::generate!({
            path: "../wit",
            world: "sdk",
            // Our own `CallError`, so that it can have a readable Display
            // and serde derives; it has the layout wit-bindgen would give it.
            with: { "steedos:package/types@0.2.0/call-error": crate::CallError },
        });
    }

    pub use generated::steedos::package::{broker, logging};

    pub mod types {
        //! `steedos:package/types`: the call error and the call context.
        pub use super::generated::steedos::package::types::*;
        pub use crate::CallError;
    }
}

pub use wit::types::{CallContext, CallOptions as RawCallOptions};

/// `ctx.meta`: names to any JSON-like value, with its JSON type (objects,
/// numbers, booleans, null, arrays). It crosses the WIT boundary as
/// MessagePack; [`CallContext::meta`] decodes it.
pub type Meta = serde_json::Map<String, serde_json::Value>;

pub use serde_json;

impl CallContext {
    /// `ctx.meta` as values (the host always sends a map; anything else
    /// reads as empty).
    pub fn meta(&self) -> Meta {
        rmp_serde::from_slice(&self.meta).unwrap_or_default()
    }

    /// `ctx.meta` decoded into `T` (a struct of the keys you read).
    pub fn meta_as<T: DeserializeOwned>(&self) -> Result<T, String> {
        rmp_serde::from_slice(&self.meta).map_err(|e| e.to_string())
    }
}

/// How to make one call ([`call_with`]): every field is optional.
///
/// ```no_run
/// use steedos_sdk::{CallOptions, serde_json::json};
/// let opts = CallOptions::new()
///     .meta(json!({ "user": { "id": "u1", "roles": ["admin"] } }))
///     .timeout_ms(2_000)
///     .retries(2);
/// let found: Vec<steedos_sdk::serde_json::Value> =
///     steedos_sdk::call_with("objectql.find", &json!({ "objectName": "accounts" }), &opts)?;
/// # Ok::<(), steedos_sdk::CallError>(())
/// ```
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Merged over the caller's meta (key by key), for this call only.
    pub meta: Option<serde_json::Value>,
    /// Milliseconds the call may take; never more than the caller has left.
    pub timeout_ms: Option<u32>,
    /// The node that must serve the call.
    pub node_id: Option<String>,
    /// Tries after the first, for a failure another try may mend.
    pub retries: Option<u32>,
}

impl CallOptions {
    /// No options.
    pub fn new() -> Self {
        Self::default()
    }

    /// Meta merged over the caller's for this call (a JSON object).
    pub fn meta(mut self, meta: serde_json::Value) -> Self {
        self.meta = Some(meta);
        self
    }

    /// The call's timeout.
    pub fn timeout_ms(mut self, ms: u32) -> Self {
        self.timeout_ms = Some(ms);
        self
    }

    /// The node that must serve the call.
    pub fn node_id(mut self, node: impl Into<String>) -> Self {
        self.node_id = Some(node.into());
        self
    }

    /// Tries after the first.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    fn to_raw(&self) -> Result<RawCallOptions, String> {
        let meta = match &self.meta {
            Some(meta) => Some(rmp_serde::to_vec_named(meta).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(RawCallOptions {
            meta,
            timeout_ms: self.timeout_ms,
            node_id: self.node_id.clone(),
            retries: self.retries,
        })
    }
}

/// Why a call through the broker did not return a value: the WIT variant
/// `steedos:package/types.call-error`.
///
/// It is a value, never a trap: a callee that traps, hangs or is missing
/// fails only the caller's call, with one of these.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CallError {
    /// No such action, or no live provider for it.
    NotFound(String),
    /// The parameters do not fit the action's WIT type.
    InvalidParams(String),
    /// The callee did not answer within its deadline.
    Timeout,
    /// The callee trapped; it is being restarted.
    Crashed(String),
    /// Queue full, call depth exceeded, or the callee is in restart backoff.
    Overloaded(String),
    /// The caller's grants do not allow this call.
    Denied(String),
    /// The action returned its own error (or, from [`call`], its reply did
    /// not decode into the requested type).
    Failed(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::NotFound(m) => write!(f, "not found: {m}"),
            CallError::InvalidParams(m) => write!(f, "invalid params: {m}"),
            CallError::Timeout => f.write_str("timed out"),
            CallError::Crashed(m) => write!(f, "crashed: {m}"),
            CallError::Overloaded(m) => write!(f, "overloaded: {m}"),
            CallError::Denied(m) => write!(f, "denied: {m}"),
            CallError::Failed(m) => write!(f, "failed: {m}"),
        }
    }
}

impl std::error::Error for CallError {}

/// The parameters of an action that takes none: an empty MessagePack map.
///
/// ```no_run
/// let entries: Vec<(String, u64)> = steedos_sdk::call("tally.entries", &steedos_sdk::NoParams {})?;
/// # Ok::<(), steedos_sdk::CallError>(())
/// ```
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct NoParams {}

/// Calls an action by name through the broker and decodes its reply.
///
/// `params` is a struct (or map) of the action's parameter names to values;
/// `R` is the action's result type (for `result<T, E>`, just `T`: the error
/// arrives as [`CallError::Failed`]). A reply that does not decode into `R`
/// is a [`CallError::Failed`] saying so.
///
/// ```no_run
/// #[derive(serde::Serialize)]
/// struct Reserve<'a> {
///     sku: &'a str,
///     qty: u32,
/// }
///
/// #[derive(serde::Deserialize)]
/// struct Reservation {
///     id: u64,
/// }
///
/// let r: Reservation = steedos_sdk::call("inventory.reserve", &Reserve { sku: "apple", qty: 2 })?;
/// steedos_sdk::info!("reserved as {}", r.id);
/// # Ok::<(), steedos_sdk::CallError>(())
/// ```
pub fn call<P, R>(action: &str, params: &P) -> Result<R, CallError>
where
    P: Serialize + ?Sized,
    R: DeserializeOwned,
{
    let params = rmp_serde::to_vec_named(params).map_err(|e| {
        CallError::InvalidParams(format!("could not encode the params of `{action}`: {e}"))
    })?;
    let reply = wit::broker::call(action, &params)?;
    rmp_serde::from_slice(&reply)
        .map_err(|e| CallError::Failed(format!("could not decode the reply of `{action}`: {e}")))
}

/// [`call`] with options: meta merged over this call's, a timeout, the
/// node to serve it, retries. The callee's meta changes come back merged
/// into this package's context, as with [`call`].
pub fn call_with<P, R>(action: &str, params: &P, options: &CallOptions) -> Result<R, CallError>
where
    P: Serialize + ?Sized,
    R: DeserializeOwned,
{
    let params = rmp_serde::to_vec_named(params).map_err(|e| {
        CallError::InvalidParams(format!("could not encode the params of `{action}`: {e}"))
    })?;
    let options = options.to_raw().map_err(|e| {
        CallError::InvalidParams(format!("could not encode the options of `{action}`: {e}"))
    })?;
    let reply = wit::broker::call_with(action, &params, &options)?;
    rmp_serde::from_slice(&reply)
        .map_err(|e| CallError::Failed(format!("could not decode the reply of `{action}`: {e}")))
}

/// Sets keys of the current call's meta (`meta` is a JSON object, or a
/// struct; merged key by key, as `Object.assign(ctx.meta, meta)`): the
/// calls this package makes next carry them, and its caller gets them
/// back with the result. Refused when `meta` is not an object or the
/// whole meta would pass the host's limit (64 KiB as MessagePack).
///
/// ```no_run
/// use steedos_sdk::serde_json::json;
/// steedos_sdk::set_meta(&json!({ "audited": true, "count": 3 }))?;
/// # Ok::<(), String>(())
/// ```
pub fn set_meta<T: Serialize + ?Sized>(meta: &T) -> Result<(), String> {
    let bytes = rmp_serde::to_vec_named(meta).map_err(|e| e.to_string())?;
    wit::broker::set_meta(&bytes)
}

/// The current call's meta, as values.
pub fn meta() -> Meta {
    context().meta()
}

/// Emits an event: one instance of every subscribing package receives it.
///
/// The payload is encoded as MessagePack; subscribers read it with
/// [`decode`]. A payload that cannot be encoded (a `Serialize` impl that
/// fails) is not sent, and the failure is logged.
///
/// The package needs an `emits` grant for `event` in `steedos.toml`. When
/// a subscriber's queue is full the call waits for room; an emit that is
/// denied, too large (over 1 MiB), or finds no room before the current
/// call's deadline fails that call (the host stops it), so an emit that
/// returns was taken by every subscriber.
pub fn emit<T: Serialize + ?Sized>(event: &str, payload: &T) {
    if let Some(payload) = encode_payload(event, payload) {
        wit::broker::emit(event, &payload);
    }
}

/// Broadcasts an event: every instance of every subscribing package
/// receives it. See [`emit`].
pub fn broadcast<T: Serialize + ?Sized>(event: &str, payload: &T) {
    if let Some(payload) = encode_payload(event, payload) {
        wit::broker::broadcast(event, &payload);
    }
}

fn encode_payload<T: Serialize + ?Sized>(event: &str, payload: &T) -> Option<Vec<u8>> {
    match rmp_serde::to_vec_named(payload) {
        Ok(bytes) => Some(bytes),
        Err(e) => {
            log::error(&format!(
                "event `{event}` not sent: could not encode its payload: {e}"
            ));
            None
        }
    }
}

/// Decodes a MessagePack payload, such as the one an event handler
/// receives.
///
/// ```no_run
/// #[derive(serde::Deserialize)]
/// #[serde(rename_all = "kebab-case")]
/// struct OrderPlaced {
///     order_id: u64,
/// }
///
/// # let payload: &[u8] = &[];
/// let placed: OrderPlaced = steedos_sdk::decode(payload)?;
/// # Ok::<(), String>(())
/// ```
pub fn decode<T: DeserializeOwned>(payload: &[u8]) -> Result<T, String> {
    rmp_serde::from_slice(payload).map_err(|e| e.to_string())
}

/// Encodes a value as MessagePack the way [`call`] and [`emit`] do (structs
/// as maps by field name), for use with the raw [`wit::broker`].
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, String> {
    rmp_serde::to_vec_named(value).map_err(|e| e.to_string())
}

/// The context of the call this instance is serving now: its id and its
/// parent's, the request id, the calling package, the nesting level and
/// the meta ([`CallContext::meta`]).
pub fn context() -> CallContext {
    wit::broker::context()
}

pub mod log {
    //! Logs, kept by the host's `tracing` with the package's name.
    //!
    //! The macros [`info!`](crate::info) and friends take `format!`
    //! arguments.

    use crate::wit::logging::{Level, log};

    /// Logs at trace level.
    pub fn trace(msg: &str) {
        log(Level::Trace, msg);
    }

    /// Logs at debug level.
    pub fn debug(msg: &str) {
        log(Level::Debug, msg);
    }

    /// Logs at info level.
    pub fn info(msg: &str) {
        log(Level::Info, msg);
    }

    /// Logs at warn level.
    pub fn warn(msg: &str) {
        log(Level::Warn, msg);
    }

    /// Logs at error level.
    pub fn error(msg: &str) {
        log(Level::Error, msg);
    }
}

/// Logs at trace level, with `format!` arguments.
#[macro_export]
macro_rules! trace {
    ($($arg:tt)*) => { $crate::log::trace(&::std::format!($($arg)*)) };
}

/// Logs at debug level, with `format!` arguments.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => { $crate::log::debug(&::std::format!($($arg)*)) };
}

/// Logs at info level, with `format!` arguments: `info!("x = {}", x)`.
#[macro_export]
macro_rules! info {
    ($($arg:tt)*) => { $crate::log::info(&::std::format!($($arg)*)) };
}

/// Logs at warn level, with `format!` arguments.
#[macro_export]
macro_rules! warn {
    ($($arg:tt)*) => { $crate::log::warn(&::std::format!($($arg)*)) };
}

/// Logs at error level, with `format!` arguments.
#[macro_export]
macro_rules! error {
    ($($arg:tt)*) => { $crate::log::error(&::std::format!($($arg)*)) };
}

/// Generates a package's bindings: [`wit_bindgen::generate!`] with the
/// SDK's `with:` mappings, `generate_all` and `runtime_path` put in front
/// of the options given.
///
/// The dependent crate must call this crate `steedos_sdk` (the default).
/// See the crate docs for a whole package and the invocation written out.
#[macro_export]
macro_rules! generate {
    ({ $($opts:tt)* }) => {
        $crate::wit_bindgen::generate!({
            with: {
                "steedos:package/types@0.2.0": ::steedos_sdk::wit::types,
                "steedos:package/broker@0.2.0": ::steedos_sdk::wit::broker,
                "steedos:package/logging@0.2.0": ::steedos_sdk::wit::logging,
            },
            generate_all,
            runtime_path: "::steedos_sdk::wit_bindgen::rt",
            $($opts)*
        });
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_error_is_encoded_the_way_the_host_encodes_variants() {
        // {"not-found": "x"}: a fixmap of one, a fixstr key, a fixstr value.
        let bytes = encode(&CallError::NotFound("x".into())).unwrap();
        assert_eq!(bytes, b"\x81\xa9not-found\xa1x");
        assert_eq!(encode(&CallError::Timeout).unwrap(), b"\xa7timeout");
        assert_eq!(
            decode::<CallError>(&bytes).unwrap(),
            CallError::NotFound("x".into())
        );
    }

    #[test]
    fn call_error_displays_its_kind_and_message() {
        assert_eq!(
            CallError::Denied("no grant".into()).to_string(),
            "denied: no grant"
        );
        assert_eq!(CallError::Timeout.to_string(), "timed out");
    }

    #[test]
    fn no_params_is_an_empty_map() {
        assert_eq!(encode(&NoParams {}).unwrap(), b"\x80");
    }

    #[test]
    fn structs_are_maps_by_field_name() {
        #[derive(Serialize)]
        #[serde(rename_all = "kebab-case")]
        struct Line {
            unit_price: u8,
        }
        assert_eq!(
            encode(&Line { unit_price: 1 }).unwrap(),
            b"\x81\xaaunit-price\x01"
        );
    }
}

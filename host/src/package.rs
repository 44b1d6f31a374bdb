//! A loaded package: what its component exports and imports, how it is
//! linked, and its live instances. Split as wasmtime's WASI crates are:
//! `analysis.rs` (the package's analysed type), `host.rs` (the host side of
//! its WIT imports, one [`add_to_linker`]), `instance.rs` (the live
//! instance and its faults), `output.rs` (what a dead guest's output says),
//! `bytes.rs` (byte lists that cross as bytes). This file holds what they
//! share: the [`Router`] the host functions call, and [`PackageError`].
//!
//! # What a package offers
//! [`PackageType::analyze`] reads a component's types: every function of
//! every interface it exports is an action (`lifecycle` and `events` of
//! `steedos:package` excepted), named `<package>.<function>`, or
//! `<package>.<interface>.<function>` where two interfaces share a name.
//! A component that exports no action and no event handler is not a
//! steedos package and is refused with a message that says so, unless it
//! exports `wasi:http/incoming-handler@0.2` (a component built for
//! `wasmtime serve` or Spin): the gateway serves it (see `serve.rs`).
//!
//! # What a package needs
//! `wasi:*` and `steedos:package/*` imports are the host's. Any other
//! imported interface is a typed import that another package must export;
//! the broker resolves those ([`ImportTarget`]) and the linker forwards each
//! call's values between the two stores.
//!
//! # Instances
//! A [`LiveInstance`] is one instantiation in a `Store` of its own, with a
//! deny-by-default WASI context built from the package's grants (no socket
//! and no name lookup, ever: `wasi:sockets` is linked, so that JavaScript
//! and Python components load, but every use of it is refused), a memory
//! limit over all of the instance's memories and tables together that traps
//! on a refused grow, and an epoch deadline armed for instantiation (a core
//! start function runs then), for `started` and for every call. A call that traps, times
//! out or runs out of memory returns a [`Fault`]; the instance is then unusable and the caller drops it.
//!
//! The host functions a package imports reach the broker through the
//! [`Router`] trait, so this module never depends on the broker (nor on
//! the gateway or the transport); it asks the codec only whether a type can
//! be written at all.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::context::{CallContext, CallError, CallOptions, ReplyMeta};
use crate::manifest::Grants;

mod analysis;
mod bytes;
mod contract_v1;
mod host;
mod imports;
mod instance;
mod kv;
mod output;
mod serve;

pub use analysis::{ActionType, PackageType, TypedImport, interface_short_name};
pub use bytes::{Output, Params, TypedShape, host_budget};
pub use host::{Cutoff, HostState, ImportTarget, add_to_linker, base_linker, is_call_error_result};
pub use imports::link_typed_import;
pub use instance::{Fault, LiveInstance, Package, StartError};
pub use output::human;
pub use serve::{HttpAnswer, HttpCall, check_http_routes};

pub(crate) mod wit {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "steedos:%package/%package",
        // A refused emit fails the emitter's current call: it has no other way to learn.
        imports: {
            "steedos:package/broker.emit": async | trappable,
            "steedos:package/broker.broadcast": async | trappable,
            default: async,
        },
    });
}

/// The 0.1.0 contract, which packages built before 0.2.0 import: linked
/// beside 0.2.0 and adapted to it (`contract_v1.rs`).
pub(crate) mod wit_v1 {
    wasmtime::component::bindgen!({
        path: "../wit/0.1.0",
        world: "steedos:%package/%package",
        imports: {
            "steedos:package/broker.emit": async | trappable,
            "steedos:package/broker.broadcast": async | trappable,
            default: async,
        },
    });
}

/// The interface name prefix of the host's own contract.
pub const STEEDOS_PACKAGE: &str = "steedos:package/";

/// The most actions one package may export: far more than any service
/// needs, few enough that routing tables and `/openapi.json` stay small.
pub const MAX_ACTIONS: usize = 4096;

/// A boxed future, as the [`Router`] returns them.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Who is calling: the package, its grants and the context of the call it
/// is serving. Borrowed from the calling instance for as long as its host
/// call lasts; the grants are the ones the instance was created with, so
/// they hold whether or not its package is installed yet (`started`).
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The calling package.
    pub package: &'a Arc<str>,
    /// What the calling package may call and emit.
    pub grants: &'a Grants,
    /// The context of the call the caller is serving right now.
    pub ctx: &'a CallContext,
    /// Where the callee leaves its meta for the caller, when it wants it.
    pub reply: Option<&'a ReplyMeta>,
}

/// How the host functions a package imports reach the broker. A call
/// borrows what it needs from the calling instance, which waits for it.
pub trait Router: Send + Sync + 'static {
    /// The app's telemetry, when on (spans of outgoing HTTP requests).
    fn telemetry(&self) -> Option<Arc<crate::telemetry::Telemetry>> {
        None
    }

    /// `broker.call`: a dynamic call by name, MessagePack in and out,
    /// under `options`.
    fn call<'a>(
        &'a self,
        from: Caller<'a>,
        action: String,
        params: Vec<u8>,
        options: CallOptions,
    ) -> BoxFuture<'a, Result<Vec<u8>, CallError>>;
    /// A call through a typed import: values in and out, or typed values
    /// (byte lists as bytes) for a signature of [`TypedShape`].
    fn call_import<'a>(
        &'a self,
        from: Caller<'a>,
        target: &'a ImportTarget,
        params: Params<'a>,
    ) -> BoxFuture<'a, Result<Option<Output>, CallError>>;
    /// `broker.emit` (`broadcast == false`) and `broker.broadcast`: resolves
    /// once every subscriber has taken the event, or with why it was refused.
    fn publish<'a>(
        &'a self,
        from: Caller<'a>,
        event: String,
        payload: Vec<u8>,
        broadcast: bool,
    ) -> BoxFuture<'a, Result<(), CallError>>;
    /// The app's key-value buckets, for packages with `grants.kv`.
    fn kv_stores(&self) -> Option<&crate::kv::Stores> {
        None
    }
}

/// Why a package cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The component exports nothing the host can call.
    #[error(
        "package `{package}` is not a steedos package: it exports no actions, no \
         `steedos:package/events` handler and no `wasi:http/incoming-handler@0.2` (its \
         exports: {exports}). Build it against the `steedos:package` world and export an \
         interface of its own, or export `wasi:http/incoming-handler` to serve HTTP"
    )]
    NotAPackage {
        /// The package.
        package: String,
        /// What it does export.
        exports: String,
    },
    /// An export or import uses something the broker cannot carry.
    #[error("package `{package}`: {item}: {reason}")]
    Unsupported {
        /// The package.
        package: String,
        /// The export or import.
        item: String,
        /// Why it is refused.
        reason: String,
    },
    /// A typed import cannot be linked to a provider.
    #[error("package `{package}` imports `{interface}`: {reason}")]
    Import {
        /// The importing package.
        package: String,
        /// The imported interface.
        interface: String,
        /// What is wrong.
        reason: String,
    },
    /// wasmtime refused to link the component.
    #[error("package `{package}` cannot be linked: {message}")]
    Link {
        /// The package.
        package: String,
        /// wasmtime's explanation.
        message: String,
    },
    /// The component exports more actions than the host takes.
    #[error(
        "package `{package}` exports more than {max} actions ({count} seen); split it into \
         several packages"
    )]
    TooManyActions {
        /// The package.
        package: String,
        /// How many were counted before giving up.
        count: usize,
        /// [`MAX_ACTIONS`].
        max: usize,
    },
    /// A granted folder cannot be opened.
    #[error("package `{package}`: cannot open granted folder {dir}: {message}")]
    Grant {
        /// The package.
        package: String,
        /// The folder.
        dir: String,
        /// Why.
        message: String,
    },
}

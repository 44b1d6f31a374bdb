//! A loaded package: what its component exports and imports, how it is
//! linked, and its live instances.
//!
//! # What a package offers
//! [`PackageType::analyze`] reads a component's types: every function of
//! every interface it exports is an action (`lifecycle` and `events` of
//! `steedos:package` excepted), named `<package>.<function>`, or
//! `<package>.<interface>.<function>` where two interfaces share a name.
//! A component that exports no action and no event handler is not a
//! steedos package and is refused with a message that says so.
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
//! start function runs then), for `started` and for every call. A call that traps, times out or runs out of memory returns a
//! [`Fault`]; the instance is then unusable and the caller drops it.
//!
//! The host functions a package imports reach the broker through the
//! [`Router`] trait, so this module never depends on the broker.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{
    Component, ComponentExportIndex, Func, HasSelf, InstancePre, Linker, ResourceTable, TypedFunc,
    Val, types::ComponentFunc, types::ComponentItem, types::Type,
};
use wasmtime::{Engine, ResourceLimiter, Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use crate::codec;
use crate::context::{CallContext, CallError, Human};
use crate::engine::coarse_now;
use crate::guest_log::{self, GuestLogs, GuestOutput};
use crate::manifest::{Grants, PackageSpec};

mod bytes;

pub use bytes::{ByteShape, Output, Params, host_budget};

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

use wit::steedos::package::types as wit_types;

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
}

/// How the host functions a package imports reach the broker. A call
/// borrows what it needs from the calling instance, which waits for it.
pub trait Router: Send + Sync + 'static {
    /// `broker.call`: a dynamic call by name, MessagePack in and out.
    fn call<'a>(
        &'a self,
        from: Caller<'a>,
        action: String,
        params: Vec<u8>,
    ) -> BoxFuture<'a, Result<Vec<u8>, CallError>>;
    /// A call through a typed import, values in and out.
    fn call_import<'a>(
        &'a self,
        from: Caller<'a>,
        target: &'a ImportTarget,
        params: &'a [Val],
    ) -> BoxFuture<'a, Result<Option<Val>, CallError>>;
    /// `broker.emit` (`broadcast == false`) and `broker.broadcast`: resolves
    /// once every subscriber has taken the event, or with why it was refused.
    fn publish<'a>(
        &'a self,
        from: Caller<'a>,
        event: String,
        payload: Vec<u8>,
        broadcast: bool,
    ) -> BoxFuture<'a, Result<(), CallError>>;
}

/// Why a package cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// The component exports nothing the host can call.
    #[error(
        "package `{package}` is not a steedos package: it exports no actions and no \
         `steedos:package/events` handler (its exports: {exports}). Build it against the \
         `steedos:package` world and export an interface of its own"
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

/// One action: a function the package exports.
#[derive(Clone, Debug)]
pub struct ActionType {
    /// The action's name within its package (`reserve`, or `stock.reserve`).
    pub name: String,
    /// The exported interface it belongs to (`None` for a world-level function).
    pub interface: Option<String>,
    /// The WIT function name.
    pub function: String,
    /// Parameter names and types, in order.
    pub params: Vec<(String, Type)>,
    /// The result type, if any.
    pub result: Option<Type>,
    /// Set when its byte lists can cross as bytes.
    pub bytes: Option<ByteShape>,
    /// Where to find the function in an instance.
    pub(crate) index: ComponentExportIndex,
}

/// An interface this package imports that some other package must export.
#[derive(Clone, Debug)]
pub struct TypedImport {
    /// Its full name, `acme:inventory/stock@0.1.0`.
    pub interface: String,
    /// Its functions and their types as the importer expects them.
    pub functions: Vec<(String, ComponentFunc)>,
}

/// What a component exports and imports, read from its types.
#[derive(Clone, Debug)]
pub struct PackageType {
    /// Its actions.
    pub actions: Vec<ActionType>,
    /// Interfaces it exports with their functions' action indexes (for
    /// providing typed imports of other packages).
    pub exported_interfaces: Vec<(String, Vec<usize>)>,
    /// Interfaces it needs from other packages.
    pub typed_imports: Vec<TypedImport>,
    /// Host interfaces it imports (`wasi:*`, `steedos:package/*`).
    pub host_imports: Vec<String>,
    /// Action index by name, so a call finds its action at once.
    by_name: HashMap<String, usize>,
    lifecycle: Option<(ComponentExportIndex, ComponentExportIndex)>,
    events: Option<ComponentExportIndex>,
}

impl PackageType {
    /// Reads what `component` offers and needs; `package` names it in errors.
    pub fn analyze(
        engine: &Engine,
        component: &Component,
        package: &str,
    ) -> Result<Self, PackageError> {
        let cty = component.component_type();
        let mut ty = PackageType {
            actions: Vec::new(),
            exported_interfaces: Vec::new(),
            typed_imports: Vec::new(),
            host_imports: Vec::new(),
            by_name: HashMap::new(),
            lifecycle: None,
            events: None,
        };
        let too_many = |count| PackageError::TooManyActions {
            package: package.to_string(),
            count,
            max: MAX_ACTIONS,
        };
        let mut other_exports = Vec::new();
        for (name, ext) in cty.exports(engine) {
            match ext.ty {
                ComponentItem::ComponentInstance(inst) if is_steedos(name, "lifecycle") => {
                    let iface = export_index(component, None, name)?;
                    let started = export_index(component, Some(&iface), "started")?;
                    let stopped = export_index(component, Some(&iface), "stopped")?;
                    ty.lifecycle = Some((started, stopped));
                    let _ = inst;
                }
                ComponentItem::ComponentInstance(_) if is_steedos(name, "events") => {
                    let iface = export_index(component, None, name)?;
                    ty.events = Some(export_index(component, Some(&iface), "handle")?);
                }
                ComponentItem::ComponentInstance(_) if name.starts_with("wasi:") => {
                    other_exports.push(name.to_string());
                }
                ComponentItem::ComponentInstance(inst) => {
                    let iface = export_index(component, None, name)?;
                    let mut indexes = Vec::new();
                    for (fname, item) in inst.exports(engine) {
                        match item.ty {
                            ComponentItem::ComponentFunc(f) => {
                                if ty.actions.len() >= MAX_ACTIONS {
                                    return Err(too_many(ty.actions.len() + 1));
                                }
                                let index = export_index(component, Some(&iface), fname)?;
                                indexes.push(ty.actions.len());
                                ty.actions
                                    .push(action(package, Some(name), fname, &f, index)?);
                            }
                            ComponentItem::Resource(_) => {
                                return Err(unsupported(
                                    package,
                                    format!("export `{name}`"),
                                    format!(
                                        "resource `{fname}`: packages exchange plain data, not resources"
                                    ),
                                ));
                            }
                            _ => {}
                        }
                    }
                    ty.exported_interfaces.push((name.to_string(), indexes));
                }
                ComponentItem::ComponentFunc(f) => {
                    if ty.actions.len() >= MAX_ACTIONS {
                        return Err(too_many(ty.actions.len() + 1));
                    }
                    let index = export_index(component, None, name)?;
                    ty.actions.push(action(package, None, name, &f, index)?);
                }
                _ => other_exports.push(name.to_string()),
            }
        }
        if ty.actions.is_empty() && ty.events.is_none() {
            let exports = if other_exports.is_empty() {
                "none".to_string()
            } else {
                other_exports.join(", ")
            };
            return Err(PackageError::NotAPackage {
                package: package.to_string(),
                exports,
            });
        }
        qualify_shared_names(&mut ty.actions);
        ty.by_name = ty
            .actions
            .iter()
            .enumerate()
            .map(|(i, a)| (a.name.clone(), i))
            .collect();
        for (name, ext) in cty.imports(engine) {
            match ext.ty {
                _ if name.starts_with("wasi:") || name.starts_with(STEEDOS_PACKAGE) => {
                    ty.host_imports.push(name.to_string())
                }
                ComponentItem::ComponentInstance(inst) => {
                    let mut functions = Vec::new();
                    for (fname, item) in inst.exports(engine) {
                        match item.ty {
                            ComponentItem::ComponentFunc(f) => {
                                functions.push((fname.to_string(), f))
                            }
                            ComponentItem::Type(_) => {}
                            _ => {
                                return Err(unsupported(
                                    package,
                                    format!("import `{name}`"),
                                    format!(
                                        "`{fname}` is not a function; packages import functions only"
                                    ),
                                ));
                            }
                        }
                    }
                    ty.typed_imports.push(TypedImport {
                        interface: name.to_string(),
                        functions,
                    });
                }
                _ => {
                    return Err(unsupported(
                        package,
                        format!("import `{name}`"),
                        "only interfaces can be imported (a bare function or type cannot be provided)"
                            .to_string(),
                    ));
                }
            }
        }
        Ok(ty)
    }

    /// The action called `name` (within this package), with its index.
    pub fn action(&self, name: &str) -> Option<(usize, &ActionType)> {
        let &i = self.by_name.get(name)?;
        Some((i, &self.actions[i]))
    }

    /// Whether the package exports `steedos:package/lifecycle`.
    pub fn has_lifecycle(&self) -> bool {
        self.lifecycle.is_some()
    }

    /// Whether the package exports `steedos:package/events`.
    pub fn handles_events(&self) -> bool {
        self.events.is_some()
    }

    /// The exported interface `name`'s function `function`, as an action index.
    pub fn exported_function(&self, interface: &str, function: &str) -> Option<usize> {
        let (_, indexes) = self
            .exported_interfaces
            .iter()
            .find(|(n, _)| n == interface)?;
        indexes
            .iter()
            .copied()
            .find(|&i| self.actions[i].function == function)
    }
}

fn is_steedos(name: &str, interface: &str) -> bool {
    name.strip_prefix(STEEDOS_PACKAGE)
        .is_some_and(|rest| rest == interface || rest.starts_with(&format!("{interface}@")))
}

fn export_index(
    component: &Component,
    parent: Option<&ComponentExportIndex>,
    name: &str,
) -> Result<ComponentExportIndex, PackageError> {
    component
        .get_export_index(parent, name)
        .ok_or_else(|| PackageError::Link {
            package: String::new(),
            message: format!(
                "export `{name}` is listed in the component's type but cannot be found"
            ),
        })
}

fn unsupported(package: &str, item: String, reason: String) -> PackageError {
    PackageError::Unsupported {
        package: package.to_string(),
        item,
        reason,
    }
}

fn action(
    package: &str,
    interface: Option<&str>,
    function: &str,
    f: &ComponentFunc,
    index: ComponentExportIndex,
) -> Result<ActionType, PackageError> {
    if f.async_() {
        return Err(unsupported(
            package,
            format!("action `{function}`"),
            "async functions are not supported yet".into(),
        ));
    }
    let params: Vec<(String, Type)> = f.params().map(|(n, t)| (n.to_string(), t)).collect();
    let result = f.results().next();
    for t in params.iter().map(|(_, t)| t).chain(result.iter()) {
        if let Some(reason) = unsupported_type(t) {
            return Err(unsupported(package, format!("action `{function}`"), reason));
        }
    }
    Ok(ActionType {
        name: function.to_string(),
        interface: interface.map(str::to_string),
        function: function.to_string(),
        bytes: ByteShape::of(&params, result.as_ref()),
        params,
        result,
        index,
    })
}

/// Why a type cannot cross the broker, if it cannot.
fn unsupported_type(ty: &Type) -> Option<String> {
    match ty {
        Type::Own(_) | Type::Borrow(_) => {
            Some("resources cannot cross packages; pass plain data".into())
        }
        Type::Future(_) | Type::Stream(_) | Type::ErrorContext => {
            Some("futures, streams and error-context are not supported yet".into())
        }
        Type::List(l) => unsupported_type(&l.ty()),
        Type::FixedLengthList(l) => unsupported_type(&l.ty()),
        Type::Option(o) => unsupported_type(&o.ty()),
        Type::Result(r) => r
            .ok()
            .iter()
            .chain(r.err().iter())
            .find_map(unsupported_type),
        Type::Record(r) => r.fields().find_map(|f| unsupported_type(&f.ty)),
        Type::Tuple(t) => t.types().find_map(|t| unsupported_type(&t)),
        Type::Variant(v) => v
            .cases()
            .find_map(|c| c.ty.as_ref().and_then(unsupported_type)),
        Type::Map(m) => unsupported_type(&m.key()).or_else(|| unsupported_type(&m.value())),
        _ => None,
    }
}

/// `reserve` stays `reserve` unless another exported interface also has a
/// `reserve`; then both become `<interface>.reserve`.
fn qualify_shared_names(actions: &mut [ActionType]) {
    // Counted once, so a package with many actions loads in linear time.
    let mut uses: HashMap<String, usize> = HashMap::with_capacity(actions.len());
    for a in actions.iter() {
        *uses.entry(a.function.clone()).or_default() += 1;
    }
    for a in actions.iter_mut() {
        let shared = uses.get(&a.function).is_some_and(|&n| n > 1);
        if let (true, Some(iface)) = (shared, &a.interface) {
            a.name = format!("{}.{}", interface_short_name(iface), a.function);
        }
    }
}

/// `acme:inventory/stock@0.1.0` -> `stock`.
pub fn interface_short_name(interface: &str) -> &str {
    let tail = interface.rsplit('/').next().unwrap_or(interface);
    tail.split('@').next().unwrap_or(tail)
}

/// Where a typed import of one package goes: the providing package's action.
#[derive(Clone, Debug)]
pub struct ImportTarget {
    /// The providing package.
    pub provider: Arc<str>,
    /// The provider's action index when the import was linked (a hint: an
    /// upgraded provider may have moved it).
    pub action: usize,
    /// The imported interface, `acme:inventory/stock@0.1.0`.
    pub interface: String,
    /// The function within it.
    pub function: String,
    /// `<provider>.<action name>`, for messages.
    pub label: String,
    /// Whether the importer's result is `result<T, call-error>`, so a
    /// broker failure can be returned as a value instead of a trap.
    pub errors_as_value: bool,
}

// ------------------------------------------------------------------ store

/// Why an instance stopped in the middle of a call. The instance cannot
/// be entered again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// A trap (a Rust panic, `unreachable`, a stack overflow, ...).
    Trap(String),
    /// The call's deadline passed while the instance was running.
    Timeout,
    /// The instance asked for more memory than its limit.
    OutOfMemory {
        /// The limit, in bytes.
        limit: u64,
    },
    /// The host refused something the guest cannot be told of otherwise
    /// (an emit that was denied or found no room): its call fails.
    Refused(CallError),
}

impl std::fmt::Display for Fault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fault::Trap(cause) => write!(f, "trapped: {cause}"),
            Fault::Timeout => f.write_str("ran past its deadline"),
            Fault::OutOfMemory { limit } => {
                write!(f, "ran out of memory (limit {})", human_bytes(*limit))
            }
            Fault::Refused(e) => write!(f, "was stopped: {e}"),
        }
    }
}

/// The moment past which no guest code of an app runs, set when the app
/// shuts down: a `started`, a call or a `stopped` still running then is
/// interrupted at the next epoch tick, whatever its own deadline, so that
/// `shutdown_timeout` bounds the exit. Shared by every package of an app.
#[derive(Debug)]
pub struct Cutoff {
    base: Instant,
    /// Nanoseconds after `base`; `u64::MAX` while none is set.
    at: AtomicU64,
}

impl Default for Cutoff {
    fn default() -> Self {
        Cutoff {
            base: Instant::now(),
            at: AtomicU64::new(u64::MAX),
        }
    }
}

impl Cutoff {
    /// Sets the cutoff to `at` (an earlier one stays).
    pub fn set(&self, at: Instant) {
        let nanos = at.saturating_duration_since(self.base).as_nanos();
        self.at.fetch_min(
            u64::try_from(nanos).unwrap_or(u64::MAX - 1),
            Ordering::AcqRel,
        );
    }

    /// Whether the cutoff is set and `now` is past it.
    fn passed(&self, now: Instant) -> bool {
        let at = self.at.load(Ordering::Acquire);
        at != u64::MAX && now.saturating_duration_since(self.base).as_nanos() >= u128::from(at)
    }
}

/// The data of one instance's `Store`.
pub struct HostState {
    wasi: WasiCtx,
    table: ResourceTable,
    memory: MemoryLimit,
    package: Arc<str>,
    /// The package's grants, bound to this instance when it was created.
    grants: Arc<Grants>,
    logs: Arc<GuestLogs>,
    /// Why the host made the current call trap, when it did.
    refused: Option<CallError>,
    router: Arc<dyn Router>,
    /// The call this instance is serving, if any.
    call: Option<CallContext>,
    /// Time the current call spent waiting on other packages: its own
    /// deadline is extended by it, so a slow callee never traps its caller.
    waited: std::time::Duration,
    timed_out: bool,
    stderr_tail: Arc<Mutex<String>>,
    cutoff: Arc<Cutoff>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// The caller as the broker sees it. Outside a call (while instantiating)
/// nested calls get a context of their own, kept in `spare`.
fn caller<'a>(
    package: &'a Arc<str>,
    grants: &'a Grants,
    call: &'a Option<CallContext>,
    spare: &'a mut Option<CallContext>,
) -> Caller<'a> {
    let ctx = match call {
        Some(ctx) => ctx,
        None => spare.insert(CallContext::new(std::time::Duration::from_secs(30))),
    };
    Caller {
        package,
        grants,
        ctx,
    }
}

/// The package's `memory` limit over a whole instance: every linear
/// memory and every table of it together.
struct MemoryLimit {
    limit: usize,
    /// Bytes of linear memory and table held now, over all of them.
    used: usize,
    hit: bool,
}

/// Bytes one table element counts for (a function reference).
const TABLE_ELEMENT_BYTES: usize = 8;
/// Memories and tables one instance may hold (the pool's per-component bounds).
const MAX_MEMORIES: usize = 8;
const MAX_TABLES: usize = 16;

impl MemoryLimit {
    fn new(limit: usize) -> Self {
        MemoryLimit {
            limit,
            used: 0,
            hit: false,
        }
    }

    /// Takes `current` bytes of one memory or table to `desired`, when the
    /// instance's total stays within the limit.
    fn grow(&mut self, current: usize, desired: usize) -> wasmtime::Result<bool> {
        let total = self.used.saturating_sub(current).saturating_add(desired);
        if total > self.limit {
            self.hit = true;
            // An error here traps the guest: an OOM must not look like a
            // panic inside the guest's allocator.
            wasmtime::bail!(
                "memory limit reached: the instance wanted {total} bytes in all, limit {}",
                self.limit
            );
        }
        self.used = total;
        Ok(true)
    }
}

impl ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(current, desired)
    }

    fn table_growing(
        &mut self,
        current: usize,
        desired: usize,
        _max: Option<usize>,
    ) -> wasmtime::Result<bool> {
        self.grow(
            current.saturating_mul(TABLE_ELEMENT_BYTES),
            desired.saturating_mul(TABLE_ELEMENT_BYTES),
        )
    }

    fn memories(&self) -> usize {
        MAX_MEMORIES
    }

    fn tables(&self) -> usize {
        MAX_TABLES
    }
}

impl wit_types::Host for HostState {}

impl wit::steedos::package::broker::Host for HostState {
    async fn call(
        &mut self,
        action: String,
        params: Vec<u8>,
    ) -> Result<Vec<u8>, wit_types::CallError> {
        let mut spare = None;
        let from = caller(&self.package, &self.grants, &self.call, &mut spare);
        let started = coarse_now();
        let result = self.router.call(from, action, params).await;
        self.waited += coarse_now().saturating_duration_since(started);
        result.map_err(to_wit_error)
    }

    async fn emit(&mut self, event: String, payload: Vec<u8>) -> wasmtime::Result<()> {
        self.publish(event, payload, false).await
    }

    async fn broadcast(&mut self, event: String, payload: Vec<u8>) -> wasmtime::Result<()> {
        self.publish(event, payload, true).await
    }

    async fn context(&mut self) -> wit_types::CallContext {
        let mut spare = None;
        to_wit_context(caller(&self.package, &self.grants, &self.call, &mut spare).ctx)
    }
}

impl HostState {
    /// An emit or broadcast; a refusal traps the guest's current call
    /// (`emit` returns nothing the guest could read an error from).
    async fn publish(
        &mut self,
        event: String,
        payload: Vec<u8>,
        broadcast: bool,
    ) -> wasmtime::Result<()> {
        let mut spare = None;
        let from = caller(&self.package, &self.grants, &self.call, &mut spare);
        let started = coarse_now();
        let outcome = self.router.publish(from, event, payload, broadcast).await;
        self.waited += coarse_now().saturating_duration_since(started);
        outcome.map_err(|e| {
            let trap = wasmtime::format_err!("{e}");
            self.refused = Some(e);
            trap
        })
    }
}

impl wit::steedos::package::logging::Host for HostState {
    async fn log(&mut self, level: wit::steedos::package::logging::Level, message: String) {
        use wit::steedos::package::logging::Level as L;
        let level = match level {
            L::Trace => guest_log::Level::Trace,
            L::Debug => guest_log::Level::Debug,
            L::Info => guest_log::Level::Info,
            L::Warn => guest_log::Level::Warn,
            L::Error => guest_log::Level::Error,
        };
        let request_id = self.call.as_ref().map(|c| &*c.request_id).unwrap_or("");
        self.logs.log(level, &message, None, request_id);
    }
}

fn to_wit_error(e: CallError) -> wit_types::CallError {
    use wit_types::CallError as W;
    match e {
        CallError::NotFound(m) => W::NotFound(m),
        CallError::InvalidParams(m) => W::InvalidParams(m),
        CallError::Timeout(_) => W::Timeout,
        CallError::Crashed(m) => W::Crashed(m),
        CallError::Overloaded(m) => W::Overloaded(m),
        CallError::Denied(m) => W::Denied(m),
        CallError::Failed(m) => W::Failed(m),
    }
}

fn to_wit_context(ctx: &CallContext) -> wit_types::CallContext {
    wit_types::CallContext {
        request_id: ctx.request_id.to_string(),
        caller: ctx.caller().map(str::to_string),
        level: ctx.level(),
        meta: ctx.meta.iter().cloned().collect(),
    }
}

/// A `call-error` as a component value, for typed imports declared as
/// `result<T, call-error>`.
fn call_error_val(e: &CallError) -> Val {
    let payload = match e {
        CallError::Timeout(_) => None,
        other => Some(Box::new(Val::String(other.message().to_string()))),
    };
    Val::Variant(e.kind().to_string(), payload)
}

/// Whether `ty` is `result<_, call-error>` (a variant with call-error's cases).
pub fn is_call_error_result(ty: Option<&Type>) -> bool {
    let Some(Type::Result(r)) = ty else {
        return false;
    };
    let Some(Type::Variant(v)) = r.err() else {
        return false;
    };
    v.cases()
        .map(|c| c.name)
        .eq(crate::context::ErrorKind::ALL.map(|k| k.name()))
}

/// The linker every package starts from: WASI and `steedos:package`.
pub fn base_linker(engine: &Engine) -> Result<Linker<HostState>, PackageError> {
    let link = |e: wasmtime::Error| PackageError::Link {
        package: String::new(),
        message: format!("{e:#}"),
    };
    let mut linker = Linker::new(engine);
    wasmtime_wasi::p2::add_to_linker_async(&mut linker).map_err(link)?;
    wit::steedos::package::broker::add_to_linker::<HostState, HasSelf<HostState>>(
        &mut linker,
        |s| s,
    )
    .map_err(link)?;
    wit::steedos::package::logging::add_to_linker::<HostState, HasSelf<HostState>>(
        &mut linker,
        |s| s,
    )
    .map_err(link)?;
    wit_types::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s).map_err(link)?;
    Ok(linker)
}

/// Adds one typed import to `linker`: each function forwards its values to
/// `targets[i]` through the router.
pub fn link_typed_import(
    linker: &mut Linker<HostState>,
    import: &TypedImport,
    targets: Vec<Arc<ImportTarget>>,
) -> wasmtime::Result<()> {
    let mut inst = linker.instance(&import.interface)?;
    for ((fname, _), target) in import.functions.iter().zip(targets) {
        inst.func_new_async(fname, move |store, _ty, params, results| {
            let target = target.clone();
            Box::new(async move {
                let mut store = store;
                let HostState {
                    package,
                    grants,
                    router,
                    call,
                    ..
                } = store.data();
                let mut spare = None;
                let from = caller(package, grants, call, &mut spare);
                let started = coarse_now();
                let outcome = router.call_import(from, &target, params).await;
                store.data_mut().waited += coarse_now().saturating_duration_since(started);
                match outcome {
                    Ok(value) => {
                        if let (Some(slot), Some(v)) = (results.first_mut(), value) {
                            *slot = v;
                        }
                        Ok(())
                    }
                    Err(e) if target.errors_as_value => {
                        if let Some(slot) = results.first_mut() {
                            *slot = Val::Result(Err(Some(Box::new(call_error_val(&e)))));
                        }
                        Ok(())
                    }
                    // Fails only this invocation of the caller; its instance is recycled.
                    Err(e) => Err(wasmtime::format_err!(
                        "typed call to `{}` failed: {e}",
                        target.label
                    )),
                }
            })
        })?;
    }
    Ok(())
}

// --------------------------------------------------------------- package

/// A package ready to instantiate: its spec, its types and its `InstancePre`.
pub struct Package {
    /// Its name in the app.
    pub name: Arc<str>,
    /// Its manifest entry.
    pub spec: PackageSpec,
    /// What it offers and needs.
    pub ty: PackageType,
    pre: InstancePre<HostState>,
    cutoff: Arc<Cutoff>,
    /// Its grants, handed to each instance as it is created.
    grants: Arc<Grants>,
    /// Its guest log budget, shared by its instances.
    logs: Arc<GuestLogs>,
}

/// Why an instance could not be started.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Instantiation failed.
    #[error("cannot instantiate: {0}")]
    Instantiate(String),
    /// `started` returned an error.
    #[error("`started` failed: {0}")]
    Refused(String),
    /// `started` trapped, timed out or ran out of memory.
    #[error("`started` {0}")]
    Fault(Fault),
}

impl Package {
    /// Links `component` with `linker` (which must already hold its typed
    /// imports) and prepares instantiation; its guest code stops at `cutoff`.
    pub fn new(
        spec: PackageSpec,
        ty: PackageType,
        component: &Component,
        linker: &Linker<HostState>,
        cutoff: Arc<Cutoff>,
    ) -> Result<Package, PackageError> {
        let pre = linker
            .instantiate_pre(component)
            .map_err(|e| PackageError::Link {
                package: spec.name.clone(),
                message: format!("{e:#}"),
            })?;
        let name: Arc<str> = spec.name.as_str().into();
        Ok(Package {
            grants: Arc::new(spec.grants.clone()),
            logs: Arc::new(GuestLogs::new(name.clone())),
            name,
            spec,
            ty,
            pre,
            cutoff,
        })
    }

    /// Stops the guest code of this package, and of every package sharing
    /// its [`Cutoff`], at `at`.
    pub fn cut_off_at(&self, at: Instant) {
        self.cutoff.set(at);
    }

    /// Guest log lines of this package dropped over its log budget.
    pub fn log_lines_dropped(&self) -> u64 {
        self.logs.dropped()
    }

    fn wasi(&self) -> Result<(WasiCtx, Arc<Mutex<String>>), StartError> {
        let tail = Arc::new(Mutex::new(String::new()));
        let mut b = WasiCtxBuilder::new();
        // No grant opens the network: said here, not left to wasmtime's defaults.
        b.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .socket_addr_check(|_, _| Box::pin(async { false }));
        b.envs(&self.spec.grants.env);
        b.stdout(GuestOutput::new(self.logs.clone(), "stdout", None));
        b.stderr(GuestOutput::new(
            self.logs.clone(),
            "stderr",
            Some(tail.clone()),
        ));
        for dir in &self.spec.grants.dirs {
            let perms = if dir.read_only {
                FsPerms::ReadOnly
            } else {
                FsPerms::ReadWrite
            };
            b.preopened_dir(&dir.host, &dir.guest, perms).map_err(|e| {
                StartError::Instantiate(format!(
                    "cannot open granted folder {}: {e:#}",
                    dir.host.display()
                ))
            })?;
        }
        Ok((b.build(), tail))
    }

    /// A new instance in slot `slot`, not yet `started`.
    pub async fn instantiate(
        &self,
        slot: usize,
        router: Arc<dyn Router>,
    ) -> Result<LiveInstance, StartError> {
        let (wasi, stderr_tail) = self.wasi()?;
        let limit = usize::try_from(self.spec.memory).unwrap_or(usize::MAX);
        let state = HostState {
            wasi,
            table: ResourceTable::new(),
            memory: MemoryLimit::new(limit),
            package: self.name.clone(),
            grants: self.grants.clone(),
            logs: self.logs.clone(),
            refused: None,
            router,
            call: None,
            waited: std::time::Duration::ZERO,
            timed_out: false,
            stderr_tail,
            cutoff: self.cutoff.clone(),
        };
        let mut store = Store::new(self.pre.engine(), state);
        store.limiter(|s| &mut s.memory);
        // What the host allocates for values lifted out of the guest in one go.
        store.set_hostcall_fuel(host_budget(self.spec.memory));
        store.epoch_deadline_callback(|mut cx| {
            let state = cx.data_mut();
            let now = Instant::now();
            let past_deadline = state
                .call
                .as_ref()
                .is_some_and(|call| now >= call.deadline + state.waited);
            if past_deadline || state.cutoff.passed(now) {
                state.timed_out = true;
                return Ok(UpdateDeadline::Interrupt);
            }
            // Long-running guests give the runtime back every tick.
            Ok(UpdateDeadline::Yield(1))
        });
        // A core start function runs during instantiation: it gets the
        // package's timeout like any call.
        store.data_mut().call = Some(CallContext::new(self.spec.timeout));
        store.set_epoch_deadline(1);
        let instantiated = self.pre.instantiate_async(&mut store).await;
        store.data_mut().call = None;
        let instance = instantiated.map_err(|e| {
            let state = store.data();
            if state.timed_out {
                StartError::Instantiate(format!(
                    "instantiating (its start function) did not finish within {}",
                    human(self.spec.timeout)
                ))
            } else if state.memory.hit {
                StartError::Fault(Fault::OutOfMemory {
                    limit: state.memory.limit as u64,
                })
            } else {
                StartError::Instantiate(format!("{e:#}"))
            }
        })?;
        let missing = |what: &str| StartError::Instantiate(format!("export `{what}` is missing"));
        let actions = self
            .ty
            .actions
            .iter()
            .map(|a| {
                instance
                    .get_func(&mut store, a.index)
                    .ok_or_else(|| missing(&a.name))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let lifecycle = match self.ty.lifecycle {
            Some((started, stopped)) => Some((
                instance
                    .get_typed_func(&mut store, started)
                    .map_err(|e| StartError::Instantiate(format!("{e:#}")))?,
                instance
                    .get_typed_func(&mut store, stopped)
                    .map_err(|e| StartError::Instantiate(format!("{e:#}")))?,
            )),
            None => None,
        };
        let events = match self.ty.events {
            Some(idx) => Some(
                instance
                    .get_typed_func(&mut store, idx)
                    .map_err(|e| StartError::Instantiate(format!("{e:#}")))?,
            ),
            None => None,
        };
        Ok(LiveInstance {
            slot,
            store,
            actions,
            lifecycle,
            events,
        })
    }
}

type Started = TypedFunc<(), (Result<(), String>,)>;
type Stopped = TypedFunc<(), ()>;
type Handle = TypedFunc<(String, Vec<u8>, wit_types::CallContext), ()>;

/// One live instance of a package, in a store of its own.
pub struct LiveInstance {
    /// Which of the package's instance slots this is.
    pub slot: usize,
    store: Store<HostState>,
    actions: Vec<Func>,
    lifecycle: Option<(Started, Stopped)>,
    events: Option<Handle>,
}

impl LiveInstance {
    fn arm(&mut self, ctx: CallContext) {
        let state = self.store.data_mut();
        state.call = Some(ctx);
        state.refused = None;
        state.waited = std::time::Duration::ZERO;
        state.timed_out = false;
        self.store.set_epoch_deadline(1);
    }

    fn disarm(&mut self) {
        self.store.data_mut().call = None;
    }

    /// Runs action `action` with `params`; a [`Fault`] means this instance
    /// is dead. Decoded parameters of a byte-shaped action (`bytes`) cross
    /// as bytes.
    pub async fn call(
        &mut self,
        action: usize,
        params: Params<'_>,
        bytes: Option<ByteShape>,
        has_result: bool,
        ctx: CallContext,
    ) -> Result<Option<Output>, Fault> {
        let func = self.actions[action];
        self.arm(ctx);
        let r = match (params, bytes) {
            (Params::Vals(vals), _) => self.call_vals(func, vals, has_result).await,
            (Params::Args(args), Some(shape)) => {
                match bytes::call(func, &mut self.store, shape, args).await {
                    Some(r) => r,
                    None => self.call_args(func, args, has_result).await,
                }
            }
            (Params::Args(args), None) => self.call_args(func, args, has_result).await,
        };
        self.disarm();
        r.map_err(|e| self.fault(e))
    }

    async fn call_vals(
        &mut self,
        func: Func,
        params: &[Val],
        has_result: bool,
    ) -> wasmtime::Result<Option<Output>> {
        let mut results = [Val::Bool(false)];
        let out = if has_result {
            &mut results[..]
        } else {
            &mut results[..0]
        };
        func.call_async(&mut self.store, params, out).await?;
        let [result] = results;
        Ok(has_result.then_some(Output::Val(result)))
    }

    /// Decoded parameters that did not fit a byte shape, as values.
    async fn call_args(
        &mut self,
        func: Func,
        args: &[codec::Arg],
        has_result: bool,
    ) -> wasmtime::Result<Option<Output>> {
        let vals: Vec<Val> = args.iter().cloned().map(codec::Arg::into_val).collect();
        self.call_vals(func, &vals, has_result).await
    }

    /// Calls `started`, when the package exports `lifecycle`.
    pub async fn started(&mut self, ctx: CallContext) -> Result<(), StartError> {
        let Some((started, _)) = self.lifecycle else {
            return Ok(());
        };
        self.arm(ctx);
        let r = started.call_async(&mut self.store, ()).await;
        self.disarm();
        match r {
            Ok((Ok(()),)) => Ok(()),
            Ok((Err(message),)) => Err(StartError::Refused(message)),
            Err(e) => Err(StartError::Fault(self.fault(e))),
        }
    }

    /// Calls `stopped`, when the package exports `lifecycle`.
    pub async fn stopped(&mut self, ctx: CallContext) -> Result<(), Fault> {
        let Some((_, stopped)) = self.lifecycle else {
            return Ok(());
        };
        self.arm(ctx);
        let r = stopped.call_async(&mut self.store, ()).await;
        self.disarm();
        r.map_err(|e| self.fault(e))
    }

    /// Delivers an event, when the package exports `events`.
    pub async fn handle_event(
        &mut self,
        event: &str,
        payload: &[u8],
        ctx: CallContext,
    ) -> Result<(), Fault> {
        let Some(handle) = self.events else {
            return Ok(());
        };
        let wit_ctx = to_wit_context(&ctx);
        self.arm(ctx);
        let r = handle
            .call_async(
                &mut self.store,
                (event.to_string(), payload.to_vec(), wit_ctx),
            )
            .await;
        self.disarm();
        r.map_err(|e| self.fault(e))
    }

    /// Explains why the last call failed, from the store's flags and the trap.
    fn fault(&mut self, e: wasmtime::Error) -> Fault {
        let state = self.store.data_mut();
        if let Some(refusal) = state.refused.take() {
            return Fault::Refused(refusal);
        }
        if state.timed_out || matches!(e.downcast_ref::<Trap>(), Some(Trap::Interrupt)) {
            return Fault::Timeout;
        }
        if state.memory.hit {
            return Fault::OutOfMemory {
                limit: state.memory.limit as u64,
            };
        }
        let panic = state.stderr_tail.lock().ok().and_then(|t| last_words(&t));
        if let Ok(mut t) = state.stderr_tail.lock() {
            t.clear();
        }
        let cause = match (e.downcast_ref::<Trap>(), panic) {
            (Some(Trap::UnreachableCodeReached), Some(p)) => p,
            (Some(Trap::StackOverflow), _) => "stack overflow".to_string(),
            // Rust and C guests keep their stack in linear memory: overflowing
            // it runs off the bottom of memory.
            (Some(Trap::MemoryOutOfBounds), _) => {
                format!(
                    "{} (a guest whose stack overflowed traps this way)",
                    Trap::MemoryOutOfBounds
                )
            }
            (Some(trap), _) => trap.to_string(),
            (None, _) if is_hostcall_fuel(&e) => format!(
                "its result is too large for the host: as component values it would take more \
                 than {} (twice the package's memory limit, at least 128 MiB); a `list<u8>` \
                 crosses as bytes only in a byte-shaped signature (see the README)",
                human_bytes(self.store.hostcall_fuel() as u64)
            ),
            (None, _) => format!("{}", e.root_cause()),
        };
        Fault::Trap(cause)
    }
}

/// wasmtime's "fuel allocated for hostcalls has been exhausted": the values
/// lifted out of a guest outgrew the store's hostcall fuel.
fn is_hostcall_fuel(e: &wasmtime::Error) -> bool {
    e.chain()
        .any(|cause| cause.to_string().contains("fuel allocated for hostcalls"))
}

/// Why a guest that trapped on `unreachable` gave up, from its stderr: an
/// uncaught Python or JavaScript exception, else a Rust panic.
fn last_words(stderr: &str) -> Option<String> {
    python_exception(stderr)
        .or_else(|| javascript_exception(stderr))
        .or_else(|| panic_message(stderr))
}

/// `panicked at src/lib.rs:3:5: boom` from what a Rust guest wrote to stderr.
fn panic_message(stderr: &str) -> Option<String> {
    let at = stderr.rfind("panicked at ")?;
    let text = stderr[at..]
        .split("\nnote: run with `RUST_BACKTRACE")
        .next()
        .unwrap_or_default()
        .trim();
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// `ValueError: boom` from componentize-py's traceback, which its runtime
/// follows with a panic. Frames are indented; the exception line may arrive
/// in pieces (each write is flushed), so the pieces are joined as written.
fn python_exception(stderr: &str) -> Option<String> {
    let end = stderr.rfind("Python function threw an unexpected exception")?;
    let start = stderr[..end].rfind("Traceback (most recent call last):")?;
    let text: String = stderr[start..end]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("thread '"))
        .filter(|l| !l.starts_with(' '))
        .collect();
    let text = text.trim();
    (!text.is_empty()).then(|| format!("uncaught Python exception: {text}"))
}

/// The message StarlingMonkey (componentize-js) prints above `Stack:` for
/// an uncaught exception before it aborts.
fn javascript_exception(stderr: &str) -> Option<String> {
    let end = stderr.rfind("Redirecting call to abort()")?;
    let stack = stderr[..end].rfind("Stack:\n")?;
    let text = stderr[..stack].trim_end().lines().next_back()?.trim();
    (!text.is_empty()).then(|| format!("uncaught JavaScript exception: {text}"))
}

/// `16 MiB` for exact multiples, else bytesize's `16.5 MiB`.
fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => bytesize::ByteSize(n).display().iec().to_string(),
    }
}

/// `1.5s` for messages about deadlines.
pub fn human(d: std::time::Duration) -> Human {
    Human(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_interface_names() {
        assert_eq!(interface_short_name("acme:inventory/stock@0.1.0"), "stock");
        assert_eq!(interface_short_name("acme:inventory/stock"), "stock");
    }

    #[test]
    fn panic_text_is_found_in_stderr() {
        let s = "noise\nthread '<unnamed>' panicked at src/lib.rs:15:24:\nboom on purpose\n";
        assert_eq!(
            panic_message(s).as_deref(),
            Some("panicked at src/lib.rs:15:24: boom on purpose")
        );
        assert_eq!(panic_message("nothing"), None);
    }

    #[test]
    fn uncaught_python_and_javascript_exceptions_are_found_in_stderr() {
        // As componentize-py writes it, each write flushed on a line of its own.
        let py = "Traceback (most recent call last):\n  File \"/1/app.py\", line 17, in boom\nValueError\n: \nkaboom\n\n\n\
                  thread '<unnamed>' (1) panicked at runtime/src/lib.rs:1280:25:\n\
                  Python function threw an unexpected exception\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            last_words(py).as_deref(),
            Some("uncaught Python exception: ValueError: kaboom")
        );
        let js = "earlier line\ncan't access property \"x\", o is null\nStack:\n  boom@dist/app.js:9:5\n\n\
                  Redirecting call to abort() to mozalloc_abort\n\n";
        assert_eq!(
            last_words(js).as_deref(),
            Some("uncaught JavaScript exception: can't access property \"x\", o is null")
        );
        // A Rust panic is still a panic.
        let rust = "thread '<unnamed>' panicked at src/lib.rs:1:1:\nboom\n";
        assert_eq!(
            last_words(rust).as_deref(),
            Some("panicked at src/lib.rs:1:1: boom")
        );
    }
}

//! The host side of a package's WIT imports: the data of an instance's
//! `Store` ([`HostState`]), its memory limit, the app's [`Cutoff`], the
//! `steedos:package` `broker`, `logging` and `types` host impls, and the
//! one [`add_to_linker`] that puts them and WASI into a linker; typed imports
//! forward to another package through the [`Router`]. It must not reach
//! the broker any other way.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::types::Type;
use wasmtime::component::{HasSelf, Linker, ResourceTable, Val};
use wasmtime::{Engine, ResourceLimiter};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::wit::{self, steedos::package::types as wit_types};
use super::{Caller, PackageError, Router};
use crate::context::{CallContext, CallError, CallOptions, ReplyMeta, decode_meta};
use crate::engine::coarse_now;
use crate::guest_log::{self, GuestLogs};
use crate::manifest::Grants;
use crate::telemetry::spans::Outbound;

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
    pub(super) fn passed(&self, now: Instant) -> bool {
        let at = self.at.load(Ordering::Acquire);
        at != u64::MAX && now.saturating_duration_since(self.base).as_nanos() >= u128::from(at)
    }
}

/// The data of one instance's `Store`.
pub struct HostState {
    pub(super) wasi: WasiCtx,
    pub(super) table: ResourceTable,
    pub(super) memory: MemoryLimit,
    pub(super) package: Arc<str>,
    /// The package's grants, bound to this instance when it was created.
    pub(super) grants: Arc<Grants>,
    pub(super) logs: Arc<GuestLogs>,
    /// Why the host made the current call trap, when it did.
    pub(super) refused: Option<CallError>,
    pub(super) router: Arc<dyn Router>,
    /// The call this instance is serving, if any.
    pub(super) call: Option<CallContext>,
    /// Time the current call spent waiting on other packages: its own
    /// deadline is extended by it, so a slow callee never traps its caller.
    pub(super) waited: std::time::Duration,
    pub(super) timed_out: bool,
    pub(super) stderr_tail: Arc<Mutex<String>>,
    pub(super) cutoff: Arc<Cutoff>,
    /// `wasi:http`: what this package may send, bound to the call in progress.
    pub(super) http: crate::http::HttpState,
    /// The `logging` lines of a traced call, for its span (bounded).
    pub(super) log_events: Vec<crate::telemetry::SpanEvent>,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl wasmtime_wasi_http::WasiHttpView for HostState {
    fn http(&mut self) -> wasmtime_wasi_http::WasiHttpCtxView<'_> {
        let call = self.call.as_ref();
        let deadline = call.map(|c| c.deadline + self.waited);
        let request_id = call.map(|c| &c.request_id);
        // Untraced calls cost one test here (the usual case: tracing off).
        let traced = call.is_some_and(|c| c.tracing == Some(true));
        if traced || self.http.traced() {
            let t = call.zip(self.router.telemetry()).filter(|_| traced);
            let package = &self.package;
            self.http
                .trace(t.and_then(|(c, t)| Outbound::of(t, c, package)));
        }
        self.http.view(&mut self.table, deadline, request_id)
    }
}

/// The caller as the broker sees it. Outside a call (while instantiating)
/// nested calls get a context of their own, kept in `spare`.
pub(super) fn caller<'a>(
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
        reply: None,
    }
}

/// The package's `memory` limit over a whole instance: every linear
/// memory and every table of it together.
pub(super) struct MemoryLimit {
    pub(super) limit: usize,
    /// Bytes of linear memory and table held now, over all of them.
    pub(super) used: usize,
    pub(super) hit: bool,
}

/// Bytes one table element counts for (a function reference).
const TABLE_ELEMENT_BYTES: usize = 8;
/// Memories and tables one instance may hold (the pool's per-component bounds).
const MAX_MEMORIES: usize = 8;
const MAX_TABLES: usize = 16;

impl MemoryLimit {
    pub(super) fn new(limit: usize) -> Self {
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
        self.call_with_options(action, params, CallOptions::default())
            .await
            .map_err(to_wit_error)
    }

    async fn call_with(
        &mut self,
        action: String,
        params: Vec<u8>,
        options: wit_types::CallOptions,
    ) -> Result<Vec<u8>, wit_types::CallError> {
        let options = self.call_options(&action, options).map_err(to_wit_error)?;
        self.call_with_options(action, params, options)
            .await
            .map_err(to_wit_error)
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

    async fn set_meta(&mut self, meta: Vec<u8>) -> Result<(), String> {
        self.set_meta(&meta).inspect_err(|e| {
            tracing::warn!(package = %self.package, error = %e, "set-meta refused");
        })
    }
}

/// The most `retries` a call's options may ask for.
const MAX_RETRIES: u32 = 16;
/// The longest node id a call's options may name.
const MAX_NODE_ID: usize = 256;

impl HostState {
    /// `broker.call` under `options`: the callee's meta comes back merged
    /// into the context of the call this instance serves.
    pub(super) async fn call_with_options(
        &mut self,
        action: String,
        params: Vec<u8>,
        options: CallOptions,
    ) -> Result<Vec<u8>, CallError> {
        let reply = ReplyMeta::default();
        let mut spare = None;
        let from = Caller {
            reply: Some(&reply),
            ..caller(&self.package, &self.grants, &self.call, &mut spare)
        };
        let started = coarse_now();
        let result = self.router.call(from, action, params, options).await;
        self.waited += coarse_now().saturating_duration_since(started);
        self.merge_reply(&reply);
        result
    }

    /// The meta a callee left, merged into the call this instance serves.
    pub(super) fn merge_reply(&mut self, reply: &ReplyMeta) {
        if let (Some(meta), Some(ctx)) = (reply.take(), self.call.as_mut()) {
            ctx.meta.merge_reply(&meta);
        }
    }

    /// A guest's `call-options` as the host's, or why they are refused.
    fn call_options(
        &self,
        action: &str,
        options: wit_types::CallOptions,
    ) -> Result<CallOptions, CallError> {
        let refuse = |why: String| {
            tracing::warn!(package = %self.package, action, error = %why, "call options refused");
            CallError::InvalidParams(format!(
                "package `{}` calling `{action}`: options: {why}",
                self.package
            ))
        };
        let meta = match options.meta {
            Some(bytes) => {
                let map = decode_meta(&bytes).map_err(|e| refuse(e.to_string()))?;
                let mut merged = self
                    .call
                    .as_ref()
                    .map(|c| c.meta.clone())
                    .unwrap_or_default();
                merged.merge(&map);
                merged.check_size().map_err(|e| refuse(e.to_string()))?;
                Some(map)
            }
            None => None,
        };
        let node_id = match options.node_id {
            Some(n) if n.is_empty() || n.len() > MAX_NODE_ID => {
                return Err(refuse(format!(
                    "node-id must be 1 to {MAX_NODE_ID} bytes long"
                )));
            }
            n => n.map(Into::into),
        };
        let retries = options.retries.unwrap_or(0);
        if retries > MAX_RETRIES {
            return Err(refuse(format!(
                "retries is {retries}, over the limit of {MAX_RETRIES}"
            )));
        }
        Ok(CallOptions {
            meta,
            timeout: options
                .timeout_ms
                .filter(|ms| *ms > 0)
                .map(|ms| std::time::Duration::from_millis(ms.into())),
            node_id,
            retries,
        })
    }

    /// `set-meta`: keys merged into the meta of the call being served,
    /// within the size limit.
    pub(super) fn set_meta(&mut self, bytes: &[u8]) -> Result<(), String> {
        let package = &self.package;
        let map = decode_meta(bytes).map_err(|e| format!("package `{package}`: set-meta: {e}"))?;
        let Some(ctx) = self.call.as_mut() else {
            return Err(format!(
                "package `{package}`: set-meta: no call is being served"
            ));
        };
        let mut meta = ctx.meta.clone();
        meta.merge(&map);
        meta.check_size()
            .map_err(|e| format!("package `{package}`: set-meta: {e}"))?;
        ctx.meta = meta;
        Ok(())
    }

    /// An emit or broadcast; a refusal traps the guest's current call
    /// (`emit` returns nothing the guest could read an error from).
    pub(super) async fn publish(
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

    /// The log line of a guest, with the request id of its call; an event
    /// of the call's span too when the call is traced.
    pub(super) fn guest_log(&mut self, level: guest_log::Level, message: &str) {
        let request_id = self.call.as_ref().map(|c| &*c.request_id).unwrap_or("");
        let traced = self.call.as_ref().filter(|c| c.tracing == Some(true));
        // A traced call's line carries its span id to the OTLP logs.
        let _in_span = traced.map(crate::telemetry::logs::in_span);
        self.logs.log(level, message, None, request_id);
        if traced.is_some() {
            crate::telemetry::log_event(&mut self.log_events, level.name(), message);
        }
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
        self.guest_log(level, &message);
    }
}

pub(super) fn to_wit_error(e: CallError) -> wit_types::CallError {
    use wit_types::CallError as W;
    match e {
        CallError::NotFound(m) => W::NotFound(m),
        CallError::InvalidParams(m) => W::InvalidParams(m),
        CallError::Timeout(_) => W::Timeout,
        CallError::Crashed(m) => W::Crashed(m),
        CallError::Overloaded(m) => W::Overloaded(m),
        CallError::Denied(m) => W::Denied(m),
        CallError::Failed(f) => W::Failed(f.message),
    }
}

/// A `call-error` from a guest as the host's error.
pub(super) fn from_wit_error(e: wit_types::CallError) -> CallError {
    use wit_types::CallError as W;
    match e {
        W::NotFound(m) => CallError::NotFound(m),
        W::InvalidParams(m) => CallError::InvalidParams(m),
        W::Timeout => CallError::Timeout(String::new()),
        W::Crashed(m) => CallError::Crashed(m),
        W::Overloaded(m) => CallError::Overloaded(m),
        W::Denied(m) => CallError::Denied(m),
        W::Failed(m) => CallError::Failed(m.into()),
    }
}

pub(super) fn to_wit_context(ctx: &CallContext) -> wit_types::CallContext {
    wit_types::CallContext {
        id: ctx.id.to_string(),
        parent_id: ctx.parent_id.as_ref().map(ToString::to_string),
        request_id: ctx.request_id.to_string(),
        caller: ctx.caller().map(str::to_string),
        level: ctx.level(),
        meta: ctx.meta.to_msgpack(),
    }
}

/// A `call-error` as a component value, for typed imports declared as
/// `result<T, call-error>`.
pub(super) fn call_error_val(e: &CallError) -> Val {
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

/// Adds every host import a package may use to `linker`: WASI (p2) and
/// the `steedos:package` world (`broker`, `logging`, `types`), 0.2.0 and 0.1.0.
pub fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_async(linker)?;
    wit::Package::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)?;
    // Packages built against 0.1.0 still load (see `contract_v1.rs`).
    super::wit_v1::Package::add_to_linker::<HostState, HasSelf<HostState>>(linker, |s| s)
}

/// The linker every package starts from: [`add_to_linker`]'s imports.
pub fn base_linker(engine: &Engine) -> Result<Linker<HostState>, PackageError> {
    let mut linker = Linker::new(engine);
    add_to_linker(&mut linker).map_err(|e| PackageError::Link {
        package: String::new(),
        message: format!("{e:#}"),
    })?;
    Ok(linker)
}

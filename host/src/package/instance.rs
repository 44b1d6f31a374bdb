//! The live instance: a [`Package`] ready to instantiate (its
//! `InstancePre`, grants and log budget), the [`LiveInstance`] in a store of
//! its own that serves one call at a time under an epoch deadline, and the
//! [`Fault`] that ends it. What the host reads of a dead guest's output is
//! [`output`](super::output)'s.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use wasmtime::component::{
    Component, Func, Instance, InstancePre, Linker, ResourceTable, TypedFunc, Val,
};
use wasmtime::{Store, Trap, UpdateDeadline};
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder};

use super::contract_v1::to_v1_context;
use super::host::{Cutoff, HostState, MemoryLimit, to_wit_context};
use super::output::{human, human_bytes, is_hostcall_fuel, last_words};
use super::wit::steedos::package::types as wit_types;
use super::{Output, PackageError, PackageType, Params, Router, TypedShape, bytes, host_budget};
use crate::codec;
use crate::context::{CallContext, CallError};
use crate::guest_log::{GuestLogs, GuestOutput};
use crate::manifest::{Grants, PackageSpec};
use wasmtime_wasi_http::p2::bindings::exports::wasi::http::incoming_handler::{
    Guest as HttpHandler, GuestIndices as HttpHandlerIndices,
};

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
    /// Its outgoing HTTP, when it imports `wasi:http`.
    http: Option<Arc<crate::http::OutboundHttp>>,
    /// Where its `wasi:http/incoming-handler` is, when it exports one.
    http_handler: Option<HttpHandlerIndices>,
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
        let http_handler = match ty.http_handler {
            Some(_) => Some(
                HttpHandlerIndices::new(&pre).map_err(|e| PackageError::Link {
                    package: spec.name.clone(),
                    message: format!("its `wasi:http/incoming-handler` cannot be served: {e:#}"),
                })?,
            ),
            None => None,
        };
        let name: Arc<str> = spec.name.as_str().into();
        Ok(Package {
            http_handler,
            grants: Arc::new(spec.grants.clone()),
            logs: Arc::new(GuestLogs::new(name.clone())),
            http: None,
            name,
            spec,
            ty,
            pre,
            cutoff,
        })
    }

    /// This package with its outgoing HTTP (see [`crate::http::link`]).
    pub fn with_http(mut self, http: Option<Arc<crate::http::OutboundHttp>>) -> Package {
        self.http = http;
        self
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
        let mut store = self.store(router)?;
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
        self.live(slot, store, &instance)
    }

    /// A store for one instance: its WASI context and limits, its hostcall
    /// fuel and the epoch callback that enforces deadlines and the cutoff.
    fn store(&self, router: Arc<dyn Router>) -> Result<Store<HostState>, StartError> {
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
            http: crate::http::HttpState::new(self.http.clone()),
            log_events: Vec::new(),
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
        Ok(store)
    }

    /// The instantiated component as a [`LiveInstance`]: its actions and
    /// its `lifecycle` and `events` functions looked up once.
    fn live(
        &self,
        slot: usize,
        mut store: Store<HostState>,
        instance: &Instance,
    ) -> Result<LiveInstance, StartError> {
        let missing = |what: &str| StartError::Instantiate(format!("export `{what}` is missing"));
        let link = |e: wasmtime::Error| StartError::Instantiate(format!("{e:#}"));
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
                instance.get_typed_func(&mut store, started).map_err(link)?,
                instance.get_typed_func(&mut store, stopped).map_err(link)?,
            )),
            None => None,
        };
        let events = match self.ty.events {
            Some(idx) => Some(match instance.get_typed_func(&mut store, idx) {
                Ok(v2) => Handle::V2(v2),
                Err(_) => Handle::V1(instance.get_typed_func(&mut store, idx).map_err(link)?),
            }),
            None => None,
        };
        let http = match &self.http_handler {
            Some(indices) => Some(indices.load(&mut store, instance).map_err(link)?),
            None => None,
        };
        Ok(LiveInstance {
            slot,
            store,
            actions,
            lifecycle: lifecycle.map(Box::new),
            events: events.map(Box::new),
            http: http.map(Box::new),
        })
    }
}

type Started = TypedFunc<(), (Result<(), String>,)>;
type Stopped = TypedFunc<(), ()>;
/// The event handler, of the contract the package was built against.
#[derive(Clone, Copy)]
enum Handle {
    V2(TypedFunc<(String, Vec<u8>, wit_types::CallContext), ()>),
    V1(
        TypedFunc<
            (
                String,
                Vec<u8>,
                super::wit_v1::steedos::package::types::CallContext,
            ),
            (),
        >,
    ),
}

/// One live instance of a package, in a store of its own.
pub struct LiveInstance {
    /// Which of the package's instance slots this is.
    pub slot: usize,
    pub(super) store: Store<HostState>,
    actions: Vec<Func>,
    // The exports below are boxed: an instance is moved in and out of its
    // pool on every call, and a small one moves without a `memcpy` call.
    lifecycle: Option<Box<(Started, Stopped)>>,
    events: Option<Box<Handle>>,
    /// Its `wasi:http/incoming-handler`, when it exports one.
    pub(super) http: Option<Box<HttpHandler>>,
}

impl LiveInstance {
    pub(super) fn arm(&mut self, ctx: CallContext) {
        let state = self.store.data_mut();
        state.call = Some(ctx);
        state.refused = None;
        state.waited = std::time::Duration::ZERO;
        state.timed_out = false;
        self.store.set_epoch_deadline(1);
    }

    /// The guest's log lines of the traced call that just ended, as
    /// events of its span (empty for an untraced one).
    pub fn take_log_events(&mut self) -> Vec<crate::telemetry::SpanEvent> {
        std::mem::take(&mut self.store.data_mut().log_events)
    }

    pub(super) fn disarm(&mut self) {
        self.store.data_mut().call = None;
    }

    /// [`disarm`](Self::disarm) at the end of a call: the callee's meta
    /// left for its caller, when the caller asked for it.
    fn disarm_replying(&mut self) {
        if let Some(ctx) = self.store.data_mut().call.take()
            && let Some(reply) = ctx.reply
        {
            reply.set(ctx.meta);
        }
    }

    /// Runs action `action` with `params`; a [`Fault`] means this instance
    /// is dead. An action of a typed shape (`typed`) is called through a
    /// typed function (its byte lists as bytes), any other with values.
    pub async fn call(
        &mut self,
        action: usize,
        params: Params<'_>,
        typed: Option<TypedShape>,
        has_result: bool,
        ctx: CallContext,
    ) -> Result<Option<Output>, Fault> {
        let func = self.actions[action];
        self.arm(ctx);
        let called = match typed {
            Some(shape) => bytes::call(func, &mut self.store, shape, params).await,
            None => None,
        };
        let r = match (called, params) {
            (Some(r), _) => r,
            (None, Params::Vals(vals)) => self.call_vals(func, vals, has_result).await,
            (None, Params::Args(args)) => self.call_args(func, args, has_result).await,
        };
        self.disarm_replying();
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
        // Boxed: wasmtime's call future (about 1.4 KB) would otherwise be
        // copied into, and with, every call future above it.
        crate::boxed::pinned(|| func.call_async(&mut self.store, params, out)).await?;
        let [result] = results;
        Ok(has_result.then_some(Output::Val(result)))
    }

    /// Decoded parameters that did not fit a typed shape, as values.
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
        let Some((started, _)) = self.lifecycle.as_deref().copied() else {
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
        let Some((_, stopped)) = self.lifecycle.as_deref().copied() else {
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
        let Some(handle) = self.events.as_deref().copied() else {
            return Ok(());
        };
        let args = (event.to_string(), payload.to_vec());
        let r = match handle {
            Handle::V2(f) => {
                let wit_ctx = to_wit_context(&ctx);
                self.arm(ctx);
                f.call_async(&mut self.store, (args.0, args.1, wit_ctx))
                    .await
            }
            Handle::V1(f) => {
                let wit_ctx = to_v1_context(&ctx);
                self.arm(ctx);
                f.call_async(&mut self.store, (args.0, args.1, wit_ctx))
                    .await
            }
        };
        self.disarm();
        r.map_err(|e| self.fault(e))
    }

    /// Explains why the last call failed, from the store's flags and the trap.
    pub(super) fn fault(&mut self, e: wasmtime::Error) -> Fault {
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
                 crosses as bytes only in a signature of a typed shape (see the README)",
                human_bytes(self.store.hostcall_fuel() as u64)
            ),
            (None, _) => format!("{}", e.root_cause()),
        };
        Fault::Trap(cause)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_moves_without_a_memcpy_call() {
        // An instance moves in and out of its pool on every call; past
        // 128 bytes each move is a `memcpy` call.
        let size = std::mem::size_of::<(LiveInstance, std::time::Instant)>();
        assert!(size <= 128, "an idle instance is {size} bytes");
    }
}

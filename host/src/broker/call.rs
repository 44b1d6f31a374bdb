//! Where a call is decided and run: the one pipeline every call takes —
//! the caller's grant (one check), its params decoded by the action's WIT
//! type (JSON or MessagePack, the same path), an instance checked out of
//! the callee's pool, the call run inline on the caller's task, the result
//! encoded back in the caller's format — and the route to another node
//! when no local package serves the action.
//!
//! Protections (breaker, retry, fallback, bulkhead) wrap this from
//! `protect.rs`; faults are handed to `lifecycle.rs`. This module must not
//! decide restarts nor know HTTP or NATS (the transport is a
//! [`RemoteRoute`](super::RemoteRoute)).

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use wasmtime::component::Val;
use wasmtime::component::types::Type;

use super::protect::{Layer, RemoteGuard, RemoteProtection, remote_fallback_applies};
use super::registry::CallerKind;
use super::{Broker, DEADLINE_GRACE, InFlight, RemoteParams, Service};
use crate::codec::{self, Format};
use crate::context::{CallContext, CallError, CallOptions, Failure, Human, host_record};
use crate::package::{ActionType, Caller, Fault, LiveInstance, Output, Params, host_budget};
use crate::pool::{Checkout, Refusal, Unserved, Wait};
use crate::resilience;
use crate::supervisor::PackageState;
use crate::telemetry::{self, Span};

/// A call's result in the caller's wire format.
pub(super) enum Reply {
    /// For [`Format::Json`].
    Json(serde_json::Value),
    /// For [`Format::MessagePack`].
    MessagePack(Vec<u8>),
}

impl Reply {
    pub(super) fn into_json(self) -> serde_json::Value {
        match self {
            Reply::Json(value) => value,
            // Not reached: the pipeline answers in the format it was asked.
            Reply::MessagePack(bytes) => codec::bytes_to_json(&bytes),
        }
    }

    fn into_bytes(self) -> Vec<u8> {
        match self {
            Reply::MessagePack(bytes) => bytes,
            Reply::Json(value) => value.to_string().into_bytes(),
        }
    }
}

/// What the action cache (`cache.rs`) holds for a call of a cached action.
pub(super) enum Lookup {
    /// The answer this node's memory keeps, in the caller's format.
    Hit(Reply),
    /// Not in memory: the key to look for in the cache's bucket and to
    /// keep the answer under.
    Miss(String),
    /// No cache to ask (the app has none, or the params make no key): the
    /// call goes in as any other.
    Uncached,
}

/// One call of a local action with encoded params.
pub(super) struct Encoded<'a> {
    /// `<package>.<action>`, for messages.
    pub(super) action: &'a str,
    pub(super) format: Format,
    /// Dropped once decoded, so that a call holds one copy of its payload.
    pub(super) params: Cow<'a, [u8]>,
    pub(super) ctx: CallContext,
    /// Whether the action's fallback may answer (not for a fallback itself).
    pub(super) fallback: bool,
}

impl Broker {
    /// The pipeline: decode `call.params` by the action's type, invoke it
    /// with its protections, encode the result in `call.format`.
    pub(super) async fn call_encoded(
        &self,
        found: (Arc<Service>, usize),
        call: Encoded<'_>,
    ) -> Result<Reply, CallError> {
        if found.0.policies[found.1].cache.is_some() {
            return match self.kept_answer(&found, &call) {
                Lookup::Hit(reply) => Ok(reply),
                // Boxed: the cache's store futures stay off the other paths.
                Lookup::Miss(key) => {
                    crate::boxed::pinned(|| self.call_missed(found, call, key)).await
                }
                Lookup::Uncached => self.call_uncached(found, call).await,
            };
        }
        self.call_uncached(found, call).await
    }

    /// [`Broker::call_encoded`] without the action cache.
    pub(super) async fn call_uncached(
        &self,
        (service, index): (Arc<Service>, usize),
        call: Encoded<'_>,
    ) -> Result<Reply, CallError> {
        let action_ty = &service.package.ty.actions[index];
        let args = decode_params(&service, action_ty, call.action, call.format, &call.params)
            .inspect_err(|e| service.record(index, Instant::now(), &Err::<(), _>(e.clone())))?;
        drop(call.params);
        let value = self
            .invoke_protected(&service, index, args.params(), call.ctx, call.fallback)
            .await?;
        drop(args);
        encode_result(call.action, action_ty, call.format, value)
    }

    /// `broker.call` from a package under its options: tried again, up to
    /// `options.retries` times, while the failure is one another try may
    /// mend and the caller has time left.
    pub(super) async fn call_from_package_with(
        &self,
        from: Caller<'_>,
        action: String,
        params: Vec<u8>,
        options: CallOptions,
    ) -> Result<Vec<u8>, CallError> {
        if options.retries == 0 {
            return self
                .call_from_package(from, &action, params, &options)
                .await;
        }
        let mut tries = 0;
        loop {
            let outcome = self
                .call_from_package(from, &action, params.clone(), &options)
                .await;
            match outcome {
                Err(e)
                    if tries < options.retries
                        && e.kind().moleculer().retryable
                        && !from.ctx.remaining().is_zero() =>
                {
                    tries += 1;
                    tracing::debug!(package = %from.package, action, tries, error = %e, "retrying a call");
                }
                outcome => return outcome,
            }
        }
    }

    /// `broker.call` from a package: its grants (the one check), then the
    /// local action through the pipeline, or another node through the
    /// caller's protections; the node its options name, when they name one.
    pub(super) async fn call_from_package(
        &self,
        from: Caller<'_>,
        action: &str,
        params: Vec<u8>,
        options: &CallOptions,
    ) -> Result<Vec<u8>, CallError> {
        let elsewhere = options.node_id.as_ref().is_some_and(|node| {
            self.remote()
                .is_some_and(|r| r.node_id().as_deref() != Some(&**node))
        });
        let route = match self.resolve(action) {
            _ if elsewhere => Err(CallError::NotFound(format!(
                "{action}: node `{}` does not serve it",
                options.node_id.as_deref().unwrap_or_default()
            ))),
            Err(_) if action.starts_with('$') => {
                check_call_grant(from, action)?;
                return self.call_internal_msgpack(action, &params);
            }
            Err(missing) if self.remote().is_none() => return Err(missing),
            route => route,
        };
        check_call_grant(from, action)?;
        let mut ctx = from.ctx.via(from.package);
        options.apply(&mut ctx);
        ctx.reply = from.reply.cloned();
        match route {
            Ok(found) => {
                found
                    .0
                    .check_visibility(found.1, CallerKind::Package(from.package))?;
                let call = Encoded {
                    action,
                    format: Format::MessagePack,
                    params: Cow::Owned(params),
                    ctx,
                    fallback: true,
                };
                self.call_encoded(found, call).await.map(Reply::into_bytes)
            }
            Err(missing) => {
                // A caller not installed yet (its `started`) has no protections.
                let caller = self.service(from.package);
                let guard = match &caller {
                    Some(s) => self.remote_guard(&s.remote, action),
                    None => RemoteGuard::NONE,
                };
                let params = RemoteParams::MessagePack(&params);
                // Boxed: the transport's futures stay off the local path.
                let reply =
                    Box::pin(self.call_remote_protected(guard, action, params, ctx, missing));
                reply.await.map(Reply::into_bytes)
            }
        }
    }

    /// `$node.*` for a package (MessagePack in and out), answered here as
    /// Moleculer answers its local `$node`.
    fn call_internal_msgpack(&self, action: &str, params: &[u8]) -> Result<Vec<u8>, CallError> {
        let json = match params {
            [] => Vec::new(),
            bytes => rmp_serde::from_slice::<serde_json::Value>(bytes)
                .and_then(|v| serde_json::to_vec(&v).map_err(serde::de::Error::custom))
                .map_err(|e| CallError::InvalidParams(format!("{action}: params: {e}")))?,
        };
        let missing = || CallError::NotFound(format!("no action `{action}` on this host"));
        let value = self.call_internal(action, &json).ok_or_else(missing)??;
        rmp_serde::to_vec_named(&value).map_err(|e| {
            CallError::Failed(
                format!("{action}: cannot encode the result as MessagePack: {e}").into(),
            )
        })
    }

    /// A local miss goes to another node when one serves `action`.
    pub(super) async fn call_remote(
        &self,
        action: &str,
        params: RemoteParams<'_>,
        mut ctx: CallContext,
        missing: CallError,
    ) -> Result<serde_json::Value, CallError> {
        let t = self.telemetry();
        let mut span = t.and_then(|t| telemetry::spans::remote_call(t, &mut ctx, action));
        let call = self
            .remote()
            .and_then(|remote| remote.call(action, params, &ctx));
        let outcome = match call {
            Some(call) => call.await,
            None => Err(missing),
        };
        if let (Some(t), Some(mut span)) = (t, span.take()) {
            span.outcome(&outcome);
            t.end(span);
        }
        outcome
    }

    /// The protections of a call to `action` on another node by a caller
    /// with `protection` (a package's, or the outside callers').
    pub(super) fn remote_guard<'p>(
        &self,
        protection: &'p RemoteProtection,
        action: &str,
    ) -> RemoteGuard<'p> {
        let served = || self.remote().is_some_and(|r| r.params(action).is_some());
        protection.guard(action, served)
    }

    /// A call to an action on another node, under the caller's breaker,
    /// retries and fallback for it (see `protect.rs`); the answer in the
    /// format of `params`.
    pub(super) async fn call_remote_protected(
        &self,
        guard: RemoteGuard<'_>,
        action: &str,
        params: RemoteParams<'_>,
        ctx: CallContext,
        missing: CallError,
    ) -> Result<Reply, CallError> {
        let outcome = guard
            .layer()
            .run(
                || action.to_string(),
                &ctx,
                |_| self.call_remote(action, params, ctx.clone(), missing.clone()),
                |_, _| {},
            )
            .await
            .and_then(|value| remote_reply(action, params, value));
        match (outcome, guard.fallback) {
            (Err(e), Some(fallback)) if remote_fallback_applies(&e) => {
                tracing::info!(action, fallback, error = %e, "calling the fallback of an action on another node");
                let answer = match self.resolve(fallback) {
                    Ok(found) => {
                        let (format, bytes) = match params {
                            RemoteParams::Json(b) => (Format::Json, b),
                            RemoteParams::MessagePack(b) => (Format::MessagePack, b),
                        };
                        let call = Encoded {
                            action: fallback,
                            format,
                            params: Cow::Borrowed(bytes),
                            ctx,
                            fallback: false,
                        };
                        Box::pin(self.call_encoded(found, call)).await
                    }
                    Err(missing) => {
                        let value = self.call_remote(fallback, params, ctx, missing).await;
                        value.and_then(|v| remote_reply(fallback, params, v))
                    }
                };
                answer.or(Err(e))
            }
            (outcome, _) => outcome,
        }
    }

    /// Runs one call on one instance of `service`, with its protections.
    pub(super) async fn invoke(
        &self,
        service: &Arc<Service>,
        action: usize,
        params: Params<'_>,
        ctx: CallContext,
    ) -> Result<Option<Output>, CallError> {
        self.invoke_protected(service, action, params, ctx, true)
            .await
    }

    /// One attempt of a call, begun at `now`; its span, when traced.
    pub(super) async fn invoke_unmetered(
        &self,
        service: &Arc<Service>,
        action: usize,
        params: Params<'_>,
        mut ctx: CallContext,
        now: Instant,
    ) -> Result<Option<Output>, CallError> {
        let Some(t) = self.telemetry() else {
            return self
                .invoke_run(service, action, params, ctx, now, &mut None)
                .await;
        };
        let names = &service.span_names[action];
        let mut span = telemetry::spans::call(t, &mut ctx, &service.package.name, names);
        let outcome = self
            .invoke_run(service, action, params, ctx, now, &mut span)
            .await;
        if let Some(mut span) = span {
            span.outcome(&outcome);
            t.end(span);
        }
        outcome
    }

    /// [`Broker::invoke_unmetered`] under `span`, which learns how long
    /// the call waited for an instance.
    async fn invoke_run(
        &self,
        service: &Arc<Service>,
        action: usize,
        params: Params<'_>,
        mut ctx: CallContext,
        now: Instant,
        span: &mut Option<Span<'_>>,
    ) -> Result<Option<Output>, CallError> {
        // A caller that never waits (its instances are always idle) still
        // gives the runtime back now and then, so restarts and timers run.
        tokio::task::consume_budget().await;
        let outermost = ctx.chain.is_empty();
        // Calls already under way finish, nested calls included; new ones are refused.
        if outermost && self.closing.load(Ordering::Acquire) {
            return Err(CallError::Overloaded(format!(
                "{}: the host is shutting down",
                service.label(action)
            )));
        }
        let _in_flight = outermost.then(|| InFlight::new(&self.in_flight));
        let budget = self.admit(service, action, &mut ctx, now)?;
        let instance = match self.check_out(service, action, &ctx).await {
            Ok(instance) => instance,
            // Resolved just before an upgrade swapped the version: the call
            // has not run, so the version now serving takes it.
            Err(e) => match self.successor(service, action) {
                Some((next, index)) => {
                    let call = self.invoke_run(&next, index, params, ctx, now, span);
                    return Box::pin(call).await;
                }
                None => return Err(e),
            },
        };
        if let Some(span) = span {
            span.set("steedos.queue_wait_us", now.elapsed().as_micros() as i64);
        }
        let action_ty = &service.package.ty.actions[action];
        let (has_result, typed) = (action_ty.result.is_some(), action_ty.typed);
        let deadline = ctx.deadline;
        let mut lease = super::lifecycle::Lease::new(self, service, instance);
        let outcome = {
            let run = std::pin::pin!(lease.get().call(action, params, typed, has_result, ctx));
            // The epoch deadline stops a running guest. The outermost call also
            // keeps a timer, for a guest stuck in a host call; nested calls are
            // inside its future and go with it (their leases retire them).
            match outermost {
                true => within(deadline + DEADLINE_GRACE, run).await,
                false => Some(run.await),
            }
        };
        if let Some(span) = span {
            span.events.append(&mut lease.get().take_log_events());
        }
        match outcome {
            Some(Ok(value)) => {
                lease.release();
                Ok(value)
            }
            Some(Err(fault)) => Err(lease.fault(fault, &service.label(action), budget)),
            None => Err(lease.fault(Fault::Timeout, &service.label(action), budget)),
        }
    }

    /// The call depth check, and the callee's own timeout, never more than
    /// the caller has left: `ctx`'s deadline set to it (in place: a context
    /// is too big to move about per call), and the budget.
    fn admit(
        &self,
        service: &Service,
        action: usize,
        ctx: &mut CallContext,
        now: Instant,
    ) -> Result<Duration, CallError> {
        let level = ctx.level();
        if level > self.settings.max_call_depth {
            return Err(CallError::Overloaded(format!(
                "{}: call depth {level} exceeds the limit of {} (chain: {})",
                service.label(action),
                self.settings.max_call_depth,
                ctx.chain_text()
            )));
        }
        let budget = service
            .package
            .spec
            .timeout
            .min(ctx.deadline.saturating_duration_since(now));
        ctx.deadline = now + budget;
        Ok(budget)
    }

    /// An idle instance of `service` for the call: now, or once one comes
    /// back, within the package's queue and the action's bulkhead.
    async fn check_out(
        &self,
        service: &Arc<Service>,
        action: usize,
        ctx: &CallContext,
    ) -> Result<LiveInstance, CallError> {
        let label = || service.label(action);
        let in_chain = ctx.passed_through(service.name());
        match service.pool.checkout(!in_chain, ctx.deadline) {
            Ok(Checkout::Ready(i)) => Ok(i),
            Ok(Checkout::Queued(wait)) => match self.grow_then_wait(service, action, wait).await? {
                Ok(i) => Ok(i),
                Err(Unserved::Released) => Err(unavailable(service, &label())),
                Err(Unserved::Expired) => Err(CallError::Timeout(format!(
                    "{}: no instance became idle before the deadline ({} instances busy)",
                    label(),
                    service.package.spec.instances
                ))),
            },
            Err(Refusal::Busy) => Err(CallError::Overloaded(format!(
                "{}: every instance of `{}` is busy serving an outer part of this call (chain: {}); \
                 waiting would deadlock, so the call fails now — raise `instances` for `{}`",
                label(),
                service.name(),
                ctx.chain_text(),
                service.name()
            ))),
            Err(Refusal::QueueFull) => Err(CallError::Overloaded(format!(
                "{}: {} calls are already waiting (queue limit)",
                label(),
                service.package.spec.queue
            ))),
            Err(Refusal::NoInstance) => Err(unavailable(service, &label())),
        }
    }

    /// A call had to wait: start one more instance if the pool may grow,
    /// then wait for whichever instance comes back first, within the
    /// action's own bulkhead.
    async fn grow_then_wait(
        &self,
        service: &Arc<Service>,
        action: usize,
        wait: Wait<'_>,
    ) -> Result<Result<LiveInstance, Unserved>, CallError> {
        self.scale_up(service);
        let _place = service.policies[action].enter_queue(|| service.label(action))?;
        Ok(wait.await)
    }
}

/// `Denied` unless the caller's own grants (bound to its instance) allow `action`.
fn check_call_grant(from: Caller<'_>, action: &str) -> Result<(), CallError> {
    if from.grants.may_call(action) {
        return Ok(());
    }
    Err(CallError::Denied(format!(
        "package `{}` may not call `{action}`: add it to `calls` in [packages.{}.grants]",
        from.package, from.package
    )))
}

/// A JSON result from another node in the format the caller wrote its
/// params in (MessagePack for a package).
fn remote_reply(
    action: &str,
    params: RemoteParams<'_>,
    value: serde_json::Value,
) -> Result<Reply, CallError> {
    match params {
        RemoteParams::Json(_) => Ok(Reply::Json(value)),
        RemoteParams::MessagePack(_) => rmp_serde::to_vec_named(&value)
            .map(Reply::MessagePack)
            .map_err(|e| {
                CallError::Failed(
                    format!("{action}: cannot encode the result as MessagePack: {e}").into(),
                )
            }),
    }
}

/// Runs `call` until `deadline`; `None` if the deadline came first. The
/// timer is armed only once the call has to wait, and most calls never do.
pub(super) async fn within<F: Future>(
    deadline: Instant,
    mut call: Pin<&mut F>,
) -> Option<F::Output> {
    let mut timer: Option<Pin<Box<tokio::time::Sleep>>> = None;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = call.as_mut().poll(cx) {
            return Poll::Ready(Some(out));
        }
        let timer =
            timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline.into())));
        timer.as_mut().poll(cx).map(|()| None)
    })
    .await
}

/// Why `service` has no instance for a call, by its state.
pub(super) fn unavailable(service: &Service, label: &str) -> CallError {
    let status = service.status();
    let why = status
        .last_error
        .as_deref()
        .unwrap_or("no instance is running");
    match status.state {
        PackageState::Backoff { retry_at } => CallError::Overloaded(format!(
            "{label}: package `{}` is in restart backoff after repeated faults (retry in {}){}",
            service.name(),
            Human(retry_at.saturating_duration_since(Instant::now())),
            host_record(why)
        )),
        PackageState::Stopped => {
            CallError::Overloaded(format!("{label}: package `{}` is stopped", service.name()))
        }
        _ => CallError::Overloaded(format!(
            "{label}: package `{}` has no running instance ({}){}",
            service.name(),
            status.state.name(),
            host_record(why)
        )),
    }
}

/// A call's decoded parameters: bytes kept as bytes for a typed-shape
/// action, values for any other.
pub(super) enum Decoded {
    Vals(Vec<Val>),
    Args(Vec<codec::Arg>),
}

impl Decoded {
    /// `args` in the form `action` of `service` takes; an error if as
    /// values they would outgrow the package's host budget.
    pub(super) fn new(
        args: Vec<codec::Arg>,
        action: &ActionType,
        service: &Service,
    ) -> Result<Decoded, String> {
        if action.typed.is_some() {
            return Ok(Decoded::Args(args));
        }
        let budget = host_budget(service.package.spec.memory);
        let cost = args.iter().map(codec::Arg::val_cost).sum::<usize>();
        if cost > budget {
            return Err(format!(
                "too large: as component values the parameters would take more than {} of host memory",
                bytesize::ByteSize::b(budget as u64).display().iec()
            ));
        }
        Ok(Decoded::Vals(
            args.into_iter().map(codec::Arg::into_val).collect(),
        ))
    }

    pub(super) fn params(&self) -> Params<'_> {
        match self {
            Decoded::Vals(vals) => Params::Vals(vals),
            Decoded::Args(args) => Params::Args(args),
        }
    }
}

/// Decodes `bytes` as the parameters of `action` of `service`, within the
/// package's host budget; refusals name the action and the payload's size.
fn decode_params(
    service: &Service,
    action: &ActionType,
    label: &str,
    format: Format,
    bytes: &[u8],
) -> Result<Decoded, CallError> {
    let options = codec::DecodeOptions {
        budget: host_budget(service.package.spec.memory),
        bytes: action.typed.is_some(),
    };
    let refuse = |e: &dyn std::fmt::Display| {
        let size = bytesize::ByteSize::b(bytes.len() as u64).display().iec();
        CallError::InvalidParams(format!("{label}: {e} (payload of {size})"))
    };
    match codec::decode_args(&action.params, format, bytes, options) {
        Ok(args) => Decoded::new(args, action, service).map_err(|e| refuse(&e)),
        Err(e) if e.message.starts_with("too large") => Err(refuse(&e)),
        Err(e) => Err(CallError::InvalidParams(format!("{label}: {e}"))),
    }
}

/// `value`, the result of `action`, in `format`.
fn encode_result(
    label: &str,
    action: &ActionType,
    format: Format,
    value: Option<Output>,
) -> Result<Reply, CallError> {
    let cannot = |e: &dyn std::fmt::Display| {
        CallError::Failed(format!("{label}: cannot encode the result: {e}").into())
    };
    let (ty, val) = split_result(label, action.result.as_ref(), value)?;
    match (format, ty, val) {
        (Format::Json, _, Some(Output::Bytes(bytes))) => {
            Ok(Reply::Json(codec::bytes_to_json(&bytes)))
        }
        (Format::Json, Some(ty), Some(out)) => codec::to_json_value(&ty, &out.into_val())
            .map(Reply::Json)
            .map_err(|e| cannot(&e)),
        (Format::Json, _, _) => Ok(Reply::Json(serde_json::Value::Null)),
        (Format::MessagePack, _, Some(Output::Bytes(bytes))) => Ok(Reply::MessagePack(
            codec::encode_bytes(&bytes, Format::MessagePack),
        )),
        (Format::MessagePack, Some(ty), Some(out)) => {
            codec::encode_value(&ty, &out.into_val(), Format::MessagePack)
                .map(Reply::MessagePack)
                .map_err(|e| cannot(&e))
        }
        // MessagePack nil: the action returns nothing.
        (Format::MessagePack, _, _) => Ok(Reply::MessagePack(vec![0xc0])),
    }
}

/// An action's own error value `e` of type `ty`: its text, and the status
/// it names (a `status` field of 400..=599 in its JSON), read as data.
fn own_error(label: &str, ty: Option<Type>, e: Option<Val>) -> Failure {
    let (message, status) = match (ty, e) {
        (_, Some(Val::String(s))) => (s, None),
        (Some(ty), Some(v)) => match codec::to_json_value(&ty, &v) {
            Ok(json) => {
                let status = json.get("status").and_then(serde_json::Value::as_u64);
                (json.to_string(), status)
            }
            Err(e) => (e.to_string(), None),
        },
        _ => ("error".to_string(), None),
    };
    Failure::with_status(format!("{label}: {message}"), status)
}

/// For an action returning `result<T, E>`: the ok value by `T`, or the
/// error as `failed`. Any other result passes through.
fn split_result(
    label: &str,
    ty: Option<&Type>,
    value: Option<Output>,
) -> Result<(Option<Type>, Option<Output>), CallError> {
    match (ty, value) {
        (Some(Type::Result(r)), Some(Output::OkBytes(bytes))) => {
            Ok((r.ok(), Some(Output::Bytes(bytes))))
        }
        (Some(Type::Result(r)), Some(Output::Val(Val::Result(Ok(v))))) => {
            Ok((r.ok(), v.map(|b| Output::Val(*b))))
        }
        (Some(Type::Result(r)), Some(Output::Val(Val::Result(Err(e))))) => {
            Err(CallError::Failed(own_error(label, r.err(), e.map(|v| *v))))
        }
        (ty, value) => Ok((ty.cloned(), value)),
    }
}

impl Broker {
    /// One call of a local action with its protections: the circuit
    /// breaker, retries of idempotent actions with exponential backoff,
    /// and the fallback (not for a call that is itself a fallback).
    pub(super) async fn invoke_protected(
        &self,
        service: &Arc<Service>,
        action: usize,
        params: Params<'_>,
        ctx: CallContext,
        allow_fallback: bool,
    ) -> Result<Option<Output>, CallError> {
        let policy = &service.policies[action];
        let layer = Layer {
            breaker: policy.breaker.as_ref(),
            retry: policy.idempotent.then_some(&service.package.spec.retry),
        };
        let outcome = layer
            .run(
                || service.label(action),
                &ctx,
                // Boxed: the attempt's future (the instance's call and
                // wasmtime's below it) is built once on the heap instead of
                // being copied into every future above it, per call.
                |started| {
                    crate::boxed::pinned(|| {
                        self.invoke_unmetered(service, action, params, ctx.clone(), started)
                    })
                },
                |started, outcome| service.record(action, started, outcome),
            )
            .await;
        match (&outcome, &policy.fallback) {
            (Err(e), Some(fallback)) if allow_fallback && resilience::is_failure(e) => {
                let Ok((fb_service, fb_action)) = self.resolve(fallback) else {
                    return outcome;
                };
                let from = &service.package.ty.actions[action];
                let to = &fb_service.package.ty.actions[fb_action];
                let Some(fb_params) = fallback_params(from, to, params, &fb_service) else {
                    tracing::warn!(package = service.name(), fallback = %fallback, "the fallback's parameters do not fit; not called");
                    return outcome;
                };
                tracing::info!(package = service.name(), fallback = %fallback, "calling the fallback");
                let call = Box::pin(self.invoke_protected(
                    &fb_service,
                    fb_action,
                    fb_params.params(),
                    ctx,
                    false,
                ));
                call.await.or(outcome)
            }
            _ => outcome,
        }
    }
}

/// The fallback's parameters, taken by name from the failed call's: each
/// must be there with the same type, or be an `option` (then `none`).
fn fallback_params(
    from: &ActionType,
    to: &ActionType,
    params: Params<'_>,
    to_service: &Service,
) -> Option<Decoded> {
    let arg = |i: usize| match params {
        Params::Vals(vals) => vals.get(i).cloned().map(codec::Arg::Val),
        Params::Args(args) => args.get(i).cloned(),
    };
    let args: Vec<codec::Arg> = to
        .params
        .iter()
        .map(
            |(name, ty)| match from.params.iter().position(|(n, t)| n == name && t == ty) {
                Some(i) => arg(i),
                None if matches!(ty, Type::Option(_)) => Some(codec::Arg::Val(Val::Option(None))),
                None => None,
            },
        )
        .collect::<Option<_>>()?;
    Decoded::new(args, to, to_service).ok()
}

//! The spans of each kind of hop, named and tagged one way wherever they
//! are begun: a call (`action 'a.b'`, as Moleculer names it), a call to
//! another node, an event delivery (`event 'x' in 'a'`), an instance start,
//! a gateway request, an outgoing HTTP request. Callers hold the span while
//! the hop runs and hand it back to [`Telemetry::end`](super::Telemetry::end).

use std::sync::{Arc, OnceLock};

use super::{Kind, Span, Telemetry, Text};
use crate::context::{CallContext, ContextId};

/// What a call's span says of an action, written once per action (so a
/// span borrows them instead of formatting them each call): its span name,
/// `action 'a.b'` as Moleculer names it, and its full name `a.b`; and,
/// once per call site, the OTLP bytes of what every span there shares
/// (see [`Head`]).
#[derive(Clone, Debug)]
pub struct ActionNames {
    span: Box<str>,
    action: Box<str>,
    heads: [OnceLock<Head>; HEADS],
}

/// Call sites of one action whose spans' shared part is kept as bytes (an
/// action is called from a few places; calls from more are written whole).
const HEADS: usize = 4;

/// The OTLP bytes every span of an action at one call site shares: its
/// name, this node, the package, the action, the level, whether the call
/// came from another node, and the caller; written once, copied into each
/// span as it is exported (they were most of the work of writing one).
/// Read without a lock (a `OnceLock`), so the threads calling an action
/// share it without writing to it.
#[derive(Clone, Debug)]
pub struct Head {
    pub(super) node: Box<str>,
    level: u32,
    remote: bool,
    caller: Option<Box<str>>,
    /// The bytes: the span's name field, then `steedos.node`,
    /// `steedos.package` and its first [`Head::attributes`] attributes.
    pub(super) bytes: Box<[u8]>,
    /// How many of the span's attributes the bytes hold (its first ones).
    pub(super) attributes: usize,
}

impl Head {
    /// The head of `span` as it is now, on `node`, for calls at `level`
    /// (`remote` when from another node) from `caller`.
    pub(super) fn new(
        span: &Span<'_>,
        node: &str,
        level: u32,
        remote: bool,
        caller: Option<&str>,
    ) -> Head {
        Head {
            node: node.into(),
            level,
            remote,
            caller: caller.map(Into::into),
            bytes: super::otlp_span::head(span, node),
            attributes: span.attributes.len(),
        }
    }

    fn is(&self, node: &str, level: u32, remote: bool, caller: Option<&str>) -> bool {
        self.level == level
            && self.remote == remote
            && *self.node == *node
            && self.caller.as_deref() == caller
    }
}

impl ActionNames {
    /// The names of `package`'s `action`.
    pub fn new(package: &str, action: &str) -> ActionNames {
        ActionNames {
            span: format!("action '{package}.{action}'").into(),
            action: format!("{package}.{action}").into(),
            heads: Default::default(),
        }
    }

    /// The head of `span` (begun at this call site), written now when
    /// this call site is new and there is room; `None` when not.
    fn head(
        &self,
        span: &Span<'_>,
        node: &str,
        level: u32,
        remote: bool,
        caller: Option<&str>,
    ) -> Option<&Head> {
        for slot in &self.heads {
            let head = match slot.get() {
                Some(head) => head,
                None => slot.get_or_init(|| Head::new(span, node, level, remote, caller)),
            };
            if head.is(node, level, remote, caller) {
                return Some(head);
            }
        }
        None
    }
}

/// The span of a call of `package`'s action `names` under `ctx` (its
/// sampling decided here when nobody upstream decided it); `None` when
/// not sampled.
pub fn call<'a>(
    t: &Telemetry,
    ctx: &mut CallContext,
    package: &'a str,
    names: &'a ActionNames,
) -> Option<Span<'a>> {
    if ctx.tracing.is_none() {
        t.decide(ctx);
    }
    if ctx.tracing != Some(true) {
        return None;
    }
    let remote = ctx.upstream_caller().is_some() && ctx.chain.is_empty();
    let kind = match remote {
        true => Kind::Server,
        false => Kind::Internal,
    };
    let level = ctx.level();
    let mut span = Span::of(ctx, &*names.span, kind);
    span.moleculer_type = "action";
    span.service = Some(Text::Borrowed(package));
    span.set("steedos.action", &*names.action);
    span.set("steedos.level", i64::from(level));
    span.set("remoteCall", remote);
    let caller = ctx.caller_name();
    if let Some(caller) = caller {
        span.set("steedos.caller", caller);
    }
    if t.exports_otlp() {
        span.head = names.head(&span, t.node(), level, remote, caller.map(|c| &**c));
    }
    Some(span)
}

/// The span of a call of `action` on another node: it shares its id with
/// the callee's span there (the REQ's id is this context's id), as
/// Zipkin's client and server halves do, so a Node.js service that does
/// not trace still links what it calls to this trace. Not sent as a
/// Moleculer span (the callee's own is that).
pub fn remote_call(t: &Telemetry, ctx: &mut CallContext, action: &str) -> Option<Span<'static>> {
    if ctx.tracing.is_none() {
        t.decide(ctx);
    }
    if ctx.tracing != Some(true) {
        return None;
    }
    let mut span = Span::of(ctx, format!("action '{action}'"), Kind::Client);
    span.moleculer_type = "action";
    span.moleculer = false;
    span.set("steedos.action", action.to_string());
    span.set("steedos.level", i64::from(ctx.level()));
    span.set("remoteCall", true);
    if let Some(caller) = ctx.caller() {
        span.set("steedos.caller", caller.to_string());
    }
    Some(span)
}

/// The span of `event` delivered to `package` under the emitter's `ctx`:
/// a context of its own (a new id, so each subscriber's delivery is its
/// own span), whose parent is the emitter's; `ctx` becomes it, so what the
/// handler calls are its children.
pub fn event(
    t: &Telemetry,
    ctx: &mut CallContext,
    package: &Arc<str>,
    event: &str,
) -> Option<Span<'static>> {
    if ctx.tracing.is_none() {
        t.decide(ctx);
    }
    if ctx.tracing != Some(true) {
        return None;
    }
    ctx.id = ContextId::new();
    let mut span = Span::of(
        ctx,
        format!("event '{event}' in '{package}'"),
        Kind::Consumer,
    );
    span.moleculer_type = "event";
    span.service = Some(Text::Shared(package.clone()));
    span.set("eventName", event.to_string());
    span.set("steedos.level", i64::from(ctx.level()));
    if let Some(caller) = ctx.caller() {
        span.set("steedos.caller", caller.to_string());
    }
    Some(span)
}

/// The span of starting an instance of `package` (`restart` when it
/// replaces one that faulted) under `ctx`, the root of a trace of its own
/// (what its `started` calls are children of).
pub fn instance_start(
    t: &Telemetry,
    ctx: &mut CallContext,
    package: &Arc<str>,
    restart: bool,
) -> Option<Span<'static>> {
    if !t.decide(ctx) {
        return None;
    }
    let name = match restart {
        true => format!("instance restart '{package}'"),
        false => format!("instance start '{package}'"),
    };
    let mut span = Span::of(ctx, name, Kind::Internal);
    span.moleculer_type = "instance";
    span.service = Some(Text::Shared(package.clone()));
    span.set("steedos.restart", restart);
    Some(span)
}

/// What an outgoing HTTP request of a traced call needs for its span and
/// its `traceparent`: the telemetry, the call it is made in, the package.
#[derive(Clone)]
pub struct Outbound {
    telemetry: Arc<Telemetry>,
    parent: ContextId,
    request_id: Arc<str>,
    package: Arc<str>,
    tracestate: Option<Arc<str>>,
}

impl Outbound {
    /// For a request made while serving `ctx`, when `ctx` is traced.
    pub fn of(telemetry: Arc<Telemetry>, ctx: &CallContext, package: &Arc<str>) -> Option<Self> {
        (ctx.tracing == Some(true)).then(|| Outbound {
            telemetry,
            parent: ctx.id.clone(),
            request_id: ctx.request_id.clone(),
            package: package.clone(),
            tracestate: ctx.tracestate().cloned(),
        })
    }

    /// Begins the span of a request of `method` to `uri`, and the
    /// `traceparent` to send with it (this span as the callee's parent).
    pub fn begin(&self, method: &http::Method, uri: &http::Uri) -> (Span<'static>, String) {
        let id = ContextId::new();
        let traceparent = super::TraceParent {
            trace_id: super::trace_id(&self.request_id),
            span_id: super::span_id(&id),
            sampled: true,
        }
        .header();
        let host = uri.host().unwrap_or_default();
        let name = format!("HTTP {method} {host}");
        let parent = Some(self.parent.clone());
        let mut span = Span::new(name, Kind::Client, id, parent, self.request_id.clone());
        span.moleculer_type = "http";
        span.service = Some(Text::Shared(self.package.clone()));
        span.set("http.request.method", method.to_string());
        span.set("server.address", host.to_string());
        span.set("url.full", uri.to_string());
        (span, traceparent)
    }

    /// The `tracestate` the HTTP caller of the trace sent, passed on.
    pub fn tracestate(&self) -> Option<&str> {
        self.tracestate.as_deref()
    }

    /// Ends `span`: the response's status, or why there was none.
    pub fn end(&self, mut span: Span<'_>, outcome: Result<u16, String>) {
        match outcome {
            Ok(status) => {
                span.set("http.response.status_code", i64::from(status));
                match status {
                    500.. => span.fail("http", format!("HTTP status {status}")),
                    _ => span.set("steedos.result", "ok"),
                }
            }
            Err(why) => span.fail("http", why),
        }
        self.telemetry.end(span);
    }
}

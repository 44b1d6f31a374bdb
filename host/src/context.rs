//! The context every call carries, and the errors a call can end with.
//!
//! A [`CallContext`] travels with a call across every hop: the request id
//! that ties log lines together, the chain of packages the call has passed
//! through (which gives the caller, the level, and cycle detection), the
//! caller's metadata, and the absolute deadline that a nested call may
//! never outlive.
//!
//! [`CallError`] mirrors the WIT `call-error` variant that packages see;
//! errors are values here, kept apart from traps. [`ErrorKind`] is the one
//! table of the seven kinds with their HTTP status and Moleculer error,
//! and [`CallError::public_message`] what of a message leaves the host.
//!
//! `meta.rs` holds what of a context is Moleculer's: its meta as values,
//! the reply meta a callee hands back, and context ids.
//!
//! A leaf: it must not import any other module of the host.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod meta;

pub use meta::{ContextId, MAX_META_BYTES, Meta, MetaError, MetaMap, ReplyMeta, decode_meta};

/// Where a call comes from and how long it may take.
#[derive(Clone, Debug)]
pub struct CallContext {
    /// This hop's context id (Moleculer's `ctx.id`).
    pub id: ContextId,
    /// The id of the context that made this call (`ctx.parentID`), if any.
    pub parent_id: Option<ContextId>,
    /// Ties together every hop and log line of one outside request.
    pub request_id: Arc<str>,
    /// Packages the call has passed through, outermost first. Empty for a
    /// call from outside (CLI, gateway, tests).
    pub chain: Arc<[Arc<str>]>,
    /// `ctx.meta`: the caller's, with what the call's options and the
    /// callee itself set over it.
    pub meta: Meta,
    /// Moleculer's `tracing` flag, passed on as it came.
    pub tracing: Option<bool>,
    /// Where this call's callee leaves its meta when the call ends, when
    /// the caller wants it back (a package, a peer's REQ).
    pub reply: Option<ReplyMeta>,
    /// The instant by which the whole call must be done.
    pub deadline: Instant,
    /// What few calls carry (see [`Uncommon`]), apart so that a context
    /// stays small: it is moved at every layer of a call, and past 128
    /// bytes each move is a `memcpy` call.
    pub uncommon: Option<Arc<Uncommon>>,
}

/// The parts of a [`CallContext`] that few calls have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Uncommon {
    /// A W3C `tracestate` an HTTP caller sent, passed on to the
    /// outgoing HTTP requests of the call (vendors' trace data).
    pub tracestate: Option<Arc<str>>,
    /// The node that must serve this call (a package's `node-id` option);
    /// not passed on to nested calls.
    pub target_node: Option<Arc<str>>,
    /// For a call another node made: the levels it had already gone down
    /// there (the REQ's `level` less one), so the depth limit holds across
    /// nodes. Zero for a call that began on this host.
    pub upstream_levels: u32,
    /// For a call another node made: its caller there (the REQ's `caller`,
    /// a package or a Moleculer service), the caller packages see when the
    /// chain on this host is empty.
    pub upstream_caller: Option<Arc<str>>,
}

impl CallContext {
    /// A fresh context for a call from outside the host.
    pub fn new(timeout: Duration) -> Self {
        let id = ContextId::new();
        Self::root(id.text(), id, timeout)
    }

    /// A context for an outside call whose request id is given (taken from
    /// an HTTP header, say): the request's root context, whose id is its
    /// request id, as Moleculer makes them.
    pub fn with_request_id(request_id: impl Into<Arc<str>>, timeout: Duration) -> Self {
        let request_id = request_id.into();
        Self::root(request_id.clone(), ContextId::of_text(&request_id), timeout)
    }

    /// A request's first context: `id` stands for `request_id`.
    fn root(request_id: Arc<str>, id: ContextId, timeout: Duration) -> Self {
        CallContext {
            id,
            parent_id: None,
            request_id,
            chain: Arc::from([]),
            meta: Meta::EMPTY,
            tracing: None,
            reply: None,
            deadline: deadline_after(timeout),
            uncommon: None,
        }
    }

    /// The context of a call made by `package` while serving `self`: one
    /// level deeper, never more time than is left, same request id.
    pub fn nested(&self, package: &Arc<str>, timeout: Duration) -> Self {
        CallContext {
            deadline: self.deadline.min(deadline_after(timeout)),
            ..self.via(package)
        }
    }

    /// [`nested`](Self::nested) with the caller's deadline kept as it is,
    /// for a call whose callee's timeout is applied when it starts (the
    /// broker does so for every call). A new context id, whose parent is
    /// this one; no reply meta asked for (the caller sets [`reply`](Self::reply)).
    pub fn via(&self, package: &Arc<str>) -> Self {
        CallContext {
            id: ContextId::new(),
            parent_id: Some(self.id.clone()),
            request_id: self.request_id.clone(),
            chain: self.chain.iter().chain([package]).cloned().collect(),
            meta: self.meta.clone(),
            tracing: self.tracing,
            reply: None,
            deadline: self.deadline,
            uncommon: self.uncommon_passed_on(),
        }
    }

    /// A context under this one for work of the same caller (the gateway's
    /// call of an action under its request's root): a new id whose parent
    /// is this one, the same chain, meta and deadline.
    pub fn child(&self) -> Self {
        CallContext {
            id: ContextId::new(),
            parent_id: Some(self.id.clone()),
            reply: None,
            uncommon: self.uncommon_passed_on(),
            ..self.clone()
        }
    }

    /// The W3C `tracestate` the call's HTTP caller sent, if any.
    pub fn tracestate(&self) -> Option<&Arc<str>> {
        self.uncommon.as_ref()?.tracestate.as_ref()
    }

    /// The node that must serve this call, when its options name one.
    pub fn target_node(&self) -> Option<&Arc<str>> {
        self.uncommon.as_ref()?.target_node.as_ref()
    }

    /// For a call another node made: the levels gone down there.
    pub fn upstream_levels(&self) -> u32 {
        self.uncommon.as_ref().map_or(0, |u| u.upstream_levels)
    }

    /// For a call another node made: its caller there.
    pub fn upstream_caller(&self) -> Option<&Arc<str>> {
        self.uncommon.as_ref()?.upstream_caller.as_ref()
    }

    /// Where a call another node made stands there: the levels it had gone
    /// down and its caller (kept only when there is something to keep).
    pub fn set_upstream(&mut self, levels: u32, caller: Option<&str>) {
        if levels == 0 && caller.is_none() && self.uncommon.is_none() {
            return;
        }
        let u = self.uncommon_mut();
        u.upstream_levels = levels;
        u.upstream_caller = caller.map(Arc::from);
    }

    /// The uncommon parts, to set one (copied first if shared).
    pub fn uncommon_mut(&mut self) -> &mut Uncommon {
        Arc::make_mut(self.uncommon.get_or_insert_with(Default::default))
    }

    /// The uncommon parts a nested call keeps: all but the target node.
    fn uncommon_passed_on(&self) -> Option<Arc<Uncommon>> {
        let u = self.uncommon.as_ref()?;
        if u.target_node.is_none() {
            return Some(u.clone());
        }
        let kept = Uncommon {
            target_node: None,
            ..Uncommon::clone(u)
        };
        (kept != Uncommon::default()).then(|| Arc::new(kept))
    }

    /// The package that made this call, if it came from a package (on
    /// this host, or on the node that sent it here).
    pub fn caller(&self) -> Option<&str> {
        self.caller_name().map(|p| &**p)
    }

    /// [`CallContext::caller`], shared.
    pub fn caller_name(&self) -> Option<&Arc<str>> {
        self.chain.last().or(self.upstream_caller())
    }

    /// 1 for a call from outside, +1 per nested hop (Moleculer's `level`),
    /// the hops on other nodes counted.
    pub fn level(&self) -> u32 {
        u32::try_from(self.chain.len())
            .unwrap_or(u32::MAX)
            .saturating_add(1)
            .saturating_add(self.upstream_levels())
    }

    /// Whether `package` is already serving an outer part of this call.
    pub fn passed_through(&self, package: &str) -> bool {
        self.chain.iter().any(|p| &**p == package)
    }

    /// The chain as `a -> b -> c`, for messages.
    pub fn chain_text(&self) -> String {
        let names: Vec<&str> = self.chain.iter().map(|p| &**p).collect();
        names.join(" -> ")
    }

    /// Time left before the deadline (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// The options of one call a package makes (`broker.call-with`).
#[derive(Clone, Debug, Default)]
pub struct CallOptions {
    /// Merged over the caller's meta, for this call.
    pub meta: Option<MetaMap>,
    /// How long the call may take (never more than the caller has left).
    pub timeout: Option<Duration>,
    /// The node that must serve the call.
    pub node_id: Option<Arc<str>>,
    /// Tries after the first, for a failure another try may mend.
    pub retries: u32,
}

impl CallOptions {
    /// The callee's context under these options: meta merged over the
    /// caller's, the deadline shortened, the node to serve it.
    pub fn apply(&self, ctx: &mut CallContext) {
        if let Some(meta) = &self.meta {
            ctx.meta.merge(meta);
        }
        if let Some(timeout) = self.timeout {
            ctx.deadline = ctx.deadline.min(deadline_after(timeout));
        }
        if self.node_id.is_some() || ctx.target_node().is_some() {
            ctx.uncommon_mut().target_node.clone_from(&self.node_id);
        }
    }
}

/// `now + timeout`, saturating far in the future for huge timeouts.
pub fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

/// A new request id: a UUID v4, unique across nodes.
pub fn next_request_id() -> Arc<str> {
    ContextId::new().text()
}

/// The seven kinds of call error, each with what it is called everywhere
/// it leaves the host: its WIT case, its HTTP status, and the Moleculer
/// error a Node.js peer sees (name, code, type, retryable; as
/// moleculer's `src/errors.js` spells them). The one table of them: the
/// gateway, the transport, metrics and the guest boundary all read it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// No such action, or no live provider for it.
    NotFound,
    /// The parameters do not fit the action's WIT type.
    InvalidParams,
    /// The callee did not answer within its deadline.
    Timeout,
    /// The callee trapped (or ran out of memory); it is being restarted.
    Crashed,
    /// Queue full, call depth exceeded, or the callee is in restart backoff.
    Overloaded,
    /// The caller may not call this action.
    Denied,
    /// The action returned its own error.
    Failed,
}

/// A Moleculer error as it travels in a RES packet's `error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MoleculerError {
    /// The error class (`ServiceNotFoundError`, ...).
    pub name: &'static str,
    /// Its `code` (an HTTP-like number).
    pub code: u16,
    /// Its `type`.
    pub kind: &'static str,
    /// Whether Moleculer's retry middleware may retry it.
    pub retryable: bool,
}

impl ErrorKind {
    /// Every kind, in `call-error` order.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::NotFound,
        ErrorKind::InvalidParams,
        ErrorKind::Timeout,
        ErrorKind::Crashed,
        ErrorKind::Overloaded,
        ErrorKind::Denied,
        ErrorKind::Failed,
    ];

    /// The case name, as in WIT (`not-found`, `crashed`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not-found",
            ErrorKind::InvalidParams => "invalid-params",
            ErrorKind::Timeout => "timeout",
            ErrorKind::Crashed => "crashed",
            ErrorKind::Overloaded => "overloaded",
            ErrorKind::Denied => "denied",
            ErrorKind::Failed => "failed",
        }
    }

    /// What the kind means, for people (the OpenAPI responses).
    pub const fn description(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "unknown action or package, or no live provider for it",
            ErrorKind::InvalidParams => "malformed JSON or parameters that do not fit the WIT type",
            ErrorKind::Timeout => "the action did not answer within its deadline",
            ErrorKind::Crashed => "the action crashed; its instance is being restarted",
            ErrorKind::Overloaded => "overloaded or restarting; see Retry-After",
            ErrorKind::Denied => "denied",
            ErrorKind::Failed => {
                "the action returned its own error (or the 4xx/5xx status its error value names)"
            }
        }
    }

    /// The HTTP status the gateway answers with (an action's own error
    /// value may name another 4xx/5xx; see the gateway).
    pub const fn http_status(self) -> u16 {
        match self {
            ErrorKind::NotFound => 404,
            ErrorKind::InvalidParams => 400,
            ErrorKind::Timeout => 504,
            ErrorKind::Crashed => 502,
            ErrorKind::Overloaded => 503,
            ErrorKind::Denied => 403,
            ErrorKind::Failed => 422,
        }
    }

    /// The Moleculer error a peer sees for this kind.
    pub const fn moleculer(self) -> MoleculerError {
        let (name, code, kind, retryable) = match self {
            ErrorKind::NotFound => ("ServiceNotFoundError", 404, "SERVICE_NOT_FOUND", true),
            ErrorKind::InvalidParams => ("ValidationError", 422, "VALIDATION_ERROR", false),
            ErrorKind::Timeout => ("RequestTimeoutError", 504, "REQUEST_TIMEOUT", true),
            ErrorKind::Crashed => ("MoleculerServerError", 500, "CRASHED", true),
            ErrorKind::Overloaded => ("MoleculerRetryableError", 503, "OVERLOADED", true),
            ErrorKind::Denied => ("MoleculerClientError", 403, "DENIED", false),
            ErrorKind::Failed => ("MoleculerClientError", 422, "FAILED", false),
        };
        MoleculerError {
            name,
            code,
            kind,
            retryable,
        }
    }

    /// The kind of a Moleculer error a peer sent, by its name, type and
    /// code (Moleculer's own classes as well as the ones this host sends).
    pub fn from_moleculer(name: &str, kind: &str, code: u64) -> ErrorKind {
        match (name, kind, code) {
            ("ServiceNotFoundError" | "ServiceNotAvailableError", _, _)
            | (_, "SERVICE_NOT_FOUND" | "SERVICE_NOT_AVAILABLE", _) => ErrorKind::NotFound,
            ("ValidationError", _, _) | (_, "VALIDATION_ERROR" | "INVALID_PARAMS", _) => {
                ErrorKind::InvalidParams
            }
            ("RequestTimeoutError" | "RequestSkippedError", _, _)
            | (_, "REQUEST_TIMEOUT" | "REQUEST_SKIPPED", _)
            | (_, _, 504) => ErrorKind::Timeout,
            (_, "CRASHED", _) => ErrorKind::Crashed,
            ("QueueIsFullError" | "RequestRejectedError", _, _)
            | (_, "OVERLOADED" | "QUEUE_FULL" | "REQUEST_REJECTED" | "MAX_CALL_LEVEL", _)
            | (_, _, 429 | 503) => ErrorKind::Overloaded,
            (_, "DENIED", _) | (_, _, 401 | 403) => ErrorKind::Denied,
            _ => ErrorKind::Failed,
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a call error's message turns from what anyone may read into the
/// host's own record (a package's last fault, why it failed to load),
/// which may name host paths: see [`host_record`] and
/// [`CallError::public_message`].
const HOST_RECORD: &str = "; last error: ";

/// `record` (the host's own account of a fault, which may name host
/// paths) as the tail of a call error's message: kept in the log and in
/// the message the host reads, cut from what HTTP clients and peers see.
pub fn host_record(record: &str) -> String {
    format!("{HOST_RECORD}{record}")
}

/// Why a call did not return a value. The same cases as the WIT
/// `steedos:package/types.call-error` that packages see.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// No such action, or no live provider for it.
    #[error("not found: {0}")]
    NotFound(String),
    /// The parameters do not fit the action's WIT type.
    #[error("invalid params: {0}")]
    InvalidParams(String),
    /// The callee did not answer within its deadline.
    #[error("timeout: {0}")]
    Timeout(String),
    /// The callee trapped (or ran out of memory); it is being restarted.
    #[error("crashed: {0}")]
    Crashed(String),
    /// Queue full, call depth exceeded, or the callee is in restart backoff.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// The caller may not call this action.
    #[error("denied: {0}")]
    Denied(String),
    /// The action returned its own error.
    #[error("failed: {0}")]
    Failed(Failure),
}

/// An action's own error: its message, and the HTTP status it names, as
/// data (not read back from the text): a `status` field in 400..=599 of
/// the action's error value, or a peer's Moleculer error `code`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, as the action (or the host) words it.
    pub message: String,
    /// The status the error names, when it names one in 400..=599.
    pub status: Option<u16>,
}

impl Failure {
    /// A failure whose error names `status`: kept when it is in 400..=599.
    pub fn with_status(message: String, status: Option<u64>) -> Failure {
        let status = status
            .and_then(|s| u16::try_from(s).ok())
            .filter(|s| (400..=599).contains(s));
        Failure { message, status }
    }
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            message,
            status: None,
        }
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::from(message.to_string())
    }
}

impl std::ops::Deref for Failure {
    type Target = str;

    fn deref(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl CallError {
    /// An error of `kind` saying `message`.
    pub fn new(kind: ErrorKind, message: String) -> CallError {
        match kind {
            ErrorKind::NotFound => CallError::NotFound(message),
            ErrorKind::InvalidParams => CallError::InvalidParams(message),
            ErrorKind::Timeout => CallError::Timeout(message),
            ErrorKind::Crashed => CallError::Crashed(message),
            ErrorKind::Overloaded => CallError::Overloaded(message),
            ErrorKind::Denied => CallError::Denied(message),
            ErrorKind::Failed => CallError::Failed(message.into()),
        }
    }

    /// The HTTP status of this error: its kind's, or the status an
    /// action's own error names.
    pub fn http_status(&self) -> u16 {
        match self {
            CallError::Failed(Failure {
                status: Some(status),
                ..
            }) => *status,
            other => other.kind().http_status(),
        }
    }

    /// Its kind (which names its WIT case, HTTP status, Moleculer error).
    pub fn kind(&self) -> ErrorKind {
        match self {
            CallError::NotFound(_) => ErrorKind::NotFound,
            CallError::InvalidParams(_) => ErrorKind::InvalidParams,
            CallError::Timeout(_) => ErrorKind::Timeout,
            CallError::Crashed(_) => ErrorKind::Crashed,
            CallError::Overloaded(_) => ErrorKind::Overloaded,
            CallError::Denied(_) => ErrorKind::Denied,
            CallError::Failed(_) => ErrorKind::Failed,
        }
    }

    /// The same kind of error with another message.
    pub fn with_message(&self, message: String) -> CallError {
        CallError::new(self.kind(), message)
    }

    /// The message without the kind.
    pub fn message(&self) -> &str {
        match self {
            CallError::NotFound(m)
            | CallError::InvalidParams(m)
            | CallError::Timeout(m)
            | CallError::Crashed(m)
            | CallError::Overloaded(m)
            | CallError::Denied(m) => m,
            CallError::Failed(f) => &f.message,
        }
    }

    /// The message as an HTTP client or a peer node may see it: without
    /// the host's record (see [`host_record`]). An action's own error
    /// value is the package's to word and is kept whole.
    pub fn public_message(&self) -> std::borrow::Cow<'_, str> {
        let message = self.message();
        match (self, message.split_once(HOST_RECORD)) {
            (CallError::Failed(_), _) | (_, None) => message.into(),
            (_, Some((head, _))) => format!("{head} (why is in the host's log)").into(),
        }
    }
}

/// A duration as people write it (`1.5s`, `250ms`), for messages.
pub struct Human(pub Duration);

impl fmt::Display for Human {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d >= Duration::from_secs(1) {
            write!(f, "{}s", trim(d.as_secs_f64()))
        } else if d >= Duration::from_millis(1) {
            write!(f, "{}ms", trim(d.as_secs_f64() * 1e3))
        } else {
            write!(f, "{}µs", trim(d.as_secs_f64() * 1e6))
        }
    }
}

fn trim(x: f64) -> String {
    let s = format!("{x:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_context_never_outlives_its_caller() {
        let outer = CallContext::new(Duration::from_millis(100));
        let a: Arc<str> = "a".into();
        let inner = outer.nested(&a, Duration::from_secs(60));
        assert_eq!(inner.deadline, outer.deadline);
        assert_eq!(inner.level(), 2);
        assert_eq!(inner.caller(), Some("a"));
        assert!(inner.passed_through("a"));
        assert!(!inner.passed_through("b"));
        assert_eq!(inner.request_id, outer.request_id);
        let short = outer.nested(&a, Duration::from_millis(1));
        assert!(short.deadline < outer.deadline);
        let via = outer.via(&a);
        assert_eq!(via.deadline, outer.deadline);
        assert_eq!(&*via.chain, &*inner.chain);
        assert_eq!(via.parent_id.as_ref(), Some(&outer.id));
        assert_ne!(via.id, outer.id);
        assert_eq!(outer.request_id.to_string(), outer.id.to_string());
    }

    #[test]
    fn a_context_moves_without_a_memcpy_call() {
        // Every layer of a call moves its context; past 128 bytes each
        // move is a `memcpy` call (they were a tenth of a call's time).
        let size = std::mem::size_of::<CallContext>();
        assert!(size <= 128, "CallContext is {size} bytes");
    }

    #[test]
    fn uncommon_parts_stay_with_nested_calls_but_the_target_node() {
        let mut outer = CallContext::new(Duration::from_secs(1));
        assert!(outer.uncommon.is_none(), "a plain call allocates none");
        outer.uncommon_mut().tracestate = Some("v=1".into());
        outer.uncommon_mut().target_node = Some("node-b".into());
        let inner = outer.via(&Arc::from("a"));
        assert_eq!(inner.tracestate().map(|t| &**t), Some("v=1"));
        assert_eq!(inner.target_node(), None);
        assert_eq!(outer.target_node().map(|t| &**t), Some("node-b"));
        let mut only_target = CallContext::new(Duration::from_secs(1));
        only_target.uncommon_mut().target_node = Some("node-b".into());
        assert!(only_target.child().uncommon.is_none());
    }

    #[test]
    fn levels_and_caller_from_another_node_count() {
        let mut remote = CallContext::new(Duration::from_secs(1));
        remote.uncommon_mut().upstream_levels = 2;
        remote.uncommon_mut().upstream_caller = Some("node-math".into());
        assert_eq!(remote.level(), 3);
        assert_eq!(remote.caller(), Some("node-math"));
        assert!(
            !remote.passed_through("node-math"),
            "a remote caller is not a local package"
        );
        let a: Arc<str> = "a".into();
        let inner = remote.via(&a);
        assert_eq!(inner.level(), 4);
        assert_eq!(inner.caller(), Some("a"));
    }

    #[test]
    fn request_ids_are_unique() {
        let a = next_request_id();
        let b = next_request_id();
        assert_ne!(a, b);
    }

    #[test]
    fn public_messages_keep_the_host_record_out() {
        let record = host_record("/srv/app/a.wasm trapped");
        for kind in ErrorKind::ALL {
            let e = CallError::new(kind, format!("a.b: package `a` is down{record}"));
            assert_eq!(e.kind(), kind);
            assert_eq!(e.message(), format!("a.b: package `a` is down{record}"));
            match kind {
                ErrorKind::Failed => assert!(e.public_message().contains("/srv")),
                _ => assert!(!e.public_message().contains("/srv"), "{e}"),
            }
        }
    }

    #[test]
    fn each_kind_round_trips_through_its_moleculer_error() {
        for (i, kind) in ErrorKind::ALL.into_iter().enumerate() {
            assert_eq!(kind as usize, i, "metrics index errors by kind");
            let m = kind.moleculer();
            assert_eq!(
                ErrorKind::from_moleculer(m.name, m.kind, m.code.into()),
                kind
            );
        }
    }

    #[test]
    fn moleculer_s_own_errors_have_their_kind() {
        // As moleculer's src/errors.js sends them.
        let theirs = [
            (
                "ServiceNotAvailableError",
                "SERVICE_NOT_AVAILABLE",
                404,
                ErrorKind::NotFound,
            ),
            (
                "RequestSkippedError",
                "REQUEST_SKIPPED",
                514,
                ErrorKind::Timeout,
            ),
            (
                "RequestRejectedError",
                "REQUEST_REJECTED",
                503,
                ErrorKind::Overloaded,
            ),
            ("QueueIsFullError", "QUEUE_FULL", 429, ErrorKind::Overloaded),
            (
                "MaxCallLevelError",
                "MAX_CALL_LEVEL",
                500,
                ErrorKind::Overloaded,
            ),
            ("MoleculerClientError", "TEAPOT", 418, ErrorKind::Failed),
            ("Error", "", 500, ErrorKind::Failed),
        ];
        for (name, kind, code, want) in theirs {
            assert_eq!(ErrorKind::from_moleculer(name, kind, code), want, "{name}");
        }
    }

    #[test]
    fn human_durations() {
        assert_eq!(Human(Duration::from_millis(1500)).to_string(), "1.5s");
        assert_eq!(Human(Duration::from_millis(250)).to_string(), "250ms");
        assert_eq!(Human(Duration::from_micros(15)).to_string(), "15µs");
    }
}

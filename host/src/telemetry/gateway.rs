//! A gateway request's span, the root of its trace on this host: its id is
//! the request id (Moleculer's root context), its parent the span a W3C
//! `traceparent` named, its sampling the caller's when it sent one. The
//! action it calls runs under a child context ([`call_context`]), found
//! through a task-local, so the gateway's handlers need no new argument.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use super::ids::{TraceParent, request_id_of};
use super::{Kind, Span, Telemetry};
use crate::context::{CallContext, ContextId};

/// The root of the request being served, for the call it makes.
#[derive(Clone)]
struct Root {
    id: ContextId,
    sampled: bool,
    tracestate: Option<Arc<str>>,
}

tokio::task_local! {
    static ROOT: Root;
}

/// What of an HTTP request its trace needs once the request is handed on:
/// whether it is sampled, and what its span needs only when it is.
pub struct Traced {
    /// `Some` when the request is sampled.
    span: Option<SpanParts>,
    tracestate: Option<Arc<str>>,
}

/// The parts of a sampled request's span, taken before the request is
/// handed on.
struct SpanParts {
    method: http::Method,
    path: String,
    parent: Option<TraceParent>,
}

/// The longest `tracestate` passed on (W3C: 32 entries of at most 256 bytes
/// each; a vendor list past this is dropped whole).
const MAX_TRACESTATE: usize = 512;

/// The request id of `req` (its `traceparent`'s trace as a UUID, so that
/// Node.js peers trace by the same id, when it has a valid one; else
/// `given`) and its trace: sampled here (the caller's decision when it
/// sent one), and the span's parts taken only when sampled, so that a
/// request that is not traced costs no copy of its path.
pub fn traced<B>(t: &Telemetry, req: &http::Request<B>, given: Arc<str>) -> (Arc<str>, Traced) {
    let parent = req
        .headers()
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(TraceParent::parse);
    let request_id = match parent {
        Some(tp) => request_id_of(tp.trace_id).into(),
        None => given,
    };
    // Only with a valid traceparent, as W3C says, and only printable ASCII.
    let tracestate = req
        .headers()
        .get("tracestate")
        .and_then(|v| v.to_str().ok())
        .filter(|v| parent.is_some() && !v.is_empty() && v.len() <= MAX_TRACESTATE)
        .filter(|v| v.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .map(Arc::from);
    let sampled = t.sample(parent.map(|p| p.sampled), &request_id);
    let span = sampled.then(|| SpanParts {
        method: req.method().clone(),
        path: req.uri().path().to_string(),
        parent,
    });
    (request_id, Traced { span, tracestate })
}

impl Traced {
    /// Serves `work` (the request whose id is `request_id`) under its span.
    pub async fn serve<B>(
        self,
        t: &Telemetry,
        request_id: &Arc<str>,
        work: impl Future<Output = http::Response<B>>,
    ) -> http::Response<B> {
        let id = ContextId::of_text(request_id);
        let root = Root {
            id: id.clone(),
            sampled: self.span.is_some(),
            tracestate: self.tracestate,
        };
        let Some(parts) = self.span else {
            return ROOT.scope(root, work).await;
        };
        let parent_id = parts
            .parent
            .map(|p| ContextId::Given(format!("{:016x}", p.span_id).into()));
        let name = format!("HTTP {} {}", parts.method, parts.path);
        let mut span = Span::new(name, Kind::Server, id, parent_id, request_id.clone());
        span.moleculer_type = "http";
        span.set("http.request.method", parts.method.to_string());
        span.set("url.path", parts.path);
        let answer = ROOT.scope(root, work).await;
        let code = answer.status().as_u16();
        span.set("http.response.status_code", i64::from(code));
        match code {
            500.. => span.fail("http", format!("HTTP status {code}")),
            _ => span.set("steedos.result", "ok"),
        }
        t.end(span);
        answer
    }
}

/// The context of the action a gateway request calls: a child of the
/// request's root (whose id is the request id), sampled as the root is.
/// Outside [`serve`], the root context itself.
pub fn call_context(request_id: &Arc<str>, timeout: Duration) -> CallContext {
    let mut root = CallContext::with_request_id(request_id.clone(), timeout);
    match ROOT.try_with(Root::clone) {
        Ok(r) => {
            root.id = r.id;
            root.tracing = Some(r.sampled);
            if r.tracestate.is_some() {
                root.uncommon_mut().tracestate = r.tracestate;
            }
            root.child()
        }
        Err(_) => root,
    }
}

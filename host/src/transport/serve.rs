//! Calls in: a REQ from another node run on this host's packages, and its
//! RES (a result, or the Moleculer error a Node.js caller expects); a REQ
//! that cannot be read is answered with an error when it can be.
//!
//! Part of the [`Transit`]: it must not choose which package serves (the
//! broker does) nor serve an action this node does not publish.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use serde_json::Value;

use super::bounds;
use super::packet::{self, Data, Kind};
use super::transit::{NO_CALLER_TIMEOUT, Transit};
use crate::context::{CallContext, CallError, ContextId, Meta, ReplyMeta};

impl Transit {
    /// Runs a REQ from another node on this host's packages and answers it.
    pub(super) async fn serve(self: Arc<Self>, bytes: Bytes) {
        let _serving = Serving(&self.serving);
        let req = match self.wire.decode_request(&bytes) {
            Ok(req) => req,
            Err(e) => return self.refuse_request(&bytes, &e.to_string()).await,
        };
        if !self.accept(Kind::Request, &req.ver, &req.sender) {
            return;
        }
        let ctx = remote_context(&req);
        let reply = ctx.reply.clone();
        let outcome = self.run(&req, ctx).await;
        tracing::debug!(node = %self.node_id, from = %req.sender, action = ?req.action, request_id = ?req.request_id, level = ?req.level, caller = ?req.caller, ok = outcome.is_ok(), "served a remote call");
        let (data, error) = match outcome {
            Ok(v) => (Some(Data::Value(v)), None),
            Err(e) => (
                None,
                Some(packet::error_to_wire(&e, &req.action, &self.node_id)),
            ),
        };
        // The callee's meta when the call ended (Moleculer's caller merges
        // it into its own), else the meta as it came.
        let meta = reply
            .and_then(|r| r.take())
            .unwrap_or_else(|| Meta::from_wire(req.meta.as_ref()));
        let res = packet::ResponseOut {
            ver: self.ver,
            sender: &self.node_id,
            id: &req.id,
            success: error.is_none(),
            data: data.as_ref(),
            error: error.as_ref(),
            meta: meta.map(),
            headers: packet::headers(self.ver),
            stream: false,
        };
        self.requests_served.fetch_add(1, Ordering::Relaxed);
        self.respond(&req.sender, &res).await;
    }

    /// The outcome of a readable REQ: run on a package here when this node
    /// publishes the action.
    async fn run(
        &self,
        req: &packet::Request<'_, Data<'_>>,
        ctx: CallContext,
    ) -> Result<Value, CallError> {
        match (&req.params, req.stream) {
            // Unpublished actions do not exist for the cluster, even when a
            // package here serves them.
            _ if !self.published(&req.action) => Err(CallError::NotFound(format!(
                "{}: no such action on node `{}`",
                bounds::shorten(&req.action),
                self.node_id
            ))),
            (_, Some(true)) => Err(CallError::InvalidParams(format!(
                "{}: streams are not supported by steedos-wasm",
                req.action
            ))),
            (Some(params), _) => match params.to_json() {
                Ok(json) => self.broker.call_json_local(&req.action, &json, ctx).await,
                Err(e) => Err(CallError::InvalidParams(format!(
                    "{}: params are not JSON: {e}",
                    req.action
                ))),
            },
            (None, _) => self.broker.call_json_local(&req.action, b"", ctx).await,
        }
    }

    /// A REQ that could not be read: answered with an error when its id and
    /// sender can be read (else its caller would wait out its timeout),
    /// dropped otherwise; counted as dropped either way.
    async fn refuse_request(&self, bytes: &[u8], why: &str) {
        self.dropped(Kind::Request, why);
        let Ok(head) = self.wire.decode::<packet::RequestHead>("REQ", bytes) else {
            return;
        };
        // An id too long to be one of ours is not echoed back.
        if head.id.len() > bounds::MAX_NAME || !self.accept(Kind::Request, &head.ver, &head.sender)
        {
            return;
        }
        let action = match &head.action {
            Some(Value::String(a)) => bounds::shorten(a),
            _ => "(unreadable action)",
        };
        let error = CallError::InvalidParams(format!(
            "{action}: the request could not be read: {}",
            bounds::clip(why, 300)
        ));
        let error = packet::error_to_wire(&error, action, &self.node_id);
        let res = packet::ResponseOut {
            ver: self.ver,
            sender: &self.node_id,
            id: &head.id,
            success: false,
            data: None,
            error: Some(&error),
            meta: Meta::EMPTY.map(),
            headers: packet::headers(self.ver),
            stream: false,
        };
        self.respond(&head.sender, &res).await;
    }

    /// Sends a RES to `to`; a failure is logged (the caller times out).
    async fn respond(&self, to: &str, res: &packet::ResponseOut<'_>) {
        let subject = self.bus.subject_to("RES", to);
        if let Err(e) = self.publish_now(Kind::Response, subject, res).await {
            tracing::warn!(node = %self.node_id, to, error = %e, "response not sent");
        }
    }
}

/// The context of a call another node made, from its REQ: its id and
/// parent's, timeout, request id, level, caller, tracing and meta with its
/// JSON types (ids and names cut to a sane length, since they travel on
/// into logs and our own packets); the callee's meta is asked back for
/// the RES.
fn remote_context(req: &packet::Request<'_, Data<'_>>) -> CallContext {
    let timeout = bounds::caller_timeout(req.timeout, NO_CALLER_TIMEOUT);
    let request_id = req.request_id.as_deref().unwrap_or(&req.id);
    let request_id = bounds::clip(request_id, bounds::MAX_NAME);
    let mut ctx = CallContext::with_request_id(request_id, timeout);
    // The caller's place in the call tree on its node: the depth limit
    // counts those levels, and the callee sees who called it.
    ctx.set_upstream(
        req.level.map_or(0, |l| l.saturating_sub(1)),
        req.caller
            .as_deref()
            .map(|c| bounds::clip(c, bounds::MAX_NAME)),
    );
    ctx.id = ContextId::Given(bounds::clip(&req.id, bounds::MAX_NAME).into());
    ctx.parent_id = req
        .parent_id
        .as_deref()
        .map(|p| ContextId::Given(bounds::clip(p, bounds::MAX_NAME).into()));
    ctx.tracing = packet::tracing(req.tracing.as_ref());
    ctx.meta = Meta::from_wire(req.meta.as_ref());
    ctx.reply = Some(ReplyMeta::default());
    ctx
}

/// Counts one call from another node until dropped.
struct Serving<'a>(&'a AtomicUsize);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

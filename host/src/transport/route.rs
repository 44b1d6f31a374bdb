//! The broker's route to other nodes: a call no local package serves goes
//! out as a REQ and waits for its RES; an event goes to the nodes that
//! listen for it.
//!
//! It writes packets and registers pending calls in the [`Transit`]; it
//! must not read packets (the transit answers pending calls) or decide
//! which calls are local (the broker does).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::bus::Outgoing;
use super::packet::{self, Kind};
use super::transit::{Pending, Transit, lock};
use crate::broker::{RemoteParams, RemoteRoute};
use crate::context::{CallContext, CallError, ContextId, Human};
use crate::package::BoxFuture;

/// Removes a pending call when its caller stops waiting before the answer.
pub(super) struct PendingGuard {
    shared: Arc<Transit>,
    id: u128,
    /// The answer came: [`Transit::answer`] removed the entry already.
    answered: bool,
}

impl PendingGuard {
    fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if !self.answered {
            lock(&self.shared.pending).remove(&self.id);
        }
    }
}

/// The broker's route to other nodes.
pub(super) struct Route(pub(super) Arc<Transit>);

impl RemoteRoute for Route {
    fn has_service(&self, name: &str) -> bool {
        self.0.registry().has_service(name)
    }

    fn node_id(&self) -> Option<Arc<str>> {
        Some(self.0.node_id.clone())
    }

    fn params(&self, action: &str) -> Option<Vec<(String, Value)>> {
        self.0.registry().params(action)
    }

    fn call(
        &self,
        action: &str,
        params: RemoteParams<'_>,
        ctx: &CallContext,
    ) -> Option<BoxFuture<'static, Result<Value, CallError>>> {
        let shared = &self.0;
        if shared.leaving.load(Ordering::Acquire) {
            return None;
        }
        let (node, subject) = match ctx.target_node() {
            Some(node) => shared.registry().pick_on(action, node)?,
            None => shared.registry().pick(action)?,
        };
        // The REQ's id is the callee's context id, as Moleculer sends it (the
        // span id a traced callee reports); a fresh one when that id is
        // not ours or already awaits an answer (a retry, a reused request id).
        let mut uuid = match ctx.id {
            ContextId::Uuid(u) => u,
            ContextId::Given(_) => uuid::Uuid::new_v4(),
        };
        let (reply, answer) = oneshot::channel();
        let action: Arc<str> = action.into();
        let pending = Pending {
            node: node.clone(),
            action: action.clone(),
            reply,
            meta: ctx.reply.clone(),
        };
        {
            let mut waiting = lock(&shared.pending);
            while waiting.contains_key(&uuid.as_u128()) {
                uuid = uuid::Uuid::new_v4();
            }
            waiting.insert(uuid.as_u128(), pending);
        }
        let id = uuid.as_u128();
        let mut guard = PendingGuard {
            shared: shared.clone(),
            id,
            answered: false,
        };
        let bytes = match request(shared, action.as_ref(), params, ctx, uuid) {
            Ok(b) => b,
            Err(e) => return Some(Box::pin(std::future::ready(Err(e)))),
        };
        let deadline = ctx.deadline;
        let request_id = ctx.request_id.clone();
        Some(Box::pin(async move {
            let out = Outgoing {
                subject,
                bytes: bytes.into(),
                call: Some(id),
            };
            if !guard.shared.bus.queue(out) {
                return Err(CallError::Overloaded(format!(
                    "{action}: the transport to node `{node}` closed"
                )));
            }
            let started = Instant::now();
            match tokio::time::timeout_at(deadline.into(), answer).await {
                Ok(Ok(result)) => {
                    guard.answered();
                    result
                }
                Ok(Err(_)) => Err(CallError::Overloaded(format!(
                    "{action}: the transport to node `{node}` closed"
                ))),
                Err(_) => {
                    tracing::debug!(%action, node = %node, request_id = %request_id, "remote call timed out");
                    Err(CallError::Timeout(format!(
                        "{action}: node `{node}` did not answer within {}",
                        Human(started.elapsed())
                    )))
                }
            }
        }))
    }

    fn publish(
        &self,
        event: &str,
        payload: &[u8],
        broadcast: bool,
        local_groups: &[Arc<str>],
        ctx: &CallContext,
    ) {
        let shared = &self.0;
        if shared.leaving.load(Ordering::Acquire) {
            return;
        }
        let targets = shared
            .registry()
            .event_targets(event, broadcast, local_groups);
        if targets.is_empty() {
            return;
        }
        let data = match shared.wire.data_from_msgpack(payload, Value::Null) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(event, error = %e, "event payload has no JSON form; not sent to other nodes");
                return;
            }
        };
        // The event's own context, a child of the emitter's (`ctx` is the
        // event's context on this host: its parent is the emitting package's
        // call, the span the event's handlers are children of).
        let mut buf = uuid::Uuid::encode_buffer();
        let id: &str = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
        let parent_id = ctx.parent_id.as_ref().unwrap_or(&ctx.id).to_string();
        for (subject, groups) in targets {
            let out = packet::EventOut {
                ver: shared.ver,
                sender: &shared.node_id,
                id,
                event,
                data: &data,
                groups: groups.as_deref(),
                broadcast,
                meta: ctx.meta.map(),
                headers: packet::headers(shared.ver),
                level: ctx.level(),
                tracing: ctx.tracing,
                parent_id: Some(&parent_id),
                request_id: &ctx.request_id,
                caller: ctx.caller(),
                need_ack: None,
                stream: false,
            };
            shared.post(Kind::Event, subject, &out);
        }
    }
}

/// The REQ packet of a call of `action`, under the id `uuid`.
fn request(
    shared: &Transit,
    action: &str,
    params: RemoteParams<'_>,
    ctx: &CallContext,
    uuid: uuid::Uuid,
) -> Result<Vec<u8>, CallError> {
    let data = match params {
        RemoteParams::Json(json) => shared.wire.data_from_json(json),
        RemoteParams::MessagePack(bytes) => shared.wire.data_from_msgpack(bytes, json!({})),
    };
    let data = match data {
        Ok(d) => d,
        Err(e) => {
            return Err(CallError::InvalidParams(format!(
                "{action}: params are not JSON: {e}"
            )));
        }
    };
    // `uuid` is random: a RES is taken only from the node asked and for an id
    // it was sent, and a peer that did not see the REQ cannot guess it.
    let mut buf = uuid::Uuid::encode_buffer();
    let wire_id: &str = uuid.hyphenated().encode_lower(&mut buf);
    let parent_id = ctx.parent_id.as_ref().map(ToString::to_string);
    let req = packet::RequestOut {
        ver: shared.ver,
        sender: &shared.node_id,
        id: wire_id,
        action,
        params: &data,
        meta: ctx.meta.map(),
        headers: packet::headers(shared.ver),
        timeout: (ctx.remaining().as_secs_f64() * 1000.0).round().max(1.0),
        level: ctx.level(),
        tracing: ctx.tracing,
        parent_id: parent_id.as_deref(),
        request_id: &ctx.request_id,
        caller: ctx.caller(),
        stream: false,
    };
    shared
        .wire
        .encode("REQ", &req)
        .map_err(|e| CallError::InvalidParams(format!("{action}: {e}")))
}

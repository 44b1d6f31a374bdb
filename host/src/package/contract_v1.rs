//! The `steedos:package@0.1.0` contract, adapted to 0.2.0: packages built
//! before meta became a value still load and run. Their `broker.call` is
//! 0.2.0's `call` without options; their context's meta is string pairs
//! (a string as it is, any other value as its JSON text, as 0.1.0 always
//! gave it); their event handler gets the same pairs. Nothing here routes:
//! every function forwards to the 0.2.0 host impl in `host.rs`.

use super::host::HostState;
use super::wit_v1::steedos::package as v1;
use crate::context::{CallContext, CallError, CallOptions};
use crate::guest_log;

impl v1::types::Host for HostState {}

impl v1::broker::Host for HostState {
    async fn call(
        &mut self,
        action: String,
        params: Vec<u8>,
    ) -> Result<Vec<u8>, v1::types::CallError> {
        self.call_with_options(action, params, CallOptions::default())
            .await
            .map_err(to_v1_error)
    }

    async fn emit(&mut self, event: String, payload: Vec<u8>) -> wasmtime::Result<()> {
        self.publish(event, payload, false).await
    }

    async fn broadcast(&mut self, event: String, payload: Vec<u8>) -> wasmtime::Result<()> {
        self.publish(event, payload, true).await
    }

    async fn context(&mut self) -> v1::types::CallContext {
        match &self.call {
            Some(ctx) => to_v1_context(ctx),
            None => to_v1_context(&CallContext::new(std::time::Duration::ZERO)),
        }
    }
}

impl v1::logging::Host for HostState {
    async fn log(&mut self, level: v1::logging::Level, message: String) {
        use v1::logging::Level as L;
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

/// A context as a 0.1.0 package sees it: meta as string pairs.
pub(super) fn to_v1_context(ctx: &CallContext) -> v1::types::CallContext {
    let meta = ctx
        .meta
        .map()
        .iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => (k.clone(), s.clone()),
            other => (k.clone(), other.to_string()),
        })
        .collect();
    v1::types::CallContext {
        request_id: ctx.request_id.to_string(),
        caller: ctx.caller().map(str::to_string),
        level: ctx.level(),
        meta,
    }
}

fn to_v1_error(e: CallError) -> v1::types::CallError {
    use v1::types::CallError as W;
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

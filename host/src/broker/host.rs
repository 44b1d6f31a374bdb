//! The guest-facing side of `steedos:package/broker`: the [`Router`] the
//! host functions of every instance call (`broker.call`, typed imports,
//! `emit`, `broadcast`). It holds only a weak link to the broker, so that
//! instances never keep it alive, and delegates every call to `call.rs`
//! and every event to `events.rs`; it must not route, check grants or
//! protect calls itself.

use std::sync::{Arc, Weak};

use super::Broker;
use super::events::Origin;
use super::registry::CallerKind;
use crate::context::{CallError, CallOptions};
use crate::package::{BoxFuture, Caller, ImportTarget, Output, Params, Router};

/// What a package's host functions hold: a weak link back to the broker,
/// so instances never keep the broker alive; and the app's key-value
/// buckets, set once when the app loads.
pub struct BrokerHandle(
    pub(super) Weak<Broker>,
    pub(super) std::sync::OnceLock<Arc<crate::kv::Stores>>,
);

impl BrokerHandle {
    fn broker(&self) -> Result<Arc<Broker>, CallError> {
        self.0
            .upgrade()
            .ok_or_else(|| CallError::Overloaded("the host is shutting down".into()))
    }
}

impl Router for BrokerHandle {
    fn telemetry(&self) -> Option<Arc<crate::telemetry::Telemetry>> {
        self.0.upgrade()?.telemetry().cloned()
    }

    fn kv_stores(&self) -> Option<&crate::kv::Stores> {
        self.1.get().map(|stores| &**stores)
    }

    fn call<'a>(
        &'a self,
        from: Caller<'a>,
        action: String,
        params: Vec<u8>,
        options: CallOptions,
    ) -> BoxFuture<'a, Result<Vec<u8>, CallError>> {
        crate::boxed::pinned(|| async move {
            let broker = self.broker()?;
            broker
                .call_from_package_with(from, action, params, options)
                .await
        })
    }

    fn call_import<'a>(
        &'a self,
        from: Caller<'a>,
        target: &'a ImportTarget,
        params: Params<'a>,
    ) -> BoxFuture<'a, Result<Option<Output>, CallError>> {
        crate::boxed::pinned(|| async move {
            let broker = self.broker()?;
            let service = broker.service(&target.provider).ok_or_else(|| {
                CallError::NotFound(format!(
                    "no package `{}` (for `{}`)",
                    target.provider, target.label
                ))
            })?;
            let ty = &service.package.ty;
            let linked = ty.actions.get(target.action).is_some_and(|a| {
                a.function == target.function
                    && a.interface.as_deref() == Some(target.interface.as_str())
            });
            let action = match linked {
                true => target.action,
                // The provider was upgraded since the import was linked.
                false => ty
                    .exported_function(&target.interface, &target.function)
                    .ok_or_else(|| {
                        CallError::NotFound(format!(
                            "package `{}` no longer exports `{}`",
                            target.provider, target.label
                        ))
                    })?,
            };
            service.check_visibility(action, CallerKind::Package(from.package))?;
            let mut ctx = from.ctx.via(from.package);
            ctx.reply = from.reply.cloned();
            broker.invoke(&service, action, params, ctx).await
        })
    }

    fn publish<'a>(
        &'a self,
        from: Caller<'a>,
        event: String,
        payload: Vec<u8>,
        broadcast: bool,
    ) -> BoxFuture<'a, Result<(), CallError>> {
        crate::boxed::pinned(|| async move {
            let broker = self.broker()?;
            broker
                .emit_event(
                    Origin::Package(from),
                    &event,
                    payload,
                    broadcast,
                    from.ctx,
                    None,
                )
                .await
        })
    }
}

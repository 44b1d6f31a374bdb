//! The action cache on the call path: a call of an action with a `cache`
//! property is answered from the app's cache (`kv::ActionCache`) when an
//! answer with the same keys is kept, without entering the package; a miss
//! runs the call as any other and keeps its answer. A
//! `cache.clean.<package>` event drops the package's answers. Only actions
//! with a `cache` property come here: `call.rs` takes one branch.

use std::sync::Arc;

use super::call::{Encoded, Reply};
use super::{Broker, Service};
use crate::codec::Format;
use crate::context::CallError;
use crate::kv::ActionCache;
use crate::kv::cache::CLEAN_EVENT_PREFIX;

impl Broker {
    /// A call of a cached action: the kept answer, or the call run and its
    /// answer kept. A cache that cannot be read or written is a miss.
    pub(super) async fn call_cached(
        &self,
        found: (Arc<Service>, usize),
        call: Encoded<'_>,
    ) -> Result<Reply, CallError> {
        let (service, index) = (&found.0, found.1);
        let (Some(policy), Some(cache)) = (
            service.policies[index].cache.as_ref(),
            self.kv().and_then(|stores| stores.cache()),
        ) else {
            return self.call_uncached(found, call).await;
        };
        let json = matches!(call.format, Format::Json);
        let label = service.label(index);
        let names: Vec<&str> = service.package.ty.actions[index]
            .params
            .iter()
            .map(|(name, _)| name.as_str())
            .collect();
        let Some(key) = ActionCache::key(&label, json, &call.params, &names, policy) else {
            return self.call_uncached(found, call).await;
        };
        if let Some(answer) = cache.get(&label, &key, policy).await {
            let reply = match json {
                true => serde_json::from_slice(&answer).ok().map(Reply::Json),
                false => Some(Reply::MessagePack(answer.to_vec())),
            };
            if let Some(reply) = reply {
                return Ok(reply);
            }
        }
        let policy = policy.clone();
        let since = cache.generation();
        let reply = self.call_uncached(found.clone(), call).await?;
        let kept = match &reply {
            Reply::Json(value) => serde_json::to_vec(value).unwrap_or_default(),
            Reply::MessagePack(bytes) => bytes.clone(),
        };
        cache.put(&label, &key, &kept, &policy, since).await;
        Ok(reply)
    }

    /// When `event` is `cache.clean.<package>`, drops that package's kept
    /// answers (before the event goes on to any subscriber).
    pub(super) async fn clean_cache_on(&self, event: &str) {
        let Some(package) = event.strip_prefix(CLEAN_EVENT_PREFIX) else {
            return;
        };
        if let Some(cache) = self.kv().and_then(|stores| stores.cache()) {
            cache.clean(package).await;
        }
    }
}

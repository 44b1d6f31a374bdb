//! The action cache on the call path: a call of an action with a `cache`
//! property is answered from the app's cache (`kv::ActionCache`) when an
//! answer with the same keys is kept, without entering the package; a miss
//! runs the call as any other and keeps its answer. A
//! `cache.clean.<package>` event drops the package's answers. Only actions
//! with a `cache` property come here: `call.rs` takes one branch.

use std::sync::Arc;

use super::call::{Encoded, Lookup, Reply};
use super::{Broker, Service};
use crate::codec::Format;
use crate::context::CallError;
use crate::kv::ActionCache;
use crate::kv::cache::CLEAN_EVENT_PREFIX;

/// A kept answer as the caller's reply; `None` when it cannot be read.
fn reply_of(answer: &[u8], format: Format) -> Option<Reply> {
    match format {
        Format::Json => serde_json::from_slice(answer).ok().map(Reply::Json),
        Format::MessagePack => Some(Reply::MessagePack(answer.to_vec())),
    }
}

impl Broker {
    /// What this node's memory keeps for `call` of `found` (an action with
    /// a `cache` property): found without an await, so that a hit costs its
    /// key and one lookup.
    pub(super) fn kept_answer(
        &self,
        (service, index): &(Arc<Service>, usize),
        call: &Encoded<'_>,
    ) -> Lookup {
        let (Some(cached), Some(cache)) = (
            service.policies[*index].cache.as_ref(),
            self.kv().and_then(|stores| stores.cache()),
        ) else {
            return Lookup::Uncached;
        };
        let json = matches!(call.format, Format::Json);
        let names = service.package.ty.actions[*index]
            .params
            .iter()
            .map(|(name, _)| name.as_str());
        let (label, policy) = (cached.label(), cached.policy());
        let Some(key) = ActionCache::key(label, json, &call.params, names, policy) else {
            return Lookup::Uncached;
        };
        let kept = cache.get_in_memory(&key, cached.counters(cache));
        match kept.and_then(|answer| reply_of(&answer, call.format)) {
            Some(reply) => Lookup::Hit(reply),
            None => Lookup::Miss(key),
        }
    }

    /// A call of a cached action that this node's memory did not answer:
    /// the answer kept in the cache's bucket at `key`, or the call run and
    /// its answer kept. A cache that cannot be read or written is a miss.
    pub(super) async fn call_missed(
        &self,
        found: (Arc<Service>, usize),
        call: Encoded<'_>,
        key: String,
    ) -> Result<Reply, CallError> {
        let (service, index) = (&found.0, found.1);
        let (Some(cached), Some(cache)) = (
            service.policies[index].cache.as_ref(),
            self.kv().and_then(|stores| stores.cache()),
        ) else {
            return self.call_uncached(found, call).await;
        };
        let (label, policy, counters) = (cached.label(), cached.policy(), cached.counters(cache));
        if let Some(answer) = cache.get_stored(label, &key, policy, counters).await
            && let Some(reply) = reply_of(&answer, call.format)
        {
            return Ok(reply);
        }
        let since = cache.generation();
        let reply = self.call_uncached(found.clone(), call).await?;
        let kept = match &reply {
            Reply::Json(value) => serde_json::to_vec(value).unwrap_or_default(),
            Reply::MessagePack(bytes) => bytes.clone(),
        };
        cache
            .put(label, &key, &kept, policy, (since, counters))
            .await;
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

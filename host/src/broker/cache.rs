//! The action cache on the call path: a call of an action with a `cache`
//! property is answered from the app's cache (`kv::ActionCache`) when an
//! answer with the same keys is kept, without entering the package; a miss
//! runs the call as any other and keeps its answer. A
//! `cache.clean.<package>` event drops the package's answers. Only actions
//! with a `cache` property come here: `call.rs` takes one branch.

use std::sync::{Arc, OnceLock};

use super::call::{Encoded, Reply};
use super::{Broker, Service};
use crate::codec::Format;
use crate::context::CallError;
use crate::kv::ActionCache;
use crate::kv::cache::{CLEAN_EVENT_PREFIX, Counters};
use crate::manifest::CachePolicy;

/// An action's `cache` property, with what a hit needs at hand.
pub(super) struct CachedAction {
    policy: CachePolicy,
    /// `<package>.<action>`: its keys' prefix and its counters' name.
    label: String,
    /// Its hits and misses in the app's cache, fetched on first use.
    counters: OnceLock<Arc<Counters>>,
}

impl CachedAction {
    pub(super) fn new(policy: CachePolicy, package: &str, action: &str) -> Self {
        CachedAction {
            policy,
            label: format!("{package}.{action}"),
            counters: OnceLock::new(),
        }
    }

    fn counters(&self, cache: &ActionCache) -> &Counters {
        self.counters.get_or_init(|| cache.counters(&self.label))
    }
}

/// What this node's memory holds for a call of a cached action.
pub(super) enum Lookup {
    /// The kept answer, in the caller's format.
    Hit(Reply),
    /// Not in memory: the key to look for in the cache's bucket and to
    /// keep the answer under.
    Miss(String),
    /// No cache to ask (the app has none, or the params make no key): the
    /// call goes in as any other.
    Uncached,
}

/// A kept answer as the caller's reply; `None` when it cannot be read.
fn reply_of(answer: &[u8], format: Format) -> Option<Reply> {
    match format {
        Format::Json => serde_json::from_slice(answer).ok().map(Reply::Json),
        Format::MessagePack => Some(Reply::MessagePack(answer.to_vec())),
    }
}

impl Broker {
    /// The answer this node's memory keeps for `call` of `found` (an
    /// action with `cached`): found without an await, so that a hit costs
    /// its key and one lookup.
    pub(super) fn kept_answer(
        &self,
        cached: &CachedAction,
        (service, index): &(Arc<Service>, usize),
        call: &Encoded<'_>,
    ) -> Lookup {
        let Some(cache) = self.kv().and_then(|stores| stores.cache()) else {
            return Lookup::Uncached;
        };
        let json = matches!(call.format, Format::Json);
        let names = service.package.ty.actions[*index]
            .params
            .iter()
            .map(|(name, _)| name.as_str());
        let Some(key) = ActionCache::key(&cached.label, json, &call.params, names, &cached.policy)
        else {
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
    pub(super) async fn call_cached(
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
        let (label, policy, counters) = (&cached.label, &cached.policy, cached.counters(cache));
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

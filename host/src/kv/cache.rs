//! The action cache, Moleculer's cacher for actions with a `cache`
//! property: an answer is kept under `<package>.<action>:` and a hash of
//! the caller's format and the parameters the policy's `keys` name (all of
//! them when it names none), for the policy's `ttl`, in two layers:
//!
//! - this node's memory (a `moka` cache bounded by `[kv.default]
//!   cache_memory` bytes, per-entry TTL), as Moleculer's MemoryLRUCacher:
//!   a hit there touches no store and no blocking pool;
//! - the [`CACHE_BUCKET`](super::CACHE_BUCKET) on `[kv.default]`'s
//!   backend, shared by every node when that is JetStream or Redis, so an
//!   answer kept by one node is a hit on the others (it is then kept in
//!   their memory for the policy's `ttl` from that read).
//!
//! A `cache.clean.<package>` event drops every answer of that package from
//! both layers; the transport hands it to every Steedos node of the cluster
//! so each drops its memory. A clean while an action runs keeps its answer
//! out of both layers (a generation bumped by every clean). A store that
//! fails is a miss, logged: the call then enters the package as if there
//! were no cache, and a hit kept in memory still answers.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use moka::sync::Cache;
use serde_json::Value;

use super::Bucket;
use crate::manifest::CachePolicy;

/// The event that empties a package's answers: `cache.clean.<package>`.
pub const CLEAN_EVENT_PREFIX: &str = "cache.clean.";

/// What one kept answer weighs in memory besides its key and bytes.
const ENTRY_OVERHEAD: usize = 96;

/// Hits and misses of one action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Calls answered from the cache.
    pub hits: u64,
    /// Calls that entered the package and whose answer was kept.
    pub misses: u64,
}

/// An answer in memory and how long it is kept.
struct Kept {
    answer: Arc<[u8]>,
    ttl: Option<Duration>,
}

/// Each answer expires after its own policy's `ttl`.
struct ByPolicy;

impl moka::Expiry<String, Arc<Kept>> for ByPolicy {
    fn expire_after_create(&self, _: &String, kept: &Arc<Kept>, _: Instant) -> Option<Duration> {
        kept.ttl
    }

    fn expire_after_update(
        &self,
        _: &String,
        kept: &Arc<Kept>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        kept.ttl
    }
}

/// One action's counts, bumped without a lock. A caller that makes many
/// calls of one action holds its counters ([`ActionCache::counters`]) so
/// that a hit looks nothing up to count itself.
#[derive(Default)]
pub struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
}

/// An action's `cache` property, with what its calls need at hand: the
/// prefix of its keys and its counters (fetched from the app's cache on
/// first use, so that a hit looks nothing up to count itself).
pub struct CachedAction {
    policy: CachePolicy,
    /// `<package>.<action>`.
    label: String,
    counters: std::sync::OnceLock<Arc<Counters>>,
}

impl CachedAction {
    /// `package`'s `action`, cached under `policy`.
    pub fn new(policy: CachePolicy, package: &str, action: &str) -> Self {
        CachedAction {
            policy,
            label: format!("{package}.{action}"),
            counters: std::sync::OnceLock::new(),
        }
    }

    /// Its `cache` property.
    pub fn policy(&self) -> &CachePolicy {
        &self.policy
    }

    /// `<package>.<action>`.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Its counters in `cache`.
    pub fn counters(&self, cache: &ActionCache) -> &Counters {
        self.counters.get_or_init(|| cache.counters(&self.label))
    }
}

/// The cache over its bucket, with its counts per action.
pub struct ActionCache {
    bucket: Arc<Bucket>,
    /// `None` when `cache_memory` is 0: every lookup goes to the bucket.
    memory: Option<Cache<String, Arc<Kept>>>,
    /// Bumped by every clean: an answer whose call began before is not kept.
    generation: AtomicU64,
    /// Read on every cached call, written once per action: swapped whole,
    /// so that a hit takes no lock.
    counts: ArcSwap<HashMap<String, Arc<Counters>>>,
}

impl ActionCache {
    /// The cache over `bucket`, keeping up to `memory` bytes of answers in
    /// this node's memory.
    pub(super) fn new(bucket: Arc<Bucket>, memory: u64) -> ActionCache {
        let memory = (memory > 0).then(|| {
            Cache::builder()
                .max_capacity(memory)
                .weigher(|key: &String, kept: &Arc<Kept>| {
                    let weight = key.len() + kept.answer.len() + ENTRY_OVERHEAD;
                    u32::try_from(weight).unwrap_or(u32::MAX)
                })
                .expire_after(ByPolicy)
                .build()
        });
        ActionCache {
            bucket,
            memory,
            generation: AtomicU64::new(0),
            counts: ArcSwap::default(),
        }
    }

    /// The key of a call of `action` (`<package>.<action>`) whose params are
    /// `params` (JSON when `json`, else MessagePack; by name, or by position
    /// in the order of `names`); `None` when the params
    /// cannot be read (the call then goes in and fails or answers on its own).
    pub fn key<'n>(
        action: &str,
        json: bool,
        params: &[u8],
        names: impl IntoIterator<Item = &'n str, IntoIter: ExactSizeIterator>,
        policy: &CachePolicy,
    ) -> Option<String> {
        let value: Value = match json {
            true if params.is_empty() => Value::Null,
            true => serde_json::from_slice(params).ok()?,
            false if params.is_empty() => Value::Null,
            false => rmp_serde::from_slice(params).ok()?,
        };
        // By position is the same call as by name.
        let value = match value {
            Value::Array(list) => {
                let names = names.into_iter();
                match list.len() <= names.len() {
                    true => Value::Object(names.map(str::to_owned).zip(list).collect()),
                    false => Value::Array(list),
                }
            }
            other => other,
        };
        let mut hasher = blake3::Hasher::new();
        hasher.update(if json { b"j" } else { b"m" });
        // The picked values written straight into the hash, as the JSON
        // text `Value::to_string` gives (the key's form is kept in buckets).
        let written = match (&value, policy.keys.is_empty()) {
            (Value::Object(map), false) => {
                let picked: Vec<&Value> = policy
                    .keys
                    .iter()
                    .map(|k| map.get(k).unwrap_or(&Value::Null))
                    .collect();
                serde_json::to_writer(&mut hasher, &picked)
            }
            _ => serde_json::to_writer(&mut hasher, &value),
        };
        written.ok()?;
        let hash = hasher.finalize().to_hex();
        let mut key = String::with_capacity(action.len() + 1 + hash.len());
        key.push_str(action);
        key.push(':');
        key.push_str(&hash);
        Some(key)
    }

    /// The counters of `action` (`<package>.<action>`), made on first use.
    pub fn counters(&self, action: &str) -> Arc<Counters> {
        if let Some(c) = self.counts.load().get(action) {
            return c.clone();
        }
        let mut counters = None;
        self.counts.rcu(|counts| {
            let mut counts = HashMap::clone(counts);
            counters = Some(counts.entry(action.to_owned()).or_default().clone());
            counts
        });
        counters.unwrap_or_default()
    }

    /// The answer kept at `key` in this node's memory, counted as a hit in
    /// `counters`: no store, no await. `None` sends the caller to
    /// [`ActionCache::get_stored`].
    pub fn get_in_memory(&self, key: &str, counters: &Counters) -> Option<Arc<[u8]>> {
        let kept = self.memory.as_ref()?.get(key)?;
        counters.hits.fetch_add(1, Ordering::Relaxed);
        Some(kept.answer.clone())
    }

    /// Where a call that missed stands: hand it to [`ActionCache::put`]
    /// with its answer.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The answer kept at `key` in the cache's bucket (after
    /// [`ActionCache::get_in_memory`] found none), counted as a hit in
    /// `counters` and then kept in memory for the policy's `ttl`.
    pub async fn get_stored(
        &self,
        action: &str,
        key: &str,
        policy: &CachePolicy,
        counters: &Counters,
    ) -> Option<Arc<[u8]>> {
        let since = self.generation();
        match self.bucket.run(|b| b.get(key)).await {
            Ok(Some(answer)) => {
                counters.hits.fetch_add(1, Ordering::Relaxed);
                let answer: Arc<[u8]> = answer.into();
                self.remember(key, &answer, policy, since);
                Some(answer)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(action, error = %e, "action cache unavailable; calling the action");
                None
            }
        }
    }

    /// Keeps `answer` in memory unless a clean came after `since`.
    fn remember(&self, key: &str, answer: &Arc<[u8]>, policy: &CachePolicy, since: u64) {
        let Some(memory) = &self.memory else { return };
        let kept = Arc::new(Kept {
            answer: answer.clone(),
            ttl: policy.ttl,
        });
        memory.insert(key.to_owned(), kept);
        // A clean that ran while this was put in may have missed it.
        if self.generation() != since {
            memory.invalidate(key);
        }
    }

    /// Keeps `answer` at `key` for the policy's TTL, counted as a miss;
    /// not kept when a clean came after `since` (its call's
    /// [`ActionCache::generation`]), since the answer may predate it.
    pub async fn put(
        &self,
        action: &str,
        key: &str,
        answer: &[u8],
        policy: &CachePolicy,
        (since, counters): (u64, &Counters),
    ) {
        counters.misses.fetch_add(1, Ordering::Relaxed);
        if self.bucket.check_value(answer).is_err() || self.generation() != since {
            return;
        }
        self.remember(key, &Arc::from(answer), policy, since);
        if let Err(e) = self.bucket.run(|b| b.set(key, answer, policy.ttl)).await {
            tracing::warn!(action, error = %e, "action cache: answer not kept in its bucket");
            return;
        }
        if self.generation() != since {
            // A clean ran while the answer was written: it may predate it.
            let _ = self.bucket.run(|b| b.delete(key)).await;
        }
    }

    /// Drops every answer of `package` from this node's memory and the
    /// bucket; how many went from the bucket.
    pub async fn clean(&self, package: &str) -> u64 {
        self.generation.fetch_add(1, Ordering::AcqRel);
        let prefix = format!("{package}.");
        if let Some(memory) = &self.memory {
            let doomed: Vec<Arc<String>> = memory
                .iter()
                .map(|(key, _)| key)
                .filter(|key| key.starts_with(&prefix))
                .collect();
            for key in doomed {
                memory.invalidate(key.as_str());
            }
        }
        match self.bucket.run(|b| b.delete_prefix(&prefix)).await {
            Ok(n) => {
                tracing::info!(package, dropped = n, "action cache cleaned");
                n
            }
            Err(e) => {
                tracing::warn!(package, error = %e, "action cache not cleaned in its bucket");
                0
            }
        }
    }

    /// Answers and their bytes (as weighed) kept in this node's memory.
    pub fn memory_size(&self) -> (u64, u64) {
        self.memory.as_ref().map_or((0, 0), |m| {
            m.run_pending_tasks();
            (m.entry_count(), m.weighted_size())
        })
    }

    /// Hits and misses per action, sorted by action.
    pub fn counts(&self) -> Vec<(String, CacheCounts)> {
        let counts = self.counts.load();
        let mut all: Vec<_> = counts
            .iter()
            .map(|(k, c)| {
                let counts = CacheCounts {
                    hits: c.hits.load(Ordering::Relaxed),
                    misses: c.misses.load(Ordering::Relaxed),
                };
                (k.clone(), counts)
            })
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A key as it was first written (the JSON text of the picked values,
    /// hashed): keys live in buckets that outlast a host's version, so
    /// the form must not drift.
    fn first_form(action: &str, picked: &Value) -> String {
        let mut hasher = blake3::Hasher::new();
        hasher.update(b"j");
        hasher.update(picked.to_string().as_bytes());
        format!("{action}:{}", hasher.finalize().to_hex())
    }

    #[test]
    fn keys_keep_their_form() {
        let names = ["sku", "qty"];
        let by = |keys: &[&str]| CachePolicy {
            keys: keys.iter().map(|k| k.to_string()).collect(),
            ttl: None,
        };
        let params = br#"{"qty": 2, "sku": "a\u00e9\"b", "x": [1.5, null]}"#;
        let all = ActionCache::key("inv.get", true, params, names, &by(&[]));
        let value: Value = serde_json::from_slice(params).expect("JSON");
        assert_eq!(all.as_deref(), Some(&*first_form("inv.get", &value)));
        let picked = ActionCache::key("inv.get", true, params, names, &by(&["sku", "nope"]));
        let expected = first_form("inv.get", &json!(["a\u{e9}\"b", null]));
        assert_eq!(picked.as_deref(), Some(&*expected));
        // By position is by name.
        let positional = ActionCache::key(
            "inv.get",
            true,
            br#"["a\u00e9\"b", 2]"#,
            names,
            &by(&["sku", "nope"]),
        );
        assert_eq!(positional, picked);
        // Unreadable params make no key.
        assert_eq!(
            ActionCache::key("inv.get", true, b"{", names, &by(&[])),
            None
        );
    }
}

//! The action cache, Moleculer's cacher for actions with a `cache`
//! property: an answer is kept in the [`CACHE_BUCKET`](super::CACHE_BUCKET)
//! under `<package>.<action>:` and a hash of the caller's format and the
//! parameters the policy's `keys` name (all of them when it names none),
//! for the policy's `ttl`. A `cache.clean.<package>` event drops every
//! answer of that package. A store that fails is a miss, logged: the call
//! then enters the package as if there were no cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::Bucket;
use crate::manifest::CachePolicy;

/// The event that empties a package's answers: `cache.clean.<package>`.
pub const CLEAN_EVENT_PREFIX: &str = "cache.clean.";

/// Hits and misses of one action.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounts {
    /// Calls answered from the cache.
    pub hits: u64,
    /// Calls that entered the package and whose answer was kept.
    pub misses: u64,
}

/// The cache over its bucket, with its counts per action.
pub struct ActionCache {
    bucket: Arc<Bucket>,
    counts: Mutex<HashMap<String, CacheCounts>>,
}

impl ActionCache {
    pub(super) fn new(bucket: Arc<Bucket>) -> ActionCache {
        ActionCache {
            bucket,
            counts: Mutex::new(HashMap::new()),
        }
    }

    /// The key of a call of `action` (`<package>.<action>`) whose params are
    /// `params` (JSON when `json`, else MessagePack; by name, or by position
    /// in the order of `names`); `None` when the params
    /// cannot be read (the call then goes in and fails or answers on its own).
    pub fn key(
        action: &str,
        json: bool,
        params: &[u8],
        names: &[&str],
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
            Value::Array(list) if list.len() <= names.len() => {
                Value::Object(names.iter().map(|n| n.to_string()).zip(list).collect())
            }
            other => other,
        };
        let picked = match (&value, policy.keys.is_empty()) {
            (Value::Object(map), false) => Value::Array(
                policy
                    .keys
                    .iter()
                    .map(|k| map.get(k).cloned().unwrap_or(Value::Null))
                    .collect(),
            ),
            _ => value,
        };
        let mut hasher = blake3::Hasher::new();
        hasher.update(if json { b"j" } else { b"m" });
        hasher.update(picked.to_string().as_bytes());
        Some(format!("{action}:{}", hasher.finalize().to_hex()))
    }

    /// The kept answer at `key`, counted as a hit.
    pub async fn get(&self, action: &str, key: &str) -> Option<Vec<u8>> {
        match self.bucket.run(|b| b.get(key)).await {
            Ok(Some(answer)) => {
                self.count(action, |c| c.hits += 1);
                Some(answer)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(action, error = %e, "action cache unavailable; calling the action");
                None
            }
        }
    }

    /// Keeps `answer` at `key` for the policy's TTL, counted as a miss.
    pub async fn put(&self, action: &str, key: &str, answer: &[u8], policy: &CachePolicy) {
        self.count(action, |c| c.misses += 1);
        if self.bucket.check_value(answer).is_err() {
            return;
        }
        if let Err(e) = self.bucket.run(|b| b.set(key, answer, policy.ttl)).await {
            tracing::warn!(action, error = %e, "action cache: answer not kept");
        }
    }

    /// Drops every answer of `package`; how many went.
    pub async fn clean(&self, package: &str) -> u64 {
        let prefix = format!("{package}.");
        match self.bucket.run(|b| b.delete_prefix(&prefix)).await {
            Ok(n) => {
                tracing::info!(package, dropped = n, "action cache cleaned");
                n
            }
            Err(e) => {
                tracing::warn!(package, error = %e, "action cache not cleaned");
                0
            }
        }
    }

    /// Hits and misses per action, sorted by action.
    pub fn counts(&self) -> Vec<(String, CacheCounts)> {
        let counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = counts.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    fn count(&self, action: &str, f: impl FnOnce(&mut CacheCounts)) {
        let mut counts = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        match counts.get_mut(action) {
            Some(c) => f(c),
            None => f(counts.entry(action.to_owned()).or_default()),
        }
    }
}

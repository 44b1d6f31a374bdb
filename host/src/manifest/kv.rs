//! Key-value state in the manifest: the bucket names `grants.kv` may hold,
//! the `[kv.<bucket>]` tables (which backend holds a bucket, the largest
//! value it takes), and an action's `cache` property read as the host's
//! [`CachePolicy`]. What a bucket does is `kv`'s business; this file only
//! checks what was written.

use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use serde::Deserialize;
use serde::de::Deserializer;
use toml::Spanned;
use toml::de::DeValue;

use super::error::ManifestError;
use super::source::{Scope, Source};
use super::values::{FromTomlStr, SizeIn, StrVisitor, Text};

/// The largest value a bucket takes unless its table says otherwise.
pub const DEFAULT_MAX_VALUE: u64 = 1 << 20;

/// The bucket every `[kv.*]`-less app gets its cache from, and the name of
/// the table that moves it.
pub const DEFAULT_BUCKET: &str = "default";

/// A bucket name: lowercase ASCII letters, digits, `-` and `_`, starting
/// with a letter or digit, at most 64 characters (it names a file).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct BucketName(pub(super) String);

/// What a bucket name may be, for messages.
pub const BUCKET_NAME_RULE: &str = "a bucket name is lowercase ASCII letters, digits, `-` and `_`, \
     starts with a letter or digit, and is at most 64 characters";

/// Whether `name` may name a bucket.
pub fn is_bucket_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.len() <= 64
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
}

impl FromTomlStr for BucketName {
    const EXPECTING: &'static str = "a bucket name like \"sessions\"";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        if is_bucket_name(text) {
            Ok(BucketName(text.to_owned()))
        } else {
            Err(format!("{text:?}: {BUCKET_NAME_RULE}"))
        }
    }
}

impl<'de> Deserialize<'de> for BucketName {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

/// A value limit: 1 byte to 64 MiB.
type ValueSize = SizeIn<1, { 64 << 20 }>;

/// The action cache's memory on one node unless `[kv.default]` says otherwise.
pub const DEFAULT_CACHE_MEMORY: u64 = 32 << 20;

/// The action cache's memory: 0 (no memory layer) to 4 GiB.
type CacheMemory = SizeIn<0, { 4 << 30 }>;

/// `[kv.<bucket>]` as written.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { backend = \"redis://127.0.0.1:6379\", max_value = \"1 MiB\" }"
)]
struct RawBucket {
    backend: Option<Text>,
    max_value: Option<ValueSize>,
    cache_memory: Option<CacheMemory>,
}

/// Where a bucket's pairs live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvBackend {
    /// A redb file in the app's `.steedos/kv/` folder (the default).
    Embedded,
    /// A Redis server: the URL as written (`redis://` or `rediss://`).
    Redis(String),
    /// A NATS JetStream key-value bucket: the server's URL as written
    /// (`nats://` or `tls://`); the default in an app whose `[cluster]`
    /// transporter is NATS.
    Nats(String),
}

impl fmt::Display for KvBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KvBackend::Embedded => f.write_str("embedded"),
            KvBackend::Redis(url) | KvBackend::Nats(url) => f.write_str(&super::redact(url)),
        }
    }
}

/// One bucket's settings: `[kv.<name>]`, or the defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BucketSettings {
    /// The bucket's name.
    pub name: String,
    /// Where its pairs live.
    pub backend: KvBackend,
    /// The largest value a write may carry, in bytes.
    pub max_value: u64,
    /// Whether `backend` was written in `[kv.<name>]` (an unwritten one
    /// follows the cluster: JetStream when the transporter is NATS).
    pub backend_written: bool,
    /// Bytes of answers the action cache keeps in this node's memory in
    /// front of the bucket (read from `[kv.default]`, where the cache lives).
    pub cache_memory: u64,
}

impl BucketSettings {
    /// A bucket with every default: embedded, values up to [`DEFAULT_MAX_VALUE`].
    pub fn embedded(name: &str) -> BucketSettings {
        BucketSettings {
            name: name.to_owned(),
            backend: KvBackend::Embedded,
            max_value: DEFAULT_MAX_VALUE,
            backend_written: false,
            cache_memory: DEFAULT_CACHE_MEMORY,
        }
    }
}

/// `cache = { keys = ["sku"], ttl = "30s" }` (or `cache = true`) on an
/// action: its answers are kept and given back to calls with the same keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CachePolicy {
    /// The parameters that make the key; empty: all of them.
    pub keys: Vec<String>,
    /// How long an answer is kept; `None`: until a `cache.clean.<package>`.
    pub ttl: Option<Duration>,
}

impl Source<'_> {
    /// The `[kv]` table: one `[kv.<bucket>]` table per configured bucket.
    pub(super) fn kv(
        &self,
        value: Option<&Spanned<DeValue<'_>>>,
    ) -> Result<Vec<BucketSettings>, ManifestError> {
        let Some(value) = value else {
            return Ok(Vec::new());
        };
        let DeValue::Table(table) = value.get_ref() else {
            let message = "kv: expected a table of buckets, like [kv.sessions]".to_owned();
            return Err(self.error(value.span(), None, message));
        };
        let mut buckets = Vec::new();
        for (key, entry) in table.iter() {
            let name: &str = key.get_ref().as_ref();
            if !is_bucket_name(name) {
                let message = format!("kv.{name}: {BUCKET_NAME_RULE}");
                return Err(self.error(key.span(), None, message));
            }
            let scope = Scope::new(self, entry, "kv", None);
            let raw: RawBucket = scope.deserialize()?;
            if raw.cache_memory.is_some() && name != DEFAULT_BUCKET {
                let message = format!(
                    "kv.{name}.cache_memory: only [kv.{DEFAULT_BUCKET}] takes it (the action cache lives there)"
                );
                return Err(self.error(entry.span(), None, message));
            }
            let backend_written = raw.backend.is_some();
            let backend = match raw.backend.map(|t| t.0) {
                None => KvBackend::Embedded,
                Some(b) if b == "embedded" => KvBackend::Embedded,
                Some(url) if url.starts_with("redis://") || url.starts_with("rediss://") => {
                    KvBackend::Redis(url)
                }
                Some(url) if url.starts_with("nats://") || url.starts_with("tls://") => {
                    KvBackend::Nats(url)
                }
                Some(other) => {
                    let message = format!(
                        "kv.{name}.backend: {:?} is not \"embedded\", a redis://, rediss://, nats:// or tls:// URL",
                        super::redact(&other)
                    );
                    return Err(self.error(entry.span(), None, message));
                }
            };
            buckets.push(BucketSettings {
                name: name.to_owned(),
                backend,
                max_value: raw.max_value.map_or(DEFAULT_MAX_VALUE, |s| s.0),
                backend_written,
                cache_memory: raw.cache_memory.map_or(DEFAULT_CACHE_MEMORY, |s| s.0),
            });
        }
        Ok(buckets)
    }
}

/// An action's `cache` property (already JSON, as INFO carries it) as the
/// host's policy: `true`, `false`, or `{ keys = [...], ttl = "30s" | seconds }`.
pub(super) fn cache_policy(value: &serde_json::Value) -> Result<Option<CachePolicy>, String> {
    use serde_json::Value;
    let table =
        match value {
            Value::Bool(false) => return Ok(None),
            Value::Bool(true) => {
                return Ok(Some(CachePolicy {
                    keys: Vec::new(),
                    ttl: None,
                }));
            }
            Value::Object(table) => table,
            _ => return Err(
                "cache: expected true, false or a table like { keys = [\"sku\"], ttl = \"30s\" }"
                    .to_owned(),
            ),
        };
    let mut keys = Vec::new();
    if let Some(list) = table.get("keys") {
        let Some(list) = list.as_array() else {
            return Err("cache.keys: expected a list of parameter names".to_owned());
        };
        for key in list {
            match key.as_str() {
                Some(k) if !k.is_empty() => keys.push(k.to_owned()),
                _ => {
                    return Err(
                        "cache.keys: each key is a parameter name (a non-empty string)".to_owned(),
                    );
                }
            }
        }
    }
    let ttl = match table.get("ttl") {
        None | Some(Value::Null) => None,
        // Moleculer writes the TTL in seconds.
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if s > 0.0 && s <= 86_400.0 * 365.0 => Some(Duration::from_secs_f64(s)),
            _ => {
                return Err(format!(
                    "cache.ttl: {n} is not a number of seconds from 1 ms to a year"
                ));
            }
        },
        Some(Value::String(text)) => match humantime::parse_duration(text) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => {
                return Err(format!(
                    "cache.ttl: {text:?} is not a duration (try \"30s\")"
                ));
            }
        },
        Some(_) => {
            return Err(
                "cache.ttl: expected a duration like \"30s\" or a number of seconds".to_owned(),
            );
        }
    };
    Ok(Some(CachePolicy { keys, ttl }))
}

/// `grants.kv` as the model keeps it: bucket names, sorted, once each.
pub(super) fn granted_buckets(raw: Vec<BucketName>) -> Vec<String> {
    let mut names: Vec<String> = raw.into_iter().map(|b| b.0).collect();
    names.sort();
    names.dedup();
    names
}

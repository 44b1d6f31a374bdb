//! State for packages: the key-value buckets an app's packages share, and
//! the action cache kept in them.
//!
//! # Buckets
//! [`Stores`] is an app's set of buckets: each one a [`Bucket`] over a
//! [`Backend`] chosen by its `[kv.<name>]` table (embedded redb,
//! `embedded.rs`, by default; Redis, `redis.rs`; NATS JetStream,
//! `jetstream.rs`, which is also the default of an app whose `[cluster]`
//! transporter is NATS). A bucket is opened on first use, and one a
//! package deployed later is granted is made then, with the defaults; a
//! backend out of reach is an error for that operation only, naming the
//! package and the bucket, and the next one tries again.
//!
//! # Packages
//! `host.rs` is the host side of `wasi:keyvalue@0.2.0-draft2` (`store`,
//! `atomics`, `batch`) and `steedos:kv/ttl`, linked only for a package with
//! `grants.kv`; opening a bucket the grant does not name is the WIT
//! `access-denied` error, never a trap.
//!
//! # The action cache
//! `cache.rs`: answers of actions with a `cache` property, kept in the
//! internal bucket [`CACHE_BUCKET`] (on `[kv.default]`'s backend), found by
//! the action and the parameters its `keys` name, emptied per package by a
//! `cache.clean.<package>` event.
//!
//! `cli.rs` is `steedos-wasm kv get|set|list|delete`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use crate::manifest::{BucketSettings, ClusterSettings, DEFAULT_BUCKET, KvBackend, Manifest};

pub mod cache;
pub mod cli;
mod embedded;
mod host;
mod jetstream;
mod redis;

pub use cache::ActionCache;
pub use host::{KvCtx, KvView, add_to_linker, is_kv_interface};

/// The bucket that holds the action cache: no grant can name it.
pub const CACHE_BUCKET: &str = "$cache";

/// The longest key a bucket takes, in bytes.
pub const MAX_KEY: usize = 1024;

/// Keys one `list-keys` page returns at most.
pub const PAGE: usize = 1000;

/// Keys and bytes one batch may carry at most.
pub const MAX_BATCH: usize = 10_000;

/// What went wrong with a bucket: the message a guest (or an operator)
/// reads names the bucket and the cause.
#[derive(Debug, Clone, thiserror::Error)]
pub enum KvError {
    /// A value over the bucket's `max_value`.
    #[error(
        "bucket `{bucket}`: a value of {size} bytes is over the bucket's max_value of {max} bytes"
    )]
    TooLarge {
        /// The bucket.
        bucket: String,
        /// The value's size.
        size: usize,
        /// The limit.
        max: u64,
    },
    /// A key the backend cannot hold.
    #[error("bucket `{bucket}`: {why}")]
    BadKey {
        /// The bucket.
        bucket: String,
        /// Why.
        why: String,
    },
    /// The value at the key is not what the operation needs.
    #[error("bucket `{bucket}`: {why}")]
    Conflict {
        /// The bucket.
        bucket: String,
        /// Why.
        why: String,
    },
    /// The backend failed or is out of reach.
    #[error("bucket `{bucket}` ({backend}): {why}")]
    Backend {
        /// The bucket.
        bucket: String,
        /// The backend, its URL redacted.
        backend: String,
        /// What it said.
        why: String,
    },
}

/// A boxed future, as backends return them.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// A backend's answer; its error is a cause, the bucket names itself.
pub type Answer<T> = Result<T, String>;

/// One page of keys and where the next starts.
pub type Page = (Vec<String>, Option<String>);

/// Where a bucket's pairs live: every operation a package, the cache or an
/// operator may ask. Writes are durable when their future resolves.
pub trait Backend: Send + Sync + 'static {
    /// The value of `key`, if set and not expired.
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Answer<Option<Vec<u8>>>>;
    /// Sets `key`, expiring after `ttl` if given.
    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Answer<()>>;
    /// Removes `key`.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Answer<()>>;
    /// One page of keys from `cursor`, at most `limit`.
    fn list<'a>(&'a self, cursor: Option<&'a str>, limit: usize) -> BoxFuture<'a, Answer<Page>>;
    /// Adds `delta` to the decimal integer at `key` (0 when absent).
    fn increment<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
    ) -> BoxFuture<'a, Answer<Result<i64, String>>>;
    /// Writes `value` if `key` still holds `expected`; `Ok(false)` when it does not.
    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        value: &'a [u8],
    ) -> BoxFuture<'a, Answer<bool>>;
    /// The values of `keys`, in order.
    fn get_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Answer<Vec<Option<Vec<u8>>>>>;
    /// Sets every pair, all or none.
    fn set_many<'a>(&'a self, pairs: &'a [(String, Vec<u8>)]) -> BoxFuture<'a, Answer<()>>;
    /// Removes every key, all or none.
    fn delete_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Answer<()>>;
    /// Removes every key starting with `prefix`; how many went.
    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Answer<u64>>;
    /// Keys held and their bytes (keys and values), for `/metrics`.
    fn size(&self) -> BoxFuture<'_, Answer<(u64, u64)>>;
}

/// Where an app's buckets are: what every bucket of it shares.
struct Place {
    /// `.steedos/kv/`, for embedded buckets.
    folder: PathBuf,
    /// The app's name: Redis keys and JetStream buckets are named after it.
    app: String,
    /// The cluster, whose credentials a bucket on its NATS server uses.
    cluster: Option<ClusterSettings>,
    /// Connections to NATS servers, shared by the JetStream buckets.
    nats: jetstream::Connections,
}

/// One bucket: its settings and its backend, opened on first use.
pub struct Bucket {
    settings: BucketSettings,
    place: Arc<Place>,
    backend: tokio::sync::OnceCell<Arc<dyn Backend>>,
}

impl Bucket {
    fn new(settings: BucketSettings, place: Arc<Place>) -> Bucket {
        Bucket {
            settings,
            place,
            backend: tokio::sync::OnceCell::new(),
        }
    }

    /// The bucket's name.
    pub fn name(&self) -> &str {
        &self.settings.name
    }

    /// Its settings.
    pub fn settings(&self) -> &BucketSettings {
        &self.settings
    }

    fn failed(&self, why: impl Into<String>) -> KvError {
        KvError::Backend {
            bucket: self.settings.name.clone(),
            backend: self.settings.backend.to_string(),
            why: why.into(),
        }
    }

    /// The backend, opened now if it was not.
    pub async fn backend(&self) -> Result<&Arc<dyn Backend>, KvError> {
        self.backend
            .get_or_try_init(|| async {
                let (place, name) = (&self.place, &self.settings.name);
                let opened: Arc<dyn Backend> = match &self.settings.backend {
                    KvBackend::Embedded => {
                        let path = place.folder.join(format!("{}.redb", file_stem(name)));
                        Arc::new(embedded::Embedded::open(path).await?)
                    }
                    KvBackend::Redis(url) => {
                        let prefix = format!("steedos:{}:{name}:", place.app);
                        Arc::new(redis::RedisBucket::connect(url, prefix).await?)
                    }
                    KvBackend::Nats(url) => {
                        let cluster = place.cluster.as_ref().filter(|c| &c.transporter == url);
                        let name = jetstream_name(&place.app, name);
                        let max = self.settings.max_value;
                        let nats = &place.nats;
                        let bucket =
                            jetstream::JetStreamBucket::connect(nats, url, cluster, &name, max);
                        Arc::new(bucket.await?)
                    }
                };
                Ok(opened)
            })
            .await
            .map_err(|why: String| self.failed(why))
    }

    /// Checks a key against what every backend holds.
    pub fn check_key(&self, key: &str) -> Result<(), KvError> {
        let why = if key.is_empty() {
            "an empty key cannot be stored".to_owned()
        } else if key.len() > MAX_KEY {
            format!(
                "a key of {} bytes is over the {MAX_KEY}-byte limit",
                key.len()
            )
        } else if key.contains('\0') {
            "a key may not hold a NUL character".to_owned()
        } else {
            return Ok(());
        };
        Err(KvError::BadKey {
            bucket: self.settings.name.clone(),
            why,
        })
    }

    /// Checks a value against the bucket's `max_value`.
    pub fn check_value(&self, value: &[u8]) -> Result<(), KvError> {
        if value.len() as u64 > self.settings.max_value {
            return Err(KvError::TooLarge {
                bucket: self.settings.name.clone(),
                size: value.len(),
                max: self.settings.max_value,
            });
        }
        Ok(())
    }

    /// Runs `op` on the backend; a backend error names the bucket.
    pub async fn run<'a, T>(
        &'a self,
        op: impl FnOnce(&'a Arc<dyn Backend>) -> BoxFuture<'a, Answer<T>>,
    ) -> Result<T, KvError> {
        let backend = self.backend().await?;
        op(backend).await.map_err(|why| self.failed(why))
    }
}

/// A bucket name as a file stem: bucket names are already file-safe; the
/// cache's `$` is spelled out.
fn file_stem(name: &str) -> String {
    name.replace('$', "_internal_")
}

/// The JetStream bucket that holds `bucket` of `app`:
/// `steedos_<app>_<bucket>`, the app's name kept to the characters a
/// JetStream bucket name takes (with a hash of it when some were not).
fn jetstream_name(app: &str, bucket: &str) -> String {
    let kept: String = app
        .chars()
        .map(|c| match c.is_ascii_alphanumeric() || c == '-' {
            true => c,
            false => '_',
        })
        .collect();
    let app = match kept == app && !app.contains('_') {
        true => kept,
        false => format!("{kept}-{}", &blake3::hash(app.as_bytes()).to_hex()[..8]),
    };
    format!("steedos_{app}_{}", file_stem(bucket))
}

/// Whether `url` names a NATS server (what a cluster's transporter may be
/// besides Redis).
fn is_nats(url: &str) -> bool {
    url.starts_with("nats://") || url.starts_with("tls://")
}

/// An app's buckets: those its manifest configures, any other name a
/// grant holds, and any a package deployed later is granted, with the
/// defaults.
pub struct Stores {
    buckets: RwLock<HashMap<String, Arc<Bucket>>>,
    /// What a bucket without a `[kv.<name>]` table gets.
    default_backend: KvBackend,
    place: Arc<Place>,
    /// The action cache over [`CACHE_BUCKET`], made on first use.
    cache: OnceLock<ActionCache>,
    /// Keys and bytes per open bucket, as last measured ([`Stores::watch_sizes`]).
    sizes: std::sync::Mutex<Vec<(String, u64, u64)>>,
}

impl Stores {
    /// The buckets of `manifest`'s app: every `[kv.*]` table and every
    /// bucket a package's grant names; embedded ones in `<app>/.steedos/kv/`,
    /// or, when the app joins a cluster over NATS, JetStream ones on the
    /// cluster's server for every bucket whose table names no backend.
    pub fn new(manifest: &Manifest) -> Stores {
        let cluster = manifest.cluster.clone();
        let default_backend = match &cluster {
            Some(c) if is_nats(&c.transporter) => KvBackend::Nats(c.transporter.clone()),
            _ => KvBackend::Embedded,
        };
        let place = Arc::new(Place {
            folder: manifest.dir.join(".steedos").join("kv"),
            app: manifest.app.name.clone(),
            cluster,
            nats: jetstream::Connections::default(),
        });
        let stores = Stores {
            buckets: RwLock::new(HashMap::new()),
            default_backend,
            place,
            cache: OnceLock::new(),
            sizes: std::sync::Mutex::new(Vec::new()),
        };
        let mut settings: HashMap<String, BucketSettings> = manifest
            .kv
            .iter()
            .map(|b| (b.name.clone(), stores.defaulted(b.clone())))
            .collect();
        for name in manifest.packages.iter().flat_map(|p| &p.grants.kv) {
            if !settings.contains_key(name) {
                settings.insert(name.clone(), stores.defaults(name));
            }
        }
        // The cache lives where `[kv.default]` says, default or not.
        let mut cache = settings
            .get(DEFAULT_BUCKET)
            .cloned()
            .unwrap_or_else(|| stores.defaults(DEFAULT_BUCKET));
        cache.name = CACHE_BUCKET.to_owned();
        settings.insert(CACHE_BUCKET.to_owned(), cache);
        let buckets = settings
            .into_iter()
            .map(|(name, s)| (name, Arc::new(Bucket::new(s, stores.place.clone()))))
            .collect();
        Stores {
            buckets: RwLock::new(buckets),
            ..stores
        }
    }

    /// A bucket without a table: every default, on the app's default backend.
    fn defaults(&self, name: &str) -> BucketSettings {
        self.defaulted(BucketSettings::embedded(name))
    }

    /// `settings` on the app's default backend unless its table names one.
    fn defaulted(&self, mut settings: BucketSettings) -> BucketSettings {
        if !settings.backend_written {
            settings.backend = self.default_backend.clone();
        }
        settings
    }

    /// The bucket called `name`, if the app has it.
    pub fn bucket(&self, name: &str) -> Option<Arc<Bucket>> {
        let buckets = self.buckets.read().unwrap_or_else(|p| p.into_inner());
        buckets.get(name).cloned()
    }

    /// The bucket called `name`, made with the defaults when the app had
    /// none of that name: a bucket granted to a package deployed after the
    /// app loaded. The caller has checked the grant; `$`-names are the
    /// host's own and never made here.
    pub fn bucket_or_new(&self, name: &str) -> Option<Arc<Bucket>> {
        if let Some(bucket) = self.bucket(name) {
            return Some(bucket);
        }
        if !crate::manifest::is_bucket_name(name) {
            return None;
        }
        let mut buckets = self.buckets.write().unwrap_or_else(|p| p.into_inner());
        let made = buckets
            .entry(name.to_owned())
            .or_insert_with(|| Arc::new(Bucket::new(self.defaults(name), self.place.clone())));
        Some(made.clone())
    }

    /// Every bucket, the cache's included, sorted by name.
    pub fn buckets(&self) -> Vec<Arc<Bucket>> {
        let buckets = self.buckets.read().unwrap_or_else(|p| p.into_inner());
        let mut all: Vec<_> = buckets.values().cloned().collect();
        all.sort_by(|a, b| a.name().cmp(b.name()));
        all
    }

    /// The action cache.
    pub fn cache(&self) -> Option<&ActionCache> {
        if let Some(cache) = self.cache.get() {
            return Some(cache);
        }
        let bucket = self.bucket(CACHE_BUCKET)?;
        let memory = bucket.settings().cache_memory;
        Some(self.cache.get_or_init(|| ActionCache::new(bucket, memory)))
    }

    /// Connects every bucket on a server now, at once, logging those out of
    /// reach (they are tried again on use): an unreachable backend does not
    /// stop the app. Embedded buckets open on first use, so that a process
    /// that never touches one (a `call` of another package) leaves its file free.
    pub async fn open_all(&self) {
        let remote: Vec<_> = self
            .buckets()
            .into_iter()
            .filter(|b| !matches!(b.settings.backend, KvBackend::Embedded))
            .collect();
        let opening = remote.iter().map(|bucket| async move {
            if let Err(e) = bucket.backend().await {
                tracing::warn!(bucket = bucket.name(), error = %e, "key-value bucket not open yet; tried again on use");
            }
        });
        futures_util::future::join_all(opening).await;
    }

    /// Keys and bytes of every open bucket as last measured, for `/metrics`.
    pub fn last_sizes(&self) -> Vec<(String, u64, u64)> {
        self.sizes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Measures the buckets every `every` while `stores` lives, so that a
    /// scrape of `/metrics` reads figures without touching a store.
    pub fn watch_sizes(stores: &Arc<Stores>, every: Duration) {
        let weak = Arc::downgrade(stores);
        tokio::spawn(async move {
            loop {
                let Some(stores) = weak.upgrade() else { return };
                let sizes = stores.sizes().await;
                *stores.sizes.lock().unwrap_or_else(|p| p.into_inner()) = sizes;
                drop(stores);
                tokio::time::sleep(every).await;
            }
        });
    }

    /// Keys and bytes of every open bucket, measured now.
    pub async fn sizes(&self) -> Vec<(String, u64, u64)> {
        let mut out = Vec::new();
        for bucket in self.buckets() {
            if bucket.backend.get().is_none() {
                continue;
            }
            if let Ok((keys, bytes)) = bucket.run(|b| b.size()).await {
                out.push((bucket.name().to_owned(), keys, bytes));
            }
        }
        out
    }
}

/// Now, in milliseconds since the Unix epoch (TTLs are kept as deadlines).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Adds the key-value imports to a package's `linker` when its component
/// imports them. What it may open is its grant's, checked at `open`: a
/// package without `grants.kv` is denied every bucket (the WIT
/// `access-denied`), so that a package written to fall back to state of its
/// own still loads in an app that grants it none.
pub fn link_if_imported<T: KvView + 'static>(
    linker: &mut wasmtime::component::Linker<T>,
    component: &wasmtime::component::Component,
) -> Result<(), String> {
    let engine = linker.engine().clone();
    let imports_kv = component
        .component_type()
        .imports(&engine)
        .any(|(name, _)| is_kv_interface(name));
    match imports_kv {
        true => add_to_linker(linker).map_err(|e| format!("{e:#}")),
        false => Ok(()),
    }
}

//! The host side of `wasi:keyvalue@0.2.0-draft2` (`store`, `atomics`,
//! `batch`) and `steedos:kv/ttl@0.1.0` for packages with `grants.kv`
//! (`draft.rs` links the older `0.2.0-draft` onto the same functions). An
//! instance reaches its app's [`Stores`] through a [`KvView`] of its store
//! data: its package, its granted buckets and its resource table. Every
//! failure a guest can cause or meet (a bucket it may not open, a value
//! too large, a backend out of reach) is the WIT `error` value naming the
//! bucket, never a trap.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker, Resource, ResourceTable};

use super::{Bucket, KvError, MAX_BATCH, PAGE, Stores};

mod bindings {
    wasmtime::component::bindgen!({
        path: ["../wit/deps/keyvalue-0.2.0-draft2", "../wit/deps/steedos-kv"],
        world: "steedos:kv/kv",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::OpenBucket,
            "wasi:keyvalue/atomics.cas": super::CasHandle,
        },
    });
}

use bindings::steedos::kv::ttl;
use bindings::wasi::keyvalue::{atomics, batch, store};

mod draft;

/// A bucket a guest opened.
pub struct OpenBucket {
    bucket: Arc<Bucket>,
    /// The last `0.2.0-draft` cursor given out: its number and the key it
    /// stands for (that draft's cursors are numbers).
    draft_cursor: Option<(u64, String)>,
}

/// A compare-and-swap handle: the key and the value it was made against.
pub struct CasHandle {
    bucket: Arc<Bucket>,
    key: String,
    seen: Option<Vec<u8>>,
}

/// What the key-value host functions see of an instance.
pub struct KvCtx<'a> {
    /// The package, for messages.
    pub package: &'a str,
    /// The buckets its grant names (sorted).
    pub granted: &'a [String],
    /// The app's buckets; `None` when the app has none.
    pub stores: Option<&'a Stores>,
    /// The instance's resource table.
    pub table: &'a mut ResourceTable,
}

/// Store data that can show its key-value slice.
pub trait KvView: Send {
    /// This instance's slice.
    fn kv(&mut self) -> KvCtx<'_>;
}

struct HasKv;

impl HasData for HasKv {
    type Data<'a> = KvCtx<'a>;
}

/// Adds `wasi:keyvalue` (`0.2.0-draft2` and `0.2.0-draft`) and
/// `steedos:kv/ttl` to `linker`.
pub fn add_to_linker<T: KvView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    bindings::Kv::add_to_linker::<T, HasKv>(linker, |t| t.kv())?;
    draft::add_to_linker(linker)
}

/// Whether `interface` is one [`add_to_linker`] provides.
pub fn is_kv_interface(interface: &str) -> bool {
    interface.starts_with("wasi:keyvalue/") || interface.starts_with("steedos:kv/")
}

type Res<T> = wasmtime::Result<Result<T, store::Error>>;

impl KvCtx<'_> {
    /// The error a guest reads, logged with the package.
    fn refuse(&self, e: KvError) -> store::Error {
        tracing::warn!(package = self.package, error = %e, "key-value operation failed");
        store::Error::Other(format!("package `{}`: {e}", self.package))
    }

    fn bucket(&self, handle: &Resource<OpenBucket>) -> wasmtime::Result<Arc<Bucket>> {
        Ok(self.table.get(handle)?.bucket.clone())
    }

    fn checked_key(&self, bucket: &Bucket, key: &str) -> Result<(), store::Error> {
        bucket.check_key(key).map_err(|e| self.refuse(e))
    }
}

impl store::Host for KvCtx<'_> {
    async fn open(&mut self, identifier: String) -> Res<Resource<OpenBucket>> {
        if self.granted.binary_search(&identifier).is_err() {
            tracing::warn!(package = self.package, bucket = %identifier, "bucket not granted");
            return Ok(Err(store::Error::AccessDenied));
        }
        // Granted: a bucket the app did not have at load (a package
        // deployed since) is made now with the defaults.
        let Some(bucket) = self.stores.and_then(|s| s.bucket_or_new(&identifier)) else {
            return Ok(Err(store::Error::NoSuchStore));
        };
        let open = OpenBucket {
            bucket,
            draft_cursor: None,
        };
        Ok(Ok(self.table.push(open)?))
    }
}

impl store::HostBucket for KvCtx<'_> {
    async fn get(&mut self, this: Resource<OpenBucket>, key: String) -> Res<Option<Vec<u8>>> {
        let bucket = self.bucket(&this)?;
        if let Err(e) = self.checked_key(&bucket, &key) {
            return Ok(Err(e));
        }
        Ok(bucket
            .run(|b| b.get(&key))
            .await
            .map_err(|e| self.refuse(e)))
    }

    async fn set(&mut self, this: Resource<OpenBucket>, key: String, value: Vec<u8>) -> Res<()> {
        let bucket = self.bucket(&this)?;
        Ok(self.write(&bucket, &key, &value, None).await)
    }

    async fn delete(&mut self, this: Resource<OpenBucket>, key: String) -> Res<()> {
        let bucket = self.bucket(&this)?;
        if let Err(e) = self.checked_key(&bucket, &key) {
            return Ok(Err(e));
        }
        Ok(bucket
            .run(|b| b.delete(&key))
            .await
            .map_err(|e| self.refuse(e)))
    }

    async fn exists(&mut self, this: Resource<OpenBucket>, key: String) -> Res<bool> {
        let found = self.get(this, key).await?;
        Ok(found.map(|v| v.is_some()))
    }

    async fn list_keys(
        &mut self,
        this: Resource<OpenBucket>,
        cursor: Option<String>,
    ) -> Res<store::KeyResponse> {
        let bucket = self.bucket(&this)?;
        let page = bucket.run(|b| b.list(cursor.as_deref(), PAGE)).await;
        Ok(page
            .map(|(keys, cursor)| store::KeyResponse { keys, cursor })
            .map_err(|e| self.refuse(e)))
    }

    async fn drop(&mut self, this: Resource<OpenBucket>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl KvCtx<'_> {
    async fn write(
        &mut self,
        bucket: &Bucket,
        key: &str,
        value: &[u8],
        ttl: Option<std::time::Duration>,
    ) -> Result<(), store::Error> {
        bucket
            .check_key(key)
            .and_then(|()| bucket.check_value(value))
            .map_err(|e| self.refuse(e))?;
        bucket
            .run(|b| b.set(key, value, ttl))
            .await
            .map_err(|e| self.refuse(e))
    }

    /// Every key checked, and the batch's size bounded.
    fn checked_batch<'k>(
        &self,
        bucket: &Bucket,
        keys: impl ExactSizeIterator<Item = &'k String>,
    ) -> Result<(), store::Error> {
        if keys.len() > MAX_BATCH {
            let why = format!(
                "a batch of {} keys is over the {MAX_BATCH}-key limit",
                keys.len()
            );
            return Err(self.refuse(KvError::BadKey {
                bucket: bucket.name().to_owned(),
                why,
            }));
        }
        for key in keys {
            self.checked_key(bucket, key)?;
        }
        Ok(())
    }
}

impl ttl::Host for KvCtx<'_> {
    async fn set_with_ttl(
        &mut self,
        this: Resource<OpenBucket>,
        key: String,
        value: Vec<u8>,
        ttl_ms: u64,
    ) -> Res<()> {
        let bucket = self.bucket(&this)?;
        if ttl_ms == 0 {
            return Ok(Err(store::Error::Other(format!(
                "package `{}`: bucket `{}`: a TTL of 0 ms would never be read; use delete",
                self.package,
                bucket.name()
            ))));
        }
        let ttl = std::time::Duration::from_millis(ttl_ms);
        Ok(self.write(&bucket, &key, &value, Some(ttl)).await)
    }
}

impl atomics::Host for KvCtx<'_> {
    async fn increment(&mut self, this: Resource<OpenBucket>, key: String, delta: i64) -> Res<i64> {
        let bucket = self.bucket(&this)?;
        if let Err(e) = self.checked_key(&bucket, &key) {
            return Ok(Err(e));
        }
        let outcome = bucket.run(|b| b.increment(&key, delta)).await;
        Ok(match outcome {
            Ok(Ok(n)) => Ok(n),
            Ok(Err(why)) => Err(self.refuse(KvError::Conflict {
                bucket: bucket.name().to_owned(),
                why,
            })),
            Err(e) => Err(self.refuse(e)),
        })
    }

    async fn swap(
        &mut self,
        cas: Resource<CasHandle>,
        value: Vec<u8>,
    ) -> wasmtime::Result<Result<(), atomics::CasError>> {
        let CasHandle { bucket, key, seen } = self.table.delete(cas)?;
        if let Err(e) = bucket.check_value(&value) {
            return Ok(Err(atomics::CasError::StoreError(self.refuse(e))));
        }
        match bucket.run(|b| b.swap(&key, seen.as_deref(), &value)).await {
            Ok(true) => Ok(Ok(())),
            // Changed since: a fresh handle on the value now, for the retry.
            Ok(false) => match bucket.run(|b| b.get(&key)).await {
                Ok(now) => {
                    let fresh = self.table.push(CasHandle {
                        bucket,
                        key,
                        seen: now,
                    })?;
                    Ok(Err(atomics::CasError::CasFailed(fresh)))
                }
                Err(e) => Ok(Err(atomics::CasError::StoreError(self.refuse(e)))),
            },
            Err(e) => Ok(Err(atomics::CasError::StoreError(self.refuse(e)))),
        }
    }
}

impl atomics::HostCas for KvCtx<'_> {
    async fn new(&mut self, bucket: Resource<OpenBucket>, key: String) -> Res<Resource<CasHandle>> {
        let bucket = self.bucket(&bucket)?;
        if let Err(e) = self.checked_key(&bucket, &key) {
            return Ok(Err(e));
        }
        let seen = match bucket.run(|b| b.get(&key)).await {
            Ok(seen) => seen,
            Err(e) => return Ok(Err(self.refuse(e))),
        };
        Ok(Ok(self.table.push(CasHandle { bucket, key, seen })?))
    }

    async fn current(&mut self, this: Resource<CasHandle>) -> Res<Option<Vec<u8>>> {
        Ok(Ok(self.table.get(&this)?.seen.clone()))
    }

    async fn drop(&mut self, this: Resource<CasHandle>) -> wasmtime::Result<()> {
        self.table.delete(this)?;
        Ok(())
    }
}

impl batch::Host for KvCtx<'_> {
    async fn get_many(
        &mut self,
        this: Resource<OpenBucket>,
        keys: Vec<String>,
    ) -> Res<Vec<Option<(String, Vec<u8>)>>> {
        let bucket = self.bucket(&this)?;
        if let Err(e) = self.checked_batch(&bucket, keys.iter()) {
            return Ok(Err(e));
        }
        let values = match bucket.run(|b| b.get_many(&keys)).await {
            Ok(values) => values,
            Err(e) => return Ok(Err(self.refuse(e))),
        };
        Ok(Ok(keys
            .into_iter()
            .zip(values)
            .map(|(k, v)| v.map(|v| (k, v)))
            .collect()))
    }

    async fn set_many(
        &mut self,
        this: Resource<OpenBucket>,
        pairs: Vec<(String, Vec<u8>)>,
    ) -> Res<()> {
        let bucket = self.bucket(&this)?;
        if let Err(e) = self.checked_batch(&bucket, pairs.iter().map(|(k, _)| k)) {
            return Ok(Err(e));
        }
        if let Some(e) = pairs.iter().find_map(|(_, v)| bucket.check_value(v).err()) {
            return Ok(Err(self.refuse(e)));
        }
        Ok(bucket
            .run(|b| b.set_many(&pairs))
            .await
            .map_err(|e| self.refuse(e)))
    }

    async fn delete_many(&mut self, this: Resource<OpenBucket>, keys: Vec<String>) -> Res<()> {
        let bucket = self.bucket(&this)?;
        if let Err(e) = self.checked_batch(&bucket, keys.iter()) {
            return Ok(Err(e));
        }
        Ok(bucket
            .run(|b| b.delete_many(&keys))
            .await
            .map_err(|e| self.refuse(e)))
    }
}

//! Key-value state shared by every instance of a package (and every node
//! of a cluster on a shared backend): `wasi:keyvalue@0.2.0-draft2` with
//! values as serde values (JSON in the store, so `steedos-wasm kv get`
//! shows them), plus the host's TTL (`steedos:kv/ttl`).
//!
//! The app grants the buckets a package may open:
//!
//! ```toml
//! [packages.inventory.grants]
//! kv = ["stock"]
//! ```
//!
//! ```rust,ignore
//! use steedos_sdk::kv::Bucket;
//!
//! let stock = Bucket::open("stock")?;
//! stock.set("apple", &10u32)?;
//! let left: u32 = stock.update("apple", |qty: Option<u32>| match qty {
//!     Some(n) if n > 0 => Ok(n - 1),
//!     _ => Err("sold out"),
//! })??;
//! let orders = stock.increment("orders", 1)?;
//! ```
//!
//! A bucket not granted opens as [`KvError::AccessDenied`]; a value over
//! the bucket's `max_value`, a backend out of reach and the like are
//! [`KvError::Other`] with the host's message (it names the bucket).

use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[allow(missing_docs)]
mod generated {
    wit_bindgen::generate!({
        path: ["../wit/deps/keyvalue-0.2.0-draft2", "../wit/deps/steedos-kv"],
        world: "steedos:kv/kv",
        generate_all,
    });
}

/// The raw bindings: `wasi:keyvalue` (`store`, `atomics`, `batch`) and `steedos:kv/ttl`.
pub mod wit {
    pub use super::generated::steedos::kv::ttl;
    pub use super::generated::wasi::keyvalue::{atomics, batch, store};
}

use wit::{atomics, store};

/// Why a key-value operation failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvError {
    /// The app does not grant this package the bucket.
    AccessDenied,
    /// The host knows no such bucket.
    NoSuchStore,
    /// A value could not be written or read as the type asked for.
    Codec(String),
    /// Anything else, as the host said it.
    Other(String),
}

impl std::fmt::Display for KvError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KvError::AccessDenied => f.write_str("access denied (add the bucket to grants.kv)"),
            KvError::NoSuchStore => f.write_str("no such bucket"),
            KvError::Codec(m) => write!(f, "value: {m}"),
            KvError::Other(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for KvError {}

impl From<store::Error> for KvError {
    fn from(e: store::Error) -> Self {
        match e {
            store::Error::AccessDenied => KvError::AccessDenied,
            store::Error::NoSuchStore => KvError::NoSuchStore,
            store::Error::Other(m) => KvError::Other(m),
        }
    }
}

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, KvError> {
    serde_json::to_vec(value).map_err(|e| KvError::Codec(e.to_string()))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, KvError> {
    serde_json::from_slice(bytes).map_err(|e| KvError::Codec(e.to_string()))
}

/// An open bucket.
pub struct Bucket {
    inner: store::Bucket,
}

impl Bucket {
    /// Opens the bucket `name` (one of the package's `grants.kv`).
    pub fn open(name: &str) -> Result<Bucket, KvError> {
        Ok(Bucket {
            inner: store::open(name)?,
        })
    }

    /// The raw `wasi:keyvalue` bucket, for what these helpers do not cover.
    pub fn raw(&self) -> &store::Bucket {
        &self.inner
    }

    /// The value at `key`, read as a `T`.
    pub fn get<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>, KvError> {
        match self.inner.get(key)? {
            Some(bytes) => decode(&bytes).map(Some),
            None => Ok(None),
        }
    }

    /// Sets `key` to `value`.
    pub fn set<T: Serialize + ?Sized>(&self, key: &str, value: &T) -> Result<(), KvError> {
        Ok(self.inner.set(key, &encode(value)?)?)
    }

    /// Sets `key` to `value` for `ttl`; then it reads as absent.
    pub fn set_with_ttl<T: Serialize + ?Sized>(
        &self,
        key: &str,
        value: &T,
        ttl: Duration,
    ) -> Result<(), KvError> {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        Ok(wit::ttl::set_with_ttl(
            &self.inner,
            key,
            &encode(value)?,
            ms,
        )?)
    }

    /// Removes `key`.
    pub fn delete(&self, key: &str) -> Result<(), KvError> {
        Ok(self.inner.delete(key)?)
    }

    /// Whether `key` has a value.
    pub fn exists(&self, key: &str) -> Result<bool, KvError> {
        Ok(self.inner.exists(key)?)
    }

    /// Every key, page after page.
    pub fn keys(&self) -> Result<Vec<String>, KvError> {
        let mut keys = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let page = self.inner.list_keys(cursor.as_deref())?;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) => cursor = Some(next),
                None => return Ok(keys),
            }
        }
    }

    /// Adds `delta` to the integer at `key` (0 when absent), atomically;
    /// the sum. The value reads back with `get::<i64>`.
    pub fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        Ok(atomics::increment(&self.inner, key, delta)?)
    }

    /// Replaces the value at `key` with `f(current)`, by compare-and-swap:
    /// when another writer got there first, `f` runs again on the newer
    /// value. `f` returning `Err(e)` leaves the value as it is and gives
    /// back `Ok(Err(e))`.
    pub fn update<T, E>(
        &self,
        key: &str,
        mut f: impl FnMut(Option<T>) -> Result<T, E>,
    ) -> Result<Result<T, E>, KvError>
    where
        T: Serialize + DeserializeOwned,
    {
        let mut cas = atomics::Cas::new(&self.inner, key)?;
        loop {
            let current = match cas.current()? {
                Some(bytes) => Some(decode::<T>(&bytes)?),
                None => None,
            };
            let next = match f(current) {
                Ok(next) => next,
                Err(e) => return Ok(Err(e)),
            };
            match atomics::swap(cas, &encode(&next)?) {
                Ok(()) => return Ok(Ok(next)),
                Err(atomics::CasError::CasFailed(fresh)) => cas = fresh,
                Err(atomics::CasError::StoreError(e)) => return Err(e.into()),
            }
        }
    }
}

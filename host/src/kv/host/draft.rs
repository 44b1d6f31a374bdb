//! `wasi:keyvalue@0.2.0-draft` (what wasmCloud and `wasmtime serve -S
//! keyvalue` components import) linked onto the `0.2.0-draft2` host
//! functions beside it: the same buckets, grants, checks and errors. Only
//! the shapes differ: `list-keys` cursors are numbers (each open bucket
//! keeps the last one it gave, so pages are followed in order), and
//! `increment` counts in `u64` (a delta over `s64`'s range is refused; a
//! total below zero, as a draft2 package may leave, is applied and
//! reported as an error saying so, never wrapped).

use wasmtime::component::{Linker, Resource};

use super::bindings::wasi::keyvalue as now;
use super::{HasKv, KvCtx, KvView, OpenBucket, Res};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../wit/keyvalue-0.2.0-draft",
        world: "wasi:keyvalue/imports",
        imports: { default: async | trappable },
        with: {
            "wasi:keyvalue/store.bucket": super::super::OpenBucket,
        },
    });
}

use bindings::wasi::keyvalue::{atomics, batch, store};

/// Adds the draft's `store`, `atomics` and `batch` to `linker`.
pub(super) fn add_to_linker<T: KvView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    bindings::Imports::add_to_linker::<T, HasKv>(linker, |t| t.kv())
}

type Draft<T> = wasmtime::Result<Result<T, store::Error>>;

fn error(e: now::store::Error) -> store::Error {
    match e {
        now::store::Error::NoSuchStore => store::Error::NoSuchStore,
        now::store::Error::AccessDenied => store::Error::AccessDenied,
        now::store::Error::Other(why) => store::Error::Other(why),
    }
}

fn draft<T>(answer: Res<T>) -> Draft<T> {
    answer.map(|r| r.map_err(error))
}

/// Another handle on the same bucket, for a call that takes one by value.
fn again(this: &Resource<OpenBucket>) -> Resource<OpenBucket> {
    Resource::new_borrow(this.rep())
}

impl KvCtx<'_> {
    fn other(&self, this: &Resource<OpenBucket>, why: &str) -> wasmtime::Result<store::Error> {
        let bucket = self.bucket(this)?;
        Ok(store::Error::Other(format!(
            "package `{}`: bucket `{}`: {why}",
            self.package,
            bucket.name()
        )))
    }
}

impl store::Host for KvCtx<'_> {
    async fn open(&mut self, identifier: String) -> Draft<Resource<OpenBucket>> {
        draft(now::store::Host::open(self, identifier).await)
    }
}

impl store::HostBucket for KvCtx<'_> {
    async fn get(&mut self, this: Resource<OpenBucket>, key: String) -> Draft<Option<Vec<u8>>> {
        draft(now::store::HostBucket::get(self, this, key).await)
    }

    async fn set(&mut self, this: Resource<OpenBucket>, key: String, value: Vec<u8>) -> Draft<()> {
        draft(now::store::HostBucket::set(self, this, key, value).await)
    }

    async fn delete(&mut self, this: Resource<OpenBucket>, key: String) -> Draft<()> {
        draft(now::store::HostBucket::delete(self, this, key).await)
    }

    async fn exists(&mut self, this: Resource<OpenBucket>, key: String) -> Draft<bool> {
        draft(now::store::HostBucket::exists(self, this, key).await)
    }

    async fn list_keys(
        &mut self,
        this: Resource<OpenBucket>,
        cursor: Option<u64>,
    ) -> Draft<store::KeyResponse> {
        let from = match cursor {
            None => None,
            Some(token) => match &self.table.get(&this)?.draft_cursor {
                Some((last, key)) if *last == token => Some(key.clone()),
                _ => {
                    let why = format!(
                        "cursor {token} is not the last one this bucket gave (follow the pages in order)"
                    );
                    return Ok(Err(self.other(&this, &why)?));
                }
            },
        };
        let page = match now::store::HostBucket::list_keys(self, again(&this), from).await? {
            Ok(page) => page,
            Err(e) => return Ok(Err(error(e))),
        };
        let open = self.table.get_mut(&this)?;
        let cursor = page.cursor.map(|key| {
            let token = open
                .draft_cursor
                .as_ref()
                .map_or(1, |(t, _)| t.wrapping_add(1));
            open.draft_cursor = Some((token, key));
            token
        });
        Ok(Ok(store::KeyResponse {
            keys: page.keys,
            cursor,
        }))
    }

    async fn drop(&mut self, this: Resource<OpenBucket>) -> wasmtime::Result<()> {
        now::store::HostBucket::drop(self, this).await
    }
}

impl atomics::Host for KvCtx<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<OpenBucket>,
        key: String,
        delta: u64,
    ) -> Draft<u64> {
        let Ok(delta) = i64::try_from(delta) else {
            let why = format!("a delta of {delta} is over the largest integer kept (2^63 - 1)");
            return Ok(Err(self.other(&bucket, &why)?));
        };
        let total = match now::atomics::Host::increment(self, again(&bucket), key, delta).await? {
            Ok(total) => total,
            Err(e) => return Ok(Err(error(e))),
        };
        match u64::try_from(total) {
            Ok(total) => Ok(Ok(total)),
            Err(_) => {
                let why = format!(
                    "the increment was applied, but the total {total} is negative, which 0.2.0-draft's u64 cannot say"
                );
                Ok(Err(self.other(&bucket, &why)?))
            }
        }
    }
}

impl batch::Host for KvCtx<'_> {
    async fn get_many(
        &mut self,
        bucket: Resource<OpenBucket>,
        keys: Vec<String>,
    ) -> Draft<Vec<Option<(String, Vec<u8>)>>> {
        draft(now::batch::Host::get_many(self, bucket, keys).await)
    }

    async fn set_many(
        &mut self,
        bucket: Resource<OpenBucket>,
        key_values: Vec<(String, Vec<u8>)>,
    ) -> Draft<()> {
        draft(now::batch::Host::set_many(self, bucket, key_values).await)
    }

    async fn delete_many(&mut self, bucket: Resource<OpenBucket>, keys: Vec<String>) -> Draft<()> {
        draft(now::batch::Host::delete_many(self, bucket, keys).await)
    }
}

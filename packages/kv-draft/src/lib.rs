//! `kv-draft`: `wasi:keyvalue@0.2.0-draft` from a real guest, for the
//! host's test that components built for wasmCloud or `wasmtime serve -S
//! keyvalue` reach the same buckets.

steedos_sdk::generate!({
    path: ["../../wit", "../../wit/keyvalue-0.2.0-draft", "wit"],
    world: "test:kv-draft/kv-draft",
});

use exports::test::kv_draft::store::Guest;
use wasi::keyvalue0_2_0_draft::{atomics, batch, store};

struct Draft;

fn text(e: store::Error) -> String {
    match e {
        store::Error::NoSuchStore => "no-such-store".into(),
        store::Error::AccessDenied => "access-denied".into(),
        store::Error::Other(m) => m,
    }
}

fn open(bucket: &str) -> Result<store::Bucket, String> {
    store::open(bucket).map_err(text)
}

fn as_text(bytes: Vec<u8>) -> String {
    String::from_utf8_lossy(&bytes).into_owned()
}

impl Guest for Draft {
    fn set(bucket: String, key: String, value: String) -> Result<(), String> {
        open(&bucket)?.set(&key, value.as_bytes()).map_err(text)
    }

    fn get(bucket: String, key: String) -> Result<Option<String>, String> {
        Ok(open(&bucket)?.get(&key).map_err(text)?.map(as_text))
    }

    fn delete(bucket: String, key: String) -> Result<(), String> {
        open(&bucket)?.delete(&key).map_err(text)
    }

    fn exists(bucket: String, key: String) -> Result<bool, String> {
        open(&bucket)?.exists(&key).map_err(text)
    }

    fn keys(bucket: String) -> Result<(Vec<String>, u32), String> {
        let bucket = open(&bucket)?;
        let (mut keys, mut pages, mut cursor) = (Vec::new(), 0, None);
        loop {
            let page = bucket.list_keys(cursor).map_err(text)?;
            pages += 1;
            keys.extend(page.keys);
            match page.cursor {
                Some(next) if pages < 1000 => cursor = Some(next),
                _ => return Ok((keys, pages)),
            }
        }
    }

    fn bad_cursor(bucket: String) -> Result<(), String> {
        open(&bucket)?.list_keys(Some(12345)).map(drop).map_err(text)
    }

    fn increment(bucket: String, key: String, delta: u64) -> Result<u64, String> {
        atomics::increment(&open(&bucket)?, &key, delta).map_err(text)
    }

    fn set_many(bucket: String, pairs: Vec<(String, String)>) -> Result<(), String> {
        let pairs: Vec<(String, Vec<u8>)> = pairs
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        batch::set_many(&open(&bucket)?, &pairs).map_err(text)
    }

    fn get_many(
        bucket: String,
        keys: Vec<String>,
    ) -> Result<Vec<Option<(String, String)>>, String> {
        let found = batch::get_many(&open(&bucket)?, &keys).map_err(text)?;
        Ok(found
            .into_iter()
            .map(|p| p.map(|(k, v)| (k, as_text(v))))
            .collect())
    }

    fn delete_many(bucket: String, keys: Vec<String>) -> Result<(), String> {
        batch::delete_many(&open(&bucket)?, &keys).map_err(text)
    }
}

export!(Draft);

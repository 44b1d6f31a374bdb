//! `kv-probe`: drives `wasi:keyvalue` and `steedos:kv/ttl` from a real
//! guest, one operation per action, for the host's key-value tests.

steedos_sdk::generate!({
    path: ["../../wit", "wit"],
    world: "test:kv-probe/kv-probe",
});

use exports::test::kv_probe::store::{Guest, Page};
use steedos::kv::ttl;
use wasi::keyvalue::{atomics, batch, store};

struct Probe;

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

fn as_int(bytes: Option<Vec<u8>>) -> Result<i64, String> {
    match bytes {
        None => Ok(0),
        Some(b) => as_text(b).parse().map_err(|_| "not an integer".to_string()),
    }
}

impl Guest for Probe {
    fn set(bucket: String, key: String, value: String) -> Result<(), String> {
        open(&bucket)?.set(&key, value.as_bytes()).map_err(text)
    }

    fn set_ttl(bucket: String, key: String, value: String, ttl_ms: u64) -> Result<(), String> {
        ttl::set_with_ttl(&open(&bucket)?, &key, value.as_bytes(), ttl_ms).map_err(text)
    }

    fn set_size(bucket: String, key: String, size: u32) -> Result<(), String> {
        open(&bucket)?
            .set(&key, &vec![b'x'; size as usize])
            .map_err(text)
    }

    fn get(bucket: String, key: String) -> Result<Option<String>, String> {
        Ok(open(&bucket)?.get(&key).map_err(text)?.map(as_text))
    }

    fn get_each(bucket: String, first: u32, count: u32, keys: u32) -> Result<u32, String> {
        let bucket = open(&bucket)?;
        let mut found = 0;
        for n in 0..count {
            let key = format!("k{}", first.wrapping_add(n) % keys.max(1));
            if bucket.get(&key).map_err(text)?.is_some() {
                found += 1;
            }
        }
        Ok(found)
    }

    fn delete(bucket: String, key: String) -> Result<(), String> {
        open(&bucket)?.delete(&key).map_err(text)
    }

    fn exists(bucket: String, key: String) -> Result<bool, String> {
        open(&bucket)?.exists(&key).map_err(text)
    }

    fn keys(bucket: String, cursor: Option<String>) -> Result<Page, String> {
        let page = open(&bucket)?.list_keys(cursor.as_deref()).map_err(text)?;
        Ok(Page {
            keys: page.keys,
            cursor: page.cursor,
        })
    }

    fn open(bucket: String) -> String {
        match store::open(&bucket) {
            Ok(_) => "ok".into(),
            Err(e) => text(e),
        }
    }

    fn increment(bucket: String, key: String, delta: i64) -> Result<i64, String> {
        atomics::increment(&open(&bucket)?, &key, delta).map_err(text)
    }

    fn cas_add(bucket: String, key: String, delta: i64) -> Result<u32, String> {
        let bucket = open(&bucket)?;
        let mut cas = atomics::Cas::new(&bucket, &key).map_err(text)?;
        let mut conflicts = 0;
        loop {
            let now = as_int(cas.current().map_err(text)?)?;
            match atomics::swap(cas, (now + delta).to_string().as_bytes()) {
                Ok(()) => return Ok(conflicts),
                Err(atomics::CasError::CasFailed(fresh)) => {
                    conflicts += 1;
                    cas = fresh;
                }
                Err(atomics::CasError::StoreError(e)) => return Err(text(e)),
            }
        }
    }

    fn cas_stale(bucket: String, key: String) -> Result<Vec<String>, String> {
        let bucket = open(&bucket)?;
        let mut said = Vec::new();
        let cas = atomics::Cas::new(&bucket, &key).map_err(text)?;
        said.push(format!(
            "saw {:?}",
            cas.current().map_err(text)?.map(as_text)
        ));
        bucket.set(&key, b"changed").map_err(text)?;
        match atomics::swap(cas, b"mine") {
            Ok(()) => said.push("swapped".into()),
            Err(atomics::CasError::CasFailed(fresh)) => {
                said.push(format!(
                    "conflict, now {:?}",
                    fresh.current().map_err(text)?.map(as_text)
                ));
                match atomics::swap(fresh, b"mine") {
                    Ok(()) => said.push("retry swapped".into()),
                    Err(_) => said.push("retry failed".into()),
                }
            }
            Err(atomics::CasError::StoreError(e)) => said.push(text(e)),
        }
        Ok(said)
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

    fn price(sku: String, region: String) -> Result<i64, String> {
        let calls = atomics::increment(&open("default")?, "calls", 1).map_err(text)?;
        let _ = (sku, region);
        Ok(calls)
    }
}

export!(Probe);

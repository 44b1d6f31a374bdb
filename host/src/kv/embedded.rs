//! The embedded backend: one redb file per bucket in the app's
//! `.steedos/kv/` folder (the host's own state, which no grant reaches).
//! Every write commits with redb's immediate durability (fsync) before its
//! future resolves; writes, scans and multi-key reads run on tokio's
//! blocking pool so a disk sync or a long scan never holds a runtime
//! thread. A one-key `get` is read in place: a redb read takes no lock a
//! writer holds (MVCC) and is served from redb's page cache, so the hop to
//! the pool would cost more than the read. A value is stored behind an 8-byte
//! little-endian expiry (milliseconds since the epoch, 0 for none); an
//! expired value reads as absent and is overwritten or dropped by writes.

use std::ops::Bound;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};

use super::{Answer, Backend, BoxFuture, Page, now_ms};

const PAIRS: TableDefinition<&str, &[u8]> = TableDefinition::new("pairs");

/// A bucket in a redb file.
pub(super) struct Embedded {
    db: Arc<Database>,
}

fn cause(e: impl std::fmt::Display) -> String {
    format!("embedded store: {e}")
}

/// `value` behind its expiry.
fn stored(value: &[u8], ttl: Option<Duration>) -> Vec<u8> {
    let expires = ttl.map_or(0, |t| {
        now_ms()
            .saturating_add(u64::try_from(t.as_millis()).unwrap_or(u64::MAX))
            .max(1)
    });
    let mut out = Vec::with_capacity(8 + value.len());
    out.extend_from_slice(&expires.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// The value in `raw`, unless it expired (or is not ours).
fn live(raw: &[u8], now: u64) -> Option<&[u8]> {
    let (head, value) = raw.split_at_checked(8)?;
    let expires = u64::from_le_bytes(head.try_into().ok()?);
    (expires == 0 || expires > now).then_some(value)
}

impl Embedded {
    /// Opens (or creates) the file at `path`, its folder made when missing.
    pub(super) async fn open(path: PathBuf) -> Result<Embedded, String> {
        let db = tokio::task::spawn_blocking(move || -> Result<Database, String> {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot make {}: {e}", dir.display()))?;
            }
            let db = Database::create(&path).map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => format!(
                    "{} is open in another process (is the app running? stop it, or use its backend directly)",
                    path.display()
                ),
                e => format!("cannot open {}: {e}", path.display()),
            })?;
            let txn = db.begin_write().map_err(cause)?;
            txn.open_table(PAIRS).map_err(cause)?;
            txn.commit().map_err(cause)?;
            Ok(db)
        })
        .await
        .map_err(cause)??;
        Ok(Embedded { db: Arc::new(db) })
    }

    /// Runs `f` on the blocking pool with the database.
    fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, String> + Send + 'static,
    ) -> BoxFuture<'static, Answer<T>> {
        let db = self.db.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || f(&db))
                .await
                .map_err(cause)?
        })
    }

    /// Runs `f` in one write transaction, committed durably when it returns `Ok`.
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut redb::Table<&str, &[u8]>) -> Result<T, String> + Send + 'static,
    ) -> BoxFuture<'static, Answer<T>> {
        self.blocking(move |db| {
            let txn = db.begin_write().map_err(cause)?;
            let out = {
                let mut table = txn.open_table(PAIRS).map_err(cause)?;
                f(&mut table)?
            };
            txn.commit().map_err(cause)?;
            Ok(out)
        })
    }

    /// Runs `f` in one read transaction.
    fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&redb::ReadOnlyTable<&str, &[u8]>) -> Result<T, String> + Send + 'static,
    ) -> BoxFuture<'static, Answer<T>> {
        self.blocking(move |db| {
            let txn = db.begin_read().map_err(cause)?;
            let table = txn.open_table(PAIRS).map_err(cause)?;
            f(&table)
        })
    }
}

fn current(
    table: &impl ReadableTable<&'static str, &'static [u8]>,
    key: &str,
    now: u64,
) -> Result<Option<Vec<u8>>, String> {
    let found = table.get(key).map_err(cause)?;
    Ok(found.and_then(|v| live(v.value(), now).map(<[u8]>::to_vec)))
}

impl Backend for Embedded {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Answer<Option<Vec<u8>>>> {
        Box::pin(async move {
            let txn = self.db.begin_read().map_err(cause)?;
            let table = txn.open_table(PAIRS).map_err(cause)?;
            current(&table, key, now_ms())
        })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Answer<()>> {
        let (key, value) = (key.to_owned(), stored(value, ttl));
        self.write(move |t| {
            t.insert(key.as_str(), value.as_slice())
                .map(drop)
                .map_err(cause)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Answer<()>> {
        let key = key.to_owned();
        self.write(move |t| t.remove(key.as_str()).map(drop).map_err(cause))
    }

    fn list<'a>(&'a self, cursor: Option<&'a str>, limit: usize) -> BoxFuture<'a, Answer<Page>> {
        let cursor = cursor.map(str::to_owned);
        self.read(move |t| {
            let now = now_ms();
            let from = match &cursor {
                Some(c) => Bound::Excluded(c.as_str()),
                None => Bound::Unbounded,
            };
            let mut keys = Vec::new();
            for entry in t.range::<&str>((from, Bound::Unbounded)).map_err(cause)? {
                let (k, v) = entry.map_err(cause)?;
                if live(v.value(), now).is_none() {
                    continue;
                }
                if keys.len() == limit {
                    let next = keys.last().cloned();
                    return Ok((keys, next));
                }
                keys.push(k.value().to_owned());
            }
            Ok((keys, None))
        })
    }

    fn increment<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
    ) -> BoxFuture<'a, Answer<Result<i64, String>>> {
        let key = key.to_owned();
        self.write(move |t| {
            let old = current(t, &key, now_ms())?;
            let old = match old.as_deref().map(parse_integer) {
                None => 0,
                Some(Some(n)) => n,
                Some(None) => {
                    return Ok(Err(format!(
                        "the value at `{key}` is not a decimal integer"
                    )));
                }
            };
            let Some(new) = old.checked_add(delta) else {
                return Ok(Err(format!("`{key}` would overflow a 64-bit integer")));
            };
            let value = stored(new.to_string().as_bytes(), None);
            t.insert(key.as_str(), value.as_slice()).map_err(cause)?;
            Ok(Ok(new))
        })
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        value: &'a [u8],
    ) -> BoxFuture<'a, Answer<bool>> {
        let (key, expected, value) = (
            key.to_owned(),
            expected.map(<[u8]>::to_vec),
            stored(value, None),
        );
        self.write(move |t| {
            if current(t, &key, now_ms())? != expected {
                return Ok(false);
            }
            t.insert(key.as_str(), value.as_slice()).map_err(cause)?;
            Ok(true)
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Answer<Vec<Option<Vec<u8>>>>> {
        let keys = keys.to_vec();
        self.read(move |t| {
            let now = now_ms();
            keys.iter().map(|k| current(t, k, now)).collect()
        })
    }

    fn set_many<'a>(&'a self, pairs: &'a [(String, Vec<u8>)]) -> BoxFuture<'a, Answer<()>> {
        let pairs: Vec<(String, Vec<u8>)> = pairs
            .iter()
            .map(|(k, v)| (k.clone(), stored(v, None)))
            .collect();
        self.write(move |t| {
            for (k, v) in &pairs {
                t.insert(k.as_str(), v.as_slice()).map_err(cause)?;
            }
            Ok(())
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Answer<()>> {
        let keys = keys.to_vec();
        self.write(move |t| {
            for k in &keys {
                t.remove(k.as_str()).map_err(cause)?;
            }
            Ok(())
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Answer<u64>> {
        let prefix = prefix.to_owned();
        self.write(move |t| {
            let mut doomed = Vec::new();
            for entry in t.range::<&str>(prefix.as_str()..).map_err(cause)? {
                let (k, _) = entry.map_err(cause)?;
                if !k.value().starts_with(&prefix) {
                    break;
                }
                doomed.push(k.value().to_owned());
            }
            for k in &doomed {
                t.remove(k.as_str()).map_err(cause)?;
            }
            Ok(doomed.len() as u64)
        })
    }

    fn size(&self) -> BoxFuture<'_, Answer<(u64, u64)>> {
        self.read(|t| {
            let mut bytes = 0u64;
            for entry in t.iter().map_err(cause)? {
                let (k, v) = entry.map_err(cause)?;
                bytes += (k.value().len() + v.value().len().saturating_sub(8)) as u64;
            }
            Ok((t.len().map_err(cause)?, bytes))
        })
    }
}

/// A decimal integer as `increment` keeps it.
pub(super) fn parse_integer(bytes: &[u8]) -> Option<i64> {
    std::str::from_utf8(bytes).ok()?.trim().parse().ok()
}

//! The Redis backend: a bucket's pairs as plain Redis strings under
//! `steedos:<app>:<bucket>:`, through one reconnecting connection
//! (redis' `ConnectionManager`, the crate the Redis transporter uses). TTLs
//! are Redis's own (`SET .. PX`), `increment` is `INCRBY`, a swap and the
//! batches are Lua scripts run atomically by the server, and listing is
//! `SCAN` with its cursor. How durable an acknowledged write is follows the
//! server's `appendfsync`.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, Value};

use super::{Answer, Backend, BoxFuture, Page};

/// How long a connection attempt or an answer may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Sets KEYS[1] to ARGV[2] when it holds ARGV[1] (ARGV[3] = "1") or is
/// absent (ARGV[3] = "0").
const SWAP: &str = r"
local v = redis.call('GET', KEYS[1])
if ARGV[3] == '1' then
  if v ~= ARGV[1] then return 0 end
else
  if v then return 0 end
end
redis.call('SET', KEYS[1], ARGV[2])
return 1";

/// A bucket on a Redis server.
pub(super) struct RedisBucket {
    conn: ConnectionManager,
    /// `steedos:<app>:<bucket>:`, in front of every key.
    prefix: String,
}

fn cause(e: impl std::fmt::Display) -> String {
    format!("redis: {e}")
}

/// `text` with Redis glob characters escaped, for `SCAN MATCH`.
fn glob_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

impl RedisBucket {
    /// Connects to `url`; a server that does not answer within 5 s is an error.
    pub(super) async fn connect(url: &str, prefix: String) -> Result<RedisBucket, String> {
        let client = Client::open(url).map_err(cause)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT)
            .set_number_of_retries(1);
        let mut conn =
            tokio::time::timeout(TIMEOUT, ConnectionManager::new_with_config(client, config))
                .await
                .map_err(|_| format!("redis: no answer within {TIMEOUT:?}"))?
                .map_err(cause)?;
        redis::cmd("PING")
            .query_async::<()>(&mut conn)
            .await
            .map_err(cause)?;
        Ok(RedisBucket { conn, prefix })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// Every full key under `self.prefix` + `prefix`, from a full SCAN.
    async fn scan_all(&self, prefix: &str) -> Answer<Vec<String>> {
        let pattern = format!("{}*", glob_escape(&self.key(prefix)));
        let mut conn = self.conn.clone();
        let mut cursor = 0u64;
        let mut keys = Vec::new();
        loop {
            let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1000)
                .query_async(&mut conn)
                .await
                .map_err(cause)?;
            keys.extend(page);
            if next == 0 {
                return Ok(keys);
            }
            cursor = next;
        }
    }
}

impl Backend for RedisBucket {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Answer<Option<Vec<u8>>>> {
        Box::pin(async move { self.conn.clone().get(self.key(key)).await.map_err(cause) })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Answer<()>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(self.key(key)).arg(value);
            if let Some(ttl) = ttl {
                cmd.arg("PX")
                    .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
            }
            cmd.query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(cause)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Answer<()>> {
        Box::pin(async move {
            self.conn
                .clone()
                .del::<_, ()>(self.key(key))
                .await
                .map_err(cause)
        })
    }

    fn list<'a>(&'a self, cursor: Option<&'a str>, limit: usize) -> BoxFuture<'a, Answer<Page>> {
        Box::pin(async move {
            let mut at: u64 = match cursor {
                None => 0,
                Some(c) => c
                    .parse()
                    .map_err(|_| format!("{c:?} is not a cursor this bucket gave"))?,
            };
            let pattern = format!("{}*", glob_escape(&self.prefix));
            let mut conn = self.conn.clone();
            let mut keys = Vec::new();
            // SCAN may answer empty pages: go on until some keys or the end.
            loop {
                let (next, page): (u64, Vec<String>) = redis::cmd("SCAN")
                    .arg(at)
                    .arg("MATCH")
                    .arg(&pattern)
                    .arg("COUNT")
                    .arg(limit.max(10))
                    .query_async(&mut conn)
                    .await
                    .map_err(cause)?;
                keys.extend(
                    page.into_iter()
                        .filter_map(|k| k.strip_prefix(&self.prefix).map(str::to_owned)),
                );
                at = next;
                if next == 0 || !keys.is_empty() {
                    break;
                }
            }
            Ok((keys, (at != 0).then(|| at.to_string())))
        })
    }

    fn increment<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
    ) -> BoxFuture<'a, Answer<Result<i64, String>>> {
        Box::pin(async move {
            match self
                .conn
                .clone()
                .incr::<_, _, i64>(self.key(key), delta)
                .await
            {
                Ok(n) => Ok(Ok(n)),
                Err(e) if e.kind() == redis::ErrorKind::ResponseError => Ok(Err(format!(
                    "the value at `{key}` is not a decimal integer, or would overflow"
                ))),
                Err(e) => Err(cause(e)),
            }
        })
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        value: &'a [u8],
    ) -> BoxFuture<'a, Answer<bool>> {
        Box::pin(async move {
            let done: i64 = redis::cmd("EVAL")
                .arg(SWAP)
                .arg(1)
                .arg(self.key(key))
                .arg(expected.unwrap_or_default())
                .arg(value)
                .arg(if expected.is_some() { "1" } else { "0" })
                .query_async(&mut self.conn.clone())
                .await
                .map_err(cause)?;
            Ok(done == 1)
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Answer<Vec<Option<Vec<u8>>>>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(Vec::new());
            }
            let full: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
            redis::cmd("MGET")
                .arg(full)
                .query_async(&mut self.conn.clone())
                .await
                .map_err(cause)
        })
    }

    fn set_many<'a>(&'a self, pairs: &'a [(String, Vec<u8>)]) -> BoxFuture<'a, Answer<()>> {
        Box::pin(async move {
            if pairs.is_empty() {
                return Ok(());
            }
            let mut cmd = redis::cmd("MSET");
            for (k, v) in pairs {
                cmd.arg(self.key(k)).arg(v.as_slice());
            }
            cmd.query_async::<()>(&mut self.conn.clone())
                .await
                .map_err(cause)
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Answer<()>> {
        Box::pin(async move {
            if keys.is_empty() {
                return Ok(());
            }
            let full: Vec<String> = keys.iter().map(|k| self.key(k)).collect();
            self.conn.clone().del::<_, ()>(full).await.map_err(cause)
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Answer<u64>> {
        Box::pin(async move {
            let keys = self.scan_all(prefix).await?;
            let mut gone = 0;
            for chunk in keys.chunks(500) {
                gone += self
                    .conn
                    .clone()
                    .del::<_, u64>(chunk)
                    .await
                    .map_err(cause)?;
            }
            Ok(gone)
        })
    }

    fn size(&self) -> BoxFuture<'_, Answer<(u64, u64)>> {
        Box::pin(async move {
            let keys = self.scan_all("").await?;
            let mut bytes = 0u64;
            let mut conn = self.conn.clone();
            for chunk in keys.chunks(500) {
                let mut pipe = redis::pipe();
                for k in chunk {
                    pipe.cmd("STRLEN").arg(k);
                }
                let lens: Vec<Value> = pipe.query_async(&mut conn).await.map_err(cause)?;
                for (k, v) in chunk.iter().zip(lens) {
                    let len = if let Value::Int(n) = v {
                        u64::try_from(n).unwrap_or(0)
                    } else {
                        0
                    };
                    bytes += len + (k.len() - self.prefix.len()) as u64;
                }
            }
            Ok((keys.len() as u64, bytes))
        })
    }
}

//! The NATS JetStream backend: a bucket is a JetStream key-value bucket
//! (the stream `KV_<name>`, subjects `$KV.<name>.<key>`, one value kept
//! per key), reached through async-nats' JetStream API, so that every
//! host on the same NATS server sees the same pairs.
//!
//! # Keys
//! A NATS subject holds only some bytes. A key made of `A-Z a-z 0-9 - _ /
//! = .` (not starting with `=` or `.`, not ending with `.`, no `..`) is its
//! own subject token; any other key is stored as `=` followed by its
//! base64url (no padding), and read back the same way, so every key the
//! host takes (1 to 1,024 bytes, no NUL) round-trips.
//!
//! # Atomics
//! `increment` and compare-and-swap read the key's revision (its last
//! message's sequence) and write with `Nats-Expected-Last-Subject-Sequence`:
//! a write that lost a race is refused by the server, never lost; an
//! increment then reads again and retries, a swap reports the conflict.
//!
//! # TTL
//! Every write with a TTL carries the deadline in a `Steedos-Expires`
//! header (milliseconds since the epoch): a value past it reads as absent
//! on any server. A server with per-message TTLs (2.11 and later) also
//! gets `Nats-TTL` (whole seconds, rounded up) and drops the value itself.
//!
//! # Batches
//! On a server with atomic batch publish (2.12 and later, ADR-50) a
//! bucket's stream allows it (`allow_atomic`, set on a bucket made
//! before), and `set-many` and `delete-many` are one batch: every message
//! carries `Nats-Batch-Id` and `Nats-Batch-Sequence`, the last
//! `Nats-Batch-Commit`, and the server stores all of them at the commit or
//! none (a batch not committed, as when one message cannot be sent, is
//! abandoned by the server). Such a batch holds at most
//! [`MAX_ATOMIC_BATCH`] keys, the server's limit; a larger one is refused
//! whole. An older server has no transaction: a batch is written key by
//! key (a warning says so when the bucket opens) and an error mid-way says
//! how many keys were written.

use std::collections::HashMap;
use std::time::Duration;

use async_nats::header::{
    NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, NATS_MARKER_REASON, NATS_MESSAGE_TTL,
};
use async_nats::jetstream::stream::{self, DirectGetErrorKind, DiscardPolicy, Stream};
use async_nats::jetstream::{self, consumer, context::PublishErrorKind};
use async_nats::{Client, ConnectOptions, HeaderMap};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{Answer, Backend, BoxFuture, Page, now_ms};
use crate::manifest::{ClusterAuth, ClusterSettings, Secret, redact};

/// How long a connection attempt or a server's answer may take: less than
/// a package's default call timeout (5 s), so the package hears why.
const TIMEOUT: Duration = Duration::from_secs(3);

/// The header that holds a value's deadline (ms since the epoch).
const EXPIRES: &str = "Steedos-Expires";

/// The header JetStream key-value marks deletes with.
const OPERATION: &str = "KV-Operation";

/// The most messages a server takes in one atomic batch (its default limit).
pub(super) const MAX_ATOMIC_BATCH: usize = 1000;

/// The headers of an atomic batch (ADR-50).
const BATCH_ID: &str = "Nats-Batch-Id";
const BATCH_SEQUENCE: &str = "Nats-Batch-Sequence";
const BATCH_COMMIT: &str = "Nats-Batch-Commit";

/// How many times an increment reads and writes again after losing a race.
const INCREMENT_TRIES: usize = 10_000;

/// A bucket on a JetStream server.
pub(super) struct JetStreamBucket {
    client: Client,
    js: jetstream::Context,
    stream: Stream,
    /// `KV_<name>`.
    stream_name: String,
    /// `$KV.<name>.`, in front of every key's subject.
    prefix: String,
    /// Whether the server drops values at their TTL itself (2.11 and later).
    server_ttl: bool,
    /// Whether batches are atomic (2.12 and later, the stream allowing it).
    atomic: bool,
}

fn cause(e: impl std::fmt::Display) -> String {
    format!("nats jetstream: {e}")
}

/// A key as a subject token (see the module's docs).
pub(super) fn encode_key(key: &str) -> String {
    let plain = !key.is_empty()
        && !key.starts_with(['=', '.'])
        && !key.ends_with('.')
        && !key.contains("..")
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'/' | b'=' | b'.'));
    match plain {
        true => key.to_owned(),
        false => format!("={}", URL_SAFE_NO_PAD.encode(key)),
    }
}

/// A subject token back as the key it encodes; `None` when it is not one
/// of ours.
pub(super) fn decode_key(token: &str) -> Option<String> {
    match token.strip_prefix('=') {
        None => Some(token.to_owned()),
        Some(encoded) => String::from_utf8(URL_SAFE_NO_PAD.decode(encoded).ok()?).ok(),
    }
}

/// A secret's value from its source; the error names the source only.
fn secret(secret: &Secret) -> Result<String, String> {
    let (value, source) = match secret {
        Secret::Env(name) => (std::env::var(name).ok(), format!("${name}")),
        Secret::File(path) => (
            std::fs::read_to_string(path).ok(),
            path.display().to_string(),
        ),
    };
    match value.map(|v| v.trim().to_owned()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(format!("the NATS secret from {source} is missing or empty")),
    }
}

/// The cluster's credentials and TLS on `options`, for a bucket on the
/// cluster's own server.
async fn with_cluster(
    mut options: ConnectOptions,
    cluster: &ClusterSettings,
) -> Result<ConnectOptions, String> {
    options = match &cluster.auth {
        ClusterAuth::None => options,
        ClusterAuth::Token(s) => options.token(secret(s)?),
        ClusterAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), secret(password)?)
        }
        ClusterAuth::NKey(s) => options.nkey(secret(s)?),
        ClusterAuth::Credentials(path) => options.credentials_file(path).await.map_err(|e| {
            format!(
                "the credentials file {} cannot be used: {e}",
                path.display()
            )
        })?,
    };
    let tls = &cluster.tls;
    if let Some(ca) = &tls.ca {
        options = options.add_root_certificates(ca.clone());
    }
    if let Some((cert, key)) = &tls.client {
        options = options.add_client_certificate(cert.clone(), key.clone());
    }
    if tls.required || tls.ca.is_some() || tls.client.is_some() {
        options = options.require_tls(true);
    }
    Ok(options)
}

/// Whether a server of `version` ("2.11.0") is at least `major.minor`.
fn at_least(version: &str, major: u32, minor: u32) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (major, minor)
}

/// Whether a server of `version` keeps per-message TTLs.
fn has_message_ttls(version: &str) -> bool {
    at_least(version, 2, 11)
}

/// Whether a server of `version` takes atomic batches.
fn has_atomic_batches(version: &str) -> bool {
    at_least(version, 2, 12)
}

/// A message's value, unless it marks a delete or is past its deadline.
fn live(headers: Option<&HeaderMap>, payload: &Bytes, now: u64) -> Option<Vec<u8>> {
    if let Some(headers) = headers {
        if headers.get(OPERATION).is_some() || headers.get(NATS_MARKER_REASON).is_some() {
            return None;
        }
        let expires = headers
            .get(EXPIRES)
            .and_then(|v| v.as_str().parse::<u64>().ok());
        if expires.is_some_and(|at| at <= now) {
            return None;
        }
    }
    Some(payload.to_vec())
}

/// The app's connections to NATS servers, one a URL, shared by its buckets.
#[derive(Default)]
pub(super) struct Connections(tokio::sync::Mutex<HashMap<String, Client>>);

impl Connections {
    /// The connection to `url` (with `cluster`'s credentials when it is
    /// the cluster's server), made now if there was none; a connection
    /// made once reconnects by itself.
    async fn client(&self, url: &str, cluster: Option<&ClusterSettings>) -> Answer<Client> {
        let mut clients = self.0.lock().await;
        if let Some(client) = clients.get(url) {
            return Ok(client.clone());
        }
        let mut options = ConnectOptions::new()
            .name("steedos-wasm kv")
            .connection_timeout(TIMEOUT)
            .request_timeout(Some(TIMEOUT));
        if let Some(cluster) = cluster {
            options = with_cluster(options, cluster).await?;
        }
        let client = tokio::time::timeout(TIMEOUT, options.connect(url))
            .await
            .map_err(|_| format!("nats: no answer within {TIMEOUT:?}"))?
            .map_err(|e| cause(e.to_string().replace(url, &redact(url))))?;
        clients.insert(url.to_owned(), client.clone());
        Ok(client)
    }
}

impl JetStreamBucket {
    /// Opens the bucket `name` on `url` through `connections`, made when missing.
    pub(super) async fn connect(
        connections: &Connections,
        url: &str,
        cluster: Option<&ClusterSettings>,
        name: &str,
        max_value: u64,
    ) -> Result<JetStreamBucket, String> {
        let client = connections.client(url, cluster).await?;
        let mut js = jetstream::new(client.clone());
        js.set_timeout(TIMEOUT);
        let stream_name = format!("KV_{name}");
        let stream = match js.get_stream(&stream_name).await {
            Ok(stream) => stream,
            Err(_) => Self::create(&js, &client, name, max_value).await?,
        };
        let (stream, atomic) = Self::allow_atomic(&js, &client, stream, name).await;
        let server_ttl = stream.cached_info().config.allow_message_ttl;
        Ok(JetStreamBucket {
            client,
            js,
            stream,
            stream_name,
            prefix: format!("$KV.{name}."),
            server_ttl,
            atomic,
        })
    }

    /// The stream allowing atomic batches when the server has them (a
    /// bucket made before is updated); whether batches are atomic.
    async fn allow_atomic(
        js: &jetstream::Context,
        client: &Client,
        stream: Stream,
        name: &str,
    ) -> (Stream, bool) {
        let version = client.server_info().version;
        if !has_atomic_batches(&version) {
            tracing::warn!(
                bucket = name,
                version,
                "NATS server before 2.12: batches on this bucket are written key by key, not all or nothing"
            );
            return (stream, false);
        }
        if stream.cached_info().config.allow_atomic_publish {
            return (stream, true);
        }
        let mut config = stream.cached_info().config.clone();
        config.allow_atomic_publish = true;
        let updated = match js.update_stream(config).await {
            Ok(_) => js.get_stream(format!("KV_{name}")).await.map_err(cause),
            Err(e) => Err(cause(e)),
        };
        match updated {
            Ok(stream) => (stream, true),
            Err(e) => {
                tracing::warn!(bucket = name, error = %e, "cannot allow atomic batches on this bucket: they are written key by key");
                (stream, false)
            }
        }
    }

    /// Makes the bucket's stream as JetStream key-value makes one, with
    /// per-message TTLs when the server has them.
    async fn create(
        js: &jetstream::Context,
        client: &Client,
        name: &str,
        max_value: u64,
    ) -> Result<Stream, String> {
        let config = stream::Config {
            name: format!("KV_{name}"),
            description: Some(format!("steedos-wasm key-value bucket {name}")),
            subjects: vec![format!("$KV.{name}.>")],
            max_messages_per_subject: 1,
            // Room for the headers beside the largest value.
            max_message_size: i32::try_from(max_value.saturating_add(4096)).unwrap_or(i32::MAX),
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            discard: DiscardPolicy::New,
            num_replicas: 1,
            allow_message_ttl: has_message_ttls(&client.server_info().version),
            allow_atomic_publish: has_atomic_batches(&client.server_info().version),
            ..Default::default()
        };
        match js.create_stream(config).await {
            Ok(stream) => Ok(stream),
            // Another host made it meanwhile.
            Err(created) => js.get_stream(format!("KV_{name}")).await.map_err(|_| {
                cause(format!(
                    "cannot make the bucket (is JetStream on: nats-server -js?): {created}"
                ))
            }),
        }
    }

    /// Refuses at once while the connection is down (the client reconnects
    /// meanwhile), rather than let the caller wait out a request timeout.
    fn connected(&self) -> Answer<()> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(cause(
                "the NATS server is out of reach (reconnecting; tried again on the next use)",
            )),
        }
    }

    fn subject(&self, key: &str) -> String {
        format!("{}{}", self.prefix, encode_key(key))
    }

    /// The key's live value and its revision (0 when it has no message).
    async fn entry(&self, key: &str) -> Answer<(Option<Vec<u8>>, u64)> {
        self.connected()?;
        match self
            .stream
            .direct_get_last_for_subject(self.subject(key))
            .await
        {
            Ok(m) => Ok((live(Some(&m.headers), &m.payload, now_ms()), m.sequence)),
            Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok((None, 0)),
            Err(e) => Err(cause(e)),
        }
    }

    /// Writes a message for `key`; `expect` is the revision it must still
    /// be at. `Ok(false)`: it was not.
    async fn publish(
        &self,
        key: &str,
        mut headers: HeaderMap,
        payload: &[u8],
        expect: Option<u64>,
    ) -> Answer<bool> {
        self.connected()?;
        self.fits(payload)?;
        if let Some(revision) = expect {
            headers.insert(NATS_EXPECTED_LAST_SUBJECT_SEQUENCE, revision.to_string());
        }
        let ack = self
            .js
            .publish_with_headers(self.subject(key), headers, Bytes::copy_from_slice(payload))
            .await
            .map_err(cause)?
            .await;
        match ack {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == PublishErrorKind::WrongLastSequence => Ok(false),
            Err(e) => Err(cause(e)),
        }
    }

    /// Refuses a value the server's `max_payload` cannot carry with its headers.
    fn fits(&self, payload: &[u8]) -> Answer<()> {
        let max = self.client.server_info().max_payload;
        if max > 0 && payload.len() + 1024 > max {
            return Err(format!(
                "nats jetstream: a value of {} bytes does not fit the NATS server's max_payload of {max} bytes",
                payload.len()
            ));
        }
        Ok(())
    }

    /// Writes `messages` (key, headers, value) as one atomic batch: the
    /// first as a request (the server says at once if it refuses the
    /// batch), the last with the commit, whose ack covers them all. A
    /// batch cut short is never committed, so the server stores none of it.
    async fn publish_atomic(&self, messages: Vec<(&str, HeaderMap, &[u8])>) -> Answer<()> {
        self.connected()?;
        if messages.len() > MAX_ATOMIC_BATCH {
            return Err(cause(format!(
                "a batch of {} keys is over the {MAX_ATOMIC_BATCH} a JetStream atomic batch holds; nothing was written",
                messages.len()
            )));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let last = messages.len();
        for (i, (key, mut headers, payload)) in messages.into_iter().enumerate() {
            self.fits(payload)?;
            let (subject, payload) = (self.subject(key), Bytes::copy_from_slice(payload));
            headers.insert(BATCH_ID, id.as_str());
            headers.insert(BATCH_SEQUENCE, (i + 1).to_string());
            if i + 1 == last {
                headers.insert(BATCH_COMMIT, "1");
                let ack = self.js.publish_with_headers(subject, headers, payload);
                ack.await.map_err(cause)?.await.map_err(cause)?;
            } else if i == 0 {
                let reply = self.client.request_with_headers(subject, headers, payload);
                refused_batch(&reply.await.map_err(cause)?.payload)?;
            } else {
                let sent = self.client.publish_with_headers(subject, headers, payload);
                sent.await.map_err(cause)?;
            }
        }
        Ok(())
    }

    /// Every key with a message (live, deleted or expired alike unless
    /// `live_only`), decoded, unsorted.
    async fn all_keys(&self, live_only: bool) -> Answer<Vec<String>> {
        self.connected()?;
        let consumer = self
            .stream
            .create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: format!("{}>", self.prefix),
                headers_only: true,
                deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                replay_policy: consumer::ReplayPolicy::Instant,
                ..Default::default()
            })
            .await
            .map_err(cause)?;
        let mut keys = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(keys);
        }
        let mut messages = consumer.messages().await.map_err(cause)?;
        let now = now_ms();
        loop {
            let next = tokio::time::timeout(TIMEOUT, messages.next())
                .await
                .map_err(|_| cause("listing the keys took too long"))?;
            let Some(message) = next else { break };
            let message = message.map_err(cause)?;
            let pending = message.info().map_err(cause)?.pending;
            let token = message.subject.strip_prefix(&self.prefix);
            let keep = !live_only || live(message.headers.as_ref(), &Bytes::new(), now).is_some();
            if let (true, Some(key)) = (keep, token.and_then(decode_key)) {
                keys.push(key);
            }
            if pending == 0 {
                break;
            }
        }
        Ok(keys)
    }
}

/// The server's answer to a batch's first message: empty when it took it,
/// else a pub ack with an error.
fn refused_batch(reply: &[u8]) -> Answer<()> {
    if reply.is_empty() {
        return Ok(());
    }
    let answer: serde_json::Value = serde_json::from_slice(reply).unwrap_or_default();
    match answer.get("error") {
        None => Ok(()),
        Some(e) => Err(cause(format!(
            "the server refused the batch: {}",
            e.get("description")
                .and_then(|d| d.as_str())
                .unwrap_or("no reason given")
        ))),
    }
}

/// A batch cut short after `done` of `total` keys, as the error says it.
fn cut_short(e: String, what: &str, done: usize, total: usize) -> String {
    format!(
        "{e} ({what} stopped after {done} of {total} keys: JetStream applies a batch key by key, and the {done} before stay applied)"
    )
}

/// The headers of a value written with `ttl`, if any.
fn ttl_headers(ttl: Option<Duration>, server_ttl: bool) -> HeaderMap {
    let mut headers = HeaderMap::new();
    if let Some(ttl) = ttl {
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        headers.insert(EXPIRES, now_ms().saturating_add(ms).to_string());
        if server_ttl {
            // Whole seconds: the server's TTLs start at one.
            headers.insert(NATS_MESSAGE_TTL, ms.div_ceil(1000).max(1).to_string());
        }
    }
    headers
}

fn delete_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(OPERATION, "DEL");
    headers
}

impl Backend for JetStreamBucket {
    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Answer<Option<Vec<u8>>>> {
        Box::pin(async move { Ok(self.entry(key).await?.0) })
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: &'a [u8],
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Answer<()>> {
        Box::pin(async move {
            let headers = ttl_headers(ttl, self.server_ttl);
            self.publish(key, headers, value, None).await.map(drop)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Answer<()>> {
        Box::pin(async move {
            // Nothing to mark when the key never had a value.
            if self.entry(key).await?.1 == 0 {
                return Ok(());
            }
            self.publish(key, delete_headers(), &[], None)
                .await
                .map(drop)
        })
    }

    fn list<'a>(&'a self, cursor: Option<&'a str>, limit: usize) -> BoxFuture<'a, Answer<Page>> {
        Box::pin(async move {
            let mut keys = self.all_keys(true).await?;
            keys.sort();
            if let Some(cursor) = cursor {
                keys.retain(|k| k.as_str() > cursor);
            }
            if keys.len() <= limit {
                return Ok((keys, None));
            }
            keys.truncate(limit);
            let next = keys.last().cloned();
            Ok((keys, next))
        })
    }

    fn increment<'a>(
        &'a self,
        key: &'a str,
        delta: i64,
    ) -> BoxFuture<'a, Answer<Result<i64, String>>> {
        Box::pin(async move {
            for _ in 0..INCREMENT_TRIES {
                let (value, revision) = self.entry(key).await?;
                let old = match value.as_deref().map(super::embedded::parse_integer) {
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
                let text = new.to_string();
                if self
                    .publish(key, HeaderMap::new(), text.as_bytes(), Some(revision))
                    .await?
                {
                    return Ok(Ok(new));
                }
            }
            Err(cause(format!(
                "`{key}` changed under {INCREMENT_TRIES} increments in a row; try again"
            )))
        })
    }

    fn swap<'a>(
        &'a self,
        key: &'a str,
        expected: Option<&'a [u8]>,
        value: &'a [u8],
    ) -> BoxFuture<'a, Answer<bool>> {
        Box::pin(async move {
            let (now, revision) = self.entry(key).await?;
            if now.as_deref() != expected {
                return Ok(false);
            }
            // Written only if nothing was written since it was read.
            self.publish(key, HeaderMap::new(), value, Some(revision))
                .await
        })
    }

    fn get_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Answer<Vec<Option<Vec<u8>>>>> {
        Box::pin(async move {
            let mut values = Vec::with_capacity(keys.len());
            for chunk in keys.chunks(64) {
                let reads = futures_util::future::join_all(chunk.iter().map(|k| self.entry(k)));
                for read in reads.await {
                    values.push(read?.0);
                }
            }
            Ok(values)
        })
    }

    fn set_many<'a>(&'a self, pairs: &'a [(String, Vec<u8>)]) -> BoxFuture<'a, Answer<()>> {
        Box::pin(async move {
            if self.atomic {
                let messages = pairs
                    .iter()
                    .map(|(k, v)| (k.as_str(), HeaderMap::new(), v.as_slice()));
                return self.publish_atomic(messages.collect()).await;
            }
            for (done, (k, v)) in pairs.iter().enumerate() {
                let written = self.publish(k, HeaderMap::new(), v, None).await;
                written.map_err(|e| cut_short(e, "set-many", done, pairs.len()))?;
            }
            Ok(())
        })
    }

    fn delete_many<'a>(&'a self, keys: &'a [String]) -> BoxFuture<'a, Answer<()>> {
        Box::pin(async move {
            if self.atomic {
                let messages = keys.iter().map(|k| (k.as_str(), delete_headers(), &[][..]));
                return self.publish_atomic(messages.collect()).await;
            }
            for (done, k) in keys.iter().enumerate() {
                let deleted = self.delete(k).await;
                deleted.map_err(|e| cut_short(e, "delete-many", done, keys.len()))?;
            }
            Ok(())
        })
    }

    fn delete_prefix<'a>(&'a self, prefix: &'a str) -> BoxFuture<'a, Answer<u64>> {
        Box::pin(async move {
            let doomed: Vec<String> = self
                .all_keys(true)
                .await?
                .into_iter()
                .filter(|k| k.starts_with(prefix))
                .collect();
            for (done, k) in doomed.iter().enumerate() {
                let deleted = self.delete(k).await;
                deleted.map_err(|e| cut_short(e, "clean", done, doomed.len()))?;
            }
            Ok(doomed.len() as u64)
        })
    }

    fn size(&self) -> BoxFuture<'_, Answer<(u64, u64)>> {
        // The stream's own counts, not a walk of the keys: every node asks
        // every few seconds. Delete markers and expired values still
        // stored count until replaced.
        Box::pin(async move {
            self.connected()?;
            let mut stream = self.js.get_stream(&self.stream_name).await.map_err(cause)?;
            let info = stream.info().await.map_err(cause)?;
            Ok((info.state.messages, info.state.bytes))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_round_trips_through_a_subject_token() {
        for key in [
            "a",
            "sku-42",
            "a.b.c",
            "=x",
            ".x",
            "x.",
            "a..b",
            "with space",
            "star*",
            "gt>",
            "ünï",
            "a:b",
            "$cache",
            "tab\there",
        ] {
            let token = encode_key(key);
            assert!(
                token
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_/=.".contains(&b)),
                "{key:?} -> {token:?}"
            );
            assert!(!token.starts_with('.') && !token.ends_with('.') && !token.contains(".."));
            assert_eq!(decode_key(&token).as_deref(), Some(key), "{token}");
        }
        assert_eq!(encode_key("sku-42"), "sku-42");
        assert_ne!(encode_key("=x"), "=x");
    }
}

//! The Redis side of the [`Bus`](super::bus::Bus): Moleculer's Redis
//! transporter, spoken over pub/sub channels named as the NATS subjects.
//!
//! Two connections, as Moleculer's: one publishes (PUBLISH, pipelined
//! from the outbox), one subscribes. A router task reads the subscriber
//! and hands each message to its subscription's bounded buffer; a message
//! that finds the buffer full is dropped and counted. redis-server cuts a
//! subscriber that reads too slowly (`client-output-buffer-limit
//! pubsub`): that is logged and counted as a drop, and the router
//! subscribes again. The URL (`redis://`, `rediss://` for TLS, a user, a
//! password, a db number) and the secrets from `[cluster]` are read here;
//! it must not decode packets or keep peers.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use ::redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubStream};
use ::redis::{AsyncConnectionConfig, Client, IntoConnectionInfo, Msg};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::bounds::{DropLog, SUBSCRIPTION_BUFFER};
use super::connect::redact;
use super::error::TransportError;
use super::inbox::{Inbox, Outgoing};
use super::packet::Kind;
use crate::manifest::{ClusterAuth, ClusterSettings, Secret};

/// How long connecting (and each answer after) may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The two connections of a node to redis-server; cheap to clone.
#[derive(Clone)]
pub(super) struct Link {
    client: Client,
    /// Reconnects by itself when the server cuts it (a command sent
    /// meanwhile fails; the next one finds a new connection).
    publisher: ConnectionManager,
    /// The URL without its secrets, for errors and logs.
    url: Arc<str>,
    node: Arc<str>,
    drops: Arc<DropLog>,
}

/// The error for a connection that failed: the URL without secrets.
fn connect_error(url: &str, message: impl std::fmt::Display) -> TransportError {
    TransportError::Connect {
        url: redact(url),
        message: format!(
            "{} (setting `[cluster] transporter`)",
            super::connect::scrub(&message.to_string(), url)
        ),
    }
}

/// Reads a secret; the error names its source, never its value.
fn read_secret(secret: &Secret, key: &'static str) -> Result<String, TransportError> {
    super::connect::secret_value(secret).map_err(|source| TransportError::Settings {
        key,
        problem: format!("the Redis {key} from {source} is missing or empty"),
    })
}

fn read_file(path: &std::path::Path, key: &'static str) -> Result<Vec<u8>, TransportError> {
    std::fs::read(path).map_err(|e| TransportError::Settings {
        key,
        problem: format!("{} cannot be read: {e}", path.display()),
    })
}

/// A client for `settings`: the URL's user, password and db, the
/// `[cluster]` secrets over them, and TLS files for `rediss://`.
fn client(settings: &ClusterSettings) -> Result<Client, TransportError> {
    let url = &settings.transporter;
    let mut info = url
        .as_str()
        .into_connection_info()
        .map_err(|e| connect_error(url, e))?;
    match &settings.auth {
        ClusterAuth::None => {}
        ClusterAuth::Token(secret) => info.redis.password = Some(read_secret(secret, "token")?),
        ClusterAuth::UserPassword { user, password } => {
            info.redis.username = Some(user.clone());
            info.redis.password = Some(read_secret(password, "password")?);
        }
        ClusterAuth::NKey(_) | ClusterAuth::Credentials(_) => {
            return Err(TransportError::Settings {
                key: "auth",
                problem: "NKeys and .creds files are NATS credentials: Redis takes a password (with a user or not)".into(),
            });
        }
    }
    let tls = &settings.tls;
    if tls.ca.is_none() && tls.client.is_none() {
        if tls.required && !url.starts_with("rediss://") {
            return Err(TransportError::Settings {
                key: "tls",
                problem: "TLS is required: use a rediss:// URL".into(),
            });
        }
        return Client::open(info).map_err(|e| connect_error(url, e));
    }
    if !url.starts_with("rediss://") {
        return Err(TransportError::Settings {
            key: "tls",
            problem: "a TLS CA or client certificate needs a rediss:// URL".into(),
        });
    }
    let root_cert = tls
        .ca
        .as_deref()
        .map(|ca| read_file(ca, "tls"))
        .transpose()?;
    let client_tls = match &tls.client {
        Some((cert, key)) => Some(::redis::ClientTlsConfig {
            client_cert: read_file(cert, "tls")?,
            client_key: read_file(key, "tls")?,
        }),
        None => None,
    };
    let certs = ::redis::TlsCertificates {
        client_tls,
        root_cert,
    };
    Client::build_with_tls(info, certs).map_err(|e| connect_error(url, e))
}

impl Link {
    /// Connects the publisher as `node_id`; the subscriber connects in
    /// [`Link::subscribe_all`]. A server that does not answer is an error
    /// naming the URL (without secrets) and the setting.
    pub async fn connect(
        settings: &ClusterSettings,
        node_id: &str,
        drops: Arc<DropLog>,
    ) -> Result<Link, TransportError> {
        let url = &settings.transporter;
        let client = client(settings)?;
        // One plain connection first: an unanswering server or a refused
        // password fails here at once (the manager below would retry).
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT);
        let mut probe = client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| connect_error(url, e))?;
        // The connection may be lazy about auth and db: ask once.
        ::redis::cmd("PING")
            .query_async::<()>(&mut probe)
            .await
            .map_err(|e| connect_error(url, e))?;
        drop(probe);
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(TIMEOUT)
            .set_response_timeout(TIMEOUT)
            .set_number_of_retries(2);
        let managed = ConnectionManager::new_with_config(client.clone(), config);
        let publisher = tokio::time::timeout(TIMEOUT, managed)
            .await
            .map_err(|_| connect_error(url, format!("no answer within {TIMEOUT:?}")))?
            .map_err(|e| connect_error(url, e))?;
        Ok(Link {
            client,
            publisher,
            url: redact(url).into(),
            node: node_id.into(),
            drops,
        })
    }

    /// Publishes `bytes` on `channel`, waiting for the server's answer.
    pub async fn publish(&self, channel: &str, bytes: &[u8]) -> Result<(), String> {
        let mut publisher = self.publisher.clone();
        ::redis::cmd("PUBLISH")
            .arg(channel)
            .arg(bytes)
            .query_async::<()>(&mut publisher)
            .await
            .map_err(|e| e.to_string())
    }

    /// Waits until the server has what was published (its answers come
    /// in order, so a PING answered follows every PUBLISH before it).
    pub async fn flush(&self) -> Result<(), String> {
        let mut publisher = self.publisher.clone();
        ::redis::cmd("PING")
            .query_async::<()>(&mut publisher)
            .await
            .map_err(|e| e.to_string())
    }

    /// Subscribes to every channel of `subjects`, each with a bounded
    /// buffer; EVENTs are shared by `event_readers` buffers in turn.
    pub async fn subscribe_all(
        &self,
        subjects: Vec<(Kind, String)>,
        event_readers: usize,
    ) -> Result<Vec<(Kind, Inbox)>, TransportError> {
        let mut routes = HashMap::new();
        let mut inboxes = Vec::new();
        for (kind, channel) in &subjects {
            let readers = if *kind == Kind::Event {
                event_readers
            } else {
                1
            };
            let mut senders = Vec::new();
            for _ in 0..readers {
                let (tx, rx) = mpsc::channel(SUBSCRIPTION_BUFFER);
                senders.push(tx);
                inboxes.push((*kind, Inbox::Redis(rx)));
            }
            routes.insert(channel.clone(), Route::new(*kind, senders));
        }
        let channels: Vec<String> = subjects.into_iter().map(|(_, c)| c).collect();
        let stream =
            self.subscribe(&channels)
                .await
                .map_err(|message| TransportError::Subscribe {
                    subject: channels.join(", "),
                    message,
                })?;
        tokio::spawn(self.clone().route(channels, routes, stream));
        Ok(inboxes)
    }

    /// A subscriber connection, subscribed to `channels`.
    async fn subscribe(&self, channels: &[String]) -> Result<PubSubStream, String> {
        let mut pubsub = tokio::time::timeout(TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| format!("{} did not answer within {TIMEOUT:?}", self.url))?
            .map_err(|e| e.to_string())?;
        for channel in channels {
            pubsub.subscribe(channel).await.map_err(|e| e.to_string())?;
        }
        Ok(pubsub.into_on_message())
    }

    /// Hands each message to its subscription until every inbox is gone;
    /// a subscriber connection the server cuts is counted, logged and
    /// opened again.
    async fn route(
        self,
        channels: Vec<String>,
        routes: HashMap<String, Route>,
        mut stream: PubSubStream,
    ) {
        let Some(watch) = routes.values().next().map(|r| r.senders[0].clone()) else {
            return;
        };
        loop {
            loop {
                tokio::select! {
                    message = stream.next() => match message {
                        Some(message) => self.deliver(&routes, &message),
                        None => break,
                    },
                    _ = watch.closed() => return,
                }
            }
            self.drops.warn(
                &self.node,
                "any",
                "redis-server closed this node's subscriber connection (it cuts a subscriber that reads more slowly than packets are sent, at `client-output-buffer-limit pubsub`, or it stopped): packets sent meanwhile are lost; subscribing again",
            );
            stream = loop {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = watch.closed() => return,
                }
                match self.subscribe(&channels).await {
                    Ok(stream) => break stream,
                    Err(e) => {
                        tracing::warn!(node = %self.node, url = %self.url, error = %e, "cannot subscribe to Redis again; retrying")
                    }
                }
            };
            tracing::info!(node = %self.node, url = %self.url, "subscribed to Redis again");
        }
    }

    /// Hands one message to its subscription's buffer, or counts it dropped.
    fn deliver(&self, routes: &HashMap<String, Route>, message: &Msg) {
        let Some(route) = routes.get(message.get_channel_name()) else {
            return;
        };
        let bytes = Bytes::copy_from_slice(message.get_payload_bytes());
        if let Err(mpsc::error::TrySendError::Full(_)) = route.next().try_send(bytes) {
            self.drops.warn(
                &self.node,
                route.kind.name(),
                &format!("the buffer of {SUBSCRIPTION_BUFFER} packets of `{}` was full: this node reads the bus more slowly than it is sent", message.get_channel_name()),
            );
        }
    }

    /// Publishes what was queued, in order, a burst to one pipeline; a
    /// REQ that cannot be sent is handed to `unsent` (its call fails).
    pub async fn send_outbox(
        self,
        mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
        unsent: impl Fn(u128, &str),
    ) {
        let mut publisher = self.publisher.clone();
        let mut batch = Vec::new();
        while outgoing.recv_many(&mut batch, 512).await > 0 {
            let mut pipe = ::redis::pipe();
            for out in &batch {
                pipe.cmd("PUBLISH")
                    .arg(out.subject.as_str())
                    .arg(&out.bytes[..])
                    .ignore();
            }
            if let Err(e) = pipe.query_async::<()>(&mut publisher).await {
                for out in batch.drain(..) {
                    match out.call {
                        Some(id) => unsent(id, &e.to_string()),
                        None => {
                            tracing::warn!(subject = %out.subject, error = %e, "packet not sent")
                        }
                    }
                }
            }
            batch.clear();
        }
    }
}

/// Where one channel's messages go: its buffers, taken in turn.
struct Route {
    kind: Kind,
    senders: Vec<mpsc::Sender<Bytes>>,
    turn: std::sync::atomic::AtomicUsize,
}

impl Route {
    fn new(kind: Kind, senders: Vec<mpsc::Sender<Bytes>>) -> Route {
        Route {
            kind,
            senders,
            turn: Default::default(),
        }
    }

    fn next(&self) -> &mpsc::Sender<Bytes> {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        &self.senders[turn % self.senders.len()]
    }
}

//! The bus a node speaks on, whichever it is: NATS or Redis pub/sub.
//!
//! The protocol (transit, serve, route) sees only [`Bus`]: subjects
//! (`<prefix>.<CMD>` and `<prefix>.<CMD>.<node>`, the same names on
//! both buses, as Moleculer's transporters use), bytes published in
//! order, one bounded [`Inbox`] per subscription, flush and close. Which
//! bus is chosen by the transporter URL's scheme; each has a file of its
//! own (`nats`, `redis`). It must not decode packets or keep peers.

use tokio::sync::mpsc;

use std::sync::Arc;

use super::bounds::DropLog;
use super::error::TransportError;
use super::packet::Kind;
use super::{nats, redis};
use crate::manifest::ClusterSettings;

pub(super) use super::inbox::{Inbox, Outgoing};
/// A subject (a channel on Redis): a cheap shared string.
pub(super) use async_nats::Subject;

/// The connection of one bus, cheap to clone.
#[derive(Clone)]
pub(super) enum Link {
    Nats(async_nats::Client),
    Redis(redis::Link),
}

/// Whether `url` names a Redis server (`redis://`, `rediss://`).
pub fn is_redis(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("rediss://")
}

/// The connection: the link, the subject prefix, and the outbox.
pub(super) struct Bus {
    link: Link,
    prefix: String,
    /// Packets to publish, in order: events, from code that cannot wait,
    /// and the REQs of our calls. One task hands them to the link back
    /// to back, so it gets them in bursts and writes them together; when
    /// each caller published its own REQ, the client woke for a write of
    /// one or two (about a fifth fewer calls/s at 100 callers, measured).
    outbox: mpsc::UnboundedSender<Outgoing>,
}

impl Bus {
    /// Connects as `node_id` to the bus the transporter URL names; the
    /// outbox's other end goes to [`send_outbox`].
    pub async fn connect(
        settings: &ClusterSettings,
        node_id: &str,
        prefix: String,
        drops: Arc<DropLog>,
    ) -> Result<(Bus, mpsc::UnboundedReceiver<Outgoing>), TransportError> {
        let link = if is_redis(&settings.transporter) {
            Link::Redis(redis::Link::connect(settings, node_id, drops).await?)
        } else {
            Link::Nats(nats::connect(settings, node_id, drops).await?)
        };
        let (outbox, outgoing) = mpsc::unbounded_channel();
        Ok((
            Bus {
                link,
                prefix,
                outbox,
            },
            outgoing,
        ))
    }

    /// The link, for the outbox task.
    pub fn link(&self) -> &Link {
        &self.link
    }

    /// `<prefix>.<kind>`: a broadcast subject.
    pub fn subject(&self, kind: &str) -> Subject {
        format!("{}.{kind}", self.prefix).into()
    }

    /// `<prefix>.<kind>.<node>`: one node's subject.
    pub fn subject_to(&self, kind: &str, node: &str) -> Subject {
        format!("{}.{kind}.{node}", self.prefix).into()
    }

    /// Publishes `bytes`, waiting for the link to take them.
    pub async fn publish(
        &self,
        kind: Kind,
        subject: Subject,
        bytes: Vec<u8>,
    ) -> Result<(), TransportError> {
        let sent = match &self.link {
            Link::Nats(client) => client
                .publish(subject.clone(), bytes.into())
                .await
                .map_err(|e| e.to_string()),
            Link::Redis(link) => link.publish(&subject, &bytes).await,
        };
        sent.map_err(|message| TransportError::Publish {
            kind: kind.name(),
            subject: subject.to_string(),
            message,
        })
    }

    /// Queues a packet for the outbox task; false once it has ended.
    pub fn queue(&self, out: Outgoing) -> bool {
        self.outbox.send(out).is_ok()
    }

    /// Waits until the server has what was published.
    pub async fn flush(&self) -> Result<(), String> {
        match &self.link {
            Link::Nats(client) => client.flush().await.map_err(|e| e.to_string()),
            Link::Redis(link) => link.flush().await,
        }
    }

    /// Subscribes to every subject `node_id` reads, by the kind of packet
    /// each carries.
    pub async fn subscribe_all(&self, node_id: &str) -> Result<Vec<(Kind, Inbox)>, TransportError> {
        let p = &self.prefix;
        let subjects = vec![
            (Kind::Request, format!("{p}.REQ.{node_id}")),
            (Kind::Response, format!("{p}.RES.{node_id}")),
            (Kind::Event, format!("{p}.EVENT.{node_id}")),
            (Kind::Discover, format!("{p}.DISCOVER")),
            (Kind::Discover, format!("{p}.DISCOVER.{node_id}")),
            (Kind::Info, format!("{p}.INFO")),
            (Kind::Info, format!("{p}.INFO.{node_id}")),
            (Kind::Heartbeat, format!("{p}.HEARTBEAT")),
            (Kind::Ping, format!("{p}.PING")),
            (Kind::Ping, format!("{p}.PING.{node_id}")),
            (Kind::Pong, format!("{p}.PONG.{node_id}")),
            (Kind::Disconnect, format!("{p}.DISCONNECT")),
        ];
        match &self.link {
            Link::Nats(client) => nats::subscribe_all(client, subjects, event_readers()).await,
            Link::Redis(link) => link.subscribe_all(subjects, event_readers()).await,
        }
    }
}

/// How many tasks read this node's EVENT subject: one per core, up to four.
fn event_readers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Publishes what was queued, in order; a REQ that cannot be sent is
/// handed to `unsent` (its call fails at once).
pub(super) async fn send_outbox(
    link: Link,
    outgoing: mpsc::UnboundedReceiver<Outgoing>,
    unsent: impl Fn(u128, &str),
) {
    match link {
        Link::Nats(client) => nats::send_outbox(client, outgoing, unsent).await,
        Link::Redis(link) => link.send_outbox(outgoing, unsent).await,
    }
}

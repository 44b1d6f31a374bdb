//! The NATS connection of one node: the subjects it reads and writes, the
//! subscriptions, and the outbox task that publishes packets in order.
//!
//! It moves bytes and knows subjects; what a packet means is the
//! transit's. It must not decode packets, keep peers or
//! calls, or reach the broker.

use async_nats::{Client, Subject, Subscriber};
use bytes::Bytes;
use tokio::sync::mpsc;

use std::sync::Arc;

use super::bounds::DropLog;
use super::connect;
use super::error::TransportError;
use super::packet::Kind;
use crate::manifest::ClusterSettings;

/// How many tasks read this node's EVENT subject: one per core, up to four.
fn event_readers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// A packet queued for [`send_outbox`].
pub(super) struct Outgoing {
    pub subject: Subject,
    pub bytes: Bytes,
    /// For a REQ, the id of its pending call: the call fails at once when
    /// the packet cannot be sent.
    pub call: Option<u128>,
}

/// The connection: the client, the subject prefix, and the outbox.
pub(super) struct Bus {
    client: Client,
    prefix: String,
    /// Packets to publish, in order: events, from code that cannot wait,
    /// and the REQs of our calls. One task hands them to the client back
    /// to back, so it gets them in bursts and writes them together; when
    /// each caller published its own REQ, the client woke for a write of
    /// one or two (about a fifth fewer calls/s at 100 callers, measured).
    outbox: mpsc::UnboundedSender<Outgoing>,
}

impl Bus {
    /// Connects as `node_id`; the outbox's other end goes to [`send_outbox`].
    pub async fn connect(
        settings: &ClusterSettings,
        node_id: &str,
        prefix: String,
        drops: Arc<DropLog>,
    ) -> Result<(Bus, mpsc::UnboundedReceiver<Outgoing>), TransportError> {
        let client =
            connect::connect(settings, node_id, super::bounds::SUBSCRIPTION_BUFFER, drops).await?;
        let (outbox, outgoing) = mpsc::unbounded_channel();
        let bus = Bus {
            client,
            prefix,
            outbox,
        };
        Ok((bus, outgoing))
    }

    /// The client, for the outbox task.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `<prefix>.<kind>`: a broadcast subject.
    pub fn subject(&self, kind: &str) -> Subject {
        format!("{}.{kind}", self.prefix).into()
    }

    /// `<prefix>.<kind>.<node>`: one node's subject.
    pub fn subject_to(&self, kind: &str, node: &str) -> Subject {
        format!("{}.{kind}.{node}", self.prefix).into()
    }

    /// Publishes `bytes`, waiting for the client to take them.
    pub async fn publish(
        &self,
        kind: Kind,
        subject: Subject,
        bytes: Vec<u8>,
    ) -> Result<(), TransportError> {
        self.client
            .publish(subject.clone(), bytes.into())
            .await
            .map_err(|e| TransportError::Publish {
                kind: kind.name(),
                subject: subject.to_string(),
                message: e.to_string(),
            })
    }

    /// Queues a packet for the outbox task; false once it has ended.
    pub fn queue(&self, out: Outgoing) -> bool {
        self.outbox.send(out).is_ok()
    }

    /// Waits until the server has what was published.
    pub async fn flush(&self) -> Result<(), String> {
        self.client.flush().await.map_err(|e| e.to_string())
    }

    /// Subscribes to every subject `node_id` reads, by the kind of packet
    /// each carries. Events are read by several subscriptions of one queue
    /// group: nats-server hands each EVENT to one of them, so deliveries run
    /// on every core (their order was never kept).
    pub async fn subscribe_all(
        &self,
        node_id: &str,
    ) -> Result<Vec<(Kind, Subscriber)>, TransportError> {
        let p = &self.prefix;
        let subjects = [
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
        let mut subscribers = Vec::new();
        for (kind, subject) in subjects {
            let readers = match kind {
                Kind::Event => event_readers(),
                _ => 1,
            };
            for _ in 0..readers {
                let subscribed = match kind {
                    Kind::Event => {
                        self.client
                            .queue_subscribe(subject.clone(), "steedos-events".into())
                            .await
                    }
                    _ => self.client.subscribe(subject.clone()).await,
                };
                let subscriber = subscribed.map_err(|e| TransportError::Subscribe {
                    subject: subject.clone(),
                    message: e.to_string(),
                })?;
                subscribers.push((kind, subscriber));
            }
        }
        Ok(subscribers)
    }
}

/// Publishes what was queued, in order; a REQ that cannot be sent is
/// handed to `unsent` (its call fails at once).
pub(super) async fn send_outbox(
    client: Client,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
    unsent: impl Fn(u128, &str),
) {
    while let Some(out) = outgoing.recv().await {
        if let Err(e) = client.publish(out.subject.clone(), out.bytes).await {
            match out.call {
                Some(id) => unsent(id, &e.to_string()),
                None => tracing::warn!(subject = %out.subject, error = %e, "packet not sent"),
            }
        }
    }
}

//! The NATS side of the [`Bus`](super::bus::Bus): its subscriptions and
//! the outbox task that publishes packets in order.
//!
//! It moves bytes and knows subjects; what a packet means is the
//! transit's. It must not decode packets, keep peers or
//! calls, or reach the broker.

use async_nats::Client;
use tokio::sync::mpsc;

use std::sync::Arc;

use super::bounds::DropLog;
use super::connect;
use super::error::TransportError;
use super::inbox::{Inbox, Outgoing};
use super::packet::Kind;
use crate::manifest::ClusterSettings;

/// Connects as `node_id`, each subscription buffering
/// [`SUBSCRIPTION_BUFFER`](super::bounds::SUBSCRIPTION_BUFFER) messages.
pub(super) async fn connect(
    settings: &ClusterSettings,
    node_id: &str,
    drops: Arc<DropLog>,
) -> Result<Client, TransportError> {
    connect::connect(settings, node_id, super::bounds::SUBSCRIPTION_BUFFER, drops).await
}

/// Subscribes to `subjects`. Events are read by `event_readers`
/// subscriptions of one queue group: nats-server hands each EVENT to one
/// of them, so deliveries run on every core (their order was never kept).
pub(super) async fn subscribe_all(
    client: &Client,
    subjects: Vec<(Kind, String)>,
    event_readers: usize,
) -> Result<Vec<(Kind, Inbox)>, TransportError> {
    let mut subscribers = Vec::new();
    for (kind, subject) in subjects {
        let readers = match kind {
            Kind::Event => event_readers,
            _ => 1,
        };
        for _ in 0..readers {
            let subscribed = match kind {
                Kind::Event => {
                    client
                        .queue_subscribe(subject.clone(), "steedos-events".into())
                        .await
                }
                _ => client.subscribe(subject.clone()).await,
            };
            let subscriber = subscribed.map_err(|e| TransportError::Subscribe {
                subject: subject.clone(),
                message: e.to_string(),
            })?;
            subscribers.push((kind, Inbox::Nats(subscriber)));
        }
    }
    Ok(subscribers)
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

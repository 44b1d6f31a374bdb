//! What a bus hands the protocol and takes from it, whichever bus it is:
//! the packets of one subscription ([`Inbox`], bounded) and a packet to
//! send ([`Outgoing`]). A leaf of the transport: `bus.rs` and each bus
//! (`nats.rs`, `redis.rs`) use it; it knows neither.

use async_nats::Subject;
use bytes::Bytes;
use tokio::sync::mpsc;

/// A packet queued for [`send_outbox`](super::bus::send_outbox).
pub(super) struct Outgoing {
    pub subject: Subject,
    pub bytes: Bytes,
    /// For a REQ, the id of its pending call: the call fails at once when
    /// the packet cannot be sent.
    pub call: Option<u128>,
}

/// One subscription's packets, in a bounded buffer.
pub(super) enum Inbox {
    Nats(async_nats::Subscriber),
    Redis(mpsc::Receiver<Bytes>),
}

impl Inbox {
    /// The next packet; `None` once the subscription has ended.
    pub async fn next(&mut self) -> Option<Bytes> {
        match self {
            Inbox::Nats(subscriber) => futures_util::StreamExt::next(subscriber)
                .await
                .map(|m| m.payload),
            Inbox::Redis(receiver) => receiver.recv().await,
        }
    }
}

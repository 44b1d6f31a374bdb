//! What this node takes from the bus: which node ids it accepts, how much
//! it keeps per peer and in flight, and how it reports what it drops.
//!
//! Every packet is untrusted: anyone who can publish on the NATS server
//! can send any bytes under any `sender`. These bounds make a hostile
//! packet cost a log line (rate-limited) and nothing else: node ids are
//! checked before they reach a subject or a map, what the registry keeps
//! is capped, numbers become durations without overflow, and the packets
//! that cost work (DISCOVER, INFO, HEARTBEAT) have a budget per peer and
//! second ([`PeerRate`]). Numbers and checks only: it must not send,
//! keep peers or decide what a packet means.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

pub use crate::node_id::{
    MAX_NODE_ID, clip, sanitize_node_id, shorten, token_problem, valid_node_id,
};

/// Packets larger than this are dropped unread (nats-server's own
/// `max_payload`, 1 MB by default, usually cuts them first).
pub const MAX_PACKET: usize = 8 << 20;

/// At most this many remote nodes are remembered; INFO from more is refused.
pub const MAX_NODES: usize = 1024;

/// The INFO packets of all remembered nodes together may hold this many
/// bytes; a node whose INFO would pass it is refused.
pub const MAX_INFO_BYTES: usize = 64 << 20;

/// One node may announce at most this many actions, and as many event
/// listeners; an INFO with more is refused.
pub const MAX_ACTIONS_PER_NODE: usize = 10_000;

/// An action, service, event or group name longer than this makes its
/// INFO refused.
pub const MAX_NAME: usize = 256;

/// Senders of another protocol version remembered (to warn once each);
/// past this, more are ignored without a warning of their own.
pub const MAX_WRONG_VERSION: usize = 256;

/// Bytes of EVENT packets this node holds while the subscribed packages
/// take them (each counts at least [`EVENT_OVERHEAD`]); past it, events
/// from the bus are dropped and counted (NATS cannot slow their sender).
pub const EVENT_BUDGET: usize = 32 << 20;

/// What one event in flight is counted as, at least (its task, context
/// and copies), so that tiny events are bounded in number too.
pub const EVENT_OVERHEAD: usize = 4 << 10;

/// Messages the NATS client may buffer per subscription. It bounds a count,
/// not bytes: what bounds memory is that every reader drains its
/// subscription at once, in a task that does nothing else (events into
/// [`EVENT_BUDGET`]), so the buffer holds only what arrives while a reader
/// waits for a core. With 4,096 a busy two-core host overflowed it (the
/// client drops the message, reported as a slow consumer and counted
/// here, but its report channel of 128 overflows too); 65,536 absorbs such
/// a wait, and its slots are allocated only when used.
pub const SUBSCRIPTION_BUFFER: usize = 65_536;

/// How long a call from another node may wait: its `timeout` in
/// milliseconds, any number at all (negative, NaN, 1e300), as a duration
/// no longer than `most`; `most` when it names no limit.
pub fn caller_timeout(ms: Option<f64>, most: Duration) -> Duration {
    match ms {
        Some(ms) if ms.is_finite() && ms > 0.0 => {
            let most_ms = most.as_millis() as f64;
            // `as` saturates; ms is finite and in (0, most_ms] here.
            Duration::from_micros((ms.min(most_ms) * 1000.0) as u64).max(Duration::from_millis(1))
        }
        _ => most,
    }
}

/// Every packet dropped, whatever dropped it (a check here, a bound, the
/// client's subscription buffer), counted (and in the metric) and warned
/// about at most once per second with the count of those not logged
/// since: a flood of bad packets costs no log flood.
#[derive(Debug, Default)]
pub struct DropLog {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
    total: AtomicU64,
    metric: Option<prometheus_client::metrics::counter::Counter>,
}

impl DropLog {
    /// A log that also counts into `metric`.
    pub fn with_metric(metric: prometheus_client::metrics::counter::Counter) -> Self {
        DropLog {
            metric: Some(metric),
            ..DropLog::default()
        }
    }

    /// Counts one dropped packet; `Some(n)` when it is to be logged now,
    /// `n` being how many were dropped unlogged before it.
    pub fn note(&self) -> Option<u64> {
        self.total.fetch_add(1, Ordering::Relaxed);
        if let Some(metric) = &self.metric {
            metric.inc();
        }
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match *last {
            Some(at) if now.duration_since(at) < Duration::from_secs(1) => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }

    /// Counts one packet of `packet` dropped by `node` because of `why`,
    /// with a warning when one is due.
    pub fn warn(&self, node: &str, packet: &str, why: &str) {
        if let Some(unlogged) = self.note() {
            tracing::warn!(node, packet, reason = ?clip(why, 300), also_dropped = unlogged, "packet dropped");
        }
    }

    /// Packets dropped so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }
}

/// Packets of one kind a peer may send per second, for the kinds that
/// cost this node work (a DISCOVER is answered with a whole INFO; an INFO
/// rebuilds the registry's index; a HEARTBEAT from an unknown node is
/// answered with a DISCOVER). A Moleculer node sends each rarely (INFO
/// when its services change, DISCOVER when it starts or meets a node,
/// HEARTBEAT every few seconds): well below these; more is a flood, and
/// the packets past the limit in a second are dropped and counted.
pub const DISCOVER_PER_SECOND: u32 = 10;
/// See [`DISCOVER_PER_SECOND`].
pub const INFO_PER_SECOND: u32 = 20;
/// See [`DISCOVER_PER_SECOND`].
pub const HEARTBEAT_PER_SECOND: u32 = 20;

/// INFOs this node sends per second in answer to DISCOVERs, and
/// DISCOVERs it sends to unknown nodes that beat, from all senders
/// together (a flood under many forged ids). Past it, the askers of that
/// second get one broadcast INFO when the second ends (it reaches every
/// node), and an unknown node is asked at a later HEARTBEAT.
pub const ANSWERS_PER_SECOND: u32 = 100;

/// A budget of events per second, for all senders together.
#[derive(Debug)]
pub struct Budget {
    per_second: u32,
    window: Mutex<(Instant, u32)>,
}

impl Budget {
    /// At most `per_second` in each second.
    pub fn new(per_second: u32) -> Self {
        Budget {
            per_second,
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Counts one; false when past the budget of this second.
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(w.0) >= Duration::from_secs(1) {
            *w = (now, 0);
        }
        w.1 = w.1.saturating_add(1);
        w.1 <= self.per_second
    }

    /// How long until this second's budget is renewed.
    pub fn renewed_in(&self) -> Duration {
        let w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        Duration::from_secs(1).saturating_sub(w.0.elapsed())
    }
}

/// Senders counted in one second by a [`PeerRate`]; packets from more
/// senders than this in one second are dropped (four times the nodes a
/// node remembers: only a flood of forged senders comes near it).
pub const MAX_RATED_PEERS: usize = 4 * MAX_NODES;

/// A per-sender budget of packets per second, for one kind of packet: a
/// peer's flood costs this node bounded work, and the memory it takes is
/// bounded by [`MAX_RATED_PEERS`].
#[derive(Debug)]
pub struct PeerRate {
    per_second: u32,
    window: Mutex<RateWindow>,
}

#[derive(Debug)]
struct RateWindow {
    began: Instant,
    seen: HashMap<Box<str>, u32>,
}

impl PeerRate {
    /// At most `per_second` packets per sender per second.
    pub fn new(per_second: u32) -> Self {
        PeerRate {
            per_second,
            window: Mutex::new(RateWindow {
                began: Instant::now(),
                seen: HashMap::new(),
            }),
        }
    }

    /// Counts a packet from `sender`; false when it is past the budget.
    pub fn allow(&self, sender: &str) -> bool {
        let now = Instant::now();
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if now.duration_since(w.began) >= Duration::from_secs(1) {
            w.seen.clear();
            w.began = now;
        }
        if let Some(n) = w.seen.get_mut(sender) {
            *n = n.saturating_add(1);
            return *n <= self.per_second;
        }
        if w.seen.len() >= MAX_RATED_PEERS {
            return false;
        }
        w.seen.insert(sender.into(), 1);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_from_the_wire_are_total() {
        let most = Duration::from_secs(3600);
        for ms in [
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -1.0,
            -0.0,
            0.0,
            f64::MIN,
        ] {
            assert_eq!(caller_timeout(Some(ms), most), most, "{ms}");
        }
        assert_eq!(caller_timeout(None, most), most);
        assert_eq!(caller_timeout(Some(1e300), most), most);
        assert_eq!(caller_timeout(Some(f64::MAX), most), most);
        assert_eq!(caller_timeout(Some(1e-300), most), Duration::from_millis(1));
        assert_eq!(
            caller_timeout(Some(1500.0), most),
            Duration::from_millis(1500)
        );
    }

    #[test]
    fn dropped_packets_are_logged_at_most_once_a_second() {
        let log = DropLog::default();
        assert_eq!(log.note(), Some(0));
        assert_eq!(log.note(), None);
        assert_eq!(log.note(), None);
        assert_eq!(log.total(), 3);
    }

    #[test]
    fn a_peer_past_its_budget_is_held_to_it_and_others_are_not() {
        let rate = PeerRate::new(3);
        assert!((0..3).all(|_| rate.allow("a")));
        assert!(!rate.allow("a"));
        assert!(rate.allow("b"), "another peer has its own budget");
        for i in 0..MAX_RATED_PEERS {
            rate.allow(&format!("n{i}"));
        }
        assert!(
            !rate.allow("one-too-many"),
            "the senders counted are bounded"
        );
    }
}

//! The cluster transport: this host as a node of a Moleculer cluster over
//! NATS.
//!
//! Past one machine, hosts join over NATS speaking the Moleculer
//! transporter protocol (version 4 as Moleculer 0.14 and Steedos speak it,
//! or 5 as Moleculer 0.15 does), so steedos-wasm nodes and Node.js
//! Moleculer services discover and call each other. There is no cluster
//! protocol of our own.
//!
//! # What a node does
//! - **Discovery**: on start it subscribes to its subjects, broadcasts
//!   DISCOVER and its INFO (its packages as services, with parameter
//!   schemas from the WIT types and its event subscriptions; see
//!   [`schema`]); it answers DISCOVER with INFO, sends a HEARTBEAT every
//!   `heartbeat_interval`, and re-broadcasts INFO when a package is
//!   deployed or removed.
//! - **Registry**: remote nodes, their actions and event listeners, kept
//!   from INFO, HEARTBEAT and DISCONNECT ([`registry`]). A node silent for
//!   `heartbeat_timeout`, or one that says DISCONNECT, is dropped, and the
//!   calls in flight to it fail at once rather than at their timeout.
//! - **Calls out**: an action no local package serves is sent as a REQ to
//!   a node that serves it, round-robin; the timeout, request id, meta,
//!   level and caller travel in the packet. Packages reach it through
//!   `broker.call` (MessagePack in the package, JSON on the wire), the
//!   gateway and the CLI through [`Broker::call_json`].
//! - **Calls in**: a REQ runs on this host's packages only, with JSON
//!   params by name; a failure goes back as the Moleculer error a Node.js
//!   caller expects ([`packet::error_to_wire`]).
//! - **Events**: an `emit` here reaches one node of every remote group that
//!   no local package serves; a `broadcast` every node with a listener.
//!   Events from other nodes reach the subscribed packages.
//! - **Stop**: an INFO with no services (no new calls come), the calls in
//!   flight finish, then DISCONNECT.
//!
//! # Example
//! ```no_run
//! # async fn demo(app: steedos_wasm::app::App) -> anyhow::Result<()> {
//! use steedos_wasm::manifest::ClusterSettings;
//! use steedos_wasm::transport::Transport;
//! let mut settings = ClusterSettings::new("nats://127.0.0.1:4222");
//! settings.node_id = Some("shop-1".into());
//! let transport = Transport::start(app.broker.clone(), settings).await?;
//! // Actions of other nodes are now callable through app.broker.
//! transport.stop(std::time::Duration::from_secs(5)).await;
//! # Ok(()) }
//! ```
//!
//! # Trust
//! The bus is a trust boundary: every packet is untrusted and any peer may
//! claim any node id (see the README's trust model). Node ids are checked
//! before they reach a subject, call ids are random and a RES is taken only
//! from the node asked, only `publish`ed actions are announced and served,
//! and what a peer can make this node keep is bounded ([`bounds`]). The
//! server's own security (credentials, TLS) is set up in `connect`.
//!
//! Not supported: streams, `disableBalancer` (REQB/EVENTB subjects),
//! event acknowledgements, and other transporters than NATS and Redis.

//!
//! # Rooms
//! - `transit`: the protocol: packets in and out, pending calls, discovery;
//!   `serve` its calls in.
//! - `route`: the broker's route out (calls and events to other nodes).
//! - `bus`: the bus the protocol speaks on, whichever it is; `nats` and
//!   `connect` the NATS one (subscriptions, the outbox; credentials and
//!   TLS), `redis` the Redis pub/sub one.
//! - [`packet`]: the packets as types; [`registry`]: the remote nodes;
//!   [`bounds`]: what a peer may make this node keep or do.

pub mod bounds;
mod bus;
mod connect;
mod error;
mod inbox;
mod internals;
mod nats;
pub mod packet;
mod redis;
pub mod registry;
mod route;
pub mod schema;
mod serve;
mod transit;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::manifest::ClusterSettings;
use bus::Bus;
pub use connect::redact;
pub use error::TransportError;
use packet::Kind;
pub use registry::NodeReport;
use route::Route;
pub use transit::default_node_id;
use transit::{Transit, lock, now_ms};

/// Counters of one node's traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// REQ packets answered.
    pub requests_served: u64,
    /// EVENT packets handed to the local subscribers.
    pub events_received: u64,
    /// Calls of ours waiting for a RES now.
    pub calls_waiting: usize,
    /// Packets dropped: malformed, too large, from a bad sender, refused.
    pub packets_dropped: u64,
    /// Remote nodes remembered now.
    pub nodes_known: usize,
    /// Bytes of the INFO packets remembered now.
    pub info_bytes: usize,
    /// Senders remembered for speaking another protocol version.
    pub wrong_version_senders: usize,
}

/// A running node of the cluster. [`Transport::stop`] leaves it cleanly;
/// dropped, its tasks end without a goodbye.
pub struct Transport {
    shared: Arc<Transit>,
    tasks: Vec<JoinHandle<()>>,
}

impl Transport {
    /// Connects to the transporter, joins the cluster and routes the
    /// broker's unserved calls and its events through it.
    pub async fn start(
        broker: Arc<Broker>,
        settings: ClusterSettings,
    ) -> Result<Transport, TransportError> {
        let node_id: Arc<str> = settings
            .node_id
            .clone()
            .unwrap_or_else(default_node_id)
            .into();
        let prefix = subject_prefix(&node_id, settings.namespace.as_deref())?;
        if let Some(t) = broker.telemetry() {
            t.set_node(node_id.clone());
        }
        let drops = Arc::new(bounds::DropLog::with_metric(
            broker.metrics().cluster_packets_dropped(),
        ));
        let (bus, outgoing) =
            Bus::connect(&settings, &node_id, prefix.clone(), drops.clone()).await?;
        let shared = Arc::new(Transit::new(
            broker.clone(),
            bus,
            settings,
            node_id,
            &prefix,
            drops,
        ));
        let mut tasks = Vec::new();
        for (kind, subscriber) in shared.bus.subscribe_all(&shared.node_id).await? {
            tasks.push(tokio::spawn(shared.clone().listen(kind, subscriber)));
        }
        let weak = Arc::downgrade(&shared);
        tasks.push(tokio::spawn(bus::send_outbox(
            shared.bus.link().clone(),
            outgoing,
            move |id, why| {
                if let Some(shared) = weak.upgrade() {
                    shared.unsent(id, why);
                }
            },
        )));
        shared
            .bus
            .flush()
            .await
            .map_err(|message| TransportError::Connect {
                url: redact(&shared.settings.transporter),
                message,
            })?;
        broker.set_remote(Some(Arc::new(Route(shared.clone()))));
        internals::install(&shared);
        shared.join().await?;
        tasks.push(tokio::spawn(shared.clone().beat()));
        tracing::info!(node = %shared.node_id, transporter = %redact(&shared.settings.transporter), protocol = shared.ver, "joined the cluster");
        Ok(Transport { shared, tasks })
    }

    /// Broadcasts this node's INFO now (after its packages started), rather
    /// than at the next heartbeat.
    pub async fn announce(&self) -> Result<(), TransportError> {
        self.shared.send_info(None, false).await
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.shared.node_id
    }

    /// The remote nodes known now.
    pub fn nodes(&self) -> Vec<NodeReport> {
        self.shared.registry().reports()
    }

    /// What this node has handled so far.
    pub fn stats(&self) -> TransportStats {
        let registry = self.shared.registry();
        TransportStats {
            requests_served: self.shared.requests_served.load(Ordering::Relaxed),
            events_received: self.shared.events_received.load(Ordering::Relaxed),
            calls_waiting: lock(&self.shared.pending).len(),
            packets_dropped: self.shared.drops.total(),
            nodes_known: registry.len(),
            info_bytes: registry.info_bytes(),
            wrong_version_senders: lock(&self.shared.wrong_version).len(),
        }
    }

    /// Whether some remote node serves `action` now.
    pub fn serves(&self, action: &str) -> bool {
        self.shared.registry().serves(action)
    }

    /// Waits until some remote node serves `action`, for at most `within`.
    pub async fn wait_for_action(&self, action: &str, within: Duration) -> bool {
        let end = Instant::now() + within;
        loop {
            if self.serves(action) {
                return true;
            }
            if Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Sends a PING to `node`; the round trip.
    pub async fn ping(&self, node: &str, within: Duration) -> Result<Duration, TransportError> {
        if let Some(problem) = bounds::token_problem(node) {
            return Err(TransportError::Settings {
                key: "node",
                problem,
            });
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        let (tx, rx) = oneshot::channel();
        lock(&self.shared.pings).insert(id.clone(), tx);
        let ping = packet::Ping {
            ver: self.shared.ver.into(),
            sender: self.shared.node_id.to_string(),
            id: id.clone(),
            time: now_ms(),
            arrived: None,
        };
        let sent = self
            .shared
            .publish_now(Kind::Ping, self.shared.bus.subject_to("PING", node), &ping)
            .await;
        let answer = match sent {
            Ok(()) => tokio::time::timeout(within, rx)
                .await
                .ok()
                .and_then(Result::ok),
            Err(e) => {
                lock(&self.shared.pings).remove(&id);
                return Err(e);
            }
        };
        lock(&self.shared.pings).remove(&id);
        answer.ok_or(TransportError::NoAnswer {
            kind: "PING",
            node: node.to_string(),
            within,
        })
    }

    /// Leaves the cluster cleanly: an INFO with no services so that no new
    /// calls come, the calls in flight from other nodes finish (up to
    /// `grace`), then DISCONNECT. Calls of ours still waiting on other
    /// nodes fail.
    pub async fn stop(mut self, grace: Duration) {
        let shared = self.shared.clone();
        shared.leaving.store(true, Ordering::Release);
        shared.broker.set_remote(None);
        shared.broker.set_internal(None);
        if let Err(e) = shared.send_info(None, true).await {
            tracing::warn!(node = %shared.node_id, error = %e, "could not announce leaving");
        }
        let deadline = Instant::now() + grace;
        while shared.serving.load(Ordering::Acquire) > 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let bye = packet::HeaderOut {
            ver: shared.ver,
            sender: &shared.node_id,
        };
        if let Err(e) = shared
            .publish_now(Kind::Disconnect, shared.bus.subject("DISCONNECT"), &bye)
            .await
        {
            tracing::warn!(node = %shared.node_id, error = %e, "could not say DISCONNECT");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), shared.bus.flush()).await;
        shared.fail_all("this node is leaving the cluster");
        for task in self.tasks.drain(..) {
            task.abort();
        }
        tracing::info!(node = %shared.node_id, "left the cluster");
    }

    /// Ends this node's part in the cluster at once, with no INFO and no
    /// DISCONNECT: to other nodes it looks like a crash (for tests).
    pub fn abort(mut self) {
        self.shared.broker.set_remote(None);
        self.shared.leaving.store(true, Ordering::Release);
        self.shared.fail_all("this node left the cluster");
        for task in self.tasks.drain(..) {
            task.abort();
        }
    }
}

impl Drop for Transport {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// `MOL`, or `MOL-<namespace>`, once this node's id and the namespace are
/// known to be fit for a subject (ours go into subjects just like peers' ids).
fn subject_prefix(node_id: &str, namespace: Option<&str>) -> Result<String, TransportError> {
    if let Some(problem) = bounds::token_problem(node_id) {
        return Err(TransportError::Settings {
            key: "node_id",
            problem,
        });
    }
    if let Some(problem) = namespace.and_then(bounds::token_problem) {
        return Err(TransportError::Settings {
            key: "namespace",
            problem,
        });
    }
    Ok(match namespace {
        Some(ns) => format!("MOL-{ns}"),
        None => "MOL".to_string(),
    })
}

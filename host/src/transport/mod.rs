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
//! event acknowledgements, and other transporters than NATS.

pub mod bounds;
mod connect;
pub mod packet;
pub mod registry;
pub mod schema;

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::task::Poll;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_nats::{Client, Subject};
use bytes::Bytes;
use futures_util::{FutureExt, StreamExt};
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::broker::{Broker, RemoteParams, RemoteRoute};
use crate::context::{CallContext, CallError, Human, next_request_id};
use crate::manifest::{ClusterSettings, pattern_matches};
use crate::package::BoxFuture;
use bounds::DropLog;
pub use connect::redact;
use packet::{Data, Wire};
pub use registry::NodeReport;
use registry::{Joined, Registry};

/// A call from another node may wait this long when it names no timeout
/// (the package's own timeout still applies).
const NO_CALLER_TIMEOUT: Duration = Duration::from_secs(3600);

/// How many tasks read this node's EVENT subject (see [`Transport::start`]):
/// one per core, up to four.
fn event_readers() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 4))
}

/// Why the transport could not start or do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The NATS server could not be reached, or refused us.
    #[error("cannot connect to the transporter {url}: {message}")]
    Connect {
        /// The transporter URL, without its password.
        url: String,
        /// The cause.
        message: String,
    },
    /// A credential or TLS file could not be read.
    #[error("NATS credentials: {0}")]
    Credentials(String),
    /// This node's id or namespace cannot be part of a subject.
    #[error("cluster setting `{key}`: {problem}")]
    Settings {
        /// `node_id`, `namespace`, or `node` (a node id given to ping).
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
    /// A packet was refused: it would pass a bound of this node.
    #[error("{kind} refused: {why}")]
    Refused {
        /// The packet kind.
        kind: &'static str,
        /// Which bound.
        why: String,
    },
    /// A subscription was refused.
    #[error("cannot subscribe to `{subject}`: {message}")]
    Subscribe {
        /// The subject.
        subject: String,
        /// The cause.
        message: String,
    },
    /// A packet could not be sent.
    #[error("cannot send {kind} to `{subject}`: {message}")]
    Publish {
        /// The packet kind.
        kind: &'static str,
        /// The subject.
        subject: String,
        /// The cause.
        message: String,
    },
    /// A packet could not be written.
    #[error(transparent)]
    Packet(#[from] packet::PacketError),
    /// No answer in time.
    #[error("node `{node}` did not answer {kind} within {}", Human(*.within))]
    NoAnswer {
        /// The packet kind.
        kind: &'static str,
        /// The node asked.
        node: String,
        /// How long we waited.
        within: Duration,
    },
}

/// The packets this node listens for, by subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Discover,
    Info,
    Heartbeat,
    Request,
    Response,
    Event,
    Ping,
    Pong,
    Disconnect,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Discover => "DISCOVER",
            Kind::Info => "INFO",
            Kind::Heartbeat => "HEARTBEAT",
            Kind::Request => "REQ",
            Kind::Response => "RES",
            Kind::Event => "EVENT",
            Kind::Ping => "PING",
            Kind::Pong => "PONG",
            Kind::Disconnect => "DISCONNECT",
        }
    }
}

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

/// A call sent to another node, waiting for its RES.
struct Pending {
    node: Arc<str>,
    action: Arc<str>,
    reply: oneshot::Sender<Result<Value, CallError>>,
}

/// A running node of the cluster. [`Transport::stop`] leaves it cleanly;
/// dropped, its tasks end without a goodbye.
pub struct Transport {
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

struct Shared {
    broker: Arc<Broker>,
    client: Client,
    settings: ClusterSettings,
    node_id: Arc<str>,
    instance_id: String,
    ver: &'static str,
    wire: Wire,
    prefix: String,
    registry: RwLock<Registry>,
    /// Our calls waiting for a RES, by their random 128-bit id: a peer
    /// that did not see the REQ cannot guess one.
    pending: Mutex<HashMap<u128, Pending>>,
    next_id: AtomicU64,
    seq: AtomicU64,
    /// The INFO services last sent, to notice deploys and removals.
    sent_services: Mutex<Value>,
    pings: Mutex<HashMap<String, oneshot::Sender<Duration>>>,
    /// Calls from other nodes under way; stop waits for them.
    serving: AtomicUsize,
    requests_served: AtomicU64,
    events_received: AtomicU64,
    leaving: AtomicBool,
    /// Senders whose packets spoke another protocol version (warned
    /// once; at most [`bounds::MAX_WRONG_VERSION`]).
    wrong_version: Mutex<HashSet<String>>,
    /// Packets dropped, logged at most once a second.
    drops: DropLog,
    /// Bytes of EVENT packets in hand ([`bounds::EVENT_BUDGET`]).
    event_budget: Arc<Semaphore>,
    /// Packets to publish, in order: events, from code that cannot wait,
    /// and the REQs of our calls. One task hands them to the client back
    /// to back, so it gets them in bursts and writes them together; when
    /// each caller published its own REQ, the client woke for a write of
    /// one or two (about a fifth fewer calls/s at 100 callers, measured).
    outbox: mpsc::UnboundedSender<Outgoing>,
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
        // Ours go into subjects just like peers' ids: the same rule.
        if let Some(problem) = bounds::token_problem(&node_id) {
            return Err(TransportError::Settings {
                key: "node_id",
                problem,
            });
        }
        if let Some(problem) = settings
            .namespace
            .as_deref()
            .and_then(bounds::token_problem)
        {
            return Err(TransportError::Settings {
                key: "namespace",
                problem,
            });
        }
        let prefix = match &settings.namespace {
            Some(ns) => format!("MOL-{ns}"),
            None => "MOL".to_string(),
        };
        let client = connect::connect(
            &settings,
            format!("steedos-wasm {node_id}"),
            bounds::SUBSCRIPTION_BUFFER,
        )
        .await?;
        let (outbox, outgoing) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            broker: broker.clone(),
            client: client.clone(),
            node_id: node_id.clone(),
            instance_id: format!("{}-{}", next_request_id(), std::process::id()),
            ver: if settings.protocol == 5 { "5" } else { "4" },
            wire: Wire(settings.serializer),
            registry: RwLock::new(Registry::new(&prefix)),
            prefix,
            settings,
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            seq: AtomicU64::new(1),
            sent_services: Mutex::new(Value::Null),
            pings: Mutex::new(HashMap::new()),
            serving: AtomicUsize::new(0),
            requests_served: AtomicU64::new(0),
            events_received: AtomicU64::new(0),
            leaving: AtomicBool::new(false),
            wrong_version: Mutex::new(HashSet::new()),
            drops: DropLog::default(),
            event_budget: Arc::new(Semaphore::new(bounds::EVENT_BUDGET)),
            outbox,
        });
        let p = &shared.prefix;
        let subscriptions = [
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
        let mut tasks = Vec::new();
        for (kind, subject) in subscriptions {
            // Events are read by several tasks at once, one queue-group
            // subscription each: nats-server hands each EVENT to one of
            // them, so deliveries run on every core (their order was never
            // kept: a delivery that waits goes on in a task of its own).
            let readers = match kind {
                Kind::Event => event_readers(),
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
                tasks.push(tokio::spawn(shared.clone().listen(kind, subscriber)));
            }
        }
        tasks.push(tokio::spawn(send_outbox(
            client.clone(),
            Arc::downgrade(&shared),
            outgoing,
        )));
        client.flush().await.map_err(|e| TransportError::Connect {
            url: redact(&shared.settings.transporter),
            message: e.to_string(),
        })?;
        broker.set_remote(Some(Arc::new(Route(shared.clone()))));
        shared
            .publish_now(
                Kind::Discover,
                shared.subject("DISCOVER"),
                &packet::HeaderOut {
                    ver: shared.ver,
                    sender: &node_id,
                },
            )
            .await?;
        shared.send_info(None, false).await?;
        tasks.push(tokio::spawn(shared.clone().beat()));
        tracing::info!(node = %node_id, transporter = %redact(&shared.settings.transporter), protocol = shared.ver, "joined the cluster");
        Ok(Transport { shared, tasks })
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
            .publish_now(Kind::Ping, self.shared.subject_to("PING", node), &ping)
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
            .publish_now(Kind::Disconnect, shared.subject("DISCONNECT"), &bye)
            .await
        {
            tracing::warn!(node = %shared.node_id, error = %e, "could not say DISCONNECT");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), shared.client.flush()).await;
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

/// A packet queued for [`send_outbox`].
struct Outgoing {
    subject: Subject,
    bytes: Bytes,
    /// For a REQ, the id of its pending call: the call fails at once when
    /// the packet cannot be sent.
    call: Option<u128>,
}

/// Publishes what [`Shared::post`] and our calls queued, in order.
async fn send_outbox(
    client: Client,
    shared: Weak<Shared>,
    mut outgoing: mpsc::UnboundedReceiver<Outgoing>,
) {
    while let Some(out) = outgoing.recv().await {
        if let Err(e) = client.publish(out.subject.clone(), out.bytes).await {
            match (out.call, shared.upgrade()) {
                (Some(id), Some(shared)) => shared.unsent(id, &e.to_string()),
                _ => tracing::warn!(subject = %out.subject, error = %e, "packet not sent"),
            }
        }
    }
}

impl Shared {
    fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    fn registry_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    fn subject(&self, kind: &str) -> Subject {
        format!("{}.{kind}", self.prefix).into()
    }

    fn subject_to(&self, kind: &str, node: &str) -> Subject {
        format!("{}.{kind}.{node}", self.prefix).into()
    }

    /// Writes and publishes a packet, waiting for the client to take it.
    async fn publish_now<T: serde::Serialize>(
        &self,
        kind: Kind,
        subject: Subject,
        packet: &T,
    ) -> Result<(), TransportError> {
        let bytes = self.wire.encode(kind.name(), packet)?;
        self.client
            .publish(subject.clone(), bytes.into())
            .await
            .map_err(|e| TransportError::Publish {
                kind: kind.name(),
                subject: subject.to_string(),
                message: e.to_string(),
            })
    }

    /// Fails the pending call `id`: its REQ could not be sent.
    fn unsent(&self, id: u128, why: &str) {
        if let Some(p) = lock(&self.pending).remove(&id) {
            let _ = p.reply.send(Err(CallError::Overloaded(format!(
                "{}: cannot send the request to node `{}`: {why}",
                p.action, p.node
            ))));
        }
    }

    /// Writes a packet and queues it, for code that cannot wait.
    fn post<T: serde::Serialize>(&self, kind: Kind, subject: Subject, packet: &T) {
        match self.wire.encode(kind.name(), packet) {
            Ok(bytes) => {
                let _ = self.outbox.send(Outgoing {
                    subject,
                    bytes: bytes.into(),
                    call: None,
                });
            }
            Err(e) => tracing::warn!(error = %e, "packet not sent"),
        }
    }

    /// Sends INFO, broadcast or to one node; `empty` announces no services
    /// (leaving). A change of services since the last INFO bumps `seq`.
    async fn send_info(&self, to: Option<&str>, empty: bool) -> Result<(), TransportError> {
        let services = match empty {
            true => Value::Array(Vec::new()),
            false => self.announced(),
        };
        let seq = {
            let mut sent = lock(&self.sent_services);
            if *sent != services {
                let first = sent.is_null();
                *sent = services.clone();
                if first {
                    self.seq.load(Ordering::Relaxed)
                } else {
                    self.seq.fetch_add(1, Ordering::Relaxed) + 1
                }
            } else {
                self.seq.load(Ordering::Relaxed)
            }
        };
        let info = json!({
            "ver": self.ver,
            "sender": &*self.node_id,
            "services": services,
            "ipList": ["127.0.0.1"],
            "hostname": hostname(),
            "client": { "type": "rust", "version": env!("CARGO_PKG_VERSION"), "langVersion": "steedos-wasm" },
            "config": {},
            "instanceID": self.instance_id,
            "metadata": {},
            "seq": seq,
        });
        let subject = match to {
            Some(node) => self.subject_to("INFO", node),
            None => self.subject("INFO"),
        };
        self.publish_now(Kind::Info, subject, &info).await
    }

    /// The services this node announces: its packages with the actions
    /// `publish` lets out (none when it does not `advertise`).
    fn announced(&self) -> Value {
        if !self.settings.advertise {
            return Value::Array(Vec::new());
        }
        let mut services = schema::services(&self.broker);
        if self.settings.publish.iter().any(|p| p == "*") {
            return services;
        }
        if let Value::Array(list) = &mut services {
            for service in list {
                if let Some(Value::Object(actions)) = service.get_mut("actions") {
                    actions.retain(|name, _| self.published(name));
                }
            }
        }
        services
    }

    /// Whether other nodes may call `action` here.
    fn published(&self, action: &str) -> bool {
        self.settings.advertise
            && self
                .settings
                .publish
                .iter()
                .any(|p| pattern_matches(p, action))
    }

    /// The HEARTBEAT loop: beats, drops silent nodes, re-announces changed services.
    async fn beat(self: Arc<Self>) {
        let mut every = tokio::time::interval(self.settings.heartbeat_interval);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            every.tick().await;
            if self.leaving.load(Ordering::Acquire) {
                return;
            }
            let beat = packet::HeartbeatOut {
                ver: self.ver,
                sender: &self.node_id,
                cpu: cpu_percent(),
            };
            if let Err(e) = self
                .publish_now(Kind::Heartbeat, self.subject("HEARTBEAT"), &beat)
                .await
            {
                tracing::warn!(node = %self.node_id, error = %e, "heartbeat not sent");
            }
            let silent = self.registry().silent_for(self.settings.heartbeat_timeout);
            for node in silent {
                self.lose(
                    &node,
                    &format!(
                        "no heartbeat for {}",
                        Human(self.settings.heartbeat_timeout)
                    ),
                );
            }
            let changed = self.settings.advertise && *lock(&self.sent_services) != self.announced();
            if changed && let Err(e) = self.send_info(None, false).await {
                tracing::warn!(node = %self.node_id, error = %e, "INFO not sent");
            }
        }
    }

    /// Drops `node` and fails the calls in flight to it.
    fn lose(&self, node: &str, why: &str) {
        if !self.registry_mut().remove(node) {
            return;
        }
        tracing::warn!(node, reason = why, "node lost");
        let lost: Vec<Pending> = {
            let mut pending = lock(&self.pending);
            let ids: Vec<u128> = pending
                .iter()
                .filter(|(_, p)| &*p.node == node)
                .map(|(id, _)| *id)
                .collect();
            ids.into_iter()
                .filter_map(|id| pending.remove(&id))
                .collect()
        };
        for p in lost {
            let _ = p.reply.send(Err(CallError::Crashed(format!(
                "{}: node `{node}` was lost ({why}) while the call was in flight; it may or may not have run",
                p.action
            ))));
        }
    }

    fn fail_all(&self, why: &str) {
        let all: Vec<Pending> = lock(&self.pending).drain().map(|(_, p)| p).collect();
        for p in all {
            let _ = p
                .reply
                .send(Err(CallError::Overloaded(format!("{}: {why}", p.action))));
        }
    }

    /// Reads every packet of one subscription.
    async fn listen(self: Arc<Self>, kind: Kind, mut subscriber: async_nats::Subscriber) {
        if kind == Kind::Event {
            return self.listen_events(subscriber).await;
        }
        while let Some(message) = subscriber.next().await {
            if self.fits(kind, &message.payload) {
                self.handle_guarded(kind, message.payload).await;
            }
        }
    }

    /// Reads EVENTs: a delivery waits while its subscribers have no room
    /// (backpressure), and the events read meanwhile wait here, within
    /// [`bounds::EVENT_BUDGET`] bytes; past it they are dropped and counted.
    /// The subscription itself is always drained: the NATS client, left to
    /// buffer, would drop a burst anyway and hold up to its capacity in
    /// messages of any size.
    async fn listen_events(self: Arc<Self>, mut subscriber: async_nats::Subscriber) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let read = async {
            let tx = tx; // dropped when the subscription ends, ending `deliver`
            while let Some(message) = subscriber.next().await {
                if !self.fits(Kind::Event, &message.payload) {
                    continue;
                }
                let cost = message.payload.len() + bounds::EVENT_OVERHEAD;
                let cost = u32::try_from(cost.min(bounds::EVENT_BUDGET)).unwrap_or(u32::MAX);
                let Ok(held) = self.event_budget.clone().try_acquire_many_owned(cost) else {
                    self.dropped(
                        Kind::Event,
                        "the events waiting for subscribers here passed their budget",
                    );
                    continue;
                };
                if tx.send((message.payload, held)).is_err() {
                    return;
                }
            }
        };
        let deliver = async {
            while let Some((bytes, _held)) = rx.recv().await {
                self.handle_guarded(Kind::Event, bytes).await;
            }
        };
        // One task for both: aborting the reader ends both.
        tokio::join!(read, deliver);
    }

    /// Whether a packet is small enough to read at all.
    fn fits(&self, kind: Kind, bytes: &[u8]) -> bool {
        let fits = bytes.len() <= bounds::MAX_PACKET;
        if !fits {
            self.dropped(
                kind,
                &format!("{} bytes, over {}", bytes.len(), bounds::MAX_PACKET),
            );
        }
        fits
    }

    /// Handles one packet; a bad one (even one that panics a handler) is
    /// dropped and logged, and the reader goes on with the next.
    async fn handle_guarded(self: &Arc<Self>, kind: Kind, bytes: Bytes) {
        match AssertUnwindSafe(self.handle(kind, bytes))
            .catch_unwind()
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => self.dropped(kind, &e.to_string()),
            Err(_) => self.dropped(kind, "its handler panicked"),
        }
    }

    /// Counts a dropped packet and logs it, at most once a second.
    fn dropped(&self, kind: Kind, why: &str) {
        if let Some(unlogged) = self.drops.note() {
            tracing::warn!(node = %self.node_id, packet = kind.name(), reason = ?bounds::clip(why, 300), also_dropped = unlogged, "packet dropped");
        }
    }

    /// Whether a packet from `sender` in version `ver` is for us.
    fn accept(&self, kind: Kind, ver: &str, sender: &str) -> bool {
        if sender == &*self.node_id {
            return false;
        }
        if !bounds::valid_node_id(sender) {
            self.dropped(kind, &format!("bad sender {:?}", bounds::shorten(sender)));
            return false;
        }
        if ver != self.ver {
            let mut seen = lock(&self.wrong_version);
            if seen.len() < bounds::MAX_WRONG_VERSION && seen.insert(sender.to_string()) {
                tracing::warn!(
                    node = sender,
                    their = ?bounds::shorten(ver),
                    ours = self.ver,
                    "node speaks another protocol version; its packets are ignored"
                );
            }
            return false;
        }
        true
    }

    async fn handle(self: &Arc<Self>, kind: Kind, bytes: Bytes) -> Result<(), TransportError> {
        let wire = self.wire;
        match kind {
            Kind::Request => {
                self.serving.fetch_add(1, Ordering::AcqRel);
                let mut serve = Box::pin(self.clone().serve(bytes));
                // Most calls finish within their first poll: serve them here,
                // without a task hop. One that waits (for an instance, a
                // nested call, or a guest yielding at an epoch tick, 5 ms at
                // most) goes on in a task of its own.
                let first = std::future::poll_fn(|cx| Poll::Ready(serve.as_mut().poll(cx))).await;
                if first.is_pending() {
                    tokio::spawn(serve);
                }
            }
            Kind::Response => {
                let res = wire.decode_response(&bytes)?;
                if self.accept(kind, &res.ver, &res.sender) {
                    self.answer(res);
                }
            }
            Kind::Event => {
                let event = wire.decode_event(&bytes)?;
                if self.accept(kind, &event.ver, &event.sender) {
                    self.deliver(event).await;
                }
            }
            Kind::Discover => {
                let h: packet::Header = wire.decode("DISCOVER", &bytes)?;
                if self.accept(kind, &h.ver, &h.sender) {
                    self.send_info(Some(&h.sender), false).await?;
                }
            }
            Kind::Info => {
                let info: packet::Info = wire.decode("INFO", &bytes)?;
                if info.sender == *self.node_id
                    && info.instance_id.as_deref() != Some(&self.instance_id)
                {
                    tracing::error!(node = %self.node_id, "another node uses this node id; give each node its own `node_id`");
                }
                if self.accept(kind, &info.ver, &info.sender) {
                    let joined = self
                        .registry_mut()
                        .apply_info(&info, bytes.len())
                        .map_err(|why| TransportError::Refused { kind: "INFO", why })?;
                    match joined {
                        Joined::New => {
                            tracing::info!(node = %info.sender, services = info.services.len(), "node joined")
                        }
                        Joined::Restarted => {
                            tracing::info!(node = %info.sender, "node restarted");
                        }
                        Joined::Updated => tracing::debug!(node = %info.sender, "node updated"),
                        Joined::Same => {}
                    }
                }
            }
            Kind::Heartbeat => {
                let h: packet::Heartbeat = wire.decode("HEARTBEAT", &bytes)?;
                if self.accept(kind, &h.ver, &h.sender) && !self.registry_mut().heartbeat(&h.sender)
                {
                    // A node we do not know (or lost): ask for its INFO.
                    let ask = packet::HeaderOut {
                        ver: self.ver,
                        sender: &self.node_id,
                    };
                    self.publish_now(Kind::Discover, self.subject_to("DISCOVER", &h.sender), &ask)
                        .await?;
                }
            }
            Kind::Disconnect => {
                let h: packet::Header = wire.decode("DISCONNECT", &bytes)?;
                if self.accept(kind, &h.ver, &h.sender) {
                    self.lose(&h.sender, "it disconnected");
                }
            }
            Kind::Ping => {
                let ping: packet::Ping = wire.decode("PING", &bytes)?;
                if self.accept(kind, &ping.ver, &ping.sender) {
                    let to = self.subject_to("PONG", &ping.sender);
                    let pong = packet::Ping {
                        ver: self.ver.into(),
                        sender: self.node_id.to_string(),
                        id: ping.id,
                        time: ping.time,
                        arrived: Some(now_ms()),
                    };
                    self.publish_now(Kind::Pong, to, &pong).await?;
                }
            }
            Kind::Pong => {
                let pong: packet::Ping = wire.decode("PONG", &bytes)?;
                if let Some(tx) = lock(&self.pings).remove(&pong.id) {
                    let rtt = now_ms().saturating_sub(pong.time);
                    let rtt = Duration::from_millis(u64::try_from(rtt).unwrap_or(0));
                    let _ = tx.send(rtt);
                }
            }
        }
        Ok(())
    }

    /// Runs a REQ from another node on this host's packages and answers it.
    async fn serve(self: Arc<Self>, bytes: Bytes) {
        let _serving = Serving(&self.serving);
        let req = match self.wire.decode_request(&bytes) {
            Ok(req) => req,
            Err(e) => {
                tracing::debug!(node = %self.node_id, error = %e, "packet dropped");
                return;
            }
        };
        if !self.accept(Kind::Request, &req.ver, &req.sender) {
            return;
        }
        let timeout = bounds::caller_timeout(req.timeout, NO_CALLER_TIMEOUT);
        // Ids and names travel on into logs and our own packets: cut to a sane length.
        let request_id = req.request_id.as_deref().unwrap_or(&req.id);
        let request_id = bounds::clip(request_id, bounds::MAX_NAME);
        let mut ctx = CallContext::with_request_id(request_id, timeout);
        // The caller's place in the call tree on its node: the depth limit
        // counts those levels, and the callee sees who called it.
        ctx.upstream_levels = req.level.map_or(0, |l| l.saturating_sub(1));
        ctx.upstream_caller = req
            .caller
            .as_deref()
            .map(|c| Arc::from(bounds::clip(c, bounds::MAX_NAME)));
        let pairs = packet::meta_pairs(req.meta.as_ref());
        if !pairs.is_empty() {
            ctx.meta = pairs.into();
        }
        let outcome = match (&req.params, req.stream) {
            // Unpublished actions do not exist for the cluster, even when a
            // package here serves them.
            _ if !self.published(&req.action) => Err(CallError::NotFound(format!(
                "{}: no such action on node `{}`",
                bounds::shorten(&req.action),
                self.node_id
            ))),
            (_, Some(true)) => Err(CallError::InvalidParams(format!(
                "{}: streams are not supported by steedos-wasm",
                req.action
            ))),
            (Some(params), _) => match params.to_json() {
                Ok(json) => self.broker.call_json_local(&req.action, &json, ctx).await,
                Err(e) => Err(CallError::InvalidParams(format!(
                    "{}: params are not JSON: {e}",
                    req.action
                ))),
            },
            (None, _) => self.broker.call_json_local(&req.action, b"", ctx).await,
        };
        tracing::debug!(node = %self.node_id, from = %req.sender, action = ?req.action, request_id = ?req.request_id, level = ?req.level, caller = ?req.caller, ok = outcome.is_ok(), "served a remote call");
        let (data, error) = match outcome {
            Ok(v) => (Some(Data::Value(v)), None),
            Err(e) => (
                None,
                Some(packet::error_to_wire(&e, &req.action, &self.node_id)),
            ),
        };
        let res = packet::ResponseOut {
            ver: self.ver,
            sender: &self.node_id,
            id: &req.id,
            success: error.is_none(),
            data: data.as_ref(),
            error: error.as_ref(),
            meta: req.meta.as_ref().unwrap_or(packet::empty_object()),
            headers: packet::headers(self.ver),
            stream: false,
        };
        self.requests_served.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self
            .publish_now(Kind::Response, self.subject_to("RES", &req.sender), &res)
            .await
        {
            tracing::warn!(node = %self.node_id, to = %req.sender, action = ?req.action, error = %e, "response not sent");
        }
    }

    /// Completes the call a RES answers.
    fn answer(&self, res: packet::Response<'_, Data<'_>>) {
        let Ok(id) = uuid::Uuid::try_parse(&res.id).map(|u| u.as_u128()) else {
            return;
        };
        // Only the node the call went to may answer it.
        let pending = {
            let mut pending = lock(&self.pending);
            match pending.get(&id) {
                Some(p) if *p.node == *res.sender => pending.remove(&id),
                _ => None, // timed out already, or not its call
            }
        };
        let Some(pending) = pending else { return };
        let result = match (res.success, res.error) {
            (true, _) => match res.data.map(Data::into_value).transpose() {
                Ok(v) => Ok(v.unwrap_or(Value::Null)),
                Err(e) => Err(CallError::Failed(format!(
                    "{} on node `{}`: the result is not JSON: {e}",
                    pending.action, res.sender
                ))),
            },
            (false, Some(error)) => {
                Err(packet::error_from_wire(error, &pending.action, &res.sender))
            }
            (false, None) => Err(CallError::Failed(format!(
                "{} on node `{}` failed without an error",
                pending.action, res.sender
            ))),
        };
        let _ = pending.reply.send(result);
    }

    /// Hands an EVENT from another node to the subscribed packages; waits
    /// while they have no room for it (backpressure, not loss).
    async fn deliver(&self, event: packet::Event<'_, Data<'_>>) {
        let payload = match event.data.as_ref().map(Data::to_msgpack).transpose() {
            Ok(p) => p.unwrap_or_else(|| vec![0xc0]),
            Err(e) => {
                tracing::warn!(node = %self.node_id, from = %event.sender, event = ?bounds::shorten(&event.event), error = %e, "event payload has no MessagePack form; dropped");
                return;
            }
        };
        let request_id = event
            .request_id
            .clone()
            .or(event.id.clone())
            .map_or_else(next_request_id, Into::into);
        let mut ctx = CallContext::with_request_id(request_id, NO_CALLER_TIMEOUT);
        let pairs = packet::meta_pairs(event.meta.as_ref());
        if !pairs.is_empty() {
            ctx.meta = pairs.into();
        }
        let groups = if event.broadcast {
            None
        } else {
            event.groups.as_deref()
        };
        self.broker
            .deliver_remote_event(&event.event, payload, event.broadcast, groups, ctx)
            .await;
        self.events_received.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts one call from another node until dropped.
struct Serving<'a>(&'a AtomicUsize);

impl Drop for Serving<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Removes a pending call when its caller stops waiting before the answer.
struct PendingGuard {
    shared: Arc<Shared>,
    id: u128,
    /// The answer came: [`Shared::answer`] removed the entry already.
    answered: bool,
}

impl PendingGuard {
    fn answered(&mut self) {
        self.answered = true;
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        if !self.answered {
            lock(&self.shared.pending).remove(&self.id);
        }
    }
}

/// The broker's route to other nodes.
struct Route(Arc<Shared>);

impl RemoteRoute for Route {
    fn params(&self, action: &str) -> Option<Vec<(String, Value)>> {
        self.0.registry().params(action)
    }

    fn call(
        &self,
        action: &str,
        params: RemoteParams<'_>,
        ctx: &CallContext,
    ) -> Option<BoxFuture<'static, Result<Value, CallError>>> {
        let shared = &self.0;
        if shared.leaving.load(Ordering::Acquire) {
            return None;
        }
        let (node, subject) = shared.registry().pick(action)?;
        let data = match params {
            RemoteParams::Json(json) => shared.wire.data_from_json(json),
            RemoteParams::MessagePack(bytes) => shared.wire.data_from_msgpack(bytes, json!({})),
        };
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                let error = CallError::InvalidParams(format!("{action}: params are not JSON: {e}"));
                return Some(Box::pin(std::future::ready(Err(error))));
            }
        };
        // Random: a RES is taken only from the node asked and for an id
        // it was sent, and a peer that did not see the REQ cannot guess it.
        let uuid = uuid::Uuid::new_v4();
        let id = uuid.as_u128();
        let mut buf = uuid::Uuid::encode_buffer();
        let wire_id: &str = uuid.hyphenated().encode_lower(&mut buf);
        let meta = packet::meta_object(&ctx.meta);
        let req = packet::RequestOut {
            ver: shared.ver,
            sender: &shared.node_id,
            id: wire_id,
            action,
            params: &data,
            meta: &meta,
            headers: packet::headers(shared.ver),
            timeout: (ctx.remaining().as_secs_f64() * 1000.0).round().max(1.0),
            level: ctx.level(),
            tracing: None,
            parent_id: None,
            request_id: &ctx.request_id,
            caller: ctx.caller(),
            stream: false,
        };
        let bytes = match shared.wire.encode("REQ", &req) {
            Ok(b) => b,
            Err(e) => {
                return Some(Box::pin(std::future::ready(Err(CallError::InvalidParams(
                    format!("{action}: {e}"),
                )))));
            }
        };
        let (reply, answer) = oneshot::channel();
        let action: Arc<str> = action.into();
        lock(&shared.pending).insert(
            id,
            Pending {
                node: node.clone(),
                action: action.clone(),
                reply,
            },
        );
        let mut guard = PendingGuard {
            shared: shared.clone(),
            id,
            answered: false,
        };
        let deadline = ctx.deadline;
        let request_id = ctx.request_id.clone();
        Some(Box::pin(async move {
            let out = Outgoing {
                subject,
                bytes: bytes.into(),
                call: Some(id),
            };
            if guard.shared.outbox.send(out).is_err() {
                return Err(CallError::Overloaded(format!(
                    "{action}: the transport to node `{node}` closed"
                )));
            }
            let started = Instant::now();
            match tokio::time::timeout_at(deadline.into(), answer).await {
                Ok(Ok(result)) => {
                    guard.answered();
                    result
                }
                Ok(Err(_)) => Err(CallError::Overloaded(format!(
                    "{action}: the transport to node `{node}` closed"
                ))),
                Err(_) => {
                    tracing::debug!(%action, node = %node, request_id = %request_id, "remote call timed out");
                    Err(CallError::Timeout(format!(
                        "{action}: node `{node}` did not answer within {}",
                        Human(started.elapsed())
                    )))
                }
            }
        }))
    }

    fn publish(
        &self,
        event: &str,
        payload: &[u8],
        broadcast: bool,
        local_groups: &[Arc<str>],
        ctx: &CallContext,
    ) {
        let shared = &self.0;
        if shared.leaving.load(Ordering::Acquire) {
            return;
        }
        let targets = shared
            .registry()
            .event_targets(event, broadcast, local_groups);
        if targets.is_empty() {
            return;
        }
        let data = match shared.wire.data_from_msgpack(payload, Value::Null) {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(event, error = %e, "event payload has no JSON form; not sent to other nodes");
                return;
            }
        };
        let meta = packet::meta_object(&ctx.meta);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed).to_string();
        for (subject, groups) in targets {
            let out = packet::EventOut {
                ver: shared.ver,
                sender: &shared.node_id,
                id: &id,
                event,
                data: &data,
                groups: groups.as_deref(),
                broadcast,
                meta: &meta,
                headers: packet::headers(shared.ver),
                level: ctx.level(),
                tracing: None,
                parent_id: None,
                request_id: &ctx.request_id,
                caller: ctx.caller(),
                need_ack: None,
                stream: false,
            };
            shared.post(Kind::Event, subject, &out);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_string())
}

/// `<hostname>-<pid>`, Moleculer's default node id.
pub fn default_node_id() -> String {
    bounds::sanitize_node_id(&format!("{}-{}", hostname(), std::process::id()))
}

/// The one-minute load average as a percentage of the cores, for HEARTBEAT.
fn cpu_percent() -> f64 {
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| {
            l.split_whitespace()
                .next()
                .and_then(|x| x.parse::<f64>().ok())
        })
        .unwrap_or(0.0);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    (load / cores * 100.0).clamp(0.0, 100.0).round()
}

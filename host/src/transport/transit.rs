//! Transit: the Moleculer protocol of one node. Packets in (each kind
//! read, checked and acted on), packets out (INFO, HEARTBEAT, answers),
//! the calls of ours waiting for a RES, and discovery (who is out there,
//! kept in the [`registry`](super::registry)).
//!
//! It speaks to the bus only through [`Bus`] (subjects and bytes) and to
//! this host's packages only through the [`Broker`]; it must not open
//! connections of its own or reach into packages.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::task::Poll;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::FutureExt;
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};

use super::bounds::{self, Budget, DropLog, PeerRate};
use super::bus::{Bus, Inbox, Outgoing, Subject};
use super::error::TransportError;
use super::packet::{self, Data, Kind, Wire};
use super::registry::{Joined, Registry};
use super::schema;
use crate::broker::Broker;
use crate::context::{CallContext, CallError, ContextId, Human, Meta, ReplyMeta, next_request_id};
use crate::manifest::{ClusterSettings, pattern_matches};

/// A call from another node may wait this long when it names no timeout
/// (the package's own timeout still applies).
pub(super) const NO_CALLER_TIMEOUT: Duration = Duration::from_secs(3600);

/// A call sent to another node, waiting for its RES.
pub(super) struct Pending {
    pub(super) node: Arc<str>,
    pub(super) action: Arc<str>,
    pub(super) reply: oneshot::Sender<Result<Value, CallError>>,
    /// Where the RES's meta goes, when the caller wants it back.
    pub(super) meta: Option<ReplyMeta>,
}

/// One node's protocol state, shared by its reader tasks, the broker's
/// route to other nodes and the `Transport` handle.
pub(super) struct Transit {
    pub(super) broker: Arc<Broker>,
    pub(super) bus: Bus,
    pub(super) settings: ClusterSettings,
    pub(super) node_id: Arc<str>,
    pub(super) instance_id: String,
    pub(super) ver: &'static str,
    pub(super) wire: Wire,
    pub(super) registry: RwLock<Registry>,
    /// Our calls waiting for a RES, by their random 128-bit id: a peer
    /// that did not see the REQ cannot guess one.
    pub(super) pending: Mutex<HashMap<u128, Pending>>,
    pub(super) seq: AtomicU64,
    /// The INFO services last sent, to notice deploys and removals.
    pub(super) sent_services: Mutex<Value>,
    pub(super) pings: Mutex<HashMap<String, oneshot::Sender<Duration>>>,
    /// Calls from other nodes under way; stop waits for them.
    pub(super) serving: AtomicUsize,
    pub(super) requests_served: AtomicU64,
    pub(super) events_received: AtomicU64,
    pub(super) leaving: AtomicBool,
    /// Senders whose packets spoke another protocol version (warned
    /// once; at most [`bounds::MAX_WRONG_VERSION`]).
    pub(super) wrong_version: Mutex<HashSet<String>>,
    /// Packets dropped, logged at most once a second.
    pub(super) drops: Arc<DropLog>,
    /// Bytes of EVENT packets in hand ([`bounds::EVENT_BUDGET`]).
    pub(super) event_budget: Arc<Semaphore>,
    /// What each peer may make this node do per second, by packet kind.
    pub(super) floods: Floods,
}

impl Transit {
    /// The protocol state of `node_id`, connected through `bus`.
    pub(super) fn new(
        broker: Arc<Broker>,
        bus: Bus,
        settings: ClusterSettings,
        node_id: Arc<str>,
        prefix: &str,
        drops: Arc<DropLog>,
    ) -> Transit {
        Transit {
            broker,
            bus,
            node_id,
            instance_id: format!("{}-{}", next_request_id(), std::process::id()),
            ver: if settings.protocol == 5 { "5" } else { "4" },
            wire: Wire(settings.serializer),
            registry: RwLock::new(Registry::new(prefix)),
            settings,
            pending: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(1),
            sent_services: Mutex::new(Value::Null),
            pings: Mutex::new(HashMap::new()),
            serving: AtomicUsize::new(0),
            requests_served: AtomicU64::new(0),
            events_received: AtomicU64::new(0),
            leaving: AtomicBool::new(false),
            wrong_version: Mutex::new(HashSet::new()),
            drops,
            event_budget: Arc::new(Semaphore::new(bounds::EVENT_BUDGET)),
            floods: Floods::default(),
        }
    }

    /// Says hello: DISCOVER (who is out there?) and our INFO.
    pub(super) async fn join(&self) -> Result<(), TransportError> {
        let hello = packet::HeaderOut {
            ver: self.ver,
            sender: &self.node_id,
        };
        self.publish_now(Kind::Discover, self.bus.subject("DISCOVER"), &hello)
            .await?;
        self.send_info(None, false).await
    }

    pub(super) fn registry(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.registry.read().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn registry_mut(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.registry.write().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes and publishes a packet, waiting for the client to take it.
    pub(super) async fn publish_now<T: serde::Serialize>(
        &self,
        kind: Kind,
        subject: Subject,
        packet: &T,
    ) -> Result<(), TransportError> {
        let bytes = self.wire.encode(kind.name(), packet)?;
        self.bus.publish(kind, subject, bytes).await
    }

    /// Fails the pending call `id`: its REQ could not be sent.
    pub(super) fn unsent(&self, id: u128, why: &str) {
        if let Some(p) = lock(&self.pending).remove(&id) {
            let _ = p.reply.send(Err(CallError::Overloaded(format!(
                "{}: cannot send the request to node `{}`: {why}",
                p.action, p.node
            ))));
        }
    }

    /// Writes a packet and queues it, for code that cannot wait.
    pub(super) fn post<T: serde::Serialize>(&self, kind: Kind, subject: Subject, packet: &T) {
        match self.wire.encode(kind.name(), packet) {
            Ok(bytes) => {
                self.bus.queue(Outgoing {
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
    pub(super) async fn send_info(
        &self,
        to: Option<&str>,
        empty: bool,
    ) -> Result<(), TransportError> {
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
        let info = packet::InfoOut {
            ver: self.ver,
            sender: &self.node_id,
            services: &services,
            ip_list: ["127.0.0.1"],
            hostname: &hostname(),
            client: packet::ClientOut::THIS,
            config: packet::empty_object(),
            instance_id: &self.instance_id,
            metadata: packet::empty_object(),
            seq,
        };
        let subject = match to {
            Some(node) => self.bus.subject_to("INFO", node),
            None => self.bus.subject("INFO"),
        };
        self.publish_now(Kind::Info, subject, &info).await
    }

    /// The services this node announces: its packages with the actions
    /// `publish` lets out (none when it does not `advertise`).
    pub(super) fn announced(&self) -> Value {
        if !self.settings.advertise {
            return Value::Array(Vec::new());
        }
        let mut services = schema::services(&self.broker);
        if let Value::Array(list) = &mut services {
            list.push(schema::node::service_info());
        }
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
    pub(super) fn published(&self, action: &str) -> bool {
        let matches = |name: &str| {
            self.settings
                .publish
                .iter()
                .any(|p| pattern_matches(p, name))
        };
        self.settings.advertise
            && (action.starts_with("$node.")
                || matches(action)
                // `v2.greeter.hello` is published by the patterns of `greeter.hello`.
                || self
                    .broker
                    .find_action(action)
                    .is_some_and(|a| matches(&a.full_name())))
    }

    /// The HEARTBEAT loop: beats, drops silent nodes, re-announces changed services.
    pub(super) async fn beat(self: Arc<Self>) {
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
                .publish_now(Kind::Heartbeat, self.bus.subject("HEARTBEAT"), &beat)
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
    pub(super) fn lose(&self, node: &str, why: &str) {
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

    pub(super) fn fail_all(&self, why: &str) {
        let all: Vec<Pending> = lock(&self.pending).drain().map(|(_, p)| p).collect();
        for p in all {
            let _ = p
                .reply
                .send(Err(CallError::Overloaded(format!("{}: {why}", p.action))));
        }
    }

    /// Reads every packet of one subscription.
    pub(super) async fn listen(self: Arc<Self>, kind: Kind, mut inbox: Inbox) {
        if kind == Kind::Event {
            return self.listen_events(inbox).await;
        }
        while let Some(payload) = inbox.next().await {
            if self.fits(kind, &payload) {
                self.handle_guarded(kind, payload).await;
            }
        }
    }

    /// Reads EVENTs: a delivery waits while its subscribers have no room
    /// (backpressure), and the events read meanwhile wait here, within
    /// [`bounds::EVENT_BUDGET`] bytes; past it they are dropped and counted.
    /// The subscription is drained by a task that does nothing else (the
    /// deliveries run in a task of their own): the bus, left to buffer,
    /// drops what its subscription buffer cannot hold.
    async fn listen_events(self: Arc<Self>, mut inbox: Inbox) {
        let (tx, mut rx) = mpsc::unbounded_channel::<(Bytes, OwnedSemaphorePermit)>();
        let transit = self.clone();
        // Dropped with this reader (aborted or ended), it ends the deliveries.
        let _deliveries = AbortOnDrop(tokio::spawn(async move {
            while let Some((bytes, _held)) = rx.recv().await {
                transit.handle_guarded(Kind::Event, bytes).await;
            }
        }));
        while let Some(payload) = inbox.next().await {
            if !self.fits(Kind::Event, &payload) {
                continue;
            }
            let cost = payload.len() + bounds::EVENT_OVERHEAD;
            let cost = u32::try_from(cost.min(bounds::EVENT_BUDGET)).unwrap_or(u32::MAX);
            let Ok(held) = self.event_budget.clone().try_acquire_many_owned(cost) else {
                self.dropped(
                    Kind::Event,
                    "the events waiting for subscribers here passed their budget",
                );
                continue;
            };
            if tx.send((payload, held)).is_err() {
                return;
            }
        }
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
    pub(super) fn dropped(&self, kind: Kind, why: &str) {
        self.drops.warn(&self.node_id, kind.name(), why);
    }

    /// Whether a packet from `sender` in version `ver` is for us.
    pub(super) fn accept(&self, kind: Kind, ver: &str, sender: &str) -> bool {
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
            Kind::Discover => self.on_discover(&bytes).await?,
            Kind::Info => self.on_info(&bytes)?,
            Kind::Heartbeat => self.on_heartbeat(&bytes).await?,
            Kind::Disconnect => {
                let h: packet::Header = wire.decode("DISCONNECT", &bytes)?;
                if self.accept(kind, &h.ver, &h.sender) {
                    self.lose(&h.sender, "it disconnected");
                }
            }
            Kind::Ping => self.on_ping(&bytes).await?,
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

    /// Whether `sender` is within its budget of packets of `kind` this
    /// second ([`Floods`]); one past it is dropped and counted.
    fn within_rate(&self, kind: Kind, sender: &str) -> bool {
        let rate = match kind {
            Kind::Discover => &self.floods.discover,
            Kind::Info => &self.floods.info,
            Kind::Heartbeat => &self.floods.heartbeat,
            _ => return true,
        };
        let within = rate.allow(sender);
        if !within {
            self.dropped(
                kind,
                &format!("node `{sender}` sends more than its share per second"),
            );
        }
        within
    }

    /// An INFO: a node joined, restarted or changed its services.
    fn on_info(&self, bytes: &[u8]) -> Result<(), TransportError> {
        let info: packet::Info = self.wire.decode("INFO", bytes)?;
        if info.sender == *self.node_id && info.instance_id.as_deref() != Some(&self.instance_id) {
            tracing::error!(node = %self.node_id, "another node uses this node id; give each node its own `node_id`");
        }
        if !self.accept(Kind::Info, &info.ver, &info.sender)
            || !self.within_rate(Kind::Info, &info.sender)
        {
            return Ok(());
        }
        let joined = self
            .registry_mut()
            .apply_info(&info, bytes.len())
            .map_err(|why| TransportError::Refused { kind: "INFO", why })?;
        match joined {
            Joined::New => {
                tracing::info!(node = %info.sender, services = info.services.len(), "node joined")
            }
            Joined::Restarted => tracing::info!(node = %info.sender, "node restarted"),
            Joined::Updated => tracing::debug!(node = %info.sender, "node updated"),
            Joined::Same => {}
        }
        Ok(())
    }

    /// A DISCOVER: answered with our INFO, to the asker; past this
    /// second's budget of answers, by one broadcast INFO when it ends.
    async fn on_discover(self: &Arc<Self>, bytes: &[u8]) -> Result<(), TransportError> {
        let h: packet::Header = self.wire.decode("DISCOVER", bytes)?;
        if !self.accept(Kind::Discover, &h.ver, &h.sender)
            || !self.within_rate(Kind::Discover, &h.sender)
        {
            return Ok(());
        }
        if self.floods.answers.allow() {
            return self.send_info(Some(&h.sender), false).await;
        }
        if !self.floods.broadcast_owed.swap(true, Ordering::AcqRel) {
            let transit = self.clone();
            let wait = self.floods.answers.renewed_in();
            tokio::spawn(async move {
                tokio::time::sleep(wait).await;
                transit
                    .floods
                    .broadcast_owed
                    .store(false, Ordering::Release);
                if transit.leaving.load(Ordering::Acquire) {
                    return;
                }
                if let Err(e) = transit.send_info(None, false).await {
                    tracing::warn!(node = %transit.node_id, error = %e, "INFO not sent");
                }
            });
        }
        Ok(())
    }

    /// A HEARTBEAT: a known node is alive; an unknown one is asked for its INFO.
    async fn on_heartbeat(&self, bytes: &[u8]) -> Result<(), TransportError> {
        let h: packet::Heartbeat = self.wire.decode("HEARTBEAT", bytes)?;
        if !self.accept(Kind::Heartbeat, &h.ver, &h.sender)
            || !self.within_rate(Kind::Heartbeat, &h.sender)
            || self.registry_mut().heartbeat(&h.sender)
        {
            return Ok(());
        }
        if !self.floods.asks.allow() {
            self.dropped(Kind::Heartbeat, "too many unknown nodes beat this second");
            return Ok(());
        }
        let ask = packet::HeaderOut {
            ver: self.ver,
            sender: &self.node_id,
        };
        self.publish_now(
            Kind::Discover,
            self.bus.subject_to("DISCOVER", &h.sender),
            &ask,
        )
        .await
    }

    /// A PING: answered with a PONG.
    async fn on_ping(&self, bytes: &[u8]) -> Result<(), TransportError> {
        let ping: packet::Ping = self.wire.decode("PING", bytes)?;
        if !self.accept(Kind::Ping, &ping.ver, &ping.sender) {
            return Ok(());
        }
        let to = self.bus.subject_to("PONG", &ping.sender);
        let pong = packet::Ping {
            ver: self.ver.into(),
            sender: self.node_id.to_string(),
            id: ping.id,
            time: ping.time,
            arrived: Some(now_ms()),
        };
        self.publish_now(Kind::Pong, to, &pong).await
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
        // Moleculer merges a RES's meta into the caller's, success or not.
        if let Some(sink) = &pending.meta
            && let Some(Value::Object(meta)) = &res.meta
        {
            sink.set(Meta::from_map(meta.clone()));
        }
        let result = match (res.success, res.error) {
            (true, _) => match res.data.map(Data::into_value).transpose() {
                Ok(v) => Ok(v.unwrap_or(Value::Null)),
                Err(e) => Err(CallError::Failed(
                    format!(
                        "{} on node `{}`: the result is not JSON: {e}",
                        pending.action, res.sender
                    )
                    .into(),
                )),
            },
            (false, Some(error)) => {
                Err(packet::error_from_wire(error, &pending.action, &res.sender))
            }
            (false, None) => Err(CallError::Failed(
                format!(
                    "{} on node `{}` failed without an error",
                    pending.action, res.sender
                )
                .into(),
            )),
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
        event_context(&mut ctx, &event);
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

/// What an EVENT says of its context: its id and parent's, level, caller,
/// tracing and meta with its JSON types (ids cut to a sane length).
fn event_context(ctx: &mut CallContext, event: &packet::Event<'_, Data<'_>>) {
    let id = |text: &str| ContextId::Given(bounds::clip(text, bounds::MAX_NAME).into());
    if let Some(given) = event.id.as_deref() {
        ctx.id = id(given);
    }
    ctx.parent_id = event.parent_id.as_deref().map(id);
    ctx.set_upstream(
        event.level.map_or(0, |l| l.saturating_sub(1)),
        event
            .caller
            .as_deref()
            .map(|c| bounds::clip(c, bounds::MAX_NAME)),
    );
    ctx.tracing = packet::tracing(event.tracing.as_ref());
    ctx.meta = Meta::from_wire(event.meta.as_ref());
}

/// The budgets of the packets that cost this node work, per peer and second.
#[derive(Debug)]
pub(super) struct Floods {
    discover: PeerRate,
    info: PeerRate,
    heartbeat: PeerRate,
    /// INFOs sent in answer to DISCOVERs, all askers together.
    answers: Budget,
    /// DISCOVERs sent to unknown nodes that beat, all together.
    asks: Budget,
    /// A broadcast INFO is due at the end of this second.
    broadcast_owed: AtomicBool,
}

impl Default for Floods {
    fn default() -> Self {
        Floods {
            discover: PeerRate::new(bounds::DISCOVER_PER_SECOND),
            info: PeerRate::new(bounds::INFO_PER_SECOND),
            heartbeat: PeerRate::new(bounds::HEARTBEAT_PER_SECOND),
            answers: Budget::new(bounds::ANSWERS_PER_SECOND),
            asks: Budget::new(bounds::ANSWERS_PER_SECOND),
            broadcast_owed: AtomicBool::new(false),
        }
    }
}

/// A task aborted when this is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn hostname() -> String {
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
pub(super) fn cpu_percent() -> f64 {
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

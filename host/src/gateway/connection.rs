//! The gateway's connections: how many may be open at once, and how long a
//! client may take to send a request or to take a response.
//!
//! A hostile client's cheapest weapon is time: a head, a body or a read of
//! the response trickled a byte at a time holds a socket, a file
//! descriptor and a task. Every phase of a connection is bounded here:
//!
//! - **Open connections**: at most `max_connections`, capped by what the
//!   process's open-file limit leaves (raised to its hard limit first, see
//!   [`connection_limit`]). A connection past the cap closes the least
//!   recently active connection that is not running a call (an idle
//!   keep-alive, a slow head, a slow body, a response not taken); when
//!   every one is running a call, the newcomer gets `503` with
//!   `Retry-After` and is closed. A flood of slow clients thus makes room
//!   for quick ones instead of starving them.
//! - **Heads**: hyper's header-read timeout (`header_timeout`), which also
//!   closes a keep-alive connection that sends no next request.
//! - **Bodies**: [`read_body`]: `body_timeout`, extended by one second per
//!   `min_body_rate` bytes received; `413` past `max_body`, `408` past the
//!   deadline, and the connection is closed either way.
//! - **Responses**: a connection that runs no call for `header_timeout +
//!   idle_timeout` would have been closed as idle by then, so it is stuck
//!   writing to a client that does not read: it is dropped.
//!
//! The accept loop watches every connection on one timer and tells a
//! connection's task to close or drop through [`Connection::order`]; the
//! task reads that order at each poll (an atomic load), so a request costs
//! the connection no timer, lock or select of its own.
//!
//! It must not look into what a request asks for (routing is `mod.rs`'s).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::FutureExt;
use futures_util::task::AtomicWaker;
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::task::{Id, JoinSet};

/// No request is being handled: the connection waits for a head, is idle,
/// or is writing a response.
const WAITING: u8 = 0;
/// A request is being handled and its body read.
const READING: u8 = 1;
/// A request is being served (its call runs).
const WORKING: u8 = 2;
/// Chosen to make room; closing.
const EVICTED: u8 = 3;

/// Refusals (503 then close) lingering at once; past it a refusal is a bare close.
const MAX_LINGERING_REFUSALS: usize = 64;
/// How long a refused client gets to read its 503.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// What the accept loop tells a connection's task; each order overrides
/// the ones below it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Order {
    /// Serve on.
    Serve = 0,
    /// Close after the response in flight, if any (idle, or shutting down).
    Close = 1,
    /// Close now (evicted to make room, or stuck writing to a client that
    /// does not read).
    Drop = 2,
}

/// What the accept loop, the connection's own task and its request handler
/// share about one connection. Only atomics: the request path stores the
/// phase and counts requests, nothing more.
pub(super) struct Connection {
    /// Bumped by every read or write that moved bytes.
    activity: AtomicU64,
    phase: AtomicU8,
    /// Requests handled so far.
    handled: AtomicU64,
    /// When it last finished a request (or opened), in ms since `epoch`;
    /// the least recent goes first when room is needed.
    progress_ms: AtomicU64,
    epoch: Instant,
    /// Its place in the order of accepts.
    seq: u64,
    /// The accept loop's last [`Order`], and the task to wake for it.
    order: AtomicU8,
    task: AtomicWaker,
}

impl Connection {
    fn new(epoch: Instant, seq: u64) -> Connection {
        Connection {
            activity: AtomicU64::new(0),
            phase: AtomicU8::new(WAITING),
            handled: AtomicU64::new(0),
            progress_ms: AtomicU64::new(millis_since(epoch)),
            epoch,
            seq,
            order: AtomicU8::new(Order::Serve as u8),
            task: AtomicWaker::new(),
        }
    }

    /// A request's head arrived: its body is read next.
    pub(super) fn request_started(&self) {
        let _ = self
            .phase
            .compare_exchange(WAITING, READING, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The request is complete; its call runs now.
    pub(super) fn working(&self) {
        let _ = self
            .phase
            .compare_exchange(READING, WORKING, Ordering::Relaxed, Ordering::Relaxed);
    }

    /// The response is handed to hyper to write.
    pub(super) fn request_done(&self) {
        let _ = self
            .phase
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |p| {
                (p != EVICTED).then_some(WAITING)
            });
        self.handled.fetch_add(1, Ordering::Relaxed);
        // The engine's coarse clock: an atomic load, not a clock read.
        let now = crate::engine::coarse_now().saturating_duration_since(self.epoch);
        let ms = u64::try_from(now.as_millis()).unwrap_or(u64::MAX);
        self.progress_ms.store(ms, Ordering::Relaxed);
    }

    /// The order in force for the task polled with `cx`, which is woken
    /// when a new one comes.
    pub(super) fn order(&self, cx: &Context<'_>) -> Order {
        self.task.register(cx.waker());
        match self.order.load(Ordering::Acquire) {
            0 => Order::Serve,
            1 => Order::Close,
            _ => Order::Drop,
        }
    }

    /// Gives `order` and wakes the task, unless as strong an order was
    /// given already; `true` when it was new.
    fn give(&self, order: Order) -> bool {
        let new = self.order.fetch_max(order as u8, Ordering::AcqRel) < order as u8;
        if new {
            self.task.wake();
        }
        new
    }
}

fn millis_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// An open connection, as the accept loop sees it.
struct Live {
    connection: Arc<Connection>,
    watcher: Watcher,
}

/// The connections open on one listener, as the accept loop sees them.
pub(super) struct Connections {
    limit: usize,
    epoch: Instant,
    tasks: JoinSet<()>,
    live: HashMap<Id, Live>,
    accepted: u64,
    /// How many are open, for [`RunningGateway::connections`](super::RunningGateway::connections).
    open: Arc<AtomicUsize>,
    lingering: Arc<AtomicUsize>,
}

impl Connections {
    pub(super) fn new(limit: usize, open: Arc<AtomicUsize>) -> Connections {
        Connections {
            limit: limit.max(1),
            epoch: Instant::now(),
            tasks: JoinSet::new(),
            live: HashMap::new(),
            accepted: 0,
            open,
            lingering: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Makes room for `stream` (closing the least recently active
    /// connection that runs no call) or refuses it.
    pub(super) async fn admit(&mut self, stream: TcpStream) -> Result<TcpStream, ()> {
        if self.live.len() < self.limit {
            return Ok(stream);
        }
        // The connection that runs no call and has served nothing (a slow
        // client's mark) or else was least recently active, oldest first;
        // claimed with a compare-exchange, since its request may start meanwhile.
        let victim = loop {
            let candidate = self
                .live
                .iter()
                .map(|(id, l)| {
                    (
                        id,
                        &l.connection,
                        l.connection.phase.load(Ordering::Relaxed),
                    )
                })
                .filter(|(_, _, phase)| matches!(*phase, WAITING | READING))
                .min_by_key(|(_, c, _)| {
                    let served = c.handled.load(Ordering::Relaxed) > 0;
                    (served, c.progress_ms.load(Ordering::Relaxed), c.seq)
                })
                .map(|(id, c, phase)| (*id, c.clone(), phase));
            let Some((id, c, phase)) = candidate else {
                break None;
            };
            if c.phase
                .compare_exchange(phase, EVICTED, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                break Some((id, c));
            }
        };
        let Some((id, victim)) = victim else {
            tracing::warn!(
                limit = self.limit,
                "gateway: every connection is running a call; refusing a new one"
            );
            self.refuse(stream);
            return Err(());
        };
        victim.give(Order::Drop);
        tracing::debug!(
            limit = self.limit,
            "gateway: at max_connections; closed the least recently active idle connection"
        );
        // Its task ends at its next poll; wait for it so the count never
        // passes the limit (bounded, in case it is slow to be scheduled).
        let ended = async {
            while self.live.contains_key(&id) {
                if !self.reap_one().await {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_millis(200), ended).await;
        Ok(stream)
    }

    /// Starts serving an admitted connection.
    pub(super) fn spawn<F>(&mut self, make: impl FnOnce(Arc<Connection>) -> F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.accepted += 1;
        let connection = Arc::new(Connection::new(self.epoch, self.accepted));
        let handle = self.tasks.spawn(make(connection.clone()));
        let watcher = Watcher::new();
        self.live.insert(
            handle.id(),
            Live {
                connection,
                watcher,
            },
        );
        self.open.store(self.live.len(), Ordering::Relaxed);
    }

    /// Waits for one connection to end and forgets it; `false` when none is open.
    pub(super) async fn reap_one(&mut self) -> bool {
        let id = match self.tasks.join_next_with_id().await {
            Some(Ok((id, ()))) => id,
            Some(Err(e)) => {
                if e.is_panic() {
                    tracing::error!(error = %e, "gateway: a connection task panicked");
                }
                e.id()
            }
            None => return false,
        };
        self.live.remove(&id);
        self.open.store(self.live.len(), Ordering::Relaxed);
        true
    }

    pub(super) fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// One look at every connection: closes the idle ones and drops the
    /// stuck ones (see [`Watcher::tick`]).
    pub(super) fn watch(&mut self, watch: &Watch) {
        for live in self.live.values_mut() {
            match live.watcher.tick(&live.connection, watch) {
                Verdict::Fine => {}
                Verdict::Idle => {
                    live.connection.give(Order::Close);
                }
                Verdict::Drop => {
                    if live.connection.give(Order::Drop) {
                        tracing::debug!(
                            "gateway: connection dropped: the client does not take its response"
                        );
                    }
                }
            }
        }
    }

    /// Asks every open connection to close after its response in flight.
    pub(super) fn close_all(&self) {
        for live in self.live.values() {
            live.connection.give(Order::Close);
        }
    }

    /// Answers 503 with `Retry-After` and closes, without reading the
    /// request; lingers briefly so the client reads the answer rather than
    /// a reset.
    fn refuse(&self, stream: TcpStream) {
        const REFUSAL: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: 116\r\n\r\n{\"error\":{\"kind\":\"overloaded\",\"message\":\"the gateway is at max_connections, every one running a call; retry later\"}}";
        if self.lingering.fetch_add(1, Ordering::Relaxed) >= MAX_LINGERING_REFUSALS {
            self.lingering.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let lingering = self.lingering.clone();
        tokio::spawn(async move {
            let mut stream = stream;
            let _ = tokio::time::timeout(REFUSAL_LINGER, async {
                stream.write_all(REFUSAL).await?;
                stream.shutdown().await?;
                // Drain what the client sent, so closing does not reset.
                let mut sink = [0u8; 1024];
                while stream.read(&mut sink).await? > 0 {}
                std::io::Result::Ok(())
            })
            .await;
            lingering.fetch_sub(1, Ordering::Relaxed);
        });
    }
}

/// How long a connection's phases may last; see the module docs.
pub(super) struct Watch {
    pub(super) idle: Duration,
    /// No call for this long: stuck writing a response nobody reads.
    pub(super) stuck: Duration,
}

/// What the watch decided at one tick.
enum Verdict {
    /// Nothing to do.
    Fine,
    /// Quiet and idle: close after the response in flight, if any.
    Idle,
    /// Close now.
    Drop,
}

/// The accept loop's view of one connection between ticks.
struct Watcher {
    seen_activity: u64,
    seen_handled: u64,
    quiet_since: Instant,
    waiting_since: Instant,
}

impl Watcher {
    fn new() -> Watcher {
        let now = Instant::now();
        Watcher {
            seen_activity: 0,
            seen_handled: 0,
            quiet_since: now,
            waiting_since: now,
        }
    }

    fn tick(&mut self, c: &Connection, watch: &Watch) -> Verdict {
        let now = Instant::now();
        let activity = c.activity.load(Ordering::Relaxed);
        if activity != self.seen_activity {
            (self.seen_activity, self.quiet_since) = (activity, now);
        }
        let handled = c.handled.load(Ordering::Relaxed);
        let phase = c.phase.load(Ordering::Relaxed);
        if handled != self.seen_handled {
            self.seen_handled = handled;
            self.waiting_since = now;
        }
        if phase != WAITING {
            self.waiting_since = now;
            return Verdict::Fine;
        }
        if now.duration_since(self.waiting_since) >= watch.stuck {
            return Verdict::Drop;
        }
        if now.duration_since(self.quiet_since) >= watch.idle {
            return Verdict::Idle;
        }
        Verdict::Fine
    }
}

/// Why a body could not be read.
#[derive(Debug, thiserror::Error)]
pub(super) enum BodyError {
    /// Longer than the limit (announced or sent).
    #[error("the request body is larger than {0} bytes")]
    TooLarge(usize),
    /// Slower than the deadline allows.
    #[error(
        "the request body did not arrive in time ({timeout:?}, plus 1 s per {rate} bytes received)"
    )]
    TooSlow {
        /// `body_timeout`.
        timeout: Duration,
        /// `min_body_rate`.
        rate: u64,
    },
    /// The client broke off or sent a malformed body.
    #[error("cannot read the body: {0}")]
    Read(hyper::Error),
}

/// Reads a whole body of at most `limit` bytes within `timeout` plus one
/// second per `rate` bytes received. A body that is ready at once (the
/// common case: it came with the head) costs no timer.
pub(super) async fn read_body(
    mut body: Incoming,
    limit: usize,
    timeout: Duration,
    rate: u64,
) -> Result<Bytes, BodyError> {
    if body.size_hint().lower() > limit as u64 {
        return Err(BodyError::TooLarge(limit));
    }
    let rate = rate.max(1);
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    let mut received = 0usize;
    let mut started: Option<tokio::time::Instant> = None;
    loop {
        let frame = match body.frame().now_or_never() {
            Some(frame) => frame,
            None => {
                let start = *started.get_or_insert_with(tokio::time::Instant::now);
                let earned = Duration::from_millis((received as u64).saturating_mul(1000) / rate);
                let due = start + timeout.saturating_add(earned);
                match tokio::time::timeout_at(due, body.frame()).await {
                    Ok(frame) => frame,
                    Err(_) => return Err(BodyError::TooSlow { timeout, rate }),
                }
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(BodyError::Read(e)),
            Some(Ok(frame)) => match frame.into_data() {
                Ok(data) => data,
                Err(_) => continue, // trailers
            },
        };
        received = received.saturating_add(data.len());
        if received > limit {
            return Err(BodyError::TooLarge(limit));
        }
        match (&first, &mut more) {
            (None, _) => first = Some(data),
            (Some(f), None) => {
                let mut joined = BytesMut::with_capacity(f.len() + data.len());
                joined.extend_from_slice(f);
                joined.extend_from_slice(&data);
                more = Some(joined);
            }
            (Some(_), Some(m)) => m.extend_from_slice(&data),
        }
    }
    Ok(match (first, more) {
        (_, Some(m)) => m.freeze(),
        (Some(f), None) => f,
        (None, None) => Bytes::new(),
    })
}

/// Raises the soft open-file limit to the hard one (once per process) and
/// answers how many connections `wanted` may really be: enough files stay
/// free for components, the cache, logs and the cluster connection.
pub(super) fn connection_limit(wanted: u32) -> usize {
    let wanted = wanted as usize;
    let Some(files) = open_file_limit() else {
        return wanted;
    };
    let reserve = (files / 4).max(64);
    let budget = usize::try_from(files.saturating_sub(reserve))
        .unwrap_or(usize::MAX)
        .max(1);
    if wanted > budget {
        tracing::warn!(
            max_connections = wanted,
            open_file_limit = files,
            serving = budget,
            "gateway: max_connections is more than the open-file limit allows; \
             raise the hard limit (ulimit -Hn) to serve more"
        );
    }
    wanted.min(budget)
}

/// The soft open-file limit after raising it to the hard one; `None` when unlimited.
fn open_file_limit() -> Option<u64> {
    static LIMIT: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
    *LIMIT.get_or_init(raise_open_file_limit)
}

#[cfg(unix)]
fn raise_open_file_limit() -> Option<u64> {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => {
                tracing::debug!(from = ?limit.current, to = ?limit.maximum, "raised the open-file limit");
                return limit.maximum;
            }
            Err(e) => {
                tracing::warn!(error = %e, soft = ?limit.current, hard = ?limit.maximum, "cannot raise the open-file limit");
            }
        }
    }
    limit.current
}

#[cfg(not(unix))]
fn raise_open_file_limit() -> Option<u64> {
    None
}

/// A socket that counts the reads and writes that moved bytes, so the
/// watch can tell a quiet connection without reading the clock per I/O.
pub(super) struct Tracked {
    pub(super) inner: TcpStream,
    pub(super) connection: Arc<Connection>,
}

impl Tracked {
    fn touch(&self) {
        self.connection.activity.fetch_add(1, Ordering::Relaxed);
    }
}

impl AsyncRead for Tracked {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl AsyncWrite for Tracked {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

//! The OTLP sink: ended spans, through a bounded channel, batched by one
//! task on a thread of its own, written straight as the bytes of OTLP `Span` messages
//! (`otlp_span`) and sent by `otlp_wire` (HTTP/protobuf over hyper, or
//! gRPC over tonic). A span that finds the channel full is dropped and
//! counted: a slow collector never slows a call.
//!
//! The exporting task is woken once per batch, not once per span: it
//! sleeps until a batch's worth of spans is waiting (the sender that
//! fills it says so, once), a flush is asked for, or the schedule delay
//! has passed, and then takes what is queued without waiting on the
//! channel. Waking it for each span cost every traced request a task
//! wake-up, often another worker thread's, and a timer set and cleared.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{Notify, mpsc, oneshot};

use super::Finished;
use super::config::{Config, OtlpConfig};
use super::otlp_span::Batch;
use super::otlp_wire::Wire;

/// Spans waiting for their batch, at most.
const QUEUE: usize = 4096;
/// Spans in one export, at most.
const BATCH: usize = 512;
/// Room in the queue kept for the spans still to end of traces already
/// begun: past it no new trace starts (see `Telemetry::sample`).
const HEADROOM: usize = QUEUE / 16;

enum Message {
    Span(Box<Finished>),
    Flush(oneshot::Sender<()>),
}

/// What the senders tell the exporting task.
#[derive(Default)]
struct Wake {
    notify: Notify,
    /// Set by the sender that asks for the task, cleared by the task as
    /// it wakes: one notification per batch however many senders see it.
    asked: AtomicBool,
}

impl Wake {
    fn ask(&self) {
        if !self.asked.load(Ordering::Relaxed) && !self.asked.swap(true, Ordering::AcqRel) {
            self.notify.notify_one();
        }
    }
}

/// The sending side; the exporting task exports what is left and ends
/// when it is dropped.
pub(super) struct Sink {
    tx: mpsc::Sender<Message>,
    wake: Arc<Wake>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// Starts the exporting task on a thread of its own.
    pub(super) fn start(otlp: &OtlpConfig, config: &Config) -> Sink {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        let wake = Arc::new(Wake::default());
        let (otlp, service, waker) = (otlp.clone(), config.service_name.clone(), wake.clone());
        let thread = std::thread::Builder::new()
            .name("steedos-otlp".into())
            .spawn(move || export_thread(&otlp, service, rx, waker));
        if let Err(e) = thread {
            tracing::error!(error = %e, "telemetry: the OTLP exporter's thread cannot start; spans are dropped");
        }
        Sink { tx, wake, dropped }
    }

    pub(super) fn send(&self, span: Finished) {
        match self.tx.try_send(Message::Span(Box::new(span))) {
            Ok(()) if QUEUE - self.tx.capacity() >= BATCH => self.wake.ask(),
            Ok(()) => {}
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the queue is full but for the room kept for the spans of
    /// traces already begun (one atomic load): no new trace should start.
    pub(super) fn full(&self) -> bool {
        self.tx.capacity() < HEADROOM
    }

    pub(super) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            self.wake.ask();
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
    }
}

impl Drop for Sink {
    /// The task exports what is queued and ends.
    fn drop(&mut self) {
        // The real sender goes first, so that the task finds the channel
        // closed when it wakes.
        drop(std::mem::replace(&mut self.tx, mpsc::channel(1).0));
        self.wake.ask();
    }
}

/// The exporter's own thread and runtime: the export keeps a share of
/// the CPU of its own however many tasks the host's runtime is running
/// (as a task among a hundred busy callers it fell behind, and traces
/// were shed for want of its turn, not of its work), as OpenTelemetry's
/// batch span processor does. An exporter that cannot be built is said
/// once; spans are then dropped.
fn export_thread(otlp: &OtlpConfig, service: String, rx: mpsc::Receiver<Message>, wake: Arc<Wake>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(e) => {
            tracing::error!(error = %e, "telemetry: the OTLP exporter's runtime cannot start; spans are dropped");
            return;
        }
    };
    // Built on its runtime: gRPC's channel spawns its worker where it is made.
    runtime.block_on(async {
        match Wire::new(otlp) {
            Ok(wire) => run(wire, rx, wake, otlp.delay, service).await,
            Err(e) => {
                tracing::error!(endpoint = %otlp.endpoint, error = %e, "telemetry: the OTLP exporter cannot be built; spans are dropped")
            }
        }
    });
}

/// Sleeps until asked or until `delay` has passed, then exports what is
/// queued in batches of at most [`BATCH`] (a failed export is logged and
/// dropped) and answers the flushes it took; ends when the sink is gone.
async fn run(
    wire: Wire,
    mut rx: mpsc::Receiver<Message>,
    wake: Arc<Wake>,
    delay: Duration,
    service: String,
) {
    let mut batch = Batch::new(&service);
    let mut flushed = Vec::new();
    loop {
        let _ = tokio::time::timeout(delay, wake.notify.notified()).await;
        wake.asked.store(false, Ordering::Release);
        let open = loop {
            match rx.try_recv() {
                Ok(Message::Span(f)) => batch.push(&f),
                Ok(Message::Flush(done)) => flushed.push(done),
                Err(TryRecvError::Empty) => break true,
                Err(TryRecvError::Disconnected) => break false,
            }
            if batch.len() >= BATCH {
                export(&wire, &mut batch).await;
            }
        };
        export(&wire, &mut batch).await;
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
        if !open {
            return;
        }
    }
}

/// Sends what `batch` holds, if anything, leaving it empty.
async fn export(wire: &Wire, batch: &mut Batch) {
    let n = batch.len();
    if n > 0
        && let Err(e) = wire.traces(batch.take()).await
    {
        tracing::warn!(spans = n, error = %e, "telemetry: spans not exported");
    }
}

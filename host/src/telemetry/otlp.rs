//! The OTLP sink: ended spans, through a bounded channel, batched by one
//! task, written straight as the bytes of OTLP `Span` messages
//! (`otlp_span`) and sent by `otlp_wire` (HTTP/protobuf over hyper, or
//! gRPC over tonic). A span that finds the
//! channel full is dropped and counted: a slow collector never slows a
//! call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

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

/// The sending side; the exporting task ends when it is dropped.
pub(super) struct Sink {
    tx: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

impl Sink {
    /// Starts the exporting task on the current runtime. An exporter that
    /// cannot be built is said once; spans are then dropped.
    pub(super) fn start(otlp: &OtlpConfig, config: &Config) -> Sink {
        let (tx, rx) = mpsc::channel(QUEUE);
        let dropped = Arc::new(AtomicU64::new(0));
        match Wire::new(otlp) {
            Ok(wire) => {
                tokio::spawn(run(wire, rx, otlp.delay, config.service_name.clone()));
            }
            Err(e) => {
                tracing::error!(endpoint = %otlp.endpoint, error = %e, "telemetry: the OTLP exporter cannot be built; spans are dropped")
            }
        }
        Sink { tx, dropped }
    }

    pub(super) fn send(&self, span: Finished) {
        if self.tx.try_send(Message::Span(Box::new(span))).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
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
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
    }
}

/// Collects spans until a batch is full or `delay` has passed since its
/// first, then exports it; a failed export is logged and dropped.
async fn run(wire: Wire, mut rx: mpsc::Receiver<Message>, delay: Duration, service: String) {
    let mut batch = Batch::new(&service);
    let mut flushed = Vec::new();
    loop {
        let first = match rx.recv().await {
            None => break,
            Some(m) => m,
        };
        take(first, &mut batch, &mut flushed);
        let until = tokio::time::Instant::now() + delay;
        while batch.len() < BATCH && flushed.is_empty() {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(m)) => take(m, &mut batch, &mut flushed),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len();
        if n > 0
            && let Err(e) = wire.traces(batch.take()).await
        {
            tracing::warn!(spans = n, error = %e, "telemetry: spans not exported");
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

fn take(m: Message, batch: &mut Batch, flushed: &mut Vec<oneshot::Sender<()>>) {
    match m {
        Message::Span(f) => batch.push(&f),
        Message::Flush(done) => flushed.push(done),
    }
}

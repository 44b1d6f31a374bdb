//! The OTLP sink: an ended span is written as the bytes of an OTLP `Span`
//! (`otlp_span`) where it ends, into one of a few shards of batches (a
//! shard per thread, so the lock is nearly always free); a full batch goes
//! through a bounded channel to one task on a thread of its own, which
//! sends it (`otlp_wire`: HTTP/protobuf over hyper, or gRPC over tonic),
//! and every schedule delay also sends what the shards hold. A batch that
//! finds the channel full is dropped and its spans counted: a slow
//! collector never slows a call.
//!
//! Written where they end, spans cost no allocation to queue, no wake-up
//! of the exporter each, and are freed by the thread that made them; the
//! exporter wakes once per batch. On its own thread and runtime (as
//! OpenTelemetry's batch span processor) the exporter keeps a share of the
//! CPU however many tasks the host runs: as one task among a hundred busy
//! callers it fell behind, and traces were shed for want of its turn.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use super::Finished;
use super::config::{Config, OtlpConfig};
use super::otlp_span::Batch;
use super::otlp_wire::Wire;

/// Spans in one export, at most.
const BATCH: usize = 512;
/// Bytes of spans in one export, at most but for its last span: a batch
/// goes once it holds this much, so that memory is bounded in bytes (a
/// span may carry 128 guest log lines of 1 KiB: 512 of those would be
/// 66 MiB) and an export stays under the 4 MiB a collector takes over
/// gRPC by default.
const BATCH_BYTES: usize = 1 << 20;
/// Full batches waiting for the exporter, at most (4,096 spans, 8 MiB).
const QUEUED: usize = 8;
/// Batches kept for the spans still to end of traces already begun: past
/// them no new trace starts (see `Telemetry::sample`).
const HEADROOM: usize = 1;
/// Shards of batches being filled.
const SHARDS: usize = 8;

enum Message {
    /// A full batch, the bytes of an `ExportTraceServiceRequest`, and its spans.
    Batch(Vec<u8>, usize),
    Flush(oneshot::Sender<()>),
}

/// The batches being filled, one per shard.
struct Shards(Vec<Mutex<Batch>>);

impl Shards {
    fn new(service: &str) -> Shards {
        Shards(
            (0..SHARDS)
                .map(|_| Mutex::new(Batch::new(service)))
                .collect(),
        )
    }

    /// The shard of the calling thread.
    fn mine(&self) -> MutexGuard<'_, Batch> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        thread_local! {
            static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
        }
        let i = SHARD.with(|i| *i);
        lock(&self.0[i])
    }

    /// What every shard holds, taken: `(bytes, spans)` per non-empty shard.
    fn take_all(&self) -> Vec<(Vec<u8>, usize)> {
        self.0
            .iter()
            .filter_map(|shard| {
                let mut batch = lock(shard);
                let n = batch.len();
                (n > 0).then(|| (batch.take(), n))
            })
            .collect()
    }
}

/// Whether `batch` is to go now: [`BATCH`] spans, or [`BATCH_BYTES`].
fn is_full(batch: &Batch) -> bool {
    batch.len() >= BATCH || batch.size() >= BATCH_BYTES
}

fn lock(m: &Mutex<Batch>) -> MutexGuard<'_, Batch> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The sending side; the exporting task sends what is left and ends when
/// it is dropped.
pub(super) struct Sink {
    shards: Arc<Shards>,
    tx: mpsc::Sender<Message>,
    dropped: AtomicU64,
}

impl Sink {
    /// Starts the exporting task on a thread of its own.
    pub(super) fn start(otlp: &OtlpConfig, config: &Config) -> Sink {
        let (tx, rx) = mpsc::channel(QUEUED);
        let shards = Arc::new(Shards::new(&config.service_name));
        let (otlp, taken) = (otlp.clone(), shards.clone());
        let thread = std::thread::Builder::new()
            .name("steedos-otlp".into())
            .spawn(move || export_thread(&otlp, taken, rx));
        if let Err(e) = thread {
            tracing::error!(error = %e, "telemetry: the OTLP exporter's thread cannot start; spans are dropped");
        }
        Sink {
            shards,
            tx,
            dropped: AtomicU64::new(0),
        }
    }

    /// Writes `span` into this thread's batch; a batch now full goes to
    /// the exporter, or is dropped (and counted) when the queue is full.
    pub(super) fn send(&self, span: &Finished) {
        let full = {
            let mut batch = self.shards.mine();
            batch.push(span);
            let n = batch.len();
            is_full(&batch).then(|| (batch.take(), n))
        };
        if let Some((bytes, n)) = full
            && self.tx.try_send(Message::Batch(bytes, n)).is_err()
        {
            self.dropped.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the queue is full but for the room kept for the spans of
    /// traces already begun (one atomic load): no new trace should start.
    pub(super) fn full(&self) -> bool {
        self.tx.capacity() <= HEADROOM
    }

    pub(super) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
    }
}

impl Drop for Sink {
    /// The sender goes, so the task sends what the shards hold and ends.
    fn drop(&mut self) {
        drop(std::mem::replace(&mut self.tx, mpsc::channel(1).0));
    }
}

/// The exporter's own thread and runtime. An exporter that cannot be
/// built is said once; spans are then dropped.
fn export_thread(otlp: &OtlpConfig, shards: Arc<Shards>, rx: mpsc::Receiver<Message>) {
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
            Ok(wire) => run(wire, shards, rx, otlp.delay).await,
            Err(e) => {
                tracing::error!(endpoint = %otlp.endpoint, error = %e, "telemetry: the OTLP exporter cannot be built; spans are dropped")
            }
        }
    });
}

/// Sends each full batch as it comes and, every `delay`, on a flush and
/// when the sink is gone, what the shards hold (a failed export is logged
/// and dropped).
async fn run(wire: Wire, shards: Arc<Shards>, mut rx: mpsc::Receiver<Message>, delay: Duration) {
    let mut tick = tokio::time::interval(delay);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            m = rx.recv() => match m {
                Some(Message::Batch(bytes, n)) => export(&wire, bytes, n).await,
                Some(Message::Flush(done)) => {
                    export_all(&wire, &shards).await;
                    let _ = done.send(());
                }
                None => {
                    export_all(&wire, &shards).await;
                    return;
                }
            },
            _ = tick.tick() => export_all(&wire, &shards).await,
        }
    }
}

async fn export_all(wire: &Wire, shards: &Shards) {
    for (bytes, n) in shards.take_all() {
        export(wire, bytes, n).await;
    }
}

async fn export(wire: &Wire, bytes: Vec<u8>, n: usize) {
    if let Err(e) = wire.traces(bytes).await {
        tracing::warn!(spans = n, error = %e, "telemetry: spans not exported");
    }
}

#[cfg(test)]
mod tests {
    use super::{BATCH, BATCH_BYTES, Batch, is_full};
    use crate::telemetry::otlp_span::tests::finished;
    use crate::telemetry::{Finished, MAX_LOG_EVENTS, log_event};

    fn with_log_lines(lines: usize) -> Finished<'static> {
        let mut f = finished(None, None);
        for _ in 0..lines {
            log_event(&mut f.span.events, "info", &"x".repeat(1024));
        }
        f
    }

    #[test]
    fn a_batch_goes_at_its_span_count_or_its_size_whichever_comes_first() {
        let mut batch = Batch::new("wasm-shop");
        let small = finished(None, None);
        for _ in 1..BATCH {
            batch.push(&small);
        }
        assert!(!is_full(&batch), "{} spans", batch.len());
        batch.push(&small);
        assert!(is_full(&batch));
        batch.take();

        // Spans full of guest log lines: the batch goes by its bytes, long
        // before its count, and holds little more than the bound.
        let big = with_log_lines(MAX_LOG_EVENTS);
        let mut n = 0;
        while !is_full(&batch) {
            batch.push(&big);
            n += 1;
        }
        assert!(n < 16, "{n} spans of 128 KiB before the batch went");
        assert!(
            batch.size() < BATCH_BYTES + 200 * 1024,
            "{} bytes",
            batch.size()
        );
    }
}

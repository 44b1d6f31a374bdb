//! OTLP logs: the host's `tracing` events (guest log lines among them,
//! target `guest`) as OTLP log records, each with the trace of its call
//! (from its `request_id`) and, for a line a traced call's guest wrote,
//! that call's span id. [`layer`] is installed once by the binary; it does
//! nothing until an app's telemetry turns logs on, then hands records to
//! a channel bounded in records and bytes (full: dropped and counted,
//! never waited for) that one task batches and exports.

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs};
use tokio::sync::mpsc;
use tracing::field::{Field, Visit};
use tracing_subscriber::layer::Context;

use super::config::OtlpConfig;
use super::otlp_wire::{Wire, attribute, nanos, resource, scope};
use crate::context::CallContext;

/// Records waiting for their batch, at most, and their bytes at most.
const QUEUE: usize = 4096;
const QUEUE_BYTES: usize = 8 << 20;
/// Records in one export, at most.
const BATCH: usize = 512;
/// The longest message kept, in bytes; the most attributes per record.
const MESSAGE_MAX: usize = 8 * 1024;
const FIELDS_MAX: usize = 32;
const FIELD_MAX: usize = 1024;

/// Whether some app exports logs: the one test an event pays when none does.
static ON: AtomicBool = AtomicBool::new(false);
/// Where records go while on: the sink's id and its channel.
static SINK: RwLock<Option<(u64, mpsc::Sender<LogRecord>)>> = RwLock::new(None);
static NEXT_SINK: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The trace and span of the traced call whose guest is logging now.
    static CURRENT: Cell<Option<(u128, u64)>> = const { Cell::new(None) };
}

/// While held, log events on this thread belong to the span of `ctx`.
pub struct InSpan(Option<(u128, u64)>);

/// Marks what this thread logs next as `ctx`'s (a traced call's) until the
/// guard is dropped.
pub fn in_span(ctx: &CallContext) -> InSpan {
    let ids = (super::trace_id(&ctx.request_id), super::span_id(&ctx.id));
    InSpan(CURRENT.with(|c| c.replace(Some(ids))))
}

impl Drop for InSpan {
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// The `tracing` layer that turns events into OTLP log records while an
/// app exports logs (install it once, beside the formatter).
pub fn layer() -> LogLayer {
    LogLayer
}

/// See [`layer`].
#[derive(Debug, Clone, Copy, Default)]
pub struct LogLayer;

/// Targets never exported: the exporter's own clients (a loop) and telemetry itself.
const SKIPPED: [&str; 6] = [
    "hyper",
    "h2",
    "tonic",
    "tower",
    "opentelemetry",
    "steedos_wasm::telemetry",
];

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if !ON.load(Ordering::Relaxed) {
            return;
        }
        let target = event.metadata().target();
        if SKIPPED.iter().any(|s| target.starts_with(s)) {
            return;
        }
        let record = record(event);
        let size = size_of(&record);
        if QUEUED_BYTES.fetch_add(size, Ordering::Relaxed) + size > QUEUE_BYTES {
            QUEUED_BYTES.fetch_sub(size, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let sink = SINK.read().unwrap_or_else(|p| p.into_inner());
        let sent = sink
            .as_ref()
            .is_some_and(|(_, tx)| tx.try_send(record).is_ok());
        if !sent {
            QUEUED_BYTES.fetch_sub(size, Ordering::Relaxed);
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Log records dropped because the queue was full (a slow collector).
static DROPPED: AtomicU64 = AtomicU64::new(0);
/// Bytes of the records queued and not yet taken for a batch.
static QUEUED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// About what a record holds in memory: its texts and a fixed part.
fn size_of(r: &LogRecord) -> usize {
    let text = |v: &Option<AnyValue>| match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.len(),
        _ => 0,
    };
    let attributes: usize = r
        .attributes
        .iter()
        .map(|kv| kv.key.len() + text(&kv.value) + 64)
        .sum();
    256 + text(&r.body) + attributes
}

/// Records dropped since the host started.
pub fn dropped() -> u64 {
    DROPPED.load(Ordering::Relaxed)
}

#[derive(Default)]
struct Fields {
    message: String,
    request_id: Option<String>,
    attributes: Vec<KeyValue>,
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let mut text = String::new();
        let _ = write!(text, "{value:?}");
        self.record_str(field, &text);
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message = cut(value.to_string(), MESSAGE_MAX),
            "request_id" if !value.is_empty() => self.request_id = Some(value.to_string()),
            name if self.attributes.len() < FIELDS_MAX => self
                .attributes
                .push(attribute(name, cut(value.to_string(), FIELD_MAX))),
            _ => {}
        }
    }
}

fn severity(level: &tracing::Level) -> (i32, &'static str) {
    // OpenTelemetry's severity numbers: TRACE 1, DEBUG 5, INFO 9, WARN 13, ERROR 17.
    match *level {
        tracing::Level::TRACE => (1, "TRACE"),
        tracing::Level::DEBUG => (5, "DEBUG"),
        tracing::Level::INFO => (9, "INFO"),
        tracing::Level::WARN => (13, "WARN"),
        tracing::Level::ERROR => (17, "ERROR"),
    }
}

fn record(event: &tracing::Event<'_>) -> LogRecord {
    let mut fields = Fields::default();
    event.record(&mut fields);
    let meta = event.metadata();
    let (number, text) = severity(meta.level());
    let now = nanos(SystemTime::now());
    let mut attributes = fields.attributes;
    attributes.push(attribute("log.target", meta.target()));
    let (trace, span) = match CURRENT.with(Cell::get) {
        Some((trace, span)) => (Some(trace), Some(span)),
        None => (fields.request_id.as_deref().map(super::trace_id), None),
    };
    if let Some(id) = fields.request_id {
        attributes.push(attribute("steedos.request_id", id));
    }
    LogRecord {
        time_unix_nano: now,
        observed_time_unix_nano: now,
        severity_number: number,
        severity_text: text.into(),
        body: Some(AnyValue {
            value: Some(any_value::Value::StringValue(fields.message)),
        }),
        attributes,
        flags: u32::from(span.is_some()),
        trace_id: trace.map_or_else(Vec::new, |t| t.to_be_bytes().to_vec()),
        span_id: span.map_or_else(Vec::new, |s| s.to_be_bytes().to_vec()),
        ..LogRecord::default()
    }
}

/// An app's log export: while it lives, the layer's records go to it.
pub(super) struct Sink {
    id: u64,
}

impl Sink {
    /// Starts the exporting task on the current runtime and points the
    /// layer at it (the last app started wins: one per process in practice).
    pub(super) fn start(otlp: &OtlpConfig, service: String) -> Option<Sink> {
        let wire = match Wire::new(otlp) {
            Ok(w) => Arc::new(w),
            Err(e) => {
                tracing::error!(endpoint = %otlp.endpoint, error = %e, "telemetry: the OTLP logs exporter cannot be built; logs are not exported");
                return None;
            }
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(wire, rx, otlp.delay, service));
        let id = NEXT_SINK.fetch_add(1, Ordering::Relaxed);
        *SINK.write().unwrap_or_else(|p| p.into_inner()) = Some((id, tx));
        ON.store(true, Ordering::Relaxed);
        Some(Sink { id })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let mut sink = SINK.write().unwrap_or_else(|p| p.into_inner());
        if sink.as_ref().is_some_and(|(id, _)| *id == self.id) {
            *sink = None;
            ON.store(false, Ordering::Relaxed);
        }
    }
}

/// Batches records (up to [`BATCH`], or `delay` after the first) and exports them.
async fn run(wire: Arc<Wire>, mut rx: mpsc::Receiver<LogRecord>, delay: Duration, service: String) {
    let taken = |r: LogRecord| {
        QUEUED_BYTES.fetch_sub(size_of(&r), Ordering::Relaxed);
        r
    };
    while let Some(first) = rx.recv().await {
        let mut batch = vec![taken(first)];
        let until = tokio::time::Instant::now() + delay;
        while batch.len() < BATCH {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(r)) => batch.push(taken(r)),
                Ok(None) | Err(_) => break,
            }
        }
        let n = batch.len();
        let request = ExportLogsServiceRequest {
            resource_logs: vec![ResourceLogs {
                resource: Some(resource(&service)),
                scope_logs: vec![ScopeLogs {
                    scope: Some(scope()),
                    log_records: batch,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        if let Err(e) = wire.logs(request).await {
            // Said at debug under telemetry's target, which the layer skips.
            tracing::debug!(records = n, error = %e, "telemetry: log records not exported");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::OtlpProtocol;
    use tracing_subscriber::layer::SubscriberExt as _;

    /// A collector that never answers: the queue fills, records past it
    /// are dropped and counted, and logging never waits.
    #[tokio::test]
    async fn a_stuck_collector_drops_records_and_never_blocks() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let otlp = OtlpConfig {
            endpoint: format!("http://{}/v1/logs", listener.local_addr().expect("addr")),
            protocol: OtlpProtocol::HttpProtobuf,
            timeout: Duration::from_secs(30),
            delay: Duration::from_millis(1),
        };
        let sink = Sink::start(&otlp, "stuck".into()).expect("sink");
        let before = dropped();
        let subscriber = tracing_subscriber::registry().with(layer());
        tracing::subscriber::with_default(subscriber, || {
            for i in 0..(QUEUE + 1000) {
                tracing::info!(target: "guest", package = "p", request_id = "r", "line {i}");
            }
        });
        assert!(dropped() - before >= 1000, "{} dropped", dropped() - before);
        assert!(QUEUED_BYTES.load(Ordering::Relaxed) <= QUEUE_BYTES);
        drop(sink);
    }
}

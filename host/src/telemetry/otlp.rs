//! The OTLP sink: ended spans, through a bounded channel, batched by one
//! task and exported by `opentelemetry-otlp` (HTTP/protobuf over hyper,
//! or gRPC over tonic). A span that finds the channel full is dropped and
//! counted: a slow collector never slows a call.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::trace::{
    Event, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanExporter as _, SpanLinks};
use tokio::sync::{mpsc, oneshot};

use super::config::{Config, OtlpConfig};
use super::ids::{span_id, trace_id};
use super::{Finished, Kind, Value};
use crate::manifest::OtlpProtocol;

/// Spans waiting for their batch, at most.
const QUEUE: usize = 4096;
/// Spans in one export, at most.
const BATCH: usize = 512;

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
        let resource = Resource::builder_empty()
            .with_service_name(config.service_name.clone())
            .build();
        match build(otlp) {
            Ok(mut exporter) => {
                exporter.set_resource(&resource);
                tokio::spawn(run(exporter, rx, otlp.delay));
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

    pub(super) async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(5), wait).await;
        }
    }
}

fn build(otlp: &OtlpConfig) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let built = match otlp.protocol {
        OtlpProtocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_http_client(
                opentelemetry_http::hyper::HyperClient::with_default_connector(otlp.timeout, None),
            )
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(otlp.endpoint.clone())
            .with_timeout(otlp.timeout)
            .build(),
        OtlpProtocol::Grpc => opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_protocol(Protocol::Grpc)
            .with_endpoint(otlp.endpoint.clone())
            .with_timeout(otlp.timeout)
            .build(),
    };
    built.map_err(|e| e.to_string())
}

/// Collects spans until a batch is full or `delay` has passed since its
/// first, then exports it; a failed export is logged and dropped.
async fn run(
    exporter: opentelemetry_otlp::SpanExporter,
    mut rx: mpsc::Receiver<Message>,
    delay: Duration,
) {
    let mut batch = Vec::with_capacity(BATCH);
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
        if !batch.is_empty() {
            let n = batch.len();
            let spans = std::mem::replace(&mut batch, Vec::with_capacity(BATCH));
            if let Err(e) = exporter.export(spans).await {
                tracing::warn!(spans = n, error = %e, "telemetry: spans not exported");
            }
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

fn take(m: Message, batch: &mut Vec<SpanData>, flushed: &mut Vec<oneshot::Sender<()>>) {
    match m {
        Message::Span(f) => batch.push(span_data(*f)),
        Message::Flush(done) => flushed.push(done),
    }
}

fn value(v: Value) -> opentelemetry::Value {
    match v {
        Value::Str(s) => opentelemetry::Value::from(s),
        Value::Int(n) => opentelemetry::Value::from(n),
        Value::Bool(b) => opentelemetry::Value::from(b),
    }
}

/// An ended span as the OpenTelemetry SDK exports it.
pub(super) fn span_data(f: Finished) -> SpanData {
    let span = f.span;
    let context = SpanContext::new(
        TraceId::from(trace_id(&span.request_id)),
        SpanId::from(span_id(&span.id)),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    let mut attributes: Vec<KeyValue> = Vec::with_capacity(span.attributes.len() + 4);
    attributes.push(KeyValue::new("steedos.node", f.node.to_string()));
    attributes.push(KeyValue::new(
        "steedos.request_id",
        span.request_id.to_string(),
    ));
    if let Some(service) = &span.service {
        attributes.push(KeyValue::new("steedos.package", service.to_string()));
    }
    attributes.extend(
        span.attributes
            .into_iter()
            .map(|(k, v)| KeyValue::new(k, value(v))),
    );
    let status = match &span.error {
        None => Status::Unset,
        Some((kind, message)) => {
            attributes.push(KeyValue::new("error.type", *kind));
            Status::error(message.clone())
        }
    };
    let mut events: Vec<Event> = span
        .events
        .into_iter()
        .map(|e| {
            let attrs = e
                .attributes
                .into_iter()
                .map(|(k, v)| KeyValue::new(k, value(v)));
            Event::new(e.name, e.time, attrs.collect(), 0)
        })
        .collect();
    if let Some((kind, message)) = span.error {
        let attrs = vec![
            KeyValue::new("exception.type", kind),
            KeyValue::new("exception.message", message),
        ];
        events.push(Event::new("exception", f.end, attrs, 0));
    }
    SpanData {
        span_context: context,
        parent_span_id: span
            .parent
            .as_ref()
            .map_or(SpanId::INVALID, |p| SpanId::from(span_id(p))),
        parent_span_is_remote: false,
        span_kind: match span.kind {
            Kind::Server => SpanKind::Server,
            Kind::Client => SpanKind::Client,
            Kind::Internal => SpanKind::Internal,
            Kind::Consumer => SpanKind::Consumer,
        },
        name: span.name,
        start_time: span.start,
        end_time: f.end,
        attributes,
        dropped_attributes_count: 0,
        events: {
            let mut all = SpanEvents::default();
            all.events = events;
            all
        },
        links: SpanLinks::default(),
        status,
        instrumentation_scope: InstrumentationScope::builder(Cow::Borrowed("steedos-wasm"))
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    }
}

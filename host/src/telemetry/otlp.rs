//! The OTLP sink: ended spans, through a bounded channel, batched by one
//! task, built straight into OTLP `Span` messages and sent by `otlp_wire`
//! (HTTP/protobuf over hyper, or gRPC over tonic). A span that finds the
//! channel full is dropped and counted: a slow collector never slows a
//! call.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value;
use opentelemetry_proto::tonic::trace::v1::{
    ResourceSpans, ScopeSpans, Span, SpanFlags, Status, span, status,
};
use tokio::sync::{mpsc, oneshot};

use super::config::{Config, OtlpConfig};
use super::ids::{span_id, trace_id};
use super::otlp_wire::{Wire, attribute, key_value, nanos, resource, scope};
use super::{Finished, Kind, Value};

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
            if let Err(e) = wire.traces(request(&service, spans)).await {
                tracing::warn!(spans = n, error = %e, "telemetry: spans not exported");
            }
        }
        for done in flushed.drain(..) {
            let _ = done.send(());
        }
    }
}

fn take(m: Message, batch: &mut Vec<Span>, flushed: &mut Vec<oneshot::Sender<()>>) {
    match m {
        Message::Span(f) => batch.push(otlp_span(*f)),
        Message::Flush(done) => flushed.push(done),
    }
}

/// One export of `spans`: this host as their resource and scope.
pub(super) fn request(service: &str, spans: Vec<Span>) -> ExportTraceServiceRequest {
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(resource(service)),
            scope_spans: vec![ScopeSpans {
                scope: Some(scope()),
                spans,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

/// A span attribute's value as OTLP's.
fn any(v: Value) -> any_value::Value {
    match v {
        Value::Str(s) => any_value::Value::StringValue(s.into_owned()),
        Value::Int(n) => any_value::Value::IntValue(n),
        Value::Bool(b) => any_value::Value::BoolValue(b),
    }
}

/// An ended span as an OTLP `Span`: its ids as OpenTelemetry's (see
/// `ids.rs`), sampled, its parent local; the node, request id and package
/// as `steedos.*` attributes; an error as the status and an `exception`
/// event, as OpenTelemetry's semantic conventions put them.
pub(super) fn otlp_span(f: Finished) -> Span {
    let span = f.span;
    let mut attributes = Vec::with_capacity(span.attributes.len() + 4);
    attributes.push(attribute("steedos.node", &*f.node));
    attributes.push(attribute("steedos.request_id", &*span.request_id));
    if let Some(service) = &span.service {
        attributes.push(attribute("steedos.package", &**service));
    }
    attributes.extend(
        span.attributes
            .into_iter()
            .map(|(k, v)| key_value(k, any(v))),
    );
    let mut events: Vec<span::Event> = span
        .events
        .into_iter()
        .map(|e| span::Event {
            time_unix_nano: nanos(e.time),
            name: e.name.to_owned(),
            attributes: e
                .attributes
                .into_iter()
                .map(|(k, v)| key_value(k, any(v)))
                .collect(),
            dropped_attributes_count: 0,
        })
        .collect();
    let status = match span.error {
        None => Status {
            message: String::new(),
            code: status::StatusCode::Unset as i32,
        },
        Some((kind, message)) => {
            attributes.push(attribute("error.type", kind));
            events.push(span::Event {
                time_unix_nano: nanos(f.end),
                name: "exception".to_owned(),
                attributes: vec![
                    attribute("exception.type", kind),
                    attribute("exception.message", message.as_str()),
                ],
                dropped_attributes_count: 0,
            });
            Status {
                message,
                code: status::StatusCode::Error as i32,
            }
        }
    };
    Span {
        trace_id: trace_id(&span.request_id).to_be_bytes().to_vec(),
        span_id: span_id(&span.id).to_be_bytes().to_vec(),
        trace_state: String::new(),
        parent_span_id: span
            .parent
            .as_ref()
            .map_or_else(Vec::new, |p| span_id(p).to_be_bytes().to_vec()),
        // Sampled, and the parent known to be local.
        flags: 1 | SpanFlags::ContextHasIsRemoteMask as u32,
        name: span.name.into_owned(),
        kind: match span.kind {
            Kind::Server => span::SpanKind::Server,
            Kind::Client => span::SpanKind::Client,
            Kind::Internal => span::SpanKind::Internal,
            Kind::Consumer => span::SpanKind::Consumer,
        } as i32,
        start_time_unix_nano: nanos(span.start),
        end_time_unix_nano: nanos(f.end),
        attributes,
        dropped_attributes_count: 0,
        events,
        dropped_events_count: 0,
        links: Vec::new(),
        dropped_links_count: 0,
        status: Some(status),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use opentelemetry_proto::tonic::common::v1::KeyValue;

    use super::*;
    use crate::context::ContextId;
    use crate::telemetry::{Span as Hop, log_event};

    fn finished(parent: Option<ContextId>, error: Option<(&'static str, String)>) -> Finished {
        let request: Arc<str> = "7b1d4a0e-5c3f-4e2a-9d8b-1f2e3d4c5b6a".into();
        let mut span = Hop::new(
            "action 'shop.relay'",
            Kind::Internal,
            ContextId::new(),
            parent,
            request,
        );
        span.service = Some("shop".into());
        span.set("steedos.level", 2i64);
        log_event(&mut span.events, "info", "hello");
        span.error = error;
        Finished {
            end: span.start + Duration::from_millis(3),
            node: "node-1".into(),
            span,
        }
    }

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        let kv = attrs.iter().find(|kv| kv.key == key)?;
        kv.value.as_ref()?.value.as_ref()
    }

    #[test]
    fn a_span_keeps_its_ids_times_attributes_and_events() {
        let parent = ContextId::new();
        let f = finished(Some(parent.clone()), None);
        let (start, trace) = (f.span.start, trace_id(&f.span.request_id));
        let id = span_id(&f.span.id);
        let s = otlp_span(f);
        assert_eq!(s.trace_id, trace.to_be_bytes());
        assert_eq!(s.span_id, id.to_be_bytes());
        assert_eq!(s.parent_span_id, span_id(&parent).to_be_bytes());
        assert_eq!(s.flags, 0x101, "sampled, parent known local");
        assert_eq!(s.kind, span::SpanKind::Internal as i32);
        assert_eq!(s.start_time_unix_nano, nanos(start));
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 3_000_000);
        let text = |v: Option<&any_value::Value>| match v {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            other => panic!("not text: {other:?}"),
        };
        assert_eq!(text(attr(&s.attributes, "steedos.node")), "node-1");
        assert_eq!(text(attr(&s.attributes, "steedos.package")), "shop");
        assert_eq!(
            attr(&s.attributes, "steedos.level"),
            Some(&any_value::Value::IntValue(2))
        );
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].name, "log");
        assert_eq!(text(attr(&s.events[0].attributes, "log.message")), "hello");
        let status = s.status.expect("status");
        assert_eq!(status.code, status::StatusCode::Unset as i32);
    }

    #[test]
    fn a_root_span_has_no_parent_and_an_error_is_its_status_and_an_exception() {
        let s = otlp_span(finished(None, Some(("timeout", "took too long".into()))));
        assert!(s.parent_span_id.is_empty());
        let status = s.status.expect("status");
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "took too long");
        assert_eq!(
            attr(&s.attributes, "error.type"),
            Some(&any_value::Value::StringValue("timeout".into()))
        );
        let exception = s.events.last().expect("an exception event");
        assert_eq!(exception.name, "exception");
        assert_eq!(exception.time_unix_nano, s.end_time_unix_nano);
        assert_eq!(
            attr(&exception.attributes, "exception.message"),
            Some(&any_value::Value::StringValue("took too long".into()))
        );
    }

    #[test]
    fn one_request_holds_the_batch_under_this_host() {
        let spans = vec![otlp_span(finished(None, None)); 3];
        let r = request("wasm-shop", spans);
        let [rs] = &r.resource_spans[..] else {
            panic!("one resource")
        };
        let resource = rs.resource.as_ref().expect("resource");
        assert_eq!(
            attr(&resource.attributes, "service.name"),
            Some(&any_value::Value::StringValue("wasm-shop".into()))
        );
        let [ss] = &rs.scope_spans[..] else {
            panic!("one scope")
        };
        assert_eq!(ss.scope.as_ref().expect("scope").name, "steedos-wasm");
        assert_eq!(ss.spans.len(), 3);
    }
}

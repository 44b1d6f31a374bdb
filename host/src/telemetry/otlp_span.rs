//! An ended span written straight as the protobuf bytes of an OTLP `Span`
//! (opentelemetry-proto's `trace.proto`), and a batch of them as the bytes
//! of an `ExportTraceServiceRequest`: no `opentelemetry_proto` structs in
//! between, so a span costs no allocation per attribute on its way out
//! (building those structs, then encoding and dropping them, was most of
//! the exporter's work in the telemetry bench). The bytes are written with
//! prost's own wire primitives, and the tests read them back with the
//! generated `opentelemetry_proto` types.

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use super::ids::{span_id, trace_id};
use super::otlp_wire::{nanos, resource, scope};
use super::{Finished, Kind, Span, Value};

/// Spans encoded one after the other as the `spans` of one `ScopeSpans`,
/// and the envelope that makes them one export of this host.
pub(super) struct Batch {
    spans: Vec<u8>,
    count: usize,
    /// The `resource` field of `ResourceSpans`, encoded once.
    resource: Vec<u8>,
    /// The `scope` field of `ScopeSpans`, encoded once.
    scope: Vec<u8>,
    /// A span's body while it is written (its length goes first).
    scratch: Vec<u8>,
    /// The `steedos.node` attribute, encoded once per node (a host has one).
    node: (String, Vec<u8>),
}

impl Batch {
    /// An empty batch of spans of `service`.
    pub(super) fn new(service: &str) -> Batch {
        let mut r = Vec::new();
        prost::encoding::message::encode(1, &resource(service), &mut r);
        let mut s = Vec::new();
        prost::encoding::message::encode(1, &scope(), &mut s);
        Batch {
            spans: Vec::new(),
            count: 0,
            resource: r,
            scope: s,
            scratch: Vec::new(),
            node: (String::new(), Vec::new()),
        }
    }

    /// Spans in the batch.
    pub(super) fn len(&self) -> usize {
        self.count
    }

    /// Bytes of the spans in the batch.
    pub(super) fn size(&self) -> usize {
        self.spans.len()
    }

    /// Adds `f`.
    pub(super) fn push(&mut self, f: &Finished<'_>) {
        if self.node.0 != f.node {
            self.node.1.clear();
            key_value(9, "steedos.node", AnyRef::Str(f.node), &mut self.node.1);
            self.node.0 = f.node.to_string();
        }
        self.scratch.clear();
        span_body(f, &self.node.1, &mut self.scratch);
        field_bytes(2, &self.scratch, &mut self.spans);
        self.count += 1;
    }

    /// The batch as one `ExportTraceServiceRequest`'s bytes; the batch is
    /// left empty.
    pub(super) fn take(&mut self) -> Vec<u8> {
        let scope_spans = self.scope.len() + self.spans.len();
        let resource_spans = self.resource.len() + delimited_len(2, scope_spans);
        let mut out = Vec::with_capacity(delimited_len(1, resource_spans));
        delimited_head(1, resource_spans, &mut out);
        out.extend_from_slice(&self.resource);
        delimited_head(2, scope_spans, &mut out);
        out.extend_from_slice(&self.scope);
        out.append(&mut self.spans);
        self.count = 0;
        out
    }
}

/// The length of a length-delimited field `tag` of `len` bytes.
fn delimited_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

/// The length of a string field `tag` of `len` bytes as [`field_bytes`]
/// writes it: nothing when empty, as proto3 leaves a default out.
fn optional_len(tag: u32, len: usize) -> usize {
    match len {
        0 => 0,
        n => delimited_len(tag, n),
    }
}

fn delimited_head(tag: u32, len: usize, out: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, out);
    encode_varint(len as u64, out);
}

fn field_bytes(tag: u32, bytes: &[u8], out: &mut Vec<u8>) {
    if !bytes.is_empty() {
        delimited_head(tag, bytes.len(), out);
        out.extend_from_slice(bytes);
    }
}

fn field_varint(tag: u32, n: u64, out: &mut Vec<u8>) {
    if n != 0 {
        encode_key(tag, WireType::Varint, out);
        encode_varint(n, out);
    }
}

fn field_fixed64(tag: u32, n: u64, out: &mut Vec<u8>) {
    if n != 0 {
        encode_key(tag, WireType::SixtyFourBit, out);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

fn field_fixed32(tag: u32, n: u32, out: &mut Vec<u8>) {
    if n != 0 {
        encode_key(tag, WireType::ThirtyTwoBit, out);
        out.extend_from_slice(&n.to_le_bytes());
    }
}

/// The body of an `AnyValue`: its one value.
fn any_len(v: AnyRef<'_>) -> usize {
    match v {
        AnyRef::Str(s) => delimited_len(1, s.len()),
        AnyRef::Bool(_) => key_len(2) + 1,
        AnyRef::Int(n) => key_len(3) + encoded_len_varint(n as u64),
    }
}

/// An attribute's value, borrowed.
#[derive(Clone, Copy)]
enum AnyRef<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

impl<'a> From<&'a Value<'_>> for AnyRef<'a> {
    fn from(v: &'a Value<'_>) -> AnyRef<'a> {
        match v {
            Value::Str(s) => AnyRef::Str(s),
            Value::Int(n) => AnyRef::Int(*n),
            Value::Bool(b) => AnyRef::Bool(*b),
        }
    }
}

/// A `KeyValue` as field `tag` of its message. Written in full, as
/// OpenTelemetry's SDKs do: an empty string or a zero is still a value.
fn key_value(tag: u32, key: &str, value: AnyRef<'_>, out: &mut Vec<u8>) {
    let len = key_value_len(key, value);
    out.reserve(delimited_len(tag, len));
    delimited_head(tag, len, out);
    delimited_head(1, key.len(), out);
    out.extend_from_slice(key.as_bytes());
    delimited_head(2, any_len(value), out);
    match value {
        AnyRef::Str(s) => {
            delimited_head(1, s.len(), out);
            out.extend_from_slice(s.as_bytes());
        }
        AnyRef::Bool(b) => {
            encode_key(2, WireType::Varint, out);
            out.push(u8::from(b));
        }
        AnyRef::Int(n) => {
            encode_key(3, WireType::Varint, out);
            encode_varint(n as u64, out);
        }
    }
}

/// The length of a `KeyValue`'s body.
fn key_value_len(key: &str, value: AnyRef<'_>) -> usize {
    delimited_len(1, key.len()) + delimited_len(2, any_len(value))
}

/// An `Event` (field `tag` of `Span`) at `time` named `name`.
fn event<'a>(
    time: u64,
    name: &str,
    attributes: impl Iterator<Item = (&'a str, AnyRef<'a>)> + Clone,
    out: &mut Vec<u8>,
) {
    let attrs: usize = attributes
        .clone()
        .map(|(k, v)| delimited_len(3, key_value_len(k, v)))
        .sum();
    let time_len = match time {
        0 => 0,
        _ => key_len(1) + 8,
    };
    delimited_head(11, time_len + optional_len(2, name.len()) + attrs, out);
    field_fixed64(1, time, out);
    field_bytes(2, name.as_bytes(), out);
    for (k, v) in attributes {
        key_value(3, k, v, out);
    }
}

/// The body of the OTLP `Span` of `f`: its ids as OpenTelemetry's (see
/// `ids.rs`), sampled, its parent local; the node, request id and package
/// as `steedos.*` attributes; an error as the status and an `exception`
/// event, as OpenTelemetry's semantic conventions put them.
/// `node` is the `steedos.node` attribute, encoded.
fn span_body(f: &Finished<'_>, node: &[u8], out: &mut Vec<u8>) {
    let span = &f.span;
    // A head written on another node (the node was named since) is not used.
    let head = span.head.filter(|h| *h.node == *f.node);
    field_bytes(1, &trace_id(&span.request_id).to_be_bytes(), out);
    field_bytes(2, &span_id(&span.id).to_be_bytes(), out);
    if let Some(parent) = &span.parent {
        field_bytes(4, &span_id(parent).to_be_bytes(), out);
    }
    match head {
        Some(head) => out.extend_from_slice(&head.bytes),
        None => {
            field_bytes(5, span.name.as_bytes(), out);
            out.extend_from_slice(node);
        }
    }
    let kind = match span.kind {
        Kind::Internal => 1,
        Kind::Server => 2,
        Kind::Client => 3,
        Kind::Consumer => 5,
    };
    field_varint(6, kind, out);
    field_fixed64(7, nanos(span.start), out);
    field_fixed64(8, nanos(f.end), out);
    key_value(9, "steedos.request_id", AnyRef::Str(&span.request_id), out);
    let written = head.map_or(0, |h| h.attributes);
    if let (None, Some(service)) = (head, &span.service) {
        key_value(9, "steedos.package", AnyRef::Str(service), out);
    }
    for (k, v) in span.attributes.iter().skip(written) {
        key_value(9, k, v.into(), out);
    }
    if let Some((kind, _)) = &span.error {
        key_value(9, "error.type", AnyRef::Str(kind), out);
    }
    for e in &span.events {
        let attributes = e.attributes.iter().map(|(k, v)| (*k, AnyRef::from(v)));
        event(nanos(e.time), e.name, attributes, out);
    }
    match &span.error {
        None => delimited_head(15, 0, out),
        Some((kind, message)) => {
            let attributes = [
                ("exception.type", AnyRef::Str(kind)),
                ("exception.message", AnyRef::Str(message)),
            ];
            event(nanos(f.end), "exception", attributes.into_iter(), out);
            // Status: its message, and STATUS_CODE_ERROR (2).
            delimited_head(15, optional_len(2, message.len()) + key_len(3) + 1, out);
            field_bytes(2, message.as_bytes(), out);
            field_varint(3, 2, out);
        }
    }
    // Sampled, and the parent known to be local (SpanFlags).
    field_fixed32(16, 0x101, out);
}

/// The part of `span` a [`Head`](super::spans::Head) holds, on `node`:
/// its name field, `steedos.node`, `steedos.package` and its attributes
/// so far, as [`span_body`] writes them.
pub(super) fn head(span: &Span<'_>, node: &str) -> Box<[u8]> {
    let mut out = Vec::new();
    field_bytes(5, span.name.as_bytes(), &mut out);
    key_value(9, "steedos.node", AnyRef::Str(node), &mut out);
    if let Some(service) = &span.service {
        key_value(9, "steedos.package", AnyRef::Str(service), &mut out);
    }
    for (k, v) in &span.attributes {
        key_value(9, k, v.into(), &mut out);
    }
    out.into_boxed_slice()
}

/// One span's bytes as a whole `Span` message (for the tests).
#[cfg(test)]
pub(super) fn encode(f: &Finished<'_>) -> Vec<u8> {
    let mut node = Vec::new();
    key_value(9, "steedos.node", AnyRef::Str(f.node), &mut node);
    let mut out = Vec::new();
    span_body(f, &node, &mut out);
    out
}

#[cfg(test)]
pub(super) mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::{Span, span, status};
    use prost::Message;

    use super::*;
    use crate::context::ContextId;
    use crate::telemetry::spans::Head;
    use crate::telemetry::{Span as Hop, log_event};

    pub(in crate::telemetry) fn finished(
        parent: Option<ContextId>,
        error: Option<(&'static str, String)>,
    ) -> Finished<'static> {
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
            node: "node-1",
            span,
        }
    }

    fn decoded(f: &Finished<'_>) -> Span {
        Span::decode(&encode(f)[..]).expect("our bytes are an OTLP Span")
    }

    fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        let kv = attrs.iter().find(|kv| kv.key == key)?;
        kv.value.as_ref()?.value.as_ref()
    }

    fn text(v: Option<&any_value::Value>) -> String {
        match v {
            Some(any_value::Value::StringValue(s)) => s.clone(),
            other => panic!("not text: {other:?}"),
        }
    }

    #[test]
    fn a_span_keeps_its_ids_times_attributes_and_events() {
        let parent = ContextId::new();
        let f = finished(Some(parent.clone()), None);
        let (start, trace) = (f.span.start, trace_id(&f.span.request_id));
        let id = span_id(&f.span.id);
        let s = decoded(&f);
        assert_eq!(s.trace_id, trace.to_be_bytes());
        assert_eq!(s.span_id, id.to_be_bytes());
        assert_eq!(s.parent_span_id, span_id(&parent).to_be_bytes());
        assert_eq!(s.flags, 0x101, "sampled, parent known local");
        assert_eq!(s.name, "action 'shop.relay'");
        assert_eq!(s.kind, span::SpanKind::Internal as i32);
        assert_eq!(s.start_time_unix_nano, nanos(start));
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 3_000_000);
        assert_eq!(text(attr(&s.attributes, "steedos.node")), "node-1");
        assert_eq!(text(attr(&s.attributes, "steedos.package")), "shop");
        assert_eq!(
            text(attr(&s.attributes, "steedos.request_id")),
            "7b1d4a0e-5c3f-4e2a-9d8b-1f2e3d4c5b6a"
        );
        assert_eq!(
            attr(&s.attributes, "steedos.level"),
            Some(&any_value::Value::IntValue(2))
        );
        assert_eq!(s.events.len(), 1);
        assert_eq!(s.events[0].name, "log");
        assert_eq!(s.events[0].time_unix_nano, nanos(f.span.events[0].time));
        assert_eq!(text(attr(&s.events[0].attributes, "log.message")), "hello");
        assert_eq!(text(attr(&s.events[0].attributes, "log.severity")), "info");
        let status = s.status.expect("status");
        assert_eq!(status.code, status::StatusCode::Unset as i32);
    }

    /// A span's attributes by key, in key order.
    fn sorted(mut s: Span) -> Span {
        s.attributes.sort_by(|a, b| a.key.cmp(&b.key));
        s
    }

    #[test]
    fn a_span_whose_call_site_has_a_head_reads_back_the_same() {
        let whole = finished(Some(ContextId::new()), None);
        let mut headed: Finished<'_> = whole.clone();
        let head = Head::new(&headed.span, "node-1", 2, false, None);
        headed.span.head = Some(&head);
        let mut whole = whole;
        for f in [&mut whole, &mut headed] {
            f.span.set("steedos.queue_wait_us", 7i64);
            f.span.set("steedos.result", "ok");
        }
        let written = encode(&headed);
        assert_eq!(sorted(decoded(&headed)), sorted(decoded(&whole)));
        let attributes = decoded(&headed).attributes.len();
        assert_eq!(
            attributes, 6,
            "node, package, request, level, wait, result, once each"
        );
        assert!(written.windows(head.bytes.len()).any(|w| w == &*head.bytes));

        // A head written before the node was named is not used.
        let mut elsewhere: Finished<'_> = headed.clone();
        elsewhere.node = "node-2";
        let s = decoded(&elsewhere);
        assert_eq!(text(attr(&s.attributes, "steedos.node")), "node-2");
        assert_eq!(s.attributes.len(), 6);
    }

    #[test]
    fn a_root_span_has_no_parent_and_an_error_is_its_status_and_an_exception() {
        let s = decoded(&finished(None, Some(("timeout", "took too long".into()))));
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
            attr(&exception.attributes, "exception.type"),
            Some(&any_value::Value::StringValue("timeout".into()))
        );
        assert_eq!(
            attr(&exception.attributes, "exception.message"),
            Some(&any_value::Value::StringValue("took too long".into()))
        );
    }

    #[test]
    fn every_value_and_kind_reads_back_as_written() {
        let mut f = finished(None, Some(("internal", String::new())));
        f.span.kind = Kind::Consumer;
        f.span.set("negative", -5i64);
        f.span.set("zero", 0i64);
        f.span.set("big", i64::MAX);
        f.span.set("yes", true);
        f.span.set("no", false);
        f.span.set("empty", "");
        f.span.set("long", "x".repeat(300));
        f.span.set("wide", "héllo ✓".to_string());
        let s = decoded(&f);
        assert_eq!(s.kind, span::SpanKind::Consumer as i32);
        let int = |k| attr(&s.attributes, k).cloned();
        assert_eq!(int("negative"), Some(any_value::Value::IntValue(-5)));
        assert_eq!(int("zero"), Some(any_value::Value::IntValue(0)));
        assert_eq!(int("big"), Some(any_value::Value::IntValue(i64::MAX)));
        assert_eq!(int("yes"), Some(any_value::Value::BoolValue(true)));
        assert_eq!(int("no"), Some(any_value::Value::BoolValue(false)));
        assert_eq!(text(attr(&s.attributes, "empty")), "");
        assert_eq!(text(attr(&s.attributes, "long")), "x".repeat(300));
        assert_eq!(text(attr(&s.attributes, "wide")), "héllo ✓");
        let status = s.status.expect("status");
        assert_eq!(status.code, status::StatusCode::Error as i32);
        assert_eq!(status.message, "");
        for (kind, otlp) in [
            (Kind::Server, span::SpanKind::Server),
            (Kind::Client, span::SpanKind::Client),
            (Kind::Internal, span::SpanKind::Internal),
        ] {
            f.span.kind = kind;
            assert_eq!(decoded(&f).kind, otlp as i32);
        }
    }

    #[test]
    fn one_request_holds_the_batch_under_this_host_and_the_batch_starts_again() {
        let mut batch = Batch::new("wasm-shop");
        let spans: Vec<Finished<'_>> = (0..3).map(|_| finished(None, None)).collect();
        for f in &spans {
            batch.push(f);
        }
        assert_eq!(batch.len(), 3);
        let r = ExportTraceServiceRequest::decode(&batch.take()[..]).expect("a request");
        assert_eq!(batch.len(), 0);
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
        let ids: Vec<Vec<u8>> = ss.spans.iter().map(|s| s.span_id.clone()).collect();
        let want: Vec<Vec<u8>> = spans
            .iter()
            .map(|f| span_id(&f.span.id).to_be_bytes().to_vec())
            .collect();
        assert_eq!(ids, want);

        for s in &ss.spans {
            assert_eq!(text(attr(&s.attributes, "steedos.node")), "node-1");
        }

        // The node's attribute is written once per node, not once for all.
        let mut elsewhere = finished(None, None);
        elsewhere.node = "node-2";
        batch.push(&spans[0]);
        batch.push(&elsewhere);
        batch.push(&spans[1]);
        let again = ExportTraceServiceRequest::decode(&batch.take()[..]).expect("a request");
        let nodes: Vec<String> = again.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| text(attr(&s.attributes, "steedos.node")))
            .collect();
        assert_eq!(nodes, ["node-1", "node-2", "node-1"]);
    }
}

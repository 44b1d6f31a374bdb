//! Spans as Moleculer's event trace exporter sends them: every span ended
//! since the last batch, as `$tracing.spans` (its `eventName`), each in
//! the shape of moleculer's `src/tracing/span.js` (`name`, `type`, `id`,
//! `traceID`, `parentID`, `service`, `priority`, `sampled`, `startTime`,
//! `startTicks`, `finishTime`, `duration`, `error`, `logs`, `tags`), so
//! Steedos' listeners and Moleculer's Laboratory read ours as theirs. The
//! queue is bounded: past it spans are dropped and counted.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value as Json, json};

use super::{Finished, Value};
use crate::context::ErrorKind;

/// The event Moleculer's event exporter emits (its `eventName`).
pub const MOLECULER_EVENT: &str = "$tracing.spans";

/// Spans that may wait for the next batch.
const QUEUE: usize = 10_000;

/// The spans waiting for the next `$tracing.spans`.
#[derive(Default)]
pub(super) struct Queue {
    spans: Mutex<Vec<Json>>,
    dropped: AtomicU64,
}

impl Queue {
    pub(super) fn push(&self, f: &Finished) {
        let span = to_moleculer(f);
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        if spans.len() < QUEUE {
            spans.push(span);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The batch, when there is one (Moleculer sends none when empty).
    pub(super) fn take(&self) -> Option<Json> {
        let mut spans = self.spans.lock().unwrap_or_else(|p| p.into_inner());
        (!spans.is_empty()).then(|| Json::Array(std::mem::take(&mut *spans)))
    }

    /// Whether the queue is full but for room kept for the spans of
    /// traces already begun: no new trace should start.
    pub(super) fn full(&self) -> bool {
        self.spans.lock().unwrap_or_else(|p| p.into_inner()).len() >= QUEUE - QUEUE / 16
    }

    pub(super) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

fn millis(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

fn json(v: &Value) -> Json {
    match v {
        Value::Str(s) => Json::from(&**s),
        Value::Int(n) => Json::from(*n),
        Value::Bool(b) => Json::from(*b),
    }
}

/// One span in Moleculer's shape.
pub(super) fn to_moleculer(f: &Finished) -> Json {
    let span = &f.span;
    let (start, finish) = (millis(span.start), millis(f.end));
    let mut tags = Map::new();
    tags.insert("nodeID".into(), Json::from(f.node));
    tags.insert("requestID".into(), Json::from(&*span.request_id));
    for (key, value) in &span.attributes {
        tags.insert((*key).into(), json(value));
    }
    if span.moleculer_type == "action"
        && let Some(Value::Str(action)) = attribute(f, "steedos.action")
    {
        tags.insert(
            "action".into(),
            json!({ "name": &**action, "rawName": &**action }),
        );
    }
    let error = span.error.as_ref().map(|(kind, message)| {
        let kind = ErrorKind::ALL
            .into_iter()
            .find(|k| k.name() == *kind)
            .unwrap_or(ErrorKind::Failed);
        let m = kind.moleculer();
        json!({ "name": m.name, "message": message, "code": m.code, "type": m.kind, "data": null })
    });
    let logs: Vec<Json> = span
        .events
        .iter()
        .map(|e| {
            let fields: Map<String, Json> = e
                .attributes
                .iter()
                .map(|(k, v)| ((*k).to_string(), json(v)))
                .collect();
            let time = millis(e.time);
            json!({ "name": e.name, "fields": fields, "time": time, "elapsed": time - start })
        })
        .collect();
    let mut out = json!({
        "name": &*span.name,
        "type": span.moleculer_type,
        "id": span.id.to_string(),
        "traceID": &*span.request_id,
        "parentID": span.parent.as_ref().map(ToString::to_string),
        "priority": 5,
        "sampled": true,
        "startTime": start,
        "startTicks": start,
        "finishTime": finish,
        "duration": finish - start,
        "error": error,
        "logs": logs,
        "tags": tags,
    });
    if let (Some(service), Json::Object(map)) = (&span.service, &mut out) {
        map.insert(
            "service".into(),
            json!({ "name": &**service, "version": null, "fullName": &**service }),
        );
    }
    out
}

fn attribute<'f, 'a>(f: &'f Finished<'a>, key: &str) -> Option<&'f Value<'a>> {
    f.span
        .attributes
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

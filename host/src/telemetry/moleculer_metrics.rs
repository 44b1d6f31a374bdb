//! Metrics as Moleculer's event metric reporter sends them: every
//! `interval`, one `$metrics.snapshot` event whose payload is the list of
//! metrics in the shape of moleculer's `registry.list()` (`type`, `name`,
//! `description`, `labelNames`, `unit`, `values`: per label set its `key`,
//! `labels`, `value` or, for a histogram, `count`, `sum`, cumulative
//! `buckets`, `min`/`mean`/`max`, `quantiles`, and `timestamp`). With
//! `only_changes` (its `onlyChanges`) only the metrics whose values moved
//! since the last event go, and nothing when none did.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value as Json, json};

use super::metric_set::{Histogram, Metric, MetricSet, Reading};

/// The event Moleculer's event metric reporter emits (its `eventName`).
pub const METRICS_EVENT: &str = "$metrics.snapshot";

/// The quantiles Moleculer's histograms report.
const QUANTILES: [f64; 6] = [0.5, 0.9, 0.95, 0.99, 0.999, 0.9999];

/// The metrics Moleculer keeps a `rate` of (requests per minute).
const RATED: [&str; 5] = [
    "moleculer.request.total",
    "moleculer.request.error.total",
    "moleculer.request.time",
    "moleculer.cacher.get.total",
    "moleculer.cacher.found.total",
];

/// A rated value's last reading: its total, when, and the rate then.
#[derive(Clone, Copy)]
struct LastRate {
    total: f64,
    at: f64,
    rate: f64,
}

/// What the last event said, per metric (for `only_changes`), and the
/// rates of the rated ones.
#[derive(Default)]
pub(super) struct LastSent {
    values: HashMap<&'static str, Json>,
    rates: HashMap<(&'static str, String), LastRate>,
}

impl LastSent {
    /// The payload of the next event, or `None` when there is nothing to
    /// send (no metric, or none changed with `only_changes`).
    pub(super) fn payload(&mut self, set: &MetricSet, only_changes: bool) -> Option<Json> {
        let time = millis(set.time);
        let mut list = Vec::new();
        for metric in &set.metrics {
            let mut values = values(metric, time);
            if RATED.contains(&metric.name) {
                self.rate(metric.name, &mut values, time);
            }
            // The timestamps move every time: compare what was read.
            let read = strip_timestamps(&values);
            let changed = self.values.get(metric.name) != Some(&read);
            self.values.insert(metric.name, read);
            if only_changes && !changed {
                continue;
            }
            list.push(json!({
                "type": metric.kind.moleculer(),
                "name": metric.name,
                "description": metric.description,
                "labelNames": metric.label_names,
                "unit": metric.unit,
                "values": values,
            }));
        }
        (!list.is_empty()).then_some(Json::Array(list))
    }
}

impl LastSent {
    /// Adds `rate` to each value, as Moleculer's `MetricRate` computes it:
    /// per minute over the last interval, halfway from the last rate,
    /// under 0.05 read as 0.
    fn rate(&mut self, name: &'static str, values: &mut Json, now: f64) {
        let Json::Array(items) = values else { return };
        for item in items {
            let total = item["value"]
                .as_f64()
                .or_else(|| item["count"].as_f64())
                .unwrap_or(0.0);
            let key = item["key"].as_str().unwrap_or_default().to_string();
            let last = self.rates.get(&(name, key.clone())).copied();
            let rate = match last {
                Some(l) if now > l.at => {
                    let per_minute = (total - l.total) / ((now - l.at) / 1000.0) * 60.0;
                    let r = l.rate + (per_minute - l.rate) * 0.5;
                    if r.abs() < 0.05 { 0.0 } else { r }
                }
                Some(l) => l.rate,
                None => 0.0,
            };
            let at = now;
            self.rates.insert((name, key), LastRate { total, at, rate });
            if let Json::Object(map) = item {
                map.insert("rate".into(), json!(rate));
            }
        }
    }
}

fn millis(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| (d.as_millis() as u64) as f64)
}

fn strip_timestamps(values: &Json) -> Json {
    let mut v = values.clone();
    if let Json::Array(items) = &mut v {
        for item in items {
            if let Json::Object(map) = item {
                map.remove("timestamp");
            }
        }
    }
    v
}

/// Moleculer's key of a label set: each value in label order, strings
/// quoted, joined by `|` (its `hashingLabels`).
fn key(labels: &[Option<String>]) -> String {
    let parts: Vec<String> = labels
        .iter()
        .map(|l| l.as_ref().map_or(String::new(), |s| format!("\"{s}\"")))
        .collect();
    parts.join("|")
}

fn values(metric: &Metric, time: f64) -> Json {
    let items: Vec<Json> = metric
        .points
        .iter()
        .map(|p| {
            let labels: Map<String, Json> = metric
                .label_names
                .iter()
                .zip(&p.labels)
                .map(|(n, v)| {
                    (
                        (*n).to_string(),
                        v.as_deref().map_or(Json::Null, Json::from),
                    )
                })
                .collect();
            let mut item = json!({ "key": key(&p.labels), "labels": labels, "timestamp": time });
            if let Json::Object(map) = &mut item {
                match &p.reading {
                    Reading::Number(n) => {
                        map.insert("value".into(), json!(n));
                    }
                    Reading::Histogram(h) => map.extend(histogram(h)),
                }
            }
            item
        })
        .collect();
    Json::Array(items)
}

/// A histogram's fields: exact count, sum and mean; `buckets` cumulative
/// per upper bound as Moleculer keeps them; quantiles, min and max as the
/// upper bound of the bucket they fall in (the host keeps no samples).
fn histogram(h: &Histogram) -> Map<String, Json> {
    let mut cumulative = Map::new();
    let mut running = 0u64;
    for (bound, n) in h.bounds.iter().zip(&h.buckets) {
        running += n;
        cumulative.insert(bound.to_string(), json!(running));
    }
    let at = |q: f64| -> Json {
        if h.count == 0 {
            return Json::Null;
        }
        let rank = ((q * h.count as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, n) in h.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return h.bounds.get(i).map_or(Json::Null, |b| json!(b));
            }
        }
        Json::Null
    };
    let quantiles: Map<String, Json> = QUANTILES.iter().map(|q| (q.to_string(), at(*q))).collect();
    let mean = match h.count {
        0 => Json::Null,
        n => json!(h.sum / n as f64),
    };
    let mut out = Map::new();
    out.insert("count".into(), json!(h.count));
    out.insert("sum".into(), json!(h.sum));
    out.insert("lastValue".into(), Json::Null);
    out.insert("buckets".into(), Json::Object(cumulative));
    out.insert("min".into(), at(0.0));
    out.insert("mean".into(), mean);
    out.insert("max".into(), at(1.0));
    out.insert("quantiles".into(), Json::Object(quantiles));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::metric_set::{MetricKind, Point};
    use std::sync::Arc;

    fn set(calls: f64) -> MetricSet {
        let mut total = Metric::new(
            "moleculer.request.total",
            MetricKind::Counter,
            "request",
            &["service", "action", "type", "caller"],
            "Number of requests",
        );
        let labels = vec![
            Some("a".into()),
            Some("a.b".into()),
            Some("local".into()),
            None,
        ];
        total.number(labels.clone(), calls);
        let mut time = Metric::new(
            "moleculer.request.time",
            MetricKind::Histogram,
            "millisecond",
            &["service", "action", "type", "caller"],
            "Request times",
        );
        time.points.push(Point {
            labels,
            reading: Reading::Histogram(Histogram {
                bounds: Arc::from([1.0, 4.0]),
                buckets: vec![1, 2, 1],
                count: 4,
                sum: 10.0,
            }),
        });
        MetricSet {
            time: UNIX_EPOCH + std::time::Duration::from_secs(1_800_000_000),
            metrics: vec![total, time],
        }
    }

    #[test]
    fn moleculers_shape_and_only_changes() {
        let mut last = LastSent::default();
        let list = last.payload(&set(3.0), false).expect("sent");
        let total = &list[0];
        assert_eq!(total["type"], "counter");
        assert_eq!(total["labelNames"][1], "action");
        let v = &total["values"][0];
        assert_eq!(v["key"], "\"a\"|\"a.b\"|\"local\"|");
        assert_eq!(v["labels"]["caller"], Json::Null);
        assert_eq!(v["value"], 3.0);
        let h = &list[1]["values"][0];
        assert_eq!(
            (h["count"].as_u64(), h["sum"].as_f64()),
            (Some(4), Some(10.0))
        );
        assert_eq!(h["buckets"]["1"], 1);
        assert_eq!(h["buckets"]["4"], 3, "cumulative");
        assert_eq!(h["quantiles"]["0.5"], 4.0);
        assert_eq!(h["max"], Json::Null, "past the last bound");
        assert_eq!(v["rate"], 0.0, "no rate before a second reading");
        let later = |calls, ms| {
            let mut s = set(calls);
            s.time += std::time::Duration::from_millis(ms);
            s
        };
        assert!(
            last.payload(&later(3.0, 0), true).is_none(),
            "nothing moved"
        );
        // 3 more calls in 1 s: 180 a minute, the rate halfway there.
        let moved = last.payload(&later(6.0, 1000), true).expect("moved");
        assert_eq!(moved[0]["values"][0]["rate"], 90.0, "{moved}");
        let still = last
            .payload(&later(6.0, 2000), true)
            .expect("the rate moved");
        assert_eq!(still.as_array().map(Vec::len), Some(1), "{still}");
        assert_eq!(still[0]["values"][0]["rate"], 45.0, "{still}");
    }
}

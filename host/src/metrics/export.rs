//! The metrics read for export (`$metrics.snapshot`, OTLP): the counters
//! the Prometheus `/metrics` keeps, read on the export interval into a
//! [`MetricSet`], under Moleculer's metric names where Moleculer has the
//! same figure (`moleculer.request.total`, `.error.total`, `.time`, the
//! cacher's totals) so its Laboratory shows Wasm packages like Node ones,
//! and `steedos.*` names for the rest. Recording a call is unchanged.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::SystemTime;

use super::{ActionMetrics, LATENCY_BOUNDS, LATENCY_BUCKETS, Metrics};
use crate::context::ErrorKind;
use crate::health::ServiceReport;
use crate::telemetry::{Histogram, Metric, MetricKind, MetricSet, Reading};

/// The handles of every action made so far, by package and action.
#[derive(Default)]
pub(super) struct ActionIndex(Mutex<HashMap<(String, String), ActionMetrics>>);

impl ActionIndex {
    /// Keeps `handles` (called once per action as packages load).
    pub(super) fn keep(&self, package: String, action: String, handles: &ActionMetrics) {
        let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        all.insert((package, action), handles.clone());
    }

    fn sorted(&self) -> Vec<((String, String), ActionMetrics)> {
        let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<_> = all.iter().map(|(k, m)| (k.clone(), m.clone())).collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The latency bounds in milliseconds (Moleculer's `moleculer.request.time` unit).
static BOUNDS_MS: LazyLock<Arc<[f64]>> =
    LazyLock::new(|| LATENCY_BOUNDS.iter().map(|s| s * 1000.0).collect());

const REQUEST_LABELS: &[&str] = &["service", "action", "type", "caller"];
const ERROR_LABELS: &[&str] = &[
    "service",
    "action",
    "type",
    "caller",
    "errorName",
    "errorCode",
    "errorType",
];
const PACKAGE_LABELS: &[&str] = &["service", "state"];

fn request_labels(package: &str, action: &str) -> Vec<Option<String>> {
    // `type` is Moleculer's handler type: these are served here.
    vec![
        Some(package.to_string()),
        Some(format!("{package}.{action}")),
        Some("local".to_string()),
        None,
    ]
}

impl ActionMetrics {
    fn latency_ms(&self) -> Histogram {
        let mut buckets = vec![0u64; LATENCY_BUCKETS + 1];
        let mut sum_ns = 0u64;
        for shard in self.latency.0.iter() {
            for (total, b) in buckets.iter_mut().zip(&shard.buckets) {
                *total += b.load(Ordering::Relaxed);
            }
            sum_ns = sum_ns.wrapping_add(shard.sum_ns.load(Ordering::Relaxed));
        }
        Histogram {
            bounds: BOUNDS_MS.clone(),
            count: buckets.iter().sum(),
            buckets,
            sum: sum_ns as f64 / 1e6,
        }
    }
}

impl Metrics {
    /// Every metric now, for export: the actions' calls, errors and
    /// latencies, the packages' state (`packages`) and the action cache's
    /// counts (from `kv`, when the app has buckets).
    pub fn snapshot(
        &self,
        packages: &[ServiceReport],
        kv: Option<&crate::kv::Stores>,
    ) -> MetricSet {
        let mut metrics = self.request_metrics();
        metrics.extend(package_metrics(packages));
        metrics.extend(cache_metrics(kv));
        let mut dropped = Metric::new(
            "steedos.cluster.packets.dropped",
            MetricKind::Counter,
            "packet",
            &[],
            "Packets from the cluster bus dropped (bad, refused, over a bound)",
        );
        dropped.number(Vec::new(), self.cluster_dropped.get() as f64);
        metrics.push(dropped);
        let mut logs = Metric::new(
            "steedos.telemetry.logs.dropped",
            MetricKind::Counter,
            "record",
            &[],
            "Log records not exported over OTLP: the queue to the collector was full",
        );
        logs.number(Vec::new(), crate::telemetry::logs::dropped() as f64);
        metrics.push(logs);
        MetricSet {
            time: SystemTime::now(),
            metrics,
        }
    }

    fn request_metrics(&self) -> Vec<Metric> {
        let mut total = Metric::new(
            "moleculer.request.total",
            MetricKind::Counter,
            "request",
            REQUEST_LABELS,
            "Number of requests",
        );
        let mut errors = Metric::new(
            "moleculer.request.error.total",
            MetricKind::Counter,
            "request",
            ERROR_LABELS,
            "Number of request errors",
        );
        let mut time = Metric::new(
            "moleculer.request.time",
            MetricKind::Histogram,
            "millisecond",
            REQUEST_LABELS,
            "Request times in milliseconds",
        );
        for ((package, action), m) in self.actions.sorted() {
            let labels = request_labels(&package, &action);
            total.number(labels.clone(), m.calls.get() as f64);
            for (kind, counter) in ErrorKind::ALL.into_iter().zip(&m.errors) {
                let n = counter.get();
                if n == 0 {
                    continue;
                }
                let e = kind.moleculer();
                let mut l = labels.clone();
                l.extend([
                    Some(e.name.to_string()),
                    Some(e.code.to_string()),
                    Some(e.kind.to_string()),
                ]);
                errors.number(l, n as f64);
            }
            time.points.push(crate::telemetry::Point {
                labels,
                reading: Reading::Histogram(m.latency_ms()),
            });
        }
        vec![total, errors, time]
    }
}

fn package_metrics(packages: &[ServiceReport]) -> Vec<Metric> {
    let mut services = Metric::new(
        "moleculer.broker.local.services.total",
        MetricKind::Gauge,
        "service",
        &[],
        "Number of local services",
    );
    services.number(Vec::new(), packages.len() as f64);
    let figures: [(&'static str, MetricKind, &'static str, &'static str); 7] = [
        (
            "steedos.package.instances",
            MetricKind::Gauge,
            "instance",
            "Live instances per package",
        ),
        (
            "steedos.package.restarts",
            MetricKind::Counter,
            "restart",
            "Instance restarts per package since load",
        ),
        (
            "steedos.package.queue.depth",
            MetricKind::Gauge,
            "request",
            "Calls waiting for an idle instance",
        ),
        (
            "steedos.package.events.queued",
            MetricKind::Gauge,
            "event",
            "Events waiting for a package's instances",
        ),
        (
            "steedos.package.events.expired",
            MetricKind::Counter,
            "event",
            "Events dropped past their deadline",
        ),
        (
            "steedos.package.events.refused",
            MetricKind::Counter,
            "event",
            "Emits refused: the package's event queue had no room",
        ),
        (
            "steedos.package.log.lines.dropped",
            MetricKind::Counter,
            "line",
            "Guest log lines dropped over the package's log budget",
        ),
    ];
    let mut out: Vec<Metric> = figures
        .iter()
        .map(|(name, kind, unit, help)| Metric::new(name, *kind, unit, PACKAGE_LABELS, help))
        .collect();
    for r in packages {
        let labels = vec![Some(r.name.clone()), Some(r.state.name().to_string())];
        let values = [
            r.live as u64,
            r.restarts,
            r.queued as u64,
            r.events.queued as u64,
            r.events.expired,
            r.events.refused,
            r.log_lines_dropped,
        ];
        for (metric, value) in out.iter_mut().zip(values) {
            metric.number(labels.clone(), value as f64);
        }
    }
    out.insert(0, services);
    out
}

fn cache_metrics(kv: Option<&crate::kv::Stores>) -> Vec<Metric> {
    let Some(cache) = kv.and_then(crate::kv::Stores::cache) else {
        return Vec::new();
    };
    let counts = cache.counts();
    let hits: u64 = counts.iter().map(|(_, c)| c.hits).sum();
    let misses: u64 = counts.iter().map(|(_, c)| c.misses).sum();
    let mut get = Metric::new(
        "moleculer.cacher.get.total",
        MetricKind::Counter,
        "",
        &[],
        "Calls of cached actions (answered from the cache or not)",
    );
    get.number(Vec::new(), (hits + misses) as f64);
    let mut found = Metric::new(
        "moleculer.cacher.found.total",
        MetricKind::Counter,
        "",
        &[],
        "Calls answered from the action cache",
    );
    found.number(Vec::new(), hits as f64);
    let mut per_action = Metric::new(
        "steedos.cache.hits",
        MetricKind::Counter,
        "request",
        &["service", "action"],
        "Calls answered from the action cache, per action",
    );
    for (action, c) in counts {
        let package = action.split_once('.').map_or(action.as_str(), |(p, _)| p);
        per_action.number(
            vec![Some(package.to_string()), Some(action.clone())],
            c.hits as f64,
        );
    }
    vec![get, found, per_action]
}

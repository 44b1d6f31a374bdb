//! Prometheus metrics, through the official `prometheus-client` crate.
//!
//! Per action: calls, errors by kind, and a latency histogram, recorded by
//! the broker on every call through handles made once per action (no label
//! lookup on the hot path). Per package: restarts, live instances and
//! queue depth, read from the broker when `/metrics` is scraped.
//!
//! The per-call counter and histogram are split into per-thread shards,
//! each on a cache line of its own, and summed when scraped: the cores
//! serving calls never contend for a lock or a line to record them.
//!
//! It owns the registry of metrics and their rendering; it reads package
//! reports from the [`health`](crate::health) leaf and must not import the
//! broker, whose calls record into it.

use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::exponential_buckets;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::context::{CallError, ErrorKind};
use crate::health::ServiceReport;

mod export;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    package: String,
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    package: String,
    action: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PackageLabels {
    package: String,
    state: String,
}

/// Shards of a per-call metric; threads beyond this many share them.
const SHARDS: usize = 8;

/// The calling thread's shard.
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static SHARD: usize = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    }
    SHARD.with(|s| *s)
}

/// A value on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded<T>(T);

/// A counter recorded per thread and summed when scraped.
#[derive(Clone, Debug, Default)]
pub struct ShardedCounter(Arc<[Padded<AtomicU64>; SHARDS]>);

impl ShardedCounter {
    fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Upper bounds of the latency buckets, in seconds: 1 µs to about 67 s by
/// factors of 4 (and +Inf).
static LATENCY_BOUNDS: LazyLock<Vec<f64>> =
    LazyLock::new(|| exponential_buckets(0.000_001, 4.0, LATENCY_BUCKETS as u16).collect());
const LATENCY_BUCKETS: usize = 14;

/// One thread's share of a latency histogram: the count of each bucket
/// (the last is +Inf) and the sum in nanoseconds. Exactly one cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
struct LatencyShard {
    buckets: [AtomicU64; LATENCY_BUCKETS + 1],
    sum_ns: AtomicU64,
}

/// A latency histogram recorded per thread and summed when scraped.
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram(Arc<[LatencyShard; SHARDS]>);

impl LatencyHistogram {
    fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = LATENCY_BOUNDS
            .iter()
            .position(|bound| *bound >= seconds)
            .unwrap_or(LATENCY_BUCKETS);
        let shard = &self.0[shard()];
        shard.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        shard.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> fmt::Result {
        let bucket = |i: usize| -> u64 {
            self.0
                .iter()
                .map(|s| s.buckets[i].load(Ordering::Relaxed))
                .sum()
        };
        let buckets: Vec<(f64, u64)> = LATENCY_BOUNDS
            .iter()
            .copied()
            .chain([f64::MAX])
            .enumerate()
            .map(|(i, bound)| (bound, bucket(i)))
            .collect();
        // The count is the buckets' total, so the two always agree.
        let count = buckets.iter().map(|(_, n)| n).sum();
        let sum_ns: u64 = self
            .0
            .iter()
            .map(|s| s.sum_ns.load(Ordering::Relaxed))
            .sum();
        encoder.encode_histogram::<NoLabelSet>(sum_ns as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// Every metric of one host.
pub struct Metrics {
    registry: Mutex<Registry>,
    calls: Family<ActionLabels, ShardedCounter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<ActionLabels, LatencyHistogram>,
    restarts: Family<PackageLabels, Gauge>,
    live: Family<PackageLabels, Gauge>,
    queued: Family<PackageLabels, Gauge>,
    circuits: Family<ActionLabels, Gauge>,
    /// Packets from the cluster bus dropped, whatever the cause.
    cluster_dropped: Counter,
    /// Telemetry's own: spans a full sink dropped, traces shed (see
    /// [`Metrics::record_telemetry`]).
    telemetry: [Counter; 2],
    /// Per package: event queue and guest log figures, by name.
    package_figures: Vec<(&'static str, Family<PackageLabels, Gauge>)>,
    /// Per package: outgoing HTTP requests.
    http: crate::http::HttpMetrics,
    /// Key-value buckets and the action cache.
    kv: KvFamilies,
    /// Every action's handles, for exporting them (`export.rs`).
    actions: export::ActionIndex,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BucketLabels {
    bucket: String,
}

/// The key-value figures: bucket sizes, cache hits and misses per action.
struct KvFamilies {
    keys: Family<BucketLabels, Gauge>,
    bytes: Family<BucketLabels, Gauge>,
    hits: Family<ActionLabels, Gauge>,
    misses: Family<ActionLabels, Gauge>,
}

impl KvFamilies {
    fn register(registry: &mut Registry) -> KvFamilies {
        let families = KvFamilies {
            keys: Family::default(),
            bytes: Family::default(),
            hits: Family::default(),
            misses: Family::default(),
        };
        let figures = [
            (
                "kv_bucket_keys",
                "Keys held per key-value bucket (measured every few seconds)",
                &families.keys,
            ),
            (
                "kv_bucket_bytes",
                "Bytes of keys and values per key-value bucket (measured every few seconds)",
                &families.bytes,
            ),
        ];
        for (name, help, family) in figures {
            registry.register(name, help, family.clone());
        }
        let cache = [
            (
                "action_cache_hits",
                "Calls answered from the action cache, since load",
                &families.hits,
            ),
            (
                "action_cache_misses",
                "Calls of cached actions that entered the package, since load",
                &families.misses,
            ),
        ];
        for (name, help, family) in cache {
            registry.register(name, help, family.clone());
        }
        families
    }
}

impl Metrics {
    /// Reads the key-value figures of `stores` into the registry; call it
    /// before [`Metrics::render`].
    pub fn record_kv(&self, stores: &crate::kv::Stores) {
        let k = &self.kv;
        for (bucket, keys, bytes) in stores.last_sizes() {
            let l = BucketLabels { bucket };
            k.keys
                .get_or_create(&l)
                .set(i64::try_from(keys).unwrap_or(i64::MAX));
            k.bytes
                .get_or_create(&l)
                .set(i64::try_from(bytes).unwrap_or(i64::MAX));
        }
        let Some(cache) = stores.cache() else { return };
        for (action, counts) in cache.counts() {
            let (package, action) = action.split_once('.').unwrap_or((&action, ""));
            let l = ActionLabels {
                package: package.to_owned(),
                action: action.to_owned(),
            };
            k.hits
                .get_or_create(&l)
                .set(i64::try_from(counts.hits).unwrap_or(i64::MAX));
            k.misses
                .get_or_create(&l)
                .set(i64::try_from(counts.misses).unwrap_or(i64::MAX));
        }
    }
}

/// Per-package figures read from [`ServiceReport`] when scraped: name, help.
const PACKAGE_FIGURES: [(&str, &str); 8] = [
    (
        "package_events_queued",
        "Events waiting for a package's instances",
    ),
    (
        "package_event_queue_bytes",
        "Bytes the events waiting for a package are charged (bounded per package)",
    ),
    (
        "package_events_expired",
        "Events dropped because they waited past their deadline, since load",
    ),
    (
        "package_events_refused",
        "Emits refused because a package's event queue had no room, since load",
    ),
    (
        "package_events_too_deep",
        "Emits to a package dropped at the event chain depth limit, since load",
    ),
    (
        "package_emits_throttled",
        "A package's emits that waited for its emit_rate budget, since load",
    ),
    (
        "package_emits_over_rate",
        "A package's emits refused over its emit_rate (budget after their deadline), since load",
    ),
    (
        "package_guest_log_lines_dropped",
        "Guest log lines dropped over the package's log budget, since load",
    ),
];

/// The recording handles of one action.
#[derive(Clone)]
pub struct ActionMetrics {
    calls: ShardedCounter,
    errors: [Counter; 7],
    latency: LatencyHistogram,
}

impl ActionMetrics {
    /// Records one call's outcome and duration.
    pub fn record<T>(&self, elapsed: Duration, outcome: &Result<T, CallError>) {
        self.calls.inc();
        self.latency.observe(elapsed);
        if let Err(e) = outcome {
            // `ErrorKind::ALL` is in declaration order, so a kind is its index.
            self.errors[e.kind() as usize].inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// The counters of what the host itself dropped or shed: packets from the
/// cluster bus, and spans and traces of the telemetry.
fn register_own_counters(registry: &mut Registry) -> (Counter, [Counter; 2]) {
    let cluster_dropped = Counter::default();
    registry.register(
        "cluster_packets_dropped",
        "Packets from the cluster bus dropped (bad, refused, over a bound), since start",
        cluster_dropped.clone(),
    );
    let telemetry = [Counter::default(), Counter::default()];
    registry.register(
        "telemetry_spans_dropped",
        "Spans dropped as they ended because the queue to a sink was full (telemetry on)",
        telemetry[0].clone(),
    );
    registry.register(
        "telemetry_traces_shed",
        "Traces not started while every span sink was full (telemetry on)",
        telemetry[1].clone(),
    );
    (cluster_dropped, telemetry)
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("steedos");
        let calls = Family::<ActionLabels, ShardedCounter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency = Family::<ActionLabels, LatencyHistogram>::default();
        let restarts = Family::<PackageLabels, Gauge>::default();
        let live = Family::<PackageLabels, Gauge>::default();
        let queued = Family::<PackageLabels, Gauge>::default();
        let circuits = Family::<ActionLabels, Gauge>::default();
        registry.register("calls", "Calls per action", calls.clone());
        registry.register(
            "call_errors",
            "Failed calls per action and error kind",
            errors.clone(),
        );
        registry.register(
            "call_duration_seconds",
            "Call latency per action",
            latency.clone(),
        );
        registry.register(
            "package_restarts",
            "Instance restarts per package since load",
            restarts.clone(),
        );
        registry.register(
            "package_instances",
            "Live instances per package",
            live.clone(),
        );
        registry.register(
            "package_queue_depth",
            "Calls waiting for an idle instance",
            queued.clone(),
        );
        registry.register(
            "circuit_open",
            "1 while an action's circuit breaker is open or half-open",
            circuits.clone(),
        );
        let (cluster_dropped, telemetry) = register_own_counters(&mut registry);
        let package_figures = PACKAGE_FIGURES
            .map(|(name, help)| {
                let family = Family::<PackageLabels, Gauge>::default();
                registry.register(name, help, family.clone());
                (name, family)
            })
            .to_vec();
        let http = crate::http::HttpMetrics::default();
        http.register(&mut registry);
        let kv = KvFamilies::register(&mut registry);
        Metrics {
            actions: export::ActionIndex::default(),
            http,
            kv,
            package_figures,
            registry: Mutex::new(registry),
            calls,
            errors,
            latency,
            restarts,
            live,
            queued,
            circuits,
            cluster_dropped,
            telemetry,
        }
    }

    /// Brings the telemetry counters up to what the telemetry counted:
    /// `dropped` spans and `shed` traces since start (read at a scrape).
    pub fn record_telemetry(&self, dropped: u64, shed: u64) {
        // Two scrapes at once must not both add the same difference.
        let _one = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        for (counter, now) in self.telemetry.iter().zip([dropped, shed]) {
            counter.inc_by(now.saturating_sub(counter.get()));
        }
    }

    /// The counter of packets from the cluster bus dropped, for the transport.
    pub fn cluster_packets_dropped(&self) -> Counter {
        self.cluster_dropped.clone()
    }

    /// The packages' outgoing HTTP metrics, for linking them.
    pub fn http(&self) -> &crate::http::HttpMetrics {
        &self.http
    }

    /// Handles for recording `package.action`.
    pub fn action(&self, package: &str, action: &str) -> ActionMetrics {
        let labels = ActionLabels {
            package: package.to_string(),
            action: action.to_string(),
        };
        let errors = ErrorKind::ALL.map(|kind| {
            let l = ErrorLabels {
                package: package.to_string(),
                action: action.to_string(),
                kind: kind.to_string(),
            };
            self.errors.get_or_create(&l).clone()
        });
        let handles = ActionMetrics {
            calls: self.calls.get_or_create(&labels).clone(),
            errors,
            latency: self.latency.get_or_create(&labels).clone(),
        };
        self.actions.keep(labels.package, labels.action, &handles);
        handles
    }

    /// The Prometheus text exposition, with the packages' state now.
    pub fn render(&self, packages: &[ServiceReport]) -> String {
        self.restarts.clear();
        self.live.clear();
        self.queued.clear();
        self.circuits.clear();
        for (_, family) in &self.package_figures {
            family.clear();
        }
        for r in packages {
            for (action, _) in &r.circuits {
                let l = ActionLabels {
                    package: r.name.clone(),
                    action: action.clone(),
                };
                self.circuits.get_or_create(&l).set(1);
            }
            let l = PackageLabels {
                package: r.name.clone(),
                state: r.state.to_string(),
            };
            self.restarts
                .get_or_create(&l)
                .set(i64::try_from(r.restarts).unwrap_or(i64::MAX));
            self.live
                .get_or_create(&l)
                .set(i64::try_from(r.live).unwrap_or(i64::MAX));
            self.queued
                .get_or_create(&l)
                .set(i64::try_from(r.queued).unwrap_or(i64::MAX));
            let e = &r.events;
            let figures = [
                e.queued as u64,
                e.queued_bytes as u64,
                e.expired,
                e.refused,
                e.too_deep,
                e.emits_throttled,
                e.emits_over_rate,
                r.log_lines_dropped,
            ];
            for ((_, family), value) in self.package_figures.iter().zip(figures) {
                family
                    .get_or_create(&l)
                    .set(i64::try_from(value).unwrap_or(i64::MAX));
            }
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::histogram::Histogram;

    /// The sharded metrics read exactly as prometheus-client's own would.
    #[test]
    fn sharded_metrics_encode_as_the_crates_own() {
        let durations =
            [0, 500, 1_000, 3_999, 250_000, 7_000_000, 90_000_000_000u64].map(Duration::from_nanos);
        let (mut ours, mut theirs) = (Registry::default(), Registry::default());
        let (counter, histogram) = (ShardedCounter::default(), LatencyHistogram::default());
        let (c, h) = (
            Counter::<u64>::default(),
            Histogram::new(exponential_buckets(0.000_001, 4.0, 14)),
        );
        ours.register("calls", "Calls", counter.clone());
        ours.register("latency", "Latency", histogram.clone());
        theirs.register("calls", "Calls", c.clone());
        theirs.register("latency", "Latency", h.clone());
        std::thread::scope(|s| {
            for d in durations {
                let (counter, histogram) = (&counter, &histogram);
                s.spawn(move || {
                    counter.inc();
                    histogram.observe(d);
                });
                c.inc();
                h.observe(d.as_secs_f64());
            }
        });
        let (mut a, mut b) = (String::new(), String::new());
        encode(&mut a, &ours).expect("encode");
        encode(&mut b, &theirs).expect("encode");
        // The sums are added in another order (and in nanoseconds): compare them as numbers.
        let split = |text: &str| -> (Vec<String>, f64) {
            let sum = text
                .lines()
                .find_map(|l| l.strip_prefix("latency_sum "))
                .and_then(|v| v.parse().ok())
                .expect("a sum");
            let rest = text
                .lines()
                .filter(|l| !l.starts_with("latency_sum "))
                .map(str::to_string)
                .collect();
            (rest, sum)
        };
        let ((a, sum_a), (b, sum_b)) = (split(&a), split(&b));
        assert_eq!(a, b);
        assert!((sum_a - sum_b).abs() < 1e-9, "{sum_a} vs {sum_b}");
    }
}

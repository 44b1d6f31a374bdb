//! The host's metrics as the metric sinks take them: a plain snapshot
//! (names, labels, numbers, histograms) read from the counters the
//! Prometheus `/metrics` already keeps, every export interval. The metrics
//! module fills it (it sits above this leaf); `$metrics.snapshot` and the
//! OTLP metrics exporter read it. Nothing here is touched on a call.

use std::sync::Arc;
use std::time::SystemTime;

/// What a metric counts, as Moleculer and OpenTelemetry type it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetricKind {
    /// A total that only grows (since the host started).
    Counter,
    /// A value now.
    Gauge,
    /// Observations in buckets, with their count and sum.
    Histogram,
}

impl MetricKind {
    /// Moleculer's name of the type.
    pub fn moleculer(self) -> &'static str {
        match self {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        }
    }
}

/// A histogram's reading: bucket counts (not cumulative, the last one past
/// every bound), their total and the sum of what was observed.
#[derive(Clone, Debug, PartialEq)]
pub struct Histogram {
    /// Upper bounds of the buckets, in the metric's unit.
    pub bounds: Arc<[f64]>,
    /// Count per bucket: `bounds.len() + 1` of them.
    pub buckets: Vec<u64>,
    /// Observations.
    pub count: u64,
    /// Their sum, in the metric's unit.
    pub sum: f64,
}

/// One labelled value of a metric.
#[derive(Clone, Debug, PartialEq)]
pub enum Reading {
    /// A counter's or a gauge's value.
    Number(f64),
    /// A histogram's.
    Histogram(Histogram),
}

/// A metric's value under one set of labels.
#[derive(Clone, Debug, PartialEq)]
pub struct Point {
    /// A value (or none) per label name of its metric, in that order.
    pub labels: Vec<Option<String>>,
    /// What it reads.
    pub reading: Reading,
}

/// One metric: its name, meaning and every labelled value.
#[derive(Clone, Debug, PartialEq)]
pub struct Metric {
    /// `moleculer.request.total`, `steedos.package.instances`, ...
    pub name: &'static str,
    /// What it counts.
    pub description: &'static str,
    /// Its unit (`request`, `millisecond`, ...), as Moleculer spells it.
    pub unit: &'static str,
    /// Counter, gauge or histogram.
    pub kind: MetricKind,
    /// The names of its labels.
    pub label_names: &'static [&'static str],
    /// Its values.
    pub points: Vec<Point>,
}

impl Metric {
    /// A metric with no values yet.
    pub fn new(
        name: &'static str,
        kind: MetricKind,
        unit: &'static str,
        label_names: &'static [&'static str],
        description: &'static str,
    ) -> Metric {
        Metric {
            name,
            description,
            unit,
            kind,
            label_names,
            points: Vec::new(),
        }
    }

    /// Adds a number under `labels` (one per label name).
    pub fn number(&mut self, labels: Vec<Option<String>>, value: f64) {
        self.points.push(Point {
            labels,
            reading: Reading::Number(value),
        });
    }
}

/// Every metric of the host at one moment.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricSet {
    /// When it was read.
    pub time: SystemTime,
    /// The metrics.
    pub metrics: Vec<Metric>,
}

/// What reads the host's metrics (the broker hands one to the telemetry).
pub type MetricSource = Arc<dyn Fn() -> Option<MetricSet> + Send + Sync>;

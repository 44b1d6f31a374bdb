//! OTLP metrics: every export interval, the host's [`MetricSet`] read from
//! its counters (no instrument on the call path) and sent as cumulative
//! sums, gauges and explicit-bucket histograms, under the same names
//! `$metrics.snapshot` uses. A failed export is logged and skipped (the
//! next one carries the totals).

use std::sync::Weak;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::metrics::v1::{
    self as pb, AggregationTemporality, HistogramDataPoint, NumberDataPoint, ResourceMetrics,
    ScopeMetrics, metric, number_data_point,
};

use super::Telemetry;
use super::config::MetricsConfig;
use super::metric_set::{Metric, MetricKind, MetricSet, Reading};
use super::otlp_wire::{Wire, attribute, nanos, resource, scope};

/// The request carrying `set`, counted from `start` (the host's start).
pub(super) fn request(
    set: &MetricSet,
    start: SystemTime,
    service: &str,
) -> ExportMetricsServiceRequest {
    let (start, now) = (nanos(start), nanos(set.time));
    let metrics = set.metrics.iter().map(|m| metric(m, start, now)).collect();
    ExportMetricsServiceRequest {
        resource_metrics: vec![ResourceMetrics {
            resource: Some(resource(service)),
            scope_metrics: vec![ScopeMetrics {
                scope: Some(scope()),
                metrics,
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        }],
    }
}

fn attributes(m: &Metric, labels: &[Option<String>]) -> Vec<KeyValue> {
    m.label_names
        .iter()
        .zip(labels)
        .filter_map(|(name, value)| value.as_ref().map(|v| attribute(*name, v.clone())))
        .collect()
}

fn metric(m: &Metric, start: u64, now: u64) -> pb::Metric {
    let numbers = || -> Vec<NumberDataPoint> {
        m.points
            .iter()
            .filter_map(|p| match &p.reading {
                Reading::Number(n) => Some(NumberDataPoint {
                    attributes: attributes(m, &p.labels),
                    start_time_unix_nano: start,
                    time_unix_nano: now,
                    value: Some(number_data_point::Value::AsDouble(*n)),
                    ..NumberDataPoint::default()
                }),
                Reading::Histogram(_) => None,
            })
            .collect()
    };
    let cumulative = AggregationTemporality::Cumulative as i32;
    let data = match m.kind {
        MetricKind::Counter => metric::Data::Sum(pb::Sum {
            data_points: numbers(),
            aggregation_temporality: cumulative,
            is_monotonic: true,
        }),
        MetricKind::Gauge => metric::Data::Gauge(pb::Gauge {
            data_points: numbers(),
        }),
        MetricKind::Histogram => metric::Data::Histogram(pb::Histogram {
            data_points: m
                .points
                .iter()
                .filter_map(|p| match &p.reading {
                    Reading::Histogram(h) => Some(HistogramDataPoint {
                        attributes: attributes(m, &p.labels),
                        start_time_unix_nano: start,
                        time_unix_nano: now,
                        count: h.count,
                        sum: Some(h.sum),
                        bucket_counts: h.buckets.clone(),
                        explicit_bounds: h.bounds.to_vec(),
                        ..HistogramDataPoint::default()
                    }),
                    Reading::Number(_) => None,
                })
                .collect(),
            aggregation_temporality: cumulative,
        }),
    };
    pb::Metric {
        name: m.name.to_string(),
        description: m.description.to_string(),
        unit: m.unit.to_string(),
        data: Some(data),
        ..pb::Metric::default()
    }
}

/// Exports `t`'s metrics every `config.interval` until `t` is gone.
pub(super) fn start(t: Weak<Telemetry>, config: &MetricsConfig, service: String) {
    let wire = match Wire::new(&config.otlp) {
        Ok(w) => w,
        Err(e) => {
            tracing::error!(endpoint = %config.otlp.endpoint, error = %e, "telemetry: the OTLP metrics exporter cannot be built; metrics are not exported");
            return;
        }
    };
    let interval = config.interval.max(Duration::from_millis(10));
    let started = SystemTime::now();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(telemetry) = t.upgrade() else { return };
            let Some(set) = telemetry.read_metrics() else {
                continue;
            };
            drop(telemetry);
            let n = set.metrics.len();
            if let Err(e) = wire.metrics(request(&set, started, &service)).await {
                tracing::warn!(metrics = n, error = %e, "telemetry: metrics not exported");
            }
        }
    });
}

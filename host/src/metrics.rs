//! Prometheus metrics, through the official `prometheus-client` crate.
//!
//! Per action: calls, errors by kind, and a latency histogram, recorded by
//! the broker on every call through handles made once per action (no label
//! lookup on the hot path). Per package: restarts, live instances and
//! queue depth, read from the broker when `/metrics` is scraped.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::broker::ServiceReport;
use crate::context::CallError;

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

/// The error kinds, in `call-error` order.
const KINDS: [&str; 7] = [
    "not-found",
    "invalid-params",
    "timeout",
    "crashed",
    "overloaded",
    "denied",
    "failed",
];

/// Every metric of one host.
pub struct Metrics {
    registry: Mutex<Registry>,
    calls: Family<ActionLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    latency: Family<ActionLabels, Histogram>,
    restarts: Family<PackageLabels, Gauge>,
    live: Family<PackageLabels, Gauge>,
    queued: Family<PackageLabels, Gauge>,
    circuits: Family<ActionLabels, Gauge>,
}

/// The recording handles of one action.
#[derive(Clone)]
pub struct ActionMetrics {
    calls: Counter,
    errors: [Counter; 7],
    latency: Histogram,
}

impl ActionMetrics {
    /// Records one call's outcome and duration.
    pub fn record<T>(&self, elapsed: Duration, outcome: &Result<T, CallError>) {
        self.calls.inc();
        self.latency.observe(elapsed.as_secs_f64());
        if let Err(e) = outcome {
            let i = KINDS
                .iter()
                .position(|k| *k == e.kind())
                .unwrap_or(KINDS.len() - 1);
            self.errors[i].inc();
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every family registered.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("steedos");
        let calls = Family::<ActionLabels, Counter>::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let latency = Family::<ActionLabels, Histogram>::new_with_constructor(
            (|| Histogram::new(exponential_buckets(0.000_001, 4.0, 14))) as fn() -> Histogram,
        );
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
        Metrics {
            registry: Mutex::new(registry),
            calls,
            errors,
            latency,
            restarts,
            live,
            queued,
            circuits,
        }
    }

    /// Handles for recording `package.action`.
    pub fn action(&self, package: &str, action: &str) -> ActionMetrics {
        let labels = ActionLabels {
            package: package.to_string(),
            action: action.to_string(),
        };
        let errors = KINDS.map(|kind| {
            let l = ErrorLabels {
                package: package.to_string(),
                action: action.to_string(),
                kind: kind.to_string(),
            };
            self.errors.get_or_create(&l).clone()
        });
        ActionMetrics {
            calls: self.calls.get_or_create(&labels).clone(),
            errors,
            latency: self.latency.get_or_create(&labels).clone(),
        }
    }

    /// The Prometheus text exposition, with the packages' state now.
    pub fn render(&self, packages: &[ServiceReport]) -> String {
        self.restarts.clear();
        self.live.clear();
        self.queued.clear();
        self.circuits.clear();
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
        }
        let mut out = String::new();
        let registry = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        // Writing to a String cannot fail.
        let _ = encode(&mut out, &registry);
        out
    }
}

//! The metrics of packages' outgoing HTTP requests, per package: requests,
//! errors by kind, response bytes and latency. Registered in the host's
//! registry by [`crate::metrics`]; each package records through handles
//! made once when it is linked.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PackageLabel {
    package: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    package: String,
    kind: String,
}

/// Why an outgoing request failed, as the metrics count it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpErrorKind {
    /// No grant lets it through, or its address is not one the grant names.
    Denied,
    /// The package already has its most requests in flight.
    Limit,
    /// Connect, first-byte, between-bytes or the call's own deadline.
    Timeout,
    /// The response body is over the package's limit.
    TooLarge,
    /// The name did not resolve, or the connection failed.
    Connect,
    /// The TLS handshake failed.
    Tls,
    /// Anything else on the wire.
    Protocol,
}

impl HttpErrorKind {
    const ALL: [HttpErrorKind; 7] = [
        HttpErrorKind::Denied,
        HttpErrorKind::Limit,
        HttpErrorKind::Timeout,
        HttpErrorKind::TooLarge,
        HttpErrorKind::Connect,
        HttpErrorKind::Tls,
        HttpErrorKind::Protocol,
    ];

    fn label(self) -> &'static str {
        match self {
            HttpErrorKind::Denied => "denied",
            HttpErrorKind::Limit => "limit",
            HttpErrorKind::Timeout => "timeout",
            HttpErrorKind::TooLarge => "too_large",
            HttpErrorKind::Connect => "connect",
            HttpErrorKind::Tls => "tls",
            HttpErrorKind::Protocol => "protocol",
        }
    }
}

type LatencyFamily = Family<PackageLabel, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms to about 65 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Every package's outgoing HTTP metrics.
#[derive(Clone)]
pub struct HttpMetrics {
    requests: Family<PackageLabel, Counter>,
    errors: Family<ErrorLabels, Counter>,
    bytes: Family<PackageLabel, Counter>,
    latency: LatencyFamily,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            errors: Family::default(),
            bytes: Family::default(),
            latency: Family::new_with_constructor(latency_histogram),
        }
    }
}

impl HttpMetrics {
    /// Registers the families in `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "http_out_requests",
            "Outgoing HTTP requests per package (denied ones included)",
            self.requests.clone(),
        );
        registry.register(
            "http_out_errors",
            "Failed outgoing HTTP requests per package and kind",
            self.errors.clone(),
        );
        registry.register(
            "http_out_response_bytes",
            "Response body bytes packages received",
            self.bytes.clone(),
        );
        registry.register(
            "http_out_duration_seconds",
            "Outgoing HTTP request latency, from send to the end of the response body",
            self.latency.clone(),
        );
    }

    /// Handles for recording `package`'s requests.
    pub fn package(&self, package: &str) -> PackageHttpMetrics {
        let label = PackageLabel {
            package: package.to_string(),
        };
        let errors = HttpErrorKind::ALL.map(|kind| {
            let l = ErrorLabels {
                package: package.to_string(),
                kind: kind.label().to_string(),
            };
            self.errors.get_or_create(&l).clone()
        });
        PackageHttpMetrics {
            requests: self.requests.get_or_create(&label).clone(),
            errors,
            bytes: self.bytes.get_or_create(&label).clone(),
            latency: self.latency.get_or_create(&label).clone(),
        }
    }
}

/// One package's recording handles.
#[derive(Clone, Debug)]
pub struct PackageHttpMetrics {
    requests: Counter,
    errors: [Counter; 7],
    bytes: Counter,
    latency: Histogram,
}

impl PackageHttpMetrics {
    pub(super) fn request(&self) {
        self.requests.inc();
    }

    pub(super) fn error(&self, kind: HttpErrorKind) {
        // `ALL` is in declaration order, so a kind is its index.
        self.errors[kind as usize].inc();
    }

    pub(super) fn bytes(&self, n: u64) {
        self.bytes.inc_by(n);
    }

    pub(super) fn latency(&self, elapsed: Duration) {
        self.latency.observe(elapsed.as_secs_f64());
    }
}

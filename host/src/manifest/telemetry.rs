//! `[telemetry]`: whether the host records spans, where it exports them
//! over OTLP (endpoint, protocol), what share of traces it samples, and
//! whether it also emits Moleculer's `$tracing.spans` events. Only what
//! was written is checked here (errors at the line); the `OTEL_*`
//! variables are read with it by `telemetry`.

use std::marker::PhantomData;
use std::time::Duration;

use serde::Deserialize;
use serde::de::Deserializer;
use toml::Spanned;
use toml::de::DeValue;

use super::error::ManifestError;
use super::source::{Scope, Source, find_key};
use super::values::{DurationIn, FromTomlStr, StrVisitor, Text};

/// How spans travel to the collector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// OTLP over HTTP, protobuf bodies (`http/protobuf`, port 4318).
    HttpProtobuf,
    /// OTLP over gRPC (`grpc`, port 4317).
    Grpc,
}

impl OtlpProtocol {
    /// Reads a protocol as `OTEL_EXPORTER_OTLP_PROTOCOL` spells it.
    pub fn parse(text: &str) -> Result<OtlpProtocol, String> {
        match text {
            "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
            "grpc" => Ok(OtlpProtocol::Grpc),
            other => Err(format!(
                "{other:?} is not one of \"http/protobuf\", \"grpc\""
            )),
        }
    }
}

impl FromTomlStr for OtlpProtocol {
    const EXPECTING: &'static str = "\"http/protobuf\" or \"grpc\"";

    fn from_toml_str(text: &str) -> Result<Self, String> {
        OtlpProtocol::parse(text)
    }
}

impl<'de> Deserialize<'de> for OtlpProtocol {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_str(StrVisitor(PhantomData))
    }
}

/// Whether `text` may be an OTLP endpoint: an `http://` or `https://` URL
/// with a host.
pub fn check_endpoint(text: &str) -> Result<(), String> {
    let uri: http::Uri = text
        .parse()
        .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
    match (uri.scheme_str(), uri.host()) {
        (Some("http" | "https"), Some(host)) if !host.is_empty() => Ok(()),
        _ => Err(format!(
            "{text:?} is not an http:// or https:// URL (try \"http://127.0.0.1:4318\")"
        )),
    }
}

/// `[telemetry]` as written; `None` where it says nothing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TelemetrySettings {
    /// `enabled`: record and export spans.
    pub enabled: Option<bool>,
    /// `endpoint`: the collector's base URL.
    pub endpoint: Option<String>,
    /// `protocol`.
    pub protocol: Option<OtlpProtocol>,
    /// `sampler_ratio`: the share of new traces recorded, 0.0..=1.0.
    pub sampler_ratio: Option<f64>,
    /// `service_name`: the `service.name` of this host's spans.
    pub service_name: Option<String>,
    /// `moleculer_events`: also emit `$tracing.spans` events.
    pub moleculer_events: bool,
    /// `moleculer_interval`: how often those events go out (Moleculer's
    /// event exporter `interval`, 5 s).
    pub moleculer_interval: Duration,
    /// `moleculer_metrics_only_changes`: `$metrics.snapshot` carries only
    /// the metrics that changed (Moleculer's `onlyChanges`).
    pub moleculer_metrics_only_changes: bool,
    /// `metrics`: export metrics over OTLP.
    pub metrics: Option<bool>,
    /// `metrics_interval`: how often (60 s unless `OTEL_METRIC_EXPORT_INTERVAL` says).
    pub metrics_interval: Duration,
    /// `logs`: export guest log lines and host events over OTLP.
    pub logs: Option<bool>,
}

/// OpenTelemetry's default metric export interval.
pub const DEFAULT_METRICS_INTERVAL: Duration = Duration::from_secs(60);

/// Moleculer's event exporter sends its batch every 5 seconds.
pub const DEFAULT_MOLECULER_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
struct RawTelemetry {
    enabled: Option<bool>,
    endpoint: Option<Text>,
    protocol: Option<OtlpProtocol>,
    sampler_ratio: Option<f64>,
    service_name: Option<Text>,
    moleculer_events: Option<bool>,
    moleculer_interval: Option<DurationIn<10, 3_600_000>>,
    moleculer_metrics_only_changes: Option<bool>,
    metrics: Option<bool>,
    metrics_interval: Option<DurationIn<10, 3_600_000>>,
    logs: Option<bool>,
}

impl Source<'_> {
    /// `[telemetry]`, each bad value an error at its line.
    pub(super) fn telemetry(
        &self,
        value: Option<&Spanned<DeValue<'_>>>,
    ) -> Result<TelemetrySettings, ManifestError> {
        let Some(value) = value else {
            return Ok(TelemetrySettings {
                moleculer_interval: DEFAULT_MOLECULER_INTERVAL,
                metrics_interval: DEFAULT_METRICS_INTERVAL,
                ..TelemetrySettings::default()
            });
        };
        let scope = Scope::new(self, value, "telemetry", None);
        let raw: RawTelemetry = scope.deserialize()?;
        let at = |key: &str| find_key(value.get_ref(), key).unwrap_or_else(|| value.span());
        if let Some(endpoint) = &raw.endpoint {
            check_endpoint(&endpoint.0).map_err(|e| scope.error(at("endpoint"), e))?;
        }
        if let Some(ratio) = raw.sampler_ratio
            && !(0.0..=1.0).contains(&ratio)
        {
            return Err(scope.error(at("sampler_ratio"), format!("{ratio} is not in 0.0..=1.0")));
        }
        Ok(TelemetrySettings {
            enabled: raw.enabled,
            endpoint: raw.endpoint.map(|t| t.0),
            protocol: raw.protocol,
            sampler_ratio: raw.sampler_ratio,
            service_name: raw.service_name.map(|t| t.0),
            moleculer_events: raw.moleculer_events.unwrap_or(false),
            moleculer_interval: raw
                .moleculer_interval
                .map_or(DEFAULT_MOLECULER_INTERVAL, |d| d.0),
            moleculer_metrics_only_changes: raw.moleculer_metrics_only_changes.unwrap_or(false),
            metrics: raw.metrics,
            metrics_interval: raw
                .metrics_interval
                .map_or(DEFAULT_METRICS_INTERVAL, |d| d.0),
            logs: raw.logs,
        })
    }
}

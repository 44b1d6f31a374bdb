//! What telemetry was asked for: `[telemetry]` read with the standard
//! `OTEL_*` variables (the manifest wins where both say something), and
//! the sampler. A bad variable is an error naming it; off by default.

use std::time::Duration;

use crate::manifest::{OtlpProtocol, TelemetrySettings, check_endpoint};

/// Why the telemetry settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// An `OTEL_*` variable has a value the host cannot use.
    #[error("{variable}={value:?}: {why}")]
    Variable {
        /// Its name.
        variable: &'static str,
        /// What it says.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// The OTLP exporter could not be built.
    #[error("the OTLP exporter: {0}")]
    Exporter(String),
}

/// Which traces are recorded.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampler {
    /// Every one.
    AlwaysOn,
    /// None.
    AlwaysOff,
    /// This share of them, by trace id (so every node agrees).
    Ratio(f64),
    /// The caller's decision when it made one, else the inner sampler's.
    ParentBased(Box<Sampler>),
}

impl Sampler {
    /// Whether to record a trace whose caller decided `parent`.
    pub fn decide(&self, parent: Option<bool>, trace: impl FnOnce() -> u128) -> bool {
        match (self, parent) {
            (Sampler::AlwaysOn, _) => true,
            (Sampler::AlwaysOff, _) => false,
            (Sampler::Ratio(r), _) => {
                // OpenTelemetry's TraceIdRatioBased: the low 63 bits against the ratio.
                let low = (trace() as u64) >> 1;
                (low as f64) < r * (1u64 << 63) as f64
            }
            (Sampler::ParentBased(_), Some(decided)) => decided,
            (Sampler::ParentBased(root), None) => root.decide(None, trace),
        }
    }
}

/// Where and how spans are exported over OTLP.
#[derive(Clone, Debug, PartialEq)]
pub struct OtlpConfig {
    /// The full URL spans are sent to (`.../v1/traces` for HTTP).
    pub endpoint: String,
    /// HTTP/protobuf or gRPC.
    pub protocol: OtlpProtocol,
    /// How long one export may take (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
    /// The longest a span waits for its batch (`OTEL_BSP_SCHEDULE_DELAY`).
    pub delay: Duration,
}

/// The resolved telemetry settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// `service.name`.
    pub service_name: String,
    /// Which traces are recorded.
    pub sampler: Sampler,
    /// OTLP export, when on.
    pub otlp: Option<OtlpConfig>,
    /// Moleculer's `$tracing.spans` events, when on.
    pub moleculer_events: bool,
    /// How often they go out (`$metrics.snapshot` too).
    pub moleculer_interval: Duration,
    /// `$metrics.snapshot` with only the metrics that changed (Moleculer's
    /// `onlyChanges`).
    pub moleculer_metrics_only_changes: bool,
    /// OTLP metrics export, when on.
    pub metrics: Option<MetricsConfig>,
    /// OTLP logs export (guest lines and host events), when on.
    pub logs: Option<OtlpConfig>,
}

/// Where and how often metrics are exported over OTLP.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsConfig {
    /// The collector (`.../v1/metrics` over HTTP).
    pub otlp: OtlpConfig,
    /// How often (`OTEL_METRIC_EXPORT_INTERVAL`, 60 s by default).
    pub interval: Duration,
}

const DEFAULT_DELAY: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn bad(variable: &'static str, value: &str, why: impl Into<String>) -> ConfigError {
    ConfigError::Variable {
        variable,
        value: value.to_string(),
        why: why.into(),
    }
}

/// A variable that is set and not empty.
fn var(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

fn flag(env: Env<'_>, name: &'static str) -> Result<Option<bool>, ConfigError> {
    match var(env, name).map(|v| v.trim().to_ascii_lowercase()) {
        None => Ok(None),
        Some(v) if v == "true" => Ok(Some(true)),
        Some(v) if v == "false" => Ok(Some(false)),
        Some(v) => Err(bad(name, &v, "is not \"true\" or \"false\"")),
    }
}

fn millis(env: Env<'_>, name: &'static str, default: Duration) -> Result<Duration, ConfigError> {
    match var(env, name) {
        None => Ok(default),
        Some(v) => match v.trim().parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(bad(name, &v, "is not a number of milliseconds over 0")),
        },
    }
}

impl Config {
    /// The settings `[telemetry]` and `env` ask for; `None` when off.
    pub fn resolve(
        settings: &TelemetrySettings,
        app: &str,
        env: Env<'_>,
    ) -> Result<Option<Config>, ConfigError> {
        if flag(env, "OTEL_SDK_DISABLED")? == Some(true) {
            return Ok(None);
        }
        let env_endpoint =
            var(env, TRACES.endpoint).or_else(|| var(env, "OTEL_EXPORTER_OTLP_ENDPOINT"));
        let exporter_none = var(env, TRACES.exporter).is_some_and(|v| v.trim() == "none");
        let endpoint_given = settings.endpoint.is_some() || env_endpoint.is_some();
        let wants_metrics = signal_wanted(settings.metrics, METRICS, env)?;
        let wants_logs = signal_wanted(settings.logs, LOGS, env)?;
        let enabled = settings
            .enabled
            .unwrap_or(endpoint_given || settings.moleculer_events || wants_metrics || wants_logs);
        if !enabled {
            return Ok(None);
        }
        let wants_otlp = !exporter_none && (endpoint_given || !settings.moleculer_events);
        let otlp = match wants_otlp {
            true => Some(otlp_config(settings, env, TRACES)?),
            false => None,
        };
        let metrics = match wants_metrics {
            true => Some(MetricsConfig {
                otlp: otlp_config(settings, env, METRICS)?,
                interval: millis(
                    env,
                    "OTEL_METRIC_EXPORT_INTERVAL",
                    settings.metrics_interval,
                )?,
            }),
            false => None,
        };
        let logs = match wants_logs {
            true => Some(otlp_config(settings, env, LOGS)?),
            false => None,
        };
        let service_name = settings
            .service_name
            .clone()
            .or_else(|| var(env, "OTEL_SERVICE_NAME"))
            .unwrap_or_else(|| app.to_string());
        Ok(Some(Config {
            service_name,
            sampler: sampler(settings, env)?,
            otlp,
            moleculer_events: settings.moleculer_events,
            moleculer_interval: settings.moleculer_interval,
            moleculer_metrics_only_changes: settings.moleculer_metrics_only_changes,
            metrics,
            logs,
        }))
    }
}

/// The names one OTLP signal's settings go by.
#[derive(Clone, Copy)]
struct Signal {
    /// Its path over HTTP (`v1/traces`).
    path: &'static str,
    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT`.
    endpoint: &'static str,
    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL`.
    protocol: &'static str,
    /// `OTEL_<SIGNAL>_EXPORTER`.
    exporter: &'static str,
}

const TRACES: Signal = Signal {
    path: "v1/traces",
    endpoint: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    exporter: "OTEL_TRACES_EXPORTER",
};
const METRICS: Signal = Signal {
    path: "v1/metrics",
    endpoint: "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
    exporter: "OTEL_METRICS_EXPORTER",
};
const LOGS: Signal = Signal {
    path: "v1/logs",
    endpoint: "OTEL_EXPORTER_OTLP_LOGS_ENDPOINT",
    protocol: "OTEL_EXPORTER_OTLP_LOGS_PROTOCOL",
    exporter: "OTEL_LOGS_EXPORTER",
};

/// Whether metrics or logs go out over OTLP: `[telemetry] metrics`/`logs`
/// when written, else `OTEL_<SIGNAL>_EXPORTER` (`otlp` or `none`) or a
/// signal endpoint; off otherwise (unlike OpenTelemetry's default, so
/// turning traces on never starts exports nobody asked for).
fn signal_wanted(written: Option<bool>, signal: Signal, env: Env<'_>) -> Result<bool, ConfigError> {
    if let Some(on) = written {
        return Ok(on);
    }
    let Some(value) = var(env, signal.exporter) else {
        return Ok(var(env, signal.endpoint).is_some());
    };
    // A comma-separated list, as OpenTelemetry allows; only `otlp` is served here.
    let names: Vec<String> = value
        .split(',')
        .map(|n| n.trim().to_ascii_lowercase())
        .collect();
    match names.iter().find(|n| *n != "otlp" && *n != "none") {
        Some(other) => Err(bad(
            signal.exporter,
            &value,
            format!("{other:?} is not served here (\"otlp\" or \"none\")"),
        )),
        None => Ok(names.iter().any(|n| n == "otlp")),
    }
}

fn otlp_config(
    settings: &TelemetrySettings,
    env: Env<'_>,
    signal: Signal,
) -> Result<OtlpConfig, ConfigError> {
    let protocol = match settings.protocol {
        Some(p) => p,
        None => {
            let (name, value) = match var(env, signal.protocol) {
                Some(v) => (signal.protocol, Some(v)),
                None => (
                    "OTEL_EXPORTER_OTLP_PROTOCOL",
                    var(env, "OTEL_EXPORTER_OTLP_PROTOCOL"),
                ),
            };
            match value {
                None => OtlpProtocol::HttpProtobuf,
                Some(v) => OtlpProtocol::parse(v.trim()).map_err(|why| bad(name, &v, why))?,
            }
        }
    };
    let (base, whole) = match (&settings.endpoint, var(env, signal.endpoint)) {
        (Some(e), _) => (e.clone(), false),
        (None, Some(e)) => {
            check_endpoint(e.trim()).map_err(|why| bad(signal.endpoint, &e, why))?;
            (e.trim().to_string(), true)
        }
        (None, None) => match var(env, "OTEL_EXPORTER_OTLP_ENDPOINT") {
            Some(e) => {
                check_endpoint(e.trim())
                    .map_err(|why| bad("OTEL_EXPORTER_OTLP_ENDPOINT", &e, why))?;
                (e.trim().to_string(), false)
            }
            None => match protocol {
                OtlpProtocol::HttpProtobuf => ("http://localhost:4318".to_string(), false),
                OtlpProtocol::Grpc => ("http://localhost:4317".to_string(), false),
            },
        },
    };
    // A base endpoint gets the signal's path over HTTP (the OTLP spec).
    let endpoint = match (protocol, whole) {
        (OtlpProtocol::HttpProtobuf, false) => {
            format!("{}/{}", base.trim_end_matches('/'), signal.path)
        }
        _ => base,
    };
    Ok(OtlpConfig {
        endpoint,
        protocol,
        timeout: millis(env, "OTEL_EXPORTER_OTLP_TIMEOUT", DEFAULT_TIMEOUT)?,
        delay: millis(env, "OTEL_BSP_SCHEDULE_DELAY", DEFAULT_DELAY)?,
    })
}

fn sampler(settings: &TelemetrySettings, env: Env<'_>) -> Result<Sampler, ConfigError> {
    if let Some(ratio) = settings.sampler_ratio {
        return Ok(Sampler::ParentBased(Box::new(ratio_sampler(ratio))));
    }
    let arg = || -> Result<f64, ConfigError> {
        match var(env, "OTEL_TRACES_SAMPLER_ARG") {
            None => Ok(1.0),
            Some(v) => match v.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(bad(
                    "OTEL_TRACES_SAMPLER_ARG",
                    &v,
                    "is not a ratio in 0.0..=1.0",
                )),
            },
        }
    };
    let Some(name) = var(env, "OTEL_TRACES_SAMPLER") else {
        return Ok(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    };
    let parent = |s| Sampler::ParentBased(Box::new(s));
    Ok(match name.trim() {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => ratio_sampler(arg()?),
        "parentbased_always_on" => parent(Sampler::AlwaysOn),
        "parentbased_always_off" => parent(Sampler::AlwaysOff),
        "parentbased_traceidratio" => parent(ratio_sampler(arg()?)),
        _ => {
            return Err(bad(
                "OTEL_TRACES_SAMPLER",
                &name,
                "is not one of always_on, always_off, traceidratio, parentbased_always_on, \
                 parentbased_always_off, parentbased_traceidratio",
            ));
        }
    })
}

fn ratio_sampler(ratio: f64) -> Sampler {
    match ratio {
        r if r >= 1.0 => Sampler::AlwaysOn,
        r if r <= 0.0 => Sampler::AlwaysOff,
        r => Sampler::Ratio(r),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn resolve(
        settings: &TelemetrySettings,
        vars: &[(&str, &str)],
    ) -> Result<Option<Config>, ConfigError> {
        let vars: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::resolve(settings, "app", &|name| vars.get(name).cloned())
    }

    #[test]
    fn off_by_default_and_on_by_the_standard_variables() {
        let none = TelemetrySettings::default();
        assert_eq!(resolve(&none, &[]).expect("ok"), None);
        let on = resolve(&none, &[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")])
            .expect("ok")
            .expect("on");
        let otlp = on.otlp.expect("otlp");
        assert_eq!(otlp.endpoint, "http://c:4318/v1/traces");
        assert_eq!(otlp.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(on.service_name, "app");
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "svc"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
        ];
        let grpc = resolve(&none, &vars).expect("ok").expect("on");
        assert_eq!(
            grpc.otlp.as_ref().map(|o| o.endpoint.as_str()),
            Some("http://c:4317")
        );
        assert_eq!(grpc.service_name, "svc");
        assert_eq!(grpc.sampler, Sampler::Ratio(0.25));
        let disabled = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(resolve(&none, &disabled).expect("ok"), None);
    }

    #[test]
    fn bad_variables_are_errors_naming_them() {
        let on = TelemetrySettings {
            enabled: Some(true),
            ..TelemetrySettings::default()
        };
        for (name, value) in [
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("OTEL_SDK_DISABLED", "maybe"),
            ("OTEL_BSP_SCHEDULE_DELAY", "soon"),
        ] {
            let e = resolve(&on, &[(name, value)]).expect_err(name).to_string();
            assert!(e.starts_with(name), "{e}");
        }
        let ratio = [
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ];
        let e = resolve(&on, &ratio).expect_err("ratio").to_string();
        assert!(e.contains("OTEL_TRACES_SAMPLER_ARG"), "{e}");
    }

    #[test]
    fn the_manifest_wins_and_samplers_decide() {
        let settings = TelemetrySettings {
            enabled: Some(true),
            endpoint: Some("http://m:4318".into()),
            sampler_ratio: Some(0.0),
            ..TelemetrySettings::default()
        };
        let vars = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318")];
        let c = resolve(&settings, &vars).expect("ok").expect("on");
        assert_eq!(c.otlp.expect("otlp").endpoint, "http://m:4318/v1/traces");
        assert!(!c.sampler.decide(None, || 7));
        assert!(c.sampler.decide(Some(true), || 7), "parent based");
        let half = Sampler::Ratio(0.5);
        assert!(half.decide(None, || 0));
        assert!(!half.decide(None, || u128::from(u64::MAX)));
        let events_only = TelemetrySettings {
            moleculer_events: true,
            ..TelemetrySettings::default()
        };
        let c = resolve(&events_only, &[]).expect("ok").expect("on");
        assert_eq!(c.otlp, None);
    }

    #[test]
    fn metrics_and_logs_are_off_unless_asked_and_honour_their_variables() {
        let none = TelemetrySettings::default();
        let traces = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")];
        let c = resolve(&none, &traces).expect("ok").expect("on");
        assert_eq!(
            (c.metrics, c.logs),
            (None, None),
            "traces alone start nothing else"
        );
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"),
            ("OTEL_METRICS_EXPORTER", "otlp"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "250"),
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://l:9999/logs"),
        ];
        let c = resolve(&none, &vars).expect("ok").expect("on");
        let m = c.metrics.expect("metrics");
        assert_eq!(m.otlp.endpoint, "http://c:4318/v1/metrics");
        assert_eq!(m.interval, Duration::from_millis(250));
        assert_eq!(c.logs.expect("logs").endpoint, "http://l:9999/logs");
        let only_metrics = [("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "http://m:4318/x")];
        let c = resolve(&none, &only_metrics).expect("ok").expect("on");
        assert_eq!(c.metrics.expect("metrics").otlp.endpoint, "http://m:4318/x");
        let off = [
            ("OTEL_EXPORTER_OTLP_LOGS_ENDPOINT", "http://l:4318"),
            ("OTEL_LOGS_EXPORTER", "none"),
        ];
        assert_eq!(resolve(&none, &off).expect("ok"), None);
        let written = TelemetrySettings {
            logs: Some(false),
            metrics: Some(true),
            endpoint: Some("http://w:4317".into()),
            protocol: Some(OtlpProtocol::Grpc),
            metrics_interval: Duration::from_secs(60),
            ..TelemetrySettings::default()
        };
        let c = resolve(&written, &[("OTEL_LOGS_EXPORTER", "otlp")])
            .expect("ok")
            .expect("on");
        assert_eq!(c.logs, None, "the manifest wins");
        let m = c.metrics.expect("metrics");
        assert_eq!(
            (m.otlp.endpoint.as_str(), m.interval),
            ("http://w:4317", Duration::from_secs(60))
        );
        for (name, value) in [
            ("OTEL_METRICS_EXPORTER", "prometheus"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "soon"),
        ] {
            let vars = [("OTEL_METRICS_EXPORTER", "otlp"), (name, value)];
            let e = resolve(&none, &vars).expect_err(name).to_string();
            assert!(e.starts_with(name), "{e}");
        }
    }
}

//! The file as written: one serde struct per table (`[app]`, `[gateway]`,
//! `[cluster]`, `[defaults]`, `[packages.<name>]` and the tables inside),
//! each refusing unknown keys, with its values typed by `values` so that a
//! bad value fails while it is read, at its own span.
//!
//! It turns raw tables into limits and policies (`over`) but resolves no
//! path and touches no file: that is `check`'s work.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use toml::Spanned;

use super::model::{Limits, RestartPolicy};
use super::values::{
    BodySize, CallPattern, CountIn, CountVisitor, DAY_MS, DurationIn, EmitRate, EnvName,
    EventPattern, HOUR_MS, PathValue, ServiceName, Size, SizeIn, SubjectToken, Text, VersionValue,
};

pub(super) type CallDepth = CountIn<1, 1024>;
pub(super) type InstanceCount = CountIn<1, 1024>;
pub(super) type QueueLength = CountIn<0, 100_000>;
pub(super) type RestartCount = CountIn<0, 10_000>;
pub(super) type CallTimeout = DurationIn<1, HOUR_MS>;
pub(super) type ShutdownTimeout = DurationIn<0, HOUR_MS>;
pub(super) type RestartWindow = DurationIn<1, DAY_MS>;
pub(super) type Backoff = DurationIn<1, HOUR_MS>;

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawGateway {
    pub(super) listen: Option<Text>,
    pub(super) expose: Option<Vec<CallPattern>>,
    pub(super) aliases: Option<std::collections::BTreeMap<String, Text>>,
    /// `[gateway.http]`: paths served by packages' `wasi:http/incoming-handler`.
    pub(super) http: Option<std::collections::BTreeMap<String, Spanned<Text>>>,
    pub(super) max_body: Option<BodySize>,
    pub(super) header_timeout: Option<DurationIn<1, HOUR_MS>>,
    pub(super) idle_timeout: Option<DurationIn<1, DAY_MS>>,
    pub(super) body_timeout: Option<DurationIn<1, HOUR_MS>>,
    pub(super) min_body_rate: Option<BodySize>,
    pub(super) max_connections: Option<CountIn<1, 1_000_000>>,
    pub(super) ops: Option<Text>,
    pub(super) admin_token_env: Option<EnvName>,
    /// Protections of HTTP calls to actions on other nodes, keyed as a package's.
    pub(super) circuit: Option<RawCircuit>,
    pub(super) retry: Option<RawRetry>,
    #[serde(default)]
    pub(super) actions: std::collections::BTreeMap<String, RawAction>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawCluster {
    pub(super) transporter: Text,
    pub(super) node_id: Option<SubjectToken>,
    pub(super) namespace: Option<SubjectToken>,
    pub(super) protocol: Option<CountIn<4, 5>>,
    pub(super) serializer: Option<Text>,
    pub(super) heartbeat_interval: Option<DurationIn<100, HOUR_MS>>,
    pub(super) heartbeat_timeout: Option<DurationIn<100, DAY_MS>>,
    pub(super) advertise: Option<bool>,
    pub(super) publish: Option<Vec<CallPattern>>,
    pub(super) token_env: Option<EnvName>,
    pub(super) token_file: Option<PathValue>,
    pub(super) user: Option<Text>,
    pub(super) password_env: Option<EnvName>,
    pub(super) password_file: Option<PathValue>,
    pub(super) nkey_seed_env: Option<EnvName>,
    pub(super) nkey_seed_file: Option<PathValue>,
    pub(super) credentials: Option<PathValue>,
    pub(super) tls: Option<bool>,
    pub(super) tls_ca: Option<PathValue>,
    pub(super) tls_cert: Option<PathValue>,
    pub(super) tls_key: Option<PathValue>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawApp {
    pub(super) name: Option<Text>,
    pub(super) max_call_depth: Option<CallDepth>,
    pub(super) cache_dir: Option<PathValue>,
    pub(super) shutdown_timeout: Option<ShutdownTimeout>,
    pub(super) max_instances: Option<CountIn<1, 100_000>>,
    pub(super) max_component_size: Option<SizeIn<{ 1 << 10 }, { 1 << 30 }>>,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawLimits {
    pub(super) instances: Option<Instances>,
    pub(super) memory: Option<Size>,
    pub(super) emit_rate: Option<EmitRate>,
    pub(super) timeout: Option<CallTimeout>,
    pub(super) queue: Option<QueueLength>,
    pub(super) restart: Option<Spanned<RawRestart>>,
}

#[derive(Clone, Copy, Default, Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { max = 5, within = \"10s\", backoff = \"1s\", max_backoff = \"30s\" }"
)]
pub(super) struct RawRestart {
    pub(super) max: Option<RestartCount>,
    pub(super) within: Option<RestartWindow>,
    pub(super) backoff: Option<Backoff>,
    pub(super) max_backoff: Option<Backoff>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, expecting = "a package table")]
pub(super) struct RawPackage {
    pub(super) path: Option<PathValue>,
    pub(super) build: Option<Spanned<Text>>,
    pub(super) component: PathValue,
    pub(super) instances: Option<Instances>,
    pub(super) memory: Option<Size>,
    pub(super) emit_rate: Option<EmitRate>,
    pub(super) timeout: Option<CallTimeout>,
    pub(super) queue: Option<QueueLength>,
    pub(super) restart: Option<Spanned<RawRestart>>,
    #[serde(default)]
    pub(super) events: Vec<EventPattern>,
    #[serde(default)]
    pub(super) grants: RawGrants,
    pub(super) scale_down_after: Option<DurationIn<1, DAY_MS>>,
    pub(super) circuit: Option<RawCircuit>,
    pub(super) retry: Option<RawRetry>,
    #[serde(default)]
    pub(super) actions: std::collections::BTreeMap<String, RawAction>,
    /// Checked a table here; read as JSON from the table itself by `properties`, for spans.
    #[serde(rename = "settings")]
    pub(super) _settings: Option<toml::Table>,
    pub(super) version: Option<VersionValue>,
    #[serde(default)]
    pub(super) dependencies: Vec<Spanned<ServiceName>>,
    pub(super) dependency_timeout: Option<DurationIn<1, DAY_MS>>,
    #[serde(default)]
    pub(super) http: super::http::RawHttpLimits,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { threshold = 0.5, min_calls = 20, window = \"60s\", half_open_after = \"10s\" }"
)]
pub(super) struct RawCircuit {
    pub(super) threshold: Option<f64>,
    pub(super) min_calls: Option<CountIn<1, 1_000_000>>,
    pub(super) window: Option<DurationIn<1, DAY_MS>>,
    pub(super) half_open_after: Option<DurationIn<1, DAY_MS>>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { max = 3, delay = \"50ms\", max_delay = \"1s\" }"
)]
pub(super) struct RawRetry {
    pub(super) max: CountIn<0, 100>,
    pub(super) delay: Option<DurationIn<1, HOUR_MS>>,
    pub(super) max_delay: Option<DurationIn<1, HOUR_MS>>,
}

/// An action's table: the host's keys; every other key is a Moleculer
/// property, read by `properties` (so unknown keys are welcome here).
#[derive(Default, Deserialize)]
#[serde(expecting = "a table of `queue`, `idempotent`, `fallback` and Moleculer properties")]
pub(super) struct RawAction {
    pub(super) queue: Option<QueueLength>,
    #[serde(default)]
    pub(super) idempotent: bool,
    pub(super) fallback: Option<CallPattern>,
}

/// `instances = 2` or `instances = { min = 1, max = 8 }`.
#[derive(Clone, Copy)]
pub(super) struct Instances {
    pub(super) min: u32,
    pub(super) max: u32,
}

impl<'de> Deserialize<'de> for Instances {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(InstancesVisitor)
    }
}

pub(super) struct InstancesVisitor;

impl<'de> Visitor<'de> for InstancesVisitor {
    type Value = Instances;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a number of instances, or a table like { min = 1, max = 8 }")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<Instances, E> {
        let n = CountVisitor::<1, 1024>.visit_i64::<E>(value)?.0;
        Ok(Instances { min: n, max: n })
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<Instances, E> {
        let n = CountVisitor::<1, 1024>.visit_u64::<E>(value)?.0;
        Ok(Instances { min: n, max: n })
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Instances, A::Error> {
        let (mut min, mut max) = (None, None);
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                "min" => min = Some(map.next_value::<InstanceCount>()?.0),
                "max" => max = Some(map.next_value::<InstanceCount>()?.0),
                other => {
                    return Err(de::Error::custom(format!(
                        "unknown key `{other}`, expected `min` or `max`"
                    )));
                }
            }
        }
        let min = min.unwrap_or(1);
        let max = max.ok_or_else(|| de::Error::custom("`max` is missing"))?;
        if max < min {
            return Err(de::Error::custom(format!(
                "max ({max}) is below min ({min})"
            )));
        }
        Ok(Instances { min, max })
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields, expecting = "a table")]
pub(super) struct RawGrants {
    #[serde(default)]
    pub(super) dirs: Vec<RawDirGrant>,
    #[serde(default)]
    pub(super) env: BTreeMap<EnvName, String>,
    #[serde(default)]
    pub(super) env_inherit: Vec<Spanned<EnvName>>,
    #[serde(default)]
    pub(super) calls: Vec<CallPattern>,
    #[serde(default)]
    pub(super) emits: Vec<EventPattern>,
    #[serde(default)]
    pub(super) http: Vec<super::http::HttpGrantValue>,
    #[serde(default)]
    pub(super) kv: Vec<super::kv::BucketName>,
}

#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "a table like { host = \"data\", guest = \"/data\" }"
)]
pub(super) struct RawDirGrant {
    pub(super) host: Spanned<PathValue>,
    pub(super) guest: Text,
    #[serde(default)]
    pub(super) read_only: bool,
}

impl RawLimits {
    pub(super) fn over(&self, base: &Limits) -> Limits {
        Limits {
            instances: self.instances.map_or(base.instances, |n| n.min),
            max_instances: self.instances.map_or(base.max_instances, |n| n.max),
            memory: self.memory.map_or(base.memory, |size| size.0),
            emit_rate: self.emit_rate.map_or(base.emit_rate, |rate| rate.0),
            timeout: self.timeout.map_or(base.timeout, |d| d.0),
            queue: self.queue.map_or(base.queue, |n| n.0 as usize),
            restart: self
                .restart
                .as_ref()
                .map_or_else(|| base.restart.clone(), |r| r.get_ref().over(&base.restart)),
        }
    }
}

impl RawPackage {
    pub(super) fn limits(&self) -> RawLimits {
        RawLimits {
            instances: self.instances,
            memory: self.memory,
            emit_rate: self.emit_rate,
            timeout: self.timeout,
            queue: self.queue,
            restart: self.restart.clone(),
        }
    }
}

impl RawRestart {
    pub(super) fn over(&self, base: &RestartPolicy) -> RestartPolicy {
        RestartPolicy {
            max_restarts: self.max.map_or(base.max_restarts, |n| n.0),
            within: self.within.map_or(base.within, |d| d.0),
            backoff: self.backoff.map_or(base.backoff, |d| d.0),
            max_backoff: self.max_backoff.map_or(base.max_backoff, |d| d.0),
        }
    }
}

/// `Err` with a message when backoff cannot double up to max_backoff.
pub(super) fn check_restart(policy: &RestartPolicy) -> Result<(), String> {
    if policy.max_backoff < policy.backoff {
        return Err(format!(
            "max_backoff ({}) is less than backoff ({})",
            humantime::format_duration(policy.max_backoff),
            humantime::format_duration(policy.backoff)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Resolving: from the file as written to the specs the host runs.

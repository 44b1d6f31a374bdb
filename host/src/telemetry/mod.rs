//! Telemetry: the spans of every hop the host sees (a gateway request, a
//! call, an event delivery, an instance start, an outgoing HTTP request),
//! sampled, and handed to the sinks: OpenTelemetry over OTLP
//! (`otlp.rs`) and Moleculer's `$tracing.spans` events (`moleculer.rs`).
//! Beside the spans: the host's metrics, read from its counters every
//! interval, as Moleculer's `$metrics.snapshot` (`moleculer_metrics.rs`)
//! and over OTLP (`otlp_metrics.rs`); and its log events, guest lines
//! among them, over OTLP (`logs.rs`).
//!
//! # Off costs nothing
//! The broker holds an `Option` of a [`Telemetry`]: with telemetry off a
//! hop tests it once and records nothing, allocates nothing, takes no lock.
//! A [`Span`] is only made for a sampled context (`ctx.tracing ==
//! Some(true)`), and only ended spans travel, through a bounded channel.
//!
//! # One trace across nodes
//! A span is a context, as in Moleculer: its id is the context id, its
//! parent the context's `parentID`, its trace the request id (see
//! `ids.rs` for how those map to OpenTelemetry's ids and `traceparent`).
//! The sampling decision travels as Moleculer's `tracing` flag.
//!
//! A leaf beside `context` and `manifest`: it must not import the broker,
//! the gateway or the transport (they call it).

use std::sync::{Arc, OnceLock};
use std::time::SystemTime;

use crate::context::{CallContext, CallError, ContextId};
use crate::manifest::TelemetrySettings;

mod config;
pub mod gateway;
mod ids;
pub mod logs;
mod metric_set;
mod moleculer;
mod moleculer_metrics;
mod otlp;
mod otlp_metrics;
mod otlp_span;
mod otlp_wire;
pub mod spans;

pub use config::{Config, ConfigError, MetricsConfig, Sampler};
pub use ids::{TraceParent, request_id_of, span_id, span_id_of, trace_id};
pub use metric_set::{Histogram, Metric, MetricKind, MetricSet, MetricSource, Point, Reading};
pub use moleculer::MOLECULER_EVENT;
pub use moleculer_metrics::METRICS_EVENT;

/// What a span stands for, as OpenTelemetry kinds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// A request from outside (HTTP in, a REQ from another node).
    Server,
    /// A request out (HTTP out).
    Client,
    /// Work inside the host (a local call, an instance start).
    Internal,
    /// An event delivery.
    Consumer,
}

/// A span's text (its name, an attribute): borrowed from what outlives
/// the span (an action's names, a package's, held by its service: a span
/// ends before its call returns), shared, or made for the span. Borrowing
/// is what the hot path does: every call of an action shares its names,
/// and cloning an `Arc` of them per span had both worker threads writing
/// the same reference counts.
#[derive(Clone, Debug, PartialEq)]
pub enum Text<'a> {
    /// Borrowed (fixed text among it).
    Borrowed(&'a str),
    /// Shared: a clone is a count, not a copy.
    Shared(Arc<str>),
    /// Made for this span.
    Owned(String),
}

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        match self {
            Text::Borrowed(s) => s,
            Text::Shared(s) => s,
            Text::Owned(s) => s,
        }
    }
}

impl<'a> From<&'a str> for Text<'a> {
    fn from(s: &'a str) -> Text<'a> {
        Text::Borrowed(s)
    }
}

impl From<String> for Text<'_> {
    fn from(s: String) -> Self {
        Text::Owned(s)
    }
}

impl From<&Arc<str>> for Text<'_> {
    fn from(s: &Arc<str>) -> Self {
        Text::Shared(s.clone())
    }
}

/// An attribute's value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value<'a> {
    /// Text.
    Str(Text<'a>),
    /// A whole number.
    Int(i64),
    /// Yes or no.
    Bool(bool),
}

impl<'a> From<&'a str> for Value<'a> {
    fn from(s: &'a str) -> Value<'a> {
        Value::Str(Text::Borrowed(s))
    }
}

impl From<String> for Value<'_> {
    fn from(s: String) -> Self {
        Value::Str(Text::Owned(s))
    }
}

impl From<&Arc<str>> for Value<'_> {
    fn from(s: &Arc<str>) -> Self {
        Value::Str(Text::Shared(s.clone()))
    }
}

impl From<i64> for Value<'_> {
    fn from(n: i64) -> Self {
        Value::Int(n)
    }
}

impl From<bool> for Value<'_> {
    fn from(b: bool) -> Self {
        Value::Bool(b)
    }
}

/// A span in the making: what the host knows of one hop, cheap to fill.
/// It may borrow what outlives the hop (`'a`).
#[derive(Clone, Debug)]
pub struct Span<'a> {
    /// `action 'a.b'`, `event 'x' in 'a'`, `HTTP GET /api/a/b`, ...
    pub name: Text<'a>,
    /// Moleculer's span `type`: `action`, `event`, `http`, `instance`.
    pub moleculer_type: &'static str,
    /// How OpenTelemetry sees it.
    pub kind: Kind,
    /// This span's id (a context id).
    pub id: ContextId,
    /// Its parent's (a context id, or the span a `traceparent` named).
    pub parent: Option<ContextId>,
    /// The trace's request id.
    pub request_id: Arc<str>,
    /// The package (Moleculer's `service`), when one serves the hop.
    pub service: Option<Text<'a>>,
    /// When it began (its duration is the end's time less this, as
    /// OpenTelemetry's SDKs have it: one clock read at each end).
    pub start: SystemTime,
    /// `steedos.*`, `http.*`... attributes.
    pub attributes: Vec<(&'static str, Value<'a>)>,
    /// Guest log lines and other moments inside the span.
    pub events: Vec<SpanEvent>,
    /// Why it failed: the error kind's name and its message.
    pub error: Option<(&'static str, String)>,
    /// Whether it goes out as a Moleculer span too (not the client half
    /// of a call to another node: the callee reports that one).
    pub moleculer: bool,
    /// Its name, node, package and first attributes already written as
    /// OTLP bytes, when its call site has them (see [`spans::Head`]).
    pub head: Option<&'a spans::Head>,
}

/// A moment inside a span (a guest log line, say).
#[derive(Clone, Debug)]
pub struct SpanEvent {
    /// When.
    pub time: SystemTime,
    /// What (`log`, ...).
    pub name: &'static str,
    /// Its attributes.
    pub attributes: Vec<(&'static str, Value<'static>)>,
}

/// A finished span, as the sinks take it.
#[derive(Clone, Debug)]
pub struct Finished<'a> {
    /// The span.
    pub span: Span<'a>,
    /// When it ended.
    pub end: SystemTime,
    /// This host's node id.
    pub node: &'a str,
}

impl<'a> Span<'a> {
    /// A span of `ctx`'s hop (its id, parent and trace), begun now.
    pub fn of(ctx: &CallContext, name: impl Into<Text<'a>>, kind: Kind) -> Span<'a> {
        Span::new(
            name,
            kind,
            ctx.id.clone(),
            ctx.parent_id.clone(),
            ctx.request_id.clone(),
        )
    }

    /// A span with ids given.
    pub fn new(
        name: impl Into<Text<'a>>,
        kind: Kind,
        id: ContextId,
        parent: Option<ContextId>,
        request_id: Arc<str>,
    ) -> Span<'a> {
        Span {
            name: name.into(),
            moleculer_type: "custom",
            kind,
            id,
            parent,
            request_id,
            service: None,
            start: SystemTime::now(),
            attributes: Vec::with_capacity(8),
            events: Vec::new(),
            error: None,
            moleculer: true,
            head: None,
        }
    }

    /// Sets an attribute.
    pub fn set(&mut self, key: &'static str, value: impl Into<Value<'a>>) {
        self.attributes.push((key, value.into()));
    }

    /// Records how a call ended: `steedos.result` (`ok` or the error
    /// kind) and, on error, the error.
    pub fn outcome<T>(&mut self, outcome: &Result<T, CallError>) {
        match outcome {
            Ok(_) => self.set("steedos.result", "ok"),
            Err(e) => self.fail(e.kind().name(), e.message().to_string()),
        }
    }

    /// Marks the span failed with `kind` saying `message`.
    pub fn fail(&mut self, kind: &'static str, message: String) {
        self.set("steedos.result", kind);
        self.error = Some((kind, message));
    }
}

/// The telemetry of one app: its sampler and its sinks.
pub struct Telemetry {
    config: Config,
    node: OnceLock<Arc<str>>,
    fallback_node: Arc<str>,
    otlp: Option<otlp::Sink>,
    moleculer: Option<moleculer::Queue>,
    /// Reads the host's metrics (set by the broker).
    metrics: OnceLock<MetricSource>,
    /// What the last `$metrics.snapshot` said (for `onlyChanges`).
    last_snapshot: std::sync::Mutex<moleculer_metrics::LastSent>,
    /// While it lives, log events go out over OTLP.
    _logs: Option<logs::Sink>,
    /// Traces not started because every sink was full (see [`Telemetry::sample`]).
    shed: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Telemetry {
    /// The telemetry `[telemetry]` and the `OTEL_*` variables ask for,
    /// `None` when off. Starts the OTLP exporter (on a thread of its own).
    pub fn from_settings(
        settings: &TelemetrySettings,
        app: &str,
    ) -> Result<Option<Arc<Telemetry>>, ConfigError> {
        let config = Config::resolve(settings, app, &|name| std::env::var(name).ok())?;
        Ok(config.map(Telemetry::start))
    }

    /// Telemetry under `config`, its exporter started.
    pub fn start(config: Config) -> Arc<Telemetry> {
        let otlp = config.otlp.as_ref().map(|o| otlp::Sink::start(o, &config));
        let moleculer = config.moleculer_events.then(moleculer::Queue::default);
        let service = config.service_name.clone();
        let logs = config
            .logs
            .as_ref()
            .and_then(|o| logs::Sink::start(o, service));
        let fallback_node = format!("{}-{}", config.service_name, std::process::id()).into();
        let endpoint = config.otlp.as_ref().map(|o| o.endpoint.as_str());
        tracing::info!(service = %config.service_name, otlp = ?endpoint, sampler = ?config.sampler, moleculer_events = config.moleculer_events, "telemetry on");
        Arc::new(Telemetry {
            config,
            node: OnceLock::new(),
            fallback_node,
            otlp,
            moleculer,
            metrics: OnceLock::new(),
            last_snapshot: std::sync::Mutex::default(),
            _logs: logs,
            shed: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// How it was configured.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Names this host's node (the cluster's node id), once.
    pub fn set_node(&self, node: Arc<str>) {
        let _ = self.node.set(node);
    }

    /// This host's node id, or its service name and pid outside a cluster.
    pub fn node(&self) -> &Arc<str> {
        self.node.get().unwrap_or(&self.fallback_node)
    }

    /// Whether a trace is recorded: the caller's decision when it made
    /// one (a parent-based sampler), else the sampler's on its trace id.
    ///
    /// A trace this host would start (no caller decided) is not started
    /// while every sink is full: its spans would be dropped one by one as
    /// they end, leaving fragments of traces and costing the calls the
    /// work of spans nobody receives. Shed whole instead, it goes out as
    /// not sampled (so other nodes do not record their part either) and is
    /// counted ([`Telemetry::shed`]); traces start again as soon as the
    /// exporter has made room.
    pub fn sample(&self, parent: Option<bool>, request_id: &str) -> bool {
        let sampled = self.config.sampler.decide(parent, || trace_id(request_id));
        if sampled && parent.is_none() && self.full() {
            self.shed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return false;
        }
        sampled
    }

    /// Whether every sink there is has no room for another trace.
    fn full(&self) -> bool {
        let otlp = self.otlp.as_ref().map(otlp::Sink::full);
        let moleculer = self.moleculer.as_ref().map(moleculer::Queue::full);
        match (otlp, moleculer) {
            (None, None) => false,
            (a, b) => a.unwrap_or(true) && b.unwrap_or(true),
        }
    }

    /// Whether spans go out over OTLP.
    pub fn exports_otlp(&self) -> bool {
        self.otlp.is_some()
    }

    /// Traces not started because every sink was full.
    pub fn shed(&self) -> u64 {
        self.shed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// `ctx.tracing` decided when nobody upstream did.
    pub fn decide(&self, ctx: &mut CallContext) -> bool {
        let sampled = self.sample(ctx.tracing, &ctx.request_id);
        ctx.tracing = Some(sampled);
        sampled
    }

    /// Ends `span` now and hands it to the sinks.
    pub fn end(&self, span: Span<'_>) {
        let finished = Finished {
            end: SystemTime::now(),
            node: self.node(),
            span,
        };
        if let Some(queue) = self.moleculer.as_ref().filter(|_| finished.span.moleculer) {
            queue.push(&finished);
        }
        if let Some(sink) = &self.otlp {
            sink.send(&finished);
        }
    }

    /// The `$tracing.spans` waiting to go out, taken (Moleculer's event
    /// exporter's batch: every span ended since the last one).
    pub fn take_moleculer_spans(&self) -> Option<serde_json::Value> {
        self.moleculer.as_ref().and_then(moleculer::Queue::take)
    }

    /// Emits the spans ended since the last time as one `$tracing.spans`
    /// event through `publish` every `moleculer_interval`, as Moleculer's
    /// event trace exporter does (when `moleculer_events` is on), until
    /// `publish` says the broker is gone.
    pub fn emit_moleculer_spans(
        self: &Arc<Self>,
        publish: impl Fn(&str, Vec<u8>, CallContext) -> bool + Send + 'static,
    ) {
        if !self.config.moleculer_events {
            return;
        }
        let interval = self.config.moleculer_interval;
        self.emit_every(
            interval,
            MOLECULER_EVENT,
            Self::take_moleculer_spans,
            publish,
        );
    }

    /// Emits what `take` gives as event `event` through `publish` every
    /// `interval` (nothing when it gives nothing), until the telemetry or
    /// the broker (`publish` says false) is gone.
    fn emit_every(
        self: &Arc<Self>,
        interval: std::time::Duration,
        event: &'static str,
        take: fn(&Self) -> Option<serde_json::Value>,
        publish: impl Fn(&str, Vec<u8>, CallContext) -> bool + Send + 'static,
    ) {
        let t = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(t) = t.upgrade() else { return };
                let Some(value) = take(&t) else {
                    continue;
                };
                let Ok(payload) = rmp_serde::to_vec_named(&value) else {
                    continue;
                };
                let mut ctx = CallContext::new(interval.max(std::time::Duration::from_secs(5)));
                // The exporter's own events are not traced (Moleculer skips them too).
                ctx.tracing = Some(false);
                if !publish(event, payload, ctx) {
                    return;
                }
            }
        });
    }

    /// Exports the host's metrics, which `source` reads: as a
    /// `$metrics.snapshot` event through `publish` every
    /// `moleculer_interval` (when `moleculer_events` is on, as Moleculer's
    /// event metric reporter does), and over OTLP every metrics interval
    /// (when OTLP metrics are on). Once; nothing runs when neither is on.
    pub fn export_metrics(
        self: &Arc<Self>,
        source: MetricSource,
        publish: impl Fn(&str, Vec<u8>, CallContext) -> bool + Send + 'static,
    ) {
        if self.metrics.set(source).is_err() {
            return;
        }
        if let Some(m) = &self.config.metrics {
            otlp_metrics::start(Arc::downgrade(self), m, self.config.service_name.clone());
        }
        if !self.config.moleculer_events {
            return;
        }
        let interval = self
            .config
            .moleculer_interval
            .max(std::time::Duration::from_millis(10));
        self.emit_every(
            interval,
            METRICS_EVENT,
            Self::take_metrics_snapshot,
            publish,
        );
    }

    /// The host's metrics now, when a source was given.
    fn read_metrics(&self) -> Option<MetricSet> {
        let mut set = self.metrics.get().and_then(|read| read())?;
        set.metrics.extend(self.own_metrics());
        Some(set)
    }

    /// What telemetry itself counts: spans a full sink dropped, traces shed.
    fn own_metrics(&self) -> [Metric; 2] {
        let counter = |name, unit, help, value: u64| {
            let mut m = Metric::new(name, MetricKind::Counter, unit, &[], help);
            m.number(Vec::new(), value as f64);
            m
        };
        [
            counter(
                "steedos.telemetry.spans.dropped",
                "span",
                "Spans dropped as they ended: the queue to a sink was full",
                self.dropped(),
            ),
            counter(
                "steedos.telemetry.traces.shed",
                "trace",
                "Traces not started while every span sink was full",
                self.shed(),
            ),
        ]
    }

    /// The next `$metrics.snapshot` payload (Moleculer's `registry.list()`
    /// shape), `None` when there is nothing to send.
    pub fn take_metrics_snapshot(&self) -> Option<serde_json::Value> {
        let set = self.read_metrics()?;
        let mut last = self.last_snapshot.lock().unwrap_or_else(|p| p.into_inner());
        last.payload(&set, self.config.moleculer_metrics_only_changes)
    }

    /// Spans dropped because a sink was full (or its collector slow).
    pub fn dropped(&self) -> u64 {
        self.otlp.as_ref().map_or(0, otlp::Sink::dropped)
            + self.moleculer.as_ref().map_or(0, moleculer::Queue::dropped)
    }

    /// Sends what is waiting to the collector, and waits for it (a bounded
    /// time): for a host stopping.
    pub async fn flush(&self) {
        if let Some(sink) = &self.otlp {
            sink.flush().await;
        }
    }
}

/// The most guest log lines one span keeps as events; the rest are in the log.
pub const MAX_LOG_EVENTS: usize = 128;

/// The longest guest log line kept in a span event, in bytes.
const LOG_EVENT_TEXT: usize = 1024;

/// A guest's log line as an event of its call's span (`log`, with
/// `log.severity` and `log.message`), within [`MAX_LOG_EVENTS`].
pub fn log_event(events: &mut Vec<SpanEvent>, severity: &'static str, message: &str) {
    if events.len() >= MAX_LOG_EVENTS {
        return;
    }
    let mut end = message.len().min(LOG_EVENT_TEXT);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    events.push(SpanEvent {
        time: SystemTime::now(),
        name: "log",
        attributes: vec![
            ("log.severity", Value::from(severity)),
            ("log.message", Value::from(message[..end].to_string())),
        ],
    });
}

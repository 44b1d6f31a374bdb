//! Tracing (issue 18): the host's spans as a collector receives them over
//! OTLP (a loopback receiver here, HTTP/protobuf and gRPC, decoding with
//! `opentelemetry-proto`), one trace with the right parents across the
//! gateway, packages, a real Node.js Moleculer service and a second
//! steedos-wasm node (whether Node traces or not); a trap as an error
//! span; sampling off sending nothing; and a Node.js broker's
//! `$tracing.spans` listener receiving our spans in Moleculer's shape.

use std::collections::HashMap;
use std::convert::Infallible;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value;
use prost::Message;
use serde_json::{Value, json};
use steedos_tests::{TestApp, eventually};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cluster::{Nats, Node, tools};

/// One span as the collector got it.
#[derive(Clone, Debug)]
struct Got {
    trace: String,
    id: String,
    parent: String,
    name: String,
    /// OTLP's span kind: 2 server, 3 client, 1 internal, 5 consumer.
    kind: i32,
    /// OTLP's status code: 0 unset, 1 ok, 2 error.
    status: i32,
    attrs: HashMap<String, String>,
    /// Its events: name and `log.message` (guest log lines).
    events: Vec<(String, String)>,
    service: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(n)) => n.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        other => format!("{other:?}"),
    }
}

fn spans_of(req: ExportTraceServiceRequest) -> Vec<Got> {
    let mut out = Vec::new();
    for rs in req.resource_spans {
        let service = rs
            .resource
            .iter()
            .flat_map(|r| r.attributes.iter())
            .find(|kv| kv.key == "service.name")
            .map(|kv| text(&kv.value))
            .unwrap_or_default();
        for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
            out.push(Got {
                trace: hex(&span.trace_id),
                id: hex(&span.span_id),
                parent: hex(&span.parent_span_id),
                name: span.name,
                kind: span.kind,
                status: span.status.map_or(0, |s| s.code),
                attrs: span
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.clone(), text(&kv.value)))
                    .collect(),
                events: span
                    .events
                    .iter()
                    .map(|e| {
                        let message = e.attributes.iter().find(|kv| kv.key == "log.message");
                        (
                            e.name.clone(),
                            message.map(|kv| text(&kv.value)).unwrap_or_default(),
                        )
                    })
                    .collect(),
                service: service.clone(),
            });
        }
    }
    out
}

type Spans = Arc<Mutex<Vec<Got>>>;

/// What the receiver got besides spans: metrics and log requests.
#[derive(Clone, Default)]
struct Others {
    metrics: Arc<Mutex<Vec<ExportMetricsServiceRequest>>>,
    logs: Arc<Mutex<Vec<ExportLogsServiceRequest>>>,
}

/// A loopback OTLP receiver that records every span, metric and log
/// record it is sent (by the request's path, as a collector routes them).
struct Receiver {
    url: String,
    spans: Spans,
    others: Others,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

async fn answer(
    req: Request<Incoming>,
    spans: Spans,
    others: Others,
    grpc: bool,
) -> Result<Response<Body>, Infallible> {
    let path = req.uri().path().to_string();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    // gRPC frames a message: a compression flag and a 4-byte length first.
    let message = if grpc {
        body.slice(5.min(body.len())..)
    } else {
        body
    };
    if path.contains("metrics") {
        if let Ok(decoded) = ExportMetricsServiceRequest::decode(message) {
            others.metrics.lock().expect("lock").push(decoded);
        }
    } else if path.contains("logs") {
        if let Ok(decoded) = ExportLogsServiceRequest::decode(message) {
            others.logs.lock().expect("lock").push(decoded);
        }
    } else if let Ok(decoded) = ExportTraceServiceRequest::decode(message) {
        spans.lock().expect("lock").extend(spans_of(decoded));
    }
    let reply = ExportTraceServiceResponse::default().encode_to_vec();
    let response = match grpc {
        false => Response::builder()
            .header("content-type", "application/x-protobuf")
            .body(http_body_util::Full::new(Bytes::from(reply)).boxed()),
        true => {
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
            framed.extend_from_slice(&reply);
            let mut trailers = hyper::HeaderMap::new();
            trailers.insert("grpc-status", "0".parse().expect("header"));
            let frames = vec![
                Ok::<_, Infallible>(Frame::data(Bytes::from(framed))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::builder()
                .header("content-type", "application/grpc")
                .body(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        }
    };
    Ok(response.expect("response"))
}

impl Receiver {
    /// Listens on a free port of 127.0.0.1: OTLP/HTTP (HTTP/1.1), or gRPC
    /// (HTTP/2 without TLS) when `grpc`.
    async fn start(grpc: bool) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let spans: Spans = Arc::default();
        let others = Others::default();
        let (shared, shared_others) = (spans.clone(), others.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (spans, others) = (shared.clone(), shared_others.clone());
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let service = hyper::service::service_fn(move |req| {
                        answer(req, spans.clone(), others.clone(), grpc)
                    });
                    let _ = match grpc {
                        true => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await
                        }
                        false => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await
                        }
                    };
                });
            }
        });
        Receiver {
            url,
            spans,
            others,
            task,
        }
    }

    fn all(&self) -> Vec<Got> {
        self.spans.lock().expect("lock").clone()
    }

    /// The spans of `trace` once `done` holds for them (at most 20 s).
    async fn trace(&self, trace: &str, done: impl Fn(&[Got]) -> bool) -> Vec<Got> {
        let got = eventually(Duration::from_secs(20), || {
            let spans: Vec<Got> = self
                .all()
                .into_iter()
                .filter(|s| s.trace == trace)
                .collect();
            let ok = done(&spans);
            async move { ok.then_some(spans) }
        })
        .await;
        got.unwrap_or_else(|| {
            let spans: Vec<_> = self
                .all()
                .into_iter()
                .filter(|s| s.trace == trace)
                .collect();
            panic!("trace {trace} never complete: {spans:#?}")
        })
    }
}

fn named<'s>(spans: &'s [Got], name: &str) -> &'s Got {
    spans
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("no span `{name}` in {spans:#?}"))
}

fn has(spans: &[Got], names: &[&str]) -> bool {
    names.iter().all(|n| spans.iter().any(|s| s.name == *n))
}

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn telemetry_toml(url: &str, protocol: &str) -> String {
    format!(
        r#"
[gateway]
expose = ["a.*", "fragile.*", "web.*"]

[telemetry]
enabled = true
endpoint = "{url}"
protocol = "{protocol}"
service_name = "wasm-shop"
"#
    )
}

const PACKAGES: &str = r#"
[packages.a]
component = "{PROBE}"
[packages.a.grants]
calls = ["b.*"]
[packages.b]
component = "{PROBE}"
[packages.b.grants]
calls = ["fragile.*"]
[packages.fragile]
component = "{FRAGILE}"
"#;

/// HTTP -> a -> b -> fragile, under a caller's `traceparent`: the spans a
/// collector gets over `protocol`.
async fn one_trace_through_packages(protocol: &str) {
    let receiver = Receiver::start(protocol == "grpc").await;
    let toml = format!("{}{PACKAGES}", telemetry_toml(&receiver.url, protocol));
    let t = TestApp::start(&toml).await;
    let (_gateway, base) = t.gateway().await;
    let inner =
        json!({ "action": "fragile.echo", "params-json": json!({ "text": "hi" }).to_string() });
    let body =
        json!({ "action": "b.forward", "params-json": inner.to_string(), "options-json": "{}" });
    let response = reqwest::Client::new()
        .post(format!("{base}/api/a/forward-with"))
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    assert_eq!(
        request_id.replace('-', ""),
        TRACE,
        "the request id is the trace"
    );
    let names = [
        "HTTP POST /api/a/forward-with",
        "action 'a.forward-with'",
        "action 'b.forward'",
        "action 'fragile.echo'",
    ];
    let spans = receiver.trace(TRACE, |s| has(s, &names)).await;
    let http = named(&spans, names[0]);
    let a = named(&spans, names[1]);
    let b = named(&spans, names[2]);
    let f = named(&spans, names[3]);
    assert_eq!(
        http.parent, CALLER_SPAN,
        "the gateway's parent is the caller's span"
    );
    assert_eq!(
        (http.kind, http.attrs["http.response.status_code"].as_str()),
        (2, "200")
    );
    assert_eq!(a.parent, http.id, "a under the request: {spans:#?}");
    assert_eq!(b.parent, a.id, "b under a: {spans:#?}");
    assert_eq!(f.parent, b.id, "fragile under b: {spans:#?}");
    for s in [http, a, b, f] {
        assert_ne!(s.status, 2, "no error: {s:#?}");
        assert_eq!(s.service, "wasm-shop");
        assert_eq!(s.attrs["steedos.request_id"], request_id);
    }
    assert_eq!(b.attrs["steedos.package"], "b");
    assert_eq!(b.attrs["steedos.caller"], "a");
    assert_eq!(b.attrs["steedos.result"], "ok");
    assert!(b.attrs.contains_key("steedos.queue_wait_us"), "{b:#?}");
    let ids: std::collections::HashSet<_> = spans.iter().map(|s| &s.id).collect();
    assert_eq!(ids.len(), spans.len(), "span ids are unique: {spans:#?}");

    // A trap: an error span, its kind and message; the restart is a span too.
    let response = reqwest::Client::new()
        .post(format!("{base}/api/fragile/echo"))
        .json(&json!({ "text": "trap" }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 502);
    let id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .replace('-', "");
    let spans = receiver
        .trace(&id, |s| has(s, &["action 'fragile.echo'"]))
        .await;
    let trap = named(&spans, "action 'fragile.echo'");
    assert_eq!(trap.status, 2, "a trap is an error span: {trap:#?}");
    assert_eq!(trap.attrs["steedos.result"], "crashed");
    assert_eq!(trap.attrs["error.type"], "crashed");
    let http = named(&spans, "HTTP POST /api/fragile/echo");
    assert_eq!(http.status, 2, "a 502 is an error: {http:#?}");
    let restarted = eventually(Duration::from_secs(20), || {
        let found = receiver
            .all()
            .into_iter()
            .any(|s| s.name == "instance restart 'fragile'");
        async move { found.then_some(()) }
    })
    .await;
    assert!(restarted.is_some(), "{:#?}", receiver.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_packages_is_one_trace_over_otlp_http() {
    one_trace_through_packages("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_through_two_packages_is_one_trace_over_otlp_grpc() {
    one_trace_through_packages("grpc").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_off_sends_nothing() {
    let receiver = Receiver::start(false).await;
    let toml = format!(
        "{}sampler_ratio = 0.0\n{PACKAGES}",
        telemetry_toml(&receiver.url, "http/protobuf")
    );
    let t = TestApp::start(&toml).await;
    let (_gateway, base) = t.gateway().await;
    let client = reqwest::Client::new();
    for _ in 0..5 {
        let r = client
            .post(format!("{base}/api/fragile/echo"))
            .json(&json!({ "text": "hi" }))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    // A caller that sampled its trace is followed (parent-based): once its
    // spans are in, anything unsampled would have been sent before them.
    let r = client
        .post(format!("{base}/api/fragile/echo"))
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .json(&json!({ "text": "hi" }))
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), 200);
    receiver
        .trace(TRACE, |s| has(s, &["action 'fragile.echo'"]))
        .await;
    t.app.shutdown().await;
    let others: Vec<Got> = receiver
        .all()
        .into_iter()
        .filter(|s| s.trace != TRACE)
        .collect();
    assert!(others.is_empty(), "sampled out, yet sent: {others:#?}");
}

/// A counter of the gateway's `/metrics` (0 when absent).
async fn scraped(client: &reqwest::Client, base: &str, name: &str) -> u64 {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("scrape")
        .text()
        .await
        .expect("metrics text");
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0)
}

/// A collector that takes connections and never answers: the exporter's
/// first batch waits for it, and the queue behind it fills. From then on
/// the host starts no trace of its own (whole traces shed, counted)
/// instead of building spans that are dropped one by one; a trace its
/// caller sampled is still followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_export_queue_sheds_whole_traces() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let silent = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let toml = format!("{}{PACKAGES}", telemetry_toml(&url, "http/protobuf"));
    let t = TestApp::start(&toml).await;
    let (_gateway, base) = t.gateway().await;
    let client = reqwest::Client::new();
    let shed = "steedos_telemetry_traces_shed_total";
    let dropped = "steedos_telemetry_spans_dropped_total";
    let echo = |client: &reqwest::Client| {
        client
            .post(format!("{base}/api/fragile/echo"))
            .json(&json!({ "text": "hi" }))
            .send()
    };
    // Each request is a trace of two spans; the queue holds 4,096 and the
    // stuck exporter took a batch of at most 512 out of it.
    let mut requests = 0;
    while scraped(&client, &base, shed).await == 0 {
        assert!(requests < 6_000, "no trace shed after {requests} requests");
        for _ in 0..100 {
            assert_eq!(echo(&client).await.expect("request").status(), 200);
        }
        requests += 100;
    }
    // The exporter gives up on its batch after 10 s and takes another
    // (512 spans of room): the counts below hold across one such turn.
    for _ in 0..1_000 {
        assert_eq!(echo(&client).await.expect("request").status(), 200);
    }
    let (shed_now, dropped_now) = (
        scraped(&client, &base, shed).await,
        scraped(&client, &base, dropped).await,
    );
    assert!(shed_now >= 200, "{shed_now} traces shed");
    // The traces begun before the queue filled end in the room kept for
    // them: no span dropped, where every span would drop without shedding.
    assert_eq!(dropped_now, 0, "spans dropped");
    // Traces their callers sampled are followed, not shed: past the room
    // kept, their spans are dropped (and counted).
    for _ in 0..600 {
        let r = client
            .post(format!("{base}/api/fragile/echo"))
            .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
            .json(&json!({ "text": "hi" }))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 200);
    }
    // Shed since: the two scrapes (each a request of its own) and nothing else.
    assert_eq!(scraped(&client, &base, shed).await, shed_now + 2);
    let after = scraped(&client, &base, dropped).await;
    assert!(after > 0, "the callers' traces were not recorded");
    silent.abort();
}

/// An origin server that answers each request with the `traceparent` and
/// `tracestate` it got (`<traceparent>|<tracestate>`).
async fn echo_traceparent() -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let header = |name| req.headers().get(name).and_then(|v| v.to_str().ok());
                    let (tp, ts) = (header("traceparent"), header("tracestate"));
                    let body = format!("{}|{}", tp.unwrap_or("none"), ts.unwrap_or("none"));
                    let body = Bytes::from(body);
                    Ok::<_, Infallible>(Response::new(http_body_util::Full::new(body)))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    (format!("http://127.0.0.1:{port}/"), task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outgoing_http_carries_the_trace_and_guest_logs_are_span_events() {
    let receiver = Receiver::start(false).await;
    let (origin, server) = echo_traceparent().await;
    let toml = format!(
        "{}\n[packages.web]\ncomponent = \"{{HTTP-CLIENT}}\"\ngrants.http = [\"{}\"]\n{PACKAGES}",
        telemetry_toml(&receiver.url, "http/protobuf"),
        origin.trim_end_matches('/'),
    );
    let t = TestApp::start(&toml).await;
    let reply = t.ok("web.get", json!({ "url": origin })).await;
    let body = reply["body"].as_str().expect("body").to_string();
    let (tp, state) = body.split_once('|').expect("two headers");
    assert_eq!(state, "none", "no tracestate without an HTTP caller's");
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(parts.len(), 4, "a traceparent went out: {reply}");
    let (trace, caller) = (parts[1], parts[2]);
    let spans = receiver
        .trace(trace, |s| {
            has(s, &["action 'web.get'", "HTTP GET 127.0.0.1"])
        })
        .await;
    let call = named(&spans, "action 'web.get'");
    let out = named(&spans, "HTTP GET 127.0.0.1");
    assert_eq!(out.id, caller, "the origin's parent is the request's span");
    assert_eq!(
        (out.parent.as_str(), out.kind),
        (call.id.as_str(), 3),
        "{spans:#?}"
    );
    assert_eq!(out.attrs["http.response.status_code"], "200");

    // Through the gateway, a caller's trace and tracestate go on out.
    let (_gateway, base) = t.gateway().await;
    let reply: Value = reqwest::Client::new()
        .post(format!("{base}/api/web/get"))
        .header("traceparent", format!("00-{TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", "vendor=abc,other=1")
        .json(&json!({ "url": origin }))
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    let body = reply["body"].as_str().expect("body");
    let (tp, state) = body.split_once('|').expect("two headers");
    assert_eq!(state, "vendor=abc,other=1", "{reply}");
    assert_eq!(tp.split('-').nth(1), Some(TRACE), "{reply}");

    let echo = t.ok("fragile.echo", json!({ "text": "sleep:1" })).await;
    assert_eq!(echo, "sleep:1", "{echo}");
    let logged = eventually(Duration::from_secs(20), || {
        let span = receiver
            .all()
            .into_iter()
            .find(|s| s.name == "action 'fragile.echo'");
        async move { span }
    })
    .await
    .expect("the echo's span");
    let lines: Vec<&str> = logged
        .events
        .iter()
        .filter(|(n, _)| n == "log")
        .map(|(_, m)| m.as_str())
        .collect();
    assert!(
        lines.iter().any(|m| m.starts_with("sleeping 1 ms in"))
            && lines.iter().any(|m| m.starts_with("slept 1 ms in")),
        "the guest's lines are events of its span: {logged:#?}"
    );
    server.abort();
}

// ------------------------------------------------------------ across nodes

/// trace-peer.js: a Node.js broker with `node-math.relay` and a
/// `$tracing.spans` listener.
struct TracePeer {
    child: tokio::process::Child,
    batches: tokio::sync::mpsc::UnboundedReceiver<Value>,
}

impl TracePeer {
    async fn start(dir: &Path, release: &str, nats: &str, tracing: bool, wait: &str) -> TracePeer {
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("trace-peer.js"))
            .current_dir(dir)
            .env("MOLECULER", release)
            .env("NATS_URL", nats)
            .env("NODE_ID", format!("node-trace-{release}"))
            .env("TRACING", if tracing { "1" } else { "0" })
            .env("WAIT_SERVICES", wait)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node trace-peer.js");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let (tx, batches) = tokio::sync::mpsc::unbounded_channel();
        let (ready_tx, ready) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                match ready_tx.take() {
                    Some(r) if v.get("ready").is_some() => {
                        let _ = r.send(v);
                    }
                    other => {
                        ready_tx = other;
                        let _ = tx.send(v);
                    }
                }
            }
        });
        let ready = tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("trace-peer ready in time")
            .expect("trace-peer ready");
        assert_eq!(ready["ready"], true, "{ready}");
        TracePeer { child, batches }
    }

    /// Every span the listener got until `done` holds (at most 20 s).
    async fn spans_until(&mut self, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let mut spans = Vec::new();
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        while !done(&spans) {
            match tokio::time::timeout_at(end, self.batches.recv()).await {
                Ok(Some(batch)) => {
                    spans.extend(batch["spans"].as_array().cloned().unwrap_or_default())
                }
                _ => panic!("the listener never got them all: {spans:#?}"),
            }
        }
        spans
    }
}

impl TracePeer {
    /// The snapshots `$metrics.snapshot` brought from `sender` until one
    /// satisfies `done` (at most 20 s); that one.
    async fn metrics_until(&mut self, sender: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let end = tokio::time::Instant::now() + Duration::from_secs(20);
        let mut seen = 0;
        loop {
            match tokio::time::timeout_at(end, self.batches.recv()).await {
                Ok(Some(line)) if line["sender"] == sender => {
                    let Some(list) = line["metrics"].as_array() else {
                        continue;
                    };
                    seen += 1;
                    if done(list) {
                        return list.clone();
                    }
                }
                Ok(Some(_)) => {}
                _ => panic!("no fitting $metrics.snapshot from {sender} ({seen} seen)"),
            }
        }
    }
}

impl Drop for TracePeer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

const NODE_1: &str = r#"
[packages.a]
component = "{PROBE}"
[packages.a.grants]
calls = ["b.*"]
[packages.b]
component = "{PROBE}"
[packages.b.grants]
calls = ["node-math.*"]
"#;

const NODE_2: &str = r#"
[packages.c]
component = "{PROBE}"
"#;

fn node_toml(receiver: &Receiver, events: bool, packages: &str) -> String {
    let events = match events {
        true => "moleculer_events = true\nmoleculer_interval = \"100ms\"\n",
        false => "",
    };
    format!(
        "{}{events}{packages}",
        telemetry_toml(&receiver.url, "http/protobuf")
    )
}

/// gateway -> a -> b -> Node.js node-math.relay -> c on another node: one
/// trace, each span's parent the hop before (Node tracing or not); with
/// `moleculer_events`, Node's `$tracing.spans` listener gets ours as its own.
async fn one_trace_across_nodes(release: &str, node_traces: bool) {
    let Some((nats, peers)) = tools() else { return };
    let nats = Nats::start(&nats).await;
    let receiver = Receiver::start(false).await;
    let protocol = if release == "14" { 4 } else { 5 };
    let n1 = Node::start(
        &nats.url,
        "wasm-1",
        protocol,
        "json",
        &node_toml(&receiver, node_traces, NODE_1),
    )
    .await;
    let n2 = Node::start(
        &nats.url,
        "wasm-2",
        protocol,
        "json",
        &node_toml(&receiver, node_traces, NODE_2),
    )
    .await;
    let mut peer = TracePeer::start(&peers, release, &nats.url, node_traces, "c").await;
    n1.wait_for("node-math.relay").await;
    let (_gateway, base) = n1.t.gateway().await;
    let relay = json!({ "action": "node-math.relay", "params-json": json!({ "action": "c.context" }).to_string() });
    let body =
        json!({ "action": "b.forward", "params-json": relay.to_string(), "options-json": "{}" });
    let response = reqwest::Client::new()
        .post(format!("{base}/api/a/forward-with"))
        .json(&body)
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200, "{:?}", response.text().await);
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .expect("id")
        .to_string();
    let trace = request_id.replace('-', "");
    let names = [
        "HTTP POST /api/a/forward-with",
        "action 'a.forward-with'",
        "action 'b.forward'",
        "action 'node-math.relay'",
        "action 'c.context'",
    ];
    let spans = receiver.trace(&trace, |s| has(s, &names)).await;
    let [http, a, b, relay, c] = names.map(|n| named(&spans, n));
    assert_eq!(http.parent, "", "the request is the root");
    assert_eq!(
        http.id,
        request_id.replace('-', "")[..16],
        "the root's id is the request id"
    );
    assert_eq!(a.parent, http.id);
    assert_eq!(b.parent, a.id);
    assert_eq!(
        (relay.parent.as_str(), relay.kind),
        (b.id.as_str(), 3),
        "the call out: {relay:#?}"
    );
    assert_eq!(
        c.parent, relay.id,
        "c's parent is the Node.js hop: {spans:#?}"
    );
    assert_eq!(c.attrs["steedos.node"], "wasm-2");
    assert_eq!(b.attrs["steedos.node"], "wasm-1");
    assert!(spans.iter().all(|s| s.status != 2), "{spans:#?}");
    if node_traces {
        moleculer_listener_gets_ours(&mut peer, &request_id).await;
    }
    drop(peer);
    n2.stop().await;
    n1.stop().await;
}

/// Node's `$tracing.spans` listener: Node's own span of the relay and ours,
/// in one shape, one trace, linked.
async fn moleculer_listener_gets_ours(peer: &mut TracePeer, request_id: &str) {
    let want = [
        "action 'node-math.relay'",
        "action 'b.forward'",
        "action 'c.context'",
    ];
    let spans = peer
        .spans_until(|s| {
            want.iter().all(|w| {
                s.iter()
                    .any(|x| x["name"] == *w && x["traceID"] == request_id)
            })
        })
        .await;
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s["name"] == name && s["traceID"] == request_id)
            .cloned()
            .expect("span")
    };
    let (relay, b, c) = (find(want[0]), find(want[1]), find(want[2]));
    for s in [&relay, &b, &c] {
        for key in [
            "name",
            "type",
            "id",
            "traceID",
            "parentID",
            "service",
            "priority",
            "sampled",
            "startTime",
            "finishTime",
            "duration",
            "error",
            "logs",
            "tags",
        ] {
            assert!(s.get(key).is_some(), "`{key}` missing: {s}");
        }
        assert_eq!(s["type"], "action", "{s}");
        assert_eq!(s["sampled"], true, "{s}");
    }
    assert_eq!(
        relay["parentID"], b["id"],
        "Node's span is b's child: {relay} {b}"
    );
    assert_eq!(
        c["parentID"], relay["id"],
        "c is Node's span's child: {c} {relay}"
    );
    assert_eq!(b["service"]["name"], "b", "{b}");
    assert_eq!(c["tags"]["nodeID"], "wasm-2", "{c}");
    assert_eq!(b["tags"]["action"]["name"], "b.forward", "{b}");
    let b_duration = b["duration"].as_f64().unwrap_or(-1.0);
    assert!(b_duration >= 0.0 && b["error"].is_null(), "{b}");
    let client_halves = spans.iter().filter(|s| s["id"] == relay["id"]).count();
    assert_eq!(
        client_halves, 1,
        "one span per id in Moleculer's view: {spans:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_nodes_when_node_traces_and_moleculer_sees_ours() {
    one_trace_across_nodes("15", true).await;
    one_trace_across_nodes("14", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_across_nodes_when_node_does_not_trace() {
    one_trace_across_nodes("15", false).await;
}

// ------------------------------------------------------------ metrics and logs

const FRAGILE_ONLY: &str = r#"
[packages.fragile]
component = "{FRAGILE}"
"#;

/// The value of `metric` under `action` in a `$metrics.snapshot` list.
fn snapshot_value<'v>(list: &'v [Value], metric: &str, action: &str) -> Option<&'v Value> {
    let m = list.iter().find(|m| m["name"] == metric)?;
    m["values"]
        .as_array()?
        .iter()
        .find(|v| v["labels"]["action"] == action)
}

/// `[telemetry] moleculer_events`: a Node.js broker's `$metrics.snapshot`
/// listener gets our metrics as Moleculer's event reporter sends them,
/// under Moleculer's names and labels, with our calls counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_metrics_listener_gets_our_snapshot_in_moleculers_shape() {
    let Some((nats, peers)) = tools() else { return };
    let nats = Nats::start(&nats).await;
    let toml = format!(
        "[telemetry]\nmoleculer_events = true\nmoleculer_interval = \"100ms\"\n{FRAGILE_ONLY}"
    );
    let n = Node::start(&nats.url, "wasm-metrics", 5, "json", &toml).await;
    let mut peer = TracePeer::start(&peers, "15", &nats.url, false, "fragile").await;
    for _ in 0..2 {
        n.t.ok("fragile.echo", json!({ "text": "hi" })).await;
    }
    assert!(
        n.t.call("fragile.echo", json!({ "text": "trap" }))
            .await
            .is_err()
    );
    let list = peer
        .metrics_until("wasm-metrics", |list| {
            let total = snapshot_value(list, "moleculer.request.total", "fragile.echo");
            let errors = snapshot_value(list, "moleculer.request.error.total", "fragile.echo");
            total.is_some_and(|v| v["value"] == 3.0) && errors.is_some()
        })
        .await;
    let total = list
        .iter()
        .find(|m| m["name"] == "moleculer.request.total")
        .expect("total");
    assert_eq!(total["type"], "counter", "{total}");
    assert_eq!(
        total["labelNames"],
        json!(["service", "action", "type", "caller"]),
        "{total}"
    );
    let v = snapshot_value(&list, "moleculer.request.total", "fragile.echo").expect("value");
    assert_eq!(v["labels"]["service"], "fragile", "{v}");
    assert_eq!(v["key"], "\"fragile\"|\"fragile.echo\"|\"local\"|", "{v}");
    assert!(v["timestamp"].as_f64().is_some(), "{v}");
    assert!(v["rate"].as_f64().is_some(), "a rate, as Moleculer's: {v}");
    let e = snapshot_value(&list, "moleculer.request.error.total", "fragile.echo").expect("error");
    assert_eq!(
        (
            e["value"].as_f64(),
            &e["labels"]["errorName"],
            &e["labels"]["errorType"]
        ),
        (Some(1.0), &json!("MoleculerServerError"), &json!("CRASHED")),
        "{e}"
    );
    let time = list
        .iter()
        .find(|m| m["name"] == "moleculer.request.time")
        .expect("time");
    assert_eq!(
        (&time["type"], &time["unit"]),
        (&json!("histogram"), &json!("millisecond"))
    );
    let h = snapshot_value(&list, "moleculer.request.time", "fragile.echo").expect("histogram");
    assert_eq!(h["count"], 3, "{h}");
    assert!(h["sum"].as_f64().is_some_and(|s| s > 0.0), "{h}");
    let buckets = h["buckets"].as_object().expect("buckets");
    let last = buckets.values().filter_map(Value::as_u64).max();
    assert_eq!(last, Some(3), "cumulative buckets: {h}");
    let instances = list
        .iter()
        .find(|m| m["name"] == "steedos.package.instances")
        .expect("instances");
    assert_eq!(instances["values"][0]["labels"]["service"], "fragile");
    drop(peer);
    n.stop().await;
}

fn number(p: &opentelemetry_proto::tonic::metrics::v1::NumberDataPoint) -> f64 {
    use opentelemetry_proto::tonic::metrics::v1::number_data_point::Value as V;
    match p.value {
        Some(V::AsDouble(d)) => d,
        Some(V::AsInt(i)) => i as f64,
        None => f64::NAN,
    }
}

fn has_action(
    attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue],
    action: &str,
) -> bool {
    attributes
        .iter()
        .any(|kv| kv.key == "action" && text(&kv.value) == action)
}

/// `[telemetry] metrics`: the host's counters go to the collector over
/// `protocol` every interval: calls as a cumulative sum, latency as a
/// histogram, under the names `$metrics.snapshot` uses.
async fn metrics_over_otlp(protocol: &str) {
    use opentelemetry_proto::tonic::metrics::v1::metric::Data;
    let receiver = Receiver::start(protocol == "grpc").await;
    let toml = format!(
        "[telemetry]\nenabled = true\nendpoint = \"{}\"\nprotocol = \"{protocol}\"\nservice_name = \"wasm-shop\"\nmetrics = true\nmetrics_interval = \"100ms\"\n{FRAGILE_ONLY}",
        receiver.url
    );
    let t = TestApp::start(&toml).await;
    for _ in 0..3 {
        t.ok("fragile.echo", json!({ "text": "hi" })).await;
    }
    let found = eventually(Duration::from_secs(20), || {
        let requests = receiver.others.metrics.lock().expect("lock").clone();
        let found = requests.into_iter().rev().find_map(|r| {
            let rm = r.resource_metrics.first()?.clone();
            let metrics = rm.scope_metrics.first()?.metrics.clone();
            let total = metrics
                .iter()
                .find(|m| m.name == "moleculer.request.total")?;
            let Some(Data::Sum(sum)) = &total.data else {
                return None;
            };
            let point = sum
                .data_points
                .iter()
                .find(|p| has_action(&p.attributes, "fragile.echo"))?;
            let (enough, sum) = (number(point) >= 3.0, sum.clone());
            enough.then_some((rm, metrics, sum))
        });
        async move { found }
    })
    .await;
    let (rm, metrics, sum) = found.unwrap_or_else(|| {
        let n = receiver.others.metrics.lock().expect("lock").len();
        panic!("no export with the 3 calls ({n} metrics requests)")
    });
    let service = rm.resource.iter().flat_map(|r| r.attributes.iter());
    let service: Vec<_> = service
        .filter(|kv| kv.key == "service.name")
        .map(|kv| text(&kv.value))
        .collect();
    assert_eq!(service, ["wasm-shop"]);
    assert!(
        sum.is_monotonic && sum.aggregation_temporality == 2,
        "cumulative: {sum:?}"
    );
    let time = metrics
        .iter()
        .find(|m| m.name == "moleculer.request.time")
        .expect("time");
    assert_eq!(time.unit, "millisecond");
    let Some(Data::Histogram(h)) = &time.data else {
        panic!("a histogram: {time:?}")
    };
    let point = h
        .data_points
        .iter()
        .find(|p| has_action(&p.attributes, "fragile.echo"))
        .expect("point");
    assert!(point.count >= 3, "{point:?}");
    assert_eq!(point.bucket_counts.len(), point.explicit_bounds.len() + 1);
    assert_eq!(point.bucket_counts.iter().sum::<u64>(), point.count);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_carry_our_call_counts_over_http() {
    metrics_over_otlp("http/protobuf").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn otlp_metrics_carry_our_call_counts_over_grpc() {
    metrics_over_otlp("grpc").await;
}

/// Set for the child run of [`otlp_logs_in_a_child`].
const LOGS_CHILD: &str = "STEEDOS_TEST_OTLP_LOGS_CHILD";

/// `[telemetry] logs`: a guest's log line reaches the collector as a log
/// record with the trace and span of its call, and host events go too.
/// Run in a child process: it installs the process's `tracing` subscriber
/// with the OTLP logs layer, as the binary does.
#[test]
fn a_guest_log_line_arrives_over_otlp_with_its_calls_span() {
    let exe = std::env::current_exe().expect("the test binary");
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let out = rt.block_on(async {
        let child = tokio::process::Command::new(exe)
            .args(["--ignored", "--exact", "--nocapture", "--test-threads=1"])
            .arg("telemetry::otlp_logs_in_a_child")
            .env(LOGS_CHILD, "1")
            .kill_on_drop(true)
            .output();
        tokio::time::timeout(Duration::from_secs(300), child)
            .await
            .expect("the child ends in time")
            .expect("run the child")
    });
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("otlp logs ok"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_guest_log_line_arrives_over_otlp_with_its_calls_span"]
async fn otlp_logs_in_a_child() {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    if std::env::var_os(LOGS_CHILD).is_none() {
        return;
    }
    tracing_subscriber::registry()
        .with(tracing_subscriber::EnvFilter::new("info"))
        .with(steedos_wasm::telemetry::logs::layer())
        .init();
    let receiver = Receiver::start(false).await;
    let toml = format!(
        "{}logs = true\n{FRAGILE_ONLY}",
        telemetry_toml(&receiver.url, "http/protobuf")
    );
    let t = TestApp::start(&toml).await;
    t.ok("fragile.echo", json!({ "text": "sleep:1" })).await;
    let span = eventually(Duration::from_secs(20), || {
        let span = receiver
            .all()
            .into_iter()
            .find(|s| s.name == "action 'fragile.echo'");
        async move { span }
    })
    .await
    .expect("the echo's span");
    let record = eventually(Duration::from_secs(20), || {
        let logs = receiver.others.logs.lock().expect("lock").clone();
        let record = logs
            .into_iter()
            .flat_map(|r| r.resource_logs)
            .flat_map(|r| r.scope_logs)
            .flat_map(|s| s.log_records)
            .find(|r| text(&r.body).starts_with("sleeping 1 ms in"));
        async move { record }
    })
    .await
    .expect("the guest's line as a log record");
    assert_eq!(hex(&record.trace_id), span.trace, "{record:?}");
    assert_eq!(hex(&record.span_id), span.id, "{record:?}");
    assert_eq!(record.severity_text, "INFO", "{record:?}");
    let attrs: HashMap<String, String> = record
        .attributes
        .iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect();
    assert_eq!(
        attrs.get("package").map(String::as_str),
        Some("fragile"),
        "{attrs:?}"
    );
    assert_eq!(
        attrs.get("log.target").map(String::as_str),
        Some("guest"),
        "{attrs:?}"
    );
    let logs = receiver.others.logs.lock().expect("lock").clone();
    let host_targets: Vec<String> = logs
        .iter()
        .flat_map(|r| &r.resource_logs)
        .flat_map(|r| &r.scope_logs)
        .flat_map(|s| &s.log_records)
        .flat_map(|r| &r.attributes)
        .filter(|kv| kv.key == "log.target")
        .map(|kv| text(&kv.value))
        .filter(|t| t.starts_with("steedos_wasm"))
        .collect();
    assert!(!host_targets.is_empty(), "host events go too: {logs:?}");
    println!("otlp logs ok");
}

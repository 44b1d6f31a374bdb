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

/// A loopback OTLP receiver that records every span it is sent.
struct Receiver {
    url: String,
    spans: Spans,
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
    grpc: bool,
) -> Result<Response<Body>, Infallible> {
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
    if let Ok(decoded) = ExportTraceServiceRequest::decode(message) {
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
        let shared = spans.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let spans = shared.clone();
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let service =
                        hyper::service::service_fn(move |req| answer(req, spans.clone(), grpc));
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
        Receiver { url, spans, task }
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

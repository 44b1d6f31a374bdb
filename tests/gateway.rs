//! The HTTP gateway, driven by a real HTTP client (reqwest) and raw sockets
//! against a running host: routes, every status mapping, limits, aliases,
//! request ids, /health, /metrics and /openapi.json.

use std::io::{Read, Write};
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Instant;

use steedos_tests::{TestApp, assert_valid_openapi, eventually};
use steedos_wasm::supervisor::PackageState;

const APP: &str = r#"
[app]
cache_dir = "{CACHE}"

[gateway]
expose = ["greeter.*", "inventory.*", "chaos.*", "probe.forward", "shop.place-order", "statuses.*"]
max_body = "2 KiB"
header_timeout = "300ms"
idle_timeout = "500ms"

[gateway.aliases]
"GET /stock/:sku" = "inventory.get-item"
"GET /items" = "inventory.list-items"
"POST /reserve/:sku" = "inventory.reserve"
"POST /orders" = "shop.place-order"

[packages.greeter]
component = "{GREETER}"
[packages.inventory]
component = "{INVENTORY}"
[packages.shop]
component = "{SHOP}"
[packages.shop.grants]
calls = ["inventory.*"]
emits = ["order.*"]
[packages.probe]
component = "{PROBE}"
[packages.statuses]
component = "{STATUSES}"
[packages.chaos]
component = "{CHAOS}"
timeout = "1s"
memory = "16 MiB"
restart = { max = 1, within = "30s", backoff = "3s" }
"#;

async fn post(
    base: &str,
    path: &str,
    body: impl Into<reqwest::Body>,
) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("request");
    let (status, headers) = (r.status(), r.headers().clone());
    let value = r.json().await.unwrap_or(Value::Null);
    (status, headers, value)
}

async fn get(base: &str, path: &str) -> (StatusCode, Value) {
    let r = reqwest::get(format!("{base}{path}"))
        .await
        .expect("request");
    let status = r.status();
    (status, r.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actions_answer_over_http_with_request_ids() {
    let t = TestApp::start(APP).await;
    let (_g, base) = t.gateway().await;
    let (status, headers, v) = post(&base, "/api/greeter/hello", r#"{"name":"Ada"}"#).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v, json!("Hello, Ada!"));
    assert!(headers.get("x-request-id").is_some_and(|id| !id.is_empty()));

    let r = reqwest::Client::new()
        .post(format!("{base}/api/inventory/get-item"))
        .header("x-request-id", "trace-me-42")
        .body(r#"{"sku":"apple"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(r.headers()["x-request-id"], "trace-me-42");
    let item: Value = r.json().await.expect("json");
    assert_eq!(item["status"], json!({"in-stock": 10}));
    assert_eq!(item["price-cents"], 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_kind_has_its_status_and_a_json_body() {
    let t = TestApp::start(APP).await;
    let (_g, base) = t.gateway().await;
    let expect = |status: StatusCode, want: StatusCode, kind: &str, v: &Value| {
        assert_eq!(status, want, "{v}");
        assert_eq!(v["error"]["kind"], kind, "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        assert!(
            v["error"]["request_id"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
    };
    let (s, _, v) = post(&base, "/api/greeter/hello", "{not json").await;
    expect(s, StatusCode::BAD_REQUEST, "invalid-params", &v);
    let (s, _, v) = post(&base, "/api/greeter/hello", r#"{"name": 7}"#).await;
    expect(s, StatusCode::BAD_REQUEST, "invalid-params", &v);
    assert_eq!(v["error"]["package"], "greeter");
    assert_eq!(v["error"]["action"], "hello");
    let (s, _, v) = post(&base, "/api/greeter/goodbye", "{}").await;
    expect(s, StatusCode::NOT_FOUND, "not-found", &v);
    let (s, _, v) = post(&base, "/api/shop/relay", r#"{"payload":"x"}"#).await;
    expect(s, StatusCode::NOT_FOUND, "not-found", &v);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("not exposed"),
        "{v}"
    );
    let (s, _, v) = post(&base, "/api/inventory/reserve", r#"{"sku":"nope","qty":1}"#).await;
    expect(s, StatusCode::UNPROCESSABLE_ENTITY, "failed", &v);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("unknown-sku"),
        "{v}"
    );
    let (s, _, v) = post(&base, "/api/chaos/crash", "{}").await;
    expect(s, StatusCode::BAD_GATEWAY, "crashed", &v);
    let (s, _, v) = post(&base, "/api/chaos/spin", "{}").await;
    expect(s, StatusCode::GATEWAY_TIMEOUT, "timeout", &v);
    // Two faults used chaos's budget of one restart: it is in backoff now.
    let retry_at = eventually(Duration::from_secs(10), || async {
        match t.app.broker.service("chaos").map(|s| s.state()) {
            Some(PackageState::Backoff { retry_at }) => Some(retry_at),
            _ => None,
        }
    })
    .await
    .expect("chaos backs off");
    let before = retry_at.saturating_duration_since(Instant::now());
    let (s, headers, v) = post(&base, "/api/chaos/ok", "{}").await;
    let after = retry_at.saturating_duration_since(Instant::now());
    expect(s, StatusCode::SERVICE_UNAVAILABLE, "overloaded", &v);
    // Retry-After is the backoff's remaining seconds, rounded up, as they
    // were when the gateway answered: between `after` and `before`.
    let retry_after: u64 = headers
        .get("retry-after")
        .and_then(|h| h.to_str().ok()?.parse().ok())
        .expect("a Retry-After in seconds");
    let ceil = |d: Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    assert!(
        (ceil(after)..=ceil(before)).contains(&retry_after),
        "Retry-After {retry_after} with {before:?} to {after:?} of backoff left"
    );
    let (s, v) = get(&base, "/health").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{v}");
    assert_eq!(v["packages"]["chaos"]["state"], "backoff");
    assert_eq!(v["packages"]["greeter"]["state"], "serving");
    let (s, v) = get(&base, "/no/such/route").await;
    expect(s, StatusCode::NOT_FOUND, "not-found", &v);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aliases_take_path_query_and_body_parameters() {
    let t = TestApp::start(APP).await;
    let (_g, base) = t.gateway().await;
    let (s, v) = get(&base, "/stock/pear").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["status"], json!({"backorder": 7}));
    let (s, v) = get(&base, "/stock/unicorn").await;
    assert_eq!((s, v), (StatusCode::OK, Value::Null));
    let (s, v) = get(&base, "/items?tag=fruit").await;
    assert_eq!(s, StatusCode::OK);
    let skus: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["sku"].as_str().unwrap())
        .collect();
    assert_eq!(skus, ["apple", "pear"]);
    let (s, v) = get(&base, "/items").await;
    assert!(
        s == StatusCode::OK && v.as_array().unwrap().len() >= 4,
        "{v}"
    );
    // Path parameter + body field, a number coerced by its WIT type.
    let (s, _, v) = post(&base, "/reserve/apple", r#"{"qty": 2}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        (v["sku"].as_str(), v["qty"].as_u64()),
        (Some("apple"), Some(2))
    );
    let (s, _, v) = post(&base, "/reserve/apple?qty=3", "").await;
    assert_eq!((s, v["qty"].as_u64()), (StatusCode::OK, Some(3)), "{v}");
    let (s, _, v) = post(&base, "/reserve/apple?qty=lots", "").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{v}");
    let (s, _, v) = post(&base, "/orders", r#"{"lines":[{"sku":"apple","qty":1}]}"#).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["total-cents"], 120);
    // The alias's method matters.
    let (s, _) = get(&base, "/orders").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_protect_the_server() {
    let t = TestApp::start(APP).await;
    let (_g, base) = t.gateway().await;
    let big = format!(r#"{{"name":"{}"}}"#, "x".repeat(4096));
    let (s, _, v) = post(&base, "/api/greeter/hello", big).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{v}");
    assert_eq!(v["error"]["kind"], "too-large");
    let long = format!("/api/greeter/hello?{}", "q".repeat(10_000));
    let (s, _, v) = post(&base, &long, "{}").await;
    assert_eq!(s, StatusCode::URI_TOO_LONG, "{v}");
    assert_eq!(v["error"]["kind"], "uri-too-long");
    let mut too_many = reqwest::Client::new()
        .post(format!("{base}/api/greeter/hello"))
        .body(r#"{"name":"h"}"#);
    for i in 0..100 {
        too_many = too_many.header(format!("x-h{i}"), "v");
    }
    let s = too_many.send().await.map(|r| r.status());
    assert!(
        matches!(s, Ok(StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE)),
        "{s:?}"
    );

    let addr = base.trim_start_matches("http://").to_string();
    // A client that sends half a request head is cut off after header_timeout.
    let mut slow = std::net::TcpStream::connect(&addr).expect("connect");
    slow.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    slow.write_all(b"POST /api/greeter/hello HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    let mut buf = Vec::new();
    let started = std::time::Instant::now();
    let _ = slow.read_to_end(&mut buf);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the slow client was cut off"
    );
    // An idle keep-alive connection is closed after idle_timeout.
    let mut idle = std::net::TcpStream::connect(&addr).expect("connect");
    idle.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let body = r#"{"name":"i"}"#;
    write!(
        idle,
        "POST /api/greeter/hello HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut first = [0u8; 512];
    let n = idle.read(&mut first).expect("response");
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    let _ = idle.read_to_end(&mut rest);
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the idle connection was closed"
    );
    // The server still serves.
    let (s, _, _) = post(&base, "/api/greeter/hello", r#"{"name":"after"}"#).await;
    assert_eq!(s, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_parse_as_prometheus_text() {
    let t = TestApp::start(APP).await;
    let (_g, base) = t.gateway().await;
    for _ in 0..3 {
        post(&base, "/api/greeter/hello", r#"{"name":"m"}"#).await;
    }
    post(&base, "/api/greeter/hello", r#"{"name":1}"#).await;
    let r = reqwest::get(format!("{base}/metrics"))
        .await
        .expect("request");
    assert!(
        r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/openmetrics-text")
    );
    let text = r.text().await.expect("text");
    let lines = text.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("prometheus text");
    // OpenMetrics names a counter's samples `<name>_total` under `# TYPE <name>
    // counter`; this 0.0.4-format parser then reads them as untyped.
    let count = |v: Option<&prometheus_parse::Value>| match v {
        Some(prometheus_parse::Value::Counter(n) | prometheus_parse::Value::Untyped(n)) => *n,
        _ => -1.0,
    };
    let find = |name: &str, label: (&str, &str)| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get(label.0) == Some(label.1))
            .map(|s| s.value.clone())
    };
    assert!(
        matches!(find("steedos_package_instances", ("package", "greeter")), Some(prometheus_parse::Value::Gauge(n)) if n >= 1.0),
        "{text}"
    );
    let calls = scrape.samples.iter().find(|s| {
        s.metric == "steedos_calls_total"
            && s.labels.get("package") == Some("greeter")
            && s.labels.get("action") == Some("hello")
    });
    assert!(count(calls.map(|s| &s.value)) >= 4.0, "{text}");
    let errors = scrape.samples.iter().find(|s| {
        s.metric == "steedos_call_errors_total"
            && s.labels.get("action") == Some("hello")
            && s.labels.get("kind") == Some("invalid-params")
    });
    assert!(count(errors.map(|s| &s.value)) >= 1.0, "{text}");
    assert!(
        text.contains("steedos_call_duration_seconds_bucket"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openapi_is_valid_openapi_3() {
    let t = TestApp::start(APP).await;
    let (_g, base) = t.gateway().await;
    let (s, doc) = get(&base, "/openapi.json").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(
        doc["paths"]["/api/greeter/hello"]["post"].is_object(),
        "{doc}"
    );
    assert!(
        doc["paths"]["/stock/{sku}"]["get"]["parameters"][0]["in"] == "path",
        "{doc}"
    );
    assert!(
        doc["paths"].get("/api/shop/relay").is_none(),
        "unexposed actions stay out"
    );
    assert_valid_openapi(&doc, t.dir.path());
}

/// What the gateway answers for a real package fits the schemas its
/// `/openapi.json` publishes (records, options, variants, lists, results,
/// floats JSON writes as words), and so do the requests that it serves: one
/// mapping for both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_fit_the_schemas_openapi_publishes() {
    let t = TestApp::start(APP).await;
    let (_g, base) = t.gateway().await;
    let (_, doc) = get(&base, "/openapi.json").await;
    let json = "application/json";
    for (path, body) in [
        ("/api/inventory/get-item", r#"{"sku":"apple"}"#),
        ("/api/inventory/get-item", r#"{"sku":"dodo"}"#),
        ("/api/inventory/get-item", r#"{"sku":"unicorn"}"#),
        ("/api/inventory/list-items", "{}"),
        ("/api/inventory/list-items", r#"{"tag":"fruit"}"#),
        ("/api/inventory/reserve", r#"{"sku":"apple","qty":1}"#),
        ("/api/greeter/hello", r#"{"name":"Ada"}"#),
        ("/api/statuses/ratio", r#"{"a":1,"b":4}"#),
        ("/api/statuses/ratio", r#"{"a":-1,"b":0}"#),
        ("/api/statuses/ratio", r#"{"a":0,"b":0}"#),
    ] {
        let op = &doc["paths"][path]["post"];
        let request = &op["requestBody"]["content"][json]["schema"];
        let sent: Value = serde_json::from_str(body).unwrap();
        let valid = jsonschema::draft202012::is_valid(request, &sent);
        assert!(valid, "{path}: {body} does not fit {request}");

        let (status, _, answer) = post(&base, path, body).await;
        assert_eq!(status, StatusCode::OK, "{path} {body}: {answer}");
        let schema = &op["responses"]["200"]["content"][json]["schema"];
        if let Err(e) = jsonschema::draft202012::validate(schema, &answer) {
            panic!("{path} {body}: the gateway answered {answer}, its schema {schema} says: {e}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_200_when_every_package_serves() {
    let t = TestApp::start(
        r#"
[packages.greeter]
component = "{GREETER}"
[packages.inventory]
component = "{INVENTORY}"
"#,
    )
    .await;
    let (_g, base) = t.gateway().await;
    let r = reqwest::get(format!("{base}/health"))
        .await
        .expect("health");
    assert_eq!(r.status(), StatusCode::OK);
    let v: Value = r.json().await.expect("json");
    assert_eq!(v["status"], "serving", "{v}");
    for package in ["greeter", "inventory"] {
        assert_eq!(v["packages"][package]["state"], "serving", "{v}");
        assert!(
            v["packages"][package]["instances"].as_u64() >= Some(1),
            "{v}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_value_naming_a_status_sets_the_http_status() {
    let t = TestApp::start(APP).await;
    let (_g, base) = t.gateway().await;
    let refuse = |status: u64| {
        let base = base.clone();
        async move {
            post(
                &base,
                "/api/statuses/refuse",
                json!({ "status": status, "message": "no" }).to_string(),
            )
            .await
        }
    };
    for (named, answered) in [(418, 418), (409, 409), (503, 503), (399, 422), (600, 422)] {
        let (s, _, v) = refuse(named).await;
        assert_eq!(
            s.as_u16(),
            answered,
            "status {named}: {v} {:?}",
            t.failure("statuses")
        );
        assert_eq!(v["error"]["kind"], "failed", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap_or("").contains("no"),
            "{v}"
        );
    }
}

/// `nats-server` from `PATH`, or `None` (after saying why) outside CI.
fn nats_server() -> Option<std::path::PathBuf> {
    use steedos_tests::require;
    require::tools(&["nats-server"])
        .then(|| require::which("nats-server"))
        .flatten()
}

/// A call that another node of the cluster denies answers 403 over HTTP.
/// The other node is a raw NATS client speaking the Moleculer protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_call_answers_403() {
    use futures_util::StreamExt;
    let Some(binary) = nats_server() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let mut server = std::process::Command::new(binary)
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start nats-server");
    struct Kill<'a>(&'a mut std::process::Child);
    impl Drop for Kill<'_> {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let _server = Kill(&mut server);
    let url = format!("nats://127.0.0.1:{port}");
    let peer = eventually(Duration::from_secs(10), || {
        let url = url.clone();
        async move { async_nats::connect(&url).await.ok() }
    })
    .await
    .expect("nats-server listens");

    let t = TestApp::start(&format!(
        r#"
[cluster]
transporter = "{url}"
node_id = "gateway-node"
[gateway.aliases]
"GET /vault" = "vault.open"
[packages.greeter]
component = "{{GREETER}}"
"#
    ))
    .await;
    let mut requests = peer.subscribe("MOL.REQ.vault-node").await.expect("sub");
    let settings = t.app.manifest.cluster.clone().expect("[cluster]");
    let transport = steedos_wasm::transport::Transport::start(t.app.broker.clone(), settings)
        .await
        .expect("join");
    let info = json!({
        "ver": "4", "sender": "vault-node", "instanceID": "vault-1", "seq": 1,
        "services": [{ "name": "vault", "actions": { "vault.open": { "name": "vault.open" } }, "events": {} }],
        "hostname": "vault", "ipList": [], "client": { "type": "nodejs", "version": "0.14.35", "langVersion": "v20" },
        "config": {}, "metadata": {}
    });
    // Announced until the host has it (it may subscribe after the first).
    let mut known = false;
    for _ in 0..75 {
        peer.publish("MOL.INFO", info.to_string().into())
            .await
            .expect("INFO");
        if transport
            .wait_for_action("vault.open", Duration::from_millis(200))
            .await
        {
            known = true;
            break;
        }
    }
    assert!(known, "the raw peer's action is known");
    let answering = tokio::spawn({
        let peer = peer.clone();
        async move {
            while let Some(m) = requests.next().await {
                let req: Value = serde_json::from_slice(&m.payload).unwrap_or_default();
                let res = json!({
                    "ver": "4", "sender": "vault-node", "id": req["id"], "success": false, "data": null, "meta": {},
                    "error": { "name": "MoleculerClientError", "message": "the vault is closed to you",
                               "code": 403, "type": "DENIED", "data": null, "retryable": false }
                });
                let to = format!("MOL.RES.{}", req["sender"].as_str().unwrap_or_default());
                let _ = peer.publish(to, res.to_string().into()).await;
            }
        }
    });
    let (_g, base) = t.gateway().await;
    let (s, v) = get(&base, "/vault").await;
    assert_eq!(s, StatusCode::FORBIDDEN, "{v}");
    assert_eq!(v["error"]["kind"], "denied", "{v}");
    answering.abort();
    transport.stop(Duration::from_secs(1)).await;
}

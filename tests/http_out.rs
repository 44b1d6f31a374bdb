//! Outgoing HTTP of packages (`wasi:http/outgoing-handler`): the real
//! `http-client` package calls a real hyper server on 127.0.0.1 that
//! echoes, answers slowly, sends large bodies and redirects. Grants let
//! requests through by scheme, host and port; loopback is reached only by
//! a grant naming it, checked on the resolved address; limits and metrics
//! per package.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use serde_json::{Value, json};
use steedos_wasm::context::CallError;

use steedos_tests::{TestApp, require};
use steedos_wasm::builder;
use steedos_wasm::manifest::Manifest;

type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// A hyper server on 127.0.0.1 and the paths it was asked for.
struct TestServer {
    addr: SocketAddr,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl TestServer {
    async fn start() -> TestServer {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let seen = hits.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let seen = seen.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let seen = seen.clone();
                        async move { Ok::<_, Infallible>(answer(req, &seen).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        TestServer { addr, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits
            .lock()
            .expect("hits")
            .get(path)
            .copied()
            .unwrap_or(0)
    }

    fn total_hits(&self) -> usize {
        self.hits.lock().expect("hits").values().sum()
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

fn full(status: u16, body: impl Into<Bytes>) -> Response<Body> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = hyper::StatusCode::from_u16(status).expect("status");
    r
}

fn query(req: &Request<hyper::body::Incoming>, key: &str) -> Option<String> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.to_string())
    })
}

async fn answer(
    req: Request<hyper::body::Incoming>,
    hits: &Mutex<HashMap<String, usize>>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    *hits.lock().expect("hits").entry(path.clone()).or_default() += 1;
    match path.as_str() {
        "/echo" => {
            let method = req.method().to_string();
            let headers: HashMap<String, String> = req
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            let body = req.into_body().collect().await.map(|b| b.to_bytes());
            let body = String::from_utf8_lossy(&body.unwrap_or_default()).into_owned();
            let mut r = full(
                201,
                json!({ "method": method, "headers": headers, "body": body }).to_string(),
            );
            r.headers_mut()
                .insert("x-echo", hyper::header::HeaderValue::from_static("yes"));
            r
        }
        "/slow" => {
            let ms: u64 = query(&req, "ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            full(200, "slow")
        }
        "/big" => {
            let n: usize = query(&req, "n").and_then(|v| v.parse().ok()).unwrap_or(0);
            if query(&req, "chunked").is_some() {
                // No content-length: the limit must hold while the body streams.
                let chunks = (0..n.div_ceil(8192)).map(move |i| {
                    let len = 8192.min(n - i * 8192);
                    Ok::<_, Infallible>(Frame::data(Bytes::from(vec![b'x'; len])))
                });
                let stream = futures_util::stream::iter(chunks);
                Response::new(StreamBody::new(stream).boxed())
            } else {
                full(200, vec![b'x'; n])
            }
        }
        "/redirect" => {
            let to = query(&req, "to").unwrap_or_default();
            let mut r = full(302, "");
            r.headers_mut().insert(
                "location",
                hyper::header::HeaderValue::from_str(&to).expect("location"),
            );
            r
        }
        _ => full(404, "no such path"),
    }
}

/// `open` may reach the server's own origin (by IP and port), with small
/// limits; `star` any host and port (so no loopback); `local` localhost.
fn manifest(server: &TestServer) -> String {
    let port = server.addr.port();
    format!(
        r#"
[packages.open]
component = "{{HTTP-CLIENT}}"
instances = 2
[packages.open.grants]
http = ["http://127.0.0.1:{port}", "https://api.example.com"]
[packages.open.http]
first_byte_timeout = "400ms"
max_response_size = "64 KiB"
max_concurrent = 2
[packages.star]
component = "{{HTTP-CLIENT}}"
grants.http = ["http://*:*"]
[packages.local]
component = "{{HTTP-CLIENT}}"
grants.http = ["http://localhost:{port}"]
"#
    )
}

async fn get(t: &TestApp, package: &str, url: &str) -> Result<Value, CallError> {
    t.call(&format!("{package}.get"), json!({ "url": url }))
        .await
}

/// The `wasi:http` error code a failed request came back with.
fn code(r: Result<Value, CallError>) -> String {
    match r {
        Err(CallError::Failed(f)) => f.message,
        other => panic!("expected a request error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_granted_origin_answers_with_the_request_id_and_others_are_denied() {
    let server = TestServer::start().await;
    let t = TestApp::start(&manifest(&server)).await;
    let reply = t
        .call(
            "open.send",
            json!({ "method": "POST", "url": server.url("/echo"), "headers": [["content-type", "text/plain"]],
                    "body": "hello", "timeout-ms": null }),
        )
        .await
        .expect("a granted origin answers");
    assert_eq!(reply["status"], 201);
    assert!(
        reply["headers"]
            .as_array()
            .expect("headers")
            .iter()
            .any(|h| h[0] == "x-echo" && h[1] == "yes")
    );
    let echo: Value = serde_json::from_str(reply["body"].as_str().expect("body")).expect("json");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "hello");
    let id = echo["headers"]["x-request-id"].as_str().unwrap_or("");
    assert!(!id.is_empty(), "the call's request id goes out: {echo}");

    let port = server.addr.port();
    let before = server.total_hits();
    for (why, url) in [
        ("another host", format!("http://localhost:{port}/echo")),
        (
            "another port",
            format!("http://127.0.0.1:{}/echo", port ^ 1),
        ),
        ("another scheme", format!("https://127.0.0.1:{port}/echo")),
        ("a decimal IP", format!("http://2130706433:{port}/echo")),
        (
            "a user in the URL",
            format!("http://x@127.0.0.1:{port}/echo"),
        ),
    ] {
        let c = code(get(&t, "open", &url).await);
        assert!(c.contains("HttpRequestDenied"), "{why}: {c}");
    }
    assert_eq!(
        server.total_hits(),
        before,
        "no denied request reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_is_reached_only_through_a_grant_naming_it() {
    let server = TestServer::start().await;
    let t = TestApp::start(&manifest(&server)).await;
    let port = server.addr.port();
    // `*` lets any host through, but not to loopback or private addresses,
    // however they are written: checked after resolution.
    for url in [
        format!("http://localhost:{port}/echo"),
        format!("http://127.0.0.1:{port}/echo"),
        format!("http://2130706433:{port}/echo"),
        format!("http://0x7f.0.0.1:{port}/echo"),
        format!("http://127.1:{port}/echo"),
        format!("http://[::1]:{port}/echo"),
        format!("http://[::ffff:127.0.0.1]:{port}/echo"),
        format!("http://0.0.0.0:{port}/echo"),
        format!("http://169.254.169.254:{port}/echo"),
        format!("http://10.0.0.1:{port}/echo"),
    ] {
        let c = code(get(&t, "star", &url).await);
        assert!(c.contains("HttpRequestDenied"), "{url}: {c}");
    }
    assert_eq!(server.total_hits(), 0, "nothing reached the server");
    // A grant naming localhost reaches it.
    let reply = get(&t, "local", &format!("http://localhost:{port}/echo"))
        .await
        .expect("localhost is granted by name");
    assert_eq!(reply["status"], 201);
    assert_eq!(server.hits("/echo"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_hold_and_the_metrics_count_them() {
    let server = TestServer::start().await;
    let t = TestApp::start(&manifest(&server)).await;
    // First byte later than the package's 400 ms.
    let c = code(get(&t, "open", &server.url("/slow?ms=3000")).await);
    assert!(c.contains("Timeout"), "{c}");
    // A body over 64 KiB, announced or streamed.
    let c = code(get(&t, "open", &server.url("/big?n=200000")).await);
    assert!(c.contains("HttpResponseBodySize"), "{c}");
    // Streamed, it fails as the body stream's error (wasmtime-wasi-http 48
    // gives body errors no `http-error-code`, only their text).
    let c = code(get(&t, "open", &server.url("/big?n=200000&chunked=1")).await);
    assert!(c.contains("body size exceeds limit"), "{c}");
    let fits = get(&t, "open", &server.url("/big?n=60000&chunked=1"))
        .await
        .expect("under the limit");
    assert_eq!(fits["body-length"], 60000);
    // Redirects are the guest's to follow: it sees the 302, and the host
    // never went to the (denied) target.
    let target = format!("http://localhost:{}/target", server.addr.port());
    let reply = get(&t, "open", &server.url(&format!("/redirect?to={target}")))
        .await
        .expect("a 3xx is a reply");
    assert_eq!(reply["status"], 302);
    assert_eq!(server.hits("/target"), 0);
    // Two requests in flight at most: of four at once, two are refused.
    let results = t
        .call(
            "open.many",
            json!({ "url": server.url("/slow?ms=300"), "count": 4 }),
        )
        .await
        .expect("many");
    let results = results.as_array().expect("list");
    let ok = results.iter().filter(|r| r.get("ok").is_some()).count();
    let limited: Vec<&Value> = results
        .iter()
        .filter(|r| {
            r["err"]
                .as_str()
                .is_some_and(|e| e.contains("ConnectionLimitReached"))
        })
        .collect();
    assert_eq!((ok, limited.len()), (2, 2), "{results:?}");
    // Denied once, for the metrics.
    let _ = get(&t, "open", "http://localhost:1/").await;

    let text = t.app.metrics.render(&t.app.broker.reports());
    let metric = |name: &str, labels: &str| -> f64 {
        let line = text
            .lines()
            .find(|l| l.starts_with(name) && l.contains(labels))
            .unwrap_or_else(|| panic!("no {name} {labels} in\n{text}"));
        line.rsplit(' ')
            .next()
            .and_then(|v| v.parse().ok())
            .expect("value")
    };
    assert_eq!(
        metric("steedos_http_out_requests_total", "package=\"open\""),
        10.0
    );
    for (kind, n) in [
        ("denied", 1.0),
        ("limit", 2.0),
        ("timeout", 1.0),
        ("too_large", 2.0),
    ] {
        let labels = format!("kind=\"{kind}\",package=\"open\"");
        let labels_other = format!("package=\"open\",kind=\"{kind}\"");
        let got = text
            .lines()
            .find(|l| {
                l.starts_with("steedos_http_out_errors_total")
                    && (l.contains(&labels) || l.contains(&labels_other))
            })
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok());
        assert_eq!(got, Some(n), "{kind} in\n{text}");
    }
    assert!(metric("steedos_http_out_response_bytes_total", "package=\"open\"") >= 60000.0);
    assert_eq!(
        metric(
            "steedos_http_out_duration_seconds_count",
            "package=\"open\""
        ),
        10.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_importing_wasi_http_without_a_grant_does_not_load() {
    let t = TestApp::start(
        r#"
[packages.nogrant]
component = "{HTTP-CLIENT}"
"#,
    )
    .await;
    let failure = t.failure("nogrant").expect("nogrant fails to load");
    assert!(
        failure.contains("grants.http") && failure.contains("wasi:http/"),
        "{failure}"
    );
}

/// examples/http's JavaScript `fetcher`, built by its own build command
/// (npm and componentize-js); `None` to skip without node and npm.
async fn js_fetcher() -> Option<String> {
    example_package("fetcher", &["node", "npm"]).await
}

/// examples/http's package `name`, built by its own build command, which
/// needs `tools`; `None` to skip without them.
async fn example_package(name: &str, tools: &[&str]) -> Option<String> {
    if !require::tools(tools) {
        return None;
    }
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/http");
    let manifest = Manifest::load(&example).expect("examples/http/steedos.toml");
    let spec = manifest
        .packages
        .iter()
        .find(|p| p.name == name)
        .unwrap_or_else(|| panic!("{name} in examples/http"));
    if let Err(e) = builder::build_if_needed(spec, false).await {
        panic!("{e}");
    }
    Some(spec.component.display().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_fetch_goes_through_the_same_grants() {
    let Some(component) = js_fetcher().await else {
        return;
    };
    let server = TestServer::start().await;
    let port = server.addr.port();
    let t = TestApp::start(&format!(
        r#"
[packages.fetcher]
component = "{component}"
memory = "256 MiB"
grants.http = ["http://127.0.0.1:{port}"]
"#
    ))
    .await;
    let send = |method: &str, url: String, body: &str| {
        t.call(
            "fetcher.send",
            json!({ "method": method, "url": url, "body": body }),
        )
    };
    let reply = send("POST", server.url("/echo"), "from js")
        .await
        .expect("fetch of a granted origin");
    assert_eq!(reply["status"], 201);
    let echo: Value = serde_json::from_str(reply["body"].as_str().expect("body")).expect("json");
    assert_eq!(echo["body"], "from js");
    assert!(
        echo["headers"]["x-request-id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    let hits = server.total_hits();
    let denied = send("GET", format!("http://localhost:{port}/echo"), "").await;
    assert!(denied.is_err(), "{denied:?}");
    assert_eq!(
        server.total_hits(),
        hits,
        "the denied fetch never reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_requests_go_through_the_same_grants() {
    let Some(component) = example_package("pyfetch", &["python3"]).await else {
        return;
    };
    let server = TestServer::start().await;
    let port = server.addr.port();
    let t = TestApp::start(&format!(
        r#"
[packages.pyfetch]
component = "{component}"
memory = "256 MiB"
grants.http = ["http://127.0.0.1:{port}"]
"#
    ))
    .await;
    let send = |method: &str, url: String, body: &str| {
        t.call(
            "pyfetch.send",
            json!({ "method": method, "url": url, "body": body }),
        )
    };
    let reply = send("POST", server.url("/echo"), "from python")
        .await
        .expect("a request to a granted origin");
    assert_eq!(reply["status"], 201);
    let echo: Value = serde_json::from_str(reply["body"].as_str().expect("body")).expect("json");
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["body"], "from python");
    assert!(
        echo["headers"]["x-request-id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    // Redirects come back as they are.
    let reply = send("GET", server.url("/redirect?to=http://10.0.0.1/"), "")
        .await
        .expect("a 3xx");
    assert_eq!(reply["status"], 302);
    assert_eq!(reply["location"], "http://10.0.0.1/");

    let hits = server.total_hits();
    for url in [
        format!("http://localhost:{port}/echo"),
        format!("https://127.0.0.1:{port}/echo"),
        format!("http://127.0.0.1:{}/echo", port ^ 1),
    ] {
        let denied = send("GET", url.clone(), "").await;
        match denied {
            Err(CallError::Failed(f)) => {
                assert!(
                    f.message.contains("HttpRequestDenied"),
                    "{url}: {}",
                    f.message
                )
            }
            other => panic!("{url}: expected HttpRequestDenied, got {other:?}"),
        }
    }
    assert_eq!(
        server.total_hits(),
        hits,
        "no denied request reached the server"
    );
}

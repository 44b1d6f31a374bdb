//! The HTTP gateway against hostile clients, on raw TCP sockets: bodies
//! trickled a byte at a time, clients that never read their response,
//! floods of slow connections, oversized and malformed requests, and the
//! operational routes' access setting.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use steedos_tests::{TestApp, eventually};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A bound no healthy step here comes near, on a busy two-core machine.
const GENEROUS: Duration = Duration::from_secs(20);

const APP: &str = r#"
[gateway]
expose = ["greeter.*"]
max_body = "2 KiB"
header_timeout = "300ms"
idle_timeout = "500ms"

[gateway.aliases]
"GET /greet/:name" = "greeter.hello"

[packages.greeter]
component = "{GREETER}"
"#;

/// One HTTP/1.1 response read off a raw socket.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Reads one response (head and `content-length` body) from `stream`,
/// keeping what follows it in `buf`; `None` when the server closed first.
async fn read_answer(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Answer> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let status = head.get(9..12)?.parse().ok()?;
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            while buf.len() < end + 4 + len {
                if stream.read_buf(buf).await.ok()? == 0 {
                    return None;
                }
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            buf.drain(..end + 4 + len);
            return Some(Answer { status, head, body });
        }
        if stream.read_buf(buf).await.ok()? == 0 {
            return None;
        }
    }
}

/// Sends `request` as it is on a new connection and reads one answer.
async fn exchange(addr: &str, request: &[u8]) -> Option<Answer> {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream.write_all(request).await.expect("write");
    tokio::time::timeout(GENEROUS, read_answer(&mut stream, &mut Vec::new()))
        .await
        .expect("an answer or a close in time")
}

/// A `POST /api/greeter/hello` carrying `body`, as raw HTTP/1.1.
fn hello_request(body: &str) -> String {
    format!(
        "POST /api/greeter/hello HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn addr_of(base: &str) -> String {
    base.trim_start_matches("http://").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_trickled_byte_by_byte_are_cut_off() {
    let t = TestApp::start(APP).await;
    let (g, base) = t.gateway().await;
    let addr = addr_of(&base);
    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..50 {
        let addr = addr.clone();
        clients.push(tokio::spawn(async move {
            let stream = TcpStream::connect(&addr).await.expect("connect");
            let (mut read, mut write) = stream.into_split();
            write
                .write_all(b"POST /api/greeter/hello HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
                .await
                .expect("head");
            // A byte every 100 ms: never quiet for idle_timeout, never done.
            let trickle = tokio::spawn(async move {
                while write.write_all(b" ").await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            });
            let mut answer = Vec::new();
            let _ = tokio::time::timeout(GENEROUS, read.read_to_end(&mut answer)).await;
            trickle.abort();
            String::from_utf8_lossy(&answer).into_owned()
        }));
    }
    // Each is answered 408 and closed long before the bound.
    for client in clients {
        let answer = client.await.expect("client");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
        assert!(answer.contains("request-timeout"), "{answer:?}");
    }
    assert!(
        started.elapsed() < GENEROUS,
        "cut off in {:?}",
        started.elapsed()
    );
    eventually(GENEROUS, || async { (g.connections() == 0).then_some(()) })
        .await
        .expect("every trickling connection closed");
    // The server still serves.
    let ok = reqwest::Client::new()
        .post(format!("{base}/api/greeter/hello"))
        .body(r#"{"name":"after"}"#)
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_its_responses_is_dropped() {
    let t = TestApp::start(
        r#"
[gateway]
expose = ["greeter.*"]
max_body = "1 MiB"
header_timeout = "300ms"
idle_timeout = "500ms"
[packages.greeter]
component = "{GREETER}"
"#,
    )
    .await;
    let (g, base) = t.gateway().await;
    let mut stream = TcpStream::connect(addr_of(&base)).await.expect("connect");
    // 64 pipelined requests whose answers (512 KiB each) fill every socket
    // buffer between the gateway and a client that never reads.
    let body = format!(r#"{{"name":"{}"}}"#, "x".repeat(512 << 10));
    let request = hello_request(&body);
    let writer = tokio::spawn(async move {
        for _ in 0..64 {
            if stream.write_all(request.as_bytes()).await.is_err() {
                break;
            }
        }
        // Keep the socket open, unread, until the test ends.
        std::future::pending::<()>().await;
        drop(stream);
    });
    eventually(GENEROUS, || async { (g.connections() == 1).then_some(()) })
        .await
        .expect("the connection is open");
    eventually(GENEROUS, || async { (g.connections() == 0).then_some(()) })
        .await
        .expect("the gateway dropped the connection that takes no response");
    writer.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_keep_alive_connection_is_closed_after_idle_timeout() {
    // hyper's header timeout would close it too, but only after 30 s: the
    // gateway's own watch must close it after idle_timeout.
    let t = TestApp::start(
        r#"
[gateway]
expose = ["greeter.*"]
header_timeout = "30s"
idle_timeout = "300ms"
[packages.greeter]
component = "{GREETER}"
"#,
    )
    .await;
    let (g, base) = t.gateway().await;
    let mut stream = TcpStream::connect(addr_of(&base)).await.expect("connect");
    let body = r#"{"name":"Ada"}"#;
    let request = hello_request(body);
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let answer = read_answer(&mut stream, &mut buf).await.expect("an answer");
    assert_eq!(answer.status, 200, "{answer:?}");
    let quiet = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut byte = [0u8; 1];
        matches!(stream.read(&mut byte).await, Ok(0) | Err(_))
    })
    .await;
    assert_eq!(
        closed,
        Ok(true),
        "the gateway closes a keep-alive connection quiet for idle_timeout (300 ms), not after header_timeout (30 s)"
    );
    assert!(
        quiet.elapsed() >= Duration::from_millis(300),
        "closed before idle_timeout: {:?}",
        quiet.elapsed()
    );
    eventually(GENEROUS, || async { (g.connections() == 0).then_some(()) })
        .await
        .expect("the gateway forgot the closed connection");
}

/// Opens `n` connections that send half a request head and hold.
async fn slow_heads(addr: &str, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        held.push(s);
    }
    held
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_slow_clients_cannot_starve_quick_ones() {
    let t = TestApp::start(
        r#"
[gateway]
expose = ["greeter.*"]
header_timeout = "1h"
idle_timeout = "1h"
max_connections = 32
[packages.greeter]
component = "{GREETER}"
"#,
    )
    .await;
    let (g, base) = t.gateway().await;
    let g = Arc::new(g);
    assert_eq!(g.max_connections(), 32);
    let addr = addr_of(&base);
    let most = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (most, done, g) = (most.clone(), done.clone(), g.clone());
        tokio::spawn(async move {
            while !done.load(Ordering::Relaxed) {
                most.fetch_max(g.connections(), Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
    };
    // 200 slow clients: with header_timeout at an hour, only the cap on
    // connections stands between them and every file the process has.
    let mut held = slow_heads(&addr, 200).await;
    // Quick clients still get through, one after another, during the flood.
    let client = reqwest::Client::builder()
        .timeout(GENEROUS)
        .build()
        .expect("client");
    for i in 0..5 {
        let r = client
            .post(format!("{base}/api/greeter/hello"))
            .body(format!(r#"{{"name":"quick {i}"}}"#))
            .send()
            .await
            .expect("a quick request gets through the flood");
        assert_eq!(r.status(), 200);
        held.extend(slow_heads(&addr, 20).await);
    }
    done.store(true, Ordering::Relaxed);
    sampler.await.expect("sampler");
    let most = most.load(Ordering::Relaxed);
    assert!(
        most <= 32,
        "{most} connections open at once, over max_connections"
    );
    // The oldest slow clients were closed to make room.
    let mut closed = 0;
    for s in &mut held {
        let mut b = [0u8; 64];
        if let Ok(Ok(0)) = tokio::time::timeout(Duration::from_millis(20), s.read(&mut b)).await {
            closed += 1;
        }
    }
    assert!(closed >= 200 - 32, "only {closed} slow clients were closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn past_max_connections_with_every_one_busy_a_client_gets_503() {
    let t = TestApp::start(
        r#"
[gateway]
expose = ["chaos.*"]
max_connections = 2
[packages.chaos]
component = "{CHAOS}"
instances = 1
timeout = "3s"
restart = { max = 100, within = "1s" }
"#,
    )
    .await;
    let (_g, base) = t.gateway().await;
    let addr = addr_of(&base);
    // Two connections run long calls: one holds chaos's only instance, the
    // other waits in its queue, so both are past reading their request.
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        s.write_all(b"POST /api/chaos/spin HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
            .await
            .expect("write");
        busy.push(s);
    }
    let queued = || {
        t.app
            .broker
            .reports()
            .into_iter()
            .find(|r| r.name == "chaos")
            .map_or(0, |r| r.queued)
    };
    eventually(GENEROUS, || async { (queued() == 1).then_some(()) })
        .await
        .expect("one call runs and one waits");
    let refused = exchange(&addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("an answer");
    assert_eq!(refused.status, 503, "{refused:?}");
    assert_eq!(refused.header("retry-after"), Some("1"), "{refused:?}");
    assert_eq!(refused.json()["error"]["kind"], "overloaded", "{refused:?}");
    // Neither busy call was sacrificed: each is answered by its call (the
    // running one times out; the waiting one may fail as the instance is
    // replaced), not cut off.
    let (mut a, mut b) = (busy.remove(0), busy.remove(0));
    let (mut ba, mut bb) = (Vec::new(), Vec::new());
    let first = tokio::time::timeout(GENEROUS, async {
        tokio::select! {
            r = read_answer(&mut a, &mut ba) => r,
            r = read_answer(&mut b, &mut bb) => r,
        }
    })
    .await
    .expect("in time")
    .expect("an answer");
    assert!(matches!(first.status, 503 | 504), "{first:?}");
    assert_eq!(first.json()["error"]["action"], "spin", "{first:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_requests_are_refused_cleanly() {
    let t = TestApp::start(APP).await;
    let (_g, base) = t.gateway().await;
    let addr = addr_of(&base);
    let post = |head: &str, body: &[u8]| {
        let mut r = head.as_bytes().to_vec();
        r.extend_from_slice(body);
        r
    };

    // A Content-Length far past max_body: 413 before a byte of it is read.
    let a = exchange(
        &addr,
        b"POST /api/greeter/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000000\r\n\r\n",
    )
    .await
    .expect("answer");
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.header("connection"), Some("close"), "{a:?}");

    // A chunked body that grows past max_body: 413.
    let mut chunked =
        b"POST /api/greeter/hello HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
            .to_vec();
    for _ in 0..4 {
        chunked.extend_from_slice(format!("400\r\n{}\r\n", "x".repeat(1024)).as_bytes());
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let a = exchange(&addr, &chunked).await.expect("answer");
    assert_eq!(a.status, 413, "{a:?}");
    assert_eq!(a.json()["error"]["kind"], "too-large", "{a:?}");

    // Both a Content-Length and chunked (a smuggling attempt): refused.
    let a = exchange(&addr, &post("POST /api/greeter/hello HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n", b"0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")).await;
    assert!(a.as_ref().is_none_or(|a| a.status == 400), "{a:?}");

    // A URI over the limit but within the head buffer: exactly 414.
    let long = format!(
        "GET /greet/x?{} HTTP/1.1\r\nHost: x\r\n\r\n",
        "q".repeat(10_000)
    );
    let a = exchange(&addr, long.as_bytes()).await.expect("answer");
    assert_eq!(a.status, 414, "{a:?}");
    assert_eq!(a.json()["error"]["kind"], "uri-too-long", "{a:?}");

    // Too many headers: exactly 431; one header too large: 431 too.
    let mut many = String::from("GET /health HTTP/1.1\r\nHost: x\r\n");
    for i in 0..100 {
        many.push_str(&format!("x-h{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let a = exchange(&addr, many.as_bytes()).await.expect("answer");
    assert_eq!(a.status, 431, "{a:?}");
    let huge = format!(
        "GET /health HTTP/1.1\r\nHost: x\r\nx-big: {}\r\n\r\n",
        "v".repeat(100_000)
    );
    let a = exchange(&addr, huge.as_bytes()).await.expect("answer");
    assert_eq!(a.status, 431, "{a:?}");

    // Bytes that are not UTF-8 in the path: refused by the parser, 400.
    let a = exchange(&addr, b"GET /greet/\xff\xfe HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(a.as_ref().is_none_or(|a| a.status == 400), "{a:?}");
    // Percent-encoded invalid UTF-8, `..` and an encoded slash in a path
    // parameter: data for the action, never a path.
    let a = exchange(
        &addr,
        b"GET /greet/%FF%2e%2e%2F..%2Fetc HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .expect("answer");
    assert_eq!(a.status, 200, "{a:?}");
    assert_eq!(a.json(), Value::from("Hello, \u{fffd}../../etc!"), "{a:?}");
    let a = exchange(
        &addr,
        b"GET /greet/x/../../health HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await
    .expect("answer");
    assert_eq!(a.status, 404, "{a:?}");

    // Pipelined requests on one connection: each answered, in order.
    let mut stream = TcpStream::connect(&addr).await.expect("connect");
    let mut pipelined = Vec::new();
    for name in ["one", "two", "three"] {
        let body = format!(r#"{{"name":"{name}"}}"#);
        pipelined.extend_from_slice(hello_request(&body).as_bytes());
    }
    stream.write_all(&pipelined).await.expect("write");
    let mut buf = Vec::new();
    for name in ["one", "two", "three"] {
        let a = tokio::time::timeout(GENEROUS, read_answer(&mut stream, &mut buf))
            .await
            .expect("in time")
            .expect("answer");
        assert_eq!(a.json(), Value::from(format!("Hello, {name}!")), "{a:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_shows_state_not_host_paths() {
    let t = TestApp::start(
        r#"
[gateway]
expose = ["*"]
[packages.greeter]
component = "{GREETER}"
[packages.ghost]
component = "{DIR}/secret-folder/ghost.wasm"
"#,
    )
    .await;
    let (_g, base) = t.gateway().await;
    let r = reqwest::get(format!("{base}/health"))
        .await
        .expect("health");
    assert_eq!(r.status(), 503);
    let text = r.text().await.expect("text");
    let health: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(health["packages"]["greeter"]["state"], "serving", "{text}");
    assert_eq!(health["packages"]["ghost"]["state"], "failed", "{text}");
    assert!(
        !text.contains("secret-folder"),
        "a host path in /health: {text}"
    );
    // Nor in a call's error.
    let r = reqwest::Client::new()
        .post(format!("{base}/api/ghost/anything"))
        .body("{}")
        .send()
        .await
        .expect("call");
    let text = r.text().await.expect("text");
    assert!(
        !text.contains("secret-folder"),
        "a host path in an error: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_routes_follow_the_ops_setting() {
    let t = TestApp::start(
        r#"
[gateway]
expose = ["greeter.*"]
ops = "token"
[packages.greeter]
component = "{GREETER}"
"#,
    )
    .await;
    // The token is given through the settings (no set_var in tests).
    let mut settings = t.app.manifest.gateway.clone();
    settings.admin_token = Some("s3cret-token".into());
    let gateway = steedos_wasm::gateway::Gateway::with_operator(
        "ops",
        t.app.broker.clone(),
        settings.clone(),
        t.app.metrics.clone(),
        t.app.clone(),
    );
    let running = gateway
        .bind(([127, 0, 0, 1], 0).into())
        .await
        .expect("bind");
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    for route in ["/health", "/metrics", "/openapi.json"] {
        let r = client
            .get(format!("{base}{route}"))
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 401, "{route} without a token");
        for wrong in ["s3cret-tokeX", "s3cret", "s3cret-token-and-more", ""] {
            let r = client
                .get(format!("{base}{route}"))
                .bearer_auth(wrong)
                .send()
                .await
                .expect("get");
            assert_eq!(r.status(), 401, "{route} with {wrong:?}");
        }
        let r = client
            .get(format!("{base}{route}"))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 200, "{route} with the token");
    }
    // /admin: a token of another length is refused like a wrong one; an
    // upload announced past the component limit is refused unread.
    let r = client
        .get(format!("{base}/admin/packages"))
        .bearer_auth("s3")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401);
    let a = exchange(
        &addr_of(&base),
        b"PUT /admin/packages/big HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret-token\r\nContent-Length: 100000000000\r\n\r\n",
    )
    .await
    .expect("answer");
    assert_eq!(a.status, 413, "{a:?}");
    // Actions are not ops routes: they answer without a token.
    let r = client
        .post(format!("{base}/api/greeter/hello"))
        .body(r#"{"name":"x"}"#)
        .send()
        .await
        .expect("call");
    assert_eq!(r.status(), 200);
    running.shutdown(Duration::from_secs(1)).await;

    settings.ops = steedos_wasm::manifest::OpsAccess::Off;
    let gateway = steedos_wasm::gateway::Gateway::new(
        "ops",
        t.app.broker.clone(),
        settings,
        t.app.metrics.clone(),
    );
    let running = gateway
        .bind(([127, 0, 0, 1], 0).into())
        .await
        .expect("bind");
    let base = format!("http://{}", running.addr);
    for route in ["/health", "/metrics", "/openapi.json"] {
        let r = client
            .get(format!("{base}{route}"))
            .bearer_auth("s3cret-token")
            .send()
            .await
            .expect("get");
        assert_eq!(r.status(), 404, "{route} with ops off");
    }
}

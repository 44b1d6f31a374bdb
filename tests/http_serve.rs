//! Packages that serve HTTP (`wasi:http/incoming-handler`), through the
//! gateway's `[gateway.http]` routes, driven by a real HTTP client
//! (reqwest) and raw sockets. The `http-server` package is built as for
//! `wasmtime serve`: it exports only the handler and imports only WASI.

use std::time::Duration;

use serde_json::Value;
use steedos_tests::{TestApp, eventually};
use steedos_wasm::manifest::Manifest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `web` and `other` both run `http-server`, at their own routes; `greeter`
/// serves actions beside them.
const APP: &str = r#"
[gateway]
max_body = "32 MiB"
body_timeout = "1s"
expose = ["greeter.*"]
[gateway.http]
"/web/*" = "web"
"/other/*" = "other"
"/exact" = "other"
[packages.web]
component = "{HTTP-SERVER}"
instances = 1
queue = 8
timeout = "20s"
restart = { backoff = "10ms", max_backoff = "50ms" }
[packages.other]
component = "{HTTP-SERVER}"
instances = 1
[packages.greeter]
component = "{GREETER}"
"#;

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .expect("client")
}

async fn start(toml: &str) -> (TestApp, steedos_wasm::gateway::RunningGateway, String) {
    let t = TestApp::start(toml).await;
    let (gateway, base) = t.gateway().await;
    (t, gateway, base)
}

fn header<'a>(r: &'a reqwest::Response, name: &str) -> &'a str {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_answers_get_and_post_with_its_own_status_headers_and_body() {
    let (t, _gateway, base) = start(APP).await;
    // Built for `wasmtime serve`: nothing of steedos, only WASI, and it loads unchanged.
    let web = t
        .app
        .broker
        .service("web")
        .unwrap_or_else(|| panic!("web runs: {:?}", t.failure("web")));
    assert!(web.package.ty.actions.is_empty());
    assert!(web.package.ty.serves_http());
    assert!(
        web.package
            .ty
            .host_imports
            .iter()
            .all(|i| i.starts_with("wasi:")),
        "{:?}",
        web.package.ty.host_imports
    );

    let r = client()
        .get(format!("{base}/web/hello?x=1&y=%20"))
        .header("x-request-id", "serve-test-1")
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 203);
    assert_eq!(header(&r, "content-type"), "text/plain");
    assert_eq!(header(&r, "x-served-by"), "http-server");
    assert_eq!(header(&r, "x-request-id"), "serve-test-1");
    assert_eq!(header(&r, "x-seen-request-id"), "serve-test-1");
    let text = r.text().await.expect("body");
    assert_eq!(text, "hello from http-server: GET /web/hello?x=1&y=%20");

    // No id from the client: the gateway makes one, and hands it in.
    let r = client()
        .get(format!("{base}/exact"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 404, "http-server's own 404");
    assert!(!header(&r, "x-request-id").is_empty());
    assert_eq!(r.text().await.expect("body"), "http-server has no /exact");
    let r = client()
        .get(format!("{base}/other/hello"))
        .send()
        .await
        .expect("GET");
    let id = header(&r, "x-request-id").to_string();
    assert!(!id.is_empty());
    assert_eq!(header(&r, "x-seen-request-id"), id);

    let body = "a body of my own \u{1F600}".repeat(1000);
    let r = client()
        .post(format!("{base}/web/echo"))
        .body(body.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 201);
    assert_eq!(header(&r, "x-echo"), "yes");
    assert_eq!(r.text().await.expect("body"), body);

    // The actions beside it are served as ever.
    let r = client()
        .post(format!("{base}/api/greeter/hello"))
        .body(r#"{"name":"http"}"#)
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_routes_answer_404_and_the_gateways_own_routes_stay_its_own() {
    let (_t, _gateway, base) = start(APP).await;
    for path in ["/nope", "/webx", "/exact/more", "/"] {
        let r = client()
            .get(format!("{base}{path}"))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 404, "{path}");
        assert!(!header(&r, "x-request-id").is_empty());
        let v: Value = r.json().await.expect("the gateway's JSON error");
        assert_eq!(v["error"]["kind"], "not-found", "{path}: {v}");
    }
    let r = client()
        .get(format!("{base}/health"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().await.expect("health");
    assert!(v.to_string().contains("\"web\""), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_body_streams_under_backpressure_and_bodies_stream_in() {
    let (t, _gateway, base) = start(APP).await;
    const SIZE: usize = 100 * 1024 * 1024;
    let mut r = client()
        .get(format!("{base}/web/big?n={SIZE}"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    let mut got = 0usize;
    while got < 1024 * 1024 {
        got += r.chunk().await.expect("a chunk").expect("more").len();
    }
    // The client stops reading: the guest cannot run ahead of it (the host
    // holds at most a few chunks), so its only instance stays busy and the
    // next request to it waits in the queue.
    let next = {
        let base = base.clone();
        tokio::spawn(async move {
            client()
                .get(format!("{base}/web/hello"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    let web = t.app.broker.service("web").expect("web");
    let queued = eventually(Duration::from_secs(10), || async {
        (web.report().queued == 1).then_some(())
    })
    .await;
    assert!(
        queued.is_some(),
        "the next request waits for the busy instance"
    );
    // Not a wait for a condition but a window it must not leave: a guest
    // whose 100 MiB were buffered whole finishes within ~2 s in a debug build.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !next.is_finished() && web.report().queued == 1,
        "a paused reader holds the guest back: the body is not buffered whole"
    );
    while let Some(chunk) = r.chunk().await.expect("a chunk") {
        assert!(chunk.iter().all(|b| *b == b'x'));
        got += chunk.len();
    }
    assert_eq!(got, SIZE);
    assert_eq!(next.await.expect("task").expect("answered"), 203);

    // In: a body streams to the guest and back.
    let body: Vec<u8> = (0..20 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let r = client()
        .post(format!("{base}/web/echo"))
        .body(body.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(r.status().as_u16(), 201);
    let echoed = r.bytes().await.expect("body");
    assert!(echoed == body, "the echo is the body sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_keep_the_gateways_limits() {
    let (_t, _gateway, base) = start(APP).await;
    // Announced too large: refused before the package runs.
    let addr = base.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = format!(
        "POST /web/echo HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n",
        33 * 1024 * 1024
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), tcp.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains(r#""package":"web""#), "{text}");

    // Chunked and growing past max_body: the guest's read fails at the
    // limit, and it says so at the end of its echo.
    let tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let (mut rx, mut tx) = tcp.into_split();
    let reader = tokio::spawn(async move {
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(30), rx.read_to_end(&mut answer)).await;
        answer
    });
    tx.write_all(b"POST /web/echo HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n")
        .await
        .expect("head");
    let chunk = vec![b'b'; 1024 * 1024];
    for _ in 0..40 {
        let head = format!("{:x}\r\n", chunk.len());
        let wrote = async {
            tx.write_all(head.as_bytes()).await?;
            tx.write_all(&chunk).await?;
            tx.write_all(b"\r\n").await
        };
        match tokio::time::timeout(Duration::from_secs(5), wrote).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    let _ = tx.write_all(b"0\r\n\r\n").await;
    let answer = reader.await.expect("reader");
    let text = String::from_utf8_lossy(&answer);
    assert!(
        text.starts_with("HTTP/1.1 201"),
        "{}",
        &text[..text.len().min(300)]
    );
    // Counted loosely (chunk sizes in hex may hold a `b` too): 40 MiB were sent.
    let echoed = answer.iter().filter(|b| **b == b'b').count();
    assert!(
        echoed <= 32 * 1024 * 1024 + 64 * 1024,
        "no more than max_body reached the guest: {echoed} bytes"
    );
    assert!(text.contains("[read error:"), "the guest's read failed");

    // Too slow: a body that stops arriving fails the guest's read after
    // body_timeout (1 s here), long before the package's 20 s.
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    tcp.write_all(b"POST /web/echo HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\nabc")
        .await
        .expect("head");
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while !String::from_utf8_lossy(&answer).contains("[read error:") {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "the guest's read gave up in time: {text}");
    assert!(text.contains("\r\nabc\r\n"), "{text}");
    assert!(
        text.contains("[read error: connection read timeout"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_answers_500_and_the_route_answers_again_after_restart() {
    let (t, _gateway, base) = start(APP).await;
    let r = client()
        .get(format!("{base}/web/trap"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 500);
    assert!(!header(&r, "x-request-id").is_empty());
    let v: Value = r.json().await.expect("JSON");
    assert_eq!(v["error"]["package"], "web", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or("");
    assert!(message.contains("web"), "{message}");
    // The other route kept answering, and so do actions.
    let r = client()
        .get(format!("{base}/other/hello"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 203);
    // Restarted, the route answers again.
    let back = eventually(Duration::from_secs(20), || async {
        let r = client()
            .get(format!("{base}/web/hello"))
            .send()
            .await
            .ok()?;
        (r.status().as_u16() == 203).then_some(())
    })
    .await;
    assert!(back.is_some(), "web answers again after its restart");
    assert!(t.app.broker.service("web").expect("web").report().restarts >= 1);

    // A trap after the head: the body ends in an error, never as if whole.
    let r = client()
        .get(format!("{base}/web/trap-mid"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    assert!(
        r.bytes().await.is_err(),
        "a cut body is an error to the client"
    );

    // No answer at all: a 500 naming the package.
    let back = eventually(Duration::from_secs(20), || async {
        let r = client()
            .get(format!("{base}/web/no-answer"))
            .send()
            .await
            .ok()?;
        (r.status().as_u16() == 500).then_some(r.json::<Value>().await.ok()?)
    })
    .await
    .expect("a 500 for no answer");
    assert_eq!(back["error"]["package"], "web", "{back}");
    assert!(
        back["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("without setting a response"),
        "{back}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_and_malformed_headers_are_refused_to_the_guest() {
    let (_t, _gateway, base) = start(APP).await;
    let r = client()
        .get(format!("{base}/web/bad-headers"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        header(&r, "x-refused"),
        "connection,host,transfer-encoding,bad name,x-bad-value"
    );
    assert!(r.headers().get("x-fine").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_body_ends_at_the_package_timeout_and_the_host_keeps_serving() {
    let toml = APP.replace("timeout = \"20s\"", "timeout = \"1s\"");
    let (_t, _gateway, base) = start(&toml).await;
    let mut r = client()
        .get(format!("{base}/web/forever"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 200);
    let mut got = 0usize;
    // Cut at the package's 1 s timeout (the client would wait 60 s).
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match r.chunk().await {
                Ok(Some(c)) => got += c.len(),
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        }
    })
    .await
    .expect("the endless body is cut at the timeout");
    assert!(
        got > 0 && ended.is_err(),
        "cut with an error after {got} bytes"
    );
    let r = client()
        .get(format!("{base}/other/hello"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 203);
    let back = eventually(Duration::from_secs(20), || async {
        let r = client()
            .get(format!("{base}/web/hello"))
            .send()
            .await
            .ok()?;
        (r.status().as_u16() == 203).then_some(())
    })
    .await;
    assert!(back.is_some(), "web answers again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_requests_are_counted_in_metrics() {
    let (_t, _gateway, base) = start(APP).await;
    for _ in 0..3 {
        let r = client()
            .get(format!("{base}/web/hello"))
            .send()
            .await
            .expect("GET");
        assert_eq!(r.status().as_u16(), 203);
    }
    let r = client()
        .get(format!("{base}/web/trap"))
        .send()
        .await
        .expect("GET");
    assert_eq!(r.status().as_u16(), 500);
    let text = client()
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("GET")
        .text()
        .await
        .expect("metrics");
    let value = |prefix: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let calls = value(r#"steedos_calls_total{package="web",action="incoming-handler"}"#);
    assert!(calls >= 4.0, "{calls}\n{text}");
    let crashed = value(
        r#"steedos_call_errors_total{package="web",action="incoming-handler",kind="crashed"}"#,
    );
    assert!(crashed >= 1.0, "{crashed}\n{text}");
}

#[test]
fn routes_are_checked_at_their_line() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("steedos.toml");
    let write = |text: &str| std::fs::write(&path, text).expect("write");
    for (text, line, says) in [
        (
            "[gateway.http]\n\"/hooks/*\" = \"nobody\"\n",
            2,
            "no package `nobody`",
        ),
        (
            "[packages.web]\ncomponent = \"w.wasm\"\n[gateway.http]\n\"/api/*\" = \"web\"\n",
            4,
            "the gateway answers it itself",
        ),
        (
            "[packages.web]\ncomponent = \"w.wasm\"\n[gateway.http]\n\"/a/*/b\" = \"web\"\n",
            4,
            "`*` may only end a path",
        ),
        (
            "[packages.web]\ncomponent = \"w.wasm\"\n[gateway.http]\n\"hooks\" = \"web\"\n",
            4,
            "starts with `/`",
        ),
    ] {
        write(text);
        let e = Manifest::load(&path).expect_err(text).to_string();
        assert!(e.contains(&format!(":{line}:")), "{text}: {e}");
        assert!(e.contains(says), "{text}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_to_a_package_that_does_not_serve_http_fails_the_load_at_its_line() {
    let dir = tempfile::tempdir().expect("dir");
    let text = steedos_tests::expand(
        &format!(
            "[app]\ncache_dir = \"{}\"\n[packages.greeter]\ncomponent = \"{{GREETER}}\"\n[gateway.http]\n\"/g/*\" = \"greeter\"\n",
            steedos_tests::shared_cache().display()
        ),
        dir.path(),
    );
    let path = dir.path().join("steedos.toml");
    std::fs::write(&path, &text).expect("write");
    let manifest = Manifest::load(&path).expect("the manifest parses");
    let options = steedos_wasm::app::LoadOptions {
        build: false,
        ..Default::default()
    };
    let e = match steedos_wasm::app::App::load(manifest, &options).await {
        Ok(_) => panic!("a route to greeter cannot load"),
        Err(e) => e.to_string(),
    };
    assert!(e.contains("steedos.toml:6"), "{e}");
    assert!(
        e.contains("does not export `wasi:http/incoming-handler"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_per_request_serves_each_request_on_a_fresh_instance() {
    let toml = format!(
        "{APP}[packages.fresh]\ncomponent = \"{{HTTP-SERVER}}\"\ninstances = 1\n\
         [packages.fresh.http]\ninstance_per_request = true\n"
    )
    .replace(
        "\"/exact\" = \"other\"",
        "\"/exact\" = \"other\"\n\"/fresh/*\" = \"fresh\"",
    );
    let (t, _gateway, base) = start(&toml).await;
    let count = |path: &'static str| {
        let base = base.clone();
        async move {
            let r = client()
                .get(format!("{base}{path}"))
                .send()
                .await
                .expect("GET");
            assert_eq!(r.status().as_u16(), 200);
            r.text().await.expect("body")
        }
    };
    // Pooled: the one instance counts on.
    assert_eq!(count("/web/count").await, "1");
    assert_eq!(count("/web/count").await, "2");
    // Per request: each is its instance's first, and none is a restart.
    for _ in 0..3 {
        assert_eq!(count("/fresh/count").await, "1");
    }
    let fresh = t.app.broker.service("fresh").expect("fresh");
    assert_eq!(fresh.report().restarts, 0);
    assert_eq!(t.state("fresh"), "serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_leaving_before_the_answer_costs_no_instance() {
    let (t, _gateway, base) = start(APP).await;
    let count = |base: String| async move {
        let r = client()
            .get(format!("{base}/web/count"))
            .send()
            .await
            .expect("GET");
        r.text()
            .await
            .expect("body")
            .parse::<u32>()
            .expect("a count")
    };
    let before = count(base.clone()).await;
    // The handler reads a body that stops arriving, so it has not answered
    // when its client goes away.
    let addr = base.trim_start_matches("http://").to_string();
    let mut tcp = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let head = "POST /web/sum HTTP/1.1\r\nhost: x\r\ncontent-length: 100000\r\n\r\n0123456789";
    tcp.write_all(head.as_bytes()).await.expect("head");
    // Its only instance is busy with it once the next request queues. A
    // next request that reached the instance before the POST did is
    // answered; then another is sent.
    let web = t.app.broker.service("web").expect("web");
    let mut served_first = 0;
    let next = loop {
        let next = tokio::spawn(count(base.clone()));
        let queued = eventually(Duration::from_secs(10), || async {
            (web.report().queued == 1 || next.is_finished()).then_some(())
        })
        .await;
        assert!(queued.is_some(), "the handler runs, the next request waits");
        if !next.is_finished() {
            break next;
        }
        next.await.expect("task");
        served_first += 1;
        assert!(served_first < 5, "the POST never took the instance");
    };
    drop(tcp);
    // The handler runs to its end (its read fails) on the same instance:
    // not cancelled mid-run, which would retire and restart it.
    let after = tokio::time::timeout(Duration::from_secs(30), next)
        .await
        .expect("the next request is answered")
        .expect("task");
    assert_eq!(
        after,
        before + 2 + served_first,
        "the same instance served them all"
    );
    assert_eq!(web.report().restarts, 0);
}

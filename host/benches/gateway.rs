//! `just bench`, gateway part: requests/s of `greeter.hello` through the
//! gateway with 50 connections (`gateway.hello.c50`), and, in the same run
//! with the same load generator (wrk), a bare hyper server answering the
//! same JSON without Wasm (`gateway.baseline.c50`). The two alternate over
//! [`ROUNDS`] rounds; the figures are medians, and `gateway.ratio` is the
//! median of each round's ratio, printed with `machine.two_core_speedup`
//! (wrk and the server share the two cores, so the ratio follows it).

mod common;

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use steedos_wasm::app::{App, LoadOptions};
use steedos_wasm::gateway::Gateway;
use steedos_wasm::manifest::Manifest;

// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONNECTIONS: u32 = 50;
const SECONDS: u32 = 4;
const ROUNDS: usize = 5;

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    anyhow::ensure!(
        Command::new("wrk").arg("--version").output().is_ok(),
        "the gateway benchmark needs wrk (apt-get install wrk)"
    );
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let manifest = Manifest::load(&dir)?;
    let app = App::load(manifest, &LoadOptions::default()).await?;
    let gateway = Gateway::new(
        "shop",
        app.broker.clone(),
        app.manifest.gateway.clone(),
        app.metrics.clone(),
    );
    let running = gateway.bind(([127, 0, 0, 1], 0).into()).await?;
    let script = std::env::temp_dir().join(format!("steedos-bench-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = '{\"name\":\"bench\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )?;
    let baseline = baseline_server().await?;
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let hello = wrk(
            &format!("http://{}/api/greeter/hello", running.addr),
            &script,
        )?;
        let bare = wrk(&format!("http://{baseline}/api/greeter/hello"), &script)?;
        ours.push(hello);
        theirs.push(bare);
        ratios.push(hello / bare);
    }
    let _ = std::fs::remove_file(&script);
    let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "bench: machine.two_core_speedup = {:.2} x",
        common::two_core_speedup()
    );
    println!(
        "bench: gateway.hello.c{CONNECTIONS} = {:.1} req/s",
        common::median(&ours)
    );
    println!(
        "bench: gateway.baseline.c{CONNECTIONS} = {:.1} req/s",
        common::median(&theirs)
    );
    println!(
        "bench: gateway.ratio = {:.3} (hello / baseline, median of alternating rounds: {})",
        common::median(&ratios),
        rounds.join(" ")
    );
    running.shutdown(std::time::Duration::from_secs(2)).await;
    app.shutdown().await;
    Ok(())
}

fn wrk(url: &str, script: &Path) -> anyhow::Result<f64> {
    common::wrk(url, script, CONNECTIONS, SECONDS)
}

/// The same HTTP/1 server settings, answering `"Hello, <name>!"` from the
/// JSON body with no broker and no Wasm.
async fn baseline_server() -> anyhow::Result<std::net::SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(hello);
                let mut builder = hyper::server::conn::http1::Builder::new();
                builder.timer(TokioTimer::new()).keep_alive(true);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(addr)
}

async fn hello(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let name = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("name").and_then(|n| n.as_str()).map(str::to_string))
        .unwrap_or_default();
    let reply = serde_json::to_string(&format!("Hello, {name}!")).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(reply)));
    r.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/json"),
    );
    let id: Arc<str> = steedos_wasm::context::next_request_id();
    if let Ok(v) = hyper::header::HeaderValue::from_str(&id) {
        r.headers_mut().insert("x-request-id", v);
    }
    Ok(r)
}

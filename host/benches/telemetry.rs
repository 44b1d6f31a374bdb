//! `just bench`, telemetry part: what tracing every call costs.
//!
//! - `telemetry.on_ratio.call`: `call.host_a_b.c100` (host -> shop.relay
//!   -> inventory.echo, 100 concurrent callers) with traces on, sampled at
//!   100% and exported over OTLP/HTTP, over the same with telemetry off.
//! - `telemetry.on_ratio.gateway`: `gateway.hello.c50` (wrk, 50
//!   connections) the same way.
//!
//! Two copies of examples/shop run side by side, one with `[telemetry]`
//! on, one without; the rounds alternate between them and each figure is
//! the median of the rounds' ratios. Spans go to a local OTLP receiver that
//! reads and discards them (the spans a full queue dropped, and the traces
//! not started while it was full in each part, are printed: a ratio is
//! only at 100% sampling when its part shed none).

mod common;

use std::convert::Infallible;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use steedos_wasm::app::{App, LoadOptions};
use steedos_wasm::broker::Broker;
use steedos_wasm::context::CallContext;
use steedos_wasm::gateway::Gateway;
use steedos_wasm::manifest::Manifest;
use wasmtime::component::Val;

// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MEASURE: Duration = Duration::from_secs(3);
const ROUNDS: usize = 5;
const CALLERS: usize = 100;
const CONNECTIONS: u32 = 50;
const SECONDS: u32 = 4;

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let collector = discarding_collector().await?;
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    // Builds what is out of date and fills the compile cache.
    App::load(Manifest::load(&dir)?, &LoadOptions::default())
        .await?
        .shutdown()
        .await;
    let text = std::fs::read_to_string(dir.join("steedos.toml"))?
        .replace("[defaults]\n", "[defaults]\nqueue = 1024\n");
    let traced = format!(
        "{text}\n[telemetry]\nenabled = true\nendpoint = \"http://{collector}\"\nsampler_ratio = 1.0\n"
    );
    let off = load(&text, &dir).await?;
    let on = load(&traced, &dir).await?;
    anyhow::ensure!(on.broker.telemetry().is_some() && off.broker.telemetry().is_none());

    let payload = Val::String("0123456789abcdef".repeat(4));
    let mut call = Vec::new();
    let mut traced_calls = 0;
    for _ in 0..ROUNDS {
        let (without, _) = rate(&off.broker, &payload).await?;
        let (with, calls) = rate(&on.broker, &payload).await?;
        call.push(with / without);
        traced_calls += calls;
    }
    print_ratio("telemetry.on_ratio.call", &call);
    let shed_in_calls = shed(&on);

    if Command::new("wrk").arg("--version").output().is_err() {
        println!("bench: telemetry.on_ratio.gateway skipped: it needs wrk (apt-get install wrk)");
    } else {
        let gateway = gateway_ratios(&off, &on).await?;
        print_ratio("telemetry.on_ratio.gateway", &gateway);
    }
    let dropped = on.broker.telemetry().map_or(0, |t| t.dropped());
    println!("bench: telemetry.spans_dropped = {dropped} spans (a full export queue)");
    let shed_in_gateway = shed(&on) - shed_in_calls;
    println!(
        "bench: telemetry.traces_shed = {shed_in_calls} of {traced_calls} in the call rounds ({:.1}%), {shed_in_gateway} in the gateway rounds (traces not started: the export queue was full)",
        100.0 * shed_in_calls as f64 / traced_calls.max(1) as f64
    );
    off.shutdown().await;
    on.shutdown().await;
    Ok(())
}

/// Traces `app` has not started so far because its export queue was full.
fn shed(app: &App) -> u64 {
    app.broker.telemetry().map_or(0, |t| t.shed())
}

async fn load(text: &str, dir: &Path) -> anyhow::Result<App> {
    let manifest = Manifest::parse(text, &dir.join("steedos.toml"))?;
    let options = LoadOptions {
        build: false,
        ..LoadOptions::default()
    };
    let app = App::load(manifest, &options).await?;
    if let Some(f) = app.broker.failures().first() {
        anyhow::bail!("package {} failed to load: {}", f.name, f.error);
    }
    Ok(app)
}

fn print_ratio(name: &str, ratios: &[f64]) {
    let rounds: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!(
        "bench: {name} = {:.3} (on / off, median of alternating rounds: {})",
        common::median(ratios),
        rounds.join(" ")
    );
}

/// Calls per second of `shop.relay` from [`CALLERS`] concurrent callers,
/// and how many were made.
async fn rate(broker: &Arc<Broker>, payload: &Val) -> anyhow::Result<(f64, u64)> {
    let end = Instant::now() + MEASURE;
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (broker, params) = (broker.clone(), [payload.clone()]);
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    for _ in 0..64 {
                        let ctx = CallContext::new(Duration::from_secs(5));
                        broker.call("shop.relay", &params, ctx).await?;
                        n += 1;
                    }
                }
                Ok::<_, steedos_wasm::context::CallError>(n)
            })
        })
        .collect();
    let started = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok((total as f64 / started.elapsed().as_secs_f64(), total))
}

/// Each round's `gateway.hello.c50` with telemetry on over off.
async fn gateway_ratios(off: &App, on: &App) -> anyhow::Result<Vec<f64>> {
    let serve = |app: &App| {
        Gateway::new(
            "shop",
            app.broker.clone(),
            app.manifest.gateway.clone(),
            app.metrics.clone(),
        )
    };
    let plain = serve(off).bind(([127, 0, 0, 1], 0).into()).await?;
    let traced = serve(on).bind(([127, 0, 0, 1], 0).into()).await?;
    let script = std::env::temp_dir().join(format!("steedos-bench-tel-{}.lua", std::process::id()));
    std::fs::write(
        &script,
        "wrk.method = \"POST\"\nwrk.body = '{\"name\":\"bench\"}'\nwrk.headers[\"Content-Type\"] = \"application/json\"\n",
    )?;
    let mut ratios = Vec::new();
    for _ in 0..ROUNDS {
        let without = wrk(&format!("http://{}/api/greeter/hello", plain.addr), &script)?;
        let with = wrk(
            &format!("http://{}/api/greeter/hello", traced.addr),
            &script,
        )?;
        ratios.push(with / without);
    }
    let _ = std::fs::remove_file(&script);
    plain.shutdown(Duration::from_secs(2)).await;
    traced.shutdown(Duration::from_secs(2)).await;
    Ok(ratios)
}

fn wrk(url: &str, script: &Path) -> anyhow::Result<f64> {
    common::wrk(url, script, CONNECTIONS, SECONDS)
}

/// An OTLP/HTTP receiver on 127.0.0.1 that reads every export whole and
/// answers success (an empty `ExportTraceServiceResponse`). It runs on a
/// thread and runtime of its own, as a collector is a process of its own:
/// inside the host's runtime its answers waited for the turn of a task
/// among the callers, and the export queue filled while they did.
async fn discarding_collector() -> anyhow::Result<std::net::SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("collector".into())
        .spawn(move || {
            runtime.block_on(async move {
                let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                    return;
                };
                while let Ok((stream, _)) = listener.accept().await {
                    tokio::spawn(async move {
                        let service = hyper::service::service_fn(discard);
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .await;
                    });
                }
            })
        })?;
    Ok(addr)
}

async fn discard(req: Request<hyper::body::Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let _ = req.into_body().collect().await;
    let mut response = Response::new(Full::new(Bytes::new()));
    response.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(response)
}

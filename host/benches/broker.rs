//! `just bench`: the broker's figures, one per line as
//! `bench: <name> = <value> <unit>`.
//!
//! - `call.host_a_b.c1` / `.c100`: calls per second of host -> shop.relay ->
//!   inventory.echo (a typed import) with a 64-character string payload, from 1 and 100
//!   concurrent callers. `call.host_a_b.dynamic.c100`: the same shape with
//!   shop calling inventory by name (`broker.call`, MessagePack).
//! - `restart.p50` / `.p99`: microseconds from a trap to the replacement
//!   instance serving.
//! - `start.cached`: milliseconds to start examples/shop with the compile
//!   cache warm.
//!
//! - `machine.two_core_speedup`: how much two threads of CPU-bound work
//!   (hashing) get done together over one alone. The machine here has two
//!   virtual cores that are at times two hyperthreads of one physical core
//!   (about 1.1) and at times two cores (about 2): the multi-caller figures
//!   follow it, so it is printed beside them.
//!
//! Uses examples/shop, built from source on the first run.
//!
//! Knobs: `BENCH_CALLERS=1,2,100` measures only `shop.relay` at those
//! concurrencies; `BENCH_RUNTIME=current` runs on a current-thread runtime;
//! `BENCH_INSTANCES=n` overrides the example's instances.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use steedos_wasm::app::{App, LoadOptions};
use steedos_wasm::broker::Broker;
use steedos_wasm::context::{CallContext, ErrorKind};
use steedos_wasm::manifest::Manifest;
use wasmtime::component::Val;

// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MEASURE: Duration = Duration::from_secs(3);

fn main() -> anyhow::Result<()> {
    let rt = match std::env::var("BENCH_RUNTIME").as_deref() {
        Ok("current") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        _ => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
    };
    rt.block_on(run())
}

fn figure(name: &str, value: f64, unit: &str) {
    println!("bench: {name} = {value:.1} {unit}");
}

async fn run() -> anyhow::Result<()> {
    figure("machine.two_core_speedup", common::two_core_speedup(), "x");
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let manifest = Manifest::load(&dir)?;
    // First load builds what is out of date and fills the cache.
    let app = App::load(manifest, &LoadOptions::default()).await?;
    if let Some(f) = app.broker.failures().first() {
        anyhow::bail!("package {} failed to load: {}", f.name, f.error);
    }
    app.shutdown().await;
    drop(app);

    let mut starts = Vec::new();
    for _ in 0..10 {
        let manifest = Manifest::load(&dir)?;
        let t = Instant::now();
        let app = App::load(manifest, &LoadOptions::default()).await?;
        starts.push(t.elapsed());
        app.shutdown().await;
    }
    starts.sort();
    figure(
        "start.cached",
        starts[starts.len() / 2].as_secs_f64() * 1e3,
        "ms",
    );

    // 100 concurrent callers need a wait queue of 100 (the example's default
    // bulkhead of 64 would refuse the rest at once, as it should). The
    // restart figures need every crash restarted at once: a budget that
    // covers all of them (the example's small one would back off for hours).
    let text = std::fs::read_to_string(dir.join("steedos.toml"))?
        .replace("[defaults]\n", "[defaults]\nqueue = 1024\n")
        .replace(
            "[packages.chaos]\n",
            "[packages.chaos]\nrestart = { max = 10000, within = \"10s\" }\n",
        );
    let text = match std::env::var("BENCH_INSTANCES") {
        Ok(n) => text.replace("instances = 2", &format!("instances = {n}")),
        Err(_) => text,
    };
    let manifest = Manifest::parse(&text, &dir.join("steedos.toml"))?;
    let app = App::load(
        manifest,
        &LoadOptions {
            build: false,
            ..LoadOptions::default()
        },
    )
    .await?;
    let broker = app.broker.clone();
    let payload = Val::String("0123456789abcdef".repeat(4));
    if let Ok(list) = std::env::var("BENCH_CALLERS") {
        for c in list.split(',').filter_map(|c| c.parse().ok()) {
            figure(
                &format!("probe.c{c}"),
                rate(&broker, "shop.relay", &payload, c).await?,
                "calls/s",
            );
        }
        return Ok(());
    }
    for (name, action) in [
        ("call.host_a_b", "shop.relay"),
        ("call.host_a_b.dynamic", "shop.relay-dynamic"),
    ] {
        check(&broker, action, &payload).await?;
        if action == "shop.relay" {
            figure(
                &format!("{name}.c1"),
                rate(&broker, action, &payload, 1).await?,
                "calls/s",
            );
        }
        figure(
            &format!("{name}.c100"),
            rate(&broker, action, &payload, 100).await?,
            "calls/s",
        );
    }

    let chaos = broker
        .service("chaos")
        .ok_or_else(|| anyhow::anyhow!("no chaos package"))?;
    let before = chaos.restart_latencies().len();
    let crashes = 2000;
    let mut done = 0;
    while done < crashes {
        let r = broker
            .call("chaos.trap", &[], CallContext::new(Duration::from_secs(5)))
            .await;
        match r {
            Err(e) if e.kind() == ErrorKind::Crashed => done += 1,
            // Over budget: wait out the backoff.
            Err(e) if e.kind() == ErrorKind::Overloaded => {
                tokio::time::sleep(Duration::from_millis(20)).await
            }
            other => anyhow::bail!("chaos.trap: {other:?}"),
        }
    }
    let mut lat: Vec<Duration> = chaos.restart_latencies().split_off(before);
    lat.sort();
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    figure("restart.p50", p(0.5), "us");
    figure("restart.p99", p(0.99), "us");
    app.shutdown().await;
    Ok(())
}

async fn check(broker: &Arc<Broker>, action: &str, payload: &Val) -> anyhow::Result<()> {
    let r = broker
        .call(
            action,
            std::slice::from_ref(payload),
            CallContext::new(Duration::from_secs(5)),
        )
        .await?;
    anyhow::ensure!(
        r.as_ref() == Some(payload),
        "{action} did not echo its payload: {r:?}"
    );
    Ok(())
}

async fn rate(
    broker: &Arc<Broker>,
    action: &str,
    payload: &Val,
    callers: usize,
) -> anyhow::Result<f64> {
    let end = Instant::now() + MEASURE;
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (broker, payload, action) = (broker.clone(), payload.clone(), action.to_string());
            tokio::spawn(async move {
                let mut n = 0u64;
                let params = [payload];
                while Instant::now() < end {
                    for _ in 0..64 {
                        let ctx = CallContext::new(Duration::from_secs(5));
                        match broker.call(&action, &params, ctx).await {
                            Ok(_) => n += 1,
                            Err(e) => return Err(e),
                        }
                    }
                }
                Ok(n)
            })
        })
        .collect();
    let started = Instant::now();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

//! `just bench`, resilience part, in one run on examples/shop:
//! - `isolation.healthy_ratio`: calls/s of a healthy action (host -> shop.relay
//!   -> inventory.echo, 100 callers) while chaos crashes on every call of 2
//!   more callers, divided by the same without the storm; chaos keeps the
//!   example's restart budget, so the crash loop is throttled as it would
//!   be in production;
//! - `isolation.healthy_ratio.unbudgeted`: the same against a copy of chaos
//!   whose budget never backs off (every call is a trap and a restart);
//! - `restart.p50.loaded`, `restart.p99.loaded`: µs from a trap to the
//!   replacement serving, measured during that second storm;
//! - `isolation.healthy_ratio.emit_storm`: the healthy rate while 2 callers
//!   have chaos emit 1 MiB events (`chaos.flood`) to `audit` as fast as the
//!   host takes them, over the rate without the storm;
//! - `call.host_a_b.c100`: the healthy figure without a storm.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use steedos_wasm::app::{App, LoadOptions};
use steedos_wasm::broker::Broker;
use steedos_wasm::context::CallContext;
use steedos_wasm::manifest::Manifest;
use wasmtime::component::Val;

// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MEASURE: Duration = Duration::from_secs(3);

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let mut manifest = Manifest::load(&dir)?;
    for p in &mut manifest.packages {
        // 100 callers need a wait queue of 100.
        p.queue = 1024;
    }
    let mut unbudgeted = manifest
        .packages
        .iter()
        .find(|p| p.name == "chaos")
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("examples/shop has no chaos"))?;
    unbudgeted.name = "chaos-unbudgeted".into();
    unbudgeted.restart.max_restarts = 10_000;
    unbudgeted.restart.within = Duration::from_millis(1);
    manifest.packages.push(unbudgeted);
    // The storm's emitter: chaos may emit what audit hears.
    for p in manifest.packages.iter_mut().filter(|p| p.name == "chaos") {
        p.grants.emits = vec!["order.*".into()];
        p.timeout = Duration::from_secs(30);
    }
    let app = App::load(manifest, &LoadOptions::default()).await?;
    if let Some(f) = app.broker.failures().first() {
        anyhow::bail!("package {} failed to load: {}", f.name, f.error);
    }
    let broker = app.broker.clone();
    let payload = Val::String("0123456789abcdef".repeat(4));
    let calm = rate(&broker, &payload).await?;

    let (budgeted, _) = storm(&broker, &payload, "chaos").await?;
    let (unbudgeted, mut lat) = storm(&broker, &payload, "chaos-unbudgeted").await?;
    let (flooded, events) = emit_storm(&broker, &payload).await?;
    lat.sort();
    anyhow::ensure!(!lat.is_empty(), "the storm made no restart");
    let p = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize].as_secs_f64() * 1e6;
    println!("bench: call.host_a_b.c100 = {calm:.1} calls/s");
    println!(
        "bench: isolation.healthy_ratio = {:.3} ({budgeted:.1} calls/s during the storm)",
        budgeted / calm
    );
    println!(
        "bench: isolation.healthy_ratio.unbudgeted = {:.3} ({unbudgeted:.1} calls/s)",
        unbudgeted / calm
    );
    println!(
        "bench: isolation.healthy_ratio.emit_storm = {:.3} ({flooded:.1} calls/s; {events:.0} events/s of 1 MiB delivered meanwhile)",
        flooded / calm
    );
    println!(
        "bench: restart.p50.loaded = {:.1} us ({} restarts sampled)",
        p(0.5),
        lat.len()
    );
    println!("bench: restart.p99.loaded = {:.1} us", p(0.99));
    app.shutdown().await;
    Ok(())
}

/// The healthy rate while 2 callers crash `faulty` on every call, and the
/// restart latencies seen meanwhile.
async fn storm(
    broker: &Arc<Broker>,
    payload: &Val,
    faulty: &str,
) -> anyhow::Result<(f64, Vec<Duration>)> {
    let stop = Arc::new(AtomicBool::new(false));
    let service = broker
        .service(faulty)
        .ok_or_else(|| anyhow::anyhow!("no {faulty}"))?;
    let before = service.restart_latencies().len();
    let action = format!("{faulty}.trap");
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (broker, stop, action) = (broker.clone(), stop.clone(), action.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = broker
                        .call(&action, &[], CallContext::new(Duration::from_secs(5)))
                        .await;
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let healthy = rate(broker, payload).await?;
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        let _ = c.await;
    }
    let mut lat = service.restart_latencies();
    Ok((healthy, lat.split_off(before.min(lat.len()))))
}

/// The healthy rate while 2 callers have chaos emit 1 MiB events to audit
/// as fast as they are taken, and the events/s that went out meanwhile.
async fn emit_storm(broker: &Arc<Broker>, payload: &Val) -> anyhow::Result<(f64, f64)> {
    let stop = Arc::new(AtomicBool::new(false));
    let emitted = Arc::new(AtomicU64::new(0));
    let audit = broker
        .service("audit")
        .ok_or_else(|| anyhow::anyhow!("no audit"))?;
    const BATCH: u32 = 16;
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let (broker, stop, emitted) = (broker.clone(), stop.clone(), emitted.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let params = [Val::U32(BATCH), Val::U32(1 << 20)];
                    let ctx = CallContext::new(Duration::from_secs(30));
                    if broker.call("chaos.flood", &params, ctx).await.is_ok() {
                        emitted.fetch_add(u64::from(BATCH), Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = emitted.load(Ordering::Relaxed);
    let started = Instant::now();
    let healthy = rate(broker, payload).await?;
    let events =
        (emitted.load(Ordering::Relaxed) - before) as f64 / started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        let _ = c.await;
    }
    let stats = audit.event_stats();
    anyhow::ensure!(
        stats.peak_bytes <= steedos_wasm::broker::EVENT_QUEUE_BYTES && stats.expired == 0,
        "audit's queue went past its bound or dropped events: {stats:?}"
    );
    Ok((healthy, events))
}

async fn rate(broker: &Arc<Broker>, payload: &Val) -> anyhow::Result<f64> {
    let end = Instant::now() + MEASURE;
    let started = Instant::now();
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (broker, params) = (broker.clone(), [payload.clone()]);
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    for _ in 0..16 {
                        broker
                            .call(
                                "shop.relay",
                                &params,
                                CallContext::new(Duration::from_secs(5)),
                            )
                            .await?;
                        n += 1;
                    }
                }
                Ok::<_, steedos_wasm::context::CallError>(n)
            })
        })
        .collect();
    let mut total = 0;
    for t in tasks {
        total += t.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

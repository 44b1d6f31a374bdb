//! `just bench`, cluster part, over a nats-server it starts on 127.0.0.1:
//! two steedos-wasm nodes in this process, a caller (no packages) and
//! examples/shop, joined over NATS with the JSON serializer.
//!
//! - `cluster.call.c1`, `cluster.call.c100`: calls/s of `greeter.hello`
//!   from the caller to the shop node, 1 and 100 concurrent callers;
//! - `cluster.event`: events/s emitted by the caller and handled by the
//!   shop node's subscriber (`audit`, `order.*`, its queue sized for the
//!   flood), the emitter kept at most 6 000 events ahead (within the receiver's
//!   event budget of 8 192; past it events are dropped, counted and printed
//!   as `cluster.event.dropped`, and the figure is of those delivered);
//! - `cluster.raw.c1`, `cluster.raw.c100`: plain async-nats request/reply
//!   between two connections, no protocol on top, same run: the limit;
//! - `cluster.redis.call.c1`, `.call.c100`, `.event`: the same shapes
//!   with both nodes joined over a redis-server it starts (skipped, and
//!   said so, without /usr/bin/redis-server).
//!
//! The two c100 shapes are measured in alternating rounds (raw, call, raw,
//! call, ...) and each is printed as the median of its rounds, with the
//! rounds beside it: from one round to the next this machine's throughput
//! drifts by 10-15%, and a single window of each, taken seconds apart,
//! read the drift as often as the difference.
//!
//! Then, when Node.js and bench/moleculer's node_modules are there, the
//! same shapes between two Moleculer 0.15 processes over the same
//! nats-server (`bench/moleculer/cluster.js`): `peer.moleculer.cluster.*`,
//! its c100 also the median of `BENCH_ROUNDS` rounds; and over the same
//! redis-server, `peer.moleculer.cluster.redis.*` (ioredis).
//!
//! Last, the issue's targets as ratios of figures of the same run:
//! `cluster.ratio.call.c1_over_peer` (target 1), `.call.c100_over_peer`
//! (1.5), `.call.c100_over_raw` (0.7), `.event_over_peer` (2), and
//! `cluster.redis.ratio.*` for the Redis shapes against Moleculer's.
//!
//! Knobs, for profiling one shape: `BENCH_SHAPES=call.c100,event` measures
//! only those of `raw`, `call.c1`, `call.c100`, `event`, `peer`;
//! `BENCH_SECONDS` (default 3) sets each call measurement's length;
//! `BENCH_ROUNDS` (default 3) the number of c100 rounds.

mod common;

use common::Killed;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use steedos_wasm::app::{App, LoadOptions};
use steedos_wasm::context::CallContext;
use steedos_wasm::manifest::{ClusterSettings, Manifest};
use steedos_wasm::transport::Transport;

// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MEASURE: Duration = Duration::from_secs(3);
/// Alternating rounds of the c100 shapes.
const ROUNDS: usize = 3;
const EVENTS: u64 = 300_000;
/// Events the emitter may be ahead of the receiver (past the receiver's
/// budget, some are dropped and counted).
const EVENT_WINDOW: u64 = 6_000;

/// The figures printed so far, by name, for the ratios at the end.
#[derive(Default)]
struct Figures(std::collections::HashMap<String, f64>);

impl Figures {
    fn print(&mut self, name: &str, value: f64, unit: &str) {
        println!("bench: {name} = {value:.1} {unit}");
        self.0.insert(name.to_string(), value);
    }

    /// The median of `rounds`, with the rounds themselves.
    fn print_median(&mut self, name: &str, mut rounds: Vec<f64>, unit: &str) {
        let text: Vec<String> = rounds.iter().map(|r| format!("{r:.0}")).collect();
        rounds.sort_by(f64::total_cmp);
        let Some(&median) = rounds.get(rounds.len() / 2) else {
            return;
        };
        println!(
            "bench: {name} = {median:.1} {unit} (median of {} rounds: {})",
            rounds.len(),
            text.join(", ")
        );
        self.0.insert(name.to_string(), median);
    }

    /// Reads `bench: <name> = <value> ...` lines another program printed.
    fn read(&mut self, output: &str) {
        for line in output.lines() {
            let parsed = line
                .strip_prefix("bench: ")
                .and_then(|l| l.split_once(" = "))
                .and_then(|(name, rest)| {
                    let value = rest.split_whitespace().next()?.parse().ok()?;
                    Some((name.to_string(), value))
                });
            if let Some((name, value)) = parsed {
                self.0.insert(name, value);
            }
        }
    }

    /// `name = a / b` with the issue's target, when both were measured.
    fn ratio(&self, name: &str, a: &str, b: &str, target: f64) {
        if let (Some(a), Some(b)) = (self.0.get(a), self.0.get(b)) {
            let r = a / b;
            let verdict = if r >= target { "met" } else { "not met" };
            println!("bench: {name} = {r:.2} (target {target}: {verdict})");
        }
    }
}

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let nats_bin = [
        "/usr/sbin/nats-server",
        "/usr/bin/nats-server",
        "/usr/local/bin/nats-server",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
    .ok_or_else(|| {
        anyhow::anyhow!("the cluster benchmark needs nats-server (apt-get install nats-server)")
    })?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _nats = Killed(
        Command::new(nats_bin)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let url = format!("nats://127.0.0.1:{port}");
    common::wait_for_port(port, "nats-server").await?;

    let shapes = std::env::var("BENCH_SHAPES").ok();
    let measure = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(MEASURE, Duration::from_secs_f64);
    let rounds = std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS)
        .max(1);
    let opts = Opts {
        shapes,
        measure,
        rounds,
    };
    let wanted = |shape: &str| opts.wanted(shape);
    let mut figures = Figures::default();
    let raw = if wanted("raw") {
        Some(Raw::start(&url).await?)
    } else {
        None
    };
    let raw_call = raw.as_ref().map(|raw| {
        let client = raw.client.clone();
        move || Raw::request(client.clone())
    });
    if let Some(call) = &raw_call {
        rate(1, Duration::from_millis(300), call.clone()).await?; // warm up
        let r = rate(1, measure, call.clone()).await?;
        figures.print("cluster.raw.c1", r, "requests/s");
    }

    over(&url, "cluster", &opts, raw_call.as_ref(), &mut figures).await?;
    drop(raw);
    // The same shapes over a redis-server, when there is one.
    let redis = match redis_server().await {
        Ok(redis) => Some(redis),
        Err(e) => {
            println!("bench: cluster.redis skipped ({e})");
            None
        }
    };
    if let Some((_, redis_url)) = &redis {
        over(
            redis_url,
            "cluster.redis",
            &opts,
            None::<&fn() -> std::future::Ready<anyhow::Result<()>>>,
            &mut figures,
        )
        .await?;
    }

    if wanted("peer") {
        moleculer_peer(&url, &mut figures);
        if let Some((_, redis_url)) = &redis {
            moleculer_peer(redis_url, &mut figures);
        }
    }
    redis_ratios(&figures);
    let peer = "peer.moleculer.cluster";
    figures.ratio(
        "cluster.ratio.call.c1_over_peer",
        "cluster.call.c1",
        &format!("{peer}.call.c1"),
        1.0,
    );
    figures.ratio(
        "cluster.ratio.call.c100_over_peer",
        "cluster.call.c100",
        &format!("{peer}.call.c100"),
        1.5,
    );
    figures.ratio(
        "cluster.ratio.call.c100_over_raw",
        "cluster.call.c100",
        "cluster.raw.c100",
        0.7,
    );
    figures.ratio(
        "cluster.ratio.event_over_peer",
        "cluster.event",
        &format!("{peer}.event"),
        2.0,
    );
    Ok(())
}

/// What to measure and how long.
struct Opts {
    shapes: Option<String>,
    measure: Duration,
    rounds: usize,
}

impl Opts {
    fn wanted(&self, shape: &str) -> bool {
        self.shapes
            .as_deref()
            .is_none_or(|s| s.split(',').any(|w| w.trim() == shape))
    }
}

/// The shop and a caller joined over `url`: `<name>.call.c1`,
/// `<name>.call.c100` (rounds alternating with `raw_call`'s) and `<name>.event`.
async fn over<R, RFut>(
    url: &str,
    name: &str,
    opts: &Opts,
    raw_call: Option<&R>,
    figures: &mut Figures,
) -> anyhow::Result<()>
where
    R: Fn() -> RFut + Clone + Send + Sync + 'static,
    RFut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let shop_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let mut manifest = Manifest::load(&shop_dir)?;
    // Size the bulkheads for the load: 100 callers of greeter, and the event
    // flood to audit (a full queue slows the sender down: it waits for room).
    for p in manifest.packages.iter_mut() {
        match p.name.as_str() {
            "greeter" => p.queue = 256,
            "audit" => p.queue = 2 * EVENT_WINDOW as usize,
            _ => {}
        }
    }
    let shop = App::load(manifest, &LoadOptions::default()).await?;
    let caller_dir = tempfile::tempdir()?;
    std::fs::write(
        caller_dir.path().join("steedos.toml"),
        "[app]\nname = \"caller\"\n",
    )?;
    let caller = App::load(Manifest::load(caller_dir.path())?, &LoadOptions::default()).await?;
    let settings = |id: &str| ClusterSettings {
        node_id: Some(id.into()),
        ..ClusterSettings::new(url.to_owned())
    };
    let shop_node = Transport::start(shop.broker.clone(), settings("bench-shop")).await?;
    let caller_node = Transport::start(caller.broker.clone(), settings("bench-caller")).await?;
    anyhow::ensure!(
        caller_node
            .wait_for_action("greeter.hello", Duration::from_secs(10))
            .await,
        "greeter.hello not discovered"
    );

    let broker = caller.broker.clone();
    let call = move || {
        let broker = broker.clone();
        async move {
            let v = broker
                .call_json(
                    "greeter.hello",
                    br#"{"name":"bench"}"#,
                    CallContext::new(Duration::from_secs(10)),
                )
                .await;
            v.map(|_| ()).map_err(|e| anyhow::anyhow!("{e}"))
        }
    };
    rate(1, Duration::from_millis(500), call.clone()).await?; // warm up
    if opts.wanted("call.c1") {
        let r = rate(1, opts.measure, call.clone()).await?;
        figures.print(&format!("{name}.call.c1"), r, "calls/s");
    }
    // 100 callers, raw and ours in alternating rounds.
    let (mut raw_rounds, mut call_rounds) = (Vec::new(), Vec::new());
    for _ in 0..opts.rounds {
        if let Some(call) = raw_call {
            raw_rounds.push(rate(100, opts.measure, call.clone()).await?);
        }
        if opts.wanted("call.c100") {
            call_rounds.push(rate(100, opts.measure, call.clone()).await?);
        }
    }
    if raw_call.is_some() {
        figures.print_median("cluster.raw.c100", raw_rounds, "requests/s");
    }
    figures.print_median(&format!("{name}.call.c100"), call_rounds, "calls/s");

    if opts.wanted("event") {
        let events = events(&caller, &shop, &shop_node).await?;
        figures.print(&format!("{name}.event"), events, "events/s");
    }

    caller_node.stop(Duration::from_secs(2)).await;
    shop_node.stop(Duration::from_secs(2)).await;
    caller.shutdown().await;
    shop.shutdown().await;

    Ok(())
}

/// A redis-server on a free port of 127.0.0.1 and its URL.
async fn redis_server() -> anyhow::Result<(Killed, String)> {
    let bin = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .ok_or_else(|| anyhow::anyhow!("no redis-server (apt-get install redis-server)"))?;
    let (child, port) = common::redis_server(&bin).await?;
    Ok((child, format!("redis://127.0.0.1:{port}")))
}

/// The issue's targets over Redis, against Moleculer over the same server.
fn redis_ratios(figures: &Figures) {
    let peer = "peer.moleculer.cluster.redis";
    for (shape, target) in [("call.c1", 1.0), ("call.c100", 1.5), ("event", 2.0)] {
        figures.ratio(
            &format!("cluster.redis.ratio.{shape}_over_peer"),
            &format!("cluster.redis.{shape}"),
            &format!("{peer}.{shape}"),
            target,
        );
    }
}

/// Calls/s of `call` from `callers` concurrent loops over `measure`.
async fn rate<F, Fut>(callers: usize, measure: Duration, call: F) -> anyhow::Result<f64>
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let loops: Vec<_> = (0..callers)
        .map(|_| {
            let (call, count) = (call.clone(), count.clone());
            tokio::spawn(async move {
                while start.elapsed() < measure {
                    call().await?;
                    count.fetch_add(1, Ordering::Relaxed);
                }
                anyhow::Ok(())
            })
        })
        .collect();
    for l in loops {
        l.await??;
    }
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// Events/s from the caller to the shop node's `audit`, end to end: the
/// clock stops when the shop node has received every event and none waits
/// for an `audit` instance any more.
async fn events(caller: &App, shop: &App, shop_node: &Transport) -> anyhow::Result<f64> {
    // MessagePack {"order-id": 1}
    let payload = vec![
        0x81, 0xa8, b'o', b'r', b'd', b'e', b'r', b'-', b'i', b'd', 0x01,
    ];
    let audit = shop
        .broker
        .service("audit")
        .ok_or_else(|| anyhow::anyhow!("no audit"))?;
    let base = shop_node.stats();
    let dropped = || shop_node.stats().packets_dropped - base.packets_dropped;
    // Events sent but neither handled nor counted dropped: in flight to the
    // shop node, or waiting in audit's event queue or for an instance.
    let behind = |sent: u64| {
        let received = shop_node.stats().events_received - base.events_received;
        let report = audit.report();
        (sent + report.queued as u64 + report.events.queued as u64)
            .saturating_sub(received + dropped())
    };
    let start = Instant::now();
    for sent in 1..=EVENTS {
        let ctx = CallContext::new(Duration::from_secs(10));
        caller
            .broker
            .publish("order.bench", payload.clone(), false, ctx);
        if sent % 1000 == 0 {
            while behind(sent) > EVENT_WINDOW {
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        }
    }
    while behind(EVENTS) > 0 {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "events neither arrived nor were counted dropped: {} behind",
            behind(EVENTS)
        );
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
    // The receiver holds a bounded budget of events; a sender that outruns
    // it loses events (counted), as Moleculer over NATS does: the figure is
    // of those delivered.
    let lost = dropped();
    println!("bench: cluster.event.dropped = {lost} of {EVENTS}");
    Ok((EVENTS - lost) as f64 / start.elapsed().as_secs_f64())
}

/// Plain async-nats request/reply between two connections: a responder
/// that echoes, and a client.
struct Raw {
    client: async_nats::Client,
    echo: tokio::task::JoinHandle<()>,
}

impl Raw {
    async fn start(url: &str) -> anyhow::Result<Self> {
        let server = async_nats::connect(url).await?;
        let client = async_nats::connect(url).await?;
        let mut sub = server.subscribe("bench.echo").await?;
        let responder = server.clone();
        let echo = tokio::spawn(async move {
            while let Some(m) = sub.next().await {
                if let Some(reply) = m.reply {
                    let _ = responder.publish(reply, m.payload).await;
                }
            }
        });
        server.flush().await?;
        // Until the server routes to the new subscription, requests find no responder.
        let ready = Instant::now();
        while client
            .request("bench.echo", bytes::Bytes::new())
            .await
            .is_err()
        {
            anyhow::ensure!(
                ready.elapsed() < Duration::from_secs(10),
                "the echo responder never answered"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Raw { client, echo })
    }

    /// One request.
    async fn request(client: async_nats::Client) -> anyhow::Result<()> {
        client
            .request(
                "bench.echo",
                bytes::Bytes::from_static(br#"{"name":"bench"}"#),
            )
            .await?;
        Ok(())
    }
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.echo.abort();
    }
}

/// The Moleculer figures for the same shapes over the same nats-server.
fn moleculer_peer(url: &str, figures: &mut Figures) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench/moleculer");
    if !dir.join("node_modules/nats").exists() {
        println!("bench: peer.moleculer.cluster skipped (cd bench/moleculer && npm install)");
        return;
    }
    match Command::new("node")
        .arg("cluster.js")
        .arg(url)
        .current_dir(&dir)
        .stderr(Stdio::inherit())
        .output()
    {
        Ok(out) => {
            let text = String::from_utf8_lossy(&out.stdout);
            print!("{text}");
            figures.read(&text);
            if !out.status.success() {
                println!("bench: peer.moleculer.cluster failed ({})", out.status);
            }
        }
        Err(e) => println!("bench: peer.moleculer.cluster skipped (node: {e})"),
    }
}

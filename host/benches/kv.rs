//! `just bench`, key-value part: state for packages and the action cache,
//! one figure a line as `bench: <name> = <value> <unit>`.
//!
//! - `kv.get.c100`, `kv.set.c100`: operations per second from a package
//!   through the host's `wasi:keyvalue` functions to the embedded redb
//!   backend (a 16-byte value, keys spread over 1,000), 100 concurrent
//!   callers: a set is one `kv-probe.set` call, the gets are made 16 to a
//!   `kv-probe.get-each` call (one `get` each), so that the figure is the
//!   host's `get` and not the guest call around it;
//! - `kv.get.call.c100`: one `kv-probe.get` call per get, for reference
//!   (bound by the call, which `call.host_a_b` measures);
//! - `kv.direct.get.c100`, `kv.direct.set.c100`: the same operations on a
//!   redb file of the same shape, straight from Rust, in the same run and
//!   the same shape the host uses: 100 tasks, a get read in place, a set
//!   one transaction on tokio's blocking pool committed with redb's
//!   immediate durability;
//! - `kv.redis.get.c100`: `kv-probe.get` on a bucket kept on a
//!   redis-server this bench starts, beside `kv.redis.direct.get.c100`,
//!   what `redis-benchmark -t get -c 100` measures on the same server
//!   (both skipped, and said so, without redis-server or redis-benchmark);
//! - `cache.hit.c100`: calls per second of an action answered from the
//!   action cache (`greeter.hello` with `cache = { keys = ["name"] }`,
//!   every call after the first a hit), beside `cache.uncached.c100`, the
//!   same action of the same component without `cache`, called the same way.
//!
//! Each pair is measured in alternating rounds (direct, host, direct,
//! host, ...) and printed as the median of its rounds with the rounds
//! beside it, since this machine's throughput drifts from one window to
//! the next. Last, the issue's targets as ratios of the same run, each the
//! median of its pair's per-round ratios (printed beside it):
//! `kv.get.ratio` (host over direct, target 0.5), `kv.set.ratio` (0.7),
//! `kv.redis.get.ratio` (0.5), `cache.hit.ratio` (cached over uncached, 2).
//!
//! Knobs: `BENCH_SECONDS` (default 3) each window's length,
//! `BENCH_ROUNDS` (default 5) the rounds of each pair, `BENCH_SHAPES`
//! (a comma list of `get`, `set`, `cache`, `redis`) the pairs measured,
//! e.g. `BENCH_SHAPES=cache perf record ...` to profile one.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redb::{Database, ReadableDatabase, TableDefinition};
use steedos_tests::TestApp;
use steedos_wasm::broker::Broker;
use steedos_wasm::context::CallContext;

// The binary's allocator, so the figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const CALLERS: usize = 100;
/// Keys the operations spread over.
const KEYS: u64 = 1000;
const VALUE: &str = "0123456789abcdef";
/// The gets of one `kv-probe.get-each` call, so that `kv.get.c100`
/// measures the host's `get` rather than the guest call around it (which
/// `kv.get.call.c100` and the broker bench measure).
const GETS_PER_CALL: u64 = 16;
/// `kv-probe`'s instances on the Redis bucket.
const REDIS_INSTANCES: usize = 32;
/// Alternating rounds of each pair (`BENCH_ROUNDS`).
const ROUNDS: u64 = 5;
const PAIRS: TableDefinition<&str, &[u8]> = TableDefinition::new("pairs");

fn main() -> anyhow::Result<()> {
    common::block_on(run())
}

fn knob(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Each pair's ratios round by round (host over direct), by the host
/// figure's name, for the ratios at the end.
#[derive(Default)]
struct Figures {
    rounds: HashMap<String, Vec<f64>>,
}

impl Figures {
    fn print(&self, name: &str, value: f64, unit: &str) {
        println!("bench: {name} = {value:.1} {unit}");
    }

    /// The median of `rounds`, with the rounds themselves.
    fn print_median(&self, name: &str, rounds: &[f64], unit: &str) {
        let text: Vec<String> = rounds.iter().map(|r| format!("{r:.0}")).collect();
        println!(
            "bench: {name} = {:.1} {unit} (median of {} rounds: {})",
            common::median(rounds),
            rounds.len(),
            text.join(", ")
        );
    }

    /// `name`: the median of the per-round ratios of the pair measured
    /// under `host` (alternating rounds, so that a drift of the machine
    /// between rounds cancels), with the issue's target.
    fn ratio(&self, name: &str, host: &str, target: f64) {
        let Some(rounds) = self.rounds.get(host).filter(|r| !r.is_empty()) else {
            return;
        };
        let text: Vec<String> = rounds.iter().map(|r| format!("{r:.2}")).collect();
        let r = common::median(rounds);
        let verdict = if r >= target { "met" } else { "not met" };
        println!(
            "bench: {name} = {r:.2} (target {target}: {verdict}; median of the rounds' ratios: {})",
            text.join(" ")
        );
    }
}

/// Whether `BENCH_SHAPES` (a comma list of `get`, `set`, `cache`,
/// `redis`; all when unset) asks for `shape`.
fn wanted(shape: &str) -> bool {
    std::env::var("BENCH_SHAPES").map_or(true, |list| list.split(',').any(|s| s.trim() == shape))
}

/// Measures `direct` and `host` in alternating rounds; prints both medians.
async fn pair<D, H, DF, HF>(
    figures: &mut Figures,
    (direct_name, mut direct): (&str, D),
    (host_name, mut host): (&str, H),
) -> anyhow::Result<()>
where
    D: FnMut() -> DF,
    DF: std::future::Future<Output = anyhow::Result<f64>>,
    H: FnMut() -> HF,
    HF: std::future::Future<Output = anyhow::Result<f64>>,
{
    let (mut d, mut h, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..knob("BENCH_ROUNDS", ROUNDS).max(1) {
        let (direct, host) = (direct().await?, host().await?);
        d.push(direct);
        h.push(host);
        ratios.push(host / direct);
    }
    figures.print_median(direct_name, &d, "ops/s");
    figures.print_median(host_name, &h, "ops/s");
    figures.rounds.insert(host_name.to_string(), ratios);
    Ok(())
}

/// Runs `op(i)` from [`CALLERS`] tasks for one window; operations per
/// second, where each `op` says how many operations it made.
async fn rate<F, Fut>(op: F) -> anyhow::Result<f64>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<u64>> + Send,
{
    let end = Instant::now() + Duration::from_secs(knob("BENCH_SECONDS", 3));
    let next = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (op, next) = (op.clone(), next.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while Instant::now() < end {
                    for _ in 0..16 {
                        n += op(next.fetch_add(1, Ordering::Relaxed) % KEYS).await?;
                    }
                }
                anyhow::Ok(n)
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

/// A JSON call of `action` that must succeed: one operation.
async fn call(broker: &Broker, action: &str, params: &[u8]) -> anyhow::Result<u64> {
    let ctx = CallContext::new(Duration::from_secs(30));
    broker
        .call_json(action, params, ctx)
        .await
        .map(|_| 1)
        .map_err(|e| anyhow::anyhow!("{action}: {e}"))
}

/// `kv-probe.get-each`: [`GETS_PER_CALL`] gets in one call, every key found.
async fn get_each(broker: &Broker, bucket: &str, first: u64) -> anyhow::Result<u64> {
    let params = serde_json::to_vec(&serde_json::json!({
        "bucket": bucket, "first": first, "count": GETS_PER_CALL, "keys": KEYS,
    }))?;
    let ctx = CallContext::new(Duration::from_secs(30));
    let found = broker
        .call_json("kv-probe.get-each", &params, ctx)
        .await
        .map_err(|e| anyhow::anyhow!("kv-probe.get-each: {e}"))?;
    anyhow::ensure!(
        found.as_u64() == Some(GETS_PER_CALL),
        "get-each found {found} of {GETS_PER_CALL}"
    );
    Ok(GETS_PER_CALL)
}

fn get_params(bucket: &str, key: u64) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({"bucket": bucket, "key": format!("k{key}")}))
        .unwrap_or_default()
}

fn set_params(bucket: &str, key: u64) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"bucket": bucket, "key": format!("k{key}"), "value": VALUE}),
    )
    .unwrap_or_default()
}

/// `kv-probe` granted `default` (embedded, or on `backend`) with
/// `instances` instances, and `greeter` twice, once with its `hello` cached.
fn manifest(backend: Option<&str>, instances: usize) -> String {
    let table = backend.map_or(String::new(), |url| {
        format!("[kv.default]\nbackend = \"{url}\"\n")
    });
    format!(
        r#"
{table}
[packages.kv-probe]
component = "{{KV-PROBE}}"
instances = {instances}
queue = 1024
[packages.kv-probe.grants]
kv = ["default"]
[packages.greeter]
component = "{{GREETER}}"
instances = 2
queue = 1024
[packages.cached]
component = "{{GREETER}}"
instances = 2
queue = 1024
[packages.cached.actions.hello]
cache = {{ keys = ["name"] }}
"#
    )
}

/// Every key set through the host once, so that gets find values.
async fn fill(broker: &Broker, bucket: &str) -> anyhow::Result<()> {
    for key in 0..KEYS {
        call(broker, "kv-probe.set", &set_params(bucket, key)).await?;
    }
    Ok(())
}

/// A redb file of the host's shape, filled with the same keys.
fn direct_store(dir: &std::path::Path) -> anyhow::Result<Arc<Database>> {
    let db = Database::create(dir.join("direct.redb"))?;
    let txn = db.begin_write()?;
    {
        let mut table = txn.open_table(PAIRS)?;
        for key in 0..KEYS {
            table.insert(format!("k{key}").as_str(), VALUE.as_bytes())?;
        }
    }
    txn.commit()?;
    Ok(Arc::new(db))
}

/// Read in place, as the host reads a one-key `get` (a redb read waits
/// on no writer), so that the ratio compares like with like.
async fn direct_get(db: Arc<Database>, key: u64) -> anyhow::Result<u64> {
    let txn = db.begin_read()?;
    let table = txn.open_table(PAIRS)?;
    let found = table.get(format!("k{key}").as_str())?;
    anyhow::ensure!(found.is_some(), "k{key} missing");
    Ok(1)
}

async fn direct_set(db: Arc<Database>, key: u64) -> anyhow::Result<u64> {
    tokio::task::spawn_blocking(move || -> anyhow::Result<u64> {
        let txn = db.begin_write()?;
        {
            let mut table = txn.open_table(PAIRS)?;
            table.insert(format!("k{key}").as_str(), VALUE.as_bytes())?;
        }
        txn.commit()?;
        Ok(1)
    })
    .await?
}

async fn run() -> anyhow::Result<()> {
    let mut figures = Figures::default();
    figures.print("machine.two_core_speedup", common::two_core_speedup(), "x");
    // The embedded store is read in place: the gets are bound by the two
    // cores, and two instances keep them busy.
    let t = TestApp::start(&manifest(None, 2)).await;
    let broker = t.app.broker.clone();
    fill(&broker, "default").await?;
    let scratch = tempfile::tempdir()?;
    let db = direct_store(scratch.path())?;

    let (b, d) = (broker.clone(), db.clone());
    if wanted("get") {
        get(&mut figures, &b, &d).await?;
    }
    if wanted("set") {
        set(&mut figures, &b, &d).await?;
    }
    if wanted("cache") {
        cache(&mut figures, &b).await?;
    }
    t.app.shutdown().await;

    if wanted("redis") {
        redis(&mut figures).await?;
    }

    figures.ratio("kv.get.ratio", "kv.get.c100", 0.5);
    figures.ratio("kv.set.ratio", "kv.set.c100", 0.7);
    figures.ratio("kv.redis.get.ratio", "kv.redis.get.c100", 0.5);
    figures.ratio("cache.hit.ratio", "cache.hit.c100", 2.0);
    Ok(())
}

/// `kv.get.c100` beside `kv.direct.get.c100`, then `kv.get.call.c100`.
async fn get(figures: &mut Figures, b: &Arc<Broker>, d: &Arc<Database>) -> anyhow::Result<()> {
    pair(
        figures,
        ("kv.direct.get.c100", || {
            let d = d.clone();
            rate(move |k| direct_get(d.clone(), k))
        }),
        ("kv.get.c100", || {
            let b = b.clone();
            rate(move |k| {
                let b = b.clone();
                async move { get_each(&b, "default", k).await }
            })
        }),
    )
    .await?;
    let mut one = Vec::new();
    for _ in 0..knob("BENCH_ROUNDS", ROUNDS).max(1) {
        let b = b.clone();
        one.push(
            rate(move |k| {
                let b = b.clone();
                async move { call(&b, "kv-probe.get", &get_params("default", k)).await }
            })
            .await?,
        );
    }
    figures.print_median("kv.get.call.c100", &one, "ops/s");
    Ok(())
}

/// `kv.set.c100` beside `kv.direct.set.c100`.
async fn set(figures: &mut Figures, b: &Arc<Broker>, d: &Arc<Database>) -> anyhow::Result<()> {
    pair(
        figures,
        ("kv.direct.set.c100", || {
            let d = d.clone();
            rate(move |k| direct_set(d.clone(), k))
        }),
        ("kv.set.c100", || {
            let b = b.clone();
            rate(move |k| {
                let b = b.clone();
                async move { call(&b, "kv-probe.set", &set_params("default", k)).await }
            })
        }),
    )
    .await
}

/// `cache.hit.c100` beside `cache.uncached.c100`.
async fn cache(figures: &mut Figures, b: &Arc<Broker>) -> anyhow::Result<()> {
    let hello = br#"{"name": "Ada"}"#.as_slice();
    call(b, "cached.hello", hello).await?;
    pair(
        figures,
        ("cache.uncached.c100", || {
            let b = b.clone();
            rate(move |_| {
                let b = b.clone();
                async move { call(&b, "greeter.hello", hello).await }
            })
        }),
        ("cache.hit.c100", || {
            let b = b.clone();
            rate(move |_| {
                let b = b.clone();
                async move { call(&b, "cached.hello", hello).await }
            })
        }),
    )
    .await
}

fn found(names: &[&str]) -> Option<PathBuf> {
    names.iter().map(PathBuf::from).find(|p| p.exists())
}

/// `kv.redis.get.c100` beside `redis-benchmark -t get -c 100` on one
/// redis-server; skipped, and said so, without either program.
async fn redis(figures: &mut Figures) -> anyhow::Result<()> {
    let (Some(server), Some(benchmark)) = (
        found(&["/usr/bin/redis-server", "/usr/local/bin/redis-server"]),
        found(&["/usr/bin/redis-benchmark", "/usr/local/bin/redis-benchmark"]),
    ) else {
        println!("bench: kv.redis.* skipped: no redis-server or redis-benchmark");
        return Ok(());
    };
    let (_server, port) = common::redis_server(&server).await?;
    // An instance waits out each round trip to Redis, so it takes as many
    // instances as round trips in flight to keep the connection busy, as a
    // package of Moleculer's would set its concurrency.
    let url = format!("redis://127.0.0.1:{port}");
    let t = TestApp::start(&manifest(Some(&url), REDIS_INSTANCES)).await;
    let broker = t.app.broker.clone();
    fill(&broker, "default").await?;
    let b = broker.clone();
    pair(
        figures,
        ("kv.redis.direct.get.c100", || {
            let benchmark = benchmark.clone();
            async move { redis_benchmark(&benchmark, port).await }
        }),
        ("kv.redis.get.c100", || {
            let b = b.clone();
            rate(move |k| {
                let b = b.clone();
                async move { call(&b, "kv-probe.get", &get_params("default", k)).await }
            })
        }),
    )
    .await?;
    t.app.shutdown().await;
    Ok(())
}

/// What `redis-benchmark -t get -c 100 -q` says of the server on `port`:
/// GETs per second.
async fn redis_benchmark(binary: &std::path::Path, port: u16) -> anyhow::Result<f64> {
    let out = tokio::process::Command::new(binary)
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(["-t", "get", "-c", "100", "-n", "300000", "-q"])
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "GET: 123456.79 requests per second, p50=0.391 msec"
    text.split(['\r', '\n'])
        .filter_map(|line| line.trim().strip_prefix("GET: "))
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .ok_or_else(|| anyhow::anyhow!("redis-benchmark said nothing readable: {text}"))
}

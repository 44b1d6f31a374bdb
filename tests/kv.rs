//! State for packages: `wasi:keyvalue` from a real guest (`kv-probe`) on
//! the embedded store, on a real redis-server and on a real
//! `nats-server -js` (started here; under `CI=true` a missing one fails):
//! one suite for the three (grants, limits, keys a backend cannot hold as
//! they are, TTLs, atomics, batches), two hosts sharing JetStream buckets,
//! unreachable backends, buckets granted by a deploy through `/admin`, and
//! the action cache. Durability under SIGKILL and the `kv` subcommand are
//! in `host/tests/kv_cli.rs` (they need the binary).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};
use steedos_tests::{TestApp, eventually, require};

use crate::cluster::{Redis, redis};

/// `kv-probe` with `instances` instances, granted `default` and `sessions`;
/// `backend` holds both buckets (embedded when `None`).
fn manifest(instances: u32, backend: Option<&str>) -> String {
    let tables = match backend {
        Some(url) => format!(
            "[kv.default]\nbackend = \"{url}\"\n[kv.sessions]\nbackend = \"{url}\"\nmax_value = \"1 KiB\"\n"
        ),
        None => "[kv.sessions]\nmax_value = \"1 KiB\"\n".to_owned(),
    };
    format!(
        r#"
{tables}
[packages.kv-probe]
component = "{{KV-PROBE}}"
instances = {instances}
queue = 1000
[packages.kv-probe.grants]
kv = ["default", "sessions"]
[packages.greeter]
component = "{{GREETER}}"
"#
    )
}

async fn ok(t: &TestApp, action: &str, params: Value) -> Value {
    t.ok(&format!("kv-probe.{action}"), params).await
}

/// A call whose WIT result is `result<T, string>`: the error's text.
async fn refused(t: &TestApp, action: &str, params: Value) -> String {
    match t.call(&format!("kv-probe.{action}"), params).await {
        Ok(v) => panic!("{action} should have failed, answered {v}"),
        Err(e) => e.to_string(),
    }
}

async fn basics(t: &TestApp) {
    let b = "default";
    assert_eq!(
        ok(t, "get", json!({"bucket": b, "key": "a"})).await,
        Value::Null
    );
    assert_eq!(
        ok(t, "exists", json!({"bucket": b, "key": "a"})).await,
        json!(false)
    );
    ok(t, "set", json!({"bucket": b, "key": "a", "value": "one"})).await;
    assert_eq!(
        ok(t, "get", json!({"bucket": b, "key": "a"})).await,
        json!("one")
    );
    assert_eq!(
        ok(t, "exists", json!({"bucket": b, "key": "a"})).await,
        json!(true)
    );
    ok(t, "set", json!({"bucket": b, "key": "a", "value": "two"})).await;
    assert_eq!(
        ok(t, "get", json!({"bucket": b, "key": "a"})).await,
        json!("two")
    );
    ok(t, "delete", json!({"bucket": b, "key": "a"})).await;
    assert_eq!(
        ok(t, "get", json!({"bucket": b, "key": "a"})).await,
        Value::Null
    );
    // Deleting what is not there is no error.
    ok(t, "delete", json!({"bucket": b, "key": "a"})).await;
    // Buckets are apart.
    ok(
        t,
        "set",
        json!({"bucket": "sessions", "key": "s", "value": "x"}),
    )
    .await;
    assert_eq!(
        ok(t, "get", json!({"bucket": b, "key": "s"})).await,
        Value::Null
    );
}

/// Lists every key of `bucket` page by page; the number of pages.
async fn list_all(t: &TestApp, bucket: &str) -> (Vec<String>, usize) {
    let mut keys = Vec::new();
    let mut cursor = Value::Null;
    let mut pages = 0;
    loop {
        let page = ok(t, "keys", json!({"bucket": bucket, "cursor": cursor})).await;
        pages += 1;
        keys.extend(
            page["keys"]
                .as_array()
                .expect("keys")
                .iter()
                .map(|k| k.as_str().expect("key").to_owned()),
        );
        cursor = page["cursor"].clone();
        if cursor.is_null() {
            return (keys, pages);
        }
        assert!(pages < 100, "list-keys never ends");
    }
}

async fn paging(t: &TestApp) {
    let pairs: Vec<Value> = (0..2500)
        .map(|i| json!([format!("k{i:05}"), "v"]))
        .collect();
    for chunk in pairs.chunks(500) {
        ok(t, "set-many", json!({"bucket": "sessions", "pairs": chunk})).await;
    }
    let (mut keys, pages) = list_all(t, "sessions").await;
    keys.sort();
    keys.dedup();
    let wanted: Vec<String> = (0..2500)
        .map(|i| format!("k{i:05}"))
        // Beside the 2,500: `s` (basics) and `v` (bad_input).
        .chain(["s".to_owned(), "v".to_owned()])
        .collect();
    let mut wanted = wanted;
    wanted.sort();
    assert!(
        keys == wanted,
        "{} keys listed, {} wanted",
        keys.len(),
        wanted.len()
    );
    assert!(pages >= 3, "2,501 keys in {pages} page(s): no paging");
}

/// 100 increments and 100 compare-and-swap additions at once, over every
/// instance: none lost, and the swaps met conflicts and retried.
async fn concurrent_updates(t: &TestApp) {
    let mut calls = Vec::new();
    for _ in 0..100 {
        let app = t.app.clone();
        calls.push(tokio::spawn(async move {
            let body = serde_json::to_vec(&json!({"bucket": "default", "key": "n", "delta": 1}))
                .expect("json");
            let ctx = steedos_wasm::context::CallContext::new(Duration::from_secs(30));
            app.broker.call_json("kv-probe.increment", &body, ctx).await
        }));
    }
    for c in calls {
        c.await.expect("task").expect("increment");
    }
    assert_eq!(
        ok(t, "get", json!({"bucket": "default", "key": "n"})).await,
        json!("100")
    );

    let mut calls = Vec::new();
    for _ in 0..100 {
        let app = t.app.clone();
        calls.push(tokio::spawn(async move {
            let body = serde_json::to_vec(&json!({"bucket": "default", "key": "c", "delta": 2}))
                .expect("json");
            let ctx = steedos_wasm::context::CallContext::new(Duration::from_secs(30));
            app.broker.call_json("kv-probe.cas-add", &body, ctx).await
        }));
    }
    for c in calls {
        c.await.expect("task").expect("cas-add");
    }
    assert_eq!(
        ok(t, "get", json!({"bucket": "default", "key": "c"})).await,
        json!("200")
    );
}

async fn cas_conflict(t: &TestApp) {
    ok(
        t,
        "set",
        json!({"bucket": "default", "key": "x", "value": "first"}),
    )
    .await;
    let said = ok(t, "cas-stale", json!({"bucket": "default", "key": "x"})).await;
    assert_eq!(
        said,
        json!([
            "saw Some(\"first\")",
            "conflict, now Some(\"changed\")",
            "retry swapped"
        ])
    );
    assert_eq!(
        ok(t, "get", json!({"bucket": "default", "key": "x"})).await,
        json!("mine")
    );
    // A swap on an absent key conflicts with a value set since, too.
    let said = ok(t, "cas-stale", json!({"bucket": "default", "key": "fresh"})).await;
    assert_eq!(
        said,
        json!([
            "saw None",
            "conflict, now Some(\"changed\")",
            "retry swapped"
        ])
    );
}

async fn batches(t: &TestApp) {
    ok(
        t,
        "set-many",
        json!({"bucket": "default", "pairs": [["b1", "1"], ["b2", "2"]]}),
    )
    .await;
    let got = ok(
        t,
        "get-many",
        json!({"bucket": "default", "keys": ["b1", "nope", "b2"]}),
    )
    .await;
    assert_eq!(got, json!([["b1", "1"], null, ["b2", "2"]]));
    // All or nothing: one bad value fails the batch, and nothing of it is written.
    let big = "y".repeat(2048);
    let why = refused(
        t,
        "set-many",
        json!({"bucket": "sessions", "pairs": [["ok1", "v"], ["big", big]]}),
    )
    .await;
    assert!(
        why.contains("max_value") && why.contains("sessions") && why.contains("kv-probe"),
        "{why}"
    );
    let got = ok(
        t,
        "get-many",
        json!({"bucket": "sessions", "keys": ["ok1", "big"]}),
    )
    .await;
    assert_eq!(got, json!([null, null]));
    ok(
        t,
        "delete-many",
        json!({"bucket": "default", "keys": ["b1", "b2"]}),
    )
    .await;
    let got = ok(
        t,
        "get-many",
        json!({"bucket": "default", "keys": ["b1", "b2"]}),
    )
    .await;
    assert_eq!(got, json!([null, null]));
}

async fn bad_input(t: &TestApp) {
    // A value over the bucket's max_value: an error naming package and bucket.
    let why = refused(
        t,
        "set-size",
        json!({"bucket": "sessions", "key": "v", "size": 1025}),
    )
    .await;
    assert!(
        why.contains("kv-probe") && why.contains("`sessions`") && why.contains("1024"),
        "{why}"
    );
    ok(
        t,
        "set-size",
        json!({"bucket": "sessions", "key": "v", "size": 1024}),
    )
    .await;
    // The default max_value is 1 MiB.
    let why = refused(
        t,
        "set-size",
        json!({"bucket": "default", "key": "v", "size": (1 << 20) + 1}),
    )
    .await;
    assert!(why.contains("max_value"), "{why}");
    // Keys the store cannot hold.
    let why = refused(
        t,
        "set",
        json!({"bucket": "default", "key": "", "value": "v"}),
    )
    .await;
    assert!(
        why.contains("empty key") && why.contains("`default`"),
        "{why}"
    );
    let long = "k".repeat(1025);
    let why = refused(t, "get", json!({"bucket": "default", "key": long})).await;
    assert!(why.contains("1024-byte"), "{why}");
    // An increment of what is not an integer.
    ok(
        t,
        "set",
        json!({"bucket": "default", "key": "word", "value": "abc"}),
    )
    .await;
    let why = refused(
        t,
        "increment",
        json!({"bucket": "default", "key": "word", "delta": 1}),
    )
    .await;
    assert!(why.contains("integer"), "{why}");
    // The package's other calls and the others still work.
    assert_eq!(
        ok(t, "get", json!({"bucket": "default", "key": "word"})).await,
        json!("abc")
    );
    assert_eq!(
        t.ok("greeter.hello", json!({"name": "Ada"})).await,
        json!("Hello, Ada!")
    );
}

async fn denied(t: &TestApp) {
    assert_eq!(
        ok(t, "open", json!({"bucket": "default"})).await,
        json!("ok")
    );
    assert_eq!(
        ok(t, "open", json!({"bucket": "secrets"})).await,
        json!("access-denied")
    );
    assert_eq!(
        ok(t, "open", json!({"bucket": "$cache"})).await,
        json!("access-denied")
    );
    let why = refused(t, "get", json!({"bucket": "secrets", "key": "a"})).await;
    assert!(why.contains("access-denied"), "{why}");
    // The instance did not trap: the next call works.
    assert_eq!(
        ok(t, "open", json!({"bucket": "sessions"})).await,
        json!("ok")
    );
}

async fn ttl(t: &TestApp) {
    ok(
        t,
        "set-ttl",
        json!({"bucket": "default", "key": "t", "value": "soon", "ttl-ms": 300}),
    )
    .await;
    ok(
        t,
        "set-ttl",
        json!({"bucket": "default", "key": "long", "value": "later", "ttl-ms": 600_000}),
    )
    .await;
    assert_eq!(
        ok(t, "get", json!({"bucket": "default", "key": "t"})).await,
        json!("soon")
    );
    let gone = eventually(Duration::from_secs(10), || async {
        (ok(t, "get", json!({"bucket": "default", "key": "t"}))
            .await
            .is_null())
        .then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "a value set with a 300 ms TTL never expired"
    );
    assert_eq!(
        ok(t, "exists", json!({"bucket": "default", "key": "t"})).await,
        json!(false)
    );
    assert_eq!(
        ok(t, "get", json!({"bucket": "default", "key": "long"})).await,
        json!("later")
    );
    let (keys, _) = list_all(t, "default").await;
    assert!(
        !keys.contains(&"t".to_owned()) && keys.contains(&"long".to_owned()),
        "{keys:?}"
    );
}

/// Keys with bytes some backend cannot hold as they are (NATS subjects
/// take few): each set, read back, listed under its own name, deleted.
async fn odd_keys(t: &TestApp) {
    let keys = [
        "with space",
        "dots.in.it",
        "ends.",
        ".starts",
        "a..b",
        "*",
        ">",
        "=x",
        "ünïcødé",
        "tab\there",
        "colon:and/slash",
        "sku-42",
    ];
    for key in keys {
        ok(
            t,
            "set",
            json!({"bucket": "default", "key": key, "value": key}),
        )
        .await;
    }
    for key in keys {
        assert_eq!(
            ok(t, "get", json!({"bucket": "default", "key": key})).await,
            json!(key),
            "{key:?}"
        );
    }
    let (listed, _) = list_all(t, "default").await;
    for key in keys {
        assert!(
            listed.contains(&key.to_owned()),
            "{key:?} not in {listed:?}"
        );
    }
    let keys: Vec<&str> = keys.to_vec();
    ok(t, "delete-many", json!({"bucket": "default", "keys": keys})).await;
    let (listed, _) = list_all(t, "default").await;
    assert!(
        keys.iter().all(|k| !listed.contains(&k.to_string())),
        "{listed:?}"
    );
}

async fn suite(backend: Option<&str>) {
    let t = TestApp::start(&manifest(4, backend)).await;
    basics(&t).await;
    odd_keys(&t).await;
    denied(&t).await;
    bad_input(&t).await;
    batches(&t).await;
    cas_conflict(&t).await;
    concurrent_updates(&t).await;
    ttl(&t).await;
    paging(&t).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn embedded_store_from_a_package() {
    suite(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jetstream_store_from_a_package() {
    let Some(mut server) = JetStream::new() else {
        return;
    };
    server.launch().await;
    suite(Some(&server.url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn redis_store_from_a_package() {
    let Some(binary) = redis() else { return };
    let server = Redis::start(&binary, &[]).await;
    suite(Some(&server.url)).await;
}

/// What was written is there after the app stops and loads again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_values_outlive_the_app() {
    let t = TestApp::start(&manifest(1, None)).await;
    ok(
        &t,
        "set",
        json!({"bucket": "default", "key": "kept", "value": "yes"}),
    )
    .await;
    t.app.shutdown().await;
    let TestApp { app, dir } = t;
    drop(app);
    let path = dir.path().to_path_buf();
    // The old app's store closes as its last task ends: load until it reads.
    let got = eventually(Duration::from_secs(20), || {
        let path = path.clone();
        async move {
            let manifest = steedos_wasm::manifest::Manifest::load(&path).ok()?;
            let options = steedos_wasm::app::LoadOptions {
                build: false,
                ..Default::default()
            };
            let again = steedos_wasm::app::App::load(manifest, &options)
                .await
                .ok()?;
            let body = serde_json::to_vec(&json!({"bucket": "default", "key": "kept"})).ok()?;
            let ctx = steedos_wasm::context::CallContext::new(Duration::from_secs(10));
            let got = again.broker.call_json("kv-probe.get", &body, ctx).await;
            again.shutdown().await;
            got.ok()
        }
    })
    .await;
    assert_eq!(got, Some(json!("yes")));
}

/// Without `grants.kv`, a component importing `wasi:keyvalue` loads, and
/// every bucket it opens is `access-denied` (a value, not a trap).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_grant_every_bucket_is_denied() {
    let t = TestApp::start(
        r#"
[packages.kv-probe]
component = "{KV-PROBE}"
[packages.greeter]
component = "{GREETER}"
"#,
    )
    .await;
    assert_eq!(
        ok(&t, "open", json!({"bucket": "default"})).await,
        json!("access-denied")
    );
    let why = refused(
        &t,
        "set",
        json!({"bucket": "default", "key": "a", "value": "v"}),
    )
    .await;
    assert!(why.contains("access-denied"), "{why}");
    assert_eq!(
        ok(&t, "open", json!({"bucket": "$cache"})).await,
        json!("access-denied")
    );
    assert_eq!(
        t.ok("greeter.hello", json!({"name": "Ada"})).await,
        json!("Hello, Ada!")
    );
}

/// A Redis bucket out of reach at start, and one whose server goes away
/// mid-run: errors naming the package and the bucket; the embedded bucket
/// and other packages keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_backend_fails_its_bucket_only() {
    let Some(binary) = redis() else { return };
    let server = Redis::start(&binary, &[]).await;
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let toml = format!(
        r#"
[kv.sessions]
backend = "{}"
[kv.cold]
backend = "redis://127.0.0.1:{closed}"
[packages.kv-probe]
component = "{{KV-PROBE}}"
[packages.kv-probe.grants]
kv = ["default", "sessions", "cold"]
[packages.greeter]
component = "{{GREETER}}"
"#,
        server.url
    );
    let t = TestApp::start(&toml).await;
    let why = refused(
        &t,
        "set",
        json!({"bucket": "cold", "key": "a", "value": "v"}),
    )
    .await;
    assert!(
        why.contains("kv-probe") && why.contains("`cold`") && why.contains("redis"),
        "{why}"
    );
    ok(
        &t,
        "set",
        json!({"bucket": "sessions", "key": "a", "value": "v"}),
    )
    .await;
    drop(server);
    let why = refused(&t, "get", json!({"bucket": "sessions", "key": "a"})).await;
    assert!(
        why.contains("kv-probe") && why.contains("`sessions`"),
        "{why}"
    );
    ok(
        &t,
        "set",
        json!({"bucket": "default", "key": "a", "value": "v"}),
    )
    .await;
    assert_eq!(
        ok(&t, "get", json!({"bucket": "default", "key": "a"})).await,
        json!("v")
    );
    assert_eq!(
        t.ok("greeter.hello", json!({"name": "Ada"})).await,
        json!("Hello, Ada!")
    );
}

/// The action cache: a hit answers without entering the package (its call
/// counter does not move), another key misses, `cache.clean.<package>`
/// empties it, and hits and misses show in /metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_action_cache_answers_without_entering_the_package() {
    let t = TestApp::start(
        r#"
[packages.kv-probe]
component = "{KV-PROBE}"
[packages.kv-probe.grants]
kv = ["default"]
[packages.kv-probe.actions.price]
cache = { keys = ["sku"], ttl = "1h" }
"#,
    )
    .await;
    let calls = || async { ok(&t, "get", json!({"bucket": "default", "key": "calls"})).await };
    assert_eq!(
        ok(&t, "price", json!({"sku": "apple", "region": "eu"})).await,
        json!(1)
    );
    // The same key (the region is not one of the cache's keys): the kept answer.
    assert_eq!(
        ok(&t, "price", json!({"sku": "apple", "region": "us"})).await,
        json!(1)
    );
    assert_eq!(ok(&t, "price", json!(["apple", "asia"])).await, json!(1));
    assert_eq!(calls().await, json!("1"), "a hit entered the package");
    // Another key misses.
    assert_eq!(
        ok(&t, "price", json!({"sku": "pear", "region": "eu"})).await,
        json!(2)
    );
    assert_eq!(calls().await, json!("2"));
    // A clean empties the package's answers.
    let ctx = steedos_wasm::context::CallContext::new(Duration::from_secs(10));
    t.app
        .broker
        .emit("cache.clean.kv-probe", Vec::new(), false, &ctx)
        .await
        .expect("emit");
    assert_eq!(
        ok(&t, "price", json!({"sku": "apple", "region": "eu"})).await,
        json!(3)
    );
    assert_eq!(
        ok(&t, "price", json!({"sku": "pear", "region": "eu"})).await,
        json!(4)
    );
    assert_eq!(
        ok(&t, "price", json!({"sku": "pear", "region": "eu"})).await,
        json!(4)
    );
    // Another package's clean leaves these.
    t.app
        .broker
        .emit("cache.clean.greeter", Vec::new(), false, &ctx)
        .await
        .expect("emit");
    assert_eq!(
        ok(&t, "price", json!({"sku": "pear", "region": "eu"})).await,
        json!(4)
    );
    // Uncached actions are not counted; the cached one is.
    let metrics = t.app.broker.metrics();
    if let Some(kv) = t.app.broker.kv() {
        metrics.record_kv(kv);
    }
    let text = metrics.render(&t.app.broker.reports());
    assert!(
        text.contains(r#"steedos_action_cache_hits{package="kv-probe",action="price"} 4"#),
        "{text}"
    );
    assert!(
        text.contains(r#"steedos_action_cache_misses{package="kv-probe",action="price"} 4"#),
        "{text}"
    );
    assert!(
        !text.contains(r#"action_cache_hits{package="kv-probe",action="get"}"#),
        "{text}"
    );
}

/// The action cache keeps answers in this node's memory in front of its
/// bucket: with the bucket on a Redis server that then goes away, a kept
/// answer is still a hit (the package, whose own bucket is gone too, is not
/// entered), while another key misses, enters and fails naming the bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_answer_is_a_hit_while_the_cache_bucket_is_out_of_reach() {
    let Some(binary) = redis() else { return };
    let server = Redis::start(&binary, &[]).await;
    let t = TestApp::start(&format!(
        r#"
[kv.default]
backend = "{}"
[packages.kv-probe]
component = "{{KV-PROBE}}"
[packages.kv-probe.grants]
kv = ["default"]
[packages.kv-probe.actions.price]
cache = {{ keys = ["sku"], ttl = "1h" }}
"#,
        server.url
    ))
    .await;
    assert_eq!(
        ok(&t, "price", json!({"sku": "apple", "region": "eu"})).await,
        json!(1)
    );
    drop(server);
    assert_eq!(
        ok(&t, "price", json!({"sku": "apple", "region": "us"})).await,
        json!(1),
        "a kept answer was not served from memory"
    );
    let why = refused(&t, "price", json!({"sku": "pear", "region": "eu"})).await;
    assert!(why.contains("`default`"), "{why}");
}

/// Two hosts of one app on one `nats-server -js`: an answer kept by one is
/// a hit on the other (the shared cache bucket), and a
/// `cache.clean.<package>` emitted on one drops the answer from the
/// other's memory too, though no package there listens to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clean_on_one_host_drops_the_answers_in_every_hosts_memory() {
    let Some(mut server) = JetStream::new() else {
        return;
    };
    server.launch().await;
    let start = |node: &'static str| {
        let cluster = format!("node_id = \"{node}\"\nheartbeat_interval = \"250ms\"\n");
        let toml = format!(
            "{}[packages.kv-probe.actions.price]\ncache = {{ keys = [\"sku\"] }}\n",
            clustered(&server.url).replace(
                "[packages.kv-probe]\n",
                &format!("{cluster}[packages.kv-probe]\n")
            )
        );
        async move {
            let t = TestApp::start(&toml).await;
            let settings = t.app.manifest.cluster.clone().expect("[cluster]");
            let transport =
                steedos_wasm::transport::Transport::start(t.app.broker.clone(), settings)
                    .await
                    .expect("join the cluster");
            (t, transport)
        }
    };
    let (a, a_transport) = start("kv-a").await;
    let (b, _b_transport) = start("kv-b").await;
    let sees_b = eventually(Duration::from_secs(15), || async {
        a_transport
            .nodes()
            .iter()
            .any(|n| n.id == "kv-b")
            .then_some(())
    })
    .await;
    assert!(sees_b.is_some(), "a never saw b: {:?}", a_transport.nodes());
    assert_eq!(
        ok(&a, "price", json!({"sku": "apple", "region": "eu"})).await,
        json!(1)
    );
    // Kept by a, a hit on b (and now in b's memory).
    assert_eq!(
        ok(&b, "price", json!({"sku": "apple", "region": "eu"})).await,
        json!(1)
    );
    let ctx = steedos_wasm::context::CallContext::new(Duration::from_secs(10));
    a.app
        .broker
        .emit("cache.clean.kv-probe", Vec::new(), false, &ctx)
        .await
        .expect("emit");
    let missed = eventually(Duration::from_secs(15), || async {
        let n = ok(&b, "price", json!({"sku": "apple", "region": "eu"})).await;
        (n != json!(1)).then_some(n)
    })
    .await;
    assert_eq!(missed, Some(json!(2)), "b kept answering from its memory");
}

/// A `nats-server -js` on a port of 127.0.0.1 kept for it, its store in a
/// folder of its own; stopped and launched again on the same port and
/// store at will, stopped when dropped.
struct JetStream {
    binary: PathBuf,
    port: u16,
    store: tempfile::TempDir,
    child: Option<std::process::Child>,
    url: String,
}

impl JetStream {
    /// Not started yet; `None` when nats-server is missing (by [`require`]'s rule).
    fn new() -> Option<JetStream> {
        if !require::tools(&["nats-server"]) {
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        Some(JetStream {
            binary: require::which("nats-server")?,
            port,
            store: tempfile::tempdir().expect("store dir"),
            child: None,
            url: format!("nats://127.0.0.1:{port}"),
        })
    }

    async fn launch(&mut self) {
        let store = self.store.path().display().to_string();
        self.launch_with(&["-js", "-sd", &store]).await;
    }

    /// Launched with `flags` instead of JetStream's.
    async fn launch_with(&mut self, flags: &[&str]) {
        let child = std::process::Command::new(&self.binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server -js");
        self.child = Some(child);
        let port = self.port;
        let up = eventually(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(
            up.is_some(),
            "nats-server did not listen on 127.0.0.1:{port}"
        );
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for JetStream {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An app named `shared` in a cluster over `nats`, with `kv-probe` granted
/// `default` and no `[kv]` table: its buckets default to JetStream.
fn clustered(nats: &str) -> String {
    format!(
        r#"
[app]
name = "shared"
cache_dir = "{{CACHE}}"
[cluster]
transporter = "{nats}"
[packages.kv-probe]
component = "{{KV-PROBE}}"
instances = 2
queue = 1000
[packages.kv-probe.grants]
kv = ["default"]
"#
    )
}

/// `kv-probe.increment` of `key` by 1, `n` times at once on `t`.
fn increments(t: &TestApp, key: &str, n: usize) -> Vec<tokio::task::JoinHandle<()>> {
    (0..n)
        .map(|_| {
            let app = t.app.clone();
            let body = serde_json::to_vec(&json!({"bucket": "default", "key": key, "delta": 1}))
                .expect("json");
            tokio::spawn(async move {
                let ctx = steedos_wasm::context::CallContext::new(Duration::from_secs(60));
                app.broker
                    .call_json("kv-probe.increment", &body, ctx)
                    .await
                    .expect("increment");
            })
        })
        .collect()
}

/// Two hosts of one app in a NATS cluster: their buckets default to
/// JetStream on the cluster's server, so each sees the other's writes
/// (nothing in the embedded folder), and 100 increments made at once from
/// both (two instances each) lose no update.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hosts_on_one_jetstream_see_each_others_writes() {
    let Some(mut server) = JetStream::new() else {
        return;
    };
    server.launch().await;
    let a = TestApp::start(&clustered(&server.url)).await;
    let b = TestApp::start(&clustered(&server.url)).await;
    ok(
        &a,
        "set",
        json!({"bucket": "default", "key": "from-a", "value": "1"}),
    )
    .await;
    assert_eq!(
        ok(&b, "get", json!({"bucket": "default", "key": "from-a"})).await,
        json!("1")
    );
    ok(
        &b,
        "set",
        json!({"bucket": "default", "key": "from-a", "value": "2"}),
    )
    .await;
    ok(&b, "delete", json!({"bucket": "default", "key": "gone"})).await;
    assert_eq!(
        ok(&a, "get", json!({"bucket": "default", "key": "from-a"})).await,
        json!("2")
    );
    let mut calls = increments(&a, "n", 50);
    calls.extend(increments(&b, "n", 50));
    for c in calls {
        c.await.expect("task");
    }
    assert_eq!(
        ok(&a, "get", json!({"bucket": "default", "key": "n"})).await,
        json!("100")
    );
    assert_eq!(
        ok(&b, "get", json!({"bucket": "default", "key": "n"})).await,
        json!("100")
    );
    let (keys, _) = list_all(&b, "default").await;
    assert_eq!(keys.len(), 2, "{keys:?}");
    for t in [&a, &b] {
        assert!(
            !t.dir.path().join(".steedos/kv/default.redb").exists(),
            "a clustered app's bucket was embedded"
        );
    }
}

/// A JetStream bucket out of reach at start, reached once the server is
/// up, and lost mid-run: errors naming the package and the bucket while
/// it is out of reach, the embedded bucket and other packages working
/// meanwhile, and every acknowledged value there when the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_jetstream_fails_its_bucket_only_and_is_tried_again() {
    let Some(mut server) = JetStream::new() else {
        return;
    };
    let toml = format!(
        r#"
[kv.sessions]
backend = "{}"
[packages.kv-probe]
component = "{{KV-PROBE}}"
[packages.kv-probe.grants]
kv = ["default", "sessions"]
[packages.greeter]
component = "{{GREETER}}"
"#,
        server.url
    );
    let t = TestApp::start(&toml).await;
    let set = json!({"bucket": "sessions", "key": "a", "value": "v"});
    let others_work = || async {
        ok(
            &t,
            "set",
            json!({"bucket": "default", "key": "d", "value": "e"}),
        )
        .await;
        assert_eq!(
            ok(&t, "get", json!({"bucket": "default", "key": "d"})).await,
            json!("e")
        );
        assert_eq!(
            t.ok("greeter.hello", json!({"name": "Ada"})).await,
            json!("Hello, Ada!")
        );
    };
    let why = refused(&t, "set", set.clone()).await;
    assert!(
        why.contains("kv-probe") && why.contains("`sessions`") && why.contains("nats"),
        "{why}"
    );
    others_work().await;
    server.launch().await;
    let reached = eventually(Duration::from_secs(30), || async {
        t.call("kv-probe.set", set.clone()).await.ok()
    })
    .await;
    assert!(
        reached.is_some(),
        "the bucket was not tried again once its server was up"
    );
    server.stop();
    let why = refused(&t, "get", json!({"bucket": "sessions", "key": "a"})).await;
    assert!(
        why.contains("kv-probe") && why.contains("`sessions`"),
        "{why}"
    );
    others_work().await;
    server.launch().await;
    let back = eventually(Duration::from_secs(30), || async {
        t.call("kv-probe.get", json!({"bucket": "sessions", "key": "a"}))
            .await
            .ok()
    })
    .await;
    assert_eq!(back, Some(json!("v")), "an acknowledged value was lost");
}

/// A package deployed through `/admin` with `kv=fresh`, a bucket the app
/// did not have when it loaded: the bucket is made on its first open (no
/// `no-such-store`), and a bucket not granted is still denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bucket_granted_by_a_deploy_through_admin_opens() {
    const TOKEN: &str = "kv-admin-token";
    let t = TestApp::start_edited(
        r#"
[packages.greeter]
component = "{GREETER}"
"#,
        |_| {},
        |m| m.gateway.admin_token = Some(TOKEN.into()),
    )
    .await;
    let (_gateway, base) = t.gateway().await;
    let component = std::fs::read(steedos_tests::guests::KV_PROBE).expect("kv-probe");
    // A bucket name the file would refuse (the cache's own among them) is refused.
    let r = reqwest::Client::new()
        .put(format!("{base}/admin/packages/kv-probe?kv=%24cache"))
        .bearer_auth(TOKEN)
        .body(component.clone())
        .send()
        .await
        .expect("deploy");
    assert_eq!(r.status(), 400);
    let said = r.text().await.unwrap_or_default();
    assert!(said.contains("bucket name"), "{said}");
    let r = reqwest::Client::new()
        .put(format!("{base}/admin/packages/kv-probe?kv=fresh"))
        .bearer_auth(TOKEN)
        .body(component)
        .send()
        .await
        .expect("deploy");
    let status = r.status();
    assert!(
        status.is_success(),
        "{status}: {}",
        r.text().await.unwrap_or_default()
    );
    assert_eq!(
        ok(&t, "open", json!({"bucket": "fresh"})).await,
        json!("ok")
    );
    ok(
        &t,
        "set",
        json!({"bucket": "fresh", "key": "k", "value": "v"}),
    )
    .await;
    assert_eq!(
        ok(&t, "get", json!({"bucket": "fresh", "key": "k"})).await,
        json!("v")
    );
    assert_eq!(
        ok(&t, "open", json!({"bucket": "default"})).await,
        json!("access-denied")
    );
}

/// `kv-draft.<action>`.
async fn draft(t: &TestApp, action: &str, params: Value) -> Result<Value, String> {
    t.call(&format!("kv-draft.{action}"), params)
        .await
        .map_err(|e| e.to_string())
}

/// A component built against `wasi:keyvalue@0.2.0-draft` (wasmCloud's and
/// `wasmtime serve -S keyvalue`'s) loads and reaches the same buckets as a
/// draft2 one: its grants, its checks, numeric cursors followed page by
/// page, `u64` increments refused rather than wrapped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_built_for_the_older_draft_shares_the_buckets() {
    let t = TestApp::start(
        r#"
[packages.kv-draft]
component = "{KV-DRAFT}"
[packages.kv-draft.grants]
kv = ["default", "sessions"]
[packages.kv-probe]
component = "{KV-PROBE}"
[packages.kv-probe.grants]
kv = ["default"]
"#,
    )
    .await;
    let d = |k: &str| json!({"bucket": "default", "key": k});
    draft(
        &t,
        "set",
        json!({"bucket": "default", "key": "d", "value": "1"}),
    )
    .await
    .expect("set");
    assert_eq!(ok(&t, "get", d("d")).await, json!("1"));
    ok(
        &t,
        "set",
        json!({"bucket": "default", "key": "p", "value": "2"}),
    )
    .await;
    assert_eq!(draft(&t, "get", d("p")).await, Ok(json!("2")));
    assert_eq!(draft(&t, "exists", d("p")).await, Ok(json!(true)));
    draft(&t, "delete", d("p")).await.expect("delete");
    assert_eq!(ok(&t, "get", d("p")).await, Value::Null);

    let inc = |delta: Value| json!({"bucket": "default", "key": "n", "delta": delta});
    assert_eq!(draft(&t, "increment", inc(json!(5))).await, Ok(json!(5)));
    assert_eq!(draft(&t, "increment", inc(json!(5))).await, Ok(json!(10)));
    assert_eq!(ok(&t, "increment", inc(json!(-20))).await, json!(-10));
    let why = draft(&t, "increment", inc(json!(1)))
        .await
        .expect_err("negative");
    assert!(
        why.contains("negative") && why.contains("`default`"),
        "{why}"
    );
    let why = draft(&t, "increment", inc(json!(u64::MAX)))
        .await
        .expect_err("too big");
    assert!(why.contains("kv-draft") && why.contains("largest"), "{why}");
    assert_eq!(ok(&t, "get", d("n")).await, json!("-9"));

    let pairs: Vec<Value> = (0..2500)
        .map(|i| json!([format!("k{i:05}"), "v"]))
        .collect();
    for chunk in pairs.chunks(500) {
        draft(
            &t,
            "set-many",
            json!({"bucket": "sessions", "pairs": chunk}),
        )
        .await
        .expect("set-many");
    }
    let listed = draft(&t, "keys", json!({"bucket": "sessions"}))
        .await
        .expect("keys");
    let mut keys: Vec<String> = serde_json::from_value(listed[0].clone()).expect("keys");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 2500);
    assert!(listed[1].as_u64().unwrap_or(0) >= 3, "{}", listed[1]);
    let why = draft(&t, "bad-cursor", json!({"bucket": "sessions"}))
        .await
        .expect_err("bad");
    assert!(
        why.contains("cursor 12345") && why.contains("`sessions`"),
        "{why}"
    );
    let got = draft(
        &t,
        "get-many",
        json!({"bucket": "sessions", "keys": ["k00001", "no"]}),
    )
    .await
    .expect("get-many");
    assert_eq!(got, json!([["k00001", "v"], null]));
    draft(
        &t,
        "delete-many",
        json!({"bucket": "sessions", "keys": ["k00001"]}),
    )
    .await
    .expect("delete-many");
    assert_eq!(
        draft(&t, "get", json!({"bucket": "sessions", "key": "k00001"})).await,
        Ok(Value::Null)
    );
    // Its grants and the host's checks hold as for draft2.
    let why = draft(&t, "get", json!({"bucket": "secrets", "key": "a"}))
        .await
        .expect_err("denied");
    assert!(why.contains("access-denied"), "{why}");
    let why = draft(
        &t,
        "set",
        json!({"bucket": "default", "key": "", "value": "v"}),
    )
    .await
    .expect_err("empty key");
    assert!(
        why.contains("empty key") && why.contains("kv-draft"),
        "{why}"
    );
}

/// What a JetStream bucket cannot take says so, naming the package and the
/// bucket: a value under the bucket's `max_value` but over the server's
/// `max_payload`, and a server without JetStream; the package's other
/// buckets keep working.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_jetstream_cannot_take_is_a_clear_error() {
    let (Some(mut with_js), Some(mut without_js)) = (JetStream::new(), JetStream::new()) else {
        return;
    };
    with_js.launch().await;
    without_js.launch_with(&[]).await;
    let toml = format!(
        r#"
[kv.big]
backend = "{}"
max_value = "4 MiB"
[kv.plain]
backend = "{}"
[packages.kv-probe]
component = "{{KV-PROBE}}"
[packages.kv-probe.grants]
kv = ["default", "big", "plain"]
"#,
        with_js.url, without_js.url
    );
    let t = TestApp::start(&toml).await;
    let why = refused(
        &t,
        "set-size",
        json!({"bucket": "big", "key": "v", "size": 2 << 20}),
    )
    .await;
    assert!(
        why.contains("kv-probe") && why.contains("`big`") && why.contains("max_payload"),
        "{why}"
    );
    ok(
        &t,
        "set-size",
        json!({"bucket": "big", "key": "v", "size": 512 << 10}),
    )
    .await;
    let why = refused(
        &t,
        "set",
        json!({"bucket": "plain", "key": "a", "value": "v"}),
    )
    .await;
    assert!(
        why.contains("kv-probe") && why.contains("`plain`") && why.contains("-js"),
        "{why}"
    );
    ok(
        &t,
        "set",
        json!({"bucket": "default", "key": "a", "value": "v"}),
    )
    .await;
}

/// A batch on JetStream is all or nothing (atomic batch publish, nats-server
/// 2.12 and later): a value under the bucket's `max_value` that the
/// server's `max_payload` cannot carry fails the batch after the keys
/// before it were sent, and none of them is stored; a batch over the
/// server's 1,000 messages is refused whole; whole batches are written and
/// deleted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_batch_is_all_or_nothing() {
    let Some(mut server) = JetStream::new() else {
        return;
    };
    server.launch().await;
    let toml = format!(
        r#"
[kv.big]
backend = "{}"
max_value = "4 MiB"
[packages.kv-probe]
component = "{{KV-PROBE}}"
[packages.kv-probe.grants]
kv = ["big"]
"#,
        server.url
    );
    let t = TestApp::start(&toml).await;
    let big = "y".repeat(2 << 20);
    let why = refused(
        &t,
        "set-many",
        json!({"bucket": "big", "pairs": [["a", "1"], ["b", "2"], ["c", big]]}),
    )
    .await;
    assert!(
        why.contains("kv-probe") && why.contains("`big`") && why.contains("max_payload"),
        "{why}"
    );
    let got = ok(
        &t,
        "get-many",
        json!({"bucket": "big", "keys": ["a", "b", "c"]}),
    )
    .await;
    assert_eq!(
        got,
        json!([null, null, null]),
        "part of a failed batch was stored"
    );
    let many: Vec<Value> = (0..1001).map(|i| json!([format!("k{i}"), "v"])).collect();
    let why = refused(&t, "set-many", json!({"bucket": "big", "pairs": many})).await;
    assert!(why.contains("1000"), "{why}");
    let got = ok(
        &t,
        "get-many",
        json!({"bucket": "big", "keys": ["k0", "k999"]}),
    )
    .await;
    assert_eq!(
        got,
        json!([null, null]),
        "part of a refused batch was stored"
    );
    ok(
        &t,
        "set-many",
        json!({"bucket": "big", "pairs": [["a", "1"], ["b", "2"]]}),
    )
    .await;
    let got = ok(&t, "get-many", json!({"bucket": "big", "keys": ["a", "b"]})).await;
    assert_eq!(got, json!([["a", "1"], ["b", "2"]]));
    ok(
        &t,
        "delete-many",
        json!({"bucket": "big", "keys": ["a", "b", "never"]}),
    )
    .await;
    let got = ok(&t, "get-many", json!({"bucket": "big", "keys": ["a", "b"]})).await;
    assert_eq!(got, json!([null, null]));
}

//! State for packages: `wasi:keyvalue` from a real guest (`kv-probe`) on
//! the embedded store and on a real redis-server (started here; under
//! `CI=true` a missing one fails), grants, limits, TTLs, atomics, batches,
//! and the action cache. Durability under SIGKILL and the `kv` subcommand
//! are in `host/tests/kv_cli.rs` (they need the binary).

use std::time::Duration;

use serde_json::{Value, json};
use steedos_tests::{TestApp, eventually};

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

async fn suite(backend: Option<&str>) {
    let t = TestApp::start(&manifest(4, backend)).await;
    basics(&t).await;
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

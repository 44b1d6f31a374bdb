//! Packages in three languages in one app: examples/polyglot's `pricing`
//! (JavaScript), `reviews` (Python) and `storefront` (Rust), with
//! examples/shop's `inventory` (Rust). Calls with rich types in each
//! direction, typed and by name; events across languages; exceptions and
//! traps in JavaScript and Python, contained like a Rust trap; the compile
//! cache.
//!
//! The components are built once per run by the example's own build
//! commands (npm and componentize-js, a venv and componentize-py, cargo),
//! exactly as `steedos-wasm run examples/polyglot` builds them, and only
//! when out of date. Without node, npm or python3 these tests skip by the
//! rule of `tests/require.rs` (a failure under CI).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use steedos_tests::{TestApp, eventually, require};
use steedos_wasm::builder;
use steedos_wasm::context::{CallContext, CallError, Meta, ReplyMeta};
use steedos_wasm::engine::Compiled;
use steedos_wasm::manifest::Manifest;
use tokio::sync::OnceCell;

/// The example's packages, as a test app with every package's limits and
/// subscriptions from examples/polyglot/steedos.toml (one instance each, so
/// that `events-seen` sees every event).
const POLYGLOT: &str = r#"
[packages.inventory]
component = "{INVENTORY_WASM}"
[packages.pricing]
component = "{PRICING_WASM}"
events = ["review.*", "storefront.*"]
memory = "256 MiB"
[packages.pricing.grants]
calls = ["inventory.*"]
emits = ["price.*"]
[packages.reviews]
component = "{REVIEWS_WASM}"
events = ["price.*", "storefront.*"]
memory = "256 MiB"
[packages.reviews.grants]
calls = ["inventory.*", "pricing.quote"]
emits = ["review.*"]
[packages.storefront]
component = "{STOREFRONT_WASM}"
events = ["price.*", "review.*"]
[packages.storefront.grants]
calls = ["pricing.*", "reviews.*"]
emits = ["storefront.*"]
"#;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/polyglot")
}

/// The tools the example's build commands need, other than cargo.
const TOOLS: &[&str] = &["node", "npm", "python3"];

/// Builds the example's packages through their build commands, once; the
/// manifest for a test app with their components, or `None` to skip.
async fn polyglot() -> Option<&'static str> {
    // Each test that would skip says so, not only the first.
    if !require::tools(TOOLS) {
        return None;
    }
    static MANIFEST: OnceCell<Option<String>> = OnceCell::const_new();
    MANIFEST
        .get_or_init(|| async {
            let manifest = Manifest::load(&example()).expect("examples/polyglot/steedos.toml");
            assert!(manifest.rejected.is_empty(), "{:?}", manifest.rejected);
            let mut text = POLYGLOT.to_string();
            for spec in &manifest.packages {
                if let Err(e) = builder::build_if_needed(spec, false).await {
                    panic!("{e}");
                }
                let placeholder = format!("{{{}_WASM}}", spec.name.to_uppercase());
                text = text.replace(&placeholder, &spec.component.display().to_string());
            }
            assert!(
                !text.contains("_WASM}"),
                "a package is missing from the example:\n{text}"
            );
            // Compile once into the shared cache, rather than in every test
            // that starts first.
            drop(TestApp::start(&text).await);
            Some(text)
        })
        .await
        .as_deref()
}

/// Starts the example's packages in an app of their own, or `None` to skip.
async fn start() -> Option<TestApp> {
    Some(TestApp::start(polyglot().await?).await)
}

fn restarts(t: &TestApp, package: &str) -> u64 {
    t.app
        .broker
        .reports()
        .into_iter()
        .find(|r| r.name == package)
        .map_or(0, |r| r.restarts)
}

fn failed(r: Result<Value, CallError>) -> String {
    match r {
        Err(CallError::Failed(f)) => f.message,
        other => panic!("expected failed, got {other:?}"),
    }
}

fn crashed(r: Result<Value, CallError>) -> String {
    match r {
        Err(CallError::Crashed(m)) => m,
        other => panic!("expected crashed, got {other:?}"),
    }
}

/// Waits until `package`'s `events-seen` holds `event` from `source`; the
/// entry's summary.
async fn seen(t: &TestApp, package: &str, event: &str, source: &str) -> String {
    let action = format!("{package}.events-seen");
    let found = eventually(Duration::from_secs(10), || async {
        let all = t.ok(&action, json!({})).await;
        all.as_array()?
            .iter()
            .find(|e| e["event"] == event && e["source"] == source)
            .map(|e| e["summary"].as_str().unwrap_or_default().to_string())
    })
    .await;
    found.unwrap_or_else(|| panic!("{package} never saw {event} from {source}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_calls_javascript_typed_and_by_name_with_rich_types() {
    let Some(t) = start().await else { return };
    let lines = json!([{"sku": "apple", "qty": 2}, {"sku": "honey", "qty": 1}]);
    // storefront -> pricing through the typed import: a list of records and
    // an option in, a record holding a variant back (result ok).
    let receipt = t
        .ok(
            "storefront.checkout",
            json!({"lines": lines, "coupon": "SAVE10"}),
        )
        .await;
    assert_eq!(
        receipt,
        json!({"lines": ["Apple x 2", "Honey x 1"], "total-cents": 801, "discount": "10%"})
    );
    let receipt = t.ok("storefront.checkout", json!({"lines": lines})).await;
    assert_eq!(receipt["total-cents"], 890);
    assert_eq!(receipt["discount"], "none");
    // The same by name, MessagePack both ways.
    let receipt = t
        .ok(
            "storefront.checkout-dynamic",
            json!({"lines": [{"sku": "apple", "qty": 2}], "coupon": "MINUS100"}),
        )
        .await;
    assert_eq!(
        receipt,
        json!({"lines": ["Apple x 2"], "total-cents": 140, "discount": "100 cents"})
    );
    // JavaScript's error result reaches Rust as a value, either way.
    let m = failed(
        t.call(
            "storefront.checkout",
            json!({"lines": lines, "coupon": "BOGUS"}),
        )
        .await,
    );
    assert!(m.contains("unknown coupon `BOGUS`"), "{m}");
    let m = failed(
        t.call(
            "storefront.checkout-dynamic",
            json!({"lines": lines, "coupon": "BOGUS"}),
        )
        .await,
    );
    assert!(
        m.contains("pricing.quote") && m.contains("unknown coupon `BOGUS`"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_calls_python_typed_and_by_name_with_rich_types() {
    let Some(t) = start().await else { return };
    // storefront -> reviews.post through the typed import: a record holding
    // an enum and an option in, a u32 or a variant error back.
    assert_eq!(
        t.ok(
            "storefront.review",
            json!({"sku": "apple", "stars": 4, "text": "crisp"})
        )
        .await,
        1
    );
    assert_eq!(
        t.ok(
            "storefront.review",
            json!({"sku": "apple", "stars": 2, "text": "mealy"})
        )
        .await,
        2
    );
    let m = failed(
        t.call(
            "storefront.review",
            json!({"sku": "unicorn", "stars": 5, "text": "?"}),
        )
        .await,
    );
    assert!(m.contains("unknown sku `unicorn`"), "{m}");
    let m = failed(
        t.call(
            "storefront.review",
            json!({"sku": "apple", "stars": 5, "text": "  "}),
        )
        .await,
    );
    assert!(m.contains("needs some text"), "{m}");
    // reviews.summary: options of a float and of a record, typed and by name.
    let page = json!({
        "sku": "apple",
        "name": "Apple",
        "price-cents": 120,
        "reviews": 2,
        "average-stars": 3.0,
        "latest-review": "mealy",
    });
    assert_eq!(
        t.ok("storefront.product", json!({"sku": "apple"})).await,
        page
    );
    assert_eq!(
        t.ok("storefront.product-dynamic", json!({"sku": "apple"}))
            .await,
        page
    );
    let honey = t.ok("storefront.product", json!({"sku": "honey"})).await;
    assert_eq!(honey["average-stars"], Value::Null);
    assert_eq!(honey["latest-review"], Value::Null);
    let m = failed(
        t.call("storefront.product-dynamic", json!({"sku": "nope"}))
            .await,
    );
    assert!(
        m.contains("reviews.summary") && m.contains("unknown sku `nope`"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_calls_rust_typed_and_by_name() {
    let Some(t) = start().await else { return };
    // pricing -> inventory.get-item through the typed import: an option of a
    // record with a list, an option and a variant; u64 as BigInt in JS.
    let quote = t
        .ok(
            "pricing.quote",
            json!({"lines": [{"sku": "apple", "qty": 3}]}),
        )
        .await;
    assert_eq!(
        quote,
        json!({
            "lines": [{"sku": "apple", "name": "Apple", "qty": 3, "unit-cents": 120, "line-cents": 360}],
            "subtotal-cents": 360,
            "discount": "none",
            "total-cents": 360,
            "coupon": null,
        })
    );
    let quote = t
        .ok(
            "pricing.quote",
            json!({"lines": [{"sku": "apple", "qty": 3}], "coupon": "MINUS100"}),
        )
        .await;
    assert_eq!(quote["discount"], json!({"fixed-cents": 100}));
    assert_eq!(quote["total-cents"], 260);
    assert_eq!(quote["coupon"], "MINUS100");
    let quote = t
        .ok(
            "pricing.quote",
            json!({"lines": [{"sku": "honey", "qty": 2}], "coupon": "SAVE10"}),
        )
        .await;
    assert_eq!(quote["discount"], json!({"percent": 10}));
    assert_eq!(quote["total-cents"], 1170);
    // An item without a price (option none) and an unknown one.
    let m = failed(
        t.call(
            "pricing.quote",
            json!({"lines": [{"sku": "dodo", "qty": 1}]}),
        )
        .await,
    );
    assert!(m.contains("`dodo` has no price"), "{m}");
    let m = failed(
        t.call(
            "pricing.quote",
            json!({"lines": [{"sku": "unicorn", "qty": 1}]}),
        )
        .await,
    );
    assert!(m.contains("unknown sku `unicorn`"), "{m}");
    // pricing -> inventory.list-items by name: MessagePack maps back.
    let offers = t
        .ok("pricing.cheapest", json!({"tag": "fruit", "limit": 5}))
        .await;
    assert_eq!(
        offers,
        json!([
            {"sku": "pear", "name": "Pear", "price-cents": 90, "tags": ["fruit"]},
            {"sku": "apple", "name": "Apple", "price-cents": 120, "tags": ["fruit"]},
        ])
    );
    let offers = t.ok("pricing.cheapest", json!({"limit": 1})).await;
    assert_eq!(offers[0]["sku"], "pear");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_calls_rust_and_javascript_typed_and_by_name() {
    let Some(t) = start().await else { return };
    // reviews -> inventory.get-item through the typed import, then its own
    // variant error as the result.
    let review = json!({"sku": "pear", "stars": "five", "text": "juicy", "author": "ada"});
    assert_eq!(t.ok("reviews.post", json!({"review": review})).await, 1);
    let m = failed(
        t.call(
            "reviews.post",
            json!({"review": {"sku": "nope", "stars": "one", "text": "x"}}),
        )
        .await,
    );
    assert!(m.contains("unknown-sku") && m.contains("nope"), "{m}");
    let m = failed(
        t.call(
            "reviews.post",
            json!({"review": {"sku": "pear", "stars": "one", "text": ""}}),
        )
        .await,
    );
    assert!(m.contains("empty-text"), "{m}");
    let long = "x".repeat(501);
    let m = failed(
        t.call(
            "reviews.post",
            json!({"review": {"sku": "pear", "stars": "one", "text": long}}),
        )
        .await,
    );
    assert!(m.contains("too-long") && m.contains("500"), "{m}");
    // reviews.summary: inventory.get-item and pricing.quote (JavaScript) by name.
    let summary = t.ok("reviews.summary", json!({"sku": "pear"})).await;
    assert_eq!(
        summary,
        json!({
            "sku": "pear",
            "name": "Pear",
            "count": 1,
            "average": 5.0,
            "latest": {"sku": "pear", "stars": "five", "text": "juicy", "author": "ada"},
            "price-cents": 90,
        })
    );
    let dodo = t.ok("reviews.summary", json!({"sku": "dodo"})).await;
    assert_eq!(dodo["name"], "Dodo");
    assert_eq!(dodo["price-cents"], Value::Null);
    assert_eq!(dodo["average"], Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_dynamic_call_is_an_error_value_in_python() {
    let Some(manifest) = polyglot().await else {
        return;
    };
    // reviews may no longer call pricing: its dynamic call is denied.
    let granted = r#"calls = ["inventory.*", "pricing.quote"]"#;
    assert!(manifest.contains(granted));
    let t = TestApp::start(&manifest.replace(granted, r#"calls = ["inventory.*"]"#)).await;
    let m = failed(t.call("reviews.summary", json!({"sku": "apple"})).await);
    assert!(m.contains("pricing.quote: denied"), "{m}");
    // Nothing trapped; an item without a price needs no quote.
    assert_eq!(
        t.ok("reviews.summary", json!({"sku": "dodo"})).await["name"],
        "Dodo"
    );
    assert_eq!(restarts(&t, "reviews"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_cross_between_languages() {
    let Some(t) = start().await else { return };
    // JavaScript emits; Python and Rust handle.
    t.ok(
        "pricing.quote",
        json!({"lines": [{"sku": "honey", "qty": 1}]}),
    )
    .await;
    let summary = seen(&t, "reviews", "price.quoted", "pricing").await;
    assert!(
        summary.contains("honey") && summary.contains("650"),
        "{summary}"
    );
    seen(&t, "storefront", "price.quoted", "pricing").await;
    // Python emits; JavaScript and Rust handle.
    let review = json!({"sku": "apple", "stars": "three", "text": "fine"});
    t.ok("reviews.post", json!({"review": review})).await;
    let summary = seen(&t, "pricing", "review.posted", "reviews").await;
    assert!(
        summary.contains("apple") && summary.contains("\"stars\":3"),
        "{summary}"
    );
    seen(&t, "storefront", "review.posted", "reviews").await;
    // Rust emits; JavaScript and Python handle.
    t.ok("storefront.announce", json!({"message": "spring sale"}))
        .await;
    assert!(
        seen(&t, "pricing", "storefront.announced", "storefront")
            .await
            .contains("spring sale")
    );
    assert!(
        seen(&t, "reviews", "storefront.announced", "storefront")
            .await
            .contains("spring sale")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exception_in_javascript_or_python_fails_that_call_only() {
    let Some(t) = start().await else { return };
    t.ok(
        "reviews.post",
        json!({"review": {"sku": "honey", "stars": "four", "text": "sweet"}}),
    )
    .await;
    // Exceptions thrown inside the guest, turned into the action's error by
    // the idiom (`failsWith` in JavaScript, `raise Err(str(e))` in Python).
    let m = failed(
        t.call(
            "pricing.quote",
            json!({"lines": [{"sku": "apple", "qty": 0}]}),
        )
        .await,
    );
    assert!(m.contains("quantity must be at least 1"), "{m}");
    let m = failed(t.call("pricing.quote", json!({"lines": []})).await);
    assert!(m.contains("at least one line"), "{m}");
    let m = failed(t.call("reviews.summary", json!({"sku": "nope"})).await);
    assert!(m.contains("unknown sku `nope`"), "{m}");
    // Neither instance was replaced: the review is still there.
    assert_eq!(restarts(&t, "pricing"), 0);
    assert_eq!(restarts(&t, "reviews"), 0);
    assert_eq!(
        t.ok("reviews.summary", json!({"sku": "honey"})).await["count"],
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_uncaught_exception_traps_that_instance_only_with_its_message() {
    let Some(t) = start().await else { return };
    t.ok(
        "reviews.post",
        json!({"review": {"sku": "honey", "stars": "four", "text": "sweet"}}),
    )
    .await;

    let m = crashed(
        t.call("pricing.explode", json!({"message": "js boom"}))
            .await,
    );
    assert!(m.contains("uncaught JavaScript exception: js boom"), "{m}");
    let m = crashed(
        t.call("reviews.explode", json!({"message": "py boom"}))
            .await,
    );
    assert!(
        m.contains("uncaught Python exception: ValueError: py boom"),
        "{m}"
    );
    // A Rust caller gets the crash as a call-error value, not a trap.
    let text = t
        .ok(
            "storefront.provoke",
            json!({"action": "pricing.explode", "message": "again"}),
        )
        .await;
    assert!(
        text.as_str()
            .is_some_and(|s| s.starts_with("crashed:") && s.contains("again")),
        "{text}"
    );
    let text = t
        .ok(
            "storefront.provoke",
            json!({"action": "reviews.explode", "message": "again"}),
        )
        .await;
    assert!(
        text.as_str()
            .is_some_and(|s| s.starts_with("crashed:") && s.contains("ValueError: again")),
        "{text}"
    );

    // Everyone else kept serving; the trapped ones serve again, restarted
    // (the review held by the old Python instance is gone with it).
    assert_eq!(
        t.ok("inventory.get-item", json!({"sku": "apple"})).await["sku"],
        "apple"
    );
    assert!(t.ok("storefront.events-seen", json!({})).await.is_array());
    assert_eq!(
        t.ok(
            "pricing.quote",
            json!({"lines": [{"sku": "pear", "qty": 1}]})
        )
        .await["total-cents"],
        90
    );
    assert_eq!(
        t.ok("reviews.summary", json!({"sku": "honey"})).await["count"],
        0
    );
    assert!(restarts(&t, "pricing") >= 1 && restarts(&t, "reviews") >= 1);
    assert_eq!(restarts(&t, "storefront"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_memory_in_javascript_or_python_is_contained() {
    let Some(t) = start().await else { return };
    for package in ["pricing", "reviews"] {
        let action = format!("{package}.hog");
        let m = crashed(t.call(&action, json!({"mib": 1024})).await);
        assert!(
            m.contains("ran out of memory") && m.contains("256 MiB"),
            "{m}"
        );
        assert_eq!(t.ok(&action, json!({"mib": 8})).await, 8);
    }
    assert_eq!(
        t.ok("storefront.product", json!({"sku": "pear"})).await["name"],
        "Pear"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_start_loads_the_large_components_from_the_compile_cache() {
    let Some(first) = start().await else { return };
    drop(first);
    let Some(second) = start().await else { return };
    for loaded in &second.app.loaded {
        assert_eq!(loaded.compiled, Some(Compiled::Cached), "{}", loaded.name);
    }
    assert_eq!(second.app.loaded.len(), 4);
}

/// `steedos:package@0.2.0` from JavaScript and Python: each reads the
/// call's meta as a value (JSON types kept) and sets a key its caller
/// gets back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_and_python_read_meta_as_values_and_set_it_for_their_caller() {
    let Some(t) = start().await else { return };
    let sent = json!({ "user": { "id": "u1", "roles": ["admin"] }, "n": 5, "f": 1.5,
                       "yes": true, "none": null, "list": [1, "two"] });
    for (package, key) in [("pricing", "priced-by"), ("reviews", "reviewed-by")] {
        let mut ctx = CallContext::new(Duration::from_secs(30));
        ctx.meta = Meta::from_map(sent.as_object().cloned().unwrap_or_default());
        let reply = ReplyMeta::default();
        ctx.reply = Some(reply.clone());
        let action = format!("{package}.session");
        let seen = t
            .app
            .broker
            .call_json(&action, b"{}", ctx)
            .await
            .expect("session");
        let seen: Value = serde_json::from_str(seen.as_str().expect("JSON text")).expect("JSON");
        let mut want = sent.clone();
        want[key] = json!(package);
        assert_eq!(seen, want, "{package} read the meta typed");
        let back = reply.take().expect("the callee's meta came back");
        assert_eq!(back.get(key), Some(&json!(package)), "{package}");
        assert_eq!(back.get("user"), Some(&sent["user"]), "{package}");
    }
}

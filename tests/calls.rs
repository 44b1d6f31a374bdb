//! Calls between packages: typed imports and dynamic calls carrying rich
//! types, parameter checks at the boundary, unknown actions, the call
//! context, and call cycles.

use std::time::{Duration, Instant};

use serde_json::json;
use steedos_tests::TestApp;
use steedos_wasm::context::CallError;

const SHOP: &str = r#"
[packages.inventory]
component = "{INVENTORY}"
[packages.shop]
component = "{SHOP}"
[packages.shop.grants]
calls = ["inventory.*"]
emits = ["order.*"]
[packages.greeter]
component = "{GREETER}"
[packages.probe]
component = "{PROBE}"
[packages.probe.grants]
calls = ["inventory.*", "greeter.*", "tally.*"]
[packages.tally]
component = "{TALLY}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_smallest_call() {
    let t = TestApp::start(SHOP).await;
    assert_eq!(
        t.ok("greeter.hello", json!({"name": "Ada"})).await,
        json!("Hello, Ada!")
    );
    // By position too.
    assert_eq!(
        t.ok("greeter.hello", json!(["Grace"])).await,
        json!("Hello, Grace!")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_options_variants_and_lists_come_back_by_their_wit_types() {
    let t = TestApp::start(SHOP).await;
    let apple = t.ok("inventory.get-item", json!({"sku": "apple"})).await;
    assert_eq!(apple["sku"], "apple");
    assert_eq!(apple["qty"], 10);
    assert_eq!(apple["tags"], json!(["fruit"]));
    assert_eq!(apple["price-cents"], 120);
    assert_eq!(apple["status"], json!({"in-stock": 10}));
    let dodo = t.ok("inventory.get-item", json!({"sku": "dodo"})).await;
    assert_eq!(dodo["price-cents"], json!(null));
    assert_eq!(dodo["status"], json!("discontinued"));
    assert_eq!(
        t.ok("inventory.get-item", json!({"sku": "unicorn"})).await,
        json!(null)
    );
    // An option parameter may be left out.
    let all = t.ok("inventory.list-items", json!({})).await;
    assert!(all.as_array().is_some_and(|a| a.len() >= 3), "{all}");
    let fruit = t.ok("inventory.list-items", json!({"tag": "fruit"})).await;
    assert!(fruit.as_array().is_some_and(|a| {
        a.iter()
            .all(|i| i["tags"].as_array().unwrap().contains(&json!("fruit")))
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_actions_own_error_is_failed_with_its_value() {
    let t = TestApp::start(SHOP).await;
    let ok = t
        .ok("inventory.reserve", json!({"sku": "apple", "qty": 2}))
        .await;
    assert_eq!(ok["sku"], "apple");
    assert_eq!(ok["qty"], 2);
    match t
        .call("inventory.reserve", json!({"sku": "nope", "qty": 1}))
        .await
    {
        Err(CallError::Failed(m)) => {
            assert!(m.contains("unknown-sku") && m.contains("nope"), "{m}")
        }
        other => panic!("expected failed, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_import_and_dynamic_call_in_one_order() {
    let t = TestApp::start(SHOP).await;
    // shop reserves through the typed import and prices through dynamic calls.
    let receipt = t
        .ok(
            "shop.place-order",
            json!({"lines": [{"sku": "apple", "qty": 3}]}),
        )
        .await;
    let lines = receipt["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 1);
    assert_eq!(lines[0]["sku"], "apple");
    assert_eq!(lines[0]["unit-price-cents"], 120);
    assert_eq!(receipt["total-cents"], 360);
    // The typed import's error variant comes back through shop's own error.
    match t
        .call(
            "shop.place-order",
            json!({"lines": [{"sku": "apple", "qty": 1000}]}),
        )
        .await
    {
        Err(CallError::Failed(m)) => assert!(m.to_lowercase().contains("insufficient"), "{m}"),
        other => panic!("expected failed, got {other:?}"),
    }
    let quote = t
        .ok("shop.quote", json!({"lines": [{"sku": "apple", "qty": 2}]}))
        .await;
    assert_eq!(quote, json!(240));
}

/// `<via>.forward(action, params)`: a dynamic call made by the probe
/// package; `Ok` is the callee's result, `Err` the probe's error text
/// (which names the call-error case the probe received).
pub async fn forward(
    t: &TestApp,
    via: &str,
    action: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, String> {
    let r = t
        .call(
            &format!("{via}.forward"),
            json!({"action": action, "params-json": params.to_string()}),
        )
        .await;
    match r {
        Ok(serde_json::Value::String(text)) => {
            Ok(serde_json::from_str(&text).expect("probe returns JSON text"))
        }
        Ok(other) => panic!("probe.forward returned {other}"),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_calls_another_by_name_with_rich_types() {
    let t = TestApp::start(SHOP).await;
    let item = forward(&t, "probe", "inventory.get-item", json!({"sku": "pear"}))
        .await
        .expect("item");
    assert_eq!(item["status"], json!({"backorder": 7}));
    assert_eq!(item["qty"], 0);
    let e = forward(
        &t,
        "probe",
        "inventory.reserve",
        json!({"sku": "dodo", "qty": 1}),
    )
    .await
    .unwrap_err();
    assert!(e.contains("failed") && e.contains("discontinued"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_that_do_not_fit_never_enter_the_callee() {
    let t = TestApp::start(SHOP).await;
    match t.call("greeter.hello", json!({"name": 5})).await {
        Err(CallError::InvalidParams(m)) => {
            assert!(m.contains("greeter.hello") && m.contains("name"), "{m}")
        }
        other => panic!("expected invalid params, got {other:?}"),
    }
    match t.call("greeter.hello", json!({})).await {
        Err(CallError::InvalidParams(m)) => assert!(m.contains("name"), "{m}"),
        other => panic!("expected invalid params, got {other:?}"),
    }
    match t
        .call("inventory.reserve", json!({"sku": "apple", "qty": -1}))
        .await
    {
        Err(CallError::InvalidParams(m)) => assert!(m.contains("qty"), "{m}"),
        other => panic!("expected invalid params, got {other:?}"),
    }
    // tally records every call that reaches it: a rejected one must not.
    let _ = t
        .call("tally.record", json!({"event": 1, "instance": 2}))
        .await;
    let e = forward(
        &t,
        "probe",
        "tally.record",
        json!({"event": "x", "instance": "nope"}),
    )
    .await
    .unwrap_err();
    assert!(
        e.contains("invalid-params") && e.contains("instance"),
        "{e}"
    );
    assert_eq!(t.ok("tally.entries", json!({})).await, json!([]));
    let body = b"{not json";
    let e = t
        .app
        .broker
        .call_json(
            "greeter.hello",
            body,
            steedos_wasm::context::CallContext::new(Duration::from_secs(1)),
        )
        .await;
    assert!(matches!(e, Err(CallError::InvalidParams(_))), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_actions_and_packages_are_not_found() {
    let t = TestApp::start(SHOP).await;
    match t.call("greeter.goodbye", json!({})).await {
        Err(CallError::NotFound(m)) => assert!(m.contains("goodbye") && m.contains("hello"), "{m}"),
        other => panic!("expected not found, got {other:?}"),
    }
    assert!(matches!(
        t.call("nobody.hello", json!({})).await,
        Err(CallError::NotFound(_))
    ));
    assert!(matches!(
        t.call("no-dot", json!({})).await,
        Err(CallError::NotFound(_))
    ));
    let e = forward(&t, "probe", "greeter.goodbye", json!({}))
        .await
        .unwrap_err();
    assert!(e.contains("not-found") && e.contains("goodbye"), "{e}");
}

const CYCLE: &str = r#"
[packages.a]
component = "{PROBE}"
instances = INSTANCES_A
[packages.a.grants]
calls = ["b.*"]
[packages.b]
component = "{PROBE}"
[packages.b.grants]
calls = ["a.*"]
"#;

fn nested(action: &str, inner: serde_json::Value) -> serde_json::Value {
    json!({"action": action, "params-json": inner.to_string()})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_b_calls_a_without_deadlock_and_carries_the_context() {
    let t = TestApp::start(&CYCLE.replace("INSTANCES_A", "2")).await;
    // a.forward -> b.forward -> a.context: a serves twice, on two instances.
    let r = forward(&t, "a", "b.forward", nested("a.context", json!({})))
        .await
        .expect("a -> b -> a");
    // b.forward's own result is JSON text of a.context's result.
    let inner: serde_json::Value = serde_json::from_str(r.as_str().expect("text")).expect("json");
    // (request-id, caller, level, meta)
    assert_eq!(inner[1], "b");
    assert_eq!(inner[2], 3);
    assert!(inner[0].as_str().is_some_and(|id| !id.is_empty()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cycle_with_no_free_instance_fails_fast_instead_of_deadlocking() {
    let t = TestApp::start(&CYCLE.replace("INSTANCES_A", "1")).await;
    let started = Instant::now();
    let why = forward(&t, "a", "b.forward", nested("a.context", json!({})))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        why.contains("overloaded") && why.contains("deadlock") && why.contains("a -> b"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_call_depth_limit_stops_runaway_recursion() {
    let toml = format!(
        "[app]\ncache_dir = \"{{CACHE}}\"\nmax_call_depth = 3\n{}",
        CYCLE.replace("INSTANCES_A", "4")
    );
    let t = TestApp::start(&toml).await;
    let deep = nested(
        "a.forward",
        nested("b.forward", nested("a.context", json!({}))),
    );
    let text = forward(&t, "a", "b.forward", deep).await.unwrap_err();
    assert!(
        text.contains("call depth") && text.contains("limit of 3"),
        "{text}"
    );
}

const FRAGILE: &str = r#"
[packages.fragile]
component = "{FRAGILE}"
timeout = "500ms"
restart = { max = 100, within = "10s", backoff = "10ms" }
[packages.dependent]
component = "{DEPENDENT}"
timeout = "30s"
[packages.dependent.grants]
calls = ["fragile.*"]
"#;

/// `dependent.relay(text)`: what dependent's typed call to `fragile.echo`
/// got back, as text ("ok: .." or "err: <case>: ..").
async fn relay(t: &TestApp, text: &str) -> String {
    match t.ok("dependent.relay", json!({ "text": text })).await {
        serde_json::Value::String(s) => s,
        other => panic!("dependent.relay answered {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_import_declared_with_call_error_gets_the_error_case() {
    let t = TestApp::start(FRAGILE).await;
    assert_eq!(relay(&t, "hi").await, "ok: hi");
    // The callee's own error value passes through unchanged.
    assert_eq!(relay(&t, "fail:no stock").await, "err: failed: no stock");
    // A callee that traps is the importer's error value, never its trap.
    let trapped = relay(&t, "trap").await;
    assert!(trapped.starts_with("err: crashed: "), "{trapped}");
    // A callee that loops past its deadline: a timeout, as a value.
    assert_eq!(relay(&t, "loop").await, "err: timeout: ");
    // The importer never faulted; the callee was restarted and answers.
    let dependent = t.app.broker.service("dependent").expect("dependent");
    assert_eq!(dependent.report().restarts, 0, "{:?}", dependent.report());
    let again = steedos_tests::eventually(Duration::from_secs(20), || async {
        let answer = relay(&t, "again").await;
        (answer == "ok: again").then_some(answer)
    })
    .await;
    assert!(again.is_some(), "fragile answers again after its restarts");
    let fragile = t.app.broker.service("fragile").expect("fragile");
    assert!(fragile.report().restarts >= 2, "{:?}", fragile.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trap_behind_a_typed_import_without_an_error_case_fails_only_the_callers_call() {
    let t = TestApp::start(FRAGILE).await;
    assert_eq!(
        t.ok("dependent.relay-plain", json!({"text": "hi"})).await,
        json!("hi")
    );
    match t
        .call("dependent.relay-plain", json!({"text": "trap"}))
        .await
    {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains("fragile.plain"), "names the callee: {text}");
        }
        Ok(v) => panic!("a trapping callee answered {v}"),
    }
    // Both keep serving: the caller's next call goes through once the
    // callee is back.
    let again = steedos_tests::eventually(Duration::from_secs(20), || async {
        t.call("dependent.relay-plain", json!({"text": "again"}))
            .await
            .ok()
    })
    .await;
    assert_eq!(again, Some(json!("again")));
}

/// A package whose action takes a WIT `map<K, V>` loads and is called:
/// the engine has the component model's map type on, and the codec reads
/// a JSON object into the map.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_action_taking_a_wit_map_is_called_with_a_json_object() {
    let t = TestApp::start(
        r#"
[packages.maps]
component = "{FIXTURES}/map-sum.wat"
"#,
    )
    .await;
    assert_eq!(t.state("maps"), "serving", "{:?}", t.failure("maps"));
    let sum = t
        .ok("maps.sum", json!({ "m": { "a": 1, "b": 20, "c": 300 } }))
        .await;
    assert_eq!(sum, json!(321));
    assert_eq!(t.ok("maps.sum", json!({ "m": {} })).await, json!(0));
}

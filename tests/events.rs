//! Events: `emit` reaches one instance of each subscribing package,
//! `broadcast` every instance; payloads and the request id travel along.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::json;
use steedos_tests::{PROBE_QUEUE_OF_ONE, TestApp, eventually};

const LISTENERS: &str = r#"
[packages.probe]
component = "{PROBE}"
instances = 3
events = ["test.*"]
[packages.probe.grants]
calls = ["tally.*"]
emits = ["*"]
[packages.tally]
component = "{TALLY}"
[packages.deaf]
component = "{PROBE}"
events = ["other.*"]
[packages.deaf.grants]
calls = ["tally.*"]
emits = ["test.*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_reaches_one_instance_and_broadcast_reaches_every_instance() {
    let t = TestApp::start(LISTENERS).await;
    t.ok(
        "deaf.emit",
        json!({"event": "test.one", "payload-json": "{}"}),
    )
    .await;
    let got = t.tally_at_least(1, Duration::from_secs(5)).await;
    // Give a wrong second delivery time to show up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got2 = t.tally().await;
    assert_eq!(got2, got, "emit must deliver exactly once");
    assert_eq!(got[0].0, "test.one");

    t.ok("tally.reset", json!({})).await;
    t.ok(
        "deaf.broadcast",
        json!({"event": "test.all", "payload-json": "{}"}),
    )
    .await;
    let got = t.tally_at_least(3, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = {
        let again = t.tally().await;
        assert_eq!(
            again.len(),
            got.len(),
            "broadcast must deliver once per instance"
        );
        again
    };
    assert!(got.iter().all(|(e, _)| e == "test.all"));
    let instances: HashSet<u64> = got.iter().map(|(_, i)| *i).collect();
    assert_eq!(instances.len(), 3, "three different instances: {got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emitting_instance_of_a_subscriber_still_gets_its_broadcast() {
    // probe's instance that broadcasts is busy in that call; it must get
    // the event once it is free, not be skipped.
    let t = TestApp::start(LISTENERS).await;
    t.ok(
        "probe.broadcast",
        json!({"event": "test.self", "payload-json": "{}"}),
    )
    .await;
    let got = t.tally_at_least(3, Duration::from_secs(5)).await;
    let instances: HashSet<u64> = got.iter().map(|(_, i)| *i).collect();
    assert_eq!(instances.len(), 3, "{got:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_outside_a_subscription_are_not_delivered() {
    let t = TestApp::start(LISTENERS).await;
    t.ok(
        "probe.emit",
        json!({"event": "unrelated", "payload-json": "{}"}),
    )
    .await;
    t.ok(
        "probe.emit",
        json!({"event": "other.thing", "payload-json": "{}"}),
    )
    .await;
    // Only `deaf` subscribes to other.*.
    let got = t.tally_at_least(1, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.tally().await, got);
    assert_eq!(got[0].0, "other.thing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_placed_in_the_shop_reaches_the_audit_log() {
    let t = TestApp::start(
        r#"
[packages.inventory]
component = "{INVENTORY}"
[packages.shop]
component = "{SHOP}"
[packages.shop.grants]
calls = ["inventory.*"]
emits = ["order.*"]
[packages.audit]
component = "{AUDIT}"
events = ["order.*"]
"#,
    )
    .await;
    t.ok(
        "shop.place-order",
        json!({"lines": [{"sku": "apple", "qty": 1}]}),
    )
    .await;
    let recent = eventually(Duration::from_secs(5), || async {
        let r = t.ok("audit.recent", json!({})).await;
        (!r.as_array().expect("list").is_empty()).then_some(r)
    })
    .await
    .expect("audit saw the order");
    assert_eq!(recent[0]["event"], "order.placed");
    assert!(
        recent[0]["request-id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
}

/// Regression: a burst of events beyond the subscriber's queue used to be
/// dropped ("no instance available"); they now wait for room.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_beyond_the_subscribers_queue_loses_no_event() {
    let t = TestApp::start(PROBE_QUEUE_OF_ONE).await;
    const BURST: usize = 100;
    for _ in 0..BURST {
        t.app.broker.publish(
            "test.burst",
            vec![0xc0], // MessagePack nil
            false,
            steedos_wasm::context::CallContext::new(Duration::from_secs(5)),
        );
    }
    let got = t.tally_at_least(BURST, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(t.tally().await.len(), BURST, "each event exactly once");
    assert!(got.iter().all(|(e, _)| e == "test.burst"));
}

//! Protections around calls to actions served by another node: a package
//! calling a real Node.js Moleculer action over a real nats-server gets
//! its own `circuit`, `retry` and the fallback of its
//! `[packages.<caller>.actions."<package>.<action>"]` entry, as it does for
//! local actions. The Node side counts every call it receives, so retries
//! and a breaker failing fast are seen where they happen.
//!
//! Needs `nats-server`, node and `npm ci` in tests/moleculer, as
//! `cluster.rs` does; without them they skip by the rule of `tests/require.rs`.

use std::time::{Duration, Instant};

use serde_json::json;

use crate::calls::forward;
use crate::cluster::{Nats, Node, Peer, tools};

/// How many times `node-math.flaky` was called so far; sets its mode first
/// when one is given.
async fn flaky(peer: &Peer, mode: Option<&str>) -> u64 {
    let cmd = match mode {
        Some(mode) => json!({ "cmd": "flaky", "mode": mode }),
        None => json!({ "cmd": "flaky" }),
    };
    let r = peer.cmd(cmd).await;
    assert_eq!(r["ok"], true, "{r}");
    r["result"].as_u64().expect("a count")
}

/// A wasm node whose `probe` calls `node-math.*` under `protections`.
async fn node(nats: &str, protections: &str) -> Node {
    let packages = format!(
        r#"
[packages.greeter]
component = "{{GREETER}}"
[packages.probe]
component = "{{PROBE}}"
timeout = "1s"
{protections}
[packages.probe.grants]
calls = ["node-math.*", "greeter.*"]
"#
    );
    Node::start(nats, "wasm-protect", 5, "json", &packages).await
}

/// A retried call to a Node action that throws a retryable error reaches
/// Node `1 + retry.max` times, then the caller's fallback answers; when
/// the Node service goes away, the fallback answers as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_action_is_retried_then_its_fallback_answers_even_when_its_node_goes_away() {
    let Some((nats_bin, peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let protections = r#"retry = { max = 2, delay = "20ms", max_delay = "100ms" }
[packages.probe.actions."node-math.flaky"]
idempotent = true
fallback = "greeter.hello"
"#;
    let node = node(&nats.url, protections).await;
    let peer = Peer::start(&peers, "15", &nats.url, "node-flaky", "node-watch").await;
    node.wait_for("node-math.flaky").await;
    let params = json!({ "name": "Ada" });

    assert_eq!(
        forward(&node.t, "probe", "node-math.flaky", params.clone()).await,
        Ok(json!("ok"))
    );
    assert_eq!(flaky(&peer, Some("throw")).await, 1);
    assert_eq!(
        forward(&node.t, "probe", "node-math.flaky", params.clone()).await,
        Ok(json!("Hello, Ada!")),
        "the fallback answers once the retries are spent"
    );
    assert_eq!(
        flaky(&peer, None).await,
        1 + 3,
        "one call and two retries reached Node"
    );

    // The Node service goes away: the fallback still answers.
    peer.stop().await;
    let gone = steedos_tests::eventually(Duration::from_secs(15), || async {
        let r = node.t.app.broker.remote_params("node-math.flaky");
        r.is_none().then_some(())
    })
    .await;
    assert!(gone.is_some(), "node-math.flaky was never forgotten");
    assert_eq!(
        forward(&node.t, "probe", "node-math.flaky", params).await,
        Ok(json!("Hello, Ada!")),
        "the fallback answers when no node serves the action"
    );
    node.stop().await;
}

/// Calls to a Node action that times out open the caller's circuit after
/// its threshold: then calls fail at once, never reaching Node, until a
/// probe after `half_open_after` succeeds and closes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_action_that_times_out_opens_the_callers_circuit_which_fails_fast() {
    let Some((nats_bin, peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let protections =
        r#"circuit = { threshold = 0.5, min_calls = 3, window = "60s", half_open_after = "1s" }"#;
    let node = node(&nats.url, protections).await;
    let peer = Peer::start(&peers, "15", &nats.url, "node-slow", "node-watch").await;
    node.wait_for("node-math.flaky").await;
    assert_eq!(flaky(&peer, Some("slow")).await, 0);
    for _ in 0..3 {
        let e = forward(&node.t, "probe", "node-math.flaky", json!({}))
            .await
            .expect_err("times out");
        assert!(e.contains("timeout"), "{e}");
    }
    assert_eq!(flaky(&peer, None).await, 3);
    let report = node.t.app.broker.service("probe").expect("probe").report();
    assert_eq!(
        report.circuits,
        vec![("node-math.flaky".to_string(), "open")],
        "the open circuit shows in the caller's report"
    );
    let started = Instant::now();
    let e = forward(&node.t, "probe", "node-math.flaky", json!({}))
        .await
        .expect_err("fails fast");
    assert!(
        e.contains("overloaded") && e.contains("circuit open"),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "an open circuit fails before the call's timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        flaky(&peer, None).await,
        3,
        "an open circuit never reaches Node"
    );

    // After `half_open_after`, one probe goes through; its success closes it.
    flaky(&peer, Some("ok")).await;
    let closed = steedos_tests::eventually(Duration::from_secs(10), || async {
        let r = forward(&node.t, "probe", "node-math.flaky", json!({})).await;
        (r == Ok(json!("ok"))).then_some(())
    })
    .await;
    assert!(closed.is_some(), "the circuit never closed again");
    assert_eq!(
        flaky(&peer, None).await,
        4,
        "exactly one probe reached Node"
    );
    peer.stop().await;
    node.stop().await;
}

/// A wasm node whose gateway exposes `node-math.*` under `protections`
/// (keys of `[gateway]`), with its running gateway's base URL.
async fn gateway_node(
    nats: &str,
    protections: &str,
) -> (Node, steedos_wasm::gateway::RunningGateway, String) {
    let manifest = format!(
        r#"
[gateway]
expose = ["node-math.*"]
{protections}
[packages.greeter]
component = "{{GREETER}}"
"#
    );
    let node = Node::start(nats, "wasm-gw-protect", 5, "json", &manifest).await;
    let (gateway, base) = node.t.gateway().await;
    (node, gateway, base)
}

/// `POST <base>/api/node-math/flaky` with `body`: the status and the JSON answer.
async fn post_flaky(base: &str, body: &serde_json::Value) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .post(format!("{base}/api/node-math/flaky"))
        .json(body)
        .send()
        .await
        .expect("the gateway answers");
    let status = r.status().as_u16();
    (status, r.json().await.expect("a JSON answer"))
}

/// A call from outside (HTTP) to an action on another node gets the
/// retries and the fallback of `[gateway]`, as a package's call does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_call_to_a_remote_action_is_retried_then_its_fallback_answers() {
    let Some((nats_bin, peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let protections = r#"retry = { max = 2, delay = "20ms", max_delay = "100ms" }
[gateway.actions."node-math.flaky"]
idempotent = true
fallback = "greeter.hello"
"#;
    let (node, gateway, base) = gateway_node(&nats.url, protections).await;
    let peer = Peer::start(&peers, "15", &nats.url, "node-flaky-gw", "node-watch").await;
    node.wait_for("node-math.flaky").await;
    let params = json!({ "name": "Ada" });
    assert_eq!(post_flaky(&base, &params).await, (200, json!("ok")));
    assert_eq!(flaky(&peer, Some("throw")).await, 1);
    assert_eq!(
        post_flaky(&base, &params).await,
        (200, json!("Hello, Ada!")),
        "the fallback answers once the retries are spent"
    );
    assert_eq!(
        flaky(&peer, None).await,
        1 + 3,
        "one call and two retries reached Node"
    );
    gateway.shutdown(Duration::from_secs(1)).await;
    peer.stop().await;
    node.stop().await;
}

/// Calls from outside to a failing action on another node open the
/// gateway's circuit for it: then they fail at once (503), never reaching
/// Node, until a probe after `half_open_after` succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_call_to_a_failing_remote_action_opens_the_gateways_circuit() {
    let Some((nats_bin, peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let protections =
        r#"circuit = { threshold = 0.5, min_calls = 3, window = "60s", half_open_after = "1s" }"#;
    let (node, gateway, base) = gateway_node(&nats.url, protections).await;
    let peer = Peer::start(&peers, "15", &nats.url, "node-circuit-gw", "node-watch").await;
    node.wait_for("node-math.flaky").await;
    assert_eq!(flaky(&peer, Some("throw")).await, 0);
    for _ in 0..3 {
        let (status, body) = post_flaky(&base, &json!({})).await;
        assert!(status >= 500, "{status} {body}");
    }
    assert_eq!(flaky(&peer, None).await, 3);
    let (status, body) = post_flaky(&base, &json!({})).await;
    assert_eq!(status, 503, "{body}");
    assert!(body.to_string().contains("circuit open"), "{body}");
    assert_eq!(
        flaky(&peer, None).await,
        3,
        "an open circuit never reaches Node"
    );

    flaky(&peer, Some("ok")).await;
    let closed = steedos_tests::eventually(Duration::from_secs(10), || async {
        (post_flaky(&base, &json!({})).await == (200, json!("ok"))).then_some(())
    })
    .await;
    assert!(closed.is_some(), "the circuit never closed again");
    assert_eq!(
        flaky(&peer, None).await,
        4,
        "exactly one probe reached Node"
    );
    gateway.shutdown(Duration::from_secs(1)).await;
    peer.stop().await;
    node.stop().await;
}

/// A Node action's own error answers HTTP with its Moleculer `code`, as a
/// local action's error value naming a `status` does (carried as data).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_actions_own_error_answers_its_code_over_http() {
    let Some((nats_bin, peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let (node, gateway, base) = gateway_node(&nats.url, "").await;
    let peer = Peer::start(&peers, "15", &nats.url, "node-fail-gw", "node-watch").await;
    node.wait_for("node-math.fail").await;
    let r = reqwest::Client::new()
        .post(format!("{base}/api/node-math/fail"))
        .body("{}")
        .send()
        .await
        .expect("the gateway answers");
    let status = r.status().as_u16();
    let body: serde_json::Value = r.json().await.expect("a JSON answer");
    assert_eq!(status, 418, "{body}");
    assert_eq!(body["error"]["kind"], "failed", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("the teapot refuses")),
        "{body}"
    );
    gateway.shutdown(Duration::from_secs(1)).await;
    peer.stop().await;
    node.stop().await;
}

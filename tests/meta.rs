//! `steedos:package@0.2.0`'s meta as values (issue 15, item 1): meta keeps
//! its JSON types on every hop (package -> package, Node.js -> package ->
//! Node.js, over NATS and Redis, with real Moleculer 0.14 and 0.15), call
//! options carry meta to the callee, reply meta merges back into a package
//! caller and into a Node.js caller, `parentID` links each hop to the one
//! before, context ids are UUIDs unique across nodes, a package built
//! against 0.1.0 still loads (its meta adapted to string pairs), and bad
//! meta gets a clear error while the host keeps serving.

use std::collections::HashSet;
use std::time::Duration;

use serde_json::{Value, json};
use steedos_tests::{TestApp, eventually};
use steedos_wasm::context::{CallContext, Meta};

use crate::cluster::{Bus, Node, Peer, Server, peers_on};

/// Meta of every JSON type: what must arrive as it was sent.
fn typed_meta() -> Value {
    json!({
        "user": { "id": "u1", "roles": ["admin", "user"], "spaceId": null },
        "n": 5, "neg": -3, "f": 1.5, "yes": true, "no": false, "none": null,
        "list": [1, "two", false, null, { "k": "v" }], "s": "5"
    })
}

fn meta_of(value: &Value) -> Meta {
    Meta::from_map(value.as_object().cloned().unwrap_or_default())
}

fn json_text(v: &Value) -> Value {
    serde_json::from_str(v.as_str().expect("JSON text")).expect("JSON")
}

fn is_uuid(v: &Value) -> bool {
    v.as_str()
        .and_then(|s| uuid::Uuid::try_parse(s).ok())
        .is_some_and(|u| u.get_version_num() == 4)
}

const PAIR: &str = r#"
[packages.a]
component = "{PROBE}"
[packages.a.grants]
calls = ["b.*"]
emits = ["old.*"]
[packages.b]
component = "{PROBE}"
[packages.b.grants]
calls = ["a.*"]
"#;

/// `a.forward-with` calling `action` with `params` under `options`: its
/// answer (`reply`, `meta` after, `id`, `parent`).
async fn forward_with(
    t: &TestApp,
    ctx: CallContext,
    action: &str,
    params: Value,
    options: Value,
) -> Result<Value, String> {
    let body = json!({ "action": action, "params-json": params.to_string(), "options-json": options.to_string() });
    let body = serde_json::to_vec(&body).expect("json");
    t.app
        .broker
        .call_json("a.forward-with", &body, ctx)
        .await
        .map(|v| json_text(&v))
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_keeps_its_types_from_package_to_package_and_reply_meta_merges_back() {
    let t = TestApp::start(PAIR).await;
    let mut ctx = CallContext::new(Duration::from_secs(10));
    ctx.meta = meta_of(&typed_meta());
    // a calls b.set-meta with meta of its own on the call: b sees the
    // caller's meta with the call's over it, every value with its type.
    let set = json!({ "meta-json": json!({ "fromB": { "n": 2, "ok": true, "none": null } }).to_string() });
    let answer = forward_with(
        &t,
        ctx.clone(),
        "b.set-meta",
        set,
        json!({ "meta": { "extra": [1, { "x": false }], "n": 6 } }),
    )
    .await
    .expect("a -> b.set-meta");
    let seen_by_b = json_text(&answer["reply"]);
    let mut want = typed_meta();
    want["extra"] = json!([1, { "x": false }]);
    want["n"] = json!(6);
    want["fromB"] = json!({ "n": 2, "ok": true, "none": null });
    assert_eq!(seen_by_b, want, "b's meta after set-meta");
    // b's meta came back merged into a's (Moleculer's reply meta).
    assert_eq!(answer["meta"], want, "a's meta after the call: {answer}");
    // Each hop's parent is the hop before.
    let answer = forward_with(&t, ctx.clone(), "b.context", json!({}), json!({}))
        .await
        .expect("a -> b.context");
    let b = &answer["reply"];
    assert_eq!(b[5], answer["id"], "b's parent is a's context: {answer}");
    assert!(is_uuid(&b[4]) && is_uuid(&answer["id"]), "{answer}");
    assert_ne!(b[4], answer["id"]);
    // An outside call's context is a's own: a root, no parent.
    assert_eq!(answer["id"], json!(ctx.id.to_string()), "{answer}");
    assert_eq!(answer["parent"], Value::Null, "{answer}");
    assert_eq!(
        json_text(&b[3]),
        typed_meta(),
        "meta with no options passes on as it is"
    );
    // Nothing set, nothing merged: a's meta is the caller's.
    assert_eq!(answer["meta"], typed_meta());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_meta_gets_a_clear_error_and_the_host_keeps_serving() {
    let t = TestApp::start(PAIR).await;
    let set = |meta: &str| json!({ "meta-json": meta });
    for (meta, why) in [
        (
            "[1, 2]",
            "meta must be an object (a MessagePack map), not an array",
        ),
        (
            "5",
            "meta must be an object (a MessagePack map), not a number",
        ),
        ("null", "not nil"),
    ] {
        let e = t.call("a.set-meta", set(meta)).await.expect_err(meta);
        let text = e.to_string();
        assert!(
            text.contains("package `a`: set-meta") && text.contains(why),
            "{meta}: {text}"
        );
    }
    let big = json!({ "blob": "x".repeat(70 * 1024) }).to_string();
    let e = t
        .call("a.set-meta", set(&big))
        .await
        .expect_err("too large");
    assert!(e.to_string().contains("over the limit of 65536"), "{e}");
    // Growing past the limit a piece at a time is refused too: the
    // caller's meta and the call's, merged.
    let mut ctx = CallContext::new(Duration::from_secs(5));
    ctx.meta = meta_of(&json!({ "one": "y".repeat(40 * 1024) }));
    let options = json!({ "meta": { "two": "z".repeat(40 * 1024) } });
    let e = forward_with(&t, ctx, "b.context", json!({}), options)
        .await
        .expect_err("merged too large");
    assert!(
        e.contains("package `a` calling `b.context`: options: meta is")
            && e.contains("over the limit"),
        "{e}"
    );
    for (bytes, why) in [
        (vec![0xc1], "not MessagePack"),
        (vec![0x81, 0x01, 0x02], "not MessagePack"),
        (vec![0xc4, 1, 0], "not MessagePack"),
    ] {
        let e = t
            .call("a.set-meta-raw", json!({ "bytes": bytes }))
            .await
            .expect_err("malformed");
        assert!(
            e.to_string().contains(why) && e.to_string().contains("package `a`"),
            "{e}"
        );
    }
    let e = forward_with(
        &t,
        CallContext::new(Duration::from_secs(5)),
        "b.context",
        json!({}),
        json!({ "meta": [1] }),
    )
    .await
    .expect_err("options meta not an object");
    assert!(
        e.contains("package `a` calling `b.context`: options: meta must be an object"),
        "{e}"
    );
    let e = forward_with(
        &t,
        CallContext::new(Duration::from_secs(5)),
        "b.context",
        json!({}),
        json!({ "retries": 1000 }),
    )
    .await
    .expect_err("too many retries");
    assert!(e.contains("retries is 1000, over the limit of 16"), "{e}");
    // Still serving, and a's own meta untouched by what was refused.
    let ctx = t.ok("a.context", json!({})).await;
    assert_eq!(json_text(&ctx[3]), json!({}));
    assert_eq!(t.state("a"), "serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_s_timeout_option_bounds_it() {
    let toml = r#"
[packages.a]
component = "{PROBE}"
timeout = "20s"
[packages.a.grants]
calls = ["chaos.*"]
[packages.chaos]
component = "{CHAOS}"
timeout = "10s"
"#;
    let t = TestApp::start(toml).await;
    let started = std::time::Instant::now();
    let body = json!({ "action": "chaos.spin", "params-json": "{}", "options-json": json!({ "timeout-ms": 300 }).to_string() });
    let e = t.call("a.forward-with", body).await.expect_err("times out");
    assert!(e.to_string().contains("timeout"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
}

const OLD_AND_NEW: &str = r#"
[packages.legacy]
component = "{LEGACY}"
events = ["old.*"]
[packages.legacy.grants]
calls = ["a.*"]
[packages.a]
component = "{PROBE}"
[packages.a.grants]
emits = ["old.*"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_built_against_0_1_0_still_loads_with_meta_as_string_pairs() {
    let t = TestApp::start(OLD_AND_NEW).await;
    assert_eq!(t.state("legacy"), "serving");
    let mut ctx = CallContext::new(Duration::from_secs(10));
    ctx.meta = meta_of(&json!({ "n": 5, "s": "x", "o": { "a": [1] }, "b": true }));
    let pairs = t
        .app
        .broker
        .call_json("legacy.meta", b"{}", ctx.clone())
        .await
        .expect("legacy.meta");
    assert_eq!(
        pairs,
        json!([["b", "true"], ["n", "5"], ["o", "{\"a\":[1]}"], ["s", "x"]])
    );
    // Its 0.1.0 broker.call works.
    let n = t
        .app
        .broker
        .call_json("legacy.call", br#"{"action":"a.context"}"#, ctx.clone())
        .await;
    assert!(
        n.as_ref().is_ok_and(|v| v.as_u64().is_some_and(|n| n > 0)),
        "{n:?}"
    );
    // Its 0.1.0 event handler gets the emitter's meta as pairs.
    let body = json!({ "event": "old.news", "payload-json": "{}" });
    t.app
        .broker
        .call_json("a.emit", &serde_json::to_vec(&body).expect("json"), ctx)
        .await
        .expect("emit");
    let last = eventually(Duration::from_secs(10), || async {
        let v = t.ok("legacy.last-event", json!({})).await;
        (!v.is_null()).then_some(v)
    })
    .await
    .expect("the 0.1.0 handler got the event");
    assert_eq!(last[0], "old.news");
    assert!(
        last[1]
            .as_array()
            .is_some_and(|p| p.contains(&json!(["n", "5"]))),
        "{last}"
    );
}

// ------------------------------------------------------------ the cluster

const CLUSTER_PACKAGES: &str = r#"
[packages.probe]
component = "{PROBE}"
[packages.probe.grants]
calls = ["objectql.*", "node-math.*"]
"#;

/// Meta over the bus with real Moleculer nodes of `release`.
async fn meta_across(release: &str, protocol: u8, bus: Bus) {
    let Some(peers) = peers_on(bus) else { return };
    let Some(server) = Server::start(bus).await else {
        return;
    };
    let url = server.url();
    let node = Node::start(url, "wasm-1", protocol, "json", CLUSTER_PACKAGES).await;
    let node2 = Node::start(url, "wasm-2", protocol, "json", CLUSTER_PACKAGES).await;
    let peer = Peer::start(&peers, release, url, "node-a", "node-watch").await;
    let r = peer.cmd(json!({ "cmd": "objectql" })).await;
    assert_eq!(r["ok"], true, "{r}");
    let r = peer
        .cmd(json!({ "cmd": "wait", "services": ["probe"] }))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    node.wait_for("objectql.find").await;
    node2.wait_for("objectql.find").await;

    // Node.js -> package: meta arrives with its JSON types.
    let r = peer.cmd(json!({ "cmd": "callMeta", "action": "probe.context", "params": {}, "meta": typed_meta() })).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(json_text(&r["result"]["result"][3]), typed_meta(), "{r}");

    // Node.js -> package -> Node.js (objectql): the package's call meta
    // reaches objectql typed, objectql's reply meta comes back into the
    // package and, through our RES, into the Node.js action that called.
    let find = json!({ "action": "objectql.find", "params-json": "{\"objectName\":\"accounts\"}",
                       "options-json": json!({ "meta": { "extra": { "deep": [true, null, 2.5] } } }).to_string() });
    let r = peer
        .cmd(json!({ "cmd": "call", "action": "node-math.relayMeta",
                     "params": { "action": "probe.forward-with", "params": find, "meta": typed_meta() } }))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let relay = &r["result"];
    let probe = json_text(&relay["result"]);
    assert_eq!(
        probe["reply"],
        json!([{ "_id": "a1", "name": "Acme" }]),
        "{probe}"
    );
    let reply_meta = json!({ "found": 1, "ok": true, "none": null, "list": [1, "a"] });
    assert_eq!(
        probe["meta"]["objectql"], reply_meta,
        "objectql's meta merged into the package's: {probe}"
    );
    assert_eq!(probe["meta"]["count"], 7, "{probe}");
    assert_eq!(
        relay["meta"]["objectql"], reply_meta,
        "and into the Node.js caller's: {relay}"
    );
    assert_eq!(
        relay["meta"]["extra"],
        json!({ "deep": [true, null, 2.5] }),
        "{relay}"
    );
    assert_eq!(relay["meta"]["user"], typed_meta()["user"], "{relay}");
    let seen = peer.cmd(json!({ "cmd": "seen" })).await;
    let first = &seen["result"][0];
    let mut want = typed_meta();
    want["extra"] = json!({ "deep": [true, null, 2.5] });
    assert_eq!(first["meta"], want, "objectql saw the meta typed: {first}");
    // Each hop's parentID is the previous hop's context id.
    assert_eq!(
        probe["parent"], relay["id"],
        "the package's parent is node-math.relayMeta: {probe} {relay}"
    );
    assert_eq!(
        first["parentID"], probe["id"],
        "objectql's parent is the package's context: {first} {probe}"
    );
    assert_eq!(first["level"], 3, "{first}");
    assert_eq!(first["caller"], "probe", "{first}");
    assert!(
        is_uuid(&probe["id"]) && is_uuid(&first["id"]),
        "{probe} {first}"
    );

    // A package sets meta; the Node.js caller gets it back typed.
    let set = json!({ "meta-json": json!({ "k": 5, "b": false, "o": { "z": null } }).to_string() });
    let r = peer.cmd(json!({ "cmd": "callMeta", "action": "probe.set-meta", "params": set, "meta": { "t": "acme" } })).await;
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        r["result"]["meta"],
        json!({ "t": "acme", "k": 5, "b": false, "o": { "z": null } }),
        "{r}"
    );

    // Context ids are UUIDs, unique across two nodes.
    for n in [&node, &node2] {
        for _ in 0..5 {
            let body =
                json!({ "action": "objectql.find", "params-json": "{}", "options-json": "{}" });
            let body = serde_json::to_vec(&body).expect("json");
            n.t.app
                .broker
                .call_json(
                    "probe.forward-with",
                    &body,
                    CallContext::new(Duration::from_secs(10)),
                )
                .await
                .expect("forward-with");
        }
    }
    let seen = peer.cmd(json!({ "cmd": "seen" })).await;
    let seen = seen["result"].as_array().expect("seen").clone();
    assert_eq!(seen.len(), 11, "{seen:?}");
    let ids: HashSet<String> = seen[1..]
        .iter()
        .map(|s| s["id"].as_str().unwrap_or("").to_string())
        .collect();
    let parents: HashSet<String> = seen[1..]
        .iter()
        .map(|s| s["parentID"].as_str().unwrap_or("").to_string())
        .collect();
    let requests: HashSet<String> = seen[1..]
        .iter()
        .map(|s| s["requestID"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(
        (ids.len(), parents.len(), requests.len()),
        (10, 10, 10),
        "{seen:?}"
    );
    assert!(
        seen[1..]
            .iter()
            .all(|s| is_uuid(&s["id"]) && is_uuid(&s["parentID"]) && is_uuid(&s["requestID"])),
        "{seen:?}"
    );

    // The node-id option sends the call to that node.
    let body = json!({ "action": "objectql.find", "params-json": "{}", "options-json": json!({ "node-id": "nowhere" }).to_string() });
    let e = node
        .t
        .call("probe.forward-with", body)
        .await
        .expect_err("no such node");
    assert!(e.to_string().contains("not-found"), "{e}");
    let body = json!({ "action": "objectql.find", "params-json": "{}", "options-json": json!({ "node-id": "node-a" }).to_string() });
    node.t
        .call("probe.forward-with", body)
        .await
        .expect("node-a serves it");

    node.stop().await;
    node2.stop().await;
    peer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_values_cross_to_moleculer_0_15_and_back_over_nats() {
    meta_across("15", 5, Bus::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_values_cross_to_moleculer_0_14_and_back_over_nats() {
    meta_across("14", 4, Bus::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn meta_values_cross_to_moleculer_0_14_and_back_over_redis() {
    meta_across("14", 4, Bus::Redis).await;
}

//! A steedos-wasm node seen by a Steedos-shaped Moleculer 0.14 node
//! (`tests/moleculer/steedos-peer.js`) over a real nats-server: action
//! properties in INFO (Steedos' trigger scan finds a Wasm trigger and its
//! error rejects an insert; moleculer-web's `autoAliases` routes a Wasm
//! action's `rest`), `visibility` honoured, `$node` answered for the Wasm
//! node, and `dependencies` holding `started` until a service appears.
//!
//! Needs what `tests/cluster.rs` needs (nats-server, node, `npm ci` in
//! tests/moleculer, moleculer-web among its packages).

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use steedos_tests::eventually;
use steedos_wasm::app::{App, LoadOptions};
use steedos_wasm::context::CallError;
use steedos_wasm::manifest::Manifest;
use steedos_wasm::transport::Transport;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, oneshot};

use crate::cluster::{Nats, Node, tools};

/// The Steedos-shaped Moleculer node, driven over stdin/stdout.
struct SteedosPeer {
    child: tokio::process::Child,
    stdin: Mutex<tokio::process::ChildStdin>,
    waiting: Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    next: AtomicU64,
}

impl SteedosPeer {
    async fn start(dir: &Path, nats: &str, node_id: &str, http_port: u16) -> SteedosPeer {
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("steedos-peer.js"))
            .current_dir(dir)
            .env("NATS_URL", nats)
            .env("NODE_ID", node_id)
            .env("HTTP_PORT", http_port.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node steedos-peer.js");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let waiting: Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Arc::default();
        let (ready_tx, ready) = oneshot::channel();
        let w = waiting.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                if v.get("ready").is_some() {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(v);
                    }
                } else if let Some(id) = v.get("id").and_then(Value::as_u64)
                    && let Some(tx) = w.lock().expect("lock").remove(&id)
                {
                    let _ = tx.send(v);
                }
            }
        });
        // Node's start, not ours: generous (see `Peer::start` in cluster.rs).
        let ready = tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .expect("the Node.js steedos-peer printed ready within 60 s")
            .expect("steedos-peer ready");
        assert_eq!(ready["protocol"], "4", "moleculer 0.14 speaks protocol 4");
        SteedosPeer {
            child,
            stdin: Mutex::new(stdin),
            waiting,
            next: AtomicU64::new(1),
        }
    }

    async fn cmd(&self, mut command: Value) -> Value {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        command["id"] = json!(id);
        let (tx, rx) = oneshot::channel();
        self.waiting.lock().expect("lock").insert(id, tx);
        let line = format!("{command}\n");
        self.stdin
            .lock()
            .await
            .write_all(line.as_bytes())
            .await
            .expect("write to steedos-peer");
        tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .expect("steedos-peer answered in time")
            .expect("steedos-peer answered")
    }

    async fn call(&self, action: &str, params: Value, opts: Value) -> Result<Value, Value> {
        let r = self
            .cmd(json!({ "cmd": "call", "action": action, "params": params, "opts": opts }))
            .await;
        match r["ok"].as_bool() {
            Some(true) => Ok(r["result"].clone()),
            _ => Err(r["error"].clone()),
        }
    }

    /// Asks the peer's broker to stop (a clean leave, DISCONNECT sent) and
    /// waits for the process to exit; one still running after 30 s is
    /// killed as it is dropped. Clean-up: a broker slow to stop on a loaded
    /// machine is not a failure of the test that used it.
    async fn stop(mut self) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let line = format!("{}\n", json!({ "cmd": "stop", "id": id }));
        let _ = self.stdin.lock().await.write_all(line.as_bytes()).await;
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// `accounts` as a Steedos package: a before-insert trigger, a REST route,
/// an action the cluster must not see, one only the package may call.
const ACCOUNTS: &str = r#"
[packages.accounts]
component = "{ACCOUNTS}"
settings = { object = "accounts", limits = { max = 10 } }
[packages.accounts.actions.before-insert]
trigger = { listenTo = "accounts", when = ["beforeInsert"] }
rest = "POST /before-insert"
visibility = "public"
[packages.accounts.actions.hello]
rest = "GET /hello/:name"
x-owner = "team-a"
[packages.accounts.actions.started-with]
visibility = "private"
[packages.versioned]
component = "{GREETER}"
version = 2
[packages.probe]
component = "{PROBE}"
[packages.probe.grants]
calls = ["$node.*", "accounts.*"]
"#;

/// Steedos' trigger scan over the registry finds the Wasm trigger by its
/// `trigger` property and calls it before an insert; the trigger's error
/// rejects the insert at the caller. moleculer-web's `autoAliases` routes
/// the Wasm action's `rest` (and not a `public` one's); a versioned
/// package is `v2.greeter` to the cluster; `private` is not there for a
/// node, nor for the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steedos_finds_a_wasm_trigger_and_moleculer_web_routes_its_rest() {
    let Some((nats_bin, peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let http = free_port();
    let peer = SteedosPeer::start(&peers, &nats.url, "steedos-1", http).await;
    let node = Node::start(&nats.url, "wasm-accounts", 4, "json", ACCOUNTS).await;
    peer.cmd(json!({ "cmd": "objectql" })).await;
    let scan = json!({ "cmd": "triggers", "object": "accounts", "when": "beforeInsert" });
    let found = eventually(Duration::from_secs(15), || async {
        let r = peer.cmd(scan.clone()).await;
        (r["result"].as_array().is_some_and(|a| !a.is_empty())).then_some(r["result"].clone())
    })
    .await
    .expect("the trigger scan finds the Wasm trigger");
    assert_eq!(
        found,
        json!([{
            "action": "accounts.before-insert",
            "trigger": { "listenTo": "accounts", "when": ["beforeInsert"] },
            "node": "wasm-accounts",
        }])
    );

    let insert = |doc: Value| json!({ "objectName": "accounts", "doc": doc });
    let ok = peer
        .call(
            "objectql.insert",
            insert(json!({ "name": "Acme", "balance": 5 })),
            json!({}),
        )
        .await
        .expect("a good record is inserted");
    assert_eq!(ok["inserted"]["name"], "Acme");
    let nameless = peer
        .call(
            "objectql.insert",
            insert(json!({ "balance": 5 })),
            json!({}),
        )
        .await
        .expect_err("the trigger rejects a record without a name");
    assert_eq!(nameless["data"]["nodeID"], "wasm-accounts", "{nameless}");
    assert!(
        nameless["message"]
            .as_str()
            .is_some_and(|m| m.contains("an account needs a name")),
        "{nameless}"
    );
    let negative = peer
        .call(
            "objectql.insert",
            insert(json!({ "name": "Owe", "balance": -3 })),
            json!({}),
        )
        .await
        .expect_err("the trigger rejects a negative balance");
    assert!(
        negative["message"]
            .as_str()
            .is_some_and(|m| m.contains("balance of -3")),
        "{negative}"
    );

    // moleculer-web: `hello` (published) is routed; `before-insert` (public) is not.
    let web = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{http}/api");
    let routed = eventually(Duration::from_secs(15), || async {
        let r = web
            .get(format!("{base}/accounts/hello/Ada"))
            .send()
            .await
            .ok()?;
        (r.status() == 200).then_some(())?;
        r.json::<Value>().await.ok()
    })
    .await
    .expect("moleculer-web routes GET /api/accounts/hello/:name to the Wasm action");
    assert_eq!(routed, json!("Hello, Ada!"));
    let public = web
        .post(format!("{base}/accounts/before-insert"))
        .json(&json!({ "doc": { "name": "x" } }))
        .send()
        .await
        .expect("moleculer-web answers");
    assert_eq!(
        public.status(),
        404,
        "a `public` action is not published by the gateway"
    );

    // A versioned package, and what a node may not call.
    let v2 = peer
        .call("v2.versioned.hello", json!({ "name": "Bo" }), json!({}))
        .await
        .expect("a versioned service is called by its full name");
    assert_eq!(v2, json!("Hello, Bo!"));
    let private = peer
        .call(
            "accounts.started-with",
            json!({}),
            json!({ "nodeID": "wasm-accounts" }),
        )
        .await
        .expect_err("a private action is not there for another node");
    assert_eq!(private["name"], "ServiceNotFoundError", "{private}");

    // A peer that sends the REQ anyway (no Moleculer node would) is refused.
    let forged = raw_call(&nats.url, "wasm-accounts", "accounts.started-with").await;
    assert_eq!(forged["success"], false, "{forged}");
    assert_eq!(forged["error"]["name"], "ServiceNotFoundError", "{forged}");

    // Here: the gateway's way in refuses `public` and `private` alike.
    for action in ["accounts.before-insert", "accounts.started-with"] {
        let params = json!({ "doc": { "name": "fine" } });
        let params = if action.ends_with("with") {
            json!({})
        } else {
            params
        };
        let outside = node.t.call(action, params).await;
        assert!(
            matches!(outside, Err(CallError::NotFound(_))),
            "{action} is not for the gateway: {outside:?}"
        );
    }
    node.t.ok("accounts.hello", json!({ "name": "Cy" })).await;
    // Another package: `public` yes, `private` no (grants or not).
    let forward =
        |action: &str| json!({ "action": action, "params-json": "{\"doc\":{\"name\":\"z\"}}" });
    node.t
        .ok("probe.forward", forward("accounts.before-insert"))
        .await;
    let other = node
        .t
        .call(
            "probe.forward",
            json!({ "action": "accounts.started-with", "params-json": "{}" }),
        )
        .await;
    assert!(
        format!("{other:?}").contains("is private and cannot be called by package `probe`"),
        "a private action is not for another package: {other:?}"
    );

    peer.stop().await;
    node.stop().await;
}

/// A REQ for `action` sent by hand to `node` as sender `forger`: the RES.
async fn raw_call(url: &str, node: &str, action: &str) -> Value {
    use futures_util::StreamExt as _;
    let client = async_nats::connect(url).await.expect("raw client connects");
    let mut answers = client.subscribe("MOL.RES.forger").await.expect("subscribe");
    client.flush().await.expect("flush");
    let req = json!({ "ver": "4", "sender": "forger", "id": "forged-1", "action": action,
                      "params": {}, "meta": {}, "timeout": 10000, "level": 1 });
    client
        .publish(format!("MOL.REQ.{node}"), req.to_string().into())
        .await
        .expect("publish");
    let message = tokio::time::timeout(Duration::from_secs(15), answers.next())
        .await
        .expect("an answer in time")
        .expect("an answer");
    serde_json::from_slice(&message.payload).expect("a JSON RES")
}

/// `$node` answers for the Wasm node, to a Node broker that names it, with
/// Moleculer's shapes; and the Node broker's registry holds the Wasm
/// node's `$node` service, as for any Moleculer node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_service_answers_for_the_wasm_node() {
    let Some((nats_bin, peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let peer = SteedosPeer::start(&peers, &nats.url, "steedos-2", free_port()).await;
    let node = Node::start(&nats.url, "wasm-node", 4, "json", ACCOUNTS).await;
    peer.cmd(json!({ "cmd": "wait", "services": ["accounts"] }))
        .await;
    let on_wasm = json!({ "nodeID": "wasm-node" });
    let ask = |action: &'static str, params: Value| {
        let (peer, opts) = (&peer, on_wasm.clone());
        async move {
            peer.call(action, params, opts)
                .await
                .unwrap_or_else(|e| panic!("{action} on the Wasm node: {e}"))
        }
    };

    let health = ask("$node.health", json!({})).await;
    for key in ["cpu", "mem", "os", "process", "client", "net", "time"] {
        assert!(health.get(key).is_some(), "health has `{key}`: {health}");
    }
    assert!(health["cpu"]["cores"].as_u64().is_some_and(|n| n >= 1));
    assert_eq!(health["client"]["type"], "rust");

    let list = ask("$node.list", json!({})).await;
    let me = list
        .as_array()
        .and_then(|l| l.iter().find(|n| n["id"] == "wasm-node"))
        .unwrap_or_else(|| panic!("the Wasm node lists itself: {list}"));
    assert_eq!(
        (me["local"].clone(), me["available"].clone()),
        (json!(true), json!(true))
    );
    assert!(
        list.as_array().is_some_and(|l| l
            .iter()
            .any(|n| n["id"] == "steedos-2" && n["local"] == false)),
        "it lists the Node.js node too: {list}"
    );

    let services = ask(
        "$node.services",
        json!({ "onlyLocal": true, "skipInternal": true, "withActions": true }),
    )
    .await;
    let accounts = services
        .as_array()
        .and_then(|l| l.iter().find(|s| s["name"] == "accounts"))
        .unwrap_or_else(|| panic!("services lists accounts: {services}"));
    assert_eq!(
        accounts["settings"],
        json!({ "object": "accounts", "limits": { "max": 10 } })
    );
    assert_eq!(
        accounts["actions"]["accounts.hello"]["rest"],
        "GET /hello/:name"
    );
    assert!(
        services
            .as_array()
            .is_some_and(|l| l.iter().all(|s| s["name"] != "$node")),
        "skipInternal leaves $node out: {services}"
    );

    let actions = ask(
        "$node.actions",
        json!({ "onlyLocal": true, "withEndpoints": true }),
    )
    .await;
    let hello = actions
        .as_array()
        .and_then(|l| l.iter().find(|a| a["name"] == "accounts.hello"))
        .unwrap_or_else(|| panic!("actions lists accounts.hello: {actions}"));
    assert_eq!(hello["hasLocal"], true);
    assert_eq!(hello["endpoints"][0]["nodeID"], "wasm-node");
    assert!(
        actions
            .as_array()
            .is_some_and(|l| l.iter().all(|a| a["name"] != "accounts.started-with")),
        "a private action is not listed: {actions}"
    );
    assert!(ask("$node.events", json!({})).await.is_array());
    assert_eq!(ask("$node.options", json!({})).await["nodeID"], "wasm-node");
    let metrics = ask("$node.metrics", json!({})).await;
    assert!(
        metrics.as_array().is_some_and(|l| l
            .iter()
            .any(|m| m["name"].is_string() && m["values"].is_array())),
        "metrics in Moleculer's shape: {metrics}"
    );

    // A package granted `$node.*` asks its own node.
    let asked = node
        .t
        .ok(
            "probe.forward",
            json!({ "action": "$node.options", "params-json": "{}" }),
        )
        .await;
    let options: Value = serde_json::from_str(asked.as_str().unwrap_or_default()).expect("JSON");
    assert_eq!(options["nodeID"], "wasm-node", "{asked}");

    // The Node broker's own registry holds the Wasm node's `$node`.
    let registry = peer
        .call("$node.services", json!({ "grouping": false }), json!({}))
        .await
        .expect("$node.services here");
    assert!(
        registry.as_array().is_some_and(|l| l
            .iter()
            .any(|s| s["name"] == "$node" && s["nodeID"] == "wasm-node")),
        "the Wasm node's INFO announces $node: {registry}"
    );

    peer.stop().await;
    node.stop().await;
}

/// `publish` patterns name packages as the host does (`versioned.*`); the
/// cluster calls the versioned service by its full name, `v2.versioned`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_patterns_cover_a_versioned_service() {
    let Some((nats_bin, peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let peer = SteedosPeer::start(&peers, &nats.url, "steedos-5", free_port()).await;
    let packages = r#"publish = ["versioned.*"]
[packages.versioned]
component = "{GREETER}"
version = 2
[packages.hidden]
component = "{GREETER}"
"#;
    let node = Node::start(&nats.url, "wasm-versioned", 4, "json", packages).await;
    peer.cmd(json!({ "cmd": "wait", "services": ["v2.versioned"] }))
        .await;
    let hello = peer
        .call("v2.versioned.hello", json!({ "name": "Vi" }), json!({}))
        .await;
    assert_eq!(hello, Ok(json!("Hello, Vi!")));
    let hidden = peer
        .call(
            "hidden.hello",
            json!({ "name": "x" }),
            json!({ "nodeID": "wasm-versioned" }),
        )
        .await;
    assert!(
        hidden.is_err(),
        "an unpublished package stays unpublished: {hidden:?}"
    );
    peer.stop().await;
    node.stop().await;
}

/// A steedos-wasm node as `steedos-wasm run` starts one: the app compiled
/// and linked, the cluster joined, then the packages started.
async fn prepare_then_join(nats: &str, node_id: &str, packages: &str) -> PreparedNode {
    let dir = tempfile::tempdir().expect("temp dir");
    let toml = format!(
        r#"
[app]
cache_dir = "{{CACHE}}"

[cluster]
transporter = "{nats}"
node_id = "{node_id}"
heartbeat_interval = "250ms"
heartbeat_timeout = "2500ms"
{packages}"#
    );
    let path = dir.path().join("steedos.toml");
    std::fs::write(&path, steedos_tests::expand(&toml, dir.path())).expect("write manifest");
    let manifest = Manifest::load(&path).expect("manifest");
    let options = LoadOptions {
        build: false,
        ..LoadOptions::default()
    };
    let app = Arc::new(
        App::prepare(manifest, &options)
            .await
            .expect("app prepared"),
    );
    let settings = app.manifest.cluster.clone().expect("[cluster]");
    let transport = Transport::start(app.broker.clone(), settings)
        .await
        .expect("join the cluster");
    PreparedNode {
        app,
        transport,
        _dir: dir,
    }
}

struct PreparedNode {
    app: Arc<App>,
    transport: Transport,
    _dir: tempfile::TempDir,
}

/// `accounts` whose `started` calls `objectql.ready`, a dependency.
fn depends_on_objectql(timeout: &str) -> String {
    format!(
        r#"
[packages.accounts]
component = "{{ACCOUNTS}}"
dependencies = ["objectql"]
dependency_timeout = "{timeout}"
[packages.accounts.grants]
calls = ["objectql.*"]
env = {{ STARTED_CALL = "objectql.ready" }}
"#
    )
}

/// `started` waits for a dependency that another node starts late, then
/// reaches it; losing it later shows in the package's health report.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_waits_for_a_remote_dependency_that_appears_late() {
    let Some((nats_bin, peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let peer = SteedosPeer::start(&peers, &nats.url, "steedos-3", free_port()).await;
    let node = prepare_then_join(&nats.url, "wasm-late", &depends_on_objectql("20s")).await;
    let app = node.app.clone();
    let starting = tokio::spawn(async move { app.start().await });
    let waiting = eventually(Duration::from_secs(10), || async {
        node.transport
            .nodes()
            .iter()
            .any(|n| n.id == "steedos-3")
            .then_some(())
    })
    .await;
    assert!(waiting.is_some(), "the Node.js node is discovered");
    assert!(
        node.app.broker.service("accounts").is_none() && !starting.is_finished(),
        "accounts waits for objectql"
    );
    peer.cmd(json!({ "cmd": "objectql" })).await;
    tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("accounts starts once objectql is there")
        .expect("start task");
    let heard = node
        .app
        .broker
        .call_json("accounts.hello", br#"{"name":"x"}"#, ctx())
        .await;
    assert_eq!(heard.expect("accounts serves"), json!("Hello, x!"));
    let report = |app: &App| {
        app.broker
            .reports()
            .into_iter()
            .find(|r| r.name == "accounts")
            .expect("a report of accounts")
    };
    assert_eq!(report(&node.app).state.name(), "serving");
    assert!(report(&node.app).missing_dependencies.is_empty());
    let started_with = node
        .app
        .broker
        .call_json("accounts.started-with", b"{}", ctx())
        .await;
    assert_eq!(
        started_with.expect("started-with"),
        json!("objectql is ready"),
        "`started` reached the Node.js dependency"
    );

    peer.stop().await;
    let lost = eventually(Duration::from_secs(15), || async {
        let r = report(&node.app);
        (r.missing_dependencies == ["objectql"]).then_some(())
    })
    .await;
    assert!(
        lost.is_some(),
        "a lost dependency shows in the health report"
    );
    node.transport.stop(Duration::from_secs(2)).await;
    node.app.shutdown().await;
}

/// A dependency that never appears fails the package with a message that
/// names it; the node keeps serving the rest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_that_never_appears_fails_the_package_clearly() {
    let Some((nats_bin, _peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let packages = format!(
        "{}\n[packages.greeter]\ncomponent = \"{{GREETER}}\"\n",
        depends_on_objectql("1s")
    );
    let node = prepare_then_join(&nats.url, "wasm-alone", &packages).await;
    tokio::time::timeout(Duration::from_secs(30), node.app.start())
        .await
        .expect("start gives up after dependency_timeout");
    let failure = node
        .app
        .broker
        .failures()
        .into_iter()
        .find(|f| f.name == "accounts")
        .expect("accounts failed");
    assert!(
        failure.error.contains("`objectql` not available after 1s"),
        "{}",
        failure.error
    );
    let hello = node
        .app
        .broker
        .call_json("greeter.hello", br#"{"name":"y"}"#, ctx())
        .await;
    assert_eq!(hello.expect("greeter serves"), json!("Hello, y!"));
    node.transport.stop(Duration::from_secs(2)).await;
    node.app.shutdown().await;
}

fn ctx() -> steedos_wasm::context::CallContext {
    steedos_wasm::context::CallContext::new(Duration::from_secs(10))
}

/// examples/steedos as written (its component the one the tests built):
/// it waits for Steedos' `objectql`, its trigger rejects a bad account at
/// an objectql insert, and moleculer-web routes its REST action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_steedos_example_joins_a_steedos_cluster() {
    let Some((nats_bin, peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let http = free_port();
    let peer = SteedosPeer::start(&peers, &nats.url, "steedos-4", http).await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/steedos");
    let text = std::fs::read_to_string(example.join("steedos.toml")).expect("the example");
    let mut manifest =
        Manifest::parse(&text, &example.join("steedos.toml")).expect("the example parses");
    assert!(manifest.rejected.is_empty(), "{:?}", manifest.rejected);
    manifest.app.cache_dir = steedos_tests::shared_cache();
    for package in &mut manifest.packages {
        package.component = steedos_tests::guests::ACCOUNTS.into();
    }
    let mut settings = manifest.cluster.clone().expect("[cluster]");
    settings.transporter = nats.url.clone();
    settings.node_id = Some("wasm-example".into());
    let options = LoadOptions {
        build: false,
        ..LoadOptions::default()
    };
    let app = Arc::new(App::prepare(manifest, &options).await.expect("prepared"));
    let transport = Transport::start(app.broker.clone(), settings)
        .await
        .expect("joins");
    let starting = tokio::spawn({
        let app = app.clone();
        async move { app.start().await }
    });
    peer.cmd(json!({ "cmd": "objectql" })).await;
    tokio::time::timeout(Duration::from_secs(30), starting)
        .await
        .expect("started once objectql is up")
        .expect("start task");
    transport.announce().await.expect("INFO sent");

    let insert = |doc: Value| json!({ "objectName": "accounts", "doc": doc });
    let rejected = eventually(Duration::from_secs(15), || async {
        peer.call(
            "objectql.insert",
            insert(json!({ "balance": -1 })),
            json!({}),
        )
        .await
        .err()
    })
    .await
    .expect("the trigger rejects an account without a name");
    assert!(
        rejected["message"]
            .as_str()
            .is_some_and(|m| m.contains("an account needs a name")),
        "{rejected}"
    );
    let web = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{http}/api/accounts/hello/Eve");
    let routed = eventually(Duration::from_secs(15), || async {
        let r = web.get(&url).send().await.ok()?;
        (r.status() == 200).then_some(())?;
        r.json::<Value>().await.ok()
    })
    .await;
    assert_eq!(routed, Some(json!("Hello, Eve!")));
    peer.stop().await;
    transport.stop(Duration::from_secs(2)).await;
    app.shutdown().await;
}

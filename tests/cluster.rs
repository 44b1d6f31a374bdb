//! Clustering over a real nats-server or redis-server (started here on a free port of
//! 127.0.0.1) with real Node.js Moleculer brokers (npm `moleculer` 0.14,
//! protocol 4, and 0.15, protocol 5, run from `tests/moleculer/peer.js`):
//! calls and errors both ways, events both ways (emit balanced per group,
//! broadcast), two steedos-wasm nodes sharing the load of one package, a
//! node lost mid-load and rediscovered.
//!
//! Needs `nats-server` (`redis-server` for the Redis ones) and node on PATH and `npm ci` in tests/moleculer
//! (`./test` sets all three up); without them they skip by the rule of
//! `tests/require.rs`, and fail under CI.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use steedos_tests::{PROBE_QUEUE_OF_ONE, TestApp, assert_valid_openapi, eventually, require};
use steedos_wasm::context::{CallContext, CallError, Meta};
use steedos_wasm::transport::Transport;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, mpsc, oneshot};

// ------------------------------------------------------------ tools

/// `nats-server`, or `None` when it is missing (by [`require`]'s rule).
fn nats() -> Option<PathBuf> {
    if !require::tools(&["nats-server"]) {
        return None;
    }
    require::which("nats-server")
}

/// `nats-server`, and the folder holding peer.js with its node_modules;
/// `None` when one is missing (by [`require`]'s rule).
pub(crate) fn tools() -> Option<(PathBuf, PathBuf)> {
    let peers = Path::new(env!("CARGO_MANIFEST_DIR")).join("moleculer");
    let installed = peers.join("node_modules/moleculer14").exists()
        && peers.join("node_modules/moleculer15").exists();
    if !require::tools(&["nats-server", "node"])
        || !require::present(
            (!installed)
                .then(|| "tests/moleculer/node_modules (cd tests/moleculer && npm ci)".into()),
        )
    {
        return None;
    }
    Some((require::which("nats-server")?, peers))
}

/// A nats-server on a free port of 127.0.0.1, stopped when dropped.
pub(crate) struct Nats {
    child: std::process::Child,
    pub(crate) url: String,
}

impl Nats {
    pub(crate) async fn start(binary: &Path) -> Nats {
        Nats::start_with(binary, &[]).await
    }

    /// With more nats-server flags (`--auth TOKEN`, `--user U --pass P`).
    pub(crate) async fn start_with(binary: &Path, flags: &[&str]) -> Nats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .expect("free port")
            .local_addr()
            .expect("addr")
            .port();
        let child = std::process::Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(flags)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
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
        Nats {
            child,
            url: format!("nats://127.0.0.1:{port}"),
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `redis-server`, or `None` when it is missing (by [`require`]'s rule).
pub(crate) fn redis() -> Option<PathBuf> {
    if !require::tools(&["redis-server"]) {
        return None;
    }
    require::which("redis-server")
}

/// A redis-server on a free port of 127.0.0.1, nothing saved to disk,
/// stopped when dropped.
pub(crate) struct Redis {
    child: std::process::Child,
    pub(crate) url: String,
}

impl Redis {
    /// With more redis-server flags (`--requirepass P`).
    pub(crate) async fn start(binary: &Path, flags: &[&str]) -> Redis {
        let port = free_port();
        let mut args = vec!["--port".to_owned(), port.to_string()];
        args.extend(flags.iter().map(|f| f.to_string()));
        Redis::launch(binary, port, args, "redis").await
    }

    /// Speaking TLS only, with `dir`'s `server.pem`/`server.key`, and
    /// verifying clients by `ca.pem` when `verify_clients`.
    pub(crate) async fn start_tls(binary: &Path, dir: &Path, verify_clients: bool) -> Redis {
        let port = free_port();
        let file = |f: &str| dir.join(f).display().to_string();
        let verify = if verify_clients { "yes" } else { "no" };
        let args = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &file("server.pem"),
            "--tls-key-file",
            &file("server.key"),
            "--tls-ca-cert-file",
            &file("ca.pem"),
            "--tls-auth-clients",
            verify,
        ]
        .map(str::to_owned)
        .to_vec();
        Redis::launch(binary, port, args, "rediss").await
    }

    async fn launch(binary: &Path, port: u16, args: Vec<String>, scheme: &str) -> Redis {
        let child = std::process::Command::new(binary)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir", "/tmp"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let up = eventually(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(
            up.is_some(),
            "redis-server did not listen on 127.0.0.1:{port}"
        );
        Redis {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("free port")
        .local_addr()
        .expect("addr")
        .port()
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The bus a test runs on.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Bus {
    Nats,
    Redis,
}

/// A running bus server of either kind, stopped when dropped.
pub(crate) enum Server {
    Nats(Nats),
    Redis(Redis),
}

impl Server {
    pub(crate) fn url(&self) -> &str {
        match self {
            Server::Nats(n) => &n.url,
            Server::Redis(r) => &r.url,
        }
    }

    /// A server of `bus`, or `None` when its binary is missing (by
    /// [`require`]'s rule).
    pub(crate) async fn start(bus: Bus) -> Option<Server> {
        Some(match bus {
            Bus::Nats => Server::Nats(Nats::start(&nats()?).await),
            Bus::Redis => Server::Redis(Redis::start(&redis()?, &[]).await),
        })
    }
}

/// The folder holding peer.js able to speak over `bus` (Moleculer's Redis
/// transporter needs `ioredis`), with the server's binary present.
pub(crate) fn peers_on(bus: Bus) -> Option<PathBuf> {
    let (_, peers) = tools()?;
    match bus {
        Bus::Nats => Some(peers),
        Bus::Redis => {
            let ioredis = peers.join("node_modules/ioredis").exists();
            (require::tools(&["redis-server"])
                && require::present((!ioredis).then(|| {
                    "tests/moleculer/node_modules/ioredis (cd tests/moleculer && npm ci)".into()
                })))
            .then_some(peers)
        }
    }
}

// ------------------------------------------------------------ Moleculer peers

/// A Node.js Moleculer broker (peer.js) driven over stdin/stdout.
pub(crate) struct Peer {
    child: tokio::process::Child,
    stdin: Mutex<tokio::process::ChildStdin>,
    waiting: Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>>,
    events: Mutex<mpsc::UnboundedReceiver<Value>>,
    next: AtomicU64,
}

impl Peer {
    pub(crate) async fn start(
        dir: &Path,
        release: &str,
        nats: &str,
        node_id: &str,
        group: &str,
    ) -> Peer {
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("peer.js"))
            .current_dir(dir)
            .env("MOLECULER", release)
            .env("NATS_URL", nats)
            .env("NODE_ID", node_id)
            .env("LISTENER_GROUP", group)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("start node peer.js");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let waiting: Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>> = Arc::default();
        let (events_tx, events) = mpsc::unbounded_channel();
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
                } else if v.get("received").is_some() {
                    let _ = events_tx.send(v);
                } else if let Some(id) = v.get("id").and_then(Value::as_u64)
                    && let Some(tx) = w.lock().expect("lock").remove(&id)
                {
                    let _ = tx.send(v);
                }
            }
        });
        // Node's start, not ours: generous, since a loaded CI machine once
        // took more than 20 s to start the first peer of a run.
        let ready = tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .expect("the Node.js peer printed ready within 60 s")
            .expect("peer ready");
        let protocol = if release == "14" { "4" } else { "5" };
        assert_eq!(
            ready["protocol"], protocol,
            "moleculer {release} speaks protocol {protocol}"
        );
        Peer {
            child,
            stdin: Mutex::new(stdin),
            waiting,
            events: Mutex::new(events),
            next: AtomicU64::new(1),
        }
    }

    pub(crate) async fn cmd(&self, mut command: Value) -> Value {
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
            .expect("write to peer");
        tokio::time::timeout(Duration::from_secs(20), rx)
            .await
            .expect("peer answered in time")
            .expect("peer answered")
    }

    pub(crate) async fn call(&self, action: &str, params: Value) -> Result<Value, Value> {
        let r = self
            .cmd(json!({ "cmd": "call", "action": action, "params": params }))
            .await;
        match r["ok"].as_bool() {
            Some(true) => Ok(r["result"].clone()),
            _ => Err(r["error"].clone()),
        }
    }

    /// Events received so far, waiting until there are `n` (at most `within`).
    async fn events(&self, n: usize, within: Duration) -> Vec<Value> {
        let mut got = Vec::new();
        let end = Instant::now() + within;
        let mut rx = self.events.lock().await;
        loop {
            while let Ok(v) = rx.try_recv() {
                got.push(v);
            }
            if got.len() >= n || Instant::now() >= end {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Asks the peer's broker to stop (a clean leave, DISCONNECT sent) and
    /// waits for the process to exit; one still running after 30 s is
    /// killed as it is dropped. Clean-up: a broker slow to stop on a loaded
    /// machine is not a failure of the test that used it.
    pub(crate) async fn stop(mut self) {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let line = format!("{}\n", json!({ "cmd": "stop", "id": id }));
        let _ = self.stdin.lock().await.write_all(line.as_bytes()).await;
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
    }
}

// ------------------------------------------------------------ steedos-wasm nodes

/// A steedos-wasm node: an app and its transport.
pub(crate) struct Node {
    pub(crate) t: TestApp,
    transport: Option<Transport>,
}

impl Node {
    pub(crate) async fn start(
        nats: &str,
        node_id: &str,
        protocol: u8,
        serializer: &str,
        packages: &str,
    ) -> Node {
        let toml = format!(
            r#"
[app]
cache_dir = "{{CACHE}}"

[cluster]
transporter = "{nats}"
node_id = "{node_id}"
protocol = {protocol}
serializer = "{serializer}"
heartbeat_interval = "250ms"
heartbeat_timeout = "2500ms"
{packages}"#
        );
        let t = TestApp::start(&toml).await;
        let settings = t.app.manifest.cluster.clone().expect("[cluster]");
        let transport = Transport::start(t.app.broker.clone(), settings)
            .await
            .expect("join the cluster");
        Node {
            t,
            transport: Some(transport),
        }
    }

    pub(crate) fn transport(&self) -> &Transport {
        self.transport.as_ref().expect("joined")
    }

    pub(crate) async fn wait_for(&self, action: &str) {
        assert!(
            self.transport()
                .wait_for_action(action, Duration::from_secs(15))
                .await,
            "{action} was never discovered"
        );
    }

    pub(crate) async fn stop(mut self) {
        if let Some(t) = self.transport.take() {
            t.stop(Duration::from_secs(2)).await;
        }
        self.t.app.shutdown().await;
    }
}

const WASM_PACKAGES: &str = r#"
[packages.greeter]
component = "{GREETER}"
[packages.chaos]
component = "{CHAOS}"
timeout = "1s"
memory = "16 MiB"
[packages.probe]
component = "{PROBE}"
instances = 2
events = ["test.*"]
[packages.probe.grants]
calls = ["tally.*", "node-math.*"]
emits = ["*"]
[packages.tally]
component = "{TALLY}"

# Node.js actions behind this node's gateway.
[gateway.aliases]
"GET /add/:a/:b" = "node-math.add"
"GET /whoami" = "node-math.whoami"
"#;

// ------------------------------------------------------------ Node.js <-> Wasm

/// Calls and events between a steedos-wasm node and two Moleculer nodes of
/// `release`: results and each kind of error as the right Moleculer error,
/// a package calling Node.js actions with the context travelling, events
/// both ways, emit balanced per group and broadcast to all.
async fn with_moleculer(release: &str, protocol: u8, bus: Bus) {
    let Some(peers) = peers_on(bus) else {
        return;
    };
    let Some(server) = Server::start(bus).await else {
        return;
    };
    let url = server.url();
    let node = Node::start(url, "wasm-1", protocol, "json", WASM_PACKAGES).await;
    let peer_a = Peer::start(&peers, release, url, "node-a", "node-watch").await;
    let peer_b = Peer::start(&peers, release, url, "node-b", "node-watch").await;
    let waited = peer_a
        .cmd(json!({ "cmd": "wait", "services": ["greeter", "probe", "chaos"] }))
        .await;
    assert_eq!(waited["ok"], true, "{waited}");

    // Node.js calls Wasm: a result, a validation error, a crash, a timeout.
    assert_eq!(
        peer_a.call("greeter.hello", json!({ "name": "Ada" })).await,
        Ok(json!("Hello, Ada!"))
    );
    let e = peer_a
        .call("greeter.hello", json!({ "name": 7 }))
        .await
        .expect_err("7 is not a string");
    assert_eq!(
        (e["name"].as_str(), e["code"].as_u64(), e["type"].as_str()),
        (Some("ValidationError"), Some(422), Some("VALIDATION_ERROR")),
        "{e}"
    );
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("params.name")),
        "{e}"
    );
    let e = peer_a
        .call("chaos.crash", json!({}))
        .await
        .expect_err("a crash");
    assert_eq!(
        (e["name"].as_str(), e["code"].as_u64(), e["type"].as_str()),
        (Some("MoleculerServerError"), Some(500), Some("CRASHED")),
        "{e}"
    );
    let e = peer_a
        .call("chaos.spin", json!({}))
        .await
        .expect_err("a timeout");
    assert_eq!(
        (e["name"].as_str(), e["code"].as_u64()),
        (Some("RequestTimeoutError"), Some(504)),
        "{e}"
    );
    // The call context travels into Wasm too: a Node.js action that calls a
    // Wasm action passes on its level and its name as the caller.
    let seen = peer_a
        .call(
            "node-math.relay",
            json!({ "action": "probe.context", "params": {} }),
        )
        .await
        .expect("probe.context through node-math.relay");
    assert_eq!(
        (&seen[1], &seen[2]),
        (&json!("node-math"), &json!(2)),
        "{seen}"
    );
    let nodes = peer_a.cmd(json!({ "cmd": "nodes" })).await;
    assert!(
        nodes["result"]
            .as_array()
            .expect("nodes")
            .iter()
            .any(|n| n["id"] == "wasm-1" && n["client"]["type"] == "rust"),
        "{nodes}"
    );

    // Wasm calls Node.js: from a package by name, and from outside (gateway, CLI).
    node.wait_for("node-math.add").await;
    let forward = |action: &str, params: Value| json!({ "action": action, "params-json": params.to_string() });
    assert_eq!(
        node.t
            .ok(
                "probe.forward",
                forward("node-math.add", json!({ "a": 1, "b": 2 }))
            )
            .await,
        json!("3")
    );
    let e = node
        .t
        .call("probe.forward", forward("node-math.fail", json!({})))
        .await
        .expect_err("fails");
    assert!(
        e.message().contains("teapot") && e.message().contains("failed"),
        "{e}"
    );
    let e = node
        .t
        .call(
            "probe.forward",
            forward("node-math.add", json!({ "a": "x" })),
        )
        .await
        .expect_err("invalid");
    assert!(e.message().contains("invalid-params"), "{e}");
    let body = serde_json::to_vec(&json!({ "a": 2, "b": 3 })).expect("json");
    assert_eq!(
        node.t
            .app
            .broker
            .call_json(
                "node-math.add",
                &body,
                CallContext::new(Duration::from_secs(5))
            )
            .await,
        Ok(json!(5))
    );
    // Through a REST alias: path and query parameters are text, read as the
    // numbers the Node.js action's own `params` rules ask for.
    let (gateway, base) = node.t.gateway().await;
    let get = |path: &str| {
        let url = format!("{base}{path}");
        async move {
            let r = reqwest::get(&url).await.expect("GET");
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.expect("json"))
        }
    };
    assert_eq!(get("/add/2/3").await, (200, json!(5)));
    let (status, problem) = get("/add/2/x").await;
    assert_eq!(
        (status, &problem["error"]["kind"]),
        (400, &json!("invalid-params")),
        "{problem}"
    );
    assert!(
        problem["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("'b' field must be a number")),
        "{problem}"
    );
    // A parameter without a rule stays text.
    let (status, who) = get("/whoami?tag=007").await;
    assert_eq!(
        (status, &who["params"]),
        (200, &json!({ "tag": "007" })),
        "{who}"
    );
    // /openapi.json describes those routes by the same rules.
    let (status, doc) = get("/openapi.json").await;
    assert_eq!(status, 200);
    let number = json!({ "type": "number" });
    assert_eq!(
        doc["paths"]["/add/{a}/{b}"]["get"]["parameters"],
        json!([
            { "name": "a", "in": "path", "required": true, "schema": number },
            { "name": "b", "in": "path", "required": true, "schema": number },
        ]),
        "{doc}"
    );
    assert!(doc["paths"]["/whoami"]["get"].is_object(), "{doc}");
    assert_valid_openapi(&doc, node.t.dir.path());
    gateway.shutdown(Duration::from_secs(1)).await;

    let e = node
        .t
        .call("node-math.fail", json!({}))
        .await
        .expect_err("fails");
    assert!(
        matches!(e, CallError::Failed(_)) && e.message().contains("teapot"),
        "{e}"
    );
    // The context travels: request id, meta, level and caller.
    let mut ctx = CallContext::with_request_id("req-cluster-1", Duration::from_secs(5));
    ctx.meta = Meta::from_map(
        json!({ "tenant": "acme" })
            .as_object()
            .cloned()
            .unwrap_or_default(),
    );
    let params = serde_json::to_vec(&forward("node-math.whoami", json!({ "x": 1 }))).expect("json");
    let who = node
        .t
        .app
        .broker
        .call_json("probe.forward", &params, ctx)
        .await
        .expect("whoami");
    let who: Value = serde_json::from_str(who.as_str().expect("JSON text")).expect("JSON");
    assert_eq!(who["requestID"], "req-cluster-1", "{who}");
    assert_eq!(who["meta"]["tenant"], "acme", "{who}");
    assert_eq!(who["level"], 2, "{who}");
    assert_eq!(who["caller"], "probe", "{who}");
    assert_eq!(who["params"], json!({ "x": 1 }), "{who}");
    // Round-robin over the two Node.js nodes.
    let mut served = HashSet::new();
    for _ in 0..4 {
        let who = node
            .t
            .call("node-math.whoami", json!({}))
            .await
            .expect("whoami");
        served.insert(who["nodeID"].as_str().expect("nodeID").to_string());
    }
    assert_eq!(served.len(), 2, "both Node.js nodes served: {served:?}");

    // Wasm events reach Node.js: emit to one node of the group, broadcast to both.
    for i in 0..10 {
        node.t
            .ok(
                "probe.emit",
                json!({ "event": "test.wasm", "payload-json": json!({ "n": i }).to_string() }),
            )
            .await;
    }
    // Wait for all ten, wherever they went.
    let (mut a, mut b) = (Vec::new(), Vec::new());
    let end = Instant::now() + Duration::from_secs(10);
    while a.len() + b.len() < 10 && Instant::now() < end {
        a.extend(peer_a.events(0, Duration::ZERO).await);
        b.extend(peer_b.events(0, Duration::ZERO).await);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        a.len() + b.len(),
        10,
        "each emit reached one node of group node-watch: {a:?} {b:?}"
    );
    assert!(
        !a.is_empty() && !b.is_empty(),
        "emits were balanced: {} / {}",
        a.len(),
        b.len()
    );
    assert!(
        a.iter().chain(&b).all(|e| e["received"] == "test.wasm"
            && e["data"]["n"].is_u64()
            && e["type"] == "emit"),
        "{a:?}"
    );
    node.t
        .ok(
            "probe.broadcast",
            json!({ "event": "test.all", "payload-json": "{\"k\":\"v\"}" }),
        )
        .await;
    let a = peer_a.events(1, Duration::from_secs(5)).await;
    let b = peer_b.events(1, Duration::from_secs(5)).await;
    assert_eq!(
        (a.len(), b.len()),
        (1, 1),
        "a broadcast reached both: {a:?} {b:?}"
    );
    assert_eq!(a[0]["data"], json!({ "k": "v" }));
    // The local subscriber (probe itself) got them all too.
    node.t.tally_at_least(12, Duration::from_secs(10)).await;
    node.t.ok("tally.reset", json!({})).await;

    // Node.js events reach Wasm: emit to one probe instance, broadcast to every one.
    let r = peer_a
        .cmd(json!({ "cmd": "emit", "event": "test.node", "payload": { "from": "node" } }))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    // A marker emitted after it, on the same connection: once both are in,
    // a second delivery of the first would have had its chance.
    let r = peer_a
        .cmd(json!({ "cmd": "emit", "event": "test.node-end", "payload": {} }))
        .await;
    assert_eq!(r["ok"], true, "{r}");
    let got = eventually(Duration::from_secs(10), || async {
        let got = node.t.tally().await;
        let has = |e: &str| got.iter().any(|(name, _)| name == e);
        (has("test.node") && has("test.node-end")).then_some(got)
    })
    .await
    .expect("the emit and the marker arrive");
    let once = got.iter().filter(|(e, _)| e == "test.node").count();
    assert_eq!(once, 1, "an emit is delivered once: {got:?}");
    node.t.ok("tally.reset", json!({})).await;
    peer_b
        .cmd(json!({ "cmd": "broadcast", "event": "test.every", "payload": {} }))
        .await;
    let got = node.t.tally_at_least(2, Duration::from_secs(10)).await;
    let instances: HashSet<u64> = got.iter().map(|(_, i)| *i).collect();
    assert_eq!(
        instances.len(),
        2,
        "a broadcast reaches both probe instances: {got:?}"
    );

    // A clean stop: the Node.js nodes drop wasm-1 on its DISCONNECT, not
    // at their heartbeat timeout. `stop` returns once the packets are
    // sent; a peer reads them a moment later, and a call it made in that
    // moment would go to wasm-1 and be rejected (503), so the call waits
    // for the peer to have seen wasm-1 leave.
    node.stop().await;
    let left = eventually(Duration::from_secs(10), || async {
        let departed = peer_a.cmd(json!({ "cmd": "departed" })).await;
        departed["result"]
            .as_array()
            .and_then(|d| d.iter().find(|n| n["id"] == "wasm-1").cloned())
    })
    .await
    .expect("peer_a saw wasm-1 leave");
    assert_eq!(
        left["unexpected"], false,
        "wasm-1 left by its DISCONNECT, not lost to the heartbeat timeout: {left}"
    );
    let e = peer_a
        .call("greeter.hello", json!({ "name": "x" }))
        .await
        .expect_err("gone");
    assert_eq!(
        e["code"], 404,
        "after INFO(empty) and DISCONNECT, greeter is gone: {e}"
    );
    peer_a.stop().await;
    peer_b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moleculer_0_14_and_wasm_call_each_other_over_protocol_4() {
    with_moleculer("14", 4, Bus::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moleculer_0_14_and_wasm_call_each_other_over_redis() {
    with_moleculer("14", 4, Bus::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moleculer_0_15_and_wasm_call_each_other_over_redis() {
    with_moleculer("15", 5, Bus::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moleculer_0_15_and_wasm_call_each_other_over_protocol_5() {
    with_moleculer("15", 5, Bus::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_of_the_other_protocol_version_is_ignored() {
    let Some((nats_bin, peers)) = tools() else {
        return;
    };
    let nats = Nats::start(&nats_bin).await;
    let node = Node::start(&nats.url, "wasm-v4", 4, "json", WASM_PACKAGES).await;
    let peer = Peer::start(&peers, "15", &nats.url, "node-v5", "node-watch").await;
    // A node of our protocol started after it: once we see that one, the
    // other's INFO and heartbeats have reached us too, and were ignored.
    let witness = Peer::start(&peers, "14", &nats.url, "node-v4", "node-watch").await;
    let seen = eventually(Duration::from_secs(30), || async {
        let nodes = node.transport().nodes();
        nodes.iter().any(|n| n.id == "node-v4").then_some(nodes)
    })
    .await
    .expect("the node of our protocol is seen");
    assert!(
        seen.iter().all(|n| n.id != "node-v5"),
        "the node of the other protocol is ignored: {seen:?}"
    );
    let e = peer
        .call("greeter.hello", json!({ "name": "x" }))
        .await
        .expect_err("not visible");
    assert_eq!(e["name"], "ServiceNotFoundError", "{e}");
    witness.stop().await;
    peer.stop().await;
    node.stop().await;
}

// ------------------------------------------------------------ Wasm <-> Wasm

const CALLER: &str = r#"
[gateway]
expose = ["probe.*"]

[packages.greeter]
component = "{GREETER}"
"#;

const WORKER: &str = r#"
[packages.probe]
component = "{PROBE}"
events = ["test.*"]
[packages.probe.grants]
calls = ["tally.*"]
emits = ["*"]
[packages.tally]
component = "{TALLY}"
"#;

/// Calls `probe.instance-id` from `caller`; the id of the instance that answered.
async fn instance(caller: &Node, timeout: Duration) -> Result<u64, CallError> {
    let ctx = CallContext::new(timeout);
    caller
        .t
        .app
        .broker
        .call_json("probe.instance-id", b"{}", ctx)
        .await
        .map(|v| v.as_u64().expect("u64"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_wasm_nodes_share_the_load_survive_a_lost_node_and_rediscover_it() {
    two_wasm_nodes(Bus::Nats).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_wasm_nodes_over_redis_share_the_load_survive_a_lost_node_and_rediscover_it() {
    two_wasm_nodes(Bus::Redis).await;
}

async fn two_wasm_nodes(bus: Bus) {
    let Some(server) = Server::start(bus).await else {
        return;
    };
    let url = server.url();
    // Between steedos-wasm nodes, the MessagePack serializer.
    let a = Node::start(url, "wasm-a", 4, "msgpack", CALLER).await;
    let b = Node::start(url, "wasm-b", 4, "msgpack", WORKER).await;
    let mut c = Node::start(url, "wasm-c", 4, "msgpack", WORKER).await;
    let both = eventually(Duration::from_secs(10), || async {
        let nodes = a.transport().nodes();
        (nodes
            .iter()
            .filter(|n| n.actions.iter().any(|x| x == "probe.instance-id"))
            .count()
            == 2)
            .then_some(())
    })
    .await;
    assert!(
        both.is_some(),
        "a sees b and c: {:?}",
        a.transport().nodes()
    );
    let id_b =
        b.t.ok("probe.instance-id", json!({}))
            .await
            .as_u64()
            .expect("id");
    let id_c =
        c.t.ok("probe.instance-id", json!({}))
            .await
            .as_u64()
            .expect("id");

    // Round-robin: half each.
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for _ in 0..40 {
        *counts
            .entry(instance(&a, Duration::from_secs(5)).await.expect("call"))
            .or_default() += 1;
    }
    assert_eq!(counts.get(&id_b), Some(&20), "{counts:?}");
    assert_eq!(counts.get(&id_c), Some(&20), "{counts:?}");

    // The gateway reaches the remote action too.
    let (gateway, base) = a.t.gateway().await;
    let r = reqwest::Client::new()
        .post(format!("{base}/api/probe/instance-id"))
        .body("{}")
        .send()
        .await
        .expect("request");
    assert_eq!(r.status(), reqwest::StatusCode::OK);
    let id: u64 = r.json().await.expect("json");
    assert!(id == id_b || id == id_c, "{id}");
    gateway.shutdown(Duration::from_secs(1)).await;

    // Events between Wasm nodes: emit reaches one node's probe, broadcast both.
    let payload = vec![0x81, 0xa1, b'n', 0x01]; // MessagePack {"n": 1}
    for _ in 0..10 {
        a.t.app.broker.publish(
            "test.emit",
            payload.clone(),
            false,
            CallContext::new(Duration::from_secs(5)),
        );
    }
    // Wait for all ten, wherever they went.
    let (tb, tc) = eventually(Duration::from_secs(10), || async {
        let (tb, tc) = (b.t.tally().await.len(), c.t.tally().await.len());
        (tb + tc >= 10).then_some((tb, tc))
    })
    .await
    .unwrap_or((b.t.tally().await.len(), c.t.tally().await.len()));
    assert_eq!(tb + tc, 10, "each emit reached one node: {tb} + {tc}");
    a.t.app.broker.publish(
        "test.all",
        payload.clone(),
        true,
        CallContext::new(Duration::from_secs(5)),
    );
    assert_eq!(
        b.t.tally_at_least(tb + 1, Duration::from_secs(10))
            .await
            .last()
            .map(|e| e.0.clone()),
        Some("test.all".into())
    );
    assert_eq!(
        c.t.tally_at_least(tc + 1, Duration::from_secs(10))
            .await
            .last()
            .map(|e| e.0.clone()),
        Some("test.all".into())
    );

    // c is lost mid-load (no goodbye): calls move to b, none hangs past its timeout.
    let timeout = Duration::from_secs(6);
    let start = Instant::now();
    let load = Duration::from_millis(5500);
    let loops: Vec<_> = (0..16)
        .map(|_| {
            let a = &a;
            async move {
                let mut seen = Vec::new();
                while start.elapsed() < load {
                    let began = Instant::now();
                    let r = instance(a, timeout).await;
                    seen.push((began.duration_since(start), began.elapsed(), r));
                }
                seen
            }
        })
        .collect();
    let killer = async {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        c.transport.take().expect("joined").abort();
    };
    // When a's registry dropped c (its heartbeats stopped), from `start`.
    let detected = async {
        eventually(load, || async {
            (!a.transport().nodes().iter().any(|n| n.id == "wasm-c")).then(|| start.elapsed())
        })
        .await
    };
    let (results, (), detected) = tokio::join!(join_all(loops), killer, detected);
    let detected = detected.expect("a detected c's loss while the load ran");
    let results: Vec<_> = results.into_iter().flatten().collect();
    let mut lost = 0;
    let mut after = 0;
    for (at, _, r) in &results {
        match r {
            // A call that began once a knew c was gone goes to b, and works.
            _ if *at > detected => {
                assert!(
                    matches!(r, Ok(id) if *id == id_b),
                    "after detection (at {detected:?}) only b serves: at {at:?}, {r:?}"
                );
                after += 1;
            }
            Ok(_) => {}
            Err(CallError::Crashed(m)) if m.contains("wasm-c") && m.contains("lost") => lost += 1,
            Err(e) => panic!("unexpected error at {at:?}: {e}"),
        }
    }
    assert!(after > 10, "calls ran after detection: {after}");
    let slowest = results
        .iter()
        .map(|(_, took, _)| *took)
        .max()
        .expect("calls");
    assert!(
        slowest < timeout,
        "no call waited out its timeout: slowest {slowest:?}"
    );
    assert!(results.len() > 100, "load ran: {} calls", results.len());
    eprintln!(
        "{} calls during the loss, {lost} failed as lost with c",
        results.len()
    );
    assert!(
        !a.transport().nodes().iter().any(|n| n.id == "wasm-c"),
        "c is gone from a's registry"
    );

    // c comes back (a new instance, same node id): a finds it again.
    let settings = c.t.app.manifest.cluster.clone().expect("[cluster]");
    c.transport = Some(
        Transport::start(c.t.app.broker.clone(), settings)
            .await
            .expect("rejoin"),
    );
    let back = eventually(Duration::from_secs(10), || async {
        (instance(&a, Duration::from_secs(2)).await.ok()? == id_c).then_some(())
    })
    .await;
    assert!(back.is_some(), "the restarted node serves again");
    let rtt = a
        .transport()
        .ping("wasm-c", Duration::from_secs(2))
        .await
        .expect("pong");
    assert!(rtt < Duration::from_secs(2));
    a.stop().await;
    b.stop().await;
    c.stop().await;
}

/// A REQ the transporter refuses (over nats-server's 1 MB max_payload)
/// fails its call at once, naming the node and the cause, instead of
/// waiting out the call's timeout; calls after it go through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_the_transporter_refuses_fails_at_once() {
    let Some(nats_bin) = nats() else { return };
    let nats = Nats::start(&nats_bin).await;
    let a = Node::start(&nats.url, "wasm-a", 4, "json", CALLER).await;
    let b = Node::start(&nats.url, "wasm-b", 4, "json", WORKER).await;
    assert!(
        a.transport()
            .wait_for_action("probe.instance-id", Duration::from_secs(10))
            .await
    );
    let started = Instant::now();
    let e =
        a.t.call_within(
            "probe.instance-id",
            json!({ "pad": "x".repeat(2 << 20) }),
            Duration::from_secs(30),
        )
        .await
        .expect_err("over max_payload");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failed after {:?}",
        started.elapsed()
    );
    let text = e.to_string();
    assert!(
        matches!(e, CallError::Overloaded(_))
            && text.contains("probe.instance-id")
            && text.contains("cannot send the request to node `wasm-b`")
            && text.contains("max payload"),
        "{e:?}"
    );
    let id = instance(&a, Duration::from_secs(10))
        .await
        .expect("next call");
    assert!(id > 0, "{id}");
    a.stop().await;
    b.stop().await;
}

/// Waits for every future of one task (no extra crate).
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut out = Vec::with_capacity(futures.len());
    let mut pinned: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut done: Vec<Option<F::Output>> = (0..pinned.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (i, f) in pinned.iter_mut().enumerate() {
            if done[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => done[i] = Some(v),
                    std::task::Poll::Pending => all = false,
                }
            }
        }
        if all {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.extend(done.into_iter().flatten());
    out
}

/// Regression: events from another node used to be dropped once more of
/// them waited for the subscriber than its queue holds. Now the receiving
/// node stops reading until the subscriber has room, and every one arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_remote_events_to_a_small_queue_loses_none() {
    let Some(nats_bin) = nats() else { return };
    let nats = Nats::start(&nats_bin).await;
    let a = Node::start(&nats.url, "wasm-a", 4, "json", CALLER).await;
    let b = Node::start(&nats.url, "wasm-b", 4, "json", PROBE_QUEUE_OF_ONE).await;
    a.wait_for("probe.instance-id").await;
    let payload = vec![0x81, 0xa1, b'n', 0x01]; // MessagePack {"n": 1}
    const FLOOD: usize = 200;
    for _ in 0..FLOOD {
        a.t.app.broker.publish(
            "test.flood",
            payload.clone(),
            false,
            CallContext::new(Duration::from_secs(5)),
        );
    }
    // A marker after the flood, in the same stream: once it and FLOOD
    // events are in, a duplicate would have had its chance.
    a.t.app.broker.publish(
        "test.flood-end",
        payload.clone(),
        false,
        CallContext::new(Duration::from_secs(5)),
    );
    let got = eventually(Duration::from_secs(30), || async {
        let got = b.t.tally().await;
        let floods = got.iter().filter(|(e, _)| e == "test.flood").count();
        let ended = got.iter().any(|(e, _)| e == "test.flood-end");
        (ended && floods >= FLOOD).then_some(got)
    })
    .await
    .expect("the flood and the marker arrive");
    assert_eq!(got.len(), FLOOD + 1, "each event exactly once: {got:?}");
    b.stop().await;
    a.stop().await;
}

/// Every id `probe.instance-id` answers with on `node`, over `calls` calls.
async fn ids(node: &Node, calls: usize) -> HashSet<u64> {
    let mut seen = HashSet::new();
    for _ in 0..calls {
        seen.insert(
            instance(node, Duration::from_secs(10))
                .await
                .expect("probe.instance-id"),
        );
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_calls_stay_local_when_another_node_serves_the_action_too() {
    let Some(nats_bin) = nats() else { return };
    let nats = Nats::start(&nats_bin).await;
    let a = Node::start(&nats.url, "wasm-a", 4, "msgpack", WORKER).await;
    let b = Node::start(&nats.url, "wasm-b", 4, "msgpack", WORKER).await;
    // Each sees that the other serves probe too.
    for (node, other) in [(&a, "wasm-b"), (&b, "wasm-a")] {
        let seen = eventually(Duration::from_secs(15), || async {
            node.transport()
                .nodes()
                .iter()
                .any(|n| n.id == other && n.actions.iter().any(|x| x == "probe.instance-id"))
                .then_some(())
        })
        .await;
        assert!(seen.is_some(), "{other} serves probe, as seen by its peer");
    }
    let on_a = ids(&a, 40).await;
    let on_b = ids(&b, 40).await;
    assert!(!on_a.is_empty() && !on_b.is_empty());
    assert!(
        on_a.is_disjoint(&on_b),
        "every call was served on the node that made it: a {on_a:?}, b {on_b:?}"
    );
    b.stop().await;
    a.stop().await;
}

// ------------------------------------------------------------ Redis: URLs and passwords

/// Joins `url` with `extra` `[cluster]` keys; the error, if any, as text.
async fn join_error(url: &str, extra: &str) -> (TestApp, Option<String>) {
    let toml = format!(
        "[app]\ncache_dir = \"{{CACHE}}\"\n\n[cluster]\ntransporter = \"{url}\"\n{extra}\n[packages.greeter]\ncomponent = \"{{GREETER}}\"\n"
    );
    let t = TestApp::start(&toml).await;
    let settings = t.app.manifest.cluster.clone().expect("[cluster]");
    let joined = tokio::time::timeout(
        Duration::from_secs(60),
        Transport::start(t.app.broker.clone(), settings),
    )
    .await
    .expect("a join ends, even against a server that says nothing");
    match joined {
        Ok(transport) => {
            transport.stop(Duration::from_secs(2)).await;
            (t, None)
        }
        Err(e) => (t, Some(e.to_string())),
    }
}

/// A Redis URL that does not answer (a closed port, a listener that says
/// nothing) is an error naming the setting and the URL without its
/// password; the node keeps serving its packages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_url_that_does_not_answer_is_a_clear_error() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
    let quiet = silent.local_addr().expect("addr").port();
    for port in [port, quiet] {
        let url = format!("redis://:pa55word@127.0.0.1:{port}/2");
        let (t, e) = join_error(&url, "").await;
        let e = e.expect("no Redis there");
        assert!(
            e.contains(&format!("redis://***@127.0.0.1:{port}/2"))
                && e.contains("[cluster] transporter"),
            "{e}"
        );
        assert!(!e.contains("pa55word"), "the password is never shown: {e}");
        assert_eq!(
            t.ok("greeter.hello", json!({ "name": "Ada" })).await,
            json!("Hello, Ada!")
        );
        t.app.shutdown().await;
    }
    drop(silent);
}

/// A password in the URL or from `token_file` opens a redis-server that
/// requires one; a wrong one is an error that does not show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_passwords_from_the_url_or_a_file_are_used_and_never_shown() {
    let Some(binary) = redis() else { return };
    let redis = Redis::start(&binary, &["--requirepass", "s3cretpw"]).await;
    let hostport = redis.url.trim_start_matches("redis://");
    let (t, e) = join_error(&format!("redis://:s3cretpw@{hostport}/3"), "").await;
    assert_eq!(e, None, "the URL's password opens it");
    t.app.shutdown().await;
    let file = tempfile_with("s3cretpw\n");
    let key = format!("token_file = \"{}\"", file.display());
    let (t, e) = join_error(&redis.url, &key).await;
    assert_eq!(e, None, "token_file is the password");
    t.app.shutdown().await;
    let (t, e) = join_error(&format!("redis://:wr0ngpw@{hostport}"), "").await;
    let e = e.expect("a wrong password is refused");
    assert!(
        e.contains("[cluster] transporter") && !e.contains("wr0ngpw"),
        "{e}"
    );
    t.app.shutdown().await;
    let (t, e) = join_error(&redis.url, "").await;
    let e = e.expect("no password is refused");
    assert!(e.contains("[cluster] transporter"), "{e}");
    t.app.shutdown().await;
    let _ = std::fs::remove_file(file);
}

/// A file of `text` in the temporary folder.
fn tempfile_with(text: &str) -> PathBuf {
    static N: AtomicU64 = AtomicU64::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("steedos-redis-{}-{n}", std::process::id()));
    std::fs::write(&path, text).expect("write secret");
    path
}

/// Sends one command to the redis-server at `url` over a raw socket; its
/// answer's first line.
async fn redis_command(url: &str, args: &[&str]) -> String {
    let addr = url.trim_start_matches("redis://");
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("redis");
    let mut command = format!("*{}\r\n", args.len());
    for a in args {
        command.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    socket.write_all(command.as_bytes()).await.expect("send");
    let mut line = String::new();
    BufReader::new(socket)
        .read_line(&mut line)
        .await
        .expect("answer");
    line
}

/// redis-server cuts a node's connections (as it cuts a subscriber that
/// falls behind, `client-output-buffer-limit pubsub`): the cut is counted
/// in `packets_dropped`, both connections come back, and calls between the
/// nodes work again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_redis_cuts_are_counted_and_come_back() {
    let Some(server) = Server::start(Bus::Redis).await else {
        return;
    };
    let url = server.url();
    let a = Node::start(url, "wasm-a", 4, "json", CALLER).await;
    let b = Node::start(url, "wasm-b", 4, "json", WORKER).await;
    a.wait_for("probe.instance-id").await;
    instance(&a, Duration::from_secs(5)).await.expect("a call");
    let dropped = a.transport().stats().packets_dropped;
    for kind in ["pubsub", "normal"] {
        let killed = redis_command(url, &["CLIENT", "KILL", "TYPE", kind]).await;
        assert!(killed.starts_with(':'), "{killed}");
    }
    let back = eventually(Duration::from_secs(30), || async {
        instance(&a, Duration::from_secs(2)).await.ok()
    })
    .await;
    assert!(back.is_some(), "calls between the nodes work again");
    assert!(
        a.transport().stats().packets_dropped > dropped,
        "the cut subscriber is counted"
    );
    a.stop().await;
    b.stop().await;
}

//! Hostile peers on the bus: a raw NATS client (async-nats, no Moleculer)
//! publishes what an attacker would against a real steedos-wasm node on a
//! real nats-server, and the node must keep serving, answer only what it
//! publishes, keep bounded state, and take answers only from the node
//! asked. Also NATS credentials: a server that requires a token or a user
//! and password, and a wrong token.

use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use serde_json::{Value, json};
use steedos_tests::eventually;
use steedos_wasm::context::CallContext;
use steedos_wasm::manifest::{ClusterAuth, Secret};
use steedos_wasm::transport::Transport;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::cluster::{Nats, Node, Redis, redis, tools};

const GREETER_AND_TALLY: &str = r#"
[packages.greeter]
component = "{GREETER}"
[packages.tally]
component = "{TALLY}"
"#;

/// A raw NATS client speaking Moleculer's JSON by hand.
struct Raw {
    client: async_nats::Client,
}

impl Raw {
    async fn connect(url: &str) -> Raw {
        Raw::connect_with(url, async_nats::ConnectOptions::new()).await
    }

    async fn connect_with(url: &str, options: async_nats::ConnectOptions) -> Raw {
        Raw {
            client: options.connect(url).await.expect("raw client connects"),
        }
    }

    async fn send(&self, subject: &str, packet: impl Into<Bytes>) {
        self.client
            .publish(subject.to_owned(), packet.into())
            .await
            .expect("publish");
    }

    async fn send_json(&self, subject: &str, packet: &Value) {
        self.send(subject, serde_json::to_vec(packet).expect("json"))
            .await;
    }

    async fn subscribe(&self, subject: &str) -> async_nats::Subscriber {
        let sub = self
            .client
            .subscribe(subject.to_owned())
            .await
            .expect("subscribe");
        self.client.flush().await.expect("flush");
        sub
    }

    /// A legitimate Moleculer call of `action` on `node` as sender `me`:
    /// the RES packet.
    async fn call(&self, me: &str, node: &str, action: &str, params: Value) -> Value {
        let mut answers = self.subscribe(&format!("MOL.RES.{me}")).await;
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let id = format!("legit-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        self.send_json(
            &format!("MOL.REQ.{node}"),
            &json!({ "ver": "4", "sender": me, "id": id, "action": action,
                     "params": params, "meta": {}, "timeout": 10000, "level": 1 }),
        )
        .await;
        next_json(&mut answers, Duration::from_secs(15))
            .await
            .expect("the node answers a legitimate call")
    }
}

async fn next_json(sub: &mut async_nats::Subscriber, within: Duration) -> Option<Value> {
    let message = tokio::time::timeout(within, sub.next()).await.ok()??;
    serde_json::from_slice(&message.payload).ok()
}

/// Packets that each broke something once, or could: numbers that do not
/// fit, senders that smuggle NATS protocol, wrong types, deep nesting,
/// garbage. Each goes to every subject the node reads.
fn hostile_packets() -> Vec<Vec<u8>> {
    let inject = "x 0\r\n\r\nUNSUB 1\r\nPUB MOL.PWNED 5\r\nowned\r\n";
    let mut deep = "[".repeat(100_000);
    deep.push_str(&"]".repeat(100_000));
    let packets = [
        json!({ "ver": "4", "sender": "evil", "id": "1", "action": "greeter.hello", "params": { "name": "a" }, "timeout": 1e300 }),
        json!({ "ver": "4", "sender": "evil", "id": "2", "action": "greeter.hello", "params": { "name": "a" }, "timeout": -5 }),
        json!({ "ver": "4", "sender": "evil", "id": "3", "action": "greeter.hello", "params": { "name": "a" }, "timeout": 1.7e308, "level": 4_000_000_000u64 }),
        json!({ "ver": "4", "sender": "evil", "id": "4", "action": "greeter.hello", "params": { "name": "a" }, "level": -1 }),
        json!({ "ver": "4", "sender": inject, "id": "5", "action": "greeter.hello", "params": {} }),
        json!({ "ver": "4", "sender": "a.*", "id": "6", "action": "greeter.hello", "params": {} }),
        json!({ "ver": "4", "sender": ">", "services": [] }),
        json!({ "ver": "4", "sender": "evil", "time": i64::MIN, "id": "p", "arrived": i64::MAX }),
        json!({ "ver": "4", "sender": "evil", "id": "7", "success": true, "data": 1 }),
        json!({ "ver": "4", "sender": "evil", "event": "test.x", "data": { "n": 1 }, "groups": [inject], "broadcast": false }),
        json!({ "ver": "4", "sender": "evil", "services": [{ "name": 5 }] }),
        json!({ "ver": 4, "sender": ["evil"] }),
        json!({ "ver": "4", "sender": "evil", "services": { "not": "a list" }, "seq": -1 }),
        json!(null),
        json!("string"),
    ];
    let mut out: Vec<Vec<u8>> = packets
        .iter()
        .map(|p| serde_json::to_vec(p).expect("json"))
        .collect();
    out.push(deep.into_bytes());
    out.push(vec![0xff, 0xfe, 0x00, 0x80]);
    out.push(Vec::new());
    out.push(
        br#"{"ver":"4","sender":"evil","id":"8","action":"greeter.hello","timeout":1e999}"#
            .to_vec(),
    );
    out
}

/// Regression: a REQ with `"timeout": 1e300` panicked the only task that
/// reads REQs; the node kept advertising and never answered again. Every
/// hostile packet on every subject is now dropped (counted), the huge
/// timeout is clamped and served, and a legitimate call still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_packets_on_every_subject_do_not_stop_the_node() {
    let Some((nats_bin, _)) = tools() else { return };
    let nats = Nats::start(&nats_bin).await;
    let node = Node::start(&nats.url, "wasm-target", 4, "json", GREETER_AND_TALLY).await;
    let raw = Raw::connect(&nats.url).await;
    let mut evil_answers = raw.subscribe("MOL.RES.evil").await;
    let subjects = [
        "MOL.REQ.wasm-target",
        "MOL.RES.wasm-target",
        "MOL.EVENT.wasm-target",
        "MOL.DISCOVER",
        "MOL.DISCOVER.wasm-target",
        "MOL.INFO",
        "MOL.INFO.wasm-target",
        "MOL.HEARTBEAT",
        "MOL.PING",
        "MOL.PING.wasm-target",
        "MOL.PONG.wasm-target",
        "MOL.DISCONNECT",
    ];
    for subject in subjects {
        for packet in hostile_packets() {
            raw.send(subject, packet).await;
        }
    }
    // The REQ with a timeout of 1e300 is answered like any other.
    let answered = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match next_json(&mut evil_answers, Duration::from_secs(15)).await {
                Some(res) if res["id"] == "1" => return res,
                _ => continue,
            }
        }
    })
    .await
    .expect("the REQ with timeout 1e300 is answered");
    assert_eq!(answered["success"], true, "{answered}");
    assert_eq!(answered["data"], "Hello, a!", "{answered}");

    let res = raw
        .call(
            "legit",
            "wasm-target",
            "greeter.hello",
            json!({ "name": "Ada" }),
        )
        .await;
    assert_eq!(res["success"], true, "{res}");
    assert_eq!(res["data"], "Hello, Ada!", "{res}");
    assert!(node.transport().stats().packets_dropped > 0);
    // `evil` may be known (an INFO without services is a valid one), but
    // serves nothing, and no bad sender is known.
    let nodes = node.transport().nodes();
    assert!(
        nodes
            .iter()
            .all(|n| n.actions.is_empty() && (n.id == "evil" || n.id == "legit")),
        "{nodes:?}"
    );
    node.stop().await;
}

/// Regression: a DISCOVER whose sender held `\r\nUNSUB 1\r\nPUB ...` made
/// the node's own connection unsubscribe its REQ subject and publish where
/// the attacker chose. Such a sender is refused: nothing reaches the
/// attacker's subject and the REQ subscription still works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_smuggling_nats_protocol_is_refused() {
    let Some((nats_bin, _)) = tools() else { return };
    let nats = Nats::start(&nats_bin).await;
    let node = Node::start(&nats.url, "wasm-target", 4, "json", GREETER_AND_TALLY).await;
    let raw = Raw::connect(&nats.url).await;
    let mut pwned = raw.subscribe("MOL.PWNED").await;
    let mut everything = raw.subscribe(">").await;
    let mut infos = raw.subscribe("MOL.INFO.spy").await;
    for sid in 1..=20 {
        let sender = format!("x 0\r\n\r\nUNSUB {sid}\r\nPUB MOL.PWNED 5\r\nowned\r\n");
        for kind in ["DISCOVER", "HEARTBEAT", "PING"] {
            raw.send_json(
                &format!("MOL.{kind}"),
                &json!({ "ver": "4", "sender": sender, "id": "p", "time": 0 }),
            )
            .await;
        }
    }
    // A DISCOVER after them, answered: the node has read the ones before.
    raw.send_json("MOL.DISCOVER", &json!({ "ver": "4", "sender": "spy" }))
        .await;
    let info = next_json(&mut infos, Duration::from_secs(15))
        .await
        .expect("INFO for the spy");
    assert_eq!(info["sender"], "wasm-target");
    let res = raw
        .call(
            "legit",
            "wasm-target",
            "greeter.hello",
            json!({ "name": "Bo" }),
        )
        .await;
    assert_eq!(
        res["data"], "Hello, Bo!",
        "the REQ subscription still works: {res}"
    );
    assert!(
        tokio::time::timeout(Duration::from_millis(300), pwned.next())
            .await
            .is_err(),
        "something was published on the attacker's subject"
    );
    // Nothing the node published went to a subject holding the smuggled text.
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(100), everything.next()).await
    {
        assert!(
            !m.subject.contains("PWNED") && !m.subject.contains(' '),
            "{}",
            m.subject
        );
    }
    node.stop().await;
}

/// Regression: pending-call ids were sequential and a RES was matched by
/// its own `sender`, so a client that never saw a REQ answered it. Ids are
/// random now: an attacker spraying guessed ids under the right sender
/// name, and one answering a seen id under another name, are both ignored
/// and the genuine answer arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_answers_are_not_taken() {
    let Some((nats_bin, _)) = tools() else { return };
    let nats = Nats::start(&nats_bin).await;
    let node = Node::start(&nats.url, "wasm-caller", 4, "json", GREETER_AND_TALLY).await;
    // A fake Moleculer node `peer-b` serving `remote.slow`, answering each
    // REQ after 600 ms; it tells the test the REQ's id meanwhile.
    let peer = Raw::connect(&nats.url).await;
    let mut reqs = peer.subscribe("MOL.REQ.peer-b").await;
    let info = json!({ "ver": "4", "sender": "peer-b", "instanceID": "i1", "seq": 1,
        "services": [{ "name": "remote", "actions": { "remote.slow": { "name": "remote.slow" } }, "events": {} }] });
    peer.send_json("MOL.INFO", &info).await;
    assert!(
        node.transport()
            .wait_for_action("remote.slow", Duration::from_secs(15))
            .await
    );
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<String>();
    let peer_client = peer.client.clone();
    let answering = tokio::spawn(async move {
        while let Some(m) = reqs.next().await {
            let req: Value = serde_json::from_slice(&m.payload).expect("REQ");
            let id = req["id"].as_str().expect("id").to_owned();
            let _ = seen_tx.send(id.clone());
            tokio::time::sleep(Duration::from_millis(600)).await;
            let res = json!({ "ver": "4", "sender": "peer-b", "id": id, "success": true, "data": "genuine", "meta": {} });
            let _ = peer_client
                .publish(
                    "MOL.RES.wasm-caller",
                    serde_json::to_vec(&res).expect("json").into(),
                )
                .await;
        }
    });
    let attacker = Raw::connect(&nats.url).await;
    let broker = node.t.app.broker.clone();
    let call = tokio::spawn(async move {
        broker
            .call_json(
                "remote.slow",
                b"{}",
                CallContext::new(Duration::from_secs(10)),
            )
            .await
    });
    let real_id = tokio::time::timeout(Duration::from_secs(10), seen.recv())
        .await
        .expect("the REQ reaches peer-b")
        .expect("id");
    // Guesses under the right sender: the old sequential ids, and more.
    for guess in (0..2000)
        .map(|i| i.to_string())
        .chain(["00000000-0000-0000-0000-000000000001".into(), "".into()])
    {
        attacker
            .send_json(
                "MOL.RES.wasm-caller",
                &json!({ "ver": "4", "sender": "peer-b", "id": guess, "success": true, "data": "forged" }),
            )
            .await;
    }
    // The real id, from a node it was not sent to.
    attacker
        .send_json(
            "MOL.RES.wasm-caller",
            &json!({ "ver": "4", "sender": "peer-c", "id": real_id, "success": true, "data": "forged" }),
        )
        .await;
    let answer = call.await.expect("call task").expect("answered");
    assert_eq!(answer, json!("genuine"));
    answering.abort();
    node.stop().await;
}

/// `[cluster] publish` lists what the cluster sees: other actions are not
/// in INFO and a REQ for them is refused as not found, although a package
/// here serves them (the gateway and local callers still reach them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublished_actions_are_neither_announced_nor_served() {
    let Some((nats_bin, _)) = tools() else { return };
    let nats = Nats::start(&nats_bin).await;
    let packages = format!("publish = [\"greeter.*\"]\n{GREETER_AND_TALLY}");
    let node = Node::start(&nats.url, "wasm-target", 4, "json", &packages).await;
    let raw = Raw::connect(&nats.url).await;
    let mut infos = raw.subscribe("MOL.INFO.spy").await;
    raw.send_json("MOL.DISCOVER", &json!({ "ver": "4", "sender": "spy" }))
        .await;
    let info = next_json(&mut infos, Duration::from_secs(15))
        .await
        .expect("INFO");
    let actions: Vec<String> = info["services"]
        .as_array()
        .expect("services")
        .iter()
        .flat_map(|s| {
            s["actions"]
                .as_object()
                .into_iter()
                .flat_map(|a| a.keys().cloned())
        })
        .collect();
    assert!(actions.iter().any(|a| a == "greeter.hello"), "{actions:?}");
    assert!(
        actions.iter().all(|a| !a.starts_with("tally.")),
        "{actions:?}"
    );

    let res = raw
        .call("spy", "wasm-target", "tally.entries", json!({}))
        .await;
    assert_eq!(res["success"], false, "{res}");
    assert_eq!(res["error"]["name"], "ServiceNotFoundError", "{res}");
    let res = raw
        .call(
            "spy",
            "wasm-target",
            "greeter.hello",
            json!({ "name": "Cy" }),
        )
        .await;
    assert_eq!(res["data"], "Hello, Cy!", "{res}");
    node.t.ok("tally.entries", json!({})).await;
    node.stop().await;
}

/// Regression: 300 packets of another protocol version with 900 KB node
/// ids kept 258 MB for good. Now a long id is refused before it is kept,
/// other-version senders are remembered up to a bound, and so are nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_node_keeps_from_the_wire_is_bounded() {
    let Some((nats_bin, _)) = tools() else { return };
    let nats = Nats::start(&nats_bin).await;
    let node = Node::start(&nats.url, "wasm-target", 4, "json", GREETER_AND_TALLY).await;
    let raw = Raw::connect(&nats.url).await;
    let long = "n".repeat(900 * 1024);
    for i in 0..40 {
        raw.send_json(
            "MOL.INFO",
            &json!({ "ver": "3", "sender": format!("{long}{i}"), "services": [] }),
        )
        .await;
    }
    for i in 0..600 {
        raw.send_json(
            "MOL.HEARTBEAT",
            &json!({ "ver": "5", "sender": format!("old-{i}"), "cpu": 1 }),
        )
        .await;
    }
    // Last, so they are known when the test looks (they expire unheard).
    for i in 0..1100 {
        raw.send_json(
            "MOL.INFO",
            &json!({ "ver": "4", "sender": format!("fake-{i}"), "instanceID": "x", "services": [] }),
        )
        .await;
    }
    // The fake nodes expire after heartbeat_timeout (2.5 s): watch the
    // most known at once while the drops are counted.
    let most = std::cell::Cell::new(0);
    let dropped = eventually(Duration::from_secs(30), || async {
        let stats = node.transport().stats();
        most.set(most.get().max(stats.nodes_known));
        (stats.packets_dropped >= 40 + 1100 - 1024).then_some(())
    })
    .await;
    let stats = node.transport().stats();
    assert!(dropped.is_some(), "{stats:?}");
    assert_eq!(most.get(), 1024, "{stats:?}");
    assert!(stats.wrong_version_senders <= 256, "{stats:?}");
    assert!(stats.info_bytes < 1 << 20, "{stats:?}");
    let res = raw
        .call(
            "legit",
            "wasm-target",
            "greeter.hello",
            json!({ "name": "Di" }),
        )
        .await;
    assert_eq!(res["data"], "Hello, Di!", "{res}");
    node.stop().await;
}

/// A node joins a nats-server that requires credentials with a token or a
/// user and password read from files, and a wrong token fails with the
/// server's refusal named and without the secret in the error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_from_files_let_a_node_join_a_locked_server() {
    let Some((nats_bin, _)) = tools() else { return };
    let secrets = tempfile::tempdir().expect("tempdir");
    let token_file = secrets.path().join("token");
    std::fs::write(&token_file, "s3cret-token\n").expect("write");
    let wrong_file = secrets.path().join("wrong");
    std::fs::write(&wrong_file, "wr0ng-token").expect("write");
    let pass_file = secrets.path().join("pass");
    std::fs::write(&pass_file, "pa55word").expect("write");

    let locked = Nats::start_with(&nats_bin, &["--auth", "s3cret-token"]).await;
    let with_token = format!(
        "token_file = {:?}\n{GREETER_AND_TALLY}",
        token_file.display().to_string()
    );
    let node = Node::start(&locked.url, "wasm-token", 4, "json", &with_token).await;
    let raw = Raw::connect_with(
        &locked.url,
        async_nats::ConnectOptions::with_token("s3cret-token".into()),
    )
    .await;
    let res = raw
        .call(
            "legit",
            "wasm-token",
            "greeter.hello",
            json!({ "name": "Ed" }),
        )
        .await;
    assert_eq!(res["data"], "Hello, Ed!", "{res}");

    // Without credentials, and with the wrong token: refused, named.
    let mut settings = node.t.app.manifest.cluster.clone().expect("[cluster]");
    settings.node_id = Some("wasm-wrong".into());
    settings.auth = ClusterAuth::Token(Secret::File(wrong_file));
    let e = Transport::start(node.t.app.broker.clone(), settings.clone())
        .await
        .err()
        .expect("a wrong token is refused")
        .to_string();
    assert!(e.contains("cannot connect to the transporter"), "{e}");
    assert!(e.to_lowercase().contains("authorization"), "{e}");
    assert!(!e.contains("wr0ng-token"), "{e}");
    settings.auth = ClusterAuth::None;
    settings.transporter = locked.url.replace("nats://", "nats://guess:guess-pass@");
    let e = Transport::start(node.t.app.broker.clone(), settings)
        .await
        .err()
        .expect("no token is refused")
        .to_string();
    assert!(!e.contains("guess-pass"), "{e}");
    node.stop().await;
    drop(raw);

    let users = Nats::start_with(&nats_bin, &["--user", "shop", "--pass", "pa55word"]).await;
    let with_user = format!(
        "user = \"shop\"\npassword_file = {:?}\n{GREETER_AND_TALLY}",
        pass_file.display().to_string()
    );
    let node = Node::start(&users.url, "wasm-user", 4, "json", &with_user).await;
    let raw = Raw::connect_with(
        &users.url,
        async_nats::ConnectOptions::with_user_and_password("shop".into(), "pa55word".into()),
    )
    .await;
    let res = raw
        .call(
            "legit",
            "wasm-user",
            "greeter.hello",
            json!({ "name": "Fa" }),
        )
        .await;
    assert_eq!(res["data"], "Hello, Fa!", "{res}");
    node.stop().await;
}

/// Runs `openssl` with `args` in `dir`; `false` when it is not installed.
fn openssl(dir: &std::path::Path, args: &[&str]) -> bool {
    match std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
    {
        Ok(status) => {
            assert!(status.success(), "openssl {args:?} failed");
            true
        }
        Err(_) => false,
    }
}

/// A CA, a server certificate for 127.0.0.1 and a client certificate, in `dir`.
fn make_certs(dir: &std::path::Path) -> bool {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write");
    std::fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("write");
    let ca: Vec<&str> = ["req", "-x509"]
        .into_iter()
        .chain(ec)
        .chain([
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=steedos-test-ca",
        ])
        .collect();
    if !openssl(dir, &ca) {
        return false;
    }
    for who in ["server", "client"] {
        let (key, csr, pem, ext) = (
            format!("{who}.key"),
            format!("{who}.csr"),
            format!("{who}.pem"),
            format!("{who}.ext"),
        );
        let req: Vec<&str> = ["req"]
            .into_iter()
            .chain(ec)
            .chain(["-keyout", &key, "-out", &csr, "-subj", "/CN=127.0.0.1"])
            .collect();
        openssl(dir, &req);
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
    }
    true
}

/// TLS with a CA file and a client certificate: a nats-server that
/// verifies clients takes the node with `tls_ca`, `tls_cert` and
/// `tls_key`, and refuses one without a client certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_ca_and_a_client_certificate() {
    let Some((nats_bin, _)) = tools() else { return };
    let certs = tempfile::tempdir().expect("tempdir");
    if !steedos_tests::require::tools(&["openssl"]) {
        return;
    }
    assert!(make_certs(certs.path()), "openssl made no certificates");
    let path = |f: &str| certs.path().join(f).display().to_string();
    let nats = Nats::start_with(
        &nats_bin,
        &[
            "--tls",
            "--tlscert",
            &path("server.pem"),
            "--tlskey",
            &path("server.key"),
            "--tlscacert",
            &path("ca.pem"),
            "--tlsverify",
        ],
    )
    .await;
    let tls = format!(
        "tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n{GREETER_AND_TALLY}",
        path("ca.pem"),
        path("client.pem"),
        path("client.key")
    );
    let node = Node::start(&nats.url, "wasm-tls", 4, "json", &tls).await;
    let raw = Raw::connect_with(
        &nats.url,
        async_nats::ConnectOptions::new()
            .add_root_certificates(certs.path().join("ca.pem"))
            .add_client_certificate(
                certs.path().join("client.pem"),
                certs.path().join("client.key"),
            )
            .require_tls(true),
    )
    .await;
    let res = raw
        .call(
            "legit",
            "wasm-tls",
            "greeter.hello",
            json!({ "name": "Gu" }),
        )
        .await;
    assert_eq!(res["data"], "Hello, Gu!", "{res}");

    let mut settings = node.t.app.manifest.cluster.clone().expect("[cluster]");
    settings.node_id = Some("wasm-no-cert".into());
    settings.tls.client = None;
    let refused = Transport::start(node.t.app.broker.clone(), settings).await;
    assert!(
        refused.is_err(),
        "a node without a client certificate joined"
    );
    node.stop().await;
}

/// `rediss://` with a CA file and a client certificate: a redis-server
/// that speaks only TLS and verifies clients takes two nodes with
/// `tls_ca`, `tls_cert` and `tls_key`, which call each other over it; a
/// node without the client certificate, or over `redis://`, is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_ca_and_a_client_certificate() {
    let Some(binary) = redis() else { return };
    if !steedos_tests::require::tools(&["openssl"]) {
        return;
    }
    let certs = tempfile::tempdir().expect("tempdir");
    assert!(make_certs(certs.path()), "openssl made no certificates");
    let path = |f: &str| certs.path().join(f).display().to_string();
    let redis = Redis::start_tls(&binary, certs.path(), true).await;
    let tls = format!(
        "tls_ca = {:?}\ntls_cert = {:?}\ntls_key = {:?}\n",
        path("ca.pem"),
        path("client.pem"),
        path("client.key")
    );
    let worker = Node::start(
        &redis.url,
        "wasm-tls-b",
        4,
        "json",
        &format!("{tls}{GREETER_AND_TALLY}"),
    )
    .await;
    let caller = Node::start(&redis.url, "wasm-tls-a", 4, "json", &tls).await;
    caller.wait_for("greeter.hello").await;
    let hello = caller
        .t
        .call("greeter.hello", json!({ "name": "Gu" }))
        .await
        .expect("a call over rediss://");
    assert_eq!(hello, json!("Hello, Gu!"));

    let mut settings = caller.t.app.manifest.cluster.clone().expect("[cluster]");
    settings.node_id = Some("wasm-no-cert".into());
    settings.tls.client = None;
    let refused = Transport::start(caller.t.app.broker.clone(), settings.clone()).await;
    assert!(
        refused.is_err(),
        "a node without a client certificate joined"
    );
    settings.transporter = redis.url.replace("rediss://", "redis://");
    settings.tls = Default::default();
    let refused = Transport::start(caller.t.app.broker.clone(), settings).await;
    assert!(refused.is_err(), "a node without TLS joined");
    caller.stop().await;
    worker.stop().await;
}

/// Regression (issue 12): a REQ that could not be read was dropped in
/// silence, so its caller waited out its whole timeout. When its id and
/// sender can be read, it is now answered at once with a ValidationError
/// naming what was wrong; one with no readable id is still dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_request_with_a_readable_id_is_answered_with_an_error() {
    let Some((nats_bin, _)) = tools() else { return };
    let nats = Nats::start(&nats_bin).await;
    let node = Node::start(&nats.url, "wasm-target", 4, "json", GREETER_AND_TALLY).await;
    let raw = Raw::connect(&nats.url).await;
    let mut answers = raw.subscribe("MOL.RES.prober").await;
    let unreadable = [
        json!({ "ver": "4", "sender": "prober", "id": "bad-level", "action": "greeter.hello",
                "params": { "name": "a" }, "level": -1 }),
        json!({ "ver": "4", "sender": "prober", "id": "bad-timeout", "action": "greeter.hello",
                "params": { "name": "a" }, "timeout": "soon" }),
        json!({ "ver": "4", "sender": "prober", "id": "bad-action", "action": 5 }),
    ];
    for packet in &unreadable {
        raw.send_json("MOL.REQ.wasm-target", packet).await;
    }
    // No id: nothing to answer.
    raw.send_json(
        "MOL.REQ.wasm-target",
        &json!({ "ver": "4", "sender": "prober", "action": "greeter.hello", "level": -1 }),
    )
    .await;
    let mut seen = Vec::new();
    while seen.len() < unreadable.len() {
        let res = next_json(&mut answers, Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("an unreadable REQ is answered; got only {seen:?}"));
        assert_eq!(res["success"], false, "{res}");
        assert_eq!(res["error"]["name"], "ValidationError", "{res}");
        assert!(
            res["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("could not be read")),
            "{res}"
        );
        seen.push(res["id"].as_str().unwrap_or_default().to_string());
    }
    seen.sort();
    assert_eq!(seen, ["bad-action", "bad-level", "bad-timeout"]);
    assert!(
        next_json(&mut answers, Duration::from_millis(500))
            .await
            .is_none(),
        "a REQ without an id gets no answer"
    );
    let res = raw
        .call(
            "prober",
            "wasm-target",
            "greeter.hello",
            json!({ "name": "Ed" }),
        )
        .await;
    assert_eq!(res["data"], "Hello, Ed!", "{res}");
    node.stop().await;
}

/// Counts the packets `sub` receives until none comes for two seconds.
async fn count_until_quiet(sub: &mut async_nats::Subscriber) -> usize {
    let mut n = 0;
    while tokio::time::timeout(Duration::from_secs(2), sub.next())
        .await
        .ok()
        .flatten()
        .is_some()
    {
        n += 1;
    }
    n
}

/// Regression (issue 12): each DISCOVER was answered with a whole INFO,
/// each HEARTBEAT from an unknown node with a DISCOVER, and each INFO
/// rebuilt the registry, however many a peer sent. A flood of each from
/// one peer now costs a bounded number per second (the rest dropped and
/// counted), while another peer's DISCOVER during the flood is answered
/// and the flooding peer's node stays known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn floods_of_discover_heartbeat_and_info_cost_bounded_work() {
    let Some((nats_bin, _)) = tools() else { return };
    let nats = Nats::start(&nats_bin).await;
    let node = Node::start(&nats.url, "wasm-target", 4, "json", GREETER_AND_TALLY).await;
    let raw = Raw::connect(&nats.url).await;
    const FLOOD: usize = 1000;

    let mut infos = raw.subscribe("MOL.INFO.flood").await;
    let mut calm_infos = raw.subscribe("MOL.INFO.calm").await;
    for _ in 0..FLOOD {
        raw.send_json(
            "MOL.DISCOVER.wasm-target",
            &json!({ "ver": "4", "sender": "flood" }),
        )
        .await;
    }
    raw.send_json("MOL.DISCOVER", &json!({ "ver": "4", "sender": "calm" }))
        .await;
    let answered = count_until_quiet(&mut infos).await;
    assert!(
        (1..=60).contains(&answered),
        "{answered} INFOs for {FLOOD} DISCOVERs"
    );
    assert!(
        next_json(&mut calm_infos, Duration::from_secs(15))
            .await
            .is_some(),
        "another peer's DISCOVER is answered during the flood"
    );

    let mut asks = raw.subscribe("MOL.DISCOVER.beats").await;
    for _ in 0..FLOOD {
        raw.send_json(
            "MOL.HEARTBEAT",
            &json!({ "ver": "4", "sender": "beats", "cpu": 1 }),
        )
        .await;
    }
    let asked = count_until_quiet(&mut asks).await;
    assert!(
        (1..=100).contains(&asked),
        "{asked} DISCOVERs for {FLOOD} HEARTBEATs of an unknown node"
    );

    let before = node.transport().stats().packets_dropped;
    for seq in 0..FLOOD {
        raw.send_json(
            "MOL.INFO",
            &json!({ "ver": "4", "sender": "churn", "instanceID": "c", "seq": seq,
                     "services": [{ "name": format!("s{seq}"), "actions": {} }] }),
        )
        .await;
    }
    let dropped = eventually(Duration::from_secs(30), || async {
        let stats = node.transport().stats();
        (stats.packets_dropped - before >= (FLOOD - 100) as u64).then_some(stats)
    })
    .await;
    assert!(dropped.is_some(), "{:?}", node.transport().stats());
    assert!(
        node.transport().nodes().iter().any(|n| n.id == "churn"),
        "the flooding node is still known"
    );
    let res = raw
        .call(
            "calm",
            "wasm-target",
            "greeter.hello",
            json!({ "name": "Flo" }),
        )
        .await;
    assert_eq!(res["data"], "Hello, Flo!", "{res}");
    node.stop().await;
}

/// Each call-error kind reaches a peer as the Moleculer error its kind
/// names (`ErrorKind::moleculer`), and no error a peer reads carries the
/// host's record of a fault. Regression: a call of a package that failed
/// to load answered the peer with the host path of its component.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_kind_reaches_a_peer_as_its_moleculer_error_without_host_paths() {
    let Some((nats_bin, _)) = tools() else { return };
    let nats = Nats::start(&nats_bin).await;
    let packages = r#"
[packages.greeter]
component = "{GREETER}"
[packages.inventory]
component = "{INVENTORY}"
[packages.chaos]
component = "{CHAOS}"
timeout = "1s"
memory = "16 MiB"
restart = { max = 1, within = "30s", backoff = "30s" }
[packages.broken]
component = "{DIR}/hidden-place/broken.wasm"
"#;
    let node = Node::start(&nats.url, "wasm-target", 4, "json", packages).await;
    let raw = Raw::connect(&nats.url).await;
    let error_of = |res: &Value| {
        assert_eq!(res["success"], false, "{res}");
        let e = &res["error"];
        let message = e["message"].as_str().unwrap_or_default();
        assert!(
            !message.contains("hidden-place") && !message.contains("/tmp"),
            "a host path reached a peer: {res}"
        );
        (
            e["name"].as_str().unwrap_or_default().to_string(),
            e["code"].as_u64(),
            e["type"].as_str().unwrap_or_default().to_string(),
        )
    };
    let cases = [
        (
            "broken.anything",
            json!({}),
            ("ServiceNotFoundError", 404, "SERVICE_NOT_FOUND"),
        ),
        (
            "nobody.anything",
            json!({}),
            ("ServiceNotFoundError", 404, "SERVICE_NOT_FOUND"),
        ),
        (
            "greeter.hello",
            json!({ "name": 7 }),
            ("ValidationError", 422, "VALIDATION_ERROR"),
        ),
        (
            "inventory.reserve",
            json!({ "sku": "nope", "qty": 1 }),
            ("MoleculerClientError", 422, "FAILED"),
        ),
        (
            "chaos.crash",
            json!({}),
            ("MoleculerServerError", 500, "CRASHED"),
        ),
        (
            "chaos.spin",
            json!({}),
            ("RequestTimeoutError", 504, "REQUEST_TIMEOUT"),
        ),
    ];
    for (action, params, (name, code, kind)) in cases {
        let res = raw.call("asker", "wasm-target", action, params).await;
        assert_eq!(
            error_of(&res),
            (name.to_string(), Some(code), kind.to_string()),
            "{action}: {res}"
        );
    }
    // Two faults used chaos's one restart: it is in backoff, whose message
    // carries its last error, which the peer must not read.
    let overloaded = eventually(Duration::from_secs(15), || async {
        let res = raw
            .call("asker", "wasm-target", "chaos.ok", json!({}))
            .await;
        (res["error"]["type"] == "OVERLOADED").then_some(res)
    })
    .await
    .expect("chaos backs off");
    assert_eq!(
        error_of(&overloaded),
        (
            "MoleculerRetryableError".to_string(),
            Some(503),
            "OVERLOADED".to_string()
        ),
        "{overloaded}"
    );
    assert!(
        overloaded["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("host's log")),
        "{overloaded}"
    );
    node.stop().await;
}

/// Regression (issue 12): DISCOVERs under many forged ids (each within its
/// own per-peer budget) were each answered with a whole INFO. The answers
/// of one second are now bounded for all senders together, and the askers
/// past the bound hear one broadcast INFO when the second ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovers_under_many_ids_cost_bounded_work_and_every_asker_hears_an_info() {
    let Some((nats_bin, _)) = tools() else { return };
    let nats = Nats::start(&nats_bin).await;
    let node = Node::start(&nats.url, "wasm-target", 4, "json", GREETER_AND_TALLY).await;
    let raw = Raw::connect(&nats.url).await;
    let mut targeted = raw.subscribe("MOL.INFO.*").await;
    let mut broadcast = raw.subscribe("MOL.INFO").await;
    const ASKERS: usize = 3000;
    let started = std::time::Instant::now();
    for i in 0..ASKERS {
        raw.send_json(
            "MOL.DISCOVER",
            &json!({ "ver": "4", "sender": format!("asker-{i}") }),
        )
        .await;
    }
    let seconds = started.elapsed().as_secs() as usize;
    let answered = count_until_quiet(&mut targeted).await;
    assert!(
        answered <= 100 * (seconds + 2),
        "{answered} INFOs for {ASKERS} DISCOVERs sent over {seconds} s"
    );
    let info = next_json(&mut broadcast, Duration::from_secs(15))
        .await
        .expect("the askers past the bound hear a broadcast INFO");
    assert_eq!(info["sender"], "wasm-target", "{info}");
    let res = raw
        .call(
            "asker-1",
            "wasm-target",
            "greeter.hello",
            json!({ "name": "Gus" }),
        )
        .await;
    assert_eq!(res["data"], "Hello, Gus!", "{res}");
    node.stop().await;
}

/// The child half of [`a_flood_of_large_events_keeps_memory_bounded_and_is_counted`]:
/// a node of its own process (so its RSS is its own) serving greeter and
/// a one-instance `fragile` subscribed to `flood.*`, on the nats-server
/// named by `STEEDOS_FLOOD_NATS`; it prints its counters until its stdin
/// closes. Ignored: only the parent runs it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of a_flood_of_large_events_keeps_memory_bounded_and_is_counted"]
async fn flood_target_child() {
    let Ok(url) = std::env::var("STEEDOS_FLOOD_NATS") else {
        return;
    };
    let packages = r#"
[packages.greeter]
component = "{GREETER}"
[packages.fragile]
component = "{FRAGILE}"
instances = 1
events = ["flood.*"]
"#;
    let node = Node::start(&url, "flood-target", 4, "json", packages).await;
    let (closed_tx, mut closed) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
        let _ = closed_tx.send(());
    });
    println!("ready");
    loop {
        let stats = node.transport().stats();
        println!("stats {} {}", stats.events_received, stats.packets_dropped);
        tokio::select! {
            _ = &mut closed => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    node.stop().await;
}

/// The resident memory of process `pid` in MiB, and its peak since the
/// last [`reset_peak`].
fn rss_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn reset_peak(pid: u32) {
    let _ = std::fs::write(format!("/proc/{pid}/clear_refs"), "5");
}

/// Regression (issue 12): 1,500 EVENTs of 500 KB for a slow subscriber
/// took a node from 32 MB to 727 MB (the NATS client buffered up to
/// 262,144 messages per subscription and the node took them all), and an
/// event the client dropped for a full buffer was lost in silence. Now the
/// node (a process of its own) grows by far less, keeps answering calls
/// during and after the flood, and every event is either delivered or
/// counted as dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_large_events_keeps_memory_bounded_and_is_counted() {
    const FLOOD: u64 = 1500;
    const AHEAD: u64 = 100;
    let Some((nats_bin, _)) = tools() else { return };
    let nats = Nats::start(&nats_bin).await;
    let mut child = tokio::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "cluster_hostile::flood_target_child",
            "--ignored",
        ])
        .args(["--nocapture", "--test-threads=1"])
        .env("STEEDOS_FLOOD_NATS", &nats.url)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the child node");
    let pid = child.id().expect("child pid");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let ready = tokio::time::timeout(Duration::from_secs(120), async {
        while let Ok(Some(line)) = lines.next_line().await {
            if line.ends_with("ready") {
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(ready, Ok(true), "the child node started");
    let (counters_tx, counters) = tokio::sync::watch::channel((0u64, 0u64));
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let mut n = line
                .split_whitespace()
                .skip(1)
                .filter_map(|x| x.parse().ok());
            if let (true, Some(received), Some(dropped)) =
                (line.starts_with("stats "), n.next(), n.next())
            {
                let _ = counters_tx.send((received, dropped));
            }
        }
    });

    let raw = Raw::connect(&nats.url).await;
    let res = raw
        .call(
            "flooder",
            "flood-target",
            "greeter.hello",
            json!({ "name": "a" }),
        )
        .await;
    assert_eq!(res["data"], "Hello, a!", "{res}");
    let (before, _) = rss_of(pid);
    reset_peak(pid);
    let data = "x".repeat(500 << 10);
    // fragile's one instance sleeps 3 s in a call as the flood starts: its
    // event queue (16 MiB) fills, then this node's budget, so events are
    // dropped then however fast the machine reads them.
    let sleeper = {
        let raw = Raw {
            client: raw.client.clone(),
        };
        tokio::spawn(async move {
            let text = json!({ "text": "sleep:3000" });
            raw.call("sleeper", "flood-target", "fragile.echo", text)
                .await
        })
    };
    let flood = {
        let client = raw.client.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            // The 500 KB are the event's data: they reach the subscriber,
            // and count against its queue as well as this node's budget.
            let packet = json!({ "ver": "4", "sender": "flooder", "id": "e",
                "event": "flood.big", "data": data, "groups": ["fragile"],
                "broadcast": false, "meta": {}, "level": 1 });
            let bytes = Bytes::from(serde_json::to_vec(&packet).expect("json"));
            for sent in 0..FLOOD {
                // At most AHEAD events unaccounted for: nats-server would
                // cut a node that reads 750 MB more slowly than they come
                // (as it cuts any client), losing events on its side.
                while {
                    let (received, dropped) = *counters.borrow();
                    sent > received + dropped + AHEAD
                } {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                client
                    .publish("MOL.EVENT.flood-target", bytes.clone())
                    .await
                    .expect("publish");
            }
            client.flush().await.expect("flush");
        })
    };
    let during = raw
        .call(
            "flooder",
            "flood-target",
            "greeter.hello",
            json!({ "name": "b" }),
        )
        .await;
    assert_eq!(
        during["data"], "Hello, b!",
        "answered during the flood: {during}"
    );
    flood.await.expect("flood sent");
    let slept = sleeper.await.expect("sleeper");
    assert_eq!(
        slept["data"], "sleep:3000",
        "the sleeping call answered: {slept}"
    );
    let settled = eventually(Duration::from_secs(120), || {
        let counters = counters.clone();
        async move {
            let (received, dropped) = *counters.borrow();
            (received + dropped >= FLOOD).then_some((received, dropped))
        }
    })
    .await;
    let (received, dropped) = *counters.borrow();
    assert!(
        settled.is_some(),
        "every event delivered or counted dropped: {received} + {dropped} of {FLOOD}"
    );
    let after = raw
        .call(
            "flooder",
            "flood-target",
            "greeter.hello",
            json!({ "name": "c" }),
        )
        .await;
    assert_eq!(
        after["data"], "Hello, c!",
        "answered after the flood: {after}"
    );
    let (_, peak) = rss_of(pid);
    eprintln!("flood: {received} delivered, {dropped} dropped, {before} MiB -> peak {peak} MiB");
    assert!(
        peak.saturating_sub(before) < 300,
        "the node grew from {before} MiB to a peak of {peak} MiB"
    );
    assert!(dropped > 0, "a flood past the budget drops, counted");
    drop(child.stdin.take());
    let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
}

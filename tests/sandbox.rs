//! The sandbox is deny-by-default: no file outside a granted folder, no
//! env var that was not granted, no call that was not granted.

use std::time::Duration;

use serde_json::json;
use steedos_tests::{TestApp, eventually};
use steedos_wasm::context::CallError;

use crate::calls::forward;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_granted_files_env_vars_and_calls_are_reachable() {
    let t = TestApp::start_with(
        r#"
[packages.greeter]
component = "{GREETER}"
[packages.inventory]
component = "{INVENTORY}"
[packages.probe]
component = "{PROBE}"
[packages.probe.grants]
dirs = [{ host = "{DIR}/ro", guest = "/ro", read_only = true }, { host = "{DIR}/rw", guest = "/rw" }]
env = { MODE = "sandboxed" }
env_inherit = ["PATH"]
calls = ["greeter.*"]
[packages.bare]
component = "{PROBE}"
"#,
        |dir| {
            std::fs::create_dir(dir.join("ro")).expect("mkdir");
            std::fs::create_dir(dir.join("rw")).expect("mkdir");
            std::fs::write(dir.join("ro/hello.txt"), "hi there").expect("write");
            std::fs::write(dir.join("secret.txt"), "top secret").expect("write");
        },
    )
    .await;
    let read = |path: &str| t.call("probe.read-file", json!({ "path": path }));
    assert_eq!(
        read("/ro/hello.txt").await.expect("granted"),
        json!("hi there")
    );
    assert!(
        read("/ro/../secret.txt").await.is_err(),
        "no escape from a preopen"
    );
    assert!(read("/etc/passwd").await.is_err());
    assert!(read("secret.txt").await.is_err());
    let secret = t.dir.path().join("secret.txt").display().to_string();
    assert!(
        read(&secret).await.is_err(),
        "absolute host paths are not visible"
    );
    // Read-only means read-only; read-write means read-write.
    let write = |path: &str| t.call("probe.write-file", json!({ "path": path, "contents": "x" }));
    assert!(write("/ro/new.txt").await.is_err());
    assert!(!t.dir.path().join("ro/new.txt").exists());
    write("/rw/new.txt").await.expect("writable grant");
    assert_eq!(
        std::fs::read_to_string(t.dir.path().join("rw/new.txt")).expect("written"),
        "x"
    );

    let env = |name: &str| t.call("probe.env", json!({ "name": name }));
    assert_eq!(env("MODE").await.expect("env"), json!("sandboxed"));
    // PATH is granted by `env_inherit` (every test process has it); no other
    // variable of the host's leaks through.
    let path = std::env::var("PATH").expect("the test process has a PATH");
    assert_eq!(env("PATH").await.expect("env"), json!(path));
    for (name, _) in std::env::vars().filter(|(name, _)| name != "PATH" && name != "MODE") {
        assert_eq!(env(&name).await.expect("env"), json!(null), "{name} leaked");
    }
    // A package without grants sees nothing.
    assert_eq!(
        t.call("bare.env", json!({"name": "MODE"}))
            .await
            .expect("env"),
        json!(null)
    );
    assert!(
        t.call("bare.read-file", json!({"path": "/ro/hello.txt"}))
            .await
            .is_err()
    );

    assert_eq!(
        forward(&t, "probe", "greeter.hello", json!({"name": "p"}))
            .await
            .expect("granted"),
        json!("Hello, p!")
    );
    let denied = forward(&t, "probe", "inventory.get-item", json!({"sku": "apple"}))
        .await
        .unwrap_err();
    assert!(
        denied.contains("denied")
            && denied.contains("inventory.get-item")
            && denied.contains("grants"),
        "{denied}"
    );
    let denied = forward(&t, "bare", "greeter.hello", json!({"name": "p"}))
        .await
        .unwrap_err();
    assert!(denied.contains("denied"), "{denied}");
}

/// The hostile package, granted one read-write folder and nothing else.
const HOSTILE: &str = r#"
[packages.hostile]
component = "{HOSTILE}"
[packages.hostile.grants]
dirs = [{ host = "{DIR}/rw", guest = "/rw" }]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_can_open_no_socket_and_resolve_no_name() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr").to_string();
    let t = TestApp::start_with(HOSTILE, |dir| {
        std::fs::create_dir(dir.join("rw")).expect("mkdir")
    })
    .await;
    let refused = |what: &str, v: serde_json::Value| {
        let text = v.as_str().unwrap_or_default().to_string();
        assert!(text.starts_with("refused"), "{what}: {text}");
    };
    refused(
        "tcp connect",
        t.ok("hostile.tcp-connect", json!({ "addr": addr })).await,
    );
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "nothing may have connected"
    );
    for addr in ["127.0.0.1:0", "0.0.0.0:0"] {
        refused(
            "udp bind",
            t.ok("hostile.udp-bind", json!({ "addr": addr })).await,
        );
    }
    for host in ["localhost", "example.com"] {
        refused(
            "lookup",
            t.ok("hostile.lookup", json!({ "host": host })).await,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symbolic_link_a_package_leaves_never_leads_it_out_of_its_grant() {
    let t = TestApp::start_with(HOSTILE, |dir| {
        std::fs::create_dir(dir.join("rw")).expect("mkdir");
        std::fs::write(dir.join("secret.txt"), "top secret").expect("write");
    })
    .await;
    let call = |action: &'static str, params: serde_json::Value| t.ok(action, params);
    // An absolute target is refused outright.
    let absolute = call(
        "hostile.symlink",
        json!({ "target": "/etc/passwd", "link": "/rw/abs" }),
    )
    .await;
    assert!(
        absolute.as_str().unwrap_or_default().starts_with("refused"),
        "{absolute}"
    );
    // A relative one that climbs out may be left in the host folder (see
    // README, "Sockets and files"), but it never leads the package out.
    call(
        "hostile.symlink",
        json!({ "target": "../secret.txt", "link": "/rw/up" }),
    )
    .await;
    let read = call("hostile.read", json!({ "path": "/rw/up" })).await;
    assert!(
        read.as_str().unwrap_or_default().starts_with("refused"),
        "{read}"
    );
    let write = call(
        "hostile.write",
        json!({ "path": "/rw/up", "contents": "overwritten" }),
    )
    .await;
    assert!(
        write.as_str().unwrap_or_default().starts_with("refused"),
        "{write}"
    );
    assert_eq!(
        std::fs::read_to_string(t.dir.path().join("secret.txt")).expect("read"),
        "top secret"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_limit_holds_for_all_memories_of_an_instance() {
    let t = TestApp::start(
        r#"
[packages.hog]
component = "{FIXTURES}/eight-memories.wat"
memory = "16 MiB"
"#,
    )
    .await;
    // Eight memories of 17 pages: 8.5 MiB in all, within the limit.
    assert_eq!(t.ok("hog.grow", json!({ "pages": 16 })).await, json!(8));
    // Eight of 33 pages would be 16.5 MiB: the instance is out of memory.
    match t.call("hog.grow", json!({ "pages": 16 })).await {
        Err(steedos_wasm::context::CallError::Crashed(m)) => {
            assert!(m.contains("out of memory") && m.contains("16 MiB"), "{m}")
        }
        other => panic!("eight memories grew past the instance's limit: {other:?}"),
    }
    // Its replacement cannot take 12.5 MiB per memory either.
    let again = steedos_tests::eventually(std::time::Duration::from_secs(10), || async {
        match t.call("hog.grow", json!({ "pages": 200 })).await {
            Err(steedos_wasm::context::CallError::Crashed(m)) => Some(m),
            Err(steedos_wasm::context::CallError::Overloaded(_)) => None,
            other => panic!("{other:?}"),
        }
    })
    .await
    .expect("the replacement serves");
    assert!(again.contains("out of memory"), "{again}");
}

/// `rogue` calls `tally.record` from `started` without a `calls` grant;
/// `granted` is the same component with the grant.
const STARTED_CALLS: &str = r#"
[packages.tally]
component = "{TALLY}"
[packages.rogue]
component = "{ROGUE}"
[packages.granted]
component = "{ROGUE}"
[packages.granted.grants]
calls = ["tally.*"]
"#;

/// How many `started` hooks got a call through to `tally.record`.
pub async fn started_records(t: &TestApp) -> usize {
    t.tally()
        .await
        .iter()
        .filter(|(e, _)| e == "started")
        .count()
}

/// Regression: a package's grants were looked up by its name among the
/// installed packages, so a call from `started` (before the package is
/// installed) went through unchecked. At load and at every restart the
/// call is denied exactly as a later one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_from_started_is_held_to_the_callers_own_grants() {
    let t = TestApp::start(STARTED_CALLS).await;
    assert_eq!(t.ok("granted.started-outcome", json!({})).await, "ok");
    let outcome = t.ok("rogue.started-outcome", json!({})).await;
    let outcome = outcome.as_str().expect("text");
    assert!(
        outcome.starts_with("Denied")
            && outcome.contains("`rogue` may not call `tally.record`")
            && outcome.contains("[packages.rogue.grants]"),
        "{outcome}"
    );
    assert_eq!(started_records(&t).await, 1, "only `granted` got through");

    // A restarted instance runs `started` again: still denied.
    let crashed = t.call("rogue.crash", json!({})).await;
    assert!(matches!(crashed, Err(CallError::Crashed(_))), "{crashed:?}");
    let restarted = eventually(Duration::from_secs(10), || async {
        let report = t.app.broker.service("rogue")?.report();
        (report.restarts >= 1 && report.live == 1).then_some(())
    })
    .await;
    assert!(restarted.is_some(), "rogue was restarted");
    let outcome = t.ok("rogue.started-outcome", json!({})).await;
    assert!(
        outcome.as_str().is_some_and(|o| o.starts_with("Denied")),
        "{outcome}"
    );
    assert_eq!(
        started_records(&t).await,
        1,
        "the restart got nothing through"
    );
}

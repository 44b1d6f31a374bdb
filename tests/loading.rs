//! Loading an app: bad components, bad manifest entries and unresolvable
//! imports fail that package with a clear message; the rest serves.

use std::time::Duration;

use serde_json::json;
use steedos_tests::{TestApp, eventually};
use steedos_wasm::context::CallError;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_component_fails_alone() {
    let t = TestApp::start_with(
        r#"
[packages.greeter]
component = "{GREETER}"
[packages.broken]
component = "{DIR}/garbage.wasm"
"#,
        |dir| {
            std::fs::write(dir.join("garbage.wasm"), b"\0asm this is not a component")
                .expect("write")
        },
    )
    .await;
    let why = t.failure("broken").expect("broken is reported");
    assert!(
        why.contains("broken")
            && why.contains("garbage.wasm")
            && why.contains("not a valid WebAssembly component"),
        "{why}"
    );
    assert_eq!(
        t.ok("greeter.hello", json!({"name": "x"})).await,
        json!("Hello, x!")
    );
    match t.call("broken.anything", json!({})).await {
        Err(CallError::NotFound(m)) => assert!(m.contains("failed to load"), "{m}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_without_the_steedos_world_is_refused() {
    let t = TestApp::start(
        r#"
[packages.greeter]
component = "{GREETER}"
[packages.command]
component = "{FIXTURES}/not-a-package.wat"
"#,
    )
    .await;
    let why = t.failure("command").expect("command is reported");
    assert!(
        why.contains("not a steedos package") && why.contains("wasi:cli/run"),
        "{why}"
    );
    assert_eq!(t.state("greeter"), "serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_manifest_entry_fails_that_package_and_points_at_the_line() {
    let t = TestApp::start(
        r#"
[packages.greeter]
component = "{GREETER}"
[packages.typo]
component = "{GREETER}"
instnces = 3
"#,
    )
    .await;
    let why = t.failure("typo").expect("typo is reported");
    assert!(
        why.contains("instnces") && why.contains("steedos.toml:"),
        "{why}"
    );
    assert_eq!(
        t.ok("greeter.hello", json!({"name": "y"})).await,
        json!("Hello, y!")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_import_with_another_type_is_refused_naming_both_packages() {
    let t = TestApp::start(
        r#"
[packages.inventory]
component = "{INVENTORY}"
[packages.mismatch]
component = "{FIXTURES}/wrong-import.wat"
[packages.mismatch.grants]
calls = ["inventory.*"]
[packages.orphan]
component = "{FIXTURES}/missing-provider.wat"
"#,
    )
    .await;
    let why = t.failure("mismatch").expect("mismatch is reported");
    assert!(
        why.contains("mismatch")
            && why.contains("inventory")
            && why.contains("acme:inventory/stock@0.1.0")
            && why.contains("reserve"),
        "{why}"
    );
    let why = t.failure("orphan").expect("orphan is reported");
    assert!(
        why.contains("acme:nowhere/thing@0.1.0") && why.contains("no loaded package exports it"),
        "{why}"
    );
    assert_eq!(t.state("inventory"), "serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_typed_import_needs_a_grant() {
    let t = TestApp::start(
        r#"
[packages.inventory]
component = "{INVENTORY}"
[packages.shop]
component = "{SHOP}"
"#,
    )
    .await;
    let why = t.failure("shop").expect("shop is reported");
    assert!(
        why.contains("grants") && why.contains("inventory.*"),
        "{why}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_whose_started_fails_is_retried_until_it_starts() {
    let t = TestApp::start_with(
        r#"
[packages.greeter]
component = "{GREETER}"
[packages.probe]
component = "{PROBE}"
restart = { max = 1, within = "10s", backoff = "100ms", max_backoff = "200ms" }
[packages.probe.grants]
dirs = [{ host = "{DIR}/state", guest = "/state" }]
env = { PROBE_REQUIRE_FILE = "/state/ready" }
"#,
        |dir| std::fs::create_dir(dir.join("state")).expect("mkdir"),
    )
    .await;
    assert_eq!(
        t.ok("greeter.hello", json!({"name": "z"})).await,
        json!("Hello, z!")
    );
    match t.call("probe.instance-id", json!({})).await {
        Err(CallError::Overloaded(m)) => {
            assert!(m.contains("required file /state/ready is missing"), "{m}")
        }
        other => panic!("expected overloaded, got {other:?}"),
    }
    std::fs::write(t.dir.path().join("state/ready"), b"yes").expect("write");
    let started = eventually(Duration::from_secs(5), || async {
        t.call("probe.instance-id", json!({})).await.ok()
    })
    .await;
    assert!(
        started.is_some(),
        "probe started once its file appeared: {:?}",
        t.app.broker.reports()
    );
    assert_eq!(t.state("probe"), "serving");
}

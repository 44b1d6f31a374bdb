//! Loading an app: bad components, bad manifest entries and unresolvable
//! imports fail that package with a clear message; the rest serves.

use std::time::{Duration, Instant};

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_function_that_never_returns_fails_at_the_timeout() {
    let load = TestApp::start(
        r#"
[packages.greeter]
component = "{GREETER}"
[packages.endless]
component = "{FIXTURES}/endless-start.wat"
timeout = "300ms"
restart = { max = 1, within = "10s", backoff = "10s", max_backoff = "10s" }
"#,
    );
    let t = tokio::time::timeout(Duration::from_secs(60), load)
        .await
        .expect("the load ends although a start function never returns");
    let report = t
        .app
        .broker
        .reports()
        .into_iter()
        .find(|r| r.name == "endless")
        .expect("endless is reported");
    let why = report.last_error.unwrap_or_default();
    assert!(
        why.contains("endless") && why.contains("did not finish within 300ms"),
        "{why}"
    );
    assert_eq!(
        t.ok("greeter.hello", json!({"name": "x"})).await,
        json!("Hello, x!")
    );
}

/// A component exporting `n` functions, each its own action.
fn many_actions(n: usize) -> String {
    let mut wat = String::from(
        "(component\n  (core module $m (func (export \"f\") (result i32) i32.const 1))\n  \
         (core instance $i (instantiate $m))\n  \
         (func $f (result u32) (canon lift (core func $i \"f\")))\n",
    );
    for k in 0..n {
        wat.push_str(&format!("  (export \"f{k}\" (func $f))\n"));
    }
    wat.push_str(")\n");
    wat
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_with_100000_actions_is_refused_quickly() {
    let started = std::time::Instant::now();
    let load = TestApp::start_with(
        r#"
[packages.greeter]
component = "{GREETER}"
[packages.many]
component = "{DIR}/many.wat"
[packages.some]
component = "{DIR}/some.wat"
"#,
        |dir| {
            std::fs::write(dir.join("many.wat"), many_actions(100_000)).expect("write");
            std::fs::write(dir.join("some.wat"), many_actions(4000)).expect("write");
        },
    );
    let t = tokio::time::timeout(Duration::from_secs(120), load)
        .await
        .expect("the load ends");
    let why = t.failure("many").expect("many is refused");
    assert!(
        why.contains("many") && why.contains("more than 4096 actions"),
        "{why}"
    );
    // Below the cap, thousands of actions load, and are found by name.
    assert_eq!(t.ok("some.f3999", json!({})).await, json!(1));
    assert_eq!(t.state("greeter"), "serving");
    eprintln!("loaded in {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_that_is_no_regular_file_or_too_large_is_refused() {
    let t = TestApp::start_with(
        r#"
[app]
cache_dir = "{CACHE}"
max_component_size = "1 MiB"
[packages.greeter]
component = "{GREETER}"
[packages.zero]
component = "/dev/zero"
[packages.fifo]
component = "{DIR}/fifo.wasm"
[packages.folder]
component = "{DIR}/folder.wasm"
[packages.huge]
component = "{DIR}/huge.wasm"
"#,
        |dir| {
            let fifo = dir.join("fifo.wasm");
            let made = std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .expect("mkfifo");
            assert!(made.success());
            std::fs::create_dir(dir.join("folder.wasm")).expect("mkdir");
            // Sparse: 8 GiB that would take the host past its memory if read.
            let huge = std::fs::File::create(dir.join("huge.wasm")).expect("create");
            huge.set_len(8 << 30).expect("sparse file");
        },
    );
    let t = tokio::time::timeout(Duration::from_secs(60), t)
        .await
        .expect("the load ends (a FIFO must not be waited on)");
    for (package, what) in [
        ("zero", "a character device"),
        ("fifo", "a FIFO"),
        ("folder", "a folder"),
    ] {
        let why = t.failure(package).expect("refused");
        assert!(
            why.contains(package) && why.contains("not a regular file") && why.contains(what),
            "{why}"
        );
    }
    let why = t.failure("huge").expect("refused");
    assert!(
        why.contains("huge") && why.contains("larger than") && why.contains("max_component_size"),
        "{why}"
    );
    assert_eq!(t.state("greeter"), "serving");
}

#[test]
fn no_grant_reaches_the_compile_cache_or_the_host_state() {
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path();
    for d in ["data", ".steedos/cache", "elsewhere/cache"] {
        std::fs::create_dir_all(root.join(d)).expect("mkdir");
    }
    std::os::unix::fs::symlink(root.join(".steedos/cache"), root.join("sneaky")).expect("symlink");
    let manifest = |app: &str, host: &str| {
        let text = format!(
            "[app]\n{app}\n[packages.writer]\ncomponent = \"w.wasm\"\n\
             [packages.writer.grants]\ndirs = [{{ host = \"{host}\", guest = \"/w\" }}]\n"
        );
        steedos_wasm::manifest::Manifest::parse(&text, &root.join("steedos.toml"))
            .expect("the manifest parses")
    };
    for (app, host, how) in [
        ("", ".", "holds"),
        ("", ".steedos", "is"),
        ("", ".steedos/cache", "is inside"),
        ("", "sneaky", "is inside"),
        ("cache_dir = \"elsewhere/cache\"", "elsewhere", "holds"),
        ("cache_dir = \"data/cache\"", "data", "holds"),
        ("cache_dir = \"elsewhere\"", "elsewhere/cache", "is inside"),
    ] {
        let m = manifest(app, host);
        assert!(m.packages.is_empty(), "{host} granted with {app:?}");
        let why = m.rejected[0].to_string();
        assert!(
            why.contains("steedos.toml:6:")
                && why.contains("package `writer`")
                && why.contains(&format!("{host:?} {how}"))
                && why.contains("host's own state"),
            "{why}"
        );
    }
    // A folder beside the state is fine.
    assert_eq!(manifest("", "data").packages.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_cache_entry_is_compiled_afresh() {
    use steedos_wasm::app::{App, LoadOptions};
    use steedos_wasm::engine::Compiled;
    let dir = tempfile::tempdir().expect("temp dir");
    let load = |name: &'static str, component: &'static str, cache: &'static str| {
        let root = dir.path().to_path_buf();
        async move {
            let text = format!(
                "[app]\ncache_dir = \"{cache}\"\n[packages.{name}]\ncomponent = \"{component}\"\n"
            );
            let m = steedos_wasm::manifest::Manifest::parse(&text, &root.join("steedos.toml"))
                .expect("manifest");
            let options = LoadOptions {
                build: false,
                ..LoadOptions::default()
            };
            App::load(m, &options).await.expect("loads")
        }
    };
    let entries = |cache: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir.path().join(cache))
            .expect("cache dir")
            .map(|e| e.expect("entry").path())
            .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
            .collect()
    };
    let greeter = steedos_tests::guests::GREETER;
    let probe = steedos_tests::guests::PROBE;
    let first = load("greeter", greeter, "a").await;
    assert_eq!(first.loaded[0].compiled, Some(Compiled::Fresh));
    first.shutdown().await;
    drop(first);
    let again = load("greeter", greeter, "a").await;
    assert_eq!(again.loaded[0].compiled, Some(Compiled::Cached));
    again.shutdown().await;
    drop(again);
    load("probe", probe, "b").await.shutdown().await;
    let (a, b) = (entries("a"), entries("b"));
    assert_eq!((a.len(), b.len()), (1, 1));
    // Another package's valid code under greeter's name: the worst case.
    std::fs::copy(&b[0], &a[0]).expect("swap");
    let t = load("greeter", greeter, "a").await;
    assert_eq!(t.loaded[0].compiled, Some(Compiled::Fresh));
    let ctx = steedos_wasm::context::CallContext::new(Duration::from_secs(10));
    let hello = t
        .broker
        .call_json("greeter.hello", br#"{"name":"Ada"}"#, ctx)
        .await
        .expect("greeter answers");
    assert_eq!(hello, json!("Hello, Ada!"));
    t.shutdown().await;
    drop(t);
    // A flipped byte in the code is caught the same way.
    let mut bytes = std::fs::read(&a[0]).expect("read");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(&a[0], bytes).expect("write");
    let t = load("greeter", greeter, "a").await;
    assert_eq!(t.loaded[0].compiled, Some(Compiled::Fresh));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_app_asking_for_more_instances_than_the_host_holds_gets_one_error() {
    use steedos_wasm::app::{App, AppError, LoadOptions};
    let dir = tempfile::tempdir().expect("temp dir");
    let text = format!(
        "[app]\ncache_dir = \"{}\"\nmax_instances = 5\n\
         [packages.a]\ncomponent = \"{}\"\ninstances = 3\n\
         [packages.b]\ncomponent = \"{}\"\ninstances = {{ min = 1, max = 4 }}\n",
        steedos_tests::shared_cache().display(),
        steedos_tests::guests::GREETER,
        steedos_tests::guests::GREETER,
    );
    let m = steedos_wasm::manifest::Manifest::parse(&text, &dir.path().join("steedos.toml"))
        .expect("manifest");
    let options = LoadOptions {
        build: false,
        ..LoadOptions::default()
    };
    match App::load(m, &options).await {
        Err(e @ AppError::Capacity { .. }) => {
            let why = e.to_string();
            assert!(
                why.contains("up to 7 instances")
                    && why.contains("b: 4")
                    && why.contains("a: 3")
                    && why.contains("holds 5")
                    && why.contains("max_instances"),
                "{why}"
            );
        }
        Err(e) => panic!("{e}"),
        Ok(_) => panic!("an app larger than the host loaded"),
    }
    // The command line's capacity wins over the manifest's.
    let m = steedos_wasm::manifest::Manifest::parse(&text, &dir.path().join("steedos.toml"))
        .expect("manifest");
    let options = LoadOptions {
        build: false,
        max_instances: Some(7),
        ..LoadOptions::default()
    };
    let app = App::load(m, &options).await.expect("fits in 7");
    assert_eq!(app.capacity, 7);
    app.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_failing_to_start_again_and_again_logs_it_once_in_a_while() {
    let logs = steedos_tests::logs();
    let began = Instant::now();
    // A package name no other test uses: every test's logs land together.
    let t = TestApp::start(
        r#"
[packages.startloop]
component = "{PROBE}"
instances = 2
restart = { max = 10000, within = "1s", backoff = "1ms", max_backoff = "1ms" }
[packages.startloop.grants]
env = { PROBE_REQUIRE_FILE = "/nowhere/ready" }
"#,
    )
    .await;
    let service = t.app.broker.service("startloop").unwrap_or_else(|| {
        panic!(
            "startloop: {:?} {:?}",
            t.app.broker.failures(),
            t.app.broker.reports()
        )
    });
    let many = eventually(Duration::from_secs(60), || async {
        (service.report().restarts >= 200).then_some(())
    })
    .await;
    assert!(
        many.is_some(),
        "it keeps restarting: {:?}",
        service.report()
    );
    let lines: Vec<String> = logs
        .text()
        .lines()
        .filter(|l| l.contains("instance failed to start") && l.contains("startloop"))
        .map(str::to_string)
        .collect();
    // One line now and one per 5 s after, whatever the failure rate.
    let elapsed_windows = 1 + (began.elapsed().as_secs() / 5) as usize;
    assert!(
        !lines.is_empty() && lines.len() <= elapsed_windows,
        "{} failures gave {} log lines:\n{}",
        service.report().restarts,
        lines.len(),
        lines.join("\n")
    );
    assert!(
        lines[0].contains("required file /nowhere/ready is missing"),
        "the line says why: {}",
        lines[0]
    );
}

//! Faults: a trap, an endless loop, an out-of-memory and a stack overflow
//! in one package while another keeps answering; restart, the restart
//! budget, backoff and recovery.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use steedos_tests::{TestApp, eventually};
use steedos_wasm::context::CallError;

const APP: &str = r#"
[packages.greeter]
component = "{GREETER}"
instances = 2
[packages.chaos]
component = "{CHAOS}"
instances = 2
memory = "16 MiB"
timeout = "1s"
restart = { max = 100, within = "10s", backoff = "100ms" }
"#;

/// Calls greeter.hello from `tasks` tasks until `stop`; counts successes
/// and fails on the first error.
fn steady_load(
    t: &Arc<TestApp>,
    tasks: usize,
    stop: &Arc<AtomicBool>,
    ok: &Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<Result<(), String>>> {
    (0..tasks)
        .map(|i| {
            let (t, stop, ok) = (t.clone(), stop.clone(), ok.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let name = format!("caller-{i}");
                    match t.call("greeter.hello", json!({ "name": name })).await {
                        Ok(v) if v == json!(format!("Hello, {name}!")) => {
                            ok.fetch_add(1, Ordering::Relaxed)
                        }
                        other => return Err(format!("healthy call failed: {other:?}")),
                    };
                }
                Ok(())
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_in_one_package_never_reach_another() {
    let t = Arc::new(TestApp::start(APP).await);
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let load = steady_load(&t, 4, &stop, &ok);

    match t.call("chaos.crash", json!({})).await {
        Err(CallError::Crashed(m)) => {
            assert!(m.contains("chaos.crash") && m.contains("panicked"), "{m}")
        }
        other => panic!("crash: {other:?}"),
    }
    match t.call("chaos.trap", json!({})).await {
        Err(CallError::Crashed(m)) => assert!(m.contains("unreachable"), "{m}"),
        other => panic!("trap: {other:?}"),
    }
    match t.call("chaos.spin", json!({})).await {
        Err(CallError::Timeout(m)) => assert!(m.contains("chaos.spin") && m.contains("1s"), "{m}"),
        other => panic!("spin: {other:?}"),
    }
    match t.call("chaos.oom", json!({})).await {
        Err(CallError::Crashed(m)) => {
            assert!(m.contains("out of memory") && m.contains("16 MiB"), "{m}")
        }
        other => panic!("oom: {other:?}"),
    }
    match t.call("chaos.deep", json!({"n": 10_000_000})).await {
        Err(CallError::Crashed(m)) => assert!(
            m.contains("out of bounds memory access") && m.contains("stack overflowed"),
            "{m}"
        ),
        other => panic!("deep: {other:?}"),
    }
    // The faulty package serves again.
    let alive = eventually(Duration::from_secs(5), || async {
        t.call("chaos.ok", json!({})).await.ok()
    })
    .await;
    assert_eq!(alive, Some(json!("alive")));

    stop.store(true, Ordering::Relaxed);
    for h in load {
        h.await
            .expect("load task")
            .expect("every healthy call succeeded");
    }
    assert!(
        ok.load(Ordering::Relaxed) > 10,
        "the healthy package kept answering"
    );
    let chaos = t.app.broker.service("chaos").expect("chaos");
    assert!(chaos.report().restarts >= 5, "{:?}", chaos.report());
    let greeter = t.app.broker.service("greeter").expect("greeter");
    assert_eq!(greeter.report().restarts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_kills_one_instance_and_the_other_keeps_serving() {
    let t = TestApp::start(APP).await;
    let chaos = t.app.broker.service("chaos").expect("chaos");
    assert_eq!(chaos.report().live, 2);
    let _ = t.call("chaos.crash", json!({})).await;
    // Right after the crash one instance may still be restarting; calls
    // still succeed on the other.
    assert_eq!(t.ok("chaos.ok", json!({})).await, json!("alive"));
    let back = eventually(Duration::from_secs(2), || async {
        (chaos.report().live == 2).then_some(())
    })
    .await;
    assert!(
        back.is_some(),
        "the crashed instance was replaced: {:?}",
        chaos.report()
    );
    let lat = chaos.restart_latencies();
    assert_eq!(lat.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exhausted_restart_budget_backs_off_then_recovers() {
    let t = TestApp::start(
        r#"
[packages.chaos]
component = "{CHAOS}"
restart = { max = 2, within = "30s", backoff = "500ms", max_backoff = "2s" }
"#,
    )
    .await;
    for _ in 0..3 {
        let e = t.call("chaos.crash", json!({})).await;
        assert!(matches!(e, Err(CallError::Crashed(_))), "{e:?}");
        // Wait for the restart (or the backoff) to be decided.
        let _ = eventually(Duration::from_secs(2), || async {
            (t.state("chaos") != "starting" && t.app.broker.service("chaos")?.report().live == 1
                || t.state("chaos") == "backoff")
                .then_some(())
        })
        .await;
    }
    assert_eq!(t.state("chaos"), "backoff");
    match t.call("chaos.ok", json!({})).await {
        Err(CallError::Overloaded(m)) => {
            assert!(m.contains("backoff") && m.contains("panicked"), "{m}")
        }
        other => panic!("expected overloaded during backoff, got {other:?}"),
    }
    let alive = eventually(Duration::from_secs(3), || async {
        t.call("chaos.ok", json!({})).await.ok()
    })
    .await;
    assert_eq!(alive, Some(json!("alive")), "recovered after the backoff");
    assert_eq!(t.state("chaos"), "serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_result_is_delivered_and_a_small_caller_deadline_is_kept() {
    let t = TestApp::start(APP).await;
    let v = t.ok("chaos.huge", json!({"mib": 1})).await;
    // list<u8> is base64 in JSON: 1 MiB -> about 1.4 MB of text.
    assert!(v.as_str().is_some_and(|s| s.len() > 1_000_000));
    let e = t
        .call_within("chaos.spin", json!({}), Duration::from_millis(50))
        .await;
    // The caller's 50ms deadline wins over chaos's 1s: the call was given
    // what was left of 50ms, and the error says so.
    let Err(CallError::Timeout(m)) = e else {
        panic!("{e:?}")
    };
    let budget = m
        .split("did not finish within ")
        .nth(1)
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_else(|| panic!("no budget in {m:?}"));
    let ms: f64 = budget
        .strip_suffix("ms")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a budget in ms, not {budget:?}: {m}"));
    assert!(ms <= 50.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_hook_blocked_in_a_host_call_is_abandoned_at_the_shutdown_timeout() {
    let t = TestApp::start(
        r#"
[app]
cache_dir = "{CACHE}"
shutdown_timeout = "1s"
[packages.hostile]
component = "{HOSTILE}"
instances = 2
timeout = "60s"
[packages.hostile.grants]
env = { HOSTILE_STOPPED = "sleep" }
"#,
    )
    .await;
    assert_eq!(t.state("hostile"), "serving");
    let started = std::time::Instant::now();
    // Its `stopped` sleeps 10 minutes in a WASI call, out of any epoch's reach.
    tokio::time::timeout(Duration::from_secs(30), t.app.shutdown())
        .await
        .expect("the shutdown ends at its timeout");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_guest_code_runs_past_the_shutdown_timeout() {
    let t = TestApp::start(
        r#"
[app]
cache_dir = "{CACHE}"
shutdown_timeout = "1s"
[packages.chaos]
component = "{CHAOS}"
timeout = "1h"
"#,
    )
    .await;
    let app = t.app.clone();
    // A call that would spin for an hour, under way when the shutdown begins.
    let spinning = tokio::spawn(async move {
        let ctx = steedos_wasm::context::CallContext::new(Duration::from_secs(3600));
        app.broker.call_json("chaos.spin", b"{}", ctx).await
    });
    let busy = eventually(Duration::from_secs(10), || async {
        let r = t.app.broker.reports();
        r.iter()
            .find(|r| r.name == "chaos")
            .is_some_and(|r| r.live == 1)
            .then_some(())
    })
    .await;
    assert!(busy.is_some());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(30), t.app.shutdown())
        .await
        .expect("the shutdown ends");
    // The spinning call is interrupted at the shutdown's deadline, not in an hour.
    let outcome = tokio::time::timeout(Duration::from_secs(10), spinning)
        .await
        .expect("the spinning call ends soon after the shutdown")
        .expect("task");
    assert!(matches!(outcome, Err(CallError::Timeout(_))), "{outcome:?}");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(6), "took {took:?}");
}

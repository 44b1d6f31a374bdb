//! Resilience under load: deadlines, circuit breakers, retries, fallbacks,
//! bulkheads, per-package scaling, and the chaos suite.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use steedos_tests::{TestApp, eventually};
use steedos_wasm::context::CallError;

use crate::calls::forward;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nested_call_gets_no_more_time_than_its_caller_and_never_traps_it() {
    let t = TestApp::start(
        r#"
[packages.probe]
component = "{PROBE}"
timeout = "800ms"
[packages.probe.grants]
calls = ["chaos.*"]
[packages.chaos]
component = "{CHAOS}"
timeout = "30s"
"#,
    )
    .await;
    let started = Instant::now();
    let e = forward(&t, "probe", "chaos.spin", json!({}))
        .await
        .unwrap_err();
    let took = started.elapsed();
    // chaos's own 30 s never applied: it got what probe had left.
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert!(e.contains("timeout"), "{e}");
    // The caller got an error value and was not trapped: no restart.
    let probe = t.app.broker.service("probe").expect("probe");
    assert_eq!(probe.report().restarts, 0, "{:?}", probe.report());
    let chaos = t.app.broker.service("chaos").expect("chaos");
    let restarted = eventually(Duration::from_secs(2), || async {
        (chaos.report().restarts == 1).then_some(())
    })
    .await;
    assert!(restarted.is_some(), "{:?}", chaos.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_opens_fails_fast_probes_and_closes() {
    let t = TestApp::start(
        r#"
[packages.chaos]
component = "{CHAOS}"
restart = { max = 1000, within = "1s" }
circuit = { threshold = 0.5, min_calls = 4, window = "60s", half_open_after = "400ms" }
"#,
    )
    .await;
    let call = |crash: bool| t.call("chaos.maybe-crash", json!({ "crash": crash }));
    for crash in [false, true, false, true] {
        let _ = call(crash).await;
    }
    let chaos = t.app.broker.service("chaos").expect("chaos");
    assert_eq!(
        chaos.report().circuits,
        vec![("maybe-crash".to_string(), "open")]
    );
    let restarts = chaos.report().restarts;
    // Open: the call fails at once without entering the package.
    match call(false).await {
        Err(CallError::Overloaded(m)) => assert!(m.contains("circuit open"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(chaos.report().restarts, restarts);
    // Other actions of the package are not affected.
    assert_eq!(t.ok("chaos.ok", json!({})).await, json!("alive"));
    tokio::time::sleep(Duration::from_millis(450)).await;
    // Half-open: the probe crashes, the circuit opens again.
    assert!(matches!(call(true).await, Err(CallError::Crashed(_))));
    assert!(matches!(call(false).await, Err(CallError::Overloaded(_))));
    tokio::time::sleep(Duration::from_millis(450)).await;
    // The next probe succeeds: closed.
    assert_eq!(call(false).await.expect("probe"), json!("alive"));
    assert!(
        chaos.report().circuits.is_empty(),
        "{:?}",
        chaos.report().circuits
    );
    assert_eq!(call(false).await.expect("closed"), json!("alive"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_actions_are_retried_with_backoff_others_are_not() {
    let t = TestApp::start(
        r#"
[packages.chaos]
component = "{CHAOS}"
restart = { max = 1000, within = "1s" }
retry = { max = 3, delay = "40ms", max_delay = "1s" }
[packages.chaos.actions.crash]
idempotent = true
[packages.chaos.actions.maybe-crash]
fallback = "chaos.ok"
"#,
    )
    .await;
    let chaos = t.app.broker.service("chaos").expect("chaos");
    let started = Instant::now();
    assert!(matches!(
        t.call("chaos.crash", json!({})).await,
        Err(CallError::Crashed(_))
    ));
    // 1 try + 3 retries after 40 + 80 + 160 ms.
    assert!(
        started.elapsed() >= Duration::from_millis(280),
        "{:?}",
        started.elapsed()
    );
    let four = eventually(Duration::from_secs(2), || async {
        (chaos.report().restarts == 4).then_some(())
    })
    .await;
    assert!(four.is_some(), "{:?}", chaos.report());
    // Not idempotent: one try; it falls back to chaos.ok instead of failing.
    assert_eq!(
        t.call("chaos.maybe-crash", json!({"crash": true})).await,
        Ok(json!("alive"))
    );
    let five = eventually(Duration::from_secs(2), || async {
        (chaos.report().restarts == 5).then_some(())
    })
    .await;
    assert!(five.is_some(), "{:?}", chaos.report());
    // trap is neither idempotent nor has a fallback: one try, its error.
    assert!(matches!(
        t.call("chaos.trap", json!({})).await,
        Err(CallError::Crashed(_))
    ));
    let six = eventually(Duration::from_secs(2), || async {
        (chaos.report().restarts == 6).then_some(())
    })
    .await;
    assert!(six.is_some(), "{:?}", chaos.report());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulkheads_refuse_at_once_past_their_bound() {
    let t = TestApp::start(
        r#"
[packages.chaos]
component = "{CHAOS}"
instances = 1
queue = 2
timeout = "1s"
[packages.chaos.actions.ok]
queue = 0
"#,
    )
    .await;
    let t = Arc::new(t);
    // One spin holds the only instance for 1 s; two more calls may wait.
    let spins: Vec<_> = (0..3)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move { t.call("chaos.spin", json!({})).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let started = Instant::now();
    match t.call("chaos.spin", json!({})).await {
        Err(CallError::Overloaded(m)) => assert!(m.contains("already waiting"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The action's own bound (0 waiting) refuses even with room in the package's.
    let spins_left = t
        .app
        .broker
        .service("chaos")
        .expect("chaos")
        .report()
        .queued;
    assert!(spins_left <= 2);
    match t.call("chaos.ok", json!({})).await {
        Err(CallError::Overloaded(m)) => assert!(
            m.contains("queue limit") || m.contains("already waiting"),
            "{m}"
        ),
        other => panic!("{other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "refused at once"
    );
    for s in spins {
        let _ = s.await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_scales_up_under_load_balances_and_scales_back_down() {
    let t = Arc::new(
        TestApp::start(
            r#"
[packages.rotor]
component = "{PROBE}"
instances = 3
[packages.chaos]
component = "{CHAOS}"
instances = { min = 1, max = 3 }
scale_down_after = "500ms"
timeout = "300ms"
"#,
        )
        .await,
    );
    let chaos = t.app.broker.service("chaos").expect("chaos");
    assert_eq!(chaos.report().live, 1);
    // Three slow calls at once: the pool grows to serve them.
    let spins: Vec<_> = (0..3)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move { t.call("chaos.spin", json!({})).await })
        })
        .collect();
    let grew = eventually(Duration::from_secs(3), || async {
        (chaos.report().live >= 2).then_some(())
    })
    .await;
    assert!(grew.is_some(), "{:?}", chaos.report());
    for s in spins {
        let _ = s.await;
    }
    // Calls are balanced over the live instances: one after another, they
    // go round all three of rotor's.
    let mut ids = Vec::new();
    for _ in 0..9 {
        ids.push(
            t.ok("rotor.instance-id", json!({}))
                .await
                .as_u64()
                .unwrap_or(0),
        );
    }
    let distinct: HashSet<u64> = ids.iter().copied().collect();
    assert_eq!(distinct.len(), 3, "{ids:?}");
    for id in &distinct {
        assert_eq!(
            ids.iter().filter(|i| *i == id).count(),
            3,
            "evenly: {ids:?}"
        );
    }
    // Idle past scale_down_after, the extra instances go.
    let shrank = eventually(Duration::from_secs(6), || async {
        (chaos.report().live == 1).then_some(())
    })
    .await;
    assert!(shrank.is_some(), "{:?}", chaos.report());
}

fn crashes(r: Result<serde_json::Value, CallError>) {
    assert!(matches!(r, Err(CallError::Crashed(_))), "{r:?}");
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The chaos suite: steady load on healthy packages while a faulty one
/// traps, loops, runs out of memory, overflows its stack, returns huge
/// results and panics in `started`, on a random schedule. Healthy calls see
/// no error, the faulty package serves again afterwards, and the host's
/// memory stays flat over 100,000 restarts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_suite_healthy_calls_never_fail_and_memory_stays_flat() {
    let t = Arc::new(
        TestApp::start_with(
            r#"
[packages.greeter]
component = "{GREETER}"
instances = 2
[packages.inventory]
component = "{INVENTORY}"
instances = 2
[packages.chaos]
component = "{CHAOS}"
instances = 2
memory = "16 MiB"
timeout = "500ms"
restart = { max = 10000, within = "1ms" }
[packages.fragile]
component = "{PROBE}"
restart = { max = 10000, within = "1ms", backoff = "10ms" }
[packages.fragile.grants]
dirs = [{ host = "{DIR}/state", guest = "/state" }]
env = { PROBE_REQUIRE_FILE = "/state/ready" }
"#,
            |dir| {
                std::fs::create_dir(dir.join("state")).expect("mkdir");
                std::fs::write(dir.join("state/ready"), "yes").expect("write");
            },
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let healthy_ok = Arc::new(AtomicU64::new(0));
    let load: Vec<_> = (0..4)
        .map(|i| {
            let (t, stop, ok) = (t.clone(), stop.clone(), healthy_ok.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let r = match i % 2 {
                        0 => t
                            .call("greeter.hello", json!({"name": "load"}))
                            .await
                            .map(|v| v == json!("Hello, load!")),
                        _ => t
                            .call("inventory.get-item", json!({"sku": "apple"}))
                            .await
                            .map(|v| v["sku"] == "apple"),
                    };
                    match r {
                        Ok(true) => ok.fetch_add(1, Ordering::Relaxed),
                        other => return Err(format!("a healthy call failed: {other:?}")),
                    };
                }
                Ok(())
            })
        })
        .collect();

    // Faults on a random schedule (a fixed seed, so a failure replays).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let ready = t.dir.path().join("state/ready");
    let chaos = t.app.broker.service("chaos").expect("chaos");
    for _ in 0..60 {
        let pick = next() % 7;
        match pick {
            0 => crashes(t.call("chaos.trap", json!({})).await),
            1 => {
                let r = t.call("chaos.spin", json!({})).await;
                assert!(matches!(r, Err(CallError::Timeout(_))), "{r:?}");
            }
            2 => crashes(t.call("chaos.oom", json!({})).await),
            3 => crashes(t.call("chaos.deep", json!({"n": 10_000_000})).await),
            4 => {
                let r = t.call("chaos.huge", json!({"mib": 1})).await;
                assert!(
                    r.as_ref()
                        .is_ok_and(|v| v.as_str().is_some_and(|s| s.len() > 1_000_000)),
                    "{:?}",
                    r.map(|_| ())
                );
            }
            5 => {
                // fragile fails in `started` while its file is gone: crash
                // it so it restarts into that failure, then let it recover.
                let _ = std::fs::remove_file(&ready);
                let _ = t
                    .call(
                        "fragile.forward",
                        json!({"action": "fragile.nothing", "params-json": "{}"}),
                    )
                    .await;
                std::fs::write(&ready, "yes").expect("write");
            }
            _ => crashes(t.call("chaos.crash", json!({})).await),
        }
    }
    // The faulty packages serve again.
    let back = eventually(Duration::from_secs(5), || async {
        t.call("chaos.ok", json!({})).await.ok()
    })
    .await;
    assert_eq!(back, Some(json!("alive")));

    // 100,000 restarts, memory measured from this process.
    let mut rss = Vec::new();
    let total = 100_000u64;
    let first = chaos.report().restarts;
    let callers: Vec<_> = (0..2)
        .map(|_| {
            let t = t.clone();
            tokio::spawn(async move {
                for _ in 0..total / 2 {
                    match t.call("chaos.trap", json!({})).await {
                        Err(CallError::Crashed(_)) | Err(CallError::Overloaded(_)) => {}
                        other => panic!("chaos.trap: {other:?}"),
                    }
                }
            })
        })
        .collect();
    let sampler = {
        let chaos = chaos.clone();
        tokio::spawn(async move {
            let mut samples = Vec::new();
            while chaos.report().restarts < first + total {
                samples.push((chaos.report().restarts - first, rss_kib()));
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            samples
        })
    };
    for c in callers {
        c.await.expect("caller");
    }
    let done = eventually(Duration::from_secs(10), || async {
        (chaos.report().restarts >= first + total).then_some(())
    })
    .await;
    assert!(done.is_some(), "{:?}", chaos.report());
    rss.extend(sampler.await.expect("sampler"));
    rss.push((total, rss_kib()));
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task").expect("no healthy call failed");
    }
    assert!(healthy_ok.load(Ordering::Relaxed) > 100);
    // Flat: after the first 10,000 restarts warm everything up, the last
    // sample is within 32 MiB of the first.
    let warm = rss
        .iter()
        .find(|(n, _)| *n >= 10_000)
        .map(|(_, k)| *k)
        .unwrap_or(0);
    let last = rss.last().map(|(_, k)| *k).unwrap_or(0);
    eprintln!(
        "rss over restarts (restarts, KiB): {:?}",
        rss.iter()
            .step_by((rss.len() / 10).max(1))
            .collect::<Vec<_>>()
    );
    assert!(
        warm > 0 && last < warm + 32 * 1024,
        "memory grew from {warm} KiB to {last} KiB over {total} restarts"
    );
}

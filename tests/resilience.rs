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
    // The first call let through once `half_open_after` has passed is the
    // probe; until then every call is refused without entering the package.
    let probe = |crash: bool| {
        eventually(Duration::from_secs(10), move || async move {
            match call(crash).await {
                Err(CallError::Overloaded(m)) if m.contains("circuit open") => None,
                other => Some(other),
            }
        })
    };
    // Half-open: the probe crashes, the circuit opens again.
    let crashed = probe(true).await.expect("a probe within 10 s");
    assert!(matches!(crashed, Err(CallError::Crashed(_))), "{crashed:?}");
    assert!(matches!(call(false).await, Err(CallError::Overloaded(_))));
    // The next probe succeeds: closed.
    let probed = probe(false).await.expect("a probe within 10 s");
    assert_eq!(probed.expect("probe"), json!("alive"));
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
timeout = "5s"
[packages.chaos.actions.ok]
queue = 0
"#,
    )
    .await;
    let t = Arc::new(t);
    let chaos = t.app.broker.service("chaos").expect("chaos");
    let spin = || {
        let t = t.clone();
        tokio::spawn(async move { t.call("chaos.spin", json!({})).await })
    };
    let queued = |n: usize| {
        let chaos = chaos.clone();
        async move {
            let seen = eventually(Duration::from_secs(10), || async {
                (chaos.report().queued == n).then_some(())
            })
            .await;
            assert!(seen.is_some(), "{n} queued: {:?}", chaos.report());
        }
    };
    // One spin holds the only instance until its deadline; the next waits.
    let holder = spin();
    let mut spins = vec![spin()];
    queued(1).await;
    // The action's own bound (0 waiting) refuses, although the package's
    // queue has room for one more.
    match t.call("chaos.ok", json!({})).await {
        Err(CallError::Overloaded(m)) => assert!(m.contains("its queue limit"), "{m}"),
        other => panic!("{other:?}"),
    }
    // The package's bound: two wait, the third is refused.
    spins.push(spin());
    queued(2).await;
    match t.call("chaos.spin", json!({})).await {
        Err(CallError::Overloaded(m)) => assert!(m.contains("already waiting"), "{m}"),
        other => panic!("{other:?}"),
    }
    // Refused at once: while the first spin still holds the instance, not
    // once a place came free.
    assert!(
        !holder.is_finished(),
        "the refusals waited for the instance"
    );
    assert_eq!(chaos.report().queued, 2, "{:?}", chaos.report());
    for s in spins.into_iter().chain([holder]) {
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

/// The chaos suite: steady load on healthy packages while a faulty one
/// traps, loops, runs out of memory, overflows its stack, returns huge
/// results and fails in `started`, on a random schedule. Healthy calls see
/// no error and the faulty packages serve again afterwards. (Memory over
/// 100,000 restarts is measured in a process of its own: tests/memory.rs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_suite_healthy_calls_never_fail() {
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
[packages.big]
component = "{CHAOS}"
timeout = "10s"
[packages.fragile]
component = "{PROBE}"
memory = "8 MiB"
restart = { max = 10000, within = "1ms", backoff = "10ms" }
[packages.fragile.grants]
dirs = [{ host = "{DIR}/state", guest = "/state" }]
env = { PROBE_REQUIRE_FILE = "/state/ready" }
"#,
            |dir| {
                std::fs::create_dir(dir.join("state")).expect("mkdir");
                std::fs::write(dir.join("state/ready"), "yes").expect("write");
                // Reading it needs more than fragile's 8 MiB: a crash.
                std::fs::write(dir.join("state/big"), vec![b'x'; 12 << 20]).expect("write");
            },
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let healthy_ok = Arc::new(AtomicU64::new(0));
    let load = steedos_tests::healthy_load(&t, &stop, &healthy_ok);

    // Faults on a random schedule (a fixed seed, so a failure replays).
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let ready = t.dir.path().join("state/ready");
    let fragile = t.app.broker.service("fragile").expect("fragile");
    let mut started_failed = 0;
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
                // From a copy of chaos with room for it: building 1 MiB
                // takes a debug build on a busy machine past 500ms.
                let r = t.call("big.huge", json!({"mib": 1})).await;
                assert!(
                    r.as_ref()
                        .is_ok_and(|v| v.as_str().is_some_and(|s| s.len() > 1_000_000)),
                    "{:?}",
                    r.map(|_| ())
                );
            }
            5 => {
                // fragile fails in `started` while its file is gone: crash
                // it so it restarts into that failure, see the failure,
                // then let it recover.
                std::fs::remove_file(&ready).expect("remove");
                crashes(
                    t.call("fragile.read-file", json!({"path": "/state/big"}))
                        .await,
                );
                let failed = eventually(Duration::from_secs(10), || async {
                    let r = fragile.report();
                    (r.live == 0
                        && r.last_error
                            .as_deref()
                            .is_some_and(|e| e.contains("required file")))
                    .then_some(())
                })
                .await;
                assert!(
                    failed.is_some(),
                    "`started` did not fail: {:?}",
                    fragile.report()
                );
                started_failed += 1;
                std::fs::write(&ready, "yes").expect("write");
                let back = eventually(Duration::from_secs(10), || async {
                    t.call("fragile.env", json!({"name": "X"})).await.ok()
                })
                .await;
                assert!(back.is_some(), "fragile recovers: {:?}", fragile.report());
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
    assert!(started_failed > 0, "the schedule never reached `started`");
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task").expect("no healthy call failed");
    }
    assert!(healthy_ok.load(Ordering::Relaxed) > 100);
}

/// fragile, with `echo`'s fallback set to `fallback`.
async fn fragile_falling_back_to(fallback: &str) -> TestApp {
    TestApp::start(&format!(
        r#"
[packages.fragile]
component = "{{FRAGILE}}"
restart = {{ max = 1000, within = "1s", backoff = "10ms" }}
[packages.fragile.actions.echo]
fallback = "{fallback}"
"#
    ))
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_gets_the_failed_calls_params_by_name_and_none_for_a_missing_option() {
    let t = fragile_falling_back_to("fragile.spare").await;
    assert_eq!(
        t.call("fragile.echo", json!({"text": "trap"})).await,
        Ok(json!("spare: trap, tag none"))
    );
    // By position too: the params are mapped by the callee's names.
    assert_eq!(
        t.call("fragile.echo", json!(["trap"])).await,
        Ok(json!("spare: trap, tag none"))
    );
    // A call that does not fail never reaches the fallback.
    assert_eq!(
        t.call("fragile.echo", json!({"text": "fine"})).await,
        Ok(json!("fine"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_the_params_cannot_fill_is_not_called_and_the_error_stands() {
    let logs = steedos_tests::logs();
    for fallback in ["fragile.needs-count", "fragile.needs-number"] {
        let t = fragile_falling_back_to(fallback).await;
        match t.call("fragile.echo", json!({"text": "trap"})).await {
            Err(CallError::Crashed(m)) => assert!(m.contains("fragile.echo"), "{m}"),
            other => panic!("with fallback {fallback}: expected crashed, got {other:?}"),
        }
        let warned = logs
            .line_with(
                &["do not fit", &format!("fallback={fallback}")],
                Duration::from_secs(10),
            )
            .await;
        assert!(
            warned.is_some(),
            "a warning names {fallback}:\n{}",
            logs.text()
        );
    }
}

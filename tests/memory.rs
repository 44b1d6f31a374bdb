//! The host's memory stays flat over 100,000 restarts of a trapping
//! package, under steady load on healthy ones. A test binary of its own
//! with this one test, so the RSS it reads is this test's alone, not that
//! of the ~60 tests running beside it in `tests`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use steedos_tests::{TestApp, eventually};
use steedos_wasm::context::CallError;

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_over_100_000_restarts() {
    let t = Arc::new(
        TestApp::start(
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
"#,
        )
        .await,
    );
    let stop = Arc::new(AtomicBool::new(false));
    let healthy_ok = Arc::new(AtomicU64::new(0));
    let load = steedos_tests::healthy_load(&t, &stop, &healthy_ok);
    let chaos = t.app.broker.service("chaos").expect("chaos");

    // 100,000 restarts, memory measured from this process (this test alone).
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

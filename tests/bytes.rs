//! Byte lists cross as bytes: large `list<u8>` parameters and results of
//! a real package (`bytes-echo`), through the JSON path, through
//! `broker.call` from a guest and through a typed import (`bytes-import`),
//! and the bound on those that must cross as component values.

use std::process::Command;
use std::time::Duration;

use serde_json::json;
use steedos_tests::TestApp;
use steedos_wasm::codec::{self, Format};
use steedos_wasm::context::CallError;

const BYTES: &str = r#"
[packages.bytes-echo]
component = "{BYTES-ECHO}"
instances = 2
memory = "160 MiB"
# Debug builds of the host take seconds to base64 tens of MiB.
timeout = "60s"
[packages.bytes-echo.grants]
calls = ["bytes-echo.*"]
"#;

/// `bytes-import` calls `bytes-echo` through a typed import of its interface.
const TYPED: &str = r#"
[packages.bytes-echo]
component = "{BYTES-ECHO}"
memory = "160 MiB"
timeout = "60s"
[packages.bytes-import]
component = "{BYTES-IMPORT}"
memory = "160 MiB"
timeout = "60s"
[packages.bytes-import.grants]
calls = ["bytes-echo.*"]
"#;

#[path = "child.rs"]
mod child;

const MIB: usize = 1 << 20;

/// `n` bytes counting up from 0, as `bytes-echo.make` answers them.
fn counting(n: usize) -> Vec<u8> {
    (0..n).map(|i| i as u8).collect()
}

/// MessagePack `{"data": <bin>}`.
fn data_param(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x81, 0xa4];
    out.extend_from_slice(b"data");
    out.extend(codec::encode_bytes(data, Format::MessagePack));
    out
}

fn base64(data: &[u8]) -> serde_json::Value {
    codec::bytes_to_json(data)
}

async fn call(
    t: &TestApp,
    action: &str,
    params: serde_json::Value,
) -> Result<serde_json::Value, CallError> {
    t.call_within(action, params, Duration::from_secs(60)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_of_many_mebibytes_comes_back_whole() {
    let t = TestApp::start(BYTES).await;
    // 4 MiB and more trapped the callee (hostcall fuel spent on a `Val` per byte).
    for size in [4 * MIB, 24 * MIB] {
        let made = call(&t, "bytes-echo.make", json!({ "size": size })).await;
        let made = made.unwrap_or_else(|e| panic!("make {size}: {e}"));
        assert!(made == base64(&counting(size)), "make {size}: wrong bytes");
    }
    let data = counting(24 * MIB);
    let echoed = call(&t, "bytes-echo.echo", json!({ "data": base64(&data) })).await;
    assert!(echoed.expect("echo 24 MiB") == base64(&data));
    let sum = call(&t, "bytes-echo.sum", json!([base64(&data)])).await;
    let expected: u64 = data.iter().map(|b| u64::from(*b)).sum();
    assert_eq!(sum.expect("sum 24 MiB"), json!(expected));
    assert_eq!(t.state("bytes-echo"), "serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_call_carries_mebibytes_between_packages() {
    let t = TestApp::start(BYTES).await;
    let data = counting(24 * MIB);
    let params = json!({ "action": "bytes-echo.echo", "params": base64(&data_param(&data)) });
    let reply = call(&t, "bytes-echo.relay", params).await;
    let reply = reply.unwrap_or_else(|e| panic!("relay: {e}"));
    assert!(
        reply == base64(&codec::encode_bytes(&data, Format::MessagePack)),
        "the reply is not the MessagePack bin of the data"
    );
    assert_eq!(t.state("bytes-echo"), "serving");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_lists_that_must_be_values_are_bounded_by_the_callee_memory() {
    let t = TestApp::start(BYTES).await;
    // `wrap` returns a tuple: its list crosses as a `Val` per byte. 1 MiB is 32 MiB of values.
    let small = counting(MIB);
    let wrapped = call(&t, "bytes-echo.wrap", json!({ "data": base64(&small) })).await;
    assert!(wrapped.expect("wrap 1 MiB") == json!([MIB, base64(&small)]));
    // 16 MiB would be 512 MiB of values, past twice the 160 MiB memory limit.
    let big = counting(16 * MIB);
    let refused = call(&t, "bytes-echo.wrap", json!({ "data": base64(&big) })).await;
    let Err(CallError::InvalidParams(message)) = refused else {
        panic!("16 MiB as values was not refused: {refused:?}");
    };
    assert!(
        message.starts_with("bytes-echo.wrap: params.data: too large: the decoded values would take more than 320.0 MiB of host memory (payload of 21.3 MiB)"),
        "{message}"
    );
    // The same from a guest, through broker.call.
    let params = json!({ "action": "bytes-echo.wrap", "params": base64(&data_param(&big)) });
    let reply = call(&t, "bytes-echo.relay", params).await;
    let Err(CallError::Failed(err)) = reply else {
        panic!("relay did not pass on the refusal: {reply:?}");
    };
    assert!(
        err.contains("InvalidParams")
            && err.contains("bytes-echo.wrap: params.data: too large")
            && err.contains("(payload of 16.0 MiB)"),
        "{err}"
    );
    assert_eq!(t.state("bytes-echo"), "serving");
}

/// Resident memory now and at its peak since the last reset, in MiB.
fn rss() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Forgets the peak, so the next [`rss`] reports the peak of what follows.
fn reset_peak() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// The host memory figures of the README and the hardening issue, printed:
/// `cargo test -p steedos-tests --test tests -- --ignored --exact
/// bytes::peak_memory_of_large_byte_lists --nocapture` (alone: the peak is
/// the process's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement, run alone"]
async fn peak_memory_of_large_byte_lists() {
    let t = TestApp::start(BYTES).await;
    let report = |what: &str, before: (u64, u64), result: &Result<serde_json::Value, CallError>| {
        let (now, peak) = rss();
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("{e}").chars().take(120).collect(),
        };
        println!(
            "peak: {what}: +{} MiB over {} MiB before (now {now} MiB): {outcome}",
            peak.saturating_sub(before.0),
            before.0
        );
    };
    for size in [3 * MIB, 24 * MIB] {
        reset_peak();
        let before = rss();
        let result = call(&t, "bytes-echo.make", json!({ "size": size })).await;
        report(&format!("make {} MiB result", size / MIB), before, &result);
    }
    let data = counting(24 * MIB);
    let params = json!({ "data": base64(&data) });
    reset_peak();
    let before = rss();
    let result = call(&t, "bytes-echo.sum", params).await;
    report("sum of 24 MiB params (JSON)", before, &result);
    let params = json!({ "action": "bytes-echo.echo", "params": base64(&data_param(&data)) });
    reset_peak();
    let before = rss();
    let result = call(&t, "bytes-echo.relay", params).await;
    report(
        "24 MiB through broker.call to echo and back",
        before,
        &result,
    );
}

/// The sum of [`counting`]`(n)`.
fn counting_sum(n: usize) -> u64 {
    counting(n).iter().map(|b| u64::from(*b)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_imports_carry_mebibytes_both_ways() {
    let t = TestApp::start(TYPED).await;
    // As a `Val` per byte, 24 MiB is 960 MiB of values: past the caller's
    // hostcall fuel (twice its 160 MiB), the import trapped.
    let size = 24 * MIB;
    let expected = json!(counting_sum(size));
    let sum = call(&t, "bytes-import.sum", json!({ "size": size })).await;
    assert_eq!(sum.expect("24 MiB of params through the import"), expected);
    for size in [4 * MIB, 24 * MIB] {
        let made = call(&t, "bytes-import.make", json!({ "size": size })).await;
        let made = made.unwrap_or_else(|e| panic!("a result of {size} through the import: {e}"));
        assert_eq!(made, json!(counting_sum(size)));
    }
    let echoed = call(&t, "bytes-import.echo", json!({ "size": size })).await;
    assert_eq!(echoed.expect("24 MiB there and back"), expected);
    // `result<list<u8>, call-error>`, the typed import's usual shape.
    let fetched = call(&t, "bytes-import.fetch", json!({ "size": size })).await;
    assert_eq!(
        fetched.expect("a 24 MiB result with a call-error case"),
        expected
    );
    let refused = call(&t, "bytes-import.fetch", json!({ "size": 0 })).await;
    let Err(CallError::Failed(f)) = refused else {
        panic!("the provider's own error did not come back: {refused:?}");
    };
    assert!(f.contains(r#"Failed("nothing to fetch")"#), "{f}");
    assert_eq!(t.state("bytes-echo"), "serving");
    assert_eq!(t.state("bytes-import"), "serving");
}

/// Set in the environment of the child host that
/// [`typed_imports_keep_host_memory_a_small_multiple_of_the_payload`] runs.
const PEAK_CHILD: &str = "STEEDOS_TEST_PEAK_CHILD";

/// The calls whose peak host memory the child measures: (action, size).
const PEAK_CALLS: [(&str, usize); 5] = [
    ("bytes-import.sum", 24 * MIB),
    ("bytes-import.make", 3 * MIB),
    ("bytes-import.make", 24 * MIB),
    ("bytes-import.echo", 24 * MIB),
    ("bytes-import.fetch", 24 * MIB),
];

/// The child host: a process of its own, so its peak is its own. Prints
/// `peak <action> <size> <MiB over before> <outcome>` for each call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child of typed_imports_keep_host_memory_a_small_multiple_of_the_payload"]
async fn typed_import_peak_in_a_child() {
    if std::env::var_os(PEAK_CHILD).is_none() {
        return;
    }
    let t = TestApp::start(TYPED).await;
    for (action, size) in PEAK_CALLS {
        reset_peak();
        let before = rss();
        let result = call(&t, action, json!({ "size": size })).await;
        let (_, peak) = rss();
        let outcome = match result {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("{e}").replace('\n', " "),
        };
        println!(
            "peak {action} {size} {} {outcome}",
            peak.saturating_sub(before.0)
        );
    }
    println!("peak done");
}

#[test]
fn typed_imports_keep_host_memory_a_small_multiple_of_the_payload() {
    let exe = std::env::current_exe().expect("the test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--ignored", "--exact", "--nocapture", "--test-threads=1"])
        .arg("bytes::typed_import_peak_in_a_child")
        .env(PEAK_CHILD, "1");
    let mut host = child::Running::spawn(&mut cmd);
    host.line_until(Duration::from_secs(600), |l| l == "peak done");
    let lines: Vec<&str> = host
        .stdout
        .lines()
        .filter(|l| l.contains("peak "))
        .collect();
    eprintln!("{}", lines.join("\n"));
    for (action, size) in PEAK_CALLS {
        let prefix = format!("peak {action} {size} ");
        let line = lines.iter().find_map(|l| Some(l.split_once(&prefix)?.1));
        let line = line.unwrap_or_else(|| panic!("no figure for {prefix}: {}", host.stdout));
        let (mib, outcome) = line.split_once(' ').expect("MiB and outcome");
        assert_eq!(outcome, "ok", "{action} of {size} bytes");
        // Both guests' copies and the host's one: a few times the payload,
        // never a `Val` per byte (40 times it).
        let mib: usize = mib.parse().expect("MiB");
        let bound = 8 * size.max(8 * MIB) / MIB;
        assert!(
            mib <= bound,
            "{action} of {} MiB took {mib} MiB of host memory (bound {bound})",
            size / MIB
        );
    }
}

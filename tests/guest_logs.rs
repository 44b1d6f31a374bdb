//! What a guest writes to the log can never pass for a line of the host's
//! own, and no package can flood the log: its lines are escaped, cut, and
//! held to a budget per package. The log is read as the binary writes it:
//! tracing's fmt output, captured for this test binary.

use std::time::{Duration, Instant};

use serde_json::json;
use steedos_tests::TestApp;
use steedos_wasm::guest_log::{BURST, MESSAGE_MAX, RATE};

/// The fmt log of this test binary (guest lines and the guest log
/// module's own warnings): the process-wide capture of `steedos_tests`.
fn log_text() -> String {
    steedos_tests::logs().text()
}

/// The captured lines that name `package` (as a field or in the text).
fn lines_of(package: &str) -> Vec<String> {
    let field = format!("package=\"{package}\"");
    log_text()
        .lines()
        .filter(|l| l.contains(&field) || l.contains(&format!("package={package}")))
        .map(str::to_string)
        .collect()
}

/// Regression: a guest log message with a newline wrote a second line
/// that looked like the host's own (`INFO steedos_wasm::gateway: admin:
/// deploy package=forged`). Now it stays one escaped line, under `guest`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_log_message_cannot_forge_a_host_line() {
    log_text();
    let t = TestApp::start("[packages.forger]\ncomponent = \"{ROGUE}\"\n").await;
    let forged = "x\n INFO steedos_wasm::gateway: admin: deploy package=forged";
    t.ok("forger.log", json!({"message": forged, "times": 1}))
        .await;
    t.ok(
        "forger.log",
        json!({"message": "ansi \u{1b}[2K\r INFO steedos_wasm: fake", "times": 1}),
    )
    .await;
    t.ok(
        "forger.log",
        json!({"message": "long ".repeat(20_000), "times": 1}),
    )
    .await;
    let text = log_text();
    let forged_lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("package=forged"))
        .collect();
    assert_eq!(forged_lines.len(), 1, "{forged_lines:#?}");
    let line = forged_lines[0];
    assert!(
        line.contains(" guest: x\\n INFO steedos_wasm::gateway")
            && line.contains("package=\"forger\""),
        "{line}"
    );
    assert!(
        !text
            .lines()
            .any(|l| l.trim_start().starts_with("INFO steedos_wasm")),
        "no line of the log starts as a host line would"
    );
    let ansi = lines_of("forger")
        .into_iter()
        .find(|l| l.contains("fake"))
        .expect("the ANSI line");
    assert!(
        ansi.contains("ansi \\u{1b}[2K\\r INFO steedos_wasm: fake"),
        "{ansi}"
    );
    assert!(!ansi.contains('\u{1b}') && !ansi.contains('\r'));
    let long = lines_of("forger")
        .into_iter()
        .find(|l| l.contains("long long"))
        .expect("the long line");
    assert!(long.len() < MESSAGE_MAX + 512, "{}", long.len());
    assert!(long.contains("more bytes cut"), "cut, and saying so");
}

/// Regression: a package wrote 200 MiB of log in one call. Now its lines
/// past its budget are dropped, counted in the metrics and said once, and
/// the host keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_package_writing_200_mib_of_log_is_cut_down() {
    log_text();
    let t =
        TestApp::start("[packages.spewer]\ncomponent = \"{ROGUE}\"\ntimeout = \"120s\"\n").await;
    let started = Instant::now();
    t.call_within(
        "spewer.spew",
        json!({"bytes": 200u64 << 20}),
        Duration::from_secs(120),
    )
    .await
    .expect("the spewing call itself completes");
    let elapsed = started.elapsed();
    // The host still serves, the spewer too.
    t.ok("spewer.started-outcome", json!({})).await;
    let lines = lines_of("spewer");
    let logged: usize = lines.iter().map(|l| l.len()).sum();
    let allowed = BURST + RATE * (elapsed.as_secs() + 2);
    assert!(
        (logged as u64) < allowed * 2,
        "{logged} bytes logged in {elapsed:?}, budget {allowed}"
    );
    let dropped = t
        .app
        .broker
        .service("spewer")
        .expect("spewer")
        .report()
        .log_lines_dropped;
    assert!(dropped > 100_000, "{dropped} lines dropped");
    let says = lines
        .iter()
        .filter(|l| l.contains("guest logs over the package's budget"))
        .count();
    assert_eq!(says, 1, "dropping is said once");
    let metrics = t.app.metrics.render(&t.app.broker.reports());
    assert!(
        metrics.lines().any(
            |l| l.starts_with("steedos_package_guest_log_lines_dropped{")
                && l.contains("package=\"spewer\"")
                && l.ends_with(&format!(" {dropped}"))
        ),
        "{metrics}"
    );
}

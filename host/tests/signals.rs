//! Graceful shutdown of the real binary under real signals (SIGTERM and
//! SIGINT, as Ctrl-C sends): a call in flight gets its answer and an event
//! being handled is handled to the end before the host exits 0, as the
//! README promises.

#[path = "../../tests/child.rs"]
mod child;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use child::Running;

/// Long enough that the signal surely lands while both are running.
const WORK_MS: u64 = 3000;
const GENEROUS: Duration = Duration::from_secs(120);

fn serve(dir: &Path) -> (Running, SocketAddr) {
    let manifest = format!(
        r#"[app]
shutdown_timeout = "60s"
cache_dir = "{cache}"
[gateway]
expose = ["fragile.*"]
[packages.fragile]
component = "{fragile}"
instances = 2
timeout = "60s"
events = ["fragile.*"]
[packages.fragile.grants]
emits = ["fragile.*"]
"#,
        cache = dir.join("cache").display(),
        fragile = steedos_tests::guests::FRAGILE,
    );
    std::fs::write(dir.join("steedos.toml"), manifest).expect("write manifest");
    let mut child = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_steedos-wasm"))
            .args(["run", "--no-build", "--listen", "127.0.0.1:0"])
            .arg(dir)
            .env("RUST_LOG", "info"),
    );
    let addr = child::gateway_addr(&mut child, GENEROUS);
    child.line_until(GENEROUS, |line| line.starts_with("serving"));
    (child, addr)
}

/// `POST /api/fragile/echo {"text": text}`: the raw response.
fn echo(addr: SocketAddr, text: &str) -> String {
    child::post(
        addr,
        "/api/fragile/echo",
        &format!(r#"{{"text":"{text}"}}"#),
    )
}

fn in_flight_work_finishes_before_exit(signal: &str) {
    let dir = tempfile::tempdir().expect("temp dir");
    let (child, addr) = serve(dir.path());
    // An event whose handler outlasts the call (so the gateway's wait for
    // the call cannot cover for it), then a call of WORK_MS.
    let emitted = echo(addr, &format!("emit:{}", 2 * WORK_MS));
    assert!(emitted.starts_with("HTTP/1.1 200"), "{emitted}");
    child.stderr_until(GENEROUS, |l| l.contains("handling fragile.slow"));
    let call = std::thread::spawn(move || echo(addr, &format!("sleep:{WORK_MS}")));
    child.stderr_until(GENEROUS, |l| l.contains(&format!("sleeping {WORK_MS} ms")));

    child.signal(signal);
    let (status, _, log) = child.wait_within(GENEROUS);
    let answer = call.join().expect("the caller thread");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.ends_with(&format!("\"sleep:{WORK_MS}\"")),
        "the call in flight at SIG{signal} got: {answer:?}\n{log}"
    );
    assert_eq!(status.code(), Some(0), "exit after SIG{signal}:\n{log}");
    let handled = log
        .lines()
        .position(|l| l.contains(&format!("handled fragile.slow after {} ms", 2 * WORK_MS)));
    let stopped = log
        .lines()
        .position(|l| l.contains("stopped") && l.contains("package=\"fragile\""));
    assert!(
        matches!((handled, stopped), (Some(h), Some(s)) if h < s),
        "the event being handled at SIG{signal} finishes before the package stops:\n{log}"
    );
}

#[test]
fn sigterm_lets_the_call_and_the_event_in_flight_finish() {
    in_flight_work_finishes_before_exit("TERM");
}

#[test]
fn sigint_lets_the_call_and_the_event_in_flight_finish() {
    in_flight_work_finishes_before_exit("INT");
}

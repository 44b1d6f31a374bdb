//! `run --watch` on the real binary: an edit to a package's source is
//! rebuilt and upgraded in place, and the running host answers with the new
//! code, with no request failing on the way.

#[path = "../../tests/child.rs"]
mod child;

use std::process::Command;
use std::time::{Duration, Instant};

use child::{OutputBounded as _, Running};

/// A cold Rust build of the scaffold, twice, on a busy machine.
const BUILD: Duration = Duration::from_secs(600);

#[test]
fn watch_rebuilds_and_upgrades_a_package_whose_source_was_edited() {
    let parent = tempfile::tempdir().expect("tmp");
    let out = Command::new(env!("CARGO_BIN_EXE_steedos-wasm"))
        .args(["new", "watched", "--lang", "rust", "--dir"])
        .arg(parent.path())
        .output_bounded()
        .expect("run new");
    assert!(out.status.success(), "{out:?}");
    let app = parent.path().join("watched");
    let manifest = app.join("steedos.toml");
    let mut text = std::fs::read_to_string(&manifest).expect("steedos.toml");
    text.push_str("\n[gateway]\nexpose = [\"watched.*\"]\n");
    std::fs::write(&manifest, text).expect("write steedos.toml");

    let mut host = Running::spawn(
        Command::new(env!("CARGO_BIN_EXE_steedos-wasm"))
            .args(["run", "--watch", "--listen", "127.0.0.1:0"])
            .arg(&app)
            .env("RUST_LOG", "steedos_wasm=info"),
    );
    let addr = child::gateway_addr(&mut host, BUILD);
    host.line_until(BUILD, |line| line.starts_with("serving"));
    let hello = || child::post(addr, "/api/watched/hello", r#"{"name":"Ada"}"#);
    let first = hello();
    assert!(first.ends_with("\"Hello, Ada!\""), "{first}");

    let source = app.join("packages/watched/src/lib.rs");
    let code = std::fs::read_to_string(&source).expect("lib.rs");
    assert!(code.contains("Hello, {name}!"), "the template greets");
    std::fs::write(&source, code.replace("Hello, {name}!", "Howdy, {name}!")).expect("edit");

    // Every answer on the way is the old one or the new one, never a failure.
    let end = Instant::now() + BUILD;
    loop {
        let answer = hello();
        if answer.ends_with("\"Howdy, Ada!\"") {
            break;
        }
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.ends_with("\"Hello, Ada!\""),
            "a request failed during the rebuild: {answer:?}"
        );
        assert!(
            Instant::now() < end,
            "the edit was not rebuilt and served within {BUILD:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    host.signal("TERM");
    let (status, _, log) = host.wait_within(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("upgraded") && l.contains("watched")),
        "the log tells of the upgrade:\n{log}"
    );
}

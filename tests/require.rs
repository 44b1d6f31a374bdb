//! The one rule for tests that need something from outside Rust (node, npm,
//! python3, nats-server, a Python module, npm packages): under CI a missing
//! one fails the test; elsewhere the test prints one line naming what is
//! missing and how to get it, records itself for `./test` to count, and
//! skips. Shared by both test crates (`#[path]`-included by `tests/util.rs`
//! and `host/tests/*.rs`), so the rule is written once.
//!
//! CI is on when the `CI` variable is exactly `true` or `1`, as CI systems
//! set it; `CI=false`, `CI=0` or no `CI` is a developer's run.

use std::io::Write as _;
use std::path::{Path, PathBuf};

/// How to get every tool: `./test` installs them all.
const HINT: &str = "run ./test, which installs the tools into .tools/ and puts them on PATH";

/// Whether this is a CI run: `CI` is `true` or `1`.
pub fn ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| v == "true" || v == "1")
}

/// `name` as an executable file on `PATH`.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|file| is_executable(file))
}

fn is_executable(file: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(file).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether every tool in `tools` is on `PATH`; see [`present`] for what
/// happens when one is not.
pub fn tools(tools: &[&str]) -> bool {
    let missing: Vec<&str> = tools
        .iter()
        .copied()
        .filter(|tool| which(tool).is_none())
        .collect();
    present(if missing.is_empty() {
        None
    } else {
        Some(format!("{} not on PATH", missing.join(", ")))
    })
}

/// The rule itself: `missing` is `None` when the test has what it needs
/// (then `true`), else what is missing. Under CI that panics; otherwise it
/// prints one line on stderr (past the harness's capture, so it shows even
/// for a passing test), appends the test's name to `$STEEDOS_TEST_SKIPS`
/// (which `./test` counts at the end), and returns `false`: the test returns
/// at once.
pub fn present(missing: Option<String>) -> bool {
    let Some(missing) = missing else {
        return true;
    };
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a test");
    if ci() {
        panic!("{test} needs {missing}, and CI must not skip: {HINT}");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {missing} ({HINT})");
    if let Some(log) = std::env::var_os("STEEDOS_TEST_SKIPS") {
        let line = format!("{test}: {missing}\n");
        let _ = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .and_then(|mut f| f.write_all(line.as_bytes()));
    }
    false
}

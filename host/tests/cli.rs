//! The `steedos-wasm` binary, driven as a user drives it: `build`, `call`,
//! `inspect` and `run` on examples/shop, with their output and exit codes.

#[path = "../../tests/child.rs"]
mod child;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::time::Duration;

use child::{OutputBounded as _, Running};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_steedos-wasm"));
    c.env_remove("RUST_LOG");
    c
}

fn shop() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop")
}

/// Builds examples/shop once for every test of this binary (with the
/// binary's own `build` command, which is under test too).
fn built() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        // The example keeps inventory's stock in a bucket: start from the seed.
        let _ = std::fs::remove_dir_all(shop().join(".steedos/kv"));
        let out = bin()
            .arg("build")
            .arg(shop())
            .output_bounded()
            .expect("run steedos-wasm build");
        assert!(out.status.success(), "build failed:\n{}", text(&out));
        let stdout = String::from_utf8_lossy(&out.stdout);
        for package in ["greeter", "inventory", "shop", "audit", "chaos"] {
            assert!(stdout.contains(package), "{stdout}");
        }
        shop()
    })
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn call(args: &[&str]) -> Output {
    bin()
        .arg("call")
        .arg(built())
        .args(args)
        .output_bounded()
        .expect("run steedos-wasm call")
}

#[test]
fn call_prints_the_json_result() {
    let out = call(&["greeter.hello", r#"{"name":"Ada"}"#]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#""Hello, Ada!""#
    );

    let out = call(&["shop.place-order", r#"{"lines":[{"sku":"apple","qty":2}]}"#]);
    assert!(out.status.success(), "{}", text(&out));
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(receipt["total-cents"], 240);
}

#[test]
fn a_failed_call_prints_its_kind_and_exits_1() {
    let out = call(&["greeter.goodbye"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error[not-found]"),
        "{}",
        text(&out)
    );

    let out = call(&["greeter.hello", r#"{"name":5}"#]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error[invalid-params]"),
        "{}",
        text(&out)
    );

    let out = call(&["chaos.crash"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error[crashed]"),
        "{}",
        text(&out)
    );
}

#[test]
fn a_bad_command_line_exits_2_and_help_teaches() {
    let out = bin().arg("call").output_bounded().expect("run");
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = bin().arg("--help").output_bounded().expect("run");
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "call", "inspect", "build", "Exit codes", "RUST_LOG"] {
        assert!(help.contains(word), "--help lacks {word}:\n{help}");
    }
}

#[test]
fn a_broken_manifest_points_at_the_line_and_exits_1() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("steedos.toml"),
        "[packages.x]\ncomponent = \"x.wasm\"\ninstances = = 2\n",
    )
    .expect("write");
    let out = bin()
        .arg("call")
        .arg(dir.path())
        .arg("x.y")
        .output_bounded()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("steedos.toml:3:"), "{err}");
}

#[test]
fn inspect_shows_actions_with_signatures_and_imports() {
    let component = built().join("target/wasm32-wasip2/release/shop.wasm");
    let out = bin()
        .arg("inspect")
        .arg(&component)
        .output_bounded()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    assert!(
        s.contains("place-order")
            && s.contains("func(lines: list<record { sku: string, qty: u32 }>)"),
        "{s}"
    );
    assert!(
        s.contains("acme:inventory/stock@0.1.0")
            && s.contains("needs a package in the app that exports it"),
        "{s}"
    );
    assert!(
        s.contains("steedos:package/broker@0.2.0") && s.contains("provided by the host"),
        "{s}"
    );

    let dir = tempfile::tempdir().expect("tmp");
    let junk = dir.path().join("junk.wasm");
    std::fs::write(&junk, b"not wasm").expect("write");
    let out = bin()
        .arg("inspect")
        .arg(&junk)
        .output_bounded()
        .expect("run");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not a valid WebAssembly component"),
        "{}",
        text(&out)
    );
}

#[test]
fn run_serves_until_sigterm_then_stops_every_instance() {
    let mut child = Running::spawn(
        bin()
            .arg("run")
            .arg(built())
            .arg("--no-build")
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", "steedos_wasm=info"),
    );
    child.line_until(Duration::from_secs(120), |line| line.starts_with("serving"));
    let summary = child.stdout.clone();
    assert!(
        summary.contains("5 package(s)")
            && summary.contains("greeter")
            && summary.contains("hello"),
        "{summary}"
    );
    assert!(summary.contains("gateway: http://127.0.0.1:"), "{summary}");
    child.signal("TERM");
    let (status, _, log) = child.wait_within(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{log}");
    for package in ["greeter", "inventory", "shop", "audit", "chaos"] {
        assert!(
            log.lines().any(|l| l.contains("stopped")
                && l.contains(&format!("package=\"{package}\""))
                && l.contains("instances=2")),
            "{package} was not stopped:\n{log}"
        );
    }
}

#[test]
fn deploy_ps_upgrade_and_remove_against_a_running_host() {
    let token = "cli-test-token";
    let dir = tempfile::tempdir().expect("tmp");
    let greeter = built().join("target/wasm32-wasip2/release/greeter.wasm");
    let manifest = format!(
        "[gateway]\nlisten = \"127.0.0.1:0\"\nexpose = [\"*\"]\nadmin_token_env = \"STEEDOS_ADMIN_TOKEN\"\n\n[packages.greeter]\ncomponent = {:?}\n",
        greeter.display().to_string()
    );
    std::fs::write(dir.path().join("steedos.toml"), manifest).expect("write");
    let mut child = Running::spawn(
        bin()
            .arg("run")
            .arg(dir.path())
            .env("STEEDOS_ADMIN_TOKEN", token),
    );
    child.line_until(Duration::from_secs(120), |line| line.starts_with("serving"));
    let url = child
        .stdout
        .lines()
        .find_map(|line| line.strip_prefix("gateway: "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default()
        .to_string();
    assert!(url.starts_with("http://127.0.0.1:"), "no gateway line");
    let admin = |args: &[&str]| {
        bin()
            .args(args)
            .args(["--url", &url])
            .env("STEEDOS_ADMIN_TOKEN", token)
            .output_bounded()
            .expect("run")
    };
    let out = admin(&[
        "deploy",
        "hello2",
        greeter.to_str().unwrap(),
        "--instances",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("deployed `hello2`: 3 instance(s)"),
        "{}",
        text(&out)
    );
    let out = admin(&["ps"]);
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        table.contains("hello2") && table.contains("3/3") && table.contains("greeter"),
        "{table}"
    );
    let out = admin(&["upgrade", "greeter", greeter.to_str().unwrap()]);
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("upgraded `greeter`"),
        "{}",
        text(&out)
    );
    let out = admin(&["upgrade", "nobody", greeter.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let out = admin(&["remove", "hello2"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = bin()
        .args(["ps", "--url", &url])
        .env("STEEDOS_ADMIN_TOKEN", "wrong")
        .output_bounded()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("refused the admin token"),
        "{}",
        text(&out)
    );
    child.signal("TERM");
    let (status, _, log) = child.wait_within(Duration::from_secs(60));
    assert!(status.success(), "{log}");
}

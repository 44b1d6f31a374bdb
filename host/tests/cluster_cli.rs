//! `steedos-wasm run --nats` and `steedos-wasm call --nats` on the real
//! binary, over a real nats-server: one process serves examples/shop as a
//! cluster node, another calls its action through the cluster, and after
//! SIGTERM the node has left (the call no longer finds it).
//!
//! Needs `nats-server` on PATH; without it this test skips by the rule of
//! `tests/require.rs` (a failure under CI).

#[path = "../../tests/child.rs"]
mod child;
#[path = "../../tests/require.rs"]
mod require;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use child::{OutputBounded as _, Running};

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_steedos-wasm"));
    c.env_remove("RUST_LOG");
    c
}

fn text(out: &Output) -> String {
    format!(
        "status: {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `nats-server`, or `None` when it is missing (by [`require`]'s rule).
fn nats_server() -> Option<PathBuf> {
    if !require::tools(&["nats-server"]) {
        return None;
    }
    require::which("nats-server")
}

struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn run_joins_with_nats_flags_and_call_reaches_it_through_the_cluster() {
    let Some(nats) = nats_server() else { return };
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port();
    let _nats = Killed(
        Command::new(nats)
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server"),
    );
    // The node connects once at start and exits when nobody answers, so
    // the server must listen first (on a loaded machine it takes a while).
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "nats-server did not listen on 127.0.0.1:{port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("nats://127.0.0.1:{port}");
    let shop = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop");
    let built = bin()
        .arg("build")
        .arg(&shop)
        .output_bounded()
        .expect("build");
    assert!(built.status.success(), "{}", text(&built));

    let mut node = Running::spawn(
        bin()
            .arg("run")
            .arg(&shop)
            .args([
                "--no-build",
                "--listen",
                "off",
                "--transporter",
                &url,
                "--node-id",
                "shop-node",
                "--namespace",
                "cli",
            ])
            .env("RUST_LOG", "steedos_wasm=info"),
    );
    node.line_until(Duration::from_secs(120), |line| {
        line.starts_with("cluster:")
    });
    let summary = node.stdout.clone();
    assert!(summary.contains("node `shop-node` joined"), "{summary}");

    // A client app with no packages of its own, in the same namespace.
    let client = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        client.path().join("steedos.toml"),
        "[app]\nname = \"client\"\n",
    )
    .expect("manifest");
    let call = |namespace: &str| {
        bin()
            .arg("call")
            .arg(client.path())
            .args([
                "greeter.hello",
                r#"{"name":"Ada"}"#,
                "--timeout",
                "5s",
                // The flag's old name still works.
                "--nats",
                &url,
                "--namespace",
                namespace,
            ])
            .output_bounded()
            .expect("call")
    };
    let out = call("cli");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        r#""Hello, Ada!""#
    );
    // Another namespace is another cluster.
    let out = call("other");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("error[not-found]"),
        "{}",
        text(&out)
    );

    node.signal("TERM");
    let (status, _, log) = node.wait_within(Duration::from_secs(60));
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(log.contains("left the cluster"), "{log}");
    let out = call("cli");
    assert_eq!(
        out.status.code(),
        Some(1),
        "after the node left: {}",
        text(&out)
    );
}

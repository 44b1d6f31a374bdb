//! `shutdown_timeout` bounds the whole shutdown of the real binary under a
//! real SIGTERM: `stopped` hooks that spin, and a package whose `started`
//! crash-loops, cannot hold the host past it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
        .display()
        .to_string()
}

/// Runs `steedos-wasm run` on an app made of `packages` (manifest text)
/// with `shutdown_timeout = "1s"`; returns once it serves.
fn serve(dir: &Path, packages: &str) -> Child {
    let manifest = format!(
        "[app]\nshutdown_timeout = \"1s\"\ncache_dir = \"{}\"\n{packages}",
        dir.join("cache").display()
    );
    std::fs::write(dir.join("steedos.toml"), manifest).expect("write manifest");
    let mut child = Command::new(env!("CARGO_BIN_EXE_steedos-wasm"))
        .args(["run", "--no-build", "--listen", "off"])
        .arg(dir)
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start steedos-wasm");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let serving = lines.any(|l| l.is_ok_and(|l| l.starts_with("serving")));
    assert!(serving, "the host never served");
    // Keep reading so the host never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

/// Sends SIGTERM; returns how long the host took to exit (at most `bound`,
/// then it is killed and the test fails).
fn terminate(child: &mut Child, bound: Duration) -> Duration {
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let start = Instant::now();
    while start.elapsed() < bound {
        if child.try_wait().expect("wait").is_some() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("the host did not exit within {bound:?} of SIGTERM");
}

#[test]
fn six_spinning_stopped_hooks_share_one_shutdown_timeout() {
    let dir = tempfile::tempdir().expect("temp dir");
    // Each hook alone may run 10 s; the shutdown has 1 s for all six.
    let mut host = serve(
        dir.path(),
        &format!(
            "[packages.spin]\ncomponent = \"{}\"\ninstances = 6\ntimeout = \"10s\"\n",
            fixture("spinning-stopped.wat")
        ),
    );
    // One hook after another took 6 s and more; at once they take about 1 s.
    let took = terminate(&mut host, Duration::from_secs(30));
    assert!(
        took < Duration::from_millis(5500),
        "shutdown took {took:?} with shutdown_timeout = 1s"
    );
}

#[test]
fn sigterm_ends_a_crash_loop_of_started() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut host = serve(
        dir.path(),
        &format!(
            "[packages.looping]\ncomponent = \"{}\"\ntimeout = \"100ms\"\n\
             restart = {{ max = 1000, within = \"1s\", backoff = \"10ms\", max_backoff = \"10ms\" }}\n",
            fixture("spinning-started.wat")
        ),
    );
    // Let it loop a while: every start spins to its deadline and restarts.
    std::thread::sleep(Duration::from_secs(2));
    let took = terminate(&mut host, Duration::from_secs(30));
    assert!(
        took < Duration::from_millis(5500),
        "shutdown took {took:?} with shutdown_timeout = 1s"
    );
}

//! The gateway of a real `steedos-wasm run` whose open-file limit is the
//! common 1,024 (soft and hard): a flood of more slow clients than it has
//! files must not make it unreachable for a quick one.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// A bound no healthy step here comes near, on a busy two-core machine.
const GENEROUS: Duration = Duration::from_secs(30);

/// Kills the host when the test ends, however it ends.
struct Host(Child);

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn shop() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/shop")
}

/// examples/shop's greeter, built by the binary's own `build`.
fn greeter() -> std::path::PathBuf {
    let out = Command::new(env!("CARGO_BIN_EXE_steedos-wasm"))
        .arg("build")
        .arg(shop())
        .output()
        .expect("run steedos-wasm build");
    assert!(
        out.status.success(),
        "build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    shop().join("target/wasm32-wasip2/release/greeter.wasm")
}

/// Starts `run` on `app` with RLIMIT_NOFILE at 1,024 soft and hard, and
/// answers the gateway's address.
fn start_limited(app: &Path) -> (Host, SocketAddr) {
    let child = Command::new("sh")
        .arg("-c")
        .arg(r#"ulimit -n 1024 && exec "$0" "$@""#)
        .arg(env!("CARGO_BIN_EXE_steedos-wasm"))
        .arg("run")
        .arg(app)
        .arg("--no-build")
        .env_remove("RUST_LOG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn run");
    let mut host = Host(child);
    let stdout = host.0.stdout.take().expect("stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = String::new();
    loop {
        let line = rx
            .recv_timeout(GENEROUS)
            .unwrap_or_else(|_| panic!("no gateway address in time:\n{seen}"));
        seen.push_str(&line);
        seen.push('\n');
        if let Some(rest) = line.strip_prefix("gateway: http://") {
            let addr = rest.split_whitespace().next().unwrap_or_default();
            return (host, addr.parse().expect("an address"));
        }
    }
}

#[test]
fn more_slow_clients_than_open_files_cannot_starve_a_quick_one() {
    let greeter = greeter();
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::write(
        dir.path().join("steedos.toml"),
        format!(
            "[gateway]\nlisten = \"127.0.0.1:0\"\nexpose = [\"greeter.*\"]\n\
             header_timeout = \"1h\"\nidle_timeout = \"1h\"\n\n\
             [packages.greeter]\ncomponent = {greeter:?}\n"
        ),
    )
    .expect("write manifest");
    let (_host, addr) = start_limited(dir.path());

    // 1,100 clients that send half a head and hold: more than the host has
    // files, and with header_timeout at an hour no deadline frees them.
    let mut flood = Vec::new();
    for _ in 0..1100 {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            let _ = s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n");
            flood.push(s);
        }
    }

    let mut quick = TcpStream::connect_timeout(&addr, GENEROUS).expect("connect");
    quick.set_read_timeout(Some(GENEROUS)).expect("timeout");
    let body = r#"{"name":"quick"}"#;
    write!(
        quick,
        "POST /api/greeter/hello HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut answer = [0u8; 512];
    let n = quick.read(&mut answer).unwrap_or(0);
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains("Hello, quick!"), "{answer:?}");
    drop(flood);
}

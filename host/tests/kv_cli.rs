//! Key-value state through the real binary: a value acknowledged over HTTP
//! survives a SIGKILL of the host right after, and `steedos-wasm kv`
//! reads, writes, lists and deletes an app's bucket.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use steedos_tests::guests;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_steedos-wasm"));
    c.env_remove("RUST_LOG");
    c
}

fn write_app(dir: &Path, port: u16) {
    let manifest = format!(
        r#"[app]
cache_dir = "{}"
[gateway]
listen = "127.0.0.1:{port}"
expose = ["kv-probe.*"]
[packages.kv-probe]
component = "{}"
[packages.kv-probe.grants]
kv = ["default"]
"#,
        dir.join("cache").display(),
        guests::KV_PROBE
    );
    std::fs::write(dir.join("steedos.toml"), manifest).expect("write manifest");
}

/// `steedos-wasm run`, returned once it serves.
fn serve(dir: &Path) -> Child {
    let mut child = bin()
        .args(["run", "--no-build"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start steedos-wasm");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let serving = lines.any(|l| l.is_ok_and(|l| l.starts_with("serving")));
    assert!(serving, "the host never served");
    std::thread::spawn(move || lines.for_each(drop));
    child
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("port")
        .local_addr()
        .expect("addr")
        .port()
}

/// `POST /api/kv-probe/<action>` with a JSON body over a raw socket; the status line and body.
fn post(port: u16, action: &str, body: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let req = format!(
        "POST /api/kv-probe/{action} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut answer = String::new();
    s.read_to_string(&mut answer).expect("read");
    let status = answer.lines().next().unwrap_or_default().to_owned();
    let body = answer
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

fn kv(args: &[&str]) -> (bool, String, String) {
    let out = bin().arg("kv").args(args).output().expect("run kv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn an_acknowledged_write_survives_sigkill_and_kv_reads_it() {
    let dir = tempfile::tempdir().expect("dir");
    let port = free_port();
    write_app(dir.path(), port);
    let app = dir.path().to_str().expect("utf-8");
    let mut child = serve(dir.path());
    let (status, body) = post(
        port,
        "set",
        r#"{"bucket":"default","key":"order-1","value":"paid"}"#,
    );
    assert!(status.contains("200"), "{status} {body}");
    // Killed the moment the write is acknowledged: no shutdown, no flush.
    child.kill().expect("SIGKILL");
    child.wait().expect("wait");

    // While the host is down the operator reads the store directly.
    let (ok, out, err) = kv(&["get", app, "default", "order-1"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "paid");

    // And after a restart the package reads it too.
    let mut child = serve(dir.path());
    let (status, body) = post(port, "get", r#"{"bucket":"default","key":"order-1"}"#);
    assert!(status.contains("200"), "{status} {body}");
    assert_eq!(body.trim(), "\"paid\"");
    // While it runs, the embedded file is the host's: the command says so.
    let (ok, _, err) = kv(&["get", app, "default", "order-1"]);
    assert!(!ok && err.contains("is the app running"), "{err}");
    child.kill().expect("kill");
    child.wait().expect("wait");

    // set, list, delete.
    let (ok, _, err) = kv(&["set", app, "default", "order-2", "new"]);
    assert!(ok, "{err}");
    let (ok, out, err) = kv(&["list", app, "default"]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["order-1", "order-2"]);
    let (ok, _, err) = kv(&["delete", app, "default", "order-1"]);
    assert!(ok, "{err}");
    let (ok, _, err) = kv(&["get", app, "default", "order-1"]);
    assert!(!ok && err.contains("no key `order-1`"), "{err}");
    // A bucket the app does not have is named, with those it has.
    let (ok, _, err) = kv(&["list", app, "nope"]);
    assert!(
        !ok && err.contains("no bucket `nope`") && err.contains("default"),
        "{err}"
    );
}

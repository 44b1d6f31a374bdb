//! Child processes of the CLI tests: killed when dropped, so a failing test
//! leaves none behind, and every wait on one is bounded, so a hang fails
//! the test instead of the run. Shared by `host/tests/*.rs` (`#[path]`).

// Each test crate that includes this file uses a part of it.
#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Read as _};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running child with its stdout read line by line and its stderr
/// collected, both on threads of their own (no pipe can fill and block it).
pub struct Running {
    child: Child,
    lines: Receiver<String>,
    stderr: Option<JoinHandle<String>>,
    /// Every stderr line read so far (the stderr thread appends).
    stderr_so_far: std::sync::Arc<std::sync::Mutex<String>>,
    /// Every stdout line read so far.
    pub stdout: String,
}

impl Running {
    /// Spawns `cmd` with stdout and stderr piped.
    pub fn spawn(cmd: &mut Command) -> Running {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the child");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let stderr_so_far = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let so_far = stderr_so_far.clone();
        let stderr = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if let Ok(mut text) = so_far.lock() {
                    text.push_str(&line);
                    text.push('\n');
                }
            }
            so_far.lock().map(|text| text.clone()).unwrap_or_default()
        });
        Running {
            child,
            lines,
            stderr: Some(stderr),
            stderr_so_far,
            stdout: String::new(),
        }
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Reads stdout until a line satisfies `done`, for at most `within`;
    /// panics with what was read when none does (or stdout closes).
    pub fn line_until(&mut self, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + within;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.stdout.push_str(&line);
                    self.stdout.push('\n');
                    if done(&line) {
                        return line;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("no such line within {within:?}; stdout:\n{}", self.stdout)
                }
                Err(RecvTimeoutError::Disconnected) => {
                    panic!("stdout closed; stdout:\n{}", self.stdout)
                }
            }
        }
    }

    /// Waits at most `within` for a stderr line satisfying `done` (stderr
    /// is read on its own thread); panics with stderr so far when none does.
    pub fn stderr_until(&self, within: Duration, done: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + within;
        loop {
            let text = self
                .stderr_so_far
                .lock()
                .map(|t| t.clone())
                .unwrap_or_default();
            if let Some(line) = text.lines().find(|line| done(line)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < end,
                "no such stderr line within {within:?}; stderr:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends `signal` (`TERM`, `INT`, ...) with kill(1).
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([format!("-{signal}"), self.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits at most `within` for the child to exit (else panics, and the
    /// child is killed on drop); its status, the rest of its stdout, and
    /// its stderr.
    pub fn wait_within(mut self, within: Duration) -> (ExitStatus, String, String) {
        let end = Instant::now() + within;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            assert!(
                Instant::now() < end,
                "the child did not exit within {within:?}; stdout:\n{}",
                self.stdout
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.stdout.push_str(&line);
            self.stdout.push('\n');
        }
        let stderr = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default();
        (status, std::mem::take(&mut self.stdout), stderr)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How long any one command of a CLI test may run (a cold `build` of
/// examples/shop included) before the test fails and the command is killed.
pub const COMMAND_LIMIT: Duration = Duration::from_secs(600);

/// `Command::output`, bounded by [`COMMAND_LIMIT`].
pub trait OutputBounded {
    /// Runs to completion like `output()`; panics (killing the child) when
    /// it runs past [`COMMAND_LIMIT`].
    fn output_bounded(&mut self) -> std::io::Result<std::process::Output>;
}

impl OutputBounded for Command {
    fn output_bounded(&mut self) -> std::io::Result<std::process::Output> {
        let mut child = self
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let read = |mut pipe: Box<dyn std::io::Read + Send>| {
            std::thread::spawn(move || {
                let mut bytes = Vec::new();
                let _ = pipe.read_to_end(&mut bytes);
                bytes
            })
        };
        let stdout = read(Box::new(child.stdout.take().expect("stdout")));
        let stderr = read(Box::new(child.stderr.take().expect("stderr")));
        let end = Instant::now() + COMMAND_LIMIT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() >= end {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{self:?} ran past {COMMAND_LIMIT:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        Ok(std::process::Output {
            status,
            stdout: stdout.join().unwrap_or_default(),
            stderr: stderr.join().unwrap_or_default(),
        })
    }
}

/// `POST <path>` with a JSON `body` to a host the test started, on a
/// connection of its own (`Connection: close`); the raw response, or ""
/// when the connection was refused or closed before an answer.
pub fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> String {
    use std::io::Write as _;
    const GENEROUS: Duration = Duration::from_secs(120);
    let Ok(mut stream) = std::net::TcpStream::connect_timeout(&addr, GENEROUS) else {
        return String::new();
    };
    if stream.set_read_timeout(Some(GENEROUS)).is_err() {
        return String::new();
    }
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    if stream.write_all(request.as_bytes()).is_err() {
        return String::new();
    }
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response
}

/// Reads the gateway's address from `run`'s summary line
/// `gateway: http://<addr> ...`, waiting for it at most `within`.
pub fn gateway_addr(child: &mut Running, within: Duration) -> std::net::SocketAddr {
    let line = child.line_until(within, |line| line.starts_with("gateway: http://"));
    line.trim_start_matches("gateway: http://")
        .split_whitespace()
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
}

//! What a guest writes for people to read: its `logging` calls and its
//! stdout and stderr, turned into `tracing` events under the `guest` target.
//!
//! # Never a host line
//! Guest text is escaped before it reaches a log: a newline, a carriage
//! return, an ANSI escape or any other control or bidirectional-format
//! character is written as `\n`, `\u{1b}`, ... so a guest can never start a
//! line of its own that looks like the host's.
//!
//! # Bounded
//! A message is cut at [`MESSAGE_MAX`] bytes, and each package has a token
//! bucket of log bytes ([`BURST`], refilled at [`RATE`] per second, each
//! line also costing [`LINE_COST`]): past it lines are dropped, counted
//! ([`GuestLogs::dropped`], in the metrics), and said in one line when
//! dropping begins, then at most once every [`NOTICE_EVERY`] with the count.
//!
//! A leaf: it must not import the broker or the package; `escape` is also
//! how a peer's error text is shown (see `transport::packet`).

use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Instant;

/// The longest guest message kept, in bytes; the rest is cut.
pub const MESSAGE_MAX: usize = 16 * 1024;
/// Log bytes a package may write at once.
pub const BURST: u64 = 1 << 20;
/// Log bytes a package may write per second, sustained.
pub const RATE: u64 = 256 << 10;
/// What each line costs beyond its text, so that many short lines are
/// bounded too (about 4,000 a second).
pub const LINE_COST: u64 = 64;

/// The shortest time between two notices of dropped guest lines.
pub const NOTICE_EVERY: std::time::Duration = std::time::Duration::from_secs(60);

/// How much of stderr is kept to explain a panic.
const TAIL_KEEP: usize = 4096;

/// A guest's log level.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// `trace`
    Trace,
    /// `debug`
    Debug,
    /// `info` (stdout and stderr lines too)
    Info,
    /// `warn`
    Warn,
    /// `error`
    Error,
}

impl Level {
    /// Its name, as the WIT `level` spells it.
    pub const fn name(self) -> &'static str {
        match self {
            Level::Trace => "trace",
            Level::Debug => "debug",
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// The log budget of one package, shared by all its instances.
#[derive(Debug)]
pub struct GuestLogs {
    package: Arc<str>,
    bucket: Mutex<Bucket>,
    dropped: AtomicU64,
}

#[derive(Debug)]
struct Bucket {
    tokens: u64,
    refilled: Instant,
    /// When dropping was last said.
    noticed: Option<Instant>,
}

impl GuestLogs {
    /// A full budget for `package`.
    pub fn new(package: Arc<str>) -> Self {
        GuestLogs {
            package,
            bucket: Mutex::new(Bucket {
                tokens: BURST,
                refilled: Instant::now(),
                noticed: None,
            }),
            dropped: AtomicU64::new(0),
        }
    }

    /// Lines dropped over the budget since load.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Logs one guest line at `level`, escaped, cut and within the budget.
    /// `fields` are `(stream, request id)`.
    pub fn log(&self, level: Level, text: &str, stream: Option<&'static str>, request_id: &str) {
        if !enabled(level) {
            return;
        }
        let cut = cut_at(text, MESSAGE_MAX);
        if !self.admit(cut as u64 + LINE_COST) {
            return;
        }
        let mut line = escape(&text[..cut]);
        if cut < text.len() {
            let _ = write!(line, " … [{} more bytes cut]", text.len() - cut);
        }
        let package = &*self.package;
        let stream = stream.unwrap_or("log");
        match level {
            Level::Trace => {
                tracing::trace!(target: "guest", package, stream, request_id, "{line}")
            }
            Level::Debug => {
                tracing::debug!(target: "guest", package, stream, request_id, "{line}")
            }
            Level::Info => tracing::info!(target: "guest", package, stream, request_id, "{line}"),
            Level::Warn => tracing::warn!(target: "guest", package, stream, request_id, "{line}"),
            Level::Error => {
                tracing::error!(target: "guest", package, stream, request_id, "{line}")
            }
        }
    }

    /// Takes `cost` from the bucket; `false` (and the line is counted as
    /// dropped) when it does not hold that much.
    fn admit(&self, cost: u64) -> bool {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let earned = now.duration_since(b.refilled).as_micros() as u64 * RATE / 1_000_000;
        if earned > 0 {
            b.tokens = (b.tokens + earned).min(BURST);
            b.refilled = now;
        }
        if b.tokens < cost {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if b.noticed
                .is_none_or(|at| now.duration_since(at) >= NOTICE_EVERY)
            {
                b.noticed = Some(now);
                tracing::warn!(
                    package = &*self.package,
                    dropped,
                    "guest logs over the package's budget ({} KiB/s, bursts of {} KiB); dropping lines ({dropped} so far; the metrics count them)",
                    RATE >> 10,
                    BURST >> 10
                );
            }
            return false;
        }
        b.tokens -= cost;
        true
    }
}

fn enabled(level: Level) -> bool {
    match level {
        Level::Trace => tracing::enabled!(target: "guest", tracing::Level::TRACE),
        Level::Debug => tracing::enabled!(target: "guest", tracing::Level::DEBUG),
        Level::Info => tracing::enabled!(target: "guest", tracing::Level::INFO),
        Level::Warn => tracing::enabled!(target: "guest", tracing::Level::WARN),
        Level::Error => tracing::enabled!(target: "guest", tracing::Level::ERROR),
    }
}

/// The largest char boundary of `text` at or below `max`.
fn cut_at(text: &str, max: usize) -> usize {
    if text.len() <= max {
        return text.len();
    }
    (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0)
}

/// `text` with every control and bidirectional-format character escaped
/// (`\n`, `\r`, `\t`, else `\u{..}`), so that it stays on one line and
/// shows as written.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs_escape(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

/// Controls (C0, DEL, C1: ANSI escapes, NEL), line and paragraph
/// separators, and the marks that reorder text on screen.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{2028}'..='\u{202e}'
            | '\u{2060}'..='\u{2069}' | '\u{feff}')
}

// ----------------------------------------------------------- stdout, stderr

/// A guest's stdout or stderr: each line is logged through the package's
/// [`GuestLogs`], and stderr's tail is kept to explain a panic.
pub struct GuestOutput {
    logs: Arc<GuestLogs>,
    stream: &'static str,
    tail: Option<Arc<Mutex<String>>>,
}

impl GuestOutput {
    /// The output `stream` (`stdout`, `stderr`) of an instance of the
    /// package whose budget is `logs`; `tail` keeps the last lines.
    pub fn new(
        logs: Arc<GuestLogs>,
        stream: &'static str,
        tail: Option<Arc<Mutex<String>>>,
    ) -> Self {
        GuestOutput { logs, stream, tail }
    }
}

impl wasmtime_wasi::cli::IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl wasmtime_wasi::cli::StdoutStream for GuestOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(GuestWriter {
            logs: self.logs.clone(),
            stream: self.stream,
            tail: self.tail.clone(),
            line: Vec::new(),
            cut: 0,
        })
    }
}

struct GuestWriter {
    logs: Arc<GuestLogs>,
    stream: &'static str,
    tail: Option<Arc<Mutex<String>>>,
    line: Vec<u8>,
    /// Bytes of the current line past [`MESSAGE_MAX`], not kept.
    cut: usize,
}

impl GuestWriter {
    fn write_bytes(&mut self, mut buf: &[u8]) {
        while !buf.is_empty() {
            let end = buf.iter().position(|&b| b == b'\n');
            let piece = &buf[..end.unwrap_or(buf.len())];
            let room = MESSAGE_MAX.saturating_sub(self.line.len());
            let kept = piece.len().min(room);
            self.line.extend_from_slice(&piece[..kept]);
            self.cut += piece.len() - kept;
            match end {
                Some(at) => {
                    self.flush_line();
                    buf = &buf[at + 1..];
                }
                None => break,
            }
        }
    }

    fn flush_line(&mut self) {
        let mut text = String::from_utf8_lossy(&self.line).into_owned();
        if self.cut > 0 {
            let _ = write!(text, " … [{} more bytes cut]", self.cut);
        }
        self.line.clear();
        self.cut = 0;
        self.logs.log(Level::Info, &text, Some(self.stream), "");
        if let Some(Ok(mut tail)) = self.tail.as_ref().map(|t| t.lock()) {
            tail.push_str(&text);
            tail.push('\n');
            if tail.len() > TAIL_KEEP {
                let cut = tail.len() - TAIL_KEEP;
                let cut = (cut..tail.len())
                    .find(|&i| tail.is_char_boundary(i))
                    .unwrap_or(0);
                tail.drain(..cut);
            }
        }
    }
}

impl tokio::io::AsyncWrite for GuestWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        mut self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.line.is_empty() && self.stream == "stderr" {
            self.flush_line();
        }
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_text_stays_on_one_line() {
        let forged = "x\n INFO steedos_wasm::gateway: admin: deploy package=forged";
        assert_eq!(
            escape(forged),
            "x\\n INFO steedos_wasm::gateway: admin: deploy package=forged"
        );
        assert_eq!(
            escape("a\r\x1b[2Kb\u{85}c\u{2028}d\u{202e}e\tf"),
            "a\\r\\u{1b}[2Kb\\u{85}c\\u{2028}d\\u{202e}e\\tf"
        );
        assert_eq!(escape("héllo, 世界 \\n"), "héllo, 世界 \\n");
    }

    #[test]
    fn cuts_fall_on_char_boundaries() {
        assert_eq!(cut_at("abc", 16), 3);
        assert_eq!(cut_at("ééé", 3), 2);
        assert_eq!(cut_at("ééé", 4), 4);
    }

    #[test]
    fn the_bucket_drops_past_its_burst_and_counts() {
        let logs = GuestLogs::new("p".into());
        let line = BURST / 8;
        let admitted = (0..64).filter(|_| logs.admit(line)).count();
        assert!((7..=9).contains(&admitted), "{admitted}");
        assert_eq!(logs.dropped(), 64 - admitted as u64);
    }
}

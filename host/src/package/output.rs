//! Guest output as the host reads it after a fault: the last words in a
//! trapped guest's stderr (a Rust panic, an uncaught Python or JavaScript
//! exception), hostcall fuel running out, and sizes and durations written
//! for people. Text only: it holds no store and calls no guest.

use crate::context::Human;

/// wasmtime's "fuel allocated for hostcalls has been exhausted": the values
/// lifted out of a guest outgrew the store's hostcall fuel.
pub(super) fn is_hostcall_fuel(e: &wasmtime::Error) -> bool {
    e.chain()
        .any(|cause| cause.to_string().contains("fuel allocated for hostcalls"))
}

/// Why a guest that trapped on `unreachable` gave up, from its stderr: an
/// uncaught Python or JavaScript exception, else a Rust panic.
pub(super) fn last_words(stderr: &str) -> Option<String> {
    python_exception(stderr)
        .or_else(|| javascript_exception(stderr))
        .or_else(|| panic_message(stderr))
}

/// `panicked at src/lib.rs:3:5: boom` from what a Rust guest wrote to stderr.
fn panic_message(stderr: &str) -> Option<String> {
    let at = stderr.rfind("panicked at ")?;
    let text = stderr[at..]
        .split("\nnote: run with `RUST_BACKTRACE")
        .next()
        .unwrap_or_default()
        .trim();
    Some(text.split_whitespace().collect::<Vec<_>>().join(" "))
}

/// `ValueError: boom` from componentize-py's traceback, which its runtime
/// follows with a panic. Frames are indented; the exception line may arrive
/// in pieces (each write is flushed), so the pieces are joined as written.
fn python_exception(stderr: &str) -> Option<String> {
    let end = stderr.rfind("Python function threw an unexpected exception")?;
    let start = stderr[..end].rfind("Traceback (most recent call last):")?;
    let text: String = stderr[start..end]
        .lines()
        .skip(1)
        .take_while(|l| !l.starts_with("thread '"))
        .filter(|l| !l.starts_with(' '))
        .collect();
    let text = text.trim();
    (!text.is_empty()).then(|| format!("uncaught Python exception: {text}"))
}

/// The message StarlingMonkey (componentize-js) prints above `Stack:` for
/// an uncaught exception before it aborts.
fn javascript_exception(stderr: &str) -> Option<String> {
    let end = stderr.rfind("Redirecting call to abort()")?;
    let stack = stderr[..end].rfind("Stack:\n")?;
    let text = stderr[..stack].trim_end().lines().next_back()?.trim();
    (!text.is_empty()).then(|| format!("uncaught JavaScript exception: {text}"))
}

/// `16 MiB` for exact multiples, else bytesize's `16.5 MiB`.
pub(super) fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 && n % (1 << 30) == 0 => format!("{} GiB", n >> 30),
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => bytesize::ByteSize(n).display().iec().to_string(),
    }
}

/// `1.5s` for messages about deadlines.
pub fn human(d: std::time::Duration) -> Human {
    Human(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_text_is_found_in_stderr() {
        let s = "noise\nthread '<unnamed>' panicked at src/lib.rs:15:24:\nboom on purpose\n";
        assert_eq!(
            panic_message(s).as_deref(),
            Some("panicked at src/lib.rs:15:24: boom on purpose")
        );
        assert_eq!(panic_message("nothing"), None);
    }

    #[test]
    fn uncaught_python_and_javascript_exceptions_are_found_in_stderr() {
        // As componentize-py writes it, each write flushed on a line of its own.
        let py = "Traceback (most recent call last):\n  File \"/1/app.py\", line 17, in boom\nValueError\n: \nkaboom\n\n\n\
                  thread '<unnamed>' (1) panicked at runtime/src/lib.rs:1280:25:\n\
                  Python function threw an unexpected exception\nnote: run with `RUST_BACKTRACE=1`\n";
        assert_eq!(
            last_words(py).as_deref(),
            Some("uncaught Python exception: ValueError: kaboom")
        );
        let js = "earlier line\ncan't access property \"x\", o is null\nStack:\n  boom@dist/app.js:9:5\n\n\
                  Redirecting call to abort() to mozalloc_abort\n\n";
        assert_eq!(
            last_words(js).as_deref(),
            Some("uncaught JavaScript exception: can't access property \"x\", o is null")
        );
        // A Rust panic is still a panic.
        let rust = "thread '<unnamed>' panicked at src/lib.rs:1:1:\nboom\n";
        assert_eq!(
            last_words(rust).as_deref(),
            Some("panicked at src/lib.rs:1:1: boom")
        );
    }
}

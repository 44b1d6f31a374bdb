//! `http-server`: a component built as for `wasmtime serve` (it exports
//! only `wasi:http/incoming-handler` and imports only WASI), answering with
//! its own status, headers and body, so that a test can check from outside
//! how the gateway serves it. By the last path segment:
//!
//! - `hello`: 203, `x-served-by: http-server`, the request id it was
//!   handed in `x-seen-request-id`, a text body naming method, path and query.
//! - `echo`: 201 and the request body back, read and written chunk by chunk
//!   (a request body that fails to arrive ends the echo with
//!   `[read error: ...]`).
//! - `big?n=<bytes>`: `n` bytes of `x`, written 64 KiB at a time, no length.
//! - `forever`: a body that never ends.
//! - `trap`: panics before answering; `trap-mid`: after sending some body.
//! - `no-answer`: returns without answering.
//! - `bad-headers`: tries forbidden and malformed headers, and says which
//!   were refused (`x-refused`).
//! - `count`: how many requests this instance has handled, this one included.
//! - `sum`: reads the whole request body before answering, then answers
//!   200 with its length (and `[read error: ...]` if it failed to arrive).

use std::io::{Read, Write};

use wasi::http::types::{
    Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};

wasi::http::proxy::export!(Server);

struct Server;

/// Requests this instance has handled.
static HANDLED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// How much of a large body goes out in one write.
const CHUNK: usize = 64 * 1024;

fn method_name(m: &Method) -> String {
    match m {
        Method::Get => "GET".into(),
        Method::Head => "HEAD".into(),
        Method::Post => "POST".into(),
        Method::Put => "PUT".into(),
        Method::Delete => "DELETE".into(),
        Method::Patch => "PATCH".into(),
        Method::Options => "OPTIONS".into(),
        Method::Connect => "CONNECT".into(),
        Method::Trace => "TRACE".into(),
        Method::Other(s) => s.clone(),
    }
}

fn query_number(path_with_query: &str, key: &str) -> Option<usize> {
    let (_, query) = path_with_query.split_once('?')?;
    query.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

/// Sends a response of `status` with `headers`, then `write` fills its body.
fn respond(
    out: ResponseOutparam,
    status: u16,
    headers: &[(&str, &[u8])],
    write: impl FnOnce(&mut wasi::io::streams::OutputStream) -> std::io::Result<()>,
) {
    let fields = Fields::new();
    for (name, value) in headers {
        fields
            .append(&name.to_string(), &value.to_vec())
            .expect("a valid header");
    }
    let response = OutgoingResponse::new(fields);
    response.set_status_code(status).expect("a valid status");
    let body = response.body().expect("the body, once");
    ResponseOutparam::set(out, Ok(response));
    let mut stream = body.write().expect("the body stream, once");
    let written = write(&mut stream).and_then(|()| Write::flush(&mut stream));
    drop(stream);
    match written {
        Ok(()) => OutgoingBody::finish(body, None).expect("the body finishes"),
        // The reader went away or the host cut the body: nothing more to say.
        Err(_) => drop(body),
    }
}

/// Tries each header on a fresh `Fields`: the names of those refused.
fn refused_headers() -> Vec<String> {
    let tries: [(&str, &[u8]); 6] = [
        ("connection", b"close"),
        ("host", b"evil.example"),
        ("transfer-encoding", b"chunked"),
        ("bad name", b"x"),
        ("x-bad-value", b"a\r\nb"),
        ("x-fine", b"yes"),
    ];
    tries
        .iter()
        .filter(|(name, value)| Fields::new().append(&name.to_string(), &value.to_vec()).is_err())
        .map(|(name, _)| name.to_string())
        .collect()
}

impl wasi::exports::http::incoming_handler::Guest for Server {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let handled = HANDLED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let path = request.path_with_query().unwrap_or_default();
        let method = method_name(&request.method());
        let last = path
            .split('?')
            .next()
            .unwrap_or("")
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        match last.as_str() {
            "hello" => {
                let seen = request
                    .headers()
                    .get(&"x-request-id".to_string())
                    .into_iter()
                    .next()
                    .unwrap_or_default();
                let text = format!("hello from http-server: {method} {path}");
                respond(
                    out,
                    203,
                    &[
                        ("content-type", b"text/plain"),
                        ("x-served-by", b"http-server"),
                        ("x-seen-request-id", &seen),
                    ],
                    |s| s.write_all(text.as_bytes()),
                );
            }
            "echo" => {
                let body = request.consume().expect("the request body, once");
                let mut input = body.stream().expect("the body stream, once");
                respond(out, 201, &[("x-echo", b"yes")], |s| {
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        match Read::read(&mut input, &mut buf) {
                            Ok(0) => return Ok(()),
                            Ok(n) => s.write_all(&buf[..n])?,
                            // Said in the body, for the test to see.
                            Err(e) => return s.write_all(format!("[read error: {e}]").as_bytes()),
                        }
                    }
                });
            }
            "big" => {
                let n = query_number(&path, "n").unwrap_or(0);
                respond(out, 200, &[("content-type", b"application/octet-stream")], |s| {
                    let chunk = vec![b'x'; CHUNK];
                    let mut left = n;
                    while left > 0 {
                        let len = left.min(CHUNK);
                        s.write_all(&chunk[..len])?;
                        left -= len;
                    }
                    Ok(())
                });
            }
            "forever" => respond(out, 200, &[], |s| {
                let chunk = vec![b'y'; CHUNK];
                loop {
                    s.write_all(&chunk)?;
                }
            }),
            "trap" => panic!("http-server trapped on purpose before answering"),
            "trap-mid" => respond(out, 200, &[], |s| {
                s.write_all(&vec![b'z'; 3 * CHUNK])?;
                Write::flush(s)?;
                panic!("http-server trapped on purpose in the middle of its body")
            }),
            "sum" => {
                let body = request.consume().expect("the request body, once");
                let mut input = body.stream().expect("the body stream, once");
                let mut buf = vec![0u8; CHUNK];
                let (mut total, mut note) = (0usize, String::new());
                loop {
                    match Read::read(&mut input, &mut buf) {
                        Ok(0) => break,
                        Ok(n) => total += n,
                        Err(e) => {
                            note = format!(" [read error: {e}]");
                            break;
                        }
                    }
                }
                let text = format!("{total}{note}");
                respond(out, 200, &[], |s| s.write_all(text.as_bytes()));
            }
            "no-answer" => drop(out),
            "count" => respond(out, 200, &[], |s| s.write_all(handled.to_string().as_bytes())),
            "bad-headers" => {
                let refused = refused_headers().join(",");
                respond(out, 200, &[("x-refused", refused.as_bytes())], |s| {
                    s.write_all(refused.as_bytes())
                });
            }
            _ => respond(out, 404, &[("content-type", b"text/plain")], |s| {
                s.write_all(format!("http-server has no {path}").as_bytes())
            }),
        }
    }
}

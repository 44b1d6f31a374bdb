//! `@NAME@`: a steedos-wasm package in Rust that serves HTTP and calls out,
//! on the `wasi` crate's `wasi:http` bindings. The gateway hands it every
//! request under `/@NAME@/`:
//!
//! - `GET /@NAME@/fetch?url=<url>` sends `GET <url>` (an origin
//!   `grants.http` names) and answers with what came back;
//! - anything else answers `Hello from @NAME@!` and the path.
//!
//! A panic traps the instance: the host answers 500 and replaces it.

use std::io::{Read, Write};

use wasi::http::outgoing_handler;
use wasi::http::types::{
    ErrorCode, Fields, IncomingRequest, IncomingResponse, Method, OutgoingBody, OutgoingRequest,
    OutgoingResponse, ResponseOutparam, Scheme,
};

wasi::http::proxy::export!(Package);

struct Package;

impl wasi::exports::http::incoming_handler::Guest for Package {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (status, text) = match path.split_once("/fetch?url=") {
            Some((_, url)) => match fetch(url) {
                Ok((status, body)) => (200, format!("{url} answered {status}: {body}")),
                Err(why) => (502, format!("{url}: {why}")),
            },
            None => (200, format!("Hello from @NAME@! You asked for {path}")),
        };
        respond(out, status, &text);
    }
}

/// Sends a response of `status` with `text` as its body.
fn respond(out: ResponseOutparam, status: u16, text: &str) {
    let headers = Fields::new();
    let _ = headers.append("content-type", b"text/plain; charset=utf-8");
    let response = OutgoingResponse::new(headers);
    let _ = response.set_status_code(status);
    let Ok(body) = response.body() else { return };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(mut stream) = body.write() {
        let _ = stream.write_all(text.as_bytes());
        let _ = Write::flush(&mut stream);
    }
    let _ = OutgoingBody::finish(body, None);
}

/// `GET url`: its status and body, or why there is none.
fn fetch(url: &str) -> Result<(u16, String), String> {
    let (scheme, rest) = url.split_once("://").ok_or("no scheme in the URL")?;
    let scheme = match scheme {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        other => Scheme::Other(other.to_string()),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Get);
    let _ = request.set_scheme(Some(&scheme));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    let sent = outgoing_handler::handle(request, None).map_err(|e| code(&e))?;
    sent.subscribe().block();
    let response = match sent.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(code(&e)),
        _ => return Err("no response".to_string()),
    };
    Ok((response.status(), read_body(&response)?))
}

fn read_body(response: &IncomingResponse) -> Result<String, String> {
    let body = response.consume().map_err(|()| "the body was taken")?;
    let mut text = String::new();
    {
        let mut stream = body.stream().map_err(|()| "no body stream")?;
        stream
            .read_to_string(&mut text)
            .map_err(|e| format!("reading the body: {e}"))?;
    }
    Ok(text)
}

/// A `wasi:http` error code as text (`HttpRequestDenied` when no grant
/// lets the request through).
fn code(e: &ErrorCode) -> String {
    format!("{e:?}")
}

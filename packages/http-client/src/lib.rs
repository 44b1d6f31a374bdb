//! `http-client`: sends HTTP requests through `wasi:http/outgoing-handler`
//! with the plain `wasi` crate bindings, and reports what came back (or the
//! `wasi:http` error code), so a test can check the host's grants and
//! limits from outside.

steedos_sdk::generate!({
    path: ["../../wit", "wit"],
    world: "test:http-client/http-client",
});

use exports::test::http_client::client::{Guest, Reply};
use wasi::http::outgoing_handler::{self, FutureIncomingResponse};
use wasi::http::types::{
    ErrorCode, Fields, IncomingResponse, Method, OutgoingBody, OutgoingRequest, RequestOptions,
    Scheme,
};
use wasi::io::streams::StreamError;

/// The most body text a reply carries (its length is always the whole).
const KEPT: usize = 64 * 1024;

struct Client;

fn method(m: &str) -> Method {
    match m.to_ascii_uppercase().as_str() {
        "GET" => Method::Get,
        "HEAD" => Method::Head,
        "POST" => Method::Post,
        "PUT" => Method::Put,
        "DELETE" => Method::Delete,
        "PATCH" => Method::Patch,
        "OPTIONS" => Method::Options,
        _ => Method::Other(m.to_string()),
    }
}

/// `scheme://authority/path?query` split into its parts.
fn split(url: &str) -> Result<(Scheme, String, String), String> {
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
    Ok((scheme, authority.to_string(), path.to_string()))
}

fn request(
    m: &str,
    url: &str,
    headers: &[(String, String)],
    body: &str,
    timeout_ms: Option<u32>,
) -> Result<FutureIncomingResponse, String> {
    let (scheme, authority, path) = split(url)?;
    let list: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
        .collect();
    let fields = Fields::from_list(&list).map_err(|e| format!("header {e:?}"))?;
    let req = OutgoingRequest::new(fields);
    req.set_method(&method(m)).map_err(|()| "bad method")?;
    req.set_scheme(Some(&scheme)).map_err(|()| "bad scheme")?;
    req.set_authority(Some(&authority))
        .map_err(|()| "bad authority")?;
    req.set_path_with_query(Some(&path))
        .map_err(|()| "bad path")?;
    let out = req.body().map_err(|()| "no body")?;
    let options = timeout_ms.map(|ms| {
        let ns = u64::from(ms) * 1_000_000;
        let o = RequestOptions::new();
        let _ = o.set_connect_timeout(Some(ns));
        let _ = o.set_first_byte_timeout(Some(ns));
        let _ = o.set_between_bytes_timeout(Some(ns));
        o
    });
    let future = outgoing_handler::handle(req, options).map_err(|e| format!("{e:?}"))?;
    if !body.is_empty() {
        let stream = out.write().map_err(|()| "no body stream")?;
        for chunk in body.as_bytes().chunks(4096) {
            stream
                .blocking_write_and_flush(chunk)
                .map_err(|e| format!("writing the body: {e:?}"))?;
        }
        drop(stream);
    }
    OutgoingBody::finish(out, None).map_err(|e| format!("{e:?}"))?;
    Ok(future)
}

fn wait(future: FutureIncomingResponse) -> Result<IncomingResponse, String> {
    future.subscribe().block();
    match future.get() {
        Some(Ok(Ok(res))) => Ok(res),
        Some(Ok(Err(e))) => Err(format!("{e:?}")),
        Some(Err(())) => Err("the response was already taken".into()),
        None => Err("the response is not ready".into()),
    }
}

fn read(res: IncomingResponse) -> Result<Reply, String> {
    let status = res.status();
    let headers = res
        .headers()
        .entries()
        .into_iter()
        .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
        .collect();
    let body = res.consume().map_err(|()| "no body")?;
    let stream = body.stream().map_err(|()| "no body stream")?;
    let mut kept = Vec::new();
    let mut length = 0u64;
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(bytes) => {
                length += bytes.len() as u64;
                let room = KEPT.saturating_sub(kept.len());
                kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                let code: Option<ErrorCode> = wasi::http::types::http_error_code(&e);
                return Err(match code {
                    Some(code) => format!("{code:?}"),
                    None => e.to_debug_string(),
                });
            }
        }
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&kept).into_owned(),
        body_length: length,
    })
}

impl Guest for Client {
    fn send(
        method: String,
        url: String,
        headers: Vec<(String, String)>,
        body: String,
        timeout_ms: Option<u32>,
    ) -> Result<Reply, String> {
        let future = request(&method, &url, &headers, &body, timeout_ms)?;
        read(wait(future)?)
    }

    fn get(url: String) -> Result<Reply, String> {
        Self::send("GET".into(), url, Vec::new(), String::new(), None)
    }

    fn many(url: String, count: u32) -> Vec<Result<u16, String>> {
        let futures: Vec<_> = (0..count)
            .map(|_| request("GET", &url, &[], "", None))
            .collect();
        futures
            .into_iter()
            .map(|f| wait(f?).map(|res| res.status()))
            .collect()
    }
}

export!(Client);

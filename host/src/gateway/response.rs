//! The gateway's answers: JSON bodies, the error body every refusal
//! shares (`{"error": {"kind", "message", "package", "action",
//! "request_id"}}`), and the refusals of a body or a token.
//!
//! Pure functions of what they are given: they must not reach the broker
//! or read a request.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue};
use hyper::{Response, StatusCode};
use serde_json::{Value, json};

use super::connection::BodyError;

/// The answer to a body that could not be read; the connection is closed
/// after it, since the rest of the body is not read.
pub(super) fn body_problem(
    e: BodyError,
    action: Option<&str>,
    request_id: &Arc<str>,
) -> Response<Full<Bytes>> {
    let (status, kind) = match &e {
        BodyError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
        BodyError::TooSlow { .. } => (StatusCode::REQUEST_TIMEOUT, "request-timeout"),
        BodyError::Read(_) => (StatusCode::BAD_REQUEST, "bad-request"),
    };
    let mut r = problem(status, kind, e.to_string(), action, request_id);
    r.headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    r
}

pub(super) fn unauthorized(message: &str, request_id: &Arc<str>) -> Response<Full<Bytes>> {
    let mut r = problem(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        message.into(),
        None,
        request_id,
    );
    r.headers_mut().insert(
        hyper::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer"),
    );
    r
}

pub(super) fn problem(
    status: StatusCode,
    kind: &str,
    message: String,
    action: Option<&str>,
    request_id: &Arc<str>,
) -> Response<Full<Bytes>> {
    let (package, action) = match action.and_then(|a| a.split_once('.')) {
        Some((p, a)) => (Some(p), Some(a)),
        None => (None, None),
    };
    json_response(
        status,
        &json!({ "error": { "kind": kind, "message": message, "package": package, "action": action, "request_id": &**request_id } }),
    )
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    text(
        status,
        "application/json",
        serde_json::to_string(value).unwrap_or_default(),
    )
}

pub(super) fn text(
    status: StatusCode,
    content_type: &'static str,
    body: String,
) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

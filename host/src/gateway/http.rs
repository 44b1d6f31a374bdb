//! The routes of `[gateway.http]`: a request whose path one of them
//! answers goes, as it is (method, path and query, headers, the body
//! streaming), to the package's `wasi:http/incoming-handler`, and the
//! package's own response (status, headers, streaming body) goes back.
//! The gateway's limits hold: URI length, `max_body` (a `content-length`
//! over it is refused before the package runs; a body growing past it is
//! cut), `body_timeout` and `min_body_rate` while the package reads the
//! body. A refusal, a fault of the handler before it answered, or a
//! response the host will not send is the gateway's JSON error naming the
//! package; a fault after it answered cuts the body short, so the client
//! sees an incomplete response, never a truncated one passed as whole.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HOST, HeaderValue};
use hyper::{Request, Response, StatusCode};

use super::connection::{BodyError, Connection};
use super::response::{body_problem, problem};
use super::{CALL_TIMEOUT, Gateway, MAX_URI};
use crate::broker::HTTP_HANDLER;
use crate::context::{CallContext, CallError};
use crate::http::{LimitedBody, WatchedBody};
use crate::manifest::{HttpRoute, find_route, is_own};

/// A gateway response: the gateway's own (whole) or a package's (streaming).
pub(super) type GatewayBody = Either<Full<Bytes>, WatchedBody>;

impl Gateway {
    /// The `[gateway.http]` route answering `path`, unless the gateway
    /// answers it itself.
    pub(super) fn http_route(&self, path: &str) -> Option<&HttpRoute> {
        if self.settings.http.is_empty() || is_own(path) {
            return None;
        }
        find_route(&self.settings.http, path)
    }

    /// Serves `req` by `route`'s package.
    pub(super) async fn serve_http(
        &self,
        mut req: Request<Incoming>,
        route: &HttpRoute,
        request_id: &Arc<str>,
        connection: &Connection,
    ) -> Response<GatewayBody> {
        let package = route.package.as_str();
        // Named only when refusing: no allocation on the way through.
        let label = || format!("{package}.{HTTP_HANDLER}");
        let refuse = |status, kind, message: String| {
            problem(status, kind, message, Some(&label()), request_id).map(Either::Left)
        };
        if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > MAX_URI {
            let why = format!("the URI is longer than {MAX_URI} bytes");
            return refuse(StatusCode::URI_TOO_LONG, "uri-too-long", why);
        }
        let limit = usize::try_from(self.settings.max_body).unwrap_or(usize::MAX);
        if req.body().size_hint().lower() > self.settings.max_body {
            let refused = body_problem(BodyError::TooLarge(limit), Some(&label()), request_id);
            return refused.map(Either::Left);
        }
        // wasi:http hands the guest an authority: HTTP/1.0 may send no Host.
        match req.headers().get(HOST).map(|h| h.to_str()) {
            Some(Ok(_)) => {}
            Some(Err(_)) => {
                let why = "the Host header is not visible ASCII".to_string();
                return refuse(StatusCode::BAD_REQUEST, "bad-request", why);
            }
            None => {
                req.headers_mut()
                    .insert(HOST, HeaderValue::from_static("localhost"));
            }
        }
        // The request id the gateway settled on is the one the package sees.
        if let Ok(id) = HeaderValue::from_str(request_id) {
            req.headers_mut().insert("x-request-id", id);
        }
        let s = &self.settings;
        let req =
            req.map(|body| LimitedBody::new(body, s.max_body, s.body_timeout, s.min_body_rate));
        let ctx = CallContext::with_request_id(request_id.clone(), CALL_TIMEOUT);
        connection.working();
        match self.broker.serve_http(package, req, ctx).await {
            Ok(response) => served(response, package),
            Err(e) => {
                tracing::info!(package, kind = e.kind().name(), error = %e.message(), "HTTP handler failed");
                let (status, kind) = status_of(&e);
                let message = format!("package `{package}`: {}", e.public_message());
                refuse(status, kind, message)
            }
        }
    }
}

/// A package's response as the gateway sends it: an informational status
/// (1xx) is no final answer, so it is refused.
fn served(response: Response<WatchedBody>, package: &str) -> Response<GatewayBody> {
    if response.status().is_informational() {
        tracing::warn!(package, status = %response.status(), "HTTP handler answered with a 1xx status");
        let mut r = Response::new(Either::Left(Full::new(Bytes::from(format!(
            "package `{package}` answered with status {}, which is not a final response",
            response.status()
        )))));
        *r.status_mut() = StatusCode::BAD_GATEWAY;
        return r;
    }
    response.map(Either::Right)
}

/// The status of a call error from a package serving HTTP: a fault is the
/// package's server error (500), the rest as for actions.
fn status_of(e: &CallError) -> (StatusCode, &'static str) {
    match e {
        CallError::Crashed(_) => (StatusCode::INTERNAL_SERVER_ERROR, e.kind().name()),
        _ => (
            StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            e.kind().name(),
        ),
    }
}

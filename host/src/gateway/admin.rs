//! The operator API, `/admin`: list, deploy, upgrade and remove packages
//! with the admin bearer token, through the app's port
//! ([`crate::admin::Operator`]).
//!
//! It validates nothing about a package itself (the app and the manifest
//! do) and must not touch the broker's packages but through [`crate::admin::Operator`].

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Value, json};

use super::Gateway;
use super::connection::Connection;
use super::response::{body_problem, json_response, problem, unauthorized};
use crate::admin::OperatorError;

/// The largest component `/admin` accepts.
const MAX_COMPONENT: usize = 256 << 20;

impl Gateway {
    /// `/admin/...`: refused unless the API is on and the token is right.
    pub(super) async fn admin(
        &self,
        req: Request<Incoming>,
        path: &str,
        request_id: &Arc<str>,
        connection: &Connection,
    ) -> Response<Full<Bytes>> {
        let (Some(_), Some(operator)) = (&self.settings.admin_token, &self.operator) else {
            return problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "the admin API is off (set [gateway] admin_token_env)".into(),
                None,
                request_id,
            );
        };
        if !self.has_admin_token(&req) {
            return unauthorized("a valid bearer token is required", request_id);
        }
        let name = path
            .strip_prefix("/admin/packages")
            .map(|n| n.trim_matches('/').to_string());
        let outcome = match (req.method().clone(), name) {
            (Method::GET, Some(n)) if n.is_empty() => return self.packages(),
            (Method::PUT, Some(n)) if !n.is_empty() && !n.contains('/') => {
                let settings: Vec<(String, String)> =
                    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                        .into_owned()
                        .collect();
                let component = match self.read(req, MAX_COMPONENT).await {
                    Ok(c) => c,
                    Err(e) => return body_problem(e, None, request_id),
                };
                connection.working();
                tracing::info!(package = %n, bytes = component.len(), "admin: deploy");
                operator.deploy(n, component, settings).await
            }
            (Method::DELETE, Some(n)) if !n.is_empty() && !n.contains('/') => {
                connection.working();
                tracing::info!(package = %n, "admin: remove");
                operator.remove(n).await
            }
            _ => {
                return problem(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    format!("no admin route {} {path}", req.method()),
                    None,
                    request_id,
                );
            }
        };
        match outcome {
            Ok(done) => json_response(StatusCode::OK, &json!({ "ok": done })),
            Err(e) => operator_problem(&e, request_id),
        }
    }

    /// `GET /admin/packages`: every package, with its last error (only the
    /// token's holder reads this).
    fn packages(&self) -> Response<Full<Bytes>> {
        let list: Vec<Value> = self
            .broker
            .reports()
            .into_iter()
            .map(|r| json!({ "name": r.name, "state": r.state, "instances": r.live, "configured": r.instances,
                             "restarts": r.restarts, "queued": r.queued, "last_error": r.last_error }))
            .collect();
        json_response(StatusCode::OK, &json!({ "packages": list }))
    }
}

/// The answer to a refused operation.
fn operator_problem(e: &OperatorError, request_id: &Arc<str>) -> Response<Full<Bytes>> {
    let (status, kind) = match e {
        OperatorError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
        OperatorError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
        OperatorError::Start(_) => (StatusCode::UNPROCESSABLE_ENTITY, "start-failed"),
    };
    problem(status, kind, e.to_string(), None, request_id)
}

//! The operational routes: `/health`, `/metrics` and `/openapi.json`,
//! and who may read them (`[gateway] ops`).
//!
//! They read the broker's reports and never show a package's last error
//! (it may name host paths); they must not call actions or change state.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Request, Response, StatusCode};
use serde_json::{Map, Value, json};

use super::Gateway;
use super::response::{json_response, problem, text, unauthorized};
use crate::manifest::OpsAccess;
use crate::supervisor::PackageState;

impl Gateway {
    /// The answer to `GET <path>`, one of the three operational routes.
    pub(super) fn ops(&self, path: &str) -> Response<Full<Bytes>> {
        if let (Some(kv), "/metrics") = (self.broker.kv(), path) {
            self.metrics.record_kv(kv);
        }
        if let (Some(t), "/metrics") = (self.broker.telemetry(), path) {
            self.metrics.record_telemetry(t.dropped(), t.shed());
        }
        match path {
            "/health" => self.health(),
            "/metrics" => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.render(&self.broker.reports()),
            ),
            _ => json_response(
                StatusCode::OK,
                &crate::openapi::document(&self.app, &self.broker, &self.settings),
            ),
        }
    }

    /// Whether `req` carries the admin bearer token. Both sides are hashed
    /// first, so the comparison takes the same time whatever the length.
    pub(super) fn has_admin_token(&self, req: &Request<Incoming>) -> bool {
        let Some(token) = &self.settings.admin_token else {
            return false;
        };
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .map(HeaderValue::as_bytes)
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .unwrap_or(b"");
        // blake3::Hash compares in constant time.
        blake3::hash(given) == blake3::hash(token.as_bytes())
    }

    /// The answer to a request for an operational route that `[gateway]
    /// ops` does not let it read; `None` when it may.
    pub(super) fn ops_refusal(
        &self,
        req: &Request<Incoming>,
        request_id: &Arc<str>,
    ) -> Option<Response<Full<Bytes>>> {
        match self.settings.ops {
            OpsAccess::Public => None,
            OpsAccess::Token if self.has_admin_token(req) => None,
            OpsAccess::Token => Some(unauthorized(
                "this route needs the admin bearer token ([gateway] ops = \"token\")",
                request_id,
            )),
            OpsAccess::Off => Some(problem(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no route for GET {}", req.uri().path()),
                None,
                request_id,
            )),
        }
    }

    /// Every package's state, for anyone `ops` lets read it: no last error,
    /// which may name host paths (`/admin/packages` has it).
    fn health(&self) -> Response<Full<Bytes>> {
        let reports = self.broker.reports();
        let all_serving = reports
            .iter()
            .all(|r| r.state == PackageState::Serving && r.missing_dependencies.is_empty());
        let packages: Map<String, Value> = reports
            .into_iter()
            .map(|r| {
                let v = json!({
                    "state": r.state,
                    "instances": r.live,
                    "configured": r.instances,
                    "restarts": r.restarts,
                    "queued": r.queued,
                    "circuits": r.circuits.iter().map(|(a, st)| (a.clone(), json!(st))).collect::<Map<String, Value>>(),
                    "missing_dependencies": r.missing_dependencies,
                });
                (r.name, v)
            })
            .collect();
        let status = if all_serving {
            StatusCode::OK
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        };
        json_response(
            status,
            &json!({ "status": if all_serving { "serving" } else { "degraded" }, "packages": packages }),
        )
    }
}

//! Actions over HTTP: `POST /api/<package>/<action>` and the REST aliases
//! of `[gateway] aliases`, both resolved to an action and its parameters
//! by one handler, then called through the broker; and the HTTP status of
//! a call error (its kind's, see [`ErrorKind::http_status`]).
//!
//! It decides which action a request names and what its parameters are;
//! it must not decide how a call runs (the broker does) or word errors
//! itself beyond the public part of the broker's message.
//!
//! [`ErrorKind::http_status`]: crate::context::ErrorKind::http_status

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{Map, Value};
use wasmtime::component::types::Type;

use super::connection::{self, BodyError, Connection};
use super::response::{body_problem, json_response, problem};
use super::{CALL_TIMEOUT, Gateway};
use crate::context::{CallContext, CallError};
use crate::supervisor::PackageState;
use crate::types::rule_schema;

/// The action a request names, and where its parameters come from.
struct Target {
    /// `<package>.<action>`.
    action: String,
    /// An alias's path parameters (merged with the query and a JSON body
    /// into one object); `None` for `/api`, whose body is the parameters.
    path_params: Option<Vec<(String, String)>>,
}

impl Gateway {
    /// `POST /api/<package>/<action>` or an alias: the action's answer.
    pub(super) async fn action(
        &self,
        req: Request<Incoming>,
        path: &str,
        request_id: &Arc<str>,
        connection: &Connection,
    ) -> Response<Full<Bytes>> {
        let target = match self.target(req.method(), path) {
            Ok(t) => t,
            Err(message) => {
                let action = message.1.as_deref();
                return problem(
                    StatusCode::NOT_FOUND,
                    "not-found",
                    message.0,
                    action,
                    request_id,
                );
            }
        };
        // Only an alias reads the query; `/api` takes none.
        let query = match target.path_params {
            Some(_) => req.uri().query().unwrap_or("").to_string(),
            None => String::new(),
        };
        let body = match target.path_params.is_none() || has_body(req.method()) {
            true => match self.body(req, &target.action, request_id).await {
                Ok(b) => b,
                Err(r) => return r,
            },
            false => Bytes::new(),
        };
        let blank = body.iter().all(u8::is_ascii_whitespace);
        let params = match target.path_params {
            None if blank => Bytes::from_static(b"{}"),
            None => body,
            Some(from_path) => match self.merge(&target.action, &body, from_path, &query) {
                Ok(p) => p,
                Err(message) => {
                    let action = Some(&*target.action);
                    let status = StatusCode::BAD_REQUEST;
                    return problem(status, "invalid-params", message, action, request_id);
                }
            },
        };
        connection.working();
        self.call(&target.action, &params, request_id).await
    }

    /// The action `method path` names: `/api/<package>/<action>` when it is
    /// exposed, else an alias; `Err((why, action))` when none.
    fn target(&self, method: &Method, path: &str) -> Result<Target, (String, Option<String>)> {
        if method == Method::POST
            && let Some(rest) = path.strip_prefix("/api/")
        {
            let Some((package, action)) = rest
                .split_once('/')
                .filter(|(p, a)| !p.is_empty() && !a.is_empty() && !a.contains('/'))
            else {
                return Err((
                    format!("no route for POST {path}; actions are at /api/<package>/<action>"),
                    None,
                ));
            };
            let name = format!("{package}.{action}");
            if !self
                .settings
                .expose
                .iter()
                .any(|p| crate::manifest::pattern_matches(p, &name))
            {
                let why = format!(
                    "`{name}` is not exposed over HTTP (see [gateway] expose in steedos.toml)"
                );
                return Err((why, Some(name)));
            }
            return Ok(Target {
                action: name,
                path_params: None,
            });
        }
        let method = method.as_str();
        self.settings
            .aliases
            .iter()
            .find_map(|a| {
                a.matches(method, path).map(|p| Target {
                    action: a.action.clone(),
                    path_params: Some(p),
                })
            })
            .ok_or_else(|| (format!("no route for {method} {path}"), None))
    }

    /// An alias's parameters as one JSON object: the body's fields, then
    /// the path's and the query's, each coerced to what the action wants;
    /// `Err` says what is wrong with the body.
    fn merge(
        &self,
        action: &str,
        body: &[u8],
        from_path: Vec<(String, String)>,
        query: &str,
    ) -> Result<Bytes, String> {
        let mut object = Map::new();
        if !body.iter().all(u8::is_ascii_whitespace) {
            match serde_json::from_slice::<Value>(body) {
                Ok(Value::Object(fields)) => object.extend(fields),
                Ok(_) => return Err("the body must be a JSON object".into()),
                Err(e) => return Err(format!("malformed JSON body: {e}")),
            }
        }
        let decoded = from_path.into_iter().map(|(k, v)| {
            (
                k,
                percent_encoding::percent_decode_str(&v)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        });
        let params = self.param_types(action);
        // An action of another node: its parameters as that node announced them.
        let remote = self.broker.remote_params(action).unwrap_or_default();
        for (name, raw) in decoded.chain(form_urlencoded::parse(query.as_bytes()).into_owned()) {
            let wants = match params.iter().find(|(n, _)| *n == name) {
                Some((_, ty)) => Wants::Wit(ty),
                None => match remote.iter().find(|(n, _)| *n == name) {
                    Some((_, rule)) => Wants::Rule(rule),
                    None => Wants::Unknown,
                },
            };
            object.insert(name, coerce(&raw, wants));
        }
        Ok(serde_json::to_vec(&Value::Object(object))
            .unwrap_or_default()
            .into())
    }

    /// `Retry-After` for an overloaded `action`: the seconds left of its
    /// package's restart backoff, else 1.
    fn retry_after(&self, action: &str) -> HeaderValue {
        let left = action
            .split_once('.')
            .and_then(|(package, _)| self.broker.service(package))
            .and_then(|s| match s.state() {
                PackageState::Backoff { retry_at } => {
                    Some(retry_at.saturating_duration_since(Instant::now()))
                }
                _ => None,
            });
        match left {
            // Rounded up: a client that waits this long finds it restarted.
            Some(left) => HeaderValue::from(left.as_secs() + u64::from(left.subsec_nanos() > 0)),
            None => HeaderValue::from_static("1"),
        }
    }

    fn param_types(&self, action: &str) -> Vec<(String, Type)> {
        self.broker
            .find_action(action)
            .map(|a| a.params().to_vec())
            .unwrap_or_default()
    }

    async fn body(
        &self,
        req: Request<Incoming>,
        action: &str,
        request_id: &Arc<str>,
    ) -> Result<Bytes, Response<Full<Bytes>>> {
        let limit = usize::try_from(self.settings.max_body).unwrap_or(usize::MAX);
        self.read(req, limit)
            .await
            .map_err(|e| body_problem(e, Some(action), request_id))
    }

    /// Reads a request body of at most `limit` bytes, in time (see [`connection`]).
    pub(super) async fn read(
        &self,
        req: Request<Incoming>,
        limit: usize,
    ) -> Result<Bytes, BodyError> {
        let s = &self.settings;
        connection::read_body(req.into_body(), limit, s.body_timeout, s.min_body_rate).await
    }

    async fn call(
        &self,
        action: &str,
        body: &[u8],
        request_id: &Arc<str>,
    ) -> Response<Full<Bytes>> {
        let ctx = match self.broker.telemetry() {
            None => CallContext::with_request_id(request_id.clone(), CALL_TIMEOUT),
            Some(_) => crate::telemetry::gateway::call_context(request_id, CALL_TIMEOUT),
        };
        match self.broker.call_json(action, body, ctx).await {
            Ok(value) => json_response(StatusCode::OK, &value),
            Err(e) => {
                tracing::info!(action, kind = e.kind().name(), error = %e.message(), "call failed");
                let status = status_of(&e);
                let mut r = problem(
                    status,
                    e.kind().name(),
                    e.public_message().into_owned(),
                    Some(action),
                    request_id,
                );
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    r.headers_mut()
                        .insert(RETRY_AFTER, self.retry_after(action));
                }
                r
            }
        }
    }
}

/// Whether a request of `method` carries a body an alias reads.
fn has_body(method: &Method) -> bool {
    matches!(*method, Method::POST | Method::PUT | Method::PATCH)
}

/// The HTTP status of a call error: its kind's, or for an action's own
/// error the status its error value (or the peer's `code`) names.
fn status_of(e: &CallError) -> StatusCode {
    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
}

/// What the gateway knows a path or query parameter wants.
enum Wants<'a> {
    /// A local action's parameter: its WIT type.
    Wit(&'a Type),
    /// A remote action's parameter: its fastest-validator rule.
    Rule(&'a Value),
    /// Nothing: it is passed on as text.
    Unknown,
}

/// A path or query parameter (always text) as the JSON it wants.
fn coerce(raw: &str, wants: Wants<'_>) -> Value {
    let text = match wants {
        Wants::Wit(Type::Option(o)) => matches!(o.ty(), Type::String | Type::Char),
        Wants::Wit(ty) => matches!(ty, Type::String | Type::Char),
        Wants::Rule(rule) => rule_is_text(rule),
        Wants::Unknown => true,
    };
    match text {
        true => Value::String(raw.to_string()),
        // Numbers, booleans and structured values are read as JSON; a value
        // that is not JSON stays text and the callee says what was expected.
        false => serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_string())),
    }
}

/// Whether a fastest-validator rule takes text as it is: its JSON Schema
/// (see [`rule_schema`]) is a string, an enum of strings, or any of those.
fn rule_is_text(rule: &Value) -> bool {
    fn text(schema: &Value) -> bool {
        if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
            return any.iter().all(text);
        }
        if let Some(values) = schema.get("enum").and_then(Value::as_array) {
            return values.iter().all(Value::is_string);
        }
        schema.get("type").and_then(Value::as_str) == Some("string")
    }
    text(&rule_schema(rule))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::Failure;
    use serde_json::json;

    #[test]
    fn each_call_error_kind_has_its_status() {
        let m = || "x".to_string();
        let cases = [
            (CallError::InvalidParams(m()), 400),
            (CallError::NotFound(m()), 404),
            (CallError::Denied(m()), 403),
            (CallError::Failed(m().into()), 422),
            (CallError::Crashed(m()), 502),
            (CallError::Overloaded(m()), 503),
        ];
        for (e, status) in cases {
            assert_eq!(status_of(&e).as_u16(), status, "{e:?}");
        }
        let named = |status| CallError::Failed(Failure::with_status(m(), Some(status)));
        assert_eq!(status_of(&named(418)).as_u16(), 418);
        // Outside 400..=599 an error names no status.
        assert_eq!(status_of(&named(399)).as_u16(), 422);
        assert_eq!(status_of(&named(600)).as_u16(), 422);
        // Text that reads like a status is not one.
        let text = CallError::Failed(r#"a.b: {"status":418,"message":"x"}"#.to_string().into());
        assert_eq!(status_of(&text).as_u16(), 422);
    }

    #[test]
    fn public_messages_keep_host_records_out() {
        let e = CallError::Overloaded(format!(
            "a.b: package `a` is in restart backoff (retry in 3s){}",
            crate::context::host_record("/srv/app/a.wasm trapped")
        ));
        assert!(
            !e.public_message().contains("/srv"),
            "{}",
            e.public_message()
        );
        let e = CallError::NotFound(format!(
            "package `a` failed to load{}",
            crate::context::host_record("cannot read component /srv/app/a.wasm")
        ));
        assert!(
            !e.public_message().contains("/srv"),
            "{}",
            e.public_message()
        );
        // An action's own error value is the package's to word.
        let e = CallError::Failed("a.b: see /docs; last error: none".into());
        assert_eq!(e.public_message(), "a.b: see /docs; last error: none");
    }

    #[test]
    fn remote_parameters_follow_their_fastest_validator_rules() {
        let rule = |v: Value| coerce("42", Wants::Rule(&v));
        assert_eq!(rule(json!("number")), json!(42));
        assert_eq!(rule(json!("number|optional|min:1")), json!(42));
        assert_eq!(
            rule(json!({ "type": "number", "integer": true })),
            json!(42)
        );
        assert_eq!(rule(json!("boolean")), json!(42)); // the callee says it is not a boolean
        assert_eq!(rule(json!("string")), json!("42"));
        assert_eq!(rule(json!({ "type": "string", "min": 1 })), json!("42"));
        assert_eq!(rule(json!("email|optional")), json!("42"));
        assert_eq!(rule(json!(["string", "number"])), json!(42));
        assert_eq!(rule(json!(["string", "email"])), json!("42"));
        assert_eq!(
            rule(json!({ "type": "enum", "values": ["42", "7"] })),
            json!("42")
        );
        assert_eq!(
            rule(json!({ "type": "enum", "values": [42, 7] })),
            json!(42)
        );
        assert_eq!(coerce("true", Wants::Rule(&json!("boolean"))), json!(true));
        assert_eq!(
            coerce("[1,2]", Wants::Rule(&json!({ "type": "array" }))),
            json!([1, 2])
        );
        // Not JSON: passed on as text, for the callee to refuse by name.
        assert_eq!(coerce("x", Wants::Rule(&json!("number"))), json!("x"));
        assert_eq!(coerce("42", Wants::Unknown), json!("42"));
    }
}

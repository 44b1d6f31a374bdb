//! The HTTP gateway (hyper): actions over HTTP, health, metrics, OpenAPI.
//!
//! # Routes
//! - `POST /api/<package>/<action>` with a JSON object body: fields map to
//!   the action's WIT parameters by name; the result comes back as JSON by
//!   its WIT type. Only actions the manifest's `[gateway] expose` lists (or
//!   an alias names) are reachable; the rest answer 404.
//! - REST aliases from `[gateway] aliases`, e.g. `"GET /stock/:sku" =
//!   "inventory.get-item"`: path and query parameters (and a JSON body for
//!   POST, PUT and PATCH) become the action's parameters.
//! - `GET /health`: every package's state; 200 when all serve, else 503.
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text format).
//! - `GET /openapi.json`: OpenAPI 3.1 generated from the WIT types.
//!
//! # Errors
//! A JSON body `{"error": {"kind", "message", "package", "action",
//! "request_id"}}` with a status by kind: malformed JSON or params 400,
//! unknown 404, denied 403, the action's own error 422 (or the `status` its
//! error value names), crashed 502, overloaded 503 with `Retry-After`,
//! timeout 504, body too large 413, URI too long 414.
//!
//! # Limits
//! Request body size, header count and size, URI length, a header-read
//! timeout and an idle timeout per connection, so a slow or idle client
//! cannot hold the server.
//!
//! # Operations
//! `/admin` is off unless `[gateway] admin_token_env` names a set variable;
//! then it takes `Authorization: Bearer <token>` (compared in constant
//! time): `GET /admin/packages` lists packages, `PUT /admin/packages/<name>`
//! with a component as the body deploys or upgrades one (settings as query
//! parameters: `instances`, `memory`, `timeout`, `events`, `calls`), and
//! `DELETE /admin/packages/<name>` removes one.
//!
//! Every response carries `X-Request-Id` (taken from the request when it
//! has a sane one), and every log line of that call carries it, across
//! packages.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;
use wasmtime::component::types::Type;

use crate::broker::Broker;
use crate::context::{CallContext, CallError, next_request_id};
use crate::manifest::GatewaySettings;
use crate::metrics::Metrics;
use crate::transport::schema::rule_schema;

/// The longest URI accepted.
const MAX_URI: usize = 8 * 1024;
/// The most headers a request may carry.
const MAX_HEADERS: usize = 64;
/// The read buffer, which bounds the size of a request's head.
const MAX_HEAD: usize = 64 * 1024;
/// How long an HTTP call may take, unless the action's own timeout is shorter.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// The largest component `/admin` accepts.
const MAX_COMPONENT: usize = 256 << 20;

/// What the `/admin` API asks of the app: deploy, upgrade and remove packages.
pub trait Operator: Send + Sync + 'static {
    /// Deploys `name` (or upgrades it when it exists) to `component`.
    /// Returns a one-line description of what happened.
    fn deploy(
        &self,
        name: String,
        component: Bytes,
        settings: Vec<(String, String)>,
    ) -> BoxFuture<'_, Result<String, OperatorError>>;
    /// Removes `name`.
    fn remove(&self, name: String) -> BoxFuture<'_, Result<String, OperatorError>>;
}

/// A boxed future, as [`Operator`] returns them.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// Why an operation was refused; the old version, if any, keeps serving.
#[derive(Debug, thiserror::Error)]
pub enum OperatorError {
    /// The request is wrong (bad component, bad setting, incompatible types).
    #[error("{0}")]
    Invalid(String),
    /// No such package.
    #[error("{0}")]
    NotFound(String),
    /// The new version loaded but did not start.
    #[error("{0}")]
    Start(String),
}

/// The gateway of one app.
pub struct Gateway {
    app: String,
    broker: Arc<Broker>,
    settings: GatewaySettings,
    metrics: Arc<Metrics>,
    operator: Option<Arc<dyn Operator>>,
}

/// A listening gateway; dropping it does not stop it, [`shutdown`](Self::shutdown) does.
pub struct RunningGateway {
    /// The address it listens on.
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    /// Stops accepting, lets requests in flight finish (up to `grace`).
    pub async fn shutdown(self, grace: Duration) {
        let _ = self.stop.send(true);
        let _ = tokio::time::timeout(grace, self.task).await;
    }
}

impl Gateway {
    /// A gateway for `broker` with `settings`.
    pub fn new(
        app: &str,
        broker: Arc<Broker>,
        settings: GatewaySettings,
        metrics: Arc<Metrics>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            app: app.to_string(),
            broker,
            settings,
            metrics,
            operator: None,
        })
    }

    /// A gateway whose `/admin` API drives `operator` (when a token is set).
    pub fn with_operator(
        app: &str,
        broker: Arc<Broker>,
        settings: GatewaySettings,
        metrics: Arc<Metrics>,
        operator: Arc<dyn Operator>,
    ) -> Arc<Gateway> {
        Arc::new(Gateway {
            app: app.to_string(),
            broker,
            settings,
            metrics,
            operator: Some(operator),
        })
    }

    /// Listens on `addr` (port 0 picks a free one) and serves in the background.
    pub async fn bind(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<RunningGateway> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let gateway = self.clone();
        let task = tokio::spawn(async move { gateway.accept(listener, stopped).await });
        tracing::info!(%addr, "gateway listening");
        Ok(RunningGateway { addr, stop, task })
    }

    async fn accept(self: Arc<Self>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
        let mut connections = tokio::task::JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        connections.spawn(self.clone().connection(stream, peer, stop.clone()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = stop.changed() => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        while connections.join_next().await.is_some() {}
    }

    async fn connection(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
    ) {
        let activity = Arc::new(AtomicU64::new(0));
        let io = TokioIo::new(Tracked {
            inner: stream,
            activity: activity.clone(),
        });
        let gateway = self.clone();
        let service = hyper::service::service_fn(move |req| gateway.clone().handle(req));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_timeout)
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEAD)
            .keep_alive(true);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let idle = self.settings.idle_timeout;
        let mut tick = tokio::time::interval(
            idle.min(Duration::from_secs(1))
                .max(Duration::from_millis(10)),
        );
        let mut closing = false;
        let (mut seen, mut quiet_since) = (0, Instant::now());
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = stop.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tick.tick(), if !closing => {
                    let now = activity.load(Ordering::Relaxed);
                    if now != seen {
                        (seen, quiet_since) = (now, Instant::now());
                    } else if quiet_since.elapsed() >= idle {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(Arc::<str>::from)
            .unwrap_or_else(next_request_id);
        let span = tracing::info_span!("request", request_id = %request_id, method = %req.method(), path = %req.uri().path());
        let mut response = self.route(req, &request_id).instrument(span).await;
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", v);
        }
        Ok(response)
    }

    async fn route(&self, req: Request<Incoming>, request_id: &Arc<str>) -> Response<Full<Bytes>> {
        if req.uri().path_and_query().map_or(0, |p| p.as_str().len()) > MAX_URI {
            return problem(
                StatusCode::URI_TOO_LONG,
                "uri-too-long",
                format!("the URI is longer than {MAX_URI} bytes"),
                None,
                request_id,
            );
        }
        let path = req.uri().path().to_string();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/health") => self.health(),
            (&Method::GET, "/metrics") => text(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.metrics.render(&self.broker.reports()),
            ),
            (&Method::GET, "/openapi.json") => json_response(
                StatusCode::OK,
                &crate::openapi::document(&self.app, &self.broker, &self.settings),
            ),
            (&Method::POST, p) if p.starts_with("/api/") => self.api(req, &path, request_id).await,
            (_, p) if p == "/admin" || p.starts_with("/admin/") => {
                self.admin(req, &path, request_id).await
            }
            _ => self.alias(req, &path, request_id).await,
        }
    }

    fn health(&self) -> Response<Full<Bytes>> {
        let reports = self.broker.reports();
        let all_serving = reports.iter().all(|r| r.state == "serving");
        let packages: Map<String, Value> = reports
            .into_iter()
            .map(|r| {
                let v = json!({
                    "state": r.state,
                    "instances": r.live,
                    "configured": r.instances,
                    "restarts": r.restarts,
                    "queued": r.queued,
                    "last_error": r.last_error,
                    "circuits": r.circuits.iter().map(|(a, st)| (a.clone(), json!(st))).collect::<Map<String, Value>>(),
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

    async fn api(
        &self,
        req: Request<Incoming>,
        path: &str,
        request_id: &Arc<str>,
    ) -> Response<Full<Bytes>> {
        let rest = &path["/api/".len()..];
        let Some((package, action)) = rest
            .split_once('/')
            .filter(|(p, a)| !p.is_empty() && !a.is_empty() && !a.contains('/'))
        else {
            return problem(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no route for POST {path}; actions are at /api/<package>/<action>"),
                None,
                request_id,
            );
        };
        let name = format!("{package}.{action}");
        if !self
            .settings
            .expose
            .iter()
            .any(|p| crate::manifest::pattern_matches(p, &name))
        {
            return problem(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("`{name}` is not exposed over HTTP (see [gateway] expose in steedos.toml)"),
                Some(&name),
                request_id,
            );
        }
        let body = match self.body(req, &name, request_id).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let body = if body.iter().all(u8::is_ascii_whitespace) {
            Bytes::from_static(b"{}")
        } else {
            body
        };
        self.call(&name, &body, request_id).await
    }

    async fn alias(
        &self,
        req: Request<Incoming>,
        path: &str,
        request_id: &Arc<str>,
    ) -> Response<Full<Bytes>> {
        let method = req.method().as_str().to_string();
        let found = self
            .settings
            .aliases
            .iter()
            .find_map(|a| a.matches(&method, path).map(|p| (a, p)));
        let Some((alias, path_params)) = found else {
            return problem(
                StatusCode::NOT_FOUND,
                "not-found",
                format!("no route for {method} {path}"),
                None,
                request_id,
            );
        };
        let action = alias.action.clone();
        let params = self.param_types(&action);
        let mut object = Map::new();
        let query = req.uri().query().unwrap_or("").to_string();
        let has_body = matches!(req.method(), &Method::POST | &Method::PUT | &Method::PATCH);
        if has_body {
            let body = match self.body(req, &action, request_id).await {
                Ok(b) => b,
                Err(r) => return r,
            };
            if !body.iter().all(u8::is_ascii_whitespace) {
                match serde_json::from_slice::<Value>(&body) {
                    Ok(Value::Object(fields)) => object.extend(fields),
                    Ok(_) => {
                        return problem(
                            StatusCode::BAD_REQUEST,
                            "invalid-params",
                            "the body must be a JSON object".into(),
                            Some(&action),
                            request_id,
                        );
                    }
                    Err(e) => {
                        return problem(
                            StatusCode::BAD_REQUEST,
                            "invalid-params",
                            format!("malformed JSON body: {e}"),
                            Some(&action),
                            request_id,
                        );
                    }
                }
            }
        }
        let decoded = path_params.into_iter().map(|(k, v)| {
            (
                k,
                percent_encoding::percent_decode_str(&v)
                    .decode_utf8_lossy()
                    .into_owned(),
            )
        });
        // An action of another node: its parameters as that node announced them.
        let remote = self.broker.remote_params(&action).unwrap_or_default();
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
        let body = serde_json::to_vec(&Value::Object(object)).unwrap_or_default();
        self.call(&action, &body, request_id).await
    }

    async fn admin(
        &self,
        req: Request<Incoming>,
        path: &str,
        request_id: &Arc<str>,
    ) -> Response<Full<Bytes>> {
        let (Some(token), Some(operator)) = (&self.settings.admin_token, &self.operator) else {
            return problem(
                StatusCode::NOT_FOUND,
                "not-found",
                "the admin API is off (set [gateway] admin_token_env)".into(),
                None,
                request_id,
            );
        };
        let given = req
            .headers()
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(subtle::ConstantTimeEq::ct_eq(
            given.as_bytes(),
            token.as_bytes(),
        )) {
            let mut r = problem(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required".into(),
                None,
                request_id,
            );
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
            return r;
        }
        let name = path
            .strip_prefix("/admin/packages")
            .map(|n| n.trim_matches('/').to_string());
        let outcome = match (req.method().clone(), name) {
            (Method::GET, Some(n)) if n.is_empty() => {
                let list: Vec<Value> = self
                    .broker
                    .reports()
                    .into_iter()
                    .map(|r| json!({ "name": r.name, "state": r.state, "instances": r.live, "configured": r.instances,
                                     "restarts": r.restarts, "queued": r.queued, "last_error": r.last_error }))
                    .collect();
                return json_response(StatusCode::OK, &json!({ "packages": list }));
            }
            (Method::PUT, Some(n)) if !n.is_empty() && !n.contains('/') => {
                let settings: Vec<(String, String)> =
                    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
                        .into_owned()
                        .collect();
                let component = match Limited::new(req.into_body(), MAX_COMPONENT).collect().await {
                    Ok(c) => c.to_bytes(),
                    Err(e) => {
                        return problem(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "too-large",
                            format!("cannot read the component: {e}"),
                            None,
                            request_id,
                        );
                    }
                };
                tracing::info!(package = %n, bytes = component.len(), "admin: deploy");
                operator.deploy(n, component, settings).await
            }
            (Method::DELETE, Some(n)) if !n.is_empty() && !n.contains('/') => {
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
            Err(e) => {
                let (status, kind) = match &e {
                    OperatorError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
                    OperatorError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
                    OperatorError::Start(_) => (StatusCode::UNPROCESSABLE_ENTITY, "start-failed"),
                };
                problem(status, kind, e.to_string(), None, request_id)
            }
        }
    }

    fn param_types(&self, action: &str) -> Vec<(String, Type)> {
        let Some((package, name)) = action.split_once('.') else {
            return Vec::new();
        };
        self.broker
            .service(package)
            .and_then(|s| s.package.ty.action(name).map(|(_, a)| a.params.clone()))
            .unwrap_or_default()
    }

    async fn body(
        &self,
        req: Request<Incoming>,
        action: &str,
        request_id: &Arc<str>,
    ) -> Result<Bytes, Response<Full<Bytes>>> {
        let limit = usize::try_from(self.settings.max_body).unwrap_or(usize::MAX);
        match Limited::new(req.into_body(), limit).collect().await {
            Ok(collected) => Ok(collected.to_bytes()),
            Err(e)
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some() =>
            {
                Err(problem(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "too-large",
                    format!("the request body is larger than {limit} bytes"),
                    Some(action),
                    request_id,
                ))
            }
            Err(e) => Err(problem(
                StatusCode::BAD_REQUEST,
                "bad-request",
                format!("cannot read the body: {e}"),
                Some(action),
                request_id,
            )),
        }
    }

    async fn call(
        &self,
        action: &str,
        body: &[u8],
        request_id: &Arc<str>,
    ) -> Response<Full<Bytes>> {
        let ctx = CallContext::with_request_id(request_id.clone(), CALL_TIMEOUT);
        match self.broker.call_json(action, body, ctx).await {
            Ok(value) => json_response(StatusCode::OK, &value),
            Err(e) => {
                tracing::info!(action, kind = e.kind(), error = %e.message(), "call failed");
                let status = status_of(&e, action);
                let mut r = problem(
                    status,
                    e.kind(),
                    e.message().to_string(),
                    Some(action),
                    request_id,
                );
                if status == StatusCode::SERVICE_UNAVAILABLE {
                    r.headers_mut()
                        .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                }
                r
            }
        }
    }
}

/// The HTTP status of a call error.
fn status_of(e: &CallError, action: &str) -> StatusCode {
    match e {
        CallError::InvalidParams(_) => StatusCode::BAD_REQUEST,
        CallError::NotFound(_) => StatusCode::NOT_FOUND,
        CallError::Denied(_) => StatusCode::FORBIDDEN,
        CallError::Failed(m) => named_status(m, action).unwrap_or(StatusCode::UNPROCESSABLE_ENTITY),
        CallError::Crashed(_) => StatusCode::BAD_GATEWAY,
        CallError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
        CallError::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
    }
}

/// An action's error value that is a record with a `status` field in
/// 400..=599 names the HTTP status to answer with.
fn named_status(message: &str, action: &str) -> Option<StatusCode> {
    let value = message
        .strip_prefix(action)
        .and_then(|m| m.strip_prefix(": "))
        .unwrap_or(message);
    let status = serde_json::from_str::<Value>(value)
        .ok()?
        .get("status")?
        .as_u64()?;
    let status = u16::try_from(status)
        .ok()
        .filter(|s| (400..=599).contains(s))?;
    StatusCode::from_u16(status).ok()
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

fn problem(
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

fn json_response(status: StatusCode, value: &Value) -> Response<Full<Bytes>> {
    text(
        status,
        "application/json",
        serde_json::to_string(value).unwrap_or_default(),
    )
}

fn text(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

/// A socket that counts the reads and writes that moved bytes, so the idle
/// timeout can tell a quiet connection without reading the clock per I/O.
struct Tracked {
    inner: tokio::net::TcpStream,
    activity: Arc<AtomicU64>,
}

impl Tracked {
    fn touch(&self) {
        self.activity.fetch_add(1, Ordering::Relaxed);
    }
}

impl tokio::io::AsyncRead for Tracked {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.touch();
        }
        r
    }
}

impl tokio::io::AsyncWrite for Tracked {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, std::task::Poll::Ready(Ok(n)) if n > 0) {
            self.touch();
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

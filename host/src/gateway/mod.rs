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
//! Who may read those three is `[gateway] ops`: anyone (`public`, the
//! default; the default listen address is loopback), only with the admin
//! token (`token`), or nobody (`off`). None of them shows a package's last
//! error (it may name host paths), and neither does a call's error.
//!
//! # Errors
//! A JSON body `{"error": {"kind", "message", "package", "action",
//! "request_id"}}` with a status by kind: malformed JSON or params 400,
//! unknown 404, denied 403, the action's own error 422 (or the `status` its
//! error value names), crashed 502, overloaded 503 with `Retry-After`,
//! timeout 504, body too large 413, body too slow 408, URI too long 414,
//! head too large 431.
//!
//! # Limits
//! Request body size, header count and size, URI length; deadlines on
//! each phase of a connection and a bound on open connections, so that
//! slow, idle or hostile clients cannot hold the server (see [`connection`]).
//!
//! # Operations
//! `/admin` is off unless `[gateway] admin_token_env` names a set variable;
//! then it takes `Authorization: Bearer <token>` (compared in constant
//! time, whatever its length): `GET /admin/packages` lists packages (with
//! each one's last error), `PUT /admin/packages/<name>` with a component
//! (at most 256 MiB) as the body deploys or upgrades one (settings as query
//! parameters: `instances`, `memory`, `timeout`, `events`, `calls`), and
//! `DELETE /admin/packages/<name>` removes one.
//!
//! Every response carries `X-Request-Id` (taken from the request when it
//! has a sane one), and every log line of that call carries it, across
//! packages.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONNECTION, CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::{Map, Value, json};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;
use wasmtime::component::types::Type;

use crate::admin::{Operator, OperatorError};
use crate::broker::Broker;
use crate::context::{CallContext, CallError, next_request_id};
use crate::manifest::{GatewaySettings, OpsAccess};
use crate::metrics::Metrics;
use crate::supervisor::PackageState;
use crate::transport::schema::rule_schema;

mod connection;

use connection::{BodyError, Connection, Connections, Tracked, Verdict, Watch, Watcher};

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
    open: Arc<AtomicUsize>,
    limit: usize,
}

impl RunningGateway {
    /// How many connections are open now.
    pub fn connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    /// The most connections it keeps open: `max_connections`, or less when
    /// the open-file limit leaves less.
    pub fn max_connections(&self) -> usize {
        self.limit
    }

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

    /// Listens on `addr` (port 0 picks a free one) and serves in the
    /// background. Raises the process's open-file limit first (see
    /// [`connection`]).
    pub async fn bind(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<RunningGateway> {
        let limit = connection::connection_limit(self.settings.max_connections);
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let open = Arc::new(AtomicUsize::new(0));
        let connections = Connections::new(limit, open.clone());
        let gateway = self.clone();
        let task =
            tokio::spawn(async move { gateway.accept(listener, connections, stopped).await });
        tracing::info!(%addr, max_connections = limit, "gateway listening");
        Ok(RunningGateway {
            addr,
            stop,
            task,
            open,
            limit,
        })
    }

    async fn accept(
        self: Arc<Self>,
        listener: TcpListener,
        mut connections: Connections,
        mut stop: watch::Receiver<bool>,
    ) {
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(stream) = connections.admit(stream).await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let (gateway, stop) = (self.clone(), stop.clone());
                        connections.spawn(move |c| gateway.connection(stream, peer, stop, c));
                    }
                    Err(e) => {
                        // Out of files or memory: let connections end before trying again.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = stop.changed() => break,
                _ = connections.reap_one(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        while connections.reap_one().await {}
    }

    async fn connection(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        mut stop: watch::Receiver<bool>,
        state: Arc<Connection>,
    ) {
        let io = TokioIo::new(Tracked {
            inner: stream,
            connection: state.clone(),
        });
        let gateway = self.clone();
        let on_request = state.clone();
        let service =
            hyper::service::service_fn(move |req| gateway.clone().handle(req, on_request.clone()));
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(self.settings.header_timeout)
            .max_headers(MAX_HEADERS)
            .max_buf_size(MAX_HEAD)
            // Without it a head that arrives in one large read is parsed whole.
            .max_header_size(MAX_HEAD)
            .keep_alive(true);
        let conn = builder.serve_connection(io, service);
        tokio::pin!(conn);
        let settings = &self.settings;
        let watch = Watch {
            idle: settings.idle_timeout,
            stuck: settings.header_timeout + settings.idle_timeout,
        };
        let mut tick = tokio::time::interval(
            (settings.idle_timeout.min(settings.header_timeout) / 2)
                .clamp(Duration::from_millis(10), Duration::from_secs(1)),
        );
        let mut watcher = Watcher::new();
        let mut closing = false;
        loop {
            tokio::select! {
                result = conn.as_mut() => {
                    if let Err(e) = result {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                    return;
                }
                _ = state.evicted() => {
                    tracing::debug!(%peer, "connection closed to make room (max_connections)");
                    return;
                }
                _ = stop.changed(), if !closing => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                _ = tick.tick() => match watcher.tick(&state, &watch) {
                    Verdict::Fine => {}
                    Verdict::Idle if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    Verdict::Idle => {}
                    Verdict::Drop => {
                        tracing::debug!(%peer, "connection dropped: the client does not take its response");
                        return;
                    }
                },
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        connection: Arc<Connection>,
    ) -> Result<Response<Full<Bytes>>, Infallible> {
        connection.request_started();
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(Arc::<str>::from)
            .unwrap_or_else(next_request_id);
        let span = tracing::info_span!("request", request_id = %request_id, method = %req.method(), path = %req.uri().path());
        let mut response = self
            .route(req, &request_id, &connection)
            .instrument(span)
            .await;
        if let Ok(v) = HeaderValue::from_str(&request_id) {
            response.headers_mut().insert("x-request-id", v);
        }
        connection.request_done();
        Ok(response)
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        request_id: &Arc<str>,
        connection: &Connection,
    ) -> Response<Full<Bytes>> {
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
            (&Method::GET, "/health" | "/metrics" | "/openapi.json") => {
                if let Some(refused) = self.ops_refusal(&req, request_id) {
                    return refused;
                }
                connection.working();
                match path.as_str() {
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
            (&Method::POST, p) if p.starts_with("/api/") => {
                self.api(req, &path, request_id, connection).await
            }
            (_, p) if p == "/admin" || p.starts_with("/admin/") => {
                self.admin(req, &path, request_id, connection).await
            }
            _ => self.alias(req, &path, request_id, connection).await,
        }
    }

    /// Whether `req` carries the admin bearer token. Both sides are hashed
    /// first, so the comparison takes the same time whatever the length.
    fn has_admin_token(&self, req: &Request<Incoming>) -> bool {
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
    fn ops_refusal(
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
        let all_serving = reports.iter().all(|r| r.state == PackageState::Serving);
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
        connection: &Connection,
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
        connection.working();
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
        connection: &Connection,
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
        connection.working();
        self.call(&action, &body, request_id).await
    }

    async fn admin(
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
    async fn read(&self, req: Request<Incoming>, limit: usize) -> Result<Bytes, BodyError> {
        let s = &self.settings;
        connection::read_body(req.into_body(), limit, s.body_timeout, s.min_body_rate).await
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
                tracing::info!(action, kind = e.kind().name(), error = %e.message(), "call failed");
                let status = status_of(&e, action);
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

/// The answer to a body that could not be read; the connection is closed
/// after it, since the rest of the body is not read.
fn body_problem(
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

fn unauthorized(message: &str, request_id: &Arc<str>) -> Response<Full<Bytes>> {
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

/// The HTTP status of a call error: its kind's, or for an action's own
/// error the status its error value names.
fn status_of(e: &CallError, action: &str) -> StatusCode {
    let named = match e {
        CallError::Failed(m) => named_status(m, action),
        _ => None,
    };
    named.unwrap_or_else(|| {
        StatusCode::from_u16(e.kind().http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_call_error_kind_has_its_status() {
        let m = || "x".to_string();
        let cases = [
            (CallError::InvalidParams(m()), 400),
            (CallError::NotFound(m()), 404),
            (CallError::Denied(m()), 403),
            (CallError::Failed(m()), 422),
            (CallError::Crashed(m()), 502),
            (CallError::Overloaded(m()), 503),
        ];
        for (e, status) in cases {
            assert_eq!(status_of(&e, "a.b").as_u16(), status, "{e:?}");
        }
        let named = CallError::Failed(r#"a.b: {"status":418,"message":"x"}"#.into());
        assert_eq!(status_of(&named, "a.b").as_u16(), 418);
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

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
//! - `[gateway.http]` routes (`"/hooks/*" = "webhooks"`): the request as it
//!   is, streaming, to a package exporting `wasi:http/incoming-handler`,
//!   and its own response back (see `http`). The gateway's own routes
//!   (`/api/...`, `/admin`, `/health`, `/metrics`, `/openapi.json`) come first.
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
//!
//! # Rooms
//! This file owns the listener, connections and routing; `http` hands a
//! `[gateway.http]` route to its package; `actions`
//! turns a route into a call (`/api` and aliases alike), `ops` answers
//! `/health`, `/metrics` and `/openapi.json`, `admin` the operator API
//! (through the app's port, `crate::admin`), `response` the shapes of answers,
//! and [`connection`] the limits. It must not decide calls (the broker
//! does) nor word their errors (their kind does, in `context`).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::HeaderValue;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::admin::Operator;
use crate::broker::Broker;
use crate::context::next_request_id;
use crate::manifest::GatewaySettings;
use crate::metrics::Metrics;

mod actions;
mod admin;
mod connection;
mod http;
mod ops;
mod response;

use connection::{Connection, Connections, Order, Tracked, Watch};
use response::problem;

/// The longest URI accepted.
const MAX_URI: usize = 8 * 1024;
/// The most headers a request may carry.
const MAX_HEADERS: usize = 64;
/// The read buffer, which bounds the size of a request's head.
const MAX_HEAD: usize = 64 * 1024;
/// How long an HTTP call may take, unless the action's own timeout is shorter.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

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
        let settings = &self.settings;
        let watch = Watch {
            idle: settings.idle_timeout,
            stuck: settings.header_timeout + settings.idle_timeout,
        };
        let mut tick = tokio::time::interval(
            (settings.idle_timeout.min(settings.header_timeout) / 2)
                .clamp(Duration::from_millis(10), Duration::from_secs(1)),
        );
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        let Ok(stream) = connections.admit(stream).await else {
                            continue;
                        };
                        let _ = stream.set_nodelay(true);
                        let gateway = self.clone();
                        connections.spawn(move |c| gateway.connection(stream, peer, c));
                    }
                    Err(e) => {
                        // Out of files or memory: let connections end before trying again.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                },
                _ = stop.changed() => break,
                _ = connections.reap_one(), if !connections.is_empty() => {}
                _ = tick.tick() => connections.watch(&watch),
            }
        }
        drop(listener);
        connections.close_all();
        loop {
            tokio::select! {
                open = connections.reap_one() => if !open { break },
                _ = tick.tick() => connections.watch(&watch),
            }
        }
    }

    async fn connection(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
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
        // The accept loop's orders are read at each poll: an atomic load
        // where a select over a timer and two channels would poll all three.
        let mut closing = false;
        let ended = std::future::poll_fn(|cx| {
            match state.order(cx) {
                Order::Serve => {}
                Order::Close if closing => {}
                Order::Close => {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
                Order::Drop => return std::task::Poll::Ready(None),
            }
            conn.as_mut().poll(cx).map(Some)
        })
        .await;
        match ended {
            Some(Err(e)) => tracing::debug!(%peer, error = %e, "connection ended with an error"),
            Some(Ok(())) => {}
            None => {
                tracing::debug!(%peer, "connection closed by the gateway (max_connections, or a client that does not read)")
            }
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        connection: Arc<Connection>,
    ) -> Result<Response<http::GatewayBody>, Infallible> {
        connection.request_started();
        let request_id = req
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
            .map(Arc::<str>::from)
            .unwrap_or_else(next_request_id);
        let telemetry = self.broker.telemetry().cloned();
        let (request_id, traced) = match &telemetry {
            None => (request_id, None),
            Some(t) => {
                let (request_id, traced) = crate::telemetry::gateway::traced(t, &req, request_id);
                (request_id, Some((t, traced)))
            }
        };
        let span = tracing::info_span!("request", request_id = %request_id, method = %req.method(), path = %req.uri().path());
        let work = || {
            async {
                match self.http_route(req.uri().path()) {
                    Some(route) => self.serve_http(req, route, &request_id, &connection).await,
                    None => {
                        let routed = self.route(req, &request_id, &connection).await;
                        routed.map(http_body_util::Either::Left)
                    }
                }
            }
            .instrument(span)
        };
        let mut response = match traced {
            // Boxed where it is built: the span's wrapper then moves a
            // pointer, not the whole future, at each of its steps.
            Some((t, traced)) => {
                let work = crate::boxed::pinned(work);
                traced.serve(t, &request_id, work).await
            }
            None => work().await,
        };
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
                self.ops(&path)
            }
            (_, p) if p == "/admin" || p.starts_with("/admin/") => {
                self.admin(req, &path, request_id, connection).await
            }
            _ => self.action(req, &path, request_id, connection).await,
        }
    }
}

//! `wasi:http` for packages, on wasmtime's own `wasmtime-wasi-http`.
//!
//! # Outgoing requests
//!
//! A package whose component imports `wasi:http` gets the interfaces linked
//! ([`link`]); one that imports `wasi:http/outgoing-handler` without a
//! `grants.http` entry fails to load, with a message naming the grant (a
//! package that only serves HTTP imports `wasi:http/types` and needs none). Each request goes through
//! [`WasiHttpHooks::send_request`] of the instance's [`HttpState`], which
//! sends it only when a grant lets its scheme, host and port through and
//! the name resolves to an address the grant opens (see `address`), and
//! holds it to the package's [`HttpLimits`](crate::manifest::HttpLimits)
//! and the call's deadline (see `send`). A refused request is the WIT
//! error `HTTP-request-denied`, never a trap.
//!
//! # Serving
//!
//! A package that exports `wasi:http/incoming-handler` is served by the
//! gateway at its `[gateway.http]` routes; the bodies stream through
//! [`LimitedBody`] (the request, under the gateway's limits) and
//! [`WatchedBody`] (the response, which ends in an error when the handler
//! faulted before finishing it). See `serve`.
//!
//! # Metrics
//!
//! [`HttpMetrics`] counts requests, errors by kind, bytes and latency per
//! package; the host's registry shows them in `/metrics`.

mod address;
mod metrics;
mod send;
mod serve;

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::Semaphore;
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime_wasi_http::{
    Error, RequestOptions, WasiBody, WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView,
};

pub use address::is_public;
pub use metrics::{HttpErrorKind, HttpMetrics, PackageHttpMetrics};
pub use serve::{BodyError, LimitedBody, Outcome, WatchedBody, check_routes};

use crate::manifest::{HttpGrant, HttpLimits, HttpScheme, PackageSpec, RequestHost};
use send::{CallScope, IoFuture};

/// The outgoing HTTP of one package, shared by its instances: its grants,
/// its limits, its requests in flight and its metrics.
pub struct OutboundHttp {
    package: Arc<str>,
    grants: Vec<HttpGrant>,
    limits: HttpLimits,
    in_flight: Arc<Semaphore>,
    metrics: PackageHttpMetrics,
}

/// Where a granted request goes: the grant that let it through and its
/// scheme, host and port.
struct Target {
    grant: HttpGrant,
    scheme: HttpScheme,
    host: RequestHost,
    port: u16,
}

impl OutboundHttp {
    /// The outgoing HTTP of the package `spec` describes.
    pub fn new(spec: &PackageSpec, metrics: &HttpMetrics) -> OutboundHttp {
        OutboundHttp {
            package: spec.name.as_str().into(),
            grants: spec.grants.http.clone(),
            limits: spec.http.clone(),
            in_flight: Arc::new(Semaphore::new(spec.http.max_concurrent as usize)),
            metrics: metrics.package(&spec.name),
        }
    }
}

/// The `wasi:http` interfaces the component imports, if any.
fn http_imports(component: &Component) -> Vec<String> {
    let engine = component.engine();
    component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name.to_string())
        .filter(|name| name.starts_with("wasi:http/"))
        .collect()
}

/// Links `wasi:http` for the package `spec` when its component imports it:
/// its outgoing HTTP, or `None` when it imports none. A component that
/// imports it without a `grants.http` entry is refused, saying so.
pub fn link<T: WasiHttpView + 'static>(
    linker: &mut Linker<T>,
    spec: &PackageSpec,
    component: &Component,
    metrics: &HttpMetrics,
) -> Result<Option<Arc<OutboundHttp>>, String> {
    let imports = http_imports(component);
    if imports.is_empty() {
        return Ok(None);
    }
    // Serving needs `wasi:http/types` only; sending needs a grant.
    let sends = imports
        .iter()
        .find(|name| name.starts_with("wasi:http/outgoing-handler"));
    if let Some(first) = sends
        && spec.grants.http.is_empty()
    {
        return Err(format!(
            "it imports `{first}` but has no `grants.http`: list the origins it may send \
             requests to in steedos.toml, e.g. `grants.http = [\"https://api.example.com\"]`"
        ));
    }
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
        .map_err(|e| format!("cannot link wasi:http: {e:#}"))?;
    Ok(Some(Arc::new(OutboundHttp::new(spec, metrics))))
}

/// Adds `wasi:http` to `linker` whatever the grants (for `inspect`, which
/// asks what the host can satisfy; packages are linked through [`link`]).
pub fn add_to_linker<T: WasiHttpView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// The `wasi:http` state of one instance.
pub struct HttpState {
    ctx: WasiHttpCtx,
    hooks: Hooks,
}

struct Hooks {
    outbound: Option<Arc<OutboundHttp>>,
    scope: CallScope,
}

impl HttpState {
    /// The state of an instance of a package with `outbound` HTTP.
    pub fn new(outbound: Option<Arc<OutboundHttp>>) -> HttpState {
        HttpState {
            ctx: WasiHttpCtx::new(),
            hooks: Hooks {
                outbound,
                scope: CallScope::default(),
            },
        }
    }

    /// Binds the next requests to a traced call's span (`None`: untraced).
    pub fn trace(&mut self, trace: Option<crate::telemetry::spans::Outbound>) {
        self.hooks.scope.trace = trace;
    }

    /// Whether requests are bound to a traced call's span.
    pub fn traced(&self) -> bool {
        self.hooks.scope.trace.is_some()
    }

    /// The view `wasmtime-wasi-http` works through, its requests bound to
    /// the call in progress: its `deadline` and `request_id`.
    pub fn view<'a>(
        &'a mut self,
        table: &'a mut ResourceTable,
        deadline: Option<Instant>,
        request_id: Option<&Arc<str>>,
    ) -> WasiHttpCtxView<'a> {
        self.hooks.scope.deadline = deadline;
        if self.hooks.scope.request_id.as_ref() != request_id {
            self.hooks.scope.request_id = request_id.cloned();
        }
        WasiHttpCtxView {
            ctx: &mut self.ctx,
            table,
            hooks: &mut self.hooks,
        }
    }
}

impl WasiHttpHooks for Hooks {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> Box<dyn Future<Output = Result<(http::Response<WasiBody>, IoFuture), Error>> + Send> {
        let Some(outbound) = self.outbound.clone() else {
            return Box::new(async { Err(Error::HttpRequestDenied) });
        };
        Box::new(send::send(outbound, request, options, self.scope.clone()))
    }
}
